//! The watch hub: how live changes reach the watchers on this node. The driver shell
//! publishes every `HistoryRound` the core hands out (what an apply or a snapshot
//! install added to the history), in apply order, to every subscribed watcher's
//! bounded queue. A watcher whose queue is full is unsubscribed and marked slow, never
//! skipped: it delivers what its queue holds, then ends with a `cancelled` line
//! (`api::watch`).
//!
//! Publishing costs O(watchers) per round, each an O(1) share of the round's events,
//! and never blocks the driver's loop (`try_send`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::server::driver::core::HistoryRound;

/// A watcher's end of its subscription.
pub struct Subscription {
    /// Rounds, in apply order, from the first published after `subscribe`.
    pub rounds: mpsc::Receiver<Arc<HistoryRound>>,
    /// Set when the hub dropped this watcher because its queue was full: once `rounds`
    /// is drained and closed, the watcher missed what followed.
    pub slow: Arc<AtomicBool>,
    id: u64,
    hub: Arc<WatchHub>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.watchers.lock().expect("watch hub lock").remove(&self.id);
    }
}

struct Watcher {
    queue: mpsc::Sender<Arc<HistoryRound>>,
    slow: Arc<AtomicBool>,
}

/// The watchers subscribed on this node.
#[derive(Default)]
pub struct WatchHub {
    /// Invariant: every watcher here has a live `Subscription`; removed on its drop
    /// or when its queue is full.
    watchers: Mutex<HashMap<u64, Watcher>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl WatchHub {
    /// A new subscription whose queue holds at most `queue_rounds` rounds. Every round
    /// published after this returns is delivered to it, or it is marked slow.
    pub fn subscribe(self: &Arc<WatchHub>, queue_rounds: usize) -> Subscription {
        let (queue, rounds) = mpsc::channel(queue_rounds.max(1));
        let slow = Arc::new(AtomicBool::new(false));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.watchers.lock().expect("watch hub lock").insert(id, Watcher { queue, slow: slow.clone() });
        Subscription { rounds, slow, id, hub: self.clone() }
    }

    /// Hands `round` to every watcher; one whose queue is full is marked slow and
    /// dropped (its queue closes once drained).
    pub fn publish(&self, round: HistoryRound) {
        let mut watchers = self.watchers.lock().expect("watch hub lock");
        if watchers.is_empty() {
            return;
        }
        let round = Arc::new(round);
        watchers.retain(|_, watcher| match watcher.queue.try_send(round.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                watcher.slow.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    /// How many watchers are subscribed.
    pub fn len(&self) -> usize {
        self.watchers.lock().expect("watch hub lock").len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(after: u64, through: u64) -> HistoryRound {
        HistoryRound { after, through, events: imbl::Vector::new(), missing_through: 0 }
    }

    #[test]
    fn a_watcher_gets_every_round_in_order_until_its_queue_is_full_then_is_marked_slow() {
        let hub = Arc::new(WatchHub::default());
        let mut subscription = hub.subscribe(2);
        for through in 1..=3 {
            hub.publish(round(through - 1, through));
        }
        assert!(subscription.slow.load(Ordering::Acquire), "the third round did not fit");
        assert_eq!(hub.len(), 0, "a slow watcher is dropped from the hub");
        assert_eq!(subscription.rounds.try_recv().unwrap().through, 1);
        assert_eq!(subscription.rounds.try_recv().unwrap().through, 2);
        assert!(matches!(subscription.rounds.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)));
    }

    #[test]
    fn a_dropped_subscription_leaves_the_hub() {
        let hub = Arc::new(WatchHub::default());
        let subscription = hub.subscribe(4);
        assert_eq!(hub.len(), 1);
        drop(subscription);
        assert!(hub.is_empty());
        hub.publish(round(0, 1));
    }
}
