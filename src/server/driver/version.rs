//! The cluster version: which entry kinds and messages the leader may use while the
//! members run different releases (a rolling upgrade). IO-free; the driver core holds
//! one `MemberVersions` and the simulator runs it as it is.
//!
//! Every node reports the version it runs on each peer request (`x-mmapd-version`,
//! `peer::VERSION_HEADER`, and on the probe of a node that is about to start). The
//! *cluster version* is the lowest over the current configuration's members (voters
//! and learners), this node included; a member that never reported is taken to run
//! the oldest version it may run (`MemberVersions::floor`): a release before versions
//! were reported sends no header. A `Feature` is used only once the cluster version
//! reaches the version that introduced it, so a member that would not understand an
//! entry never receives one (it would skip it, and its replica would differ from the
//! others'). Encodings are chosen per peer instead, since each peer decodes its own: a
//! snapshot goes to a member taken to run version 1 in v0.1.0's encoding
//! (`snapshot_encoding_for`).
//!
//! `tests/upgrade.rs` proves it against a build of v0.1.0: a 3-node cluster of it under
//! client load is upgraded one node at a time (a follower catching up from the old
//! leader's snapshot, an old follower from a new leader's), membership changes are
//! refused with 503 `feature_unavailable` while a member runs v0.1.0 and no cluster
//! record is written, then every node shows cluster version 2, every acknowledged write
//! is read back from every node, and a node joins. A release that adds a version extends
//! it (the previous release's commit, built the same way).
//!
//! Versions, one a release that changed what members must understand:
//! - 1: v0.1.0 (commit e076101), before versions were reported;
//! - 2: the next release (v0.2.0, not tagged yet: every feature added before that tag
//!   is a version 2 feature): the cluster record (`Bootstrap`, `UpdateMember`,
//!   `MemberStarted` commands), membership changes (configuration entries, learners,
//!   joins), the hash check (`HashCheck`), the history's compaction (`Compact`),
//!   leases (`LeaseGrant`, `LeaseRevoke`, a put with a lease), transactions (`Txn`, with
//!   compares over a range: op byte flag 0x10) and the checksummed
//!   `InstallSnapshot` (wire tags 10 and 11).
//!
//! Gating a new command is one line: a `Feature` variant with its `since`, and its arm
//! in `feature_of` (an exhaustive match, so a new `Command` does not compile until it
//! is decided). A newer feature than `THIS_VERSION` also bumps `THIS_VERSION`.

use std::collections::HashMap;

use crate::kv::{Command, MemberChange};
use crate::raft::NodeId;
use crate::transport::codec::SnapshotEncoding;

/// A release's version as members report it: what entry kinds and messages it knows.
pub type Version = u32;

/// The version this binary runs.
pub const THIS_VERSION: Version = 2;
/// The oldest version a member may run: what a member that never reported runs.
pub const OLDEST_VERSION: Version = 1;
const _: () = assert!(OLDEST_VERSION <= THIS_VERSION);

/// The first version that reads the checksummed `InstallSnapshot` (wire tags 10 and 11).
pub const CHECKED_SNAPSHOTS_SINCE: Version = 2;

/// How to encode a snapshot for a peer taken to run `version` (`MemberVersions::of`):
/// unlike a feature, a per-peer choice of encoding, since each peer decodes its own.
pub fn snapshot_encoding_for(version: Version) -> SnapshotEncoding {
    if version >= CHECKED_SNAPSHOTS_SINCE {
        SnapshotEncoding::Checked
    } else {
        SnapshotEncoding::Unchecked
    }
}

/// Something the leader may only use once every member understands it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Feature {
    /// The replicated cluster record: `Bootstrap`, `UpdateMember`, `MemberStarted`.
    ClusterRecord,
    /// Configuration entries: joins, learners, promotions, removals.
    MembershipChanges,
    /// `Command::HashCheck` (`mmapd-admin check`).
    HashCheck,
    /// `Command::Compact`: the replicated history's compaction (watches).
    Compaction,
    /// Leases: `LeaseGrant`, `LeaseRevoke` and a put with a lease.
    Leases,
    /// Transactions: `Command::Txn` (tag 12).
    Transactions,
}

impl Feature {
    /// Every feature, for documentation and `/status`.
    pub const ALL: [Feature; 6] = [
        Feature::ClusterRecord,
        Feature::MembershipChanges,
        Feature::HashCheck,
        Feature::Compaction,
        Feature::Leases,
        Feature::Transactions,
    ];

    /// The version that introduced it.
    pub const fn since(self) -> Version {
        match self {
            Feature::ClusterRecord => 2,
            Feature::MembershipChanges => 2,
            Feature::HashCheck => 2,
            Feature::Compaction => 2,
            Feature::Leases => 2,
            Feature::Transactions => 2,
        }
    }

    /// Its name in errors, logs and `/status`.
    pub const fn name(self) -> &'static str {
        match self {
            Feature::ClusterRecord => "cluster record",
            Feature::MembershipChanges => "membership changes",
            Feature::HashCheck => "hash check",
            Feature::Compaction => "history compaction",
            Feature::Leases => "leases",
            Feature::Transactions => "transactions",
        }
    }
}

const _: () = {
    let mut i = 0;
    while i < Feature::ALL.len() {
        assert!(Feature::ALL[i].since() <= THIS_VERSION);
        i += 1;
    }
};

/// The feature a command needs, `None` for one every version applies.
pub fn feature_of(command: &Command) -> Option<Feature> {
    match command {
        // A put with a lease is tag 11, which v0.1.0 does not know.
        Command::Put { lease, .. } if *lease != 0 => Some(Feature::Leases),
        Command::Put { .. } | Command::Delete { .. } | Command::Import { .. } => None,
        Command::Bootstrap { .. } | Command::UpdateMember { .. } | Command::MemberStarted { .. } => {
            Some(Feature::ClusterRecord)
        }
        Command::HashCheck => Some(Feature::HashCheck),
        Command::Compact { .. } => Some(Feature::Compaction),
        Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } => Some(Feature::Leases),
        Command::Txn(_) => Some(Feature::Transactions),
    }
}

/// The feature a membership change needs: the entry it becomes (a configuration entry,
/// or a command of the cluster record).
pub fn feature_of_change(change: &MemberChange) -> Feature {
    match change {
        MemberChange::UpdateAddress { .. } | MemberChange::Started { .. } => Feature::ClusterRecord,
        MemberChange::AddLearner { .. } | MemberChange::Promote { .. } | MemberChange::Remove { .. } => {
            Feature::MembershipChanges
        }
    }
}

/// Why a feature may not be used yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    /// The feature asked for.
    pub feature: Feature,
    /// The cluster's version now.
    pub cluster_version: Version,
    /// The members below the feature's version, ascending by id, with the version each
    /// reported (`None`: never reported, taken as the floor).
    pub lagging: Vec<(NodeId, Option<Version>)>,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lagging: Vec<String> = self
            .lagging
            .iter()
            .map(|(id, version)| match version {
                Some(version) => format!("{id:016x} (version {version})"),
                None => format!("{id:016x} (no version reported: an older release)"),
            })
            .collect();
        write!(
            f,
            "{} needs cluster version {}; the cluster runs version {} until every member is upgraded: \
             lagging {}",
            self.feature.name(),
            self.feature.since(),
            self.cluster_version,
            lagging.join(", ")
        )
    }
}

/// The versions members reported, and the floor for those that did not.
#[derive(Clone, Debug)]
pub struct MemberVersions {
    /// This node's id (it runs `THIS_VERSION`).
    me: NodeId,
    /// What each node last reported. Invariant: no value above `Version::MAX`, none
    /// for `me`.
    reported: HashMap<NodeId, Version>,
    /// The least version any member may run: `OLDEST_VERSION`, raised where the data
    /// directory proves more (see `DriverConfig::version_floor`).
    floor: Version,
}

impl MemberVersions {
    /// No reports yet.
    pub fn new(me: NodeId, floor: Version) -> MemberVersions {
        MemberVersions { me, reported: HashMap::new(), floor: floor.clamp(OLDEST_VERSION, THIS_VERSION) }
    }

    /// `id` runs `version` (its latest report wins: a node may be downgraded too).
    /// Returns whether anything changed.
    pub fn report(&mut self, id: NodeId, version: Version) -> bool {
        if id == self.me {
            return false;
        }
        self.reported.insert(id, version) != Some(version)
    }

    /// Raises the floor (never lowers it).
    pub fn raise_floor(&mut self, floor: Version) {
        self.floor = self.floor.max(floor.min(THIS_VERSION));
    }

    /// What `id` is taken to run: its report, else the floor.
    pub fn of(&self, id: NodeId) -> Version {
        if id == self.me {
            return THIS_VERSION;
        }
        self.reported.get(&id).copied().unwrap_or(self.floor).max(self.floor)
    }

    /// What `id` reported, if it did.
    pub fn reported(&self, id: NodeId) -> Option<Version> {
        if id == self.me {
            return Some(THIS_VERSION);
        }
        self.reported.get(&id).copied()
    }

    /// The cluster version: the lowest over `members` and this node.
    pub fn cluster_version<'a>(&self, members: impl IntoIterator<Item = &'a NodeId>) -> Version {
        members.into_iter().map(|&id| self.of(id)).fold(THIS_VERSION, Version::min)
    }

    /// Whether every one of `members` runs a version with `feature`; Err names the
    /// ones that lag. Allocates only for a refusal.
    pub fn supports<'a, M>(&self, feature: Feature, members: M) -> Result<(), Unsupported>
    where
        M: IntoIterator<Item = &'a NodeId> + Clone,
    {
        if members.clone().into_iter().all(|&id| self.of(id) >= feature.since()) {
            return Ok(());
        }
        let mut lagging: Vec<(NodeId, Option<Version>)> = members
            .clone()
            .into_iter()
            .filter(|&&id| self.of(id) < feature.since())
            .map(|&id| (id, self.reported(id)))
            .collect();
        lagging.sort_unstable();
        lagging.dedup();
        Err(Unsupported { feature, cluster_version: self.cluster_version(members), lagging })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_version_is_the_lowest_member_and_an_unreported_member_is_the_oldest() {
        let mut versions = MemberVersions::new(1, OLDEST_VERSION);
        assert_eq!(versions.cluster_version(&[1]), THIS_VERSION);
        assert_eq!(versions.cluster_version(&[1, 2, 3]), OLDEST_VERSION);
        versions.report(2, 2);
        assert_eq!(versions.cluster_version(&[1, 2, 3]), OLDEST_VERSION);
        versions.report(3, 2);
        assert_eq!(versions.cluster_version(&[1, 2, 3]), 2);
        // A report from outside the configuration does not count; a downgrade does.
        assert_eq!(versions.cluster_version(&[1, 2, 3]), versions.cluster_version(&[3, 2, 1]));
        versions.report(3, 1);
        assert_eq!(versions.cluster_version(&[1, 2, 3]), 1);
    }

    #[test]
    fn a_feature_is_refused_naming_every_member_that_lags() {
        let mut versions = MemberVersions::new(1, OLDEST_VERSION);
        versions.report(3, 1);
        let refused = versions.supports(Feature::ClusterRecord, &[1, 2, 3]).unwrap_err();
        assert_eq!(refused.lagging, vec![(2, None), (3, Some(1))]);
        assert_eq!(refused.cluster_version, 1);
        let text = refused.to_string();
        assert!(text.contains("cluster record needs cluster version 2"), "{text}");
        assert!(
            text.contains("0000000000000002 (no version reported")
                && text.contains("0000000000000003 (version 1)")
        );
        versions.report(2, 2);
        versions.report(3, 2);
        assert_eq!(versions.supports(Feature::ClusterRecord, &[1, 2, 3]), Ok(()));
    }

    #[test]
    fn a_floor_stands_for_members_that_never_reported() {
        let mut versions = MemberVersions::new(1, THIS_VERSION);
        assert_eq!(versions.supports(Feature::MembershipChanges, &[1, 2, 3]), Ok(()));
        let mut legacy = MemberVersions::new(1, OLDEST_VERSION);
        assert!(legacy.supports(Feature::MembershipChanges, &[1, 2]).is_err());
        legacy.raise_floor(2);
        legacy.raise_floor(1);
        assert_eq!(legacy.supports(Feature::MembershipChanges, &[1, 2]), Ok(()));
        // A report below the floor does not lower it: the floor is proven by the data.
        versions.report(2, 1);
        assert_eq!(versions.of(2), THIS_VERSION);
    }

    #[test]
    fn a_peer_that_never_reported_gets_snapshots_it_reads_and_a_reporting_one_checked_ones() {
        let mut versions = MemberVersions::new(1, OLDEST_VERSION);
        assert_eq!(snapshot_encoding_for(versions.of(2)), SnapshotEncoding::Unchecked);
        versions.report(2, 2);
        assert_eq!(snapshot_encoding_for(versions.of(2)), SnapshotEncoding::Checked);
        // A data directory of this release proves every member runs it.
        assert_eq!(
            snapshot_encoding_for(MemberVersions::new(1, THIS_VERSION).of(2)),
            SnapshotEncoding::Checked
        );
    }

    #[test]
    fn commands_of_the_cluster_record_need_it_and_key_value_commands_need_nothing() {
        assert_eq!(feature_of(&Command::put("k", b"v".to_vec())), None);
        assert_eq!(feature_of(&Command::MemberStarted { id: 7 }), Some(Feature::ClusterRecord));
        assert_eq!(feature_of(&Command::HashCheck), Some(Feature::HashCheck));
        assert_eq!(feature_of(&Command::Compact { revision: 3 }), Some(Feature::Compaction));
    }
}
