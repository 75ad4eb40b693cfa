//! The driver: everything between the Raft core and the rest of the daemon.
//!
//! - `core`: the IO-free driver core (events in, actions out), which the simulator
//!   runs as it is;
//! - `shell`: the tokio task that owns the core and carries out its actions, and the
//!   `NodeHandle` the API, the peer transport and the admin socket talk to it with;
//! - `hashes`: the state hashes computed at hash check entries, for `mmapd-admin check`;
//! - `leases`: the leader's lease clock, the deadlines it expires leases by (IO-free);
//! - `disk`: the thread that owns the store and does every blocking write;
//! - `version`: the cluster version, and the features it gates (IO-free);
//! - `start`: whether a node with an empty data directory may bootstrap (IO-free, run
//!   by the simulator too).

pub mod core;
pub(crate) mod disk;
pub mod hashes;
pub mod leases;
pub mod shell;
pub mod start;
pub mod version;

pub use self::core::{Applied, NodeError};
pub use disk::PersistStats;
pub use shell::{DeliverError, NodeHandle, Outbox, Shared};
