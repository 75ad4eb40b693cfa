//! Peer RPC: Raft messages travel in batches on one long-lived peer stream per peer
//! (`peer_stream`: `POST /raft/stream` upgraded to length-prefixed frames); batches
//! for a peer that does not speak the stream go as `POST /raft/messages` on a keep-alive
//! HTTP/1.1 connection. An InstallSnapshot goes beside them, in chunks (`snapshot`), on
//! its own task, so heartbeats keep flowing while a large snapshot crosses. A follower
//! forwards a client's write to the leader with `POST /raft/propose`.
//!
//! One task per peer sends one batch at a time, so messages stay in order; while a
//! write is under way the next batch accumulates (pipelining by batching). Messages
//! for a peer that is down are dropped when its queue is full: Raft retries.
//!
//! A peer is named by its member address, an IP address or a host name and a port,
//! resolved again whenever a connection is made (never on the driver's loop), so a
//! peer whose name moves to another IP is reached there. A peer that stops answering,
//! or whose name stops resolving, is logged once (warn) and again when it answers
//! (info), not at every failed send.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use crate::raft::{Message, MessageBody, NodeId};
use crate::server::driver::version::{snapshot_encoding_for, Version};
use crate::transport::codec::{decode_batch, encode_batch_with, SnapshotEncoding};

use super::connect::PeerConnector;
use super::snapshot::{self as peer_snapshot, TransferId};
use super::stream::{self as peer_stream, StreamError, StreamSender};
use super::Credentials;

/// Why a batch did not reach a peer.
enum Failure {
    /// The peer answered with an error.
    Refused(StatusCode, String),
    /// No connection, or no answer in time.
    Unreachable(String),
}

/// Whether a peer answers, as its sender last saw; changes are logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reachability {
    /// Nothing sent yet.
    Unknown,
    Answering,
    /// Not answering since then.
    Silent(Instant),
}

/// How long a sender waits after a peer refused its messages.
const REFUSED_PAUSE: Duration = Duration::from_millis(200);
/// What a peer's 403 says when it holds this node's removal.
pub const REMOVED_REFUSAL: &str = "was removed from the cluster";
/// The header that carries the cluster secret on peer requests.
pub const SECRET_HEADER: &str = "x-mmapd-cluster-secret";
/// The most messages one peer's queue holds before new ones are dropped.
const PEER_QUEUE_BATCHES: usize = 4096;
/// The most messages sent in one request.
const MAX_BATCH_MESSAGES: usize = 8192;

/// The version a peer is taken to run (`driver::shell::Shared::version_of`): what it
/// decodes, where releases differ (a snapshot for v0.1.0 goes without a checksum).
pub type PeerVersions = Arc<dyn Fn(NodeId) -> Version + Send + Sync>;

/// The HTTP client used for peers, with keep-alive connections. Its URIs name the
/// member as listed (`http://HOST:PORT/...`, also over TLS: the connector decides, and
/// checks the peer's certificate against HOST).
pub type PeerClient = Client<PeerConnector, Full<Bytes>>;

/// Builds the peer HTTP client on `connector`.
pub fn client(connector: PeerConnector) -> PeerClient {
    Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(90)).build(connector)
}

/// Where outgoing messages go: one queue per peer, and its sender task. The peers
/// follow the cluster record (`set_peers`): a member added gets a sender, a member
/// removed loses its own (its task ends when its queue closes), a member whose address
/// changed gets a new one.
#[derive(Clone)]
pub struct Outbox {
    peers: Arc<RwLock<HashMap<NodeId, PeerQueue>>>,
    client: PeerClient,
    connector: PeerConnector,
    credentials: Credentials,
    timeout: Duration,
    removed_hint: mpsc::Sender<String>,
    versions: PeerVersions,
    /// The largest snapshot chunk sent (`--snapshot-chunk-bytes`).
    chunk_bytes: usize,
}

/// One peer's queue, and the address its sender task reaches.
struct PeerQueue {
    address: String,
    queue: mpsc::Sender<Vec<Message>>,
    /// Learned from the peer's own requests (`Outbox::learn_peer`), not from the
    /// cluster record: dropped when the record next changes, learned again if the peer
    /// still speaks to this node.
    learned: bool,
}

/// The most senders learned from peers' requests at once: a stale member list lacks
/// a few members at most, and a forger must not make this node open senders without
/// bound.
pub const MAX_LEARNED_PEERS: usize = 8;

impl crate::server::driver::Outbox for Outbox {
    /// Queues messages for their peers, without waiting.
    fn send(&self, messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        let mut by_peer: HashMap<NodeId, Vec<Message>> = HashMap::new();
        for message in messages {
            by_peer.entry(message.to).or_default().push(message);
        }
        let peers = self.peers.read().expect("peers lock");
        for (peer, batch) in by_peer {
            match peers.get(&peer).map(|p| &p.queue) {
                Some(queue) => {
                    if queue.try_send(batch).is_err() {
                        tracing::debug!(peer, "peer queue full or closed: messages dropped");
                    }
                }
                None => tracing::debug!(peer = %format!("{peer:016x}"), "message for unknown peer dropped"),
            }
        }
    }

    /// Follows the cluster record: `peers` is every member but this node. Senders
    /// learned from peers' requests are replaced by the record's.
    fn set_peers(&self, peers: &HashMap<NodeId, String>) {
        let mut current = self.peers.write().expect("peers lock");
        current.retain(|id, queue| {
            let keep = !queue.learned && peers.get(id).is_some_and(|address| *address == queue.address);
            if !keep {
                tracing::info!(peer = %queue.address, id = %format!("{id:016x}"), "peer sender stopped");
            }
            keep
        });
        for (&id, address) in peers {
            if let std::collections::hash_map::Entry::Vacant(entry) = current.entry(id) {
                tracing::info!(peer = %address, id = %format!("{id:016x}"), "peer sender started");
                entry.insert(self.spawn_sender(id, address));
            }
        }
    }
}

impl Outbox {
    /// What this node presents on its peer requests.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// A peer this node has no sender for spoke to it (authenticated, not removed):
    /// reach it at the address it advertises, so this node's answers get back to it.
    /// A member list is stale after this node was down while members were replaced;
    /// its leader may be one it has not heard of yet (thesis §4.1). The record wins: an
    /// id it names keeps its address, and the next record change drops learned senders.
    /// Returns whether a sender was started.
    pub fn learn_peer(&self, id: NodeId, address: &str) -> bool {
        if id == self.credentials.node_id || self.peers.read().expect("peers lock").contains_key(&id) {
            return false;
        }
        let mut current = self.peers.write().expect("peers lock");
        if current.contains_key(&id)
            || current.values().filter(|queue| queue.learned).count() >= MAX_LEARNED_PEERS
        {
            return false;
        }
        tracing::info!(peer = %address, id = %format!("{id:016x}"), "peer sender started for a node this node's member list does not name yet");
        let mut queue = self.spawn_sender(id, address);
        queue.learned = true;
        current.insert(id, queue);
        true
    }

    fn spawn_sender(&self, id: NodeId, address: &str) -> PeerQueue {
        let (tx, rx) = mpsc::channel(PEER_QUEUE_BATCHES);
        let sender = PeerSender {
            poster: Poster {
                id,
                address: address.to_owned(),
                client: self.client.clone(),
                credentials: self.credentials.clone(),
                versions: self.versions.clone(),
                timeout: self.timeout,
            },
            resolved: None,
            reachability: Reachability::Unknown,
            connector: self.connector.clone(),
            removed_hint: self.removed_hint.clone(),
            chunk_bytes: self.chunk_bytes,
            transfer: None,
        };
        tokio::spawn(sender.run(rx));
        PeerQueue { address: address.to_owned(), queue: tx, learned: false }
    }
}

/// Starts one sender task per peer; returns the outbox feeding them.
///
/// `timeout` bounds each request: a connection into a partition can swallow a request
/// without an error for minutes, and everything queued behind it would be lost. A
/// snapshot chunk gets that plus its bytes at 1 MiB/s; a whole snapshot (to a peer
/// without chunks) and the install that ends a transfer get `SNAPSHOT_TIMEOUT`.
///
/// A peer that refuses our messages because it holds our removal sends the peer's
/// address to `removed_hint`: one peer's word is not enough to stop (it could be
/// wrong, or lie), so the receiver asks a majority (`joining::confirm_removal`).
///
/// `versions` says what each peer runs: a snapshot is encoded so that it decodes it.
/// `chunk_bytes` bounds each request of a snapshot transfer.
#[allow(clippy::too_many_arguments)]
pub fn start(
    peers: &HashMap<NodeId, String>,
    client: PeerClient,
    connector: PeerConnector,
    credentials: Credentials,
    timeout: Duration,
    removed_hint: mpsc::Sender<String>,
    versions: PeerVersions,
    chunk_bytes: usize,
) -> Outbox {
    let outbox = Outbox {
        peers: Default::default(),
        client,
        connector,
        credentials,
        timeout,
        removed_hint,
        versions,
        chunk_bytes,
    };
    crate::server::driver::Outbox::set_peers(&outbox, peers);
    outbox
}

struct PeerSender {
    /// The peer, and what a request to it needs (shared with its transfer task).
    poster: Poster,
    /// What the member address resolved to for the connection in use; None after a
    /// failure, so the next connection resolves again.
    resolved: Option<SocketAddr>,
    reachability: Reachability,
    /// Opens the peer stream (plain or TLS, as the node is configured).
    connector: PeerConnector,
    removed_hint: mpsc::Sender<String>,
    chunk_bytes: usize,
    /// The snapshot transfer under way to this peer, if any: one at a time.
    transfer: Option<tokio::task::JoinHandle<()>>,
}

/// How long a batch carrying a snapshot may take.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to use `POST /raft/messages` after a peer refused the stream upgrade (an
/// older version during a rolling upgrade), before trying the stream again.
const POST_FALLBACK: Duration = Duration::from_secs(30);

impl PeerSender {
    /// Sends batches in order: on the peer stream when it is up, by `POST` when the
    /// peer does not speak the stream. An InstallSnapshot leaves the batch for its own
    /// transfer task (a long transfer must not hold up heartbeats).
    async fn run(mut self, mut queue: mpsc::Receiver<Vec<Message>>) {
        self.send_batches(&mut queue).await;
        if let Some(transfer) = self.transfer.take() {
            transfer.abort();
        }
    }

    async fn send_batches(&mut self, queue: &mut mpsc::Receiver<Vec<Message>>) {
        let mut failures = 0u32;
        let mut stream: Option<StreamSender> = None;
        let mut post_until: Option<Instant> = None;
        let keepalive = peer_stream::KEEPALIVE.min(self.poster.timeout / 2);
        loop {
            let mut batch = match tokio::time::timeout(keepalive, queue.recv()).await {
                Ok(Some(batch)) => batch,
                // The queue closed: this member was removed, or moved to another address.
                Ok(None) => break,
                Err(_) => {
                    if let Some(open) = &mut stream {
                        if let Err(error) = open.send(&[]).await {
                            tracing::debug!(peer = %self.poster.address, %error, "peer stream keepalive failed");
                            stream = None;
                        }
                    }
                    continue;
                }
            };
            while batch.len() < MAX_BATCH_MESSAGES {
                match queue.try_recv() {
                    Ok(more) => batch.extend(more),
                    Err(_) => break,
                }
            }
            if let Some(snapshot) = take_snapshot(&mut batch) {
                self.start_transfer(snapshot);
                if batch.is_empty() {
                    continue;
                }
            }
            let mut connect_failure = None;
            let resolved = match self.resolve().await {
                Ok(resolved) => resolved,
                Err(failure) => {
                    self.failed(&failure);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    while queue.try_recv().is_ok() {}
                    continue;
                }
            };
            if stream.is_none() && post_until.is_none_or(|until| Instant::now() >= until) {
                post_until = None;
                let host = crate::server::tls::host_of(&self.poster.address);
                let connected = StreamSender::connect(
                    &self.connector,
                    resolved,
                    host,
                    Some(&self.poster.credentials),
                    self.poster.timeout,
                );
                match connected.await {
                    Ok(open) => {
                        tracing::debug!(peer = %self.poster.address, "peer stream open");
                        stream = Some(open);
                    }
                    Err(StreamError::Refused { status, body })
                        if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED =>
                    {
                        tracing::info!(peer = %self.poster.address, %status, %body,
                            "peer does not speak the peer stream; sending by POST for now");
                        post_until = Some(Instant::now() + POST_FALLBACK);
                    }
                    // Any other answer (401: the secrets differ) is a refusal, logged as a
                    // warning like a refused POST.
                    Err(StreamError::Refused { status, body }) => {
                        connect_failure = Some(Failure::Refused(status, body));
                    }
                    Err(error) => connect_failure = Some(Failure::Unreachable(error.to_string())),
                }
            }
            // The member's name, not `resolved`: over TLS it is what the peer's
            // certificate must name (the connector resolves it again).
            let uri = match self.poster.uri("/raft/messages") {
                Ok(uri) => uri,
                Err(failure) => {
                    self.failed(&failure);
                    continue;
                }
            };
            let result = match &mut stream {
                _ if post_until.is_some() => self.poster.post(&uri, &batch, self.poster.timeout).await,
                Some(open) => open.send(&batch).await.map_err(|e| {
                    stream = None;
                    Failure::Unreachable(e.to_string())
                }),
                None => Err(connect_failure.unwrap_or_else(|| Failure::Unreachable("no stream".into()))),
            };
            match result {
                Ok(()) => {
                    failures = 0;
                    self.answered();
                }
                Err(Failure::Refused(status, text)) => {
                    // It answered: reachable, but it refuses (a different secret, or
                    // it holds this node's removal).
                    self.answered();
                    if status == StatusCode::FORBIDDEN && text.contains(REMOVED_REFUSAL) {
                        let _ = self.removed_hint.try_send(self.poster.address.clone());
                    }
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(peer = %self.poster.address, %status, body = %text, "peer refused messages");
                    }
                    // A refusal repeats until someone acts (a secret fixed, a removal
                    // confirmed): do not hammer the peer meanwhile; Raft resends.
                    tokio::time::sleep(REFUSED_PAUSE).await;
                    while queue.try_recv().is_ok() {}
                }
                Err(failure @ Failure::Unreachable(_)) => {
                    self.failed(&failure);
                    // Do not spin against a node that is down; Raft resends what matters.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    while queue.try_recv().is_ok() {}
                }
            }
        }
    }

    /// The address to connect to: the one in use, or `address` resolved now (an IP
    /// address resolves to itself without a lookup). Err: the name does not resolve.
    async fn resolve(&mut self) -> Result<SocketAddr, Failure> {
        if let Some(resolved) = self.resolved {
            return Ok(resolved);
        }
        let lookup =
            tokio::time::timeout(self.poster.timeout, tokio::net::lookup_host(self.poster.address.as_str()))
                .await;
        let resolved = match lookup {
            Ok(Ok(mut addresses)) => addresses.next(),
            Ok(Err(error)) => return Err(Failure::Unreachable(format!("does not resolve: {error}"))),
            Err(_) => {
                return Err(Failure::Unreachable(format!(
                    "does not resolve within {:?}",
                    self.poster.timeout
                )))
            }
        };
        let resolved = resolved.ok_or_else(|| Failure::Unreachable("resolves to no address".into()))?;
        tracing::debug!(peer = %self.poster.address, %resolved, "peer address resolved");
        self.resolved = Some(resolved);
        Ok(resolved)
    }

    /// A batch reached the peer: log its return if it was silent.
    fn answered(&mut self) {
        if let Reachability::Silent(since) = self.reachability {
            let silent_ms = since.elapsed().as_millis() as u64;
            tracing::info!(peer = %self.poster.address, silent_ms, "peer answering again");
        }
        self.reachability = Reachability::Answering;
    }

    /// A batch did not reach the peer: log the first failure of an outage only, and
    /// resolve its name again before the next connection.
    fn failed(&mut self, failure: &Failure) {
        self.resolved = None;
        let error = match failure {
            Failure::Unreachable(error) => error.as_str(),
            Failure::Refused(_, body) => body.as_str(),
        };
        match self.reachability {
            Reachability::Silent(_) => {
                tracing::debug!(peer = %self.poster.address, %error, "peer still not answering")
            }
            Reachability::Answering | Reachability::Unknown => {
                tracing::warn!(peer = %self.poster.address, %error, "peer not answering")
            }
        }
        if !matches!(self.reachability, Reachability::Silent(_)) {
            self.reachability = Reachability::Silent(Instant::now());
        }
    }

    /// Sends `message` (an InstallSnapshot) on a task of its own, unless a transfer to
    /// this peer is under way: then it is dropped, and Raft sends it again after an
    /// election timeout in the snapshot state if the follower still needs it.
    fn start_transfer(&mut self, message: Message) {
        if self.transfer.as_ref().is_some_and(|transfer| !transfer.is_finished()) {
            tracing::debug!(peer = %self.poster.address, "a snapshot transfer is under way: this InstallSnapshot waits for Raft to resend it");
            return;
        }
        let poster = self.poster.clone();
        let chunk_bytes = self.chunk_bytes;
        self.transfer = Some(tokio::spawn(async move {
            let started = Instant::now();
            match poster.send_snapshot(message, chunk_bytes).await {
                Ok(sent) => tracing::info!(peer = %poster.address, index = sent.index, bytes = sent.len,
                    elapsed_ms = started.elapsed().as_millis() as u64, "snapshot sent"),
                Err(failure) => {
                    let (status, error) = match &failure {
                        Failure::Refused(status, text) => (Some(*status), text.clone()),
                        Failure::Unreachable(error) => (None, error.clone()),
                    };
                    tracing::warn!(peer = %poster.address, ?status, %error, "snapshot transfer stopped; it resumes when Raft sends the snapshot again");
                }
            }
        }));
    }
}

/// One peer and what a request to it needs: its sender's, cloned for a transfer task.
#[derive(Clone)]
struct Poster {
    /// The peer's id.
    id: NodeId,
    /// The member address, as configured: a host name is resolved at each connection.
    address: String,
    client: PeerClient,
    credentials: Credentials,
    /// What the peer runs, asked at each batch sent by POST.
    versions: PeerVersions,
    /// The peer timeout (twice the election timeout).
    timeout: Duration,
}

/// The slowest link a chunk is given time for: a chunk may take the peer timeout plus
/// its bytes at this rate, so a transfer to a follower that stopped answering fails in
/// seconds (and resumes when Raft sends the snapshot again), not after minutes.
const MIN_CHUNK_BYTES_PER_SECOND: u64 = 1 << 20;

/// The most `409` answers in a row a transfer takes before it gives up (the follower
/// replaced the transfer under it: another leader's snapshot, most likely).
const MAX_CHUNK_CONFLICTS: u32 = 3;

impl Poster {
    /// Sends one batch as `POST /raft/messages` and waits for its `204`.
    async fn post(&self, uri: &hyper::Uri, batch: &[Message], timeout: Duration) -> Result<(), Failure> {
        let mut body = Vec::new();
        // A peer of v0.1.0 refuses a whole batch with a checksummed snapshot in it, and
        // reads only the first snapshot payload format.
        let encoding = snapshot_encoding_for((self.versions)(self.id));
        let converted;
        let batch = if encoding == SnapshotEncoding::Unchecked && carries_snapshot(batch) {
            converted = payloads_for_v1(batch.to_vec()).await.map_err(Failure::Unreachable)?;
            &converted[..]
        } else {
            batch
        };
        encode_batch_with(batch, encoding, &mut body);
        match self.request(uri.clone(), &[], Bytes::from(body), timeout).await? {
            (StatusCode::NO_CONTENT, _) => Ok(()),
            (status, text) => Err(Failure::Refused(status, String::from_utf8_lossy(&text).into_owned())),
        }
    }

    /// Sends an InstallSnapshot in chunks (`peer::snapshot`): asks what the follower
    /// holds of it, sends the rest, then the message without its data. A peer that does
    /// not know the chunk routes (404), or runs v0.1.0, gets the whole batch by `POST
    /// /raft/messages`. Returns the transfer sent.
    async fn send_snapshot(&self, mut message: Message, chunk_bytes: usize) -> Result<TransferId, Failure> {
        let MessageBody::InstallSnapshot { snapshot } = &mut message.body else {
            return Err(Failure::Unreachable(format!("{} is not an InstallSnapshot", message.body.name())));
        };
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        let whole = |message: Message, len: u64| async move {
            let uri = self.uri("/raft/messages")?;
            self.post(&uri, &[message], SNAPSHOT_TIMEOUT).await?;
            Ok(TransferId { index, term, len, crc: 0 })
        };
        if snapshot_encoding_for((self.versions)(self.id)) == SnapshotEncoding::Unchecked {
            let len = snapshot.data.len() as u64;
            return whole(message, len).await;
        }
        let data = std::mem::take(&mut snapshot.data);
        let id = {
            let data = data.clone();
            tokio::task::spawn_blocking(move || TransferId::of(index, term, &data))
                .await
                .map_err(|e| Failure::Unreachable(format!("checksumming the snapshot: {e}")))?
        };
        let mut offset = match self.chunk(id, 0, Bytes::new()).await {
            Ok(Ok(held)) => held,
            Err(Failure::Refused(status, _))
                if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED =>
            {
                tracing::info!(peer = %self.address, "peer does not take snapshots in chunks; sending it whole");
                if let MessageBody::InstallSnapshot { snapshot } = &mut message.body {
                    snapshot.data = data;
                }
                return whole(message, id.len).await;
            }
            Ok(Err(held)) => held,
            Err(failure) => return Err(failure),
        };
        if offset > 0 {
            tracing::info!(peer = %self.address, index, held = offset, of = id.len, "resuming a snapshot transfer");
        }
        let mut conflicts = 0;
        while offset < id.len {
            let end = (offset + chunk_bytes.max(1) as u64).min(id.len);
            let chunk = data.slice(offset as usize..end as usize);
            let held = match self.chunk(id, offset, chunk).await? {
                Ok(held) => {
                    conflicts = 0;
                    held
                }
                Err(held) => {
                    conflicts += 1;
                    if conflicts > MAX_CHUNK_CONFLICTS {
                        return Err(Failure::Unreachable(format!(
                            "the peer keeps answering 409 (holds {held} bytes of {})",
                            id.len
                        )));
                    }
                    held
                }
            };
            if held > id.len {
                return Err(Failure::Unreachable(format!(
                    "the peer says it holds {held} bytes of {}",
                    id.len
                )));
            }
            offset = held;
        }
        let mut body = Vec::new();
        encode_batch_with(std::slice::from_ref(&message), SnapshotEncoding::Checked, &mut body);
        let uri = self.uri(peer_snapshot::INSTALL_PATH)?;
        let transfer = [(peer_snapshot::TRANSFER_HEADER, id.header_value())];
        match self.request(uri, &transfer, Bytes::from(body), SNAPSHOT_TIMEOUT).await? {
            (StatusCode::NO_CONTENT, _) => Ok(id),
            (status, text) => Err(Failure::Refused(status, String::from_utf8_lossy(&text).into_owned())),
        }
    }

    /// Sends one chunk (none: a probe). Ok(Ok(held)): taken, the peer holds `held`
    /// bytes; Ok(Err(held)): 409, it holds `held` bytes, continue from there.
    async fn chunk(&self, id: TransferId, offset: u64, chunk: Bytes) -> Result<Result<u64, u64>, Failure> {
        let uri = self.uri(peer_snapshot::CHUNK_PATH)?;
        let headers = [
            (peer_snapshot::TRANSFER_HEADER, id.header_value()),
            (peer_snapshot::OFFSET_HEADER, offset.to_string()),
        ];
        let timeout =
            self.timeout + Duration::from_secs_f64(chunk.len() as f64 / MIN_CHUNK_BYTES_PER_SECOND as f64);
        let (status, text) = self.request(uri, &headers, chunk, timeout).await?;
        let held = || {
            std::str::from_utf8(&text).ok().and_then(|text| text.trim().parse::<u64>().ok()).ok_or_else(
                || {
                    Failure::Unreachable(format!(
                        "{status} without a byte count: {:?}",
                        String::from_utf8_lossy(&text)
                    ))
                },
            )
        };
        match status {
            StatusCode::OK => Ok(Ok(held()?)),
            StatusCode::CONFLICT => Ok(Err(held()?)),
            _ => Err(Failure::Refused(status, String::from_utf8_lossy(&text).into_owned())),
        }
    }

    /// `path` on this peer, named by its member address (over TLS, what its certificate
    /// must name; the connector resolves it).
    fn uri(&self, path: &str) -> Result<hyper::Uri, Failure> {
        format!("http://{}{path}", self.address)
            .parse()
            .map_err(|error| Failure::Unreachable(format!("not a URI authority: {error}")))
    }

    /// One `POST` with the peer credentials and `headers`; the status and body, or why
    /// there was none within `timeout`.
    async fn request(
        &self,
        uri: hyper::Uri,
        headers: &[(&'static str, String)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), Failure> {
        let mut request =
            Request::builder().method(Method::POST).uri(uri).header(CONTENT_TYPE, "application/octet-stream");
        for (name, value) in self.credentials.headers().map_err(Failure::Unreachable)? {
            request = request.header(name, value);
        }
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request = request.body(Full::new(body)).map_err(|e| Failure::Unreachable(e.to_string()))?;
        let answer = tokio::time::timeout(timeout, async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            Ok::<_, hyper_util::client::legacy::Error>((status, body))
        })
        .await;
        match answer {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(Failure::Unreachable(error.to_string())),
            Err(_) => Err(Failure::Unreachable(format!("no answer within {timeout:?}"))),
        }
    }
}

/// Takes the InstallSnapshot messages out of `batch`; returns the last (a batch for one
/// peer holds one at most in practice; an older one is superseded by it).
fn take_snapshot(batch: &mut Vec<Message>) -> Option<Message> {
    if !carries_snapshot(batch) {
        return None;
    }
    let (snapshots, rest): (Vec<Message>, Vec<Message>) = std::mem::take(batch)
        .into_iter()
        .partition(|message| matches!(message.body, MessageBody::InstallSnapshot { .. }));
    *batch = rest;
    snapshots.into_iter().last()
}

/// True when the batch carries a snapshot (the driver core attached its data).
fn carries_snapshot(batch: &[Message]) -> bool {
    batch.iter().any(|message| matches!(message.body, MessageBody::InstallSnapshot { .. }))
}

/// Compares a presented secret with ours in constant time.
pub fn secret_matches(expected: &[u8], presented: Option<&HeaderValue>) -> bool {
    use subtle::ConstantTimeEq;
    presented.is_some_and(|presented| bool::from(expected.ct_eq(presented.as_bytes())))
}

/// Decodes a peer batch, naming the error for the 400 answer.
pub fn decode_peer_batch(body: Bytes) -> Result<Vec<Message>, String> {
    decode_batch(body).map_err(|e| e.to_string())
}

/// `batch` with every snapshot payload rewritten in version 1, the only one v0.1.0
/// reads (`StateMachine::write_snapshot_v1`), off the async threads: it decodes and
/// writes the whole state. Only a member of v0.1.0 during a rolling upgrade gets it.
async fn payloads_for_v1(mut batch: Vec<Message>) -> Result<Vec<Message>, String> {
    tokio::task::spawn_blocking(move || {
        for message in &mut batch {
            if let MessageBody::InstallSnapshot { snapshot } = &mut message.body {
                let machine = crate::kv::StateMachine::load_snapshot_shared(&snapshot.data)
                    .map_err(|e| format!("the snapshot at {} does not decode: {e}", snapshot.meta.index))?;
                let mut payload = Vec::with_capacity(snapshot.data.len());
                machine.write_snapshot_v1(&mut payload).map_err(|e| e.to_string())?;
                snapshot.data = Bytes::from(payload);
            }
        }
        Ok(batch)
    })
    .await
    .map_err(|e| format!("converting a snapshot for a v0.1.0 peer: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_comparison_needs_the_exact_bytes() {
        let expected = b"s3cret";
        assert!(secret_matches(expected, Some(&HeaderValue::from_static("s3cret"))));
        assert!(!secret_matches(expected, Some(&HeaderValue::from_static("s3creT"))));
        assert!(!secret_matches(expected, Some(&HeaderValue::from_static("s3cre"))));
        assert!(!secret_matches(expected, None));
    }
}
