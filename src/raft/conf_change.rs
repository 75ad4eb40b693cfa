//! Single-server configuration changes (thesis §4.1): what an `EntryKind::Config` entry
//! carries, its byte encoding, and how it changes a `ConfState`.
//!
//! Encoding (little-endian), version 1:
//!
//! ```text
//! offset 0   1 byte   version = 1
//! offset 1   1 byte   kind: 0 AddLearner, 1 Promote, 2 Remove
//! offset 2   8 bytes  node id (never 0)
//! offset 10  4 bytes  context length n (at most MAX_CONTEXT_BYTES)
//! offset 14  n bytes  context, opaque to Raft
//! ```
//!
//! The length must be exactly `14 + n`. Decoding never panics: bad bytes are a
//! `ConfChangeDecodeError`.

use bytes::Bytes;
use thiserror::Error;

use super::entry::{ConfState, NodeId};

/// The version byte `ConfChange::encode` writes.
pub const CONF_CHANGE_VERSION: u8 = 1;
/// The most bytes a change's context may hold.
pub const MAX_CONTEXT_BYTES: usize = 64 << 10;
/// Version, kind, node id, context length.
const HEADER_BYTES: usize = 1 + 1 + 8 + 4;
const _: () = assert!(HEADER_BYTES == 14);
const _: () = assert!(MAX_CONTEXT_BYTES <= u32::MAX as usize);

/// What a change does to one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConfChangeKind {
    /// Adds a node that is not a member as a learner: it receives the log, never votes.
    AddLearner = 0,
    /// Makes a learner a voter (thesis §4.2.1: once it has caught up).
    Promote = 1,
    /// Removes a voter or a learner.
    Remove = 2,
}

impl ConfChangeKind {
    /// Decodes a kind tag; `None` for an unknown tag.
    pub fn from_tag(tag: u8) -> Option<ConfChangeKind> {
        match tag {
            0 => Some(ConfChangeKind::AddLearner),
            1 => Some(ConfChangeKind::Promote),
            2 => Some(ConfChangeKind::Remove),
            _ => None,
        }
    }

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            ConfChangeKind::AddLearner => "add-learner",
            ConfChangeKind::Promote => "promote",
            ConfChangeKind::Remove => "remove",
        }
    }
}

/// One single-server change, the data of an `EntryKind::Config` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfChange {
    /// What happens to `node`.
    pub kind: ConfChangeKind,
    /// The node changed. Never 0.
    pub node: NodeId,
    /// Opaque to Raft: the daemon puts the member's address and metadata here.
    pub context: Bytes,
}

/// Why bytes are not an encoded `ConfChange`.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ConfChangeDecodeError {
    /// Fewer bytes than the fixed header.
    #[error("configuration change of {len} bytes is shorter than its {HEADER_BYTES}-byte header")]
    Truncated {
        /// The length found.
        len: usize,
    },
    /// A version this build does not read.
    #[error("unsupported configuration change version {0}")]
    UnsupportedVersion(u8),
    /// A kind tag with no meaning.
    #[error("unknown configuration change kind {0}")]
    UnknownKind(u8),
    /// Node ids start at 1.
    #[error("configuration change names node 0")]
    ZeroNode,
    /// The context is longer than `MAX_CONTEXT_BYTES`.
    #[error("configuration change context of {len} bytes exceeds the limit of {MAX_CONTEXT_BYTES}")]
    ContextTooLarge {
        /// The length declared.
        len: u64,
    },
    /// The declared context length does not match the bytes present.
    #[error("configuration change declares {declared} context bytes but {present} follow its header")]
    LengthMismatch {
        /// The length declared.
        declared: u64,
        /// The bytes present after the header.
        present: usize,
    },
}

impl ConfChange {
    /// Encodes the change. Panics if the context exceeds `MAX_CONTEXT_BYTES` or the node
    /// is 0: `Raft::propose_conf_change` refuses both before encoding.
    pub fn encode(&self) -> Bytes {
        assert!(self.node != 0, "conf change names node 0");
        assert!(
            self.context.len() <= MAX_CONTEXT_BYTES,
            "conf change context of {} bytes",
            self.context.len()
        );
        let mut out = Vec::with_capacity(HEADER_BYTES + self.context.len());
        out.push(CONF_CHANGE_VERSION);
        out.push(self.kind as u8);
        out.extend_from_slice(&self.node.to_le_bytes());
        out.extend_from_slice(&(self.context.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.context);
        Bytes::from(out)
    }

    /// Decodes a change; the context is a slice of `data`, not a copy.
    pub fn decode(data: &Bytes) -> Result<ConfChange, ConfChangeDecodeError> {
        if data.len() < HEADER_BYTES {
            return Err(ConfChangeDecodeError::Truncated { len: data.len() });
        }
        if data[0] != CONF_CHANGE_VERSION {
            return Err(ConfChangeDecodeError::UnsupportedVersion(data[0]));
        }
        let kind = ConfChangeKind::from_tag(data[1]).ok_or(ConfChangeDecodeError::UnknownKind(data[1]))?;
        let node = u64::from_le_bytes(data[2..10].try_into().expect("8 bytes"));
        if node == 0 {
            return Err(ConfChangeDecodeError::ZeroNode);
        }
        let declared = u32::from_le_bytes(data[10..14].try_into().expect("4 bytes")) as u64;
        if declared > MAX_CONTEXT_BYTES as u64 {
            return Err(ConfChangeDecodeError::ContextTooLarge { len: declared });
        }
        let present = data.len() - HEADER_BYTES;
        if declared != present as u64 {
            return Err(ConfChangeDecodeError::LengthMismatch { declared, present });
        }
        Ok(ConfChange { kind, node, context: data.slice(HEADER_BYTES..) })
    }

    /// The configuration after this change, or `None` if it does not apply to `conf`
    /// (adding a member, promoting a non-learner, removing a non-member or the last
    /// voter). A leader refuses such changes before proposing them; one found in a log
    /// anyway changes nothing.
    pub fn apply_to(&self, conf: &ConfState) -> Option<ConfState> {
        let mut next = conf.clone();
        match self.kind {
            ConfChangeKind::AddLearner => {
                if conf.is_member(self.node) {
                    return None;
                }
                insert_sorted(&mut next.learners, self.node);
            }
            ConfChangeKind::Promote => {
                if !conf.is_learner(self.node) {
                    return None;
                }
                next.learners.retain(|&l| l != self.node);
                insert_sorted(&mut next.voters, self.node);
            }
            ConfChangeKind::Remove => {
                if !conf.is_member(self.node) || conf.voters == [self.node] {
                    return None;
                }
                next.voters.retain(|&v| v != self.node);
                next.learners.retain(|&l| l != self.node);
            }
        }
        Some(next)
    }
}

fn insert_sorted(ids: &mut Vec<NodeId>, id: NodeId) {
    if let Err(at) = ids.binary_search(&id) {
        ids.insert(at, id);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn change(kind: ConfChangeKind, node: NodeId, context: &'static [u8]) -> ConfChange {
        ConfChange { kind, node, context: Bytes::from_static(context) }
    }

    #[test]
    fn bad_bytes_are_typed_errors() {
        let good = change(ConfChangeKind::Promote, 7, b"10.0.0.7:3001").encode();
        assert_eq!(ConfChange::decode(&Bytes::new()), Err(ConfChangeDecodeError::Truncated { len: 0 }));
        let mut bytes = good.to_vec();
        bytes[0] = 9;
        assert_eq!(
            ConfChange::decode(&Bytes::from(bytes)),
            Err(ConfChangeDecodeError::UnsupportedVersion(9))
        );
        let mut bytes = good.to_vec();
        bytes[1] = 3;
        assert_eq!(ConfChange::decode(&Bytes::from(bytes)), Err(ConfChangeDecodeError::UnknownKind(3)));
        let mut bytes = good.to_vec();
        bytes[2..10].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(ConfChange::decode(&Bytes::from(bytes)), Err(ConfChangeDecodeError::ZeroNode));
        let mut bytes = good.to_vec();
        bytes[10..14].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            ConfChange::decode(&Bytes::from(bytes)),
            Err(ConfChangeDecodeError::ContextTooLarge { len: u32::MAX as u64 })
        );
        let mut bytes = good.to_vec();
        bytes.push(0);
        assert_eq!(
            ConfChange::decode(&Bytes::from(bytes)),
            Err(ConfChangeDecodeError::LengthMismatch { declared: 13, present: 14 })
        );
        for len in 0..good.len() {
            assert!(ConfChange::decode(&good.slice(..len)).is_err(), "truncation to {len} decoded");
        }
    }

    #[test]
    fn changes_that_do_not_apply_change_nothing() {
        let conf = ConfState { voters: vec![1, 2], learners: vec![3] };
        assert_eq!(change(ConfChangeKind::AddLearner, 2, b"").apply_to(&conf), None);
        assert_eq!(change(ConfChangeKind::AddLearner, 3, b"").apply_to(&conf), None);
        assert_eq!(change(ConfChangeKind::Promote, 1, b"").apply_to(&conf), None);
        assert_eq!(change(ConfChangeKind::Remove, 4, b"").apply_to(&conf), None);
        let single = ConfState::with_voters(vec![1]);
        assert_eq!(change(ConfChangeKind::Remove, 1, b"").apply_to(&single), None);
        let added = change(ConfChangeKind::AddLearner, 4, b"").apply_to(&conf).unwrap();
        assert_eq!(added, ConfState { voters: vec![1, 2], learners: vec![3, 4] });
        let promoted = change(ConfChangeKind::Promote, 3, b"").apply_to(&conf).unwrap();
        assert_eq!(promoted, ConfState { voters: vec![1, 2, 3], learners: vec![] });
        let removed = change(ConfChangeKind::Remove, 1, b"").apply_to(&promoted).unwrap();
        assert_eq!(removed, ConfState { voters: vec![2, 3], learners: vec![] });
    }

    fn arb_change() -> impl Strategy<Value = ConfChange> {
        (0u8..3, 1u64..=u64::MAX, prop::collection::vec(any::<u8>(), 0..64)).prop_map(
            |(kind, node, context)| ConfChange {
                kind: ConfChangeKind::from_tag(kind).unwrap(),
                node,
                context: Bytes::from(context),
            },
        )
    }

    proptest! {
        #[test]
        fn every_change_round_trips(change in arb_change()) {
            prop_assert_eq!(ConfChange::decode(&change.encode()), Ok(change));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let data = Bytes::from(bytes);
            if let Ok(change) = ConfChange::decode(&data) {
                prop_assert_eq!(change.encode(), data);
            }
        }
    }
}
