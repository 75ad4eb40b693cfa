//! The tokio shell around the driver core: one task owns the `DriverCore`, feeds it
//! ticks, peer messages and requests, and carries out its actions (messages to the
//! transport, writes to the disk thread, answers to waiting handlers). It makes no
//! decision of its own: those are in `core`, which the simulator runs as it is.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::kv::{Command, StateMachine};
use crate::raft::{Message, MessageBody, NodeId, Role, SnapshotMeta, Status};

use super::core::StorageFailure;
use super::core::{Action, Answer, Applied, DriverCore, LeaseState, NodeError, SharedKv, Token};
use super::disk::{DiskDone, DiskJob, PersistStats};
use super::version::{Feature, MemberVersions, Unsupported, Version};
use crate::server::metrics::Metrics;
use crate::store::snapshot::WrittenSnapshot;

/// Where the driver's outgoing messages go (the peer transport).
pub trait Outbox: Send + 'static {
    /// Queues `messages` for their peers; never waits.
    fn send(&self, messages: Vec<Message>);
    /// The peers to reach now (every member but this node, with its address).
    fn set_peers(&self, peers: &HashMap<NodeId, String>);
}

/// The driver's error when a committed configuration removed this node.
pub const REMOVED: &str = "this node was removed from the cluster by a committed configuration";

/// Requests from HTTP handlers and the admin socket to the driver.
pub(crate) enum Request {
    Propose { command: Bytes, reply: Reply<Applied> },
    ChangeMembers { change: crate::kv::MemberChange, reply: Reply<Applied> },
    Read { reply: Reply<()> },
    StepDown { to: Option<NodeId>, reply: Reply<NodeId> },
    Snapshot { reply: Reply<SnapshotMeta> },
    Msync { reply: Reply<PersistStats> },
    Ping { reply: oneshot::Sender<()> },
    Join { request: super::core::JoinRequest, reply: Reply<super::core::Joined> },
    Probe { asker: NodeId, reply: oneshot::Sender<super::start::ProbeAnswer> },
    LeaseKeepalive { id: u64, reply: Reply<Option<LeaseState>> },
    LeaseTimeToLive { id: u64, reply: Reply<Option<LeaseState>> },
}

/// What arrives from peers.
enum Inbound {
    Messages(Vec<Message>),
    /// An InstallSnapshot whose data was decoded off the driver's loop.
    Snapshot(Box<Message>, StateMachine),
}

/// State shared with the handlers, updated by the driver.
pub struct Shared {
    /// The key-value state machine. Written only by the driver core, in log order;
    /// never held across an await.
    pub kv: SharedKv,
    /// The core's status after the last round of the loop.
    pub status: Mutex<Status>,
    /// Every member's advertised address by id, this node included: how logs, /status
    /// and /metrics name members.
    pub members: RwLock<HashMap<NodeId, String>>,
    /// The cluster's id as this node knows it (0 until the bootstrap record is applied
    /// here): sent on peer requests, and checked on those that arrive.
    pub cluster_id: Arc<std::sync::atomic::AtomicU64>,
    /// Why the disk refuses writes, while it does (shown by /health and /status).
    pub disk_full: Mutex<Option<String>>,
    /// Counters and histograms.
    pub metrics: Metrics,
    /// The members' versions: reports from peer requests, waiting for the driver, and
    /// the driver's view of them.
    pub versions: Mutex<SharedVersions>,
    /// The state hashes computed at hash check entries (`mmapd-admin check`).
    pub hashes: super::hashes::StateHashes,
    /// The live watchers, fed every round of history the core hands out.
    pub watch_hub: Arc<crate::server::watch_hub::WatchHub>,
}

/// The members' versions as the edge and the driver share them.
#[derive(Debug)]
pub struct SharedVersions {
    /// Reports not yet handed to the core (the latest per node). Bounded by the nodes
    /// that send peer requests; drained at every tick.
    pub pending: HashMap<NodeId, Version>,
    /// The core's view after the last tick.
    pub view: MemberVersions,
    /// The configuration's members (voters and learners) after the last tick.
    pub members: Vec<NodeId>,
}

impl SharedVersions {
    /// No reports yet.
    pub fn new(view: MemberVersions) -> SharedVersions {
        SharedVersions { pending: HashMap::new(), view, members: Vec::new() }
    }
}

impl AsRef<crate::server::metrics::Metrics> for Shared {
    fn as_ref(&self) -> &crate::server::metrics::Metrics {
        &self.metrics
    }
}

impl Shared {
    /// A member's advertised address, if it is a member.
    pub fn address_of(&self, id: NodeId) -> Option<String> {
        self.members.read().expect("members lock").get(&id).cloned()
    }

    /// Whether `id` is in this node's member list (which may be stale).
    pub fn is_member(&self, id: NodeId) -> bool {
        self.members.read().expect("members lock").contains_key(&id)
    }

    /// A peer request said `id` runs `version`: handed to the core at the next tick.
    pub fn report_version(&self, id: NodeId, version: Version) {
        let mut versions = self.versions.lock().expect("versions lock");
        if versions.view.reported(id) != Some(version) {
            versions.pending.insert(id, version);
        }
    }

    /// The version `id` is taken to run, as the driver saw it at its last tick (its
    /// report, else the floor).
    pub fn version_of(&self, id: NodeId) -> Version {
        self.versions.lock().expect("versions lock").view.of(id)
    }

    /// The cluster version as the driver saw it at its last tick.
    pub fn cluster_version(&self) -> Version {
        let versions = self.versions.lock().expect("versions lock");
        versions.view.cluster_version(&versions.members)
    }

    /// Whether the cluster may use `feature`, as the driver saw it at its last tick (the
    /// leader's core decides again when the request reaches it).
    pub fn cluster_supports(&self, feature: Feature) -> Result<(), Unsupported> {
        let versions = self.versions.lock().expect("versions lock");
        versions.view.supports(feature, &versions.members)
    }

    /// Each member with the version it reported (`None`: none, an older release).
    pub fn member_versions(&self) -> Vec<(NodeId, Option<Version>)> {
        let versions = self.versions.lock().expect("versions lock");
        versions.members.iter().map(|&id| (id, versions.view.reported(id))).collect()
    }

    /// How logs name a node: its address, or its id in hex when it is not a member.
    pub fn name(&self, id: NodeId) -> String {
        self.address_of(id).unwrap_or_else(|| format!("{id:016x}"))
    }
}

/// A cheap handle to the driver.
#[derive(Clone)]
pub struct NodeHandle {
    requests: mpsc::Sender<Request>,
    peer_inbox: mpsc::Sender<Inbound>,
    /// Shared state.
    pub shared: Arc<Shared>,
    /// This node's id.
    pub id: NodeId,
    /// The role, watched by sd-notify and step-down.
    pub role: watch::Receiver<(Role, u64, Option<NodeId>)>,
}

/// Why a peer's messages were not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliverError {
    /// The node is shutting down.
    ShuttingDown,
    /// A message is impossible: refused before the core saw it.
    Refused(String),
}

impl NodeHandle {
    /// Proposes a command and waits until it is committed and applied here.
    pub async fn propose(&self, command: &Command) -> Result<Applied, NodeError> {
        self.propose_encoded(command.encode()).await
    }

    /// `propose`, for a command the caller has encoded already (`Command::encode`).
    pub async fn propose_encoded(&self, command: Bytes) -> Result<Applied, NodeError> {
        self.ask(|reply| Request::Propose { command, reply }).await
    }

    /// Proposes a membership change (on the leader) and waits until it is applied here.
    pub async fn change_members(&self, change: crate::kv::MemberChange) -> Result<Applied, NodeError> {
        self.ask(|reply| Request::ChangeMembers { change, reply }).await
    }

    /// Keeps lease `id` alive, on the leader (`DriverCore::lease_keepalive`): its state
    /// after, `None` when it does not exist or expired.
    pub async fn lease_keepalive(&self, id: u64) -> Result<Option<LeaseState>, NodeError> {
        self.ask(|reply| Request::LeaseKeepalive { id, reply }).await
    }

    /// Lease `id`'s time left, on the leader (`DriverCore::lease_time_to_live`).
    pub async fn lease_time_to_live(&self, id: u64) -> Result<Option<LeaseState>, NodeError> {
        self.ask(|reply| Request::LeaseTimeToLive { id, reply }).await
    }

    /// Waits until a linearizable read may be served from the local state machine
    /// (thesis §6.4: the read index is confirmed and applied here).
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        self.ask(|reply| Request::Read { reply }).await
    }

    /// Transfers leadership to the most up-to-date follower; returns it.
    pub async fn step_down(&self) -> Result<NodeId, NodeError> {
        self.ask(|reply| Request::StepDown { to: None, reply }).await
    }

    /// Hands leadership to `to` (etcd's MoveLeader); refused unless this node leads
    /// and `to` is another voter.
    pub async fn move_leader(&self, to: NodeId) -> Result<NodeId, NodeError> {
        self.ask(|reply| Request::StepDown { to: Some(to), reply }).await
    }

    /// Takes a snapshot now and compacts the log.
    pub async fn snapshot(&self) -> Result<SnapshotMeta, NodeError> {
        self.ask(|reply| Request::Snapshot { reply }).await
    }

    /// Forces an msync of every mapped file.
    pub async fn msync(&self) -> Result<PersistStats, NodeError> {
        self.ask(|reply| Request::Msync { reply }).await
    }

    /// Asks the leader's core to add a joining node (see `DriverCore::join`).
    pub async fn join(&self, request: super::core::JoinRequest) -> Result<super::core::Joined, NodeError> {
        self.ask(|reply| Request::Join { request, reply }).await
    }

    /// What this node tells a node with an empty data directory about the cluster.
    pub async fn probe_answer(&self, asker: NodeId) -> Result<super::start::ProbeAnswer, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Probe { asker, reply }).await?;
        rx.await.map_err(|_| NodeError::ShuttingDown)
    }

    /// Answers once the driver's event loop has come round: the watchdog's proof of life.
    pub async fn ping(&self) -> Result<(), NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Ping { reply }).await?;
        rx.await.map_err(|_| NodeError::ShuttingDown)
    }

    /// Hands messages from a peer to the core. Waits when the driver is behind. The
    /// data of an InstallSnapshot is decoded here, off the driver's loop; one that does
    /// not decode is refused and never reaches the core or the disk.
    pub async fn deliver(&self, messages: Vec<Message>) -> Result<(), DeliverError> {
        if let Some(first) = messages.first() {
            self.shared.metrics.note_peer_contact(first.from);
        }
        let mut plain = Vec::with_capacity(messages.len());
        for message in messages {
            let MessageBody::InstallSnapshot { snapshot } = &message.body else {
                plain.push(message);
                continue;
            };
            let data = snapshot.data.clone();
            let index = snapshot.meta.index;
            let decoded = tokio::task::spawn_blocking(move || StateMachine::load_snapshot_shared(&data))
                .await
                .map_err(|_| DeliverError::ShuttingDown)?;
            let machine = match decoded {
                Ok(machine) if machine.applied_index() == index => machine,
                Ok(machine) => {
                    return Err(DeliverError::Refused(format!(
                        "InstallSnapshot at index {index} holds a state machine applied to {}",
                        machine.applied_index()
                    )))
                }
                Err(error) => {
                    return Err(DeliverError::Refused(format!(
                        "InstallSnapshot data does not decode: {error}"
                    )))
                }
            };
            if !plain.is_empty() {
                self.push(Inbound::Messages(std::mem::take(&mut plain))).await?;
            }
            self.push(Inbound::Snapshot(Box::new(message), machine)).await?;
        }
        if !plain.is_empty() {
            self.push(Inbound::Messages(plain)).await?;
        }
        Ok(())
    }

    async fn push(&self, inbound: Inbound) -> Result<(), DeliverError> {
        self.peer_inbox.send(inbound).await.map_err(|_| DeliverError::ShuttingDown)
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
    pub core: DriverCore,
    pub tick: Duration,
    pub disk_jobs: std::sync::mpsc::SyncSender<DiskJob>,
    pub disk_done: mpsc::Receiver<DiskDone>,
    pub outbox: Box<dyn Outbox>,
    pub shared: Arc<Shared>,
    pub shutdown: watch::Receiver<bool>,
    /// Where snapshot files are written (the store's directory).
    pub data_dir: std::path::PathBuf,
}

/// A snapshot built off the loop: its data and its file, or why it failed.
type Built = (SnapshotMeta, Result<(Bytes, WrittenSnapshot), StorageFailure>);

/// Requests queued for the driver at most.
const REQUEST_QUEUE: usize = 65_536;
/// Peer deliveries queued for the driver at most.
const PEER_QUEUE: usize = 1024;
/// Requests taken in one round of the loop, so one Ready and one write serve them all.
const REQUESTS_PER_ROUND: usize = 4096;
/// Ticks between scans for requests whose client went away.
const ABANDON_SCAN_TICKS: u64 = 10;

/// Starts the driver task; returns its handle and the task. The task ends with an
/// error when storage failed in a way the node cannot continue from.
pub(crate) fn spawn(parts: DriverParts) -> (NodeHandle, tokio::task::JoinHandle<Result<(), String>>) {
    let (requests_tx, requests) = mpsc::channel(REQUEST_QUEUE);
    let (peer_tx, peer_inbox) = mpsc::channel(PEER_QUEUE);
    // The core builds one snapshot at a time.
    let (built_tx, built_rx) = mpsc::channel(1);
    let raft = parts.core.raft();
    let id = raft.id();
    let (role_tx, role_rx) = watch::channel((raft.role(), raft.term(), raft.leader()));
    let handle = NodeHandle {
        requests: requests_tx,
        peer_inbox: peer_tx,
        shared: parts.shared.clone(),
        id,
        role: role_rx,
    };
    let shell = Shell {
        core: parts.core,
        tick: parts.tick,
        ticks: 0,
        started: Instant::now(),
        disk_jobs: parts.disk_jobs,
        disk_done: parts.disk_done,
        persists_started: VecDeque::new(),
        outbox: parts.outbox,
        shared: parts.shared,
        requests,
        peer_inbox,
        role_tx,
        shutdown: parts.shutdown,
        next_token: 1,
        waiting: HashMap::new(),
        data_dir: parts.data_dir,
        built_tx,
        built_rx,
        built: None,
        last_from_leader: None,
    };
    (handle, tokio::spawn(shell.run()))
}

/// Where an answer goes.
type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

/// A request the core has not answered yet.
enum Waiting {
    Proposal(Reply<Applied>),
    Read(Reply<()>),
    StepDown(Reply<NodeId>),
    Snapshot(Reply<SnapshotMeta>),
    Join(Reply<super::core::Joined>),
    Lease(Reply<Option<LeaseState>>),
}

impl Waiting {
    fn is_closed(&self) -> bool {
        match self {
            Waiting::Proposal(reply) => reply.is_closed(),
            Waiting::Read(reply) => reply.is_closed(),
            Waiting::StepDown(reply) => reply.is_closed(),
            Waiting::Snapshot(reply) => reply.is_closed(),
            Waiting::Join(reply) => reply.is_closed(),
            Waiting::Lease(reply) => reply.is_closed(),
        }
    }
}

struct Shell {
    core: DriverCore,
    tick: Duration,
    ticks: u64,
    /// The lease clock's origin: the core is told the milliseconds since (monotonic).
    started: Instant,
    disk_jobs: std::sync::mpsc::SyncSender<DiskJob>,
    disk_done: mpsc::Receiver<DiskDone>,
    /// When each write handed to the disk was queued, oldest first.
    persists_started: VecDeque<Instant>,
    outbox: Box<dyn Outbox>,
    shared: Arc<Shared>,
    requests: mpsc::Receiver<Request>,
    peer_inbox: mpsc::Receiver<Inbound>,
    role_tx: watch::Sender<(Role, u64, Option<NodeId>)>,
    shutdown: watch::Receiver<bool>,
    next_token: Token,
    waiting: HashMap<Token, Waiting>,
    data_dir: std::path::PathBuf,
    built_tx: mpsc::Sender<Built>,
    built_rx: mpsc::Receiver<Built>,
    /// The file of the snapshot just reported built, until the core saves or drops it.
    built: Option<WrittenSnapshot>,
    /// When a delivery from the leader last arrived, while following it.
    last_from_leader: Option<(NodeId, Instant)>,
}

impl Shell {
    async fn run(mut self) -> Result<(), String> {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                done = self.disk_done.recv() => match done {
                    Some(done) => self.on_disk_done(done),
                    None => return Err("the disk thread stopped".into()),
                },
                Some(built) = self.built_rx.recv() => self.on_snapshot_built(built),
                Some(inbound) = self.peer_inbox.recv() => {
                    self.on_inbound(inbound);
                    while let Ok(more) = self.peer_inbox.try_recv() {
                        self.on_inbound(more);
                    }
                }
                Some(request) = self.requests.recv() => {
                    self.on_request(request);
                    for _ in 0..REQUESTS_PER_ROUND {
                        match self.requests.try_recv() {
                            Ok(request) => self.on_request(request),
                            Err(_) => break,
                        }
                    }
                }
                _ = ticker.tick() => self.on_tick(),
                _ = self.shutdown.changed() => break,
            }
            self.observe_time();
            self.core.poll();
            if let Err(error) = self.carry_out() {
                self.core.shut_down();
                let _ = self.carry_out();
                return Err(error);
            }
        }
        self.core.shut_down();
        let _ = self.carry_out();
        Ok(())
    }

    fn on_inbound(&mut self, inbound: Inbound) {
        self.observe_time();
        self.note_leader_contact(&inbound);
        match inbound {
            Inbound::Messages(messages) => self.core.step(messages),
            Inbound::Snapshot(message, machine) => self.core.step_decoded_snapshot(*message, machine),
        }
    }

    /// Measures gaps between deliveries from the leader this node follows.
    fn note_leader_contact(&mut self, inbound: &Inbound) {
        let from = match inbound {
            Inbound::Messages(messages) => messages.first().map(|m| m.from),
            Inbound::Snapshot(message, _) => Some(message.from),
        };
        // The core's own view: no lock on the shared status on every delivery.
        let raft = self.core.raft();
        let following = raft.role() == Role::Follower && raft.leader().is_some() && from == raft.leader();
        let (Some(from), true) = (from, following) else { return };
        let now = Instant::now();
        if let Some((leader, last)) = self.last_from_leader {
            if leader == from {
                let gap = now.duration_since(last).as_secs_f64();
                self.shared.metrics.leader_contact_gap_seconds.observe(gap);
                self.shared.metrics.leader_contact_gap_max.observe(gap);
            }
        }
        self.last_from_leader = Some((from, now));
    }

    fn on_snapshot_built(&mut self, (meta, result): Built) {
        let result = result.map(|(data, written)| {
            self.built = Some(written);
            data
        });
        self.core.snapshot_built(meta, result);
    }

    /// Serialises and writes a snapshot on a thread of its own at the least CPU priority
    /// (`store::lower_thread_priority`), then reports back: on a busy machine a large
    /// snapshot takes the cores the loop and the disk thread leave, not theirs. Without a
    /// new thread (out of threads), the build fails and the core backs off.
    fn build_snapshot(&self, meta: SnapshotMeta, machine: StateMachine) {
        let (dir, done, metrics) = (self.data_dir.clone(), self.built_tx.clone(), self.shared.clone());
        let job_meta = meta.clone();
        let work = move || {
            if let Err(error) = crate::store::lower_thread_priority() {
                tracing::debug!(%error, "the snapshot thread keeps its priority");
            }
            let started = Instant::now();
            let result = super::disk::build_snapshot(&dir, &job_meta, machine);
            metrics.metrics.snapshot_build_seconds.observe(started.elapsed().as_secs_f64());
            // The loop is gone if this fails: nothing waits for the snapshot.
            let _ = done.blocking_send((job_meta, result));
        };
        if let Err(error) = std::thread::Builder::new().name("mmapd-snapshot".into()).spawn(work) {
            // A failed build: the core backs off and tries again. The channel is empty
            // (one build at a time, and the last one's result was taken).
            let failure = StorageFailure::Other(format!("cannot start a snapshot thread: {error}"));
            let _ = self.built_tx.try_send((meta, Err(failure)));
        }
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        self.exchange_versions();
        self.observe_time();
        self.core.tick();
        if self.ticks % ABANDON_SCAN_TICKS == 0 {
            let gone: HashSet<Token> =
                self.waiting.iter().filter(|(_, w)| w.is_closed()).map(|(token, _)| *token).collect();
            if !gone.is_empty() {
                self.waiting.retain(|token, _| !gone.contains(token));
                self.core.abandon_all(&gone);
            }
        }
    }

    /// Hands the versions peers reported to the core, and publishes its view.
    fn exchange_versions(&mut self) {
        let mut changed = Vec::new();
        {
            let mut versions = self.shared.versions.lock().expect("versions lock");
            for (id, version) in versions.pending.drain() {
                if self.core.member_versions().reported(id) != Some(version) {
                    changed.push((id, version));
                }
                self.core.member_version(id, version);
            }
            versions.view.clone_from(self.core.member_versions());
            let conf = self.core.raft().conf_state();
            versions.members.clear();
            versions.members.extend(conf.voters.iter().chain(conf.learners.iter()));
        }
        // Named outside the versions lock: naming takes the members lock.
        for (id, version) in changed {
            tracing::info!(peer = %self.shared.name(id), version, "a peer reports its version");
        }
    }

    /// Tells the core the time (its lease clock's), before anything it does: a
    /// keepalive renews from the time it is confirmed, not the last tick's.
    fn observe_time(&mut self) {
        self.core.observe_time(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX));
    }

    fn on_request(&mut self, request: Request) {
        self.observe_time();
        let token = self.next_token;
        self.next_token += 1;
        match request {
            Request::Propose { command, reply } => {
                self.shared.metrics.proposals.inc();
                self.waiting.insert(token, Waiting::Proposal(reply));
                self.core.propose(token, command);
            }
            Request::ChangeMembers { change, reply } => {
                self.waiting.insert(token, Waiting::Proposal(reply));
                self.core.propose_member_change(token, change);
            }
            Request::Read { reply } => {
                self.waiting.insert(token, Waiting::Read(reply));
                self.core.read(token);
            }
            Request::StepDown { to, reply } => {
                self.waiting.insert(token, Waiting::StepDown(reply));
                self.core.step_down(token, to);
            }
            Request::Snapshot { reply } => {
                self.waiting.insert(token, Waiting::Snapshot(reply));
                self.core.snapshot(token);
            }
            Request::Msync { reply } => {
                if let Err(std::sync::mpsc::TrySendError::Full(DiskJob::Msync { reply })) =
                    self.disk_jobs.try_send(DiskJob::Msync { reply })
                {
                    let _ = reply.send(Err(NodeError::Storage("the disk queue is full; retry".into())));
                }
            }
            Request::Ping { reply } => drop(reply.send(())),
            Request::Join { request, reply } => {
                self.waiting.insert(token, Waiting::Join(reply));
                self.core.join(token, request);
            }
            Request::Probe { asker, reply } => drop(reply.send(self.core.probe_answer(asker))),
            Request::LeaseKeepalive { id, reply } => {
                self.waiting.insert(token, Waiting::Lease(reply));
                self.core.lease_keepalive(token, id);
            }
            Request::LeaseTimeToLive { id, reply } => {
                self.waiting.insert(token, Waiting::Lease(reply));
                self.core.lease_time_to_live(token, id);
            }
        }
    }

    fn on_disk_done(&mut self, done: DiskDone) {
        self.observe_time();
        match done {
            DiskDone::Persisted(result) => {
                if let Some(started) = self.persists_started.pop_front() {
                    self.shared.metrics.persist_seconds.observe(started.elapsed().as_secs_f64());
                }
                if let Ok(stats) = &result {
                    if stats.msyncs > 0 {
                        self.shared.metrics.msync_seconds.observe(stats.duration.as_secs_f64());
                    }
                }
                self.core.persisted(result.map(|_| ()));
            }
            DiskDone::SnapshotSaved(result) => self.core.snapshot_saved(result),
        }
    }

    /// Carries out the core's actions. Err: storage failed for good.
    fn carry_out(&mut self) -> Result<(), String> {
        let actions = self.core.take_actions();
        let result = self.carry_out_actions(actions);
        // A built snapshot the core did not save in the round that reported it (one
        // from the leader covered it) is not needed.
        if let Some(unused) = self.built.take() {
            tracing::info!(index = unused.meta().index, "dropping a snapshot overtaken by the leader's");
            unused.discard();
        }
        result
    }

    fn carry_out_actions(&mut self, actions: Vec<Action>) -> Result<(), String> {
        if actions.is_empty() {
            return Ok(());
        }
        let mut fatal = None;
        for action in actions {
            match action {
                Action::RoleChanged(soft) => {
                    let leader = soft.leader.map(|id| self.shared.name(id));
                    tracing::info!(
                        role = soft.role.as_str(),
                        term = soft.term,
                        leader = leader.as_deref().unwrap_or("none"),
                        "role changed"
                    );
                    let _ = self.role_tx.send((soft.role, soft.term, soft.leader));
                }
                Action::Send(messages) => self.outbox.send(messages),
                Action::Persist(job) => {
                    self.persists_started.push_back(Instant::now());
                    if self.disk_jobs.send(DiskJob::Persist(job)).is_err() {
                        fatal = Some("the disk thread stopped".to_owned());
                    }
                }
                Action::BuildSnapshot { meta, machine } => self.build_snapshot(meta, machine),
                Action::SaveSnapshot { meta, data } => {
                    tracing::info!(
                        index = meta.index,
                        term = meta.term,
                        bytes = data.len(),
                        "saving a snapshot"
                    );
                    let written = self.built.take().filter(|w| w.meta().index == meta.index);
                    let written = written.unwrap_or_else(|| {
                        panic!(
                            "node {}: the core saves a snapshot at {} it did not build",
                            self.core.raft().id(),
                            meta.index
                        )
                    });
                    if self.disk_jobs.send(DiskJob::AdoptSnapshot(written)).is_err() {
                        fatal = Some("the disk thread stopped".to_owned());
                    }
                }
                Action::DropOffLoop(machine) => drop(tokio::task::spawn_blocking(move || drop(machine))),
                Action::HashState { index, machine } => {
                    self.shared.hashes.pending(index);
                    let shared = self.shared.clone();
                    drop(tokio::task::spawn_blocking(move || {
                        let hash = crate::kv::hash_state(&machine);
                        tracing::info!(
                            revision = index,
                            crc32c = %format!("{:08x}", hash.crc32c),
                            keys = hash.keys,
                            "hashed the key-value state for a check"
                        );
                        shared.hashes.record(hash);
                    }));
                }
                Action::Answer(token, answer) => self.answer(token, answer),
                Action::Proposed { .. } => {}
                Action::Applied(entries) => self.shared.metrics.applied_entries.add(entries.len() as u64),
                Action::HistoryRound(round) => self.shared.watch_hub.publish(round),
                Action::InstalledSnapshot(snapshot) => {
                    let (index, term) = (snapshot.meta.index, snapshot.meta.term);
                    tracing::info!(index, term, "installed a snapshot from the leader");
                }
                Action::Refused { from, kind, reason } => {
                    tracing::warn!(peer = %self.shared.name(from), kind, %reason, "refused a peer message");
                    self.shared.metrics.peer_messages_refused.inc();
                }
                Action::MembersChanged(cluster) => self.follow_members(&cluster),
                Action::Removed => {
                    tracing::error!(
                        "{REMOVED}: stopping for good (exit status {})",
                        crate::server::EXIT_REMOVED
                    );
                    fatal = Some(REMOVED.to_owned());
                }
                Action::Fatal(error) => {
                    tracing::error!(%error, "storage failed: stopping so that recovery runs on restart");
                    self.shared.metrics.storage_errors.inc();
                    fatal = Some(error);
                }
            }
        }
        let status = self.core.status();
        // The core's applied index moves at `advance`, after the entries' actions (hash
        // checks included) were handed out, or at a snapshot install, past entries never
        // applied one by one: either way no hash check at or below it is still to come.
        self.shared.hashes.handled_through(status.applied);
        *self.shared.status.lock().expect("status lock") = status;
        let disk_full = self.core.disk_full().map(str::to_owned);
        let mut shown = self.shared.disk_full.lock().expect("disk_full lock");
        if *shown != disk_full {
            match &disk_full {
                Some(error) => {
                    tracing::error!(%error, "disk full: writes are refused until space is freed");
                    self.shared.metrics.storage_errors.inc();
                }
                None => tracing::info!("disk space is back: writes are accepted again"),
            }
            *shown = disk_full;
        }
        drop(shown);
        fatal.map_or(Ok(()), Err)
    }

    /// The cluster record changed: name members by it, reach its members, present its
    /// id. A record not bootstrapped yet (a restart before the bootstrap entry applied,
    /// or a data directory from before the record) changes nothing: the members from
    /// the start stay.
    fn follow_members(&mut self, cluster: &crate::kv::Cluster) {
        if cluster.id() == 0 {
            return;
        }
        let id = self.core.raft().id();
        let mut members: HashMap<NodeId, String> =
            cluster.members().iter().map(|(member, m)| (*member, m.address.clone())).collect();
        let previous = self.shared.members.read().expect("members lock").clone();
        if let (false, Some(address)) = (members.contains_key(&id), previous.get(&id)) {
            // A node that joins hears of itself when its learner entry reaches it.
            members.insert(id, address.clone());
        }
        self.shared.cluster_id.store(cluster.id(), std::sync::atomic::Ordering::Relaxed);
        if members == previous {
            return;
        }
        let listed: Vec<String> = cluster
            .members()
            .iter()
            .map(|(member, m)| format!("{member:016x}={}({})", m.address, m.role.as_str()))
            .collect();
        tracing::info!(cluster_id = %format!("{:016x}", cluster.id()), members = %listed.join(","), "members changed");
        let peers: HashMap<NodeId, String> =
            members.iter().filter(|(member, _)| **member != id).map(|(k, v)| (*k, v.clone())).collect();
        self.outbox.set_peers(&peers);
        *self.shared.members.write().expect("members lock") = members;
    }

    fn answer(&mut self, token: Token, answer: Answer) {
        let Some(waiting) = self.waiting.remove(&token) else { return };
        match (waiting, answer) {
            (Waiting::Proposal(reply), Answer::Proposal(result)) => drop(reply.send(result)),
            (Waiting::Read(reply), Answer::Read(result)) => drop(reply.send(result)),
            (Waiting::StepDown(reply), Answer::StepDown(result)) => drop(reply.send(result)),
            (Waiting::Snapshot(reply), Answer::Snapshot(result)) => drop(reply.send(result)),
            (Waiting::Join(reply), Answer::Join(result)) => drop(reply.send(result)),
            (Waiting::Lease(reply), Answer::Lease(result)) => drop(reply.send(result)),
            (_, answer) => {
                panic!("node {}: answer {answer:?} to a request of another kind", self.core.raft().id())
            }
        }
    }
}
