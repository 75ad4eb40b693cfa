//! The peer transport, both directions: `transport` sends Raft messages to each peer
//! (batches on the peer stream, snapshots and fallbacks by `POST /raft/messages`) and
//! forwards a follower's client writes to the leader (`POST /raft/propose`); `stream`
//! is the peer stream itself, sending and receiving length-prefixed frames. The
//! receiving routes are served by `api` on the same port and hand what they decode to
//! the driver (`driver::NodeHandle::deliver`).

pub mod stream;
pub mod transport;

use std::sync::OnceLock;

use crate::raft::{Message, NodeId};

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
