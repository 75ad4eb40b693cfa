//! Behaviour of the whole store: reopen, overwrite, snapshots, compaction, crashes,
//! corruption, full disks and legacy files.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::raft::{ConfState, Config, EntryKind, InitError, InitialState, Raft};

/// Small segments so that tests cross segment boundaries and grow files often.
fn small() -> StoreOptions {
    StoreOptions { segment_bytes: 4096, grow_step_bytes: 1024 }
}

fn entry(index: u64, term: u64) -> Entry {
    let data = Bytes::from(format!("entry {index} of term {term}"));
    Entry { index, term, kind: if index % 7 == 0 { EntryKind::Noop } else { EntryKind::Normal }, data }
}

fn entries(range: std::ops::Range<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| entry(i, term)).collect()
}

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta { index, term, conf: ConfState::with_voters(vec![1, 2, 3]) }
}

/// Encoded size of the records `entry` makes for indexes 1..=9 (17-byte payloads).
const RECORD: usize = 64;

/// Reopens the store, after checking that `Store::read_only` sees what the open then
/// recovers, changing nothing.
fn reopen(dir: &Path) -> Recovered {
    let read_only = read_only_unchanged(dir);
    let opened = Store::open(dir, small());
    assert_read_only_agrees(&read_only, &opened);
    opened.unwrap().1
}

/// Every file of `dir` and its bytes.
fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).unwrap()))
        .collect()
}

/// `Store::read_only` on `dir` (given a `LOCK` file if the test's directory has none),
/// checking that it changed no file.
fn read_only_unchanged(dir: &Path) -> Result<Recovered, StoreError> {
    if !dir.join(data_dir::LOCK_FILE_NAME).exists() {
        fs::write(dir.join(data_dir::LOCK_FILE_NAME), b"").unwrap();
    }
    let before = files(dir);
    let read_only = Store::read_only(dir).map(|(_, recovered)| recovered);
    assert!(files(dir) == before, "Store::read_only changed files in {}", dir.display());
    read_only
}

/// What `Store::read_only` saw is what `Store::open` then recovered, or failed with.
fn assert_read_only_agrees(
    read_only: &Result<Recovered, StoreError>,
    opened: &Result<(Store, Recovered), StoreError>,
) {
    match (read_only, opened) {
        (Ok(seen), Ok((_, recovered))) => {
            assert_eq!(seen.entries, recovered.entries, "read_only saw other entries");
            assert_eq!(seen.hard_state, recovered.hard_state, "read_only saw another hard state");
            assert_eq!(seen.snapshot, recovered.snapshot, "read_only saw another snapshot");
            assert_eq!(
                seen.warnings.len(),
                recovered.warnings.len(),
                "{:?} / {:?}",
                seen.warnings,
                recovered.warnings
            );
        }
        (Err(seen), Err(error)) => assert_eq!(seen.to_string(), error.to_string()),
        (seen, opened) => panic!("read_only: {:?}, open: {:?}", seen.as_ref().err(), opened.as_ref().err()),
    }
}

/// Starts node 1 of `voters` from what the store recovered, as the daemon does.
fn start_raft(recovered: &Recovered, voters: &[u64]) -> Result<Raft, InitError> {
    let snapshot = recovered.snapshot.as_ref().map_or_else(SnapshotMeta::default, |(meta, _)| meta.clone());
    let initial = InitialState {
        hard_state: recovered.hard_state,
        snapshot: SnapshotMeta { conf: ConfState::with_voters(voters.to_vec()), ..snapshot },
        entries: recovered.entries.clone(),
    };
    Raft::new(Config::new(1), initial)
}

/// The warning `Store::open` gives when it has to raise the hard state's term to the log's.
const RAISED_TERM_WARNING: &str = "raised the hard state to term";

/// Checks that Raft starts from the recovered state, that the hard state's term is at least
/// every recovered entry's and the snapshot's, and that it got there without the repair at open.
fn assert_starts(recovered: &Recovered, voters: &[u64], context: &str) {
    if let Err(error) = start_raft(recovered, voters) {
        panic!("{context}: Raft refused the recovered state: {error}");
    }
    let newest_term = recovered
        .entries
        .iter()
        .map(|e| e.term)
        .chain(recovered.snapshot.as_ref().map(|(meta, _)| meta.term))
        .max()
        .unwrap_or(0);
    assert!(
        recovered.hard_state.term >= newest_term,
        "{context}: hard state {:?} behind a record of term {newest_term}",
        recovered.hard_state
    );
    assert!(
        !recovered.warnings.iter().any(|w| w.contains(RAISED_TERM_WARNING)),
        "{context}: the term had to be repaired: {:?}",
        recovered.warnings
    );
}

#[test]
fn synced_entries_and_hard_state_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, recovered) = Store::open(dir.path(), small()).unwrap();
    assert!(recovered.entries.is_empty() && recovered.snapshot.is_none());
    assert_eq!((store.first_index(), store.last_index()), (1, 0));
    store.append(&entries(1..101, 1)).unwrap();
    let hard_state = HardState { term: 1, vote: Some(2), commit: 50 };
    store.set_hard_state(&hard_state).unwrap();
    let stats = store.sync().unwrap();
    assert!(stats.msync_calls >= 2, "{stats:?}");
    drop(store);
    let recovered = reopen(dir.path());
    assert_eq!(recovered.entries, entries(1..101, 1));
    assert_eq!(recovered.hard_state, hard_state);
    assert!(recovered.warnings.is_empty(), "{:?}", recovered.warnings);
}

#[test]
fn batch_sync_makes_term_and_vote_durable_but_lets_a_commit_only_change_lag() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path(), small()).unwrap();
    store.append(&entries(1..11, 1)).unwrap();
    store.set_hard_state(&HardState { term: 1, vote: Some(2), commit: 0 }).unwrap();
    assert_eq!(store.sync_entries_and_vote().unwrap().msync_calls, 2, "log and vote");
    store.append(&entries(11..21, 1)).unwrap();
    store.set_hard_state(&HardState { term: 1, vote: Some(2), commit: 15 }).unwrap();
    assert_eq!(store.sync_entries_and_vote().unwrap().msync_calls, 1, "the log only");
    drop(store);
    let recovered = reopen(dir.path());
    assert_eq!(recovered.entries, entries(1..21, 1));
    // The commit index is a lower bound: it may lag, never lead.
    assert_eq!(recovered.hard_state, HardState { term: 1, vote: Some(2), commit: 0 });

    let (mut store, _) = Store::open(dir.path(), small()).unwrap();
    store.set_hard_state(&HardState { term: 2, vote: None, commit: 20 }).unwrap();
    store.sync_entries_and_vote().unwrap();
    drop(store);
    assert_eq!(reopen(dir.path()).hard_state, HardState { term: 2, vote: None, commit: 20 });
}

/// What the disk thread persists for one Ready (`src/server/driver/disk.rs`, `persist`).
struct ReadyToPersist {
    snapshot: Option<SnapshotMeta>,
    entries: Vec<Entry>,
    hard_state: HardState,
    /// `Store::sync` (the simulator) rather than `Store::sync_entries_and_vote` (the daemon).
    full_sync: bool,
}

fn persist(store: &mut Store, ready: &ReadyToPersist) -> Result<(), StoreError> {
    if let Some(meta) = &ready.snapshot {
        store.install_snapshot(meta, b"leader state")?;
    }
    if !ready.entries.is_empty() {
        store.append(&ready.entries)?;
    }
    store.set_hard_state(&ready.hard_state)?;
    if ready.full_sync {
        store.sync()?;
    } else {
        store.sync_entries_and_vote()?;
    }
    Ok(())
}

/// Cuts the power at each msync in turn while `ready` is persisted on a store prepared by
/// `setup`, lets each unsynced page reach the disk or not (`crash`, several seeds), and
/// checks that every store so left opens and that Raft starts from it.
fn check_power_cut_at_every_msync(setup: impl Fn(&mut Store), ready: &ReadyToPersist, voters: &[u64]) {
    for msyncs_before_cut in 0.. {
        let mut persisted = false;
        for seed in 0..12u64 {
            let dir = tempfile::tempdir().unwrap();
            let (mut store, _) = Store::open(dir.path(), small()).unwrap();
            setup(&mut store);
            let before = store.hard_state();
            mapped::fault::cut_power_after_msyncs(msyncs_before_cut);
            persisted = persist(&mut store, ready).is_ok();
            mapped::fault::power_back_on();
            let unsynced = store.unsynced_ranges();
            drop(store);
            crash(&unsynced, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let context = format!("power cut after {msyncs_before_cut} msyncs, seed {seed}");
            let recovered = match Store::open(dir.path(), small()) {
                Ok((_, recovered)) => recovered,
                Err(error) => panic!("{context}: the store does not open: {error}"),
            };
            let term = recovered.hard_state.term;
            assert!(before.term <= term && term <= ready.hard_state.term, "{context}: term {term}");
            assert_starts(&recovered, voters, &context);
        }
        if persisted {
            return;
        }
    }
}

/// A power cut between the msyncs of a follower's first batch of a new term (whose commit
/// index covers the new entries) leaves a store that starts: the term is never behind the
/// log, the commit index never ahead of it. Reference: Raft paper Fig. 2, "Persistent state".
#[test]
fn power_cut_at_any_msync_of_a_first_batch_of_a_new_term_leaves_a_store_that_starts() {
    let setup = |store: &mut Store| {
        store.append(&entries(1..6, 1)).unwrap();
        store.set_hard_state(&HardState { term: 1, vote: Some(2), commit: 3 }).unwrap();
        store.sync().unwrap();
    };
    for full_sync in [false, true] {
        let ready = ReadyToPersist {
            snapshot: None,
            entries: entries(6..9, 2),
            hard_state: HardState { term: 2, vote: None, commit: 8 },
            full_sync,
        };
        check_power_cut_at_every_msync(setup, &ready, &[1, 2, 3]);
    }
}

/// A one-node cluster's start persists its vote for itself and its first entry in one
/// Ready; a power cut at any msync of it leaves a store that starts.
#[test]
fn power_cut_at_any_msync_of_a_one_node_clusters_start_leaves_a_store_that_starts() {
    let first = Entry { index: 1, term: 1, kind: EntryKind::Noop, data: Bytes::new() };
    for full_sync in [false, true] {
        let ready = ReadyToPersist {
            snapshot: None,
            entries: vec![first.clone()],
            hard_state: HardState { term: 1, vote: Some(1), commit: 0 },
            full_sync,
        };
        check_power_cut_at_every_msync(|_| {}, &ready, &[1]);
    }
}

/// A snapshot of a newer term is no more durable than that term either.
#[test]
fn power_cut_at_any_msync_of_installing_a_newer_terms_snapshot_leaves_a_store_that_starts() {
    let setup = |store: &mut Store| {
        store.append(&entries(1..6, 1)).unwrap();
        store.set_hard_state(&HardState { term: 1, vote: Some(2), commit: 3 }).unwrap();
        store.sync().unwrap();
    };
    for (snapshot, entries) in [(meta(100, 3), vec![]), (meta(4, 3), entries(5..7, 3))] {
        let ready = ReadyToPersist {
            snapshot: Some(snapshot),
            entries,
            hard_state: HardState { term: 3, vote: None, commit: 4 },
            full_sync: false,
        };
        check_power_cut_at_every_msync(setup, &ready, &[1, 2, 3]);
    }
}

/// A data directory written by a version that synced the hard state after the log can hold
/// entries of a term its hard state never reached; it is repaired at open, durably.
#[test]
fn a_log_ahead_of_the_hard_states_term_is_repaired_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path(), small()).unwrap();
    store.append(&entries(1..6, 1)).unwrap();
    store.set_hard_state(&HardState { term: 1, vote: Some(2), commit: 3 }).unwrap();
    store.sync().unwrap();
    // The old order, cut between the log's msync and the hard state's.
    store.log.append(&entries(6..9, 2)).unwrap();
    store.log.sync().unwrap();
    drop(store);
    let recovered = reopen(dir.path());
    assert!(recovered.warnings.iter().any(|w| w.contains(RAISED_TERM_WARNING)), "{:?}", recovered.warnings);
    assert_eq!(recovered.hard_state, HardState { term: 2, vote: None, commit: 3 });
    start_raft(&recovered, &[1, 2, 3]).unwrap();
    let recovered = reopen(dir.path());
    assert!(recovered.warnings.is_empty(), "the repair was not durable: {:?}", recovered.warnings);
    assert_eq!(recovered.hard_state, HardState { term: 2, vote: None, commit: 3 });
}

/// The same for a snapshot of a term the hard state never reached.
#[test]
fn a_snapshot_ahead_of_the_hard_states_term_is_repaired_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path(), small()).unwrap();
    store.append(&entries(1..6, 1)).unwrap();
    store.set_hard_state(&HardState { term: 1, vote: Some(2), commit: 3 }).unwrap();
    store.sync().unwrap();
    let seq = store.log.begin_reset().unwrap();
    snapshot::save(dir.path(), &meta(100, 3), seq, b"leader state").unwrap();
    store.log.finish_reset(seq, 101).unwrap();
    drop(store);
    let recovered = reopen(dir.path());
    assert!(recovered.warnings.iter().any(|w| w.contains(RAISED_TERM_WARNING)), "{:?}", recovered.warnings);
    assert_eq!(recovered.hard_state, HardState { term: 3, vote: None, commit: 3 });
    start_raft(&recovered, &[1, 2, 3]).unwrap();
}

#[test]
fn one_sync_is_one_msync_per_file_however_many_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) =
        Store::open(dir.path(), StoreOptions { segment_bytes: 1 << 20, grow_step_bytes: 1 << 20 }).unwrap();
    store.append(&entries(1..257, 1)).unwrap();
    assert_eq!(store.sync().unwrap().msync_calls, 1);
    store.append(&entries(257..258, 1)).unwrap();
    store.set_hard_state(&HardState { term: 1, vote: None, commit: 257 }).unwrap();
    assert_eq!(store.sync().unwrap().msync_calls, 2);
    assert_eq!(store.sync().unwrap().msync_calls, 0);
}

#[test]
fn overwriting_a_suffix_replaces_it_on_disk_too() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path(), small()).unwrap();
    store.append(&entries(1..60, 1)).unwrap();
    store.sync().unwrap();
    store.append(&entries(20..25, 2)).unwrap();
    store.sync().unwrap();
    assert_eq!(store.last_index(), 24);
    let mut expected = entries(1..20, 1);
    expected.extend(entries(20..25, 2));
    assert_eq!(store.entries(1, 25).unwrap(), expected);
    drop(store);
    assert_eq!(reopen(dir.path()).entries, expected);
}

#[test]
fn compaction_deletes_whole_segments_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path(), small()).unwrap();
    store.append(&entries(1..301, 1)).unwrap();
    store.sync().unwrap();
    let segments_before = count_segments(dir.path());
    assert!(segments_before > 3, "want several segments, got {segments_before}");
    store.save_snapshot(&meta(200, 1), b"state at 200").unwrap();
    store.compact(200).unwrap();
    assert_eq!(store.first_index(), 201);
    assert!(count_segments(dir.path()) < segments_before);
    drop(store);
    let recovered = reopen(dir.path());
    assert_eq!(recovered.snapshot, Some((meta(200, 1), Bytes::from_static(b"state at 200"))));
    assert_eq!(recovered.entries, entries(201..301, 1));
}

fn count_segments(dir: &Path) -> usize {
    fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".seg"))
        .count()
}

#[test]
fn install_snapshot_keeps_the_log_after_a_matching_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path(), small()).unwrap();
    store.append(&entries(1..51, 1)).unwrap();
    store.sync().unwrap();
    store.install_snapshot(&meta(30, 1), b"leader state").unwrap();
    assert_eq!((store.first_index(), store.last_index()), (31, 50));
    drop(store);
    let recovered = reopen(dir.path());
    assert_eq!(recovered.entries, entries(31..51, 1));
    assert_eq!(recovered.snapshot.unwrap().0, meta(30, 1));
}

#[test]
fn install_snapshot_discards_a_conflicting_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path(), small()).unwrap();
    store.append(&entries(1..51, 1)).unwrap();
    store.sync().unwrap();
    store.install_snapshot(&meta(30, 2), b"leader state").unwrap();
    assert_eq!((store.first_index(), store.last_index()), (31, 30));
    store.append(&entries(31..35, 2)).unwrap();
    store.sync().unwrap();
    drop(store);
    let recovered = reopen(dir.path());
    assert_eq!(recovered.entries, entries(31..35, 2));
}

#[test]
fn install_snapshot_beyond_the_log_discards_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path(), small()).unwrap();
    store.append(&entries(1..11, 1)).unwrap();
    store.sync().unwrap();
    store.install_snapshot(&meta(100, 3), b"far ahead").unwrap();
    drop(store);
    let recovered = reopen(dir.path());
    assert!(recovered.entries.is_empty());
    let (store, _) = Store::open(dir.path(), small()).unwrap();
    assert_eq!((store.first_index(), store.last_index()), (101, 100));
}

#[test]
fn second_store_on_a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path(), small()).unwrap();
    assert!(matches!(Store::open(dir.path(), small()), Err(StoreError::Locked { .. })));
}

#[test]
fn read_only_is_refused_while_a_store_is_open_and_keeps_one_from_opening() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path(), small()).unwrap();
    assert!(matches!(Store::read_only(dir.path()), Err(StoreError::Locked { .. })));
    drop(first);
    let (data_dir, _) = Store::read_only(dir.path()).unwrap();
    assert!(matches!(Store::open(dir.path(), small()), Err(StoreError::Locked { .. })));
    let second_reader = Store::read_only(dir.path());
    assert!(second_reader.is_ok(), "readers share the lock: {:?}", second_reader.err());
    drop(data_dir);
    let never_opened = tempfile::tempdir().unwrap();
    assert!(Store::read_only(never_opened.path()).is_err(), "a directory without LOCK");
}

#[test]
fn legacy_json_in_the_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("raft.log"), b"\n  [{\"term\": 1}]").unwrap();
    let error = Store::open(dir.path(), small()).err().unwrap();
    assert!(matches!(error, StoreError::LegacyFormat { .. }), "{error}");
    assert!(error.to_string().contains("mmapd-admin import FILE"));
}

#[test]
fn legacy_json_copied_over_a_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), small()).unwrap());
    let segment = segment_paths(dir.path()).pop().unwrap();
    fs::write(&segment, b"[{\"term\": 1}]").unwrap();
    assert!(
        matches!(Store::open(dir.path(), small()), Err(StoreError::LegacyFormat { path, .. }) if path == segment)
    );
}

#[test]
fn disk_full_while_growing_fails_the_append_and_keeps_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path(), small()).unwrap();
    store.append(&entries(1..11, 1)).unwrap();
    store.sync().unwrap();
    mapped::fault::fail_next_grow(nix::errno::Errno::ENOSPC);
    let big = Entry { index: 11, term: 1, kind: EntryKind::Normal, data: Bytes::from(vec![7; 5000]) };
    let batch = [entry(11, 1), entry(12, 1), Entry { index: 13, ..big }];
    assert!(matches!(store.append(&batch), Err(StoreError::DiskFull { .. })));
    assert_eq!(store.last_index(), 10);
    store.append(&entries(11..13, 1)).unwrap();
    store.sync().unwrap();
    drop(store);
    let recovered = reopen(dir.path());
    assert_eq!(recovered.entries, entries(1..13, 1));
    assert!(recovered.warnings.is_empty(), "{:?}", recovered.warnings);
}

fn segment_paths(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    paths.sort();
    paths
}

/// A log of one segment written in `batches` synced batches of two entries each.
fn written_log(dir: &Path, batches: u64) -> Vec<Entry> {
    let (mut store, _) =
        Store::open(dir, StoreOptions { segment_bytes: 1 << 20, grow_step_bytes: 4096 }).unwrap();
    for batch in 0..batches {
        store.append(&entries(batch * 2 + 1..batch * 2 + 3, 1)).unwrap();
        store.set_hard_state(&HardState { term: 1, vote: None, commit: batch * 2 + 2 }).unwrap();
        store.sync().unwrap();
    }
    store.entries(1, batches * 2 + 1).unwrap()
}

/// Opening must fail naming `segment`, or recover a prefix of `written` (with a warning if
/// anything was cut). It must never panic or return other data.
fn check_open(dir: &Path, segment: &Path, written: &[Entry]) -> Result<usize, u64> {
    let read_only = read_only_unchanged(dir);
    let opened = Store::open(dir, small());
    assert_read_only_agrees(&read_only, &opened);
    match opened {
        Ok((_, recovered)) => {
            let n = recovered.entries.len();
            assert_eq!(recovered.entries[..], written[..n], "recovered entries are not a prefix of the log");
            if n < written.len() {
                assert!(
                    recovered.warnings.iter().any(|w| w.contains(&segment.display().to_string())),
                    "entries cut without a warning naming the file: {:?}",
                    recovered.warnings
                );
            }
            Ok(n)
        }
        Err(
            StoreError::Corrupt { path, offset, .. } | StoreError::UnsupportedVersion { path, offset, .. },
        ) => {
            assert_eq!(path, segment);
            Err(offset)
        }
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[test]
fn flipped_bits_fail_open_or_cut_only_the_torn_last_record() {
    let source = tempfile::tempdir().unwrap();
    let written = written_log(source.path(), 4);
    let segment_name = segment_paths(source.path()).pop().unwrap().file_name().unwrap().to_owned();
    let original = fs::read(source.path().join(&segment_name)).unwrap();
    let end = original.iter().rposition(|&b| b != 0).unwrap() + 1;
    let last_batch_start = 64 + 6 * RECORD;
    // One directory for all flips (its hard state stays empty, so only the records decide).
    let dir = tempfile::tempdir().unwrap();
    for offset in 0..end {
        let segment = dir.path().join(&segment_name);
        let mut bytes = original.clone();
        bytes[offset] ^= 1 << (offset % 8);
        fs::write(&segment, &bytes).unwrap();
        // Damage inside the last synced batch looks exactly like a torn write (nothing after
        // it proves it was synced): it is cut back, with a warning. Anywhere else it is an error.
        match check_open(dir.path(), &segment, &written) {
            Ok(n) => assert!(
                offset >= last_batch_start && (6..=7).contains(&n),
                "flip at {offset} recovered {n} entries"
            ),
            Err(reported) => assert!(reported <= offset as u64, "flip at {offset} reported at {reported}"),
        }
    }
}

#[test]
fn truncation_at_every_offset_fails_open_naming_the_file() {
    let source = tempfile::tempdir().unwrap();
    let written = written_log(source.path(), 3);
    let segment_name = segment_paths(source.path()).pop().unwrap().file_name().unwrap().to_owned();
    let original = fs::read(source.path().join(&segment_name)).unwrap();
    let end = original.iter().rposition(|&b| b != 0).unwrap() + 1;
    for len in (0..=end).step_by(4) {
        let dir = tempfile::tempdir().unwrap();
        let segment = dir.path().join(&segment_name);
        fs::write(&segment, &original[..len]).unwrap();
        assert!(check_open(dir.path(), &segment, &written).is_err(), "cut at {len} not detected");
    }
}

#[test]
fn lost_tail_bytes_fail_open_or_are_cut_with_a_warning() {
    let source = tempfile::tempdir().unwrap();
    let written = written_log(source.path(), 3);
    let segment_name = segment_paths(source.path()).pop().unwrap().file_name().unwrap().to_owned();
    let original = fs::read(source.path().join(&segment_name)).unwrap();
    let end = original.iter().rposition(|&b| b != 0).unwrap() + 1;
    for len in (64..=end).step_by(4) {
        let dir = tempfile::tempdir().unwrap();
        let segment = dir.path().join(&segment_name);
        let mut bytes = original.clone();
        bytes[len..].fill(0);
        fs::write(&segment, &bytes).unwrap();
        fs::copy(source.path().join("hardstate"), dir.path().join("hardstate")).unwrap();
        // The synced commit index proves every record was durable: losing any is an error.
        assert!(
            check_open(dir.path(), &segment, &written).is_err() || len == end,
            "zeroing from {len} not detected"
        );
    }
}

#[test]
fn corruption_in_an_earlier_segment_fails_open_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path(), small()).unwrap();
    store.append(&entries(1..200, 1)).unwrap();
    store.sync().unwrap();
    drop(store);
    let first = segment_paths(dir.path()).remove(0);
    let mut bytes = fs::read(&first).unwrap();
    bytes[64 + RECORD + 45] ^= 0x10;
    fs::write(&first, &bytes).unwrap();
    match Store::open(dir.path(), small()) {
        Err(StoreError::Corrupt { path, offset, .. }) => {
            assert_eq!((path, offset), (first, 64 + RECORD as u64))
        }
        other => panic!("expected Corrupt, got {:?}", other.err()),
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Append `count` entries of a new term starting `back` entries before the end.
    Append {
        back: u64,
        count: u64,
    },
    Sync,
    /// Snapshot at `fraction` of the way through the log, then compact to it.
    SnapshotAndCompact {
        fraction: u8,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..6, 1u64..40).prop_map(|(back, count)| Op::Append { back, count }),
        2 => Just(Op::Sync),
        1 => (0u8..=100).prop_map(|fraction| Op::SnapshotAndCompact { fraction }),
        1 => Just(Op::Reopen),
    ]
}

/// Applies an append to the model: keep everything before the first new index.
fn model_append(model: &mut Vec<Entry>, batch: &[Entry]) {
    let first = batch[0].index;
    model.retain(|e| e.index < first);
    model.extend_from_slice(batch);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_a_vec_model_across_reopens(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path(), small()).unwrap();
        let mut model: Vec<Entry> = Vec::new();
        let mut first_index = 1;
        let mut term = 1;
        for op in ops {
            match op {
                Op::Append { back, count } => {
                    let last = store.last_index();
                    let start = (last + 1).saturating_sub(back).max(first_index);
                    term += 1;
                    let batch = entries(start..start + count, term);
                    store.append(&batch).unwrap();
                    model_append(&mut model, &batch);
                }
                Op::Sync => { store.sync().unwrap(); }
                Op::SnapshotAndCompact { fraction } => {
                    let last = store.last_index();
                    let index = store.snapshot_index() + (last - store.snapshot_index()) * fraction as u64 / 100;
                    if index > store.snapshot_index() {
                        let term_at = store.term(index).unwrap();
                        store.save_snapshot(&meta(index, term_at), b"s").unwrap();
                        store.compact(index).unwrap();
                        model.retain(|e| e.index > index);
                        first_index = index + 1;
                    }
                }
                Op::Reopen => {
                    drop(store);
                    let read_only = read_only_unchanged(dir.path());
                    let opened = Store::open(dir.path(), small());
                    assert_read_only_agrees(&read_only, &opened);
                    let (reopened, recovered) = opened.unwrap();
                    store = reopened;
                    prop_assert_eq!(&recovered.entries, &model);
                    prop_assert!(recovered.warnings.is_empty(), "{:?}", recovered.warnings);
                }
            }
            prop_assert_eq!(store.first_index(), first_index);
            prop_assert_eq!(store.last_index(), model.last().map_or(first_index - 1, |e| e.index));
            prop_assert_eq!(store.entries(first_index, store.last_index() + 1).unwrap(), model.clone());
        }
    }

    #[test]
    fn crash_keeping_only_synced_bytes_loses_nothing_acknowledged(
        batches in proptest::collection::vec((0u64..4, 1u64..30, any::<bool>()), 1..12),
        seed in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path(), small()).unwrap();
        let mut acknowledged: Vec<Entry> = Vec::new();
        let mut acknowledged_hard_state = HardState::default();
        let mut pending: Vec<Entry> = Vec::new();
        let mut term = 1;
        for (back, count, sync) in batches {
            let start = (store.last_index() + 1).saturating_sub(back).max(1);
            term += 1;
            let batch = entries(start..start + count, term);
            store.append(&batch).unwrap();
            store.set_hard_state(&HardState { term, vote: Some(1), commit: 0 }).unwrap();
            pending.extend(batch);
            if sync {
                store.sync().unwrap();
                for e in pending.drain(..) {
                    model_append(&mut acknowledged, std::slice::from_ref(&e));
                }
                acknowledged_hard_state = store.hard_state();
            }
        }
        let latest_hard_state = store.hard_state();
        let unsynced = store.unsynced_ranges();
        drop(store);
        crash(&unsynced, seed);
        let recovered = reopen(dir.path());
        // Recovered: the acknowledged log with some prefix of the unsynced records applied.
        let mut candidate = acknowledged.clone();
        let mut matched = recovered.entries == candidate;
        for e in &pending {
            model_append(&mut candidate, std::slice::from_ref(e));
            matched |= recovered.entries == candidate;
        }
        prop_assert!(matched, "recovered {} entries, not the acknowledged log plus a prefix of the rest", recovered.entries.len());
        // The acknowledged hard state, or a newer term (made durable ahead of its entries,
        // with or without the vote set for it); never behind a recovered entry.
        let recovered_hard_state = recovered.hard_state;
        prop_assert!(
            recovered_hard_state == acknowledged_hard_state
                || (recovered_hard_state.term > acknowledged_hard_state.term
                    && recovered_hard_state.term <= latest_hard_state.term
                    && recovered_hard_state.commit == 0),
            "hard state {:?}, acknowledged {:?}, latest {:?}", recovered_hard_state, acknowledged_hard_state, latest_hard_state
        );
        assert_starts(&recovered, &[1, 2, 3], "crash after unsynced batches");
    }
}

/// Simulates a power cut: bytes synced are kept; each unsynced page is kept, zeroed or
/// filled with garbage at random (the kernel may have written any of them back, or not).
fn crash(unsynced: &[(std::path::PathBuf, std::ops::Range<u64>)], seed: u64) {
    let mut state = seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (path, range) in unsynced {
        let mut bytes = fs::read(path).unwrap();
        let mut page_start = range.start / 4096 * 4096;
        while page_start < range.end {
            let lo = page_start.max(range.start) as usize;
            let hi = (page_start + 4096).min(range.end) as usize;
            match next() % 3 {
                0 => {}
                1 => bytes[lo..hi].fill(0),
                _ => bytes[lo..hi].iter_mut().for_each(|b| *b = next() as u8),
            }
            page_start += 4096;
        }
        fs::write(path, &bytes).unwrap();
    }
}

const KILL_WRITER_DIR: &str = "MMAPD_TEST_KILL_WRITER_DIR";

/// The term of entry `index` in the kill -9 test: a new term every 8 entries, so that
/// most batches start one, as a follower's first batch after an election does.
fn kill_test_term(index: u64) -> u64 {
    index / 8 + 1
}

fn kill_test_entries(range: std::ops::Range<u64>) -> Vec<Entry> {
    range.map(|i| entry(i, kill_test_term(i))).collect()
}

/// The child side of `kill_minus_nine_mid_batch_loses_nothing_acknowledged`: appends and
/// syncs batches forever, with the hard state of their term, printing the last index of
/// each synced batch. Does nothing when run as an ordinary test.
#[test]
fn kill_writer_child() {
    let Some(dir) = std::env::var_os(KILL_WRITER_DIR) else { return };
    let (mut store, _) = Store::open(Path::new(&dir), small()).unwrap();
    let mut size = 1;
    loop {
        let start = store.last_index() + 1;
        let last = start + size - 1;
        store.append(&kill_test_entries(start..last + 1)).unwrap();
        store.set_hard_state(&HardState { term: kill_test_term(last), vote: Some(1), commit: 0 }).unwrap();
        store.sync().unwrap();
        println!("acked {last}");
        size = size % 37 + 1;
    }
}

#[test]
fn kill_minus_nine_mid_batch_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged = 0;
    for round in 0..5u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["store::tests::kill_writer_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(KILL_WRITER_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Let it run for a varying number of acknowledged batches, then SIGKILL it.
        let wanted = 20 + round * 17;
        let mut seen = 0;
        while seen < wanted {
            let line = lines.next().expect("child exited early").unwrap();
            if let Some(index) = line.strip_prefix("acked ") {
                acknowledged = acknowledged.max(index.parse::<u64>().unwrap());
                seen += 1;
            }
        }
        child.kill().unwrap();
        for line in lines.map_while(Result::ok) {
            if let Some(index) = line.strip_prefix("acked ") {
                acknowledged = acknowledged.max(index.parse::<u64>().unwrap());
            }
        }
        child.wait().unwrap();
        let recovered = reopen(dir.path());
        assert!(recovered.entries.len() as u64 >= acknowledged, "round {round}: lost acknowledged entries");
        assert_eq!(recovered.entries[..acknowledged as usize], kill_test_entries(1..acknowledged + 1)[..]);
        assert_starts(&recovered, &[1, 2, 3], &format!("kill -9 in round {round}"));
    }
}

#[test]
fn old_segments_left_by_an_interrupted_log_reset_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path(), small()).unwrap();
    store.append(&entries(1..120, 1)).unwrap();
    store.sync().unwrap();
    let saved: Vec<_> = segment_paths(dir.path()).into_iter().map(|p| (fs::read(&p).unwrap(), p)).collect();
    store.install_snapshot(&meta(60, 2), b"leader state").unwrap();
    store.append(&entries(61..64, 2)).unwrap();
    store.sync().unwrap();
    drop(store);
    // A crash before the deletions reached the disk brings the old log back.
    for (bytes, path) in &saved {
        fs::write(path, bytes).unwrap();
    }
    let recovered = reopen(dir.path());
    assert_eq!(recovered.entries, entries(61..64, 2));
    assert!(recovered.warnings.iter().any(|w| w.contains("removed segment")), "{:?}", recovered.warnings);
}

#[test]
fn a_segment_left_by_an_interrupted_compaction_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(dir.path(), small()).unwrap();
    store.append(&entries(1..301, 1)).unwrap();
    store.sync().unwrap();
    let saved: Vec<_> = segment_paths(dir.path()).into_iter().map(|p| (fs::read(&p).unwrap(), p)).collect();
    store.save_snapshot(&meta(250, 1), b"s").unwrap();
    store.compact(250).unwrap();
    drop(store);
    // Only the second of the deleted segments came back: a hole before the live segments.
    let (bytes, path) = &saved[1];
    assert!(!path.exists());
    fs::write(path, bytes).unwrap();
    assert_eq!(reopen(dir.path()).entries, entries(251..301, 1));
}

/// Every file kind of a data directory carries a format version; a version this build
/// does not read (a newer release's) is refused naming the file, the version found and
/// the versions read, not reported as corruption.
#[test]
fn a_file_of_a_newer_format_version_is_refused_naming_the_file_and_the_versions() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut store, _) = Store::open(dir.path(), small()).unwrap();
        store.append(&entries(1..4, 1)).unwrap();
        store.set_hard_state(&HardState { term: 1, vote: Some(1), commit: 3 }).unwrap();
        store.sync().unwrap();
        store.save_snapshot(&meta(3, 1), b"state at 3").unwrap();
        let data_dir = store.data_dir();
        data_dir.write_identity(Identity { cluster_id: 7, node_id: 1 }).unwrap();
        let origin = Origin {
            joined: false,
            base: ConfState { voters: vec![1], learners: vec![] },
            members: vec![(1, "127.0.0.1:3001".into())],
        };
        data_dir.write_origin(&origin).unwrap();
    }
    let name_of = |prefix: &str| {
        fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .find(|name| name.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} file"))
    };
    let cases = [
        (name_of("hardstate"), "hard state", "version 1"),
        (name_of("log-"), "log segment", "version 1"),
        (name_of("snapshot-"), "snapshot", "versions 1, 2"),
        (name_of("identity"), "identity", "version 1"),
        (name_of("origin"), "origin", "version 1"),
    ];
    for (name, what, reads) in cases {
        let path = dir.path().join(&name);
        let original = fs::read(&path).unwrap();
        let mut newer = original.clone();
        newer[8..12].copy_from_slice(&99u32.to_le_bytes());
        fs::write(&path, &newer).unwrap();
        let error = match what {
            "identity" => DataDir::open(dir.path()).and_then(|d| d.identity()).map(|_| ()),
            "origin" => DataDir::open(dir.path()).and_then(|d| d.origin()).map(|_| ()),
            _ => Store::open(dir.path(), small()).map(|_| ()),
        }
        .expect_err(&format!("{name} of version 99 must be refused"));
        match &error {
            StoreError::UnsupportedVersion { path: p, what: w, found: 99, supported, .. } => {
                assert_eq!((p, *w, supported.as_str()), (&path, what, reads), "{error}");
            }
            other => panic!("{name}: expected UnsupportedVersion, got {other}"),
        }
        let message = error.to_string();
        assert!(message.contains(&name) && message.contains("99") && message.contains(reads), "{message}");
        fs::write(&path, &original).unwrap();
    }
    // Restored, the directory opens again: the refusal changed nothing.
    Store::open(dir.path(), small()).unwrap();
}
