//! The peer wire codec: a batch of `raft::Message`s as one binary body.
//!
//! The byte layout, with offsets and limits, is specified in `docs/wire.md`. In short: a
//! version byte, a u32 message count, then per message `from`, `to`, `term` (u64 each), a
//! kind tag and the kind's fields; entries carry term, index, kind tag and a
//! length-prefixed payload. Integers are little-endian.
//!
//! Decoding is strict and total: any malformed input (unknown tag, a length or count the
//! buffer cannot hold, a limit exceeded, bytes left over) is a `CodecError` naming the
//! byte offset, never a panic. Payloads are `Bytes::slice`s of the input, not copies.
//!
//! An `InstallSnapshot` carries a CRC-32C of its metadata and data (kind tag 10), checked
//! while decoding: a damaged snapshot is refused here, before the Raft core or the disk sees
//! it. The unchecked form of earlier versions (tag 6) is still decoded, so that a rolling
//! upgrade keeps working, and sent only to a peer that runs such a version
//! (`SnapshotEncoding::Unchecked`: the peer transport decides from the versions peers
//! report). A snapshot whose configuration has learners
//! travels as tag 11 (tag 10 with a learner list after the voters); one without learners
//! still travels as tag 10, so builds that predate learners keep decoding it.

use bytes::Bytes;
use thiserror::Error;

use crate::byte_reader::{ByteReader, Truncated};
use crate::raft::{ConfState, Entry, EntryKind, Message, MessageBody, Snapshot, SnapshotMeta};

/// The first byte of every batch.
pub const WIRE_FORMAT_VERSION: u8 = 1;
/// Most messages one batch may hold.
pub const MAX_MESSAGES_PER_BATCH: u32 = 65_536;
/// Most entries one batch may hold, summed over its messages.
pub const MAX_ENTRIES_PER_BATCH: u64 = 1 << 20;
/// Most voters a snapshot's configuration may list.
pub const MAX_VOTERS: u32 = 1024;
/// Most learners a snapshot's configuration may list.
pub const MAX_LEARNERS: u32 = 1024;

/// Batch header: version byte and message count.
const BATCH_HEADER_BYTES: usize = 1 + 4;
/// Message header: from, to, term, kind tag.
const MESSAGE_HEADER_BYTES: usize = 8 + 8 + 8 + 1;
/// Entry header: term, index, kind tag, payload length.
const ENTRY_HEADER_BYTES: usize = 8 + 8 + 1 + 4;
const _: () = assert!(MESSAGE_HEADER_BYTES == 25 && ENTRY_HEADER_BYTES == 21);
const _: () = assert!(MAX_ENTRIES_PER_BATCH <= u32::MAX as u64);

const TAG_REQUEST_VOTE: u8 = 0;
const TAG_REQUEST_VOTE_RESPONSE: u8 = 1;
const TAG_APPEND_ENTRIES: u8 = 2;
const TAG_APPEND_ENTRIES_RESPONSE: u8 = 3;
const TAG_HEARTBEAT: u8 = 4;
const TAG_HEARTBEAT_RESPONSE: u8 = 5;
/// `InstallSnapshot` without a checksum, as earlier versions send it: decoded, and
/// encoded only for a peer of such a version (`SnapshotEncoding::Unchecked`).
const TAG_INSTALL_SNAPSHOT_UNCHECKED: u8 = 6;
const TAG_TIMEOUT_NOW: u8 = 7;
const TAG_READ_INDEX: u8 = 8;
const TAG_READ_INDEX_RESPONSE: u8 = 9;
/// `InstallSnapshot` with a CRC-32C of its metadata and data.
const TAG_INSTALL_SNAPSHOT: u8 = 10;
/// `InstallSnapshot` with a CRC-32C, whose configuration lists learners too.
const TAG_INSTALL_SNAPSHOT_WITH_LEARNERS: u8 = 11;

/// `RequestVote` flags.
const FLAG_PRE_VOTE: u8 = 0b01;
const FLAG_TRANSFER: u8 = 0b10;
/// `RequestVoteResponse` flags (bit 0 is `FLAG_PRE_VOTE`).
const FLAG_GRANTED: u8 = 0b10;

/// A peer body that is not a valid batch. Each variant names the byte offset where
/// decoding stopped.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    /// The input ended inside a field.
    #[error("truncated at byte {offset}: field needs {needed} bytes, {available} left")]
    Truncated {
        /// Where the field starts.
        offset: usize,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes that were left.
        available: usize,
    },
    /// The version byte is not one this build reads.
    #[error(
        "wire format version {version} at byte {offset} is not one this build speaks (version {}): \
         the peer runs a newer mmapd",
        WIRE_FORMAT_VERSION
    )]
    UnsupportedVersion {
        /// Where the version byte is.
        offset: usize,
        /// The byte found.
        version: u8,
    },
    /// A tag (message kind, entry kind) or flag byte has no meaning.
    #[error("unknown {what} {tag} at byte {offset}")]
    UnknownTag {
        /// Where the tag is.
        offset: usize,
        /// Which tag it is.
        what: &'static str,
        /// The byte found.
        tag: u8,
    },
    /// A count promises more items than the remaining bytes could hold.
    #[error("count {count} at byte {offset} needs more than the {available} bytes left")]
    CountTooLarge {
        /// Where the count is.
        offset: usize,
        /// The count found.
        count: u64,
        /// Bytes left after it.
        available: usize,
    },
    /// A count exceeds one of the codec's limits.
    #[error("{what} count {count} at byte {offset} exceeds the limit of {limit}")]
    LimitExceeded {
        /// Where the count is.
        offset: usize,
        /// What is counted.
        what: &'static str,
        /// The count found (a running total for entries).
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// A field is well-formed but breaks a rule (see `reason`).
    #[error("invalid field at byte {offset}: {reason}")]
    Invalid {
        /// Where the field starts.
        offset: usize,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// An `InstallSnapshot`'s metadata and data do not match its checksum: damaged on the
    /// way (or by the sender). Nothing of it may be used.
    #[error(
        "snapshot at bytes {offset}..{end} has CRC-32C {computed:#010x}, \
         its checksum at byte {checksum_offset} says {expected:#010x}"
    )]
    SnapshotChecksumMismatch {
        /// Where the checksummed snapshot starts (its `meta.index`).
        offset: usize,
        /// Where its data ends.
        end: usize,
        /// Where the checksum field is (it is not part of what it covers).
        checksum_offset: usize,
        /// The checksum the message carries.
        expected: u32,
        /// The checksum of the bytes received.
        computed: u32,
    },
    /// Bytes follow the last message.
    #[error("{count} trailing bytes at byte {offset}")]
    TrailingBytes {
        /// Where the extra bytes start.
        offset: usize,
        /// How many there are.
        count: usize,
    },
}

impl From<Truncated> for CodecError {
    fn from(truncated: Truncated) -> CodecError {
        CodecError::Truncated {
            offset: truncated.offset,
            needed: truncated.needed,
            available: truncated.available,
        }
    }
}

/// How an `InstallSnapshot` is encoded: what the receiver's release reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapshotEncoding {
    /// With a checksum (tags 10 and 11): this release and later ones.
    #[default]
    Checked,
    /// Without one (tag 6), as v0.1.0 sends and reads it, for a peer that runs v0.1.0
    /// during a rolling upgrade. A snapshot whose configuration has learners still
    /// travels as tag 11: tag 6 cannot carry them, and no release before learners could
    /// use them.
    Unchecked,
}

/// Appends the encoding of `messages` to `out`, snapshots `Checked`.
///
/// Panics if the batch breaks a limit (`MAX_MESSAGES_PER_BATCH`, `MAX_ENTRIES_PER_BATCH`,
/// `MAX_VOTERS`) or a payload exceeds `u32::MAX` bytes: the sender must split batches, and
/// a batch the receiver would reject is a bug.
pub fn encode_batch(messages: &[Message], out: &mut Vec<u8>) {
    encode_batch_with(messages, SnapshotEncoding::Checked, out);
}

/// `encode_batch`, with snapshots encoded as `snapshots` says.
pub fn encode_batch_with(messages: &[Message], snapshots: SnapshotEncoding, out: &mut Vec<u8>) {
    let message_count = u32::try_from(messages.len()).ok().filter(|&count| count <= MAX_MESSAGES_PER_BATCH);
    let message_count = message_count
        .unwrap_or_else(|| panic!("codec: batch of {} messages exceeds the limit", messages.len()));
    let entry_count: u64 = messages.iter().map(|message| entries_of(message).len() as u64).sum();
    assert!(entry_count <= MAX_ENTRIES_PER_BATCH, "codec: batch of {entry_count} entries exceeds the limit");
    out.reserve(encoded_len_with(messages, snapshots));
    out.push(WIRE_FORMAT_VERSION);
    put_u32(out, message_count);
    for message in messages {
        encode_message(message, snapshots, out);
    }
}

/// The exact number of bytes `encode_batch` appends for `messages`.
pub fn encoded_len(messages: &[Message]) -> usize {
    encoded_len_with(messages, SnapshotEncoding::Checked)
}

/// The exact number of bytes `encode_batch_with` appends for `messages`.
pub fn encoded_len_with(messages: &[Message], snapshots: SnapshotEncoding) -> usize {
    BATCH_HEADER_BYTES + messages.iter().map(|message| message_len(message, snapshots)).sum::<usize>()
}

/// Whether a snapshot goes without a checksum (tag 6).
fn unchecked(snapshot: &Snapshot, snapshots: SnapshotEncoding) -> bool {
    snapshots == SnapshotEncoding::Unchecked && snapshot.meta.conf.learners.is_empty()
}

/// Decodes a batch. Payloads and snapshot data are slices of `data`.
pub fn decode_batch(data: Bytes) -> Result<Vec<Message>, CodecError> {
    let mut decoder = Decoder { data: &data, reader: ByteReader::new(&data), entries_seen: 0 };
    let messages = decoder.batch()?;
    if decoder.reader.remaining() != 0 {
        let reader = &decoder.reader;
        return Err(CodecError::TrailingBytes { offset: reader.offset(), count: reader.remaining() });
    }
    Ok(messages)
}

fn entries_of(message: &Message) -> &[Entry] {
    match &message.body {
        MessageBody::AppendEntries { entries, .. } => entries,
        _ => &[],
    }
}

fn message_len(message: &Message, snapshots: SnapshotEncoding) -> usize {
    MESSAGE_HEADER_BYTES
        + match &message.body {
            MessageBody::RequestVote { .. } => 1 + 8 + 8,
            MessageBody::RequestVoteResponse { .. } => 1,
            MessageBody::AppendEntries { entries, .. } => {
                8 + 8
                    + 8
                    + 4
                    + entries.iter().map(|entry| ENTRY_HEADER_BYTES + entry.data.len()).sum::<usize>()
            }
            MessageBody::AppendEntriesResponse { .. } => 1 + 8 + 8 + 8,
            MessageBody::Heartbeat { .. } => 8 + 8,
            MessageBody::HeartbeatResponse { .. } => 8,
            MessageBody::InstallSnapshot { snapshot } => {
                let conf = &snapshot.meta.conf;
                let learners = if conf.learners.is_empty() { 0 } else { 4 + 8 * conf.learners.len() };
                let checksum = if unchecked(snapshot, snapshots) { 0 } else { 4 };
                8 + 8 + 4 + 8 * conf.voters.len() + learners + 8 + checksum + snapshot.data.len()
            }
            MessageBody::TimeoutNow => 0,
            MessageBody::ReadIndex { .. } => 8,
            MessageBody::ReadIndexResponse { .. } => 8 + 8,
        }
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn flag(set: bool, bit: u8) -> u8 {
    if set {
        bit
    } else {
        0
    }
}

fn encode_message(message: &Message, snapshots: SnapshotEncoding, out: &mut Vec<u8>) {
    put_u64(out, message.from);
    put_u64(out, message.to);
    put_u64(out, message.term);
    match &message.body {
        MessageBody::RequestVote { pre_vote, last_log_index, last_log_term, transfer } => {
            out.push(TAG_REQUEST_VOTE);
            out.push(flag(*pre_vote, FLAG_PRE_VOTE) | flag(*transfer, FLAG_TRANSFER));
            put_u64(out, *last_log_index);
            put_u64(out, *last_log_term);
        }
        MessageBody::RequestVoteResponse { pre_vote, granted } => {
            out.push(TAG_REQUEST_VOTE_RESPONSE);
            out.push(flag(*pre_vote, FLAG_PRE_VOTE) | flag(*granted, FLAG_GRANTED));
        }
        MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, leader_commit } => {
            out.push(TAG_APPEND_ENTRIES);
            put_u64(out, *prev_log_index);
            put_u64(out, *prev_log_term);
            put_u64(out, *leader_commit);
            put_u32(out, entries.len() as u32);
            for entry in entries {
                put_u64(out, entry.term);
                put_u64(out, entry.index);
                out.push(entry.kind as u8);
                put_u32(out, payload_len(&entry.data));
                out.extend_from_slice(&entry.data);
            }
        }
        MessageBody::AppendEntriesResponse { success, index, conflict_term, conflict_index } => {
            out.push(TAG_APPEND_ENTRIES_RESPONSE);
            out.push(u8::from(*success));
            put_u64(out, *index);
            put_u64(out, *conflict_term);
            put_u64(out, *conflict_index);
        }
        MessageBody::Heartbeat { commit, context } => {
            out.push(TAG_HEARTBEAT);
            put_u64(out, *commit);
            put_u64(out, *context);
        }
        MessageBody::HeartbeatResponse { context } => {
            out.push(TAG_HEARTBEAT_RESPONSE);
            put_u64(out, *context);
        }
        MessageBody::InstallSnapshot { snapshot } => {
            let learners = &snapshot.meta.conf.learners;
            let unchecked = unchecked(snapshot, snapshots);
            out.push(if unchecked {
                TAG_INSTALL_SNAPSHOT_UNCHECKED
            } else if learners.is_empty() {
                TAG_INSTALL_SNAPSHOT
            } else {
                TAG_INSTALL_SNAPSHOT_WITH_LEARNERS
            });
            let start = out.len();
            put_u64(out, snapshot.meta.index);
            put_u64(out, snapshot.meta.term);
            let voters = &snapshot.meta.conf.voters;
            assert!(voters.len() <= MAX_VOTERS as usize, "codec: {} voters exceed the limit", voters.len());
            put_u32(out, voters.len() as u32);
            for voter in voters {
                put_u64(out, *voter);
            }
            if !learners.is_empty() {
                assert!(
                    learners.len() <= MAX_LEARNERS as usize,
                    "codec: {} learners exceed the limit",
                    learners.len()
                );
                put_u32(out, learners.len() as u32);
                for learner in learners {
                    put_u64(out, *learner);
                }
            }
            put_u64(out, snapshot.data.len() as u64);
            if !unchecked {
                put_u32(out, snapshot_checksum(&out[start..], &snapshot.data));
            }
            out.extend_from_slice(&snapshot.data);
        }
        MessageBody::TimeoutNow => out.push(TAG_TIMEOUT_NOW),
        MessageBody::ReadIndex { context } => {
            out.push(TAG_READ_INDEX);
            put_u64(out, *context);
        }
        MessageBody::ReadIndexResponse { context, index } => {
            out.push(TAG_READ_INDEX_RESPONSE);
            put_u64(out, *context);
            put_u64(out, *index);
        }
    }
}

/// The CRC-32C of an `InstallSnapshot`'s fields from `meta.index` through the data length
/// (`meta`), then its data.
fn snapshot_checksum(meta: &[u8], data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(meta), data)
}

fn payload_len(data: &[u8]) -> u32 {
    u32::try_from(data.len()).unwrap_or_else(|_| panic!("codec: {} byte entry payload", data.len()))
}

/// Decoding state: the input, a cursor over it, and the running entry total.
struct Decoder<'a> {
    data: &'a Bytes,
    reader: ByteReader<'a>,
    entries_seen: u64,
}

impl Decoder<'_> {
    fn batch(&mut self) -> Result<Vec<Message>, CodecError> {
        let version = self.reader.u8()?;
        if version != WIRE_FORMAT_VERSION {
            return Err(CodecError::UnsupportedVersion { offset: 0, version });
        }
        let count = self.count("message", MAX_MESSAGES_PER_BATCH, MESSAGE_HEADER_BYTES)?;
        let mut messages = Vec::with_capacity(count);
        for _ in 0..count {
            messages.push(self.message()?);
        }
        Ok(messages)
    }

    /// Reads a u32 count, checked against `limit` and against what the remaining bytes
    /// can hold at `min_item_bytes` each, so nothing is allocated that the input cannot fill.
    fn count(&mut self, what: &'static str, limit: u32, min_item_bytes: usize) -> Result<usize, CodecError> {
        let offset = self.reader.offset();
        let count = self.reader.u32()?;
        if count > limit {
            return Err(CodecError::LimitExceeded { offset, what, count: count.into(), limit: limit.into() });
        }
        let available = self.reader.remaining();
        if count as usize > available / min_item_bytes {
            return Err(CodecError::CountTooLarge { offset, count: count.into(), available });
        }
        Ok(count as usize)
    }

    fn node_id(&mut self) -> Result<u64, CodecError> {
        let offset = self.reader.offset();
        match self.reader.u64()? {
            0 => Err(CodecError::Invalid { offset, reason: "node id 0" }),
            id => Ok(id),
        }
    }

    fn flags(&mut self, allowed: u8) -> Result<u8, CodecError> {
        let offset = self.reader.offset();
        let flags = self.reader.u8()?;
        if flags & !allowed != 0 {
            return Err(CodecError::UnknownTag { offset, what: "flags", tag: flags });
        }
        Ok(flags)
    }

    fn message(&mut self) -> Result<Message, CodecError> {
        let from = self.node_id()?;
        let to = self.node_id()?;
        let term = self.reader.u64()?;
        let tag_offset = self.reader.offset();
        let body = match self.reader.u8()? {
            TAG_REQUEST_VOTE => {
                let flags = self.flags(FLAG_PRE_VOTE | FLAG_TRANSFER)?;
                MessageBody::RequestVote {
                    pre_vote: flags & FLAG_PRE_VOTE != 0,
                    transfer: flags & FLAG_TRANSFER != 0,
                    last_log_index: self.reader.u64()?,
                    last_log_term: self.reader.u64()?,
                }
            }
            TAG_REQUEST_VOTE_RESPONSE => {
                let flags = self.flags(FLAG_PRE_VOTE | FLAG_GRANTED)?;
                MessageBody::RequestVoteResponse {
                    pre_vote: flags & FLAG_PRE_VOTE != 0,
                    granted: flags & FLAG_GRANTED != 0,
                }
            }
            TAG_APPEND_ENTRIES => self.append_entries()?,
            TAG_APPEND_ENTRIES_RESPONSE => MessageBody::AppendEntriesResponse {
                success: self.flags(1)? == 1,
                index: self.reader.u64()?,
                conflict_term: self.reader.u64()?,
                conflict_index: self.reader.u64()?,
            },
            TAG_HEARTBEAT => {
                MessageBody::Heartbeat { commit: self.reader.u64()?, context: self.reader.u64()? }
            }
            TAG_HEARTBEAT_RESPONSE => MessageBody::HeartbeatResponse { context: self.reader.u64()? },
            TAG_INSTALL_SNAPSHOT => self.install_snapshot(true, false)?,
            TAG_INSTALL_SNAPSHOT_WITH_LEARNERS => self.install_snapshot(true, true)?,
            TAG_INSTALL_SNAPSHOT_UNCHECKED => self.install_snapshot(false, false)?,
            TAG_TIMEOUT_NOW => MessageBody::TimeoutNow,
            TAG_READ_INDEX => MessageBody::ReadIndex { context: self.reader.u64()? },
            TAG_READ_INDEX_RESPONSE => {
                MessageBody::ReadIndexResponse { context: self.reader.u64()?, index: self.reader.u64()? }
            }
            tag => return Err(CodecError::UnknownTag { offset: tag_offset, what: "message kind", tag }),
        };
        Ok(Message { from, to, term, body })
    }

    fn append_entries(&mut self) -> Result<MessageBody, CodecError> {
        let prev_log_index = self.reader.u64()?;
        let prev_log_term = self.reader.u64()?;
        let leader_commit = self.reader.u64()?;
        let count_offset = self.reader.offset();
        let count = self.count("entry", MAX_ENTRIES_PER_BATCH as u32, ENTRY_HEADER_BYTES)?;
        self.entries_seen += count as u64;
        if self.entries_seen > MAX_ENTRIES_PER_BATCH {
            return Err(CodecError::LimitExceeded {
                offset: count_offset,
                what: "batch entry",
                count: self.entries_seen,
                limit: MAX_ENTRIES_PER_BATCH,
            });
        }
        let mut entries = Vec::with_capacity(count);
        let mut expected_index = prev_log_index;
        for _ in 0..count {
            let term_offset = self.reader.offset();
            let term = self.reader.u64()?;
            if term == 0 {
                return Err(CodecError::Invalid { offset: term_offset, reason: "entry term 0" });
            }
            let index_offset = self.reader.offset();
            let index = self.reader.u64()?;
            if Some(index) != expected_index.checked_add(1) {
                return Err(CodecError::Invalid {
                    offset: index_offset,
                    reason: "entry index does not follow prev_log_index or the previous entry",
                });
            }
            expected_index = index;
            let kind_offset = self.reader.offset();
            let kind_tag = self.reader.u8()?;
            let kind = EntryKind::from_tag(kind_tag).ok_or(CodecError::UnknownTag {
                offset: kind_offset,
                what: "entry kind",
                tag: kind_tag,
            })?;
            let len = self.reader.u32()?;
            let data = self.data.slice_ref(self.reader.bytes(len.into())?);
            entries.push(Entry { term, index, kind, data });
        }
        Ok(MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, leader_commit })
    }

    /// Decodes an `InstallSnapshot`'s fields; `checked`: with a checksum, verified here;
    /// `with_learners`: a learner list follows the voters (tag 11).
    fn install_snapshot(&mut self, checked: bool, with_learners: bool) -> Result<MessageBody, CodecError> {
        let start = self.reader.offset();
        let index = self.reader.u64()?;
        let term = self.reader.u64()?;
        let voters = self.node_list("voter", MAX_VOTERS, "voters not strictly increasing")?;
        let learners = if with_learners {
            let offset = self.reader.offset();
            let learners = self.node_list("learner", MAX_LEARNERS, "learners not strictly increasing")?;
            if learners.is_empty() {
                return Err(CodecError::Invalid { offset, reason: "tag 11 snapshot without learners" });
            }
            if learners.iter().any(|l| voters.binary_search(l).is_ok()) {
                return Err(CodecError::Invalid { offset, reason: "a learner is also a voter" });
            }
            learners
        } else {
            Vec::new()
        };
        let len = self.reader.u64()?;
        let checksum_offset = self.reader.offset();
        let expected = if checked { Some(self.reader.u32()?) } else { None };
        let data = self.reader.bytes(len)?;
        if let Some(expected) = expected {
            let computed = snapshot_checksum(&self.data[start..checksum_offset], data);
            if computed != expected {
                let end = self.reader.offset();
                return Err(CodecError::SnapshotChecksumMismatch {
                    offset: start,
                    end,
                    checksum_offset,
                    expected,
                    computed,
                });
            }
        }
        let data = self.data.slice_ref(data);
        let meta = SnapshotMeta { index, term, conf: ConfState { voters, learners } };
        Ok(MessageBody::InstallSnapshot { snapshot: Snapshot { meta, data } })
    }

    /// A u32 count (at most `limit`) of node ids, strictly increasing, none 0.
    fn node_list(
        &mut self,
        what: &'static str,
        limit: u32,
        unordered: &'static str,
    ) -> Result<Vec<u64>, CodecError> {
        let count = self.count(what, limit, 8)?;
        let mut ids: Vec<u64> = Vec::with_capacity(count);
        for _ in 0..count {
            let offset = self.reader.offset();
            let id = self.node_id()?;
            if ids.last().is_some_and(|&last| last >= id) {
                return Err(CodecError::Invalid { offset, reason: unordered });
            }
            ids.push(id);
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests;
