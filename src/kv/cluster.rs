//! The cluster's own record, replicated through the log like the keys: its id, its
//! members' addresses and roles, and every id ever removed (ids are never reused).
//!
//! The Raft core keeps who votes (its `ConfState`); this record keeps what operators and
//! peers need besides: where each member listens, and which ids are gone for good. It is
//! changed only by committed entries, in log order, so every node holds the same record,
//! and it travels in the state machine's snapshot.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, BytesMut};

use super::error::DecodeError;
use crate::byte_reader::ByteReader;

/// A member's id: 64 bits, shown as 16 hex digits. Never 0.
pub type MemberId = u64;

/// Whether a member votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemberRole {
    /// Votes and counts for commit.
    Voter,
    /// Receives the log, serves stale reads, does not vote.
    Learner,
}

impl MemberRole {
    /// `"voter"` or `"learner"`, as the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Voter => "voter",
            MemberRole::Learner => "learner",
        }
    }
}

/// One member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// `host:port` peers and clients reach it at.
    pub address: String,
    /// Whether it votes.
    pub role: MemberRole,
    /// A learner the leader promotes once it has caught up (added without `--learner`).
    pub promote_when_caught_up: bool,
    /// The leader saw it hold the log (it acknowledged entries). From then on it may have
    /// voted and counted for commits, so a node with an empty data directory must never
    /// come back under this id (RAFT-NOTES #18): it is removed and joins anew.
    pub started: bool,
}

/// A change to the member list, applied when its entry commits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// A new member joins as a learner.
    AddLearner {
        /// Its id, fresh: never a member's and never removed.
        id: MemberId,
        /// Its address.
        address: String,
        /// Promote it once it has caught up.
        promote_when_caught_up: bool,
    },
    /// A learner becomes a voter.
    Promote {
        /// The learner.
        id: MemberId,
    },
    /// A member leaves for good; its id is never accepted again.
    Remove {
        /// The member.
        id: MemberId,
    },
    /// A member now listens at another address.
    UpdateAddress {
        /// The member.
        id: MemberId,
        /// Its new address.
        address: String,
    },
    /// The leader saw the member hold the log (see `Member::started`).
    Started {
        /// The member.
        id: MemberId,
    },
}

/// The cluster's record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    /// The cluster's id, chosen at random when it was bootstrapped; 0 until the first
    /// leader's bootstrap entry is applied.
    id: u64,
    /// The members. Invariant: no id in `removed`; no two with the same address.
    members: BTreeMap<MemberId, Member>,
    /// Every id ever removed.
    removed: BTreeSet<MemberId>,
}

/// Why a change does not apply. Every node refuses the same committed change the same
/// way, so the replicas stay identical; the proposer checks first and rarely sees one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// The id is already a member.
    #[error("member {0:016x} already exists")]
    AlreadyMember(MemberId),
    /// The id was removed and never comes back.
    #[error("member {0:016x} was removed; a removed id is never reused")]
    Removed(MemberId),
    /// No member has this id.
    #[error("no member {0:016x}")]
    NotAMember(MemberId),
    /// Another member has this address.
    #[error("member {id:016x} already has address {address}; remove it first")]
    AddressTaken {
        /// The member that has it.
        id: MemberId,
        /// The address.
        address: String,
    },
    /// The cluster was bootstrapped already.
    #[error("the cluster is already bootstrapped as {0:016x}")]
    AlreadyBootstrapped(u64),
    /// Id 0 is never a member's, nor a cluster's.
    #[error("id 0 is not valid")]
    ZeroId,
}

impl Cluster {
    /// The cluster's id (0 until bootstrapped).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The members, by id.
    pub fn members(&self) -> &BTreeMap<MemberId, Member> {
        &self.members
    }

    /// True if `id` was removed.
    pub fn is_removed(&self, id: MemberId) -> bool {
        self.removed.contains(&id)
    }

    /// Every removed id.
    pub fn removed(&self) -> &BTreeSet<MemberId> {
        &self.removed
    }

    /// The member with this address.
    pub fn by_address(&self, address: &str) -> Option<(MemberId, &Member)> {
        self.members.iter().find(|(_, m)| m.address == address).map(|(id, m)| (*id, m))
    }

    /// Records the bootstrap: the cluster's id and its first members, all voters.
    pub fn bootstrap(&mut self, id: u64, members: &[(MemberId, String)]) -> Result<(), ClusterError> {
        if self.id != 0 {
            return Err(ClusterError::AlreadyBootstrapped(self.id));
        }
        if id == 0 || members.iter().any(|(member, _)| *member == 0) {
            return Err(ClusterError::ZeroId);
        }
        let mut next = self.clone();
        next.id = id;
        for (member, address) in members {
            next.check_new(*member, address)?;
            let member_record = Member {
                address: address.clone(),
                role: MemberRole::Voter,
                promote_when_caught_up: false,
                started: false,
            };
            next.members.insert(*member, member_record);
        }
        *self = next;
        Ok(())
    }

    /// The record of a new one-node cluster `id` made from this one, offline
    /// (`mmapd-admin restore` and `force-new-cluster`): `member` at `address` is its only
    /// member, a voter that holds the log; every other member, and every id ever
    /// removed, is removed, so that none of them is accepted back under its old id.
    pub fn refounded(&self, id: u64, member: MemberId, address: &str) -> Result<Cluster, ClusterError> {
        if id == 0 || member == 0 {
            return Err(ClusterError::ZeroId);
        }
        if self.removed.contains(&member) {
            return Err(ClusterError::Removed(member));
        }
        let mut removed = self.removed.clone();
        removed.extend(self.members.keys().copied().filter(|&other| other != member));
        let kept = Member {
            address: address.to_owned(),
            role: MemberRole::Voter,
            promote_when_caught_up: false,
            started: true,
        };
        Ok(Cluster { id, members: BTreeMap::from([(member, kept)]), removed })
    }

    /// Whether `change` would apply, without applying it.
    pub fn check(&self, change: &MemberChange) -> Result<(), ClusterError> {
        match change {
            MemberChange::AddLearner { id, address, .. } => self.check_new(*id, address),
            MemberChange::Promote { id } | MemberChange::Remove { id } | MemberChange::Started { id } => {
                self.members.get(id).map(|_| ()).ok_or(ClusterError::NotAMember(*id))
            }
            MemberChange::UpdateAddress { id, address } => {
                if !self.members.contains_key(id) {
                    return Err(ClusterError::NotAMember(*id));
                }
                match self.by_address(address) {
                    Some((other, _)) if other != *id => {
                        Err(ClusterError::AddressTaken { id: other, address: address.clone() })
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    /// Applies `change`, or refuses it and changes nothing.
    pub fn apply(&mut self, change: &MemberChange) -> Result<(), ClusterError> {
        self.check(change)?;
        match change {
            MemberChange::AddLearner { id, address, promote_when_caught_up } => {
                let member = Member {
                    address: address.clone(),
                    role: MemberRole::Learner,
                    promote_when_caught_up: *promote_when_caught_up,
                    started: false,
                };
                self.members.insert(*id, member);
            }
            MemberChange::Promote { id } => {
                if let Some(member) = self.members.get_mut(id) {
                    member.role = MemberRole::Voter;
                    member.promote_when_caught_up = false;
                }
            }
            MemberChange::Remove { id } => {
                self.members.remove(id);
                self.removed.insert(*id);
            }
            MemberChange::UpdateAddress { id, address } => {
                if let Some(member) = self.members.get_mut(id) {
                    member.address = address.clone();
                }
            }
            MemberChange::Started { id } => {
                if let Some(member) = self.members.get_mut(id) {
                    member.started = true;
                }
            }
        }
        Ok(())
    }

    fn check_new(&self, id: MemberId, address: &str) -> Result<(), ClusterError> {
        if id == 0 {
            return Err(ClusterError::ZeroId);
        }
        if self.removed.contains(&id) {
            return Err(ClusterError::Removed(id));
        }
        if self.members.contains_key(&id) {
            return Err(ClusterError::AlreadyMember(id));
        }
        if let Some((other, _)) = self.by_address(address) {
            return Err(ClusterError::AddressTaken { id: other, address: address.to_owned() });
        }
        Ok(())
    }

    /// Appends the record's snapshot section: u64 id, u32 member count, per member u64
    /// id, u8 role (low bits: 0 voter, 1 learner, 2 learner to promote once caught up;
    /// bit 7: started), u32 length and address bytes; u32 removed count, u64 per
    /// removed id.
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let mut buf = BytesMut::new();
        buf.put_u64_le(self.id);
        buf.put_u32_le(self.members.len() as u32);
        for (id, member) in &self.members {
            buf.put_u64_le(*id);
            let role = match (member.role, member.promote_when_caught_up) {
                (MemberRole::Voter, _) => 0,
                (MemberRole::Learner, false) => 1,
                (MemberRole::Learner, true) => 2,
            };
            buf.put_u8(role | if member.started { STARTED_BIT } else { 0 });
            buf.put_u32_le(member.address.len() as u32);
            buf.put_slice(member.address.as_bytes());
        }
        buf.put_u32_le(self.removed.len() as u32);
        for id in &self.removed {
            buf.put_u64_le(*id);
        }
        out.extend_from_slice(&buf);
    }

    /// Reads a section written by `encode`, checking its invariants.
    pub(super) fn decode(reader: &mut ByteReader<'_>) -> Result<Cluster, DecodeError> {
        let id = reader.u64()?;
        let mut cluster = Cluster { id, ..Cluster::default() };
        let count_offset = reader.offset();
        let count = reader.u32()?;
        if count as usize > reader.remaining() / 13 {
            return Err(DecodeError::CountTooLarge {
                offset: count_offset,
                count: count.into(),
                available: reader.remaining(),
            });
        }
        for _ in 0..count {
            let offset = reader.offset();
            let member = reader.u64()?;
            let role_byte = reader.u8()?;
            let started = role_byte & STARTED_BIT != 0;
            let (role, promote_when_caught_up) = match role_byte & !STARTED_BIT {
                0 => (MemberRole::Voter, false),
                1 => (MemberRole::Learner, false),
                2 => (MemberRole::Learner, true),
                tag => return Err(DecodeError::UnknownTag { offset: offset + 8, what: "member role", tag }),
            };
            let len = reader.u32()?;
            let address = std::str::from_utf8(reader.bytes(len.into())?)
                .map_err(|_| DecodeError::Invalid { offset, reason: "member address is not UTF-8" })?
                .to_owned();
            cluster.check_new(member, &address).map_err(|_| DecodeError::Invalid {
                offset,
                reason: "member id 0, repeated, or address taken",
            })?;
            cluster.members.insert(member, Member { address, role, promote_when_caught_up, started });
        }
        let count_offset = reader.offset();
        let count = reader.u32()?;
        if count as usize > reader.remaining() / 8 {
            return Err(DecodeError::CountTooLarge {
                offset: count_offset,
                count: count.into(),
                available: reader.remaining(),
            });
        }
        for _ in 0..count {
            let offset = reader.offset();
            let removed = reader.u64()?;
            if removed == 0 || cluster.members.contains_key(&removed) || !cluster.removed.insert(removed) {
                return Err(DecodeError::Invalid {
                    offset,
                    reason: "removed id 0, repeated, or still a member",
                });
            }
        }
        Ok(cluster)
    }
}

/// The role byte's bit for `Member::started`.
const STARTED_BIT: u8 = 0x80;

/// Encodes `members` for a bootstrap command: u32 count, then per member u64 id and the
/// address as u32 length and bytes.
pub(super) fn encode_members(out: &mut BytesMut, members: &[(MemberId, String)]) {
    out.put_u32_le(members.len() as u32);
    for (id, address) in members {
        out.put_u64_le(*id);
        out.put_u32_le(address.len() as u32);
        out.put_slice(address.as_bytes());
    }
}

/// Reads what `encode_members` wrote.
pub(super) fn decode_members(reader: &mut ByteReader<'_>) -> Result<Vec<(MemberId, String)>, DecodeError> {
    let count_offset = reader.offset();
    let count = reader.u32()?;
    if count as usize > reader.remaining() / 12 {
        return Err(DecodeError::CountTooLarge {
            offset: count_offset,
            count: count.into(),
            available: reader.remaining(),
        });
    }
    let mut members = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let offset = reader.offset();
        let id = reader.u64()?;
        let len = reader.u32()?;
        let address = std::str::from_utf8(reader.bytes(len.into())?)
            .map_err(|_| DecodeError::Invalid { offset, reason: "member address is not UTF-8" })?;
        members.push((id, address.to_owned()));
    }
    Ok(members)
}

/// The encoded length of `members` (see `encode_members`).
pub(super) fn members_len(members: &[(MemberId, String)]) -> usize {
    4 + members.iter().map(|(_, address)| 12 + address.len()).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Cluster {
        let mut cluster = Cluster::default();
        let members = [(1, "a:1".to_owned()), (2, "b:1".to_owned()), (3, "c:1".to_owned())];
        cluster.bootstrap(0xfeed, &members).unwrap();
        cluster
    }

    #[test]
    fn a_removed_id_never_comes_back() {
        let mut cluster = three();
        cluster.apply(&MemberChange::Remove { id: 3 }).unwrap();
        let again = MemberChange::AddLearner { id: 3, address: "c:1".into(), promote_when_caught_up: true };
        assert_eq!(cluster.apply(&again), Err(ClusterError::Removed(3)));
        assert!(cluster.is_removed(3));
        assert!(!cluster.members().contains_key(&3));
    }

    #[test]
    fn no_address_is_listed_twice() {
        let mut cluster = three();
        let change = MemberChange::AddLearner { id: 9, address: "b:1".into(), promote_when_caught_up: false };
        assert_eq!(cluster.apply(&change), Err(ClusterError::AddressTaken { id: 2, address: "b:1".into() }));
        let moved = MemberChange::UpdateAddress { id: 1, address: "c:1".into() };
        assert_eq!(cluster.apply(&moved), Err(ClusterError::AddressTaken { id: 3, address: "c:1".into() }));
        assert_eq!(cluster, three(), "a refused change changed the record");
    }

    #[test]
    fn a_learner_is_promoted_to_voter() {
        let mut cluster = three();
        cluster
            .apply(&MemberChange::AddLearner { id: 7, address: "d:1".into(), promote_when_caught_up: true })
            .unwrap();
        assert_eq!(cluster.members()[&7].role, MemberRole::Learner);
        assert!(cluster.members()[&7].promote_when_caught_up);
        cluster.apply(&MemberChange::Promote { id: 7 }).unwrap();
        assert_eq!(cluster.members()[&7].role, MemberRole::Voter);
    }

    #[test]
    fn a_refounded_record_keeps_one_member_and_removes_every_other_id() {
        let mut cluster = three();
        cluster.apply(&MemberChange::Remove { id: 3 }).unwrap();
        let refounded = cluster.refounded(0xbeef, 1, "a:2").unwrap();
        assert_eq!(refounded.id(), 0xbeef);
        assert_eq!(refounded.members().keys().copied().collect::<Vec<_>>(), [1]);
        let member = &refounded.members()[&1];
        assert_eq!((member.address.as_str(), member.role, member.started), ("a:2", MemberRole::Voter, true));
        assert!(refounded.is_removed(2) && refounded.is_removed(3));
        assert_eq!(cluster.refounded(0xbeef, 3, "c:1"), Err(ClusterError::Removed(3)));
        assert_eq!(Cluster::default().refounded(0, 1, "a:1"), Err(ClusterError::ZeroId));
    }

    #[test]
    fn bootstrap_happens_once() {
        let mut cluster = three();
        assert_eq!(
            cluster.bootstrap(0xbeef, &[(5, "e:1".into())]),
            Err(ClusterError::AlreadyBootstrapped(0xfeed))
        );
        assert_eq!(cluster.id(), 0xfeed);
    }

    #[test]
    fn the_snapshot_section_round_trips_and_every_truncation_is_refused() {
        let mut cluster = three();
        cluster
            .apply(&MemberChange::AddLearner { id: 7, address: "d:1".into(), promote_when_caught_up: true })
            .unwrap();
        cluster
            .apply(&MemberChange::AddLearner { id: 8, address: "e:1".into(), promote_when_caught_up: false })
            .unwrap();
        cluster.apply(&MemberChange::Remove { id: 2 }).unwrap();
        cluster.apply(&MemberChange::Started { id: 7 }).unwrap();
        cluster.apply(&MemberChange::Started { id: 1 }).unwrap();
        let mut bytes = Vec::new();
        cluster.encode(&mut bytes);
        let mut reader = ByteReader::new(&bytes);
        assert_eq!(Cluster::decode(&mut reader).unwrap(), cluster);
        assert_eq!(reader.remaining(), 0);
        for len in 0..bytes.len() {
            assert!(Cluster::decode(&mut ByteReader::new(&bytes[..len])).is_err(), "truncation to {len}");
        }
    }
}
