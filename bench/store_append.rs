//! Append throughput of the store with group commit: batches of 1, 16 and 256 entries of
//! 100 bytes, one `sync` (one `msync`) per batch. Prints medians over several rounds.
//!
//! Run: `cargo bench --bench store_append` (release profile). The store lives under
//! `target/`, i.e. on the same file system as the checkout.

use std::time::Instant;

use bytes::Bytes;
use mmapd::raft::{Entry, EntryKind};
use mmapd::store::{Store, StoreOptions};

const PAYLOAD_BYTES: usize = 100;
const ROUNDS: usize = 5;
/// Entries written per round, per batch size: enough for a stable figure, small enough to be quick.
const ENTRIES_PER_ROUND: [(u64, u64); 3] = [(1, 2_000), (16, 16_000), (256, 128_000)];

struct Round {
    entries_per_second: f64,
    msyncs_per_second: f64,
    bytes_synced_per_entry: f64,
}

fn round(batch: u64, total: u64) -> Round {
    std::fs::create_dir_all("target/bench-store").unwrap();
    let dir = tempfile::tempdir_in("target/bench-store").unwrap();
    let (mut store, _) = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let payload = Bytes::from(vec![0xA5; PAYLOAD_BYTES]);
    let mut msyncs = 0u64;
    let mut synced_bytes = 0u64;
    let mut index = 1;
    let started = Instant::now();
    while index <= total {
        let entries: Vec<Entry> = (index..index + batch)
            .map(|i| Entry { index: i, term: 1, kind: EntryKind::Normal, data: payload.clone() })
            .collect();
        store.append(&entries).unwrap();
        let stats = store.sync().unwrap();
        msyncs += stats.msync_calls as u64;
        synced_bytes += stats.bytes;
        index += batch;
    }
    let seconds = started.elapsed().as_secs_f64();
    let written = index - 1;
    Round {
        entries_per_second: written as f64 / seconds,
        msyncs_per_second: msyncs as f64 / seconds,
        bytes_synced_per_entry: synced_bytes as f64 / written as f64,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    println!("store append, {PAYLOAD_BYTES} B entries, one sync per batch, median of {ROUNDS} rounds");
    println!(
        "{:>6} {:>12} {:>14} {:>12} {:>18}",
        "batch", "entries", "entries/s", "msyncs/s", "msync bytes/entry"
    );
    for (batch, total) in ENTRIES_PER_ROUND {
        let rounds: Vec<Round> = (0..ROUNDS).map(|_| round(batch, total)).collect();
        let entries_per_second = median(rounds.iter().map(|r| r.entries_per_second).collect());
        let msyncs_per_second = median(rounds.iter().map(|r| r.msyncs_per_second).collect());
        let bytes_per_entry = median(rounds.iter().map(|r| r.bytes_synced_per_entry).collect());
        println!(
            "{batch:>6} {total:>12} {entries_per_second:>14.0} {msyncs_per_second:>12.0} {bytes_per_entry:>18.0}"
        );
    }
}
