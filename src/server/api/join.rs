//! The routes a node with an empty data directory talks to, and the identity check on
//! every peer request.
//!
//! - `GET /raft/cluster?asker=ID`: does the cluster exist, and what is `ID` in it (what
//!   `DriverCore::probe_answer` says; see `driver::start`). Authenticated by the
//!   cluster secret when one is set.
//! - `POST /raft/join` with `{"address":"HOST:PORT","learner":false}`: the leader adds
//!   the node as a learner under a fresh id (`DriverCore::join`) and answers what it
//!   needs to start. Authenticated by the cluster secret; without one, by a member's
//!   certificate (mutual TLS), else accepted from a loopback address only
//!   (`check_membership_peer`, as for the other membership routes). A follower answers
//!   421 naming the leader.
//! - every peer request carries the sender's cluster id and node id
//!   (`peer::Credentials`): another cluster's id, or a removed id, is refused with 403
//!   and logged with the remote address. Over TLS the sender's certificate must name
//!   the address of the member it claims to be (`Api::check_speaks_for`), and so must
//!   a prober's and a joining node's. A sender missing from this node's
//!   configuration is not refused: that configuration may be stale (thesis §4.1); its
//!   advertised address (`x-mmapd-node-address`) gets it a sender, so that this node's
//!   answers reach it (`peer::transport::Outbox::learn_peer`).

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Value};

use super::error::ApiError;
use super::{allow, json, node_error, query_field, read_body, Api, Connection, HttpResponse};
use crate::raft::{ConfState, NodeId};
use crate::server::cli::member_address;
use crate::server::driver::core::{JoinRequest, Joined};
use crate::server::driver::start::ProbeAnswer;
use crate::server::driver::NodeError;
use crate::server::peer::{
    id_header, version_header, CLUSTER_ID_HEADER, NODE_ADDRESS_HEADER, NODE_ID_HEADER,
};
use crate::server::tls::Identity;

/// The path of the probe.
pub const CLUSTER_PATH: &str = "/raft/cluster";
/// The path of a join.
pub const JOIN_PATH: &str = "/raft/join";
/// The largest join body.
const MAX_JOIN_BODY: usize = 4096;

/// Refuses a peer request from another cluster or from a removed id; learns where to
/// answer a sender this node's member list does not name.
pub(crate) fn check_peer_identity(
    api: &Api,
    connection: &Connection,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let refuse = |reason: String| {
        tracing::warn!(peer = %connection.remote, %reason, "refused a peer request");
        api.node.shared.metrics.peer_messages_refused.inc();
        Err(ApiError::PeerRefused(reason))
    };
    let theirs = match id_header(headers, CLUSTER_ID_HEADER) {
        Ok(id) => id,
        Err(reason) => return refuse(reason),
    };
    let ours = api.node.shared.cluster_id.load(Ordering::Relaxed);
    if let Some(theirs) = theirs {
        if ours != 0 && theirs != 0 && theirs != ours {
            return refuse(format!(
                "the sender is in cluster {theirs:016x}, this node in cluster {ours:016x}"
            ));
        }
    }
    let sender = match id_header(headers, NODE_ID_HEADER) {
        Ok(id) => id,
        Err(reason) => return refuse(reason),
    };
    let Some(sender) = sender else {
        if matches!(connection.identity, crate::server::tls::Identity::Peer(_)) {
            return refuse(format!("a peer request over TLS must carry {NODE_ID_HEADER}"));
        }
        return Ok(());
    };
    if matches!(connection.identity, crate::server::tls::Identity::Peer(_)) {
        // The certificate must name the member the request speaks for, and the
        // connection then speaks for that member only (its messages' senders included:
        // `peer::check_sender`).
        let claimed = headers.get(NODE_ADDRESS_HEADER).and_then(|value| value.to_str().ok());
        api.check_speaks_for(connection, Some(sender), claimed)?;
        let bound = *connection.sender.get_or_init(|| sender);
        if bound != sender {
            return refuse(format!(
                "a request from node {sender:016x} on a connection that speaks for node {bound:016x}"
            ));
        }
    }
    match version_header(headers) {
        Ok(version) => api.node.shared.report_version(sender, version),
        Err(reason) => return refuse(reason),
    }
    if api.node.shared.kv.read().expect("kv lock").cluster().is_removed(sender) {
        return refuse(format!(
            "node {sender:016x} was removed from the cluster; a removed id never comes back"
        ));
    }
    if !api.node.shared.is_member(sender) {
        // Not in this node's member list, which may be stale: answer it where it says.
        let address = headers.get(NODE_ADDRESS_HEADER).map(|value| value.to_str().map(member_address));
        match address {
            Some(Ok(Ok(address))) => {
                api.outbox.learn_peer(sender, &address);
            }
            Some(_) => return refuse(format!("{NODE_ADDRESS_HEADER} is not HOST:PORT")),
            None => {}
        }
    }
    Ok(())
}

/// The membership's peer routes (`POST /raft/join`, `POST /raft/members`, `GET
/// /raft/members`): the cluster secret when one is set; without one, a member's
/// certificate (mutual TLS authenticates the connection as the secret would) or a
/// loopback address: anyone else who reaches the port could add or change members, or
/// read them without a token. `what` names the route's business for the refusal.
pub(crate) fn check_membership_peer(
    api: &Api,
    connection: &Connection,
    headers: &HeaderMap,
    what: &str,
) -> Result<(), ApiError> {
    if api.secret.is_some() {
        return api.check_secret(headers);
    }
    if unauthenticated_peer_allowed(&connection.identity, connection.remote.ip()) {
        return Ok(());
    }
    tracing::warn!(peer = %connection.remote, "refused {what} from another host: no cluster secret is set and the connection has no member's certificate");
    Err(ApiError::PeerRefused(format!(
        "{what} from {} need a cluster secret (--cluster-secret-file) or mutual TLS (--tls-ca); without \
         either they are accepted from loopback only",
        connection.remote.ip()
    )))
}

/// Without a cluster secret, whether a connection may use the membership's peer
/// routes: one with a member's certificate, or one from a loopback address.
fn unauthenticated_peer_allowed(identity: &Identity, remote: IpAddr) -> bool {
    matches!(identity, Identity::Peer(_)) || is_loopback(remote)
}

/// Loopback, IPv4-mapped addresses included.
pub(crate) fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(v6.is_loopback(), |v4| v4.is_loopback()),
    }
}

/// `GET /raft/cluster?asker=ID`.
pub(crate) async fn probe(
    api: &Api,
    connection: &Connection,
    request: &Request<Incoming>,
    query: &str,
) -> Result<HttpResponse, ApiError> {
    allow(request.method(), &[Method::GET], "GET, HEAD")?;
    api.check_secret(request.headers())?;
    let asker = query_field(query, "asker")?
        .and_then(|raw| std::str::from_utf8(&raw).ok().and_then(|text| u64::from_str_radix(text, 16).ok()))
        .ok_or_else(|| ApiError::BadRequest("asker=ID (16 hex digits) is required".into()))?;
    // The asker's version is counted for it: over TLS, only if its certificate names it.
    let claimed = request.headers().get(NODE_ADDRESS_HEADER).and_then(|value| value.to_str().ok());
    api.check_speaks_for(connection, Some(asker), claimed)?;
    // A node about to start counts towards the cluster version (`driver::version`):
    // without it, a cluster record waiting for every member's version would wait for a
    // member that waits for the record.
    let version = version_header(request.headers()).map_err(ApiError::BadRequest)?;
    api.node.shared.report_version(asker, version);
    let answer = api.node.probe_answer(asker).await.map_err(node_error)?;
    Ok(json(StatusCode::OK, probe_to_json(answer)))
}

/// A probe answer as JSON: `{"state": ..., "cluster_id": "<16 hex>"|null, "started": bool}`.
pub fn probe_to_json(answer: ProbeAnswer) -> Value {
    let hex = |id: u64| json!(format!("{id:016x}"));
    match answer {
        ProbeAnswer::NoCluster => json!({"state": "no_cluster", "cluster_id": null, "started": false}),
        ProbeAnswer::Pending => json!({"state": "pending", "cluster_id": null, "started": false}),
        ProbeAnswer::Member { cluster_id, started } => {
            json!({"state": "member", "cluster_id": hex(cluster_id), "started": started})
        }
        ProbeAnswer::Removed { cluster_id } => {
            json!({"state": "removed", "cluster_id": hex(cluster_id), "started": false})
        }
        ProbeAnswer::NotMember { cluster_id } => {
            json!({"state": "not_member", "cluster_id": hex(cluster_id), "started": false})
        }
    }
}

/// Reads what `probe_to_json` wrote; `None` if it does not parse.
pub fn probe_from_json(value: &Value) -> Option<ProbeAnswer> {
    let cluster_id = || value.get("cluster_id")?.as_str().and_then(|t| u64::from_str_radix(t, 16).ok());
    Some(match value.get("state")?.as_str()? {
        "no_cluster" => ProbeAnswer::NoCluster,
        "pending" => ProbeAnswer::Pending,
        "member" => {
            ProbeAnswer::Member { cluster_id: cluster_id()?, started: value.get("started")?.as_bool()? }
        }
        "removed" => ProbeAnswer::Removed { cluster_id: cluster_id()? },
        "not_member" => ProbeAnswer::NotMember { cluster_id: cluster_id()? },
        _ => return None,
    })
}

/// `POST /raft/join`.
pub(crate) async fn join(
    api: &Api,
    connection: &Connection,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    allow(request.method(), &[Method::POST], "POST")?;
    check_membership_peer(api, connection, request.headers(), "joins")?;
    let body = read_body(request, MAX_JOIN_BODY, api.body_timeout).await?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("expected {{\"address\":\"HOST:PORT\"}}: {e}")))?;
    let address = value
        .get("address")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::BadRequest("\"address\": \"HOST:PORT\" is required".into()))?;
    let address =
        crate::server::cli::member_address(address).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // Over TLS the new member's certificate must name the address it joins under.
    api.check_speaks_for(connection, None, Some(&address))?;
    let learner = match value.get("learner") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(learner)) => *learner,
        Some(_) => return Err(ApiError::BadRequest("\"learner\" must be true or false".into())),
    };
    let join = JoinRequest { address: address.clone(), learner, candidate_id: crate::server::random_id() };
    let answer = tokio::time::timeout(api.request_timeout, api.node.join(join))
        .await
        .map_err(|_| ApiError::Timeout(api.request_timeout, "the new member's entry to commit"))?;
    match answer {
        Ok(joined) => {
            tracing::info!(peer = %connection.remote, %address, id = %format!("{:016x}", joined.id), "a node joined as a learner");
            Ok(json(StatusCode::OK, joined_to_json(&joined)))
        }
        Err(NodeError::NotLeader(leader)) => {
            Err(ApiError::Misdirected { leader: leader.and_then(|id| api.node.shared.address_of(id)) })
        }
        Err(NodeError::Invalid(reason)) => Err(ApiError::JoinRefused(reason)),
        Err(error @ NodeError::ConfChange(_)) => Err(ApiError::JoinRefused(error.to_string())),
        Err(error) => Err(node_error(error)),
    }
}

/// A join's answer as JSON.
pub fn joined_to_json(joined: &Joined) -> Value {
    let hex = |id: &NodeId| format!("{id:016x}");
    json!({
        "cluster_id": hex(&joined.cluster_id),
        "id": hex(&joined.id),
        "base": {
            "voters": joined.base.voters.iter().map(hex).collect::<Vec<_>>(),
            "learners": joined.base.learners.iter().map(hex).collect::<Vec<_>>(),
        },
        "members": joined.members.iter().map(|(id, address)| json!({"id": hex(id), "address": address})).collect::<Vec<_>>(),
    })
}

/// Reads what `joined_to_json` wrote, checking it: Err names what is wrong.
pub fn joined_from_json(value: &Value) -> Result<Joined, String> {
    let id = |value: Option<&Value>, what: &str| -> Result<u64, String> {
        value
            .and_then(Value::as_str)
            .and_then(|text| u64::from_str_radix(text, 16).ok())
            .filter(|id| *id != 0)
            .ok_or_else(|| format!("{what} is not a 16-hex-digit id"))
    };
    let ids = |value: Option<&Value>, what: &str| -> Result<Vec<u64>, String> {
        let list = value.and_then(Value::as_array).ok_or_else(|| format!("{what} is not a list"))?;
        list.iter().map(|item| id(Some(item), what)).collect()
    };
    let base = value.get("base").ok_or("base is missing")?;
    let base = ConfState {
        voters: ids(base.get("voters"), "base.voters")?,
        learners: ids(base.get("learners"), "base.learners")?,
    };
    if let Some(reason) = base.invalid_reason() {
        return Err(format!("base: {reason}"));
    }
    let members = value
        .get("members")
        .and_then(Value::as_array)
        .ok_or("members is not a list")?
        .iter()
        .map(|member| {
            let address = member.get("address").and_then(Value::as_str).ok_or("a member has no address")?;
            Ok((id(member.get("id"), "member id")?, address.to_owned()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Joined {
        cluster_id: id(value.get("cluster_id"), "cluster_id")?,
        id: id(value.get("id"), "id")?,
        base,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_includes_ipv4_mapped_addresses() {
        assert!(is_loopback("127.0.0.1".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("10.0.0.1".parse().unwrap()));
        assert!(!is_loopback("::ffff:10.0.0.1".parse().unwrap()));
    }

    /// Without a secret, a member's certificate stands for it off loopback (a cluster
    /// on mutual TLS alone can join and change members across machines); nothing else
    /// does.
    #[test]
    fn without_a_secret_a_members_certificate_or_loopback_may_use_the_membership_routes() {
        let member = Identity::Peer(std::sync::Arc::new(rustls::pki_types::CertificateDer::from(vec![1])));
        let other_host: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(unauthenticated_peer_allowed(&member, other_host));
        for identity in [Identity::Plain, Identity::Anonymous, Identity::Client] {
            assert!(!unauthenticated_peer_allowed(&identity, other_host), "{identity:?}");
            assert!(unauthenticated_peer_allowed(&identity, "127.0.0.2".parse().unwrap()), "{identity:?}");
        }
    }

    #[test]
    fn probe_answers_round_trip_through_json() {
        for answer in [
            ProbeAnswer::NoCluster,
            ProbeAnswer::Pending,
            ProbeAnswer::Member { cluster_id: 0xabc, started: true },
            ProbeAnswer::Member { cluster_id: 0xabc, started: false },
            ProbeAnswer::Removed { cluster_id: 7 },
            ProbeAnswer::NotMember { cluster_id: 7 },
        ] {
            assert_eq!(probe_from_json(&probe_to_json(answer)), Some(answer));
        }
        assert_eq!(probe_from_json(&json!({"state": "member"})), None);
    }

    #[test]
    fn a_join_answer_round_trips_and_a_bad_one_is_refused() {
        let joined = Joined {
            cluster_id: 0xc1,
            id: 0x99,
            base: ConfState { voters: vec![1, 2, 3], learners: vec![] },
            members: vec![(1, "a:1".into()), (2, "b:1".into()), (3, "c:1".into()), (0x99, "d:1".into())],
        };
        assert_eq!(joined_from_json(&joined_to_json(&joined)), Ok(joined.clone()));
        let mut unsorted = joined_to_json(&joined);
        unsorted["base"]["voters"] = json!(["0000000000000003", "0000000000000001"]);
        assert!(joined_from_json(&unsorted).is_err());
        let mut zero = joined_to_json(&joined);
        zero["id"] = json!("0000000000000000");
        assert!(joined_from_json(&zero).is_err());
    }
}
