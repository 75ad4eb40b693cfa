//! Whether a node with an empty data directory may start from `--peers`: the decision,
//! with no IO, that the daemon and the simulator both run.
//!
//! A member whose data directory was wiped must not come back as its old self: it may
//! have voted in a term and counted towards commits, and with an empty log it could
//! vote again and elect a leader missing committed entries (RAFT-NOTES #18). So before
//! a `--peers` bootstrap the node asks its peers whether the cluster already exists
//! (`DriverCore::probe_answer` is what a running node answers; a node that is itself
//! new and waiting answers `NoCluster`). A new cluster starts only on answers from a
//! majority of the member list (itself included), never on silence; a cluster that saw
//! it hold the log, removed it, or does not list it, makes it refuse to start, naming
//! the cluster; a cluster that lists it and never saw it hold the log lets it start
//! once every other member says so (one record may be stale).

use super::core::DriverConfig;

/// A peer's answer to "does the cluster exist, and what am I in it?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeAnswer {
    /// The peer holds nothing either: it is new and waiting, like the asker.
    NoCluster,
    /// The peer holds a log but no cluster record yet (the first leader's bootstrap
    /// entry has not applied there): no answer yet, ask again.
    Pending,
    /// The cluster exists and lists the asker; `started`: the leader saw it hold the log.
    Member {
        /// The cluster.
        cluster_id: u64,
        /// See `kv::Member::started`.
        started: bool,
    },
    /// The cluster exists and removed the asker's id.
    Removed {
        /// The cluster.
        cluster_id: u64,
    },
    /// The cluster exists and does not list the asker.
    NotMember {
        /// The cluster.
        cluster_id: u64,
    },
}

/// What a node with an empty data directory does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartDecision {
    /// Start with the `--peers` configuration (a new cluster, or one that lists this
    /// node and never saw it hold the log: its first start raced the others').
    Start,
    /// Too few answers: ask again.
    Wait {
        /// Peers whose answer allows the start.
        answered: usize,
        /// How many are needed (a majority of the members, less this node).
        needed: usize,
    },
    /// Never start as this id: the operator must act.
    Refuse {
        /// The cluster that exists.
        cluster_id: u64,
        /// Why, and what to do.
        reason: String,
    },
}

/// Decides from the peers' answers so far (one per peer that answered); `members` is
/// the size of the `--peers` list, this node included.
pub fn decide_start(config: &DriverConfig, members: usize, answers: &[ProbeAnswer]) -> StartDecision {
    let _ = config;
    let needed = (members / 2 + 1).saturating_sub(1);
    let mut answered = 0;
    for answer in answers {
        match *answer {
            ProbeAnswer::NoCluster => answered += 1,
            ProbeAnswer::Pending => {}
            ProbeAnswer::Member { cluster_id, started } => {
                #[cfg(feature = "planted-bugs")]
                let started = started && !config.planted_bugs.wiped_node_rejoins_as_itself;
                if started {
                    return StartDecision::Refuse {
                        cluster_id,
                        reason: format!(
                            "cluster {cluster_id:016x} already has this node as a member that held the log, \
                             and this data directory is empty: it must not come back as its old self (it may \
                             have voted, and counted for commits). Remove it (mmapd-admin member remove ID on \
                             a member), then start it with an empty data directory and --join"
                        ),
                    };
                }
                answered += 1;
            }
            ProbeAnswer::Removed { cluster_id } => {
                return StartDecision::Refuse {
                    cluster_id,
                    reason: format!(
                    "cluster {cluster_id:016x} removed this node's id, and a removed id never comes back: \
                         start it with an empty data directory and --join to add it under a new id"
                ),
                }
            }
            ProbeAnswer::NotMember { cluster_id } => {
                return StartDecision::Refuse {
                    cluster_id,
                    reason: format!(
                        "cluster {cluster_id:016x} already exists and does not list this node: start it with \
                         --join (mmapd-admin member add on a member shows the line)"
                    ),
                }
            }
        }
    }
    // The cluster exists and no answer says this node held the log. A member's record
    // can lag (it was cut off, or has not applied the mark yet) and the leader learns
    // that a member holds the log before the mark commits, so one stale record must not
    // be enough: every other member must say so, not a majority (a majority of stale
    // records, with the member that knew cut off, let a wiped member vote again and
    // elect a leader without an entry it had acknowledged: the simulator's seed 281).
    // A peer that is itself new and waiting (`NoCluster`) holds no log, so no mark to
    // lag behind: it counts as saying so (without it, members that started late wait
    // for each other for good).
    let exists = answers.iter().any(|answer| matches!(answer, ProbeAnswer::Member { .. }));
    if exists {
        let every_other = members.saturating_sub(1);
        let unstarted = answers
            .iter()
            .filter(|answer| matches!(answer, ProbeAnswer::Member { .. } | ProbeAnswer::NoCluster))
            .count();
        return if unstarted >= every_other {
            StartDecision::Start
        } else {
            StartDecision::Wait { answered: unstarted, needed: every_other }
        };
    }
    if answered >= needed {
        StartDecision::Start
    } else {
        StartDecision::Wait { answered, needed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(members: usize, answers: &[ProbeAnswer]) -> StartDecision {
        decide_start(&DriverConfig::default(), members, answers)
    }

    #[test]
    fn a_single_node_starts_without_asking() {
        assert_eq!(decide(1, &[]), StartDecision::Start);
    }

    #[test]
    fn a_new_node_never_starts_on_silence() {
        assert_eq!(decide(3, &[]), StartDecision::Wait { answered: 0, needed: 1 });
        assert_eq!(decide(5, &[ProbeAnswer::NoCluster]), StartDecision::Wait { answered: 1, needed: 2 });
        assert_eq!(decide(3, &[ProbeAnswer::Pending]), StartDecision::Wait { answered: 0, needed: 1 });
    }

    #[test]
    fn a_majority_of_new_peers_lets_a_new_cluster_start() {
        assert_eq!(decide(3, &[ProbeAnswer::NoCluster]), StartDecision::Start);
        assert_eq!(decide(5, &[ProbeAnswer::NoCluster, ProbeAnswer::NoCluster]), StartDecision::Start);
    }

    #[test]
    fn a_member_whose_first_start_raced_the_others_starts_once_every_other_member_says_so() {
        let unstarted = ProbeAnswer::Member { cluster_id: 7, started: false };
        assert_eq!(decide(3, &[unstarted, unstarted]), StartDecision::Start);
        // One record can be stale (cut off, or the mark not applied yet): a majority
        // saying "not started" is not enough once the cluster exists.
        assert_eq!(decide(3, &[unstarted]), StartDecision::Wait { answered: 1, needed: 2 });
        assert_eq!(
            decide(3, &[unstarted, ProbeAnswer::Pending]),
            StartDecision::Wait { answered: 1, needed: 2 }
        );
        assert_eq!(
            decide(5, &[unstarted, unstarted, unstarted]),
            StartDecision::Wait { answered: 3, needed: 4 }
        );
        // Two late members of five wait for each other's answers too: each is new and
        // waiting, holds no log, and so counts (they must not wait for each other for good).
        let no_cluster = ProbeAnswer::NoCluster;
        assert_eq!(decide(5, &[unstarted, unstarted, unstarted, no_cluster]), StartDecision::Start);
        assert_eq!(decide(3, &[unstarted, no_cluster]), StartDecision::Start);
    }

    #[test]
    fn a_wiped_member_that_held_the_log_is_refused_naming_the_cluster() {
        // Reference: RAFT-NOTES #18 (a wiped node must not vote again under its old id).
        let answers = [ProbeAnswer::NoCluster, ProbeAnswer::Member { cluster_id: 0xabc, started: true }];
        match decide(3, &answers) {
            StartDecision::Refuse { cluster_id, reason } => {
                assert_eq!(cluster_id, 0xabc);
                assert!(reason.contains("0000000000000abc") && reason.contains("--join"), "{reason}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_removed_or_unlisted_node_is_refused() {
        assert!(matches!(decide(3, &[ProbeAnswer::Removed { cluster_id: 1 }]), StartDecision::Refuse { .. }));
        assert!(matches!(
            decide(3, &[ProbeAnswer::NotMember { cluster_id: 1 }]),
            StartDecision::Refuse { .. }
        ));
    }
}
