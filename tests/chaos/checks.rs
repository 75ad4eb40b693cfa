//! The checks on a run's history: each key linearizable (final reads included), every
//! acknowledged last write visible, versions naming one value.

use std::collections::{BTreeMap, HashMap};

use super::client::{Event, Outcome, Request};
use super::linearizability::{check_register, Operation, RegisterOp, RegisterVerdict};

/// States the search may visit per key before it gives up (inconclusive, not an anomaly).
const MAX_STATES_PER_KEY: usize = 2_000_000;

/// What the checks found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Keys checked.
    pub keys: usize,
    /// Keys whose search gave up.
    pub inconclusive: Vec<u64>,
    /// Each anomaly, described; with the key when it concerns one.
    pub anomalies: Vec<(Option<u64>, String)>,
}

/// The register operation an event stands for, if it constrains anything.
fn operation(event: &Event) -> Option<(Option<u64>, Operation)> {
    let known = |o: Operation| Some((Some(event.complete), o));
    let unknown = |o: Operation| Some((None, o));
    match (&event.request, &event.outcome) {
        (_, Outcome::Failed) => None,
        (Request::Read, Outcome::Read(value)) => known(Operation::Read(*value)),
        (Request::Write(v), Outcome::Ok) => known(Operation::Write(*v)),
        (Request::Write(v), Outcome::Unknown) => unknown(Operation::Write(*v)),
        (Request::Swap { expected, new, .. }, Outcome::Ok) => {
            known(Operation::Swap { expected: Some(*expected), new: *new })
        }
        (Request::Swap { expected, .. }, Outcome::Rejected) => known(Operation::NotEqual(Some(*expected))),
        (Request::Swap { expected, new, .. }, Outcome::Unknown) => {
            unknown(Operation::Swap { expected: Some(*expected), new: *new })
        }
        (Request::Create(v), Outcome::Ok) => known(Operation::Swap { expected: None, new: *v }),
        (Request::Create(_), Outcome::Rejected) => known(Operation::NotEqual(None)),
        (Request::Create(v), Outcome::Unknown) => unknown(Operation::Swap { expected: None, new: *v }),
        (Request::Delete, Outcome::Ok) => known(Operation::Delete { existed: true }),
        (Request::Delete, Outcome::Rejected) => known(Operation::Read(None)),
        (Request::Delete, Outcome::Unknown) => unknown(Operation::Delete { existed: false }),
        _ => None,
    }
}

/// Runs every check on `history` (which ends with the final reads).
pub fn check(history: &[Event]) -> Findings {
    let mut by_key: BTreeMap<u64, Vec<&Event>> = BTreeMap::new();
    for event in history {
        by_key.entry(event.key).or_default().push(event);
    }
    let mut findings = Findings { keys: by_key.len(), ..Findings::default() };
    for (&key, events) in &by_key {
        let ops: Vec<RegisterOp> = events
            .iter()
            .filter_map(|e| {
                operation(e).map(|(complete, operation)| RegisterOp { invoke: e.invoke, complete, operation })
            })
            .collect();
        match check_register(&ops, MAX_STATES_PER_KEY) {
            RegisterVerdict::Linearizable => {}
            RegisterVerdict::Inconclusive => findings.inconclusive.push(key),
            RegisterVerdict::NotLinearizable => {
                findings.anomalies.push((Some(key), format!("key k{key}: history is not linearizable")))
            }
        }
        check_last_write(key, events, &mut findings);
        check_versions(key, events, &mut findings);
    }
    findings
}

/// When the last change to a key was acknowledged and nothing else could have changed
/// the key after it, every final read must see it.
fn check_last_write(key: u64, events: &[&Event], findings: &mut Findings) {
    let changes: Vec<&&Event> = events
        .iter()
        .filter(|e| !matches!(e.request, Request::Read))
        .filter(|e| matches!(e.outcome, Outcome::Ok | Outcome::Unknown))
        .collect();
    let Some(last) = changes.iter().filter(|e| e.outcome == Outcome::Ok).max_by_key(|e| e.invoke) else {
        return;
    };
    if changes
        .iter()
        .any(|e| e.invoke != last.invoke && (e.outcome == Outcome::Unknown || e.complete >= last.invoke))
    {
        return;
    }
    let expected = match last.request {
        Request::Write(v) | Request::Swap { new: v, .. } | Request::Create(v) => Some(v),
        Request::Delete => None,
        Request::Read => return,
    };
    for event in events.iter().filter(|e| e.client == usize::MAX) {
        if let Outcome::Read(seen) = event.outcome {
            if seen != expected {
                findings.anomalies.push((
                    Some(key),
                    format!(
                        "key k{key}: lost acknowledged write: final read on n{} saw {seen:?}, the last acknowledged change (client {}, {:?}) left {expected:?}",
                        event.node + 1, last.client, last.request
                    ),
                ));
            }
        }
    }
}

/// A version (log index) names one value of one key.
fn check_versions(key: u64, events: &[&Event], findings: &mut Findings) {
    let mut values: HashMap<u64, u64> = HashMap::new();
    for event in events {
        let value = match (&event.request, &event.outcome) {
            (Request::Read, Outcome::Read(Some(v))) => *v,
            (Request::Write(v) | Request::Swap { new: v, .. } | Request::Create(v), Outcome::Ok) => *v,
            _ => continue,
        };
        let Some(version) = event.version else { continue };
        if let Some(&other) = values.get(&version) {
            if other != value {
                findings.anomalies.push((
                    Some(key),
                    format!("key k{key}: version {version} named value {other} and value {value}"),
                ));
            }
        }
        values.insert(version, value);
    }
}
