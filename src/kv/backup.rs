//! The backup file of `mmapd-admin backup`: the key-value state at one revision, in
//! checksummed chunks, so that it is written and checked as a stream in bounded memory
//! and a damaged file is refused naming the byte offset. The layout is in
//! `docs/format.md`, "Backup files".
//!
//! - [`encode_backup`] serialises a frozen copy of the state machine, handing out the
//!   header, each chunk (about [`CHUNK_TARGET_BYTES`]) and the trailer as they are done;
//! - [`BackupDecoder`] checks the same bytes in pieces of any size (pure: no IO), handing
//!   out each record once its chunk's checksum holds; nothing it hands out may be used
//!   before [`BackupDecoder::finish`] succeeds (the trailer's file checksum and counts);
//! - [`verify_backup`] and [`load_backup`] read a file through it.
//!
//! Format version 3 keeps the leases, as etcd's `snapshot save` does: the header
//! holds the lease count, a `LEAS` frame right after it holds the lease table (each
//! lease's id and granted TTL), and each record names its key's lease (0: none). A
//! restored lease's countdown is not in the file: it starts again at the full TTL when
//! the restored cluster's leader takes over (`server::driver::leases`, etcd's rule).
//! The decoder holds the lease table (16 bytes a lease) besides one chunk, to check
//! that every record's lease is in it.
//!
//! Version 2 (written before the leases) records each key's `create_revision`,
//! `mod_revision` and `version`, and loads with every key attached to no lease.
//! Version 1 files (written before keys carried the first and last) still load, with
//! the approximation the snapshot loader makes for its old formats (`kv::snapshot`):
//! `create_revision = mod_revision`, `version = 1`. A version this build does not know
//! is refused, naming the version found and the versions it reads.

use std::io::Read;

use bytes::{BufMut, Bytes, BytesMut};
use imbl::OrdMap;

use super::cluster::Cluster;
use super::lease::{Lease, MAX_LEASE_TTL_S};
use super::state_machine::{StateMachine, Value};

/// First bytes of a backup file.
pub const BACKUP_MAGIC: [u8; 8] = *b"MMAPDBAK";
/// The backup format version written.
pub const BACKUP_VERSION: u32 = 3;
/// The version before keys carried `create_revision` and `version`; still read.
const BACKUP_VERSION_1: u32 = 1;
/// The version before the leases; still read.
const BACKUP_VERSION_2: u32 = 2;
/// Every version this build reads.
const READ_VERSIONS: [u32; 3] = [BACKUP_VERSION_1, BACKUP_VERSION_2, BACKUP_VERSION];
/// The file header.
pub const BACKUP_HEADER_BYTES: usize = 64;
/// The header of each chunk; its records follow.
pub const CHUNK_HEADER_BYTES: usize = 24;
/// The header of the lease table (version 3); its entries follow.
pub const LEASE_TABLE_HEADER_BYTES: usize = 24;
/// One lease in the table: u64 id, u64 granted TTL in seconds.
pub const LEASE_ENTRY_BYTES: usize = 8 + 8;
/// The trailer, which ends the file.
pub const TRAILER_BYTES: usize = 32;
/// A chunk is closed once its records reach this size (a larger record gets a chunk of
/// its own): what the writer and a reader hold in memory at a time.
pub const CHUNK_TARGET_BYTES: usize = 1 << 20;
/// The most record bytes a chunk may hold: one record of the largest log entry
/// (`store::record::MAX_PAYLOAD_BYTES`, 64 MiB) fits. Bounds what a reader buffers.
pub const MAX_CHUNK_DATA_BYTES: usize = 128 << 20;
/// The smallest record: u32 key length, u64 `create_revision`, `mod_revision`,
/// `version` and lease, u32 value length.
const MIN_RECORD_BYTES: usize = 4 + 8 + 8 + 8 + 8 + 4;
/// The smallest record of a version 2 file: the same without the lease.
const MIN_RECORD_V2_BYTES: usize = 4 + 8 + 8 + 8 + 4;
/// The smallest record of a version 1 file: u32 key length, u64 `mod_revision`, u32
/// value length.
const MIN_RECORD_V1_BYTES: usize = 4 + 8 + 4;
const _: () = assert!(MIN_RECORD_BYTES == 40 && MIN_RECORD_V2_BYTES == 32 && MIN_RECORD_V1_BYTES == 16);

const LEASE_TABLE_TAG: [u8; 4] = *b"LEAS";
const CHUNK_TAG: [u8; 4] = *b"CHNK";
const TRAILER_TAG: [u8; 4] = *b"DONE";

// Header fields.
const VERSION_OFFSET: usize = 8;
const HEADER_CRC_OFFSET: usize = 12;
const REVISION_OFFSET: usize = 16;
const CLUSTER_ID_OFFSET: usize = 24;
const NODE_ID_OFFSET: usize = 32;
const KEYS_OFFSET: usize = 40;
const CREATED_OFFSET: usize = 48;
/// The lease count in version 3; reserved, 0, in versions 1 and 2.
const HEADER_LEASES_OFFSET: usize = 56;
const _: () = assert!(HEADER_LEASES_OFFSET + 8 == BACKUP_HEADER_BYTES);
// Lease table header fields.
const LEASE_TABLE_RESERVED_OFFSET: usize = 4;
const LEASE_TABLE_COUNT_OFFSET: usize = 8;
const LEASE_TABLE_DATA_CRC_OFFSET: usize = 16;
const LEASE_TABLE_HEADER_CRC_OFFSET: usize = 20;
const _: () = assert!(LEASE_TABLE_HEADER_CRC_OFFSET + 4 == LEASE_TABLE_HEADER_BYTES);
// Chunk header fields.
const CHUNK_COUNT_OFFSET: usize = 4;
const CHUNK_LENGTH_OFFSET: usize = 8;
const CHUNK_DATA_CRC_OFFSET: usize = 12;
const CHUNK_RESERVED_OFFSET: usize = 16;
const CHUNK_HEADER_CRC_OFFSET: usize = 20;
const _: () = assert!(CHUNK_HEADER_CRC_OFFSET + 4 == CHUNK_HEADER_BYTES);
// Trailer fields.
const TRAILER_RESERVED_OFFSET: usize = 4;
const TRAILER_KEYS_OFFSET: usize = 8;
const TRAILER_CHUNKS_OFFSET: usize = 16;
const TRAILER_RESERVED_2_OFFSET: usize = 24;
const TRAILER_CRC_OFFSET: usize = 28;
const _: () = assert!(TRAILER_CRC_OFFSET + 4 == TRAILER_BYTES);
const _: () = assert!(MAX_CHUNK_DATA_BYTES <= u32::MAX as usize && CHUNK_TARGET_BYTES < MAX_CHUNK_DATA_BYTES);
const _: () = assert!(crate::store::record::MAX_PAYLOAD_BYTES + MIN_RECORD_BYTES <= MAX_CHUNK_DATA_BYTES);

/// What the header of a backup says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupHeader {
    /// The file's format version: `BACKUP_VERSION`, or 1 or 2 for an older file.
    pub format_version: u32,
    /// The applied index the state was copied at: every key's `mod_revision` is at most
    /// this.
    pub revision: u64,
    /// The cluster's id (0 if it had none yet).
    pub cluster_id: u64,
    /// The node that served the backup.
    pub node_id: u64,
    /// Number of keys.
    pub keys: u64,
    /// When the copy was taken, in seconds since the Unix epoch.
    pub created_unix_seconds: u64,
    /// Number of leases (0 in a version 1 or 2 file, which holds none).
    pub leases: u64,
}

/// A whole backup, written or checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupSummary {
    /// The header.
    pub header: BackupHeader,
    /// The file's length.
    pub bytes: u64,
    /// The file's checksum (CRC-32C of every byte before the trailer's checksum field),
    /// as the trailer holds it.
    pub crc32c: u32,
}

impl std::fmt::Display for BackupSummary {
    /// `revision 48213, 10000 keys, 1.2 MB, crc32c 9f3a0c1d`: what `mmapd-admin backup`
    /// and `backup --verify` print after `backup: `.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.header.keys;
        write!(
            f,
            "revision {}, {keys} {}, {}, crc32c {:08x}",
            self.header.revision,
            if keys == 1 { "key" } else { "keys" },
            human_bytes(self.bytes),
            self.crc32c
        )
    }
}

/// A size in decimal units with one decimal (`734 B`, `1.2 MB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 999.95 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Why bytes are not a valid backup: where, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at byte offset {offset}: {reason}")]
pub struct BackupError {
    /// The offset of the damaged frame or field (for a file that ends too early, its
    /// length).
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

fn damaged(offset: u64, reason: impl Into<String>) -> BackupError {
    BackupError { offset, reason: reason.into() }
}

/// Reading a backup file failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadBackupError {
    /// The bytes are not a valid backup.
    #[error("damaged backup {0}")]
    Damaged(#[from] BackupError),
    /// The file could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Serialises `machine` as a backup served by `node_id`, handing out the header, each
/// chunk and the trailer, in order, as they are done; stops at the first error `emit`
/// returns (a reader that went away). Holds one chunk in memory at a time.
pub fn encode_backup<E>(
    machine: &StateMachine,
    node_id: u64,
    created_unix_seconds: u64,
    emit: impl FnMut(Bytes) -> Result<(), E>,
) -> Result<BackupSummary, E> {
    encode_backup_as(BACKUP_VERSION, machine, node_id, created_unix_seconds, emit)
}

/// `encode_backup` in format `format_version`: `BACKUP_VERSION`, or 1 or 2 for the
/// tests of old files (which, as those releases did, leave the leases out).
fn encode_backup_as<E>(
    format_version: u32,
    machine: &StateMachine,
    node_id: u64,
    created_unix_seconds: u64,
    mut emit: impl FnMut(Bytes) -> Result<(), E>,
) -> Result<BackupSummary, E> {
    assert!(READ_VERSIONS.contains(&format_version));
    let with_leases = format_version >= BACKUP_VERSION;
    let header = BackupHeader {
        format_version,
        revision: machine.applied_index(),
        cluster_id: machine.cluster().id(),
        node_id,
        keys: machine.len() as u64,
        created_unix_seconds,
        leases: if with_leases { machine.lease_count() as u64 } else { 0 },
    };
    let mut crc = 0;
    let mut bytes = 0u64;
    let mut out = |piece: Bytes, crc: &mut u32, bytes: &mut u64| {
        *crc = crc32c::crc32c_append(*crc, &piece);
        *bytes += piece.len() as u64;
        emit(piece)
    };
    out(Bytes::copy_from_slice(&encode_header(&header)), &mut crc, &mut bytes)?;
    if with_leases {
        out(encode_lease_table(machine), &mut crc, &mut bytes)?;
    }
    let mut chunk = ChunkBuilder::new(format_version);
    let mut chunks = 0u64;
    for (key, value) in machine.iter() {
        chunk.push(key, value);
        if chunk.data_len() >= CHUNK_TARGET_BYTES {
            out(chunk.finish(), &mut crc, &mut bytes)?;
            chunks += 1;
            chunk = ChunkBuilder::new(format_version);
        }
    }
    if chunk.count > 0 {
        out(chunk.finish(), &mut crc, &mut bytes)?;
        chunks += 1;
    }
    let mut trailer = [0u8; TRAILER_BYTES];
    trailer[..4].copy_from_slice(&TRAILER_TAG);
    trailer[TRAILER_KEYS_OFFSET..TRAILER_CHUNKS_OFFSET].copy_from_slice(&header.keys.to_le_bytes());
    trailer[TRAILER_CHUNKS_OFFSET..TRAILER_RESERVED_2_OFFSET].copy_from_slice(&chunks.to_le_bytes());
    let file_crc = crc32c::crc32c_append(crc, &trailer[..TRAILER_CRC_OFFSET]);
    trailer[TRAILER_CRC_OFFSET..].copy_from_slice(&file_crc.to_le_bytes());
    out(Bytes::copy_from_slice(&trailer), &mut crc, &mut bytes)?;
    Ok(BackupSummary { header, bytes, crc32c: file_crc })
}

fn encode_header(header: &BackupHeader) -> [u8; BACKUP_HEADER_BYTES] {
    let mut bytes = [0u8; BACKUP_HEADER_BYTES];
    bytes[..8].copy_from_slice(&BACKUP_MAGIC);
    bytes[VERSION_OFFSET..HEADER_CRC_OFFSET].copy_from_slice(&header.format_version.to_le_bytes());
    bytes[REVISION_OFFSET..CLUSTER_ID_OFFSET].copy_from_slice(&header.revision.to_le_bytes());
    bytes[CLUSTER_ID_OFFSET..NODE_ID_OFFSET].copy_from_slice(&header.cluster_id.to_le_bytes());
    bytes[NODE_ID_OFFSET..KEYS_OFFSET].copy_from_slice(&header.node_id.to_le_bytes());
    bytes[KEYS_OFFSET..CREATED_OFFSET].copy_from_slice(&header.keys.to_le_bytes());
    bytes[CREATED_OFFSET..HEADER_LEASES_OFFSET].copy_from_slice(&header.created_unix_seconds.to_le_bytes());
    bytes[HEADER_LEASES_OFFSET..].copy_from_slice(&header.leases.to_le_bytes());
    let crc = header_crc(&bytes);
    bytes[HEADER_CRC_OFFSET..REVISION_OFFSET].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn header_crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(
        crc32c::crc32c(&bytes[..HEADER_CRC_OFFSET]),
        &bytes[REVISION_OFFSET..BACKUP_HEADER_BYTES],
    )
}

/// The `LEAS` frame: every lease of `machine`, by id in increasing order. Holds 16
/// bytes a lease.
fn encode_lease_table(machine: &StateMachine) -> Bytes {
    let count = machine.lease_count();
    let mut frame = BytesMut::with_capacity(LEASE_TABLE_HEADER_BYTES + count * LEASE_ENTRY_BYTES);
    frame.put_bytes(0, LEASE_TABLE_HEADER_BYTES);
    let mut last = 0;
    for (id, lease) in machine.leases() {
        // The state machine's invariants; the reader refuses a table that breaks them.
        assert!(id > last, "kv: lease {id:016x} follows {last:016x} in the lease table");
        assert!((1..=MAX_LEASE_TTL_S).contains(&lease.ttl_s), "kv: lease {id:016x} has TTL {}", lease.ttl_s);
        last = id;
        frame.put_u64_le(id);
        frame.put_u64_le(lease.ttl_s);
    }
    let data_crc = crc32c::crc32c(&frame[LEASE_TABLE_HEADER_BYTES..]);
    let header = &mut frame[..LEASE_TABLE_HEADER_BYTES];
    header[..4].copy_from_slice(&LEASE_TABLE_TAG);
    header[LEASE_TABLE_COUNT_OFFSET..LEASE_TABLE_DATA_CRC_OFFSET]
        .copy_from_slice(&(count as u64).to_le_bytes());
    header[LEASE_TABLE_DATA_CRC_OFFSET..LEASE_TABLE_HEADER_CRC_OFFSET]
        .copy_from_slice(&data_crc.to_le_bytes());
    let crc = crc32c::crc32c(&header[..LEASE_TABLE_HEADER_CRC_OFFSET]);
    header[LEASE_TABLE_HEADER_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    frame.freeze()
}

/// One chunk being filled: its header's room first, then the records.
struct ChunkBuilder {
    buffer: BytesMut,
    count: u32,
    /// The format the records are written in.
    format_version: u32,
}

impl ChunkBuilder {
    fn new(format_version: u32) -> ChunkBuilder {
        let mut buffer = BytesMut::with_capacity(CHUNK_HEADER_BYTES + CHUNK_TARGET_BYTES + 4096);
        buffer.put_bytes(0, CHUNK_HEADER_BYTES);
        ChunkBuilder { buffer, count: 0, format_version }
    }

    fn data_len(&self) -> usize {
        self.buffer.len() - CHUNK_HEADER_BYTES
    }

    fn push(&mut self, key: &[u8], value: &Value) {
        let record_len = MIN_RECORD_BYTES + key.len() + value.data.len();
        // Every key and value came from one log entry, at most MAX_PAYLOAD_BYTES.
        assert!(record_len <= MAX_CHUNK_DATA_BYTES, "kv: a {record_len} byte record cannot be backed up");
        self.buffer.put_u32_le(key.len() as u32);
        self.buffer.put_slice(key);
        if self.format_version == BACKUP_VERSION_1 {
            self.buffer.put_u64_le(value.mod_revision);
        } else {
            self.buffer.put_u64_le(value.create_revision);
            self.buffer.put_u64_le(value.mod_revision);
            self.buffer.put_u64_le(value.version);
            if self.format_version >= BACKUP_VERSION {
                self.buffer.put_u64_le(value.lease);
            }
        }
        self.buffer.put_u32_le(value.data.len() as u32);
        self.buffer.put_slice(&value.data);
        self.count += 1;
    }

    fn finish(mut self) -> Bytes {
        let data_len = self.data_len();
        assert!(data_len <= MAX_CHUNK_DATA_BYTES);
        let data_crc = crc32c::crc32c(&self.buffer[CHUNK_HEADER_BYTES..]);
        let header = &mut self.buffer[..CHUNK_HEADER_BYTES];
        header[..4].copy_from_slice(&CHUNK_TAG);
        header[CHUNK_COUNT_OFFSET..CHUNK_LENGTH_OFFSET].copy_from_slice(&self.count.to_le_bytes());
        header[CHUNK_LENGTH_OFFSET..CHUNK_DATA_CRC_OFFSET].copy_from_slice(&(data_len as u32).to_le_bytes());
        header[CHUNK_DATA_CRC_OFFSET..CHUNK_RESERVED_OFFSET].copy_from_slice(&data_crc.to_le_bytes());
        let crc = crc32c::crc32c(&header[..CHUNK_HEADER_CRC_OFFSET]);
        header[CHUNK_HEADER_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        self.buffer.freeze()
    }
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

/// One key of a backup, as a [`BackupDecoder`] hands it out (revisions and lease as in
/// `kv::Value`; from a version 1 file, approximated as the module doc says; from a
/// version 1 or 2 file, attached to no lease).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupRecord<'a> {
    /// The key.
    pub key: &'a [u8],
    /// When the key was created.
    pub create_revision: u64,
    /// When it was last written (its ETag).
    pub mod_revision: u64,
    /// Writes since its creation.
    pub version: u64,
    /// The lease it is attached to, 0 for none; a lease of the file's lease table
    /// ([`BackupDecoder::leases`]).
    pub lease: u64,
    /// The value.
    pub value: &'a [u8],
}

/// One lease of a backup's lease table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupLease {
    /// Its id, never 0.
    pub id: u64,
    /// The TTL it was granted, in seconds (1 to `MAX_LEASE_TTL_S`).
    pub ttl_s: u64,
}

/// Where a [`BackupDecoder`] hands each record.
pub type RecordSink<'a> = dyn FnMut(BackupRecord<'_>) + 'a;

/// Checks a backup given in pieces of any size, as it is read or received. Pure: the
/// caller does the IO. Holds at most one chunk and the piece last given.
///
/// After an error the decoder must not be used again.
#[derive(Debug, Default)]
pub struct BackupDecoder {
    /// Bytes received and not yet consumed: part of one frame.
    buffer: Vec<u8>,
    /// The file offset of `buffer[0]`. Invariant: every byte before it was checked.
    offset: u64,
    /// CRC-32C of the bytes before `offset`.
    crc: u32,
    header: Option<BackupHeader>,
    /// The lease table, by id in increasing order, once checked (empty for a version 1
    /// or 2 file, set with its header). Invariant: ids strictly increase, none is 0.
    leases: Option<Vec<BackupLease>>,
    /// The last key of the last chunk: keys strictly increase across the file.
    last_key: Option<Vec<u8>>,
    keys: u64,
    chunks: u64,
    /// Set once the trailer checked out.
    summary: Option<BackupSummary>,
    /// The SHA-256 of every byte through the trailer, for etcd's envelope.
    envelope: EnvelopeHasher,
    /// Bytes after the trailer: nothing, or etcd's envelope (at most
    /// `MAX_ENVELOPE_BYTES`), checked at `finish`.
    tail: Vec<u8>,
}

/// What `etcdctl snapshot save` (3.4) requires of a snapshot stream, and mmapd's
/// Maintenance.Snapshot therefore sends after a backup's trailer: zero bytes up to a
/// multiple of 512, then the SHA-256 of everything before it (etcd's bolt files are
/// whole pages, so a stream of 32 past a multiple of 512 has its hash). Restoring such
/// a file (`mmapd-admin restore`) checks the padding and the hash.
#[derive(Clone)]
pub struct EnvelopeHasher {
    context: ring::digest::Context,
    bytes: u64,
}

/// The envelope's alignment and its hash's size.
const ENVELOPE_ALIGN: u64 = 512;
const ENVELOPE_HASH_BYTES: usize = 32;
/// The most bytes an envelope takes: 511 of padding and the hash.
const MAX_ENVELOPE_BYTES: usize = ENVELOPE_ALIGN as usize - 1 + ENVELOPE_HASH_BYTES;

impl Default for EnvelopeHasher {
    fn default() -> Self {
        EnvelopeHasher { context: ring::digest::Context::new(&ring::digest::SHA256), bytes: 0 }
    }
}

impl std::fmt::Debug for EnvelopeHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvelopeHasher").field("bytes", &self.bytes).finish()
    }
}

impl EnvelopeHasher {
    /// Takes the next bytes of the backup.
    pub fn update(&mut self, data: &[u8]) {
        self.context.update(data);
        self.bytes += data.len() as u64;
    }

    /// The envelope that ends the stream: the zero padding, then the hash.
    pub fn finish(mut self) -> Vec<u8> {
        let padding = ((ENVELOPE_ALIGN - self.bytes % ENVELOPE_ALIGN) % ENVELOPE_ALIGN) as usize;
        let mut envelope = vec![0; padding];
        self.context.update(&envelope);
        envelope.extend_from_slice(self.context.finish().as_ref());
        envelope
    }
}

/// How far the bytes at hand go.
enum Step {
    /// The frame is not whole yet.
    Need,
    /// A frame of this many bytes was checked and consumed.
    Consumed(usize),
}

impl BackupDecoder {
    /// A decoder at the start of a file.
    pub fn new() -> BackupDecoder {
        BackupDecoder::default()
    }

    /// The header, once read.
    pub fn header(&self) -> Option<&BackupHeader> {
        self.header.as_ref()
    }

    /// The lease table, by id in increasing order, once its frame's checksums hold
    /// (empty for a version 1 or 2 file). Like the records, not to be used before
    /// [`BackupDecoder::finish`] succeeds.
    pub fn leases(&self) -> Option<&[BackupLease]> {
        self.leases.as_deref()
    }

    /// Takes the next `bytes` of the file. Calls `record` for every
    /// record of each chunk whose checksums hold, in file order; whether the file as a
    /// whole is valid is only known at [`BackupDecoder::finish`].
    pub fn feed(&mut self, bytes: &[u8], record: &mut RecordSink<'_>) -> Result<(), BackupError> {
        if self.summary.is_some() {
            return self.take_tail(bytes);
        }
        // Taken out while its frames are checked, which needs `self` mutable.
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.extend_from_slice(bytes);
        let mut consumed = 0;
        let result = loop {
            let at = self.offset + consumed as u64;
            if self.summary.is_some() {
                // Not counted in `offset`, which stays the trailer's end.
                let result = self.take_tail(&buffer[consumed..]);
                buffer.truncate(consumed);
                break result;
            }
            match self.step(&buffer[consumed..], at, record) {
                Ok(Step::Consumed(len)) => {
                    self.crc = crc32c::crc32c_append(self.crc, &buffer[consumed..consumed + len]);
                    self.envelope.update(&buffer[consumed..consumed + len]);
                    consumed += len;
                }
                Ok(Step::Need) => break Ok(()),
                Err(error) => break Err(error),
            }
        };
        buffer.drain(..consumed);
        self.buffer = buffer;
        self.offset += consumed as u64;
        result
    }

    /// Bytes after the trailer: held (they can only be etcd's envelope) until
    /// `finish` checks them.
    fn take_tail(&mut self, bytes: &[u8]) -> Result<(), BackupError> {
        if self.tail.len() + bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(damaged(
                self.offset + self.tail.len() as u64,
                "bytes after the trailer (more than etcd's snapshot envelope, zero padding to 512 \
                 bytes and a SHA-256, would take)",
            ));
        }
        self.tail.extend_from_slice(bytes);
        Ok(())
    }

    /// The trailer's summary if the file ended right after it (or after etcd's envelope,
    /// whose padding and hash check out), else where it ends early or goes wrong.
    pub fn finish(&self) -> Result<BackupSummary, BackupError> {
        if let Some(summary) = self.summary {
            if self.tail.is_empty() {
                return Ok(summary);
            }
            let total = self.offset + self.tail.len() as u64;
            let Some(padding) = self.tail.len().checked_sub(ENVELOPE_HASH_BYTES) else {
                return Err(damaged(self.offset, "bytes after the trailer, too few for etcd's envelope"));
            };
            if total % ENVELOPE_ALIGN != ENVELOPE_HASH_BYTES as u64 {
                return Err(damaged(
                    self.offset,
                    "bytes after the trailer that do not end at etcd's 512-byte alignment",
                ));
            }
            if let Some(at) = self.tail[..padding].iter().position(|&byte| byte != 0) {
                return Err(damaged(self.offset + at as u64, "a non-zero byte in etcd's envelope's padding"));
            }
            let mut hasher = self.envelope.clone();
            hasher.update(&self.tail[..padding]);
            let digest = hasher.context.finish();
            if digest.as_ref() != &self.tail[padding..] {
                return Err(damaged(
                    self.offset + padding as u64,
                    "the SHA-256 of etcd's envelope does not match the file",
                ));
            }
            return Ok(summary);
        }
        let end = self.offset + self.buffer.len() as u64;
        let inside = match self.header {
            None => "the header".to_owned(),
            Some(_) => format!("the frame that starts at byte offset {}", self.offset),
        };
        Err(damaged(end, format!("the file ends inside {inside} (truncated)")))
    }

    /// Checks the frame at the start of `bytes` (file offset `at`) if it is whole.
    fn step(&mut self, bytes: &[u8], at: u64, record: &mut RecordSink<'_>) -> Result<Step, BackupError> {
        let Some(header) = self.header else {
            if bytes.len() < BACKUP_HEADER_BYTES {
                return Ok(Step::Need);
            }
            let header = decode_header(&bytes[..BACKUP_HEADER_BYTES])?;
            if header.format_version < BACKUP_VERSION {
                // Written before the leases: no lease table follows.
                self.leases = Some(Vec::new());
            }
            self.header = Some(header);
            return Ok(Step::Consumed(BACKUP_HEADER_BYTES));
        };
        if bytes.len() < 4 {
            return Ok(Step::Need);
        }
        let tag: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
        if self.leases.is_none() {
            if tag != LEASE_TABLE_TAG {
                return Err(damaged(at, "no lease table (LEAS frame) right after the version 3 header"));
            }
            return self.lease_table(&header, bytes, at);
        }
        match tag {
            CHUNK_TAG => self.chunk(&header, bytes, at, record),
            TRAILER_TAG => self.trailer(&header, bytes, at),
            LEASE_TABLE_TAG => Err(damaged(at, "a second lease table (the one is right after the header)")),
            _ => Err(damaged(at, "not a chunk or the trailer (unknown frame tag)")),
        }
    }

    /// The `LEAS` frame of a version 3 file: its header, then 16 bytes a lease.
    fn lease_table(&mut self, header: &BackupHeader, bytes: &[u8], at: u64) -> Result<Step, BackupError> {
        if bytes.len() < LEASE_TABLE_HEADER_BYTES {
            return Ok(Step::Need);
        }
        let frame = &bytes[..LEASE_TABLE_HEADER_BYTES];
        if u32_at(frame, LEASE_TABLE_HEADER_CRC_OFFSET)
            != crc32c::crc32c(&frame[..LEASE_TABLE_HEADER_CRC_OFFSET])
        {
            return Err(damaged(at, "lease table header checksum mismatch"));
        }
        if u32_at(frame, LEASE_TABLE_RESERVED_OFFSET) != 0 {
            return Err(damaged(
                at + LEASE_TABLE_RESERVED_OFFSET as u64,
                "reserved lease table field is not 0",
            ));
        }
        let count_at = at + LEASE_TABLE_COUNT_OFFSET as u64;
        let count = u64_at(frame, LEASE_TABLE_COUNT_OFFSET);
        if count != header.leases {
            return Err(damaged(
                count_at,
                format!("the lease table holds {count} leases, the header says {}", header.leases),
            ));
        }
        // Both counts agree and each is under a checksum; still, nothing is allocated
        // for them: the frame is buffered as its bytes arrive.
        let Some(length) = usize::try_from(count).ok().and_then(|count| count.checked_mul(LEASE_ENTRY_BYTES))
        else {
            return Err(damaged(count_at, format!("{count} leases: more than this machine can hold")));
        };
        let Some(frame_bytes) = length.checked_add(LEASE_TABLE_HEADER_BYTES) else {
            return Err(damaged(count_at, format!("{count} leases: more than this machine can hold")));
        };
        if bytes.len() < frame_bytes {
            return Ok(Step::Need);
        }
        let data = &bytes[LEASE_TABLE_HEADER_BYTES..frame_bytes];
        let data_at = at + LEASE_TABLE_HEADER_BYTES as u64;
        if u32_at(frame, LEASE_TABLE_DATA_CRC_OFFSET) != crc32c::crc32c(data) {
            return Err(damaged(data_at, "lease table checksum mismatch"));
        }
        let mut leases = Vec::with_capacity(count as usize);
        let mut last = 0;
        for (position, entry) in (0..).step_by(LEASE_ENTRY_BYTES).zip(data.chunks_exact(LEASE_ENTRY_BYTES)) {
            let entry_at = data_at + position;
            let (id, ttl_s) = (u64_at(entry, 0), u64_at(entry, 8));
            if id == 0 {
                return Err(damaged(entry_at, "lease id 0 in the lease table (0 means no lease)"));
            }
            if id <= last {
                return Err(damaged(
                    entry_at,
                    format!("lease ids not strictly increasing ({id:016x} after {last:016x})"),
                ));
            }
            last = id;
            if !(1..=MAX_LEASE_TTL_S).contains(&ttl_s) {
                return Err(damaged(
                    entry_at + 8,
                    format!("lease {id:016x} has TTL {ttl_s} s, outside 1..={MAX_LEASE_TTL_S}"),
                ));
            }
            leases.push(BackupLease { id, ttl_s });
        }
        self.leases = Some(leases);
        Ok(Step::Consumed(frame_bytes))
    }

    fn chunk(
        &mut self,
        header: &BackupHeader,
        bytes: &[u8],
        at: u64,
        record: &mut RecordSink<'_>,
    ) -> Result<Step, BackupError> {
        if bytes.len() < CHUNK_HEADER_BYTES {
            return Ok(Step::Need);
        }
        let frame = &bytes[..CHUNK_HEADER_BYTES];
        if u32_at(frame, CHUNK_HEADER_CRC_OFFSET) != crc32c::crc32c(&frame[..CHUNK_HEADER_CRC_OFFSET]) {
            return Err(damaged(at, "chunk header checksum mismatch"));
        }
        if u32_at(frame, CHUNK_RESERVED_OFFSET) != 0 {
            return Err(damaged(at + CHUNK_RESERVED_OFFSET as u64, "reserved chunk field is not 0"));
        }
        let count = u32_at(frame, CHUNK_COUNT_OFFSET) as usize;
        let length = u32_at(frame, CHUNK_LENGTH_OFFSET) as usize;
        if length > MAX_CHUNK_DATA_BYTES {
            return Err(damaged(at + CHUNK_LENGTH_OFFSET as u64, "chunk longer than the format allows"));
        }
        let min_record_bytes = match header.format_version {
            BACKUP_VERSION_1 => MIN_RECORD_V1_BYTES,
            BACKUP_VERSION_2 => MIN_RECORD_V2_BYTES,
            _ => MIN_RECORD_BYTES,
        };
        if count == 0 || count > length / min_record_bytes {
            return Err(damaged(at + CHUNK_COUNT_OFFSET as u64, "record count does not fit the chunk"));
        }
        if count as u64 > header.keys - self.keys {
            return Err(damaged(at + CHUNK_COUNT_OFFSET as u64, "more records than the header's key count"));
        }
        if bytes.len() < CHUNK_HEADER_BYTES + length {
            return Ok(Step::Need);
        }
        let data = &bytes[CHUNK_HEADER_BYTES..CHUNK_HEADER_BYTES + length];
        let data_at = at + CHUNK_HEADER_BYTES as u64;
        if u32_at(frame, CHUNK_DATA_CRC_OFFSET) != crc32c::crc32c(data) {
            return Err(damaged(data_at, "chunk data checksum mismatch"));
        }
        let leases = self.leases.as_deref().expect("the lease table is read before any chunk");
        let mut position = 0;
        let mut previous: Option<&[u8]> = self.last_key.as_deref();
        let truncated = |position: usize| damaged(data_at + position as u64, "record runs past its chunk");
        for _ in 0..count {
            let record_at = position;
            let key = take_bytes(data, &mut position).ok_or_else(|| truncated(record_at))?;
            if previous.is_some_and(|previous| previous >= key) {
                return Err(damaged(data_at + record_at as u64, "keys not in strictly increasing order"));
            }
            previous = Some(key);
            let revisions_at = data_at + position as u64;
            let mut revision = || {
                let field = data.get(position..position + 8).ok_or_else(|| truncated(record_at))?;
                position += 8;
                Ok::<u64, BackupError>(u64::from_le_bytes(field.try_into().expect("8 bytes")))
            };
            let (create_revision, mod_revision, version) = if header.format_version == BACKUP_VERSION_1 {
                // The approximation of the module doc: the last write taken as the creation.
                let mod_revision = revision()?;
                (mod_revision, mod_revision, 1)
            } else {
                (revision()?, revision()?, revision()?)
            };
            if mod_revision == 0 || mod_revision > header.revision {
                return Err(damaged(
                    revisions_at,
                    format!("mod_revision {mod_revision} outside 1..={} (the revision)", header.revision),
                ));
            }
            let revisions = Value { data: Bytes::new(), create_revision, mod_revision, version, lease: 0 };
            if let Some(broken) = revisions.broken_invariant() {
                return Err(damaged(
                    revisions_at,
                    format!(
                        "{broken} (create_revision {create_revision}, mod_revision {mod_revision}, \
                         version {version})"
                    ),
                ));
            }
            let lease_at = data_at + position as u64;
            let lease = if header.format_version >= BACKUP_VERSION {
                let field = data.get(position..position + 8).ok_or_else(|| truncated(record_at))?;
                position += 8;
                u64::from_le_bytes(field.try_into().expect("8 bytes"))
            } else {
                0
            };
            if lease != 0 && leases.binary_search_by_key(&lease, |entry| entry.id).is_err() {
                return Err(damaged(
                    lease_at,
                    format!("the key names lease {lease:016x}, which the lease table does not hold"),
                ));
            }
            let value = take_bytes(data, &mut position).ok_or_else(|| truncated(record_at))?;
            record(BackupRecord { key, create_revision, mod_revision, version, lease, value });
        }
        if position != length {
            return Err(damaged(data_at + position as u64, "bytes after the chunk's last record"));
        }
        self.last_key = previous.map(<[u8]>::to_vec);
        self.keys += count as u64;
        self.chunks += 1;
        Ok(Step::Consumed(CHUNK_HEADER_BYTES + length))
    }

    fn trailer(&mut self, header: &BackupHeader, bytes: &[u8], at: u64) -> Result<Step, BackupError> {
        if bytes.len() < TRAILER_BYTES {
            return Ok(Step::Need);
        }
        let trailer = &bytes[..TRAILER_BYTES];
        if u32_at(trailer, TRAILER_RESERVED_OFFSET) != 0 || u32_at(trailer, TRAILER_RESERVED_2_OFFSET) != 0 {
            return Err(damaged(at, "reserved trailer field is not 0"));
        }
        let (keys, chunks) = (u64_at(trailer, TRAILER_KEYS_OFFSET), u64_at(trailer, TRAILER_CHUNKS_OFFSET));
        if keys != self.keys || keys != header.keys {
            return Err(damaged(
                at + TRAILER_KEYS_OFFSET as u64,
                format!(
                    "the file holds {} keys, its header says {}, its trailer {keys}",
                    self.keys, header.keys
                ),
            ));
        }
        if chunks != self.chunks {
            return Err(damaged(
                at + TRAILER_CHUNKS_OFFSET as u64,
                format!("the file holds {} chunks, its trailer says {chunks}", self.chunks),
            ));
        }
        // Last: every byte before the trailer is covered by its frame's own checksum, so
        // once the fields above hold, a mismatch is damage to this field itself.
        let file_crc = crc32c::crc32c_append(self.crc, &trailer[..TRAILER_CRC_OFFSET]);
        if u32_at(trailer, TRAILER_CRC_OFFSET) != file_crc {
            return Err(damaged(at + TRAILER_CRC_OFFSET as u64, "file checksum mismatch"));
        }
        let bytes = at + TRAILER_BYTES as u64;
        self.summary = Some(BackupSummary { header: *header, bytes, crc32c: file_crc });
        Ok(Step::Consumed(TRAILER_BYTES))
    }
}

fn take_bytes<'a>(data: &'a [u8], position: &mut usize) -> Option<&'a [u8]> {
    let len = u32::from_le_bytes(data.get(*position..*position + 4)?.try_into().ok()?) as usize;
    let start = *position + 4;
    let bytes = data.get(start..start.checked_add(len)?)?;
    *position = start + len;
    Some(bytes)
}

fn decode_header(bytes: &[u8]) -> Result<BackupHeader, BackupError> {
    if bytes[..8] != BACKUP_MAGIC {
        return Err(damaged(0, "not an mmapd backup (bad magic)"));
    }
    let format_version = u32_at(bytes, VERSION_OFFSET);
    if !READ_VERSIONS.contains(&format_version) {
        return Err(damaged(
            VERSION_OFFSET as u64,
            format!(
                "backup format version {format_version}; this build reads versions {BACKUP_VERSION_1} \
                 to {BACKUP_VERSION} (a newer mmapd wrote it?)"
            ),
        ));
    }
    if u32_at(bytes, HEADER_CRC_OFFSET) != header_crc(bytes) {
        // Named at the header's start, as a chunk's is: the damage may be anywhere in it
        // (a flipped version byte can still name a version this build reads).
        return Err(damaged(0, "header checksum mismatch"));
    }
    let leases = u64_at(bytes, HEADER_LEASES_OFFSET);
    if format_version < BACKUP_VERSION && leases != 0 {
        return Err(damaged(HEADER_LEASES_OFFSET as u64, "reserved header field is not 0"));
    }
    let revision = u64_at(bytes, REVISION_OFFSET);
    if revision == 0 {
        return Err(damaged(REVISION_OFFSET as u64, "revision 0: a backup is taken after the first entry"));
    }
    Ok(BackupHeader {
        format_version,
        revision,
        cluster_id: u64_at(bytes, CLUSTER_ID_OFFSET),
        node_id: u64_at(bytes, NODE_ID_OFFSET),
        keys: u64_at(bytes, KEYS_OFFSET),
        created_unix_seconds: u64_at(bytes, CREATED_OFFSET),
        leases,
    })
}

/// How much of a file is read at a time.
const READ_BYTES: usize = 1 << 16;

/// Reads `input` to its end through a [`BackupDecoder`], handing out the records;
/// returns the decoder, finished, for its lease table.
fn read(
    input: &mut impl Read,
    record: &mut RecordSink<'_>,
) -> Result<(BackupSummary, BackupDecoder), ReadBackupError> {
    let mut decoder = BackupDecoder::new();
    let mut piece = vec![0u8; READ_BYTES];
    loop {
        let read = match input.read(&mut piece) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error.into()),
        };
        decoder.feed(&piece[..read], record)?;
    }
    Ok((decoder.finish()?, decoder))
}

/// Checks a whole backup without keeping its records: memory stays one chunk.
pub fn verify_backup(input: &mut impl Read) -> Result<BackupSummary, ReadBackupError> {
    read(input, &mut |_| {}).map(|(summary, _)| summary)
}

/// Reads a whole backup into a state machine at the backup's revision, with its lease
/// table and every key attached to its lease, an empty cluster record (the caller gives
/// it the new cluster's, `StateMachine::replace_cluster`) and an empty history compacted
/// to the backup's revision.
pub fn load_backup(input: &mut impl Read) -> Result<(BackupSummary, StateMachine), ReadBackupError> {
    let mut records = Vec::new();
    let (summary, decoder) = read(input, &mut |record| {
        let value = Value {
            data: Bytes::copy_from_slice(record.value),
            create_revision: record.create_revision,
            mod_revision: record.mod_revision,
            version: record.version,
            lease: record.lease,
        };
        records.push((Bytes::copy_from_slice(record.key), value));
    })?;
    // Keys strictly increase, revisions are within 1..=revision and keep `Value`'s
    // invariants, lease ids are not 0 and TTLs in range, and every record's lease is in
    // the table: checked by the decoder. `from_parts` attaches each key to its lease, so
    // a key is in a lease's key set exactly when its `Value::lease` names it.
    let leases = decoder.leases().expect("a finished decoder has read the lease table");
    let leases = OrdMap::from_iter(leases.iter().map(|lease| (lease.id, Lease::new(lease.ttl_s))));
    // A backup holds no history: the restored cluster's starts at the backup's revision.
    let revision = summary.header.revision;
    let machine = StateMachine::from_parts(
        OrdMap::from_iter(records),
        revision,
        Cluster::default(),
        crate::kv::History::starting_at(revision),
        leases,
    )
    .unwrap_or_else(|key| panic!("kv: restored key {key:?} names a lease the decoder did not check"));
    Ok((summary, machine))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{Command, Condition, Outcome};

    /// Key, (create_revision, mod_revision, version), lease, value.
    type Record = (Vec<u8>, (u64, u64, u64), u64, Vec<u8>);

    fn machine(keys: usize, value_bytes: usize) -> StateMachine {
        let mut machine = StateMachine::new();
        machine.apply(1, &Command::Bootstrap { cluster_id: 0xc1, members: vec![(7, "a:1".into())] });
        for i in 0..keys {
            let key = Bytes::from(format!("key-{i:06}"));
            let value = Bytes::from(vec![b'a' + (i % 26) as u8; value_bytes]);
            machine.apply(i as u64 + 2, &Command::Put { key, value, condition: Condition::None, lease: 0 });
        }
        machine
    }

    fn encode(machine: &StateMachine) -> (BackupSummary, Vec<u8>) {
        encode_as(BACKUP_VERSION, machine)
    }

    fn encode_as(format_version: u32, machine: &StateMachine) -> (BackupSummary, Vec<u8>) {
        let mut file = Vec::new();
        let summary = encode_backup_as(format_version, machine, 7, 1_700_000_000, |piece| {
            file.extend_from_slice(&piece);
            Ok::<(), ()>(())
        })
        .unwrap();
        (summary, file)
    }

    fn records_of(machine: &StateMachine) -> Vec<Record> {
        let revisions = |v: &Value| (v.create_revision, v.mod_revision, v.version);
        machine.iter().map(|(k, v)| (k.to_vec(), revisions(v), v.lease, v.data.to_vec())).collect()
    }

    fn decode(bytes: &[u8], piece_bytes: usize) -> Result<(BackupSummary, Vec<Record>), BackupError> {
        let mut decoder = BackupDecoder::new();
        let mut records = Vec::new();
        for piece in bytes.chunks(piece_bytes.max(1)) {
            decoder.feed(piece, &mut |r| {
                records.push((
                    r.key.to_vec(),
                    (r.create_revision, r.mod_revision, r.version),
                    r.lease,
                    r.value.to_vec(),
                ))
            })?;
        }
        Ok((decoder.finish()?, records))
    }

    #[test]
    fn a_backup_round_trips_in_pieces_of_any_size() {
        let machine = machine(300, 10);
        let (summary, file) = encode(&machine);
        assert_eq!(summary.bytes, file.len() as u64);
        assert_eq!(summary.header.revision, 301);
        assert_eq!(summary.header.cluster_id, 0xc1);
        assert_eq!(summary.header.keys, 300);
        let expected = records_of(&machine);
        for piece_bytes in [1, 7, 64, 4096, file.len()] {
            let (decoded, records) = decode(&file, piece_bytes).unwrap();
            assert_eq!(decoded, summary);
            assert_eq!(records, expected);
        }
        let (loaded_summary, loaded) = load_backup(&mut &file[..]).unwrap();
        assert_eq!(loaded_summary, summary);
        assert_eq!(loaded.applied_index(), 301);
        assert!(loaded.iter().eq(machine.iter()));
        assert_eq!(loaded.cluster().id(), 0, "the cluster record is the caller's to give");
    }

    #[test]
    fn large_states_are_cut_into_chunks_of_about_the_target_size() {
        let machine = machine(600, 5000);
        let mut pieces = Vec::new();
        encode_backup(&machine, 7, 0, |piece| {
            pieces.push(piece.len());
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(pieces.len(), 3 + 3, "header, lease table, 3 chunks, trailer: {pieces:?}");
        assert!(pieces.iter().all(|&len| len <= CHUNK_HEADER_BYTES + CHUNK_TARGET_BYTES + 5100));
    }

    #[test]
    fn the_summary_reads_as_the_operator_sees_it() {
        let header = BackupHeader {
            format_version: BACKUP_VERSION,
            revision: 48213,
            cluster_id: 1,
            node_id: 2,
            keys: 10000,
            created_unix_seconds: 0,
            leases: 3,
        };
        let summary = BackupSummary { header, bytes: 1_234_567, crc32c: 0x9f3a_0c1d };
        assert_eq!(summary.to_string(), "revision 48213, 10000 keys, 1.2 MB, crc32c 9f3a0c1d");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1000), "1.0 kB");
        assert_eq!(human_bytes(999_999), "1.0 MB");
        assert_eq!(human_bytes(5_000_000_000), "5.0 GB");
    }

    #[test]
    fn an_empty_state_is_a_valid_backup() {
        let mut machine = StateMachine::new();
        machine.advance_applied(1);
        let (summary, file) = encode(&machine);
        assert_eq!(file.len(), BACKUP_HEADER_BYTES + LEASE_TABLE_HEADER_BYTES + TRAILER_BYTES);
        assert_eq!(decode(&file, 5).unwrap().0, summary);
    }

    fn enveloped(file: &[u8]) -> Vec<u8> {
        let mut hasher = EnvelopeHasher::default();
        hasher.update(file);
        let mut enveloped = file.to_vec();
        enveloped.extend_from_slice(&hasher.finish());
        enveloped
    }

    #[test]
    fn a_backup_in_etcds_snapshot_envelope_loads_and_its_shape_is_what_etcdctl_checks() {
        let machine = machine(40, 10);
        let (summary, file) = encode(&machine);
        let enveloped = enveloped(&file);
        // etcdctl 3.4's `snapshot save`: size % 512 == 32 (sha256.Size).
        assert_eq!(enveloped.len() % 512, 32);
        assert!(enveloped.len() - file.len() <= MAX_ENVELOPE_BYTES);
        let digest = ring::digest::digest(&ring::digest::SHA256, &enveloped[..enveloped.len() - 32]);
        assert_eq!(digest.as_ref(), &enveloped[enveloped.len() - 32..]);
        for piece_bytes in [1, 100, enveloped.len()] {
            let (decoded, records) = decode(&enveloped, piece_bytes).unwrap();
            assert_eq!((decoded, records), (summary, records_of(&machine)));
        }
    }

    #[test]
    fn a_damaged_envelope_or_bytes_past_it_are_refused_after_the_trailer() {
        let (_, file) = encode(&machine(40, 10));
        let good = enveloped(&file);
        for position in file.len()..good.len() {
            let mut flipped = good.clone();
            flipped[position] ^= 0x10;
            let error = decode(&flipped, 64).expect_err(&format!("flip at {position} accepted"));
            assert!(error.offset >= file.len() as u64 && error.offset <= position as u64, "{error}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&longer, 64).is_err(), "a byte past the envelope");
        let mut far_longer = good.clone();
        far_longer.extend_from_slice(&[0; 600]);
        assert!(decode(&far_longer, 64).is_err(), "more than an envelope takes");
        assert!(decode(&good[..good.len() - 1], 64).is_err(), "a truncated envelope");
    }

    /// Every flipped byte and every truncation is refused, naming an offset at or before
    /// the damage (the damaged frame or field), never a panic.
    #[test]
    fn every_flipped_byte_and_every_truncation_is_refused_with_its_offset() {
        let (_, file) = encode(&leased_machine());
        for len in 0..file.len() {
            let error = decode(&file[..len], 13).expect_err(&format!("truncation to {len} accepted"));
            assert!(error.offset <= len as u64, "truncation to {len}: {error}");
        }
        for position in 0..file.len() {
            for bit in [0x01, 0x80] {
                let mut flipped = file.clone();
                flipped[position] ^= bit;
                let error = decode(&flipped, 13).expect_err(&format!("flip at {position} accepted"));
                assert!(error.offset <= position as u64, "flip at {position}: {error}");
            }
        }
        let mut longer = file.clone();
        longer.push(0);
        assert_eq!(decode(&longer, 13).unwrap_err().offset, file.len() as u64);
    }

    #[test]
    fn a_newer_format_version_is_refused_naming_it_and_the_versions_read() {
        let (_, mut file) = encode(&machine(1, 1));
        file[VERSION_OFFSET] = 4;
        let error = decode(&file, 64).unwrap_err();
        assert_eq!(error.offset, VERSION_OFFSET as u64);
        assert!(error.reason.contains("version 4") && error.reason.contains("versions 1 to 3"), "{error}");
    }

    /// A key's three revisions survive a backup: updated, deleted and created again,
    /// imported (`create_revision`, `mod_revision` and `version` all differ per key).
    #[test]
    fn every_keys_revisions_survive_a_round_trip() {
        let mut machine = machine(3, 2);
        machine.apply(10, &Command::put("key-000000", "updated"));
        machine.apply(11, &Command::put("key-000000", "again"));
        machine.apply(12, &Command::delete("key-000001"));
        machine.apply(13, &Command::put("key-000001", "recreated"));
        machine.apply(14, &Command::Import { pairs: vec![("key-000002".into(), "imported".into())] });
        let (_, file) = encode(&machine);
        let (_, records) = decode(&file, 100).unwrap();
        assert_eq!(records, records_of(&machine));
        let by_key: Vec<(u64, u64, u64)> = records.iter().map(|(_, revisions, _, _)| *revisions).collect();
        assert_eq!(by_key, vec![(2, 11, 3), (13, 13, 1), (4, 14, 2)]);
        let (_, loaded) = load_backup(&mut &file[..]).unwrap();
        assert!(loaded.iter().eq(machine.iter()));
    }

    /// A version 1 file (one revision a key) still loads: each key as created by its last
    /// write, the approximation the module doc states.
    #[test]
    fn a_version_1_backup_loads_with_each_key_created_at_its_last_write() {
        let mut machine = machine(2, 2);
        machine.apply(10, &Command::put("key-000000", "updated"));
        let (summary, file) = encode_as(BACKUP_VERSION_1, &machine);
        assert_eq!(summary.header.format_version, 1);
        assert_eq!(
            file.len(),
            encode_as(BACKUP_VERSION_2, &machine).1.len() - 2 * 16,
            "16 bytes less a record"
        );
        let (decoded, records) = decode(&file, 7).unwrap();
        assert_eq!(decoded, summary);
        assert_eq!(records[0], (b"key-000000".to_vec(), (10, 10, 1), 0, b"updated".to_vec()));
        assert_eq!(records[1], (b"key-000001".to_vec(), (3, 3, 1), 0, b"bb".to_vec()));
        let (_, loaded) = load_backup(&mut &file[..]).unwrap();
        assert_eq!(loaded.get(b"key-000000").unwrap(), &Value::created("updated".into(), 10));
        assert_eq!(loaded.applied_index(), 10);
    }

    /// Revisions that break `Value`'s rules are refused at the record's revisions even
    /// when every checksum holds (a writer's bug, not a flipped bit).
    #[test]
    fn revisions_that_break_the_rules_are_refused_at_the_record() {
        let broken = [(5, 4, 1), (0, 4, 1), (2, 4, 1), (2, 4, 4), (4, 4, 2), (1, 4, 0), (1, 9, 1)];
        for (create_revision, mod_revision, version) in broken {
            let value =
                Value { data: Bytes::from_static(b"v"), create_revision, mod_revision, version, lease: 0 };
            let machine = StateMachine::from_parts(
                OrdMap::from_iter([(Bytes::from_static(b"k"), value)]),
                8,
                Cluster::default(),
                crate::kv::History::starting_at(8),
                OrdMap::new(),
            )
            .expect("no key names a lease");
            let (_, file) = encode(&machine);
            let error = decode(&file, 64).unwrap_err();
            let revisions_at =
                (BACKUP_HEADER_BYTES + LEASE_TABLE_HEADER_BYTES + CHUNK_HEADER_BYTES + 4 + 1) as u64;
            assert_eq!(error.offset, revisions_at, "({create_revision}, {mod_revision}, {version}): {error}");
        }
    }

    #[test]
    fn a_damaged_chunk_length_is_refused_before_anything_is_buffered_for_it() {
        let (_, mut file) = encode(&machine(3, 1));
        let chunk_at = BACKUP_HEADER_BYTES + LEASE_TABLE_HEADER_BYTES;
        let length_at = chunk_at + CHUNK_LENGTH_OFFSET;
        file[length_at..length_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let error = decode(&file[..chunk_at + CHUNK_HEADER_BYTES], 64).unwrap_err();
        assert_eq!(error.offset, chunk_at as u64, "{error}");
    }

    /// Three leases, one with two keys, one with one, one with none (a lease outlives
    /// its keys until it expires), and keys attached to none.
    fn leased_machine() -> StateMachine {
        let mut machine = machine(4, 3);
        machine.apply(10, &Command::LeaseGrant { id: 0xa1, ttl_s: 30 });
        machine.apply(11, &Command::LeaseGrant { id: 0xb2, ttl_s: 5 });
        machine.apply(12, &Command::LeaseGrant { id: MAX_LEASE_TTL_S, ttl_s: MAX_LEASE_TTL_S });
        let put = |key: &'static str, lease| Command::Put {
            key: key.into(),
            value: "leased".into(),
            condition: Condition::None,
            lease,
        };
        machine.apply(13, &put("key-000001", 0xa1));
        machine.apply(14, &put("key-000003", 0xa1));
        machine.apply(15, &put("new", 0xb2));
        machine.apply(16, &put("key-000002", 0));
        machine
    }

    /// The lease table and each key's lease as (id, TTL, keys), and the check of the
    /// state machine's invariant: a key is in a lease's key set exactly when its
    /// `Value::lease` names it.
    fn leases_of(machine: &StateMachine) -> Vec<(u64, u64, Vec<Vec<u8>>)> {
        for (key, value) in machine.iter().filter(|(_, value)| value.lease != 0) {
            let lease = machine.lease(value.lease).unwrap_or_else(|| panic!("{key:?} names a missing lease"));
            assert!(
                lease.keys().any(|listed| listed == key),
                "lease {:x} does not list {key:?}",
                value.lease
            );
        }
        let table: Vec<_> = machine
            .leases()
            .map(|(id, lease)| (id, lease.ttl_s, lease.keys().map(|key| key.to_vec()).collect::<Vec<_>>()))
            .collect();
        for (id, _, keys) in &table {
            for key in keys {
                assert_eq!(
                    machine.get(key).map(|value| value.lease),
                    Some(*id),
                    "lease {id:x} lists {key:?}"
                );
            }
        }
        table
    }

    #[test]
    fn a_backup_keeps_the_lease_table_and_every_keys_lease() {
        let machine = leased_machine();
        let expected = leases_of(&machine);
        assert_eq!(expected.len(), 3);
        assert_eq!(expected[0], (0xa1, 30, vec![b"key-000001".to_vec(), b"key-000003".to_vec()]));
        let (summary, file) = encode(&machine);
        assert_eq!((summary.header.format_version, summary.header.leases), (3, 3));
        assert_eq!(&file[BACKUP_HEADER_BYTES..BACKUP_HEADER_BYTES + 4], b"LEAS");
        for piece_bytes in [1, 5, 100, file.len()] {
            let (decoded, records) = decode(&file, piece_bytes).unwrap();
            assert_eq!(decoded, summary);
            assert_eq!(records, records_of(&machine));
        }
        let (_, mut loaded) = load_backup(&mut &file[..]).unwrap();
        assert!(loaded.iter().eq(machine.iter()), "keys, revisions or leases differ");
        assert_eq!(leases_of(&loaded), expected);
        assert_eq!(loaded.approximate_bytes(), {
            let history = machine.history().approximate_bytes();
            machine.approximate_bytes() - history
        });
        // The restored table works: a revoke deletes exactly the keys the lease had.
        let revision = loaded.applied_index() + 1;
        assert_eq!(
            loaded.apply(revision, &Command::LeaseRevoke { id: 0xa1 }),
            Outcome::LeaseRevoked { deleted: 2 }
        );
        assert!(loaded.get(b"key-000001").is_none() && loaded.get(b"key-000003").is_none());
        assert!(loaded.get(b"key-000002").is_some_and(|value| value.lease == 0));
        assert_eq!(loaded.lease_count(), 2);
    }

    /// A version 2 file as the release before the leases wrote it (by hand: every byte
    /// of docs/format.md's version 2 layout) and as this build's writer writes it: both
    /// load, their keys attached to no lease.
    #[test]
    fn a_version_2_backup_still_loads_with_no_leases() {
        let file = hand_built_old_backup(BACKUP_VERSION_2);
        let (summary, records) = decode(&file, 3).unwrap();
        assert_eq!((summary.header.format_version, summary.header.leases, summary.header.keys), (2, 0, 2));
        assert_eq!(
            records,
            vec![
                (b"a".to_vec(), (3, 7, 2), 0, b"one".to_vec()),
                (b"bc".to_vec(), (9, 9, 1), 0, b"".to_vec()),
            ]
        );
        let (_, loaded) = load_backup(&mut &file[..]).unwrap();
        assert_eq!(loaded.applied_index(), 9);
        assert_eq!(loaded.lease_count(), 0);

        let machine = leased_machine();
        let (summary, file) = encode_as(BACKUP_VERSION_2, &machine);
        assert_eq!(summary.header.leases, 0);
        assert_eq!(
            &file[BACKUP_HEADER_BYTES..BACKUP_HEADER_BYTES + 4],
            b"CHNK",
            "no lease table in version 2"
        );
        let (_, loaded) = load_backup(&mut &file[..]).unwrap();
        assert_eq!(loaded.lease_count(), 0);
        assert!(loaded.iter().all(|(_, value)| value.lease == 0));
        let data = |machine: &StateMachine| -> Vec<(Bytes, Bytes, u64)> {
            machine.iter().map(|(k, v)| (k.clone(), v.data.clone(), v.mod_revision)).collect()
        };
        assert_eq!(data(&loaded), data(&machine));
    }

    #[test]
    fn a_hand_built_version_1_backup_still_loads() {
        let file = hand_built_old_backup(BACKUP_VERSION_1);
        let (summary, records) = decode(&file, 3).unwrap();
        assert_eq!((summary.header.format_version, summary.header.leases), (1, 0));
        assert_eq!(
            records,
            vec![
                (b"a".to_vec(), (7, 7, 1), 0, b"one".to_vec()),
                (b"bc".to_vec(), (9, 9, 1), 0, b"".to_vec()),
            ]
        );
        let (_, loaded) = load_backup(&mut &file[..]).unwrap();
        assert_eq!(loaded.lease_count(), 0);
    }

    /// Keys `a` (created 3, written 7, version 2, value `one`) and `bc` (created and
    /// written 9, empty), revision 9, in format 1 or 2, built from the layout alone.
    fn hand_built_old_backup(format_version: u32) -> Vec<u8> {
        let mut file = Vec::new();
        file.extend_from_slice(b"MMAPDBAK");
        file.extend_from_slice(&format_version.to_le_bytes());
        file.extend_from_slice(&[0; 4]); // the header's checksum, below
        for field in [9u64, 0xc1, 7, 2, 1_700_000_000, 0] {
            file.extend_from_slice(&field.to_le_bytes());
        }
        let mut crc_input = file[..12].to_vec();
        crc_input.extend_from_slice(&file[16..64]);
        let crc = crc32c::crc32c(&crc_input);
        file[12..16].copy_from_slice(&crc.to_le_bytes());
        let mut records = Vec::new();
        for (key, revisions, value) in [(&b"a"[..], [3u64, 7, 2], &b"one"[..]), (b"bc", [9, 9, 1], b"")] {
            records.extend_from_slice(&(key.len() as u32).to_le_bytes());
            records.extend_from_slice(key);
            let revisions = if format_version == 1 { &revisions[1..2] } else { &revisions[..] };
            for revision in revisions {
                records.extend_from_slice(&revision.to_le_bytes());
            }
            records.extend_from_slice(&(value.len() as u32).to_le_bytes());
            records.extend_from_slice(value);
        }
        let mut chunk = Vec::new();
        chunk.extend_from_slice(b"CHNK");
        chunk.extend_from_slice(&2u32.to_le_bytes());
        chunk.extend_from_slice(&(records.len() as u32).to_le_bytes());
        chunk.extend_from_slice(&crc32c::crc32c(&records).to_le_bytes());
        chunk.extend_from_slice(&0u32.to_le_bytes());
        let crc = crc32c::crc32c(&chunk);
        chunk.extend_from_slice(&crc.to_le_bytes());
        file.extend_from_slice(&chunk);
        file.extend_from_slice(&records);
        file.extend_from_slice(b"DONE");
        file.extend_from_slice(&0u32.to_le_bytes());
        file.extend_from_slice(&2u64.to_le_bytes());
        file.extend_from_slice(&1u64.to_le_bytes());
        file.extend_from_slice(&0u32.to_le_bytes());
        let crc = crc32c::crc32c(&file);
        file.extend_from_slice(&crc.to_le_bytes());
        file
    }

    /// Recomputes the checksums of a version 3 file's header and lease table after its
    /// bytes were edited, so that what is refused is the edit, not a checksum. Returns
    /// where the table's entries end, by its count, if that is inside the file.
    fn reseal_front(file: &mut [u8]) -> Option<usize> {
        let crc = header_crc(file);
        file[HEADER_CRC_OFFSET..REVISION_OFFSET].copy_from_slice(&crc.to_le_bytes());
        let leases_at = BACKUP_HEADER_BYTES;
        let count = u64_at(file, leases_at + LEASE_TABLE_COUNT_OFFSET);
        let data_at = leases_at + LEASE_TABLE_HEADER_BYTES;
        let end = usize::try_from(count)
            .ok()
            .and_then(|count| count.checked_mul(LEASE_ENTRY_BYTES)?.checked_add(data_at))
            .filter(|end| *end <= file.len());
        if let Some(end) = end {
            let crc = crc32c::crc32c(&file[data_at..end]);
            file[leases_at + LEASE_TABLE_DATA_CRC_OFFSET..][..4].copy_from_slice(&crc.to_le_bytes());
        }
        let crc = crc32c::crc32c(&file[leases_at..leases_at + LEASE_TABLE_HEADER_CRC_OFFSET]);
        file[leases_at + LEASE_TABLE_HEADER_CRC_OFFSET..][..4].copy_from_slice(&crc.to_le_bytes());
        end
    }

    /// `reseal_front`, then the one chunk's checksums and the file's.
    fn reseal(file: &mut [u8]) {
        let chunk_at = reseal_front(file).expect("the lease table's count is in range");
        let length = u32_at(file, chunk_at + CHUNK_LENGTH_OFFSET) as usize;
        let records_at = chunk_at + CHUNK_HEADER_BYTES;
        let crc = crc32c::crc32c(&file[records_at..records_at + length]);
        file[chunk_at + CHUNK_DATA_CRC_OFFSET..][..4].copy_from_slice(&crc.to_le_bytes());
        let crc = crc32c::crc32c(&file[chunk_at..chunk_at + CHUNK_HEADER_CRC_OFFSET]);
        file[chunk_at + CHUNK_HEADER_CRC_OFFSET..][..4].copy_from_slice(&crc.to_le_bytes());
        let end = file.len();
        let crc = crc32c::crc32c(&file[..end - 4]);
        file[end - 4..].copy_from_slice(&crc.to_le_bytes());
    }

    /// Edits `leased_machine`'s backup, reseals it, and returns the error and the file.
    fn refused_after(edit: impl FnOnce(&mut Vec<u8>)) -> BackupError {
        let (_, mut file) = encode(&leased_machine());
        decode(&file, 64).expect("the intact file is valid");
        edit(&mut file);
        reseal(&mut file);
        let error = decode(&file, 64).expect_err("an edited file was accepted");
        let loaded = load_backup(&mut &file[..]).map(|_| ()).unwrap_err();
        assert!(loaded.to_string().contains(&format!("at byte offset {}", error.offset)), "{loaded}");
        error
    }

    /// Where the lease table's entry `index` starts.
    fn lease_entry_at(index: usize) -> usize {
        BACKUP_HEADER_BYTES + LEASE_TABLE_HEADER_BYTES + index * LEASE_ENTRY_BYTES
    }

    /// Where the record of `key` in the one chunk of `leased_machine`'s backup starts its
    /// lease field.
    fn lease_field_of(file: &[u8], key: &[u8]) -> usize {
        let records_at = lease_entry_at(3) + CHUNK_HEADER_BYTES;
        let key_at = records_at + file[records_at..].windows(key.len()).position(|w| w == key).unwrap();
        key_at + key.len() + 3 * 8
    }

    #[test]
    fn a_damaged_lease_table_is_refused_at_its_checksums() {
        let (_, file) = encode(&leased_machine());
        let mut flipped = file.clone();
        flipped[lease_entry_at(1) + 9] ^= 0x04;
        let error = decode(&flipped, 64).unwrap_err();
        assert_eq!(error.offset, lease_entry_at(0) as u64, "{error}");
        assert!(error.reason.contains("lease table checksum"), "{error}");
        let mut flipped = file.clone();
        flipped[BACKUP_HEADER_BYTES + LEASE_TABLE_COUNT_OFFSET] ^= 0x01;
        let error = decode(&flipped, 64).unwrap_err();
        assert_eq!(error.offset, BACKUP_HEADER_BYTES as u64, "{error}");
        assert!(error.reason.contains("lease table header checksum"), "{error}");
    }

    #[test]
    fn a_lease_table_entry_that_breaks_the_rules_is_refused_at_the_entry() {
        let error = refused_after(|file| file[lease_entry_at(0)..][..8].copy_from_slice(&0u64.to_le_bytes()));
        assert_eq!(error.offset, lease_entry_at(0) as u64, "{error}");
        assert!(error.reason.contains("lease id 0"), "{error}");
        let error =
            refused_after(|file| file[lease_entry_at(1)..][..8].copy_from_slice(&0xa1u64.to_le_bytes()));
        assert_eq!(error.offset, lease_entry_at(1) as u64, "{error}");
        assert!(error.reason.contains("strictly increasing"), "{error}");
        for ttl_s in [0, MAX_LEASE_TTL_S + 1] {
            let error = refused_after(|file| {
                file[lease_entry_at(2) + 8..][..8].copy_from_slice(&ttl_s.to_le_bytes())
            });
            assert_eq!(error.offset, lease_entry_at(2) as u64 + 8, "{error}");
            assert!(error.reason.contains("TTL"), "{error}");
        }
    }

    #[test]
    fn a_record_naming_a_lease_not_in_the_table_is_refused_at_its_lease_field() {
        let (_, file) = encode(&leased_machine());
        let at = lease_field_of(&file, b"new");
        assert_eq!(u64_at(&file, at), 0xb2, "the field found is the lease");
        let error = refused_after(|file| file[at..at + 8].copy_from_slice(&0xb3u64.to_le_bytes()));
        assert_eq!(error.offset, at as u64, "{error}");
        assert!(error.reason.contains("00000000000000b3"), "{error}");
        // A lease the table holds is fine: the same edit to another lease's id loads.
        let (_, mut file) = encode(&leased_machine());
        file[at..at + 8].copy_from_slice(&0xa1u64.to_le_bytes());
        reseal(&mut file);
        let (_, loaded) = load_backup(&mut &file[..]).unwrap();
        assert_eq!(leases_of(&loaded)[0].2.len(), 3);
    }

    #[test]
    fn lease_counts_that_do_not_match_are_refused_at_the_count() {
        // The header says 2 leases, the table 3.
        let error =
            refused_after(|file| file[HEADER_LEASES_OFFSET..][..8].copy_from_slice(&2u64.to_le_bytes()));
        assert_eq!(error.offset, (BACKUP_HEADER_BYTES + LEASE_TABLE_COUNT_OFFSET) as u64, "{error}");
        assert!(error.reason.contains("holds 3 leases, the header says 2"), "{error}");
        let with_counts = |count: u64| {
            let (_, mut file) = encode(&leased_machine());
            file[HEADER_LEASES_OFFSET..][..8].copy_from_slice(&count.to_le_bytes());
            file[BACKUP_HEADER_BYTES + LEASE_TABLE_COUNT_OFFSET..][..8].copy_from_slice(&count.to_le_bytes());
            reseal_front(&mut file);
            file
        };
        // Both say 2 where the table holds 3: the third entry is no frame.
        let error = decode(&with_counts(2), 64).unwrap_err();
        assert_eq!(error.offset, lease_entry_at(2) as u64, "{error}");
        // Both say 4: the table runs into the chunk, whose header is no lease entry.
        let error = decode(&with_counts(4), 64).unwrap_err();
        assert!((lease_entry_at(3)..lease_entry_at(4)).contains(&(error.offset as usize)), "{error}");
        // A count no machine holds, under valid checksums: refused before any buffering.
        let error = decode(&with_counts(u64::MAX / 4), 64).unwrap_err();
        assert_eq!(error.offset, (BACKUP_HEADER_BYTES + LEASE_TABLE_COUNT_OFFSET) as u64, "{error}");
        assert!(error.reason.contains("more than this machine can hold"), "{error}");
        // A large one that fits: the file ends before the table does.
        let file = with_counts(1 << 40);
        let error = decode(&file, 64).unwrap_err();
        assert_eq!(error.offset, file.len() as u64, "{error}");
        assert!(error.reason.contains("truncated"), "{error}");
    }

    #[test]
    fn a_lease_table_missing_misplaced_or_in_an_old_version_is_refused() {
        // A version 3 file with its lease table cut out.
        let (_, file) = encode(&leased_machine());
        let mut without = file[..BACKUP_HEADER_BYTES].to_vec();
        without.extend_from_slice(&file[lease_entry_at(3)..]);
        let error = decode(&without, 64).unwrap_err();
        assert_eq!(error.offset, BACKUP_HEADER_BYTES as u64, "{error}");
        assert!(error.reason.contains("no lease table"), "{error}");
        // A second table after the first.
        let mut twice = file[..lease_entry_at(3)].to_vec();
        twice.extend_from_slice(&file[BACKUP_HEADER_BYTES..]);
        let error = decode(&twice, 64).unwrap_err();
        assert_eq!(error.offset, lease_entry_at(3) as u64, "{error}");
        assert!(error.reason.contains("second lease table"), "{error}");
        // A version 2 header with a lease count: the field is reserved there.
        let (_, mut old) = encode_as(BACKUP_VERSION_2, &leased_machine());
        old[HEADER_LEASES_OFFSET] = 1;
        let crc = header_crc(&old);
        old[HEADER_CRC_OFFSET..REVISION_OFFSET].copy_from_slice(&crc.to_le_bytes());
        let error = decode(&old, 64).unwrap_err();
        assert_eq!(error.offset, HEADER_LEASES_OFFSET as u64, "{error}");
    }
}
