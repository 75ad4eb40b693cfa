//! The key-value state machine: an ordered in-memory map that committed commands are
//! applied to, in log order, identically on every node.

use std::ops::Bound;

use bytes::Bytes;
use imbl::OrdMap;

use super::cluster::{Cluster, ClusterError, MemberChange};
use super::command::{Command, Condition};

/// A stored value and the version the API exposes as its ETag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    /// The value's bytes.
    pub data: Bytes,
    /// The Raft log index of the command that last wrote the key. Invariant: >= 1 and
    /// <= the state machine's applied index.
    pub version: u64,
}

/// What applying one command did, for the client waiting on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The key now holds the new value at `version` (the applying index).
    Written {
        /// The key's new version.
        version: u64,
        /// True when the key did not exist before.
        created: bool,
    },
    /// The key was removed.
    Deleted {
        /// The version it had.
        previous_version: u64,
    },
    /// The condition did not hold; nothing changed.
    PreconditionFailed {
        /// The key's version, `None` when it does not exist.
        current_version: Option<u64>,
    },
    /// A delete of a key that does not exist, unconditional or `Condition::Absent`
    /// (whose condition holds, leaving nothing to delete); nothing changed.
    NotFound,
    /// An import wrote `count` pairs, all at `version`.
    Imported {
        /// Pairs written (duplicates counted each time).
        count: usize,
        /// The version every imported key now has.
        version: u64,
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
}

/// An estimate of the memory a key costs besides its key and value bytes: two `Bytes`
/// handles, the version, and the B-tree node's share (measured in `bench/kv_restart.rs`).
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
    /// The index of the last entry applied. Invariant: strictly increases with each apply;
    /// every value's version is <= it.
    applied_index: u64,
    /// Sum of key and value lengths. Invariant: equals the sum over `map`.
    payload_bytes: u64,
    /// The cluster's own record.
    cluster: Cluster,
}

impl StateMachine {
    /// An empty state machine that has applied nothing.
    pub fn new() -> StateMachine {
        StateMachine::default()
    }

    /// Builds a state machine from parts already validated by the snapshot loader.
    pub(super) fn from_parts(
        map: OrdMap<Bytes, Value>,
        applied_index: u64,
        cluster: Cluster,
    ) -> StateMachine {
        let payload_bytes = map.iter().map(|(key, value)| (key.len() + value.data.len()) as u64).sum();
        StateMachine { map, applied_index, payload_bytes, cluster }
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
            Command::Put { key, value, condition } => self.put(index, key, value, *condition),
            Command::Delete { key, condition } => self.delete(key, *condition),
            Command::Import { pairs } => {
                for (key, value) in pairs {
                    self.insert(key.clone(), Value { data: value.clone(), version: index });
                }
                Outcome::Imported { count: pairs.len(), version: index }
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
        }
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

    /// Up to `limit` keys that start with `prefix`, in byte order. Costs a B-tree descent
    /// plus the entries returned.
    pub fn list<'a>(
        &'a self,
        prefix: &'a [u8],
        limit: usize,
    ) -> impl Iterator<Item = (&'a Bytes, &'a Value)> {
        self.map
            .range::<_, [u8]>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(key, _)| key.starts_with(prefix))
            .take(limit)
    }

    /// Every key and value in byte order.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Value)> {
        self.map.iter()
    }

    /// The index of the last entry applied (0 before any).
    pub fn applied_index(&self) -> u64 {
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

    /// Estimated memory held: key and value bytes plus `PER_KEY_OVERHEAD_BYTES` per key.
    /// O(1): kept up to date by every apply and by the snapshot loader. This is what
    /// the daemon's `--quota-bytes` limits, so that many tiny keys count what they cost.
    pub fn approximate_bytes(&self) -> u64 {
        self.payload_bytes + self.map.len() as u64 * PER_KEY_OVERHEAD_BYTES
    }

    /// The most that applying `command` now could add to `approximate_bytes()`: the new
    /// key's bytes and overhead, or a longer value's extra bytes; 0 for a delete or a
    /// shorter value. Conditions are assumed to hold, and an import that lists a key
    /// twice counts it twice, so this never underestimates. Costs one lookup per key:
    /// the quota check before a proposal.
    pub fn growth_bytes(&self, command: &Command) -> u64 {
        let growth = |key: &[u8], value: &[u8]| match self.map.get(key) {
            Some(old) => (value.len() as u64).saturating_sub(old.data.len() as u64),
            None => (key.len() + value.len()) as u64 + PER_KEY_OVERHEAD_BYTES,
        };
        match command {
            Command::Put { key, value, .. } => growth(key, value),
            Command::Delete { .. }
            | Command::Bootstrap { .. }
            | Command::UpdateMember { .. }
            | Command::MemberStarted { .. }
            | Command::HashCheck => 0,
            Command::Import { pairs } => pairs.iter().map(|(key, value)| growth(key, value)).sum(),
        }
    }

    fn put(&mut self, index: u64, key: &Bytes, value: &Bytes, condition: Condition) -> Outcome {
        let current_version = self.map.get(key.as_ref()).map(|value| value.version);
        if !condition_holds(condition, current_version) {
            return Outcome::PreconditionFailed { current_version };
        }
        self.insert(key.clone(), Value { data: value.clone(), version: index });
        Outcome::Written { version: index, created: current_version.is_none() }
    }

    fn delete(&mut self, key: &[u8], condition: Condition) -> Outcome {
        let current_version = self.map.get(key).map(|value| value.version);
        if !condition_holds(condition, current_version) {
            return Outcome::PreconditionFailed { current_version };
        }
        match self.map.remove_with_key(key) {
            Some((key, value)) => {
                self.payload_bytes -= (key.len() + value.data.len()) as u64;
                Outcome::Deleted { previous_version: value.version }
            }
            None => Outcome::NotFound,
        }
    }

    fn insert(&mut self, key: Bytes, value: Value) {
        let key_len = key.len() as u64;
        let added = key_len + value.data.len() as u64;
        if let Some(old) = self.map.insert(key, value) {
            self.payload_bytes -= key_len + old.data.len() as u64;
        }
        self.payload_bytes += added;
    }
}

/// Whether `condition` holds for a key whose current version is `current_version`.
fn condition_holds(condition: Condition, current_version: Option<u64>) -> bool {
    match condition {
        Condition::None => true,
        Condition::VersionEquals(expected) => current_version == Some(expected),
        Condition::Absent => current_version.is_none(),
    }
}
