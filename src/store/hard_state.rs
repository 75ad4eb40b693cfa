//! The hard state (term, vote, commit) in a small mapped file with two checksummed slots.
//!
//! An update writes the slot that does *not* hold the last synced value, with a higher
//! sequence number; recovery takes the valid slot with the highest sequence number. So a
//! torn update leaves the previous value, never garbage. Until the next sync every update
//! goes to that same slot, so the synced value is never overwritten before a newer one is
//! durable.
//!
//! [`HardStateFile::set`] only records the value in memory (cheap enough for every commit
//! change); [`HardStateFile::sync`] writes the slot and msyncs it. The store syncs the log
//! first, so the value reaches the page cache only after the log it refers to is durable:
//! background writeback can never make a commit index durable ahead of its entries.
//!
//! The one write that comes *before* the log is [`HardStateFile::make_term_durable`]: the
//! store calls it before entries (or a snapshot) of a term the durable value has not reached
//! go into the log's map, so that the term is durable no later than any record of it. It
//! writes the new term with the *durable* commit index, so it never moves a commit ahead of
//! the log either.

use std::path::Path;

use super::error::StoreError;
use super::mapped::{MappedFile, RangeSync};
use super::record::{u32_at, u64_at};
use crate::raft::HardState;

/// The hard-state file's name.
pub const HARD_STATE_FILE_NAME: &str = "hardstate";
/// First bytes of the hard-state file.
pub const HARD_STATE_MAGIC: [u8; 8] = *b"MMAPDHST";
/// Hard-state format version.
pub const HARD_STATE_VERSION: u32 = 1;
/// Size of the header at offset 0.
pub const HARD_STATE_HEADER_BYTES: usize = 16;
/// Offsets of the two slots: separate 4 KiB pages, so writing one never rewrites the other's page.
pub const SLOT_OFFSETS: [usize; 2] = [4096, 8192];
/// Size of one slot.
pub const SLOT_BYTES: usize = 64;
/// Size of the whole file.
pub const HARD_STATE_FILE_BYTES: usize = 12288;
const SLOT_TERM_OFFSET: usize = 8;
const SLOT_VOTE_OFFSET: usize = 16;
const SLOT_COMMIT_OFFSET: usize = 24;
const SLOT_CRC_OFFSET: usize = 60;
const _: () = assert!(HARD_STATE_HEADER_BYTES <= SLOT_OFFSETS[0]);
const _: () = assert!(SLOT_OFFSETS[0] + SLOT_BYTES <= SLOT_OFFSETS[1]);
const _: () = assert!(SLOT_OFFSETS[1] + SLOT_BYTES <= HARD_STATE_FILE_BYTES);
const _: () = assert!(SLOT_CRC_OFFSET + 4 == SLOT_BYTES && SLOT_COMMIT_OFFSET + 8 <= SLOT_CRC_OFFSET);

/// The open hard-state file.
pub(crate) struct HardStateFile {
    file: MappedFile,
    current: HardState,
    /// The value in the durable slot. Invariant: durable.term <= current.term.
    durable: HardState,
    /// Sequence number of the last written slot.
    sequence: u64,
    /// The slot that holds the last synced value (or, on a fresh file, the slot not written first).
    durable_slot: usize,
    /// A value set but not yet written to the file.
    pending: Option<HardState>,
}

#[derive(Clone, Copy)]
enum Slot {
    Zeros,
    Invalid,
    Valid(u64, HardState),
}

impl HardStateFile {
    /// Opens or creates the file in `dir`, returning it and the recovered hard state.
    pub(crate) fn open(dir: &Path, warnings: &mut Vec<String>) -> Result<HardStateFile, StoreError> {
        let path = dir.join(HARD_STATE_FILE_NAME);
        let temp = dir.join(format!("{HARD_STATE_FILE_NAME}.tmp"));
        if path.exists() && temp.exists() {
            let warning = format!("removed unfinished {}", temp.display());
            tracing::warn!("{warning}");
            warnings.push(warning);
            std::fs::remove_file(&temp).map_err(|e| StoreError::io(&temp, "remove", e))?;
        }
        let file = if path.exists() {
            MappedFile::open(&path)?
        } else {
            MappedFile::create_with_header(&path, HARD_STATE_FILE_BYTES as u64, &encode_header())?
        };
        let (sequence, current, durable_slot) = recover(&path, file.bytes(), warnings)?;
        Ok(HardStateFile { file, current, durable: current, sequence, durable_slot, pending: None })
    }

    /// The latest value set (synced or not).
    pub(crate) fn get(&self) -> HardState {
        self.current
    }

    /// Records `hard_state`, in memory only, until [`HardStateFile::sync`].
    pub(crate) fn set(&mut self, hard_state: &HardState) {
        if *hard_state != self.current {
            self.current = *hard_state;
            self.pending = Some(*hard_state);
        }
    }

    /// True when the value set differs from the durable one in term or vote (not only
    /// in the commit index, which may lag on disk).
    pub(crate) fn term_or_vote_pending(&self) -> bool {
        self.pending.is_some_and(|p| p.term != self.durable.term || p.vote != self.durable.vote)
    }

    /// Writes the last value set into the slot that does not hold the synced value, and
    /// msyncs it: one `msync`, or none if nothing changed.
    pub(crate) fn sync(&mut self) -> Result<RangeSync, StoreError> {
        let Some(hard_state) = self.pending else {
            return Ok(RangeSync::default());
        };
        let synced = self.write_durably(&hard_state)?;
        self.pending = None;
        Ok(synced)
    }

    /// Makes a term of at least `term` durable now, if the durable value's term is lower:
    /// one `msync`, or none. Called before a record of `term` is written anywhere.
    ///
    /// Writes the term and vote set (if the value set has reached `term`; otherwise `term`
    /// with no vote, which is safe: a vote in `term` is sent only once it is durable, so none
    /// was sent) with the *durable* commit index, which the durable log already covers. The
    /// value set stays pending if it differs from what was written.
    pub(crate) fn make_term_durable(&mut self, term: u64) -> Result<RangeSync, StoreError> {
        if self.durable.term >= term {
            return Ok(RangeSync::default());
        }
        if self.current.term < term {
            self.current = HardState { term, vote: None, commit: self.current.commit };
        }
        let early = HardState { commit: self.durable.commit, ..self.current };
        let synced = self.write_durably(&early)?;
        self.pending = (self.current != early).then_some(self.current);
        Ok(synced)
    }

    /// Writes `hard_state` into the slot that does not hold the durable value, with the next
    /// sequence number, and msyncs it.
    fn write_durably(&mut self, hard_state: &HardState) -> Result<RangeSync, StoreError> {
        self.sequence += 1;
        let slot = 1 - self.durable_slot;
        self.file.write(SLOT_OFFSETS[slot] as u64, &encode_slot(self.sequence, hard_state));
        let synced = self.file.sync()?;
        self.durable_slot = slot;
        self.durable = *hard_state;
        Ok(synced)
    }

    pub(crate) fn mapped_file(&self) -> &MappedFile {
        &self.file
    }
}

/// Recovers the value of a hard-state file's bytes (the rules of `docs/format.md`):
/// the sequence number, the value and the slot that holds it. Pure but for the
/// warnings; shared by [`HardStateFile::open`] and [`read_only`].
fn recover(
    path: &Path,
    bytes: &[u8],
    warnings: &mut Vec<String>,
) -> Result<(u64, HardState, usize), StoreError> {
    super::data_dir::refuse_legacy_json(path, bytes)?;
    if bytes.len() != HARD_STATE_FILE_BYTES {
        return Err(StoreError::corrupt(path, bytes.len() as u64, "hard-state file has the wrong length"));
    }
    StoreError::check_version(path, "hard state", bytes, &HARD_STATE_MAGIC, 8, &[HARD_STATE_VERSION])?;
    if let Err((offset, reason)) = decode_header(bytes) {
        return Err(StoreError::corrupt(path, offset, reason));
    }
    let slots = SLOT_OFFSETS.map(|offset| decode_slot(&bytes[offset..offset + SLOT_BYTES]));
    let recovered = match slots {
        [Slot::Valid(s0, h0), Slot::Valid(s1, h1)] => {
            if s0 == s1 {
                return Err(StoreError::corrupt(
                    path,
                    SLOT_OFFSETS[1] as u64,
                    "both slots have one sequence number",
                ));
            }
            if s0 > s1 {
                (s0, h0, 0)
            } else {
                (s1, h1, 1)
            }
        }
        [Slot::Valid(s, h), other] | [other, Slot::Valid(s, h)] => {
            let valid = if matches!(slots[0], Slot::Valid(..)) { 0 } else { 1 };
            if matches!(other, Slot::Invalid) {
                let offset = SLOT_OFFSETS[1 - valid];
                let warning = format!(
                    "{}: torn hard-state slot at offset {offset}, kept the previous value",
                    path.display()
                );
                tracing::warn!("{warning}");
                warnings.push(warning);
            }
            (s, h, valid)
        }
        [Slot::Zeros, Slot::Zeros] => (0, HardState::default(), 1),
        [Slot::Zeros, Slot::Invalid] | [Slot::Invalid, Slot::Zeros] => {
            let warning =
                format!("{}: torn first hard-state write, starting from the empty state", path.display());
            tracing::warn!("{warning}");
            warnings.push(warning);
            let torn = if matches!(slots[0], Slot::Invalid) { 0 } else { 1 };
            (0, HardState::default(), torn)
        }
        [Slot::Invalid, Slot::Invalid] => {
            return Err(StoreError::corrupt(
                path,
                SLOT_OFFSETS[0] as u64,
                "both hard-state slots are corrupt",
            ));
        }
    };
    Ok(recovered)
}

/// The hard state of `dir`, read without changing anything (`Store::read_only`): the
/// default for a directory without the file, which an open would create.
pub(crate) fn read_only(dir: &Path, warnings: &mut Vec<String>) -> Result<HardState, StoreError> {
    let path = dir.join(HARD_STATE_FILE_NAME);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(recover(&path, &bytes, warnings)?.1),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(HardState::default()),
        Err(error) => Err(StoreError::io(&path, "read", error)),
    }
}

fn encode_header() -> [u8; HARD_STATE_HEADER_BYTES] {
    let mut header = [0; HARD_STATE_HEADER_BYTES];
    header[..8].copy_from_slice(&HARD_STATE_MAGIC);
    header[8..12].copy_from_slice(&HARD_STATE_VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&header[..12]);
    header[12..16].copy_from_slice(&crc.to_le_bytes());
    header
}

fn decode_header(bytes: &[u8]) -> Result<(), (u64, &'static str)> {
    if bytes[..8] != HARD_STATE_MAGIC {
        return Err((0, "bad hard-state magic"));
    }
    if u32_at(bytes, 8) != HARD_STATE_VERSION {
        return Err((8, "unsupported hard-state version"));
    }
    if u32_at(bytes, 12) != crc32c::crc32c(&bytes[..12]) {
        return Err((12, "hard-state header checksum mismatch"));
    }
    Ok(())
}

fn encode_slot(sequence: u64, hard_state: &HardState) -> [u8; SLOT_BYTES] {
    let mut slot = [0; SLOT_BYTES];
    slot[..8].copy_from_slice(&sequence.to_le_bytes());
    slot[SLOT_TERM_OFFSET..SLOT_TERM_OFFSET + 8].copy_from_slice(&hard_state.term.to_le_bytes());
    let vote = hard_state.vote.unwrap_or(0);
    slot[SLOT_VOTE_OFFSET..SLOT_VOTE_OFFSET + 8].copy_from_slice(&vote.to_le_bytes());
    slot[SLOT_COMMIT_OFFSET..SLOT_COMMIT_OFFSET + 8].copy_from_slice(&hard_state.commit.to_le_bytes());
    let crc = crc32c::crc32c(&slot[..SLOT_CRC_OFFSET]);
    slot[SLOT_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(decode_slot(&slot), Slot::Valid(s, h) if s == sequence && h == *hard_state));
    slot
}

fn decode_slot(slot: &[u8]) -> Slot {
    if slot.iter().all(|&b| b == 0) {
        return Slot::Zeros;
    }
    if u32_at(slot, SLOT_CRC_OFFSET) != crc32c::crc32c(&slot[..SLOT_CRC_OFFSET]) {
        return Slot::Invalid;
    }
    let vote = u64_at(slot, SLOT_VOTE_OFFSET);
    let hard_state = HardState {
        term: u64_at(slot, SLOT_TERM_OFFSET),
        vote: (vote != 0).then_some(vote),
        commit: u64_at(slot, SLOT_COMMIT_OFFSET),
    };
    Slot::Valid(u64_at(slot, 0), hard_state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(term: u64, vote: Option<u64>, commit: u64) -> HardState {
        HardState { term, vote, commit }
    }

    #[test]
    fn hard_state_survives_reopen_after_sync() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = HardStateFile::open(dir.path(), &mut Vec::new()).unwrap();
        assert_eq!(file.get(), HardState::default());
        file.set(&hs(3, Some(2), 7));
        file.sync().unwrap();
        drop(file);
        assert_eq!(HardStateFile::open(dir.path(), &mut Vec::new()).unwrap().get(), hs(3, Some(2), 7));
    }

    #[test]
    fn torn_update_leaves_the_previous_value() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = HardStateFile::open(dir.path(), &mut Vec::new()).unwrap();
        file.set(&hs(1, None, 0));
        file.sync().unwrap();
        file.set(&hs(2, Some(1), 5));
        file.sync().unwrap();
        // A crash during that sync tore its slot (slot 1): the older slot 0 must be intact.
        file.file.write(SLOT_OFFSETS[1] as u64 + 20, &[0xAB; 9]);
        drop(file);
        let mut warnings = Vec::new();
        assert_eq!(HardStateFile::open(dir.path(), &mut warnings).unwrap().get(), hs(1, None, 0));
        assert!(warnings[0].contains("offset 8192"), "{warnings:?}");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn both_slots_corrupt_is_an_error_naming_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = HardStateFile::open(dir.path(), &mut Vec::new()).unwrap();
        file.set(&hs(1, None, 0));
        file.sync().unwrap();
        file.set(&hs(2, None, 0));
        file.sync().unwrap();
        file.file.write(SLOT_OFFSETS[0] as u64 + 8, &[0xFF]);
        file.file.write(SLOT_OFFSETS[1] as u64 + 8, &[0xFF]);
        drop(file);
        match HardStateFile::open(dir.path(), &mut Vec::new()) {
            Err(StoreError::Corrupt { offset, .. }) => assert_eq!(offset, SLOT_OFFSETS[0] as u64),
            other => panic!("expected Corrupt, got {:?}", other.err()),
        }
    }
}
