//! The watchers and the watch checker.
//!
//! `WATCHERS` threads watch every key the clients write (`GET /v1/watch?prefix=k`), each
//! on a random node. A connection ends when the node is silent for `IDLE` (the nodes
//! write a progress line every `--watch-progress-ms`, see `cluster.rs`), when it is cut
//! or cancelled, or at a random lifetime (so watchers move between nodes in healthy
//! times too; a watcher on a node cut off from the others stays, since that node still
//! writes progress lines, at its own stale revision). One connection in four stops reading for `STALL_MS` at a random moment,
//! so that the node (`--watch-queue-rounds 64`) may cancel it as slow with a
//! `resume_from`. The watcher then watches again, on another random node, from one past
//! the last revision it was vouched for: an event's revision, a progress line's, or a
//! cancellation's `resume_from` less one. Only complete HTTP chunks count (the node
//! writes each round's lines as one chunk): a chunk cut short by a fault is dropped, and
//! its revisions come again from the next node. The first watcher starts from revision
//! 1, the others at the revision the node is at.
//!
//! A `410 compacted` whose `compact_revision` C is at least the `from` asked excuses the
//! revisions from `from` to C (that history is gone): the watcher goes on from C+1 and
//! the window is reported, not counted as an anomaly. C below `from` is an anomaly.
//!
//! `check` holds the watchers' logs against the clients' history (the guarantees of
//! docs/api.md, "Watch"):
//! - **ordered**: revisions never decrease over a watcher's whole life, across
//!   connections and nodes; no event below the `from` its connection asked;
//! - **unique**: no (revision, key) twice, and no written value twice;
//! - **atomic**: the events of one revision come in one chunk (the workload writes one
//!   key per revision, so this is mostly a check that no revision is split or repeated);
//! - **reliable** and **resumable**: every write a client saw acknowledged, with its
//!   revision (`X-Mmapd-Revision`) from the watcher's first `from` through the last
//!   revision it was vouched for, outside excused windows, is among its events with the
//!   value written (or as a delete); a write whose outcome was unknown may or may not
//!   appear;
//! - **never back in time on one node**: on one connection, a progress line never names
//!   a revision below an earlier progress line or event, and no event comes at or below
//!   a progress line's revision;
//! - **nothing invented**: every put carries a value a client sent to that key (with an
//!   outcome other than a certain failure), at the revision it was acknowledged with if
//!   it was; every delete is of a key a client deleted; `mod_revision` is the revision;
//!   every line parses;
//! - **live**: after healing, every watcher reaches the last acknowledged write within
//!   `CATCH_UP`.
//!
//! `MMAPD_CHAOS_PLANT_WATCH=drop|dup|reorder|back` alters one watcher's log before the
//! check (drops an acknowledged event, repeats an event, swaps two events, adds a
//! progress line back in time): a planted bug the checker must report, to prove itself.
//!
//! A watcher speaks the HTTP API or etcd's gRPC Watch (`Api`, `MMAPD_CHAOS_API`): the
//! gRPC side (`grpc.rs`) turns each response into lines of one chunk, so the checker
//! holds both to the same guarantees.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::client::{connect, Api, Event, NoAnswer, Outcome, Request, Shared};
use super::cluster::address;
use super::rng::Rng;

/// Watcher threads per run.
pub const WATCHERS: usize = 3;
/// The prefix of every key the clients write (`k<number>`).
const PREFIX: &str = "k";
/// A connection silent this long is given up (the nodes write progress far more often).
const IDLE: Duration = Duration::from_millis(2000);
/// How long a watcher waits for a connection (and its TLS handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// The range of a connection's lifetime, in milliseconds.
const LIFETIME_MS: (u64, u64) = (300, 6000);
/// The range of a stall (the watcher not reading), in milliseconds.
const STALL_MS: (u64, u64) = (500, 3000);
/// How long after healing the watchers have to reach the last acknowledged write.
pub const CATCH_UP: Duration = Duration::from_secs(15);
/// The largest answer head or error body read.
const MAX_HEAD: usize = 64 << 10;

/// What a change did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A put of this value (the text of the line's `value`), at this `mod_revision`.
    Put { value: String, mod_revision: u64 },
    /// A delete.
    Delete,
}

/// One line of a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A put or a delete.
    Event { revision: u64, key: String, change: Change },
    /// `{"type":"progress","revision":N}`.
    Progress(u64),
    /// `{"type":"cancelled",...}`: the reason, and `resume_from` or `compact_revision`.
    Cancelled { reason: String, resume_from: Option<u64>, compact_revision: Option<u64> },
    /// A line that is none of these.
    Unparsed(String),
}

/// A line as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The HTTP chunk it came in (counted from 0 on its connection).
    pub chunk: usize,
    /// Microseconds since the run began.
    pub at: u64,
    /// What it said.
    pub item: Item,
}

/// How a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// No connection (or no TLS handshake).
    NotConnected(String),
    /// An answer other than 200 (the status and body); `410` is `Compacted`.
    Status(u16, String),
    /// gRPC: the call answered a status, or the create was refused (`created` and
    /// `canceled` at once): no stream.
    Refused(String),
    /// `410 compacted` with this `compact_revision`.
    Compacted(u64),
    /// 200, then silence for `IDLE`.
    Idle,
    /// 200, then the stream ended (closed, reset, cut, or its last chunk).
    Closed(String),
    /// 200, then a `cancelled` line.
    Cancelled,
    /// 200, then the watcher's lifetime for this connection ran out.
    Lifetime,
    /// 200, then the watcher was done (caught up, or told to stop).
    Stopped,
}

/// One connection of a watcher.
#[derive(Clone, Debug)]
pub struct Connection {
    /// The node asked (index from 0).
    pub node: usize,
    /// The `from` asked; `None`: the next revision.
    pub from: Option<u64>,
    /// The answer's `X-Mmapd-Revision` (the node's revision when the watch began).
    pub head: Option<u64>,
    /// Microseconds since the run began.
    pub opened: u64,
    /// Microseconds since the run began.
    pub closed: u64,
    /// The lines of its complete chunks, in order.
    pub lines: Vec<Line>,
    /// When (ms after opening) it stopped reading, and for how long (ms).
    pub stall: Option<(u64, u64)>,
    /// How it ended.
    pub end: End,
    /// The API it spoke.
    pub api: Api,
}

impl Connection {
    /// The first revision it asked for, once the node answered 200.
    fn start(&self) -> Option<u64> {
        match self.end {
            End::NotConnected(_) | End::Status(..) | End::Refused(_) | End::Compacted(_) => None,
            _ => self.from.or(self.head.map(|head| head + 1)),
        }
    }
}

/// Everything one watcher saw.
#[derive(Clone, Debug, Default)]
pub struct WatchLog {
    /// Its number.
    pub watcher: usize,
    /// Its connections, in order.
    pub connections: Vec<Connection>,
}

/// What the controller tells the watchers.
pub struct Control {
    /// Stop now.
    pub stop: AtomicBool,
    /// Stop once vouched for this revision (`u64::MAX`: not yet set).
    pub target: AtomicU64,
}

impl Default for Control {
    fn default() -> Control {
        Control { stop: AtomicBool::new(false), target: AtomicU64::new(u64::MAX) }
    }
}

/// The `from` after `connection`, given the one it asked (`next`): one past the last
/// revision it was vouched for, or past a compacted window.
fn next_from(connection: &Connection, next: Option<u64>) -> Option<u64> {
    if let End::Compacted(compact_revision) = connection.end {
        return Some(next.unwrap_or(1).max(compact_revision + 1));
    }
    let mut next = connection.start().or(next)?;
    for line in &connection.lines {
        match line.item {
            Item::Event { revision, .. } => next = next.max(revision + 1),
            Item::Progress(revision) => next = next.max(revision + 1),
            Item::Cancelled { resume_from: Some(resume), .. } => next = next.max(resume),
            _ => {}
        }
    }
    Some(next)
}

/// A watcher's loop: watch on `api`, and watch again elsewhere, until told to stop or
/// caught up.
pub fn watcher_loop(watcher: usize, api: Api, shared: &Shared, control: &Control, mut rng: Rng) -> WatchLog {
    let grpc = (api == Api::Grpc).then(super::grpc::Watcher::new);
    let mut log = WatchLog { watcher, connections: Vec::new() };
    let mut next = if watcher == 0 { Some(1) } else { None };
    while !control.stop.load(Ordering::Relaxed) && !caught_up(next, control) {
        let node = rng.index(shared.nodes);
        let lifetime_ms = rng.between(LIFETIME_MS.0, LIFETIME_MS.1);
        let stall =
            (rng.below(4) == 0).then(|| (rng.between(0, lifetime_ms), rng.between(STALL_MS.0, STALL_MS.1)));
        let lifetime = Duration::from_millis(lifetime_ms);
        let connection = watch_once(shared, control, node, next, lifetime, stall, grpc.as_ref());
        next = next_from(&connection, next);
        if matches!(connection.end, End::Compacted(_) | End::Cancelled) {
            let last = connection.lines.last().map(|line| &line.item);
            eprintln!(
                "chaos:   {:6.2} s watcher w{watcher} ({:?}) on n{} from {:?}: {:?}{}; on from {}",
                connection.closed as f64 / 1e6,
                connection.api,
                connection.node + 1,
                connection.from,
                connection.end,
                last.map_or_else(String::new, |item| format!(" ({item:?})")),
                next.map_or_else(|| "the next revision".into(), |n| n.to_string())
            );
        }
        let failed = matches!(connection.end, End::NotConnected(_) | End::Status(..) | End::Refused(_));
        log.connections.push(connection);
        if failed {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    log
}

/// Whether a watcher whose next revision is `next` has reached the controller's target.
pub fn caught_up(next: Option<u64>, control: &Control) -> bool {
    let target = control.target.load(Ordering::Relaxed);
    target != u64::MAX && next.is_some_and(|next| next > target)
}

/// One watch on `node` from `from`, for at most `lifetime`: over gRPC with `grpc`, else
/// over HTTP.
fn watch_once(
    shared: &Shared,
    control: &Control,
    node: usize,
    from: Option<u64>,
    lifetime: Duration,
    stall: Option<(u64, u64)>,
    grpc: Option<&super::grpc::Watcher>,
) -> Connection {
    let opened = shared.now();
    let mut connection = Connection {
        node,
        from,
        head: None,
        opened,
        closed: opened,
        lines: Vec::new(),
        stall,
        end: End::Stopped,
        api: if grpc.is_some() { Api::Grpc } else { Api::Http },
    };
    connection.end = match grpc {
        Some(grpc) => grpc.stream(shared, control, &mut connection, lifetime),
        None => match stream(shared, control, &mut connection, lifetime) {
            Ok(end) | Err(end) => end,
        },
    };
    connection.closed = shared.now();
    connection
}

/// Reads one watch into `connection`; the way it ended.
fn stream(
    shared: &Shared,
    control: &Control,
    connection: &mut Connection,
    lifetime: Duration,
) -> Result<End, End> {
    let started = Instant::now();
    let mut deadline = started + lifetime;
    let mut tcp = connect(connection.node, CONNECT_TIMEOUT)
        .map_err(|(NoAnswer::NotSent(e) | NoAnswer::Lost(e))| End::NotConnected(e))?;
    let closed = |e: std::io::Error| End::Closed(e.to_string());
    tcp.tcp().set_write_timeout(Some(IDLE)).map_err(closed)?;
    if connection.stall.is_some() {
        // A small receive buffer, so that a stall backs up to the node (and its queue)
        // rather than into this socket.
        small_receive_buffer(tcp.tcp());
    }
    tcp.tcp().set_read_timeout(Some(Duration::from_millis(100))).map_err(closed)?;
    let from = connection.from.map_or_else(String::new, |from| format!("&from={from}"));
    let request = format!(
        "GET /v1/watch?prefix={PREFIX}{from} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        address(connection.node)
    );
    tcp.write_all(request.as_bytes()).map_err(closed)?;
    let mut raw = Vec::new();
    let mut last_byte = Instant::now();
    let mut next = connection.from;
    let mut chunk = 0usize;
    let mut head_end = None;
    let mut stalled = false;
    let mut buffer = [0u8; 16 << 10];
    loop {
        // What the bytes so far hold: the head, then whole chunks.
        if head_end.is_none() {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).into_owned();
                let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                if status != 200 {
                    return Err(refusal(&mut tcp, status, &head, raw.split_off(end + 4)));
                }
                connection.head = header(&head, "x-mmapd-revision").and_then(|v| v.parse().ok());
                next = connection.start();
                raw.drain(..end + 4);
                head_end = Some(end);
            } else if raw.len() > MAX_HEAD {
                return Err(End::Closed("an answer head past 64 KiB".into()));
            }
        }
        if head_end.is_some() {
            while let Some((data, used)) = whole_chunk(&raw) {
                if data.is_empty() {
                    return Ok(End::Closed("the last chunk".into()));
                }
                let at = shared.now();
                let mut cancelled = false;
                for text in data.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
                    let item = parse_line(text);
                    match &item {
                        Item::Event { revision, .. } | Item::Progress(revision) => {
                            next = Some(next.unwrap_or(0).max(revision + 1))
                        }
                        Item::Cancelled { resume_from, .. } => {
                            cancelled = true;
                            if let Some(resume) = resume_from {
                                next = Some(next.unwrap_or(0).max(*resume));
                            }
                        }
                        Item::Unparsed(_) => {}
                    }
                    connection.lines.push(Line { chunk, at, item });
                }
                raw.drain(..used);
                chunk += 1;
                if cancelled {
                    return Ok(End::Cancelled);
                }
            }
        }
        if control.stop.load(Ordering::Relaxed) || (head_end.is_some() && caught_up(next, control)) {
            return Ok(End::Stopped);
        }
        if Instant::now() >= deadline && head_end.is_some() {
            return Ok(End::Lifetime);
        }
        if let Some((_, length)) = connection.stall.filter(|&(at, _)| {
            head_end.is_some() && !stalled && started.elapsed() >= Duration::from_millis(at)
        }) {
            stalled = true;
            let until = Instant::now() + Duration::from_millis(length);
            while Instant::now() < until && !control.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            // The silence was this end's; read on for a while (a cancellation may come).
            last_byte = Instant::now();
            deadline = deadline.max(last_byte + Duration::from_secs(1));
        }
        if last_byte.elapsed() >= IDLE {
            return Ok(End::Idle);
        }
        match tcp.read(&mut buffer) {
            Ok(0) => return Ok(End::Closed("closed".into())),
            Ok(n) => {
                raw.extend_from_slice(&buffer[..n]);
                last_byte = Instant::now();
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Ok(End::Closed(e.to_string())),
        }
    }
}

/// Shrinks `tcp`'s receive buffer to a few KiB (best effort).
pub fn small_receive_buffer(tcp: &impl std::os::fd::AsRawFd) {
    let size: libc::c_int = 4096;
    // SAFETY: setsockopt on an open socket with a pointer to a c_int and its size.
    unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// A header's value in an answer head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// The end of a watch answered `status`: its body read (by `Content-Length`, briefly),
/// and a 410's `compact_revision`.
fn refusal(tcp: &mut super::client::Stream, status: u16, head: &str, mut body: Vec<u8>) -> End {
    let length: usize = header(head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let deadline = Instant::now() + IDLE;
    let mut buffer = [0u8; 4096];
    while body.len() < length.min(MAX_HEAD) && Instant::now() < deadline {
        match tcp.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&buffer[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    if status == 410 {
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        if let Some(compact) = json.as_ref().and_then(|j| j["compact_revision"].as_u64()) {
            if json.as_ref().is_some_and(|j| j["code"] == "compacted") {
                return End::Compacted(compact);
            }
        }
    }
    End::Status(status, text)
}

/// The first whole chunk of a chunked body in `raw`: its data and the bytes it took.
/// Data empty: the last chunk.
fn whole_chunk(raw: &[u8]) -> Option<(&[u8], usize)> {
    let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
    let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
    let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
    let start = line_end + 2;
    if raw.len() < start + size + 2 {
        return None;
    }
    Some((&raw[start..start + size], start + size + 2))
}

/// One NDJSON line.
pub fn parse_line(text: &[u8]) -> Item {
    let unparsed = || Item::Unparsed(String::from_utf8_lossy(text).into_owned());
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(text) else { return unparsed() };
    let revision = json["revision"].as_u64();
    let key = json["key"].as_str().map(str::to_owned);
    match (json["type"].as_str(), revision, key) {
        (Some("put"), Some(revision), Some(key)) => {
            let Some(value) = json["value"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| json["value_base64"].as_str().map(|b64| format!("(base64) {b64}")))
            else {
                return unparsed();
            };
            let Some(mod_revision) = json["mod_revision"].as_u64() else { return unparsed() };
            Item::Event { revision, key, change: Change::Put { value, mod_revision } }
        }
        (Some("delete"), Some(revision), Some(key)) => Item::Event { revision, key, change: Change::Delete },
        (Some("progress"), Some(revision), _) => Item::Progress(revision),
        (Some("cancelled"), _, _) => Item::Cancelled {
            reason: json["reason"].as_str().unwrap_or("").to_owned(),
            resume_from: json["resume_from"].as_u64(),
            compact_revision: json["compact_revision"].as_u64(),
        },
        _ => unparsed(),
    }
}

/// Whether node `node`'s history still holds revision 1: `None` if so (or no answer),
/// else the revision it is compacted through (what a watch from 1 is refused with).
pub fn compacted_through(shared: &Shared, node: usize) -> Option<u64> {
    let control = Control { stop: AtomicBool::new(false), target: AtomicU64::new(0) };
    let connection = watch_once(shared, &control, node, Some(1), Duration::from_millis(100), None, None);
    match connection.end {
        End::Compacted(compact_revision) => Some(compact_revision),
        _ => None,
    }
}

/// What the watch checker found, and counts for the summary.
#[derive(Debug, Default, Clone)]
pub struct WatchFindings {
    /// Each anomaly, with the key it concerns.
    pub anomalies: Vec<(Option<u64>, String)>,
    /// Connections opened (all watchers).
    pub connections: usize,
    /// Of those, answered 200.
    pub streams: usize,
    /// Event lines.
    pub events: usize,
    /// Progress lines.
    pub progress: usize,
    /// `cancelled` lines.
    pub cancelled: usize,
    /// `410 compacted` answers.
    pub compacted: usize,
    /// The excused windows: watcher, first and last revision.
    pub excused: Vec<(usize, u64, u64)>,
    /// Acknowledged writes each watcher had to show (summed over watchers).
    pub acknowledged_checked: usize,
    /// Writes of unknown outcome that a watcher saw.
    pub unknown_seen: usize,
    /// Of the connections, those over gRPC.
    pub grpc_connections: usize,
    /// Of the streams, those over gRPC.
    pub grpc_streams: usize,
    /// Of the events, those received over gRPC.
    pub grpc_events: usize,
}

impl WatchFindings {
    /// Adds another run's counts and anomalies.
    pub fn add(&mut self, other: &WatchFindings) {
        self.anomalies.extend(other.anomalies.iter().cloned());
        self.connections += other.connections;
        self.streams += other.streams;
        self.events += other.events;
        self.progress += other.progress;
        self.cancelled += other.cancelled;
        self.compacted += other.compacted;
        self.excused.extend(other.excused.iter().copied());
        self.acknowledged_checked += other.acknowledged_checked;
        self.unknown_seen += other.unknown_seen;
        self.grpc_connections += other.grpc_connections;
        self.grpc_streams += other.grpc_streams;
        self.grpc_events += other.grpc_events;
    }

    /// The summary's words.
    pub fn summary(&self) -> String {
        let excused: u64 = self.excused.iter().map(|(_, from, to)| to - from + 1).sum();
        let windows: Vec<String> =
            self.excused.iter().take(6).map(|(w, from, to)| format!("w{w}: {from}..={to}")).collect();
        format!(
            "watch: {} connections ({} streams), {} events (over gRPC: {} connections, {} streams, {} events), \
             {} progress lines, {} cancelled, {} acknowledged writes checked, {} writes of unknown outcome seen, \
             {} answered 410 compacted (excused: {} revisions{}), {} anomalies",
            self.connections,
            self.streams,
            self.events,
            self.grpc_connections,
            self.grpc_streams,
            self.grpc_events,
            self.progress,
            self.cancelled,
            self.acknowledged_checked,
            self.unknown_seen,
            self.compacted,
            excused,
            if windows.is_empty() { String::new() } else { format!(": {}", windows.join(", ")) },
            self.anomalies.len()
        )
    }
}

/// A client write as the watch checker sees it.
#[derive(Clone, Debug)]
struct ClientWrite {
    key: u64,
    change: Change,
    acknowledged: Option<u64>,
}

fn sent_change(event: &Event) -> Option<Change> {
    let value = match event.request {
        Request::Write(v) | Request::Create(v) | Request::Swap { new: v, .. } => v,
        Request::Delete => return Some(Change::Delete),
        Request::Read => return None,
    };
    Some(Change::Put { value: value.to_string(), mod_revision: 0 })
}

fn same_change(seen: &Change, sent: &Change) -> bool {
    match (seen, sent) {
        (Change::Put { value: a, .. }, Change::Put { value: b, .. }) => a == b,
        (Change::Delete, Change::Delete) => true,
        _ => false,
    }
}

fn key_number(key: &str) -> Option<u64> {
    key.strip_prefix(PREFIX)?.parse().ok()
}

/// Checks the watchers' logs against the clients' history. `caught_up`: the revision
/// every watcher had to reach (the last acknowledged write), when the cluster recovered.
pub fn check(logs: &[WatchLog], history: &[Event], caught_up: Option<u64>) -> WatchFindings {
    let mut findings = WatchFindings::default();
    // The clients' writes: acknowledged ones by revision, and every value that may have
    // been written (acknowledged or unknown), by key and value.
    let mut acknowledged: HashMap<u64, ClientWrite> = HashMap::new();
    let mut possible: HashMap<(u64, String), ClientWrite> = HashMap::new();
    let mut deletable: HashSet<u64> = HashSet::new();
    for event in history.iter().filter(|e| e.client != usize::MAX) {
        let Some(change) = sent_change(event) else { continue };
        let acked = event.outcome == Outcome::Ok;
        if !(acked || event.outcome == Outcome::Unknown) {
            continue;
        }
        let write = ClientWrite { key: event.key, change: change.clone(), acknowledged: None };
        let write = if acked {
            match event.revision {
                Some(revision) => {
                    let write = ClientWrite { acknowledged: Some(revision), ..write };
                    if let Some(other) = acknowledged.insert(revision, write.clone()) {
                        findings.anomalies.push((
                            Some(event.key),
                            format!(
                                "revision {revision} was acknowledged to two writes: k{} {:?} and k{} {:?}",
                                other.key, other.change, event.key, change
                            ),
                        ));
                    }
                    write
                }
                None => {
                    findings.anomalies.push((
                        Some(event.key),
                        format!(
                            "an acknowledged write of k{} without X-Mmapd-Revision ({})",
                            event.key, event.detail
                        ),
                    ));
                    write
                }
            }
        } else {
            write
        };
        match &change {
            Change::Delete => {
                deletable.insert(event.key);
            }
            Change::Put { value, .. } => {
                possible.insert((event.key, value.clone()), write);
            }
        }
    }
    for log in logs {
        check_one(log, &acknowledged, &possible, &deletable, caught_up, &mut findings);
    }
    findings
}

/// Where a line was, for people.
fn place(log: &WatchLog, connection: usize, line: Option<&Line>) -> String {
    let c = &log.connections[connection];
    let mut text = format!(
        "watcher w{} connection {} (n{}, from {}, opened at {:.3} s)",
        log.watcher,
        connection,
        c.node + 1,
        c.from
            .map_or_else(|| format!("the next revision, {}", c.head.map_or(0, |h| h + 1)), |f| f.to_string()),
        c.opened as f64 / 1e6
    );
    if let Some(line) = line {
        let _ = write!(text, ", chunk {} at {:.3} s", line.chunk, line.at as f64 / 1e6);
    }
    text
}

fn check_one(
    log: &WatchLog,
    acknowledged: &HashMap<u64, ClientWrite>,
    possible: &HashMap<(u64, String), ClientWrite>,
    deletable: &HashSet<u64>,
    caught_up: Option<u64>,
    findings: &mut WatchFindings,
) {
    let w = log.watcher;
    let mut anomaly = |key: Option<u64>, text: String| findings_push(&mut findings.anomalies, key, w, text);
    let mut first_from: Option<u64> = None;
    // The highest revision this watcher was vouched for (events, progress, resume_from).
    let mut vouched = 0u64;
    let mut excused: Vec<(u64, u64)> = Vec::new();
    // (revision, key) seen -> where.
    let mut seen: HashMap<(u64, String), (usize, Change)> = HashMap::new();
    let mut values_seen: HashMap<(u64, String), u64> = HashMap::new();
    // The last event: its revision, connection and chunk.
    let mut previous: Option<(u64, usize, usize)> = None;
    let (mut connections, mut streams, mut events, mut progress_lines, mut cancelled, mut compacted) =
        (0, 0, 0, 0, 0, 0);
    let mut unknown_seen = 0;
    let (mut grpc_connections, mut grpc_streams, mut grpc_events) = (0, 0, 0);
    for (ci, connection) in log.connections.iter().enumerate() {
        connections += 1;
        let grpc = connection.api == Api::Grpc;
        grpc_connections += usize::from(grpc);
        if let End::Compacted(compact_revision) = connection.end {
            compacted += 1;
            let from = connection.from.unwrap_or(1);
            if compact_revision < from {
                anomaly(
                    None,
                    format!(
                        "{}: 410 compacted with compact_revision {compact_revision}, below the from asked",
                        place(log, ci, None)
                    ),
                );
            } else {
                excused.push((from, compact_revision));
            }
            continue;
        }
        let Some(start) = connection.start() else { continue };
        streams += 1;
        grpc_streams += usize::from(grpc);
        first_from.get_or_insert(start);
        // On this connection: the highest progress line, and the highest event.
        let mut progress: Option<u64> = None;
        let mut highest_event = 0u64;
        for line in &connection.lines {
            match &line.item {
                Item::Event { revision, key, change } => {
                    let revision = *revision;
                    events += 1;
                    grpc_events += usize::from(grpc);
                    let key_number = key_number(key);
                    if revision < start {
                        anomaly(
                            key_number,
                            format!(
                                "{}: an event at revision {revision} ({key}), below the from asked",
                                place(log, ci, Some(line))
                            ),
                        );
                    }
                    if let Some(progress) = progress.filter(|&p| revision <= p) {
                        anomaly(
                            key_number,
                            format!(
                                "{}: back in time: an event at revision {revision} ({key}) after progress {progress} \
                                 on the same connection",
                                place(log, ci, Some(line))
                            ),
                        );
                    }
                    if let Some((prev, pc, pchunk)) = previous {
                        if revision < prev {
                            anomaly(
                                key_number,
                                format!(
                                    "{}: not ordered: revision {revision} ({key}) after revision {prev}{}",
                                    place(log, ci, Some(line)),
                                    if pc == ci { String::new() } else { format!(" (on connection {pc})") }
                                ),
                            );
                        } else if revision == prev && (pc, pchunk) != (ci, line.chunk) {
                            anomaly(
                                key_number,
                                format!(
                                    "{}: not atomic: revision {revision} ({key}) came in two chunks (connection {pc} \
                                     chunk {pchunk}, then this one)",
                                    place(log, ci, Some(line))
                                ),
                            );
                        }
                    }
                    previous = Some((revision, ci, line.chunk));
                    highest_event = highest_event.max(revision);
                    vouched = vouched.max(revision);
                    if let Some((earlier, _)) = seen.insert((revision, key.clone()), (ci, change.clone())) {
                        anomaly(
                            key_number,
                            format!(
                                "{}: not unique: revision {revision} ({key}) twice (first on connection {earlier})",
                                place(log, ci, Some(line))
                            ),
                        );
                    }
                    // Nothing invented.
                    let Some(number) = key_number else {
                        anomaly(
                            None,
                            format!(
                                "{}: an event for {key:?}, a key no client wrote",
                                place(log, ci, Some(line))
                            ),
                        );
                        continue;
                    };
                    match change {
                        Change::Put { value, mod_revision } => {
                            if *mod_revision != revision {
                                anomaly(
                                    Some(number),
                                    format!(
                                        "{}: a put at revision {revision} ({key}) with mod_revision {mod_revision}",
                                        place(log, ci, Some(line))
                                    ),
                                );
                            }
                            match possible.get(&(number, value.clone())) {
                                None => anomaly(
                                    Some(number),
                                    format!(
                                        "{}: a put of {value} to {key} at revision {revision}: no client wrote that value \
                                         there (or it certainly failed)",
                                        place(log, ci, Some(line))
                                    ),
                                ),
                                Some(write) => {
                                    if write.acknowledged.is_none() {
                                        unknown_seen += 1;
                                    }
                                    if let Some(acked) = write.acknowledged.filter(|&a| a != revision) {
                                        anomaly(
                                            Some(number),
                                            format!(
                                                "{}: {value} to {key} at revision {revision}, acknowledged at revision {acked}",
                                                place(log, ci, Some(line))
                                            ),
                                        );
                                    }
                                }
                            }
                            if let Some(earlier) = values_seen.insert((number, value.clone()), revision) {
                                if earlier != revision {
                                    anomaly(
                                        Some(number),
                                        format!(
                                            "{}: {value} written once to {key} came at revision {earlier} and again at {revision}",
                                            place(log, ci, Some(line))
                                        ),
                                    );
                                }
                            }
                        }
                        Change::Delete => {
                            if !deletable.contains(&number) {
                                anomaly(
                                    Some(number),
                                    format!(
                                        "{}: a delete of {key} at revision {revision}: no client deleted it",
                                        place(log, ci, Some(line))
                                    ),
                                );
                            } else if acknowledged.get(&revision).is_none_or(|w| w.key != number) {
                                unknown_seen += 1;
                            }
                        }
                    }
                }
                Item::Progress(revision) => {
                    progress_lines += 1;
                    let revision = *revision;
                    let before = progress.unwrap_or(0).max(highest_event);
                    if revision < before {
                        anomaly(
                            None,
                            format!(
                                "{}: back in time: progress {revision} after {} {before} on the same connection",
                                place(log, ci, Some(line)),
                                if progress == Some(before) { "progress" } else { "an event at" }
                            ),
                        );
                    }
                    progress = Some(progress.unwrap_or(0).max(revision));
                    vouched = vouched.max(revision);
                }
                Item::Cancelled { resume_from, .. } => {
                    cancelled += 1;
                    if let Some(resume) = resume_from {
                        vouched = vouched.max(resume.saturating_sub(1));
                    }
                }
                Item::Unparsed(text) => {
                    anomaly(
                        None,
                        format!("{}: a line that is no watch line: {text:?}", place(log, ci, Some(line))),
                    );
                }
            }
        }
    }
    // Reliable (and resumable): every acknowledged write in the watched span is there.
    let mut checked = 0;
    if let Some(first) = first_from {
        let mut missing: Vec<u64> = Vec::new();
        let mut revisions: Vec<&u64> = acknowledged.keys().filter(|&&r| r >= first && r <= vouched).collect();
        revisions.sort_unstable();
        for &revision in revisions {
            if excused.iter().any(|&(from, to)| from <= revision && revision <= to) {
                continue;
            }
            checked += 1;
            let write = &acknowledged[&revision];
            let key = format!("{PREFIX}{}", write.key);
            match seen.get(&(revision, key.clone())) {
                Some((_, change)) if same_change(change, &write.change) => {}
                Some((ci, change)) => anomaly(
                    Some(write.key),
                    format!(
                        "{}: revision {revision} of {key} came as {change:?}, but the client was acknowledged {:?}",
                        place(log, *ci, None),
                        write.change
                    ),
                ),
                None => missing.push(revision),
            }
        }
        for revision in missing {
            let write = &acknowledged[&revision];
            // The connection whose span held it, for people.
            let holder = log.connections.iter().enumerate().find(|(_, c)| {
                c.start().is_some_and(|s| s <= revision)
                    && next_from(c, c.from).is_some_and(|next| next > revision)
            });
            anomaly(
                Some(write.key),
                format!(
                    "a gap: the acknowledged write of k{} at revision {revision} ({:?}) is missing from watcher w{w}, \
                     which watched from {first} through {vouched}{}",
                    write.key,
                    write.change,
                    holder.map_or_else(String::new, |(ci, _)| format!("; its span was that of {}", place(log, ci, None)))
                ),
            );
        }
    }
    // Live: after healing, every watcher reached the last acknowledged write.
    if let Some(target) = caught_up {
        let reached = excused.iter().map(|&(_, to)| to).fold(vouched, u64::max);
        if reached < target {
            anomaly(
                None,
                format!(
                    "watcher w{w} reached only revision {reached} within {CATCH_UP:?} of healing; the last \
                     acknowledged write has revision {target} (its last connection: {})",
                    log.connections
                        .last()
                        .map_or_else(|| "none".into(), |c| format!("n{} ending {:?}", c.node + 1, c.end))
                ),
            );
        }
    }
    findings.connections += connections;
    findings.streams += streams;
    findings.events += events;
    findings.progress += progress_lines;
    findings.cancelled += cancelled;
    findings.compacted += compacted;
    findings.excused.extend(excused.iter().map(|&(from, to)| (w, from, to)));
    findings.acknowledged_checked += checked;
    findings.unknown_seen += unknown_seen;
    findings.grpc_connections += grpc_connections;
    findings.grpc_streams += grpc_streams;
    findings.grpc_events += grpc_events;
}

/// Adds an anomaly, at most `MAX_PER_WATCHER` per watcher (then one line saying so).
fn findings_push(anomalies: &mut Vec<(Option<u64>, String)>, key: Option<u64>, watcher: usize, text: String) {
    const MAX_PER_WATCHER: usize = 20;
    let tag = format!("watch w{watcher}: ");
    let mine = anomalies.iter().filter(|(_, a)| a.starts_with(&tag)).count();
    if mine < MAX_PER_WATCHER {
        anomalies.push((key, format!("{tag}{text}")));
    } else if mine == MAX_PER_WATCHER {
        anomalies.push((None, format!("{tag}more anomalies left out")));
    }
}

/// `MMAPD_CHAOS_PLANT_WATCH`: the planted bug, if any.
pub fn planted() -> Option<String> {
    std::env::var("MMAPD_CHAOS_PLANT_WATCH").ok().filter(|v| !v.is_empty())
}

/// Plants `how` (drop, dup, reorder, back) in the first watcher's log that allows it;
/// what was done, for the log.
pub fn plant(logs: &mut [WatchLog], history: &[Event], how: &str) -> Result<String, String> {
    let acknowledged: HashSet<u64> = history
        .iter()
        .filter(|e| e.outcome == Outcome::Ok && !matches!(e.request, Request::Read))
        .filter_map(|e| e.revision)
        .collect();
    for log in logs.iter_mut() {
        for (ci, connection) in log.connections.iter_mut().enumerate() {
            let events: Vec<usize> = (0..connection.lines.len())
                .filter(|&i| matches!(connection.lines[i].item, Item::Event { .. }))
                .collect();
            let revision_of = |line: &Line| match line.item {
                Item::Event { revision, .. } | Item::Progress(revision) => revision,
                _ => 0,
            };
            let done = |what: String| {
                Ok(format!("planted {how} in watcher w{} connection {ci}: {what}", log.watcher))
            };
            match how {
                "drop" => {
                    if let Some(&i) = events[events.len() / 2..]
                        .iter()
                        .find(|&&i| acknowledged.contains(&revision_of(&connection.lines[i])))
                    {
                        let line = connection.lines.remove(i);
                        return done(format!("dropped {:?}", line.item));
                    }
                }
                "dup" => {
                    if let Some(&i) = events.get(events.len() / 2) {
                        let line = connection.lines[i].clone();
                        connection.lines.insert(i + 1, line.clone());
                        return done(format!("repeated {:?}", line.item));
                    }
                }
                "reorder" => {
                    if let Some(pair) = events.windows(2).find(|pair| {
                        revision_of(&connection.lines[pair[0]]) < revision_of(&connection.lines[pair[1]])
                    }) {
                        connection.lines.swap(pair[0], pair[1]);
                        return done(format!("swapped lines {} and {}", pair[0], pair[1]));
                    }
                }
                "back" => {
                    if let Some(i) = (0..connection.lines.len())
                        .find(|&i| matches!(connection.lines[i].item, Item::Progress(r) if r > 1))
                    {
                        let mut line = connection.lines[i].clone();
                        let back = revision_of(&line) - 1;
                        line.item = Item::Progress(back);
                        connection.lines.insert(i + 1, line);
                        return done(format!("a progress line at {back} after line {i}"));
                    }
                }
                other => {
                    return Err(format!(
                        "MMAPD_CHAOS_PLANT_WATCH={other}: expected drop, dup, reorder or back"
                    ))
                }
            }
        }
    }
    Err(format!("MMAPD_CHAOS_PLANT_WATCH={how}: no watcher's log allowed it"))
}

/// The watchers' logs as text (a failed run's evidence).
pub fn describe(logs: &[WatchLog]) -> String {
    let mut text = String::new();
    for log in logs {
        for (ci, c) in log.connections.iter().enumerate() {
            let _ = writeln!(
                text,
                "w{} connection {ci} ({:?}): n{} from {:?} head {:?} {:.3}..{:.3} s, stall {:?}, ended {:?}",
                log.watcher,
                c.api,
                c.node + 1,
                c.from,
                c.head,
                c.opened as f64 / 1e6,
                c.closed as f64 / 1e6,
                c.stall,
                c.end
            );
            for line in &c.lines {
                let _ = writeln!(
                    text,
                    "  chunk {} at {:.3} s: {:?}",
                    line.chunk,
                    line.at as f64 / 1e6,
                    line.item
                );
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An acknowledged write of `value` to `k<key>` at `revision` (`None`: a delete).
    fn write(key: u64, value: Option<u64>, revision: u64) -> Event {
        Event {
            client: 0,
            node: 0,
            key,
            invoke: revision * 10,
            complete: revision * 10 + 5,
            request: value.map_or(Request::Delete, Request::Write),
            outcome: Outcome::Ok,
            version: Some(revision),
            revision: Some(revision),
            detail: String::new(),
            api: Api::Http,
        }
    }

    fn unknown(key: u64, value: u64) -> Event {
        Event { outcome: Outcome::Unknown, revision: None, ..write(key, Some(value), 0) }
    }

    fn put(chunk: usize, revision: u64, key: u64, value: u64) -> Line {
        Line {
            chunk,
            at: 0,
            item: Item::Event {
                revision,
                key: format!("k{key}"),
                change: Change::Put { value: value.to_string(), mod_revision: revision },
            },
        }
    }

    fn delete(chunk: usize, revision: u64, key: u64) -> Line {
        Line { chunk, at: 0, item: Item::Event { revision, key: format!("k{key}"), change: Change::Delete } }
    }

    fn progress(chunk: usize, revision: u64) -> Line {
        Line { chunk, at: 0, item: Item::Progress(revision) }
    }

    fn connection(node: usize, from: u64, lines: Vec<Line>) -> Connection {
        Connection {
            node,
            from: Some(from),
            head: None,
            opened: 0,
            closed: 0,
            lines,
            stall: None,
            end: End::Lifetime,
            api: Api::Http,
        }
    }

    /// Six acknowledged writes (revisions 2..=7; 4 a delete) and one of unknown outcome.
    fn history() -> Vec<Event> {
        vec![
            write(1, Some(10), 2),
            write(2, Some(20), 3),
            write(1, None, 4),
            write(2, Some(21), 5),
            write(3, Some(30), 6),
            write(1, Some(11), 7),
            unknown(3, 31),
        ]
    }

    /// A healthy watcher: two connections on two nodes, the second from one past the
    /// first's progress line; revision 8 carries the unknown write.
    fn healthy() -> WatchLog {
        WatchLog {
            watcher: 0,
            connections: vec![
                connection(0, 1, vec![put(0, 2, 1, 10), put(0, 3, 2, 20), delete(1, 4, 1), progress(2, 4)]),
                connection(
                    2,
                    5,
                    vec![
                        put(0, 5, 2, 21),
                        put(1, 6, 3, 30),
                        progress(2, 6),
                        put(3, 7, 1, 11),
                        put(4, 8, 3, 31),
                    ],
                ),
            ],
        }
    }

    fn anomalies(log: WatchLog) -> Vec<String> {
        check(&[log], &history(), Some(7)).anomalies.into_iter().map(|(_, a)| a).collect()
    }

    #[test]
    fn a_healthy_watch_across_reconnects_has_no_anomaly() {
        let findings = check(&[healthy()], &history(), Some(7));
        assert!(findings.anomalies.is_empty(), "{:?}", findings.anomalies);
        assert_eq!(findings.acknowledged_checked, 6);
        assert_eq!(findings.unknown_seen, 1);
    }

    #[test]
    fn a_missing_acknowledged_write_is_a_gap() {
        let mut log = healthy();
        log.connections[1].lines.remove(1); // revision 6
        let found = anomalies(log);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("a gap") && found[0].contains("revision 6"), "{found:?}");
    }

    #[test]
    fn a_gap_between_connections_is_a_gap() {
        // The second connection resumed from 6, past its vouched 4: revision 5 is lost.
        let mut log = healthy();
        log.connections[1].from = Some(6);
        log.connections[1].lines.remove(0);
        let found = anomalies(log);
        assert!(found.iter().any(|a| a.contains("a gap") && a.contains("revision 5")), "{found:?}");
    }

    #[test]
    fn an_event_twice_is_not_unique() {
        let mut log = healthy();
        let again = log.connections[0].lines[1].clone();
        log.connections[1].lines.insert(0, Line { chunk: 0, ..again });
        let found = anomalies(log);
        assert!(found.iter().any(|a| a.contains("not unique")), "{found:?}");
    }

    #[test]
    fn a_repeat_in_the_same_chunk_is_not_unique() {
        let mut log = healthy();
        let again = log.connections[0].lines[0].clone();
        log.connections[0].lines.insert(1, again);
        let found = anomalies(log);
        assert!(found.iter().any(|a| a.contains("not unique")), "{found:?}");
    }

    #[test]
    fn a_swap_is_not_ordered() {
        let mut log = healthy();
        log.connections[0].lines.swap(0, 1);
        let found = anomalies(log);
        assert!(found.iter().any(|a| a.contains("not ordered")), "{found:?}");
    }

    #[test]
    fn a_progress_line_below_an_earlier_one_is_back_in_time() {
        let mut log = healthy();
        log.connections[1].lines.insert(3, progress(2, 5));
        let found = anomalies(log);
        assert!(found.iter().any(|a| a.contains("back in time: progress 5")), "{found:?}");
    }

    #[test]
    fn an_event_at_or_below_a_progress_line_is_back_in_time() {
        let mut log = healthy();
        log.connections[0].lines.insert(3, progress(1, 4));
        log.connections[0].lines.swap(2, 3); // progress 4, then the delete at 4
        let found = anomalies(log);
        assert!(found.iter().any(|a| a.contains("back in time: an event at revision 4")), "{found:?}");
    }

    #[test]
    fn progress_may_go_back_on_another_node() {
        // A lagging node's progress line below what the last one said is not an anomaly.
        let mut log = healthy();
        log.connections[1].lines.insert(0, progress(0, 3));
        assert!(anomalies(log).is_empty());
    }

    #[test]
    fn a_revision_in_two_chunks_is_not_atomic() {
        // An import: two keys at revision 6, in two chunks.
        let mut history = history();
        history.push(Event { revision: None, ..unknown(4, 40) });
        let mut log = healthy();
        log.connections[1].lines.insert(2, put(2, 6, 4, 40));
        let found: Vec<String> =
            check(&[log.clone()], &history, Some(7)).anomalies.into_iter().map(|a| a.1).collect();
        assert!(found.iter().any(|a| a.contains("not atomic")), "{found:?}");
        // The same two events in one chunk are fine.
        log.connections[1].lines[2].chunk = 1;
        let found = check(&[log], &history, Some(7)).anomalies;
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_value_never_sent_or_at_another_revision_is_invented() {
        let mut log = healthy();
        log.connections[1].lines[4] = put(4, 8, 3, 99);
        let found = anomalies(log);
        assert!(found.iter().any(|a| a.contains("no client wrote that value")), "{found:?}");
        let mut log = healthy();
        log.connections[1].lines[0] = put(0, 5, 2, 20); // 20 was acknowledged at 3
        let found = anomalies(log);
        assert!(found.iter().any(|a| a.contains("acknowledged at revision 3")), "{found:?}");
    }

    #[test]
    fn a_compacted_window_at_or_above_from_is_excused_and_below_is_not() {
        let mut log = healthy();
        // Between the two connections: from 5 refused, compacted through 6; then from 7.
        let mut refused = connection(1, 5, Vec::new());
        refused.end = End::Compacted(6);
        log.connections.insert(1, refused);
        log.connections[2].from = Some(7);
        log.connections[2].lines.drain(..3);
        let findings = check(&[log.clone()], &history(), Some(7));
        assert!(findings.anomalies.is_empty(), "{:?}", findings.anomalies);
        assert_eq!(findings.excused, vec![(0, 5, 6)]);
        log.connections[1].end = End::Compacted(4);
        let found: Vec<String> =
            check(&[log], &history(), Some(7)).anomalies.into_iter().map(|a| a.1).collect();
        assert!(found.iter().any(|a| a.contains("below the from asked")), "{found:?}");
    }

    #[test]
    fn a_watcher_that_never_reaches_the_last_write_is_reported() {
        let mut log = healthy();
        log.connections.pop();
        let found = anomalies(log);
        assert!(found.iter().any(|a| a.contains("reached only revision 4")), "{found:?}");
    }

    #[test]
    fn each_planted_bug_is_reported() {
        for how in ["drop", "dup", "reorder", "back"] {
            let mut logs = vec![healthy()];
            plant(&mut logs, &history(), how).unwrap();
            let found = check(&logs, &history(), Some(7)).anomalies;
            assert!(!found.is_empty(), "{how}: nothing reported");
        }
    }

    #[test]
    fn whole_chunks_only() {
        assert_eq!(whole_chunk(b"5\r\nhello\r\n0\r\n\r\n"), Some((&b"hello"[..], 10)));
        assert_eq!(whole_chunk(b"5\r\nhel"), None);
        assert_eq!(whole_chunk(b"0\r\n\r\n"), Some((&b""[..], 5)));
        assert_eq!(
            parse_line(br#"{"type":"put","key":"k1","value":"7","revision":3,"create_revision":3,"mod_revision":3,"version":1}"#),
            Item::Event { revision: 3, key: "k1".into(), change: Change::Put { value: "7".into(), mod_revision: 3 } }
        );
        assert_eq!(parse_line(br#"{"type":"progress","revision":9}"#), Item::Progress(9));
    }
}
