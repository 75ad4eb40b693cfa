//! The Raft core's typed errors. A broken invariant is not an error: it panics.

use super::conf_change::ConfChangeKind;
use super::entry::{ConfState, NodeId};
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
    /// The snapshot's configuration breaks `ConfState`'s rules, or has no voter.
    #[error("invalid configuration {conf:?}: {reason}")]
    InvalidConf {
        /// The configuration found.
        conf: ConfState,
        /// What is wrong.
        reason: &'static str,
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

/// Why a message was refused: no correct peer could have sent it to this node now.
/// A refused message changes nothing; each error names the message's kind and sender,
/// for the driver's log line.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StepError {
    /// The message names another node as its receiver.
    #[error("{kind} from node {from} is addressed to node {to}, not to this node ({me})")]
    WrongReceiver {
        /// The message kind.
        kind: &'static str,
        /// The sender.
        from: NodeId,
        /// The receiver named.
        to: NodeId,
        /// This node.
        me: NodeId,
    },
    /// The sender is 0, which is no node's id.
    #[error("{kind} from node 0: node ids start at 1")]
    ZeroSender {
        /// The message kind.
        kind: &'static str,
    },
    /// The message claims to come from this node itself.
    #[error("{kind} claims to come from this node ({me}) itself")]
    FromSelf {
        /// The message kind.
        kind: &'static str,
        /// This node.
        me: NodeId,
    },
    /// An answer (to AppendEntries, a heartbeat or a vote request) from a node that is
    /// neither a voter nor a learner in this node's configuration: it was never asked.
    #[error("{kind} from node {from}, which is not a member")]
    ResponseFromNonMember {
        /// The message kind.
        kind: &'static str,
        /// The sender.
        from: NodeId,
    },
    /// A vote or pre-vote request from a node that is not a member of this node's
    /// configuration and whose log is not ahead of this node's: most likely a removed
    /// server, which must not disrupt the cluster (thesis §4.2.3). See `Raft::step` for
    /// why this is safe for new members.
    #[error("{kind} from node {from}, which is not a member")]
    VoteRequestFromNonMember {
        /// The message kind.
        kind: &'static str,
        /// The sender.
        from: NodeId,
    },
    /// A message only a leader sends, from another node in a term whose leader this
    /// node already knows (or is): a term has at most one leader (§5.2).
    #[error("{kind} from node {from} in term {term}, whose leader is node {leader}")]
    NotTheLeader {
        /// The message kind.
        kind: &'static str,
        /// The sender.
        from: NodeId,
        /// The term, ours and the message's.
        term: u64,
        /// The leader this node knows for that term.
        leader: NodeId,
    },
    /// A term or index so large that counting on from it would overflow.
    #[error("{kind} from node {from}: {field} {value} is beyond the largest accepted, {limit}")]
    OutOfRange {
        /// The message kind.
        kind: &'static str,
        /// The sender.
        from: NodeId,
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The largest value accepted.
        limit: u64,
    },
    /// An answer to AppendEntries or InstallSnapshot naming an index this leader never
    /// sent: it is beyond the leader's log.
    #[error("{kind} from node {from} names index {index}, beyond this leader's last index {last_index}")]
    IndexBeyondLog {
        /// The message kind.
        kind: &'static str,
        /// The sender.
        from: NodeId,
        /// The index named.
        index: u64,
        /// The leader's last index.
        last_index: u64,
    },
    /// A heartbeat answer echoing a ReadIndex round this leader has not started.
    #[error(
        "{kind} from node {from} echoes read round {context}, beyond this leader's latest round {round}"
    )]
    RoundBeyondLatest {
        /// The message kind.
        kind: &'static str,
        /// The sender.
        from: NodeId,
        /// The round echoed.
        context: u64,
        /// The latest round started.
        round: u64,
    },
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

/// Why a configuration change was refused. A refusal changes nothing.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ConfChangeError {
    /// Only the leader changes the configuration; `leader` is who this node thinks leads.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The known leader, if any.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is in progress (thesis §3.10).
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// The leader has not committed an entry of its own term yet, so a change of an
    /// earlier term it does not know of may still commit (thesis §4.1, the 2015 correction).
    #[error("the leader has not committed an entry of its term yet; retry shortly")]
    NotCommittedInTerm,
    /// Another change, at `index`, is not committed yet: one change at a time (thesis §4.1).
    #[error("the configuration change at index {index} is not committed yet")]
    ChangePending {
        /// The pending change's index (for a new leader: its last index at election).
        index: u64,
    },
    /// AddLearner for a node that is already a voter or learner.
    #[error("node {node:016x} is already a member")]
    AlreadyMember {
        /// The node.
        node: NodeId,
    },
    /// Remove for a node that is not a member.
    #[error("node {node:016x} is not a member")]
    NotAMember {
        /// The node.
        node: NodeId,
    },
    /// Promote for a node that is not a learner.
    #[error("node {node:016x} is not a learner")]
    NotALearner {
        /// The node.
        node: NodeId,
    },
    /// Removing the only voter would leave nobody to commit anything.
    #[error("node {node:016x} is the last voter")]
    LastVoter {
        /// The node.
        node: NodeId,
    },
    /// A learner is promoted only once its log is close to the leader's (thesis §4.2.1).
    #[error("learner has matched up to index {match_index} of the leader's {last_index}: not caught up yet")]
    LearnerNotCaughtUp {
        /// The learner's match index.
        match_index: u64,
        /// The leader's last index.
        last_index: u64,
    },
    /// After the change, fewer voters than a quorum of the new configuration would be
    /// reachable (heard from within the last election timeout or two, or the leader itself).
    #[error("{kind} would leave {reachable} reachable voters where {needed} are needed")]
    WouldLoseQuorum {
        /// The change refused.
        kind: &'static str,
        /// Voters of the new configuration that are reachable.
        reachable: usize,
        /// A majority of the new configuration.
        needed: usize,
    },
    /// Node ids start at 1.
    #[error("node id must not be 0")]
    ZeroNode,
    /// The context exceeds `MAX_CONTEXT_BYTES`.
    #[error("{kind:?} context of {len} bytes exceeds the limit of {max}")]
    ContextTooLarge {
        /// The change.
        kind: ConfChangeKind,
        /// The context's length.
        len: usize,
        /// The limit.
        max: usize,
    },
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
    /// The index is beyond what this node has made durable: with early apply
    /// (`take_committed_entries`) applied may run ahead of this node's own write.
    #[error("cannot compact to {index}: only {stable} durable in this node's log")]
    NotDurable {
        /// The index asked for.
        index: u64,
        /// The last index this node has made durable (as of the last `advance`).
        stable: u64,
    },
    /// The log is already compacted to that index or further.
    #[error("already compacted to {snapshot_index}")]
    AlreadyCompacted {
        /// The current snapshot index.
        snapshot_index: u64,
    },
}
