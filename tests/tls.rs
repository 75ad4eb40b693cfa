//! TLS on the port (`--tls-cert`, `--tls-key`, `--tls-ca`, `--client-ca`), with real
//! processes and certificates the test makes itself (tests/tls/pki.rs): HTTPS for
//! clients, plain HTTP refused with a quick 400, files that cannot be used refused
//! naming the file and never quoting the key; a 3-node cluster over mutual TLS, a node
//! with another CA's certificate kept out, a certificate for another address unable to
//! speak for a member, and `--client-ca` refusing clients without a certificate;
//! SIGHUP putting new certificates, CAs and tokens in force (a bad new file logged and
//! the old kept), and a running cluster moved to a new CA by SIGHUPs alone. Hostile
//! input: thousands of idle, half-done and garbage TLS connections within the connection
//! limit leave the node serving with bounded memory and no new threads, and past the
//! limit they wait in the accept queue until the timeouts free slots.
//!
//! Nodes of a cluster listen on distinct loopback addresses (127.0.0.1, .2, .3): a
//! certificate names a host, not a port, so members must differ by host for one
//! member's certificate to be told from another's.

#[path = "tls/client.rs"]
mod client;
mod common;
#[path = "tls/pki.rs"]
mod pki;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{plain_request, Https};
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

/// A log line without its colours (`ESC [ ... m`).
fn strip_colours(line: &str) -> String {
    let mut parts = line.split('\x1b');
    let mut plain = parts.next().unwrap_or_default().to_owned();
    for part in parts {
        plain.push_str(part.split_once('m').map_or(part, |(_, rest)| rest));
    }
    plain
}

/// What `/proc/PID/status` says of a process: (VmRSS in KiB, threads).
fn rss_and_threads(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|line| line.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (field("VmRSS:"), field("Threads:"))
}

/// Raises this process's soft descriptor limit to its hard limit (the node's flood
/// needs more than the common 1024) and fails, rather than skip, if that is too few.
fn raise_own_descriptor_limit(needed: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    assert!(hard >= needed, "this test needs {needed} descriptors; the hard limit is {hard}");
}

/// The client connection limit the node logged at start, and the line.
fn connection_limit(node: &Daemon) -> (usize, String) {
    let line = node
        .log_text()
        .lines()
        .find(|line| line.contains("connection limit derived"))
        .map(str::to_owned)
        .expect("no connection limit logged");
    let limit = strip_colours(&line)
        .split_once("client_connections=")
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no client_connections in {line:?}"));
    (limit, line)
}

const IDLE_HANDSHAKES: usize = 2000;
const HALF_HELLOS: usize = 500;
const GARBAGE: usize = 100;
/// What one hostile connection may cost the node in resident memory: rustls's buffers
/// (a 16 KiB record either way at most while idle), hyper's read buffer (8 KiB before
/// any request), a task and the socket bookkeeping come to well under this.
const RSS_PER_CONNECTION_KIB: u64 = 64;

/// Thousands of hostile TLS connections at once (2,000 finished handshakes that send
/// nothing more, 500 that stop half way through a ClientHello, 100 that send garbage,
/// half of it looking like a TLS record) fit in the node's connection limit and do not
/// stop it serving: an HTTPS client writes and reads meanwhile, the node's memory grows
/// by less than 64 KiB per connection and its threads not at all (a task each, no
/// thread), and every idle one is closed by the existing 10 s timeouts (the handshake
/// timeout, hyper's header timeout), with no panic.
#[test]
fn thousands_of_idle_half_done_and_garbage_tls_connections_leave_the_node_serving() {
    let hostile = IDLE_HANDSHAKES + HALF_HELLOS + GARBAGE;
    raise_own_descriptor_limit(hostile as u64 + 256);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let (node, _) = single_tls_node(dir.path(), &ca, &[]);
    let port = node.port;
    let https = Https::new(&ca.path, None);
    wait_for(Duration::from_secs(5), "the node to lead", || {
        (https.status("127.0.0.1", port)?["state"] == "leader").then_some(())
    });
    let (limit, line) = connection_limit(&node);
    assert!(hostile + 16 < limit, "the flood ({hostile}) does not fit the limit {limit}: {line}");
    let (rss_before, threads_before) = rss_and_threads(node.pid());

    let started = Instant::now();
    // Finished handshakes, from four threads (a handshake costs the node a few ms).
    let idle: Vec<(rustls::ClientConnection, TcpStream)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let https = https.clone();
                scope.spawn(move || {
                    (0..IDLE_HANDSHAKES / 4)
                        .map(|i| {
                            https
                                .handshake("127.0.0.1", port)
                                .unwrap_or_else(|e| panic!("handshake {i}: {e}"))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|worker| worker.join().unwrap()).collect()
    });
    let handshakes_took = started.elapsed();
    let hello = https.client_hello("127.0.0.1");
    assert!(hello.len() > 100 && hello[0] == 0x16, "not a ClientHello: {hello:?}");
    let half: Vec<TcpStream> = (0..HALF_HELLOS)
        .map(|_| {
            let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
            tcp.write_all(&hello[..hello.len() / 2]).unwrap();
            tcp
        })
        .collect();
    // Garbage: half starts as a TLS handshake record and goes on with nonsense, half is
    // not TLS at all (the node answers that with a 400 and closes).
    let garbage: Vec<TcpStream> = (0..GARBAGE)
        .map(|i| {
            let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut bytes: Vec<u8> = (0..512u32).map(|b| (b * 37 + i as u32 * 11) as u8).collect();
            bytes[0] = if i % 2 == 0 { 0x16 } else { 0x00 };
            let _ = tcp.write_all(&bytes);
            tcp
        })
        .collect();

    // Served meanwhile, and quickly: the hostile connections hold slots, not the node.
    for i in 0..10 {
        let asked = Instant::now();
        let response = https.put("127.0.0.1", port, &format!("/v1/kv/during-{i}"), b"v").unwrap();
        assert!(matches!(response.status, 200 | 201), "{}", response.text());
        let response = https.get("127.0.0.1", port, &format!("/v1/kv/during-{i}")).unwrap();
        assert_eq!((response.status, response.text()), (200, "v".to_owned()));
        assert!(asked.elapsed() < Duration::from_secs(2), "a write and read took {:?}", asked.elapsed());
    }
    let (rss_during, threads_during) = rss_and_threads(node.pid());
    let grown = rss_during.saturating_sub(rss_before);
    assert!(
        grown < RSS_PER_CONNECTION_KIB * hostile as u64,
        "VmRSS grew by {grown} KiB for {hostile} connections (from {rss_before} KiB)"
    );
    assert!(
        threads_during <= threads_before + 2,
        "threads: {threads_before} before, {threads_during} during"
    );
    eprintln!(
        "{IDLE_HANDSHAKES} handshakes in {handshakes_took:?}; VmRSS {rss_before} -> {rss_during} KiB; \
         threads {threads_before} -> {threads_during}"
    );

    // Every hostile connection is closed by the node within its timeouts (10 s from
    // its start, for the last opened), never left open: reading one gets an end.
    let deadline = started + Duration::from_secs(10) + handshakes_took + Duration::from_secs(5);
    let closed = |tcp: &mut TcpStream, what: &str| {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
        tcp.set_read_timeout(Some(left)).unwrap();
        let mut sink = [0u8; 4096];
        loop {
            match tcp.read(&mut sink) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return,
                Err(error) => panic!("{what} still open after {:?}: {error}", started.elapsed()),
            }
        }
    };
    for (_, mut tcp) in idle {
        closed(&mut tcp, "an idle TLS connection");
    }
    for mut tcp in half {
        closed(&mut tcp, "a half-sent ClientHello");
    }
    for mut tcp in garbage {
        closed(&mut tcp, "a garbage connection");
    }
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    let response = https.get("127.0.0.1", port, "/v1/kv/during-3").unwrap();
    assert_eq!(response.status, 200);
    assert!(node.is_running());
    let log = node.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

/// Past the connection limit: a node whose descriptor limit (600) leaves a few hundred
/// client connections gets that many idle TLS connections (finished handshakes) and 200
/// more that send half a ClientHello. Those past the limit wait in the kernel's accept
/// queue (the node answers them nothing yet); an HTTPS client that comes meanwhile waits
/// there too, and is served once the node's 10 s timeouts close the idle ones, not
/// refused or left hanging; the node stays up.
#[test]
fn idle_tls_connections_past_the_limit_wait_and_a_client_is_served_when_the_timeouts_free_slots() {
    raise_own_descriptor_limit(2000);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let issued = ca.issue(dir.path(), "node", &["127.0.0.1"]);
    let port = free_ports(1)[0];
    let port_text = port.to_string();
    let data_dir = dir.path().join("data");
    let mut args = vec!["--port", &port_text, "--data-dir", data_dir.to_str().unwrap()];
    args.extend(FAST_TIMINGS);
    args.extend(["--tls-cert", issued.cert_arg(), "--tls-key", issued.key_arg()]);
    let mut node = Daemon::new(dir.path(), port, &args).nofile_limit(600, 600);
    node.start().unwrap();
    let https = Https::new(&ca.path, None);
    wait_for(Duration::from_secs(5), "the node to lead", || {
        (https.status("127.0.0.1", port)?["state"] == "leader").then_some(())
    });
    let (limit, line) = connection_limit(&node);
    assert!((100..600).contains(&limit), "{line}");

    let started = Instant::now();
    let idle: Vec<(rustls::ClientConnection, TcpStream)> = (0..limit)
        .map(|i| https.handshake("127.0.0.1", port).unwrap_or_else(|e| panic!("handshake {i}: {e}")))
        .collect();
    let filled = started.elapsed();
    let hello = https.client_hello("127.0.0.1");
    let queued: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
            tcp.write_all(&hello[..hello.len() / 2]).unwrap();
            tcp
        })
        .collect();
    // Every slot is held: a new client is not answered at once (it waits in the queue)...
    let mut probe = TcpStream::connect(("127.0.0.1", port)).unwrap();
    probe.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    probe.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut byte = [0u8; 1];
    let early = probe.read(&mut byte);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a connection past the limit of {limit} was answered at once: {early:?}"
    );
    // ...and an HTTPS client is served once the idle ones time out (10 s after they
    // were opened), within the timeouts and a margin.
    let response = wait_for(Duration::from_secs(25), "an HTTPS write past the flood", || {
        https.put("127.0.0.1", port, "/v1/kv/after-the-flood", b"yes").ok()
    });
    assert!(matches!(response.status, 200 | 201), "{}", response.text());
    let served = started.elapsed();
    assert!(served < filled + Duration::from_secs(20), "served after {served:?} (filled in {filled:?})");
    assert_eq!(https.get("127.0.0.1", port, "/v1/kv/after-the-flood").unwrap().text(), "yes");
    eprintln!("limit {limit}: filled in {filled:?}, a client served after {served:?}");
    drop((idle, queued));
    assert!(node.is_running());
    let log = node.log_text();
    assert!(!log.contains("panicked") && !log.contains("Too many open files"), "{log}");
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

// ---------------------------------------------------------------- clusters over mutual TLS

const CLUSTER_IPS: [&str; 3] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];

/// Three nodes on 127.0.0.1, .2 and .3, each with its certificate from `ca` naming its
/// address, talking to each other over mutual TLS.
struct TlsCluster {
    nodes: Vec<Daemon>,
    certificates: Vec<Issued>,
    https: Https,
}

impl TlsCluster {
    fn start(dir: &std::path::Path, ca: &Ca, extra: &[&str]) -> TlsCluster {
        TlsCluster::start_with(dir, ca, extra, Https::new(&ca.path, None))
    }

    /// `start`, asking the nodes with `https` (a client certificate, a token).
    fn start_with(dir: &std::path::Path, ca: &Ca, extra: &[&str], https: Https) -> TlsCluster {
        let certificates: Vec<Issued> =
            CLUSTER_IPS.iter().enumerate().map(|(i, ip)| ca.issue(dir, &format!("node{i}"), &[ip])).collect();
        let mut last_error = String::new();
        for _ in 0..3 {
            let ports = free_ports(3);
            let peers: Vec<String> =
                CLUSTER_IPS.iter().zip(&ports).map(|(ip, port)| format!("{ip}:{port}")).collect();
            let peers = peers.join(",");
            let mut nodes: Vec<Daemon> = (0..3)
                .map(|i| {
                    let port = ports[i].to_string();
                    let data_dir = dir.join(format!("node{i}-{port}"));
                    let mut args = vec!["--ip", CLUSTER_IPS[i], "--port", &port, "--peers", &peers];
                    args.extend(["--data-dir", data_dir.to_str().unwrap()]);
                    args.extend([
                        "--tls-cert",
                        certificates[i].cert_arg(),
                        "--tls-key",
                        certificates[i].key_arg(),
                    ]);
                    args.extend(["--tls-ca", ca.arg()]);
                    args.extend(FAST_TIMINGS);
                    args.extend(extra);
                    Daemon::new(dir, ports[i], &args).with_ip(CLUSTER_IPS[i])
                })
                .collect();
            nodes.iter_mut().for_each(Daemon::spawn);
            match nodes.iter_mut().try_for_each(Daemon::wait_started) {
                Ok(()) => {
                    let cluster = TlsCluster { nodes, certificates, https: https.clone() };
                    cluster.wait_for_leader();
                    return cluster;
                }
                Err(error) => last_error = error,
            }
        }
        panic!("cluster did not start: {last_error}");
    }

    fn ip(&self, node: usize) -> &str {
        &self.nodes[node].ip
    }

    fn port(&self, node: usize) -> u16 {
        self.nodes[node].port
    }

    /// Waits until every node names the same leader at the same term over HTTPS.
    fn wait_for_leader(&self) -> usize {
        wait_for(Duration::from_secs(15), "the TLS cluster to agree on a leader", || {
            let mut agreed: Option<(String, u64)> = None;
            for node in &self.nodes {
                let status = self.https.status(&node.ip, node.port)?;
                let seen = (status["leader"].as_str()?.to_owned(), status["term"].as_u64()?);
                if agreed.get_or_insert_with(|| seen.clone()) != &seen {
                    return None;
                }
            }
            let leader = agreed?.0;
            self.nodes.iter().position(|node| node.address() == leader)
        })
    }

    fn members(&self, node: usize) -> Vec<String> {
        let response = self.https.get(self.ip(node), self.port(node), "/v1/members").unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        let mut members: Vec<String> = response.json()["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|member| member["address"].as_str().unwrap().to_owned())
            .collect();
        members.sort();
        members
    }

    /// No node's log holds a line of any node's private key.
    fn assert_no_key_in_logs(&self) {
        for node in &self.nodes {
            let log = node.log_text();
            for certificate in &self.certificates {
                for line in certificate.key_pem.lines().filter(|line| !line.starts_with("-----")) {
                    assert!(!log.contains(line), "a private key line is in the log of {}", node.address());
                }
            }
        }
    }
}

/// A 3-node cluster over mutual TLS elects a leader, and a write through any node
/// (followers forward it to the leader over TLS) reads back, linearizably, on every
/// node; `curl --cacert` reads it too, where curl is installed.
#[test]
fn a_three_node_tls_cluster_elects_a_leader_and_replicates_writes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let cluster = TlsCluster::start(dir.path(), &ca, &[]);
    let https = &cluster.https;
    for writer in 0..3 {
        let response =
            https.put(cluster.ip(writer), cluster.port(writer), &format!("/v1/kv/k{writer}"), b"v").unwrap();
        assert_eq!(response.status, 201, "node {writer}: {}", response.text());
        let body = format!("value=hello{writer}");
        let headers = [("Content-Type", "application/x-www-form-urlencoded")];
        let response = https
            .request(
                cluster.ip(writer),
                cluster.port(writer),
                "POST",
                &format!("/set/f{writer}"),
                &headers,
                body.as_bytes(),
            )
            .unwrap();
        assert_eq!((response.status, response.text()), (200, format!("hello{writer}")));
        for reader in 0..3 {
            let response =
                https.get(cluster.ip(reader), cluster.port(reader), &format!("/v1/kv/k{writer}")).unwrap();
            assert_eq!((response.status, response.text()), (200, "v".to_owned()), "node {reader}");
            let response =
                https.get(cluster.ip(reader), cluster.port(reader), &format!("/get/f{writer}")).unwrap();
            assert_eq!(response.text(), format!("hello{writer}"), "node {reader}");
        }
    }
    let expected: Vec<String> = cluster.nodes.iter().map(Daemon::address).collect();
    assert_eq!(cluster.members(1), expected);
    // Plain HTTP to a member of the cluster is refused like on a single node.
    let mut plain = std::net::TcpStream::connect((cluster.ip(2), cluster.port(2))).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    plain.write_all(b"GET /status HTTP/1.1\r\nHost: node\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert_eq!(parse_response(&answer).map(|r| r.status), Some(400), "{}", String::from_utf8_lossy(&answer));
    match std::process::Command::new("curl").arg("--version").output() {
        Ok(output) if output.status.success() => {
            let url = format!("https://{}:{}/v1/kv/k0", cluster.ip(2), cluster.port(2));
            let output = std::process::Command::new("curl")
                .args(["-sS", "--max-time", "10", "--cacert", ca.arg(), &url])
                .output()
                .unwrap();
            assert_eq!(stdout(&output), "v", "curl: {}", stderr(&output));
        }
        _ => eprintln!("curl is not installed: the rustls client's reads above stand for it"),
    }
    cluster.assert_no_key_in_logs();
    let status = https.get(cluster.ip(0), cluster.port(0), "/status").unwrap().text();
    assert!(
        !status.contains("PRIVATE KEY") && !status.contains(cluster.certificates[0].key_arg()),
        "{status}"
    );
}

/// The batch a forger sends: a heartbeat from `from` to `to` at term 0, which Raft
/// ignores as stale whoever sends it, so a test can send it without disturbing the
/// cluster and tell a refusal (403) from a delivery (204).
fn stale_heartbeat(from: u64, to: u64) -> Vec<u8> {
    use mmapd::raft::{Message, MessageBody};
    let message = Message { from, to, term: 0, body: MessageBody::Heartbeat { commit: 0, context: 0 } };
    let mut body = Vec::new();
    mmapd::transport::codec::encode_batch(&[message], &mut body);
    body
}

/// Sends `POST /raft/messages` to `node` over `https`, claiming to be `claimed`.
fn post_messages(
    https: &Https,
    cluster: &TlsCluster,
    node: usize,
    claimed: usize,
) -> std::io::Result<Response> {
    post_messages_from(https, cluster, node, claimed, claimed)
}

/// `post_messages` whose message says it is from `from`, whatever the headers claim.
fn post_messages_from(
    https: &Https,
    cluster: &TlsCluster,
    node: usize,
    claimed: usize,
    from: usize,
) -> std::io::Result<Response> {
    let claimed_address = cluster.nodes[claimed].address();
    let claimed_id = mmapd::server::cli::node_id(&claimed_address);
    let from = mmapd::server::cli::node_id(&cluster.nodes[from].address());
    let to = mmapd::server::cli::node_id(&cluster.nodes[node].address());
    let id_header = format!("{claimed_id:016x}");
    let headers = [
        ("Content-Type", "application/octet-stream"),
        ("x-mmapd-node-id", id_header.as_str()),
        ("x-mmapd-node-address", claimed_address.as_str()),
    ];
    https.request(
        cluster.ip(node),
        cluster.port(node),
        "POST",
        "/raft/messages",
        &headers,
        &stale_heartbeat(from, to),
    )
}

/// A certificate from the cluster's CA that names another address cannot speak for a
/// member: the node refuses (403, logged) messages claiming to be node 0 over it, and
/// takes the same messages over node 0's own certificate. A join under an address the
/// certificate does not name is refused the same way, and changes no member.
#[test]
fn a_certificate_that_names_another_address_cannot_speak_for_a_member() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let cluster = TlsCluster::start(dir.path(), &ca, &[]);
    let impostor = ca.issue(dir.path(), "impostor", &["127.0.0.9"]);
    let as_impostor = Https::new(&ca.path, Some(&impostor));
    let response = post_messages(&as_impostor, &cluster, 1, 0).unwrap();
    assert_eq!(response.status, 403, "{}", response.text());
    assert_eq!(response.json()["code"], "peer_refused");
    assert!(response.text().contains("does not name 127.0.0.1"), "{}", response.text());
    wait_for(Duration::from_secs(5), "the refusal in node 1's log", || {
        cluster.nodes[1]
            .log_text()
            .contains("one member's certificate cannot speak for another")
            .then_some(())
    });
    // Node 0's own certificate may speak for node 0: the same batch is delivered.
    let as_node0 = Https::new(&ca.path, Some(&cluster.certificates[0]));
    let response = post_messages(&as_node0, &cluster, 1, 0).unwrap();
    assert_eq!(response.status, 204, "{}", response.text());
    // ... but not for node 2: neither in the headers nor in the messages it carries.
    let response = post_messages(&as_node0, &cluster, 1, 2).unwrap();
    assert_eq!(response.status, 403, "{}", response.text());
    let response = post_messages_from(&as_node0, &cluster, 1, 0, 2).unwrap();
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(response.text().contains("speaks for node"), "{}", response.text());
    // A client without a certificate, or with one the CA did not sign, gets no further.
    let response = post_messages(&cluster.https, &cluster, 1, 0).unwrap();
    assert_eq!((response.status, response.json()["code"].as_str()), (403, Some("certificate_required")));
    // A join whose address the certificate does not name.
    let leader = cluster.wait_for_leader();
    let body = br#"{"address":"127.0.0.8:4000","learner":true}"#;
    let headers = [("Content-Type", "application/json")];
    let response = as_impostor
        .request(cluster.ip(leader), cluster.port(leader), "POST", "/raft/join", &headers, body)
        .unwrap();
    assert_eq!(response.status, 403, "{}", response.text());
    assert_eq!(cluster.members(leader).len(), 3);
    cluster.wait_for_leader();
}

/// A node whose certificate comes from another CA cannot join: the member it asks
/// refuses it in the handshake, before reading any request, and logs it; the cluster
/// goes on serving with its three members. A client with such a certificate cannot
/// send Raft messages either.
#[test]
fn a_node_with_a_certificate_from_another_ca_cannot_join_or_send_raft_messages() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let cluster = TlsCluster::start(dir.path(), &ca, &[]);
    let rogue_ca = Ca::new(dir.path(), "rogue-ca");
    let rogue = rogue_ca.issue(dir.path(), "rogue", &["127.0.0.4"]);
    // It trusts the cluster's CA (so it could check the members' certificates), but
    // its own certificate is another CA's.
    let both = dir.path().join("both-cas.pem");
    std::fs::write(
        &both,
        std::fs::read_to_string(&ca.path).unwrap() + &std::fs::read_to_string(&rogue_ca.path).unwrap(),
    )
    .unwrap();
    let join = cluster.nodes[0].address();
    let args = [
        "--join",
        &join,
        "--tls-cert",
        rogue.cert_arg(),
        "--tls-key",
        rogue.key_arg(),
        "--tls-ca",
        both.to_str().unwrap(),
    ];
    let joiner = start_node(dir.path(), "127.0.0.4", &args);
    wait_for(Duration::from_secs(10), "node 0 to log the refused handshake", || {
        cluster.nodes[0].log_text().contains("TLS handshake refused: certificate not accepted").then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(joiner.is_running());
    for node in 0..3 {
        assert_eq!(cluster.members(node).len(), 3, "node {node}");
    }
    let response = cluster.https.put(cluster.ip(1), cluster.port(1), "/v1/kv/still", b"serving").unwrap();
    assert_eq!(response.status, 201, "{}", response.text());
    let as_rogue = Https::new(&ca.path, Some(&rogue));
    assert!(
        post_messages(&as_rogue, &cluster, 2, 0).is_err(),
        "a rogue certificate got through the handshake"
    );
    // The client sees the failure before the node has written its log line.
    wait_for(Duration::from_secs(5), "node 2 to log the refused handshake", || {
        cluster.nodes[2].log_text().contains("TLS handshake refused").then_some(())
    });
}

/// With `--client-ca`, a client without a certificate is refused (403) on every route
/// but `/health`, one with a certificate from the client CA is served, and one with a
/// certificate from an unknown CA fails the handshake. A client certificate is no
/// peer's: peer routes refuse it.
#[test]
fn client_ca_refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let clients_ca = Ca::new(dir.path(), "clients-ca");
    let (node, _) = single_tls_node(dir.path(), &ca, &["--client-ca", clients_ca.arg()]);
    let anonymous = Https::new(&ca.path, None);
    let client = Https::new(&ca.path, Some(&clients_ca.issue(dir.path(), "app", &["app.example"])));
    wait_for(Duration::from_secs(5), "the node to lead", || {
        (client.status("127.0.0.1", node.port)?["state"] == "leader").then_some(())
    });
    for (method, path) in [("PUT", "/v1/kv/k"), ("GET", "/v1/kv/k"), ("GET", "/status"), ("GET", "/get/k")] {
        let response = anonymous.request("127.0.0.1", node.port, method, path, &[], b"v").unwrap();
        assert_eq!(response.status, 403, "{method} {path}: {}", response.text());
        assert_eq!(response.json()["code"], "certificate_required");
    }
    assert_eq!(anonymous.get("127.0.0.1", node.port, "/health").unwrap().status, 200);
    assert_eq!(client.put("127.0.0.1", node.port, "/v1/kv/k", b"v").unwrap().status, 201);
    assert_eq!(client.get("127.0.0.1", node.port, "/v1/kv/k").unwrap().text(), "v");
    let stranger = Https::new(
        &ca.path,
        Some(&Ca::new(dir.path(), "stranger-ca").issue(dir.path(), "s", &["s.example"])),
    );
    assert!(stranger.get("127.0.0.1", node.port, "/v1/kv/k").is_err());
    let response = client
        .request("127.0.0.1", node.port, "GET", "/raft/cluster?asker=0000000000000001", &[], b"")
        .unwrap();
    assert_eq!((response.status, response.json()["code"].as_str()), (403, Some("certificate_required")));
}

/// tonic's client over one hyper HTTP/2 connection (as bench/grpc_load.rs).
#[derive(Clone)]
struct Http2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower_service::Service<hyper::Request<tonic::body::Body>> for Http2 {
    type Response = hyper::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: hyper::Request<tonic::body::Body>) -> Self::Future {
        let mut sender = self.0.clone();
        Box::pin(async move { sender.send_request(request).await })
    }
}

/// A TLS handshake with `127.0.0.1:port` offering `alpn`: the protocol agreed, and the
/// stream.
async fn handshake_offering(
    ca: &Ca,
    port: u16,
    alpn: &[&[u8]],
) -> std::io::Result<(Option<Vec<u8>>, tokio_rustls::client::TlsStream<tokio::net::TcpStream>)> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&ca.path).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
    Ok((tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec), tls))
}

/// etcd's gRPC clients offer ALPN `h2` alone over TLS: the handshake agrees on it and
/// the etcd front serves them on the port. A client offering HTTP/1.1 as well keeps
/// HTTP/1.1, as before the front existed.
#[test]
fn a_grpc_client_offering_only_h2_over_tls_is_served_and_one_offering_both_keeps_http1() {
    use mmapd::server::etcd::proto::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let (node, _) = single_tls_node(dir.path(), &ca, &[]);
    let https = Https::new(&ca.path, None);
    wait_for(Duration::from_secs(5), "the node to lead", || {
        (https.status("127.0.0.1", node.port)?["state"] == "leader").then_some(())
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (agreed, _) = handshake_offering(&ca, node.port, &[b"h2", b"http/1.1"]).await.unwrap();
        assert_eq!(agreed.as_deref(), Some(&b"http/1.1"[..]));
        let (agreed, tls) = handshake_offering(&ca, node.port, &[b"h2"]).await.expect("an h2-only handshake");
        assert_eq!(agreed.as_deref(), Some(&b"h2"[..]));
        let (sender, connection) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(connection);
        let origin: hyper::Uri = format!("https://127.0.0.1:{}", node.port).parse().unwrap();
        let mut kv = KvClient::with_origin(Http2(sender), origin);
        let put = PutRequest { key: b"over-h2".to_vec(), value: b"yes".to_vec(), ..Default::default() };
        kv.put(put).await.expect("a Put over TLS");
        let range = kv.range(RangeRequest { key: b"over-h2".to_vec(), ..Default::default() }).await.unwrap();
        assert_eq!(range.get_ref().kvs[0].value, b"yes");
    });
}

/// TLS with peers needs `--tls-ca`, and a node's certificate must name its own
/// address: both refused at start with the reason.
#[test]
fn a_tls_node_with_peers_needs_a_ca_and_a_certificate_naming_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let wrong = ca.issue(dir.path(), "wrong", &["127.0.0.9"]);
    let run = |extra: &[&str]| {
        std::process::Command::new(MMAPD)
            .args(["--port", "3999", "--peers", "127.0.0.1:3999,127.0.0.2:3999", "--data-dir"])
            .arg(dir.path().join("never"))
            .args(["--tls-cert", wrong.cert_arg(), "--tls-key", wrong.key_arg()])
            .args(extra)
            .output()
            .unwrap()
    };
    let output = run(&[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--tls-ca"), "{}", stderr(&output));
    let output = run(&["--tls-ca", ca.arg()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("does not name 127.0.0.1"), "{}", stderr(&output));
}

// ---------------------------------------------------------------- --tls-accept-plain

/// With `--tls-accept-plain` one port serves plain HTTP and HTTPS.
#[test]
fn tls_accept_plain_serves_plain_http_and_https_on_one_port() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let (node, _) = single_tls_node(dir.path(), &ca, &["--tls-accept-plain"]);
    let https = Https::new(&ca.path, None);
    wait_for(Duration::from_secs(5), "the node to lead", || {
        (https.status("127.0.0.1", node.port)?["state"] == "leader").then_some(())
    });
    assert_eq!(put(node.port, "/v1/kv/plain", b"p").status, 201);
    assert_eq!(https.put("127.0.0.1", node.port, "/v1/kv/tls", b"t").unwrap().status, 201);
    assert_eq!(https.get("127.0.0.1", node.port, "/v1/kv/plain").unwrap().text(), "p");
    assert_eq!(get(node.port, "/v1/kv/tls").text(), "t");
}

/// `/status` over HTTPS, else over plain HTTP: a node may be either during a switch-over.
fn status_any(https: &Https, node: &Daemon) -> Option<serde_json::Value> {
    if let Some(status) = https.status(&node.ip, node.port) {
        return Some(status);
    }
    let response = plain_request(&node.ip, node.port, "GET", "/status", b"").ok()?;
    (response.status == 200).then(|| response.json())
}

/// A GET over HTTPS, else over plain HTTP.
fn get_any(https: &Https, node: &Daemon, path: &str) -> Option<Response> {
    https
        .get(&node.ip, node.port, path)
        .ok()
        .or_else(|| plain_request(&node.ip, node.port, "GET", path, b"").ok())
}

fn agreed_leader(https: &Https, nodes: &[Daemon]) -> usize {
    wait_for(Duration::from_secs(15), "every node to agree on a leader", || {
        let mut agreed: Option<(String, u64)> = None;
        for node in nodes {
            let status = status_any(https, node)?;
            let seen = (status["leader"].as_str()?.to_owned(), status["term"].as_u64()?);
            if agreed.get_or_insert_with(|| seen.clone()) != &seen {
                return None;
            }
        }
        let leader = agreed?.0;
        nodes.iter().position(|node| node.address() == leader)
    })
}

/// The documented switch-over of a running cluster from plain HTTP to TLS: a rolling
/// restart with `--tls-accept-plain` (each restarted node reaches the plain ones in
/// plain and is reached by them in plain), then one without (every node speaks TLS
/// first by then). After every restart the cluster agrees on a leader, takes a write
/// through the restarted node and serves every write so far on every node with a
/// linearizable read (which needs each node to reach the leader both ways). At the
/// end plain HTTP is refused everywhere.
#[test]
fn a_running_cluster_switches_to_tls_by_two_rolling_restarts_with_tls_accept_plain() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let https = Https::new(&ca.path, None);
    let certificates: Vec<Issued> = CLUSTER_IPS
        .iter()
        .enumerate()
        .map(|(i, ip)| ca.issue(dir.path(), &format!("node{i}"), &[ip]))
        .collect();
    let ports = free_ports(3);
    let peers: Vec<String> =
        CLUSTER_IPS.iter().zip(&ports).map(|(ip, port)| format!("{ip}:{port}")).collect();
    let peers = peers.join(",");
    let node = |i: usize, phase: usize| {
        let port = ports[i].to_string();
        let data_dir = dir.path().join(format!("node{i}"));
        let mut args = vec!["--ip", CLUSTER_IPS[i], "--port", &port, "--peers", &peers];
        args.extend(["--data-dir", data_dir.to_str().unwrap()]);
        args.extend(FAST_TIMINGS);
        if phase >= 1 {
            args.extend(["--tls-cert", certificates[i].cert_arg(), "--tls-key", certificates[i].key_arg()]);
            args.extend(["--tls-ca", ca.arg()]);
        }
        if phase == 1 {
            args.push("--tls-accept-plain");
        }
        Daemon::new(dir.path(), ports[i], &args).with_ip(CLUSTER_IPS[i])
    };
    let mut nodes: Vec<Daemon> = (0..3).map(|i| node(i, 0)).collect();
    nodes.iter_mut().for_each(Daemon::spawn);
    for node in &mut nodes {
        node.wait_started().unwrap();
    }
    agreed_leader(&https, &nodes);
    let response = plain_request(&nodes[0].ip, nodes[0].port, "PUT", "/v1/kv/before", b"plain").unwrap();
    assert_eq!(response.status, 201, "{}", response.text());
    let mut written = vec![("before".to_owned(), "plain".to_owned())];
    for phase in [1, 2] {
        for i in 0..3 {
            nodes[i].signal(nix::sys::signal::Signal::SIGTERM);
            assert!(nodes[i].wait_exit(Duration::from_secs(10)).success());
            nodes[i] = node(i, phase);
            nodes[i].start().unwrap();
            agreed_leader(&https, &nodes);
            let key = format!("phase{phase}-node{i}");
            let response = wait_for(Duration::from_secs(10), "a write through the restarted node", || {
                let response = https.put(&nodes[i].ip, nodes[i].port, &format!("/v1/kv/{key}"), b"v").ok()?;
                (response.status == 201).then_some(response)
            });
            assert_eq!(response.status, 201);
            written.push((key, "v".to_owned()));
            for reader in &nodes {
                for (key, value) in &written {
                    let what = format!("{key} on {} in phase {phase}", reader.address());
                    wait_for(Duration::from_secs(10), &what, || {
                        let response = get_any(&https, reader, &format!("/v1/kv/{key}"))?;
                        (response.status == 200 && response.text() == *value).then_some(())
                    });
                }
            }
        }
    }
    for node in &nodes {
        let response = plain_request(&node.ip, node.port, "GET", "/status", b"").unwrap();
        assert_eq!(response.status, 400, "{} still takes plain HTTP", node.address());
    }
}

// ---------------------------------------------------------------- reload on SIGHUP

/// How many times `text` is in the node's log.
fn log_count(node: &Daemon, text: &str) -> usize {
    node.log_text().matches(text).count()
}

/// Sends SIGHUP and waits until the node has logged `text` once more than before.
fn hang_up_and_wait_for(node: &Daemon, text: &str) {
    let before = log_count(node, text);
    node.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for(Duration::from_secs(10), &format!("{text:?} after SIGHUP"), || {
        (log_count(node, text) > before).then_some(())
    });
}

const TLS_RELOADED: &str = "SIGHUP: TLS certificate, key and CAs reloaded";
const TLS_REFUSED: &str = "SIGHUP: a TLS file is refused";
const TOKENS_RELOADED: &str = "SIGHUP: tokens reloaded";
const TOKENS_REFUSED: &str = "SIGHUP: the tokens file is refused";

fn write_private(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// `GET /v1/kv/k` over `https` with a bearer token: its status, or None when the
/// handshake fails.
fn get_with_token(https: &Https, port: u16, token: &str) -> Option<u16> {
    let header = format!("Bearer {token}");
    let response =
        https.request("127.0.0.1", port, "GET", "/v1/kv/k", &[("Authorization", header.as_str())], b"");
    response.ok().map(|response| response.status)
}

/// SIGHUP puts new files in force for new handshakes: the node's certificate is
/// replaced by one from another CA and the client CA by another, in place (the same
/// paths), and the tokens file changes. After SIGHUP a new handshake presents the new
/// certificate (the very one in the file), clients of the new client CA get through
/// and those of the old one do not, a token added works and one removed gets 401.
#[test]
fn sighup_puts_a_new_certificate_client_ca_and_tokens_in_force_for_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new(dir.path(), "old-ca");
    let old_clients_ca = Ca::new(dir.path(), "old-clients-ca");
    let client_ca_path = dir.path().join("client-ca.pem");
    std::fs::copy(&old_clients_ca.path, &client_ca_path).unwrap();
    let tokens = dir.path().join("tokens");
    write_private(&tokens, "kept-70ce2d write\nremoved-70ce2d write\n");
    let (node, old_issued) = single_tls_node(
        dir.path(),
        &old_ca,
        &["--client-ca", client_ca_path.to_str().unwrap(), "--auth-tokens", tokens.to_str().unwrap()],
    );
    let port = node.port;
    let old_client = Https::new(&old_ca.path, Some(&old_clients_ca.issue(dir.path(), "old-app", &["app"])));
    wait_for(Duration::from_secs(10), "the node to lead", || {
        let header = "Bearer kept-70ce2d";
        let response = old_client
            .request("127.0.0.1", port, "GET", "/status", &[("Authorization", header)], b"")
            .ok()?;
        (response.status == 200 && response.json()["state"] == "leader").then_some(())
    });
    let header = "Bearer kept-70ce2d";
    let response =
        old_client.request("127.0.0.1", port, "PUT", "/v1/kv/k", &[("Authorization", header)], b"v").unwrap();
    assert_eq!(response.status, 201, "{}", response.text());
    let old_der = old_issued.der();
    assert_eq!(old_client.server_certificate("127.0.0.1", port).unwrap(), old_der);

    // The new files, in place of the old.
    let new_ca = Ca::new(dir.path(), "new-ca");
    let new_clients_ca = Ca::new(dir.path(), "new-clients-ca");
    let new_issued = new_ca.issue(dir.path(), "node", &["127.0.0.1", "localhost"]);
    assert_eq!(new_issued.cert, old_issued.cert, "replaced in place");
    std::fs::copy(&new_clients_ca.path, &client_ca_path).unwrap();
    write_private(&tokens, "kept-70ce2d write\nadded-70ce2d read\n");
    // Before the SIGHUP nothing changes: the files are read on SIGHUP only.
    assert_eq!(old_client.server_certificate("127.0.0.1", port).unwrap(), old_der);
    assert_eq!(get_with_token(&old_client, port, "removed-70ce2d"), Some(200));

    hang_up_and_wait_for(&node, TLS_RELOADED);
    let new_client = Https::new(&new_ca.path, Some(&new_clients_ca.issue(dir.path(), "new-app", &["app"])));
    assert_eq!(new_client.server_certificate("127.0.0.1", port).unwrap(), new_issued.der());
    assert!(old_client.server_certificate("127.0.0.1", port).is_err(), "the old CA still verifies");
    // A client certificate of the old client CA no longer passes the handshake.
    let old_cert_new_trust = Https::new(&new_ca.path, Some(&old_clients_ca.issue(dir.path(), "x", &["app"])));
    assert_eq!(get_with_token(&old_cert_new_trust, port, "kept-70ce2d"), None);
    // Nor does no certificate pass the route check.
    assert_eq!(get_with_token(&Https::new(&new_ca.path, None), port, "kept-70ce2d"), Some(403));
    wait_for(Duration::from_secs(5), "the tokens reload to be logged", || {
        node.log_text().contains(TOKENS_RELOADED).then_some(())
    });
    assert_eq!(get_with_token(&new_client, port, "kept-70ce2d"), Some(200));
    assert_eq!(get_with_token(&new_client, port, "added-70ce2d"), Some(200));
    assert_eq!(get_with_token(&new_client, port, "removed-70ce2d"), Some(401));
    assert!(!node.log_text().contains("70ce2d"), "a token reached the log");
    for key in [&old_issued.key_pem, &new_issued.key_pem] {
        for line in key.lines().filter(|line| !line.starts_with("-----")) {
            assert!(!node.log_text().contains(line), "a private key line is in the log");
        }
    }
}

/// A new file that cannot be used is refused on SIGHUP, logged naming the file and
/// never quoting it, and the node goes on serving with what was in force: a key that
/// does not go with the certificate, a key that is not valid PEM, a certificate that is
/// gone, a CA file without a certificate; and a tokens file others may read, or with a
/// bad line, keeps the tokens in force while a good certificate beside it is taken.
#[test]
fn a_bad_file_on_sighup_is_logged_naming_it_and_the_node_serves_with_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let ca_path = dir.path().join("trusted.pem");
    std::fs::copy(&ca.path, &ca_path).unwrap();
    let tokens = dir.path().join("tokens");
    write_private(&tokens, "good-b4df11 write\n");
    let (node, issued) = single_tls_node(
        dir.path(),
        &ca,
        &["--tls-ca", ca_path.to_str().unwrap(), "--auth-tokens", tokens.to_str().unwrap()],
    );
    let port = node.port;
    let https = Https::new(&ca.path, None);
    wait_for(Duration::from_secs(10), "the node to answer", || get_with_token(&https, port, "good-b4df11"));
    let old_der = issued.der();
    let serving_the_old_certificate = || {
        assert_eq!(https.server_certificate("127.0.0.1", port).unwrap(), old_der);
        assert_eq!(get_with_token(&https, port, "good-b4df11"), Some(404), "no key k yet: served");
    };

    let other = ca.issue(dir.path(), "other", &["127.0.0.1"]);
    let key_text = issued.key_pem.clone();
    let mut garbled: Vec<&str> = key_text.lines().collect();
    garbled.insert(2, "not base64 !!!");
    let garbled = garbled.join("\n");
    let cert_text = std::fs::read_to_string(&issued.cert).unwrap();
    // Each case: the file to break and what to put in it (None: remove it).
    let cases: [(&std::path::Path, Option<&str>); 4] = [
        (&issued.key, Some(&other.key_pem)), // the key of another certificate
        (&issued.key, Some(&garbled)),       // a damaged key
        (&issued.cert, None),                // the certificate gone
        (&ca_path, Some("no certificate here\n")),
    ];
    for (file, contents) in cases {
        match contents {
            Some(text) => write_private(file, text),
            None => std::fs::remove_file(file).unwrap(),
        }
        hang_up_and_wait_for(&node, TLS_REFUSED);
        let log = node.log_text();
        let line = log.lines().rev().find(|line| line.contains(TLS_REFUSED)).unwrap();
        assert!(line.contains(file.to_str().unwrap()), "the refusal does not name {file:?}: {line}");
        serving_the_old_certificate();
        write_private(&issued.key, &key_text);
        write_private(&issued.cert, &cert_text);
        std::fs::copy(&ca.path, &ca_path).unwrap();
    }
    for line in key_text.lines().chain(other.key_pem.lines()).filter(|line| !line.starts_with("-----")) {
        assert!(!node.log_text().contains(line), "a private key line is in the log");
    }
    assert!(!node.log_text().contains("not base64"), "the key file is quoted in the log");

    // A bad tokens file does not hold back a good certificate, nor the reverse.
    let renewed = ca.issue(dir.path(), "node", &["127.0.0.1", "localhost"]);
    for (text, mode) in [("other-b4df11 write\n", 0o644), ("other-b4df11 sometimes\n", 0o600)] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&tokens, text).unwrap();
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(mode)).unwrap();
        hang_up_and_wait_for(&node, TOKENS_REFUSED);
        let log = node.log_text();
        let line = log.lines().rev().find(|line| line.contains(TOKENS_REFUSED)).unwrap();
        assert!(line.contains(tokens.to_str().unwrap()), "{line}");
        assert_eq!(get_with_token(&https, port, "good-b4df11"), Some(404), "the old token is kept");
        assert_eq!(get_with_token(&https, port, "other-b4df11"), Some(401));
        assert_eq!(https.server_certificate("127.0.0.1", port).unwrap(), renewed.der(), "TLS reloaded");
    }
    assert!(!node.log_text().contains("b4df11"), "a token reached the log");
    assert!(node.is_running());
}

/// A running 3-node cluster moves to a new CA by SIGHUPs alone, without losing its
/// leader or a write: the CA file is first both CAs, then every node's certificate
/// is one of the new CA, then the CA file is the new CA only. At the end every node
/// presents its new certificate, a client of the old CA gets through nowhere, and a
/// restarted node, whose every connection is new, rejoins over the new certificates
/// both ways (its peers check them against the new CA they reloaded).
#[test]
fn a_cluster_moves_to_a_new_ca_by_sighup_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // The cluster's --tls-ca file is the old CA's own file, rewritten in place below;
    // `cluster.https` read it at start and trusts the old CA only.
    let old_ca = Ca::new(dir.path(), "old-ca");
    let trusted = old_ca.path.clone();
    let old_pem = std::fs::read_to_string(&trusted).unwrap();
    let mut cluster = TlsCluster::start(dir.path(), &old_ca, &[]);
    let new_ca = Ca::new(dir.path(), "new-ca");
    let new_https = Https::new(&new_ca.path, None);
    let write_everywhere = |https: &Https, nodes: &[Daemon], tag: &str| {
        for (i, node) in nodes.iter().enumerate() {
            let path = format!("/v1/kv/{tag}-{i}");
            let response = wait_for(Duration::from_secs(10), "a write", || {
                let response = https.put(&node.ip, node.port, &path, tag.as_bytes()).ok()?;
                (response.status == 201).then_some(response)
            });
            assert_eq!(response.status, 201);
        }
    };
    write_everywhere(&cluster.https, &cluster.nodes, "before");

    let both = old_pem + &std::fs::read_to_string(&new_ca.path).unwrap();
    std::fs::write(&trusted, both).unwrap();
    cluster.nodes.iter().for_each(|node| hang_up_and_wait_for(node, TLS_RELOADED));
    let renewed: Vec<Issued> = CLUSTER_IPS
        .iter()
        .enumerate()
        .map(|(i, ip)| new_ca.issue(dir.path(), &format!("node{i}"), &[ip]))
        .collect();
    cluster.nodes.iter().for_each(|node| hang_up_and_wait_for(node, TLS_RELOADED));
    write_everywhere(&new_https, &cluster.nodes, "renewed");
    std::fs::copy(&new_ca.path, &trusted).unwrap();
    cluster.nodes.iter().for_each(|node| hang_up_and_wait_for(node, TLS_RELOADED));
    write_everywhere(&new_https, &cluster.nodes, "after");

    for (i, node) in cluster.nodes.iter().enumerate() {
        assert_eq!(new_https.server_certificate(&node.ip, node.port).unwrap(), renewed[i].der());
        assert!(cluster.https.server_certificate(&node.ip, node.port).is_err(), "node {i} takes the old CA");
    }
    // Node 2 restarted: new connections both ways, the new certificates only.
    cluster.nodes[2].signal(nix::sys::signal::Signal::SIGTERM);
    assert!(cluster.nodes[2].wait_exit(Duration::from_secs(10)).success());
    cluster.nodes[2].start().unwrap();
    cluster.https = new_https.clone();
    cluster.wait_for_leader();
    write_everywhere(&new_https, &cluster.nodes, "restarted");
    for tag in ["before", "renewed", "after", "restarted"] {
        for i in 0..3 {
            let response =
                new_https.get(cluster.ip(2), cluster.port(2), &format!("/v1/kv/{tag}-{i}")).unwrap();
            assert_eq!((response.status, response.text()), (200, tag.to_owned()), "{tag}-{i} on node 2");
        }
    }
    cluster.certificates = renewed;
    cluster.assert_no_key_in_logs();
}

// ---------------------------------------------------------------- secrets

/// No secret leaves a node: not the cluster secret, a token or a line of a private
/// key appears in `/status`, `/metrics`, `/v1/members`, an error answer (even one
/// refusing a near miss of that very secret), a log (a refused reload's included), the
/// command line or the environment; the flags that name secrets carry file paths.
/// `/status` says which protections are on.
#[test]
fn no_secret_reaches_status_metrics_errors_logs_or_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let clients_ca = Ca::new(dir.path(), "clients-ca");
    let secret_file = dir.path().join("cluster-secret");
    write_private(&secret_file, "secret-5ec7e7-cluster\n");
    let tokens = dir.path().join("tokens");
    write_private(&tokens, "token-5ec7e7-ops write\n");
    let app = clients_ca.issue(dir.path(), "app", &["app.example"]);
    let https = Https::new(&ca.path, Some(&app)).with_token("token-5ec7e7-ops");
    let args = [
        "--cluster-secret-file",
        secret_file.to_str().unwrap(),
        "--auth-tokens",
        tokens.to_str().unwrap(),
        "--client-ca",
        clients_ca.arg(),
    ];
    let cluster = TlsCluster::start_with(dir.path(), &ca, &args, https.clone());
    for node in 0..3 {
        let response =
            https.put(cluster.ip(node), cluster.port(node), &format!("/v1/kv/k{node}"), b"v").unwrap();
        assert_eq!(response.status, 201, "{}", response.text());
    }
    let status = https.status(cluster.ip(0), cluster.port(0)).unwrap();
    assert_eq!(
        status["tls"],
        serde_json::json!({"enabled": true, "mutual": true, "client_ca": true, "accept_plain": false})
    );
    assert_eq!(status["auth"], serde_json::json!({"tokens": true, "cluster_secret": true}));

    // A bad key on reload: its error is logged too.
    let node0_key = std::fs::read_to_string(&cluster.certificates[0].key).unwrap();
    write_private(&cluster.certificates[0].key, &node0_key.replace('\n', "\n!\n"));
    hang_up_and_wait_for(&cluster.nodes[0], TLS_REFUSED);
    write_private(&cluster.certificates[0].key, &node0_key);

    let mut seen: Vec<(String, String)> = Vec::new();
    let near_misses =
        [Https::new(&ca.path, Some(&app)).with_token("token-5ec7e7-opx"), Https::new(&ca.path, Some(&app))];
    let as_node0 = Https::new(&ca.path, Some(&cluster.certificates[0]));
    for node in 0..3 {
        let (ip, port) = (cluster.ip(node), cluster.port(node));
        for path in ["/status", "/metrics", "/v1/members", "/v1/members?local=1", "/v1/kv/k0", "/nope"] {
            seen.push((format!("{path} on node {node}"), https.get(ip, port, path).unwrap().text()));
        }
        for (i, client) in near_misses.iter().enumerate() {
            let response = client.get(ip, port, "/v1/kv/k0").unwrap();
            assert_eq!(response.status, 401);
            seen.push((format!("refused client {i} on node {node}"), response.text()));
        }
        for secret in ["secret-5ec7e7-clustex", ""] {
            let id = format!("{:016x}", mmapd::server::cli::node_id(&cluster.nodes[0].address()));
            let address = cluster.nodes[0].address();
            let headers = [
                ("x-mmapd-cluster-secret", secret),
                ("x-mmapd-node-id", id.as_str()),
                ("x-mmapd-node-address", address.as_str()),
            ];
            let response = as_node0.request(ip, port, "POST", "/raft/messages", &headers, b"").unwrap();
            assert_eq!(response.status, 401, "{}", response.text());
            seen.push((format!("a wrong secret on node {node}"), response.text()));
        }
    }
    for node in &cluster.nodes {
        seen.push((format!("the log of {}", node.address()), node.log_text()));
        let read = |what: &str| std::fs::read(format!("/proc/{}/{what}", node.pid())).unwrap();
        let cmdline = read("cmdline");
        let words: Vec<String> =
            cmdline.split(|&b| b == 0).map(|word| String::from_utf8_lossy(word).into_owned()).collect();
        for flag in
            ["--cluster-secret-file", "--auth-tokens", "--tls-cert", "--tls-key", "--tls-ca", "--client-ca"]
        {
            let at =
                words.iter().position(|word| word == flag).unwrap_or_else(|| panic!("{flag}: {words:?}"));
            let value = std::path::Path::new(&words[at + 1]);
            assert!(value.is_absolute() && value.is_file(), "{flag} {value:?} is not a file path");
        }
        seen.push((format!("the command line of {}", node.address()), words.join(" ")));
        let environ = String::from_utf8_lossy(&read("environ")).into_owned();
        seen.push((format!("the environment of {}", node.address()), environ));
    }
    let key_lines: Vec<String> = cluster
        .certificates
        .iter()
        .flat_map(|issued| issued.key_pem.lines().map(str::to_owned).collect::<Vec<_>>())
        .chain(app.key_pem.lines().map(str::to_owned))
        .filter(|line| !line.starts_with("-----"))
        .collect();
    for (what, text) in &seen {
        assert!(!text.contains("5ec7e7"), "a secret or token is in {what}: {text}");
        assert!(!text.contains("PRIVATE KEY"), "a key is in {what}");
        for line in &key_lines {
            assert!(!text.contains(line.as_str()), "a private key line is in {what}");
        }
    }
}

// ---------------------------------------------------------------- refusals, rate-limited

/// A flood of handshakes with a certificate the node refuses costs one log line per
/// address per 10 s, not one per handshake: 200 refusals from one address give one
/// line, all 200 are counted in `/metrics`, the node serves on meanwhile, and the first
/// refusal after the 10 s gives the next line, counting the 199 not logged.
#[test]
fn a_flood_of_refused_handshakes_is_logged_once_per_address_per_interval_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let (node, _) = single_tls_node(dir.path(), &ca, &["--tls-ca", ca.arg()]);
    let port = node.port;
    let https = Https::new(&ca.path, None);
    wait_for(Duration::from_secs(5), "the node to lead", || {
        (https.status("127.0.0.1", port)?["state"] == "leader").then_some(())
    });
    let rogue =
        Https::new(&ca.path, Some(&Ca::new(dir.path(), "rogue-ca").issue(dir.path(), "r", &["127.0.0.1"])));
    let refused = |count: u64| {
        wait_for(Duration::from_secs(10), &format!("{count} refusals in /metrics"), || {
            let metrics = https.get("127.0.0.1", port, "/metrics").ok()?.text();
            metrics.contains(&format!("\nmmapd_tls_handshakes_refused_total {count}\n")).then_some(())
        })
    };
    let started = Instant::now();
    for i in 0..200 {
        assert!(rogue.get("127.0.0.1", port, "/status").is_err(), "handshake {i} passed");
    }
    refused(200);
    assert!(started.elapsed() < Duration::from_secs(9), "the flood took {:?}", started.elapsed());
    assert_eq!(log_count(&node, "TLS handshake refused"), 1, "{}", node.log_text());
    assert_eq!(https.get("127.0.0.1", port, "/health").unwrap().status, 200);

    std::thread::sleep(
        Duration::from_secs(10).saturating_sub(started.elapsed()) + Duration::from_millis(200),
    );
    assert!(rogue.get("127.0.0.1", port, "/status").is_err());
    refused(201);
    let log = node.log_text();
    let lines: Vec<&str> = log.lines().filter(|line| line.contains("TLS handshake refused")).collect();
    assert_eq!(lines.len(), 2, "{log}");
    // The log is coloured (`ESC [ ... m` between the field and its value): drop those.
    let mut parts = lines[1].split('\x1b');
    let mut plain = parts.next().unwrap_or_default().to_owned();
    for part in parts {
        plain.push_str(part.split_once('m').map_or(part, |(_, rest)| rest));
    }
    assert!(plain.contains("not_logged_since_last_line=199"), "{plain}");
}
