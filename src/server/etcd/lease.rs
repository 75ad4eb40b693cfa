//! etcd's Lease service: LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive and
//! LeaseLeases, over the lease routes' functions (`api::leases`): the same commands of
//! the state machine, and the leader's clock asked the same way (a follower asks the
//! leader, which answers a keepalive once it has confirmed it still leads).
//!
//! - A lease id is mmapd's, as an `int64`: the ids the server chooses are in
//!   `1..=i64::MAX`, as etcd's; one a client chose keeps its 64 bits.
//! - A TTL below the least this cluster grants (1.5 × the election timeout, or 0 and
//!   negative TTLs) is raised to it, as etcd raises it to its minimum; one above
//!   `MAX_LEASE_TTL_S` is refused with etcd's "too large lease TTL".
//! - TTLs left are whole seconds rounded up (etcd rounds down).
//! - LeaseKeepAlive answers each request in turn, one at a time per stream: the TTL
//!   the lease has again, or 0 for a lease that is gone (as etcd does, and the stream
//!   goes on). An error of the leader's (none reachable within the request timeout)
//!   ends the stream with its status; etcd's clients open another.
//! - LeaseTimeToLive of a lease that is gone answers TTL -1, as etcd's; the keys asked
//!   for are read here after a read barrier, so they are the bytes the keys have.

use std::pin::Pin;

use futures_util::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::proto::etcdserverpb::{
    lease_server::Lease, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use super::{to_i64, Front};
use crate::server::api::error::ApiError;
use crate::server::api::leases::{self, Ask};
use crate::server::auth::{Access, Need};

/// A lease id from a request: etcd's `int64`, mmapd's `u64`, the same 64 bits.
fn lease_id(id: i64) -> u64 {
    id as u64
}

/// A whole number of seconds from the leader's answer.
fn seconds(answer: &serde_json::Value, field: &str) -> Result<i64, Status> {
    answer[field].as_u64().map(to_i64).ok_or_else(|| {
        ApiError::Internal(format!("the leader's lease answer has no {field}: {answer}")).grpc_status()
    })
}

impl Front {
    /// One keepalive: the TTL the lease has again, 0 if it is gone.
    async fn keepalive(&self, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
        // Before the renewal, as etcd's: a revision the keepalive happened after.
        let header = self.header(self.revision());
        let ttl = match lease_id(id) {
            0 => 0,
            id => match leases::ask_leader(&self.api, Ask::Keepalive, id).await {
                Ok(answer) => seconds(&answer, "ttl_s")?,
                Err(ApiError::LeaseNotFound(_)) => 0,
                Err(error) => return Err(error.grpc_status()),
            },
        };
        Ok(LeaseKeepAliveResponse { header, id, ttl })
    }
}

/// The stream of keepalive answers: one per request, in order.
type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Lease for Front {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        self.check(&request, &[Need::Prefix(b"", Access::Write)])?;
        let LeaseGrantRequest { ttl, id } = request.into_inner();
        let id = match lease_id(id) {
            0 => leases::random_lease_id(),
            chosen => chosen,
        };
        // A TTL of 0 or less is raised to the least, as etcd raises it.
        let requested_ttl_s = u64::try_from(ttl).unwrap_or(0);
        let granted =
            leases::grant_lease(&self.api, id, requested_ttl_s).await.map_err(|e| e.grpc_status())?;
        Ok(Response::new(LeaseGrantResponse {
            header: self.header(granted.revision),
            id: granted.id as i64,
            ttl: to_i64(granted.ttl_s),
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        self.check(&request, &[Need::Prefix(b"", Access::Write)])?;
        let id = lease_id(request.get_ref().id);
        if id == 0 {
            return Err(ApiError::LeaseNotFound(0).grpc_status());
        }
        let (_, revision) = leases::revoke_lease(&self.api, id).await.map_err(|e| e.grpc_status())?;
        Ok(Response::new(LeaseRevokeResponse { header: self.header(revision) }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.check(&request, &[Need::Prefix(b"", Access::Write)])?;
        let inbound = request.into_inner();
        // One request read, answered and its answer taken before the next is read: the
        // stream holds no queue, and HTTP/2's flow control holds the client back.
        let answers = futures_util::stream::unfold(Some((self.clone(), inbound)), |state| async move {
            let (front, mut inbound) = state?;
            match inbound.message().await {
                Ok(Some(asked)) => match front.keepalive(asked.id).await {
                    Ok(answer) => Some((Ok(answer), Some((front, inbound)))),
                    Err(status) => Some((Err(status), None)),
                },
                Ok(None) => None,
                // A message that does not decode, or a broken stream: ended with its status.
                Err(status) => Some((Err(status), None)),
            }
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        self.check(&request, &[Need::Prefix(b"", Access::Read)])?;
        let LeaseTimeToLiveRequest { id, keys } = request.into_inner();
        let gone = || LeaseTimeToLiveResponse {
            header: self.header(self.revision()),
            id,
            ttl: -1,
            granted_ttl: 0,
            keys: Vec::new(),
        };
        let answer = match lease_id(id) {
            0 => return Ok(Response::new(gone())),
            lease => match leases::ask_leader(&self.api, Ask::TimeToLive, lease).await {
                Ok(answer) => answer,
                Err(ApiError::LeaseNotFound(_)) => return Ok(Response::new(gone())),
                Err(error) => return Err(error.grpc_status()),
            },
        };
        let (ttl, granted_ttl) = (seconds(&answer, "ttl_s")?, seconds(&answer, "granted_ttl_s")?);
        let keys = if keys {
            self.api.read_barrier("").await.map_err(|e| e.grpc_status())?;
            let kv = self.api.node.shared.kv.read().expect("kv lock");
            kv.lease(lease_id(id))
                .map(|lease| lease.keys().map(|key| key.to_vec()).collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: self.header(self.revision()),
            id,
            ttl,
            granted_ttl,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.check(&request, &[Need::Prefix(b"", Access::Read)])?;
        let (leases, revision) = leases::leases(&self.api, "").await.map_err(|e| e.grpc_status())?;
        let leases = leases.into_iter().map(|(id, _)| LeaseStatus { id: id as i64 }).collect();
        Ok(Response::new(LeaseLeasesResponse { header: self.header(revision), leases }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_keep_their_64_bits_between_etcd_and_mmapd() {
        assert_eq!(lease_id(0x1234), 0x1234);
        assert_eq!(lease_id(-1), u64::MAX);
        assert_eq!(lease_id(i64::MIN) as i64, i64::MIN);
    }

    #[test]
    fn a_leader_answer_without_its_seconds_is_an_internal_error() {
        let answer = serde_json::json!({ "id": "00000000000000aa", "ttl_s": 7 });
        assert_eq!(seconds(&answer, "ttl_s").unwrap(), 7);
        let missing = seconds(&answer, "granted_ttl_s").unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Internal);
    }
}
