//! The Raft log: records appended to mapped segment files, with an in-memory index.
//!
//! Files are only ever appended to. An entry whose index already exists is appended after
//! the current tail and *supersedes* the old entry and everything after it: the in-memory
//! index drops the conflicting suffix at once, and replay applies the same rule, so stale
//! records are never returned. (Rewriting in place would need an extra sync barrier,
//! because `msync` writes pages back in no particular order.) Superseded bytes are reclaimed
//! with their segment by [`Log::compact`], which deletes whole segments and never rewrites
//! live records.
//!
//! Each record carries `durable_end`, the offset up to which its segment was durable when it
//! was written. Recovery uses it to tell a torn tail (garbage from a write that no completed
//! sync covered) from corruption of acknowledged records. See `docs/format.md`.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::error::StoreError;
use super::mapped::{page_size, sync_dir, MappedFile, RangeSync};
use super::record::{
    decode_record, decode_segment_header, encode_record, encode_segment_header, encoded_len, RecordError,
    RECORD_ALIGN_BYTES, SEGMENT_HEADER_BYTES, SEGMENT_LENGTH_MULTIPLE_BYTES,
};
use crate::raft::Entry;

/// Sizes of segment files.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LogOptions {
    /// A new segment is started when a record would take the current one past this.
    pub segment_bytes: u64,
    /// Files grow by at least this much at a time.
    pub grow_step_bytes: u64,
}

struct Segment {
    seq: u64,
    file: MappedFile,
    /// Where the next record goes. Invariant: records lie in `SEGMENT_HEADER_BYTES..write_end`.
    write_end: u64,
    /// Everything before this offset has been made durable. Invariant: `durable_end <= write_end`.
    durable_end: u64,
}

#[derive(Clone, Copy, Debug)]
struct Location {
    term: u64,
    segment_seq: u64,
    offset: u64,
}

/// The log's files and index.
pub(crate) struct Log {
    dir: PathBuf,
    options: LogOptions,
    /// Ascending by `seq`. Invariant: never empty; only the last one is written to.
    segments: Vec<Segment>,
    /// The index of `locations[0]`, or `last_index() + 1` when there are none.
    first_index: u64,
    locations: VecDeque<Location>,
    scratch: Vec<u8>,
}

fn segment_name(seq: u64) -> String {
    format!("log-{seq:020}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("log-")?.strip_suffix(".seg")?.parse().ok()
}

fn warn(warnings: &mut Vec<String>, warning: String) {
    tracing::warn!("{warning}");
    warnings.push(warning);
}

impl Log {
    /// Opens the segments of `dir` from `first_segment_seq` on (older ones are leftovers of a
    /// reset or compaction and are deleted), replays them, and cuts a torn tail.
    pub(crate) fn open(
        dir: &Path,
        first_segment_seq: u64,
        options: LogOptions,
        warnings: &mut Vec<String>,
    ) -> Result<Log, StoreError> {
        assert!(options.segment_bytes > SEGMENT_HEADER_BYTES && options.grow_step_bytes > 0);
        let mut seqs = Vec::new();
        for item in fs::read_dir(dir).map_err(|e| StoreError::io(dir, "read directory", e))? {
            let item = item.map_err(|e| StoreError::io(dir, "read directory", e))?;
            let name = item.file_name();
            let name = name.to_str().unwrap_or_default();
            if let Some(seq) = parse_segment_name(name) {
                seqs.push(seq);
            } else if name.strip_suffix(".tmp").and_then(parse_segment_name).is_some() {
                let path = item.path();
                warn(warnings, format!("removed unfinished segment {}", path.display()));
                fs::remove_file(&path).map_err(|e| StoreError::io(&path, "remove", e))?;
            }
        }
        seqs.sort_unstable();
        let mut log = Log {
            dir: dir.to_path_buf(),
            options,
            segments: Vec::new(),
            first_index: 1,
            locations: VecDeque::new(),
            scratch: Vec::new(),
        };
        let mut removed = false;
        for &seq in &seqs {
            if seq < first_segment_seq {
                let path = dir.join(segment_name(seq));
                warn(warnings, format!("removed segment {} left before the snapshot's log", path.display()));
                fs::remove_file(&path).map_err(|e| StoreError::io(&path, "remove", e))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(dir)?;
        }
        let live: Vec<u64> = seqs.into_iter().filter(|&seq| seq >= first_segment_seq).collect();
        for (position, &seq) in live.iter().enumerate() {
            let is_last = position + 1 == live.len();
            let segment = log.replay_segment(seq, is_last, warnings)?;
            log.segments.push(segment);
        }
        if log.segments.is_empty() {
            let segment = log.create_segment(first_segment_seq.max(1))?;
            log.segments.push(segment);
        }
        // A killed process may have left recovered bytes in the page cache only: make them
        // durable before any new record claims they are.
        let last = log.segments.last_mut().expect("log has a segment");
        last.file.mark_dirty(0..last.write_end as usize);
        last.file.sync()?;
        last.durable_end = last.write_end;
        Ok(log)
    }

    fn replay_segment(
        &mut self,
        seq: u64,
        is_last: bool,
        warnings: &mut Vec<String>,
    ) -> Result<Segment, StoreError> {
        let path = self.dir.join(segment_name(seq));
        let mut file = MappedFile::open(&path)?;
        let scanned = scan_segment(&path, file.bytes(), seq, is_last)?;
        for record in &scanned.records {
            self.replay_record(record.index, record.term, seq, record.offset as u64);
        }
        if let Some(torn) = &scanned.torn {
            warn(warnings, torn.warning(&path, "cut back to the last whole record"));
            file.zero(torn.offset as u64..torn.dirty_end as u64);
            file.sync()?;
        }
        let end = scanned.end as u64;
        Ok(Segment { seq, file, write_end: end, durable_end: end })
    }

    /// Applies one replayed record to the index: the rule of [`Log::append`], plus a record
    /// that leaves a gap starts the index afresh (the log was reset by a snapshot).
    fn replay_record(&mut self, index: u64, term: u64, segment_seq: u64, offset: u64) {
        replay(&mut self.first_index, &mut self.locations, index, Location { term, segment_seq, offset });
    }

    fn create_segment(&self, seq: u64) -> Result<Segment, StoreError> {
        let path = self.dir.join(segment_name(seq));
        let len = self.options.grow_step_bytes.next_multiple_of(SEGMENT_LENGTH_MULTIPLE_BYTES);
        let file = MappedFile::create_with_header(&path, len, &encode_segment_header(seq))?;
        let end = SEGMENT_HEADER_BYTES;
        Ok(Segment { seq, file, write_end: end, durable_end: end })
    }

    /// The first index held, or `last_index() + 1` if none.
    pub(crate) fn first_index(&self) -> u64 {
        self.first_index
    }

    /// The last index held, or `first_index() - 1` if none.
    pub(crate) fn last_index(&self) -> u64 {
        self.first_index + self.locations.len() as u64 - 1
    }

    /// The term of the entry at `index`, if held.
    pub(crate) fn term(&self, index: u64) -> Option<u64> {
        let position = index.checked_sub(self.first_index)?;
        self.locations.get(position as usize).map(|l| l.term)
    }

    /// The path of the segment written to, and where its records end.
    pub(crate) fn tail(&self) -> (&Path, u64) {
        let last = self.segments.last().expect("segment");
        (last.file.path(), last.write_end)
    }

    /// The sequence number of the oldest segment.
    pub(crate) fn first_segment_seq(&self) -> u64 {
        self.segments[0].seq
    }

    /// Appends a batch of consecutive entries; the first may overwrite an existing index,
    /// which drops that entry and all after it. Not durable until [`Log::sync`]. On error
    /// the log is as before the call.
    pub(crate) fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(first) = entries.first() else { return Ok(()) };
        for pair in entries.windows(2) {
            assert!(
                pair[1].index == pair[0].index + 1,
                "append: entries not consecutive at {}",
                pair[1].index
            );
        }
        assert!(
            first.index >= self.first_index && first.index <= self.last_index() + 1,
            "append at {} outside {}..={}",
            first.index,
            self.first_index,
            self.last_index() + 1
        );
        let kept = (first.index - self.first_index) as usize;
        let superseded: Vec<Location> = self.locations.drain(kept..).collect();
        let undo_from = (self.segments.len() - 1, self.segments.last().expect("segment").write_end);
        for entry in entries {
            if let Err(error) = self.append_one(entry) {
                self.undo(undo_from, kept, superseded);
                return Err(error);
            }
        }
        Ok(())
    }

    fn append_one(&mut self, entry: &Entry) -> Result<(), StoreError> {
        let record_len = encoded_len(entry.data.len()) as u64;
        let last = self.segments.last().expect("segment");
        if last.write_end + record_len > self.options.segment_bytes && last.write_end > SEGMENT_HEADER_BYTES {
            self.roll()?;
        }
        let segment = self.segments.last_mut().expect("segment");
        let needed = segment.write_end + record_len;
        if needed > segment.file.len() {
            let granule = SEGMENT_LENGTH_MULTIPLE_BYTES.max(page_size() as u64);
            let new_len =
                needed.max(segment.file.len() + self.options.grow_step_bytes).next_multiple_of(granule);
            segment.file.grow(new_len)?;
        }
        self.scratch.clear();
        encode_record(entry, segment.durable_end, &mut self.scratch);
        assert_eq!(self.scratch.len() as u64, record_len);
        segment.file.write(segment.write_end, &self.scratch);
        let location = Location { term: entry.term, segment_seq: segment.seq, offset: segment.write_end };
        segment.write_end += record_len;
        self.locations.push_back(location);
        Ok(())
    }

    /// Starts a new segment. The current one is synced whole first, so that every segment
    /// but the last is entirely durable (recovery relies on it).
    fn roll(&mut self) -> Result<(), StoreError> {
        let last = self.segments.last_mut().expect("segment");
        last.file.sync()?;
        last.durable_end = last.write_end;
        let next_seq = last.seq + 1;
        let segment = self.create_segment(next_seq)?;
        self.segments.push(segment);
        Ok(())
    }

    fn undo(&mut self, (segment_position, write_end): (usize, u64), kept: usize, superseded: Vec<Location>) {
        for (position, segment) in self.segments.iter_mut().enumerate().skip(segment_position) {
            let start = if position == segment_position { write_end } else { SEGMENT_HEADER_BYTES };
            segment.file.zero(start..segment.write_end);
            segment.write_end = start;
            segment.durable_end = segment.durable_end.min(start);
        }
        self.locations.truncate(kept);
        self.locations.extend(superseded);
    }

    /// Makes every appended record durable: one `msync` per segment written since the last
    /// sync (one, unless the batch crossed into a new segment).
    pub(crate) fn sync(&mut self) -> Result<RangeSync, StoreError> {
        let mut total = RangeSync::default();
        for segment in &mut self.segments {
            let synced = segment.file.sync()?;
            segment.durable_end = segment.write_end;
            total.bytes += synced.bytes;
            total.msync_calls += synced.msync_calls;
        }
        Ok(total)
    }

    /// Entries in `lo..hi`, read back from the files and checked again.
    pub(crate) fn entries(&self, lo: u64, hi: u64) -> Result<Vec<Entry>, StoreError> {
        assert!(
            self.first_index <= lo && lo <= hi && hi <= self.last_index() + 1,
            "entries({lo}, {hi}) outside {}..={}",
            self.first_index,
            self.last_index() + 1
        );
        let mut entries = Vec::with_capacity((hi - lo) as usize);
        for index in lo..hi {
            let location = self.locations[(index - self.first_index) as usize];
            let segment = self.segment(location.segment_seq);
            let bytes = &segment.file.bytes()[location.offset as usize..segment.write_end as usize];
            let corrupt = |reason: &str| StoreError::corrupt(segment.file.path(), location.offset, reason);
            let record =
                decode_record(bytes).map_err(|_| corrupt("record changed on disk since it was written"))?;
            if record.index != index || record.term != location.term {
                return Err(corrupt("record does not hold the indexed entry"));
            }
            entries.push(Entry {
                term: record.term,
                index,
                kind: record.kind,
                data: Bytes::copy_from_slice(record.payload),
            });
        }
        Ok(entries)
    }

    fn segment(&self, seq: u64) -> &Segment {
        let position = self.segments.binary_search_by_key(&seq, |s| s.seq).expect("indexed segment exists");
        &self.segments[position]
    }

    /// Forgets entries up to `index` (covered by a snapshot) and deletes whole segments that
    /// hold nothing after it. The last segment is never deleted.
    pub(crate) fn compact(&mut self, index: u64) -> Result<(), StoreError> {
        if index < self.first_index {
            return Ok(());
        }
        let drop_count = ((index + 1 - self.first_index) as usize).min(self.locations.len());
        self.locations.drain(..drop_count);
        self.first_index = index + 1;
        let keep_from =
            self.locations.front().map_or(self.segments.last().expect("segment").seq, |l| l.segment_seq);
        self.delete_segments_before(keep_from)
    }

    /// Deletes segment files older than `seq`, oldest first.
    fn delete_segments_before(&mut self, seq: u64) -> Result<(), StoreError> {
        let count = self.segments.iter().take_while(|s| s.seq < seq).count();
        if count == 0 {
            return Ok(());
        }
        for segment in self.segments.drain(..count) {
            let path = segment.file.path().to_path_buf();
            drop(segment);
            fs::remove_file(&path).map_err(|e| StoreError::io(&path, "remove", e))?;
        }
        sync_dir(&self.dir)
    }

    /// Starts a new, empty segment for a log reset and returns its number. The old segments
    /// stay until [`Log::finish_reset`] (after the snapshot that makes them obsolete is durable).
    pub(crate) fn begin_reset(&mut self) -> Result<u64, StoreError> {
        self.roll()?;
        Ok(self.segments.last().expect("segment").seq)
    }

    /// Forgets every entry, deletes the segments before `seq`; the next append is `next_index`.
    pub(crate) fn finish_reset(&mut self, seq: u64, next_index: u64) -> Result<(), StoreError> {
        self.locations.clear();
        self.first_index = next_index;
        self.delete_segments_before(seq)
    }

    /// Drops replayed entries up to `index` from the index only (used at open for the entries
    /// a snapshot covers), and sets where the log continues if none are left.
    pub(crate) fn forget_through(&mut self, index: u64) {
        forget_through(&mut self.first_index, &mut self.locations, index);
    }

    /// Every mapped file with its unsynced range (for the crash simulation and statistics).
    pub(crate) fn files(&self) -> impl Iterator<Item = &MappedFile> {
        self.segments.iter().map(|s| &s.file)
    }
}

/// Where a replayed record goes, the rule of [`Log::append`] (docs/format.md): a record
/// with index `i` replaces the entry at `i` and drops every entry after it; a record that
/// leaves a gap starts the index afresh (the log was reset by a snapshot). `items[0]` is
/// the entry at `*first_index`.
fn replay<T>(first_index: &mut u64, items: &mut VecDeque<T>, index: u64, item: T) {
    let next_index = *first_index + items.len() as u64;
    if items.is_empty() || index < *first_index || index > next_index {
        items.clear();
        *first_index = index;
    } else {
        items.truncate((index - *first_index) as usize);
    }
    items.push_back(item);
}

/// Drops the entries up to `index` (covered by a snapshot) from an index of replayed
/// records, and sets where the log continues if none are left.
fn forget_through<T>(first_index: &mut u64, items: &mut VecDeque<T>, index: u64) {
    let next_index = *first_index + items.len() as u64;
    if items.is_empty() || index + 1 >= next_index {
        items.clear();
        *first_index = (*first_index).max(index + 1);
        return;
    }
    if index >= *first_index {
        items.drain(..(index + 1 - *first_index) as usize);
        *first_index = index + 1;
    }
}

/// One record found by [`scan_segment`].
struct ScannedRecord {
    index: u64,
    term: u64,
    offset: usize,
}

/// A torn tail found by [`scan_segment`]: bad bytes no completed sync covered.
struct TornTail {
    offset: usize,
    reason: &'static str,
    /// The end of the non-zero bytes from `offset` (what a repair zeroes).
    dirty_end: usize,
}

impl TornTail {
    fn warning(&self, path: &Path, repair: &str) -> String {
        format!("{}: torn tail at offset {} ({}), {repair}", path.display(), self.offset, self.reason)
    }
}

/// What a segment file's bytes hold.
struct ScannedSegment {
    records: Vec<ScannedRecord>,
    /// Where the records end.
    end: usize,
    torn: Option<TornTail>,
}

/// Reads a segment's bytes by the recovery rules of `docs/format.md`: its records, and
/// a torn tail if the last segment has one; damage that is not a torn tail is
/// `Corrupt`. Pure: the caller repairs (or, read-only, reports) the tail.
fn scan_segment(path: &Path, bytes: &[u8], seq: u64, is_last: bool) -> Result<ScannedSegment, StoreError> {
    super::data_dir::refuse_legacy_json(path, bytes)?;
    if bytes.len() as u64 % SEGMENT_LENGTH_MULTIPLE_BYTES != 0 {
        return Err(StoreError::corrupt(
            path,
            bytes.len() as u64,
            "file length is not a multiple of 4096: truncated",
        ));
    }
    StoreError::check_version(
        path,
        "log segment",
        bytes,
        &super::record::SEGMENT_MAGIC,
        super::record::SEGMENT_VERSION_OFFSET,
        &[super::record::SEGMENT_VERSION],
    )?;
    match decode_segment_header(bytes) {
        Ok(found) if found == seq => {}
        Ok(_) => return Err(StoreError::corrupt(path, 16, "segment number does not match the file name")),
        Err(reason) => return Err(StoreError::corrupt(path, 0, reason)),
    }
    let mut records = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES as usize;
    let bad = loop {
        match decode_record(&bytes[offset..]) {
            Ok(record) => {
                if record.durable_end > offset as u64 {
                    break Some((offset, "record claims durability beyond itself"));
                }
                records.push(ScannedRecord { index: record.index, term: record.term, offset });
                offset += record.encoded_len;
            }
            Err(RecordError::Zeros) if bytes[offset..].iter().all(|&b| b == 0) => break None,
            Err(RecordError::Zeros) => break Some((offset, "zeros followed by non-zero bytes")),
            Err(RecordError::Invalid(reason)) => break Some((offset, reason)),
        }
    };
    let Some((bad_offset, reason)) = bad else {
        return Ok(ScannedSegment { records, end: offset, torn: None });
    };
    if !is_last {
        // Segments before the last were synced whole before the next was created.
        return Err(StoreError::corrupt(path, bad_offset as u64, reason));
    }
    if let Some(proof) = durable_record_after(bytes, bad_offset) {
        let reason = format!("{reason}; the record at offset {proof} shows these bytes were synced");
        return Err(StoreError::corrupt(path, bad_offset as u64, reason));
    }
    let dirty_end = bytes.iter().rposition(|&b| b != 0).map_or(bad_offset, |p| p + 1);
    Ok(ScannedSegment {
        records,
        end: bad_offset,
        torn: Some(TornTail { offset: bad_offset, reason, dirty_end }),
    })
}

/// The log of a data directory read into memory without changing anything
/// (`Store::read_only`): the same replay as [`Log::open`], with what an open would
/// repair or remove reported as warnings.
pub(crate) struct ReadOnlyLog {
    /// Each live segment's path and bytes.
    segments: Vec<(PathBuf, Vec<u8>)>,
    first_index: u64,
    /// Per entry: its term, segment (position in `segments`) and offset.
    locations: VecDeque<(u64, usize, usize)>,
    /// The last segment and where its records end.
    tail: Option<(PathBuf, u64)>,
}

impl ReadOnlyLog {
    /// Reads the segments of `dir` from `first_segment_seq` on.
    pub(crate) fn read(
        dir: &Path,
        first_segment_seq: u64,
        warnings: &mut Vec<String>,
    ) -> Result<ReadOnlyLog, StoreError> {
        let mut seqs = Vec::new();
        for item in fs::read_dir(dir).map_err(|e| StoreError::io(dir, "read directory", e))? {
            let item = item.map_err(|e| StoreError::io(dir, "read directory", e))?;
            let name = item.file_name();
            let name = name.to_str().unwrap_or_default();
            if let Some(seq) = parse_segment_name(name) {
                seqs.push(seq);
            } else if name.strip_suffix(".tmp").and_then(parse_segment_name).is_some() {
                warnings.push(format!(
                    "unfinished segment {} (removed at the next start)",
                    item.path().display()
                ));
            }
        }
        seqs.sort_unstable();
        let mut log =
            ReadOnlyLog { segments: Vec::new(), first_index: 1, locations: VecDeque::new(), tail: None };
        let live: Vec<u64> = seqs.iter().copied().filter(|&seq| seq >= first_segment_seq).collect();
        for &seq in seqs.iter().filter(|&&seq| seq < first_segment_seq) {
            let path = dir.join(segment_name(seq));
            warnings.push(format!(
                "segment {} left before the snapshot's log (removed at the next start)",
                path.display()
            ));
        }
        for (position, &seq) in live.iter().enumerate() {
            let path = dir.join(segment_name(seq));
            let bytes = fs::read(&path).map_err(|e| StoreError::io(&path, "read", e))?;
            let scanned = scan_segment(&path, &bytes, seq, position + 1 == live.len())?;
            for record in &scanned.records {
                let location = (record.term, log.segments.len(), record.offset);
                replay(&mut log.first_index, &mut log.locations, record.index, location);
            }
            if let Some(torn) = &scanned.torn {
                warnings.push(torn.warning(&path, "cut back to the last whole record at the next start"));
            }
            log.tail = Some((path.clone(), scanned.end as u64));
            log.segments.push((path, bytes));
        }
        Ok(log)
    }

    /// The first index held, or `last_index() + 1` if none.
    pub(crate) fn first_index(&self) -> u64 {
        self.first_index
    }

    /// The last index held, or `first_index() - 1` if none.
    pub(crate) fn last_index(&self) -> u64 {
        self.first_index + self.locations.len() as u64 - 1
    }

    /// The term of the entry at `index`, if held.
    pub(crate) fn term(&self, index: u64) -> Option<u64> {
        let position = index.checked_sub(self.first_index)?;
        self.locations.get(position as usize).map(|l| l.0)
    }

    /// The last segment and where its records end, as [`Log::tail`].
    pub(crate) fn tail(&self, dir: &Path) -> (PathBuf, u64) {
        self.tail.clone().unwrap_or_else(|| (dir.to_path_buf(), 0))
    }

    /// As [`Log::forget_through`].
    pub(crate) fn forget_through(&mut self, index: u64) {
        forget_through(&mut self.first_index, &mut self.locations, index);
    }

    /// Every entry held, in order.
    pub(crate) fn entries(&self) -> Vec<Entry> {
        let mut index = self.first_index;
        self.locations
            .iter()
            .map(|&(_, segment, offset)| {
                let record = decode_record(&self.segments[segment].1[offset..]).expect("scanned before");
                let entry = Entry {
                    term: record.term,
                    index,
                    kind: record.kind,
                    data: Bytes::copy_from_slice(record.payload),
                };
                index += 1;
                entry
            })
            .collect()
    }
}

/// The offset of a valid record after `bad_offset` whose `durable_end` shows `bad_offset`
/// had been synced, if any: then the bad bytes were acknowledged data, not a torn write.
fn durable_record_after(bytes: &[u8], bad_offset: usize) -> Option<usize> {
    let mut offset = bad_offset + RECORD_ALIGN_BYTES;
    while offset < bytes.len() {
        if let Ok(record) = decode_record(&bytes[offset..]) {
            if record.durable_end > bad_offset as u64 && record.durable_end <= offset as u64 {
                return Some(offset);
            }
        }
        offset += RECORD_ALIGN_BYTES;
    }
    None
}
