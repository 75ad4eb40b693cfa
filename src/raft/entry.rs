//! What the log holds and what must survive a crash: entries, the hard state, snapshot metadata.

use bytes::Bytes;

/// A node's identity in the cluster. Never 0: 0 is reserved on disk for "no vote".
pub type NodeId = u64;

/// What an entry is for. The value is its on-disk and on-wire tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// A client command for the state machine.
    Normal = 0,
    /// The empty entry a new leader appends to commit earlier terms (§5.4.2, §8).
    Noop = 1,
    /// A single-server configuration change (thesis §4.1): the data is an encoded
    /// `ConfChange`. It takes effect when appended, not when committed. Data that does not
    /// decode (no build ever wrote such entries, but a log is input) changes nothing.
    Config = 2,
}

impl EntryKind {
    /// Decodes a tag read from disk or the wire; `None` for an unknown tag.
    pub fn from_tag(tag: u8) -> Option<EntryKind> {
        match tag {
            0 => Some(EntryKind::Normal),
            1 => Some(EntryKind::Noop),
            2 => Some(EntryKind::Config),
            _ => None,
        }
    }
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The leader's term when the entry was created. Invariant: >= 1.
    pub term: u64,
    /// Position in the log. Invariant: >= 1, consecutive within a log.
    pub index: u64,
    /// What the entry carries.
    pub kind: EntryKind,
    /// The command bytes, opaque to Raft (empty for `Noop`).
    pub data: Bytes,
}

impl Entry {
    /// Bytes counted against message and inflight limits: payload plus a fixed header.
    pub fn size_bytes(&self) -> u64 {
        ENTRY_OVERHEAD_BYTES + self.data.len() as u64
    }
}

/// The fixed cost of an entry besides its payload, used for size limits.
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

/// State that must be durable before any message that depends on it is sent
/// (paper Fig. 2, "Persistent state on all servers").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: u64,
    /// The candidate voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// A lower bound of the commit index. Persisting it is optional; if it is
    /// persisted it may lag, never lead (RAFT-NOTES #3).
    pub commit: u64,
}

/// The members of the cluster: voters, and learners (who receive the log but never
/// count toward a commit, a read or an election).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfState {
    /// Node ids of the voting members, sorted, without duplicates, no 0.
    pub voters: Vec<NodeId>,
    /// Node ids of the learners, sorted, without duplicates, no 0, none a voter.
    pub learners: Vec<NodeId>,
}

impl ConfState {
    /// A configuration of voters only, sorted and deduplicated.
    pub fn with_voters(mut voters: Vec<NodeId>) -> ConfState {
        voters.sort_unstable();
        voters.dedup();
        ConfState { voters, learners: Vec::new() }
    }

    /// Whether `id` votes.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok()
    }

    /// Whether `id` is a learner.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.binary_search(&id).is_ok()
    }

    /// Whether `id` is a voter or a learner.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Voters and learners, in id order.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        let mut all: Vec<NodeId> = self.voters.iter().chain(self.learners.iter()).copied().collect();
        all.sort_unstable();
        all.into_iter()
    }

    /// Why this is not a valid configuration, if it is not: both lists sorted without
    /// duplicates, no node 0, no node in both.
    pub fn invalid_reason(&self) -> Option<&'static str> {
        let strictly_increasing = |ids: &[NodeId]| ids.windows(2).all(|w| w[0] < w[1]);
        if !strictly_increasing(&self.voters) || !strictly_increasing(&self.learners) {
            return Some("voters or learners not strictly increasing");
        }
        if self.voters.first() == Some(&0) || self.learners.first() == Some(&0) {
            return Some("configuration names node 0");
        }
        if self.learners.iter().any(|&l| self.is_voter(l)) {
            return Some("a node is both voter and learner");
        }
        None
    }
}

/// Where a snapshot stands in the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The last log index the snapshot covers.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// The configuration as of `index`.
    pub conf: ConfState,
}

/// A snapshot of the state machine and where it stands in the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Where it stands.
    pub meta: SnapshotMeta,
    /// The state machine's bytes. The core never reads them: a leader emits
    /// `InstallSnapshot` with empty data and the transport attaches the node's
    /// latest snapshot (rewriting `meta` to match) when it sends it.
    pub data: Bytes,
}
