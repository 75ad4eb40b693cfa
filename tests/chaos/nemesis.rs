//! The nemesis: a seeded schedule of faults, applied one at a time for a random while,
//! each followed by a heal and a quiet gap. Every fault is recorded on the timeline.

use std::time::Duration;

use super::client::{request, Shared};
use super::cluster::Cluster;
use super::net::Network;
use super::rng::Rng;

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

/// Applies faults until `seconds` have passed; returns the timeline.
pub fn run(
    seconds: u64,
    rng: &mut Rng,
    network: Option<&Network>,
    cluster: &mut Cluster,
    shared: &Shared,
) -> Result<Vec<FaultRecord>, String> {
    let mut timeline = Vec::new();
    let end = shared.start.elapsed() + Duration::from_secs(seconds);
    let n = cluster.len();
    while shared.start.elapsed() < end {
        // Without namespaces only process faults are possible.
        let kinds: &[&str] = if network.is_some() { &KINDS } else { &KINDS[5..8] };
        let kind = kinds[rng.index(kinds.len())];
        let active = Duration::from_millis(rng.between(1000, 4000));
        let start = shared.now();
        let description = apply(kind, rng, network, cluster, n)?;
        eprintln!("chaos:   {:6.2} s {description} for {:.1} s", start as f64 / 1e6, active.as_secs_f64());
        std::thread::sleep(active);
        heal(network, cluster)?;
        timeline.push(FaultRecord { start, end: shared.now(), description });
        std::thread::sleep(Duration::from_millis(rng.between(300, 1500)));
    }
    Ok(timeline)
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
