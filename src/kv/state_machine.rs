//! The key-value state machine: an ordered in-memory map that committed commands are
//! applied to, in log order, identically on every node.

use std::ops::Bound;

use bytes::Bytes;
use imbl::OrdMap;

use super::cluster::{Cluster, ClusterError, MemberChange};
use super::command::{Command, Condition};
use super::history::{Event, EventKind, History, PER_EVENT_OVERHEAD_BYTES};
use super::lease::{Lease, PER_LEASED_KEY_BYTES, PER_LEASE_OVERHEAD_BYTES};
use super::txn::{apply_txn, txn_growth_bytes, TxnOutcome};

/// A stored value and its revisions, with etcd v3's meanings.
///
/// Revisions are Raft log indexes: the store's revision is its applied index, and a
/// write's revision is the index of the entry that carried it. Entries that change no
/// key (a failed condition, a no-op, a membership change) take indexes too, so
/// revisions have gaps; only their order means anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    /// The value's bytes.
    pub data: Bytes,
    /// The revision of the write that created the key, since it was last absent (a
    /// delete and a new put start again). Invariant: `1 <= create_revision <= mod_revision`.
    pub create_revision: u64,
    /// The revision of the write that last changed the key: the API's ETag and the
    /// condition `Condition::VersionEquals` compares with. Invariant: `create_revision <=
    /// mod_revision <= ` the state machine's applied index.
    pub mod_revision: u64,
    /// How many revisions have written the key since its creation: 1 on create, one more
    /// with each write after. Invariant: `1 <= version <= mod_revision - create_revision + 1`
    /// (at most one write a revision: an import that lists a key twice writes it once),
    /// and `version == 1` exactly when `mod_revision == create_revision`.
    pub version: u64,
    /// The lease the key is attached to (deleted when it expires or is revoked), 0 for
    /// none. Invariant (kept by `StateMachine`): a non-zero lease exists in the state
    /// machine's lease table and lists this key.
    pub lease: u64,
}

impl Value {
    /// A key created at `revision`.
    pub fn created(data: Bytes, revision: u64) -> Value {
        Value { data, create_revision: revision, mod_revision: revision, version: 1, lease: 0 }
    }

    /// The first rule of the field invariants (see the fields) that this value breaks.
    /// Used by the snapshot and backup loaders to refuse a damaged record, and by
    /// `StateMachine` to assert on every write.
    pub fn broken_invariant(&self) -> Option<&'static str> {
        if self.create_revision == 0 {
            Some("create_revision is 0")
        } else if self.create_revision > self.mod_revision {
            Some("create_revision above mod_revision")
        } else if self.version == 0 {
            Some("version is 0")
        } else if self.version > self.mod_revision - self.create_revision + 1 {
            Some("version above the revisions since creation")
        } else if (self.version == 1) != (self.mod_revision == self.create_revision) {
            Some("version 1 but mod_revision and create_revision differ")
        } else {
            None
        }
    }
}

/// What applying one command did, for the client waiting on it. Every revision here is
/// a log index (see `Value`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The key now holds the new value, written at `revision` (the applying index: the
    /// key's new `mod_revision`, its ETag).
    Written {
        /// The revision the write created.
        revision: u64,
        /// True when the key did not exist before (its `version` is now 1).
        created: bool,
    },
    /// The key was removed (at the applying index).
    Deleted {
        /// The `mod_revision` it had.
        previous_mod_revision: u64,
    },
    /// The condition did not hold; nothing changed.
    PreconditionFailed {
        /// The key's `mod_revision`, `None` when it does not exist.
        current_mod_revision: Option<u64>,
    },
    /// A delete of a key that does not exist, unconditional or `Condition::Absent`
    /// (whose condition holds, leaving nothing to delete); nothing changed.
    NotFound,
    /// An import wrote `count` pairs, all at `revision`.
    Imported {
        /// Pairs written (duplicates counted each time).
        count: usize,
        /// The revision the import created: every imported key's `mod_revision`.
        revision: u64,
    },
    /// A change to the cluster's record: applied, or refused (already bootstrapped, an
    /// unknown member, an address taken) with nothing changed.
    Cluster {
        /// True if it changed the record.
        applied: bool,
    },
    /// A `Command::HashCheck`: nothing changed; the state as of this index is the one
    /// every member hashes (`kv::hash_state`).
    HashCheck,
    /// A `Command::Compact`: the history's compaction point is now `compact_revision`.
    Compacted {
        /// The compaction point after the command (`History::compact_revision`).
        compact_revision: u64,
        /// False when the command asked for a revision at or below the point it had:
        /// nothing changed.
        moved: bool,
    },
    /// A `Command::LeaseGrant` created the lease.
    LeaseGranted {
        /// The lease.
        id: u64,
        /// Its TTL, as granted.
        ttl_s: u64,
    },
    /// A `Command::LeaseGrant` named an id a lease already has: nothing changed.
    LeaseExists {
        /// The lease.
        id: u64,
    },
    /// A `Command::LeaseRevoke` removed the lease and deleted its keys at this revision.
    LeaseRevoked {
        /// Keys deleted.
        deleted: usize,
    },
    /// The lease named (a revoke's, a put's, or one of a transaction's puts) does not
    /// exist: nothing changed.
    LeaseNotFound {
        /// The lease.
        id: u64,
    },
    /// A `Command::Txn` ran a branch, all at the applying index (shared: one outcome
    /// may hold many values).
    Txn(std::sync::Arc<TxnOutcome>),
}

/// An estimate of the memory a key costs besides its key and value bytes: two `Bytes`
/// handles, the three revisions, and the B-tree node's share (measured in `bench/kv_restart.rs`).
pub const PER_KEY_OVERHEAD_BYTES: u64 = 96;

/// The map and how far into the log it has been applied.
///
/// `clone` costs O(1): the map is a persistent B-tree (`imbl::OrdMap`) whose nodes the
/// copies share until one of them writes. That is how a snapshot is serialised, a
/// backup streamed or a long list built off the driver's loop, from a copy frozen at one
/// applied index, while the driver goes on applying to its own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateMachine {
    map: OrdMap<Bytes, Value>,
    /// The index of the last entry applied: the store's revision. Invariant: strictly
    /// increases with each apply; every value's `mod_revision` is <= it.
    applied_index: u64,
    /// Sum of key and value lengths. Invariant: equals the sum over `map`.
    payload_bytes: u64,
    /// The cluster's own record.
    cluster: Cluster,
    /// Every change applied to a key since the compaction point. Invariant: its
    /// events' revisions are at most `applied_index`, and its compaction point too.
    history: History,
    /// The lease table, by id. Invariant: a key is in a lease's key set exactly when
    /// its `Value::lease` is that lease's id; no lease has id 0.
    leases: OrdMap<u64, Lease>,
    /// Keys attached to a lease, summed over `leases`. Invariant: equals that sum.
    leased_keys: u64,
}

impl StateMachine {
    /// An empty state machine that has applied nothing.
    pub fn new() -> StateMachine {
        StateMachine::default()
    }

    /// Builds a state machine from parts already validated by the snapshot loader.
    ///
    /// `leases` holds every lease with an empty key set: each key whose `Value::lease`
    /// is not 0 is attached here. Returns the first key naming a lease not in `leases`.
    pub(super) fn from_parts(
        map: OrdMap<Bytes, Value>,
        applied_index: u64,
        cluster: Cluster,
        history: History,
        mut leases: OrdMap<u64, Lease>,
    ) -> Result<StateMachine, Bytes> {
        let payload_bytes = map.iter().map(|(key, value)| (key.len() + value.data.len()) as u64).sum();
        let mut leased_keys = 0;
        for (key, value) in map.iter().filter(|(_, value)| value.lease != 0) {
            let Some(lease) = leases.get_mut(&value.lease) else { return Err(key.clone()) };
            lease.keys.insert(key.clone());
            leased_keys += 1;
        }
        Ok(StateMachine { map, applied_index, payload_bytes, cluster, history, leases, leased_keys })
    }

    /// The lease `id`, if it exists.
    pub fn lease(&self, id: u64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// Every lease, by id in increasing order.
    pub fn leases(&self) -> impl Iterator<Item = (u64, &Lease)> {
        self.leases.iter().map(|(id, lease)| (*id, lease))
    }

    /// How many leases exist.
    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// The change history (see `kv::history`): what a watch replays.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The cluster's record.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Replaces the cluster's record, outside the log: only for a data directory made
    /// into a new cluster offline (`mmapd-admin restore` and `force-new-cluster`), before
    /// any node runs from it. A running node changes the record only by applying entries.
    pub fn replace_cluster(&mut self, cluster: Cluster) {
        self.cluster = cluster;
    }

    /// Applies a membership change committed at `index` (a configuration entry), or
    /// refuses it and changes nothing but the applied index.
    pub fn apply_member_change(&mut self, index: u64, change: &MemberChange) -> Result<(), ClusterError> {
        self.advance_applied(index);
        self.cluster.apply(change)
    }

    /// Applies the command of log entry `index`.
    ///
    /// Panics if `index` is not greater than `applied_index()`: entries are applied once,
    /// in order, and anything else is a bug in the caller.
    pub fn apply(&mut self, index: u64, command: &Command) -> Outcome {
        self.advance_applied(index);
        match command {
            Command::Put { key, value, condition, lease } => self.put(index, key, value, *condition, *lease),
            Command::Delete { key, condition } => self.delete(index, key, *condition),
            Command::Import { pairs } => {
                // Each pair is a put at the import's revision: a new key is created at it,
                // an existing one gets its next version; a key listed twice is written
                // once at that revision (its last value), as `Value::version` counts.
                // One event per key written, in key order, each with the value the key
                // had before the import: the events of one revision, as a transaction's.
                // Imported keys are attached to no lease (a put without one).
                let mut previous = std::collections::BTreeMap::new();
                for (key, value) in pairs {
                    let current = self.map.get(key.as_ref());
                    previous.entry(key.clone()).or_insert_with(|| current.cloned());
                    let written = written_value(index, current, value.clone(), 0);
                    self.insert(index, key.clone(), written);
                }
                for (key, previous) in previous {
                    let value = self.map.get(&key).cloned();
                    self.history.push(Event { revision: index, key, kind: EventKind::Put, value, previous });
                }
                Outcome::Imported { count: pairs.len(), revision: index }
            }
            Command::Bootstrap { cluster_id, members } => {
                Outcome::Cluster { applied: self.cluster.bootstrap(*cluster_id, members).is_ok() }
            }
            Command::UpdateMember { id, address } => {
                let change = MemberChange::UpdateAddress { id: *id, address: address.clone() };
                Outcome::Cluster { applied: self.cluster.apply(&change).is_ok() }
            }
            Command::MemberStarted { id } => {
                let change = MemberChange::Started { id: *id };
                Outcome::Cluster { applied: self.cluster.apply(&change).is_ok() }
            }
            Command::HashCheck => Outcome::HashCheck,
            Command::Compact { revision } => {
                // Bounded by what is applied, the same on every node: the edge refuses a
                // revision above the current one, but the store may be behind the edge's.
                let moved = self.history.compact((*revision).min(index));
                Outcome::Compacted { compact_revision: self.history.compact_revision(), moved }
            }
            Command::LeaseGrant { id, ttl_s } => {
                if self.leases.contains_key(id) {
                    return Outcome::LeaseExists { id: *id };
                }
                assert!(*id != 0, "kv: lease id 0 at index {index}: the decoder refuses it");
                self.leases.insert(*id, Lease::new(*ttl_s));
                Outcome::LeaseGranted { id: *id, ttl_s: *ttl_s }
            }
            Command::LeaseRevoke { id } => self.revoke(index, *id),
            Command::Txn(txn) => apply_txn(self, index, txn),
        }
    }

    /// Removes lease `id` and deletes its keys at `index`, in key order, one event each.
    fn revoke(&mut self, index: u64, id: u64) -> Outcome {
        let Some(lease) = self.leases.get(&id) else { return Outcome::LeaseNotFound { id } };
        let keys: Vec<Bytes> = lease.keys.iter().cloned().collect();
        for key in &keys {
            let removed = self.remove(index, key);
            assert!(removed.is_some(), "kv: lease {id:016x} lists key {key:?}, which does not exist");
        }
        let lease = self.leases.remove(&id).expect("looked up above");
        assert!(lease.keys.is_empty(), "kv: lease {id:016x} still lists keys after its revoke");
        Outcome::LeaseRevoked { deleted: keys.len() }
    }

    /// Records that entry `index` was applied without a command (a `Noop` or `Config`
    /// entry), so `applied_index()` keeps up with the log.
    ///
    /// Panics if `index` is not greater than `applied_index()`.
    pub fn advance_applied(&mut self, index: u64) {
        assert!(
            index > self.applied_index,
            "kv: apply index {index} does not follow applied index {}",
            self.applied_index
        );
        self.applied_index = index;
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Option<&Value> {
        self.map.get(key)
    }

    /// Up to `limit` keys that start with `prefix`, in byte order, and only those after
    /// the key `after` if given (a page of a listing continues after the last key of the
    /// one before). Costs a B-tree descent plus the entries returned.
    pub fn list<'a>(
        &'a self,
        prefix: &'a [u8],
        after: Option<&'a [u8]>,
        limit: usize,
    ) -> impl Iterator<Item = (&'a Bytes, &'a Value)> {
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        self.map
            .range::<_, [u8]>((start, Bound::Unbounded))
            .take_while(move |(key, _)| key.starts_with(prefix))
            .take(limit)
    }

    /// The keys in `[start, end)` in byte order, every key from `start` on when `end`
    /// is `None` (etcd's ranges). Costs a B-tree descent plus the entries visited.
    pub fn range<'a>(
        &'a self,
        start: &'a [u8],
        end: Option<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a Bytes, &'a Value)> {
        let upper = match end {
            // An empty range: `range` panics on a start above the end.
            Some(end) if end <= start => Bound::Excluded(start),
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        self.map.range::<_, [u8]>((Bound::Included(start), upper))
    }

    /// Every key and value in byte order.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Value)> {
        self.map.iter()
    }

    /// The index of the last entry applied (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The store's revision: the applied index, what a read of this state is "at".
    /// It increases with every applied entry, so it has gaps where entries changed no
    /// key; compare revisions, never count them.
    pub fn revision(&self) -> u64 {
        self.applied_index
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Sum of key and value lengths.
    pub fn payload_bytes(&self) -> u64 {
        self.payload_bytes
    }

    /// Estimated memory held: key and value bytes plus `PER_KEY_OVERHEAD_BYTES` per key,
    /// and the history's (`History::approximate_bytes`: its keys, values and previous
    /// values, each counted as if not shared with the map, plus
    /// `PER_EVENT_OVERHEAD_BYTES` per event). O(1): kept up to date by every apply and
    /// by the snapshot loader. This is what the daemon's `--quota-bytes` limits, so
    /// that many tiny keys count what they cost.
    ///
    /// Leases count too: `PER_LEASE_OVERHEAD_BYTES` each and `PER_LEASED_KEY_BYTES` per
    /// key attached (the key's bytes are shared with the map).
    pub fn approximate_bytes(&self) -> u64 {
        self.payload_bytes
            + self.map.len() as u64 * PER_KEY_OVERHEAD_BYTES
            + self.history.approximate_bytes()
            + self.leases.len() as u64 * PER_LEASE_OVERHEAD_BYTES
            + self.leased_keys * PER_LEASED_KEY_BYTES
    }

    /// The most that applying `command` now could add to `approximate_bytes()`: the new
    /// key's bytes and overhead, or a longer value's extra bytes; 0 for a delete or a
    /// shorter value. Conditions are assumed to hold, and an import that lists a key
    /// twice counts it twice, so this never underestimates. Costs one lookup per key:
    /// the quota check before a proposal.
    ///
    /// Every write also adds an event to the history (until a compaction drops it):
    /// counted here too, so a put of an existing key of the same length still grows.
    pub fn growth_bytes(&self, command: &Command) -> u64 {
        let growth = |key: &[u8], value: &[u8]| {
            let (map, previous) = match self.map.get(key) {
                Some(old) => {
                    ((value.len() as u64).saturating_sub(old.data.len() as u64), old.data.len() as u64)
                }
                None => ((key.len() + value.len()) as u64 + PER_KEY_OVERHEAD_BYTES, 0),
            };
            map + (key.len() + value.len()) as u64 + previous + PER_EVENT_OVERHEAD_BYTES
        };
        match command {
            Command::Put { key, value, lease, .. } => {
                growth(key, value) + if *lease == 0 { 0 } else { PER_LEASED_KEY_BYTES }
            }
            // The map shrinks by less than the delete event holds (its previous value).
            Command::Delete { key, .. } => self
                .map
                .get(key.as_ref())
                .map_or(0, |old| (key.len() + old.data.len()) as u64 + PER_EVENT_OVERHEAD_BYTES),
            Command::Bootstrap { .. }
            | Command::UpdateMember { .. }
            | Command::MemberStarted { .. }
            | Command::HashCheck
            | Command::Compact { .. } => 0,
            Command::LeaseGrant { .. } => PER_LEASE_OVERHEAD_BYTES,
            // Deletes, as `Delete` counts them: the events hold the old values.
            Command::LeaseRevoke { id } => self.lease(*id).map_or(0, |lease| {
                lease
                    .keys()
                    .map(|key| {
                        let old = self.map.get(key).map_or(0, |old| old.data.len());
                        (key.len() + old) as u64 + PER_EVENT_OVERHEAD_BYTES
                    })
                    .sum()
            }),
            Command::Import { pairs } => pairs.iter().map(|(key, value)| growth(key, value)).sum(),
            Command::Txn(txn) => txn_growth_bytes(self, txn).0,
        }
    }

    /// The most `map_growth_bytes` can be for `command` whatever the map holds, without
    /// a lookup (a put as if its key were new); `None` for commands it does not bound.
    /// Far from the quota this is enough to pass a write.
    pub fn map_growth_bound(command: &Command) -> Option<u64> {
        match command {
            Command::Put { key, value, lease, .. } => Some(
                (key.len() + value.len()) as u64
                    + PER_KEY_OVERHEAD_BYTES
                    + if *lease == 0 { 0 } else { PER_LEASED_KEY_BYTES },
            ),
            Command::Delete { .. } => Some(0),
            _ => None,
        }
    }

    /// What applying `command` could add to the map's share of `approximate_bytes()`,
    /// the history's left out: what the quota check asks, so that deletes, and
    /// overwrites that do not grow a value, still pass at the quota (the history is
    /// bounded on its own, by the leader's compactions). Never underestimates the map's
    /// growth, as `growth_bytes`.
    pub fn map_growth_bytes(&self, command: &Command) -> u64 {
        let growth = |key: &[u8], value: &[u8]| match self.map.get(key) {
            Some(old) => (value.len() as u64).saturating_sub(old.data.len() as u64),
            None => (key.len() + value.len()) as u64 + PER_KEY_OVERHEAD_BYTES,
        };
        match command {
            Command::Put { key, value, lease, .. } => {
                growth(key, value) + if *lease == 0 { 0 } else { PER_LEASED_KEY_BYTES }
            }
            Command::Import { pairs } => pairs.iter().map(|(key, value)| growth(key, value)).sum(),
            Command::LeaseGrant { .. } => PER_LEASE_OVERHEAD_BYTES,
            Command::Txn(txn) => txn_growth_bytes(self, txn).1,
            _ => 0,
        }
    }

    fn put(&mut self, index: u64, key: &Bytes, value: &Bytes, condition: Condition, lease: u64) -> Outcome {
        let current = self.map.get(key.as_ref());
        let current_mod_revision = current.map(|value| value.mod_revision);
        if !condition_holds(condition, current_mod_revision) {
            return Outcome::PreconditionFailed { current_mod_revision };
        }
        if lease != 0 && !self.leases.contains_key(&lease) {
            return Outcome::LeaseNotFound { id: lease };
        }
        let previous = current.cloned();
        let created = self.write_over(index, key, value, lease, previous);
        Outcome::Written { revision: index, created }
    }

    fn delete(&mut self, index: u64, key: &[u8], condition: Condition) -> Outcome {
        let current_mod_revision = self.map.get(key).map(|value| value.mod_revision);
        if !condition_holds(condition, current_mod_revision) {
            return Outcome::PreconditionFailed { current_mod_revision };
        }
        match self.remove(index, key) {
            Some(previous_mod_revision) => Outcome::Deleted { previous_mod_revision },
            None => Outcome::NotFound,
        }
    }

    /// Writes `value` to `key` at `index` (the applied index), attached to `lease` (which
    /// exists), its put event recorded: a put whose condition held. Returns whether the
    /// key was created.
    pub(super) fn write(&mut self, index: u64, key: &Bytes, value: &Bytes, lease: u64) -> bool {
        let previous = self.map.get(key.as_ref()).cloned();
        self.write_over(index, key, value, lease, previous)
    }

    /// `write`, given the key's current value `previous` (looked up by the caller, one
    /// lookup fewer).
    fn write_over(
        &mut self,
        index: u64,
        key: &Bytes,
        value: &Bytes,
        lease: u64,
        previous: Option<Value>,
    ) -> bool {
        let created = previous.is_none();
        let written = written_value(index, previous.as_ref(), value.clone(), lease);
        self.insert(index, key.clone(), written.clone());
        self.history.push(Event {
            revision: index,
            key: key.clone(),
            kind: EventKind::Put,
            value: Some(written),
            previous,
        });
        created
    }

    /// Deletes `key` at `index` if it exists: detached from its lease, its delete event
    /// recorded. Returns the `mod_revision` it had.
    pub(super) fn remove(&mut self, index: u64, key: &[u8]) -> Option<u64> {
        let (key, value) = self.map.remove_with_key(key)?;
        self.payload_bytes -= (key.len() + value.data.len()) as u64;
        self.detach(&key, value.lease);
        let previous_mod_revision = value.mod_revision;
        self.history.push(Event {
            revision: index,
            key,
            kind: EventKind::Delete,
            value: None,
            previous: Some(value),
        });
        Some(previous_mod_revision)
    }

    /// Takes `key` out of lease `lease`'s key set (nothing for lease 0).
    ///
    /// Panics if the lease does not exist or does not list the key: `Value::lease`'s
    /// invariant is broken.
    fn detach(&mut self, key: &Bytes, lease: u64) {
        if lease == 0 {
            return;
        }
        let attached = self.leases.get_mut(&lease).is_some_and(|entry| entry.keys.remove(key).is_some());
        assert!(attached, "kv: key {key:?} names lease {lease:016x}, which does not list it");
        self.leased_keys -= 1;
    }

    /// Stores `value` under `key`, written by the entry at `index`.
    ///
    /// Panics, naming the key and index, if `value` breaks an invariant of `Value` or was
    /// not written at `index`: `written_value` makes every value, so that is a bug.
    fn insert(&mut self, index: u64, key: Bytes, value: Value) {
        if let Some(broken) = value.broken_invariant() {
            panic!("kv: writing key {key:?} at index {index}: {broken}: {value:?}");
        }
        assert!(
            value.mod_revision == index && index == self.applied_index,
            "kv: key {key:?} written at index {index} with mod_revision {} (applied index {})",
            value.mod_revision,
            self.applied_index
        );
        let key_len = key.len() as u64;
        let added = key_len + value.data.len() as u64;
        let lease = value.lease;
        if let Some(old) = self.map.insert(key.clone(), value) {
            self.payload_bytes -= key_len + old.data.len() as u64;
            self.detach(&key, old.lease);
        }
        self.payload_bytes += added;
        if lease != 0 {
            let entry = self.leases.get_mut(&lease).unwrap_or_else(|| {
                panic!(
                    "kv: key {key:?} written at index {index} with lease {lease:016x}, which does not exist"
                )
            });
            entry.keys.insert(key);
            self.leased_keys += 1;
        }
    }
}

/// The value a write of `data` at revision `index` leaves, given the key's `current`
/// value: a new key is created at `index` (version 1); an existing one keeps its
/// `create_revision` and gets its next version, unless it was already written at
/// `index` (an import listing the key twice), which is one write. It is attached to
/// `lease` (0: none), whatever lease it had.
fn written_value(index: u64, current: Option<&Value>, data: Bytes, lease: u64) -> Value {
    match current {
        None => Value { lease, ..Value::created(data, index) },
        Some(old) if old.mod_revision == index => Value { data, lease, ..old.clone() },
        Some(old) => Value {
            data,
            create_revision: old.create_revision,
            mod_revision: index,
            version: old.version + 1,
            lease,
        },
    }
}

/// Whether `condition` holds for a key whose current `mod_revision` is
/// `current_mod_revision` (`None`: absent).
fn condition_holds(condition: Condition, current_mod_revision: Option<u64>) -> bool {
    match condition {
        Condition::None => true,
        Condition::VersionEquals(expected) => current_mod_revision == Some(expected),
        Condition::Absent => current_mod_revision.is_none(),
    }
}
