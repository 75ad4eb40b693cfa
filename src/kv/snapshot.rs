//! The state machine's snapshot payload: a compact binary image of the map. The store
//! wraps it in its own container (magic, checksum, atomic rename) and treats it as opaque.
//!
//! Layout (integers little-endian):
//!
//! | offset | size | field                                            |
//! |--------|------|--------------------------------------------------|
//! | 0      | 1    | format version, `SNAPSHOT_FORMAT_VERSION` (2), or 1 (written while the cluster record is empty; see `write_snapshot`) |
//! | 1      | 8    | applied index                                    |
//! | 9      | 8    | key count                                        |
//! | 17     | ...  | `count` records, keys in strictly increasing byte order |
//!
//! A record: u32 key length, key, u64 version, u32 value length, value. Every version is
//! in `1..=applied index`. In version 2 the cluster's record follows the last record
//! (`kv::cluster`: id, members, removed ids); version 1 ends with the last record and
//! loads with an empty cluster record. Nothing may follow.

use std::io::{self, BufWriter, Write};

use bytes::Bytes;
use imbl::OrdMap;

use super::cluster::Cluster;
use super::error::DecodeError;
use super::state_machine::{StateMachine, Value};
use crate::byte_reader::ByteReader;

/// The first byte of every snapshot payload.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 2;

/// The version before the cluster record was added; still loaded.
const SNAPSHOT_FORMAT_VERSION_1: u8 = 1;

/// Header: version byte, applied index, key count.
const HEADER_BYTES: usize = 1 + 8 + 8;
/// The smallest record: empty key and value.
const MIN_RECORD_BYTES: usize = 4 + 8 + 4;
const _: () = assert!(MIN_RECORD_BYTES == 16);

impl StateMachine {
    /// Writes the snapshot payload (see the module doc) to `out` and returns the bytes
    /// written. Buffers internally, so `out` may be an unbuffered file.
    ///
    /// The format is the oldest that holds the state: version 1 while the cluster record
    /// is empty (a cluster before its bootstrap record, which includes one upgraded from
    /// v0.1.0 while a member still runs it: the record waits for every member), so that
    /// such a member can load a snapshot sent to it during a rolling upgrade; version 2
    /// otherwise. Version 1 loads back with an empty record: nothing is lost.
    pub fn write_snapshot(&self, out: &mut impl Write) -> io::Result<u64> {
        let mut out = BufWriter::with_capacity(1 << 16, out);
        let cluster = self.encoded_cluster();
        out.write_all(&[if cluster.is_some() {
            SNAPSHOT_FORMAT_VERSION
        } else {
            SNAPSHOT_FORMAT_VERSION_1
        }])?;
        out.write_all(&self.applied_index().to_le_bytes())?;
        out.write_all(&(self.len() as u64).to_le_bytes())?;
        let mut written = HEADER_BYTES as u64;
        for (key, value) in self.iter() {
            out.write_all(&record_len(key).to_le_bytes())?;
            out.write_all(key)?;
            out.write_all(&value.version.to_le_bytes())?;
            out.write_all(&record_len(&value.data).to_le_bytes())?;
            out.write_all(&value.data)?;
            written += (MIN_RECORD_BYTES + key.len() + value.data.len()) as u64;
        }
        if let Some(cluster) = cluster {
            out.write_all(&cluster)?;
            written += cluster.len() as u64;
        }
        out.flush()?;
        Ok(written)
    }

    /// The length of `write_snapshot`'s output, exactly, in O(1).
    pub fn snapshot_len(&self) -> usize {
        let cluster = self.encoded_cluster().map_or(0, |cluster| cluster.len());
        let records = self.len() as u64 * MIN_RECORD_BYTES as u64 + self.payload_bytes();
        let bytes = HEADER_BYTES as u64 + records + cluster as u64;
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }

    /// The cluster record as a version-2 snapshot ends with it; `None` while it is empty
    /// (a version-1 snapshot, which loads with an empty record).
    fn encoded_cluster(&self) -> Option<Vec<u8>> {
        if *self.cluster() == Cluster::default() {
            return None;
        }
        let mut cluster = Vec::new();
        self.cluster().encode(&mut cluster);
        Some(cluster)
    }

    /// Loads a snapshot payload, copying each key and value into its own allocation: the
    /// input can be dropped afterwards and no key pins another's memory.
    pub fn load_snapshot(data: &[u8]) -> Result<StateMachine, DecodeError> {
        decode_snapshot(data, Bytes::copy_from_slice)
    }

    /// Loads a snapshot payload whose keys and values stay slices of `data`: no per-key
    /// allocation, but `data` stays in memory until every key loaded from it has been
    /// overwritten or deleted.
    pub fn load_snapshot_shared(data: &Bytes) -> Result<StateMachine, DecodeError> {
        decode_snapshot(data, |slice| data.slice_ref(slice))
    }
}

fn record_len(bytes: &[u8]) -> u32 {
    u32::try_from(bytes.len()).unwrap_or_else(|_| panic!("kv: {} byte key or value in map", bytes.len()))
}

fn decode_snapshot(data: &[u8], to_bytes: impl Fn(&[u8]) -> Bytes) -> Result<StateMachine, DecodeError> {
    let mut reader = ByteReader::new(data);
    let version = reader.u8()?;
    if version != SNAPSHOT_FORMAT_VERSION && version != SNAPSHOT_FORMAT_VERSION_1 {
        return Err(DecodeError::UnsupportedVersion { offset: 0, version });
    }
    let applied_index = reader.u64()?;
    let count_offset = reader.offset();
    let count = reader.u64()?;
    let available = reader.remaining();
    if count > (available / MIN_RECORD_BYTES) as u64 {
        return Err(DecodeError::CountTooLarge { offset: count_offset, count, available });
    }
    // Sized from a count already bounded by the input (at most one record per
    // `MIN_RECORD_BYTES`), so collecting never reallocates.
    let mut records = Vec::with_capacity(count as usize);
    let mut previous_key: Option<&[u8]> = None;
    for _ in 0..count {
        let key_offset = reader.offset();
        let key = read_bytes(&mut reader)?;
        if previous_key.is_some_and(|previous| previous >= key) {
            return Err(DecodeError::Invalid { offset: key_offset, reason: "keys not strictly increasing" });
        }
        previous_key = Some(key);
        let version_offset = reader.offset();
        let version = reader.u64()?;
        if version == 0 || version > applied_index {
            return Err(DecodeError::Invalid {
                offset: version_offset,
                reason: "version outside 1..=applied index",
            });
        }
        let value = read_bytes(&mut reader)?;
        records.push((to_bytes(key), Value { data: to_bytes(value), version }));
    }
    let map = OrdMap::from_iter(records);
    let cluster =
        if version == SNAPSHOT_FORMAT_VERSION_1 { Cluster::default() } else { Cluster::decode(&mut reader)? };
    if reader.remaining() != 0 {
        return Err(DecodeError::TrailingBytes { offset: reader.offset(), count: reader.remaining() });
    }
    Ok(StateMachine::from_parts(map, applied_index, cluster))
}

fn read_bytes<'a>(reader: &mut ByteReader<'a>) -> Result<&'a [u8], DecodeError> {
    let len = reader.u32()?;
    Ok(reader.bytes(len.into())?)
}
