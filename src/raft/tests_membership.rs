//! Paper tests for single-server membership changes (thesis chapter 4): learners,
//! the strict checks on a change, configurations taking effect when appended, removing
//! the leader, and removed servers.

use super::*;

fn change(kind: ConfChangeKind, node: NodeId) -> ConfChange {
    ConfChange { kind, node, context: Bytes::from(format!("10.0.0.{node}:3001")) }
}

fn add_learner(node: NodeId) -> ConfChange {
    change(ConfChangeKind::AddLearner, node)
}

fn promote(node: NodeId) -> ConfChange {
    change(ConfChangeKind::Promote, node)
}

fn remove(node: NodeId) -> ConfChange {
    change(ConfChangeKind::Remove, node)
}

fn config_entry(term: u64, index: u64, change: ConfChange) -> Entry {
    Entry { term, index, kind: EntryKind::Config, data: change.encode() }
}

impl Cluster {
    /// Adds a node that starts from `conf` (for a joining node: the cluster's
    /// configuration, which does not hold it yet).
    fn add_node(&mut self, id: NodeId, conf: ConfState) {
        let snapshot = SnapshotMeta { conf, ..Default::default() };
        let initial = InitialState { snapshot: snapshot.clone(), ..Default::default() };
        self.nodes.insert(id, Raft::new(config(id), initial).unwrap());
        self.disks.insert(id, Disk { snapshot, ..Default::default() });
    }

    /// Handles Readys and delivers messages one at a time until `done` holds.
    fn run_until(&mut self, done: impl Fn(&Cluster) -> bool) {
        for _ in 0..10_000 {
            if done(self) {
                return;
            }
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.handle_ready(id);
            }
            let Some(m) = self.queue.pop_front() else {
                panic!("the cluster stopped before the condition held");
            };
            self.sent.push(m.clone());
            if !self.cut.contains(&(m.from, m.to)) && self.nodes.contains_key(&m.to) {
                self.deliver(m);
            }
        }
        panic!("the condition never held");
    }

    fn conf(&self, id: NodeId) -> &ConfState {
        self.nodes[&id].conf_state()
    }

    /// Ticks `ids` only (the others stand still), stabilizing after each tick.
    fn tick_only(&mut self, ids: &[NodeId], ticks: u32) {
        for _ in 0..ticks {
            for id in ids {
                self.node(*id).tick();
            }
            self.stabilize();
        }
    }
}

/// Three voters led by node 1, with one committed entry, and node 4 added as a learner
/// that has caught up.
fn cluster_with_learner() -> Cluster {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "x");
    cluster.add_node(4, ConfState::with_voters(voters(3)));
    cluster.node(1).propose_conf_change(add_learner(4)).unwrap();
    cluster.stabilize();
    cluster
}

/// A learner receives and applies the log, but the quorum stays that of the voters:
/// what only the leader and the learner hold does not commit.
/// Reference: thesis §4.2.1
#[test]
fn adding_a_learner_replicates_to_it_without_changing_the_quorum() {
    let mut cluster = cluster_with_learner();
    let with_learner = ConfState { voters: voters(3), learners: vec![4] };
    for id in 1..=4 {
        assert_eq!(cluster.conf(id), &with_learner, "node {id}");
    }
    let leader_last = cluster.nodes[&1].last_index();
    assert_eq!(cluster.nodes[&4].last_index(), leader_last);
    assert_eq!(cluster.nodes[&4].commit_index(), leader_last);
    assert!(cluster.applied[&4].iter().any(|e| e.data == "x"));
    assert!(cluster.nodes[&1].status().peers.iter().any(|p| p.id == 4 && p.learner));

    cluster.isolate(2);
    cluster.isolate(3);
    cluster.cut.remove(&(1, 4));
    cluster.cut.remove(&(4, 1));
    let (_, index) = cluster.propose(1, "y");
    assert_eq!(cluster.nodes[&4].last_index(), index, "the learner holds the entry");
    assert!(cluster.nodes[&1].commit_index() < index, "leader and learner are no quorum of three voters");
    cluster.heal();
    cluster.tick_all(2);
    assert!(cluster.nodes[&1].commit_index() >= index);
}

/// A learner never becomes a (pre-)candidate, not even on TimeoutNow; a candidate does
/// not ask it for a vote, and a vote it grants anyway does not count.
/// Reference: thesis §4.2.1
#[test]
fn a_learner_never_campaigns_and_its_vote_does_not_count() {
    let mut cluster = cluster_with_learner();
    let term = cluster.nodes[&4].term();
    cluster.isolate(4);
    cluster.tick_only(&[4], 100);
    let timeout_now = Message { from: 1, to: 4, term, body: MessageBody::TimeoutNow };
    cluster.node(4).step(timeout_now).unwrap();
    cluster.stabilize();
    assert_eq!((cluster.nodes[&4].role(), cluster.nodes[&4].term()), (Role::Follower, term));
    assert!(!cluster.sent.iter().any(|m| m.from == 4 && matches!(m.body, MessageBody::RequestVote { .. })));

    let mut candidate = cluster.nodes.remove(&2).unwrap();
    candidate.config_mut().pre_vote = false;
    candidate.campaign();
    let ready = take_ready(&mut candidate);
    let asked: BTreeSet<NodeId> = ready.persisted_messages.iter().map(|m| m.to).collect();
    assert_eq!(asked, BTreeSet::from([1, 3]));
    let term = candidate.term();
    let granted = MessageBody::RequestVoteResponse { pre_vote: false, granted: true };
    candidate.step(Message { from: 4, to: 2, term, body: granted.clone() }).unwrap();
    assert_eq!(candidate.role(), Role::Candidate, "a learner's vote made a majority");
    candidate.step(Message { from: 3, to: 2, term, body: granted }).unwrap();
    assert_eq!(candidate.role(), Role::Leader);
}

/// A leader that hears only from a learner has no quorum of voters: it steps down.
/// Reference: thesis §6.2, §4.2.1
#[test]
fn a_learner_does_not_keep_a_leader_without_a_quorum_in_power() {
    let mut cluster = cluster_with_learner();
    cluster.isolate(2);
    cluster.isolate(3);
    cluster.cut.remove(&(1, 4));
    cluster.cut.remove(&(4, 1));
    cluster.tick_only(&[1, 4], 25);
    assert_ne!(cluster.nodes[&1].role(), Role::Leader);
}

/// Promotion waits until the learner's log is within the margin of the leader's, so
/// adding a voter does not stall commits while it catches up.
/// Reference: thesis §4.2.1
#[test]
fn promotion_is_refused_until_the_learner_has_caught_up() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "x");
    cluster.add_node(4, ConfState::with_voters(voters(3)));
    cluster.node(1).config_mut().promote_margin_entries = 2;
    cluster.cut.insert((1, 4));
    cluster.node(1).propose_conf_change(add_learner(4)).unwrap();
    cluster.stabilize();
    for i in 0..3 {
        cluster.propose(1, &format!("{i}"));
    }
    let last_index = cluster.nodes[&1].last_index();
    let status = cluster.nodes[&1].status();
    assert_eq!(
        cluster.node(1).propose_conf_change(promote(4)),
        Err(ConfChangeError::LearnerNotCaughtUp { match_index: 0, last_index })
    );
    assert_eq!(cluster.nodes[&1].status(), status, "a refusal changes nothing");
    assert_eq!(cluster.conf(1).learners, [4]);

    cluster.heal();
    cluster.tick_all(3);
    cluster.node(1).propose_conf_change(promote(4)).unwrap();
    cluster.stabilize();
    for id in 1..=4 {
        assert_eq!(cluster.conf(id), &ConfState::with_voters(voters(4)), "node {id}");
    }
}

/// A learner that never answered is not caught up, however short the log is: it would
/// become a voter that counts for the quorum and never votes.
/// Reference: thesis §4.2.1
#[test]
fn a_learner_that_never_answered_is_not_promoted_however_short_the_log() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.add_node(4, ConfState::with_voters(voters(3)));
    cluster.cut.insert((1, 4));
    cluster.cut.insert((4, 1));
    cluster.node(1).propose_conf_change(add_learner(4)).unwrap();
    cluster.stabilize();
    let last_index = cluster.nodes[&1].last_index();
    assert!(last_index < cluster.node(1).config_mut().promote_margin_entries);
    assert_eq!(
        cluster.node(1).propose_conf_change(promote(4)),
        Err(ConfChangeError::LearnerNotCaughtUp { match_index: 0, last_index })
    );
    assert_eq!(cluster.conf(1).voters, voters(3));
}

/// At most one change is uncommitted at a time.
/// Reference: thesis §4.1
#[test]
fn a_second_change_while_one_is_pending_is_refused() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "x");
    let (_, index) = cluster.node(1).propose_conf_change(add_learner(4)).unwrap();
    let last = cluster.nodes[&1].last_index();
    assert_eq!(
        cluster.node(1).propose_conf_change(add_learner(5)),
        Err(ConfChangeError::ChangePending { index })
    );
    assert_eq!(cluster.nodes[&1].last_index(), last);
    cluster.stabilize();
    assert!(cluster.nodes[&1].commit_index() >= index);
    cluster.node(1).propose_conf_change(add_learner(5)).unwrap();
    assert_eq!(cluster.conf(1).learners, [4, 5]);
}

/// A new leader proposes no change before an entry of its own term commits: until
/// then, a change of an earlier leader that it does not hold may still commit (the 2015
/// correction to thesis §4.1).
/// Reference: thesis §4.1
#[test]
fn a_new_leader_changes_nothing_before_committing_an_entry_of_its_term() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "x");
    let term = cluster.nodes[&1].term();
    cluster.node(2).step(Message { from: 1, to: 2, term, body: MessageBody::TimeoutNow }).unwrap();
    cluster.run_until(|c| c.nodes[&2].role() == Role::Leader);
    assert!(cluster.nodes[&2].commit_index() < cluster.nodes[&2].last_index());
    let last = cluster.nodes[&2].last_index();
    assert_eq!(cluster.node(2).propose_conf_change(add_learner(4)), Err(ConfChangeError::NotCommittedInTerm));
    assert_eq!(cluster.nodes[&2].last_index(), last);
    cluster.stabilize();
    cluster.node(2).propose_conf_change(add_learner(4)).unwrap();
}

/// A member that stopped answering may always be removed: that only shrinks the set of
/// voters, and the reachable ones still make a quorum of it.
/// Reference: thesis §4.1
#[test]
fn removing_a_dead_member_is_allowed() {
    let mut cluster = Cluster::new(5);
    cluster.elect(1);
    cluster.propose(1, "x");
    cluster.isolate(4);
    cluster.isolate(5);
    cluster.tick_all(25);
    assert_eq!(cluster.leaders(), [1]);
    let (_, index) = cluster.node(1).propose_conf_change(remove(4)).unwrap();
    cluster.stabilize();
    assert!(cluster.nodes[&1].commit_index() >= index);
    cluster.node(1).propose_conf_change(remove(5)).unwrap();
    cluster.stabilize();
    for id in 1..=3 {
        assert_eq!(cluster.conf(id), &ConfState::with_voters(voters(3)), "node {id}");
    }
    let (_, index) = cluster.propose(1, "y");
    assert!(cluster.nodes[&1].commit_index() >= index);
}

/// A change after which fewer voters are reachable than a quorum of the new
/// configuration is refused: removing a live voter when only a bare majority is
/// reachable, or promoting a learner that has never answered.
/// Reference: thesis §4.1
#[test]
fn a_change_that_would_leave_fewer_reachable_voters_than_a_quorum_is_refused() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "x");
    cluster.isolate(3);
    cluster.tick_all(25);
    assert_eq!(cluster.leaders(), [1]);
    let status = cluster.nodes[&1].status();
    assert_eq!(
        cluster.node(1).propose_conf_change(remove(2)),
        Err(ConfChangeError::WouldLoseQuorum { kind: "remove", reachable: 1, needed: 2 })
    );
    assert_eq!(cluster.nodes[&1].status(), status);

    cluster.node(1).propose_conf_change(add_learner(4)).unwrap(); // node 4 never answers
    cluster.stabilize();
    // Refused before the quorum check: a learner that never answered is not caught up.
    assert!(matches!(
        cluster.node(1).propose_conf_change(promote(4)),
        Err(ConfChangeError::LearnerNotCaughtUp { match_index: 0, .. })
    ));
    assert_eq!(cluster.conf(1).voters, voters(3));
}

/// The only voter cannot be removed: nobody would be left to commit anything.
/// Reference: thesis §4.1
#[test]
fn removing_the_last_voter_is_refused() {
    let mut cluster = Cluster::new(1);
    cluster.elect(1);
    cluster.propose(1, "x");
    assert_eq!(cluster.node(1).propose_conf_change(remove(1)), Err(ConfChangeError::LastVoter { node: 1 }));
    cluster.add_node(2, ConfState::with_voters(voters(1)));
    cluster.node(1).propose_conf_change(add_learner(2)).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.node(1).propose_conf_change(remove(1)), Err(ConfChangeError::LastVoter { node: 1 }));
    assert_eq!(cluster.conf(1), &ConfState { voters: vec![1], learners: vec![2] });
}

/// The other refusals: not the leader, a leadership transfer in progress, and changes
/// that do not apply to the configuration.
/// Reference: thesis §4.1, §3.10
#[test]
fn no_change_during_a_leadership_transfer_or_from_a_follower() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "x");
    assert_eq!(
        cluster.node(2).propose_conf_change(add_learner(4)),
        Err(ConfChangeError::NotLeader { leader: Some(1) })
    );
    assert_eq!(
        cluster.node(1).propose_conf_change(add_learner(2)),
        Err(ConfChangeError::AlreadyMember { node: 2 })
    );
    assert_eq!(
        cluster.node(1).propose_conf_change(promote(2)),
        Err(ConfChangeError::NotALearner { node: 2 })
    );
    assert_eq!(cluster.node(1).propose_conf_change(remove(4)), Err(ConfChangeError::NotAMember { node: 4 }));
    assert_eq!(cluster.node(1).propose_conf_change(add_learner(0)), Err(ConfChangeError::ZeroNode));
    let huge = ConfChange { context: Bytes::from(vec![0; MAX_CONTEXT_BYTES + 1]), ..add_learner(4) };
    assert!(matches!(
        cluster.node(1).propose_conf_change(huge),
        Err(ConfChangeError::ContextTooLarge { .. })
    ));

    cluster.node(1).transfer_leadership(2).unwrap();
    let last = cluster.nodes[&1].last_index();
    assert_eq!(cluster.node(1).propose_conf_change(add_learner(4)), Err(ConfChangeError::TransferInProgress));
    assert_eq!(cluster.nodes[&1].last_index(), last);
}

/// A follower uses a configuration as soon as it appends it, and when a new leader
/// overwrites that suffix it falls back to the latest configuration left in its log,
/// or its snapshot's.
/// Reference: thesis §4.1 (RAFT-NOTES #20)
#[test]
fn a_configuration_takes_effect_on_append_and_truncation_undoes_it() {
    let mut follower = follower_with_log(2, 3, 1, vec![entry(1, 1)]);
    let add = config_entry(2, 2, add_learner(4));
    follower.step(append(1, 2, 2, (1, 1), vec![add], 1)).unwrap();
    assert_eq!(follower.learners(), [4], "in effect when appended, before it commits");
    assert_eq!(follower.commit_index(), 1);
    follower.step(append(3, 2, 3, (1, 1), vec![entry(3, 2)], 1)).unwrap();
    assert_eq!(follower.conf_state(), &ConfState::with_voters(voters(3)), "back to the snapshot's");

    let mut follower = follower_with_log(2, 3, 2, vec![config_entry(1, 1, add_learner(4))]);
    assert_eq!(follower.learners(), [4]);
    follower.step(append(1, 2, 2, (1, 1), vec![config_entry(2, 2, promote(4))], 1)).unwrap();
    assert_eq!(follower.voters(), voters(4));
    follower.step(append(3, 2, 3, (1, 1), vec![entry(3, 2), entry(3, 3)], 1)).unwrap();
    assert_eq!(
        follower.conf_state(),
        &ConfState { voters: voters(3), learners: vec![4] },
        "back to entry 1's"
    );
}

/// After a restart the configuration is the snapshot's with every configuration entry
/// of the log after it applied, committed or not; a snapshot carries the configuration
/// as of its own index.
/// Reference: thesis §4.1
#[test]
fn restart_rebuilds_the_configuration_from_the_snapshot_and_the_log() {
    let mut cluster = cluster_with_learner();
    cluster.propose(1, "y");
    let compact_at = cluster.nodes[&2].last_index();
    cluster.tick_all(3);
    cluster.node(1).propose_conf_change(promote(4)).unwrap();
    cluster.stabilize();
    cluster.node(1).propose_conf_change(add_learner(5)).unwrap();
    cluster.stabilize();

    let meta = cluster.node(2).compact(compact_at).unwrap();
    assert_eq!(meta.conf, ConfState { voters: voters(3), learners: vec![4] }, "as of the snapshot's index");
    let disk = cluster.disks[&2].clone();
    let entries: Vec<Entry> = disk.entries.iter().filter(|e| e.index > compact_at).cloned().collect();
    let initial = InitialState { hard_state: disk.hard_state, snapshot: meta, entries };
    let restarted = Raft::new(config(2), initial).unwrap();
    assert_eq!(restarted.conf_state(), &ConfState { voters: voters(4), learners: vec![5] });
    assert_eq!(restarted.conf_state(), cluster.conf(1));
}

/// A Config entry whose data does not decode (or a change that does not apply) is
/// applied as no change, at start and when it arrives: a log is input.
/// Reference: thesis §4.1
#[test]
fn undecodable_config_entries_change_nothing() {
    let garbage = |index, data: &'static [u8]| Entry {
        term: 1,
        index,
        kind: EntryKind::Config,
        data: Bytes::from_static(data),
    };
    let entries = vec![garbage(1, b""), garbage(2, b"\x09garbage"), config_entry(1, 3, promote(2))];
    let mut follower = follower_with_log(2, 3, 1, entries);
    assert_eq!(follower.conf_state(), &ConfState::with_voters(voters(3)));
    follower.step(append(1, 2, 1, (3, 1), vec![garbage(4, b"\x01\x00")], 4)).unwrap();
    assert_eq!(follower.conf_state(), &ConfState::with_voters(voters(3)));
    assert_eq!(follower.commit_index(), 4);
}

/// A leader that removes itself keeps leading until the removal commits, without
/// counting itself toward it, then steps down; the others elect a leader among
/// themselves, and the removed node never campaigns again.
/// Reference: thesis §4.2.2
#[test]
fn a_leader_that_removes_itself_commits_the_removal_then_steps_down() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "x");
    cluster.isolate(3);
    let (_, index) = cluster.node(1).propose_conf_change(remove(1)).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.conf(1).voters, [2, 3], "in effect when appended");
    assert_eq!(cluster.nodes[&2].last_index(), index);
    assert_eq!(cluster.nodes[&1].role(), Role::Leader);
    assert!(cluster.nodes[&1].commit_index() < index, "the leader counted itself toward its own removal");
    assert!(!cluster.nodes[&1].is_removed());

    cluster.heal();
    cluster.tick_all(1);
    assert!(cluster.nodes[&1].commit_index() >= index);
    assert_eq!(cluster.nodes[&1].role(), Role::Follower);
    assert!(cluster.nodes[&1].is_removed() && cluster.nodes[&1].status().removed);
    let stepped_down_at = cluster.sent.len();
    cluster.tick_all(30);
    let leaders = cluster.leaders();
    assert!(leaders == [2] || leaders == [3], "leaders: {leaders:?}");
    let new_leader = leaders[0];
    let (_, y) = cluster.propose(new_leader, "y");
    assert!(cluster.nodes[&new_leader].commit_index() >= y);
    assert_eq!(cluster.nodes[&1].role(), Role::Follower);
    let campaigned = cluster.sent[stepped_down_at..]
        .iter()
        .any(|m| m.from == 1 && matches!(m.body, MessageBody::RequestVote { .. }));
    assert!(!campaigned, "the removed leader campaigned");
}

/// A voter whose latest configuration, appended but not committed, removes it still
/// campaigns, without counting its own vote: with its removal only on its own log and
/// the dead leader's, its log is ahead of every other voter's, and without it no leader
/// could be elected again. It wins with the others' votes, commits its removal and
/// steps down (the simulator's membership runs wedged a cluster for good this way).
/// Reference: thesis §4.2.2
#[test]
fn a_voter_whose_uncommitted_removal_is_in_its_log_still_campaigns() {
    let mut cluster = Cluster::new(4);
    cluster.elect(1);
    cluster.propose(1, "x");
    cluster.cut.insert((1, 2));
    cluster.cut.insert((1, 3));
    let (_, index) = cluster.node(1).propose_conf_change(remove(4)).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.nodes[&4].last_index(), index);
    assert_eq!(cluster.conf(4).voters, voters(3), "in effect when appended");
    assert!(cluster.nodes[&4].commit_index() < index);
    cluster.nodes.remove(&1); // the leader dies
    cluster.heal();
    cluster.tick_all(60);
    assert!(cluster.nodes[&4].is_removed(), "node 4's removal never committed");
    assert_eq!(cluster.nodes[&4].role(), Role::Follower);
    let leaders = cluster.leaders();
    assert!(leaders == [2] || leaders == [3], "leaders: {leaders:?}");
    let (_, y) = cluster.propose(leaders[0], "y");
    assert!(cluster.nodes[&leaders[0]].commit_index() >= y);
}

/// Such a candidate does not count its own vote: it needs a majority of the voters of
/// its latest configuration, which does not hold it.
/// Reference: thesis §4.2.2
#[test]
fn a_candidate_outside_its_latest_configuration_does_not_count_its_own_vote() {
    let log = vec![entry(1, 1), config_entry(1, 2, remove(4))];
    let mut candidate = follower_with_log(4, 4, 1, log);
    candidate.config_mut().pre_vote = false;
    candidate.campaign();
    assert_eq!(candidate.role(), Role::Candidate);
    let ready = take_ready(&mut candidate);
    let asked: BTreeSet<NodeId> = ready.persisted_messages.iter().map(|m| m.to).collect();
    assert_eq!(asked, BTreeSet::from([1, 2, 3]));
    let term = candidate.term();
    let granted = MessageBody::RequestVoteResponse { pre_vote: false, granted: true };
    candidate.step(Message { from: 2, to: 4, term, body: granted.clone() }).unwrap();
    assert_eq!(candidate.role(), Role::Candidate, "its own vote made a majority of [1, 2, 3]");
    candidate.step(Message { from: 3, to: 4, term, body: granted }).unwrap();
    assert_eq!(candidate.role(), Role::Leader);
}

/// A removed server that never learned of its removal times out and campaigns with a
/// higher term; the members refuse its requests, so their terms and leader stay (even
/// without the check-quorum lease, which is off here to show it).
/// Reference: thesis §4.2.3
#[test]
fn a_removed_nodes_vote_requests_do_not_disrupt_the_cluster() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "x");
    cluster.isolate(3);
    let (_, index) = cluster.node(1).propose_conf_change(remove(3)).unwrap();
    cluster.stabilize();
    assert!(cluster.nodes[&1].commit_index() >= index);
    assert_eq!(cluster.conf(3).voters, voters(3), "node 3 never heard of its removal");
    for id in [1, 2] {
        cluster.node(id).config_mut().check_quorum = false;
    }
    cluster.heal();
    cluster.tolerate_refusals = true;
    let term = cluster.nodes[&1].term();
    cluster.node(3).config_mut().pre_vote = false;
    cluster.node(3).campaign();
    cluster.stabilize();
    cluster.node(3).config_mut().pre_vote = true;
    cluster.tick_only(&[3], 30);
    assert_eq!((cluster.nodes[&1].term(), cluster.nodes[&2].term()), (term, term));
    assert_eq!(cluster.leaders(), [1]);
    assert!(cluster.nodes[&3].term() > term);
    let refused = StepError::VoteRequestFromNonMember { kind: "RequestVote", from: 3 };
    assert_eq!(cluster.refusals.iter().filter(|e| **e == refused).count(), 2, "{:?}", cluster.refusals);
    assert!(cluster
        .refusals
        .iter()
        .all(|e| matches!(e, StepError::VoteRequestFromNonMember { from: 3, .. })));
}

/// A node whose configuration is stale follows a leader it has never heard of: a new
/// member learns the configuration from the leader's log.
/// Reference: thesis §4.1
#[test]
fn a_node_accepts_append_entries_from_a_leader_not_in_its_configuration() {
    let mut node = new_node(2, 3);
    node.step(append(5, 2, 1, (0, 0), vec![entry(1, 1), config_entry(1, 2, add_learner(6))], 2)).unwrap();
    assert_eq!(node.leader(), Some(5));
    assert_eq!((node.last_index(), node.commit_index()), (2, 2));
    assert_eq!(node.learners(), [6]);
    let ready = take_ready(&mut node);
    assert!(ready.persisted_messages.iter().any(|m| m.to == 5
        && m.body
            == MessageBody::AppendEntriesResponse {
                success: true,
                index: 2,
                conflict_term: 0,
                conflict_index: 0
            }));
}

/// A node is removed once a committed configuration drops it, not when the removal is
/// only appended; the leader keeps replicating to a follower it removes until the
/// removal commits, so that the follower learns it.
/// Reference: thesis §4.2.2
#[test]
fn is_removed_only_once_the_removal_commits() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "x");
    cluster.cut.insert((2, 1));
    let (_, index) = cluster.node(1).propose_conf_change(remove(3)).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.nodes[&3].last_index(), index);
    assert_eq!(cluster.conf(3).voters, [1, 2], "in effect when appended");
    assert!(cluster.nodes[&1].commit_index() < index);
    assert!(!cluster.nodes[&3].is_removed() && !cluster.nodes[&3].status().removed);

    cluster.heal();
    cluster.tick_all(2);
    assert!(cluster.nodes[&1].commit_index() >= index);
    assert!(cluster.nodes[&3].is_removed() && cluster.nodes[&3].status().removed);
    assert!(!cluster.nodes[&1].is_removed() && !cluster.nodes[&2].is_removed());
    // After that check-quorum round the removed node is no longer replicated to, and
    // its answers are refused.
    cluster.tick_all(10);
    let term = cluster.nodes[&1].term();
    let answer = MessageBody::HeartbeatResponse { context: 0 };
    assert_eq!(
        cluster.node(1).step(Message { from: 3, to: 1, term, body: answer }),
        Err(StepError::ResponseFromNonMember { kind: "HeartbeatResponse", from: 3 })
    );
}

/// The planted-bug switches (e) and (f) let exactly those refusals through, for the
/// simulator to prove it catches them.
#[cfg(feature = "planted-bugs")]
#[test]
fn planted_membership_bugs_skip_their_checks() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "x");
    cluster.node(1).config_mut().planted_bugs.conf_change_while_pending = true;
    cluster.node(1).propose_conf_change(add_learner(4)).unwrap();
    cluster.node(1).propose_conf_change(add_learner(5)).unwrap();
    cluster.stabilize();

    let term = cluster.nodes[&1].term();
    cluster.node(2).config_mut().planted_bugs.conf_change_before_commit_in_term = true;
    cluster.node(2).step(Message { from: 1, to: 2, term, body: MessageBody::TimeoutNow }).unwrap();
    cluster.run_until(|c| c.nodes[&2].role() == Role::Leader);
    cluster.node(2).propose_conf_change(remove(5)).unwrap();
}

/// A voter whose configuration is stale (it missed the changes that added a member)
/// must still answer that member's vote request when the member's log is ahead of its
/// own: the member may be a voter of a configuration committed in the entries it has
/// not received. Refused, a cluster whose only other up-to-date voter is gone stays
/// without a leader for good. The simulator found it: voters {1, 2, 5} after node 2 missed
/// the removals of 3 and 4 and the addition of 5; node 1's disk then failed, and 5
/// needed 2's vote, which 2 refused as from a non-member.
/// Reference: thesis §4.1 ("servers process incoming RPC requests without consulting
/// their current configurations"), §4.2.3
#[test]
fn a_stale_voter_answers_a_vote_request_from_a_member_it_has_not_heard_of() {
    let mut cluster = Cluster::new(4);
    cluster.elect(1);
    cluster.propose(1, "x");
    cluster.isolate(2);
    cluster.tolerate_refusals = true;
    let stale = cluster.nodes[&2].last_index();
    cluster.node(1).propose_conf_change(remove(4)).unwrap();
    cluster.stabilize();
    cluster.add_node(5, ConfState::with_voters(voters(4)));
    cluster.cut.remove(&(1, 5));
    cluster.cut.remove(&(5, 1));
    cluster.node(1).propose_conf_change(add_learner(5)).unwrap();
    cluster.stabilize();
    cluster.tick_all(1);
    cluster.node(1).propose_conf_change(promote(5)).unwrap();
    cluster.stabilize();
    cluster.node(1).propose_conf_change(remove(3)).unwrap();
    cluster.stabilize();
    cluster.propose(1, "y");
    assert_eq!(cluster.conf(1).voters, [1, 2, 5]);
    assert_eq!(cluster.nodes[&1].commit_index(), cluster.nodes[&1].last_index(), "every change committed");
    assert_eq!(cluster.nodes[&2].last_index(), stale, "node 2 missed every change");
    assert_eq!(cluster.conf(2).voters, [1, 2, 3, 4]);

    // Node 1's disk fails for good; nodes 3 and 4 are gone (removed). Voters 2 and 5
    // are a majority of [1, 2, 5]: they must elect a leader.
    for id in [1, 3, 4] {
        cluster.nodes.remove(&id);
    }
    cluster.heal();
    for _ in 0..100 {
        cluster.tick_all(1);
        if !cluster.leaders().is_empty() {
            break;
        }
    }
    assert_eq!(cluster.leaders(), [5], "refusals: {:?}", cluster.refusals);
    assert_eq!(cluster.conf(2).voters, [1, 2, 5], "node 2 learnt the configuration from its new leader");
}

/// A node that cannot campaign (here a learner; also a voter missing from its own
/// stale configuration) and has not heard from a leader for an election timeout is out
/// of the leader's lease for good: it answers vote requests. Its election timer used to
/// start over at each timeout as if it had heard from the leader, so it ignored them
/// for most of each timeout, and for all of it when its random timeout was the minimum:
/// the simulator found a cluster that never elected a leader again, as the one voter
/// that could win needed the vote of a promoted node that had not received its promotion.
/// Reference: thesis §4.2.3 (a server ignores vote requests only within the minimum
/// election timeout of hearing from a current leader), §4.2.1
#[test]
fn a_node_that_cannot_campaign_answers_votes_once_its_leader_is_silent() {
    let mut cluster = cluster_with_learner();
    cluster.nodes.remove(&1);
    let learner = cluster.node(4);
    assert_eq!(learner.leader(), Some(1));
    for _ in 0..50 {
        learner.tick();
    }
    let (term, last_index) = (learner.term(), learner.last_index());
    let last_term = term;
    take_ready(learner);
    for tick in 0..30 {
        learner.tick();
        let mut request = vote_request(2, 4, term + 1, last_index, last_term);
        request.body = MessageBody::RequestVote {
            pre_vote: true,
            last_log_index: last_index,
            last_log_term: last_term,
            transfer: false,
        };
        learner.step(request).unwrap();
        let ready = take_ready(learner);
        let granted = MessageBody::RequestVoteResponse { pre_vote: true, granted: true };
        assert!(
            ready.messages.iter().any(|m| m.to == 2 && m.body == granted),
            "ignored at tick {tick}: {ready:?}"
        );
    }
}
