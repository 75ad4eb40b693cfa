//! etcd's Watch service: the bidirectional `Watch` stream, on the same watch machinery
//! as the HTTP watch (`api::watch`): each watch subscribes to the hub, then replays
//! the replicated history from its start revision (`api::watch::subscribe_and_read`),
//! and serves live rounds with the HTTP watch's `Cursor` (no gap, nothing twice, never
//! back in time).
//!
//! One task per stream owns every watch of the stream; it reads the client's
//! requests, takes the watches' deliveries and sends the responses, in that one order,
//! through a bounded queue (`OUTBOUND_RESPONSES`). As etcd 3.4:
//! - ids from 0 up when the client asks for `watch_id` 0, skipping ids in use; a
//!   client's id already in use, an empty range (`key >= range_end`), a range the
//!   token may not read: a response with `created` and `canceled`, `watch_id` -1 and a
//!   `cancel_reason`;
//! - `created` first, with the revision the history was read at, then the history's
//!   events from `start_revision` (at most `REPLAY_BATCH_REVISIONS` revisions a
//!   response), then one response per applied round with changes for the watch: the
//!   events of one revision (a transaction) always in one response, split only when
//!   the watch asked for `fragment`;
//! - a start at or below the history's compaction point: `created`, then `canceled`
//!   with `compact_revision` the first revision the history still holds;
//! - `progress_notify`: an empty response with the revision the watch has been served
//!   through, every `--watch-progress-ms` (etcd: 10 minutes) if nothing was sent to it
//!   in between; a `progress_request`: one such response with `watch_id` -1 for the
//!   stream, at the revision every watch of it has been served through (always
//!   answered, as etcd 3.4 does). No `progress_notify` is sent for a watch from past
//!   this node's revision until the node reaches the revision before its start (etcd's
//!   unsynced watchers get none either; `Cursor::progress`);
//! - `cancel_request`: a response with `canceled`; an unknown id, an empty request and
//!   a half-closed stream are ignored.
//!
//! A slow client never grows memory: a watch whose hub queue fills (the client does not
//! read, or reads slower than the writes come) is dropped by the hub and, as etcd's
//! unsynced watchers, catches up from the history where it stopped, or is canceled with
//! `compact_revision` if the history no longer reaches back that far. A stream whose
//! client has not read for `WATCH_STALL_TIMEOUT` is ended.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use hyper::HeaderMap;
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::kv::{key_value, KeyRange};
use super::proto::etcdserverpb::{
    watch_create_request::FilterType, watch_request::RequestUnion, watch_server, WatchCreateRequest,
    WatchRequest, WatchResponse,
};
use super::proto::mvccpb;
use super::{max_message_bytes, to_i64, Front};
use crate::kv::{Event, EventKind, KeyValue};
use crate::server::api::error::ApiError;
use crate::server::api::txn::range_prefix;
use crate::server::api::watch::{subscribe_and_read, Cursor, Started, WATCH_STALL_TIMEOUT};
use crate::server::auth::{Access, Need};
use crate::server::watch_hub::{Delivery, Filter, Subscription};

/// The most watches one stream may hold (etcd has no limit; every one holds a hub
/// queue).
pub const MAX_WATCHES_PER_STREAM: usize = 1000;

/// Responses waiting for the client: etcd's control queue is as long.
const OUTBOUND_RESPONSES: usize = 16;

/// The most revisions one response of a history replay carries (etcd's
/// `watchBatchMaxRevs`).
const REPLAY_BATCH_REVISIONS: usize = 1000;

/// A replay response is closed once its events hold this many bytes (whole revisions
/// always: one may go beyond it).
const REPLAY_BATCH_BYTES: u64 = 1 << 20;

/// The watch id of a response for no single watch (etcd's `InvalidWatchID`).
const NO_WATCH: i64 = -1;

/// etcd's reasons, word for word, for the refusals clients may match on.
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// What a create asks for, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Spec {
    range: KeyRange,
    /// None: from the next revision.
    start: Option<u64>,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    /// 0: the server picks.
    watch_id: i64,
}

impl Spec {
    /// etcd's reading of a create: an empty key is `"\0"` (the smallest key), a
    /// `range_end` of `"\0"` every key from `key` on; Err: the cancel reason.
    fn of(create: &WatchCreateRequest) -> Result<Spec, String> {
        let key: &[u8] = if create.key.is_empty() { &[0] } else { &create.key };
        if !create.range_end.is_empty() && create.range_end != [0] && key >= create.range_end.as_slice() {
            return Err(EMPTY_RANGE.into());
        }
        if create.watch_id < 0 {
            return Err(format!("a watch id must not be negative (got {})", create.watch_id));
        }
        let filtered = |filter: FilterType| create.filters.contains(&(filter as i32));
        Ok(Spec {
            range: KeyRange::of(key, &create.range_end),
            start: u64::try_from(create.start_revision).ok().filter(|&start| start > 0),
            no_put: filtered(FilterType::Noput),
            no_delete: filtered(FilterType::Nodelete),
            prev_kv: create.prev_kv,
            progress_notify: create.progress_notify,
            fragment: create.fragment,
            watch_id: create.watch_id,
        })
    }

    /// Whether the watch serves `event`.
    fn matches(&self, event: &Event) -> bool {
        let filtered = match event.kind {
            EventKind::Put => self.no_put,
            EventKind::Delete => self.no_delete,
        };
        !filtered && self.range.contains(&event.key)
    }

    /// The hub's filter for the range: its key, or the longest prefix all its keys
    /// share (a prefix range's prefix; the watch drops the rest of a wider one).
    fn hub_filter(&self) -> Filter {
        match &self.range {
            KeyRange::Key(key) => Filter::Key(key.to_vec()),
            KeyRange::Range(start, end) => Filter::Prefix(range_prefix(start, end.as_deref()).to_vec()),
        }
    }
}

/// An event as etcd's: a delete's `kv` is the key and the delete's revision.
fn event_of(event: &Event, prev_kv: bool) -> mvccpb::Event {
    let (kind, kv) = match &event.value {
        Some(value) => (
            mvccpb::event::EventType::Put,
            key_value(&KeyValue { key: event.key.clone(), value: value.clone() }, false),
        ),
        None => (
            mvccpb::event::EventType::Delete,
            mvccpb::KeyValue {
                key: event.key.to_vec(),
                mod_revision: to_i64(event.revision),
                ..Default::default()
            },
        ),
    };
    let prev_kv = event
        .previous
        .as_ref()
        .filter(|_| prev_kv)
        .map(|previous| key_value(&KeyValue { key: event.key.clone(), value: previous.clone() }, false));
    mvccpb::Event { r#type: kind as i32, kv: Some(kv), prev_kv }
}

/// `response` as etcd's `sendFragments` splits it: unchanged if it is under
/// `max_bytes` or has one event; else parts of as many events as stay under it (at
/// least one each), all with `fragment` set but the last.
fn fragments(response: WatchResponse, max_bytes: usize) -> Vec<WatchResponse> {
    if response.encoded_len() < max_bytes || response.events.len() < 2 {
        return vec![response];
    }
    let mut empty = response.clone();
    empty.events.clear();
    empty.fragment = true;
    let mut parts = Vec::new();
    let mut current = empty.clone();
    for event in response.events {
        current.events.push(event);
        if current.events.len() > 1 && current.encoded_len() >= max_bytes {
            let event = current.events.pop().expect("the event just pushed");
            parts.push(std::mem::replace(&mut current, empty.clone()));
            current.events.push(event);
        }
    }
    current.fragment = false;
    parts.push(current);
    parts
}

/// One watch of a stream.
struct Watching {
    spec: Spec,
    cursor: Cursor,
    subscription: Subscription,
    /// Events were sent since the last progress tick (no progress notification due).
    sent_since_tick: bool,
}

/// Why a stream's task stopped.
#[derive(Debug)]
enum Ended {
    /// The client went away, or did not read for `WATCH_STALL_TIMEOUT`.
    Client,
    /// The hub let go of a watch that was not slow: the node is stopping.
    Node,
}

/// What woke a stream's task.
enum Woken {
    Request(Result<Option<WatchRequest>, Status>),
    Delivery(i64, Option<Delivery>),
    Tick,
    Gone,
}

/// A stream's state, owned by its task.
struct WatchStream {
    front: Front,
    /// The call's metadata: each create's token check.
    headers: HeaderMap,
    /// Invariant: at most `MAX_WATCHES_PER_STREAM`.
    watches: BTreeMap<i64, Watching>,
    /// The next id to try for a watch whose client let the server pick.
    next_id: i64,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    /// Where the next look for deliveries starts, so a busy watch cannot starve the others.
    poll_from: usize,
}

/// The next delivery of any watch (None: its queue closed), in turn from `poll_from`.
fn next_delivery<'a>(
    watches: &'a mut BTreeMap<i64, Watching>,
    poll_from: &'a mut usize,
) -> impl Future<Output = (i64, Option<Delivery>)> + 'a {
    std::future::poll_fn(move |context| {
        let count = watches.len();
        if count == 0 {
            return Poll::Pending;
        }
        let first = *poll_from % count;
        // One pass over every watch, from `first` round to just before it.
        for pass in [first..count, 0..first] {
            let (skip, take) = (pass.start, pass.len());
            for (index, (&id, watching)) in watches.iter_mut().enumerate().skip(skip).take(take) {
                if let Poll::Ready(delivery) = watching.subscription.rounds.poll_recv(context) {
                    *poll_from = index + 1;
                    return Poll::Ready((id, delivery));
                }
            }
        }
        Poll::Pending
    })
}

impl WatchStream {
    fn revision(&self) -> u64 {
        self.front.api.node.shared.kv.read().expect("kv lock").revision()
    }

    fn response(&self, watch_id: i64, revision: u64) -> WatchResponse {
        WatchResponse { header: self.front.header(revision), watch_id, ..Default::default() }
    }

    async fn send(&self, response: WatchResponse) -> Result<(), Ended> {
        match tokio::time::timeout(WATCH_STALL_TIMEOUT, self.out.send(Ok(response))).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Ended::Client),
        }
    }

    /// Sends `response` of the watch `fragment` says, whole or in fragments.
    async fn send_events(&self, response: WatchResponse, fragment: bool) -> Result<(), Ended> {
        if !fragment {
            return self.send(response).await;
        }
        for part in fragments(response, max_message_bytes(&self.front.api)) {
            self.send(part).await?;
        }
        Ok(())
    }

    async fn run(mut self, mut inbound: Streaming<WatchRequest>) {
        let every = self.front.api.watch_progress;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reading = true;
        loop {
            let woken = tokio::select! {
                request = inbound.message(), if reading => Woken::Request(request),
                (id, delivery) = next_delivery(&mut self.watches, &mut self.poll_from) => {
                    Woken::Delivery(id, delivery)
                }
                _ = ticks.tick() => Woken::Tick,
                _ = self.out.closed() => Woken::Gone,
            };
            let done = match woken {
                Woken::Request(Ok(Some(request))) => self.handle(request).await,
                // A half-closed stream goes on serving its watches, as etcd's.
                Woken::Request(Ok(None)) => {
                    reading = false;
                    Ok(())
                }
                Woken::Request(Err(status)) => {
                    // A message that is not a WatchRequest (or too long): the stream ends
                    // with the decoder's status.
                    let _ = self.out.try_send(Err(status));
                    return;
                }
                Woken::Delivery(id, delivery) => self.deliver(id, delivery).await,
                Woken::Tick => self.progress_tick().await,
                Woken::Gone => Err(Ended::Client),
            };
            if let Err(ended) = done {
                tracing::debug!(?ended, "an etcd watch stream ended");
                return;
            }
        }
    }

    async fn handle(&mut self, request: WatchRequest) -> Result<(), Ended> {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(&create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watches.remove(&cancel.watch_id).is_none() {
                    return Ok(());
                }
                let response =
                    WatchResponse { canceled: true, ..self.response(cancel.watch_id, self.revision()) };
                self.send(response).await
            }
            Some(RequestUnion::ProgressRequest(_)) => self.progress_request().await,
            None => Ok(()),
        }
    }

    /// A response refusing a create.
    fn refusal(&self, reason: String) -> WatchResponse {
        WatchResponse {
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..self.response(NO_WATCH, self.revision())
        }
    }

    async fn create(&mut self, create: &WatchCreateRequest) -> Result<(), Ended> {
        let spec = match Spec::of(create) {
            Ok(spec) => spec,
            Err(reason) => return self.send(self.refusal(reason)).await,
        };
        if let Err(error) = self.front.api.authorize(&self.headers, spec.range.need(Access::Read)) {
            return self.send(self.refusal(error.grpc_status().message().to_owned())).await;
        }
        if self.watches.len() >= MAX_WATCHES_PER_STREAM {
            let reason = format!("a stream holds at most {MAX_WATCHES_PER_STREAM} watches: open another");
            return self.send(self.refusal(reason)).await;
        }
        let id = match spec.watch_id {
            0 => {
                while self.watches.contains_key(&self.next_id) {
                    self.next_id += 1;
                }
                self.next_id += 1;
                self.next_id - 1
            }
            id if self.watches.contains_key(&id) => {
                return self.send(self.refusal(DUPLICATE_ID.into())).await
            }
            id => id,
        };
        match subscribe_and_read(&self.front.api, spec.hub_filter(), spec.start) {
            Ok(Started { subscription, head, replay }) => {
                self.send(WatchResponse { created: true, ..self.response(id, head) }).await?;
                let cursor = Cursor::new(spec.start, head);
                self.watches.insert(id, Watching { spec, cursor, subscription, sent_since_tick: false });
                self.replay(id, head, replay).await
            }
            Err(ApiError::Compacted { compact_revision }) => {
                let revision = self.revision();
                self.send(WatchResponse { created: true, ..self.response(id, revision) }).await?;
                self.send(compacted(self.response(id, revision), compact_revision)).await
            }
            Err(error) => self.send(self.refusal(error.to_string())).await,
        }
    }

    /// Sends the events of `replay` (read at `head`) the watch `id` wants, whole
    /// revisions at a time, then counts it served through `head`.
    async fn replay(&mut self, id: i64, head: u64, replay: imbl::Vector<Event>) -> Result<(), Ended> {
        let Some(watching) = self.watches.get(&id) else { return Ok(()) };
        let (cursor, spec) = (watching.cursor, watching.spec.clone());
        let mut batch: Vec<mvccpb::Event> = Vec::new();
        let (mut revisions, mut bytes, mut last) = (0, 0, None);
        let mut sent = false;
        for event in cursor.replayed(head, &replay, |event| spec.matches(event)) {
            if last != Some(event.revision) {
                if revisions == REPLAY_BATCH_REVISIONS || bytes >= REPLAY_BATCH_BYTES {
                    let events = std::mem::take(&mut batch);
                    self.send_events(WatchResponse { events, ..self.response(id, head) }, spec.fragment)
                        .await?;
                    (revisions, bytes, sent) = (0, 0, true);
                }
                revisions += 1;
                last = Some(event.revision);
            }
            bytes += event.payload_bytes();
            batch.push(event_of(event, spec.prev_kv));
        }
        if !batch.is_empty() {
            self.send_events(WatchResponse { events: batch, ..self.response(id, head) }, spec.fragment)
                .await?;
            sent = true;
        }
        let watching = self.watches.get_mut(&id).expect("a watch replaying is held");
        watching.cursor.advance(head);
        watching.sent_since_tick |= sent;
        Ok(())
    }

    async fn deliver(&mut self, id: i64, delivery: Option<Delivery>) -> Result<(), Ended> {
        let Some(watching) = self.watches.get_mut(&id) else { return Ok(()) };
        let Some(delivery) = delivery else {
            if !watching.subscription.slow.load(std::sync::atomic::Ordering::Acquire) {
                return Err(Ended::Node);
            }
            return self.resync(id).await;
        };
        let spec = &watching.spec;
        let events = match watching.cursor.round(&delivery, |event| spec.matches(event)) {
            Ok(events) => {
                events.into_iter().map(|shared| event_of(&shared.event, spec.prev_kv)).collect::<Vec<_>>()
            }
            Err(gap) => {
                self.watches.remove(&id);
                let response = compacted(self.response(id, delivery.round.through), gap.missing_through);
                return self.send(response).await;
            }
        };
        if events.is_empty() {
            return Ok(());
        }
        watching.sent_since_tick = true;
        let fragment = spec.fragment;
        let response = WatchResponse { events, ..self.response(id, delivery.round.through) };
        self.send_events(response, fragment).await
    }

    /// A watch the hub dropped as slow subscribes again and replays the history from
    /// where it stopped; canceled if that is compacted.
    async fn resync(&mut self, id: i64) -> Result<(), Ended> {
        let watching = self.watches.get(&id).expect("a watch resyncing is held");
        let from = (watching.cursor.served_through + 1).max(watching.cursor.from);
        match subscribe_and_read(&self.front.api, watching.spec.hub_filter(), Some(from)) {
            Ok(Started { subscription, head, replay }) => {
                self.watches.get_mut(&id).expect("held").subscription = subscription;
                self.replay(id, head, replay).await
            }
            Err(error) => {
                self.watches.remove(&id);
                let revision = self.revision();
                let response = match error {
                    ApiError::Compacted { compact_revision } => {
                        compacted(self.response(id, revision), compact_revision)
                    }
                    other => WatchResponse {
                        canceled: true,
                        cancel_reason: other.to_string(),
                        ..self.response(id, revision)
                    },
                };
                self.send(response).await
            }
        }
    }

    /// `progress_notify`: an empty response for each such watch that was sent nothing
    /// since the last tick and has taken every delivery.
    async fn progress_tick(&mut self) -> Result<(), Ended> {
        let mut due = Vec::new();
        for (&id, watching) in self.watches.iter_mut().filter(|(_, watching)| watching.spec.progress_notify) {
            if std::mem::take(&mut watching.sent_since_tick) {
                continue;
            }
            if watching.cursor.catch_up(&watching.subscription) {
                if let Some(revision) = watching.cursor.progress() {
                    due.push((id, revision));
                }
            }
        }
        for (id, revision) in due {
            self.send(self.response(id, revision)).await?;
        }
        Ok(())
    }

    /// A `progress_request`: the deliveries waiting are served first, then one response
    /// for the stream at the revision every watch of it has been served through.
    async fn progress_request(&mut self) -> Result<(), Ended> {
        let ids: Vec<i64> = self.watches.keys().copied().collect();
        for id in ids {
            let waiting = self.watches.get(&id).map_or(0, |watching| watching.subscription.rounds.len());
            for _ in 0..waiting {
                let Some(watching) = self.watches.get_mut(&id) else { break };
                let delivery = match watching.subscription.rounds.try_recv() {
                    Ok(delivery) => Some(delivery),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                };
                self.deliver(id, delivery).await?;
            }
        }
        let served = self.watches.values_mut().map(|watching| {
            watching.cursor.catch_up(&watching.subscription);
            watching.cursor.served_through
        });
        let revision = served.min().unwrap_or_else(|| self.revision());
        self.send(self.response(NO_WATCH, revision)).await
    }
}

/// A watch canceled because history it needed is gone: `compact_revision` is the first
/// revision still held (mmapd's compaction point is the last revision dropped).
fn compacted(response: WatchResponse, missing_through: u64) -> WatchResponse {
    WatchResponse { canceled: true, compact_revision: to_i64(missing_through + 1), ..response }
}

type ResponseStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<WatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl watch_server::Watch for Front {
    type WatchStream = ResponseStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.check(&request, &[Need::AnyToken])?;
        let headers = request.metadata().clone().into_headers();
        let (out, mut responses) = mpsc::channel(OUTBOUND_RESPONSES);
        let stream = WatchStream {
            front: self.clone(),
            headers,
            watches: BTreeMap::new(),
            next_id: 0,
            out,
            poll_from: 0,
        };
        tokio::spawn(stream.run(request.into_inner()));
        let responses = futures_util::stream::poll_fn(move |context| responses.poll_recv(context));
        Ok(Response::new(Box::pin(responses)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Value;
    use bytes::Bytes;

    fn create(key: &[u8], range_end: &[u8]) -> WatchCreateRequest {
        WatchCreateRequest { key: key.to_vec(), range_end: range_end.to_vec(), ..Default::default() }
    }

    fn put(revision: u64, key: &str, previous: Option<Value>) -> Event {
        Event {
            revision,
            key: Bytes::copy_from_slice(key.as_bytes()),
            kind: EventKind::Put,
            value: Some(Value::created(Bytes::from_static(b"v"), revision)),
            previous,
        }
    }

    fn delete(revision: u64, key: &str) -> Event {
        Event {
            revision,
            key: Bytes::copy_from_slice(key.as_bytes()),
            kind: EventKind::Delete,
            value: None,
            previous: Some(Value::created(Bytes::from_static(b"old"), 1)),
        }
    }

    #[test]
    fn a_create_reads_etcds_key_forms_and_refuses_an_empty_range_or_a_negative_id() {
        let spec = Spec::of(&create(b"", b"\0")).unwrap();
        assert_eq!(spec.range, KeyRange::Range(Bytes::from_static(b"\0"), None), "empty key: from \\0 on");
        assert_eq!(spec.hub_filter(), Filter::Prefix(Vec::new()));
        let spec = Spec::of(&create(b"k", b"")).unwrap();
        assert_eq!((spec.hub_filter(), spec.start), (Filter::Key(b"k".to_vec()), None));
        let spec = Spec::of(&create(b"app/", b"app0")).unwrap();
        assert_eq!(spec.hub_filter(), Filter::Prefix(b"app/".to_vec()), "a prefix range is the hub's prefix");
        let spec = Spec::of(&create(b"a/b", b"a/d")).unwrap();
        assert_eq!(spec.hub_filter(), Filter::Prefix(b"a/".to_vec()), "another range: a prefix covering it");
        assert!(spec.matches(&put(1, "a/c", None)) && !spec.matches(&put(1, "a/d", None)));
        assert_eq!(Spec::of(&create(b"b", b"a")).unwrap_err(), EMPTY_RANGE);
        assert_eq!(Spec::of(&create(b"b", b"b")).unwrap_err(), EMPTY_RANGE);
        assert!(Spec::of(&WatchCreateRequest { watch_id: -1, ..create(b"k", b"") }).is_err());
        let from = Spec::of(&WatchCreateRequest { start_revision: -5, ..create(b"k", b"") }).unwrap();
        assert_eq!(from.start, None, "a start at or below 0 is the next revision");
    }

    #[test]
    fn filters_drop_puts_or_deletes_and_unknown_filters_are_ignored() {
        let request = WatchCreateRequest { filters: vec![FilterType::Noput as i32, 7], ..create(b"k", b"") };
        let spec = Spec::of(&request).unwrap();
        assert!(!spec.matches(&put(2, "k", None)));
        assert!(spec.matches(&delete(3, "k")));
        let request = WatchCreateRequest { filters: vec![FilterType::Nodelete as i32], ..create(b"k", b"") };
        let spec = Spec::of(&request).unwrap();
        assert!(spec.matches(&put(2, "k", None)) && !spec.matches(&delete(3, "k")));
    }

    #[test]
    fn a_range_from_a_key_on_is_watched_through_the_empty_prefix() {
        let spec = Spec::of(&create(b"\xff", b"\0")).unwrap();
        assert_eq!(spec.hub_filter(), Filter::Prefix(Vec::new()));
        assert!(!spec.matches(&put(1, "\u{7f}", None)), "below the range's first key");
        let spec = Spec::of(&create(b"m", b"\0")).unwrap();
        assert!(spec.matches(&put(1, "z", None)) && !spec.matches(&put(1, "a", None)));
    }

    #[test]
    fn events_are_etcds_a_delete_carries_its_revision_and_prev_kv_only_when_asked() {
        let event = event_of(&put(7, "k", Some(Value::created(Bytes::from_static(b"was"), 3))), false);
        assert_eq!(event.r#type, mvccpb::event::EventType::Put as i32);
        let kv = event.kv.unwrap();
        assert_eq!(
            (kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.version),
            (b"k".to_vec(), b"v".to_vec(), 7, 7, 1)
        );
        assert_eq!(event.prev_kv, None);
        let event = event_of(&delete(9, "k"), true);
        assert_eq!(event.r#type, mvccpb::event::EventType::Delete as i32);
        assert_eq!(
            event.kv.unwrap(),
            mvccpb::KeyValue { key: b"k".to_vec(), mod_revision: 9, ..Default::default() }
        );
        assert_eq!(event.prev_kv.unwrap().value, b"old".to_vec());
    }

    #[test]
    fn a_large_response_is_split_into_fragments_in_order_all_but_the_last_marked() {
        let events: Vec<mvccpb::Event> =
            (0..10).map(|revision| event_of(&put(revision + 1, "key", None), false)).collect();
        let response = WatchResponse { watch_id: 3, events: events.clone(), ..Default::default() };
        let one = events[0].encoded_len();
        let parts = fragments(response.clone(), 3 * one + 8);
        assert!(parts.len() > 1, "{}", parts.len());
        assert!(parts.iter().all(|part| part.watch_id == 3 && !part.events.is_empty()));
        assert!(parts[..parts.len() - 1].iter().all(|part| part.fragment));
        assert!(!parts.last().unwrap().fragment);
        assert!(parts.iter().all(|part| part.events.len() == 1 || part.encoded_len() < 3 * one + 8));
        let joined: Vec<mvccpb::Event> = parts.into_iter().flat_map(|part| part.events).collect();
        assert_eq!(joined, events);
        // Small enough, or a single event: unchanged.
        assert_eq!(fragments(response.clone(), usize::MAX), vec![response.clone()]);
        let single = WatchResponse { events: events[..1].to_vec(), ..response };
        assert_eq!(fragments(single.clone(), 1), vec![single]);
    }
}
