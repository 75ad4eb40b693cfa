//! Real `mmapd` clusters on loopback: replication, leader failure and restart,
//! minority failures, and a whole-cluster `kill -9` under load.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A write accepted by any node, through either API, reads back on every node, with
/// linearizable reads (no waiting: the read must see the acknowledged write).
#[test]
fn writes_on_any_node_read_back_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "correct horse\n").unwrap();
    let cluster = Cluster::start(3, &["--cluster-secret-file", secret.to_str().unwrap()]);
    for writer in 0..3 {
        let port = cluster.port(writer);
        let response = set_form(port, &format!("form-{writer}"), &format!("hello+{writer}"));
        assert_eq!((response.status, response.text()), (200, format!("hello {writer}")));
        let response = put(port, &format!("/v1/kv/raw-{writer}"), format!("raw {writer}").as_bytes());
        assert_eq!(response.status, 201, "{}", response.text());
        for reader in 0..3 {
            let port = cluster.port(reader);
            let response = get(port, &format!("/get/form-{writer}"));
            assert_eq!((response.status, response.text()), (200, format!("hello {writer}")), "node {reader}");
            let response = get(port, &format!("/v1/kv/raw-{writer}"));
            assert_eq!((response.status, response.text()), (200, format!("raw {writer}")), "node {reader}");
            assert!(response.header("ETag").is_some());
            let response = get(port, &format!("/v1/kv/form-{writer}"));
            assert_eq!(response.text(), format!("hello {writer}"), "both APIs see one store");
        }
    }
    assert_eq!(get(cluster.port(1), "/get/never-written").status, 404);
}

/// Writes sent to a follower by many clients at once reach the leader in batches
/// (`POST /raft/propose-batch`, far fewer requests than writes), and every one is
/// acknowledged with its own revision and reads back on the leader.
#[test]
fn concurrent_writes_through_a_follower_are_forwarded_in_batches_and_each_applies() {
    const CLIENTS: usize = 32;
    const WRITES_EACH: usize = 25;
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(20));
    let follower = cluster.others(leader)[0];
    let port = cluster.port(follower);
    let revisions = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let revisions = revisions.clone();
            std::thread::spawn(move || {
                for n in 0..WRITES_EACH {
                    let response =
                        put(port, &format!("/v1/kv/fwd-{client}-{n}"), format!("{client}.{n}").as_bytes());
                    assert_eq!(response.status, 201, "write {client}.{n}: {}", response.text());
                    let revision: u64 = response.header("X-Mmapd-Revision").unwrap().parse().unwrap();
                    revisions.lock().unwrap().push((format!("fwd-{client}-{n}"), revision));
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    let revisions = revisions.lock().unwrap().clone();
    assert_eq!(revisions.len(), CLIENTS * WRITES_EACH);
    // Each write was answered with its own entry's revision: the one the leader
    // stored it at (its ETag), with the value it sent.
    let leader_port = cluster.port(leader);
    for (key, revision) in &revisions {
        let response = get(leader_port, &format!("/v1/kv/{key}"));
        let (client, n) = key["fwd-".len()..].split_once('-').unwrap();
        assert_eq!((response.status, response.text()), (200, format!("{client}.{n}")));
        assert_eq!(response.header("ETag"), Some(format!("\"{revision}\"").as_str()), "{key}");
    }
    let metrics = get(port, "/metrics").text();
    let counter = |name: &str| -> u64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name}"));
        line[name.len() + 1..].parse().unwrap()
    };
    let (writes, batches) = (counter("mmapd_forwarded_writes_total"), counter("mmapd_forward_batches_total"));
    assert_eq!(writes, (CLIENTS * WRITES_EACH) as u64, "{metrics}");
    assert!(batches * 2 <= writes, "{writes} writes went in {batches} batches: not batched");
}

/// The original README's three commands, as written, with the member list in
/// `config.json` in the working directory, form a cluster that replicates.
#[test]
fn original_readme_commands_form_a_cluster_with_config_json() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let members: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    std::fs::write(dir.path().join("config.json"), serde_json::to_string(&members).unwrap()).unwrap();
    let mut nodes: Vec<Daemon> = ports
        .iter()
        .map(|port| {
            let (db, log) = (format!("db{port}.json"), format!("log{port}.json"));
            Daemon::new(dir.path(), *port, &["-port", &port.to_string(), "-db", &db, "-log", &log])
        })
        .collect();
    nodes.iter_mut().for_each(Daemon::spawn);
    for node in &mut nodes {
        node.wait_started().unwrap();
    }
    // Default timings (election timeout 500 ms): the first election takes up to ~1 s.
    // A node still starting may close a connection as it hands its port to the real
    // server: that is a failed attempt like a 503, asked again.
    let response = wait_for(Duration::from_secs(15), "a write through node 2", || {
        let headers = [("Content-Type", "application/x-www-form-urlencoded")];
        let response = request(ports[1], "POST", "/set/k", &headers, b"value=v").ok()?;
        (response.status == 200).then_some(response)
    });
    assert_eq!(response.text(), "v");
    for port in &ports {
        assert_eq!(get(*port, "/get/k").text(), "v", "node {port}");
        assert!(dir.path().join(format!("mmapd-{port}")).is_dir(), "data dir ./mmapd-{port}");
        let status = status(*port).unwrap();
        assert_eq!(status["id"], format!("127.0.0.1:{port}"));
    }
}

/// kill -9 of the leader: another leader within 2 s, writes go on; the old leader
/// restarts as a follower without raising the term or taking leadership back
/// (pre-vote, §9.6 of the thesis; votes check logs, §5.4.1), and serves every entry
/// it missed.
#[test]
fn killed_leader_is_replaced_and_on_restart_neither_disrupts_nor_misses_entries() {
    let mut cluster = Cluster::start(3, &[]);
    let old = cluster.wait_for_leader(Duration::from_secs(5));
    for i in 0..10 {
        assert_eq!(put(cluster.port(old), &format!("/v1/kv/before-{i}"), b"x").status, 201);
    }

    cluster.nodes[old].kill9();
    let killed = Instant::now();
    let (new, term) = wait_for(Duration::from_secs(5), "a new leader", || cluster.agreed_leader_and_term());
    let failover = killed.elapsed();
    assert_ne!(new, old);
    assert!(failover < Duration::from_secs(2), "a new leader took {failover:?}");

    let survivor = cluster.others(new)[0];
    for i in 0..20 {
        let port = cluster.port(if i % 2 == 0 { new } else { survivor });
        let response = put(port, &format!("/v1/kv/missed-{i}"), format!("m{i}").as_bytes());
        assert_eq!(response.status, 201, "{}", response.text());
    }
    let commit = cluster.nodes[new].status().unwrap()["commit_index"].as_u64().unwrap();

    cluster.nodes[old].start().unwrap();
    let old_port = cluster.port(old);
    wait_for(Duration::from_secs(5), "the old leader to catch up", || {
        let status = status(old_port)?;
        (status["last_applied"].as_u64()? >= commit).then_some(())
    });
    // Give the returning node several election timeouts to misbehave.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(cluster.agreed_leader_and_term(), Some((new, term)), "leadership or term moved");
    let status = status(old_port).unwrap();
    assert_eq!(status["state"], "follower");
    for i in 0..20 {
        let local = get(old_port, &format!("/v1/kv/missed-{i}?consistency=stale"));
        assert_eq!((local.status, local.text()), (200, format!("m{i}")), "missed-{i} on the old leader");
    }
    for i in 0..10 {
        assert_eq!(get(old_port, &format!("/get/before-{i}")).text(), "x");
    }
    // And it takes part: a write through it reads back everywhere.
    assert_eq!(put(old_port, "/v1/kv/after", b"a").status, 201);
    for node in 0..3 {
        assert_eq!(get(cluster.port(node), "/v1/kv/after").text(), "a");
    }
}

/// A five-node cluster has a quorum of three: with the leader and another node
/// killed, every survivor still accepts writes and serves linearizable reads.
#[test]
fn five_node_cluster_serves_writes_and_linearizable_reads_with_two_nodes_down() {
    let mut cluster = Cluster::start(5, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(5));
    assert_eq!(put(cluster.port(leader), "/v1/kv/early", b"e").status, 201);
    let follower = cluster.others(leader)[0];
    cluster.nodes[leader].kill9();
    cluster.nodes[follower].kill9();
    cluster.wait_for_leader(Duration::from_secs(5));
    let survivors = cluster.others(usize::MAX);
    assert_eq!(survivors.len(), 3);
    for (round, &writer) in survivors.iter().enumerate() {
        let key = format!("/v1/kv/round-{round}");
        let response = put(cluster.port(writer), &key, round.to_string().as_bytes());
        assert_eq!(response.status, 201, "write through node {writer}: {}", response.text());
        for &reader in &survivors {
            let response = get(cluster.port(reader), &key);
            assert_eq!((response.status, response.text()), (200, round.to_string()), "node {reader}");
            assert_eq!(get(cluster.port(reader), "/get/early").text(), "e");
        }
    }
}

/// Several clients write while every node is killed with SIGKILL at once: after a
/// restart, every write that was acknowledged (2xx) reads back with its value.
#[test]
fn acknowledged_writes_survive_a_whole_cluster_kill_9() {
    let mut cluster = Cluster::start(3, &[]);
    let ports: Vec<u16> = (0..3).map(|i| cluster.port(i)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let (stop, acknowledged, ports) = (stop.clone(), acknowledged.clone(), ports.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (key, value) = (format!("c{client}-{n}"), format!("v{client}-{n}"));
                    let port = ports[(client + n) % ports.len()];
                    let response = if n % 2 == 0 {
                        request(port, "PUT", &format!("/v1/kv/{key}"), &[], value.as_bytes())
                    } else {
                        request(port, "POST", &format!("/set/{key}?value={value}"), &[], b"")
                    };
                    if matches!(response, Ok(ref r) if (200..300).contains(&r.status)) {
                        acknowledged.lock().unwrap().push((key, value));
                    }
                    n += 1;
                }
            })
        })
        .collect();
    wait_for(Duration::from_secs(10), "100 acknowledged writes", || {
        (acknowledged.lock().unwrap().len() >= 100).then_some(())
    });
    for node in &mut cluster.nodes {
        node.kill9();
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    for node in &mut cluster.nodes {
        node.spawn();
    }
    for node in &mut cluster.nodes {
        node.wait_started().unwrap();
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let mut missing = Vec::new();
    for (i, (key, value)) in acknowledged.iter().enumerate() {
        let port = cluster.port((leader + i) % 3);
        let response = get(port, &format!("/v1/kv/{key}"));
        if (response.status, response.text()) != (200, value.clone()) {
            missing.push((key.clone(), response.status, response.text()));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost: {missing:?}",
        missing.len(),
        acknowledged.len()
    );
}

/// SIGTERM to the leader (`systemctl stop`, a reboot) hands leadership over before the
/// process exits (thesis §3.10), so a planned restart costs no election timeout: with
/// a 3 s election timeout, a follower that had to time out could not lead within
/// 1.5 s, yet one does, one term later, with every acknowledged write.
#[test]
fn sigterm_to_the_leader_hands_leadership_over_without_waiting_for_an_election() {
    let slow_elections = ["--tick-ms", "5", "--heartbeat-interval-ms", "25", "--election-timeout-ms", "3000"];
    let mut cluster = Cluster::start_with_timings(3, &slow_elections, &[]);
    let (old, term) = wait_for(Duration::from_secs(10), "a leader", || cluster.agreed_leader_and_term());
    for i in 0..20 {
        let response = put(cluster.port(old), &format!("/v1/kv/before-stop-{i}"), format!("b{i}").as_bytes());
        assert_eq!(response.status, 201, "{}", response.text());
    }
    let others = cluster.others(old);
    let ports: Vec<u16> = others.iter().map(|&i| cluster.port(i)).collect();

    cluster.nodes[old].signal(nix::sys::signal::Signal::SIGTERM);
    let stopped = Instant::now();
    let new_leader = wait_for(Duration::from_secs(10), "a new leader", || {
        ports.iter().copied().find(|&port| status(port).is_some_and(|s| s["state"] == "leader"))
    });
    let handover = stopped.elapsed();
    assert!(cluster.nodes[old].wait_exit(Duration::from_secs(10)).success());
    assert!(
        handover < Duration::from_millis(1500),
        "a new leader after {handover:?}: an election, not a hand-over"
    );
    let status = status(new_leader).unwrap();
    assert_eq!(status["term"].as_u64(), Some(term + 1), "{status}");
    for i in 0..20 {
        let response = get(new_leader, &format!("/v1/kv/before-stop-{i}"));
        assert_eq!((response.status, response.text()), (200, format!("b{i}")), "before-stop-{i}");
    }
    let log = cluster.nodes[old].log_text();
    assert!(log.contains("handed leadership over"), "{log}");
}

/// Nodes bound to every interface (`--ip 0.0.0.0`) without `--advertise` find their
/// own entry in `--peers` (the one with their port on an address of this machine) and
/// advertise it: no phantom `0.0.0.0` member, the leader is named by its real address,
/// and writes replicate.
#[test]
fn nodes_bound_to_every_interface_advertise_their_entry_in_peers() {
    let cluster = Cluster::start(3, &["--ip", "0.0.0.0"]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    for node in 0..3 {
        let status = cluster.nodes[node].status().unwrap();
        assert_eq!(status["address"], cluster.nodes[node].address(), "{status}");
        assert_eq!(status["leader"], cluster.nodes[leader].address(), "{status}");
    }
    let peers = cluster.nodes[leader].status().unwrap()["peers"].clone();
    let mut addresses: Vec<String> =
        peers.as_array().unwrap().iter().map(|p| p["address"].as_str().unwrap().to_owned()).collect();
    addresses.sort();
    let mut expected: Vec<String> =
        cluster.others(leader).iter().map(|&i| cluster.nodes[i].address()).collect();
    expected.sort();
    assert_eq!(addresses, expected, "the leader's followers: {peers}");
    assert_eq!(put(cluster.port((leader + 1) % 3), "/v1/kv/k", b"v").status, 201);
    for node in 0..3 {
        assert_eq!(get(cluster.port(node), "/v1/kv/k").text(), "v");
    }
}

/// Members may be named by host name: `localhost:PORT` in `--peers` is resolved when
/// the peers connect, the node's name is its `--peers` entry, and /status and the
/// leader's per-peer gauges use those names.
#[test]
fn members_named_by_host_name_form_a_cluster_and_are_shown_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let peers = ports.iter().map(|p| format!("localhost:{p}")).collect::<Vec<_>>().join(",");
    let mut nodes: Vec<Daemon> = ports
        .iter()
        .map(|&port| {
            let data_dir = dir.path().join(format!("node-{port}"));
            let port_text = port.to_string();
            let mut args =
                vec!["--port", &port_text, "--peers", &peers, "--data-dir", data_dir.to_str().unwrap()];
            args.extend(FAST_TIMINGS);
            Daemon::new(dir.path(), port, &args)
        })
        .collect();
    nodes.iter_mut().for_each(Daemon::spawn);
    for node in &mut nodes {
        node.wait_started().unwrap();
    }
    let leader = wait_for(Duration::from_secs(10), "a leader named localhost:PORT", || {
        let leaders: Vec<String> =
            ports.iter().map(|&p| status(p)?["leader"].as_str().map(str::to_owned)).collect::<Option<_>>()?;
        (leaders.iter().all(|l| l == &leaders[0])).then(|| leaders[0].clone())
    });
    assert!(leader.starts_with("localhost:"), "{leader}");
    let leader_port: u16 = leader.trim_start_matches("localhost:").parse().unwrap();
    assert_eq!(status(leader_port).unwrap()["address"], leader);
    assert_eq!(put(ports[0], "/v1/kv/named", b"yes").status, 201);
    for &port in &ports {
        assert_eq!(get(port, "/v1/kv/named").text(), "yes");
    }
    let metrics = wait_for(Duration::from_secs(5), "per-peer gauges", || {
        let text = get(leader_port, "/metrics").text();
        (text.matches("mmapd_peer_last_contact_seconds{peer=\"localhost:").count() == 2).then_some(text)
    });
    assert_eq!(metrics.matches("mmapd_peer_match_index{peer=\"localhost:").count(), 2, "{metrics}");
}

/// A leader whose follower stops answering logs it once (warn), not at every failed
/// send, and once more (info) when it answers again; its gauges name the follower by
/// address, and its last contact grows while it is down.
#[test]
fn a_silent_peer_is_logged_once_and_again_when_it_returns_and_its_gauges_name_it() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(5));
    let follower = cluster.others(leader)[0];
    let (leader_port, follower_address) = (cluster.port(leader), cluster.nodes[follower].address());
    let gauge = |text: &str, name: &str| -> Option<f64> {
        let prefix = format!("{name}{{peer=\"{follower_address}\"}} ");
        text.lines().find_map(|line| line.strip_prefix(&prefix)).and_then(|v| v.parse().ok())
    };
    assert_eq!(put(leader_port, "/v1/kv/k", b"v").status, 201);
    let before = wait_for(Duration::from_secs(5), "the follower's match index", || {
        let text = get(leader_port, "/metrics").text();
        gauge(&text, "mmapd_peer_match_index").is_some_and(|m| m >= 2.0).then_some(text)
    });
    assert!(gauge(&before, "mmapd_peer_last_contact_seconds").is_some_and(|s| s < 1.0), "{before}");

    cluster.nodes[follower].kill9();
    // Heartbeats every 25 ms: a second of silence is dozens of failed sends.
    std::thread::sleep(Duration::from_millis(1000));
    let during = get(leader_port, "/metrics").text();
    assert!(gauge(&during, "mmapd_peer_last_contact_seconds").is_some_and(|s| s >= 0.5), "{during}");
    let silent = "peer not answering";
    let count = |log: &str, what: &str| {
        log.lines().filter(|l| l.contains(what) && l.contains(&follower_address)).count()
    };
    assert_eq!(count(&cluster.nodes[leader].log_text(), silent), 1, "{}", cluster.nodes[leader].log_text());

    cluster.nodes[follower].start().unwrap();
    let log = wait_for(Duration::from_secs(5), "the return to be logged", || {
        let log = cluster.nodes[leader].log_text();
        (count(&log, "peer answering again") == 1).then_some(log)
    });
    assert_eq!(count(&log, silent), 1, "{log}");
}
