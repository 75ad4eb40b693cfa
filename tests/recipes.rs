//! The recipes of docs/recipes.md, run as users run them: `examples/lock.sh` (curl and
//! bash only) against a real 3-node cluster. Contenders for one lock never hold it at
//! once, each holder's fencing token is larger than every earlier holder's, a waiter
//! takes the lock when the holder releases it, and when a holder dies (its lease no
//! longer kept alive) once the lease expires.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lock.sh")
}

fn need_curl() {
    let found = Command::new("curl").arg("--version").output().is_ok_and(|output| output.status.success());
    assert!(
        found,
        "tests/recipes.rs runs examples/lock.sh, which needs curl: install it (apt-get install curl)"
    );
}

/// Starts `lock.sh URL NAME sh -c HOLD` in its own process group.
fn contender(url: &str, name: &str, hold: &str, ttl_s: u64, value: &str) -> Child {
    Command::new("bash")
        .arg(script())
        .args([url, name, "sh", "-c", hold])
        .env("LOCK_TTL_S", ttl_s.to_string())
        .env("LOCK_VALUE", value)
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("bash")
}

/// (holder, fencing token, start ms, end ms) of each hold logged in `log`.
fn holds(log: &Path) -> Vec<(String, u64, u128, u128)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut starts = std::collections::HashMap::new();
    let mut holds = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [event, who, token, at] = fields[..] else { panic!("a bad log line: {line}") };
        let (token, at): (u64, u128) = (token.parse().unwrap(), at.parse().unwrap());
        match event {
            "start" => {
                starts.insert(who.to_owned(), (token, at));
            }
            "end" => {
                let (start_token, start) = starts.remove(who).expect("an end after its start");
                assert_eq!(start_token, token);
                holds.push((who.to_owned(), token, start, at));
            }
            other => panic!("a bad log event {other}"),
        }
    }
    holds.sort_by_key(|hold| hold.2);
    holds
}

fn hold_command(log: &Path, who: &str, seconds: f64) -> String {
    let log = log.display();
    format!(
        "echo start {who} $MMAPD_FENCING_TOKEN $(date +%s%3N) >> {log}; sleep {seconds}; \
         echo end {who} $MMAPD_FENCING_TOKEN $(date +%s%3N) >> {log}"
    )
}

#[test]
fn lock_contenders_hold_the_lock_one_at_a_time_with_growing_fencing_tokens() {
    need_curl();
    let cluster = Cluster::start(3, &["--watch-progress-ms", "200"]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("holds");
    let mut children: Vec<Child> = (0..4)
        .map(|i| {
            // Contenders on every node: the lock is the cluster's, not a node's.
            let url = format!("http://127.0.0.1:{}", cluster.port(i % 3));
            contender(&url, "job", &hold_command(&log, &format!("c{i}"), 0.5), 5, &format!("c{i}"))
        })
        .collect();
    for child in &mut children {
        let status = child.wait().unwrap();
        assert!(status.success(), "a contender failed: {status}");
    }
    let holds = holds(&log);
    assert_eq!(holds.len(), 4, "every contender held the lock once: {holds:?}");
    for pair in holds.windows(2) {
        let ((a, a_token, _, a_end), (b, b_token, b_start, _)) = (&pair[0], &pair[1]);
        assert!(b_start >= a_end, "{b} took the lock at {b_start} while {a} held it until {a_end}");
        assert!(b_token > a_token, "{b}'s fencing token {b_token} is not above {a}'s {a_token}");
    }
    // Released: nobody holds it, and its lease went with the last holder.
    let left = request(cluster.port(0), "GET", "/v1/kv/locks/job", &[], b"").unwrap();
    assert_eq!(left.status, 404, "the lock key outlived its holders: {}", left.text());
}

#[test]
fn a_dead_holders_lock_passes_to_a_waiter_once_its_lease_expires() {
    need_curl();
    let cluster = Cluster::start(3, &["--watch-progress-ms", "200"]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("holds");
    let url = format!("http://127.0.0.1:{}", cluster.port(0));
    let mut holder = contender(&url, "job", &hold_command(&log, "dead", 60.0), 2, "dead");
    wait_for(Duration::from_secs(10), "the first holder to take the lock", || {
        std::fs::read_to_string(&log).ok().filter(|text| text.contains("start dead")).map(|_| ())
    });
    let waiter_url = format!("http://127.0.0.1:{}", cluster.port(1));
    let mut waiter = contender(&waiter_url, "job", &hold_command(&log, "next", 0.1), 2, "next");
    std::thread::sleep(Duration::from_millis(500));
    // The holder dies with its keepalives (the whole process group): nobody releases.
    let killed = Instant::now();
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(holder.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = holder.wait();
    let status = waiter.wait().unwrap();
    assert!(status.success(), "the waiter failed: {status}");
    let took = killed.elapsed();
    let text = std::fs::read_to_string(&log).unwrap();
    let token = |who: &str| -> u64 {
        let line =
            text.lines().find(|line| line.starts_with(&format!("start {who} "))).expect("a start line");
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    assert!(token("next") > token("dead"), "the fencing token did not grow:\n{text}");
    // Not before the lease could have expired (its last keepalive was at most a
    // keepalive period before the kill), and not long after.
    assert!(took >= Duration::from_millis(1_000), "the lock passed {took:?} after its holder died");
    assert!(took < Duration::from_secs(15), "the lock took {took:?} to pass");
}
