//! Watch fan-out latency against a running node: mmapd (`GET /v1/watch`, NDJSON) or
//! etcd 3.4 (`POST /v3/watch` on its JSON gateway, base64 keys and values).
//!
//! Opens `--watchers` watch streams, waits until every one is established, then writes
//! at a fixed rate (`--rate` writes/s, open loop: write `s` is due at `s / rate` s, sent
//! on one of `WRITERS` keep-alive connections). Each value carries its sequence number and
//! the time it was sent (nanoseconds since the bench started, this process's monotonic
//! clock), so a watcher measures delivery latency as the time its frame arrived minus
//! the write's send time: the write's commit, apply and fan-out to this watcher.
//!
//! Shapes:
//! - `keys`: one watcher per key (`--watchers` distinct keys, default 1,000); the writer
//!   goes round the keys, so every write is for exactly one watcher;
//! - `prefix`: every watcher on one prefix (default 100); the writer goes round 1,000
//!   keys under it, so every write is for every watcher.
//!
//! Writes stop after `--seconds` even if fewer than rate x seconds were sent (a system
//! that cannot keep the rate shows it as a lower `rate`). After the writes it waits up to `--drain-s` for what is still on its way; an event
//! not received by then is missed; one received later than `--late-ms` is late. Prints
//! a summary to stderr and one line for bench/run on stdout:
//! `WATCH_RESULT p50_us=.. p99_us=.. max_us=.. writes=.. rate=.. expected=.. received=..
//! missed=.. late=.. cancelled=.. write_errors=..`.
//!
//! Run: `cargo bench --bench watch_fanout -- --system mmapd --addr 127.0.0.1:3001
//! --shape keys` (bench/run starts single mmapd and etcd nodes and runs both shapes on
//! both; BENCHMARKS.md, "Watch fan-out").

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Keep-alive connections the writer spreads its writes over (open loop: a slow write
/// does not hold back the next ones unless all of these are busy).
const WRITERS: usize = 32;
/// Distinct keys the prefix shape writes under its prefix.
const PREFIX_KEYS: u64 = 1000;
/// Value size, like the other benches' (100 bytes).
const VALUE_BYTES: usize = 100;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Mmapd,
    Etcd,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    Keys,
    Prefix,
}

#[derive(Clone, Debug)]
struct Options {
    system: System,
    addr: String,
    shape: Shape,
    watchers: usize,
    rate: u64,
    seconds: u64,
    late_ms: u64,
    drain_s: u64,
}

fn parse_options() -> Options {
    let mut options = Options {
        system: System::Mmapd,
        addr: "127.0.0.1:3001".into(),
        shape: Shape::Keys,
        watchers: 0,
        rate: 1000,
        seconds: 10,
        late_ms: 1000,
        drain_s: 10,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        // `cargo bench` passes `--bench` to harness-less benches.
        if arg == "--bench" {
            continue;
        }
        let value = args.next().unwrap_or_else(|| usage(&format!("{arg} needs a value")));
        let number = || value.parse::<u64>().unwrap_or_else(|_| usage(&format!("{arg}: not a number")));
        match arg.as_str() {
            "--system" => {
                options.system = match value.as_str() {
                    "mmapd" => System::Mmapd,
                    "etcd" => System::Etcd,
                    _ => usage("--system is mmapd or etcd"),
                }
            }
            "--addr" => options.addr = value.clone(),
            "--shape" => {
                options.shape = match value.as_str() {
                    "keys" => Shape::Keys,
                    "prefix" => Shape::Prefix,
                    _ => usage("--shape is keys or prefix"),
                }
            }
            "--watchers" => options.watchers = number() as usize,
            "--rate" => options.rate = number().max(1),
            "--seconds" => options.seconds = number().max(1),
            "--late-ms" => options.late_ms = number(),
            "--drain-s" => options.drain_s = number(),
            _ => usage(&format!("unknown argument {arg}")),
        }
    }
    if options.watchers == 0 {
        options.watchers = match options.shape {
            Shape::Keys => 1000,
            Shape::Prefix => 100,
        };
    }
    options
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "watch_fanout: {problem}\nusage: watch_fanout --system mmapd|etcd --addr HOST:PORT --shape keys|prefix \
         [--watchers N] [--rate WRITES_PER_S] [--seconds S] [--late-ms MS] [--drain-s S]"
    );
    std::process::exit(2)
}

/// What one watcher received.
#[derive(Default)]
struct Received {
    /// Delivery latency of each event, microseconds.
    latencies_us: Vec<u32>,
    cancelled: bool,
}

struct Shared {
    epoch: Instant,
    /// Events received by all watchers.
    received: AtomicU64,
    /// Watchers whose stream is established (subscribed on the server).
    established: AtomicU64,
    stop: AtomicBool,
}

fn main() {
    let options = parse_options();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(run(options));
}

async fn run(options: Options) {
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        received: AtomicU64::new(0),
        established: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    // Fresh keys for each run, so rounds on one node do not see each other's writes.
    let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros();
    let base = format!("wf/{run_id}/");

    // Watchers.
    let mut watchers = Vec::new();
    for i in 0..options.watchers {
        let watched = match options.shape {
            Shape::Keys => Watched::Key(format!("{base}k{i}")),
            Shape::Prefix => Watched::Prefix(format!("{base}p/")),
        };
        let received = Arc::new(Mutex::new(Received::default()));
        let task = tokio::spawn(watch(
            options.system,
            options.addr.clone(),
            watched,
            received.clone(),
            shared.clone(),
        ));
        watchers.push((task, received));
        // Do not open a thousand connections in one burst (listen backlog).
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let opened = Instant::now();
    while shared.established.load(Ordering::Acquire) < options.watchers as u64 {
        if opened.elapsed() > Duration::from_secs(60) {
            eprintln!(
                "watch_fanout: only {} of {} watchers established after 60 s",
                shared.established.load(Ordering::Acquire),
                options.watchers
            );
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "watch_fanout: {} watchers established in {:.2} s",
        options.watchers,
        opened.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The writer.
    let total = options.rate * options.seconds;
    let next = Arc::new(AtomicU64::new(0));
    let succeeded = Arc::new(Mutex::new(Vec::<u64>::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let (options, base, next, succeeded, errors, shared) =
            (options.clone(), base.clone(), next.clone(), succeeded.clone(), errors.clone(), shared.clone());
        writers.push(tokio::spawn(async move {
            let mut sender = connect(&options.addr).await;
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                // A system that cannot keep the rate writes less, not for longer.
                if seq >= total || start.elapsed() >= Duration::from_secs(options.seconds) {
                    return;
                }
                let due = start + Duration::from_nanos(seq * 1_000_000_000 / options.rate);
                tokio::time::sleep_until(due.into()).await;
                let key = match options.shape {
                    Shape::Keys => format!("{base}k{}", seq % options.watchers as u64),
                    Shape::Prefix => format!("{base}p/{}", seq % PREFIX_KEYS),
                };
                let sent_ns = shared.epoch.elapsed().as_nanos() as u64;
                let mut value = format!("{seq} {sent_ns} ");
                value.extend(std::iter::repeat_n('x', VALUE_BYTES.saturating_sub(value.len())));
                let ok = match write(&mut sender, options.system, &options.addr, &key, value.as_bytes()).await
                {
                    Ok(ok) => ok,
                    Err(_) => {
                        sender = connect(&options.addr).await;
                        false
                    }
                };
                if ok {
                    succeeded.lock().unwrap().push(seq);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let write_seconds = start.elapsed().as_secs_f64();
    let succeeded = std::mem::take(&mut *succeeded.lock().unwrap());
    let expected: u64 = match options.shape {
        Shape::Keys => succeeded.len() as u64,
        Shape::Prefix => succeeded.len() as u64 * options.watchers as u64,
    };

    // Drain.
    let drain_until = Instant::now() + Duration::from_secs(options.drain_s);
    while shared.received.load(Ordering::Acquire) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shared.stop.store(true, Ordering::Release);
    let mut latencies = Vec::new();
    let mut cancelled = 0;
    for (task, received) in watchers {
        task.abort();
        let received = std::mem::take(&mut *received.lock().unwrap());
        latencies.extend(received.latencies_us);
        cancelled += received.cancelled as u64;
    }
    latencies.sort_unstable();
    let received = latencies.len() as u64;
    let late = latencies.iter().filter(|&&us| us as u64 > options.late_ms * 1000).count();
    let percentile = |p: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        latencies[((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1] as u64
    };
    let (p50, p99, max) = (percentile(0.50), percentile(0.99), latencies.last().copied().unwrap_or(0) as u64);
    let rate = succeeded.len() as f64 / write_seconds;
    eprintln!(
        "watch_fanout: {:?} {:?} x{}: {} writes in {write_seconds:.1} s ({rate:.0}/s), {} write errors; \
         events {received} of {expected} ({} missed, {late} later than {} ms, {cancelled} watchers cancelled); \
         latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        options.system,
        options.shape,
        options.watchers,
        succeeded.len(),
        errors.load(Ordering::Relaxed),
        expected.saturating_sub(received),
        options.late_ms,
        p50 as f64 / 1e3,
        p99 as f64 / 1e3,
        max as f64 / 1e3,
    );
    println!(
        "WATCH_RESULT p50_us={p50} p99_us={p99} max_us={max} writes={} rate={rate:.0} expected={expected} \
         received={received} missed={} late={late} cancelled={cancelled} write_errors={}",
        succeeded.len(),
        expected.saturating_sub(received),
        errors.load(Ordering::Relaxed)
    );
    // The watch connections' tasks were aborted; do not wait for the runtime to notice.
    std::process::exit(0);
}

enum Watched {
    Key(String),
    Prefix(String),
}

async fn connect(addr: &str) -> SendRequest<Full<Bytes>> {
    let mut tries = 0;
    loop {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(true).unwrap();
                let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .expect("HTTP handshake");
                tokio::spawn(connection);
                return sender;
            }
            Err(error) if tries < 50 => {
                tries += 1;
                if tries == 1 {
                    eprintln!("watch_fanout: connect {addr}: {error}; retrying");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("connect {addr}: {error}"),
        }
    }
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// One write; Ok(false): the server answered an error.
async fn write(
    sender: &mut SendRequest<Full<Bytes>>,
    system: System,
    addr: &str,
    key: &str,
    value: &[u8],
) -> Result<bool, hyper::Error> {
    // Go's net/http refuses an HTTP/1.1 request without Host.
    let request = match system {
        System::Mmapd => Request::put(format!("/v1/kv/{key}"))
            .header("host", addr)
            .body(Full::new(Bytes::copy_from_slice(value))),
        System::Etcd => {
            let body = format!("{{\"key\":\"{}\",\"value\":\"{}\"}}", b64(key.as_bytes()), b64(value));
            Request::post("/v3/kv/put")
                .header("host", addr)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
        }
    }
    .unwrap();
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let ok = response.status().is_success();
    response.into_body().collect().await?;
    Ok(ok)
}

/// One watch stream: records each event's latency until aborted.
async fn watch(
    system: System,
    addr: String,
    watched: Watched,
    received: Arc<Mutex<Received>>,
    shared: Arc<Shared>,
) {
    let mut sender = connect(&addr).await;
    let request = match (system, &watched) {
        (System::Mmapd, Watched::Key(key)) => {
            Request::get(format!("/v1/watch?key={}", key.replace('/', "%2F")))
                .header("host", &addr)
                .body(Full::default())
        }
        (System::Mmapd, Watched::Prefix(prefix)) => {
            Request::get(format!("/v1/watch?prefix={}", prefix.replace('/', "%2F")))
                .header("host", &addr)
                .body(Full::default())
        }
        (System::Etcd, watched) => {
            let body = match watched {
                Watched::Key(key) => {
                    format!("{{\"create_request\":{{\"key\":\"{}\"}}}}", b64(key.as_bytes()))
                }
                Watched::Prefix(prefix) => {
                    let mut end = prefix.as_bytes().to_vec();
                    *end.last_mut().unwrap() += 1;
                    format!(
                        "{{\"create_request\":{{\"key\":\"{}\",\"range_end\":\"{}\"}}}}",
                        b64(prefix.as_bytes()),
                        b64(&end)
                    )
                }
            };
            Request::post("/v3/watch")
                .header("host", &addr)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
        }
    }
    .unwrap();
    sender.ready().await.expect("watch connection");
    let response = sender.send_request(request).await.expect("watch request");
    assert!(response.status().is_success(), "watch answered {}", response.status());
    // mmapd subscribes before it answers; etcd's first message says `created`.
    if system == System::Mmapd {
        shared.established.fetch_add(1, Ordering::AcqRel);
    }
    let mut body = response.into_body();
    let mut pending: Vec<u8> = Vec::new();
    let mut latencies = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        let Ok(data) = frame.into_data() else { continue };
        let arrived_ns = shared.epoch.elapsed().as_nanos() as u64;
        pending.extend_from_slice(&data);
        let Some(end) = pending.iter().rposition(|&b| b == b'\n') else { continue };
        for line in pending[..end].split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            match system {
                System::Mmapd => {
                    if contains(line, b"\"type\":\"cancelled\"") {
                        received.lock().unwrap().cancelled = true;
                    }
                    for value in string_fields(line, b"\"value\":\"") {
                        if let Some(sent_ns) = sent_ns(value) {
                            latencies.push(((arrived_ns.saturating_sub(sent_ns)) / 1000) as u32);
                        }
                    }
                }
                System::Etcd => {
                    if contains(line, b"\"created\":true") {
                        shared.established.fetch_add(1, Ordering::AcqRel);
                    }
                    if contains(line, b"\"canceled\":true") {
                        received.lock().unwrap().cancelled = true;
                    }
                    for value in string_fields(line, b"\"value\":\"") {
                        let Ok(value) = base64::engine::general_purpose::STANDARD.decode(value) else {
                            continue;
                        };
                        if let Some(sent_ns) = sent_ns(&value) {
                            latencies.push(((arrived_ns.saturating_sub(sent_ns)) / 1000) as u32);
                        }
                    }
                }
            }
        }
        pending.drain(..=end);
        if !latencies.is_empty() {
            shared.received.fetch_add(latencies.len() as u64, Ordering::AcqRel);
            received.lock().unwrap().latencies_us.append(&mut latencies);
        }
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// The contents of every `"field":"..."` string in `line` (no escapes in our values).
fn string_fields<'a>(line: &'a [u8], field: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = line;
    std::iter::from_fn(move || {
        let at = rest.windows(field.len()).position(|window| window == field)?;
        let start = at + field.len();
        let len = rest[start..].iter().position(|&b| b == b'"')?;
        let value = &rest[start..start + len];
        rest = &rest[start + len..];
        Some(value)
    })
}

/// The send time a value carries: `SEQ NANOS xxx...`.
fn sent_ns(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    let mut fields = text.split(' ');
    fields.next()?.parse::<u64>().ok()?;
    fields.next()?.parse().ok()
}
