//! Persistence for the Raft core: the log, the hard state and snapshots of one node, in
//! memory-mapped files under a locked data directory.
//!
//! Layout: `mapped` is the mapped file (all of the crate's `unsafe`); `record` encodes and
//! decodes log records (pure); `log` keeps segments and the index; `hard_state` the two-slot
//! term/vote/commit file; `snapshot` the snapshot files; `incoming` a snapshot being
//! received in chunks; `data_dir` the lock, the identity
//! and the refusal of legacy JSON; `error` the error type. The byte formats and recovery
//! rules are in `docs/format.md`.
//!
//! The path of a `Ready` through the store: [`Store::append`] its entries,
//! [`Store::set_hard_state`], then one [`Store::sync`] (group commit: one `msync` per file
//! touched, however many entries), and only then send the messages that depend on them.
//!
//! Durability order (`docs/format.md`, "Write order"): the hard state's term is durable no
//! later than any entry or snapshot of that term (an entry of a newer term makes
//! [`Store::append`] msync the term first, because mapped log bytes may reach the disk at
//! any moment after they are written), and the log is durable before any commit index that
//! covers it (the hard state is written after the log's msync). So a crash at any point
//! leaves a state that [`crate::raft::Raft::new`] accepts.

#![deny(missing_docs)]

mod data_dir;
mod error;
mod hard_state;
mod incoming;
mod log;
#[allow(unsafe_code)]
mod mapped;
pub mod record;
pub mod snapshot;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use data_dir::{detect_legacy_json, looks_like_legacy_json, mark_removed, DataDir, Identity, Origin};
pub use error::StoreError;
pub use incoming::IncomingSnapshot;
pub use mapped::lower_thread_priority;

use crate::raft::{Entry, HardState, SnapshotMeta};
use hard_state::HardStateFile;
use log::{Log, LogOptions};

/// Tunables of a [`Store`].
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// A log segment is closed when the next record would take it past this size.
    pub segment_bytes: u64,
    /// Segment files grow by at least this much at a time (one ftruncate + remap).
    pub grow_step_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions { segment_bytes: 64 << 20, grow_step_bytes: 16 << 20 }
    }
}

/// What [`Store::open`] found on disk.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// The last synced hard state (the default for a new store).
    pub hard_state: HardState,
    /// The newest snapshot and its data.
    pub snapshot: Option<(SnapshotMeta, Bytes)>,
    /// The log entries after the snapshot, consecutive from `snapshot index + 1`.
    pub entries: Vec<Entry>,
    /// What recovery repaired (torn tails, leftovers), each naming the file and offset.
    pub warnings: Vec<String>,
}

/// What one [`Store::sync`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Bytes handed to `msync` (whole pages).
    pub bytes: u64,
    /// `msync` calls made.
    pub msync_calls: u32,
    /// Wall time of the sync.
    pub duration: Duration,
}

/// One node's durable state.
pub struct Store {
    data_dir: DataDir,
    log: Log,
    hard_state: HardStateFile,
    /// Index of the newest durable snapshot (0 if none). Invariant: `log.first_index() <= snapshot_index + 1`.
    snapshot_index: u64,
}

impl Store {
    /// Opens (creating if needed) the store in `dir` and recovers its state.
    ///
    /// Fails with [`StoreError::Locked`] if another process uses `dir`, with
    /// [`StoreError::LegacyFormat`] for the original's JSON files, and with
    /// [`StoreError::Corrupt`] for damage that is not a torn tail.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<(Store, Recovered), StoreError> {
        let data_dir = DataDir::open(dir)?;
        let mut warnings = Vec::new();
        refuse_legacy_files(dir, &mut warnings)?;
        let snapshot = snapshot::load(dir, &mut warnings)?;
        let mut hard_state = HardStateFile::open(dir, &mut warnings)?;
        let log_options =
            LogOptions { segment_bytes: options.segment_bytes, grow_step_bytes: options.grow_step_bytes };
        let first_segment_seq = snapshot.as_ref().map_or(0, |s| s.first_segment_seq);
        let mut log = Log::open(dir, first_segment_seq, log_options, &mut warnings)?;
        let snapshot_index = snapshot.as_ref().map_or(0, |s| s.meta.index);
        let meta = snapshot.as_ref().map(|s| &s.meta);
        let commit = hard_state.get().commit;
        check_log(dir, meta, commit, log.term(snapshot_index), log.last_index(), log.tail())?;
        log.forget_through(snapshot_index);
        check_log_start(dir, log.first_index(), snapshot_index)?;
        let entries = log.entries(log.first_index(), log.last_index() + 1)?;
        let newest_term =
            entries.last().map(|e| e.term).max(snapshot.as_ref().map(|s| s.meta.term)).unwrap_or(0);
        if newest_term > hard_state.get().term {
            // Only a store written before the hard state's term was synced ahead of the log
            // gets here. The node had reached that term (it held a record of it), and it had
            // sent no vote in it (a vote is sent only once durable, and none is).
            let warning = format!(
                "{}: the log holds term {newest_term} but the hard state only term {}: raised the \
                 hard state to term {newest_term} with no vote",
                dir.display(),
                hard_state.get().term
            );
            tracing::warn!("{warning}");
            warnings.push(warning);
            hard_state.make_term_durable(newest_term)?;
        }
        let recovered = Recovered {
            hard_state: hard_state.get(),
            snapshot: snapshot.map(|s| (s.meta, s.data)),
            entries,
            warnings,
        };
        Ok((Store { data_dir, log, hard_state, snapshot_index }, recovered))
    }

    /// What [`Store::open`] would recover from `dir`, read without changing anything
    /// (`mmapd-admin inspect`): the same checks, with what an open would repair or remove
    /// (a torn tail, leftovers, a hard-state term behind the log) in the warnings, and the
    /// hard state as the open would raise it. Takes a shared lock: fails with
    /// [`StoreError::Locked`] while a node runs on `dir`, and keeps one from starting.
    /// Reads the log into memory.
    pub fn read_only(dir: &Path) -> Result<(DataDir, Recovered), StoreError> {
        let data_dir = DataDir::open_shared(dir)?;
        let mut warnings = Vec::new();
        refuse_legacy_files(dir, &mut warnings)?;
        let snapshot = snapshot::read_only(dir, &mut warnings)?;
        let mut hard_state = hard_state::read_only(dir, &mut warnings)?;
        let first_segment_seq = snapshot.as_ref().map_or(0, |s| s.first_segment_seq);
        let mut log = log::ReadOnlyLog::read(dir, first_segment_seq, &mut warnings)?;
        let snapshot_index = snapshot.as_ref().map_or(0, |s| s.meta.index);
        let meta = snapshot.as_ref().map(|s| &s.meta);
        let (tail, tail_offset) = log.tail(dir);
        check_log(
            dir,
            meta,
            hard_state.commit,
            log.term(snapshot_index),
            log.last_index(),
            (&tail, tail_offset),
        )?;
        log.forget_through(snapshot_index);
        check_log_start(dir, log.first_index(), snapshot_index)?;
        let entries = log.entries();
        let newest_term = entries.last().map(|e| e.term).max(meta.map(|m| m.term)).unwrap_or(0);
        if newest_term > hard_state.term {
            warnings.push(format!(
                "{}: the log holds term {newest_term} but the hard state only term {}: raised to \
                 term {newest_term} with no vote at the next start",
                dir.display(),
                hard_state.term
            ));
            hard_state = HardState { term: newest_term, vote: None, commit: hard_state.commit };
        }
        let recovered =
            Recovered { hard_state, snapshot: snapshot.map(|s| (s.meta, s.data)), entries, warnings };
        Ok((data_dir, recovered))
    }

    /// The locked data directory (identity lives there).
    pub fn data_dir(&self) -> &DataDir {
        &self.data_dir
    }

    /// Appends consecutive entries. If the first one's index is already in the log, that
    /// entry and all after it are replaced. Not durable until [`Store::sync`]; on error
    /// (e.g. [`StoreError::DiskFull`]) the log is unchanged.
    ///
    /// If an entry has a term the durable hard state has not reached, that term is made
    /// durable first (one msync; see [`Store`]'s write order): the records go into the
    /// mapped log, which background writeback, a segment roll or a killed process's page
    /// cache can make durable before any [`Store::sync`].
    ///
    /// Panics if the entries are not consecutive or would leave a gap or overwrite
    /// entries covered by the snapshot: the Raft core never asks for that.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        if let Some(newest_term) = entries.iter().map(|e| e.term).max() {
            self.hard_state.make_term_durable(newest_term)?;
        }
        self.log.append(entries)
    }

    /// Sets the hard state: kept in memory, cheap enough for every commit change. The next
    /// [`Store::sync`] writes it after the log is durable; a crash before or during that
    /// leaves the previous value (or the term [`Store::append`] made durable early).
    pub fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StoreError> {
        self.hard_state.set(hard_state);
        Ok(())
    }

    /// The last hard state set.
    pub fn hard_state(&self) -> HardState {
        self.hard_state.get()
    }

    /// Makes everything appended and set so far durable: one `msync` per file with
    /// unsynced bytes.
    pub fn sync(&mut self) -> Result<SyncStats, StoreError> {
        let started = Instant::now();
        let log = self.log.sync()?;
        let hard_state = self.hard_state.sync()?;
        Ok(SyncStats {
            bytes: log.bytes + hard_state.bytes,
            msync_calls: log.msync_calls + hard_state.msync_calls,
            duration: started.elapsed(),
        })
    }

    /// Makes the appended entries durable, and the hard state too if its term or vote
    /// changed. A change of the commit index alone stays pending (it is a lower bound
    /// that may lag, RAFT-NOTES #3) until the next full [`Store::sync`]: this saves a
    /// second msync on every replicated batch.
    pub fn sync_entries_and_vote(&mut self) -> Result<SyncStats, StoreError> {
        let started = Instant::now();
        let log = self.log.sync()?;
        let hard_state =
            if self.hard_state.term_or_vote_pending() { self.hard_state.sync()? } else { Default::default() };
        Ok(SyncStats {
            bytes: log.bytes + hard_state.bytes,
            msync_calls: log.msync_calls + hard_state.msync_calls,
            duration: started.elapsed(),
        })
    }

    /// Entries with indexes in `lo..hi`. Panics if the range is not within
    /// `first_index()..=last_index() + 1`.
    pub fn entries(&self, lo: u64, hi: u64) -> Result<Vec<Entry>, StoreError> {
        self.log.entries(lo, hi)
    }

    /// The term of the entry at `index` if the log holds it.
    pub fn term(&self, index: u64) -> Option<u64> {
        self.log.term(index)
    }

    /// The first index in the log (`snapshot index + 1` after a compaction).
    pub fn first_index(&self) -> u64 {
        self.log.first_index()
    }

    /// The last index in the log, or `first_index() - 1` if it is empty.
    pub fn last_index(&self) -> u64 {
        self.log.last_index()
    }

    /// The index of the newest durable snapshot, 0 if none.
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    /// Bytes currently mapped (all log segments and the hard-state file).
    pub fn mapped_bytes(&self) -> u64 {
        self.log.files().map(|f| f.len()).sum::<u64>() + self.hard_state.mapped_file().len()
    }

    /// Saves this node's own snapshot of the state machine, durably; the previous snapshot is
    /// removed only after. Does not compact the log: call [`Store::compact`] for that.
    ///
    /// Panics if `meta.index` is beyond the log or older than the current snapshot.
    pub fn save_snapshot(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StoreError> {
        let written = snapshot::write_temp(self.data_dir.path(), meta, data)?;
        self.adopt_snapshot(written)
    }

    /// The directory snapshot files go in, for [`snapshot::write_temp`] off the store's
    /// thread.
    pub fn dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// Makes a snapshot written with [`snapshot::write_temp`] this node's snapshot, as
    /// [`Store::save_snapshot`] does; the slow part (writing the data) is already done.
    ///
    /// Panics as `save_snapshot` does.
    pub fn adopt_snapshot(&mut self, written: snapshot::WrittenSnapshot) -> Result<(), StoreError> {
        let meta = written.meta().clone();
        let meta = &meta;
        assert!(meta.index <= self.log.last_index(), "snapshot at {} beyond the log", meta.index);
        assert!(
            meta.index >= self.snapshot_index,
            "snapshot at {} older than {}",
            meta.index,
            self.snapshot_index
        );
        if let Some(term) = self.log.term(meta.index) {
            assert_eq!(term, meta.term, "snapshot at {} has the wrong term", meta.index);
        }
        snapshot::adopt(self.data_dir.path(), written, self.log.first_segment_seq())?;
        self.snapshot_index = meta.index;
        Ok(())
    }

    /// Installs a snapshot received from the leader: the snapshot is made durable first,
    /// then the log is reset to continue after `meta.index`. If the log holds the entry at
    /// `meta.index` with `meta.term`, the entries after it are kept; otherwise the whole log
    /// is discarded (§7).
    ///
    /// As with [`Store::append`], a term the durable hard state has not reached is made
    /// durable before the snapshot.
    ///
    /// Panics if `meta.index` is not beyond the current snapshot.
    pub fn install_snapshot(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StoreError> {
        assert!(
            meta.index > self.snapshot_index,
            "installing snapshot at {} over {}",
            meta.index,
            self.snapshot_index
        );
        self.hard_state.make_term_durable(meta.term)?;
        let dir = self.data_dir.path().to_path_buf();
        if self.log.term(meta.index) == Some(meta.term) {
            snapshot::save(&dir, meta, self.log.first_segment_seq(), data)?;
            self.snapshot_index = meta.index;
            return self.log.compact(meta.index);
        }
        self.reset_log_to_snapshot(meta, data)
    }

    /// Makes `meta` this store's snapshot and empties the log, whatever it held: the log
    /// continues at `meta.index + 1`. For a data directory made into a new cluster
    /// offline (`mmapd-admin restore` and `force-new-cluster`), never on a running node:
    /// it drops entries after the snapshot. Crash-safe as [`Store::install_snapshot`]:
    /// the old snapshot and log, or the new snapshot and an empty log.
    ///
    /// A term the durable hard state has not reached is made durable first. Panics if
    /// `meta.index` is older than the current snapshot.
    pub fn reset_to_snapshot(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StoreError> {
        assert!(
            meta.index >= self.snapshot_index,
            "resetting to a snapshot at {} older than {}",
            meta.index,
            self.snapshot_index
        );
        self.hard_state.make_term_durable(meta.term)?;
        self.reset_log_to_snapshot(meta, data)
    }

    /// A new segment first, then the snapshot naming it as the log's first, then the
    /// older segments go: recovery ignores segments before a snapshot's first segment.
    fn reset_log_to_snapshot(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StoreError> {
        let dir = self.data_dir.path().to_path_buf();
        let seq = self.log.begin_reset()?;
        snapshot::save(&dir, meta, seq, data)?;
        self.snapshot_index = meta.index;
        self.log.finish_reset(seq, meta.index + 1)
    }

    /// Drops log entries up to `index`, which a durable snapshot must cover; deletes whole
    /// segments that hold nothing after it, never rewriting live records.
    pub fn compact(&mut self, index: u64) -> Result<(), StoreError> {
        assert!(
            index <= self.snapshot_index,
            "compact({index}) beyond the snapshot at {}",
            self.snapshot_index
        );
        self.log.compact(index)
    }

    /// Files with bytes written but not yet synced, and those byte ranges (for crash tests).
    #[doc(hidden)]
    pub fn unsynced_ranges(&self) -> Vec<(PathBuf, std::ops::Range<u64>)> {
        self.log
            .files()
            .chain(std::iter::once(self.hard_state.mapped_file()))
            .filter_map(|f| f.unsynced_range().map(|r| (f.path().to_path_buf(), r)))
            .collect()
    }
}

/// Recovery rules 5 and 6 (`docs/format.md`) on the replayed log, before the entries the
/// snapshot covers are dropped: the log agrees with the snapshot at its index, and holds
/// every entry the durable commit index covers.
fn check_log(
    dir: &Path,
    snapshot: Option<&SnapshotMeta>,
    commit: u64,
    term_at_snapshot: Option<u64>,
    last_index: u64,
    (tail, tail_offset): (&Path, u64),
) -> Result<(), StoreError> {
    if let (Some(snapshot), Some(term)) = (snapshot, term_at_snapshot) {
        if term != snapshot.term {
            let reason =
                format!("log has term {term} at {}, the snapshot says {}", snapshot.index, snapshot.term);
            return Err(StoreError::corrupt(dir, 0, reason));
        }
    }
    let snapshot_index = snapshot.map_or(0, |s| s.index);
    if commit > last_index.max(snapshot_index) {
        // The hard state is synced after the log, so a durable commit index proves the
        // entries up to it were durable: the missing ones were lost after the fact.
        let reason = format!("the hard state commits index {commit} but the log ends at {last_index}");
        return Err(StoreError::corrupt(tail, tail_offset, reason));
    }
    Ok(())
}

/// Once the entries a snapshot covers are dropped, the log starts right after it.
fn check_log_start(dir: &Path, first_index: u64, snapshot_index: u64) -> Result<(), StoreError> {
    if first_index != snapshot_index + 1 {
        let reason = format!("log starts at {first_index} but the snapshot ends at {snapshot_index}");
        return Err(StoreError::corrupt(dir, 0, reason));
    }
    Ok(())
}

/// Refuses a data directory that holds the original's JSON files (`db.json`, the `-log`
/// file); other files that are not ours are left alone, with a warning.
fn refuse_legacy_files(dir: &Path, warnings: &mut Vec<String>) -> Result<(), StoreError> {
    for item in std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, "read directory", e))? {
        let item = item.map_err(|e| StoreError::io(dir, "read directory", e))?;
        let path = item.path();
        let name = item.file_name();
        let name = name.to_string_lossy();
        let ours = [
            data_dir::LOCK_FILE_NAME,
            data_dir::IDENTITY_FILE_NAME,
            data_dir::ORIGIN_FILE_NAME,
            data_dir::REMOVED_FILE_NAME,
            hard_state::HARD_STATE_FILE_NAME,
        ]
        .contains(&name.as_ref())
            || [".seg", ".snap", ".tmp"].iter().any(|suffix| name.ends_with(suffix));
        if ours || !path.is_file() {
            continue;
        }
        if detect_legacy_json(&path)? {
            return Err(StoreError::LegacyFormat { path });
        }
        let warning = format!("ignoring unknown file {}", path.display());
        tracing::warn!("{warning}");
        warnings.push(warning);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
