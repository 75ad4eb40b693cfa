//! The state machine's snapshot payload: a compact binary image of the map. The store
//! wraps it in its own container (magic, checksum, atomic rename) and treats it as opaque.
//!
//! Layout (integers little-endian):
//!
//! | offset | size | field                                            |
//! |--------|------|--------------------------------------------------|
//! | 0      | 1    | format version, `SNAPSHOT_FORMAT_VERSION` (5; 1 to 4 still load; 1 is also written for a v0.1.0 member, see `write_snapshot_v1`) |
//! | 1      | 8    | applied index (the store's revision)             |
//! | 9      | 8    | key count                                        |
//! | 17     | ...  | `count` records, keys in strictly increasing byte order |
//!
//! then the cluster's record (`kv::cluster`: id, members, removed ids), then (version 4
//! and 5) the history (`kv::history`), then (version 5) the lease table: u64 count,
//! then per lease, ids strictly increasing and never 0, u64 id and u64 TTL in seconds
//! (1 to `MAX_LEASE_TTL_S`). A lease's keys are those whose record names it; a record
//! naming a lease not in the table is refused. Nothing may follow.
//!
//! The history: u64 `compact_revision` (at most the applied index), u64 event count,
//! then per event, in order (revisions non-decreasing, above `compact_revision`, at
//! most the applied index): u64 revision, u8 kind (1 = put, 2 = delete), u8 flags
//! (bit 0: a previous value follows; always set for a delete), u32 key length, key,
//! then for a put the value written (u64 `create_revision`, u64 `mod_revision` (equal
//! to the event's revision), u64 `version`, (version 5) u64 lease, u32 value length,
//! value), then the previous value in the same form if flagged.
//!
//! A version 5 record: u32 key length, key, u64 `create_revision`, u64 `mod_revision`,
//! u64 `version`, u64 lease (0: none), u32 value length, value; the three revisions must
//! keep `Value`'s invariants, with `mod_revision` at most the applied index. A version 3
//! or 4 record is the same without the lease (every key loads attached to none, and the
//! table loads empty).
//!
//! Versions 1 to 3 (written before the history) load with an empty history whose
//! compaction point is the snapshot's applied index: nothing before it is held, so a
//! watch from an earlier revision is refused as compacted, never answered with a gap.
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
use super::history::{Event, EventKind, History};
use super::lease::{Lease, MAX_LEASE_TTL_S};
use super::state_machine::{StateMachine, Value};
use crate::byte_reader::ByteReader;

/// The first byte of every snapshot payload written.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 5;

/// Before the cluster record and the key revisions; still loaded.
const SNAPSHOT_FORMAT_VERSION_1: u8 = 1;
/// Before the key revisions (`create_revision`, `version`); still loaded.
const SNAPSHOT_FORMAT_VERSION_2: u8 = 2;
/// Before the history; still loaded.
const SNAPSHOT_FORMAT_VERSION_3: u8 = 3;
/// Before the leases; still loaded.
const SNAPSHOT_FORMAT_VERSION_4: u8 = 4;

const EVENT_PUT: u8 = 1;
const EVENT_DELETE: u8 = 2;
const EVENT_HAS_PREVIOUS: u8 = 1;
/// An event's fixed part: revision, kind, flags, key length.
const EVENT_HEADER_BYTES: usize = 8 + 1 + 1 + 4;
/// A value in a version 5 event: three revisions, the lease and the length, then the
/// bytes.
const EVENT_VALUE_BYTES: usize = 8 + 8 + 8 + 8 + 4;
/// The history's header: compaction point, event count.
const HISTORY_HEADER_BYTES: usize = 8 + 8;

/// Header: version byte, applied index, key count.
const HEADER_BYTES: usize = 1 + 8 + 8;
/// The smallest version 5 record: empty key and value, three revisions, the lease.
const MIN_RECORD_BYTES: usize = 4 + 8 + 8 + 8 + 8 + 4;
/// The smallest version 3 or 4 record: empty key and value, three revisions.
const MIN_RECORD_V3_BYTES: usize = 4 + 8 + 8 + 8 + 4;
/// A lease in the table: id and TTL.
const LEASE_BYTES: usize = 8 + 8;
/// The smallest version 1 or 2 record: empty key and value, one revision.
const MIN_OLD_RECORD_BYTES: usize = 4 + 8 + 4;
const _: () = assert!(MIN_RECORD_BYTES == 40 && MIN_RECORD_V3_BYTES == 32 && MIN_OLD_RECORD_BYTES == 16);

impl StateMachine {
    /// Writes the snapshot payload (see the module doc) to `out` and returns the bytes
    /// written. Buffers internally, so `out` may be an unbuffered file.
    pub fn write_snapshot(&self, out: &mut impl Write) -> io::Result<u64> {
        let mut out = BufWriter::with_capacity(1 << 16, out);
        out.write_all(&[SNAPSHOT_FORMAT_VERSION])?;
        out.write_all(&self.applied_index().to_le_bytes())?;
        out.write_all(&(self.len() as u64).to_le_bytes())?;
        let mut written = HEADER_BYTES as u64;
        for (key, value) in self.iter() {
            out.write_all(&record_len(key).to_le_bytes())?;
            out.write_all(key)?;
            out.write_all(&value.create_revision.to_le_bytes())?;
            out.write_all(&value.mod_revision.to_le_bytes())?;
            out.write_all(&value.version.to_le_bytes())?;
            out.write_all(&value.lease.to_le_bytes())?;
            out.write_all(&record_len(&value.data).to_le_bytes())?;
            out.write_all(&value.data)?;
            written += (MIN_RECORD_BYTES + key.len() + value.data.len()) as u64;
        }
        let mut cluster = Vec::new();
        self.cluster().encode(&mut cluster);
        out.write_all(&cluster)?;
        written += cluster.len() as u64;
        let history = self.history();
        out.write_all(&history.compact_revision().to_le_bytes())?;
        out.write_all(&(history.len() as u64).to_le_bytes())?;
        written += HISTORY_HEADER_BYTES as u64;
        for event in history.events().iter() {
            let kind = match event.kind {
                EventKind::Put => EVENT_PUT,
                EventKind::Delete => EVENT_DELETE,
            };
            let flags = if event.previous.is_some() { EVENT_HAS_PREVIOUS } else { 0 };
            out.write_all(&event.revision.to_le_bytes())?;
            out.write_all(&[kind, flags])?;
            out.write_all(&record_len(&event.key).to_le_bytes())?;
            out.write_all(&event.key)?;
            for value in event.value.iter().chain(event.previous.iter()) {
                out.write_all(&value.create_revision.to_le_bytes())?;
                out.write_all(&value.mod_revision.to_le_bytes())?;
                out.write_all(&value.version.to_le_bytes())?;
                out.write_all(&value.lease.to_le_bytes())?;
                out.write_all(&record_len(&value.data).to_le_bytes())?;
                out.write_all(&value.data)?;
            }
            written += event_len(event);
        }
        out.write_all(&(self.lease_count() as u64).to_le_bytes())?;
        written += 8;
        for (id, lease) in self.leases() {
            out.write_all(&id.to_le_bytes())?;
            out.write_all(&lease.ttl_s.to_le_bytes())?;
            written += LEASE_BYTES as u64;
        }
        out.flush()?;
        Ok(written)
    }

    /// The length of `write_snapshot`'s output, exactly, in O(1).
    pub fn snapshot_len(&self) -> usize {
        let mut cluster = Vec::new();
        self.cluster().encode(&mut cluster);
        let records = self.len() as u64 * MIN_RECORD_BYTES as u64 + self.payload_bytes();
        let history = HISTORY_HEADER_BYTES as u64 + self.history().encoded_bytes();
        let leases = 8 + self.lease_count() as u64 * LEASE_BYTES as u64;
        let bytes = HEADER_BYTES as u64 + records + cluster.len() as u64 + history + leases;
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }

    /// The payload in version 1, v0.1.0's format, for a member that runs it (the peer
    /// transport converts a snapshot for such a member during a rolling upgrade): the
    /// keys with their values and `mod_revision`s only, no cluster record (a cluster
    /// with a v0.1.0 member has none: the record waits for every member) and no
    /// history. It loads back with the approximation of the module doc, an empty record
    /// and an empty history compacted at its revision.
    pub fn write_snapshot_v1(&self, out: &mut impl Write) -> io::Result<u64> {
        let mut out = BufWriter::with_capacity(1 << 16, out);
        out.write_all(&[SNAPSHOT_FORMAT_VERSION_1])?;
        out.write_all(&self.applied_index().to_le_bytes())?;
        out.write_all(&(self.len() as u64).to_le_bytes())?;
        let mut written = HEADER_BYTES as u64;
        for (key, value) in self.iter() {
            out.write_all(&record_len(key).to_le_bytes())?;
            out.write_all(key)?;
            out.write_all(&value.mod_revision.to_le_bytes())?;
            out.write_all(&record_len(&value.data).to_le_bytes())?;
            out.write_all(&value.data)?;
            written += (MIN_OLD_RECORD_BYTES + key.len() + value.data.len()) as u64;
        }
        out.flush()?;
        Ok(written)
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

/// The encoded length of one event of the history.
pub(super) fn event_len(event: &Event) -> u64 {
    let values = event.value.iter().count() + event.previous.iter().count();
    (EVENT_HEADER_BYTES + values * EVENT_VALUE_BYTES) as u64 + event.payload_bytes()
}

fn record_len(bytes: &[u8]) -> u32 {
    u32::try_from(bytes.len()).unwrap_or_else(|_| panic!("kv: {} byte key or value in map", bytes.len()))
}

fn decode_snapshot(data: &[u8], to_bytes: impl Fn(&[u8]) -> Bytes) -> Result<StateMachine, DecodeError> {
    let mut reader = ByteReader::new(data);
    let version = reader.u8()?;
    let min_record_bytes = match version {
        SNAPSHOT_FORMAT_VERSION => MIN_RECORD_BYTES,
        SNAPSHOT_FORMAT_VERSION_3 | SNAPSHOT_FORMAT_VERSION_4 => MIN_RECORD_V3_BYTES,
        SNAPSHOT_FORMAT_VERSION_1 | SNAPSHOT_FORMAT_VERSION_2 => MIN_OLD_RECORD_BYTES,
        _ => return Err(DecodeError::UnsupportedVersion { offset: 0, version, reads: "versions 1 to 5" }),
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
        let (create_revision, mod_revision, key_version) = if version >= SNAPSHOT_FORMAT_VERSION_3 {
            (reader.u64()?, reader.u64()?, reader.u64()?)
        } else {
            // The approximation of the module doc: the last write is taken as the creation.
            let mod_revision = reader.u64()?;
            (mod_revision, mod_revision, 1)
        };
        let lease = if version == SNAPSHOT_FORMAT_VERSION { reader.u64()? } else { 0 };
        let value = read_bytes(&mut reader)?;
        let value =
            Value { data: to_bytes(value), create_revision, mod_revision, version: key_version, lease };
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
    let history = if version >= SNAPSHOT_FORMAT_VERSION_4 {
        decode_history(&mut reader, applied_index, &to_bytes, version == SNAPSHOT_FORMAT_VERSION)?
    } else {
        History::starting_at(applied_index)
    };
    let leases_offset = reader.offset();
    let leases = if version == SNAPSHOT_FORMAT_VERSION { decode_leases(&mut reader)? } else { OrdMap::new() };
    if reader.remaining() != 0 {
        return Err(DecodeError::TrailingBytes { offset: reader.offset(), count: reader.remaining() });
    }
    StateMachine::from_parts(map, applied_index, cluster, history, leases).map_err(|_| DecodeError::Invalid {
        offset: leases_offset,
        reason: "a key names a lease the lease table does not hold",
    })
}

fn decode_leases(reader: &mut ByteReader<'_>) -> Result<OrdMap<u64, Lease>, DecodeError> {
    let count_offset = reader.offset();
    let count = reader.u64()?;
    let available = reader.remaining();
    if count > (available / LEASE_BYTES) as u64 {
        return Err(DecodeError::CountTooLarge { offset: count_offset, count, available });
    }
    let mut leases = OrdMap::new();
    let mut last = 0;
    for _ in 0..count {
        let offset = reader.offset();
        let id = reader.u64()?;
        if id <= last {
            return Err(DecodeError::Invalid { offset, reason: "lease ids not strictly increasing from 1" });
        }
        last = id;
        let ttl_offset = reader.offset();
        let ttl_s = reader.u64()?;
        if ttl_s == 0 || ttl_s > MAX_LEASE_TTL_S {
            return Err(DecodeError::Invalid {
                offset: ttl_offset,
                reason: "lease TTL outside 1..=MAX_LEASE_TTL_S",
            });
        }
        leases.insert(id, Lease::new(ttl_s));
    }
    Ok(leases)
}

fn decode_history(
    reader: &mut ByteReader<'_>,
    applied_index: u64,
    to_bytes: &impl Fn(&[u8]) -> Bytes,
    with_leases: bool,
) -> Result<History, DecodeError> {
    let compact_offset = reader.offset();
    let compact_revision = reader.u64()?;
    if compact_revision > applied_index {
        return Err(DecodeError::Invalid {
            offset: compact_offset,
            reason: "history compacted past the applied index",
        });
    }
    let count_offset = reader.offset();
    let count = reader.u64()?;
    let available = reader.remaining();
    if count > (available / EVENT_HEADER_BYTES) as u64 {
        return Err(DecodeError::CountTooLarge { offset: count_offset, count, available });
    }
    let mut events = imbl::Vector::new();
    let mut last = compact_revision;
    for _ in 0..count {
        let offset = reader.offset();
        let revision = reader.u64()?;
        if revision <= compact_revision || revision < last || revision > applied_index {
            return Err(DecodeError::Invalid {
                offset,
                reason: "history event out of order or outside the compaction point..=applied index",
            });
        }
        last = revision;
        let kind_offset = reader.offset();
        let kind = match reader.u8()? {
            EVENT_PUT => EventKind::Put,
            EVENT_DELETE => EventKind::Delete,
            tag => return Err(DecodeError::UnknownTag { offset: kind_offset, what: "history event", tag }),
        };
        let flags_offset = reader.offset();
        let flags = reader.u8()?;
        if flags & !EVENT_HAS_PREVIOUS != 0 || (kind == EventKind::Delete && flags != EVENT_HAS_PREVIOUS) {
            return Err(DecodeError::Invalid { offset: flags_offset, reason: "history event flags" });
        }
        let key = to_bytes(read_bytes(reader)?);
        let value = match kind {
            EventKind::Put => {
                let value = read_event_value(reader, to_bytes, with_leases)?;
                if value.mod_revision != revision {
                    return Err(DecodeError::Invalid {
                        offset,
                        reason: "put event's mod_revision is not its revision",
                    });
                }
                Some(value)
            }
            EventKind::Delete => None,
        };
        let previous = if flags & EVENT_HAS_PREVIOUS != 0 {
            Some(read_event_value(reader, to_bytes, with_leases)?)
        } else {
            None
        };
        // At its revision when an earlier op of the same transaction wrote the key (an
        // entry the edge refuses, but a forged one still applies: `kv::txn`).
        if previous.as_ref().is_some_and(|previous| previous.mod_revision > revision) {
            return Err(DecodeError::Invalid { offset, reason: "previous value newer than its event" });
        }
        events.push_back(Event { revision, key, kind, value, previous });
    }
    Ok(History::from_parts(compact_revision, events))
}

fn read_event_value(
    reader: &mut ByteReader<'_>,
    to_bytes: &impl Fn(&[u8]) -> Bytes,
    with_lease: bool,
) -> Result<Value, DecodeError> {
    let offset = reader.offset();
    let (create_revision, mod_revision, version) = (reader.u64()?, reader.u64()?, reader.u64()?);
    // An event's lease is what the key had then: the lease may be gone since.
    let lease = if with_lease { reader.u64()? } else { 0 };
    let data = to_bytes(read_bytes(reader)?);
    let value = Value { data, create_revision, mod_revision, version, lease };
    match value.broken_invariant() {
        Some(reason) => Err(DecodeError::Invalid { offset, reason }),
        None => Ok(value),
    }
}

fn read_bytes<'a>(reader: &mut ByteReader<'a>) -> Result<&'a [u8], DecodeError> {
    let len = reader.u32()?;
    Ok(reader.bytes(len.into())?)
}
