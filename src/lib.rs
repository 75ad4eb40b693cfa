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
//! - `server`: the daemon: HTTP API, peer RPC, admin socket, the Raft driver;
//! - `byte_reader` (private): the bounds-checked cursor both decoders read with.
//!
//! A write: `server::http` decodes a request into a `kv::Command` and the driver
//! (`server::node`) proposes `Command::encode()` to `raft`; the leader sends
//! `AppendEntries` batches (`transport::codec`) while its disk thread appends the same
//! entries to the mapped log and msyncs once for the batch (`store`); once a majority
//! has them durable the entry commits, and every node decodes it and calls
//! `kv::StateMachine::apply(index, &command)`, whose `Outcome` answers the client.

// All unsafe code lives in `store::mapped`, the one module allowed it.
#![deny(unsafe_code)]

mod byte_reader;
pub mod kv;
pub mod raft;
pub mod server;
pub mod store;
pub mod transport;
