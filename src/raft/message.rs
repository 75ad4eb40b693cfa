//! The messages Raft nodes exchange.

use super::entry::{Entry, NodeId, Snapshot};

/// A message between two nodes. `term` is the sender's current term, except
/// for pre-votes, which carry the term the sender would campaign in (thesis §9.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// See the type's doc.
    pub term: u64,
    /// What it says.
    pub body: MessageBody,
}

/// The kinds of message and their fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// RequestVote (§5.2), or a pre-vote (thesis §9.6) when `pre_vote`.
    RequestVote {
        /// A pre-vote asks "would you vote for me?" without changing anyone's term.
        pre_vote: bool,
        /// Index of the candidate's last log entry (§5.4.1).
        last_log_index: u64,
        /// Term of the candidate's last log entry (§5.4.1).
        last_log_term: u64,
        /// Set when the election follows a leadership transfer (TimeoutNow): it bypasses
        /// leader stickiness (thesis §3.10).
        transfer: bool,
    },
    /// The answer to `RequestVote`.
    RequestVoteResponse {
        /// Answers a pre-vote.
        pre_vote: bool,
        /// Whether the vote was granted.
        granted: bool,
    },
    /// AppendEntries (§5.3).
    AppendEntries {
        /// Index of the entry immediately before `entries`.
        prev_log_index: u64,
        /// Its term.
        prev_log_term: u64,
        /// The entries, consecutive from `prev_log_index + 1`; empty for a probe.
        entries: Vec<Entry>,
        /// The leader's commit index.
        leader_commit: u64,
    },
    /// The answer to `AppendEntries` or `InstallSnapshot`.
    AppendEntriesResponse {
        /// True when the log now matches the leader's up to `index`.
        success: bool,
        /// On success, the index the follower's log is known to match up to. On
        /// rejection, the `prev_log_index` that did not match.
        index: u64,
        /// On rejection (fast back-off, §5.3): the term of the follower's entry at
        /// `index`, or 0 when the follower's log is shorter than that.
        conflict_term: u64,
        /// On rejection: the first index the follower holds with `conflict_term`, or
        /// its last index + 1 when its log is shorter.
        conflict_index: u64,
    },
    /// Leader liveness and commit propagation, without log entries. `context` is
    /// the leader's latest ReadIndex round (thesis §6.4).
    Heartbeat {
        /// min(leader commit, the follower's known match index): always safe to commit.
        commit: u64,
        /// The read round this heartbeat confirms.
        context: u64,
    },
    /// The answer to `Heartbeat`, echoing its context.
    HeartbeatResponse {
        /// Echo of the heartbeat's context.
        context: u64,
    },
    /// InstallSnapshot (§7).
    InstallSnapshot {
        /// The snapshot (see `Snapshot::data` for who fills the bytes).
        snapshot: Snapshot,
    },
    /// Leadership transfer: start an election now (thesis §3.10).
    TimeoutNow,
    /// A follower asks the leader for a read index (thesis §6.4).
    ReadIndex {
        /// The caller's identifier for the read.
        context: u64,
    },
    /// The leader's answer: the read may be served once applied >= `index`.
    ReadIndexResponse {
        /// Echo of the request's context.
        context: u64,
        /// The index to wait for.
        index: u64,
    },
}

impl MessageBody {
    /// A short name for logs and traces.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::RequestVote { pre_vote: true, .. } => "PreVote",
            MessageBody::RequestVote { .. } => "RequestVote",
            MessageBody::RequestVoteResponse { pre_vote: true, .. } => "PreVoteResponse",
            MessageBody::RequestVoteResponse { .. } => "RequestVoteResponse",
            MessageBody::AppendEntries { .. } => "AppendEntries",
            MessageBody::AppendEntriesResponse { .. } => "AppendEntriesResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::ReadIndex { .. } => "ReadIndex",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResponse",
        }
    }
}
