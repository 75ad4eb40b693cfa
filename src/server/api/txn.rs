//! `POST /v1/txn`: a transaction (`kv::Txn`), with etcd v3's semantics.
//!
//! Body: `{"compare":[{"key","target","op","value"}],"success":[ops],"failure":[ops]}`,
//! `target` one of `value`, `version`, `create_revision`, `mod_revision`, `lease`, `op`
//! one of `==`, `!=`, `<`, `>`; `value` a string for `value` (or `value_base64`), a
//! number for revisions and versions, the 16-hex-digit id for `lease`. An op is
//! `{"op":"put","key","value"|"value_base64","lease"?}`, `{"op":"delete","key"|"prefix"}`
//! or `{"op":"get","key"}` / `{"op":"get","prefix","limit"?}`.
//!
//! Answer: `{"succeeded","revision","responses":[…]}`, one response per op of the branch
//! taken: a put `{"revision"}`, a delete `{"deleted":n}`, a get of a key its item
//! (`key_json`, with `"lease"` when attached to one) or `null`, a get of a prefix
//! `{"items":[…],"more"}`. `X-Mmapd-Revision` is the transaction's revision.
//!
//! Every transaction goes through the log, a read-only one too: it is then
//! linearizable (a consistent multi-key read at one revision) at the cost of an entry.
//! Limits: `MAX_TXN_OPS` compares and ops in all (413), each key and value within the
//! node's limits (413), the whole transaction within `max_txn_bytes` (413); a branch that
//! writes a key twice is refused (400), as etcd refuses it.

use base64::Engine;
use bytes::Bytes;
use hyper::StatusCode;

use super::error::ApiError;
use super::key_json::key_json;
use super::{json, with_revision, Api, HttpResponse, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};
use crate::kv::{
    Command, Compare, CompareOp, CompareSpan, CompareTarget, KeyValue, Outcome, Txn, TxnOp, TxnOutcome,
    TxnResponse, Value, MAX_TXN_OPS,
};
use crate::server::auth::{Access, Need};

/// The route.
pub const PATH: &str = "/v1/txn";

/// The most bytes of keys and values one transaction may carry, encoded: one value of
/// the largest size and, per op, a key of the largest size (so a single put of the
/// largest value always fits, and an entry stays bounded).
pub fn max_txn_bytes(max_key_bytes: usize, max_value_bytes: usize) -> usize {
    max_value_bytes + MAX_TXN_OPS * (max_key_bytes + 64)
}

/// The most bytes of JSON a transaction's body may take: values as base64 or escaped
/// text take more than their bytes.
pub fn max_body_bytes(max_key_bytes: usize, max_value_bytes: usize) -> usize {
    4 * max_txn_bytes(max_key_bytes, max_value_bytes) + 64 * 1024
}

/// Decodes a request body into a transaction. Checks its shape only; the limits are
/// `Api::check_command`'s, for every edge alike.
pub fn parse(body: &[u8]) -> Result<Txn, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the transaction is not JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| ApiError::BadRequest("the transaction must be a JSON object".into()))?;
    if let Some(field) =
        object.keys().find(|field| !matches!(field.as_str(), "compare" | "success" | "failure"))
    {
        return Err(ApiError::BadRequest(format!(
            "unknown field `{field}` in the transaction: it has `compare`, `success` and `failure`"
        )));
    }
    let list = |name: &str| -> Result<Vec<serde_json::Value>, ApiError> {
        match object.get(name) {
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(serde_json::Value::Array(items)) => {
                if items.len() > MAX_TXN_OPS {
                    return Err(too_many(items.len()));
                }
                Ok(items.clone())
            }
            Some(_) => Err(ApiError::BadRequest(format!("`{name}` must be an array"))),
        }
    };
    let compare =
        list("compare")?.iter().enumerate().map(|(i, c)| parse_compare(i, c)).collect::<Result<_, _>>()?;
    let success = list("success")?
        .iter()
        .enumerate()
        .map(|(i, op)| parse_op("success", i, op))
        .collect::<Result<_, _>>()?;
    let failure = list("failure")?
        .iter()
        .enumerate()
        .map(|(i, op)| parse_op("failure", i, op))
        .collect::<Result<_, _>>()?;
    Ok(Txn { compare, success, failure })
}

/// A prefix or a range's bound is at most a key's size (any bytes; empty is allowed).
fn check_bound(api: &Api, what: &'static str, bound: &[u8]) -> Result<(), ApiError> {
    if bound.len() > api.max_key_bytes {
        return Err(ApiError::TooLarge { what, size: bound.len(), limit: api.max_key_bytes });
    }
    Ok(())
}

fn too_many(count: usize) -> ApiError {
    ApiError::TooLarge { what: "transaction (compares and ops)", size: count, limit: MAX_TXN_OPS }
}

fn object_of<'a>(
    what: &str,
    value: &'a serde_json::Value,
) -> Result<&'a serde_json::Map<String, serde_json::Value>, ApiError> {
    value.as_object().ok_or_else(|| ApiError::BadRequest(format!("{what} must be a JSON object")))
}

fn string_field<'a>(
    what: &str,
    object: &'a serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<Option<&'a str>, ApiError> {
    match object.get(field) {
        None => Ok(None),
        Some(serde_json::Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(ApiError::BadRequest(format!("`{field}` of {what} must be a string"))),
    }
}

fn bytes_of(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

/// `"value"` (text) or `"value_base64"`, exactly one.
fn value_of(what: &str, object: &serde_json::Map<String, serde_json::Value>) -> Result<Bytes, ApiError> {
    match (string_field(what, object, "value")?, string_field(what, object, "value_base64")?) {
        (Some(text), None) => Ok(bytes_of(text)),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map(Bytes::from)
            .map_err(|e| ApiError::BadRequest(format!("`value_base64` of {what} is not base64: {e}"))),
        (Some(_), Some(_)) => {
            Err(ApiError::BadRequest(format!("{what} has both `value` and `value_base64`")))
        }
        (None, None) => Err(ApiError::BadRequest(format!("{what} needs `value` (or `value_base64`)"))),
    }
}

/// A lease id as the lease API writes it: 16 hex digits (fewer are taken too), not 0.
pub fn parse_lease_id(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(text, 16).ok().filter(|id| *id != 0)
}

fn parse_compare(i: usize, value: &serde_json::Value) -> Result<Compare, ApiError> {
    let what = format!("compare {i}");
    let object = object_of(&what, value)?;
    let key = string_field(&what, object, "key")?
        .ok_or_else(|| ApiError::BadRequest(format!("{what} needs a `key`")))?;
    let op = match string_field(&what, object, "op")? {
        Some("==") => CompareOp::Eq,
        Some("!=") => CompareOp::NotEq,
        Some("<") => CompareOp::Less,
        Some(">") => CompareOp::Greater,
        _ => return Err(ApiError::BadRequest(format!("`op` of {what} must be one of ==, !=, <, >"))),
    };
    let number = || -> Result<u64, ApiError> {
        object.get("value").and_then(serde_json::Value::as_u64).ok_or_else(|| {
            ApiError::BadRequest(format!("`value` of {what} must be a non-negative integer for its target"))
        })
    };
    let target = match string_field(&what, object, "target")? {
        Some("value") => CompareTarget::Value(value_of(&what, object)?),
        Some("version") => CompareTarget::Version(number()?),
        Some("create_revision") => CompareTarget::CreateRevision(number()?),
        Some("mod_revision") => CompareTarget::ModRevision(number()?),
        Some("lease") => CompareTarget::Lease(match object.get("value") {
            // 0: no lease, as a number or as the id's text.
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(0) => 0,
            Some(serde_json::Value::String(text)) if text.bytes().all(|b| b == b'0') && !text.is_empty() => 0,
            Some(serde_json::Value::String(text)) => parse_lease_id(text).ok_or_else(|| {
                ApiError::BadRequest(format!("`value` of {what} is not a lease id (16 hex digits)"))
            })?,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "`value` of {what} must be a lease id (16 hex digits), or 0 for none"
                )))
            }
        }),
        _ => {
            return Err(ApiError::BadRequest(format!(
                "`target` of {what} must be one of value, version, create_revision, mod_revision, lease"
            )))
        }
    };
    Ok(Compare { span: CompareSpan::Key, key: bytes_of(key), target, op })
}

fn parse_op(branch: &str, i: usize, value: &serde_json::Value) -> Result<TxnOp, ApiError> {
    let what = format!("{branch} op {i}");
    let object = object_of(&what, value)?;
    let key = string_field(&what, object, "key")?;
    let prefix = string_field(&what, object, "prefix")?;
    let one_of = |verb: &str| match (key, prefix) {
        (Some(key), None) => Ok((bytes_of(key), false)),
        (None, Some(prefix)) => Ok((bytes_of(prefix), true)),
        _ => Err(ApiError::BadRequest(format!("a {verb} ({what}) needs either `key` or `prefix`"))),
    };
    match string_field(&what, object, "op")? {
        Some("put") => {
            let key = key.ok_or_else(|| ApiError::BadRequest(format!("a put ({what}) needs a `key`")))?;
            if prefix.is_some() {
                return Err(ApiError::BadRequest(format!("a put ({what}) takes a `key`, not a `prefix`")));
            }
            let lease = match object.get("lease") {
                None | Some(serde_json::Value::Null) => 0,
                Some(serde_json::Value::String(text)) => parse_lease_id(text).ok_or_else(|| {
                    ApiError::BadRequest(format!("`lease` of {what} is not a lease id (16 hex digits)"))
                })?,
                Some(_) => {
                    return Err(ApiError::BadRequest(format!(
                        "`lease` of {what} must be a lease id as a string of 16 hex digits"
                    )))
                }
            };
            Ok(TxnOp::Put { key: bytes_of(key), value: value_of(&what, object)?, lease })
        }
        Some("delete") => Ok(match one_of("delete")? {
            (key, false) => TxnOp::DeleteKey { key },
            (prefix, true) => TxnOp::DeletePrefix { prefix },
        }),
        Some("get") => Ok(match one_of("get")? {
            (key, false) => TxnOp::GetKey { key },
            (prefix, true) => {
                let limit = match object.get("limit") {
                    None | Some(serde_json::Value::Null) => DEFAULT_LIST_LIMIT,
                    Some(limit) => match limit.as_u64() {
                        Some(limit) if (1..=MAX_LIST_LIMIT as u64).contains(&limit) => limit as usize,
                        _ => {
                            return Err(ApiError::BadRequest(format!(
                                "`limit` of {what} must be from 1 to {MAX_LIST_LIMIT}"
                            )))
                        }
                    },
                };
                TxnOp::GetPrefix { prefix, limit: limit as u32 }
            }
        }),
        _ => Err(ApiError::BadRequest(format!("`op` of {what} must be put, delete or get"))),
    }
}

/// Every key and prefix the transaction touches, with the access it needs: read for
/// compares and gets, write for puts and deletes.
pub fn needs(txn: &Txn) -> Vec<Need<'_>> {
    let compares = txn.compare.iter().map(|compare| match &compare.span {
        CompareSpan::Key => Need::Key(&compare.key, Access::Read),
        CompareSpan::Range(end) => Need::Prefix(range_prefix(&compare.key, end.as_deref()), Access::Read),
    });
    let ops = txn.success.iter().chain(&txn.failure).map(|op| match op {
        TxnOp::Put { key, .. } | TxnOp::DeleteKey { key } => Need::Key(key, Access::Write),
        TxnOp::DeletePrefix { prefix } => Need::Prefix(prefix, Access::Write),
        TxnOp::GetKey { key } => Need::Key(key, Access::Read),
        TxnOp::GetPrefix { prefix, .. } => Need::Prefix(prefix, Access::Read),
        TxnOp::DeleteRange { start, end } => Need::Prefix(range_prefix(start, end.as_deref()), Access::Write),
        TxnOp::GetRange { start, end, .. } => Need::Prefix(range_prefix(start, end.as_deref()), Access::Read),
    });
    compares.chain(ops).collect()
}

/// The longest prefix every key of `[start, end)` starts with, the empty prefix (every
/// key) for a range without an end: what a token must grant for the range. Every key
/// of the range lies between `start` and the range's last key, the largest key below
/// `end`, so it shares the prefix those two share (any key between two keys does). The
/// last key below `end` is `end` without its last byte when that byte is 0, else `end`
/// with its last byte one less followed by endless `0xff`: so the range of a prefix
/// (`app/` to `app0`, etcd's `--prefix`) needs the prefix itself, `app/`.
pub fn range_prefix<'a>(start: &'a [u8], end: Option<&[u8]>) -> &'a [u8] {
    let Some((&last, head)) = end.and_then(|end| end.split_last()) else { return &[] };
    let below_end = |index: usize| -> Option<u8> {
        match index.cmp(&head.len()) {
            std::cmp::Ordering::Less => Some(head[index]),
            std::cmp::Ordering::Equal => (last > 0).then(|| last - 1),
            std::cmp::Ordering::Greater => (last > 0).then_some(0xff),
        }
    };
    let common =
        start.iter().enumerate().take_while(|&(index, &byte)| below_end(index) == Some(byte)).count();
    &start[..common]
}

/// The limits every edge applies to a transaction (`Api::check_command`).
pub fn check(api: &Api, txn: &Txn) -> Result<(), ApiError> {
    if txn.op_count() > MAX_TXN_OPS {
        return Err(too_many(txn.op_count()));
    }
    for compare in &txn.compare {
        match &compare.span {
            CompareSpan::Key => api.check_key(&compare.key)?,
            CompareSpan::Range(end) => {
                check_bound(api, "range start", &compare.key)?;
                check_bound(api, "range end", end.as_deref().unwrap_or_default())?;
            }
        }
        if let CompareTarget::Value(value) = &compare.target {
            api.check_value(value)?;
        }
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            TxnOp::Put { key, value, .. } => api.check_key_value(key, value)?,
            TxnOp::DeleteKey { key } | TxnOp::GetKey { key } => api.check_key(key)?,
            // The empty prefix is every key, as a listing's.
            TxnOp::DeletePrefix { prefix } | TxnOp::GetPrefix { prefix, .. } => {
                check_bound(api, "prefix", prefix)?
            }
            TxnOp::DeleteRange { start, end } | TxnOp::GetRange { start, end, .. } => {
                check_bound(api, "range start", start)?;
                check_bound(api, "range end", end.as_deref().unwrap_or_default())?;
            }
        }
    }
    let size: usize = txn
        .compare
        .iter()
        .map(|compare| {
            compare.key.len()
                + match &compare.target {
                    CompareTarget::Value(value) => value.len(),
                    _ => 8,
                }
                + match &compare.span {
                    CompareSpan::Range(Some(end)) => end.len(),
                    _ => 0,
                }
        })
        .chain(txn.success.iter().chain(&txn.failure).map(|op| match op {
            TxnOp::Put { key, value, .. } => key.len() + value.len() + 8,
            TxnOp::DeleteKey { key }
            | TxnOp::DeletePrefix { prefix: key }
            | TxnOp::GetKey { key }
            | TxnOp::GetPrefix { prefix: key, .. } => key.len() + 4,
            TxnOp::DeleteRange { start, end } | TxnOp::GetRange { start, end, .. } => {
                start.len() + end.as_ref().map_or(0, Bytes::len) + 9
            }
        }))
        .sum();
    let limit = max_txn_bytes(api.max_key_bytes, api.max_value_bytes);
    if size > limit {
        return Err(ApiError::TooLarge { what: "transaction (keys and values)", size, limit });
    }
    if let Some(key) = txn.key_written_twice() {
        return Err(ApiError::BadRequest(format!(
            "key {:?} is written twice in one branch of the transaction (two puts, a put and a delete \
             of it, or a put inside a deleted prefix): each key may be written once",
            String::from_utf8_lossy(&key)
        )));
    }
    Ok(())
}

/// `POST /v1/txn` once the body is parsed and authorized: proposes it and answers.
pub async fn serve(api: &Api, txn: Txn) -> Result<HttpResponse, ApiError> {
    let applied = api.write(Command::Txn(txn)).await?;
    match &applied.outcome {
        Outcome::Txn(outcome) => {
            let body = outcome_json(outcome, applied.index);
            Ok(with_revision(json(StatusCode::OK, body), applied.index))
        }
        Outcome::LeaseNotFound { id } => Err(ApiError::LeaseNotFound(*id)),
        other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

/// A key's item in an answer: `key_json`, with `"lease"` when it has one.
fn item_json(item: &KeyValue) -> serde_json::Value {
    let mut json = key_json(&item.key, &item.value);
    if item.value.lease != 0 {
        json["lease"] = format!("{:016x}", item.value.lease).into();
    }
    json
}

/// The answer's body.
pub fn outcome_json(outcome: &TxnOutcome, revision: u64) -> serde_json::Value {
    let responses: Vec<serde_json::Value> = outcome
        .responses
        .iter()
        .map(|response| match response {
            TxnResponse::Put { revision } => serde_json::json!({ "revision": revision }),
            TxnResponse::Deleted { count } => serde_json::json!({ "deleted": count }),
            TxnResponse::Get(None) => serde_json::Value::Null,
            TxnResponse::Get(Some(item)) => item_json(item),
            TxnResponse::Range { items, more } => {
                serde_json::json!({ "items": items.iter().map(item_json).collect::<Vec<_>>(), "more": more })
            }
        })
        .collect();
    serde_json::json!({ "succeeded": outcome.succeeded, "revision": revision, "responses": responses })
}

fn base64_of(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn forwarded_item(item: &KeyValue) -> serde_json::Value {
    let value = &item.value;
    serde_json::json!({
        "key": base64_of(&item.key),
        "value": base64_of(&value.data),
        "create_revision": value.create_revision,
        "mod_revision": value.mod_revision,
        "version": value.version,
        "lease": value.lease,
    })
}

fn forwarded_item_from(json: &serde_json::Value) -> Option<KeyValue> {
    let bytes = |field: &str| {
        base64::engine::general_purpose::STANDARD.decode(json[field].as_str()?).ok().map(Bytes::from)
    };
    Some(KeyValue {
        key: bytes("key")?,
        value: Value {
            data: bytes("value")?,
            create_revision: json["create_revision"].as_u64()?,
            mod_revision: json["mod_revision"].as_u64()?,
            version: json["version"].as_u64()?,
            lease: json["lease"].as_u64()?,
        },
    })
}

/// A transaction's outcome in the leader's answer to a forwarded write: every byte
/// string in base64, every revision a number (`forwarded_from_json` reads it back).
pub fn forwarded_json(outcome: &TxnOutcome) -> serde_json::Value {
    let responses: Vec<serde_json::Value> = outcome
        .responses
        .iter()
        .map(|response| match response {
            TxnResponse::Put { revision } => serde_json::json!({ "put": { "revision": revision } }),
            TxnResponse::Deleted { count } => serde_json::json!({ "deleted": { "count": count } }),
            TxnResponse::Get(item) => serde_json::json!({ "get": item.as_ref().map(forwarded_item) }),
            TxnResponse::Range { items, more } => serde_json::json!({
                "range": { "items": items.iter().map(forwarded_item).collect::<Vec<_>>(), "more": more }
            }),
        })
        .collect();
    serde_json::json!({ "succeeded": outcome.succeeded, "responses": responses })
}

/// Reads `forwarded_json` back; `None` for anything else.
pub fn forwarded_from_json(json: &serde_json::Value) -> Option<TxnOutcome> {
    let succeeded = json["succeeded"].as_bool()?;
    let responses = json["responses"]
        .as_array()?
        .iter()
        .map(|response| {
            if let Some(put) = response.get("put") {
                Some(TxnResponse::Put { revision: put["revision"].as_u64()? })
            } else if let Some(deleted) = response.get("deleted") {
                Some(TxnResponse::Deleted { count: deleted["count"].as_u64()? })
            } else if let Some(get) = response.get("get") {
                Some(TxnResponse::Get(if get.is_null() { None } else { Some(forwarded_item_from(get)?) }))
            } else if let Some(range) = response.get("range") {
                let items =
                    range["items"].as_array()?.iter().map(forwarded_item_from).collect::<Option<_>>()?;
                Some(TxnResponse::Range { items, more: range["more"].as_bool()? })
            } else {
                None
            }
        })
        .collect::<Option<_>>()?;
    Some(TxnOutcome { succeeded, responses })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_needs_the_longest_prefix_all_its_keys_share() {
        let prefix = |start: &'static [u8], end: Option<&'static [u8]>| range_prefix(start, end);
        // etcd's --prefix: the range of a prefix needs the prefix itself.
        assert_eq!(prefix(b"app/", Some(b"app0")), b"app/");
        assert_eq!(prefix(b"a\xff", Some(b"b")), b"a\xff");
        assert_eq!(prefix(b"a/b", Some(b"a/d")), b"a/");
        assert_eq!(prefix(b"a", Some(b"b")), b"a");
        // An end with a last 0 byte: the key before it is the last of the range.
        assert_eq!(prefix(b"ab", Some(b"ab\0")), b"ab");
        assert_eq!(prefix(b"ab", Some(b"ac\0")), b"a");
        // No end, an empty one, an inverted range: every key.
        assert_eq!(prefix(b"app/", None), b"");
        assert_eq!(prefix(b"app/", Some(b"")), b"");
        assert_eq!(prefix(b"b", Some(b"a")), b"");
    }

    #[test]
    fn a_transaction_body_parses_into_its_compares_and_ops() {
        let body = br#"{"compare":[{"key":"a","target":"mod_revision","op":"==","value":0},
            {"key":"b","target":"value","op":">","value_base64":"/w=="},
            {"key":"c","target":"lease","op":"!=","value":"00000000000000ff"}],
            "success":[{"op":"put","key":"a","value":"1","lease":"000000000000abcd"},
                {"op":"delete","prefix":"p/"},{"op":"get","key":"a"},{"op":"get","prefix":"q","limit":3}],
            "failure":[{"op":"delete","key":"x"},{"op":"get","prefix":""}]}"#;
        let txn = parse(body).unwrap();
        assert_eq!(
            txn.compare,
            vec![
                Compare {
                    span: CompareSpan::Key,
                    key: "a".into(),
                    target: CompareTarget::ModRevision(0),
                    op: CompareOp::Eq
                },
                Compare {
                    span: CompareSpan::Key,
                    key: "b".into(),
                    target: CompareTarget::Value(vec![0xff].into()),
                    op: CompareOp::Greater
                },
                Compare {
                    span: CompareSpan::Key,
                    key: "c".into(),
                    target: CompareTarget::Lease(0xff),
                    op: CompareOp::NotEq
                },
            ]
        );
        assert_eq!(
            txn.success,
            vec![
                TxnOp::Put { key: "a".into(), value: "1".into(), lease: 0xabcd },
                TxnOp::DeletePrefix { prefix: "p/".into() },
                TxnOp::GetKey { key: "a".into() },
                TxnOp::GetPrefix { prefix: "q".into(), limit: 3 },
            ]
        );
        assert_eq!(
            txn.failure,
            vec![
                TxnOp::DeleteKey { key: "x".into() },
                TxnOp::GetPrefix { prefix: "".into(), limit: DEFAULT_LIST_LIMIT as u32 },
            ]
        );
    }

    #[test]
    fn a_malformed_transaction_body_is_refused_with_a_sentence() {
        for (body, expected) in [
            (&br#"[1]"#[..], "must be a JSON object"),
            (
                br#"{"compare":[{"key":"a","target":"version","op":"=","value":1}]}"#,
                "must be one of ==, !=, <, >",
            ),
            (
                br#"{"compare":[{"key":"a","target":"version","op":"==","value":"1"}]}"#,
                "non-negative integer",
            ),
            (br#"{"compare":[{"key":"a","target":"size","op":"==","value":1}]}"#, "`target` of compare 0"),
            (br#"{"success":[{"op":"put","key":"a"}]}"#, "needs `value`"),
            (br#"{"success":[{"op":"put","key":"a","value":"v","lease":12}]}"#, "lease id"),
            (br#"{"failure":[{"op":"get","key":"a","prefix":"b"}]}"#, "either `key` or `prefix`"),
            (br#"{"failure":[{"op":"get","prefix":"b","limit":0}]}"#, "`limit` of failure op 0"),
            (br#"{"success":[{"op":"swap","key":"a"}]}"#, "put, delete or get"),
            (br#"{"sucess":[]}"#, "unknown field `sucess`"),
        ] {
            let error = parse(body).unwrap_err();
            assert!(matches!(error, ApiError::BadRequest(_)), "{error:?}");
            assert!(error.to_string().contains(expected), "{error} lacks {expected}");
        }
        let many = format!(r#"{{"success":[{}]}}"#, vec![r#"{"op":"get","key":"a"}"#; 129].join(","));
        let error = parse(many.as_bytes()).unwrap_err();
        assert_eq!(error.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(error.to_string().contains("limit of 128"), "{error}");
    }

    #[test]
    fn lease_ids_are_hex_and_never_0() {
        assert_eq!(parse_lease_id("000000000000abcd"), Some(0xabcd));
        assert_eq!(parse_lease_id("ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(parse_lease_id("0000000000000000"), None);
        assert_eq!(parse_lease_id("10000000000000000"), None);
        assert_eq!(parse_lease_id("+1"), None);
        assert_eq!(parse_lease_id(""), None);
    }

    #[test]
    fn the_answer_carries_one_response_per_op_and_items_as_listings_do() {
        let value = Value { lease: 0x2a, ..Value::created("v".into(), 4) };
        let outcome = TxnOutcome {
            succeeded: true,
            responses: vec![
                TxnResponse::Put { revision: 9 },
                TxnResponse::Deleted { count: 2 },
                TxnResponse::Get(None),
                TxnResponse::Get(Some(KeyValue { key: "k".into(), value: value.clone() })),
                TxnResponse::Range {
                    items: vec![KeyValue { key: "b".into(), value: Value::created(vec![0xff].into(), 3) }],
                    more: true,
                },
            ],
        };
        assert_eq!(
            outcome_json(&outcome, 9),
            serde_json::json!({"succeeded": true, "revision": 9, "responses": [
                {"revision": 9}, {"deleted": 2}, null,
                {"key": "k", "value": "v", "create_revision": 4, "mod_revision": 4, "version": 1,
                 "lease": "000000000000002a"},
                {"items": [{"key": "b", "value_base64": "/w==", "create_revision": 3, "mod_revision": 3,
                            "version": 1}], "more": true},
            ]})
        );
        assert_eq!(forwarded_from_json(&forwarded_json(&outcome)), Some(outcome));
    }
}
