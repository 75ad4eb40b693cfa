//! A snapshot arriving from the leader in chunks (`server::peer::snapshot`): appended to
//! a private file in the data directory as the chunks come, then mapped read-only and
//! handed over whole, so neither side holds a chunk more than once in memory and no
//! request carries more than one chunk.
//!
//! The file is `snapshot-incoming-<index, 20 digits>-<n>.tmp`: a temporary name, so a
//! crash mid-transfer leaves a file the next open removes (`snapshot::load`). It is not
//! made durable: the installed snapshot is written again, durably, by the store
//! (`Store::install_snapshot`); this file only stages the bytes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::error::StoreError;

/// Tells files of the same index apart within one process's life.
static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// A snapshot being received: its staging file and the bytes written to it.
///
/// Invariant: `written` is the file's length; the file is removed when this is dropped
/// unless `finish` mapped it (and then removed its name).
#[derive(Debug)]
pub struct IncomingSnapshot {
    path: PathBuf,
    /// None once `finish` took it.
    file: Option<File>,
    written: u64,
}

impl IncomingSnapshot {
    /// Creates an empty staging file for the snapshot at `index` in `dir`, readable by
    /// this user only.
    pub fn create(dir: &Path, index: u64) -> Result<IncomingSnapshot, StoreError> {
        let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("snapshot-incoming-{index:020}-{n}.tmp"));
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| StoreError::io(&path, "create", e))?;
        Ok(IncomingSnapshot { path, file: Some(file), written: 0 })
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The staging file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `bytes` at the end. On an error the file's length is unknown: drop it.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let file = self.file.as_mut().expect("append after finish");
        file.write_all(bytes).map_err(|e| StoreError::io(&self.path, "write", e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Maps the whole file read-only and removes its name: the bytes stay readable as
    /// long as the returned `Bytes` (and slices of it) live, and the disk space is freed
    /// when the last is dropped.
    pub fn finish(mut self) -> Result<Bytes, StoreError> {
        let file = self.file.take().expect("finish twice");
        let mapped = super::mapped::map_read_only(&self.path, &file);
        // Removed whether or not the mapping worked (Drop would too).
        let _ = std::fs::remove_file(&self.path);
        let mapped = mapped?;
        if mapped.len() as u64 != self.written {
            return Err(StoreError::corrupt(
                &self.path,
                mapped.len() as u64,
                format!("the staging file holds {} bytes, {} were written", mapped.len(), self.written),
            ));
        }
        Ok(mapped)
    }
}

impl Drop for IncomingSnapshot {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn chunks_appended_come_back_whole_from_the_mapping_and_the_name_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let mut incoming = IncomingSnapshot::create(dir.path(), 42).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(4096) {
            incoming.append(chunk).unwrap();
        }
        assert_eq!(incoming.written(), data.len() as u64);
        let name = incoming.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("snapshot-incoming-00000000000000000042-") && name.ends_with(".tmp"),
            "{name}"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(incoming.path()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "the staging file is private");
        let mapped = incoming.finish().unwrap();
        assert_eq!(&mapped[..], &data[..]);
        assert!(files(dir.path()).is_empty(), "the name is removed once mapped: {:?}", files(dir.path()));
        // Slices outlive the whole.
        let tail = mapped.slice(90_000..);
        drop(mapped);
        assert_eq!(&tail[..], &data[90_000..]);
    }

    #[test]
    fn an_abandoned_transfer_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut incoming = IncomingSnapshot::create(dir.path(), 7).unwrap();
        incoming.append(b"half a snapshot").unwrap();
        assert_eq!(files(dir.path()).len(), 1);
        drop(incoming);
        assert!(files(dir.path()).is_empty());
    }

    #[test]
    fn an_empty_transfer_maps_to_empty_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let incoming = IncomingSnapshot::create(dir.path(), 1).unwrap();
        assert!(incoming.finish().unwrap().is_empty());
    }

    #[test]
    fn the_next_open_removes_a_transfer_cut_by_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let mut incoming = IncomingSnapshot::create(dir.path(), 9).unwrap();
        incoming.append(b"cut").unwrap();
        std::mem::forget(incoming); // a crash: no Drop
        let mut warnings = Vec::new();
        assert!(super::super::snapshot::load(dir.path(), &mut warnings).unwrap().is_none());
        assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }
}
