//! `GET /backup` on the admin socket: the key-value state at one revision, streamed as
//! a backup file (`kv::encode_backup`, format in `docs/format.md`).
//!
//! Linearizable: the node first waits for a read barrier, as a `/v1` read does (thesis
//! §6.4: the leader confirms its read index, and this node applies up to it), then takes
//! the state machine's frozen copy (an O(1) clone of the persistent map) at the index it
//! has applied, which is the backup's revision. So the backup holds at least every write
//! acknowledged before the request arrived, on a follower too, and the driver goes on
//! applying to its own map meanwhile.
//!
//! Memory stays bounded whatever the size: the copy is encoded on a blocking thread,
//! one chunk at a time, into a channel of `CHUNKS_IN_FLIGHT` chunks that the response
//! body drains; a slow reader stops the encoder, a reader that goes away ends it.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response};
use tokio::sync::mpsc;

use super::api::error::ApiError;
use super::api::Api;

/// The admin route.
pub const PATH: &str = "/backup";
/// The header naming the backup's revision, sent before the body.
pub const REVISION_HEADER: &str = "x-mmapd-revision";
/// Chunks encoded ahead of the reader, at most (each about `kv` backup's
/// `CHUNK_TARGET_BYTES`, 1 MiB).
const CHUNKS_IN_FLIGHT: usize = 2;

/// A response body fed by a channel of chunks: ends when the sender is dropped.
struct ChunkBody {
    chunks: mpsc::Receiver<Bytes>,
}

impl Body for ChunkBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.chunks.poll_recv(cx).map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// Serves `GET /backup` (no parameters, no body): a backup at a linearizable revision.
pub async fn serve(
    api: &Api,
    request: &Request<Incoming>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, ApiError> {
    if request.method() != Method::GET {
        return Err(ApiError::MethodNotAllowed("GET"));
    }
    if request.uri().query().is_some() {
        return Err(ApiError::BadRequest(format!("{PATH} takes no parameters")));
    }
    let (revision, chunks) = start(api).await?;
    let mut response = Response::new(ChunkBody { chunks }.boxed());
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    response.headers_mut().insert(REVISION_HEADER, HeaderValue::from(revision));
    Ok(response)
}

/// Starts a backup at a linearizable revision: the revision and the channel its chunks
/// arrive on, in order (the backup is whole when the channel ends; a receiver dropped
/// early abandons it). Also etcd's Maintenance.Snapshot (`server::etcd`).
pub async fn start(api: &Api) -> Result<(u64, mpsc::Receiver<Bytes>), ApiError> {
    api.read_barrier("").await?;
    // O(1): shares the map's nodes; the driver's next writes copy the nodes they touch.
    let machine = api.node.shared.kv.read().expect("kv lock").clone();
    let revision = machine.applied_index();
    let node_id = api.node.id;
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let (sender, chunks) = mpsc::channel(CHUNKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        match crate::kv::encode_backup(&machine, node_id, created, |chunk| sender.blocking_send(chunk)) {
            Ok(summary) => tracing::info!(%summary, "backup served"),
            Err(_) => tracing::warn!(revision, "backup abandoned: the reader went away"),
        }
    });
    Ok((revision, chunks))
}
