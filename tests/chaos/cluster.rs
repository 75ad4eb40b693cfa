//! The `mmapd` processes: one per node namespace, each with its data directory and its
//! stderr captured to a file, started through `ip netns exec` (which execs, so the child's
//! pid is the node's and SIGKILL/SIGSTOP reach it).
//!
//! The cluster knows which exits it caused (SIGKILL); any other exit it finds (by
//! `reap`, before every kill and restart, and at the end) is recorded as an `Exit` with
//! the node's last log lines, and the node is restarted at the next heal.
//!
//! The nodes share a cluster secret (`SECRET`): joins and forwarded membership changes
//! from another host need one.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use super::net::{node_ip, Network};

/// The port every node listens on (each in its own namespace).
pub const PORT: u16 = 3001;

/// Short Raft timings so faults exercise elections quickly.
const TIMINGS: [&str; 8] = [
    "--tick-ms",
    "5",
    "--heartbeat-interval-ms",
    "25",
    "--election-timeout-ms",
    "250",
    "--request-timeout-ms",
    "2000",
];

/// The cluster secret every node is started with (and the forger carries).
pub const SECRET: &str = "chaos-cluster-secret";

/// Log lines kept with an exit nobody caused.
const EXIT_LOG_LINES: usize = 20;

/// A node that exited without being killed.
#[derive(Clone, Debug)]
pub struct Exit {
    /// Index from 0.
    pub node: usize,
    /// Seconds since the run began when the exit was found (it happened before).
    pub found_at: f64,
    /// The exit status.
    pub status: String,
    /// The last lines of the node's stderr when it was found.
    pub last_lines: String,
}

/// A running (or killed, or paused) node.
struct Node {
    /// `None` in the loopback fallback.
    namespace: Option<String>,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// The nodes of one run.
pub struct Cluster {
    nodes: Vec<Node>,
    peers: String,
    /// The file holding `SECRET`.
    secret_file: PathBuf,
    /// `--snapshot-entries`, when the run sets it.
    snapshot_entries: Option<u64>,
    /// When the run began.
    epoch: Instant,
    /// Exits the harness did not cause, in the order found.
    exits: Vec<Exit>,
}

impl Cluster {
    /// Starts `count` nodes, one per namespace of `network` (or on loopback without
    /// one), with files under `dir`, and `--snapshot-entries` when given.
    pub fn start(
        count: usize,
        network: Option<&Network>,
        dir: &Path,
        snapshot_entries: Option<u64>,
        epoch: Instant,
    ) -> Result<Cluster, String> {
        let peers: Vec<String> = (0..count).map(|i| format!("{}:{PORT}", node_ip(i))).collect();
        let secret_file = dir.join("cluster-secret");
        std::fs::write(&secret_file, SECRET).map_err(|e| format!("{}: {e}", secret_file.display()))?;
        let mut cluster = Cluster {
            nodes: (0..count)
                .map(|i| Node {
                    namespace: network.map(|net| net.nodes[i].clone()),
                    data_dir: dir.join(format!("n{}", i + 1)),
                    log: dir.join(format!("n{}.stderr", i + 1)),
                    child: None,
                    paused: false,
                })
                .collect(),
            peers: peers.join(","),
            secret_file,
            snapshot_entries,
            epoch,
            exits: Vec::new(),
        };
        for i in 0..cluster.nodes.len() {
            cluster.restart(i)?;
        }
        Ok(cluster)
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Starts node `i` (again), appending to its stderr file.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        let snapshot_entries = self.snapshot_entries.map(|n| n.to_string());
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "node {} restarted while running", i + 1);
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| format!("{}: {e}", node.log.display()))?;
        let ip = node_ip(i).to_string();
        let port = PORT.to_string();
        let data_dir = node.data_dir.display().to_string();
        let mut command = match &node.namespace {
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace, env!("CARGO_BIN_EXE_mmapd")]);
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_mmapd")),
        };
        let child = command
            .args(["--ip", &ip, "--port", &port, "--peers", &self.peers, "--data-dir", &data_dir])
            .arg("--cluster-secret-file")
            .arg(&self.secret_file)
            .args(TIMINGS)
            .args(snapshot_entries.iter().flat_map(|n| ["--snapshot-entries", n.as_str()]))
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("spawn node {}: {e}", i + 1))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// SIGKILLs node `i` and reaps it (an exit before the kill is recorded first).
    pub fn kill(&mut self, i: usize) {
        self.reap_one(i);
        let node = &mut self.nodes[i];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.paused = false;
    }

    /// SIGSTOPs (`true`) or SIGCONTs node `i`.
    pub fn pause(&mut self, i: usize, pause: bool) {
        let node = &mut self.nodes[i];
        if let Some(child) = &node.child {
            let signal = if pause { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, signal) };
            node.paused = pause;
        }
    }

    /// Node `i`'s admin socket (the default, in its data directory).
    pub fn admin_socket(&self, i: usize) -> PathBuf {
        self.nodes[i].data_dir.join("admin.sock")
    }

    /// Records every node that exited without being killed; returns how many were found.
    pub fn reap(&mut self) -> usize {
        (0..self.nodes.len()).filter(|&i| self.reap_one(i)).count()
    }

    /// Every exit the harness did not cause, so far.
    pub fn exits(&self) -> &[Exit] {
        &self.exits
    }

    fn reap_one(&mut self, i: usize) -> bool {
        let node = &mut self.nodes[i];
        let Some(child) = node.child.as_mut() else { return false };
        let status = match child.try_wait() {
            Ok(Some(status)) => status.to_string(),
            _ => return false,
        };
        node.child = None;
        node.paused = false;
        let exit = Exit {
            node: i,
            found_at: self.epoch.elapsed().as_secs_f64(),
            status,
            last_lines: last_lines(&node.log, EXIT_LOG_LINES),
        };
        eprintln!(
            "chaos:   {:6.2} s n{} EXITED on its own ({}); restarted at the next heal",
            exit.found_at,
            i + 1,
            exit.status
        );
        self.exits.push(exit);
        true
    }

    /// Continues paused nodes and starts killed ones (and ones that exited on their own).
    pub fn heal(&mut self) -> Result<(), String> {
        self.reap();
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused {
                self.pause(i, false);
            }
            if self.nodes[i].child.is_none() {
                self.restart(i)?;
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.pause(i, false);
            self.kill(i);
        }
    }
}

/// The last `count` lines of a file, as text (empty when it cannot be read), leaving out
/// the frames of panic backtraces (the panic's own lines stay).
pub fn last_lines(path: &Path, count: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let is_frame = |line: &str| {
        let line = line.trim_start();
        line.starts_with("at ") || line.split_once(": ").is_some_and(|(n, _)| n.parse::<u32>().is_ok())
    };
    let lines: Vec<&str> = text.lines().filter(|line| !is_frame(line)).collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}
