//! Leases: keys that vanish when their owner stops renewing them (liveness, locks,
//! leader election), with etcd v3's semantics.
//!
//! What is replicated is only the lease table: each lease's id, its granted TTL and the
//! keys attached to it. *Time* is not: the leader alone keeps each lease's deadline, in
//! its driver core's ticks (`server::driver::leases`), renews it on a keepalive, and
//! when it passes proposes a `Command::LeaseRevoke`, so every node deletes the lease's
//! keys at the same revision. A new leader starts every deadline afresh at the full
//! TTL (etcd's rule: a lease is never expired early by a change of leader).

use bytes::Bytes;
use imbl::OrdSet;

/// An estimate of the memory a lease costs in the table, besides its keys: the entry,
/// its id and TTL, the empty key set and the B-tree node's share.
pub const PER_LEASE_OVERHEAD_BYTES: u64 = 96;
/// ... and per key attached: the set entry (a shared `Bytes` handle) and its node share.
pub const PER_LEASED_KEY_BYTES: u64 = 48;

/// The longest TTL a lease may be granted, in seconds: etcd's `MaxLeaseTTL`.
pub const MAX_LEASE_TTL_S: u64 = 9_000_000_000;

/// One lease in the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// The TTL it was granted, in seconds. Invariant: `1 <= ttl_s <= MAX_LEASE_TTL_S`.
    pub ttl_s: u64,
    /// The keys attached to it. Invariant (kept by `StateMachine`): exactly the keys
    /// whose `Value::lease` is this lease's id.
    pub(super) keys: OrdSet<Bytes>,
}

impl Lease {
    /// A lease with no keys.
    pub fn new(ttl_s: u64) -> Lease {
        Lease { ttl_s, keys: OrdSet::new() }
    }

    /// The keys attached to it, in byte order.
    pub fn keys(&self) -> impl Iterator<Item = &Bytes> {
        self.keys.iter()
    }

    /// How many keys are attached.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}
