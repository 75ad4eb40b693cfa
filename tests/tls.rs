//! TLS on the port (`--tls-cert`, `--tls-key`), with real processes and certificates
//! the test makes itself (tests/tls/pki.rs): HTTPS for clients, plain HTTP refused
//! with a quick 400, files that cannot be used refused naming the file and never
//! quoting the key.

#[path = "tls/client.rs"]
mod client;
mod common;
#[path = "tls/pki.rs"]
mod pki;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use client::Https;
use common::*;
use pki::{Ca, Issued};

/// Starts one node on `ip` with `args` (plus its port, data directory and the fast
/// timings) and waits until it accepts connections.
fn start_node(dir: &std::path::Path, ip: &str, args: &[&str]) -> Daemon {
    let mut last_error = String::new();
    for _ in 0..3 {
        let port = free_ports(1)[0];
        let port_text = port.to_string();
        let data_dir = dir.join(format!("data-{ip}-{port}"));
        let mut all = vec!["--ip", ip, "--port", &port_text, "--data-dir", data_dir.to_str().unwrap()];
        all.extend(FAST_TIMINGS);
        all.extend(args);
        let mut node = Daemon::new(dir, port, &all).with_ip(ip);
        match node.start() {
            Ok(()) => return node,
            Err(error) => last_error = error,
        }
    }
    panic!("node did not start: {last_error}");
}

/// A one-node cluster serving HTTPS with a certificate for 127.0.0.1.
fn single_tls_node(dir: &std::path::Path, ca: &Ca, extra: &[&str]) -> (Daemon, Issued) {
    let issued = ca.issue(dir, "node", &["127.0.0.1", "localhost"]);
    let mut args = vec!["--tls-cert", issued.cert_arg(), "--tls-key", issued.key_arg()];
    args.extend(extra);
    let node = start_node(dir, "127.0.0.1", &args);
    (node, issued)
}

#[test]
fn a_node_with_a_certificate_serves_https_to_a_client_that_trusts_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let (node, issued) = single_tls_node(dir.path(), &ca, &[]);
    let https = Https::new(&ca.path, None);
    wait_for(Duration::from_secs(5), "the node to lead", || {
        (https.status("127.0.0.1", node.port)?["state"] == "leader").then_some(())
    });
    let response = https.put("127.0.0.1", node.port, "/v1/kv/greeting", b"hello").unwrap();
    assert_eq!(response.status, 201, "{}", response.text());
    let response = https.get("127.0.0.1", node.port, "/v1/kv/greeting").unwrap();
    assert_eq!((response.status, response.text()), (200, "hello".to_owned()));
    // A client that trusts another CA does not get through the handshake.
    let other = Ca::new(dir.path(), "other-ca");
    assert!(Https::new(&other.path, None).get("127.0.0.1", node.port, "/status").is_err());
    let log = node.log_text();
    assert!(!log.contains(issued.key_pem.lines().nth(1).unwrap()), "the key is in the log");
}

/// Plain HTTP on a TLS port is answered at once with a plain-text 400 that says
/// HTTPS is needed (not a hang until a handshake timeout), and the connection closes.
#[test]
fn plain_http_on_a_tls_port_gets_a_quick_400_saying_https_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let (node, _) = single_tls_node(dir.path(), &ca, &[]);
    let started = Instant::now();
    let response = request(node.port, "GET", "/status", &[], b"").expect("an answer, not a reset");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert_eq!(response.status, 400);
    assert!(response.text().contains("requires HTTPS"), "{}", response.text());
    // A write with a body is refused the same way, and changes nothing.
    let response = request(node.port, "PUT", "/v1/kv/k", &[], &vec![b'x'; 100_000]).expect("an answer");
    assert_eq!(response.status, 400);
    let https = Https::new(&ca.path, None);
    let response = wait_for(Duration::from_secs(5), "an HTTPS answer", || {
        let response = https.get("127.0.0.1", node.port, "/v1/kv/k").ok()?;
        (response.status != 503).then_some(response)
    });
    assert_eq!(response.status, 404, "{}", response.text());
}

/// A client that starts a handshake and stops (one byte of a ClientHello) holds one
/// connection, not the node: others are served meanwhile, and the node closes the
/// stalled one after its handshake timeout.
#[test]
fn a_handshake_that_stops_half_way_does_not_hold_up_other_clients() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let (node, _) = single_tls_node(dir.path(), &ca, &[]);
    let https = Https::new(&ca.path, None);
    let mut stalled: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut tcp = TcpStream::connect(("127.0.0.1", node.port)).unwrap();
            tcp.write_all(&[0x16, 0x03, 0x01]).unwrap();
            tcp
        })
        .collect();
    let garbage = {
        let mut tcp = TcpStream::connect(("127.0.0.1", node.port)).unwrap();
        tcp.write_all(&[0x16; 64]).unwrap();
        tcp
    };
    for i in 0..5 {
        let response = https.put("127.0.0.1", node.port, &format!("/v1/kv/k{i}"), b"v").unwrap();
        assert!(matches!(response.status, 200 | 201), "{}", response.text());
    }
    drop(garbage);
    // The node ends a stalled handshake after its timeout (10 s).
    let mut first = stalled.remove(0);
    first.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = first.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a stalled handshake was held {:?}",
        started.elapsed()
    );
}

/// A certificate or key that cannot be used stops the start with one line naming the
/// flag and the file; the key's contents are never printed.
#[test]
fn tls_files_that_cannot_be_used_are_refused_naming_the_file_without_quoting_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let good = ca.issue(dir.path(), "good", &["127.0.0.1"]);
    let other = ca.issue(dir.path(), "other", &["127.0.0.1"]);
    let garbled = dir.path().join("garbled.key");
    let mut lines: Vec<&str> = good.key_pem.lines().collect();
    let secret_line = lines[1].to_owned();
    lines.insert(2, "not base64 !!!");
    std::fs::write(&garbled, lines.join("\n")).unwrap();
    let missing = dir.path().join("missing.pem");
    let cases: [(&str, &str, &str); 4] = [
        (good.cert_arg(), ca.arg(), "--tls-key"), // a certificate where the key should be
        (good.key_arg(), good.key_arg(), "--tls-cert"), // a key where the certificate should be
        (good.cert_arg(), other.key_arg(), "--tls-key"), // the key of another certificate
        (good.cert_arg(), garbled.to_str().unwrap(), "--tls-key"), // a damaged key
    ];
    for (cert, key, flag) in cases {
        let output = std::process::Command::new(MMAPD)
            .args(["--port", "1", "--data-dir"])
            .arg(dir.path().join("never"))
            .args(["--tls-cert", cert, "--tls-key", key])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        let text = stderr(&output);
        let named = if flag == "--tls-key" { key } else { cert };
        assert!(text.contains(flag) && text.contains(named), "{text}");
        assert_eq!(text.trim_end().lines().count(), 1, "{text}");
        assert!(!text.contains(&secret_line) && !text.contains("not base64"), "the key is quoted: {text}");
    }
    let output = std::process::Command::new(MMAPD)
        .args(["--port", "1", "--tls-cert", missing.to_str().unwrap(), "--tls-key", good.key_arg()])
        .output()
        .unwrap();
    assert!(stderr(&output).contains("missing.pem"), "{}", stderr(&output));
    let output = std::process::Command::new(MMAPD)
        .args(["--port", "1", "--tls-cert", good.cert_arg()])
        .output()
        .unwrap();
    assert!(!output.status.success() && stderr(&output).contains("--tls-key"), "{}", stderr(&output));
}
