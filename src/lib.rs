//! mmapd: a distributed key-value datastore. Raft consensus over memory-mapped files.

pub mod raft;
