//! The lease routes (etcd v3's leases, over `/v1`):
//!
//! - `POST /v1/leases {"ttl_s":N[,"id":"<16 hex>"]}` grants one: `201 {"id","ttl_s"}`
//!   (and `"requested_ttl_s"` with a note when the TTL was raised to the minimum,
//!   1.5 × the election timeout, as etcd raises it); an id already granted: 409.
//! - `GET /v1/leases`: every lease, `{"leases":[{"id","granted_ttl_s"}],"revision"}`.
//! - `GET /v1/leases/ID`: `{"id","ttl_s","granted_ttl_s","keys":[…]}`, `ttl_s` the
//!   seconds left (rounded up) as the leader counts them.
//! - `POST /v1/leases/ID/keepalive`: `{"id","ttl_s"}`, the TTL it has again from now.
//! - `DELETE /v1/leases/ID`: revokes it, deleting its keys in one revision:
//!   `{"revoked":true,"deleted":n,"revision":R}`.
//!
//! Unknown or expired: 404 `lease_not_found`. Only the leader keeps time
//! (`driver::leases`), so a keepalive or a time-to-live asked of a follower is sent to
//! the leader's `POST /raft/lease`; a keepalive is answered once the leader has
//! confirmed it still leads. Granting, keeping alive and revoking need write access to
//! every key (a lease's keys are any keys); reading one, read access to every key.
//!
//! etcd's Lease service (`server::etcd::lease`) calls the same functions: `grant_lease`,
//! `revoke_lease`, `leases` and `ask_leader`. A server-chosen id is in `1..=i64::MAX`,
//! as etcd's are, whichever front granted it.

use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;

use super::error::ApiError;
use super::{json, with_revision, Api, HttpResponse, PeerCallError};
use crate::kv::{Command, Outcome, MAX_LEASE_TTL_S};
use crate::raft::NodeId;
use crate::server::driver::core::LeaseState;
use crate::server::driver::NodeError;

/// The client routes' prefix.
pub const PATH: &str = "/v1/leases";
/// The leader's route for a follower's keepalive or time-to-live.
pub const PEER_PATH: &str = "/raft/lease";

/// A lease id as the API spells it: 16 hex digits.
pub fn id_text(id: u64) -> String {
    format!("{id:016x}")
}

/// Parses a lease id: 1 to 16 hex digits, not 0.
pub fn parse_id(text: &str) -> Result<u64, ApiError> {
    let id = (!text.is_empty() && text.len() <= 16)
        .then(|| u64::from_str_radix(text, 16).ok())
        .flatten()
        .filter(|id| *id != 0 && text.bytes().all(|b| b.is_ascii_hexdigit()));
    id.ok_or_else(|| ApiError::BadRequest(format!("`{text}` is not a lease id: 16 hex digits, not all zero")))
}

/// The least TTL granted, in whole seconds: 1.5 × the election timeout, rounded up
/// (etcd's `minTTL`), so a lease outlives the election that a leader's loss starts.
pub fn min_ttl_s(election_timeout: Duration) -> u64 {
    (election_timeout.as_millis() as u64 * 3 / 2).div_ceil(1000).max(1)
}

/// What `POST /v1/leases` asks: the TTL, and an id if the client chose one.
#[derive(Debug, PartialEq, Eq)]
struct Grant {
    ttl_s: u64,
    id: Option<u64>,
}

fn parse_grant(body: &[u8]) -> Result<Grant, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|error| ApiError::BadRequest(format!("the body is not JSON: {error}")))?;
    let ttl_s =
        value.get("ttl_s").and_then(serde_json::Value::as_u64).filter(|ttl| *ttl > 0).ok_or_else(|| {
            ApiError::BadRequest(
                "the body must be {\"ttl_s\": N[, \"id\": \"<16 hex>\"]}, N a positive integer".into(),
            )
        })?;
    let id = match value.get("id") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(text)) => Some(parse_id(text)?),
        Some(other) => {
            return Err(ApiError::BadRequest(format!("id must be a string of 16 hex digits, not {other}")))
        }
    };
    Ok(Grant { ttl_s, id })
}

/// A server-chosen lease id: random, in `1..=i64::MAX`, as etcd chooses them (etcd's
/// clients take an id for an `int64`, and print a negative one with a minus sign).
pub(crate) fn random_lease_id() -> u64 {
    loop {
        let id = crate::server::random_id() & i64::MAX as u64;
        if id != 0 {
            return id;
        }
    }
}

/// The TTL a grant asking for `requested_ttl_s` gets: at least `min_ttl_s` (as etcd
/// raises a TTL to its minimum), and never more than `MAX_LEASE_TTL_S`.
pub(crate) fn granted_ttl_s(requested_ttl_s: u64, min_ttl_s: u64) -> Result<u64, ApiError> {
    if requested_ttl_s > MAX_LEASE_TTL_S {
        return Err(ApiError::LeaseTtlTooLarge(requested_ttl_s));
    }
    Ok(requested_ttl_s.max(min_ttl_s))
}

/// A lease granted: its id and TTL, and the revision its grant was applied at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Granted {
    /// The lease.
    pub id: u64,
    /// The TTL it has, in seconds (perhaps raised from the one asked for).
    pub ttl_s: u64,
    /// The grant's revision.
    pub revision: u64,
}

/// Grants lease `id` (never 0) with `requested_ttl_s`, raised to the least TTL this
/// cluster grants: what `POST /v1/leases` and etcd's LeaseGrant do.
pub(crate) async fn grant_lease(api: &Api, id: u64, requested_ttl_s: u64) -> Result<Granted, ApiError> {
    let ttl_s = granted_ttl_s(requested_ttl_s, api.min_lease_ttl_s)?;
    let applied = api.write(Command::LeaseGrant { id, ttl_s }).await?;
    match applied.outcome {
        Outcome::LeaseGranted { id, ttl_s } => Ok(Granted { id, ttl_s, revision: applied.index }),
        Outcome::LeaseExists { id } => Err(ApiError::LeaseExists(id)),
        other => Err(ApiError::Internal(format!("the grant applied as {other:?}"))),
    }
}

/// `POST /v1/leases`.
pub(crate) async fn grant(api: &Api, body: &Bytes) -> Result<HttpResponse, ApiError> {
    let Grant { ttl_s: requested, id } = parse_grant(body)?;
    let granted = grant_lease(api, id.unwrap_or_else(random_lease_id), requested).await?;
    let mut body = serde_json::json!({ "id": id_text(granted.id), "ttl_s": granted.ttl_s });
    if granted.ttl_s != requested {
        body["requested_ttl_s"] = requested.into();
        body["note"] = format!(
            "the TTL was raised to {} s, the least this cluster grants (1.5 times its election timeout)",
            granted.ttl_s
        )
        .into();
    }
    Ok(with_revision(json(StatusCode::CREATED, body), granted.revision))
}

/// Revokes lease `id`, deleting its keys in one revision: how many it deleted, and
/// that revision. What `DELETE /v1/leases/ID` and etcd's LeaseRevoke do.
pub(crate) async fn revoke_lease(api: &Api, id: u64) -> Result<(usize, u64), ApiError> {
    let applied = api.write(Command::LeaseRevoke { id }).await?;
    match applied.outcome {
        Outcome::LeaseRevoked { deleted } => Ok((deleted, applied.index)),
        Outcome::LeaseNotFound { id } => Err(ApiError::LeaseNotFound(id)),
        other => Err(ApiError::Internal(format!("the revoke applied as {other:?}"))),
    }
}

/// `DELETE /v1/leases/ID`.
pub(crate) async fn revoke(api: &Api, id: u64) -> Result<HttpResponse, ApiError> {
    let (deleted, revision) = revoke_lease(api, id).await?;
    let body = serde_json::json!({ "revoked": true, "deleted": deleted, "revision": revision });
    Ok(with_revision(json(StatusCode::OK, body), revision))
}

/// Every lease, `(id, granted TTL in seconds)` in id order, and the revision they were
/// read at, after the read barrier `query` asks for. What `GET /v1/leases` and etcd's
/// LeaseLeases list.
pub(crate) async fn leases(api: &Api, query: &str) -> Result<(Vec<(u64, u64)>, u64), ApiError> {
    api.read_barrier(query).await?;
    let kv = api.node.shared.kv.read().expect("kv lock");
    let leases = kv.leases().map(|(id, lease)| (id, lease.ttl_s)).collect();
    Ok((leases, kv.revision()))
}

/// `GET /v1/leases`.
pub(crate) async fn list(api: &Api, query: &str) -> Result<HttpResponse, ApiError> {
    let (leases, revision) = leases(api, query).await?;
    let leases: Vec<serde_json::Value> = leases
        .into_iter()
        .map(|(id, ttl_s)| serde_json::json!({ "id": id_text(id), "granted_ttl_s": ttl_s }))
        .collect();
    Ok(with_revision(
        json(StatusCode::OK, serde_json::json!({ "leases": leases, "revision": revision })),
        revision,
    ))
}

/// What is asked of the leader's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ask {
    /// `POST /v1/leases/ID/keepalive`.
    Keepalive,
    /// `GET /v1/leases/ID`.
    TimeToLive,
}

impl Ask {
    fn name(self) -> &'static str {
        match self {
            Ask::Keepalive => "keepalive",
            Ask::TimeToLive => "ttl",
        }
    }
}

/// `POST /v1/leases/ID/keepalive` and `GET /v1/leases/ID`: `ask_leader`'s answer.
pub(crate) async fn ask(api: &Api, ask: Ask, id: u64) -> Result<HttpResponse, ApiError> {
    ask_leader(api, ask, id).await.map(|body| json(StatusCode::OK, body))
}

/// A keepalive or a time-to-live: asked here if this node leads, else of the leader.
/// The leader's answer, `{"id","ttl_s"}` for a keepalive (the TTL it has again from
/// now), with `"granted_ttl_s"` and `"keys"` for a time-to-live. What the lease routes
/// and etcd's LeaseKeepAlive and LeaseTimeToLive ask.
pub(crate) async fn ask_leader(api: &Api, ask: Ask, id: u64) -> Result<serde_json::Value, ApiError> {
    let deadline = tokio::time::Instant::now() + api.request_timeout;
    loop {
        let attempt = async {
            match ask_here(api, ask, id).await {
                Err(NodeError::NotLeader(Some(leader))) if leader != api.node.id => {
                    forward(api, leader, ask, id).await
                }
                Err(NodeError::NotLeader(_)) | Err(NodeError::NoLeader) => {
                    Err(ApiError::Unavailable("no leader to keep the lease's time".into()))
                }
                Err(error) => Err(super::node_error(error)),
                Ok(state) => Ok(answer_json(api, ask, id, state)?),
            }
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Err(_) => {
                return Err(ApiError::ReadTimeout(api.request_timeout, "the leader to answer for the lease"))
            }
            // No leader yet, or it changed: asking again changes nothing twice (a
            // keepalive repeated only renews again).
            Ok(Err(ApiError::Unavailable(_)))
                if tokio::time::Instant::now() + Duration::from_millis(10) < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(Err(ApiError::Unavailable(message))) => return Err(ApiError::Unavailable(message)),
            Ok(result) => return result,
        }
    }
}

async fn ask_here(api: &Api, ask: Ask, id: u64) -> Result<Option<LeaseState>, NodeError> {
    match ask {
        Ask::Keepalive => api.node.lease_keepalive(id).await,
        Ask::TimeToLive => api.node.lease_time_to_live(id).await,
    }
}

/// The leader's answer (also what its peer route sends back).
fn answer_json(
    api: &Api,
    ask: Ask,
    id: u64,
    state: Option<LeaseState>,
) -> Result<serde_json::Value, ApiError> {
    let state = state.ok_or(ApiError::LeaseNotFound(id))?;
    let ttl_s = state.remaining_ms.div_ceil(1000);
    Ok(match ask {
        Ask::Keepalive => serde_json::json!({ "id": id_text(id), "ttl_s": ttl_s }),
        Ask::TimeToLive => {
            let kv = api.node.shared.kv.read().expect("kv lock");
            let keys: Vec<String> = kv
                .lease(id)
                .map(|lease| lease.keys().map(|key| String::from_utf8_lossy(key).into_owned()).collect())
                .unwrap_or_default();
            serde_json::json!({
                "id": id_text(id),
                "ttl_s": ttl_s,
                "granted_ttl_s": state.granted_ttl_s,
                "keys": keys,
            })
        }
    })
}

/// The leader's side of `POST /raft/lease {"ask":"keepalive"|"ttl","id":N}`: answered
/// here or refused as unavailable (this node does not lead: the asker retries).
pub(crate) async fn from_peer(api: &Api, body: &Bytes) -> Result<HttpResponse, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|error| ApiError::BadRequest(format!("the body is not JSON: {error}")))?;
    let ask = match value["ask"].as_str() {
        Some("keepalive") => Ask::Keepalive,
        Some("ttl") => Ask::TimeToLive,
        _ => return Err(ApiError::BadRequest("ask must be `keepalive` or `ttl`".into())),
    };
    let id = value["id"]
        .as_u64()
        .filter(|id| *id != 0)
        .ok_or_else(|| ApiError::BadRequest("id must be a lease id".into()))?;
    let state = tokio::time::timeout(api.request_timeout, ask_here(api, ask, id))
        .await
        .map_err(|_| ApiError::ReadTimeout(api.request_timeout, "the leader to confirm it leads"))?;
    match state {
        Ok(state) => Ok(json(StatusCode::OK, answer_json(api, ask, id, state)?)),
        Err(NodeError::NotLeader(_) | NodeError::NoLeader) => {
            Err(ApiError::Unavailable("not the leader any more; retry".into()))
        }
        Err(error) => Err(super::node_error(error)),
    }
}

/// Asks the leader's `POST /raft/lease`, once. Asking again is harmless (a keepalive
/// repeated renews again), so a lost answer is only unavailable.
async fn forward(api: &Api, leader: NodeId, ask: Ask, id: u64) -> Result<serde_json::Value, ApiError> {
    let Some(address) = api.node.shared.address_of(leader) else {
        return Err(ApiError::Unavailable(format!("leader {leader:016x} has no known address")));
    };
    let body = Bytes::from(serde_json::json!({ "ask": ask.name(), "id": id }).to_string());
    let (status, value) =
        api.post_peer_json(&address, PEER_PATH, body).await.map_err(|error| match error {
            PeerCallError::NotSent(reason) | PeerCallError::Lost(reason) => {
                ApiError::Unavailable(format!("the leader {reason}"))
            }
            PeerCallError::Internal(reason) => ApiError::Internal(format!("the leader {reason}")),
        })?;
    match (status, value["code"].as_str()) {
        (StatusCode::OK, _) => Ok(value),
        (StatusCode::NOT_FOUND, Some("lease_not_found")) => Err(ApiError::LeaseNotFound(id)),
        (StatusCode::SERVICE_UNAVAILABLE, _) => Err(ApiError::Unavailable(
            value["error"].as_str().unwrap_or("the leader is unavailable").to_owned(),
        )),
        _ => Err(ApiError::from_leader(status, &value, &address)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_are_one_to_sixteen_hex_digits_and_never_zero() {
        assert_eq!(parse_id("00000000000000ff").unwrap(), 0xff);
        assert_eq!(parse_id("ffffffffffffffff").unwrap(), u64::MAX);
        assert_eq!(parse_id("7").unwrap(), 7);
        for bad in ["", "0", "0000000000000000", "1ffffffffffffffff", "+7", "x1", "12 "] {
            assert!(parse_id(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(parse_id(&id_text(0xabc)).unwrap(), 0xabc);
    }

    #[test]
    fn grant_bodies_need_a_positive_ttl_and_may_name_an_id() {
        assert_eq!(parse_grant(br#"{"ttl_s":10}"#).unwrap(), Grant { ttl_s: 10, id: None });
        assert_eq!(
            parse_grant(br#"{"ttl_s":10,"id":"000000000000000a"}"#).unwrap(),
            Grant { ttl_s: 10, id: Some(10) }
        );
        for bad in [
            &br#"{"ttl_s":0}"#[..],
            br#"{"ttl_s":-1}"#,
            br#"{}"#,
            br#"{"ttl_s":"5"}"#,
            br#"{"ttl_s":5,"id":5}"#,
        ] {
            assert!(parse_grant(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_granted_ttl_is_raised_to_the_least_and_refused_above_the_most() {
        assert_eq!(granted_ttl_s(0, 2).unwrap(), 2);
        assert_eq!(granted_ttl_s(1, 2).unwrap(), 2);
        assert_eq!(granted_ttl_s(60, 2).unwrap(), 60);
        assert_eq!(granted_ttl_s(MAX_LEASE_TTL_S, 2).unwrap(), MAX_LEASE_TTL_S);
        let refused = granted_ttl_s(MAX_LEASE_TTL_S + 1, 2).unwrap_err();
        assert!(matches!(refused, ApiError::LeaseTtlTooLarge(9_000_000_001)), "{refused:?}");
        assert_eq!(refused.to_string(), "ttl_s 9000000001 is above the most a lease may have, 9000000000");
    }

    #[test]
    fn server_chosen_lease_ids_are_positive_int64s() {
        for _ in 0..1000 {
            let id = random_lease_id();
            assert!(id != 0 && i64::try_from(id).is_ok(), "{id:016x}");
        }
    }

    #[test]
    fn the_least_ttl_is_one_and_a_half_election_timeouts_rounded_up() {
        assert_eq!(min_ttl_s(Duration::from_millis(150)), 1);
        assert_eq!(min_ttl_s(Duration::from_millis(1000)), 2);
        assert_eq!(min_ttl_s(Duration::from_millis(3000)), 5);
    }
}
