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

/// A small deterministic generator (xorshift), seeded from the clock and printed, so a
/// failure names the seed that replays it (`MMAPD_BACKUP_SEED`).
struct Random(u64);

impl Random {
    fn from_env_or_clock() -> Random {
        let seed =
            std::env::var("MMAPD_BACKUP_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
                    | 1
            });
        eprintln!("MMAPD_BACKUP_SEED={seed}");
        Random(seed)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// The offset in `... at byte offset N: ...`.
fn named_offset(text: &str) -> u64 {
    let rest = text.split("at byte offset ").nth(1).unwrap_or_else(|| panic!("no offset in {text:?}"));
    rest.split(':').next().unwrap().parse().unwrap_or_else(|_| panic!("no offset in {text:?}"))
}

/// A multi-chunk backup taken from a node, damaged at random places: every flipped
/// byte and every truncation is refused by `backup --verify` with one line naming an
/// offset at or before the damage; the intact file verifies.
#[test]
fn a_damaged_backup_is_refused_with_the_offset_of_the_damage() {
    let single = Single::start(&[]);
    let value = "x".repeat(10_000);
    for i in 0..300 {
        put_version(single.port(), &format!("big-{i:03}"), &value);
    }
    let file = single.dir.path().join("big.backup");
    let socket = single.admin_socket();
    let line = admin_ok(&["--socket", socket.to_str().unwrap(), "backup", file.to_str().unwrap()]);
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() > 2 << 20, "want several chunks, got {} bytes", bytes.len());
    assert_eq!(admin_ok(&["backup", "--verify", file.to_str().unwrap()]), line);

    let mut random = Random::from_env_or_clock();
    let damaged = single.dir.path().join("damaged.backup");
    let damaged_arg = damaged.to_str().unwrap();
    // The header, chunk boundaries and the trailer, then random places.
    let mut places: Vec<u64> =
        vec![0, 8, 12, 63, 64, 87, 88, bytes.len() as u64 - 32, bytes.len() as u64 - 1];
    places.extend((0..60).map(|_| random.below(bytes.len() as u64)));
    for &place in &places {
        let mut flipped = bytes.clone();
        flipped[place as usize] ^= 1 << random.below(8);
        std::fs::write(&damaged, &flipped).unwrap();
        let output = admin(&["backup", "--verify", damaged_arg]);
        assert_fails_with_one_line(&output, "damaged backup at byte offset");
        let offset = named_offset(&stderr(&output));
        assert!(offset <= place, "a flip at {place} reported at {offset}: {}", stderr(&output));

        std::fs::write(&damaged, &bytes[..place as usize]).unwrap();
        let output = admin(&["backup", "--verify", damaged_arg]);
        assert_fails_with_one_line(&output, "damaged backup at byte offset");
        let offset = named_offset(&stderr(&output));
        assert!(offset <= place, "a truncation to {place} reported at {offset}: {}", stderr(&output));
    }
    let output = admin(&["backup", "--verify", single.dir.path().join("missing").to_str().unwrap()]);
    assert_fails_with_one_line(&output, "cannot read");
    let output = admin(&["backup", "--verify", single.dir.path().to_str().unwrap()]);
    assert_fails_with_one_line(&output, "");
}
