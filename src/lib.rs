//! mmapd: a distributed key-value datastore. Raft consensus over memory-mapped files.
//!
//! Layout: `raft` is the IO-free consensus core; `store` persists what its `Ready` asks for
//! (log entries, hard state, snapshots) in memory-mapped files under a locked data directory.

// All unsafe code lives in `store::mapped`, the one module allowed it.
#![deny(unsafe_code)]

pub mod raft;
pub mod store;
