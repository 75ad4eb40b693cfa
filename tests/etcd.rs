//! The etcd v3 front on real `mmapd` processes, driven by Debian's `etcdctl` (package
//! `etcd-client`, 3.4): what an etcd user types works against a 3-node cluster, and
//! every node answers the same. `.ci/run` installs etcdctl; without it this test fails
//! (it never passes without having run).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Runs `etcdctl --endpoints=127.0.0.1:PORT ARGS`, with `stdin` as its input; its
/// output, or a failure naming the command and what it printed.
fn etcdctl(port: u16, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let mut command = Command::new("etcdctl");
    command
        .env("ETCDCTL_API", "3")
        .args(
            (!args.iter().any(|arg| arg.starts_with("--endpoints=")))
                .then(|| format!("--endpoints=127.0.0.1:{port}")),
        )
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child =
        command.spawn().map_err(|e| format!("etcdctl did not start ({e}): is etcd-client installed?"))?;
    child.stdin.take().expect("stdin").write_all(stdin.unwrap_or("").as_bytes()).expect("etcdctl stdin");
    let output = child.wait_with_output().expect("etcdctl output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        // `endpoint health` writes its verdicts to stderr.
        Ok(stdout + &String::from_utf8_lossy(&output.stderr))
    } else {
        Err(format!(
            "etcdctl {args:?}: {}\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn ok(port: u16, args: &[&str]) -> String {
    etcdctl(port, args, None).unwrap_or_else(|e| panic!("{e}"))
}

fn json(port: u16, args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.extend(["-w", "json"]);
    serde_json::from_str(&ok(port, &args)).expect("etcdctl's JSON")
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn etcdctl_puts_gets_deletes_and_transacts_on_every_node() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let follower = cluster.port(cluster.others(leader)[0]);
    let leader = cluster.port(leader);

    // Writes through a follower are forwarded; reads are linearizable on any node.
    assert_eq!(ok(follower, &["put", "app/a", "1"]).trim(), "OK");
    assert_eq!(ok(leader, &["put", "app/b", "2"]).trim(), "OK");
    assert_eq!(ok(follower, &["put", "other", "3"]).trim(), "OK");
    for node in 0..3 {
        let port = cluster.port(node);
        assert_eq!(ok(port, &["get", "app/a"]), "app/a\n1\n", "node {node}");
        assert_eq!(ok(port, &["get", "app/", "--prefix", "--keys-only"]), "app/a\n\napp/b\n\n");
    }

    // The JSON answer: etcd's fields, base64 keys and values, count and revisions.
    let listed = json(leader, &["get", "app/", "--prefix"]);
    assert_eq!(listed["count"], 2, "{listed}");
    let kvs = listed["kvs"].as_array().expect("kvs");
    assert_eq!(kvs[0]["key"], b64("app/a"));
    assert_eq!(kvs[0]["value"], b64("1"));
    assert_eq!(kvs[0]["version"], 1);
    let a_revision = kvs[0]["mod_revision"].as_i64().expect("a revision");
    assert!(listed["header"]["revision"].as_i64().unwrap() >= kvs[1]["mod_revision"].as_i64().unwrap());
    assert_ne!(listed["header"]["cluster_id"], 0);

    // A read at a past revision sees the value as it was then.
    ok(leader, &["put", "app/a", "changed"]);
    assert_eq!(ok(follower, &["get", "app/a", &format!("--rev={a_revision}")]), "app/a\n1\n");
    assert_eq!(ok(follower, &["get", "app/a"]), "app/a\nchanged\n");
    let limited = json(leader, &["get", "", "--from-key", "--limit=2", "--order=DESCEND"]);
    assert_eq!(limited["kvs"][0]["key"], b64("other"), "{limited}");
    assert_eq!((limited["more"].as_bool(), limited["count"].as_i64()), (Some(true), Some(3)));

    // prev-kv on a put and a delete.
    let replaced = json(follower, &["put", "app/b", "22", "--prev-kv"]);
    assert_eq!(replaced["prev_kv"]["value"], b64("2"), "{replaced}");
    assert_eq!(ok(leader, &["del", "other", "--prev-kv"]), "1\nother\n3\n");
    assert_eq!(ok(leader, &["get", "other"]), "");

    // A transaction, its compares and both branches, from etcdctl's interactive input.
    let txn = "value(\"app/a\") = \"changed\"\n\nput app/c 3\nget app/a\n\nput app/d 4\n\n";
    let taken = etcdctl(follower, &["txn"], Some(txn)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(taken, "SUCCESS\n\nOK\n\napp/a\nchanged\n", "{taken}");
    let txn = "version(\"app/a\") = \"1\"\n\nput app/c 33\n\nput app/d 4\n\n";
    let other = etcdctl(leader, &["txn"], Some(txn)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(other, "FAILURE\n\nOK\n", "{other}");
    assert_eq!(ok(follower, &["get", "app/c", "--print-value-only"]), "3\n");
    assert_eq!(ok(follower, &["get", "app/d", "--print-value-only"]), "4\n");

    // A range delete.
    assert_eq!(ok(follower, &["del", "app/", "--prefix"]), "4\n");
    assert_eq!(ok(leader, &["get", "app/", "--prefix"]), "");

    // Compaction, and a read below it refused with etcd's error.
    let revision = json(leader, &["get", "x"])["header"]["revision"].as_i64().unwrap();
    assert!(ok(leader, &["compaction", &revision.to_string()])
        .contains(&format!("compacted revision {revision}")));
    let refused = etcdctl(leader, &["get", "app/a", &format!("--rev={a_revision}")], None).unwrap_err();
    assert!(refused.contains("required revision has been compacted"), "{refused}");
}

#[test]
fn etcdctl_endpoint_status_and_health_answer_for_every_member() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let endpoints: Vec<String> = (0..3).map(|node| format!("127.0.0.1:{}", cluster.port(node))).collect();
    let all = format!("--endpoints={}", endpoints.join(","));
    let health =
        etcdctl(cluster.port(0), &[&all, "endpoint", "health"], None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");
    let status = etcdctl(cluster.port(0), &[&all, "endpoint", "status", "-w", "json"], None)
        .unwrap_or_else(|e| panic!("{e}"));
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    let rows = status.as_array().expect("one row per endpoint");
    assert_eq!(rows.len(), 3);
    let leaders: Vec<u64> = rows.iter().map(|row| row["Status"]["leader"].as_u64().unwrap()).collect();
    assert!(leaders.iter().all(|&id| id == leaders[0] && id != 0), "{leaders:?}");
    let leader_rows: Vec<&serde_json::Value> =
        rows.iter().filter(|row| row["Status"]["header"]["member_id"] == row["Status"]["leader"]).collect();
    assert_eq!(leader_rows.len(), 1, "{status}");
    assert_eq!(leader_rows[0]["Endpoint"], format!("127.0.0.1:{}", cluster.port(leader)));
    assert!(rows.iter().all(|row| row["Status"]["raftTerm"].as_u64() >= Some(1)), "{status}");
    // A service mmapd does not serve says so, and what to use instead.
    let users = etcdctl(cluster.port(0), &["user", "list"], None).unwrap_err();
    assert!(users.contains("Unimplemented") && users.contains("--auth-tokens"), "{users}");
}
