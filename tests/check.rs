//! `mmapd-admin check`: every member's hash of the key-value state at one revision, on
//! real nodes, and the member whose data differs named.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use mmapd::kv::Command as KvCommand;
use mmapd::raft::EntryKind;
use mmapd::store::{Store, StoreOptions};

fn socket_of(cluster: &Cluster, node: usize) -> PathBuf {
    cluster.dir.path().join(format!("node-{}/admin.sock", cluster.port(node)))
}

fn data_dir_of(cluster: &Cluster, node: usize) -> PathBuf {
    cluster.dir.path().join(format!("node-{}", cluster.port(node)))
}

fn check(socket: &Path) -> (Option<i32>, serde_json::Value, String) {
    let output = admin(&["--socket", socket.to_str().unwrap(), "check", "--json"]);
    let json = serde_json::from_str(stdout(&output).trim()).unwrap_or(serde_json::Value::Null);
    let text = admin(&["--socket", socket.to_str().unwrap(), "check"]);
    (output.status.code(), json, format!("{}{}", stdout(&text), stderr(&text)))
}

fn write_keys(port: u16, count: usize) {
    for i in 0..count {
        let response = put(port, &format!("/v1/kv/key-{i:03}"), format!("value-{i}").as_bytes());
        assert!(matches!(response.status, 200 | 201), "{} {}", response.status, response.text());
    }
}

/// Waits until every node has applied at least what the leader has committed.
fn wait_caught_up(cluster: &Cluster, leader: usize) {
    let commit = cluster.nodes[leader].status().unwrap()["commit_index"].as_u64().unwrap();
    wait_for(Duration::from_secs(10), "every node to apply the writes", || {
        cluster
            .nodes
            .iter()
            .all(|n| n.status().and_then(|s| s["last_applied"].as_u64()).is_some_and(|a| a >= commit))
            .then_some(())
    });
}

#[test]
fn every_member_of_a_healthy_cluster_hashes_the_same_state_at_one_revision() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.agreed_leader().unwrap();
    write_keys(cluster.port(leader), 40);
    // Asked on a follower, which forwards the check entry to the leader.
    let follower = cluster.others(leader)[0];
    let (code, json, text) = check(&socket_of(&cluster, follower));
    assert_eq!(code, Some(0), "{json} {text}");
    assert_eq!(json["consistent"], true, "{json}");
    let members = json["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{json}");
    let crc = &members[0]["crc32c"];
    for member in members {
        assert_eq!(&member["crc32c"], crc, "{json}");
        assert_eq!(member["keys"], 40, "{json}");
        assert_eq!(member["agrees"], true, "{json}");
    }
    assert!(text.contains("all 3 members agree at revision"), "{text}");
    // A later check is at a later revision: each is its own entry.
    let (_, again, _) = check(&socket_of(&cluster, leader));
    assert!(again["revision"].as_u64() > json["revision"].as_u64(), "{json} then {again}");
}

#[test]
fn a_member_whose_log_was_altered_on_disk_is_named_as_disagreeing() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.agreed_leader().unwrap();
    let port = cluster.port(leader);
    assert_eq!(put(port, "/v1/kv/victim", b"the value every member applied").status, 201);
    write_keys(port, 20);
    wait_caught_up(&cluster, leader);
    let follower = cluster.others(leader)[0];
    let follower_id = cluster.nodes[follower].status().unwrap()["node_id"].as_str().unwrap().to_owned();

    // Silent corruption of one member: its log's copy of a committed write is changed
    // (validly checksummed, same index and term), as a bad disk or a bug could do. The
    // leader never resends an entry whose term matches, so the member keeps it.
    cluster.nodes[follower].signal(nix::sys::signal::Signal::SIGTERM);
    cluster.nodes[follower].wait_exit(Duration::from_secs(10));
    {
        let dir = data_dir_of(&cluster, follower);
        let (mut store, _) =
            Store::open(&dir, StoreOptions::default()).expect("open the stopped node's store");
        let (first, last) = (store.first_index(), store.last_index());
        let mut entries = store.entries(first, last + 1).expect("read the log");
        let victim = entries
            .iter_mut()
            .find(|e| {
                e.kind == EntryKind::Normal
                    && matches!(KvCommand::decode(&e.data), Ok(KvCommand::Put { key, .. }) if key.as_ref() == b"victim")
            })
            .expect("the victim's entry is in the follower's log");
        victim.data =
            KvCommand::put(Bytes::from_static(b"victim"), Bytes::from_static(b"something else")).encode();
        let from = victim.index;
        let tail: Vec<_> = entries.into_iter().filter(|e| e.index >= from).collect();
        store.append(&tail).expect("rewrite the tail");
        store.sync().expect("sync");
    }
    cluster.nodes[follower].start().expect("restart the follower");
    wait_caught_up(&cluster, leader);

    let (code, json, text) = check(&socket_of(&cluster, leader));
    assert_eq!(code, Some(3), "{json} {text}");
    assert_eq!(json["disagreeing"], serde_json::json!([follower_id]), "{json}");
    assert_eq!(json["consistent"], false, "{json}");
    assert!(text.contains("DISAGREE"), "{text}");
    let line = text.lines().find(|l| l.contains(&follower_id)).unwrap_or_default();
    assert!(line.ends_with("DISAGREES"), "{text}");
}

#[test]
fn a_member_that_is_down_is_reported_as_not_answering_never_as_agreeing() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.agreed_leader().unwrap();
    write_keys(cluster.port(leader), 5);
    let down = cluster.others(leader)[0];
    cluster.nodes[down].kill9();
    let (code, json, text) = check(&socket_of(&cluster, leader));
    assert_eq!(code, Some(4), "{json} {text}");
    assert_eq!(json["unanswered"], 1, "{json}");
    assert_eq!(json["disagreeing"], serde_json::json!([]), "{json}");
    let members = json["members"].as_array().unwrap();
    let errors = members.iter().filter(|m| m.get("error").is_some()).count();
    assert_eq!(errors, 1, "{json}");
    assert!(text.contains("did not answer"), "{text}");
}
