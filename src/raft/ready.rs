//! What the core hands the caller, and what the caller reports back.

use super::entry::{Entry, HardState, NodeId, Snapshot};
use super::message::Message;

/// A node's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking whether it could win an election, without changing terms (thesis §9.6).
    PreCandidate,
    /// Campaigning in its term.
    Candidate,
    /// Leading its term.
    Leader,
}

impl Role {
    /// Lower-case name, as the original's `/status` printed it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// Volatile state the caller may want to report; not persisted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// The role.
    pub role: Role,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// The current term.
    pub term: u64,
}

/// A linearizable read may be served once the state machine has applied `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's identifier, as given to `read_index`.
    pub context: u64,
    /// The commit index the read must wait for.
    pub index: u64,
}

/// Everything the core needs done. Take it with `Raft::ready`, then, in this order:
///
/// 1. Send `messages` right away: they depend on nothing in this Ready (they are a
///    leader's replication traffic, which may go out in parallel with the leader's own
///    write, thesis §10.2.1, and pre-votes, which change no state).
/// 2. Persist, durably: `snapshot` (if any: install it, dropping the log it covers),
///    then `entries` (an entry at an index that already exists replaces it and
///    everything after it), then `hard_state` (if any).
/// 3. Only after step 2 is durable, send `persisted_messages`: votes and
///    AppendEntries acknowledgements promise that the state is on disk (Fig. 2).
/// 4. Apply `committed_entries` to the state machine in order, and answer `read_states`
///    once the state machine has applied their index.
/// 5. Call `Raft::advance`. No other Ready is handed out until then; messages,
///    ticks and proposals may still be given to the core meanwhile.
#[derive(Debug, Default)]
pub struct Ready {
    /// Role, leader and term, when they changed since the last Ready.
    pub soft_state: Option<SoftState>,
    /// The hard state, when it changed since the last Ready.
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader, to install before `entries`.
    pub snapshot: Option<Snapshot>,
    /// Entries to append to stable storage.
    pub entries: Vec<Entry>,
    /// Messages that may be sent at once.
    pub messages: Vec<Message>,
    /// Messages to send only once this Ready's state is durable.
    pub persisted_messages: Vec<Message>,
    /// Committed entries to apply, in index order.
    pub committed_entries: Vec<Entry>,
    /// Linearizable reads that may be answered once applied >= their index.
    pub read_states: Vec<ReadState>,
    /// True when the hard state's term or vote changed or entries or a snapshot are
    /// present: then step 2 must be durable (msync), not merely written.
    pub must_sync: bool,
}

impl Ready {
    /// True when the Ready carries nothing.
    pub fn is_empty(&self) -> bool {
        self.soft_state.is_none()
            && self.hard_state.is_none()
            && self.snapshot.is_none()
            && self.entries.is_empty()
            && self.messages.is_empty()
            && self.persisted_messages.is_empty()
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
    }
}

/// Replication progress of one follower, as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The follower.
    pub id: NodeId,
    /// The highest index known to be replicated on it.
    pub match_index: u64,
    /// The next index to send.
    pub next_index: u64,
    /// "probe", "replicate" or "snapshot".
    pub state: &'static str,
    /// Whether it answered within the last election timeout.
    pub recently_active: bool,
    /// Whether it is a learner (else a voter).
    pub learner: bool,
}

/// A snapshot of a node's state for `/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: u64,
    /// Its vote in this term.
    pub vote: Option<NodeId>,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Its commit index.
    pub commit: u64,
    /// Its applied index (as of the last `advance`).
    pub applied: u64,
    /// The first index still in the log (after the snapshot).
    pub first_index: u64,
    /// Its last log index.
    pub last_index: u64,
    /// Its last durable log index.
    pub persisted_index: u64,
    /// Per-follower progress, when leader (learners included).
    pub peers: Vec<PeerStatus>,
    /// A committed configuration no longer holds this node (`Raft::is_removed`).
    pub removed: bool,
}
