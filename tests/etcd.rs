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

/// The member id of the node on `port`, as etcd's response headers carry it.
fn member_id(port: u16) -> u64 {
    let status = json(port, &["endpoint", "status"]);
    status[0]["Status"]["header"]["member_id"].as_u64().expect("a member id")
}

#[test]
fn etcdctl_snapshot_save_writes_a_backup_that_mmapd_admin_restores() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let follower = cluster.port(cluster.others(leader)[0]);
    for i in 0..50 {
        ok(follower, &["put", &format!("snap/{i:02}"), &format!("value {i}")]);
    }
    let file = cluster.dir.path().join("saved.db");
    let saved = ok(follower, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    // What etcdctl checked before it kept the file: etcd's SHA-256 envelope.
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len() % 512, 32, "{} bytes", bytes.len());

    let port = free_ports(1)[0];
    let data_dir = cluster.dir.path().join("restored");
    let advertise = format!("127.0.0.1:{port}");
    let restored = admin(&[
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--advertise",
        &advertise,
    ]);
    assert!(restored.status.success(), "{}", stderr(&restored));
    let port_text = port.to_string();
    let mut node = Daemon::new(
        cluster.dir.path(),
        port,
        &["--port", &port_text, "--data-dir", data_dir.to_str().unwrap()],
    );
    node.spawn();
    node.wait_started().unwrap();
    wait_for(Duration::from_secs(10), "the restored node to lead", || {
        node.status().is_some_and(|status| status["state"] == "leader").then_some(())
    });
    let listed = json(port, &["get", "snap/", "--prefix"]);
    assert_eq!(listed["count"], 50, "{listed}");
    assert_eq!(ok(port, &["get", "snap/07", "--print-value-only"]).trim(), "value 7");

    // A damaged file is refused by the restore, naming the offset.
    let mut damaged = bytes.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    std::fs::write(&file, &damaged).unwrap();
    let refused = admin(&[
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        cluster.dir.path().join("again").to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("SHA-256"), "{}", stderr(&refused));
}

#[test]
fn etcdctl_move_leader_hands_leadership_to_the_member_named_and_refuses_others() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let target = cluster.others(leader)[0];
    let endpoints: Vec<String> = (0..3).map(|node| format!("127.0.0.1:{}", cluster.port(node))).collect();
    let all = format!("--endpoints={}", endpoints.join(","));
    let target_id = format!("{:x}", member_id(cluster.port(target)));
    // etcdctl finds the leader among the endpoints and asks it.
    let moved = ok(cluster.port(0), &[&all, "move-leader", &target_id]);
    assert!(moved.contains("Leadership transferred from") && moved.contains(&target_id), "{moved}");
    wait_for(Duration::from_secs(10), "the named member to lead", || {
        (cluster.agreed_leader() == Some(target)).then_some(())
    });
    // The leader itself, or an id that is no member: etcd's error, nothing changes.
    for bad in [target_id.clone(), "1234".to_owned()] {
        let refused = etcdctl(cluster.port(0), &[&all, "move-leader", &bad], None).unwrap_err();
        assert!(refused.contains("bad leader transferee"), "{refused}");
    }
    // Asked of a follower directly (etcdctl asks only the leader; the gateway can):
    // etcd's "not leader", FailedPrecondition.
    let follower = cluster.port(cluster.others(target)[0]);
    let body = format!(r#"{{"targetID":"{}"}}"#, member_id(follower));
    let (status, refused) = post(follower, "/v3/maintenance/transfer-leadership", &body);
    assert_eq!((status, refused["code"].as_u64()), (400, Some(9)), "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("not leader"), "{refused}");
    assert_eq!(cluster.agreed_leader(), Some(target));
}

#[test]
fn etcdctl_endpoint_hashkv_agrees_on_every_member_and_tells_revisions_apart() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.port(cluster.wait_for_leader(Duration::from_secs(10)));
    for i in 0..20 {
        ok(leader, &["put", &format!("h/{i}"), &i.to_string()]);
    }
    let revision = json(leader, &["get", "h/0"])["header"]["revision"].as_u64().unwrap();
    ok(leader, &["put", "h/0", "changed"]);
    let endpoints: Vec<String> = (0..3).map(|node| format!("127.0.0.1:{}", cluster.port(node))).collect();
    let all = format!("--endpoints={}", endpoints.join(","));
    let rev = format!("--rev={revision}");
    let hashes = |args: &[&str]| -> Vec<u64> {
        // Every member applies the last write soon; a member behind answers an older hash.
        wait_for(Duration::from_secs(10), "every member's hash to agree", || {
            let rows = json(leader, args);
            let hashes: Vec<u64> =
                rows.as_array()?.iter().map(|row| row["HashKV"]["hash"].as_u64().unwrap_or(0)).collect();
            (hashes.len() == 3 && hashes.iter().all(|&h| h == hashes[0])).then_some(hashes)
        })
    };
    let at_revision = hashes(&[&all, "endpoint", "hashkv", &rev]);
    let now = hashes(&[&all, "endpoint", "hashkv"]);
    assert_ne!(at_revision[0], now[0], "the state after a write hashes differently");
    // A revision past the current one is etcd's error.
    let future = etcdctl(leader, &["endpoint", "hashkv", "--rev=100000"], None).unwrap_err();
    assert!(future.contains("future revision"), "{future}");
}

/// The shape of a JSON value: its object keys, recursively (the first element of an
/// array stands for all), with leaves as their JSON type; what must match between
/// mmapd's gateway and etcd's where values (ids, revisions) legitimately differ.
fn shape(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(items) => Value::Array(items.first().map(shape).into_iter().collect()),
        Value::String(_) => Value::from("string"),
        Value::Number(_) => Value::from("number"),
        Value::Bool(_) => Value::from("bool"),
        Value::Null => Value::Null,
    }
}

/// POSTs `body` with curl (etcd's gateway answers errors chunked): the status and the
/// JSON answer.
fn post(port: u16, path: &str, body: &str) -> (u16, serde_json::Value) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let output = Command::new("curl")
        .args(["-s", "-XPOST", "-H", "Content-Type: application/json", "--data-binary", body])
        .args(["-w", "\n%{http_code}", &url])
        .output()
        .expect("curl");
    let text = stdout(&output);
    let (json, status) = text.trim_end().rsplit_once('\n').unwrap_or_else(|| panic!("POST {path}: {text}"));
    let json = serde_json::from_str(json).unwrap_or_else(|e| panic!("POST {path}: {e}: {text}"));
    (status.parse().unwrap(), json)
}

#[test]
fn the_json_gateway_answers_what_etcds_gateway_answers() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let follower = cluster.port(cluster.others(leader)[0]);
    let etcd = RealEtcd::start();
    let (foo, bar, baz) = (b64("foo"), b64("bar"), b64("baz"));
    // One script, both systems; (path, body) in order.
    let script: Vec<(&str, String)> = vec![
        ("/v3/kv/put", format!(r#"{{"key":"{foo}","value":"{bar}"}}"#)),
        ("/v3/kv/put", format!(r#"{{"key":"{foo}","value":"{baz}","prev_kv":true}}"#)),
        ("/v3/kv/range", format!(r#"{{"key":"{foo}"}}"#)),
        ("/v3/kv/range", format!(r#"{{"key":"{}","range_end":"{}","count_only":true}}"#, b64("a"), b64("z"))),
        ("/v3/kv/range", format!(r#"{{"key":"{}"}}"#, b64("absent"))),
        (
            "/v3/kv/txn",
            format!(
                r#"{{"compare":[{{"key":"{foo}","target":"VALUE","result":"EQUAL","value":"{baz}"}}],
                   "success":[{{"request_put":{{"key":"{foo}","value":"{bar}"}}}}],
                   "failure":[{{"request_range":{{"key":"{foo}"}}}}]}}"#
            ),
        ),
        (
            "/v3/kv/txn",
            format!(
                r#"{{"compare":[{{"key":"{foo}","target":"VERSION","result":"GREATER","version":"10"}}],
                   "failure":[{{"request_range":{{"key":"{foo}"}}}}]}}"#
            ),
        ),
        // Nested: the inner compare holds (foo is bar), then fails (foo is baz now).
        (
            "/v3/kv/txn",
            format!(
                r#"{{"compare":[{{"key":"{foo}","target":"VERSION","result":"GREATER","version":"0"}}],
                   "success":[{{"request_txn":{{"compare":[{{"key":"{foo}","target":"VALUE","result":"EQUAL","value":"{bar}"}}],
                       "success":[{{"request_put":{{"key":"{foo}","value":"{baz}","prev_kv":true}}}}],
                       "failure":[{{"request_range":{{"key":"{foo}"}}}}]}}}},
                     {{"request_range":{{"key":"{foo}"}}}}]}}"#
            ),
        ),
        (
            "/v3/kv/txn",
            format!(
                r#"{{"success":[{{"request_txn":{{"compare":[{{"key":"{foo}","target":"VALUE","result":"EQUAL","value":"{bar}"}}],
                       "failure":[{{"request_range":{{"key":"{foo}"}}}}]}}}}]}}"#
            ),
        ),
        ("/v3/kv/deleterange", format!(r#"{{"key":"{foo}","prev_kv":true}}"#)),
        ("/v3/maintenance/status", "{}".to_owned()),
        ("/v3beta/kv/range", format!(r#"{{"key":"{foo}"}}"#)),
        // Errors: a bad body, a future revision.
        ("/v3/kv/range", r#"{"key": 5}"#.to_owned()),
        ("/v3/kv/range", format!(r#"{{"key":"{foo}","revision":"100000"}}"#)),
    ];
    for (path, body) in &script {
        let (ours_status, ours) = post(follower, path, body);
        let (etcd_status, theirs) = post(etcd.port, path, body);
        assert_eq!(ours_status, etcd_status, "{path} {body}: mmapd {ours}, etcd {theirs}");
        let mut ours_shape = shape(&ours);
        let mut etcd_shape = shape(&theirs);
        if path.ends_with("/status") {
            // Fields only one side has: etcd 3.4 reports its bolt file's sizes; mmapd
            // the mapped files'. Both have version, dbSize, leader, raft fields.
            for key in ["dbSizeInUse", "errors", "isLearner"] {
                ours_shape.as_object_mut().unwrap().remove(key);
                etcd_shape.as_object_mut().unwrap().remove(key);
            }
        }
        if ours_status == 200 {
            assert_eq!(ours_shape, etcd_shape, "{path} {body}: mmapd {ours}, etcd {theirs}");
        } else {
            // grpc-gateway's error: the same code, a message of our own.
            assert_eq!(ours["code"], theirs["code"], "{path} {body}: mmapd {ours}, etcd {theirs}");
            assert!(ours["error"].is_string() && ours["message"].is_string(), "{ours}");
        }
        // Values that mean the same on both.
        for pointer in [
            "/kvs/0/key",
            "/kvs/0/value",
            "/count",
            "/succeeded",
            "/deleted",
            "/prev_kv/value",
            "/responses/0/response_txn/succeeded",
            "/responses/0/response_txn/responses/0/response_put/prev_kv/value",
            "/responses/0/response_txn/responses/0/response_range/kvs/0/value",
            "/responses/1/response_range/kvs/0/value",
        ] {
            assert_eq!(
                ours.pointer(pointer),
                theirs.pointer(pointer),
                "{path} {body} {pointer}: mmapd {ours}, etcd {theirs}"
            );
        }
    }
    // A snapshot streams `{"result": …}` lines, the last with remaining_bytes 0.
    // (curl: the answer is chunked.)
    let url = format!("http://127.0.0.1:{follower}/v3/maintenance/snapshot");
    let snapshot = Command::new("curl").args(["-sf", "-XPOST", "--data", "{}", &url]).output().expect("curl");
    assert!(snapshot.status.success(), "{}", stderr(&snapshot));
    let text = stdout(&snapshot);
    let lines: Vec<serde_json::Value> =
        text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert!(!lines.is_empty() && lines.iter().all(|line| line["result"]["blob"].is_string()), "{text}");
    assert!(lines.last().unwrap()["result"].get("remaining_bytes").is_none(), "0 is left out, as etcd does");
}

// An etcd client connects at start and may make its first call much later: an HTTP/2
// connection that sent its preface is not closed as silent (a connection that sends
// nothing is: tests/tls.rs).
#[test]
fn an_http2_connection_idle_after_its_preface_stays_open_past_the_silence_timeout() {
    use std::io::{Read, Write};
    let cluster = Cluster::start(1, &[]);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", cluster.port(0))).unwrap();
    // The client preface, then an empty SETTINGS frame (length 0, type 4, no flags).
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").unwrap();
    std::thread::sleep(Duration::from_secs(12));
    stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    // The server's SETTINGS (and its ack of ours) are waiting; the connection is open:
    // a read returns them, then times out rather than seeing the end of the stream.
    let mut buffer = [0u8; 4096];
    let first = stream.read(&mut buffer).expect("the server's frames");
    assert!(first > 0, "the connection was closed");
    let later = stream.read(&mut buffer);
    assert!(
        matches!(&later, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "the connection ended: {later:?}"
    );
}
