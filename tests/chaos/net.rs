//! Network namespaces, the bridge between them, and the faults applied to them.
//!
//! Layout: one hub namespace holds a bridge `br0` with address `10.77.0.254/24`; each node
//! gets its own namespace with `eth0` at `10.77.0.<n>/24`, a veth pair whose other end is a
//! port of the bridge. Every address exists only inside these namespaces. The harness's
//! client threads enter the hub namespace with `setns(2)` (network namespaces are per
//! thread), so their sockets live there, and leave the test process's own namespace alone.
//!
//! Faults: partitions and one-way loss are nftables `drop` rules on a node's input (by
//! peer source address); random loss is `numgen random`; delay is `tc netem` when the
//! kernel has `sch_netem`, otherwise a slow link (`tc tbf`, queueing delay). Every
//! namespace is named `mmapd-chaos-<pid>-...`, removed on drop, and leftovers of dead
//! processes are removed at start.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

/// The prefix of every namespace this harness creates.
pub const PREFIX: &str = "mmapd-chaos-";

/// Runs a command, returning its stdout, or an error naming it with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program} {}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Installs `ip`, `nft` and `tc` with apt-get if any is missing.
pub fn ensure_tools() -> Result<(), String> {
    let missing = |tool: &str| Command::new(tool).arg("-V").output().is_err();
    if !missing("ip") && !missing("nft") && !missing("tc") {
        return Ok(());
    }
    eprintln!("chaos: installing iproute2 and nftables with apt-get");
    let install = || run("apt-get", &["install", "-y", "-q", "iproute2", "nftables"]);
    if install().is_err() {
        run("apt-get", &["update", "-q"])?;
        install()?;
    }
    Ok(())
}

/// Removes namespaces left by earlier runs whose process is gone (killing what runs in them).
pub fn remove_leftovers() {
    let Ok(list) = run("ip", &["netns", "list"]) else { return };
    for name in list.lines().filter_map(|line| line.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid = rest.split('-').next().unwrap_or("");
        if pid.parse::<u32>().is_ok() && std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("chaos: removing leftover namespace {name}");
        kill_all_in(name);
        let _ = run("ip", &["netns", "del", name]);
    }
}

/// SIGKILLs, by pid, every process in a namespace this harness created.
fn kill_all_in(namespace: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", namespace]) {
        for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) has no memory effects; the pid is in our own namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The hub and one namespace per node; removed on drop.
pub struct Network {
    /// The hub namespace (the bridge, and the clients).
    pub hub: String,
    /// Each node's namespace.
    pub nodes: Vec<String>,
    /// True when `tc netem` works here.
    pub netem: bool,
}

impl Network {
    /// Creates the hub and `count` node namespaces.
    pub fn create(count: usize) -> Result<Network, String> {
        let base = format!("{PREFIX}{}", std::process::id());
        let mut network = Network {
            hub: format!("{base}-hub"),
            nodes: (1..=count).map(|n| format!("{base}-n{n}")).collect(),
            netem: false,
        };
        // Names from an earlier run of this process (one run after another).
        network.remove();
        run("ip", &["netns", "add", &network.hub])?;
        let hub = network.hub.clone();
        run("ip", &["-n", &hub, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &hub, "addr", "add", "10.77.0.254/24", "dev", "br0"])?;
        run("ip", &["-n", &hub, "link", "set", "br0", "up"])?;
        for (i, node) in network.nodes.clone().iter().enumerate() {
            let port = format!("vn{}", i + 1);
            run("ip", &["netns", "add", node])?;
            run(
                "ip",
                &["-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", node],
            )?;
            run("ip", &["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            run("ip", &["-n", node, "link", "set", "lo", "up"])?;
            run("ip", &["-n", node, "addr", "add", &format!("{}/24", node_ip(i)), "dev", "eth0"])?;
            run("ip", &["-n", node, "link", "set", "eth0", "up"])?;
            nft(node, "add table inet chaos")?;
            nft(node, "add chain inet chaos input { type filter hook input priority 0; policy accept; }")?;
        }
        let probe = &network.nodes[0];
        network.netem =
            run("tc", &["-n", probe, "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "1ms"]).is_ok();
        let _ = run("tc", &["-n", probe, "qdisc", "del", "dev", "eth0", "root"]);
        Ok(network)
    }

    /// Drops, at node `to`, every packet from node `from` (one direction).
    pub fn drop_from(&self, to: usize, from: usize) -> Result<(), String> {
        nft(&self.nodes[to], &format!("add rule inet chaos input ip saddr {} drop", node_ip(from)))
    }

    /// Drops `percent` of every packet node `to` receives.
    pub fn lose(&self, to: usize, percent: u32) -> Result<(), String> {
        nft(&self.nodes[to], &format!("add rule inet chaos input numgen random mod 100 < {percent} drop"))
    }

    /// Delays node `node`'s outgoing packets: netem delay with jitter when available,
    /// else a slow link whose queue delays packets.
    pub fn slow(&self, node: usize, delay_ms: u32) -> Result<(), String> {
        let ns = &self.nodes[node];
        if self.netem {
            let delay = format!("{delay_ms}ms");
            let jitter = format!("{}ms", delay_ms / 2);
            run(
                "tc",
                &["-n", ns, "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", &delay, &jitter],
            )
            .map(drop)
        } else {
            let latency = format!("{}ms", delay_ms * 4);
            run(
                "tc",
                &[
                    "-n", ns, "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", "256kbit", "burst",
                    "4kb", "latency", &latency,
                ],
            )
            .map(drop)
        }
    }

    /// Removes every network fault.
    pub fn heal(&self) -> Result<(), String> {
        for ns in &self.nodes {
            nft(ns, "flush chain inet chaos input")?;
            let _ = run("tc", &["-n", ns, "qdisc", "del", "dev", "eth0", "root"]);
        }
        Ok(())
    }

    /// Kills what runs in the namespaces and deletes them; idempotent.
    fn remove(&self) {
        for ns in self.nodes.iter().chain([&self.hub]) {
            if std::path::Path::new(&format!("/run/netns/{ns}")).exists() {
                kill_all_in(ns);
                let _ = run("ip", &["netns", "del", ns]);
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Set when namespaces cannot be made: nodes then listen on loopback addresses.
pub static LOOPBACK: AtomicBool = AtomicBool::new(false);

/// Node `index`'s address (index from 0): `10.77.0.<n>` inside the namespaces, or
/// `127.77.0.<n>` (a loopback address) in the fallback.
pub fn node_ip(index: usize) -> Ipv4Addr {
    if LOOPBACK.load(Ordering::Relaxed) {
        Ipv4Addr::new(127, 77, 0, index as u8 + 1)
    } else {
        Ipv4Addr::new(10, 77, 0, index as u8 + 1)
    }
}

fn nft(namespace: &str, command: &str) -> Result<(), String> {
    let args: Vec<&str> = ["netns", "exec", namespace, "nft"].into_iter().chain(command.split(' ')).collect();
    run("ip", &args).map(drop)
}

/// Moves the calling thread into a named network namespace (its sockets are made there).
pub fn enter(namespace: &str) -> Result<(), String> {
    let file = File::open(format!("/run/netns/{namespace}")).map_err(|e| format!("open {namespace}: {e}"))?;
    // SAFETY: setns(2) on a valid fd we own; it changes only this thread's network namespace.
    let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if result != 0 {
        return Err(format!("setns {namespace}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// True when this process may create network namespaces (tried with a throwaway one).
pub fn namespaces_work() -> Result<(), String> {
    let name = format!("{PREFIX}{}-probe", std::process::id());
    run("ip", &["netns", "add", &name])?;
    let _ = run("ip", &["netns", "del", &name]);
    Ok(())
}
