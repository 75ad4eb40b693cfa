//! Behaviour of the state machine, its command encoding and its snapshot payload.

use std::collections::HashMap;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

fn put_if(key: &str, value: &str, condition: Condition) -> Command {
    Command::Put {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        condition,
        lease: 0,
    }
}

fn delete_if(key: &str, condition: Condition) -> Command {
    Command::Delete { key: Bytes::copy_from_slice(key.as_bytes()), condition }
}

/// The key's value and `mod_revision`.
fn value_of(state: &StateMachine, key: &str) -> Option<(Vec<u8>, u64)> {
    state.get(key.as_bytes()).map(|value| (value.data.to_vec(), value.mod_revision))
}

/// The key's `(create_revision, mod_revision, version)`.
fn revisions_of(state: &StateMachine, key: &str) -> Option<(u64, u64, u64)> {
    state.get(key.as_bytes()).map(|value| (value.create_revision, value.mod_revision, value.version))
}

/// A snapshot payload in format 1 or 2 (one revision a key, the `mod_revision`), as
/// releases before the key revisions wrote it.
fn old_snapshot_bytes(state: &StateMachine, format_version: u8) -> Vec<u8> {
    assert!((1..=4).contains(&format_version));
    assert!(state.leases().next().is_none(), "formats before 5 hold no leases");
    let mut out = vec![format_version];
    out.extend_from_slice(&state.applied_index().to_le_bytes());
    out.extend_from_slice(&(state.len() as u64).to_le_bytes());
    let put_value = |out: &mut Vec<u8>, value: &Value| {
        out.extend_from_slice(&value.create_revision.to_le_bytes());
        out.extend_from_slice(&value.mod_revision.to_le_bytes());
        out.extend_from_slice(&value.version.to_le_bytes());
        out.extend_from_slice(&(value.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&value.data);
    };
    for (key, value) in state.iter() {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        if format_version >= 3 {
            put_value(&mut out, value);
        } else {
            out.extend_from_slice(&value.mod_revision.to_le_bytes());
            out.extend_from_slice(&(value.data.len() as u32).to_le_bytes());
            out.extend_from_slice(&value.data);
        }
    }
    if format_version >= 2 {
        state.cluster().encode(&mut out);
    }
    if format_version == 4 {
        let history = state.history();
        out.extend_from_slice(&history.compact_revision().to_le_bytes());
        out.extend_from_slice(&(history.len() as u64).to_le_bytes());
        for event in history.events().iter() {
            out.extend_from_slice(&event.revision.to_le_bytes());
            let kind = if event.kind == EventKind::Put { 1 } else { 2 };
            out.extend_from_slice(&[kind, u8::from(event.previous.is_some())]);
            out.extend_from_slice(&(event.key.len() as u32).to_le_bytes());
            out.extend_from_slice(&event.key);
            for value in event.value.iter().chain(event.previous.iter()) {
                put_value(&mut out, value);
            }
        }
    }
    out
}

fn snapshot_bytes(state: &StateMachine) -> Vec<u8> {
    let mut out = Vec::new();
    let written = state.write_snapshot(&mut out).unwrap();
    assert_eq!(written, out.len() as u64);
    out
}

#[test]
fn put_sets_mod_revision_to_the_applying_index() {
    let mut state = StateMachine::new();
    assert_eq!(state.apply(3, &Command::put("a", "1")), Outcome::Written { revision: 3, created: true });
    assert_eq!(state.apply(7, &Command::put("a", "2")), Outcome::Written { revision: 7, created: false });
    assert_eq!(value_of(&state, "a"), Some((b"2".to_vec(), 7)));
    assert_eq!(state.applied_index(), 7);
    assert_eq!(state.revision(), 7, "the store's revision is the applied index");
}

/// etcd v3's meanings: `create_revision` is the creating write's revision, `mod_revision`
/// the last write's, `version` the number of writes since creation (1 on create).
#[test]
fn a_key_is_created_at_its_first_write_and_counts_every_write_after() {
    let mut state = StateMachine::new();
    state.apply(3, &Command::put("a", "1"));
    assert_eq!(revisions_of(&state, "a"), Some((3, 3, 1)));
    state.apply(7, &Command::put("a", "2"));
    assert_eq!(revisions_of(&state, "a"), Some((3, 7, 2)));
    state.advance_applied(8);
    state.apply(9, &Command::put("b", "x"));
    state.apply(12, &Command::put("a", "2"));
    assert_eq!(revisions_of(&state, "a"), Some((3, 12, 3)), "a write of the same value counts too");
    assert_eq!(revisions_of(&state, "b"), Some((9, 9, 1)), "other keys are their own");
}

#[test]
fn a_conditional_put_counts_as_a_write_only_when_its_condition_holds() {
    let mut state = StateMachine::new();
    state.apply(1, &put_if("a", "1", Condition::Absent));
    assert_eq!(revisions_of(&state, "a"), Some((1, 1, 1)));
    state.apply(2, &put_if("a", "x", Condition::Absent));
    state.apply(3, &put_if("a", "x", Condition::VersionEquals(2)));
    assert_eq!(revisions_of(&state, "a"), Some((1, 1, 1)), "failed conditions change nothing");
    state.apply(4, &put_if("a", "2", Condition::VersionEquals(1)));
    assert_eq!(revisions_of(&state, "a"), Some((1, 4, 2)));
    state.apply(5, &put_if("a", "3", Condition::VersionEquals(4)));
    assert_eq!(revisions_of(&state, "a"), Some((1, 5, 3)));
}

/// A key deleted and written again is a new key: created at that write, version 1.
#[test]
fn a_deleted_key_written_again_starts_over_at_version_1() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("a", "1"));
    state.apply(2, &Command::put("a", "2"));
    state.apply(3, &Command::put("a", "3"));
    assert_eq!(state.apply(4, &Command::delete("a")), Outcome::Deleted { previous_mod_revision: 3 });
    assert_eq!(revisions_of(&state, "a"), None);
    assert_eq!(state.apply(6, &Command::put("a", "new")), Outcome::Written { revision: 6, created: true });
    assert_eq!(revisions_of(&state, "a"), Some((6, 6, 1)));
    state.apply(7, &Command::put("a", "newer"));
    assert_eq!(revisions_of(&state, "a"), Some((6, 7, 2)));
    state.apply(8, &delete_if("a", Condition::VersionEquals(7)));
    state.apply(9, &put_if("a", "created", Condition::Absent));
    assert_eq!(revisions_of(&state, "a"), Some((9, 9, 1)), "a conditional delete and create too");
}

/// An import is a put of each pair at its revision: new keys are created at it, existing
/// ones get their next version, and a key listed twice is one write (its last value).
#[test]
fn an_import_creates_new_keys_updates_existing_ones_and_writes_a_repeated_key_once() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("old", "1"));
    state.apply(2, &Command::put("old", "2"));
    let pairs = vec![("old", "3"), ("new", "a"), ("twice", "x"), ("twice", "y")];
    let pairs = pairs.into_iter().map(|(key, value)| (Bytes::from(key), Bytes::from(value))).collect();
    assert_eq!(state.apply(5, &Command::Import { pairs }), Outcome::Imported { count: 4, revision: 5 });
    assert_eq!(revisions_of(&state, "old"), Some((1, 5, 3)));
    assert_eq!(revisions_of(&state, "new"), Some((5, 5, 1)));
    assert_eq!(revisions_of(&state, "twice"), Some((5, 5, 1)));
    assert_eq!(value_of(&state, "twice"), Some((b"y".to_vec(), 5)));
}

#[test]
fn every_key_revision_survives_a_snapshot_round_trip() {
    let mut state = StateMachine::new();
    // Version 3, which holds every revision, is written once the cluster has its record.
    state.apply(1, &Command::Bootstrap { cluster_id: 0xc1, members: vec![(7, "a:1".into())] });
    state.apply(2, &Command::put("a", "1"));
    state.apply(3, &Command::put("a", "2"));
    state.apply(4, &Command::put("b", "1"));
    state.apply(5, &Command::delete("b"));
    state.apply(6, &Command::put("b", "2"));
    state.apply(7, &Command::put("b", "3"));
    let loaded = StateMachine::load_snapshot(&snapshot_bytes(&state)).unwrap();
    assert_eq!(revisions_of(&loaded, "a"), Some((2, 3, 2)));
    assert_eq!(revisions_of(&loaded, "b"), Some((6, 7, 2)));
    let mut loaded = loaded;
    loaded.apply(8, &Command::put("a", "3"));
    assert_eq!(revisions_of(&loaded, "a"), Some((2, 8, 3)), "the count goes on after a restore");
}

#[test]
fn if_match_put_succeeds_only_on_the_current_version() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("a", "1"));
    assert_eq!(
        state.apply(2, &put_if("a", "stale", Condition::VersionEquals(9))),
        Outcome::PreconditionFailed { current_mod_revision: Some(1) }
    );
    assert_eq!(value_of(&state, "a"), Some((b"1".to_vec(), 1)));
    assert_eq!(
        state.apply(3, &put_if("a", "fresh", Condition::VersionEquals(1))),
        Outcome::Written { revision: 3, created: false }
    );
    assert_eq!(value_of(&state, "a"), Some((b"fresh".to_vec(), 3)));
}

#[test]
fn if_match_put_on_a_missing_key_fails_without_creating_it() {
    let mut state = StateMachine::new();
    assert_eq!(
        state.apply(1, &put_if("a", "1", Condition::VersionEquals(1))),
        Outcome::PreconditionFailed { current_mod_revision: None }
    );
    assert!(state.is_empty());
    assert_eq!(state.applied_index(), 1, "a failed command still consumes its index");
}

#[test]
fn if_none_match_put_creates_only() {
    let mut state = StateMachine::new();
    assert_eq!(
        state.apply(1, &put_if("a", "1", Condition::Absent)),
        Outcome::Written { revision: 1, created: true }
    );
    assert_eq!(
        state.apply(2, &put_if("a", "2", Condition::Absent)),
        Outcome::PreconditionFailed { current_mod_revision: Some(1) }
    );
    assert_eq!(value_of(&state, "a"), Some((b"1".to_vec(), 1)));
}

#[test]
fn conditional_delete_removes_only_the_matching_version() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("a", "1"));
    assert_eq!(
        state.apply(2, &delete_if("a", Condition::VersionEquals(5))),
        Outcome::PreconditionFailed { current_mod_revision: Some(1) }
    );
    assert_eq!(
        state.apply(3, &delete_if("a", Condition::Absent)),
        Outcome::PreconditionFailed { current_mod_revision: Some(1) }
    );
    assert_eq!(
        state.apply(4, &delete_if("a", Condition::VersionEquals(1))),
        Outcome::Deleted { previous_mod_revision: 1 }
    );
    assert_eq!(state.get(b"a"), None);
    assert_eq!(
        state.apply(5, &delete_if("a", Condition::VersionEquals(1))),
        Outcome::PreconditionFailed { current_mod_revision: None }
    );
}

#[test]
fn unconditional_delete_of_a_missing_key_is_not_found() {
    let mut state = StateMachine::new();
    assert_eq!(state.apply(1, &Command::delete("nope")), Outcome::NotFound);
    assert_eq!(state.apply(2, &delete_if("nope", Condition::Absent)), Outcome::NotFound);
}

#[test]
fn import_writes_every_pair_at_one_version_and_last_duplicate_wins() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("keep", "old"));
    let pairs = vec![("b", "1"), ("a", "2"), ("b", "3")];
    let pairs = pairs.into_iter().map(|(key, value)| (Bytes::from(key), Bytes::from(value))).collect();
    assert_eq!(state.apply(2, &Command::Import { pairs }), Outcome::Imported { count: 3, revision: 2 });
    assert_eq!(value_of(&state, "a"), Some((b"2".to_vec(), 2)));
    assert_eq!(value_of(&state, "b"), Some((b"3".to_vec(), 2)));
    assert_eq!(value_of(&state, "keep"), Some((b"old".to_vec(), 1)));
    assert_eq!(state.len(), 3);
}

#[test]
fn prefix_listing_is_ordered_bounded_and_stops_at_the_prefix() {
    let mut state = StateMachine::new();
    for (index, key) in ["user/3", "user/1", "users", "user/2", "usea", "user0", "v"].iter().enumerate() {
        state.apply(index as u64 + 1, &Command::put(*key, "x"));
    }
    let keys = |prefix: &[u8], limit| {
        state.list(prefix, None, limit).map(|(key, _)| key.clone()).collect::<Vec<_>>()
    };
    assert_eq!(keys(b"user/", 10), vec!["user/1", "user/2", "user/3"]);
    assert_eq!(keys(b"user/", 2), vec!["user/1", "user/2"]);
    assert_eq!(keys(b"user", 10), vec!["user/1", "user/2", "user/3", "user0", "users"]);
    assert_eq!(keys(b"", 3), vec!["usea", "user/1", "user/2"]);
    assert_eq!(keys(b"w", 10), Vec::<Bytes>::new());
    assert_eq!(keys(b"user/", 0), Vec::<Bytes>::new());
}

/// A page continues after the last key of the one before: never that key again, never
/// a key past the prefix, and a cursor before the prefix starts at the prefix.
#[test]
fn a_listing_continues_after_the_key_it_is_given() {
    let mut state = StateMachine::new();
    for (index, key) in ["user/3", "user/1", "users", "user/2", "usea", "user0", "v"].iter().enumerate() {
        state.apply(index as u64 + 1, &Command::put(*key, "x"));
    }
    let keys = |prefix: &[u8], after: &[u8], limit| {
        state.list(prefix, Some(after), limit).map(|(key, _)| key.clone()).collect::<Vec<_>>()
    };
    assert_eq!(keys(b"user/", b"user/1", 10), vec!["user/2", "user/3"]);
    assert_eq!(keys(b"user/", b"user/1", 1), vec!["user/2"]);
    assert_eq!(keys(b"user/", b"user/10", 10), vec!["user/2", "user/3"], "a cursor between keys");
    assert_eq!(keys(b"user/", b"user/3", 10), Vec::<Bytes>::new(), "after the last key");
    assert_eq!(keys(b"user/", b"a", 2), vec!["user/1", "user/2"], "a cursor before the prefix");
    assert_eq!(keys(b"user/", b"z", 2), Vec::<Bytes>::new(), "a cursor past the prefix");
    assert_eq!(keys(b"", b"user0", 10), vec!["users", "v"]);
}

#[test]
#[should_panic(expected = "does not follow applied index")]
fn applying_an_index_twice_panics() {
    let mut state = StateMachine::new();
    state.apply(5, &Command::put("a", "1"));
    state.apply(5, &Command::put("a", "2"));
}

#[test]
fn advance_applied_moves_the_index_without_changing_the_map() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("a", "1"));
    state.advance_applied(2);
    assert_eq!(state.applied_index(), 2);
    assert_eq!(value_of(&state, "a"), Some((b"1".to_vec(), 1)));
}

/// The map's share of `approximate_bytes` (the history's taken out).
fn map_bytes(state: &StateMachine) -> u64 {
    state.approximate_bytes() - state.history().approximate_bytes()
}

#[test]
fn approximate_bytes_tracks_keys_and_values() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("ab", "1234"));
    assert_eq!(map_bytes(&state), 6 + PER_KEY_OVERHEAD_BYTES);
    state.apply(2, &Command::put("ab", "1"));
    assert_eq!(map_bytes(&state), 3 + PER_KEY_OVERHEAD_BYTES);
    state.apply(3, &Command::delete("ab"));
    assert_eq!(map_bytes(&state), 0);
}

#[test]
fn data_bytes_follow_overwrites_deletes_imports_and_a_snapshot_round_trip() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("key", "12345"));
    state.apply(2, &Command::put("other", "x"));
    assert_eq!(map_bytes(&state), 8 + 6 + 2 * PER_KEY_OVERHEAD_BYTES);
    state.apply(3, &Command::put("key", "123456789"));
    assert_eq!(map_bytes(&state), 12 + 6 + 2 * PER_KEY_OVERHEAD_BYTES, "a longer value");
    state.apply(4, &put_if("key", "1", Condition::VersionEquals(1)));
    assert_eq!(map_bytes(&state), 12 + 6 + 2 * PER_KEY_OVERHEAD_BYTES, "a failed condition");
    state
        .apply(5, &Command::Import { pairs: vec![("other".into(), "yy".into()), ("new".into(), "".into())] });
    assert_eq!(map_bytes(&state), 12 + 7 + 3 + 3 * PER_KEY_OVERHEAD_BYTES, "an import");
    let loaded = StateMachine::load_snapshot(&snapshot_bytes(&state)).unwrap();
    assert_eq!(loaded.approximate_bytes(), state.approximate_bytes(), "after a snapshot round trip");
    let shared = StateMachine::load_snapshot_shared(&Bytes::from(snapshot_bytes(&state))).unwrap();
    assert_eq!(shared.approximate_bytes(), state.approximate_bytes());
    state.apply(6, &Command::delete("key"));
    state.apply(7, &Command::delete("absent"));
    assert_eq!(map_bytes(&state), 7 + 3 + 2 * PER_KEY_OVERHEAD_BYTES, "after deletes");
}

#[test]
fn growth_bytes_is_what_a_write_would_add() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("key", "12345"));
    // Every write adds an event too: its key, value, previous value and overhead.
    let event = |key: u64, value: u64, previous: u64| key + value + previous + PER_EVENT_OVERHEAD_BYTES;
    assert_eq!(
        state.growth_bytes(&Command::put("new", "1")),
        4 + PER_KEY_OVERHEAD_BYTES + event(3, 1, 0),
        "a new key"
    );
    assert_eq!(state.growth_bytes(&Command::put("key", "1234567")), 2 + event(3, 7, 5), "a longer value");
    assert_eq!(state.growth_bytes(&Command::put("key", "1")), event(3, 1, 5), "a shorter value");
    assert_eq!(state.growth_bytes(&Command::delete("key")), event(3, 0, 5), "a delete");
    assert_eq!(state.growth_bytes(&Command::delete("absent")), 0, "a delete of nothing");
    // The quota asks the map's growth only: deletes and shorter values add nothing.
    assert_eq!(state.map_growth_bytes(&Command::delete("key")), 0);
    assert_eq!(state.map_growth_bytes(&Command::put("key", "1")), 0);
    assert_eq!(state.map_growth_bytes(&Command::put("key", "1234567")), 2);
    assert_eq!(state.map_growth_bytes(&Command::put("new", "1")), 4 + PER_KEY_OVERHEAD_BYTES);
    // The bound without a lookup is never below the exact growth: a new key's.
    for command in [
        Command::put("key", "1"),
        Command::put("key", "1234567"),
        Command::put("new", "1"),
        Command::delete("key"),
        Command::delete("absent"),
    ] {
        let bound = StateMachine::map_growth_bound(&command).unwrap();
        assert!(bound >= state.map_growth_bytes(&command), "{command:?}: bound {bound}");
    }
    assert_eq!(StateMachine::map_growth_bound(&Command::put("new", "1")), Some(4 + PER_KEY_OVERHEAD_BYTES));
    let import = Command::Import { pairs: vec![("key".into(), "123456".into()), ("a".into(), "b".into())] };
    assert_eq!(state.growth_bytes(&import), 1 + event(3, 6, 5) + 2 + PER_KEY_OVERHEAD_BYTES + event(1, 1, 0));
}

#[test]
fn snapshot_round_trip_equals_the_map() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("a", "1"));
    state.apply(2, &Command::put("", ""));
    state.apply(4, &Command::put(vec![0u8, 255], vec![7u8; 300]));
    state.advance_applied(9);
    let bytes = snapshot_bytes(&state);
    assert_eq!(StateMachine::load_snapshot(&bytes).unwrap(), state);
    assert_eq!(StateMachine::load_snapshot_shared(&Bytes::from(bytes)).unwrap(), state);
}

#[test]
fn snapshot_of_an_empty_machine_is_the_header_and_an_empty_cluster_record() {
    let bytes = snapshot_bytes(&StateMachine::new());
    assert_eq!(
        bytes.len(),
        17 + 16 + 16 + 8,
        "header, cluster record, history's compaction point and count, lease count"
    );
    assert_eq!(bytes.len(), StateMachine::new().snapshot_len());
    assert_eq!(StateMachine::load_snapshot(&bytes).unwrap(), StateMachine::new());
}

/// For a member of v0.1.0 (during a rolling upgrade, a cluster without its record) the
/// payload is rewritten in v0.1.0's format, version 1, byte for byte, so it loads the
/// snapshot a new leader sends it.
#[test]
fn a_snapshot_for_a_v0_1_0_member_is_written_in_version_1_byte_for_byte() {
    let mut state = StateMachine::new();
    state.apply(3, &Command::put("k", "v"));
    let mut bytes = Vec::new();
    state.write_snapshot_v1(&mut bytes).unwrap();
    let mut expected = vec![1u8];
    expected.extend_from_slice(&3u64.to_le_bytes());
    expected.extend_from_slice(&1u64.to_le_bytes());
    expected.extend_from_slice(&1u32.to_le_bytes());
    expected.extend_from_slice(b"k");
    expected.extend_from_slice(&3u64.to_le_bytes());
    expected.extend_from_slice(&1u32.to_le_bytes());
    expected.extend_from_slice(b"v");
    assert_eq!(bytes, expected);
    let loaded = StateMachine::load_snapshot(&bytes).unwrap();
    assert!(loaded.iter().eq(state.iter()));
    assert_eq!(loaded.applied_index(), 3);
    assert_eq!(loaded.history().compact_revision(), 3, "no history before the snapshot");
    assert_eq!(loaded.cluster().id(), 0);
}

/// Formats 1 and 2 hold one revision a key: it loads as a key created by its last write
/// (`create_revision = mod_revision`, `version = 1`), the documented approximation.
#[test]
fn version_1_and_2_snapshots_load_each_key_as_created_at_its_last_write() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::Bootstrap { cluster_id: 0xc1, members: vec![(7, "a:1".into())] });
    state.apply(2, &Command::put("a", "1"));
    state.apply(3, &Command::put("a", "2"));
    state.apply(4, &Command::put("b", "x"));
    assert_eq!(revisions_of(&state, "a"), Some((2, 3, 2)));
    for format_version in [1, 2] {
        let loaded = StateMachine::load_snapshot(&old_snapshot_bytes(&state, format_version)).unwrap();
        assert_eq!(revisions_of(&loaded, "a"), Some((3, 3, 1)), "format {format_version}");
        assert_eq!(revisions_of(&loaded, "b"), Some((4, 4, 1)), "format {format_version}");
        assert_eq!(value_of(&loaded, "a"), value_of(&state, "a"));
        assert_eq!(loaded.applied_index(), 4);
        assert_eq!(loaded.cluster().id(), if format_version == 2 { 0xc1 } else { 0 });
        let mut loaded = loaded;
        loaded.apply(5, &Command::put("a", "3"));
        assert_eq!(revisions_of(&loaded, "a"), Some((3, 5, 2)));
    }
}

/// Revisions that break `Value`'s rules are refused at the record's revisions, naming
/// the rule.
#[test]
fn a_snapshot_whose_revisions_break_the_rules_is_refused_naming_the_rule() {
    let mut state = StateMachine::new();
    // Version 3 is written once the cluster has its record.
    state.apply(3, &Command::Bootstrap { cluster_id: 0xc1, members: vec![(7, "a:1".into())] });
    state.apply(4, &Command::put("k", "v"));
    let bytes = snapshot_bytes(&state);
    // The record starts at 17: u32 length, "k", then the revisions at 22, 30 and 38.
    let with = |create: u64, modified: u64, version: u64| {
        let mut bytes = bytes.clone();
        bytes[22..30].copy_from_slice(&create.to_le_bytes());
        bytes[30..38].copy_from_slice(&modified.to_le_bytes());
        bytes[38..46].copy_from_slice(&version.to_le_bytes());
        StateMachine::load_snapshot(&bytes)
    };
    assert_eq!(with(4, 4, 1).unwrap(), state);
    let refused = |reason| Err(DecodeError::Invalid { offset: 22, reason });
    assert_eq!(with(0, 4, 1), refused("create_revision is 0"));
    assert_eq!(with(5, 4, 1), refused("create_revision above mod_revision"));
    assert_eq!(with(1, 4, 0), refused("version is 0"));
    assert_eq!(with(2, 4, 4), refused("version above the revisions since creation"));
    assert_eq!(with(2, 4, 1), refused("version 1 but mod_revision and create_revision differ"));
    assert_eq!(with(1, 5, 1), refused("mod_revision outside 1..=applied index"));
}

/// Builds of this release before it wrote version 2 with an empty record: still loads.
#[test]
fn a_version_2_snapshot_with_an_empty_cluster_record_still_loads() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("k", "v"));
    let loaded = StateMachine::load_snapshot(&old_snapshot_bytes(&state, 2)).unwrap();
    assert!(loaded.iter().eq(state.iter()));
    assert_eq!(loaded.cluster().id(), 0);
    assert_eq!(loaded.applied_index(), 1);
}

#[test]
fn the_cluster_record_survives_a_snapshot_and_is_applied_once() {
    let mut state = StateMachine::new();
    let members = vec![(1, "10.0.0.1:3001".to_owned()), (2, "10.0.0.2:3001".to_owned())];
    let bootstrap = Command::Bootstrap { cluster_id: 0xc1, members };
    assert_eq!(Command::decode(&bootstrap.encode()).unwrap(), bootstrap);
    assert_eq!(state.apply(1, &bootstrap), Outcome::Cluster { applied: true });
    let again = Command::Bootstrap { cluster_id: 0xc2, members: vec![(5, "x:1".to_owned())] };
    assert_eq!(state.apply(2, &again), Outcome::Cluster { applied: false });
    let moved = Command::UpdateMember { id: 2, address: "10.0.0.9:3001".to_owned() };
    assert_eq!(Command::decode(&moved.encode()).unwrap(), moved);
    assert_eq!(state.apply(3, &moved), Outcome::Cluster { applied: true });
    let learner =
        MemberChange::AddLearner { id: 7, address: "10.0.0.7:3001".into(), promote_when_caught_up: true };
    state.apply_member_change(4, &learner).unwrap();
    state.apply_member_change(5, &MemberChange::Remove { id: 1 }).unwrap();
    let started = Command::MemberStarted { id: 2 };
    assert_eq!(Command::decode(&started.encode()).unwrap(), started);
    assert_eq!(state.apply(6, &started), Outcome::Cluster { applied: true });
    assert_eq!(state.apply(7, &Command::MemberStarted { id: 1 }), Outcome::Cluster { applied: false });
    let bytes = snapshot_bytes(&state);
    assert_eq!(bytes[0], SNAPSHOT_FORMAT_VERSION);
    assert_eq!(bytes.len(), state.snapshot_len());
    let loaded = StateMachine::load_snapshot(&bytes).unwrap();
    assert_eq!(loaded, state);
    let cluster = loaded.cluster();
    assert_eq!(cluster.id(), 0xc1);
    assert_eq!(cluster.members()[&2].address, "10.0.0.9:3001");
    assert_eq!(cluster.members()[&7].role, MemberRole::Learner);
    assert!(cluster.is_removed(1));
    assert!(cluster.members()[&2].started && !cluster.members()[&7].started);
    assert_eq!(loaded.applied_index(), 7);
}

#[test]
fn snapshot_with_unsorted_keys_is_rejected_at_the_second_key() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("a", ""));
    state.apply(2, &Command::put("b", ""));
    let mut bytes = snapshot_bytes(&state);
    // Records start at 17; each is 4 + 1 + 32 + 4 bytes here. Rename "b" to "a".
    bytes[17 + 41 + 4] = b'a';
    assert_eq!(
        StateMachine::load_snapshot(&bytes),
        Err(DecodeError::Invalid { offset: 58, reason: "keys not strictly increasing" })
    );
}

#[test]
fn snapshot_with_a_mod_revision_beyond_the_applied_index_is_rejected() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("a", ""));
    let mut bytes = snapshot_bytes(&state);
    bytes[1] = 0; // applied index 0 < mod_revision 1
    assert_eq!(
        StateMachine::load_snapshot(&bytes),
        Err(DecodeError::Invalid { offset: 22, reason: "mod_revision outside 1..=applied index" })
    );
}

#[test]
fn snapshot_with_a_huge_count_is_rejected_before_allocating() {
    let mut bytes = snapshot_bytes(&StateMachine::new());
    bytes[9..17].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(
        StateMachine::load_snapshot(&bytes),
        // What follows the header is the empty cluster record, the empty history and
        // the empty lease table.
        Err(DecodeError::CountTooLarge { offset: 9, count: u64::MAX, available: 40 })
    );
}

#[test]
fn every_truncation_of_a_snapshot_is_an_error() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("key", "value"));
    state.apply(2, &Command::put("other", ""));
    let bytes = snapshot_bytes(&state);
    for len in 0..bytes.len() {
        assert!(StateMachine::load_snapshot(&bytes[..len]).is_err(), "prefix of {len} bytes loaded");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(
        StateMachine::load_snapshot(&longer),
        Err(DecodeError::TrailingBytes { offset: bytes.len(), count: 1 })
    );
}

#[test]
fn command_encoding_has_version_and_tag_bytes() {
    let encoded = Command::put("k", "v").encode();
    assert_eq!(&encoded[..], &[1, 1, 0, 1, 0, 0, 0, b'k', 1, 0, 0, 0, b'v']);
}

#[test]
fn command_decode_rejects_bad_tags_versions_and_trailing_bytes() {
    assert_eq!(Command::decode(&[]), Err(DecodeError::Truncated { offset: 0, needed: 1, available: 0 }));
    assert_eq!(
        Command::decode(&[2, 1]),
        Err(DecodeError::UnsupportedVersion { offset: 0, version: 2, reads: "version 1" })
    );
    assert_eq!(
        Command::decode(&[1, 99]),
        Err(DecodeError::UnknownTag { offset: 1, what: "command", tag: 99 })
    );
    assert_eq!(
        Command::decode(&[1, 2, 7, 0, 0, 0, 0]),
        Err(DecodeError::UnknownTag { offset: 2, what: "condition", tag: 7 })
    );
    assert_eq!(
        Command::decode(&[1, 2, 0, 0, 0, 0, 0, 42]),
        Err(DecodeError::TrailingBytes { offset: 7, count: 1 })
    );
    assert_eq!(
        Command::decode(&[1, 3, 255, 255, 255, 255]),
        Err(DecodeError::CountTooLarge { offset: 2, count: u32::MAX as u64, available: 0 })
    );
}

#[test]
fn legacy_db_json_parses_a_string_object_sorted_by_key() {
    let pairs = parse_legacy_db_json(br#"{"b": "2", "a": "1", "b": "3"}"#).unwrap();
    assert_eq!(pairs, vec![("a".to_string(), "1".to_string()), ("b".to_string(), "3".to_string())]);
    assert_eq!(parse_legacy_db_json(b"{}").unwrap(), vec![]);
    let command = import_command(pairs);
    assert_eq!(Command::decode(&command.encode()), Ok(command));
}

#[test]
fn legacy_db_json_rejects_anything_but_an_object_of_strings() {
    let error = parse_legacy_db_json(b"[1]").unwrap_err();
    assert!(matches!(error, LegacyImportError::NotAnObject { found: "an array" }), "{error}");
    let error = parse_legacy_db_json(br#"{"k": 1}"#).unwrap_err();
    assert!(matches!(&error, LegacyImportError::ValueNotAString { key, found: "a number" } if key == "k"));
    assert_eq!(error.to_string(), "db.json value of key \"k\" must be a string, found a number");
    assert!(matches!(parse_legacy_db_json(b"{\"k\": "), Err(LegacyImportError::NotJson(_))));
}

fn arb_condition() -> impl Strategy<Value = Condition> {
    prop_oneof![Just(Condition::None), Just(Condition::Absent), (0u64..40).prop_map(Condition::VersionEquals),]
}

/// Small key alphabet so commands collide on keys.
fn arb_key() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(0u8..3, 0..3).prop_map(Bytes::from)
}

fn arb_value() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..8).prop_map(Bytes::from)
}

fn arb_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        4 => (arb_key(), arb_value(), arb_condition(), prop_oneof![3 => Just(0u64), 1 => 1u64..4])
            .prop_map(|(key, value, condition, lease)| Command::Put { key, value, condition, lease }),
        1 => (1u64..4, 1u64..100).prop_map(|(id, ttl_s)| Command::LeaseGrant { id, ttl_s }),
        1 => (1u64..4).prop_map(|id| Command::LeaseRevoke { id }),
        2 => (arb_key(), arb_condition()).prop_map(|(key, condition)| Command::Delete { key, condition }),
        1 => prop::collection::vec((arb_key(), arb_value()), 0..4).prop_map(|pairs| Command::Import { pairs }),
        1 => Just(Command::HashCheck),
        1 => (0u64..200).prop_map(|revision| Command::Compact { revision }),
        3 => arb_txn().prop_map(Command::Txn),
    ]
}

fn arb_compare() -> impl Strategy<Value = Compare> {
    let target = prop_oneof![
        arb_value().prop_map(CompareTarget::Value),
        (0u64..4).prop_map(CompareTarget::Version),
        (0u64..40).prop_map(CompareTarget::CreateRevision),
        (0u64..40).prop_map(CompareTarget::ModRevision),
        (0u64..4).prop_map(CompareTarget::Lease),
    ];
    let op = prop_oneof![
        Just(CompareOp::Eq),
        Just(CompareOp::NotEq),
        Just(CompareOp::Less),
        Just(CompareOp::Greater)
    ];
    let span = prop_oneof![
        3 => Just(CompareSpan::Key),
        1 => prop::option::of(arb_key()).prop_map(CompareSpan::Range),
    ];
    (arb_key(), span, target, op).prop_map(|(key, span, target, op)| Compare { key, span, target, op })
}

/// The model's range rule, written from etcd's definition rather than shared with the
/// state machine: `[start, end)`, every key from `start` on without an end.
fn model_in_range(key: &Bytes, start: &Bytes, end: &Option<Bytes>) -> bool {
    start.as_ref() <= key.as_ref() && end.as_ref().is_none_or(|end| key.as_ref() < end.as_ref())
}

/// Ops as they come: a branch may write a key twice (a forged entry; the edge refuses it).
fn arb_txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        3 => (arb_key(), arb_value(), prop_oneof![4 => Just(0u64), 1 => 1u64..4])
            .prop_map(|(key, value, lease)| TxnOp::Put { key, value, lease }),
        1 => arb_key().prop_map(|key| TxnOp::DeleteKey { key }),
        1 => arb_key().prop_map(|prefix| TxnOp::DeletePrefix { prefix }),
        2 => arb_key().prop_map(|key| TxnOp::GetKey { key }),
        2 => (arb_key(), 0u32..4).prop_map(|(prefix, limit)| TxnOp::GetPrefix { prefix, limit }),
        1 => (arb_key(), prop::option::of(arb_key())).prop_map(|(start, end)| TxnOp::DeleteRange { start, end }),
        2 => (arb_key(), prop::option::of(arb_key()), 0u32..4)
            .prop_map(|(start, end, limit)| TxnOp::GetRange { start, end, limit }),
    ]
}

fn arb_txn() -> impl Strategy<Value = Txn> {
    (
        prop::collection::vec(arb_compare(), 0..3),
        prop::collection::vec(arb_txn_op(), 0..5),
        prop::collection::vec(arb_txn_op(), 0..3),
    )
        .prop_map(|(compare, success, failure)| Txn { compare, success, failure })
}

/// A key in the model: its value, `create_revision`, `mod_revision` and `version`.
type ModelValue = (Bytes, u64, u64, u64);

/// The model: a hash map, with conditions and revisions spelled out case by case.
#[derive(Default)]
struct Model {
    map: HashMap<Bytes, ModelValue>,
    /// The history's compaction point.
    compact_revision: u64,
    /// Each lease's TTL.
    leases: HashMap<u64, u64>,
    /// The lease each key is attached to; absent: none.
    key_leases: HashMap<Bytes, u64>,
}

impl Model {
    /// A write of `value` at `index`: created, or the next version of what is there.
    fn write(&mut self, index: u64, key: &Bytes, value: &Bytes) {
        let next = match self.map.get(key) {
            None => (value.clone(), index, index, 1),
            Some(&(_, create, modified, version)) if modified == index => {
                (value.clone(), create, index, version)
            }
            Some(&(_, create, _, version)) => (value.clone(), create, index, version + 1),
        };
        self.map.insert(key.clone(), next);
    }

    fn apply(&mut self, index: u64, command: &Command) -> Outcome {
        match command {
            // The model is of the keys; the cluster record has its own tests.
            Command::Bootstrap { .. } | Command::UpdateMember { .. } | Command::MemberStarted { .. } => {
                unreachable!("arb_command makes no cluster commands")
            }
            Command::Put { key, value, condition, lease } => {
                let current = self.map.get(key).map(|&(_, _, modified, _)| modified);
                let allowed = match (condition, current) {
                    (Condition::None, _) => true,
                    (Condition::Absent, None) => true,
                    (Condition::Absent, Some(_)) => false,
                    (Condition::VersionEquals(expected), Some(modified)) => *expected == modified,
                    (Condition::VersionEquals(_), None) => false,
                };
                if !allowed {
                    return Outcome::PreconditionFailed { current_mod_revision: current };
                }
                if *lease != 0 && !self.leases.contains_key(lease) {
                    return Outcome::LeaseNotFound { id: *lease };
                }
                self.write(index, key, value);
                if *lease == 0 {
                    self.key_leases.remove(key);
                } else {
                    self.key_leases.insert(key.clone(), *lease);
                }
                Outcome::Written { revision: index, created: current.is_none() }
            }
            Command::Delete { key, condition } => {
                let current = self.map.get(key).map(|&(_, _, modified, _)| modified);
                match (condition, current) {
                    (Condition::None, None) | (Condition::Absent, None) => Outcome::NotFound,
                    (Condition::None, Some(modified)) => {
                        self.map.remove(key);
                        self.key_leases.remove(key);
                        Outcome::Deleted { previous_mod_revision: modified }
                    }
                    (Condition::VersionEquals(expected), Some(modified)) if *expected == modified => {
                        self.map.remove(key);
                        self.key_leases.remove(key);
                        Outcome::Deleted { previous_mod_revision: modified }
                    }
                    _ => Outcome::PreconditionFailed { current_mod_revision: current },
                }
            }
            Command::Import { pairs } => {
                for (key, value) in pairs {
                    self.write(index, key, value);
                    self.key_leases.remove(key);
                }
                Outcome::Imported { count: pairs.len(), revision: index }
            }
            Command::HashCheck => Outcome::HashCheck,
            Command::Compact { revision } => {
                let target = (*revision).min(index);
                let moved = target > self.compact_revision;
                self.compact_revision = self.compact_revision.max(target);
                Outcome::Compacted { compact_revision: self.compact_revision, moved }
            }
            Command::LeaseGrant { id, ttl_s } => {
                if self.leases.contains_key(id) {
                    return Outcome::LeaseExists { id: *id };
                }
                self.leases.insert(*id, *ttl_s);
                Outcome::LeaseGranted { id: *id, ttl_s: *ttl_s }
            }
            Command::Txn(txn) => self.apply_txn(index, txn),
            Command::LeaseRevoke { id } => {
                if self.leases.remove(id).is_none() {
                    return Outcome::LeaseNotFound { id: *id };
                }
                let keys: Vec<Bytes> = self
                    .key_leases
                    .iter()
                    .filter(|(_, lease)| *lease == id)
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in &keys {
                    self.key_leases.remove(key);
                    self.map.remove(key);
                }
                Outcome::LeaseRevoked { deleted: keys.len() }
            }
        }
    }
}

impl Model {
    /// The key's value with its revisions and lease, as the state machine's `Value`.
    fn value(&self, key: &Bytes) -> Option<Value> {
        self.map.get(key).map(|(data, create_revision, mod_revision, version)| Value {
            data: data.clone(),
            create_revision: *create_revision,
            mod_revision: *mod_revision,
            version: *version,
            lease: self.key_leases.get(key).copied().unwrap_or(0),
        })
    }

    fn remove(&mut self, key: &Bytes) -> bool {
        self.key_leases.remove(key);
        self.map.remove(key).is_some()
    }

    /// One compare's target and op on one key's value (`None`: missing).
    fn holds_on(&self, compare: &Compare, current: Option<Value>) -> bool {
        let ordering = match (&compare.target, &current) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(expected), Some(value)) => value.data.as_ref().cmp(expected.as_ref()),
            (CompareTarget::Version(n), value) => value.as_ref().map_or(0, |v| v.version).cmp(n),
            (CompareTarget::CreateRevision(n), value) => {
                value.as_ref().map_or(0, |v| v.create_revision).cmp(n)
            }
            (CompareTarget::ModRevision(n), value) => value.as_ref().map_or(0, |v| v.mod_revision).cmp(n),
            (CompareTarget::Lease(n), value) => value.as_ref().map_or(0, |v| v.lease).cmp(n),
        };
        match compare.op {
            CompareOp::Eq => ordering.is_eq(),
            CompareOp::NotEq => ordering.is_ne(),
            CompareOp::Less => ordering.is_lt(),
            CompareOp::Greater => ordering.is_gt(),
        }
    }

    /// etcd's rules spelled out: every compare must hold; a missing key's numbers are
    /// 0 and its value compares false; ops in order at one index; a missing lease
    /// fails it all.
    fn apply_txn(&mut self, index: u64, txn: &Txn) -> Outcome {
        // Over a range: every key in it, or one missing key when it holds none.
        let holds = |compare: &Compare| match &compare.span {
            CompareSpan::Key => self.holds_on(compare, self.value(&compare.key)),
            CompareSpan::Range(end) => {
                let keys: Vec<&Bytes> =
                    self.map.keys().filter(|key| in_range(key, &compare.key, end.as_deref())).collect();
                if keys.is_empty() {
                    self.holds_on(compare, None)
                } else {
                    keys.into_iter().all(|key| self.holds_on(compare, self.value(key)))
                }
            }
        };
        let succeeded = txn.compare.iter().all(holds);
        let ops = if succeeded { &txn.success } else { &txn.failure };
        for op in ops {
            if let TxnOp::Put { lease, .. } = op {
                if *lease != 0 && !self.leases.contains_key(lease) {
                    return Outcome::LeaseNotFound { id: *lease };
                }
            }
        }
        let mut responses = Vec::new();
        for op in ops {
            let response = match op {
                TxnOp::Put { key, value, lease } => {
                    self.write(index, key, value);
                    if *lease == 0 {
                        self.key_leases.remove(key);
                    } else {
                        self.key_leases.insert(key.clone(), *lease);
                    }
                    TxnResponse::Put { revision: index }
                }
                TxnOp::DeleteKey { key } => TxnResponse::Deleted { count: u64::from(self.remove(key)) },
                TxnOp::DeletePrefix { prefix } => {
                    let keys: Vec<Bytes> =
                        self.map.keys().filter(|key| key.starts_with(prefix)).cloned().collect();
                    for key in &keys {
                        self.remove(key);
                    }
                    TxnResponse::Deleted { count: keys.len() as u64 }
                }
                TxnOp::GetKey { key } => {
                    TxnResponse::Get(self.value(key).map(|value| KeyValue { key: key.clone(), value }))
                }
                TxnOp::GetPrefix { prefix, limit } => {
                    let mut keys: Vec<Bytes> =
                        self.map.keys().filter(|key| key.starts_with(prefix)).cloned().collect();
                    keys.sort();
                    let more = keys.len() > *limit as usize;
                    keys.truncate(*limit as usize);
                    let items = keys
                        .into_iter()
                        .map(|key| KeyValue { value: self.value(&key).expect("listed"), key })
                        .collect();
                    TxnResponse::Range { items, more }
                }
                TxnOp::DeleteRange { start, end } => {
                    let keys: Vec<Bytes> =
                        self.map.keys().filter(|key| model_in_range(key, start, end)).cloned().collect();
                    for key in &keys {
                        self.remove(key);
                    }
                    TxnResponse::Deleted { count: keys.len() as u64 }
                }
                TxnOp::GetRange { start, end, limit } => {
                    let mut keys: Vec<Bytes> =
                        self.map.keys().filter(|key| model_in_range(key, start, end)).cloned().collect();
                    keys.sort();
                    let more = keys.len() > *limit as usize;
                    keys.truncate(*limit as usize);
                    let items = keys
                        .into_iter()
                        .map(|key| KeyValue { value: self.value(&key).expect("listed"), key })
                        .collect();
                    TxnResponse::Range { items, more }
                }
            };
            responses.push(response);
        }
        Outcome::Txn(std::sync::Arc::new(TxnOutcome { succeeded, responses }))
    }
}

fn arb_history() -> impl Strategy<Value = Vec<(u64, Command)>> {
    prop::collection::vec((1u64..3, arb_command()), 0..60).prop_map(|steps| {
        let mut index = 0;
        steps
            .into_iter()
            .map(|(gap, command)| {
                index += gap;
                (index, command)
            })
            .collect()
    })
}

/// `history` applied after a bootstrap record at index 1 (each index one later).
fn recorded(history: &[(u64, Command)]) -> StateMachine {
    let mut state = StateMachine::new();
    state.apply(1, &Command::Bootstrap { cluster_id: 0xc1, members: vec![(7, "a:1".into())] });
    for (index, command) in history {
        state.apply(*index + 1, command);
    }
    state
}

fn applied(history: &[(u64, Command)]) -> StateMachine {
    let mut state = StateMachine::new();
    for (index, command) in history {
        state.apply(*index, command);
    }
    state
}

proptest! {
    #[test]
    fn state_machine_agrees_with_the_model(
        history in arb_history(),
        prefix in arb_key(),
        after in prop::option::of(arb_key()),
        limit in 0usize..6,
    ) {
        let mut state = StateMachine::new();
        let mut model = Model::default();
        for (index, command) in &history {
            prop_assert_eq!(state.apply(*index, command), model.apply(*index, command));
        }
        prop_assert_eq!(state.len(), model.map.len());
        for (key, (value, create_revision, mod_revision, version)) in &model.map {
            let expected = Value {
                data: value.clone(),
                create_revision: *create_revision,
                mod_revision: *mod_revision,
                version: *version,
                lease: model.key_leases.get(key).copied().unwrap_or(0),
            };
            prop_assert_eq!(state.get(key), Some(&expected));
            prop_assert_eq!(expected.broken_invariant(), None);
        }
        let payload: usize = model.map.iter().map(|(key, (value, ..))| key.len() + value.len()).sum();
        prop_assert_eq!(
            state.approximate_bytes(),
            payload as u64
                + PER_KEY_OVERHEAD_BYTES * state.len() as u64
                + state.history().approximate_bytes()
                + PER_LEASE_OVERHEAD_BYTES * model.leases.len() as u64
                + PER_LEASED_KEY_BYTES * model.key_leases.len() as u64
        );
        let mut leases: Vec<(u64, u64, Vec<Bytes>)> = model
            .leases
            .iter()
            .map(|(id, ttl_s)| {
                let mut keys: Vec<Bytes> =
                    model.key_leases.iter().filter(|(_, lease)| *lease == id).map(|(key, _)| key.clone()).collect();
                keys.sort();
                (*id, *ttl_s, keys)
            })
            .collect();
        leases.sort();
        let state_leases: Vec<(u64, u64, Vec<Bytes>)> =
            state.leases().map(|(id, lease)| (id, lease.ttl_s, lease.keys().cloned().collect())).collect();
        prop_assert_eq!(state_leases, leases);
        let history_bytes: u64 = state.history().events().iter().map(Event::approximate_bytes).sum();
        prop_assert_eq!(state.history().approximate_bytes(), history_bytes);
        prop_assert_eq!(state.history().compact_revision(), model.compact_revision);
        let mut expected: Vec<&Bytes> = model
            .map
            .keys()
            .filter(|key| key.starts_with(&prefix) && after.as_ref().is_none_or(|after| *key > after))
            .collect();
        expected.sort();
        expected.truncate(limit);
        let listed: Vec<&Bytes> = state.list(&prefix, after.as_deref(), limit).map(|(key, _)| key).collect();
        prop_assert_eq!(listed, expected);
    }

    #[test]
    fn growth_bytes_never_underestimates_an_apply(history in arb_history(), command in arb_command()) {
        let mut state = applied(&history);
        let before = state.approximate_bytes();
        let growth = state.growth_bytes(&command);
        let next = state.applied_index() + 1;
        state.apply(next, &command);
        prop_assert!(state.approximate_bytes() <= before + growth, "{} > {} + {}", state.approximate_bytes(), before, growth);
    }

    #[test]
    fn snapshot_load_preserves_everything(history in arb_history()) {
        // Version 3, with every revision, is written once the cluster has its record.
        let state = recorded(&history);
        let bytes = snapshot_bytes(&state);
        prop_assert_eq!(bytes[0], SNAPSHOT_FORMAT_VERSION);
        prop_assert_eq!(&StateMachine::load_snapshot(&bytes).unwrap(), &state);
        prop_assert_eq!(&StateMachine::load_snapshot_shared(&Bytes::from(bytes)).unwrap(), &state);
    }

    #[test]
    fn a_snapshot_for_a_v0_1_0_member_keeps_every_value_and_mod_revision(history in arb_history()) {
        // Version 1 (for members of v0.1.0): values and mod_revisions exact, the other
        // two revisions approximated as the module doc says.
        let state = applied(&history);
        let mut v1 = Vec::new();
        state.write_snapshot_v1(&mut v1).unwrap();
        let loaded = StateMachine::load_snapshot(&v1).unwrap();
        let exact = |m: &StateMachine| -> Vec<(Bytes, Bytes, u64)> {
            m.iter().map(|(k, v)| (k.clone(), v.data.clone(), v.mod_revision)).collect()
        };
        prop_assert_eq!(exact(&loaded), exact(&state));
        prop_assert_eq!(loaded.applied_index(), state.applied_index());
        prop_assert!(loaded.iter().all(|(_, v)| v.version == 1 && v.create_revision == v.mod_revision));
    }

    #[test]
    fn replaying_the_history_rebuilds_the_map_and_each_event_knows_the_value_before_it(
        history in arb_history(),
    ) {
        // Without compactions, the history holds every change since the empty map.
        let history: Vec<_> =
            history.into_iter().filter(|(_, command)| !matches!(command, Command::Compact { .. })).collect();
        let state = applied(&history);
        let mut replayed: HashMap<Bytes, Value> = HashMap::new();
        let mut last_revision = 0;
        for event in state.history().events().iter() {
            prop_assert!(event.revision >= last_revision, "ordered");
            last_revision = event.revision;
            prop_assert_eq!(event.previous.as_ref(), replayed.get(&event.key), "previous of {:?}", event);
            match event.kind {
                EventKind::Put => {
                    let value = event.value.clone().unwrap();
                    prop_assert_eq!(value.mod_revision, event.revision);
                    replayed.insert(event.key.clone(), value);
                }
                EventKind::Delete => {
                    prop_assert!(replayed.remove(&event.key).is_some());
                }
            }
        }
        let expected: HashMap<Bytes, Value> = state.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        prop_assert_eq!(replayed, expected);
    }

    #[test]
    fn command_encoding_round_trips(command in arb_command()) {
        let encoded = command.encode();
        prop_assert_eq!(&Command::decode(&encoded).unwrap(), &command);
        prop_assert_eq!(&Command::decode_shared(&encoded).unwrap(), &command);
        for len in 0..encoded.len() {
            prop_assert!(Command::decode(&encoded[..len]).is_err());
        }
    }

    #[test]
    fn random_bytes_never_panic_command_decode(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = Command::decode(&bytes);
        // Bias towards valid headers so the decoder gets past the first bytes.
        let mut headed = vec![COMMAND_FORMAT_VERSION, 1 + bytes.first().copied().unwrap_or(0) % 3];
        headed.extend_from_slice(&bytes);
        let _ = Command::decode(&headed);
    }

    #[test]
    fn random_bytes_never_panic_snapshot_load(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
        let _ = StateMachine::load_snapshot(&bytes);
        let mut headed = vec![SNAPSHOT_FORMAT_VERSION];
        headed.extend_from_slice(&u64::MAX.to_le_bytes());
        headed.extend_from_slice(&((bytes.len() / 16) as u64).to_le_bytes());
        headed.extend_from_slice(&bytes);
        let _ = StateMachine::load_snapshot_shared(&Bytes::from(headed));
    }

    #[test]
    fn corrupting_one_byte_of_a_snapshot_never_panics(history in arb_history(), position in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = snapshot_bytes(&applied(&history));
        let position = position % bytes.len();
        bytes[position] = byte;
        let _ = StateMachine::load_snapshot(&bytes);
    }
}

// ------------------------------------------------------------------ history

fn events_of(state: &StateMachine, from: u64) -> Vec<(u64, String, EventKind)> {
    match state.history().events_since(from) {
        Since::Events(events) => events
            .iter()
            .map(|event| (event.revision, String::from_utf8(event.key.to_vec()).unwrap(), event.kind))
            .collect(),
        Since::Compacted { compact_revision } => panic!("compacted at {compact_revision}"),
    }
}

#[test]
fn every_applied_change_is_an_event_in_revision_order_and_failed_writes_are_none() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("a", "1"));
    state.apply(2, &put_if("a", "2", Condition::Absent)); // fails: no event
    state.apply(3, &Command::put("b", "1"));
    state.apply(4, &Command::delete("missing")); // not found: no event
    state.advance_applied(5);
    state.apply(6, &Command::put("a", "3"));
    state.apply(7, &Command::HashCheck);
    assert_eq!(
        events_of(&state, 1),
        vec![
            (1, "a".into(), EventKind::Put),
            (3, "b".into(), EventKind::Put),
            (6, "a".into(), EventKind::Put)
        ]
    );
    assert_eq!(events_of(&state, 4), vec![(6, "a".into(), EventKind::Put)]);
    assert_eq!(events_of(&state, 7), vec![]);
    let last = state.history().events().last().unwrap().clone();
    let value = last.value.unwrap();
    assert_eq!(
        (value.data.as_ref(), value.create_revision, value.mod_revision, value.version),
        (&b"3"[..], 1, 6, 2)
    );
    let previous = last.previous.unwrap();
    assert_eq!((previous.data.as_ref(), previous.mod_revision), (&b"1"[..], 1));
}

#[test]
fn a_delete_event_carries_the_value_it_removed_and_no_new_value() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("k", "v"));
    state.apply(2, &Command::delete("k"));
    let event = state.history().events().last().unwrap().clone();
    assert_eq!((event.revision, event.kind, event.value), (2, EventKind::Delete, None));
    assert_eq!(event.previous.map(|p| (p.data, p.mod_revision)), Some((Bytes::from_static(b"v"), 1)));
}

#[test]
fn the_events_of_one_entry_share_its_revision_one_per_key_in_key_order() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("b", "old"));
    let pairs = ["c", "b", "a", "b"].iter().map(|k| (Bytes::from(k.to_string()), Bytes::from_static(b"x")));
    state.apply(2, &Command::Import { pairs: pairs.collect() });
    assert_eq!(
        events_of(&state, 2),
        vec![
            (2, "a".into(), EventKind::Put),
            (2, "b".into(), EventKind::Put),
            (2, "c".into(), EventKind::Put)
        ]
    );
    // The key listed twice: one event, whose previous value is the one before the entry.
    let b = state.history().events().iter().find(|e| e.revision == 2 && e.key == "b").unwrap().clone();
    assert_eq!(b.previous.unwrap().data, Bytes::from_static(b"old"));
    assert_eq!(b.value.unwrap().version, 2);
}

#[test]
fn compact_is_a_command_that_drops_events_at_or_below_its_revision() {
    let mut state = StateMachine::new();
    for index in 1..=5 {
        state.apply(index, &Command::put(format!("k{index}"), "v"));
    }
    let bytes_before = state.approximate_bytes();
    assert_eq!(
        state.apply(6, &Command::Compact { revision: 3 }),
        Outcome::Compacted { compact_revision: 3, moved: true }
    );
    assert!(state.approximate_bytes() < bytes_before, "the history counts towards the state's size");
    assert_eq!(state.history().events_since(3), Since::Compacted { compact_revision: 3 });
    assert_eq!(events_of(&state, 4).len(), 2);
    // At or below the point: a no-op that says so.
    assert_eq!(
        state.apply(7, &Command::Compact { revision: 2 }),
        Outcome::Compacted { compact_revision: 3, moved: false }
    );
    // Above the applied index: bounded by it, the same on every node.
    assert_eq!(
        state.apply(8, &Command::Compact { revision: 100 }),
        Outcome::Compacted { compact_revision: 8, moved: true }
    );
    assert!(state.history().is_empty());
    assert_eq!(events_of(&state, 9), vec![]);
}

#[test]
fn the_history_and_its_compaction_point_survive_a_snapshot_round_trip() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("a", "1"));
    state.apply(2, &Command::put("a", "2"));
    state.apply(3, &Command::delete("a"));
    state.apply(4, &Command::put("b", vec![0xff, 0]));
    state.apply(5, &Command::Compact { revision: 1 });
    let bytes = snapshot_bytes(&state);
    assert_eq!(bytes[0], 5);
    assert_eq!(bytes.len(), state.snapshot_len());
    // Version 4 (before the leases) loads the same history.
    assert_eq!(StateMachine::load_snapshot(&old_snapshot_bytes(&state, 4)).unwrap(), state);
    let loaded = StateMachine::load_snapshot(&bytes).unwrap();
    assert_eq!(loaded.history(), state.history());
    assert_eq!(loaded.history().compact_revision(), 1);
    assert_eq!(loaded.history().len(), 3);
    assert_eq!(loaded.approximate_bytes(), state.approximate_bytes());
    assert_eq!(loaded, state);
}

#[test]
fn a_snapshot_from_before_the_history_loads_with_an_empty_one_compacted_to_its_revision() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("a", "1"));
    state.apply(2, &Command::put("b", "2"));
    for format_version in [1, 2] {
        let loaded = StateMachine::load_snapshot(&old_snapshot_bytes(&state, format_version)).unwrap();
        assert!(loaded.history().is_empty());
        assert_eq!(loaded.history().events_since(2), Since::Compacted { compact_revision: 2 });
    }
    // Version 3: with the key revisions, without the history.
    let mut compacted = state.clone();
    compacted.apply(3, &Command::Compact { revision: 3 });
    let bytes = old_snapshot_bytes(&compacted, 3);
    let loaded = StateMachine::load_snapshot(&bytes).unwrap();
    assert!(loaded.history().is_empty());
    assert_eq!(loaded.history().events_since(3), Since::Compacted { compact_revision: 3 });
    assert_eq!(loaded.history().events_since(4), Since::Events(Default::default()));
    assert_eq!(loaded.get(b"b").map(|v| v.mod_revision), Some(2));
}

#[test]
fn a_snapshot_whose_history_is_out_of_order_is_refused() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("a", "1"));
    state.apply(2, &Command::put("b", "2"));
    let mut bytes = snapshot_bytes(&state);
    assert!(StateMachine::load_snapshot(&bytes).is_ok());
    // The history: compaction point, count, then two events of one put each; then the
    // lease table's count.
    let event_len = 8 + 1 + 1 + 4 + 1 + (8 * 4 + 4 + 1);
    let compact_at = bytes.len() - 2 * event_len - 16 - 8;
    bytes[compact_at..compact_at + 8].copy_from_slice(&1u64.to_le_bytes());
    let error = StateMachine::load_snapshot(&bytes).unwrap_err().to_string();
    assert!(error.contains("out of order or outside"), "an event at the compaction point: {error}");
    bytes[compact_at..compact_at + 8].copy_from_slice(&3u64.to_le_bytes());
    let error = StateMachine::load_snapshot(&bytes).unwrap_err().to_string();
    assert!(error.contains("compacted past the applied index"), "{error}");
}

#[test]
fn revoking_a_lease_deletes_its_keys_at_one_revision_one_event_each_in_key_order() {
    let mut state = StateMachine::new();
    assert_eq!(
        state.apply(1, &Command::LeaseGrant { id: 7, ttl_s: 10 }),
        Outcome::LeaseGranted { id: 7, ttl_s: 10 }
    );
    let leased = |key: &str| Command::Put {
        key: key.to_owned().into(),
        value: "v".into(),
        condition: Condition::None,
        lease: 7,
    };
    state.apply(2, &leased("b"));
    state.apply(3, &leased("a"));
    state.apply(4, &Command::put("c", "free"));
    assert_eq!(
        state.lease(7).map(|lease| lease.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["a".into(), "b".into()])
    );
    assert_eq!(state.get(b"a").map(|value| value.lease), Some(7));
    assert_eq!(state.apply(5, &Command::LeaseRevoke { id: 7 }), Outcome::LeaseRevoked { deleted: 2 });
    assert!(state.lease(7).is_none());
    assert_eq!(state.get(b"a"), None);
    assert_eq!(state.get(b"b"), None);
    assert_eq!(state.get(b"c").map(|value| value.lease), Some(0));
    assert_eq!(
        events_of(&state, 5),
        vec![(5, "a".to_owned(), EventKind::Delete), (5, "b".to_owned(), EventKind::Delete)]
    );
    let Since::Events(events) = state.history().events_since(5) else { panic!("history compacted") };
    assert_eq!(events[0].previous.as_ref().map(|value| value.lease), Some(7));
    assert_eq!(state.apply(6, &Command::LeaseRevoke { id: 7 }), Outcome::LeaseNotFound { id: 7 });
}

#[test]
fn a_put_naming_a_missing_lease_changes_nothing_and_a_put_without_one_detaches() {
    let mut state = StateMachine::new();
    let put = |lease| Command::Put { key: "k".into(), value: "v".into(), condition: Condition::None, lease };
    assert_eq!(state.apply(1, &put(9)), Outcome::LeaseNotFound { id: 9 });
    assert_eq!(state.get(b"k"), None);
    assert!(state.history().is_empty());
    state.apply(2, &Command::LeaseGrant { id: 9, ttl_s: 5 });
    assert_eq!(state.apply(2 + 1, &Command::LeaseGrant { id: 9, ttl_s: 50 }), Outcome::LeaseExists { id: 9 });
    assert_eq!(state.lease(9).map(|lease| lease.ttl_s), Some(5));
    state.apply(4, &put(9));
    assert_eq!(state.lease(9).map(Lease::key_count), Some(1));
    state.apply(5, &put(0));
    assert_eq!(state.lease(9).map(Lease::key_count), Some(0));
    assert_eq!(state.apply(6, &Command::LeaseRevoke { id: 9 }), Outcome::LeaseRevoked { deleted: 0 });
    assert_eq!(state.get(b"k").map(|value| (value.lease, value.version)), Some((0, 2)));
}

#[test]
fn a_snapshot_whose_key_names_a_lease_it_does_not_hold_is_refused() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::LeaseGrant { id: 3, ttl_s: 60 });
    state
        .apply(2, &Command::Put { key: "k".into(), value: "v".into(), condition: Condition::None, lease: 3 });
    let mut bytes = snapshot_bytes(&state);
    assert_eq!(StateMachine::load_snapshot(&bytes).unwrap(), state);
    // The lease table is last: count, then (id, ttl). Rename lease 3 to 4.
    let id_at = bytes.len() - 16;
    bytes[id_at..id_at + 8].copy_from_slice(&4u64.to_le_bytes());
    let error = StateMachine::load_snapshot(&bytes).unwrap_err().to_string();
    assert!(error.contains("names a lease the lease table does not hold"), "{error}");
    // A TTL of 0 is refused where it is.
    bytes[id_at..id_at + 8].copy_from_slice(&3u64.to_le_bytes());
    bytes[id_at + 8..].copy_from_slice(&0u64.to_le_bytes());
    assert_eq!(
        StateMachine::load_snapshot(&bytes),
        Err(DecodeError::Invalid { offset: id_at + 8, reason: "lease TTL outside 1..=MAX_LEASE_TTL_S" })
    );
}

#[test]
fn lease_commands_refuse_id_zero_and_ttls_outside_the_limits() {
    for (id, ttl_s) in [(0u64, 10u64), (1, 0), (1, MAX_LEASE_TTL_S + 1)] {
        let mut bytes = Command::LeaseGrant { id: 1, ttl_s: 1 }.encode().to_vec();
        bytes[2..10].copy_from_slice(&id.to_le_bytes());
        bytes[10..18].copy_from_slice(&ttl_s.to_le_bytes());
        assert!(Command::decode(&bytes).is_err(), "lease {id} with TTL {ttl_s} decoded");
    }
    let put = Command::Put { key: "k".into(), value: "v".into(), condition: Condition::None, lease: 5 };
    let mut bytes = put.encode().to_vec();
    assert_eq!(Command::decode(&bytes), Ok(put));
    let len = bytes.len();
    bytes[len - 8..].copy_from_slice(&0u64.to_le_bytes());
    assert!(Command::decode(&bytes).is_err(), "a put with lease tag 11 and id 0 decoded");
}

fn txn(compare: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> Command {
    Command::Txn(Txn { compare, success, failure })
}

fn compare(key: &str, target: CompareTarget, op: CompareOp) -> Compare {
    Compare { span: CompareSpan::Key, key: Bytes::copy_from_slice(key.as_bytes()), target, op }
}

fn txn_put(key: &str, value: &str) -> TxnOp {
    TxnOp::Put {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        lease: 0,
    }
}

fn txn_outcome(outcome: Outcome) -> TxnOutcome {
    match outcome {
        Outcome::Txn(outcome) => (*outcome).clone(),
        other => panic!("not a transaction's outcome: {other:?}"),
    }
}

/// Whether a one-compare transaction on `key` takes its success branch.
fn holds(state: &mut StateMachine, compare: Compare) -> bool {
    let index = state.applied_index() + 1;
    txn_outcome(state.apply(index, &txn(vec![compare], vec![], vec![]))).succeeded
}

#[test]
fn a_missing_key_compares_as_zero_and_its_value_compare_is_false_whatever_the_op() {
    let mut state = StateMachine::new();
    for op in [CompareOp::Eq, CompareOp::NotEq, CompareOp::Less, CompareOp::Greater] {
        assert!(!holds(&mut state, compare("gone", CompareTarget::Value("".into()), op)), "{op:?}");
        assert!(!holds(&mut state, compare("gone", CompareTarget::Value("x".into()), op)), "{op:?}");
    }
    for target in [
        CompareTarget::Version(0),
        CompareTarget::CreateRevision(0),
        CompareTarget::ModRevision(0),
        CompareTarget::Lease(0),
    ] {
        assert!(holds(&mut state, compare("gone", target.clone(), CompareOp::Eq)), "{target:?}");
        assert!(!holds(&mut state, compare("gone", target.clone(), CompareOp::Greater)), "{target:?}");
        assert!(!holds(&mut state, compare("gone", target, CompareOp::NotEq)));
    }
    assert!(holds(&mut state, compare("gone", CompareTarget::ModRevision(1), CompareOp::Less)));
    // A present key: its fields, the key's on the left.
    let index = state.applied_index() + 1;
    state.apply(index, &Command::put("k", "b"));
    assert!(holds(&mut state, compare("k", CompareTarget::Value("b".into()), CompareOp::Eq)));
    assert!(holds(&mut state, compare("k", CompareTarget::Value("a".into()), CompareOp::Greater)));
    assert!(holds(&mut state, compare("k", CompareTarget::Value("ba".into()), CompareOp::Less)));
    assert!(holds(&mut state, compare("k", CompareTarget::ModRevision(index), CompareOp::Eq)));
    assert!(holds(&mut state, compare("k", CompareTarget::Version(1), CompareOp::Eq)));
    assert!(holds(&mut state, compare("k", CompareTarget::CreateRevision(0), CompareOp::Greater)));
    assert!(holds(&mut state, compare("k", CompareTarget::Lease(0), CompareOp::Eq)));
}

fn over(start: &str, end: Option<&str>, target: CompareTarget, op: CompareOp) -> Compare {
    let end = end.map(|end| Bytes::copy_from_slice(end.as_bytes()));
    Compare { key: Bytes::copy_from_slice(start.as_bytes()), span: CompareSpan::Range(end), target, op }
}

// etcd's applyCompare: a compare over a range holds when it holds for every key in
// it; a range without keys compares as one missing key.
#[test]
fn a_compare_over_a_range_holds_only_when_it_holds_for_every_key_in_it() {
    let mut state = StateMachine::new();
    for (index, (key, value)) in
        [("a/1", "x"), ("a/2", "x"), ("a/3", "y"), ("b", "x")].into_iter().enumerate()
    {
        state.apply(index as u64 + 1, &Command::put(key, value));
    }
    let x = || CompareTarget::Value("x".into());
    assert!(holds(&mut state, over("a/1", Some("a/3"), x(), CompareOp::Eq)), "a/1 and a/2 are x");
    assert!(!holds(&mut state, over("a/", Some("a0"), x(), CompareOp::Eq)), "a/3 is y");
    assert!(holds(&mut state, over("a/", Some("a0"), CompareTarget::Version(1), CompareOp::Eq)));
    assert!(holds(&mut state, over("a/", Some("a0"), CompareTarget::ModRevision(4), CompareOp::Less)));
    assert!(!holds(&mut state, over("a/", Some("a0"), CompareTarget::ModRevision(3), CompareOp::Less)));
    // No end: every key from the start on, `b` included.
    assert!(!holds(&mut state, over("a/3", None, CompareTarget::Value("y".into()), CompareOp::Eq)));
    assert!(holds(&mut state, over("a/3", None, CompareTarget::CreateRevision(2), CompareOp::Greater)));
    // No keys in the range: as one missing key.
    assert!(!holds(&mut state, over("c", Some("d"), CompareTarget::Value("".into()), CompareOp::NotEq)));
    assert!(holds(&mut state, over("c", None, CompareTarget::Version(0), CompareOp::Eq)));
    assert!(holds(&mut state, over("b", Some("a"), CompareTarget::CreateRevision(0), CompareOp::Eq)));
    // The same compare over one key looks at that key alone.
    assert!(holds(&mut state, compare("a/1", x(), CompareOp::Eq)));
}

#[test]
fn every_compare_must_hold_for_the_success_branch() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("a", "1"));
    let both = vec![
        compare("a", CompareTarget::Value("1".into()), CompareOp::Eq),
        compare("b", CompareTarget::Version(0), CompareOp::NotEq),
    ];
    let outcome = txn_outcome(state.apply(2, &txn(both, vec![txn_put("s", "x")], vec![txn_put("f", "y")])));
    assert_eq!(outcome, TxnOutcome { succeeded: false, responses: vec![TxnResponse::Put { revision: 2 }] });
    assert!(state.get(b"s").is_none());
    assert_eq!(state.get(b"f").unwrap().mod_revision, 2);
}

#[test]
fn a_transaction_writes_every_key_at_its_one_revision_with_consecutive_events_in_op_order() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("p/1", "old"));
    state.apply(2, &Command::put("p/2", "old"));
    state.apply(3, &Command::put("z", "old"));
    let ops = vec![txn_put("z", "new"), TxnOp::DeletePrefix { prefix: "p/".into() }, txn_put("a", "new")];
    let outcome = txn_outcome(state.apply(7, &txn(vec![], ops, vec![])));
    assert_eq!(
        outcome.responses,
        vec![
            TxnResponse::Put { revision: 7 },
            TxnResponse::Deleted { count: 2 },
            TxnResponse::Put { revision: 7 }
        ]
    );
    let events: Vec<(u64, &[u8], EventKind)> =
        state.history().events().iter().skip(3).map(|e| (e.revision, e.key.as_ref(), e.kind)).collect();
    assert_eq!(
        events,
        vec![
            (7, &b"z"[..], EventKind::Put),
            (7, &b"p/1"[..], EventKind::Delete),
            (7, &b"p/2"[..], EventKind::Delete),
            (7, &b"a"[..], EventKind::Put),
        ]
    );
    assert_eq!(revisions_of(&state, "z"), Some((3, 7, 2)));
    assert_eq!(revisions_of(&state, "a"), Some((7, 7, 1)));
    assert_eq!(state.history().events_since(7), Since::Events(state.history().events().clone().slice(3..)));
}

#[test]
fn a_get_in_a_transaction_sees_the_writes_of_the_ops_before_it() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("k", "before"));
    let ops = vec![
        TxnOp::GetKey { key: "k".into() },
        txn_put("k", "after"),
        TxnOp::GetKey { key: "k".into() },
        TxnOp::DeleteKey { key: "k".into() },
        TxnOp::GetPrefix { prefix: "".into(), limit: 10 },
    ];
    let outcome = txn_outcome(state.apply(4, &txn(vec![], ops, vec![])));
    let get = |i: usize| match &outcome.responses[i] {
        TxnResponse::Get(Some(item)) => {
            (item.value.data.clone(), item.value.mod_revision, item.value.version)
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(get(0), (Bytes::from("before"), 1, 1));
    assert_eq!(get(2), (Bytes::from("after"), 4, 2));
    assert_eq!(outcome.responses[3], TxnResponse::Deleted { count: 1 });
    assert_eq!(outcome.responses[4], TxnResponse::Range { items: vec![], more: false });
}

#[test]
fn a_put_naming_a_missing_lease_fails_the_whole_transaction_with_nothing_changed() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::LeaseGrant { id: 5, ttl_s: 10 });
    state.apply(2, &Command::put("a", "1"));
    let before_history = state.history().len();
    let ops = vec![
        txn_put("a", "2"),
        TxnOp::DeleteKey { key: "a".into() },
        TxnOp::Put { key: "b".into(), value: "v".into(), lease: 5 },
        TxnOp::Put { key: "c".into(), value: "v".into(), lease: 6 },
    ];
    assert_eq!(state.apply(3, &txn(vec![], ops, vec![])), Outcome::LeaseNotFound { id: 6 });
    assert_eq!(value_of(&state, "a"), Some((b"1".to_vec(), 2)));
    assert!(state.get(b"b").is_none() && state.get(b"c").is_none());
    assert_eq!(state.history().len(), before_history);
    assert_eq!(state.lease(5).unwrap().key_count(), 0);
    // With the lease there, the put attaches the key.
    let outcome =
        txn_outcome(state.apply(
            4,
            &txn(vec![], vec![TxnOp::Put { key: "b".into(), value: "v".into(), lease: 5 }], vec![]),
        ));
    assert!(outcome.succeeded);
    assert_eq!(state.get(b"b").unwrap().lease, 5);
    assert_eq!(state.lease(5).unwrap().keys().collect::<Vec<_>>(), vec![&Bytes::from("b")]);
}

#[test]
fn a_forged_transaction_writing_a_key_twice_applies_deterministically() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::put("k", "v1"));
    let ops = vec![
        txn_put("k", "a"),
        txn_put("k", "b"),
        TxnOp::DeleteKey { key: "k".into() },
        txn_put("k", "c"),
        txn_put("k", "d"),
    ];
    let mut other = state.clone();
    state.apply(2, &txn(vec![], ops.clone(), vec![]));
    other.apply(2, &txn(vec![], ops, vec![]));
    assert_eq!(state, other);
    // Re-created after the delete, written once for the revision: version 1.
    assert_eq!(revisions_of(&state, "k"), Some((2, 2, 1)));
    assert_eq!(value_of(&state, "k"), Some((b"d".to_vec(), 2)));
    let mut twice = StateMachine::new();
    twice.apply(1, &Command::put("k", "v1"));
    twice.apply(2, &txn(vec![], vec![txn_put("k", "a"), txn_put("k", "b")], vec![]));
    assert_eq!(revisions_of(&twice, "k"), Some((1, 2, 2)), "one version for the revision");
}

#[test]
fn the_edge_finds_a_key_written_twice_in_one_branch() {
    let put = |key: &str| txn_put(key, "v");
    let written_twice =
        |ops: Vec<TxnOp>| Txn { compare: vec![], success: vec![], failure: ops }.key_written_twice();
    assert_eq!(written_twice(vec![put("a"), put("b"), put("a")]), Some(Bytes::from("a")));
    assert_eq!(
        written_twice(vec![TxnOp::DeletePrefix { prefix: "p".into() }, put("pa")]),
        Some(Bytes::from("pa"))
    );
    assert_eq!(
        written_twice(vec![put("pa"), TxnOp::DeletePrefix { prefix: "p".into() }]),
        Some(Bytes::from("pa"))
    );
    assert_eq!(written_twice(vec![TxnOp::DeleteKey { key: "a".into() }, put("a")]), Some(Bytes::from("a")));
    assert_eq!(written_twice(vec![put("a"), put("b"), TxnOp::DeleteKey { key: "c".into() }]), None);
    assert_eq!(
        written_twice(vec![TxnOp::DeleteKey { key: "a".into() }, TxnOp::DeletePrefix { prefix: "".into() }]),
        None
    );
    // One branch at a time: each branch may write the same key once.
    let branches = Txn { compare: vec![], success: vec![put("a")], failure: vec![put("a")] };
    assert_eq!(branches.key_written_twice(), None);
}

#[test]
fn a_snapshot_after_transactions_loads_back_the_same_state() {
    let mut state = StateMachine::new();
    state.apply(1, &Command::Bootstrap { cluster_id: 0xc1, members: vec![(7, "a:1".into())] });
    state.apply(2, &Command::LeaseGrant { id: 3, ttl_s: 10 });
    state.apply(
        3,
        &txn(
            vec![],
            vec![txn_put("a", "1"), TxnOp::Put { key: "b".into(), value: vec![0xff].into(), lease: 3 }],
            vec![],
        ),
    );
    state.apply(
        4,
        &txn(
            vec![compare("a", CompareTarget::Version(1), CompareOp::Eq)],
            vec![TxnOp::DeleteKey { key: "a".into() }, txn_put("c", "x")],
            vec![],
        ),
    );
    let bytes = snapshot_bytes(&state);
    assert_eq!(StateMachine::load_snapshot(&bytes).unwrap(), state);
    assert_eq!(state.history().len(), 4);
}

#[test]
fn a_transaction_decoder_refuses_forged_counts_and_tags_without_panicking() {
    let mut command = vec![COMMAND_FORMAT_VERSION, 12];
    command.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(Command::decode(&command), Err(DecodeError::CountTooLarge { offset: 2, .. })));
    let mut bad_op = vec![COMMAND_FORMAT_VERSION, 12, 0, 0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0, 0];
    assert!(matches!(Command::decode(&bad_op), Err(DecodeError::UnknownTag { what: "transaction op", .. })));
    bad_op.truncate(8);
    assert!(Command::decode(&bad_op).is_err());
}
