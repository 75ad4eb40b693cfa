//! The watch hub: how live changes reach the watchers on this node. The driver shell
//! publishes every `HistoryRound` the core hands out (what an apply or a snapshot
//! install added to the history), in apply order. The hub indexes its watchers by the
//! exact key they watch and by prefix, so a round goes only to the watchers one of its
//! events matches, each handed the indexes of its events in the round; a round that
//! declares missing history (`missing_through`) goes to every watcher, since each must
//! judge whether it lost something. A watcher whose bounded queue is full is
//! unsubscribed and marked slow, never skipped: it delivers what its queue holds, then
//! ends with a `cancelled` line (`api::watch`).
//!
//! Publishing runs on the driver's loop and never blocks it (`try_send`). It costs, per
//! event, one hash lookup for the exact key and one per distinct prefix length watched,
//! plus O(1) per watcher matched; the JSON of an event is not made here but once, by the
//! first watcher that writes it (`SharedEvent::line`), and shared by the rest.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::kv::Event;
use crate::server::driver::core::HistoryRound;

/// Which keys a watcher wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    Key(Vec<u8>),
    Prefix(Vec<u8>),
}

impl Filter {
    /// Whether a change to `key` is for this watcher.
    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            Filter::Key(wanted) => key == wanted.as_slice(),
            Filter::Prefix(prefix) => key.starts_with(prefix),
        }
    }
}

/// An event of a published round, shared by every watcher it goes to.
pub struct SharedEvent {
    pub event: Event,
    /// The event's line without and with `prev`, made by the first watcher that needs it.
    lines: [OnceLock<Bytes>; 2],
}

impl SharedEvent {
    fn new(event: Event) -> SharedEvent {
        SharedEvent { event, lines: [OnceLock::new(), OnceLock::new()] }
    }

    /// The event's line for watchers with this `prev`: made by `make` the first time,
    /// the same bytes after.
    pub fn line(&self, prev: bool, make: impl FnOnce(&Event, bool) -> Bytes) -> Bytes {
        self.lines[usize::from(prev)].get_or_init(|| make(&self.event, prev)).clone()
    }
}

/// A round as the hub hands it out: its range, and the events some watcher wanted.
pub struct PublishedRound {
    /// The applied index before (see `HistoryRound`).
    pub after: u64,
    /// The applied index after.
    pub through: u64,
    /// As `HistoryRound::missing_through`: 0, or every event at or below it is lost to
    /// a watcher that had not seen it.
    pub missing_through: u64,
    /// The round's events that matched a watcher, in the round's order.
    events: Vec<SharedEvent>,
}

/// What one watcher is handed for one round. A watcher is handed every round one of
/// whose events matches its filter, and every round with `missing_through` set; only
/// those, so every matching event at or below a delivery's `round.after` was in an
/// earlier delivery (rounds tile the revisions, published in order).
pub struct Delivery {
    pub round: Arc<PublishedRound>,
    /// Indexes of this watcher's events in `round.events`.
    /// Invariant: strictly ascending (each event at most once, in the round's order).
    indexes: Vec<u32>,
}

impl Delivery {
    /// This watcher's events of the round, in order.
    pub fn events(&self) -> impl Iterator<Item = &SharedEvent> {
        self.indexes.iter().map(|&index| &self.round.events[index as usize])
    }

    /// All of `round`'s events, as if every one matched (tests of a watcher's own filter).
    pub fn everything(round: HistoryRound) -> Delivery {
        let events: Vec<SharedEvent> = round.events.into_iter().map(SharedEvent::new).collect();
        let indexes = (0..events.len() as u32).collect();
        let round = PublishedRound {
            after: round.after,
            through: round.through,
            missing_through: round.missing_through,
            events,
        };
        Delivery { round: Arc::new(round), indexes }
    }
}

/// A watcher's end of its subscription.
pub struct Subscription {
    /// Deliveries, in apply order, from the first round published after `subscribe`.
    pub rounds: mpsc::Receiver<Delivery>,
    /// Set when the hub dropped this watcher because its queue was full: once `rounds`
    /// is drained and closed, the watcher missed what followed.
    pub slow: Arc<AtomicBool>,
    id: u64,
    hub: Arc<WatchHub>,
}

impl Subscription {
    /// The revision through which this watcher has been handed every change for it, if
    /// it has taken every delivery: the `through` of the last round published. None
    /// while a delivery waits in `rounds`, or once the watcher was dropped as slow.
    pub fn caught_up_through(&self) -> Option<u64> {
        // Under the lock no round is being published: every delivery of the rounds
        // through `published_through` is in the queue already, or was taken.
        let watchers = self.hub.watchers.lock().expect("watch hub lock");
        let subscribed = watchers.by_id.contains_key(&self.id) && !self.slow.load(Ordering::Acquire);
        (subscribed && self.rounds.is_empty()).then_some(watchers.published_through)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.watchers.lock().expect("watch hub lock").remove(self.id);
    }
}

struct Watcher {
    queue: mpsc::Sender<Delivery>,
    slow: Arc<AtomicBool>,
    filter: Filter,
    /// This round's matches while `publish` runs; empty between rounds.
    pending: Vec<u32>,
}

/// The watchers and their index.
#[derive(Default)]
struct Watchers {
    /// Invariant: every watcher here has a live `Subscription`, and its id is in
    /// `by_key` under its key or in `by_prefix` under its prefix (and nowhere else);
    /// removed on its drop or when its queue is full.
    by_id: HashMap<u64, Watcher>,
    by_key: HashMap<Vec<u8>, HashSet<u64>>,
    by_prefix: HashMap<Vec<u8>, HashSet<u64>>,
    /// The length of every prefix in `by_prefix`, with how many prefixes have it: the
    /// only lengths a key's prefixes need looking up at.
    prefix_lengths: BTreeMap<usize, usize>,
    /// The `through` of the last round published (0 before the first).
    published_through: u64,
}

impl Watchers {
    fn insert(&mut self, id: u64, watcher: Watcher) {
        match &watcher.filter {
            Filter::Key(key) => {
                self.by_key.entry(key.clone()).or_default().insert(id);
            }
            Filter::Prefix(prefix) => {
                let ids = self.by_prefix.entry(prefix.clone()).or_default();
                if ids.is_empty() {
                    *self.prefix_lengths.entry(prefix.len()).or_default() += 1;
                }
                ids.insert(id);
            }
        }
        self.by_id.insert(id, watcher);
    }

    fn remove(&mut self, id: u64) {
        let Some(watcher) = self.by_id.remove(&id) else { return };
        match watcher.filter {
            Filter::Key(key) => {
                let ids = self.by_key.get_mut(&key).expect("a watcher's key is indexed");
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_key.remove(&key);
                }
            }
            Filter::Prefix(prefix) => {
                let ids = self.by_prefix.get_mut(&prefix).expect("a watcher's prefix is indexed");
                ids.remove(&id);
                if ids.is_empty() {
                    self.by_prefix.remove(&prefix);
                    let count =
                        self.prefix_lengths.get_mut(&prefix.len()).expect("an indexed prefix's length");
                    *count -= 1;
                    if *count == 0 {
                        self.prefix_lengths.remove(&prefix.len());
                    }
                }
            }
        }
    }
}

/// The watchers subscribed on this node.
#[derive(Default)]
pub struct WatchHub {
    watchers: Mutex<Watchers>,
    next_id: AtomicU64,
}

impl WatchHub {
    /// A new subscription to the changes `filter` matches, whose queue holds at most
    /// `queue_rounds` deliveries. Every round published after this returns with an
    /// event it matches (or with missing history) is delivered to it, or it is marked
    /// slow.
    pub fn subscribe(self: &Arc<WatchHub>, filter: Filter, queue_rounds: usize) -> Subscription {
        let (queue, rounds) = mpsc::channel(queue_rounds.max(1));
        let slow = Arc::new(AtomicBool::new(false));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let watcher = Watcher { queue, slow: slow.clone(), filter, pending: Vec::new() };
        self.watchers.lock().expect("watch hub lock").insert(id, watcher);
        Subscription { rounds, slow, id, hub: self.clone() }
    }

    /// Hands `round` to the watchers it is for; one whose queue is full is marked slow
    /// and dropped (its queue closes once drained).
    pub fn publish(&self, round: HistoryRound) {
        let mut guard = self.watchers.lock().expect("watch hub lock");
        let watchers = &mut *guard;
        watchers.published_through = round.through;
        if watchers.by_id.is_empty() {
            return;
        }
        let Watchers { by_id, by_key, by_prefix, prefix_lengths, .. } = &mut *watchers;
        let mut events = Vec::new();
        let mut touched = Vec::new();
        for event in round.events {
            let index = events.len() as u32;
            let mut hand = |id: &u64| {
                let watcher = by_id.get_mut(id).expect("an indexed watcher is subscribed");
                assert!(
                    watcher.pending.last().is_none_or(|&last| last < index),
                    "watcher {id} matched event {index} twice"
                );
                if watcher.pending.is_empty() {
                    touched.push(*id);
                }
                watcher.pending.push(index);
            };
            let key = &event.key[..];
            let mut matched = false;
            if let Some(ids) = by_key.get(key) {
                ids.iter().for_each(&mut hand);
                matched = true;
            }
            for &length in prefix_lengths.keys() {
                if length > key.len() {
                    break;
                }
                if let Some(ids) = by_prefix.get(&key[..length]) {
                    ids.iter().for_each(&mut hand);
                    matched = true;
                }
            }
            if matched {
                events.push(SharedEvent::new(event));
            }
        }
        let everyone = round.missing_through > 0;
        if touched.is_empty() && !everyone {
            return;
        }
        let shared = Arc::new(PublishedRound {
            after: round.after,
            through: round.through,
            missing_through: round.missing_through,
            events,
        });
        let mut gone = Vec::new();
        let mut deliver = |id: u64, watcher: &mut Watcher| {
            let delivery = Delivery { round: shared.clone(), indexes: std::mem::take(&mut watcher.pending) };
            match watcher.queue.try_send(delivery) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    watcher.slow.store(true, Ordering::Release);
                    gone.push(id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => gone.push(id),
            }
        };
        if everyone {
            by_id.iter_mut().for_each(|(&id, watcher)| deliver(id, watcher));
        } else {
            for id in touched {
                deliver(id, by_id.get_mut(&id).expect("a touched watcher is subscribed"));
            }
        }
        for id in gone {
            watchers.remove(id);
        }
    }

    /// How many watchers are subscribed.
    pub fn len(&self) -> usize {
        self.watchers.lock().expect("watch hub lock").by_id.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{EventKind, Value};

    fn put(revision: u64, key: &str) -> Event {
        Event {
            revision,
            key: Bytes::copy_from_slice(key.as_bytes()),
            kind: EventKind::Put,
            value: Some(Value::created(Bytes::from_static(b"v"), revision)),
            previous: None,
        }
    }

    /// A round of revision `through` with a put of each of `keys`.
    fn round(through: u64, keys: &[&str]) -> HistoryRound {
        let events = keys.iter().map(|key| put(through, key)).collect();
        HistoryRound { after: through - 1, through, events, missing_through: 0 }
    }

    fn keys(delivery: &Delivery) -> Vec<String> {
        delivery.events().map(|shared| String::from_utf8_lossy(&shared.event.key).into_owned()).collect()
    }

    #[test]
    fn a_watcher_gets_every_round_for_it_in_order_until_its_queue_is_full_then_is_marked_slow() {
        let hub = Arc::new(WatchHub::default());
        let mut subscription = hub.subscribe(Filter::Key(b"k".to_vec()), 2);
        for through in 1..=3 {
            hub.publish(round(through, &["k"]));
        }
        assert!(subscription.slow.load(Ordering::Acquire), "the third round did not fit");
        assert_eq!(hub.len(), 0, "a slow watcher is dropped from the hub");
        assert_eq!(subscription.caught_up_through(), None, "a slow watcher is never caught up");
        assert_eq!(subscription.rounds.try_recv().unwrap().round.through, 1);
        assert_eq!(subscription.rounds.try_recv().unwrap().round.through, 2);
        assert!(matches!(subscription.rounds.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)));
    }

    #[test]
    fn a_round_goes_only_to_the_watchers_of_its_keys_and_prefixes_each_event_once() {
        let hub = Arc::new(WatchHub::default());
        let mut a = hub.subscribe(Filter::Key(b"a".to_vec()), 8);
        let mut b = hub.subscribe(Filter::Key(b"b".to_vec()), 8);
        let mut p = hub.subscribe(Filter::Prefix(b"p/".to_vec()), 8);
        let mut pq = hub.subscribe(Filter::Prefix(b"p/q".to_vec()), 8);
        let mut all = hub.subscribe(Filter::Prefix(Vec::new()), 8);
        hub.publish(round(1, &["b", "p/q1", "p/x", "p", "zz"]));
        assert!(a.rounds.try_recv().is_err(), "a write to b does not wake a watcher of a");
        assert_eq!(keys(&b.rounds.try_recv().unwrap()), ["b"]);
        assert_eq!(keys(&p.rounds.try_recv().unwrap()), ["p/q1", "p/x"]);
        assert_eq!(keys(&pq.rounds.try_recv().unwrap()), ["p/q1"]);
        assert_eq!(keys(&all.rounds.try_recv().unwrap()), ["b", "p/q1", "p/x", "p", "zz"]);
        // A watcher handed nothing is caught up with the round all the same.
        assert_eq!(a.caught_up_through(), Some(1));
        assert_eq!(b.caught_up_through(), Some(1));
        hub.publish(round(2, &["c"]));
        assert_eq!(b.caught_up_through(), Some(2));
        assert!(b.rounds.try_recv().is_err());
        assert_eq!(keys(&all.rounds.try_recv().unwrap()), ["c"]);
        hub.publish(round(3, &["a"]));
        assert_eq!(a.caught_up_through(), None, "a delivery waits");
        assert_eq!(keys(&a.rounds.try_recv().unwrap()), ["a"]);
        assert_eq!(a.caught_up_through(), Some(3));
    }

    #[test]
    fn a_round_with_missing_history_goes_to_every_watcher() {
        let hub = Arc::new(WatchHub::default());
        let mut a = hub.subscribe(Filter::Key(b"a".to_vec()), 8);
        let mut p = hub.subscribe(Filter::Prefix(b"p".to_vec()), 8);
        let events = [put(9, "b")].into_iter().collect();
        hub.publish(HistoryRound { after: 3, through: 9, events, missing_through: 5 });
        for subscription in [&mut a, &mut p] {
            let delivery = subscription.rounds.try_recv().unwrap();
            assert_eq!((delivery.round.missing_through, keys(&delivery).len()), (5, 0));
        }
    }

    #[test]
    fn an_event_line_is_made_once_and_shared() {
        let hub = Arc::new(WatchHub::default());
        let mut first = hub.subscribe(Filter::Prefix(b"k".to_vec()), 8);
        let mut second = hub.subscribe(Filter::Key(b"k".to_vec()), 8);
        hub.publish(round(1, &["k"]));
        let made = std::cell::Cell::new(0);
        let make = |_: &Event, _: bool| {
            made.set(made.get() + 1);
            Bytes::from_static(b"line\n")
        };
        let one = first.rounds.try_recv().unwrap().events().next().unwrap().line(false, make);
        let two = second.rounds.try_recv().unwrap().events().next().unwrap().line(false, make);
        assert_eq!(made.get(), 1);
        assert_eq!(one.as_ptr(), two.as_ptr(), "the same bytes");
    }

    #[test]
    fn a_dropped_subscription_leaves_the_hub_and_its_index() {
        let hub = Arc::new(WatchHub::default());
        let key = hub.subscribe(Filter::Key(b"k".to_vec()), 4);
        let prefix = hub.subscribe(Filter::Prefix(b"p".to_vec()), 4);
        assert_eq!(hub.len(), 2);
        drop(key);
        drop(prefix);
        assert!(hub.is_empty());
        let watchers = hub.watchers.lock().unwrap();
        assert!(
            watchers.by_key.is_empty() && watchers.by_prefix.is_empty() && watchers.prefix_lengths.is_empty()
        );
        drop(watchers);
        hub.publish(round(1, &["k", "p"]));
    }
}
