//! etcd's Watch service on real `mmapd` processes: Debian's `etcdctl` 3.4 watches a
//! 3-node cluster (a key, a prefix, a range, everything, `--rev` replaying the
//! history, `--prev-kv`, a compacted start, several watches on one stream with
//! progress requests) and prints what it prints against a real etcd 3.4 (package
//! `etcd-server`) running the same script in the same test. A raw HTTP/2 gRPC client
//! sends what etcdctl never does: bad and oversized messages, duplicate and unknown
//! ids, a client that stops reading. `.ci/run` installs both; without them this test
//! fails (it never passes without having run).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use mmapd::server::etcd::proto::etcdserverpb::{
    watch_request::RequestUnion, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
    WatchResponse,
};
use prost::Message;

// ---------------------------------------------------------------- etcdctl

/// Runs `etcdctl --endpoints=ENDPOINT ARGS` with `stdin`; its stdout, or a failure
/// naming the command and what it printed.
fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = etcdctl_command(endpoint, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("etcdctl did not start ({e}): is etcd-client installed?"))?;
    child.stdin.take().expect("stdin").write_all(stdin.unwrap_or("").as_bytes()).expect("etcdctl stdin");
    let output = child.wait_with_output().expect("etcdctl output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "etcdctl {args:?}: {}\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn etcdctl_command(endpoint: &str, args: &[&str]) -> Command {
    let mut command = Command::new("etcdctl");
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=10s")
        .args(args);
    command
}

fn ok(endpoint: &str, args: &[&str]) -> String {
    etcdctl(endpoint, args, None).unwrap_or_else(|e| panic!("{e}"))
}

/// The store's revision as `endpoint` answers it.
fn revision(endpoint: &str) -> i64 {
    let answer: serde_json::Value =
        serde_json::from_str(&ok(endpoint, &["get", "nothing", "-w", "json"])).unwrap();
    answer["header"]["revision"].as_i64().expect("a revision")
}

/// An `etcdctl watch` running in the background, its output going to files.
struct Watcher {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::path::PathBuf,
    stderr: std::path::PathBuf,
}

impl Watcher {
    fn start(dir: &Path, name: &str, endpoint: &str, args: &[&str]) -> Watcher {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        let mut child = etcdctl_command(endpoint, &[&["watch"], args].concat())
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("etcdctl watch: is etcd-client installed?");
        let stdin = child.stdin.take();
        Watcher { child, stdin, stdout, stderr }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn errors(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Its output once it has at least `lines` lines (or what it has after 15 s).
    fn output_of(&self, lines: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.output().lines().count() < lines && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Anything beyond what was expected shows in the comparison.
        std::thread::sleep(Duration::from_millis(100));
        self.output()
    }

    /// A line to an interactive watch (`watch -i`).
    fn type_line(&mut self, line: &str) {
        writeln!(self.stdin.as_mut().expect("stdin"), "{line}").expect("watch -i stdin");
    }

    /// Waits for the process to exit by itself.
    fn exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "etcdctl watch did not exit: {}", self.errors());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- a raw gRPC client

/// One gRPC message as it goes on the wire: uncompressed, its length, its bytes.
fn frame(message: &impl Message) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(0);
    out.put_u32(message.encoded_len() as u32);
    message.encode(&mut out).unwrap();
    out.freeze()
}

fn frames(requests: &[WatchRequest]) -> Bytes {
    requests.iter().map(frame).collect::<Vec<_>>().concat().into()
}

fn create(key: &str, range_end: &str) -> WatchCreateRequest {
    WatchCreateRequest { key: key.into(), range_end: range_end.into(), ..Default::default() }
}

fn creating(create: WatchCreateRequest) -> WatchRequest {
    WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }
}

fn canceling(watch_id: i64) -> WatchRequest {
    WatchRequest { request_union: Some(RequestUnion::CancelRequest(WatchCancelRequest { watch_id })) }
}

fn progress() -> WatchRequest {
    WatchRequest { request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})) }
}

/// A Watch call whose request stream is `body` (then half-closed, as etcd allows).
struct Call {
    body: hyper::body::Incoming,
    buffer: BytesMut,
    /// `grpc-status` and `grpc-message` once the call ended (in the headers or trailers).
    status: Option<(String, String)>,
}

fn grpc_status(headers: &hyper::HeaderMap) -> Option<(String, String)> {
    let text =
        |name: &str| headers.get(name).map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    Some((text("grpc-status")?, text("grpc-message").unwrap_or_default()))
}

impl Call {
    /// Opens the call on `endpoint` with `metadata`; `window`: the client's HTTP/2
    /// stream window (a small one stops the server's sends while the test does not read).
    async fn open(endpoint: &str, metadata: &[(&str, &str)], body: Bytes, window: Option<u32>) -> Call {
        let tcp = tokio::net::TcpStream::connect(endpoint).await.expect("connect");
        let mut builder = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        if let Some(window) = window {
            builder.initial_stream_window_size(window).initial_connection_window_size(window);
        }
        let (mut sender, connection) =
            builder.handshake(hyper_util::rt::TokioIo::new(tcp)).await.expect("HTTP/2 handshake");
        tokio::spawn(connection);
        let mut request = hyper::Request::post(format!("http://{endpoint}/etcdserverpb.Watch/Watch"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (name, value) in metadata {
            request = request.header(*name, *value);
        }
        let request = request.body(http_body_util::Full::new(body)).unwrap();
        let response = sender.send_request(request).await.expect("a response");
        let status = grpc_status(response.headers());
        Call { body: response.into_body(), buffer: BytesMut::new(), status }
    }

    /// Reads until `count` responses came, the call ended, or `timeout` passed.
    async fn read(&mut self, count: usize, timeout: Duration) -> Vec<WatchResponse> {
        use http_body_util::BodyExt;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut responses = Vec::new();
        loop {
            while self.buffer.len() >= 5 {
                let length = u32::from_be_bytes(self.buffer[1..5].try_into().unwrap()) as usize;
                if self.buffer.len() < 5 + length {
                    break;
                }
                let message = self.buffer.split_to(5 + length).split_off(5);
                responses.push(WatchResponse::decode(message.freeze()).expect("a WatchResponse"));
            }
            if responses.len() >= count || self.status.is_some() {
                return responses;
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return responses,
                Ok(None) => {
                    self.status = Some(("ended without a status".into(), String::new()));
                }
                Ok(Some(Err(error))) => {
                    self.status = Some((format!("body error: {error}"), String::new()));
                }
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.buffer.extend_from_slice(&data),
                    Err(frame) => {
                        let trailers = frame.into_trailers().ok();
                        self.status = trailers
                            .as_ref()
                            .and_then(grpc_status)
                            .or(Some(("no status".into(), String::new())));
                    }
                },
            }
        }
    }
}

/// A response with what legitimately differs between servers (revisions, member and
/// cluster ids) zeroed.
fn comparable(mut response: WatchResponse) -> WatchResponse {
    response.header = None;
    if response.compact_revision != 0 {
        response.compact_revision = 1;
    }
    for event in &mut response.events {
        for kv in event.kv.iter_mut().chain(event.prev_kv.iter_mut()) {
            kv.create_revision = 0;
            kv.mod_revision = 0;
        }
    }
    response
}

/// Responses by watch id, each watch's in order (watches' responses interleave in
/// no fixed order).
fn by_watch(responses: Vec<WatchResponse>) -> std::collections::BTreeMap<i64, Vec<WatchResponse>> {
    let mut by_watch = std::collections::BTreeMap::<i64, Vec<WatchResponse>>::new();
    for response in responses {
        by_watch.entry(response.watch_id).or_default().push(comparable(response));
    }
    by_watch
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

// ---------------------------------------------------------------- a real etcd

// ---------------------------------------------------------------- the scripts

/// The writes every watch script makes, in order; `del k` and the transaction are one
/// revision each.
fn write_script(endpoint: &str) {
    ok(endpoint, &["put", "app/a", "1"]);
    ok(endpoint, &["put", "app/b", "2"]);
    // One revision: a put of k, a put of app/c and the delete of app/a.
    let txn = etcdctl(endpoint, &["txn"], Some("\nput k v1\nput app/c 3\ndel app/a\n\n\n"));
    assert_eq!(txn.unwrap_or_else(|e| panic!("{e}")), "SUCCESS\n\nOK\n\nOK\n\n1\n");
    ok(endpoint, &["del", "k"]);
    ok(endpoint, &["put", "app/b", "22"]);
    ok(endpoint, &["del", "app/", "--prefix"]);
    ok(endpoint, &["put", "end", "1"]);
}

/// What each watch of `watch_script` printed, in the order of `WATCHES`.
type Printed = Vec<String>;

/// (name, arguments after `--rev=N`, what etcdctl prints for the script)
const WATCHES: &[(&str, &[&str], &str)] = &[
    ("key", &["k"], "PUT\nk\nv0\nPUT\nk\nv1\nDELETE\nk\n\n"),
    ("prev", &["--prev-kv", "k"], "PUT\nk\nv0\nPUT\nk\nv0\nk\nv1\nDELETE\nk\nv1\nk\n\n"),
    (
        "prefix",
        &["--prefix", "app/"],
        "PUT\napp/a\n1\nPUT\napp/b\n2\nPUT\napp/c\n3\nDELETE\napp/a\n\nPUT\napp/b\n22\nDELETE\napp/b\n\nDELETE\napp/c\n\n",
    ),
    ("range", &["app/a", "app/c"], "PUT\napp/a\n1\nPUT\napp/b\n2\nDELETE\napp/a\n\nPUT\napp/b\n22\nDELETE\napp/b\n\n"),
    (
        "everything",
        &["--prefix", ""],
        "PUT\nk\nv0\nPUT\napp/a\n1\nPUT\napp/b\n2\nPUT\nk\nv1\nPUT\napp/c\n3\nDELETE\napp/a\n\nDELETE\nk\n\n\
         PUT\napp/b\n22\nDELETE\napp/b\n\nDELETE\napp/c\n\nPUT\nend\n1\n",
    ),
];

/// Puts `k` (the first revision watched), starts every watch of `WATCHES` from it on
/// the endpoints in turn, runs `write_script` on `writer`, and returns what each
/// printed. The watches start from a revision: what they print does not depend on
/// whether they were created before the writes, only the path (replay or live) does.
fn watch_script(dir: &Path, watch_on: &[String], writer: &str) -> (Printed, i64) {
    // The put's own revision, not the store's a moment later: mmapd's revisions are log
    // indexes, and an entry that writes no key (a member record, a leader's first entry
    // of its term) committed in between moved the store past the put, so the watches
    // started after it (it failed once in three full runs, on a cluster just started).
    let put: serde_json::Value =
        serde_json::from_str(&ok(writer, &["put", "k", "v0", "-w", "json"])).unwrap();
    let from = put["header"]["revision"].as_i64().expect("the put's revision");
    let rev = format!("--rev={from}");
    let watchers: Vec<(Watcher, &str)> = WATCHES
        .iter()
        .enumerate()
        .map(|(index, (name, args, expected))| {
            let endpoint = &watch_on[index % watch_on.len()];
            (Watcher::start(dir, name, endpoint, &[&[rev.as_str()], *args].concat()), *expected)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    write_script(writer);
    let printed =
        watchers.iter().map(|(watcher, expected)| watcher.output_of(expected.lines().count())).collect();
    (printed, from)
}

// ---------------------------------------------------------------- tests

#[test]
fn etcdctl_watches_print_what_they_print_against_a_real_etcd() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let endpoints: Vec<String> = (0..3).map(|node| format!("127.0.0.1:{}", cluster.port(node))).collect();
    let writer = endpoints[cluster.others(leader)[0]].clone();
    let dir = tempfile::tempdir().unwrap();
    let (ours_dir, theirs_dir) = (dir.path().join("mmapd"), dir.path().join("etcd"));
    std::fs::create_dir_all(&ours_dir).unwrap();
    std::fs::create_dir_all(&theirs_dir).unwrap();
    let (ours, from) = watch_script(&ours_dir, &endpoints, &writer);
    let etcd = RealEtcd::start();
    let (theirs, _) = watch_script(&theirs_dir, std::slice::from_ref(&etcd.endpoint), &etcd.endpoint);
    for (((name, args, expected), ours), theirs) in WATCHES.iter().zip(&ours).zip(&theirs) {
        assert_eq!(
            theirs, expected,
            "etcd printed this for watch {args:?} (the test's expectation is wrong)"
        );
        assert_eq!(ours, theirs, "watch {name} {args:?} against mmapd and against etcd");
    }

    // A watch from a compacted revision: canceled, as etcd's, with the first revision
    // still held (mmapd's compaction at R drops R itself: R + 1; etcd keeps R: R).
    for (endpoint, first_held) in [(&writer, 1), (&etcd.endpoint, 0)] {
        let compact_at = revision(endpoint);
        ok(endpoint, &["compaction", &compact_at.to_string()]);
        let mut text = Watcher::start(
            dir.path(),
            &format!("compacted-{first_held}"),
            endpoint,
            &[&format!("--rev={from}"), "k"],
        );
        assert!(!text.exit().success());
        assert_eq!(
            text.errors(),
            "watch was canceled (etcdserver: mvcc: required revision has been compacted)\n\
             Error: watch is canceled by the server\n",
            "on {endpoint}"
        );
        let json = Watcher::start(
            dir.path(),
            &format!("compacted-json-{first_held}"),
            endpoint,
            &[&format!("--rev={from}"), "k", "-w", "json"],
        );
        let printed: serde_json::Value =
            serde_json::from_str(json.output_of(1).lines().next().unwrap_or("null"))
                .unwrap_or_else(|e| panic!("{e}: {}", json.output()));
        assert_eq!(printed["Canceled"], true, "{printed}");
        assert_eq!(printed["CompactRevision"], compact_at + first_held, "{printed}");
        // From the first revision held, a watch replays.
        ok(endpoint, &["put", "k", "after"]);
        let resumed = Watcher::start(
            dir.path(),
            &format!("resumed-{first_held}"),
            endpoint,
            &[&format!("--rev={}", compact_at + first_held), "k"],
        );
        assert_eq!(resumed.output_of(3), "PUT\nk\nafter\n", "on {endpoint}: {}", resumed.errors());
    }
}

/// `watch -i -w json`: two watches on one stream, a progress request before the writes
/// (once both watches printed it, both are created) and one after them.
fn interactive_script(dir: &Path, endpoint: &str, writer: &str) -> Vec<String> {
    let mut watcher = Watcher::start(dir, "interactive", endpoint, &["-i", "-w", "json"]);
    watcher.type_line("watch k");
    watcher.type_line("watch --prefix app/");
    watcher.type_line("progress");
    wait_for(Duration::from_secs(15), "both watches to print the progress", || {
        (watcher.output().matches("progress notify").count() == 2).then_some(())
    });
    ok(writer, &["put", "k", "a"]);
    let txn = etcdctl(writer, &["txn"], Some("\nput k b\nput app/x 1\nput app/y 2\n\n\n"));
    assert!(txn.unwrap_or_else(|e| panic!("{e}")).starts_with("SUCCESS"));
    ok(writer, &["del", "app/", "--prefix"]);
    watcher.type_line("progress");
    // 2 progress lines with their JSON, 4 responses with events, 2 and 2 again.
    let printed = watcher.output_of(12);
    let mut lines: Vec<String> = printed.lines().map(comparable_line).collect();
    // The two watches print from two goroutines: in no fixed order between them.
    lines.sort();
    lines
}

/// A line of `etcdctl watch -w json` with revisions and ids zeroed.
fn comparable_line(line: &str) -> String {
    fn zero(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (name, field) in map.iter_mut() {
                    if ["cluster_id", "member_id", "revision", "raft_term", "create_revision", "mod_revision"]
                        .contains(&name.as_str())
                    {
                        *field = 0.into();
                    } else {
                        zero(field);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(zero),
            _ => {}
        }
    }
    if line.starts_with("progress notify: ") {
        return "progress notify: N".into();
    }
    let mut value: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    zero(&mut value);
    value.to_string()
}

#[test]
fn several_watches_on_one_stream_and_progress_requests_print_as_against_etcd() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let follower = format!("127.0.0.1:{}", cluster.port(cluster.others(leader)[0]));
    let writer = format!("127.0.0.1:{}", cluster.port(leader));
    let dir = tempfile::tempdir().unwrap();
    let ours = interactive_script(dir.path(), &follower, &writer);
    let etcd = RealEtcd::start();
    let etcd_dir = dir.path().join("etcd");
    std::fs::create_dir_all(&etcd_dir).unwrap();
    let theirs = interactive_script(&etcd_dir, &etcd.endpoint, &etcd.endpoint);
    assert_eq!(theirs.len(), 12, "{theirs:#?}");
    assert_eq!(theirs.iter().filter(|line| *line == "progress notify: N").count(), 4, "{theirs:#?}");
    assert_eq!(ours, theirs);
}

/// What `raw_script` saw: stream one's responses by watch, stream two's in order.
type RawSeen = (std::collections::BTreeMap<i64, Vec<WatchResponse>>, Vec<WatchResponse>);

/// Filters, prev_kv, fragments, client-chosen and duplicate ids, an empty range,
/// cancels (known and unknown), an empty request, progress requests and
/// progress_notify, on two raw streams to `endpoint`; writes through `writer`.
fn raw_script(endpoint: &str, writer: &str) -> RawSeen {
    let value = "v".repeat(600 * 1024);
    for index in 0..5 {
        etcdctl(writer, &["put", &format!("big/{index}")], Some(&value)).unwrap_or_else(|e| panic!("{e}"));
    }
    // A linearizable read on `endpoint` first: a follower then holds every put above, so
    // the watches below (from its next revision) never see the last of them as new. It
    // did once, in a full run, on a follower a few milliseconds behind the leader.
    revision(endpoint);
    let requests = [
        creating(WatchCreateRequest { filters: vec![0], ..create("f/", "f0") }), // 0: no puts
        creating(WatchCreateRequest { filters: vec![1], prev_kv: true, ..create("f/", "f0") }), // 1: no deletes
        creating(WatchCreateRequest { prev_kv: true, fragment: true, ..create("big/", "big0") }), // 2
        creating(WatchCreateRequest { prev_kv: true, ..create("big/", "big0") }),               // 3
        creating(WatchCreateRequest { watch_id: 7, ..create("f/a", "") }),                      // 7
        creating(WatchCreateRequest { watch_id: 7, ..create("f/b", "") }),                      // duplicate
        creating(create("b", "a")),                                                             // empty range
        canceling(7),
        canceling(99),                        // unknown: no answer
        WatchRequest { request_union: None }, // nothing: no answer
        creating(create("f/", "f0")),         // 4: the next free id
        canceling(4),
    ];
    let runtime = runtime();
    runtime.block_on(async {
        let mut first = Call::open(endpoint, &[], frames(&requests), None).await;
        let mut seen = first.read(10, Duration::from_secs(10)).await;
        assert_eq!(seen.len(), 10, "{seen:?} {:?}", first.status);
        ok(writer, &["put", "f/a", "1"]);
        ok(writer, &["put", "f/a", "2"]);
        ok(writer, &["del", "f/a"]);
        ok(writer, &["del", "big/", "--prefix"]);
        seen.extend(first.read(6, Duration::from_secs(15)).await);
        seen.extend(first.read(1, Duration::from_millis(500)).await);
        assert_eq!(first.status, None, "a half-closed stream goes on");
        let mut second = Call::open(
            endpoint,
            &[],
            frames(&[creating(WatchCreateRequest { progress_notify: true, ..create("p", "") }), progress()]),
            None,
        )
        .await;
        let progressed = second.read(3, Duration::from_secs(10)).await;
        let written = revision(writer);
        assert!(
            progressed.iter().all(|response| response.header.as_ref().unwrap().revision >= written),
            "progress at or after the last write ({written}): {progressed:?}"
        );
        (by_watch(seen), progressed.into_iter().map(comparable).collect())
    })
}

#[test]
fn raw_watch_streams_answer_as_etcds_field_by_field() {
    let cluster = Cluster::start(3, &["--watch-progress-ms", "300"]);
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    let follower = format!("127.0.0.1:{}", cluster.port(cluster.others(leader)[0]));
    let writer = format!("127.0.0.1:{}", cluster.port(leader));
    let (ours, ours_progress) = raw_script(&follower, &writer);
    let etcd = RealEtcd::start_with(&["--experimental-watch-progress-notify-interval", "300ms"]);
    let (theirs, theirs_progress) = raw_script(&etcd.endpoint, &etcd.endpoint);
    // What etcd answered is what the test expects of it.
    let shape = |seen: &std::collections::BTreeMap<i64, Vec<WatchResponse>>| -> Vec<(i64, Vec<usize>)> {
        seen.iter().map(|(id, responses)| (*id, responses.iter().map(|r| r.events.len()).collect())).collect()
    };
    assert_eq!(
        shape(&theirs),
        [
            (-1, vec![0, 0]),
            (0, vec![0, 1]),
            (1, vec![0, 1, 1]),
            (2, vec![0, 3, 2]),
            (3, vec![0, 5]),
            (4, vec![0, 0]),
            (7, vec![0, 0])
        ],
        "{theirs:#?}"
    );
    assert!(theirs[&2][1].fragment && !theirs[&2][2].fragment);
    for (id, responses) in &theirs {
        assert_eq!(ours.get(id), Some(responses), "watch {id}: ours {:#?}", ours.get(id));
    }
    assert_eq!(ours.len(), theirs.len());
    assert_eq!(theirs_progress.iter().map(|r| r.watch_id).collect::<Vec<_>>(), [0, -1, 0]);
    assert_eq!(ours_progress, theirs_progress);
}

/// A frame whose prefix says `compressed` and `length`, followed by `bytes`.
fn raw_frame(compressed: u8, length: u32, bytes: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(compressed);
    out.put_u32(length);
    out.put_slice(bytes);
    out.freeze()
}

#[test]
fn bad_and_oversized_watch_requests_end_their_stream_with_a_status_and_the_node_serves_on() {
    let node = Single::start(&[]);
    let endpoint = format!("127.0.0.1:{}", node.port());
    let runtime = runtime();
    runtime.block_on(async {
        let valid = frames(&[creating(create("k", ""))]);
        for (what, tail) in [
            ("not a WatchRequest", raw_frame(0, 4, &[0xff; 4])),
            ("a 64 MiB message", raw_frame(0, 64 << 20, &[])),
            ("a compressed message", raw_frame(1, 2, &[0x0a, 0x00])),
            ("a message cut short", raw_frame(0, 100, &[0x0a; 3])),
        ] {
            let body: Bytes = [valid.clone(), tail].concat().into();
            let mut call = Call::open(&endpoint, &[], body, None).await;
            let seen = call.read(2, Duration::from_secs(10)).await;
            assert!(seen.len() == 1 && seen[0].created, "{what}: {seen:?}");
            let (code, message) =
                call.status.clone().unwrap_or_else(|| panic!("{what}: the stream did not end"));
            assert!(code != "0" && code.parse::<i32>().is_ok(), "{what}: {code} {message}");
        }

        // Extreme values of every field: answered, never a panic.
        let requests = [
            creating(WatchCreateRequest { watch_id: i64::MAX, start_revision: i64::MAX, ..create("k", "") }),
            creating(WatchCreateRequest { watch_id: -3, ..create("k", "") }),
            creating(WatchCreateRequest {
                start_revision: i64::MIN,
                filters: vec![-1, 99],
                ..create("", "")
            }),
            creating(WatchCreateRequest {
                key: vec![0xff; 1 << 20],
                range_end: vec![0],
                ..Default::default()
            }),
            canceling(i64::MIN),
            canceling(-1),
            progress(),
        ];
        let mut call = Call::open(&endpoint, &[], frames(&requests), None).await;
        let seen = call.read(6, Duration::from_secs(10)).await;
        let summary: Vec<(i64, bool, bool)> =
            seen.iter().map(|r| (r.watch_id, r.created, r.canceled)).collect();
        assert_eq!(
            summary,
            [
                (i64::MAX, true, false),
                (-1, true, true),
                (0, true, false),
                (1, true, false),
                (-1, false, false)
            ],
            "{seen:?}"
        );
        assert!(seen[1].cancel_reason.contains("negative"), "{:?}", seen[1]);

        // The 1001st watch of a stream is refused; the thousand before it are served.
        let many: Vec<WatchRequest> =
            (0..1001).map(|index| creating(create(&format!("many/{index}"), ""))).collect();
        let mut call = Call::open(&endpoint, &[], frames(&many), None).await;
        let seen = call.read(1001, Duration::from_secs(20)).await;
        assert_eq!(seen.len(), 1001);
        assert!(seen[..1000]
            .iter()
            .enumerate()
            .all(|(id, r)| r.created && !r.canceled && r.watch_id == id as i64));
        assert!(seen[1000].canceled && seen[1000].cancel_reason.contains("1000"), "{:?}", seen[1000]);
        ok(&endpoint, &["put", "many/999", "x"]);
        let event = call.read(1, Duration::from_secs(10)).await;
        assert_eq!((event[0].watch_id, event[0].events.len()), (999, 1), "{event:?}");
    });
    // The node serves on: a put, a get and a new watch.
    assert!(node.node.is_running());
    ok(&endpoint, &["put", "after", "1"]);
    assert_eq!(ok(&endpoint, &["get", "after"]), "after\n1\n");
    let dir = tempfile::tempdir().unwrap();
    let watcher = Watcher::start(dir.path(), "after", &endpoint, &["--rev=1", "after"]);
    assert_eq!(watcher.output_of(3), "PUT\nafter\n1\n");
}

/// Reads from `call` until `count` events came or the call ended (or 30 s passed).
async fn read_events(call: &mut Call, count: usize) -> Vec<WatchResponse> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut responses: Vec<WatchResponse> = Vec::new();
    while responses.iter().map(|r| r.events.len()).sum::<usize>() < count
        && !responses.iter().any(|r| r.canceled)
        && call.status.is_none()
        && Instant::now() < deadline
    {
        responses.extend(call.read(1, Duration::from_secs(1)).await);
    }
    responses
}

/// The keys of the events of `responses`, in order, and whether their revisions rise.
fn keys_in_order(responses: &[WatchResponse]) -> (Vec<String>, bool) {
    let events: Vec<_> = responses.iter().flat_map(|r| &r.events).collect();
    let keys =
        events.iter().map(|e| String::from_utf8_lossy(&e.kv.as_ref().unwrap().key).into_owned()).collect();
    let revisions: Vec<i64> = events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision).collect();
    (keys, revisions.windows(2).all(|pair| pair[0] < pair[1]))
}

#[test]
fn a_client_that_stops_reading_catches_up_from_the_history_or_is_canceled_when_it_is_compacted() {
    const WRITES: usize = 300;
    let value = vec![b'v'; 100];
    for (history_entries, catches_up) in [("10000", true), ("40", false)] {
        let node = Single::start(&["--watch-queue-rounds", "2", "--history-entries", history_entries]);
        let endpoint = format!("127.0.0.1:{}", node.port());
        let runtime = runtime();
        runtime.block_on(async {
            // A 1 KiB window: the server's sends stop after a few responses the test
            // does not read, its queue fills, and the hub drops the watch as slow.
            let body = frames(&[creating(create("slow/", "slow0"))]);
            let mut call = Call::open(&endpoint, &[], body, Some(1024)).await;
            assert!(call.read(1, Duration::from_secs(10)).await[0].created);
            for index in 0..WRITES {
                let written = put(node.port(), &format!("/v1/kv/slow/{index:03}"), &value);
                assert!(written.status / 100 == 2, "{}", written.text());
            }
            let responses = read_events(&mut call, WRITES).await;
            let (keys, rising) = keys_in_order(&responses);
            assert!(rising, "revisions go up, each once");
            let expected: Vec<String> = (0..keys.len()).map(|index| format!("slow/{index:03}")).collect();
            assert_eq!(keys, expected, "every write from the first, in order, none twice");
            if catches_up {
                assert_eq!(keys.len(), WRITES, "{:?}", responses.last());
                assert!(!responses.iter().any(|r| r.canceled));
            } else {
                let last = responses.last().expect("responses");
                assert!(last.canceled && last.compact_revision > 0, "{last:?}");
                assert!(keys.len() < WRITES, "the history was compacted under the slow watch");
                // Nothing it was sent is at or above the first revision still held.
                let sent_through = responses
                    .iter()
                    .flat_map(|r| &r.events)
                    .last()
                    .unwrap()
                    .kv
                    .as_ref()
                    .unwrap()
                    .mod_revision;
                assert!(sent_through < last.compact_revision, "{sent_through} {last:?}");
            }
        });
        assert!(node.node.is_running());
    }
}

#[test]
fn a_watch_needs_a_token_that_may_read_its_range() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "ops-0123456789abcdef write\napp-0123456789abcdef read app/\n").unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = free_ports(1)[0];
    let (port_text, data_dir) = (port.to_string(), dir.path().join("data"));
    let mut args = vec!["--port", &port_text, "--data-dir", data_dir.to_str().unwrap()];
    args.extend(["--auth-tokens", tokens.to_str().unwrap()]);
    args.extend(FAST_TIMINGS);
    let mut node = Daemon::new(dir.path(), port, &args);
    node.start().unwrap();
    wait_for(Duration::from_secs(10), "the node to lead", || {
        let ops = [("Authorization", "Bearer ops-0123456789abcdef")];
        let status = request(port, "GET", "/status", &ops, b"").ok()?;
        (status.status == 200 && status.json()["state"] == "leader").then_some(())
    });
    let endpoint = format!("127.0.0.1:{port}");
    let runtime = runtime();
    runtime.block_on(async {
        let body = || frames(&[creating(create("app/", "app0"))]);
        let mut anonymous = Call::open(&endpoint, &[], body(), None).await;
        assert!(anonymous.read(1, Duration::from_secs(5)).await.is_empty());
        assert_eq!(anonymous.status.as_ref().map(|(code, _)| code.as_str()), Some("16"), "Unauthenticated");
        let requests = [
            creating(create("app/", "app0")),
            creating(create("app/a", "app/c")),
            creating(create("other", "")),
            creating(create("", "\0")),
        ];
        let app = [("authorization", "Bearer app-0123456789abcdef")];
        let mut call = Call::open(&endpoint, &app, frames(&requests), None).await;
        let seen = call.read(4, Duration::from_secs(5)).await;
        let summary: Vec<(i64, bool)> = seen.iter().map(|r| (r.watch_id, r.canceled)).collect();
        assert_eq!(summary, [(0, false), (1, false), (-1, true), (-1, true)], "{seen:?}");
        assert!(!seen[2].cancel_reason.is_empty() && !seen[2].cancel_reason.contains("0123456789abcdef"));
    });
}
