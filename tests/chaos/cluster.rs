//! The `mmapd` processes: one per node namespace, each with its data directory and its
//! stderr captured to a file, started through `ip netns exec` (which execs, so the child's
//! pid is the node's and SIGKILL/SIGSTOP reach it).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

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
}

impl Cluster {
    /// Starts `count` nodes, one per namespace of `network` (or on loopback without
    /// one), with files under `dir`.
    pub fn start(count: usize, network: Option<&Network>, dir: &Path) -> Result<Cluster, String> {
        let peers: Vec<String> = (0..count).map(|i| format!("{}:{PORT}", node_ip(i))).collect();
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
            .args(TIMINGS)
            .env("RUST_BACKTRACE", "1")
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

    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
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

    /// Node `i` exited on its own (it was not killed by us): its status.
    pub fn exited(&mut self, i: usize) -> Option<String> {
        let child = self.nodes[i].child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// Continues paused nodes and starts killed ones.
    pub fn heal(&mut self) -> Result<(), String> {
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
