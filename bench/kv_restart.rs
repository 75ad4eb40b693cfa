//! Restart cost of the key-value state machine: read a snapshot file and load it.
//!
//! Builds 1,000,000 keys of 16 bytes with 100-byte values, writes a snapshot to a temp
//! file, then loads it in a fresh child process per round (so its resident memory is not
//! polluted by the build), once per loader:
//!
//! - `copy`:   `std::fs::read` + `StateMachine::load_snapshot` (a key and value allocation each);
//! - `shared`: `std::fs::read` + `StateMachine::load_snapshot_shared` (slices of one buffer).
//!
//! Prints the median over rounds of read time, load time and resident memory (VmRSS after
//! minus before, and the peak VmHWM). Run: `cargo bench --bench kv_restart`.
//! Environment: `KV_RESTART_KEYS` (default 1000000), `KV_RESTART_ROUNDS` (default 5).

use std::fs::File;
use std::path::Path;
use std::process::Command as Process;
use std::time::Instant;

use bytes::Bytes;
use mmapd::kv::{Command, StateMachine};

const KEY_BYTES: usize = 16;
const VALUE_BYTES: usize = 100;
const CHILD_ENV: &str = "KV_RESTART_CHILD";

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (mode, path) = spec.split_once(':').expect("child spec is mode:path");
        child(mode, Path::new(path));
        return;
    }
    let keys: u64 = env_or("KV_RESTART_KEYS", 1_000_000);
    let rounds: usize = env_or("KV_RESTART_ROUNDS", 5);

    let started = Instant::now();
    let state = build(keys);
    let build_secs = started.elapsed().as_secs_f64();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kv.snapshot");
    let started = Instant::now();
    let mut file = File::create(&path).expect("create snapshot");
    let snapshot_bytes = state.write_snapshot(&mut file).expect("write snapshot");
    file.sync_all().expect("fsync snapshot");
    let write_secs = started.elapsed().as_secs_f64();
    drop(state);

    let raw_bytes = keys * (KEY_BYTES + VALUE_BYTES) as u64;
    println!("kv_restart: {keys} keys x ({KEY_BYTES} B key + {VALUE_BYTES} B value) = {raw_bytes} raw bytes");
    println!("  build by apply: {build_secs:.2} s; snapshot {snapshot_bytes} bytes written + fsync in {write_secs:.2} s");
    println!("  {rounds} rounds per loader, each in a fresh process; medians:");
    for mode in ["copy", "shared"] {
        let samples: Vec<[f64; 5]> = (0..rounds).map(|_| run_child(mode, &path)).collect();
        let median = |field: usize| {
            let mut values: Vec<f64> = samples.iter().map(|sample| sample[field]).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let (read_ms, load_ms, rss_delta_kb, hwm_kb) = (median(0), median(1), median(2), median(3));
        let ratio = rss_delta_kb * 1024.0 / raw_bytes as f64;
        println!(
            "  {mode:>6}: read {read_ms:7.1} ms  load {load_ms:7.1} ms  total {:7.1} ms  \
             RSS +{:.0} MB ({ratio:.2}x raw)  peak {:.0} MB",
            read_ms + load_ms,
            rss_delta_kb / 1024.0,
            hwm_kb / 1024.0,
        );
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// Applies one put per key, as a follower would while replaying its log.
fn build(keys: u64) -> StateMachine {
    let mut state = StateMachine::new();
    let value = Bytes::from(vec![b'v'; VALUE_BYTES]);
    for index in 1..=keys {
        let key = format!("key-{:012}", index - 1);
        assert_eq!(key.len(), KEY_BYTES);
        state.apply(index, &Command::put(key, value.clone()));
    }
    // Give every value its own allocation, as values decoded from separate entries have.
    let mut copied = StateMachine::new();
    let mut index = 0;
    for (key, stored) in state.iter() {
        index += 1;
        copied.apply(index, &Command::put(key.clone(), Bytes::copy_from_slice(&stored.data)));
    }
    copied
}

/// Runs one load in a fresh process; returns [read ms, load ms, RSS delta KB, peak KB, keys].
fn run_child(mode: &str, path: &Path) -> [f64; 5] {
    let exe = std::env::current_exe().expect("current exe");
    let output =
        Process::new(exe).env(CHILD_ENV, format!("{mode}:{}", path.display())).output().expect("spawn child");
    assert!(output.status.success(), "child failed: {}", String::from_utf8_lossy(&output.stderr));
    let line = String::from_utf8(output.stdout).expect("utf-8");
    let fields: Vec<f64> = line.split_whitespace().map(|field| field.parse().expect("number")).collect();
    fields.try_into().expect("five fields")
}

fn child(mode: &str, path: &Path) {
    let rss_before_kb = status_kb("VmRSS");
    let started = Instant::now();
    let data = std::fs::read(path).expect("read snapshot");
    let read_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let state = match mode {
        "copy" => {
            let state = StateMachine::load_snapshot(&data).expect("load");
            drop(data);
            state
        }
        "shared" => StateMachine::load_snapshot_shared(&Bytes::from(data)).expect("load"),
        other => panic!("unknown mode {other}"),
    };
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let rss_after_kb = status_kb("VmRSS");
    let hwm_kb = status_kb("VmHWM");
    let keys = std::hint::black_box(&state).len();
    println!("{read_ms} {load_ms} {} {hwm_kb} {keys}", rss_after_kb - rss_before_kb);
}

/// A `kB` field of /proc/self/status.
fn status_kb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|line| line.starts_with(field)).expect("field present");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse().ok()).expect("kB value")
}
