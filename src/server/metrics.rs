//! Counters and histograms, rendered in the Prometheus text format at `GET /metrics`.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::raft::NodeId;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The largest value seen, in nanoseconds (lock-free).
#[derive(Debug, Default)]
pub struct MaxSeconds(AtomicU64);

impl MaxSeconds {
    /// Records one observation, in seconds.
    pub fn observe(&self, seconds: f64) {
        self.0.fetch_max((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    /// The largest observation, in seconds.
    pub fn get(&self) -> f64 {
        self.0.load(Ordering::Relaxed) as f64 / 1e9
    }
}

/// Bucket upper bounds in seconds, from 50 µs to 10 s.
const BUCKETS_SECONDS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A latency histogram with fixed buckets (lock-free).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket counts (not cumulative); the last slot is +Inf.
    buckets: [AtomicU64; BUCKETS_SECONDS.len() + 1],
    count: AtomicU64,
    /// Sum in nanoseconds.
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation, in seconds.
    pub fn observe(&self, seconds: f64) {
        let slot =
            BUCKETS_SECONDS.iter().position(|&bound| seconds <= bound).unwrap_or(BUCKETS_SECONDS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (slot, bound) in BUCKETS_SECONDS.iter().enumerate() {
            cumulative += self.buckets[slot].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[BUCKETS_SECONDS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {}", self.count.load(Ordering::Relaxed));
    }
}

/// Everything the node counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Proposals accepted by this node as leader.
    pub proposals: Counter,
    /// Entries applied to the state machine.
    pub applied_entries: Counter,
    /// Peer messages the core refused as malformed.
    pub peer_messages_refused: Counter,
    /// Disk failures.
    pub storage_errors: Counter,
    /// HTTP requests served, by any route.
    pub http_requests: Counter,
    /// Time from a write request to its commit and apply.
    pub commit_seconds: Histogram,
    /// Time of one msync batch.
    pub msync_seconds: Histogram,
    /// Time from handing a Ready to the disk thread until it is durable.
    pub persist_seconds: Histogram,
    /// On a follower: time between two deliveries from its leader (heartbeats come
    /// every tick; a long gap is a leader, a network or this node's loop that stalled).
    pub leader_contact_gap_seconds: Histogram,
    /// The longest of those gaps since start.
    pub leader_contact_gap_max: MaxSeconds,
    /// Time to serialise and write a snapshot, off the driver's loop.
    pub snapshot_build_seconds: Histogram,
    /// Snapshot chunks received from a leader and written to the staging file.
    pub snapshot_chunks_received: Counter,
    /// Snapshot bytes received in chunks.
    pub snapshot_chunk_bytes_received: Counter,
    /// Chunked snapshot transfers that continued from bytes already held (a sender
    /// came back after a lost connection, or another leader sent the same snapshot).
    pub snapshot_transfers_resumed: Counter,
    /// Snapshots received whole in chunks and handed to the driver.
    pub snapshot_transfers_completed: Counter,
    /// Batches of forwarded writes sent to a leader (`api::forward`).
    pub forward_batches: Counter,
    /// Writes forwarded to a leader in those batches.
    pub forwarded_writes: Counter,
    /// When a delivery from each peer last arrived.
    peer_contact: Mutex<HashMap<NodeId, Instant>>,
}

impl AsRef<Metrics> for Metrics {
    fn as_ref(&self) -> &Metrics {
        self
    }
}

/// One follower's replication, as the leader sees it, for the per-peer gauges.
pub struct PeerGauge {
    /// Its advertised address (the `peer` label).
    pub address: String,
    /// The highest index known to be replicated on it.
    pub match_index: u64,
    /// Time since a message from it last arrived; None: never since start.
    pub last_contact: Option<Duration>,
}

/// Gauges read from the node at render time.
pub struct Gauges {
    /// 0 follower, 1 pre-candidate, 2 candidate, 3 leader.
    pub role: u8,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// Bytes mapped by the store.
    pub mapped_bytes: u64,
    /// Keys in the state machine.
    pub keys: u64,
    /// Key-value data as the quota counts it (`StateMachine::approximate_bytes`).
    pub kv_data_bytes: u64,
    /// `--quota-bytes`.
    pub quota_bytes: u64,
    /// On the leader, its followers; empty otherwise.
    pub peers: Vec<PeerGauge>,
    /// TLS handshakes refused over a certificate since start (a counter, kept by
    /// `tls::Tls`); 0 without TLS.
    pub tls_handshakes_refused: u64,
}

impl Metrics {
    /// Records that messages from `peer` arrived now.
    pub fn note_peer_contact(&self, peer: NodeId) {
        self.peer_contact.lock().expect("peer contact lock").insert(peer, Instant::now());
    }

    /// Time since messages from `peer` last arrived; None if they never did.
    pub fn peer_last_contact(&self, peer: NodeId) -> Option<Duration> {
        self.peer_contact.lock().expect("peer contact lock").get(&peer).map(Instant::elapsed)
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        };
        gauge(
            &mut out,
            "mmapd_role",
            "0 follower, 1 pre-candidate, 2 candidate, 3 leader",
            gauges.role as u64,
        );
        gauge(&mut out, "mmapd_term", "Current Raft term", gauges.term);
        gauge(&mut out, "mmapd_commit_index", "Raft commit index", gauges.commit_index);
        gauge(
            &mut out,
            "mmapd_applied_index",
            "Index applied to the key-value state machine",
            gauges.applied_index,
        );
        gauge(&mut out, "mmapd_mapped_bytes", "Bytes of memory-mapped files", gauges.mapped_bytes);
        gauge(&mut out, "mmapd_keys", "Keys in the state machine", gauges.keys);
        gauge(
            &mut out,
            "mmapd_kv_data_bytes",
            "Key and value bytes plus 96 per key, and the change history, as the quota counts them",
            gauges.kv_data_bytes,
        );
        gauge(&mut out, "mmapd_quota_bytes", "Most key-value data bytes (--quota-bytes)", gauges.quota_bytes);
        render_peers(&gauges.peers, &mut out);
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        counter(&mut out, "mmapd_proposals_total", "Proposals accepted as leader", self.proposals.get());
        counter(&mut out, "mmapd_applied_entries_total", "Entries applied", self.applied_entries.get());
        counter(
            &mut out,
            "mmapd_peer_messages_refused_total",
            "Malformed peer messages refused",
            self.peer_messages_refused.get(),
        );
        counter(&mut out, "mmapd_storage_errors_total", "Disk failures", self.storage_errors.get());
        counter(
            &mut out,
            "mmapd_forward_batches_total",
            "Batches of forwarded writes sent to the leader",
            self.forward_batches.get(),
        );
        counter(
            &mut out,
            "mmapd_forwarded_writes_total",
            "Writes forwarded to the leader in batches",
            self.forwarded_writes.get(),
        );
        counter(
            &mut out,
            "mmapd_snapshot_chunks_received_total",
            "Snapshot chunks received from a leader",
            self.snapshot_chunks_received.get(),
        );
        counter(
            &mut out,
            "mmapd_snapshot_chunk_bytes_received_total",
            "Snapshot bytes received in chunks",
            self.snapshot_chunk_bytes_received.get(),
        );
        counter(
            &mut out,
            "mmapd_snapshot_transfers_resumed_total",
            "Chunked snapshot transfers continued from bytes already received",
            self.snapshot_transfers_resumed.get(),
        );
        counter(
            &mut out,
            "mmapd_snapshot_transfers_completed_total",
            "Snapshots received whole in chunks",
            self.snapshot_transfers_completed.get(),
        );
        counter(
            &mut out,
            "mmapd_tls_handshakes_refused_total",
            "TLS handshakes refused over a certificate (logged at most once per address per 10 s)",
            gauges.tls_handshakes_refused,
        );
        counter(&mut out, "mmapd_http_requests_total", "HTTP requests", self.http_requests.get());
        self.commit_seconds.render("mmapd_commit_seconds", "Write request to commit and apply", &mut out);
        self.msync_seconds.render("mmapd_msync_seconds", "One msync batch", &mut out);
        self.persist_seconds.render("mmapd_persist_seconds", "Ready handed to disk until durable", &mut out);
        self.leader_contact_gap_seconds.render(
            "mmapd_leader_contact_gap_seconds",
            "On a follower, time between two deliveries from the leader",
            &mut out,
        );
        let _ = writeln!(
            out,
            "# HELP mmapd_leader_contact_gap_max_seconds The longest gap between deliveries from the leader\n\
             # TYPE mmapd_leader_contact_gap_max_seconds gauge\nmmapd_leader_contact_gap_max_seconds {}",
            self.leader_contact_gap_max.get()
        );
        self.snapshot_build_seconds.render(
            "mmapd_snapshot_build_seconds",
            "Serialising and writing a snapshot, off the driver's loop",
            &mut out,
        );
        out
    }
}

/// The leader's per-follower gauges, labelled with the follower's address. A follower
/// never heard from since start has a last contact of +Inf, so that `> N` alerts fire.
fn render_peers(peers: &[PeerGauge], out: &mut String) {
    if peers.is_empty() {
        return;
    }
    let label = |address: &str| address.replace('\\', "\\\\").replace('"', "\\\"");
    let _ = writeln!(
        out,
        "# HELP mmapd_peer_match_index On the leader, the highest index known replicated on the peer\n\
         # TYPE mmapd_peer_match_index gauge"
    );
    for peer in peers {
        let _ =
            writeln!(out, "mmapd_peer_match_index{{peer=\"{}\"}} {}", label(&peer.address), peer.match_index);
    }
    let _ = writeln!(
        out,
        "# HELP mmapd_peer_last_contact_seconds On the leader, time since a message from the peer arrived\n\
         # TYPE mmapd_peer_last_contact_seconds gauge"
    );
    for peer in peers {
        let seconds = peer.last_contact.map_or("+Inf".to_owned(), |ago| format!("{:.3}", ago.as_secs_f64()));
        let _ =
            writeln!(out, "mmapd_peer_last_contact_seconds{{peer=\"{}\"}} {seconds}", label(&peer.address));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        let metrics = Metrics::default();
        metrics.msync_seconds.observe(0.0002);
        metrics.msync_seconds.observe(0.003);
        metrics.msync_seconds.observe(100.0);
        let gauges = Gauges {
            role: 3,
            term: 2,
            commit_index: 9,
            applied_index: 9,
            mapped_bytes: 0,
            keys: 1,
            kv_data_bytes: 100,
            quota_bytes: 4096,
            peers: Vec::new(),
            tls_handshakes_refused: 0,
        };
        let text = metrics.render(&gauges);
        assert!(text.contains("mmapd_msync_seconds_bucket{le=\"0.00025\"} 1"), "{text}");
        assert!(text.contains("mmapd_msync_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("mmapd_msync_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("mmapd_msync_seconds_count 3"));
        assert!(text.contains("mmapd_role 3"));
        assert!(text.contains("mmapd_kv_data_bytes 100\n") && text.contains("mmapd_quota_bytes 4096\n"));
        assert!(!text.contains("mmapd_peer_match_index"), "per-peer gauges only on a leader with followers");
    }

    #[test]
    fn per_peer_gauges_are_labelled_by_address_and_never_heard_from_is_infinite() {
        let gauges = Gauges {
            role: 3,
            term: 2,
            commit_index: 9,
            applied_index: 9,
            mapped_bytes: 0,
            keys: 1,
            kv_data_bytes: 100,
            quota_bytes: 4096,
            tls_handshakes_refused: 0,
            peers: vec![
                PeerGauge {
                    address: "127.0.0.1:3002".into(),
                    match_index: 9,
                    last_contact: Some(Duration::from_millis(1500)),
                },
                PeerGauge { address: "db3.example:3003".into(), match_index: 0, last_contact: None },
            ],
        };
        let text = Metrics::default().render(&gauges);
        assert!(text.contains("mmapd_peer_match_index{peer=\"127.0.0.1:3002\"} 9\n"), "{text}");
        assert!(text.contains("mmapd_peer_match_index{peer=\"db3.example:3003\"} 0\n"));
        assert!(text.contains("mmapd_peer_last_contact_seconds{peer=\"127.0.0.1:3002\"} 1.500\n"));
        assert!(text.contains("mmapd_peer_last_contact_seconds{peer=\"db3.example:3003\"} +Inf\n"));
        assert_eq!(text.matches("# TYPE mmapd_peer_match_index gauge").count(), 1);
    }
}
