//! Transactions, with etcd v3's semantics: compares on keys' current state, then the
//! ops of one branch (`success` if every compare holds, else `failure`), all at one
//! revision (the entry's index).
//!
//! - A compare of a missing key sees `version`, `create_revision`, `mod_revision` and
//!   `lease` 0; a `Value` compare of a missing key is false whatever its op.
//! - A compare over a range (`CompareSpan::Range`, etcd's compare with a `range_end`)
//!   holds when it holds for every key in the range, and over a range without keys as
//!   over one missing key, as etcd's `applyCompare` decides it.
//! - The branch's ops run in order: a get sees the writes of earlier ops of the same
//!   transaction (as etcd's). Every write records its history event at the entry's
//!   revision as it runs, so the events of one transaction are consecutive, in op order,
//!   and share one revision (a watch's atomicity).
//! - A put naming a lease that does not exist fails the whole transaction before any op
//!   runs: nothing changes (`Outcome::LeaseNotFound`, etcd's "lease not found").
//! - The edge refuses a branch that writes a key twice (`Txn::key_written_twice`), but a
//!   forged entry that does still applies deterministically: the last write wins and
//!   the key's version counts once for the revision (`written_value`, as an import).
//!
//! Encoding (inside `Command`'s tag 12; integers little-endian, `bytes` = u32 length
//! then the bytes): u32 compare count, each compare; u32 success op count, each op;
//! u32 failure op count, each op. A compare: key bytes, op byte (0 `==`, 1 `!=`, 2 `<`,
//! 3 `>`; plus 0x10 for a compare over a range), target tag (0 value: bytes;
//! 1 version, 2 create_revision, 3 mod_revision, 4 lease: u64), then for a compare over
//! a range its end. An op: tag (0 put: key bytes, value bytes, u64 lease, 0 for none;
//! 1 delete key: key bytes; 2 delete prefix: prefix bytes; 3 get key: key bytes;
//! 4 get prefix: prefix bytes, u32 limit; 5 delete range: start bytes, end; 6 get
//! range: start bytes, end, u32 limit), where an end is a byte 0 (none: every key from
//! the start on) or 1 followed by its bytes.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::error::DecodeError;
use super::state_machine::{Outcome, StateMachine, Value};
use crate::byte_reader::ByteReader;

/// The most compares plus ops (both branches) the HTTP edge accepts in one transaction.
pub const MAX_TXN_OPS: usize = 128;

/// The smallest encoded compare: an empty key, op, tag and an empty value.
const MIN_COMPARE_BYTES: usize = 10;
/// The smallest encoded op: a tag and an empty key.
const MIN_OP_BYTES: usize = 5;

const OP_EQ: u8 = 0;
const OP_NOT_EQ: u8 = 1;
const OP_LESS: u8 = 2;
const OP_GREATER: u8 = 3;
/// Set in a compare's op byte when the compare is over a range: its end follows the
/// target. A decoder without ranges refuses the byte as an unknown op.
const OP_RANGE_FLAG: u8 = 0x10;

const TARGET_VALUE: u8 = 0;
const TARGET_VERSION: u8 = 1;
const TARGET_CREATE_REVISION: u8 = 2;
const TARGET_MOD_REVISION: u8 = 3;
const TARGET_LEASE: u8 = 4;

const TXN_PUT: u8 = 0;
const TXN_DELETE_KEY: u8 = 1;
const TXN_DELETE_PREFIX: u8 = 2;
const TXN_GET_KEY: u8 = 3;
const TXN_GET_PREFIX: u8 = 4;
const TXN_DELETE_RANGE: u8 = 5;
const TXN_GET_RANGE: u8 = 6;

/// A transaction: if every compare holds, `success` runs, else `failure`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    /// All must hold for `success` to run (none: it runs).
    pub compare: Vec<Compare>,
    /// The ops run when every compare holds, in order.
    pub success: Vec<TxnOp>,
    /// The ops run otherwise, in order.
    pub failure: Vec<TxnOp>,
}

/// One compare: `key`'s `target` field against the target's value, with `op`
/// (the key's field on the left: `Less` holds when the key's is smaller); or, over a
/// range (`span`), every key's in `[key, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    /// The key compared, or the first key of the range.
    pub key: Bytes,
    /// The key alone, or a range from it.
    pub span: CompareSpan,
    /// The field and the value it is compared with.
    pub target: CompareTarget,
    /// How they compare.
    pub op: CompareOp,
}

/// Which keys a compare looks at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CompareSpan {
    /// The compare's key alone.
    #[default]
    Key,
    /// Every key in `[key, end)`; `None`: every key from `key` on (etcd's compare with
    /// a `range_end`). It holds when it holds for every key in the range; over a range
    /// without keys, as over one missing key (so a `Value` compare is false).
    Range(Option<Bytes>),
}

/// What a compare looks at, and the value it compares with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// The value's bytes, in byte order. False for a missing key, whatever the op.
    Value(Bytes),
    /// `Value::version` (0 for a missing key).
    Version(u64),
    /// `Value::create_revision` (0 for a missing key).
    CreateRevision(u64),
    /// `Value::mod_revision` (0 for a missing key).
    ModRevision(u64),
    /// `Value::lease` (0 for a missing key or one without a lease).
    Lease(u64),
}

/// A compare's relation, the key's field on the left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Eq,
    /// `!=`
    NotEq,
    /// `<`
    Less,
    /// `>`
    Greater,
}

impl CompareOp {
    fn holds(self, ordering: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering;
        match self {
            CompareOp::Eq => ordering == Ordering::Equal,
            CompareOp::NotEq => ordering != Ordering::Equal,
            CompareOp::Less => ordering == Ordering::Less,
            CompareOp::Greater => ordering == Ordering::Greater,
        }
    }
}

/// One op of a branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// Sets `key` to `value`, attached to `lease` (0: none), as `Command::Put`.
    Put {
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
        /// The lease, 0 for none.
        lease: u64,
    },
    /// Removes `key` if it exists.
    DeleteKey {
        /// The key.
        key: Bytes,
    },
    /// Removes every key that starts with `prefix`, in key order.
    DeletePrefix {
        /// The prefix (empty: every key).
        prefix: Bytes,
    },
    /// Reads `key`.
    GetKey {
        /// The key.
        key: Bytes,
    },
    /// Reads up to `limit` keys that start with `prefix`, in key order.
    GetPrefix {
        /// The prefix.
        prefix: Bytes,
        /// The most keys answered.
        limit: u32,
    },
    /// Removes every key in `[start, end)` (etcd's DeleteRange), in key order.
    DeleteRange {
        /// The first key of the range.
        start: Bytes,
        /// The key after the range; `None`: every key from `start` on.
        end: Option<Bytes>,
    },
    /// Reads up to `limit` keys in `[start, end)` (etcd's Range), in key order.
    GetRange {
        /// The first key of the range.
        start: Bytes,
        /// The key after the range; `None`: every key from `start` on.
        end: Option<Bytes>,
        /// The most keys answered.
        limit: u32,
    },
}

impl TxnOp {
    /// Whether this op writes `key` (a put of it, or a delete whose key, prefix or
    /// range holds it).
    pub fn writes(&self, key: &[u8]) -> bool {
        match self {
            TxnOp::Put { key: written, .. } | TxnOp::DeleteKey { key: written } => written == key,
            TxnOp::DeletePrefix { prefix } => key.starts_with(prefix),
            TxnOp::DeleteRange { start, end } => in_range(key, start, end.as_deref()),
            TxnOp::GetKey { .. } | TxnOp::GetPrefix { .. } | TxnOp::GetRange { .. } => false,
        }
    }
}

/// A key and its value, as a get answers them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Bytes,
    /// Its value and revisions.
    pub value: Value,
}

/// What one op of the branch taken did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnResponse {
    /// A put wrote its key at `revision` (the transaction's).
    Put {
        /// The transaction's revision.
        revision: u64,
    },
    /// A delete removed `count` keys.
    Deleted {
        /// Keys removed.
        count: u64,
    },
    /// A get of a key: its value, `None` when absent.
    Get(Option<KeyValue>),
    /// A get of a prefix: the keys in order, and whether more were left out by the limit.
    Range {
        /// The keys read.
        items: Vec<KeyValue>,
        /// True when more keys start with the prefix than the limit let through.
        more: bool,
    },
}

/// What a transaction did: which branch ran, and one response per op of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnOutcome {
    /// True when every compare held (`success` ran).
    pub succeeded: bool,
    /// One per op of the branch taken, in order.
    pub responses: Vec<TxnResponse>,
}

impl Txn {
    /// Compares plus the ops of both branches: what `MAX_TXN_OPS` bounds.
    pub fn op_count(&self) -> usize {
        self.compare.len() + self.success.len() + self.failure.len()
    }

    /// A key that one branch writes twice (two puts of it, a put inside a prefix the
    /// branch deletes, a delete and a put of it, in either order): the edge refuses such
    /// a transaction, as etcd does. Two deletes that overlap are allowed (the second
    /// finds nothing). Quadratic in the branch's writes, at most `MAX_TXN_OPS`.
    pub fn key_written_twice(&self) -> Option<Bytes> {
        [&self.success, &self.failure].into_iter().find_map(|ops| {
            let puts: Vec<&Bytes> = ops
                .iter()
                .filter_map(|op| match op {
                    TxnOp::Put { key, .. } => Some(key),
                    _ => None,
                })
                .collect();
            for (i, put) in puts.iter().enumerate() {
                if puts[i + 1..].contains(put) {
                    return Some((*put).clone());
                }
            }
            ops.iter().find_map(|op| {
                let deletes = |key: &Bytes| !matches!(op, TxnOp::Put { .. }) && op.writes(key);
                puts.iter().find(|key| deletes(key)).map(|key| (*key).clone())
            })
        })
    }

    pub(super) fn encode_into(&self, out: &mut BytesMut) {
        out.put_u32_le(u32_len(self.compare.len()));
        for compare in &self.compare {
            put_bytes(out, &compare.key);
            let op = match compare.op {
                CompareOp::Eq => OP_EQ,
                CompareOp::NotEq => OP_NOT_EQ,
                CompareOp::Less => OP_LESS,
                CompareOp::Greater => OP_GREATER,
            };
            let flag = match compare.span {
                CompareSpan::Key => 0,
                CompareSpan::Range(_) => OP_RANGE_FLAG,
            };
            out.put_u8(op | flag);
            match &compare.target {
                CompareTarget::Value(value) => {
                    out.put_u8(TARGET_VALUE);
                    put_bytes(out, value);
                }
                CompareTarget::Version(n) => put_target(out, TARGET_VERSION, *n),
                CompareTarget::CreateRevision(n) => put_target(out, TARGET_CREATE_REVISION, *n),
                CompareTarget::ModRevision(n) => put_target(out, TARGET_MOD_REVISION, *n),
                CompareTarget::Lease(n) => put_target(out, TARGET_LEASE, *n),
            }
            if let CompareSpan::Range(end) = &compare.span {
                put_end(out, end.as_deref());
            }
        }
        for ops in [&self.success, &self.failure] {
            out.put_u32_le(u32_len(ops.len()));
            for op in ops {
                match op {
                    TxnOp::Put { key, value, lease } => {
                        out.put_u8(TXN_PUT);
                        put_bytes(out, key);
                        put_bytes(out, value);
                        out.put_u64_le(*lease);
                    }
                    TxnOp::DeleteKey { key } => {
                        out.put_u8(TXN_DELETE_KEY);
                        put_bytes(out, key);
                    }
                    TxnOp::DeletePrefix { prefix } => {
                        out.put_u8(TXN_DELETE_PREFIX);
                        put_bytes(out, prefix);
                    }
                    TxnOp::GetKey { key } => {
                        out.put_u8(TXN_GET_KEY);
                        put_bytes(out, key);
                    }
                    TxnOp::GetPrefix { prefix, limit } => {
                        out.put_u8(TXN_GET_PREFIX);
                        put_bytes(out, prefix);
                        out.put_u32_le(*limit);
                    }
                    TxnOp::DeleteRange { start, end } => {
                        out.put_u8(TXN_DELETE_RANGE);
                        put_bytes(out, start);
                        put_end(out, end.as_deref());
                    }
                    TxnOp::GetRange { start, end, limit } => {
                        out.put_u8(TXN_GET_RANGE);
                        put_bytes(out, start);
                        put_end(out, end.as_deref());
                        out.put_u32_le(*limit);
                    }
                }
            }
        }
    }

    pub(super) fn encoded_len(&self) -> usize {
        let compares: usize = self
            .compare
            .iter()
            .map(|compare| {
                4 + compare.key.len()
                    + 2
                    + match &compare.target {
                        CompareTarget::Value(value) => 4 + value.len(),
                        _ => 8,
                    }
                    + match &compare.span {
                        CompareSpan::Key => 0,
                        CompareSpan::Range(end) => end_len(end.as_deref()),
                    }
            })
            .sum();
        let ops: usize = self
            .success
            .iter()
            .chain(&self.failure)
            .map(|op| match op {
                TxnOp::Put { key, value, .. } => 1 + 8 + key.len() + value.len() + 8,
                TxnOp::DeleteKey { key } | TxnOp::DeletePrefix { prefix: key } | TxnOp::GetKey { key } => {
                    1 + 4 + key.len()
                }
                TxnOp::GetPrefix { prefix, .. } => 1 + 4 + prefix.len() + 4,
                TxnOp::DeleteRange { start, end } => 1 + 4 + start.len() + end_len(end.as_deref()),
                TxnOp::GetRange { start, end, .. } => 1 + 4 + start.len() + end_len(end.as_deref()) + 4,
            })
            .sum();
        12 + compares + ops
    }

    /// Decodes the body of a tag-12 command, keys and values sliced from `data`.
    pub(super) fn decode(data: &Bytes, reader: &mut ByteReader<'_>) -> Result<Txn, DecodeError> {
        let count = read_count(reader, MIN_COMPARE_BYTES)?;
        let mut compare = Vec::with_capacity(count);
        for _ in 0..count {
            let key = data.slice_ref(read_bytes(reader)?);
            let op_offset = reader.offset();
            let tag = reader.u8()?;
            let op = match tag & !OP_RANGE_FLAG {
                OP_EQ => CompareOp::Eq,
                OP_NOT_EQ => CompareOp::NotEq,
                OP_LESS => CompareOp::Less,
                OP_GREATER => CompareOp::Greater,
                _ => return Err(DecodeError::UnknownTag { offset: op_offset, what: "compare op", tag }),
            };
            let target_offset = reader.offset();
            let target = match reader.u8()? {
                TARGET_VALUE => CompareTarget::Value(data.slice_ref(read_bytes(reader)?)),
                TARGET_VERSION => CompareTarget::Version(reader.u64()?),
                TARGET_CREATE_REVISION => CompareTarget::CreateRevision(reader.u64()?),
                TARGET_MOD_REVISION => CompareTarget::ModRevision(reader.u64()?),
                TARGET_LEASE => CompareTarget::Lease(reader.u64()?),
                tag => {
                    return Err(DecodeError::UnknownTag {
                        offset: target_offset,
                        what: "compare target",
                        tag,
                    })
                }
            };
            let span = if tag & OP_RANGE_FLAG == 0 {
                CompareSpan::Key
            } else {
                CompareSpan::Range(read_end(data, reader)?)
            };
            compare.push(Compare { key, span, target, op });
        }
        let success = decode_ops(data, reader)?;
        let failure = decode_ops(data, reader)?;
        Ok(Txn { compare, success, failure })
    }
}

fn decode_ops(data: &Bytes, reader: &mut ByteReader<'_>) -> Result<Vec<TxnOp>, DecodeError> {
    let count = read_count(reader, MIN_OP_BYTES)?;
    let mut ops = Vec::with_capacity(count);
    for _ in 0..count {
        let tag_offset = reader.offset();
        let op = match reader.u8()? {
            TXN_PUT => {
                let key = data.slice_ref(read_bytes(reader)?);
                let value = data.slice_ref(read_bytes(reader)?);
                TxnOp::Put { key, value, lease: reader.u64()? }
            }
            TXN_DELETE_KEY => TxnOp::DeleteKey { key: data.slice_ref(read_bytes(reader)?) },
            TXN_DELETE_PREFIX => TxnOp::DeletePrefix { prefix: data.slice_ref(read_bytes(reader)?) },
            TXN_GET_KEY => TxnOp::GetKey { key: data.slice_ref(read_bytes(reader)?) },
            TXN_GET_PREFIX => {
                let prefix = data.slice_ref(read_bytes(reader)?);
                TxnOp::GetPrefix { prefix, limit: reader.u32()? }
            }
            TXN_DELETE_RANGE => {
                let start = data.slice_ref(read_bytes(reader)?);
                TxnOp::DeleteRange { start, end: read_end(data, reader)? }
            }
            TXN_GET_RANGE => {
                let start = data.slice_ref(read_bytes(reader)?);
                let end = read_end(data, reader)?;
                TxnOp::GetRange { start, end, limit: reader.u32()? }
            }
            tag => return Err(DecodeError::UnknownTag { offset: tag_offset, what: "transaction op", tag }),
        };
        ops.push(op);
    }
    Ok(ops)
}

/// A u32 count of records at least `min_bytes` each, refused when the rest of the input
/// could not hold them (so nothing is allocated for a forged count).
fn read_count(reader: &mut ByteReader<'_>, min_bytes: usize) -> Result<usize, DecodeError> {
    let offset = reader.offset();
    let count = reader.u32()?;
    let available = reader.remaining();
    if count as usize > available / min_bytes {
        return Err(DecodeError::CountTooLarge { offset, count: count.into(), available });
    }
    Ok(count as usize)
}

fn u32_len(len: usize) -> u32 {
    u32::try_from(len).unwrap_or_else(|_| panic!("transaction field of {len} bytes exceeds u32::MAX"))
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32_le(u32_len(bytes.len()));
    out.put_slice(bytes);
}

fn put_end(out: &mut BytesMut, end: Option<&[u8]>) {
    match end {
        None => out.put_u8(0),
        Some(end) => {
            out.put_u8(1);
            put_bytes(out, end);
        }
    }
}

fn end_len(end: Option<&[u8]>) -> usize {
    end.map_or(1, |end| 1 + 4 + end.len())
}

fn read_end(data: &Bytes, reader: &mut ByteReader<'_>) -> Result<Option<Bytes>, DecodeError> {
    let offset = reader.offset();
    match reader.u8()? {
        0 => Ok(None),
        1 => Ok(Some(data.slice_ref(read_bytes(reader)?))),
        tag => Err(DecodeError::UnknownTag { offset, what: "range end", tag }),
    }
}

/// Whether `key` is in `[start, end)`, every key from `start` on when `end` is `None`.
pub fn in_range(key: &[u8], start: &[u8], end: Option<&[u8]>) -> bool {
    key >= start && end.is_none_or(|end| key < end)
}

fn put_target(out: &mut BytesMut, tag: u8, value: u64) {
    out.put_u8(tag);
    out.put_u64_le(value);
}

fn read_bytes<'a>(reader: &mut ByteReader<'a>) -> Result<&'a [u8], DecodeError> {
    let len = reader.u32()?;
    Ok(reader.bytes(len.into())?)
}

impl Compare {
    /// Whether this compare holds on `state` as it is: what a transaction's apply
    /// decides by (also the etcd front's, for a nested transaction's path).
    pub fn holds(&self, state: &StateMachine) -> bool {
        compare_holds(state, self)
    }
}

/// Whether `compare` holds on `state` as it is: on its key, or on every key of its
/// range (etcd's `applyCompare`: a range without keys is compared as one missing key).
fn compare_holds(state: &StateMachine, compare: &Compare) -> bool {
    match &compare.span {
        CompareSpan::Key => holds_on(compare, state.get(&compare.key)),
        CompareSpan::Range(end) => {
            let mut keys = state.range(&compare.key, end.as_deref()).peekable();
            if keys.peek().is_none() {
                return holds_on(compare, None);
            }
            keys.all(|(_, value)| holds_on(compare, Some(value)))
        }
    }
}

/// Whether `compare`'s target and op hold on one key's value (`None`: missing).
fn holds_on(compare: &Compare, current: Option<&Value>) -> bool {
    let field = |field: fn(&Value) -> u64| current.map_or(0, field);
    let ordering = match &compare.target {
        CompareTarget::Value(expected) => match current {
            None => return false,
            Some(value) => value.data.as_ref().cmp(expected.as_ref()),
        },
        CompareTarget::Version(expected) => field(|value| value.version).cmp(expected),
        CompareTarget::CreateRevision(expected) => field(|value| value.create_revision).cmp(expected),
        CompareTarget::ModRevision(expected) => field(|value| value.mod_revision).cmp(expected),
        CompareTarget::Lease(expected) => field(|value| value.lease).cmp(expected),
    };
    compare.op.holds(ordering)
}

/// Applies `txn` as the entry at `index` (already `state`'s applied index).
pub(super) fn apply_txn(state: &mut StateMachine, index: u64, txn: &Txn) -> Outcome {
    let succeeded = txn.compare.iter().all(|compare| compare_holds(state, compare));
    let ops = if succeeded { &txn.success } else { &txn.failure };
    // Leases are neither granted nor revoked inside a transaction: checked once, first.
    let missing_lease = ops.iter().find_map(|op| match op {
        TxnOp::Put { lease, .. } if *lease != 0 && state.lease(*lease).is_none() => Some(*lease),
        _ => None,
    });
    if let Some(id) = missing_lease {
        return Outcome::LeaseNotFound { id };
    }
    let responses = run_ops(state, index, ops);
    Outcome::Txn(Arc::new(TxnOutcome { succeeded, responses }))
}

/// Runs `ops` in order at `index`, every lease they name existing.
pub(super) fn run_ops(state: &mut StateMachine, index: u64, ops: &[TxnOp]) -> Vec<TxnResponse> {
    ops.iter()
        .map(|op| match op {
            TxnOp::Put { key, value, lease } => {
                state.write(index, key, value, *lease);
                TxnResponse::Put { revision: index }
            }
            TxnOp::DeleteKey { key } => {
                TxnResponse::Deleted { count: u64::from(state.remove(index, key).is_some()) }
            }
            TxnOp::DeletePrefix { prefix } => {
                let keys: Vec<Bytes> =
                    state.list(prefix, None, usize::MAX).map(|(key, _)| key.clone()).collect();
                for key in &keys {
                    state.remove(index, key);
                }
                TxnResponse::Deleted { count: keys.len() as u64 }
            }
            TxnOp::GetKey { key } => TxnResponse::Get(
                state.get(key).map(|value| KeyValue { key: key.clone(), value: value.clone() }),
            ),
            TxnOp::GetPrefix { prefix, limit } => {
                let limit = *limit as usize;
                let mut listed = state.list(prefix, None, limit.saturating_add(1));
                let items: Vec<KeyValue> = listed
                    .by_ref()
                    .take(limit)
                    .map(|(key, value)| KeyValue { key: key.clone(), value: value.clone() })
                    .collect();
                let more = listed.next().is_some();
                TxnResponse::Range { items, more }
            }
            TxnOp::DeleteRange { start, end } => {
                let keys: Vec<Bytes> =
                    state.range(start, end.as_deref()).map(|(key, _)| key.clone()).collect();
                for key in &keys {
                    state.remove(index, key);
                }
                TxnResponse::Deleted { count: keys.len() as u64 }
            }
            TxnOp::GetRange { start, end, limit } => {
                let limit = *limit as usize;
                let mut listed = state.range(start, end.as_deref());
                let items: Vec<KeyValue> = listed
                    .by_ref()
                    .take(limit)
                    .map(|(key, value)| KeyValue { key: key.clone(), value: value.clone() })
                    .collect();
                let more = listed.next().is_some();
                TxnResponse::Range { items, more }
            }
        })
        .collect()
}

/// The most applying `txn` now could add to `state.approximate_bytes()` (`.0`) and to
/// its map's share (`.1`, the history left out): each branch run on an O(1) copy of
/// `state`, its compares assumed to hold, and the larger growth of the two. Costs what
/// applying costs (a delete of a prefix visits its keys).
pub(super) fn txn_growth_bytes(state: &StateMachine, txn: &Txn) -> (u64, u64) {
    let map_bytes = |state: &StateMachine| state.approximate_bytes() - state.history().approximate_bytes();
    let (before, before_map) = (state.approximate_bytes(), map_bytes(state));
    [&txn.success, &txn.failure]
        .into_iter()
        .filter(|ops| {
            ops.iter().all(|op| match op {
                TxnOp::Put { lease, .. } => *lease == 0 || state.lease(*lease).is_some(),
                _ => true,
            })
        })
        .map(|ops| {
            let mut copy = state.clone();
            let index = copy.applied_index() + 1;
            copy.advance_applied(index);
            run_ops(&mut copy, index, ops);
            (copy.approximate_bytes().saturating_sub(before), map_bytes(&copy).saturating_sub(before_map))
        })
        .fold((0, 0), |(total, map), (t, m)| (total.max(t), map.max(m)))
}
