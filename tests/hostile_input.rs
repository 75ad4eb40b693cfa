//! Hostile and malformed input against a real node: every one is refused with the
//! right status (or the connection is dropped), and afterwards the node still serves
//! and its earlier data is intact.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;
use mmapd::kv::Command;
use mmapd::raft::{Message, MessageBody};
use mmapd::transport::codec::encode_batch;

const SECRET: &str = "s3cret-of-the-cluster";
const MAX_VALUE_BYTES: usize = 1024;

/// A one-node cluster with a cluster secret and a 1 KiB value limit, holding seed keys.
fn seeded_node() -> Single {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let limit = MAX_VALUE_BYTES.to_string();
    let single =
        Single::start(&["--cluster-secret-file", secret.to_str().unwrap(), "--max-value-bytes", &limit]);
    // The secret file is read at start; its directory may go now.
    drop(dir);
    for i in 0..5 {
        assert_eq!(put(single.port(), &format!("/v1/kv/seed-{i}"), format!("s{i}").as_bytes()).status, 201);
    }
    single
}

/// The node answers, is healthy, and the seed keys are there with their values.
fn assert_alive_and_intact(single: &Single) {
    let port = single.port();
    assert_eq!(get(port, "/health").status, 200, "node unhealthy");
    for i in 0..5 {
        let response = get(port, &format!("/v1/kv/seed-{i}"));
        assert_eq!((response.status, response.text()), (200, format!("s{i}")), "seed-{i}");
    }
    assert_eq!(put(port, "/v1/kv/still-writable", b"yes").status / 100, 2);
}

/// Writes `bytes` on a fresh connection and returns whatever comes back before the
/// server closes it (nothing if it resets it).
fn raw_exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

/// The value of an unlabelled gauge or counter in `/metrics`.
fn metric(port: u16, name: &str) -> u64 {
    let text = get(port, "/metrics").text();
    let line = text.lines().find(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ')));
    let line = line.unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"));
    line[name.len() + 1..].parse().unwrap_or_else(|e| panic!("{line}: {e}"))
}

fn status_line(answer: &[u8]) -> String {
    String::from_utf8_lossy(answer).lines().next().unwrap_or("").to_owned()
}

fn assert_refused(answer: &[u8], allowed: &[u16], what: &str) {
    let line = status_line(answer);
    let status = line.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok());
    assert!(
        answer.is_empty() || status.is_some_and(|s| allowed.contains(&s)),
        "{what}: expected the connection closed or one of {allowed:?}, got {line:?}"
    );
}

#[test]
fn oversized_values_and_keys_are_refused_with_413() {
    let single = seeded_node();
    let port = single.port();
    let at_limit = vec![b'v'; MAX_VALUE_BYTES];
    let over_limit = vec![b'v'; MAX_VALUE_BYTES + 1];
    assert_eq!(put(port, "/v1/kv/big", &at_limit).status, 201, "a value at the limit is fine");
    assert_eq!(put(port, "/v1/kv/big", &over_limit).status, 413);
    let form = format!("/set/big?value={}", "v".repeat(MAX_VALUE_BYTES + 1));
    assert_eq!(request(port, "POST", &form, &[], b"").unwrap().status, 413);
    let body = format!("value={}", "v".repeat(MAX_VALUE_BYTES + 1));
    assert_eq!(request(port, "POST", "/set/big", &[], body.as_bytes()).unwrap().status, 413);
    assert_eq!(get(port, "/v1/kv/big").body, at_limit, "the refused writes changed nothing");

    let key_at_limit = "k".repeat(4096);
    let key_over_limit = "k".repeat(4097);
    assert_eq!(put(port, &format!("/v1/kv/{key_at_limit}"), b"x").status, 201);
    assert_eq!(put(port, &format!("/v1/kv/{key_over_limit}"), b"x").status, 413);
    assert_eq!(get(port, &format!("/v1/kv/{key_over_limit}")).status, 413);
    assert_eq!(get(port, &format!("/get/{key_over_limit}")).status, 413);
    assert_eq!(
        request(port, "POST", &format!("/set/{key_over_limit}?value=x"), &[], b"").unwrap().status,
        413
    );
    // The limit applies after percent-decoding: 4096 escapes are 4096 bytes.
    assert_eq!(get(port, &format!("/v1/kv/{}", "%6b".repeat(4096))).text(), "x");
    assert_eq!(get(port, &format!("/v1/kv/{}", "%6b".repeat(4097))).status, 413);
    assert_alive_and_intact(&single);
}

#[test]
fn malformed_keys_and_unknown_methods_are_refused_with_400_and_405() {
    let single = seeded_node();
    let port = single.port();
    for path in ["/v1/kv/%zz", "/v1/kv/%2", "/v1/kv/a%", "/v1/kv/%ff%fe", "/get/%zz"] {
        assert_eq!(get(port, path).status, 400, "GET {path}");
    }
    assert_eq!(put(port, "/v1/kv/%zz", b"x").status, 400);
    // Empty keys, through every route.
    assert_eq!(put(port, "/v1/kv/", b"x").status, 400);
    assert_eq!(request(port, "DELETE", "/v1/kv/", &[], b"").unwrap().status, 400);
    assert_eq!(request(port, "POST", "/set/?value=x", &[], b"").unwrap().status, 400);
    assert_eq!(get(port, "/get/").status, 400);
    // Methods.
    let response = request(port, "PATCH", "/v1/kv/seed-0", &[], b"x").unwrap();
    assert_eq!(response.status, 405);
    assert!(response.header("Allow").is_some_and(|a| a.contains("PUT")), "{:?}", response.headers);
    assert_eq!(request(port, "DELETE", "/get/seed-0", &[], b"").unwrap().status, 405);
    assert_eq!(request(port, "GET", "/set/seed-0?value=x", &[], b"").unwrap().status, 405);
    assert_eq!(request(port, "POST", "/status", &[], b"").unwrap().status, 405);
    assert_eq!(request(port, "GET", "/raft/messages", &[], b"").unwrap().status, 405);
    assert_eq!(request(port, "FOO", "/v1/kv/seed-0", &[], b"").unwrap().status, 405);
    // Bad fields and headers.
    assert_eq!(request(port, "POST", "/set/k", &[], b"other=1").unwrap().status, 400, "no value field");
    assert_eq!(request(port, "POST", "/set/k", &[], b"value=%zz").unwrap().status, 400);
    assert_eq!(get(port, "/v1/kv/seed-0?consistency=sometimes").status, 400);
    assert_eq!(get(port, "/v1/kv?limit=0").status, 400);
    assert_eq!(request(port, "PUT", "/v1/kv/seed-0", &[("If-Match", "nope")], b"x").unwrap().status, 400);
    assert_eq!(get(port, "/no/such/route").status, 404);
    assert_alive_and_intact(&single);
}

#[test]
fn garbage_bytes_on_the_tcp_port_are_refused_and_the_node_lives_on() {
    let single = seeded_node();
    let port = single.port();
    let mut noise = vec![0u8; 64 * 1024];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for byte in &mut noise {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let huge_header =
        format!("GET /get/seed-0 HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("binary noise", noise),
        ("NUL bytes and a blank line", b"\0\0\0\x01\xff\xfe\r\n\r\n".to_vec()),
        ("a request line without a version", b"GET /get/seed-0\r\n\r\n".to_vec()),
        ("a header without a colon", b"GET /get/seed-0 HTTP/1.1\r\nno colon here\r\n\r\n".to_vec()),
        ("a megabyte of header", huge_header.into_bytes()),
        ("a bad Content-Length", b"PUT /v1/kv/x HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec()),
        ("a bad chunk", b"PUT /v1/kv/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec()),
    ];
    for (what, bytes) in cases {
        let answer = raw_exchange(port, &bytes);
        assert_refused(&answer, &[400, 413, 431], what);
        assert_eq!(get(port, "/get/seed-0").text(), "s0", "after {what}");
    }
    assert_alive_and_intact(&single);
}

#[test]
fn huge_content_length_with_a_tiny_body_is_refused_at_once() {
    let single = seeded_node();
    let port = single.port();
    for path in ["/v1/kv/x", "/set/x", "/raft/messages", "/raft/propose", "/raft/propose-batch"] {
        let started = Instant::now();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n{}: {SECRET}\r\n\r\ntiny",
            "X-Mmapd-Cluster-Secret"
        );
        let answer = raw_exchange(port, head.as_bytes());
        assert_eq!(status_line(&answer), "HTTP/1.1 413 Payload Too Large", "{path}");
        assert!(started.elapsed() < Duration::from_secs(2), "{path}: answered after {:?}", started.elapsed());
    }
    let overflow = b"PUT /v1/kv/x HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\nx";
    assert_refused(&raw_exchange(port, overflow), &[400], "a Content-Length beyond u64");
    assert_alive_and_intact(&single);
}

#[test]
fn slow_partial_requests_do_not_stop_the_node_serving_others() {
    let single = seeded_node();
    let port = single.port();
    let mut slow = Vec::new();
    for i in 0..40 {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let partial: &[u8] = if i % 2 == 0 {
            b"GET /get/seed-0 HTTP/1.1\r\nHost: x\r\nX-Slow: aaaa"
        } else {
            b"PUT /v1/kv/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly a few bytes"
        };
        stream.write_all(partial).unwrap();
        slow.push(stream);
    }
    let started = Instant::now();
    for i in 0..20 {
        let response = get(port, &format!("/v1/kv/seed-{}", i % 5));
        assert_eq!(response.status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(3), "20 requests took {:?}", started.elapsed());
    assert_alive_and_intact(&single);
    // The half-sent body was never applied.
    assert_eq!(get(port, "/v1/kv/slow").status, 404);
    drop(slow);
    assert_alive_and_intact(&single);
}

#[test]
fn a_body_that_stops_arriving_gets_408_and_nothing_is_written() {
    let single = Single::start(&["--body-timeout-ms", "300"]);
    let port = single.port();
    for (path, form) in [("/v1/kv/half", false), ("/set/half", true)] {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = if form {
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nvalue=only")
        } else {
            format!("PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly a few bytes")
        };
        stream.write_all(head.as_bytes()).unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        assert_eq!(
            status_line(&answer),
            "HTTP/1.1 408 Request Timeout",
            "{path}: {}",
            String::from_utf8_lossy(&answer)
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{path}: answered after {:?}", started.elapsed());
    }
    assert_eq!(get(port, "/v1/kv/half").status, 404);
    assert_eq!(get(port, "/get/half").status, 404);
}

#[test]
fn peer_route_refuses_garbage_and_truncated_batches_with_400() {
    let single = seeded_node();
    let port = single.port();
    let secret = [("X-Mmapd-Cluster-Secret", SECRET)];
    let node_id =
        u64::from_str_radix(single.node.status().unwrap()["node_id"].as_str().unwrap(), 16).unwrap();
    // A well-formed batch: a stale (term 0) heartbeat answer from a node nobody knows.
    let message =
        Message { from: 4242, to: node_id, term: 0, body: MessageBody::HeartbeatResponse { context: 7 } };
    let mut batch = Vec::new();
    encode_batch(&[message.clone(), message], &mut batch);
    let response = request(port, "POST", "/raft/messages", &secret, &batch).unwrap();
    assert_eq!(response.status, 204, "the untruncated batch is accepted: {}", response.text());

    for cut in [1, 5, batch.len() / 2, batch.len() - 1] {
        let response = request(port, "POST", "/raft/messages", &secret, &batch[..cut]).unwrap();
        assert_eq!(response.status, 400, "batch cut to {cut} of {} bytes", batch.len());
    }
    let mut trailing = batch.clone();
    trailing.push(0);
    assert_eq!(request(port, "POST", "/raft/messages", &secret, &trailing).unwrap().status, 400);
    for garbage in [&b""[..], b"garbage", &[0xff; 64]] {
        assert_eq!(request(port, "POST", "/raft/messages", &secret, garbage).unwrap().status, 400);
        assert_eq!(request(port, "POST", "/raft/propose", &secret, garbage).unwrap().status, 400);
        assert_eq!(request(port, "POST", "/raft/propose-batch", &secret, garbage).unwrap().status, 400);
    }
    assert_alive_and_intact(&single);
}

/// Opens a peer stream by hand: the upgrade request, then the server's 101 head.
fn open_peer_stream(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "POST /raft/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: upgrade\r\n\
         Upgrade: mmapd-peer/1\r\nX-Mmapd-Cluster-Secret: {SECRET}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8];
    while !answer.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "the server closed during the upgrade: {answer:?}");
        answer.push(byte[0]);
    }
    assert_eq!(status_line(&answer), "HTTP/1.1 101 Switching Protocols");
    stream
}

/// Reads until the server closes the connection (EOF or reset); false on timeout.
fn server_closes(mut stream: TcpStream) -> bool {
    let mut sink = [0u8; 64];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error)
                if error.kind() == std::io::ErrorKind::WouldBlock
                    || error.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn peer_stream_drops_malformed_frames_and_the_node_lives_on() {
    let single = seeded_node();
    let port = single.port();
    let node_id =
        u64::from_str_radix(single.node.status().unwrap()["node_id"].as_str().unwrap(), 16).unwrap();
    // Without the Upgrade header the route refuses with 400.
    let secret = [("X-Mmapd-Cluster-Secret", SECRET)];
    assert_eq!(request(port, "POST", "/raft/stream", &secret, b"").unwrap().status, 400);

    let message =
        Message { from: 4242, to: node_id, term: 0, body: MessageBody::HeartbeatResponse { context: 7 } };
    let mut batch = Vec::new();
    encode_batch(&[message], &mut batch);
    let mut good = (batch.len() as u32).to_le_bytes().to_vec();
    good.extend_from_slice(&batch);
    let mut bad_version = good.clone();
    bad_version[4] = 99;
    let mut short_length = good.clone();
    short_length[0] -= 1; // the frame ends one byte before its batch does
    let cases: [(&str, Vec<u8>); 4] = [
        ("bad batch version", [good.clone(), bad_version].concat()),
        ("frame shorter than its batch", short_length),
        ("length beyond the limit", [good.clone(), u32::MAX.to_le_bytes().to_vec()].concat()),
        ("text instead of frames", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
    ];
    for (what, bytes) in cases {
        let mut stream = open_peer_stream(port);
        stream.write_all(&bytes).unwrap();
        assert!(server_closes(stream), "{what}: the server kept the stream open");
    }
    // Well-formed frames and keepalives keep it open.
    let mut stream = open_peer_stream(port);
    stream.write_all(&[good.clone(), 0u32.to_le_bytes().to_vec(), good].concat()).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    assert!(!server_closes(stream), "a good stream was closed");
    assert_alive_and_intact(&single);
}

/// One connection speaks for one node: a batch or a stream whose messages claim
/// different senders is refused (400, or the stream closed), and the node lives on.
#[test]
fn a_peer_connection_whose_messages_claim_different_senders_is_refused() {
    let single = seeded_node();
    let port = single.port();
    let node_id =
        u64::from_str_radix(single.node.status().unwrap()["node_id"].as_str().unwrap(), 16).unwrap();
    let from =
        |from| Message { from, to: node_id, term: 0, body: MessageBody::HeartbeatResponse { context: 7 } };
    let secret = [("X-Mmapd-Cluster-Secret", SECRET)];
    let mut mixed = Vec::new();
    encode_batch(&[from(4242), from(4243)], &mut mixed);
    let response = request(port, "POST", "/raft/messages", &secret, &mixed).unwrap();
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(response.text().contains("speaks for node 4242"), "{}", response.text());

    let frame = |message: Message| {
        let mut batch = Vec::new();
        encode_batch(&[message], &mut batch);
        [(batch.len() as u32).to_le_bytes().to_vec(), batch].concat()
    };
    let mut stream = open_peer_stream(port);
    stream.write_all(&[frame(from(4242)), frame(from(4242))].concat()).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut same = stream.try_clone().unwrap();
    assert!(!server_closes(stream), "a stream speaking for one node was closed");
    same.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    same.write_all(&frame(from(4243))).unwrap();
    assert!(server_closes(same), "a stream that changed its sender was kept open");
    assert_alive_and_intact(&single);
}

#[test]
fn peer_routes_refuse_a_missing_or_wrong_cluster_secret_with_401() {
    let single = seeded_node();
    let port = single.port();
    let wrong = [("X-Mmapd-Cluster-Secret", "s3cret-of-the-clusteR")];
    let short = [("X-Mmapd-Cluster-Secret", "s3cret")];
    for path in [
        "/raft/messages",
        "/raft/propose",
        "/raft/propose-batch",
        "/raft/stream",
        "/raft/join",
        "/raft/members",
    ] {
        assert_eq!(request(port, "POST", path, &[], b"garbage").unwrap().status, 401, "{path} without");
        assert_eq!(request(port, "POST", path, &wrong, b"garbage").unwrap().status, 401, "{path} wrong");
        assert_eq!(request(port, "POST", path, &short, b"garbage").unwrap().status, 401, "{path} short");
    }
    assert_alive_and_intact(&single);
}

/// The membership routes a new node talks to, and the identity headers on every peer
/// request, refuse what is malformed with a 4xx; the node lives on, unchanged.
#[test]
fn malformed_joins_probes_and_identity_headers_are_refused() {
    let single = seeded_node();
    let port = single.port();
    let secret = [("X-Mmapd-Cluster-Secret", SECRET)];
    let members_before = get(port, "/v1/members").text();
    for body in [
        &b"garbage"[..],
        b"{}",
        b"{\"address\": 7}",
        b"{\"address\": \"no port\"}",
        b"[1,2]",
        b"{\"address\": \"127.0.0.1:9\", \"learner\": \"yes\"}",
    ] {
        let answer = request(port, "POST", "/raft/join", &secret, body).unwrap();
        assert_eq!(answer.status, 400, "{:?}: {}", String::from_utf8_lossy(body), answer.text());
    }
    for query in ["", "?asker=", "?asker=xyz", "?asker=1234567890abcdef0", "?other=1"] {
        let answer = request(port, "GET", &format!("/raft/cluster{query}"), &secret, b"").unwrap();
        assert_eq!(answer.status, 400, "{query}: {}", answer.text());
    }
    let probe = request(port, "GET", "/raft/cluster?asker=00000000000000ff", &secret, b"").unwrap();
    assert_eq!(probe.status, 200);
    assert_eq!(probe.json()["state"], "not_member");
    for (name, value) in [
        ("X-Mmapd-Cluster-Id", "not hex at all!"),
        ("X-Mmapd-Cluster-Id", "12"),
        ("X-Mmapd-Node-Id", "zzzzzzzzzzzzzzzz"),
    ] {
        let headers = [secret[0], (name, value)];
        let answer = request(port, "POST", "/raft/messages", &headers, b"").unwrap();
        assert_eq!(answer.status, 403, "{name}: {value}: {}", answer.text());
    }
    for address in ["not an address", "127.0.0.1", "host:99999", "/raft:1"] {
        let headers = [secret[0], ("X-Mmapd-Node-Id", "00000000000000ee"), ("X-Mmapd-Node-Address", address)];
        let answer = request(port, "POST", "/raft/messages", &headers, b"").unwrap();
        assert_eq!(answer.status, 403, "address {address:?}: {}", answer.text());
    }
    // A forger naming ids this node does not know, each with an address, gets a sender
    // for a few of them at most (`MAX_LEARNED_PEERS`), never one per request.
    for id in 0..40u64 {
        let node_id = format!("{:016x}", 0xf000 + id);
        let headers =
            [secret[0], ("X-Mmapd-Node-Id", node_id.as_str()), ("X-Mmapd-Node-Address", "127.0.0.1:9")];
        let answer = request(port, "POST", "/raft/messages", &headers, b"").unwrap();
        assert!(answer.status < 500, "{}", answer.text());
    }
    let learned = single.node.log_text().matches("member list does not name yet").count();
    assert!((1..=8).contains(&learned), "{learned} senders learned from 40 forged ids");
    assert_eq!(get(port, "/v1/members").text(), members_before, "a refused request changed the members");
    assert_alive_and_intact(&single);
}

#[test]
fn garbage_on_the_admin_socket_is_refused_and_the_node_lives_on() {
    let single = seeded_node();
    let socket = single.admin_socket();
    for bytes in [
        &b"\0\xff\xfe garbage\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"POST /import HTTP/1.1\r\nConnection: close\r\nContent-Length: 5\r\n\r\n{\"a\":",
    ] {
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = stream.write_all(bytes);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        assert_refused(&answer, &[400, 404, 405], &format!("{:?}", String::from_utf8_lossy(bytes)));
    }
    let output = admin(&["--socket", socket.to_str().unwrap(), "status"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_alive_and_intact(&single);
}

#[test]
fn forwarded_writes_get_the_same_key_and_value_limits_as_the_public_api() {
    let single = seeded_node();
    let port = single.port();
    let secret = [("X-Mmapd-Cluster-Secret", SECRET)];
    let keys_before = metric(port, "mmapd_keys");
    let cases: [(&str, Command, u16); 6] = [
        ("an empty key", Command::put("", "x"), 400),
        ("a 5,000-byte key", Command::put("k".repeat(5000), "x"), 413),
        ("a key that is not UTF-8", Command::put(vec![b'k', 0xff, 0xfe], "x"), 400),
        ("a value over the limit", Command::put("big", vec![b'v'; MAX_VALUE_BYTES + 1]), 413),
        ("a delete of the empty key", Command::delete(""), 400),
        (
            "an import with one pair that is not UTF-8",
            Command::Import { pairs: vec![("fine".into(), "x".into()), (vec![0xc3].into(), "x".into())] },
            400,
        ),
    ];
    for (what, command, status) in cases {
        let response = request(port, "POST", "/raft/propose", &secret, &command.encode()).unwrap();
        assert_eq!(response.status, status, "{what}: {}", response.text());
    }
    assert_eq!(metric(port, "mmapd_keys"), keys_before, "a refused forwarded write was stored");
    assert_eq!(get(port, "/v1/kv/fine").status, 404, "a refused import stored a prefix");
    let log = single.node.log_text();
    assert!(
        log.lines().any(|line| line.contains("forwarded write refused") && line.contains("127.0.0.1:")),
        "refusals are not logged with the sender's address:\n{log}"
    );
    // A forwarded write within the limits still applies.
    let ok =
        request(port, "POST", "/raft/propose", &secret, &Command::put("forwarded", "ok").encode()).unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(get(port, "/v1/kv/forwarded").text(), "ok");
    assert_alive_and_intact(&single);
}

#[test]
fn a_cluster_secret_that_is_not_a_header_value_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("random-secret");
    // As from `head -c 32 /dev/urandom`: control bytes and bytes above 0x7e.
    std::fs::write(&secret, [0x8f, 0x00, 0x41, 0x0a, 0x42, 0x7f, 0xe2, 0x13]).unwrap();
    let port = free_ports(1)[0].to_string();
    let data_dir = dir.path().join("data");
    let args = ["--port", &port, "--data-dir", data_dir.to_str().unwrap()];
    let mut node = Daemon::new(dir.path(), port.parse().unwrap(), &args)
        .env("MMAPD_CLUSTER_SECRET_FILE", secret.as_os_str());
    node.spawn();
    let status = node.wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "mmapd started with a secret no header can carry");
    let log = node.log_text();
    assert!(
        log.contains(secret.to_str().unwrap()) && log.contains("header"),
        "the error does not name the file: {log}"
    );
}

#[test]
fn writes_past_the_quota_get_507_quota_and_deletes_make_room_once_the_history_is_compacted() {
    // Each key below costs 2 + 1000 bytes plus 96 of overhead in the map, and its put
    // event in the change history 2 + 1000 plus 128: three fit in 6700.
    let single = Single::start(&["--quota-bytes", "6700"]);
    let port = single.port();
    let value = "v".repeat(1000);
    for i in 0..3 {
        assert_eq!(put(port, &format!("/v1/kv/k{i}"), value.as_bytes()).status, 201, "k{i}");
    }
    assert_eq!(metric(port, "mmapd_quota_bytes"), 6700);
    assert_eq!(metric(port, "mmapd_kv_data_bytes"), 3 * (2 + 1000 + 96) + 3 * (2 + 1000 + 128));

    let refused = put(port, "/v1/kv/k3", value.as_bytes());
    assert_eq!(refused.status, 507, "{}", refused.text());
    assert_eq!(refused.json()["code"], "quota");
    assert!(refused.json()["error"].as_str().unwrap().contains("quota of 6700 bytes"), "{}", refused.text());
    let form = request(port, "POST", "/set/k3", &[], format!("value={value}").as_bytes()).unwrap();
    assert_eq!(form.status, 507, "the original's /set: {}", form.text());
    assert!(form.text().contains("quota"), "{}", form.text());
    // The leader's side of a forwarded write refuses it too.
    let forwarded =
        request(port, "POST", "/raft/propose", &[], &Command::put("k3", value.clone()).encode()).unwrap();
    assert_eq!(
        (forwarded.status, forwarded.json()["code"].as_str()),
        (507, Some("quota")),
        "{}",
        forwarded.text()
    );
    assert_eq!(get(port, "/v1/kv/k3").status, 404, "a refused write was stored");
    // A write that does not grow the map is not refused (its history event is not
    // counted against the quota).
    assert_eq!(put(port, "/v1/kv/k0", b"short").status, 200);

    let deleted = request(port, "DELETE", "/v1/kv/k1", &[], b"").unwrap();
    assert_eq!(deleted.status, 200, "deletes work past the quota: {}", deleted.text());
    // The delete's event holds the value it removed: room comes once the history is
    // compacted (by the leader past --history-bytes, or by hand).
    assert_eq!(put(port, "/v1/kv/k3", value.as_bytes()).status, 507, "the history still holds k1's value");
    let revision = deleted.json()["revision"].as_u64().unwrap();
    let compacted =
        request(port, "POST", "/v1/compact", &[], format!("{{\"revision\":{revision}}}").as_bytes()).unwrap();
    assert_eq!(
        (compacted.status, compacted.json()["compacted"].as_bool()),
        (200, Some(true)),
        "{}",
        compacted.text()
    );
    assert_eq!(
        put(port, "/v1/kv/k3", value.as_bytes()).status,
        201,
        "the delete and the compaction made room"
    );
    assert_eq!(metric(port, "mmapd_kv_data_bytes"), (2 + 5 + 96) + 2 * (2 + 1000 + 96) + (2 + 1000 + 128));
}

/// `field=<number>` in a log line (tracing's format, with or without colours).
fn log_field(line: &str, field: &str) -> u64 {
    let clean: String = strip_ansi(line);
    let start =
        clean.find(&format!("{field}=")).unwrap_or_else(|| panic!("no {field} in {clean}")) + field.len() + 1;
    clean[start..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn a_connection_flood_past_the_descriptor_limit_waits_while_snapshots_and_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let port_text = port.to_string();
    let data_dir = dir.path().join("data");
    let mut args = vec!["--port", &port_text, "--data-dir", data_dir.to_str().unwrap()];
    args.extend(FAST_TIMINGS);
    // A soft limit below the hard one, as under a login shell: the node raises it.
    let mut node = Daemon::new(dir.path(), port, &args).nofile_limit(200, 320);
    node.start().unwrap();
    wait_for(Duration::from_secs(5), "the node to lead", || {
        (node.status()?["state"] == "leader").then_some(())
    });
    let log = strip_ansi(&node.log_text());
    let line = log
        .lines()
        .find(|line| line.contains("connection limit derived"))
        .expect("no connection limit logged");
    let descriptor_limit = log_field(line, "descriptor_limit") as usize;
    assert_eq!(descriptor_limit, 320, "the soft limit was not raised to the hard: {line}");
    let limit = log_field(line, "client_connections") as usize;
    assert!((32..descriptor_limit).contains(&limit), "{line}");
    for i in 0..20 {
        assert_eq!(put(port, &format!("/v1/kv/before-{i}"), b"x").status, 201);
    }

    // More idle connections than the node has descriptors: it serves `limit` of them,
    // and the kernel queues the rest (the listen backlog is 1024).
    let flood: Vec<TcpStream> = (0..descriptor_limit + 100)
        .map(|i| TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // A snapshot (a temporary file, fsync, rename, the directory's fsync) and the admin
    // socket still have descriptors, at once: not only once hyper's 10 s header timeout
    // has closed idle connections.
    let socket = data_dir.join("admin.sock");
    let snapshot = admin(&["--socket", socket.to_str().unwrap(), "--timeout", "5", "snapshot"]);
    assert!(
        snapshot.status.success(),
        "snapshot during the flood: {}",
        String::from_utf8_lossy(&snapshot.stderr)
    );
    let status = admin(&["--socket", socket.to_str().unwrap(), "--timeout", "5", "status"]);
    assert!(status.status.success(), "status during the flood: {}", String::from_utf8_lossy(&status.stderr));

    drop(flood);
    wait_for(Duration::from_secs(10), "a write after the flood", || {
        (request(port, "PUT", "/v1/kv/after", &[], b"yes").ok()?.status == 201).then_some(())
    });
    assert_eq!(get(port, "/v1/kv/before-7").text(), "x");
    assert!(node.is_running());
    let log = node.log_text();
    assert!(!log.contains("Too many open files"), "the node ran out of descriptors:\n{log}");
}

#[test]
fn a_descriptor_limit_too_low_for_the_reserve_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let port_text = port.to_string();
    let data_dir = dir.path().join("data");
    let args = ["--port", &port_text, "--data-dir", data_dir.to_str().unwrap()];
    let mut node = Daemon::new(dir.path(), port, &args).nofile_limit(150, 150);
    node.spawn();
    let status = node.wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "mmapd started with 150 descriptors");
    let log = node.log_text();
    assert!(log.contains("RLIMIT_NOFILE") && log.contains("150"), "no clear error: {log}");
}

#[test]
fn the_unit_sets_a_descriptor_limit_that_leaves_the_full_connection_cap() {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/mmapd@.service")).unwrap();
    let values: Vec<&str> = unit.lines().filter_map(|line| line.strip_prefix("LimitNOFILE=")).collect();
    assert_eq!(values.len(), 1, "one LimitNOFILE= in the unit: {values:?}");
    let limit: u64 = values[0].parse().expect("LimitNOFILE= is one number: soft and hard alike");
    // 8192 client connections plus the reserve of a 7-node cluster (about 500).
    assert!(limit >= 8192 + 1024, "LimitNOFILE={limit} caps the connections below 8192");
}

/// A batch of forwarded writes in the wire format `api::forward` documents: a `u32`
/// count, then each command with its `u32` length, big-endian.
fn forward_batch(commands: &[Command]) -> Vec<u8> {
    let mut body = (commands.len() as u32).to_be_bytes().to_vec();
    for command in commands {
        let encoded = command.encode();
        body.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        body.extend_from_slice(&encoded);
    }
    body
}

/// A batch of forwarded writes is answered write by write: one refused (a bad key, a
/// value over the limit, bytes that are no command) does not refuse the others, and a
/// malformed batch (cut, trailing bytes, a count past the limit) is refused whole with
/// 400, applying nothing.
#[test]
fn a_batch_of_forwarded_writes_is_answered_write_by_write_and_a_malformed_one_is_refused_whole() {
    let single = seeded_node();
    let port = single.port();
    let secret = [("X-Mmapd-Cluster-Secret", SECRET)];
    let keys_before = metric(port, "mmapd_keys");
    let commands = [
        Command::put("batch-a", "1"),
        Command::put("", "x"),
        Command::put("batch-b", "2"),
        Command::put("big", vec![b'v'; MAX_VALUE_BYTES + 1]),
        Command::delete("batch-never-written"),
    ];
    let mut body = forward_batch(&commands);
    // A sixth entry whose bytes are no command.
    body[..4].copy_from_slice(&6u32.to_be_bytes());
    body.extend_from_slice(&3u32.to_be_bytes());
    body.extend_from_slice(&[0xff, 0xfe, 0xfd]);
    let response = request(port, "POST", "/raft/propose-batch", &secret, &body).unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let answer = response.json();
    let statuses: Vec<u64> =
        answer["results"].as_array().unwrap().iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 400, 200, 413, 200, 400], "{answer}");
    assert!(answer["results"][0]["body"]["outcome"]["written"]["created"].as_bool().unwrap(), "{answer}");
    assert_eq!(answer["results"][4]["body"]["outcome"], "not_found", "{answer}");
    assert_eq!(get(port, "/v1/kv/batch-a").text(), "1");
    assert_eq!(get(port, "/v1/kv/batch-b").text(), "2");
    assert_eq!(metric(port, "mmapd_keys"), keys_before + 2);

    let good = forward_batch(&[Command::put("batch-c", "3")]);
    let mut trailing = good.clone();
    trailing.push(0);
    let too_many = (257u32).to_be_bytes().to_vec();
    for (what, bad) in [
        ("cut in the length", &good[..6]),
        ("cut in the command", &good[..good.len() - 1]),
        ("trailing bytes", &trailing[..]),
        ("a count past the limit", &too_many[..]),
        ("a count of 0", &[0, 0, 0, 0][..]),
    ] {
        let response = request(port, "POST", "/raft/propose-batch", &secret, bad).unwrap();
        assert_eq!(response.status, 400, "{what}: {}", response.text());
    }
    assert_eq!(get(port, "/v1/kv/batch-c").status, 404, "a refused batch applied a write");
    assert_alive_and_intact(&single);
}
