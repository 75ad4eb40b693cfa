//! The deterministic cluster simulator and its checkers.
//!
//! - `rng`: the one seeded generator every random choice comes from;
//! - `linearizability`: a history checker independent of the simulator;
//! - `leases`: the clients' leases and the check that none expires early;
//! - `watch`: the check that every node hands watchers the same events, without gaps;
//! - `bank`: bank transfers through transactions, and their checker;
//! - `cluster`: nodes, simulated network and disks, clients, faults, and the checks.

pub mod bank;
pub mod cluster;
pub mod leases;
pub mod linearizability;
pub mod rng;
pub mod watch;
