//! Start-up verification of a route's queue.
//!
//! What it does:
//! - verifies every pending chunk (magic, version, lengths, checksum); a chunk that fails is
//!   moved to the set-aside area with the reason, and listed in the [`RecoveryReport`];
//! - deletes chunk bodies that no pending entry refers to any more (a crash between an
//!   acknowledgement and the deletion of the bodies it completed, see [`super::bodies`]);
//! - rebuilds the in-memory accounting (queue bytes and records, outstanding ranges per file,
//!   retained chunks);
//! - finds, for each file, the byte ranges between its acknowledged and its read position that
//!   no valid pending chunk covers (chunks set aside now, or lost to a rollback), and stores them
//!   as owed by the file (with [`Repair::Apply`]), beside the ranges owed already (chunks set
//!   aside while running); reports every owed range no re-read chunk covers yet.
//!
//! What it never does: send or delete a record, move a position, or guess what a corrupt chunk
//! held. Re-reading the missing ranges from their source files (or dead-lettering them where
//! the bytes are gone) is the caller's job, before delivery starts: see `pipeline::recover`.
//!
//! I/O errors stop start-up (they are returned); corruption never does.

use super::bodies::ChunkBodies;
use super::chunk::{self, ChunkError, ChunkSeq};
use super::keys::{self, KeyKind};
use super::positions::{self, FileIdentity, FileReadState};
use super::ranges::{uncovered_ranges, ByteRanges};
use super::{Accounting, ChunkOrigin, QueueError};

/// What start-up found.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    /// Chunks that failed verification and were set aside.
    pub set_aside: Vec<SetAsideChunk>,
    /// Byte ranges read into the queue that no valid chunk holds any more.
    pub missing: Vec<MissingRange>,
}

#[derive(Debug, Clone)]
pub struct SetAsideChunk {
    pub seq: ChunkSeq,
    pub error: ChunkError,
}

/// Bytes `[start, end)` of a file that must be re-read from the source or dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingRange {
    pub file: FileIdentity,
    pub path: Vec<u8>,
    pub start: u64,
    pub end: u64,
}

pub(crate) struct ScanResult {
    pub next_seq: ChunkSeq,
    pub accounting: Accounting,
    pub report: RecoveryReport,
}

/// Whether a scan repairs what it finds or only reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// The daemon's start-up: chunks that fail verification are set aside, bodies no chunk
    /// references are removed, and the tree is flushed.
    Apply,
    /// Inspection (`tailhose queue stats | list | show | verify | export | dead-letters`,
    /// `tailhose status` of a stopped daemon): nothing is written; what a start-up would set
    /// aside is reported and left for it, so that its report and counters are not lost.
    Inspect,
}

pub(crate) fn scan_route(tree: &sled::Tree, chunk_bodies: &ChunkBodies, repair: Repair) -> Result<ScanResult, QueueError> {
    let next_seq = next_free_seq(tree)?;
    let mut accounting = Accounting::default();
    let mut report = RecoveryReport::default();
    let mut set_aside = sled::Batch::default();
    for entry in tree.range(keys::kind_range(KeyKind::FileOwed)) {
        let (key, value) = entry?;
        let (Some(file), Some(owed)) = (FileIdentity::from_key_bytes(&key[1..]), ByteRanges::decode(&value)) else { continue };
        accounting.files.entry(file).or_default().owed = owed;
    }
    for entry in tree.range(keys::kind_range(KeyKind::PendingChunk)) {
        let (key, pending_value) = entry?;
        let Some(seq) = keys::seq_of(&key) else { continue };
        let bytes = chunk_bodies.pending_chunk_bytes(seq, pending_value)?;
        match chunk::decode_chunk(seq, &bytes) {
            Ok(decoded) => {
                let is_replay = tree.contains_key(keys::seq_key(KeyKind::ReplayMarker, seq))?;
                let origin = if is_replay { ChunkOrigin::Replay } else { ChunkOrigin::Read };
                if origin == ChunkOrigin::Read {
                    let track = accounting.files.entry(decoded.meta.file).or_default();
                    // A chunk inside an owed range is a re-read of it, queued behind later chunks.
                    let ranges = match track.owed.contains(decoded.meta.start_offset) {
                        true => &mut track.recovering,
                        false => &mut track.outstanding,
                    };
                    ranges.insert(decoded.meta.start_offset, decoded.meta.end_offset);
                }
                accounting.add_pending(seq, &decoded.meta, bytes.len() as u64, origin);
                let acked_records =
                    tree.get(keys::seq_key(KeyKind::ChunkProgress, seq))?.and_then(|value| positions::decode_progress(&value)).unwrap_or(0);
                accounting.set_records_left(seq, decoded.meta.record_count.saturating_sub(acked_records));
            }
            Err(error) => {
                set_aside.remove(&key);
                set_aside.remove(&keys::seq_key(KeyKind::ChunkProgress, seq));
                set_aside.remove(&keys::seq_key(KeyKind::ReplayMarker, seq));
                set_aside.insert(&keys::seq_key(KeyKind::SetAsideChunk, seq), encode_set_aside(&error, &bytes));
                report.set_aside.push(SetAsideChunk { seq, error });
            }
        }
    }
    if repair == Repair::Apply {
        tree.apply_batch(set_aside)?;
        let unreferenced = chunk_bodies.unreferenced(|seq| accounting.pending.contains_key(&seq))?;
        chunk_bodies.remove_all(unreferenced)?;
        tree.flush()?;
    }
    for entry in tree.range(keys::kind_range(KeyKind::RetainedChunk)) {
        let (_, value) = entry?;
        accounting.retained.chunks += 1;
        accounting.retained.bytes += value.len() as u64;
    }

    let mut newly_owed = sled::Batch::default();
    for entry in tree.range(keys::kind_range(KeyKind::FileRead)) {
        let (key, value) = entry?;
        let (Some(file), Some(state)) = (FileIdentity::from_key_bytes(&key[1..]), FileReadState::decode(&value)) else { continue };
        let acked_offset =
            tree.get(keys::file_key(KeyKind::FileAcked, &file))?.and_then(|value| positions::decode_acked_offset(&value)).unwrap_or(0);
        let track = accounting.files.entry(file).or_default();
        track.queued_offset = state.queued_offset;
        track.acked_offset = acked_offset;
        let gaps = uncovered_ranges(acked_offset, state.queued_offset, &track.outstanding);
        if !gaps.is_empty() {
            for (start, end) in gaps {
                track.owed.insert(start, end);
            }
            super::store_owed(&mut newly_owed, &file, &track.owed);
        }
        let mut covered = track.recovering.clone();
        covered.extend(track.outstanding.iter().map(|(&start, &end)| (start, end)));
        for (start, end) in track.owed.less(&covered).iter() {
            report.missing.push(MissingRange { file, path: state.path.clone(), start, end });
        }
    }
    if repair == Repair::Apply {
        // Owed before any chunk re-read for them is appended or any position passes them.
        tree.apply_batch(newly_owed)?;
        tree.flush()?;
    }
    Ok(ScanResult { next_seq, accounting, report })
}

/// One past the highest sequence number ever used: the stored counter, or any chunk-keyed entry above it.
fn next_free_seq(tree: &sled::Tree) -> Result<ChunkSeq, QueueError> {
    let stored = tree.get(keys::meta_key(keys::NEXT_SEQ))?;
    let mut next = stored.and_then(|value| value.as_ref().try_into().ok().map(u64::from_be_bytes)).unwrap_or(0);
    for kind in [KeyKind::PendingChunk, KeyKind::RetainedChunk, KeyKind::SetAsideChunk, KeyKind::ChunkProgress, KeyKind::ReplayMarker] {
        if let Some((key, _)) = tree.range(keys::kind_range(kind)).next_back().transpose()? {
            if let Some(seq) = keys::seq_of(&key) {
                next = next.max(seq.0 + 1);
            }
        }
    }
    Ok(ChunkSeq(next))
}

/// Value under a `SetAsideChunk` key: `code_len: u8 ‖ code (ASCII) ‖ the chunk's stored bytes`.
pub fn encode_set_aside(error: &ChunkError, bytes: &[u8]) -> Vec<u8> {
    let code = error.code().as_bytes();
    let mut value = Vec::with_capacity(1 + code.len() + bytes.len());
    value.push(code.len() as u8);
    value.extend_from_slice(code);
    value.extend_from_slice(bytes);
    value
}
