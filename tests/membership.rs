//! Membership on real processes: a node joins with `--join` and is promoted once caught
//! up; a wiped member can't come back as its old self. (The simulator checks the
//! protocol under faults; these check the daemon's side of it.)

mod common;

use std::time::Duration;

use common::*;

/// The `--join` node's daemon, with the fast timings, in `cluster.dir`.
fn joiner(cluster: &Cluster, port: u16, name: &str, join: &str, extra: &[&str]) -> Daemon {
    let data_dir = cluster.dir.path().join(name);
    let port_text = port.to_string();
    let mut args = vec!["--port", &port_text, "--join", join, "--data-dir", data_dir.to_str().unwrap()];
    args.extend(FAST_TIMINGS);
    args.extend(extra);
    Daemon::new(cluster.dir.path(), port, &args)
}

/// The leader's view of `address` in its /status peers: (match index, learner).
fn seen_by_leader(cluster: &Cluster, address: &str) -> Option<(u64, bool)> {
    let leader = cluster.agreed_leader()?;
    let status = cluster.nodes[leader].status()?;
    let peer = status["peers"].as_array()?.iter().find(|p| p["address"] == address)?.clone();
    Some((peer["match_index"].as_u64()?, peer["learner"].as_bool()?))
}

/// Reference: thesis §4.2.1 (a new server joins as a non-voting member and catches up
/// before it counts for commit) and §4.1 (it hears from a leader it does not know yet).
#[test]
fn a_node_started_with_join_catches_up_is_promoted_and_resumes_after_a_restart() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    for i in 0..50 {
        assert_eq!(put(cluster.port(leader), &format!("/v1/kv/k{i}"), b"before").status, 201);
    }
    let follower = cluster.others(leader)[0];
    let port = free_ports(1)[0];
    let address = format!("127.0.0.1:{port}");
    let mut node = joiner(&cluster, port, "joiner", &cluster.nodes[follower].address(), &[]);
    node.start().unwrap();
    wait_for(Duration::from_secs(20), "the joined node to catch up", || {
        (get(port, "/v1/kv/k49?consistency=stale").text() == "before").then_some(())
    });
    wait_for(Duration::from_secs(20), "the learner to be promoted", || {
        matches!(seen_by_leader(&cluster, &address), Some((_, false))).then_some(())
    });
    assert!(node.log_text().contains("joined the cluster as a learner"), "{}", node.log_text());
    // It serves writes (forwarded to the leader) and linearizable reads.
    assert_eq!(put(port, "/v1/kv/after", b"joined").status, 201);
    assert_eq!(get(port, "/v1/kv/after").text(), "joined");

    // Restarted with the same flags, it resumes: no second join.
    node.kill9();
    node.start().unwrap();
    wait_for(Duration::from_secs(20), "the restarted node to serve", || {
        (get(port, "/v1/kv/after").text() == "joined").then_some(())
    });
    assert_eq!(node.log_text().matches("joined the cluster as a learner").count(), 1);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    assert_eq!(put(cluster.port(leader), "/v1/kv/last", b"4").status, 201);
    cluster.nodes.push(node);
}

/// A node joined with `--learner` stays a learner: it has the data but never votes.
#[test]
fn a_node_joined_as_a_learner_stays_a_learner() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    assert_eq!(put(cluster.port(leader), "/v1/kv/k", b"v").status, 201);
    let port = free_ports(1)[0];
    let address = format!("127.0.0.1:{port}");
    let mut node = joiner(&cluster, port, "learner", &cluster.nodes[leader].address(), &["--learner"]);
    node.start().unwrap();
    wait_for(Duration::from_secs(20), "the learner to catch up", || {
        (get(port, "/v1/kv/k?consistency=stale").text() == "v").then_some(())
    });
    std::thread::sleep(Duration::from_millis(1000));
    let (match_index, learner) = seen_by_leader(&cluster, &address).expect("the leader lists it");
    assert!(learner, "a --learner node was promoted");
    assert!(match_index > 0);
}

/// RAFT-NOTES #18: a member whose data directory was wiped must not come back under
/// its old id, with --peers or with --join: it may have voted and counted for commits.
/// It refuses to start, naming the cluster and what to do, with exit status 10 (which
/// the unit does not restart).
#[test]
fn a_wiped_member_is_refused_with_peers_and_with_join() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    assert_eq!(put(cluster.port(leader), "/v1/kv/k", b"v").status, 201);
    let victim = cluster.others(leader)[0];
    let address = cluster.nodes[victim].address();
    // The leader records the members it saw hold the log.
    wait_for(Duration::from_secs(10), "the victim to hold the log", || {
        seen_by_leader(&cluster, &address).filter(|(m, _)| *m > 0).map(|_| ())
    });
    std::thread::sleep(Duration::from_millis(500));
    cluster.nodes[victim].kill9();
    let data_dir = cluster.dir.path().join(format!("node-{}", cluster.port(victim)));
    std::fs::remove_dir_all(&data_dir).unwrap();

    cluster.nodes[victim].spawn();
    let status = cluster.nodes[victim].wait_exit(Duration::from_secs(20));
    let log = cluster.nodes[victim].log_text();
    assert_eq!(status.code(), Some(10), "{log}");
    assert!(log.contains("must not come back as its old self") && log.contains("--join"), "{log}");

    std::fs::remove_dir_all(&data_dir).unwrap();
    let port = cluster.port(victim);
    let mut again = joiner(&cluster, port, &format!("node-{port}"), &cluster.nodes[leader].address(), &[]);
    again.spawn();
    let status = again.wait_exit(Duration::from_secs(20));
    let log = again.log_text();
    assert_eq!(status.code(), Some(10), "{log}");
    assert!(log.contains("remove it first"), "{log}");
    // The two members left go on serving.
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    assert_eq!(put(cluster.port(leader), "/v1/kv/k2", b"v").status, 201);
}

/// A peer request naming another cluster is refused (403) and logged with its address.
#[test]
fn a_peer_request_from_another_cluster_is_refused() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    wait_for(Duration::from_secs(10), "the cluster record", || {
        let headers = [("x-mmapd-cluster-id", "00000000000000aa")];
        let response = request(cluster.port(leader), "POST", "/raft/messages", &headers, b"").ok()?;
        (response.status == 403).then_some(())
    });
    let log = cluster.nodes[leader].log_text();
    assert!(log.contains("refused a peer request") && log.contains("00000000000000aa"), "{log}");
}

/// The README's three commands replace a failed node: remove it, wipe its directory,
/// start it with --join. The removed node (here still running: it is the "failed" one
/// coming back) stops with exit status 10 and never starts again from its directory;
/// the replacement joins under a new id, and the cluster serves throughout.
// Reference: §4.2.2 (a removed server stops), RAFT-NOTES #18 (a new id, never the old)
#[test]
fn a_removed_member_stops_for_good_and_is_replaced_under_a_new_id() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    assert_eq!(put(cluster.port(leader), "/v1/kv/k", b"v").status, 201);
    let victim = cluster.others(leader)[0];
    let address = cluster.nodes[victim].address();
    let old_id = cluster.nodes[victim].status().unwrap()["node_id"].as_str().unwrap().to_owned();
    // Through a follower: it pins the address to the id it names now, and forwards that.
    let bystander = cluster.others(leader)[1];
    let socket = admin_socket_of(&cluster, cluster.port(bystander));
    let output = admin(&["--socket", socket.to_str().unwrap(), "member", "remove", &address]);
    assert!(output.status.success(), "{output:?}");

    let status = cluster.nodes[victim].wait_exit(Duration::from_secs(20));
    let log = cluster.nodes[victim].log_text();
    assert_eq!(status.code(), Some(10), "{log}");
    let data_dir = cluster.dir.path().join(format!("node-{}", cluster.port(victim)));
    assert!(data_dir.join("REMOVED").exists());
    cluster.nodes[victim].spawn();
    let status = cluster.nodes[victim].wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(10), "a removed node started again: {}", cluster.nodes[victim].log_text());

    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    assert_eq!(put(cluster.port(leader), "/v1/kv/k2", b"while two").status, 201);
    std::fs::remove_dir_all(&data_dir).unwrap();
    let port = cluster.port(victim);
    let mut replacement =
        joiner(&cluster, port, &format!("node-{port}"), &cluster.nodes[leader].address(), &[]);
    replacement.start().unwrap();
    wait_for(Duration::from_secs(20), "the replacement to be promoted", || {
        matches!(seen_by_leader(&cluster, &address), Some((m, false)) if m > 0).then_some(())
    });
    let new_id = replacement.status().unwrap()["node_id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, old_id, "the replacement took the removed id");
    assert_eq!(get(port, "/v1/kv/k2").text(), "while two");
    let members = get(port, "/v1/members").json();
    let listed: Vec<&str> =
        members["members"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(listed.len(), 3, "{members}");
    assert!(!listed.contains(&old_id.as_str()), "{members}");

    // A removal forwarded before the replacement but held up until now (a partition that
    // heals, chaos seed 1796202600002) must not remove the replacement at that address:
    // forwards name the id, which is removed, and the leader refuses a forward naming an
    // address.
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let late = format!(r#"{{"op":"remove","member":"{old_id}"}}"#);
    let response = request(cluster.port(leader), "POST", "/raft/members", &[], late.as_bytes()).unwrap();
    assert_eq!(response.status, 404, "{}", response.text());
    assert!(response.text().contains("was removed"), "{}", response.text());
    let by_address = format!(r#"{{"op":"remove","member":"{address}"}}"#);
    let response =
        request(cluster.port(leader), "POST", "/raft/members", &[], by_address.as_bytes()).unwrap();
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(response.text().contains("by id"), "{}", response.text());
    let members = get(port, "/v1/members").json();
    assert!(members.to_string().contains(&new_id), "the replacement was removed: {members}");
    cluster.nodes[victim] = replacement;
}

/// A member down while its removal committed never hears of it from its log: the
/// leader stops sending to it. When it comes back and asks for votes, every member
/// refuses it as removed; a majority answering so (never one peer) stops it with
/// status 10.
// Reference: §4.2.3 (a removed server must not disrupt the cluster)
#[test]
fn a_member_removed_while_down_stops_once_a_majority_says_it_was_removed() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let victim = cluster.others(leader)[0];
    let address = cluster.nodes[victim].address();
    cluster.nodes[victim].kill9();
    let socket = cluster.dir.path().join(format!("node-{}", cluster.port(leader))).join("admin.sock");
    let output = admin(&["--socket", socket.to_str().unwrap(), "member", "remove", &address]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(put(cluster.port(leader), "/v1/kv/k", b"v").status, 201);
    cluster.nodes[victim].spawn();
    let status = cluster.nodes[victim].wait_exit(Duration::from_secs(30));
    let log = cluster.nodes[victim].log_text();
    assert_eq!(status.code(), Some(10), "{log}");
    assert!(log.contains("a majority of the members answer that this node was removed"), "{log}");
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    assert_eq!(put(cluster.port(leader), "/v1/kv/k2", b"v").status, 201);
}

/// The admin socket of the node on `port` in `cluster.dir`.
fn admin_socket_of(cluster: &Cluster, port: u16) -> std::path::PathBuf {
    cluster.dir.path().join(format!("node-{port}")).join("admin.sock")
}

/// A member that was down while its peers were replaced comes back with a stale member
/// list: every member it knows is gone, and the leader is a node it has never heard of.
/// It must still answer that leader (thesis §4.1: a server accepts entries from a
/// leader not in its configuration, and its answers must reach that leader) and catch
/// up, while the leader it does not know keeps leading.
// Reference: §4.1
#[test]
fn a_member_that_missed_a_replacement_catches_up_when_the_replacement_leads() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    assert_eq!(put(cluster.port(leader), "/v1/kv/before", b"1").status, 201);
    let stale = cluster.others(leader)[0];
    let originals: Vec<usize> = (0..3).filter(|&i| i != stale).collect();
    cluster.nodes[stale].kill9();

    // Two replacements join and are promoted; then both other original members are
    // removed (they exit), so the leader is one of the replacements.
    let mut replacement_ports = Vec::new();
    for _ in 0..2 {
        let port = free_ports(1)[0];
        let address = format!("127.0.0.1:{port}");
        let via = cluster.nodes[originals[0]].address();
        let mut node = joiner(&cluster, port, &format!("node-{port}"), &via, &[]);
        node.start().unwrap();
        wait_for(Duration::from_secs(30), "the replacement to be promoted", || {
            matches!(seen_by_leader(&cluster, &address), Some((m, false)) if m > 0).then_some(())
        });
        cluster.nodes.push(node);
        replacement_ports.push(port);
    }
    let socket = admin_socket_of(&cluster, replacement_ports[0]);
    for &original in &originals {
        let address = cluster.nodes[original].address();
        // Refused while the previous change is pending: asked again until accepted.
        wait_for(Duration::from_secs(20), "the removal to be accepted", || {
            let output = admin(&["--socket", socket.to_str().unwrap(), "member", "remove", &address]);
            output.status.success().then_some(())
        });
        assert_eq!(cluster.nodes[original].wait_exit(Duration::from_secs(20)).code(), Some(10));
    }
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    assert!(replacement_ports.contains(&cluster.port(leader)));
    for i in 0..20 {
        assert_eq!(put(cluster.port(leader), &format!("/v1/kv/after{i}"), b"2").status, 201);
    }

    cluster.nodes[stale].start().unwrap();
    let stale_port = cluster.port(stale);
    wait_for(Duration::from_secs(30), "the stale member to catch up from a leader it did not know", || {
        (get(stale_port, "/v1/kv/after19?consistency=stale").text() == "2").then_some(())
    });
    let log = cluster.nodes[stale].log_text();
    assert!(log.contains("member list does not name yet"), "not the stale path:\n{log}");
    // It counts for the quorum again: a linearizable read on it sees the latest write.
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    assert_eq!(put(cluster.port(leader), "/v1/kv/last", b"3").status, 201);
    assert_eq!(get(stale_port, "/v1/kv/last").text(), "3");
}
