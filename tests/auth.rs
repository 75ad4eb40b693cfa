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
