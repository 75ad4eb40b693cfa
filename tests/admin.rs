//! `mmapd-admin` against real nodes, over their admin sockets.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn admin_ok(socket: &Path, args: &[&str]) -> String {
    let mut all = vec!["--socket", socket.to_str().unwrap()];
    all.extend(args);
    let output = admin(&all);
    assert!(output.status.success(), "mmapd-admin {args:?} failed: {}{}", stdout(&output), stderr(&output));
    stdout(&output)
}

/// A failure is a non-zero exit with exactly one line on stderr, naming `expected`.
fn assert_fails_with_one_line(output: &Output, expected: &str) {
    assert!(!output.status.success(), "exit 0: {}", stdout(output));
    let text = stderr(output);
    assert_eq!(text.trim_end().lines().count(), 1, "not one line: {text:?}");
    assert!(text.contains(expected), "{text:?} does not mention {expected:?}");
}

#[test]
fn status_msync_snapshot_and_import_work_and_the_socket_is_mode_0660() {
    let mut single = Single::start(&[]);
    let port = single.port();
    let socket = single.admin_socket();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "admin socket mode {mode:o}");

    let text = admin_ok(&socket, &["status"]);
    assert!(text.contains(&format!("node 127.0.0.1:{port}")), "{text}");
    assert!(text.contains("state: leader"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&admin_ok(&socket, &["status", "--json"])).unwrap();
    assert_eq!(json["state"], "leader");
    assert_eq!(json["id"], format!("127.0.0.1:{port}"));

    for i in 0..20 {
        assert_eq!(put(port, &format!("/v1/kv/k{i}"), format!("v{i}").as_bytes()).status, 201);
    }
    let text = admin_ok(&socket, &["msync"]);
    assert!(text.starts_with("msynced "), "{text}");

    let commit = status(port).unwrap()["commit_index"].as_u64().unwrap();
    let text = admin_ok(&socket, &["snapshot"]);
    let index: u64 = text
        .strip_prefix("snapshot at index ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(index >= commit, "snapshot at {index}, commit was {commit}");
    let json: serde_json::Value = serde_json::from_str(&admin_ok(&socket, &["status", "--json"])).unwrap();
    assert!(json["first_index"].as_u64().unwrap() > index, "log not compacted, or /status stale: {json}");
    let again = admin_ok(&socket, &["snapshot"]);
    assert_eq!(again, text, "a snapshot with nothing new must report the latest one, term included");

    let db = single.dir.path().join("db.json");
    std::fs::write(&db, r#"{"a":"1","b":"2"}"#).unwrap();
    let text = admin_ok(&socket, &["import", db.to_str().unwrap()]);
    assert!(text.starts_with("imported 2 keys"), "{text}");
    assert_eq!(get(port, "/get/a").text(), "1");
    assert_eq!(get(port, "/v1/kv/b").text(), "2");

    std::fs::write(&db, r#"{"":"empty key"}"#).unwrap();
    let output = admin(&["--socket", socket.to_str().unwrap(), "import", db.to_str().unwrap()]);
    assert_fails_with_one_line(&output, "empty key");

    // Everything survives a restart from the snapshot plus the log after it.
    single.node.kill9();
    let output = admin(&["--socket", socket.to_str().unwrap(), "status"]);
    assert_fails_with_one_line(&output, "nothing listens");
    single.node.start().unwrap();
    wait_for(Duration::from_secs(5), "the node to lead again", || {
        (status(port)?["state"] == "leader").then_some(())
    });
    for i in 0..20 {
        assert_eq!(get(port, &format!("/v1/kv/k{i}")).text(), format!("v{i}"));
    }
    assert_eq!(get(port, "/get/a").text(), "1");
    assert_eq!(get(port, "/get/b").text(), "2");
}

#[test]
fn admin_gives_up_on_a_socket_that_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    // A stuck node: the socket accepts connections and never answers.
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let holder = std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(10));
        drop(held);
    });
    let started = std::time::Instant::now();
    let output = admin(&["--socket", path.to_str().unwrap(), "--timeout", "1", "status"]);
    assert!(started.elapsed() < Duration::from_secs(5), "gave up after {:?}", started.elapsed());
    assert_fails_with_one_line(&output, "no answer");
    drop(holder);
}

#[test]
fn admin_without_a_socket_fails_with_one_line() {
    let output = admin(&["--socket", "/nonexistent/admin.sock", "status"]);
    assert_fails_with_one_line(&output, "/nonexistent/admin.sock");
    let output = admin(&["--socket", "/nonexistent", "msync"]);
    assert_fails_with_one_line(&output, "/nonexistent");
}

#[test]
fn step_down_moves_leadership_from_the_leader_and_fails_clearly_on_a_follower() {
    let cluster = Cluster::start(3, &[]);
    let socket_of = |node: usize| cluster.dir.path().join(format!("node-{}/admin.sock", cluster.port(node)));
    let (leader, term) = cluster.agreed_leader_and_term().unwrap();
    let follower = cluster.others(leader)[0];

    let output = admin(&["--socket", socket_of(follower).to_str().unwrap(), "step-down"]);
    assert_fails_with_one_line(&output, "not the leader");
    assert_fails_with_one_line(&output, &cluster.nodes[leader].address());
    assert_eq!(cluster.agreed_leader_and_term(), Some((leader, term)), "a refused step-down moved nothing");

    let text = admin_ok(&socket_of(leader), &["step-down"]);
    let named = cluster.nodes.iter().position(|n| text.contains(&n.address()));
    let named = named.unwrap_or_else(|| panic!("output names no member: {text}"));
    assert_ne!(named, leader, "{text}");
    let (new, new_term) =
        wait_for(Duration::from_secs(5), "the new leader", || cluster.agreed_leader_and_term());
    assert_eq!(new, named, "output named {named}, the cluster follows {new}");
    assert!(new_term > term);

    // Import through a follower's socket: forwarded to the leader, read back everywhere.
    let db = cluster.dir.path().join("db.json");
    std::fs::write(&db, r#"{"a":"1","b":"2"}"#).unwrap();
    let follower = cluster.others(new)[0];
    admin_ok(&socket_of(follower), &["import", db.to_str().unwrap()]);
    for node in 0..3 {
        assert_eq!(get(cluster.port(node), "/get/a").text(), "1", "node {node}");
        assert_eq!(get(cluster.port(node), "/get/b").text(), "2", "node {node}");
    }
}

/// A regular file where the admin socket goes (a mistyped --admin-socket) is neither
/// deleted nor replaced: mmapd refuses to start and names it.
#[test]
fn a_regular_file_at_the_admin_socket_path_is_kept_and_mmapd_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("precious.txt");
    std::fs::write(&precious, "do not delete").unwrap();
    let port = free_ports(1)[0];
    let mut node = Daemon::new(
        dir.path(),
        port,
        &["--port", &port.to_string(), "--admin-socket", precious.to_str().unwrap()],
    );
    node.spawn();
    let exit = node.wait_exit(Duration::from_secs(10));
    assert!(!exit.success());
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "do not delete");
    let log = node.log_text();
    assert!(log.contains("precious.txt") && log.contains("not a socket"), "{log}");
}
