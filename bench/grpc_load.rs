//! A small gRPC load generator of our own for etcd's v3 KV API, run against mmapd's
//! etcd front or a real etcd the same way (bench/run's `BENCH_GRPC` section): the shape
//! of etcd's published `benchmark put` / `benchmark range` setup, 8-byte keys and
//! 256-byte values, closed loop.
//!
//! `--clients` tasks each issue one call at a time (a Put of a random key of
//! `--keys`, or a linearizable Range of one; `--serializable` for local reads), spread
//! over `--conns` HTTP/2 connections (etcd's clients multiplex every call on their
//! connection), for `--seconds`. The client is tonic's, generated from mmapd's own
//! `proto/etcd` files (`mmapd::server::etcd::proto`), over hyper's HTTP/2 client.
//!
//! Prints a summary to stderr and one line for bench/run on stdout:
//! `BENCH_RESULT rps=.. p50_us=.. p99_us=.. requests=.. errors=..`.
//!
//! Run: `cargo bench --bench grpc_load -- --addr 127.0.0.1:3001 --op put --clients 64`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mmapd::server::etcd::proto::etcdserverpb::kv_client::KvClient;
use mmapd::server::etcd::proto::etcdserverpb::{PutRequest, RangeRequest};
use tokio::net::TcpStream;

/// etcd's benchmark defaults in its performance docs: 8-byte keys, 256-byte values.
const KEY_BYTES: usize = 8;
const VALUE_BYTES: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Put,
    Range,
}

#[derive(Clone, Debug)]
struct Options {
    addr: String,
    op: Op,
    clients: usize,
    conns: usize,
    seconds: u64,
    keys: u64,
    serializable: bool,
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "grpc_load: {problem}\nusage: grpc_load --addr HOST:PORT --op put|range [--clients N] [--conns N] \
         [--seconds S] [--keys N] [--serializable 1]"
    );
    std::process::exit(2)
}

fn options() -> Options {
    let mut options = Options {
        addr: "127.0.0.1:3001".into(),
        op: Op::Put,
        clients: 1,
        conns: 0,
        seconds: 10,
        keys: 100_000,
        serializable: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        // `cargo bench` passes `--bench` to harness-less benches.
        if arg == "--bench" {
            continue;
        }
        let value = args.next().unwrap_or_else(|| usage(&format!("{arg} needs a value")));
        let number = || value.parse::<u64>().unwrap_or_else(|_| usage(&format!("{arg}: not a number")));
        match arg.as_str() {
            "--addr" => options.addr = value.clone(),
            "--op" => {
                options.op = match value.as_str() {
                    "put" => Op::Put,
                    "range" => Op::Range,
                    _ => usage("--op is put or range"),
                }
            }
            "--clients" => options.clients = number().max(1) as usize,
            "--conns" => options.conns = number() as usize,
            "--seconds" => options.seconds = number().max(1),
            "--keys" => options.keys = number().max(1),
            "--serializable" => options.serializable = number() == 1,
            _ => usage(&format!("unknown argument {arg}")),
        }
    }
    if options.conns == 0 {
        // etcd's benchmark tool: --conns 1 by default, 100 in its published runs for
        // 1,000 clients; one connection per 16 clients here, at least one.
        options.conns = options.clients.div_ceil(16);
    }
    options
}

/// tonic's client over one hyper HTTP/2 connection (the connection multiplexes the
/// calls of every client task that shares it).
#[derive(Clone)]
struct Channel {
    sender: SendRequest<tonic::body::Body>,
}

impl tower_service::Service<hyper::Request<tonic::body::Body>> for Channel {
    type Response = hyper::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, request: hyper::Request<tonic::body::Body>) -> Self::Future {
        let mut sender = self.sender.clone();
        Box::pin(async move { sender.send_request(request).await })
    }
}

async fn connect(addr: &str) -> Channel {
    let stream =
        TcpStream::connect(addr).await.unwrap_or_else(|e| usage(&format!("connecting to {addr}: {e}")));
    stream.set_nodelay(true).expect("nodelay");
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake(TokioIo::new(stream))
        .await
        .unwrap_or_else(|e| usage(&format!("HTTP/2 handshake with {addr}: {e}")));
    tokio::spawn(connection);
    Channel { sender }
}

/// A small deterministic generator per client (keys need not be cryptographic).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn key(n: u64) -> Vec<u8> {
    let mut key = format!("{n:0width$}", width = KEY_BYTES).into_bytes();
    key.truncate(KEY_BYTES.max(key.len()));
    key
}

#[tokio::main]
async fn main() {
    let options = options();
    let mut channels = Vec::with_capacity(options.conns);
    for _ in 0..options.conns {
        channels.push(connect(&options.addr).await);
    }
    let uri: hyper::Uri =
        format!("http://{}", options.addr).parse().unwrap_or_else(|_| usage("a bad --addr"));
    let value = Arc::new(vec![b'v'; VALUE_BYTES]);
    if options.op == Op::Range {
        // Every key read exists: write them first (not measured).
        let mut client = KvClient::with_origin(channels[0].clone(), uri.clone());
        for n in 0..options.keys.min(10_000) {
            client
                .put(PutRequest { key: key(n), value: value.to_vec(), ..Default::default() })
                .await
                .unwrap_or_else(|e| usage(&format!("prefill: {e}")));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(options.clients);
    for i in 0..options.clients {
        let mut client = KvClient::with_origin(channels[i % channels.len()].clone(), uri.clone());
        let (op, value, serializable) = (options.op, value.clone(), options.serializable);
        let keys = if op == Op::Range { options.keys.min(10_000) } else { options.keys };
        tasks.push(tokio::spawn(async move {
            let mut rng =
                XorShift(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < deadline {
                let k = key(rng.next() % keys);
                let sent = Instant::now();
                let ok = match op {
                    Op::Put => client
                        .put(PutRequest { key: k, value: value.to_vec(), ..Default::default() })
                        .await
                        .is_ok(),
                    Op::Range => client
                        .range(RangeRequest { key: k, serializable, ..Default::default() })
                        .await
                        .is_ok(),
                };
                if ok {
                    latencies.push(sent.elapsed().as_micros() as u32);
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (mine, my_errors) = task.await.expect("a client task");
        latencies.extend(mine);
        errors += my_errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let rps = latencies.len() as f64 / elapsed;
    eprintln!(
        "grpc_load: {:?} x{} clients on {} conns: {:.0} req/s, p50 {} us, p99 {} us, {} errors",
        options.op,
        options.clients,
        options.conns,
        rps,
        at(0.5),
        at(0.99),
        errors
    );
    println!(
        "BENCH_RESULT rps={rps:.1} p50_us={} p99_us={} requests={} errors={errors}",
        at(0.5),
        at(0.99),
        latencies.len()
    );
}
