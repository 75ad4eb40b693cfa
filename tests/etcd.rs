//! The etcd v3 front on real `mmapd` processes, driven by Debian's `etcdctl` (package
//! `etcd-client`, 3.4): what an etcd user types works against a 3-node cluster, and
//! every node answers the same. Where it is cheap, what etcdctl prints against mmapd is
//! compared with what it prints against a real etcd 3.4 (package `etcd-server`) started
//! in the same test, field by field where values legitimately differ (ids, revisions).
//! `.ci/run` installs both; without them this test fails (it never passes without
//! having run).

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
        // Compares over a range: every key in it must match; none: as one missing key.
        ("/v3/kv/put", format!(r#"{{"key":"{}","value":"{bar}"}}"#, b64("r/1"))),
        ("/v3/kv/put", format!(r#"{{"key":"{}","value":"{bar}"}}"#, b64("r/2"))),
        (
            "/v3/kv/txn",
            format!(
                r#"{{"compare":[{{"key":"{r}","range_end":"{r_end}","target":"VALUE","result":"EQUAL","value":"{bar}"}}],
                   "success":[{{"request_put":{{"key":"{r2}","value":"{baz}"}}}}]}}"#,
                r = b64("r/"),
                r_end = b64("r0"),
                r2 = b64("r/2")
            ),
        ),
        (
            "/v3/kv/txn",
            format!(
                r#"{{"compare":[{{"key":"{r}","range_end":"{r_end}","target":"VALUE","result":"EQUAL","value":"{bar}"}}],
                   "failure":[{{"request_range":{{"key":"{r2}"}}}}]}}"#,
                r = b64("r/"),
                r_end = b64("r0"),
                r2 = b64("r/2")
            ),
        ),
        (
            "/v3/kv/txn",
            format!(
                r#"{{"compare":[{{"key":"{s}","range_end":"{s_end}","target":"VALUE","result":"NOT_EQUAL","value":"{bar}"}}]}}"#,
                s = b64("s/"),
                s_end = b64("s0")
            ),
        ),
        (
            "/v3/kv/txn",
            format!(
                r#"{{"compare":[{{"key":"{r}","range_end":"AA==","target":"VERSION","result":"GREATER","version":"0"}}]}}"#,
                r = b64("r/")
            ),
        ),
        (
            "/v3/kv/txn",
            format!(
                r#"{{"success":[{{"request_txn":{{"compare":[{{"key":"{r}","range_end":"{r_end}","target":"MOD","result":"LESS","mod_revision":"1000000"}}],
                       "success":[{{"request_range":{{"key":"{r2}"}}}}]}}}}]}}"#,
                r = b64("r/"),
                r_end = b64("r0"),
                r2 = b64("r/2")
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

// ---------------------------------------------------------------- leases and members

/// The `Error: ...` line etcdctl printed for a failure (its other lines are the Go
/// client's retry logs, with times and random targets).
fn error_line(failure: &str) -> String {
    failure.lines().find(|line| line.starts_with("Error:")).unwrap_or(failure).to_owned()
}

/// The lease id in etcdctl's `lease ID granted with TTL(Ns)`.
fn granted_id(text: &str) -> String {
    let id = text.strip_prefix("lease ").and_then(|rest| rest.split(' ').next()).unwrap_or("");
    assert!(id.len() == 16 && text.contains(" granted with TTL("), "{text:?}");
    id.to_owned()
}

/// The lease commands an etcd user types, on `port`, with what etcdctl printed, the
/// lease's id written `<ID>` and a `remaining(N s)` checked and written `<N>`: the
/// same for mmapd and for etcd.
fn lease_session(port: u16) -> Vec<String> {
    let mut printed = Vec::new();
    let granted = ok(port, &["lease", "grant", "60"]);
    let id = granted_id(&granted);
    let mut say = |text: String| printed.push(text.replace(&id, "<ID>"));
    say(granted.clone());
    say(ok(port, &["put", &format!("--lease={id}"), "held", "v"]));
    let alive = ok(port, &["lease", "timetolive", &id, "--keys"]);
    let remaining: u64 = alive
        .split("remaining(")
        .nth(1)
        .and_then(|rest| rest.split('s').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{alive:?}"));
    assert!((50..=60).contains(&remaining), "{alive}");
    say(alive.replace(&format!("remaining({remaining}s)"), "remaining(<N>s)"));
    say(ok(port, &["lease", "keep-alive", "--once", &id]));
    say(ok(port, &["lease", "list"]));
    let json = json(port, &["lease", "timetolive", &id]);
    let mut fields: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    say(format!("timetolive JSON fields {fields:?}; granted {}", json["granted-ttl"]));
    say(ok(port, &["lease", "revoke", &id]));
    say(ok(port, &["get", "held"]));
    say(ok(port, &["lease", "timetolive", &id]));
    say(error_line(&etcdctl(port, &["lease", "keep-alive", "--once", &id], None).unwrap_err()));
    say(error_line(&etcdctl(port, &["lease", "revoke", &id], None).unwrap_err()));
    say(error_line(&etcdctl(port, &["lease", "grant", "9000000001"], None).unwrap_err()));
    printed
}

#[test]
fn etcdctl_grants_attaches_keeps_alive_lists_and_revokes_leases_as_against_etcd() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let follower = cluster.port(cluster.others(leader)[0]);
    let etcd = RealEtcd::start();

    let ours = lease_session(follower);
    let theirs = lease_session(etcd.port);
    assert_eq!(ours, theirs, "mmapd (left) and etcd (right) print differently");
    assert_eq!(ours[0], "lease <ID> granted with TTL(60s)\n");
    assert_eq!(ours[2], "lease <ID> granted with TTL(60s), remaining(<N>s), attached keys([held])\n");
    assert_eq!(ours[3], "lease <ID> keepalived with TTL(60)\n");
    assert_eq!(ours[4], "found 1 leases\n<ID>\n");
    assert_eq!(ours[7], "", "the revoked lease's key is gone");
    assert_eq!(ours[8], "lease <ID> already expired\n");
    assert_eq!(ours[9], "Error: etcdserver: requested lease not found");

    // A lease granted through one node is one the others know: its JSON, and the key's.
    let granted = json(follower, &["lease", "grant", "30"]);
    let id = granted["ID"].as_i64().expect("an ID");
    assert!(id > 0 && granted["TTL"] == 30, "{granted}");
    // clientv3 embeds the header: its fields sit beside ID and TTL.
    assert!(granted["revision"].as_i64() > Some(0) && granted["cluster_id"].as_u64() > Some(0), "{granted}");
    let hex = format!("{id:016x}");
    ok(cluster.port(leader), &["put", &format!("--lease={hex}"), "kept", "v"]);
    for node in 0..3 {
        let read = json(cluster.port(node), &["get", "kept"]);
        assert_eq!(read["kvs"][0]["lease"].as_i64(), Some(id), "node {node}: {read}");
        let left = json(cluster.port(node), &["lease", "timetolive", &hex, "--keys"]);
        assert_eq!(
            (left["granted-ttl"].as_i64(), left["keys"][0].as_str()),
            (Some(30), Some(b64("kept").as_str()))
        );
    }
    // And what the HTTP API says of it is the same lease.
    let http = get(follower, &format!("/v1/leases/{hex}")).json();
    assert_eq!((http["granted_ttl_s"].as_u64(), &http["keys"]), (Some(30), &serde_json::json!(["kept"])));
}

#[test]
fn a_background_etcdctl_keep_alive_keeps_a_short_lease_past_its_ttl_through_a_follower() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let follower = cluster.port(cluster.others(leader)[0]);
    let id = granted_id(&ok(follower, &["lease", "grant", "2"]));
    ok(follower, &["put", &format!("--lease={id}"), "alive", "v"]);
    let mut keeper = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([&format!("--endpoints=127.0.0.1:{follower}"), "lease", "keep-alive", &id])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("etcdctl");
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        for node in 0..3 {
            assert_eq!(
                ok(cluster.port(node), &["get", "alive", "--print-value-only", "--consistency=s"]),
                "v\n",
                "node {node}, {:?} into a 2 s lease",
                started.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    keeper.kill().expect("kill the keep-alive");
    let output = keeper.wait_with_output().expect("its output");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    let kept = printed.lines().filter(|line| *line == format!("lease {id} keepalived with TTL(2)")).count();
    assert!(kept >= 3, "{printed}");
    assert!(!printed.contains("expired or revoked"), "{printed}");
    // Left alone, it expires and its key goes, on every node.
    for node in 0..3 {
        wait_for(Duration::from_secs(10), "the key of the lease no longer kept alive to go", || {
            ok(cluster.port(node), &["get", "alive", "--consistency=s"]).is_empty().then_some(())
        });
    }
    assert!(ok(follower, &["lease", "timetolive", &id]).contains("already expired"));
}

/// The cells of the header row of etcdctl's `-w table`.
fn table_header(table: &str) -> Vec<String> {
    let header = table.lines().nth(1).unwrap_or_else(|| panic!("no header row: {table}"));
    header.split('|').map(str::trim).filter(|cell| !cell.is_empty()).map(str::to_owned).collect()
}

/// The sorted field names of a JSON object.
fn fields(value: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> =
        value.as_object().unwrap_or_else(|| panic!("{value}")).keys().cloned().collect();
    names.sort_unstable();
    names
}

/// The member id in etcdctl's `Member ID added to cluster CLUSTER` (and removed, ...).
fn member_of(text: &str, verb: &str) -> (u64, u64) {
    let words: Vec<&str> = text.lines().next().unwrap_or("").split_whitespace().collect();
    match words.as_slice() {
        ["Member", id, done, _, "cluster", cluster] if *done == verb => (
            u64::from_str_radix(id, 16).unwrap_or_else(|_| panic!("{text}")),
            u64::from_str_radix(cluster, 16).unwrap_or_else(|_| panic!("{text}")),
        ),
        _ => panic!("not `Member ID {verb} ... cluster ID`: {text:?}"),
    }
}

/// etcdctl's simple member list: (id, status, name, peer URLs, client URLs, learner).
fn member_rows(port: u16) -> Vec<Vec<String>> {
    ok(port, &["member", "list"])
        .lines()
        .map(|line| line.split(", ").map(str::to_owned).collect::<Vec<_>>())
        .inspect(|row| assert_eq!(row.len(), 6, "{row:?}"))
        .collect()
}

fn row_of(port: u16, id: u64) -> Option<Vec<String>> {
    member_rows(port).into_iter().find(|row| row[0] == format!("{id:x}"))
}

#[test]
fn etcdctl_lists_adds_promotes_updates_and_removes_members_and_the_added_node_joins() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let follower = cluster.port(cluster.others(leader)[0]);
    ok(cluster.port(leader), &["put", "seed", "before"]);
    let etcd = RealEtcd::start();

    // The list: mmapd's ids and addresses, every member started once the leader saw it
    // hold the log; the same on every node, and the same columns and fields as etcd's.
    let http = get(follower, "/v1/members").json();
    let cluster_id = u64::from_str_radix(http["cluster_id"].as_str().unwrap(), 16).unwrap();
    let mut expected: Vec<Vec<String>> = http["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|member| {
            let id = u64::from_str_radix(member["id"].as_str().unwrap(), 16).unwrap();
            let address = member["address"].as_str().unwrap();
            let url = format!("http://{address}");
            vec![format!("{id:x}"), "started".into(), address.into(), url.clone(), url, "false".into()]
        })
        .collect();
    expected.sort_by_key(|row| u64::from_str_radix(&row[0], 16).unwrap());
    wait_for(Duration::from_secs(10), "every node to list the three members started", || {
        (0..3).all(|node| member_rows(cluster.port(node)) == expected).then_some(())
    });
    let table = ok(follower, &["member", "list", "-w", "table"]);
    assert_eq!(table_header(&table), table_header(&ok(etcd.port, &["member", "list", "-w", "table"])));
    assert_eq!(table.lines().filter(|line| line.contains("| started |")).count(), 3, "{table}");
    let ours = json(follower, &["member", "list"]);
    let theirs = json(etcd.port, &["member", "list"]);
    assert_eq!(fields(&ours["header"]), fields(&theirs["header"]), "{ours}\n{theirs}");
    assert_eq!(fields(&ours["members"][0]), fields(&theirs["members"][0]), "{ours}\n{theirs}");
    assert_eq!(ours["header"]["cluster_id"].as_u64(), Some(cluster_id));

    // Add a learner: unstarted, with no name and no client URLs, as etcd lists one; and
    // promoting it before it has caught up is refused with etcd's error.
    let port = free_ports(1)[0];
    let address = format!("127.0.0.1:{port}");
    let added =
        ok(follower, &["member", "add", "newbie", &format!("--peer-urls=http://{address}"), "--learner"]);
    let (id, in_cluster) = member_of(&added, "added");
    assert_eq!(in_cluster, cluster_id, "{added}");
    let spare = free_ports(1)[0];
    let etcd_added =
        ok(etcd.port, &["member", "add", "x", &format!("--peer-urls=http://127.0.0.1:{spare}"), "--learner"]);
    let keys = |text: &str| -> Vec<String> {
        text.lines().filter_map(|line| line.split_once('=')).map(|(key, _)| key.to_owned()).collect()
    };
    assert_eq!(keys(&added), keys(&etcd_added), "{added}\n{etcd_added}");
    assert!(added.contains(&format!("newbie=http://{address}")), "{added}");
    assert!(added.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""), "{added}");
    let url = format!("http://{address}");
    assert_eq!(
        row_of(follower, id),
        Some(vec![format!("{id:x}"), "unstarted".into(), "".into(), url, "".into(), "true".into()])
    );
    let early = error_line(&etcdctl(follower, &["member", "promote", &format!("{id:x}")], None).unwrap_err());
    let etcd_learner = member_of(&etcd_added, "added").0;
    let etcd_early = error_line(
        &etcdctl(etcd.port, &["member", "promote", &format!("{etcd_learner:x}")], None).unwrap_err(),
    );
    assert_eq!(
        etcd_early,
        "Error: etcdserver: can only promote a learner member which is in sync with leader"
    );
    assert_eq!(early, etcd_early);

    // Start it: `--join` gives it the id the add drew; it catches up and is started.
    let data_dir = cluster.dir.path().join("newbie");
    let port_text = port.to_string();
    let join = cluster.nodes[leader].address();
    let mut args =
        vec!["--port", &port_text, "--join", &join, "--learner", "--data-dir", data_dir.to_str().unwrap()];
    args.extend(FAST_TIMINGS);
    let mut node = Daemon::new(cluster.dir.path(), port, &args);
    node.start().unwrap();
    wait_for(Duration::from_secs(20), "the new member to catch up", || {
        (get(port, "/v1/kv/seed?consistency=stale").text() == "before").then_some(())
    });
    wait_for(Duration::from_secs(20), "the new member to be listed started", || {
        row_of(follower, id).filter(|row| row[1] == "started" && row[2] == address).map(|_| ())
    });
    assert_eq!(row_of(follower, id).unwrap()[5], "true", "still a learner");
    cluster.nodes.push(node);

    // Promote it (once the leader finds it in sync): a voter, that serves etcdctl.
    let promoted = wait_for(Duration::from_secs(20), "the promotion", || {
        etcdctl(follower, &["member", "promote", &format!("{id:x}")], None).ok()
    });
    assert_eq!(member_of(&promoted, "promoted"), (id, cluster_id), "{promoted}");
    for node in 0..4 {
        wait_for(Duration::from_secs(10), "every node to list it a voter", || {
            row_of(cluster.port(node), id).filter(|row| row[5] == "false").map(|_| ())
        });
    }
    assert_eq!(ok(port, &["put", "from-newbie", "1"]).trim(), "OK");
    assert_eq!(ok(follower, &["get", "from-newbie", "--print-value-only"]), "1\n");
    let voter = error_line(&etcdctl(follower, &["member", "promote", &format!("{id:x}")], None).unwrap_err());
    assert_eq!(voter, "Error: etcdserver: can only promote a learner member");

    // Update an unstarted member's address, then remove it.
    let [ghost_port, moved_port] = free_ports(2)[..] else { unreachable!() };
    let ghost = ok(
        follower,
        &["member", "add", "ghost", &format!("--peer-urls=http://127.0.0.1:{ghost_port}"), "--learner"],
    );
    let (ghost, _) = member_of(&ghost, "added");
    let moved = format!("http://127.0.0.1:{moved_port}");
    let updated = ok(follower, &["member", "update", &format!("{ghost:x}"), &format!("--peer-urls={moved}")]);
    assert_eq!(member_of(&updated, "updated"), (ghost, cluster_id), "{updated}");
    assert_eq!(row_of(follower, ghost).unwrap()[3], moved);
    let removed = ok(cluster.port(leader), &["member", "remove", &format!("{ghost:x}")]);
    assert_eq!(member_of(&removed, "removed"), (ghost, cluster_id), "{removed}");
    assert_eq!(row_of(follower, ghost), None);

    // Remove the new member: three members again, which go on serving.
    let removed = ok(follower, &["member", "remove", &format!("{id:x}")]);
    assert_eq!(member_of(&removed, "removed"), (id, cluster_id), "{removed}");
    for node in 0..3 {
        wait_for(Duration::from_secs(10), "every node to drop it", || {
            (member_rows(cluster.port(node)).len() == 3 && row_of(cluster.port(node), id).is_none())
                .then_some(())
        });
    }
    let again = error_line(&etcdctl(follower, &["member", "remove", &format!("{id:x}")], None).unwrap_err());
    // etcd's code and message with ours after it, which etcd's client prints as it is.
    assert!(again.contains("code = NotFound desc = etcdserver: member not found (member"), "{again}");
    let two = ["member", "add", "two", "--peer-urls=http://127.0.0.1:1,http://127.0.0.1:2"];
    let refused = error_line(&etcdctl(follower, &two, None).unwrap_err());
    assert!(refused.contains("desc = etcdserver: given member URLs are invalid ("), "{refused}");
    assert!(refused.contains("exactly one address"), "{refused}");
    assert_eq!(ok(follower, &["put", "after", "3"]).trim(), "OK");
}

// ---------------------------------------------------------------- raw gRPC

use mmapd::server::etcd::proto::etcdserverpb as pb;
use prost::Message;

/// A gRPC message on the wire: uncompressed, its length, its bytes.
fn frame(message: &[u8]) -> Vec<u8> {
    let mut framed = vec![0];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// A `grpc-message` as sent: percent-encoded UTF-8.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex =
            bytes.get(at + 1..at + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[at], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                at += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// What a gRPC call answered: its status code and message, and the messages it sent.
#[derive(Debug)]
struct Answer {
    code: i32,
    message: String,
    messages: Vec<Vec<u8>>,
}

/// Sends `body` (framed messages, or anything) as one gRPC call to `path` and reads the
/// whole answer, within 30 s.
fn grpc(port: u16, path: &str, body: Vec<u8>) -> Answer {
    use http_body_util::BodyExt;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http::<http_body_util::Full<bytes::Bytes>>();
        let request = hyper::Request::post(format!("http://127.0.0.1:{port}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let answered = async {
            let response = client.request(request).await.expect("an HTTP/2 answer");
            let headers = response.headers().clone();
            let collected = response.into_body().collect().await.expect("the whole answer");
            let trailers = collected.trailers().cloned().unwrap_or_default();
            let field = |name: &str| {
                trailers.get(name).or(headers.get(name)).map(|v| v.to_str().unwrap_or("").to_owned())
            };
            let code = field("grpc-status").and_then(|code| code.parse().ok()).unwrap_or(-1);
            let message = percent_decoded(&field("grpc-message").unwrap_or_default());
            let mut data = collected.to_bytes().to_vec();
            let mut messages = Vec::new();
            while data.len() >= 5 {
                let length = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
                assert!(data.len() >= 5 + length, "a truncated answer");
                messages.push(data[5..5 + length].to_vec());
                data.drain(..5 + length);
            }
            Answer { code, message, messages }
        };
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(30), answered).await;
        answer.unwrap_or_else(|_| panic!("no answer to {path} on {port} within {:?}", started.elapsed()))
    })
}

/// One call of a unary method with `request`: its answer.
fn call<M: Message>(port: u16, path: &str, request: &M) -> Answer {
    grpc(port, path, frame(&request.encode_to_vec()))
}

fn decoded<R: Message + Default>(answer: &Answer) -> R {
    assert_eq!(answer.code, 0, "{answer:?}");
    R::decode(answer.messages.first().expect("a message").as_slice()).expect("a message that decodes")
}

/// The hostile calls whose answers etcd's clients act on: the same code from mmapd as
/// from etcd (the message too where etcd's clients match it).
fn hostile_codes(port: u16) -> Vec<(String, i32)> {
    const GRANT: &str = "/etcdserverpb.Lease/LeaseGrant";
    let mut codes = Vec::new();
    let mut note =
        |what: &str, answer: &Answer| codes.push((format!("{what}: {}", answer.code), answer.code));
    let negative = call(port, GRANT, &pb::LeaseGrantRequest { ttl: -5, id: 0 });
    let granted: pb::LeaseGrantResponse = decoded(&negative);
    assert!(granted.ttl >= 1 && granted.id > 0, "{granted:?}");
    note("a negative TTL", &negative);
    let huge = call(port, GRANT, &pb::LeaseGrantRequest { ttl: i64::MAX, id: 0 });
    assert_eq!(huge.message, "etcdserver: too large lease TTL", "{huge:?}");
    note("a huge TTL", &huge);
    let chosen = pb::LeaseGrantRequest { ttl: 30, id: 0x77 };
    let first: pb::LeaseGrantResponse = decoded(&call(port, GRANT, &chosen));
    assert_eq!(first.id, 0x77);
    let twice = call(port, GRANT, &chosen);
    assert_eq!(twice.message, "etcdserver: lease already exists", "{twice:?}");
    note("an id in use", &twice);
    let minus_one = pb::LeaseGrantRequest { ttl: 30, id: -1 };
    assert_eq!(decoded::<pb::LeaseGrantResponse>(&call(port, GRANT, &minus_one)).id, -1);
    let left: pb::LeaseTimeToLiveResponse = decoded(&call(
        port,
        "/etcdserverpb.Lease/LeaseTimeToLive",
        &pb::LeaseTimeToLiveRequest { id: -1, keys: true },
    ));
    assert_eq!((left.id, left.granted_ttl), (-1, 30), "{left:?}");
    for id in [0x7fff_0000_1234, 0, -1] {
        let revoked = call(port, "/etcdserverpb.Lease/LeaseRevoke", &pb::LeaseRevokeRequest { id });
        note(&format!("revoke {id}"), &revoked);
        if revoked.code != 0 {
            assert_eq!(revoked.message, "etcdserver: requested lease not found", "{revoked:?}");
        }
    }
    for id in [0x7fff_0000_1234, 0] {
        let gone: pb::LeaseTimeToLiveResponse = decoded(&call(
            port,
            "/etcdserverpb.Lease/LeaseTimeToLive",
            &pb::LeaseTimeToLiveRequest { id, keys: true },
        ));
        assert_eq!((gone.ttl, gone.granted_ttl), (-1, 0), "{gone:?}");
    }
    // Many keepalives of a lease that does not exist, on one stream: each answered 0.
    let many: Vec<u8> = (0..100)
        .flat_map(|_| frame(&pb::LeaseKeepAliveRequest { id: 0x7fff_0000_1234 }.encode_to_vec()))
        .collect();
    let kept = grpc(port, "/etcdserverpb.Lease/LeaseKeepAlive", many);
    assert_eq!(kept.messages.len(), 100, "{:?}", (kept.code, &kept.message));
    assert!(kept.messages.iter().all(|m| pb::LeaseKeepAliveResponse::decode(m.as_slice()).unwrap().ttl == 0));
    note("100 keepalives of an unknown lease", &kept);
    const CLUSTER: &str = "/etcdserverpb.Cluster/";
    note(
        "remove an unknown member",
        &call(port, &format!("{CLUSTER}MemberRemove"), &pb::MemberRemoveRequest { id: 0xdead }),
    );
    note(
        "promote an unknown member",
        &call(port, &format!("{CLUSTER}MemberPromote"), &pb::MemberPromoteRequest { id: 0xdead }),
    );
    let update = pb::MemberUpdateRequest { id: 0xdead, peer_ur_ls: vec!["http://127.0.0.1:1".into()] };
    note("update an unknown member", &call(port, &format!("{CLUSTER}MemberUpdate"), &update));
    for urls in [vec!["not a url".to_owned()], vec![]] {
        let add = pb::MemberAddRequest { peer_ur_ls: urls.clone(), is_learner: true };
        let refused = call(port, &format!("{CLUSTER}MemberAdd"), &add);
        assert!(refused.message.starts_with("etcdserver: given member URLs are invalid"), "{refused:?}");
        note(&format!("add at {urls:?}"), &refused);
    }
    note("an unknown method", &grpc(port, "/etcdserverpb.Lease/LeaseNothing", frame(&[])));
    codes
}

/// Garbage on the lease streams and calls: every one ends with an error status, none
/// hangs or takes the node down.
fn garbage_answers(port: u16) {
    let valid = frame(&pb::LeaseKeepAliveRequest { id: 0x7fff_0000_1234 }.encode_to_vec());
    let mut then_garbage = valid.clone();
    then_garbage.extend(frame(&[0xff, 0xff, 0xff]));
    let mut huge_length = valid.clone();
    huge_length.extend([0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
    let mut compressed = valid.clone();
    compressed.extend([1, 0, 0, 0, 2, 8, 1]);
    let mut truncated = valid.clone();
    truncated.extend([0, 0, 0, 0, 10, 8]);
    for (what, body) in [
        ("garbage after a keepalive", then_garbage),
        ("a length of 4 GiB", huge_length),
        ("a compressed message", compressed),
        ("a truncated message", truncated),
    ] {
        let answer = grpc(port, "/etcdserverpb.Lease/LeaseKeepAlive", body);
        assert_ne!(answer.code, 0, "{what}: {answer:?}");
        assert!(answer.code > 0, "{what}: no grpc-status: {answer:?}");
        assert!(answer.messages.len() <= 1, "{what}: {answer:?}");
    }
    let garbage = grpc(port, "/etcdserverpb.Lease/LeaseGrant", frame(&[0xff; 9]));
    assert!(garbage.code > 0, "{garbage:?}");
    let garbage = grpc(port, "/etcdserverpb.Cluster/MemberAdd", b"not a frame".to_vec());
    assert!(garbage.code > 0, "{garbage:?}");
}

#[test]
fn hostile_lease_and_member_calls_get_etcds_codes_and_the_nodes_keep_serving() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let follower = cluster.port(cluster.others(leader)[0]);
    let etcd = RealEtcd::start();

    let ours = hostile_codes(follower);
    let theirs = hostile_codes(etcd.port);
    let labels = |codes: &[(String, i32)]| codes.iter().map(|(label, _)| label.clone()).collect::<Vec<_>>();
    assert_eq!(labels(&ours), labels(&theirs), "mmapd (left) and etcd (right) answer with other codes");
    garbage_answers(follower);
    garbage_answers(etcd.port);

    for node in 0..3 {
        let port = cluster.port(node);
        assert_eq!(ok(port, &["put", &format!("after-{node}"), "v"]).trim(), "OK", "node {node}");
        assert_eq!(ok(port, &["get", &format!("after-{node}"), "--print-value-only"]), "v\n");
        assert!(ok(port, &["lease", "grant", "10"]).contains("granted with TTL(10s)"));
        assert_eq!(get(port, "/health").status, 200);
    }
}
