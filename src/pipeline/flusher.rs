//! The flusher of one route: drains committed chunks into batches, delivers them, and hands each
//! delivered batch, in queue order, to [`super::acknowledger`], which records exactly what the
//! sink accepted while the next batches are packed and sent.
//!
//! Invariants kept here:
//! - Only committed chunks are read (the queue's committed watermark).
//! - A chunk that fails verification is set aside, never sent, and its range re-read from the
//!   source file at once (invariant 4).
//! - A batch is acknowledged only after every record in it was accepted, or dead-lettered as one
//!   the destination can never take (invariants 2 and 5). Failed entries are resent alone, with
//!   exponential, jittered, capped back-off, without limit of time.
//! - Up to `max_in_flight` batches have their own records in a call at once (a far region's
//!   round trip no longer caps throughput), and up to four times that many are sent and not yet
//!   acknowledged (the others wait only for leftovers resent together, see
//!   [`super::resender`]), holding at most 8 MiB of records together; they are acknowledged
//!   strictly in queue order: a batch's acknowledgement waits for every earlier one, so
//!   positions and each chunk's acknowledged count always cover a contiguous prefix. A batch abandoned at shutdown stops all later ones
//!   from being acknowledged: only batches in flight may be sent twice after a restart.
//! - Calls are paced by a rate learned from throttling ([`crate::sink::rate`]), within the
//!   sink's `max_bytes_per_sec` / `max_records_per_sec`.
//! - A sink whose stream is named per record ([`crate::sink::streams`]) has a courier, a pace
//!   and leftovers of its own for each stream: a batch still holds records in queue order
//!   whatever their streams, and its delivery sends each stream's records in calls of their
//!   own, at that stream's pace; the batch is done when every stream took its records. So
//!   acknowledgement stays a prefix of the queue, and a stream that is slow or refusing holds
//!   back the acknowledgement of what follows its records, never their correctness: each
//!   stream calls in `max_in_flight` places of its own, so the later batches are sent meanwhile
//!   for the other streams, up to the places of batches unacknowledged.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::acknowledger::{Acknowledger, Finished};
use super::courier::{record_dead_letter, Courier, Delivery};
use super::resender::{run_resender, Leftovers};
use crate::config::{SinkSettings, SourceSettings};
use crate::events::{BatchDelivery, Events};
use crate::queue::chunk::decode_chunk;
use crate::queue::{ChunkAck, ChunkMeta, ChunkSeq, DeadLetter, DeadLetterReason, QueueError, RouteQueue, StoredChunk};
use crate::sink::compression::Compression;
use crate::sink::rate::{CallSize, RateGovernor};
use crate::sink::streams::{Lane, StreamRouter};
use crate::sink::{aggregation, BatchLimits, BatchPacker, Offer, OutgoingRecords, PackFormat, Sink};

/// When a flusher stops.
#[derive(Clone)]
pub struct FlusherStop {
    /// Stop soon: send nothing new, let the batches in flight finish (for at most
    /// `shutdown_timeout`), then exit.
    pub stop: CancellationToken,
    /// No more chunks will be appended: exit once everything committed is delivered.
    pub input_closed: CancellationToken,
    pub shutdown_timeout: Duration,
}

pub struct Flusher {
    queue: RouteQueue,
    /// The route's source: where a chunk found damaged is re-read from.
    source: SourceSettings,
    settings: SinkSettings,
    limits: BatchLimits,
    events: Arc<Events>,
    stopping: FlusherStop,
    /// An acknowledgement that takes longer is a storage failure.
    storage_stall_timeout: Duration,
    sink: Arc<Sink>,
    /// The next chunk to read is the first pending one at or after this.
    next_seq: ChunkSeq,
    /// The chunk being packed, when a batch filled up in its middle.
    current: Option<LoadedChunk>,
    /// Chunks read from the queue and not yet packed, in order (all below `next_seq`).
    read_ahead: VecDeque<StoredChunk>,
    /// Which stream each record goes to.
    router: StreamRouter,
    /// One per stream ([`Lane`]), shared with every delivery task of this route.
    couriers: Vec<Arc<Courier>>,
    /// Each courier's resender; ends with this flusher.
    resenders: Vec<AbortOnDrop>,
}

/// Batches sent and not yet acknowledged, as a multiple of those calling (`max_in_flight`): a
/// batch left only with leftovers waits for them to be resent together (records refused at
/// random), and the batches after it wait for its acknowledgement in queue order; without
/// places beyond those calling, new batches would wait too (issue 17, 10 % of records refused:
/// 0.62 of the clean rate with as many as `max_in_flight`, 0.60–0.71 with twice, 0.72–0.77 with
/// four times).
const UNACKNOWLEDGED_PER_CALLING: usize = 4;

/// Batches in delivery at once while a learned pace is in force, as a multiple of those calling.
const PACED_UNACKNOWLEDGED_PER_CALLING: usize = 2;

/// What the records of unacknowledged batches hold in memory together, at most: before the
/// count of [`UNACKNOWLEDGED_PER_CALLING`], batches of 2 MiB (`max_batch_bytes`' default: packed
/// records, or large lines) are held to four, as many as call at once with `pack_records`, so
/// that peak RSS stays under 50 MiB whatever the records are (before, 16 batches of large lines
/// could hold 32 MiB).
const UNACKNOWLEDGED_BYTES_AT_MOST: usize = 8 << 20;

/// The unit of a place's size in permits.
const PLACE_UNIT: usize = 1024;

/// The places of batches sent and not yet acknowledged, as permits of one semaphore: a batch
/// takes as many as its records' KiB, and at least a share that keeps their number to the
/// count asked for. A place is taken at its least before a batch is filled, and topped up to
/// the batch's size before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Places {
    /// Permits in all: [`UNACKNOWLEDGED_BYTES_AT_MOST`] in [`PLACE_UNIT`]s.
    total: usize,
    /// What one batch takes at least.
    least: usize,
}

impl Places {
    fn for_batches(batches: usize) -> Places {
        let total = UNACKNOWLEDGED_BYTES_AT_MOST / PLACE_UNIT;
        Places { total, least: (total / batches.max(1)).max(1) }
    }

    /// The most batches that can hold places at once.
    fn batches(&self) -> usize {
        self.total / self.least
    }

    /// The permits a batch of `bytes` takes: never more than all (a batch larger than the
    /// budget still goes, alone).
    fn for_bytes(&self, bytes: usize) -> usize {
        bytes.div_ceil(PLACE_UNIT).clamp(self.least, self.total)
    }
}

/// A task that ends when this is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A batch in delivery on its own task. Dropping it aborts the task: a flusher that returns
/// leaves no call behind.
struct InFlight {
    task: JoinHandle<(PendingBatch, Delivery)>,
    sent_at: Instant,
    /// Held until the batch's acknowledgement is recorded (see [`Flusher::deliver`]); handed to
    /// the acknowledger with the batch.
    unacknowledged: Option<OwnedSemaphorePermit>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Tops `held` up to `wanted` permits if `places` has them free now; returns how many it still
/// lacks.
fn top_up(held: &mut OwnedSemaphorePermit, places: &Arc<Semaphore>, wanted: usize) -> usize {
    let lacking = wanted.saturating_sub(held.num_permits());
    if lacking == 0 {
        return 0;
    }
    match places.clone().try_acquire_many_owned(lacking as u32) {
        Ok(more) => {
            held.merge(more);
            0
        }
        Err(_) => lacking,
    }
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

/// Chunks read from the queue in one trip to a blocking thread: the trip costs about as much
/// as reading a chunk from sled's cache (packed records read a chunk every 1.3 ms).
const READ_AHEAD_CHUNKS: usize = 4;

/// The buffer a new batch starts with; it grows when a batch holds more.
const INITIAL_BATCH_BYTES: u64 = 128 * 1024;

/// A batch under construction, with what acknowledging it will record.
pub(super) struct PendingBatch {
    pub(super) records: OutgoingRecords,
    /// Index into `acks` of the chunk each record came from.
    pub(super) record_chunk: Vec<usize>,
    /// Each record's stream, for a route that names streams per record (empty: all go to
    /// the route's one stream).
    record_lane: Vec<Lane>,
    /// Lines acknowledged per stream, for a route that names streams per record; set once delivered.
    pub(super) stream_lines: Vec<(Arc<str>, u64)>,
    /// What each record's lines would be billed sent one record per line, uncompressed; kept
    /// only where lines are packed or compressed (else it is what the record is billed).
    line_units: Vec<u64>,
    packer: BatchPacker,
    /// One entry per chunk touched, in queue order.
    pub(super) acks: Vec<ChunkAck>,
    pub(super) chunk_paths: Vec<Vec<u8>>,
    pub(super) dead_letters: Vec<DeadLetter>,
    /// Indices into `records` the destination refused as invalid (dead-lettered, not delivered).
    pub(super) rejected: Vec<usize>,
    /// Each record's bytes before compression, once sealed (see [`seal`]); empty before, and
    /// for a batch that needed no sealing.
    before_compression: Vec<u64>,
    opened_at: Instant,
}

impl PendingBatch {
    fn new(limits: BatchLimits, fill: CallSize) -> PendingBatch {
        PendingBatch {
            // Most batches fill up: 500 seed records take 73 KB.
            records: OutgoingRecords::with_capacity(fill.bytes.min(limits.max_bytes).min(INITIAL_BATCH_BYTES) as usize),
            record_chunk: Vec::new(),
            packer: BatchPacker::filled_to(limits, fill),
            record_lane: Vec::new(),
            stream_lines: Vec::new(),
            line_units: Vec::new(),
            acks: Vec::new(),
            chunk_paths: Vec::new(),
            dead_letters: Vec::new(),
            rejected: Vec::new(),
            before_compression: Vec::new(),
            opened_at: Instant::now(),
        }
    }

    fn is_empty(&self) -> bool {
        self.acks.is_empty()
    }

    /// What the destination took of this batch, once it is accepted.
    pub(super) fn delivery(&self) -> BatchDelivery {
        let mut delivery = BatchDelivery::default();
        for index in (0..self.records.len()).filter(|index| !self.rejected.contains(index)) {
            delivery.lines += u64::from(self.records.lines(index));
            delivery.sink_records += 1;
            delivery.bytes += self.records.get(index).len() as u64;
            delivery.bytes_before_compression +=
                self.before_compression.get(index).copied().unwrap_or(self.records.get(index).len() as u64);
            let billed = self.records.billed_units(index, self.packer.limits().billing_unit_bytes);
            delivery.billed_units += billed;
            delivery.billed_units_saved += self.line_units.get(index).map_or(0, |alone| alone.saturating_sub(billed));
        }
        delivery
    }

    /// Where record `index` was read: its chunk's file and start (records do not carry their
    /// own offsets).
    pub(super) fn origin_of(&self, index: usize) -> RecordOrigin<'_> {
        let chunk = self.record_chunk[index];
        let ack = &self.acks[chunk];
        RecordOrigin { seq: ack.seq, file: ack.file, path: &self.chunk_paths[chunk], start_offset: ack.start_offset }
    }

    /// The records of each stream, in queue order, streams in the order their first record
    /// comes.
    fn records_by_lane(&self) -> Vec<(Lane, Vec<usize>)> {
        if self.record_lane.is_empty() {
            return vec![(0, (0..self.records.len()).collect())];
        }
        let mut lanes: Vec<(Lane, Vec<usize>)> = Vec::new();
        for (index, &lane) in self.record_lane.iter().enumerate() {
            match lanes.iter_mut().find(|(known, _)| *known == lane) {
                Some((_, records)) => records.push(index),
                None => lanes.push((lane, vec![index])),
            }
        }
        lanes
    }

    /// The stream of the batch's last record, if it has one.
    fn last_lane(&self) -> Option<Lane> {
        match self.record_lane.last() {
            Some(&lane) => Some(lane),
            None => (!self.records.is_empty()).then_some(0),
        }
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

/// Where a record of a batch was read.
pub(super) struct RecordOrigin<'a> {
    pub(super) seq: ChunkSeq,
    pub(super) file: crate::queue::FileIdentity,
    pub(super) path: &'a [u8],
    pub(super) start_offset: u64,
}

/// A batch's records finished, once, as it leaves for the destination: the sink's own finish
/// (an aggregated record's envelope), then compression of each whole record. Returns them with
/// each one's bytes before compression.
fn seal(packed: &OutgoingRecords, sink: &Sink, compression: Option<Compression>) -> (OutgoingRecords, Vec<u64>) {
    let mut sealed = OutgoingRecords::with_capacity(packed.byte_len() / if compression.is_some() { 4 } else { 1 });
    let mut before_compression = Vec::with_capacity(packed.len());
    for index in 0..packed.len() {
        let finished = sink.finished_record(packed.get(index));
        let record = finished.as_deref().unwrap_or(packed.get(index));
        before_compression.push(record.len() as u64);
        match compression {
            Some(compression) => sealed.push_record(&compression.compress(record), packed.lines(index)),
            None => sealed.push_record(record, packed.lines(index)),
        }
    }
    (sealed, before_compression)
}

/// Delivers `batch`: each stream's records through its courier, all streams at once; the batch
/// is accepted when every stream took its records, abandoned when any stream's were abandoned.
///
/// A route of one stream calls in the batch's place among those calling. Streams named per
/// record each have places of their own: the batch's is given up at once, so that the next
/// batch is sent while a stream that refuses holds its records back.
async fn deliver(couriers: &[Arc<Courier>], batch: &mut PendingBatch, calling: OwnedSemaphorePermit, per_stream: bool) -> Delivery {
    let lanes = batch.records_by_lane();
    let calling = (!per_stream).then(|| Arc::new(calling));
    let shared: &PendingBatch = batch;
    let deliveries = lanes.iter().map(|(lane, records)| couriers[*lane].deliver(shared, records.clone(), calling.clone()));
    let joined = futures_util::future::join_all(deliveries);
    // Only the streams' shares hold the place now: it is given up once each of them lets go.
    drop(calling);
    let mut delivery = Delivery::Accepted;
    let mut to_fallback = Vec::new();
    for (ended, rejections) in joined.await {
        if ended == Delivery::Abandoned {
            delivery = Delivery::Abandoned;
        }
        batch.rejected.extend(rejections.records);
        batch.dead_letters.extend(rejections.dead_letters);
        to_fallback.extend(rejections.to_fallback);
    }
    // Records of streams that do not exist go to the fallback (lane 0), in queue order, in a
    // place of the fallback's own among those calling: this batch holds none by now.
    let mut lanes = lanes;
    if !to_fallback.is_empty() && delivery == Delivery::Accepted {
        to_fallback.sort_unstable();
        let fallback = &couriers[0];
        // Counted in lines, as every fallback is: an aggregated record holds many.
        for &index in &to_fallback {
            for _ in 0..batch.records.lines(index) {
                fallback.events.stream_fallback(
                    &fallback.settings.name,
                    &fallback.stream,
                    crate::sink::streams::FallbackReason::MissingStream,
                );
            }
        }
        for (_, records) in lanes.iter_mut() {
            records.retain(|index| to_fallback.binary_search(index).is_err());
        }
        let (ended, rejections) = fallback.deliver(batch, to_fallback.clone(), None).await;
        delivery = ended;
        batch.rejected.extend(rejections.records);
        batch.dead_letters.extend(rejections.dead_letters);
        match lanes.iter_mut().find(|(lane, _)| *lane == 0) {
            Some((_, records)) => records.extend(to_fallback),
            None => lanes.push((0, to_fallback)),
        }
    }
    if per_stream && delivery == Delivery::Accepted {
        batch.stream_lines = lanes
            .iter()
            .map(|(lane, records)| {
                let lines = records
                    .iter()
                    .filter(|index| !batch.rejected.contains(index))
                    .map(|&index| u64::from(batch.records.lines(index)))
                    .sum();
                (couriers[*lane].stream.clone(), lines)
            })
            .collect();
    }
    delivery
}

/// The stream a sink's settings name for its route's first lane: the fallback of a template,
/// or its one stream (a directory sink has none).
fn sink_stream(settings: &SinkSettings) -> &str {
    match &settings.destination {
        crate::config::SinkDestination::Firehose { delivery_stream, .. } => delivery_stream,
        crate::config::SinkDestination::KinesisStreams { stream_name, .. } => stream_name,
        crate::config::SinkDestination::Directory { .. } => "",
    }
}

/// Whether filling stopped because the batch is full or the committed chunks ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    Full,
    Drained,
}

/// How delivering ended.
enum Ended {
    /// Everything that will be sent was handed to the acknowledger (or a batch was abandoned).
    Delivered,
    /// The acknowledger stopped first (a queue failure), with its result.
    AcknowledgerStopped(Result<(), super::PipelineError>),
}

impl Flusher {
    pub fn new(
        queue: RouteQueue,
        source: SourceSettings,
        sink: Arc<Sink>,
        settings: SinkSettings,
        events: Arc<Events>,
        stopping: FlusherStop,
        storage_stall_timeout: Duration,
    ) -> Flusher {
        let limits = sink.limits(&settings);
        let router = StreamRouter::new(sink_stream(&settings), settings.streams.clone(), &source.name);
        let mut flusher = Flusher {
            queue,
            source,
            settings,
            limits,
            events,
            stopping,
            storage_stall_timeout,
            next_seq: ChunkSeq(0),
            current: None,
            read_ahead: VecDeque::new(),
            router,
            couriers: Vec::new(),
            resenders: Vec::new(),
            sink,
        };
        let first = flusher.router.stream(0).clone();
        flusher.open_lane(first);
        flusher
    }

    /// A courier (and its resender) for the next lane, sending to `stream`.
    fn open_lane(&mut self, stream: Arc<str>) {
        let courier = Arc::new(Courier {
            route: self.queue.name().to_owned(),
            stream,
            per_stream: self.router.reads_records(),
            // Lane 0 of a route that reads records is the fallback itself.
            falls_back: self.router.reads_records() && !self.couriers.is_empty(),
            sink: self.sink.clone(),
            settings: self.settings.clone(),
            limits: self.limits,
            events: self.events.clone(),
            stop: self.stopping.stop.clone(),
            shutdown_timeout: self.stopping.shutdown_timeout,
            governor: Mutex::new(self.new_governor()),
            pace_turns: tokio::sync::Mutex::new(()),
            pace_changed: tokio::sync::Notify::new(),
            leftovers: Leftovers::default(),
            calls_out: Arc::default(),
            calling_places: self.router.reads_records().then(|| Arc::new(Semaphore::new(self.max_in_flight()))),
        });
        // The first lane's resender starts when the flusher runs (`run`); a lane opened while
        // it runs starts its own at once.
        if !self.couriers.is_empty() {
            self.resenders.push(AbortOnDrop(tokio::spawn(run_resender(courier.clone()))));
        }
        self.couriers.push(courier);
    }

    /// A stream's rate governor: within the sink's ceilings, and expecting the destination's
    /// default quota where it has one.
    fn new_governor(&self) -> RateGovernor {
        let governor = RateGovernor::new(self.settings.rate_ceiling);
        match self.sink.default_quota() {
            Some(default) => governor.expecting(default),
            None => governor,
        }
    }

    /// The most one call should carry at the learned pace of the fastest stream: a batch's
    /// records for a slower stream are cut into smaller calls by its courier.
    fn call_allowance(&self) -> CallSize {
        let allowances = self.couriers.iter().map(|courier| courier.call_allowance());
        allowances.max_by_key(|allowance| allowance.bytes).unwrap_or_default()
    }

    /// Whether a learned rate is in force for any stream.
    fn is_pacing(&self) -> bool {
        self.couriers.iter().any(|courier| courier.is_pacing())
    }

    pub async fn run(mut self) -> Result<(), super::PipelineError> {
        // A resender holds its courier: it ends with this flusher, not by itself.
        self.resenders = self.couriers.iter().map(|courier| AbortOnDrop(tokio::spawn(run_resender(courier.clone())))).collect();
        // Never full: a batch takes a place before it is sent (see `deliver`).
        let (finished_tx, finished_rx) = mpsc::channel(self.places().batches());
        let acknowledger = Acknowledger {
            queue: self.queue.clone(),
            events: self.events.clone(),
            storage_stall_timeout: self.storage_stall_timeout,
            sink: self.settings.name.clone(),
        };
        let mut acknowledging = tokio::spawn(acknowledger.run(finished_rx));
        match self.deliver(finished_tx, &mut acknowledging).await {
            Ok(Ended::AcknowledgerStopped(acknowledged)) => acknowledged,
            // The sender is gone: the acknowledger records what it was given, then returns.
            Ok(Ended::Delivered) => self.acknowledger_ended(acknowledging.await),
            // Stopped as after a crash: what is not acknowledged stays queued.
            Err(error) => {
                acknowledging.abort();
                Err(error)
            }
        }
    }

    /// Batches whose own records are in a call at once, at most (`max_in_flight`).
    fn max_in_flight(&self) -> usize {
        self.settings.max_in_flight.max(1)
    }

    /// Batches sent and not yet acknowledged, at most: what a `kill -9` may send again (see
    /// [`Places`]).
    fn places(&self) -> Places {
        Places::for_batches(UNACKNOWLEDGED_PER_CALLING * self.max_in_flight())
    }

    /// The acknowledger's result once its task has ended.
    fn acknowledger_ended(
        &self,
        joined: Result<Result<(), super::PipelineError>, tokio::task::JoinError>,
    ) -> Result<(), super::PipelineError> {
        joined
            .unwrap_or_else(|error| Err(super::PipelineError::Task(format!("route {}: acknowledging failed: {error}", self.queue.name()))))
    }

    /// Packs and sends batches, handing each finished one to the acknowledger in queue order.
    /// Returns early if the acknowledger stopped (its error is returned by [`Flusher::run`]).
    ///
    /// `max_in_flight` bounds the batches sent and not yet recorded as acknowledged, those waiting
    /// for the acknowledger included: after a `kill -9`, at most that many are sent again.
    async fn deliver(
        &mut self,
        finished_tx: mpsc::Sender<Finished>,
        acknowledging: &mut JoinHandle<Result<(), super::PipelineError>>,
    ) -> Result<Ended, super::PipelineError> {
        let mut committed = self.queue.committed();
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut batch = self.new_batch();
        let sizes = self.places();
        let places = Arc::new(Semaphore::new(sizes.total));
        let callers = Arc::new(Semaphore::new(self.max_in_flight()));
        // The place the next batch will take among those unacknowledged, once one is free, and
        // its place among those calling.
        let mut place: Option<OwnedSemaphorePermit> = None;
        let mut caller: Option<OwnedSemaphorePermit> = None;
        // Permits the filled batch lacks to be sent: its place is too small for its bytes.
        let mut short_of = 0;
        loop {
            let stopping = self.stopping.stop.is_cancelled();
            if place.is_none() {
                place = places.clone().try_acquire_many_owned(sizes.least as u32).ok();
            }
            if caller.is_none() {
                caller = callers.clone().try_acquire_owned().ok();
            }
            // At a learned pace, places beyond twice those calling only queue batches behind
            // the pace: they buy nothing, and a quota decision then finds more calls waiting to
            // go at the old rate.
            let behind_the_pace = self.is_pacing() && in_flight.len() >= PACED_UNACKNOWLEDGED_PER_CALLING * self.max_in_flight();
            let placed = place.is_some() && caller.is_some() && !behind_the_pace;
            // After a stop nothing new is sent: the batches in flight finish (or are abandoned)
            // within shutdown_timeout; what was packed but not sent stays queued.
            if placed && !stopping {
                let below = *committed.borrow_and_update();
                let fill = self
                    .fill(&mut batch, below)
                    .await
                    .map_err(|error| super::storage_failure(self.queue.name(), "read the queue", error))?;
                if self.ready_to_send(&batch, fill, &committed) {
                    short_of = place.as_mut().map_or(0, |held| top_up(held, &places, sizes.for_bytes(batch.records.byte_len())));
                    if short_of == 0 {
                        if let (Some(unacknowledged), Some(calling)) = (place.take(), caller.take()) {
                            let full = std::mem::replace(&mut batch, self.new_batch());
                            in_flight.push_back(self.send(full, unacknowledged, calling));
                            continue;
                        }
                    }
                }
            }
            if in_flight.is_empty() {
                let nothing_more_comes = batch.is_empty() && self.stopping.input_closed.is_cancelled() && self.drained(&committed);
                if stopping || nothing_more_comes {
                    return Ok(Ended::Delivered);
                }
            }
            // Waiting for a larger place, the batch is sent once acknowledgements free it.
            let room = placed && !stopping && short_of == 0;
            let deadline = (!batch.is_empty()).then(|| batch.opened_at + self.settings.flush_interval);
            let front = async {
                match in_flight.front_mut() {
                    Some(front) => Some((&mut front.task).await),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                finished = front => {
                    let finished = finished.and_then(Result::ok);
                    let place = in_flight.pop_front().and_then(|mut sent| Some((sent.unacknowledged.take()?, sent.sent_at)));
                    let (Some((done, delivery)), Some((unacknowledged, sent_at))) = (finished, place) else {
                        return Err(super::PipelineError::Task(format!("route {}: a delivery task failed", self.queue.name())));
                    };
                    let abandoned = delivery == Delivery::Abandoned;
                    let handed_over = Finished { batch: done, delivery, elapsed: sent_at.elapsed(), unacknowledged };
                    if finished_tx.send(handed_over).await.is_err() || abandoned {
                        return Ok(Ended::Delivered);
                    }
                }
                acquired = places.clone().acquire_many_owned(sizes.least as u32), if place.is_none() && !stopping => place = acquired.ok(),
                acquired = places.clone().acquire_many_owned(short_of as u32), if short_of > 0 && !stopping => {
                    if let (Ok(more), Some(held)) = (acquired, place.as_mut()) {
                        held.merge(more);
                    }
                    short_of = 0;
                }
                acquired = callers.clone().acquire_owned(), if caller.is_none() && !stopping => caller = acquired.ok(),
                acknowledged = &mut *acknowledging => return Ok(Ended::AcknowledgerStopped(self.acknowledger_ended(acknowledged))),
                _ = committed.changed(), if room => {}
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if room && deadline.is_some() => {}
                _ = self.stopping.stop.cancelled(), if !stopping => {}
                _ = self.stopping.input_closed.cancelled(), if !self.stopping.input_closed.is_cancelled() => {}
            }
        }
    }

    /// An empty batch, filled no further than one call should carry at the learned pace.
    fn new_batch(&self) -> PendingBatch {
        PendingBatch::new(self.limits, self.call_allowance())
    }

    /// Whether `batch` leaves now: full, only acknowledgements (no records), or no reason to wait
    /// (nothing more will come, its flush_interval has passed).
    fn ready_to_send(&self, batch: &PendingBatch, fill: Fill, committed: &tokio::sync::watch::Receiver<ChunkSeq>) -> bool {
        if batch.is_empty() {
            return false;
        }
        let nothing_more_comes = self.stopping.input_closed.is_cancelled() && self.drained(committed);
        fill == Fill::Full
            || batch.records.is_empty()
            || nothing_more_comes
            || Instant::now() >= batch.opened_at + self.settings.flush_interval
    }

    /// Starts delivering `batch` on its own task; it keeps `unacknowledged` until acknowledged,
    /// and `calling` while its own records are in a call (see [`Courier::deliver`]).
    fn send(&self, mut batch: PendingBatch, unacknowledged: OwnedSemaphorePermit, calling: OwnedSemaphorePermit) -> InFlight {
        let couriers = self.couriers.clone();
        let sink = self.sink.clone();
        let per_stream = self.router.reads_records();
        let compression = self.settings.compression;
        let sealed = compression.is_some() || self.settings.packing.is_some_and(|packing| packing.format == PackFormat::Aggregated);
        let task = tokio::spawn(async move {
            if sealed && compression.is_none() && !batch.records.is_empty() {
                // Only envelopes to add: a copy of at most 1 MiB by default, quick enough for here.
                (batch.records, batch.before_compression) = seal(&batch.records, &sink, None);
            } else if sealed && !batch.records.is_empty() {
                // Compressing a 2 MiB batch is some 10 ms of CPU: off the runtime's threads.
                let packed = std::mem::take(&mut batch.records);
                match tokio::task::spawn_blocking(move || seal(&packed, &sink, compression)).await {
                    Ok((records, before_compression)) => (batch.records, batch.before_compression) = (records, before_compression),
                    // A panic of the compressor (a bug) fails this task with it: the flusher
                    // stops, nothing of the batch is acknowledged, and it is sent after restart.
                    Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                    // The runtime is shutting down: the batch stays queued, as at any stop.
                    Err(_) => return (batch, Delivery::Abandoned),
                }
            }
            let delivery =
                if batch.records.is_empty() { Delivery::Accepted } else { deliver(&couriers, &mut batch, calling, per_stream).await };
            (batch, delivery)
        });
        InFlight { task, sent_at: Instant::now(), unacknowledged: Some(unacknowledged) }
    }

    /// True when every committed chunk has been packed and the reader has committed all it appended.
    fn drained(&self, committed: &tokio::sync::watch::Receiver<ChunkSeq>) -> bool {
        self.current.is_none() && self.read_ahead.is_empty() && self.next_seq >= *committed.borrow()
    }

    /// Packs committed records into `batch` until it is full or no committed chunk is left.
    async fn fill(&mut self, batch: &mut PendingBatch, committed: ChunkSeq) -> Result<Fill, QueueError> {
        loop {
            let chunk = match self.current.take() {
                Some(chunk) => chunk,
                None => match self.load_next(committed).await? {
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
                let line_len = range.len();
                let piece_len = self.piece_len(line_len);
                let routed = self.router.route(&chunk.bytes[range.clone()]);
                if routed.opened {
                    let stream = self.router.stream(routed.lane).clone();
                    self.events.stream_opened(self.queue.name(), &stream);
                    self.open_lane(stream);
                }
                let aggregated = self.settings.packing.is_some_and(|packing| packing.format == PackFormat::Aggregated);
                if batch.last_lane() == Some(routed.lane) && self.packs_into_last(batch, piece_len) {
                    if batch.packer.extend_last(piece_len) == Offer::Full {
                        self.current = Some(chunk);
                        return Ok(Fill::Full);
                    }
                    let alone = self.billed_alone(line_len);
                    match aggregated {
                        true => batch.records.aggregate_into_last(&chunk.bytes[range], self.settings.append_newline),
                        false => batch.records.pack_into_last(&chunk.bytes[range]),
                    }
                    if let (Some(alone), Some(last)) = (alone, batch.line_units.last_mut()) {
                        *last += alone;
                    }
                    self.count_fallback(routed);
                    chunk.next_record += 1;
                    batch.acks[ack].acked_records = chunk.next_record;
                    continue;
                }
                match batch.packer.offer(piece_len) {
                    Offer::Added => {
                        match aggregated {
                            true => batch.records.push_aggregated(&chunk.bytes[range], self.settings.append_newline),
                            false => batch.records.push(&chunk.bytes[range], self.settings.append_newline),
                        }
                        batch.record_chunk.push(ack);
                        if let Some(alone) = self.billed_alone(line_len) {
                            batch.line_units.push(alone);
                        }
                        if self.router.reads_records() {
                            batch.record_lane.push(routed.lane);
                        }
                        self.count_fallback(routed);
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
                            piece_len + self.limits.record_overhead_bytes
                        );
                        batch.dead_letters.push(record_dead_letter(
                            chunk.meta.file,
                            &chunk.meta.path,
                            chunk.meta.start_offset,
                            DeadLetterReason::RecordTooLarge,
                            detail,
                            chunk.bytes[range].to_vec(),
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

    /// The units a line of `line_len` bytes is billed sent as a record of its own, uncompressed,
    /// where lines are packed or compressed (else none: the record is billed as it is).
    fn billed_alone(&self, line_len: usize) -> Option<u64> {
        if self.settings.packing.is_none() && self.settings.compression.is_none() {
            return None;
        }
        let sent = (line_len + usize::from(self.settings.append_newline)) as u64;
        Some(sent.div_ceil(self.limits.billing_unit_bytes).max(1))
    }

    /// Counts a record that went to the fallback stream, once it is in a batch (a record left
    /// for the next batch is routed again there).
    fn count_fallback(&self, routed: crate::sink::streams::Routed) {
        if let Some(reason) = routed.fallback {
            self.events.stream_fallback(&self.settings.name, self.router.stream(0), reason);
        }
    }

    /// Reads and verifies the next committed chunk. One that fails verification is set aside and
    /// the range it held re-read from its source file at once (queued as new chunks), so that
    /// its records are delivered while the file still holds them.
    async fn load_next(&mut self, committed: ChunkSeq) -> Result<Option<LoadedChunk>, QueueError> {
        loop {
            if self.read_ahead.is_empty() {
                let (queue, from) = (self.queue.clone(), self.next_seq);
                let run = self.blocking("read the queue", move || queue.read_pending_run(from, committed, READ_AHEAD_CHUNKS)).await?;
                if let Some(last) = run.last() {
                    self.next_seq = ChunkSeq(last.seq.0 + 1);
                }
                self.read_ahead.extend(run);
            }
            let Some(stored) = self.read_ahead.pop_front() else {
                return Ok(None);
            };
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
                    let (queue, seq) = (self.queue.clone(), stored.seq);
                    let owed = self.blocking("set a chunk aside", move || queue.set_aside(seq, &error)).await?;
                    if let Some(owed) = owed {
                        // Not bounded by storage_stall_timeout: it reads the source file (a slow
                        // NFS share is no storage failure) and every dead letter of the route;
                        // a stalled queue write in it is caught by the reader's own bound.
                        let (queue, events, source) = (self.queue.clone(), self.events.clone(), self.source.clone());
                        tokio::task::spawn_blocking(move || super::recover_missing(&queue, &events, &source, std::slice::from_ref(&owed)))
                            .await
                            .map_err(|_| QueueError::Stalled { operation: "recover a set-aside chunk", after: Duration::ZERO })??;
                    }
                }
            }
        }
    }

    /// Queue work on a blocking thread, bounded by `storage_stall_timeout`.
    async fn blocking<T: Send + 'static>(
        &self,
        operation: &'static str,
        work: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        super::on_blocking_thread(operation, self.storage_stall_timeout, work).await
    }

    /// Whether the next line joins the batch's last record: packing is on and it fits, within
    /// `pack_max_bytes` and the destination's record limit (less what compression may add).
    fn packs_into_last(&self, batch: &PendingBatch, piece_len: u64) -> bool {
        let Some(packing) = self.settings.packing else { return false };
        let record_limit = self.limits.max_record_bytes.unwrap_or(u64::MAX);
        batch.records.last_len().is_some_and(|last| {
            let packed = last as u64 + piece_len;
            packed <= packing.max_bytes && packed + self.limits.record_overhead_bytes <= record_limit
        })
    }

    /// The bytes a line of `line_len` bytes takes in a record sent: its newline, and in an
    /// aggregated record its frame.
    fn piece_len(&self, line_len: usize) -> u64 {
        let data_len = line_len + usize::from(self.settings.append_newline);
        match self.settings.packing.map(|packing| packing.format) {
            Some(PackFormat::Aggregated) => aggregation::framed_len(data_len) as u64,
            _ => data_len as u64,
        }
    }
}
