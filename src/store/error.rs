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
    /// A file of a format version this build does not read (a newer release wrote it).
    #[error(
        "{path}: {what} format version {found} is newer than this build reads (it reads {supported}): \
         a newer mmapd wrote it, so run that release or a newer one (or byte {offset} of the file is \
         damaged)"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Where the version is in the file.
        offset: u64,
        /// The file kind, e.g. "log segment".
        what: &'static str,
        /// The version in the file.
        found: u32,
        /// The versions this build reads, e.g. "version 1" or "versions 1 and 2".
        supported: String,
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

    /// Refuses `bytes`, the start of `path`, when they carry `magic` and then, at
    /// `version_offset`, a format version (u32 LE) above every one in `supported`: a
    /// file of a newer release (versions only grow) is named as such, not as corrupt.
    /// Anything else, a version 0 among them, is left to the decoder.
    pub(crate) fn check_version(
        path: &Path,
        what: &'static str,
        bytes: &[u8],
        magic: &[u8],
        version_offset: usize,
        supported: &[u32],
    ) -> Result<(), StoreError> {
        let Some(raw) = bytes.get(version_offset..version_offset + 4) else { return Ok(()) };
        if !bytes.starts_with(magic) {
            return Ok(());
        }
        let found = u32::from_le_bytes(raw.try_into().expect("four bytes"));
        if supported.iter().any(|&known| found <= known) {
            return Ok(());
        }
        let supported = match supported {
            [one] => format!("version {one}"),
            many => {
                let listed: Vec<String> = many.iter().map(u32::to_string).collect();
                format!("versions {}", listed.join(", "))
            }
        };
        Err(StoreError::UnsupportedVersion {
            path: path.to_path_buf(),
            offset: version_offset as u64,
            what,
            found,
            supported,
        })
    }

    /// A corrupt-file error.
    pub(crate) fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> StoreError {
        StoreError::Corrupt { path: path.to_path_buf(), offset, reason: reason.into() }
    }
}
