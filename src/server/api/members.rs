//! Membership for operators: the member list, `GET /v1/members` on every node (and
//! `GET /members` on the admin socket), and changes, `POST /members` on the admin socket,
//! made by the leader: a follower forwards them once, as `POST /raft/members`.
//!
//! The list comes from the replicated cluster record, the same on every node; the match
//! index and the last contact are the leader's view, which a follower asks the leader
//! for on the peer route `GET /raft/members` (the leader answers from its own view and
//! asks nobody; authenticated as every membership peer route, so it needs no client
//! token). `GET /v1/members?local=1` gives a node's own view to clients.
//!
//! A change body is JSON, the same on both routes:
//! `{"op":"add","address":"HOST:PORT","learner":false}`,
//! `{"op":"promote","member":"ID|HOST:PORT"}`, `{"op":"remove","member":"ID|HOST:PORT"}`,
//! `{"op":"update","id":"ID","address":"HOST:PORT"}`; an ID is 16 hex digits. The leader
//! resolves addresses against its record after a read barrier, so it decides on the
//! record as committed, and proposes one single-server change (thesis §4.1).
//!
//! etcd's Cluster service (`server::etcd::cluster`) lists `rows` and makes its changes
//! with `change`, as the admin socket does.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::{Deserialize, Serialize};

use crate::kv::{Cluster, MemberChange, MemberId, MemberRole, Outcome};
use crate::raft::{NodeId, Role, Status};
use crate::server::cli::member_address;
use crate::server::driver::version::Feature;

use super::error::ApiError;
use super::{Api, PeerCallError};

/// The public route: the member list.
pub const PATH: &str = "/v1/members";
/// The peer route: a follower forwards a change to the leader on it (POST), and asks
/// the leader for its own view of the members (GET).
pub const PEER_PATH: &str = "/raft/members";
/// How long a follower waits for the leader's view of the members.
const LEADER_VIEW_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest change body accepted (an address is at most a few hundred bytes).
pub(crate) const MAX_BODY_BYTES: usize = 64 << 10;

/// A member named by an operator: its id, or its address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberRef {
    /// 16 hex digits.
    Id(MemberId),
    /// `HOST:PORT`, in `cli::member_address` spelling.
    Address(String),
}

impl MemberRef {
    /// Parses `ID|HOST:PORT`: exactly 16 hex digits are an id, anything else must be an
    /// address.
    pub fn parse(text: &str) -> Result<MemberRef, String> {
        let text = text.trim();
        if text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return parse_id(text).map(MemberRef::Id);
        }
        member_address(text).map(MemberRef::Address).map_err(|_| {
            format!("{text:?} is neither a member id (16 hex digits) nor an address (HOST:PORT)")
        })
    }

    /// Its id in `cluster`; an unknown one is an error naming it.
    fn resolve(&self, cluster: &Cluster) -> Result<MemberId, ApiError> {
        match self {
            MemberRef::Id(id) if cluster.members().contains_key(id) => Ok(*id),
            MemberRef::Id(id) if cluster.is_removed(*id) => {
                Err(ApiError::NoSuchMember(format!("member {id:016x} was removed")))
            }
            MemberRef::Id(id) => Err(ApiError::NoSuchMember(format!("no member {id:016x}"))),
            MemberRef::Address(address) => cluster
                .by_address(address)
                .map(|(id, _)| id)
                .ok_or_else(|| ApiError::NoSuchMember(format!("no member has address {address}"))),
        }
    }
}

/// A member id: exactly 16 hex digits, not 0.
pub fn parse_id(text: &str) -> Result<MemberId, String> {
    let text = text.trim();
    let id = (text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(text, 16).ok())
        .flatten()
        .ok_or_else(|| format!("{text:?} is not a member id (16 hex digits)"))?;
    if id == 0 {
        return Err("member id 0000000000000000 is never a member's".into());
    }
    Ok(id)
}

/// A change an operator asked for, decoded and checked for form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberOp {
    /// Add a learner at `address` (promoted once caught up unless `learner`).
    Add {
        /// Where it will listen.
        address: String,
        /// Keep it a learner.
        learner: bool,
    },
    /// Make a learner a voter.
    Promote(MemberRef),
    /// Remove a member for good.
    Remove(MemberRef),
    /// A member now listens at another address.
    Update {
        /// The member.
        id: MemberId,
        /// Its new address.
        address: String,
    },
}

/// The JSON form of a change, as it travels.
#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Body {
    Add {
        address: String,
        #[serde(default)]
        learner: bool,
    },
    Promote {
        member: String,
    },
    Remove {
        member: String,
    },
    Update {
        id: String,
        address: String,
    },
}

impl MemberOp {
    /// Decodes a change body; anything malformed is a `BadRequest` saying what.
    pub fn decode(body: &[u8]) -> Result<MemberOp, ApiError> {
        let bad = |reason: String| ApiError::BadRequest(format!("membership change: {reason}"));
        let body: Body = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
        let address = |text: &str| member_address(text).map_err(|e| bad(e.to_string()));
        let member = |text: &str| MemberRef::parse(text).map_err(bad);
        Ok(match body {
            Body::Add { address: text, learner } => MemberOp::Add { address: address(&text)?, learner },
            Body::Promote { member: text } => MemberOp::Promote(member(&text)?),
            Body::Remove { member: text } => MemberOp::Remove(member(&text)?),
            Body::Update { id, address: text } => {
                MemberOp::Update { id: parse_id(&id).map_err(bad)?, address: address(&text)? }
            }
        })
    }

    /// The JSON body `decode` reads.
    pub fn encode(&self) -> Bytes {
        let member = |member: &MemberRef| match member {
            MemberRef::Id(id) => format!("{id:016x}"),
            MemberRef::Address(address) => address.clone(),
        };
        let body = match self {
            MemberOp::Add { address, learner } => Body::Add { address: address.clone(), learner: *learner },
            MemberOp::Promote(target) => Body::Promote { member: member(target) },
            MemberOp::Remove(target) => Body::Remove { member: member(target) },
            MemberOp::Update { id, address } => {
                Body::Update { id: format!("{id:016x}"), address: address.clone() }
            }
        };
        Bytes::from(serde_json::to_vec(&body).expect("a change body serializes"))
    }

    /// The change with a member named by address replaced by the id that `cluster` gives
    /// that address: an address no member of `cluster` has is an error naming it.
    pub fn pinned(self, cluster: &Cluster) -> Result<MemberOp, ApiError> {
        let pin = |target: MemberRef| match target {
            MemberRef::Address(address) => match cluster.by_address(&address) {
                Some((id, _)) => Ok(MemberRef::Id(id)),
                None => Err(ApiError::NoSuchMember(format!(
                    "no member has address {address} in this node's record (it may lag the leader's: \
                     retry, or name the member by id)"
                ))),
            },
            id => Ok(id),
        };
        Ok(match self {
            MemberOp::Promote(target) => MemberOp::Promote(pin(target)?),
            MemberOp::Remove(target) => MemberOp::Remove(pin(target)?),
            other => other,
        })
    }

    /// True when a member is named by its address (`pinned` turns it into an id).
    fn names_an_address(&self) -> bool {
        matches!(self, MemberOp::Promote(MemberRef::Address(_)) | MemberOp::Remove(MemberRef::Address(_)))
    }

    /// The feature the change needs: `version::feature_of_change` of the change it
    /// becomes on the leader.
    pub fn feature(&self) -> Feature {
        match self {
            MemberOp::Add { .. } | MemberOp::Promote(_) | MemberOp::Remove(_) => Feature::MembershipChanges,
            MemberOp::Update { .. } => Feature::ClusterRecord,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            MemberOp::Add { .. } => "add",
            MemberOp::Promote(_) => "promote",
            MemberOp::Remove(_) => "remove",
            MemberOp::Update { .. } => "update",
        }
    }
}

/// Reads and decodes a change body.
pub(crate) async fn read_op(api: &Api, request: Request<Incoming>) -> Result<MemberOp, ApiError> {
    let body = super::read_body(request, MAX_BODY_BYTES, api.body_timeout).await?;
    MemberOp::decode(&body)
}

/// Who this node thinks leads, from the driver's latest role.
fn leader(api: &Api) -> (Role, Option<NodeId>) {
    let (role, _, leader) = *api.node.role.borrow();
    (role, leader)
}

/// The admin socket's change: made here on the leader, else forwarded to the leader
/// once. Answers what `change_here` answers.
///
/// A member named by address is pinned to its id first, from this node's record as the
/// request arrives: a change may reach the leader late (a forward held up by a partition
/// arrives when it heals, after its sender gave up), and by then a replacement may listen
/// at that address under a new id. Pinned, a late removal names the old id, already
/// removed, and is refused; unpinned, it removed the replacement (chaos seed
/// 1796202600002). Ids are never reused, so a stale record errs only towards a refusal.
pub(crate) async fn change(api: &Api, op: MemberOp) -> Result<serde_json::Value, ApiError> {
    check_feature(api, &op)?;
    let op = {
        let kv = api.node.shared.kv.read().expect("kv lock");
        op.pinned(kv.cluster())?
    };
    match leader(api) {
        (Role::Leader, _) => change_here(api, op).await,
        (_, Some(leader)) if leader != api.node.id => forward(api, leader, &op).await,
        _ => Err(ApiError::Unavailable("no leader known; the change was not made: retry".into())),
    }
}

/// The member a change answered by `change` was about: its `"id"`.
pub(crate) fn changed_id(answer: &serde_json::Value) -> Result<MemberId, ApiError> {
    answer["id"]
        .as_str()
        .and_then(|id| parse_id(id).ok())
        .ok_or_else(|| ApiError::Internal(format!("a membership change answered without an id: {answer}")))
}

/// The peer route's change: only the leader makes it, and it is never forwarded again.
pub(crate) async fn change_from_peer(api: &Api, op: MemberOp) -> Result<serde_json::Value, ApiError> {
    if op.names_an_address() {
        return Err(ApiError::BadRequest(
            "membership change: a forwarded change names its member by id (the node that took the \
             request resolves the address); the change was not made"
                .into(),
        ));
    }
    if leader(api).0 != Role::Leader {
        return Err(ApiError::Unavailable(
            "not the leader (any more); the change was not made: retry".into(),
        ));
    }
    check_feature(api, &op)?;
    change_here(api, op).await
}

/// Refuses a change while some member runs a release that would not understand its
/// entry (503 `feature_unavailable`, naming the members that lag), as this node last saw
/// the members' versions. Asked before anything else: a follower would otherwise forward
/// the change to a leader of an older release, which has no route for it (404), and a
/// leader of this release would answer that the cluster record is not bootstrapped (it
/// waits for the same members). The leader's core decides again when it proposes.
fn check_feature(api: &Api, op: &MemberOp) -> Result<(), ApiError> {
    api.node
        .shared
        .cluster_supports(op.feature())
        .map_err(|unsupported| ApiError::FeatureUnavailable(unsupported.to_string()))
}

/// Makes the change on this node, the leader: waits for a read barrier (the leader has
/// committed an entry of its term, so no earlier change can still be pending unseen,
/// thesis §4.1, and the record read below is the committed one), resolves the member,
/// checks the change against the record, proposes it and waits until it is applied.
async fn change_here(api: &Api, op: MemberOp) -> Result<serde_json::Value, ApiError> {
    let made = async {
        api.node.read_barrier().await.map_err(ApiError::from_member_change)?;
        // Taken before the record's lock, never inside it.
        let started_with: Vec<NodeId> =
            api.node.shared.members.read().expect("members lock").keys().copied().collect();
        let (change, address) = {
            let kv = api.node.shared.kv.read().expect("kv lock");
            let cluster = kv.cluster();
            if cluster.id() == 0 {
                return Err(ApiError::Unavailable(
                    "the cluster record is not bootstrapped yet; the change was not made: retry".into(),
                ));
            }
            let change = match &op {
                MemberOp::Add { address, learner } => MemberChange::AddLearner {
                    id: fresh_id(cluster, &started_with, random_u64),
                    address: address.clone(),
                    promote_when_caught_up: !learner,
                },
                MemberOp::Promote(target) => MemberChange::Promote { id: target.resolve(cluster)? },
                MemberOp::Remove(target) => MemberChange::Remove { id: target.resolve(cluster)? },
                MemberOp::Update { id, address } => MemberChange::UpdateAddress {
                    id: MemberRef::Id(*id).resolve(cluster)?,
                    address: address.clone(),
                },
            };
            cluster.check(&change)?;
            let address = match &change {
                MemberChange::AddLearner { address, .. } | MemberChange::UpdateAddress { address, .. } => {
                    address.clone()
                }
                MemberChange::Promote { id } | MemberChange::Remove { id } | MemberChange::Started { id } => {
                    cluster.members().get(id).map_or_else(String::new, |m| m.address.clone())
                }
            };
            (change, address)
        };
        let applied = api.node.change_members(change.clone()).await.map_err(ApiError::from_member_change)?;
        match applied.outcome {
            Outcome::Cluster { applied: true } => Ok((change, address, applied.index)),
            Outcome::Cluster { applied: false } => Err(ApiError::MemberChangeRefused(
                "the cluster record refused the change when its entry applied".into(),
            )),
            other => Err(ApiError::Internal(format!("a membership change applied as {other:?}"))),
        }
    };
    let (change, address, index) = tokio::time::timeout(api.request_timeout, made)
        .await
        .map_err(|_| ApiError::Timeout(api.request_timeout, "the membership change to commit"))??;
    let id = match &change {
        MemberChange::AddLearner { id, .. }
        | MemberChange::UpdateAddress { id, .. }
        | MemberChange::Promote { id }
        | MemberChange::Remove { id }
        | MemberChange::Started { id } => *id,
    };
    let kv = api.node.shared.kv.read().expect("kv lock");
    let cluster = kv.cluster();
    let role = cluster.members().get(&id).map(|m| m.role.as_str());
    let voters: Vec<&str> = cluster
        .members()
        .values()
        .filter(|m| m.role == MemberRole::Voter && m.address != address)
        .map(|m| m.address.as_str())
        .collect();
    tracing::info!(op = op.name(), member = %format!("{id:016x}"), %address, index, "membership changed");
    Ok(serde_json::json!({
        "op": op.name(),
        "id": format!("{id:016x}"),
        "address": address,
        "role": role,
        "index": index,
        "promote_when_caught_up": matches!(change, MemberChange::AddLearner { promote_when_caught_up: true, .. }),
        "voters": voters,
    }))
}

/// A new member's id: random, never 0, never a member's nor a removed one's (nor one
/// of the members this node started with, in case the record lags the configuration).
fn fresh_id(cluster: &Cluster, known: &[NodeId], mut random: impl FnMut() -> u64) -> MemberId {
    loop {
        let id = random();
        if id != 0 && !cluster.members().contains_key(&id) && !cluster.is_removed(id) && !known.contains(&id)
        {
            return id;
        }
    }
}

/// 64 random bits: the standard library's randomly keyed hasher over the clock (each
/// `RandomState` has fresh keys), without a crate for it.
pub(crate) fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Sends the change to the leader's `POST /raft/members`, once.
async fn forward(api: &Api, leader: NodeId, op: &MemberOp) -> Result<serde_json::Value, ApiError> {
    let Some(address) = address_of(api, leader) else {
        return Err(ApiError::Unavailable(format!("leader {leader:016x} has no known address; retry")));
    };
    let asked = async {
        let (status, value) =
            api.post_peer_json(&address, PEER_PATH, op.encode()).await.map_err(|error| match error {
                PeerCallError::NotSent(reason) => {
                    ApiError::Unavailable(format!("leader {reason}; the change was not made"))
                }
                PeerCallError::Lost(reason) => ApiError::OutcomeUnknown(format!("leader {reason}")),
                PeerCallError::Internal(reason) => ApiError::Internal(format!("leader {reason}")),
            })?;
        if status == StatusCode::OK {
            Ok(value)
        } else {
            Err(ApiError::from_leader(status, &value, &address))
        }
    };
    // The leader bounds its own wait by its request timeout; a little more here.
    let budget = api.request_timeout + Duration::from_secs(1);
    tokio::time::timeout(budget, asked)
        .await
        .map_err(|_| ApiError::Timeout(budget, "the leader to answer"))?
}

/// A member's address: the record's, else the one this node started with.
fn address_of(api: &Api, id: NodeId) -> Option<String> {
    let recorded =
        api.node.shared.kv.read().expect("kv lock").cluster().members().get(&id).map(|m| m.address.clone());
    recorded.or_else(|| api.node.shared.address_of(id))
}

/// One row of the list.
pub(crate) struct Row {
    /// The member.
    pub id: MemberId,
    /// Where peers and clients reach it.
    pub address: String,
    /// Whether it votes.
    pub role: MemberRole,
    /// The leader saw it hold the log (`kv::Member::started`).
    pub started: bool,
    match_index: Option<u64>,
    last_contact_ms: Option<u64>,
}

/// The members as this node's record has them, in id order, and the cluster's id;
/// before the record is bootstrapped (cluster id 0), the members this node knows of
/// (`unrecorded_members`). What `GET /v1/members` and etcd's MemberList list.
pub(crate) fn rows(api: &Api, status: &Status) -> (u64, Vec<Row>) {
    let shared = &api.node.shared;
    let (cluster_id, rows) = {
        let kv = shared.kv.read().expect("kv lock");
        let cluster = kv.cluster();
        let rows: Vec<Row> = cluster
            .members()
            .iter()
            .map(|(id, m)| Row {
                id: *id,
                address: m.address.clone(),
                role: m.role,
                started: m.started,
                match_index: None,
                last_contact_ms: None,
            })
            .collect();
        (cluster.id(), rows)
    };
    if cluster_id == 0 {
        return (0, unrecorded_members(status, &shared.members.read().expect("members lock")));
    }
    (cluster_id, rows)
}

/// The member list (`GET /v1/members`). On a follower, with `ask_leader`, the match
/// index and last contact come from the leader's own view; null if it cannot be asked.
pub(crate) async fn list(api: &Api, ask_leader: bool) -> serde_json::Value {
    let shared = &api.node.shared;
    let status = shared.status.lock().expect("status lock").clone();
    let (cluster_id, mut rows) = rows(api, &status);
    if status.role == Role::Leader {
        for row in &mut rows {
            if row.id == status.id {
                row.match_index = Some(status.last_index);
                row.last_contact_ms = Some(0);
            } else if let Some(peer) = status.peers.iter().find(|p| p.id == row.id) {
                row.match_index = Some(peer.match_index);
                row.last_contact_ms =
                    shared.metrics.peer_last_contact(peer.id).map(|ago| ago.as_millis() as u64);
            }
        }
    } else if let (true, Some(leader)) = (ask_leader, status.leader.filter(|&l| l != status.id)) {
        if let Some(view) = leader_view(api, leader).await {
            for row in &mut rows {
                if let Some(seen) = view.iter().find(|m| m["id"] == format!("{:016x}", row.id)) {
                    row.match_index = seen["match_index"].as_u64();
                    row.last_contact_ms = seen["last_contact_ms"].as_u64();
                }
            }
        }
    }
    let members: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            serde_json::json!({
                "id": format!("{:016x}", row.id),
                "address": row.address,
                "role": row.role.as_str(),
                "match_index": row.match_index,
                "last_contact_ms": row.last_contact_ms,
            })
        })
        .collect();
    serde_json::json!({
        "cluster_id": format!("{cluster_id:016x}"),
        "leader": status.leader.map(|id| format!("{id:016x}")),
        "members": members,
    })
}

/// Before the record is bootstrapped: the leader's configuration (itself and its
/// peers), or on a follower the members it started with, all voters (a bootstrap has
/// only voters). Addresses are the ones this node started with.
fn unrecorded_members(status: &Status, known: &HashMap<NodeId, String>) -> Vec<Row> {
    let name = |id: NodeId| known.get(&id).cloned().unwrap_or_else(|| format!("{id:016x}"));
    let row = |id: NodeId, role: MemberRole| Row {
        id,
        address: name(id),
        role,
        started: false,
        match_index: None,
        last_contact_ms: None,
    };
    let mut rows: Vec<Row> = if status.role == Role::Leader {
        let peers = status
            .peers
            .iter()
            .map(|p| row(p.id, if p.learner { MemberRole::Learner } else { MemberRole::Voter }));
        std::iter::once(row(status.id, MemberRole::Voter)).chain(peers).collect()
    } else {
        known.keys().map(|&id| row(id, MemberRole::Voter)).collect()
    };
    rows.sort_by_key(|row| row.id);
    rows
}

/// The leader's own view of the members, within `LEADER_VIEW_TIMEOUT`: asked on the
/// peer route `GET /raft/members` with this node's peer credentials (the cluster
/// secret, its id; over TLS its certificate), so a leader with `--auth-tokens` answers
/// it as any peer request. A leader of a release before that route answers 405: it is
/// asked `GET /v1/members?local=1` instead, as those releases did.
async fn leader_view(api: &Api, leader: NodeId) -> Option<Vec<serde_json::Value>> {
    let address = address_of(api, leader)?;
    let asked = async {
        match ask_view(api, &format!("http://{address}{PEER_PATH}"), true).await {
            Err(Some(StatusCode::METHOD_NOT_ALLOWED)) => {
                ask_view(api, &format!("http://{address}{PATH}?local=1"), false).await
            }
            answer => answer,
        }
    };
    match tokio::time::timeout(LEADER_VIEW_TIMEOUT, asked).await {
        Ok(Ok(view)) => Some(view),
        Ok(Err(status)) => {
            tracing::debug!(leader = %address, ?status, "the leader's view of the members could not be had");
            None
        }
        Err(_) => {
            tracing::debug!(leader = %address, "the leader's view of the members: no answer in time");
            None
        }
    }
}

/// One ask for a member view at `uri`, with the peer credentials if `as_peer`. Err:
/// the status of an answer that is not 200, or None for no usable answer.
async fn ask_view(api: &Api, uri: &str, as_peer: bool) -> Result<Vec<serde_json::Value>, Option<StatusCode>> {
    let mut request = Request::builder().method(Method::GET).uri(uri);
    if as_peer {
        for (name, value) in api.outbox.credentials().headers().map_err(|_| None)? {
            request = request.header(name, value);
        }
    }
    let request = request.body(Full::new(Bytes::new())).map_err(|_| None)?;
    let response = api.client.request(request).await.map_err(|_| None)?;
    if response.status() != StatusCode::OK {
        return Err(Some(response.status()));
    }
    let body = response.into_body().collect().await.map_err(|_| None)?.to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|_| None)?;
    value["members"].as_array().cloned().ok_or(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_hex_digits_name_a_member_by_id() {
        assert_eq!(MemberRef::parse("00000000000000ab"), Ok(MemberRef::Id(0xab)));
        assert_eq!(MemberRef::parse("DEADBEEFdeadbeef"), Ok(MemberRef::Id(0xdead_beef_dead_beef)));
        assert_eq!(MemberRef::parse(" 0123456789abcdef\n"), Ok(MemberRef::Id(0x0123_4567_89ab_cdef)));
    }

    #[test]
    fn anything_else_names_a_member_by_address_in_member_spelling() {
        assert_eq!(MemberRef::parse("127.0.0.1:3004"), Ok(MemberRef::Address("127.0.0.1:3004".into())));
        assert_eq!(
            MemberRef::parse("Node-4.Example:3004"),
            Ok(MemberRef::Address("node-4.example:3004".into()))
        );
        assert_eq!(MemberRef::parse("[::1]:3001"), Ok(MemberRef::Address("[::1]:3001".into())));
    }

    #[test]
    fn malformed_member_names_are_refused_with_a_reason() {
        for bad in
            ["", "abc", "0123456789abcde", "0123456789abcdef0", "host", "host:port", "host:70000", "a b:1"]
        {
            let error = MemberRef::parse(bad).expect_err(bad);
            assert!(error.contains("neither a member id"), "{bad:?}: {error}");
        }
        assert!(MemberRef::parse("0000000000000000").unwrap_err().contains("never a member's"));
        assert!(parse_id("127.0.0.1:3001").is_err());
    }

    #[test]
    fn a_change_needs_the_feature_of_the_entry_it_becomes() {
        use crate::server::driver::version::feature_of_change;
        let address = "127.0.0.1:3004".to_owned();
        let pairs = [
            (
                MemberOp::Add { address: address.clone(), learner: true },
                MemberChange::AddLearner { id: 7, address: address.clone(), promote_when_caught_up: false },
            ),
            (MemberOp::Promote(MemberRef::Id(7)), MemberChange::Promote { id: 7 }),
            (MemberOp::Remove(MemberRef::Id(7)), MemberChange::Remove { id: 7 }),
            (
                MemberOp::Update { id: 7, address: address.clone() },
                MemberChange::UpdateAddress { id: 7, address },
            ),
        ];
        for (op, change) in pairs {
            assert_eq!(op.feature(), feature_of_change(&change), "{op:?}");
        }
        assert_eq!(feature_of_change(&MemberChange::Started { id: 7 }), Feature::ClusterRecord);
        assert!(parse_id("000000000000000g").is_err());
    }

    #[test]
    fn an_unknown_member_is_an_error_naming_it() {
        let mut cluster = Cluster::default();
        cluster.bootstrap(7, &[(1, "a:1".into()), (2, "b:1".into())]).unwrap();
        cluster.apply(&MemberChange::Remove { id: 2 }).unwrap();
        assert_eq!(MemberRef::Address("a:1".into()).resolve(&cluster).unwrap(), 1);
        assert_eq!(MemberRef::Id(1).resolve(&cluster).unwrap(), 1);
        let message = |r: MemberRef| r.resolve(&cluster).unwrap_err().to_string();
        assert_eq!(message(MemberRef::Address("c:1".into())), "no member has address c:1");
        assert_eq!(message(MemberRef::Id(3)), "no member 0000000000000003");
        assert_eq!(message(MemberRef::Id(2)), "member 0000000000000002 was removed");
    }

    #[test]
    fn change_bodies_round_trip_and_malformed_ones_are_bad_requests() {
        let ops = [
            MemberOp::Add { address: "127.0.0.1:3004".into(), learner: true },
            MemberOp::Promote(MemberRef::Id(0xab)),
            MemberOp::Remove(MemberRef::Address("h:1".into())),
            MemberOp::Update { id: 5, address: "h:2".into() },
        ];
        for op in ops {
            assert_eq!(MemberOp::decode(&op.encode()).unwrap(), op);
        }
        let add = MemberOp::decode(br#"{"op":"add","address":"h:1"}"#).unwrap();
        assert_eq!(add, MemberOp::Add { address: "h:1".into(), learner: false }, "learner defaults to false");
        for bad in [
            &b"not json"[..],
            br#"{"op":"grow","address":"h:1"}"#,
            br#"{"address":"h:1"}"#,
            br#"{"op":"add"}"#,
            br#"{"op":"add","address":"nope"}"#,
            br#"{"op":"add","address":"h:1","extra":1}"#,
            br#"{"op":"promote","member":"x"}"#,
            br#"{"op":"update","id":"h:1","address":"h:2"}"#,
        ] {
            match MemberOp::decode(bad) {
                Err(ApiError::BadRequest(message)) => {
                    assert!(message.starts_with("membership change: "), "{message}")
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
    }

    #[test]
    fn fresh_ids_are_never_members_nor_removed() {
        let mut cluster = Cluster::default();
        cluster.bootstrap(7, &[(1, "a:1".into())]).unwrap();
        cluster
            .apply(&MemberChange::AddLearner { id: 2, address: "b:1".into(), promote_when_caught_up: false })
            .unwrap();
        cluster.apply(&MemberChange::Remove { id: 2 }).unwrap();
        let mut drawn = [0, 1, 2, 3, 9].into_iter();
        assert_eq!(
            fresh_id(&cluster, &[3], || drawn.next().unwrap()),
            9,
            "0, a member, a removed id, a known id"
        );
        let ids: std::collections::HashSet<u64> =
            (0..1000).map(|_| fresh_id(&cluster, &[], random_u64)).collect();
        assert_eq!(ids.len(), 1000, "random ids repeated");
    }
}
