//! The follower's end of a chunked snapshot transfer (`peer::snapshot`):
//! `POST /raft/snapshot/chunk` appends one chunk to the staging file and answers the
//! bytes held (`200`, or `409` when the chunk does not continue them), and
//! `POST /raft/snapshot/install` takes the InstallSnapshot message, without its data,
//! and hands it to the driver with the data mapped from the file. Both are peer routes:
//! the cluster secret, the peer's identity and its certificate are checked first, as
//! for `/raft/messages`.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, StatusCode};

use super::error::ApiError;
use super::{read_body, text, Api, Connection, HttpResponse};
use crate::raft::MessageBody;
use crate::server::peer::snapshot::{
    ReceiveError, TransferId, MAX_CHUNK_BYTES, OFFSET_HEADER, TRANSFER_HEADER,
};
use crate::server::peer::transport::{decode_peer_batch, SNAPSHOT_TIMEOUT};

/// The largest install body: one InstallSnapshot without its data (a configuration
/// of at most 1024 voters and 1024 learners).
const MAX_INSTALL_BYTES: usize = 1 << 20;

/// `POST /raft/snapshot/chunk`, once the peer is checked.
pub(super) async fn chunk(api: &Api, request: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let id = transfer(request.headers())?;
    let offset = header(request.headers(), OFFSET_HEADER)?
        .parse::<u64>()
        .map_err(|_| ApiError::BadRequest(format!("{OFFSET_HEADER} must be a byte offset")))?;
    let body = read_body(request, MAX_CHUNK_BYTES, api.body_timeout.max(SNAPSHOT_TIMEOUT)).await?;
    match api.incoming.chunk(id, offset, body, api.node.shared.clone()).await {
        Ok(held) => Ok(text(StatusCode::OK, Bytes::from(held.to_string()))),
        Err(ReceiveError::Conflict(held)) => Ok(text(StatusCode::CONFLICT, Bytes::from(held.to_string()))),
        Err(error) => Err(refusal(error)),
    }
}

/// `POST /raft/snapshot/install`, once the peer is checked.
pub(super) async fn install(
    api: &Api,
    connection: &Connection,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let id = transfer(request.headers())?;
    let body = read_body(request, MAX_INSTALL_BYTES, api.body_timeout).await?;
    let mut messages = decode_peer_batch(body).map_err(ApiError::BadRequest)?;
    if let Err(reason) = crate::server::peer::check_sender(&connection.sender, &messages) {
        tracing::warn!(peer = %connection.remote, %reason, "refused a snapshot install");
        return Err(ApiError::BadRequest(reason));
    }
    let [message] = &mut messages[..] else {
        return Err(ApiError::BadRequest(format!("an install carries one message, not {}", messages.len())));
    };
    let MessageBody::InstallSnapshot { snapshot } = &mut message.body else {
        return Err(ApiError::BadRequest(format!(
            "an install carries an InstallSnapshot, not {}",
            message.body.name()
        )));
    };
    if !snapshot.data.is_empty() || snapshot.meta.index != id.index || snapshot.meta.term != id.term {
        return Err(ApiError::BadRequest(format!(
            "the install's InstallSnapshot (index {}, term {}, {} bytes) is not the transfer's (index {}, term {}, no bytes)",
            snapshot.meta.index,
            snapshot.meta.term,
            snapshot.data.len(),
            id.index,
            id.term
        )));
    }
    snapshot.data = api.incoming.take_complete(id).await.map_err(refusal)?;
    api.node.shared.metrics.snapshot_transfers_completed.inc();
    tracing::info!(index = id.index, bytes = id.len, "received a snapshot in chunks");
    super::deliver(api, connection, messages).await
}

fn transfer(headers: &HeaderMap) -> Result<TransferId, ApiError> {
    TransferId::parse(header(headers, TRANSFER_HEADER)?).map_err(ApiError::BadRequest)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, ApiError> {
    headers
        .get(name)
        .ok_or_else(|| ApiError::BadRequest(format!("a snapshot transfer needs {name}")))?
        .to_str()
        .map_err(|_| ApiError::BadRequest(format!("{name} is not text")))
}

fn refusal(error: ReceiveError) -> ApiError {
    match error {
        ReceiveError::Bad(reason) => ApiError::BadRequest(reason),
        ReceiveError::Conflict(held) => ApiError::BadRequest(format!("the transfer holds {held} bytes")),
        ReceiveError::Storage(error) => ApiError::Storage(error.to_string()),
    }
}
