//! Watches on real `mmapd` processes (`GET /v1/watch`): events arrive in order with the
//! API's fields as writes happen (the chunked body read as it comes, as `curl -N`
//! does), `from` replays the history then goes live without a gap or a duplicate, a
//! watch resumes on another node, a compacted `from` is 410, a slow watcher is
//! cancelled with where to resume, an idle watch gets progress lines.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// A watch's response, read incrementally.
struct Watch {
    reader: BufReader<TcpStream>,
    status: u16,
    headers: String,
    /// The current chunk's bytes not yet read.
    pending: Vec<u8>,
    ended: bool,
}

impl Watch {
    fn open(port: u16, query: &str) -> Watch {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(stream, "GET /v1/watch?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("the response head");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        Watch { reader, status, headers: head, pending: Vec::new(), ended: false }
    }

    /// The whole (non-chunked or chunked) body of an answer that is not a stream.
    fn body_json(&mut self) -> serde_json::Value {
        let mut raw = Vec::new();
        if self.headers.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            while let Some(chunk) = self.chunk() {
                raw.extend(chunk);
            }
        } else {
            let _ = self.reader.read_to_end(&mut raw);
        }
        serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&raw)))
    }

    fn chunk(&mut self) -> Option<Vec<u8>> {
        let mut size = String::new();
        if self.reader.read_line(&mut size).ok()? == 0 {
            return None;
        }
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        let mut chunk = vec![0; size + 2];
        self.reader.read_exact(&mut chunk).ok()?;
        chunk.truncate(size);
        (size > 0).then_some(chunk)
    }

    /// The next line, waiting at most `timeout`; None when the stream ended or
    /// nothing came.
    fn next_line(&mut self, timeout: Duration) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Some(serde_json::from_slice(&line[..line.len() - 1]).expect("a JSON line"));
            }
            if self.ended || Instant::now() >= deadline {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            self.reader.get_ref().set_read_timeout(Some(left)).unwrap();
            match self.chunk() {
                Some(chunk) => self.pending.extend(chunk),
                None => {
                    // A timeout mid-read leaves the stream unusable only if it split a
                    // chunk; the tests wait long enough that it does not.
                    if Instant::now() < deadline {
                        self.ended = true;
                    }
                }
            }
        }
    }

    /// The next event line (progress lines skipped), within 10 s.
    fn next_event(&mut self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.next_line(left).expect("an event within 10 s");
            if line["type"] != "progress" {
                return line;
            }
        }
    }
}

fn write(port: u16, key: &str, value: &[u8]) -> u64 {
    let response = put(port, &format!("/v1/kv/{key}"), value);
    assert!(response.status == 200 || response.status == 201, "{}", response.text());
    response.json()["revision"].as_u64().unwrap()
}

fn remove(port: u16, key: &str) -> u64 {
    let response = request(port, "DELETE", &format!("/v1/kv/{key}"), &[], b"").unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["revision"].as_u64().unwrap()
}

#[test]
fn events_arrive_in_order_with_their_fields_filtered_by_key_or_prefix_and_resume_on_another_node() {
    let cluster = Cluster::start(3, &[]);
    let (a, b, c) = (cluster.port(0), cluster.port(1), cluster.port(2));
    let mut prefix = Watch::open(a, "prefix=app%2F&prev=true");
    assert_eq!(prefix.status, 200, "{}", prefix.headers);
    let mut key = Watch::open(b, "key=app%2Fone");
    assert_eq!(key.status, 200);

    let first = write(c, "app/one", b"1");
    let other = write(c, "other", b"x");
    let second = write(c, "app/one", b"2");
    let deleted = remove(c, "app/one");
    let binary = write(c, "app/two", &[0xff, 0x00]);
    assert!(first < other && other < second && second < deleted && deleted < binary);

    let line = prefix.next_event();
    assert_eq!(line["type"], "put");
    assert_eq!(line["key"], "app/one");
    assert_eq!(line["value"], "1");
    assert_eq!(
        (&line["revision"], &line["create_revision"], &line["mod_revision"], &line["version"]),
        (&first.into(), &first.into(), &first.into(), &1.into())
    );
    assert_eq!(line["prev"], serde_json::Value::Null, "a created key has no previous value");
    let line = prefix.next_event();
    assert_eq!((line["revision"].as_u64(), line["version"].as_u64()), (Some(second), Some(2)), "{line}");
    assert_eq!((line["create_revision"].as_u64(), line["prev"]["value"].as_str()), (Some(first), Some("1")));
    let line = prefix.next_event();
    assert_eq!(line["type"], "delete");
    assert_eq!((line["key"].as_str(), line["revision"].as_u64()), (Some("app/one"), Some(deleted)));
    assert_eq!(line["prev"]["value"], "2");
    let line = prefix.next_event();
    assert_eq!(
        (line["key"].as_str(), line["value_base64"].as_str()),
        (Some("app/two"), Some("/wA=")),
        "{line}"
    );
    assert!(line.get("value").is_none());

    let revisions: Vec<u64> = (0..3).map(|_| key.next_event()["revision"].as_u64().unwrap()).collect();
    assert_eq!(revisions, vec![first, second, deleted], "the key watch sees only its key");

    // Resumable: a client that saw up to `second` reconnects to another node.
    let mut resumed = Watch::open(c, &format!("prefix=app%2F&from={}", second + 1));
    assert_eq!(resumed.status, 200);
    assert_eq!(resumed.next_event()["revision"].as_u64(), Some(deleted));
    assert_eq!(resumed.next_event()["revision"].as_u64(), Some(binary));
    // Then live, without a duplicate: the next event is the next write.
    let live = write(a, "app/three", b"3");
    assert_eq!(resumed.next_event()["revision"].as_u64(), Some(live));
    assert_eq!(prefix.next_event()["revision"].as_u64(), Some(live));
    assert!(resumed.next_line(Duration::from_millis(300)).is_none_or(|line| line["type"] == "progress"));
}

/// Watchers opened at any moment during a stream of writes, from a revision already
/// applied, see every write from there exactly once, in order: the history read and
/// the live events meet without a gap or an overlap.
#[test]
fn watches_opened_during_writes_see_every_write_from_their_revision_exactly_once() {
    let cluster = Cluster::start(1, &[]);
    let port = cluster.port(0);
    let base = write(port, "k/start", b"s");
    let writer = std::thread::spawn(move || {
        (0..150).map(|i| write(port, &format!("k/{i}"), b"v")).collect::<Vec<u64>>()
    });
    let mut watches = Vec::new();
    for i in 0..6 {
        std::thread::sleep(Duration::from_millis(40 * i));
        watches.push(Watch::open(port, &format!("prefix=k%2F&from={base}")));
    }
    let written = writer.join().unwrap();
    let mut expected = vec![base];
    expected.extend(written);
    for (i, watch) in watches.iter_mut().enumerate() {
        assert_eq!(watch.status, 200);
        let seen: Vec<u64> =
            (0..expected.len()).map(|_| watch.next_event()["revision"].as_u64().unwrap()).collect();
        assert_eq!(seen, expected, "watch {i}");
        let extra = watch.next_line(Duration::from_millis(200));
        assert!(extra.as_ref().is_none_or(|line| line["type"] == "progress"), "watch {i}: {extra:?}");
    }
}

#[test]
fn a_compacted_from_is_gone_an_idle_watch_gets_progress_and_a_slow_watcher_is_cancelled() {
    let cluster = Cluster::start(
        1,
        &["--history-entries", "200", "--watch-progress-ms", "200", "--watch-queue-rounds", "4"],
    );
    let port = cluster.port(0);
    let first = write(port, "c/0", b"v");
    for i in 1..220 {
        write(port, &format!("c/{i}"), b"v");
    }
    // The leader compacts on its next tick.
    let compact_revision = wait_for(Duration::from_secs(5), "an automatic compaction", || {
        let mut watch = Watch::open(port, &format!("prefix=c%2F&from={first}"));
        (watch.status == 410).then(|| watch.body_json())
    });
    assert_eq!(compact_revision["code"], "compacted");
    let point = compact_revision["compact_revision"].as_u64().unwrap();
    assert!(point >= first, "{compact_revision}");
    let mut after = Watch::open(port, &format!("prefix=c%2F&from={}", point + 1));
    assert_eq!(after.status, 200, "one above the compaction point is held");
    assert!(after.next_event()["revision"].as_u64().unwrap() > point);

    // A manual compaction at or below the point is a no-op that says so; above the
    // current revision, a 400.
    let answer =
        request(port, "POST", "/v1/compact", &[], format!("{{\"revision\":{point}}}").as_bytes()).unwrap();
    assert_eq!(
        (answer.status, answer.json()["compacted"].as_bool()),
        (200, Some(false)),
        "{}",
        answer.text()
    );
    let answer = request(port, "POST", "/v1/compact", &[], b"{\"revision\":100000}").unwrap();
    assert_eq!(answer.status, 400, "{}", answer.text());

    // Idle: progress lines with the node's revision, also while other keys change.
    let mut idle = Watch::open(port, "key=nothing");
    let progress = idle.next_line(Duration::from_secs(3)).expect("a progress line");
    assert_eq!(progress["type"], "progress");
    assert!(progress["revision"].as_u64().unwrap() >= point);
    let busy = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            write(port, "elsewhere", b"v");
        }
    });
    let progress = idle.next_line(Duration::from_millis(1000)).expect("progress while other keys change");
    assert_eq!(progress["type"], "progress");
    busy.join().unwrap();

    // Slow: a watcher that does not read while large values are written.
    let mut slow = Watch::open(port, "prefix=big%2F");
    assert_eq!(slow.status, 200);
    let big = vec![b'x'; 512 * 1024];
    let mut revisions = Vec::new();
    for i in 0..60 {
        revisions.push(write(port, &format!("big/{i}"), &big));
    }
    assert_eq!(get(port, "/health").status, 200, "the node stays healthy");
    let mut delivered = Vec::new();
    let cancelled = loop {
        let line = slow.next_line(Duration::from_secs(10)).expect("a line before the end");
        match line["type"].as_str() {
            Some("put") => delivered.push(line["revision"].as_u64().unwrap()),
            Some("cancelled") => break line,
            _ => {}
        }
    };
    assert_eq!(cancelled["reason"], "slow");
    let resume_from = cancelled["resume_from"].as_u64().unwrap();
    assert_eq!(delivered, revisions[..delivered.len()].to_vec(), "in order, nothing skipped before the end");
    assert!(delivered.len() < revisions.len(), "the slow watcher was cancelled before the end");
    let next_missing = revisions[delivered.len()];
    assert!(resume_from <= next_missing && resume_from > *delivered.last().unwrap_or(&0), "{resume_from}");
    assert!(slow.next_line(Duration::from_secs(1)).is_none(), "the cancelled line is the last");
    // Resuming from there sees exactly the rest (the history keeps at least 150 events,
    // three quarters of 200, more than the 60 large writes).
    let mut resumed = Watch::open(port, &format!("prefix=big%2F&from={resume_from}"));
    assert_eq!(resumed.status, 200, "{}", resumed.headers);
    let rest: Vec<u64> = (delivered.len()..revisions.len())
        .map(|_| resumed.next_event()["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(rest, revisions[delivered.len()..].to_vec());
}

/// A watch from past the node's revision (a member still catching up, or a client
/// that read a newer revision elsewhere) gets no progress line until the node reaches
/// the revision before its `from`: a progress revision below it would read as a point
/// to resume from that repeats what the client had. Found by the chaos test, on a
/// member that had just joined under a new id (revision 0) and a gRPC watch from 12240.
#[test]
fn a_watch_from_past_the_nodes_revision_gets_no_progress_until_the_node_reaches_it() {
    let cluster = Cluster::start(1, &["--watch-progress-ms", "100"]);
    let port = cluster.port(0);
    let now = write(port, "before", b"v");
    let from = now + 20;
    let mut ahead = Watch::open(port, &format!("key=ahead&from={from}"));
    assert_eq!(ahead.status, 200);
    // Five progress intervals with the node behind `from`: nothing.
    let line = ahead.next_line(Duration::from_millis(500));
    assert!(line.is_none(), "a line while the node is at {now}, below {from}: {line:?}");
    let mut last = now;
    while last + 1 < from {
        last = write(port, "elsewhere", b"v");
    }
    let progress = ahead.next_line(Duration::from_secs(3)).expect("progress once the node reached from - 1");
    assert_eq!(progress["type"], "progress", "{progress}");
    assert!(progress["revision"].as_u64().unwrap() + 1 >= from, "{progress} for a watch from {from}");
}
