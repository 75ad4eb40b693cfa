//! mmapd: a distributed key-value datastore. Raft consensus over memory-mapped files.
//!
//! Layout:
//! - `raft`: the IO-free consensus core (entries, messages, the node state machine);
//! - `store`: persists what the core's `Ready` asks for (log entries, hard state,
//!   snapshots) in memory-mapped files under a locked data directory; all `unsafe`
//!   code of the crate lives in `store::mapped`;
//! - `kv`: the key-value state machine the committed log is applied to, its command
//!   encoding, its snapshot payload and the import of the original's `db.json`;
//! - `transport`: what travels between nodes (`transport::codec`, the binary peer codec);
//! - `server`: the daemon: HTTP API, peer RPC, admin socket, and the driver
//!   (`server::driver`: the IO-free driver core that decides what the node does
//!   around the Raft core, which the simulator runs as it is; the tokio shell that
//!   carries out its actions; the disk thread that owns the store);
//! - `recovery`: offline work on a data directory (`mmapd-admin restore`, `inspect`,
//!   `force-new-cluster`), through the store's own readers and writers;
//! - `byte_reader` (private): the bounds-checked cursor both decoders read with.
//!
//! A write: `server::api` decodes a request into a `kv::Command` and hands it to the
//! driver (`server::driver::shell`), whose core (`server::driver::core`) proposes
//! `Command::encode()` to `raft`. The core turns the Ready into actions: the leader
//! sends `AppendEntries` batches (`transport::codec`) while the disk thread
//! (`server::driver::disk`) appends the same entries to the mapped log and msyncs once
//! for the batch (`store`); once a majority has them durable the entry commits, and on
//! every node the core decodes it and calls `kv::StateMachine::apply(index, &command)`,
//! whose `Outcome` answers the client.

// All unsafe code lives in `store::mapped`, the one module allowed it.
#![deny(unsafe_code)]

mod byte_reader;
pub mod kv;
pub mod raft;
pub mod recovery;
pub mod server;
pub mod store;
pub mod transport;
