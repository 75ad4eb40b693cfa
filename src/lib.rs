//! mmapd: a distributed key-value datastore. Raft consensus over memory-mapped files.
//!
//! Layout: `raft` is the IO-free consensus core; `store` persists what its `Ready` asks for
//! (log entries, hard state, snapshots) in memory-mapped files under a locked data directory.

pub mod raft;
pub mod store;
