//! Bank transfers through transactions, and their checker: the simulator's
//! linearizability check of `kv::Txn`.
//!
//! `ACCOUNTS` accounts (`acct/<i>`) are opened together by a create-only transaction,
//! `OPENING_BALANCE` each. A transfer is a compare-`mod_revision` transaction built
//! from balances the client read on any node (stale, maybe): it moves an amount only if
//! neither account changed since, and answers every account (a get of the prefix) in
//! both branches. An audit is a read-only transaction: a get of every account.
//!
//! The checker replays the committed log, in index order (the serial order Raft
//! chose), on its own `Ledger`: code independent of the state machine that evaluates
//! only these shapes. Every acknowledged transaction must be the entry at the index it
//! was acknowledged at, have taken the branch the ledger takes there, and have answered
//! exactly the accounts the ledger holds at that point (so an audit sees the conserved
//! total, and every acknowledged transfer is reflected in every later read); an
//! acknowledged transaction that completed before another was invoked has the lower
//! index (real time); and the ledger itself conserves the total after every entry.

use std::collections::BTreeMap;

use bytes::Bytes;
use mmapd::kv::{
    Command, Compare, CompareOp, CompareSpan, CompareTarget, StateMachine, Txn, TxnOp, TxnOutcome,
    TxnResponse,
};

/// How many accounts.
pub const ACCOUNTS: u64 = 4;
/// Each account's balance when opened.
pub const OPENING_BALANCE: u64 = 100;
/// What the balances always add up to, once opened.
pub const TOTAL: u64 = ACCOUNTS * OPENING_BALANCE;
const PREFIX: &str = "acct/";

/// What a transaction must have answered: the branch taken, and per response the
/// accounts (key, balance, mod_revision) it holds.
type Expected = (bool, Vec<Vec<(Bytes, u64, u64)>>);

fn account(i: u64) -> Bytes {
    Bytes::from(format!("{PREFIX}{i}"))
}

fn balance_of(data: &[u8]) -> Option<u64> {
    std::str::from_utf8(data).ok()?.parse().ok()
}

fn audit_op() -> TxnOp {
    TxnOp::GetPrefix { prefix: Bytes::from(PREFIX), limit: 100 }
}

/// Opens every account, once (create-only on `acct/0`).
pub fn open() -> Command {
    Command::Txn(Txn {
        compare: vec![Compare {
            span: CompareSpan::Key,
            key: account(0),
            target: CompareTarget::CreateRevision(0),
            op: CompareOp::Eq,
        }],
        success: (0..ACCOUNTS)
            .map(|i| TxnOp::Put {
                key: account(i),
                value: Bytes::from(OPENING_BALANCE.to_string()),
                lease: 0,
            })
            .collect(),
        failure: vec![],
    })
}

/// A read of every account.
pub fn audit() -> Command {
    Command::Txn(Txn { compare: vec![], success: vec![audit_op()], failure: vec![] })
}

/// A transfer built from `state` (any node's, maybe stale): `pick` chooses from, to and
/// the amount (given the from balance). `None` when the accounts are not open there.
pub fn transfer(state: &StateMachine, mut pick: impl FnMut(u64) -> u64) -> Option<Command> {
    let from = pick(ACCOUNTS);
    let to = (from + 1 + pick(ACCOUNTS - 1)) % ACCOUNTS;
    let from_value = state.get(&account(from))?;
    let to_value = state.get(&account(to))?;
    let (from_balance, to_balance) = (balance_of(&from_value.data)?, balance_of(&to_value.data)?);
    let amount = if from_balance == 0 { 0 } else { 1 + pick(from_balance) };
    let amount = amount.min(from_balance);
    let unchanged = |key: Bytes, revision: u64| Compare {
        span: CompareSpan::Key,
        key,
        target: CompareTarget::ModRevision(revision),
        op: CompareOp::Eq,
    };
    Some(Command::Txn(Txn {
        compare: vec![
            unchanged(account(from), from_value.mod_revision),
            unchanged(account(to), to_value.mod_revision),
        ],
        success: vec![
            TxnOp::Put {
                key: account(from),
                value: Bytes::from((from_balance - amount).to_string()),
                lease: 0,
            },
            TxnOp::Put { key: account(to), value: Bytes::from((to_balance + amount).to_string()), lease: 0 },
            audit_op(),
        ],
        failure: vec![audit_op()],
    }))
}

/// A transaction a client saw acknowledged.
#[derive(Clone, Debug)]
pub struct Acknowledged {
    /// The entry it proposed.
    pub data: Bytes,
    /// The index it was acknowledged at.
    pub index: u64,
    /// What it answered.
    pub outcome: TxnOutcome,
    /// The history clock at invocation and completion.
    pub invoke: u64,
    /// See `invoke`.
    pub complete: u64,
}

/// An account in the ledger: its balance and `mod_revision`.
type Account = (u64, u64);

/// The checker's own replay of the accounts.
#[derive(Default)]
struct Ledger {
    accounts: BTreeMap<Bytes, Account>,
}

impl Ledger {
    /// The audit answer: every account as `(key, balance, mod_revision)`.
    fn audit(&self) -> Vec<(Bytes, u64, u64)> {
        self.accounts.iter().map(|(key, (balance, revision))| (key.clone(), *balance, *revision)).collect()
    }

    /// Applies a transaction of this module's shapes at `index`: which branch, and what
    /// each audit answered. `None`: not a bank transaction.
    fn apply(&mut self, index: u64, txn: &Txn) -> Option<Expected> {
        let succeeded = txn.compare.iter().all(|compare| {
            let revision = self.accounts.get(&compare.key).map(|(_, revision)| *revision);
            match (&compare.target, compare.op) {
                // Create-only: the key was never created (accounts are never deleted).
                (CompareTarget::CreateRevision(0), CompareOp::Eq) => revision.is_none(),
                (CompareTarget::ModRevision(expected), CompareOp::Eq) => revision.unwrap_or(0) == *expected,
                _ => false,
            }
        });
        let mut audits = Vec::new();
        for op in if succeeded { &txn.success } else { &txn.failure } {
            match op {
                TxnOp::Put { key, value, .. } => {
                    self.accounts.insert(key.clone(), (balance_of(value)?, index));
                }
                TxnOp::GetPrefix { .. } => audits.push(self.audit()),
                _ => return None,
            }
        }
        Some((succeeded, audits))
    }

    fn total(&self) -> u64 {
        self.accounts.values().map(|(balance, _)| balance).sum()
    }
}

fn is_bank(txn: &Txn) -> bool {
    let key_of = |op: &TxnOp| match op {
        TxnOp::Put { key, .. } | TxnOp::DeleteKey { key } | TxnOp::GetKey { key } => key.clone(),
        TxnOp::DeletePrefix { prefix } | TxnOp::GetPrefix { prefix, .. } => prefix.clone(),
        // The ledger never writes ranges: a range op is not a bank transaction.
        TxnOp::DeleteRange { .. } | TxnOp::GetRange { .. } => Bytes::new(),
    };
    txn.compare
        .iter()
        .map(|c| c.key.clone())
        .chain(txn.success.iter().chain(&txn.failure).map(key_of))
        .all(|key| key.starts_with(PREFIX.as_bytes()))
}

/// The audits of an answer, as the ledger writes them; `None` when it answered
/// something else than audits and put revisions.
fn audits_of(outcome: &TxnOutcome) -> Option<Vec<Vec<(Bytes, u64, u64)>>> {
    let mut audits = Vec::new();
    for response in &outcome.responses {
        match response {
            TxnResponse::Range { items, more: false } => audits.push(
                items
                    .iter()
                    .map(|item| {
                        Some((item.key.clone(), balance_of(&item.value.data)?, item.value.mod_revision))
                    })
                    .collect::<Option<Vec<_>>>()?,
            ),
            TxnResponse::Put { .. } => {}
            _ => return None,
        }
    }
    Some(audits)
}

/// Checks every acknowledged transaction against the committed log (`committed[i]` is
/// the data of the normal entry at index `i + 1`, `None` for another kind). Returns the
/// ledger's final accounts as `(key, balance, mod_revision)`.
pub fn check(
    committed: &[Option<&Bytes>],
    acknowledged: &[Acknowledged],
) -> Result<Vec<(Bytes, u64, u64)>, String> {
    let mut ledger = Ledger::default();
    let mut expected: BTreeMap<u64, Expected> = BTreeMap::new();
    for (position, data) in committed.iter().enumerate() {
        let index = position as u64 + 1;
        let Some(data) = data else { continue };
        let Ok(Command::Txn(txn)) = Command::decode_shared(data) else { continue };
        if !is_bank(&txn) {
            continue;
        }
        let Some(result) = ledger.apply(index, &txn) else {
            return Err(format!("the transaction at {index} is not of the bank's shapes: {txn:?}"));
        };
        if !ledger.accounts.is_empty()
            && (ledger.accounts.len() as u64 != ACCOUNTS || ledger.total() != TOTAL)
        {
            return Err(format!(
                "after the transaction at {index} the ledger holds {:?}: not conserved",
                ledger.audit()
            ));
        }
        expected.insert(index, result);
    }
    for ack in acknowledged {
        let at = committed.get((ack.index as usize).wrapping_sub(1)).copied().flatten();
        if at != Some(&ack.data) {
            return Err(format!(
                "a transaction acknowledged at {} is not the entry committed there",
                ack.index
            ));
        }
        let (succeeded, audits) = &expected[&ack.index];
        let seen = audits_of(&ack.outcome);
        if ack.outcome.succeeded != *succeeded || seen.as_ref() != Some(audits) {
            return Err(format!(
                "the transaction at {} answered {:?}; in log order it takes the {} branch and reads {:?}",
                ack.index,
                ack.outcome,
                if *succeeded { "success" } else { "failure" },
                audits
            ));
        }
        for audit in audits {
            let total: u64 = audit.iter().map(|(_, balance, _)| balance).sum();
            if !audit.is_empty() && total != TOTAL {
                return Err(format!("an audit at {} saw a total of {total}, not {TOTAL}", ack.index));
            }
        }
    }
    let mut by_completion: Vec<&Acknowledged> = acknowledged.iter().collect();
    by_completion.sort_by_key(|ack| ack.complete);
    for later in acknowledged {
        // Every ack completed before `later` was invoked must be at a lower index.
        for earlier in by_completion.iter().take_while(|ack| ack.complete < later.invoke) {
            if earlier.index >= later.index {
                return Err(format!(
                    "the transaction at {} completed before the one at {} was invoked: real time broken",
                    earlier.index, later.index
                ));
            }
        }
    }
    Ok(ledger.audit())
}

/// Every account in `state`, as the ledger writes them.
pub fn accounts_in(state: &StateMachine) -> Vec<(Bytes, u64, u64)> {
    state
        .list(PREFIX.as_bytes(), None, usize::MAX)
        .map(|(key, value)| (key.clone(), balance_of(&value.data).unwrap_or(u64::MAX), value.mod_revision))
        .collect()
}
