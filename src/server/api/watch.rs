//! `GET /v1/watch?key=K` or `?prefix=P`, `&from=R` (inclusive; default: the next
//! revision), `&prev=true`: a long-lived chunked response of newline-delimited JSON,
//! one event a line (README and docs/api.md, "Watch").
//!
//! How the guarantees are kept:
//! - **no gap**: the watcher subscribes to the hub (`watch_hub`) *before* it reads the
//!   history under the kv lock, up to the store's revision H then; every round applied
//!   after H reaches its queue, or it is marked slow and ended;
//! - **unique, ordered, never back in time**: it then forwards only events above
//!   `served_through` (H at first, each round's `through` after), which only grows;
//!   the hub hands it only the rounds with changes for it, so `served_through` also
//!   moves to a delivery's `after`, and to the last round published when its queue is
//!   empty as a progress line is written (`Subscription::caught_up_through`);
//! - **atomic**: a round's lines (all events of its revisions) go out as one chunk;
//! - **each event's line is made once**: by the first watcher that writes it, shared
//!   by the others (`watch_hub::SharedEvent`);
//! - **never from history not held**: a `from` at or below the compaction point is
//!   `410 compacted`; a snapshot installed over a compacted gap this watcher had not
//!   seen ends it (`cancelled`, reason `compacted`);
//! - **slow**: a full queue ends the watcher, after what its queue holds, with
//!   `{"type":"cancelled","reason":"slow","resume_from":N}`, N the first revision not
//!   (entirely) delivered. A client that stops reading altogether for
//!   `WATCH_STALL_TIMEOUT` loses the connection (the response is cut, not ended).
//!
//! A watch keeps its connection, so it holds the connection's permit: watchers count
//! towards the connection limit.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::{query_field, Api, REVISION_HEADER};
use crate::kv::{Event, EventKind, Since};
use crate::server::watch_hub::{Delivery, Filter, SharedEvent, Subscription};

/// The route.
pub const PATH: &str = "/v1/watch";

/// Chunks a watch's body holds while the client is not reading.
const BODY_CHUNKS: usize = 8;

/// A watch whose client has not read for this long is cut off.
pub const WATCH_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The body of a watch: chunks from the watcher's task, until it ends.
pub struct WatchBody {
    chunks: mpsc::Receiver<Bytes>,
}

impl Body for WatchBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.chunks.poll_recv(context).map(|chunk| chunk.map(|chunk| Ok(Frame::data(chunk))))
    }
}

/// A parsed watch request.
#[derive(Clone, Debug, PartialEq, Eq)]
struct WatchRequest {
    filter: Filter,
    /// None: the next revision.
    from: Option<u64>,
    prev: bool,
}

fn parse(query: &str) -> Result<WatchRequest, ApiError> {
    let filter = match (query_field(query, "key")?, query_field(query, "prefix")?) {
        (Some(key), None) => Filter::Key(key),
        (None, Some(prefix)) => Filter::Prefix(prefix),
        _ => return Err(ApiError::BadRequest("a watch needs exactly one of `key` and `prefix`".into())),
    };
    let from = match query_field(query, "from")? {
        None => None,
        Some(raw) => Some(
            std::str::from_utf8(&raw)
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .filter(|&from| from > 0)
                .ok_or_else(|| ApiError::BadRequest("`from` must be a positive revision".into()))?,
        ),
    };
    let prev = match query_field(query, "prev")?.as_deref() {
        None | Some(b"false") | Some(b"0") => false,
        Some(b"true") | Some(b"1") => true,
        Some(_) => return Err(ApiError::BadRequest("`prev` must be true or false".into())),
    };
    Ok(WatchRequest { filter, from, prev })
}

/// The key the request's authorization is checked on, and whether it is a prefix.
pub(crate) fn watched(query: &str) -> Result<(Vec<u8>, bool), ApiError> {
    Ok(match parse(query)?.filter {
        Filter::Key(key) => (key, false),
        Filter::Prefix(prefix) => (prefix, true),
    })
}

/// One event's line.
fn event_line(event: &Event, prev: bool) -> serde_json::Value {
    let key = String::from_utf8_lossy(&event.key);
    let mut line = match (&event.kind, &event.value) {
        (EventKind::Put, Some(value)) => {
            let mut line = serde_json::json!({
                "type": "put",
                "key": key,
                "revision": event.revision,
                "create_revision": value.create_revision,
                "mod_revision": value.mod_revision,
                "version": value.version,
            });
            let (field, text) = super::key_json::value_field(&value.data);
            line[field] = text.into();
            line
        }
        _ => serde_json::json!({ "type": "delete", "key": key, "revision": event.revision }),
    };
    if prev {
        line["prev"] = match &event.previous {
            Some(previous) => super::key_json::key_json(&event.key, previous),
            None => serde_json::Value::Null,
        };
    }
    line
}

fn push_line(out: &mut Vec<u8>, line: &serde_json::Value) {
    // Serialising a `Value` cannot fail.
    out.extend_from_slice(line.to_string().as_bytes());
    out.push(b'\n');
}

/// One event's line, newline included.
fn event_line_bytes(event: &Event, prev: bool) -> Bytes {
    let mut out = Vec::new();
    push_line(&mut out, &event_line(event, prev));
    Bytes::from(out)
}

/// One chunk of `lines` (none: nothing to write); a single line is sent as it is,
/// shared with the other watchers it goes to.
fn chunk_of(mut lines: Vec<Bytes>) -> Option<Bytes> {
    match lines.len() {
        0 => None,
        1 => lines.pop(),
        _ => Some(Bytes::from(lines.concat())),
    }
}

/// Where a watcher stands in the revisions: what it has served and the lowest
/// revision it wants. The rules of "no gap, nothing twice, never back in time" (the
/// module doc), shared by this watch and etcd's (`server::etcd::watch`); each says
/// which events it wants with its own `matches` (the hub's filter may be wider).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// Every matching event with a revision at or below this has been served.
    /// Invariant: never decreases.
    pub served_through: u64,
    /// The lowest revision the client wants.
    pub from: u64,
}

/// History a watcher had not seen is gone: every event at or below `missing_through`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gap {
    pub missing_through: u64,
}

impl Cursor {
    /// A watcher from `from` (None: the revision after `head`), nothing served yet.
    pub fn new(from: Option<u64>, head: u64) -> Cursor {
        Cursor { served_through: 0, from: from.unwrap_or(head + 1) }
    }

    /// Whether `event` is above `served_through`, at or above `from`, and `matches`.
    pub fn wants(&self, event: &Event, matches: impl Fn(&Event) -> bool) -> bool {
        event.revision > self.served_through && event.revision >= self.from && matches(event)
    }

    /// The events of `replay` (the history read at revision `head`) to serve, in
    /// order. Live rounds forward only what is above `head` once `advance(head)` is
    /// called: a round published between the subscription and the read is not served
    /// twice.
    pub fn replayed<'a, M: Fn(&Event) -> bool + 'a>(
        self,
        head: u64,
        replay: &'a imbl::Vector<Event>,
        matches: M,
    ) -> impl Iterator<Item = &'a Event> + 'a {
        replay.iter().filter(move |event| event.revision <= head && self.wants(event, &matches))
    }

    /// Every matching event through `through` has been served.
    pub fn advance(&mut self, through: u64) {
        self.served_through = self.served_through.max(through);
    }

    /// A delivery's events to serve; Err: history this watcher needed is missing, and
    /// it must end.
    pub fn round<'a>(
        &mut self,
        delivery: &'a Delivery,
        matches: impl Fn(&Event) -> bool,
    ) -> Result<Vec<&'a SharedEvent>, Gap> {
        let round = &delivery.round;
        // Every matching event up to `after` was in an earlier delivery (`Delivery`).
        self.advance(round.after);
        // Missing are the revisions up to `missing_through`; this watcher needs those
        // above `served_through` and at or above `from`. A gap wholly below `from` (a
        // lagging node installing a snapshot under a watch that asked for later
        // revisions) takes nothing from it.
        if round.missing_through > self.served_through.max(self.from.saturating_sub(1)) {
            return Err(Gap { missing_through: round.missing_through });
        }
        let events = delivery.events().filter(|shared| self.wants(&shared.event, &matches)).collect();
        self.advance(round.through);
        Ok(events)
    }
    /// The revision a progress notification may report: what has been served through,
    /// once that reaches the revision before `from`. A watch from past this node's
    /// revision (a member still catching up, a new one above all) is told nothing until
    /// then: etcd sends progress only to watchers in sync, and a client that takes a
    /// progress revision as the point to resume from would get events it had again.
    pub fn progress(&self) -> Option<u64> {
        (self.served_through.saturating_add(1) >= self.from).then_some(self.served_through)
    }

    /// Moves `served_through` to the last round published if the watcher has taken
    /// every delivery (rounds without changes for it are not handed to it); whether it
    /// had.
    pub fn catch_up(&mut self, subscription: &Subscription) -> bool {
        match subscription.caught_up_through() {
            Some(through) => {
                self.advance(through);
                true
            }
            None => false,
        }
    }
}

/// A watcher subscribed to the hub, and the history it must replay first.
pub(crate) struct Started {
    pub subscription: Subscription,
    /// The store's revision when the history was read.
    pub head: u64,
    /// The history's events from the watcher's `from` on (up to `head`, and perhaps a
    /// few rounds past it, which `Cursor::replayed` leaves to the live rounds).
    pub replay: imbl::Vector<Event>,
}

/// Subscribes `filter` to the hub, *then* reads the history from `from` (None: the
/// next revision) under the kv lock: every round applied after the read reaches the
/// subscription's queue, or it is marked slow. `Compacted` when `from` is at or below
/// the history's compaction point.
pub(crate) fn subscribe_and_read(api: &Api, filter: Filter, from: Option<u64>) -> Result<Started, ApiError> {
    let subscription = api.node.shared.watch_hub.subscribe(filter, api.watch_queue_rounds);
    let kv = api.node.shared.kv.read().expect("kv lock");
    let head = kv.revision();
    let from = from.unwrap_or(head + 1);
    let replay = if from <= head {
        match kv.history().events_since(from) {
            Since::Events(events) => events,
            Since::Compacted { compact_revision } => return Err(ApiError::Compacted { compact_revision }),
        }
    } else if from <= kv.history().compact_revision() {
        return Err(ApiError::Compacted { compact_revision: kv.history().compact_revision() });
    } else {
        imbl::Vector::new()
    };
    drop(kv);
    Ok(Started { subscription, head, replay })
}

/// The state of one watcher's stream.
struct Watcher {
    request: WatchRequest,
    cursor: Cursor,
}

impl Watcher {
    /// A watcher that read `replay` at revision `head`, and the replay's lines.
    fn start(request: WatchRequest, head: u64, replay: &imbl::Vector<Event>) -> (Watcher, Vec<u8>) {
        let mut cursor = Cursor::new(request.from, head);
        let mut first = Vec::new();
        for event in cursor.replayed(head, replay, |event| request.filter.matches(&event.key)) {
            push_line(&mut first, &event_line(event, request.prev));
        }
        cursor.advance(head);
        (Watcher { request, cursor }, first)
    }

    /// A delivery's lines; Err: the watcher must end with this last line.
    fn round(&mut self, delivery: &Delivery) -> Result<Vec<Bytes>, serde_json::Value> {
        let filter = &self.request.filter;
        let events = self.cursor.round(delivery, |event| filter.matches(&event.key)).map_err(|gap| {
            serde_json::json!({
                "type": "cancelled",
                "reason": "compacted",
                "compact_revision": gap.missing_through,
            })
        })?;
        let prev = self.request.prev;
        Ok(events.into_iter().map(|shared| shared.line(prev, event_line_bytes)).collect())
    }
}

/// Serves a watch. `permit` is the connection's share of the limit, held while the
/// watch runs.
pub(crate) fn watch(
    api: &Api,
    query: &str,
    permit: Arc<tokio::sync::OwnedSemaphorePermit>,
) -> Result<Response<WatchBody>, ApiError> {
    let request = parse(query)?;
    let Started { subscription, head, replay } =
        subscribe_and_read(api, request.filter.clone(), request.from)?;
    let (mut watcher, first) = Watcher::start(request, head, &replay);
    let (chunks, body) = mpsc::channel(BODY_CHUNKS);
    let progress_every = api.watch_progress;
    tokio::spawn(async move {
        let _permit = permit;
        let mut subscription = subscription;
        let send = |chunk: Bytes| {
            let chunks = chunks.clone();
            async move {
                if chunk.is_empty() {
                    return true;
                }
                matches!(tokio::time::timeout(WATCH_STALL_TIMEOUT, chunks.send(chunk)).await, Ok(Ok(())))
            }
        };
        // Idle means nothing written to the client: rounds of other keys do not count.
        let mut last_written = tokio::time::Instant::now();
        if !first.is_empty() && !send(Bytes::from(first)).await {
            return;
        }
        loop {
            let round = tokio::select! {
                round = subscription.rounds.recv() => round,
                _ = tokio::time::sleep_until(last_written + progress_every) => {
                    // Rounds without changes for this watcher are not handed to it.
                    watcher.cursor.catch_up(&subscription);
                    if let Some(revision) = watcher.cursor.progress() {
                        let mut line = Vec::new();
                        push_line(&mut line, &serde_json::json!({ "type": "progress", "revision": revision }));
                        if !send(Bytes::from(line)).await {
                            return;
                        }
                    }
                    last_written = tokio::time::Instant::now();
                    continue;
                }
            };
            let Some(round) = round else {
                // The hub let go: slow (or the node is stopping).
                if subscription.slow.load(Ordering::Acquire) {
                    let mut line = Vec::new();
                    let last = serde_json::json!({
                        "type": "cancelled",
                        "reason": "slow",
                        "resume_from": watcher.cursor.served_through + 1,
                    });
                    push_line(&mut line, &last);
                    send(Bytes::from(line)).await;
                }
                return;
            };
            match watcher.round(&round).map(chunk_of) {
                Ok(None) => {}
                Ok(Some(chunk)) => {
                    if !send(chunk).await {
                        return;
                    }
                    last_written = tokio::time::Instant::now();
                }
                Err(last) => {
                    let mut line = Vec::new();
                    push_line(&mut line, &last);
                    send(Bytes::from(line)).await;
                    return;
                }
            }
        }
    });
    let mut response = Response::new(WatchBody { chunks: body });
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(REVISION_HEADER, HeaderValue::from(head));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Value;
    use crate::server::driver::core::HistoryRound;

    /// A watcher's lines for `round`, as one chunk's bytes.
    fn lines_of(watcher: &mut Watcher, round: HistoryRound) -> Result<Vec<u8>, serde_json::Value> {
        watcher.round(&Delivery::everything(round)).map(|lines| lines.concat())
    }

    fn put(revision: u64, key: &str) -> Event {
        Event {
            revision,
            key: Bytes::copy_from_slice(key.as_bytes()),
            kind: EventKind::Put,
            value: Some(Value::created(Bytes::from_static(b"v"), revision)),
            previous: None,
        }
    }

    fn watcher(filter: Filter, served_through: u64, from: u64) -> Watcher {
        Watcher {
            request: WatchRequest { filter, from: Some(from), prev: false },
            cursor: Cursor { served_through, from },
        }
    }

    #[test]
    fn progress_is_reported_only_once_served_through_reaches_the_revision_before_from() {
        // A watch from 100 on a node at revision 0 (a member that just joined): nothing.
        let mut cursor = Cursor::new(Some(100), 0);
        assert_eq!(cursor.progress(), None);
        cursor.advance(98);
        assert_eq!(cursor.progress(), None);
        cursor.advance(99);
        assert_eq!(cursor.progress(), Some(99));
        cursor.advance(150);
        assert_eq!(cursor.progress(), Some(150));
        // A watch of what comes next, or from the start, is in sync at once.
        assert_eq!(Cursor::new(None, 40).progress(), None, "nothing served yet: served_through 0 < 40");
        let mut next = Cursor::new(None, 40);
        next.advance(40);
        assert_eq!(next.progress(), Some(40));
        assert_eq!(Cursor::new(Some(1), 0).progress(), Some(0));
        assert_eq!(Cursor::new(Some(0), 0).progress(), Some(0));
    }

    fn revisions(lines: &[u8]) -> Vec<u64> {
        lines
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| {
                serde_json::from_slice::<serde_json::Value>(line).unwrap()["revision"].as_u64().unwrap()
            })
            .collect()
    }

    #[test]
    fn a_request_needs_one_of_key_and_prefix_and_a_positive_from() {
        assert_eq!(parse("key=a").unwrap().filter, Filter::Key(b"a".to_vec()));
        assert_eq!(
            parse("prefix=a%2F&from=3&prev=true").unwrap(),
            WatchRequest { filter: Filter::Prefix(b"a/".to_vec()), from: Some(3), prev: true }
        );
        for bad in ["", "key=a&prefix=b", "key=a&from=0", "key=a&from=x", "key=a&prev=maybe"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_round_forwards_only_what_is_above_what_was_served_and_matches() {
        let mut watcher = watcher(Filter::Prefix(b"a".to_vec()), 4, 1);
        let events = [put(3, "a1"), put(4, "a2"), put(5, "b"), put(5, "a3"), put(6, "a4")];
        let round = HistoryRound {
            after: 2,
            through: 6,
            events: events.iter().cloned().collect(),
            missing_through: 0,
        };
        assert_eq!(revisions(&lines_of(&mut watcher, round.clone()).unwrap()), vec![5, 6]);
        assert_eq!(watcher.cursor.served_through, 6);
        // The same round again (it cannot come twice, but if it did): nothing twice.
        assert!(lines_of(&mut watcher, round).unwrap().is_empty());
    }

    #[test]
    fn a_round_that_overlaps_the_replay_writes_only_what_is_above_the_revision_read() {
        let request = WatchRequest { filter: Filter::Prefix(Vec::new()), from: Some(2), prev: false };
        let replay: imbl::Vector<Event> = [put(2, "a"), put(5, "b")].into_iter().collect();
        let (mut watcher, first) = Watcher::start(request, 5, &replay);
        assert_eq!(revisions(&first), vec![2, 5]);
        // Published after the subscription, before the read: revisions 4..=6.
        let events = [put(5, "b"), put(6, "c")];
        let round =
            HistoryRound { after: 3, through: 6, events: events.into_iter().collect(), missing_through: 0 };
        assert_eq!(revisions(&lines_of(&mut watcher, round).unwrap()), vec![6], "revision 5 twice");
    }

    #[test]
    fn a_round_with_history_this_watcher_had_not_seen_missing_ends_it() {
        let mut watcher = watcher(Filter::Key(b"k".to_vec()), 3, 1);
        let round = HistoryRound { after: 3, through: 9, events: imbl::Vector::new(), missing_through: 5 };
        let last = lines_of(&mut watcher, round).unwrap_err();
        assert_eq!(last["reason"], "compacted");
        assert_eq!(last["compact_revision"], 5);
    }

    #[test]
    fn a_gap_below_the_watchers_from_does_not_end_it() {
        // A lagging node (at 3) serves a watch from 20; a snapshot at 30 arrives whose
        // history is compacted to 15: nothing the watcher asked for is missing.
        let mut watcher = watcher(Filter::Key(b"k".to_vec()), 3, 20);
        let events: Vec<Event> = vec![put(17, "k"), put(22, "k")];
        let round =
            HistoryRound { after: 3, through: 30, events: events.into_iter().collect(), missing_through: 15 };
        let lines = String::from_utf8(lines_of(&mut watcher, round).unwrap()).unwrap();
        assert_eq!(lines.lines().count(), 1, "only the event at 22 is at or above from: {lines}");
        assert!(lines.contains("\"revision\":22"), "{lines}");
        assert_eq!(watcher.cursor.served_through, 30);
        // The same gap reaching the watcher's from ends it.
        let mut watcher = self::watcher(Filter::Key(b"k".to_vec()), 3, 15);
        let round = HistoryRound { after: 3, through: 30, events: imbl::Vector::new(), missing_through: 15 };
        assert_eq!(lines_of(&mut watcher, round).unwrap_err()["reason"], "compacted");
    }

    #[test]
    fn event_lines_spell_the_fields_of_the_api() {
        let line = event_line(&put(7, "k"), false);
        assert_eq!(
            line,
            serde_json::json!({"type":"put","key":"k","value":"v","revision":7,"create_revision":7,"mod_revision":7,"version":1})
        );
        let delete = Event {
            revision: 8,
            key: Bytes::from_static(b"k"),
            kind: EventKind::Delete,
            value: None,
            previous: Some(Value::created(Bytes::from_static(&[0xff]), 7)),
        };
        assert_eq!(event_line(&delete, false), serde_json::json!({"type":"delete","key":"k","revision":8}));
        assert_eq!(event_line(&delete, true)["prev"]["value_base64"], "/w==");
    }
}
