//! Fault injection against real `mmapd` processes (a Jepsen-style test).
//!
//! Each run starts 3 or 5 nodes, each in its own network namespace joined by a bridge
//! (see `chaos/net.rs`), with short Raft timings. Eight client threads in the bridge's
//! namespace read, write unique values, delete, compare-and-swap and create-only against
//! random nodes, recording when each operation was invoked and when it completed. A
//! nemesis (`chaos/nemesis.rs`) follows a seeded schedule: partitions (majority/minority,
//! isolated leader, bridge, ring, one-way), SIGKILL and restart, SIGSTOP/SIGCONT, delay
//! and packet loss, each healed before the next. Then everything is healed and the run is
//! checked (`chaos/checks.rs`): every node serves within 5 s, each key's history with the
//! final reads from every node is linearizable (`chaos/linearizability.rs`), the last
//! acknowledged write of each key is visible, versions name one value, no node panicked
//! or exited. A failed run writes an HTML timeline and prints its seed and path.
//!
//! `cargo test --release --test chaos`: 120 s of faults over 4 runs (3 and 5 nodes).
//! `MMAPD_CHAOS_SECONDS=1800`: a soak. `MMAPD_CHAOS_SEED=S` (with `MMAPD_CHAOS_NODES=N`)
//! replays one run's schedule. Needs root (namespaces, nftables); without namespaces it
//! falls back to loopback addresses with process faults only.

#[path = "chaos/checks.rs"]
mod checks;
#[path = "chaos/client.rs"]
mod client;
#[path = "chaos/cluster.rs"]
mod cluster;
#[path = "chaos/linearizability.rs"]
mod linearizability;
#[path = "chaos/nemesis.rs"]
mod nemesis;
#[path = "chaos/net.rs"]
mod net;
#[path = "chaos/report.rs"]
mod report;
#[path = "chaos/rng.rs"]
mod rng;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{Outcome, Request, Shared};
use cluster::Cluster;
use net::Network;
use rng::Rng;

/// Client threads per run.
const CLIENTS: usize = 8;
/// Total seconds of faults by default (the CI run).
const DEFAULT_SECONDS: u64 = 120;
/// How long after healing every node must serve.
const RECOVERY: Duration = Duration::from_secs(5);

/// What one run did.
#[derive(Default)]
struct Totals {
    fault_seconds: u64,
    ok: usize,
    failed: usize,
    unknown: usize,
    faults: usize,
    keys: usize,
    inconclusive: usize,
    anomalies: usize,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

#[test]
fn chaos_histories_are_linearizable_and_the_cluster_recovers() {
    if !nix_is_root() {
        eprintln!("chaos: SKIPPED: needs root (network namespaces, nftables)");
        return;
    }
    let mode = match net::ensure_tools().and_then(|()| net::namespaces_work()) {
        Ok(()) => {
            net::remove_leftovers();
            "namespaces"
        }
        Err(why) => {
            eprintln!("chaos: network namespaces unavailable ({why}); falling back to loopback with SIGKILL/SIGSTOP faults only");
            net::LOOPBACK.store(true, Ordering::Relaxed);
            "loopback"
        }
    };
    let total_seconds = env_u64("MMAPD_CHAOS_SECONDS").unwrap_or(DEFAULT_SECONDS);
    let forced_nodes = env_u64("MMAPD_CHAOS_NODES").map(|n| n as usize);
    let per_run = if total_seconds > 300 { 60 } else { 30 }.min(total_seconds.max(1));
    let (seeds, per_run): (Vec<u64>, u64) = match env_u64("MMAPD_CHAOS_SEED") {
        // A replay runs one seed for MMAPD_CHAOS_SECONDS, or as long as a CI run's seed.
        Some(seed) => (vec![seed], env_u64("MMAPD_CHAOS_SECONDS").unwrap_or(30)),
        None => {
            let base =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() * 1000;
            let runs = total_seconds.div_ceil(per_run);
            ((0..runs).map(|i| base + i).collect(), per_run)
        }
    };
    let report_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos");
    let mut totals = Totals::default();
    let mut failures = Vec::new();
    for seed in seeds {
        let nodes = forced_nodes.unwrap_or(if seed % 2 == 0 { 3 } else { 5 });
        eprintln!("chaos: seed {seed}: {nodes} nodes ({mode}), {per_run} s of faults");
        match one_run(seed, nodes, per_run, &report_dir) {
            Ok(run) => {
                if run.anomalies > 0 {
                    failures.push(seed);
                }
                totals.fault_seconds += run.fault_seconds;
                totals.ok += run.ok;
                totals.failed += run.failed;
                totals.unknown += run.unknown;
                totals.faults += run.faults;
                totals.keys += run.keys;
                totals.inconclusive += run.inconclusive;
                totals.anomalies += run.anomalies;
            }
            Err(error) => panic!("chaos: seed {seed}: the harness failed: {error}"),
        }
    }
    if totals.inconclusive > 0 {
        eprintln!(
            "chaos: {} keys inconclusive (search budget exceeded), not counted as anomalies",
            totals.inconclusive
        );
    }
    let line = format!(
        "chaos: {} s of faults, {} ops ({} ok / {} failed / {} unknown), {} faults, {} keys checked, {} anomalies",
        totals.fault_seconds,
        totals.ok + totals.failed + totals.unknown,
        totals.ok,
        totals.failed,
        totals.unknown,
        totals.faults,
        totals.keys,
        totals.anomalies
    );
    // Straight to stderr, past the test harness's capture, so CI's log shows it.
    {
        use std::io::Write as _;
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "{line}");
        let _ = stderr.flush();
    }
    assert!(
        failures.is_empty(),
        "chaos: anomalies in seeds {failures:?} (reports in {})",
        report_dir.display()
    );
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// One run: start, load, faults, heal, check. Err only when the harness itself fails.
fn one_run(
    seed: u64,
    nodes: usize,
    fault_seconds: u64,
    report_dir: &std::path::Path,
) -> Result<Totals, String> {
    let mut rng = Rng::new(seed);
    let network = if net::LOOPBACK.load(Ordering::Relaxed) { None } else { Some(Network::create(nodes)?) };
    let run_dir = report_dir.join(format!("run-{seed}"));
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
    let mut cluster = Cluster::start(nodes, network.as_ref(), &run_dir)?;
    let shared = Arc::new(Shared {
        start: Instant::now(),
        stop: AtomicBool::new(false),
        begun: AtomicU64::new(0),
        history: Mutex::new(Vec::new()),
        nodes,
    });
    let hub = network.as_ref().map(|n| n.hub.clone());
    let enter_hub = || hub.as_deref().map_or(Ok(()), net::enter);

    let mut anomalies: Vec<(Option<u64>, String)> = Vec::new();
    let timeline = std::thread::scope(|scope| -> Result<_, String> {
        // The controller thread: it too talks to the nodes, so it lives in the hub.
        scope
            .spawn(|| -> Result<_, String> {
                enter_hub()?;
                if let Some(waited) = wait_until_all_serve(nodes, Duration::from_secs(30)) {
                    eprintln!("chaos: seed {seed}: cluster serving after {:.1} s", waited.as_secs_f64());
                } else {
                    return Err("the cluster did not elect a leader and serve within 30 s of starting".into());
                }
                let clients: Vec<_> = (0..CLIENTS)
                    .map(|id| {
                        let shared = Arc::clone(&shared);
                        let client_rng = rng.fork();
                        let enter = &enter_hub;
                        scope.spawn(move || {
                            enter().expect("enter hub namespace");
                            client::client_loop(id, shared, client_rng)
                        })
                    })
                    .collect();
                let timeline = nemesis::run(fault_seconds, &mut rng, network.as_ref(), &mut cluster, &shared);
                // Heal and stop the clients whatever happened, so the scope can end.
                let healed = nemesis::heal(network.as_ref(), &mut cluster);
                if healed.is_ok() {
                    match wait_until_all_serve(nodes, Duration::from_secs(30)) {
                        Some(waited) if waited <= RECOVERY => {}
                        Some(waited) => anomalies.push((
                            None,
                            format!(
                                "after healing, all nodes served only after {:.1} s (limit {RECOVERY:?})",
                                waited.as_secs_f64()
                            ),
                        )),
                        None => anomalies
                            .push((None, "after healing, the cluster did not serve within 30 s".into())),
                    }
                }
                shared.stop.store(true, Ordering::Relaxed);
                let joined = clients.into_iter().map(|c| c.join()).filter(Result::is_err).count();
                healed?;
                if joined > 0 {
                    return Err(format!("{joined} client threads panicked"));
                }
                let timeline = timeline?;
                final_reads(&shared);
                Ok(timeline)
            })
            .join()
            .map_err(|_| "the controller thread panicked".to_string())?
    })?;

    for i in 0..nodes {
        if let Some(status) = cluster.exited(i) {
            anomalies.push((None, format!("node n{} exited on its own: {status}", i + 1)));
        }
    }
    drop(cluster);
    for (node, line) in panics(&run_dir, nodes) {
        anomalies.push((None, format!("node n{} panicked: {line}", node + 1)));
    }
    let history = std::mem::take(&mut *shared.history.lock().expect("history lock"));
    let findings = checks::check(&history);
    anomalies.extend(findings.anomalies);

    let client_ops = history.iter().filter(|e| e.client != usize::MAX);
    let mut totals = Totals {
        fault_seconds,
        faults: timeline.len(),
        keys: findings.keys,
        inconclusive: findings.inconclusive.len(),
        anomalies: anomalies.len(),
        ..Totals::default()
    };
    for event in client_ops {
        match event.outcome {
            Outcome::Failed => totals.failed += 1,
            Outcome::Unknown => totals.unknown += 1,
            _ => totals.ok += 1,
        }
    }
    let logs: Vec<PathBuf> = (1..=nodes).map(|n| run_dir.join(format!("n{n}.stderr"))).collect();
    if anomalies.is_empty() {
        let _ = std::fs::remove_dir_all(&run_dir);
    } else {
        let run = report::Run {
            seed,
            nodes,
            history: &history,
            timeline: &timeline,
            anomalies: &anomalies,
            logs: &logs,
        };
        let path = report::write(report_dir, &run).map_err(|e| format!("writing the report: {e}"))?;
        for (_, anomaly) in &anomalies {
            eprintln!("chaos: seed {seed}: ANOMALY: {anomaly}");
        }
        eprintln!(
            "chaos: seed {seed} ({nodes} nodes) FAILED: {} anomalies; report {}; node logs in {}",
            anomalies.len(),
            path.display(),
            run_dir.display()
        );
    }
    eprintln!(
        "chaos: seed {seed}: {} ops ({} ok / {} failed / {} unknown), {} faults, {} keys, {} anomalies",
        totals.ok + totals.failed + totals.unknown,
        totals.ok,
        totals.failed,
        totals.unknown,
        totals.faults,
        totals.keys,
        totals.anomalies
    );
    drop(network);
    Ok(totals)
}

/// Waits until every node answers a linearizable read (200 or 404); the time it took.
fn wait_until_all_serve(nodes: usize, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut serving = vec![false; nodes];
    while start.elapsed() < limit {
        for (i, ok) in serving.iter_mut().enumerate().filter(|(_, ok)| !**ok) {
            *ok = matches!(client::request(i, "GET", "/v1/kv/probe", &[], b""), Ok(a) if a.status == 200 || a.status == 404);
        }
        if serving.iter().all(|&ok| ok) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Reads every key the clients touched from every node, retrying failures, and adds the
/// reads to the history (client `usize::MAX`).
fn final_reads(shared: &Shared) {
    let mut keys: Vec<u64> = shared.history.lock().expect("history lock").iter().map(|e| e.key).collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        for node in 0..shared.nodes {
            for _attempt in 0..10 {
                let event = client::perform(shared, usize::MAX, node, key, Request::Read);
                let done = event.outcome != Outcome::Failed;
                shared.history.lock().expect("history lock").push(event);
                if done {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Lines of the nodes' stderr files that report a panic.
fn panics(run_dir: &std::path::Path, nodes: usize) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for node in 0..nodes {
        let text = std::fs::read(run_dir.join(format!("n{}.stderr", node + 1))).unwrap_or_default();
        for line in String::from_utf8_lossy(&text).lines().filter(|l| l.contains("panicked")) {
            found.push((node, line.to_owned()));
        }
    }
    found
}
