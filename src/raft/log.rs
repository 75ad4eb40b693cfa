//! The in-memory Raft log: entries after the last snapshot, and how much of it is
//! durable, committed and applied.
//!
//! ```text
//!  snapshot.index   applied <= committed        stable <= in_progress     last
//!  |                |          |                |         |               |
//!  [ compacted ... ][ entries ..................................................]
//! ```
//!
//! `stable` is what the caller has made durable; `in_progress` is what has been
//! handed out in a Ready not yet advanced. Entries after `in_progress` are new.

use std::collections::VecDeque;

use super::entry::{ConfState, Entry, SnapshotMeta};

/// The log of one node.
#[derive(Debug)]
pub(crate) struct RaftLog {
    /// The last compacted (or installed) entry. Invariant: snapshot.index <= applied.
    snapshot: SnapshotMeta,
    /// Entries from snapshot.index + 1, consecutive. Invariant: entries[i].index == snapshot.index + 1 + i.
    entries: VecDeque<Entry>,
    /// Index of the last durable entry. Invariant: snapshot.index <= stable <= in_progress <= last_index.
    stable: u64,
    /// Index of the last entry handed out for persisting. Invariant: stable <= in_progress.
    in_progress: u64,
    /// Highest index known committed. Invariant: committed <= last_index.
    pub(crate) committed: u64,
    /// Highest index applied by the caller. Invariant: applied <= committed.
    pub(crate) applied: u64,
    /// Highest index handed out for applying. Invariant: applied <= applying <= committed.
    applying: u64,
    /// A snapshot received from the leader, not yet handed out for persisting.
    pub(crate) pending_snapshot: Option<super::entry::Snapshot>,
}

impl RaftLog {
    /// A log restored from storage: the snapshot and the entries after it, all durable.
    pub(crate) fn restore(snapshot: SnapshotMeta, entries: Vec<Entry>, committed: u64) -> RaftLog {
        let last = entries.last().map_or(snapshot.index, |e| e.index);
        let committed = committed.max(snapshot.index);
        assert!(committed <= last, "restore: commit {committed} beyond last index {last}");
        RaftLog {
            stable: last,
            in_progress: last,
            committed,
            applied: snapshot.index,
            applying: snapshot.index,
            snapshot,
            entries: entries.into(),
            pending_snapshot: None,
        }
    }

    pub(crate) fn snapshot_meta(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    /// The first index still held (snapshot.index + 1).
    pub(crate) fn first_index(&self) -> u64 {
        self.snapshot.index + 1
    }

    pub(crate) fn last_index(&self) -> u64 {
        self.snapshot.index + self.entries.len() as u64
    }

    pub(crate) fn last_term(&self) -> u64 {
        self.entries.back().map_or(self.snapshot.term, |e| e.term)
    }

    pub(crate) fn stable_index(&self) -> u64 {
        self.stable
    }

    /// The term of the entry at `index`: `None` if it is compacted away (other than
    /// the snapshot's own index) or beyond the end.
    pub(crate) fn term(&self, index: u64) -> Option<u64> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub(crate) fn entry(&self, index: u64) -> Option<&Entry> {
        if index <= self.snapshot.index {
            return None;
        }
        self.entries.get((index - self.snapshot.index - 1) as usize)
    }

    /// True when our log holds `index` with `term`.
    pub(crate) fn matches(&self, index: u64, term: u64) -> bool {
        self.term(index) == Some(term)
    }

    /// §5.4.1: a candidate's log is at least as up to date as ours if its last term is
    /// higher, or equal with a last index at least ours (RAFT-NOTES #9).
    pub(crate) fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        last_term > self.last_term() || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Entries in [lo, hi], cut after `max_bytes` (at least one entry if any).
    /// Panics if `lo` is compacted: callers check `first_index` first.
    pub(crate) fn slice(&self, lo: u64, hi: u64, max_bytes: u64) -> Vec<Entry> {
        assert!(lo > self.snapshot.index, "slice from {lo} but log compacted to {}", self.snapshot.index);
        let hi = hi.min(self.last_index());
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut index = lo;
        while index <= hi {
            let entry = self.entry(index).expect("index within log");
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
            index += 1;
        }
        out
    }

    /// The first index holding `term`, scanning back from `index` (fast back-off, §5.3).
    pub(crate) fn first_index_of_term(&self, term: u64, index: u64) -> u64 {
        let mut first = index;
        while first > self.first_index() && self.term(first - 1) == Some(term) {
            first -= 1;
        }
        first
    }

    /// The last index whose term is <= `term`, at or before `index` (leader side of fast back-off).
    pub(crate) fn last_index_with_term_at_most(&self, term: u64, index: u64) -> u64 {
        let mut i = index.min(self.last_index());
        while i > self.snapshot.index {
            match self.term(i) {
                Some(t) if t <= term => return i,
                _ => i -= 1,
            }
        }
        self.snapshot.index
    }

    /// Appends a leader's own new entry.
    pub(crate) fn append_new(&mut self, entry: Entry) {
        assert_eq!(entry.index, self.last_index() + 1, "append_new out of order");
        self.entries.push_back(entry);
    }

    /// Merges entries from the leader that follow `prev_index` (which matched): skips
    /// those we already hold with the same term and truncates only at a real conflict
    /// (Fig. 2, receiver rule 3; RAFT-NOTES #4). Returns the index of the last new entry,
    /// and the index from which entries were appended (after truncating any suffix
    /// there), if any were.
    pub(crate) fn merge(&mut self, prev_index: u64, entries: Vec<Entry>) -> (u64, Option<u64>) {
        let last_new = prev_index + entries.len() as u64;
        let mut iter = entries.into_iter().peekable();
        // Skip entries already held (or compacted: a compacted entry is committed and so matches).
        while let Some(entry) = iter.peek() {
            if entry.index <= self.snapshot.index || self.matches(entry.index, entry.term) {
                iter.next();
            } else {
                break;
            }
        }
        let Some(first_new) = iter.peek().map(|e| e.index) else {
            return (last_new, None);
        };
        if first_new <= self.last_index() {
            assert!(
                first_new > self.committed,
                "conflict at {first_new} would truncate committed entries (commit {})",
                self.committed
            );
            self.truncate_from(first_new);
        }
        for entry in iter {
            self.append_new(entry);
        }
        (last_new, Some(first_new))
    }

    fn truncate_from(&mut self, index: u64) {
        let keep = (index - self.snapshot.index - 1) as usize;
        self.entries.truncate(keep);
        self.stable = self.stable.min(index - 1);
        self.in_progress = self.in_progress.min(index - 1);
    }

    /// Raises the commit index; never lowers it.
    pub(crate) fn commit_to(&mut self, index: u64) {
        if index > self.committed {
            assert!(index <= self.last_index(), "commit {index} beyond last index {}", self.last_index());
            self.committed = index;
        }
    }

    /// Entries to persist next, marking them in progress.
    pub(crate) fn take_unstable(&mut self) -> Vec<Entry> {
        let last = self.last_index();
        if self.in_progress >= last {
            return Vec::new();
        }
        let out: Vec<Entry> = (self.in_progress + 1..=last).map(|i| self.entry(i).unwrap().clone()).collect();
        self.in_progress = last;
        out
    }

    pub(crate) fn has_unstable(&self) -> bool {
        self.in_progress < self.last_index()
    }

    /// Committed entries to apply next (at most `max_bytes`, at least one), marking them as being applied.
    pub(crate) fn take_committed(&mut self, max_bytes: u64) -> Vec<Entry> {
        if self.applying >= self.committed {
            return Vec::new();
        }
        let out = self.slice(self.applying + 1, self.committed, max_bytes);
        self.applying = out.last().map_or(self.applying, |e| e.index);
        out
    }

    pub(crate) fn has_committed_to_apply(&self) -> bool {
        self.applying < self.committed
    }

    /// The caller applied everything handed out up to `index`.
    pub(crate) fn applied_to(&mut self, index: u64) {
        assert!(index <= self.applying, "applied {index} beyond what was handed out ({})", self.applying);
        self.applied = self.applied.max(index);
    }

    /// The caller has made durable everything handed out, and applied what it was given.
    pub(crate) fn advance(&mut self) {
        self.stable = self.in_progress;
        self.applied = self.applying;
    }

    /// The metadata of a snapshot at `index`, an index the log holds, whose
    /// configuration (as of `index`) is `conf`.
    pub(crate) fn meta_at(&self, index: u64, conf: ConfState) -> SnapshotMeta {
        let term = self.term(index).expect("snapshot index within log");
        SnapshotMeta { index, term, conf }
    }

    /// Drops entries up to `index` (<= applied, <= stable) after the caller saved a
    /// snapshot; `conf` is the configuration as of `index`.
    pub(crate) fn compact(&mut self, index: u64, conf: ConfState) -> SnapshotMeta {
        assert!(index <= self.applied && index <= self.stable && index > self.snapshot.index);
        let term = self.term(index).expect("compact index within log");
        let drop = (index - self.snapshot.index) as usize;
        self.entries.drain(..drop);
        self.snapshot = SnapshotMeta { index, term, conf };
        self.stable = self.stable.max(index);
        self.in_progress = self.in_progress.max(index);
        self.snapshot.clone()
    }

    /// Installs a snapshot from the leader (§7). If we hold its last entry with the same
    /// term, the log after it is kept (RAFT-NOTES #16); otherwise the whole log goes.
    pub(crate) fn restore_snapshot(&mut self, snapshot: super::entry::Snapshot) {
        let meta = &snapshot.meta;
        assert!(meta.index > self.committed);
        if self.matches(meta.index, meta.term) {
            let drop = (meta.index - self.snapshot.index) as usize;
            self.entries.drain(..drop);
        } else {
            self.entries.clear();
        }
        self.snapshot = meta.clone();
        self.committed = meta.index;
        self.applied = meta.index;
        self.applying = meta.index;
        // The entries kept after the snapshot are re-persisted with it, so the storage
        // layer need not reason about partial overlap.
        self.stable = meta.index;
        self.in_progress = meta.index;
        self.pending_snapshot = Some(snapshot);
    }
}
