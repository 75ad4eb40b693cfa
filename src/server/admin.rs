//! Local administration over a Unix socket (HTTP, served by hyper): `GET /status`,
//! `POST /msync`, `POST /step-down`, `POST /snapshot`, `POST /import`, `GET /members`
//! and `POST /members` (a change, made by the leader: see `api::members`), `POST /check`
//! (every member's hash of the state at one revision: see `api::check`), and
//! `GET /backup` (streamed: see `server::backup`).
//!
//! The socket is created with mode 0660: root and members of the socket's group
//! (`mmapd` under systemd) may use it; nobody else can connect.

use std::convert::Infallible;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::UnixListener;

use crate::kv::{import_command, parse_legacy_db_json, Outcome};

use super::api::error::ApiError;
use super::api::members;
use super::api::Api;
use super::driver::NodeError;

/// The largest db.json accepted by import.
const MAX_IMPORT_BYTES: usize = 1 << 30;
/// The most bytes of pairs in one imported Raft entry.
const IMPORT_CHUNK_BYTES: usize = 1 << 20;

/// Binds the admin socket with mode 0660, replacing a stale socket file but
/// refusing one that a live process still serves.
pub async fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        // Only a stale socket is replaced: a mistyped --admin-socket must not delete a file.
        if !metadata.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is served by another running mmapd", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Serves one admin request.
pub async fn serve(
    api: Arc<Api>,
    request: Request<Incoming>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    if request.uri().path() == super::backup::PATH {
        return Ok(match super::backup::serve(&api, &request).await {
            Ok(response) => response,
            Err(error) => error.into_response().map(BodyExt::boxed),
        });
    }
    let response = match route(&api, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    Ok(response.map(BodyExt::boxed))
}

async fn route(api: &Api, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let expect = |wanted: Method, allowed: &'static str| {
        if method == wanted {
            Ok(())
        } else {
            Err(ApiError::MethodNotAllowed(allowed))
        }
    };
    match path.as_str() {
        "/status" => {
            expect(Method::GET, "GET")?;
            Ok(json(api.status_json()))
        }
        "/msync" => {
            expect(Method::POST, "POST")?;
            let stats = api.node.msync().await.map_err(|e| admin_error(api, e))?;
            Ok(json(serde_json::json!({
                "bytes": stats.bytes,
                "msyncs": stats.msyncs,
                "seconds": stats.duration.as_secs_f64(),
            })))
        }
        "/step-down" => {
            expect(Method::POST, "POST")?;
            let leader = api.node.step_down().await.map_err(|e| admin_error(api, e))?;
            let address = api.node.shared.address_of(leader);
            Ok(json(serde_json::json!({
                "new_leader": address,
                "node_id": format!("{leader:016x}"),
                "new leader": address,
                "node id": leader,
            })))
        }
        "/snapshot" => {
            expect(Method::POST, "POST")?;
            let meta = api.node.snapshot().await.map_err(|e| admin_error(api, e))?;
            Ok(json(serde_json::json!({ "index": meta.index, "term": meta.term })))
        }
        "/import" => {
            expect(Method::POST, "POST")?;
            let body = Limited::new(request.into_body(), MAX_IMPORT_BYTES)
                .collect()
                .await
                .map_err(|e| ApiError::BadRequest(format!("reading the file: {e}")))?
                .to_bytes();
            // Parsing up to 1 GiB takes seconds: off the async workers, which also run the
            // driver and the peer senders (a worker held that long delays heartbeats).
            let pairs = tokio::task::spawn_blocking(move || parse_legacy_db_json(&body))
                .await
                .map_err(|e| ApiError::Internal(format!("parsing the file: {e}")))?
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            for (key, value) in &pairs {
                api.check_key_value(key.as_bytes(), value.as_bytes())?;
            }
            // One Raft entry per chunk: entries stay small enough to replicate and store
            // in pipelined batches. Chunks apply in order; a failure part-way leaves a
            // prefix imported, and running the import again is harmless.
            let count = pairs.len();
            let mut version = 0;
            let mut chunk = Vec::new();
            let mut chunk_bytes = 0;
            let mut pairs = pairs.into_iter().peekable();
            while let Some((key, value)) = pairs.next() {
                chunk_bytes += key.len() + value.len() + 8;
                chunk.push((key, value));
                if chunk_bytes >= IMPORT_CHUNK_BYTES || pairs.peek().is_none() {
                    let applied = api.write(import_command(std::mem::take(&mut chunk))).await?;
                    chunk_bytes = 0;
                    match applied.outcome {
                        Outcome::Imported { revision, .. } => version = revision,
                        other => return Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
                    }
                }
            }
            Ok(json(serde_json::json!({ "imported": count, "version": version })))
        }
        "/check" => {
            expect(Method::POST, "POST")?;
            Ok(json(super::api::check::check(api).await?))
        }
        "/members" => match method {
            Method::GET => Ok(json(members::list(api, true).await)),
            Method::POST => {
                let op = members::read_op(api, request).await?;
                Ok(json(members::change(api, op).await?))
            }
            _ => Err(ApiError::MethodNotAllowed("GET, POST")),
        },
        _ => Err(ApiError::NoRoute),
    }
}

fn admin_error(api: &Api, error: NodeError) -> ApiError {
    match error {
        NodeError::NotLeader(leader) => ApiError::NotLeader(match leader {
            Some(id) => api.node.shared.name(id),
            None => "none known".into(),
        }),
        other => super::api::node_error(other),
    }
}

fn json(value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
