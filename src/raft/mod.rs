//! The Raft consensus core: a deterministic state machine with no IO, no clock,
//! no threads and no hidden randomness.
//!
//! The caller drives it (the daemon in `server`, or the simulator in `tests/`):
//!
//! - `Raft::tick` advances abstract time by one tick;
//! - `Raft::step` hands it a message from a peer;
//! - `Raft::propose`, `Raft::read_index`, `Raft::transfer_leadership`,
//!   `Raft::campaign` and `Raft::compact` are the client-facing requests;
//! - `Raft::ready` returns a `Ready`: what to persist, what to send (some at once,
//!   some only after persisting), what to apply, which reads to answer;
//!   `Raft::advance` says it has all been done. `Ready`'s doc gives the order.
//!
//! References: the extended Raft paper (Ongaro and Ousterhout, 2014), cited as §N, and
//! Ongaro's thesis (2014), cited as "thesis §N". The shape follows etcd's raft.
//!
//! Layout: `entry` and `message` are the data; `log` is the in-memory log with its
//! stable/unstable split; `progress` tracks followers for a leader; `read_only` the
//! ReadIndex rounds; `conf_change` the single-server membership changes and
//! `membership` the configurations the log holds; `node` is the state machine itself
//! and reads like the paper.

mod conf_change;
mod config;
mod entry;
mod error;
mod log;
mod membership;
mod message;
mod node;
mod progress;
mod read_only;
mod ready;
mod rng;

pub use conf_change::{
    ConfChange, ConfChangeDecodeError, ConfChangeKind, CONF_CHANGE_VERSION, MAX_CONTEXT_BYTES,
};
pub use config::Config;
#[cfg(feature = "planted-bugs")]
pub use config::PlantedBugs;
pub use entry::{
    ConfState, Entry, EntryKind, HardState, NodeId, Snapshot, SnapshotMeta, ENTRY_OVERHEAD_BYTES,
};
pub use error::{
    CompactError, ConfChangeError, ConfigError, InitError, ProposeError, ReadIndexError, StepError,
    TransferError,
};
pub use message::{Message, MessageBody};
pub use node::{InitialState, Raft, MAX_TERM_OR_INDEX};
pub use ready::{PeerStatus, ReadState, Ready, Role, SoftState, Status};

#[cfg(test)]
mod tests;
