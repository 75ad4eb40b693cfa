//! How a Raft node is configured. Time is counted in ticks: the caller decides how long a tick is.

use super::entry::NodeId;
use super::error::ConfigError;

/// The settings of one node.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id. Invariant: != 0.
    pub id: NodeId,
    /// The minimum election timeout T, in ticks. Followers wait a random time in
    /// [T, 2T) (RAFT-NOTES #13). A leader checks its quorum every T ticks.
    pub election_ticks: u32,
    /// Ticks between heartbeats. Invariant: heartbeat_ticks < election_ticks.
    pub heartbeat_ticks: u32,
    /// Run a pre-vote round before a real election (thesis §9.6).
    pub pre_vote: bool,
    /// Leaders step down without a quorum of recent contact, and followers that heard
    /// from a leader within T ignore vote requests (thesis §6.2, §4.2.3).
    pub check_quorum: bool,
    /// The most bytes of entries in one AppendEntries (at least one entry is always sent).
    pub max_message_bytes: u64,
    /// The most AppendEntries in flight to one follower (pipelining).
    pub max_inflight_messages: usize,
    /// The most bytes of entries in flight to one follower.
    pub max_inflight_bytes: u64,
    /// The most bytes of committed entries handed out in one Ready.
    pub max_apply_bytes: u64,
    /// A learner is promoted only when its match index is within this many entries of
    /// the leader's last index (thesis §4.2.1).
    pub promote_margin_entries: u64,
    /// Seeds the election jitter. The core has no other source of randomness.
    pub seed: u64,
    /// Bugs to plant, for proving that the simulator catches them.
    #[cfg(feature = "planted-bugs")]
    pub planted_bugs: PlantedBugs,
}

/// Test-only switches that break the core in known ways.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, Default)]
pub struct PlantedBugs {
    /// (a) Grant votes without the up-to-date check (§5.4.1).
    pub vote_without_log_check: bool,
    /// (b) Commit an earlier term's entry by counting replicas (§5.4.2, Figure 8).
    pub commit_earlier_term_by_counting: bool,
    /// (c) Send a vote before the term and vote are persisted (Fig. 2).
    pub vote_before_persist: bool,
    /// (d) Answer ReadIndex without confirming leadership by a heartbeat round (thesis §6.4).
    pub read_index_without_heartbeat: bool,
    /// (e, with the driver's) Compact past the durable log (`Raft::compact`'s check).
    pub compact_past_stable: bool,
    /// (e, membership) Propose a configuration change before the leader has committed an
    /// entry of its term (thesis §4.1, the 2015 correction).
    pub conf_change_before_commit_in_term: bool,
    /// (f, membership) Allow a second configuration change while one is not committed.
    pub conf_change_while_pending: bool,
}

impl Config {
    /// Settings suited to a daemon ticking every 100 ms: T = 1 s, heartbeats every 100 ms... scaled by the caller.
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_ticks: 10,
            heartbeat_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            max_message_bytes: 1 << 20,
            max_inflight_messages: 256,
            max_inflight_bytes: 32 << 20,
            max_apply_bytes: 16 << 20,
            promote_margin_entries: 1000,
            seed: id,
            #[cfg(feature = "planted-bugs")]
            planted_bugs: PlantedBugs::default(),
        }
    }

    /// Checks the relations between settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroId);
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return Err(ConfigError::Timing {
                election_ticks: self.election_ticks,
                heartbeat_ticks: self.heartbeat_ticks,
            });
        }
        if self.max_inflight_messages == 0 || self.max_inflight_bytes == 0 || self.max_message_bytes == 0 {
            return Err(ConfigError::ZeroLimit);
        }
        Ok(())
    }
}
