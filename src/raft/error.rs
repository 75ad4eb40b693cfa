//! The Raft core's typed errors. A broken invariant is not an error: it panics.

use super::entry::NodeId;
use thiserror::Error;

/// A bad `Config`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Node ids start at 1.
    #[error("node id must not be 0")]
    ZeroId,
    /// Heartbeats must come well within an election timeout.
    #[error("need 0 < heartbeat_ticks ({heartbeat_ticks}) < election_ticks ({election_ticks})")]
    Timing {
        /// The election timeout given.
        election_ticks: u32,
        /// The heartbeat interval given.
        heartbeat_ticks: u32,
    },
    /// Inflight and message limits must allow at least something.
    #[error("message and inflight limits must be > 0")]
    ZeroLimit,
}

/// Why `Raft::new` refused the persisted state.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InitError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// This node is not one of the voters.
    #[error("node {id} is not among the voters {voters:?}")]
    NotAVoter {
        /// Our id.
        id: NodeId,
        /// The voters.
        voters: Vec<NodeId>,
    },
    /// The entries do not follow the snapshot consecutively.
    #[error("log entries are not consecutive after snapshot index {snapshot_index}: found index {found} where {expected} was expected")]
    Gap {
        /// The snapshot's last index.
        snapshot_index: u64,
        /// The index expected.
        expected: u64,
        /// The index found.
        found: u64,
    },
    /// An entry's term is lower than the previous one's, or higher than the hard state's term.
    #[error("log entry {index} has term {term}, out of order (previous term {previous_term}, current term {current_term})")]
    TermOrder {
        /// The entry.
        index: u64,
        /// Its term.
        term: u64,
        /// The previous entry's term.
        previous_term: u64,
        /// The hard state's term.
        current_term: u64,
    },
    /// The persisted commit index is beyond the log.
    #[error("commit index {commit} is beyond the last log index {last_index}")]
    CommitBeyondLog {
        /// The commit index persisted.
        commit: u64,
        /// The last index present.
        last_index: u64,
    },
}

/// Why a message was refused. Refused messages change nothing.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StepError {
    /// The message names another node as its receiver.
    #[error("message for node {to} delivered to node {me}")]
    WrongReceiver {
        /// The receiver named.
        to: NodeId,
        /// This node.
        me: NodeId,
    },
    /// The sender is not a member.
    #[error("message from unknown node {0}")]
    UnknownSender(NodeId),
    /// The message is malformed (for example entries that are not consecutive).
    #[error("malformed {kind} from node {from}: {reason}")]
    Malformed {
        /// The message kind.
        kind: &'static str,
        /// The sender.
        from: NodeId,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Why a proposal was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProposeError {
    /// Only the leader accepts proposals; `leader` is who this node thinks leads.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The known leader, if any.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is in progress (thesis §3.10).
    #[error("leadership transfer in progress")]
    TransferInProgress,
}

/// Why a read index request was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReadIndexError {
    /// No leader is known to ask.
    #[error("no leader known")]
    NoLeader,
}

/// Why a leadership transfer was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TransferError {
    /// Only the leader can transfer leadership.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The known leader, if any.
        leader: Option<NodeId>,
    },
    /// The target is not a voter, or is this node.
    #[error("cannot transfer leadership to node {0}")]
    InvalidTarget(NodeId),
    /// There is no other voter to transfer to.
    #[error("no follower to transfer leadership to")]
    NoFollower,
}

/// Why a compaction was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CompactError {
    /// The index is beyond what has been applied.
    #[error("cannot compact to {index}: only {applied} applied")]
    NotApplied {
        /// The index asked for.
        index: u64,
        /// The applied index.
        applied: u64,
    },
    /// The log is already compacted to that index or further.
    #[error("already compacted to {snapshot_index}")]
    AlreadyCompacted {
        /// The current snapshot index.
        snapshot_index: u64,
    },
}
