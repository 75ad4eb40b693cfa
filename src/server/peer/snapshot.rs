//! Snapshots sent in chunks: a leader's InstallSnapshot reaches a follower as a series of
//! bounded `POST /raft/snapshot/chunk` requests, appended on the follower to a staging
//! file (`store::IncomingSnapshot`), then one `POST /raft/snapshot/install` carrying the
//! message itself without its data, which the follower takes from the file, mapped.
//! No request carries more than one chunk, so a snapshot of any size crosses (today's
//! whole-batch POST stopped at the 1 GiB peer body limit), and neither side holds more
//! than a chunk of it in flight.
//!
//! A transfer is named by the snapshot (`TransferId`: index, term, length and CRC-32C
//! of the data), not by the connection or the leader: the data at an index is the same
//! on every node (state machine safety, §5.4.3), so what a follower already holds of
//! it is good whoever sends the rest. A sender starts by asking what the follower holds
//! (a chunk of no bytes) and goes on from there, so a transfer cut by a lost connection,
//! a timeout or a new leader resumes where it stopped instead of starting over.
//!
//! The follower keeps one transfer: a chunk at offset 0 of another snapshot replaces
//! it, a chunk anywhere else is answered `409` with the bytes held, and the sender
//! continues from those. The CRC is checked over the bytes as they arrive; the install
//! is refused unless the file holds exactly the named length with the named CRC. The
//! message then goes the way of every peer message (`NodeHandle::deliver`: decoded off
//! the loop, refused if it does not decode).
//!
//! A peer that does not know these routes (a build from before them) answers 404: the
//! sender then posts the whole batch to `/raft/messages` as before, for a while.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::server::metrics::Metrics;
use crate::store::{IncomingSnapshot, StoreError};

/// Where chunks go.
pub const CHUNK_PATH: &str = "/raft/snapshot/chunk";
/// Where the InstallSnapshot message goes once its data is there.
pub const INSTALL_PATH: &str = "/raft/snapshot/install";
/// Names the transfer on both routes (`TransferId::header_value`).
pub const TRANSFER_HEADER: &str = "x-mmapd-snapshot-transfer";
/// Where in the data a chunk starts (decimal).
pub const OFFSET_HEADER: &str = "x-mmapd-snapshot-offset";
/// The largest chunk a node accepts, whatever the sender's `--snapshot-chunk-bytes`.
pub const MAX_CHUNK_BYTES: usize = 64 << 20;
/// The smallest chunk a sender may be set to send.
pub const MIN_CHUNK_BYTES: usize = 4 << 10;
/// `--snapshot-chunk-bytes`' default.
pub const DEFAULT_CHUNK_BYTES: usize = 8 << 20;
/// The largest snapshot a transfer may name (1 TiB): far past any node's memory, so
/// only a garbled or hostile header is refused by it.
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 40;

/// The snapshot a transfer carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferId {
    /// The snapshot's last index.
    pub index: u64,
    /// The term of that index.
    pub term: u64,
    /// Bytes of data.
    pub len: u64,
    /// CRC-32C of the data.
    pub crc: u32,
}

impl TransferId {
    /// The id of `data`, the snapshot at `index` and `term`.
    pub fn of(index: u64, term: u64, data: &[u8]) -> TransferId {
        TransferId { index, term, len: data.len() as u64, crc: crc32c::crc32c(data) }
    }

    /// `INDEX-TERM-LEN-CRC`, decimal but the CRC's 8 hex digits.
    pub fn header_value(&self) -> String {
        format!("{}-{}-{}-{:08x}", self.index, self.term, self.len, self.crc)
    }

    /// Reads `header_value`'s form; Err names what is wrong.
    pub fn parse(text: &str) -> Result<TransferId, String> {
        let bad = || format!("{TRANSFER_HEADER} must be INDEX-TERM-LEN-CRC32C, got {text:?}");
        let mut parts = text.split('-');
        let mut number = || parts.next().and_then(|part| part.parse::<u64>().ok()).ok_or_else(bad);
        let (index, term, len) = (number()?, number()?, number()?);
        let crc = parts.next().filter(|crc| crc.len() == 8).ok_or_else(bad)?;
        let crc = u32::from_str_radix(crc, 16).map_err(|_| bad())?;
        if parts.next().is_some() {
            return Err(bad());
        }
        if len > MAX_SNAPSHOT_BYTES {
            return Err(format!(
                "a snapshot of {len} bytes is more than the {MAX_SNAPSHOT_BYTES} a transfer may carry"
            ));
        }
        Ok(TransferId { index, term, len, crc })
    }
}

/// What a follower does with one chunk, given the transfer it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkStep {
    /// A chunk of no bytes: answer what is held of this snapshot (0 if another).
    Probe(u64),
    /// Append it; `replace`: first drop the transfer held (another snapshot's, or none).
    Append {
        /// Start a new staging file for this snapshot.
        replace: bool,
    },
    /// It does not continue what is held: answer `409` with the bytes held of this
    /// snapshot (0 if another), for the sender to continue from.
    Conflict(u64),
}

/// Decides what to do with a chunk of `chunk_len` bytes at `offset` of `id`, when the
/// follower holds `held` bytes of `holding`. Pure: the rules of the module docs.
pub fn chunk_step(
    holding: Option<(TransferId, u64)>,
    id: TransferId,
    offset: u64,
    chunk_len: u64,
) -> Result<ChunkStep, String> {
    let end = offset.checked_add(chunk_len).ok_or_else(|| format!("offset {offset} overflows"))?;
    if end > id.len {
        return Err(format!(
            "a chunk of {chunk_len} bytes at {offset} ends past the snapshot's {} bytes",
            id.len
        ));
    }
    let held = match holding {
        Some((current, held)) if current == id => Some(held),
        _ => None,
    };
    Ok(match (held, chunk_len) {
        (held, 0) => ChunkStep::Probe(held.unwrap_or(0)),
        (Some(held), _) if offset == held => ChunkStep::Append { replace: false },
        (None, _) if offset == 0 => ChunkStep::Append { replace: true },
        (held, _) => ChunkStep::Conflict(held.unwrap_or(0)),
    })
}

/// Why a chunk or an install was refused.
#[derive(Debug)]
pub enum ReceiveError {
    /// The request is wrong (a bad header, a chunk past the end, an incomplete or
    /// damaged transfer at install): 400.
    Bad(String),
    /// The chunk does not continue what is held: 409, with the bytes held.
    Conflict(u64),
    /// The staging file could not be written (a full disk, most likely).
    Storage(StoreError),
}

/// One transfer being received.
struct Partial {
    id: TransferId,
    file: IncomingSnapshot,
    /// CRC-32C of the bytes written so far.
    crc: u32,
}

/// The follower's side: at most one transfer held at a time.
pub struct Receiver {
    /// The data directory, where staging files go.
    dir: PathBuf,
    /// Held across the file write of a chunk, so chunks of one transfer land in order.
    /// Every change to it runs on a task of its own (`spawn`), so a request dropped
    /// half way (its sender timed out and closed the connection) cannot lose the
    /// transfer held: the write finishes and the slot gets it back.
    slot: Arc<tokio::sync::Mutex<Option<Partial>>>,
}

impl Receiver {
    /// A receiver staging transfers in `dir`.
    pub fn new(dir: PathBuf) -> Receiver {
        Receiver { dir, slot: Arc::new(tokio::sync::Mutex::new(None)) }
    }

    /// Takes one chunk; returns the bytes now held of `id`. Counted in `metrics` (the
    /// node's, or a test's) by the chunk's own task, so a chunk written for a request
    /// that was dropped half way is counted too.
    pub async fn chunk<M>(
        &self,
        id: TransferId,
        offset: u64,
        bytes: Bytes,
        metrics: Arc<M>,
    ) -> Result<u64, ReceiveError>
    where
        M: AsRef<Metrics> + Send + Sync + 'static,
    {
        let len = bytes.len() as u64;
        let (slot, dir) = (self.slot.clone(), self.dir.clone());
        tokio::spawn(async move {
            let metrics = metrics.as_ref().as_ref();
            match Self::take_chunk(&slot, dir, id, offset, bytes).await? {
                ChunkStep::Probe(held) => {
                    if held > 0 {
                        metrics.snapshot_transfers_resumed.inc();
                        tracing::info!(
                            index = id.index,
                            held,
                            of = id.len,
                            "a sender resumes a snapshot transfer"
                        );
                    }
                    Ok(held)
                }
                ChunkStep::Conflict(held) => Err(ReceiveError::Conflict(held)),
                ChunkStep::Append { .. } => {
                    metrics.snapshot_chunks_received.inc();
                    metrics.snapshot_chunk_bytes_received.add(len);
                    Ok(offset + len)
                }
            }
        })
        .await
        .map_err(|e| ReceiveError::Bad(format!("taking a snapshot chunk: {e}")))?
    }

    /// `chunk`'s work, on its own task.
    async fn take_chunk(
        slot: &tokio::sync::Mutex<Option<Partial>>,
        dir: PathBuf,
        id: TransferId,
        offset: u64,
        bytes: Bytes,
    ) -> Result<ChunkStep, ReceiveError> {
        let mut slot = slot.lock().await;
        let holding = slot.as_ref().map(|partial| (partial.id, partial.file.written()));
        let step = chunk_step(holding, id, offset, bytes.len() as u64).map_err(ReceiveError::Bad)?;
        let mut partial = match step {
            ChunkStep::Probe(_) | ChunkStep::Conflict(_) => return Ok(step),
            ChunkStep::Append { replace: false } => slot.take().expect("chunk_step saw a transfer held"),
            ChunkStep::Append { replace: true } => {
                if let Some(old) = slot.take() {
                    tracing::info!(
                        index = old.id.index,
                        held = old.file.written(),
                        "dropping an unfinished snapshot transfer for another"
                    );
                }
                let file = tokio::task::spawn_blocking(move || IncomingSnapshot::create(&dir, id.index))
                    .await
                    .map_err(|e| ReceiveError::Bad(format!("staging a snapshot: {e}")))?
                    .map_err(ReceiveError::Storage)?;
                Partial { id, file, crc: 0 }
            }
        };
        let written = tokio::task::spawn_blocking(move || {
            let result = partial.file.append(&bytes);
            partial.crc = crc32c::crc32c_append(partial.crc, &bytes);
            result.map(|()| partial)
        })
        .await
        .map_err(|e| ReceiveError::Bad(format!("writing a snapshot chunk: {e}")))?;
        // On a write error the partial file is dropped (and removed): the sender's next
        // chunk is answered 409 with 0 held, and it starts again.
        *slot = Some(written.map_err(ReceiveError::Storage)?);
        Ok(step)
    }

    /// The data of `id`, whole and checked, mapped from its staging file; the transfer
    /// is then no longer held.
    pub async fn take_complete(&self, id: TransferId) -> Result<Bytes, ReceiveError> {
        let slot = self.slot.clone();
        tokio::spawn(async move { Self::complete(&slot, id).await })
            .await
            .map_err(|e| ReceiveError::Bad(format!("installing a received snapshot: {e}")))?
    }

    /// `take_complete`'s work, on its own task.
    async fn complete(
        slot: &tokio::sync::Mutex<Option<Partial>>,
        id: TransferId,
    ) -> Result<Bytes, ReceiveError> {
        let mut slot = slot.lock().await;
        let partial = match slot.take() {
            Some(partial) if partial.id == id => partial,
            other => {
                *slot = other;
                return Err(ReceiveError::Bad(format!(
                    "no transfer of the snapshot at {} is held",
                    id.index
                )));
            }
        };
        let held = partial.file.written();
        if held != id.len {
            let reason = format!("the snapshot at {} is {} bytes, {held} arrived", id.index, id.len);
            *slot = Some(partial);
            return Err(ReceiveError::Bad(reason));
        }
        if partial.crc != id.crc {
            // The bytes are wrong: start over (the next chunk at 0 begins anew).
            return Err(ReceiveError::Bad(format!(
                "the snapshot at {} arrived with CRC-32C {:08x}, not {:08x}",
                id.index, partial.crc, id.crc
            )));
        }
        tokio::task::spawn_blocking(move || partial.file.finish())
            .await
            .map_err(|e| ReceiveError::Bad(format!("mapping a received snapshot: {e}")))?
            .map_err(ReceiveError::Storage)
    }
}

/// The chunks of a transfer of `len` bytes from `offset` on: `(start, end)` pairs of at
/// most `chunk` bytes each.
pub fn chunks_from(offset: u64, len: u64, chunk: usize) -> impl Iterator<Item = (u64, u64)> {
    let chunk = chunk.max(1) as u64;
    (0..)
        .map(move |i| offset + i * chunk)
        .take_while(move |&start| start < len)
        .map(move |start| (start, (start + chunk).min(len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: TransferId = TransferId { index: 100, term: 3, len: 10, crc: 0xdead_beef };
    const OTHER: TransferId = TransferId { index: 200, term: 3, len: 10, crc: 0x0bad_f00d };

    #[test]
    fn the_transfer_id_round_trips_through_its_header_and_garbage_is_refused() {
        let id = TransferId::of(7, 2, b"hello");
        assert_eq!(TransferId::parse(&id.header_value()).unwrap(), id);
        for bad in [
            "",
            "1-2-3",
            "1-2-3-zzzzzzzz",
            "1-2-3-0000000",
            "1-2-3-00000000-5",
            "a-2-3-00000000",
            "-1-2-3-00000000",
        ] {
            assert!(TransferId::parse(bad).is_err(), "{bad:?} accepted");
        }
        let huge = format!("1-2-{}-00000000", MAX_SNAPSHOT_BYTES + 1);
        assert!(TransferId::parse(&huge).unwrap_err().contains("more than"));
    }

    #[test]
    fn a_probe_answers_what_is_held_of_that_snapshot_only() {
        assert_eq!(chunk_step(None, ID, 0, 0), Ok(ChunkStep::Probe(0)));
        assert_eq!(chunk_step(Some((ID, 6)), ID, 0, 0), Ok(ChunkStep::Probe(6)));
        assert_eq!(chunk_step(Some((OTHER, 6)), ID, 0, 0), Ok(ChunkStep::Probe(0)));
    }

    #[test]
    fn a_chunk_appends_only_where_the_held_bytes_end() {
        assert_eq!(chunk_step(Some((ID, 4)), ID, 4, 3), Ok(ChunkStep::Append { replace: false }));
        // A repeat of a chunk already written (its answer was lost), or a gap.
        assert_eq!(chunk_step(Some((ID, 4)), ID, 0, 4), Ok(ChunkStep::Conflict(4)));
        assert_eq!(chunk_step(Some((ID, 4)), ID, 8, 2), Ok(ChunkStep::Conflict(4)));
    }

    #[test]
    fn another_snapshot_replaces_the_held_one_only_from_its_start() {
        assert_eq!(chunk_step(None, ID, 0, 5), Ok(ChunkStep::Append { replace: true }));
        assert_eq!(chunk_step(Some((OTHER, 9)), ID, 0, 5), Ok(ChunkStep::Append { replace: true }));
        assert_eq!(chunk_step(Some((OTHER, 9)), ID, 5, 5), Ok(ChunkStep::Conflict(0)));
        assert_eq!(chunk_step(None, ID, 5, 5), Ok(ChunkStep::Conflict(0)));
    }

    #[test]
    fn a_chunk_past_the_named_length_is_refused() {
        assert!(chunk_step(None, ID, 0, 11).is_err());
        assert!(chunk_step(Some((ID, 8)), ID, 8, 3).is_err());
        assert!(chunk_step(Some((ID, 8)), ID, u64::MAX, 3).is_err());
    }

    #[test]
    fn chunks_cover_the_rest_of_the_data_exactly_once() {
        assert_eq!(chunks_from(0, 10, 4).collect::<Vec<_>>(), vec![(0, 4), (4, 8), (8, 10)]);
        assert_eq!(chunks_from(6, 10, 4).collect::<Vec<_>>(), vec![(6, 10)]);
        assert_eq!(chunks_from(10, 10, 4).count(), 0);
        assert_eq!(chunks_from(0, 0, 4).count(), 0);
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn a_transfer_cut_half_way_resumes_and_installs_the_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let receiver = Receiver::new(dir.path().to_path_buf());
        let metrics = Arc::new(Metrics::default());
        let data: Bytes = (0..50_000u32).map(|i| (i * 7 % 256) as u8).collect::<Vec<_>>().into();
        let id = TransferId::of(9, 2, &data);
        runtime().block_on(async {
            assert_eq!(receiver.chunk(id, 0, Bytes::new(), metrics.clone()).await.unwrap(), 0);
            for (start, end) in chunks_from(0, id.len, 8192).take(3) {
                let held = receiver
                    .chunk(id, start, data.slice(start as usize..end as usize), metrics.clone())
                    .await
                    .unwrap();
                assert_eq!(held, end);
            }
            // Installing now is refused: the transfer is not whole.
            assert!(matches!(receiver.take_complete(id).await, Err(ReceiveError::Bad(_))));
            // A sender that lost its connection repeats a chunk: told where to go on.
            let repeat = receiver.chunk(id, 8192, data.slice(8192..16384), metrics.clone()).await;
            assert!(matches!(repeat, Err(ReceiveError::Conflict(24576))), "{repeat:?}");
            // A new sender asks first, and continues from there.
            let held = receiver.chunk(id, 0, Bytes::new(), metrics.clone()).await.unwrap();
            assert_eq!(held, 24576);
            assert_eq!(metrics.snapshot_transfers_resumed.get(), 1);
            for (start, end) in chunks_from(held, id.len, 8192) {
                receiver
                    .chunk(id, start, data.slice(start as usize..end as usize), metrics.clone())
                    .await
                    .unwrap();
            }
            let whole = receiver.take_complete(id).await.unwrap();
            assert_eq!(whole, data);
            assert_eq!(metrics.snapshot_chunk_bytes_received.get(), data.len() as u64);
            // Taken: a second install of it is refused.
            assert!(receiver.take_complete(id).await.is_err());
        });
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no staging file is left");
    }

    #[test]
    fn bytes_that_do_not_match_the_named_crc_are_never_installed() {
        let dir = tempfile::tempdir().unwrap();
        let receiver = Receiver::new(dir.path().to_path_buf());
        let metrics = Arc::new(Metrics::default());
        let data = Bytes::from_static(b"the snapshot's true bytes");
        let id = TransferId::of(5, 1, &data);
        runtime().block_on(async {
            let mut damaged = data.to_vec();
            damaged[3] ^= 0x40;
            receiver.chunk(id, 0, Bytes::from(damaged), metrics.clone()).await.unwrap();
            let refused = receiver.take_complete(id).await;
            assert!(
                matches!(&refused, Err(ReceiveError::Bad(reason)) if reason.contains("CRC")),
                "{refused:?}"
            );
            // Dropped: the sender starts over from 0, and then it installs.
            assert_eq!(receiver.chunk(id, 0, Bytes::new(), metrics.clone()).await.unwrap(), 0);
            receiver.chunk(id, 0, data.clone(), metrics.clone()).await.unwrap();
            assert_eq!(receiver.take_complete(id).await.unwrap(), data);
        });
    }

    #[test]
    fn a_chunk_of_another_snapshot_from_its_start_replaces_the_unfinished_one() {
        let dir = tempfile::tempdir().unwrap();
        let receiver = Receiver::new(dir.path().to_path_buf());
        let metrics = Arc::new(Metrics::default());
        let (old, new) = (Bytes::from_static(b"old snapshot data"), Bytes::from_static(b"new snapshot"));
        let (old_id, new_id) = (TransferId::of(5, 1, &old), TransferId::of(9, 2, &new));
        runtime().block_on(async {
            receiver.chunk(old_id, 0, old.slice(..4), metrics.clone()).await.unwrap();
            let midway = receiver.chunk(new_id, 4, new.slice(4..), metrics.clone()).await;
            assert!(matches!(midway, Err(ReceiveError::Conflict(0))), "{midway:?}");
            receiver.chunk(new_id, 0, new.clone(), metrics.clone()).await.unwrap();
            assert!(receiver.take_complete(old_id).await.is_err());
            assert_eq!(receiver.take_complete(new_id).await.unwrap(), new);
        });
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
