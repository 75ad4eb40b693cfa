//! The Raft driver: one task owns the Raft core and turns its Readys into disk
//! writes (on the disk thread), peer messages (via the transport), applied
//! commands and answered reads. Everything else talks to it through `NodeHandle`.
//!
//! The loop follows `Ready`'s contract: send `messages` at once, hand the state to
//! persist to the disk thread, and only when that is durable send
//! `persisted_messages`, apply, answer reads and `advance`. While the disk thread
//! writes, proposals keep arriving and form the next batch (group commit).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::kv::{Command, Outcome, StateMachine};
use crate::raft::{
    Entry, EntryKind, Message, NodeId, ProposeError, Raft, Ready, Role, Snapshot, SnapshotMeta, Status,
};

use super::disk::{DiskDone, DiskJob, PersistStats};
use super::metrics::Metrics;

/// Why the driver could not serve a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeError {
    /// Another node leads; forward there.
    NotLeader(Option<NodeId>),
    /// No leader is known yet (or a transfer is in progress): retry later.
    NoLeader,
    /// The entry was overwritten by another leader's: it did not take effect.
    Dropped,
    /// The disk failed: nothing was acknowledged.
    Storage(String),
    /// The node is shutting down.
    ShuttingDown,
    /// A command is refused as invalid.
    Invalid(String),
}

/// The answer to a committed proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The log index of the entry.
    pub index: u64,
    /// What applying it did.
    pub outcome: Outcome,
}

/// Requests from HTTP handlers and the admin socket to the driver.
pub(crate) enum Request {
    Propose { command: Bytes, reply: Reply<Applied> },
    Read { reply: Reply<()> },
    StepDown { reply: Reply<NodeId> },
    Snapshot { reply: Reply<SnapshotMeta> },
    Msync { reply: Reply<PersistStats> },
    Ping { reply: oneshot::Sender<()> },
}

/// State shared with the handlers, updated by the driver.
pub struct Shared {
    /// The key-value state machine. Written only by the driver, in log order; never
    /// held across an await.
    pub kv: RwLock<StateMachine>,
    /// The core's status after the last Ready.
    pub status: Mutex<Status>,
    /// The latest snapshot, attached by the transport to InstallSnapshot messages.
    pub snapshot: Mutex<Option<Snapshot>>,
    /// Counters and histograms.
    pub metrics: Metrics,
}

/// A cheap handle to the driver.
#[derive(Clone)]
pub struct NodeHandle {
    requests: mpsc::Sender<Request>,
    peer_inbox: mpsc::Sender<Vec<Message>>,
    /// Shared state.
    pub shared: Arc<Shared>,
    /// This node's id.
    pub id: NodeId,
    /// The role, watched by sd-notify and step-down.
    pub role: watch::Receiver<(Role, u64, Option<NodeId>)>,
}

impl NodeHandle {
    /// Proposes a command and waits until it is committed and applied here.
    pub async fn propose(&self, command: &Command) -> Result<Applied, NodeError> {
        let command = command.encode();
        self.ask(|reply| Request::Propose { command, reply }).await
    }

    /// Waits until a linearizable read may be served from the local state machine
    /// (thesis §6.4: the read index is confirmed and applied here).
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        self.ask(|reply| Request::Read { reply }).await
    }

    /// Transfers leadership to the most up-to-date follower; returns it.
    pub async fn step_down(&self) -> Result<NodeId, NodeError> {
        self.ask(|reply| Request::StepDown { reply }).await
    }

    /// Takes a snapshot now and compacts the log.
    pub async fn snapshot(&self) -> Result<SnapshotMeta, NodeError> {
        self.ask(|reply| Request::Snapshot { reply }).await
    }

    /// Forces an msync of every mapped file.
    pub async fn msync(&self) -> Result<PersistStats, NodeError> {
        self.ask(|reply| Request::Msync { reply }).await
    }

    /// Answers once the driver's event loop has come round: the watchdog's proof of life.
    pub async fn ping(&self) -> Result<(), NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Ping { reply }).await?;
        rx.await.map_err(|_| NodeError::ShuttingDown)
    }

    /// Hands messages from a peer to the core. Waits when the driver is behind.
    pub async fn deliver(&self, messages: Vec<Message>) -> Result<(), NodeError> {
        self.peer_inbox.send(messages).await.map_err(|_| NodeError::ShuttingDown)
    }

    /// Sends a request carrying its reply channel and waits for the answer. A dropped
    /// reply means the driver stopped.
    async fn ask<T>(&self, request: impl FnOnce(Reply<T>) -> Request) -> Result<T, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(request(reply)).await?;
        rx.await.map_err(|_| NodeError::ShuttingDown)?
    }

    async fn send(&self, request: Request) -> Result<(), NodeError> {
        self.requests.send(request).await.map_err(|_| NodeError::ShuttingDown)
    }
}

/// Everything the driver needs to start.
pub(crate) struct DriverParts {
    pub raft: Raft,
    pub tick: Duration,
    pub snapshot_entries: u64,
    pub snapshot_index: u64,
    pub disk_jobs: std::sync::mpsc::Sender<DiskJob>,
    pub disk_done: mpsc::UnboundedReceiver<DiskDone>,
    pub outbox: super::transport::Outbox,
    pub shared: Arc<Shared>,
    pub shutdown: watch::Receiver<bool>,
}

/// Starts the driver task; returns its handle and the task.
pub(crate) fn spawn(parts: DriverParts) -> (NodeHandle, tokio::task::JoinHandle<()>) {
    let (requests_tx, requests) = mpsc::channel(65_536);
    let (peer_tx, peer_inbox) = mpsc::channel(1024);
    let id = parts.raft.id();
    let initial_role = (parts.raft.role(), parts.raft.term(), parts.raft.leader());
    let (role_tx, role_rx) = watch::channel(initial_role);
    let handle = NodeHandle {
        requests: requests_tx,
        peer_inbox: peer_tx,
        shared: parts.shared.clone(),
        id,
        role: role_rx,
    };
    let driver = Driver {
        raft: parts.raft,
        tick: parts.tick,
        snapshot_entries: parts.snapshot_entries,
        snapshot_index: parts.snapshot_index,
        snapshot_in_progress: false,
        disk_jobs: parts.disk_jobs,
        disk_done: parts.disk_done,
        outbox: parts.outbox,
        shared: parts.shared,
        requests,
        peer_inbox,
        role_tx,
        shutdown: parts.shutdown,
        in_flight: None,
        proposals: BTreeMap::new(),
        forwarded_waiting: Vec::new(),
        reads_by_context: HashMap::new(),
        reads_waiting_apply: Vec::new(),
        reads_waiting_leader: Vec::new(),
        next_read_context: 1,
        step_downs: Vec::new(),
        snapshot_waiters: Vec::new(),
        unawaited_persists: 0,
        fatal: None,
    };
    let task = tokio::spawn(driver.run());
    (handle, task)
}

/// Where an answer goes.
type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

/// A Ready whose state the disk thread is writing.
struct InFlight {
    ready: Ready,
    started: Instant,
}

struct Driver {
    raft: Raft,
    tick: Duration,
    snapshot_entries: u64,
    /// The index of the latest durable snapshot.
    snapshot_index: u64,
    snapshot_in_progress: bool,
    disk_jobs: std::sync::mpsc::Sender<DiskJob>,
    disk_done: mpsc::UnboundedReceiver<DiskDone>,
    outbox: super::transport::Outbox,
    shared: Arc<Shared>,
    requests: mpsc::Receiver<Request>,
    peer_inbox: mpsc::Receiver<Vec<Message>>,
    role_tx: watch::Sender<(Role, u64, Option<NodeId>)>,
    shutdown: watch::Receiver<bool>,
    /// The Ready being persisted. Invariant: at most one, as the core requires.
    in_flight: Option<InFlight>,
    /// Proposals waiting for their entry to apply: index -> (term, reply).
    proposals: BTreeMap<u64, (u64, oneshot::Sender<Result<Applied, NodeError>>)>,
    /// Proposals that found no leader, retried on every tick until their client gives up.
    forwarded_waiting: Vec<(Bytes, oneshot::Sender<Result<Applied, NodeError>>)>,
    /// Reads waiting for their read index.
    reads_by_context: HashMap<u64, oneshot::Sender<Result<(), NodeError>>>,
    /// Reads whose index is known, waiting for it to apply.
    reads_waiting_apply: Vec<(u64, oneshot::Sender<Result<(), NodeError>>)>,
    /// Reads that found no leader, retried on every tick.
    reads_waiting_leader: Vec<oneshot::Sender<Result<(), NodeError>>>,
    next_read_context: u64,
    /// Leadership transfers under way: (target, started, reply).
    step_downs: Vec<(NodeId, Instant, Reply<NodeId>)>,
    snapshot_waiters: Vec<oneshot::Sender<Result<SnapshotMeta, NodeError>>>,
    /// Commit-only hard state writes queued without waiting; their completions come
    /// back first, in order, since the disk thread works through its queue in order.
    unawaited_persists: u32,
    /// A disk failure: the node stops serving writes.
    fatal: Option<String>,
}

impl Driver {
    async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                done = self.disk_done.recv() => match done {
                    Some(done) => self.on_disk_done(done),
                    None => break,
                },
                Some(messages) = self.peer_inbox.recv() => {
                    self.step_all(messages);
                    while let Ok(more) = self.peer_inbox.try_recv() {
                        self.step_all(more);
                    }
                }
                Some(request) = self.requests.recv() => {
                    self.on_request(request);
                    // Take everything already waiting: one Ready, one write for all of it.
                    for _ in 0..4096 {
                        match self.requests.try_recv() {
                            Ok(request) => self.on_request(request),
                            Err(_) => break,
                        }
                    }
                }
                _ = ticker.tick() => self.on_tick(),
                _ = self.shutdown.changed() => break,
            }
            if self.fatal.is_some() {
                continue;
            }
            if self.in_flight.is_none() {
                if self.raft.has_ready() {
                    self.handle_ready();
                }
            } else {
                // The disk is busy with the previous batch: replication, heartbeats and
                // read rounds do not wait for it (thesis §10.2.1).
                let messages = self.raft.take_messages();
                self.outbox.send(messages);
                // Entries a majority holds durably are committed: apply and answer them
                // without waiting for this node's own write.
                let committed = self.raft.take_committed_entries();
                if let Some(last) = committed.last().map(|e| e.index) {
                    self.apply(&committed);
                    self.raft.applied_to(last);
                    self.release_reads();
                }
            }
        }
        self.fail_all(NodeError::ShuttingDown);
    }

    fn step_all(&mut self, messages: Vec<Message>) {
        for message in messages {
            let name = message.body.name();
            if let Err(error) = self.raft.step(message) {
                tracing::warn!(%error, kind = name, "refused peer message");
                self.shared.metrics.peer_messages_refused.inc();
            }
        }
    }

    fn on_tick(&mut self) {
        self.raft.tick();
        // Requests that found no leader: try again now, unless their client gave up.
        for reply in std::mem::take(&mut self.reads_waiting_leader) {
            if !reply.is_closed() {
                self.start_read(reply);
            }
        }
        for (command, reply) in std::mem::take(&mut self.forwarded_waiting) {
            if !reply.is_closed() {
                self.start_proposal(command, reply);
            }
        }
        let now = Instant::now();
        let election_timeout = self.tick * 20;
        let role = self.raft.role();
        for (target, started, reply) in std::mem::take(&mut self.step_downs) {
            if role != Role::Leader {
                let _ = reply.send(Ok(self.raft.leader().unwrap_or(target)));
            } else if now.duration_since(started) > election_timeout {
                let _ = reply.send(Err(NodeError::NoLeader));
            } else {
                self.step_downs.push((target, started, reply));
            }
        }
        self.proposals.retain(|_, (_, reply)| !reply.is_closed());
        self.reads_by_context.retain(|_, reply| !reply.is_closed());
    }

    fn on_request(&mut self, request: Request) {
        if let Some(error) = &self.fatal {
            let error = NodeError::Storage(error.clone());
            match request {
                Request::Propose { reply, .. } => drop(reply.send(Err(error))),
                Request::Read { reply } => drop(reply.send(Err(error))),
                Request::StepDown { reply } => drop(reply.send(Err(error))),
                Request::Snapshot { reply } => drop(reply.send(Err(error))),
                Request::Msync { reply } => drop(reply.send(Err(error))),
                Request::Ping { reply } => drop(reply.send(())),
            }
            return;
        }
        match request {
            Request::Propose { command, reply } => self.start_proposal(command, reply),
            Request::Read { reply } => self.start_read(reply),
            Request::StepDown { reply } => self.start_step_down(reply),
            Request::Snapshot { reply } => {
                self.snapshot_waiters.push(reply);
                self.maybe_snapshot(true);
            }
            Request::Msync { reply } => {
                let _ = self.disk_jobs.send(DiskJob::Msync { reply });
            }
            Request::Ping { reply } => drop(reply.send(())),
        }
    }

    fn start_proposal(&mut self, command: Bytes, reply: Reply<Applied>) {
        match self.raft.propose(command.clone()) {
            Ok((term, index)) => {
                self.shared.metrics.proposals.inc();
                self.proposals.insert(index, (term, reply));
            }
            Err(ProposeError::NotLeader { leader: Some(leader) }) => {
                let _ = reply.send(Err(NodeError::NotLeader(Some(leader))));
            }
            Err(ProposeError::NotLeader { leader: None }) | Err(ProposeError::TransferInProgress) => {
                self.forwarded_waiting.push((command, reply));
            }
        }
    }

    fn start_read(&mut self, reply: Reply<()>) {
        let context = self.next_read_context;
        match self.raft.read_index(context) {
            Ok(()) => {
                self.next_read_context += 1;
                self.reads_by_context.insert(context, reply);
            }
            Err(_) => self.reads_waiting_leader.push(reply),
        }
    }

    fn start_step_down(&mut self, reply: Reply<NodeId>) {
        if self.raft.role() != Role::Leader {
            let _ = reply.send(Err(NodeError::NotLeader(self.raft.leader())));
            return;
        }
        let Some(target) = self.raft.most_up_to_date_follower() else {
            let _ = reply.send(Err(NodeError::Invalid("no follower to hand leadership to".into())));
            return;
        };
        match self.raft.transfer_leadership(target) {
            Ok(()) => self.step_downs.push((target, Instant::now(), reply)),
            Err(error) => drop(reply.send(Err(NodeError::Invalid(error.to_string())))),
        }
    }

    // ------------------------------------------------------------ the Ready loop

    fn handle_ready(&mut self) {
        let mut ready = self.raft.ready();
        if let Some(soft) = ready.soft_state {
            tracing::info!(role = soft.role.as_str(), term = soft.term, leader = ?soft.leader, "role changed");
            let _ = self.role_tx.send((soft.role, soft.term, soft.leader));
        }
        // 1. Messages that depend on nothing in this Ready go out at once.
        self.outbox.send(std::mem::take(&mut ready.messages));
        // 2. Persist on the disk thread. A Ready that only moves the commit index need
        // not wait: the commit index is a lower bound that may lag (RAFT-NOTES #3), so
        // its write is queued, in order, and the Ready finishes at once.
        let must_sync = ready.must_sync;
        if !must_sync && ready.hard_state.is_none() {
            self.finish_ready(ready);
            return;
        }
        let job = DiskJob::Persist {
            hard_state: ready.hard_state,
            entries: std::mem::take(&mut ready.entries),
            snapshot: ready.snapshot.clone(),
            must_sync,
        };
        if self.disk_jobs.send(job).is_err() {
            self.on_fatal("disk thread stopped".into());
            return;
        }
        if must_sync {
            self.in_flight = Some(InFlight { ready, started: Instant::now() });
        } else {
            self.unawaited_persists += 1;
            self.finish_ready(ready);
        }
    }

    fn on_disk_done(&mut self, done: DiskDone) {
        match done {
            DiskDone::Persisted(Ok(_)) if self.unawaited_persists > 0 => self.unawaited_persists -= 1,
            DiskDone::Persisted(Ok(stats)) => {
                let in_flight = self.in_flight.take().expect("persisted without a Ready in flight");
                if stats.msyncs > 0 {
                    self.shared.metrics.msync_seconds.observe(stats.duration.as_secs_f64());
                }
                self.shared.metrics.persist_seconds.observe(in_flight.started.elapsed().as_secs_f64());
                self.finish_ready(in_flight.ready);
            }
            DiskDone::Persisted(Err(error)) => self.on_fatal(error),
            DiskDone::SnapshotSaved(result) => {
                self.snapshot_in_progress = false;
                match result {
                    Ok(meta) => {
                        self.snapshot_index = meta.index;
                        for reply in self.snapshot_waiters.drain(..) {
                            let _ = reply.send(Ok(meta.clone()));
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, "snapshot failed");
                        for reply in self.snapshot_waiters.drain(..) {
                            let _ = reply.send(Err(NodeError::Storage(error.clone())));
                        }
                    }
                }
            }
        }
    }

    /// Steps 3 to 5 of the Ready contract, once the state is durable.
    fn finish_ready(&mut self, mut ready: Ready) {
        self.outbox.send(std::mem::take(&mut ready.persisted_messages));
        if let Some(snapshot) = ready.snapshot.take() {
            self.install_snapshot(snapshot);
        }
        self.apply(&ready.committed_entries);
        for read in &ready.read_states {
            if let Some(reply) = self.reads_by_context.remove(&read.context) {
                self.reads_waiting_apply.push((read.index, reply));
            }
        }
        self.raft.advance();
        self.release_reads();
        *self.shared.status.lock().expect("status lock") = self.raft.status();
        self.maybe_snapshot(false);
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) {
        match StateMachine::load_snapshot_shared(&snapshot.data) {
            Ok(machine) => {
                *self.shared.kv.write().expect("kv lock") = machine;
                self.snapshot_index = snapshot.meta.index;
                *self.shared.snapshot.lock().expect("snapshot lock") = Some(snapshot);
            }
            // The bytes were checksummed by the transport; a leader's snapshot that does
            // not decode is a bug we cannot recover from safely.
            Err(error) => {
                panic!("node {}: snapshot from the leader does not decode: {error}", self.raft.id())
            }
        }
    }

    fn apply(&mut self, committed: &[Entry]) {
        if committed.is_empty() {
            return;
        }
        let mut kv = self.shared.kv.write().expect("kv lock");
        for entry in committed {
            let outcome = match entry.kind {
                EntryKind::Normal => match Command::decode_shared(&entry.data) {
                    Ok(command) => Ok(kv.apply(entry.index, &command)),
                    Err(error) => {
                        // Commands are validated before proposing; every node skips the
                        // same entry the same way, so the replicas stay identical.
                        tracing::error!(index = entry.index, %error, "committed entry does not decode; skipped");
                        kv.advance_applied(entry.index);
                        Err(NodeError::Invalid(error.to_string()))
                    }
                },
                EntryKind::Noop | EntryKind::Config => {
                    kv.advance_applied(entry.index);
                    continue;
                }
            };
            // Waiters at or below this index whose entry was replaced are resolved too.
            while let Some(entry_waiter) = self.proposals.first_entry() {
                if *entry_waiter.key() > entry.index {
                    break;
                }
                let (index, (term, reply)) = entry_waiter.remove_entry();
                let result = if index == entry.index && term == entry.term {
                    outcome.clone().map(|outcome| Applied { index, outcome })
                } else {
                    Err(NodeError::Dropped)
                };
                let _ = reply.send(result);
            }
        }
        self.shared.metrics.applied_entries.add(committed.len() as u64);
    }

    fn release_reads(&mut self) {
        let applied = self.raft.applied_index();
        for reply in split_ready_reads(&mut self.reads_waiting_apply, applied) {
            let _ = reply.send(Ok(()));
        }
    }

    fn maybe_snapshot(&mut self, forced: bool) {
        let applied = self.raft.applied_index();
        if self.snapshot_in_progress {
            return;
        }
        if applied <= self.snapshot_index
            || (!forced && applied - self.snapshot_index < self.snapshot_entries)
        {
            if forced {
                // Nothing new to snapshot: answer with the latest snapshot's own meta.
                let latest =
                    self.shared.snapshot.lock().expect("snapshot lock").as_ref().map(|s| s.meta.clone());
                let meta = latest
                    .unwrap_or_else(|| SnapshotMeta { index: self.snapshot_index, ..Default::default() });
                for reply in self.snapshot_waiters.drain(..) {
                    let _ = reply.send(Ok(meta.clone()));
                }
            }
            return;
        }
        let mut data = Vec::new();
        {
            let kv = self.shared.kv.read().expect("kv lock");
            assert_eq!(kv.applied_index(), applied, "node {}: state machine behind applied", self.raft.id());
            kv.write_snapshot(&mut data).expect("writing to a Vec cannot fail");
        }
        let meta = match self.raft.compact(applied) {
            Ok(meta) => meta,
            Err(error) => {
                tracing::warn!(%error, "compaction refused");
                for reply in self.snapshot_waiters.drain(..) {
                    let _ = reply.send(Err(NodeError::Invalid(format!("compaction refused: {error}"))));
                }
                return;
            }
        };
        // The log's first index moved: /status shows it now, not at the next Ready.
        *self.shared.status.lock().expect("status lock") = self.raft.status();
        let data = Bytes::from(data);
        *self.shared.snapshot.lock().expect("snapshot lock") =
            Some(Snapshot { meta: meta.clone(), data: data.clone() });
        self.snapshot_in_progress = true;
        let _ = self.disk_jobs.send(DiskJob::SaveSnapshot { meta, data });
    }

    fn on_fatal(&mut self, error: String) {
        tracing::error!(%error, "storage failed: no more writes are acknowledged; restart the node");
        self.shared.metrics.storage_errors.inc();
        self.fatal = Some(error.clone());
        self.fail_all(NodeError::Storage(error));
    }

    fn fail_all(&mut self, error: NodeError) {
        for (_, (_, reply)) in std::mem::take(&mut self.proposals) {
            let _ = reply.send(Err(error.clone()));
        }
        for (_, reply) in std::mem::take(&mut self.forwarded_waiting) {
            let _ = reply.send(Err(error.clone()));
        }
        for (_, reply) in self.reads_by_context.drain() {
            let _ = reply.send(Err(error.clone()));
        }
        for (_, reply) in self.reads_waiting_apply.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
        for reply in self.reads_waiting_leader.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
    }
}

/// Reads in `waiting` whose index is applied, split off to be answered.
pub(crate) fn split_ready_reads<T>(waiting: &mut Vec<(u64, T)>, applied: u64) -> Vec<T> {
    let mut ready = Vec::new();
    let mut index = 0;
    while index < waiting.len() {
        if waiting[index].0 <= applied {
            ready.push(waiting.swap_remove(index).1);
        } else {
            index += 1;
        }
    }
    ready
}
