//! The corruption check (`mmapd-admin check`, as etcd's HashKV): every member's hash of
//! its key-value state at one revision, and which members disagree.
//!
//! The node asked proposes a `Command::HashCheck` (forwarded to the leader like any
//! write); the revision it commits at is the one every member hashes as it applies it
//! (`driver::hashes`). The node then asks every member of the cluster record for its
//! hash at that revision on the peer route `GET /raft/hash?revision=R` (the cluster
//! secret's, as every peer route), itself included, and groups the answers. Members
//! whose hash is not the most common one disagree; a member that cannot answer (down,
//! lagging, or it skipped the revision by installing a snapshot) is reported as such,
//! never counted as agreeing.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};

use super::error::ApiError;
use super::{query_field, Api, Connection};
use crate::kv::{Command, Outcome, StateHash};
use crate::raft::NodeId;
use crate::server::driver::hashes::HashUnavailable;

/// The peer route a member's hash is asked on.
pub const PEER_PATH: &str = "/raft/hash";

/// How long a member may take to apply the check's revision and hash it.
pub const MEMBER_TIMEOUT: Duration = Duration::from_secs(10);

/// A member's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberHash {
    /// Its hash at the revision.
    Hash(StateHash),
    /// Why it has none.
    Unavailable(String),
}

/// `GET /raft/hash?revision=R`: this node's hash at R, waiting for it to be applied.
pub(crate) async fn peer_hash(
    api: &Api,
    connection: &Connection,
    headers: &HeaderMap,
    query: &str,
) -> Result<serde_json::Value, ApiError> {
    api.check_secret(headers)?;
    super::join::check_peer_identity(api, connection, headers)?;
    let revision = query_field(query, "revision")?
        .and_then(|raw| std::str::from_utf8(&raw).ok().and_then(|s| s.parse::<u64>().ok()))
        .filter(|&revision| revision > 0)
        .ok_or_else(|| ApiError::BadRequest("`revision` must be a positive integer".into()))?;
    match local_hash(api, revision).await {
        MemberHash::Hash(hash) => Ok(hash_json(&hash)),
        MemberHash::Unavailable(reason) => Err(ApiError::HashUnavailable(reason)),
    }
}

/// Runs a check from this node: proposes the hash check, collects every member's hash.
pub(crate) async fn check(api: &Api) -> Result<serde_json::Value, ApiError> {
    let applied = api.write(Command::HashCheck).await?;
    if applied.outcome != Outcome::HashCheck {
        return Err(ApiError::Internal(format!("the hash check applied as {:?}", applied.outcome)));
    }
    let revision = applied.index;
    let me = api.node.shared.status.lock().expect("status lock").id;
    let members = members(api);
    let asked = members.iter().map(|(id, address)| async move {
        let answer = if *id == me {
            local_hash(api, revision).await
        } else {
            remote_hash(api, address, revision).await
        };
        (*id, address.clone(), answer)
    });
    let answers = futures_util::future::join_all(asked).await;
    Ok(report(revision, &answers))
}

/// The members to ask: the cluster record's, or, for a cluster from before the record,
/// the members this node knows.
fn members(api: &Api) -> Vec<(NodeId, String)> {
    let shared = &api.node.shared;
    let recorded: Vec<(NodeId, String)> = {
        let kv = shared.kv.read().expect("kv lock");
        kv.cluster().members().iter().map(|(id, m)| (*id, m.address.clone())).collect()
    };
    if !recorded.is_empty() {
        return recorded;
    }
    let mut known: Vec<(NodeId, String)> =
        shared.members.read().expect("members lock").iter().map(|(id, a)| (*id, a.clone())).collect();
    known.sort();
    known
}

async fn local_hash(api: &Api, revision: u64) -> MemberHash {
    match api.node.shared.hashes.wait_for(revision, MEMBER_TIMEOUT).await {
        Ok(hash) => MemberHash::Hash(hash),
        Err(unavailable @ (HashUnavailable::NotKept { .. } | HashUnavailable::NotApplied { .. })) => {
            MemberHash::Unavailable(unavailable.to_string())
        }
    }
}

async fn remote_hash(api: &Api, address: &str, revision: u64) -> MemberHash {
    let asked = async {
        let mut request = Request::builder()
            .method(Method::GET)
            .uri(format!("http://{address}{PEER_PATH}?revision={revision}"));
        for (name, value) in api.outbox.credentials().headers().map_err(|e| e.to_string())? {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        let response = api.client.request(request).await.map_err(|e| format!("unreachable: {e}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| format!("no answer: {e}"))?.to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| format!("answered {status} with a body that is not JSON"))?;
        if status != StatusCode::OK {
            let error = value["error"].as_str().unwrap_or("no reason given");
            return Err(format!("answered {status}: {error}"));
        }
        hash_from_json(&value).ok_or_else(|| format!("answered a malformed hash: {value}"))
    };
    // Its own wait is MEMBER_TIMEOUT; the transfer gets a little more.
    match tokio::time::timeout(MEMBER_TIMEOUT + Duration::from_secs(2), asked).await {
        Ok(Ok(hash)) if hash.revision == revision => MemberHash::Hash(hash),
        Ok(Ok(hash)) => MemberHash::Unavailable(format!("answered for revision {}", hash.revision)),
        Ok(Err(reason)) => MemberHash::Unavailable(reason),
        Err(_) => MemberHash::Unavailable(format!("no answer within {MEMBER_TIMEOUT:?}")),
    }
}

fn hash_json(hash: &StateHash) -> serde_json::Value {
    serde_json::json!({
        "revision": hash.revision,
        "crc32c": format!("{:08x}", hash.crc32c),
        "keys": hash.keys,
        "bytes": hash.bytes,
    })
}

fn hash_from_json(value: &serde_json::Value) -> Option<StateHash> {
    Some(StateHash {
        revision: value["revision"].as_u64()?,
        crc32c: u32::from_str_radix(value["crc32c"].as_str()?, 16).ok()?,
        keys: value["keys"].as_u64()?,
        bytes: value["bytes"].as_u64()?,
    })
}

/// Which members disagree: those whose hash is not the most common one (ties go to
/// the lowest hash, so the report is deterministic; with a tie nobody is a majority,
/// and every member of a smaller or equal group is listed).
pub fn disagreeing(answers: &[(NodeId, String, MemberHash)]) -> Vec<NodeId> {
    let mut groups: BTreeMap<u32, Vec<NodeId>> = BTreeMap::new();
    for (id, _, answer) in answers {
        if let MemberHash::Hash(hash) = answer {
            groups.entry(hash.crc32c).or_default().push(*id);
        }
    }
    if groups.len() <= 1 {
        return Vec::new();
    }
    let largest = groups.values().map(Vec::len).max().unwrap_or(0);
    let tied = groups.values().filter(|ids| ids.len() == largest).count();
    let mut out: Vec<NodeId> = if tied > 1 {
        groups.into_values().flatten().collect()
    } else {
        groups.into_values().filter(|ids| ids.len() != largest).flatten().collect()
    };
    out.sort_unstable();
    out
}

fn report(revision: u64, answers: &[(NodeId, String, MemberHash)]) -> serde_json::Value {
    let disagreeing = disagreeing(answers);
    let members: Vec<serde_json::Value> = answers
        .iter()
        .map(|(id, address, answer)| {
            let mut row = serde_json::json!({ "id": format!("{id:016x}"), "address": address });
            match answer {
                MemberHash::Hash(hash) => {
                    row["crc32c"] = serde_json::json!(format!("{:08x}", hash.crc32c));
                    row["keys"] = serde_json::json!(hash.keys);
                    row["bytes"] = serde_json::json!(hash.bytes);
                    row["agrees"] = serde_json::json!(!disagreeing.contains(id));
                }
                MemberHash::Unavailable(reason) => row["error"] = serde_json::json!(reason),
            }
            row
        })
        .collect();
    let unanswered = answers.iter().filter(|(_, _, a)| matches!(a, MemberHash::Unavailable(_))).count();
    serde_json::json!({
        "revision": revision,
        "members": members,
        "disagreeing": disagreeing.iter().map(|id| format!("{id:016x}")).collect::<Vec<_>>(),
        "unanswered": unanswered,
        "consistent": disagreeing.is_empty() && unanswered == 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: NodeId, crc32c: Option<u32>) -> (NodeId, String, MemberHash) {
        let answer = match crc32c {
            Some(crc32c) => MemberHash::Hash(StateHash { revision: 9, crc32c, keys: 3, bytes: 30 }),
            None => MemberHash::Unavailable("down".into()),
        };
        (id, format!("127.0.0.1:{}", 3000 + id), answer)
    }

    #[test]
    fn members_that_all_hash_alike_agree() {
        let answers = [answer(1, Some(7)), answer(2, Some(7)), answer(3, Some(7))];
        assert!(disagreeing(&answers).is_empty());
        assert_eq!(report(9, &answers)["consistent"], true);
    }

    #[test]
    fn the_member_outside_the_largest_group_disagrees() {
        let answers = [answer(1, Some(7)), answer(2, Some(8)), answer(3, Some(7))];
        assert_eq!(disagreeing(&answers), vec![2]);
        let report = report(9, &answers);
        assert_eq!(report["consistent"], false);
        assert_eq!(report["disagreeing"], serde_json::json!(["0000000000000002"]));
        assert_eq!(report["members"][1]["agrees"], false);
        assert_eq!(report["members"][0]["agrees"], true);
    }

    #[test]
    fn a_tie_lists_every_member_as_disagreeing() {
        let answers = [answer(1, Some(7)), answer(2, Some(8))];
        assert_eq!(disagreeing(&answers), vec![1, 2]);
    }

    #[test]
    fn a_member_that_cannot_answer_is_not_consistent_but_not_disagreeing() {
        let answers = [answer(1, Some(7)), answer(2, None), answer(3, Some(7))];
        assert!(disagreeing(&answers).is_empty());
        let report = report(9, &answers);
        assert_eq!(report["consistent"], false);
        assert_eq!(report["unanswered"], 1);
        assert_eq!(report["members"][1]["error"], "down");
    }

    #[test]
    fn a_hash_survives_its_json_form() {
        let hash = StateHash { revision: 12, crc32c: 0x0000_9f3a, keys: 5, bytes: 77 };
        assert_eq!(hash_from_json(&hash_json(&hash)), Some(hash));
    }
}
