//! Client tokens (`--auth-tokens`) on a real node: 401 without a valid token, 403
//! outside its grants, read-only tokens cannot write, `/health` stays open, SIGHUP
//! rereads the file (keeping the old tokens when the new file is bad), a file others
//! may read is refused at start, and no token ever reaches the log.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;

const TOKENS: &str = "\
# the operator, the app under app/, a reader of config/
ops-0123456789abcdef write
app-0123456789abcdef write app/
ro-0123456789abcdef read config/
";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn call(port: u16, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Response {
    let header = token.map(bearer);
    let headers: Vec<(&str, &str)> = header.iter().map(|h| ("Authorization", h.as_str())).collect();
    request(port, method, path, &headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn write_tokens(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn key_routes_need_a_token_with_the_right_grant_and_health_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    write_tokens(&tokens, TOKENS);
    let node = node_with_tokens(dir.path(), &tokens, "ops-0123456789abcdef");
    let port = node.port;
    let (ops, app, ro) =
        (Some("ops-0123456789abcdef"), Some("app-0123456789abcdef"), Some("ro-0123456789abcdef"));

    // Without a token, or with a wrong one: 401 with a challenge, on every key route.
    for (method, path) in [
        ("PUT", "/v1/kv/app/a"),
        ("GET", "/v1/kv/app/a"),
        ("GET", "/v1/kv?prefix=app/"),
        ("POST", "/set/x"),
        ("GET", "/get/x"),
    ] {
        for token in [None, Some("ops-0123456789abcdeF"), Some("ops")] {
            let answer = call(port, method, path, token, b"value=1");
            assert_eq!(answer.status, 401, "{method} {path} with {token:?}: {}", answer.text());
            assert_eq!(answer.header("www-authenticate"), Some("Bearer realm=\"mmapd\""));
            assert_eq!(answer.json()["code"], "token_required");
        }
    }
    assert_eq!(call(port, "GET", "/status", None, b"").status, 401);
    assert_eq!(call(port, "GET", "/metrics", None, b"").status, 401);
    assert_eq!(call(port, "GET", "/v1/members", None, b"").status, 401);
    assert_eq!(call(port, "GET", "/health", None, b"").status, 200, "/health needs no token");

    // The app writes and reads under app/ only.
    assert_eq!(call(port, "PUT", "/v1/kv/app/a", app, b"1").status, 201);
    assert_eq!(call(port, "GET", "/v1/kv/app/a", app, b"").text(), "1");
    let outside = call(port, "PUT", "/v1/kv/config/a", app, b"1");
    assert_eq!(
        (outside.status, outside.json()["code"].as_str()),
        (403, Some("token_denied")),
        "{}",
        outside.text()
    );
    assert_eq!(call(port, "GET", "/v1/kv?prefix=app/", app, b"").status, 200);
    assert_eq!(call(port, "GET", "/v1/kv?prefix=ap", app, b"").status, 403, "a prefix wider than the grant");
    assert_eq!(call(port, "GET", "/v1/kv", app, b"").status, 403, "a listing of everything");
    assert_eq!(call(port, "DELETE", "/v1/kv/other", app, b"").status, 403);

    // The operator writes anywhere; the reader reads config/ and cannot write it.
    assert_eq!(call(port, "PUT", "/v1/kv/config/a", ops, b"2").status, 201);
    assert_eq!(call(port, "GET", "/v1/kv/config/a", ro, b"").text(), "2");
    assert_eq!(call(port, "PUT", "/v1/kv/config/a", ro, b"3").status, 403, "a read token wrote");
    assert_eq!(call(port, "DELETE", "/v1/kv/config/a", ro, b"").status, 403);
    assert_eq!(call(port, "GET", "/v1/kv/app/a", ro, b"").status, 403);
    assert_eq!(call(port, "GET", "/v1/kv", ops, b"").status, 200);
    // The original's routes follow the same rules.
    assert_eq!(call(port, "POST", "/set/app/b", app, b"value=4").status, 200);
    assert_eq!(call(port, "GET", "/get/app/b", app, b"").text(), "4");
    assert_eq!(call(port, "POST", "/set/config/b", ro, b"value=4").status, 403);
    // Any valid token may see the node.
    assert_eq!(call(port, "GET", "/status", ro, b"").status, 200);
    assert_eq!(call(port, "GET", "/metrics", app, b"").status, 200);
    assert_eq!(call(port, "GET", "/v1/members", ro, b"").status, 200);
    assert_eq!(
        call(port, "GET", "/v1/kv/config/a", ro, b"").text(),
        "2",
        "the refused writes changed nothing"
    );

    let log = node.log_text();
    assert!(!log.contains("0123456789abcdef"), "a token reached the log:\n{log}");
}

#[test]
fn lease_routes_need_write_on_every_key_and_reading_them_read_on_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    write_tokens(&tokens, &format!("{TOKENS}all-reader-0123456789 read\n"));
    let node = node_with_tokens(dir.path(), &tokens, "ops-0123456789abcdef");
    let port = node.port;
    let (ops, app, ro, reader) = (
        Some("ops-0123456789abcdef"),
        Some("app-0123456789abcdef"),
        Some("ro-0123456789abcdef"),
        Some("all-reader-0123456789"),
    );
    let grant = br#"{"ttl_s":30}"#;
    assert_eq!(call(port, "POST", "/v1/leases", None, grant).status, 401);
    for token in [app, ro, reader] {
        let refused = call(port, "POST", "/v1/leases", token, grant);
        assert_eq!(
            (refused.status, refused.json()["code"].as_str()),
            (403, Some("token_denied")),
            "{token:?}"
        );
    }
    let granted = call(port, "POST", "/v1/leases", ops, grant);
    assert_eq!(granted.status, 201, "{}", granted.text());
    let id = granted.json()["id"].as_str().unwrap().to_owned();
    // A key under the app's prefix may be attached by the app.
    assert_eq!(call(port, "PUT", &format!("/v1/kv/app/held?lease={id}"), app, b"1").status, 201);
    for (method, path) in
        [("POST", format!("/v1/leases/{id}/keepalive")), ("DELETE", format!("/v1/leases/{id}"))]
    {
        assert_eq!(call(port, method, &path, app, b"").status, 403, "{method} {path} with a prefix token");
        assert_eq!(call(port, method, &path, reader, b"").status, 403, "{method} {path} with a read token");
    }
    assert_eq!(call(port, "GET", &format!("/v1/leases/{id}"), ro, b"").status, 403, "a prefix reader");
    let seen = call(port, "GET", &format!("/v1/leases/{id}"), reader, b"");
    assert_eq!(seen.status, 200, "{}", seen.text());
    assert_eq!(seen.json()["keys"], serde_json::json!(["app/held"]));
    assert_eq!(call(port, "POST", &format!("/v1/leases/{id}/keepalive"), ops, b"").status, 200);
    assert_eq!(call(port, "DELETE", &format!("/v1/leases/{id}"), ops, b"").status, 200);
    assert_eq!(call(port, "GET", "/v1/kv/app/held", app, b"").status, 404, "the revoke kept the key");
}

#[test]
fn sighup_rereads_the_tokens_and_a_bad_file_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    write_tokens(&tokens, "old-0123456789abcdef write\n");
    let node = node_with_tokens(dir.path(), &tokens, "old-0123456789abcdef");
    let port = node.port;
    assert_eq!(call(port, "PUT", "/v1/kv/k", Some("old-0123456789abcdef"), b"1").status, 201);

    write_tokens(&tokens, "new-0123456789abcdef write\n");
    node.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(Duration::from_secs(5), "the new token to be taken", || {
        (call(port, "GET", "/v1/kv/k", Some("new-0123456789abcdef"), b"").status == 200).then_some(())
    });
    assert_eq!(
        call(port, "GET", "/v1/kv/k", Some("old-0123456789abcdef"), b"").status,
        401,
        "the old token lives on"
    );

    // A bad file (here: readable by every local user) is refused; the tokens in force stay.
    std::fs::write(&tokens, "other-0123456789abcdef write\n").unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
    node.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(Duration::from_secs(5), "the refusal to be logged", || {
        node.log_text().contains("the tokens in force are kept").then_some(())
    });
    assert_eq!(call(port, "GET", "/v1/kv/k", Some("new-0123456789abcdef"), b"").text(), "1");
    assert_eq!(call(port, "GET", "/v1/kv/k", Some("other-0123456789abcdef"), b"").status, 401);
    assert!(node.is_running());
    assert!(!node.log_text().contains("0123456789abcdef"), "a token reached the log");
}

/// A one-node cluster with `--auth-tokens`, leading (asked with `token`).
fn node_with_tokens(dir: &Path, tokens: &Path, token: &str) -> Daemon {
    let port = free_ports(1)[0];
    let port_text = port.to_string();
    let data_dir = dir.join("data");
    let mut args = vec!["--port", &port_text, "--data-dir", data_dir.to_str().unwrap()];
    args.extend(["--auth-tokens", tokens.to_str().unwrap()]);
    args.extend(FAST_TIMINGS);
    let mut node = Daemon::new(dir, port, &args);
    node.start().unwrap();
    wait_for(Duration::from_secs(10), "the node to lead", || {
        let status = call(port, "GET", "/status", Some(token), b"");
        (status.status == 200 && status.json()["state"] == "leader").then_some(())
    });
    node
}

#[test]
fn a_tokens_file_others_can_read_or_that_is_malformed_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    for (text, mode, expected) in [
        ("t-0123456789abcdef write\n", 0o644, "0644"),
        ("t-0123456789abcdef sometimes\n", 0o600, "line 1"),
        ("# nothing\n", 0o600, "no tokens"),
    ] {
        std::fs::write(&tokens, text).unwrap();
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(mode)).unwrap();
        let port = free_ports(1)[0];
        let port_text = port.to_string();
        let data_dir = dir.path().join("data");
        let args = ["--port", &port_text, "--data-dir", data_dir.to_str().unwrap(), "--auth-tokens"];
        let mut args = args.to_vec();
        args.push(tokens.to_str().unwrap());
        let mut node = Daemon::new(dir.path(), port, &args);
        node.spawn();
        let status = node.wait_exit(Duration::from_secs(10));
        let log = node.log_text();
        assert!(!status.success(), "started with {text:?} mode {mode:o}");
        assert!(log.contains("--auth-tokens") && log.contains(expected), "{expected}: {log}");
        assert!(!log.contains("0123456789abcdef"), "a token reached the log: {log}");
    }
}

#[test]
fn sighup_without_tokens_does_not_stop_the_node() {
    let single = Single::start(&[]);
    single.node.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(Duration::from_secs(5), "the SIGHUP to be logged", || {
        single.node.log_text().contains("nothing to reload").then_some(())
    });
    assert_eq!(put(single.port(), "/v1/kv/k", b"v").status, 201);
}

/// Secrets never leave the node: not the cluster secret nor any token appears in
/// `/status`, `/metrics`, an error answer (even one refusing that very token) or the log.
#[test]
fn the_secret_and_the_tokens_never_appear_in_status_metrics_errors_or_logs() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    write_tokens(&tokens, "tok-5ec2e7-5ec2e7 write\n");
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "sec-5ec2e7-5ec2e7").unwrap();
    let port = free_ports(1)[0];
    let port_text = port.to_string();
    let data_dir = dir.path().join("data");
    let mut args = vec!["--port", &port_text, "--data-dir", data_dir.to_str().unwrap()];
    args.extend([
        "--auth-tokens",
        tokens.to_str().unwrap(),
        "--cluster-secret-file",
        secret_file.to_str().unwrap(),
    ]);
    args.extend(FAST_TIMINGS);
    let mut node = Daemon::new(dir.path(), port, &args);
    node.start().unwrap();
    let token = Some("tok-5ec2e7-5ec2e7");
    wait_for(Duration::from_secs(10), "the node to lead", || {
        (call(port, "GET", "/status", token, b"").json()["state"] == "leader").then_some(())
    });
    assert_eq!(call(port, "PUT", "/v1/kv/k", token, b"v").status, 201);
    // `/status` says which protections are on, and never a value.
    let status = call(port, "GET", "/status", token, b"").json();
    assert_eq!(
        status["tls"],
        serde_json::json!({"enabled": false, "mutual": false, "client_ca": false, "accept_plain": false})
    );
    assert_eq!(status["auth"], serde_json::json!({"tokens": true, "cluster_secret": true}));
    let mut seen = vec![
        call(port, "GET", "/status", token, b"").text(),
        call(port, "GET", "/metrics", token, b"").text(),
        call(port, "GET", "/v1/members", token, b"").text(),
        call(port, "GET", "/v1/kv/k", Some("tok-5ec2e7-5ec2e8"), b"").text(),
    ];
    let wrong_secret = [("X-Mmapd-Cluster-Secret", "sec-5ec2e7-5ec2e8")];
    seen.push(request(port, "POST", "/raft/messages", &wrong_secret, b"").unwrap().text());
    seen.push(node.log_text());
    for text in &seen {
        assert!(!text.contains("5ec2e7"), "a secret or token left the node: {text}");
    }
}

/// A follower shows the leader's view of the members (match index, last contact) with
/// tokens on: it asks the leader on the peer route `GET /raft/members` with the
/// cluster secret, which needs no client token (it used to ask `/v1/members?local=1`
/// without one, got 401 and showed its own view). The peer route refuses a request
/// without the secret; the public route still needs a token.
#[test]
fn a_follower_shows_the_leaders_member_view_with_tokens_on() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    write_tokens(&tokens, "ops-0123456789abcdef write\n");
    let secret = dir.path().join("secret");
    write_tokens(&secret, "cluster-secret-for-the-view\n");
    let token = Some("ops-0123456789abcdef");
    let ports = free_ports(3);
    let peers = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let mut nodes: Vec<Daemon> = ports
        .iter()
        .map(|&port| {
            let port_text = port.to_string();
            let data_dir = dir.path().join(format!("node-{port}"));
            let mut args =
                vec!["--port", &port_text, "--peers", &peers, "--data-dir", data_dir.to_str().unwrap()];
            args.extend(["--auth-tokens", tokens.to_str().unwrap()]);
            args.extend(["--cluster-secret-file", secret.to_str().unwrap()]);
            args.extend(FAST_TIMINGS);
            Daemon::new(dir.path(), port, &args)
        })
        .collect();
    nodes.iter_mut().for_each(Daemon::spawn);
    for node in &mut nodes {
        node.wait_started().unwrap();
    }
    let authorization = [("Authorization", "Bearer ops-0123456789abcdef")];
    let leader = wait_for(Duration::from_secs(10), "a leader", || {
        nodes.iter().position(|node| {
            // Until every node has started, a node answers only its peers' probes.
            let status = request(node.port, "GET", "/status", &authorization, b"");
            status.is_ok_and(|status| status.status == 200 && status.json()["state"] == "leader")
        })
    });
    let follower = (leader + 1) % 3;
    // A follower forwards a write once it knows the leader (its first append from it).
    let written = wait_for(Duration::from_secs(10), "the follower to forward a write", || {
        let status = call(nodes[follower].port, "PUT", "/v1/kv/k", token, b"v").status;
        (status != 503).then_some(status)
    });
    assert!(written == 201 || written == 200, "a write through the follower answered {written}");
    let leaders_view = |list: &serde_json::Value| {
        let members = list["members"].as_array()?;
        (members.len() == 3
            && members.iter().all(|member| {
                member["match_index"].as_u64().is_some_and(|m| m > 0) && member["last_contact_ms"].is_u64()
            }))
        .then_some(())
    };
    wait_for(Duration::from_secs(5), "the leader's view on the follower", || {
        let response = call(nodes[follower].port, "GET", "/v1/members", token, b"");
        (response.status == 200).then(|| response.json()).as_ref().and_then(leaders_view)
    });
    // The same through mmapd-admin on the follower's socket (which takes no token).
    let socket = dir.path().join(format!("node-{}", nodes[follower].port)).join("admin.sock");
    wait_for(Duration::from_secs(5), "the leader's view through mmapd-admin", || {
        let output = admin(&["--socket", socket.to_str().unwrap(), "member", "list", "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        leaders_view(&list)
    });
    // The peer route takes the secret, not a token; the public one a token.
    let leader_port = nodes[leader].port;
    assert_eq!(call(leader_port, "GET", "/raft/members", token, b"").status, 401);
    let with_secret = [("x-mmapd-cluster-secret", "cluster-secret-for-the-view")];
    let response = request(leader_port, "GET", "/raft/members", &with_secret, b"").unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(leaders_view(&response.json()).is_some(), "{}", response.text());
    assert_eq!(request(leader_port, "GET", "/v1/members", &with_secret, b"").unwrap().status, 401);
    assert!(
        !nodes.iter().any(|node| node.log_text().contains("0123456789abcdef")),
        "a token reached the log"
    );
}
