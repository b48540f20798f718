//! Recording what the sink accepted, off the flusher's path: delivered batches arrive here in
//! queue order, and every batch waiting when the previous write finished is recorded in one
//! queue write and one flush.
//!
//! Before this stage the flusher wrote and flushed each batch's acknowledgement itself, and sent
//! nothing while it did: with the queue's write and fsync taking about as long as a call to a
//! near Firehose, delivery stalled half of the time. Now the flusher goes on packing and sending
//! while acknowledgements are made durable, and a burst of finished batches costs one fsync.
//!
//! Invariants kept here:
//! - Batches are acknowledged in the order they arrive, which is queue order (the flusher sends
//!   them so); a merged write holds them in that order, so the last progress written for a
//!   chunk is the furthest.
//! - A batch abandoned at shutdown is never acknowledged, nor is anything after it.
//! - A failed or stalled queue write ends this stage with the error; the pipeline stops on it.
//! - A batch keeps its place among those the flusher may have unacknowledged (four times
//!   `max_in_flight`, 8 MiB of records at most) until its acknowledgement is durable: after a
//!   `kill -9` at most that many batches are sent again, whether they were in delivery or
//!   waiting here.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::courier::Delivery;
use super::flusher::PendingBatch;
use crate::events::Events;
use crate::queue::{ChunkAck, DeadLetter, QueueError, RouteQueue};

/// A batch whose delivery ended.
pub(super) struct Finished {
    pub(super) batch: PendingBatch,
    pub(super) delivery: Delivery,
    /// From the start of its first call to its last answer.
    pub(super) elapsed: Duration,
    /// The batch's place among those sent and not yet acknowledged (see the flusher's `Places`):
    /// freed once its acknowledgement is durable, or when this stage stops.
    #[expect(dead_code, reason = "held only for its drop, which frees the place")]
    pub(super) unacknowledged: OwnedSemaphorePermit,
}

/// Most batches recorded in one write: bounds how long one write holds the queue's lock.
const MAX_BATCHES_PER_WRITE: usize = 64;

pub(super) struct Acknowledger {
    pub(super) queue: RouteQueue,
    pub(super) events: Arc<Events>,
    /// A write or flush that takes longer is a storage failure.
    pub(super) storage_stall_timeout: Duration,
    /// The sink's name, which per-stream counts go under.
    pub(super) sink: String,
}

impl Acknowledger {
    /// Records each batch received until the sender is dropped or a batch was abandoned.
    pub(super) async fn run(self, mut finished: mpsc::Receiver<Finished>) -> Result<(), super::PipelineError> {
        let mut waiting = Vec::with_capacity(MAX_BATCHES_PER_WRITE);
        while finished.recv_many(&mut waiting, MAX_BATCHES_PER_WRITE).await > 0 {
            let abandoned_at = waiting.iter().position(|done| done.delivery == Delivery::Abandoned);
            let delivered = &waiting[..abandoned_at.unwrap_or(waiting.len())];
            if !delivered.is_empty() {
                if let Err(error) = self.record(delivered).await {
                    self.events.queue_failed(self.queue.name(), "acknowledge", &error);
                    return Err(super::storage_failure(self.queue.name(), "acknowledge", error));
                }
                for done in delivered {
                    for letter in &done.batch.dead_letters {
                        self.events.dead_lettered(self.queue.name(), letter);
                    }
                    self.events.batch_acknowledged(self.queue.name(), &done.batch.delivery(), done.elapsed);
                    for (stream, lines) in &done.batch.stream_lines {
                        self.events.stream_acknowledged(&self.sink, stream, *lines);
                    }
                }
            }
            if let Some(index) = abandoned_at {
                self.events.batch_abandoned(self.queue.name(), waiting[index].batch.records.len() as u64);
                return Ok(());
            }
            waiting.clear();
        }
        Ok(())
    }

    /// Writes the batches' acknowledgements in one queue write and makes them durable, on a
    /// blocking thread. Bounded by `storage_stall_timeout`, because sled can block instead of
    /// failing after an I/O error.
    async fn record(&self, delivered: &[Finished]) -> Result<(), QueueError> {
        let acks: Vec<ChunkAck> = delivered.iter().flat_map(|done| done.batch.acks.iter().cloned()).collect();
        let dead_letters: Vec<DeadLetter> = delivered.iter().flat_map(|done| done.batch.dead_letters.iter().cloned()).collect();
        let queue = self.queue.clone();
        super::on_blocking_thread("acknowledge", self.storage_stall_timeout, move || queue.acknowledge(&acks, &dead_letters)).await
    }
}
