//! The change history: every change applied to a key, as an event, in revision order,
//! for watches. It is **replicated state**, part of `StateMachine`: every node applies
//! the same entries and so holds the same events, it travels in snapshots, and it is
//! shortened only by a `Command::Compact` in the log, never by a node on its own, so a
//! watch can resume on any node.
//!
//! The window: the history holds every event of every revision above
//! `compact_revision` and none at or below it. So a watch `from` R is answerable
//! exactly when `R > compact_revision` (`events_since`); at or below it the answer is
//! `Compacted`, and `compact_revision + 1` is the earliest revision still fully held.
//! An empty state machine has `compact_revision` 0 (nothing dropped, every revision
//! from 1 held); one loaded from a snapshot written before the history (payload
//! versions 1–3) has `compact_revision` = the snapshot's revision.
//!
//! All events of one revision (one entry: an import, later a transaction) are
//! consecutive and share the revision; they are appended in one apply, so nobody sees
//! half of them.
//!
//! `clone` is O(1) (a persistent vector, as the map): a frozen copy of the state
//! machine carries its history for a snapshot or a watch's replay.

use bytes::Bytes;
use imbl::Vector;

use super::snapshot::event_len;
use super::state_machine::Value;

/// An estimate of the memory an event costs besides its key and value bytes: the event,
/// its `Bytes` handles and revisions, and the vector node's share.
pub const PER_EVENT_OVERHEAD_BYTES: u64 = 128;

/// What a change did to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was written (created or changed).
    Put,
    /// The key was removed.
    Delete,
}

/// One applied change to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The revision (log index) of the entry that made the change.
    pub revision: u64,
    /// The key.
    pub key: Bytes,
    /// Put or delete.
    pub kind: EventKind,
    /// For a put, the value written with its revisions (`mod_revision == revision`);
    /// `None` for a delete. Invariant: `Some` exactly for `EventKind::Put`.
    pub value: Option<Value>,
    /// The key's value before the change, `None` when it did not exist (always `Some`
    /// for a delete).
    pub previous: Option<Value>,
}

impl Event {
    /// The bytes this event holds: key, value and previous value.
    pub fn payload_bytes(&self) -> u64 {
        let value_len = |value: &Option<Value>| value.as_ref().map_or(0, |value| value.data.len() as u64);
        self.key.len() as u64 + value_len(&self.value) + value_len(&self.previous)
    }

    /// The memory this event is counted for: its payload plus `PER_EVENT_OVERHEAD_BYTES`.
    pub fn approximate_bytes(&self) -> u64 {
        self.payload_bytes() + PER_EVENT_OVERHEAD_BYTES
    }
}

/// The answer of `History::events_since`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Since {
    /// Every event with a revision at or above the one asked for, in order (possibly
    /// none).
    Events(Vector<Event>),
    /// The revision asked for is at or below the compaction point: events are missing.
    Compacted {
        /// The history's `compact_revision`: resume from one above it.
        compact_revision: u64,
    },
}

/// The retained events and the compaction point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// Invariant: revisions are non-decreasing and all above `compact_revision`.
    events: Vector<Event>,
    /// Every event at or below it was dropped; every event above it is held.
    compact_revision: u64,
    /// Invariant: the sum of `Event::approximate_bytes` over `events`.
    approximate_bytes: u64,
    /// Invariant: the sum of the events' encoded lengths in a snapshot
    /// (`snapshot::event_len`), so the snapshot's length is known in O(1).
    encoded_bytes: u64,
}

impl History {
    /// An empty history whose events up to `compact_revision` are not held (a state
    /// loaded from a snapshot without history: nothing before it is known).
    pub fn starting_at(compact_revision: u64) -> History {
        History { compact_revision, ..History::default() }
    }

    /// A history loaded from a snapshot. The caller (the snapshot decoder) has checked
    /// the order and the window.
    pub(super) fn from_parts(compact_revision: u64, events: Vector<Event>) -> History {
        let approximate_bytes = events.iter().map(Event::approximate_bytes).sum();
        let encoded_bytes = events.iter().map(event_len).sum();
        let history = History { events, compact_revision, approximate_bytes, encoded_bytes };
        history.assert_invariants();
        history
    }

    /// Appends an event. Panics if it goes back in revision order or into the
    /// compacted window: the state machine applies in order, so that is a bug.
    pub fn push(&mut self, event: Event) {
        let last = self.events.last().map_or(self.compact_revision, |last| last.revision);
        assert!(
            event.revision > self.compact_revision && event.revision >= last,
            "kv history: event at revision {} after revision {last} (compacted to {})",
            event.revision,
            self.compact_revision
        );
        assert_eq!(event.value.is_some(), event.kind == EventKind::Put, "kv history: {event:?}");
        self.approximate_bytes += event.approximate_bytes();
        self.encoded_bytes += event_len(&event);
        self.events.push_back(event);
    }

    /// Drops every event at or below `revision` and makes it the compaction point.
    /// A revision at or below the current point changes nothing; returns whether it
    /// moved. The caller bounds `revision` by the applied index.
    pub fn compact(&mut self, revision: u64) -> bool {
        if revision <= self.compact_revision {
            return false;
        }
        let keep_from =
            self.events.iter().position(|event| event.revision > revision).unwrap_or(self.events.len());
        let kept = self.events.split_off(keep_from);
        let dropped = std::mem::replace(&mut self.events, kept);
        self.approximate_bytes -= dropped.iter().map(Event::approximate_bytes).sum::<u64>();
        self.encoded_bytes -= dropped.iter().map(event_len).sum::<u64>();
        self.compact_revision = revision;
        true
    }

    /// The events with revision >= `from`, in order, or `Compacted` when `from` is at
    /// or below the compaction point. O(log n) plus an O(1) copy of the tail.
    pub fn events_since(&self, from: u64) -> Since {
        if from <= self.compact_revision {
            return Since::Compacted { compact_revision: self.compact_revision };
        }
        let start = self.first_index_at_or_above(from);
        Since::Events(self.events.clone().split_off(start))
    }

    /// The events of `revision` at the tail of the history (those of the entry just
    /// applied), in order; none when the tail is another revision's. O(k log n) for
    /// its k events: unlike `events_since`, no chunk of the history is copied.
    pub fn tail_at(&self, revision: u64) -> impl Iterator<Item = &Event> {
        let count = self.events.iter().rev().take_while(|event| event.revision == revision).count();
        let len = self.events.len();
        (len - count..len).map(|at| &self.events[at])
    }

    /// The position of the first event with revision >= `revision` (binary search).
    fn first_index_at_or_above(&self, revision: u64) -> usize {
        let (mut low, mut high) = (0, self.events.len());
        while low < high {
            let middle = (low + high) / 2;
            if self.events[middle].revision < revision {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low
    }

    /// The lowest revision to compact to so that at most `max_entries` events and
    /// `max_bytes` bytes remain, whole revisions at a time; `None` when already within.
    pub fn compaction_to_fit(&self, max_entries: u64, max_bytes: u64) -> Option<u64> {
        let (mut entries, mut bytes) = (self.events.len() as u64, self.approximate_bytes);
        if entries <= max_entries && bytes <= max_bytes {
            return None;
        }
        let mut revision = self.compact_revision;
        for event in self.events.iter() {
            if entries <= max_entries && bytes <= max_bytes && event.revision > revision {
                break;
            }
            revision = event.revision;
            entries -= 1;
            bytes -= event.approximate_bytes();
        }
        Some(revision)
    }

    /// The compaction point (see the module doc).
    pub fn compact_revision(&self) -> u64 {
        self.compact_revision
    }

    /// The events held, in order.
    pub fn events(&self) -> &Vector<Event> {
        &self.events
    }

    /// How many events are held.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when no event is held.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The memory the events are counted for (`Event::approximate_bytes` summed). O(1).
    pub fn approximate_bytes(&self) -> u64 {
        self.approximate_bytes
    }

    /// The events' encoded length in a snapshot, without the history's header. O(1).
    pub(super) fn encoded_bytes(&self) -> u64 {
        self.encoded_bytes
    }

    fn assert_invariants(&self) {
        let mut last = self.compact_revision;
        for event in self.events.iter() {
            assert!(
                event.revision > self.compact_revision && event.revision >= last,
                "kv history out of order"
            );
            last = event.revision;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: u64, key: &str, value: &str) -> Event {
        Event {
            revision,
            key: Bytes::copy_from_slice(key.as_bytes()),
            kind: EventKind::Put,
            value: Some(Value::created(Bytes::copy_from_slice(value.as_bytes()), revision)),
            previous: None,
        }
    }

    fn history(revisions: &[u64]) -> History {
        let mut history = History::default();
        for &revision in revisions {
            history.push(put(revision, "k", "v"));
        }
        history
    }

    fn revisions(since: Since) -> Vec<u64> {
        match since {
            Since::Events(events) => events.iter().map(|event| event.revision).collect(),
            Since::Compacted { compact_revision } => panic!("compacted at {compact_revision}"),
        }
    }

    #[test]
    fn the_tail_at_a_revision_is_its_events_only_when_they_end_the_history() {
        let mut history = History::default();
        for event in [put(2, "a", "1"), put(3, "b", "1"), put(3, "c", "1"), put(5, "a", "2")] {
            history.push(event);
        }
        let tail = |history: &History, revision| {
            history.tail_at(revision).map(|e| (e.revision, e.key.clone())).collect::<Vec<_>>()
        };
        assert_eq!(tail(&history, 5), vec![(5, Bytes::from_static(b"a"))]);
        assert_eq!(tail(&history, 3), vec![], "revision 3 is not the tail");
        history.push(put(6, "x", "1"));
        history.push(put(6, "y", "1"));
        assert_eq!(tail(&history, 6), vec![(6, Bytes::from_static(b"x")), (6, Bytes::from_static(b"y"))]);
        assert_eq!(tail(&history, 7), vec![]);
        assert_eq!(History::default().tail_at(1).count(), 0);
    }

    #[test]
    fn events_since_is_inclusive_and_keeps_every_event_of_a_revision() {
        let history = history(&[2, 3, 3, 5]);
        assert_eq!(revisions(history.events_since(1)), vec![2, 3, 3, 5]);
        assert_eq!(revisions(history.events_since(3)), vec![3, 3, 5]);
        assert_eq!(revisions(history.events_since(4)), vec![5]);
        assert_eq!(revisions(history.events_since(6)), Vec::<u64>::new());
    }

    #[test]
    fn compaction_drops_whole_revisions_and_a_from_at_or_below_it_is_compacted() {
        let mut history = history(&[2, 3, 3, 5]);
        let bytes = history.approximate_bytes();
        assert!(history.compact(3));
        assert_eq!(history.compact_revision(), 3);
        assert_eq!(history.len(), 1);
        assert_eq!(history.approximate_bytes(), bytes / 4);
        assert_eq!(history.events_since(3), Since::Compacted { compact_revision: 3 });
        assert_eq!(history.events_since(1), Since::Compacted { compact_revision: 3 });
        assert_eq!(revisions(history.events_since(4)), vec![5]);
        assert!(!history.compact(2), "a compaction below the point is a no-op");
        assert_eq!(history.compact_revision(), 3);
    }

    #[test]
    fn an_empty_history_holds_everything_from_revision_one() {
        let history = History::default();
        assert_eq!(history.events_since(0), Since::Compacted { compact_revision: 0 });
        assert_eq!(revisions(history.events_since(1)), Vec::<u64>::new());
        let loaded = History::starting_at(7);
        assert_eq!(loaded.events_since(7), Since::Compacted { compact_revision: 7 });
        assert_eq!(revisions(loaded.events_since(8)), Vec::<u64>::new());
    }

    #[test]
    fn compaction_to_fit_finds_the_lowest_revision_that_brings_both_bounds_back_under() {
        let history = history(&[2, 3, 3, 5, 6]);
        assert_eq!(history.compaction_to_fit(5, u64::MAX), None);
        assert_eq!(history.compaction_to_fit(4, u64::MAX), Some(2));
        // Dropping one event of revision 3 is not possible: both go.
        assert_eq!(history.compaction_to_fit(3, u64::MAX), Some(3));
        assert_eq!(history.compaction_to_fit(2, u64::MAX), Some(3));
        let per_event = put(1, "k", "v").approximate_bytes();
        assert_eq!(history.compaction_to_fit(u64::MAX, per_event), Some(5));
        assert_eq!(history.compaction_to_fit(0, 0), Some(6));
    }

    #[test]
    #[should_panic(expected = "after revision")]
    fn an_event_back_in_time_is_a_bug() {
        let mut history = history(&[4]);
        history.push(put(3, "k", "v"));
    }
}
