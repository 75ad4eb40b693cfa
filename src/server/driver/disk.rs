//! The disk thread: owns the store and does every blocking write and msync, so the
//! driver never waits on the disk while it could be receiving and sending.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::raft::SnapshotMeta;
use crate::store::snapshot::WrittenSnapshot;
use crate::store::{Store, StoreError};

use super::core::{NodeError, PersistJob, StorageFailure};

/// Jobs queued for the disk at most. The driver core hands out one awaited write at a
/// time and a bounded number of commit-only writes (`core::MAX_UNAWAITED_PERSISTS`),
/// plus one snapshot; admin msyncs that find the queue full are refused.
pub(crate) const DISK_QUEUE: usize = 256;

/// Work for the disk thread, done in order.
pub(crate) enum DiskJob {
    /// A Ready's durable part.
    Persist(PersistJob),
    /// Adopt a snapshot already written off this thread, then drop the log it covers:
    /// a rename and a header rewrite, so writes queued behind it wait for no more.
    AdoptSnapshot(WrittenSnapshot),
    /// Force an msync of everything (admin).
    Msync { reply: oneshot::Sender<Result<PersistStats, NodeError>> },
}

/// What the disk thread reports back to the driver.
pub(crate) enum DiskDone {
    Persisted(Result<PersistStats, StorageFailure>),
    SnapshotSaved(Result<SnapshotMeta, StorageFailure>),
}

/// What a write cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersistStats {
    /// Bytes msynced.
    pub bytes: u64,
    /// msync calls.
    pub msyncs: u32,
    /// Time spent in msync.
    pub duration: Duration,
}

/// Starts the disk thread. It stops when the job sender is dropped.
pub(crate) fn spawn(
    mut store: Store,
    done: mpsc::Sender<DiskDone>,
    mapped_bytes: Arc<AtomicU64>,
) -> std::io::Result<(std::sync::mpsc::SyncSender<DiskJob>, std::thread::JoinHandle<()>)> {
    let (jobs_tx, jobs) = std::sync::mpsc::sync_channel::<DiskJob>(DISK_QUEUE);
    let thread = std::thread::Builder::new().name("mmapd-disk".into()).spawn(move || {
        while let Ok(job) = jobs.recv() {
            let report = match job {
                DiskJob::Persist(job) => {
                    let result = persist(&mut store, &job).map_err(failure);
                    mapped_bytes.store(store.mapped_bytes(), Ordering::Relaxed);
                    DiskDone::Persisted(result)
                }
                DiskJob::AdoptSnapshot(written) => {
                    let meta = written.meta().clone();
                    let result = store
                        .adopt_snapshot(written)
                        .and_then(|()| store.compact(meta.index))
                        .map(|()| meta)
                        .map_err(failure);
                    mapped_bytes.store(store.mapped_bytes(), Ordering::Relaxed);
                    DiskDone::SnapshotSaved(result)
                }
                DiskJob::Msync { reply } => {
                    let result = store
                        .sync()
                        .map(|s| PersistStats { bytes: s.bytes, msyncs: s.msync_calls, duration: s.duration })
                        .map_err(|e| NodeError::Storage(e.to_string()));
                    let _ = reply.send(result);
                    continue;
                }
            };
            // The queue of reports is as long as the queue of jobs: this never waits
            // on a driver that is itself waiting to queue a job.
            if done.blocking_send(report).is_err() {
                break;
            }
        }
        // Last words: everything written is made durable before the thread ends.
        if let Err(error) = store.sync() {
            tracing::error!(%error, "final msync failed");
        }
    })?;
    Ok((jobs_tx, thread))
}

/// Serialises a frozen copy of the state machine and writes it as a snapshot file, off
/// the driver's loop and off the disk thread; blocking.
pub(crate) fn build_snapshot(
    dir: &std::path::Path,
    meta: &SnapshotMeta,
    machine: crate::kv::StateMachine,
) -> Result<(bytes::Bytes, WrittenSnapshot), StorageFailure> {
    let mut data = Vec::with_capacity(machine.snapshot_len());
    machine.write_snapshot(&mut data).expect("writing to a Vec cannot fail");
    drop(machine);
    let written = crate::store::snapshot::write_temp(dir, meta, &data).map_err(failure)?;
    Ok((bytes::Bytes::from(data), written))
}

pub(crate) fn failure(error: StoreError) -> StorageFailure {
    match error {
        StoreError::DiskFull { .. } => StorageFailure::DiskFull(error.to_string()),
        other => StorageFailure::Other(other.to_string()),
    }
}

fn persist(store: &mut Store, job: &PersistJob) -> Result<PersistStats, StoreError> {
    if let Some(snapshot) = &job.snapshot {
        store.install_snapshot(&snapshot.meta, &snapshot.data)?;
    }
    if !job.entries.is_empty() {
        store.append(&job.entries)?;
    }
    if let Some(hard_state) = &job.hard_state {
        store.set_hard_state(hard_state)?;
    }
    if !job.must_sync {
        // Only the commit index moved: it is a lower bound and may lag (RAFT-NOTES #3).
        return Ok(PersistStats::default());
    }
    let stats = store.sync_entries_and_vote()?;
    Ok(PersistStats { bytes: stats.bytes, msyncs: stats.msync_calls, duration: stats.duration })
}
