//! Backup and disaster recovery against real nodes: `mmapd-admin backup` (online, on any
//! member, under writes), `backup --verify`, `restore`, `inspect` and
//! `force-new-cluster` (offline).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn admin_ok(args: &[&str]) -> String {
    let output = admin(args);
    assert!(output.status.success(), "mmapd-admin {args:?} failed: {}{}", stdout(&output), stderr(&output));
    stdout(&output)
}

/// A failure is a non-zero exit with exactly one line on stderr, naming `expected`.
fn assert_fails_with_one_line(output: &Output, expected: &str) {
    assert!(!output.status.success(), "exit 0: {}", stdout(output));
    let text = stderr(output);
    assert_eq!(text.trim_end().lines().count(), 1, "not one line: {text:?}");
    assert!(text.contains(expected), "{text:?} does not mention {expected:?}");
    assert!(!text.contains("panicked"), "{text}");
}

fn socket_of(cluster: &Cluster, node: usize) -> PathBuf {
    cluster.dir.path().join(format!("node-{}/admin.sock", cluster.port(node))).to_path_buf()
}

/// The revision in `backup: revision R, K keys, SIZE, crc32c HEX`, checking the line's shape.
fn summary_revision(line: &str) -> u64 {
    let line = line.trim_end();
    let rest = line.strip_prefix("backup: revision ").unwrap_or_else(|| panic!("{line:?}"));
    let (revision, rest) = rest.split_once(", ").unwrap_or_else(|| panic!("{line:?}"));
    let parts: Vec<&str> = rest.split(", ").collect();
    assert_eq!(parts.len(), 3, "{line:?}");
    assert!(parts[0].ends_with(" keys") || parts[0].ends_with(" key"), "{line:?}");
    let crc = parts[2].strip_prefix("crc32c ").unwrap_or_else(|| panic!("{line:?}"));
    assert!(crc.len() == 8 && crc.chars().all(|c| c.is_ascii_hexdigit()), "{line:?}");
    revision.parse().unwrap_or_else(|_| panic!("{line:?}"))
}

/// A backup file's keys: key -> (version, value).
fn backup_contents(file: &Path) -> (u64, BTreeMap<String, (u64, String)>) {
    let mut input = std::fs::File::open(file).unwrap();
    let (summary, machine) = mmapd::kv::load_backup(&mut input).unwrap();
    let keys = machine
        .iter()
        .map(|(k, v)| {
            let key = String::from_utf8(k.to_vec()).unwrap();
            (key, (v.version, String::from_utf8(v.data.to_vec()).unwrap()))
        })
        .collect();
    (summary.header.revision, keys)
}

fn put_version(port: u16, key: &str, value: &str) -> u64 {
    let response = put(port, &format!("/v1/kv/{key}"), value.as_bytes());
    assert!(matches!(response.status, 200 | 201), "PUT {key}: {} {}", response.status, response.text());
    response.json()["version"].as_u64().unwrap()
}

/// The follower is paused while the writes commit and asked for the backup before it
/// resumes: a backup that did not wait for a read barrier would miss what it has not
/// received yet.
#[test]
fn a_backup_on_a_lagging_follower_holds_every_write_acknowledged_before_it() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let follower = cluster.others(leader)[0];
    let mut acknowledged = BTreeMap::new();
    put_version(cluster.port(leader), "before-pause", "x");
    cluster.nodes[follower].signal(nix::sys::signal::Signal::SIGSTOP);
    for i in 0..200 {
        let key = format!("k{i:03}");
        let version = put_version(cluster.port(leader), &key, &format!("v{i}"));
        acknowledged.insert(key, (version, format!("v{i}")));
    }
    let file = cluster.dir.path().join("follower.backup");
    let socket = socket_of(&cluster, follower);
    let args =
        ["--socket".to_owned(), socket.display().to_string(), "backup".into(), file.display().to_string()];
    let backup = std::thread::spawn(move || admin(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    std::thread::sleep(Duration::from_millis(300));
    cluster.nodes[follower].signal(nix::sys::signal::Signal::SIGCONT);
    let output = backup.join().unwrap();
    assert!(output.status.success(), "backup failed: {}", stderr(&output));
    let line = stdout(&output);
    let revision = summary_revision(&line);
    assert!(line.contains(", 201 keys, "), "{line}");
    let (file_revision, mut contents) = backup_contents(&file);
    assert_eq!(file_revision, revision);
    assert!(contents.remove("before-pause").is_some());
    assert_eq!(contents, acknowledged, "the follower's backup lacks acknowledged writes");
    assert!(acknowledged.values().all(|(version, _)| *version <= revision));
    assert!(!cluster.dir.path().join("follower.backup.part").exists());

    let verified = admin_ok(&["backup", "--verify", file.to_str().unwrap()]);
    assert_eq!(verified, line, "--verify prints the summary the backup printed");
}
