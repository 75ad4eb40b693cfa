//! The leader's lease clock: when each lease expires. IO-free and clock-free: the time
//! is what the shell last told the core (`DriverCore::observe_time`, milliseconds of a
//! monotonic clock; the simulator passes its own), so the simulator runs this as it is.
//!
//! The lease table itself is replicated state (`kv::Lease`); deadlines are not. Only
//! the leader keeps them, and only for the term it leads:
//! - on taking over (a term it had no deadlines for), every lease gets its **full TTL
//!   from now**: a new leader never expires a lease early, whatever the old leader had
//!   counted (etcd's rule);
//! - a lease granted (or a snapshot installed) while leading gets its TTL from when
//!   this leader first sees it applied;
//! - a keepalive, once the leader has confirmed it still leads (a ReadIndex round), sets
//!   the deadline to now + TTL;
//! - a deadline passed: the leader proposes `Command::LeaseRevoke`, once a term (the
//!   proposal stays recorded until the lease is gone from the table or the term ends),
//!   so every node deletes the lease's keys at the same revision.
//!
//! Time only moves forward here (`observe_time` ignores a smaller value), and a tick
//! that comes late delays an expiry, never advances one.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::kv::StateMachine;

/// The most revokes a leader proposes in one tick, so that many leases expiring at once
/// do not stall the loop; the rest follow on the next ticks.
pub const MAX_REVOKES_PER_TICK: usize = 256;

/// Deadlines of the leases, while this node leads.
#[derive(Debug, Default)]
pub struct LeaseClock {
    /// The term the deadlines were set in; 0: not leading, no deadlines held.
    term: u64,
    /// Lease id -> its deadline (ms). Invariant: the same pairs as `by_deadline`.
    deadlines: HashMap<u64, u64>,
    /// (deadline, lease id), earliest first.
    by_deadline: BTreeSet<(u64, u64)>,
    /// Leases whose revoke this leader proposed in `term`, not yet applied.
    revoking: HashSet<u64>,
    /// The lease table may have changed since the deadlines were last matched to it.
    dirty: bool,
}

impl LeaseClock {
    /// Called on every tick while leading in `term`: starts the deadlines afresh on a
    /// new term, and matches them to the lease table when it changed.
    pub fn lead(&mut self, term: u64, now_ms: u64, kv: &StateMachine) {
        if self.term != term {
            self.stop_leading();
            self.term = term;
            for (id, lease) in kv.leases() {
                self.set(id, now_ms.saturating_add(lease.ttl_s.saturating_mul(1000)));
            }
            self.dirty = false;
            return;
        }
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let gone: Vec<u64> = self.deadlines.keys().copied().filter(|id| kv.lease(*id).is_none()).collect();
        for id in gone {
            self.remove(id);
        }
        for (id, lease) in kv.leases() {
            if !self.deadlines.contains_key(&id) {
                self.set(id, now_ms.saturating_add(lease.ttl_s.saturating_mul(1000)));
            }
        }
    }

    /// Drops every deadline: this node does not lead (any more).
    pub fn stop_leading(&mut self) {
        self.term = 0;
        self.deadlines.clear();
        self.by_deadline.clear();
        self.revoking.clear();
    }

    /// The lease table changed (a lease granted or revoked, a snapshot installed).
    pub fn mark_changed(&mut self) {
        self.dirty = true;
    }

    /// Leases whose deadline has passed and whose revoke is not proposed yet, at most
    /// `MAX_REVOKES_PER_TICK`, earliest first.
    pub fn expired(&self, now_ms: u64) -> Vec<u64> {
        self.by_deadline
            .iter()
            .take_while(|(deadline, _)| *deadline <= now_ms)
            .map(|(_, id)| *id)
            .filter(|id| !self.revoking.contains(id))
            .take(MAX_REVOKES_PER_TICK)
            .collect()
    }

    /// The revoke of `id` was proposed in this term.
    pub fn revoking(&mut self, id: u64) {
        self.revoking.insert(id);
    }

    /// A keepalive the leader confirmed: the lease lives `ttl_s` from now. Returns false
    /// (and changes nothing) for a lease this leader does not hold, or one already
    /// expired: an expired lease is not brought back.
    pub fn renew(&mut self, id: u64, ttl_s: u64, now_ms: u64) -> bool {
        match self.deadlines.get(&id) {
            Some(&deadline) if deadline > now_ms && !self.revoking.contains(&id) => {
                self.set(id, now_ms.saturating_add(ttl_s.saturating_mul(1000)));
                true
            }
            _ => false,
        }
    }

    /// Milliseconds left before `id` expires, if this leader holds it and it has not.
    pub fn remaining_ms(&self, id: u64, now_ms: u64) -> Option<u64> {
        let deadline = *self.deadlines.get(&id)?;
        (deadline > now_ms && !self.revoking.contains(&id)).then(|| deadline - now_ms)
    }

    /// The term the deadlines are of, 0 when not leading.
    pub fn term(&self) -> u64 {
        self.term
    }

    fn set(&mut self, id: u64, deadline: u64) {
        if let Some(old) = self.deadlines.insert(id, deadline) {
            self.by_deadline.remove(&(old, id));
        }
        self.by_deadline.insert((deadline, id));
    }

    fn remove(&mut self, id: u64) {
        if let Some(old) = self.deadlines.remove(&id) {
            self.by_deadline.remove(&(old, id));
        }
        self.revoking.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Command;

    fn table(leases: &[(u64, u64)]) -> StateMachine {
        let mut kv = StateMachine::new();
        for (index, (id, ttl_s)) in leases.iter().enumerate() {
            kv.apply(index as u64 + 1, &Command::LeaseGrant { id: *id, ttl_s: *ttl_s });
        }
        kv
    }

    // Reference: etcd's lessor Promote: a new leader extends every lease to its full TTL.
    #[test]
    fn a_new_term_gives_every_lease_its_full_ttl_from_now() {
        let kv = table(&[(1, 5), (2, 10)]);
        let mut clock = LeaseClock::default();
        clock.lead(3, 1_000, &kv);
        assert_eq!(clock.remaining_ms(1, 1_000), Some(5_000));
        assert_eq!(clock.expired(5_999), Vec::<u64>::new());
        assert_eq!(clock.expired(6_000), vec![1]);
        // Leadership lost and won again later: the old deadlines count for nothing.
        clock.stop_leading();
        assert_eq!(clock.remaining_ms(1, 6_000), None);
        clock.lead(5, 50_000, &kv);
        assert_eq!(clock.expired(54_999), Vec::<u64>::new());
        assert_eq!(clock.remaining_ms(2, 50_000), Some(10_000));
        // A term change without an explicit stop resets too.
        clock.lead(6, 60_000, &kv);
        assert_eq!(clock.remaining_ms(1, 60_000), Some(5_000));
    }

    #[test]
    fn a_renewal_moves_the_deadline_but_never_revives_an_expired_lease() {
        let kv = table(&[(1, 5)]);
        let mut clock = LeaseClock::default();
        clock.lead(2, 0, &kv);
        assert!(clock.renew(1, 5, 4_000));
        assert_eq!(clock.expired(8_999), Vec::<u64>::new());
        assert_eq!(clock.expired(9_000), vec![1]);
        assert!(!clock.renew(1, 5, 9_000), "an expired lease was renewed");
        clock.revoking(1);
        assert_eq!(clock.expired(10_000), Vec::<u64>::new(), "a revoke proposed twice");
        assert!(!clock.renew(7, 5, 0), "a lease the table does not hold was renewed");
    }

    #[test]
    fn deadlines_follow_the_table_once_marked_changed() {
        let mut kv = table(&[(1, 5)]);
        let mut clock = LeaseClock::default();
        clock.lead(2, 0, &kv);
        kv.apply(2, &Command::LeaseGrant { id: 9, ttl_s: 2 });
        clock.lead(2, 1_000, &kv);
        assert_eq!(clock.remaining_ms(9, 1_000), None, "not marked changed: not seen yet");
        clock.mark_changed();
        clock.lead(2, 1_000, &kv);
        assert_eq!(clock.remaining_ms(9, 1_000), Some(2_000));
        kv.apply(3, &Command::LeaseRevoke { id: 1 });
        clock.revoking(1);
        clock.mark_changed();
        clock.lead(2, 1_500, &kv);
        assert_eq!(clock.remaining_ms(1, 1_500), None);
        assert_eq!(clock.expired(100_000), vec![9]);
    }
}
