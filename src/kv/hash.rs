//! The hash of the key-value state at one revision, for `mmapd-admin check`: a
//! corruption check between members, as etcd's HashKV. Every member computes it on a
//! frozen copy of its state machine taken when it applies a `Command::HashCheck`, so
//! the hashes compared are of one revision on every member.
//!
//! The hash is CRC-32C over every key in byte order, each as its length (u32 LE), its
//! bytes, the value's length (u32 LE), its bytes and its `mod_revision` (u64 LE: the
//! log index that last wrote it). `create_revision` and `version` are not covered:
//! keys loaded from a snapshot of a release before they were recorded carry an
//! approximation that depends on where each replica's snapshot was taken (see
//! `kv::snapshot`), so members that agree on every value could differ there. The
//! cluster record is not covered either: the members' agreement on membership checks it.
//! Nor is the change history (`kv::history`): members upgraded from snapshots written
//! before it (payload versions 1 to 3) start their history at their own snapshot's
//! revision, so their windows differ until a compaction passes the later one. (The
//! simulator's own hash, where every node runs this release, covers it.)

use super::state_machine::StateMachine;

/// What a member hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateHash {
    /// The revision (applied index) the state is of.
    pub revision: u64,
    /// CRC-32C over the keys, values and versions (see the module doc).
    pub crc32c: u32,
    /// How many keys it covers.
    pub keys: u64,
    /// The key and value bytes it covers.
    pub bytes: u64,
}

/// Hashes `machine`'s key-value state. Costs one pass over every key and value: run it
/// on a frozen copy, off the driver's loop.
pub fn hash_state(machine: &StateMachine) -> StateHash {
    let pairs = machine.iter().map(|(key, value)| (&key[..], &value.data[..], value.mod_revision));
    hash_pairs(pairs, machine.applied_index())
}

/// The hash of a state given as its (key, value, mod_revision) triples in key order
/// (as `hash_state`; etcd's HashKV at a past revision hashes a rebuilt state).
pub fn hash_pairs<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8], u64)>, revision: u64) -> StateHash {
    let (mut crc, mut keys, mut bytes) = (0u32, 0u64, 0u64);
    for (key, data, mod_revision) in pairs {
        // Keys and values are bounded far below u32::MAX by the edge; a longer one
        // would still hash deterministically by its truncated length.
        crc = crc32c::crc32c_append(crc, &(key.len() as u32).to_le_bytes());
        crc = crc32c::crc32c_append(crc, key);
        crc = crc32c::crc32c_append(crc, &(data.len() as u32).to_le_bytes());
        crc = crc32c::crc32c_append(crc, data);
        crc = crc32c::crc32c_append(crc, &mod_revision.to_le_bytes());
        keys += 1;
        bytes += (key.len() + data.len()) as u64;
    }
    StateHash { revision, crc32c: crc, keys, bytes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Command;

    fn machine(writes: &[(&str, &str)]) -> StateMachine {
        let mut machine = StateMachine::default();
        for (i, (key, value)) in writes.iter().enumerate() {
            machine.apply(i as u64 + 1, &Command::put(key.to_string(), value.to_string()));
        }
        machine
    }

    #[test]
    fn equal_states_hash_equal_whatever_the_order_they_were_built_in() {
        let a = machine(&[("a", "1"), ("b", "2")]);
        let mut b = StateMachine::default();
        b.apply(1, &Command::put("a", "1"));
        b.apply(2, &Command::put("b", "2"));
        assert_eq!(hash_state(&a), hash_state(&b));
        assert_eq!(hash_state(&a).keys, 2);
        assert_eq!(hash_state(&a).bytes, 4);
        assert_eq!(hash_state(&a).revision, 2);
    }

    #[test]
    fn a_different_value_key_or_version_changes_the_hash() {
        let base = hash_state(&machine(&[("a", "1"), ("b", "2")])).crc32c;
        assert_ne!(base, hash_state(&machine(&[("a", "1"), ("b", "3")])).crc32c, "value");
        assert_ne!(base, hash_state(&machine(&[("a", "1"), ("c", "2")])).crc32c, "key");
        // The same pairs written in the other order: the revisions differ.
        assert_ne!(base, hash_state(&machine(&[("b", "2"), ("a", "1")])).crc32c, "version");
        // Lengths are hashed: moving a byte from a key to its value is seen.
        assert_ne!(
            hash_state(&machine(&[("ab", "c")])).crc32c,
            hash_state(&machine(&[("a", "bc")])).crc32c,
            "boundary"
        );
    }

    #[test]
    fn a_hash_check_changes_nothing_but_the_revision() {
        let mut machine = machine(&[("a", "1")]);
        let before = hash_state(&machine);
        machine.apply(2, &Command::HashCheck);
        let after = hash_state(&machine);
        assert_eq!((after.crc32c, after.keys, after.revision), (before.crc32c, before.keys, 2));
    }
}
