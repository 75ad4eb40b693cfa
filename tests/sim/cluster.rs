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
//!
//! Membership changes (`Plan`) are made as an operator makes them, through the production
//! APIs: `DriverCore::propose_member_change`, `DriverCore::join` (a new node starts with
//! what the leader answers), and for a wiped node started under its old id,
//! `DriverCore::probe_answer` and `driver::start::decide_start`. Node ids are never reused:
//! a node's id is its index in `Sim::nodes` plus one, and removed nodes stay in the list,
//! so that every check keeps seeing them.

use super::bank;
use super::linearizability::{check_history, Event, Operation, Verdict};
use super::rng::Rng;
use bytes::Bytes;
use mmapd::kv::{Cluster, Command, Condition, MemberChange, Outcome, StateMachine};
#[cfg(feature = "planted-bugs")]
use mmapd::raft::PlantedBugs;
use mmapd::raft::{
    ConfChange, ConfChangeKind, ConfState, Config, Entry, EntryKind, HardState, InitialState, Message,
    MessageBody, NodeId, Raft, Role, Snapshot, SnapshotMeta,
};
#[cfg(feature = "planted-bugs")]
use mmapd::server::driver::core::DriverBugs;
use mmapd::server::driver::core::{
    Action, Answer, DriverConfig, DriverCore, JoinRequest, Joined, NodeError, PersistJob, Token,
};
use mmapd::server::driver::start::{decide_start, ProbeAnswer, StartDecision};
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

/// How often (per step) a lease client acts: a grant, a leased put or a keepalive.
const LEASE_REQUEST_PER_MILLION: u32 = 20_000;
/// Trace lines kept per run, printed when a check fails (`MMAPD_SIM_TRACE_LINES`
/// keeps more, for a replay).
const TRACE_LINES: usize = 300;

fn trace_lines() -> usize {
    std::env::var("MMAPD_SIM_TRACE_LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(TRACE_LINES)
}
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
/// A membership request not answered in this many ticks is given up and tried again.
const PLAN_REQUEST_TIMEOUT_TICKS: u64 = 5 * ELECTION_TICKS as u64;
/// How long a wiped node waits for its `--peers` to answer before the operator gives up
/// and replaces it.
const REJOIN_PATIENCE_TICKS: u64 = 10 * ELECTION_TICKS as u64;
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
    /// Mix membership changes into the faults (see `Plan`).
    pub membership: bool,
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
            membership: true,
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
    /// Members added (joins answered), members removed (removals committed), wiped
    /// nodes refused under their old id, and wiped nodes started under it anyway.
    pub members_added: u64,
    pub members_removed: u64,
    pub rejoins_refused: u64,
    pub rejoins_started: u64,
    /// Hash check states handed out by nodes and checked (`Action::HashState`).
    pub hash_checks: u64,
    /// Lease grants and keepalives acknowledged, and expiries checked against them.
    pub lease_confirmations: u64,
    pub lease_expiries: u64,
    /// Rounds of watch events checked, those that skipped revisions (a snapshot's
    /// install), and those that declared a gap.
    pub watch_rounds: u64,
    pub watch_jumps: u64,
    pub watch_gaps: u64,
    /// Bank transactions acknowledged (`bank`) and checked.
    pub bank_transactions: u64,
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
    /// An empty data directory whose log starts from configuration `conf` (the
    /// `--peers` list of a bootstrap, or the base a join answered with).
    fn empty(conf: ConfState) -> Disk {
        Disk {
            hard_state: HardState::default(),
            snapshot: Snapshot { meta: SnapshotMeta { index: 0, term: 0, conf }, data: Bytes::new() },
            entries: Vec::new(),
        }
    }

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

/// One simulated server: its driver core (None while crashed) and its disk. Its id is
/// its index in `Sim::nodes` plus one; ids are never reused, and a node stays in the
/// list after it is removed, so the checks keep seeing it.
struct Node {
    id: NodeId,
    /// The `host:port` it advertises (a replacement may take a removed member's).
    address: String,
    /// One of the `--peers` list the cluster was bootstrapped from; else it joined.
    original: bool,
    /// Stopped for good: it handed out `Action::Removed` (the daemon exits and leaves
    /// a marker that refuses every later start). Never restarted.
    removed: bool,
    /// Its disk is gone (a failed disk, or wiped by an operator): it must never run
    /// under this id again, and is started only if the production start decision
    /// lets it (`Plan::Rejoin`).
    retired: bool,
    /// Created for a join that has not been answered yet: not started.
    joining: bool,
    /// Refusals this node may hand out for messages delivered this step, by sender and
    /// kind: the sender was removed, or outside this node's configuration, when the
    /// message arrived (thesis §4.1: a configuration may be stale; §4.2.3).
    refusals_allowed: HashMap<(NodeId, &'static str), u32>,
    /// A peer refused its message as from a removed node: it asks the members whether it
    /// was removed, as the daemon's `joining::confirm_removal` does.
    removal_hinted: bool,
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
    /// Crash as soon as it appends a configuration change of its own term as leader: its
    /// change is left uncommitted in few logs while the next leader makes its own (the
    /// moment the leader must first commit an entry of its term, thesis §4.1).
    crash_after_conf_append_armed: bool,
    /// Crash right after its commit index next advances (as leader), before the
    /// followers hear of it.
    crash_after_commit_armed: bool,
    /// The real store mirroring `disk`, when `Options::real_store`.
    real: Option<RealDisk>,
}

impl Node {
    /// A crashed node that may simply be restarted from its disk.
    fn can_restart(&self) -> bool {
        self.core.is_none() && !self.removed && !self.retired && !self.joining
    }

    /// Running, or down but coming back: clients and faults pick among these.
    fn in_play(&self) -> bool {
        !self.removed && !self.retired && !self.joining
    }

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
    /// Chance per tick that an operator starts a membership change (thesis §4.1): add a
    /// node, promote a learner, remove a follower or the leader, replace a crashed node,
    /// or try to bring a wiped node back under its old id.
    membership_per_million: u32,
    /// Membership changes under way at once (several operators; the cores must refuse
    /// a change while another is pending).
    max_plans: usize,
    /// Ticks an operator waits before trying a refused step again.
    plan_retry_ticks: u64,
    /// Chance that the leader an operator proposes a change to is armed to crash as soon
    /// as it appends it.
    conf_crash_per_million: u32,
    /// Chance that a new leader is cut off, with some of the others, from a crashed node
    /// whose disk holds a configuration change it does not, which comes back at once on
    /// the other side (see `split_from_uncommitted_change`).
    split_new_leader_per_million: u32,
    /// Chance that a node joins as a learner to stay (promoted by an operator later).
    learner_only_per_million: u32,
}

/// A membership change an operator carries through, step by step, with the production
/// APIs only (`DriverCore::propose_member_change`, `join`, `probe_answer`, and
/// `driver::start::decide_start`).
#[derive(Debug)]
enum Plan {
    /// Node `i` (a fresh id, an empty disk) asks to join, as `mmapd --join` does; it
    /// starts with what the leader answers. Promoted automatically unless `learner`.
    Join { i: usize, learner: bool },
    /// Remove member `id` (a follower, the leader itself, or a dead node); then, if
    /// `then_join` is set, add a brand-new node in its place: at the address given, or
    /// at a new one.
    Remove { id: NodeId, then_join: Option<Option<String>> },
    /// Promote learner `id`; given up after a few refusals (it may not catch up).
    Promote { id: NodeId, attempts: u32 },
    /// Node `i`'s disk was wiped and it is started again under its old id, as an
    /// operator who forgot the procedure would: through the `--peers` start decision
    /// if it was one of the bootstrap members, else through a join at its address.
    /// Production must refuse (RAFT-NOTES #18); then the operator replaces it.
    Rejoin { i: usize, answers: BTreeMap<NodeId, ProbeAnswer>, since_tick: u64 },
}

/// One plan and the request it has in flight.
struct PlanUnderWay {
    id: u64,
    plan: Plan,
    in_flight: Option<(Token, u64)>,
    next_try_tick: u64,
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
    /// A leadership transfer asked of the leader; `to_self`: it named the leader itself,
    /// which must be refused.
    Transfer {
        to_self: bool,
    },
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
    /// A membership change proposed for plan `plan`.
    Member {
        plan: u64,
    },
    /// A join asked for plan `plan`.
    Join {
        plan: u64,
    },
    /// A lease's grant or keepalive, invoked at `invoke_tick`.
    Lease {
        id: u64,
        invoke_tick: u64,
    },
    /// A bank transaction (`bank`): its entry's data, and when it was invoked.
    Txn {
        data: Bytes,
        invoke: u64,
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
    /// The hash (`kv::hash_state`) each hash check entry's index got, and from whom.
    check_hashes: HashMap<u64, (u32, NodeId)>,
    hash_checks: u64,
    // Clients.
    next_op: u64,
    history: Vec<Event<u64, u64>>,
    failed_writes: HashSet<usize>,
    pending_writes: HashMap<u64, PendingWrite>,
    /// Ops a core said were not applied (`Dropped`, `NotLeader`).
    failed_ops: HashSet<u64>,
    /// Ops some node applied.
    applied_ops: HashSet<u64>,
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
    trace_limit: usize,
    // Membership.
    /// The `--peers` list the cluster was bootstrapped from: ids 1..=initial_count.
    initial_count: usize,
    /// The configuration as of the highest committed index, folded from the committed
    /// configuration entries with the Raft core's own `ConfChange::apply_to`.
    committed_conf: ConfState,
    /// The cluster record as of the highest committed index (the first applier's).
    committed_cluster: Cluster,
    /// Every id whose removal is committed: it must never be a member again.
    ever_removed: HashSet<NodeId>,
    /// (voter, term) -> candidate of every vote that reached a disk, across all
    /// incarnations: a wiped node voting again under its old id shows here.
    votes: HashMap<(NodeId, u64), NodeId>,
    plans: Vec<PlanUnderWay>,
    next_plan: u64,
    pub members_added: u64,
    pub members_removed: u64,
    pub rejoins_refused: u64,
    pub rejoins_started: u64,
    /// The clients' leases, for the check that none expires early.
    leases: super::leases::Leases,
    /// What every node handed its watchers.
    watch: super::watch::WatchCheck,
    // Bank transactions (`bank`), with their own generator so the other clients' choices
    // stay those of the seed without them.
    bank_rng: Rng,
    bank_acknowledged: Vec<bank::Acknowledged>,
}

/// A hash of a state machine's contents (keys, values and each key's three revisions),
/// and of its change history (the compaction point and every event): the history is
/// replicated state, so nodes must agree on it as on the keys.
fn kv_hash(kv: &StateMachine) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut mix = |bytes: &mut dyn Iterator<Item = u8>| {
        for byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash = hash.rotate_left(17);
    };
    let value_bytes = |value: &mmapd::kv::Value| {
        let revisions = [value.create_revision, value.mod_revision, value.version];
        let mut bytes = value.data.to_vec();
        bytes.extend(revisions.iter().flat_map(|revision| revision.to_le_bytes()));
        bytes
    };
    for (key, value) in kv.iter() {
        mix(&mut key.iter().copied().chain(value_bytes(value)));
    }
    // The lease table is replicated state too: ids, TTLs and the keys attached.
    for (id, lease) in kv.leases() {
        mix(&mut id.to_le_bytes().into_iter().chain(lease.ttl_s.to_le_bytes()));
        for key in lease.keys() {
            mix(&mut key.iter().copied());
        }
    }
    let history = kv.history();
    mix(&mut history.compact_revision().to_le_bytes().into_iter());
    for event in history.events().iter() {
        let kind = match event.kind {
            mmapd::kv::EventKind::Put => 1u8,
            mmapd::kv::EventKind::Delete => 2,
        };
        let values: Vec<u8> = event.value.iter().chain(event.previous.iter()).flat_map(value_bytes).collect();
        mix(&mut event
            .revision
            .to_le_bytes()
            .into_iter()
            .chain([kind])
            .chain(event.key.iter().copied())
            .chain(values));
    }
    hash
}

/// The address node `id` advertises, unless it took a removed member's.
fn address_of(id: NodeId) -> String {
    format!("n{id}:3001")
}

/// A node that is not started yet, with `disk`.
fn new_node(id: NodeId, address: String, original: bool, disk: Disk, real_store: bool) -> Node {
    Node {
        id,
        address,
        original,
        removed: false,
        retired: false,
        joining: false,
        refusals_allowed: HashMap::new(),
        removal_hinted: false,
        core: None,
        disk,
        unpersisted: VecDeque::new(),
        unsaved_snapshot: None,
        unbuilt_snapshot: None,
        restart_at_tick: None,
        clock_stalled_until_tick: 0,
        crash_after_send_armed: false,
        crash_after_append_armed: false,
        crash_after_conf_append_armed: false,
        crash_after_commit_armed: false,
        real: real_store.then(new_real_disk),
    }
}

/// An empty real store in a new temp directory.
fn new_real_disk() -> RealDisk {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), REAL_STORE_OPTIONS).expect("open store").0;
    RealDisk { dir, store: Some(store) }
}

/// Votes needed in a configuration of `voters` voters.
fn majority(voters: usize) -> usize {
    voters / 2 + 1
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
        let mut weather = Weather {
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
            membership_per_million: 0,
            max_plans: 1,
            plan_retry_ticks: rng.between(1, 10),
            conf_crash_per_million: 0,
            split_new_leader_per_million: 0,
            learner_only_per_million: 200_000,
        };
        if options.membership {
            // One seed in eight runs without membership changes, as the simulator did
            // before them; one in four is a storm: an operator starts a change nearly
            // every tick, two at once, and retries at once, so proposals meet new
            // leaders and pending changes (the moments (e) and (f) are about).
            match options.seed % 8 {
                5 => {}
                2 | 7 => {
                    weather.membership_per_million = rng.between(20_000, 50_000) as u32;
                    weather.max_plans = 3;
                    weather.plan_retry_ticks = 1;
                    weather.conf_crash_per_million = rng.between(100_000, 500_000) as u32;
                    weather.split_new_leader_per_million = 500_000;
                    weather.learner_only_per_million = 500_000;
                }
                _ => {
                    weather.membership_per_million = rng.between(1_000, 6_000) as u32;
                    weather.max_plans = if rng.chance(300_000) { 2 } else { 1 };
                    weather.conf_crash_per_million = if rng.chance(500_000) { 100_000 } else { 0 };
                }
            }
        }
        let count = options.nodes;
        let voters: Vec<NodeId> = (1..=count as u64).collect();
        let conf = ConfState::with_voters(voters.clone());
        let nodes = voters
            .iter()
            .map(|&id| new_node(id, address_of(id), true, Disk::empty(conf.clone()), options.real_store))
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
            check_hashes: HashMap::new(),
            hash_checks: 0,
            leases: Default::default(),
            watch: Default::default(),
            persisted_entries: HashMap::new(),
            completeness_checked: HashSet::new(),
            next_op: 1,
            history: Vec::new(),
            failed_writes: HashSet::new(),
            pending_writes: HashMap::new(),
            failed_ops: HashSet::new(),
            applied_ops: HashSet::new(),
            requests: HashMap::new(),
            next_token: 1,
            served_reads: HashMap::new(),
            believed_leader: 0,
            faults: 0,
            inconclusive: 0,
            snapshots_installed: 0,
            transfers: 0,
            violation: None,
            trace: VecDeque::with_capacity(trace_lines()),
            trace_limit: trace_lines().max(1),
            initial_count: count,
            committed_conf: conf,
            committed_cluster: Cluster::default(),
            ever_removed: HashSet::new(),
            votes: HashMap::new(),
            plans: Vec::new(),
            next_plan: 1,
            members_added: 0,
            members_removed: 0,
            rejoins_refused: 0,
            rejoins_started: 0,
            bank_rng: Rng::new(options.seed ^ 0xba4c_0000_0000_0001),
            bank_acknowledged: Vec::new(),
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
        if self.trace.len() >= self.trace_limit {
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

    /// Node `i`'s driver settings, as the daemon makes them: a node bootstrapped from
    /// `--peers` records the bootstrap if it leads first; a node that joined never does.
    fn driver_config(&self, i: usize) -> DriverConfig {
        let bootstrap = self.nodes[i]
            .original
            .then(|| (0x5eed, (1..=self.initial_count as u64).map(|id| (id, address_of(id))).collect()));
        DriverConfig {
            snapshot_entries: self.weather.compact_every,
            snapshot_bytes: self.weather.compact_bytes,
            // Small, so the leaders' automatic compactions run often (derived from the
            // weather, not drawn: the seeds' scenarios stay what they were).
            history_entries: self.weather.compact_every,
            history_bytes: self.weather.compact_bytes * 4,
            step_down_timeout_ticks: 2 * u64::from(ELECTION_TICKS),
            retry_initial_ticks: 2,
            retry_max_ticks: 20,
            bootstrap,
            promote_every_ticks: 10,
            // Unique per incarnation, as the daemon's start time is.
            read_context_start: (self.step << 24) + 1,
            // Every simulated node runs this release, in a cluster it created.
            version_floor: mmapd::server::driver::version::THIS_VERSION,
            #[cfg(feature = "planted-bugs")]
            planted_bugs: self.options.bugs.driver,
        }
    }

    /// Starts node `i` with an empty disk whose log starts from `base`: a join was
    /// answered, or the start decision let a wiped node in. A removed id must never be
    /// let in again (RAFT-NOTES #23); a node removed while it was down may still restart
    /// from its disk, and is then outside the cluster (thesis §4.2.3).
    fn start_empty(&mut self, i: usize, base: ConfState) {
        let id = self.nodes[i].id;
        if self.ever_removed.contains(&id) {
            self.violate(
                "removed id",
                format!("n{id} is let in with an empty disk, but its removal was committed"),
            );
            return;
        }
        let real_store = self.options.real_store;
        let node = &mut self.nodes[i];
        node.joining = false;
        node.retired = false;
        node.disk = Disk::empty(base);
        if real_store {
            node.real = Some(new_real_disk());
        }
        self.start_node(i);
    }

    fn start_node(&mut self, i: usize) {
        let id = self.nodes[i].id;
        let config = self.config(id);
        if self.nodes[i].real.is_some() {
            self.reopen_real_store(i);
        }
        let driver_config = self.driver_config(i);
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
                self.watch.started(id);
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
        self.nodes[i].crash_after_conf_append_armed = false;
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

    /// Restarts a crashed node `id` from its disk (never a removed node, nor one whose
    /// disk is gone).
    pub fn restart(&mut self, id: NodeId) {
        let i = (id - 1) as usize;
        if !self.nodes[i].can_restart() {
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
        for node in self.nodes.iter_mut().filter(|node| !node.refusals_allowed.is_empty()) {
            node.refusals_allowed.clear();
        }
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
            let Some(core) = self.nodes[to].core.as_ref() else { continue };
            // Delivered whatever this node's configuration says (thesis §4.1: it may be
            // stale; a new member hears from a leader it does not know yet). A refusal
            // comes back as an action, checked in `drive`: allowed only if the sender
            // was removed, or outside this node's configuration (thesis §4.2.3).
            let removed = core.kv().read().unwrap().cluster().is_removed(message.from);
            let outsider = removed || !core.raft().conf_state().is_member(message.from);
            if removed {
                // Its transport sees the refusal (403, "removed") and asks the members.
                self.nodes[from].removal_hinted = true;
            }
            if outsider {
                *self.nodes[to].refusals_allowed.entry((message.from, message.body.name())).or_insert(0) += 1;
            }
            let core = self.nodes[to].core.as_mut().unwrap();
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
                        if self.faults_active && self.rng.chance(self.weather.split_new_leader_per_million) {
                            self.split_from_uncommitted_change(i);
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
                Action::HistoryRound(round) => {
                    let id = self.nodes[i].id;
                    if let Err(detail) = self.watch.round(id, &round) {
                        self.violate("watch", detail);
                    }
                }
                Action::HashState { index, machine } => self.on_hash_state(i, index, &machine),
                Action::Removed => {
                    // A committed configuration dropped this node: it carries out the rest
                    // of the round and stops for good, as the daemon exits (thesis §4.2.2).
                    self.nodes[i].removed = true;
                    let committed = self.nodes[i].raft().map_or(0, |raft| raft.commit_index());
                    self.trace(|| format!("n{id} was removed (commit {committed}): it stops for good"));
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
                    match self.nodes[i].refusals_allowed.get_mut(&(from, kind)) {
                        Some(allowed) if *allowed > 0 => {
                            *allowed -= 1;
                            self.trace(|| {
                                format!("n{id} refused a {kind} from non-member n{from}: {reason}")
                            });
                        }
                        _ => self.violate(
                            "step",
                            format!("n{id} refused a {kind} from correct peer n{from}, a member: {reason}"),
                        ),
                    }
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
        if self.nodes[i].removed {
            self.stop_removed(i);
            return false;
        }
        true
    }

    /// A removed node stops: what it did not write is lost, as in a crash, and it is
    /// never started again.
    fn stop_removed(&mut self, i: usize) {
        let id = self.nodes[i].id;
        self.crash(id);
        self.nodes[i].restart_at_tick = None;
        self.trace(|| format!("STOP n{id} (removed)"));
    }

    /// The moment the 2015 correction to single-server changes is about (thesis §4.1): a
    /// leader crashed right after appending a configuration change, and a new leader that
    /// does not hold it has just been elected. The network splits at once: the new leader
    /// keeps one other voter (the one the crashed leader's change removes, if it removes
    /// one) and the learners (but the one it promotes); the crashed node, restarted at
    /// once, has the rest. The operator, whose change timed out with the crashed leader,
    /// asks the new one to remove it. With four voters, the new leader's side is no
    /// majority of the configuration both changes start from, but may be one of its own:
    /// a new leader that changes the configuration before it has committed an entry of
    /// its term lets both sides commit, each with a majority of its own configuration.
    fn split_from_uncommitted_change(&mut self, leader: usize) {
        let committed = self.committed.len() as u64;
        let leader_disk = &self.nodes[leader].disk;
        let mut change = None;
        for (j, node) in self.nodes.iter().enumerate() {
            if !node.can_restart() {
                continue;
            }
            let uncommitted = node.disk.entries.iter().find(|entry| {
                entry.kind == EntryKind::Config
                    && entry.index > committed
                    && leader_disk.term_at(entry.index) != Some(entry.term)
            });
            if let Some(entry) = uncommitted.and_then(|entry| ConfChange::decode(&entry.data).ok()) {
                change = Some((j, entry));
                break;
            }
        }
        let Some((holder, change)) = change else { return };
        let (leader_id, holder_id) = (self.nodes[leader].id, self.nodes[holder].id);
        let conf = self.nodes[leader].raft().unwrap().conf_state().clone();
        let others: Vec<NodeId> =
            conf.voters.iter().copied().filter(|&v| v != leader_id && v != holder_id).collect();
        let kept = match change.kind {
            ConfChangeKind::Remove if others.contains(&change.node) => Some(change.node),
            _ if others.is_empty() => None,
            _ => Some(others[self.rng.index(others.len())]),
        };
        let n = self.nodes.len();
        let mut sides = vec![false; n];
        sides[leader] = true;
        for id in kept.into_iter().chain(conf.learners.iter().copied()) {
            let promoted = change.kind == ConfChangeKind::Promote && change.node == id;
            sides[(id - 1) as usize] = !promoted;
        }
        for from in 0..n {
            for to in 0..n {
                self.blocked[from][to] = sides[from] != sides[to];
            }
        }
        self.heal_at_tick = Some(self.tick + self.rng.between(20, 80));
        self.nodes[holder].restart_at_tick = Some(self.tick + self.rng.between(1, 3));
        let side: Vec<NodeId> = (0..n).filter(|&j| sides[j]).map(|j| self.nodes[j].id).collect();
        self.trace(|| {
            format!(
                "PARTITION new leader n{leader_id} with {side:?} from n{holder_id}, which holds {} n{} it does not",
                change.kind.name(),
                change.node
            )
        });
        let busy = self.busy_ids();
        if conf.voters.len() >= 4 && conf.is_voter(holder_id) && !busy.contains(&holder_id) {
            let id = self.next_plan;
            self.next_plan += 1;
            let plan = Plan::Remove { id: holder_id, then_join: None };
            self.trace(|| format!("operator: plan {id}: {plan:?}"));
            self.plans.push(PlanUnderWay { id, plan, in_flight: None, next_try_tick: self.tick });
        }
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
        let appends_own_change = persist.is_some_and(|job| {
            job.entries
                .iter()
                .any(|entry| entry.kind == EntryKind::Config && self.leaders.get(&entry.term) == Some(&id))
        });
        let node = &self.nodes[i];
        let crash_now = (node.crash_after_send_armed && vote_changed)
            || (node.crash_after_append_armed && appends_own_entries)
            || (node.crash_after_conf_append_armed && appends_own_change);
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
            self.check_one_vote_per_term(id, hard);
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

    /// §5.2: each server votes for at most one candidate in a term; the vote is on its
    /// disk before it is sent (Figure 2). Kept per id across every incarnation, so a
    /// node that comes back with an empty disk under its old id and votes again in a
    /// term it already voted in shows here (RAFT-NOTES #18).
    fn check_one_vote_per_term(&mut self, id: NodeId, hard: HardState) {
        let Some(candidate) = hard.vote else { return };
        match self.votes.get(&(id, hard.term)) {
            Some(&earlier) if earlier != candidate => {
                let term = hard.term;
                self.violate(
                    "election safety",
                    format!("n{id} voted for n{earlier} and for n{candidate} in term {term}"),
                );
            }
            Some(_) => {}
            None => {
                self.votes.insert((id, hard.term), candidate);
            }
        }
    }

    /// Every committed entry survives in every quorum of the configuration in force
    /// (§5.4, thesis §4.1): however the configuration changed since, no majority of
    /// its voters may lack the latest committed entry (by log matching, then every
    /// earlier one), counting only what is on their disks. A voter whose disk is gone
    /// and that is not running cannot vote for anyone, so it counts as holding it; once
    /// it runs again under its old id with an empty disk, it does not.
    fn check_committed_in_every_quorum(&mut self) {
        let Some(last) = self.committed.last() else { return };
        let (index, term) = (self.committed.len() as u64, last.term);
        let voters = &self.committed_conf.voters;
        let mut lacking = Vec::new();
        for &voter in voters {
            let node = &self.nodes[(voter - 1) as usize];
            let gone = node.retired && node.core.is_none();
            if !gone && node.disk.snapshot.meta.index < index && node.disk.term_at(index) != Some(term) {
                lacking.push(voter);
            }
        }
        if lacking.len() >= majority(voters.len()) {
            let detail = format!(
                "committed entry ({index}, t{term}) is on no disk of the quorum {lacking:?} of voters {voters:?}"
            );
            self.violate("committed entry lost", detail);
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
                            None => self.pick_node(),
                        };
                    }
                    // The core says it did not take effect: that must stay true.
                    self.failed_ops.insert(op);
                    if self.applied_ops.contains(&op) {
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
            (Request::Txn { data, invoke }, Answer::Proposal(result)) => match result {
                Ok(applied) => match applied.outcome {
                    Outcome::Txn(outcome) => {
                        self.clock += 1;
                        let index = applied.index;
                        self.trace(|| {
                            format!("bank txn applied at {index}: {outcome:?} (answer from n{id})")
                        });
                        self.bank_acknowledged.push(bank::Acknowledged {
                            data,
                            index,
                            outcome: (*outcome).clone(),
                            invoke,
                            complete: self.clock,
                        });
                    }
                    other => self.violate("bank", format!("n{id} answered a transaction with {other:?}")),
                },
                Err(error) => self.trace(|| format!("bank txn {token}: {error:?}")),
            },
            (Request::Member { plan }, Answer::Proposal(result)) => self.on_member_answer(plan, i, result),
            (Request::Join { plan }, Answer::Join(result)) => self.on_join_answer(plan, i, result),
            (Request::Lease { id, invoke_tick }, Answer::Proposal(Ok(applied))) => {
                if matches!(applied.outcome, Outcome::LeaseGranted { .. }) {
                    self.leases.confirmed(id, invoke_tick);
                }
            }
            (Request::Lease { id, invoke_tick }, Answer::Lease(Ok(Some(_)))) => {
                self.trace(|| format!("lease {id:x} kept alive (invoked at tick {invoke_tick})"));
                self.leases.confirmed(id, invoke_tick);
            }
            (Request::Lease { .. }, Answer::Proposal(_) | Answer::Lease(_)) => {}
            // Refused at once: never started (a timeout), never reported done.
            (
                Request::Transfer { to_self: true },
                Answer::StepDown(result @ (Ok(_) | Err(NodeError::NoLeader))),
            ) => {
                self.violate("transfer", format!("n{id} took up a leadership transfer to itself: {result:?}"))
            }
            (Request::Transfer { .. }, Answer::StepDown(Ok(_))) => self.transfers += 1,
            (Request::Transfer { .. }, Answer::StepDown(Err(_))) => {}
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
            if entry.kind == EntryKind::Config {
                self.on_committed_conf_change(entry);
            }
        }
        // The state after the round's last entry, when the state machine is still there.
        let Some(last) = entries.last() else { return };
        let core = self.nodes[i].core.as_ref().unwrap();
        let kv = core.kv().read().unwrap();
        if kv.applied_index() != last.index {
            return;
        }
        let hash = kv_hash(&kv);
        if last.index == self.committed.len() as u64 {
            self.committed_cluster = kv.cluster().clone();
        }
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

    /// A configuration entry is committed: the configuration in force follows it, as
    /// the Raft core's does (a change that does not apply changes nothing). A removed id
    /// must never be added again (RAFT-NOTES #23).
    fn on_committed_conf_change(&mut self, entry: &Entry) {
        let Ok(change) = ConfChange::decode(&entry.data) else { return };
        let Some(next) = change.apply_to(&self.committed_conf) else { return };
        let (node, index) = (change.node, entry.index);
        match change.kind {
            ConfChangeKind::AddLearner if self.ever_removed.contains(&node) => {
                self.violate("removed id", format!("n{node}, removed before, is added again at {index}"));
            }
            ConfChangeKind::Remove => {
                self.ever_removed.insert(node);
                self.members_removed += 1;
            }
            _ => {}
        }
        let (voters, learners) = (next.voters.clone(), next.learners.clone());
        self.trace(|| {
            format!(
                "committed at {index}: {} n{node}: voters {voters:?} learners {learners:?}",
                change.kind.name()
            )
        });
        self.committed_conf = next;
    }

    /// A client learns the outcome of its writes the first time anyone applies an index.
    fn on_first_apply(&mut self, entry: &Entry) {
        if entry.kind == EntryKind::Normal {
            if let Ok(Command::LeaseRevoke { id }) = Command::decode(&entry.data) {
                if let Err(detail) = self.leases.revoked(id, self.tick) {
                    self.violate("lease expired early", detail);
                    return;
                }
                self.trace(|| format!("lease {id:x} revoked at {}", entry.index));
            }
        }
        let applied_op =
            if entry.kind == EntryKind::Normal { decode_put(&entry.data).map(|(op, _)| op) } else { None };
        if let Some(op) = applied_op {
            self.applied_ops.insert(op);
        }
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
            let (id, role, term) = (raft.id(), raft.role(), raft.term());
            self.max_term = self.max_term.max(term);
            if role == Role::Leader {
                self.saw_leader(id, term);
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
            self.believed_leader = self.pick_node();
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

    /// Now and then a bank client (`bank`) sends a transaction to a random node: the
    /// accounts' opening, a transfer built from what a random node holds (stale, maybe),
    /// or an audit of every account.
    fn bank_client(&mut self) {
        let in_flight = self.requests.values().filter(|(_, r)| matches!(r, Request::Txn { .. })).count();
        if in_flight >= 4 || !self.bank_rng.chance(self.weather.propose_per_million / 2) {
            return;
        }
        let i = self.bank_rng.index(self.nodes.len());
        let seen = self.bank_rng.index(self.nodes.len());
        let (Some(_), Some(seen_core)) = (&self.nodes[i].core, &self.nodes[seen].core) else { return };
        let state = seen_core.kv().read().unwrap().clone();
        let command = if self.bank_rng.chance(300_000) {
            bank::audit()
        } else {
            let rng = &mut self.bank_rng;
            match bank::transfer(&state, |bound| rng.below(bound)) {
                Some(transfer) => transfer,
                None => bank::open(),
            }
        };
        let data = command.encode();
        let token = self.next_token;
        self.next_token += 1;
        self.clock += 1;
        self.requests.insert(token, (i, Request::Txn { data: data.clone(), invoke: self.clock }));
        let id = self.nodes[i].id;
        self.trace(|| format!("client: bank txn {token} via n{id}"));
        self.nodes[i].core.as_mut().unwrap().propose(token, data);
    }

    /// The bank's check (`bank::check`) over the whole committed log, and every node
    /// that applied all of it holds the accounts the ledger ends with.
    pub fn check_bank(&mut self) {
        let committed: Vec<Option<&Bytes>> = self
            .committed
            .iter()
            .map(|c| if c.kind == EntryKind::Normal { Some(&c.data) } else { None })
            .collect();
        let final_accounts = match bank::check(&committed, &self.bank_acknowledged) {
            Ok(accounts) => accounts,
            Err(detail) => return self.violate("bank", detail),
        };
        let last = self.committed.len() as u64;
        for node in &self.nodes {
            let Some(core) = &node.core else { continue };
            let kv = core.kv().read().unwrap();
            if kv.applied_index() != last {
                continue;
            }
            let held = bank::accounts_in(&kv);
            if held != final_accounts {
                let detail =
                    format!("n{} holds the accounts {held:?}, the ledger {final_accounts:?}", node.id);
                drop(kv);
                return self.violate("bank", detail);
            }
        }
    }

    fn client_read(&mut self) {
        let i = self.pick_node();
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
        // Half the transfers name their target (etcd's MoveLeader), any node id: the
        // leader itself, a learner or a removed node must be refused, never obeyed.
        let to = if self.rng.chance(500_000) {
            Some(self.rng.index(self.nodes.len()) as NodeId + 1)
        } else {
            None
        };
        self.requests.insert(token, (i, Request::Transfer { to_self: to == Some(leader) }));
        self.trace(|| format!("client: n{leader}, step down to {to:?}"));
        self.nodes[i].core.as_mut().unwrap().step_down(token, to);
    }

    /// An operator asks node `i` for a snapshot now (`mmapd-admin snapshot`).
    /// An admin asks for a hash check (`mmapd-admin check`) on the believed leader.
    /// A lease client: grants a lease (1 or 2 s), attaches a key to a live one, or keeps
    /// one alive, through the node it believes leads (a follower refuses keepalives).
    fn client_lease(&mut self) {
        let i = if self.rng.chance(800_000) { self.believed_leader } else { self.pick_node() };
        if self.nodes[i].core.is_none() {
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        let invoke_tick = self.tick;
        let roll = self.rng.below(10);
        let node = self.nodes[i].id;
        if roll < 2 {
            let ttl_s = self.rng.between(1, 3);
            let keep_until_tick = invoke_tick + self.rng.between(50, 1_500);
            let Some(id) = self.leases.new_lease(ttl_s, keep_until_tick) else { return };
            self.requests.insert(token, (i, Request::Lease { id, invoke_tick }));
            let core = self.nodes[i].core.as_mut().unwrap();
            core.propose(token, Command::LeaseGrant { id, ttl_s }.encode());
            self.trace(|| format!("client: n{node}, grant lease {id:x} ({ttl_s} s)"));
            return;
        }
        let pick = self.rng.below(u64::MAX) as usize;
        let Some(id) = self.leases.live(invoke_tick, |n| pick % n) else { return };
        let core = self.nodes[i].core.as_mut().unwrap();
        if roll < 4 {
            let key = format!("lease-{id:x}-{}", roll);
            let put =
                Command::Put { key: key.into(), value: "held".into(), condition: Condition::None, lease: id };
            self.requests.insert(token, (i, Request::Other));
            core.propose(token, put.encode());
        } else {
            self.requests.insert(token, (i, Request::Lease { id, invoke_tick }));
            core.lease_keepalive(token, id);
        }
    }

    fn client_hash_check(&mut self) {
        let i = self.believed_leader;
        let Some(core) = self.nodes[i].core.as_mut() else { return };
        let token = self.next_token;
        self.next_token += 1;
        self.requests.insert(token, (i, Request::Other));
        core.propose(token, Command::HashCheck.encode());
        let id = self.nodes[i].id;
        self.trace(|| format!("admin: n{id}, hash check"));
    }

    /// A node handed out its state at a hash check's index to be hashed: it must be the
    /// state as of exactly that index (the state after it, as the other checks know it),
    /// and every node's hash of it the same.
    fn on_hash_state(&mut self, i: usize, index: u64, machine: &StateMachine) {
        let id = self.nodes[i].id;
        if machine.applied_index() != index {
            let at = machine.applied_index();
            self.violate(
                "hash check",
                format!("n{id} handed out its state at {at} for the check at {index}"),
            );
            return;
        }
        self.hash_checks += 1;
        let state = kv_hash(machine);
        if let Some(committed) = self.committed.get_mut((index as usize).wrapping_sub(1)) {
            match committed.state_hash {
                Some(known) if known != state => {
                    self.violate("hash check", format!("n{id}'s state for the check at {index} differs"));
                    return;
                }
                Some(_) => {}
                None => committed.state_hash = Some(state),
            }
        }
        let crc = mmapd::kv::hash_state(machine).crc32c;
        match self.check_hashes.get(&index) {
            Some(&(known, other)) if known != crc => self.violate(
                "hash check",
                format!("n{id} hashed the check at {index} as {crc:08x}, n{other} as {known:08x}"),
            ),
            Some(_) => {}
            None => {
                self.check_hashes.insert(index, (crc, id));
            }
        }
    }

    fn client_snapshot(&mut self) {
        let i = self.pick_node();
        let Some(core) = self.nodes[i].core.as_mut() else { return };
        let token = self.next_token;
        self.next_token += 1;
        self.requests.insert(token, (i, Request::Other));
        core.snapshot(token);
        let id = self.nodes[i].id;
        self.trace(|| format!("admin: n{id}, snapshot now"));
    }

    /// A client that stops waiting for a write its node has not proposed yet (no leader
    /// known there) goes away; the daemon then abandons the request (`abandon_all`), so
    /// it is never proposed: it did not take effect, and must never apply.
    fn abandon_given_up_writes(&mut self) {
        let tick = self.tick;
        let given_up: Vec<u64> = self
            .pending_writes
            .iter()
            .filter(|(_, write)| write.proposed.is_none() && write.give_up_tick <= tick)
            .map(|(&op, _)| op)
            .collect();
        for op in given_up {
            let token = self
                .requests
                .iter()
                .find(|(_, (_, request))| matches!(request, Request::Write { op: o } if *o == op))
                .map(|(&token, &(node, _))| (token, node));
            let Some((token, i)) = token else { continue };
            let Some(core) = self.nodes[i].core.as_mut() else { continue };
            core.abandon_all(&HashSet::from([token]));
            self.requests.remove(&token);
            let pending = self.pending_writes.remove(&op).unwrap();
            self.failed_writes.insert(pending.history_index);
            self.failed_ops.insert(op);
            let id = self.nodes[i].id;
            self.trace(|| format!("client: gives up op {op} on n{id}, which never proposed it"));
        }
    }

    fn clients_act(&mut self) {
        let tick = self.tick;
        let waiting = self.pending_writes.values().filter(|write| write.give_up_tick > tick).count();
        if self.rng.chance(self.weather.propose_per_million) && waiting < MAX_PENDING_WRITES {
            let target = if self.rng.chance(800_000) { None } else { Some(self.pick_node()) };
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
        if self.rng.chance(self.weather.admin_snapshot_per_million) {
            self.client_hash_check();
        }
        if self.rng.chance(LEASE_REQUEST_PER_MILLION) {
            self.client_lease();
        }
        self.bank_client();
        // Reads whose client gave up: their answer, if it comes, is not served.
        self.requests.retain(|_, (_, request)| match request {
            Request::Read { deadline_tick, .. } => *deadline_tick > tick,
            _ => true,
        });
    }

    // ---------------------------------------------------------- membership

    /// The operators' turn, once per tick: now and then (while faults run) one starts a
    /// membership change; every change under way moves one step further, in the
    /// liveness phase too, so that none is left half done.
    fn operate(&mut self) {
        if self.faults_active
            && self.weather.membership_per_million > 0
            && self.plans.len() < self.weather.max_plans
            && self.rng.chance(self.weather.membership_per_million)
        {
            self.new_plan();
        }
        for i in 0..self.nodes.len() {
            if std::mem::take(&mut self.nodes[i].removal_hinted) {
                self.confirm_removal(i);
            }
        }
        let mut k = 0;
        while k < self.plans.len() && self.violation.is_none() {
            if self.advance_plan(k) {
                k += 1;
            } else {
                let done = self.plans.remove(k);
                self.trace(|| format!("operator: plan {} done: {:?}", done.id, done.plan));
            }
        }
    }

    /// A node a peer refused as removed asks the members it knows (its own record's)
    /// and stops if a majority of them answer that it was removed: what the daemon does
    /// (`joining::confirm_removal`) for a node that never learns its removal from its
    /// own log (removed while it was down or cut off). One peer's word is not enough.
    fn confirm_removal(&mut self, i: usize) {
        let Some(core) = &self.nodes[i].core else { return };
        let id = self.nodes[i].id;
        let others: Vec<NodeId> =
            core.kv().read().unwrap().cluster().members().keys().copied().filter(|&m| m != id).collect();
        let mut removed = 0;
        for &other in &others {
            let j = (other - 1) as usize;
            if self.blocked[i][j] || self.blocked[j][i] {
                continue;
            }
            if let Some(peer) = &self.nodes[j].core {
                if matches!(peer.probe_answer(id), ProbeAnswer::Removed { .. }) {
                    removed += 1;
                }
            }
        }
        if removed >= majority(others.len()) {
            self.trace(|| format!("n{id}: {removed} of {} members answer that it was removed", others.len()));
            self.nodes[i].removed = true;
            self.stop_removed(i);
        }
    }

    /// Ids some plan under way is about.
    fn busy_ids(&self) -> HashSet<NodeId> {
        self.plans
            .iter()
            .map(|operation| match &operation.plan {
                Plan::Join { i, .. } | Plan::Rejoin { i, .. } => self.nodes[*i].id,
                Plan::Remove { id, .. } | Plan::Promote { id, .. } => *id,
            })
            .collect()
    }

    /// Picks a membership change that keeps the cluster within 3..=5 voters (a node
    /// being replaced leaves 2 for a while).
    fn new_plan(&mut self) {
        let voters = self.committed_conf.voters.clone();
        let learners = self.committed_conf.learners.clone();
        let busy = self.busy_ids();
        let adding = self
            .plans
            .iter()
            .filter(|o| matches!(o.plan, Plan::Join { .. } | Plan::Remove { then_join: Some(_), .. }))
            .count();
        let removing = self.plans.iter().filter(|o| matches!(o.plan, Plan::Remove { .. })).count();
        let leader = self.leader().map(|(id, _)| id);
        // A disk may be lost only while the voters left can still elect a leader and
        // remove the dead one (thesis §4.1: a dead member can always be removed, given a
        // quorum), and while no other change takes voters away.
        let gone = voters.iter().filter(|&&v| self.nodes[(v - 1) as usize].retired).count();
        let may_lose_voter =
            removing == 0 && voters.len() >= 3 && voters.len() - 1 - gone >= majority(voters.len());
        // Voters that are down and would simply restart from their disk.
        // ... whose disk may fail: another voter's disk holds a log at least as up to date.
        // Raft cannot recover when the one voter that holds the latest term's entries loses
        // them while only learners hold them too, and another voter's uncommitted
        // promotion of such a learner makes its vote needed: the learner refuses the
        // voters' older logs and cannot campaign itself (found by this simulator; a known
        // limitation, see docs/reliability.md).
        let position = |id: NodeId| {
            let disk = &self.nodes[(id - 1) as usize].disk;
            (disk.term_at(disk.last_index()).unwrap_or(0), disk.last_index())
        };
        let crashed: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|&v| self.nodes[(v - 1) as usize].can_restart() && !busy.contains(&v))
            .filter(|&v| {
                voters.iter().any(|&other| {
                    other != v && !self.nodes[(other - 1) as usize].retired && position(other) >= position(v)
                })
            })
            .collect();
        let plan = match self.rng.below(12) {
            // Add a brand-new node (thesis §4.2.1: as a learner, promoted once caught up).
            0..=2 if voters.len() + learners.len() + adding < 5 => {
                let i = self.add_node(None);
                Plan::Join { i, learner: self.rng.chance(self.weather.learner_only_per_million) }
            }
            3 if voters.len() < 5 => {
                let free: Vec<NodeId> = learners.iter().copied().filter(|l| !busy.contains(l)).collect();
                if free.is_empty() {
                    return;
                }
                Plan::Promote { id: free[self.rng.index(free.len())], attempts: 0 }
            }
            // Remove a follower, voter or learner.
            4 | 5 => {
                let mut followers: Vec<NodeId> =
                    learners.iter().copied().filter(|l| !busy.contains(l)).collect();
                if voters.len().saturating_sub(removing) > 3 {
                    followers.extend(voters.iter().filter(|&&v| Some(v) != leader && !busy.contains(&v)));
                }
                if followers.is_empty() {
                    return;
                }
                Plan::Remove { id: followers[self.rng.index(followers.len())], then_join: None }
            }
            // Thesis §4.2.2: the leader removes itself, and steps down once it commits.
            6 if voters.len().saturating_sub(removing) > 3 => match leader {
                Some(leader) if voters.contains(&leader) && !busy.contains(&leader) => {
                    Plan::Remove { id: leader, then_join: None }
                }
                _ => return,
            },
            // A crashed node's disk failed: remove it, add a new node (a new id) in its place,
            // often at the same address.
            7 | 8 if may_lose_voter && !crashed.is_empty() => {
                let id = crashed[self.rng.index(crashed.len())];
                let i = (id - 1) as usize;
                self.wipe(i);
                let address = self.rng.chance(500_000).then(|| self.nodes[i].address.clone());
                self.trace(|| format!("operator: n{id}'s disk failed: replace it"));
                Plan::Remove { id, then_join: Some(address) }
            }
            // A crashed member that the cluster saw hold the log is wiped and started
            // again as itself: it must be refused, and is then replaced.
            // ... or one that was removed, started again with its `--peers` (RAFT-NOTES #23).
            9 | 10 if !self.plans.iter().any(|o| matches!(o.plan, Plan::Rejoin { .. })) => {
                let removed = (0..self.nodes.len()).filter(|&j| {
                    let node = &self.nodes[j];
                    node.original
                        && node.core.is_none()
                        && !node.retired
                        && self.ever_removed.contains(&node.id)
                });
                let started = crashed.iter().copied().filter(|_| may_lose_voter);
                let candidates: Vec<NodeId> = started
                    .chain(removed.map(|j| self.nodes[j].id))
                    .filter(|&id| !busy.contains(&id) && self.refusal_is_promised(id))
                    .collect();
                if candidates.is_empty() {
                    return;
                }
                let id = candidates[self.rng.index(candidates.len())];
                let i = (id - 1) as usize;
                self.wipe(i);
                self.trace(|| format!("operator: n{id} is wiped and started again under its old id"));
                Plan::Rejoin { i, answers: BTreeMap::new(), since_tick: self.tick }
            }
            _ => return,
        };
        let id = self.next_plan;
        self.next_plan += 1;
        self.trace(|| format!("operator: plan {id}: {plan:?}"));
        self.plans.push(PlanUnderWay { id, plan, in_flight: None, next_try_tick: self.tick });
    }

    /// Whether production promises to refuse member `id` if it comes back with an empty
    /// disk (RAFT-NOTES #18, #23): the cluster's record marks it as having held the log
    /// (`kv::Member::started`), or as removed, where its start is decided. A member that joined asks the
    /// leader, which answers only from a record holding everything committed. A bootstrap
    /// member decides from the answers of a majority of its `--peers`, each from its own
    /// applied record: the promise holds once every one it can reach has applied the
    /// mark, and enough of them are reachable to decide in one round. Before that there
    /// is a window the daemon does not close (a known limitation, docs/reliability.md):
    /// peers that have not applied the mark yet, or a minority that holds it, let the
    /// wiped member back in, and a committed entry it held can be lost (this simulator
    /// found it, seed 281 before this rule).
    fn refusal_is_promised(&self, id: NodeId) -> bool {
        let i = (id - 1) as usize;
        let removed = self.ever_removed.contains(&id);
        let refuses = |cluster: &Cluster| {
            if removed {
                cluster.is_removed(id)
            } else {
                cluster.members().get(&id).is_some_and(|m| m.started)
            }
        };
        if !refuses(&self.committed_cluster) {
            return false;
        }
        if !self.nodes[i].original {
            return !removed;
        }
        let mut answering = 0;
        for peer in (1..=self.initial_count as u64).filter(|&p| p != id) {
            let j = (peer - 1) as usize;
            let Some(core) = &self.nodes[j].core else { continue };
            if self.blocked[i][j] || self.blocked[j][i] {
                continue;
            }
            if !refuses(core.kv().read().unwrap().cluster()) {
                return false;
            }
            answering += 1;
        }
        answering >= majority(self.initial_count) - 1
    }

    /// A new node with a fresh id and an empty disk, waiting to join at `address`.
    fn add_node(&mut self, address: Option<String>) -> usize {
        let id = self.nodes.len() as u64 + 1;
        let address = address.unwrap_or_else(|| address_of(id));
        let conf = ConfState::default();
        let mut node = new_node(id, address, false, Disk::empty(conf), self.options.real_store);
        node.joining = true;
        self.nodes.push(node);
        for row in &mut self.blocked {
            row.push(false);
        }
        self.blocked.push(vec![false; self.nodes.len()]);
        (id - 1) as usize
    }

    /// Node `i` (down) loses its disk: it must never run again under its id.
    fn wipe(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.core.is_none(), "wiping a running node");
        node.retired = true;
        node.restart_at_tick = None;
        node.disk = Disk::empty(ConfState::default());
        node.real = None;
    }

    /// Carries plan `k` one step; false once it is done.
    fn advance_plan(&mut self, k: usize) -> bool {
        if let Some((token, since)) = self.plans[k].in_flight {
            // The request died with its node, or waits for a leader that cannot commit.
            if self.requests.contains_key(&token) && self.tick < since + PLAN_REQUEST_TIMEOUT_TICKS {
                return true;
            }
            self.requests.remove(&token);
            self.plans[k].in_flight = None;
        }
        if self.tick < self.plans[k].next_try_tick {
            return true;
        }
        match self.plans[k].plan {
            Plan::Join { i, learner } => {
                if !self.nodes[i].joining {
                    return false;
                }
                let (address, id) = (self.nodes[i].address.clone(), self.nodes[i].id);
                self.ask_join(k, JoinRequest { address, learner, candidate_id: id });
            }
            Plan::Remove { id, ref then_join } => {
                if self.ever_removed.contains(&id) {
                    let Some(address) = then_join.clone() else { return false };
                    let i = self.add_node(address);
                    self.plans[k].plan = Plan::Join { i, learner: false };
                    return true;
                }
                self.propose_change(k, MemberChange::Remove { id });
            }
            Plan::Promote { id, attempts } => {
                if attempts >= 5 || !self.committed_conf.is_learner(id) {
                    return false;
                }
                self.propose_change(k, MemberChange::Promote { id });
            }
            Plan::Rejoin { i, .. } => return self.rejoin_step(k, i),
        }
        true
    }

    /// Proposes plan `k`'s change on the node that leads in the highest term.
    fn propose_change(&mut self, k: usize, change: MemberChange) {
        let Some((leader, _)) = self.leader() else {
            self.plans[k].next_try_tick = self.tick + self.weather.plan_retry_ticks;
            return;
        };
        let i = (leader - 1) as usize;
        let token = self.next_token;
        self.next_token += 1;
        let plan = self.plans[k].id;
        self.requests.insert(token, (i, Request::Member { plan }));
        self.plans[k].in_flight = Some((token, self.tick));
        self.trace(|| format!("operator: plan {plan}: {change:?} via n{leader}"));
        // Only a leader settled in its term: a new one is the other half of the moment.
        let settled = self.nodes[i].raft().unwrap().committed_in_current_term();
        if settled && self.faults_active && self.rng.chance(self.weather.conf_crash_per_million) {
            self.nodes[i].crash_after_conf_append_armed = true;
            self.trace(|| {
                format!("ARM leader n{leader} to crash right after appending a configuration change")
            });
        }
        self.nodes[i].core.as_mut().unwrap().propose_member_change(token, change);
    }

    /// Asks a join for plan `k`, of the leader if there is one, else of any running node
    /// (which names the leader), as `mmapd --join` asks the addresses it is given.
    fn ask_join(&mut self, k: usize, request: JoinRequest) {
        let i = match self.leader() {
            Some((leader, _)) => (leader - 1) as usize,
            None => self.pick_node(),
        };
        if self.nodes[i].core.is_none() {
            self.plans[k].next_try_tick = self.tick + self.weather.plan_retry_ticks;
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        let plan = self.plans[k].id;
        self.requests.insert(token, (i, Request::Join { plan }));
        self.plans[k].in_flight = Some((token, self.tick));
        let via = self.nodes[i].id;
        self.trace(|| format!("operator: plan {plan}: join {request:?} via n{via}"));
        self.nodes[i].core.as_mut().unwrap().join(token, request);
    }

    fn plan_position(&self, plan: u64) -> Option<usize> {
        self.plans.iter().position(|operation| operation.id == plan)
    }

    fn on_member_answer(
        &mut self,
        plan: u64,
        i: usize,
        result: Result<mmapd::server::driver::Applied, NodeError>,
    ) {
        let Some(k) = self.plan_position(plan) else { return };
        self.plans[k].in_flight = None;
        let via = self.nodes[i].id;
        self.trace(|| format!("operator: plan {plan}: n{via} answered {result:?}"));
        if result.is_err() {
            self.plans[k].next_try_tick = self.tick + self.weather.plan_retry_ticks;
            if let Plan::Promote { attempts, .. } = &mut self.plans[k].plan {
                *attempts += 1;
            }
        }
    }

    fn on_join_answer(&mut self, plan: u64, i: usize, result: Result<Joined, NodeError>) {
        let Some(k) = self.plan_position(plan) else { return };
        self.plans[k].in_flight = None;
        let via = self.nodes[i].id;
        self.trace(|| format!("operator: plan {plan}: n{via} answered the join with {result:?}"));
        let joining = match self.plans[k].plan {
            Plan::Join { i, .. } | Plan::Rejoin { i, .. } => i,
            _ => return,
        };
        let id = self.nodes[joining].id;
        match result {
            Ok(joined) if joined.id == id => {
                if matches!(self.plans[k].plan, Plan::Rejoin { .. }) {
                    self.rejoins_started += 1;
                    self.trace(|| format!("n{id}, wiped, is let back in under its old id"));
                } else {
                    self.members_added += 1;
                }
                self.start_empty(joining, joined.base);
            }
            Ok(joined) => {
                let address = self.nodes[joining].address.clone();
                self.violate(
                    "join",
                    format!("n{id} asked to join at {address} and was given id n{}", joined.id),
                );
            }
            Err(NodeError::Invalid(reason))
                if matches!(self.plans[k].plan, Plan::Rejoin { .. }) && reason.contains("held the log") =>
            {
                self.rejoins_refused += 1;
                let address = self.nodes[joining].address.clone();
                self.plans[k].plan = Plan::Remove { id, then_join: Some(Some(address)) };
            }
            Err(_) => self.plans[k].next_try_tick = self.tick + self.weather.plan_retry_ticks,
        }
    }

    /// One round of a wiped node's start under its old id. A bootstrap member asks the
    /// `--peers` it can reach (`DriverCore::probe_answer`) and follows
    /// `driver::start::decide_start`, as the daemon does; a member that joined asks the
    /// leader to join at its address. Refused, the operator replaces it.
    fn rejoin_step(&mut self, k: usize, i: usize) -> bool {
        let node = &self.nodes[i];
        if node.core.is_some() {
            return false;
        }
        let (id, address, original) = (node.id, node.address.clone(), node.original);
        let Plan::Rejoin { since_tick, .. } = self.plans[k].plan else { unreachable!() };
        if self.tick > since_tick + REJOIN_PATIENCE_TICKS {
            self.trace(|| format!("n{id} is still not started: the operator replaces it"));
            self.plans[k].plan = Plan::Remove { id, then_join: Some(Some(address)) };
            return true;
        }
        if !original {
            let candidate_id = self.nodes.len() as u64 + 1;
            self.ask_join(k, JoinRequest { address, learner: false, candidate_id });
            return true;
        }
        let mut heard = Vec::new();
        for peer in 1..=self.initial_count as u64 {
            let j = (peer - 1) as usize;
            if peer == id || self.blocked[i][j] || self.blocked[j][i] {
                continue;
            }
            if let Some(core) = &self.nodes[j].core {
                heard.push((peer, core.probe_answer(id)));
            }
        }
        let Plan::Rejoin { answers, .. } = &mut self.plans[k].plan else { unreachable!() };
        // The daemon keeps each peer's latest answer across rounds.
        answers.extend(heard);
        let answers: Vec<ProbeAnswer> = answers.values().copied().collect();
        match decide_start(&self.driver_config(i), self.initial_count, &answers) {
            StartDecision::Start => {
                self.rejoins_started += 1;
                self.trace(|| format!("n{id}, wiped, starts again under its old id (answers {answers:?})"));
                self.start_empty(i, ConfState::with_voters((1..=self.initial_count as u64).collect()));
                false
            }
            StartDecision::Refuse { reason, .. } => {
                self.rejoins_refused += 1;
                self.trace(|| format!("n{id} refuses to start under its old id: {reason}"));
                self.plans[k].plan = Plan::Remove { id, then_join: Some(Some(address)) };
                true
            }
            StartDecision::Wait { .. } => {
                self.plans[k].next_try_tick = self.tick + 3;
                true
            }
        }
    }

    // -------------------------------------------------------------- faults

    /// A random member of the committed configuration that is running or coming back
    /// (not removed, not gone): clients and faults pick among these, as clients follow
    /// the member list.
    fn pick_node(&mut self) -> usize {
        let conf = &self.committed_conf;
        let candidates: Vec<usize> = conf
            .voters
            .iter()
            .chain(&conf.learners)
            .map(|&id| (id - 1) as usize)
            .filter(|&i| self.nodes[i].in_play())
            .collect();
        if candidates.is_empty() {
            return 0;
        }
        candidates[self.rng.index(candidates.len())]
    }

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
                    _ => self.pick_node(),
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
                let i = self.pick_node();
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
                let Some(crashed) = (0..n).find(|&i| self.nodes[i].can_restart()) else { return };
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
            self.nodes[i].crash_after_conf_append_armed = false;
            self.nodes[i].crash_after_commit_armed = false;
            self.nodes[i].clock_stalled_until_tick = 0;
            self.restart(self.nodes[i].id);
        }
    }

    // ---------------------------------------------------------------- loop

    /// One step: deliver, handle Readies, clients, faults, ticks, checks.
    pub fn run_step(&mut self) {
        self.step += 1;
        // The cores' monotonic clock (the lease clock's time): it runs for every node,
        // a node whose ticks stall included (a starved timer, not a stopped clock).
        let now_ms = self.tick * super::leases::TICK_MS;
        for node in &mut self.nodes {
            if let Some(core) = node.core.as_mut() {
                core.observe_time(now_ms);
            }
        }
        self.deliver_due();
        // A node that is down has nothing to hand out.
        let mut order: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.nodes[i].core.is_some()).collect();
        self.rng.shuffle(&mut order);
        for &i in &order {
            self.drive(i);
        }
        if self.options.clients {
            self.clients_act();
        }
        if self.step % STEPS_PER_TICK == 0 {
            self.tick += 1;
            // Before the cores tick: a tick may propose a waiting write, which `drive`
            // sees only in the next step.
            if self.options.clients {
                self.abandon_given_up_writes();
            }
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
            self.operate();
        }
        self.check_roles();
        self.check_committed_in_every_quorum();
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
    /// Only the members of the leader's configuration count: a removed node is stopped,
    /// or, if it never learnt of its removal, outside the cluster for good.
    pub fn is_settled(&self) -> bool {
        let Some((leader, term)) = self.leader() else { return false };
        let leader_raft = self.nodes[(leader - 1) as usize].raft().unwrap();
        let leader_commit = leader_raft.commit_index();
        leader_raft.conf_state().members().all(|member| {
            let node = &self.nodes[(member - 1) as usize];
            node.raft().is_some_and(|raft| {
                raft.term() == term && raft.leader() == Some(leader) && node.state().0 >= leader_commit
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
        // Healing does not give back a lost disk: a voter whose disk failed stays gone
        // until its removal commits, and the others must all agree on a leader (without
        // pre-vote, those that cannot win keep splitting the vote) and remove it, then
        // catch up its replacement. Twice the bound then.
        let gone = self.committed_conf.voters.iter().any(|&v| self.nodes[(v - 1) as usize].retired);
        let bound = if gone { 2 * self.options.liveness_ticks } else { self.options.liveness_ticks };
        for _ in 0..bound {
            self.run_ticks(1);
            if self.violation.is_some() {
                return;
            }
            let new_write_done = self.applied_ops.iter().any(|&op| op >= first_new_op);
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
                "{} ticks after faults stopped: leader {:?}, settled {}, unresolved proposals {still:?}\n{}",
                self.tick - start_tick,
                self.leader(),
                self.is_settled(),
                self.describe_nodes()
            );
            self.violate("liveness", detail);
            return;
        }
        self.check_linearizability();
        self.check_bank();
    }

    /// Every node's state and the plans under way, for a liveness failure.
    fn describe_nodes(&self) -> String {
        let mut text = format!(
            "committed configuration: voters {:?} learners {:?}; plans under way: {:?}",
            self.committed_conf.voters,
            self.committed_conf.learners,
            self.plans.iter().map(|o| &o.plan).collect::<Vec<_>>()
        );
        for node in &self.nodes {
            let state = match node.raft() {
                Some(raft) => {
                    let conf = raft.conf_state();
                    format!(
                        "{} t{} leader {:?} commit {} last {} voters {:?} learners {:?}",
                        raft.role().as_str(),
                        raft.term(),
                        raft.leader(),
                        raft.commit_index(),
                        raft.last_index(),
                        conf.voters,
                        conf.learners
                    )
                }
                None => "down".to_string(),
            };
            let flags =
                [(node.removed, " removed"), (node.retired, " disk gone"), (node.joining, " joining")];
            let flags: String = flags.iter().filter(|(on, _)| *on).map(|(_, name)| *name).collect();
            let _ = write!(text, "\n    n{} ({}){flags}: {state}", node.id, node.address);
        }
        text
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
                members_added: 0,
                members_removed: 0,
                rejoins_refused: 0,
                rejoins_started: 0,
                hash_checks: 0,
                lease_confirmations: 0,
                lease_expiries: 0,
                watch_rounds: 0,
                watch_jumps: 0,
                watch_gaps: 0,
                bank_transactions: 0,
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
            members_added: sim.members_added,
            members_removed: sim.members_removed,
            rejoins_refused: sim.rejoins_refused,
            rejoins_started: sim.rejoins_started,
            hash_checks: sim.hash_checks,
            lease_confirmations: sim.leases.confirmed,
            lease_expiries: sim.leases.expired,
            watch_rounds: sim.watch.rounds,
            watch_jumps: sim.watch.jumps,
            watch_gaps: sim.watch.gaps,
            bank_transactions: sim.bank_acknowledged.len() as u64,
            trace: sim.trace.iter().cloned().collect(),
            violation: sim.violation.take(),
        }
    }
}
