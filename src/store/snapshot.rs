//! Snapshot files: a pure decoder (fuzzable) and the durable save/load around it.
//!
//! A snapshot is written to `snapshot-<index, 20 digits>.tmp` and fsynced (possibly on
//! another thread than the store's, `write_temp`); then its header gets the log's first
//! segment, it is fsynced again, renamed to `snapshot-<index>.snap`, and the directory
//! fsynced (`adopt`); only then are older snapshot files removed. So a crash leaves the
//! previous snapshot or the new one, whole, and temporary files that the next open
//! removes.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::error::StoreError;
use super::mapped::sync_dir;
use super::record::{u32_at, u64_at};
use crate::raft::{ConfState, SnapshotMeta};

/// First bytes of a snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"MMAPDSNP";
/// Snapshot format version written. Version 2 lists learners after the voters.
pub const SNAPSHOT_VERSION: u32 = 2;
/// The version before learners: still read, as a configuration without learners.
pub const SNAPSHOT_VERSION_WITHOUT_LEARNERS: u32 = 1;
/// Size of the fixed snapshot header; the voters follow it.
pub const SNAPSHOT_HEADER_BYTES: usize = 56;
/// The most voters a snapshot may list.
pub const MAX_VOTERS: usize = 1024;
/// The most learners a snapshot may list.
pub const MAX_LEARNERS: usize = 1024;
/// Version 2: the learner count (u32) and a reserved u32 (0) after the voters.
const LEARNER_COUNT_BYTES: usize = 8;
const VERSION_OFFSET: usize = 8;
const VOTER_COUNT_OFFSET: usize = 12;
const INDEX_OFFSET: usize = 16;
const TERM_OFFSET: usize = 24;
const FIRST_SEGMENT_OFFSET: usize = 32;
const DATA_LEN_OFFSET: usize = 40;
const DATA_CRC_OFFSET: usize = 48;
const HEADER_CRC_OFFSET: usize = 52;
const _: () = assert!(HEADER_CRC_OFFSET + 4 == SNAPSHOT_HEADER_BYTES);
const _: () = assert!(DATA_CRC_OFFSET + 4 == HEADER_CRC_OFFSET && DATA_LEN_OFFSET + 8 == DATA_CRC_OFFSET);

const TEMP_NAME: &str = "snapshot.tmp";

/// A decoded snapshot file; the data borrows from the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotView<'a> {
    /// Where the snapshot stands in the log.
    pub meta: SnapshotMeta,
    /// The first log segment that belongs after this snapshot; older segments are ignored.
    pub first_segment_seq: u64,
    /// The state machine bytes.
    pub data: &'a [u8],
    /// Where `data` starts in the file.
    pub data_offset: usize,
}

/// Why bytes are not a snapshot file: the offset of the bad field and the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotError {
    /// Byte offset of the bad field.
    pub offset: u64,
    /// What is wrong.
    pub reason: &'static str,
}

fn bad(offset: usize, reason: &'static str) -> SnapshotError {
    SnapshotError { offset: offset as u64, reason }
}

/// Encodes a whole snapshot file. Asserts it decodes back.
pub fn encode_snapshot(meta: &SnapshotMeta, first_segment_seq: u64, data: &[u8]) -> Vec<u8> {
    let mut out = encode_header(meta, first_segment_seq, data.len() as u64, crc32c::crc32c(data));
    out.extend_from_slice(data);
    let back = decode_snapshot(&out).expect("a snapshot we just encoded must decode");
    assert!(back.meta == *meta && back.data == data);
    out
}

/// The fixed header, the voters and the learners: everything before the data.
fn encode_header(meta: &SnapshotMeta, first_segment_seq: u64, data_len: u64, data_crc: u32) -> Vec<u8> {
    let conf = &meta.conf;
    assert!(conf.voters.len() <= MAX_VOTERS, "snapshot at {} lists too many voters", meta.index);
    assert!(conf.learners.len() <= MAX_LEARNERS, "snapshot at {} lists too many learners", meta.index);
    let lists = 8 * conf.voters.len() + LEARNER_COUNT_BYTES + 8 * conf.learners.len();
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + lists);
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&(meta.conf.voters.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta.index.to_le_bytes());
    out.extend_from_slice(&meta.term.to_le_bytes());
    out.extend_from_slice(&first_segment_seq.to_le_bytes());
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(&data_crc.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    for voter in &conf.voters {
        out.extend_from_slice(&voter.to_le_bytes());
    }
    out.extend_from_slice(&(conf.learners.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    for learner in &conf.learners {
        out.extend_from_slice(&learner.to_le_bytes());
    }
    let header_crc = header_crc(&out);
    out[HEADER_CRC_OFFSET..SNAPSHOT_HEADER_BYTES].copy_from_slice(&header_crc.to_le_bytes());
    out
}

/// Covers the fixed header (without its checksum field), the voters and (version 2)
/// the learner count and learners.
fn header_crc(header_and_lists: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&header_and_lists[..HEADER_CRC_OFFSET]);
    crc32c::crc32c_append(crc, &header_and_lists[SNAPSHOT_HEADER_BYTES..])
}

/// Decodes a whole snapshot file.
pub fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotView<'_>, SnapshotError> {
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Err(bad(bytes.len(), "file shorter than the snapshot header"));
    }
    if bytes[..8] != SNAPSHOT_MAGIC {
        return Err(bad(0, "bad snapshot magic"));
    }
    let version = u32_at(bytes, VERSION_OFFSET);
    if version != SNAPSHOT_VERSION && version != SNAPSHOT_VERSION_WITHOUT_LEARNERS {
        return Err(bad(VERSION_OFFSET, "unsupported snapshot version"));
    }
    let voter_count = u32_at(bytes, VOTER_COUNT_OFFSET) as usize;
    if voter_count > MAX_VOTERS {
        return Err(bad(VOTER_COUNT_OFFSET, "too many voters"));
    }
    let voters_end = SNAPSHOT_HEADER_BYTES + 8 * voter_count;
    if bytes.len() < voters_end {
        return Err(bad(bytes.len(), "file ends inside the voter list"));
    }
    let (learner_count, learners_offset) = if version == SNAPSHOT_VERSION {
        if bytes.len() < voters_end + LEARNER_COUNT_BYTES {
            return Err(bad(bytes.len(), "file ends inside the learner count"));
        }
        let count = u32_at(bytes, voters_end) as usize;
        if count > MAX_LEARNERS {
            return Err(bad(voters_end, "too many learners"));
        }
        if u32_at(bytes, voters_end + 4) != 0 {
            return Err(bad(voters_end + 4, "reserved field after the learner count is not 0"));
        }
        (count, voters_end + LEARNER_COUNT_BYTES)
    } else {
        (0, voters_end)
    };
    let data_offset = learners_offset + 8 * learner_count;
    if bytes.len() < data_offset {
        return Err(bad(bytes.len(), "file ends inside the learner list"));
    }
    if u32_at(bytes, HEADER_CRC_OFFSET) != header_crc(&bytes[..data_offset]) {
        return Err(bad(HEADER_CRC_OFFSET, "snapshot header checksum mismatch"));
    }
    let data_len = u64_at(bytes, DATA_LEN_OFFSET);
    if data_len != (bytes.len() - data_offset) as u64 {
        return Err(bad(bytes.len().min(data_offset), "file length does not match the data length"));
    }
    let data = &bytes[data_offset..];
    if u32_at(bytes, DATA_CRC_OFFSET) != crc32c::crc32c(data) {
        return Err(bad(data_offset, "snapshot data checksum mismatch"));
    }
    let voters = (0..voter_count).map(|i| u64_at(bytes, SNAPSHOT_HEADER_BYTES + 8 * i)).collect();
    let learners = (0..learner_count).map(|i| u64_at(bytes, learners_offset + 8 * i)).collect();
    let meta = SnapshotMeta {
        index: u64_at(bytes, INDEX_OFFSET),
        term: u64_at(bytes, TERM_OFFSET),
        conf: ConfState { voters, learners },
    };
    Ok(SnapshotView { meta, first_segment_seq: u64_at(bytes, FIRST_SEGMENT_OFFSET), data, data_offset })
}

/// A snapshot read back from disk.
#[derive(Clone, Debug)]
pub(crate) struct LoadedSnapshot {
    pub meta: SnapshotMeta,
    pub first_segment_seq: u64,
    pub data: Bytes,
}

fn file_name(index: u64) -> String {
    format!("snapshot-{index:020}.snap")
}

fn temp_name(index: u64) -> String {
    format!("snapshot-{index:020}.tmp")
}

fn is_temp_name(name: &str) -> bool {
    name == TEMP_NAME || (name.starts_with("snapshot-") && name.ends_with(".tmp"))
}

/// A snapshot file written and fsynced under its temporary name: not yet the node's
/// snapshot (a crash now leaves the previous one, and the open removes this file).
#[derive(Debug)]
pub struct WrittenSnapshot {
    path: PathBuf,
    meta: SnapshotMeta,
    data_len: u64,
    data_crc: u32,
}

impl WrittenSnapshot {
    /// Its metadata.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Removes the file: the snapshot will not be adopted.
    pub fn discard(self) {
        if let Err(error) = fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "could not remove an unused snapshot file");
        }
    }
}

/// Writes `data` as the snapshot at `meta` under a temporary name and fsyncs it. Needs
/// no store: the daemon calls it off the disk thread, so writes do not wait for a large
/// snapshot; `adopt` finishes it.
pub fn write_temp(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> Result<WrittenSnapshot, StoreError> {
    let (data_len, data_crc) = (data.len() as u64, crc32c::crc32c(data));
    // The first segment is not known yet: `adopt` rewrites the header.
    let header = encode_header(meta, 0, data_len, data_crc);
    let path = dir.join(temp_name(meta.index));
    let mut file = fs::File::create(&path).map_err(|e| StoreError::io(&path, "create", e))?;
    file.write_all(&header).map_err(|e| StoreError::io(&path, "write", e))?;
    file.write_all(data).map_err(|e| StoreError::io(&path, "write", e))?;
    file.sync_all().map_err(|e| StoreError::io(&path, "fsync", e))?;
    Ok(WrittenSnapshot { path, meta: meta.clone(), data_len, data_crc })
}

/// Makes a written snapshot the node's snapshot (see the module doc), naming
/// `first_segment_seq` as the first log segment that belongs after it.
pub(crate) fn adopt(dir: &Path, written: WrittenSnapshot, first_segment_seq: u64) -> Result<(), StoreError> {
    use std::os::unix::fs::FileExt;
    let WrittenSnapshot { path, meta, data_len, data_crc } = written;
    let header = encode_header(&meta, first_segment_seq, data_len, data_crc);
    let file =
        fs::OpenOptions::new().write(true).open(&path).map_err(|e| StoreError::io(&path, "open", e))?;
    file.write_all_at(&header, 0).map_err(|e| StoreError::io(&path, "write", e))?;
    file.sync_all().map_err(|e| StoreError::io(&path, "fsync", e))?;
    drop(file);
    let target = dir.join(file_name(meta.index));
    fs::rename(&path, &target).map_err(|e| StoreError::io(&target, "rename", e))?;
    sync_dir(dir)?;
    remove_older_than(dir, meta.index)
}

fn parse_file_name(name: &str) -> Option<u64> {
    name.strip_prefix("snapshot-")?.strip_suffix(".snap")?.parse().ok()
}

/// Writes a snapshot durably (see the module doc), then removes older snapshot files.
pub(crate) fn save(
    dir: &Path,
    meta: &SnapshotMeta,
    first_segment_seq: u64,
    data: &[u8],
) -> Result<(), StoreError> {
    let written = write_temp(dir, meta, data)?;
    adopt(dir, written, first_segment_seq)
}

fn remove_older_than(dir: &Path, index: u64) -> Result<(), StoreError> {
    let mut removed = false;
    for (older, path) in list(dir)? {
        if older != index {
            fs::remove_file(&path).map_err(|e| StoreError::io(&path, "remove", e))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(())
}

fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut found = Vec::new();
    for item in fs::read_dir(dir).map_err(|e| StoreError::io(dir, "read directory", e))? {
        let item = item.map_err(|e| StoreError::io(dir, "read directory", e))?;
        if let Some(index) = item.file_name().to_str().and_then(parse_file_name) {
            found.push((index, item.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Loads the newest snapshot, verifying its checksums; removes a leftover temp file and
/// snapshots older than the newest (a crash between rename and cleanup leaves them).
pub(crate) fn load(dir: &Path, warnings: &mut Vec<String>) -> Result<Option<LoadedSnapshot>, StoreError> {
    for temp in temp_files(dir)? {
        let warning = format!("removed unfinished snapshot {}", temp.display());
        tracing::warn!("{warning}");
        warnings.push(warning);
        fs::remove_file(&temp).map_err(|e| StoreError::io(&temp, "remove", e))?;
    }
    let loaded = read_newest(dir)?;
    if let Some(loaded) = &loaded {
        remove_older_than(dir, loaded.meta.index)?;
    }
    Ok(loaded)
}

/// What [`load`] would load, changing nothing: leftovers are only reported.
pub(crate) fn read_only(
    dir: &Path,
    warnings: &mut Vec<String>,
) -> Result<Option<LoadedSnapshot>, StoreError> {
    for temp in temp_files(dir)? {
        warnings.push(format!("unfinished snapshot {} (removed at the next start)", temp.display()));
    }
    let loaded = read_newest(dir)?;
    for (index, path) in list(dir)? {
        if loaded.as_ref().is_some_and(|l| l.meta.index != index) {
            warnings.push(format!("older snapshot {} (removed at the next start)", path.display()));
        }
    }
    Ok(loaded)
}

fn temp_files(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut found = Vec::new();
    for item in fs::read_dir(dir).map_err(|e| StoreError::io(dir, "read directory", e))? {
        let item = item.map_err(|e| StoreError::io(dir, "read directory", e))?;
        if item.file_name().to_str().is_some_and(is_temp_name) {
            found.push(item.path());
        }
    }
    Ok(found)
}

/// The newest snapshot file, read whole and verified.
fn read_newest(dir: &Path) -> Result<Option<LoadedSnapshot>, StoreError> {
    let Some((index, path)) = list(dir)?.pop() else {
        return Ok(None);
    };
    let bytes = fs::read(&path).map_err(|e| StoreError::io(&path, "read", e))?;
    super::data_dir::refuse_legacy_json(&path, &bytes)?;
    StoreError::check_version(
        &path,
        "snapshot",
        &bytes,
        &SNAPSHOT_MAGIC,
        VERSION_OFFSET,
        &[SNAPSHOT_VERSION_WITHOUT_LEARNERS, SNAPSHOT_VERSION],
    )?;
    let view = decode_snapshot(&bytes).map_err(|e| StoreError::corrupt(&path, e.offset, e.reason))?;
    if view.meta.index != index {
        return Err(StoreError::corrupt(&path, INDEX_OFFSET as u64, "index does not match the file name"));
    }
    let (meta, first_segment_seq, data_offset) = (view.meta, view.first_segment_seq, view.data_offset);
    Ok(Some(LoadedSnapshot { meta, first_segment_seq, data: Bytes::from(bytes).slice(data_offset..) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        SnapshotMeta { index: 12, term: 3, conf: ConfState { voters: vec![1, 2, 3], learners: vec![4, 9] } }
    }

    /// A version-1 file, as builds before learners wrote it: header, voters, data.
    fn encode_version_1(meta: &SnapshotMeta, first_segment_seq: u64, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION_WITHOUT_LEARNERS.to_le_bytes());
        out.extend_from_slice(&(meta.conf.voters.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta.index.to_le_bytes());
        out.extend_from_slice(&meta.term.to_le_bytes());
        out.extend_from_slice(&first_segment_seq.to_le_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        for voter in &meta.conf.voters {
            out.extend_from_slice(&voter.to_le_bytes());
        }
        let crc = header_crc(&out);
        out[HEADER_CRC_OFFSET..SNAPSHOT_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn a_version_1_snapshot_decodes_without_learners() {
        let old = SnapshotMeta { conf: ConfState::with_voters(vec![1, 2, 3]), ..meta() };
        let bytes = encode_version_1(&old, 5, b"state");
        let view = decode_snapshot(&bytes).unwrap();
        assert_eq!((view.meta, view.first_segment_seq, view.data), (old, 5, &b"state"[..]));
        for len in 0..bytes.len() {
            assert!(decode_snapshot(&bytes[..len]).is_err(), "truncation to {len} not detected");
        }
    }

    #[test]
    fn learners_are_covered_by_the_header_checksum() {
        let bytes = encode_snapshot(&meta(), 1, b"data");
        let learners_at = SNAPSHOT_HEADER_BYTES + 8 * 3 + LEARNER_COUNT_BYTES;
        let mut forged = bytes.clone();
        forged[learners_at] ^= 1; // learner 4 becomes 5
        assert_eq!(decode_snapshot(&forged).unwrap_err().offset, HEADER_CRC_OFFSET as u64);
    }

    #[test]
    fn snapshot_round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &meta(), 4, b"state machine").unwrap();
        let loaded = load(dir.path(), &mut Vec::new()).unwrap().unwrap();
        assert_eq!(
            (loaded.meta, loaded.first_segment_seq, &loaded.data[..]),
            (meta(), 4, &b"state machine"[..])
        );
    }

    #[test]
    fn newer_snapshot_replaces_older_only_after_it_is_in_place() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &meta(), 1, b"old").unwrap();
        let newer = SnapshotMeta { index: 20, ..meta() };
        save(dir.path(), &newer, 1, b"new").unwrap();
        assert_eq!(list(dir.path()).unwrap().len(), 1);
        assert_eq!(&load(dir.path(), &mut Vec::new()).unwrap().unwrap().data[..], b"new");
    }

    #[test]
    fn a_snapshot_written_but_not_adopted_is_not_loaded_and_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &meta(), 1, b"adopted").unwrap();
        let newer = SnapshotMeta { index: 20, ..meta() };
        let written = write_temp(dir.path(), &newer, b"written only").unwrap();
        drop(written); // a crash before `adopt`
        let mut warnings = Vec::new();
        let loaded = load(dir.path(), &mut warnings).unwrap().unwrap();
        assert_eq!((loaded.meta.index, &loaded.data[..]), (12, &b"adopted"[..]));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(!dir.path().join(temp_name(20)).exists());
    }

    #[test]
    fn an_adopted_snapshot_names_the_first_segment_given_at_adoption() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_temp(dir.path(), &meta(), b"state").unwrap();
        adopt(dir.path(), written, 7).unwrap();
        let loaded = load(dir.path(), &mut Vec::new()).unwrap().unwrap();
        assert_eq!((loaded.meta, loaded.first_segment_seq, &loaded.data[..]), (meta(), 7, &b"state"[..]));
    }

    #[test]
    fn every_truncation_and_bit_flip_of_a_snapshot_is_detected() {
        let bytes = encode_snapshot(&meta(), 1, b"0123456789");
        for len in 0..bytes.len() {
            assert!(decode_snapshot(&bytes[..len]).is_err(), "truncation to {len} not detected");
        }
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_snapshot(&flipped).is_err(), "flip of bit {bit} not detected");
        }
    }

    #[test]
    fn corrupt_snapshot_file_fails_load_naming_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &meta(), 1, b"state").unwrap();
        let path = dir.path().join(file_name(12));
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        match load(dir.path(), &mut Vec::new()) {
            Err(StoreError::Corrupt { path: p, offset, .. }) => {
                assert_eq!(p, path);
                assert_eq!(offset, (SNAPSHOT_HEADER_BYTES + 24 + LEARNER_COUNT_BYTES + 16) as u64);
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
}
