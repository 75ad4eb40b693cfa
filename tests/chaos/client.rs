//! The clients: a minimal blocking HTTP/1.1 client, and the workload threads that record
//! every operation's invocation and completion.
//!
//! Outcomes: a write (PUT, conditional PUT, DELETE) that got no answer (timeout, reset)
//! or a 503 is unknown: it may or may not have happened. A connection that was never
//! established is a definite failure (nothing was sent), and so is a 503 `starting` (a
//! node waiting to join or bootstrap, which proposes nothing). Reads that fail constrain
//! nothing.
//!
//! In a TLS run (`set_tls`) every connection of the harness (clients, watchers, the
//! nemeses' status reads, the forger) speaks TLS, trusting the run's CA and presenting
//! no certificate: the nodes take clients without one (no `--client-ca`), and refuse
//! peer routes to such a connection.
//!
//! A client speaks the HTTP API or etcd's gRPC API (`Api`, `MMAPD_CHAOS_API`): the same
//! operations, recorded the same way; the gRPC side is `grpc.rs`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::cluster::PORT;
use super::net::node_ip;
use super::rng::Rng;

/// How long a client waits for an answer (above the nodes' 2 s request timeout).
const ANSWER_TIMEOUT: Duration = Duration::from_millis(3500);
/// How long a client waits for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Keys in use at once; each key serves this many operations, then the next is used, so
/// each key's history stays small enough to check exhaustively.
pub const ACTIVE_KEYS: u64 = 6;
const OPERATIONS_PER_KEY: u64 = 40;

/// The TLS configuration of the current run's connections; `None`: plain HTTP.
static TLS: RwLock<Option<Arc<rustls::ClientConfig>>> = RwLock::new(None);

/// The current run's TLS configuration (`None`: plain), for the gRPC connections.
pub fn tls_config() -> Option<Arc<rustls::ClientConfig>> {
    TLS.read().expect("tls lock").clone()
}

/// From now on every connection speaks TLS trusting the CA certificate in `ca` (PEM),
/// with no client certificate; `None`: plain HTTP.
pub fn set_tls(ca: Option<&std::path::Path>) -> Result<(), String> {
    let config = match ca {
        None => None,
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
                roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(Arc::new(config))
        }
    };
    *TLS.write().expect("tls lock") = config;
    Ok(())
}

/// A connection to a node: plain, or TLS with its handshake done.
pub enum Stream {
    /// Plain HTTP.
    Plain(TcpStream),
    /// TLS (boxed: the connection state is large).
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath (for timeouts).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => &tls.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buffer),
            Stream::Tls(tls) => match tls.read(buffer) {
                // A node that closes without close_notify: the end, as for plain HTTP
                // (an answer cut short is told by its length, not by this).
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
        }
    }
}

impl Write for Stream {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(bytes),
            Stream::Tls(tls) => tls.write(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

/// Connects to `node` within `timeout` (and, in a TLS run, completes the handshake):
/// every error is `NotSent`, since no byte of a request has gone yet.
pub fn connect(node: usize, timeout: Duration) -> Result<Stream, NoAnswer> {
    let address = SocketAddr::from((node_ip(node), PORT));
    let not_sent = |e: std::io::Error| NoAnswer::NotSent(format!("connect {address}: {e}"));
    let mut tcp = TcpStream::connect_timeout(&address, timeout).map_err(not_sent)?;
    let _ = tcp.set_nodelay(true);
    let Some(config) = TLS.read().expect("tls lock").clone() else { return Ok(Stream::Plain(tcp)) };
    tcp.set_read_timeout(Some(timeout)).map_err(not_sent)?;
    tcp.set_write_timeout(Some(timeout)).map_err(not_sent)?;
    let name = ServerName::from(std::net::IpAddr::from(node_ip(node)));
    let mut connection = rustls::ClientConnection::new(config, name)
        .map_err(|e| NoAnswer::NotSent(format!("TLS to {address}: {e}")))?;
    let deadline = Instant::now() + timeout;
    while connection.is_handshaking() {
        if Instant::now() >= deadline {
            return Err(NoAnswer::NotSent(format!("TLS handshake with {address}: no answer in {timeout:?}")));
        }
        connection
            .complete_io(&mut tcp)
            .map_err(|e| NoAnswer::NotSent(format!("TLS handshake with {address}: {e}")))?;
    }
    Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(connection, tcp))))
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// The version in the ETag header, if any.
    pub version: Option<u64>,
    /// `X-Mmapd-Revision`, if any.
    pub revision: Option<u64>,
    /// The body.
    pub body: Vec<u8>,
}

/// Why no answer came.
#[derive(Debug)]
pub enum NoAnswer {
    /// No connection: the request was never sent.
    NotSent(String),
    /// Sent, but no complete answer.
    Lost(String),
}

/// Sends one request on a fresh connection (`Connection: close`).
pub fn request(
    node: usize,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<Answer, NoAnswer> {
    request_within(node, method, path, headers, body, ANSWER_TIMEOUT)
}

/// `request`, waiting at most `timeout` for the answer.
pub fn request_within(
    node: usize,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<Answer, NoAnswer> {
    let address = SocketAddr::from((node_ip(node), PORT));
    let mut stream = connect(node, CONNECT_TIMEOUT.min(timeout))?;
    let deadline = Instant::now() + timeout;
    let lost = |e: std::io::Error| NoAnswer::Lost(format!("{address}: {e}"));
    stream.tcp().set_write_timeout(Some(timeout)).map_err(lost)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).map_err(lost)?;
    let mut raw = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(NoAnswer::Lost(format!("{address}: no answer in {timeout:?}")));
        }
        stream.tcp().set_read_timeout(Some(left)).map_err(lost)?;
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(lost(e)),
        }
        if let Some(answer) = parse(&raw) {
            return Ok(answer);
        }
    }
    parse(&raw).ok_or_else(|| NoAnswer::Lost(format!("{address}: incomplete answer ({} bytes)", raw.len())))
}

/// Parses a complete response (headers and `Content-Length` bytes of body), or `None`.
fn parse(raw: &[u8]) -> Option<Answer> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut length = 0;
    let mut version = None;
    let mut revision = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse().ok()?,
            "etag" => version = value.trim_matches('"').parse().ok(),
            "x-mmapd-revision" => revision = value.parse().ok(),
            _ => {}
        }
    }
    let body = raw.get(end + 4..end + 4 + length)?.to_vec();
    Some(Answer { status, version, revision, body })
}

/// The API a client or watcher speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// The HTTP API (`/v1/kv`, `/v1/watch`).
    Http,
    /// etcd's v3 gRPC API (KV and Watch), on the same port.
    Grpc,
}

/// `MMAPD_CHAOS_API`: which APIs a run's clients and watchers speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiMode {
    /// Both in every run (the default): alternately by client and watcher number.
    Mixed,
    /// The HTTP API only.
    Http,
    /// The gRPC API only.
    Grpc,
}

impl ApiMode {
    /// From `MMAPD_CHAOS_API` (unset: `mixed`).
    pub fn from_env() -> Result<ApiMode, String> {
        match std::env::var("MMAPD_CHAOS_API").as_deref() {
            Err(_) | Ok("mixed") => Ok(ApiMode::Mixed),
            Ok("http") => Ok(ApiMode::Http),
            Ok("grpc") => Ok(ApiMode::Grpc),
            Ok(other) => Err(format!("MMAPD_CHAOS_API={other}: expected mixed, http or grpc")),
        }
    }

    /// The API of client (or watcher, or final read's key) number `index` in the run
    /// of `seed`: in a mixed run they alternate, starting with the seed's parity, so
    /// that either API gets the first watcher (the one from revision 1).
    pub fn api(self, seed: u64, index: u64) -> Api {
        match self {
            ApiMode::Http => Api::Http,
            ApiMode::Grpc => Api::Grpc,
            ApiMode::Mixed if (seed.wrapping_add(index)) % 2 == 0 => Api::Http,
            ApiMode::Mixed => Api::Grpc,
        }
    }

    /// The variable's value.
    pub fn name(self) -> &'static str {
        match self {
            ApiMode::Mixed => "mixed",
            ApiMode::Http => "http",
            ApiMode::Grpc => "grpc",
        }
    }
}

/// What a client asked.
#[derive(Clone, Debug)]
pub enum Request {
    /// GET.
    Read,
    /// PUT of a unique value.
    Write(u64),
    /// PUT with `If-Match` the version read with `expected` (the value).
    Swap {
        /// The version in `If-Match`.
        version: u64,
        /// The value read with that version.
        expected: u64,
        /// The value written.
        new: u64,
    },
    /// PUT with `If-None-Match: *`.
    Create(u64),
    /// DELETE.
    Delete,
}

/// How it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A read that saw this value (`None`: 404).
    Read(Option<u64>),
    /// A write that succeeded (200/201), or a delete that found the key.
    Ok,
    /// 412, or a delete that answered 404.
    Rejected,
    /// Definitely did not happen (no connection, or a failed read).
    Failed,
    /// May or may not have happened.
    Unknown,
}

/// One operation as recorded.
#[derive(Clone, Debug)]
pub struct Event {
    /// The client (thread); `usize::MAX` for the final reads.
    pub client: usize,
    /// The node asked (index from 0).
    pub node: usize,
    /// The key number (`k<key>`).
    pub key: u64,
    /// Microseconds since the run began.
    pub invoke: u64,
    /// Microseconds since the run began (when the answer, or the giving up, came).
    pub complete: u64,
    /// What was asked.
    pub request: Request,
    /// What came back.
    pub outcome: Outcome,
    /// The version in the answer's ETag, if any.
    pub version: Option<u64>,
    /// The revision in the answer's `X-Mmapd-Revision`, if any (for a write that
    /// succeeded: the revision it created).
    pub revision: Option<u64>,
    /// Status or error, for people.
    pub detail: String,
    /// The API it was sent on.
    pub api: Api,
}

/// What the clients share.
pub struct Shared {
    /// When the run began.
    pub start: Instant,
    /// Set to stop the clients.
    pub stop: AtomicBool,
    /// Operations begun (picks the active keys).
    pub begun: AtomicU64,
    /// Every completed operation.
    pub history: Mutex<Vec<Event>>,
    /// The run's nodes.
    pub nodes: usize,
    /// The bug planted in the gRPC adapter, if any (`MMAPD_CHAOS_PLANT_GRPC`).
    pub plant: super::grpc::Plant,
}

impl Shared {
    /// Microseconds since the run began.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

/// A client thread's loop: random operations on random nodes, on `api`, until told to
/// stop.
pub fn client_loop(id: usize, api: Api, shared: Arc<Shared>, mut rng: Rng) {
    let mut grpc = (api == Api::Grpc).then(super::grpc::Client::new);
    // Versions this client last saw, per key, with the value they came with.
    let mut known: std::collections::HashMap<u64, (u64, u64)> = std::collections::HashMap::new();
    let mut sequence = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let begun = shared.begun.fetch_add(1, Ordering::Relaxed);
        let window = begun / (OPERATIONS_PER_KEY * ACTIVE_KEYS) * ACTIVE_KEYS;
        let key = window + rng.below(ACTIVE_KEYS);
        let node = rng.index(shared.nodes);
        sequence += 1;
        let value = (id as u64 + 1) * 1_000_000_000 + sequence;
        let request = match rng.below(100) {
            0..=39 => Request::Read,
            40..=64 => Request::Write(value),
            65..=79 => match known.get(&key) {
                Some(&(version, expected)) => Request::Swap { version, expected, new: value },
                None => Request::Read,
            },
            80..=89 => Request::Create(value),
            _ => Request::Delete,
        };
        let event = match grpc.as_mut() {
            Some(grpc) => grpc.perform(&shared, id, node, key, request),
            None => perform(&shared, id, node, key, request),
        };
        match (&event.request, &event.outcome, event.version) {
            (Request::Read, Outcome::Read(Some(v)), Some(version)) => {
                known.insert(key, (version, *v));
            }
            (Request::Read, Outcome::Read(None), _) => {
                known.remove(&key);
            }
            _ => {}
        }
        let pause = event.outcome == Outcome::Failed;
        shared.history.lock().expect("history lock").push(event);
        if pause {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `MMAPD_CHAOS_STALE_READS=1` makes the clients read with `?consistency=stale`: a planted
/// bug (stale reads are not linearizable) that the checker must catch, to prove itself.
/// The final reads stay linearizable.
fn stale_reads() -> bool {
    std::env::var("MMAPD_CHAOS_STALE_READS").is_ok_and(|v| v == "1")
}

/// True for the answer of a node that is still starting (`{"code": "starting"}`).
fn is_starting(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|value| value["code"] == "starting")
}

/// Performs one request over HTTP and records it.
pub fn perform(shared: &Shared, client: usize, node: usize, key: u64, request: Request) -> Event {
    let path = format!("/v1/kv/k{key}");
    let invoke = shared.now();
    let answer = match &request {
        Request::Read if client != usize::MAX && stale_reads() => {
            self::request(node, "GET", &format!("{path}?consistency=stale"), &[], b"")
        }
        Request::Read => self::request(node, "GET", &path, &[], b""),
        Request::Write(v) => self::request(node, "PUT", &path, &[], v.to_string().as_bytes()),
        Request::Swap { version, new, .. } => self::request(
            node,
            "PUT",
            &path,
            &[("If-Match", format!("\"{version}\""))],
            new.to_string().as_bytes(),
        ),
        Request::Create(v) => {
            self::request(node, "PUT", &path, &[("If-None-Match", "*".into())], v.to_string().as_bytes())
        }
        Request::Delete => self::request(node, "DELETE", &path, &[], b""),
    };
    let complete = shared.now();
    let is_read = matches!(request, Request::Read);
    let (outcome, version, revision, detail) = match answer {
        Err(NoAnswer::NotSent(e)) => (Outcome::Failed, None, None, e),
        Err(NoAnswer::Lost(e)) => (if is_read { Outcome::Failed } else { Outcome::Unknown }, None, None, e),
        Ok(answer) => {
            let detail = format!("{} {}", answer.status, String::from_utf8_lossy(&answer.body).trim());
            let outcome = match (is_read, &request, answer.status) {
                (true, _, 200) => match std::str::from_utf8(&answer.body).ok().and_then(|s| s.parse().ok()) {
                    Some(v) => Outcome::Read(Some(v)),
                    None => Outcome::Failed,
                },
                (true, _, 404) => Outcome::Read(None),
                (true, _, _) => Outcome::Failed,
                (false, _, 200 | 201) => Outcome::Ok,
                (false, _, 412) => Outcome::Rejected,
                (false, Request::Delete, 404) => Outcome::Rejected,
                // A node still joining or bootstrapping answers everything so, and proposes nothing.
                (false, _, 503) if is_starting(&answer.body) => Outcome::Failed,
                // Anything else (503, 409, 500) may have been proposed: unknown.
                (false, _, _) => Outcome::Unknown,
            };
            (outcome, answer.version, answer.revision, detail)
        }
    };
    Event { client, node, key, invoke, complete, request, outcome, version, revision, detail, api: Api::Http }
}
