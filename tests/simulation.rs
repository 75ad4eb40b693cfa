//! Deterministic simulation of mmapd's Raft core: 3- and 5-node clusters under crashes,
//! partitions, loss, duplication and reordering, with membership changes (joins,
//! promotions, removals, replacements, wiped and removed members started again), and
//! safety, liveness and linearizability checks after every step. See `sim/cluster.rs`
//! for how it works.
//!
//! `cargo test --release --test simulation` runs the CI budget of seeds.
//! `MMAPD_SIM_SEEDS=N` sets how many seeds; `MMAPD_SIM_SEED=S` replays one seed.

mod sim;

use sim::cluster::{Options, RunReport, Sim, ELECTION_TICKS};
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Seeds in the CI budget (about 2–4 minutes on 2 cores in release).
const DEFAULT_SEEDS: u64 = 500;

/// Writes past the test harness's output capture, so the summary is always shown.
fn report(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(text.as_bytes());
    let _ = stderr.flush();
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|value| {
        value.trim().parse().unwrap_or_else(|_| panic!("{name} must be a number, got {value:?}"))
    })
}

/// The seeds to run: one replayed seed, or `MMAPD_SIM_SEEDS` (default the CI budget).
fn seeds() -> Vec<u64> {
    match env_u64("MMAPD_SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("MMAPD_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect(),
    }
}

/// Runs `seeds` on all cores, with `options` made from each seed; stops early once a
/// violation is found when `stop_at_first`.
fn run_seeds(seeds: &[u64], stop_at_first: bool, options: impl Fn(u64) -> Options + Sync) -> Vec<RunReport> {
    let next = AtomicU64::new(0);
    let found = AtomicU64::new(u64::MAX);
    let reports = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(seeds.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let position = next.fetch_add(1, Ordering::Relaxed) as usize;
                if position >= seeds.len()
                    || (stop_at_first && found.load(Ordering::Relaxed) < position as u64)
                {
                    return;
                }
                let run = Sim::run_seed(options(seeds[position]));
                if run.violation.is_some() {
                    found.fetch_min(position as u64, Ordering::Relaxed);
                }
                reports.lock().unwrap().push(run);
            });
        }
    });
    let mut reports = reports.into_inner().unwrap();
    reports.sort_by_key(|run| run.seed);
    reports
}

/// The CI run. Checks after every step: election safety (§5.2: one leader per term, one
/// vote per term and id, across configurations and incarnations), log matching (§5.3),
/// leader completeness (§5.4), every committed entry on some disk of every quorum of the
/// configuration in force (thesis §4.1), no removed id let in again, state machine safety
/// (§5.4.3), durable-before-reply (Fig. 2); after healing: liveness (§5.2, thesis §9.6);
/// at the end: linearizability of the clients' key-value history (thesis §6.3, §6.4).
// Reference: §5, Figure 2, Figure 3; thesis §4.1, §4.2.2, §4.2.3, §6.
#[test]
fn simulated_clusters_keep_raft_safety_liveness_and_linearizability() {
    let seeds = seeds();
    let replay = seeds.len() == 1;
    let started = std::time::Instant::now();
    let reports = run_seeds(&seeds, false, Options::for_seed);
    let steps: u64 = reports.iter().map(|run| run.steps).sum();
    let faults: u64 = reports.iter().map(|run| run.faults).sum();
    let inconclusive: u64 = reports.iter().map(|run| run.inconclusive).sum();
    let failed: Vec<&RunReport> = reports.iter().filter(|run| run.violation.is_some()).collect();
    for run in &failed {
        report(&format!(
            "seed {} ({} nodes) failed; replay with MMAPD_SIM_SEED={}\n{}\n",
            run.seed,
            run.nodes,
            run.seed,
            run.violation.as_ref().unwrap()
        ));
    }
    if inconclusive > 0 {
        report(&format!("simulation: {inconclusive} linearizability checks ran out of budget\n"));
    }
    if replay && failed.is_empty() {
        let run = &reports[0];
        if std::env::var_os("MMAPD_SIM_TRACE").is_some() {
            report(&format!("last trace lines:\n  {}\n", run.trace.join("\n  ")));
        }
        report(&format!("seed {} passed\n", seeds[0]));
    }
    let sum = |field: fn(&RunReport) -> u64| reports.iter().map(field).sum::<u64>();
    report(&format!(
        "simulation: {} entries committed, {} writes acknowledged, {} reads served, {} leaders elected, {} snapshots installed, {} leadership transfers\n",
        sum(|run| run.committed),
        sum(|run| run.writes),
        sum(|run| run.reads),
        sum(|run| run.leaders),
        sum(|run| run.snapshots_installed),
        sum(|run| run.transfers)
    ));
    report(&format!(
        "simulation: {} members added, {} removed, {} wiped members refused under their old id, {} let back in\n",
        sum(|run| run.members_added),
        sum(|run| run.members_removed),
        sum(|run| run.rejoins_refused),
        sum(|run| run.rejoins_started)
    ));
    let lease_confirmations = sum(|run| run.lease_confirmations);
    let lease_expiries = sum(|run| run.lease_expiries);
    report(&format!(
        "simulation: {lease_confirmations} lease grants and keepalives acknowledged, {lease_expiries} expiries checked against them\n"
    ));
    let (watch_rounds, watch_jumps, watch_gaps) =
        (sum(|run| run.watch_rounds), sum(|run| run.watch_jumps), sum(|run| run.watch_gaps));
    report(&format!(
        "simulation: {watch_rounds} rounds of watch events checked against every node's, {watch_jumps} of them snapshot installs, {watch_gaps} declaring a gap\n"
    ));
    let bank_transactions = sum(|run| run.bank_transactions);
    report(&format!(
        "simulation: {bank_transactions} bank transactions acknowledged and checked against the committed log's serial order\n"
    ));
    let hash_checks = sum(|run| run.hash_checks);
    report(&format!("simulation: {hash_checks} hash check states checked against the committed state\n"));
    if !replay && seeds.len() >= 20 {
        assert!(hash_checks > 0, "no seed ran a hash check: the check of Action::HashState never ran");
        assert!(lease_expiries > 0, "no lease expired in any seed: the early-expiry check never ran");
        assert!(
            watch_jumps > 0,
            "no snapshot install handed watchers its history: the resumption check never ran"
        );
    }
    report(&format!("simulation: took {:.1}s\n", started.elapsed().as_secs_f64()));
    report(&format!(
        "simulation: {} seeds, {} steps, {} faults, {} violations\n",
        seeds.len(),
        steps,
        faults,
        failed.len()
    ));
    let failed_seeds: Vec<u64> = failed.iter().map(|run| run.seed).collect();
    assert!(failed.is_empty(), "violations at seeds {failed_seeds:?}");
}

/// The simulator on the real mmap store: every node's disk is mirrored into
/// `mmapd::store` in a temp directory (appends, overwritten suffixes, hard state,
/// snapshots installed and compactions, each synced), and a crashed node restarts from
/// what the store recovers, which must equal the simulated disk.
// Reference: Figure 2, "Persistent state on all servers"; §7.
#[test]
fn simulated_clusters_run_on_the_real_store() {
    let seeds: Vec<u64> = (0..env_u64("MMAPD_SIM_REAL_STORE_SEEDS").unwrap_or(6)).collect();
    let started = std::time::Instant::now();
    let reports = run_seeds(&seeds, false, |seed| Options {
        real_store: true,
        fault_ticks: 3_000,
        ..Options::for_seed(seed)
    });
    let failed: Vec<&RunReport> = reports.iter().filter(|run| run.violation.is_some()).collect();
    for run in &failed {
        report(&format!(
            "real store: seed {} ({} nodes) failed\n{}\n",
            run.seed,
            run.nodes,
            run.violation.as_ref().unwrap()
        ));
    }
    let restarts: u64 = reports.iter().map(|run| run.faults).sum();
    report(&format!(
        "simulation on the real store: {} seeds, {} faults, {} violations, {:.1}s\n",
        seeds.len(),
        restarts,
        failed.len(),
        started.elapsed().as_secs_f64()
    ));
    assert!(failed.is_empty());
}

/// 3 nodes; the leader crashes; the other two elect a new leader and commit more; the old
/// leader restarts. It must not take leadership back (pre-vote and leader stickiness keep
/// the term where it is: it cannot win, and must not disrupt) and it must catch up on
/// every entry committed while it was down.
// Reference: thesis §9.6 (pre-vote), §4.2.3 (disruptive servers), §5.3 and §5.4.
#[test]
fn restarted_former_leader_does_not_take_leadership_back_and_gets_missed_entries() {
    let mut options = Options::for_seed(42);
    options.pre_vote = true;
    options.nodes = 3;
    options.faults = false;
    options.clients = false;
    let mut sim = Sim::new(options);
    let timeout = 20 * u64::from(ELECTION_TICKS);
    assert!(sim.run_until(timeout, |s| s.leader().is_some()), "no first leader");
    let (old_leader, _) = sim.leader().unwrap();
    for key in 0..3 {
        sim.client_write(Some((old_leader - 1) as usize), key);
    }
    assert!(sim.run_until(timeout, |s| s.committed_index() >= 4 && s.is_settled()), "first writes");

    sim.crash(old_leader);
    assert!(
        sim.run_until(timeout, |s| s.leader().is_some_and(|(id, _)| id != old_leader)),
        "the survivors elected no leader"
    );
    let (new_leader, term) = sim.leader().unwrap();
    let before = sim.committed_index();
    for key in 0..5 {
        sim.client_write(Some((new_leader - 1) as usize), key);
    }
    assert!(sim.run_until(timeout, |s| s.committed_index() >= before + 5), "the new leader did not commit");

    sim.restart(old_leader);
    sim.run_ticks(10 * u64::from(ELECTION_TICKS));
    assert!(sim.violation().is_none(), "{}", sim.violation().unwrap());
    assert_eq!(sim.leader(), Some((new_leader, term)), "leadership or term changed after the restart");
    let (role, old_term) = sim.role_of(old_leader).unwrap();
    assert_eq!((role, old_term), (mmapd::raft::Role::Follower, term), "the restarted node");
    let (applied, state) = sim.applied_of(old_leader);
    let (leader_applied, leader_state) = sim.applied_of(new_leader);
    assert_eq!(applied, leader_applied, "the restarted node did not apply every committed entry");
    assert_eq!(state, leader_state);
    assert!(applied >= before + 5);
}

/// The stale-read scenario of thesis §6.4: the leader is cut off and its clock stalls, so
/// it does not notice (check-quorum cannot fire); the others elect a new leader, which
/// commits a new value. A read asked of the old leader must not return the old value: it
/// must wait for a heartbeat round that can never complete (and time out), or see the new
/// value.
fn stale_read_scenario(options: Options) -> (Sim, Option<u64>, u64) {
    let mut sim = Sim::new(options);
    let timeout = 20 * u64::from(ELECTION_TICKS);
    assert!(sim.run_until(timeout, |s| s.leader().is_some() && s.is_settled()), "no first leader");
    let (old_leader, _) = sim.leader().unwrap();
    sim.client_write(Some((old_leader - 1) as usize), 0);
    // Wait for the write itself: the leader's no-op and its bootstrap record come first.
    assert!(
        sim.run_until(timeout, |s| s.applied_of(old_leader).1.contains_key(&0) && s.is_settled()),
        "first write"
    );
    sim.isolate_with_stalled_clock(old_leader, 30 * u64::from(ELECTION_TICKS));
    assert!(
        sim.run_until(timeout, |s| s.leader().is_some_and(|(id, _)| id != old_leader)),
        "the majority elected no new leader"
    );
    let (new_leader, _) = sim.leader().unwrap();
    let old_value = sim.applied_of(new_leader).1[&0];
    sim.client_write(Some((new_leader - 1) as usize), 0);
    assert!(
        sim.run_until(timeout, |s| s.applied_of(new_leader).1[&0] != old_value),
        "the new leader did not commit the new value"
    );
    let new_value = sim.applied_of(new_leader).1[&0];
    let context = sim.client_read_on((old_leader - 1) as usize, 0);
    sim.run_ticks(5 * u64::from(ELECTION_TICKS));
    let result = context.and_then(|context| sim.read_result(context)).flatten();
    (sim, result, new_value)
}

// Reference: thesis §6.4 (ReadIndex confirms leadership with a heartbeat round), §6.2.
#[test]
fn deposed_leader_with_stalled_clock_does_not_serve_stale_reads() {
    let mut options = Options::for_seed(7);
    options.pre_vote = true;
    options.faults = false;
    options.clients = false;
    let (mut sim, result, new_value) = stale_read_scenario(options);
    if let Some(value) = result {
        assert_eq!(value, new_value, "the old leader served a stale read");
    }
    sim.check_linearizability();
    assert!(sim.violation().is_none(), "{}", sim.violation().unwrap());
}

#[cfg(feature = "planted-bugs")]
mod planted_bugs {
    //! Each planted bug must be found within the CI seed budget: proof that the checks
    //! can see it.

    use super::*;
    use mmapd::raft::PlantedBugs;
    use mmapd::server::driver::core::DriverBugs;

    fn find(name: &str, bugs: PlantedBugs, check_durable_replies: bool) {
        find_with(name, |options| {
            options.bugs.planted = bugs;
            options.check_durable_replies = check_durable_replies;
        });
    }

    fn find_driver_bug(name: &str, bugs: DriverBugs) {
        find_with(name, |options| options.bugs.driver = bugs);
    }

    fn find_with(name: &str, plant: impl Fn(&mut Options) + Sync) {
        let budget = env_u64("MMAPD_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
        let replay = env_u64("MMAPD_SIM_SEED");
        let seeds: Vec<u64> = match replay {
            Some(seed) => vec![seed],
            None => (0..budget).collect(),
        };
        // MMAPD_SIM_COUNT_ALL runs the whole budget to measure how often the bug shows.
        let count_all = std::env::var_os("MMAPD_SIM_COUNT_ALL").is_some();
        let reports = run_seeds(&seeds, !count_all, |seed| {
            let mut options = Options::for_seed(seed);
            plant(&mut options);
            options
        });
        let first = reports.iter().find(|run| run.violation.is_some());
        if count_all {
            let found: Vec<u64> =
                reports.iter().filter(|run| run.violation.is_some()).map(|run| run.seed).collect();
            report(&format!("planted bug {name}: found at {} of {budget} seeds: {found:?}\n", found.len()));
        }
        match first {
            Some(run) => {
                let violation = run.violation.as_ref().unwrap();
                if replay.is_some() {
                    report(&format!("{violation}\n"));
                }
                report(&format!(
                    "planted bug {name}: found at seed {} ({} nodes) after {} seeds: {}: {}\n",
                    run.seed,
                    run.nodes,
                    reports.len(),
                    violation.kind,
                    violation.detail.lines().next().unwrap_or("")
                ));
            }
            None => panic!("planted bug {name} was not found in {budget} seeds"),
        }
    }

    /// (a) Granting votes without the up-to-date check lets a node without committed
    /// entries win and overwrite them.
    // Reference: §5.4.1 (election restriction), §5.4.3.
    #[test]
    fn simulator_finds_vote_granted_without_log_check() {
        find(
            "(a) vote_without_log_check",
            PlantedBugs { vote_without_log_check: true, ..Default::default() },
            true,
        );
    }

    /// (b) Committing an earlier term's entry by counting replicas (Figure 8).
    // Reference: §5.4.2, Figure 8.
    #[test]
    fn simulator_finds_commit_of_earlier_term_by_counting() {
        let bugs = PlantedBugs { commit_earlier_term_by_counting: true, ..Default::default() };
        find("(b) commit_earlier_term_by_counting", bugs, true);
    }

    /// (c) A vote sent before it is durable: a crash forgets it and the node votes again.
    /// Found without the send-time durability check, only through its effects.
    // Reference: Figure 2 ("Persistent state ... updated on stable storage before
    // responding to RPCs"), §5.2.
    #[test]
    fn simulator_finds_vote_sent_before_persisting() {
        let bugs = PlantedBugs { vote_before_persist: true, ..Default::default() };
        find("(c) vote_before_persist (through crashes)", bugs, false);
    }

    /// (c) again, caught directly by the durable-before-reply check.
    // Reference: Figure 2.
    #[test]
    fn durability_check_flags_vote_sent_before_persisting() {
        let bugs = PlantedBugs { vote_before_persist: true, ..Default::default() };
        find("(c) vote_before_persist (durability check)", bugs, true);
    }

    /// The scenario test above sees bug (d) too: the old leader answers from its stale state.
    // Reference: thesis §6.4.
    #[test]
    fn stale_read_scenario_sees_read_index_without_heartbeat() {
        let mut options = Options::for_seed(7);
        options.pre_vote = true;
        options.faults = false;
        options.clients = false;
        options.bugs.planted = PlantedBugs { read_index_without_heartbeat: true, ..Default::default() };
        let (sim, result, new_value) = stale_read_scenario(options);
        assert!(result.is_some_and(|value| value != new_value), "expected a stale read, got {result:?}");
        // The direct check sees it as it is served; linearizability would too.
        assert_eq!(sim.violation().map(|v| v.kind), Some("stale read"));
    }

    /// (d) ReadIndex without a heartbeat round: a deposed leader serves stale reads.
    // Reference: thesis §6.4.
    #[test]
    fn simulator_finds_read_index_without_heartbeat() {
        let bugs = PlantedBugs { read_index_without_heartbeat: true, ..Default::default() };
        find("(d) read_index_without_heartbeat", bugs, true);
    }

    /// (e) Compacting to the applied index while entries applied early (committed by a
    /// majority, not yet written here) are not durable drops entries never persisted:
    /// the daemon panicked "snapshot at N beyond the log" (issue 11, finding 1).
    // Reference: §7 (a snapshot replaces only committed, stored entries), thesis §10.2.1.
    #[test]
    fn simulator_finds_compaction_past_the_durable_log() {
        // Both layers planted out: the driver's check and the Raft core's.
        find_with("(e) compact_past_stable", |options| {
            options.bugs.driver = DriverBugs { compact_past_stable: true, ..Default::default() };
            options.bugs.planted = PlantedBugs { compact_past_stable: true, ..Default::default() };
        });
    }

    /// (f) Releasing reads against the Raft core's applied index, which an accepted
    /// snapshot moves before the state machine holds it: a stale linearizable read.
    // Reference: thesis §6.4 (serve once the state machine has applied the read index).
    #[test]
    fn simulator_finds_reads_released_before_the_state_machine_has_the_snapshot() {
        let bugs = DriverBugs { release_reads_by_core_applied: true, ..Default::default() };
        find_driver_bug("(f) release_reads_by_core_applied", bugs);
    }

    /// (g) Answering a proposal that a snapshot covered as "not applied": the forwarder
    /// retries it, and a write that did apply applies twice (chaos finding 1).
    // Reference: thesis §6.3 (a client must not be told a write failed when it may not have).
    #[test]
    fn simulator_finds_covered_proposals_answered_as_dropped() {
        let bugs = DriverBugs { drop_covered_proposals: true, ..Default::default() };
        find_driver_bug("(g) drop_covered_proposals", bugs);
    }

    /// (h) A keepalive renewed without the leader confirming it still leads: a deposed
    /// leader extends a lease the new leader, counting from when it took over, expires
    /// before the client's acknowledged keepalive said it would.
    // Reference: thesis §6.4 (leadership confirmed by a heartbeat round), etcd's lessor.
    #[test]
    fn simulator_finds_keepalives_renewed_without_confirming_leadership() {
        let bugs = DriverBugs { keepalive_without_leadership_check: true, ..Default::default() };
        find_driver_bug("(h) keepalive_without_leadership_check", bugs);
    }

    /// (i) A snapshot install that hands watchers its history but one event: a watcher on
    /// that node misses a change that a watcher on any other node sees.
    // Reference: etcd's watch guarantees (reliable, resumable).
    #[test]
    fn simulator_finds_an_event_dropped_when_a_snapshot_is_installed() {
        let bugs = DriverBugs { install_round_drops_an_event: true, ..Default::default() };
        find_driver_bug("(i) install_round_drops_an_event", bugs);
    }

    /// (e, membership) A configuration change proposed before the leader has committed
    /// an entry of its own term: an uncommitted change of an earlier leader that this one
    /// does not hold can still commit, and two configurations with no common majority
    /// each elect a leader and commit (Ongaro's 2015 correction to single-server changes).
    // Reference: thesis §4.1; RAFT-NOTES #17, #19.
    #[test]
    fn simulator_finds_conf_change_before_commit_in_term() {
        let bugs = PlantedBugs { conf_change_before_commit_in_term: true, ..Default::default() };
        find("(e, membership) conf_change_before_commit_in_term", bugs, true);
    }

    /// (f, membership) A second configuration change while one is not committed: two
    /// single-server steps at once can leave the old and the new configuration with
    /// majorities that do not overlap.
    // Reference: thesis §4.1 (one change at a time), RAFT-NOTES #19.
    #[test]
    fn simulator_finds_two_conf_changes_pending_at_once() {
        let bugs = PlantedBugs { conf_change_while_pending: true, ..Default::default() };
        find("(f, membership) conf_change_while_pending", bugs, true);
    }

    /// (g, membership) A member that held the log, wiped, starts again under its old id
    /// (the `--peers` start decision ignores that the cluster saw it hold the log): with
    /// an empty log it votes again in terms it voted in, and for candidates that miss
    /// committed entries; a committed entry is then on no disk of some quorum.
    // Reference: RAFT-NOTES #18, #23; Figure 2 (votedFor is persistent); thesis §4.1.
    #[test]
    fn simulator_finds_wiped_node_rejoining_as_itself() {
        let bugs = DriverBugs { wiped_node_rejoins_as_itself: true, ..Default::default() };
        find_driver_bug("(g, membership) wiped_node_rejoins_as_itself", bugs);
    }
}
