//! The Raft state machine (placeholder surface; implementation in progress).
#![allow(unused)]

use super::*;
use bytes::Bytes;

/// What a node starts from: what its storage holds.
#[derive(Clone, Debug, Default)]
pub struct InitialState {
    /// The persisted hard state (default for a new node).
    pub hard_state: HardState,
    /// The latest snapshot's metadata; `conf.voters` is the cluster's membership
    /// (for a new node: index 0, term 0, and the configured voters).
    pub snapshot: SnapshotMeta,
    /// The log entries after the snapshot, consecutive from `snapshot.index + 1`.
    pub entries: Vec<Entry>,
}

/// One Raft node.
pub struct Raft {
    id: NodeId,
}

impl Raft {
    /// Starts a node from its persisted state. Applied starts at the snapshot's
    /// index: committed entries after it come out again in `Ready::committed_entries`.
    pub fn new(config: Config, initial: InitialState) -> Result<Raft, InitError> {
        todo!()
    }
    /// Advances time by one tick.
    pub fn tick(&mut self) {
        todo!()
    }
    /// Handles a message from a peer.
    pub fn step(&mut self, message: Message) -> Result<(), StepError> {
        todo!()
    }
    /// Starts an election now (pre-vote first if configured).
    pub fn campaign(&mut self) {
        todo!()
    }
    /// Appends a command to the leader's log; returns the entry's (term, index). The
    /// command succeeded when an entry with that index *and term* is committed.
    pub fn propose(&mut self, data: Bytes) -> Result<(u64, u64), ProposeError> {
        todo!()
    }
    /// Asks for a linearizable read; a `ReadState` with this context comes out in a
    /// later Ready (or never, if leadership is lost: callers time out).
    pub fn read_index(&mut self, context: u64) -> Result<(), ReadIndexError> {
        todo!()
    }
    /// Hands leadership to `to` (thesis §3.10).
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), TransferError> {
        todo!()
    }
    /// Says a snapshot of the state machine up to `index` (<= applied) is durable:
    /// the log up to it may be dropped. Returns the snapshot's metadata.
    pub fn compact(&mut self, index: u64) -> Result<SnapshotMeta, CompactError> {
        todo!()
    }
    /// True when `ready` would return something.
    pub fn has_ready(&self) -> bool {
        todo!()
    }
    /// Takes what needs doing. See `Ready` for the order.
    pub fn ready(&mut self) -> Ready {
        todo!()
    }
    /// Says the last Ready has been fully handled.
    pub fn advance(&mut self) {
        todo!()
    }
    /// The node's state.
    pub fn status(&self) -> Status {
        todo!()
    }
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }
}
