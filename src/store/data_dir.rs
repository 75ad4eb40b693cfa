//! The data directory: one node's files, the exclusive lock that makes this process their
//! only user, the node's identity, and the refusal of the original's JSON files.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::error::StoreError;
use super::mapped::sync_dir;
use super::record::{u32_at, u64_at};
use crate::byte_reader::ByteReader;
use crate::raft::{ConfState, NodeId};

/// The lock file's name. Holding an exclusive `flock` on it is what entitles a process to
/// touch the other files (see `mapped`'s module doc).
pub const LOCK_FILE_NAME: &str = "LOCK";
/// The identity file's name.
pub const IDENTITY_FILE_NAME: &str = "identity";
/// First bytes of the identity file.
pub const IDENTITY_MAGIC: [u8; 8] = *b"MMAPDIDN";
/// Identity file format version.
pub const IDENTITY_VERSION: u32 = 1;
/// Size of the identity file.
pub const IDENTITY_BYTES: usize = 32;
const IDENTITY_CRC_OFFSET: usize = 12;
const IDENTITY_CLUSTER_OFFSET: usize = 16;
const IDENTITY_NODE_OFFSET: usize = 24;
const _: () = assert!(IDENTITY_NODE_OFFSET + 8 == IDENTITY_BYTES);

/// The origin file's name: how the node's log begins (see `Origin`).
pub const ORIGIN_FILE_NAME: &str = "origin";
/// First bytes of the origin file.
pub const ORIGIN_MAGIC: [u8; 8] = *b"MMAPDORG";
/// Origin file format version.
pub const ORIGIN_VERSION: u32 = 1;
/// The most members an origin file lists: far above any real cluster, it bounds what
/// a damaged count may make us allocate.
const MAX_ORIGIN_MEMBERS: usize = 4096;
/// The marker a node leaves when a committed configuration removed it.
pub const REMOVED_FILE_NAME: &str = "REMOVED";

/// How the log of a data directory begins, written once, before the identity, when the
/// node first starts: from `--peers` (the bootstrap configuration) or by joining (the
/// leader's configuration at its log start). Restarts build the Raft core's base
/// configuration from it, never from flags that may have changed since (`--peers` and
/// config.json only bootstrap). Data directories from before it have none: they use
/// `--peers`, as they did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The node joined an existing cluster (else it was bootstrapped from `--peers`).
    pub joined: bool,
    /// The configuration the log starts from (before the first entry).
    pub base: ConfState,
    /// Every member's id and address as known then.
    pub members: Vec<(NodeId, String)>,
}

/// How many leading bytes are examined to recognise a legacy JSON file.
const LEGACY_SNIFF_BYTES: usize = 4096;

/// Which cluster and node a data directory belongs to, written at first start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The cluster's id, the same on every member.
    pub cluster_id: u64,
    /// This node's id. Never 0.
    pub node_id: NodeId,
}

/// An open, locked data directory: exclusively (`open`), or shared to read it (`open_shared`).
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Held for the lifetime of the `DataDir`; dropping it releases the lock.
    _lock: Flock<File>,
    /// The lock is exclusive (this process may write), not shared (`open_shared`: read only).
    exclusive: bool,
}

impl DataDir {
    /// Opens (creating if missing) and locks `path`. A second opener, in this or another
    /// process, gets [`StoreError::Locked`]; a legacy JSON file at `path` gets
    /// [`StoreError::LegacyFormat`].
    pub fn open(path: &Path) -> Result<DataDir, StoreError> {
        if path.is_file() {
            if detect_legacy_json(path)? {
                return Err(StoreError::LegacyFormat { path: path.to_path_buf() });
            }
            let error = std::io::Error::from(Errno::ENOTDIR);
            return Err(StoreError::io(path, "open data directory", error));
        }
        fs::create_dir_all(path).map_err(|e| StoreError::io(path, "create directory", e))?;
        let lock_path = path.join(LOCK_FILE_NAME);
        let (lock_file, created) = match OpenOptions::new().write(true).create_new(true).open(&lock_path) {
            Ok(file) => (file, true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let file = OpenOptions::new().write(true).open(&lock_path);
                (file.map_err(|e| StoreError::io(&lock_path, "open", e))?, false)
            }
            Err(e) => return Err(StoreError::io(&lock_path, "create", e)),
        };
        let lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => return Err(StoreError::Locked { dir: path.to_path_buf() }),
            Err((_, errno)) => return Err(StoreError::errno(&lock_path, "flock", errno)),
        };
        if created {
            sync_dir(path)?;
        }
        Ok(DataDir { path: path.to_path_buf(), _lock: lock, exclusive: true })
    }

    /// Opens `path` to read it, changing nothing (`Store::read_only`): takes a shared lock
    /// on its `LOCK` file, so that no mmapd can start on it meanwhile and none is running
    /// ([`StoreError::Locked`] otherwise), and creates nothing. A directory without `LOCK`
    /// was never opened by mmapd and is refused.
    pub fn open_shared(path: &Path) -> Result<DataDir, StoreError> {
        if path.is_file() && detect_legacy_json(path)? {
            return Err(StoreError::LegacyFormat { path: path.to_path_buf() });
        }
        let lock_path = path.join(LOCK_FILE_NAME);
        let lock_file = File::open(&lock_path).map_err(|e| StoreError::io(&lock_path, "open", e))?;
        let lock = match Flock::lock(lock_file, FlockArg::LockSharedNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => return Err(StoreError::Locked { dir: path.to_path_buf() }),
            Err((_, errno)) => return Err(StoreError::errno(&lock_path, "flock", errno)),
        };
        Ok(DataDir { path: path.to_path_buf(), _lock: lock, exclusive: false })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The identity written at first start, or `None` for a directory that never had one
    /// (a new, empty node: RAFT-NOTES #18, the daemon must not join as a voter with it).
    pub fn identity(&self) -> Result<Option<Identity>, StoreError> {
        let path = self.path.join(IDENTITY_FILE_NAME);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&path, "read", e)),
        };
        refuse_legacy_json(&path, &bytes)?;
        StoreError::check_version(&path, "identity", &bytes, &IDENTITY_MAGIC, 8, &[IDENTITY_VERSION])?;
        decode_identity(&bytes)
            .map(Some)
            .map_err(|(offset, reason)| StoreError::corrupt(&path, offset, reason))
    }

    /// Records the identity durably. Writing the same identity again is a no-op; a
    /// different one is refused with [`StoreError::IdentityMismatch`].
    pub fn write_identity(&self, identity: Identity) -> Result<(), StoreError> {
        assert!(identity.node_id != 0, "node id 0 is reserved");
        if let Some(existing) = self.identity()? {
            if existing == identity {
                return Ok(());
            }
            let reason = format!("directory holds {existing:?}, asked to write {identity:?}");
            return Err(StoreError::IdentityMismatch { dir: self.path.clone(), reason });
        }
        self.write_file(IDENTITY_FILE_NAME, &encode_identity(identity))
    }

    /// Records a new identity durably, whatever the directory held: only for a data
    /// directory made into a new cluster offline (`mmapd-admin force-new-cluster`),
    /// never by a running node.
    pub fn replace_identity(&self, identity: Identity) -> Result<(), StoreError> {
        assert!(identity.node_id != 0, "node id 0 is reserved");
        self.write_file(IDENTITY_FILE_NAME, &encode_identity(identity))
    }
}

impl DataDir {
    /// The origin written at first start, or `None` (a new directory, or one from before
    /// origins were written). Damage is refused naming the file and offset.
    pub fn origin(&self) -> Result<Option<Origin>, StoreError> {
        let path = self.path.join(ORIGIN_FILE_NAME);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&path, "read", e)),
        };
        StoreError::check_version(&path, "origin", &bytes, &ORIGIN_MAGIC, 8, &[ORIGIN_VERSION])?;
        decode_origin(&bytes).map(Some).map_err(|(offset, reason)| StoreError::corrupt(&path, offset, reason))
    }

    /// Records the origin durably (temporary file, fsync, rename, fsync of the
    /// directory). Written once, before the identity.
    pub fn write_origin(&self, origin: &Origin) -> Result<(), StoreError> {
        self.write_file(ORIGIN_FILE_NAME, &encode_origin(origin))
    }

    /// The removal marker's text, if a committed configuration removed this node.
    pub fn removed(&self) -> Result<Option<String>, StoreError> {
        let path = self.path.join(REMOVED_FILE_NAME);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(&path, "read", e)),
        }
    }

    /// Leaves the removal marker, durably: the node refuses to start from here again.
    pub fn mark_removed(&self, text: &str) -> Result<(), StoreError> {
        self.write_file(REMOVED_FILE_NAME, format!("{text}\n").as_bytes())
    }

    /// Panics on a directory opened read-only (`open_shared`): a bug in the caller.
    fn write_file(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        assert!(
            self.exclusive,
            "{}: writing {name} in a data directory opened read-only",
            self.path.display()
        );
        write_durably(&self.path, name, bytes)
    }
}

/// Leaves the removal marker in the data directory `dir` (whose lock this process
/// holds), durably.
pub fn mark_removed(dir: &Path, text: &str) -> Result<(), StoreError> {
    write_durably(dir, REMOVED_FILE_NAME, format!("{text}\n").as_bytes())
}

/// Writes `dir/name` through a temporary file, fsync, rename and an fsync of `dir`.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let temp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&temp).map_err(|e| StoreError::io(&temp, "create", e))?;
    file.write_all(bytes).map_err(|e| StoreError::io(&temp, "write", e))?;
    file.sync_all().map_err(|e| StoreError::io(&temp, "fsync", e))?;
    let path = dir.join(name);
    fs::rename(&temp, &path).map_err(|e| StoreError::io(&path, "rename", e))?;
    sync_dir(dir)
}

/// The origin file: magic, u32 version, u32 CRC-32C of what follows, u8 flags (bit 0:
/// joined), u32 voter count and u64 ids, u32 learner count and u64 ids, u32 member
/// count and per member u64 id, u32 address length and UTF-8 bytes.
fn encode_origin(origin: &Origin) -> Vec<u8> {
    let mut body = Vec::new();
    body.push(u8::from(origin.joined));
    for ids in [&origin.base.voters, &origin.base.learners] {
        body.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        for id in ids {
            body.extend_from_slice(&id.to_le_bytes());
        }
    }
    body.extend_from_slice(&(origin.members.len() as u32).to_le_bytes());
    for (id, address) in &origin.members {
        body.extend_from_slice(&id.to_le_bytes());
        body.extend_from_slice(&(address.len() as u32).to_le_bytes());
        body.extend_from_slice(address.as_bytes());
    }
    let mut bytes = Vec::with_capacity(16 + body.len());
    bytes.extend_from_slice(&ORIGIN_MAGIC);
    bytes.extend_from_slice(&ORIGIN_VERSION.to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

fn decode_origin(bytes: &[u8]) -> Result<Origin, (u64, &'static str)> {
    let truncated = |t: crate::byte_reader::Truncated| (t.offset as u64, "origin file is truncated");
    if bytes.len() < 16 {
        return Err((bytes.len() as u64, "origin file is truncated"));
    }
    if bytes[..8] != ORIGIN_MAGIC {
        return Err((0, "bad origin magic"));
    }
    if u32_at(bytes, 8) != ORIGIN_VERSION {
        return Err((8, "unsupported origin version"));
    }
    if u32_at(bytes, 12) != crc32c::crc32c(&bytes[16..]) {
        return Err((12, "origin checksum mismatch"));
    }
    let mut reader = ByteReader::new(bytes);
    reader.bytes(16).map_err(truncated)?;
    let joined = reader.u8().map_err(truncated)? & 1 == 1;
    let mut lists = [Vec::new(), Vec::new()];
    for list in &mut lists {
        let offset = reader.offset() as u64;
        let count = reader.u32().map_err(truncated)? as usize;
        if count > MAX_ORIGIN_MEMBERS || count > reader.remaining() / 8 {
            return Err((offset, "origin member count too large"));
        }
        for _ in 0..count {
            list.push(reader.u64().map_err(truncated)?);
        }
    }
    let [voters, learners] = lists;
    let base = ConfState { voters, learners };
    let offset = reader.offset() as u64;
    if let Some(reason) = base.invalid_reason() {
        return Err((offset, reason));
    }
    let count = reader.u32().map_err(truncated)? as usize;
    if count > MAX_ORIGIN_MEMBERS || count > reader.remaining() / 12 {
        return Err((offset, "origin member count too large"));
    }
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        let offset = reader.offset() as u64;
        let id = reader.u64().map_err(truncated)?;
        let len = reader.u32().map_err(truncated)?;
        let address = reader.bytes(len.into()).map_err(truncated)?;
        let address = std::str::from_utf8(address).map_err(|_| (offset, "member address is not UTF-8"))?;
        members.push((id, address.to_owned()));
    }
    if reader.remaining() != 0 {
        return Err((reader.offset() as u64, "trailing bytes in the origin file"));
    }
    Ok(Origin { joined, base, members })
}

fn identity_crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&bytes[..IDENTITY_CRC_OFFSET]), &bytes[IDENTITY_CLUSTER_OFFSET..])
}

fn encode_identity(identity: Identity) -> [u8; IDENTITY_BYTES] {
    let mut bytes = [0; IDENTITY_BYTES];
    bytes[..8].copy_from_slice(&IDENTITY_MAGIC);
    bytes[8..12].copy_from_slice(&IDENTITY_VERSION.to_le_bytes());
    bytes[IDENTITY_CLUSTER_OFFSET..IDENTITY_NODE_OFFSET].copy_from_slice(&identity.cluster_id.to_le_bytes());
    bytes[IDENTITY_NODE_OFFSET..].copy_from_slice(&identity.node_id.to_le_bytes());
    let crc = identity_crc(&bytes);
    bytes[IDENTITY_CRC_OFFSET..IDENTITY_CLUSTER_OFFSET].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(decode_identity(&bytes), Ok(identity));
    bytes
}

fn decode_identity(bytes: &[u8]) -> Result<Identity, (u64, &'static str)> {
    if bytes.len() != IDENTITY_BYTES {
        return Err((bytes.len().min(IDENTITY_BYTES) as u64, "identity file has the wrong length"));
    }
    if bytes[..8] != IDENTITY_MAGIC {
        return Err((0, "bad identity magic"));
    }
    if u32_at(bytes, 8) != IDENTITY_VERSION {
        return Err((8, "unsupported identity version"));
    }
    if u32_at(bytes, IDENTITY_CRC_OFFSET) != identity_crc(bytes) {
        return Err((IDENTITY_CRC_OFFSET as u64, "identity checksum mismatch"));
    }
    Ok(Identity {
        cluster_id: u64_at(bytes, IDENTITY_CLUSTER_OFFSET),
        node_id: u64_at(bytes, IDENTITY_NODE_OFFSET),
    })
}

/// Whether `bytes` look like the original mmapd's JSON files (`-db FILE`, `-log FILE`):
/// the first byte after ASCII whitespace is `{` or `[`.
pub fn looks_like_legacy_json(bytes: &[u8]) -> bool {
    let sniffed = &bytes[..bytes.len().min(LEGACY_SNIFF_BYTES)];
    matches!(sniffed.iter().find(|b| !b.is_ascii_whitespace()), Some(b'{' | b'['))
}

/// Whether the file at `path` is in the original mmapd's JSON format.
pub fn detect_legacy_json(path: &Path) -> Result<bool, StoreError> {
    let mut file = File::open(path).map_err(|e| StoreError::io(path, "open", e))?;
    let mut head = Vec::with_capacity(LEGACY_SNIFF_BYTES);
    Read::by_ref(&mut file)
        .take(LEGACY_SNIFF_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(|e| StoreError::io(path, "read", e))?;
    Ok(looks_like_legacy_json(&head))
}

/// Fails with [`StoreError::LegacyFormat`] if `bytes` (the start of `path`) look like JSON.
pub(crate) fn refuse_legacy_json(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    if looks_like_legacy_json(bytes) {
        return Err(StoreError::LegacyFormat { path: path.to_path_buf() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_opener_of_a_directory_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let _first = DataDir::open(dir.path()).unwrap();
        match DataDir::open(dir.path()) {
            Err(error @ StoreError::Locked { .. }) => {
                assert!(error.to_string().contains(&dir.path().display().to_string()))
            }
            other => panic!("expected Locked, got {other:?}"),
        }
    }

    #[test]
    fn lock_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        drop(DataDir::open(dir.path()).unwrap());
        DataDir::open(dir.path()).unwrap();
    }

    #[test]
    fn identity_is_absent_then_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open(dir.path()).unwrap();
        assert_eq!(data_dir.identity().unwrap(), None);
        let identity = Identity { cluster_id: 77, node_id: 2 };
        data_dir.write_identity(identity).unwrap();
        data_dir.write_identity(identity).unwrap();
        assert_eq!(data_dir.identity().unwrap(), Some(identity));
        let other = Identity { cluster_id: 78, node_id: 2 };
        assert!(matches!(data_dir.write_identity(other), Err(StoreError::IdentityMismatch { .. })));
    }

    #[test]
    fn the_origin_round_trips_and_damage_is_refused_naming_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open(dir.path()).unwrap();
        assert_eq!(data_dir.origin().unwrap(), None);
        let origin = Origin {
            joined: true,
            base: ConfState { voters: vec![1, 2, 3], learners: vec![9] },
            members: vec![(1, "a:1".into()), (2, "b:1".into()), (3, "c:1".into()), (9, "d:1".into())],
        };
        data_dir.write_origin(&origin).unwrap();
        assert_eq!(data_dir.origin().unwrap(), Some(origin.clone()));
        let bytes = encode_origin(&origin);
        for len in 0..bytes.len() {
            assert!(decode_origin(&bytes[..len]).is_err(), "truncated to {len}");
        }
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert_eq!(decode_origin(&flipped).unwrap_err(), (12, "origin checksum mismatch"));
        fs::write(dir.path().join(ORIGIN_FILE_NAME), &flipped).unwrap();
        let error = data_dir.origin().unwrap_err().to_string();
        assert!(error.contains("origin") && error.contains("12"), "{error}");
    }

    #[test]
    fn the_removal_marker_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open(dir.path()).unwrap();
        assert_eq!(data_dir.removed().unwrap(), None);
        data_dir.mark_removed("node 00000000000000aa removed from cluster 00000000000000bb").unwrap();
        drop(data_dir);
        let data_dir = DataDir::open(dir.path()).unwrap();
        assert!(data_dir.removed().unwrap().unwrap().contains("00000000000000aa"));
    }

    #[test]
    fn legacy_json_is_recognised() {
        assert!(looks_like_legacy_json(b"  \n{\"key\": \"value\"}"));
        assert!(looks_like_legacy_json(b"[]"));
        assert!(!looks_like_legacy_json(b"MMAPDSEG"));
        assert!(!looks_like_legacy_json(b""));
    }

    #[test]
    fn legacy_db_file_given_as_data_dir_is_refused_with_import_hint() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.json");
        fs::write(&db, b"{\"a\":\"1\"}").unwrap();
        let error = DataDir::open(&db).unwrap_err();
        assert!(matches!(error, StoreError::LegacyFormat { .. }));
        assert!(error.to_string().contains("mmapd-admin import FILE"));
    }
}
