//! What an operator can see and clean up in a route's queue: `tailhose queue list | show |
//! verify | export | purge`.
//!
//! Guarantees:
//! - Reading never changes the queue: listing, showing and verifying only read.
//! - Purging removes only what is outside the delivery path: dead letters, set-aside chunks and
//!   retained (already acknowledged) chunks. Pending chunks are never purged: removing them would
//!   skip records no sink acknowledged, which invariant 2 forbids.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use super::chunk::{decode_chunk, ChunkError, ChunkMeta, ChunkSeq, DecodedChunk};
use super::dead_letter::{DeadLetter, DeadLetterDecodeError};
use super::keys::{self, KeyKind};
use super::positions::{self, FileIdentity, FileReadState};
use super::ranges::{uncovered_ranges, ByteRanges};
use super::{retained, ChunkOrigin, QueueError, RouteQueue};

/// Where a chunk is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkState {
    /// Waiting to be delivered (or partly delivered).
    Pending,
    /// Delivered and acknowledged, kept for replay.
    Retained,
    /// Failed verification; kept for inspection, never sent.
    SetAside,
}

impl ChunkState {
    pub const ALL: [ChunkState; 3] = [ChunkState::Pending, ChunkState::Retained, ChunkState::SetAside];

    fn key_kind(self) -> KeyKind {
        match self {
            ChunkState::Pending => KeyKind::PendingChunk,
            ChunkState::Retained => KeyKind::RetainedChunk,
            ChunkState::SetAside => KeyKind::SetAsideChunk,
        }
    }
}

/// A chunk's stored value with the chunk bytes located inside it.
#[derive(Debug, Clone)]
pub struct StoredValue {
    pub seq: ChunkSeq,
    pub state: ChunkState,
    value: sled::IVec,
    chunk_start: usize,
    /// Retained: when the chunk was acknowledged.
    pub acked_at_ms: Option<u64>,
    /// Set aside: the verification error's code.
    pub set_aside_code: Option<String>,
}

impl StoredValue {
    fn parse(seq: ChunkSeq, state: ChunkState, value: sled::IVec) -> StoredValue {
        let (chunk_start, acked_at_ms, set_aside_code) = match state {
            ChunkState::Pending => (0, None, None),
            ChunkState::Retained => match retained::decode(&value) {
                Some(retained) => (retained::RETAINED_PREFIX_LEN, Some(retained.acked_at_ms), None),
                None => (value.len(), None, None),
            },
            ChunkState::SetAside => {
                let code_len = value.first().map_or(0, |&len| usize::from(len));
                let code = value.get(1..1 + code_len).map(|code| String::from_utf8_lossy(code).into_owned());
                ((1 + code_len).min(value.len()), None, code)
            }
        };
        StoredValue { seq, state, value, chunk_start, acked_at_ms, set_aside_code }
    }

    /// The chunk's stored bytes.
    pub fn chunk_bytes(&self) -> &[u8] {
        &self.value[self.chunk_start..]
    }

    /// Verifies and decodes the chunk.
    pub fn decode(&self) -> Result<DecodedChunk<'_>, ChunkError> {
        decode_chunk(self.seq, self.chunk_bytes())
    }

    /// Bytes the entry takes in the queue.
    pub fn stored_len(&self) -> u64 {
        self.value.len() as u64
    }
}

/// One line of `tailhose queue list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChunkListing {
    pub seq: u64,
    pub state: ChunkState,
    /// Pending chunks: whether it was read from a file or queued again by a replay.
    pub origin: Option<ChunkOrigin>,
    pub stored_bytes: u64,
    pub path: Option<String>,
    pub start_offset: Option<u64>,
    pub end_offset: Option<u64>,
    pub records: Option<u32>,
    /// Pending chunks: leading records already acknowledged.
    pub acked_records: Option<u32>,
    pub created_at_ms: Option<u64>,
    pub acked_at_ms: Option<u64>,
    /// Why the chunk cannot be read, when it cannot.
    pub error: Option<String>,
}

/// Which dead letters an operation takes.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterSelection {
    /// Reason codes (`rejected_by_sink`, ...); empty takes every reason.
    pub reasons: Vec<String>,
    pub ids: Option<RangeInclusive<u64>>,
}

impl DeadLetterSelection {
    pub fn takes(&self, id: u64, letter: &Result<DeadLetter, DeadLetterDecodeError>) -> bool {
        let id_matches = self.ids.as_ref().is_none_or(|ids| ids.contains(&id));
        let reason_matches = match letter {
            Ok(letter) => self.reasons.is_empty() || self.reasons.iter().any(|reason| reason == letter.reason.code()),
            // An entry that cannot be decoded has no reason; only an unfiltered selection takes it.
            Err(_) => self.reasons.is_empty(),
        };
        id_matches && reason_matches
    }
}

/// What `tailhose queue verify` found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    pub route: String,
    pub chunks_checked: u64,
    pub records_checked: u64,
    pub dead_letters_checked: u64,
    pub files_checked: u64,
    pub faults: Vec<VerifyFault>,
}

/// One inconsistency or damaged entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyFault {
    /// Stable code: `checksum_mismatch` and the other chunk error codes, `set_aside`,
    /// `dead_letter_unreadable`, `orphan_progress`, `orphan_replay_marker`, `position_order`,
    /// `chunk_outside_positions`, `uncovered_range`, `next_seq_behind`, `bad_value`.
    pub code: String,
    pub detail: String,
}

impl RouteQueue {
    /// Every chunk in `state`, in sequence order.
    pub fn stored_chunks(&self, state: ChunkState) -> impl Iterator<Item = Result<StoredValue, QueueError>> + '_ {
        self.inner.tree.range(keys::kind_range(state.key_kind())).filter_map(move |entry| match entry {
            Ok((key, value)) => keys::seq_of(&key).map(|seq| self.stored_value(seq, state, value)),
            Err(error) => Some(Err(QueueError::from(error))),
        })
    }

    /// One chunk by state and sequence number.
    pub fn stored_chunk(&self, state: ChunkState, seq: ChunkSeq) -> Result<Option<StoredValue>, QueueError> {
        let value = self.inner.tree.get(keys::seq_key(state.key_kind(), seq))?;
        value.map(|value| self.stored_value(seq, state, value)).transpose()
    }

    fn stored_value(&self, seq: ChunkSeq, state: ChunkState, value: sled::IVec) -> Result<StoredValue, QueueError> {
        let value = match state {
            ChunkState::Pending => self.inner.bodies.pending_chunk_bytes(seq, value)?,
            ChunkState::Retained | ChunkState::SetAside => value,
        };
        Ok(StoredValue::parse(seq, state, value))
    }

    /// A chunk in whatever state it is.
    pub fn find_chunk(&self, seq: ChunkSeq) -> Result<Option<StoredValue>, QueueError> {
        for state in ChunkState::ALL {
            if let Some(found) = self.stored_chunk(state, seq)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// The listing line of a stored chunk.
    pub fn describe(&self, stored: &StoredValue) -> Result<ChunkListing, QueueError> {
        let (origin, acked_records) = match stored.state {
            ChunkState::Pending => {
                let is_replay = self.inner.tree.contains_key(keys::seq_key(KeyKind::ReplayMarker, stored.seq))?;
                let acked = self
                    .inner
                    .tree
                    .get(keys::seq_key(KeyKind::ChunkProgress, stored.seq))?
                    .and_then(|value| positions::decode_progress(&value))
                    .unwrap_or(0);
                (Some(if is_replay { ChunkOrigin::Replay } else { ChunkOrigin::Read }), Some(acked))
            }
            ChunkState::Retained | ChunkState::SetAside => (None, None),
        };
        let decoded = stored.decode();
        let meta: Option<&ChunkMeta> = decoded.as_ref().ok().map(|chunk| &chunk.meta);
        Ok(ChunkListing {
            seq: stored.seq.0,
            state: stored.state,
            origin,
            stored_bytes: stored.stored_len(),
            path: meta.map(|meta| String::from_utf8_lossy(&meta.path).into_owned()),
            start_offset: meta.map(|meta| meta.start_offset),
            end_offset: meta.map(|meta| meta.end_offset),
            records: meta.map(|meta| meta.record_count),
            acked_records,
            created_at_ms: meta.map(|meta| meta.created_at_ms),
            acked_at_ms: stored.acked_at_ms,
            error: match (&decoded, &stored.set_aside_code) {
                (Err(error), Some(code)) => Some(format!("set aside ({code}): {error}")),
                (Err(error), None) => Some(error.to_string()),
                (Ok(_), _) => None,
            },
        })
    }

    /// Checks every chunk's checksum and the consistency of positions, progress entries, replay
    /// markers and dead letters. Reads only.
    pub fn verify(&self) -> Result<VerifyReport, QueueError> {
        let tree = &self.inner.tree;
        let mut report = VerifyReport { route: self.inner.name.clone(), ..VerifyReport::default() };
        let fault = |code: &str, detail: String| VerifyFault { code: code.to_owned(), detail };
        let mut faults = Vec::new();
        let mut highest_seq = None;
        let mut pending_records: BTreeMap<ChunkSeq, u32> = BTreeMap::new();
        // Ranges of pending chunks read from files, per file, to check against the positions.
        let mut file_ranges: BTreeMap<FileIdentity, BTreeMap<u64, u64>> = BTreeMap::new();
        for state in ChunkState::ALL {
            for stored in self.stored_chunks(state) {
                let stored = stored?;
                report.chunks_checked += 1;
                highest_seq = highest_seq.max(Some(stored.seq));
                if state == ChunkState::SetAside {
                    let code = stored.set_aside_code.clone().unwrap_or_default();
                    faults.push(fault(
                        "set_aside",
                        format!("chunk {} was set aside ({code}); its range was recovered from the source or dead-lettered; remove it with `tailhose queue purge --set-aside`", stored.seq),
                    ));
                    continue;
                }
                match stored.decode() {
                    Ok(chunk) => {
                        report.records_checked += u64::from(chunk.meta.record_count);
                        if state == ChunkState::Pending {
                            pending_records.insert(stored.seq, chunk.meta.record_count);
                            if !tree.contains_key(keys::seq_key(KeyKind::ReplayMarker, stored.seq))? {
                                file_ranges.entry(chunk.meta.file).or_default().insert(chunk.meta.start_offset, chunk.meta.end_offset);
                            }
                        }
                    }
                    Err(error) => faults.push(fault(error.code(), format!("{state:?} chunk: {error}"))),
                }
            }
        }
        for entry in tree.range(keys::kind_range(KeyKind::ChunkProgress)) {
            let (key, value) = entry?;
            let Some(seq) = keys::seq_of(&key) else { continue };
            match (pending_records.get(&seq), positions::decode_progress(&value)) {
                (Some(&records), Some(acked)) if acked < records => {}
                (Some(&records), acked) => faults.push(fault(
                    "bad_value",
                    format!("progress of chunk {seq} says {acked:?} records acknowledged of {records}; a complete chunk is deleted"),
                )),
                (None, _) => faults.push(fault("orphan_progress", format!("progress entry for chunk {seq}, which is not pending"))),
            }
        }
        for entry in tree.range(keys::kind_range(KeyKind::ReplayMarker)) {
            let (key, _) = entry?;
            let Some(seq) = keys::seq_of(&key) else { continue };
            if !pending_records.contains_key(&seq) {
                faults.push(fault("orphan_replay_marker", format!("replay marker for chunk {seq}, which is not pending")));
            }
        }
        for entry in self.dead_letters() {
            let (id, letter) = entry?;
            report.dead_letters_checked += 1;
            if let Err(error) = letter {
                faults.push(fault("dead_letter_unreadable", format!("dead letter {id}: {error}")));
            }
        }
        let mut read_files = BTreeMap::new();
        for entry in tree.range(keys::kind_range(KeyKind::FileRead)) {
            let (key, value) = entry?;
            report.files_checked += 1;
            match (FileIdentity::from_key_bytes(&key[1..]), FileReadState::decode(&value)) {
                (Some(file), Some(state)) => {
                    read_files.insert(file, state);
                }
                _ => faults.push(fault("bad_value", format!("unreadable read position under key {key:02x?}"))),
            }
        }
        for entry in tree.range(keys::kind_range(KeyKind::FileAcked)) {
            let (key, value) = entry?;
            let (Some(file), Some(acked)) = (FileIdentity::from_key_bytes(&key[1..]), positions::decode_acked_offset(&value)) else {
                faults.push(fault("bad_value", format!("unreadable acknowledged position under key {key:02x?}")));
                continue;
            };
            let Some(state) = read_files.get(&file) else {
                faults.push(fault("position_order", format!("file {file} has an acknowledged position but no read position")));
                continue;
            };
            let path = String::from_utf8_lossy(&state.path);
            if acked > state.queued_offset {
                faults.push(fault(
                    "position_order",
                    format!("{path} ({file}): acknowledged offset {acked} is past its read offset {}", state.queued_offset),
                ));
            }
            let covered = file_ranges.remove(&file).unwrap_or_default();
            let owed = match tree.get(keys::file_key(KeyKind::FileOwed, &file))? {
                None => ByteRanges::default(),
                Some(value) => ByteRanges::decode(&value).unwrap_or_else(|| {
                    faults.push(fault("bad_value", format!("unreadable owed ranges of file {file}")));
                    ByteRanges::default()
                }),
            };
            // A re-read of an owed range may lie behind the acknowledged position.
            let misplaced = |&(start, end): &(u64, u64)| (start < acked && !owed.contains(start)) || end > state.queued_offset;
            if let Some((start, end)) = covered.iter().map(|(&start, &end)| (start, end)).find(misplaced) {
                faults.push(fault(
                    "chunk_outside_positions",
                    format!("{path}: a pending chunk covers {start}..{end}, outside acknowledged {acked} .. read {}", state.queued_offset),
                ));
            }
            let mut uncovered = owed.clone();
            for (start, end) in uncovered_ranges(acked, state.queued_offset, &covered) {
                uncovered.insert(start, end);
            }
            for (start, end) in uncovered.less(&covered).iter() {
                faults.push(fault(
                    "uncovered_range",
                    format!(
                        "{path}: bytes {start}..{end} are read but in no pending chunk; they are re-read from the source at the next start"
                    ),
                ));
            }
        }
        for file in file_ranges.keys() {
            faults.push(fault("chunk_outside_positions", format!("pending chunks of file {file}, which has no stored positions")));
        }
        let stored_next =
            tree.get(keys::meta_key(keys::NEXT_SEQ))?.and_then(|value| value.as_ref().try_into().ok().map(u64::from_be_bytes));
        if let (Some(highest), Some(next)) = (highest_seq, stored_next) {
            if next <= highest.0 {
                faults.push(fault("next_seq_behind", format!("next_seq {next} is not above chunk {highest}")));
            }
        }
        report.faults = faults;
        Ok(report)
    }

    /// Deletes the selected dead letters. Returns how many.
    pub fn purge_dead_letters(&self, selection: &DeadLetterSelection) -> Result<u64, QueueError> {
        let mut batch = sled::Batch::default();
        let mut purged = 0;
        for entry in self.dead_letters() {
            let (id, letter) = entry?;
            if selection.takes(id, &letter) {
                batch.remove(&keys::id_key(KeyKind::DeadLetter, id));
                purged += 1;
            }
        }
        self.inner.tree.apply_batch(batch)?;
        self.inner.db.flush()?;
        Ok(purged)
    }

    /// Deletes set-aside or retained chunks with a sequence number in `seqs`. Returns how many.
    pub fn purge_chunks(&self, state: ChunkState, seqs: &RangeInclusive<u64>) -> Result<u64, QueueError> {
        let kind = match state {
            ChunkState::Pending => return Ok(0),
            ChunkState::Retained | ChunkState::SetAside => state.key_kind(),
        };
        let from = keys::seq_key(kind, ChunkSeq(*seqs.start()));
        let mut batch = sled::Batch::default();
        let mut purged = 0;
        let mut freed_bytes = 0;
        for entry in self.inner.tree.range(from..) {
            let (key, value) = entry?;
            match keys::seq_of(&key) {
                Some(seq) if key[0] == kind as u8 && seq.0 <= *seqs.end() => {
                    batch.remove(key);
                    purged += 1;
                    freed_bytes += value.len() as u64;
                }
                _ => break,
            }
        }
        let mut accounting = self.accounting();
        self.inner.tree.apply_batch(batch)?;
        if state == ChunkState::Retained {
            accounting.retained.chunks = accounting.retained.chunks.saturating_sub(purged);
            accounting.retained.bytes = accounting.retained.bytes.saturating_sub(freed_bytes);
        }
        drop(accounting);
        self.inner.db.flush()?;
        Ok(purged)
    }
}
