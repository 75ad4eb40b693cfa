//! A leader's view of one follower's log, and the quorum arithmetic over them.

use std::collections::VecDeque;

/// How the leader is currently sending to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    /// Where the follower's log matches is unknown: one AppendEntries at a time, then wait.
    Probe,
    /// The follower's log matches: send optimistically, several in flight (pipelining).
    Replicate,
    /// The follower needs entries already compacted: a snapshot is on its way.
    Snapshot {
        /// The snapshot's index.
        index: u64,
    },
}

/// The AppendEntries in flight to one follower, oldest first, bounded in count and bytes.
#[derive(Debug)]
pub(crate) struct Inflights {
    /// (last index of the message, bytes of entries it carried).
    messages: VecDeque<(u64, u64)>,
    /// Sum of the bytes in `messages`. Invariant: bytes == sum of messages' bytes.
    bytes: u64,
    max_messages: usize,
    max_bytes: u64,
}

impl Inflights {
    pub(crate) fn new(max_messages: usize, max_bytes: u64) -> Inflights {
        Inflights { messages: VecDeque::new(), bytes: 0, max_messages, max_bytes }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.messages.len() >= self.max_messages || self.bytes >= self.max_bytes
    }

    pub(crate) fn add(&mut self, last_index: u64, bytes: u64) {
        if let Some(&(previous, _)) = self.messages.back() {
            assert!(last_index > previous, "inflight {last_index} after {previous}");
        }
        self.messages.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose last index is <= `index` (acknowledged).
    pub(crate) fn free_to(&mut self, index: u64) {
        while let Some(&(last, bytes)) = self.messages.front() {
            if last > index {
                break;
            }
            self.messages.pop_front();
            self.bytes -= bytes;
        }
    }

    /// Frees the oldest message: a heartbeat answer shows the follower is alive even
    /// though an append or its answer was lost, so let one more go out.
    pub(crate) fn free_first(&mut self) {
        if let Some((_, bytes)) = self.messages.pop_front() {
            self.bytes -= bytes;
        }
    }

    pub(crate) fn clear(&mut self) {
        self.messages.clear();
        self.bytes = 0;
    }
}

/// Replication progress of one follower.
#[derive(Debug)]
pub(crate) struct Progress {
    /// Highest index known replicated on the follower. Only ever grows within a term
    /// (RAFT-NOTES #6). Invariant: match_index < next_index.
    pub(crate) match_index: u64,
    /// Next index to send.
    pub(crate) next_index: u64,
    pub(crate) state: ProgressState,
    /// In Probe: an AppendEntries was sent and no answer or heartbeat tick has come since.
    pub(crate) probe_sent: bool,
    pub(crate) inflights: Inflights,
    /// Answered anything since the last check-quorum round.
    pub(crate) recently_active: bool,
    /// `recently_active` as the last check-quorum round ended.
    pub(crate) active_in_previous_round: bool,
    /// The latest ReadIndex round this follower acknowledged in this term.
    pub(crate) read_round_acked: u64,
    /// Ticks spent in the Snapshot state; the snapshot is resent after an election timeout.
    pub(crate) snapshot_ticks: u32,
}

impl Progress {
    pub(crate) fn new(next_index: u64, max_messages: usize, max_bytes: u64) -> Progress {
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::new(max_messages, max_bytes),
            recently_active: false,
            active_in_previous_round: false,
            read_round_acked: 0,
            snapshot_ticks: 0,
        }
    }

    pub(crate) fn become_probe(&mut self) {
        // After a snapshot, continue from its index; otherwise from what matches.
        let next = match self.state {
            ProgressState::Snapshot { index } => index.max(self.match_index) + 1,
            _ => self.match_index + 1,
        };
        self.state = ProgressState::Probe;
        self.next_index = next;
        self.probe_sent = false;
        self.inflights.clear();
    }

    pub(crate) fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflights.clear();
    }

    pub(crate) fn become_snapshot(&mut self, index: u64) {
        self.state = ProgressState::Snapshot { index };
        self.probe_sent = false;
        self.snapshot_ticks = 0;
        self.inflights.clear();
    }

    /// Whether the leader should hold back sending entries now.
    pub(crate) fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.is_full(),
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// Records a successful answer up to `index`. Returns true if it taught us something new.
    pub(crate) fn update_match(&mut self, index: u64) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index + 1);
        updated
    }

    /// Records that an AppendEntries up to `last_index` was sent.
    pub(crate) fn sent_entries(&mut self, last_index: u64, bytes: u64, count: usize) {
        match self.state {
            ProgressState::Replicate => {
                if count > 0 {
                    self.next_index = last_index + 1;
                    self.inflights.add(last_index, bytes);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => unreachable!("entries sent in snapshot state"),
        }
    }

    /// A rejection of the AppendEntries whose prev_log_index was `rejected`: moves
    /// next_index back to `hint` unless the rejection is stale. Returns true if applied.
    /// RAFT-NOTES #6: a late rejection never rewinds next_index to or below match_index.
    pub(crate) fn maybe_decrease_to(&mut self, rejected: u64, hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.match_index {
                return false; // stale: we already know it matches there
            }
            self.next_index = (self.match_index + 1).max(hint.min(rejected));
            return true;
        }
        // Probe: only the answer to the probe we sent (prev = next - 1) counts.
        if self.next_index == 0 || rejected != self.next_index - 1 {
            return false;
        }
        self.next_index = (self.match_index + 1).max(hint.min(rejected)).max(1);
        self.probe_sent = false;
        true
    }

    pub(crate) fn state_name(&self) -> &'static str {
        match self.state {
            ProgressState::Probe => "probe",
            ProgressState::Replicate => "replicate",
            ProgressState::Snapshot { .. } => "snapshot",
        }
    }
}

/// The largest value that a majority of `values` is at or above.
pub(crate) fn quorum_value(values: &mut [u64]) -> u64 {
    assert!(!values.is_empty());
    values.sort_unstable_by(|a, b| b.cmp(a));
    values[values.len() / 2]
}

/// The number of votes that make a majority of `voters`.
pub(crate) fn majority(voters: usize) -> usize {
    voters / 2 + 1
}
