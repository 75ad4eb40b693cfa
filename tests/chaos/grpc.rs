//! The gRPC clients and watchers: the operations of `client.rs` and the watch of
//! `watch.rs` on etcd's v3 API (the KV and Watch services of mmapd's etcd front, on the
//! same port), with tonic's clients generated from mmapd's own `proto/etcd`
//! (`mmapd::server::etcd::proto`) over hyper's HTTP/2 client, as `bench/grpc_load.rs`
//! drives them. Each client or watcher thread has its own current-thread tokio runtime,
//! so every socket is made on the thread that entered the hub's network namespace.
//!
//! Operations (`Client::perform`), each the HTTP client's, on the key `k<key>`:
//! - Read: a Range, linearizable (never `serializable`: that is a stale read); the
//!   value and its `mod_revision`, which is what the HTTP API's ETag carries;
//! - Write: a Put;
//! - Swap (`If-Match` with the version read): a Txn whose compare is the key's
//!   `mod_revision` equal to that version (even values written) or its value equal to
//!   the value read with it (odd): one condition, since every value is written once;
//!   then a Put. `succeeded: false` is the 412;
//! - Create (`If-None-Match: *`): a Txn comparing `create_revision` (even) or `version`
//!   (odd) with 0, then a Put;
//! - Delete: a DeleteRange; `deleted: 0` is the 404.
//!
//! Outcomes keep the HTTP client's discipline (`outcome_of_status`): ok (or rejected,
//! or a read's value) only on a response. A write definitely failed only when nothing
//! was sent (no connection, no TLS handshake agreeing on `h2`) or when the node
//! answered a status etcd gives only to a request it did not apply (checks made before
//! anything is proposed: InvalidArgument, FailedPrecondition, OutOfRange, NotFound,
//! AlreadyExists, PermissionDenied, Unauthenticated, ResourceExhausted, Unimplemented;
//! tonic makes up OutOfRange and ResourceExhausted itself only for messages far larger
//! than any of this workload's). Everything else is unknown: no answer within
//! `ANSWER_TIMEOUT`, Unavailable (which is also mmapd's timed-out write, "possibly due
//! to previous leader failure"), Unknown (a reset connection), DeadlineExceeded,
//! Internal, Aborted, Cancelled, DataLoss. A read that fails constrains nothing.
//!
//! Connections: a client keeps one HTTP/2 connection per node, as etcd's clients do, and
//! makes one call at a time; a failed call closes it, and so does a node closing it,
//! found before the next call is sent; the next call to that node connects again. In a
//! TLS run (`client::set_tls`) the connections speak TLS with the HTTP clients' trust
//! (the run's CA, no client certificate: the nodes have no `--client-ca`), offering
//! ALPN `h2` only, as etcd's gRPC clients do. The chaos nodes take no tokens (no
//! `--auth-tokens`), so no `authorization` metadata is sent.
//!
//! Watchers (`Watcher::stream`): one Watch stream per connection, one watch on it, of
//! the prefix `k` (`[k, l)`), `start_revision` the watcher's `from` (0: the next
//! revision) and `progress_notify` (the nodes send it every `--watch-progress-ms` of
//! silence, as the HTTP watch writes a progress line). Each response becomes the
//! checker's lines as one chunk (`Reader`): `created` gives the head (the revision the
//! watch began after), events become events at their `mod_revision`, an empty response
//! is progress at its header's revision. `canceled` with `compact_revision` R (the first
//! revision the node still holds) is the HTTP watch's `410 compacted` with R - 1 (the
//! last one gone) when it ends a watch with a `from` before any event or progress came;
//! later (a snapshot installed over history the watch had not seen) it is a
//! `cancelled` line, as the HTTP watch writes one. A create refused with `created` and
//! `canceled` together, or a call refused with a status, is no stream. A stalled
//! connection (not reading) has a 4 KiB stream window and receive buffer, so it backs
//! up to the node, whose watch falls behind its hub queue and catches up from the
//! history (gRPC watches are not cancelled as slow).
//!
//! Planted bugs (`MMAPD_CHAOS_PLANT_GRPC`, never set by CI; the daemon is not touched):
//! `drop-event` drops one event of an acknowledged write from a gRPC watch response
//! that holds later events too (so the watcher is vouched past it); `stale-read`
//! answers one gRPC read with the older value this client read of that key before,
//! once the value read now was acknowledged to a client before the read began. The
//! checkers must report each: a gap, and a key that is not linearizable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mmapd::server::etcd::proto::etcdserverpb::{
    compare, kv_client::KvClient, request_op, watch_client::WatchClient, watch_request, Compare,
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, ResponseHeader, TxnRequest, WatchCreateRequest,
    WatchRequest, WatchResponse,
};
use mmapd::server::etcd::proto::mvccpb;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

use super::client::{tls_config, Api, Event, Outcome, Request, Shared};
use super::cluster::PORT;
use super::net::node_ip;
use super::watch::{caught_up, small_receive_buffer, Change, Connection, Control, End, Item, Line};

/// How long a client waits for an answer: the HTTP client's (above the nodes' 2 s
/// request timeout).
const ANSWER_TIMEOUT: Duration = Duration::from_millis(3500);
/// How long a connection (TCP, TLS, HTTP/2 preface) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// A watch connection silent this long is given up: the HTTP watchers' `IDLE`.
const IDLE: Duration = Duration::from_millis(2000);
/// How often a watcher looks up from its stream (stop, lifetime, stall).
const POLL: Duration = Duration::from_millis(100);
/// The HTTP/2 stream window of a connection that will stall: the node may send this
/// much before it must wait for the watcher to read.
const STALL_WINDOW_BYTES: u32 = 4096;
/// The prefix the watchers watch, as etcd spells it: `[k, l)`.
const WATCH_KEY: &[u8] = b"k";
const WATCH_RANGE_END: &[u8] = b"l";

/// A bug planted in this adapter (`MMAPD_CHAOS_PLANT_GRPC`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantKind {
    /// Drop one acknowledged event from a watch response that holds later ones too.
    DropEvent,
    /// Answer one read with the older value this client read of that key before.
    StaleRead,
}

impl PlantKind {
    /// `MMAPD_CHAOS_PLANT_GRPC`: none when unset or empty.
    pub fn from_env() -> Result<Option<PlantKind>, String> {
        match std::env::var("MMAPD_CHAOS_PLANT_GRPC").as_deref() {
            Err(_) | Ok("") => Ok(None),
            Ok("drop-event") => Ok(Some(PlantKind::DropEvent)),
            Ok("stale-read") => Ok(Some(PlantKind::StaleRead)),
            Ok(other) => Err(format!("MMAPD_CHAOS_PLANT_GRPC={other}: expected drop-event or stale-read")),
        }
    }

    /// The variable's value.
    pub fn name(self) -> &'static str {
        match self {
            PlantKind::DropEvent => "drop-event",
            PlantKind::StaleRead => "stale-read",
        }
    }
}

/// A run's planted bug: armed until planted once; what was done.
#[derive(Debug, Default)]
pub struct Plant {
    /// The kind, if any.
    pub kind: Option<PlantKind>,
    /// What was planted, once it was.
    pub done: Mutex<Option<String>>,
}

impl Plant {
    /// A plant of `kind` (or none).
    pub fn new(kind: Option<PlantKind>) -> Plant {
        Plant { kind, done: Mutex::new(None) }
    }

    fn armed(&self, kind: PlantKind) -> bool {
        self.kind == Some(kind) && self.done.lock().expect("plant lock").is_none()
    }

    /// Records what was planted; false if it already was (by another thread).
    fn take(&self, what: String) -> bool {
        let mut done = self.done.lock().expect("plant lock");
        if done.is_some() {
            return false;
        }
        *done = Some(what);
        true
    }
}

/// tonic's client over one hyper HTTP/2 connection.
#[derive(Clone)]
struct Service {
    sender: SendRequest<tonic::body::Body>,
}

impl tower_service::Service<hyper::Request<tonic::body::Body>> for Service {
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

/// One HTTP/2 connection to a node; dropping it closes it.
struct Channel {
    sender: SendRequest<tonic::body::Body>,
    /// `http://` or `https://` and the node's address.
    origin: hyper::Uri,
    /// The connection's task (on this thread's runtime).
    task: tokio::task::JoinHandle<()>,
}

impl Channel {
    fn service(&self) -> Service {
        Service { sender: self.sender.clone() }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects to `node`: TCP, TLS with ALPN `h2` in a TLS run, the HTTP/2 preface. Every
/// error means nothing was sent. `stalling`: a small receive buffer and stream window.
async fn connect(node: usize, stalling: bool) -> Result<Channel, String> {
    let address = SocketAddr::from((node_ip(node), PORT));
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| format!("connect {address}: no answer in {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("connect {address}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if stalling {
        small_receive_buffer(&tcp);
    }
    let Some(config) = tls_config() else {
        return handshake(tcp, format!("http://{address}"), stalling).await;
    };
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::from(std::net::IpAddr::from(node_ip(node)));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| format!("TLS handshake with {address}: no answer in {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("TLS handshake with {address}: {e}"))?;
    let agreed = tls.get_ref().1.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
    if agreed.as_deref() != Some("h2") {
        return Err(format!("TLS handshake with {address}: ALPN agreed {agreed:?}, not h2"));
    }
    handshake(tls, format!("https://{address}"), stalling).await
}

async fn handshake<S>(io: S, origin: String, stalling: bool) -> Result<Channel, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let origin: hyper::Uri = origin.parse().map_err(|e| format!("{origin}: {e}"))?;
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    if stalling {
        builder.initial_stream_window_size(STALL_WINDOW_BYTES);
    }
    let (sender, connection) = tokio::time::timeout(CONNECT_TIMEOUT, builder.handshake(TokioIo::new(io)))
        .await
        .map_err(|_| format!("HTTP/2 handshake with {origin}: no answer in {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("HTTP/2 handshake with {origin}: {e}"))?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Channel { sender, origin, task })
}

/// A current-thread runtime: its sockets are made on the calling thread (and so in its
/// network namespace).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

/// Why a call has no response.
#[derive(Debug)]
enum Failure {
    /// No connection: nothing was sent.
    NotSent(String),
    /// The node (or tonic, for a broken connection) answered this status.
    Status(tonic::Status),
}

/// What a response said, as the history records it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reply {
    outcome: Outcome,
    version: Option<u64>,
    revision: Option<u64>,
    detail: String,
}

/// A header's revision, when it names one.
fn revision_of(header: &Option<ResponseHeader>) -> Option<u64> {
    header.as_ref().and_then(|header| u64::try_from(header.revision).ok()).filter(|&r| r > 0)
}

/// The outcome of a call that ended with `code` instead of a response.
pub fn outcome_of_status(is_read: bool, code: tonic::Code) -> Outcome {
    use tonic::Code;
    if is_read {
        return Outcome::Failed;
    }
    match code {
        // Refused before anything was proposed.
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::ResourceExhausted
        | Code::Unimplemented => Outcome::Failed,
        // May have been proposed and applied: a timeout, a leader lost, a reset, a bug.
        Code::Ok
        | Code::Cancelled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Unavailable
        | Code::Internal
        | Code::DataLoss => Outcome::Unknown,
    }
}

/// A Range's answer for one key.
fn read_reply(response: &mmapd::server::etcd::proto::etcdserverpb::RangeResponse) -> Reply {
    let revision = revision_of(&response.header);
    // A key other than the one asked would carry a value never written to it: the
    // checker would see that, so it is taken as the answer.
    match response.kvs.first() {
        None => Reply {
            outcome: Outcome::Read(None),
            version: None,
            revision,
            detail: format!("grpc Range: no key (revision {revision:?})"),
        },
        Some(kv) => {
            let text = String::from_utf8_lossy(&kv.value).into_owned();
            let detail = format!(
                "grpc Range: {text:?} mod_revision {} ({} keys, revision {revision:?})",
                kv.mod_revision,
                response.kvs.len()
            );
            match text.parse() {
                Ok(value) => Reply {
                    outcome: Outcome::Read(Some(value)),
                    version: u64::try_from(kv.mod_revision).ok(),
                    revision,
                    detail,
                },
                Err(_) => Reply { outcome: Outcome::Failed, version: None, revision, detail },
            }
        }
    }
}

/// A write's answer: ok at the header's revision, which is the new `mod_revision`.
fn written_reply(what: &str, header: &Option<ResponseHeader>) -> Reply {
    let revision = revision_of(header);
    Reply {
        outcome: Outcome::Ok,
        version: revision,
        revision,
        detail: format!("grpc {what}: revision {revision:?}"),
    }
}

fn txn_reply(what: &str, response: &mmapd::server::etcd::proto::etcdserverpb::TxnResponse) -> Reply {
    if response.succeeded {
        written_reply(&format!("{what} succeeded"), &response.header)
    } else {
        let revision = revision_of(&response.header);
        Reply {
            outcome: Outcome::Rejected,
            version: None,
            revision,
            detail: format!("grpc {what} not succeeded: revision {revision:?}"),
        }
    }
}

fn deleted_reply(response: &mmapd::server::etcd::proto::etcdserverpb::DeleteRangeResponse) -> Reply {
    let revision = revision_of(&response.header);
    let detail = format!("grpc DeleteRange: deleted {} (revision {revision:?})", response.deleted);
    let outcome = match response.deleted {
        0 => Outcome::Rejected,
        n if n > 0 => Outcome::Ok,
        // A negative count is no answer anyone can read.
        _ => Outcome::Unknown,
    };
    Reply { outcome, version: None, revision, detail }
}

fn compare(key: &[u8], target: compare::CompareTarget, union: compare::TargetUnion) -> Compare {
    Compare {
        key: key.to_vec(),
        target: target as i32,
        result: compare::CompareResult::Equal as i32,
        target_union: Some(union),
        ..Default::default()
    }
}

/// A Txn: `compare`, then a put of `value`.
fn put_if(key: &[u8], compare: Compare, value: u64) -> TxnRequest {
    let put = PutRequest { key: key.to_vec(), value: value.to_string().into_bytes(), ..Default::default() };
    TxnRequest {
        compare: vec![compare],
        success: vec![RequestOp { request: Some(request_op::Request::RequestPut(put)) }],
        failure: Vec::new(),
    }
}

/// The Txn of a swap: the HTTP `If-Match` (the key's `mod_revision` is `version`), or,
/// for an odd new value, the same condition on the value read with that version.
fn swap_txn(key: &[u8], version: u64, expected: u64, new: u64) -> (TxnRequest, String) {
    use compare::{CompareTarget, TargetUnion};
    if new % 2 == 0 {
        let version = i64::try_from(version).unwrap_or(i64::MAX);
        let txn = put_if(key, compare(key, CompareTarget::Mod, TargetUnion::ModRevision(version)), new);
        (txn, format!("Txn(mod_revision = {version})"))
    } else {
        let value = TargetUnion::Value(expected.to_string().into_bytes());
        (put_if(key, compare(key, CompareTarget::Value, value), new), format!("Txn(value = {expected})"))
    }
}

/// The Txn of a create: no `create_revision` (even values) or `version` (odd) yet.
fn create_txn(key: &[u8], value: u64) -> (TxnRequest, String) {
    use compare::{CompareTarget, TargetUnion};
    if value % 2 == 0 {
        (
            put_if(key, compare(key, CompareTarget::Create, TargetUnion::CreateRevision(0)), value),
            "Txn(create_revision = 0)".into(),
        )
    } else {
        (
            put_if(key, compare(key, CompareTarget::Version, TargetUnion::Version(0)), value),
            "Txn(version = 0)".into(),
        )
    }
}

/// The connection to `node`, connecting if there is none or the node closed it.
async fn channel(channels: &mut HashMap<usize, Channel>, node: usize) -> Result<&Channel, String> {
    // Two turns of the runtime: the connections' tasks see what the sockets hold (a
    // close, a GOAWAY) before this looks.
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    let usable = match channels.get_mut(&node) {
        Some(channel) => !channel.sender.is_closed() && channel.sender.ready().await.is_ok(),
        None => false,
    };
    if !usable {
        channels.remove(&node);
        channels.insert(node, connect(node, false).await?);
    }
    Ok(channels.get(&node).expect("a connection to the node"))
}

/// One call, and what its response said.
async fn call(
    channels: &mut HashMap<usize, Channel>,
    node: usize,
    key: u64,
    request: &Request,
) -> Result<Reply, Failure> {
    let channel = channel(channels, node).await.map_err(Failure::NotSent)?;
    let mut kv = KvClient::with_origin(channel.service(), channel.origin.clone());
    let name = format!("k{key}").into_bytes();
    let reply = match request {
        Request::Read => {
            let range = RangeRequest { key: name, ..Default::default() };
            kv.range(range).await.map(|r| read_reply(r.get_ref()))
        }
        Request::Write(value) => {
            let put = PutRequest { key: name, value: value.to_string().into_bytes(), ..Default::default() };
            kv.put(put).await.map(|r| written_reply("Put", &r.get_ref().header))
        }
        Request::Swap { version, expected, new } => {
            let (txn, what) = swap_txn(&name, *version, *expected, *new);
            kv.txn(txn).await.map(|r| txn_reply(&what, r.get_ref()))
        }
        Request::Create(value) => {
            let (txn, what) = create_txn(&name, *value);
            kv.txn(txn).await.map(|r| txn_reply(&what, r.get_ref()))
        }
        Request::Delete => {
            let delete = DeleteRangeRequest { key: name, ..Default::default() };
            kv.delete_range(delete).await.map(|r| deleted_reply(r.get_ref()))
        }
    };
    reply.map_err(Failure::Status)
}

/// A client's gRPC side: its runtime and its connections.
pub struct Client {
    runtime: tokio::runtime::Runtime,
    channels: HashMap<usize, Channel>,
    /// The last value this client read of each key, with its `mod_revision` (for the
    /// `stale-read` plant).
    last_read: HashMap<u64, (u64, u64)>,
}

impl Default for Client {
    fn default() -> Client {
        Client::new()
    }
}

impl Client {
    /// A client with no connection yet.
    pub fn new() -> Client {
        Client { runtime: runtime(), channels: HashMap::new(), last_read: HashMap::new() }
    }

    /// Performs one request on `node` and records it, as `client::perform` does.
    pub fn perform(
        &mut self,
        shared: &Shared,
        client: usize,
        node: usize,
        key: u64,
        request: Request,
    ) -> Event {
        let invoke = shared.now();
        let is_read = matches!(request, Request::Read);
        let Client { runtime, channels, .. } = self;
        // In the runtime's context throughout: a connection dropped below aborts its task.
        let _context = runtime.enter();
        let answer = runtime.block_on(async {
            tokio::time::timeout(ANSWER_TIMEOUT, call(channels, node, key, &request)).await
        });
        let complete = shared.now();
        let reply = match answer {
            Ok(Ok(reply)) => reply,
            Ok(Err(Failure::NotSent(e))) => Reply {
                outcome: Outcome::Failed,
                version: None,
                revision: None,
                detail: format!("grpc: {e}"),
            },
            Ok(Err(Failure::Status(status))) => {
                self.channels.remove(&node);
                Reply {
                    outcome: outcome_of_status(is_read, status.code()),
                    version: None,
                    revision: None,
                    detail: format!("grpc status {:?}: {}", status.code(), status.message()),
                }
            }
            Err(_) => {
                self.channels.remove(&node);
                Reply {
                    outcome: if is_read { Outcome::Failed } else { Outcome::Unknown },
                    version: None,
                    revision: None,
                    detail: format!("grpc: no answer in {ANSWER_TIMEOUT:?}"),
                }
            }
        };
        let reply = if client == usize::MAX { reply } else { self.maybe_stale(shared, key, invoke, reply) };
        let Reply { outcome, version, revision, detail } = reply;
        Event {
            client,
            node,
            key,
            invoke,
            complete,
            request,
            outcome,
            version,
            revision,
            detail,
            api: Api::Grpc,
        }
    }

    /// Remembers a read's value; the `stale-read` plant may answer with the one before.
    fn maybe_stale(&mut self, shared: &Shared, key: u64, invoke: u64, reply: Reply) -> Reply {
        let (Outcome::Read(Some(value)), Some(version)) = (&reply.outcome, reply.version) else {
            return reply;
        };
        let value = *value;
        let earlier = self.last_read.insert(key, (value, version));
        let Some((old, old_version)) = earlier.filter(|&(old, _)| old != value) else { return reply };
        if !shared.plant.armed(PlantKind::StaleRead) || !acknowledged_before(shared, key, value, invoke) {
            return reply;
        }
        let what = format!(
            "a gRPC read of k{key} invoked at {:.3} s answered {old} (read before), not {value}, which was \
             acknowledged before the read began",
            invoke as f64 / 1e6
        );
        if !shared.plant.take(what.clone()) {
            return reply;
        }
        self.last_read.insert(key, (old, old_version));
        Reply {
            outcome: Outcome::Read(Some(old)),
            version: Some(old_version),
            detail: format!("{} PLANTED: {what}", reply.detail),
            ..reply
        }
    }
}

/// Whether a client was acknowledged a write of `value` to `key` that completed before
/// `before`.
fn acknowledged_before(shared: &Shared, key: u64, value: u64, before: u64) -> bool {
    let history = shared.history.lock().expect("history lock");
    history.iter().any(|e| {
        e.key == key
            && e.outcome == Outcome::Ok
            && e.complete < before
            && matches!(e.request, Request::Write(v) | Request::Create(v) | Request::Swap { new: v, .. } if v == value)
    })
}

/// Whether a client was acknowledged a write at `revision`.
fn acknowledged_at(shared: &Shared, revision: u64) -> bool {
    let history = shared.history.lock().expect("history lock");
    history.iter().any(|e| {
        e.client != usize::MAX
            && e.outcome == Outcome::Ok
            && !matches!(e.request, Request::Read)
            && e.revision == Some(revision)
    })
}

/// An event as the checker's item; a malformed one is unparsed.
fn item_of(event: &mvccpb::Event) -> Item {
    let unparsed = |why: &str| Item::Unparsed(format!("gRPC event {why}: {event:?}"));
    let Some(kv) = &event.kv else { return unparsed("without a kv") };
    let Some(revision) = u64::try_from(kv.mod_revision).ok().filter(|&r| r > 0) else {
        return unparsed("without a mod_revision");
    };
    let key = String::from_utf8_lossy(&kv.key).into_owned();
    match mvccpb::event::EventType::try_from(event.r#type) {
        Ok(mvccpb::event::EventType::Put) => {
            if kv.create_revision <= 0 || kv.create_revision > kv.mod_revision || kv.version < 1 {
                return unparsed("whose create_revision or version cannot be");
            }
            let value =
                String::from_utf8(kv.value.clone()).unwrap_or_else(|e| format!("(bytes) {:?}", e.as_bytes()));
            Item::Event { revision, key, change: Change::Put { value, mod_revision: revision } }
        }
        Ok(mvccpb::event::EventType::Delete) => Item::Event { revision, key, change: Change::Delete },
        Err(_) => unparsed("of no known type"),
    }
}

/// A gRPC watch's responses, as the watch checker's lines and end.
#[derive(Debug, Default)]
pub struct Reader {
    /// The id `created` gave, once it came.
    watch_id: Option<i64>,
    /// Responses with events or progress so far (each one chunk).
    chunk: usize,
    /// The first revision not yet vouched for (the HTTP watcher's `next`).
    pub next: Option<u64>,
}

impl Reader {
    /// Whether the watch was created.
    pub fn created(&self) -> bool {
        self.watch_id.is_some()
    }

    /// Adds `response`'s lines (received at `at`) to `connection`; Some: the way the
    /// connection ends.
    pub fn read(&mut self, response: &WatchResponse, connection: &mut Connection, at: u64) -> Option<End> {
        let chunk = self.chunk;
        let push = |connection: &mut Connection, item: Item| connection.lines.push(Line { chunk, at, item });
        let Some(id) = self.watch_id else {
            if response.created && response.canceled {
                return Some(End::Refused(format!("create refused: {:?}", response.cancel_reason)));
            }
            self.chunk += 1;
            if !response.created {
                push(connection, Item::Unparsed(format!("a response before `created`: {response:?}")));
                return None;
            }
            self.watch_id = Some(response.watch_id);
            connection.head = revision_of(&response.header);
            self.next = connection.from.or(connection.head.map(|head| head + 1));
            if !response.events.is_empty() {
                push(connection, Item::Unparsed(format!("events in the `created` response: {response:?}")));
            }
            return None;
        };
        self.chunk += 1;
        if response.watch_id != id || response.created || response.fragment {
            let text = format!(
                "a response of another watch, created twice or a fragment not asked for: {response:?}"
            );
            push(connection, Item::Unparsed(text));
        }
        let had_lines =
            connection.lines.iter().any(|line| matches!(line.item, Item::Event { .. } | Item::Progress(_)));
        for event in &response.events {
            let item = item_of(event);
            if let Item::Event { revision, .. } = item {
                self.next = Some(self.next.unwrap_or(0).max(revision + 1));
            }
            push(connection, item);
        }
        if response.canceled {
            let reason = response.cancel_reason.clone();
            let Some(gone_through) =
                u64::try_from(response.compact_revision).ok().filter(|&r| r > 0).map(|r| r - 1)
            else {
                push(connection, Item::Cancelled { reason, resume_from: None, compact_revision: None });
                return Some(End::Cancelled);
            };
            if connection.from.is_some() && !had_lines && response.events.is_empty() {
                return Some(End::Compacted(gone_through));
            }
            let item = Item::Cancelled {
                reason: format!("compacted ({reason})"),
                resume_from: None,
                compact_revision: Some(gone_through),
            };
            push(connection, item);
            return Some(End::Cancelled);
        }
        if response.events.is_empty() {
            match revision_of(&response.header) {
                Some(revision) => {
                    self.next = Some(self.next.unwrap_or(0).max(revision + 1));
                    push(connection, Item::Progress(revision));
                }
                None => push(
                    connection,
                    Item::Unparsed(format!("an empty response without a revision: {response:?}")),
                ),
            }
        }
        None
    }
}

/// A watcher's gRPC side: its runtime.
pub struct Watcher {
    runtime: tokio::runtime::Runtime,
}

impl Default for Watcher {
    fn default() -> Watcher {
        Watcher::new()
    }
}

impl Watcher {
    /// A watcher with its runtime.
    pub fn new() -> Watcher {
        Watcher { runtime: runtime() }
    }

    /// Reads one watch into `connection` for at most `lifetime`; the way it ended.
    pub fn stream(
        &self,
        shared: &Shared,
        control: &Control,
        connection: &mut Connection,
        lifetime: Duration,
    ) -> End {
        self.runtime.block_on(stream(shared, control, connection, lifetime))
    }
}

async fn stream(shared: &Shared, control: &Control, connection: &mut Connection, lifetime: Duration) -> End {
    let started = Instant::now();
    let mut deadline = started + lifetime;
    let channel = match connect(connection.node, connection.stall.is_some()).await {
        Ok(channel) => channel,
        Err(e) => return End::NotConnected(e),
    };
    // The requests: the create, and nothing after; the sender lives as long as the
    // stream, so the stream is not half-closed.
    let (requests, mut outbound) = tokio::sync::mpsc::channel::<WatchRequest>(1);
    let create = WatchCreateRequest {
        key: WATCH_KEY.to_vec(),
        range_end: WATCH_RANGE_END.to_vec(),
        start_revision: connection.from.map_or(0, |from| i64::try_from(from).unwrap_or(i64::MAX)),
        progress_notify: true,
        ..Default::default()
    };
    let create = WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(create)) };
    if requests.try_send(create).is_err() {
        return End::Closed("the create request did not fit its queue".into());
    }
    let outbound = futures_util::stream::poll_fn(move |context| outbound.poll_recv(context));
    let mut client = WatchClient::with_origin(channel.service(), channel.origin.clone());
    let mut responses = match tokio::time::timeout(IDLE, client.watch(outbound)).await {
        Err(_) => return End::Idle,
        Ok(Err(status)) => return End::Refused(format!("status {:?}: {}", status.code(), status.message())),
        Ok(Ok(response)) => response.into_inner(),
    };
    let mut reader = Reader::default();
    let mut last_message = Instant::now();
    let mut stalled = false;
    let end = loop {
        if control.stop.load(Ordering::Relaxed) || (reader.created() && caught_up(reader.next, control)) {
            break End::Stopped;
        }
        if Instant::now() >= deadline && reader.created() {
            break End::Lifetime;
        }
        if let Some((_, length)) = connection
            .stall
            .filter(|&(at, _)| reader.created() && !stalled && started.elapsed() >= Duration::from_millis(at))
        {
            stalled = true;
            let until = Instant::now() + Duration::from_millis(length);
            while Instant::now() < until && !control.stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // The silence was this end's; read on for a while (the node catches up).
            last_message = Instant::now();
            deadline = deadline.max(last_message + Duration::from_secs(1));
        }
        if last_message.elapsed() >= IDLE {
            break End::Idle;
        }
        match tokio::time::timeout(POLL, responses.message()).await {
            Err(_) => {}
            Ok(Err(status)) => {
                break End::Closed(format!("status {:?}: {}", status.code(), status.message()))
            }
            Ok(Ok(None)) => break End::Closed("the stream ended".into()),
            Ok(Ok(Some(mut response))) => {
                last_message = Instant::now();
                plant_drop(shared, &mut response);
                if let Some(end) = reader.read(&response, connection, shared.now()) {
                    break end;
                }
            }
        }
    };
    drop(requests);
    end
}

/// The `drop-event` plant: drops the first event of an acknowledged write from a
/// response that holds a later event too.
fn plant_drop(shared: &Shared, response: &mut WatchResponse) {
    if response.events.len() < 2 || !shared.plant.armed(PlantKind::DropEvent) {
        return;
    }
    let last = response.events.len() - 1;
    let found = response.events[..last].iter().position(|event| {
        let revision = event.kv.as_ref().and_then(|kv| u64::try_from(kv.mod_revision).ok());
        revision.is_some_and(|revision| acknowledged_at(shared, revision))
    });
    let Some(index) = found else { return };
    let what = format!(
        "dropped the event {:?} from a gRPC watch response of {} events",
        item_of(&response.events[index]),
        last + 1
    );
    if shared.plant.take(what) {
        response.events.remove(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmapd::server::etcd::proto::etcdserverpb::{DeleteRangeResponse, RangeResponse, TxnResponse};

    fn header(revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader { revision, ..Default::default() })
    }

    fn connection(from: Option<u64>) -> Connection {
        Connection {
            node: 0,
            from,
            head: None,
            opened: 0,
            closed: 0,
            lines: Vec::new(),
            stall: None,
            end: End::Stopped,
            api: Api::Grpc,
        }
    }

    fn put(key: &str, value: &str, revision: i64) -> mvccpb::Event {
        mvccpb::Event {
            r#type: mvccpb::event::EventType::Put as i32,
            kv: Some(mvccpb::KeyValue {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease: 0,
            }),
            prev_kv: None,
        }
    }

    fn delete(key: &str, revision: i64) -> mvccpb::Event {
        mvccpb::Event {
            r#type: mvccpb::event::EventType::Delete as i32,
            kv: Some(mvccpb::KeyValue {
                key: key.as_bytes().to_vec(),
                mod_revision: revision,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    fn response(watch_id: i64, revision: i64, events: Vec<mvccpb::Event>) -> WatchResponse {
        WatchResponse { header: header(revision), watch_id, events, ..Default::default() }
    }

    // The HTTP client's discipline: only a refusal made before proposing is a definite
    // failure of a write; a timeout, a lost leader or a reset may have been applied.
    #[test]
    fn a_write_failed_only_on_a_refusal_before_proposing_and_is_unknown_otherwise() {
        use tonic::Code;
        for code in
            [Code::InvalidArgument, Code::FailedPrecondition, Code::PermissionDenied, Code::Unauthenticated]
        {
            assert_eq!(outcome_of_status(false, code), Outcome::Failed, "{code:?}");
        }
        for code in [
            Code::Unavailable,
            Code::Unknown,
            Code::DeadlineExceeded,
            Code::Internal,
            Code::Aborted,
            Code::Cancelled,
        ] {
            assert_eq!(outcome_of_status(false, code), Outcome::Unknown, "{code:?}");
        }
        assert_eq!(
            outcome_of_status(true, Code::Unavailable),
            Outcome::Failed,
            "a failed read constrains nothing"
        );
    }

    #[test]
    fn responses_map_to_the_http_clients_outcomes() {
        let kv = mvccpb::KeyValue {
            key: b"k1".to_vec(),
            value: b"42".to_vec(),
            mod_revision: 7,
            ..Default::default()
        };
        let read = read_reply(&RangeResponse { header: header(9), kvs: vec![kv], count: 1, more: false });
        assert_eq!((read.outcome, read.version, read.revision), (Outcome::Read(Some(42)), Some(7), Some(9)));
        let absent = read_reply(&RangeResponse { header: header(9), ..Default::default() });
        assert_eq!(absent.outcome, Outcome::Read(None));
        let failed = TxnResponse { header: header(10), succeeded: false, responses: Vec::new() };
        assert_eq!(txn_reply("Txn", &failed).outcome, Outcome::Rejected);
        let done = txn_reply("Txn", &TxnResponse { succeeded: true, ..failed });
        assert_eq!((done.outcome, done.version, done.revision), (Outcome::Ok, Some(10), Some(10)));
        let none = DeleteRangeResponse { header: header(11), deleted: 0, prev_kvs: Vec::new() };
        assert_eq!(deleted_reply(&none).outcome, Outcome::Rejected, "the 404");
        assert_eq!(deleted_reply(&DeleteRangeResponse { deleted: 1, ..none }).outcome, Outcome::Ok);
    }

    #[test]
    fn swaps_and_creates_compare_what_the_http_conditions_compare() {
        let (txn, _) = swap_txn(b"k1", 7, 41, 100);
        assert_eq!(txn.compare[0].target_union, Some(compare::TargetUnion::ModRevision(7)));
        let (txn, _) = swap_txn(b"k1", 7, 41, 101);
        assert_eq!(txn.compare[0].target_union, Some(compare::TargetUnion::Value(b"41".to_vec())));
        let (txn, _) = create_txn(b"k1", 100);
        assert_eq!(txn.compare[0].target_union, Some(compare::TargetUnion::CreateRevision(0)));
        let (txn, _) = create_txn(b"k1", 101);
        assert_eq!(txn.compare[0].target_union, Some(compare::TargetUnion::Version(0)));
        for txn in [swap_txn(b"k1", 7, 41, 100).0, create_txn(b"k1", 101).0] {
            assert_eq!(txn.compare[0].result, compare::CompareResult::Equal as i32);
            assert!(txn.failure.is_empty() && txn.success.len() == 1);
        }
    }

    #[test]
    fn a_watch_stream_becomes_the_checkers_lines_one_chunk_a_response() {
        let mut reader = Reader::default();
        let mut c = connection(None);
        let created = WatchResponse { created: true, ..response(0, 5, Vec::new()) };
        assert_eq!(reader.read(&created, &mut c, 0), None);
        assert_eq!((c.head, reader.next), (Some(5), Some(6)));
        assert_eq!(reader.read(&response(0, 8, vec![put("k1", "10", 6), delete("k2", 7)]), &mut c, 1), None);
        assert_eq!(reader.read(&response(0, 9, Vec::new()), &mut c, 2), None);
        let items: Vec<(usize, Item)> = c.lines.iter().map(|l| (l.chunk, l.item.clone())).collect();
        assert_eq!(
            items,
            vec![
                (
                    1,
                    Item::Event {
                        revision: 6,
                        key: "k1".into(),
                        change: Change::Put { value: "10".into(), mod_revision: 6 }
                    }
                ),
                (1, Item::Event { revision: 7, key: "k2".into(), change: Change::Delete }),
                (2, Item::Progress(9)),
            ]
        );
        assert_eq!(reader.next, Some(10));
        let cancelled =
            WatchResponse { canceled: true, cancel_reason: "gone".into(), ..response(0, 9, Vec::new()) };
        assert_eq!(reader.read(&cancelled, &mut c, 3), Some(End::Cancelled));
    }

    // etcd's compact_revision is the first revision still held; the HTTP watch's 410
    // names the last one gone.
    #[test]
    fn a_compacted_start_is_the_http_watchs_410_and_a_later_compaction_a_cancelled_line() {
        let created = WatchResponse { created: true, ..response(0, 50, Vec::new()) };
        let compacted = WatchResponse { canceled: true, compact_revision: 31, ..response(0, 50, Vec::new()) };
        let mut reader = Reader::default();
        let mut c = connection(Some(3));
        reader.read(&created, &mut c, 0);
        assert_eq!(reader.read(&compacted, &mut c, 1), Some(End::Compacted(30)));
        let mut reader = Reader::default();
        let mut c = connection(Some(3));
        reader.read(&created, &mut c, 0);
        reader.read(&response(0, 50, vec![put("k1", "1", 4)]), &mut c, 1);
        assert_eq!(reader.read(&compacted, &mut c, 2), Some(End::Cancelled));
        assert!(matches!(c.lines.last().unwrap().item, Item::Cancelled { compact_revision: Some(30), .. }));
    }

    #[test]
    fn a_refused_create_is_no_stream_and_malformed_responses_are_unparsed() {
        let mut reader = Reader::default();
        let mut c = connection(Some(1));
        let refused = WatchResponse {
            created: true,
            canceled: true,
            cancel_reason: "no".into(),
            ..response(-1, 5, Vec::new())
        };
        assert!(matches!(reader.read(&refused, &mut c, 0), Some(End::Refused(_))));
        let mut reader = Reader::default();
        reader.read(&WatchResponse { created: true, ..response(3, 5, Vec::new()) }, &mut c, 0);
        reader.read(&response(4, 6, vec![put("k1", "1", 6)]), &mut c, 1);
        let mut bad = put("k1", "1", 7);
        bad.kv.as_mut().unwrap().version = 0;
        reader.read(&response(3, 7, vec![bad]), &mut c, 2);
        let unparsed = c.lines.iter().filter(|l| matches!(l.item, Item::Unparsed(_))).count();
        assert_eq!(unparsed, 2, "{:?}", c.lines);
    }
}
