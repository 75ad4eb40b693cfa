//! Paper tests: one or more per rule of the paper's Figure 2 and per feature of the
//! core, named for the behaviour and citing the paper ("§") or Ongaro's thesis.
//! The randomized evidence is the cluster simulator in `tests/simulation.rs`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use super::*;

/// What one node has made durable.
#[derive(Clone, Debug, Default)]
struct Disk {
    hard_state: HardState,
    snapshot: SnapshotMeta,
    entries: Vec<Entry>,
}

impl Disk {
    fn persist(&mut self, ready: &Ready) {
        if let Some(snapshot) = &ready.snapshot {
            self.entries.retain(|e| e.index > snapshot.meta.index);
            self.snapshot = snapshot.meta.clone();
        }
        if let Some(first) = ready.entries.first() {
            self.entries.retain(|e| e.index < first.index);
            self.entries.extend(ready.entries.iter().cloned());
        }
        if let Some(hard_state) = ready.hard_state {
            self.hard_state = hard_state;
        }
    }
}

/// A cluster wired by a perfect, synchronous network that can drop chosen links.
struct Cluster {
    nodes: BTreeMap<NodeId, Raft>,
    disks: BTreeMap<NodeId, Disk>,
    applied: BTreeMap<NodeId, Vec<Entry>>,
    reads: BTreeMap<NodeId, Vec<ReadState>>,
    queue: VecDeque<Message>,
    /// Links (from, to) that drop everything.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Every message ever delivered or dropped, for assertions.
    sent: Vec<Message>,
    /// When set, refused messages are recorded in `refusals` instead of failing the test.
    tolerate_refusals: bool,
    refusals: Vec<StepError>,
}

fn config(id: NodeId) -> Config {
    let mut config = Config::new(id);
    config.election_ticks = 10;
    config.heartbeat_ticks = 1;
    config
}

fn voters(n: u64) -> Vec<NodeId> {
    (1..=n).collect()
}

fn new_node(id: NodeId, n: u64) -> Raft {
    let initial = InitialState {
        snapshot: SnapshotMeta { conf: ConfState::with_voters(voters(n)), ..Default::default() },
        ..Default::default()
    };
    Raft::new(config(id), initial).unwrap()
}

fn entry(term: u64, index: u64) -> Entry {
    Entry { term, index, kind: EntryKind::Normal, data: Bytes::from(format!("{term}/{index}")) }
}

impl Cluster {
    fn new(n: u64) -> Cluster {
        let nodes = (1..=n).map(|id| (id, new_node(id, n))).collect();
        Cluster {
            nodes,
            disks: (1..=n).map(|id| (id, Disk::default())).collect(),
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            sent: Vec::new(),
            tolerate_refusals: false,
            refusals: Vec::new(),
        }
    }

    fn node(&mut self, id: NodeId) -> &mut Raft {
        self.nodes.get_mut(&id).unwrap()
    }

    fn isolate(&mut self, id: NodeId) {
        for &other in self.nodes.keys() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    /// Processes one node's Ready the way the daemon does.
    fn handle_ready(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        if !node.has_ready() {
            return;
        }
        let ready = node.ready();
        self.queue.extend(ready.messages.iter().cloned());
        self.disks.get_mut(&id).unwrap().persist(&ready);
        self.queue.extend(ready.persisted_messages.iter().cloned());
        self.applied.entry(id).or_default().extend(ready.committed_entries.iter().cloned());
        self.reads.entry(id).or_default().extend(ready.read_states.iter().copied());
        self.nodes.get_mut(&id).unwrap().advance();
    }

    /// Delivers messages and handles Readys until nothing moves.
    fn stabilize(&mut self) {
        for _ in 0..10_000 {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.handle_ready(id);
            }
            if self.queue.is_empty() && self.nodes.values().all(|n| !n.has_ready()) {
                return;
            }
            while let Some(m) = self.queue.pop_front() {
                self.sent.push(m.clone());
                if self.cut.contains(&(m.from, m.to)) || !self.nodes.contains_key(&m.to) {
                    continue;
                }
                self.deliver(m);
            }
        }
        panic!("cluster did not stabilize");
    }

    fn deliver(&mut self, m: Message) {
        let to = m.to;
        match self.nodes.get_mut(&to).unwrap().step(m) {
            Ok(()) => {}
            Err(error) if self.tolerate_refusals => self.refusals.push(error),
            Err(error) => panic!("node {to} refused a message: {error:?}"),
        }
    }

    fn tick_all(&mut self, ticks: u32) {
        for _ in 0..ticks {
            for node in self.nodes.values_mut() {
                node.tick();
            }
            self.stabilize();
        }
    }

    fn elect(&mut self, id: NodeId) {
        self.node(id).campaign();
        self.stabilize();
        assert_eq!(self.nodes[&id].role(), Role::Leader, "node {id} did not win");
    }

    fn propose(&mut self, id: NodeId, data: &str) -> (u64, u64) {
        let result = self.node(id).propose(Bytes::from(data.to_owned())).unwrap();
        self.stabilize();
        result
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.nodes.values().filter(|n| n.role() == Role::Leader).map(|n| n.id()).collect()
    }

    /// Restarts a node from what it persisted.
    fn restart(&mut self, id: NodeId) {
        let disk = self.disks[&id].clone();
        let n = self.nodes.len() as u64;
        let mut snapshot = disk.snapshot.clone();
        snapshot.conf = ConfState::with_voters(voters(n));
        let initial = InitialState { hard_state: disk.hard_state, snapshot, entries: disk.entries.clone() };
        self.nodes.insert(id, Raft::new(config(id), initial).unwrap());
        self.applied.remove(&id);
    }
}

fn take_ready(node: &mut Raft) -> Ready {
    let ready = node.ready();
    node.advance();
    ready
}

fn vote_request(from: NodeId, to: NodeId, term: u64, last_log_index: u64, last_log_term: u64) -> Message {
    Message {
        from,
        to,
        term,
        body: MessageBody::RequestVote { pre_vote: false, last_log_index, last_log_term, transfer: false },
    }
}

fn append(
    from: NodeId,
    to: NodeId,
    term: u64,
    prev: (u64, u64),
    entries: Vec<Entry>,
    commit: u64,
) -> Message {
    Message {
        from,
        to,
        term,
        body: MessageBody::AppendEntries {
            prev_log_index: prev.0,
            prev_log_term: prev.1,
            entries,
            leader_commit: commit,
        },
    }
}

/// A follower whose persisted log holds the given (term, index) entries.
fn follower_with_log(id: NodeId, n: u64, term: u64, entries: Vec<Entry>) -> Raft {
    let initial = InitialState {
        hard_state: HardState { term, vote: None, commit: 0 },
        snapshot: SnapshotMeta { conf: ConfState::with_voters(voters(n)), ..Default::default() },
        entries,
    };
    Raft::new(config(id), initial).unwrap()
}

/// Wins an election for `leader` by answering its pre-vote and vote requests as node 2.
fn elect_by_hand(leader: &mut Raft) {
    let mut pre_voted = false;
    leader.campaign();
    for _ in 0..2 {
        let ready = take_ready(leader);
        for m in ready.messages.iter().chain(ready.persisted_messages.iter()) {
            if let MessageBody::RequestVote { pre_vote, .. } = m.body {
                if m.to == 2 {
                    pre_voted |= pre_vote;
                    let body = MessageBody::RequestVoteResponse { pre_vote, granted: true };
                    leader.step(Message { from: 2, to: 1, term: m.term, body }).unwrap();
                }
            }
        }
    }
    assert!(pre_voted);
    assert_eq!(leader.role(), Role::Leader);
}

fn responses(ready: &Ready) -> Vec<&MessageBody> {
    ready.messages.iter().chain(ready.persisted_messages.iter()).map(|m| &m.body).collect()
}

// ------------------------------------------------------------------ elections

/// A three-node cluster elects exactly one leader, and every node learns it.
/// Reference: §5.2
#[test]
fn three_nodes_elect_one_leader_that_all_know() {
    let mut cluster = Cluster::new(3);
    cluster.tick_all(30);
    let leaders = cluster.leaders();
    assert_eq!(leaders.len(), 1);
    for node in cluster.nodes.values() {
        assert_eq!(node.leader(), Some(leaders[0]));
    }
}

/// A single-node cluster elects itself at once and commits its no-op.
/// Reference: §5.2, §8
#[test]
fn single_node_elects_itself_and_commits_alone() {
    let mut node = new_node(1, 1);
    node.campaign();
    assert_eq!(node.role(), Role::Leader);
    let mut cluster = Cluster::new(1);
    cluster.elect(1);
    let (_, index) = cluster.propose(1, "x");
    assert_eq!(cluster.nodes[&1].commit_index(), index);
    assert_eq!(cluster.applied[&1].last().unwrap().data, Bytes::from("x"));
}

/// Term and vote are handed out for persisting, and the vote is only sent once
/// they are durable.
/// Reference: §5.1, §5.2, Fig. 2 "Persistent state"
#[test]
fn vote_is_sent_only_after_term_and_vote_are_persisted() {
    let mut node = new_node(2, 3);
    node.step(vote_request(1, 2, 1, 0, 0)).unwrap();
    let ready = node.ready();
    assert_eq!(ready.hard_state, Some(HardState { term: 1, vote: Some(1), commit: 0 }));
    assert!(ready.must_sync);
    assert!(ready.messages.is_empty(), "vote sent before persisting: {:?}", ready.messages);
    assert!(matches!(
        ready.persisted_messages[0].body,
        MessageBody::RequestVoteResponse { pre_vote: false, granted: true }
    ));
}

/// A candidate's own RequestVote goes out only after its new term and self-vote are durable.
/// Reference: §5.2, Fig. 2
#[test]
fn candidate_requests_votes_only_after_persisting_its_term() {
    let mut config = config(1);
    config.pre_vote = false;
    let initial = InitialState {
        snapshot: SnapshotMeta { conf: ConfState::with_voters(voters(3)), ..Default::default() },
        ..Default::default()
    };
    let mut node = Raft::new(config, initial).unwrap();
    node.campaign();
    let ready = node.ready();
    assert_eq!(ready.hard_state.unwrap().vote, Some(1));
    assert!(ready.messages.is_empty());
    assert_eq!(ready.persisted_messages.len(), 2);
}

/// Each node votes for at most one candidate in a term, first come first served.
/// Reference: §5.2
#[test]
fn node_votes_for_at_most_one_candidate_per_term() {
    let mut node = new_node(3, 3);
    node.step(vote_request(1, 3, 1, 0, 0)).unwrap();
    node.step(vote_request(2, 3, 1, 0, 0)).unwrap();
    let ready = node.ready();
    let grants: Vec<_> = ready
        .persisted_messages
        .iter()
        .map(|m| (m.to, matches!(m.body, MessageBody::RequestVoteResponse { granted: true, .. })))
        .collect();
    assert_eq!(grants, vec![(1, true), (2, false)]);
}

/// A vote request from an older term is refused with the voter's term, so that the
/// candidate learns it and campaigns above it. Dropped silently, a candidate whose term
/// is behind never catches up with a voter that keeps campaigning without asking it
/// (one whose stale configuration does not list it): without pre-vote the simulator
/// found two such nodes that never elected a leader again.
/// Reference: Figure 2 (RequestVote: "Reply false if term < currentTerm"), §5.1
#[test]
fn vote_request_from_an_older_term_is_refused_with_the_current_term() {
    let mut node = new_node(2, 3);
    node.step(vote_request(1, 2, 5, 0, 0)).unwrap();
    take_ready(&mut node);
    node.step(vote_request(3, 2, 3, 9, 2)).unwrap();
    let ready = take_ready(&mut node);
    let refused = Message {
        from: 2,
        to: 3,
        term: 5,
        body: MessageBody::RequestVoteResponse { pre_vote: false, granted: false },
    };
    assert_eq!(ready.messages, vec![refused]);
    assert_eq!((node.term(), node.status().vote), (5, Some(1)), "nothing else changed");
}

/// The up-to-date check compares the last term first: a longer log with an older
/// last term loses to a shorter log with a newer one.
/// Reference: §5.4.1 (RAFT-NOTES #9)
#[test]
fn vote_compares_last_term_before_last_index() {
    // Voter's log: terms [1, 1, 1]. Candidate: one entry of term 2.
    let mut voter = follower_with_log(2, 3, 2, vec![entry(1, 1), entry(1, 2), entry(1, 3)]);
    voter.step(vote_request(1, 2, 3, 1, 2)).unwrap();
    let ready = take_ready(&mut voter);
    assert!(matches!(responses(&ready)[0], MessageBody::RequestVoteResponse { granted: true, .. }));

    // Voter's log: terms [1, 2]. Candidate: three entries of term 1: refused.
    let mut voter = follower_with_log(2, 3, 2, vec![entry(1, 1), entry(2, 2)]);
    voter.step(vote_request(1, 2, 3, 3, 1)).unwrap();
    let ready = take_ready(&mut voter);
    assert!(matches!(responses(&ready)[0], MessageBody::RequestVoteResponse { granted: false, .. }));
}

/// With equal last terms, the longer log wins.
/// Reference: §5.4.1
#[test]
fn vote_refused_to_candidate_with_shorter_log_of_same_last_term() {
    let mut voter = follower_with_log(2, 3, 1, vec![entry(1, 1), entry(1, 2)]);
    voter.step(vote_request(1, 2, 2, 1, 1)).unwrap();
    let ready = take_ready(&mut voter);
    assert!(matches!(responses(&ready)[0], MessageBody::RequestVoteResponse { granted: false, .. }));
    assert_eq!(voter.status().vote, None);
}

/// Election timeouts are drawn from [T, 2T).
/// Reference: §5.2, RAFT-NOTES #13
#[test]
fn election_timeout_is_randomized_between_t_and_2t() {
    let mut seen = BTreeSet::new();
    for seed in 0..200 {
        let mut config = config(1);
        config.seed = seed;
        config.pre_vote = false;
        let initial = InitialState {
            snapshot: SnapshotMeta { conf: ConfState::with_voters(voters(3)), ..Default::default() },
            ..Default::default()
        };
        let mut node = Raft::new(config, initial).unwrap();
        let mut ticks = 0;
        while node.role() == Role::Follower {
            node.tick();
            ticks += 1;
            assert!(ticks < 20, "no election within 2T");
        }
        assert!(ticks >= 10, "election after {ticks} ticks, before T");
        seen.insert(ticks);
    }
    assert!(seen.len() >= 5, "timeouts not spread: {seen:?}");
}

/// Pre-vote: a partitioned node campaigns again and again without raising its term,
/// and a node answering a pre-vote changes neither its term nor its vote.
/// Reference: thesis §9.6 (RAFT-NOTES #10)
#[test]
fn pre_vote_changes_no_term_on_either_side() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    let term = cluster.nodes[&1].term();
    cluster.isolate(3);
    cluster.tick_all(100);
    assert_eq!(cluster.nodes[&3].term(), term, "isolated node raised its term");
    assert_eq!(cluster.nodes[&3].role(), Role::PreCandidate);

    // Answering a pre-vote: no term or vote change.
    let mut voter = new_node(2, 3);
    let pre_vote = Message {
        from: 1,
        to: 2,
        term: 5,
        body: MessageBody::RequestVote {
            pre_vote: true,
            last_log_index: 0,
            last_log_term: 0,
            transfer: false,
        },
    };
    voter.step(pre_vote).unwrap();
    assert_eq!(voter.term(), 0);
    assert_eq!(voter.status().vote, None);
    let ready = take_ready(&mut voter);
    let reply = &ready.messages[0];
    assert_eq!(reply.term, 5, "a granted pre-vote answers in the asked term");
    assert!(matches!(reply.body, MessageBody::RequestVoteResponse { pre_vote: true, granted: true }));
}

/// The original project's headline bug: a node that was away rejoins and must not
/// depose a healthy leader. Followers that heard from the leader ignore its votes.
/// Reference: thesis §4.2.3, §9.6 (RAFT-NOTES #11)
#[test]
fn returning_node_cannot_depose_a_healthy_leader() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "a");
    let term = cluster.nodes[&1].term();
    cluster.isolate(3);
    cluster.tick_all(50);
    cluster.heal();
    cluster.node(3).campaign();
    cluster.stabilize();
    cluster.tick_all(5);
    assert_eq!(cluster.leaders(), vec![1]);
    assert_eq!(cluster.nodes[&1].term(), term);
    assert_eq!(cluster.nodes[&3].leader(), Some(1));
}

/// Even a real (non-pre) vote with a higher term is ignored by a follower in its lease,
/// and does not raise the follower's term.
/// Reference: thesis §4.2.3
#[test]
fn follower_in_lease_ignores_higher_term_vote_requests() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    let term = cluster.nodes[&2].term();
    cluster.node(2).step(vote_request(3, 2, term + 5, 100, term)).unwrap();
    assert_eq!(cluster.nodes[&2].term(), term);
    assert!(!cluster.nodes[&2].has_ready() || cluster.node(2).ready().persisted_messages.is_empty());
}

/// A vote triggered by a leadership transfer bypasses leader stickiness.
/// Reference: thesis §3.10 (RAFT-NOTES #11, exception)
#[test]
fn leadership_transfer_vote_bypasses_the_lease() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "a");
    cluster.node(1).transfer_leadership(2).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.leaders(), vec![2]);
    assert!(cluster.sent.iter().any(|m| matches!(m.body, MessageBody::TimeoutNow)));
}

/// A transfer first brings a lagging target up to date, then sends TimeoutNow;
/// proposals are refused meanwhile.
/// Reference: thesis §3.10
#[test]
fn transfer_catches_up_the_target_and_refuses_proposals_meanwhile() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.isolate(3);
    cluster.propose(1, "a");
    cluster.propose(1, "b");
    cluster.node(1).transfer_leadership(3).unwrap();
    assert_eq!(cluster.node(1).propose(Bytes::from("c")), Err(ProposeError::TransferInProgress));
    cluster.stabilize();
    assert_eq!(cluster.leaders(), vec![1], "transfer completed while target unreachable");
    cluster.heal();
    cluster.tick_all(1); // heartbeat answer shows 3 lags: it is caught up, then told to campaign
    assert_eq!(cluster.leaders(), vec![3]);
    assert_eq!(cluster.nodes[&3].last_index(), cluster.nodes[&1].last_index());
}

/// A transfer that cannot finish is abandoned after an election timeout.
/// Reference: thesis §3.10
#[test]
fn transfer_is_abandoned_after_an_election_timeout() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.cut.insert((1, 3));
    cluster.propose(1, "a");
    cluster.node(1).transfer_leadership(3).unwrap();
    cluster.tick_all(11);
    assert_eq!(cluster.leaders(), vec![1]);
    assert!(cluster.node(1).propose(Bytes::from("b")).is_ok());
}

/// Check-quorum: a leader cut off from a majority steps down within an election
/// timeout, so a partitioned leader stops serving.
/// Reference: thesis §6.2 (RAFT-NOTES #12)
#[test]
fn leader_without_quorum_steps_down() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.isolate(1);
    cluster.tick_all(21);
    assert_eq!(cluster.nodes[&1].role(), Role::Follower);
    assert_eq!(cluster.node(1).read_index(7), Err(ReadIndexError::NoLeader));
}

// ------------------------------------------------------------------ replication

/// A new leader appends a no-op of its own term, which commits earlier entries.
/// Reference: §5.4.2, §8 (RAFT-NOTES #8)
#[test]
fn new_leader_appends_and_commits_a_noop() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    let noop = cluster.applied[&1].last().unwrap().clone();
    assert_eq!(noop.kind, EntryKind::Noop);
    assert_eq!(noop.term, cluster.nodes[&1].term());
    assert_eq!(cluster.nodes[&1].commit_index(), noop.index);
}

/// Entries a leader accepts reach every follower's log and state machine, in order.
/// Reference: §5.3
#[test]
fn proposals_replicate_and_apply_in_order_everywhere() {
    let mut cluster = Cluster::new(5);
    cluster.elect(2);
    for i in 0..20 {
        cluster.propose(2, &format!("v{i}"));
    }
    cluster.tick_all(2);
    let expected: Vec<Bytes> = cluster.applied[&2].iter().map(|e| e.data.clone()).collect();
    assert_eq!(expected.len(), 21);
    for id in 1..=5 {
        let got: Vec<Bytes> = cluster.applied[&id].iter().map(|e| e.data.clone()).collect();
        assert_eq!(got, expected, "node {id}");
    }
}

/// Consistency check: a follower refuses entries whose predecessor it lacks, and
/// says how far back to go (fast back-off).
/// Reference: §5.3, Fig. 2 AppendEntries rule 2 (RAFT-NOTES #7)
#[test]
fn follower_rejects_mismatched_prev_and_reports_the_conflicting_term() {
    let mut follower = follower_with_log(2, 3, 3, vec![entry(1, 1), entry(2, 2), entry(2, 3), entry(2, 4)]);
    follower.step(append(1, 2, 3, (4, 3), vec![entry(3, 5)], 0)).unwrap();
    let ready = take_ready(&mut follower);
    assert_eq!(
        responses(&ready)[0],
        &MessageBody::AppendEntriesResponse { success: false, index: 4, conflict_term: 2, conflict_index: 2 }
    );
    // A shorter log reports its length.
    follower.step(append(1, 2, 3, (9, 3), vec![], 0)).unwrap();
    let ready = take_ready(&mut follower);
    assert_eq!(
        responses(&ready)[0],
        &MessageBody::AppendEntriesResponse { success: false, index: 9, conflict_term: 0, conflict_index: 5 }
    );
}

/// A conflicting suffix is cut and replaced by the leader's entries.
/// Reference: §5.3, Fig. 2 AppendEntries rule 3
#[test]
fn follower_replaces_a_conflicting_suffix() {
    let mut follower = follower_with_log(2, 3, 3, vec![entry(1, 1), entry(2, 2), entry(2, 3)]);
    follower.step(append(1, 2, 3, (1, 1), vec![entry(3, 2)], 0)).unwrap();
    let ready = take_ready(&mut follower);
    assert_eq!(ready.entries, vec![entry(3, 2)]);
    assert_eq!(follower.last_index(), 2);
}

/// A duplicated or reordered old AppendEntries whose entries all match does not
/// truncate the newer entries behind them.
/// Reference: Fig. 2 AppendEntries rule 3, "if an existing entry conflicts" (RAFT-NOTES #4)
#[test]
fn stale_append_with_matching_entries_does_not_truncate() {
    let mut follower = follower_with_log(2, 3, 1, vec![entry(1, 1), entry(1, 2), entry(1, 3)]);
    follower.step(append(1, 2, 1, (0, 0), vec![entry(1, 1)], 0)).unwrap();
    assert_eq!(follower.last_index(), 3);
    let ready = take_ready(&mut follower);
    assert!(ready.entries.is_empty());
    // It still answers with the index this message proves, not the whole log.
    assert_eq!(
        responses(&ready)[0],
        &MessageBody::AppendEntriesResponse { success: true, index: 1, conflict_term: 0, conflict_index: 0 }
    );
}

/// Follower commit = min(leaderCommit, index of the last new entry), never its own
/// last index: a stale tail the leader never had must not commit.
/// Reference: Fig. 2 AppendEntries rule 5 (RAFT-NOTES #5)
#[test]
fn follower_commit_is_bounded_by_the_last_new_entry() {
    // Follower holds a stale entry of term 1 at index 3, the leader's log has 3 entries of term 2.
    let mut follower = follower_with_log(2, 3, 2, vec![entry(1, 1), entry(1, 2), entry(1, 3)]);
    follower.step(append(1, 2, 2, (1, 1), vec![entry(1, 2)], 3)).unwrap();
    assert_eq!(follower.commit_index(), 2, "committed the stale entry at 3");
}

/// An AppendEntries success is only sent once the entries are durable.
/// Reference: Fig. 2 "respond after persisting" (RAFT-NOTES #1)
#[test]
fn append_success_is_sent_only_after_persisting() {
    let mut follower = new_node(2, 3);
    follower.step(append(1, 2, 1, (0, 0), vec![entry(1, 1)], 0)).unwrap();
    let ready = follower.ready();
    assert_eq!(ready.entries, vec![entry(1, 1)]);
    assert!(ready.messages.is_empty());
    assert!(matches!(
        ready.persisted_messages[0].body,
        MessageBody::AppendEntriesResponse { success: true, .. }
    ));
}

/// Figure 8: a leader does not commit an entry of an earlier term by counting
/// replicas, only once an entry of its own term is on a majority.
/// Reference: §5.4.2, Figure 8 (RAFT-NOTES #8)
#[test]
fn leader_never_commits_an_earlier_term_entry_by_counting_replicas() {
    // Node 1 was leader in term 2 and wrote index 2 (term 2) only to itself; it is
    // now leader of term 4 after its no-op, holding the old entry.
    let disk_log = vec![entry(1, 1), entry(2, 2)];
    let initial = InitialState {
        hard_state: HardState { term: 3, vote: None, commit: 1 },
        snapshot: SnapshotMeta { conf: ConfState::with_voters(voters(3)), ..Default::default() },
        entries: disk_log,
    };
    let mut leader = Raft::new(config(1), initial).unwrap();
    elect_by_hand(&mut leader);
    assert_eq!(leader.role(), Role::Leader);
    let term = leader.term();
    take_ready(&mut leader); // persists the no-op at index 3
                             // Node 2 acknowledges index 2 only (the old-term entry): a majority holds it.
    let ack = |index| Message {
        from: 2,
        to: 1,
        term,
        body: MessageBody::AppendEntriesResponse {
            success: true,
            index,
            conflict_term: 0,
            conflict_index: 0,
        },
    };
    leader.step(ack(2)).unwrap();
    assert_eq!(leader.commit_index(), 1, "committed an earlier term's entry by counting");
    leader.step(ack(3)).unwrap();
    assert_eq!(leader.commit_index(), 3, "the no-op commits it indirectly");
}

/// The leader may send entries before its own write finishes, but counts itself
/// toward a commit only once its write is durable.
/// Reference: thesis §10.2.1 (RAFT-NOTES #2)
#[test]
fn leader_counts_itself_only_after_its_write_is_durable() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    let (_, index) = cluster.node(1).propose(Bytes::from("x")).unwrap();
    let ready = cluster.node(1).ready();
    assert_eq!(ready.entries.last().unwrap().index, index);
    assert!(
        ready
            .messages
            .iter()
            .any(|m| matches!(&m.body, MessageBody::AppendEntries { entries, .. } if !entries.is_empty())),
        "leader did not send while writing"
    );
    // One follower acknowledges before the leader's own write is done: 1 of 3 is not a majority.
    let term = cluster.nodes[&1].term();
    let ack = Message {
        from: 2,
        to: 1,
        term,
        body: MessageBody::AppendEntriesResponse {
            success: true,
            index,
            conflict_term: 0,
            conflict_index: 0,
        },
    };
    cluster.node(1).step(ack).unwrap();
    assert!(cluster.nodes[&1].commit_index() < index, "leader counted its own unpersisted write");
    cluster.node(1).advance();
    assert_eq!(cluster.nodes[&1].commit_index(), index);
}

/// Stale and reordered answers: a late rejection does not rewind next_index to or
/// below match_index, and match_index never decreases.
/// Reference: §5.3 (RAFT-NOTES #6)
#[test]
fn late_rejection_and_old_success_do_not_rewind_progress() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    for i in 0..5 {
        cluster.propose(1, &format!("{i}"));
    }
    let term = cluster.nodes[&1].term();
    let before = cluster.nodes[&1].status().peers[0].clone();
    assert_eq!(before.match_index, 6);
    let reject = Message {
        from: 2,
        to: 1,
        term,
        body: MessageBody::AppendEntriesResponse {
            success: false,
            index: 3,
            conflict_term: 0,
            conflict_index: 2,
        },
    };
    cluster.node(1).step(reject).unwrap();
    let old_success = Message {
        from: 2,
        to: 1,
        term,
        body: MessageBody::AppendEntriesResponse {
            success: true,
            index: 2,
            conflict_term: 0,
            conflict_index: 0,
        },
    };
    cluster.node(1).step(old_success).unwrap();
    let after = cluster.nodes[&1].status().peers[0].clone();
    assert_eq!(after.match_index, 6);
    assert!(after.next_index > after.match_index);
    assert_eq!(after.state, "replicate");
}

/// Fast back-off: a follower whose tail is a whole term the leader never had is
/// repaired in a couple of round trips, not one per entry.
/// Reference: §5.3 (end) (RAFT-NOTES #7)
#[test]
fn fast_backoff_skips_a_whole_conflicting_term() {
    // Indexes 1..=10 of term 1 are common. Node 3 then led term 2 alone and wrote 40
    // entries no one else has; nodes 1 and 2 hold two entries of term 3.
    let common: Vec<Entry> = (1..=10).map(|i| entry(1, i)).collect();
    let mut stale = common.clone();
    stale.extend((11..=50).map(|i| entry(2, i)));
    let mut current = common;
    current.extend([entry(3, 11), entry(3, 12)]);
    let mut cluster = Cluster::new(3);
    for (id, log) in [(1, current.clone()), (2, current), (3, stale)] {
        cluster.nodes.insert(id, follower_with_log(id, 3, 3, log.clone()));
        cluster.disks.get_mut(&id).unwrap().entries = log;
    }
    cluster.elect(1);
    let rejections = cluster
        .sent
        .iter()
        .filter(|m| {
            m.from == 3 && matches!(m.body, MessageBody::AppendEntriesResponse { success: false, .. })
        })
        .count();
    assert_eq!(rejections, 1, "one rejection skips the whole of term 2");
    assert_eq!(cluster.nodes[&3].last_index(), cluster.nodes[&1].last_index());
    assert_eq!(cluster.disks[&3].entries.len() as u64, cluster.nodes[&1].last_index());
}

/// Pipelining: in Replicate state a leader keeps several AppendEntries in flight
/// without waiting, bounded by max_inflight_messages, and splits by max_message_bytes.
/// Reference: thesis §10.2.2
#[test]
fn replication_is_pipelined_and_bounded() {
    let mut cluster = Cluster::new(3);
    for node in cluster.nodes.values_mut() {
        node.config_mut().max_message_bytes = 100;
        node.config_mut().max_inflight_messages = 3;
    }
    cluster.elect(1);
    cluster.cut.insert((2, 1)); // node 2's answers are lost: nothing frees its inflights
    for i in 0..10 {
        cluster.node(1).propose(Bytes::from(vec![i as u8; 60])).unwrap();
    }
    cluster.stabilize();
    let appends_to_2: Vec<usize> = cluster
        .sent
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::AppendEntries { entries, .. } if m.to == 2 && !entries.is_empty() => {
                Some(entries.len())
            }
            _ => None,
        })
        .collect();
    // The no-op (acknowledged before the cut), then 3 in flight, each within 100 bytes
    // (one 84-byte entry each), then nothing until answers come.
    assert_eq!(appends_to_2.len(), 4, "{appends_to_2:?}");
    assert!(appends_to_2.iter().all(|&n| n <= 1));
    // Node 3 answers, so it gets everything.
    assert_eq!(cluster.nodes[&1].commit_index(), 11);
}

/// While the leader's own write of one batch is in progress, the next batch already
/// goes to the followers, and may commit on them alone.
/// Reference: thesis §10.2.1
#[test]
fn leader_replicates_the_next_batch_while_its_write_is_in_progress() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.node(1).propose(Bytes::from("first")).unwrap();
    let outstanding = cluster.node(1).ready();
    assert_eq!(outstanding.entries.len(), 1);
    let (_, second) = cluster.node(1).propose(Bytes::from("second")).unwrap();
    let messages = cluster.node(1).take_messages();
    let carried: Vec<u64> = messages
        .iter()
        .filter(|m| m.to == 2)
        .flat_map(|m| match &m.body {
            MessageBody::AppendEntries { entries, .. } => entries.iter().map(|e| e.index).collect(),
            _ => vec![],
        })
        .collect();
    assert!(carried.contains(&second), "second batch not sent during the write: {carried:?}");
    // Both followers acknowledge: a majority without the leader's own write commits it.
    for m in outstanding.messages.iter().chain(messages.iter()) {
        let follower = m.to;
        cluster.node(follower).step(m.clone()).unwrap();
    }
    for follower in [2, 3] {
        cluster.handle_ready(follower);
    }
    while let Some(m) = cluster.queue.pop_front() {
        if m.to == 1 {
            cluster.node(1).step(m).unwrap();
        }
    }
    assert_eq!(cluster.nodes[&1].commit_index(), second);
    // Committed on a majority: it may be applied before the leader's own write ends.
    let applied: Vec<u64> = cluster.node(1).take_committed_entries().iter().map(|e| e.index).collect();
    assert_eq!(applied, vec![second - 1, second]);
    cluster.node(1).applied_to(second);
    assert_eq!(cluster.nodes[&1].applied_index(), second);
    cluster.node(1).advance();
    assert!(cluster.node(1).ready().committed_entries.is_empty(), "applied twice");
}

/// Entries committed while a Ready that carries committed entries is outstanding wait
/// for those to be applied first: applying stays in log order. (The daemon once applied
/// 664 and 665 early, then the Ready's 660 to 663: found by the chaos test.)
#[test]
fn early_apply_never_overtakes_the_outstanding_readys_entries() {
    let mut follower = follower_with_log(2, 3, 1, vec![entry(1, 1), entry(1, 2)]);
    follower.step(append(1, 2, 1, (2, 1), vec![entry(1, 3)], 2)).unwrap();
    let ready = follower.ready();
    let indexes = |entries: &[Entry]| entries.iter().map(|e| e.index).collect::<Vec<_>>();
    assert_eq!(indexes(&ready.committed_entries), vec![1, 2]);
    // Entries 3 and 4 commit while the Ready (with 1 and 2 to apply) is outstanding.
    follower.step(append(1, 2, 1, (3, 1), vec![entry(1, 4)], 4)).unwrap();
    assert!(follower.take_committed_entries().is_empty(), "3 and 4 would be applied before 1 and 2");
    follower.advance();
    assert_eq!(indexes(&follower.ready().committed_entries), vec![3, 4]);
}

/// A follower installing a snapshot applies nothing after it until the snapshot is
/// installed, even if later entries commit meanwhile.
/// Reference: §7
#[test]
fn nothing_is_applied_past_a_snapshot_not_yet_installed() {
    let mut follower = follower_with_log(2, 3, 2, vec![entry(1, 1)]);
    let snapshot = Snapshot {
        meta: SnapshotMeta { index: 5, term: 2, conf: ConfState::with_voters(voters(3)) },
        data: Bytes::from("state"),
    };
    follower
        .step(Message { from: 1, to: 2, term: 2, body: MessageBody::InstallSnapshot { snapshot } })
        .unwrap();
    let ready = follower.ready();
    assert!(ready.snapshot.is_some());
    follower.step(append(1, 2, 2, (5, 2), vec![entry(2, 6)], 6)).unwrap();
    assert!(follower.take_committed_entries().is_empty());
    follower.advance();
    assert_eq!(follower.ready().committed_entries, vec![entry(2, 6)]);
}

/// Group commit: proposals made between two Readys go out as one batch and one write.
/// Reference: thesis §10.2.1
#[test]
fn proposals_between_readys_are_batched() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    for i in 0..50 {
        cluster.node(1).propose(Bytes::from(format!("{i}"))).unwrap();
    }
    let ready = cluster.node(1).ready();
    assert_eq!(ready.entries.len(), 50);
    let appends: Vec<_> = ready.messages.iter().filter(|m| m.to == 2).collect();
    assert_eq!(appends.len(), 1);
    cluster.node(1).advance();
}

/// After a restart a node applies only what it learns is committed; the persisted
/// commit index is a lower bound.
/// Reference: §5.3, RAFT-NOTES #3
#[test]
fn restarted_node_applies_only_committed_entries() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "a");
    cluster.isolate(1);
    cluster.node(1).propose(Bytes::from("uncommitted")).unwrap();
    cluster.stabilize();
    cluster.restart(1);
    cluster.stabilize();
    let applied: Vec<Bytes> = cluster.applied[&1].iter().map(|e| e.data.clone()).collect();
    assert!(!applied.contains(&Bytes::from("uncommitted")));
    assert!(applied.contains(&Bytes::from("a")));
}

// ------------------------------------------------------------------ reads

/// ReadIndex: the leader answers a read only after a majority acknowledges a
/// heartbeat round started after the read arrived.
/// Reference: thesis §6.4 (RAFT-NOTES #14)
#[test]
fn read_index_waits_for_a_majority_heartbeat_round() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "a");
    cluster.isolate(1);
    cluster.node(1).read_index(42).unwrap();
    cluster.stabilize();
    assert!(cluster.reads.get(&1).is_none_or(|r| r.is_empty()), "read answered without a quorum");
    cluster.heal();
    cluster.tick_all(1);
    let commit = cluster.nodes[&1].commit_index();
    assert_eq!(cluster.reads[&1], vec![ReadState { context: 42, index: commit }]);
}

/// A new leader does not answer reads until an entry of its term has committed:
/// before that its commit index may be stale.
/// Reference: thesis §6.4 step 1
#[test]
fn read_index_waits_for_the_leaders_first_commit() {
    let initial = InitialState {
        hard_state: HardState { term: 1, vote: None, commit: 1 },
        snapshot: SnapshotMeta { conf: ConfState::with_voters(voters(3)), ..Default::default() },
        entries: vec![entry(1, 1), entry(1, 2)],
    };
    let mut leader = Raft::new(config(1), initial).unwrap();
    elect_by_hand(&mut leader);
    let term = leader.term();
    take_ready(&mut leader); // persists the no-op at index 3
    leader.read_index(9).unwrap();
    let ready = take_ready(&mut leader);
    assert!(ready.read_states.is_empty());
    assert!(!ready.messages.iter().any(|m| matches!(m.body, MessageBody::Heartbeat { .. })));
    // Node 2 acknowledges the no-op: commit reaches this term, the read starts its round.
    let ack =
        MessageBody::AppendEntriesResponse { success: true, index: 3, conflict_term: 0, conflict_index: 0 };
    leader.step(Message { from: 2, to: 1, term, body: ack }).unwrap();
    let ready = take_ready(&mut leader);
    let round = ready
        .messages
        .iter()
        .find_map(|m| match m.body {
            MessageBody::Heartbeat { context, .. } if m.to == 2 => Some(context),
            _ => None,
        })
        .expect("heartbeat round for the read");
    leader
        .step(Message { from: 2, to: 1, term, body: MessageBody::HeartbeatResponse { context: round } })
        .unwrap();
    let ready = take_ready(&mut leader);
    assert_eq!(ready.read_states, vec![ReadState { context: 9, index: 3 }]);
}

/// A follower asks the leader for the read index and gets the leader's commit.
/// Reference: thesis §6.4
#[test]
fn follower_read_index_goes_through_the_leader() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "a");
    cluster.node(3).read_index(7).unwrap();
    cluster.stabilize();
    let commit = cluster.nodes[&1].commit_index();
    assert_eq!(cluster.reads[&3], vec![ReadState { context: 7, index: commit }]);
    assert!(cluster.nodes[&3].applied_index() >= commit);
}

/// Reads issued between two Readys share one heartbeat round.
/// Reference: thesis §6.4, "batching"
#[test]
fn reads_between_readys_share_one_heartbeat_round() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    let before = cluster.sent.len();
    for context in 0..100 {
        cluster.node(1).read_index(context).unwrap();
    }
    cluster.stabilize();
    let heartbeats =
        cluster.sent[before..].iter().filter(|m| matches!(m.body, MessageBody::Heartbeat { .. })).count();
    assert_eq!(heartbeats, 2, "one round to two followers");
    assert_eq!(cluster.reads[&1].len(), 100);
}

// ------------------------------------------------------------------ snapshots

/// A leader whose log is compacted past a follower's needs sends a snapshot; the
/// follower discards its log, installs the snapshot, and catches up after it.
/// Reference: §7
#[test]
fn lagging_follower_gets_a_snapshot_and_catches_up() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.isolate(3);
    for i in 0..10 {
        cluster.propose(1, &format!("{i}"));
    }
    let applied = cluster.nodes[&1].applied_index();
    cluster.node(1).compact(applied).unwrap();
    cluster.heal();
    cluster.tick_all(1);
    assert!(cluster.sent.iter().any(|m| m.to == 3 && matches!(m.body, MessageBody::InstallSnapshot { .. })));
    cluster.propose(1, "after");
    assert_eq!(cluster.nodes[&3].last_index(), cluster.nodes[&1].last_index());
    assert_eq!(cluster.disks[&3].snapshot.index, applied);
    assert_eq!(cluster.applied[&3].last().unwrap().data, Bytes::from("after"));
}

/// A follower that already holds the snapshot's last entry keeps its log after it.
/// Reference: §7, RAFT-NOTES #16
#[test]
fn snapshot_matching_an_entry_keeps_the_log_after_it() {
    let mut follower = follower_with_log(2, 3, 2, vec![entry(1, 1), entry(1, 2), entry(2, 3)]);
    let snapshot = Snapshot {
        meta: SnapshotMeta { index: 2, term: 1, conf: ConfState::with_voters(voters(3)) },
        data: Bytes::new(),
    };
    follower
        .step(Message { from: 1, to: 2, term: 2, body: MessageBody::InstallSnapshot { snapshot } })
        .unwrap();
    let ready = take_ready(&mut follower);
    assert!(ready.snapshot.is_none());
    assert_eq!(follower.last_index(), 3);
    assert_eq!(follower.commit_index(), 2);

    let mut follower = follower_with_log(2, 3, 2, vec![entry(1, 1), entry(1, 2), entry(2, 3)]);
    let snapshot = Snapshot {
        meta: SnapshotMeta { index: 5, term: 2, conf: ConfState::with_voters(voters(3)) },
        data: Bytes::from("state"),
    };
    follower
        .step(Message { from: 1, to: 2, term: 2, body: MessageBody::InstallSnapshot { snapshot } })
        .unwrap();
    let ready = take_ready(&mut follower);
    assert_eq!(ready.snapshot.unwrap().data, Bytes::from("state"));
    assert_eq!(follower.last_index(), 5);
    assert_eq!(follower.status().first_index, 6);
}

/// Compaction only covers what was applied.
/// Reference: §7
#[test]
fn compaction_is_refused_beyond_applied() {
    let mut cluster = Cluster::new(1);
    cluster.elect(1);
    let applied = cluster.nodes[&1].applied_index();
    assert_eq!(
        cluster.node(1).compact(applied + 1),
        Err(CompactError::NotApplied { index: applied + 1, applied })
    );
}

/// With early apply, applied may pass what this node has persisted; compaction waits
/// until the entries are durable here too, or the storage would be asked for a
/// snapshot beyond its log (issue 11: "snapshot at N beyond the log").
/// Reference: §7, thesis §10.2.1
#[test]
fn compaction_waits_until_applied_entries_are_durable() {
    let mut follower = new_node(2, 3);
    follower.step(append(1, 2, 1, (0, 0), vec![entry(1, 1), entry(1, 2), entry(1, 3)], 0)).unwrap();
    let ready = follower.ready();
    assert_eq!(ready.entries.len(), 3);
    // The other follower made them durable: the leader commits and says so while our
    // own write of them is still in progress.
    follower.step(append(1, 2, 1, (3, 1), vec![], 3)).unwrap();
    let applied = follower.take_committed_entries();
    assert_eq!(applied.len(), 3);
    follower.applied_to(3);
    assert_eq!(follower.compact(3), Err(CompactError::NotDurable { index: 3, stable: 0 }));
    assert_eq!(follower.status().first_index, 1);
    follower.advance();
    assert_eq!(follower.compact(3).map(|meta| (meta.index, meta.term)), Ok((3, 1)));
}

// ------------------------------------------------------------------ bad input

/// Malformed or misaddressed messages are refused with a typed error and change nothing.
#[test]
fn malformed_messages_are_refused_without_effect() {
    let mut follower = new_node(2, 3);
    let gap = append(1, 2, 1, (0, 0), vec![entry(1, 2)], 0);
    assert!(matches!(follower.step(gap), Err(StepError::Malformed { .. })));
    let future_term = append(1, 2, 1, (0, 0), vec![entry(5, 1)], 0);
    assert!(matches!(follower.step(future_term), Err(StepError::Malformed { .. })));
    let misaddressed = append(1, 3, 1, (0, 0), vec![], 0);
    assert_eq!(
        follower.step(misaddressed),
        Err(StepError::WrongReceiver { kind: "AppendEntries", from: 1, to: 3, me: 2 })
    );
    let from_zero = append(0, 2, 1, (0, 0), vec![], 0);
    assert_eq!(follower.step(from_zero), Err(StepError::ZeroSender { kind: "AppendEntries" }));
    let from_self = append(2, 2, 1, (0, 0), vec![], 0);
    assert_eq!(follower.step(from_self), Err(StepError::FromSelf { kind: "AppendEntries", me: 2 }));
    assert_eq!(follower.term(), 0);
    assert!(!follower.has_ready());
}

/// A leader of three nodes with a committed entry, and nothing outstanding.
fn leader_of_three() -> Raft {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "x");
    cluster.nodes.remove(&1).unwrap()
}

/// A leader hearing a leader's message from another node in its own term refuses it
/// and stays leader, unchanged: one forged message must not kill or depose it. (It
/// used to panic on AppendEntries, Heartbeat, InstallSnapshot and TimeoutNow.)
/// Reference: §5.2 (at most one leader per term)
#[test]
fn leader_refuses_leader_messages_from_another_node_in_its_term() {
    let mut leader = leader_of_three();
    let term = leader.term();
    let snapshot = Snapshot {
        meta: SnapshotMeta { index: 9, term, conf: ConfState::with_voters(voters(3)) },
        data: Bytes::new(),
    };
    let bodies = [
        MessageBody::AppendEntries {
            prev_log_index: 2,
            prev_log_term: term,
            entries: vec![],
            leader_commit: 2,
        },
        MessageBody::Heartbeat { commit: 2, context: 0 },
        MessageBody::InstallSnapshot { snapshot },
        MessageBody::TimeoutNow,
        MessageBody::ReadIndexResponse { context: 1, index: 2 },
    ];
    let status = leader.status();
    for body in bodies {
        let kind = body.name();
        let result = leader.step(Message { from: 2, to: 1, term, body });
        assert_eq!(result, Err(StepError::NotTheLeader { kind, from: 2, term, leader: 1 }));
        let text = result.unwrap_err().to_string();
        assert!(text.contains(kind) && text.contains("node 2"), "{text}");
    }
    assert_eq!(leader.status(), status);
    assert!(!leader.has_ready());
}

/// A follower that knows its term's leader refuses a leader's message from anyone
/// else in that term, instead of switching to the impostor.
/// Reference: §5.2
#[test]
fn follower_refuses_a_second_leader_in_its_term() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    let mut follower = cluster.nodes.remove(&2).unwrap();
    let term = follower.term();
    let status = follower.status();
    let impostor = append(3, 2, term, (1, term), vec![entry(term, 2)], 2);
    assert_eq!(
        follower.step(impostor),
        Err(StepError::NotTheLeader { kind: "AppendEntries", from: 3, term, leader: 1 })
    );
    assert_eq!(follower.status(), status);
    // In a later term node 3 may well lead.
    follower.step(append(3, 2, term + 1, (1, term), vec![], 1)).unwrap();
    assert_eq!(follower.leader(), Some(3));
}

/// A node follows a leader it does not know yet (a new member hears from the leader
/// before it learns the configuration), but refuses vote requests from non-members
/// (thesis §4.2.3), and a leader or candidate refuses answers from a node that is not
/// a member: it never asked it.
/// Reference: thesis §4.1, §4.2.3
#[test]
fn answers_from_non_members_are_refused_but_leader_messages_are_not() {
    let mut follower = new_node(2, 3);
    follower.step(append(9, 2, 1, (0, 0), vec![entry(1, 1)], 0)).unwrap();
    assert_eq!(follower.leader(), Some(9));
    assert_eq!(
        follower.step(vote_request(8, 2, 2, 1, 1)),
        Err(StepError::VoteRequestFromNonMember { kind: "RequestVote", from: 8 })
    );
    assert_eq!(follower.term(), 1);

    let mut leader = leader_of_three();
    let term = leader.term();
    let status = leader.status();
    let answers = [
        MessageBody::AppendEntriesResponse { success: true, index: 1, conflict_term: 0, conflict_index: 0 },
        MessageBody::HeartbeatResponse { context: 0 },
        MessageBody::RequestVoteResponse { pre_vote: false, granted: true },
    ];
    for body in answers {
        let kind = body.name();
        let result = leader.step(Message { from: 9, to: 1, term, body });
        assert_eq!(result, Err(StepError::ResponseFromNonMember { kind, from: 9 }));
    }
    assert_eq!(leader.status(), status);
}

/// A leader refuses an AppendEntries answer naming an index it never sent (beyond its
/// log: it would count toward a commit), and a heartbeat answer echoing a read round
/// it has not started (it would confirm reads no majority acknowledged).
/// Reference: §5.3, thesis §6.4
#[test]
fn leader_refuses_answers_beyond_its_log_or_read_round() {
    let mut leader = leader_of_three();
    let term = leader.term();
    let last_index = leader.last_index();
    let status = leader.status();
    for success in [true, false] {
        let body = MessageBody::AppendEntriesResponse {
            success,
            index: last_index + 1,
            conflict_term: 0,
            conflict_index: 0,
        };
        assert_eq!(
            leader.step(Message { from: 2, to: 1, term, body }),
            Err(StepError::IndexBeyondLog {
                kind: "AppendEntriesResponse",
                from: 2,
                index: last_index + 1,
                last_index
            })
        );
    }
    leader.read_index(7).unwrap();
    let round = 0; // the read's round has not started: its heartbeats are not out yet
    for from in [2, 3] {
        let body = MessageBody::HeartbeatResponse { context: round + 1 };
        assert_eq!(
            leader.step(Message { from, to: 1, term, body }),
            Err(StepError::RoundBeyondLatest { kind: "HeartbeatResponse", from, context: 1, round })
        );
    }
    assert_eq!(leader.status(), status);
    let ready = take_ready(&mut leader);
    assert!(ready.read_states.is_empty(), "a read was confirmed by forged acknowledgements");
}

/// Terms and indexes near u64::MAX are refused: a node that adopted term u64::MAX
/// would overflow its next `term + 1` (a campaign after TimeoutNow panicked).
/// Reference: §5.1
#[test]
fn terms_and_indexes_near_u64_max_are_refused() {
    let limit = MAX_TERM_OR_INDEX;
    let mut follower = new_node(2, 3);
    let huge_term = Message { from: 1, to: 2, term: u64::MAX, body: MessageBody::TimeoutNow };
    assert_eq!(
        follower.step(huge_term),
        Err(StepError::OutOfRange { kind: "TimeoutNow", from: 1, field: "term", value: u64::MAX, limit })
    );
    let huge_index = append(1, 2, 1, (limit, 1), vec![entry(1, limit + 1)], 0);
    assert_eq!(
        follower.step(huge_index),
        Err(StepError::OutOfRange {
            kind: "AppendEntries",
            from: 1,
            field: "last entry index",
            value: limit + 1,
            limit
        })
    );
    let snapshot = Snapshot {
        meta: SnapshotMeta { index: u64::MAX, term: 1, conf: ConfState::with_voters(voters(3)) },
        data: Bytes::new(),
    };
    let huge_snapshot = Message { from: 1, to: 2, term: 1, body: MessageBody::InstallSnapshot { snapshot } };
    assert!(matches!(
        follower.step(huge_snapshot),
        Err(StepError::OutOfRange { field: "snapshot index", value: u64::MAX, .. })
    ));
    assert_eq!(follower.term(), 0);
    assert!(!follower.has_ready());
    // The largest accepted term still leaves room to campaign.
    follower.step(Message { from: 1, to: 2, term: limit, body: MessageBody::TimeoutNow }).unwrap();
    assert_eq!((follower.role(), follower.term()), (Role::Candidate, limit + 1));
}

/// A snapshot whose metadata no leader could send (index 0, term 0, a term beyond the
/// message's, no voters, node 0 as a voter) is refused before anything is installed.
/// Reference: §7
#[test]
fn inconsistent_snapshot_metadata_is_refused() {
    let mut follower = new_node(2, 3);
    let metas = [
        SnapshotMeta { index: 0, term: 1, conf: ConfState::with_voters(voters(3)) },
        SnapshotMeta { index: 5, term: 0, conf: ConfState::with_voters(voters(3)) },
        SnapshotMeta { index: 5, term: 3, conf: ConfState::with_voters(voters(3)) },
        SnapshotMeta { index: 5, term: 1, conf: ConfState::with_voters(vec![]) },
        SnapshotMeta { index: 5, term: 1, conf: ConfState::with_voters(vec![0, 1, 2]) },
    ];
    for meta in metas {
        let snapshot = Snapshot { meta: meta.clone(), data: Bytes::new() };
        let result = follower.step(Message {
            from: 1,
            to: 2,
            term: 2,
            body: MessageBody::InstallSnapshot { snapshot },
        });
        assert!(
            matches!(result, Err(StepError::Malformed { kind: "InstallSnapshot", from: 1, .. })),
            "{meta:?}"
        );
    }
    assert_eq!(follower.term(), 0);
    assert!(!follower.has_ready());
}

/// Persisted state that breaks the log's rules is refused at start.
#[test]
fn inconsistent_persisted_state_is_refused() {
    let initial = |entries, commit| InitialState {
        hard_state: HardState { term: 2, vote: None, commit },
        snapshot: SnapshotMeta { conf: ConfState::with_voters(voters(3)), ..Default::default() },
        entries,
    };
    assert!(matches!(
        Raft::new(config(1), initial(vec![entry(1, 2)], 0)),
        Err(InitError::Gap { expected: 1, found: 2, .. })
    ));
    assert!(matches!(
        Raft::new(config(1), initial(vec![entry(2, 1), entry(1, 2)], 0)),
        Err(InitError::TermOrder { .. })
    ));
    assert!(matches!(
        Raft::new(config(1), initial(vec![entry(1, 1)], 5)),
        Err(InitError::CommitBeyondLog { .. })
    ));
    let no_voters = InitialState { snapshot: SnapshotMeta::default(), ..initial(vec![], 0) };
    assert!(matches!(
        Raft::new(config(1), no_voters),
        Err(InitError::InvalidConf { reason: "no voters", .. })
    ));
    let mut both = initial(vec![], 0);
    both.snapshot.conf.learners = vec![2];
    assert!(matches!(Raft::new(config(1), both), Err(InitError::InvalidConf { .. })));
    // A node outside its configuration (one waiting to be added) starts, and never campaigns.
    let mut outsider = Raft::new(config(7), initial(vec![], 0)).unwrap();
    for _ in 0..100 {
        outsider.tick();
    }
    assert_eq!(outsider.role(), Role::Follower);
    assert!(!outsider.is_removed());
}

// ------------------------------------------------------------------ hostile peers

/// A property test: whatever a buggy or hostile peer sends, the core never panics,
/// keeps its invariants, and a refused message changes nothing.
mod arbitrary_messages {
    use proptest::prelude::*;

    use super::*;

    /// The node under test, in each role, in clusters of 1 and 3 nodes. Each has a log
    /// with a compacted prefix, so snapshot and back-off paths are reachable.
    #[derive(Clone, Copy, Debug)]
    enum Setup {
        SingleFollower,
        SingleLeader,
        Follower,
        PreCandidate,
        Candidate,
        Leader,
    }

    fn node_in(setup: Setup) -> Raft {
        let n = match setup {
            Setup::SingleFollower | Setup::SingleLeader => 1,
            _ => 3,
        };
        let mut cluster = Cluster::new(n);
        cluster.elect(1);
        for i in 0..4 {
            cluster.propose(1, &format!("{i}"));
        }
        let applied = cluster.nodes[&1].applied_index();
        cluster.node(1).compact(applied - 2).unwrap();
        let id = match setup {
            Setup::SingleFollower => {
                cluster.restart(1);
                1
            }
            Setup::SingleLeader | Setup::Leader => 1,
            Setup::Follower => 2,
            Setup::PreCandidate => {
                cluster.node(2).campaign();
                2
            }
            Setup::Candidate => {
                cluster.node(2).config_mut().pre_vote = false;
                cluster.node(2).campaign();
                2
            }
        };
        let mut node = cluster.nodes.remove(&id).unwrap();
        if node.has_ready() {
            take_ready(&mut node);
        }
        node
    }

    /// A value near a real one (a term, an index): 0, u64::MAX, or within 2 of it.
    #[derive(Clone, Copy, Debug)]
    enum Near {
        Zero,
        Max,
        Offset(i8),
    }

    impl Near {
        fn at(self, base: u64) -> u64 {
            match self {
                Near::Zero => 0,
                Near::Max => u64::MAX,
                Near::Offset(d) => base.saturating_add_signed(d as i64),
            }
        }
    }

    /// Mostly the real value, where the interesting cases are.
    fn near() -> impl Strategy<Value = Near> {
        prop_oneof![
            1 => Just(Near::Zero),
            1 => Just(Near::Max),
            4 => Just(Near::Offset(0)),
            6 => (-2i8..=2).prop_map(Near::Offset),
        ]
    }

    /// A sender or receiver, relative to the node under test.
    #[derive(Clone, Copy, Debug)]
    enum Who {
        /// The node itself.
        Me,
        /// Another voter (in a one-node cluster: node 2, a stranger).
        Peer(u8),
        /// Any id, 0 and u64::MAX included.
        Id(NodeId),
    }

    impl Who {
        fn id(self, node: &Raft) -> NodeId {
            match self {
                Who::Me => node.id(),
                Who::Peer(k) => {
                    let others: Vec<NodeId> =
                        node.voters().iter().copied().filter(|&v| v != node.id()).collect();
                    others.get(k as usize % others.len().max(1)).copied().unwrap_or(2)
                }
                Who::Id(id) => id,
            }
        }
    }

    fn sender() -> impl Strategy<Value = Who> {
        prop_oneof![
            8 => any::<u8>().prop_map(Who::Peer),
            1 => Just(Who::Me),
            1 => prop_oneof![Just(0), 1u64..=4, Just(u64::MAX)].prop_map(Who::Id),
        ]
    }

    fn receiver() -> impl Strategy<Value = Who> {
        prop_oneof![8 => Just(Who::Me), 1 => sender()]
    }

    /// Every field any message body can have; `kind` picks the body.
    #[derive(Clone, Debug)]
    struct Spec {
        kind: u8,
        from: Who,
        to: Who,
        term: Near,
        flags: (bool, bool),
        index: Near,
        log_term: Near,
        commit: Near,
        context: Near,
        /// Well-formed entries (consecutive, terms in order) or raw (index, term) pairs.
        consecutive: bool,
        entries: Vec<(Near, Near)>,
        voters: Vec<NodeId>,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        let voters = prop_oneof![
            Just(vec![1, 2, 3]),
            Just(vec![1]),
            Just(vec![]),
            Just(vec![0, 1]),
            Just(vec![2, 3]),
            Just(vec![3, 2, 1, 1]),
        ];
        (
            (0u8..10, sender(), receiver(), near(), any::<(bool, bool)>()),
            (near(), near(), near(), near()),
            (prop::bool::weighted(0.8), prop::collection::vec((near(), near()), 0..4), voters),
        )
            .prop_map(|((kind, from, to, term, flags), (index, log_term, commit, context), rest)| {
                let (consecutive, entries, voters) = rest;
                Spec {
                    kind,
                    from,
                    to,
                    term,
                    flags,
                    index,
                    log_term,
                    commit,
                    context,
                    consecutive,
                    entries,
                    voters,
                }
            })
    }

    impl Spec {
        /// The message, with its values placed around the node's real ones.
        fn message(&self, node: &Raft) -> Message {
            let term = self.term.at(node.term());
            let index = self.index.at(node.last_index());
            let log_term = self.log_term.at(node.term());
            let commit = self.commit.at(node.commit_index());
            let context = self.context.at(1);
            let (a, b) = self.flags;
            let body = match self.kind {
                0 => MessageBody::RequestVote {
                    pre_vote: a,
                    last_log_index: index,
                    last_log_term: log_term,
                    transfer: b,
                },
                1 => MessageBody::RequestVoteResponse { pre_vote: a, granted: b },
                2 => MessageBody::AppendEntries {
                    prev_log_index: index,
                    prev_log_term: log_term,
                    entries: self.entries(index, log_term, term),
                    leader_commit: commit,
                },
                3 => MessageBody::AppendEntriesResponse {
                    success: a,
                    index,
                    conflict_term: log_term,
                    conflict_index: commit,
                },
                4 => MessageBody::Heartbeat { commit, context },
                5 => MessageBody::HeartbeatResponse { context },
                6 => MessageBody::InstallSnapshot {
                    snapshot: Snapshot {
                        meta: SnapshotMeta {
                            index,
                            term: log_term,
                            conf: ConfState::with_voters(self.voters.clone()),
                        },
                        data: Bytes::from_static(b"state"),
                    },
                },
                7 => MessageBody::TimeoutNow,
                8 => MessageBody::ReadIndex { context },
                _ => MessageBody::ReadIndexResponse { context, index: commit },
            };
            Message { from: self.from.id(node), to: self.to.id(node), term, body }
        }

        fn entries(&self, prev_index: u64, prev_term: u64, term: u64) -> Vec<Entry> {
            let mut out = Vec::new();
            let mut previous_term = prev_term;
            for (i, (index, entry_term)) in self.entries.iter().enumerate() {
                let entry = if self.consecutive {
                    let Some(index) = prev_index.checked_add(i as u64 + 1) else { break };
                    let entry_term = entry_term.at(term).clamp(previous_term.min(term), term);
                    previous_term = entry_term;
                    super::entry(entry_term, index)
                } else {
                    super::entry(entry_term.at(term), index.at(prev_index))
                };
                out.push(entry);
            }
            out
        }
    }

    /// What the driver does between messages.
    #[derive(Clone, Debug)]
    enum Op {
        Step(Spec),
        /// Takes a Ready and leaves it outstanding (if none is).
        Ready,
        /// Advances the outstanding Ready (if any).
        Advance,
        Tick,
        /// Early apply, as the daemon does while a Ready is outstanding.
        ApplyEarly,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => spec().prop_map(Op::Step),
            1 => Just(Op::Ready),
            1 => Just(Op::Advance),
            1 => Just(Op::Tick),
            1 => Just(Op::ApplyEarly),
        ]
    }

    /// The node's own invariants, as its status shows them.
    fn check_invariants(node: &Raft) {
        let status = node.status();
        assert!(status.applied <= status.commit, "{status:?}");
        assert!(status.commit <= status.last_index, "{status:?}");
        assert!(status.persisted_index <= status.last_index, "{status:?}");
        assert!(status.first_index <= status.last_index + 1, "{status:?}");
        assert_eq!(status.role == Role::Leader, status.leader == Some(status.id), "{status:?}");
    }

    fn check_ready(node: &Raft, ready: &Ready) {
        for m in ready.messages.iter().chain(&ready.persisted_messages) {
            assert_eq!(m.from, node.id(), "{m:?}");
            assert!(m.to != node.id() && m.to != 0, "{m:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// Reference: §5.1 (terms never go back), Fig. 2; issue 11 ("no peer input panics a node").
        #[test]
        fn arbitrary_peer_messages_never_panic_any_role(
            setup in prop_oneof![
                Just(Setup::SingleFollower),
                Just(Setup::SingleLeader),
                Just(Setup::Follower),
                Just(Setup::PreCandidate),
                Just(Setup::Candidate),
                Just(Setup::Leader),
            ],
            ops in prop::collection::vec(op(), 1..16),
        ) {
            let mut node = node_in(setup);
            let mut outstanding = false;
            for op in ops {
                let term_before = node.term();
                match op {
                    Op::Step(spec) => {
                        let message = spec.message(&node);
                        let status_before = node.status();
                        let has_ready_before = node.has_ready();
                        if let Err(error) = node.step(message.clone()) {
                            prop_assert_eq!(node.status(), status_before, "{} changed the node", error);
                            prop_assert_eq!(node.has_ready(), has_ready_before, "{} changed the node", error);
                            let text = error.to_string();
                            prop_assert!(text.contains(message.body.name()), "{} does not name the kind", text);
                            prop_assert!(
                                text.contains(&format!("node {}", message.from)) || text.contains("this node"),
                                "{} does not name the sender",
                                text
                            );
                        }
                    }
                    Op::Ready if !outstanding => {
                        let ready = node.ready();
                        check_ready(&node, &ready);
                        outstanding = true;
                    }
                    Op::Advance if outstanding => {
                        node.advance();
                        outstanding = false;
                    }
                    Op::Tick => node.tick(),
                    Op::ApplyEarly => {
                        if let Some(last) = node.take_committed_entries().last() {
                            node.applied_to(last.index);
                        }
                    }
                    Op::Ready | Op::Advance => {}
                }
                prop_assert!(node.term() >= term_before, "term went back from {} to {}", term_before, node.term());
                check_invariants(&node);
            }
            // The driver's loop still works: the node drains to quiet.
            if outstanding {
                node.advance();
            }
            for _ in 0..4 {
                if !node.has_ready() {
                    break;
                }
                let ready = node.ready();
                check_ready(&node, &ready);
                node.advance();
                check_invariants(&node);
            }
        }
    }
}

#[path = "tests_membership.rs"]
mod membership;
