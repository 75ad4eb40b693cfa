//! A linearizability checker for key-value histories, independent of who produced them
//! (the deterministic simulator, or fault tests against real processes).
//!
//! The model is one register per key (P-compositionality: a history of independent
//! registers is linearizable iff each key's sub-history is). Each key is checked with a
//! Wing–Gong–Lowe search (as in Knossos and Porcupine): repeatedly pick an operation that
//! may take effect next (no other pending operation completed before it was invoked),
//! apply it to the model, and backtrack on a mismatch; states already seen (which
//! operations are linearized, and the register's value) are memoized.
//!
//! Operations whose outcome is unknown (a write whose client timed out or crashed) may
//! take effect at any point after their invocation, or never. Reads whose outcome is
//! unknown constrain nothing and should simply be left out.
//!
//! Times are any totally ordered `u64` clock; an operation `a` precedes `b` in real time
//! iff `a.complete < b.invoke`.

use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;

/// What an operation did to its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation<V> {
    /// Set the key to a value.
    Write(V),
    /// Read the key and saw this value (`None`: the key was absent).
    Read(Option<V>),
}

/// One client operation on one key.
#[derive(Clone, Debug)]
pub struct Event<K, V> {
    /// The key.
    pub key: K,
    /// When the client invoked it.
    pub invoke: u64,
    /// When the client saw it complete; `None` when the outcome is unknown (writes only:
    /// the write may or may not have taken effect).
    pub complete: Option<u64>,
    /// What it did.
    pub operation: Operation<V>,
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<K> {
    /// Some order of the operations, consistent with real time, explains every result.
    Linearizable,
    /// No order explains the results of this key's operations.
    NotLinearizable {
        /// The first key (in key order) that has no linearization.
        key: K,
    },
    /// The search for this key exceeded its budget of states.
    Inconclusive {
        /// The key.
        key: K,
    },
}

/// The verdict on one register's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterVerdict {
    /// A linearization exists.
    Linearizable,
    /// None exists.
    NotLinearizable,
    /// The search gave up after `max_states` states.
    Inconclusive,
}

/// Checks a history of many keys, each key an independent register that starts absent.
/// `max_states_per_key` bounds the memoized search for one key.
pub fn check_history<K, V>(events: &[Event<K, V>], max_states_per_key: usize) -> Verdict<K>
where
    K: Ord + Clone,
    V: Clone + Eq + Hash,
{
    let mut by_key: BTreeMap<&K, Vec<&Event<K, V>>> = BTreeMap::new();
    for event in events {
        by_key.entry(&event.key).or_default().push(event);
    }
    let mut inconclusive = None;
    for (key, key_events) in by_key {
        let ops: Vec<RegisterOp<V>> = key_events
            .iter()
            .map(|e| RegisterOp { invoke: e.invoke, complete: e.complete, operation: e.operation.clone() })
            .collect();
        match check_register(None, &ops, max_states_per_key) {
            RegisterVerdict::Linearizable => {}
            RegisterVerdict::NotLinearizable => return Verdict::NotLinearizable { key: key.clone() },
            RegisterVerdict::Inconclusive => {
                inconclusive.get_or_insert_with(|| key.clone());
            }
        }
    }
    match inconclusive {
        Some(key) => Verdict::Inconclusive { key },
        None => Verdict::Linearizable,
    }
}

/// One operation on a single register.
#[derive(Clone, Debug)]
pub struct RegisterOp<V> {
    /// Invocation time.
    pub invoke: u64,
    /// Completion time, `None` when unknown (writes only).
    pub complete: Option<u64>,
    /// What it did.
    pub operation: Operation<V>,
}

/// Checks one register that starts with `initial`.
pub fn check_register<V>(initial: Option<V>, ops: &[RegisterOp<V>], max_states: usize) -> RegisterVerdict
where
    V: Clone + Eq + Hash,
{
    let ops = prune(ops);
    let required = ops.iter().filter(|op| op.complete != u64::MAX).count();
    let mut search = Search {
        linearized: vec![0u64; ops.len().div_ceil(64)],
        ops: &ops,
        seen: HashSet::new(),
        max_states,
        gave_up: false,
    };
    if search.run(initial, required) {
        RegisterVerdict::Linearizable
    } else if search.gave_up {
        RegisterVerdict::Inconclusive
    } else {
        RegisterVerdict::NotLinearizable
    }
}

/// An operation ready for the search: unknown completion is `u64::MAX`.
struct Op<V> {
    invoke: u64,
    complete: u64,
    operation: Operation<V>,
}

/// Drops what cannot matter: reads of unknown outcome, and unknown writes whose value no
/// read saw (leaving such a write out never makes a history less explicable: only a
/// read of its value could need it). Sorts by invocation so the search tries the
/// earliest operations first.
fn prune<V: Clone + Eq + Hash>(ops: &[RegisterOp<V>]) -> Vec<Op<V>> {
    let read_values: HashSet<&V> = ops
        .iter()
        .filter_map(|op| match &op.operation {
            Operation::Read(Some(v)) if op.complete.is_some() => Some(v),
            _ => None,
        })
        .collect();
    let mut kept: Vec<Op<V>> = ops
        .iter()
        .filter(|op| match &op.operation {
            Operation::Read(_) => op.complete.is_some(),
            Operation::Write(v) => op.complete.is_some() || read_values.contains(v),
        })
        .map(|op| Op {
            invoke: op.invoke,
            complete: op.complete.unwrap_or(u64::MAX),
            operation: op.operation.clone(),
        })
        .collect();
    kept.sort_by_key(|op| (op.invoke, op.complete));
    kept
}

struct Search<'a, V> {
    ops: &'a [Op<V>],
    /// Bit i set: ops[i] has been linearized.
    linearized: Vec<u64>,
    seen: HashSet<(Vec<u64>, Option<V>)>,
    max_states: usize,
    gave_up: bool,
}

impl<V: Clone + Eq + Hash> Search<'_, V> {
    fn is_done(&self, i: usize) -> bool {
        self.linearized[i / 64] & (1 << (i % 64)) != 0
    }

    fn flip(&mut self, i: usize) {
        self.linearized[i / 64] ^= 1 << (i % 64);
    }

    /// True when the remaining operations can be linearized from `value`, with
    /// `required` completed operations still to place.
    fn run(&mut self, value: Option<V>, required: usize) -> bool {
        // Reads that may go next and match the value are placed at once: a read does not
        // change the register, and placing it early only removes constraints.
        let mut placed_reads = Vec::new();
        let mut required = required;
        loop {
            let frontier = self.frontier();
            let next = (0..self.ops.len()).find(|&i| {
                !self.is_done(i)
                    && self.ops[i].invoke <= frontier
                    && matches!(&self.ops[i].operation, Operation::Read(v) if *v == value)
            });
            match next {
                Some(i) => {
                    self.flip(i);
                    placed_reads.push(i);
                    required -= 1;
                }
                None => break,
            }
        }
        let found = required == 0 || self.try_writes(&value, required);
        for i in placed_reads {
            self.flip(i);
        }
        found
    }

    fn try_writes(&mut self, value: &Option<V>, required: usize) -> bool {
        if self.gave_up || !self.seen.insert((self.linearized.clone(), value.clone())) {
            return false;
        }
        if self.seen.len() > self.max_states {
            self.gave_up = true;
            return false;
        }
        let frontier = self.frontier();
        for i in 0..self.ops.len() {
            if self.is_done(i) || self.ops[i].invoke > frontier {
                continue;
            }
            let Operation::Write(written) = &self.ops[i].operation else { continue };
            let counts = usize::from(self.ops[i].complete != u64::MAX);
            self.flip(i);
            let found = self.run(Some(written.clone()), required - counts);
            self.flip(i);
            if found {
                return true;
            }
            if self.gave_up {
                return false;
            }
        }
        false
    }

    /// The earliest completion among operations not yet linearized: an operation may
    /// be linearized next only if it was invoked before that.
    fn frontier(&self) -> u64 {
        (0..self.ops.len())
            .filter(|&i| !self.is_done(i))
            .map(|i| self.ops[i].complete)
            .min()
            .unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(invoke: u64, complete: Option<u64>, value: u64) -> RegisterOp<u64> {
        RegisterOp { invoke, complete, operation: Operation::Write(value) }
    }

    fn read(invoke: u64, complete: u64, value: Option<u64>) -> RegisterOp<u64> {
        RegisterOp { invoke, complete: Some(complete), operation: Operation::Read(value) }
    }

    fn verdict(ops: &[RegisterOp<u64>]) -> RegisterVerdict {
        check_register(None, ops, 1_000_000)
    }

    #[test]
    fn sequential_write_then_read_is_linearizable() {
        assert_eq!(verdict(&[write(1, Some(2), 7), read(3, 4, Some(7))]), RegisterVerdict::Linearizable);
    }

    #[test]
    fn read_of_a_value_never_written_is_rejected() {
        assert_eq!(verdict(&[write(1, Some(2), 7), read(3, 4, Some(8))]), RegisterVerdict::NotLinearizable);
    }

    #[test]
    fn read_of_absent_key_after_completed_write_is_rejected() {
        assert_eq!(verdict(&[write(1, Some(2), 7), read(3, 4, None)]), RegisterVerdict::NotLinearizable);
    }

    #[test]
    fn stale_read_after_overwrite_completed_is_rejected() {
        let ops = [write(1, Some(2), 1), write(3, Some(4), 2), read(5, 6, Some(1))];
        assert_eq!(verdict(&ops), RegisterVerdict::NotLinearizable);
    }

    #[test]
    fn read_concurrent_with_write_may_see_old_or_new_value() {
        for seen in [Some(1), Some(2)] {
            let ops = [write(1, Some(2), 1), write(3, Some(10), 2), read(4, 5, seen)];
            assert_eq!(verdict(&ops), RegisterVerdict::Linearizable, "read saw {seen:?}");
        }
    }

    #[test]
    fn value_cannot_go_back_between_sequential_reads() {
        // Two concurrent writes; a later read sees 2, a still later read sees 1.
        let ops =
            [write(1, Some(10), 1), write(2, Some(10), 2), read(11, 12, Some(2)), read(13, 14, Some(1))];
        assert_eq!(verdict(&ops), RegisterVerdict::NotLinearizable);
        // Either order alone is fine.
        let ops =
            [write(1, Some(10), 1), write(2, Some(10), 2), read(11, 12, Some(1)), read(13, 14, Some(1))];
        assert_eq!(verdict(&ops), RegisterVerdict::Linearizable);
    }

    #[test]
    fn concurrent_reads_may_disagree_while_a_write_is_pending() {
        let ops = [write(1, Some(2), 1), write(3, Some(20), 2), read(4, 6, Some(2)), read(5, 7, Some(1))];
        // The second read ends after the first started seeing 2, but they overlap: the
        // order r(1) then w(2) then r(2) works.
        assert_eq!(verdict(&ops), RegisterVerdict::Linearizable);
    }

    #[test]
    fn unknown_write_may_take_effect_late_or_never() {
        let ops = [write(1, None, 5), read(10, 11, None), read(20, 21, Some(5)), read(30, 31, Some(5))];
        assert_eq!(verdict(&ops), RegisterVerdict::Linearizable);
        let never = [write(1, None, 5), read(10, 11, None)];
        assert_eq!(verdict(&never), RegisterVerdict::Linearizable);
    }

    #[test]
    fn unknown_write_cannot_be_seen_before_it_was_invoked() {
        let ops = [read(1, 2, Some(5)), write(3, None, 5)];
        assert_eq!(verdict(&ops), RegisterVerdict::NotLinearizable);
    }

    #[test]
    fn unknown_write_cannot_take_effect_twice() {
        // 5, then 6 (completed), then 5 again: 5 was written only once.
        let ops = [write(1, None, 5), read(2, 3, Some(5)), write(4, Some(5), 6), read(6, 7, Some(5))];
        assert_eq!(verdict(&ops), RegisterVerdict::NotLinearizable);
    }

    #[test]
    fn keys_are_independent_and_the_bad_key_is_named() {
        let events = vec![
            Event { key: "a", invoke: 1, complete: Some(2), operation: Operation::Write(1) },
            Event { key: "b", invoke: 1, complete: Some(2), operation: Operation::Write(2) },
            Event { key: "a", invoke: 3, complete: Some(4), operation: Operation::Read(Some(1)) },
            // "b" was never 1.
            Event { key: "b", invoke: 3, complete: Some(4), operation: Operation::Read(Some(1)) },
        ];
        assert_eq!(check_history(&events, 1000), Verdict::NotLinearizable { key: "b" });
        assert_eq!(check_history(&events[..3], 1000), Verdict::Linearizable);
    }

    /// A tiny generator, so the test needs no dependency.
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *state >> 33
    }

    /// Builds a history from real linearization points, with overlapping intervals and
    /// some unknown outcomes: it must be accepted; corrupting one read must be rejected.
    #[test]
    fn generated_linearizable_histories_are_accepted_and_corrupted_ones_rejected() {
        for seed in 0..200u64 {
            let mut state = seed;
            let mut value: Option<u64> = None;
            let mut ops = Vec::new();
            for point in 0..40u64 {
                let at = point * 10 + 25;
                let invoke = at - next(&mut state) % 20;
                let complete = at + next(&mut state) % 20;
                if next(&mut state) % 2 == 0 {
                    let unknown = next(&mut state) % 5 == 0;
                    ops.push(write(invoke, if unknown { None } else { Some(complete) }, point + 100));
                    value = Some(point + 100);
                } else {
                    ops.push(read(invoke, complete, value));
                }
            }
            assert_eq!(verdict(&ops), RegisterVerdict::Linearizable, "seed {seed}");
            // A read far after a completed write that saw a value overwritten long ago.
            let last_write = ops.iter().rev().find_map(|op| match op.operation {
                Operation::Write(v) if op.complete.is_some() => Some((v, op.complete.unwrap())),
                _ => None,
            });
            let first_write = ops.iter().find_map(|op| match op.operation {
                Operation::Write(v) if op.complete.is_some() => Some(v),
                _ => None,
            });
            if let (Some((last, done)), Some(first)) = (last_write, first_write) {
                if first != last {
                    ops.push(read(done + 1000, done + 1001, Some(first)));
                    assert_eq!(verdict(&ops), RegisterVerdict::NotLinearizable, "seed {seed}");
                }
            }
        }
    }

    #[test]
    fn search_gives_up_within_its_budget() {
        // Many concurrent writes and one unexplained read: the search must explore many
        // orders before rejecting; a tiny budget makes it give up instead.
        let mut ops: Vec<RegisterOp<u64>> = (0..16).map(|v| write(1, Some(100), v)).collect();
        ops.push(read(200, 201, Some(999)));
        assert_eq!(check_register(None, &ops, 10), RegisterVerdict::Inconclusive);
    }
}
