//! A file mapped into memory, grown in large steps, made durable range by range.
//!
//! This module holds every `unsafe` block of mmapd. Each has a `// SAFETY:` comment.
//!
//! # Who may touch the files
//!
//! Only the one process that holds the exclusive lock on the data directory (see
//! `data_dir`) may open, write, truncate, rename or delete the files under it, and in that
//! process only through this module. The lock is advisory (`flock`): it keeps out a second
//! mmapd, not a person or a program that ignores it.
//!
//! **If anyone else changes a mapped file while we run, the behaviour is undefined**: Rust
//! assumes the bytes behind a `&[u8]` do not change underneath it, and a mapped file can
//! change when another process writes it. Concretely one may see torn or changing records,
//! checksums that passed and then no longer hold, or a `SIGBUS` that kills the daemon if
//! the file is truncated under us. Editing, copying over, or truncating a store file of a
//! running node is not supported. Stop the node first; the checksums will then catch most
//! damage at the next start (see `docs/format.md`, "Recovery").
//!
//! # Durability
//!
//! Writes go to the shared mapping, i.e. the page cache; nothing is durable until
//! [`MappedFile::sync`] has run `msync(MS_SYNC)` over the dirty range. The file size is made
//! durable with `fsync` after each size change, and a new file's directory entry with an
//! `fsync` of the directory ([`sync_dir`]). Growing also reserves the blocks
//! (`posix_fallocate`) so that a full disk is an `ENOSPC` from [`MappedFile::grow`], not a
//! `SIGBUS` on a later store to an unbacked page of a sparse file.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::OnceLock;

use memmap2::{MmapMut, MmapOptions, RemapOptions};
use nix::sys::mman::{msync, MsFlags};

use super::error::StoreError;

/// A read-write shared mapping of a whole file.
///
/// Invariant: `map.len() == file length` as far as this process knows, and
/// `dirty` (if any) lies within `0..map.len()`.
pub(crate) struct MappedFile {
    path: PathBuf,
    file: File,
    map: MmapMut,
    /// The bytes written since the last successful `sync`, as one covering range.
    dirty: Option<Range<usize>>,
}

/// What one [`MappedFile::sync`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RangeSync {
    /// Bytes handed to `msync` (page aligned).
    pub bytes: u64,
    /// `msync` calls made: 0 or 1.
    pub msync_calls: u32,
}

impl MappedFile {
    /// Creates `path` with `len_bytes` bytes starting with `header`, atomically: the file is
    /// built as `<path>.tmp` (sized, header written and msynced, fsynced), then renamed into
    /// place and the directory fsynced. So a file under its final name always has its header.
    pub(crate) fn create_with_header(
        path: &Path,
        len_bytes: u64,
        header: &[u8],
    ) -> Result<MappedFile, StoreError> {
        let mut temp_name = path.as_os_str().to_owned();
        temp_name.push(".tmp");
        let temp = PathBuf::from(temp_name);
        match std::fs::remove_file(&temp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::io(&temp, "remove", e))
            }
            _ => {}
        }
        let mut file = MappedFile::create(&temp, len_bytes)?;
        file.write(0, header);
        file.sync()?;
        std::fs::rename(&temp, path).map_err(|e| StoreError::io(path, "rename", e))?;
        file.path = path.to_path_buf();
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
        Ok(file)
    }

    /// Creates `path` (which must not exist) with `len_bytes` zero bytes, fsynced, and maps it.
    fn create(path: &Path, len_bytes: u64) -> Result<MappedFile, StoreError> {
        assert!(len_bytes > 0, "mapped files are never empty: {}", path.display());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| StoreError::io(path, "create", e))?;
        let grown = reserve(path, &file, 0, len_bytes);
        if let Err(error) = grown {
            let _ = std::fs::remove_file(path);
            return Err(error);
        }
        file.sync_all().map_err(|e| StoreError::io(path, "fsync", e))?;
        MappedFile::map(path, file)
    }

    /// Opens and maps an existing file. The caller checks its content.
    pub(crate) fn open(path: &Path) -> Result<MappedFile, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::io(path, "open", e))?;
        MappedFile::map(path, file)
    }

    fn map(path: &Path, file: File) -> Result<MappedFile, StoreError> {
        // SAFETY: the data directory lock (module doc) makes this process the only writer of
        // the file, and this `MappedFile` the only mapping of it in the process; the file is
        // not truncated while mapped except through `grow`, which remaps.
        let map =
            unsafe { MmapOptions::new().map_mut(&file) }.map_err(|e| StoreError::io(path, "mmap", e))?;
        Ok(MappedFile { path: path.to_path_buf(), file, map, dirty: None })
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The mapped length in bytes (the file size).
    pub(crate) fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// The mapped bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Copies `data` to `offset`. Not durable until [`MappedFile::sync`].
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) {
        let start = offset as usize;
        let end = start + data.len();
        assert!(
            end <= self.map.len(),
            "write past the end of {}: {end} > {}",
            self.path.display(),
            self.map.len()
        );
        self.map[start..end].copy_from_slice(data);
        self.mark_dirty(start..end);
    }

    /// Zeroes `range`. Not durable until [`MappedFile::sync`].
    pub(crate) fn zero(&mut self, range: Range<u64>) {
        let range = range.start as usize..range.end as usize;
        assert!(range.end <= self.map.len(), "zero past the end of {}", self.path.display());
        self.map[range.clone()].fill(0);
        self.mark_dirty(range);
    }

    /// Marks `range` as needing a sync (e.g. bytes found on disk after a restart, which a
    /// killed process may have left only in the page cache).
    pub(crate) fn mark_dirty(&mut self, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        self.dirty = Some(match self.dirty.take() {
            None => range,
            Some(dirty) => dirty.start.min(range.start)..dirty.end.max(range.end),
        });
    }

    /// The range written since the last sync, if any (used by the crash simulation).
    pub(crate) fn unsynced_range(&self) -> Option<Range<u64>> {
        self.dirty.as_ref().map(|r| r.start as u64..r.end as u64)
    }

    /// Grows the file to `new_len_bytes` (ftruncate, reserve blocks, fsync) and remaps it.
    /// On failure the file keeps its old length and content.
    pub(crate) fn grow(&mut self, new_len_bytes: u64) -> Result<(), StoreError> {
        let old_len = self.len();
        assert!(
            new_len_bytes > old_len,
            "grow must grow {}: {new_len_bytes} <= {old_len}",
            self.path.display()
        );
        reserve(&self.path, &self.file, old_len, new_len_bytes)?;
        self.file.sync_all().map_err(|e| StoreError::io(&self.path, "fsync", e))?;
        // SAFETY: the file is now `new_len_bytes` long, so every page of the new mapping is
        // backed; `&mut self` guarantees no slice of the old mapping is alive; the mapping is
        // MAP_SHARED, so dirty pages stay in the page cache and are neither copied nor lost.
        unsafe { self.map.remap(new_len_bytes as usize, RemapOptions::new().may_move(true)) }
            .map_err(|e| StoreError::io(&self.path, "mremap", e))?;
        Ok(())
    }

    /// Makes the dirty range durable with one `msync(MS_SYNC)` over its pages.
    pub(crate) fn sync(&mut self) -> Result<RangeSync, StoreError> {
        let Some(dirty) = self.dirty.clone() else {
            return Ok(RangeSync::default());
        };
        let page = page_size();
        let start = dirty.start / page * page;
        let end = dirty.end.div_ceil(page).saturating_mul(page).min(self.map.len());
        assert!(
            start < end && end <= self.map.len(),
            "msync range out of the map of {}",
            self.path.display()
        );
        #[cfg(test)]
        if fault::msync_fails() {
            return Err(StoreError::errno(&self.path, "msync", nix::errno::Errno::EIO));
        }
        let base = NonNull::new(self.map.as_mut_ptr()).expect("a non-empty mapping has a non-null address");
        // SAFETY: `start` is page aligned and `start..end` lies inside our live mapping, so
        // the address range is mapped for the whole call; msync does not write to memory.
        let address = unsafe { base.add(start) }.cast();
        // SAFETY: as above; `end - start` bytes from `address` are within the mapping.
        unsafe { msync(address, end - start, MsFlags::MS_SYNC) }
            .map_err(|e| StoreError::errno(&self.path, "msync", e))?;
        self.dirty = None;
        Ok(RangeSync { bytes: (end - start) as u64, msync_calls: 1 })
    }
}

/// Maps the whole of `file` (at `path`, for errors) read-only and private, as `Bytes`
/// that keep the mapping alive: a received snapshot served from its file instead of
/// from memory (`incoming`). An empty file is empty `Bytes` (mmap refuses length 0).
///
/// The caller must never write to or truncate the file again; it may unlink it (the
/// mapping keeps the inode).
pub(crate) fn map_read_only(path: &Path, file: &File) -> Result<bytes::Bytes, StoreError> {
    let len = file.metadata().map_err(|e| StoreError::io(path, "stat", e))?.len();
    if len == 0 {
        return Ok(bytes::Bytes::new());
    }
    // SAFETY: the file is one this process created under the data directory's lock and
    // wrote whole before this call (`IncomingSnapshot::finish`); nothing in mmapd writes
    // to or truncates it afterwards, so the mapped bytes do not change while any `Bytes`
    // of them lives. Another program truncating it would SIGBUS us, as for every store
    // file (module docs: "Who may touch the files").
    let map = unsafe { MmapOptions::new().map_copy_read_only(file) }
        .map_err(|e| StoreError::io(path, "mmap", e))?;
    Ok(bytes::Bytes::from_owner(map))
}

/// Gives the calling thread the least CPU priority (nice 19), for a thread that only
/// serialises a snapshot: on a busy machine the node's loop, its disk thread and its
/// peers' come first. On Linux the nice value belongs to the thread (NPTL), so the rest
/// of the process keeps its own; the thread cannot raise it again without
/// `CAP_SYS_NICE`, so only a thread that exits afterwards should call this. Under the
/// packaged unit `SystemCallFilter=~@resources` refuses it (EPERM): the thread keeps its
/// priority there, and the caller only logs it.
pub fn lower_thread_priority() -> std::io::Result<()> {
    // SAFETY: setpriority takes integers only and touches no memory of ours; `who` 0
    // with PRIO_PROCESS names the calling thread.
    let result = unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, 19) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sets the file length to `new_len` and reserves its blocks; on failure restores `old_len`.
fn reserve(path: &Path, file: &File, old_len: u64, new_len: u64) -> Result<(), StoreError> {
    #[cfg(test)]
    if let Some(errno) = fault::take_grow_failure() {
        return Err(StoreError::errno(path, "ftruncate", errno));
    }
    nix::unistd::ftruncate(file, new_len as i64).map_err(|e| StoreError::errno(path, "ftruncate", e))?;
    let reserved = nix::fcntl::posix_fallocate(file.as_raw_fd(), old_len as i64, (new_len - old_len) as i64);
    if let Err(errno) = reserved {
        let _ = nix::unistd::ftruncate(file, old_len as i64);
        return Err(StoreError::errno(path, "posix_fallocate", errno));
    }
    Ok(())
}

/// Makes directory entries created, renamed or removed in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let handle = File::open(dir).map_err(|e| StoreError::io(dir, "open directory", e))?;
    handle.sync_all().map_err(|e| StoreError::io(dir, "fsync directory", e))
}

/// The system page size, read once.
pub(crate) fn page_size() -> usize {
    static PAGE_SIZE: OnceLock<usize> = OnceLock::new();
    *PAGE_SIZE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions and touches no memory of ours.
        let size = unsafe { nix::libc::sysconf(nix::libc::_SC_PAGESIZE) };
        assert!(size > 0 && (size as usize).is_power_of_two(), "bad page size {size}");
        size as usize
    })
}

/// Test-only fault injection: make the next grow fail as a full disk would, or cut the
/// power at an msync.
#[cfg(test)]
pub(crate) mod fault {
    use std::cell::Cell;

    thread_local! {
        static FAIL_NEXT_GROW: Cell<Option<nix::errno::Errno>> = const { Cell::new(None) };
        static MSYNCS_BEFORE_POWER_CUT: Cell<Option<u32>> = const { Cell::new(None) };
    }

    /// On this thread, `msyncs` more msyncs succeed; every one after them fails with `EIO`
    /// without writing anything, as if the power went off there, until [`power_back_on`].
    pub(crate) fn cut_power_after_msyncs(msyncs: u32) {
        MSYNCS_BEFORE_POWER_CUT.with(|c| c.set(Some(msyncs)));
    }

    /// Ends [`cut_power_after_msyncs`].
    pub(crate) fn power_back_on() {
        MSYNCS_BEFORE_POWER_CUT.with(|c| c.set(None));
    }

    pub(super) fn msync_fails() -> bool {
        MSYNCS_BEFORE_POWER_CUT.with(|c| match c.get() {
            None => false,
            Some(0) => true,
            Some(left) => {
                c.set(Some(left - 1));
                false
            }
        })
    }

    /// The next grow or create on this thread fails with `errno`.
    pub(crate) fn fail_next_grow(errno: nix::errno::Errno) {
        FAIL_NEXT_GROW.with(|c| c.set(Some(errno)));
    }

    pub(super) fn take_grow_failure() -> Option<nix::errno::Errno> {
        FAIL_NEXT_GROW.with(|c| c.take())
    }
}
