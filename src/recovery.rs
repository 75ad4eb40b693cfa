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

/// Refuses a path that is not a directory mmapd has opened (it creates `LOCK` first).
fn refuse_unless_data_dir(dir: &Path) -> Result<(), RecoveryError> {
    if !dir.is_dir() {
        return Err(RecoveryError::Refused(format!("{} is not a directory", dir.display())));
    }
    if !dir.join("LOCK").exists() {
        return Err(RecoveryError::Refused(format!(
            "{} is not an mmapd data directory (no LOCK file: mmapd never ran on it)",
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
        // Keys and values stay slices of `data`: one copy of the state less at the peak.
        let loaded = StateMachine::load_snapshot_shared(&data)
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

/// What a data directory holds, as `mmapd-admin inspect` shows it: enough to choose the
/// most up-to-date survivor before `force-new-cluster`, and to check a restore.
#[derive(Clone, Debug)]
pub struct Inspection {
    /// The directory.
    pub dir: PathBuf,
    /// Its identity, if it has one (a node that never started has none).
    pub identity: Option<Identity>,
    /// How its log begins.
    pub origin: Option<Origin>,
    /// The removal marker's text, if a committed configuration removed the node.
    pub removed: Option<String>,
    /// The durable hard state: term, vote, commit index.
    pub hard_state: HardState,
    /// The first and last index of the log, and the last entry's term (the snapshot's if
    /// the log is empty).
    pub first_index: u64,
    /// See `first_index`.
    pub last_index: u64,
    /// See `first_index`.
    pub last_term: u64,
    /// The snapshot's index, term and configuration.
    pub snapshot: Option<SnapshotMeta>,
    /// The configuration in force at the last index (the latest in the log, committed or
    /// not: thesis §4.1).
    pub conf: ConfState,
    /// The cluster's record as of the commit index: its id, members' addresses, removed ids.
    pub cluster: Cluster,
    /// Number of keys as of the commit index.
    pub keys: u64,
    /// What a start would repair or remove (a torn tail, leftovers).
    pub warnings: Vec<String>,
}

/// Reads `dir` without changing anything (`Store::read_only`, under a shared lock: a
/// running node's directory is refused) and replays its committed entries on its
/// snapshot, as a start would.
pub fn inspect(dir: &Path) -> Result<Inspection, RecoveryError> {
    refuse_unless_data_dir(dir)?;
    let (data_dir, recovered) = Store::read_only(dir)?;
    let identity = data_dir.identity()?;
    let origin = data_dir.origin()?;
    let removed = data_dir.removed()?;
    let state = replay(dir, &recovered, origin.as_ref())?;
    let snapshot = recovered.snapshot.as_ref().map(|(meta, _)| meta.clone());
    let last_term =
        recovered.entries.last().map(|e| e.term).or(snapshot.as_ref().map(|s| s.term)).unwrap_or(0);
    Ok(Inspection {
        dir: dir.to_path_buf(),
        identity,
        origin,
        removed,
        hard_state: recovered.hard_state,
        first_index: state.first_index,
        last_index: state.last_index,
        last_term,
        snapshot,
        conf: state.conf,
        keys: state.machine.len() as u64,
        cluster: state.machine.cluster().clone(),
        warnings: recovered.warnings,
    })
}

/// A data directory's state as a start rebuilds it.
struct Replayed {
    /// The state machine with every committed entry applied.
    machine: StateMachine,
    /// The configuration in force at the last index.
    conf: ConfState,
    first_index: u64,
    last_index: u64,
}

/// Builds the Raft core and the state machine from what the store recovered, as the
/// daemon's start does (`server::open`): the snapshot's configuration (else the
/// origin's), the snapshot's state machine, then every committed entry applied with the
/// driver's own `apply_entry`.
fn replay(
    dir: &Path,
    recovered: &crate::store::Recovered,
    origin: Option<&Origin>,
) -> Result<Replayed, RecoveryError> {
    let (meta, mut machine) = match &recovered.snapshot {
        Some((meta, data)) => {
            let machine = StateMachine::load_snapshot(data)
                .map_err(|error| RecoveryError::Snapshot { dir: dir.to_path_buf(), error })?;
            (meta.clone(), machine)
        }
        None => (SnapshotMeta::default(), StateMachine::new()),
    };
    let conf =
        if meta.index > 0 { meta.conf.clone() } else { origin.map(|o| o.base.clone()).unwrap_or_default() };
    let initial = crate::raft::InitialState {
        hard_state: recovered.hard_state,
        snapshot: SnapshotMeta { conf: conf.clone(), ..meta.clone() },
        entries: recovered.entries.clone(),
    };
    // An empty configuration (a directory that never started): nothing for Raft to check.
    let conf = if conf.voters.is_empty() {
        conf
    } else {
        let voter = conf.voters[0];
        let raft = crate::raft::Raft::new(crate::raft::Config::new(voter), initial).map_err(|error| {
            RecoveryError::Refused(format!("the Raft state in {} is inconsistent: {error}", dir.display()))
        })?;
        raft.conf_state().clone()
    };
    let commit = recovered.hard_state.commit;
    for entry in recovered.entries.iter().filter(|e| e.index <= commit) {
        crate::server::driver::core::apply_entry(&mut machine, entry);
    }
    let first_index = meta.index + 1;
    let last_index = recovered.entries.last().map_or(meta.index, |e| e.index);
    Ok(Replayed { machine, conf, first_index, last_index })
}

impl Inspection {
    /// The members of the configuration in force, with their addresses (from the
    /// record, else the origin) and roles.
    fn members(&self) -> Vec<(NodeId, Option<String>, &'static str)> {
        let address = |id: NodeId| {
            self.cluster.members().get(&id).map(|m| m.address.clone()).or_else(|| {
                self.origin.as_ref()?.members.iter().find(|(member, _)| *member == id).map(|(_, a)| a.clone())
            })
        };
        let voters = self.conf.voters.iter().map(|&id| (id, address(id), "voter"));
        let learners = self.conf.learners.iter().map(|&id| (id, address(id), "learner"));
        voters.chain(learners).collect()
    }

    /// `mmapd-admin inspect --json`.
    pub fn to_json(&self) -> serde_json::Value {
        let hex = |id: u64| format!("{id:016x}");
        let members: Vec<serde_json::Value> = self
            .members()
            .into_iter()
            .map(|(id, address, role)| serde_json::json!({ "id": hex(id), "address": address, "role": role }))
            .collect();
        serde_json::json!({
            "data_dir": self.dir.display().to_string(),
            "node_id": self.identity.map(|i| hex(i.node_id)),
            "cluster_id": self.identity.map(|i| hex(i.cluster_id)),
            "origin": self.origin.as_ref().map(|o| if o.joined { "joined" } else { "bootstrapped" }),
            "removed": self.removed,
            "term": self.hard_state.term,
            "voted_for": self.hard_state.vote.map(hex),
            "commit_index": self.hard_state.commit,
            "first_index": self.first_index,
            "last_index": self.last_index,
            "last_term": self.last_term,
            "snapshot": self.snapshot.as_ref().map(|s| serde_json::json!({ "index": s.index, "term": s.term })),
            "configuration": {
                "voters": self.conf.voters.iter().map(|&id| hex(id)).collect::<Vec<_>>(),
                "learners": self.conf.learners.iter().map(|&id| hex(id)).collect::<Vec<_>>(),
                "members": members,
            },
            "cluster_record": {
                "cluster_id": hex(self.cluster.id()),
                "removed": self.cluster.removed().iter().map(|&id| hex(id)).collect::<Vec<_>>(),
            },
            "keys": self.keys,
            "warnings": self.warnings,
        })
    }
}

impl std::fmt::Display for Inspection {
    /// `mmapd-admin inspect`: one fact a line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "data directory {}", self.dir.display())?;
        match self.identity {
            Some(identity) => {
                writeln!(f, "node {:016x} of cluster {:016x}", identity.node_id, identity.cluster_id)?
            }
            None => writeln!(f, "no identity (the node never started)")?,
        }
        if let Some(origin) = &self.origin {
            writeln!(
                f,
                "origin: {}",
                if origin.joined { "joined an existing cluster" } else { "bootstrapped" }
            )?;
        }
        if let Some(removed) = &self.removed {
            writeln!(f, "REMOVED: {removed}")?;
        }
        let vote = self.hard_state.vote.map_or("none".to_owned(), |id| format!("{id:016x}"));
        writeln!(f, "term {}, voted for {vote}", self.hard_state.term)?;
        writeln!(f, "commit index {} (what a start applies)", self.hard_state.commit)?;
        writeln!(
            f,
            "log: first index {}, last index {} (term {})",
            self.first_index, self.last_index, self.last_term
        )?;
        match &self.snapshot {
            Some(snapshot) => writeln!(f, "snapshot: index {}, term {}", snapshot.index, snapshot.term)?,
            None => writeln!(f, "snapshot: none")?,
        }
        writeln!(f, "configuration at index {}:", self.last_index)?;
        for (id, address, role) in self.members() {
            writeln!(f, "  {id:016x}  {}  {role}", address.as_deref().unwrap_or("(no address known)"))?;
        }
        writeln!(
            f,
            "cluster record at the commit index: cluster {:016x}, {} removed ids",
            self.cluster.id(),
            self.cluster.removed().len()
        )?;
        write!(f, "keys at the commit index: {}", self.keys)?;
        for warning in &self.warnings {
            write!(f, "\nwarning: {warning}")?;
        }
        Ok(())
    }
}

/// What `force_new_cluster` did.
#[derive(Clone, Debug)]
pub struct Forced {
    /// The directory as it was (`inspect` before the change).
    pub before: Inspection,
    /// The index the kept state is at: what the node had committed (its snapshot's, if
    /// that is further). Entries after it were discarded.
    pub kept_index: u64,
    /// The new cluster's id.
    pub cluster_id: u64,
    /// The node's id (unchanged).
    pub node_id: NodeId,
    /// The address it is recorded at.
    pub address: String,
}

impl Forced {
    /// Entries of the log after `kept_index`, discarded.
    pub fn discarded(&self) -> u64 {
        self.before.last_index.saturating_sub(self.kept_index)
    }
}

/// Makes a survivor's data directory the data directory of a new one-node cluster, when
/// a quorum of the old one is lost for good: the node keeps its id, every other member
/// is removed, the cluster gets a new random id (so the old members, should one come
/// back, are refused), and the state is what the node had committed, the snapshot plus
/// every entry up to its durable commit index. Entries after it are discarded: the node
/// never learnt they were committed (a write the lost majority acknowledged may be
/// among them, or may never have reached this node: both are lost). The node is
/// recorded at `address` (default: the address the cluster recorded for it).
pub fn force_new_cluster(dir: &Path, address: Option<&str>) -> Result<Forced, RecoveryError> {
    refuse_unless_data_dir(dir)?;
    let before = inspect(dir)?;
    if let Some(marker) = &before.removed {
        return Err(RecoveryError::Refused(format!(
            "{}: this node was removed from its cluster ({marker}): its data is not the cluster's",
            dir.display()
        )));
    }
    let Some(identity) = before.identity else {
        return Err(RecoveryError::Refused(format!(
            "{} has no identity: the node never started, it holds no data",
            dir.display()
        )));
    };
    if before.conf.voters == [identity.node_id] {
        // Alone it has its quorum: forcing again would only cut off the nodes that joined.
        return Err(RecoveryError::Refused(format!(
            "{} is already a cluster whose only voter is this node: it has its quorum, start it",
            dir.display()
        )));
    }
    let address = match address {
        Some(address) => member_address(address)?,
        None => before
            .members()
            .into_iter()
            .find(|(id, _, _)| *id == identity.node_id)
            .and_then(|(_, address, _)| address)
            .or_else(|| before.cluster.members().get(&identity.node_id).map(|m| m.address.clone()))
            .ok_or_else(|| {
                RecoveryError::Refused(format!(
                    "no address is recorded for node {:016x}: pass --advertise HOST:PORT",
                    identity.node_id
                ))
            })?,
    };
    // Opened for writing only now: `inspect` above held a shared lock, and a node that
    // started meanwhile makes this fail with `Locked`.
    let (mut store, recovered) = Store::open(dir, StoreOptions::default())?;
    let origin = store.data_dir().origin()?;
    let Replayed { mut machine, .. } = replay(dir, &recovered, origin.as_ref())?;
    let kept_index = machine.applied_index();
    if kept_index == 0 {
        return Err(RecoveryError::Refused(format!("{} holds nothing committed", dir.display())));
    }
    let snapshot_term = match &recovered.snapshot {
        Some((meta, _)) if meta.index == kept_index => meta.term,
        _ => recovered.entries.iter().find(|e| e.index == kept_index).map(|e| e.term).ok_or_else(|| {
            RecoveryError::Refused(format!("{}: the log does not hold index {kept_index}", dir.display()))
        })?,
    };
    let cluster_id = crate::server::random_id();
    let cluster = machine
        .cluster()
        .refounded(cluster_id, identity.node_id, &address)
        .map_err(|e| RecoveryError::Refused(e.to_string()))?;
    machine.replace_cluster(cluster);
    let founded = OneNodeCluster {
        cluster_id,
        node_id: identity.node_id,
        address: address.clone(),
        snapshot_term,
        term: recovered.hard_state.term.max(snapshot_term),
    };
    founded.write(&mut store, &machine)?;
    drop(store);
    founded.read_back(dir, &machine)?;
    Ok(Forced { before, kept_index, cluster_id, node_id: identity.node_id, address })
}
