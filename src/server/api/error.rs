//! The daemon's errors and the one place they become HTTP status codes.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use thiserror::Error;

use crate::kv::ClusterError;
use crate::server::driver::NodeError;

/// Everything a request can fail with, from parsing to consensus.
#[derive(Debug, Clone, Error)]
pub enum ApiError {
    /// The request is malformed (bad percent-encoding, bad form, bad header).
    #[error("{0}")]
    BadRequest(String),
    /// The key or value is larger than allowed.
    #[error("{what} is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// "key" or "value" or "body".
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The client did not send its whole body in time.
    #[error("the request body did not arrive within {}", duration_text(*.0))]
    BodyTimeout(Duration),
    /// No such key.
    #[error("key not found")]
    NotFound,
    /// No such route.
    #[error("no such route")]
    NoRoute,
    /// The route exists but not with this method.
    #[error("method not allowed; allowed: {0}")]
    MethodNotAllowed(&'static str),
    /// If-Match / If-None-Match did not hold.
    #[error("{}", precondition_text(*current))]
    PreconditionFailed {
        /// The key's `mod_revision` (its ETag), if it exists.
        current: Option<u64>,
    },
    /// A peer request without the right cluster secret.
    #[error("peer request without a valid cluster secret")]
    Unauthorized,
    /// No leader or no quorum, and the write was certainly not applied: retrying it
    /// is safe (the daemon retries itself within the request timeout).
    #[error("{0}")]
    Unavailable(String),
    /// The write may or may not have been applied (the leader went away after it was
    /// sent, or the node is shutting down). Never retried automatically: a retry could
    /// apply a conditional write twice.
    #[error("{0}; the write may or may not have been applied")]
    OutcomeUnknown(String),
    /// A write waited its whole budget: it may have been proposed, so its outcome is
    /// unknown.
    #[error(
        "timed out after {} waiting for {}; the write may or may not have been applied",
        duration_text(*.0),
        .1
    )]
    Timeout(Duration, &'static str),
    /// A read waited its whole budget; it changed nothing and may be retried.
    #[error("timed out after {} waiting for {}; nothing was changed: retry", duration_text(*.0), .1)]
    ReadTimeout(Duration, &'static str),
    /// Not the leader, on a route that only the leader serves (admin step-down).
    #[error("not the leader (leader: {0})")]
    NotLeader(String),
    /// The disk failed under the write: it was not acknowledged.
    #[error("storage error: {0}")]
    Storage(String),
    /// The write would take the key-value data past `--quota-bytes`; it was not
    /// proposed. Deletes still work.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// A peer request from a node this cluster does not accept: another cluster's, or
    /// an id a committed configuration removed.
    #[error("{0}")]
    PeerRefused(String),
    /// A join this cluster will not take (an address a member that held the log has).
    #[error("{0}")]
    JoinRefused(String),
    /// A join sent to a node that is not the leader: ask the leader (`leader`, when known).
    #[error("not the leader; ask the leader")]
    Misdirected {
        /// The leader's address, if known.
        leader: Option<String>,
    },
    /// The request needs a cluster secret this node does not have configured (a peer
    /// route from another host).
    #[error("{0}")]
    Forbidden(String),
    /// No member has the id or address named.
    #[error("{0}")]
    NoSuchMember(String),
    /// A membership change refused by the cluster record or the Raft core (an address
    /// already listed, the last voter, a change pending, a learner not caught up, a
    /// transfer in progress, ...): nothing changed.
    #[error("{0}")]
    MemberChangeRefused(String),
    /// A leadership transfer (etcd's MoveLeader) refused: this node does not lead
    /// (`not_leader`), or the target is not another voter.
    #[error("{}: {reason}", if *not_leader { "etcdserver: not leader" } else { "etcdserver: bad leader transferee" })]
    TransferRefused { not_leader: bool, reason: String },
    /// A member's URLs that do not name one address (etcd's Cluster service): nothing
    /// changed.
    #[error("{0}")]
    BadMemberUrls(String),
    /// A promotion refused because the learner's log is not close to the leader's yet
    /// (thesis §4.2.1): a `MemberChangeRefused` that etcd's clients know by its own
    /// error. Nothing changed; retry once it has caught up.
    #[error("{0}")]
    LearnerNotCaughtUp(String),
    /// A promotion of a member that is not a learner: a `MemberChangeRefused` that
    /// etcd's clients know by its own error.
    #[error("{0}")]
    NotALearner(String),
    /// The connection lacks the certificate the route needs: a peer route without a
    /// certificate from `--tls-ca`, or a client route without one from `--client-ca`.
    #[error("{0}")]
    CertificateRequired(String),
    /// A client request without a valid bearer token, on a node with `--auth-tokens`.
    #[error("{0}")]
    TokenRequired(&'static str),
    /// A valid token without the grant the request needs.
    #[error("{0}")]
    TokenDenied(String),
    /// The request needs a feature the cluster version does not have yet (members that
    /// run an older release lag; `driver::version`): nothing was proposed, retry once
    /// every member is upgraded.
    #[error("{0}")]
    FeatureUnavailable(String),
    /// This node has no hash of its state at the revision asked for (`driver::hashes`).
    #[error("{0}")]
    HashUnavailable(String),
    /// A watch from a revision the history no longer holds (at or below its
    /// compaction point): read the current state and watch from `compact_revision + 1`.
    #[error("revision is compacted: the history holds only revisions above {compact_revision}")]
    Compacted {
        /// The history's compaction point.
        compact_revision: u64,
    },
    /// No lease has the id (never granted, revoked, or expired).
    #[error("lease {0:016x} not found: it was never granted, was revoked, or expired")]
    LeaseNotFound(u64),
    /// A grant named an id a lease already has: nothing changed.
    #[error("lease {0:016x} already exists")]
    LeaseExists(u64),
    /// A grant asked for more than `kv::MAX_LEASE_TTL_S` (etcd's `MaxLeaseTTL`).
    #[error("ttl_s {0} is above the most a lease may have, {max}", max = crate::kv::MAX_LEASE_TTL_S)]
    LeaseTtlTooLarge(u64),
    /// A bug or an unexpected failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<crate::server::auth::Denied> for ApiError {
    fn from(denied: crate::server::auth::Denied) -> ApiError {
        use crate::server::auth::Denied;
        match denied {
            Denied::Missing => ApiError::TokenRequired("this node requires `Authorization: Bearer TOKEN`"),
            Denied::Invalid => ApiError::TokenRequired("the bearer token is not valid"),
            Denied::Outside(reason) => ApiError::TokenDenied(reason),
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(error: ClusterError) -> ApiError {
        match error {
            ClusterError::NotAMember(_) => ApiError::NoSuchMember(error.to_string()),
            ClusterError::ZeroId => ApiError::BadRequest(error.to_string()),
            ClusterError::AlreadyMember(_)
            | ClusterError::Removed(_)
            | ClusterError::AddressTaken { .. }
            | ClusterError::AlreadyBootstrapped(_) => ApiError::MemberChangeRefused(error.to_string()),
        }
    }
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::LeaseTtlTooLarge(_) | ApiError::BadMemberUrls(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotFound | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            ApiError::Unauthorized | ApiError::TokenRequired(_) => StatusCode::UNAUTHORIZED,
            ApiError::TokenDenied(_) => StatusCode::FORBIDDEN,
            ApiError::Unavailable(_)
            | ApiError::OutcomeUnknown(_)
            | ApiError::Timeout(..)
            | ApiError::ReadTimeout(..)
            | ApiError::FeatureUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotLeader(_)
            | ApiError::MemberChangeRefused(_)
            | ApiError::LearnerNotCaughtUp(_)
            | ApiError::NotALearner(_)
            | ApiError::TransferRefused { .. } => StatusCode::CONFLICT,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NoSuchMember(_) | ApiError::HashUnavailable(_) | ApiError::LeaseNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::Storage(_) | ApiError::QuotaExceeded(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::PeerRefused(_) | ApiError::CertificateRequired(_) => StatusCode::FORBIDDEN,
            ApiError::JoinRefused(_) => StatusCode::CONFLICT,
            ApiError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            ApiError::Compacted { .. } => StatusCode::GONE,
            ApiError::LeaseExists(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) | ApiError::LeaseTtlTooLarge(_) | ApiError::BadMemberUrls(_) => {
                "bad_request"
            }
            ApiError::TooLarge { .. } => "too_large",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::NotFound => "not_found",
            ApiError::NoRoute => "no_route",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::PreconditionFailed { .. } => "precondition_failed",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::OutcomeUnknown(_) => "outcome_unknown",
            ApiError::Timeout(..) | ApiError::ReadTimeout(..) => "timeout",
            ApiError::NotLeader(_) => "not_leader",
            ApiError::Storage(_) => "storage",
            ApiError::QuotaExceeded(_) => "quota",
            ApiError::PeerRefused(_) => "peer_refused",
            ApiError::JoinRefused(_) => "join_refused",
            ApiError::Misdirected { .. } => "misdirected",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NoSuchMember(_) => "no_such_member",
            // The two refusals etcd names apart keep the HTTP code of every refusal; the
            // body's `refusal` field tells them apart (`refusal`, `from_leader`).
            ApiError::MemberChangeRefused(_) | ApiError::LearnerNotCaughtUp(_) | ApiError::NotALearner(_) => {
                "member_change_refused"
            }
            ApiError::TransferRefused { .. } => "transfer_refused",
            ApiError::CertificateRequired(_) => "certificate_required",
            ApiError::TokenRequired(_) => "token_required",
            ApiError::TokenDenied(_) => "token_denied",
            ApiError::FeatureUnavailable(_) => "feature_unavailable",
            ApiError::HashUnavailable(_) => "hash_unavailable",
            ApiError::Compacted { .. } => "compacted",
            ApiError::LeaseNotFound(_) => "lease_not_found",
            ApiError::LeaseExists(_) => "lease_exists",
            ApiError::Internal(_) => "internal",
        }
    }

    /// A membership change's failure in the driver. The leader checked first, so
    /// `Invalid` is the Raft core's refusal (the last voter, a change pending, not caught
    /// up, a transfer in progress, ...). Leadership lost before the change committed
    /// means it was not made: 503, retry.
    pub fn from_member_change(error: NodeError) -> ApiError {
        use crate::raft::ConfChangeError;
        match error {
            NodeError::Invalid(reason) => ApiError::MemberChangeRefused(reason),
            NodeError::ConfChange(refusal @ ConfChangeError::LearnerNotCaughtUp { .. }) => {
                ApiError::LearnerNotCaughtUp(refusal.to_string())
            }
            NodeError::ConfChange(refusal @ ConfChangeError::NotALearner { .. }) => {
                ApiError::NotALearner(refusal.to_string())
            }
            NodeError::ConfChange(refusal) => ApiError::MemberChangeRefused(refusal.to_string()),
            NodeError::NotLeader(_) | NodeError::NoLeader | NodeError::Dropped => ApiError::Unavailable(
                "leadership changed before the membership change committed; it was not made: retry".into(),
            ),
            other => super::node_error(other),
        }
    }

    /// A leadership transfer's failure in the driver (etcd's MoveLeader).
    pub fn from_transfer(error: NodeError) -> ApiError {
        match error {
            NodeError::Invalid(reason) => ApiError::TransferRefused { not_leader: false, reason },
            NodeError::NotLeader(leader) => ApiError::TransferRefused {
                not_leader: true,
                reason: match leader {
                    Some(leader) => format!("ask the leader, {leader:x}"),
                    None => "no leader is known".into(),
                },
            },
            NodeError::NoLeader => {
                ApiError::Unavailable("the leadership transfer did not finish in time".into())
            }
            other => super::node_error(other),
        }
    }

    /// The leader's error answer to a forwarded membership change, as this node's.
    pub fn from_leader(status: StatusCode, value: &serde_json::Value, address: &str) -> ApiError {
        let message = value["error"].as_str().unwrap_or("unknown").to_owned();
        match (status, value["code"].as_str().unwrap_or("")) {
            (StatusCode::CONFLICT, "member_change_refused") => match value[REFUSAL_FIELD].as_str() {
                Some(LEARNER_NOT_CAUGHT_UP) => ApiError::LearnerNotCaughtUp(message),
                Some(NOT_A_LEARNER) => ApiError::NotALearner(message),
                _ => ApiError::MemberChangeRefused(message),
            },
            (StatusCode::NOT_FOUND, "no_such_member") => ApiError::NoSuchMember(message),
            (StatusCode::BAD_REQUEST, _) => {
                ApiError::BadRequest(format!("the leader {address} refused: {message}"))
            }
            (StatusCode::FORBIDDEN, _) => {
                ApiError::Forbidden(format!("the leader {address} refused: {message}"))
            }
            (StatusCode::UNAUTHORIZED, _) => {
                ApiError::Internal(format!("the leader {address} refused our cluster secret"))
            }
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable") => ApiError::Unavailable(message),
            (StatusCode::SERVICE_UNAVAILABLE, "feature_unavailable") => ApiError::FeatureUnavailable(message),
            // Timed out, or lost: the leader's message says the outcome is unknown.
            (StatusCode::SERVICE_UNAVAILABLE, _) => {
                let message =
                    message.strip_suffix("; the write may or may not have been applied").unwrap_or(&message);
                ApiError::OutcomeUnknown(format!("the leader {address}: {message}"))
            }
            (StatusCode::INSUFFICIENT_STORAGE, _) => ApiError::Storage(message),
            _ => ApiError::Internal(format!("the leader {address} answered {status}: {message}")),
        }
    }

    /// The gRPC status for this error (the etcd front, `server::etcd`): etcd's code
    /// and, where etcd's clients recognise one, etcd's message, with ours after it.
    pub fn grpc_status(&self) -> tonic::Status {
        use tonic::Status;
        let ours = self.to_string();
        match self {
            ApiError::BadRequest(_) | ApiError::MethodNotAllowed(_) | ApiError::NoRoute => {
                Status::invalid_argument(ours)
            }
            ApiError::TooLarge { .. } => {
                Status::invalid_argument(format!("etcdserver: request is too large ({ours})"))
            }
            ApiError::BadMemberUrls(_) => {
                Status::invalid_argument(format!("etcdserver: given member URLs are invalid ({ours})"))
            }
            ApiError::BodyTimeout(_) | ApiError::ReadTimeout(..) => {
                Status::unavailable(format!("etcdserver: request timed out ({ours})"))
            }
            ApiError::Timeout(..) | ApiError::OutcomeUnknown(_) => Status::unavailable(format!(
                "etcdserver: request timed out, possibly due to previous leader failure ({ours})"
            )),
            ApiError::NotFound => Status::not_found(ours),
            ApiError::PreconditionFailed { .. } => Status::failed_precondition(ours),
            ApiError::Unauthorized | ApiError::TokenRequired(_) => Status::unauthenticated(ours),
            ApiError::TokenDenied(_)
            | ApiError::Forbidden(_)
            | ApiError::PeerRefused(_)
            | ApiError::CertificateRequired(_) => {
                Status::permission_denied(format!("etcdserver: permission denied ({ours})"))
            }
            ApiError::Unavailable(_) | ApiError::NotLeader(_) | ApiError::Misdirected { .. } => {
                Status::unavailable(format!("etcdserver: no leader ({ours})"))
            }
            ApiError::FeatureUnavailable(_) | ApiError::HashUnavailable(_) => Status::unavailable(ours),
            ApiError::Storage(_) => Status::internal(ours),
            ApiError::QuotaExceeded(_) => {
                Status::resource_exhausted(format!("etcdserver: mvcc: database space exceeded ({ours})"))
            }
            ApiError::JoinRefused(_)
            | ApiError::MemberChangeRefused(_)
            | ApiError::TransferRefused { .. } => Status::failed_precondition(ours),
            // etcd's exact messages: its clients know these by them (a promotion loop
            // retries on the first), and ours would make them unknown errors.
            ApiError::LearnerNotCaughtUp(_) => Status::failed_precondition(
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            ApiError::NotALearner(_) => {
                Status::failed_precondition("etcdserver: can only promote a learner member")
            }
            ApiError::NoSuchMember(_) => Status::not_found(format!("etcdserver: member not found ({ours})")),
            ApiError::Compacted { .. } => Status::out_of_range(format!(
                "etcdserver: mvcc: required revision has been compacted ({ours})"
            )),
            ApiError::LeaseNotFound(_) => Status::not_found("etcdserver: requested lease not found"),
            ApiError::LeaseExists(_) => Status::failed_precondition("etcdserver: lease already exists"),
            ApiError::LeaseTtlTooLarge(_) => Status::out_of_range("etcdserver: too large lease TTL"),
            ApiError::Internal(_) => Status::internal(ours),
        }
    }

    /// Which refusal of a membership change this is, for the ones etcd names apart:
    /// carried in the error body's `refusal` field, so that a follower that forwarded
    /// the change knows it again (`from_leader`).
    fn refusal(&self) -> Option<&'static str> {
        match self {
            ApiError::LearnerNotCaughtUp(_) => Some(LEARNER_NOT_CAUGHT_UP),
            ApiError::NotALearner(_) => Some(NOT_A_LEARNER),
            _ => None,
        }
    }

    /// The JSON body of the error response: `{"error": "...", "code": "..."}`, and
    /// what some errors add.
    pub fn body_json(&self) -> serde_json::Value {
        let mut body = serde_json::json!({ "error": self.to_string(), "code": self.code() });
        if let ApiError::Misdirected { leader } = self {
            body["leader"] = serde_json::json!(leader);
        }
        if let ApiError::Compacted { compact_revision } = self {
            body["compact_revision"] = serde_json::json!(compact_revision);
        }
        if let Some(refusal) = self.refusal() {
            body[REFUSAL_FIELD] = refusal.into();
        }
        body
    }

    /// The JSON error response: `body_json`, with its status and headers.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = self.body_json();
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match &self {
            ApiError::Unavailable(_)
            | ApiError::OutcomeUnknown(_)
            | ApiError::Timeout(..)
            | ApiError::ReadTimeout(..) => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::MethodNotAllowed(allowed) => {
                headers.insert(hyper::header::ALLOW, HeaderValue::from_static(allowed));
            }
            ApiError::TokenRequired(_) => {
                headers.insert(
                    hyper::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"mmapd\""),
                );
            }
            ApiError::PreconditionFailed { current: Some(version) } => {
                if let Ok(value) = HeaderValue::from_str(&format!("\"{version}\"")) {
                    headers.insert(hyper::header::ETAG, value);
                }
            }
            _ => {}
        }
        response
    }
}

/// The error body's field that names a refusal of a membership change, and its values.
const REFUSAL_FIELD: &str = "refusal";
const LEARNER_NOT_CAUGHT_UP: &str = "learner_not_caught_up";
const NOT_A_LEARNER: &str = "not_a_learner";

/// A duration as a user reads it: `5 s`, `250 ms`, `1.5 s`.
fn duration_text(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", duration.as_secs_f64())
    }
}

/// Why a conditional write was refused, with the key's current ETag.
fn precondition_text(current_mod_revision: Option<u64>) -> String {
    match current_mod_revision {
        Some(revision) => format!(
            "the condition did not hold: the key's mod_revision (its ETag) is {revision}; nothing was changed"
        ),
        None => "the condition did not hold: the key does not exist; nothing was changed".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages are sentences for users: no `Some(..)`, no `Duration` debug output, and a
    /// read that timed out says nothing of a write.
    #[test]
    fn error_messages_read_as_sentences_without_debug_output() {
        let precondition = ApiError::PreconditionFailed { current: Some(4) }.to_string();
        assert_eq!(
            precondition,
            "the condition did not hold: the key's mod_revision (its ETag) is 4; nothing was changed"
        );
        let absent = ApiError::PreconditionFailed { current: None }.to_string();
        assert_eq!(absent, "the condition did not hold: the key does not exist; nothing was changed");
        let read = ApiError::ReadTimeout(Duration::from_secs(5), "a leader to confirm the read").to_string();
        assert_eq!(
            read,
            "timed out after 5 s waiting for a leader to confirm the read; nothing was changed: retry"
        );
        let write = ApiError::Timeout(Duration::from_millis(1500), "the write to commit").to_string();
        assert_eq!(write, "timed out after 1.5 s waiting for the write to commit; the write may or may not have been applied");
        let body = ApiError::BodyTimeout(Duration::from_millis(250)).to_string();
        assert_eq!(body, "the request body did not arrive within 250 ms");
        for message in [precondition, absent, read, write, body] {
            assert!(!message.contains("Some(") && !message.contains("None"), "{message}");
        }
    }

    #[test]
    fn unavailable_answers_503_with_retry_after() {
        let response = ApiError::Unavailable("no leader".into()).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
    }

    #[test]
    fn quota_exceeded_answers_507_with_code_quota() {
        let error = ApiError::QuotaExceeded("the data would pass the quota".into());
        assert_eq!((error.status(), error.code()), (StatusCode::INSUFFICIENT_STORAGE, "quota"));
        assert!(error.to_string().starts_with("quota exceeded: "), "{error}");
    }

    #[test]
    fn every_error_has_a_4xx_or_5xx_status() {
        let errors = [
            ApiError::BadRequest("x".into()),
            ApiError::TooLarge { what: "key", size: 2, limit: 1 },
            ApiError::NotFound,
            ApiError::MethodNotAllowed("GET"),
            ApiError::PreconditionFailed { current: None },
            ApiError::Unauthorized,
            ApiError::Timeout(Duration::from_secs(5), "commit"),
            ApiError::QuotaExceeded("x".into()),
            ApiError::Forbidden("x".into()),
            ApiError::NoSuchMember("x".into()),
            ApiError::MemberChangeRefused("x".into()),
            ApiError::TokenRequired("x"),
            ApiError::TokenDenied("x".into()),
            ApiError::FeatureUnavailable("x".into()),
        ];
        for error in errors {
            let status = error.status();
            assert!(status.is_client_error() || status.is_server_error(), "{error}: {status}");
        }
    }

    #[test]
    fn refused_membership_changes_are_4xx_and_a_lost_leadership_is_503() {
        let taken = ClusterError::AddressTaken { id: 0xab, address: "h:1".into() };
        let error = ApiError::from(taken);
        assert_eq!((error.status(), error.code()), (StatusCode::CONFLICT, "member_change_refused"));
        assert_eq!(error.to_string(), "member 00000000000000ab already has address h:1; remove it first");
        assert_eq!(ApiError::from(ClusterError::NotAMember(3)).status(), StatusCode::NOT_FOUND);
        let last_voter = ApiError::from_member_change(NodeError::Invalid("node 1 is the last voter".into()));
        assert_eq!(
            (last_voter.status(), last_voter.to_string().as_str()),
            (StatusCode::CONFLICT, "node 1 is the last voter")
        );
        for lost in [NodeError::NotLeader(Some(2)), NodeError::NoLeader, NodeError::Dropped] {
            let error = ApiError::from_member_change(lost);
            assert!(matches!(error, ApiError::Unavailable(_)), "{error:?}");
            assert!(error.to_string().contains("it was not made"), "{error}");
        }
    }

    #[test]
    fn a_leader_refusing_a_forwarded_membership_change_is_the_same_refusal_here() {
        let forwarded = |error: ApiError| {
            let value = serde_json::json!({ "error": error.to_string(), "code": error.code() });
            ApiError::from_leader(error.status(), &value, "127.0.0.1:3001")
        };
        match forwarded(ApiError::MemberChangeRefused(
            "member 00000000000000ab already has address h:1".into(),
        )) {
            ApiError::MemberChangeRefused(message) => {
                assert!(message.contains("00000000000000ab"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(forwarded(ApiError::NoSuchMember("no member".into())), ApiError::NoSuchMember(_)));
        assert!(matches!(
            forwarded(ApiError::Unavailable("not the leader".into())),
            ApiError::Unavailable(_)
        ));
        let timeout = forwarded(ApiError::Timeout(Duration::from_secs(5), "the membership change to commit"));
        assert!(matches!(timeout, ApiError::OutcomeUnknown(_)), "{timeout:?}");
        assert_eq!(timeout.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(matches!(forwarded(ApiError::BadRequest("bad".into())), ApiError::BadRequest(_)));
    }

    /// The two refusals etcd's clients know by name keep the HTTP answer of every
    /// refusal (409 `member_change_refused`), are told apart by the body's `refusal`,
    /// and stay themselves when a follower forwarded the change.
    #[test]
    fn promotion_refusals_etcd_names_survive_a_forward_and_answer_etcds_errors() {
        use crate::raft::ConfChangeError;
        let behind =
            ApiError::from_member_change(NodeError::ConfChange(ConfChangeError::LearnerNotCaughtUp {
                match_index: 3,
                last_index: 90,
            }));
        let voter =
            ApiError::from_member_change(NodeError::ConfChange(ConfChangeError::NotALearner { node: 7 }));
        let pending =
            ApiError::from_member_change(NodeError::ConfChange(ConfChangeError::ChangePending { index: 4 }));
        assert!(matches!(pending, ApiError::MemberChangeRefused(_)), "{pending:?}");
        for (error, etcd) in [
            (behind, "etcdserver: can only promote a learner member which is in sync with leader"),
            (voter, "etcdserver: can only promote a learner member"),
        ] {
            assert_eq!((error.status(), error.code()), (StatusCode::CONFLICT, "member_change_refused"));
            let kind = std::mem::discriminant(&error);
            let response = error.into_response();
            let status = response.status();
            let body = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(http_body_util::BodyExt::collect(response.into_body()))
                .unwrap()
                .to_bytes();
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let again = ApiError::from_leader(status, &value, "127.0.0.1:3001");
            assert_eq!(std::mem::discriminant(&again), kind, "{again:?} from {value}");
            let status = again.grpc_status();
            assert_eq!(status.code(), tonic::Code::FailedPrecondition);
            assert_eq!(status.message(), etcd);
        }
    }

    #[test]
    fn lease_errors_answer_etcds_codes_and_messages() {
        let cases = [
            (ApiError::LeaseNotFound(5), tonic::Code::NotFound, "etcdserver: requested lease not found"),
            (ApiError::LeaseExists(5), tonic::Code::FailedPrecondition, "etcdserver: lease already exists"),
            (
                ApiError::LeaseTtlTooLarge(9_000_000_001),
                tonic::Code::OutOfRange,
                "etcdserver: too large lease TTL",
            ),
        ];
        for (error, code, message) in cases {
            let status = error.grpc_status();
            assert_eq!((status.code(), status.message()), (code, message), "{error:?}");
        }
        assert_eq!(ApiError::LeaseTtlTooLarge(1).status(), StatusCode::BAD_REQUEST);
    }
}
