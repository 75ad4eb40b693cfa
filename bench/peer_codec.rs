//! Throughput of the peer wire codec on `AppendEntries` batches.
//!
//! Encodes and decodes one batch of 64 messages x 1,024 entries of 100-byte payloads
//! (65,536 entries, about 8 MB), and prints the median over rounds of each direction, in
//! entries per second and MB/s. Run: `cargo bench --bench peer_codec`.

use std::time::Instant;

use bytes::Bytes;
use mmapd::raft::{Entry, EntryKind, Message, MessageBody};
use mmapd::transport::codec::{decode_batch, encode_batch};

const MESSAGES: u64 = 64;
const ENTRIES_PER_MESSAGE: u64 = 1024;
const PAYLOAD_BYTES: usize = 100;
const ROUNDS: usize = 21;

fn main() {
    let payload = Bytes::from(vec![b'p'; PAYLOAD_BYTES]);
    let messages: Vec<Message> = (0..MESSAGES)
        .map(|message| {
            let prev_log_index = message * ENTRIES_PER_MESSAGE;
            let entries = (1..=ENTRIES_PER_MESSAGE)
                .map(|offset| Entry {
                    term: 7,
                    index: prev_log_index + offset,
                    kind: EntryKind::Normal,
                    data: payload.clone(),
                })
                .collect();
            Message {
                from: 1,
                to: 2 + message % 2,
                term: 7,
                body: MessageBody::AppendEntries {
                    prev_log_index,
                    prev_log_term: 7,
                    entries,
                    leader_commit: 1,
                },
            }
        })
        .collect();
    let mut encode_secs = Vec::new();
    let mut decode_secs = Vec::new();
    let mut encoded = Vec::new();
    for _ in 0..ROUNDS {
        encoded = Vec::new();
        let started = Instant::now();
        encode_batch(&messages, &mut encoded);
        encode_secs.push(started.elapsed().as_secs_f64());
        let body = Bytes::from(std::mem::take(&mut encoded));
        let started = Instant::now();
        let decoded = decode_batch(body.clone()).expect("decode");
        decode_secs.push(started.elapsed().as_secs_f64());
        assert_eq!(decoded.len(), messages.len());
        encoded = body.to_vec();
    }
    let entries = (MESSAGES * ENTRIES_PER_MESSAGE) as f64;
    let megabytes = encoded.len() as f64 / 1e6;
    println!("peer_codec: {MESSAGES} AppendEntries x {ENTRIES_PER_MESSAGE} entries x {PAYLOAD_BYTES} B = {megabytes:.1} MB; medians of {ROUNDS}");
    for (name, mut secs) in [("encode", encode_secs), ("decode", decode_secs)] {
        secs.sort_by(f64::total_cmp);
        let median = secs[secs.len() / 2];
        println!(
            "  {name}: {:.2} ms  {:.1} M entries/s  {:.0} MB/s",
            median * 1e3,
            entries / median / 1e6,
            megabytes / median
        );
    }
}
