//! The configurations a node's log holds (thesis §4.1): a configuration takes effect when
//! its entry is appended, so the current one is the latest in the log, and a truncated
//! suffix takes its configurations with it (RAFT-NOTES #20).

use bytes::Bytes;

use super::conf_change::ConfChange;
use super::entry::{ConfState, NodeId};

/// The snapshot's configuration and every configuration entry after it.
#[derive(Debug)]
pub(crate) struct Membership {
    id: NodeId,
    /// The configuration as of `base_index` (the snapshot's).
    base: ConfState,
    base_index: u64,
    /// (index, configuration after that entry) for each configuration entry after
    /// `base_index` that changed something. Invariant: indexes strictly increase, all
    /// > `base_index`.
    history: Vec<(u64, ConfState)>,
    /// Whether a configuration folded into `base` (the snapshot's, or a compacted
    /// entry's) held this node: it has been a committed member.
    member_before_base: bool,
}

impl Membership {
    pub(crate) fn new(id: NodeId, base: ConfState, base_index: u64) -> Membership {
        let member_before_base = base.is_member(id);
        Membership { id, base, base_index, history: Vec::new(), member_before_base }
    }

    /// The latest configuration in the log.
    pub(crate) fn current(&self) -> &ConfState {
        self.history.last().map_or(&self.base, |(_, conf)| conf)
    }

    /// The configuration as of `base_index`.
    pub(crate) fn base(&self) -> &ConfState {
        &self.base
    }

    /// The configuration in force at `index` (the latest at or before it). Panics below
    /// the snapshot: that history is gone, and no caller needs it.
    pub(crate) fn at(&self, index: u64) -> &ConfState {
        assert!(
            index >= self.base_index,
            "configuration at {index}, below the snapshot at {}",
            self.base_index
        );
        self.history.iter().rev().find(|(i, _)| *i <= index).map_or(&self.base, |(_, conf)| conf)
    }

    /// A configuration entry at `index` was appended. Data that does not decode, or a
    /// change that does not apply (see `ConfChange::apply_to`), changes nothing: no
    /// correct leader proposes one, and a log is input we must not crash on. Returns
    /// whether the configuration changed.
    pub(crate) fn append(&mut self, index: u64, data: &Bytes) -> bool {
        assert!(
            index > self.base_index && self.history.last().is_none_or(|(i, _)| *i < index),
            "node {}: configuration entry {index} appended out of order",
            self.id
        );
        let Ok(change) = ConfChange::decode(data) else { return false };
        let Some(next) = change.apply_to(self.current()) else { return false };
        self.history.push((index, next));
        true
    }

    /// The log from `index` on was truncated. Returns whether the configuration changed.
    pub(crate) fn truncate_from(&mut self, index: u64) -> bool {
        let before = self.history.len();
        self.history.retain(|(i, _)| *i < index);
        self.history.len() != before
    }

    /// The log up to `index` was compacted into a snapshot.
    pub(crate) fn compact_to(&mut self, index: u64) {
        let base = self.at(index).clone();
        let id = self.id;
        self.member_before_base |= self.history.iter().any(|(i, conf)| *i <= index && conf.is_member(id));
        self.history.retain(|(i, _)| *i > index);
        self.base = base;
        self.base_index = index;
    }

    /// A snapshot from the leader replaced the log.
    pub(crate) fn restore(&mut self, base: ConfState, base_index: u64) {
        self.member_before_base |= base.is_member(self.id);
        self.history.clear();
        self.base = base;
        self.base_index = base_index;
    }

    /// True once the configuration committed at `committed` no longer holds this node,
    /// although a committed configuration did. A node that has never been a committed
    /// member (a new node waiting for the leader to add it) is not removed.
    pub(crate) fn is_removed(&self, committed: u64) -> bool {
        let id = self.id;
        let was_member = self.member_before_base
            || self.history.iter().any(|(i, conf)| *i <= committed && conf.is_member(id));
        was_member && !self.at(committed).is_member(id)
    }
}
