//! The peer transport, both directions: `transport` sends Raft messages to each peer
//! (batches on the peer stream, snapshots and fallbacks by `POST /raft/messages`) and
//! forwards a follower's client writes to the leader (`POST /raft/propose`); `stream`
//! is the peer stream itself, sending and receiving length-prefixed frames. The
//! receiving routes are served by `api` on the same port and hand what they decode to
//! the driver (`driver::NodeHandle::deliver`).

pub mod stream;
pub mod transport;
