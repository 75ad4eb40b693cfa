//! The commands the state machine applies, and their binary encoding (the payload of a
//! `Normal` Raft entry).
//!
//! Layout (integers little-endian; `bytes` = u32 length, then that many bytes):
//!
//! | offset | size | field                                              |
//! |--------|------|----------------------------------------------------|
//! | 0      | 1    | format version, `COMMAND_FORMAT_VERSION` (1)        |
//! | 1      | 1    | tag: 1 = Put, 2 = Delete, 3 = Import, 4 = Bootstrap, 5 = UpdateMember, 6 = MemberStarted, 7 = HashCheck, 8 = Compact, 9 = LeaseGrant, 10 = LeaseRevoke, 11 = Put with a lease, 12 = Txn |
//!
//! then, for Put: condition, key bytes, value bytes (tag 1 without a lease, as every
//! release writes it; tag 11 with one: the same, then u64 lease id); for Delete: condition, key bytes;
//! for Import: u32 pair count, then per pair key bytes, value bytes. A condition is one
//! tag byte (0 = None, 1 = VersionEquals followed by a u64 mod_revision, 2 = Absent). For
//! Bootstrap: u64 cluster id, u32 member count, per member u64 id and address bytes; for
//! UpdateMember: u64 id, address bytes; for MemberStarted: u64 id; HashCheck has no body;
//! for Compact: u64 revision; for LeaseGrant: u64 id, u64 TTL in seconds; for
//! LeaseRevoke: u64 id; for Txn: the transaction as `kv::txn`'s module doc lays it out.
//! Nothing may follow the command.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::DecodeError;
use super::txn::Txn;
use crate::byte_reader::ByteReader;

/// The first byte of every encoded command.
pub const COMMAND_FORMAT_VERSION: u8 = 1;

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_IMPORT: u8 = 3;
const TAG_BOOTSTRAP: u8 = 4;
const TAG_UPDATE_MEMBER: u8 = 5;
const TAG_MEMBER_STARTED: u8 = 6;
const TAG_HASH_CHECK: u8 = 7;
const TAG_COMPACT: u8 = 8;
const TAG_LEASE_GRANT: u8 = 9;
const TAG_LEASE_REVOKE: u8 = 10;
const TAG_PUT_WITH_LEASE: u8 = 11;
const TAG_TXN: u8 = 12;

const CONDITION_NONE: u8 = 0;
const CONDITION_VERSION_EQUALS: u8 = 1;
const CONDITION_ABSENT: u8 = 2;

/// The smallest encoded import pair: two empty length-prefixed byte strings.
const MIN_PAIR_BYTES: usize = 8;

/// A precondition on the key's current state, checked when the command is applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Condition {
    /// Unconditional.
    #[default]
    None,
    /// HTTP `If-Match`: the key exists and its `mod_revision` (the ETag) is this one.
    /// (The name is older than the revisions: the ETag used to be called the version.)
    VersionEquals(u64),
    /// HTTP `If-None-Match: *`: the key does not exist (create-only).
    Absent,
}

/// A change to the key-value map. Decoded from requests at the edge, replicated through
/// the log, applied by `StateMachine::apply`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Sets `key` to `value` if `condition` holds, attached to `lease` (0: none; a key
    /// written without a lease is detached from the one it had, as etcd's put). A lease
    /// that does not exist when the put applies fails it (`Outcome::LeaseNotFound`).
    Put {
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
        /// Checked against the key's current state.
        condition: Condition,
        /// The lease to attach the key to, 0 for none.
        lease: u64,
    },
    /// Removes `key` if `condition` holds.
    Delete {
        /// The key.
        key: Bytes,
        /// Checked against the key's current state.
        condition: Condition,
    },
    /// Bulk load (the original's `db.json`): sets every pair, in order, unconditionally.
    /// A key listed twice ends with its last value.
    Import {
        /// Key, value pairs.
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// The first leader's record of the cluster: its random id and first members.
    /// Applies once; a later one changes nothing.
    Bootstrap {
        /// The cluster's id, never 0.
        cluster_id: u64,
        /// The first members (voters) and their addresses.
        members: Vec<(u64, String)>,
    },
    /// A member now listens at another address.
    UpdateMember {
        /// The member.
        id: u64,
        /// Its new address.
        address: String,
    },
    /// The leader saw a member hold the log: its id must never come back with an empty
    /// data directory (`kv::Member::started`).
    MemberStarted {
        /// The member.
        id: u64,
    },
    /// Changes nothing: every node hashes its key-value state as it applies this entry
    /// (`mmapd-admin check`, a corruption check as etcd's HashKV), so the hashes of all
    /// members are of the state at one revision.
    HashCheck,
    /// Drops the history's events at or below `revision` (`kv::History::compact`; a
    /// revision above the applied index compacts to it, one at or below the current
    /// compaction point changes nothing). Through the log, so every node holds the same
    /// window of history.
    Compact {
        /// The new compaction point.
        revision: u64,
    },
    /// Creates lease `id` with a TTL of `ttl_s` seconds (`kv::Lease`), unless one with
    /// that id exists (`Outcome::LeaseExists`). The id is chosen before proposing (by
    /// the client, or at random by the node asked), so applying is deterministic.
    LeaseGrant {
        /// The lease's id, never 0.
        id: u64,
        /// Its TTL in seconds, as granted (already raised to the cluster's minimum).
        ttl_s: u64,
    },
    /// Removes lease `id` and deletes every key attached to it, all at this entry's
    /// revision (one delete event each, in key order). Proposed by a client (revoke) or
    /// by the leader when the lease expired: through the log, so every node deletes
    /// the same keys at the same revision.
    LeaseRevoke {
        /// The lease.
        id: u64,
    },
    /// A transaction (`kv::Txn`): compares, then the ops of one branch, all at this
    /// entry's revision.
    Txn(Txn),
}

impl Command {
    /// An unconditional put.
    pub fn put(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Command {
        Command::Put { key: key.into(), value: value.into(), condition: Condition::None, lease: 0 }
    }

    /// An unconditional delete.
    pub fn delete(key: impl Into<Bytes>) -> Command {
        Command::Delete { key: key.into(), condition: Condition::None }
    }

    /// The binary encoding (see the module doc).
    ///
    /// Panics if a key, value or pair count exceeds `u32::MAX`: the edge bounds request
    /// sizes long before that, so reaching it is a bug.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        out.put_u8(COMMAND_FORMAT_VERSION);
        match self {
            Command::Put { key, value, condition, lease } => {
                out.put_u8(if *lease == 0 { TAG_PUT } else { TAG_PUT_WITH_LEASE });
                put_condition(&mut out, *condition);
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
                if *lease != 0 {
                    out.put_u64_le(*lease);
                }
            }
            Command::Delete { key, condition } => {
                out.put_u8(TAG_DELETE);
                put_condition(&mut out, *condition);
                put_bytes(&mut out, key);
            }
            Command::Import { pairs } => {
                out.put_u8(TAG_IMPORT);
                out.put_u32_le(u32_len(pairs.len()));
                for (key, value) in pairs {
                    put_bytes(&mut out, key);
                    put_bytes(&mut out, value);
                }
            }
            Command::Bootstrap { cluster_id, members } => {
                out.put_u8(TAG_BOOTSTRAP);
                out.put_u64_le(*cluster_id);
                super::cluster::encode_members(&mut out, members);
            }
            Command::UpdateMember { id, address } => {
                out.put_u8(TAG_UPDATE_MEMBER);
                out.put_u64_le(*id);
                put_bytes(&mut out, address.as_bytes());
            }
            Command::MemberStarted { id } => {
                out.put_u8(TAG_MEMBER_STARTED);
                out.put_u64_le(*id);
            }
            Command::HashCheck => out.put_u8(TAG_HASH_CHECK),
            Command::Compact { revision } => {
                out.put_u8(TAG_COMPACT);
                out.put_u64_le(*revision);
            }
            Command::LeaseGrant { id, ttl_s } => {
                out.put_u8(TAG_LEASE_GRANT);
                out.put_u64_le(*id);
                out.put_u64_le(*ttl_s);
            }
            Command::LeaseRevoke { id } => {
                out.put_u8(TAG_LEASE_REVOKE);
                out.put_u64_le(*id);
            }
            Command::Txn(txn) => {
                out.put_u8(TAG_TXN);
                txn.encode_into(&mut out);
            }
        }
        debug_assert_eq!(out.len(), self.encoded_len());
        out.freeze()
    }

    /// Decodes an encoded command, copying `data` once. Never panics; allocates at most
    /// one copy of the input plus a pair vector no longer than the input could hold.
    pub fn decode(data: &[u8]) -> Result<Command, DecodeError> {
        Command::decode_shared(&Bytes::copy_from_slice(data))
    }

    /// Decodes an encoded command whose keys and values are slices of `data` (no copy):
    /// the form to use on an entry's payload.
    pub fn decode_shared(data: &Bytes) -> Result<Command, DecodeError> {
        let mut reader = ByteReader::new(data);
        let version = reader.u8()?;
        if version != COMMAND_FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion { offset: 0, version, reads: "version 1" });
        }
        let tag_offset = reader.offset();
        let command = match reader.u8()? {
            tag @ (TAG_PUT | TAG_PUT_WITH_LEASE) => {
                let condition = read_condition(&mut reader)?;
                let key = data.slice_ref(read_bytes(&mut reader)?);
                let value = data.slice_ref(read_bytes(&mut reader)?);
                let lease = if tag == TAG_PUT_WITH_LEASE {
                    let offset = reader.offset();
                    match reader.u64()? {
                        0 => {
                            return Err(DecodeError::Invalid {
                                offset,
                                reason: "lease id 0 in a put with a lease",
                            })
                        }
                        lease => lease,
                    }
                } else {
                    0
                };
                Command::Put { key, value, condition, lease }
            }
            TAG_DELETE => {
                let condition = read_condition(&mut reader)?;
                let key = data.slice_ref(read_bytes(&mut reader)?);
                Command::Delete { key, condition }
            }
            TAG_IMPORT => {
                let count_offset = reader.offset();
                let count = reader.u32()?;
                let available = reader.remaining();
                if count as usize > available / MIN_PAIR_BYTES {
                    return Err(DecodeError::CountTooLarge {
                        offset: count_offset,
                        count: count.into(),
                        available,
                    });
                }
                let mut pairs = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let key = data.slice_ref(read_bytes(&mut reader)?);
                    let value = data.slice_ref(read_bytes(&mut reader)?);
                    pairs.push((key, value));
                }
                Command::Import { pairs }
            }
            TAG_BOOTSTRAP => {
                let cluster_id = reader.u64()?;
                let members = super::cluster::decode_members(&mut reader)?;
                Command::Bootstrap { cluster_id, members }
            }
            TAG_UPDATE_MEMBER => {
                let id = reader.u64()?;
                let offset = reader.offset();
                let address = std::str::from_utf8(read_bytes(&mut reader)?)
                    .map_err(|_| DecodeError::Invalid { offset, reason: "member address is not UTF-8" })?;
                Command::UpdateMember { id, address: address.to_owned() }
            }
            TAG_MEMBER_STARTED => Command::MemberStarted { id: reader.u64()? },
            TAG_HASH_CHECK => Command::HashCheck,
            TAG_COMPACT => Command::Compact { revision: reader.u64()? },
            TAG_LEASE_GRANT => {
                let offset = reader.offset();
                let id = reader.u64()?;
                if id == 0 {
                    return Err(DecodeError::Invalid { offset, reason: "lease id 0" });
                }
                let ttl_offset = reader.offset();
                let ttl_s = reader.u64()?;
                if ttl_s == 0 || ttl_s > super::lease::MAX_LEASE_TTL_S {
                    return Err(DecodeError::Invalid {
                        offset: ttl_offset,
                        reason: "lease TTL outside 1..=MAX_LEASE_TTL_S",
                    });
                }
                Command::LeaseGrant { id, ttl_s }
            }
            TAG_LEASE_REVOKE => Command::LeaseRevoke { id: reader.u64()? },
            TAG_TXN => Command::Txn(Txn::decode(data, &mut reader)?),
            tag => return Err(DecodeError::UnknownTag { offset: tag_offset, what: "command", tag }),
        };
        if reader.remaining() != 0 {
            return Err(DecodeError::TrailingBytes { offset: reader.offset(), count: reader.remaining() });
        }
        Ok(command)
    }

    fn encoded_len(&self) -> usize {
        let header = 2;
        let condition_len = |condition: &Condition| match condition {
            Condition::VersionEquals(_) => 9,
            Condition::None | Condition::Absent => 1,
        };
        match self {
            Command::Put { key, value, condition, lease } => {
                let lease_len = if *lease == 0 { 0 } else { 8 };
                header + condition_len(condition) + 8 + key.len() + value.len() + lease_len
            }
            Command::Delete { key, condition } => header + condition_len(condition) + 4 + key.len(),
            Command::Import { pairs } => {
                header + 4 + pairs.iter().map(|(key, value)| 8 + key.len() + value.len()).sum::<usize>()
            }
            Command::Bootstrap { members, .. } => header + 8 + super::cluster::members_len(members),
            Command::UpdateMember { address, .. } => header + 8 + 4 + address.len(),
            Command::MemberStarted { .. } => header + 8,
            Command::HashCheck => header,
            Command::Compact { .. } | Command::LeaseRevoke { .. } => header + 8,
            Command::LeaseGrant { .. } => header + 16,
            Command::Txn(txn) => header + txn.encoded_len(),
        }
    }
}

fn u32_len(len: usize) -> u32 {
    u32::try_from(len).unwrap_or_else(|_| panic!("command field of {len} bytes exceeds u32::MAX"))
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32_le(u32_len(bytes.len()));
    out.put_slice(bytes);
}

fn put_condition(out: &mut BytesMut, condition: Condition) {
    match condition {
        Condition::None => out.put_u8(CONDITION_NONE),
        Condition::VersionEquals(version) => {
            out.put_u8(CONDITION_VERSION_EQUALS);
            out.put_u64_le(version);
        }
        Condition::Absent => out.put_u8(CONDITION_ABSENT),
    }
}

fn read_bytes<'a>(reader: &mut ByteReader<'a>) -> Result<&'a [u8], DecodeError> {
    let len = reader.u32()?;
    Ok(reader.bytes(len.into())?)
}

fn read_condition(reader: &mut ByteReader<'_>) -> Result<Condition, DecodeError> {
    let offset = reader.offset();
    match reader.u8()? {
        CONDITION_NONE => Ok(Condition::None),
        CONDITION_VERSION_EQUALS => Ok(Condition::VersionEquals(reader.u64()?)),
        CONDITION_ABSENT => Ok(Condition::Absent),
        tag => Err(DecodeError::UnknownTag { offset, what: "condition", tag }),
    }
}
