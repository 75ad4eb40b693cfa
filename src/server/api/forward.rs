//! Forwarded writes, in batches: a follower sends the writes its clients give it to the
//! leader many to a request, as the peer stream batches Raft messages, instead of one
//! `POST /raft/propose` each.
//!
//! A write that finds another node leading goes into this node's forward queue
//! (bounded). One task takes what is waiting, up to `MAX_BATCH_COMMANDS` writes or
//! `MAX_BATCH_BYTES` for one leader, and sends it as `POST /raft/propose-batch`; up to
//! `MAX_BATCHES_IN_FLIGHT` batches are under way at once, and while they are the next
//! batch fills (pipelining by batching). The leader proposes every write of a batch,
//! waits for each to apply, and answers one result per write, in order, each what
//! `POST /raft/propose` would have answered for it alone.
//!
//! Body: `u32` count, then per write a `u32` length and the encoded `Command`
//! (big-endian). Answer: `{"results": [{"status": 200, "body": <applied>} |
//! {"status": <4xx/5xx>, "body": <error>}, ...]}`.
//!
//! What a lost answer means is the same as for one write: only a failure to connect
//! proves the leader never saw the batch (every write in it may be retried); once it
//! was sent, a batch without an answer leaves every write in it unknown. A leader
//! that answers 404 (a build before this route) gets the writes one by one on
//! `POST /raft/propose`, and is asked again for batches a minute later.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, StatusCode};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::error::ApiError;
use super::{applied_from_json, applied_to_json, leader_refusal};
use crate::raft::NodeId;
use crate::server::driver::{Applied, NodeHandle};
use crate::server::peer::transport::{Outbox, PeerClient};

/// The leader's route for a batch of forwarded writes.
pub const PATH: &str = "/raft/propose-batch";
/// The most writes in one batch.
pub const MAX_BATCH_COMMANDS: usize = 256;
/// The most command bytes in one batch; a larger single write goes alone.
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// The most batches under way to the leader at once: each holds a connection.
pub const MAX_BATCHES_IN_FLIGHT: usize = 8;
/// The most writes waiting for a batch; a write that finds the queue full waits for
/// room, within its request timeout.
const QUEUE_WRITES: usize = 4096;
/// How long a leader that answered 404 to a batch gets single writes before it is
/// asked for batches again (it may have been upgraded).
const UNBATCHED_FOR: Duration = Duration::from_secs(60);

/// One forwarded write, waiting for its result.
struct Forward {
    leader: NodeId,
    command: Bytes,
    reply: oneshot::Sender<Result<Applied, ApiError>>,
}

/// The follower's side: the queue of writes to forward, and the task that batches it.
pub struct Forwarder {
    queue: mpsc::Sender<Forward>,
}

/// What the batching task needs to reach a leader.
pub struct Link {
    /// The peer HTTP client.
    pub client: PeerClient,
    /// For the peer credentials sent with every request.
    pub outbox: Outbox,
    /// For leaders' addresses and the metrics.
    pub node: NodeHandle,
    /// How long the leader may take to answer (its own request timeout, and a margin).
    pub request_timeout: Duration,
    /// Turns for single writes (to a leader without batches), each holding a
    /// connection: `super::MAX_FORWARDS_IN_FLIGHT`.
    pub singles: Semaphore,
    /// Leaders that answered 404 to a batch, and when.
    unbatched: Mutex<HashMap<NodeId, Instant>>,
}

impl Link {
    /// A link on `client`.
    pub fn new(client: PeerClient, outbox: Outbox, node: NodeHandle, request_timeout: Duration) -> Link {
        Link {
            client,
            outbox,
            node,
            request_timeout,
            singles: Semaphore::new(super::MAX_FORWARDS_IN_FLIGHT),
            unbatched: Mutex::new(HashMap::new()),
        }
    }
}

impl Forwarder {
    /// Starts the batching task; it ends when the forwarder is dropped.
    pub fn start(link: Link) -> Forwarder {
        let (queue, waiting) = mpsc::channel(QUEUE_WRITES);
        tokio::spawn(run(waiting, Arc::new(link)));
        Forwarder { queue }
    }

    /// Forwards the encoded `command` to `leader` in the next batch and waits for its
    /// result. Dropping the future before the batch is sent withdraws the write.
    pub async fn forward(&self, leader: NodeId, command: Bytes) -> Result<Applied, ApiError> {
        let (reply, result) = oneshot::channel();
        self.queue
            .send(Forward { leader, command, reply })
            .await
            .map_err(|_| ApiError::Unavailable("the node is shutting down".into()))?;
        result.await.unwrap_or_else(|_| Err(ApiError::OutcomeUnknown("the forward task ended".into())))
    }
}

/// Takes what is waiting into batches, one leader and `MAX_BATCH_*` at a time, and
/// sends each on its own task while a slot is free.
async fn run(mut waiting: mpsc::Receiver<Forward>, link: Arc<Link>) {
    let slots = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    let mut carried: Option<Forward> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let first = match carried.take() {
            Some(forward) => forward,
            None => match waiting.recv().await {
                Some(forward) => forward,
                None => return,
            },
        };
        let leader = first.leader;
        let mut bytes = first.command.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS {
            match waiting.try_recv() {
                Ok(next) if next.leader == leader && bytes + next.command.len() <= MAX_BATCH_BYTES => {
                    bytes += next.command.len();
                    batch.push(next);
                }
                Ok(next) => {
                    carried = Some(next);
                    break;
                }
                Err(_) => break,
            }
        }
        // A caller that gave up (its request timed out) is not proposed for.
        batch.retain(|forward| !forward.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let link = link.clone();
        tokio::spawn(async move {
            link.send(leader, batch).await;
            drop(slot);
        });
    }
}

impl Link {
    /// Sends one batch to `leader` and answers every write in it.
    async fn send(&self, leader: NodeId, batch: Vec<Forward>) {
        let Some(address) = self.node.shared.address_of(leader) else {
            let error = ApiError::Unavailable(format!("leader {leader:016x} has no known address"));
            return answer_all(batch, &error);
        };
        if self.is_unbatched(leader) {
            return self.send_singly(&address, batch).await;
        }
        let metrics = &self.node.shared.metrics;
        metrics.forward_batches.inc();
        metrics.forwarded_writes.add(batch.len() as u64);
        let body = encode_batch(batch.iter().map(|forward| &forward.command));
        match self.post_batch(&address, body, batch.len()).await {
            Ok(results) => {
                for (forward, result) in batch.into_iter().zip(results) {
                    let _ = forward.reply.send(result);
                }
            }
            Err(BatchError::NoRoute) => {
                tracing::info!(leader = %address, "the leader does not take batches of writes; forwarding them one by one");
                self.unbatched.lock().expect("unbatched lock").insert(leader, Instant::now());
                self.send_singly(&address, batch).await;
            }
            Err(BatchError::All(error)) => answer_all(batch, &error),
        }
    }

    fn is_unbatched(&self, leader: NodeId) -> bool {
        let mut unbatched = self.unbatched.lock().expect("unbatched lock");
        match unbatched.get(&leader) {
            Some(since) if since.elapsed() < UNBATCHED_FOR => true,
            Some(_) => {
                unbatched.remove(&leader);
                false
            }
            None => false,
        }
    }

    /// POSTs a batch of `count` writes and reads one result per write.
    async fn post_batch(
        &self,
        address: &str,
        body: Bytes,
        count: usize,
    ) -> Result<Vec<Result<Applied, ApiError>>, BatchError> {
        let (status, body) = self.post(address, PATH, body).await.map_err(BatchError::All)?;
        if status == StatusCode::NOT_FOUND {
            return Err(BatchError::NoRoute);
        }
        let value = answer_json(address, status, &body).map_err(BatchError::All)?;
        if status != StatusCode::OK {
            // The whole batch was refused before anything was proposed (a bad secret, a
            // bad body).
            return Err(BatchError::All(leader_refusal(status, &value, address, self.request_timeout)));
        }
        results_from_json(&value, count, address, self.request_timeout).map_err(|why| {
            // The leader may have applied some: nothing can be said of any.
            BatchError::All(ApiError::OutcomeUnknown(format!(
                "leader {address} answered a batch badly: {why}"
            )))
        })
    }

    /// Forwards each write alone on `POST /raft/propose`, all at once.
    async fn send_singly(&self, address: &str, batch: Vec<Forward>) {
        let sends = batch.into_iter().map(|forward| async move {
            let result = self.post_one(address, forward.command).await;
            let _ = forward.reply.send(result);
        });
        futures_util::future::join_all(sends).await;
    }

    /// One write on `POST /raft/propose`: a leader without batches.
    async fn post_one(&self, address: &str, command: Bytes) -> Result<Applied, ApiError> {
        let _turn = self.singles.acquire().await.expect("the forward semaphore is never closed");
        let (status, body) = self.post(address, "/raft/propose", command).await?;
        let value = answer_json(address, status, &body)?;
        if status == StatusCode::OK {
            return applied_from_json(&value)
                .ok_or_else(|| ApiError::Internal(format!("leader {address} answered {value}")));
        }
        Err(leader_refusal(status, &value, address, self.request_timeout))
    }

    /// POSTs `body` to the leader's `path` and reads the whole answer. The leader
    /// answers within its request timeout; past that and a margin, or once the request
    /// was sent and its answer lost, the outcome is unknown.
    async fn post(&self, address: &str, path: &str, body: Bytes) -> Result<(StatusCode, Bytes), ApiError> {
        let request = self.request(address, path, body)?;
        let wait = self.request_timeout + Duration::from_secs(1);
        let response = tokio::time::timeout(wait, self.client.request(request))
            .await
            .map_err(|_| ApiError::OutcomeUnknown(format!("leader {address} did not answer in {wait:?}")))?
            .map_err(|e| lost_or_unsent(address, &e))?;
        let status = response.status();
        let body = tokio::time::timeout(wait, response.into_body().collect())
            .await
            .map_err(|_| ApiError::OutcomeUnknown(format!("leader {address}: answer cut")))?
            .map_err(|e| ApiError::OutcomeUnknown(format!("leader {address}: {e}")))?
            .to_bytes();
        Ok((status, body))
    }

    /// A POST of `body` to the leader's `path`, with this node's peer credentials (the
    /// secret, the cluster id and this node's id and address).
    fn request(&self, address: &str, path: &str, body: Bytes) -> Result<Request<Full<Bytes>>, ApiError> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{address}{path}"))
            .header(CONTENT_TYPE, "application/octet-stream");
        for (name, value) in self.outbox.credentials().headers().map_err(ApiError::Internal)? {
            request = request.header(name, value);
        }
        request.body(Full::new(body)).map_err(|e| ApiError::Internal(e.to_string()))
    }
}

/// Why a whole batch failed.
enum BatchError {
    /// The leader has no batch route: send the writes one by one.
    NoRoute,
    /// The same answer for every write in the batch.
    All(ApiError),
}

/// Only a failure to connect proves the leader never saw the request; once it was
/// sent, a lost answer leaves the outcome unknown and it must not be retried.
fn lost_or_unsent(address: &str, error: &hyper_util::client::legacy::Error) -> ApiError {
    if error.is_connect() {
        ApiError::Unavailable(format!("leader {address} unreachable: {error}"))
    } else {
        ApiError::OutcomeUnknown(format!("leader {address} did not answer: {error}"))
    }
}

/// The leader's answer as JSON; one that is not is the leader's fault (500 here).
fn answer_json(address: &str, status: StatusCode, body: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::Internal(format!("leader {address} answered {status} with bad JSON: {e}")))
}

fn answer_all(batch: Vec<Forward>, error: &ApiError) {
    for forward in batch {
        let _ = forward.reply.send(Err(error.clone()));
    }
}

/// The body of a batch: a count, then each command with its length.
pub fn encode_batch<'a>(commands: impl ExactSizeIterator<Item = &'a Bytes>) -> Bytes {
    let mut body = BytesMut::with_capacity(4 + commands.len() * 128);
    body.put_u32(commands.len() as u32);
    for command in commands {
        body.put_u32(command.len() as u32);
        body.put_slice(command);
    }
    body.freeze()
}

/// The commands of a batch body (slices of it), or why it is malformed: no more than
/// `MAX_BATCH_COMMANDS`, at least one, each length within the body, nothing after the
/// last.
pub fn decode_batch(body: &Bytes) -> Result<Vec<Bytes>, String> {
    let take_u32 = |at: usize| -> Result<u32, String> {
        body.get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| format!("a batch of {} bytes ends inside a length at offset {at}", body.len()))
    };
    let count = take_u32(0)? as usize;
    if count == 0 || count > MAX_BATCH_COMMANDS {
        return Err(format!("a batch holds 1 to {MAX_BATCH_COMMANDS} writes, not {count}"));
    }
    let mut commands = Vec::with_capacity(count);
    let mut at = 4;
    for n in 0..count {
        let length = take_u32(at)? as usize;
        at += 4;
        let end = at.checked_add(length).filter(|&end| end <= body.len()).ok_or_else(|| {
            format!("write {n} of the batch ({length} bytes at offset {at}) runs past its end")
        })?;
        commands.push(body.slice(at..end));
        at = end;
    }
    if at != body.len() {
        return Err(format!("{} bytes after the batch's last write, at offset {at}", body.len() - at));
    }
    Ok(commands)
}

/// One write's result, as the leader answers it in a batch.
pub fn result_to_json(result: &Result<Applied, ApiError>) -> serde_json::Value {
    match result {
        Ok(applied) => serde_json::json!({ "status": 200, "body": applied_to_json(applied) }),
        Err(error) => serde_json::json!({ "status": error.status().as_u16(), "body": error.body_json() }),
    }
}

/// The results of a batch of `count` writes, in order, as the follower reads them.
fn results_from_json(
    value: &serde_json::Value,
    count: usize,
    address: &str,
    request_timeout: Duration,
) -> Result<Vec<Result<Applied, ApiError>>, String> {
    let results = value["results"].as_array().ok_or("no `results` array")?;
    if results.len() != count {
        return Err(format!("{} results for {count} writes", results.len()));
    }
    results
        .iter()
        .map(|result| {
            let status = result["status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
                .ok_or_else(|| format!("a result without a status: {result}"))?;
            let body = &result["body"];
            if status == StatusCode::OK {
                applied_from_json(body).map(Ok).ok_or_else(|| format!("a result that does not parse: {body}"))
            } else {
                Ok(Err(leader_refusal(status, body, address, request_timeout)))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Outcome;

    fn commands(lengths: &[usize]) -> Vec<Bytes> {
        lengths.iter().enumerate().map(|(n, &len)| Bytes::from(vec![n as u8; len])).collect()
    }

    #[test]
    fn a_batch_decodes_to_the_commands_encoded_as_slices_of_its_body() {
        let sent = commands(&[1, 0, 300, 7]);
        let body = encode_batch(sent.iter());
        assert_eq!(decode_batch(&body).unwrap(), sent);
    }

    #[test]
    fn a_malformed_batch_is_refused_with_the_offset_and_never_panics() {
        let body = encode_batch(commands(&[5, 9]).iter());
        // Every truncation, and every byte flipped in the lengths, is refused or decodes
        // to commands inside the body; none panics.
        for cut in 0..body.len() {
            let error = decode_batch(&body.slice(..cut)).unwrap_err();
            assert!(error.contains("offset") || error.contains("writes"), "cut {cut}: {error}");
        }
        let mut trailing = body.to_vec();
        trailing.push(0);
        assert!(decode_batch(&Bytes::from(trailing)).unwrap_err().contains("after the batch's last write"));
        for at in [0, 1, 2, 3, 4, 5, 6, 7, 13, 14, 15, 16] {
            for value in [0u8, 1, 0x7f, 0xff] {
                let mut bad = body.to_vec();
                bad[at] = value;
                let _ = decode_batch(&Bytes::from(bad));
            }
        }
        let zero = Bytes::from_static(&[0, 0, 0, 0]);
        assert!(decode_batch(&zero).unwrap_err().contains("not 0"));
        let many = Bytes::from((MAX_BATCH_COMMANDS as u32 + 1).to_be_bytes().to_vec());
        assert!(decode_batch(&many).unwrap_err().contains("not 257"));
        let huge = Bytes::from([1u32.to_be_bytes(), u32::MAX.to_be_bytes()].concat());
        assert!(decode_batch(&huge).unwrap_err().contains("runs past its end"));
    }

    #[test]
    fn each_result_reads_back_as_what_a_single_forward_would_have_answered() {
        let timeout = Duration::from_secs(5);
        let sent: Vec<Result<Applied, ApiError>> = vec![
            Ok(Applied { index: 7, outcome: Outcome::Written { revision: 7, created: true } }),
            Ok(Applied { index: 8, outcome: Outcome::PreconditionFailed { current_mod_revision: Some(3) } }),
            Err(ApiError::Unavailable("not the leader any more".into())),
            Err(ApiError::OutcomeUnknown("a snapshot covered it".into())),
            Err(ApiError::Timeout(timeout, "the write to commit")),
            Err(ApiError::QuotaExceeded("1 MB".into())),
            Err(ApiError::BadRequest("key too long".into())),
        ];
        let value = serde_json::json!({ "results": sent.iter().map(result_to_json).collect::<Vec<_>>() });
        let read = results_from_json(&value, sent.len(), "127.0.0.1:1", timeout).unwrap();
        assert_eq!(read[0].as_ref().unwrap(), sent[0].as_ref().unwrap());
        assert_eq!(read[1].as_ref().unwrap(), sent[1].as_ref().unwrap());
        // Retryable stays retryable, unknown stays unknown: the caller's retry depends on it.
        assert!(
            matches!(&read[2], Err(ApiError::Unavailable(m)) if m == "not the leader any more"),
            "{:?}",
            read[2]
        );
        assert!(matches!(&read[3], Err(ApiError::OutcomeUnknown(_))), "{:?}", read[3]);
        assert!(matches!(&read[4], Err(ApiError::Timeout(..))), "{:?}", read[4]);
        assert!(matches!(&read[5], Err(ApiError::QuotaExceeded(m)) if m == "1 MB"), "{:?}", read[5]);
        assert!(matches!(&read[6], Err(ApiError::BadRequest(_))), "{:?}", read[6]);
    }

    #[test]
    fn a_batch_answer_with_the_wrong_count_or_shape_is_refused() {
        let timeout = Duration::from_secs(5);
        let one = serde_json::json!({ "results": [{ "status": 200, "body": { "index": 1, "outcome": "not_found" } }] });
        assert!(results_from_json(&one, 2, "a", timeout).unwrap_err().contains("1 results for 2"));
        assert!(results_from_json(&serde_json::json!({}), 1, "a", timeout).is_err());
        let no_status = serde_json::json!({ "results": [{ "body": {} }] });
        assert!(results_from_json(&no_status, 1, "a", timeout).unwrap_err().contains("without a status"));
        let bad_body = serde_json::json!({ "results": [{ "status": 200, "body": { "index": "x" } }] });
        assert!(results_from_json(&bad_body, 1, "a", timeout).unwrap_err().contains("does not parse"));
    }
}
