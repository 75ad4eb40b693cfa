//! The daemon's life: sd-notify readiness, watchdog, status and stopping under a fake
//! NOTIFY_SOCKET; a node with no configuration at all; refusing the original's files.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// Receives notify datagrams until `until` returns true for one, or panics at `timeout`.
fn receive_until(
    socket: &UnixDatagram,
    seen: &mut Vec<String>,
    timeout: Duration,
    until: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + timeout;
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out; notifications so far: {seen:?}");
        socket.set_read_timeout(Some(left)).unwrap();
        if let Ok(length) = socket.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..length]).into_owned();
            seen.push(message.clone());
            if until(&message) {
                return;
            }
        }
    }
}

/// Collects every notify datagram that arrives within `duration`.
fn receive_for(socket: &UnixDatagram, seen: &mut Vec<String>, duration: Duration) {
    let deadline = Instant::now() + duration;
    let mut buffer = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|l| !l.is_zero()) {
        socket.set_read_timeout(Some(left)).unwrap();
        if let Ok(length) = socket.recv(&mut buffer) {
            seen.push(String::from_utf8_lossy(&buffer[..length]).into_owned());
        }
    }
}

/// Under a (fake) systemd: READY=1 only once the port accepts connections, then
/// WATCHDOG=1 repeatedly at half of WATCHDOG_USEC, a STATUS= line, and on SIGTERM
/// STOPPING=1 and exit code 0.
#[test]
fn sd_notify_ready_when_serving_then_watchdog_status_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let port = free_ports(1)[0];
    let data_dir = dir.path().join("data");
    let mut node = Daemon::new(
        dir.path(),
        port,
        &["--port", &port.to_string(), "--data-dir", data_dir.to_str().unwrap()],
    )
    .env("NOTIFY_SOCKET", &socket_path)
    .env("WATCHDOG_USEC", "200000");
    node.spawn();

    let mut seen = Vec::new();
    receive_until(&socket, &mut seen, Duration::from_secs(10), |m| m.lines().any(|l| l == "READY=1"));
    assert!(accepts_connections(port), "READY=1 came before the port accepted connections");
    assert_eq!(get(port, "/status").status, 200);

    // Pings come every 100 ms (half of 200 ms); in 800 ms at least 4 must arrive.
    let after_ready = seen.len();
    receive_for(&socket, &mut seen, Duration::from_millis(800));
    let pings = seen[after_ready..].iter().filter(|m| m.lines().any(|l| l == "WATCHDOG=1")).count();
    assert!(pings >= 4, "{pings} watchdog pings in 800 ms: {seen:?}");
    let status = seen.iter().flat_map(|m| m.lines()).find(|l| l.starts_with("STATUS="));
    assert!(status.is_some_and(|s| s.contains("leader")), "no STATUS= naming the role: {seen:?}");

    node.signal(Signal::SIGTERM);
    receive_until(&socket, &mut seen, Duration::from_secs(5), |m| m.lines().any(|l| l == "STOPPING=1"));
    let exit = node.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.code(), Some(0), "exit status {exit}");
    assert!(!data_dir.join("admin.sock").exists(), "the admin socket is removed on a clean stop");
}

/// WATCHDOG_PID naming another process means the watchdog is not ours: no pings.
#[test]
fn no_watchdog_pings_when_watchdog_pid_names_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let port = free_ports(1)[0];
    let data_dir = dir.path().join("data");
    let mut node = Daemon::new(
        dir.path(),
        port,
        &["--port", &port.to_string(), "--data-dir", data_dir.to_str().unwrap()],
    )
    .env("NOTIFY_SOCKET", &socket_path)
    .env("WATCHDOG_USEC", "200000")
    .env("WATCHDOG_PID", "1");
    node.spawn();
    let mut seen = Vec::new();
    receive_until(&socket, &mut seen, Duration::from_secs(10), |m| m.lines().any(|l| l == "READY=1"));
    receive_for(&socket, &mut seen, Duration::from_millis(500));
    let pings = seen.iter().filter(|m| m.lines().any(|l| l == "WATCHDOG=1")).count();
    assert_eq!(pings, 0, "{seen:?}");
}

/// `mmapd --port P` with nothing else, in an empty directory: a one-node cluster that
/// serves a write at once, with its files in ./mmapd-P.
#[test]
fn single_node_without_configuration_serves_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let mut node = Daemon::new(dir.path(), port, &["--port", &port.to_string()]);
    let started = Instant::now();
    node.start().unwrap();
    let response = put(port, "/v1/kv/first", b"1");
    let elapsed = started.elapsed();
    assert_eq!(response.status, 201, "{}", response.text());
    assert!(elapsed < Duration::from_secs(2), "first write answered after {elapsed:?}");
    assert_eq!(get(port, "/get/first").text(), "1");
    let status = status(port).unwrap();
    assert_eq!(status["state"], "leader");
    assert_eq!(status["leader"], format!("127.0.0.1:{port}"));
    assert!(dir.path().join(format!("mmapd-{port}")).is_dir(), "no ./mmapd-{port}");
    assert!(dir.path().join(format!("mmapd-{port}/admin.sock")).exists());
}

/// The original's db.json given as -db is refused: mmapd exits non-zero, naming the
/// file and the command that imports it, and does not start serving.
#[test]
fn legacy_json_db_file_is_refused_naming_the_file_and_the_import_command() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("legacy-db.json"), r#"{"k":"v"}"#).unwrap();
    let port = free_ports(1)[0];
    let mut node = Daemon::new(dir.path(), port, &["-port", &port.to_string(), "-db", "legacy-db.json"]);
    node.spawn();
    let exit = node.wait_exit(Duration::from_secs(10));
    assert!(!exit.success(), "mmapd started on a legacy db.json");
    let log = node.log_text();
    assert!(log.contains("legacy-db.json"), "message does not name the file: {log}");
    assert!(log.contains("mmapd-admin import"), "message does not mention mmapd-admin import: {log}");
    assert!(!accepts_connections(port));
}

/// A node bound to every interface that cannot tell which `--peers` entry is itself
/// refuses to start, saying to pass `--advertise`, instead of joining as a phantom
/// `0.0.0.0` member no peer can reach.
#[test]
fn binding_every_interface_without_a_findable_peers_entry_refuses_and_names_advertise() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let peers = format!("198.51.100.1:{port},198.51.100.2:{port}");
    let data_dir = dir.path().join("data");
    let args = ["--ip", "0.0.0.0", "--port", &port.to_string(), "--peers", &peers];
    // Members off loopback without a secret: --insecure-peers says the network is trusted.
    let mut node = Daemon::new(dir.path(), port, &args)
        .env("MMAPD_DATA_DIR", &data_dir)
        .env("MMAPD_INSECURE_PEERS", "true");
    node.spawn();
    let status = node.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{}", node.log_text());
    assert!(node.log_text().contains("--advertise"), "{}", node.log_text());

    // With --advertise it starts, and names itself by the advertised address. (Its
    // data directory is empty and its peer never answers, so it waits for a majority
    // of --peers before bootstrapping: /status says so.)
    let advertise = format!("198.51.100.1:{port}");
    let mut node = Daemon::new(dir.path(), port, &args)
        .env("MMAPD_DATA_DIR", &data_dir)
        .env("MMAPD_INSECURE_PEERS", "true")
        .env("MMAPD_ADVERTISE", &advertise);
    node.start().unwrap();
    let status = get(port, "/status");
    assert_eq!(status.status, 503, "{}", status.text());
    let status: serde_json::Value = serde_json::from_str(&status.text()).unwrap();
    assert_eq!(status["address"], advertise);
    assert_eq!(status["state"], "starting");
}

/// Node `i` of a `--peers` cluster on `ports` (loopback), with its data in `dir`.
fn peers_node(dir: &std::path::Path, ports: &[u16], i: usize) -> Daemon {
    let peers = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let data = dir.join(format!("data-{i}"));
    let mut args = vec!["--port".to_owned(), ports[i].to_string(), "--peers".into(), peers];
    args.extend(["--data-dir".to_owned(), data.to_str().unwrap().to_owned()]);
    args.extend(FAST_TIMINGS.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::new(dir, ports[i], &args)
}

/// A node with an empty data directory started with `--peers` never bootstraps on
/// silence: it waits for a majority of its peers to answer (RAFT-NOTES #18), serving
/// nothing but probes meanwhile, and starts once they do.
#[test]
fn a_new_node_waits_for_a_majority_of_its_peers_before_bootstrapping() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let node = |i: usize| peers_node(dir.path(), &ports, i);
    let mut first = node(0);
    first.start().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(get(ports[0], "/status").status, 503, "started on silence");
    assert!(first.log_text().contains("waiting for a majority of --peers"), "{}", first.log_text());
    assert_eq!(get(ports[0], "/raft/cluster?asker=0000000000000001").status, 200);
    let mut second = node(1);
    second.start().unwrap();
    wait_for(Duration::from_secs(20), "two of three to elect a leader and take a write", || {
        (put(ports[0], "/v1/kv/k", b"v").status == 201).then_some(())
    });
    assert_eq!(get(ports[1], "/v1/kv/k").text(), "v");
}

/// A peer whose host name does not resolve is not fatal: the node starts and serves,
/// logs the failure once (not at every retry), and keeps trying.
#[test]
fn a_peer_name_that_does_not_resolve_is_logged_once_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let port = ports[0];
    // Two of three members answer: a new cluster may bootstrap without the third.
    let peers = format!("127.0.0.1:{port},127.0.0.1:{},no-such-node.invalid:{port}", ports[1]);
    let node = |port: u16, name: &str| {
        let data_dir = dir.path().join(name);
        let mut args = vec!["--port".to_owned(), port.to_string(), "--peers".into(), peers.clone()];
        args.extend(["--data-dir".to_owned(), data_dir.to_str().unwrap().to_owned()]);
        args.extend(FAST_TIMINGS.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // A host name counts as off loopback: no secret, so the network is declared trusted.
        Daemon::new(dir.path(), port, &args).env("MMAPD_INSECURE_PEERS", "true")
    };
    let mut node_a = node(port, "a");
    let mut node_b = node(ports[1], "b");
    node_a.start().unwrap();
    node_b.start().unwrap();
    wait_for(Duration::from_secs(20), "the node to serve", || {
        (get(port, "/status").status == 200).then_some(())
    });
    let unresolved = |log: &str| {
        log.lines().filter(|l| l.contains("no-such-node.invalid") && l.contains("not answering")).count()
    };
    // The leader, whichever it is, sends heartbeats to the third member.
    wait_for(Duration::from_secs(20), "the failed lookup to be logged", || {
        (unresolved(&node_a.log_text()) + unresolved(&node_b.log_text()) > 0).then_some(())
    });
    // Heartbeats go out every 50 ms: many more lookups fail.
    std::thread::sleep(Duration::from_millis(1500));
    for node in [&node_a, &node_b] {
        let log = node.log_text();
        assert!(unresolved(&log) <= 1, "{log}");
    }
    // Once per node that led (a leader change may make it two).
    let log = node_a.log_text() + &node_b.log_text();
    assert!(unresolved(&log) >= 1, "{log}");
    assert!(log.contains("resolve"), "{log}");
    assert_eq!(get(port, "/status").status, 200, "still serving");
}

/// Once a node has a snapshot, the members in its data directory win: restarted with a
/// `--peers` that names another member, a one-node cluster stays one node (and goes on
/// serving), and says once that `--peers` was not obeyed.
#[test]
fn peers_only_bootstrap_a_node_with_a_snapshot_keeps_its_members_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let (port, phantom) = (ports[0], ports[1]);
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().unwrap().to_owned();
    let me = format!("127.0.0.1:{port}");
    let socket = data_dir.join("admin.sock");
    let args = ["--port", &port.to_string(), "--data-dir", &data, "--peers", &me];
    let mut node = Daemon::new(dir.path(), port, &args);
    node.start().unwrap();
    assert_eq!(put(port, "/v1/kv/k", b"v").status, 201);
    let output = admin(&["--socket", socket.to_str().unwrap(), "snapshot"]);
    assert!(output.status.success(), "{output:?}");
    node.signal(nix::sys::signal::Signal::SIGTERM);
    node.wait_exit(Duration::from_secs(10));

    let peers = format!("{me},127.0.0.1:{phantom}");
    let mut args: Vec<&str> = vec!["--port", "", "--data-dir", &data, "--peers", &peers];
    let port_text = port.to_string();
    args[1] = &port_text;
    args.extend(FAST_TIMINGS);
    let mut node = Daemon::new(dir.path(), port, &args);
    node.start().unwrap();
    let response = put(port, "/v1/kv/after", b"2");
    assert_eq!(response.status, 201, "a phantom member from --peers took the quorum: {}", response.text());
    let log = node.log_text();
    assert_eq!(log.matches("differ from --peers").count(), 1, "{log}");
}

/// A node started by hand (not under the unit's `UMask=0077`) keeps its data private:
/// the data directory 0700 and every file in it 0600, whatever the caller's umask;
/// only the admin socket is group-accessible (0660).
#[test]
fn a_hand_started_node_creates_its_data_directory_and_files_private() {
    use std::os::unix::fs::PermissionsExt;
    let previous = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let single = Single::start(&[]);
    nix::sys::stat::umask(previous);
    assert_eq!(put(single.port(), "/v1/kv/k", b"v").status, 201);
    let data_dir = single.dir.path().join("data");
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data_dir), 0o700, "data directory");
    let mut files = 0;
    for entry in std::fs::read_dir(&data_dir).unwrap() {
        let path = entry.unwrap().path();
        let expected = if path.ends_with("admin.sock") { 0o660 } else { 0o600 };
        assert_eq!(mode(&path), expected, "{}", path.display());
        files += 1;
    }
    assert!(files >= 3, "only {files} entries in the data directory");
}

/// A member whose first start came after the others had bootstrapped starts as itself
/// once every other member answers that it never held the log; while one of them does
/// not answer, it waits (that member's record may be the one that knows better), and it
/// starts once that member is back.
// Reference: RAFT-NOTES #18
#[test]
fn a_late_first_start_waits_for_every_other_member_then_joins_as_itself() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let node = |i: usize| peers_node(dir.path(), &ports, i);
    let (mut first, mut second, mut late) = (node(0), node(1), node(2));
    first.start().unwrap();
    second.start().unwrap();
    wait_for(Duration::from_secs(20), "two of three to bootstrap and take a write", || {
        (put(ports[0], "/v1/kv/k", b"v").status == 201).then_some(())
    });
    second.kill9();
    late.start().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(get(ports[2], "/status").status, 503, "started on one member's word: {}", late.log_text());
    second.start().unwrap();
    wait_for(Duration::from_secs(20), "the late member to serve the cluster's data", || {
        (get(ports[2], "/v1/kv/k").text() == "v").then_some(())
    });
    assert!(late.is_running());
}
