//! etcd's KV service: Range, Put, DeleteRange, Txn and Compact, each one command of
//! the coordination API's state machine (a put, a transaction, a compaction).
//!
//! - A range `[key, range_end)`: no `range_end` is the key alone, `"\0"` every key from
//!   `key` on (so key and range_end both `"\0"` is every key), as etcd's.
//! - A Range is linearizable (a ReadIndex round) unless `serializable`; at a past
//!   `revision` it is answered from the replicated history, the same on every node,
//!   while the history reaches back that far (etcd's "required revision has been
//!   compacted" beyond it).
//! - `prev_kv` on Put and DeleteRange becomes a get before the write in the same
//!   transaction: the previous values are read at the write's revision, atomically.
//! - `ignore_value` and `ignore_lease` read the key and write it back with a compare
//!   on its `mod_revision`, again while another writer got in between.
//! - A Range inside a Txn reads the whole range at the transaction's revision; its
//!   limit, sort and filters are applied here, as a Range's are.
//! - A nested transaction: etcd decides all of a tree's compares on the state before
//!   it, so its path is chosen on a linearizable read and the flat transaction of the
//!   chosen ops runs guarded by the compared keys' `mod_revision`s (`plan_nested`);
//!   again while a guard fails. At most `MAX_TXN_DEPTH` levels.
//! - A compare over a range (`range_end`) is the state machine's (`CompareSpan::Range`):
//!   it holds when it holds for every key in the range. Inside a nested transaction it
//!   is guarded by each key's `mod_revision` and by no key of the range written after
//!   the read (`guard`), at most `MAX_GUARDED_KEYS` keys.

use std::collections::BTreeMap;

use bytes::Bytes;
use tonic::{Request, Response, Status};

use super::proto::etcdserverpb::{
    compare, kv_server::Kv, range_request, request_op, response_op, CompactionRequest, CompactionResponse,
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use super::proto::mvccpb;
use super::{invalid, to_i64, Front};
use crate::kv::TxnResponse as Answer;
use crate::kv::{
    Command, Compare, CompareOp, CompareSpan, CompareTarget, Condition, KeyValue, Outcome, Since,
    StateMachine, Txn, TxnOp, TxnOutcome, Value,
};
use crate::server::api::error::ApiError;
use crate::server::api::txn::range_prefix;
use crate::server::auth::{Access, Need};

/// How often a put with `ignore_value` or `ignore_lease`, or a nested transaction,
/// retries after another write to a key it read got in between its read and its write.
const IGNORE_RETRIES: usize = 16;

/// A key range as etcd spells it, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    /// One key.
    Key(Bytes),
    /// `[start, end)`; `None`: every key from `start` on.
    Range(Bytes, Option<Bytes>),
}

impl KeyRange {
    /// etcd's rules: an empty `range_end` is the key alone, `"\0"` every key from it on.
    pub fn of(key: &[u8], range_end: &[u8]) -> KeyRange {
        match range_end {
            [] => KeyRange::Key(Bytes::copy_from_slice(key)),
            [0] => KeyRange::Range(Bytes::copy_from_slice(key), None),
            end => KeyRange::Range(Bytes::copy_from_slice(key), Some(Bytes::copy_from_slice(end))),
        }
    }

    /// What a token must grant to touch it.
    pub fn need(&self, access: Access) -> Need<'_> {
        match self {
            KeyRange::Key(key) => Need::Key(key, access),
            KeyRange::Range(start, end) => Need::Prefix(range_prefix(start, end.as_deref()), access),
        }
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Key(wanted) => key == wanted.as_ref(),
            KeyRange::Range(start, end) => crate::kv::in_range(key, start, end.as_deref()),
        }
    }

    /// The keys of the range in `state`, in key order.
    fn read(&self, state: &StateMachine) -> Vec<KeyValue> {
        let pair = |(key, value): (&Bytes, &Value)| KeyValue { key: key.clone(), value: value.clone() };
        match self {
            KeyRange::Key(key) => state
                .get(key)
                .map(|value| KeyValue { key: key.clone(), value: value.clone() })
                .into_iter()
                .collect(),
            KeyRange::Range(start, end) => state.range(start, end.as_deref()).map(pair).collect(),
        }
    }

    fn get_op(&self) -> TxnOp {
        match self {
            KeyRange::Key(key) => TxnOp::GetKey { key: key.clone() },
            KeyRange::Range(start, end) => {
                TxnOp::GetRange { start: start.clone(), end: end.clone(), limit: u32::MAX }
            }
        }
    }

    fn delete_op(&self) -> TxnOp {
        match self {
            KeyRange::Key(key) => TxnOp::DeleteKey { key: key.clone() },
            KeyRange::Range(start, end) => TxnOp::DeleteRange { start: start.clone(), end: end.clone() },
        }
    }
}

/// An etcd `KeyValue` of ours.
pub fn key_value(pair: &KeyValue, keys_only: bool) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: pair.key.to_vec(),
        create_revision: to_i64(pair.value.create_revision),
        mod_revision: to_i64(pair.value.mod_revision),
        version: to_i64(pair.value.version),
        value: if keys_only { Vec::new() } else { pair.value.data.to_vec() },
        lease: pair.value.lease as i64,
    }
}

/// The keys of `range` as they were at `revision`: today's, with every change above
/// `revision` undone from the history's previous values. `revision` must be within the
/// history (above its compaction point, or at it).
fn read_at(state: &StateMachine, range: &KeyRange, revision: u64) -> Vec<KeyValue> {
    let mut keys: BTreeMap<Bytes, Option<Value>> =
        range.read(state).into_iter().map(|pair| (pair.key, Some(pair.value))).collect();
    if let Since::Events(events) = state.history().events_since(revision + 1) {
        // Newest first, so the earliest change above `revision` is the last written.
        for event in events.iter().rev().filter(|event| range.contains(&event.key)) {
            keys.insert(event.key.clone(), event.previous.clone());
        }
    }
    keys.into_iter().filter_map(|(key, value)| value.map(|value| KeyValue { key, value })).collect()
}

/// The keys of `range` at etcd's `revision` (0: now), with etcd's errors for a
/// revision above the current one or below the history's compaction point.
pub(super) fn range_at(
    state: &StateMachine,
    range: &KeyRange,
    revision: i64,
) -> Result<Vec<KeyValue>, Status> {
    match u64::try_from(revision).unwrap_or(0) {
        0 => Ok(range.read(state)),
        asked if asked > state.revision() => {
            Err(Status::out_of_range("etcdserver: mvcc: required revision is a future revision"))
        }
        asked if asked < state.history().compact_revision() => {
            Err(ApiError::Compacted { compact_revision: state.history().compact_revision() }.grpc_status())
        }
        asked => Ok(read_at(state, range, asked)),
    }
}

/// Applies a Range's limit, sort, filters and `count_only`/`keys_only` to the keys of
/// its range (in key order).
fn shape(request: &RangeRequest, mut pairs: Vec<KeyValue>) -> (Vec<mvccpb::KeyValue>, bool, i64) {
    let count = to_i64(pairs.len() as u64);
    let bound = |value: i64| u64::try_from(value).unwrap_or(0);
    let (min_mod, max_mod) = (bound(request.min_mod_revision), bound(request.max_mod_revision));
    let (min_create, max_create) = (bound(request.min_create_revision), bound(request.max_create_revision));
    pairs.retain(|pair| {
        let value = &pair.value;
        (min_mod == 0 || value.mod_revision >= min_mod)
            && (max_mod == 0 || value.mod_revision <= max_mod)
            && (min_create == 0 || value.create_revision >= min_create)
            && (max_create == 0 || value.create_revision <= max_create)
    });
    let order =
        range_request::SortOrder::try_from(request.sort_order).unwrap_or(range_request::SortOrder::None);
    let target =
        range_request::SortTarget::try_from(request.sort_target).unwrap_or(range_request::SortTarget::Key);
    // etcd sorts ascending by key when only a target is named.
    let order = match (order, target) {
        (range_request::SortOrder::None, range_request::SortTarget::Key) => range_request::SortOrder::None,
        (range_request::SortOrder::None, _) => range_request::SortOrder::Ascend,
        (order, _) => order,
    };
    if order != range_request::SortOrder::None {
        pairs.sort_by(|a, b| {
            let ordering = match target {
                range_request::SortTarget::Key => a.key.cmp(&b.key),
                range_request::SortTarget::Version => a.value.version.cmp(&b.value.version),
                range_request::SortTarget::Create => a.value.create_revision.cmp(&b.value.create_revision),
                range_request::SortTarget::Mod => a.value.mod_revision.cmp(&b.value.mod_revision),
                range_request::SortTarget::Value => a.value.data.cmp(&b.value.data),
            };
            if order == range_request::SortOrder::Descend {
                ordering.reverse()
            } else {
                ordering
            }
        });
    }
    let limit = usize::try_from(request.limit).unwrap_or(0);
    let more = limit > 0 && pairs.len() > limit;
    if more {
        pairs.truncate(limit);
    }
    if request.count_only {
        return (Vec::new(), more, count);
    }
    (pairs.iter().map(|pair| key_value(pair, request.keys_only)).collect(), more, count)
}

fn check_range_request(request: &RangeRequest) -> Result<(), Status> {
    if request.limit < 0 {
        return Err(invalid("a range's limit must not be negative"));
    }
    Ok(())
}

/// What one etcd op of a transaction became: where its answer is among ours.
enum Planned {
    Range(RangeRequest),
    Put {
        prev: Option<usize>,
    },
    Delete {
        prev: Option<usize>,
    },
    /// A nested transaction: whether its compares held, and its chosen branch's ops.
    Txn {
        succeeded: bool,
        ops: Vec<(Planned, usize)>,
    },
}

/// How deep transactions may nest, and how many ops a whole tree may hold (etcd's
/// default `--max-txn-ops`).
const MAX_TXN_DEPTH: usize = 8;
const MAX_TXN_TREE_OPS: usize = 128;

/// etcd's transaction as ours, and how to read our answers back.
struct TxnPlan {
    txn: Txn,
    success: Vec<(Planned, usize)>,
    failure: Vec<(Planned, usize)>,
}

fn compare_of(compare: &super::proto::etcdserverpb::Compare) -> Result<Compare, Status> {
    let (key, span) = match KeyRange::of(&compare.key, &compare.range_end) {
        KeyRange::Key(key) => (key, CompareSpan::Key),
        KeyRange::Range(start, end) => (start, CompareSpan::Range(end)),
    };
    let op = match compare::CompareResult::try_from(compare.result) {
        Ok(compare::CompareResult::Equal) => CompareOp::Eq,
        Ok(compare::CompareResult::NotEqual) => CompareOp::NotEq,
        Ok(compare::CompareResult::Less) => CompareOp::Less,
        Ok(compare::CompareResult::Greater) => CompareOp::Greater,
        Err(_) => return Err(invalid(format!("unknown compare result {}", compare.result))),
    };
    let number =
        |value: i64| u64::try_from(value).map_err(|_| invalid("a compare's number must not be negative"));
    use compare::TargetUnion;
    let target = match (compare::CompareTarget::try_from(compare.target), &compare.target_union) {
        (Ok(compare::CompareTarget::Value), Some(TargetUnion::Value(value))) => {
            CompareTarget::Value(Bytes::copy_from_slice(value))
        }
        (Ok(compare::CompareTarget::Value), None) => CompareTarget::Value(Bytes::new()),
        (Ok(compare::CompareTarget::Version), Some(TargetUnion::Version(n))) => {
            CompareTarget::Version(number(*n)?)
        }
        (Ok(compare::CompareTarget::Version), None) => CompareTarget::Version(0),
        (Ok(compare::CompareTarget::Create), Some(TargetUnion::CreateRevision(n))) => {
            CompareTarget::CreateRevision(number(*n)?)
        }
        (Ok(compare::CompareTarget::Create), None) => CompareTarget::CreateRevision(0),
        (Ok(compare::CompareTarget::Mod), Some(TargetUnion::ModRevision(n))) => {
            CompareTarget::ModRevision(number(*n)?)
        }
        (Ok(compare::CompareTarget::Mod), None) => CompareTarget::ModRevision(0),
        (Ok(compare::CompareTarget::Lease), Some(TargetUnion::Lease(n))) => CompareTarget::Lease(*n as u64),
        (Ok(compare::CompareTarget::Lease), None) => CompareTarget::Lease(0),
        _ => return Err(invalid("a compare's target and its value do not match")),
    };
    Ok(Compare { key, span, target, op })
}

/// A tree's choice made on one state: where its nested transactions went, and the
/// compares that keep that choice true (each compared key's `mod_revision` as read).
struct Chosen<'a> {
    state: &'a StateMachine,
    guards: Vec<Compare>,
}

fn plan_ops(
    requests: &[RequestOp],
    ops: &mut Vec<TxnOp>,
    chosen: &mut Option<Chosen<'_>>,
    depth: usize,
) -> Result<Vec<(Planned, usize)>, Status> {
    let mut planned = Vec::with_capacity(requests.len());
    for request in requests {
        match &request.request {
            Some(request_op::Request::RequestRange(range)) => {
                check_range_request(range)?;
                if range.revision > 0 {
                    return Err(Status::unimplemented(
                        "a range at a past revision inside a transaction is not served",
                    ));
                }
                ops.push(KeyRange::of(&range.key, &range.range_end).get_op());
                planned.push((Planned::Range(range.clone()), ops.len() - 1));
            }
            Some(request_op::Request::RequestPut(put)) => {
                if put.ignore_value || put.ignore_lease {
                    return Err(Status::unimplemented(
                        "ignore_value and ignore_lease are not served inside a transaction",
                    ));
                }
                let key = Bytes::copy_from_slice(&put.key);
                let prev = put.prev_kv.then(|| {
                    ops.push(TxnOp::GetKey { key: key.clone() });
                    ops.len() - 1
                });
                ops.push(TxnOp::Put {
                    key,
                    value: Bytes::copy_from_slice(&put.value),
                    lease: put.lease as u64,
                });
                planned.push((Planned::Put { prev }, ops.len() - 1));
            }
            Some(request_op::Request::RequestDeleteRange(delete)) => {
                let range = KeyRange::of(&delete.key, &delete.range_end);
                let prev = delete.prev_kv.then(|| {
                    ops.push(range.get_op());
                    ops.len() - 1
                });
                ops.push(range.delete_op());
                planned.push((Planned::Delete { prev }, ops.len() - 1));
            }
            Some(request_op::Request::RequestTxn(nested)) => {
                if depth >= MAX_TXN_DEPTH {
                    return Err(invalid(format!("transactions nest at most {MAX_TXN_DEPTH} deep")));
                }
                let Some(choosing) = chosen.as_mut() else {
                    // Found while planning a flat transaction: the caller plans again
                    // with a state to choose on.
                    return Err(Status::aborted(NESTED));
                };
                let compares = nested.compare.iter().map(compare_of).collect::<Result<Vec<_>, _>>()?;
                let succeeded = compares.iter().all(|compare| compare.holds(choosing.state));
                for compare in &compares {
                    guard(choosing, compare)?;
                }
                let branch = if succeeded { &nested.success } else { &nested.failure };
                let planned_ops = plan_ops(branch, ops, chosen, depth + 1)?;
                planned.push((Planned::Txn { succeeded, ops: planned_ops }, 0));
            }
            None => return Err(invalid("a transaction op without a request")),
        }
    }
    Ok(planned)
}

/// The most keys the guards of a nested transaction's compares over ranges may name:
/// each is a compare of the flat transaction, which holds at most `MAX_TXN_OPS`.
const MAX_GUARDED_KEYS: usize = crate::kv::MAX_TXN_OPS / 2;

/// Adds the compares that keep `compare`'s keys as `choosing.state` has them: one
/// key's `mod_revision` (0: still absent); over a range, each key's in it (a delete
/// changes no other key) and no key of the range written after the state's revision
/// (a put, including a new key's, gets a later `mod_revision`).
fn guard(choosing: &mut Chosen<'_>, compare: &Compare) -> Result<(), Status> {
    let unchanged = |key: &Bytes, mod_revision: u64| Compare {
        key: key.clone(),
        span: CompareSpan::Key,
        target: CompareTarget::ModRevision(mod_revision),
        op: CompareOp::Eq,
    };
    match &compare.span {
        CompareSpan::Key => {
            let current = choosing.state.get(&compare.key).map_or(0, |value| value.mod_revision);
            choosing.guards.push(unchanged(&compare.key, current));
        }
        CompareSpan::Range(end) => {
            for (key, value) in choosing.state.range(&compare.key, end.as_deref()) {
                if choosing.guards.len() >= MAX_GUARDED_KEYS {
                    return Err(Status::invalid_argument(format!(
                        "a nested transaction's compares over ranges may hold at most {MAX_GUARDED_KEYS} keys"
                    )));
                }
                choosing.guards.push(unchanged(key, value.mod_revision));
            }
            choosing.guards.push(Compare {
                key: compare.key.clone(),
                span: compare.span.clone(),
                target: CompareTarget::ModRevision(choosing.state.revision() + 1),
                op: CompareOp::Less,
            });
        }
    }
    Ok(())
}

/// The status message `plan_ops` stops a flat plan with when it meets a nested
/// transaction.
const NESTED: &str = "a nested transaction";

/// A transaction without nested ones, as ours: the state machine picks the branch.
/// `Err(Aborted(NESTED))` if it nests.
fn plan(request: &TxnRequest) -> Result<TxnPlan, Status> {
    let compare = request.compare.iter().map(compare_of).collect::<Result<Vec<_>, _>>()?;
    let (mut success_ops, mut failure_ops) = (Vec::new(), Vec::new());
    let success = plan_ops(&request.success, &mut success_ops, &mut None, 1)?;
    let failure = plan_ops(&request.failure, &mut failure_ops, &mut None, 1)?;
    Ok(TxnPlan { txn: Txn { compare, success: success_ops, failure: failure_ops }, success, failure })
}

/// A nested transaction's plan: the flat transaction, whether the top level's compares
/// held, and the chosen ops by level.
type NestedPlan = (Txn, bool, Vec<(Planned, usize)>);

/// A transaction with nested ones, planned on `state`: etcd decides every compare of
/// the tree on the state before the transaction, so the path through it is chosen
/// here, and the flat transaction of the chosen ops runs only if every compared key
/// is as it was read (its `mod_revision` unchanged; 0: still absent). Then the state
/// machine's answer is the one etcd's would be; otherwise the caller plans again.
/// Returns the flat transaction (compares: the guards; success: the chosen ops) and
/// the top level's choice.
fn plan_nested(state: &StateMachine, request: &TxnRequest) -> Result<NestedPlan, Status> {
    let mut chosen = Some(Chosen { state, guards: Vec::new() });
    let nested = RequestOp { request: Some(request_op::Request::RequestTxn(request.clone())) };
    let mut ops = Vec::new();
    let mut planned = plan_ops(std::slice::from_ref(&nested), &mut ops, &mut chosen, 0)?;
    let Some((Planned::Txn { succeeded, ops: planned_ops }, _)) = planned.pop() else {
        return Err(Status::internal("a nested plan without its transaction"));
    };
    let mut guards = chosen.map(|chosen| chosen.guards).unwrap_or_default();
    // The same key may be guarded twice (two compares of it, or a compare of it and a
    // range holding it): equal guards are adjacent once sorted by key and span.
    guards.sort_by_key(|guard| {
        let span = match &guard.span {
            CompareSpan::Key => None,
            CompareSpan::Range(end) => Some(end.clone()),
        };
        (guard.key.clone(), span)
    });
    guards.dedup();
    Ok((Txn { compare: guards, success: ops, failure: Vec::new() }, succeeded, planned_ops))
}

/// Every compare and op of a tree, both branches at every level: what a token must
/// allow (as etcd checks the whole request), and the size the tree may have.
fn whole_tree(request: &TxnRequest, txn: &mut Txn, depth: usize) -> Result<(), Status> {
    if depth > MAX_TXN_DEPTH {
        return Err(invalid(format!("transactions nest at most {MAX_TXN_DEPTH} deep")));
    }
    for compare in &request.compare {
        txn.compare.push(compare_of(compare)?);
    }
    for op in request.success.iter().chain(&request.failure) {
        match &op.request {
            Some(request_op::Request::RequestTxn(nested)) => whole_tree(nested, txn, depth + 1)?,
            _ => {
                plan_ops(std::slice::from_ref(op), &mut txn.success, &mut None, depth)?;
            }
        }
    }
    if txn.compare.len() + txn.success.len() > MAX_TXN_TREE_OPS * 2 {
        return Err(invalid("etcdserver: too many operations in txn request"));
    }
    Ok(())
}

fn pairs_of(response: &Answer) -> Vec<KeyValue> {
    match response {
        Answer::Get(pair) => pair.iter().cloned().collect(),
        Answer::Range { items, .. } => items.clone(),
        _ => Vec::new(),
    }
}

fn deleted_of(response: &Answer) -> i64 {
    match response {
        Answer::Deleted { count } => to_i64(*count),
        _ => 0,
    }
}

impl Front {
    fn needs_of(txn: &Txn) -> Vec<Need<'_>> {
        crate::server::api::txn::needs(txn)
    }

    async fn run_txn(&self, txn: Txn) -> Result<(u64, std::sync::Arc<TxnOutcome>), Status> {
        if let Some(key) = txn.key_written_twice() {
            let _ = key;
            return Err(Status::invalid_argument("etcdserver: duplicate key given in txn request"));
        }
        let applied = self.api.write(Command::Txn(txn)).await.map_err(|e| e.grpc_status())?;
        match applied.outcome {
            Outcome::Txn(outcome) => Ok((applied.index, outcome)),
            Outcome::LeaseNotFound { id } => Err(ApiError::LeaseNotFound(id).grpc_status()),
            other => Err(ApiError::Internal(format!("a transaction applied as {other:?}")).grpc_status()),
        }
    }

    fn range_response(&self, request: &RangeRequest, pairs: Vec<KeyValue>, revision: u64) -> RangeResponse {
        let (kvs, more, count) = shape(request, pairs);
        RangeResponse { header: self.header(revision), kvs, more, count }
    }

    fn txn_response(&self, planned: &[(Planned, usize)], outcome: &TxnOutcome, revision: u64) -> TxnResponse {
        let responses = self.txn_responses(planned, outcome, revision);
        TxnResponse { header: self.header(revision), succeeded: outcome.succeeded, responses }
    }

    /// The responses of one level of a (possibly nested) transaction's chosen ops.
    fn txn_responses(
        &self,
        planned: &[(Planned, usize)],
        outcome: &TxnOutcome,
        revision: u64,
    ) -> Vec<ResponseOp> {
        // etcd's responses inside a transaction carry the revision alone in their header.
        let inner = Some(ResponseHeader { revision: to_i64(revision), ..Default::default() });
        let answer = |at: usize| &outcome.responses[at];
        planned
            .iter()
            .map(|(planned, at)| {
                let response = match planned {
                    Planned::Range(request) => response_op::Response::ResponseRange(RangeResponse {
                        header: inner,
                        ..self.range_response(request, pairs_of(answer(*at)), revision)
                    }),
                    Planned::Put { prev } => response_op::Response::ResponsePut(PutResponse {
                        header: inner,
                        prev_kv: prev
                            .and_then(|at| pairs_of(answer(at)).first().map(|p| key_value(p, false))),
                    }),
                    Planned::Delete { prev } => {
                        response_op::Response::ResponseDeleteRange(DeleteRangeResponse {
                            header: inner,
                            deleted: deleted_of(answer(*at)),
                            prev_kvs: prev.map_or_else(Vec::new, |at| {
                                pairs_of(answer(at)).iter().map(|p| key_value(p, false)).collect()
                            }),
                        })
                    }
                    // etcd 3.4 leaves a nested transaction's header empty.
                    Planned::Txn { succeeded, ops } => response_op::Response::ResponseTxn(TxnResponse {
                        header: Some(ResponseHeader::default()),
                        succeeded: *succeeded,
                        responses: self.txn_responses(ops, outcome, revision),
                    }),
                };
                ResponseOp { response: Some(response) }
            })
            .collect()
    }
}

#[tonic::async_trait]
impl Kv for Front {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let range = KeyRange::of(&request.get_ref().key, &request.get_ref().range_end);
        self.check(&request, &[range.need(Access::Read)])?;
        let request = request.into_inner();
        check_range_request(&request)?;
        if !request.serializable {
            self.api.read_barrier("").await.map_err(|e| e.grpc_status())?;
        }
        // An O(1) copy: read without holding the lock the driver applies under.
        let state = self.api.node.shared.kv.read().expect("kv lock").clone();
        let pairs = range_at(&state, &range, request.revision)?;
        Ok(Response::new(self.range_response(&request, pairs, state.revision())))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.check(&request, &[Need::Key(&request.get_ref().key, Access::Write)])?;
        let mut put = request.into_inner();
        let key = Bytes::from(std::mem::take(&mut put.key));
        let lease = put.lease as u64;
        if put.ignore_value || put.ignore_lease {
            return self.put_ignoring(key, Bytes::from(put.value.clone()), lease, &put).await;
        }
        if !put.prev_kv {
            let command = Command::Put { key, value: put.value.into(), condition: Condition::None, lease };
            let applied = self.api.write(command).await.map_err(|e| e.grpc_status())?;
            return match applied.outcome {
                Outcome::Written { revision, .. } => {
                    Ok(Response::new(PutResponse { header: self.header(revision), prev_kv: None }))
                }
                Outcome::LeaseNotFound { id } => Err(ApiError::LeaseNotFound(id).grpc_status()),
                other => Err(ApiError::Internal(format!("a put applied as {other:?}")).grpc_status()),
            };
        }
        let txn = Txn {
            compare: Vec::new(),
            success: vec![
                TxnOp::GetKey { key: key.clone() },
                TxnOp::Put { key, value: put.value.into(), lease },
            ],
            failure: Vec::new(),
        };
        let (revision, outcome) = self.run_txn(txn).await?;
        let prev_kv = pairs_of(&outcome.responses[0]).first().map(|pair| key_value(pair, false));
        Ok(Response::new(PutResponse { header: self.header(revision), prev_kv }))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let range = KeyRange::of(&request.get_ref().key, &request.get_ref().range_end);
        self.check(&request, &[range.need(Access::Write)])?;
        let mut ops = Vec::new();
        if request.get_ref().prev_kv {
            ops.push(range.get_op());
        }
        ops.push(range.delete_op());
        let txn = Txn { compare: Vec::new(), success: ops, failure: Vec::new() };
        let (revision, outcome) = self.run_txn(txn).await?;
        let deleted = deleted_of(outcome.responses.last().expect("the delete's response"));
        let prev_kvs = if request.get_ref().prev_kv {
            pairs_of(&outcome.responses[0]).iter().map(|pair| key_value(pair, false)).collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(DeleteRangeResponse { header: self.header(revision), deleted, prev_kvs }))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let plan = match plan(request.get_ref()) {
            Err(status) if status.code() == tonic::Code::Aborted && status.message() == NESTED => {
                let mut whole = Txn::default();
                whole_tree(request.get_ref(), &mut whole, 1)?;
                self.check(&request, &Self::needs_of(&whole))?;
                return self.nested_txn(request.get_ref()).await;
            }
            plan => plan?,
        };
        self.check(&request, &Self::needs_of(&plan.txn))?;
        let (revision, outcome) = self.run_txn(plan.txn.clone()).await?;
        let planned = if outcome.succeeded { &plan.success } else { &plan.failure };
        Ok(Response::new(self.txn_response(planned, &outcome, revision)))
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        self.check(&request, &[Need::Prefix(&[], Access::Write)])?;
        let revision = u64::try_from(request.get_ref().revision).unwrap_or(0);
        self.api.read_barrier("").await.map_err(|e| e.grpc_status())?;
        let (current, compacted) = {
            let kv = self.api.node.shared.kv.read().expect("kv lock");
            (kv.revision(), kv.history().compact_revision())
        };
        if revision > current {
            return Err(Status::out_of_range("etcdserver: mvcc: required revision is a future revision"));
        }
        if revision <= compacted {
            return Err(ApiError::Compacted { compact_revision: compacted }.grpc_status());
        }
        let applied = self.api.write(Command::Compact { revision }).await.map_err(|e| e.grpc_status())?;
        Ok(Response::new(CompactionResponse { header: self.header(applied.index) }))
    }
}

impl Front {
    /// A transaction with nested ones (`plan_nested`): planned on a linearizable read
    /// of the state, run if no compared key changed meanwhile, else planned again.
    async fn nested_txn(&self, request: &TxnRequest) -> Result<Response<TxnResponse>, Status> {
        for _ in 0..IGNORE_RETRIES {
            self.api.read_barrier("").await.map_err(|e| e.grpc_status())?;
            let state = self.api.node.shared.kv.read().expect("kv lock").clone();
            let (txn, succeeded, planned) = plan_nested(&state, request)?;
            let (revision, outcome) = self.run_txn(txn).await?;
            if outcome.succeeded {
                let responses = self.txn_responses(&planned, &outcome, revision);
                return Ok(Response::new(TxnResponse {
                    header: self.header(revision),
                    succeeded,
                    responses,
                }));
            }
        }
        Err(Status::aborted("the keys a nested transaction compares kept changing: retry"))
    }

    /// A put that keeps the key's value (`ignore_value`) or lease (`ignore_lease`): read,
    /// then write with a compare on the `mod_revision` read, again if it changed.
    async fn put_ignoring(
        &self,
        key: Bytes,
        value: Bytes,
        lease: u64,
        put: &PutRequest,
    ) -> Result<Response<PutResponse>, Status> {
        if put.ignore_value && !value.is_empty() {
            return Err(Status::invalid_argument("etcdserver: value is provided"));
        }
        if put.ignore_lease && lease != 0 {
            return Err(Status::invalid_argument("etcdserver: lease is provided"));
        }
        for _ in 0..IGNORE_RETRIES {
            self.api.read_barrier("").await.map_err(|e| e.grpc_status())?;
            let current = self.api.node.shared.kv.read().expect("kv lock").get(&key).cloned();
            let Some(current) = current else {
                return Err(Status::invalid_argument("etcdserver: key not found"));
            };
            let value = if put.ignore_value { current.data.clone() } else { value.clone() };
            let lease = if put.ignore_lease { current.lease } else { lease };
            let txn = Txn {
                compare: vec![Compare {
                    span: CompareSpan::Key,
                    key: key.clone(),
                    target: CompareTarget::ModRevision(current.mod_revision),
                    op: CompareOp::Eq,
                }],
                success: vec![TxnOp::Put { key: key.clone(), value, lease }],
                failure: Vec::new(),
            };
            let (revision, outcome) = self.run_txn(txn).await?;
            if outcome.succeeded {
                let prev_kv =
                    put.prev_kv.then(|| key_value(&KeyValue { key: key.clone(), value: current }, false));
                return Ok(Response::new(PutResponse { header: self.header(revision), prev_kv }));
            }
        }
        Err(Status::aborted("the key kept changing under a put with ignore_value or ignore_lease: retry"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(writes: &[(&str, &str)], deletes_after: &[&str]) -> StateMachine {
        let mut state = StateMachine::new();
        let mut index = 0;
        for (key, value) in writes {
            index += 1;
            state.apply(index, &Command::put(key.as_bytes().to_vec(), value.as_bytes().to_vec()));
        }
        for key in deletes_after {
            index += 1;
            state.apply(index, &Command::delete(key.as_bytes().to_vec()));
        }
        state
    }

    fn keys(pairs: &[KeyValue]) -> Vec<String> {
        pairs
            .iter()
            .map(|pair| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(&pair.key),
                    String::from_utf8_lossy(&pair.value.data)
                )
            })
            .collect()
    }

    #[test]
    fn etcd_range_ends_name_one_key_a_range_or_everything_from_the_key() {
        assert_eq!(KeyRange::of(b"a", b""), KeyRange::Key(Bytes::from_static(b"a")));
        assert_eq!(KeyRange::of(b"a", b"\0"), KeyRange::Range(Bytes::from_static(b"a"), None));
        assert_eq!(
            KeyRange::of(b"a", b"b"),
            KeyRange::Range(Bytes::from_static(b"a"), Some(Bytes::from_static(b"b")))
        );
        let state = state_with(&[("a", "1"), ("a/x", "2"), ("b", "3")], &[]);
        assert_eq!(keys(&KeyRange::of(b"a", b"b").read(&state)), ["a=1", "a/x=2"]);
        assert_eq!(keys(&KeyRange::of(b"\0", b"\0").read(&state)), ["a=1", "a/x=2", "b=3"]);
        assert_eq!(keys(&KeyRange::of(b"b", b"a").read(&state)), Vec::<String>::new());
    }

    fn nested(compare_key: &str, equals: &str, put_key: &str) -> TxnRequest {
        use super::super::proto::etcdserverpb::Compare as EtcdCompare;
        let compare = EtcdCompare {
            key: compare_key.as_bytes().to_vec(),
            target: compare::CompareTarget::Value as i32,
            result: compare::CompareResult::Equal as i32,
            target_union: Some(compare::TargetUnion::Value(equals.as_bytes().to_vec())),
            ..Default::default()
        };
        nested_with(compare, put_key)
    }

    /// A transaction whose one op is a nested one: `compare`, then a put of `put_key`
    /// on success or of `failed` on failure.
    fn nested_with(compare: super::super::proto::etcdserverpb::Compare, put_key: &str) -> TxnRequest {
        use super::super::proto::etcdserverpb::PutRequest;
        let put = |key: &str| RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.as_bytes().to_vec(),
                value: b"x".to_vec(),
                ..Default::default()
            })),
        };
        let inner =
            TxnRequest { compare: vec![compare], success: vec![put(put_key)], failure: vec![put("failed")] };
        TxnRequest {
            compare: Vec::new(),
            success: vec![RequestOp { request: Some(request_op::Request::RequestTxn(inner)) }],
            failure: Vec::new(),
        }
    }

    // A nested transaction's path is chosen on the state read, so the flat transaction
    // must not run once a key compared on the way has changed.
    #[test]
    fn a_nested_transactions_path_holds_only_while_its_compared_keys_are_unchanged() {
        let state = state_with(&[("a", "1")], &[]);
        let (txn, succeeded, planned) = plan_nested(&state, &nested("a", "1", "b")).unwrap();
        assert!(succeeded);
        assert!(matches!(&planned[..], [(Planned::Txn { succeeded: true, ops }, _)] if ops.len() == 1));
        assert_eq!(txn.success, vec![TxnOp::Put { key: "b".into(), value: "x".into(), lease: 0 }]);
        // Unchanged: it runs.
        let mut same = state.clone();
        let index = same.applied_index() + 1;
        same.apply(index, &Command::Txn(txn.clone()));
        assert!(same.get(b"b").is_some());
        // `a` changed (or went and came back) since: the guards fail, nothing is written.
        for change in [Command::put("a", "2"), Command::put("a", "1"), Command::delete("a")] {
            let mut changed = state.clone();
            let index = changed.applied_index() + 1;
            changed.apply(index, &change);
            changed.apply(index + 1, &Command::Txn(txn.clone()));
            assert!(changed.get(b"b").is_none() && changed.get(b"failed").is_none(), "after {change:?}");
        }
        // A compared key that is absent is guarded as absent.
        let (txn, _, planned) = plan_nested(&state, &nested("missing", "1", "b")).unwrap();
        let inner_held = matches!(&planned[..], [(Planned::Txn { succeeded: true, .. }, _)]);
        assert!(!inner_held, "an absent key's value compare is false");
        let mut created = state.clone();
        let index = created.applied_index() + 1;
        created.apply(index, &Command::put("missing", "1"));
        created.apply(index + 1, &Command::Txn(txn));
        assert!(created.get(b"failed").is_none(), "the absent key appeared: the path must be chosen again");
    }

    /// `[a/, a0)` compared: every key's create_revision > 0 (false over no keys).
    fn nested_over_prefix_a() -> TxnRequest {
        use super::super::proto::etcdserverpb::Compare as EtcdCompare;
        let compare = EtcdCompare {
            key: b"a/".to_vec(),
            range_end: b"a0".to_vec(),
            target: compare::CompareTarget::Create as i32,
            result: compare::CompareResult::Greater as i32,
            target_union: Some(compare::TargetUnion::CreateRevision(0)),
        };
        nested_with(compare, "b")
    }

    fn applied_after(state: &StateMachine, change: Option<&Command>, txn: &Txn) -> StateMachine {
        let mut state = state.clone();
        let index = state.applied_index() + 1;
        if let Some(change) = change {
            state.apply(index, change);
        }
        state.apply(index + 1, &Command::Txn(txn.clone()));
        state
    }

    // A compare over a range decides on every key in it, so the nested path holds only
    // while no key of the range changed, went away or appeared.
    #[test]
    fn a_nested_compare_over_a_range_holds_only_while_no_key_of_the_range_changed() {
        let state = state_with(&[("a/1", "1"), ("a/2", "2"), ("z", "0")], &[]);
        let (txn, _, planned) = plan_nested(&state, &nested_over_prefix_a()).unwrap();
        assert!(matches!(&planned[..], [(Planned::Txn { succeeded: true, .. }, _)]));
        assert!(applied_after(&state, None, &txn).get(b"b").is_some(), "unchanged: it runs");
        assert!(applied_after(&state, Some(&Command::put("z", "1")), &txn).get(b"b").is_some());
        for change in [Command::put("a/1", "1"), Command::delete("a/2"), Command::put("a/3", "3")] {
            let after = applied_after(&state, Some(&change), &txn);
            assert!(after.get(b"b").is_none() && after.get(b"failed").is_none(), "after {change:?}");
        }
        // Over no keys the compare fails, until a key appears in the range.
        let empty = state_with(&[("z", "0")], &[]);
        let (txn, _, planned) = plan_nested(&empty, &nested_over_prefix_a()).unwrap();
        assert!(matches!(&planned[..], [(Planned::Txn { succeeded: false, .. }, _)]));
        assert!(applied_after(&empty, None, &txn).get(b"failed").is_some());
        let appeared = applied_after(&empty, Some(&Command::put("a/x", "1")), &txn);
        assert!(appeared.get(b"failed").is_none(), "a key appeared in the range: choose again");
    }

    #[test]
    fn a_flat_plan_stops_at_a_nested_transaction_and_trees_are_bounded() {
        let request = nested("a", "1", "b");
        assert_eq!(plan(&request).err().map(|s| s.message().to_owned()).as_deref(), Some(NESTED));
        let mut deep = nested("a", "1", "b");
        for _ in 0..MAX_TXN_DEPTH {
            deep = TxnRequest {
                success: vec![RequestOp { request: Some(request_op::Request::RequestTxn(deep)) }],
                ..Default::default()
            };
        }
        let state = state_with(&[("a", "1")], &[]);
        assert!(plan_nested(&state, &deep).is_err());
        assert!(whole_tree(&deep, &mut Txn::default(), 1).is_err());
    }

    #[test]
    fn a_range_at_a_past_revision_undoes_every_later_change() {
        // Revisions: 1 a=1, 2 b=2, 3 a=3, 4 c=4, 5 delete b.
        let state = state_with(&[("a", "1"), ("b", "2"), ("a", "3"), ("c", "4")], &["b"]);
        let all = KeyRange::of(b"\0", b"\0");
        assert_eq!(keys(&read_at(&state, &all, 1)), ["a=1"]);
        assert_eq!(keys(&read_at(&state, &all, 2)), ["a=1", "b=2"]);
        assert_eq!(keys(&read_at(&state, &all, 3)), ["a=3", "b=2"]);
        assert_eq!(keys(&read_at(&state, &all, 4)), ["a=3", "b=2", "c=4"]);
        assert_eq!(keys(&read_at(&state, &all, 5)), ["a=3", "c=4"]);
        let old_a = read_at(&state, &KeyRange::of(b"a", b""), 2);
        assert_eq!((old_a[0].value.mod_revision, old_a[0].value.version), (1, 1));
    }

    #[test]
    fn limits_sorts_and_filters_apply_after_counting_the_range() {
        let state = state_with(&[("a", "z"), ("b", "y"), ("c", "x")], &[]);
        let pairs = KeyRange::of(b"\0", b"\0").read(&state);
        let request = RangeRequest {
            limit: 2,
            sort_order: range_request::SortOrder::Descend as i32,
            sort_target: range_request::SortTarget::Key as i32,
            ..Default::default()
        };
        let (kvs, more, count) = shape(&request, pairs.clone());
        assert_eq!(
            (kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), more, count),
            (vec![b"c".to_vec(), b"b".to_vec()], true, 3)
        );
        let request = RangeRequest { min_mod_revision: 2, count_only: true, ..Default::default() };
        let (kvs, more, count) = shape(&request, pairs.clone());
        assert_eq!((kvs.len(), more, count), (0, false, 3));
        let request = RangeRequest {
            keys_only: true,
            sort_target: range_request::SortTarget::Value as i32,
            ..Default::default()
        };
        let (kvs, _, _) = shape(&request, pairs);
        assert_eq!(
            kvs.iter().map(|kv| (kv.key.clone(), kv.value.len())).collect::<Vec<_>>(),
            vec![(b"c".to_vec(), 0), (b"b".to_vec(), 0), (b"a".to_vec(), 0)]
        );
    }
}
