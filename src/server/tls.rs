//! TLS on the node's one TCP port (`--tls-cert`, `--tls-key`, `--tls-ca`,
//! `--client-ca`): loading the PEM files, building the rustls configurations, accepting
//! a connection, and connecting to a peer.
//!
//! **Who may do what.** One port serves clients and peers, and TLS cannot know which
//! routes a connection will ask for, so the handshake asks every client for a
//! certificate and requires none; a certificate that is sent must chain to `--tls-ca`
//! or to `--client-ca`, else the handshake fails. The connection then carries an
//! `Identity` (none, a client certificate, a peer certificate: one chaining to
//! `--tls-ca`), and the route layer decides what it needs (`Tls::check_peer_route`,
//! `Tls::check_client_route`, `certificate_names`):
//! - peer routes (`/raft/*`) need a peer certificate, and the member the request
//!   speaks for (its sender id, mapped to an address by the cluster record; for a
//!   sender the record does not know yet, the address it advertises) must be named by
//!   the certificate's subjectAltName (the host of `HOST:PORT`, a DNS name or an IP
//!   address): one member's certificate cannot speak for another;
//! - client routes need nothing more, unless `--client-ca` is set: then a certificate
//!   chaining to it (or a peer certificate: a node asking another for its view) is
//!   required; `/health` stays open.
//!
//! So `--client-ca` should be another CA than `--tls-ca`: a client certificate from
//! the peers' CA that names a member's host could speak for that member.
//!
//! **Switching a running cluster to TLS** (`--tls-accept-plain`): the port also takes
//! plain connections (their peer requests are guarded by the cluster secret only, as
//! before TLS), and an outgoing connection whose TLS handshake fails for any reason
//! but a certificate (the peer answered in plain HTTP, or reset) is made again in
//! plain. A rolling restart with it, then one without, moves every connection to TLS
//! without a moment in which two members cannot talk.
//!
//! Outgoing connections to peers (the peer stream, `POST /raft/*`, forwarded writes
//! and membership changes, probes and joins, the leader's member view) go through
//! `PeerConnector`: TLS with this node's certificate, the server's certificate checked
//! against `--tls-ca` and the peer's member address (`--peers` names included).
//!
//! The port serves HTTPS once a certificate is given. A connection's first byte says
//! what it speaks: a TLS record starts with `0x16` (a handshake, the ClientHello); any
//! other first byte is plain HTTP, answered with a plain-text `400` saying the port
//! requires HTTPS and closed, so a client pointed at the wrong scheme learns why at
//! once instead of waiting for a handshake that never comes. The first byte and the
//! handshake together are bounded by `HANDSHAKE_TIMEOUT`, so a client that stops half
//! way holds its connection slot no longer than one that never sends its headers.
//!
//! **Reload** (`Tls::reload`, on SIGHUP): the same files are read again and, if every
//! one can be used (the certificate parses, the key goes with it, the CAs parse, the
//! certificate still names the node's address), the new configuration is put in force
//! for connections made from then on, both ways: the server side hands new clients the
//! new certificate and checks theirs against the new CAs, and the peer connector
//! presents it and checks against the new `--tls-ca`. Connections already open keep
//! what they started with. A file that cannot be used is refused as at start, naming
//! it, and what was in force stays. Which files, and which checks apply
//! (`--client-ca` or not, `--tls-accept-plain`), are the flags': a restart changes
//! them.
//!
//! A handshake refused over a certificate is logged at most once per address per 10 s,
//! with a count of those not logged (`log_limit`), and counted in `/metrics`
//! (`mmapd_tls_handshakes_refused_total`): a flood of bad certificates cannot flood
//! the log.
//!
//! Key material never leaves this module: errors name the file and what is wrong with
//! it, never its contents, and `Debug` shows paths only.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::log_limit::{self, PerAddress, Verdict};

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

/// The files the TLS flags name.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// This node's certificate chain, PEM: the node's certificate first.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA (PEM, one or more certificates) every member's certificate chains to
    /// (`--tls-ca`): peers authenticate each other with it, both ways.
    pub ca: Option<PathBuf>,
    /// The CA clients' certificates must chain to (`--client-ca`); None: clients need none.
    pub client_ca: Option<PathBuf>,
    /// `--tls-accept-plain`: the port takes plain connections too, and a connection to
    /// a peer that does not speak TLS is made again in plain (turning TLS on in a
    /// running cluster: a rolling restart with it, then one without).
    pub accept_plain: bool,
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

/// The node's TLS: which files, and what they held when last read well. The files are
/// read at start and again on every `reload` (SIGHUP); a reload that fails keeps what
/// is in force, so a bad new file never takes TLS away from a running node.
pub struct Tls {
    files: TlsFiles,
    /// The address this node's own certificate must name (a clustered node's advertised
    /// address: its peers check it), checked at start and on every reload.
    own_address: Option<String>,
    /// What the files held, swapped whole by `reload`. A connection takes the one in
    /// force when it starts and keeps it: connections made before a reload go on with
    /// the old certificate, new ones get the new.
    current: RwLock<Arc<Loaded>>,
    /// Handshakes refused over a certificate since start (`/metrics`).
    refused_handshakes: AtomicU64,
    /// Which addresses' refusals were logged when: at most one line per address per
    /// `log_limit::INTERVAL`.
    refusal_log: PerAddress,
}

/// The configurations built from one reading of the files.
struct Loaded {
    acceptor: tokio_rustls::TlsAcceptor,
    /// Checks a client certificate against `--tls-ca`: which connections are peers'.
    peer_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// This node's side of a connection to a peer; None without `--tls-ca`.
    outgoing: Option<tokio_rustls::TlsConnector>,
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
    /// Reads and checks the files and builds the server configuration, and with
    /// `--tls-ca` the client one. With `own_address` (a node with peers), the
    /// certificate must name its host: its peers would refuse every message otherwise.
    pub fn load(files: TlsFiles, own_address: Option<&str>) -> Result<Tls, TlsError> {
        let loaded = Loaded::read(&files, own_address)?;
        Ok(Tls {
            files,
            own_address: own_address.map(str::to_owned),
            current: RwLock::new(Arc::new(loaded)),
            refused_handshakes: AtomicU64::new(0),
            refusal_log: PerAddress::default(),
        })
    }

    /// Reads the files again (SIGHUP) and puts what they hold in force for new
    /// connections. Err names the file that cannot be used and why (never its
    /// contents); what was in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = Loaded::read(&self.files, self.own_address.as_deref())?;
        *self.current.write().expect("tls lock") = Arc::new(loaded);
        Ok(())
    }

    /// The files, for logs.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// What is in force now.
    fn loaded(&self) -> Arc<Loaded> {
        self.current.read().expect("tls lock").clone()
    }

    /// Handshakes refused over a certificate since start.
    pub fn refused_handshakes(&self) -> u64 {
        self.refused_handshakes.load(Ordering::Relaxed)
    }

    /// Logs a handshake from `remote` refused over a certificate, at most once per
    /// address per `log_limit::INTERVAL` (the line counts those not logged since the
    /// last), and counts it.
    fn log_refusal(&self, remote: std::net::SocketAddr, error: &std::io::Error) {
        self.refused_handshakes.fetch_add(1, Ordering::Relaxed);
        match self.refusal_log.check(remote.ip(), std::time::Instant::now()) {
            Verdict::Quiet => {}
            Verdict::Log { not_logged, shared: false } => tracing::warn!(
                peer = %remote,
                %error,
                not_logged_since_last_line = not_logged,
                "TLS handshake refused: certificate not accepted (at most one line per address per {:?})",
                log_limit::INTERVAL
            ),
            Verdict::Log { not_logged, shared: true } => tracing::warn!(
                peer = %remote,
                %error,
                not_logged_since_last_line = not_logged,
                "TLS handshake refused: certificate not accepted (too many addresses to log each: one \
                 line per {:?} for all the others)",
                log_limit::INTERVAL
            ),
        }
    }

    /// Whether peers talk over TLS (`--tls-ca` given).
    pub fn has_peer_ca(&self) -> bool {
        self.files.ca.is_some()
    }

    /// This node's side of a TLS connection to a peer, as the files last read well
    /// say; None without `--tls-ca`.
    pub(crate) fn connector(&self) -> Option<tokio_rustls::TlsConnector> {
        self.loaded().outgoing.clone()
    }

    /// Whether plain connections are taken too (`--tls-accept-plain`).
    pub fn accepts_plain(&self) -> bool {
        self.files.accept_plain
    }

    /// Whether clients must present a certificate (`--client-ca` given).
    pub fn requires_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// What a peer route (`/raft/*`) needs from the connection: a peer certificate
    /// (one chaining to `--tls-ca`). Err says why the connection does not qualify.
    pub fn check_peer_route(&self, identity: &Identity) -> Result<(), String> {
        match identity {
            Identity::Peer(_) | Identity::Plain => Ok(()),
            _ if !self.has_peer_ca() => {
                Err("this node has no --tls-ca: it takes no peer requests over TLS".into())
            }
            Identity::Anonymous | Identity::Client => {
                Err("peer requests need a certificate that chains to the cluster's CA (--tls-ca)".into())
            }
        }
    }

    /// What a client route needs from the connection: with `--client-ca`, a client
    /// certificate (or a peer's). Err says why the connection does not qualify.
    pub fn check_client_route(&self, identity: &Identity) -> Result<(), String> {
        match identity {
            Identity::Client | Identity::Peer(_) => Ok(()),
            _ if !self.requires_client_certificates() => Ok(()),
            Identity::Plain | Identity::Anonymous => {
                Err("this node requires a client certificate that chains to its --client-ca".into())
            }
        }
    }
}

impl Loaded {
    /// Reads the files and builds the configurations from them.
    fn read(files: &TlsFiles, own_address: Option<&str>) -> Result<Loaded, TlsError> {
        let chain = read_certificates("--tls-cert", &files.cert)?;
        let key = read_private_key("--tls-key", &files.key)?;
        let peer_roots = files.ca.as_deref().map(|path| read_roots("--tls-ca", path)).transpose()?;
        let client_roots =
            files.client_ca.as_deref().map(|path| read_roots("--client-ca", path)).transpose()?;
        let verifier_for =
            |flag: &'static str, path: &Option<PathBuf>, roots: &Option<Arc<RootCertStore>>| {
                roots
                    .as_ref()
                    .map(|roots| {
                        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                            .allow_unauthenticated()
                            .build()
                            .map_err(|e| TlsError {
                                flag,
                                path: path.clone().unwrap_or_default(),
                                reason: e.to_string(),
                            })
                    })
                    .transpose()
            };
        let peer_verifier = verifier_for("--tls-ca", &files.ca, &peer_roots)?;
        let client_verifier = verifier_for("--client-ca", &files.client_ca, &client_roots)?;
        let version_error = |e: rustls::Error| TlsError {
            flag: "--tls-cert",
            path: files.cert.clone(),
            reason: e.to_string(),
        };
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(version_error)?;
        let server = match EitherCa::new(peer_verifier.clone(), client_verifier) {
            Some(verifier) => server.with_client_cert_verifier(Arc::new(verifier)),
            None => server.with_no_client_auth(),
        };
        let mut server =
            server.with_single_cert(chain.clone(), key.clone_key()).map_err(|e| key_mismatch(files, e))?;
        // HTTP/1.1 first: a client that offers both (curl, browsers) keeps it, as before
        // the etcd front; `h2` for etcd's gRPC clients, which offer only h2 and, with
        // HTTP/1.1 alone here, were refused the handshake (no_application_protocol).
        server.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
        let outgoing = match peer_roots {
            None => None,
            Some(roots) => {
                let client = ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(version_error)?
                    .with_root_certificates(roots)
                    .with_client_auth_cert(chain.clone(), key)
                    .map_err(|e| key_mismatch(files, e))?;
                Some(tokio_rustls::TlsConnector::from(Arc::new(client)))
            }
        };
        // The first certificate of the chain is this node's own.
        if let Some(address) = own_address {
            if !certificate_names(&chain[0], address) {
                return Err(TlsError {
                    flag: "--tls-cert",
                    path: files.cert.clone(),
                    reason: format!(
                        "the certificate does not name {} (subjectAltName), the host of this node's \
                         address {address}: its peers would refuse it",
                        host_of(address)
                    ),
                });
            }
        }
        Ok(Loaded { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)), peer_verifier, outgoing })
    }

    /// What the verified certificate chain of a connection makes it.
    fn identity_of(&self, chain: Option<&[CertificateDer<'static>]>) -> Identity {
        let Some((end_entity, intermediates)) = chain.and_then(|chain| chain.split_first()) else {
            return Identity::Anonymous;
        };
        // The handshake verified it against one of the CAs; which one decides.
        let peer = self.peer_verifier.as_ref().is_some_and(|verifier| {
            verifier.verify_client_cert(end_entity, intermediates, UnixTime::now()).is_ok()
        });
        if peer {
            Identity::Peer(Arc::new(end_entity.clone()))
        } else {
            Identity::Client
        }
    }
}

/// The host of a member address `HOST:PORT` (`[::1]:3001` gives `::1`).
pub fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// Whether `certificate` names the host of `address` in its subjectAltName: a DNS
/// name (wildcards as RFC 6125 allows) or an IP address, as a TLS client checks a
/// server's name. False for a certificate that does not parse.
pub fn certificate_names(certificate: &CertificateDer<'_>, address: &str) -> bool {
    let Ok(name) = ServerName::try_from(host_of(address)) else { return false };
    let Ok(parsed) = ParsedCertificate::try_from(certificate) else { return false };
    rustls::client::verify_server_name(&parsed, &name).is_ok()
}

/// The server's client-certificate check: a certificate is optional, and one that is
/// sent must chain to the peers' CA or the clients' CA.
#[derive(Debug)]
struct EitherCa {
    verifiers: Vec<Arc<dyn ClientCertVerifier>>,
    /// Every CA's subject, hinted to clients so they pick the right certificate.
    hints: Vec<DistinguishedName>,
}

impl EitherCa {
    /// None when neither CA is configured: no client certificates asked for.
    fn new(
        peers: Option<Arc<dyn ClientCertVerifier>>,
        clients: Option<Arc<dyn ClientCertVerifier>>,
    ) -> Option<EitherCa> {
        let verifiers: Vec<_> = peers.into_iter().chain(clients).collect();
        if verifiers.is_empty() {
            return None;
        }
        let hints = verifiers.iter().flat_map(|v| v.root_hint_subjects().iter().cloned()).collect();
        Some(EitherCa { verifiers, hints })
    }
}

impl ClientCertVerifier for EitherCa {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut last = None;
        for verifier in &self.verifiers {
            match verifier.verify_client_cert(end_entity, intermediates, now) {
                Ok(verified) => return Ok(verified),
                Err(error) => last = Some(error),
            }
        }
        Err(last.expect("EitherCa has a verifier"))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifiers[0].verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifiers[0].verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifiers[0].supported_verify_schemes()
    }
}

/// Reads a CA file into a root store: every certificate in it is trusted.
fn read_roots(flag: &'static str, path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for (number, certificate) in read_certificates(flag, path)?.into_iter().enumerate() {
        roots.add(certificate).map_err(|e| TlsError {
            flag,
            path: path.to_owned(),
            reason: format!("certificate {} cannot be a trust anchor: {e}", number + 1),
        })?;
    }
    Ok(Arc::new(roots))
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
    /// Plain TCP: the node has no TLS, or takes plain connections too
    /// (`--tls-accept-plain`). Peer routes are then guarded by the cluster secret only,
    /// as without TLS; client routes are refused with `--client-ca`.
    Plain,
    /// TLS, without a client certificate.
    Anonymous,
    /// A certificate that chains to `--client-ca` and not to `--tls-ca`.
    Client,
    /// A certificate that chains to `--tls-ca`: a member's. Which member it may
    /// speak for is what its subjectAltName names (`certificate_names`).
    Peer(Arc<CertificateDer<'static>>),
}

/// A connection that is plain TCP or TLS over it; `S` is rustls's server or client
/// stream (`ServerStream` here, `peer::connect::PeerStream` for outgoing connections).
pub enum MaybeTls<S> {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<S>),
}

/// A server-side connection: plain TCP or TLS over it.
pub type ServerStream = MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>;

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
    if first[0] != TLS_HANDSHAKE_RECORD && tls.accepts_plain() {
        return Some((ServerStream::Plain(tcp), Identity::Plain));
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        tracing::debug!(peer = %remote, "plain HTTP on the TLS port: answered 400");
        refuse_plain(tcp).await;
        return None;
    }
    // The configuration in force as the handshake starts: a reload meanwhile does not
    // change what this connection was offered or how its certificate is judged.
    let loaded = tls.loaded();
    match tokio::time::timeout_at(deadline, loaded.acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => {
            let identity = loaded.identity_of(stream.get_ref().1.peer_certificates());
            Some((ServerStream::Tls(Box::new(stream)), identity))
        }
        Ok(Err(error)) if is_certificate_error(&error) => {
            // A client or peer whose certificate does not chain to our CAs (or that
            // refused ours): a misconfigured node, or someone without the cluster's
            // credentials. Nothing it sent was read.
            tls.log_refusal(remote, &error);
            None
        }
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

impl<S: AsyncRead + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(tcp) => tcp.is_write_vectored(),
            MaybeTls::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            MaybeTls::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Whether a handshake failed over a certificate (ours refused, or theirs), rather
/// than over the transport or a peer that does not speak TLS.
pub fn is_certificate_error(error: &std::io::Error) -> bool {
    use rustls::AlertDescription as Alert;
    let Some(error) = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
        return false;
    };
    match error {
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => true,
        rustls::Error::AlertReceived(alert) => matches!(
            alert,
            Alert::BadCertificate
                | Alert::UnsupportedCertificate
                | Alert::CertificateRevoked
                | Alert::CertificateExpired
                | Alert::CertificateUnknown
                | Alert::UnknownCA
                | Alert::CertificateRequired
                | Alert::AccessDenied
        ),
        _ => false,
    }
}
