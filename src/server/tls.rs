//! TLS on the node's one TCP port (`--tls-cert`, `--tls-key`): loading the PEM files,
//! building the rustls configuration, and accepting a connection.
//!
//! The port serves HTTPS once a certificate is given. A connection's first byte says
//! what it speaks: a TLS record starts with `0x16` (a handshake, the ClientHello); any
//! other first byte is plain HTTP, answered with a plain-text `400` saying the port
//! requires HTTPS and closed, so a client pointed at the wrong scheme learns why at
//! once instead of waiting for a handshake that never comes. The first byte and the
//! handshake together are bounded by `HANDSHAKE_TIMEOUT`, so a client that stops half
//! way holds its connection slot no longer than one that never sends its headers.
//!
//! Key material never leaves this module: errors name the file and what is wrong with
//! it, never its contents, and `Debug` shows paths only.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The first byte of a TLS record carrying a handshake message (RFC 8446 §5.1,
/// `ContentType.handshake`): what every ClientHello starts with.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// The longest a connection may take to send its first byte and finish the TLS
/// handshake (the same bound hyper puts on a request's headers).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused plain-HTTP connection is read (and discarded) after the `400`
/// went out, so that closing it does not reset the connection before the client has
/// read the answer (a close with unread bytes sends RST, which may discard the answer).
const REFUSAL_DRAIN: Duration = Duration::from_millis(500);
/// The most bytes read and discarded from a refused plain-HTTP connection.
const REFUSAL_DRAIN_BYTES: usize = 64 << 10;
/// What a plain HTTP request on a TLS port is answered.
const PLAIN_REFUSAL_BODY: &str =
    "this port requires HTTPS (TLS): use https:// (e.g. curl --cacert CA.pem https://HOST:PORT/...)\n";

/// The files `--tls-cert` and `--tls-key` name.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// This node's certificate chain, PEM: the node's certificate first.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A TLS file that cannot be used. The message names the flag and the file, and says
/// what is wrong; it never quotes the file.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {}: {reason}", path.display())]
pub struct TlsError {
    /// The flag that named the file.
    pub flag: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// The node's TLS configuration, loaded and checked at start.
pub struct Tls {
    files: TlsFiles,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    /// Paths only: the configuration holds the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish_non_exhaustive()
    }
}

/// The crypto provider: ring (see Cargo.toml for why not aws-lc-rs).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Reads and checks the files and builds the server configuration.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let chain = read_certificates("--tls-cert", &files.cert)?;
        let key = read_private_key("--tls-key", &files.key)?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError { flag: "--tls-cert", path: files.cert.clone(), reason: e.to_string() })?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| key_mismatch(&files, e))?;
        let mut config = config;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Ok(Tls { files, acceptor })
    }
}

/// The certificate and key do not go together, or rustls refuses the key: named by
/// both files, with rustls's reason (which names no key material).
fn key_mismatch(files: &TlsFiles, error: rustls::Error) -> TlsError {
    TlsError {
        flag: "--tls-key",
        path: files.key.clone(),
        reason: format!("cannot be used with the certificate in {}: {error}", files.cert.display()),
    }
}

/// Reads a file of PEM certificates: at least one.
pub(crate) fn read_certificates(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |reason: String| TlsError { flag, path: path.to_owned(), reason };
    let text = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let mut certificates = Vec::new();
    for (number, item) in CertificateDer::pem_slice_iter(&text).enumerate() {
        let certificate = item
            .map_err(|e| error(format!("certificate {} is not valid PEM: {}", number + 1, pem_error(&e))))?;
        certificates.push(certificate);
    }
    if certificates.is_empty() {
        return Err(error("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()));
    }
    Ok(certificates)
}

/// Reads a PEM private key. Errors say what kind of problem it is, never quoting the
/// file: it holds a secret.
fn read_private_key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let error = |reason: String| TlsError { flag, path: path.to_owned(), reason };
    let text = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => error(
            "holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)"
                .into(),
        ),
        other => error(format!("is not a valid PEM private key: {}", pem_error(&other))),
    })
}

/// What kind of PEM error this is, without the bytes some variants carry (a key file's
/// lines are secret).
fn pem_error(error: &rustls::pki_types::pem::Error) -> &'static str {
    use rustls::pki_types::pem::Error;
    match error {
        Error::MissingSectionEnd { .. } => "a section has no END line",
        Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        Error::Base64Decode(_) => "a section is not valid base64",
        Error::Io(_) => "it cannot be read",
        Error::NoItemsFound => "nothing of the expected kind in it",
        Error::SectionTooLarge => "a section is larger than 256 MB",
        _ => "malformed",
    }
}

/// Who is at the other end of an accepted connection, as far as TLS proved it.
#[derive(Clone, Debug)]
pub enum Identity {
    /// Plain TCP: the node has no TLS.
    Plain,
    /// TLS, without a client certificate.
    Anonymous,
}

/// A server-side connection: plain TCP or TLS over it.
pub enum ServerStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Takes an accepted TCP connection through TLS if the node has it: `None` when the
/// connection must not be served (plain HTTP on a TLS port, answered with `400`; a
/// handshake that failed or did not finish in time; a connection closed at once).
pub async fn accept(
    tls: Option<&Tls>,
    tcp: TcpStream,
    remote: std::net::SocketAddr,
) -> Option<(ServerStream, Identity)> {
    let Some(tls) = tls else { return Some((ServerStream::Plain(tcp), Identity::Plain)) };
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
        Ok(Ok(0)) => return None,
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::debug!(peer = %remote, %error, "connection failed before its first byte");
            return None;
        }
        Err(_) => {
            tracing::debug!(peer = %remote, "nothing sent within {HANDSHAKE_TIMEOUT:?}: closed");
            return None;
        }
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        tracing::debug!(peer = %remote, "plain HTTP on the TLS port: answered 400");
        refuse_plain(tcp).await;
        return None;
    }
    match tokio::time::timeout_at(deadline, tls.acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some((ServerStream::Tls(Box::new(stream)), Identity::Anonymous)),
        Ok(Err(error)) => {
            tracing::debug!(peer = %remote, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %remote, "TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}: closed");
            None
        }
    }
}

/// Answers a plain HTTP request on a TLS port with `400` and closes. What the client
/// sent is read and dropped for a moment after the answer, so the close does not reset
/// the connection under an answer the client has not read yet.
async fn refuse_plain(mut tcp: TcpStream) {
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{PLAIN_REFUSAL_BODY}",
        PLAIN_REFUSAL_BODY.len()
    );
    let written = tokio::time::timeout(REFUSAL_DRAIN, async {
        tcp.write_all(answer.as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(REFUSAL_DRAIN, async {
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < REFUSAL_DRAIN_BYTES {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(read) => drained += read,
            }
        }
    })
    .await;
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            ServerStream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            ServerStream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            ServerStream::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerStream::Plain(tcp) => tcp.is_write_vectored(),
            ServerStream::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            ServerStream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            ServerStream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}
