//! The one error type of the store. Everything bad on disk or from the OS is a
//! `StoreError`; only bugs in our own code panic.

use std::io;
use std::path::{Path, PathBuf};

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A system call failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// The file or directory the call was about.
        path: PathBuf,
        /// What we were doing, e.g. "msync" or "open".
        operation: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The disk (or quota) is full. Data written before the failed call is intact.
    #[error("disk full during {operation} {path}")]
    DiskFull {
        /// The file being grown or written.
        path: PathBuf,
        /// What we were doing.
        operation: &'static str,
    },
    /// A file holds bytes that are not a valid store file.
    #[error("corrupt file {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The byte offset of the first bad byte or record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Another process (or another `Store` in this process) holds the data directory.
    #[error("data directory {dir} is locked by another mmapd process")]
    Locked {
        /// The data directory.
        dir: PathBuf,
    },
    /// A file in the original Go mmapd's JSON format.
    #[error(
        "{path} is in the original mmapd's JSON format, which this store does not read; \
         mmapd-admin import FILE loads the original's db.json through Raft"
    )]
    LegacyFormat {
        /// The JSON file.
        path: PathBuf,
    },
    /// The data directory already belongs to another cluster or node.
    #[error("identity mismatch in {dir}: {reason}")]
    IdentityMismatch {
        /// The data directory.
        dir: PathBuf,
        /// Which field differs.
        reason: String,
    },
}

impl StoreError {
    /// An IO error on `path`; ENOSPC and EDQUOT become [`StoreError::DiskFull`].
    pub(crate) fn io(path: &Path, operation: &'static str, source: io::Error) -> StoreError {
        let errno = source.raw_os_error();
        if errno == Some(nix::libc::ENOSPC) || errno == Some(nix::libc::EDQUOT) {
            return StoreError::DiskFull { path: path.to_path_buf(), operation };
        }
        StoreError::Io { path: path.to_path_buf(), operation, source }
    }

    /// Like [`StoreError::io`] for a nix errno.
    pub(crate) fn errno(path: &Path, operation: &'static str, errno: nix::errno::Errno) -> StoreError {
        StoreError::io(path, operation, io::Error::from(errno))
    }

    /// A corrupt-file error.
    pub(crate) fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> StoreError {
        StoreError::Corrupt { path: path.to_path_buf(), offset, reason: reason.into() }
    }
}
