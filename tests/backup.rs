//! Backup and disaster recovery against real nodes: `mmapd-admin backup` (online, on any
//! member, under writes), `backup --verify`, `restore`, `inspect` and
//! `force-new-cluster` (offline).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn admin_ok(args: &[&str]) -> String {
    let output = admin(args);
    assert!(output.status.success(), "mmapd-admin {args:?} failed: {}{}", stdout(&output), stderr(&output));
    stdout(&output)
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

/// A backup file's keys: key -> (mod_revision, value).
fn backup_contents(file: &Path) -> (u64, BTreeMap<String, (u64, String)>) {
    let mut input = std::fs::File::open(file).unwrap();
    let (summary, machine) = mmapd::kv::load_backup(&mut input).unwrap();
    let keys = machine
        .iter()
        .map(|(k, v)| {
            let key = String::from_utf8(k.to_vec()).unwrap();
            (key, (v.mod_revision, String::from_utf8(v.data.to_vec()).unwrap()))
        })
        .collect();
    (summary.header.revision, keys)
}

fn put_version(port: u16, key: &str, value: &str) -> u64 {
    let response = put(port, &format!("/v1/kv/{key}"), value.as_bytes());
    assert!(matches!(response.status, 200 | 201), "PUT {key}: {} {}", response.status, response.text());
    response.json()["revision"].as_u64().unwrap()
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
    assert_same_state(&contents, &acknowledged, "the follower's backup lacks acknowledged writes");
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
    // The header, the (empty) lease table, chunk boundaries and the trailer, then
    // random places.
    let mut places: Vec<u64> =
        vec![0, 8, 12, 56, 63, 64, 72, 87, 88, 111, 112, bytes.len() as u64 - 32, bytes.len() as u64 - 1];
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
    // A format newer than this build's: the line names the file, the version found and
    // the versions read.
    let mut newer = bytes.clone();
    newer[8..12].copy_from_slice(&4u32.to_le_bytes());
    std::fs::write(&damaged, &newer).unwrap();
    let output = admin(&["backup", "--verify", damaged_arg]);
    assert_fails_with_one_line(&output, damaged_arg);
    let message = stderr(&output);
    assert!(message.contains("version 4") && message.contains("versions 1 to 3"), "{message}");

    let output = admin(&["backup", "--verify", single.dir.path().join("missing").to_str().unwrap()]);
    assert_fails_with_one_line(&output, "cannot read");
    let output = admin(&["backup", "--verify", single.dir.path().to_str().unwrap()]);
    assert_fails_with_one_line(&output, "");
}

/// One client's acknowledged write.
#[derive(Clone, Debug)]
struct Write {
    key: String,
    value: String,
    version: u64,
    acknowledged: std::time::Instant,
}

/// Writes from `clients` threads, to every node in turn, until `stop`: each its own
/// keys (`c<client>-<n>`, written once) and one hot key overwritten in a loop
/// (`hot-<client>`). Returns the acknowledged writes and the keys some write of which
/// failed (whose outcome is unknown).
fn write_load(
    ports: Vec<u16>,
    clients: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<(Vec<Write>, Vec<String>)>> {
    (0..clients)
        .map(|client| {
            let (ports, stop) = (ports.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut writes, mut unknown) = (Vec::new(), Vec::new());
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = if n % 3 == 0 { format!("hot-{client}") } else { format!("c{client}-{n:05}") };
                    let value = format!("{client}/{n}");
                    let port = ports[n % ports.len()];
                    n += 1;
                    match request(port, "PUT", &format!("/v1/kv/{key}"), &[], value.as_bytes()) {
                        Ok(response) if matches!(response.status, 200 | 201) => {
                            let version = response.json()["revision"].as_u64().unwrap();
                            let acknowledged = std::time::Instant::now();
                            writes.push(Write { key, value, version, acknowledged });
                        }
                        _ => unknown.push(key),
                    }
                }
                (writes, unknown)
            })
        })
        .collect()
}

/// What every key holds at `revision`: the acknowledged write with the highest version
/// not above it. Keys with a write of unknown outcome are left out.
fn state_at(writes: &[Write], unknown: &[String], revision: u64) -> BTreeMap<String, (u64, String)> {
    let mut state: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for write in writes.iter().filter(|w| w.version <= revision) {
        let entry = state.entry(write.key.clone()).or_insert((0, String::new()));
        if write.version > entry.0 {
            *entry = (write.version, write.value.clone());
        }
    }
    state.retain(|key, _| !unknown.contains(key));
    state
}

/// Fails naming the first keys that differ (not whole maps of thousands of keys).
fn assert_same_state(
    actual: &BTreeMap<String, (u64, String)>,
    expected: &BTreeMap<String, (u64, String)>,
    what: &str,
) {
    if actual == expected {
        return;
    }
    let keys: std::collections::BTreeSet<&String> = actual.keys().chain(expected.keys()).collect();
    let differences: Vec<String> = keys
        .into_iter()
        .filter(|key| actual.get(*key) != expected.get(*key))
        .take(10)
        .map(|key| format!("{key}: {:?}, expected {:?}", actual.get(key), expected.get(key)))
        .collect();
    panic!("{what} ({} keys, expected {}): {differences:#?}", actual.len(), expected.len());
}

/// Every key and value a node serves, with its mod_revision, from the list route.
fn served(port: u16) -> BTreeMap<String, (u64, String)> {
    let listing = get(port, "/v1/kv?limit=10000").json();
    assert_eq!(listing["more"], false, "more than 10000 keys");
    listing["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let value = item["value"].as_str().unwrap().to_owned();
            (item["key"].as_str().unwrap().to_owned(), (item["mod_revision"].as_u64().unwrap(), value))
        })
        .collect()
}

/// The issue's evidence: a backup taken on a follower while clients write holds
/// exactly the state at its revision (every write acknowledged before it started, at
/// its version; nothing above the revision); restored into a new data directory, a
/// plain `mmapd --data-dir` serves that state under a new cluster id, its first write
/// gets a version above the revision, and a node started with `--join` grows it.
#[test]
fn a_backup_under_load_restored_into_a_new_cluster_serves_exactly_the_state_at_its_revision() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let follower = cluster.others(leader)[0];
    let ports: Vec<u16> = (0..3).map(|node| cluster.port(node)).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = write_load(ports, 4, stop.clone());
    std::thread::sleep(Duration::from_millis(700));

    let file = cluster.dir.path().join("load.backup");
    let socket = socket_of(&cluster, follower);
    let started = std::time::Instant::now();
    let line = admin_ok(&["--socket", socket.to_str().unwrap(), "backup", file.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut writes, mut unknown) = (Vec::new(), Vec::new());
    for client in clients {
        let (w, u) = client.join().unwrap();
        writes.extend(w);
        unknown.extend(u);
    }
    let revision = summary_revision(&line);
    let (file_revision, contents) = backup_contents(&file);
    assert_eq!(file_revision, revision);
    let before = writes.iter().filter(|w| w.acknowledged < started).count();
    let after = writes.iter().filter(|w| w.version > revision).count();
    eprintln!("{} writes: {before} acknowledged before the backup, {after} above its revision", writes.len());
    assert!(before > 50 && after > 50, "{before} writes before the backup and {after} after: not under load");
    for write in writes.iter().filter(|w| w.acknowledged < started) {
        assert!(write.version <= revision, "{write:?} was acknowledged before the backup at {revision}");
    }
    assert!(contents.values().all(|(version, _)| *version <= revision), "a version above {revision}");
    let mut expected = state_at(&writes, &unknown, revision);
    let mut restorable = contents.clone();
    restorable.retain(|key, _| !unknown.contains(key));
    assert_same_state(&restorable, &expected, &format!("the backup is not the state at revision {revision}"));
    expected = contents;

    let restored_port = free_ports(1)[0];
    let address = format!("127.0.0.1:{restored_port}");
    let restored_dir = cluster.dir.path().join("restored");
    let text = admin_ok(&[
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        restored_dir.to_str().unwrap(),
        "--advertise",
        &address,
    ]);
    assert!(text.starts_with(&format!("restored {}", line.trim_end())), "{text}");
    // A backup and a restored directory hold all the data: private to their user.
    let mode = |path: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions()) & 0o777
    };
    assert_eq!(mode(&file), 0o600, "backup file");
    assert_eq!(mode(&restored_dir), 0o700, "restored directory");
    let port_text = restored_port.to_string();
    let mut args = vec!["--port", &port_text, "--data-dir", restored_dir.to_str().unwrap()];
    args.extend(FAST_TIMINGS);
    let mut restored = Daemon::new(cluster.dir.path(), restored_port, &args);
    restored.start().unwrap();
    wait_for(Duration::from_secs(5), "the restored node to lead", || {
        (restored.status()?["state"] == "leader").then_some(())
    });
    assert_same_state(
        &served(restored_port),
        &expected,
        "the restored node does not serve the backup's state",
    );
    let old_cluster = get(cluster.port(leader), "/v1/members").json()["cluster_id"].clone();
    let new_cluster = get(restored_port, "/v1/members").json()["cluster_id"].clone();
    assert_ne!(old_cluster, new_cluster, "the restored cluster kept the old cluster's id");
    let version = put_version(restored_port, "after-restore", "new");
    assert!(
        version > revision,
        "the first write after restore got version {version}, the backup is at {revision}"
    );

    let joiner_port = free_ports(1)[0];
    let joiner_text = joiner_port.to_string();
    let joiner_dir = cluster.dir.path().join("joiner");
    let mut args =
        vec!["--port", &joiner_text, "--data-dir", joiner_dir.to_str().unwrap(), "--join", &address];
    args.extend(FAST_TIMINGS);
    let mut joiner = Daemon::new(cluster.dir.path(), joiner_port, &args);
    joiner.start().unwrap();
    wait_for(Duration::from_secs(10), "the joined node to be a voter", || {
        let members = get(restored_port, "/v1/members").json();
        let voters = members["members"].as_array()?.iter().filter(|m| m["role"] == "voter").count();
        (voters == 2).then_some(())
    });
    expected.insert("after-restore".into(), (version, "new".into()));
    wait_for(Duration::from_secs(5), "the joined node to serve the data", || {
        (served(joiner_port) == expected).then_some(())
    });
}

fn call(port: u16, method: &str, path: &str, body: &str) -> Response {
    request(port, method, path, &[], body.as_bytes()).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// A lease and its key survive backup and restore (as etcd's `snapshot save` and
/// `restore` keep them): the restored node lists the key under the lease, its countdown
/// starts again at the full TTL when the restored node leads, and revoking the lease
/// deletes the key.
#[test]
fn a_restored_cluster_keeps_leases_and_their_keys() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let port = cluster.port(leader);
    let granted = call(port, "POST", "/v1/leases", r#"{"ttl_s":30}"#);
    assert_eq!(granted.status, 201, "{}", granted.text());
    let id = granted.json()["id"].as_str().expect("an id").to_owned();
    let attached = call(port, "PUT", &format!("/v1/kv/k?lease={id}"), "leased");
    assert!(matches!(attached.status, 200 | 201), "{}", attached.text());
    put_version(port, "plain", "no lease");
    let idle = call(port, "POST", "/v1/leases", r#"{"ttl_s":600,"id":"00000000000000ab"}"#);
    assert_eq!(idle.status, 201, "a lease with no keys: {}", idle.text());
    // Let the lease's countdown run, so that a restored one that kept it would show less.
    std::thread::sleep(Duration::from_secs(4));
    let before = call(port, "GET", &format!("/v1/leases/{id}"), "").json();
    assert!(before["ttl_s"].as_u64().unwrap() <= 27, "{before}");

    let file = cluster.dir.path().join("leases.backup");
    let follower = cluster.others(leader)[0];
    let socket = socket_of(&cluster, follower);
    let line = admin_ok(&["--socket", socket.to_str().unwrap(), "backup", file.to_str().unwrap()]);
    assert!(line.contains(", 2 keys, "), "{line}");
    let restored_port = free_ports(1)[0];
    let restored_dir = cluster.dir.path().join("restored");
    admin_ok(&[
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        restored_dir.to_str().unwrap(),
        "--advertise",
        &format!("127.0.0.1:{restored_port}"),
    ]);
    let port_text = restored_port.to_string();
    let mut args = vec!["--port", &port_text, "--data-dir", restored_dir.to_str().unwrap()];
    args.extend(FAST_TIMINGS);
    let mut restored = Daemon::new(cluster.dir.path(), restored_port, &args);
    restored.start().unwrap();
    wait_for(Duration::from_secs(5), "the restored node to lead", || {
        (restored.status()?["state"] == "leader").then_some(())
    });

    let lease = call(restored_port, "GET", &format!("/v1/leases/{id}"), "");
    assert_eq!(lease.status, 200, "the restored node lost the lease: {}", lease.text());
    let lease = lease.json();
    assert_eq!(lease["keys"], serde_json::json!(["k"]), "{lease}");
    assert_eq!(lease["granted_ttl_s"], 30, "{lease}");
    let ttl_s = lease["ttl_s"].as_u64().unwrap();
    assert!(ttl_s >= 28, "the restored lease's countdown did not start again at its full TTL: {lease}");
    let idle = call(restored_port, "GET", "/v1/leases/00000000000000ab", "").json();
    assert_eq!((idle["granted_ttl_s"].clone(), idle["keys"].clone()), (600.into(), serde_json::json!([])));
    let all = call(restored_port, "GET", "/v1/leases", "").json();
    assert_eq!(all["leases"].as_array().unwrap().len(), 2, "{all}");
    let value = get(restored_port, "/v1/kv/k");
    assert_eq!((value.status, value.text()), (200, "leased".to_owned()));

    let revoked = call(restored_port, "DELETE", &format!("/v1/leases/{id}"), "");
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert_eq!(revoked.json()["deleted"], 1, "{}", revoked.text());
    assert_eq!(get(restored_port, "/v1/kv/k").status, 404, "revoking the restored lease left its key");
    assert_eq!(get(restored_port, "/v1/kv/plain").text(), "no lease");
    assert_eq!(call(restored_port, "GET", &format!("/v1/leases/{id}"), "").status, 404);
}

#[test]
fn restore_refuses_a_non_empty_directory_a_damaged_backup_and_a_bad_address() {
    let single = Single::start(&[]);
    put_version(single.port(), "k", "v");
    let file = single.dir.path().join("small.backup");
    let socket = single.admin_socket();
    admin_ok(&["--socket", socket.to_str().unwrap(), "backup", file.to_str().unwrap()]);
    let file_arg = file.to_str().unwrap();

    let occupied = single.dir.path().join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("something"), b"x").unwrap();
    let output = admin(&["restore", file_arg, "--data-dir", occupied.to_str().unwrap()]);
    assert_fails_with_one_line(&output, "is not empty");
    assert_eq!(std::fs::read_dir(&occupied).unwrap().count(), 1, "restore wrote into a non-empty directory");
    let live = single.dir.path().join("data");
    assert_fails_with_one_line(
        &admin(&["restore", file_arg, "--data-dir", live.to_str().unwrap()]),
        "is not empty",
    );

    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 40;
    bytes[last] ^= 0x10;
    let damaged = single.dir.path().join("damaged.backup");
    std::fs::write(&damaged, &bytes).unwrap();
    let fresh = single.dir.path().join("fresh");
    let output = admin(&["restore", damaged.to_str().unwrap(), "--data-dir", fresh.to_str().unwrap()]);
    assert_fails_with_one_line(&output, "damaged backup at byte offset");
    assert!(!fresh.exists(), "restore wrote a data directory from a damaged backup");

    let output =
        admin(&["restore", file_arg, "--data-dir", fresh.to_str().unwrap(), "--advertise", "no port"]);
    assert_fails_with_one_line(&output, "no port");
    assert!(!fresh.exists());
    let output = admin(&[
        "restore",
        single.dir.path().join("missing").to_str().unwrap(),
        "--data-dir",
        fresh.to_str().unwrap(),
    ]);
    assert_fails_with_one_line(&output, "missing");
}

/// Every file under `dir` and its bytes.
fn snapshot_of_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect()
}

fn inspect_json(dir: &Path) -> serde_json::Value {
    let text = admin_ok(&["inspect", "--data-dir", dir.to_str().unwrap(), "--json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `inspect` of a stopped node shows the indexes and identity `/status` showed before it
/// stopped, and changes nothing; a running node's directory is refused.
#[test]
fn inspect_shows_a_stopped_nodes_identity_indexes_and_configuration_and_changes_nothing() {
    let mut single = Single::start(&[]);
    let port = single.port();
    let socket = single.admin_socket();
    for i in 0..30 {
        put_version(port, &format!("a{i}"), "x");
    }
    let snapshot_line = admin_ok(&["--socket", socket.to_str().unwrap(), "snapshot"]);
    let snapshot_index: u64 = snapshot_line.split_whitespace().nth(3).unwrap().parse().unwrap();
    for i in 0..20 {
        put_version(port, &format!("b{i}"), "y");
    }
    let data_dir = single.dir.path().join("data");
    let output = admin(&["inspect", "--data-dir", data_dir.to_str().unwrap()]);
    assert_fails_with_one_line(&output, "locked by another mmapd process");

    let status = single.node.status().unwrap();
    let cluster_id = get(port, "/v1/members").json()["cluster_id"].clone();
    single.node.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(single.node.wait_exit(Duration::from_secs(10)).success());
    let before = snapshot_of_files(&data_dir);
    let json = inspect_json(&data_dir);
    assert_eq!(snapshot_of_files(&data_dir), before, "inspect changed the data directory");
    assert_eq!(json["node_id"], status["node_id"]);
    assert_eq!(json["cluster_id"], cluster_id);
    assert_eq!(json["cluster_record"]["cluster_id"], cluster_id);
    assert_eq!(json["term"], status["term"]);
    assert_eq!(json["commit_index"], status["commit_index"]);
    assert_eq!(json["last_index"], status["last_index"]);
    assert_eq!(json["first_index"], status["first_index"]);
    assert_eq!(json["snapshot"]["index"], snapshot_index);
    assert_eq!(json["keys"], 50);
    assert_eq!(json["origin"], "bootstrapped");
    assert_eq!(json["configuration"]["voters"], serde_json::json!([status["node_id"]]));
    let member = &json["configuration"]["members"][0];
    assert_eq!(
        (member["address"].as_str(), member["role"].as_str()),
        (Some(single.node.address().as_str()), Some("voter"))
    );
    assert_eq!(json["warnings"], serde_json::json!([]));

    let text = admin_ok(&["inspect", "--data-dir", data_dir.to_str().unwrap()]);
    let commit_line = format!("commit index {} ", status["commit_index"]);
    assert!(text.contains(&commit_line), "{text}");
    assert!(text.contains(&format!("snapshot: index {snapshot_index},")), "{text}");
    assert!(text.contains(&single.node.address()), "{text}");

    let output = admin(&["inspect", "--data-dir", single.dir.path().join("nowhere").to_str().unwrap()]);
    assert_fails_with_one_line(&output, "is not a directory");
    let output = admin(&["inspect", "--data-dir", single.dir.path().to_str().unwrap()]);
    assert_fails_with_one_line(&output, "not an mmapd data directory");
    single.node.start().unwrap();
    assert_eq!(get(port, "/v1/kv/b7").text(), "y", "the node does not start again after inspect");
}

/// The applied state a node serves without asking a leader.
fn served_stale(port: u16) -> BTreeMap<String, (u64, String)> {
    let listing = get(port, "/v1/kv?limit=10000&consistency=stale").json();
    assert_eq!(listing["more"], false, "more than 10000 keys");
    listing["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let value = item["value"].as_str().unwrap().to_owned();
            (item["key"].as_str().unwrap().to_owned(), (item["mod_revision"].as_u64().unwrap(), value))
        })
        .collect()
}

/// The issue's evidence: two of three nodes killed for good under writes; the stopped
/// survivor, forced into a new cluster, serves everything it had applied, takes new
/// writes above its old revisions, grows with `--join`, and refuses an old member that
/// comes back.
#[test]
fn force_new_cluster_after_losing_two_of_three_keeps_what_the_survivor_applied_and_grows_with_join() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let survivor = cluster.others(leader)[0];
    let lost: Vec<usize> = (0..3).filter(|&n| n != survivor).collect();
    let ports: Vec<u16> = (0..3).map(|node| cluster.port(node)).collect();
    let survivor_port = cluster.port(survivor);

    // Phase 1: writes, then the survivor catches up: it has applied every one of them.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = write_load(ports.clone(), 3, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut caught_up = Vec::new();
    for client in clients {
        caught_up.extend(client.join().unwrap().0);
    }
    let commit = cluster.nodes[leader].status().unwrap()["commit_index"].as_u64().unwrap();
    wait_for(Duration::from_secs(5), "the survivor to apply everything", || {
        (cluster.nodes[survivor].status()?["last_applied"].as_u64()? >= commit).then_some(())
    });

    // Phase 2: writes going on when two nodes die for good.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = write_load(ports, 3, stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    for &node in &lost {
        cluster.nodes[node].kill9();
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let applied = served_stale(survivor_port);
    assert!(applied.len() > 100, "{} keys", applied.len());
    let revision = applied.values().map(|(version, _)| *version).max().unwrap();
    let old_cluster = get(survivor_port, "/v1/members?local=1").json()["cluster_id"].clone();
    let survivor_dir = cluster.dir.path().join(format!("node-{survivor_port}"));
    let output = admin(&["force-new-cluster", "--data-dir", survivor_dir.to_str().unwrap()]);
    assert_fails_with_one_line(&output, "locked by another mmapd process");
    cluster.nodes[survivor].signal(nix::sys::signal::Signal::SIGTERM);
    cluster.nodes[survivor].wait_exit(Duration::from_secs(10));

    // The operator's choice of survivor: its inspection.
    let before = inspect_json(&survivor_dir);
    assert!(before["commit_index"].as_u64().unwrap() >= revision, "{before}");
    assert_eq!(before["configuration"]["voters"].as_array().unwrap().len(), 3, "{before}");
    let text = admin_ok(&["force-new-cluster", "--data-dir", survivor_dir.to_str().unwrap()]);
    eprintln!("{text}");
    assert!(text.contains("kept: the state this node had committed"), "{text}");
    let after = inspect_json(&survivor_dir);
    assert_eq!(after["node_id"], before["node_id"], "the node keeps its id");
    assert_ne!(after["cluster_id"], before["cluster_id"]);
    assert_eq!(after["configuration"]["voters"], serde_json::json!([before["node_id"]]));
    assert_eq!(after["cluster_record"]["removed"].as_array().unwrap().len(), 2, "{after}");
    assert_eq!(after["commit_index"], after["last_index"]);
    let again = admin(&["force-new-cluster", "--data-dir", survivor_dir.to_str().unwrap()]);
    assert_fails_with_one_line(&again, "already a cluster whose only voter is this node");
    assert_eq!(
        inspect_json(&survivor_dir)["cluster_id"],
        after["cluster_id"],
        "a refused force changed the cluster"
    );

    // Started as it always was (its --peers still names the lost nodes: ignored).
    cluster.nodes[survivor].start().unwrap();
    wait_for(Duration::from_secs(5), "the survivor to lead alone", || {
        (cluster.nodes[survivor].status()?["state"] == "leader").then_some(())
    });
    assert_same_state(&served(survivor_port), &applied, "the survivor lost something it had applied");
    for write in &caught_up {
        let (version, _) = &applied[&write.key];
        assert!(*version >= write.version, "{write:?} applied before the loss is gone");
    }
    let new_cluster = get(survivor_port, "/v1/members").json()["cluster_id"].clone();
    assert_ne!(new_cluster, old_cluster);
    let version = put_version(survivor_port, "after-force", "new");
    assert!(version > revision, "a new write got version {version}, the survivor had applied {revision}");

    let joiner_port = free_ports(1)[0];
    let joiner_text = joiner_port.to_string();
    let joiner_dir = cluster.dir.path().join("joiner");
    let survivor_address = cluster.nodes[survivor].address();
    let mut args =
        vec!["--port", &joiner_text, "--data-dir", joiner_dir.to_str().unwrap(), "--join", &survivor_address];
    args.extend(FAST_TIMINGS);
    let mut joiner = Daemon::new(cluster.dir.path(), joiner_port, &args);
    joiner.start().unwrap();
    wait_for(Duration::from_secs(10), "the joined node to be a voter", || {
        let members = get(survivor_port, "/v1/members").json();
        let voters = members["members"].as_array()?.iter().filter(|m| m["role"] == "voter").count();
        (voters == 2).then_some(())
    });
    let mut expected = applied;
    expected.insert("after-force".into(), (version, "new".into()));
    wait_for(Duration::from_secs(5), "the joined node to serve the data", || {
        (served(joiner_port) == expected).then_some(())
    });

    // An old member that comes back with its old data cannot take part.
    cluster.nodes[lost[0]].start().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let members = get(survivor_port, "/v1/members").json();
    assert_eq!(members["members"].as_array().unwrap().len(), 2, "{members}");
    assert!(put_version(survivor_port, "still-serving", "x") > version);
    let stale = request(cluster.port(lost[0]), "GET", "/v1/kv/after-force?consistency=stale", &[], b"");
    assert!(stale.map_or(true, |r| r.status == 404), "the old member got the new cluster's write");
}

/// One raw request on a Unix socket; the answer parsed.
fn unix_request(socket: &Path, raw: &[u8]) -> Option<Response> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(raw).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    parse_response(&answer)
}

#[test]
fn malformed_backup_requests_get_a_4xx_and_bad_files_one_line() {
    let single = Single::start(&[]);
    put_version(single.port(), "k", "v");
    let socket = single.admin_socket();
    let post = unix_request(
        &socket,
        b"POST /backup HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(post.map(|r| r.status), Some(405));
    let query =
        unix_request(&socket, b"GET /backup?limit=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let query = query.unwrap();
    assert_eq!(query.status, 400, "{}", query.text());
    let garbage = unix_request(&socket, b"GET /backup HTTP/9.9 \x00\xff\r\n\r\n");
    assert!(garbage.is_none_or(|r| (400..500).contains(&r.status)));
    // HTTP/1.0: the body is not chunked, it ends with the connection.
    let whole = unix_request(&socket, b"GET /backup HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(whole.status, 200);
    assert!(whole.header("x-mmapd-revision").is_some());
    let mut body: &[u8] = &whole.body;
    let summary = mmapd::kv::verify_backup(&mut body).unwrap();
    assert_eq!(summary.header.keys, 1);

    let dir = single.dir.path();
    for (name, bytes) in
        [("empty", &b""[..]), ("json", &b"{\"a\":\"b\"}"[..]), ("text", &b"MMAPDBAK but not really"[..])]
    {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        assert_fails_with_one_line(&admin(&["backup", "--verify", path.to_str().unwrap()]), "damaged backup");
        let target = dir.join(format!("restored-{name}"));
        let output = admin(&["restore", path.to_str().unwrap(), "--data-dir", target.to_str().unwrap()]);
        assert_fails_with_one_line(&output, "damaged backup");
        let output = admin(&["inspect", "--data-dir", path.to_str().unwrap()]);
        assert_fails_with_one_line(&output, "is not a directory");
        let output = admin(&["force-new-cluster", "--data-dir", path.to_str().unwrap()]);
        assert_fails_with_one_line(&output, "is not a directory");
    }
    let never_started = dir.join("never-started");
    std::fs::create_dir(&never_started).unwrap();
    std::fs::write(never_started.join("LOCK"), b"").unwrap();
    let output = admin(&["force-new-cluster", "--data-dir", never_started.to_str().unwrap()]);
    assert_fails_with_one_line(&output, "has no identity");
    let missing_socket = dir.join("no.sock");
    let output =
        admin(&["--socket", missing_socket.to_str().unwrap(), "backup", dir.join("b").to_str().unwrap()]);
    assert_fails_with_one_line(&output, "no admin socket");
    assert!(!dir.join("b").exists() && !dir.join("b.part").exists());
}
