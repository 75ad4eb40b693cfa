//! Fuzzes the segment header and log record decoders: they must never panic, and a record
//! they accept must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmapd::raft::Entry;
use mmapd::store::record::{decode_record, decode_segment_header, encode_record};

fuzz_target!(|bytes: &[u8]| {
    let _ = decode_segment_header(bytes);
    if let Ok(record) = decode_record(bytes) {
        let entry = Entry {
            term: record.term,
            index: record.index,
            kind: record.kind,
            data: bytes::Bytes::copy_from_slice(record.payload),
        };
        let mut encoded = Vec::new();
        encode_record(&entry, record.durable_end, &mut encoded);
        assert_eq!(&encoded[..], &bytes[..encoded.len()]);
    }
});
