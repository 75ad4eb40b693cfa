//! The rolling upgrade from the previous release (issue 13, "Formats and upgrades"): a
//! 3-node cluster of the previous release, under client load, has its binary replaced by
//! this build's one node at a time, on the same data directories, ports and peers; every
//! acknowledged write survives, the cluster serves throughout, and what the older release
//! would not understand waits until every member runs this one.
//!
//! The previous release is built from its commit, taken from the repository the test runs
//! in with `git archive`, into `target/upgrade/<commit>/` (cached: built once per commit).
//! If git or the build fails, the test fails with the reason; it never passes without
//! having run.
//!
//! The order of the upgrade: the two followers first, one after the other; then the old
//! leader hands its leadership to an upgraded node (`step-down`) and runs for a while as an
//! old follower of a new leader; then it is upgraded last. Each node is stopped with
//! SIGTERM (a leader transfers leadership first). Snapshots are taken every 200 entries,
//! and twice a node stays down until the leader has compacted its log past it, so that
//! it catches up only from a snapshot sent across releases: the first follower from the
//! old leader, and the old node (restarted on the old binary, as after a crash) from the
//! new leader.
//!
//! The data directories of v0.1.0 name nodes by a hash of their address and the cluster by
//! a hash of `--peers`; this release keeps those identities for such a directory (the
//! "legacy" start, `server::open_legacy`) and gives every node it adds later a random id.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;

/// The previous release, tag v0.1.0, named by its commit: a clone may lack tags.
const PREVIOUS_RELEASE: &str = "e076101d8a1612372b146984aa95f9a4824db8f0";

/// The cluster version of a cluster that runs this release only; the previous release
/// reports none, which counts as 1 (`driver::version`).
const THIS_VERSION: u64 = 2;
/// The longest the clients may go without one acknowledged write, over the whole
/// upgrade. A restart costs a node's start-up and, for the leader, one leadership
/// transfer; on loopback that is well under a second, this leaves room for a slow CI.
const MAX_WRITE_GAP: Duration = Duration::from_secs(10);
/// How long a node may take to stop, start, or catch up (generous, for a loaded machine).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Keys per list prefix: below the list route's limit (10,000), so one list reads them all.
const KEYS_PER_BUCKET: u64 = 4000;
/// Entries applied between snapshots (a flag both releases take): small, so that every
/// phase takes several.
const SNAPSHOT_ENTRIES: &str = "200";
/// How far past a stopped follower's last index (read just before it stopped) the
/// leader's log must start for the follower to need a snapshot: far more than the
/// entries that reach it in the milliseconds it takes to stop.
const COMPACTION_MARGIN: u64 = 100;
/// The fewest writes each writer must have acknowledged while the old leader follows a
/// new one, and after the whole upgrade.
const WRITES_PER_PHASE: usize = 200;

// ---------------------------------------------------------------- the previous release

/// The previous release's `mmapd`, built (or found built) under `target/upgrade/<commit>`.
fn previous_release_binary() -> PathBuf {
    build_previous_release().unwrap_or_else(|reason| {
        panic!("cannot build the previous release (v0.1.0, commit {PREVIOUS_RELEASE}): {reason}")
    })
}

fn build_previous_release() -> Result<PathBuf, String> {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR"));
    let base = repository.join("target/upgrade").join(PREVIOUS_RELEASE);
    let binary = base.join("target/release/mmapd");
    // Written once the build succeeded: a binary without it may be one a killed build
    // left half-linked.
    let built = base.join("BUILT");
    fs::create_dir_all(&base).map_err(|e| format!("create {}: {e}", base.display()))?;
    let lock_path = base.join("build.lock");
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("open {}: {e}", lock_path.display()))?;
    // Blocks while another test process builds; released when this one exits, however.
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| format!("flock {}: {errno}", lock_path.display()))?;
    if built.is_file() && binary.is_file() {
        return Ok(binary);
    }

    let exists = Command::new("git")
        .arg("-C")
        .arg(repository)
        .args(["cat-file", "-e", &format!("{PREVIOUS_RELEASE}^{{commit}}")])
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !exists.status.success() {
        return Err(format!(
            "the repository at {} lacks the commit (a shallow clone? `git fetch --unshallow`, or \
             `git fetch origin tag v0.1.0`): {}",
            repository.display(),
            stderr(&exists).trim()
        ));
    }
    let source = base.join("src");
    if source.exists() {
        fs::remove_dir_all(&source).map_err(|e| format!("remove {}: {e}", source.display()))?;
    }
    fs::create_dir_all(&source).map_err(|e| format!("create {}: {e}", source.display()))?;
    let archive = base.join("src.tar");
    run(Command::new("git")
        .arg("-C")
        .arg(repository)
        .args(["archive", "--format=tar", "-o"])
        .arg(&archive)
        .arg(PREVIOUS_RELEASE))?;
    run(Command::new("tar").arg("-x").arg("-f").arg(&archive).arg("-C").arg(&source))?;

    let log_path = base.join("build.log");
    let log = File::create(&log_path).map_err(|e| format!("create {}: {e}", log_path.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building the previous release {PREVIOUS_RELEASE} (v0.1.0) into {}", base.display());
    let status = Command::new(cargo)
        .current_dir(&source)
        .args(["build", "--release", "--bins", "--locked", "--target-dir"])
        .arg(base.join("target"))
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        return Err(format!("cargo build failed ({status}); the end of {}:\n{tail}", log_path.display()));
    }
    if !binary.is_file() {
        return Err(format!("the build succeeded but left no {}", binary.display()));
    }
    fs::write(&built, PREVIOUS_RELEASE).map_err(|e| format!("write {}: {e}", built.display()))?;
    Ok(binary)
}

/// Runs a command to completion; Err with what it printed unless it succeeded.
fn run(command: &mut Command) -> Result<(), String> {
    let output = command.output().map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed ({}): {}", output.status, stderr(&output).trim()))
    }
}

// ---------------------------------------------------------------- the cluster

/// Three nodes of `program` on loopback, with the fast timings; retried with new ports if
/// one is taken meanwhile.
fn start_cluster(program: &Path) -> Cluster {
    let mut last_error = String::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = free_ports(3);
        let peers = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let mut nodes: Vec<Daemon> = ports
            .iter()
            .map(|&port| {
                let port_text = port.to_string();
                let data_dir = dir.path().join(format!("node-{port}"));
                let mut args = vec!["--port", &port_text, "--peers", &peers];
                args.extend(["--data-dir", data_dir.to_str().unwrap()]);
                args.extend(FAST_TIMINGS);
                // Snapshots often: the old release writes some that this one loads, and
                // a lagging follower needs one sent.
                args.extend(["--snapshot-entries", SNAPSHOT_ENTRIES]);
                let mut node = Daemon::new(dir.path(), port, &args);
                node.set_program(program);
                node
            })
            .collect();
        nodes.iter_mut().for_each(Daemon::spawn);
        match nodes.iter_mut().try_for_each(Daemon::wait_started) {
            Ok(()) => {
                let cluster = Cluster { nodes, dir };
                cluster.wait_for_leader(STEP_TIMEOUT);
                return cluster;
            }
            Err(error) => last_error = error,
        }
    }
    panic!("the cluster of the previous release did not start: {last_error}");
}

/// An index from /status: this release's key (`commit_index`), else the spaced one that
/// both releases have (`commit index`).
fn status_index(status: &serde_json::Value, name: &str) -> Option<u64> {
    status[name.replace(' ', "_")].as_u64().or_else(|| status[name].as_u64())
}

/// Waits until `node` is healthy (it knows a leader and applied what it knows committed)
/// and has applied everything the leader had committed once it was.
fn wait_caught_up(cluster: &Cluster, node: usize) {
    let port = cluster.port(node);
    wait_for(STEP_TIMEOUT, &format!("node {port} to be healthy"), || {
        (request(port, "GET", "/health", &[], b"").ok()?.status == 200).then_some(())
    });
    let commit = wait_for(STEP_TIMEOUT, "the leader's commit index", || {
        let leader = cluster.agreed_leader()?;
        status_index(&cluster.nodes[leader].status()?, "commit index")
    });
    wait_for(STEP_TIMEOUT, &format!("node {port} to apply index {commit}"), || {
        (status_index(&status(port)?, "last applied")? >= commit).then_some(())
    });
}

/// Stops `node` gracefully (SIGTERM: a leader transfers its leadership first) and starts
/// this build's binary on the same data directory, port and peers; waits until it is
/// caught up.
fn upgrade(cluster: &mut Cluster, node: usize, catch_up: CatchUp) {
    let port = cluster.port(node);
    stop(cluster, node, catch_up);
    cluster.nodes[node].set_program(Path::new(MMAPD));
    if let Err(error) = cluster.nodes[node].start() {
        panic!("this release did not start on the previous release's data directory: {error}");
    }
    wait_caught_up(cluster, node);
    let version = status(port).and_then(|s| s["version"].as_u64());
    assert_eq!(version, Some(THIS_VERSION), "node {port} does not run this release");
    if catch_up == CatchUp::BySnapshot {
        let log = cluster.nodes[node].log_text();
        assert!(log.contains("installed a snapshot from the leader"), "no snapshot installed:\n{log}");
    }
}

/// How a restarted node catches up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CatchUp {
    /// From the leader's log (it restarts at once).
    ByEntries,
    /// Only from the leader's snapshot: it stays down until the leader's log starts
    /// after its own end (as after a crash or a reboot under load).
    BySnapshot,
}

/// Stops `node` gracefully (SIGTERM: a leader transfers its leadership first); with
/// `BySnapshot`, returns only once the leader's log starts past the node's end, with a
/// margin for what reached it in the milliseconds it took to stop.
fn stop(cluster: &mut Cluster, node: usize, catch_up: CatchUp) {
    let port = cluster.port(node);
    let last = status(port).and_then(|s| status_index(&s, "last index"));
    let last = last.unwrap_or_else(|| panic!("no /status on {port}"));
    cluster.nodes[node].signal(Signal::SIGTERM);
    let exit = cluster.nodes[node].wait_exit(STEP_TIMEOUT);
    assert!(exit.success(), "node {port} did not stop cleanly on SIGTERM: {exit}");
    if catch_up == CatchUp::BySnapshot {
        wait_for(STEP_TIMEOUT, &format!("the leader to compact its log past node {port}'s end"), || {
            let leader = cluster.agreed_leader()?;
            let first = status_index(&cluster.nodes[leader].status()?, "first index")?;
            (first > last + COMPACTION_MARGIN).then_some(())
        });
    }
}

fn admin_socket(cluster: &Cluster, node: usize) -> PathBuf {
    cluster.dir.path().join(format!("node-{}", cluster.port(node))).join("admin.sock")
}

/// One request to an admin socket (`Connection: close`), the whole answer read.
fn admin_request(socket: &Path, method: &str, path: &str, body: &[u8]) -> std::io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
        .ok_or_else(|| std::io::Error::other(format!("bad response: {:?}", String::from_utf8_lossy(&raw))))
}

/// A membership change (adding a learner at an address nobody listens on) asked on
/// `node`'s admin socket, which makes it if it leads and forwards it otherwise.
fn add_learner(cluster: &Cluster, node: usize, address: &str) -> Response {
    let body = format!(r#"{{"op":"add","address":"{address}","learner":true}}"#);
    let socket = admin_socket(cluster, node);
    admin_request(&socket, "POST", "/members", body.as_bytes())
        .unwrap_or_else(|e| panic!("POST /members on {}: {e}", socket.display()))
}

/// While a member runs the previous release, a membership change is refused, asked on
/// `node` (this release): 503 `feature_unavailable`, naming the version it needs.
fn assert_membership_change_refused(cluster: &Cluster, node: usize, spare: &str) {
    let response = add_learner(cluster, node, spare);
    let port = cluster.port(node);
    assert_eq!(response.status, 503, "a membership change on {port} while mixed: {}", response.text());
    let body = response.json();
    assert_eq!(body["code"], "feature_unavailable", "on {port}: {body}");
    assert!(body["error"].as_str().unwrap_or("").contains("needs cluster version 2"), "on {port}: {body}");
}

// ---------------------------------------------------------------- the clients

/// An acknowledged write.
#[derive(Clone, Debug)]
struct Acked {
    key: String,
    value: String,
}

/// Writers doing PUTs of distinct keys, each acknowledged one recorded with its value.
struct Load {
    ports: Vec<u16>,
    stop: AtomicBool,
    /// Per writer, in the order they were acknowledged.
    acked: Vec<Mutex<Vec<Acked>>>,
    /// When each write was acknowledged, all writers together.
    acknowledged_at: Mutex<Vec<Instant>>,
    /// Writes that were refused, failed to connect or timed out (their outcome may be
    /// unknown: never counted as acknowledged, never retried under the same key).
    failed: AtomicU64,
    started: Instant,
}

/// Writer 0 uses the original's `POST /set/<key>`, writer 1 `PUT /v1/kv/<key>`.
const WRITERS: usize = 2;

impl Load {
    fn start(ports: Vec<u16>) -> (Arc<Load>, Vec<JoinHandle<()>>) {
        let load = Arc::new(Load {
            ports,
            stop: AtomicBool::new(false),
            acked: (0..WRITERS).map(|_| Mutex::new(Vec::new())).collect(),
            acknowledged_at: Mutex::new(Vec::new()),
            failed: AtomicU64::new(0),
            started: Instant::now(),
        });
        let threads = (0..WRITERS)
            .map(|writer| {
                let load = load.clone();
                std::thread::spawn(move || load.write_until_stopped(writer))
            })
            .collect();
        (load, threads)
    }

    fn key(writer: usize, n: u64) -> String {
        format!("w{writer}-{:03}-{n:07}", n / KEYS_PER_BUCKET)
    }

    fn write_until_stopped(&self, writer: usize) {
        let mut node = writer % self.ports.len();
        let mut n = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            let began = Instant::now();
            let key = Load::key(writer, n);
            let value = format!("v{writer}-{n}-{}", self.started.elapsed().as_micros());
            n += 1;
            let port = self.ports[node];
            let acknowledged = if writer == 0 {
                let body = format!("value={value}");
                let headers = [("Content-Type", "application/x-www-form-urlencoded")];
                request(port, "POST", &format!("/set/{key}"), &headers, body.as_bytes())
                    .is_ok_and(|r| r.status == 200 && r.body == value.as_bytes())
            } else {
                request(port, "PUT", &format!("/v1/kv/{key}"), &[], value.as_bytes())
                    .is_ok_and(|r| r.status == 201)
            };
            if acknowledged {
                self.acknowledged_at.lock().unwrap().push(Instant::now());
                self.acked[writer].lock().unwrap().push(Acked { key, value });
                // At most one write per 5 ms per writer: load, not a CPU hog beside the nodes.
                if let Some(rest) = Duration::from_millis(5).checked_sub(began.elapsed()) {
                    std::thread::sleep(rest);
                }
            } else {
                // A node restarting, or no leader for a moment: the next node, after a pause.
                self.failed.fetch_add(1, Ordering::Relaxed);
                node = (node + 1) % self.ports.len();
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn acked_count(&self, writer: usize) -> usize {
        self.acked[writer].lock().unwrap().len()
    }

    /// Waits until every writer has `count` more acknowledged writes than now.
    fn wait_for_more_writes(&self, count: usize) {
        let targets: Vec<usize> = (0..WRITERS).map(|w| self.acked_count(w) + count).collect();
        wait_for(STEP_TIMEOUT, &format!("{count} more acknowledged writes per writer"), || {
            (0..WRITERS).all(|w| self.acked_count(w) >= targets[w]).then_some(())
        });
    }

    fn last_acked(&self, writer: usize) -> Acked {
        self.acked[writer].lock().unwrap().last().cloned().expect("a write was acknowledged")
    }

    /// The longest time without an acknowledged write, from the start until `end`.
    fn longest_gap(&self, end: Instant) -> Duration {
        let mut times = self.acknowledged_at.lock().unwrap().clone();
        times.sort();
        let mut previous = self.started;
        let mut longest = Duration::ZERO;
        for time in times.into_iter().chain([end]) {
            longest = longest.max(time.saturating_duration_since(previous));
            previous = time;
        }
        longest
    }
}

// ---------------------------------------------------------------- checks

/// Every acknowledged write, read back with its value from `port` by linearizable lists
/// (one per key prefix), plus a linearizable GET of the last key of each writer and of
/// every 100th, on both APIs.
fn assert_every_acked_write_on(port: u16, acked: &[Vec<Acked>]) {
    for (writer, writes) in acked.iter().enumerate() {
        let mut expected: std::collections::BTreeMap<&str, &str> =
            writes.iter().map(|w| (w.key.as_str(), w.value.as_str())).collect();
        let buckets = writes.len() as u64 / KEYS_PER_BUCKET + 1;
        for bucket in 0..=buckets {
            let prefix = format!("w{writer}-{bucket:03}-");
            let response = get(port, &format!("/v1/kv?prefix={prefix}&limit=10000"));
            assert_eq!(response.status, 200, "list {prefix} on {port}: {}", response.text());
            let body = response.json();
            assert_eq!(body["more"], false, "list {prefix} on {port} is cut");
            for item in body["items"].as_array().expect("items") {
                let key = item["key"].as_str().expect("key");
                if let Some(value) = expected.remove(key) {
                    assert_eq!(item["value"], value, "key {key} on {port}");
                }
            }
        }
        assert!(
            expected.is_empty(),
            "node {port} lacks {} acknowledged writes of writer {writer}, e.g. {:?}",
            expected.len(),
            expected.iter().next()
        );
        let sample = writes.iter().step_by(100).chain(writes.last());
        for write in sample {
            let via_v1 = get(port, &format!("/v1/kv/{}", write.key));
            assert_eq!((via_v1.status, via_v1.text()), (200, write.value.clone()), "GET /v1/kv on {port}");
            let via_original = get(port, &format!("/get/{}", write.key));
            assert_eq!(via_original.text(), write.value, "GET /get on {port}");
        }
    }
}

/// The identity the previous release wrote in `node`'s data directory: (cluster id,
/// node id), at offsets 16 and 24 of the `identity` file, little-endian (docs/format.md;
/// read as bytes, since the running node holds the directory's lock).
fn identity_file(cluster: &Cluster, node: usize) -> (u64, u64) {
    let path = cluster.dir.path().join(format!("node-{}", cluster.port(node))).join("identity");
    let bytes = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"MMAPDIDN", "{}", path.display());
    let u64_at = |offset: usize| u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap());
    (u64_at(16), u64_at(24))
}

/// What either release logs when a peer sends it something it does not read: v0.1.0
/// for an entry (it skips it: its replica would differ) or a message it refuses, this
/// release for a batch a peer refused.
const INCOMPATIBLE: [&str; 3] = ["does not decode", "refused peer message", "unknown message kind"];

/// No node, on either release, met something from a peer it did not read.
fn assert_no_incompatibility(cluster: &Cluster) {
    for node in &cluster.nodes {
        let log = node.log_text();
        if let Some(line) = log.lines().find(|line| INCOMPATIBLE.iter().any(|text| line.contains(text))) {
            panic!("node {} met something of the other release it does not read: {line}", node.port);
        }
    }
}

/// Waits until every running node's /status shows cluster version `version`.
fn wait_for_cluster_version(cluster: &Cluster, version: u64) {
    for node in &cluster.nodes {
        let port = node.port;
        wait_for(STEP_TIMEOUT, &format!("cluster version {version} on {port}"), || {
            (status(port)?["cluster_version"].as_u64()? == version).then_some(())
        });
    }
}

// ---------------------------------------------------------------- the test

#[test]
fn a_cluster_of_the_previous_release_upgraded_one_node_at_a_time_keeps_every_acknowledged_write() {
    let previous = previous_release_binary();
    let began = Instant::now();
    let mut cluster = start_cluster(&previous);
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let identities: Vec<(u64, u64)> = (0..3).map(|node| identity_file(&cluster, node)).collect();
    // An address for membership changes that nobody listens on: refused anyway while
    // mixed; the learner that joins at the end listens there.
    let spare_port = free_ports(1)[0];
    let spare = format!("127.0.0.1:{spare_port}");
    let (load, writers) = Load::start(ports.clone());
    load.wait_for_more_writes(WRITES_PER_PHASE);

    // 1. The followers, one at a time.
    let old_leader = cluster.wait_for_leader(STEP_TIMEOUT);
    let followers = cluster.others(old_leader);
    // The first catches up from the old leader's snapshot (v0.1.0's encoding), the
    // second from its log.
    for (&follower, catch_up) in followers.iter().zip([CatchUp::BySnapshot, CatchUp::ByEntries]) {
        upgrade(&mut cluster, follower, catch_up);
        load.wait_for_more_writes(WRITES_PER_PHASE);
        // An old member (the leader) reports no version: the cluster runs version 1, and a
        // change through the upgraded follower is refused before it is forwarded.
        assert_eq!(status(cluster.port(follower)).unwrap()["cluster_version"], 1);
        assert_membership_change_refused(&cluster, follower, &spare);
        // A write through the upgraded follower reaches the old leader, which has no
        // batch route (404): it is forwarded alone, as the old release expects.
        let key = format!("/v1/kv/forwarded-by-{follower}");
        let response = request(cluster.port(follower), "PUT", &key, &[], b"to the old leader").unwrap();
        assert_eq!(response.status, 201, "a write forwarded to the old leader: {}", response.text());
        assert_eq!(get(cluster.port(old_leader), &key).text(), "to the old leader");
    }

    // 2. The old leader hands leadership to an upgraded node and follows it.
    let socket = admin_socket(&cluster, old_leader);
    let response = admin_request(&socket, "POST", "/step-down", b"").expect("step-down on the old leader");
    assert_eq!(response.status, 200, "step-down: {}", response.text());
    let new_leader = wait_for(STEP_TIMEOUT, "an upgraded node to lead", || {
        cluster.agreed_leader().filter(|&leader| leader != old_leader)
    });
    load.wait_for_more_writes(WRITES_PER_PHASE);
    // The new leader replicates to the old follower, in a format it reads...
    for writer in 0..WRITERS {
        let write = load.last_acked(writer);
        let old_port = cluster.port(old_leader);
        wait_for(STEP_TIMEOUT, &format!("the old follower {old_port} to apply {}", write.key), || {
            let response =
                request(old_port, "GET", &format!("/v1/kv/{}?consistency=stale", write.key), &[], b"")
                    .ok()?;
            (response.status == 200).then(|| assert_eq!(response.text(), write.value))
        });
    }
    // ...and proposes nothing it would not understand: no membership change, no cluster
    // record (the feature is off in /status, and /v1/members has no cluster id), and the
    // old follower met nothing it does not read.
    let leader_status = status(cluster.port(new_leader)).unwrap();
    assert_eq!(leader_status["cluster_version"], 1, "{leader_status}");
    assert_eq!(leader_status["features"]["cluster record"], false, "{leader_status}");
    let lagging =
        leader_status["member_versions"].as_array().unwrap().iter().find(|m| m["version"].is_null());
    assert_eq!(lagging.map(|m| &m["address"]), Some(&cluster.nodes[old_leader].address().into()));
    assert_membership_change_refused(&cluster, new_leader, &spare);
    let members = get(cluster.port(new_leader), "/v1/members?local=1").json();
    assert_eq!(members["cluster_id"], "0000000000000000", "a cluster record while mixed: {members}");
    assert_no_incompatibility(&cluster);
    // The old follower, down (a crash, a reboot) until the new leader compacted its log
    // past it, catches up from a snapshot it reads.
    stop(&mut cluster, old_leader, CatchUp::BySnapshot);
    cluster.nodes[old_leader].start().unwrap_or_else(|e| panic!("the old release did not restart: {e}"));
    wait_caught_up(&cluster, old_leader);

    // 3. The last node.
    upgrade(&mut cluster, old_leader, CatchUp::ByEntries);
    wait_for_cluster_version(&cluster, THIS_VERSION);
    load.wait_for_more_writes(WRITES_PER_PHASE);

    load.stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().expect("a writer panicked");
    }
    let gap = load.longest_gap(Instant::now());
    let acked: Vec<Vec<Acked>> = load.acked.iter().map(|a| a.lock().unwrap().clone()).collect();
    eprintln!(
        "upgrade: {} writes acknowledged ({} failed or unknown), longest gap {gap:?}, {:?} since the start",
        acked.iter().map(Vec::len).sum::<usize>(),
        load.failed.load(Ordering::Relaxed),
        began.elapsed()
    );
    assert!(
        gap <= MAX_WRITE_GAP,
        "the cluster acknowledged no write for {gap:?} (at most {MAX_WRITE_GAP:?})"
    );
    for &port in &ports {
        assert_every_acked_write_on(port, &acked);
    }

    // The identities v0.1.0 derived from the addresses are kept, and the cluster record
    // the leader wrote once all were upgraded names the cluster the directories name.
    for (node, &(cluster_id, node_id)) in identities.iter().enumerate() {
        assert_eq!(identity_file(&cluster, node), (cluster_id, node_id), "node {}", ports[node]);
        assert_eq!(status(ports[node]).unwrap()["node_id"], format!("{node_id:016x}"));
        let members = get(ports[node], "/v1/members?local=1").json();
        assert_eq!(members["cluster_id"], format!("{cluster_id:016x}"), "{members}");
        assert_eq!(members["members"].as_array().map(Vec::len), Some(3), "{members}");
    }

    // 4. Upgraded, the cluster takes membership changes: a node joins as a learner under
    // a fresh id and catches up.
    let join = cluster.nodes[0].address();
    let data_dir = cluster.dir.path().join("learner");
    let port_text = spare_port.to_string();
    let mut args = vec!["--port", &port_text, "--join", &join, "--learner"];
    args.extend(["--data-dir", data_dir.to_str().unwrap()]);
    args.extend(FAST_TIMINGS);
    cluster.nodes.push(Daemon::new(cluster.dir.path(), spare_port, &args));
    cluster.nodes[3].start().unwrap_or_else(|e| panic!("the learner did not start: {e}"));
    wait_caught_up(&cluster, 3);
    let members = get(ports[0], "/v1/members").json();
    let listed = members["members"].as_array().expect("members");
    assert_eq!(listed.len(), 4, "{members}");
    assert_eq!(listed.iter().filter(|m| m["role"] == "learner").count(), 1, "{members}");
    let learner_id = status(spare_port).unwrap()["node_id"].as_str().unwrap().to_owned();
    assert!(identities.iter().all(|&(_, id)| format!("{id:016x}") != learner_id), "{members}");
    assert_every_acked_write_on(spare_port, &acked);

    // 5. An upgraded node restarts again from its migrated directory.
    let follower =
        cluster.others(cluster.wait_for_leader(STEP_TIMEOUT)).into_iter().find(|&n| n < 3).unwrap();
    cluster.nodes[follower].signal(Signal::SIGTERM);
    assert!(cluster.nodes[follower].wait_exit(STEP_TIMEOUT).success());
    cluster.nodes[follower].start().unwrap_or_else(|e| panic!("the upgraded node did not restart: {e}"));
    wait_caught_up(&cluster, follower);
    assert_eq!(put(ports[follower], "/v1/kv/after-upgrade", b"done").status, 201);
    for &port in ports.iter().chain([&spare_port]) {
        wait_for(STEP_TIMEOUT, "the last write everywhere", || {
            (get(port, "/v1/kv/after-upgrade").text() == "done").then_some(())
        });
    }
    assert_no_incompatibility(&cluster);
    eprintln!("upgrade: done in {:?}", began.elapsed());
}
