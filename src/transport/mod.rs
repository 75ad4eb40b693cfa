//! What travels between nodes. `codec` turns batches of `raft::Message` into the bodies
//! of peer HTTP requests and back; the HTTP client and server will live beside it.

#![deny(missing_docs)]

pub mod codec;
