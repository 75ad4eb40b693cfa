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
    /// A configuration (the voters). Membership is static for now, but configuration
    /// travels in the log so single-server changes (thesis §4.1) can come without a rewrite.
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

/// The voters of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfState {
    /// Node ids of the voting members, sorted, without duplicates.
    pub voters: Vec<NodeId>,
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
