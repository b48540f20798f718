//! Replay: queue again records that left the delivery path, for `tailhose queue replay`.
//!
//! Two sources of records:
//! - retained chunks (acknowledged, kept by retention): for a downstream that lost data;
//! - dead letters: once their cause is fixed (the stream accepts them again).
//!
//! Guarantees:
//! - A replayed record becomes a pending chunk marked as a replay ([`RouteQueue::append_replay`]);
//!   it then goes through the same batching, acknowledgement and back-off as any record.
//! - A replayed dead letter is removed in the same atomic batch that queues it: after a crash it
//!   is either still a dead letter or queued, never both, never neither.
//! - A retained chunk stays retained when replayed, so the same range can be replayed again.
//! - A dry run reads only.
//! - Dead letters whose record was not kept whole (longer than 1 MiB, or lost to corruption)
//!   are never replayed: they are counted as skipped with the reason.

use std::ops::RangeInclusive;

use super::chunk::{ChunkDraft, ChunkSeq};
use super::inspect::{ChunkState, DeadLetterSelection};
use super::{now_ms, QueueError, RouteQueue};

/// Which retained chunks to replay. Times are when the chunk was read (its `created_at_ms`).
#[derive(Debug, Clone, Default)]
pub struct RetainedSelection {
    pub seqs: Option<RangeInclusive<u64>>,
    pub read_since_ms: Option<u64>,
    pub read_until_ms: Option<u64>,
}

impl RetainedSelection {
    fn takes(&self, seq: ChunkSeq, created_at_ms: u64) -> bool {
        self.seqs.as_ref().is_none_or(|seqs| seqs.contains(&seq.0))
            && self.read_since_ms.is_none_or(|since| created_at_ms >= since)
            && self.read_until_ms.is_none_or(|until| created_at_ms < until)
    }
}

/// Whether to change the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayMode {
    DryRun,
    Enqueue,
}

/// What a replay queued (or, in a dry run, would queue).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplaySummary {
    pub route: String,
    pub chunks: u64,
    pub records: u64,
    pub bytes: u64,
    /// Entries that matched but cannot be replayed, each with the reason.
    pub skipped: Vec<String>,
}

impl RouteQueue {
    /// Queues the records of the selected retained chunks again. Commit afterwards.
    pub fn replay_retained(&self, selection: &RetainedSelection, mode: ReplayMode) -> Result<ReplaySummary, QueueError> {
        let mut summary = ReplaySummary { route: self.name().to_owned(), ..ReplaySummary::default() };
        for stored in self.stored_chunks(ChunkState::Retained) {
            let stored = stored?;
            let chunk = match stored.decode() {
                Ok(chunk) => chunk,
                Err(error) => {
                    summary.skipped.push(format!("retained chunk {}: {error}", stored.seq));
                    continue;
                }
            };
            if !selection.takes(stored.seq, chunk.meta.created_at_ms) {
                continue;
            }
            let mut draft = ChunkDraft::new(chunk.meta.file, chunk.meta.path.clone(), chunk.meta.start_offset);
            for record in chunk.records() {
                draft.push_record(record);
                summary.bytes += record.len() as u64;
            }
            draft.meta.end_offset = chunk.meta.end_offset;
            draft.meta.created_at_ms = now_ms();
            summary.chunks += 1;
            summary.records += u64::from(draft.meta.record_count);
            if mode == ReplayMode::Enqueue {
                self.append_replay(&draft, None)?;
            }
        }
        Ok(summary)
    }

    /// Queues the selected dead letters' records again, each removed as it is queued. Commit afterwards.
    pub fn replay_dead_letters(&self, selection: &DeadLetterSelection, mode: ReplayMode) -> Result<ReplaySummary, QueueError> {
        let mut summary = ReplaySummary { route: self.name().to_owned(), ..ReplaySummary::default() };
        let mut selected = Vec::new();
        for entry in self.dead_letters() {
            let (id, letter) = entry?;
            if !selection.takes(id, &letter) {
                continue;
            }
            match letter {
                Ok(letter) if letter.record.is_empty() => {
                    summary.skipped.push(format!("dead letter {id} ({}): its bytes were not kept", letter.reason.code()))
                }
                Ok(letter) if (letter.record.len() as u64) < letter.record_len => summary.skipped.push(format!(
                    "dead letter {id} ({}): only the first {} of its {} bytes were kept",
                    letter.reason.code(),
                    letter.record.len(),
                    letter.record_len
                )),
                Ok(letter) => selected.push((id, letter)),
                Err(error) => summary.skipped.push(format!("dead letter {id}: {error}")),
            }
        }
        for (id, letter) in selected {
            // One chunk per letter keeps each record's own file and offset, should it be
            // dead-lettered again.
            let mut draft = ChunkDraft::new(letter.file, letter.path.clone(), letter.offset);
            draft.push_record(&letter.record);
            draft.meta.end_offset = letter.offset + letter.record_len;
            draft.meta.created_at_ms = now_ms();
            summary.chunks += 1;
            summary.records += 1;
            summary.bytes += letter.record.len() as u64;
            if mode == ReplayMode::Enqueue {
                self.append_replay(&draft, Some(id))?;
            }
        }
        Ok(summary)
    }
}
