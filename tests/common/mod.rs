//! Shared helpers of the daemon tests: real `mmapd` processes on loopback, each in its
//! own temporary directory, a minimal blocking HTTP/1.1 client, and waiting helpers.
//!
//! Every child is killed when its `Daemon` is dropped, including when a test panics;
//! then the tail of its log is printed, so a failure shows what the nodes said.

#![allow(dead_code)]

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const MMAPD: &str = env!("CARGO_BIN_EXE_mmapd");
pub const MMAPD_ADMIN: &str = env!("CARGO_BIN_EXE_mmapd-admin");

/// Short Raft timings: an election in well under a second.
pub const FAST_TIMINGS: &[&str] = &[
    "--tick-ms",
    "5",
    "--heartbeat-interval-ms",
    "25",
    "--election-timeout-ms",
    "250",
    "--request-timeout-ms",
    "3000",
];

// ---------------------------------------------------------------- ports

/// Ports are taken below the kernel's ephemeral range (32768 and up), so the
/// nodes' own outgoing connections never take them, from a window that depends
/// on the process id, so test binaries run at the same time rarely meet.
const PORT_FIRST: u32 = 20_000;
const PORT_WINDOW: u32 = 12_000;
static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// `count` distinct ports that were free a moment ago.
pub fn free_ports(count: usize) -> Vec<u16> {
    let offset = (std::process::id() * 397) % PORT_WINDOW;
    let mut ports = Vec::with_capacity(count);
    while ports.len() < count {
        let step = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        assert!(step < PORT_WINDOW, "ran out of ports");
        let port = (PORT_FIRST + (offset + step) % PORT_WINDOW) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    ports
}

// ---------------------------------------------------------------- waiting

/// Polls `check` every 10 ms until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------- HTTP

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Sends one request with `Connection: close` and reads the whole answer.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut message = head.into_bytes();
    message.extend_from_slice(body);
    stream.write_all(&message)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
        .ok_or_else(|| std::io::Error::other(format!("bad response: {:?}", String::from_utf8_lossy(&raw))))
}

/// Parses a raw HTTP/1.1 response (Content-Length bodies, or everything to the end).
pub fn parse_response(raw: &[u8]) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if let Some((_, length)) = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-length")) {
        body.truncate(length.parse().ok()?);
    }
    Some(Response { status, headers, body })
}

pub fn get(port: u16, path: &str) -> Response {
    request(port, "GET", path, &[], b"").unwrap_or_else(|e| panic!("GET {path} on {port}: {e}"))
}

pub fn put(port: u16, path: &str, body: &[u8]) -> Response {
    request(port, "PUT", path, &[], body).unwrap_or_else(|e| panic!("PUT {path} on {port}: {e}"))
}

/// The original's write: `POST /set/<key>` with the form field `value`.
pub fn set_form(port: u16, key: &str, value: &str) -> Response {
    let body = format!("value={value}");
    request(
        port,
        "POST",
        &format!("/set/{key}"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    )
    .unwrap_or_else(|e| panic!("POST /set/{key} on {port}: {e}"))
}

pub fn status(port: u16) -> Option<serde_json::Value> {
    let response = request(port, "GET", "/status", &[], b"").ok()?;
    (response.status == 200).then(|| response.json())
}

pub fn accepts_connections(port: u16) -> bool {
    accepts_connections_at("127.0.0.1", port)
}

/// Whether `ip:port` accepts a TCP connection (another loopback address, 127.0.0.2...).
pub fn accepts_connections_at(ip: &str, port: u16) -> bool {
    let address = SocketAddr::new(ip.parse().expect("an IP address"), port);
    TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
}

// ---------------------------------------------------------------- processes

/// One `mmapd` process (or the recipe to start it again), killed on drop.
pub struct Daemon {
    pub port: u16,
    /// The loopback address it listens on (127.0.0.1 unless `with_ip` says otherwise).
    pub ip: String,
    /// The binary it runs: `MMAPD` unless `set_program` chose another (an older release).
    program: PathBuf,
    /// The working directory the process runs in.
    pub cwd: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    /// `RLIMIT_NOFILE` (soft, hard) to run with, set by the shell that execs it.
    nofile_limit: Option<(u64, u64)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// A daemon that will run `mmapd args...` in `cwd`, logging to `cwd/mmapd-<port>.log`.
    pub fn new(cwd: &Path, port: u16, args: &[&str]) -> Daemon {
        Daemon {
            port,
            ip: "127.0.0.1".into(),
            program: PathBuf::from(MMAPD),
            cwd: cwd.to_owned(),
            args: args.iter().map(OsString::from).collect(),
            envs: vec![("RUST_LOG".into(), "info".into())],
            nofile_limit: None,
            log: cwd.join(format!("mmapd-{port}.log")),
            child: None,
        }
    }

    /// The process listens on `ip` (pass it `--ip` too): what `wait_started` and
    /// `address` use.
    pub fn with_ip(mut self, ip: &str) -> Daemon {
        self.ip = ip.to_owned();
        self
    }

    pub fn env(mut self, name: &str, value: impl Into<OsString>) -> Daemon {
        self.envs.push((name.into(), value.into()));
        self
    }

    /// Runs `program` instead of this build's `mmapd` from the next start on (the same
    /// flags, port, directory and log): a binary of another release.
    pub fn set_program(&mut self, program: &Path) {
        self.program = program.to_owned();
    }

    /// Runs the process with these descriptor limits (`ulimit -S -n`, `ulimit -H -n`).
    pub fn nofile_limit(mut self, soft: u64, hard: u64) -> Daemon {
        self.nofile_limit = Some((soft, hard));
        self
    }

    /// Starts the process (again) without waiting for it.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "node {} is already running", self.port);
        let log = OpenOptions::new().create(true).append(true).open(&self.log).expect("open log");
        let mut command = match self.nofile_limit {
            None => Command::new(&self.program),
            // The shell sets the limits and execs mmapd in its place: same pid.
            Some((soft, hard)) => {
                let mut shell = Command::new("sh");
                let script = format!("ulimit -S -n {soft} && ulimit -H -n {hard} && exec \"$0\" \"$@\"");
                shell.arg("-c").arg(&script).arg(&self.program);
                shell
            }
        };
        let child = command
            .args(&self.args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(self.envs.iter().map(|(n, v)| (n, v)))
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn mmapd");
        self.child = Some(child);
    }

    /// Starts the process and waits until its port accepts connections; Err with the
    /// log when it exits first (e.g. its port was taken).
    pub fn start(&mut self) -> Result<(), String> {
        self.spawn();
        self.wait_started()
    }

    /// Waits until the spawned process accepts connections; Err with the log when it
    /// exits first.
    pub fn wait_started(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                self.child = None;
                return Err(format!("node {} exited with {status}: {}", self.port, self.log_text()));
            }
            if accepts_connections_at(&self.ip, self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("node {} never accepted connections: {}", self.port, self.log_text()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// kill -9, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal without waiting.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal).expect("kill(2)");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = wait_for(timeout, "the process to exit", || child.try_wait().expect("try_wait"));
        self.child = None;
        status
    }

    /// What the process printed (stdout and stderr), across restarts.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        status(self.port)
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!("---- log of node {} (last {} lines) ----\n{}", self.port, tail.len(), tail.join("\n"));
        }
    }
}

/// Runs `mmapd-admin args...` to completion.
/// What a process printed on standard output.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What a process printed on standard error.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A failure is a non-zero exit with exactly one line on stderr, naming `expected`,
/// and never a panic.
pub fn assert_fails_with_one_line(output: &Output, expected: &str) {
    assert!(!output.status.success(), "exit 0: {}", stdout(output));
    let text = stderr(output);
    assert_eq!(text.trim_end().lines().count(), 1, "not one line: {text:?}");
    assert!(text.contains(expected), "{text:?} does not mention {expected:?}");
    assert!(!text.contains("panicked"), "{text}");
}

pub fn admin(args: &[&str]) -> Output {
    Command::new(MMAPD_ADMIN)
        .args(args)
        .env_remove("MMAPD_ADMIN_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run mmapd-admin")
}

// ---------------------------------------------------------------- clusters

/// N nodes on loopback, each with its data directory under one temporary directory.
pub struct Cluster {
    pub nodes: Vec<Daemon>,
    // Dropped after the nodes (fields drop in order): the files outlive the processes.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `size` nodes with the fast timings and `extra` flags, and waits until a
    /// leader is known to all of them. Retries with new ports if one is taken meanwhile.
    pub fn start(size: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with_timings(size, FAST_TIMINGS, extra)
    }

    /// `start` with other Raft timings than `FAST_TIMINGS`.
    pub fn start_with_timings(size: usize, timings: &[&str], extra: &[&str]) -> Cluster {
        let mut last_error = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let ports = free_ports(size);
            let peers = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
            let mut nodes: Vec<Daemon> = ports
                .iter()
                .map(|&port| {
                    let port_text = port.to_string();
                    let data_dir = dir.path().join(format!("node-{port}"));
                    let mut args = vec!["--port", &port_text, "--peers", &peers];
                    args.extend(["--data-dir", data_dir.to_str().unwrap()]);
                    args.extend(timings);
                    args.extend(extra);
                    Daemon::new(dir.path(), port, &args)
                })
                .collect();
            nodes.iter_mut().for_each(Daemon::spawn);
            let started: Result<(), String> = nodes.iter_mut().try_for_each(Daemon::wait_started);
            match started {
                Ok(()) => {
                    let cluster = Cluster { nodes, dir };
                    cluster.wait_for_leader(Duration::from_secs(10));
                    return cluster;
                }
                Err(error) => last_error = error,
            }
        }
        panic!("cluster did not start: {last_error}");
    }

    pub fn port(&self, node: usize) -> u16 {
        self.nodes[node].port
    }

    /// Waits until every running node reports the same leader at the same term and
    /// that leader reports itself leader; returns its index.
    pub fn wait_for_leader(&self, timeout: Duration) -> usize {
        wait_for(timeout, "every running node to agree on a leader", || self.agreed_leader())
    }

    /// The leader every running node agrees on, with the term, if they agree.
    pub fn agreed_leader(&self) -> Option<usize> {
        self.agreed_leader_and_term().map(|(leader, _)| leader)
    }

    pub fn agreed_leader_and_term(&self) -> Option<(usize, u64)> {
        let mut agreed: Option<(String, u64)> = None;
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let status = node.status()?;
            let seen = (status["leader"].as_str()?.to_owned(), status["term"].as_u64()?);
            if agreed.get_or_insert_with(|| seen.clone()) != &seen {
                return None;
            }
        }
        let (address, term) = agreed?;
        let leader = self.nodes.iter().position(|n| n.address() == address)?;
        let status = self.nodes[leader].status()?;
        (status["state"] == "leader" && status["term"] == term).then_some((leader, term))
    }

    /// The indexes of the running nodes other than `node`.
    pub fn others(&self, node: usize) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| i != node && self.nodes[i].is_running()).collect()
    }
}

/// One node in its own temporary directory, with the fast timings.
pub struct Single {
    pub node: Daemon,
    pub dir: tempfile::TempDir,
}

impl Single {
    /// Starts `mmapd --port P --data-dir DIR/data` with the fast timings and `extra`.
    pub fn start(extra: &[&str]) -> Single {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = free_ports(1)[0];
            let port_text = port.to_string();
            let data_dir = dir.path().join("data");
            let mut args = vec!["--port", &port_text, "--data-dir", data_dir.to_str().unwrap()];
            args.extend(FAST_TIMINGS);
            args.extend(extra);
            let mut node = Daemon::new(dir.path(), port, &args);
            match node.start() {
                Ok(()) => {
                    wait_for(Duration::from_secs(5), "the node to lead", || {
                        (node.status()?["state"] == "leader").then_some(())
                    });
                    return Single { node, dir };
                }
                Err(error) => last_error = error,
            }
        }
        panic!("node did not start: {last_error}");
    }

    pub fn port(&self) -> u16 {
        self.node.port
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.dir.path().join("data/admin.sock")
    }
}

// ---------------------------------------------------------------- a real etcd

/// A real etcd (Debian's etcd-server, 3.4), one member on loopback in its own
/// directory (its log in `etcd.log` there), to compare answers with. Killed on drop.
pub struct RealEtcd {
    child: std::process::Child,
    pub port: u16,
    /// `127.0.0.1:PORT`, as etcdctl's `--endpoints` takes it.
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl RealEtcd {
    pub fn start() -> RealEtcd {
        RealEtcd::start_with(&[])
    }

    /// `start`, with `extra` flags for etcd.
    pub fn start_with(extra: &[&str]) -> RealEtcd {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(2);
        let (client, peer) =
            (format!("http://127.0.0.1:{}", ports[0]), format!("http://127.0.0.1:{}", ports[1]));
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let child = std::process::Command::new("etcd")
            .args(["--name", "e", "--data-dir", dir.path().join("data").to_str().unwrap()])
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("e={peer}")])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log"))
            .stderr(log)
            .spawn()
            .expect("etcd did not start: is etcd-server installed?");
        let endpoint = format!("127.0.0.1:{}", ports[0]);
        let etcd = RealEtcd { child, port: ports[0], endpoint, _dir: dir };
        wait_for(Duration::from_secs(20), "etcd to be healthy", || {
            request(etcd.port, "GET", "/health", &[], b"")
                .ok()
                .filter(|r| r.text().contains("true"))
                .map(|_| ())
        });
        etcd
    }
}

impl Drop for RealEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
