//! The Raft state machine. It reads like the paper: roles, elections (§5.2, thesis
//! §9.6), replication (§5.3), commitment (§5.4.2), reads (thesis §6.4), leadership
//! transfer (thesis §3.10), snapshots (§7) and single-server membership changes
//! (thesis chapter 4).

use std::collections::BTreeMap;

use bytes::Bytes;

use super::conf_change::{ConfChange, ConfChangeKind, MAX_CONTEXT_BYTES};
use super::config::Config;
use super::entry::{ConfState, Entry, EntryKind, HardState, NodeId, Snapshot, SnapshotMeta};
use super::error::{
    CompactError, ConfChangeError, InitError, ProposeError, ReadIndexError, StepError, TransferError,
};
use super::log::RaftLog;
use super::membership::Membership;
use super::message::{Message, MessageBody};
use super::progress::{majority, quorum_value, Progress, ProgressState};
use super::read_only::ReadOnly;
use super::ready::{PeerStatus, ReadState, Ready, Role, SoftState, Status};
use super::rng::SplitMix64;

/// The largest term or log index accepted from a peer. No cluster counts that far
/// (2^63 elections or entries), and the headroom above it means `term + 1` and
/// `index + 1` never overflow, however large a value a peer sends.
pub const MAX_TERM_OR_INDEX: u64 = u64::MAX / 2;

/// What a node starts from: what its storage holds.
#[derive(Clone, Debug, Default)]
pub struct InitialState {
    /// The persisted hard state (default for a new node).
    pub hard_state: HardState,
    /// The latest snapshot's metadata; `conf` is the cluster's membership as of its
    /// index (for a new node: index 0, term 0, and the bootstrap voters). The
    /// configuration in force is `conf` with every `Config` entry of `entries` applied.
    /// This node need not be a member: a node joining the cluster starts with the
    /// configuration it was given and learns that it was added from the leader's log.
    pub snapshot: SnapshotMeta,
    /// The log entries after the snapshot, consecutive from `snapshot.index + 1`.
    pub entries: Vec<Entry>,
}

/// One Raft node.
pub struct Raft {
    id: NodeId,
    config: Config,
    /// The configurations in the log; the latest is in force (thesis §4.1).
    membership: Membership,
    /// Leader only: the index of the latest configuration change, or, on election, the
    /// last index then (RAFT-NOTES #19). No change is proposed while it is uncommitted.
    pending_conf_index: u64,
    /// Leader only: a follower this leader removed, and the index of its removal. Until
    /// the removal commits, and for the rest of that check-quorum round, the leader keeps
    /// replicating to it and accepts its answers (never counting them), so that it learns
    /// its removal committed and can stop (`is_removed`).
    departing: Option<(NodeId, u64)>,

    /// Latest term seen. Invariant: never decreases.
    term: u64,
    /// Vote in `term`.
    vote: Option<NodeId>,
    role: Role,
    /// The leader of `term`, once known.
    leader: Option<NodeId>,
    log: RaftLog,

    /// Leader only: one entry per other member, voter or learner.
    /// Invariant: keys == members of the current configuration except `id`.
    progress: BTreeMap<NodeId, Progress>,
    /// Candidate and pre-candidate: answers received in this election.
    votes: BTreeMap<NodeId, bool>,

    /// Ticks since the last election timeout reset (followers: since hearing from a leader).
    election_elapsed: u32,
    /// Leader only: ticks since the last heartbeat.
    heartbeat_elapsed: u32,
    /// Election timeout for this round, in [T, 2T).
    randomized_election_ticks: u32,
    rng: SplitMix64,

    /// Leader only: the follower leadership is being handed to.
    transfer_target: Option<NodeId>,
    /// False while the caller cannot persist (a full disk): the node neither leads nor
    /// campaigns, since its up-to-date log would win elections it cannot serve.
    can_lead: bool,
    read_only: ReadOnly,
    /// Leader only: reads that arrived before an entry of this term was committed.
    reads_waiting_for_commit: Vec<(u64, NodeId)>,

    /// Leader only: entries were appended or the commit index moved since the last flush.
    replication_wanted: bool,
    commit_changed: bool,

    messages: Vec<Message>,
    persisted_messages: Vec<Message>,
    read_states: Vec<ReadState>,
    /// The hard and soft state last handed out in a Ready.
    last_hard_state: HardState,
    last_soft_state: SoftState,
    /// A Ready was handed out and not yet advanced.
    ready_outstanding: bool,
    /// The outstanding Ready carries a snapshot or committed entries: nothing after
    /// them may be applied before the caller has installed or applied them, in order.
    apply_outstanding: bool,
}

impl Raft {
    /// Starts a node from its persisted state. Applied starts at the snapshot's
    /// index: committed entries after it come out again in `Ready::committed_entries`.
    pub fn new(config: Config, initial: InitialState) -> Result<Raft, InitError> {
        config.validate()?;
        let InitialState { hard_state, mut snapshot, entries } = initial;
        let conf = &mut snapshot.conf;
        conf.voters.sort_unstable();
        conf.voters.dedup();
        conf.learners.sort_unstable();
        conf.learners.dedup();
        if conf.voters.is_empty() {
            return Err(InitError::InvalidConf { conf: conf.clone(), reason: "no voters" });
        }
        if let Some(reason) = conf.invalid_reason() {
            return Err(InitError::InvalidConf { conf: conf.clone(), reason });
        }
        let mut previous_term = snapshot.term;
        for (offset, entry) in entries.iter().enumerate() {
            let expected = snapshot.index + 1 + offset as u64;
            if entry.index != expected {
                return Err(InitError::Gap { snapshot_index: snapshot.index, expected, found: entry.index });
            }
            if entry.term < previous_term || entry.term > hard_state.term {
                return Err(InitError::TermOrder {
                    index: entry.index,
                    term: entry.term,
                    previous_term,
                    current_term: hard_state.term,
                });
            }
            previous_term = entry.term;
        }
        let last_index = entries.last().map_or(snapshot.index, |e| e.index);
        if hard_state.commit > last_index {
            return Err(InitError::CommitBeyondLog { commit: hard_state.commit, last_index });
        }
        // Thesis §4.1: the configuration is the latest in the log, committed or not.
        let mut membership = Membership::new(config.id, snapshot.conf.clone(), snapshot.index);
        for entry in entries.iter().filter(|e| e.kind == EntryKind::Config) {
            membership.append(entry.index, &entry.data);
        }
        let log = RaftLog::restore(snapshot, entries, hard_state.commit);
        let mut rng = SplitMix64::new(config.seed ^ config.id.wrapping_mul(0x9E37_79B9));
        let randomized_election_ticks =
            config.election_ticks + rng.below(config.election_ticks as u64) as u32;
        let soft = SoftState { role: Role::Follower, leader: None, term: hard_state.term };
        Ok(Raft {
            id: config.id,
            membership,
            pending_conf_index: 0,
            departing: None,
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: None,
            log,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_ticks,
            rng,
            transfer_target: None,
            can_lead: true,
            read_only: ReadOnly::default(),
            reads_waiting_for_commit: Vec::new(),
            replication_wanted: false,
            commit_changed: false,
            messages: Vec::new(),
            persisted_messages: Vec::new(),
            read_states: Vec::new(),
            last_hard_state: hard_state,
            last_soft_state: soft,
            ready_outstanding: false,
            apply_outstanding: false,
            config,
        })
    }

    // ---------------------------------------------------------------- accessors

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The commit index.
    pub fn commit_index(&self) -> u64 {
        self.log.committed
    }

    /// The applied index (as of the last `advance`).
    pub fn applied_index(&self) -> u64 {
        self.log.applied
    }

    /// The last log index.
    pub fn last_index(&self) -> u64 {
        self.log.last_index()
    }

    /// The last index the caller has made durable (as of the last `advance`).
    pub fn stable_index(&self) -> u64 {
        self.log.stable_index()
    }

    /// The voters of the configuration in force (the latest in the log, thesis §4.1).
    pub fn voters(&self) -> &[NodeId] {
        &self.conf().voters
    }

    /// The learners of the configuration in force.
    pub fn learners(&self) -> &[NodeId] {
        &self.conf().learners
    }

    /// The configuration in force: the latest in the log, committed or not (thesis §4.1).
    pub fn conf_state(&self) -> &ConfState {
        self.membership.current()
    }

    /// The configuration as of the start of the log (the snapshot's, or the one the node
    /// was created with): what a node that joins with an empty log must start from, so
    /// that the configuration entries it then receives apply to the right base.
    pub fn log_start_conf(&self) -> &ConfState {
        self.membership.base()
    }

    /// True once a *committed* configuration no longer holds this node (neither voter
    /// nor learner), although an earlier committed one did: the node has been removed
    /// and should stop. A node that was never a committed member (one waiting to be
    /// added) is not removed. After a restart, a node whose snapshot already excludes it
    /// and whose log holds no configuration naming it cannot tell "removed" from "not
    /// added yet", and says false: the daemon must remember a removal itself.
    pub fn is_removed(&self) -> bool {
        self.membership.is_removed(self.log.committed)
    }

    /// On a leader, the highest index known replicated on `id` (this node's own last
    /// index for itself); `None` on a follower or for a node outside the configuration.
    pub fn match_index(&self, id: NodeId) -> Option<u64> {
        if self.role != Role::Leader {
            return None;
        }
        if id == self.id {
            return Some(self.log.last_index());
        }
        self.progress.get(&id).map(|pr| pr.match_index)
    }

    /// The voter with the highest match index: the natural target of a step-down.
    pub fn most_up_to_date_follower(&self) -> Option<NodeId> {
        self.progress
            .iter()
            .filter(|(id, _)| self.conf().is_voter(**id))
            .max_by_key(|(id, pr)| (pr.match_index, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)
    }

    /// The node's state.
    pub fn status(&self) -> Status {
        let peers = self
            .progress
            .iter()
            .map(|(id, pr)| PeerStatus {
                id: *id,
                match_index: pr.match_index,
                next_index: pr.next_index,
                state: pr.state_name(),
                recently_active: pr.recently_active,
                learner: self.conf().is_learner(*id),
            })
            .collect();
        Status {
            id: self.id,
            role: self.role,
            term: self.term,
            vote: self.vote,
            leader: self.leader,
            commit: self.log.committed,
            applied: self.log.applied,
            first_index: self.log.first_index(),
            last_index: self.log.last_index(),
            persisted_index: self.log.stable_index(),
            peers,
            removed: self.is_removed(),
        }
    }

    #[cfg(test)]
    pub(crate) fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    fn soft_state(&self) -> SoftState {
        SoftState { role: self.role, leader: self.leader, term: self.term }
    }

    fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.committed }
    }

    fn conf(&self) -> &ConfState {
        self.membership.current()
    }

    fn is_single_voter(&self) -> bool {
        self.conf().voters == [self.id]
    }

    // ---------------------------------------------------------------- role changes

    fn reset(&mut self, term: u64) {
        if term != self.term {
            assert!(term > self.term, "node {}: term {} going back to {term}", self.id, self.term);
            self.term = term;
            self.vote = None;
        }
        self.leader = None;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomized_election_ticks =
            self.config.election_ticks + self.rng.below(self.config.election_ticks as u64) as u32;
        self.votes.clear();
        self.progress.clear();
        self.transfer_target = None;
        self.departing = None;
        self.read_only.clear();
        self.reads_waiting_for_commit.clear();
        self.replication_wanted = false;
        self.commit_changed = false;
    }

    fn become_follower(&mut self, term: u64, leader: Option<NodeId>) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
    }

    /// Thesis §9.6: ask first, in term + 1, without changing our own term.
    fn become_pre_candidate(&mut self) {
        assert_ne!(
            self.role,
            Role::Leader,
            "node {} term {}: leader cannot pre-campaign",
            self.id,
            self.term
        );
        let term = self.term;
        self.reset(term);
        self.role = Role::PreCandidate;
    }

    /// §5.2: increment the term and vote for self.
    fn become_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "node {} term {}: leader cannot campaign", self.id, self.term);
        self.reset(self.term + 1);
        self.vote = Some(self.id);
        self.role = Role::Candidate;
    }

    /// §5.2, §8: a new leader tracks every follower and appends a no-op of its term,
    /// so entries of earlier terms commit promptly (§5.4.2).
    fn become_leader(&mut self) {
        assert_eq!(
            self.role,
            Role::Candidate,
            "node {} term {}: leader from {:?}",
            self.id,
            self.term,
            self.role
        );
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = Some(self.id);
        // RAFT-NOTES #19: anything up to the last index may be an uncommitted change.
        self.pending_conf_index = self.log.last_index();
        self.departing = None;
        self.sync_progress();
        let next = self.log.last_index() + 1;
        self.log.append_new(Entry { term, index: next, kind: EntryKind::Noop, data: Bytes::new() });
        self.replication_wanted = true;
    }

    // ---------------------------------------------------------------- time

    /// Advances time by one tick.
    pub fn tick(&mut self) {
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => self.tick_election(),
        }
    }

    fn tick_election(&mut self) {
        // Counts on while the node cannot campaign (a learner, a node outside its own
        // configuration, a full disk): it has not heard from a leader, so it is out of
        // the leader's lease (thesis §4.2.3) and answers vote requests. An election that
        // starts resets it.
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        if self.election_elapsed >= self.randomized_election_ticks {
            self.campaign();
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_ticks {
            self.election_elapsed = 0;
            // Thesis §6.2: a leader that has not heard from a majority steps down.
            if self.config.check_quorum && !self.quorum_recently_active() {
                let term = self.term;
                self.become_follower(term, None);
                return;
            }
            for pr in self.progress.values_mut() {
                pr.active_in_previous_round = pr.recently_active;
                pr.recently_active = false;
            }
            self.release_departing();
            // Thesis §3.10: a transfer that has not finished in an election timeout is abandoned.
            self.transfer_target = None;
        }
        for pr in self.progress.values_mut() {
            if let ProgressState::Snapshot { .. } = pr.state {
                pr.snapshot_ticks += 1;
                if pr.snapshot_ticks > self.config.election_ticks {
                    pr.become_probe(); // the snapshot or its answer was lost: try again
                    self.replication_wanted = true;
                }
            }
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Thesis §6.2: a majority of the voters (the leader counts if it is one) answered
    /// within this election timeout. Learners do not count.
    fn quorum_recently_active(&self) -> bool {
        let voters = &self.conf().voters;
        let active = voters
            .iter()
            .filter(|&&v| v == self.id || self.progress.get(&v).is_some_and(|pr| pr.recently_active))
            .count();
        active >= majority(voters.len())
    }

    // ---------------------------------------------------------------- elections

    /// Says whether this node can persist what leading needs. While it cannot (its disk
    /// is full), a leader or candidate becomes a follower in its term, and the node
    /// starts no election, not even on TimeoutNow; it still follows, answers and votes.
    pub fn set_can_lead(&mut self, can_lead: bool) {
        self.can_lead = can_lead;
        if !can_lead && self.role != Role::Follower {
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    /// Whether the node may lead and campaign (see `set_can_lead`).
    pub fn can_lead(&self) -> bool {
        self.can_lead
    }

    /// Starts an election now (pre-vote first if configured).
    pub fn campaign(&mut self) {
        let kind = if self.config.pre_vote { Election::PreVote } else { Election::Real { transfer: false } };
        self.start_election(kind);
    }

    /// Only a voter campaigns: a learner or a node outside its configuration never
    /// becomes a (pre-)candidate (thesis §4.2.1). A voter of the committed configuration
    /// whose latest one (appended, not committed) removes it still campaigns, without
    /// counting its own vote (thesis §4.2.2): until the removal commits it may be the only
    /// node whose log can win, and without it no leader would ever be elected again.
    fn start_election(&mut self, kind: Election) {
        let voter = self.conf().is_voter(self.id);
        let committed_voter = self.membership.at(self.log.committed).is_voter(self.id);
        if self.role == Role::Leader || !self.can_lead || !(voter || committed_voter) {
            return;
        }
        let (pre_vote, transfer, request_term) = match kind {
            Election::PreVote => {
                self.become_pre_candidate();
                (true, false, self.term + 1)
            }
            Election::Real { transfer } => {
                self.become_candidate();
                (false, transfer, self.term)
            }
        };
        if voter {
            self.votes.insert(self.id, true);
        }
        if self.poll_election() {
            return;
        }
        let body = MessageBody::RequestVote {
            pre_vote,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            transfer,
        };
        let voters = self.conf().voters.clone();
        for peer in voters {
            if peer != self.id {
                let message = Message { from: self.id, to: peer, term: request_term, body: body.clone() };
                // A real RequestVote carries our new term and self-vote: durable first.
                if pre_vote {
                    self.messages.push(message);
                } else {
                    self.persisted_messages.push(message);
                }
            }
        }
    }

    /// Counts the answers; moves on when an election is won or lost. Returns true when decided.
    /// Only voters' answers are recorded (`handle_vote_response`).
    fn poll_election(&mut self) -> bool {
        let granted = self.votes.values().filter(|&&g| g).count();
        let rejected = self.votes.len() - granted;
        let needed = majority(self.conf().voters.len());
        if granted >= needed {
            match self.role {
                Role::PreCandidate => self.start_election(Election::Real { transfer: false }),
                Role::Candidate => self.become_leader(),
                _ => unreachable!("poll_election as {:?}", self.role),
            }
            true
        } else if rejected >= needed {
            let term = self.term;
            self.become_follower(term, None);
            true
        } else {
            false
        }
    }

    fn handle_vote_request(&mut self, m: &Message, pre_vote: bool, last_log_index: u64, last_log_term: u64) {
        // etcd's rule: we may vote if we already voted for this candidate, or have no
        // vote and no leader in this term; a pre-vote for a later term always may.
        let can_vote = self.vote == Some(m.from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre_vote && m.term > self.term);
        let log_ok =
            self.log.is_up_to_date(last_log_index, last_log_term) || self.planted_vote_without_log_check();
        let granted = can_vote && log_ok;
        if granted && !pre_vote {
            self.election_elapsed = 0;
            self.vote = Some(m.from);
        }
        // A granted pre-vote answers in the term it asked about, so the pre-candidate
        // does not mistake it for a newer term (thesis §9.6).
        let term = if pre_vote && granted { m.term } else { self.term };
        let reply = Message {
            from: self.id,
            to: m.from,
            term,
            body: MessageBody::RequestVoteResponse { pre_vote, granted },
        };
        if pre_vote || self.planted_vote_before_persist() {
            self.messages.push(reply);
        } else {
            // Fig. 2: term and vote are durable before the vote is sent.
            self.persisted_messages.push(reply);
        }
    }

    fn handle_vote_response(&mut self, m: &Message, pre_vote: bool, granted: bool) {
        let expected = match self.role {
            Role::PreCandidate => pre_vote && m.term == self.term + 1,
            Role::Candidate => !pre_vote && m.term == self.term,
            _ => false,
        };
        // A learner's answer counts for nothing: it is not a voter here (thesis §4.2.1).
        if expected && self.conf().is_voter(m.from) {
            self.votes.entry(m.from).or_insert(granted);
            self.poll_election();
        }
    }

    // ---------------------------------------------------------------- messages

    /// Handles a message from a peer.
    ///
    /// A message that no correct peer could send to this node now is refused with a
    /// `StepError` naming its kind and sender, and changes nothing; the caller logs it
    /// and carries on. Refused are: a message addressed to another node, from node 0 or
    /// from this node itself; an answer (AppendEntriesResponse, HeartbeatResponse, vote
    /// responses) from a node that is neither a voter nor a learner (nor, at a leader,
    /// the follower whose removal is not committed yet); a vote or pre-vote
    /// request from such a node (see below); a leader's message (AppendEntries,
    /// Heartbeat, InstallSnapshot, TimeoutNow, ReadIndexResponse) in this node's term from
    /// a node other than the leader it knows, itself included (§5.2: one leader per term);
    /// a term or index beyond `MAX_TERM_OR_INDEX`; a leader's AppendEntriesResponse
    /// naming an index beyond its log, or a HeartbeatResponse echoing a read round not
    /// started; and malformed bodies (entries not consecutive or out of term order, a
    /// snapshot at index 0, of term 0, with no voters or an invalid configuration).
    ///
    /// Membership (thesis §4.1 against RAFT-NOTES #22, settled so): a leader's message
    /// (AppendEntries, Heartbeat, InstallSnapshot) from a node outside this node's
    /// configuration is *not* refused: a new member hears from a leader it does not know
    /// yet, and learns its configuration from that leader's log; the term rules (§5.1,
    /// §5.2) protect it from a stale one. A vote request from a non-member whose log is
    /// not ahead of this node's *is* refused, before its term can touch ours: such a
    /// sender knows no configuration this node does not, so it is not a member; most
    /// likely it was removed, and must not disrupt the cluster by forcing terms up
    /// (thesis §4.2.3). One whose log is ahead is heard: it may have been added in a
    /// suffix of the log this node has not received, and be a voter whose vote this node
    /// is needed for (the simulator found a cluster left without a leader for good when
    /// such requests were refused; `a_stale_voter_answers_a_vote_request_from_a_member_it_has_not_heard_of`).
    /// A removed server's log stops at its removal, behind the members'. A learner's vote request
    /// is answered: in a log this node has not received yet it may have been promoted,
    /// and only the candidate decides whose votes count. Answers from learners are
    /// accepted (they update the learner's progress) but never count toward a commit, a
    /// read or an election. Messages from older terms are answered or dropped (§5.1),
    /// not refused.
    pub fn step(&mut self, m: Message) -> Result<(), StepError> {
        self.validate(&m)?;
        if m.term > self.term {
            match m.body {
                MessageBody::RequestVote { pre_vote, transfer, .. } => {
                    // Thesis §4.2.3: a node that heard from a leader within the minimum
                    // election timeout ignores (pre-)votes, unless they follow a
                    // leadership transfer (thesis §3.10).
                    let in_lease = self.config.check_quorum
                        && self.leader.is_some()
                        && self.election_elapsed < self.config.election_ticks;
                    if in_lease && !transfer {
                        return Ok(());
                    }
                    if !pre_vote {
                        self.become_follower(m.term, None);
                    }
                }
                MessageBody::RequestVoteResponse { pre_vote: true, granted: true } => {
                    // Answers our pre-vote in the term we would campaign in; not a newer term.
                }
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => self.become_follower(m.term, Some(m.from)),
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            self.handle_stale_message(&m);
            return Ok(());
        }

        let from = m.from;
        match m.body {
            MessageBody::RequestVote { pre_vote, last_log_index, last_log_term, .. } => {
                self.handle_vote_request(&m, pre_vote, last_log_index, last_log_term)
            }
            MessageBody::RequestVoteResponse { pre_vote, granted } => {
                self.handle_vote_response(&m, pre_vote, granted)
            }
            MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, leader_commit } => {
                self.follow(from);
                self.handle_append_entries(from, prev_log_index, prev_log_term, entries, leader_commit)
            }
            MessageBody::Heartbeat { commit, context } => {
                self.follow(from);
                self.log.commit_to(commit.min(self.log.last_index()));
                self.send_now(from, MessageBody::HeartbeatResponse { context });
            }
            MessageBody::InstallSnapshot { snapshot } => {
                self.follow(from);
                self.handle_install_snapshot(from, snapshot)
            }
            // Thesis §3.10: the leader asks us to start an election now, bypassing pre-vote.
            MessageBody::TimeoutNow => self.start_election(Election::Real { transfer: true }),
            MessageBody::ReadIndexResponse { context, index } => {
                self.read_states.push(ReadState { context, index })
            }
            MessageBody::AppendEntriesResponse { success, index, conflict_term, conflict_index } => {
                if self.role == Role::Leader {
                    self.handle_append_response(from, success, index, conflict_term, conflict_index);
                }
            }
            MessageBody::HeartbeatResponse { context } => {
                if self.role == Role::Leader {
                    self.handle_heartbeat_response(from, context);
                }
            }
            MessageBody::ReadIndex { context } => {
                if self.role == Role::Leader {
                    self.leader_read_index(context, from);
                }
            }
        }
        Ok(())
    }

    /// A message from an older term. A deposed leader is told the newer term so it
    /// steps down; a (pre-)vote is refused so the (pre-)candidate learns our term (Figure
    /// 2) and campaigns above it: a candidate behind a voter that does not ask it for its
    /// vote (its configuration is stale) would otherwise stay behind for good.
    fn handle_stale_message(&mut self, m: &Message) {
        let reply_body = match m.body {
            MessageBody::AppendEntries { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => MessageBody::AppendEntriesResponse {
                success: false,
                index: 0,
                conflict_term: 0,
                conflict_index: 0,
            },
            MessageBody::RequestVote { pre_vote, .. } => {
                MessageBody::RequestVoteResponse { pre_vote, granted: false }
            }
            _ => return,
        };
        self.messages.push(Message { from: self.id, to: m.from, term: self.term, body: reply_body });
    }

    /// Refuses what no correct peer could send to this node now (see `step`). Takes
    /// `&self`: a refused message cannot have changed anything.
    fn validate(&self, m: &Message) -> Result<(), StepError> {
        let (kind, from) = (m.body.name(), m.from);
        if m.to != self.id {
            return Err(StepError::WrongReceiver { kind, from, to: m.to, me: self.id });
        }
        if from == 0 {
            return Err(StepError::ZeroSender { kind });
        }
        if from == self.id {
            return Err(StepError::FromSelf { kind, me: self.id });
        }
        let is_response = matches!(
            m.body,
            MessageBody::AppendEntriesResponse { .. }
                | MessageBody::HeartbeatResponse { .. }
                | MessageBody::RequestVoteResponse { .. }
        );
        if is_response && !self.conf().is_member(from) && !self.is_departing(from) {
            return Err(StepError::ResponseFromNonMember { kind, from });
        }
        if let MessageBody::RequestVote { last_log_index, last_log_term, .. } = m.body {
            // A candidate whose log is ahead of ours may hold configurations we have not
            // received, in which it is a voter: it is heard (thesis §4.1). One that is
            // not ahead knows no configuration we do not, so it is no member (thesis
            // §4.2.3: most likely a removed server, which must not disrupt the cluster).
            let ahead = (last_log_term, last_log_index) != (self.log.last_term(), self.log.last_index())
                && self.log.is_up_to_date(last_log_index, last_log_term);
            if !ahead && !self.conf().is_member(from) {
                return Err(StepError::VoteRequestFromNonMember { kind, from });
            }
        }
        let out_of_range =
            |field, value| Err(StepError::OutOfRange { kind, from, field, value, limit: MAX_TERM_OR_INDEX });
        if m.term > MAX_TERM_OR_INDEX {
            return out_of_range("term", m.term);
        }
        self.validate_body(m)?;
        if m.term != self.term {
            return Ok(()); // a newer term is news; an older one is answered or dropped
        }
        let from_leader = matches!(
            m.body,
            MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. }
                | MessageBody::TimeoutNow
                | MessageBody::ReadIndexResponse { .. }
        );
        match self.leader {
            // Election safety (§5.2): at most one leader per term.
            Some(leader) if from_leader && leader != from => {
                return Err(StepError::NotTheLeader { kind, from, term: m.term, leader });
            }
            _ => {}
        }
        if self.role == Role::Leader {
            match m.body {
                MessageBody::AppendEntriesResponse { index, .. } if index > self.log.last_index() => {
                    // The leader's log only grows in its term: it never sent this index.
                    let last_index = self.log.last_index();
                    return Err(StepError::IndexBeyondLog { kind, from, index, last_index });
                }
                MessageBody::HeartbeatResponse { context } if context > self.read_only.round() => {
                    // It would confirm reads whose heartbeat round has not even started.
                    let round = self.read_only.round();
                    return Err(StepError::RoundBeyondLatest { kind, from, context, round });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The checks that need only the message itself.
    fn validate_body(&self, m: &Message) -> Result<(), StepError> {
        let (kind, from) = (m.body.name(), m.from);
        let malformed = |reason| Err(StepError::Malformed { kind, from, reason });
        let out_of_range =
            |field, value| Err(StepError::OutOfRange { kind, from, field, value, limit: MAX_TERM_OR_INDEX });
        match &m.body {
            MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, .. } => {
                // Bounded, so the indexes below cannot overflow.
                let last = prev_log_index.saturating_add(entries.len() as u64);
                if last > MAX_TERM_OR_INDEX {
                    return out_of_range("last entry index", last);
                }
                if *prev_log_term > m.term {
                    return malformed("prev_log_term beyond the message's term");
                }
                let mut previous_term = *prev_log_term;
                for (offset, entry) in entries.iter().enumerate() {
                    if entry.index != prev_log_index + 1 + offset as u64 {
                        return malformed("entries not consecutive after prev_log_index");
                    }
                    if entry.term < previous_term || entry.term > m.term || entry.term == 0 {
                        return malformed("entry terms out of order");
                    }
                    previous_term = entry.term;
                }
            }
            MessageBody::InstallSnapshot { snapshot } => {
                let meta = &snapshot.meta;
                if meta.index > MAX_TERM_OR_INDEX {
                    return out_of_range("snapshot index", meta.index);
                }
                if meta.index == 0 || meta.term == 0 || meta.term > m.term {
                    return malformed("snapshot index or term out of range");
                }
                if meta.conf.voters.is_empty() || meta.conf.voters.contains(&0) {
                    return malformed("snapshot configuration without voters, or naming node 0");
                }
                if let Some(reason) = meta.conf.invalid_reason() {
                    return malformed(reason);
                }
            }
            MessageBody::RequestVote { last_log_term, .. } if *last_log_term > m.term => {
                return malformed("last_log_term beyond the candidate's term");
            }
            _ => {}
        }
        Ok(())
    }

    /// A leader's message in our term: it leads, and we follow it (§5.2).
    fn follow(&mut self, leader: NodeId) {
        if self.role != Role::Follower {
            let term = self.term;
            self.become_follower(term, Some(leader));
        }
        self.election_elapsed = 0;
        self.leader = Some(leader);
    }

    /// §5.3, Fig. 2 AppendEntries receiver rules.
    fn handle_append_entries(
        &mut self,
        from: NodeId,
        prev_log_index: u64,
        prev_log_term: u64,
        entries: Vec<Entry>,
        leader_commit: u64,
    ) {
        if prev_log_index < self.log.committed {
            // Everything up to our commit index matches the leader's log (§5.4.3).
            let index = self.log.committed;
            self.send_after_persist(from, success_response(index));
            return;
        }
        if !self.log.matches(prev_log_index, prev_log_term) {
            // Rule 2, with fast back-off (§5.3, end; RAFT-NOTES #7).
            let (conflict_term, conflict_index) = match self.log.term(prev_log_index) {
                None => (0, self.log.last_index() + 1),
                Some(term) => (term, self.log.first_index_of_term(term, prev_log_index)),
            };
            let body = MessageBody::AppendEntriesResponse {
                success: false,
                index: prev_log_index,
                conflict_term,
                conflict_index,
            };
            self.send_after_persist(from, body);
            return;
        }
        // Rules 3 and 4: truncate only on a real conflict, append what is new.
        let (last_new, appended_from) = self.log.merge(prev_log_index, entries);
        if let Some(first) = appended_from {
            self.appended_from(first);
        }
        // Rule 5: commit up to min(leaderCommit, index of the last new entry) (RAFT-NOTES #5).
        self.log.commit_to(leader_commit.min(last_new));
        // Fig. 2: the entries are durable before we say so.
        self.send_after_persist(from, success_response(last_new));
    }

    /// §7 InstallSnapshot receiver rules.
    fn handle_install_snapshot(&mut self, from: NodeId, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        if index <= self.log.committed {
            let committed = self.log.committed;
            self.send_after_persist(from, success_response(committed));
            return;
        }
        if self.log.matches(index, snapshot.meta.term) {
            // We hold the snapshot's last entry: keep our log, commit up to it (RAFT-NOTES #16).
            self.log.commit_to(index);
        } else {
            self.membership.restore(snapshot.meta.conf.clone(), index);
            self.log.restore_snapshot(snapshot);
            // Whatever log the snapshot left (none, as restore_snapshot is only reached
            // without a matching entry) holds configurations too.
            if self.log.last_index() > index {
                self.appended_from(index + 1);
            }
        }
        self.send_after_persist(from, success_response(index));
    }

    /// The answer to an AppendEntries or InstallSnapshot (§5.3, §7).
    fn handle_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        index: u64,
        conflict_term: u64,
        conflict_index: u64,
    ) {
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.recently_active = true;
        if success {
            if pr.update_match(index) {
                match pr.state {
                    ProgressState::Probe => pr.become_replicate(),
                    ProgressState::Snapshot { index: snapshot_index } if pr.match_index >= snapshot_index => {
                        pr.become_replicate()
                    }
                    ProgressState::Replicate => pr.inflights.free_to(index),
                    ProgressState::Snapshot { .. } => {}
                }
                self.maybe_commit();
                if self.role != Role::Leader {
                    return; // it committed its own removal and stepped down (thesis §4.2.2)
                }
                if self.transfer_target == Some(from)
                    && self.progress[&from].match_index == self.log.last_index()
                {
                    self.send_now(from, MessageBody::TimeoutNow);
                }
            } else if pr.state == ProgressState::Replicate {
                pr.inflights.free_to(index);
            }
            self.replication_wanted = true;
            return;
        }
        // Fast back-off: skip past the follower's whole conflicting term.
        let hint = if conflict_term == 0 {
            conflict_index
        } else {
            let i = self.log.last_index_with_term_at_most(conflict_term, index);
            if self.log.term(i) == Some(conflict_term) {
                i + 1
            } else {
                conflict_index
            }
        };
        let pr = self.progress.get_mut(&from).expect("checked above");
        let was_replicate = pr.state == ProgressState::Replicate;
        if pr.maybe_decrease_to(index, hint) {
            if was_replicate {
                pr.state = ProgressState::Probe;
                pr.probe_sent = false;
                pr.inflights.clear();
            }
            self.replication_wanted = true;
        }
    }

    /// The answer to a heartbeat: liveness, and an acknowledgement of read round `context`.
    fn handle_heartbeat_response(&mut self, from: NodeId, context: u64) {
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.recently_active = true;
        pr.read_round_acked = pr.read_round_acked.max(context);
        pr.probe_sent = false;
        if pr.state == ProgressState::Replicate && pr.inflights.is_full() {
            pr.inflights.free_first();
        }
        if pr.match_index < self.log.last_index() {
            // The follower lags: entries or their answers may have been lost. An
            // append now (empty if everything is in flight) draws a rejection that
            // resets it to probing, so replication resumes.
            self.send_append(from, true);
        }
        self.release_confirmed_reads();
    }

    // ---------------------------------------------------------------- replication

    /// Appends a command to the leader's log; returns the entry's (term, index). The
    /// command succeeded when an entry with that index *and term* is committed.
    pub fn propose(&mut self, data: Bytes) -> Result<(u64, u64), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader: self.leader });
        }
        if self.transfer_target.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        let index = self.log.last_index() + 1;
        self.log.append_new(Entry { term: self.term, index, kind: EntryKind::Normal, data });
        self.replication_wanted = true;
        Ok((self.term, index))
    }

    // ---------------------------------------------------------------- membership

    /// Proposes a single-server configuration change (thesis §4.1); returns the entry's
    /// (term, index). It takes effect as soon as it is appended, here and on each
    /// follower; it succeeded when an entry with that index and term is committed.
    ///
    /// Refused, changing nothing, unless: this node leads and no leadership transfer is
    /// in progress; it has committed an entry of its own term (the 2015 correction: an
    /// uncommitted change of an earlier leader it does not know of could otherwise still
    /// commit); no earlier change is uncommitted (on election, everything up to the last
    /// index counts as one, RAFT-NOTES #19); the change applies (AddLearner of a
    /// non-member, Promote of a learner, Remove of a member other than the last voter);
    /// a promoted learner holds entries, answers, and its match index is within
    /// `Config::promote_margin_entries` of the last index (thesis §4.2.1); and, when the voters change (not for adding or
    /// removing a learner), a majority of the new configuration's voters is reachable:
    /// the leader itself if it stays a voter, and those that answered within the last
    /// one or two election timeouts (the check-quorum activity, kept one round longer so
    /// a fresh round does not read as silence). Removing a dead member only shrinks the
    /// set, and so passes whenever the cluster has a reachable quorum at all.
    pub fn propose_conf_change(&mut self, change: ConfChange) -> Result<(u64, u64), ConfChangeError> {
        if self.role != Role::Leader {
            return Err(ConfChangeError::NotLeader { leader: self.leader });
        }
        if self.transfer_target.is_some() {
            return Err(ConfChangeError::TransferInProgress);
        }
        if change.node == 0 {
            return Err(ConfChangeError::ZeroNode);
        }
        if change.context.len() > MAX_CONTEXT_BYTES {
            let (kind, len) = (change.kind, change.context.len());
            return Err(ConfChangeError::ContextTooLarge { kind, len, max: MAX_CONTEXT_BYTES });
        }
        if !self.committed_in_current_term() && !self.planted_conf_change_before_commit_in_term() {
            return Err(ConfChangeError::NotCommittedInTerm);
        }
        if self.pending_conf_index > self.log.committed && !self.planted_conf_change_while_pending() {
            return Err(ConfChangeError::ChangePending { index: self.pending_conf_index });
        }
        let node = change.node;
        let conf = self.conf();
        match change.kind {
            ConfChangeKind::AddLearner if conf.is_member(node) => {
                return Err(ConfChangeError::AlreadyMember { node })
            }
            ConfChangeKind::Promote if !conf.is_learner(node) => {
                return Err(ConfChangeError::NotALearner { node })
            }
            ConfChangeKind::Promote => {
                let match_index = self.progress.get(&node).map_or(0, |pr| pr.match_index);
                let last_index = self.log.last_index();
                // A learner that never answered has caught up with nothing, however
                // short the log: it must hold entries and be answering now.
                if match_index == 0
                    || !self.is_reachable(node)
                    || last_index.saturating_sub(match_index) > self.config.promote_margin_entries
                {
                    return Err(ConfChangeError::LearnerNotCaughtUp { match_index, last_index });
                }
            }
            ConfChangeKind::Remove if !conf.is_member(node) => {
                return Err(ConfChangeError::NotAMember { node })
            }
            ConfChangeKind::Remove if conf.voters == [node] => {
                return Err(ConfChangeError::LastVoter { node })
            }
            _ => {}
        }
        let next = change.apply_to(conf).expect("checked above that the change applies");
        if next.voters != conf.voters {
            let reachable = next.voters.iter().filter(|&&v| self.is_reachable(v)).count();
            let needed = majority(next.voters.len());
            if reachable < needed {
                return Err(ConfChangeError::WouldLoseQuorum { kind: change.kind.name(), reachable, needed });
            }
        }
        let index = self.log.last_index() + 1;
        let data = change.encode();
        let changed = self.membership.append(index, &data);
        assert!(changed, "node {} term {}: checked change {change:?} changed nothing", self.id, self.term);
        self.log.append_new(Entry { term: self.term, index, kind: EntryKind::Config, data });
        self.pending_conf_index = index;
        if change.kind == ConfChangeKind::Remove && node != self.id {
            self.departing = Some((node, index));
        }
        self.replication_wanted = true;
        self.on_leader_conf_change();
        Ok((self.term, index))
    }

    /// Leader only: `id` is this node, or answered within the last one or two election timeouts.
    fn is_reachable(&self, id: NodeId) -> bool {
        id == self.id
            || self.progress.get(&id).is_some_and(|pr| pr.recently_active || pr.active_in_previous_round)
    }

    /// Entries from `first` on were appended to a follower's log, after truncating any
    /// suffix there: the configurations follow (thesis §4.1, RAFT-NOTES #20).
    fn appended_from(&mut self, first: u64) {
        self.membership.truncate_from(first);
        for index in first..=self.log.last_index() {
            let entry = self.log.entry(index).expect("appended entry within log");
            if entry.kind == EntryKind::Config {
                let data = entry.data.clone();
                self.membership.append(index, &data);
            }
        }
    }

    /// Leader only: track exactly the other members, and a departing follower. A new
    /// member starts probing at the last index + 1.
    fn sync_progress(&mut self) {
        let departing = self.departing.map(|(node, _)| node);
        let mut members: Vec<NodeId> =
            self.conf().members().chain(departing).filter(|&m| m != self.id).collect();
        members.sort_unstable();
        self.progress.retain(|id, _| members.binary_search(id).is_ok());
        let next = self.log.last_index() + 1;
        for member in members {
            self.progress.entry(member).or_insert_with(|| {
                Progress::new(next, self.config.max_inflight_messages, self.config.max_inflight_bytes)
            });
        }
    }

    /// Leader only: the configuration changed. The quorum may have shrunk, so commits
    /// and reads may be released.
    fn on_leader_conf_change(&mut self) {
        self.sync_progress();
        if self.transfer_target.is_some_and(|t| !self.conf().is_voter(t)) {
            self.transfer_target = None;
        }
        self.maybe_commit();
        if self.role == Role::Leader {
            self.release_confirmed_reads();
        }
    }

    /// At the end of a check-quorum round: a departing follower whose removal committed
    /// has had the commit index in appends and heartbeats for a while; stop tracking it.
    fn release_departing(&mut self) {
        if self.departing.is_some_and(|(_, index)| index <= self.log.committed) {
            self.departing = None;
            self.sync_progress();
        }
    }

    fn is_departing(&self, id: NodeId) -> bool {
        self.role == Role::Leader && self.departing.is_some_and(|(node, _)| node == id)
    }

    /// Thesis §4.2.2: a leader whose removal committed steps down. It first tells the
    /// followers the new commit index, and hands leadership to an up-to-date voter if
    /// there is one, so the cluster need not wait an election timeout.
    fn step_down_removed(&mut self) {
        self.flush_replication();
        let last_index = self.log.last_index();
        let successor = self
            .progress
            .iter()
            .filter(|(id, pr)| self.conf().is_voter(**id) && pr.match_index == last_index)
            .map(|(id, _)| *id)
            .next();
        if let Some(successor) = successor {
            self.send_now(successor, MessageBody::TimeoutNow);
        }
        let term = self.term;
        self.become_follower(term, None);
    }

    /// §5.4.2: commit the highest index a majority holds, but only by counting
    /// replicas of an entry of the current term; earlier ones commit with it (Figure 8).
    /// The leader counts itself only up to what it has made durable (thesis §10.2.1).
    fn maybe_commit(&mut self) {
        // Thesis §4.2.2: a leader that is not in its own configuration does not count itself.
        let mut matched: Vec<u64> = self
            .conf()
            .voters
            .iter()
            .map(|v| if *v == self.id { self.log.stable_index() } else { self.progress[v].match_index })
            .collect();
        let index = quorum_value(&mut matched);
        if index <= self.log.committed {
            return;
        }
        if self.log.term(index) == Some(self.term) || self.planted_commit_earlier_term() {
            self.log.commit_to(index);
            self.commit_changed = true;
            self.replication_wanted = true;
            self.serve_reads_waiting_for_commit();
            if self.is_removed() {
                self.step_down_removed();
            }
        }
    }

    /// Sends what each follower is ready for: pipelined batches in Replicate, one
    /// probe in Probe, a snapshot where the entries are compacted.
    fn flush_replication(&mut self) {
        if self.role != Role::Leader || !self.replication_wanted {
            return;
        }
        self.replication_wanted = false;
        let send_empty = std::mem::take(&mut self.commit_changed);
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.send_append(peer, send_empty);
        }
    }

    fn send_append(&mut self, peer: NodeId, send_empty: bool) {
        let mut sent_any = false;
        loop {
            let pr = &self.progress[&peer];
            if pr.is_paused() {
                return;
            }
            let next = pr.next_index;
            let prev = next - 1;
            let prev_term = match self.log.term(prev) {
                Some(term) if next >= self.log.first_index() => term,
                _ => {
                    self.send_snapshot(peer);
                    return;
                }
            };
            let entries = if next <= self.log.last_index() {
                self.log.slice(next, self.log.last_index(), self.config.max_message_bytes)
            } else {
                Vec::new()
            };
            if entries.is_empty() && (sent_any || !send_empty) && pr.state == ProgressState::Replicate {
                return;
            }
            let count = entries.len();
            let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
            let last = prev + count as u64;
            let body = MessageBody::AppendEntries {
                prev_log_index: prev,
                prev_log_term: prev_term,
                entries,
                leader_commit: self.log.committed,
            };
            self.send_now(peer, body);
            sent_any = true;
            let pr = self.progress.get_mut(&peer).expect("peer exists");
            pr.sent_entries(last, bytes, count);
            if pr.state != ProgressState::Replicate || count == 0 {
                return;
            }
        }
    }

    fn send_snapshot(&mut self, peer: NodeId) {
        let meta = self.log.snapshot_meta().clone();
        let index = meta.index;
        self.send_now(peer, MessageBody::InstallSnapshot { snapshot: Snapshot { meta, data: Bytes::new() } });
        self.progress.get_mut(&peer).expect("peer exists").become_snapshot(index);
    }

    fn broadcast_heartbeat(&mut self) {
        let context = self.read_only.round();
        let targets: Vec<(NodeId, u64)> =
            self.progress.iter().map(|(id, pr)| (*id, pr.match_index.min(self.log.committed))).collect();
        for (peer, commit) in targets {
            self.send_now(peer, MessageBody::Heartbeat { commit, context });
        }
    }

    // ---------------------------------------------------------------- reads

    /// Asks for a linearizable read; a `ReadState` with this context comes out in a
    /// later Ready (or never, if leadership is lost: callers time out).
    pub fn read_index(&mut self, context: u64) -> Result<(), ReadIndexError> {
        match (self.role, self.leader) {
            (Role::Leader, _) => {
                self.leader_read_index(context, self.id);
                Ok(())
            }
            (_, Some(leader)) => {
                self.send_now(leader, MessageBody::ReadIndex { context });
                Ok(())
            }
            (_, None) => Err(ReadIndexError::NoLeader),
        }
    }

    /// Thesis §6.4: the commit index is only trusted once an entry of this term has
    /// committed; then it is recorded and confirmed by a majority heartbeat round.
    fn leader_read_index(&mut self, context: u64, from: NodeId) {
        if !self.committed_in_current_term() {
            self.reads_waiting_for_commit.push((context, from));
            return;
        }
        let index = self.log.committed;
        if self.is_single_voter() || self.planted_read_without_heartbeat() {
            self.answer_read(context, from, index);
            return;
        }
        self.read_only.add(context, from, index);
    }

    /// Whether an entry of the current term is committed. A new leader's commit index
    /// may be stale until it is (thesis §6.4): what it has applied may miss entries that
    /// an earlier leader committed.
    pub fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.committed) == Some(self.term)
    }

    fn serve_reads_waiting_for_commit(&mut self) {
        if self.reads_waiting_for_commit.is_empty() || !self.committed_in_current_term() {
            return;
        }
        for (context, from) in std::mem::take(&mut self.reads_waiting_for_commit) {
            self.leader_read_index(context, from);
        }
    }

    fn release_confirmed_reads(&mut self) {
        if self.read_only.is_empty() {
            return;
        }
        let mut acked: Vec<u64> = self
            .conf()
            .voters
            .iter()
            .map(|v| if *v == self.id { self.read_only.round() } else { self.progress[v].read_round_acked })
            .collect();
        let confirmed = quorum_value(&mut acked);
        for read in self.read_only.confirm(confirmed) {
            self.answer_read(read.context, read.from, read.index);
        }
    }

    fn answer_read(&mut self, context: u64, from: NodeId, index: u64) {
        if from == self.id {
            self.read_states.push(ReadState { context, index });
        } else {
            self.send_now(from, MessageBody::ReadIndexResponse { context, index });
        }
    }

    // ---------------------------------------------------------------- transfer and compaction

    /// Hands leadership to `to` (thesis §3.10): bring it up to date, then send
    /// TimeoutNow. Proposals are refused meanwhile; the transfer is abandoned after
    /// an election timeout.
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader { leader: self.leader });
        }
        if to == self.id || !self.conf().is_voter(to) || !self.progress.contains_key(&to) {
            return Err(TransferError::InvalidTarget(to));
        }
        if self.transfer_target == Some(to) {
            return Ok(());
        }
        self.transfer_target = Some(to);
        self.election_elapsed = 0;
        if self.progress[&to].match_index == self.log.last_index() {
            self.send_now(to, MessageBody::TimeoutNow);
        } else {
            self.replication_wanted = true;
        }
        Ok(())
    }

    /// Says a snapshot of the state machine up to `index` is durable: the log up to it
    /// may be dropped. Returns the snapshot's metadata. Refused unless `index` is
    /// applied and within this node's durable log (persisted and advanced): with early
    /// apply (`take_committed_entries`) applied may pass what this node has written,
    /// and dropping entries its storage never held leaves the storage's log ending
    /// before the snapshot.
    pub fn compact(&mut self, index: u64) -> Result<SnapshotMeta, CompactError> {
        let meta = self.snapshot_meta(index)?;
        let conf = self.membership.at(index).clone();
        let compacted = self.log.compact(index, conf);
        self.membership.compact_to(index);
        assert_eq!(compacted, meta, "node {} term {}: compaction's snapshot metadata", self.id, self.term);
        Ok(compacted)
    }

    /// The metadata a snapshot at `index` would have, refused as `compact` refuses it:
    /// a snapshot may be built before the log is compacted to it (the driver serialises
    /// the state machine off its loop, then compacts).
    pub fn snapshot_meta(&self, index: u64) -> Result<SnapshotMeta, CompactError> {
        if index > self.log.applied {
            return Err(CompactError::NotApplied { index, applied: self.log.applied });
        }
        let stable = self.log.stable_index();
        if index > stable && !self.planted_compact_past_stable() {
            return Err(CompactError::NotDurable { index, stable });
        }
        let snapshot_index = self.log.snapshot_meta().index;
        if index <= snapshot_index {
            return Err(CompactError::AlreadyCompacted { snapshot_index });
        }
        Ok(self.log.meta_at(index, self.membership.at(index).clone()))
    }

    // ---------------------------------------------------------------- ready

    fn send_now(&mut self, to: NodeId, body: MessageBody) {
        self.messages.push(Message { from: self.id, to, term: self.term, body });
    }

    fn send_after_persist(&mut self, to: NodeId, body: MessageBody) {
        self.persisted_messages.push(Message { from: self.id, to, term: self.term, body });
    }

    /// True when `ready` would return something.
    pub fn has_ready(&self) -> bool {
        if self.ready_outstanding {
            return false;
        }
        self.soft_state() != self.last_soft_state
            || self.hard_state() != self.last_hard_state
            || self.log.has_unstable()
            || self.log.pending_snapshot.is_some()
            || !self.messages.is_empty()
            || !self.persisted_messages.is_empty()
            || self.log.has_committed_to_apply()
            || !self.read_states.is_empty()
            || (self.role == Role::Leader && (self.replication_wanted || self.read_only.round_wanted()))
    }

    /// Takes what needs doing. See `Ready` for the order. Panics if the previous
    /// Ready has not been advanced.
    pub fn ready(&mut self) -> Ready {
        assert!(!self.ready_outstanding, "node {} term {}: ready() before advance()", self.id, self.term);
        let messages = self.take_messages();
        let soft = self.soft_state();
        let soft_state = (soft != self.last_soft_state).then_some(soft);
        self.last_soft_state = soft;
        let hard = self.hard_state();
        let previous_hard = self.last_hard_state;
        let hard_state = (hard != previous_hard).then_some(hard);
        self.last_hard_state = hard;
        let snapshot = self.log.pending_snapshot.take();
        let entries = self.log.take_unstable();
        let committed_entries = self.log.take_committed(self.config.max_apply_bytes);
        let must_sync = hard.term != previous_hard.term
            || hard.vote != previous_hard.vote
            || !entries.is_empty()
            || snapshot.is_some();
        self.ready_outstanding = true;
        self.apply_outstanding = snapshot.is_some() || !committed_entries.is_empty();
        Ready {
            soft_state,
            hard_state,
            snapshot,
            entries,
            messages,
            persisted_messages: std::mem::take(&mut self.persisted_messages),
            committed_entries,
            read_states: std::mem::take(&mut self.read_states),
            must_sync,
        }
    }

    /// Takes only the messages that may be sent at once (a leader's replication and
    /// heartbeats, pre-votes, heartbeat answers), flushing pending replication first.
    /// Callable while a Ready is outstanding: a leader keeps replicating new entries to
    /// its followers while its own write of the previous batch is still in progress
    /// (thesis §10.2.1), and ReadIndex rounds do not wait for the disk.
    pub fn take_messages(&mut self) -> Vec<Message> {
        if self.role == Role::Leader {
            self.flush_replication();
            if self.read_only.round_wanted() {
                self.read_only.start_round();
                self.broadcast_heartbeat();
            }
        }
        std::mem::take(&mut self.messages)
    }

    /// Takes committed entries to apply now, while a Ready is outstanding: an entry
    /// committed by a majority need not wait for this node's own write in progress.
    /// Apply them in order, then call `applied_to` with the last one's index. Empty
    /// while the outstanding Ready carries a snapshot or committed entries of its own,
    /// which must be installed and applied first.
    pub fn take_committed_entries(&mut self) -> Vec<Entry> {
        if self.apply_outstanding || self.log.pending_snapshot.is_some() {
            return Vec::new();
        }
        self.log.take_committed(self.config.max_apply_bytes)
    }

    /// Says the entries taken by `take_committed_entries` up to `index` are applied.
    pub fn applied_to(&mut self, index: u64) {
        self.log.applied_to(index);
    }

    /// Says the last Ready has been fully handled: persisted, sent and applied.
    pub fn advance(&mut self) {
        assert!(self.ready_outstanding, "node {} term {}: advance() without ready()", self.id, self.term);
        self.ready_outstanding = false;
        self.apply_outstanding = false;
        self.log.advance();
        if self.role == Role::Leader {
            // Our own write is durable now: it counts toward commitment.
            self.maybe_commit();
        }
    }

    // ---------------------------------------------------------------- planted bugs

    #[cfg(feature = "planted-bugs")]
    fn planted_vote_without_log_check(&self) -> bool {
        self.config.planted_bugs.vote_without_log_check
    }
    #[cfg(not(feature = "planted-bugs"))]
    fn planted_vote_without_log_check(&self) -> bool {
        false
    }
    #[cfg(feature = "planted-bugs")]
    fn planted_commit_earlier_term(&self) -> bool {
        self.config.planted_bugs.commit_earlier_term_by_counting
    }
    #[cfg(not(feature = "planted-bugs"))]
    fn planted_commit_earlier_term(&self) -> bool {
        false
    }
    #[cfg(feature = "planted-bugs")]
    fn planted_vote_before_persist(&self) -> bool {
        self.config.planted_bugs.vote_before_persist
    }
    #[cfg(not(feature = "planted-bugs"))]
    fn planted_vote_before_persist(&self) -> bool {
        false
    }
    #[cfg(feature = "planted-bugs")]
    fn planted_read_without_heartbeat(&self) -> bool {
        self.config.planted_bugs.read_index_without_heartbeat
    }
    #[cfg(not(feature = "planted-bugs"))]
    fn planted_read_without_heartbeat(&self) -> bool {
        false
    }
    #[cfg(feature = "planted-bugs")]
    fn planted_conf_change_before_commit_in_term(&self) -> bool {
        self.config.planted_bugs.conf_change_before_commit_in_term
    }
    #[cfg(not(feature = "planted-bugs"))]
    fn planted_conf_change_before_commit_in_term(&self) -> bool {
        false
    }
    #[cfg(feature = "planted-bugs")]
    fn planted_conf_change_while_pending(&self) -> bool {
        self.config.planted_bugs.conf_change_while_pending
    }
    #[cfg(not(feature = "planted-bugs"))]
    fn planted_conf_change_while_pending(&self) -> bool {
        false
    }
    #[cfg(feature = "planted-bugs")]
    fn planted_compact_past_stable(&self) -> bool {
        self.config.planted_bugs.compact_past_stable
    }
    #[cfg(not(feature = "planted-bugs"))]
    fn planted_compact_past_stable(&self) -> bool {
        false
    }
}

/// Which round of an election to start.
#[derive(Clone, Copy, Debug)]
enum Election {
    /// Thesis §9.6: ask without changing terms.
    PreVote,
    /// §5.2; `transfer` when it follows TimeoutNow (thesis §3.10).
    Real { transfer: bool },
}

fn success_response(index: u64) -> MessageBody {
    MessageBody::AppendEntriesResponse { success: true, index, conflict_term: 0, conflict_index: 0 }
}
