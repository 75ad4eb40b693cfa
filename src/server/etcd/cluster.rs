//! etcd's Cluster service: MemberList, MemberAdd, MemberRemove, MemberUpdate and
//! MemberPromote, over the membership changes of the admin socket (`api::members`):
//! the same `MemberOp`s, made by the leader (a follower forwards them once), on the
//! same replicated record.
//!
//! - A member's id is mmapd's 64-bit member id; its peer and client URLs are both
//!   `http(s)://ADDRESS` (one port serves peers and clients); its name is its address
//!   once the leader has seen it hold the log, empty before (etcd's "unstarted": a
//!   member added and not yet started has no name and no client URLs).
//! - MemberAdd takes exactly one peer URL: an mmapd member has one address. The new
//!   member's id is drawn by the leader, as `mmapd-admin member add` draws it; the node
//!   started there with `--join` is given that id. Without `isLearner` the member is
//!   added as a learner that the leader promotes once it has caught up (mmapd never
//!   adds a voter that has no log yet): it is listed as a learner until then.
//! - MemberUpdate moves a member to another address (one peer URL, as for an add).
//! - MemberPromote of a learner that has not caught up is refused with etcd's "can only
//!   promote a learner member which is in sync with leader".
//!
//! Changes are an operator's: with `--auth-tokens` they need a token that may write
//! every key; without tokens, a client certificate or a loopback connection, as the
//! membership peer routes accept them without a cluster secret (`join`).

use tonic::{Request, Response, Status};

use super::proto::etcdserverpb::{
    cluster_server::Cluster, Member, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use super::Front;
use crate::kv::{MemberId, MemberRole};
use crate::server::api::error::ApiError;
use crate::server::api::members::{self, MemberOp, MemberRef};
use crate::server::api::Connection;
use crate::server::auth::{Access, Need};
use crate::server::cli::member_address;
use crate::server::tls::Identity;

/// The address an etcd peer URL names: `http://HOST:PORT` or `https://HOST:PORT` (a
/// trailing `/` allowed), the address in `cli::member_address` spelling.
fn address_of_url(url: &str) -> Result<String, ApiError> {
    let bad = |reason: &str| ApiError::BadMemberUrls(format!("{url:?}: {reason}"));
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad("a peer URL is http://HOST:PORT or https://HOST:PORT"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(bad("a peer URL has no path, query or user"));
    }
    member_address(rest).map_err(|error| bad(&error.to_string()))
}

/// The one address of a request's peer URLs.
fn one_address(urls: &[String]) -> Result<String, ApiError> {
    match urls {
        [url] => address_of_url(url),
        _ => Err(ApiError::BadMemberUrls(format!(
            "{} peer URLs given: an mmapd member has exactly one address, so give one",
            urls.len()
        ))),
    }
}

/// A member id from a request: 0 is nobody's.
fn member_id(id: u64) -> Result<MemberId, Status> {
    if id == 0 {
        return Err(
            ApiError::NoSuchMember("member id 0000000000000000 is never a member's".into()).grpc_status()
        );
    }
    Ok(id)
}

impl Front {
    /// The URL a member is reached at: the node's scheme and the member's address.
    fn url(&self, address: &str) -> String {
        let scheme = if self.api.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{address}")
    }

    /// The members as this node's record has them, in id order.
    fn members(&self) -> Vec<Member> {
        let status = self.api.node.shared.status.lock().expect("status lock").clone();
        let (_, rows) = members::rows(&self.api, &status);
        rows.into_iter()
            .map(|row| {
                let url = self.url(&row.address);
                Member {
                    id: row.id,
                    name: if row.started { row.address.clone() } else { String::new() },
                    peer_ur_ls: vec![url.clone()],
                    client_ur_ls: if row.started { vec![url] } else { Vec::new() },
                    is_learner: row.role == MemberRole::Learner,
                }
            })
            .collect()
    }

    /// Makes `op` as `mmapd-admin member` makes it, then waits until this node's record
    /// has it (a read barrier): the members listed after it include the change. The
    /// member the change was about.
    async fn change(&self, op: MemberOp) -> Result<MemberId, Status> {
        let answer = members::change(&self.api, op).await.map_err(|e| e.grpc_status())?;
        let id = members::changed_id(&answer).map_err(|e| e.grpc_status())?;
        self.api.read_barrier("").await.map_err(|e| e.grpc_status())?;
        Ok(id)
    }

    /// A membership change's checks: the connection and, with `--auth-tokens`, a token
    /// that may write every key; without tokens, a certificate (a client's or a
    /// member's) or a loopback connection.
    fn check_change<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.check(request, &[Need::Prefix(b"", Access::Write)])?;
        if self.api.auth.is_some() {
            return Ok(());
        }
        let connection = request
            .extensions()
            .get::<Connection>()
            .ok_or_else(|| Status::internal("a call without its connection"))?;
        let certified = matches!(connection.identity, Identity::Client | Identity::Peer(_));
        if certified || crate::server::api::join::is_loopback(connection.remote.ip()) {
            return Ok(());
        }
        tracing::warn!(client = %connection.remote, "refused an etcd membership change from another host");
        Err(ApiError::Forbidden(format!(
            "membership changes from {} need a token (--auth-tokens) that may write every key, or a \
             client certificate; without either they are accepted from loopback only (or use \
             mmapd-admin member on the node)",
            connection.remote.ip()
        ))
        .grpc_status())
    }
}

#[tonic::async_trait]
impl Cluster for Front {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        self.check_change(&request)?;
        let request = request.into_inner();
        let address = one_address(&request.peer_ur_ls).map_err(|e| e.grpc_status())?;
        let id = self.change(MemberOp::Add { address: address.clone(), learner: request.is_learner }).await?;
        let members = self.members();
        let member = members.iter().find(|member| member.id == id).cloned().unwrap_or(Member {
            id,
            peer_ur_ls: vec![self.url(&address)],
            is_learner: true,
            ..Member::default()
        });
        Ok(Response::new(MemberAddResponse { header: self.header(0), member: Some(member), members }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.check_change(&request)?;
        let id = member_id(request.get_ref().id)?;
        self.change(MemberOp::Remove(MemberRef::Id(id))).await?;
        Ok(Response::new(MemberRemoveResponse { header: self.header(0), members: self.members() }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        self.check_change(&request)?;
        let request = request.into_inner();
        let id = member_id(request.id)?;
        let address = one_address(&request.peer_ur_ls).map_err(|e| e.grpc_status())?;
        self.change(MemberOp::Update { id, address }).await?;
        Ok(Response::new(MemberUpdateResponse { header: self.header(0), members: self.members() }))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        self.check(&request, &[Need::AnyToken])?;
        if request.get_ref().linearizable {
            self.api.read_barrier("").await.map_err(|e| e.grpc_status())?;
        }
        Ok(Response::new(MemberListResponse { header: self.header(0), members: self.members() }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.check_change(&request)?;
        let id = member_id(request.get_ref().id)?;
        self.change(MemberOp::Promote(MemberRef::Id(id))).await?;
        Ok(Response::new(MemberPromoteResponse { header: self.header(0), members: self.members() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_url_names_one_address_in_member_spelling() {
        assert_eq!(address_of_url("http://127.0.0.1:2380").unwrap(), "127.0.0.1:2380");
        assert_eq!(address_of_url("https://Node-4.Example:2380/").unwrap(), "node-4.example:2380");
        assert_eq!(address_of_url("http://[::1]:2380").unwrap(), "[::1]:2380");
        for bad in [
            "127.0.0.1:2380",
            "unix://sock",
            "http://",
            "http://host",
            "http://host:99999",
            "http://host:2380/path",
            "http://user@host:2380",
            "http://host:2380?x=1",
            "",
        ] {
            let error = address_of_url(bad).expect_err(bad);
            assert!(matches!(error, ApiError::BadMemberUrls(_)), "{bad:?}: {error:?}");
        }
    }

    #[test]
    fn a_member_has_exactly_one_peer_url() {
        assert_eq!(one_address(&["http://h:1".into()]).unwrap(), "h:1");
        for urls in [vec![], vec!["http://h:1".to_owned(), "http://h:2".to_owned()]] {
            let error = one_address(&urls).unwrap_err();
            assert!(error.to_string().contains("exactly one address"), "{error}");
            assert_eq!(error.grpc_status().code(), tonic::Code::InvalidArgument);
            assert!(error.grpc_status().message().starts_with("etcdserver: given member URLs are invalid"));
        }
    }

    #[test]
    fn member_id_zero_is_nobody() {
        assert_eq!(member_id(0).unwrap_err().code(), tonic::Code::NotFound);
        assert_eq!(member_id(7).unwrap(), 7);
    }
}
