//! The disk thread: owns the store and does every blocking write and msync, so the
//! Raft driver never waits on the disk while it could be receiving and sending.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::raft::{Entry, HardState, Snapshot, SnapshotMeta};
use crate::store::Store;

use super::node::NodeError;

/// Work for the disk thread, done in order.
pub(crate) enum DiskJob {
    /// A Ready's durable part: snapshot, then entries, then hard state; msync when `must_sync`.
    Persist {
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
        snapshot: Option<Snapshot>,
        must_sync: bool,
    },
    /// Save a snapshot of the state machine, then drop the log it covers.
    SaveSnapshot { meta: SnapshotMeta, data: Bytes },
    /// Force an msync of everything (admin).
    Msync { reply: oneshot::Sender<Result<PersistStats, NodeError>> },
}

/// What the disk thread reports back to the driver.
pub(crate) enum DiskDone {
    Persisted(Result<PersistStats, String>),
    SnapshotSaved(Result<SnapshotMeta, String>),
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
    done: mpsc::UnboundedSender<DiskDone>,
    mapped_bytes: Arc<AtomicU64>,
) -> (std::sync::mpsc::Sender<DiskJob>, std::thread::JoinHandle<()>) {
    let (jobs_tx, jobs) = std::sync::mpsc::channel::<DiskJob>();
    let thread = std::thread::Builder::new()
        .name("mmapd-disk".into())
        .spawn(move || {
            while let Ok(job) = jobs.recv() {
                match job {
                    DiskJob::Persist { hard_state, entries, snapshot, must_sync } => {
                        let result = persist(&mut store, hard_state, &entries, snapshot.as_ref(), must_sync)
                            .map_err(|e| e.to_string());
                        mapped_bytes.store(store.mapped_bytes(), Ordering::Relaxed);
                        if done.send(DiskDone::Persisted(result)).is_err() {
                            break;
                        }
                    }
                    DiskJob::SaveSnapshot { meta, data } => {
                        let result = store
                            .save_snapshot(&meta, &data)
                            .and_then(|()| store.compact(meta.index))
                            .map(|()| meta)
                            .map_err(|e| e.to_string());
                        if done.send(DiskDone::SnapshotSaved(result)).is_err() {
                            break;
                        }
                    }
                    DiskJob::Msync { reply } => {
                        let result = store
                            .sync()
                            .map(|s| PersistStats {
                                bytes: s.bytes,
                                msyncs: s.msync_calls,
                                duration: s.duration,
                            })
                            .map_err(|e| NodeError::Storage(e.to_string()));
                        let _ = reply.send(result);
                    }
                }
            }
            // Last words: everything written is made durable before the thread ends.
            if let Err(error) = store.sync() {
                tracing::error!(%error, "final msync failed");
            }
        })
        .expect("spawn disk thread");
    (jobs_tx, thread)
}

fn persist(
    store: &mut Store,
    hard_state: Option<HardState>,
    entries: &[Entry],
    snapshot: Option<&Snapshot>,
    must_sync: bool,
) -> Result<PersistStats, crate::store::StoreError> {
    if let Some(snapshot) = snapshot {
        store.install_snapshot(&snapshot.meta, &snapshot.data)?;
    }
    if !entries.is_empty() {
        store.append(entries)?;
    }
    if let Some(hard_state) = hard_state {
        store.set_hard_state(&hard_state)?;
    }
    if !must_sync {
        // Only the commit index moved: it is a lower bound and may lag (RAFT-NOTES #3).
        return Ok(PersistStats::default());
    }
    let stats = store.sync()?;
    Ok(PersistStats { bytes: stats.bytes, msyncs: stats.msync_calls, duration: stats.duration })
}
