//! Fuzzes the snapshot file decoder: it must never panic, and a file it accepts must
//! re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mmapd::store::snapshot::{decode_snapshot, encode_snapshot};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(view) = decode_snapshot(bytes) {
        assert_eq!(encode_snapshot(&view.meta, view.first_segment_seq, view.data), bytes);
    }
});
