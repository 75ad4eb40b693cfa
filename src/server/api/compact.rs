//! `POST /v1/compact {"revision":N}`: drops the change history's events at or below
//! revision N on every node, through the log (`Command::Compact`). The leader also
//! compacts on its own past `--history-entries` or `--history-bytes`
//! (`DriverCore::maybe_compact_history`).
//!
//! A revision above this node's current one is refused (400): it names changes not
//! made yet. One at or below the compaction point is a no-op, answered as such without
//! proposing anything. Needs write access to every key: it takes history from every
//! watcher.

use bytes::Bytes;
use hyper::StatusCode;

use super::error::ApiError;
use super::{json, with_revision, Api, HttpResponse};
use crate::kv::{Command, Outcome};

/// The route.
pub const PATH: &str = "/v1/compact";

/// Parses `{"revision": N}`, N a positive integer.
fn parse_revision(body: &Bytes) -> Result<u64, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|error| ApiError::BadRequest(format!("the body is not JSON: {error}")))?;
    value.get("revision").and_then(serde_json::Value::as_u64).filter(|&revision| revision > 0).ok_or_else(
        || ApiError::BadRequest("the body must be {\"revision\": N}, N a positive integer".into()),
    )
}

/// Compacts the history to the revision in `body`:
/// `{"compacted": bool, "compact_revision": C, "revision": R}`.
pub(crate) async fn compact(api: &Api, body: &Bytes) -> Result<HttpResponse, ApiError> {
    let revision = parse_revision(body)?;
    // Linearizable: "above the current revision" is judged against everything committed.
    api.read_barrier("").await?;
    let (current, compact_revision) = {
        let kv = api.node.shared.kv.read().expect("kv lock");
        (kv.revision(), kv.history().compact_revision())
    };
    if revision > current {
        return Err(ApiError::BadRequest(format!(
            "revision {revision} is above the current revision {current}: it cannot be compacted yet"
        )));
    }
    if revision <= compact_revision {
        let body = serde_json::json!({
            "compacted": false,
            "compact_revision": compact_revision,
            "revision": current,
            "message": format!("the history is already compacted to revision {compact_revision}: nothing to do"),
        });
        return Ok(with_revision(json(StatusCode::OK, body), current));
    }
    let applied = api.write(Command::Compact { revision }).await?;
    match applied.outcome {
        Outcome::Compacted { compact_revision, moved } => {
            let body = serde_json::json!({
                "compacted": moved,
                "compact_revision": compact_revision,
                "revision": applied.index,
            });
            Ok(with_revision(json(StatusCode::OK, body), applied.index))
        }
        other => Err(ApiError::Internal(format!("the compaction applied as {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_must_name_a_positive_revision() {
        assert_eq!(parse_revision(&Bytes::from_static(br#"{"revision":7}"#)).unwrap(), 7);
        for body in [&br#"{"revision":0}"#[..], br#"{"revision":-1}"#, br#"{"revision":"7"}"#, b"{}", b"7x"] {
            assert!(
                parse_revision(&Bytes::copy_from_slice(body)).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
