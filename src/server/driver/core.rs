//! The driver core: every decision the daemon makes around the Raft core, with no IO,
//! no clock and no threads. The tokio shell (`driver::shell`) and the simulator
//! (`tests/sim`) both run exactly this code.
//!
//! Events go in as method calls (`tick`, `step`, `propose`, `read`, `step_down`,
//! `snapshot`, `persisted`, `snapshot_built`, `snapshot_saved`, `abandon`); `poll`
//! hands the Raft core's Ready out as actions; `take_actions` returns what the caller
//! must carry out, in order: send messages, persist (one awaited write at a time),
//! build and save a snapshot, answer a request. Time is the tick count.
//!
//! What it decides, following `Ready`'s contract (see `raft::Ready`):
//! - a Ready's messages go out at once; its state is persisted; only when that is
//!   durable do its `persisted_messages` go out, its snapshot get installed, its
//!   entries get applied and its reads get answered, then `advance`;
//! - while the disk writes, replication and ReadIndex rounds continue and entries a
//!   majority committed are applied early (thesis §10.2.1);
//! - a read is answered only once the *state machine* (not the core's applied index,
//!   which an installed snapshot moves at once) holds everything up to its read index;
//! - a proposal resolves when its index is applied: with its outcome if the entry is
//!   the one proposed, `Dropped` if another entry took its index, `OutcomeUnknown` if
//!   a snapshot covered it (the forwarder must never retry those);
//! - snapshots are taken on applied entries or applied bytes, never past what this
//!   node's log holds durably, retried with back-off after a failure. The core hands
//!   out a frozen copy of the state machine (an O(1) clone) to be serialised and written
//!   off the loop (`Action::BuildSnapshot`); only when that is done does it compact the
//!   Raft log and attach the new snapshot to InstallSnapshot messages, so neither
//!   heartbeats nor writes wait for a large snapshot;
//! - a received snapshot is decoded before it is stepped, so one that does not decode
//!   is refused and never persisted;
//! - a storage failure stops the node: `Action::Fatal` (the shell exits, systemd
//!   restarts it, recovery runs); a full disk instead fails writes and retries the
//!   write with back-off until space is freed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use super::leases::LeaseClock;
use super::version::{feature_of, feature_of_change, Feature, MemberVersions, Unsupported, Version};
use crate::kv::{Command, MemberChange, Outcome, Since, StateMachine};
use crate::raft::{
    CompactError, ConfChange, ConfChangeError, ConfChangeKind, Entry, EntryKind, HardState, Message,
    MessageBody, NodeId, ProposeError, Raft, Role, Snapshot, SnapshotMeta, SoftState, Status,
};

/// The caller's name for a request, unique among those in flight.
pub type Token = u64;

/// The key-value state machine, shared with readers; written only by the core.
pub type SharedKv = Arc<RwLock<StateMachine>>;

/// Why the driver could not serve a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeError {
    /// Another node leads; forward there.
    NotLeader(Option<NodeId>),
    /// No leader is known yet (or a transfer is in progress): retry later.
    NoLeader,
    /// The entry was overwritten by another leader's: it did not take effect.
    Dropped,
    /// The write may or may not have taken effect (a snapshot covered its index, or
    /// the node stopped): it must not be retried blindly.
    OutcomeUnknown(String),
    /// The disk is full: nothing new is acknowledged until space is freed.
    DiskFull(String),
    /// The disk failed: nothing was acknowledged.
    Storage(String),
    /// The node is shutting down.
    ShuttingDown,
    /// A command is refused as invalid.
    Invalid(String),
    /// The Raft core refused a membership change (a change pending, the last voter, a
    /// learner not caught up, ...): nothing changed. Kept typed so that the edge can
    /// name the refusal (etcd's front has its own errors for two of them).
    ConfChange(ConfChangeError),
    /// The request needs a feature some member's version lacks (a rolling upgrade is
    /// under way): retry once every member is upgraded.
    Unsupported(super::version::Unsupported),
}

impl std::fmt::Display for NodeError {
    /// A sentence for users (these end up in HTTP error bodies).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::NotLeader(Some(leader)) => write!(f, "this node is not the leader ({leader:016x} is)"),
            NodeError::NotLeader(None) => write!(f, "this node is not the leader, and no leader is known"),
            NodeError::NoLeader => write!(f, "no leader is known"),
            NodeError::Dropped => write!(f, "another leader's entry replaced the write"),
            NodeError::OutcomeUnknown(reason) | NodeError::Invalid(reason) => write!(f, "{reason}"),
            NodeError::DiskFull(error) => write!(f, "the disk is full: {error}"),
            NodeError::Storage(error) => write!(f, "storage error: {error}"),
            NodeError::ShuttingDown => write!(f, "the node is shutting down"),
            NodeError::Unsupported(unsupported) => write!(f, "{unsupported}"),
            NodeError::ConfChange(error) => write!(f, "{error}"),
        }
    }
}

/// The answer to a committed proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The log index of the entry.
    pub index: u64,
    /// What applying it did.
    pub outcome: Outcome,
}

/// An answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// To `propose`.
    Proposal(Result<Applied, NodeError>),
    /// To `read`: the state machine may now be read linearizably.
    Read(Result<(), NodeError>),
    /// To `step_down`: the new leader.
    StepDown(Result<NodeId, NodeError>),
    /// To `snapshot`.
    Snapshot(Result<SnapshotMeta, NodeError>),
    /// To `join`.
    Join(Result<Joined, NodeError>),
    /// To `lease_keepalive` and `lease_time_to_live`: the lease's state on the leader,
    /// `None` when it does not exist or has expired.
    Lease(Result<Option<LeaseState>, NodeError>),
}

/// A lease as the leader's clock sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseState {
    /// The lease.
    pub id: u64,
    /// The TTL it was granted, in seconds.
    pub granted_ttl_s: u64,
    /// Milliseconds before it expires unless kept alive.
    pub remaining_ms: u64,
}

/// A node with an empty data directory asks to join (on the leader).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// The address it advertises.
    pub address: String,
    /// Stay a learner (else promoted once caught up).
    pub learner: bool,
    /// A fresh random id the caller drew: taken if the node is new to the cluster.
    pub candidate_id: NodeId,
}

/// What a joining node needs to start: who it is and where the log starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The cluster's id.
    pub cluster_id: u64,
    /// The id the node takes.
    pub id: NodeId,
    /// The configuration as of the leader's log start (`Raft::log_start_conf`), less
    /// the joining node itself: the base the joining node's empty log starts from.
    pub base: crate::raft::ConfState,
    /// Every member and its address.
    pub members: Vec<(NodeId, String)>,
}

/// A write for the disk: snapshot, then entries, then hard state.
#[derive(Debug, Clone)]
pub struct PersistJob {
    /// A snapshot received from the leader: install it, dropping the log it covers.
    pub snapshot: Option<Snapshot>,
    /// Entries to append (an existing index is replaced with everything after it).
    pub entries: Vec<Entry>,
    /// The hard state, when it changed.
    pub hard_state: Option<HardState>,
    /// Make it durable (msync) before reporting. False when only the commit index
    /// moved: a lower bound that may lag (RAFT-NOTES #3); the core does not wait.
    pub must_sync: bool,
}

/// How a storage operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageFailure {
    /// No space left: recoverable once space is freed.
    DiskFull(String),
    /// Anything else: the node must stop and recover from its files.
    Other(String),
}

/// What the caller must do, in the order given.
#[derive(Debug)]
pub enum Action {
    /// The role, term or leader changed.
    RoleChanged(SoftState),
    /// Send these messages (InstallSnapshot messages carry the snapshot's data).
    Send(Vec<Message>),
    /// Persist this; report each job, in order, with `persisted`.
    Persist(PersistJob),
    /// Serialise `machine` (a frozen copy of the state machine at `meta.index`) and
    /// write it to a file, off the loop; report with `snapshot_built`.
    BuildSnapshot {
        /// The snapshot's metadata.
        meta: SnapshotMeta,
        /// The state machine as of `meta.index`.
        machine: StateMachine,
    },
    /// Make the snapshot last reported built durable as the node's snapshot, then drop
    /// the log up to it; report with `snapshot_saved`. Follows `snapshot_built` in the
    /// same round of actions, or never (a leader's snapshot overtook it: discard it).
    SaveSnapshot {
        /// Its metadata.
        meta: SnapshotMeta,
        /// The state machine's snapshot payload.
        data: Bytes,
    },
    /// Answer a request.
    Answer(Token, Answer),
    /// A write entered the log at (term, index); its answer comes when it applies.
    Proposed {
        /// The request.
        token: Token,
        /// Its entry's term.
        term: u64,
        /// Its entry's index.
        index: u64,
    },
    /// These committed entries were applied to the state machine, in order.
    Applied(Vec<Entry>),
    /// What the state machine's history gained from an apply or a snapshot install,
    /// for live watches (`server::watch`): handed out in apply order, never skipped.
    HistoryRound(HistoryRound),
    /// A snapshot from the leader replaced the state machine.
    InstalledSnapshot(Snapshot),
    /// Drop this off the loop: freeing a large map takes a while.
    DropOffLoop(StateMachine),
    /// A `Command::HashCheck` was applied at `index`: hash `machine`, a frozen copy of
    /// the state machine as of exactly that index, off the loop (`kv::hash_state`), and
    /// keep the result for `mmapd-admin check`.
    HashState {
        /// The index of the hash check entry.
        index: u64,
        /// The state as of `index` (an O(1) copy).
        machine: StateMachine,
    },
    /// A peer message was refused (logged by the caller with its sender).
    Refused {
        /// The sender it claims.
        from: NodeId,
        /// The message kind.
        kind: &'static str,
        /// Why.
        reason: String,
    },
    /// Storage failed in a way the node cannot continue from: stop the process.
    Fatal(String),
    /// The cluster's record (its id, members, addresses) changed: peers to reach,
    /// names to show. Also handed out once at the first `poll`.
    MembersChanged(crate::kv::Cluster),
    /// A committed configuration removed this node: it stops for good (the shell
    /// exits with `EXIT_REMOVED`, which the unit does not restart).
    Removed,
}

/// The changes one apply (or snapshot install) added to the state machine, in order:
/// every event with a revision in `after + 1 ..= through` that the history holds.
/// Consecutive rounds tile the revisions (each one's `after` is the one before's
/// `through`), so a watcher that has every round has every event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRound {
    /// The applied index before.
    pub after: u64,
    /// The applied index after: the revision through which a watcher that saw this
    /// round has seen everything.
    pub through: u64,
    /// The events of `after + 1 ..= through` (an O(1) share of the history's).
    pub events: imbl::Vector<crate::kv::Event>,
    /// Set when events of this range are missing because they were compacted before
    /// this node held them (a snapshot installed over a gap): every event at or below
    /// this revision is lost to a watcher that had not seen it. 0: nothing missing.
    pub missing_through: u64,
}

/// The core's settings.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Take a snapshot after this many entries applied since the last one.
    pub snapshot_entries: u64,
    /// ... or after this many bytes of applied entry data since the last one, so the
    /// log held in memory stays bounded in bytes, not only in entries.
    pub snapshot_bytes: u64,
    /// A leadership transfer not done after this many ticks is reported failed.
    pub step_down_timeout_ticks: u64,
    /// The first wait after a failed snapshot or a full disk; doubled per failure.
    pub retry_initial_ticks: u64,
    /// The longest wait between retries.
    pub retry_max_ticks: u64,
    /// What a leader records as the cluster's bootstrap (a random cluster id chosen at
    /// start, and the first members with their addresses) if the state machine has no
    /// cluster record yet. `None`: never bootstrap (a node that joined).
    pub bootstrap: Option<(u64, Vec<(NodeId, String)>)>,
    /// Ticks between a leader's attempts to promote caught-up learners.
    pub promote_every_ticks: u64,
    /// The first ReadIndex context this incarnation uses; must differ from every
    /// context an earlier incarnation of this node used, since a delayed
    /// ReadIndexResponse from before a restart would otherwise answer a new read with
    /// an old index (a stale read; the simulator found it). The daemon passes the
    /// start time in nanoseconds.
    pub read_context_start: u64,
    /// The least version any member may run, for members that never reported one
    /// (`version::MemberVersions`): `THIS_VERSION` for a cluster this release created
    /// (the data directory has an origin file), `OLDEST_VERSION` for a data directory an
    /// earlier release wrote. A cluster record, once applied, raises it to the version
    /// that introduced the record (only a cluster at that version writes one).
    pub version_floor: super::version::Version,
    /// A leader proposes a `Command::Compact` when the history holds more events than
    /// this (`--history-entries`) ...
    pub history_entries: u64,
    /// ... or more bytes (`History::approximate_bytes`, `--history-bytes`). It compacts
    /// to the lowest revision that brings the history to three quarters of both bounds
    /// (`HISTORY_COMPACT_TO`), so that compactions come in batches, not one per write.
    pub history_bytes: u64,
    /// Bugs to plant, so the simulator can prove it catches them.
    #[cfg(feature = "planted-bugs")]
    pub planted_bugs: DriverBugs,
}

/// The share of `--history-entries` and `--history-bytes` an automatic compaction
/// brings the history back to: (numerator, denominator).
pub const HISTORY_COMPACT_TO: (u64, u64) = (3, 4);

/// Known driver bugs (each was in the daemon once), compiled only for the simulator's
/// proofs.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, Default)]
pub struct DriverBugs {
    /// Compact up to the applied index even past what this node's log holds durably.
    pub compact_past_stable: bool,
    /// Release reads against the Raft core's applied index, not the state machine's.
    pub release_reads_by_core_applied: bool,
    /// Answer proposals covered by an installed snapshot with `Dropped`.
    pub drop_covered_proposals: bool,
    /// Let a node with an empty data directory start under an id the cluster saw hold
    /// the log (a wiped member rejoining as its old self: RAFT-NOTES #18).
    pub wiped_node_rejoins_as_itself: bool,
    /// Use every feature whatever the members' versions (the cluster version ignored).
    pub ignore_cluster_version: bool,
    /// Renew a lease on a keepalive without confirming leadership first.
    pub keepalive_without_leadership_check: bool,
    /// Hand watchers a snapshot install's history less its first event.
    pub install_round_drops_an_event: bool,
}

impl Default for DriverConfig {
    fn default() -> DriverConfig {
        DriverConfig {
            snapshot_entries: 100_000,
            snapshot_bytes: 256 << 20,
            step_down_timeout_ticks: 100,
            retry_initial_ticks: 10,
            retry_max_ticks: 1000,
            bootstrap: None,
            promote_every_ticks: 10,
            read_context_start: 1,
            version_floor: super::version::THIS_VERSION,
            history_entries: 10_000,
            history_bytes: 64 << 20,
            #[cfg(feature = "planted-bugs")]
            planted_bugs: DriverBugs::default(),
        }
    }
}

/// A write the core handed out and waits for (`must_sync`).
struct InFlight {
    ready: crate::raft::Ready,
    /// Kept to write again while the disk is full.
    job: PersistJob,
}

/// Back-off for a retried operation.
#[derive(Clone, Copy, Debug, Default)]
struct Backoff {
    /// Failures in a row.
    failures: u32,
    /// Not before this tick.
    next_tick: u64,
}

impl Backoff {
    fn fail(&mut self, now: u64, config: &DriverConfig) {
        let wait = config
            .retry_initial_ticks
            .saturating_mul(1u64 << self.failures.min(20))
            .min(config.retry_max_ticks);
        self.failures = self.failures.saturating_add(1);
        self.next_tick = now + wait;
    }
}

/// The driver core of one node.
pub struct DriverCore {
    raft: Raft,
    config: DriverConfig,
    kv: SharedKv,
    actions: Vec<Action>,
    /// Ticks since start: the core's only clock.
    now_tick: u64,
    /// The Ready being persisted. Invariant: at most one, as the Raft core requires.
    in_flight: Option<InFlight>,
    /// Jobs handed out that the core did not wait for, reported before `in_flight`'s
    /// (the disk works through its queue in order, and none is queued while one is
    /// in flight).
    unawaited_persists: u32,
    /// The latest snapshot, durable or being saved; attached to InstallSnapshot.
    latest_snapshot: Option<Snapshot>,
    /// The index of the latest durable snapshot.
    snapshot_index: u64,
    /// Bytes of entry data applied since `snapshot_index`.
    applied_bytes_since_snapshot: u64,
    snapshot_in_progress: bool,
    snapshot_backoff: Backoff,
    /// Received snapshots already decoded (by the caller off the loop, or by `step`),
    /// with the bytes they were decoded from.
    decoded_snapshots: VecDeque<DecodedSnapshot>,
    /// Set while the disk is full: writes are refused, the write is retried.
    disk_full: Option<String>,
    disk_backoff: Backoff,
    /// A storage failure: the node does nothing more.
    fatal: Option<String>,
    /// Proposals waiting for their entry to apply: index -> (term, token).
    proposals: BTreeMap<u64, (u64, Token)>,
    /// Proposals that found no leader, retried on every tick until abandoned.
    proposals_waiting_leader: Vec<(Bytes, Token)>,
    /// Reads waiting for their read index, by context.
    reads_by_context: HashMap<u64, Token>,
    /// Reads whose index is known, waiting for the state machine to reach it.
    reads_waiting_apply: Vec<(u64, Token)>,
    /// Reads that found no leader, retried on every tick.
    reads_waiting_leader: Vec<Token>,
    next_read_context: u64,
    /// Leadership transfers under way: (target, started tick, token).
    step_downs: Vec<(NodeId, u64, Token)>,
    snapshot_waiters: Vec<Token>,
    /// The term in which this node last proposed the bootstrap record, as leader.
    bootstrap_proposed_term: u64,
    /// The cluster record may have changed since the last `Action::MembersChanged`
    /// (a cluster entry applied, or a snapshot installed): checked once per `poll`
    /// instead of copying the record on every round of the loop.
    members_changed: bool,
    /// `Action::Removed` was handed out.
    removed_reported: bool,
    /// The term, and the members whose `MemberStarted` this leader proposed in it.
    started_proposed: (u64, HashSet<NodeId>),
    /// Joins waiting for their learner's entry to apply: token -> the id given.
    joins: HashMap<Token, NodeId>,
    /// The versions the members reported: what the cluster version is.
    versions: MemberVersions,
    /// The automatic compaction this leader proposed and waits for: (term, index of
    /// its entry). Invariant: at most one in flight; cleared once the state machine has
    /// applied `index` or the term moved on (the entry may have been replaced).
    compaction_in_flight: Option<(u64, u64)>,
    /// The leases' deadlines, while this node leads (`driver::leases`).
    lease_clock: LeaseClock,
    /// Keepalives waiting for this leader to confirm it leads, by read context:
    /// (token, lease id).
    keepalives_by_context: HashMap<u64, (Token, u64)>,
    /// Milliseconds of the monotonic clock the shell last reported (`observe_time`):
    /// the lease clock's time. Invariant: never decreases.
    now_ms: u64,
}

/// The token of requests the core makes itself (the bootstrap record, promotions):
/// their answers go nowhere. Callers' tokens start at 1.
pub const INTERNAL_TOKEN: Token = 0;

/// The context of a configuration entry: what the cluster record needs besides the id.
/// Byte 0: flags (bit 0: promote once caught up); then the member's address, UTF-8.
fn member_context(address: &str, promote_when_caught_up: bool) -> Bytes {
    let mut context = Vec::with_capacity(1 + address.len());
    context.push(u8::from(promote_when_caught_up));
    context.extend_from_slice(address.as_bytes());
    Bytes::from(context)
}

/// The cluster record's change for a configuration entry, `None` if its context does
/// not decode (then only the Raft configuration changes; the record keeps its state).
fn member_change_of(change: &ConfChange) -> Option<MemberChange> {
    let id = change.node;
    match change.kind {
        ConfChangeKind::AddLearner => {
            let (&flags, address) = change.context.split_first()?;
            let address = std::str::from_utf8(address).ok()?.to_owned();
            Some(MemberChange::AddLearner { id, address, promote_when_caught_up: flags & 1 == 1 })
        }
        ConfChangeKind::Promote => Some(MemberChange::Promote { id }),
        ConfChangeKind::Remove => Some(MemberChange::Remove { id }),
    }
}

/// Applies one committed entry to the state machine, as every node does, in log order:
/// a command, the cluster record's side of a configuration change, or a no-op (`None`:
/// nobody waits for one). Also what `recovery` replays offline.
pub fn apply_entry(kv: &mut StateMachine, entry: &Entry) -> Option<Result<Outcome, NodeError>> {
    Some(match entry.kind {
        EntryKind::Normal => match Command::decode_shared(&entry.data) {
            Ok(command) => Ok(kv.apply(entry.index, &command)),
            Err(error) => {
                // Commands are validated before proposing; every node skips
                // the same entry the same way, so the replicas stay identical.
                kv.advance_applied(entry.index);
                Err(NodeError::Invalid(format!("committed entry does not decode: {error}")))
            }
        },
        EntryKind::Config => match ConfChange::decode(&entry.data).ok().as_ref().and_then(member_change_of) {
            // Every node refuses the same change the same way: the records stay identical.
            Some(change) => {
                Ok(Outcome::Cluster { applied: kv.apply_member_change(entry.index, &change).is_ok() })
            }
            None => {
                kv.advance_applied(entry.index);
                Ok(Outcome::Cluster { applied: false })
            }
        },
        EntryKind::Noop => {
            kv.advance_applied(entry.index);
            return None;
        }
    })
}

/// What installing `machine` over `current` adds for watchers: the events of the
/// revisions it skips that its history holds, and the ones it does not hold (compacted
/// before this node got them) as `missing_through`.
fn install_round(current: &StateMachine, machine: &StateMachine) -> HistoryRound {
    let after = current.applied_index();
    let through = machine.applied_index();
    let history = machine.history();
    let first_held = history.compact_revision() + 1;
    let missing_through = if first_held > after + 1 { history.compact_revision() } else { 0 };
    let events = match history.events_since(first_held.max(after + 1)) {
        Since::Events(events) => events,
        Since::Compacted { .. } => unreachable!("events_since above the compaction point"),
    };
    HistoryRound { after, through, events, missing_through }
}

/// A received snapshot's state machine, decoded from `data`.
struct DecodedSnapshot {
    index: u64,
    term: u64,
    data: Bytes,
    machine: StateMachine,
}

impl DecodedSnapshot {
    fn is_of(&self, snapshot: &Snapshot) -> bool {
        let data = &snapshot.data;
        self.index == snapshot.meta.index
            && self.term == snapshot.meta.term
            && self.data.len() == data.len()
            && (self.data.as_ptr() == data.as_ptr() || self.data == *data)
    }
}

/// Most received snapshots kept decoded while their message is stepped.
const MAX_DECODED_SNAPSHOTS: usize = 2;

/// Commit-only writes handed out without waiting, at most; past it the core waits for
/// the disk, so the disk's queue stays bounded.
pub const MAX_UNAWAITED_PERSISTS: u32 = 64;

impl DriverCore {
    /// A core around `raft`, whose state machine `kv` holds what `raft` has applied.
    pub fn new(
        raft: Raft,
        kv: SharedKv,
        latest_snapshot: Option<Snapshot>,
        config: DriverConfig,
    ) -> DriverCore {
        let snapshot_index = latest_snapshot.as_ref().map_or(0, |s| s.meta.index);
        let read_context_start = config.read_context_start.max(1);
        let versions = MemberVersions::new(raft.id(), config.version_floor);
        DriverCore {
            raft,
            config,
            kv,
            actions: Vec::new(),
            now_tick: 0,
            in_flight: None,
            unawaited_persists: 0,
            latest_snapshot,
            snapshot_index,
            applied_bytes_since_snapshot: 0,
            snapshot_in_progress: false,
            snapshot_backoff: Backoff::default(),
            decoded_snapshots: VecDeque::new(),
            disk_full: None,
            disk_backoff: Backoff::default(),
            fatal: None,
            proposals: BTreeMap::new(),
            proposals_waiting_leader: Vec::new(),
            reads_by_context: HashMap::new(),
            reads_waiting_apply: Vec::new(),
            reads_waiting_leader: Vec::new(),
            next_read_context: read_context_start,
            step_downs: Vec::new(),
            snapshot_waiters: Vec::new(),
            bootstrap_proposed_term: 0,
            members_changed: true,
            removed_reported: false,
            started_proposed: (0, HashSet::new()),
            joins: HashMap::new(),
            versions,
            compaction_in_flight: None,
            lease_clock: LeaseClock::default(),
            keepalives_by_context: HashMap::new(),
            now_ms: 0,
        }
    }

    /// The time, in milliseconds of a monotonic clock, for the lease clock: the shell
    /// reports it before each tick (the simulator its simulated time). A smaller value
    /// than the last is ignored: time never runs back.
    pub fn observe_time(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// Keeps lease `id` alive (thesis §6.4's leadership check first: a deposed leader
    /// must not extend a lease), answered with `Answer::Lease`: the TTL it now has from
    /// now, or `None` when it does not exist or expired. Only the leader answers.
    pub fn lease_keepalive(&mut self, token: Token, id: u64) {
        if let Some(error) = self.refusal() {
            self.answer(token, Answer::Lease(Err(error)));
            return;
        }
        if self.raft.role() != Role::Leader {
            self.answer(token, Answer::Lease(Err(NodeError::NotLeader(self.raft.leader()))));
            return;
        }
        if self.planted_keepalive_without_leadership_check() {
            self.confirm_keepalive(token, id);
            return;
        }
        let context = self.next_read_context;
        match self.raft.read_index(context) {
            Ok(()) => {
                self.next_read_context += 1;
                self.keepalives_by_context.insert(context, (token, id));
            }
            Err(_) => self.answer(token, Answer::Lease(Err(NodeError::NotLeader(self.raft.leader())))),
        }
    }

    /// Lease `id`'s time left, answered at once with `Answer::Lease` by the leader (its
    /// clock is the only one): `None` when it does not exist or expired.
    pub fn lease_time_to_live(&mut self, token: Token, id: u64) {
        if self.raft.role() != Role::Leader {
            self.answer(token, Answer::Lease(Err(NodeError::NotLeader(self.raft.leader()))));
            return;
        }
        self.sync_lease_clock();
        let state = self.lease_state(id);
        self.answer(token, Answer::Lease(Ok(state)));
    }

    fn lease_state(&self, id: u64) -> Option<LeaseState> {
        let remaining_ms = self.lease_clock.remaining_ms(id, self.now_ms)?;
        let granted_ttl_s = self.kv.read().expect("kv lock").lease(id)?.ttl_s;
        Some(LeaseState { id, granted_ttl_s, remaining_ms })
    }

    /// While leading, the lease clock's deadlines are of this term and match the table.
    fn sync_lease_clock(&mut self) {
        if self.raft.role() == Role::Leader {
            let kv = self.kv.read().expect("kv lock");
            self.lease_clock.lead(self.raft.term(), self.now_ms, &kv);
        } else {
            self.lease_clock.stop_leading();
        }
    }

    /// A leader proposes the revoke of every lease whose deadline passed
    /// (`driver::leases`), through the log so that every node deletes its keys at one
    /// revision.
    fn expire_leases(&mut self) {
        for id in self.lease_clock.expired(self.now_ms) {
            match self.raft.propose(Command::LeaseRevoke { id }.encode()) {
                Ok((term, index)) => {
                    self.proposals.insert(index, (term, INTERNAL_TOKEN));
                    self.lease_clock.revoking(id);
                }
                // Not leading any more, or a transfer under way: tried again next tick.
                Err(_) => break,
            }
        }
    }

    fn confirm_keepalive(&mut self, token: Token, id: u64) {
        if self.raft.role() != Role::Leader {
            self.answer(token, Answer::Lease(Err(NodeError::NotLeader(self.raft.leader()))));
            return;
        }
        self.sync_lease_clock();
        let ttl_s = self.kv.read().expect("kv lock").lease(id).map(|lease| lease.ttl_s);
        let renewed = ttl_s.is_some_and(|ttl_s| self.lease_clock.renew(id, ttl_s, self.now_ms));
        let state = if renewed { self.lease_state(id) } else { None };
        self.answer(token, Answer::Lease(Ok(state)));
    }

    /// The Raft core, to read its state.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The core's status.
    pub fn status(&self) -> Status {
        self.raft.status()
    }

    /// The state machine.
    pub fn kv(&self) -> &SharedKv {
        &self.kv
    }

    /// Why the disk refuses writes, while it does.
    pub fn disk_full(&self) -> Option<&str> {
        self.disk_full.as_deref()
    }

    /// The storage failure that stopped the node, if any.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    /// True while a write the core waits for is with the disk.
    pub fn persist_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The index of the latest durable snapshot.
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    /// `id` reported running `version` (a peer request's `x-mmapd-version`, or its
    /// absence: `OLDEST_VERSION`).
    pub fn member_version(&mut self, id: NodeId, version: Version) {
        self.versions.report(id, version);
    }

    /// The version members are taken to run: `cluster_version`'s inputs.
    pub fn member_versions(&self) -> &MemberVersions {
        &self.versions
    }

    /// The cluster version: the lowest version over the current configuration's
    /// members (voters and learners), this node included.
    pub fn cluster_version(&self) -> Version {
        self.versions.cluster_version(self.configuration_members())
    }

    /// Whether every current member runs a version with `feature`: the one question
    /// to ask before using something older members would not understand. Err names the
    /// members that lag.
    pub fn cluster_supports(&self, feature: Feature) -> Result<(), Unsupported> {
        #[cfg(feature = "planted-bugs")]
        if self.config.planted_bugs.ignore_cluster_version {
            return Ok(());
        }
        self.versions.supports(feature, self.configuration_members())
    }

    /// The current configuration's voters and learners.
    fn configuration_members(&self) -> impl Iterator<Item = &NodeId> + Clone {
        let conf = self.raft.conf_state();
        conf.voters.iter().chain(conf.learners.iter())
    }

    /// The cluster record is written only by a cluster whose every member has it.
    fn raise_version_floor_from_record(&mut self) {
        if self.kv.read().expect("kv lock").cluster().id() != 0 {
            self.versions.raise_floor(Feature::ClusterRecord.since());
        }
    }

    /// What the caller must do now, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    // ------------------------------------------------------------------ events

    /// One tick of the clock.
    pub fn tick(&mut self) {
        if self.fatal.is_some() {
            return;
        }
        self.now_tick += 1;
        self.raft.tick();
        for token in std::mem::take(&mut self.reads_waiting_leader) {
            self.start_read(token);
        }
        for (command, token) in std::mem::take(&mut self.proposals_waiting_leader) {
            self.start_proposal(command, token);
        }
        let role = self.raft.role();
        for (target, started, token) in std::mem::take(&mut self.step_downs) {
            if role != Role::Leader {
                let leader = self.raft.leader().unwrap_or(target);
                self.answer(token, Answer::StepDown(Ok(leader)));
            } else if self.now_tick.saturating_sub(started) > self.config.step_down_timeout_ticks {
                self.answer(token, Answer::StepDown(Err(NodeError::NoLeader)));
            } else {
                self.step_downs.push((target, started, token));
            }
        }
        if self.disk_full.is_some() && self.now_tick >= self.disk_backoff.next_tick {
            if let Some(in_flight) = &self.in_flight {
                // Write the same job again: the disk may have space now.
                self.actions.push(Action::Persist(in_flight.job.clone()));
                self.disk_backoff.next_tick = u64::MAX;
            }
        }
        if !self.snapshot_waiters.is_empty() || self.snapshot_backoff.failures > 0 {
            self.maybe_snapshot(!self.snapshot_waiters.is_empty());
        }
        self.sync_lease_clock();
        if role == Role::Leader {
            self.expire_leases();
            self.maybe_compact_history();
            self.maybe_bootstrap();
            if self.config.promote_every_ticks > 0 && self.now_tick % self.config.promote_every_ticks == 0 {
                self.mark_started_members();
                self.promote_caught_up_learners();
            }
        }
    }

    /// A change to the membership (thesis §4.1: one server at a time), answered with
    /// `Answer::Proposal` once its entry is applied (`Outcome::Cluster`). Refused at once
    /// when the cluster record or the Raft core would refuse it.
    pub fn propose_member_change(&mut self, token: Token, change: MemberChange) {
        if let Some(error) = self.refusal() {
            self.answer(token, Answer::Proposal(Err(error)));
            return;
        }
        if self.raft.role() != Role::Leader {
            let leader = self.raft.leader();
            self.answer(token, Answer::Proposal(Err(NodeError::NotLeader(leader))));
            return;
        }
        if let Err(unsupported) = self.cluster_supports(feature_of_change(&change)) {
            self.answer(token, Answer::Proposal(Err(NodeError::Unsupported(unsupported))));
            return;
        }
        let checked = self.kv.read().expect("kv lock").cluster().check(&change);
        if let Err(error) = checked {
            self.answer(token, Answer::Proposal(Err(NodeError::Invalid(error.to_string()))));
            return;
        }
        let change = match change {
            MemberChange::UpdateAddress { id, address } => {
                return self.start_proposal(Command::UpdateMember { id, address }.encode(), token);
            }
            MemberChange::Started { id } => {
                return self.start_proposal(Command::MemberStarted { id }.encode(), token);
            }
            MemberChange::AddLearner { id, address, promote_when_caught_up } => ConfChange {
                kind: ConfChangeKind::AddLearner,
                node: id,
                context: member_context(&address, promote_when_caught_up),
            },
            MemberChange::Promote { id } => {
                ConfChange { kind: ConfChangeKind::Promote, node: id, context: Bytes::new() }
            }
            MemberChange::Remove { id } => {
                ConfChange { kind: ConfChangeKind::Remove, node: id, context: Bytes::new() }
            }
        };
        match self.raft.propose_conf_change(change) {
            Ok((term, index)) => {
                self.proposals.insert(index, (term, token));
                self.actions.push(Action::Proposed { token, term, index });
            }
            Err(ConfChangeError::NotLeader { leader }) => {
                self.answer(token, Answer::Proposal(Err(NodeError::NotLeader(leader))));
            }
            Err(error) => self.answer(token, Answer::Proposal(Err(NodeError::ConfChange(error)))),
        }
    }

    /// A node asks to join (thesis §4.2.1: it joins as a learner and is promoted once
    /// caught up, unless it asked to stay a learner). Answered with `Answer::Join`.
    ///
    /// Join is idempotent for a node that never held the log: a learner at the same
    /// address that the leader never saw hold entries (added by `member add`, or an
    /// earlier join whose node did not start) is answered with its id. An address a
    /// member that held the log has is refused: that member must be removed first, as
    /// a node with an empty data directory must never come back under an id that may
    /// have voted or counted for commits (RAFT-NOTES #18).
    pub fn join(&mut self, token: Token, request: JoinRequest) {
        if let Some(error) = self.refusal() {
            self.answer(token, Answer::Join(Err(error)));
            return;
        }
        if self.raft.role() != Role::Leader {
            let leader = self.raft.leader();
            self.answer(token, Answer::Join(Err(NodeError::NotLeader(leader))));
            return;
        }
        if let Err(unsupported) = self.cluster_supports(Feature::MembershipChanges) {
            self.answer(token, Answer::Join(Err(NodeError::Unsupported(unsupported))));
            return;
        }
        let existing = {
            let kv = self.kv.read().expect("kv lock");
            // The record must hold every change committed so far, as a linearizable
            // read does (thesis §6.4): a new leader's may miss a removal an earlier
            // leader committed, and would hand out the removed id again.
            let stale =
                !self.raft.committed_in_current_term() || kv.applied_index() < self.raft.commit_index();
            if kv.cluster().id() == 0 || stale {
                drop(kv);
                self.answer(token, Answer::Join(Err(NodeError::NoLeader)));
                return;
            }
            kv.cluster().by_address(&request.address).map(|(id, member)| (id, member.clone()))
        };
        match existing {
            Some((id, member))
                if !member.started
                    && member.role == crate::kv::MemberRole::Learner
                    && self.raft.match_index(id).is_none_or(|index| index == 0) =>
            {
                let joined = self.joined(id);
                self.answer(token, Answer::Join(Ok(joined)));
            }
            Some((id, _)) => {
                let reason = format!(
                    "member {id:016x} already has address {} and has held the log: remove it first \
                     (mmapd-admin member remove {id:016x}), then join again",
                    request.address
                );
                self.answer(token, Answer::Join(Err(NodeError::Invalid(reason))));
            }
            None => {
                let change = MemberChange::AddLearner {
                    id: request.candidate_id,
                    address: request.address,
                    promote_when_caught_up: !request.learner,
                };
                self.joins.insert(token, request.candidate_id);
                self.propose_member_change(token, change);
            }
        }
    }

    /// The answer to a join that gave the node `id`. The base never lists the node:
    /// it starts outside the configuration and learns that it is a learner from the
    /// snapshot or the entries it is sent (thesis §4.2.1). Listed (the leader's log
    /// starts after its learner entry), it would take itself for a former member, and
    /// an older snapshot from another leader, whose configuration does not hold it yet,
    /// would make it believe it was removed: it would stop for good.
    fn joined(&self, id: NodeId) -> Joined {
        let kv = self.kv.read().expect("kv lock");
        let cluster = kv.cluster();
        let mut base = self.raft.log_start_conf().clone();
        base.voters.retain(|&voter| voter != id);
        base.learners.retain(|&learner| learner != id);
        Joined {
            cluster_id: cluster.id(),
            id,
            base,
            members: cluster.members().iter().map(|(id, m)| (*id, m.address.clone())).collect(),
        }
    }

    /// What this node answers a node with an empty data directory that asks, before a
    /// `--peers` bootstrap, whether the cluster exists (`driver::start`).
    pub fn probe_answer(&self, asker: NodeId) -> super::start::ProbeAnswer {
        use super::start::ProbeAnswer;
        let kv = self.kv.read().expect("kv lock");
        let cluster = kv.cluster();
        let cluster_id = cluster.id();
        if cluster_id == 0 {
            return if self.raft.last_index() == 0 && self.raft.term() == 0 {
                ProbeAnswer::NoCluster
            } else {
                ProbeAnswer::Pending
            };
        }
        if cluster.is_removed(asker) {
            return ProbeAnswer::Removed { cluster_id };
        }
        match cluster.members().get(&asker) {
            Some(member) => ProbeAnswer::Member { cluster_id, started: member.started },
            None => ProbeAnswer::NotMember { cluster_id },
        }
    }

    /// A leader records the cluster's bootstrap once per term while the record is empty:
    /// the first one applied wins, later ones change nothing.
    fn maybe_bootstrap(&mut self) {
        let term = self.raft.term();
        if self.config.bootstrap.is_none()
            || self.bootstrap_proposed_term == term
            || self.kv.read().expect("kv lock").cluster().id() != 0
            || self.cluster_supports(Feature::ClusterRecord).is_err()
        {
            return;
        }
        let Some((cluster_id, members)) = self.config.bootstrap.clone() else { return };
        self.bootstrap_proposed_term = term;
        self.start_proposal(Command::Bootstrap { cluster_id, members }.encode(), INTERNAL_TOKEN);
    }

    /// A leader whose history passed `history_entries` or `history_bytes` proposes a
    /// `Command::Compact` to the revision that brings it back to `HISTORY_COMPACT_TO` of
    /// both, one at a time: not again until that entry is applied (or the term moved on,
    /// when it may have been replaced). Checked every tick, so the history passes its
    /// bound by at most a tick's and a commit's writes. Through the log, so every node
    /// holds the same window; never a node's local decision.
    fn maybe_compact_history(&mut self) {
        let term = self.raft.term();
        let kv = self.kv.read().expect("kv lock");
        if let Some((proposed_term, index)) = self.compaction_in_flight {
            if proposed_term == term && kv.applied_index() < index {
                return;
            }
            self.compaction_in_flight = None;
        }
        let history = kv.history();
        if history.len() as u64 <= self.config.history_entries
            && history.approximate_bytes() <= self.config.history_bytes
        {
            return;
        }
        let (numerator, denominator) = HISTORY_COMPACT_TO;
        let target =
            |bound: u64| bound / denominator * numerator + bound % denominator * numerator / denominator;
        let Some(revision) =
            history.compaction_to_fit(target(self.config.history_entries), target(self.config.history_bytes))
        else {
            return;
        };
        drop(kv);
        if self.cluster_supports(Feature::Compaction).is_err() {
            return;
        }
        if let Ok((term, index)) = self.raft.propose(Command::Compact { revision }.encode()) {
            self.proposals.insert(index, (term, INTERNAL_TOKEN));
            self.compaction_in_flight = Some((term, index));
        }
    }

    /// Records, through the log, every member this leader sees holding the log (its
    /// match index above 0, or itself), so that a node with an empty data directory is
    /// never accepted back under that id (`kv::Member::started`). Proposed once per
    /// member and term; a lost proposal is proposed again in a later term.
    fn mark_started_members(&mut self) {
        let term = self.raft.term();
        if self.started_proposed.0 != term {
            self.started_proposed = (term, HashSet::new());
        }
        let unmarked: Vec<NodeId> = {
            let kv = self.kv.read().expect("kv lock");
            if kv.cluster().id() == 0 || self.cluster_supports(Feature::ClusterRecord).is_err() {
                return;
            }
            kv.cluster().members().iter().filter(|(_, m)| !m.started).map(|(id, _)| *id).collect()
        };
        for id in unmarked {
            let holds_log = self.raft.match_index(id).is_some_and(|index| index > 0);
            if holds_log && self.started_proposed.1.insert(id) {
                self.start_proposal(Command::MemberStarted { id }.encode(), INTERNAL_TOKEN);
            }
        }
    }

    /// Proposes the promotion of one learner marked to be promoted, if the Raft core
    /// finds it caught up (thesis §4.2.1); refusals (not caught up, a change pending)
    /// are tried again later.
    fn promote_caught_up_learners(&mut self) {
        if self.cluster_supports(Feature::MembershipChanges).is_err() {
            return;
        }
        let candidates: Vec<NodeId> = {
            let kv = self.kv.read().expect("kv lock");
            kv.cluster()
                .members()
                .iter()
                .filter(|(id, m)| m.promote_when_caught_up && self.raft.learners().contains(id))
                .map(|(id, _)| *id)
                .collect()
        };
        for id in candidates {
            let change = ConfChange { kind: ConfChangeKind::Promote, node: id, context: Bytes::new() };
            if let Ok((term, index)) = self.raft.propose_conf_change(change) {
                self.proposals.insert(index, (term, INTERNAL_TOKEN));
                return;
            }
        }
    }

    /// Hands out the cluster record when it changed, and `Removed` once removed.
    fn report_membership(&mut self) {
        if std::mem::take(&mut self.members_changed) {
            let cluster = self.kv.read().expect("kv lock").cluster().clone();
            self.actions.push(Action::MembersChanged(cluster));
            self.raise_version_floor_from_record();
        }
        if self.raft.is_removed() && !self.removed_reported {
            self.removed_reported = true;
            self.actions.push(Action::Removed);
        }
    }

    /// Messages from peers. A message the Raft core refuses, or an InstallSnapshot
    /// whose data does not decode, is refused: `Action::Refused`.
    pub fn step(&mut self, messages: Vec<Message>) {
        if self.fatal.is_some() {
            return;
        }
        for message in messages {
            let (from, kind) = (message.from, message.body.name());
            // A removed id never comes back (thesis §4.2.3: a removed server must not
            // disrupt the cluster); a sender merely missing from this node's
            // configuration is heard, since that configuration may be stale (§4.1).
            if self.kv.read().expect("kv lock").cluster().is_removed(from) {
                let reason = format!("node {from:016x} was removed from the cluster");
                self.actions.push(Action::Refused { from, kind, reason });
                continue;
            }
            if let MessageBody::InstallSnapshot { snapshot } = &message.body {
                if let Err(reason) = self.check_snapshot(snapshot) {
                    self.actions.push(Action::Refused { from, kind, reason });
                    continue;
                }
            }
            if let Err(error) = self.raft.step(message) {
                self.actions.push(Action::Refused { from, kind, reason: error.to_string() });
            }
        }
    }

    /// Steps an InstallSnapshot whose data the caller already decoded into `machine`
    /// (off the loop, as decoding a large snapshot takes a while).
    pub fn step_decoded_snapshot(&mut self, message: Message, machine: StateMachine) {
        if let MessageBody::InstallSnapshot { snapshot } = &message.body {
            if machine.applied_index() == snapshot.meta.index {
                self.remember_decoded(snapshot, machine);
            }
        }
        self.step(vec![message]);
    }

    /// A client's write: the encoded `kv::Command`. Answered with `Answer::Proposal`.
    pub fn propose(&mut self, token: Token, command: Bytes) {
        if let Some(error) = self.refusal() {
            self.answer(token, Answer::Proposal(Err(error)));
            return;
        }
        // The leader decides (a follower forwards to it), and only while some member runs
        // an older release: a write of an upgraded cluster is not decoded twice. A command
        // that does not decode is the state machine's to refuse, as before.
        if self.raft.role() == Role::Leader && self.cluster_version() < super::version::THIS_VERSION {
            let feature = Command::decode_shared(&command).ok().as_ref().and_then(feature_of);
            if let Some(Err(unsupported)) = feature.map(|feature| self.cluster_supports(feature)) {
                self.answer(token, Answer::Proposal(Err(NodeError::Unsupported(unsupported))));
                return;
            }
        }
        self.start_proposal(command, token);
    }

    /// A linearizable read (thesis §6.4). Answered with `Answer::Read` once the state
    /// machine may be read.
    pub fn read(&mut self, token: Token) {
        if let Some(error) = self.refusal() {
            self.answer(token, Answer::Read(Err(error)));
            return;
        }
        self.start_read(token);
    }

    /// Hands leadership to `to`, or with `None` to the most up-to-date follower
    /// (thesis §3.10). A `to` that is this node, a learner or not a member is refused
    /// (`NodeError::Invalid`), as is a call on a node that does not lead.
    pub fn step_down(&mut self, token: Token, to: Option<NodeId>) {
        if let Some(error) = &self.fatal {
            let error = NodeError::Storage(error.clone());
            self.answer(token, Answer::StepDown(Err(error)));
            return;
        }
        if self.raft.role() != Role::Leader {
            let leader = self.raft.leader();
            self.answer(token, Answer::StepDown(Err(NodeError::NotLeader(leader))));
            return;
        }
        let Some(target) = to.or_else(|| self.raft.most_up_to_date_follower()) else {
            let error = NodeError::Invalid("no follower to hand leadership to".into());
            self.answer(token, Answer::StepDown(Err(error)));
            return;
        };
        match self.raft.transfer_leadership(target) {
            Ok(()) => self.step_downs.push((target, self.now_tick, token)),
            Err(error) => self.answer(token, Answer::StepDown(Err(NodeError::Invalid(error.to_string())))),
        }
    }

    /// Takes a snapshot now (or as soon as the log allows) and compacts the log.
    pub fn snapshot(&mut self, token: Token) {
        if let Some(error) = &self.fatal {
            let error = NodeError::Storage(error.clone());
            self.answer(token, Answer::Snapshot(Err(error)));
            return;
        }
        self.snapshot_waiters.push(token);
        self.maybe_snapshot(true);
    }

    /// The caller no longer waits for these requests (their clients went away).
    pub fn abandon_all(&mut self, tokens: &HashSet<Token>) {
        self.proposals.retain(|_, (_, token)| !tokens.contains(token));
        self.proposals_waiting_leader.retain(|(_, token)| !tokens.contains(token));
        self.reads_by_context.retain(|_, token| !tokens.contains(token));
        self.reads_waiting_apply.retain(|(_, token)| !tokens.contains(token));
        self.reads_waiting_leader.retain(|token| !tokens.contains(token));
        self.keepalives_by_context.retain(|_, (token, _)| !tokens.contains(token));
    }

    /// The oldest `Action::Persist` not yet reported is done.
    pub fn persisted(&mut self, result: Result<(), StorageFailure>) {
        if self.fatal.is_some() {
            return;
        }
        match result {
            Ok(()) if self.unawaited_persists > 0 => self.unawaited_persists -= 1,
            Ok(()) => {
                let Some(in_flight) = self.in_flight.take() else {
                    self.on_fatal("the disk reported a write the driver did not hand out".into());
                    return;
                };
                if self.disk_full.take().is_some() {
                    self.disk_backoff = Backoff::default();
                    self.raft.set_can_lead(true);
                }
                self.finish_ready(in_flight.ready);
            }
            Err(StorageFailure::DiskFull(error))
                if self.unawaited_persists == 0 && self.in_flight.is_some() =>
            {
                self.on_disk_full(error);
            }
            // A commit-only write that failed for lack of space: the next write
            // carries the commit index again.
            Err(StorageFailure::DiskFull(_)) if self.unawaited_persists > 0 => {
                self.unawaited_persists -= 1;
            }
            Err(StorageFailure::DiskFull(error)) | Err(StorageFailure::Other(error)) => self.on_fatal(error),
        }
    }

    /// The snapshot of the last `Action::BuildSnapshot` is serialised (`data`) and
    /// written, not yet durable as the node's snapshot (or building it failed). The
    /// Raft log is compacted to it now, and it is what InstallSnapshot sends from now
    /// on; `Action::SaveSnapshot` follows, unless a snapshot from the leader installed
    /// meanwhile covers it.
    pub fn snapshot_built(&mut self, meta: SnapshotMeta, result: Result<Bytes, StorageFailure>) {
        if self.fatal.is_some() {
            return;
        }
        let data = match result {
            Ok(data) => data,
            Err(failure) => return self.snapshot_saved(Err(failure)),
        };
        match self.raft.compact(meta.index) {
            Ok(compacted) => {
                assert_eq!(
                    compacted,
                    meta,
                    "node {} term {}: the log changed under a snapshot being built",
                    self.raft.id(),
                    self.raft.term()
                );
                self.latest_snapshot = Some(Snapshot { meta: meta.clone(), data: data.clone() });
                self.actions.push(Action::SaveSnapshot { meta, data });
            }
            Err(error @ (CompactError::NotApplied { .. } | CompactError::NotDurable { .. })) => {
                // Applied and durable indexes only grow: not expected, but nothing is lost
                // by not compacting; retried later.
                self.snapshot_saved(Err(StorageFailure::Other(format!("compaction refused: {error}"))));
            }
            Err(CompactError::AlreadyCompacted { .. }) => {
                // A snapshot from the leader installed while this one was built covers
                // it: nothing to save; the installed one answers the waiters.
                self.snapshot_in_progress = false;
                let latest = self.latest_snapshot.as_ref().map(|s| s.meta.clone()).unwrap_or_default();
                for token in std::mem::take(&mut self.snapshot_waiters) {
                    self.answer(token, Answer::Snapshot(Ok(latest.clone())));
                }
            }
        }
    }

    /// The snapshot of the last `Action::SaveSnapshot` is durable (or failed).
    pub fn snapshot_saved(&mut self, result: Result<SnapshotMeta, StorageFailure>) {
        self.snapshot_in_progress = false;
        match result {
            Ok(meta) => {
                self.snapshot_index = self.snapshot_index.max(meta.index);
                self.snapshot_backoff = Backoff::default();
                for token in std::mem::take(&mut self.snapshot_waiters) {
                    self.answer(token, Answer::Snapshot(Ok(meta.clone())));
                }
            }
            Err(failure) => {
                let error = match failure {
                    StorageFailure::DiskFull(error) | StorageFailure::Other(error) => error,
                };
                // The snapshot is a copy of what the log holds: failing to save it loses
                // nothing; the log stays until a later snapshot succeeds.
                self.snapshot_backoff.fail(self.now_tick, &self.config);
                for token in std::mem::take(&mut self.snapshot_waiters) {
                    self.answer(token, Answer::Snapshot(Err(NodeError::Storage(error.clone()))));
                }
            }
        }
    }

    /// Hands out what the Raft core has ready. Call after every batch of events.
    pub fn poll(&mut self) {
        if self.fatal.is_some() {
            return;
        }
        self.poll_raft();
        if self.members_changed && self.raft.role() == Role::Leader {
            // A bootstrap or a new member just applied: record who holds the log now,
            // not a promotion round later, so the window in which a wiped member could
            // come back under its id stays as short as the leader can make it.
            self.mark_started_members();
            self.poll_raft();
        }
        self.report_membership();
    }

    fn poll_raft(&mut self) {
        if self.in_flight.is_none() {
            if self.raft.has_ready() {
                self.handle_ready();
            }
            return;
        }
        // The disk is busy with the previous batch: replication, heartbeats and read
        // rounds do not wait for it (thesis §10.2.1).
        let messages = self.raft.take_messages();
        self.send(messages);
        // Entries a majority holds durably are committed: apply and answer them
        // without waiting for this node's own write.
        let committed = self.raft.take_committed_entries();
        if let Some(last) = committed.last().map(|e| e.index) {
            self.apply(committed);
            self.raft.applied_to(last);
            self.release_reads();
        }
    }

    // ------------------------------------------------------------ the Ready loop

    fn handle_ready(&mut self) {
        let mut ready = self.raft.ready();
        if let Some(soft) = ready.soft_state {
            self.actions.push(Action::RoleChanged(soft));
        }
        // 1. Messages that depend on nothing in this Ready go out at once.
        let messages = std::mem::take(&mut ready.messages);
        self.send(messages);
        // 2. Persist. A Ready that only moves the commit index need not wait: the
        // commit index is a lower bound that may lag (RAFT-NOTES #3), so its write is
        // queued, in order, and the Ready finishes at once.
        if !ready.must_sync && ready.hard_state.is_none() {
            self.finish_ready(ready);
            return;
        }
        let job = PersistJob {
            snapshot: ready.snapshot.clone(),
            entries: std::mem::take(&mut ready.entries),
            hard_state: ready.hard_state,
            must_sync: ready.must_sync,
        };
        if job.must_sync || self.unawaited_persists >= MAX_UNAWAITED_PERSISTS {
            self.actions.push(Action::Persist(job.clone()));
            self.in_flight = Some(InFlight { ready, job });
        } else {
            self.actions.push(Action::Persist(job));
            self.unawaited_persists += 1;
            self.finish_ready(ready);
        }
    }

    /// Steps 3 to 5 of the Ready contract, once the state is durable.
    fn finish_ready(&mut self, mut ready: crate::raft::Ready) {
        let persisted_messages = std::mem::take(&mut ready.persisted_messages);
        self.send(persisted_messages);
        if let Some(snapshot) = ready.snapshot.take() {
            self.install_snapshot(snapshot);
        }
        let committed = std::mem::take(&mut ready.committed_entries);
        self.apply(committed);
        for read in &ready.read_states {
            if let Some(token) = self.reads_by_context.remove(&read.context) {
                self.reads_waiting_apply.push((read.index, token));
            } else if let Some((token, id)) = self.keepalives_by_context.remove(&read.context) {
                self.confirm_keepalive(token, id);
            }
        }
        self.raft.advance();
        self.release_reads();
        // An operator's snapshot deferred until the log was durable is taken now.
        self.maybe_snapshot(!self.snapshot_waiters.is_empty());
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) {
        let decoded = self.decoded_snapshots.iter().position(|d| d.is_of(&snapshot));
        let decoded = decoded.and_then(|position| self.decoded_snapshots.remove(position));
        self.decoded_snapshots.clear();
        let machine = match decoded {
            Some(decoded) => decoded.machine,
            None => match StateMachine::load_snapshot_shared(&snapshot.data) {
                Ok(machine) => machine,
                Err(error) => {
                    // `step` decoded these bytes before the Raft core accepted them.
                    panic!(
                        "node {} term {}: an accepted snapshot at {} no longer decodes: {error}",
                        self.raft.id(),
                        self.raft.term(),
                        snapshot.meta.index
                    )
                }
            },
        };
        let index = snapshot.meta.index;
        let mut round = install_round(&self.kv.read().expect("kv lock"), &machine);
        if self.planted_install_round_drops_an_event() && !round.events.is_empty() {
            round.events.pop_front();
        }
        let replaced = std::mem::replace(&mut *self.kv.write().expect("kv lock"), machine);
        self.actions.push(Action::HistoryRound(round));
        self.actions.push(Action::DropOffLoop(replaced));
        self.members_changed = true;
        self.lease_clock.mark_changed();
        self.snapshot_index = self.snapshot_index.max(index);
        self.applied_bytes_since_snapshot = 0;
        // Proposals the snapshot covers: whether theirs is the entry at their index is
        // not known here. Never "not applied" (a forwarder would retry: a double apply).
        let covered: Vec<u64> = self.proposals.range(..=index).map(|(i, _)| *i).collect();
        for proposal_index in covered {
            if let Some((_, token)) = self.proposals.remove(&proposal_index) {
                let mut error = NodeError::OutcomeUnknown(format!(
                    "a snapshot from the leader at index {index} covered the write's index {proposal_index}"
                ));
                if self.planted_drop_covered_proposals() {
                    error = NodeError::Dropped;
                }
                self.answer(token, Answer::Proposal(Err(error)));
            }
        }
        self.actions.push(Action::InstalledSnapshot(snapshot.clone()));
        self.latest_snapshot = Some(snapshot);
    }

    fn apply(&mut self, committed: Vec<Entry>) {
        if committed.is_empty() {
            return;
        }
        let mut answers = Vec::new();
        let mut round =
            HistoryRound { after: 0, through: 0, events: imbl::Vector::new(), missing_through: 0 };
        {
            let mut kv = self.kv.write().expect("kv lock");
            round.after = kv.applied_index();
            for entry in &committed {
                assert_eq!(
                    entry.index,
                    kv.applied_index() + 1,
                    "node {} term {}: committed entries must apply in order",
                    self.raft.id(),
                    self.raft.term()
                );
                self.applied_bytes_since_snapshot += entry.data.len() as u64;
                let Some(outcome) = apply_entry(&mut kv, entry) else { continue };
                // The entry's events (any kind of entry may write keys: a put, an
                // import, a lease's revoke, a transaction) are the history's tail: taken
                // now, before a later entry of this round could compact them away.
                for event in kv.history().tail_at(entry.index) {
                    round.events.push_back(event.clone());
                }
                match outcome {
                    Ok(Outcome::Cluster { applied: true }) => self.members_changed = true,
                    Ok(Outcome::LeaseGranted { .. } | Outcome::LeaseRevoked { .. }) => {
                        self.lease_clock.mark_changed()
                    }
                    // Copied before the next entry applies: the state of exactly this index.
                    Ok(Outcome::HashCheck) => {
                        self.actions.push(Action::HashState { index: entry.index, machine: kv.clone() })
                    }
                    _ => {}
                }
                // Waiters at or below this index whose entry was replaced are resolved too.
                while let Some(waiter) = self.proposals.first_entry() {
                    if *waiter.key() > entry.index {
                        break;
                    }
                    let (index, (term, token)) = waiter.remove_entry();
                    let result = if index == entry.index && term == entry.term {
                        outcome.clone().map(|outcome| Applied { index, outcome })
                    } else {
                        Err(NodeError::Dropped)
                    };
                    answers.push((token, Answer::Proposal(result)));
                }
            }
            round.through = kv.applied_index();
        }
        for (token, answer) in answers {
            self.answer(token, answer);
        }
        self.actions.push(Action::Applied(committed));
        self.actions.push(Action::HistoryRound(round));
    }

    fn release_reads(&mut self) {
        // The state machine's own index: the core's applied index moves at once when a
        // snapshot is accepted, before the state machine holds it.
        let mut applied = self.kv.read().expect("kv lock").applied_index();
        if self.planted_release_reads_by_core_applied() {
            applied = self.raft.applied_index();
        }
        let mut index = 0;
        while index < self.reads_waiting_apply.len() {
            if self.reads_waiting_apply[index].0 <= applied {
                let (_, token) = self.reads_waiting_apply.swap_remove(index);
                self.answer(token, Answer::Read(Ok(())));
            } else {
                index += 1;
            }
        }
    }

    fn maybe_snapshot(&mut self, forced: bool) {
        if self.snapshot_in_progress || self.fatal.is_some() {
            return;
        }
        let kv = self.kv.clone();
        let kv = kv.read().expect("kv lock");
        let applied = kv.applied_index();
        if applied <= self.snapshot_index {
            if forced {
                // Nothing new to snapshot: answer with the latest snapshot's own meta.
                let meta = self
                    .latest_snapshot
                    .as_ref()
                    .map(|s| s.meta.clone())
                    .unwrap_or_else(|| SnapshotMeta { index: self.snapshot_index, ..Default::default() });
                for token in std::mem::take(&mut self.snapshot_waiters) {
                    self.answer(token, Answer::Snapshot(Ok(meta.clone())));
                }
            }
            return;
        }
        let due = applied - self.snapshot_index >= self.config.snapshot_entries
            || self.applied_bytes_since_snapshot >= self.config.snapshot_bytes;
        if !(forced || due) || self.now_tick < self.snapshot_backoff.next_tick {
            return;
        }
        // Compaction never passes what this node's log holds durably: entries applied
        // early (committed by a majority, not yet written here) are still needed.
        if applied > self.raft.stable_index() && !self.planted_compact_past_stable() {
            return;
        }
        let meta = match self.raft.snapshot_meta(applied) {
            Ok(meta) => meta,
            Err(error) => {
                drop(kv);
                let reason = format!("compaction refused: {error}");
                for token in std::mem::take(&mut self.snapshot_waiters) {
                    self.answer(token, Answer::Snapshot(Err(NodeError::Invalid(reason.clone()))));
                }
                self.snapshot_backoff.fail(self.now_tick, &self.config);
                return;
            }
        };
        // O(1): the copy shares the map's nodes; the driver's next write copies the
        // nodes it touches.
        let machine = kv.clone();
        drop(kv);
        self.applied_bytes_since_snapshot = 0;
        self.snapshot_in_progress = true;
        self.actions.push(Action::BuildSnapshot { meta, machine });
    }

    // ------------------------------------------------------------------ helpers

    #[cfg(feature = "planted-bugs")]
    fn planted_compact_past_stable(&self) -> bool {
        self.config.planted_bugs.compact_past_stable
    }
    #[cfg(not(feature = "planted-bugs"))]
    fn planted_compact_past_stable(&self) -> bool {
        false
    }
    #[cfg(feature = "planted-bugs")]
    fn planted_release_reads_by_core_applied(&self) -> bool {
        self.config.planted_bugs.release_reads_by_core_applied
    }
    #[cfg(not(feature = "planted-bugs"))]
    fn planted_release_reads_by_core_applied(&self) -> bool {
        false
    }
    #[cfg(feature = "planted-bugs")]
    fn planted_install_round_drops_an_event(&self) -> bool {
        self.config.planted_bugs.install_round_drops_an_event
    }

    #[cfg(not(feature = "planted-bugs"))]
    fn planted_install_round_drops_an_event(&self) -> bool {
        false
    }

    #[cfg(feature = "planted-bugs")]
    fn planted_keepalive_without_leadership_check(&self) -> bool {
        self.config.planted_bugs.keepalive_without_leadership_check
    }

    #[cfg(not(feature = "planted-bugs"))]
    fn planted_keepalive_without_leadership_check(&self) -> bool {
        false
    }

    #[cfg(feature = "planted-bugs")]
    fn planted_drop_covered_proposals(&self) -> bool {
        self.config.planted_bugs.drop_covered_proposals
    }
    #[cfg(not(feature = "planted-bugs"))]
    fn planted_drop_covered_proposals(&self) -> bool {
        false
    }

    fn start_proposal(&mut self, command: Bytes, token: Token) {
        match self.raft.propose(command.clone()) {
            Ok((term, index)) => {
                self.proposals.insert(index, (term, token));
                self.actions.push(Action::Proposed { token, term, index });
            }
            Err(ProposeError::NotLeader { leader: Some(leader) }) => {
                self.answer(token, Answer::Proposal(Err(NodeError::NotLeader(Some(leader)))));
            }
            Err(ProposeError::NotLeader { leader: None }) | Err(ProposeError::TransferInProgress) => {
                self.proposals_waiting_leader.push((command, token));
            }
        }
    }

    fn start_read(&mut self, token: Token) {
        let context = self.next_read_context;
        match self.raft.read_index(context) {
            Ok(()) => {
                self.next_read_context += 1;
                self.reads_by_context.insert(context, token);
            }
            Err(_) => self.reads_waiting_leader.push(token),
        }
    }

    /// Why new requests are refused now, if they are.
    fn refusal(&self) -> Option<NodeError> {
        if let Some(error) = &self.fatal {
            return Some(NodeError::Storage(error.clone()));
        }
        self.disk_full.as_ref().map(|error| NodeError::DiskFull(error.clone()))
    }

    /// Attaches the latest snapshot to InstallSnapshot messages, then sends.
    fn send(&mut self, mut messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        for message in &mut messages {
            if let MessageBody::InstallSnapshot { snapshot } = &mut message.body {
                if let Some(latest) = &self.latest_snapshot {
                    if latest.meta.index >= snapshot.meta.index {
                        *snapshot = latest.clone();
                    }
                }
            }
        }
        self.actions.push(Action::Send(messages));
    }

    /// A received snapshot must decode before the core may accept it.
    fn check_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), String> {
        if self.decoded_snapshots.iter().any(|d| d.is_of(snapshot)) {
            return Ok(());
        }
        match StateMachine::load_snapshot_shared(&snapshot.data) {
            Ok(machine) if machine.applied_index() == snapshot.meta.index => {
                self.remember_decoded(snapshot, machine);
                Ok(())
            }
            Ok(machine) => Err(format!(
                "snapshot at index {} holds a state machine applied to {}",
                snapshot.meta.index,
                machine.applied_index()
            )),
            Err(error) => Err(format!("snapshot data does not decode: {error}")),
        }
    }

    fn remember_decoded(&mut self, snapshot: &Snapshot, machine: StateMachine) {
        if self.decoded_snapshots.len() >= MAX_DECODED_SNAPSHOTS {
            self.decoded_snapshots.pop_front();
        }
        let (index, term, data) = (snapshot.meta.index, snapshot.meta.term, snapshot.data.clone());
        self.decoded_snapshots.push_back(DecodedSnapshot { index, term, data, machine });
    }

    fn answer(&mut self, token: Token, answer: Answer) {
        let answer = match answer {
            Answer::Proposal(result) if !self.joins.is_empty() && self.joins.contains_key(&token) => {
                let id = self.joins.remove(&token).expect("checked");
                Answer::Join(match result {
                    Ok(Applied { outcome: Outcome::Cluster { applied: true }, .. }) => Ok(self.joined(id)),
                    Ok(_) => Err(NodeError::Invalid("the cluster record refused the new member".into())),
                    Err(error) => Err(error),
                })
            }
            answer => answer,
        };
        self.actions.push(Action::Answer(token, answer));
    }

    fn on_disk_full(&mut self, error: String) {
        if self.disk_full.is_none() {
            self.fail_waiting(NodeError::DiskFull(error.clone()));
            // A node that cannot persist must not lead, and its up-to-date log would
            // win the next election: it steps down and stops campaigning.
            self.raft.set_can_lead(false);
        }
        self.disk_full = Some(error);
        self.disk_backoff.fail(self.now_tick, &self.config);
    }

    fn on_fatal(&mut self, error: String) {
        self.fatal = Some(error.clone());
        self.fail_waiting(NodeError::Storage(error.clone()));
        for token in std::mem::take(&mut self.snapshot_waiters) {
            self.answer(token, Answer::Snapshot(Err(NodeError::Storage(error.clone()))));
        }
        for (_, _, token) in std::mem::take(&mut self.step_downs) {
            self.answer(token, Answer::StepDown(Err(NodeError::Storage(error.clone()))));
        }
        self.actions.push(Action::Fatal(error));
    }

    /// Fails every waiting read and proposal. Proposals already in the log may still
    /// commit: their outcome is unknown, not failed.
    fn fail_waiting(&mut self, error: NodeError) {
        for (_, (_, token)) in std::mem::take(&mut self.proposals) {
            let unknown = NodeError::OutcomeUnknown(format!("{error}; the write may still commit"));
            self.answer(token, Answer::Proposal(Err(unknown)));
        }
        for (_, token) in std::mem::take(&mut self.proposals_waiting_leader) {
            self.answer(token, Answer::Proposal(Err(error.clone())));
        }
        let mut reads: Vec<Token> = self.reads_by_context.drain().map(|(_, token)| token).collect();
        reads.extend(self.reads_waiting_apply.drain(..).map(|(_, token)| token));
        reads.append(&mut self.reads_waiting_leader);
        for token in reads {
            self.answer(token, Answer::Read(Err(error.clone())));
        }
        for (_, (token, _)) in std::mem::take(&mut self.keepalives_by_context) {
            self.answer(token, Answer::Lease(Err(error.clone())));
        }
    }

    /// Fails everything still waiting, as the node stops.
    pub fn shut_down(&mut self) {
        self.fail_waiting(NodeError::ShuttingDown);
        for token in std::mem::take(&mut self.snapshot_waiters) {
            self.answer(token, Answer::Snapshot(Err(NodeError::ShuttingDown)));
        }
        for (_, _, token) in std::mem::take(&mut self.step_downs) {
            self.answer(token, Answer::StepDown(Err(NodeError::ShuttingDown)));
        }
    }
}

#[cfg(test)]
mod tests;
