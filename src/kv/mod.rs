//! The key-value state machine.
//!
//! - `command`: `Command` and `Condition`, and their binary encoding (a Raft entry's payload);
//! - `state_machine`: `StateMachine`, the ordered map committed commands are applied to,
//!   each key with its `create_revision`, `mod_revision` (the ETag) and `version`, as
//!   etcd v3 means them; revisions are log indexes;
//! - `history`: `History`, every change applied to a key (an `Event`) since the
//!   compaction point, replicated state that watches replay;
//! - `lease`: `Lease`, the replicated lease table's entry (keys deleted together when
//!   the lease is revoked or expires; time is kept by the leader's driver);
//! - `txn`: `Txn`, a transaction (compares, then one branch of ops at one revision),
//!   its encoding and its evaluation, with etcd v3's semantics;
//! - `snapshot`: the map's binary snapshot payload, written and loaded;
//! - `cluster`: the cluster's own record (its id, members' addresses, removed ids),
//!   changed by committed entries like the keys;
//! - `backup`: the backup file of `mmapd-admin backup` (the state at one revision, in
//!   checksummed chunks), written as a stream and checked on read;
//! - `hash`: the hash of the key-value state at one revision (`mmapd-admin check`);
//! - `legacy`: import of the original's `db.json`;
//! - `error`: `DecodeError`, shared by command and snapshot decoding.
//!
//! Applying is deterministic: the same committed log gives the same map on every node.

#![deny(missing_docs)]

mod backup;
mod cluster;
mod command;
mod error;
mod hash;
mod history;
mod lease;
mod legacy;
mod snapshot;
mod state_machine;
mod txn;

pub use backup::{
    encode_backup, human_bytes, load_backup, verify_backup, BackupDecoder, BackupError, BackupHeader,
    BackupLease, BackupRecord, BackupSummary, EnvelopeHasher, ReadBackupError, BACKUP_MAGIC, BACKUP_VERSION,
};
pub use cluster::{Cluster, ClusterError, Member, MemberChange, MemberId, MemberRole};
pub use command::{Command, Condition, COMMAND_FORMAT_VERSION};
pub use error::DecodeError;
pub use hash::{hash_pairs, hash_state, StateHash};
pub use history::{Event, EventKind, History, Since, PER_EVENT_OVERHEAD_BYTES};
pub use lease::{Lease, MAX_LEASE_TTL_S, PER_LEASED_KEY_BYTES, PER_LEASE_OVERHEAD_BYTES};
pub use legacy::{import_command, parse_legacy_db_json, LegacyImportError};
pub use snapshot::SNAPSHOT_FORMAT_VERSION;
pub use state_machine::{Outcome, StateMachine, Value, PER_KEY_OVERHEAD_BYTES};
pub use txn::{
    in_range, Compare, CompareOp, CompareSpan, CompareTarget, KeyValue, Txn, TxnOp, TxnOutcome, TxnResponse,
    MAX_TXN_OPS,
};

#[cfg(test)]
mod tests;
