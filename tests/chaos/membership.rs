//! The member-replace nemesis: what an operator does when a node's disk dies, done to a
//! running cluster under the clients' load (README, Operations: remove it, wipe its
//! directory, start it with `--join`).
//!
//! One replacement picks a victim (a follower; one time in four the leader, which steps
//! down once its removal commits, thesis §4.2.2) and one of three ways to lose it:
//!
//! - **live**: removed while it runs and hears everyone; it must stop by itself with exit
//!   status 10 and leave `REMOVED` in its data directory;
//! - **isolated**: cut off from every peer, then removed (a dead member may always be
//!   removed); the partition heals and it must stop once a majority answers that it was
//!   removed, or it stays up refused by everyone (counted, then killed);
//! - **crashed**: killed and its directory wiped first, then removed.
//!
//! One replacement in four also SIGKILLs the leader as soon as a member list shows the
//! new member (a learner, usually), and restarts it a second later: the next leader must
//! finish the promotion.
//!
//! With 5 nodes or more, one replacement in three also cuts a bystander (neither the
//! victim nor the leader) off from every peer until the new member is a voter: the
//! changes commit with the smallest quorum, and the bystander comes back to a
//! configuration it never saw.
//!
//! It is removed through a running member's admin socket (`mmapd-admin member remove`,
//! by id or by address; retried while the answer is 503 or 409), its directory is wiped,
//! and it is started with `--join` under the same address: the cluster must list a new
//! id there (the old one gone for good), promoted to voter, with as many members as
//! before. From then on the harness starts that slot with `--join`.
//!
//! Half the replacements also try to bring the node back under its old identity, which
//! must be refused with exit status 10 (RAFT-NOTES #18): its old `--peers` command line
//! on the wiped directory (before the removal, when it crashed: "must not come back as
//! its old self"; after it: "a removed id never comes back"), `--join` on the wiped
//! directory before the removal ("remove it first"), or its own command line on the
//! directory it was removed with. A start, a wrong exit status, or no decision at all is
//! an anomaly. So is a removed id listed again, a replacement under its old id, or a
//! member list that does not end with every slot a voter.

use std::time::{Duration, Instant};

use super::client::{request_within, Shared};
use super::cluster::{self, Cluster, Launch};
use super::nemesis::{find_leader, Stats};
use super::net::Network;
use super::rng::Rng;

/// How long to keep asking for a removal (a dead member's: `DEAD_REMOVE_BUDGET`).
const REMOVE_BUDGET: Duration = Duration::from_secs(10);
/// How long to keep asking for a dead member's removal.
const DEAD_REMOVE_BUDGET: Duration = Duration::from_secs(20);
/// Between removal attempts.
const REMOVE_PAUSE: Duration = Duration::from_millis(300);
/// How long a removed member that runs has to stop.
const STOP_LIMIT: Duration = Duration::from_secs(10);
/// How long a start under an old identity has to refuse.
const REFUSAL_LIMIT: Duration = Duration::from_secs(15);
/// How long a replacement has to become a voter.
const JOIN_LIMIT: Duration = Duration::from_secs(30);
/// Starts with `--join` tried before a refused replacement is left to the final checks.
const JOIN_TRIES: usize = 3;
/// How long the final check waits for every node's member list to settle.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);
/// How long a member-list query waits.
const QUERY_TIMEOUT: Duration = Duration::from_millis(1000);
/// The exit status of a node that must not start (or stopped) under its id.
const EXIT_REMOVED: i32 = 10;

/// A member as `GET /v1/members` lists it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Member {
    id: u64,
    address: String,
    voter: bool,
}

/// Node `node`'s member list (its applied cluster record), if it answers with one.
fn members_of(node: usize) -> Option<Vec<Member>> {
    let answer = request_within(node, "GET", "/v1/members?local=1", &[], b"", QUERY_TIMEOUT).ok()?;
    if answer.status != 200 {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
    let hex = |v: &serde_json::Value| v.as_str().and_then(|t| u64::from_str_radix(t, 16).ok());
    if hex(&value["cluster_id"]).unwrap_or(0) == 0 {
        return None;
    }
    let mut members: Vec<Member> = value["members"]
        .as_array()?
        .iter()
        .map(|m| {
            Some(Member {
                id: hex(&m["id"])?,
                address: m["address"].as_str()?.to_owned(),
                voter: m["role"] == "voter",
            })
        })
        .collect::<Option<_>>()?;
    members.sort();
    Some(members)
}

/// The member lists of the nodes other than `skip` that answer.
fn records(n: usize, skip: usize) -> Vec<Vec<Member>> {
    (0..n).filter(|&i| i != skip).filter_map(members_of).collect()
}

/// Node `node`'s own id, from its `/status`.
fn own_id(node: usize) -> Option<u64> {
    let answer = request_within(node, "GET", "/status", &[], b"", QUERY_TIMEOUT).ok()?;
    if answer.status != 200 {
        return None;
    }
    let status: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
    u64::from_str_radix(status["node_id"].as_str()?, 16).ok()
}

/// How the victim is lost before it is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loss {
    Live,
    Isolated,
    Crashed,
}

/// A start under the old identity, which must be refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attempt {
    /// The old `--peers` line on the wiped directory.
    WipedPeers,
    /// `--join` on the wiped directory, before the removal.
    WipedJoin,
    /// Its own command line on the directory it was removed with.
    RemovedDirectory,
}

/// One replacement's choices, all drawn before anything is done (so the schedule's draws
/// do not depend on what the nodes answer).
struct Choice {
    leader: bool,
    offset: usize,
    /// Cut a bystander off too (5 nodes or more), and which (an offset).
    bystander: Option<usize>,
    loss: Loss,
    by_id: bool,
    via: usize,
    /// The attempt, and whether it comes before the removal.
    attempt: Option<(Attempt, bool)>,
    /// Kill the leader as the new member appears.
    kill_leader: bool,
}

impl Choice {
    fn draw(rng: &mut Rng, n: usize, network: bool) -> Choice {
        let leader = rng.below(4) == 0;
        let offset = rng.index(n);
        let (bystander_roll, bystander_offset) = (rng.below(3), rng.index(n));
        let bystander = (network && n >= 5 && bystander_roll == 0).then_some(bystander_offset);
        let loss = match rng.below(4) {
            0 | 1 => Loss::Live,
            2 if network => Loss::Isolated,
            2 => Loss::Live,
            _ => Loss::Crashed,
        };
        let by_id = rng.below(2) == 0;
        let via = rng.index(n);
        let (attempt_roll, kind_roll) = (rng.below(2), rng.below(3));
        let attempt = (attempt_roll == 0).then_some(match (loss, kind_roll) {
            (Loss::Crashed, 0) => (Attempt::WipedPeers, true),
            (Loss::Crashed, 1) => (Attempt::WipedJoin, true),
            (Loss::Crashed, _) => (Attempt::WipedPeers, false),
            (_, 0) => (Attempt::RemovedDirectory, false),
            (_, _) => (Attempt::WipedPeers, false),
        });
        let kill_leader = rng.below(4) == 0;
        Choice { leader, offset, bystander, loss, by_id, via, attempt, kill_leader }
    }
}

/// What one replacement is doing, for its log lines and its timeline entry.
struct Replacement<'a> {
    shared: &'a Shared,
    victim: usize,
    address: String,
    old_id: u64,
    steps: Vec<String>,
}

impl Replacement<'_> {
    /// Logs a step and keeps it for the timeline.
    fn step(&mut self, text: String) {
        eprintln!("chaos:   {:6.2} s   n{}: {text}", self.shared.now() as f64 / 1e6, self.victim + 1);
        self.steps.push(text);
    }
}

/// Replaces one member (see the module doc); the timeline's description. Anomalies go
/// to `stats.findings`; Err only when the harness itself fails.
pub fn replace(
    rng: &mut Rng,
    network: Option<&Network>,
    cluster: &mut Cluster,
    shared: &Shared,
    stats: &mut Stats,
) -> Result<String, String> {
    let n = cluster.len();
    let choice = Choice::draw(rng, n, network.is_some());
    let leader = find_leader(n);
    let victim = match leader {
        Some(leader) if choice.leader => leader,
        _ => (0..n).map(|k| (k + choice.offset) % n).find(|&i| Some(i) != leader).unwrap_or(choice.offset),
    };
    let role = if Some(victim) == leader { "leader" } else { "follower" };
    let address = cluster::address(victim);
    let old_id = own_id(victim)
        .or_else(|| records(n, victim).iter().flatten().find(|m| m.address == address).map(|m| m.id));
    let loss = format!("{:?}", choice.loss).to_lowercase();
    let head = format!("member-replace n{} ({role}, {loss})", victim + 1);
    eprintln!("chaos:   {:6.2} s {head}", shared.now() as f64 / 1e6);
    let Some(old_id) = old_id else {
        return Ok(format!("{head}: skipped: no member list or status named its id"));
    };
    let mut job = Replacement { shared, victim, address, old_id, steps: Vec::new() };
    job.step(format!("old id {old_id:016x}"));
    let bystander = choice
        .bystander
        .filter(|_| network.is_some())
        .and_then(|offset| (0..n).map(|k| (k + offset) % n).find(|&i| i != victim && Some(i) != leader));
    if let (Some(bystander), Some(net)) = (bystander, network) {
        cut_off(net, n, bystander)?;
        job.step(format!("bystander n{} cut off from every peer until the end", bystander + 1));
    }
    let target = if choice.by_id { format!("{old_id:016x}") } else { job.address.clone() };
    // The members asked to remove it: every other one, from a drawn offset; a live
    // victim may be asked too (it forwards to the leader, or is the leader).
    let mut via: Vec<usize> = (0..n).map(|k| (k + choice.via) % n).filter(|&i| i != victim).collect();
    if choice.loss == Loss::Live && choice.via == victim {
        via.insert(0, victim);
    }

    // Whether it stopped by itself and left REMOVED (its directory may be tried again).
    let mut stopped = false;
    let removed = match choice.loss {
        Loss::Live => {
            let removed = remove(cluster, &mut job, &target, &via, REMOVE_BUDGET, stats);
            if removed {
                stopped = wait_stop(cluster, &mut job, stats);
            }
            removed
        }
        Loss::Isolated => {
            let net = network.expect("an isolated loss needs the network");
            cut_off(net, n, victim)?;
            job.step("isolated from every peer".into());
            let removed = remove(cluster, &mut job, &target, &via, REMOVE_BUDGET, stats);
            if removed {
                // Cut off, it cannot know yet; it must not stop on silence.
                std::thread::sleep(Duration::from_millis(500));
                if !cluster.is_running(victim) {
                    job.step("STOPPED while still cut off".into());
                    stats.findings.push(format!(
                        "n{} stopped while cut off from every peer, before anything could tell it of its \
                         removal (a removed node stops on its own log or a majority's answers, never on \
                         silence)",
                        victim + 1
                    ));
                }
            }
            net.heal()?;
            if let Some(bystander) = bystander {
                cut_off(net, n, bystander)?;
            }
            job.step("partition healed".into());
            if removed {
                stopped = wait_stop(cluster, &mut job, stats);
            }
            removed
        }
        Loss::Crashed => {
            cluster.kill(victim);
            let aside = cluster.data_dir(victim).with_extension("crashed");
            let _ = std::fs::remove_dir_all(&aside);
            std::fs::rename(cluster.data_dir(victim), &aside)
                .map_err(|e| format!("setting aside {}: {e}", cluster.data_dir(victim).display()))?;
            job.step("SIGKILL, data directory wiped".into());
            if let Some((attempt, true)) = choice.attempt {
                refuse_old_identity(cluster, &mut job, attempt, stats)?;
            }
            let removed = remove(cluster, &mut job, &target, &via, DEAD_REMOVE_BUDGET, stats);
            if removed {
                let _ = std::fs::remove_dir_all(&aside);
            } else {
                // It stays a member: it comes back as it was, with its data.
                let _ = std::fs::remove_dir_all(cluster.data_dir(victim));
                std::fs::rename(&aside, cluster.data_dir(victim))
                    .map_err(|e| format!("restoring {}: {e}", aside.display()))?;
                job.step("its data directory restored (restarted at heal)".into());
            }
            removed
        }
    };
    if !removed {
        stats.removals_failed += 1;
        return Ok(format!("{head}: {}", job.steps.join("; ")));
    }
    cluster.record_removed(old_id);
    if cluster.is_running(victim) {
        cluster.kill(victim);
    }
    if let Some((Attempt::RemovedDirectory, false)) = choice.attempt {
        if stopped {
            refuse_old_identity(cluster, &mut job, Attempt::RemovedDirectory, stats)?;
        } else {
            job.step("no restart from its directory: it did not stop by itself".into());
        }
    }
    wipe(cluster, victim)?;
    if let Some((Attempt::WipedPeers, false)) = choice.attempt {
        refuse_old_identity(cluster, &mut job, Attempt::WipedPeers, stats)?;
    }
    if rejoin(cluster, &mut job, choice.kill_leader, stats)? {
        stats.replacements += 1;
        if role == "leader" {
            stats.leader_replacements += 1;
        }
    } else {
        stats.replacements_unfinished += 1;
    }
    Ok(format!("{head}: {}", job.steps.join("; ")))
}

/// Cuts node `node` off from every other, both ways.
fn cut_off(net: &Network, n: usize, node: usize) -> Result<(), String> {
    for other in (0..n).filter(|&i| i != node) {
        net.drop_from(node, other)?;
        net.drop_from(other, node)?;
    }
    Ok(())
}

/// Removes the victim through the admin sockets of `via` in turn, until one succeeds,
/// some node's record shows it gone (an answer lost, but the change made), or `budget`
/// passes. True when it was removed.
fn remove(
    cluster: &mut Cluster,
    job: &mut Replacement,
    target: &str,
    via: &[usize],
    budget: Duration,
    stats: &mut Stats,
) -> bool {
    let n = cluster.len();
    let started = Instant::now();
    let mut attempts: usize = 0;
    let mut last = String::new();
    let gone = |job: &Replacement| {
        records(n, job.victim).iter().any(|members| members.iter().all(|m| m.id != job.old_id))
    };
    for round in 0.. {
        let node = via[round % via.len()];
        let answer = if node == job.victim || cluster.is_running(node) {
            attempts += 1;
            admin_remove(cluster, node, target)
        } else {
            Err("not running".into())
        };
        let done = match &answer {
            Ok(_) => true,
            Err(error) => {
                last = format!("via n{}: {error}", node + 1);
                error.contains("was removed") || gone(job)
            }
        };
        if done {
            stats.removal_retries += attempts.saturating_sub(1);
            let how = if answer.is_ok() { "" } else { ", its answer lost" };
            job.step(format!(
                "removed as {target} via n{}'s admin socket ({attempts} attempt{}{how}) in {:.1} s",
                node + 1,
                if attempts == 1 { "" } else { "s" },
                started.elapsed().as_secs_f64()
            ));
            return true;
        }
        if started.elapsed() >= budget {
            stats.removal_retries += attempts.saturating_sub(1);
            job.step(format!("removal given up after {attempts} attempts in {budget:?}; the last {last}"));
            return false;
        }
        std::thread::sleep(REMOVE_PAUSE);
    }
    false
}

/// `mmapd-admin --socket <node's> member remove <target>`: its output, or its error.
fn admin_remove(cluster: &Cluster, node: usize, target: &str) -> Result<String, String> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mmapd-admin"))
        .arg("--socket")
        .arg(cluster.admin_socket(node))
        .args(["--timeout", "5", "member", "remove", target])
        .output()
        .map_err(|e| format!("mmapd-admin: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

/// Waits for a removed victim that runs to stop: exit status 10, `REMOVED` left in its
/// directory. One that does not stop is counted and killed. True when it stopped so.
fn wait_stop(cluster: &mut Cluster, job: &mut Replacement, stats: &mut Stats) -> bool {
    let victim = job.victim;
    let started = Instant::now();
    match cluster.wait_exit(victim, STOP_LIMIT) {
        Some(status) if status.code() == Some(EXIT_REMOVED) => {
            let marker = cluster.data_dir(victim).join("REMOVED").exists();
            job.step(format!(
                "stopped with exit status 10 after {:.1} s{}",
                started.elapsed().as_secs_f64(),
                if marker { "" } else { ", but left no REMOVED file" }
            ));
            if !marker {
                stats.findings.push(format!(
                    "n{} stopped after its removal without leaving REMOVED in its data directory",
                    victim + 1
                ));
            }
            marker
        }
        Some(status) => {
            let last = cluster::last_lines(cluster.log(victim), 3);
            job.step(format!("exited with {status} after its removal"));
            stats.findings.push(format!(
                "n{} exited with {status} after its removal, not with status 10; its last log lines:\n{last}",
                victim + 1
            ));
            false
        }
        None if cluster.is_running(victim) => {
            stats.removals_stuck += 1;
            cluster.kill(victim);
            job.step(format!("still running {STOP_LIMIT:?} after its removal: SIGKILL"));
            false
        }
        None => {
            job.step("was not running".into());
            false
        }
    }
}

/// Wipes the victim's data directory.
fn wipe(cluster: &Cluster, victim: usize) -> Result<(), String> {
    let dir = cluster.data_dir(victim);
    match std::fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("wiping {}: {error}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Starts the victim under its old identity, which must be refused with exit status 10;
/// anything else is an anomaly. Leaves it stopped (and a wiped directory wiped).
fn refuse_old_identity(
    cluster: &mut Cluster,
    job: &mut Replacement,
    attempt: Attempt,
    stats: &mut Stats,
) -> Result<(), String> {
    let victim = job.victim;
    let others: Vec<String> = (0..cluster.len()).filter(|&i| i != victim).map(cluster::address).collect();
    let (launch, what) = match attempt {
        Attempt::WipedPeers => (Launch::Peers, "its old --peers command line, data directory wiped"),
        Attempt::WipedJoin => {
            (Launch::Join(others.join(",")), "--join, data directory wiped, before its removal")
        }
        Attempt::RemovedDirectory => {
            (cluster.launch(victim).clone(), "its own command line, on the directory it was removed with")
        }
    };
    cluster.note(victim, &format!("starting it with {what}: it must refuse to start (exit status 10)"));
    cluster.spawn(victim, &launch)?;
    let started = Instant::now();
    let outcome = loop {
        if let Some(status) = cluster.wait_exit(victim, Duration::from_millis(100)) {
            let last = cluster::last_lines(cluster.log(victim), 1);
            if status.code() == Some(EXIT_REMOVED) {
                stats.old_identity_refused += 1;
                break format!(
                    "started with {what}: refused, exit status 10 after {:.1} s ({})",
                    started.elapsed().as_secs_f64(),
                    last.trim()
                );
            }
            stats.findings.push(format!(
                "n{} started with {what} exited with {status}, not the refusal's status 10: {last}",
                victim + 1
            ));
            break format!("started with {what}: exited with {status}, not 10 ({})", last.trim());
        }
        if own_id(victim).is_some() {
            stats.old_identity_started += 1;
            cluster.kill(victim);
            let last = cluster::last_lines(cluster.log(victim), 5);
            stats.findings.push(format!(
                "n{} (old id {:016x}) STARTED with {what}: a wiped or removed member came back as its old \
                 self; its log:\n{last}",
                victim + 1,
                job.old_id
            ));
            break format!("started with {what}: IT STARTED (serving /status): killed");
        }
        if started.elapsed() >= REFUSAL_LIMIT {
            stats.old_identity_undecided += 1;
            cluster.kill(victim);
            let last = cluster::last_lines(cluster.log(victim), 3);
            stats.findings.push(format!(
                "n{} started with {what} neither refused nor started within {REFUSAL_LIMIT:?} (killed); its \
                 log:\n{last}",
                victim + 1
            ));
            break format!("started with {what}: no decision within {REFUSAL_LIMIT:?}: killed");
        }
    };
    job.step(outcome);
    if attempt != Attempt::RemovedDirectory {
        wipe(cluster, victim)?;
    }
    Ok(())
}

/// Starts the wiped victim with `--join` (its command line from now on) and waits until
/// a member list shows a new id at its address, a voter, with the old one gone; with
/// `kill_leader`, the leader is killed (and restarted a second later) as soon as a list
/// shows the new member. True when it did; refused joins are retried a few times.
fn rejoin(
    cluster: &mut Cluster,
    job: &mut Replacement,
    kill_leader: bool,
    stats: &mut Stats,
) -> Result<bool, String> {
    let n = cluster.len();
    let victim = job.victim;
    let others: Vec<String> = (0..n).filter(|&i| i != victim).map(cluster::address).collect();
    cluster.set_launch(victim, Launch::Join(others.join(",")));
    let started = Instant::now();
    let mut leader_killed = !kill_leader;
    for attempt in 1..=JOIN_TRIES {
        cluster.note(victim, "starting it with --join: a replacement, under a new id");
        cluster.restart(victim)?;
        loop {
            if let Some(status) = cluster.wait_exit(victim, Duration::from_millis(100)) {
                let last = cluster::last_lines(cluster.log(victim), 1);
                if status.code() == Some(EXIT_REMOVED) {
                    stats.joins_refused += 1;
                    job.step(format!("join {attempt} refused: {}", last.trim()));
                    wipe(cluster, victim)?;
                    std::thread::sleep(Duration::from_millis(500));
                    break;
                }
                job.step(format!("exited with {status} while joining: {}", last.trim()));
                stats.findings.push(format!(
                    "n{} exited with {status} while joining as a replacement: {last}",
                    victim + 1
                ));
                return Ok(false);
            }
            let lists = records(n, victim);
            let listed = |m: &Member| m.address == job.address && m.id != job.old_id;
            if !leader_killed && lists.iter().flatten().any(listed) {
                leader_killed = true;
                if let Some(leader) = find_leader(n).filter(|&l| l != victim) {
                    let new = lists.iter().flatten().find(|m| listed(m)).expect("listed");
                    let role = if new.voter { "a voter already" } else { "a learner" };
                    cluster.kill(leader);
                    job.step(format!("SIGKILL leader n{} as the new member appeared ({role})", leader + 1));
                    stats.join_leader_kills += 1;
                    std::thread::sleep(Duration::from_secs(1));
                    cluster.restart(leader)?;
                    continue;
                }
            }
            if let Some(members) = lists.into_iter().find(|members| {
                members.iter().any(|m| m.address == job.address && m.id != job.old_id && m.voter)
            }) {
                let new_id = members.iter().find(|m| m.address == job.address).expect("found").id;
                job.step(format!(
                    "joined as {new_id:016x}, a voter after {:.1} s",
                    started.elapsed().as_secs_f64()
                ));
                check_replacement(cluster, job, new_id, &members, stats);
                return Ok(true);
            }
            if started.elapsed() >= JOIN_LIMIT {
                let seen = records(n, victim).into_iter().next();
                job.step(format!(
                    "not listed as a new voter within {JOIN_LIMIT:?} (a member list: {seen:?})"
                ));
                return Ok(false);
            }
        }
    }
    Ok(false)
}

/// The replacement's record: a new id, never a removed one, the old one gone, the
/// cluster's size kept; and the node says it is that id.
fn check_replacement(
    cluster: &Cluster,
    job: &mut Replacement,
    new_id: u64,
    members: &[Member],
    stats: &mut Stats,
) {
    let victim = job.victim + 1;
    if cluster.removed().contains(&new_id) {
        stats.findings.push(format!("n{victim}'s replacement was given {new_id:016x}, a removed id"));
    }
    if let Some(old) = members.iter().find(|m| cluster.removed().contains(&m.id)) {
        stats.findings.push(format!("removed id {:016x} listed again: {members:?}", old.id));
    }
    if members.len() != cluster.len() {
        stats.findings.push(format!(
            "after n{victim}'s replacement the cluster lists {} members, not {}: {members:?}",
            members.len(),
            cluster.len()
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut own = own_id(job.victim);
    while own.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        own = own_id(job.victim);
    }
    match own {
        Some(id) if id != new_id => stats.findings.push(format!(
            "n{victim}'s replacement says it is {id:016x}, the cluster lists {new_id:016x} at its address"
        )),
        Some(_) => {}
        None => job.step("its /status did not answer".into()),
    }
}

/// After the run, with every fault healed: every node lists the same members, one voter
/// per slot address, none of them a removed id. The problems, if any (empty: none).
pub fn final_check(n: usize, removed: &[u64]) -> Option<String> {
    let started = Instant::now();
    loop {
        let lists: Vec<Option<Vec<Member>>> = (0..n).map(members_of).collect();
        let problems = problems(n, removed, &lists);
        if problems.is_empty() {
            return None;
        }
        if started.elapsed() >= SETTLE_LIMIT {
            return Some(format!(
                "membership after healing (within {SETTLE_LIMIT:?}): {}",
                problems.join("; ")
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn problems(n: usize, removed: &[u64], lists: &[Option<Vec<Member>>]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expected: Vec<String> = (0..n).map(cluster::address).collect();
    expected.sort();
    for (node, list) in lists.iter().enumerate() {
        let Some(list) = list else {
            problems.push(format!("n{} did not answer GET /v1/members with a cluster", node + 1));
            continue;
        };
        let mut addresses: Vec<String> = list.iter().map(|m| m.address.clone()).collect();
        addresses.sort();
        let mut ids: Vec<u64> = list.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        ids.dedup();
        let wrong = addresses != expected
            || ids.len() != list.len()
            || list.iter().any(|m| !m.voter || removed.contains(&m.id));
        if wrong {
            problems.push(format!(
                "n{} lists {list:?} (expected one voter at each of {expected:?}, none of the removed ids \
                 {removed:x?})",
                node + 1
            ));
        }
    }
    let answered: Vec<&Vec<Member>> = lists.iter().flatten().collect();
    if answered.windows(2).any(|pair| pair[0] != pair[1]) {
        problems.push(format!("the nodes' member lists differ: {lists:?}"));
    }
    problems
}
