//! The driver core on its own, one node at a time: what a peer, a full disk or a
//! snapshot does to it. The randomized evidence is the cluster simulator
//! (`tests/simulation.rs`), which runs this core on every simulated node.

use super::*;
use crate::raft::{ConfState, Config, InitialState};

fn core_with(id: NodeId, voters: &[NodeId]) -> DriverCore {
    core_configured(id, voters, DriverConfig::default())
}

fn core_configured(id: NodeId, voters: &[NodeId], driver: DriverConfig) -> DriverCore {
    let mut config = Config::new(id);
    config.election_ticks = 10;
    config.heartbeat_ticks = 1;
    let initial = InitialState {
        hard_state: HardState::default(),
        snapshot: SnapshotMeta { index: 0, term: 0, conf: ConfState::with_voters(voters.to_vec()) },
        entries: Vec::new(),
    };
    let raft = Raft::new(config, initial).expect("a fresh node");
    let kv = Arc::new(RwLock::new(StateMachine::new()));
    let config = DriverConfig { retry_initial_ticks: 2, retry_max_ticks: 8, ..driver };
    DriverCore::new(raft, kv, None, config)
}

/// A one-node cluster that has elected itself and applied its no-op.
fn leader() -> DriverCore {
    let mut core = core_with(1, &[1]);
    core.raft.campaign();
    settle(&mut core);
    assert_eq!(core.raft().role(), Role::Leader);
    core
}

/// Polls and reports every write as durable until nothing is left to do; returns the
/// answers given.
fn settle(core: &mut DriverCore) -> Vec<(Token, Answer)> {
    let mut answers = Vec::new();
    for _ in 0..100 {
        core.poll();
        let actions = core.take_actions();
        if actions.is_empty() {
            return answers;
        }
        let mut writes = 0;
        for action in actions {
            match action {
                Action::BuildSnapshot { meta, machine } => {
                    core.snapshot_built(meta, Ok(serialized(&machine)))
                }
                Action::Persist(_) => writes += 1,
                Action::SaveSnapshot { meta, .. } => core.snapshot_saved(Ok(meta)),
                Action::Answer(token, answer) => answers.push((token, answer)),
                _ => {}
            }
        }
        for _ in 0..writes {
            core.persisted(Ok(()));
        }
    }
    panic!("the core did not settle");
}

fn put(key: &str) -> Bytes {
    Command::put(key.to_owned(), "v").encode()
}

fn install_snapshot(from: NodeId, to: NodeId, term: u64, index: u64, data: Bytes) -> Message {
    let meta = SnapshotMeta { index, term, conf: ConfState::with_voters(vec![1, 2, 3]) };
    Message { from, to, term, body: MessageBody::InstallSnapshot { snapshot: Snapshot { meta, data } } }
}

fn snapshot_data(index: u64) -> Bytes {
    let mut machine = StateMachine::new();
    machine.apply(index, &Command::put("k", "from the leader"));
    let mut data = Vec::new();
    machine.write_snapshot(&mut data).unwrap();
    Bytes::from(data)
}

fn serialized(machine: &StateMachine) -> Bytes {
    let mut data = Vec::new();
    machine.write_snapshot(&mut data).unwrap();
    Bytes::from(data)
}

fn persist_jobs(actions: &[Action]) -> Vec<PersistJob> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Persist(job) => Some(job.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_snapshot_whose_data_does_not_decode_is_refused_and_never_persisted() {
    let mut core = core_with(2, &[1, 2, 3]);
    core.step(vec![install_snapshot(1, 2, 1, 10, Bytes::from_static(b"not a snapshot"))]);
    core.poll();
    let actions = core.take_actions();
    assert!(
        actions.iter().any(|a| matches!(a, Action::Refused { from: 1, kind: "InstallSnapshot", .. })),
        "{actions:?}"
    );
    assert!(
        persist_jobs(&actions).iter().all(|job| job.snapshot.is_none()),
        "a snapshot that does not decode reached the disk: {actions:?}"
    );
    assert_eq!(core.raft().commit_index(), 0, "the Raft core saw it");
}

#[test]
fn a_snapshot_that_decodes_is_persisted_then_installed() {
    let mut core = core_with(2, &[1, 2, 3]);
    core.step(vec![install_snapshot(1, 2, 1, 10, snapshot_data(10))]);
    core.poll();
    let actions = core.take_actions();
    assert!(persist_jobs(&actions).iter().any(|job| job.snapshot.is_some()), "{actions:?}");
    assert_eq!(core.kv().read().unwrap().applied_index(), 0, "installed before it was durable");
    core.persisted(Ok(()));
    let actions = core.take_actions();
    assert!(actions.iter().any(|a| matches!(a, Action::InstalledSnapshot(_))), "{actions:?}");
    let kv = core.kv().read().unwrap();
    assert_eq!(kv.applied_index(), 10);
    assert_eq!(kv.get(b"k").unwrap().data, Bytes::from_static(b"from the leader"));
}

#[test]
fn a_decoded_snapshot_is_reused_only_for_the_bytes_it_was_decoded_from() {
    let mut core = core_with(2, &[1, 2, 3]);
    core.step(vec![install_snapshot(1, 2, 1, 10, snapshot_data(10))]);
    core.take_actions();
    core.step(vec![install_snapshot(1, 2, 1, 10, Bytes::from_static(b"garbage"))]);
    let actions = core.take_actions();
    assert!(actions.iter().any(|a| matches!(a, Action::Refused { .. })), "{actions:?}");
}

fn append(term: u64, prev: u64, entries: &[u64], commit: u64) -> Message {
    let entries = entries
        .iter()
        .map(|&index| Entry { term, index, kind: EntryKind::Normal, data: put(&format!("k{index}")) })
        .collect();
    let prev_log_term = if prev == 0 { 0 } else { term };
    let body =
        MessageBody::AppendEntries { prev_log_index: prev, prev_log_term, entries, leader_commit: commit };
    Message { from: 1, to: 2, term, body }
}

/// Entries a majority committed apply before this node's own write of them is
/// durable (thesis §10.2.1); a snapshot then must wait: compacting to the applied
/// index would drop entries this node never wrote ("snapshot at N beyond the log").
// Reference: §7 (a snapshot replaces only entries the server has stored).
#[test]
fn a_follower_never_compacts_past_its_durable_log() {
    follower_snapshot_during_early_apply(core_with(2, &[1, 2, 3]));
}

/// The test above fails when the fix is planted out of both the driver and the Raft
/// core (`Raft::compact` refuses an index past its stable index on its own): the
/// Raft log's own invariant then stops the node.
#[cfg(feature = "planted-bugs")]
#[test]
#[should_panic(expected = "index <= self.stable")]
fn a_follower_compacting_past_its_durable_log_is_caught() {
    let mut core = core_with(2, &[1, 2, 3]);
    core.config.planted_bugs.compact_past_stable = true;
    core.raft.config_mut().planted_bugs.compact_past_stable = true;
    follower_snapshot_during_early_apply(core);
}

/// With only the driver's check planted out, the Raft core still refuses.
#[cfg(feature = "planted-bugs")]
#[test]
fn the_raft_core_refuses_compaction_past_its_durable_log_on_its_own() {
    let mut core = core_with(2, &[1, 2, 3]);
    core.config.planted_bugs.compact_past_stable = true;
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| follower_snapshot_during_early_apply(core)));
    let message = result.expect_err("the snapshot answer is a refusal");
    let message = message.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("only 0 durable"), "{message}");
}

fn follower_snapshot_during_early_apply(mut core: DriverCore) {
    core.step(vec![append(1, 0, &[], 0)]);
    settle(&mut core);
    core.step(vec![append(1, 0, &[1, 2], 0)]);
    core.poll();
    let actions = core.take_actions();
    assert_eq!(persist_jobs(&actions).len(), 1, "entries 1 and 2 go to the disk: {actions:?}");
    // While that write is in flight, the leader says 1..=3 are committed.
    core.step(vec![append(1, 2, &[3], 3)]);
    core.poll();
    core.take_actions();
    assert_eq!(core.kv().read().unwrap().applied_index(), 3, "applied early");
    assert_eq!(core.raft().stable_index(), 0);
    core.snapshot(9);
    let mut answered = None;
    // Entries 1 and 2 are still with the disk. `durable` is what the disk holds, as the
    // test reports it (compaction itself must not be trusted to say).
    let mut outstanding = 1;
    let mut durable = 0;
    for _ in 0..10 {
        core.poll();
        for action in core.take_actions() {
            match action {
                Action::BuildSnapshot { meta, machine } => {
                    core.snapshot_built(meta, Ok(serialized(&machine)))
                }
                Action::SaveSnapshot { meta, .. } => {
                    assert!(
                        meta.index <= durable,
                        "snapshot at {} while only {durable} is durable",
                        meta.index
                    );
                    core.snapshot_saved(Ok(meta));
                }
                Action::Persist(_) => outstanding += 1,
                Action::Answer(9, answer) => answered = Some(answer),
                _ => {}
            }
        }
        if outstanding > 0 {
            outstanding -= 1;
            core.persisted(Ok(()));
            durable = core.raft().stable_index();
        }
    }
    assert!(matches!(answered, Some(Answer::Snapshot(Ok(ref meta))) if meta.index == 3), "{answered:?}");
}

#[test]
fn snapshots_are_taken_on_applied_bytes_as_well_as_entries() {
    let mut core = leader();
    core.config.snapshot_entries = 1_000_000;
    core.config.snapshot_bytes = 4096;
    core.propose(1, Command::put("big", vec![7u8; 5000]).encode());
    let mut saved = false;
    for _ in 0..10 {
        core.poll();
        for action in core.take_actions() {
            match action {
                Action::BuildSnapshot { meta, machine } => {
                    core.snapshot_built(meta, Ok(serialized(&machine)))
                }
                Action::Persist(_) => core.persisted(Ok(())),
                Action::SaveSnapshot { meta, .. } => {
                    saved = true;
                    core.snapshot_saved(Ok(meta));
                }
                _ => {}
            }
        }
    }
    assert!(saved, "5,000 bytes applied past a 4,096-byte limit and no snapshot");
}

#[test]
fn a_failed_snapshot_is_retried_after_a_back_off_not_on_every_ready() {
    let mut core = leader();
    core.config.snapshot_entries = 1;
    core.propose(1, put("a"));
    let mut saves = 0;
    for step in 0..40 {
        if step % 4 == 0 {
            core.tick();
        }
        core.propose(100 + step, put("b"));
        core.poll();
        for action in core.take_actions() {
            match action {
                Action::BuildSnapshot { meta, machine } => {
                    core.snapshot_built(meta, Ok(serialized(&machine)))
                }
                Action::Persist(_) => core.persisted(Ok(())),
                Action::SaveSnapshot { .. } => {
                    saves += 1;
                    core.snapshot_saved(Err(StorageFailure::Other("EIO on the snapshot file".into())));
                }
                _ => {}
            }
        }
    }
    // 10 ticks with back-off 2, 4, 8, 8: a handful of attempts, not one per Ready (40).
    assert!((1..=6).contains(&saves), "{saves} snapshot attempts");
}

#[test]
fn a_full_disk_refuses_writes_retries_the_write_and_resumes_once_space_is_freed() {
    let mut core = leader();
    core.propose(1, put("a"));
    core.poll();
    let job = persist_jobs(&core.take_actions()).pop().expect("a write");
    core.persisted(Err(StorageFailure::DiskFull("no space left on device".into())));
    let actions = core.take_actions();
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Answer(1, Answer::Proposal(Err(NodeError::OutcomeUnknown(_)))))),
        "a write already in the log may still commit: its outcome is unknown, {actions:?}"
    );
    assert!(core.disk_full().is_some());
    assert_eq!(core.raft().role(), Role::Follower, "a node that cannot persist must not lead");
    core.propose(2, put("b"));
    let actions = core.take_actions();
    assert!(
        actions.iter().any(|a| matches!(a, Action::Answer(2, Answer::Proposal(Err(NodeError::DiskFull(_)))))),
        "{actions:?}"
    );
    // The same write is handed out again after the back-off.
    let mut retried = None;
    for _ in 0..10 {
        core.tick();
        if let Some(job) = persist_jobs(&core.take_actions()).pop() {
            retried = Some(job);
            break;
        }
    }
    let retried = retried.expect("the write was not retried");
    assert_eq!(core.raft().role(), Role::Follower, "it campaigned while its disk was full");
    assert_eq!(retried.entries, job.entries);
    core.persisted(Ok(()));
    assert!(core.disk_full().is_none(), "space is back");
    for _ in 0..40 {
        core.tick();
        settle(&mut core);
    }
    assert_eq!(core.raft().role(), Role::Leader, "it campaigns again once space is back");
    core.propose(3, put("c"));
    let answers = settle(&mut core);
    assert!(answers.iter().any(|(t, a)| *t == 3 && matches!(a, Answer::Proposal(Ok(_)))), "{answers:?}");
}

#[test]
fn any_other_storage_failure_stops_the_node() {
    let mut core = leader();
    core.propose(1, put("a"));
    core.poll();
    core.take_actions();
    core.persisted(Err(StorageFailure::Other("EIO".into())));
    let actions = core.take_actions();
    assert!(actions.iter().any(|a| matches!(a, Action::Fatal(_))), "{actions:?}");
    core.tick();
    core.poll();
    core.propose(2, put("b"));
    let actions = core.take_actions();
    assert!(
        actions.iter().all(|a| matches!(a, Action::Answer(2, Answer::Proposal(Err(NodeError::Storage(_)))))),
        "a stopped node does nothing but refuse: {actions:?}"
    );
}

/// Takes the one `Action::BuildSnapshot` of a round, leaving the other actions.
fn take_build(actions: Vec<Action>) -> (SnapshotMeta, StateMachine) {
    let mut builds = actions.into_iter().filter_map(|action| match action {
        Action::BuildSnapshot { meta, machine } => Some((meta, machine)),
        _ => None,
    });
    let build = builds.next().expect("a snapshot to build");
    assert!(builds.next().is_none(), "two snapshots built at once");
    build
}

/// A snapshot is serialised from a frozen copy, off the loop: writes go on applying
/// while it is built, the copy does not see them, and the Raft log is compacted (and
/// the snapshot offered to followers) only once it is built.
#[test]
fn writes_apply_while_a_snapshot_is_built_and_the_log_is_compacted_only_after() {
    let mut core = leader();
    core.propose(1, put("a"));
    settle(&mut core);
    core.snapshot(7);
    core.poll();
    let (meta, machine) = take_build(core.take_actions());
    assert_eq!(machine.applied_index(), meta.index);
    for token in 10..20 {
        core.propose(token, put(&format!("later{token}")));
    }
    let answers = settle(&mut core);
    assert_eq!(answers.len(), 10, "writes wait for the snapshot being built: {answers:?}");
    assert!(core.kv().read().unwrap().get(b"later19").is_some());
    assert!(machine.get(b"later19").is_none(), "the frozen copy saw a later write");
    assert!(
        core.raft().snapshot_meta(meta.index).is_ok(),
        "the log was compacted before the snapshot was built"
    );
    core.snapshot_built(meta.clone(), Ok(serialized(&machine)));
    let actions = core.take_actions();
    let saved = actions.iter().find_map(|a| match a {
        Action::SaveSnapshot { meta, data } => Some((meta.clone(), data.clone())),
        _ => None,
    });
    let (saved_meta, data) = saved.expect("the built snapshot is saved");
    assert_eq!(saved_meta, meta);
    assert_eq!(StateMachine::load_snapshot(&data).unwrap(), machine);
    assert!(
        matches!(core.raft().snapshot_meta(meta.index), Err(CompactError::AlreadyCompacted { .. })),
        "the log is compacted once the snapshot is built"
    );
    core.snapshot_saved(Ok(meta.clone()));
    let actions = core.take_actions();
    assert!(
        actions.iter().any(|a| matches!(a, Action::Answer(7, Answer::Snapshot(Ok(m))) if *m == meta)),
        "{actions:?}"
    );
}

/// A follower building its own snapshot when the leader's arrives: the leader's wins,
/// the one being built is not saved over it, and the operator's request is answered.
#[test]
fn a_snapshot_being_built_when_the_leaders_is_installed_is_dropped() {
    let mut core = core_with(2, &[1, 2, 3]);
    core.step(vec![append(1, 0, &[], 0)]);
    settle(&mut core);
    core.step(vec![append(1, 0, &[1, 2, 3], 3)]);
    settle(&mut core);
    assert_eq!(core.kv().read().unwrap().applied_index(), 3);
    core.snapshot(9);
    core.poll();
    let (meta, machine) = take_build(core.take_actions());
    assert_eq!(meta.index, 3);
    core.step(vec![install_snapshot(1, 2, 1, 10, snapshot_data(10))]);
    settle(&mut core);
    assert_eq!(core.kv().read().unwrap().applied_index(), 10);
    core.snapshot_built(meta, Ok(serialized(&machine)));
    let actions = core.take_actions();
    assert!(!actions.iter().any(|a| matches!(a, Action::SaveSnapshot { .. })), "{actions:?}");
    assert!(
        actions.iter().any(|a| matches!(a, Action::Answer(9, Answer::Snapshot(Ok(m))) if m.index == 10)),
        "{actions:?}"
    );
}

/// The map a snapshot from the leader replaces is handed out to be freed off the loop.
#[test]
fn the_state_machine_a_snapshot_replaces_is_dropped_off_the_loop() {
    let mut core = core_with(2, &[1, 2, 3]);
    core.step(vec![install_snapshot(1, 2, 1, 10, snapshot_data(10))]);
    core.poll();
    core.take_actions();
    core.persisted(Ok(()));
    let actions = core.take_actions();
    assert!(
        actions.iter().any(|a| matches!(a, Action::DropOffLoop(old) if old.applied_index() == 0)),
        "{actions:?}"
    );
}

fn bootstrapped_leader() -> DriverCore {
    let mut core = core_with(1, &[1]);
    core.config.bootstrap = Some((0xc1, vec![(1, "10.0.0.1:3001".to_owned())]));
    core.raft.campaign();
    settle(&mut core);
    core.tick();
    settle(&mut core);
    core
}

/// The first leader records the cluster's random id and its members, once: a later
/// leader (or a later term) finds the record and proposes nothing.
#[test]
fn a_leader_records_the_bootstrap_once_with_its_random_cluster_id() {
    let mut core = bootstrapped_leader();
    {
        let kv = core.kv().read().unwrap();
        assert_eq!(kv.cluster().id(), 0xc1);
        assert_eq!(kv.cluster().members()[&1].address, "10.0.0.1:3001");
    }
    let applied = core.kv().read().unwrap().applied_index();
    for _ in 0..5 {
        core.tick();
        settle(&mut core);
    }
    assert_eq!(core.kv().read().unwrap().applied_index(), applied, "the bootstrap was proposed again");
}

/// A membership change goes through the log as a configuration entry: the Raft core's
/// configuration and the cluster record both change, and the caller gets the outcome.
// Reference: §4.1
#[test]
fn a_member_change_applies_to_the_configuration_and_the_cluster_record() {
    let mut core = bootstrapped_leader();
    let change =
        MemberChange::AddLearner { id: 9, address: "10.0.0.9:3001".into(), promote_when_caught_up: false };
    core.propose_member_change(5, change);
    let answers = settle(&mut core);
    let answer = answers.iter().find(|(token, _)| *token == 5).map(|(_, a)| a.clone());
    assert!(
        matches!(
            answer,
            Some(Answer::Proposal(Ok(Applied { outcome: Outcome::Cluster { applied: true }, .. })))
        ),
        "{answer:?}"
    );
    assert_eq!(core.raft().learners(), &[9]);
    let kv = core.kv().read().unwrap();
    assert_eq!(kv.cluster().members()[&9].role, crate::kv::MemberRole::Learner);
}

/// A change the cluster record refuses (an address another member has) is answered at
/// once and never reaches the log.
#[test]
fn a_member_change_the_cluster_record_refuses_never_reaches_the_log() {
    let mut core = bootstrapped_leader();
    let last = core.raft().last_index();
    let change =
        MemberChange::AddLearner { id: 9, address: "10.0.0.1:3001".into(), promote_when_caught_up: false };
    core.propose_member_change(5, change);
    let actions = core.take_actions();
    assert!(
        actions.iter().any(|a| matches!(a, Action::Answer(5, Answer::Proposal(Err(NodeError::Invalid(m)))) if m.contains("already has address"))),
        "{actions:?}"
    );
    assert_eq!(core.raft().last_index(), last);
}

/// A follower that applies its own committed removal stops for good.
// Reference: §4.2.2
#[test]
fn a_node_whose_removal_commits_is_told_to_stop() {
    let mut core = core_with(2, &[1, 2, 3]);
    core.step(vec![append(1, 0, &[], 0)]);
    settle(&mut core);
    let removal = ConfChange { kind: ConfChangeKind::Remove, node: 2, context: Bytes::new() };
    let entry = Entry { term: 1, index: 1, kind: EntryKind::Config, data: removal.encode() };
    let body = MessageBody::AppendEntries {
        prev_log_index: 0,
        prev_log_term: 0,
        entries: vec![entry],
        leader_commit: 0,
    };
    core.step(vec![Message { from: 1, to: 2, term: 1, body }]);
    settle(&mut core);
    let actions = core.take_actions();
    assert!(!actions.iter().any(|a| matches!(a, Action::Removed)), "removed before the removal committed");
    core.step(vec![append(1, 1, &[], 1)]);
    core.poll();
    let mut removed = false;
    for _ in 0..5 {
        for action in core.take_actions() {
            match action {
                Action::Removed => removed = true,
                Action::Persist(_) => core.persisted(Ok(())),
                _ => {}
            }
        }
        core.poll();
    }
    assert!(removed, "the committed removal did not stop the node");
}

fn ticks(core: &mut DriverCore, count: u64) {
    for _ in 0..count {
        core.tick();
        settle(core);
    }
}

fn join_answer(answers: &[(Token, Answer)], token: Token) -> Option<Result<Joined, NodeError>> {
    answers.iter().find(|(t, _)| *t == token).and_then(|(_, answer)| match answer {
        Answer::Join(result) => Some(result.clone()),
        _ => None,
    })
}

/// The leader records, through the log, every member it sees holding the log (itself
/// as soon as the bootstrap applies), so a
/// node with an empty data directory is never accepted back under that id.
// Reference: RAFT-NOTES #18
#[test]
fn a_leader_records_the_members_that_hold_the_log_and_probes_are_answered_from_it() {
    let fresh = core_with(1, &[1, 2, 3]);
    assert_eq!(fresh.probe_answer(2), crate::server::driver::start::ProbeAnswer::NoCluster);
    let core = bootstrapped_leader();
    // Recorded as soon as the bootstrap applies, not a promotion round later: a
    // single node's record settles before its first client write is acknowledged.
    assert!(core.config.promote_every_ticks > 1);
    assert!(core.kv().read().unwrap().cluster().members()[&1].started, "the leader holds the log");
    use crate::server::driver::start::ProbeAnswer;
    assert_eq!(core.probe_answer(1), ProbeAnswer::Member { cluster_id: 0xc1, started: true });
    assert_eq!(core.probe_answer(7), ProbeAnswer::NotMember { cluster_id: 0xc1 });
}

/// A joining node gets a fresh id as a learner, the cluster's id and the configuration
/// its empty log must start from; asking again before it held the log gets the same
/// id (join is idempotent); an address whose member held the log is refused.
// Reference: §4.2.1
#[test]
fn a_join_adds_a_learner_once_and_an_address_that_held_the_log_is_refused() {
    let mut core = bootstrapped_leader();
    let request = JoinRequest { address: "10.0.0.9:3001".into(), learner: false, candidate_id: 9 };
    core.join(5, request.clone());
    let joined = join_answer(&settle(&mut core), 5).expect("answered").expect("joined");
    assert_eq!((joined.id, joined.cluster_id), (9, 0xc1));
    assert_eq!(
        joined.base,
        ConfState::with_voters(vec![1]),
        "the log starts from the bootstrap configuration"
    );
    assert!(joined.members.contains(&(9, "10.0.0.9:3001".to_owned())));
    assert_eq!(core.raft().learners(), &[9]);

    core.join(6, JoinRequest { candidate_id: 10, ..request });
    let again = join_answer(&settle(&mut core), 6).expect("answered").expect("joined again");
    assert_eq!(again.id, 9, "a repeated join made a second member");
    assert_eq!(core.raft().learners(), &[9]);

    let every = core.config.promote_every_ticks;
    ticks(&mut core, every);
    let taken = JoinRequest { address: "10.0.0.1:3001".into(), learner: false, candidate_id: 11 };
    core.join(7, taken);
    match join_answer(&settle(&mut core), 7) {
        Some(Err(NodeError::Invalid(reason))) => {
            assert!(reason.contains("0000000000000001") && reason.contains("remove it first"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A removed id never comes back: its messages are refused.
// Reference: §4.2.3
#[test]
fn messages_from_a_removed_id_are_refused() {
    let mut core = bootstrapped_leader();
    let add =
        MemberChange::AddLearner { id: 9, address: "10.0.0.9:3001".into(), promote_when_caught_up: false };
    core.propose_member_change(5, add);
    settle(&mut core);
    core.propose_member_change(6, MemberChange::Remove { id: 9 });
    settle(&mut core);
    assert!(core.kv().read().unwrap().cluster().is_removed(9));
    // A removed node that believes it leads a later term: the Raft core alone would
    // follow it (a leader it does not know may be newer than its configuration, §4.1).
    let term = core.raft().term();
    let mut heartbeat = append(term + 1, 0, &[], 0);
    (heartbeat.from, heartbeat.to) = (9, 1);
    core.step(vec![heartbeat]);
    let actions = core.take_actions();
    assert!(actions.iter().any(|a| matches!(a, Action::Refused { from: 9, .. })), "{actions:?}");
    assert_eq!(core.raft().term(), term, "a removed node's message moved the term");
    assert_eq!(core.raft().role(), Role::Leader);
}

/// A new leader answers a join only once its cluster record holds everything committed:
/// before it has committed an entry of its term, its record may miss a removal an
/// earlier leader committed, and it would hand out the removed id again (the
/// simulator's membership runs found a replacement given its dead predecessor's id).
// Reference: thesis §6.4 (a new leader's commit index may be stale), §4.2.3.
#[test]
fn a_new_leader_answers_joins_only_from_a_record_that_is_up_to_date() {
    let mut core = core_with(2, &[1, 2]);
    let bootstrap = Command::Bootstrap {
        cluster_id: 0xc1,
        members: vec![(1, "10.0.0.1:3001".to_owned()), (2, "10.0.0.2:3001".to_owned())],
    };
    let add = ConfChange {
        kind: ConfChangeKind::AddLearner,
        node: 9,
        context: member_context("10.0.0.9:3001", true),
    };
    let remove = ConfChange { kind: ConfChangeKind::Remove, node: 9, context: Bytes::new() };
    let entries = vec![
        Entry { term: 1, index: 1, kind: EntryKind::Normal, data: bootstrap.encode() },
        Entry { term: 1, index: 2, kind: EntryKind::Config, data: add.encode() },
        Entry { term: 1, index: 3, kind: EntryKind::Config, data: remove.encode() },
    ];
    // Node 1 led term 1; node 2 learns that 1 and 2 are committed, not 3 (the removal,
    // which node 1 committed with node 2's acknowledgement just before it failed).
    let body = MessageBody::AppendEntries { prev_log_index: 0, prev_log_term: 0, entries, leader_commit: 2 };
    core.step(vec![Message { from: 1, to: 2, term: 1, body }]);
    settle(&mut core);
    assert!(core.kv().read().unwrap().cluster().members().contains_key(&9));
    // Node 2 wins term 2.
    core.raft.config_mut().pre_vote = false;
    core.raft.campaign();
    settle(&mut core);
    let granted = MessageBody::RequestVoteResponse { pre_vote: false, granted: true };
    core.step(vec![Message { from: 1, to: 2, term: 2, body: granted }]);
    settle(&mut core);
    assert_eq!(core.raft().role(), Role::Leader);

    let join = JoinRequest { address: "10.0.0.9:3001".into(), learner: false, candidate_id: 77 };
    core.join(5, join.clone());
    let answers = settle(&mut core);
    assert_eq!(
        answers.iter().find(|(token, _)| *token == 5).map(|(_, answer)| answer.clone()),
        Some(Answer::Join(Err(NodeError::NoLeader))),
        "answered from a record that does not hold the committed removal"
    );
    // Node 1 acknowledges the leader's no-op: the removal applies, the address is free.
    let last = core.raft().last_index();
    let ack = MessageBody::AppendEntriesResponse {
        success: true,
        index: last,
        conflict_term: 0,
        conflict_index: 0,
    };
    core.step(vec![Message { from: 1, to: 2, term: 2, body: ack }]);
    settle(&mut core);
    assert!(core.kv().read().unwrap().cluster().is_removed(9));
    core.join(6, join);
    let mut answers = settle(&mut core);
    let last = core.raft().last_index();
    let ack = MessageBody::AppendEntriesResponse {
        success: true,
        index: last,
        conflict_term: 0,
        conflict_index: 0,
    };
    core.step(vec![Message { from: 1, to: 2, term: 2, body: ack }]);
    answers.extend(settle(&mut core));
    match answers.iter().find(|(token, _)| *token == 6).map(|(_, answer)| answer) {
        Some(Answer::Join(Ok(joined))) => assert_eq!(joined.id, 77),
        other => panic!("expected the join under the new id, got {other:?}"),
    }
}

/// The configuration a join answers with never lists the joining node: it starts
/// outside the configuration and learns that it is a learner from the snapshot or the
/// entries it is sent. Listed in its base (the leader's log started after its learner
/// entry, compacted), it took itself for a former member, and when another leader's
/// older snapshot arrived first, one whose configuration did not hold it yet, it
/// believed it had been removed and stopped for good (the simulator found it).
// Reference: thesis §4.2.1 (a new server joins as a non-voting member), §4.1.
#[test]
fn a_joined_node_whose_leader_compacted_past_its_entry_is_not_removed_by_an_older_snapshot() {
    let mut core = bootstrapped_leader();
    let request = JoinRequest { address: "10.0.0.9:3001".into(), learner: false, candidate_id: 9 };
    core.join(5, request.clone());
    join_answer(&settle(&mut core), 5).expect("answered").expect("joined");
    core.snapshot(6);
    settle(&mut core);
    assert_eq!(core.raft().log_start_conf().learners, [9], "the leader's log starts after the learner entry");
    core.join(7, request);
    let joined = join_answer(&settle(&mut core), 7).expect("answered").expect("joined again");
    assert_eq!(joined.id, 9);
    assert!(!joined.base.is_member(9), "the base lists the joining node: {:?}", joined.base);

    // The joining node starts as the daemon starts it, and an older snapshot (another
    // leader's, from before its learner entry) reaches it first.
    let mut config = Config::new(9);
    config.election_ticks = 10;
    config.heartbeat_ticks = 1;
    let initial = InitialState {
        hard_state: HardState::default(),
        snapshot: SnapshotMeta { index: 0, term: 0, conf: joined.base },
        entries: Vec::new(),
    };
    let raft = Raft::new(config, initial).expect("a fresh node");
    let kv = Arc::new(RwLock::new(StateMachine::new()));
    let mut joining = DriverCore::new(raft, kv, None, DriverConfig::default());
    let meta = SnapshotMeta { index: 1, term: 1, conf: ConfState::with_voters(vec![1]) };
    let term = core.raft().term();
    let body = MessageBody::InstallSnapshot { snapshot: Snapshot { meta, data: snapshot_data(1) } };
    joining.step(vec![Message { from: 1, to: 9, term, body }]);
    let mut removed = false;
    for _ in 0..10 {
        joining.poll();
        for action in joining.take_actions() {
            match action {
                Action::Removed => removed = true,
                Action::Persist(_) => joining.persisted(Ok(())),
                _ => {}
            }
        }
    }
    assert_eq!(joining.kv().read().unwrap().applied_index(), 1, "the snapshot installed");
    assert!(
        !removed && !joining.raft().is_removed(),
        "a node waiting for its learner entry took itself for removed"
    );
}

/// Node 1, elected leader of {1, 2, 3} (node 2's vote), on a data directory an
/// earlier release wrote: its peers are taken for the oldest version until they report.
fn legacy_leader_of_three() -> DriverCore {
    let mut config = Config::new(1);
    config.election_ticks = 10;
    config.heartbeat_ticks = 1;
    config.pre_vote = false;
    let initial = InitialState {
        hard_state: HardState::default(),
        snapshot: SnapshotMeta { index: 0, term: 0, conf: ConfState::with_voters(vec![1, 2, 3]) },
        entries: Vec::new(),
    };
    let raft = Raft::new(config, initial).expect("a fresh node");
    let kv = Arc::new(RwLock::new(StateMachine::new()));
    let members = vec![(1, "10.0.0.1:3001".into()), (2, "10.0.0.2:3001".into()), (3, "10.0.0.3:3001".into())];
    let config = DriverConfig {
        bootstrap: Some((0xc1, members)),
        version_floor: crate::server::driver::version::OLDEST_VERSION,
        ..DriverConfig::default()
    };
    let mut core = DriverCore::new(raft, kv, None, config);
    core.raft.campaign();
    settle(&mut core);
    let term = core.raft().term();
    let granted = MessageBody::RequestVoteResponse { pre_vote: false, granted: true };
    core.step(vec![Message { from: 2, to: 1, term, body: granted }]);
    settle(&mut core);
    assert_eq!(core.raft().role(), Role::Leader);
    core
}

/// The cluster record's entries are proposed only once every member reports a version
/// that applies them: an older member would skip them and its replica would differ.
#[test]
fn the_bootstrap_record_waits_until_every_member_reports_a_version_that_has_it() {
    let mut core = legacy_leader_of_three();
    let proposed_bootstrap = |core: &mut DriverCore| {
        core.tick();
        core.take_actions()
            .iter()
            .any(|action| matches!(action, Action::Proposed { token: INTERNAL_TOKEN, .. }))
    };
    assert_eq!(core.cluster_version(), 1);
    assert!(!proposed_bootstrap(&mut core), "proposed with two members of unknown version");
    core.member_version(2, 2);
    assert!(!proposed_bootstrap(&mut core), "proposed with member 3 of unknown version");
    core.member_version(3, 1);
    assert!(!proposed_bootstrap(&mut core), "proposed with member 3 at version 1");
    core.member_version(3, 2);
    assert_eq!(core.cluster_version(), 2);
    assert!(proposed_bootstrap(&mut core), "not proposed once every member runs version 2");
}

/// A request for a gated feature is answered at once with the members that lag, and
/// nothing reaches the log; key-value writes go on.
#[test]
fn a_gated_request_is_refused_naming_the_members_that_lag_and_key_value_writes_go_on() {
    let mut core = legacy_leader_of_three();
    core.member_version(2, 2);
    let last = core.raft().last_index();
    core.propose(7, Command::UpdateMember { id: 2, address: "10.0.0.4:3001".into() }.encode());
    let change =
        MemberChange::AddLearner { id: 9, address: "10.0.0.9:3001".into(), promote_when_caught_up: false };
    core.propose_member_change(8, change);
    core.join(9, JoinRequest { address: "10.0.0.9:3001".into(), learner: false, candidate_id: 9 });
    let actions = core.take_actions();
    for token in [7, 8, 9] {
        let refusal = actions.iter().find_map(|action| match action {
            Action::Answer(
                t,
                Answer::Proposal(Err(NodeError::Unsupported(u)))
                | Answer::Join(Err(NodeError::Unsupported(u))),
            ) if *t == token => Some(u.clone()),
            _ => None,
        });
        let refusal = refusal.unwrap_or_else(|| panic!("request {token} not refused: {actions:?}"));
        assert_eq!(refusal.lagging, vec![(3, None)], "request {token}");
    }
    assert_eq!(core.raft().last_index(), last, "a gated request reached the log");
    core.propose(10, put("k"));
    assert!(core.take_actions().iter().any(|a| matches!(a, Action::Proposed { token: 10, .. })));
}

/// A one-node leader whose history is bounded by `entries` events and `bytes` bytes.
fn leader_with_history_bound(entries: u64, bytes: u64) -> DriverCore {
    let mut core = core_configured(
        1,
        &[1],
        DriverConfig { history_entries: entries, history_bytes: bytes, ..DriverConfig::default() },
    );
    core.raft.campaign();
    settle(&mut core);
    assert_eq!(core.raft().role(), Role::Leader);
    core
}

fn history_of(core: &DriverCore) -> (usize, u64, u64) {
    let kv = core.kv().read().unwrap();
    (kv.history().len(), kv.history().approximate_bytes(), kv.history().compact_revision())
}

#[test]
fn a_leader_compacts_the_history_through_the_log_once_it_passes_its_entry_bound() {
    let mut core = leader_with_history_bound(8, u64::MAX);
    for i in 0..8 {
        core.propose(100 + i, put(&format!("k{i}")));
        settle(&mut core);
    }
    ticks(&mut core, 3);
    assert_eq!(history_of(&core).0, 8, "compacted at the bound, not past it");
    core.propose(200, put("k8"));
    settle(&mut core);
    let last = core.raft().last_index();
    ticks(&mut core, 1);
    assert_eq!(core.raft().last_index(), last + 1, "one entry: the compaction");
    let (len, _, compact_revision) = history_of(&core);
    assert_eq!(len, 6, "back to three quarters of the bound");
    // The no-op at index 1, then puts at 2..=10: the first three are dropped.
    assert_eq!(compact_revision, 4);
    let kv = core.kv().read().unwrap();
    assert!(kv.history().events().iter().all(|event| event.revision > compact_revision));
}

#[test]
fn a_leader_compacts_on_history_bytes_too() {
    let value = vec![b'x'; 1000];
    let mut core = leader_with_history_bound(u64::MAX, 4000);
    for i in 0..5 {
        core.propose(100 + i, Command::put(format!("k{i}"), value.clone()).encode());
        settle(&mut core);
        ticks(&mut core, 1);
        let (_, bytes, _) = history_of(&core);
        assert!(bytes <= 4000, "write {i}: {bytes} history bytes after a tick");
    }
    assert!(history_of(&core).2 > 0, "never compacted");
}

#[test]
fn at_most_one_automatic_compaction_is_in_flight() {
    let mut core = leader_with_history_bound(2, u64::MAX);
    for i in 0..4 {
        core.propose(100 + i, put(&format!("k{i}")));
        settle(&mut core);
    }
    // The compaction's entry waits for the disk: ticks must not propose another.
    let last = core.raft().last_index();
    for _ in 0..5 {
        core.tick();
        core.poll();
    }
    assert_eq!(core.raft().last_index(), last + 1, "one compaction proposed while one was in flight");
    settle(&mut core);
    for _ in 0..5 {
        core.persisted(Ok(()));
        settle(&mut core);
    }
    let (len, _, compact_revision) = history_of(&core);
    assert!(
        len <= 2 && compact_revision > 0,
        "the compaction applied: {len} events, point {compact_revision}"
    );
}

#[test]
fn compaction_waits_for_every_member_to_have_it() {
    let mut core = legacy_leader_of_three();
    core.member_version(2, 2);
    core.propose(7, Command::Compact { revision: 1 }.encode());
    let refused = core.take_actions().iter().any(|action| {
        matches!(action, Action::Answer(7, Answer::Proposal(Err(NodeError::Unsupported(u)))) if u.feature == Feature::Compaction)
    });
    assert!(refused, "a compaction was proposed with member 3 of unknown version");
}

/// Polls and persists until done, returning the history rounds handed out.
fn settle_rounds(core: &mut DriverCore) -> Vec<HistoryRound> {
    let mut rounds = Vec::new();
    for _ in 0..100 {
        core.poll();
        let actions = core.take_actions();
        if actions.is_empty() {
            return rounds;
        }
        let mut writes = 0;
        for action in actions {
            match action {
                Action::Persist(_) => writes += 1,
                Action::HistoryRound(round) => rounds.push(round),
                _ => {}
            }
        }
        for _ in 0..writes {
            core.persisted(Ok(()));
        }
    }
    panic!("the core did not settle");
}

#[test]
fn history_rounds_tile_the_applied_revisions_and_keep_events_a_later_entry_compacts() {
    let mut core = leader();
    let start = core.kv().read().unwrap().applied_index();
    // Three entries committed together: a put, a delete and a compaction of both.
    core.propose(1, put("a"));
    core.propose(2, Command::delete("a").encode());
    core.propose(3, Command::Compact { revision: start + 2 }.encode());
    let rounds = settle_rounds(&mut core);
    assert!(!rounds.is_empty());
    let mut after = start;
    let mut events = Vec::new();
    for round in &rounds {
        assert_eq!(round.after, after, "rounds tile the revisions: {rounds:?}");
        assert!(round.through > round.after || round.events.is_empty());
        after = round.through;
        events.extend(round.events.iter().map(|event| (event.revision, event.kind)));
        assert_eq!(round.missing_through, 0);
    }
    assert_eq!(after, start + 3);
    assert_eq!(
        events,
        vec![(start + 1, crate::kv::EventKind::Put), (start + 2, crate::kv::EventKind::Delete)]
    );
    assert_eq!(core.kv().read().unwrap().history().compact_revision(), start + 2);
}

#[test]
fn a_snapshot_installed_over_compacted_history_reports_what_is_missing() {
    let mut core = core_with(2, &[1, 2, 3]);
    let mut machine = StateMachine::new();
    for index in 1..=6 {
        machine.apply(index, &Command::put(format!("k{index}"), "v"));
    }
    machine.apply(7, &Command::Compact { revision: 4 });
    core.step(vec![install_snapshot(1, 2, 1, 7, serialized(&machine))]);
    let rounds = settle_rounds(&mut core);
    let round = rounds.iter().find(|round| round.through == 7).expect("a round for the install");
    assert_eq!((round.after, round.missing_through), (0, 4));
    let revisions: Vec<u64> = round.events.iter().map(|event| event.revision).collect();
    assert_eq!(revisions, vec![5, 6], "the events the snapshot holds");
}

fn lease_answer(answers: &[(Token, Answer)], token: Token) -> Option<&Result<Option<LeaseState>, NodeError>> {
    answers.iter().find(|(t, _)| *t == token).and_then(|(_, answer)| match answer {
        Answer::Lease(result) => Some(result),
        _ => None,
    })
}

fn tick_at(core: &mut DriverCore, now_ms: u64) -> Vec<(Token, Answer)> {
    core.observe_time(now_ms);
    core.tick();
    settle(core)
}

#[test]
fn a_leader_revokes_a_lease_through_the_log_once_its_ttl_has_passed_and_not_before() {
    let mut core = leader();
    tick_at(&mut core, 0);
    core.propose(7, Command::LeaseGrant { id: 5, ttl_s: 2 }.encode());
    let leased =
        Command::Put { key: "k".into(), value: "v".into(), condition: crate::kv::Condition::None, lease: 5 };
    core.propose(8, leased.encode());
    settle(&mut core);
    // First seen applied at 100 ms: it lives until 2,100 ms.
    tick_at(&mut core, 100);
    let before = core.raft().last_index();
    tick_at(&mut core, 2_099);
    assert_eq!(core.raft().last_index(), before, "a lease revoked before its TTL passed");
    assert!(core.kv().read().unwrap().get(b"k").is_some());
    tick_at(&mut core, 2_100);
    assert_eq!(core.raft().last_index(), before + 1, "one revoke proposed");
    let kv = core.kv().read().unwrap();
    assert!(kv.lease(5).is_none() && kv.get(b"k").is_none(), "the lease and its key are gone");
}

#[test]
fn a_keepalive_confirmed_by_the_leader_restarts_the_ttl_and_an_expired_lease_stays_expired() {
    let mut core = leader();
    tick_at(&mut core, 0);
    core.propose(7, Command::LeaseGrant { id: 5, ttl_s: 2 }.encode());
    settle(&mut core);
    tick_at(&mut core, 0);
    core.observe_time(1_500);
    core.lease_keepalive(9, 5);
    let answers = settle(&mut core);
    assert_eq!(
        lease_answer(&answers, 9),
        Some(&Ok(Some(LeaseState { id: 5, granted_ttl_s: 2, remaining_ms: 2_000 })))
    );
    let before = core.raft().last_index();
    tick_at(&mut core, 3_499);
    assert_eq!(core.raft().last_index(), before, "the keepalive did not extend the lease");
    core.lease_time_to_live(10, 5);
    assert_eq!(
        lease_answer(&settle(&mut core), 10),
        Some(&Ok(Some(LeaseState { id: 5, granted_ttl_s: 2, remaining_ms: 1 })))
    );
    // Expired: the revoke is proposed, and a keepalive now finds nothing to renew.
    core.observe_time(3_500);
    core.tick();
    core.lease_keepalive(11, 5);
    let answers = settle(&mut core);
    assert_eq!(lease_answer(&answers, 11), Some(&Ok(None)));
    assert!(core.kv().read().unwrap().lease(5).is_none());
    core.lease_keepalive(12, 77);
    assert_eq!(lease_answer(&settle(&mut core), 12), Some(&Ok(None)), "an unknown lease");
}

#[test]
fn a_follower_refuses_keepalives_and_time_to_live_and_keeps_no_deadlines() {
    let mut core = core_with(2, &[1, 2, 3]);
    core.lease_keepalive(1, 5);
    core.lease_time_to_live(2, 5);
    let answers = settle(&mut core);
    assert!(matches!(lease_answer(&answers, 1), Some(Err(NodeError::NotLeader(None)))), "{answers:?}");
    assert!(matches!(lease_answer(&answers, 2), Some(Err(NodeError::NotLeader(None)))), "{answers:?}");
    assert_eq!(core.lease_clock.term(), 0);
}
