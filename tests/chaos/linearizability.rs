//! A linearizability checker for one key-value register with conditional operations.
//!
//! Adapted from branch `sim`'s `tests/sim/linearizability.rs` (not merged into main when
//! this was written): the same Wing–Gong–Lowe search with memoization of (operations
//! linearized, register value), and the same treatment of unknown outcomes. That checker
//! models plain reads and writes only; the HTTP API also has compare-and-swap
//! (`If-Match`), create-only (`If-None-Match: *`) and deletes that answer 404 when the key
//! is absent, and a failed condition (412) is itself an observation of the register. So
//! the operations here carry a precondition and an effect. When `sim` is merged the two
//! could share the search; the models differ.
//!
//! Values are unique per write (the clients never write a value twice), so a value names
//! the write that produced it, and a version read from an ETag can be replaced by the
//! value read with it.
//!
//! Operations whose outcome is unknown (the client timed out or got a 503) may take effect
//! at any point after their invocation, or never; when they do, their precondition must
//! hold.

use std::collections::HashSet;

/// The register: `None` is an absent key.
pub type Value = Option<u64>;

/// What an operation did, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A read (or a 404 delete) that saw this value.
    Read(Value),
    /// An unconditional write.
    Write(u64),
    /// A conditional write that succeeded: the register held `expected`, now `new`
    /// (`expected: None` is create-only).
    Swap {
        /// The value the condition named.
        expected: Value,
        /// The value written.
        new: u64,
    },
    /// A conditional operation that failed with 412: the register did not hold this.
    NotEqual(Value),
    /// A delete; `existed`: it answered 200, so the key was present.
    Delete {
        /// The key was present (the delete answered 200, not 404).
        existed: bool,
    },
}

impl Operation {
    /// The register after this operation from `value`, or `None` when the operation
    /// could not have returned what it returned from `value`.
    fn step(&self, value: Value) -> Option<Value> {
        match *self {
            Operation::Read(seen) => (seen == value).then_some(value),
            Operation::Write(new) => Some(Some(new)),
            Operation::Swap { expected, new } => (expected == value).then_some(Some(new)),
            Operation::NotEqual(other) => (other != value).then_some(value),
            Operation::Delete { existed } => (!existed || value.is_some()).then_some(None),
        }
    }

    /// True when the operation never changes the register.
    fn is_read_like(&self) -> bool {
        matches!(self, Operation::Read(_) | Operation::NotEqual(_))
    }
}

/// One operation on the register.
#[derive(Clone, Debug)]
pub struct RegisterOp {
    /// Invocation time.
    pub invoke: u64,
    /// Completion time, `None` when the outcome is unknown.
    pub complete: Option<u64>,
    /// What it did.
    pub operation: Operation,
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

/// Checks one register that starts absent. `max_states` bounds the memoized search.
pub fn check_register(ops: &[RegisterOp], max_states: usize) -> RegisterVerdict {
    let ops = prune(ops);
    let required = ops.iter().filter(|op| op.complete != u64::MAX).count();
    let mut search = Search {
        linearized: vec![0u64; ops.len().div_ceil(64)],
        ops: &ops,
        seen: HashSet::new(),
        max_states,
        gave_up: false,
    };
    if search.run(None, required) {
        RegisterVerdict::Linearizable
    } else if search.gave_up {
        RegisterVerdict::Inconclusive
    } else {
        RegisterVerdict::NotLinearizable
    }
}

/// An operation ready for the search: unknown completion is `u64::MAX`.
struct Op {
    invoke: u64,
    complete: u64,
    operation: Operation,
}

/// Drops what cannot matter: unknown read-like operations, and unknown writes whose value
/// nothing observed when no completed operation could need the register to merely differ
/// from a value (a 412, or a delete that found the key). Sorts by invocation.
fn prune(ops: &[RegisterOp]) -> Vec<Op> {
    let observed: HashSet<u64> = ops
        .iter()
        .filter(|op| op.complete.is_some())
        .filter_map(|op| match op.operation {
            Operation::Read(Some(v)) | Operation::Swap { expected: Some(v), .. } => Some(v),
            _ => None,
        })
        .collect();
    let negative = ops.iter().any(|op| {
        op.complete.is_some()
            && matches!(op.operation, Operation::NotEqual(_) | Operation::Delete { existed: true })
    });
    let mut kept: Vec<Op> = ops
        .iter()
        .filter(|op| {
            op.complete.is_some()
                || match op.operation {
                    Operation::Read(_) | Operation::NotEqual(_) => false,
                    Operation::Write(v) | Operation::Swap { new: v, .. } => negative || observed.contains(&v),
                    Operation::Delete { .. } => true,
                }
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

struct Search<'a> {
    ops: &'a [Op],
    /// Bit i set: ops[i] has been linearized.
    linearized: Vec<u64>,
    seen: HashSet<(Vec<u64>, Value)>,
    max_states: usize,
    gave_up: bool,
}

impl Search<'_> {
    fn is_done(&self, i: usize) -> bool {
        self.linearized[i / 64] & (1 << (i % 64)) != 0
    }

    fn flip(&mut self, i: usize) {
        self.linearized[i / 64] ^= 1 << (i % 64);
    }

    /// True when the remaining operations can be linearized from `value`, with
    /// `required` completed operations still to place.
    fn run(&mut self, value: Value, required: usize) -> bool {
        // Read-like operations that may go next and hold at this value are placed at
        // once: they do not change the register, and placing them early only removes
        // constraints.
        let mut placed = Vec::new();
        let mut required = required;
        loop {
            let frontier = self.frontier();
            let next = (0..self.ops.len()).find(|&i| {
                let op = &self.ops[i];
                !self.is_done(i)
                    && op.invoke <= frontier
                    && op.operation.is_read_like()
                    && op.operation.step(value).is_some()
            });
            match next {
                Some(i) => {
                    self.flip(i);
                    placed.push(i);
                    required -= 1;
                }
                None => break,
            }
        }
        let found = required == 0 || self.try_changes(value, required);
        for i in placed {
            self.flip(i);
        }
        found
    }

    fn try_changes(&mut self, value: Value, required: usize) -> bool {
        if self.gave_up || !self.seen.insert((self.linearized.clone(), value)) {
            return false;
        }
        if self.seen.len() > self.max_states {
            self.gave_up = true;
            return false;
        }
        let frontier = self.frontier();
        for i in 0..self.ops.len() {
            let op = &self.ops[i];
            if self.is_done(i) || op.invoke > frontier || op.operation.is_read_like() {
                continue;
            }
            let Some(next) = op.operation.step(value) else { continue };
            let counts = usize::from(op.complete != u64::MAX);
            self.flip(i);
            let found = self.run(next, required - counts);
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

    fn op(invoke: u64, complete: Option<u64>, operation: Operation) -> RegisterOp {
        RegisterOp { invoke, complete, operation }
    }

    fn write(invoke: u64, complete: Option<u64>, value: u64) -> RegisterOp {
        op(invoke, complete, Operation::Write(value))
    }

    fn read(invoke: u64, complete: u64, value: Value) -> RegisterOp {
        op(invoke, Some(complete), Operation::Read(value))
    }

    fn verdict(ops: &[RegisterOp]) -> RegisterVerdict {
        check_register(ops, 1_000_000)
    }

    use RegisterVerdict::{Linearizable, NotLinearizable};

    #[test]
    fn sequential_write_then_read_is_linearizable() {
        assert_eq!(verdict(&[write(1, Some(2), 7), read(3, 4, Some(7))]), Linearizable);
    }

    #[test]
    fn read_of_a_value_never_written_is_rejected() {
        assert_eq!(verdict(&[write(1, Some(2), 7), read(3, 4, Some(8))]), NotLinearizable);
    }

    #[test]
    fn stale_read_after_overwrite_completed_is_rejected() {
        let ops = [write(1, Some(2), 1), write(3, Some(4), 2), read(5, 6, Some(1))];
        assert_eq!(verdict(&ops), NotLinearizable);
    }

    #[test]
    fn value_cannot_go_back_between_sequential_reads() {
        let ops =
            [write(1, Some(10), 1), write(2, Some(10), 2), read(11, 12, Some(2)), read(13, 14, Some(1))];
        assert_eq!(verdict(&ops), NotLinearizable);
        let ops =
            [write(1, Some(10), 1), write(2, Some(10), 2), read(11, 12, Some(1)), read(13, 14, Some(1))];
        assert_eq!(verdict(&ops), Linearizable);
    }

    #[test]
    fn unknown_write_may_take_effect_late_or_never() {
        let ops = [write(1, None, 5), read(10, 11, None), read(20, 21, Some(5))];
        assert_eq!(verdict(&ops), Linearizable);
        assert_eq!(verdict(&[write(1, None, 5), read(10, 11, None)]), Linearizable);
    }

    #[test]
    fn unknown_write_cannot_take_effect_twice() {
        let ops = [write(1, None, 5), read(2, 3, Some(5)), write(4, Some(5), 6), read(6, 7, Some(5))];
        assert_eq!(verdict(&ops), NotLinearizable);
    }

    #[test]
    fn compare_and_swap_needs_its_expected_value() {
        let swap = |i, c, e, n| op(i, Some(c), Operation::Swap { expected: e, new: n });
        // 1, then swap 1 -> 2: fine; swap 3 -> 4 never held 3.
        assert_eq!(
            verdict(&[write(1, Some(2), 1), swap(3, 4, Some(1), 2), read(5, 6, Some(2))]),
            Linearizable
        );
        assert_eq!(verdict(&[write(1, Some(2), 1), swap(3, 4, Some(3), 4)]), NotLinearizable);
        // Two creates that both succeed, one after the other, with no delete between.
        assert_eq!(verdict(&[swap(1, 2, None, 1), swap(3, 4, None, 2)]), NotLinearizable);
    }

    #[test]
    fn failed_condition_is_an_observation() {
        let not_equal = |i, c, v| op(i, Some(c), Operation::NotEqual(v));
        // A create that failed on an absent key, with nothing concurrent.
        assert_eq!(verdict(&[not_equal(1, 2, None)]), NotLinearizable);
        // A swap on 1 that failed while 1 was the only value.
        assert_eq!(verdict(&[write(1, Some(2), 1), not_equal(3, 4, Some(1))]), NotLinearizable);
        // An unknown write that nobody read may explain the failure.
        assert_eq!(
            verdict(&[write(1, Some(2), 1), write(3, None, 9), not_equal(5, 6, Some(1))]),
            Linearizable
        );
    }

    #[test]
    fn delete_that_found_the_key_needs_it_present() {
        let delete = |i, c, existed| op(i, Some(c), Operation::Delete { existed });
        assert_eq!(verdict(&[delete(1, 2, true)]), NotLinearizable);
        assert_eq!(verdict(&[write(1, Some(2), 1), delete(3, 4, true), read(5, 6, None)]), Linearizable);
        assert_eq!(
            verdict(&[write(1, Some(2), 1), delete(3, 4, true), read(5, 6, Some(1))]),
            NotLinearizable
        );
        // An unknown delete may explain a later absent read.
        let unknown_delete = op(3, None, Operation::Delete { existed: false });
        assert_eq!(verdict(&[write(1, Some(2), 1), unknown_delete, read(5, 6, None)]), Linearizable);
    }

    #[test]
    fn unknown_swap_takes_effect_only_when_its_condition_holds() {
        let unknown_swap = op(3, None, Operation::Swap { expected: Some(7), new: 2 });
        assert_eq!(verdict(&[write(1, Some(2), 1), unknown_swap, read(5, 6, Some(2))]), NotLinearizable);
    }

    /// A tiny generator, so the test needs no dependency.
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        *state >> 33
    }

    /// Builds histories from real linearization points with overlapping intervals, some
    /// unknown outcomes and every kind of operation: they must be accepted; a read of a
    /// long-overwritten value appended at the end must be rejected.
    #[test]
    fn generated_linearizable_histories_are_accepted_and_corrupted_ones_rejected() {
        for seed in 0..200u64 {
            let mut state = seed;
            let mut value: Value = None;
            let mut ops = Vec::new();
            let mut last_written = None;
            let mut first_written = None;
            for point in 0..30u64 {
                let at = point * 10 + 25;
                let invoke = at - next(&mut state) % 20;
                let complete = at + next(&mut state) % 20;
                let unknown = next(&mut state) % 6 == 0;
                let new = point + 100;
                let operation = match next(&mut state) % 5 {
                    0 => Operation::Read(value),
                    1 => Operation::Write(new),
                    2 if next(&mut state) % 2 == 0 => Operation::Swap { expected: value, new },
                    2 => Operation::NotEqual(Some(new)),
                    3 => Operation::Delete { existed: value.is_some() },
                    _ => Operation::NotEqual(if value.is_some() { None } else { Some(1) }),
                };
                let changes = !operation.is_read_like();
                if unknown && !changes {
                    continue;
                }
                value = operation.step(value).expect("generated from the model");
                if changes && !unknown {
                    if let Some(v) = value {
                        first_written.get_or_insert(v);
                        last_written = Some((v, complete));
                    }
                }
                ops.push(op(invoke, if unknown { None } else { Some(complete) }, operation));
            }
            assert_eq!(verdict(&ops), Linearizable, "seed {seed}");
            if let (Some((last, done)), Some(first)) = (last_written, first_written) {
                if first != last && value == Some(last) {
                    ops.push(read(done + 1000, done + 1001, Some(first)));
                    assert_eq!(verdict(&ops), NotLinearizable, "seed {seed}");
                }
            }
        }
    }

    #[test]
    fn search_gives_up_within_its_budget() {
        let mut ops: Vec<RegisterOp> = (0..16).map(|v| write(1, Some(100), v)).collect();
        ops.push(read(200, 201, Some(999)));
        assert_eq!(check_register(&ops, 10), RegisterVerdict::Inconclusive);
    }
}
