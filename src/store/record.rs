//! Pure encoding and decoding of log records and segment headers (no IO, fuzzable).
//!
//! The byte layout is specified in `docs/format.md`; the constants below are its offsets.

use crate::raft::{Entry, EntryKind};

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"MMAPDSEG";
/// Segment format version.
pub const SEGMENT_VERSION: u32 = 1;
/// Size of the segment header; the first record starts here.
pub const SEGMENT_HEADER_BYTES: u64 = 64;
pub(crate) const SEGMENT_VERSION_OFFSET: usize = 8;
const SEGMENT_CRC_OFFSET: usize = 12;
const SEGMENT_SEQ_OFFSET: usize = 16;

/// Segment files are always a multiple of this long (created and grown in such steps), so
/// a file of another length was truncated by someone else.
pub const SEGMENT_LENGTH_MULTIPLE_BYTES: u64 = 4096;
/// Size of a record header; the payload starts here.
pub const RECORD_HEADER_BYTES: usize = 40;
/// Records start at offsets that are multiples of this.
pub const RECORD_ALIGN_BYTES: usize = 8;
/// The largest payload a record may carry.
pub const MAX_PAYLOAD_BYTES: usize = 64 << 20;
const LEN_OFFSET: usize = 0;
const CRC_OFFSET: usize = 4;
const TERM_OFFSET: usize = 8;
const INDEX_OFFSET: usize = 16;
const DURABLE_END_OFFSET: usize = 24;
const KIND_OFFSET: usize = 32;
const RESERVED_OFFSET: usize = 33;

const _: () = assert!(SEGMENT_SEQ_OFFSET + 8 <= SEGMENT_HEADER_BYTES as usize);
const _: () = assert!(SEGMENT_HEADER_BYTES as usize % RECORD_ALIGN_BYTES == 0);
const _: () = assert!(
    SEGMENT_LENGTH_MULTIPLE_BYTES.is_power_of_two() && SEGMENT_HEADER_BYTES < SEGMENT_LENGTH_MULTIPLE_BYTES
);
const _: () = assert!(RESERVED_OFFSET + 7 == RECORD_HEADER_BYTES);
const _: () = assert!(RECORD_HEADER_BYTES % RECORD_ALIGN_BYTES == 0);
const _: () = assert!(CRC_OFFSET == LEN_OFFSET + 4 && TERM_OFFSET == CRC_OFFSET + 4);
const _: () = assert!(MAX_PAYLOAD_BYTES <= u32::MAX as usize);

/// A record decoded from bytes; the payload borrows from the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Entry term.
    pub term: u64,
    /// Entry index.
    pub index: u64,
    /// The segment offset up to which the segment was durable when this record was written.
    pub durable_end: u64,
    /// Entry kind.
    pub kind: EntryKind,
    /// Entry payload.
    pub payload: &'a [u8],
    /// Bytes the record occupies, padding included.
    pub encoded_len: usize,
}

/// Why bytes are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// A header of zeros: where a segment's records end (if everything after is zero too).
    Zeros,
    /// Not a valid record, with the reason.
    Invalid(&'static str),
}

/// The bytes a record with `payload_len` payload bytes occupies, padding included.
pub fn encoded_len(payload_len: usize) -> usize {
    (RECORD_HEADER_BYTES + payload_len).next_multiple_of(RECORD_ALIGN_BYTES)
}

/// Encodes `entry` into `out` (appended). Asserts the checksum by decoding it back.
pub fn encode_record(entry: &Entry, durable_end: u64, out: &mut Vec<u8>) {
    assert!(entry.index >= 1 && entry.term >= 1, "entry {} term {} must be >= 1", entry.index, entry.term);
    assert!(entry.data.len() <= MAX_PAYLOAD_BYTES, "entry {} payload too large", entry.index);
    let start = out.len();
    out.extend_from_slice(&(entry.data.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&entry.term.to_le_bytes());
    out.extend_from_slice(&entry.index.to_le_bytes());
    out.extend_from_slice(&durable_end.to_le_bytes());
    out.push(entry.kind as u8);
    out.extend_from_slice(&[0; 7]);
    out.extend_from_slice(&entry.data);
    out.resize(start + encoded_len(entry.data.len()), 0);
    let crc = record_crc(&out[start..], entry.data.len());
    out[start + CRC_OFFSET..start + CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    // Assert at the writing end: what we wrote decodes to what we were given.
    let back = decode_record(&out[start..]).expect("a record we just encoded must decode");
    assert!(back.index == entry.index && back.term == entry.term && back.payload == &entry.data[..]);
}

/// The checksum of a record: covers the length and everything from the term to the end of
/// the payload (not the checksum field itself, not the padding).
fn record_crc(record: &[u8], payload_len: usize) -> u32 {
    let crc = crc32c::crc32c(&record[LEN_OFFSET..CRC_OFFSET]);
    crc32c::crc32c_append(crc, &record[TERM_OFFSET..RECORD_HEADER_BYTES + payload_len])
}

/// Decodes the record at the start of `bytes` (which may run on past it).
pub fn decode_record(bytes: &[u8]) -> Result<RecordView<'_>, RecordError> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Err(if bytes.iter().all(|&b| b == 0) {
            RecordError::Zeros
        } else {
            RecordError::Invalid("header cut short")
        });
    }
    let header = &bytes[..RECORD_HEADER_BYTES];
    if header.iter().all(|&b| b == 0) {
        return Err(RecordError::Zeros);
    }
    let payload_len = u32_at(header, LEN_OFFSET) as usize;
    if payload_len > MAX_PAYLOAD_BYTES {
        return Err(RecordError::Invalid("payload length over the limit"));
    }
    let encoded = encoded_len(payload_len);
    if bytes.len() < encoded {
        return Err(RecordError::Invalid("record runs past the end of the file"));
    }
    // Cheap field checks first, so scanning garbage rarely pays for a checksum.
    let kind = EntryKind::from_tag(header[KIND_OFFSET]).ok_or(RecordError::Invalid("unknown entry kind"))?;
    if header[RESERVED_OFFSET..].iter().any(|&b| b != 0) {
        return Err(RecordError::Invalid("reserved bytes not zero"));
    }
    let term = u64_at(header, TERM_OFFSET);
    let index = u64_at(header, INDEX_OFFSET);
    if term == 0 || index == 0 {
        return Err(RecordError::Invalid("term or index is 0"));
    }
    if u32_at(header, CRC_OFFSET) != record_crc(bytes, payload_len) {
        return Err(RecordError::Invalid("checksum mismatch"));
    }
    if bytes[RECORD_HEADER_BYTES + payload_len..encoded].iter().any(|&b| b != 0) {
        return Err(RecordError::Invalid("padding not zero"));
    }
    Ok(RecordView {
        term,
        index,
        durable_end: u64_at(header, DURABLE_END_OFFSET),
        kind,
        payload: &bytes[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + payload_len],
        encoded_len: encoded,
    })
}

/// Encodes the header of segment number `seq`.
pub fn encode_segment_header(seq: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut header = [0; SEGMENT_HEADER_BYTES as usize];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    header[SEGMENT_VERSION_OFFSET..SEGMENT_VERSION_OFFSET + 4]
        .copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    header[SEGMENT_SEQ_OFFSET..SEGMENT_SEQ_OFFSET + 8].copy_from_slice(&seq.to_le_bytes());
    let crc = segment_header_crc(&header);
    header[SEGMENT_CRC_OFFSET..SEGMENT_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(decode_segment_header(&header), Ok(seq));
    header
}

fn segment_header_crc(header: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&header[..SEGMENT_CRC_OFFSET]);
    crc32c::crc32c_append(crc, &header[SEGMENT_SEQ_OFFSET..SEGMENT_HEADER_BYTES as usize])
}

/// Decodes a segment header, returning the segment number.
pub fn decode_segment_header(bytes: &[u8]) -> Result<u64, &'static str> {
    if bytes.len() < SEGMENT_HEADER_BYTES as usize {
        return Err("segment header cut short");
    }
    if bytes[..8] != SEGMENT_MAGIC {
        return Err("bad segment magic");
    }
    if u32_at(bytes, SEGMENT_VERSION_OFFSET) != SEGMENT_VERSION {
        return Err("unsupported segment version");
    }
    if u32_at(bytes, SEGMENT_CRC_OFFSET) != segment_header_crc(bytes) {
        return Err("segment header checksum mismatch");
    }
    Ok(u64_at(bytes, SEGMENT_SEQ_OFFSET))
}

pub(crate) fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

pub(crate) fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry { index, term, kind: EntryKind::Normal, data: Bytes::copy_from_slice(data) }
    }

    #[test]
    fn record_round_trips_with_padding() {
        let mut out = Vec::new();
        encode_record(&entry(7, 3, b"hello"), 64, &mut out);
        assert_eq!(out.len(), 48);
        let view = decode_record(&out).unwrap();
        assert_eq!((view.index, view.term, view.durable_end, view.payload), (7, 3, 64, &b"hello"[..]));
        assert_eq!(view.encoded_len, 48);
    }

    #[test]
    fn every_single_bit_flip_in_a_record_is_detected() {
        let mut out = Vec::new();
        encode_record(&entry(9, 2, b"payload!"), 0, &mut out);
        for bit in 0..(RECORD_HEADER_BYTES + 8) * 8 {
            let mut flipped = out.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_record(&flipped).is_err(), "flip of bit {bit} not detected");
        }
    }

    #[test]
    fn zero_header_is_the_end_marker() {
        assert_eq!(decode_record(&[0; 100]), Err(RecordError::Zeros));
        assert_eq!(decode_record(&[0; 3]), Err(RecordError::Zeros));
    }

    proptest! {
        #[test]
        fn decoders_never_panic_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_segment_header(&bytes);
            if let Ok(record) = decode_record(&bytes) {
                let entry = Entry { term: record.term, index: record.index, kind: record.kind, data: Bytes::copy_from_slice(record.payload) };
                let mut encoded = Vec::new();
                encode_record(&entry, record.durable_end, &mut encoded);
                prop_assert_eq!(&encoded[..], &bytes[..record.encoded_len]);
            }
            if let Ok(view) = crate::store::snapshot::decode_snapshot(&bytes) {
                let encoded = crate::store::snapshot::encode_snapshot(&view.meta, view.first_segment_seq, view.data);
                prop_assert_eq!(&encoded[..], &bytes[..]);
            }
        }

        #[test]
        fn record_round_trips(index in 1u64.., term in 1u64.., data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut out = Vec::new();
            encode_record(&entry(index, term, &data), 0, &mut out);
            let view = decode_record(&out).unwrap();
            prop_assert_eq!((view.index, view.term, view.payload), (index, term, &data[..]));
        }
    }
}
