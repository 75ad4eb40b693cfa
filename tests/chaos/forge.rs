//! The forged-message nemesis: peer input a buggy peer could send, none of which may crash
//! a node. Two groups of kinds:
//!
//! - **garbage**: `POST /raft/messages` with random bytes (`random-bytes`), a valid batch
//!   cut short or with bytes after it (`truncated`), and a peer stream (`POST /raft/stream`,
//!   `Upgrade: mmapd-peer/1`) fed malformed frames (`stream-garbage`). None decodes.
//! - **impossible**: well-formed batches no correct peer sends to this receiver. A
//!   Heartbeat, AppendEntries, TimeoutNow or InstallSnapshot in the current leader's own
//!   term, sent to that leader (`same-term`: §5.2 allows one leader per term); a message
//!   whose `from` is the receiver itself or not a member (`bad-sender`); an InstallSnapshot
//!   from the receiver's leader whose data does not decode (`bad-snapshot`); responses
//!   claiming indexes far beyond the receiver's log (`huge-index`).
//!
//! Not here on purpose: a plausible AppendEntries from a "leader" with a valid higher term
//! and entries, a vote request from a member claiming a longer log, or a heartbeat with a
//! plausible commit index. A correct node must act on those, so only authentication (the
//! cluster secret) can stop them. The chaos cluster runs with a secret (joins from another
//! host need one) and the forger carries it, as a buggy member would, so none is sent.
//!
//! `MMAPD_CHAOS_FORGE` picks the kinds: `all` (the default), `none`, `garbage`,
//! `impossible`, or a comma-separated list of kind names. Impossible kinds travel as a
//! `POST` or, one time in four, as a frame on a peer stream.
//!
//! In a TLS run the forger speaks TLS like every connection of the harness, with no
//! certificate: the nodes take peers only with one of the cluster's CA (`--tls-ca`), so
//! every forgery must be refused with 403 before its body is read (`nemesis::side_run`
//! counts those, and reports anything else as an anomaly).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use mmapd::raft::{ConfState, Entry, EntryKind, Message, MessageBody, Snapshot, SnapshotMeta};
use mmapd::server::peer::transport::SECRET_HEADER;
use mmapd::transport::codec::encode_batch;

use super::client::{connect, request_within, NoAnswer};
use super::cluster::{PORT, SECRET};
use super::net::node_ip;
use super::rng::Rng;

/// How long a forger waits for a node's answer.
const TIMEOUT: Duration = Duration::from_millis(1500);

/// The kinds of forged input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forgery {
    /// Random bytes as a `POST /raft/messages` body.
    RandomBytes,
    /// A valid batch cut short, or with bytes after it.
    Truncated,
    /// A peer stream carrying malformed frames.
    StreamGarbage,
    /// Leader-only messages to the leader, in its own term.
    SameTerm,
    /// A `from` that is the receiver itself, or no member.
    BadSender,
    /// An InstallSnapshot from the receiver's leader whose data does not decode.
    BadSnapshot,
    /// Responses claiming indexes far beyond the receiver's log.
    HugeIndex,
}

impl Forgery {
    /// Every kind, garbage first.
    pub const ALL: [Forgery; 7] = [
        Forgery::RandomBytes,
        Forgery::Truncated,
        Forgery::StreamGarbage,
        Forgery::SameTerm,
        Forgery::BadSender,
        Forgery::BadSnapshot,
        Forgery::HugeIndex,
    ];

    /// Its name in `MMAPD_CHAOS_FORGE`.
    pub fn name(self) -> &'static str {
        match self {
            Forgery::RandomBytes => "random-bytes",
            Forgery::Truncated => "truncated",
            Forgery::StreamGarbage => "stream-garbage",
            Forgery::SameTerm => "same-term",
            Forgery::BadSender => "bad-sender",
            Forgery::BadSnapshot => "bad-snapshot",
            Forgery::HugeIndex => "huge-index",
        }
    }

    /// Input that does not decode (as opposed to well-formed but impossible messages).
    pub fn is_garbage(self) -> bool {
        matches!(self, Forgery::RandomBytes | Forgery::Truncated | Forgery::StreamGarbage)
    }
}

/// The kinds `MMAPD_CHAOS_FORGE` enables (all when unset).
pub fn enabled() -> Result<Vec<Forgery>, String> {
    let Ok(setting) = std::env::var("MMAPD_CHAOS_FORGE") else { return Ok(Forgery::ALL.to_vec()) };
    let mut kinds = Vec::new();
    for word in setting.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let chosen: Vec<Forgery> = match word {
            "all" => Forgery::ALL.to_vec(),
            "none" => Vec::new(),
            "garbage" => Forgery::ALL.into_iter().filter(|k| k.is_garbage()).collect(),
            "impossible" => Forgery::ALL.into_iter().filter(|k| !k.is_garbage()).collect(),
            name => match Forgery::ALL.into_iter().find(|k| k.name() == name) {
                Some(kind) => vec![kind],
                None => {
                    let names: Vec<&str> = Forgery::ALL.iter().map(|k| k.name()).collect();
                    return Err(format!(
                        "MMAPD_CHAOS_FORGE: unknown kind {name:?} (all, none, garbage, impossible, or of {})",
                        names.join(", ")
                    ));
                }
            },
        };
        for kind in chosen {
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
    }
    Ok(kinds)
}

/// `MMAPD_CHAOS_FORGE`'s value for people (and replay lines).
pub fn describe(kinds: &[Forgery]) -> String {
    if kinds.is_empty() {
        "none".into()
    } else if kinds.len() == Forgery::ALL.len() {
        "all".into()
    } else {
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")
    }
}

/// Node `index`'s Raft id as the daemon derives it from its address at bootstrap (a
/// replacement has another: see `View::id`).
pub fn member_id(index: usize) -> u64 {
    mmapd::server::cli::node_id(&SocketAddr::from((node_ip(index), PORT)).to_string())
}

/// What a node's `/status` says, as far as forging and the snapshot checks need it.
#[derive(Clone, Debug)]
pub struct View {
    /// Its member id.
    pub id: u64,
    /// Its current term.
    pub term: u64,
    /// It says it is the leader.
    pub leader: bool,
    /// The leader it knows (index from 0).
    pub known_leader: Option<usize>,
    /// The first index its log holds (one past its latest snapshot).
    pub first_index: u64,
    /// Its last log index.
    pub last_index: u64,
    /// Its commit index.
    pub commit: u64,
}

/// Node `node`'s `/status`, if it answers within `timeout`.
pub fn view(node: usize, nodes: usize, timeout: Duration) -> Option<View> {
    let answer = request_within(node, "GET", "/status", &[], b"", timeout).ok()?;
    if answer.status != 200 {
        return None;
    }
    let status: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
    let leader_address = status["leader"].as_str().unwrap_or("");
    Some(View {
        id: status["node_id"].as_str().and_then(|id| u64::from_str_radix(id, 16).ok())?,
        term: status["term"].as_u64()?,
        leader: status["state"] == "leader",
        known_leader: (0..nodes).find(|&i| format!("{}:{PORT}", node_ip(i)) == leader_address),
        first_index: status["first_index"].as_u64()?,
        last_index: status["last_index"].as_u64()?,
        commit: status["commit_index"].as_u64()?,
    })
}

/// How a forgery was answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Decoded and handed to the node (`204`).
    Delivered,
    /// A peer stream upgraded (`101`) and the frames written (the receiver answers nothing).
    Streamed,
    /// Refused with this status (`400` for what does not decode).
    Refused(u16),
    /// No answer, or no connection.
    Unanswered(String),
    /// Not sent: the kind needs a leader (or a follower) that no node reported.
    Skipped,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Delivered => write!(f, "delivered (204)"),
            Answer::Streamed => write!(f, "stream upgraded (101), frames written"),
            Answer::Refused(status) => write!(f, "refused ({status})"),
            Answer::Unanswered(why) => write!(f, "unanswered ({why})"),
            Answer::Skipped => write!(f, "skipped"),
        }
    }
}

/// One forgery: what was sent to whom, and the answer.
pub struct Sent {
    /// For the timeline.
    pub description: String,
    /// The answer.
    pub answer: Answer,
}

/// Sends one forgery of `kind`. `target` is a random node index (used by the kinds that
/// take any node); `views` holds each node's status, as recently read.
pub fn send(kind: Forgery, rng: &mut Rng, target: usize, views: &[Option<View>]) -> Sent {
    let nodes = views.len();
    // The ids the nodes report (a replaced node has a new one), else the derived ones.
    let ids: Vec<u64> =
        views.iter().enumerate().map(|(i, v)| v.as_ref().map_or_else(|| member_id(i), |v| v.id)).collect();
    let leader = views.iter().position(|v| v.as_ref().is_some_and(|v| v.leader));
    let other_than = |me: usize, rng: &mut Rng| (me + 1 + rng.index(nodes - 1)) % nodes;
    let skipped = |why: &str| Sent {
        description: format!("forge {}: skipped ({why})", kind.name()),
        answer: Answer::Skipped,
    };
    match kind {
        Forgery::RandomBytes => {
            let body = random_batch_bytes(rng);
            let answer = post(target, &body);
            let description =
                format!("forge random-bytes ({} bytes) to n{}: {answer}", body.len(), target + 1);
            Sent { description, answer }
        }
        Forgery::Truncated => {
            let Some(view) = &views[target] else { return skipped("no status from the target") };
            let mut messages = Vec::new();
            for _ in 0..rng.between(1, 4) {
                let from = other_than(target, rng);
                messages.push(any_message(rng, &ids, target, from, view));
            }
            let mut body = Vec::new();
            encode_batch(&messages, &mut body);
            let full = body.len();
            let how = if rng.below(4) == 0 {
                let extra = rng.between(1, 16) as usize;
                body.extend((0..extra).map(|_| rng.next_u64() as u8));
                format!("{full} bytes + {extra} trailing")
            } else {
                body.truncate(rng.index(full));
                format!("cut to {} of {full} bytes", body.len())
            };
            let answer = post(target, &body);
            Sent {
                description: format!("forge truncated batch ({how}) to n{}: {answer}", target + 1),
                answer,
            }
        }
        Forgery::StreamGarbage => {
            let (what, bytes) = garbage_frames(rng, target, views[target].as_ref(), &ids);
            let answer = stream(target, &bytes);
            Sent {
                description: format!("forge stream-garbage ({what}) to n{}: {answer}", target + 1),
                answer,
            }
        }
        Forgery::SameTerm => {
            let Some(to) = leader else { return skipped("no leader") };
            let view = views[to].as_ref().expect("a leader has a view");
            let from = other_than(to, rng);
            let body = match rng.below(4) {
                0 => MessageBody::Heartbeat { commit: rng.below(view.commit + 1), context: rng.next_u64() },
                1 => MessageBody::AppendEntries {
                    prev_log_index: view.last_index,
                    prev_log_term: view.term,
                    entries: if rng.below(2) == 0 {
                        Vec::new()
                    } else {
                        vec![Entry {
                            term: view.term,
                            index: view.last_index + 1,
                            kind: EntryKind::Noop,
                            data: Bytes::new(),
                        }]
                    },
                    leader_commit: view.commit,
                },
                2 => MessageBody::TimeoutNow,
                _ => MessageBody::InstallSnapshot { snapshot: snapshot_for(rng, view, &ids) },
            };
            impossible(
                kind,
                rng,
                Message { from: ids[from], to: ids[to], term: view.term, body },
                to,
                &format!("from n{}", from + 1),
            )
        }
        Forgery::BadSender => {
            let Some(view) = &views[target] else { return skipped("no status from the target") };
            let (from, who) = if rng.below(2) == 0 {
                (ids[target], "from itself".to_owned())
            } else {
                let mut id = rng.next_u64().max(1);
                while ids.contains(&id) {
                    id = rng.next_u64().max(1);
                }
                (id, format!("from unknown id {id}"))
            };
            let mut message = any_message(rng, &ids, target, target, view);
            message.from = from;
            impossible(kind, rng, message, target, &who)
        }
        Forgery::BadSnapshot => {
            let follower = (0..nodes).map(|i| (target + i) % nodes).find(|&i| {
                views[i].as_ref().is_some_and(|v| !v.leader && v.known_leader.is_some_and(|l| l != i))
            });
            let Some(to) = follower else { return skipped("no follower that knows its leader") };
            let view = views[to].as_ref().expect("a follower with a view");
            let from = view.known_leader.expect("it knows its leader");
            let body = MessageBody::InstallSnapshot { snapshot: snapshot_for(rng, view, &ids) };
            impossible(
                kind,
                rng,
                Message { from: ids[from], to: ids[to], term: view.term, body },
                to,
                &format!("from its leader n{}", from + 1),
            )
        }
        Forgery::HugeIndex => {
            let Some(to) = leader else { return skipped("no leader") };
            let leader_view = views[to].as_ref().expect("a leader has a view");
            let huge = huge_index(rng, leader_view.last_index);
            let follower = other_than(to, rng);
            let (to, from, term, body) = match rng.below(4) {
                0 => (
                    to,
                    follower,
                    leader_view.term,
                    MessageBody::AppendEntriesResponse {
                        success: true,
                        index: huge,
                        conflict_term: 0,
                        conflict_index: 0,
                    },
                ),
                1 => (
                    to,
                    follower,
                    leader_view.term,
                    MessageBody::AppendEntriesResponse {
                        success: false,
                        index: huge,
                        conflict_term: huge,
                        conflict_index: huge,
                    },
                ),
                2 => (to, follower, leader_view.term, MessageBody::HeartbeatResponse { context: huge }),
                // To a follower, from its leader: a read index beyond anything committed.
                _ => match &views[follower] {
                    Some(view) if view.known_leader == Some(to) => (
                        follower,
                        to,
                        view.term,
                        MessageBody::ReadIndexResponse { context: rng.next_u64(), index: huge },
                    ),
                    _ => return skipped("no follower of the leader answered"),
                },
            };
            impossible(
                kind,
                rng,
                Message { from: ids[from], to: ids[to], term, body },
                to,
                &format!("from n{}", from + 1),
            )
        }
    }
}

/// Sends one well-formed but impossible message, as a POST or (one in four) a stream frame.
fn impossible(kind: Forgery, rng: &mut Rng, message: Message, to: usize, from: &str) -> Sent {
    let name = message.body.name();
    let term = message.term;
    let mut batch = Vec::new();
    encode_batch(&[message], &mut batch);
    let (route, answer) =
        if rng.below(4) == 0 { ("stream", stream(to, &frame(&batch))) } else { ("POST", post(to, &batch)) };
    Sent {
        description: format!(
            "forge {} {name} to n{} (term {term}, {from}) by {route}: {answer}",
            kind.name(),
            to + 1
        ),
        answer,
    }
}

/// Any kind of message from member `from` to member `to` (indexes into `ids`), with fields
/// that look normal for the receiver `view` (the batch is cut, or the sender is wrong, so
/// it never counts).
fn any_message(rng: &mut Rng, ids: &[u64], to: usize, from: usize, view: &View) -> Message {
    let body = match rng.below(10) {
        0 => MessageBody::Heartbeat { commit: rng.below(view.commit + 1), context: rng.next_u64() },
        1 => MessageBody::AppendEntries {
            prev_log_index: view.last_index,
            prev_log_term: view.term,
            entries: Vec::new(),
            leader_commit: view.commit,
        },
        2 => MessageBody::AppendEntriesResponse {
            success: true,
            index: view.last_index,
            conflict_term: 0,
            conflict_index: 0,
        },
        3 => MessageBody::HeartbeatResponse { context: rng.below(1000) },
        4 => MessageBody::RequestVote {
            pre_vote: rng.below(2) == 0,
            last_log_index: view.last_index + 1_000_000,
            last_log_term: view.term,
            transfer: rng.below(2) == 0,
        },
        5 => MessageBody::RequestVoteResponse { pre_vote: rng.below(2) == 0, granted: true },
        6 => MessageBody::TimeoutNow,
        7 => MessageBody::ReadIndex { context: rng.next_u64() },
        8 => MessageBody::ReadIndexResponse { context: rng.next_u64(), index: view.commit },
        _ => MessageBody::InstallSnapshot { snapshot: snapshot_for(rng, view, &[]) },
    };
    Message { from: ids[from], to: ids[to], term: view.term, body }
}

/// A snapshot past the receiver's log whose data does not decode as the key-value
/// state machine's (nor could under any checksum): a wrong version byte, a header whose
/// key count the data cannot hold, or a record cut short.
fn snapshot_for(rng: &mut Rng, view: &View, ids: &[u64]) -> Snapshot {
    let index = view.last_index.max(view.commit) + rng.between(1, 1000);
    let mut data = Vec::new();
    match rng.below(3) {
        0 => {
            data.push([0u8, 2, 0x7f, 0xff][rng.index(4)]);
            data.extend((0..rng.between(0, 256)).map(|_| rng.next_u64() as u8));
        }
        1 => {
            data.push(1);
            data.extend(index.to_le_bytes());
            data.extend((rng.next_u64() | 1 << 40).to_le_bytes());
        }
        _ => {
            data.push(1);
            data.extend(index.to_le_bytes());
            data.extend(1u64.to_le_bytes());
            data.extend(200u32.to_le_bytes());
            data.extend(b"k0");
        }
    }
    let mut voters: Vec<u64> = ids.to_vec();
    voters.sort_unstable();
    Snapshot {
        meta: SnapshotMeta { index, term: view.term, conf: ConfState::with_voters(voters) },
        data: Bytes::from(data),
    }
}

/// An index no log of this run comes near.
fn huge_index(rng: &mut Rng, last_index: u64) -> u64 {
    [u64::MAX, u64::MAX - 1, 1 << 63, last_index + 1_000_000][rng.index(4)]
}

/// Random bytes; half of them start like a batch (version 1, a random message count).
fn random_batch_bytes(rng: &mut Rng) -> Vec<u8> {
    let length = rng.between(0, 2048) as usize;
    let mut body: Vec<u8> = (0..length).map(|_| rng.next_u64() as u8).collect();
    if rng.below(2) == 0 && body.len() >= 5 {
        body[0] = 1;
        // A count of at least one, so the bytes must hold a message (an empty batch is valid).
        body[1] = body[1].max(1);
    }
    body
}

/// Malformed frames for a peer stream, with what they are.
fn garbage_frames(rng: &mut Rng, target: usize, view: Option<&View>, ids: &[u64]) -> (String, Vec<u8>) {
    let mut bytes = Vec::new();
    if rng.below(2) == 0 {
        bytes.extend(0u32.to_le_bytes()); // a keepalive first, as a sender would
    }
    let what = match rng.below(4) {
        0 => {
            let length = rng.between(1, 4096);
            bytes.extend((0..length).map(|_| rng.next_u64() as u8));
            format!("{length} random bytes")
        }
        1 => {
            // A frame whose batch has a wrong version byte.
            let length = rng.between(1, 4096) as usize;
            let mut batch: Vec<u8> = (0..length).map(|_| rng.next_u64() as u8).collect();
            batch[0] = [0u8, 2, 0xff][rng.index(3)];
            bytes.extend(frame(&batch));
            format!("a {length}-byte frame of random bytes")
        }
        2 => {
            bytes.extend(u32::MAX.to_le_bytes());
            bytes.extend([0u8; 64]);
            "a frame length of 4 GiB".to_owned()
        }
        _ => {
            // A frame whose length promises more than is sent before the connection closes.
            let view = view.cloned().unwrap_or(View {
                id: ids[target],
                term: 1,
                leader: false,
                known_leader: None,
                first_index: 1,
                last_index: 0,
                commit: 0,
            });
            let from = (target + 1) % ids.len().max(1);
            let mut batch = Vec::new();
            encode_batch(&[any_message(rng, ids, target, from, &view)], &mut batch);
            let full = frame(&batch);
            let cut = rng.between(1, full.len() as u64 - 1) as usize;
            bytes.extend(&full[..cut]);
            format!("a frame cut to {cut} of {} bytes", full.len())
        }
    };
    (what, bytes)
}

/// A stream frame: u32 length, then the batch.
fn frame(batch: &[u8]) -> Vec<u8> {
    let mut frame = (batch.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(batch);
    frame
}

/// `POST /raft/messages` with `body`.
fn post(node: usize, body: &[u8]) -> Answer {
    let secret = [(SECRET_HEADER, SECRET.to_owned())];
    match request_within(node, "POST", "/raft/messages", &secret, body, TIMEOUT) {
        Ok(answer) if answer.status == 204 => Answer::Delivered,
        Ok(answer) => Answer::Refused(answer.status),
        Err(NoAnswer::NotSent(why) | NoAnswer::Lost(why)) => Answer::Unanswered(why),
    }
}

/// Opens a peer stream to `node` and writes `bytes` on it, then closes it.
fn stream(node: usize, bytes: &[u8]) -> Answer {
    let address = SocketAddr::from((node_ip(node), PORT));
    let attempt = || -> Result<Answer, String> {
        let mut tcp = connect(node, TIMEOUT).map_err(|(NoAnswer::NotSent(e) | NoAnswer::Lost(e))| e)?;
        tcp.tcp().set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
        tcp.tcp().set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
        let head = format!(
            "POST /raft/stream HTTP/1.1\r\nHost: {address}\r\nConnection: upgrade\r\nUpgrade: mmapd-peer/1\r\n\
             {SECRET_HEADER}: {SECRET}\r\nContent-Length: 0\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while !answer.ends_with(b"\r\n\r\n") {
            match tcp.read(&mut byte) {
                Ok(0) => return Err(format!("closed after {} bytes of answer", answer.len())),
                Ok(_) => answer.push(byte[0]),
                Err(e) => return Err(format!("read: {e}")),
            }
            if answer.len() > 16 << 10 {
                return Err("answer head too long".into());
            }
        }
        let status: u16 = String::from_utf8_lossy(&answer)
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("no status line")?;
        if status != 101 {
            return Ok(Answer::Refused(status));
        }
        // The receiver may close as soon as it sees a bad frame; that is its answer.
        let _ = tcp.write_all(bytes);
        let _ = tcp.flush();
        Ok(Answer::Streamed)
    };
    attempt().unwrap_or_else(Answer::Unanswered)
}
