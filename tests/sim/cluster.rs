//! A deterministic simulation of a Raft cluster: the daemon's own driver core
//! (`mmapd::server::driver::core`, around the real Raft core and the real key-value
//! state machine), a simulated network and disks, clients, faults, and safety and
//! liveness checks. The simulator carries out the core's actions as the daemon's tokio
//! shell does (send, persist, save a snapshot, answer) and holds no driver logic.
//!
//! Time is counted in steps; every `STEPS_PER_TICK` steps every live node is ticked. In
//! one step the simulator delivers the messages that are due (in a random order), lets
//! every node hand out and handle its `Ready`, lets clients act, injects faults, and
//! then checks. All randomness comes from one `Rng`, so a seed replays a run exactly.

use super::linearizability::{check_history, Event, Operation, Verdict};
use super::rng::Rng;
use bytes::Bytes;
use mmapd::kv::{Command, StateMachine};
#[cfg(feature = "planted-bugs")]
use mmapd::raft::PlantedBugs;
use mmapd::raft::{
    ConfState, Config, Entry, EntryKind, HardState, InitialState, Message, MessageBody, NodeId, Raft, Role,
    Snapshot, SnapshotMeta,
};
#[cfg(feature = "planted-bugs")]
use mmapd::server::driver::core::DriverBugs;
use mmapd::server::driver::core::{Action, Answer, DriverConfig, DriverCore, NodeError, PersistJob, Token};
use mmapd::store::{Store, StoreOptions};
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};

/// The minimum election timeout T, in ticks.
pub const ELECTION_TICKS: u32 = 10;
/// Ticks between heartbeats.
pub const HEARTBEAT_TICKS: u32 = 2;
/// Steps (message deliveries and Ready rounds) per tick.
pub const STEPS_PER_TICK: u64 = 4;
/// Trace lines kept per run, printed when a check fails.
const TRACE_LINES: usize = 300;
/// Keys of the key-value map: few, so operations conflict.
const KEYS: u64 = 4;
/// Client operations in flight at once, so histories stay checkable.
const MAX_PENDING_WRITES: usize = 6;
const MAX_PENDING_READS: usize = 6;
/// A client gives up on a read after this many ticks (the read then counts as failed).
const READ_TIMEOUT_TICKS: u64 = 5 * ELECTION_TICKS as u64;
/// A client stops waiting for a write after this many ticks; its outcome stays unknown
/// until the entry's index is committed (by it or by another entry).
const WRITE_TIMEOUT_TICKS: u64 = 5 * ELECTION_TICKS as u64;
/// Budget of the linearizability search per key.
const MAX_LINEARIZABILITY_STATES: usize = 2_000_000;

/// Which bugs to plant in every node's core (only with the `planted-bugs` feature).
#[derive(Clone, Copy, Debug, Default)]
pub struct Bugs {
    #[cfg(feature = "planted-bugs")]
    pub planted: PlantedBugs,
    /// Bugs planted in every node's driver core.
    #[cfg(feature = "planted-bugs")]
    pub driver: DriverBugs,
}

/// What one run does.
#[derive(Clone, Debug)]
pub struct Options {
    /// The seed of every random choice.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Ticks with faults, before healing everything.
    pub fault_ticks: u64,
    /// After healing, the bound within which a leader must be elected and every pending
    /// proposal resolved.
    pub liveness_ticks: u64,
    /// Inject faults (crashes, partitions, loss, duplication, long delays).
    pub faults: bool,
    /// Clients act on their own (random proposals, reads, transfers).
    pub clients: bool,
    /// Check at send time that votes and acknowledgements are backed by the sender's disk
    /// (Fig. 2: durable before reply). Off, a bug there must show through its effects.
    pub check_durable_replies: bool,
    /// Run pre-vote (thesis §9.6); off on a quarter of the seeds to exercise plain elections.
    pub pre_vote: bool,
    /// Bugs to plant.
    pub bugs: Bugs,
    /// Mirror every node's disk into the real mmap store (`mmapd::store`) in a temp
    /// directory, and restart crashed nodes from what the store recovers, checked
    /// against the simulated disk.
    pub real_store: bool,
}

impl Options {
    /// The CI mix: seeds alternate 3 and 5 nodes.
    pub fn for_seed(seed: u64) -> Options {
        Options {
            seed,
            nodes: if seed % 2 == 0 { 3 } else { 5 },
            fault_ticks: 16_000,
            liveness_ticks: 20 * u64::from(ELECTION_TICKS),
            faults: true,
            clients: true,
            check_durable_replies: true,
            pre_vote: seed % 4 != 3,
            bugs: Bugs::default(),
            real_store: false,
        }
    }
}

/// The outcome of one run.
#[derive(Debug)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// Steps simulated.
    pub steps: u64,
    /// Faults injected.
    pub faults: u64,
    /// Linearizability searches that ran out of budget (not violations).
    pub inconclusive: u64,
    /// Entries committed, client writes that completed, reads served, terms with a leader.
    pub committed: u64,
    pub writes: u64,
    pub reads: u64,
    pub leaders: u64,
    /// Snapshots received from a leader and installed.
    pub snapshots_installed: u64,
    /// Leadership transfers the leader accepted.
    pub transfers: u64,
    /// The last trace lines (kept for replays).
    pub trace: Vec<String>,
    /// The first violation, with the trace that led to it.
    pub violation: Option<Violation>,
}

/// A broken check.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Which property: "election safety", "log matching", ...
    pub kind: &'static str,
    /// What exactly.
    pub detail: String,
    /// The last trace lines before it.
    pub trace: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "VIOLATION ({}): {}", self.kind, self.detail)?;
        writeln!(f, "last {} trace lines:", self.trace.len())?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// What a node's disk holds: only what was persisted survives a crash.
#[derive(Clone, Debug)]
pub struct Disk {
    pub hard_state: HardState,
    /// The latest snapshot, meta and state machine bytes.
    pub snapshot: Snapshot,
    /// Entries after the snapshot. Invariant: consecutive from `snapshot.meta.index + 1`.
    pub entries: Vec<Entry>,
}

impl Disk {
    fn last_index(&self) -> u64 {
        self.snapshot.meta.index + self.entries.len() as u64
    }

    fn term_at(&self, index: u64) -> Option<u64> {
        let snapshot_index = self.snapshot.meta.index;
        if index == snapshot_index {
            return Some(self.snapshot.meta.term);
        }
        if index < snapshot_index || index > self.last_index() {
            return None;
        }
        Some(self.entries[(index - snapshot_index - 1) as usize].term)
    }
}

/// One simulated server: its driver core (None while crashed) and its disk.
struct Node {
    id: NodeId,
    core: Option<DriverCore>,
    disk: Disk,
    /// Writes the core handed out that are not on the disk yet, oldest first: a crash
    /// loses them.
    unpersisted: VecDeque<PersistJob>,
    /// A snapshot the core asked to save, not saved yet: a crash loses it.
    unsaved_snapshot: Option<Snapshot>,
    /// A snapshot the core asked to build (off its loop), not built yet.
    unbuilt_snapshot: Option<(SnapshotMeta, StateMachine)>,
    restart_at_tick: Option<u64>,
    /// Its clock is stalled (a paused VM, a slow timer) until this tick: it handles
    /// messages and requests but is not ticked.
    clock_stalled_until_tick: u64,
    /// Crash as soon as a write changes term or vote, after sending, before persisting.
    crash_after_send_armed: bool,
    /// Crash as soon as it appends entries of its own term as leader.
    crash_after_append_armed: bool,
    /// Crash right after its commit index next advances (as leader), before the
    /// followers hear of it.
    crash_after_commit_armed: bool,
    /// The real store mirroring `disk`, when `Options::real_store`.
    real: Option<RealDisk>,
}

impl Node {
    fn raft(&self) -> Option<&Raft> {
        self.core.as_ref().map(|core| core.raft())
    }

    /// The state machine's applied index and contents, as key -> op id.
    fn state(&self) -> (u64, BTreeMap<u64, u64>) {
        let Some(core) = &self.core else { return (0, BTreeMap::new()) };
        let kv = core.kv().read().unwrap();
        let state =
            kv.iter().filter_map(|(key, value)| Some((parse_key(key)?, parse_op(&value.data)?))).collect();
        (kv.applied_index(), state)
    }
}

/// Small segments, so compaction deletes segments and appends roll over often.
const REAL_STORE_OPTIONS: StoreOptions = StoreOptions { segment_bytes: 256 << 10, grow_step_bytes: 64 << 10 };

/// A real mmap store in a temp directory; `store` is `None` while the node is down.
struct RealDisk {
    dir: tempfile::TempDir,
    store: Option<Store>,
}

/// A message on the wire.
struct InFlight {
    deliver_at_step: u64,
    order: u64,
    message: Message,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.deliver_at_step, self.order) == (other.deliver_at_step, other.order)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.deliver_at_step, self.order).cmp(&(other.deliver_at_step, other.order))
    }
}

/// How hostile the network and the operator are in this run (drawn per seed).
#[derive(Clone, Debug, Default)]
struct Weather {
    loss_per_million: u32,
    duplicate_per_million: u32,
    long_delay_per_million: u32,
    max_latency_steps: u64,
    /// Chance per tick of a fault.
    fault_per_million: u32,
    /// Chance that a Ready is persisted in a later step than its messages were sent.
    split_ready_per_million: u32,
    propose_per_million: u32,
    read_per_million: u32,
    transfer_per_million: u32,
    /// Compact when this many entries were applied since the last snapshot.
    compact_every: u64,
    /// ... or this many bytes of entries.
    compact_bytes: u64,
    /// Chance per step that an operator asks a node for a snapshot.
    admin_snapshot_per_million: u32,
    /// Chance that a new leader is armed to crash at a bad moment (right after it
    /// appends, or right after its commit advances): leader churn with uncommitted
    /// entries of several terms is what Figure 8 is made of.
    leader_churn_per_million: u32,
}

/// A proposal whose outcome is not known yet.
struct PendingWrite {
    history_index: usize,
    /// After this tick the client stops waiting (the outcome stays unknown unless seen).
    give_up_tick: u64,
    /// Where the core proposed it, once it did.
    proposed: Option<(u64, u64)>,
    node: usize,
}

/// A request a client has in flight with a node's core.
enum Request {
    Write {
        op: u64,
    },
    /// `known_committed`: the highest index some node had applied when the read was
    /// invoked; a linearizable read must see at least that.
    Read {
        key: u64,
        invoke: u64,
        deadline_tick: u64,
        known_committed: u64,
    },
    Other,
}

/// What is known of the entry committed at one index (committed = applied by someone).
struct Committed {
    term: u64,
    kind: EntryKind,
    data: Bytes,
    /// Hash of the state machine right after applying it, when a node was seen there.
    state_hash: Option<u64>,
    /// The highest term any node had when it was first applied: it was committed in a
    /// term <= this, so every leader of a later term must hold it.
    term_bound: u64,
}

/// The simulator.
pub struct Sim {
    options: Options,
    rng: Rng,
    weather: Weather,
    faults_active: bool,
    /// Current tick and step.
    pub tick: u64,
    pub step: u64,
    /// The history's clock: every invocation and completion gets the next value.
    clock: u64,
    nodes: Vec<Node>,
    network: BinaryHeap<Reverse<InFlight>>,
    /// blocked[from][to]: the link drops messages.
    blocked: Vec<Vec<bool>>,
    heal_at_tick: Option<u64>,
    // Checks.
    leaders: HashMap<u64, NodeId>,
    max_term: u64,
    committed: Vec<Committed>,
    /// (index, term) of every persisted entry -> (kind, data, term of the entry before).
    persisted_entries: HashMap<(u64, u64), (EntryKind, Bytes, u64)>,
    completeness_checked: HashSet<u64>,
    // Clients.
    next_op: u64,
    history: Vec<Event<u64, u64>>,
    failed_writes: HashSet<usize>,
    pending_writes: HashMap<u64, PendingWrite>,
    /// Ops a core said were not applied (`Dropped`, `NotLeader`).
    failed_ops: HashSet<u64>,
    /// Requests in flight, by token; tokens are unique across nodes.
    requests: HashMap<Token, (usize, Request)>,
    next_token: Token,
    served_reads: HashMap<u64, Option<u64>>,
    believed_leader: usize,
    // Results.
    pub faults: u64,
    pub inconclusive: u64,
    snapshots_installed: u64,
    transfers: u64,
    violation: Option<Violation>,
    trace: VecDeque<String>,
}

/// A hash of a state machine's contents (keys, values and versions).
fn kv_hash(kv: &StateMachine) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for (key, value) in kv.iter() {
        for byte in key.iter().chain(value.data.iter()).chain(value.version.to_le_bytes().iter()) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash = hash.rotate_left(17);
    }
    hash
}

/// A client's put, as the daemon's API encodes it: key `k<key>`, value the op id, so
/// values are unique.
fn encode_put(op: u64, key: u64) -> Bytes {
    Command::put(format!("k{key}"), op.to_string()).encode()
}

/// The (op, key) of an entry written by `encode_put`.
fn decode_put(data: &Bytes) -> Option<(u64, u64)> {
    match Command::decode_shared(data).ok()? {
        Command::Put { key, value, .. } => Some((parse_op(&value)?, parse_key(&key)?)),
        _ => None,
    }
}

fn parse_key(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key.strip_prefix(b"k")?).ok()?.parse().ok()
}

fn parse_op(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn describe(message: &Message) -> String {
    let head = format!("n{}->n{} t{} {}", message.from, message.to, message.term, message.body.name());
    match &message.body {
        MessageBody::RequestVote { last_log_index, last_log_term, transfer, .. } => {
            format!(
                "{head} last=({last_log_index},t{last_log_term}){}",
                if *transfer { " transfer" } else { "" }
            )
        }
        MessageBody::RequestVoteResponse { granted, .. } => format!("{head} granted={granted}"),
        MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, leader_commit } => {
            let span = match (entries.first(), entries.last()) {
                (Some(first), Some(last)) => {
                    format!(" [{}..={}] t{}..t{}", first.index, last.index, first.term, last.term)
                }
                _ => String::new(),
            };
            format!("{head} prev=({prev_log_index},t{prev_log_term}){span} commit={leader_commit}")
        }
        MessageBody::AppendEntriesResponse { success, index, conflict_term, conflict_index } => {
            format!("{head} success={success} index={index} conflict=({conflict_index},t{conflict_term})")
        }
        MessageBody::Heartbeat { commit, context } => format!("{head} commit={commit} ctx={context}"),
        MessageBody::HeartbeatResponse { context } => format!("{head} ctx={context}"),
        MessageBody::InstallSnapshot { snapshot } => {
            format!("{head} snapshot=({},t{})", snapshot.meta.index, snapshot.meta.term)
        }
        MessageBody::TimeoutNow => head,
        MessageBody::ReadIndex { context } => format!("{head} ctx={context}"),
        MessageBody::ReadIndexResponse { context, index } => format!("{head} ctx={context} index={index}"),
    }
}

impl Sim {
    /// A fresh cluster: every node starts empty with the same voters.
    pub fn new(options: Options) -> Sim {
        let mut rng = Rng::new(options.seed);
        let weather = Weather {
            loss_per_million: 0,
            duplicate_per_million: 0,
            long_delay_per_million: 0,
            max_latency_steps: rng.between(1, 6),
            fault_per_million: rng.between(30_000, 120_000) as u32,
            split_ready_per_million: rng.between(50_000, 300_000) as u32,
            propose_per_million: rng.between(20_000, 80_000) as u32,
            read_per_million: rng.between(10_000, 60_000) as u32,
            transfer_per_million: rng.between(0, 1_500) as u32,
            compact_every: rng.between(5, 40),
            compact_bytes: rng.between(200, 4000),
            admin_snapshot_per_million: rng.between(0, 3000) as u32,
            leader_churn_per_million: if rng.chance(500_000) {
                rng.between(50_000, 400_000) as u32
            } else {
                0
            },
        };
        let count = options.nodes;
        let voters: Vec<NodeId> = (1..=count as u64).collect();
        let empty_snapshot = Snapshot {
            meta: SnapshotMeta { index: 0, term: 0, conf: ConfState::with_voters(voters.clone()) },
            data: Bytes::new(),
        };
        let nodes = voters
            .iter()
            .map(|&id| Node {
                id,
                core: None,
                disk: Disk {
                    hard_state: HardState::default(),
                    snapshot: empty_snapshot.clone(),
                    entries: Vec::new(),
                },
                unpersisted: VecDeque::new(),
                unsaved_snapshot: None,
                unbuilt_snapshot: None,
                restart_at_tick: None,
                clock_stalled_until_tick: 0,
                crash_after_send_armed: false,
                crash_after_append_armed: false,
                crash_after_commit_armed: false,
                real: options.real_store.then(|| {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let store = Store::open(dir.path(), REAL_STORE_OPTIONS).expect("open store").0;
                    RealDisk { dir, store: Some(store) }
                }),
            })
            .collect();
        let faults_active = options.faults;
        let mut sim = Sim {
            rng,
            weather,
            faults_active,
            tick: 0,
            step: 0,
            clock: 0,
            nodes,
            network: BinaryHeap::new(),
            blocked: vec![vec![false; count]; count],
            heal_at_tick: None,
            leaders: HashMap::new(),
            max_term: 0,
            committed: Vec::new(),
            persisted_entries: HashMap::new(),
            completeness_checked: HashSet::new(),
            next_op: 1,
            history: Vec::new(),
            failed_writes: HashSet::new(),
            pending_writes: HashMap::new(),
            failed_ops: HashSet::new(),
            requests: HashMap::new(),
            next_token: 1,
            served_reads: HashMap::new(),
            believed_leader: 0,
            faults: 0,
            inconclusive: 0,
            snapshots_installed: 0,
            transfers: 0,
            violation: None,
            trace: VecDeque::with_capacity(TRACE_LINES),
            options,
        };
        for i in 0..count {
            sim.start_node(i);
        }
        sim
    }

    fn config(&self, id: NodeId) -> Config {
        let mut config = Config::new(id);
        config.election_ticks = ELECTION_TICKS;
        config.heartbeat_ticks = HEARTBEAT_TICKS;
        config.pre_vote = self.options.pre_vote;
        config.seed = self.options.seed.wrapping_mul(31).wrapping_add(id);
        // Small messages split a leader's catch-up into one entry per message, so
        // followers acknowledge earlier terms' entries before the leader's own (Figure 8).
        config.max_message_bytes = if self.options.seed % 3 == 0 { 4096 } else { 1 };
        config.max_inflight_messages = 1 + (self.options.seed % 7) as usize;
        #[cfg(feature = "planted-bugs")]
        {
            config.planted_bugs = self.options.bugs.planted;
        }
        config
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        if self.trace.len() == TRACE_LINES {
            self.trace.pop_front();
        }
        let text = line();
        let prefix = format!("[tick {} step {}] ", self.tick, self.step);
        self.trace.push_back(prefix + &text);
    }

    fn violate(&mut self, kind: &'static str, detail: String) {
        if self.violation.is_none() {
            self.trace(|| format!("VIOLATION {kind}: {detail}"));
            self.violation = Some(Violation { kind, detail, trace: self.trace.iter().cloned().collect() });
        }
    }

    /// The first violation found so far.
    pub fn violation(&self) -> Option<&Violation> {
        self.violation.as_ref()
    }

    // ---------------------------------------------------------------- nodes

    fn start_node(&mut self, i: usize) {
        let config = self.config(self.nodes[i].id);
        if self.nodes[i].real.is_some() {
            self.reopen_real_store(i);
        }
        let driver_config = DriverConfig {
            snapshot_entries: self.weather.compact_every,
            snapshot_bytes: self.weather.compact_bytes,
            step_down_timeout_ticks: 2 * u64::from(ELECTION_TICKS),
            retry_initial_ticks: 2,
            retry_max_ticks: 20,
            bootstrap: Some((
                0x5eed,
                (1..=self.nodes.len() as u64).map(|id| (id, format!("n{id}:3001"))).collect(),
            )),
            promote_every_ticks: 10,
            // Unique per incarnation, as the daemon's start time is.
            read_context_start: (self.step << 24) + 1,
            #[cfg(feature = "planted-bugs")]
            planted_bugs: self.options.bugs.driver,
        };
        let node = &mut self.nodes[i];
        let initial = InitialState {
            hard_state: node.disk.hard_state,
            snapshot: node.disk.snapshot.meta.clone(),
            entries: node.disk.entries.clone(),
        };
        node.restart_at_tick = None;
        node.unpersisted.clear();
        node.unsaved_snapshot = None;
        node.unbuilt_snapshot = None;
        let snapshot = (node.disk.snapshot.meta.index > 0).then(|| node.disk.snapshot.clone());
        let kv = match &snapshot {
            Some(snapshot) => StateMachine::load_snapshot_shared(&snapshot.data),
            None => Ok(StateMachine::new()),
        };
        let id = node.id;
        let kv = match kv {
            Ok(kv) => kv,
            Err(error) => {
                self.violate("restart", format!("n{id}'s snapshot does not decode: {error}"));
                return;
            }
        };
        match Raft::new(config, initial) {
            Ok(raft) => {
                let kv = Arc::new(RwLock::new(kv));
                self.nodes[i].core = Some(DriverCore::new(raft, kv, snapshot, driver_config));
            }
            Err(error) => self.violate("restart", format!("n{id} refused its own persisted state: {error}")),
        }
    }

    /// Reopens node `i`'s real store and checks it recovered exactly the simulated disk:
    /// what was synced is there, and nothing else.
    fn reopen_real_store(&mut self, i: usize) {
        let id = self.nodes[i].id;
        let real = self.nodes[i].real.as_mut().expect("real store");
        real.store = None;
        let (store, recovered) = match Store::open(real.dir.path(), REAL_STORE_OPTIONS) {
            Ok(opened) => opened,
            Err(error) => {
                self.violate("real store", format!("n{id}: reopening failed: {error}"));
                return;
            }
        };
        real.store = Some(store);
        let disk = &self.nodes[i].disk;
        let snapshot = recovered.snapshot.as_ref().map(|(meta, data)| (meta.index, meta.term, data.clone()));
        let expected_snapshot = (disk.snapshot.meta.index > 0)
            .then(|| (disk.snapshot.meta.index, disk.snapshot.meta.term, disk.snapshot.data.clone()));
        let mut problems = Vec::new();
        if recovered.hard_state != disk.hard_state {
            problems.push(format!("hard state {:?}, simulated {:?}", recovered.hard_state, disk.hard_state));
        }
        if snapshot != expected_snapshot {
            problems.push(format!(
                "snapshot {:?}, simulated {:?}",
                snapshot.map(|s| (s.0, s.1)),
                expected_snapshot.map(|s| (s.0, s.1))
            ));
        }
        if recovered.entries != disk.entries {
            let got = recovered.entries.last().map(|e| (e.index, e.term));
            let want = disk.entries.last().map(|e| (e.index, e.term));
            problems.push(format!(
                "{} entries ending at {got:?}, simulated {} ending at {want:?}",
                recovered.entries.len(),
                disk.entries.len()
            ));
        }
        if !problems.is_empty() {
            self.violate("real store", format!("n{id} recovered {}", problems.join("; ")));
        }
    }

    /// Mirrors what `persist` just wrote to the simulated disk into the real store.
    fn persist_real(&mut self, i: usize, ready: &PersistJob) {
        let id = self.nodes[i].id;
        let Some(store) = self.nodes[i].real.as_mut().and_then(|r| r.store.as_mut()) else { return };
        let mut result = Ok(());
        if let Some(snapshot) = &ready.snapshot {
            result = result.and_then(|()| store.install_snapshot(&snapshot.meta, &snapshot.data));
        }
        if !ready.entries.is_empty() {
            result = result.and_then(|()| store.append(&ready.entries));
        }
        if let Some(hard_state) = &ready.hard_state {
            result = result.and_then(|()| store.set_hard_state(hard_state));
        }
        // The simulated disk keeps the commit index too, so sync everything.
        if let Err(error) = result.and_then(|()| store.sync().map(|_| ())) {
            self.violate("real store", format!("n{id}: persisting failed: {error}"));
        }
    }

    /// Crashes node `id` (1-based): everything not on its disk is lost.
    pub fn crash(&mut self, id: NodeId) {
        let i = (id - 1) as usize;
        if self.nodes[i].core.is_none() {
            return;
        }
        let lost: usize = self.nodes[i].unpersisted.iter().map(|job| job.entries.len()).sum();
        self.nodes[i].core = None;
        self.nodes[i].unpersisted.clear();
        self.nodes[i].unsaved_snapshot = None;
        self.nodes[i].unbuilt_snapshot = None;
        if let Some(real) = self.nodes[i].real.as_mut() {
            real.store = None; // everything it was asked to keep was synced
        }
        self.nodes[i].crash_after_send_armed = false;
        self.nodes[i].crash_after_append_armed = false;
        self.nodes[i].crash_after_commit_armed = false;
        // Its clients' requests die with it; a write it proposed may still commit.
        self.requests.retain(|_, (node, _)| *node != i);
        self.pending_writes.retain(|_, write| write.node != i || write.proposed.is_some());
        let disk = &self.nodes[i].disk;
        let (term, vote, last) = (disk.hard_state.term, disk.hard_state.vote, disk.last_index());
        self.trace(|| {
            format!("CRASH n{id} (disk: term {term} vote {vote:?} last index {last}; unpersisted entries lost: {lost})")
        });
    }

    /// Restarts a crashed node `id` from its disk.
    pub fn restart(&mut self, id: NodeId) {
        let i = (id - 1) as usize;
        if self.nodes[i].core.is_some() {
            return;
        }
        self.trace(|| format!("RESTART n{id}"));
        self.start_node(i);
    }

    /// Role, term and commit of a live node.
    pub fn role_of(&self, id: NodeId) -> Option<(Role, u64)> {
        self.nodes[(id - 1) as usize].raft().map(|raft| {
            let status = raft.status();
            (status.role, status.term)
        })
    }

    /// The state machine's applied index and contents of node `id`.
    pub fn applied_of(&self, id: NodeId) -> (u64, BTreeMap<u64, u64>) {
        self.nodes[(id - 1) as usize].state()
    }

    /// The highest index committed (applied by anyone).
    pub fn committed_index(&self) -> u64 {
        self.committed.len() as u64
    }

    /// The live leader with the highest term, if any.
    pub fn leader(&self) -> Option<(NodeId, u64)> {
        self.nodes
            .iter()
            .filter_map(|node| node.raft().map(|raft| raft.status()))
            .filter(|status| status.role == Role::Leader)
            .map(|status| (status.id, status.term))
            .max_by_key(|&(_, term)| term)
    }

    // ------------------------------------------------------------- network

    fn send(&mut self, from: usize, message: Message) {
        if self.options.check_durable_replies {
            self.check_durable(from, &message);
        }
        if matches!(message.body, MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. }) {
            self.saw_leader(message.from, message.term);
        }
        let to = (message.to - 1) as usize;
        if to >= self.nodes.len() || message.from != self.nodes[from].id {
            self.violate("message", format!("n{} emitted a bad address: {}", from + 1, describe(&message)));
            return;
        }
        if self.blocked[from][to] {
            self.trace(|| format!("send {} (dropped: partition)", describe(&message)));
            return;
        }
        if self.weather.loss_per_million > 0 && self.rng.chance(self.weather.loss_per_million) {
            self.trace(|| format!("send {} (lost)", describe(&message)));
            return;
        }
        self.trace(|| format!("send {}", describe(&message)));
        if self.weather.duplicate_per_million > 0 && self.rng.chance(self.weather.duplicate_per_million) {
            let copy = message.clone();
            self.enqueue(copy);
        }
        self.enqueue(message);
    }

    fn enqueue(&mut self, message: Message) {
        let mut latency = self.rng.between(1, self.weather.max_latency_steps);
        if self.weather.long_delay_per_million > 0 && self.rng.chance(self.weather.long_delay_per_million) {
            latency += self.rng.between(1, 4 * STEPS_PER_TICK * u64::from(ELECTION_TICKS));
        }
        let order = self.rng.next_u64();
        self.network.push(Reverse(InFlight { deliver_at_step: self.step + latency, order, message }));
    }

    fn deliver_due(&mut self) {
        while let Some(Reverse(next)) = self.network.peek() {
            if next.deliver_at_step > self.step {
                break;
            }
            let Reverse(InFlight { message, .. }) = self.network.pop().unwrap();
            let from = (message.from - 1) as usize;
            let to = (message.to - 1) as usize;
            if self.blocked[from][to] {
                self.trace(|| format!("drop {} (partition)", describe(&message)));
                continue;
            }
            let Some(core) = self.nodes[to].core.as_mut() else { continue };
            // Refusals come back as actions, checked in `drive`.
            core.step(vec![message.clone()]);
            self.trace(|| format!("deliver {}", describe(&message)));
        }
    }

    /// Fig. 2, "Persistent state": a granted vote or a successful acknowledgement may only
    /// leave once what it promises is on the sender's disk.
    fn check_durable(&mut self, from: usize, message: &Message) {
        let disk = &self.nodes[from].disk;
        if disk.hard_state.term > message.term {
            // Superseded in the same Ready: the sender has durably moved to a later term,
            // which is as if it had persisted and replied, then moved on.
            return;
        }
        let when = "when sent";
        match message.body {
            MessageBody::RequestVoteResponse { pre_vote: false, granted: true } => {
                let hard_state = disk.hard_state;
                if hard_state.term != message.term || hard_state.vote != Some(message.to) {
                    self.violate(
                        "durable before reply",
                        format!(
                            "n{} granted its vote to n{} in term {} ({when}) while its disk holds term {} vote {:?}",
                            message.from, message.to, message.term, hard_state.term, hard_state.vote
                        ),
                    );
                }
            }
            MessageBody::AppendEntriesResponse { success: true, index, .. } if index > disk.last_index() => {
                let last = disk.last_index();
                self.violate(
                    "durable before reply",
                    format!(
                        "n{} acknowledged index {index} to n{} ({when}) while its disk ends at {last}",
                        message.from, message.to
                    ),
                );
            }
            _ => {}
        }
    }

    // --------------------------------------------------------------- ready

    /// Lets node `i`'s core hand out what it has ready and carries out its actions, as
    /// the daemon's shell does, with faults: a write may reach the disk steps later
    /// than the messages sent with it, and a crash may cut a round of actions short.
    fn drive(&mut self, i: usize) {
        // A write handed out in an earlier step reaches the disk now, or later.
        if !self.nodes[i].unpersisted.is_empty() && self.rng.chance(500_000) {
            let job = self.nodes[i].unpersisted.pop_front().unwrap();
            self.persist(i, &job);
            if let Some(core) = self.nodes[i].core.as_mut() {
                core.persisted(Ok(()));
            }
        }
        if self.nodes[i].unsaved_snapshot.is_some() && self.rng.chance(300_000) {
            self.save_snapshot(i);
        }
        if self.nodes[i].unbuilt_snapshot.is_some() && self.rng.chance(300_000) {
            self.build_snapshot(i);
        }
        for _ in 0..64 {
            let Some(core) = self.nodes[i].core.as_mut() else { return };
            core.poll();
            let actions = core.take_actions();
            if actions.is_empty() || self.violation.is_some() {
                return;
            }
            if !self.carry_out(i, actions) {
                return;
            }
        }
    }

    /// Carries out one round of actions; false when the node crashed doing it.
    fn carry_out(&mut self, i: usize, actions: Vec<Action>) -> bool {
        let id = self.nodes[i].id;
        if self.faults_active && self.crash_mid_round(i, &actions) {
            return false;
        }
        let mut written_now = 0;
        for action in actions {
            match action {
                Action::RoleChanged(soft) => {
                    self.max_term = self.max_term.max(soft.term);
                    if soft.role == Role::Leader {
                        self.saw_leader(id, soft.term);
                        if self.faults_active && self.rng.chance(self.weather.leader_churn_per_million) {
                            if self.rng.chance(500_000) {
                                self.nodes[i].crash_after_append_armed = true;
                            } else {
                                self.nodes[i].crash_after_commit_armed = true;
                            }
                        }
                    }
                    self.trace(|| {
                        format!(
                            "n{id} is {} in term {} (leader {:?})",
                            soft.role.as_str(),
                            soft.term,
                            soft.leader
                        )
                    });
                }
                Action::Send(messages) => {
                    for message in messages {
                        self.send(i, message);
                    }
                }
                Action::Persist(job) => {
                    if let Some(hard) = job.hard_state {
                        self.max_term = self.max_term.max(hard.term);
                    }
                    let split = self.faults_active && self.rng.chance(self.weather.split_ready_per_million);
                    if split || !self.nodes[i].unpersisted.is_empty() {
                        self.nodes[i].unpersisted.push_back(job);
                    } else {
                        self.persist(i, &job);
                        written_now += 1;
                    }
                }
                Action::BuildSnapshot { meta, machine } => {
                    // Built off the loop: now, or later while the node goes on.
                    self.nodes[i].unbuilt_snapshot = Some((meta, machine));
                    if self.rng.chance(500_000) {
                        self.build_snapshot(i);
                    }
                }
                Action::DropOffLoop(_) | Action::MembersChanged(_) => {}
                Action::Removed => {
                    self.violate("membership", format!("n{id} was removed, but the simulator removes no one"))
                }
                Action::SaveSnapshot { meta, data } => {
                    self.check_snapshot_save(i, &meta);
                    self.nodes[i].unsaved_snapshot = Some(Snapshot { meta, data });
                    if self.rng.chance(500_000) {
                        self.save_snapshot(i);
                    }
                }
                Action::Answer(token, answer) => self.on_answer(i, token, answer),
                Action::Applied(entries) => self.on_applied(i, &entries),
                Action::InstalledSnapshot(snapshot) => self.on_installed_snapshot(i, &snapshot),
                Action::Proposed { token, term, index } => self.on_proposed(token, term, index),
                Action::Refused { from, kind, reason } => {
                    self.violate(
                        "step",
                        format!("n{id} refused a {kind} from correct peer n{from}: {reason}"),
                    );
                }
                Action::Fatal(error) => self.violate("storage", format!("n{id} stopped: {error}")),
            }
            if self.violation.is_some() {
                return false;
            }
        }
        // Writes done at once are reported after the round, as the disk thread reports
        // them after the shell queued them.
        for _ in 0..written_now {
            if let Some(core) = self.nodes[i].core.as_mut() {
                core.persisted(Ok(()));
            }
        }
        true
    }

    /// Armed crashes that interrupt a round of actions. True when the node crashed.
    fn crash_mid_round(&mut self, i: usize, actions: &[Action]) -> bool {
        let id = self.nodes[i].id;
        let disk_hard_state = self.nodes[i].disk.hard_state;
        let persist = actions.iter().find_map(|action| match action {
            Action::Persist(job) => Some(job),
            _ => None,
        });
        let vote_changed = persist
            .and_then(|job| job.hard_state)
            .is_some_and(|hard| hard.term != disk_hard_state.term || hard.vote != disk_hard_state.vote);
        // Includes the no-op a new leader appends: crashing before it spreads leaves an
        // uncommitted entry of a newer term behind (Figure 8).
        let appends_own_entries = persist
            .is_some_and(|job| job.entries.iter().any(|entry| self.leaders.get(&entry.term) == Some(&id)));
        let node = &self.nodes[i];
        let crash_now = (node.crash_after_send_armed && vote_changed)
            || (node.crash_after_append_armed && appends_own_entries);
        let leading = self.leaders.get(&self.max_term) == Some(&id);
        let applies = actions.iter().any(|action| matches!(action, Action::Applied(_)));
        if node.crash_after_commit_armed && leading && applies {
            // The leader learns of a commit, applies it and crashes; what it meant to
            // send dies in its buffers, so the followers do not hear of the commit.
            let mut lost = 0;
            for action in actions {
                match action {
                    Action::Applied(entries) => self.on_applied(i, entries),
                    Action::Send(messages) => lost += messages.len(),
                    _ => {}
                }
            }
            self.trace(|| format!("n{id} crashes right after its commit advanced ({lost} messages lost)"));
            self.faults += 1;
            self.crash(id);
            let downtime = self.rng.between(5, 60);
            self.nodes[i].restart_at_tick = Some(self.tick + downtime);
            return true;
        }
        if !crash_now {
            return false;
        }
        // The crash interrupts the send: some messages leave, the rest never do; the
        // write may or may not have reached the disk.
        let messages: Vec<Message> = actions
            .iter()
            .filter_map(|action| match action {
                Action::Send(messages) => Some(messages.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        let sent = if self.rng.chance(500_000) { 0 } else { self.rng.index(messages.len() + 1) };
        for message in messages.into_iter().take(sent) {
            self.send(i, message);
        }
        let persisted = self.rng.chance(700_000) && !vote_changed && self.nodes[i].unpersisted.is_empty();
        if persisted {
            let job = persist.unwrap().clone();
            self.persist(i, &job);
        }
        self.trace(|| format!("n{id} crashes mid-round ({sent} messages sent, persisted: {persisted})"));
        self.faults += 1;
        self.crash(id);
        let downtime =
            if self.rng.chance(600_000) { self.rng.between(1, 4) } else { self.rng.between(10, 60) };
        self.nodes[i].restart_at_tick = Some(self.tick + downtime);
        true
    }

    fn persist(&mut self, i: usize, ready: &PersistJob) {
        let id = self.nodes[i].id;
        if let Some(snapshot) = &ready.snapshot {
            let disk = &mut self.nodes[i].disk;
            let meta = &snapshot.meta;
            // §7: keep the log after the snapshot only if it holds the snapshot's last entry.
            if disk.term_at(meta.index) == Some(meta.term) && meta.index >= disk.snapshot.meta.index {
                let drop = (meta.index - disk.snapshot.meta.index) as usize;
                disk.entries.drain(..drop);
            } else {
                disk.entries.clear();
            }
            disk.snapshot = snapshot.clone();
            let (index, term) = (meta.index, meta.term);
            self.trace(|| format!("n{id} persists snapshot ({index},t{term})"));
        }
        if let (Some(first), Some(last)) = (ready.entries.first(), ready.entries.last()) {
            let (first_index, last_index, last_term) = (first.index, last.index, last.term);
            self.trace(|| {
                format!("n{id} persists entries [{first_index}..={last_index}] up to t{last_term}")
            });
        }
        for entry in &ready.entries {
            let disk = &mut self.nodes[i].disk;
            let snapshot_index = disk.snapshot.meta.index;
            if entry.index <= snapshot_index || entry.index > disk.last_index() + 1 {
                let last = disk.last_index();
                self.violate(
                    "log",
                    format!(
                        "n{id} was asked to persist entry {} but its disk holds ({snapshot_index}, {last}]",
                        entry.index
                    ),
                );
                return;
            }
            disk.entries.truncate((entry.index - snapshot_index - 1) as usize);
            let previous_term = disk.term_at(entry.index - 1).unwrap();
            disk.entries.push(entry.clone());
            self.check_log_matching(id, entry, previous_term);
        }
        if let Some(hard) = ready.hard_state {
            let disk = &mut self.nodes[i].disk;
            if hard.term < disk.hard_state.term {
                let old = disk.hard_state.term;
                self.violate("hard state", format!("n{id} persisted term {} after term {old}", hard.term));
            }
            self.nodes[i].disk.hard_state = hard;
        }
        self.check_leader_completeness(i, &ready.entries);
        if self.violation.is_none() {
            self.persist_real(i, ready);
        }
    }

    /// Log matching (§5.3), checked incrementally: one (index, term) must always name the
    /// same entry, preceded by an entry of the same term. By induction two logs that share
    /// an (index, term) are then identical up to it.
    fn check_log_matching(&mut self, id: NodeId, entry: &Entry, previous_term: u64) {
        let key = (entry.index, entry.term);
        match self.persisted_entries.get(&key) {
            None => {
                self.persisted_entries.insert(key, (entry.kind, entry.data.clone(), previous_term));
            }
            Some((kind, data, previous)) => {
                if *kind != entry.kind || *data != entry.data || *previous != previous_term {
                    let detail = format!(
                        "n{id} persisted entry ({}, t{}) {:?} after a t{previous_term} entry; elsewhere it is {kind:?} after a t{previous} entry (data equal: {})",
                        entry.index,
                        entry.term,
                        entry.kind,
                        *data == entry.data
                    );
                    self.violate("log matching", detail);
                }
            }
        }
    }

    /// Leader completeness (§5.4): when a leader's first entry of its term reaches its
    /// disk, the log before it must hold every entry committed in earlier terms.
    fn check_leader_completeness(&mut self, i: usize, entries: &[Entry]) {
        let id = self.nodes[i].id;
        let Some(own) = entries.iter().find(|entry| self.leaders.get(&entry.term) == Some(&id)) else {
            return;
        };
        if !self.completeness_checked.insert(own.term) {
            return;
        }
        let (term, own_index) = (own.term, own.index);
        let disk = &self.nodes[i].disk;
        for (position, committed) in self.committed.iter().enumerate() {
            let index = position as u64 + 1;
            if committed.term_bound >= term || index <= disk.snapshot.meta.index {
                continue;
            }
            let held = if index < own_index { disk.term_at(index) } else { None };
            if held != Some(committed.term) {
                let detail = format!(
                    "n{id}, leader of term {term}, appended at {own_index} but holds {held:?} at committed index {index} (committed term {})",
                    committed.term
                );
                self.violate("leader completeness", detail);
                return;
            }
        }
    }

    /// The core may only compact what this node's disk holds: a snapshot past the
    /// durable log would drop entries that were never written.
    fn check_snapshot_save(&mut self, i: usize, meta: &SnapshotMeta) {
        let id = self.nodes[i].id;
        let disk = &self.nodes[i].disk;
        let (index, last) = (meta.index, disk.last_index());
        if index > last {
            self.violate(
                "compaction",
                format!("n{id} snapshots at {index} but its disk holds entries only to {last}"),
            );
            return;
        }
        let known = self.committed.get((index - 1) as usize).map(|c| c.term);
        if Some(meta.term) != known {
            self.violate(
                "compaction",
                format!("n{id} snapshots ({index}, t{}) but t{known:?} was committed", meta.term),
            );
        }
    }

    /// The snapshot the core asked to build is serialised from its frozen copy, which
    /// must hold exactly what was committed up to its index, whatever the node applied
    /// since.
    fn build_snapshot(&mut self, i: usize) {
        let Some((meta, machine)) = self.nodes[i].unbuilt_snapshot.take() else { return };
        let id = self.nodes[i].id;
        let index = meta.index;
        let hash = kv_hash(&machine);
        let expected = self.committed.get((index as usize).wrapping_sub(1)).and_then(|c| c.state_hash);
        if machine.applied_index() != index || expected.is_some_and(|expected| expected != hash) {
            self.violate(
                "snapshot",
                format!("n{id} builds a snapshot at {index} from a state machine applied to {} that differs from what was committed", machine.applied_index()),
            );
            return;
        }
        let mut data = Vec::new();
        machine.write_snapshot(&mut data).expect("writing to a Vec cannot fail");
        self.trace(|| format!("n{id} built a snapshot at {index}"));
        if let Some(core) = self.nodes[i].core.as_mut() {
            core.snapshot_built(meta, Ok(Bytes::from(data)));
        }
    }

    /// The snapshot the core asked for reaches the disk; the log it covers is dropped.
    fn save_snapshot(&mut self, i: usize) {
        let Some(snapshot) = self.nodes[i].unsaved_snapshot.take() else { return };
        let id = self.nodes[i].id;
        let meta = snapshot.meta.clone();
        let disk = &mut self.nodes[i].disk;
        if meta.index <= disk.snapshot.meta.index {
            // An InstallSnapshot from the leader overtook it.
        } else if meta.index > disk.last_index() {
            let last = disk.last_index();
            self.violate(
                "compaction",
                format!("n{id} saves a snapshot at {} past its disk's {last}", meta.index),
            );
            return;
        } else {
            let drop = (meta.index - disk.snapshot.meta.index) as usize;
            disk.entries.drain(..drop);
            let saved = match self.nodes[i].real.as_mut().and_then(|r| r.store.as_mut()) {
                Some(store) => {
                    store.save_snapshot(&meta, &snapshot.data).and_then(|()| store.compact(meta.index))
                }
                None => Ok(()),
            };
            if let Err(error) = saved {
                self.violate("real store", format!("n{id}: snapshot failed: {error}"));
            }
            self.nodes[i].disk.snapshot = snapshot;
            let index = meta.index;
            self.trace(|| format!("n{id} saved a snapshot at {index} and compacted its log"));
        }
        if let Some(core) = self.nodes[i].core.as_mut() {
            core.snapshot_saved(Ok(meta));
        }
    }

    fn on_proposed(&mut self, token: Token, term: u64, index: u64) {
        let Some((_, Request::Write { op })) = self.requests.get(&token) else { return };
        let op = *op;
        let Some(pending) = self.pending_writes.get_mut(&op) else { return };
        pending.proposed = Some((term, index));
        self.trace(|| format!("op {op} proposed at ({index}, t{term})"));
        if index <= self.committed.len() as u64 {
            // A deposed leader that does not know it yet: the index is already
            // committed with another entry, so this proposal has failed.
            let pending = self.pending_writes.remove(&op).unwrap();
            self.failed_writes.insert(pending.history_index);
        }
    }

    fn on_answer(&mut self, i: usize, token: Token, answer: Answer) {
        let Some((_, request)) = self.requests.remove(&token) else { return };
        let id = self.nodes[i].id;
        match (request, answer) {
            (Request::Write { op }, Answer::Proposal(result)) => match result {
                Ok(applied) => {
                    self.trace(|| format!("op {op} applied at {} (answer from n{id})", applied.index))
                }
                Err(NodeError::Dropped) | Err(NodeError::NotLeader(_)) => {
                    if let Err(NodeError::NotLeader(leader)) = &result {
                        self.believed_leader = match leader {
                            Some(leader) => (leader - 1) as usize,
                            None => self.rng.index(self.nodes.len()),
                        };
                    }
                    // The core says it did not take effect: that must stay true.
                    self.failed_ops.insert(op);
                    if self.committed.iter().any(|c| decode_put(&c.data).is_some_and(|(o, _)| o == op)) {
                        self.violate(
                            "proposal",
                            format!("n{id} answered {result:?} for op {op}, which was applied"),
                        );
                    }
                    if let Some(pending) = self.pending_writes.remove(&op) {
                        self.failed_writes.insert(pending.history_index);
                    }
                }
                Err(error) => self.trace(|| format!("op {op}: outcome unknown ({error:?})")),
            },
            (Request::Read { key, invoke, deadline_tick, known_committed }, Answer::Read(result)) => {
                if result.is_err() || deadline_tick <= self.tick {
                    return;
                }
                let core = self.nodes[i].core.as_ref().unwrap();
                let kv = core.kv().read().unwrap();
                let applied = kv.applied_index();
                let value = kv.get(format!("k{key}").as_bytes()).and_then(|v| parse_op(&v.data));
                drop(kv);
                self.served_reads.insert(token, value);
                self.clock += 1;
                self.history.push(Event {
                    key,
                    invoke,
                    complete: Some(self.clock),
                    operation: Operation::Read(value),
                });
                if applied < known_committed {
                    let detail = format!(
                        "n{id} answered read {token} from a state machine at {applied}, but {known_committed} was committed before the read began"
                    );
                    self.violate("stale read", detail);
                    return;
                }
                self.trace(|| {
                    format!("read {token} served by n{id} at applied {applied}: key {key} = {value:?}")
                });
            }
            (Request::Other, Answer::StepDown(Ok(_))) => self.transfers += 1,
            (Request::Other, _) => {}
            (_, answer) => self.violate("answer", format!("n{id} answered request {token} with {answer:?}")),
        }
    }

    fn on_installed_snapshot(&mut self, i: usize, snapshot: &Snapshot) {
        let id = self.nodes[i].id;
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        // The state it installed (the state machine may have moved on in the same round).
        let hash = match StateMachine::load_snapshot_shared(&snapshot.data) {
            Ok(kv) => kv_hash(&kv),
            Err(error) => {
                self.violate("snapshot", format!("n{id} installed a snapshot that does not decode: {error}"));
                return;
            }
        };
        match self.committed.get((index as usize).wrapping_sub(1)) {
            Some(committed) if committed.term == term && committed.state_hash.is_none_or(|h| h == hash) => {}
            other => {
                let known = other.map(|c| (c.term, c.state_hash == Some(hash)));
                self.violate(
                    "snapshot",
                    format!("n{id} installed snapshot ({index},t{term}) that does not match what was committed (term, same state: {known:?})"),
                );
                return;
            }
        }
        if let Some(committed) = self.committed.get_mut((index - 1) as usize) {
            committed.state_hash.get_or_insert(hash);
        }
        self.snapshots_installed += 1;
        self.trace(|| format!("n{id} installed snapshot ({index},t{term})"));
    }

    /// Entries node `i` applied, in order; state machine safety (§5.4.3) is checked
    /// against the first node that applied each index.
    fn on_applied(&mut self, i: usize, entries: &[Entry]) {
        let id = self.nodes[i].id;
        for entry in entries {
            let position = (entry.index - 1) as usize;
            if let Some(committed) = self.committed.get(position) {
                if committed.term != entry.term
                    || committed.kind != entry.kind
                    || committed.data != entry.data
                {
                    let detail = format!(
                        "n{id} applied ({}, t{}, {:?}) where another node applied (t{}, {:?})",
                        entry.index, entry.term, entry.kind, committed.term, committed.kind
                    );
                    self.violate("state machine safety", detail);
                    return;
                }
                continue;
            }
            if position != self.committed.len() {
                self.violate(
                    "apply",
                    format!("n{id} applied {} before anyone applied {}", entry.index, position),
                );
                return;
            }
            self.committed.push(Committed {
                term: entry.term,
                kind: entry.kind,
                data: entry.data.clone(),
                state_hash: None,
                term_bound: self.max_term,
            });
            self.on_first_apply(entry);
        }
        // The state after the round's last entry, when the state machine is still there.
        let Some(last) = entries.last() else { return };
        let core = self.nodes[i].core.as_ref().unwrap();
        let kv = core.kv().read().unwrap();
        if kv.applied_index() != last.index {
            return;
        }
        let hash = kv_hash(&kv);
        drop(kv);
        let committed = &mut self.committed[(last.index - 1) as usize];
        match committed.state_hash {
            None => committed.state_hash = Some(hash),
            Some(known) if known != hash => {
                self.violate("state machine safety", format!("n{id}'s state after {} differs", last.index));
            }
            Some(_) => {}
        }
    }

    /// A client learns the outcome of its writes the first time anyone applies an index.
    fn on_first_apply(&mut self, entry: &Entry) {
        let applied_op =
            if entry.kind == EntryKind::Normal { decode_put(&entry.data).map(|(op, _)| op) } else { None };
        if let Some(op) = applied_op {
            if self.failed_ops.contains(&op) {
                self.violate(
                    "proposal",
                    format!("op {op} was answered as not applied, but was applied at {}", entry.index),
                );
                return;
            }
            if let Some(pending) = self.pending_writes.remove(&op) {
                if let Some((term, index)) = pending.proposed {
                    if (term, index) != (entry.term, entry.index) {
                        let detail = format!(
                            "op {op} was proposed as ({index}, t{term}) but committed as ({}, t{})",
                            entry.index, entry.term
                        );
                        self.violate("proposal", detail);
                    }
                }
                self.clock += 1;
                self.history[pending.history_index].complete = Some(self.clock);
            }
        }
        // A proposal whose index now holds another entry definitely failed.
        let failed: Vec<u64> = self
            .pending_writes
            .iter()
            .filter(|(_, pending)| pending.proposed.is_some_and(|(_, index)| index <= entry.index))
            .map(|(&op, _)| op)
            .collect();
        for op in failed {
            let pending = self.pending_writes.remove(&op).unwrap();
            self.failed_writes.insert(pending.history_index);
        }
    }

    // -------------------------------------------------------------- checks

    fn saw_leader(&mut self, id: NodeId, term: u64) {
        match self.leaders.get(&term) {
            Some(&other) if other != id => {
                self.violate(
                    "election safety",
                    format!("n{id} and n{other} are both leaders of term {term}"),
                );
            }
            Some(_) => {}
            None => {
                self.leaders.insert(term, id);
            }
        }
    }

    fn check_roles(&mut self) {
        for i in 0..self.nodes.len() {
            let Some(raft) = self.nodes[i].raft() else { continue };
            let status = raft.status();
            self.max_term = self.max_term.max(status.term);
            if status.role == Role::Leader {
                self.saw_leader(status.id, status.term);
            }
        }
    }

    /// Linearizability of the clients' history (per key, Wing–Gong–Lowe).
    pub fn check_linearizability(&mut self) {
        let events: Vec<Event<u64, u64>> = self
            .history
            .iter()
            .enumerate()
            .filter(|(index, _)| !self.failed_writes.contains(index))
            .map(|(_, event)| event.clone())
            .collect();
        match check_history(&events, MAX_LINEARIZABILITY_STATES) {
            Verdict::Linearizable => {}
            Verdict::Inconclusive { .. } => self.inconclusive += 1,
            Verdict::NotLinearizable { key } => {
                let mut detail = format!("the history of key {key} has no linearization:");
                for event in events.iter().filter(|event| event.key == key) {
                    let _ = write!(
                        detail,
                        "\n    {:?} invoked {} completed {:?}",
                        event.operation, event.invoke, event.complete
                    );
                }
                self.violate("linearizability", detail);
            }
        }
    }

    // ------------------------------------------------------------- clients

    /// A client proposes a put on node `id` (or where it believes the leader is).
    pub fn client_write(&mut self, target: Option<usize>, key: u64) {
        let i = target.unwrap_or(self.believed_leader);
        let op = self.next_op;
        self.next_op += 1;
        if self.nodes[i].core.is_none() {
            self.believed_leader = self.rng.index(self.nodes.len());
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        self.clock += 1;
        let history_index = self.history.len();
        self.history.push(Event { key, invoke: self.clock, complete: None, operation: Operation::Write(op) });
        let give_up_tick = self.tick + WRITE_TIMEOUT_TICKS;
        self.pending_writes.insert(op, PendingWrite { history_index, give_up_tick, proposed: None, node: i });
        self.requests.insert(token, (i, Request::Write { op }));
        let id = self.nodes[i].id;
        self.trace(|| format!("client: put key {key} = {op} via n{id}"));
        self.nodes[i].core.as_mut().unwrap().propose(token, encode_put(op, key));
    }

    fn client_read(&mut self) {
        let i = self.rng.index(self.nodes.len());
        let key = self.rng.below(KEYS);
        self.client_read_on(i, key);
    }

    /// A client asks node `i` (0-based) for a linearizable read of `key`; returns the
    /// read's token if the node is up.
    pub fn client_read_on(&mut self, i: usize, key: u64) -> Option<u64> {
        self.nodes[i].core.as_ref()?;
        let token = self.next_token;
        self.next_token += 1;
        self.clock += 1;
        let id = self.nodes[i].id;
        self.trace(|| format!("client: read {token} of key {key} via n{id}"));
        let request = Request::Read {
            key,
            invoke: self.clock,
            deadline_tick: self.tick + READ_TIMEOUT_TICKS,
            known_committed: self.committed.len() as u64,
        };
        self.requests.insert(token, (i, request));
        self.nodes[i].core.as_mut().unwrap().read(token);
        Some(token)
    }

    /// The value a served read returned (`Some(None)`: the key was absent).
    pub fn read_result(&self, context: u64) -> Option<Option<u64>> {
        self.served_reads.get(&context).copied()
    }

    /// Cuts node `id` off from every peer (clients still reach it) and stalls its clock,
    /// for `ticks` ticks.
    pub fn isolate_with_stalled_clock(&mut self, id: NodeId, ticks: u64) {
        let i = (id - 1) as usize;
        for other in 0..self.nodes.len() {
            if other != i {
                self.blocked[i][other] = true;
                self.blocked[other][i] = true;
            }
        }
        self.heal_at_tick = Some(self.tick + ticks);
        self.nodes[i].clock_stalled_until_tick = self.tick + ticks;
        self.trace(|| format!("PARTITION isolate n{id} with its clock stalled for {ticks} ticks"));
    }

    fn client_transfer(&mut self) {
        let Some((leader, _)) = self.leader() else { return };
        let i = (leader - 1) as usize;
        let token = self.next_token;
        self.next_token += 1;
        self.requests.insert(token, (i, Request::Other));
        self.trace(|| format!("client: n{leader}, step down"));
        self.nodes[i].core.as_mut().unwrap().step_down(token);
    }

    /// An operator asks node `i` for a snapshot now (`mmapd-admin snapshot`).
    fn client_snapshot(&mut self) {
        let i = self.rng.index(self.nodes.len());
        let Some(core) = self.nodes[i].core.as_mut() else { return };
        let token = self.next_token;
        self.next_token += 1;
        self.requests.insert(token, (i, Request::Other));
        core.snapshot(token);
        let id = self.nodes[i].id;
        self.trace(|| format!("admin: n{id}, snapshot now"));
    }

    fn clients_act(&mut self) {
        let tick = self.tick;
        let waiting = self.pending_writes.values().filter(|write| write.give_up_tick > tick).count();
        if self.rng.chance(self.weather.propose_per_million) && waiting < MAX_PENDING_WRITES {
            let target = if self.rng.chance(800_000) { None } else { Some(self.rng.index(self.nodes.len())) };
            let key = self.rng.below(KEYS);
            self.client_write(target, key);
        }
        let reads = self.requests.values().filter(|(_, r)| matches!(r, Request::Read { .. })).count();
        if self.rng.chance(self.weather.read_per_million) && reads < MAX_PENDING_READS {
            self.client_read();
        }
        if self.faults_active && self.rng.chance(self.weather.transfer_per_million) {
            self.client_transfer();
        }
        if self.faults_active && self.rng.chance(self.weather.admin_snapshot_per_million) {
            self.client_snapshot();
        }
        // Reads whose client gave up: their answer, if it comes, is not served.
        self.requests.retain(|_, (_, request)| match request {
            Request::Read { deadline_tick, .. } => *deadline_tick > tick,
            _ => true,
        });
    }

    // -------------------------------------------------------------- faults

    fn live_count(&self) -> usize {
        self.nodes.iter().filter(|node| node.core.is_some()).count()
    }

    fn inject_fault(&mut self) {
        let n = self.nodes.len();
        let leader = self.leader().map(|(id, _)| (id - 1) as usize);
        self.faults += 1;
        match self.rng.below(14) {
            0 | 1 => {
                if self.live_count() <= 1 {
                    return;
                }
                let victim = match leader {
                    Some(leader) if self.rng.chance(600_000) => leader,
                    _ => self.rng.index(n),
                };
                let downtime =
                    if self.rng.chance(500_000) { self.rng.between(1, 5) } else { self.rng.between(10, 80) };
                self.crash(self.nodes[victim].id);
                self.nodes[victim].restart_at_tick = Some(self.tick + downtime);
            }
            2 => {
                let mut sides: Vec<bool> = (0..n).map(|_| self.rng.chance(500_000)).collect();
                sides[self.rng.index(n)] = true;
                let other = self.rng.index(n);
                sides[other] = !sides[other] || sides.iter().all(|&s| s);
                for from in 0..n {
                    for to in 0..n {
                        self.blocked[from][to] = sides[from] != sides[to];
                    }
                }
                self.heal_at_tick = Some(self.tick + self.rng.between(5, 80));
                self.trace(|| format!("PARTITION symmetric {sides:?}"));
            }
            3 => {
                let Some(leader) = leader else { return };
                for other in 0..n {
                    if other != leader {
                        self.blocked[leader][other] = true;
                        self.blocked[other][leader] = true;
                    }
                }
                let until = self.tick + self.rng.between(10, 80);
                self.heal_at_tick = Some(until);
                let stalled = self.rng.chance(500_000);
                if stalled {
                    // Its clock stalls too, so it does not notice it lost its quorum
                    // (check-quorum, thesis §6.2) while the others elect a new leader.
                    self.nodes[leader].clock_stalled_until_tick = until;
                }
                self.trace(|| format!("PARTITION isolate leader n{} (clock stalled: {stalled})", leader + 1));
            }
            4 => {
                for from in 0..n {
                    for to in 0..n {
                        if from != to && self.rng.chance(300_000) {
                            self.blocked[from][to] = true;
                        }
                    }
                }
                self.heal_at_tick = Some(self.tick + self.rng.between(5, 80));
                self.trace(|| "PARTITION one-way links".to_string());
            }
            5 => self.heal_partitions(),
            6 => {
                self.weather.loss_per_million = self.rng.between(0, 200_000) as u32;
                self.weather.duplicate_per_million = self.rng.between(0, 100_000) as u32;
                self.weather.long_delay_per_million = self.rng.between(0, 30_000) as u32;
                let weather = self.weather.clone();
                self.trace(|| {
                    format!(
                        "NETWORK loss {} dup {} long delays {} per million",
                        weather.loss_per_million,
                        weather.duplicate_per_million,
                        weather.long_delay_per_million
                    )
                });
            }
            7 | 8 => {
                let i = self.rng.index(n);
                self.nodes[i].crash_after_send_armed = true;
                self.trace(|| format!("ARM n{} to crash after sending a vote, before persisting", i + 1));
            }
            9 | 10 => {
                let Some(leader) = leader else { return };
                self.nodes[leader].crash_after_append_armed = true;
                self.trace(|| format!("ARM leader n{} to crash right after appending", leader + 1));
            }
            11 | 12 => {
                let Some(leader) = leader else { return };
                self.nodes[leader].crash_after_commit_armed = true;
                self.trace(|| format!("ARM leader n{} to crash right after its commit advances", leader + 1));
            }
            _ => {
                let Some(crashed) = (0..n).find(|&i| self.nodes[i].core.is_none()) else { return };
                self.restart(self.nodes[crashed].id);
            }
        }
    }

    fn heal_partitions(&mut self) {
        for row in &mut self.blocked {
            row.iter_mut().for_each(|link| *link = false);
        }
        self.heal_at_tick = None;
        self.trace(|| "HEAL partitions".to_string());
    }

    /// Stops all faults: heals partitions, restarts crashed nodes, stops loss.
    pub fn heal_all(&mut self) {
        self.faults_active = false;
        self.heal_partitions();
        self.weather.loss_per_million = 0;
        self.weather.duplicate_per_million = 0;
        self.weather.long_delay_per_million = 0;
        for i in 0..self.nodes.len() {
            self.nodes[i].crash_after_send_armed = false;
            self.nodes[i].crash_after_append_armed = false;
            self.nodes[i].crash_after_commit_armed = false;
            self.nodes[i].clock_stalled_until_tick = 0;
            if self.nodes[i].core.is_none() {
                self.restart(self.nodes[i].id);
            }
        }
    }

    // ---------------------------------------------------------------- loop

    /// One step: deliver, handle Readies, clients, faults, ticks, checks.
    pub fn run_step(&mut self) {
        self.step += 1;
        self.deliver_due();
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        self.rng.shuffle(&mut order);
        for &i in &order {
            self.drive(i);
        }
        if self.options.clients {
            self.clients_act();
        }
        if self.step % STEPS_PER_TICK == 0 {
            self.tick += 1;
            if self.faults_active && self.rng.chance(self.weather.fault_per_million) {
                self.inject_fault();
            }
            if self.heal_at_tick.is_some_and(|at| at <= self.tick) {
                self.heal_partitions();
            }
            for i in 0..self.nodes.len() {
                if self.nodes[i].restart_at_tick.is_some_and(|at| at <= self.tick) {
                    self.restart(self.nodes[i].id);
                }
                if self.nodes[i].clock_stalled_until_tick > self.tick {
                    continue;
                }
                if let Some(core) = self.nodes[i].core.as_mut() {
                    core.tick();
                }
            }
        }
        self.check_roles();
    }

    /// Runs `ticks` ticks, stopping early at a violation.
    pub fn run_ticks(&mut self, ticks: u64) {
        for _ in 0..ticks * STEPS_PER_TICK {
            self.run_step();
            if self.violation.is_some() {
                return;
            }
        }
    }

    /// Runs until `done` holds (checked every tick) or `ticks` pass; true if it held.
    pub fn run_until(&mut self, ticks: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        for _ in 0..ticks {
            if done(self) {
                return true;
            }
            self.run_ticks(1);
            if self.violation.is_some() {
                return false;
            }
        }
        done(self)
    }

    /// True when every node is up, agrees on one leader and term, and has applied what
    /// the leader committed.
    pub fn is_settled(&self) -> bool {
        let Some((leader, term)) = self.leader() else { return false };
        let leader_commit = self.nodes[(leader - 1) as usize].raft().unwrap().status().commit;
        self.nodes.iter().all(|node| {
            node.raft().is_some_and(|raft| {
                let status = raft.status();
                status.term == term && status.leader == Some(leader) && node.state().0 >= leader_commit
            })
        })
    }

    /// The whole run: faults, then healing and the liveness bound, then linearizability.
    pub fn run(&mut self) {
        self.run_ticks(self.options.fault_ticks);
        if self.violation.is_some() {
            return;
        }
        // Liveness: once faults stop, a leader emerges and every proposal made so far is
        // resolved (committed, or overwritten by a committed entry) within the bound.
        self.heal_all();
        self.trace(|| "--- faults stop: liveness phase ---".to_string());
        let unresolved: Vec<u64> = self.pending_writes.keys().copied().collect();
        let start_tick = self.tick;
        let first_new_op = self.next_op;
        let mut settled = false;
        for _ in 0..self.options.liveness_ticks {
            self.run_ticks(1);
            if self.violation.is_some() {
                return;
            }
            let new_write_done = self.committed.iter().any(|c| {
                c.kind == EntryKind::Normal && decode_put(&c.data).is_some_and(|(op, _)| op >= first_new_op)
            });
            if new_write_done
                && unresolved.iter().all(|op| !self.pending_writes.contains_key(op))
                && self.is_settled()
            {
                settled = true;
                break;
            }
        }
        if !settled {
            let still: Vec<&u64> =
                unresolved.iter().filter(|op| self.pending_writes.contains_key(op)).collect();
            let detail = format!(
                "{} ticks after faults stopped: leader {:?}, settled {}, unresolved proposals {still:?}",
                self.tick - start_tick,
                self.leader(),
                self.is_settled()
            );
            self.violate("liveness", detail);
            return;
        }
        self.check_linearizability();
    }

    /// Runs the whole of `options` and reports.
    pub fn run_seed(options: Options) -> RunReport {
        let seed = options.seed;
        let nodes = options.nodes;
        let mut sim = None;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sim.insert(Sim::new(options)).run();
        }));
        let Some(mut sim) = sim else {
            let violation =
                Violation { kind: "panic", detail: "the core panicked at start".into(), trace: Vec::new() };
            return RunReport {
                seed,
                nodes,
                steps: 0,
                faults: 0,
                inconclusive: 0,
                committed: 0,
                writes: 0,
                reads: 0,
                leaders: 0,
                snapshots_installed: 0,
                transfers: 0,
                trace: Vec::new(),
                violation: Some(violation),
            };
        };
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            sim.violate("panic", format!("the core panicked: {message}"));
        }
        RunReport {
            seed,
            nodes,
            steps: sim.step,
            faults: sim.faults,
            inconclusive: sim.inconclusive,
            committed: sim.committed.len() as u64,
            writes: sim
                .history
                .iter()
                .filter(|e| matches!(e.operation, Operation::Write(_)) && e.complete.is_some())
                .count() as u64,
            reads: sim.history.iter().filter(|e| matches!(e.operation, Operation::Read(_))).count() as u64,
            leaders: sim.leaders.len() as u64,
            snapshots_installed: sim.snapshots_installed,
            transfers: sim.transfers,
            trace: sim.trace.iter().cloned().collect(),
            violation: sim.violation.take(),
        }
    }
}
