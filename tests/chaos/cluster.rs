//! The `mmapd` processes: one per node namespace, each with its data directory and its
//! stderr captured to a file, started through `ip netns exec` (which execs, so the child's
//! pid is the node's and SIGKILL/SIGSTOP reach it).
//!
//! The cluster knows which exits it caused (SIGKILL); any other exit it finds (by
//! `reap`, before every kill and restart, and at the end) is recorded as an `Exit` with
//! the node's last log lines, and the node is restarted at the next heal. An exit the
//! nemesis waits for (`wait_exit`: a removed member stopping, a start that must be
//! refused) is its own business, not an `Exit`.
//!
//! Every node starts with the bootstrap command line (`--peers`, `Launch::Peers`) until
//! the nemesis replaces it (`membership.rs`): from then on that slot starts with
//! `--join` (`Launch::Join`), for every later kill and restart. The nodes share a
//! cluster secret (`SECRET`): joins and forwarded membership changes from another host
//! need one.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

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

/// How often an idle watch writes a progress line (the watchers give a connection up
/// after 2 s of silence), and how far behind a watcher may fall before it is cancelled
/// as slow (the watchers sometimes stop reading for a while): `watch.rs`.
const WATCH: [&str; 4] = ["--watch-progress-ms", "300", "--watch-queue-rounds", "64"];

/// The cluster secret every node is started with (and the forger carries).
pub const SECRET: &str = "chaos-cluster-secret";

/// Log lines kept with an exit nobody caused.
const EXIT_LOG_LINES: usize = 20;

/// The small limits of a snapshot run: `--snapshot-entries` (the Raft log) and
/// `--history-entries` (the change history that watches replay); such a run also sends
/// snapshots in the smallest chunks (`--snapshot-chunk-bytes 4096`).
#[derive(Clone, Copy, Debug)]
pub struct Compaction {
    /// `--snapshot-entries`.
    pub snapshot_entries: u64,
    /// `--history-entries`.
    pub history_entries: u64,
}

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

/// The command line a node starts with (besides its address, data directory and timings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Launch {
    /// `--peers` with every slot's address: the bootstrap line each node first starts with.
    Peers,
    /// `--join` with these addresses: a replacement, which the leader adds under a new id.
    Join(String),
}

/// A running (or killed, or paused) node.
struct Node {
    /// `None` in the loopback fallback.
    namespace: Option<String>,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// How it starts: the nemesis changes it when it replaces the node.
    launch: Launch,
}

/// The nodes of one run.
pub struct Cluster {
    nodes: Vec<Node>,
    peers: String,
    /// The file holding `SECRET`.
    secret_file: PathBuf,
    /// Member ids the nemesis removed (never to be seen again).
    removed: Vec<u64>,
    /// `--snapshot-entries` and `--history-entries`, when the run sets them.
    compaction: Option<Compaction>,
    /// In a TLS run: the CA's certificate, and each slot's certificate (naming its
    /// address, for both ends of its connections) and key.
    tls: Option<(PathBuf, Vec<super::pki::Issued>)>,
    /// When the run began.
    epoch: Instant,
    /// Exits the harness did not cause, in the order found.
    exits: Vec<Exit>,
}

impl Cluster {
    /// Starts `count` nodes, one per namespace of `network` (or on loopback without
    /// one), with files under `dir`, and `compaction`'s limits when given. With `tls`,
    /// every node serves clients and peers over TLS with a certificate of a CA made for
    /// the run (`--tls-cert`, `--tls-key`), and takes peers only with one of that CA's
    /// certificates (`--tls-ca`: mutual TLS between nodes); see `ca`.
    pub fn start(
        count: usize,
        network: Option<&Network>,
        dir: &Path,
        compaction: Option<Compaction>,
        tls: bool,
        epoch: Instant,
    ) -> Result<Cluster, String> {
        let peers: Vec<String> = (0..count).map(address).collect();
        let secret_file = dir.join("cluster-secret");
        std::fs::write(&secret_file, SECRET).map_err(|e| format!("{}: {e}", secret_file.display()))?;
        let tls = tls.then(|| {
            let ca = super::pki::Ca::new(dir, "chaos-ca");
            let issued = (0..count)
                .map(|i| ca.issue(dir, &format!("n{}-tls", i + 1), &[&node_ip(i).to_string()]))
                .collect();
            (ca.path.clone(), issued)
        });
        let mut cluster = Cluster {
            nodes: (0..count)
                .map(|i| Node {
                    namespace: network.map(|net| net.nodes[i].clone()),
                    data_dir: dir.join(format!("n{}", i + 1)),
                    log: dir.join(format!("n{}.stderr", i + 1)),
                    child: None,
                    paused: false,
                    launch: Launch::Peers,
                })
                .collect(),
            peers: peers.join(","),
            secret_file,
            removed: Vec::new(),
            compaction,
            tls,
            epoch,
            exits: Vec::new(),
        };
        for i in 0..cluster.nodes.len() {
            cluster.restart(i)?;
        }
        Ok(cluster)
    }

    /// The run's CA certificate, in a TLS run.
    pub fn ca(&self) -> Option<&Path> {
        self.tls.as_ref().map(|(ca, _)| ca.as_path())
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Starts node `i` (again) with its command line, appending to its stderr file.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        let launch = self.nodes[i].launch.clone();
        self.spawn(i, &launch)
    }

    /// Starts node `i` with `launch`, which need not be its own (a start that must be
    /// refused); its command line stays as it was.
    pub fn spawn(&mut self, i: usize, launch: &Launch) -> Result<(), String> {
        let limits: Vec<String> = self.compaction.map_or_else(Vec::new, |c| {
            vec![
                "--snapshot-entries".into(),
                c.snapshot_entries.to_string(),
                "--history-entries".into(),
                c.history_entries.to_string(),
                // The smallest chunk: every snapshot install crosses in many chunks,
                // so faults cut transfers half way and they must resume.
                "--snapshot-chunk-bytes".into(),
                "4096".into(),
            ]
        });
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
        let members = match launch {
            Launch::Peers => ["--peers", self.peers.as_str()],
            Launch::Join(addresses) => ["--join", addresses.as_str()],
        };
        if let Some((ca, issued)) = &self.tls {
            command.arg("--tls-cert").arg(&issued[i].cert).arg("--tls-key").arg(&issued[i].key);
            command.arg("--tls-ca").arg(ca);
        }
        let child = command
            .args(["--ip", &ip, "--port", &port, "--data-dir", &data_dir])
            .args(members)
            .arg("--cluster-secret-file")
            .arg(&self.secret_file)
            .args(TIMINGS)
            .args(WATCH)
            .args(&limits)
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

    /// From now on node `i` starts with `launch`.
    pub fn set_launch(&mut self, i: usize, launch: Launch) {
        self.nodes[i].launch = launch;
    }

    /// Node `i`'s command line.
    pub fn launch(&self, i: usize) -> &Launch {
        &self.nodes[i].launch
    }

    /// Waits up to `limit` for node `i` to exit; its status if it did (the nemesis
    /// expected it: it is not recorded as an `Exit`, and the node is not running after).
    /// `None` if it is still running (or was not).
    pub fn wait_exit(&mut self, i: usize, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            let child = self.nodes[i].child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.nodes[i].child = None;
                self.nodes[i].paused = false;
                return Some(status);
            }
            if started.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20).min(limit));
        }
    }

    /// True while node `i`'s process runs (paused or not).
    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes[i].child.as_mut().is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Node `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.nodes[i].data_dir
    }

    /// Node `i`'s stderr file.
    pub fn log(&self, i: usize) -> &Path {
        &self.nodes[i].log
    }

    /// Appends a line from the harness to node `i`'s stderr file (so its log says why it
    /// was started the way it was).
    pub fn note(&self, i: usize, text: &str) {
        let at = self.epoch.elapsed().as_secs_f64();
        if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(&self.nodes[i].log) {
            let _ = writeln!(file, "=== chaos harness at {at:.2} s: {text} ===");
        }
    }

    /// Records that the cluster removed member `id`.
    pub fn record_removed(&mut self, id: u64) {
        self.removed.push(id);
    }

    /// The member ids the nemesis removed, in order.
    pub fn removed(&self) -> &[u64] {
        &self.removed
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

/// Node `index`'s address, `IP:PORT`.
pub fn address(index: usize) -> String {
    format!("{}:{PORT}", node_ip(index))
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
