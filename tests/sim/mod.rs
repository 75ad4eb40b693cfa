//! The deterministic cluster simulator and its checkers.
//!
//! - `rng`: the one seeded generator every random choice comes from;
//! - `linearizability`: a history checker independent of the simulator;
//! - `bank`: bank transfers through transactions, and their checker;
//! - `cluster`: nodes, simulated network and disks, clients, faults, and the checks.

pub mod bank;
pub mod cluster;
pub mod linearizability;
pub mod rng;
