//! Snapshots sent in chunks (`server::peer::snapshot`), on real processes: a follower
//! that missed more than the log keeps catches up from a snapshot that crosses in many
//! bounded requests; a transfer cut half way (the follower stopped, so the leader's
//! chunk timed out) resumes from the bytes the follower holds instead of starting over;
//! and hostile chunk and install requests are refused with a 4xx, the node serving on.
//!
//! Reference: extended Raft paper §7 (InstallSnapshot "split into chunks", offset and
//! done); thesis §5.3 "the leader sends the snapshot in chunks".

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A counter from a node's `/metrics`, or None if it does not answer.
fn metric(port: u16, name: &str) -> Option<u64> {
    let text = request(port, "GET", "/metrics", &[], b"").ok()?.text();
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Writes `count` keys of `value_bytes` each through `port`.
fn write_keys(port: u16, prefix: &str, count: usize, value_bytes: usize) {
    for i in 0..count {
        let value: Vec<u8> = (0..value_bytes).map(|j| b'a' + ((i + j) % 26) as u8).collect();
        let response = put(port, &format!("/v1/kv/{prefix}-{i}"), &value);
        assert_eq!(response.status, 201, "{prefix}-{i}: {}", response.text());
    }
}

/// Waits until the node on `port` serves `key` (a local read: `last_applied` in
/// /status moves when the snapshot is stepped, before the state machine is swapped).
fn wait_serves(port: u16, key: &str, timeout: Duration) {
    wait_for(timeout, "the follower to catch up", || {
        (get(port, &format!("/v1/kv/{key}?consistency=stale")).status == 200).then_some(())
    });
}

/// The extended paper's §7: a follower too far behind for the log gets the leader's
/// snapshot; here in 4 KiB chunks, so a snapshot of about 600 KB takes over a hundred
/// requests, and the follower ends with every key.
#[test]
fn a_follower_far_behind_catches_up_from_a_snapshot_sent_in_chunks() {
    // Reference: extended paper §7 (InstallSnapshot in chunks).
    let mut cluster = Cluster::start(3, &["--snapshot-entries", "100", "--snapshot-chunk-bytes", "4096"]);
    let leader = cluster.wait_for_leader(Duration::from_secs(5));
    let follower = cluster.others(leader)[0];
    cluster.nodes[follower].kill9();
    write_keys(cluster.port(leader), "k", 600, 1000);
    let leader_port = cluster.port(leader);
    wait_for(Duration::from_secs(10), "the leader to compact its log", || {
        (status(leader_port)?["first_index"].as_u64()? > 500).then_some(())
    });

    cluster.nodes[follower].start().unwrap();
    let port = cluster.port(follower);
    wait_serves(port, "k-599", Duration::from_secs(20));
    let chunks = metric(port, "mmapd_snapshot_chunks_received_total").unwrap();
    let bytes = metric(port, "mmapd_snapshot_chunk_bytes_received_total").unwrap();
    assert!(chunks >= 100, "{chunks} chunks for a snapshot of 600 values of 1000 bytes");
    assert!(bytes >= 600_000, "{bytes} bytes received");
    assert!(metric(port, "mmapd_snapshot_transfers_completed_total").unwrap() >= 1);
    for i in [0, 1, 299, 599] {
        let local = get(port, &format!("/v1/kv/k-{i}?consistency=stale"));
        assert_eq!(local.status, 200, "k-{i} on the follower");
        assert_eq!(local.text().len(), 1000);
        assert_eq!(local.text().as_bytes()[0], b'a' + (i % 26) as u8);
    }
    // And it takes part again.
    assert_eq!(put(port, "/v1/kv/after", b"a").status, 201);
    assert_eq!(get(leader_port, "/v1/kv/after").text(), "a");
    // No staging file is left behind.
    let data_dir = cluster.dir.path().join(format!("node-{port}"));
    let left: Vec<_> = std::fs::read_dir(&data_dir)
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.contains("incoming"))
        .collect();
    assert!(left.is_empty(), "staging files left: {left:?}");
}

/// A transfer cut half way resumes: the follower is stopped (SIGSTOP) while its
/// snapshot crosses, so the leader's chunk times out and the transfer ends; when the
/// follower runs again and Raft sends the snapshot again, the sender asks what it holds
/// and goes on from there (`mmapd_snapshot_transfers_resumed_total`), and the follower
/// receives fewer bytes than two whole transfers would take.
#[test]
fn a_snapshot_transfer_cut_half_way_resumes_from_the_bytes_the_follower_holds() {
    // Reference: extended paper §7; the resume is ours (etcd restarts a failed transfer).
    // One snapshot, taken by hand once every value is in, so the follower needs that
    // one snapshot and no newer one overtakes the transfer.
    let mut cluster = Cluster::start(
        3,
        &["--snapshot-entries", "100000", "--snapshot-chunk-bytes", "4096", "--max-value-bytes", "1048576"],
    );
    let leader = cluster.wait_for_leader(Duration::from_secs(5));
    let follower = cluster.others(leader)[0];
    cluster.nodes[follower].kill9();
    let leader_port = cluster.port(leader);
    // 40 values of 800 KB: a snapshot of over 32 MB, about 7,800 chunks.
    write_keys(leader_port, "big", 40, 800_000);
    let socket = cluster.dir.path().join(format!("node-{leader_port}")).join("admin.sock");
    let output = admin(&["--socket", socket.to_str().unwrap(), "snapshot"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let snapshot_bytes = 40 * 800_000u64;

    cluster.nodes[follower].start().unwrap();
    let port = cluster.port(follower);
    let started = Instant::now();
    wait_for(Duration::from_secs(20), "a tenth of the snapshot to arrive", || {
        (metric(port, "mmapd_snapshot_chunk_bytes_received_total")? >= snapshot_bytes / 10).then_some(())
    });
    cluster.nodes[follower].signal(nix::sys::signal::Signal::SIGSTOP);
    let held = started.elapsed();
    // Longer than a chunk's timeout (the peer timeout, 0.5 s here, and its bytes at 1 MiB/s).
    std::thread::sleep(Duration::from_secs(2));
    cluster.nodes[follower].signal(nix::sys::signal::Signal::SIGCONT);

    wait_serves(port, "big-39", Duration::from_secs(60));
    let resumed = metric(port, "mmapd_snapshot_transfers_resumed_total").unwrap();
    let received = metric(port, "mmapd_snapshot_chunk_bytes_received_total").unwrap();
    assert!(
        resumed >= 1,
        "no transfer resumed (stopped {held:?} after the start; {received} bytes received)"
    );
    // The snapshot's data is its file less a header of a few hundred bytes. Started
    // over, the transfer would have received the bytes held at the cut (at least a
    // tenth of the values) twice.
    let data_dir = cluster.dir.path().join(format!("node-{port}"));
    let snapshot_file = || {
        std::fs::read_dir(&data_dir)
            .ok()?
            .filter_map(|entry| entry.ok())
            .find(|entry| entry.file_name().to_string_lossy().ends_with(".snap"))
            .map(|entry| entry.metadata().unwrap().len())
    };
    let file_bytes = wait_for(Duration::from_secs(20), "the follower's snapshot file", snapshot_file);
    assert!(
        received <= file_bytes && received + 1024 >= file_bytes,
        "{received} bytes received for a snapshot file of {file_bytes}: the transfer started over"
    );
    let local = get(port, "/v1/kv/big-39?consistency=stale");
    assert_eq!((local.status, local.text().len()), (200, 800_000));
}

/// Chunk and install requests that do not fit the protocol are answered 4xx and change
/// nothing; a snapshot never arrives from them, and the node serves on.
#[test]
fn hostile_snapshot_transfer_requests_are_refused_and_the_node_serves_on() {
    let single = Single::start(&[]);
    let port = single.port();
    assert_eq!(put(port, "/v1/kv/before", b"b").status, 201);
    let chunk = |headers: &[(&str, &str)], body: &[u8]| {
        request(port, "POST", "/raft/snapshot/chunk", headers, body).unwrap()
    };
    let id = "100-2-10-00000000";
    // No transfer named, garbage names, no offset.
    assert_eq!(chunk(&[], b"x").status, 400);
    assert_eq!(
        chunk(&[("x-mmapd-snapshot-transfer", "garbage"), ("x-mmapd-snapshot-offset", "0")], b"x").status,
        400
    );
    assert_eq!(chunk(&[("x-mmapd-snapshot-transfer", id)], b"x").status, 400);
    let huge = format!("1-1-{}-00000000", 1u64 << 50);
    assert_eq!(
        chunk(&[("x-mmapd-snapshot-transfer", &huge), ("x-mmapd-snapshot-offset", "0")], b"x").status,
        400
    );
    // Past the named length, at an offset nothing continues, and a probe.
    let at = |offset: &'static str| [("x-mmapd-snapshot-transfer", id), ("x-mmapd-snapshot-offset", offset)];
    assert_eq!(chunk(&at("0"), b"eleven byte").status, 400);
    let gap = chunk(&at("5"), b"xx");
    assert_eq!((gap.status, gap.text()), (409, "0".to_owned()));
    let taken = chunk(&at("0"), b"12345");
    assert_eq!((taken.status, taken.text()), (200, "5".to_owned()));
    let probe = chunk(&at("0"), b"");
    assert_eq!((probe.status, probe.text()), (200, "5".to_owned()));
    // An install of a transfer not whole, or with a body that is not a batch.
    let install = |headers: &[(&str, &str)], body: &[u8]| {
        request(port, "POST", "/raft/snapshot/install", headers, body).unwrap().status
    };
    assert_eq!(install(&[("x-mmapd-snapshot-transfer", id)], b"not a batch"), 400);
    assert_eq!(install(&[], b""), 400);
    assert_eq!(request(port, "GET", "/raft/snapshot/chunk", &[], b"").unwrap().status, 405);
    // Serving on, and nothing installed.
    assert_eq!(get(port, "/v1/kv/before").text(), "b");
    assert_eq!(put(port, "/v1/kv/after", b"a").status, 201);
    assert_eq!(metric(port, "mmapd_snapshot_transfers_completed_total"), Some(0));
}
