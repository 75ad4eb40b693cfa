//! The state machine's snapshot payload: a compact binary image of the map. The store
//! wraps it in its own container (magic, checksum, atomic rename) and treats it as opaque.
//!
//! Layout (integers little-endian):
//!
//! | offset | size | field                                            |
//! |--------|------|--------------------------------------------------|
//! | 0      | 1    | format version, `SNAPSHOT_FORMAT_VERSION` (3; 1 and 2 still load), or 1 (written while the cluster record is empty; see `write_snapshot`) |
//! | 1      | 8    | applied index (the store's revision)             |
//! | 9      | 8    | key count                                        |
//! | 17     | ...  | `count` records, keys in strictly increasing byte order |
//!
//! then the cluster's record (`kv::cluster`: id, members, removed ids). Nothing may follow.
//!
//! A version 3 record: u32 key length, key, u64 `create_revision`, u64 `mod_revision`,
//! u64 `version`, u32 value length, value; the three must keep `Value`'s invariants, with
//! `mod_revision` at most the applied index.
//!
//! Versions 1 and 2 (written before keys carried `create_revision` and `version`) still
//! load. Their record is u32 key length, key, u64 `mod_revision` (then called the
//! version), u32 value length, value; version 1 has no cluster record and loads with an
//! empty one. **An approximation:** these formats do not hold when a key was created nor
//! how often it was written since, so a key loaded from one gets `create_revision =
//! mod_revision` and `version = 1`, as if its last write had created it; later writes
//! count on from there, and a key created after the upgrade (or deleted and created
//! again) is exact. Replicas that loaded old snapshots taken at
//! different indexes may disagree on these two fields for keys not written since (never
//! on `mod_revision` or the value); the first snapshot the new release writes keeps
//! whatever each replica holds.

use std::io::{self, BufWriter, Write};

use bytes::Bytes;
use imbl::OrdMap;

use super::cluster::Cluster;
use super::error::DecodeError;
use super::state_machine::{StateMachine, Value};
use crate::byte_reader::ByteReader;

/// The first byte of every snapshot payload written.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 3;

/// Before the cluster record and the key revisions; still loaded.
const SNAPSHOT_FORMAT_VERSION_1: u8 = 1;
/// Before the key revisions (`create_revision`, `version`); still loaded.
const SNAPSHOT_FORMAT_VERSION_2: u8 = 2;

/// Header: version byte, applied index, key count.
const HEADER_BYTES: usize = 1 + 8 + 8;
/// The smallest version 3 record: empty key and value, three revisions.
const MIN_RECORD_BYTES: usize = 4 + 8 + 8 + 8 + 4;
/// The smallest version 1 or 2 record: empty key and value, one revision.
const MIN_OLD_RECORD_BYTES: usize = 4 + 8 + 4;
const _: () = assert!(MIN_RECORD_BYTES == 32 && MIN_OLD_RECORD_BYTES == 16);

impl StateMachine {
    /// Writes the snapshot payload (see the module doc) to `out` and returns the bytes
    /// written. Buffers internally, so `out` may be an unbuffered file.
    ///
    /// The format is version 1 while the cluster record is empty (a cluster before its
    /// bootstrap record, which includes one upgraded from v0.1.0 while a member still
    /// runs it: the record waits for every member), so that such a member can load a
    /// snapshot sent to it during a rolling upgrade; version 3 otherwise. Version 1 loads
    /// back with an empty record and with the approximation of the module doc for
    /// `create_revision` and `version` (such a cluster's keys came from v0.1.0, whose
    /// snapshots had neither, so it holds the approximation already).
    pub fn write_snapshot(&self, out: &mut impl Write) -> io::Result<u64> {
        let mut out = BufWriter::with_capacity(1 << 16, out);
        let cluster = self.encoded_cluster();
        let full = cluster.is_some();
        out.write_all(&[if full { SNAPSHOT_FORMAT_VERSION } else { SNAPSHOT_FORMAT_VERSION_1 }])?;
        out.write_all(&self.applied_index().to_le_bytes())?;
        out.write_all(&(self.len() as u64).to_le_bytes())?;
        let mut written = HEADER_BYTES as u64;
        for (key, value) in self.iter() {
            out.write_all(&record_len(key).to_le_bytes())?;
            out.write_all(key)?;
            if full {
                out.write_all(&value.create_revision.to_le_bytes())?;
                out.write_all(&value.mod_revision.to_le_bytes())?;
                out.write_all(&value.version.to_le_bytes())?;
            } else {
                out.write_all(&value.mod_revision.to_le_bytes())?;
            }
            out.write_all(&record_len(&value.data).to_le_bytes())?;
            out.write_all(&value.data)?;
            let record = if full { MIN_RECORD_BYTES } else { MIN_OLD_RECORD_BYTES };
            written += (record + key.len() + value.data.len()) as u64;
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
        let cluster = self.encoded_cluster().map(|cluster| cluster.len());
        let record = if cluster.is_some() { MIN_RECORD_BYTES } else { MIN_OLD_RECORD_BYTES };
        let cluster = cluster.unwrap_or(0);
        let records = self.len() as u64 * record as u64 + self.payload_bytes();
        let bytes = HEADER_BYTES as u64 + records + cluster as u64;
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }

    /// The cluster record as a version 2 or 3 snapshot ends with it; `None` while it is empty
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
    let min_record_bytes = match version {
        SNAPSHOT_FORMAT_VERSION => MIN_RECORD_BYTES,
        SNAPSHOT_FORMAT_VERSION_1 | SNAPSHOT_FORMAT_VERSION_2 => MIN_OLD_RECORD_BYTES,
        _ => {
            return Err(DecodeError::UnsupportedVersion { offset: 0, version, reads: "versions 1, 2 and 3" })
        }
    };
    let applied_index = reader.u64()?;
    let count_offset = reader.offset();
    let count = reader.u64()?;
    let available = reader.remaining();
    if count > (available / min_record_bytes) as u64 {
        return Err(DecodeError::CountTooLarge { offset: count_offset, count, available });
    }
    // Sized from a count already bounded by the input (at most one record per
    // `min_record_bytes`), so collecting never reallocates.
    let mut records = Vec::with_capacity(count as usize);
    let mut previous_key: Option<&[u8]> = None;
    for _ in 0..count {
        let key_offset = reader.offset();
        let key = read_bytes(&mut reader)?;
        if previous_key.is_some_and(|previous| previous >= key) {
            return Err(DecodeError::Invalid { offset: key_offset, reason: "keys not strictly increasing" });
        }
        previous_key = Some(key);
        let revisions_offset = reader.offset();
        let (create_revision, mod_revision, key_version) = if version == SNAPSHOT_FORMAT_VERSION {
            (reader.u64()?, reader.u64()?, reader.u64()?)
        } else {
            // The approximation of the module doc: the last write is taken as the creation.
            let mod_revision = reader.u64()?;
            (mod_revision, mod_revision, 1)
        };
        let value = read_bytes(&mut reader)?;
        let value = Value { data: to_bytes(value), create_revision, mod_revision, version: key_version };
        if mod_revision == 0 || mod_revision > applied_index {
            return Err(DecodeError::Invalid {
                offset: revisions_offset,
                reason: "mod_revision outside 1..=applied index",
            });
        }
        if let Some(reason) = value.broken_invariant() {
            return Err(DecodeError::Invalid { offset: revisions_offset, reason });
        }
        records.push((to_bytes(key), value));
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
