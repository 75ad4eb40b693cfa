//! Offline work on a data directory, with no daemon running: what `mmapd-admin
//! restore`, `inspect` and `force-new-cluster` do (the procedures are in the README,
//! "Backup and recovery", and mmapd-admin(8)).
//!
//! - `restore`: a backup file becomes the data directory of a new one-node cluster;
//! - `force_new_cluster`: a survivor's data directory becomes one, keeping what it had
//!   committed, when a quorum is lost for good;
//! - `inspect`: what a data directory holds, read without changing it.
//!
//! A new cluster gets a new random cluster id, so that no node of the old cluster can
//! talk to it (peers refuse another cluster's requests), and its state continues the
//! old revisions: the data is written as a snapshot at the revision, so the first new
//! write gets a version above every version in it. Every file is written by the store's
//! own writers (`store::Store`, `store::DataDir`) and read back before the command
//! reports success.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::kv::{BackupSummary, Cluster, DecodeError, ReadBackupError, StateMachine};
use crate::raft::{ConfState, HardState, NodeId, SnapshotMeta};
use crate::server::cli::{member_address, CliError};
use crate::store::{Identity, Origin, Store, StoreError, StoreOptions};

/// Why an offline command did nothing, or stopped.
#[derive(Debug, Error)]
pub enum RecoveryError {
    /// The data directory could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The backup file is damaged or could not be read.
    #[error("{path}: {error}")]
    Backup {
        /// The backup file.
        path: PathBuf,
        /// What is wrong.
        error: ReadBackupError,
    },
    /// A member address that is not `HOST:PORT`.
    #[error(transparent)]
    Address(#[from] CliError),
    /// The command refuses to run on this directory.
    #[error("{0}")]
    Refused(String),
    /// The data directory's snapshot does not decode.
    #[error("the snapshot in {dir} does not decode: {error}")]
    Snapshot {
        /// The data directory.
        dir: PathBuf,
        /// What is wrong.
        error: DecodeError,
    },
    /// What was written does not read back as written (a bug, or a failing disk).
    #[error("{dir} does not read back as written: {reason}")]
    ReadBack {
        /// The data directory.
        dir: PathBuf,
        /// What differs.
        reason: String,
    },
}

/// The mmapd address a restored node is given unless told otherwise: mmapd's default
/// `--ip` and `--port`.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:3001";

/// What `restore` made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// The backup that was restored.
    pub backup: BackupSummary,
    /// The new cluster's id.
    pub cluster_id: u64,
    /// The new node's id.
    pub node_id: NodeId,
    /// The address the new node is recorded at: it must advertise that.
    pub address: String,
}

/// Writes a fresh data directory `dir` for a new one-node cluster holding the backup's
/// data: a new random cluster id and node id, the node at `address`, the key-value state
/// as a snapshot at the backup's revision. `dir` must be missing or empty. Nothing is
/// written before the whole backup has been read and checked.
pub fn restore(backup: &Path, dir: &Path, address: &str) -> Result<Restored, RecoveryError> {
    let address = member_address(address)?;
    refuse_unless_empty(dir)?;
    let backup_error = |error: ReadBackupError| RecoveryError::Backup { path: backup.to_path_buf(), error };
    let mut input = std::fs::File::open(backup).map_err(|e| backup_error(e.into()))?;
    let (summary, mut machine) = crate::kv::load_backup(&mut input).map_err(backup_error)?;
    drop(input);
    let (cluster_id, node_id) = (crate::server::random_id(), crate::server::random_id());
    machine.replace_cluster(
        Cluster::default()
            .refounded(cluster_id, node_id, &address)
            .map_err(|e| RecoveryError::Refused(e.to_string()))?,
    );
    let (mut store, _) = Store::open(dir, StoreOptions::default())?;
    // A new cluster: its first term. The node campaigns in the next.
    let founded = OneNodeCluster { cluster_id, node_id, address: address.clone(), snapshot_term: 1, term: 1 };
    founded.write(&mut store, &machine)?;
    drop(store);
    founded.read_back(dir, &machine)?;
    Ok(Restored { backup: summary, cluster_id, node_id, address })
}

/// Refuses a path that exists and is not an empty directory.
fn refuse_unless_empty(dir: &Path) -> Result<(), RecoveryError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            let kind = if dir.is_dir() { "cannot read" } else { "is not a directory:" };
            return Err(RecoveryError::Refused(format!("{} {kind} {error}", dir.display())));
        }
    };
    if entries.count() > 0 {
        return Err(RecoveryError::Refused(format!(
            "{} is not empty: restore writes a fresh data directory (remove it, or name a new one)",
            dir.display()
        )));
    }
    Ok(())
}

/// The data directory of a new one-node cluster: what `restore` and `force_new_cluster`
/// both write.
struct OneNodeCluster {
    cluster_id: u64,
    node_id: NodeId,
    address: String,
    /// The term of the snapshot's last entry.
    snapshot_term: u64,
    /// The hard state's term: at least `snapshot_term`.
    term: u64,
}

impl OneNodeCluster {
    fn conf(&self) -> ConfState {
        ConfState::with_voters(vec![self.node_id])
    }

    /// `machine` (whose cluster record is the new cluster's) as the snapshot at its
    /// applied index, an empty log, a hard state committing the snapshot, then the origin
    /// and last the identity. A crash part-way leaves the snapshot and record of the new
    /// cluster or the old state; the command can be run again.
    fn write(&self, store: &mut Store, machine: &StateMachine) -> Result<(), RecoveryError> {
        assert_eq!(
            machine.cluster().id(),
            self.cluster_id,
            "the state machine holds another cluster's record"
        );
        assert!(self.term >= self.snapshot_term);
        let index = machine.applied_index();
        let meta = SnapshotMeta { index, term: self.snapshot_term, conf: self.conf() };
        let mut data = Vec::with_capacity(machine.snapshot_len());
        machine.write_snapshot(&mut data).expect("writing to a Vec cannot fail");
        store.reset_to_snapshot(&meta, &data)?;
        store.set_hard_state(&HardState { term: self.term, vote: None, commit: index })?;
        store.sync()?;
        let data_dir = store.data_dir();
        let members = vec![(self.node_id, self.address.clone())];
        data_dir.write_origin(&Origin { joined: false, base: self.conf(), members })?;
        data_dir.replace_identity(Identity { cluster_id: self.cluster_id, node_id: self.node_id })?;
        Ok(())
    }

    /// Opens `dir` as the daemon will and checks it holds what `write` wrote.
    fn read_back(&self, dir: &Path, machine: &StateMachine) -> Result<(), RecoveryError> {
        let differs = |reason: String| RecoveryError::ReadBack { dir: dir.to_path_buf(), reason };
        let (store, recovered) = Store::open(dir, StoreOptions::default())?;
        let index = machine.applied_index();
        let Some((meta, data)) = recovered.snapshot else {
            return Err(differs("no snapshot".into()));
        };
        let expected = SnapshotMeta { index, term: self.snapshot_term, conf: self.conf() };
        if meta != expected || !recovered.entries.is_empty() {
            return Err(differs(format!("snapshot {meta:?} and {} entries", recovered.entries.len())));
        }
        let hard_state = HardState { term: self.term, vote: None, commit: index };
        if recovered.hard_state != hard_state {
            return Err(differs(format!("hard state {:?}", recovered.hard_state)));
        }
        let loaded = StateMachine::load_snapshot(&data)
            .map_err(|error| RecoveryError::Snapshot { dir: dir.to_path_buf(), error })?;
        if loaded != *machine {
            return Err(differs("the snapshot's key-value state".into()));
        }
        let identity = Identity { cluster_id: self.cluster_id, node_id: self.node_id };
        if store.data_dir().identity()? != Some(identity) {
            return Err(differs("identity".into()));
        }
        let origin = store.data_dir().origin()?;
        if origin.as_ref().map(|o| (o.joined, &o.base)) != Some((false, &self.conf())) {
            return Err(differs(format!("origin {origin:?}")));
        }
        Ok(())
    }
}
