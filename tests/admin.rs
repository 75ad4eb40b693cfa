//! `mmapd-admin` against real nodes, over their admin sockets.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;

fn admin_ok(socket: &Path, args: &[&str]) -> String {
    let mut all = vec!["--socket", socket.to_str().unwrap()];
    all.extend(args);
    let output = admin(&all);
    assert!(output.status.success(), "mmapd-admin {args:?} failed: {}{}", stdout(&output), stderr(&output));
    stdout(&output)
}

#[test]
fn status_msync_snapshot_and_import_work_and_the_socket_is_mode_0660() {
    let mut single = Single::start(&[]);
    let port = single.port();
    let socket = single.admin_socket();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "admin socket mode {mode:o}");

    let text = admin_ok(&socket, &["status"]);
    assert!(text.contains(&format!("node 127.0.0.1:{port}")), "{text}");
    assert!(text.contains("state: leader"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&admin_ok(&socket, &["status", "--json"])).unwrap();
    assert_eq!(json["state"], "leader");
    assert_eq!(json["id"], format!("127.0.0.1:{port}"));

    for i in 0..20 {
        assert_eq!(put(port, &format!("/v1/kv/k{i}"), format!("v{i}").as_bytes()).status, 201);
    }
    let text = admin_ok(&socket, &["msync"]);
    assert!(text.starts_with("msynced "), "{text}");

    let commit = status(port).unwrap()["commit_index"].as_u64().unwrap();
    let text = admin_ok(&socket, &["snapshot"]);
    let index: u64 = text
        .strip_prefix("snapshot at index ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(index >= commit, "snapshot at {index}, commit was {commit}");
    let json: serde_json::Value = serde_json::from_str(&admin_ok(&socket, &["status", "--json"])).unwrap();
    assert!(json["first_index"].as_u64().unwrap() > index, "log not compacted, or /status stale: {json}");
    let again = admin_ok(&socket, &["snapshot"]);
    assert_eq!(again, text, "a snapshot with nothing new must report the latest one, term included");

    let db = single.dir.path().join("db.json");
    std::fs::write(&db, r#"{"a":"1","b":"2"}"#).unwrap();
    let text = admin_ok(&socket, &["import", db.to_str().unwrap()]);
    assert!(text.starts_with("imported 2 keys"), "{text}");
    assert_eq!(get(port, "/get/a").text(), "1");
    assert_eq!(get(port, "/v1/kv/b").text(), "2");

    std::fs::write(&db, r#"{"":"empty key"}"#).unwrap();
    let output = admin(&["--socket", socket.to_str().unwrap(), "import", db.to_str().unwrap()]);
    assert_fails_with_one_line(&output, "empty key");

    // Everything survives a restart from the snapshot plus the log after it.
    single.node.kill9();
    let output = admin(&["--socket", socket.to_str().unwrap(), "status"]);
    assert_fails_with_one_line(&output, "nothing listens");
    single.node.start().unwrap();
    wait_for(Duration::from_secs(5), "the node to lead again", || {
        (status(port)?["state"] == "leader").then_some(())
    });
    for i in 0..20 {
        assert_eq!(get(port, &format!("/v1/kv/k{i}")).text(), format!("v{i}"));
    }
    assert_eq!(get(port, "/get/a").text(), "1");
    assert_eq!(get(port, "/get/b").text(), "2");
}

#[test]
fn admin_gives_up_on_a_socket_that_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    // A stuck node: the socket accepts connections and never answers.
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let holder = std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(10));
        drop(held);
    });
    let started = std::time::Instant::now();
    let output = admin(&["--socket", path.to_str().unwrap(), "--timeout", "1", "status"]);
    assert!(started.elapsed() < Duration::from_secs(5), "gave up after {:?}", started.elapsed());
    assert_fails_with_one_line(&output, "no answer");
    drop(holder);
}

#[test]
fn admin_without_a_socket_fails_with_one_line() {
    let output = admin(&["--socket", "/nonexistent/admin.sock", "status"]);
    assert_fails_with_one_line(&output, "/nonexistent/admin.sock");
    let output = admin(&["--socket", "/nonexistent", "msync"]);
    assert_fails_with_one_line(&output, "/nonexistent");
}

#[test]
fn step_down_moves_leadership_from_the_leader_and_fails_clearly_on_a_follower() {
    let cluster = Cluster::start(3, &[]);
    let socket_of = |node: usize| cluster.dir.path().join(format!("node-{}/admin.sock", cluster.port(node)));
    let (leader, term) = cluster.agreed_leader_and_term().unwrap();
    let follower = cluster.others(leader)[0];

    let output = admin(&["--socket", socket_of(follower).to_str().unwrap(), "step-down"]);
    assert_fails_with_one_line(&output, "not the leader");
    assert_fails_with_one_line(&output, &cluster.nodes[leader].address());
    assert_eq!(cluster.agreed_leader_and_term(), Some((leader, term)), "a refused step-down moved nothing");

    let text = admin_ok(&socket_of(leader), &["step-down"]);
    let named = cluster.nodes.iter().position(|n| text.contains(&n.address()));
    let named = named.unwrap_or_else(|| panic!("output names no member: {text}"));
    assert_ne!(named, leader, "{text}");
    let (new, new_term) =
        wait_for(Duration::from_secs(5), "the new leader", || cluster.agreed_leader_and_term());
    assert_eq!(new, named, "output named {named}, the cluster follows {new}");
    assert!(new_term > term);

    // Import through a follower's socket: forwarded to the leader, read back everywhere.
    let db = cluster.dir.path().join("db.json");
    std::fs::write(&db, r#"{"a":"1","b":"2"}"#).unwrap();
    let follower = cluster.others(new)[0];
    admin_ok(&socket_of(follower), &["import", db.to_str().unwrap()]);
    for node in 0..3 {
        assert_eq!(get(cluster.port(node), "/get/a").text(), "1", "node {node}");
        assert_eq!(get(cluster.port(node), "/get/b").text(), "2", "node {node}");
    }
}

/// A regular file where the admin socket goes (a mistyped --admin-socket) is neither
/// deleted nor replaced: mmapd refuses to start and names it.
#[test]
fn a_regular_file_at_the_admin_socket_path_is_kept_and_mmapd_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("precious.txt");
    std::fs::write(&precious, "do not delete").unwrap();
    let port = free_ports(1)[0];
    let mut node = Daemon::new(
        dir.path(),
        port,
        &["--port", &port.to_string(), "--admin-socket", precious.to_str().unwrap()],
    );
    node.spawn();
    let exit = node.wait_exit(Duration::from_secs(10));
    assert!(!exit.success());
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "do not delete");
    let log = node.log_text();
    assert!(log.contains("precious.txt") && log.contains("not a socket"), "{log}");
}

// ---------------------------------------------------------------- members

/// The part of a member list every node answers alike: cluster id, leader, and each
/// member's id, address and role (match index and last contact move with time).
fn membership(list: &serde_json::Value) -> serde_json::Value {
    let members: Vec<serde_json::Value> = list["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members in {list}"))
        .iter()
        .map(|m| serde_json::json!([m["id"], m["address"], m["role"]]))
        .collect();
    serde_json::json!({ "cluster_id": list["cluster_id"], "leader": list["leader"], "members": members })
}

/// `GET /v1/members` on `port`, once the cluster record is bootstrapped there.
fn members_over_http(port: u16) -> serde_json::Value {
    wait_for(Duration::from_secs(5), "the cluster record", || {
        let response = get(port, "/v1/members");
        assert_eq!(response.status, 200, "{}", response.text());
        let list = response.json();
        (list["cluster_id"] != "0000000000000000" && !list["leader"].is_null()).then_some(list)
    })
}

fn members_over_admin(socket: &Path) -> serde_json::Value {
    serde_json::from_str(&admin_ok(socket, &["member", "list", "--json"])).unwrap()
}

/// The member at `address` in a list, if listed.
fn listed<'a>(list: &'a serde_json::Value, address: &str) -> Option<&'a serde_json::Value> {
    list["members"].as_array()?.iter().find(|m| m["address"] == address)
}

#[test]
fn a_three_node_cluster_lists_the_same_members_from_the_leader_and_a_follower() {
    let cluster = Cluster::start(3, &[]);
    let socket_of = |node: usize| cluster.dir.path().join(format!("node-{}/admin.sock", cluster.port(node)));
    let leader = cluster.agreed_leader().unwrap();
    let follower = cluster.others(leader)[0];

    let from_leader = members_over_http(cluster.port(leader));
    let expected = membership(&from_leader);
    let cluster_id = from_leader["cluster_id"].as_str().unwrap();
    assert!(cluster_id.len() == 16 && cluster_id.bytes().all(|b| b.is_ascii_hexdigit()), "{from_leader}");
    let members = from_leader["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{from_leader}");
    for node in &cluster.nodes {
        let member = listed(&from_leader, &node.address()).unwrap_or_else(|| panic!("{from_leader}"));
        assert_eq!(member["role"], "voter", "{from_leader}");
        assert_eq!(member["id"].as_str().unwrap().len(), 16, "{from_leader}");
    }
    assert_eq!(listed(&from_leader, &cluster.nodes[leader].address()).unwrap()["id"], from_leader["leader"]);

    // The leader's view, also on the follower, which asks the leader for it: every
    // member has replicated something and been heard from (soon after the start).
    let leaders_view = |list: &serde_json::Value| {
        list["members"].as_array().unwrap().iter().all(|member| {
            member["match_index"].as_u64().is_some_and(|m| m > 0)
                && member["last_contact_ms"].as_u64().is_some()
        })
    };
    for node in [leader, follower] {
        let over_http = wait_for(Duration::from_secs(5), "the leader's view over HTTP", || {
            Some(members_over_http(cluster.port(node))).filter(leaders_view)
        });
        let over_admin = wait_for(Duration::from_secs(5), "the leader's view over the socket", || {
            Some(members_over_admin(&socket_of(node))).filter(leaders_view)
        });
        assert_eq!(membership(&over_http), expected, "GET /v1/members on node {node}");
        assert_eq!(membership(&over_admin), expected, "member list --json on node {node}");
    }
    // Asked for its own view only, a follower knows no match index.
    let local = get(cluster.port(follower), "/v1/members?local=1").json();
    assert_eq!(membership(&local), expected);
    assert!(local["members"].as_array().unwrap().iter().all(|m| m["match_index"].is_null()), "{local}");

    let table = admin_ok(&socket_of(follower), &["member", "list"]);
    assert!(table.starts_with(&format!("cluster {cluster_id}\n")), "{table}");
    let leader_line = table.lines().find(|l| l.contains(&cluster.nodes[leader].address())).unwrap();
    assert!(leader_line.contains("voter") && leader_line.trim_end().ends_with("leader"), "{table}");
    assert_eq!(table.lines().filter(|l| l.trim_end().ends_with("leader")).count(), 1, "{table}");
}

#[test]
fn member_add_remove_and_update_through_a_follower_change_the_members_at_the_leader() {
    let cluster = Cluster::start(3, &[]);
    let socket_of = |node: usize| cluster.dir.path().join(format!("node-{}/admin.sock", cluster.port(node)));
    let leader = cluster.agreed_leader().unwrap();
    let follower = cluster.others(leader)[0];
    let follower_socket = socket_of(follower);
    let before = members_over_http(cluster.port(leader));
    // Nothing will ever listen there: the learner stays behind, which is all this needs.
    let ports = free_ports(2);
    let (new, moved) = (format!("127.0.0.1:{}", ports[0]), format!("127.0.0.1:{}", ports[1]));

    // --learner: never promoted, so it stays a learner however young the log is.
    let text = admin_ok(&follower_socket, &["member", "add", &new, "--learner"]);
    let id = text
        .strip_prefix("added learner ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no id in {text:?}"))
        .to_owned();
    assert_eq!(id.len(), 16, "{text}");
    let voters: Vec<String> = cluster.nodes.iter().map(|n| n.address()).collect();
    let join =
        text.lines().find(|l| l.contains("--join")).unwrap_or_else(|| panic!("no --join line in {text:?}"));
    assert!(
        join.trim_start()
            .starts_with(&format!("mmapd --ip 127.0.0.1 --port {} --advertise {new} --join ", ports[0])),
        "{join}"
    );
    assert!(join.ends_with(" --learner"), "{join}");
    let joined = join.split("--join ").nth(1).unwrap().split(' ').next().unwrap();
    let mut joined: Vec<&str> = joined.split(',').collect();
    joined.sort_unstable();
    let mut sorted = voters.clone();
    sorted.sort_unstable();
    assert_eq!(joined, sorted, "{join}");

    let after = members_over_http(cluster.port(leader));
    let learner = listed(&after, &new).unwrap_or_else(|| panic!("{new} not listed: {after}"));
    assert_eq!(
        (learner["id"].as_str(), learner["role"].as_str()),
        (Some(id.as_str()), Some("learner")),
        "{after}"
    );
    assert!(learner["match_index"].is_null() || learner["match_index"] == 0, "{after}");
    assert_eq!(after["cluster_id"], before["cluster_id"]);
    wait_for(Duration::from_secs(5), "the follower to list the learner", || {
        listed(&members_over_admin(&follower_socket), &new).map(|_| ())
    });

    // No address is listed twice: refused, naming the member that has it.
    let again = admin(&["--socket", follower_socket.to_str().unwrap(), "member", "add", &new]);
    assert_fails_with_one_line(&again, &format!("member {id} already has address {new}"));
    let voter = listed(&after, &voters[0]).unwrap()["id"].as_str().unwrap().to_owned();
    let taken = admin(&["--socket", follower_socket.to_str().unwrap(), "member", "add", &voters[0]]);
    assert_fails_with_one_line(&taken, &format!("member {voter} already has address"));
    // A refusal of the Raft core reaches the operator too.
    let promote = admin(&["--socket", follower_socket.to_str().unwrap(), "member", "promote", &voters[0]]);
    assert_fails_with_one_line(&promote, "is not a learner");
    let unknown = admin(&["--socket", follower_socket.to_str().unwrap(), "member", "remove", "127.0.0.1:1"]);
    assert_fails_with_one_line(&unknown, "no member has address 127.0.0.1:1");
    let malformed = admin(&["--socket", follower_socket.to_str().unwrap(), "member", "remove", "nonsense"]);
    assert_fails_with_one_line(&malformed, "neither a member id");

    let text = admin_ok(&follower_socket, &["member", "update", &id, &moved]);
    assert!(text.contains(&moved), "{text}");
    let updated = wait_for(Duration::from_secs(5), "the new address", || {
        let list = members_over_http(cluster.port(follower));
        listed(&list, &moved).is_some().then_some(list)
    });
    assert!(listed(&updated, &new).is_none(), "{updated}");
    assert_eq!(listed(&updated, &moved).unwrap()["id"], id.as_str());

    let text = admin_ok(&follower_socket, &["member", "remove", &moved]);
    assert!(text.starts_with(&format!("removed {id} ({moved})")), "{text}");
    for node in 0..3 {
        wait_for(Duration::from_secs(5), "every node to drop the learner", || {
            let list = members_over_http(cluster.port(node));
            (listed(&list, &moved).is_none() && list["members"].as_array().unwrap().len() == 3).then_some(())
        });
    }
    assert_eq!(membership(&members_over_http(cluster.port(leader))), membership(&before));
}

#[test]
fn removing_the_last_voter_of_a_one_node_cluster_is_refused() {
    let single = Single::start(&[]);
    let socket = single.admin_socket();
    let address = single.node.address();
    let list = members_over_http(single.port());
    let id = listed(&list, &address).unwrap()["id"].as_str().unwrap().to_owned();

    for member in [&address, &id] {
        let output = admin(&["--socket", socket.to_str().unwrap(), "member", "remove", member]);
        assert_fails_with_one_line(&output, "last voter");
    }
    // The same refusal on the peer route (loopback, no secret set): a 4xx.
    let body = format!(r#"{{"op":"remove","member":"{id}"}}"#);
    let response = request(single.port(), "POST", "/raft/members", &[], body.as_bytes()).unwrap();
    assert_eq!(response.status, 409, "{}", response.text());
    assert_eq!(response.json()["code"], "member_change_refused");
    assert_eq!(membership(&members_over_http(single.port())), membership(&list), "nothing changed");
}

#[test]
fn the_members_peer_route_refuses_malformed_bodies_and_requests_without_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "members-secret").unwrap();
    let single = Single::start(&["--cluster-secret-file", secret.to_str().unwrap()]);
    let port = single.port();
    members_over_http(port);
    let good = br#"{"op":"add","address":"127.0.0.1:1","learner":true}"#;

    let response = request(port, "POST", "/raft/members", &[], good).unwrap();
    assert_eq!(response.status, 401, "{}", response.text());
    let wrong = [("X-Mmapd-Cluster-Secret", "not-the-secret")];
    assert_eq!(request(port, "POST", "/raft/members", &wrong, good).unwrap().status, 401);

    let secret = [("X-Mmapd-Cluster-Secret", "members-secret")];
    for bad in [
        &b"{"[..],
        br#"{"op":"add"}"#,
        br#"{"op":"add","address":"no-port"}"#,
        br#"{"op":"remove","member":"x"}"#,
    ] {
        let response = request(port, "POST", "/raft/members", &secret, bad).unwrap();
        assert_eq!(response.status, 400, "{}: {}", String::from_utf8_lossy(bad), response.text());
        assert_eq!(response.json()["code"], "bad_request");
    }
    // GET is a follower asking for this node's own view: with the secret only.
    assert_eq!(request(port, "GET", "/raft/members", &[], b"").unwrap().status, 401);
    let view = request(port, "GET", "/raft/members", &secret, b"").unwrap();
    assert_eq!(view.status, 200, "{}", view.text());
    assert_eq!(view.json()["members"].as_array().map(Vec::len), Some(1), "{}", view.text());
    let response = request(port, "PUT", "/raft/members", &secret, good).unwrap();
    assert_eq!((response.status, response.header("allow")), (405, Some("GET, POST")));
    assert!(
        listed(&members_over_http(port), "127.0.0.1:1").is_none(),
        "a refused request changed the members"
    );
}
