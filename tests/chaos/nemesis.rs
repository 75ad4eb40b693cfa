//! The nemesis: a seeded schedule of faults, applied one at a time for a random while,
//! each followed by a heal and a quiet gap. Every fault is recorded on the timeline.
//!
//! In runs that take snapshots (`Plan::snapshots`), one fault in four is a long kill: a
//! follower stays down 4–8 s while the clients write, and before it comes back the leader
//! takes a snapshot, so it must be sent InstallSnapshot (§7). Alongside the faults, a side
//! nemesis (`side_run`) acts at random moments: admin snapshots (`mmapd-admin snapshot`)
//! in snapshot runs, and forged peer messages (`forge.rs`). One fault in eight (when the
//! plan has them) replaces a member instead (`membership.rs`): removed, wiped, joined
//! again under a new id.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::client::{request, Shared};
use super::cluster::Cluster;
use super::forge::{self, Forgery, View};
use super::membership;
use super::net::Network;
use super::rng::Rng;

/// How long a status query from the nemesis waits.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a rejoining follower has to show the leader's snapshot before the nemesis
/// stops watching (not a failure: the final checks judge recovery).
const INSTALL_WATCH: Duration = Duration::from_secs(3);

/// What the faults of one run include besides the schedule's kinds.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The nodes run with a small `--snapshot-entries`: take admin snapshots and make
    /// long kills that need InstallSnapshot.
    pub snapshots: bool,
    /// The forged-message kinds the side nemesis sends.
    pub forgeries: Vec<Forgery>,
    /// Replace members (remove, wipe, join again under a new id) among the faults.
    pub replacements: bool,
    /// The nodes speak TLS to clients and peers, mutual TLS between them; the forger
    /// speaks TLS with no certificate, so every forgery must be refused (403).
    pub tls: bool,
}

/// Counts of what the nemeses did, for the summary.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Admin snapshots that answered with an index.
    pub admin_snapshots: usize,
    /// Admin snapshots that failed (node down, paused, not leader of anything...).
    pub admin_snapshot_failures: usize,
    /// Times a node's first log index was seen to move forward (a snapshot taken or
    /// installed, and the log compacted): a lower bound, seen by sampling `/status`.
    pub compactions_seen: usize,
    /// Long kills whose follower came back behind the leader's snapshot (its log ended
    /// before the leader's first index): it needs InstallSnapshot.
    pub installs_needed: usize,
    /// Of those, followers whose own first index reached the leader's within a few
    /// seconds of restarting (the snapshot arrived).
    pub installs_confirmed: usize,
    /// Forged bodies and streams sent.
    pub forged: usize,
    /// Of those, answered 204 (decoded and handed to the node), or streams upgraded (101)
    /// and written.
    pub forged_accepted: usize,
    /// Of those, refused (400 for what does not decode).
    pub forged_refused: usize,
    /// Of those, unanswered (node down, paused, cut off).
    pub forged_unanswered: usize,
    /// Forgeries not sent for want of a leader or follower to send them to.
    pub forged_skipped: usize,
    /// In a TLS run, forgeries refused with 403 (no peer certificate): what must happen.
    pub forged_refused_certificate: usize,
    /// Members replaced: removed, wiped, joined again under a new id and a voter again.
    pub replacements: usize,
    /// Of those, the victim was the leader.
    pub leader_replacements: usize,
    /// Replacements whose member was removed but not seen a voter again (a refused join, a
    /// slow one).
    pub replacements_unfinished: usize,
    /// Removals given up (the member stays, with its data).
    pub removals_failed: usize,
    /// Removal requests made again (no leader, a change pending, an answer lost...).
    pub removal_retries: usize,
    /// Removed members that did not stop by themselves within a limit (then killed).
    pub removals_stuck: usize,
    /// Starts under an old identity refused with exit status 10.
    pub old_identity_refused: usize,
    /// Starts under an old identity that started (each an anomaly).
    pub old_identity_started: usize,
    /// Starts under an old identity neither refused nor started in time (each an anomaly).
    pub old_identity_undecided: usize,
    /// Replacements' joins refused (exit status 10).
    pub joins_refused: usize,
    /// Leaders killed as a replacement appeared in the member list (before its promotion).
    pub join_leader_kills: usize,
    /// Anomalies the member-replace nemesis found.
    pub findings: Vec<String>,
}

impl Stats {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Stats) {
        self.admin_snapshots += other.admin_snapshots;
        self.admin_snapshot_failures += other.admin_snapshot_failures;
        self.compactions_seen += other.compactions_seen;
        self.installs_needed += other.installs_needed;
        self.installs_confirmed += other.installs_confirmed;
        self.forged += other.forged;
        self.forged_accepted += other.forged_accepted;
        self.forged_refused += other.forged_refused;
        self.forged_unanswered += other.forged_unanswered;
        self.forged_skipped += other.forged_skipped;
        self.forged_refused_certificate += other.forged_refused_certificate;
        self.replacements += other.replacements;
        self.leader_replacements += other.leader_replacements;
        self.replacements_unfinished += other.replacements_unfinished;
        self.removals_failed += other.removals_failed;
        self.removal_retries += other.removal_retries;
        self.removals_stuck += other.removals_stuck;
        self.old_identity_refused += other.old_identity_refused;
        self.old_identity_started += other.old_identity_started;
        self.old_identity_undecided += other.old_identity_undecided;
        self.joins_refused += other.joins_refused;
        self.join_leader_kills += other.join_leader_kills;
        self.findings.extend(other.findings.iter().cloned());
    }
}

/// One fault as it happened, for the report.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    /// Microseconds since the run began.
    pub start: u64,
    /// Microseconds since the run began (when it was healed).
    pub end: u64,
    /// What it was.
    pub description: String,
}

/// The kinds of fault, drawn with equal weight.
const KINDS: [&str; 10] = [
    "majority",
    "isolate-leader",
    "bridge",
    "ring",
    "one-way",
    "kill",
    "kill-leader",
    "pause",
    "delay",
    "loss",
];

/// The long kill of a follower, for a snapshot run.
const LONG_KILL: &str = "kill-follower-long";

/// One fault in this many is a member replacement, in plans that have them.
const REPLACE_ONE_IN: u64 = 8;
/// A replacement starts only with this much of the run left (it takes a few seconds).
const REPLACE_MIN_LEFT: Duration = Duration::from_secs(6);

/// A long kill in progress: who, and where its log ended.
struct LongKill {
    victim: usize,
    last_index: Option<u64>,
}

/// Applies faults until `seconds` have passed; returns the timeline.
pub fn run(
    seconds: u64,
    rng: &mut Rng,
    plan: &Plan,
    network: Option<&Network>,
    cluster: &mut Cluster,
    shared: &Shared,
    stats: &mut Stats,
) -> Result<Vec<FaultRecord>, String> {
    let mut timeline = Vec::new();
    let end = shared.start.elapsed() + Duration::from_secs(seconds);
    let n = cluster.len();
    while shared.start.elapsed() < end {
        cluster.reap();
        // Without namespaces only process faults are possible.
        let kinds: &[&str] = if network.is_some() { &KINDS } else { &KINDS[5..8] };
        let kind = kinds[rng.index(kinds.len())];
        let mut active = Duration::from_millis(rng.between(1000, 4000));
        // Drawn every time, so the schedule does not depend on timing.
        let (long_roll, long_active) = (rng.below(4), Duration::from_millis(rng.between(4000, 8000)));
        let replace_roll = rng.below(REPLACE_ONE_IN);
        let remaining = end.saturating_sub(shared.start.elapsed());
        if plan.replacements && replace_roll == 0 && remaining >= REPLACE_MIN_LEFT {
            let start = shared.now();
            let description = membership::replace(rng, network, cluster, shared, stats)?;
            heal(network, cluster)?;
            timeline.push(FaultRecord { start, end: shared.now(), description });
            std::thread::sleep(Duration::from_millis(rng.between(300, 1500)));
            continue;
        }
        let kind = if plan.snapshots && long_roll == 0 && remaining >= long_active {
            active = long_active;
            LONG_KILL
        } else {
            kind
        };
        let start = shared.now();
        let (mut description, long_kill) = apply(kind, rng, network, cluster, n)?;
        eprintln!("chaos:   {:6.2} s {description} for {:.1} s", start as f64 / 1e6, active.as_secs_f64());
        std::thread::sleep(active);
        let leader_snapshot = long_kill.as_ref().map(|_| snapshot_leader(cluster, n, stats));
        heal(network, cluster)?;
        if let (Some(long), Some(note)) = (long_kill, leader_snapshot) {
            let outcome = watch_rejoin(&long, note, n, stats);
            eprintln!("chaos:   {:6.2} s n{} back: {outcome}", shared.now() as f64 / 1e6, long.victim + 1);
            description = format!("{description}; {outcome}");
        }
        timeline.push(FaultRecord { start, end: shared.now(), description });
        std::thread::sleep(Duration::from_millis(rng.between(300, 1500)));
    }
    Ok(timeline)
}

/// Before a long-killed follower comes back: the leader takes a snapshot (so that its
/// log starts past the follower's); the leader and its first index, or why not.
fn snapshot_leader(cluster: &Cluster, n: usize, stats: &mut Stats) -> Result<(usize, u64), String> {
    let leader = find_leader(n).ok_or("no leader found")?;
    let taken = admin_snapshot(&cluster.admin_socket(leader));
    match &taken {
        Ok(_) => stats.admin_snapshots += 1,
        Err(_) => stats.admin_snapshot_failures += 1,
    }
    let view = forge::view(leader, n, STATUS_TIMEOUT).ok_or("the leader's status did not answer")?;
    taken
        .map(|_| (leader, view.first_index))
        .map_err(|e| format!("leader n{} snapshot failed: {e}", leader + 1))
}

/// After a long kill: whether the follower needed InstallSnapshot, and whether it got it.
fn watch_rejoin(
    long: &LongKill,
    leader: Result<(usize, u64), String>,
    n: usize,
    stats: &mut Stats,
) -> String {
    let (leader, leader_first) = match leader {
        Ok(found) => found,
        Err(why) => return format!("no leader snapshot ({why})"),
    };
    let Some(last) = long.last_index else {
        return format!(
            "leader n{} log starts at {leader_first}; the follower's log end is unknown",
            leader + 1
        );
    };
    if leader_first <= last + 1 {
        return format!(
            "leader n{} log starts at {leader_first}, the follower's ended at {last}: entries suffice",
            leader + 1
        );
    }
    stats.installs_needed += 1;
    let started = Instant::now();
    while started.elapsed() < INSTALL_WATCH {
        if forge::view(long.victim, n, STATUS_TIMEOUT).is_some_and(|v| v.first_index >= leader_first) {
            stats.installs_confirmed += 1;
            return format!(
                "its log ended at {last}, leader n{}'s starts at {leader_first}: InstallSnapshot needed, \
                 received within {:.1} s",
                leader + 1,
                started.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    format!(
        "its log ended at {last}, leader n{}'s starts at {leader_first}: InstallSnapshot needed, \
         not seen within {INSTALL_WATCH:?}",
        leader + 1
    )
}

/// `mmapd-admin --socket <socket> snapshot`: the snapshot's index, or the tool's error.
pub fn admin_snapshot(socket: &Path) -> Result<String, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_mmapd-admin"))
        .arg("--socket")
        .arg(socket)
        .args(["--timeout", "3", "snapshot"])
        .output()
        .map_err(|e| format!("mmapd-admin: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

/// The side nemesis: until `stop`, at random moments (0.2–1.5 s apart), an admin
/// snapshot of a random node (in snapshot runs, one action in three) or a forged
/// message; and each time, every node's status is sampled to count compactions. The
/// kind and target of each action come from `rng`; their contents from a generator
/// forked for each, so a seed replays the same schedule whatever the nodes answered.
pub fn side_run(
    rng: &mut Rng,
    plan: &Plan,
    sockets: &[PathBuf],
    shared: &Shared,
    stop: &AtomicBool,
    stats: &mut Stats,
) -> Vec<FaultRecord> {
    let n = sockets.len();
    let mut timeline = Vec::new();
    let mut first_seen = vec![0u64; n];
    if !plan.snapshots && plan.forgeries.is_empty() {
        return timeline;
    }
    loop {
        let pause = Duration::from_millis(rng.between(200, 1500));
        let snapshot_roll = rng.below(3);
        let kind = if plan.forgeries.is_empty() {
            None
        } else {
            Some(plan.forgeries[rng.index(plan.forgeries.len())])
        };
        let target = rng.index(n);
        let mut content = rng.fork();
        let deadline = Instant::now() + pause;
        while Instant::now() < deadline {
            if stop.load(Ordering::Relaxed) {
                return timeline;
            }
            std::thread::sleep(
                Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now())),
            );
        }
        let views: Vec<Option<View>> = (0..n).map(|i| forge::view(i, n, STATUS_TIMEOUT)).collect();
        for (seen, view) in first_seen.iter_mut().zip(&views) {
            if let Some(view) = view {
                if view.first_index > *seen {
                    if *seen > 0 {
                        stats.compactions_seen += 1;
                    }
                    *seen = view.first_index;
                }
            }
        }
        let start = shared.now();
        let description = match kind {
            Some(kind) if !(plan.snapshots && snapshot_roll == 0) => {
                let sent = forge::send(kind, &mut content, target, &views);
                if plan.tls {
                    match sent.answer {
                        forge::Answer::Refused(403) => stats.forged_refused_certificate += 1,
                        forge::Answer::Delivered | forge::Answer::Streamed | forge::Answer::Refused(_) => {
                            stats.findings.push(format!(
                                "over TLS, a forger with no certificate got past the peer routes' check: {}",
                                sent.description
                            ))
                        }
                        forge::Answer::Unanswered(_) | forge::Answer::Skipped => {}
                    }
                }
                match sent.answer {
                    forge::Answer::Skipped => stats.forged_skipped += 1,
                    forge::Answer::Delivered | forge::Answer::Streamed => stats.forged_accepted += 1,
                    forge::Answer::Refused(_) => stats.forged_refused += 1,
                    forge::Answer::Unanswered(_) => stats.forged_unanswered += 1,
                }
                if sent.answer != forge::Answer::Skipped {
                    stats.forged += 1;
                }
                sent.description
            }
            _ => match admin_snapshot(&sockets[target]) {
                Ok(answer) => {
                    stats.admin_snapshots += 1;
                    format!("admin snapshot n{}: {answer}", target + 1)
                }
                Err(error) => {
                    stats.admin_snapshot_failures += 1;
                    format!("admin snapshot n{}: failed: {error}", target + 1)
                }
            },
        };
        eprintln!("chaos:   {:6.2} s {description}", start as f64 / 1e6);
        timeline.push(FaultRecord { start, end: start, description });
    }
}

/// Removes every fault: network rules, paused and killed nodes.
pub fn heal(network: Option<&Network>, cluster: &mut Cluster) -> Result<(), String> {
    if let Some(network) = network {
        network.heal()?;
    }
    cluster.heal()
}

fn apply(
    kind: &str,
    rng: &mut Rng,
    network: Option<&Network>,
    cluster: &mut Cluster,
    n: usize,
) -> Result<(String, Option<LongKill>), String> {
    if kind == LONG_KILL {
        let leader = find_leader(n);
        let offset = rng.index(n);
        let victim = (0..n).map(|i| (i + offset) % n).find(|&i| Some(i) != leader).unwrap_or(offset);
        let last_index = forge::view(victim, n, STATUS_TIMEOUT).map(|v| v.last_index);
        cluster.kill(victim);
        let log = last_index.map_or("unknown".to_owned(), |i| i.to_string());
        let description =
            format!("SIGKILL follower n{} for long (log ends at {log}; restart at heal)", victim + 1);
        return Ok((description, Some(LongKill { victim, last_index })));
    }
    apply_short(kind, rng, network, cluster, n).map(|description| (description, None))
}

fn apply_short(
    kind: &str,
    rng: &mut Rng,
    network: Option<&Network>,
    cluster: &mut Cluster,
    n: usize,
) -> Result<String, String> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.index(i + 1));
    }
    let name = |nodes: &[usize]| nodes.iter().map(|i| format!("n{}", i + 1)).collect::<Vec<_>>().join(",");
    let leader = find_leader(n);
    let leader_or_random = leader.unwrap_or(order[0]);
    match (kind, network) {
        ("majority", Some(net)) => {
            let minority = rng.between(1, (n as u64 - 1) / 2) as usize;
            let (small, large) = order.split_at(minority);
            partition(net, small, large)?;
            Ok(format!("partition {} | {}", name(small), name(large)))
        }
        ("isolate-leader", Some(net)) => {
            let others: Vec<usize> = (0..n).filter(|&i| i != leader_or_random).collect();
            partition(net, &[leader_or_random], &others)?;
            Ok(format!(
                "isolate leader n{} ({})",
                leader_or_random + 1,
                if leader.is_some() { "found" } else { "none found, random" }
            ))
        }
        ("bridge", Some(net)) => {
            // Two sides that only the middle node hears both of.
            let middle = order[0];
            let half = (n - 1) / 2;
            let (left, right) = order[1..].split_at(half);
            partition(net, left, right)?;
            Ok(format!("bridge {} | n{} | {}", name(left), middle + 1, name(right)))
        }
        ("ring", Some(net)) => {
            // Each node hears only its two neighbours in a random ring (with 3 nodes this
            // is no fault, so one link is cut both ways instead).
            if n <= 3 {
                net.drop_from(order[0], order[1])?;
                net.drop_from(order[1], order[0])?;
                return Ok(format!("cut link n{} - n{}", order[0] + 1, order[1] + 1));
            }
            for (position, &node) in order.iter().enumerate() {
                for (other_position, &other) in order.iter().enumerate() {
                    let distance = position.abs_diff(other_position);
                    if distance > 1 && distance < n - 1 {
                        net.drop_from(node, other)?;
                    }
                }
            }
            Ok(format!("ring {}", name(&order)))
        }
        ("one-way", Some(net)) => {
            // The node sends but hears no peer.
            let deaf = if rng.below(2) == 0 { leader_or_random } else { order[0] };
            for other in (0..n).filter(|&i| i != deaf) {
                net.drop_from(deaf, other)?;
            }
            Ok(format!("one-way: n{} hears no peer", deaf + 1))
        }
        ("delay", Some(net)) => {
            let count = rng.between(1, n as u64) as usize;
            let delay_ms = rng.between(20, 200) as u32;
            for &node in &order[..count] {
                net.slow(node, delay_ms)?;
            }
            let how = if net.netem { "netem delay" } else { "slow link (tbf; no netem here)" };
            Ok(format!("{how} ~{delay_ms} ms on {}", name(&order[..count])))
        }
        ("loss", Some(net)) => {
            let percent = rng.between(10, 40) as u32;
            for node in 0..n {
                net.lose(node, percent)?;
            }
            Ok(format!("{percent}% packet loss on every node"))
        }
        ("kill" | "kill-leader", _) => {
            let victim = if kind == "kill-leader" { leader_or_random } else { order[0] };
            cluster.kill(victim);
            Ok(format!("SIGKILL n{} (restart at heal)", victim + 1))
        }
        ("pause", _) => {
            let victim = if rng.below(2) == 0 { leader_or_random } else { order[0] };
            cluster.pause(victim, true);
            Ok(format!("SIGSTOP n{} (SIGCONT at heal)", victim + 1))
        }
        (other, _) => Err(format!("fault {other} needs network namespaces")),
    }
}

/// Cuts every link between `a` and `b`, both ways.
fn partition(network: &Network, a: &[usize], b: &[usize]) -> Result<(), String> {
    for &x in a {
        for &y in b {
            network.drop_from(x, y)?;
            network.drop_from(y, x)?;
        }
    }
    Ok(())
}

/// The node that says it is the leader, if one answers quickly.
pub fn find_leader(n: usize) -> Option<usize> {
    (0..n).find(|&i| match request(i, "GET", "/status", &[], b"") {
        Ok(answer) if answer.status == 200 => serde_json::from_slice::<serde_json::Value>(&answer.body)
            .map(|status| status["state"] == "leader")
            .unwrap_or(false),
        _ => false,
    })
}
