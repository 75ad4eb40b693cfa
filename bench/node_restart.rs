//! Restart of a real `mmapd` process holding 1,000,000 keys of 16 B with 100 B values:
//! the time from process start to READY=1 (sd-notify, sent once the state is loaded
//! and both listeners are bound) and the resident memory once ready.
//!
//! Run: `cargo bench --bench node_restart` (builds the release binary first).
//! `NODE_RESTART_KEYS` and `NODE_RESTART_ROUNDS` change the size and rounds.
//!
//! Setup: one node imports the keys as the original's db.json through the admin
//! socket, takes a snapshot, and stops; each round then starts it again.

use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let keys: usize = env_or("NODE_RESTART_KEYS", 1_000_000);
    let rounds: usize = env_or("NODE_RESTART_ROUNDS", 5);
    let binary = build_release_binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let port = 20_000 + (std::process::id() % 20_000) as u16;

    let db_json = dir.path().join("db.json");
    write_db_json(&db_json, keys);
    let raw_bytes = keys * (16 + 100);

    // Load once: import, snapshot, stop.
    let (mut child, _) = start(&binary, dir.path(), port);
    let socket = dir.path().join(format!("mmapd-{port}/admin.sock"));
    let started = Instant::now();
    let body = std::fs::read(&db_json).expect("read db.json");
    admin(&socket, "/import", &body);
    admin(&socket, "/snapshot", b"");
    eprintln!("loaded {keys} keys in {:.1} s", started.elapsed().as_secs_f64());
    stop(&mut child);

    let mut ready_ms = Vec::new();
    let mut rss_mb = Vec::new();
    for round in 0..rounds {
        let (mut child, ready) = start(&binary, dir.path(), port);
        let rss = resident_bytes(child.id());
        eprintln!(
            "round {round}: ready in {:.0} ms, resident {:.0} MB",
            ready.as_secs_f64() * 1e3,
            rss as f64 / 1e6
        );
        ready_ms.push(ready.as_secs_f64() * 1e3);
        rss_mb.push(rss as f64 / 1e6);
        stop(&mut child);
    }
    let ready = median(&mut ready_ms);
    let rss = median(&mut rss_mb);
    println!(
        "| keys | raw key+value bytes | ready (median of {rounds}) | resident after ready | resident / raw |"
    );
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {keys} | {:.0} MB | {ready:.0} ms | {rss:.0} MB | {:.2}x |",
        raw_bytes as f64 / 1e6,
        rss * 1e6 / raw_bytes as f64
    );
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn build_release_binary() -> std::path::PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--bin", "mmapd"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo build");
    assert!(status.success(), "release build failed");
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/mmapd")
}

fn write_db_json(path: &Path, keys: usize) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create db.json"));
    out.write_all(b"{").unwrap();
    for i in 0..keys {
        if i > 0 {
            out.write_all(b",").unwrap();
        }
        // 16-byte keys, 100-byte values.
        write!(out, "\"key-{i:012}\":\"{:0>100}\"", i).unwrap();
    }
    out.write_all(b"}").unwrap();
}

/// Starts the node with a private NOTIFY_SOCKET; returns once READY=1 arrives.
fn start(binary: &Path, dir: &Path, port: u16) -> (Child, Duration) {
    let notify_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    notify.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let started = Instant::now();
    let mut child = Command::new(binary)
        .args(["--port", &port.to_string(), "--request-timeout-ms", "600000"])
        .current_dir(dir)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start mmapd");
    let mut buffer = [0u8; 4096];
    loop {
        let n = match notify.recv(&mut buffer) {
            Ok(n) => n,
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no READY=1 within 120 s: {error}");
            }
        };
        if String::from_utf8_lossy(&buffer[..n]).lines().any(|l| l == "READY=1") {
            return (child, started.elapsed());
        }
    }
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().expect("wait for mmapd");
    assert!(status.success(), "mmapd exited with {status}");
}

fn admin(socket: &Path, path: &str, body: &[u8]) {
    let mut stream = UnixStream::connect(socket).expect("connect admin socket");
    stream.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: mmapd\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
}

fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("VmRSS value") * 1024
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}
