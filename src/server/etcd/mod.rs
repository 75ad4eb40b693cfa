//! The etcd v3 front: etcd's gRPC API on the client port, over the coordination API's
//! state machine (never a second one). HTTP/2 requests with a `application/grpc`
//! content type come here (`is_grpc`); everything else is the HTTP API's.
//!
//! Parts: `proto` (the generated messages and services), `kv` (Range, Put,
//! DeleteRange, Txn, Compact), `watch` (the Watch stream), `lease` (LeaseGrant,
//! LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive, LeaseLeases), `cluster` (MemberList,
//! MemberAdd, MemberRemove, MemberUpdate, MemberPromote), `maintenance` (Status,
//! Snapshot, MoveLeader, HashKV, …), `gateway` (the `/v3/*` JSON gateway, through these
//! same handlers). A call to a service or method
//! not served answers `Unimplemented` with a sentence saying what to use instead
//! (the Auth service: mmapd's tokens). What is served, and how it differs from etcd,
//! is in docs/etcd.md.
//!
//! Every call is checked as an HTTP client request is: the connection's TLS identity
//! first, then with `--auth-tokens` the `authorization: Bearer TOKEN` metadata against
//! the keys it touches. Errors become gRPC statuses in one place,
//! `ApiError::grpc_status`.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::{Request, Response};
use tonic::codegen::Service;

pub mod cluster;
pub mod gateway;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod proto;
pub mod watch;

use crate::server::api::{error::ApiError, Api, Connection};
use crate::server::auth::Need;
use proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer, ResponseHeader,
};

/// The most bytes one gRPC request message may carry: etcd's default request limit
/// (1.5 MiB) plus room for the envelope, or a value of the node's largest size.
fn max_message_bytes(api: &Api) -> usize {
    (api.max_value_bytes + api.max_key_bytes + 64 * 1024).max(2 * 1024 * 1024)
}

/// Whether `request` is a gRPC call: HTTP/2 with a `application/grpc…` content type.
pub fn is_grpc<B>(request: &Request<B>) -> bool {
    request.version() == hyper::Version::HTTP_2
        && request
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// What a call's handler needs: the node's API and the connection it came on.
#[derive(Clone)]
pub struct Front {
    api: Arc<Api>,
}

impl Front {
    /// The store's revision now.
    fn revision(&self) -> u64 {
        self.api.node.shared.kv.read().expect("kv lock").revision()
    }

    fn header(&self, revision: u64) -> Option<ResponseHeader> {
        let shared = &self.api.node.shared;
        let status = shared.status.lock().expect("status lock");
        Some(ResponseHeader {
            cluster_id: shared.cluster_id.load(std::sync::atomic::Ordering::Relaxed),
            member_id: status.id,
            revision: to_i64(revision),
            raft_term: status.term,
        })
    }

    /// The checks of every client request: the connection's certificate, then the
    /// token for each of `needs`.
    fn check<T>(&self, request: &tonic::Request<T>, needs: &[Need<'_>]) -> Result<(), tonic::Status> {
        let connection = request
            .extensions()
            .get::<Connection>()
            .ok_or_else(|| tonic::Status::internal("a call without its connection"))?;
        self.api.check_client_connection(connection).map_err(|e| e.grpc_status())?;
        let headers = request.metadata().clone().into_headers();
        for need in needs {
            self.api.authorize(&headers, *need).map_err(|e| e.grpc_status())?;
        }
        Ok(())
    }
}

/// A revision or count as etcd's `int64` fields carry it.
pub fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Serves one gRPC call. Never fails at the HTTP level: a call nobody serves gets a
/// gRPC `Unimplemented` status.
pub async fn serve<B>(
    api: Arc<Api>,
    connection: Connection,
    mut request: Request<B>,
) -> Result<Response<tonic::body::Body>, Infallible>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    api.node.shared.metrics.http_requests.inc();
    let limit = max_message_bytes(&api);
    request.extensions_mut().insert(connection);
    let front = Front { api };
    let path = request.uri().path().to_owned();
    let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match service {
        "etcdserverpb.KV" => KvServer::new(front).max_decoding_message_size(limit).call(request).await,
        "etcdserverpb.Watch" => WatchServer::new(front).max_decoding_message_size(limit).call(request).await,
        "etcdserverpb.Lease" => LeaseServer::new(front).max_decoding_message_size(limit).call(request).await,
        "etcdserverpb.Cluster" => {
            ClusterServer::new(front).max_decoding_message_size(limit).call(request).await
        }
        "etcdserverpb.Maintenance" => {
            MaintenanceServer::new(front).max_decoding_message_size(limit).call(request).await
        }
        "etcdserverpb.Auth" => Ok(auth_unimplemented().into_http()),
        _ => Ok(unimplemented(&format!("mmapd does not serve {path} (docs/etcd.md lists what it serves)"))),
    }
}

/// The Auth service's answer to every call (gRPC and gateway).
pub(crate) fn auth_unimplemented() -> tonic::Status {
    tonic::Status::unimplemented(
        "etcd's users and roles are not served: mmapd's client tokens (--auth-tokens) replace \
         them; pass a token as `authorization: Bearer TOKEN` metadata (docs/etcd.md)",
    )
}

fn unimplemented(message: &str) -> Response<tonic::body::Body> {
    tonic::Status::unimplemented(message).into_http()
}

/// An `ApiError` from a call's argument check.
pub(crate) fn invalid(message: impl Into<String>) -> tonic::Status {
    ApiError::BadRequest(message.into()).grpc_status()
}
