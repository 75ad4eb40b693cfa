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
    // Every other change, by identity: two clients can invoke in the same microsecond
    // (comparing invoke times instead once reported a false "lost write", seed
    // 1795840700008, tests/chaos/findings/).
    if changes
        .iter()
        .any(|e| !std::ptr::eq(**e, **last) && (e.outcome == Outcome::Unknown || e.complete >= last.invoke))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(client: usize, invoke: u64, complete: u64, request: Request, outcome: Outcome) -> Event {
        Event {
            client,
            node: 0,
            key: 47,
            invoke,
            complete,
            request,
            outcome,
            version: None,
            revision: None,
            detail: String::new(),
            api: super::super::client::Api::Http,
        }
    }

    fn final_read(value: Option<u64>) -> Event {
        event(usize::MAX, 10_000_000, 10_000_001, Request::Read, Outcome::Read(value))
    }

    // Regression (soak, seed 1795840700008): two acknowledged writes invoked in the same
    // microsecond are concurrent; either may be the last, so neither final value is a
    // lost write. Fails with the old identity-by-invoke-time comparison.
    #[test]
    fn concurrent_writes_invoked_in_the_same_microsecond_may_land_in_either_order() {
        let first = event(0, 4_339_000, 4_341_000, Request::Write(1), Outcome::Ok);
        let second = event(2, 4_339_000, 4_342_000, Request::Write(3), Outcome::Ok);
        for seen in [1, 3] {
            let finals = final_read(Some(seen));
            let mut findings = Findings::default();
            check_last_write(47, &[&first, &second, &finals], &mut findings);
            assert!(findings.anomalies.is_empty(), "final value {seen}: {:?}", findings.anomalies);
        }
    }

    #[test]
    fn a_final_read_missing_the_last_sequential_write_is_a_lost_write() {
        let first = event(0, 1_000, 2_000, Request::Write(1), Outcome::Ok);
        let second = event(2, 3_000, 4_000, Request::Write(3), Outcome::Ok);
        let finals = final_read(Some(1));
        let mut findings = Findings::default();
        check_last_write(47, &[&first, &second, &finals], &mut findings);
        assert_eq!(findings.anomalies.len(), 1, "{:?}", findings.anomalies);
        assert!(findings.anomalies[0].1.contains("lost acknowledged write"));
    }
}
