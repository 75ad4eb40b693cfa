//! The key-value HTTP API's rules, on real `mmapd` processes: revisions
//! (`X-Mmapd-Revision`, and each key's `create_revision`, `mod_revision` and `version`
//! with etcd v3's meanings), listing pages, binary values in JSON, HEAD on every GET
//! route, and errors that read as sentences. The original's routes keep their answers;
//! only the header is new there.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// The `X-Mmapd-Revision` of an answer, which every key read and write must have.
fn revision(response: &Response) -> u64 {
    let header = response.header("X-Mmapd-Revision");
    header.and_then(|text| text.parse().ok()).unwrap_or_else(|| {
        panic!("no X-Mmapd-Revision on {} {}: {header:?}", response.status, response.text())
    })
}

fn delete(port: u16, path: &str) -> Response {
    request(port, "DELETE", path, &[], b"").unwrap_or_else(|e| panic!("DELETE {path} on {port}: {e}"))
}

/// `(create_revision, mod_revision, version)` of a listed item.
fn revisions(item: &serde_json::Value) -> (u64, u64, u64) {
    let field = |name: &str| item[name].as_u64().unwrap_or_else(|| panic!("no {name} in {item}"));
    (field("create_revision"), field("mod_revision"), field("version"))
}

/// The one listed item of `key`.
fn listed(port: u16, key: &str) -> serde_json::Value {
    let listing = get(port, &format!("/v1/kv?prefix={key}&limit=1")).json();
    let item = listing["items"][0].clone();
    assert_eq!(item["key"], key, "{listing}");
    item
}

/// Every write answers the revision it created, in its header and (on /v1) its body;
/// a linearizable read on any node answers a revision at least that of every write
/// acknowledged before it; revisions only grow, through both APIs and forwarded writes.
#[test]
fn every_key_read_and_write_answers_its_revision_and_revisions_only_grow() {
    let cluster = Cluster::start(3, &[]);
    let mut last = 0;
    for round in 0..4 {
        let writer = cluster.port(round % 3);
        let response = put(writer, &format!("/v1/kv/k{round}"), b"v");
        assert_eq!(response.status, 201, "{}", response.text());
        let written = revision(&response);
        assert!(written > last, "round {round}: write at {written} after {last}");
        assert_eq!(response.json()["revision"], written, "the body says the same");
        assert_eq!(response.header("ETag"), Some(format!("\"{written}\"").as_str()), "the ETag is the key's");
        last = written;

        let response = set_form(writer, &format!("form{round}"), "x");
        assert_eq!((response.status, response.text()), (200, "x".to_owned()), "the original's body");
        let written = revision(&response);
        assert!(written > last, "round {round}: /set at {written} after {last}");
        last = written;

        for reader in 0..3 {
            let port = cluster.port(reader);
            for path in
                [format!("/v1/kv/k{round}"), format!("/get/form{round}"), "/v1/kv?prefix=k".to_owned()]
            {
                let response = get(port, &path);
                assert_eq!(response.status, 200, "{path} on node {reader}");
                let read = revision(&response);
                assert!(read >= last, "{path} on node {reader} read at {read}, before the write at {last}");
                last = last.max(read);
            }
            let missing = get(port, "/v1/kv/never-written");
            assert_eq!(missing.status, 404);
            assert!(revision(&missing) >= last, "a read of a missing key says where it looked");
            let missing = get(port, "/get/never-written");
            assert_eq!(missing.status, 404);
            assert!(revision(&missing) >= last);
        }

        let response = delete(writer, &format!("/v1/kv/k{round}"));
        assert_eq!(response.status, 200, "{}", response.text());
        let deleted = revision(&response);
        assert!(deleted > last, "round {round}: delete at {deleted} after {last}");
        assert_eq!(response.json()["revision"], deleted);
        let again = delete(writer, &format!("/v1/kv/k{round}"));
        assert_eq!(again.status, 404);
        assert!(revision(&again) > deleted, "a delete of a missing key is decided at its own revision");
        last = revision(&again);
    }
    let listing = get(cluster.port(0), "/v1/kv?prefix=form");
    let read = listing.json()["revision"].as_u64().expect("a listing answers the revision it read");
    assert_eq!(read, revision(&listing), "in its body and its header");
    assert!(read >= last, "listed at {read}, before the delete at {last}");
}

/// etcd v3's meanings, through the API: `create_revision` is the creating write's
/// revision, `mod_revision` the last write's (the ETag), `version` counts writes since
/// creation and starts again at 1 when a deleted key is written again.
#[test]
fn create_revision_mod_revision_and_version_follow_writes_deletes_and_recreation() {
    let node = Single::start(&[]);
    let port = node.port();
    let created = revision(&put(port, "/v1/kv/a", b"1"));
    assert_eq!(revisions(&listed(port, "a")), (created, created, 1));
    let updated = revision(&put(port, "/v1/kv/a", b"2"));
    let item = listed(port, "a");
    assert_eq!(revisions(&item), (created, updated, 2));
    assert_eq!(item["value"], "2");

    // A compare-and-swap on the mod_revision (the ETag): the stale one is refused and
    // changes nothing; the current one is the third write.
    let stale = request(port, "PUT", "/v1/kv/a", &[("If-Match", &format!("\"{created}\""))], b"x").unwrap();
    assert_eq!(stale.status, 412, "{}", stale.text());
    assert_eq!(stale.header("ETag"), Some(format!("\"{updated}\"").as_str()));
    assert!(revision(&stale) > updated);
    let swapped = request(port, "PUT", "/v1/kv/a", &[("If-Match", &format!("\"{updated}\""))], b"3").unwrap();
    assert_eq!(swapped.status, 200, "{}", swapped.text());
    let swapped = revision(&swapped);
    assert_eq!(revisions(&listed(port, "a")), (created, swapped, 3));

    let read = get(port, "/v1/kv/a");
    assert_eq!(read.header("ETag"), Some(format!("\"{swapped}\"").as_str()));
    assert_eq!(read.header("X-Mmapd-Create-Revision"), Some(created.to_string().as_str()));
    assert_eq!(read.header("X-Mmapd-Key-Version"), Some("3"));

    assert_eq!(delete(port, "/v1/kv/a").json()["previous_mod_revision"], swapped);
    let recreated = put(port, "/v1/kv/a", b"new");
    assert_eq!(recreated.status, 201, "created again");
    let recreated = revision(&recreated);
    assert_eq!(revisions(&listed(port, "a")), (recreated, recreated, 1), "a new key after the delete");
    assert_eq!(get(port, "/v1/kv/a").header("X-Mmapd-Key-Version"), Some("1"));
}

/// 250 keys under a prefix, read 100 at a time with `after=` the last key: every key
/// exactly once, in order, `more` until the last page; keys outside the prefix never.
#[test]
fn paging_through_250_keys_100_at_a_time_returns_every_key_exactly_once() {
    let node = Single::start(&[]);
    let port = node.port();
    for outside in ["p", "o/1", "p0", "q/1"] {
        assert_eq!(put(port, &format!("/v1/kv/{outside}"), b"no").status, 201);
    }
    let mut expected = BTreeSet::new();
    for i in 0..250 {
        // Not written in key order, so the pages are the map's order, not the writes'.
        let key = format!("p/{:03}", (i * 37) % 250);
        assert_eq!(put(port, &format!("/v1/kv/{key}"), key.as_bytes()).status, 201);
        expected.insert(key);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let path = match &after {
            None => "/v1/kv?prefix=p/&limit=100".to_owned(),
            Some(after) => format!("/v1/kv?prefix=p/&limit=100&after={after}"),
        };
        let page = get(port, &path);
        assert_eq!(page.status, 200, "{}", page.text());
        let page = page.json();
        let items = page["items"].as_array().unwrap();
        for item in items {
            assert_eq!(item["value"], item["key"]);
            seen.push(item["key"].as_str().unwrap().to_owned());
        }
        pages.push((items.len(), page["more"].as_bool().unwrap()));
        if page["more"] == false {
            break;
        }
        after = seen.last().cloned();
        assert!(pages.len() < 10, "paging does not end: {pages:?}");
    }
    assert_eq!(pages, vec![(100, true), (100, true), (50, false)]);
    assert_eq!(seen, expected.iter().cloned().collect::<Vec<_>>(), "every key once, in order");

    let default = get(port, "/v1/kv?prefix=p/").json();
    assert_eq!(default["items"].as_array().unwrap().len(), 100, "the default limit is 100");
    assert_eq!(default["more"], true);
    let exact = get(port, "/v1/kv?prefix=p/&limit=250").json();
    assert_eq!((exact["items"].as_array().unwrap().len(), exact["more"].as_bool()), (250, Some(false)));
}

/// A limit above the cap is refused naming the cap, never cut silently (a client would
/// take the short page for the end); the cap itself is served.
#[test]
fn a_listing_limit_above_the_cap_is_refused_naming_the_cap() {
    let node = Single::start(&[]);
    let port = node.port();
    let refused = get(port, "/v1/kv?limit=10001");
    assert_eq!(refused.status, 400, "{}", refused.text());
    let message = refused.json()["error"].as_str().unwrap().to_owned();
    assert!(message.contains("10000") && message.contains("10001"), "{message}");
    assert_eq!(get(port, "/v1/kv?limit=10000").status, 200);
    for bad in ["0", "-1", "ten", "99999999999999999999999"] {
        assert_eq!(get(port, &format!("/v1/kv?limit={bad}")).status, 400, "limit={bad}");
    }
}

/// One rule for values in JSON: UTF-8 as `"value"`, anything else as `"value_base64"`.
#[test]
fn a_value_that_is_not_utf8_is_listed_as_value_base64() {
    let node = Single::start(&[]);
    let port = node.port();
    assert_eq!(put(port, "/v1/kv/bin", &[0x00, 0x9f, 0x92, 0x96]).status, 201);
    assert_eq!(put(port, "/v1/kv/text", "grün".as_bytes()).status, 201);
    let binary = listed(port, "bin");
    assert_eq!(binary["value_base64"], "AJ+Slg==");
    assert!(binary.get("value").is_none() && binary.get("value_hex").is_none(), "{binary}");
    let text = listed(port, "text");
    assert_eq!(text["value"], "grün");
    assert!(text.get("value_base64").is_none(), "{text}");
    assert_eq!(get(port, "/v1/kv/bin").body, [0x00, 0x9f, 0x92, 0x96], "the raw route is raw");
}

/// Sends a HEAD request and returns the status, the Content-Length and every byte that
/// came after the headers (which must be none).
fn head(port: u16, path: &str) -> (u16, Option<u64>, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let message = format!("HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(message.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole head") + 4;
    let response = parse_response(&raw[..end]).expect("an HTTP response");
    let length = response.header("Content-Length").and_then(|v| v.parse().ok());
    (response.status, length, raw[end..].to_vec())
}

/// HEAD works on every GET route, `/health` included (load balancers use it): the GET's
/// status and headers, the length of its body, and no body.
#[test]
fn head_answers_every_get_route_with_its_status_and_length_and_no_body() {
    let node = Single::start(&[]);
    let port = node.port();
    assert_eq!(put(port, "/v1/kv/k", b"value").status, 201);
    let stable = ["/v1/kv/k", "/get/k", "/v1/kv?prefix=k", "/health", "/"];
    let changing = ["/status", "/v1/status", "/metrics", "/v1/members", "/v1/members?local=1"];
    for path in stable.iter().chain(&changing) {
        let (status, length, body) = head(port, path);
        assert_eq!(status, 200, "HEAD {path}");
        assert!(body.is_empty(), "HEAD {path} sent a body: {:?}", String::from_utf8_lossy(&body));
        let length = length.unwrap_or_else(|| panic!("HEAD {path} has no Content-Length"));
        assert!(length > 0, "HEAD {path}");
        if stable.contains(path) {
            assert_eq!(length, get(port, path).body.len() as u64, "HEAD {path} says the GET's length");
        }
    }
    let (status, _, body) = head(port, "/v1/kv/missing");
    assert_eq!((status, body.len()), (404, 0));
    let response = request(port, "HEAD", "/v1/kv/k", &[], b"").unwrap();
    assert_eq!(response.header("ETag"), get(port, "/v1/kv/k").header("ETag"));
    assert!(response.header("X-Mmapd-Revision").is_some());
    let refused = request(port, "HEAD", "/set/k", &[], b"").unwrap();
    assert_eq!(refused.status, 405, "a write route is no GET route");
    let not_allowed = request(port, "DELETE", "/health", &[], b"").unwrap();
    assert_eq!(not_allowed.header("Allow"), Some("GET, HEAD"));
}

/// The original's routes answer as they did (only `X-Mmapd-Revision` is new).
#[test]
fn the_original_routes_keep_their_bodies_and_statuses() {
    let node = Single::start(&[]);
    let port = node.port();
    let set = set_form(port, "greeting", "hello");
    assert_eq!((set.status, set.text()), (200, "hello".to_owned()));
    assert_eq!(set.header("Content-Type"), Some("text/plain; charset=utf-8"));
    let read = get(port, "/get/greeting");
    assert_eq!((read.status, read.text()), (200, "hello".to_owned()));
    // At least the write's: the node may apply entries of its own (the cluster record) meanwhile.
    assert!(revision(&read) >= revision(&set), "read before the write it follows");
    let missing = get(port, "/get/nope");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json(), serde_json::json!({"code": "not_found", "error": "key not found"}));
}

/// Errors are sentences for users: no `Some(4)`, and a read that timed out (no quorum)
/// says nothing of a write.
#[test]
fn errors_are_sentences_and_a_read_timeout_is_not_a_write_timeout() {
    let mut cluster = Cluster::start(3, &[]);
    let port = cluster.port(0);
    let written = revision(&put(port, "/v1/kv/a", b"1"));
    let refused = request(port, "PUT", "/v1/kv/a", &[("If-Match", "\"999999\"")], b"x").unwrap();
    assert_eq!(refused.status, 412);
    let message = refused.json()["error"].as_str().unwrap().to_owned();
    assert!(message.contains(&format!("mod_revision (its ETag) is {written}")), "{message}");
    assert!(!message.contains("Some("), "{message}");
    let create_only = request(port, "PUT", "/v1/kv/a", &[("If-None-Match", "*")], b"x").unwrap();
    assert_eq!(create_only.status, 412);

    // No quorum: a read waits the request timeout (3 s in the fast timings), then 503.
    cluster.nodes[1].kill9();
    cluster.nodes[2].kill9();
    let read = get(port, "/v1/kv/a");
    assert_eq!(read.status, 503, "{}", read.text());
    let body = read.json();
    let message = body["error"].as_str().unwrap();
    assert!(!message.contains("write"), "a read that timed out: {message}");
    assert!(message.contains("3 s") && !message.contains("3s"), "{message}");
    assert_eq!(read.header("Retry-After"), Some("1"));
    let listing = get(port, "/v1/kv");
    assert_eq!(listing.status, 503);
    assert!(!listing.text().contains("write"), "{}", listing.text());
}
