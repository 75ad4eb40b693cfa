//! The benchmark ceiling: a hyper 1 server on tokio that answers every request with
//! 200 and two bytes, doing no work. `bench/run` drives it with the same wrk scripts
//! as mmapd and etcd, so "ceiling" is what this machine's HTTP stack and wrk allow.
//!
//! Usage: `cargo run --release --example ceiling -- 127.0.0.1:PORT`

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the body as mmapd does, so a POST costs what it costs there.
    let _ = request.into_body().collect().await;
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

#[tokio::main]
async fn main() {
    let address: SocketAddr =
        std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3999".into()).parse().expect("address");
    let listener = tokio::net::TcpListener::bind(address).await.expect("bind");
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}
