//! `POST /v1/txn` on real `mmapd` processes: the answer's JSON shapes, the limits (413)
//! and a key written twice (400), compares on a missing key, and a bank: concurrent
//! compare-`mod_revision` transfers through every node of a 3-node cluster, while
//! read-only transactions of every account always see the conserved total, and at the
//! end every node holds it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn txn(port: u16, body: &serde_json::Value) -> Response {
    request(port, "POST", "/v1/txn", &[("Content-Type", "application/json")], body.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("POST /v1/txn on {port}: {e}"))
}

fn revision(response: &Response) -> u64 {
    response
        .header("X-Mmapd-Revision")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no X-Mmapd-Revision on {} {}", response.status, response.text()))
}

#[test]
fn a_transaction_answers_one_response_per_op_of_the_branch_taken() {
    let single = Single::start(&[]);
    let port = single.port();
    assert_eq!(put(port, "/v1/kv/cfg/a", b"1").status, 201);
    assert_eq!(put(port, "/v1/kv/cfg/b", b"2").status, 201);

    // A compare on a missing key: its mod_revision is 0, and a value compare is false.
    let created = txn(
        port,
        &serde_json::json!({
            "compare": [{"key": "lock", "target": "create_revision", "op": "==", "value": 0}],
            "success": [
                {"op": "put", "key": "lock", "value": "me"},
                {"op": "put", "key": "bin", "value_base64": "/w=="},
                {"op": "get", "key": "lock"},
                {"op": "get", "key": "nothing"},
                {"op": "get", "prefix": "cfg/", "limit": 1},
                {"op": "delete", "prefix": "cfg/"},
                {"op": "get", "key": "bin"},
            ],
            "failure": [{"op": "get", "key": "lock"}],
        }),
    );
    assert_eq!(created.status, 200, "{}", created.text());
    let body = created.json();
    let at = revision(&created);
    assert_eq!(body["succeeded"], true);
    assert_eq!(body["revision"], at);
    let responses = body["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 7, "{body}");
    assert_eq!(responses[0], serde_json::json!({"revision": at}));
    assert_eq!(responses[1], serde_json::json!({"revision": at}));
    assert_eq!(
        responses[2],
        serde_json::json!({"key": "lock", "value": "me", "create_revision": at, "mod_revision": at, "version": 1})
    );
    assert_eq!(responses[3], serde_json::Value::Null);
    assert_eq!(responses[4]["more"], true);
    assert_eq!(responses[4]["items"].as_array().unwrap().len(), 1);
    assert_eq!(responses[4]["items"][0]["key"], "cfg/a");
    assert_eq!(responses[4]["items"][0]["value"], "1");
    assert_eq!(responses[5], serde_json::json!({"deleted": 2}));
    assert_eq!(responses[6]["value_base64"], "/w==");
    assert!(responses[6].get("value").is_none());
    assert_eq!(get(port, "/v1/kv/cfg/a").status, 404, "deleted in the transaction");

    // The same create-only transaction again: the key exists, the failure branch runs.
    let again = txn(
        port,
        &serde_json::json!({
            "compare": [{"key": "lock", "target": "create_revision", "op": "==", "value": 0}],
            "success": [{"op": "put", "key": "lock", "value": "other"}],
            "failure": [{"op": "get", "key": "lock"}],
        }),
    );
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["succeeded"], false);
    assert_eq!(again.json()["responses"][0]["value"], "me");
    assert!(revision(&again) > at);

    // A value compare on a missing key is false, whatever the op.
    for op in ["==", "!=", "<", ">"] {
        let answer = txn(
            port,
            &serde_json::json!({"compare": [{"key": "absent", "target": "value", "op": op, "value": ""}]}),
        );
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.json()["succeeded"], false, "op {op}");
        assert_eq!(answer.json()["responses"], serde_json::json!([]));
    }
    let zero = txn(
        port,
        &serde_json::json!({"compare": [
            {"key": "absent", "target": "version", "op": "==", "value": 0},
            {"key": "absent", "target": "mod_revision", "op": "<", "value": 1},
            {"key": "absent", "target": "lease", "op": "==", "value": 0},
        ]}),
    );
    assert_eq!(zero.json()["succeeded"], true, "{}", zero.text());

    // A put naming a lease that does not exist fails it all: 404, nothing changed.
    let leased = txn(
        port,
        &serde_json::json!({"success": [
            {"op": "put", "key": "x", "value": "1"},
            {"op": "put", "key": "y", "value": "1", "lease": "00000000000000ff"},
        ]}),
    );
    assert_eq!(leased.status, 404, "{}", leased.text());
    assert_eq!(leased.json()["code"], "lease_not_found");
    assert_eq!(get(port, "/v1/kv/x").status, 404);
}

#[test]
fn a_transaction_beyond_the_limits_is_refused_with_the_limit_named() {
    let single = Single::start(&["--max-value-bytes", "64", "--max-key-bytes", "32"]);
    let port = single.port();
    let ops: Vec<serde_json::Value> =
        (0..129).map(|i| serde_json::json!({"op": "get", "key": format!("k{i}")})).collect();
    let answer = txn(port, &serde_json::json!({"success": ops}));
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert!(answer.json()["error"].as_str().unwrap().contains("limit of 128"), "{}", answer.text());
    // 128 in all, compares included.
    let compares: Vec<serde_json::Value> = (0..64)
        .map(|i| serde_json::json!({"key": format!("k{i}"), "target": "version", "op": "==", "value": 0}))
        .collect();
    let gets: Vec<serde_json::Value> =
        (0..65).map(|i| serde_json::json!({"op": "get", "key": format!("k{i}")})).collect();
    let answer = txn(port, &serde_json::json!({"compare": compares, "failure": gets}));
    assert_eq!(answer.status, 413, "{}", answer.text());
    let gets: Vec<serde_json::Value> =
        (0..64).map(|i| serde_json::json!({"op": "get", "key": format!("k{i}")})).collect();
    let answer = txn(port, &serde_json::json!({"compare": compares, "failure": gets}));
    assert_eq!(answer.status, 200, "128 is allowed: {}", answer.text());

    let big = "v".repeat(65);
    let answer = txn(port, &serde_json::json!({"success": [{"op": "put", "key": "k", "value": big}]}));
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert!(answer.json()["error"].as_str().unwrap().contains("limit of 64"), "{}", answer.text());
    let long_key = "k".repeat(33);
    let answer = txn(
        port,
        &serde_json::json!({"compare": [{"key": long_key, "target": "version", "op": "==", "value": 0}]}),
    );
    assert_eq!(answer.status, 413, "{}", answer.text());

    for (ops, what) in [
        (
            serde_json::json!([{"op": "put", "key": "a", "value": "1"}, {"op": "put", "key": "a", "value": "2"}]),
            "two puts",
        ),
        (
            serde_json::json!([{"op": "delete", "prefix": "a"}, {"op": "put", "key": "ab", "value": "2"}]),
            "put in a deleted prefix",
        ),
        (
            serde_json::json!([{"op": "delete", "key": "a"}, {"op": "put", "key": "a", "value": "2"}]),
            "delete and put",
        ),
    ] {
        let answer = txn(port, &serde_json::json!({"failure": ops}));
        assert_eq!(answer.status, 400, "{what}: {}", answer.text());
        assert!(answer.json()["error"].as_str().unwrap().contains("written twice"), "{}", answer.text());
    }
    let answer = request(port, "POST", "/v1/txn", &[], b"{\"success\": [").unwrap();
    assert_eq!(answer.status, 400);
    assert!(
        answer.json()["error"].as_str().unwrap().starts_with("the transaction is not JSON"),
        "{}",
        answer.text()
    );
    let answer = request(port, "GET", "/v1/txn", &[], b"").unwrap();
    assert_eq!(answer.status, 405);
}

const ACCOUNTS: usize = 5;
const OPENING: u64 = 100;

/// Every account's `(balance, mod_revision)` from a read-only transaction on `port`;
/// `None` when the answer was not a success (a node without a leader for a moment).
fn audit(port: u16) -> Option<Vec<(u64, u64)>> {
    let answer = txn(port, &serde_json::json!({"success": [{"op": "get", "prefix": "acct/"}]}));
    if answer.status != 200 {
        return None;
    }
    let body = answer.json();
    let items = body["responses"][0]["items"].as_array()?.clone();
    Some(
        items
            .iter()
            .map(|item| {
                (item["value"].as_str().unwrap().parse().unwrap(), item["mod_revision"].as_u64().unwrap())
            })
            .collect(),
    )
}

#[test]
fn concurrent_transfers_through_every_node_conserve_the_total_that_every_read_sees() {
    let cluster = Cluster::start(3, &[]);
    let puts: Vec<serde_json::Value> = (0..ACCOUNTS)
        .map(|i| serde_json::json!({"op": "put", "key": format!("acct/{i}"), "value": OPENING.to_string()}))
        .collect();
    let opened = txn(cluster.port(0), &serde_json::json!({"success": puts}));
    assert_eq!(opened.status, 200, "{}", opened.text());
    let total = ACCOUNTS as u64 * OPENING;

    let stop = Arc::new(AtomicBool::new(false));
    let transfers = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let audits = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(8);
    let ports: Vec<u16> = (0..3).map(|i| cluster.port(i)).collect();
    let mut threads = Vec::new();
    for client in 0..6 {
        let port = ports[client % 3];
        let (stop, transfers, conflicts) = (stop.clone(), transfers.clone(), conflicts.clone());
        threads.push(std::thread::spawn(move || {
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(client as u64 + 1);
            let mut next = |bound: u64| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed % bound
            };
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Some(accounts) = audit(port) else { continue };
                assert_eq!(accounts.len(), ACCOUNTS);
                let from = next(ACCOUNTS as u64) as usize;
                let to = (from + 1 + next(ACCOUNTS as u64 - 1) as usize) % ACCOUNTS;
                let (from_balance, from_revision) = accounts[from];
                let (to_balance, to_revision) = accounts[to];
                let amount = next(from_balance + 1).min(from_balance);
                let answer = txn(
                    port,
                    &serde_json::json!({
                        "compare": [
                            {"key": format!("acct/{from}"), "target": "mod_revision", "op": "==", "value": from_revision},
                            {"key": format!("acct/{to}"), "target": "mod_revision", "op": "==", "value": to_revision},
                        ],
                        "success": [
                            {"op": "put", "key": format!("acct/{from}"), "value": (from_balance - amount).to_string()},
                            {"op": "put", "key": format!("acct/{to}"), "value": (to_balance + amount).to_string()},
                        ],
                    }),
                );
                match (answer.status, answer.json()["succeeded"].as_bool()) {
                    (200, Some(true)) => transfers.fetch_add(1, Ordering::Relaxed),
                    (200, Some(false)) => conflicts.fetch_add(1, Ordering::Relaxed),
                    // A write whose outcome is unknown (503): the audits still must hold.
                    (503, _) => 0,
                    (status, _) => panic!("transfer answered {status}: {}", answer.text()),
                };
            }
        }));
    }
    for &port in ports.iter().take(3) {
        let (stop, audits) = (stop.clone(), audits.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Some(accounts) = audit(port) {
                    let seen: u64 = accounts.iter().map(|(balance, _)| balance).sum();
                    assert_eq!(seen, total, "an audit on port {port} saw {accounts:?}");
                    audits.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut panicked = false;
    for thread in threads {
        panicked |= thread.join().is_err();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(!panicked, "a client saw the total broken (see above)");
    let (transfers, conflicts, audits) = (
        transfers.load(Ordering::Relaxed),
        conflicts.load(Ordering::Relaxed),
        audits.load(Ordering::Relaxed),
    );
    eprintln!("bank: {transfers} transfers, {conflicts} refused by their compare, {audits} audits");
    assert!(transfers >= 10 && audits >= 10, "too little ran: {transfers} transfers, {audits} audits");
    assert!(conflicts > 0, "concurrent clients never raced: the compares were not exercised");

    // At the end, every node's own state (a stale read of each) holds the total.
    let leader_revision = revision(&get(cluster.port(0), "/v1/kv?prefix=acct/"));
    for port in ports {
        let listing = wait_for(Duration::from_secs(5), "every node to catch up", || {
            let response = get(port, "/v1/kv?prefix=acct/&consistency=stale");
            (revision(&response) >= leader_revision).then(|| response.json())
        });
        let items = listing["items"].as_array().unwrap();
        assert_eq!(items.len(), ACCOUNTS);
        let held: u64 =
            items.iter().map(|item| item["value"].as_str().unwrap().parse::<u64>().unwrap()).sum();
        assert_eq!(held, total, "node on port {port} holds {listing}");
    }
}
