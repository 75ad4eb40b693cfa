//! The check of what watchers are handed (`Action::HistoryRound`): every node's rounds
//! tile the revisions (each round's `after` is the previous round's `through`, from the
//! state the node started from), and for every revision a round covers (above a gap it
//! declares with `missing_through`, as a snapshot install past the compaction point
//! does) it hands out exactly the events every other node hands out for it. So a
//! watcher that moves to any node with `from = last + 1`, or whose node installs a
//! snapshot under it, neither misses an event nor sees one twice: the production watch
//! hub (`server::watch_hub`) only forwards these rounds.

use std::collections::HashMap;

use mmapd::kv::Event;
use mmapd::raft::NodeId;
use mmapd::server::driver::core::HistoryRound;

/// What the rounds handed out so far established.
#[derive(Debug, Default)]
pub struct WatchCheck {
    /// Revision -> the events of that revision (possibly none), as first handed out.
    canonical: HashMap<u64, Vec<Event>>,
    /// Node -> the `through` of its last round, this incarnation.
    through: HashMap<NodeId, u64>,
    /// Rounds checked.
    pub rounds: u64,
    /// Rounds that declared a gap (a snapshot installed past the history's window).
    pub gaps: u64,
    /// Rounds that skipped revisions: a snapshot install handing its history.
    pub jumps: u64,
}

impl WatchCheck {
    /// The node starts (again) from its disk: its next round starts where it does.
    pub fn started(&mut self, node: NodeId) {
        self.through.remove(&node);
    }

    /// A node handed out `round`: an error saying what it broke, if it broke a rule.
    pub fn round(&mut self, node: NodeId, round: &HistoryRound) -> Result<(), String> {
        self.rounds += 1;
        if let Some(&through) = self.through.get(&node) {
            if round.after != through {
                return Err(format!(
                    "n{node} handed out a round after {} where its last one ended at {through}",
                    round.after
                ));
            }
        }
        if round.through < round.after || round.missing_through > round.through {
            return Err(format!(
                "n{node} handed out a malformed round {}..={} (missing through {})",
                round.after, round.through, round.missing_through
            ));
        }
        self.through.insert(node, round.through);
        if round.missing_through > 0 {
            self.gaps += 1;
        }
        if round.through > round.after + 1 && round.events.iter().any(|e| e.revision > round.after + 1) {
            self.jumps += 1;
        }
        let mut by_revision: HashMap<u64, Vec<Event>> = HashMap::new();
        let mut last = round.after;
        for event in round.events.iter() {
            if event.revision <= round.after.max(round.missing_through)
                || event.revision > round.through
                || event.revision < last
            {
                return Err(format!(
                    "n{node} handed out an event at {} in a round {}..={} (missing through {}), after one at {last}",
                    event.revision, round.after, round.through, round.missing_through
                ));
            }
            last = event.revision;
            by_revision.entry(event.revision).or_default().push(event.clone());
        }
        for revision in round.after.max(round.missing_through) + 1..=round.through {
            let events = by_revision.remove(&revision).unwrap_or_default();
            match self.canonical.get(&revision) {
                None => {
                    self.canonical.insert(revision, events);
                }
                Some(known) if *known != events => {
                    return Err(format!(
                        "n{node} handed out {} events at revision {revision} where another node handed out {}: {:?} vs {:?}",
                        events.len(),
                        known.len(),
                        events.iter().map(|e| (&e.key, e.kind)).collect::<Vec<_>>(),
                        known.iter().map(|e| (&e.key, e.kind)).collect::<Vec<_>>()
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}
