//! ReadIndex (thesis §6.4): linearizable reads without writing to the log.
//!
//! A read records the commit index when it arrives, then waits for a heartbeat
//! round that a majority acknowledges. Every heartbeat carries the latest round
//! number; an answer to round r confirms every read registered in rounds <= r, so
//! all reads that arrive between two Readys share one round (batching).

use std::collections::VecDeque;

use super::entry::NodeId;

/// A read waiting for its round to be confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReadRequest {
    /// The requester's identifier for the read.
    pub(crate) context: u64,
    /// The node that asked (the leader itself for local reads).
    pub(crate) from: NodeId,
    /// The leader's commit index when the read arrived.
    pub(crate) index: u64,
    /// The heartbeat round that must be acknowledged by a majority.
    pub(crate) round: u64,
}

/// The reads a leader has in flight.
#[derive(Debug, Default)]
pub(crate) struct ReadOnly {
    /// Reads waiting, in round order. Invariant: rounds are non-decreasing and <= round + 1.
    pending: VecDeque<ReadRequest>,
    /// The latest round started (its heartbeats sent). Never decreases, across terms too.
    round: u64,
    /// Reads are waiting for a round that has not started yet.
    round_wanted: bool,
}

impl ReadOnly {
    /// The latest round started: heartbeats carry it.
    pub(crate) fn round(&self) -> u64 {
        self.round
    }

    /// Registers a read at `index`; it will be confirmed by the next round.
    pub(crate) fn add(&mut self, context: u64, from: NodeId, index: u64) {
        self.pending.push_back(ReadRequest { context, from, index, round: self.round + 1 });
        self.round_wanted = true;
    }

    /// True when a new round must be started (heartbeats sent).
    pub(crate) fn round_wanted(&self) -> bool {
        self.round_wanted
    }

    /// Starts the next round and returns its number.
    pub(crate) fn start_round(&mut self) -> u64 {
        assert!(self.round_wanted, "round started without reads waiting");
        self.round += 1;
        self.round_wanted = false;
        self.round
    }

    /// Removes and returns the reads confirmed by a majority acknowledging `round`.
    pub(crate) fn confirm(&mut self, round: u64) -> Vec<ReadRequest> {
        let mut out = Vec::new();
        while let Some(read) = self.pending.front() {
            if read.round > round {
                break;
            }
            out.push(self.pending.pop_front().expect("front exists"));
        }
        out
    }

    /// Drops every pending read (leadership lost: callers time out and retry).
    pub(crate) fn clear(&mut self) {
        self.pending.clear();
        self.round_wanted = false;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}
