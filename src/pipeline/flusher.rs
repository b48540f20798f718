//! The flusher of one route: drains committed chunks into batches, delivers them, and
//! acknowledges exactly what the sink accepted.
//!
//! Invariants kept here:
//! - Only committed chunks are read (the queue's committed watermark).
//! - A chunk that fails verification is set aside, never sent (invariant 4).
//! - A batch is acknowledged only after every record in it was accepted, or dead-lettered as one
//!   the destination can never take (invariants 2 and 5). Failed entries are resent alone, with
//!   exponential, jittered, capped back-off, without limit of time.
//! - Batches are delivered one at a time, in queue order, so acknowledgements always cover a
//!   contiguous prefix of each chunk.
//! - Calls are paced by a rate learned from throttling ([`crate::sink::rate`]), within the
//!   sink's `max_bytes_per_sec` / `max_records_per_sec`.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use crate::config::SinkSettings;
use crate::events::{BatchDelivery, Events, RetryCause};
use crate::queue::chunk::decode_chunk;
use crate::queue::{ChunkAck, ChunkMeta, ChunkSeq, DeadLetter, DeadLetterReason, FileIdentity, QueueError, RouteQueue};
use crate::sink::rate::{CallSize, RateGovernor};
use crate::sink::{BatchLimits, BatchPacker, Offer, OutgoingRecord, RecordOutcome, Sink, SinkError};

/// When a flusher stops.
#[derive(Clone)]
pub struct FlusherStop {
    /// Stop soon: deliver the batch being built (for at most `shutdown_timeout`), then exit.
    pub stop: CancellationToken,
    /// No more chunks will be appended: exit once everything committed is delivered.
    pub input_closed: CancellationToken,
    pub shutdown_timeout: Duration,
}

pub struct Flusher {
    queue: RouteQueue,
    sink: Arc<Sink>,
    settings: SinkSettings,
    limits: BatchLimits,
    events: Arc<Events>,
    stopping: FlusherStop,
    /// An acknowledgement that takes longer is a storage failure.
    storage_stall_timeout: Duration,
    /// The next chunk to read is the first pending one at or after this.
    next_seq: ChunkSeq,
    /// The chunk being packed, when a batch filled up in its middle.
    current: Option<LoadedChunk>,
    /// The pace of calls, learned from throttling (see [`crate::sink::rate`]).
    governor: std::sync::Mutex<RateGovernor>,
}

/// A verified chunk with the place of each record in its stored bytes.
struct LoadedChunk {
    seq: ChunkSeq,
    meta: ChunkMeta,
    stored_len: u64,
    bytes: sled::IVec,
    records: Vec<Range<usize>>,
    /// The next record to pack; starts at the acknowledged prefix stored for the chunk.
    next_record: u32,
}

/// A batch under construction, with what acknowledging it will record.
struct PendingBatch {
    records: Vec<OutgoingRecord>,
    /// Index into `acks` of the chunk each record came from.
    record_chunk: Vec<usize>,
    packer: BatchPacker,
    /// One entry per chunk touched, in queue order.
    acks: Vec<ChunkAck>,
    chunk_paths: Vec<Vec<u8>>,
    dead_letters: Vec<DeadLetter>,
    /// Indices into `records` the destination refused as invalid (dead-lettered, not delivered).
    rejected: Vec<usize>,
    opened_at: Instant,
}

impl PendingBatch {
    fn new(limits: BatchLimits) -> PendingBatch {
        PendingBatch {
            records: Vec::new(),
            record_chunk: Vec::new(),
            packer: BatchPacker::new(limits),
            acks: Vec::new(),
            chunk_paths: Vec::new(),
            dead_letters: Vec::new(),
            rejected: Vec::new(),
            opened_at: Instant::now(),
        }
    }

    fn is_empty(&self) -> bool {
        self.acks.is_empty()
    }

    /// What the destination took of this batch, once it is accepted.
    fn delivery(&self) -> BatchDelivery {
        let mut delivery = BatchDelivery::default();
        for (_, record) in self.records.iter().enumerate().filter(|(index, _)| !self.rejected.contains(index)) {
            delivery.lines += u64::from(record.lines);
            delivery.sink_records += 1;
            delivery.bytes += record.data.len() as u64;
            delivery.billed_units += record.billed_units();
        }
        delivery
    }

    /// The ack entry for `chunk`, added on first use.
    fn ack_for(&mut self, chunk: &LoadedChunk) -> usize {
        if self.acks.last().is_some_and(|ack| ack.seq == chunk.seq) {
            return self.acks.len() - 1;
        }
        if self.acks.is_empty() {
            self.opened_at = Instant::now();
        }
        self.acks.push(ChunkAck {
            seq: chunk.seq,
            file: chunk.meta.file,
            start_offset: chunk.meta.start_offset,
            stored_len: chunk.stored_len,
            acked_records: chunk.next_record,
            record_count: chunk.meta.record_count,
        });
        self.chunk_paths.push(chunk.meta.path.clone());
        self.acks.len() - 1
    }
}

/// Whether filling stopped because the batch is full or the committed chunks ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    Full,
    Drained,
}

/// How delivering a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Accepted,
    /// Shutdown's deadline passed first: nothing is acknowledged; the batch is sent again after restart.
    Abandoned,
}

impl Flusher {
    pub fn new(
        queue: RouteQueue,
        sink: Arc<Sink>,
        settings: SinkSettings,
        events: Arc<Events>,
        stopping: FlusherStop,
        storage_stall_timeout: Duration,
    ) -> Flusher {
        let limits = sink.limits(&settings);
        let governor = std::sync::Mutex::new(RateGovernor::new(settings.rate_ceiling));
        Flusher { queue, sink, settings, limits, events, stopping, storage_stall_timeout, next_seq: ChunkSeq(0), current: None, governor }
    }

    pub async fn run(mut self) -> Result<(), super::PipelineError> {
        let mut committed = self.queue.committed();
        loop {
            let mut batch = PendingBatch::new(self.limits);
            loop {
                let below = *committed.borrow_and_update();
                if self.fill(&mut batch, below)? == Fill::Full {
                    break;
                }
                if batch.is_empty() {
                    if self.stopping.stop.is_cancelled() || self.stopping.input_closed.is_cancelled() && self.drained(&committed) {
                        return Ok(());
                    }
                    tokio::select! {
                        _ = committed.changed() => continue,
                        _ = self.stopping.stop.cancelled() => return Ok(()),
                        _ = self.stopping.input_closed.cancelled() => continue,
                    }
                }
                let deadline = batch.opened_at + self.settings.flush_interval;
                let nothing_more_comes = self.stopping.input_closed.is_cancelled() && self.drained(&committed);
                if batch.records.is_empty() || self.stopping.stop.is_cancelled() || nothing_more_comes || Instant::now() >= deadline {
                    break;
                }
                tokio::select! {
                    _ = committed.changed() => {}
                    _ = tokio::time::sleep_until(deadline.into()) => break,
                    _ = self.stopping.stop.cancelled() => break,
                    _ = self.stopping.input_closed.cancelled() => {}
                }
            }
            let started = Instant::now();
            if !batch.records.is_empty() && self.deliver(&mut batch).await == Delivery::Abandoned {
                self.events.batch_abandoned(self.queue.name(), batch.records.len() as u64);
                return Ok(());
            }
            if let Err(error) = self.acknowledge(&batch).await {
                self.events.queue_failed(self.queue.name(), "acknowledge", &error);
                return Err(super::storage_failure(self.queue.name(), "acknowledge", error));
            }
            for letter in &batch.dead_letters {
                self.events.dead_lettered(self.queue.name(), letter);
            }
            self.events.batch_acknowledged(self.queue.name(), &batch.delivery(), started.elapsed());
            if self.stopping.stop.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// Records the batch's acknowledgement and makes it durable. The sled write runs on a
    /// blocking thread, and both steps are bounded by `storage_stall_timeout`, because sled can
    /// block instead of failing after an I/O error.
    async fn acknowledge(&self, batch: &PendingBatch) -> Result<(), QueueError> {
        let stalled = QueueError::Stalled { operation: "acknowledge", after: self.storage_stall_timeout };
        let queue = self.queue.clone();
        let (acks, dead_letters) = (batch.acks.clone(), batch.dead_letters.clone());
        let write = tokio::task::spawn_blocking(move || queue.record_acknowledgement(&acks, &dead_letters));
        match tokio::time::timeout(self.storage_stall_timeout, write).await {
            Ok(Ok(written)) => written?,
            Ok(Err(_)) | Err(_) => return Err(stalled),
        }
        tokio::time::timeout(self.storage_stall_timeout, self.queue.make_durable()).await.map_err(|_| stalled)?
    }

    /// True when every committed chunk has been packed and the reader has committed all it appended.
    fn drained(&self, committed: &tokio::sync::watch::Receiver<ChunkSeq>) -> bool {
        self.current.is_none() && self.next_seq >= *committed.borrow()
    }

    /// Packs committed records into `batch` until it is full or no committed chunk is left.
    fn fill(&mut self, batch: &mut PendingBatch, committed: ChunkSeq) -> Result<Fill, QueueError> {
        loop {
            let chunk = match self.current.take() {
                Some(chunk) => chunk,
                None => match self.load_next(committed)? {
                    Some(chunk) => chunk,
                    None => {
                        // Nothing is pending below the watermark: later reads start there.
                        self.next_seq = self.next_seq.max(committed);
                        return Ok(Fill::Drained);
                    }
                },
            };
            let mut chunk = chunk;
            let ack = batch.ack_for(&chunk);
            while chunk.next_record < chunk.meta.record_count {
                let range = chunk.records[chunk.next_record as usize].clone();
                let piece_len = (range.len() + usize::from(self.settings.append_newline)) as u64;
                if self.packs_into_last(batch, piece_len) {
                    if batch.packer.extend_last(piece_len) == Offer::Full {
                        self.current = Some(chunk);
                        return Ok(Fill::Full);
                    }
                    if let Some(last) = batch.records.last_mut() {
                        last.data.extend_from_slice(&chunk.bytes[range]);
                        last.data.push(b'\n');
                        last.lines += 1;
                    }
                    chunk.next_record += 1;
                    batch.acks[ack].acked_records = chunk.next_record;
                    continue;
                }
                let mut data = Vec::with_capacity(range.len() + 1);
                data.extend_from_slice(&chunk.bytes[range]);
                if self.settings.append_newline {
                    data.push(b'\n');
                }
                match batch.packer.offer(data.len() as u64) {
                    Offer::Added => {
                        batch.records.push(OutgoingRecord { data, lines: 1 });
                        batch.record_chunk.push(ack);
                    }
                    Offer::Full => {
                        self.current = Some(chunk);
                        return Ok(Fill::Full);
                    }
                    Offer::TooLarge => {
                        let limit = self.limits.max_record_bytes.unwrap_or(self.limits.max_bytes);
                        let detail = format!(
                            "record {} of chunk {} is {} bytes as sent; the destination takes at most {limit}",
                            chunk.next_record,
                            chunk.seq,
                            data.len()
                        );
                        batch.dead_letters.push(record_dead_letter(
                            chunk.meta.file,
                            &chunk.meta.path,
                            chunk.meta.start_offset,
                            DeadLetterReason::RecordTooLarge,
                            detail,
                            self.record_as_read(data),
                        ));
                    }
                }
                chunk.next_record += 1;
                batch.acks[ack].acked_records = chunk.next_record;
            }
            if batch.packer.is_full() {
                return Ok(Fill::Full);
            }
        }
    }

    /// Reads and verifies the next committed chunk; one that fails verification is set aside.
    fn load_next(&mut self, committed: ChunkSeq) -> Result<Option<LoadedChunk>, QueueError> {
        loop {
            let Some(stored) = self.queue.read_pending(self.next_seq, committed)? else {
                return Ok(None);
            };
            self.next_seq = ChunkSeq(stored.seq.0 + 1);
            match decode_chunk(stored.seq, &stored.bytes) {
                Ok(decoded) => {
                    let records = decoded.record_ranges().collect();
                    let meta = decoded.meta.clone();
                    return Ok(Some(LoadedChunk {
                        seq: stored.seq,
                        stored_len: stored.bytes.len() as u64,
                        next_record: stored.acked_records.min(meta.record_count),
                        meta,
                        records,
                        bytes: stored.bytes.clone(),
                    }));
                }
                Err(error) => {
                    self.events.chunk_set_aside(self.queue.name(), stored.seq, &error);
                    self.queue.set_aside(stored.seq, &error)?;
                }
            }
        }
    }

    /// Sends the batch until every record is accepted or dead-lettered, or shutdown's deadline passes.
    async fn deliver(&self, batch: &mut PendingBatch) -> Delivery {
        let route = self.queue.name();
        let abandon = abandon_after(self.stopping.stop.clone(), self.stopping.shutdown_timeout);
        tokio::pin!(abandon);
        let mut groups: VecDeque<Vec<usize>> = VecDeque::from([(0..batch.records.len()).collect()]);
        let mut backoff = self.backoff();
        let mut attempt = 0u64;
        while let Some(mut group) = groups.pop_front() {
            loop {
                attempt += 1;
                let size = call_size(&batch.records, &group);
                let pace = self.lock_governor().reserve(size, Instant::now());
                if !pace.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(pace) => {}
                        _ = &mut abandon => return Delivery::Abandoned,
                    }
                }
                let call_started = Instant::now();
                let answer = tokio::select! {
                    answer = self.sink.put(&batch.records, &group) => answer,
                    _ = &mut abandon => return Delivery::Abandoned,
                };
                self.events.call_answered(group.len() as u64, call_started.elapsed());
                let (cause, delay) = match answer {
                    Ok(outcomes) => {
                        let mut failed = Vec::new();
                        let mut first_failure = None;
                        let mut throttled = false;
                        for (&index, outcome) in group.iter().zip(&outcomes) {
                            if let RecordOutcome::Failed { code, message } = outcome {
                                failed.push(index);
                                throttled |= is_throttling(code);
                                first_failure.get_or_insert((code.clone(), message.clone()));
                            }
                        }
                        let accepted = CallSize {
                            bytes: size.bytes - call_size(&batch.records, &failed).bytes,
                            records: (group.len() - failed.len()) as u64,
                        };
                        self.lock_governor().accepted(accepted, Instant::now());
                        let Some((code, message)) = first_failure else {
                            backoff = self.backoff();
                            break;
                        };
                        self.events.entries_failed(route, failed.len() as u64, group.len() as u64, &code, &message);
                        group = failed;
                        if throttled {
                            self.learn_from_throttling();
                        }
                        // Part of the call went through: the destination is up and near its quota,
                        // which the governor's pace now respects; waiting longer only wastes quota.
                        let delay = if throttled && accepted.records > 0 { Some(Duration::ZERO) } else { backoff.next() };
                        (RetryCause::FailedEntries, delay)
                    }
                    Err(SinkError::Throttled { message }) => {
                        self.events.call_throttled(route, &message);
                        self.learn_from_throttling();
                        (RetryCause::Throttled, backoff.next())
                    }
                    Err(SinkError::Transient { message }) => {
                        self.events.call_failed(route, &message);
                        (RetryCause::Transient, backoff.next())
                    }
                    Err(SinkError::Unavailable { message, fix, .. }) => {
                        self.events.sink_unavailable(route, &message, &fix);
                        (RetryCause::Unavailable, Some(self.settings.retry_max_backoff))
                    }
                    Err(SinkError::InvalidRecords { code, message }) => {
                        if let [index] = group[..] {
                            let chunk = batch.record_chunk[index];
                            let ack = &batch.acks[chunk];
                            let detail = format!("a record of chunk {}: {code}: {message}", ack.seq);
                            let data = self.record_as_read(batch.records[index].data.clone());
                            batch.rejected.push(index);
                            let letter = record_dead_letter(
                                ack.file,
                                &batch.chunk_paths[chunk],
                                ack.start_offset,
                                DeadLetterReason::RejectedBySink,
                                detail,
                                data,
                            );
                            batch.dead_letters.push(letter);
                        } else {
                            // Halve the group until the record the destination refuses is alone.
                            let second = group.split_off(group.len() / 2);
                            groups.push_front(second);
                            groups.push_front(group);
                        }
                        break;
                    }
                };
                let delay = delay.unwrap_or(self.settings.retry_max_backoff);
                self.events.retry_scheduled(route, cause, attempt, delay);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = &mut abandon => return Delivery::Abandoned,
                }
            }
        }
        Delivery::Accepted
    }

    fn lock_governor(&self) -> std::sync::MutexGuard<'_, RateGovernor> {
        // The governor holds plain numbers; after a panic elsewhere they are still usable.
        self.governor.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Lowers the send rate to what the destination took over the last second, if it took any.
    fn learn_from_throttling(&self) {
        if let Some(rates) = self.lock_governor().throttled(Instant::now()) {
            self.events.rate_learned(self.queue.name(), &rates);
        }
    }

    /// Whether the next line joins the batch's last record: packing is on and it fits.
    fn packs_into_last(&self, batch: &PendingBatch, piece_len: u64) -> bool {
        let Some(max) = self.settings.pack_max_bytes else { return false };
        batch.records.last().is_some_and(|last| last.data.len() as u64 + piece_len <= max)
    }

    /// A record as it was read: without the newline added for sending. Dead letters keep this,
    /// so that a replay sends exactly what a first delivery would.
    fn record_as_read(&self, mut data: Vec<u8>) -> Vec<u8> {
        if self.settings.append_newline {
            data.pop();
        }
        data
    }

    fn backoff(&self) -> backon::ExponentialBackoff {
        ExponentialBuilder::new()
            .with_min_delay(self.settings.retry_initial_backoff)
            .with_max_delay(self.settings.retry_max_backoff)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// Bytes and records of the records `which` of `records`.
fn call_size(records: &[OutgoingRecord], which: &[usize]) -> CallSize {
    CallSize { bytes: which.iter().map(|&index| records[index].data.len() as u64).sum(), records: which.len() as u64 }
}

/// Per-record error codes that mean "over the stream's quota".
fn is_throttling(code: &str) -> bool {
    matches!(code, "ServiceUnavailableException" | "ThrottlingException" | "LimitExceededException")
}

/// Completes when `stop` has fired and `grace` has passed since.
async fn abandon_after(stop: CancellationToken, grace: Duration) {
    stop.cancelled().await;
    tokio::time::sleep(grace).await;
}

/// A dead letter for a record that was already packed; `offset` is its chunk's start (records
/// do not carry their own offsets), `detail` says which record of the chunk it is.
fn record_dead_letter(
    file: FileIdentity,
    path: &[u8],
    offset: u64,
    reason: DeadLetterReason,
    detail: String,
    mut data: Vec<u8>,
) -> DeadLetter {
    let record_len = data.len() as u64;
    data.truncate(crate::queue::dead_letter::MAX_KEPT_RECORD_BYTES);
    DeadLetter { reason, detail, file, path: path.to_vec(), offset, record_len, record: data, recorded_at_ms: crate::source::now_ms() }
}
