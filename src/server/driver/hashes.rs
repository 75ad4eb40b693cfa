//! The hashes of the key-value state this node computed at hash check entries
//! (`Command::HashCheck`), kept for `mmapd-admin check` to collect from every member.
//!
//! The core hands out a frozen copy of the state machine at the check's index
//! (`Action::HashState`); the shell marks it pending, hashes it off the loop and
//! records it here. A waiter for revision R gets the hash once it is recorded, or
//! learns that this node will never have it: it applied past R without hashing it (a
//! snapshot from the leader covered R, the node restarted, or the hash was dropped as
//! one of the oldest).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use crate::kv::StateHash;

/// Hashes kept, the newest; older ones are dropped.
pub const HASHES_KEPT: usize = 16;

/// How often a waiter looks again at what the node has applied.
const RECHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Why a member's hash at a revision cannot be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashUnavailable {
    /// It applied past the revision without hashing it there.
    NotKept {
        /// The revision asked for.
        revision: u64,
        /// What it has applied.
        applied: u64,
    },
    /// It has not applied the revision within the time allowed.
    NotApplied {
        /// The revision asked for.
        revision: u64,
        /// What it has applied.
        applied: u64,
    },
}

impl std::fmt::Display for HashUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashUnavailable::NotKept { revision, applied } => write!(
                f,
                "this member applied up to {applied} without hashing revision {revision} (a snapshot \
                 covered it, the member restarted, or the hash was among the oldest dropped): run \
                 the check again"
            ),
            HashUnavailable::NotApplied { revision, applied } => write!(
                f,
                "this member has applied up to {applied}, not yet revision {revision}: it lags, or \
                 cannot reach the leader"
            ),
        }
    }
}

#[derive(Debug, Default)]
struct Kept {
    /// Recorded hashes, oldest first. Invariant: at most `HASHES_KEPT`, revisions
    /// strictly increasing.
    done: VecDeque<StateHash>,
    /// Revisions handed out to be hashed, not recorded yet. Bounded by the hash check
    /// entries applied while hashing runs (each is an admin's request).
    pending: BTreeSet<u64>,
    /// The core's applied index when the shell last finished carrying out a round of
    /// its actions: every hash check at or below it that was applied entry by entry is
    /// pending or recorded. (The state machine's own index moves when the core
    /// applies, before the shell sees `Action::HashState`.)
    handled: u64,
}

/// The node's hashes, shared by the shell (which records them) and the edge (which
/// waits for them).
#[derive(Debug, Default)]
pub struct StateHashes {
    kept: Mutex<Kept>,
    recorded: Notify,
}

impl StateHashes {
    /// The shell carried out every action of the rounds that applied up to `applied`.
    pub fn handled_through(&self, applied: u64) {
        self.kept.lock().expect("hashes lock").handled = applied;
    }

    /// The core handed out the state at `revision` to be hashed.
    pub fn pending(&self, revision: u64) {
        self.kept.lock().expect("hashes lock").pending.insert(revision);
    }

    /// The hash of the state at `hash.revision` is computed.
    pub fn record(&self, hash: StateHash) {
        let mut kept = self.kept.lock().expect("hashes lock");
        kept.pending.remove(&hash.revision);
        // The state machine's index never goes back, but a snapshot install may have
        // restarted the count: keep the order by dropping what is not older.
        while kept.done.back().is_some_and(|last| last.revision >= hash.revision) {
            kept.done.pop_back();
        }
        kept.done.push_back(hash);
        while kept.done.len() > HASHES_KEPT {
            kept.done.pop_front();
        }
        drop(kept);
        self.recorded.notify_waiters();
    }

    /// The hash at `revision`, waiting up to `timeout` for this node to apply and hash
    /// it.
    pub async fn wait_for(&self, revision: u64, timeout: Duration) -> Result<StateHash, HashUnavailable> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let recorded = self.recorded.notified();
            tokio::pin!(recorded);
            // Registered before looking, so a record made after the look wakes us.
            recorded.as_mut().enable();
            let applied_now = {
                let kept = self.kept.lock().expect("hashes lock");
                if let Some(hash) = kept.done.iter().find(|h| h.revision == revision) {
                    return Ok(*hash);
                }
                if kept.handled >= revision && !kept.pending.contains(&revision) {
                    return Err(HashUnavailable::NotKept { revision, applied: kept.handled });
                }
                kept.handled
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(HashUnavailable::NotApplied { revision, applied: applied_now });
            }
            let _ = tokio::time::timeout((deadline - now).min(RECHECK_INTERVAL), recorded).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn hash(revision: u64, crc32c: u32) -> StateHash {
        StateHash { revision, crc32c, keys: 1, bytes: 2 }
    }

    #[tokio::test]
    async fn a_waiter_gets_the_hash_recorded_after_it_started_waiting() {
        let hashes = Arc::new(StateHashes::default());
        hashes.handled_through(3);
        let waiter = {
            let hashes = hashes.clone();
            tokio::spawn(async move { hashes.wait_for(5, Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        hashes.pending(5);
        hashes.handled_through(5);
        tokio::time::sleep(Duration::from_millis(150)).await;
        hashes.record(hash(5, 0xabc));
        assert_eq!(waiter.await.unwrap(), Ok(hash(5, 0xabc)));
    }

    #[tokio::test]
    async fn a_revision_applied_without_a_hash_is_reported_at_once_not_waited_for() {
        let hashes = StateHashes::default();
        hashes.record(hash(4, 1));
        hashes.handled_through(9);
        let started = std::time::Instant::now();
        let result = hashes.wait_for(5, Duration::from_secs(10)).await;
        assert_eq!(result, Err(HashUnavailable::NotKept { revision: 5, applied: 9 }));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_revision_not_applied_in_time_says_how_far_the_member_got() {
        let hashes = StateHashes::default();
        hashes.handled_through(2);
        let result = hashes.wait_for(5, Duration::from_millis(150)).await;
        assert_eq!(result, Err(HashUnavailable::NotApplied { revision: 5, applied: 2 }));
    }

    #[tokio::test]
    async fn a_revision_applied_but_not_yet_handed_out_is_waited_for() {
        // The state machine applied 5 but the shell has not carried out that round's
        // actions yet: the check entry's hash is not lost, only not pending yet.
        let hashes = Arc::new(StateHashes::default());
        hashes.handled_through(4);
        let waiter = {
            let hashes = hashes.clone();
            tokio::spawn(async move { hashes.wait_for(5, Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!waiter.is_finished());
        hashes.pending(5);
        hashes.handled_through(5);
        hashes.record(hash(5, 9));
        assert_eq!(waiter.await.unwrap(), Ok(hash(5, 9)));
    }

    #[test]
    fn only_the_newest_hashes_are_kept() {
        let hashes = StateHashes::default();
        for revision in 1..=(HASHES_KEPT as u64 + 5) {
            hashes.record(hash(revision, revision as u32));
        }
        let kept = hashes.kept.lock().unwrap();
        assert_eq!(kept.done.len(), HASHES_KEPT);
        assert_eq!(kept.done.front().unwrap().revision, 6);
    }
}
