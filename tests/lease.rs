//! Leases on real `mmapd` processes (`/v1/leases`): granted, attached, kept alive and
//! revoked through any node; an expired lease's keys vanish on every node; a keepalive
//! keeps a lease past its TTL; a new leader never expires a lease early.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn call(port: u16, method: &str, path: &str, body: &str) -> Response {
    request(port, method, path, &[], body.as_bytes()).expect("request")
}

fn grant(port: u16, body: &str) -> String {
    let response = call(port, "POST", "/v1/leases", body);
    assert_eq!(response.status, 201, "{}", response.text());
    response.json()["id"].as_str().expect("an id").to_owned()
}

fn exists(port: u16, key: &str) -> bool {
    let response = call(port, "GET", &format!("/v1/kv/{key}?consistency=stale"), "");
    assert!(matches!(response.status, 200 | 404), "{}", response.text());
    response.status == 200
}

#[test]
fn leases_are_granted_attached_kept_alive_and_revoked_through_any_node() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let followers = cluster.others(leader);
    let (a, b) = (cluster.port(followers[0]), cluster.port(followers[1]));

    let id = grant(a, r#"{"ttl_s":30}"#);
    assert_eq!(id.len(), 16);
    let put = call(b, "PUT", &format!("/v1/kv/held?lease={id}"), "v");
    assert!(matches!(put.status, 200 | 201), "{}", put.text());
    assert_eq!(call(b, "GET", "/v1/kv/held", "").header("x-mmapd-lease"), Some(id.as_str()));
    let listed = call(a, "GET", "/v1/kv?prefix=held", "").json();
    assert_eq!(listed["items"][0]["lease"], id.as_str());

    // Asked of a follower: answered by the leader's clock.
    let ttl = call(a, "GET", &format!("/v1/leases/{id}"), "");
    assert_eq!(ttl.status, 200, "{}", ttl.text());
    let ttl = ttl.json();
    assert_eq!(ttl["granted_ttl_s"], 30);
    assert_eq!(ttl["keys"], serde_json::json!(["held"]));
    let left = ttl["ttl_s"].as_u64().unwrap();
    assert!((20..=30).contains(&left), "{left} s left of 30");
    let kept = call(b, "POST", &format!("/v1/leases/{id}/keepalive"), "");
    assert_eq!(kept.status, 200, "{}", kept.text());
    assert_eq!(kept.json()["ttl_s"], 30);
    let all = call(b, "GET", "/v1/leases", "").json();
    assert!(all["leases"].as_array().unwrap().iter().any(|lease| lease["id"] == id.as_str()), "{all}");

    // A client-chosen id, taken once; bad bodies and unknown leases are refused.
    let chosen = grant(b, r#"{"ttl_s":30,"id":"00000000000000aa"}"#);
    assert_eq!(chosen, "00000000000000aa");
    let again = call(a, "POST", "/v1/leases", r#"{"ttl_s":30,"id":"00000000000000aa"}"#);
    assert_eq!((again.status, again.json()["code"].as_str()), (409, Some("lease_exists")));
    assert_eq!(call(a, "POST", "/v1/leases", r#"{"ttl_s":0}"#).status, 400);
    let unknown = call(a, "PUT", "/v1/kv/other?lease=00000000000000bb", "v");
    assert_eq!((unknown.status, unknown.json()["code"].as_str()), (404, Some("lease_not_found")));
    assert!(!exists(a, "other"), "a put naming an unknown lease wrote its key");

    // A TTL below 1.5 election timeouts is raised, and the answer says so.
    let short = call(a, "POST", "/v1/leases", r#"{"ttl_s":1,"id":"00000000000000cc"}"#).json();
    assert!(short["ttl_s"].as_u64().unwrap() >= 1, "{short}");

    // Revoked: its key is deleted everywhere, and the lease is gone.
    let revoked = call(a, "DELETE", &format!("/v1/leases/{id}"), "");
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert_eq!(revoked.json()["deleted"], 1);
    for node in 0..3 {
        let port = cluster.port(node);
        wait_for(Duration::from_secs(5), "the revoke to apply everywhere", || {
            (!exists(port, "held")).then_some(())
        });
    }
    for (method, path) in
        [("GET", format!("/v1/leases/{id}")), ("POST", format!("/v1/leases/{id}/keepalive"))]
    {
        let gone = call(b, method, &path, "");
        assert_eq!(
            (gone.status, gone.json()["code"].as_str()),
            (404, Some("lease_not_found")),
            "{method} {path}"
        );
    }
    assert_eq!(call(a, "DELETE", &format!("/v1/leases/{id}"), "").status, 404);
}

#[test]
fn an_expired_lease_deletes_its_keys_on_every_node_and_never_before_its_ttl() {
    let cluster = Cluster::start(3, &[]);
    let port = cluster.port(0);
    let asked = Instant::now();
    let id = grant(port, r#"{"ttl_s":2}"#);
    for key in ["x1", "x2"] {
        assert!(matches!(call(port, "PUT", &format!("/v1/kv/{key}?lease={id}"), "v").status, 200 | 201));
    }
    // Safety: not gone before its TTL from the grant (deadlines start once applied). The
    // reads are stale, so a follower may not have applied a put yet: a key counts as gone
    // early only once that node has shown it.
    let mut seen = [[false; 2]; 3];
    while asked.elapsed() < Duration::from_millis(1_800) {
        for (node, seen) in seen.iter_mut().enumerate() {
            for (slot, key) in ["x1", "x2"].into_iter().enumerate() {
                let there = exists(cluster.port(node), key);
                let early = seen[slot] && !there;
                assert!(!early, "{key} of a 2 s lease vanished on node {node} after {:?}", asked.elapsed());
                seen[slot] |= there;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen, [[true; 2]; 3], "every node applies the leased puts well within the TTL");
    for node in 0..3 {
        let node_port = cluster.port(node);
        wait_for(Duration::from_secs(10), "the expired lease's keys to be deleted", || {
            (!exists(node_port, "x1") && !exists(node_port, "x2")).then_some(())
        });
    }
    assert_eq!(call(port, "GET", &format!("/v1/leases/{id}"), "").status, 404);
}

#[test]
fn keepalives_keep_a_lease_past_its_ttl() {
    let cluster = Cluster::start(3, &[]);
    let port = cluster.port(1);
    let id = grant(port, r#"{"ttl_s":2}"#);
    assert!(matches!(call(port, "PUT", &format!("/v1/kv/alive?lease={id}"), "v").status, 200 | 201));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let kept = call(port, "POST", &format!("/v1/leases/{id}/keepalive"), "");
        assert_eq!(kept.status, 200, "after {:?}: {}", started.elapsed(), kept.text());
        assert!(exists(port, "alive"));
        std::thread::sleep(Duration::from_millis(400));
    }
}

// Reference: etcd's lessor (Promote): a new leader gives every lease its full TTL.
#[test]
fn a_new_leader_gives_every_lease_its_full_ttl_from_when_it_took_over() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let survivor = cluster.port(cluster.others(leader)[0]);
    let id = grant(survivor, r#"{"ttl_s":4}"#);
    assert!(matches!(call(survivor, "PUT", &format!("/v1/kv/owned?lease={id}"), "v").status, 200 | 201));
    // Most of the TTL spent under the old leader, then it dies.
    std::thread::sleep(Duration::from_millis(3_000));
    assert!(exists(survivor, "owned"));
    cluster.nodes[leader].kill9();
    cluster.wait_for_leader(Duration::from_secs(10));
    let took_over = Instant::now();
    // Under the old leader's count the lease would have gone about 1 s after the kill.
    while took_over.elapsed() < Duration::from_millis(3_500) {
        assert!(
            exists(survivor, "owned"),
            "the lease expired {:?} after the new leader took over",
            took_over.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for(Duration::from_secs(10), "the lease to expire under the new leader", || {
        (!exists(survivor, "owned")).then_some(())
    });
}
