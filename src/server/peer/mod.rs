//! The peer transport, both directions: `transport` sends Raft messages to each peer
//! (batches on the peer stream, snapshots and fallbacks by `POST /raft/messages`) and
//! forwards a follower's client writes to the leader (`POST /raft/propose`); `stream`
//! is the peer stream itself, sending and receiving length-prefixed frames; `snapshot`
//! the chunked snapshot transfer's rules and its receiving end. The
//! receiving routes are served by `api` on the same port and hand what they decode to
//! the driver (`driver::NodeHandle::deliver`). `connect` opens every connection to
//! another node, over TLS when the node has `--tls-ca`.

pub mod connect;
pub mod snapshot;
pub mod stream;
pub mod transport;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use crate::raft::{Message, NodeId};

/// The header naming the sender's cluster (16 hex digits), on every peer request once
/// the sender knows its cluster's id.
pub const CLUSTER_ID_HEADER: &str = "x-mmapd-cluster-id";
/// The header naming the sending node (16 hex digits), on every peer request.
pub const NODE_ID_HEADER: &str = "x-mmapd-node-id";
/// The header carrying the sender's advertised address (`HOST:PORT`), on every peer
/// request: a node whose member list is stale (down while members were replaced) can
/// answer a leader it has not heard of yet (thesis §4.1), as etcd's `X-PeerURLs` lets it.
pub const NODE_ADDRESS_HEADER: &str = "x-mmapd-node-address";
/// The header carrying the version the sender runs (`driver::version`, decimal), on
/// every peer request and probe; absent from releases before it (`OLDEST_VERSION`).
pub const VERSION_HEADER: &str = "x-mmapd-version";

/// What a node presents on every peer request: the cluster secret, if one is set, its
/// cluster's id (0 until the bootstrap record is applied here), its own id and address.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The cluster secret.
    pub secret: Option<Arc<Vec<u8>>>,
    /// This node's id.
    pub node_id: NodeId,
    /// This node's advertised address.
    pub address: String,
    /// The cluster's id as this node knows it; updated by the driver shell.
    pub cluster_id: Arc<AtomicU64>,
}

impl Credentials {
    /// The headers to put on a peer request. Err: the secret is not a valid header value
    /// (checked at start, so a bug).
    pub fn headers(&self) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
        let mut headers = Vec::with_capacity(4);
        if let Some(secret) = &self.secret {
            let value = HeaderValue::from_bytes(secret).map_err(|e| e.to_string())?;
            headers.push((HeaderName::from_static(transport::SECRET_HEADER), value));
        }
        let cluster_id = self.cluster_id.load(Ordering::Relaxed);
        if cluster_id != 0 {
            let value = HeaderValue::from_str(&format!("{cluster_id:016x}")).expect("hex is a valid header");
            headers.push((HeaderName::from_static(CLUSTER_ID_HEADER), value));
        }
        let value = HeaderValue::from_str(&format!("{:016x}", self.node_id)).expect("hex is a valid header");
        headers.push((HeaderName::from_static(NODE_ID_HEADER), value));
        let value = HeaderValue::from_str(&self.address).map_err(|e| e.to_string())?;
        headers.push((HeaderName::from_static(NODE_ADDRESS_HEADER), value));
        let value = HeaderValue::from(crate::server::driver::version::THIS_VERSION);
        headers.push((HeaderName::from_static(VERSION_HEADER), value));
        Ok(headers)
    }
}

/// The version a peer request says its sender runs: `OLDEST_VERSION` without the
/// header (a release before it); Err for one that is not a decimal number.
pub fn version_header(headers: &HeaderMap) -> Result<crate::server::driver::version::Version, String> {
    let Some(value) = headers.get(VERSION_HEADER) else {
        return Ok(crate::server::driver::version::OLDEST_VERSION);
    };
    let text = value.to_str().map_err(|_| format!("{VERSION_HEADER} is not text"))?;
    match text.parse() {
        Ok(version) if version >= 1 => Ok(version),
        _ => Err(format!("{VERSION_HEADER} must be a version number, got {text:?}")),
    }
}

/// A 16-hex-digit id header: `Ok(None)` when absent (a peer of an older version).
pub fn id_header(headers: &HeaderMap, name: &str) -> Result<Option<u64>, String> {
    let Some(value) = headers.get(name) else { return Ok(None) };
    let text = value.to_str().map_err(|_| format!("{name} is not text"))?;
    if text.len() != 16 {
        return Err(format!("{name} must be 16 hex digits, got {text:?}"));
    }
    u64::from_str_radix(text, 16).map(Some).map_err(|_| format!("{name} must be 16 hex digits, got {text:?}"))
}

/// Binds a connection to the one node it speaks for: the first message's sender.
/// Every later message on it must come from the same node, or the batch is refused
/// and the connection closed. (Which node that is may only be proven with mutual TLS,
/// the security issue's; this stops a buggy peer or a confused proxy from mixing
/// identities on one connection.)
pub(crate) fn check_sender(bound: &OnceLock<NodeId>, messages: &[Message]) -> Result<(), String> {
    let Some(first) = messages.first() else { return Ok(()) };
    let speaks_for = *bound.get_or_init(|| first.from);
    match messages.iter().find(|message| message.from != speaks_for) {
        None => Ok(()),
        Some(message) => Err(format!(
            "{} from node {} on a connection that speaks for node {speaks_for}",
            message.body.name(),
            message.from
        )),
    }
}
