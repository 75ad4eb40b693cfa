//! How a node opens a connection to another node: TCP to the member's address, then,
//! when the node has `--tls-ca`, TLS presenting this node's certificate and checking
//! the other's against the CA and the member's host name (`--peers` may name hosts
//! by DNS name; the certificate must carry it). Every outgoing connection goes
//! through here: the peer stream (`stream::StreamSender::connect`) directly, and every
//! request of the peer HTTP client (`transport::PeerClient`: batches by POST,
//! forwarded writes and membership changes, probes, joins, the leader's member view)
//! through `PeerConnector`'s `tower_service::Service` implementation.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::server::tls::{host_of, is_certificate_error, MaybeTls, Tls};

/// How long a TCP connect to a peer may take (per address a name resolves to).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the TLS handshake with a peer may take once TCP is up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens connections to peers, plain or TLS as the node is configured. Cheap to clone.
#[derive(Clone)]
pub struct PeerConnector {
    /// The node's TLS; peers are reached over TLS when it has a CA (`Tls::connector`).
    tls: Option<Arc<Tls>>,
}

/// Why a connection to a peer could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The name did not resolve, or the TCP connect failed or timed out.
    #[error("connect: {0}")]
    Tcp(String),
    /// The TLS handshake failed: the peer's certificate does not chain to our CA or
    /// does not name its address, it refused ours, or it does not speak TLS.
    #[error("TLS handshake with {host}: {error}")]
    Handshake {
        /// The name checked against the peer's certificate.
        host: String,
        /// What failed.
        error: String,
    },
}

impl PeerConnector {
    /// Connections as `tls` says: TLS when it has a CA, plain otherwise.
    pub fn new(tls: Option<Arc<Tls>>) -> PeerConnector {
        PeerConnector { tls }
    }

    /// Plain TCP always (tests, and nodes without TLS).
    pub fn plain() -> PeerConnector {
        PeerConnector { tls: None }
    }

    /// Connects to `address`, the resolved form of a member whose address has the
    /// host `host` (a DNS name or an IP address: what the peer's certificate must
    /// name), within `timeout` for TCP and `HANDSHAKE_TIMEOUT` for TLS.
    ///
    /// With `--tls-accept-plain`, a handshake that fails for another reason than a
    /// certificate (a peer that does not speak TLS yet answers the ClientHello in plain
    /// HTTP, or resets) is followed by a plain connection: the switch-over of a running
    /// cluster. A certificate refused either way never falls back.
    pub async fn open(
        &self,
        address: SocketAddr,
        host: &str,
        timeout: Duration,
    ) -> Result<PeerStream, ConnectError> {
        let tcp = tcp_connect(address, timeout).await?;
        // The connector in force now: a reload (SIGHUP) changes it for new connections.
        let Some((tls, connector)) = self.tls.as_ref().and_then(|tls| Some((tls, tls.connector()?))) else {
            return Ok(PeerStream::Plain(tcp));
        };
        let handshake_error = |error: String| ConnectError::Handshake { host: host.to_owned(), error };
        let name = ServerName::try_from(host.to_owned()).map_err(|e| handshake_error(e.to_string()))?;
        let error = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp)).await {
            Ok(Ok(stream)) => return Ok(PeerStream::Tls(Box::new(stream))),
            Ok(Err(error)) if tls.accepts_plain() && !is_certificate_error(&error) => error,
            Ok(Err(error)) => return Err(handshake_error(error.to_string())),
            Err(_) => return Err(handshake_error(format!("not finished within {HANDSHAKE_TIMEOUT:?}"))),
        };
        tracing::debug!(peer = %address, %error, "the peer does not speak TLS: connecting in plain (--tls-accept-plain)");
        Ok(PeerStream::Plain(tcp_connect(address, timeout).await?))
    }

    /// Resolves `authority` (`HOST:PORT`) and connects to the first address that
    /// answers.
    async fn open_authority(self, authority: String) -> Result<PeerStream, ConnectError> {
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host(authority.as_str())
            .await
            .map_err(|e| ConnectError::Tcp(format!("{authority} does not resolve: {e}")))?
            .collect();
        let host = host_of(&authority).to_owned();
        let mut last = ConnectError::Tcp(format!("{authority} resolves to no address"));
        for address in addresses {
            match self.open(address, &host, CONNECT_TIMEOUT).await {
                Ok(stream) => return Ok(stream),
                // The peer answered: another of its addresses would answer the same.
                Err(error @ ConnectError::Handshake { .. }) => return Err(error),
                Err(error) => last = error,
            }
        }
        Err(last)
    }
}

/// A TCP connection to `address` within `timeout`, with Nagle off.
async fn tcp_connect(address: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| ConnectError::Tcp(format!("{address}: no answer within {timeout:?}")))?
        .map_err(|e| ConnectError::Tcp(format!("{address}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

impl tower_service::Service<Uri> for PeerConnector {
    type Response = TokioIo<PeerStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    /// The URI names the member as it is listed (`http://HOST:PORT/...`): the host is
    /// what the certificate must name, so the URI must not carry a resolved address
    /// in its place.
    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| ConnectError::Tcp(format!("{uri} names no host")))?;
            let authority = format!("{host}:{}", uri.port_u16().unwrap_or(80));
            connector.open_authority(authority).await.map(TokioIo::new)
        })
    }
}

/// A connection to a peer: plain TCP or TLS over it.
pub type PeerStream = MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;

impl PeerStream {
    /// The TCP connection underneath, for socket options.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            PeerStream::Plain(tcp) => tcp,
            PeerStream::Tls(tls) => tls.get_ref().0,
        }
    }
}

impl Connection for PeerStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}
