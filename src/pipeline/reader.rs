//! The reader task of one route: runs tailer passes on a blocking thread, pauses when the queue
//! is full (back-pressure), and when there is nothing new waits for a change notification or
//! `poll_interval`, whichever comes first. When files wait for the read-ahead window, it also
//! reads again as soon as acknowledgements have opened a quarter of the window.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::PipelineError;
use crate::config::SourceSettings;
use crate::events::Events;
use crate::queue::{QueueError, RouteQueue};
use crate::source::{watch_changes, ChangeSignal, Tailer};

/// Bounds on a reader.
#[derive(Debug, Clone, Copy)]
pub struct ReaderLimits {
    /// See `Config::max_read_ahead_bytes`.
    pub read_ahead_bytes: u64,
    /// A read pass that takes longer is a storage failure (see `Config::storage_stall_timeout`).
    pub storage_stall_timeout: std::time::Duration,
}

impl ReaderLimits {
    /// Pending bytes at or below which a reader waiting for the read-ahead window reads again:
    /// a quarter of the window (at least one chunk) free, so that each pass reads, and each
    /// commit fsyncs, a useful amount rather than one acknowledged batch's worth.
    pub fn resume_reading_at(&self) -> u64 {
        let gap = (self.read_ahead_bytes / 4).max(crate::source::CHUNK_TARGET_BYTES as u64);
        self.read_ahead_bytes.saturating_sub(gap)
    }
}

/// Whether the reader follows its files forever or stops once they are read to their end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    Follow,
    /// Stop after a pass that found every file at its end (`tailhose run --once`).
    UntilCaughtUp,
    /// Read nothing: deliver what is queued, then stop (`tailhose queue replay`). No admin
    /// endpoint: this is a command, not the daemon.
    DeliverQueued,
}

/// Runs until `stop` fires (or, with [`ReadMode::UntilCaughtUp`], until caught up), then fires
/// `input_closed`, which tells the route's flusher that no more chunks will come. A storage I/O
/// error ends it with [`PipelineError::StorageFailed`]; a reader thread that panicked, with
/// [`PipelineError::Task`]: a route that can no longer read must not look like one that
/// finished, so the daemon stops with a non-zero status (and systemd's `Restart=on-failure`
/// starts it again) instead of exiting 0 or running on with a dead route.
pub async fn run_reader(
    source: SourceSettings,
    limits: ReaderLimits,
    queue: RouteQueue,
    events: Arc<Events>,
    mode: ReadMode,
    stop: CancellationToken,
    input_closed: CancellationToken,
) -> Result<(), PipelineError> {
    // Sooner with records of several lines: one in progress ends after its flush timeout.
    let poll_interval = source.pass_interval();
    let changes = Arc::new(ChangeSignal::default());
    let _watcher = watch_changes(&source.paths, changes.clone());
    let mut tailer = Tailer::new(source, limits.read_ahead_bytes, queue.clone(), events.clone()).with_change_signal(changes.clone());
    if mode == ReadMode::UntilCaughtUp {
        // `run --once` reads nothing after it has caught up: a file's last record is complete.
        tailer = tailer.ending_records_at_file_end();
    }
    let mut tailer = Some(tailer);
    'reading: while !stop.is_cancelled() {
        if !queue.has_space() {
            events.backpressure(queue.name(), queue.pending_bytes());
            // Paused, but still looking for new files: one created and rotated away during the
            // pause would otherwise never be seen.
            loop {
                tokio::select! {
                    _ = queue.wait_for_space() => break,
                    _ = tokio::time::sleep(poll_interval) => {}
                    _ = changes.wake.notified() => {}
                    _ = stop.cancelled() => break 'reading,
                }
                let Some(mut owned) = tailer.take() else { break 'reading };
                let discovery = tokio::task::spawn_blocking(move || {
                    owned.discover();
                    owned
                });
                match tokio::time::timeout(limits.storage_stall_timeout, discovery).await {
                    Ok(Ok(returned)) => tailer = Some(returned),
                    Ok(Err(error)) => return Err(reader_thread_failed(&queue, &events, &input_closed, &error)),
                    Err(_) => {
                        input_closed.cancel();
                        let error = QueueError::Stalled { operation: "discovery", after: limits.storage_stall_timeout };
                        events.queue_failed(queue.name(), "discovery", &error);
                        return Err(super::storage_failure(queue.name(), "discovery", error));
                    }
                }
            }
        }
        let Some(mut owned) = tailer.take() else { break 'reading };
        let pass = tokio::task::spawn_blocking(move || {
            let outcome = owned.pass();
            (owned, outcome)
        });
        let Ok(pass) = tokio::time::timeout(limits.storage_stall_timeout, pass).await else {
            input_closed.cancel();
            let error = QueueError::Stalled { operation: "read pass", after: limits.storage_stall_timeout };
            events.queue_failed(queue.name(), "read pass", &error);
            return Err(super::storage_failure(queue.name(), "read pass", error));
        };
        let outcome = match pass {
            Ok((returned, outcome)) => {
                tailer = Some(returned);
                outcome
            }
            Err(error) => return Err(reader_thread_failed(&queue, &events, &input_closed, &error)),
        };
        match outcome {
            Ok(outcome) if mode == ReadMode::UntilCaughtUp && outcome.caught_up => break,
            Ok(outcome) if outcome.bytes_read > 0 && !outcome.queue_full => continue,
            Ok(_) => {}
            Err(error) => {
                events.queue_failed(queue.name(), "append", &error);
                input_closed.cancel();
                return Err(super::storage_failure(queue.name(), "append", error));
            }
        }
        // A file waiting for the read-ahead window is read again as soon as acknowledgements
        // have opened a quarter of it, not at the next poll: catching up a backlog would
        // otherwise move one window per `poll_interval` (6 MiB/s with the defaults).
        let window_open = async {
            match outcome {
                Ok(outcome) if outcome.read_ahead_full => queue.wait_until_pending_at_most(limits.resume_reading_at()).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(poll_interval) => {}
            _ = changes.wake.notified() => {}
            _ = window_open => {}
            _ = stop.cancelled() => break,
        }
    }
    input_closed.cancel();
    Ok(())
}

/// A reader thread ended without returning its tailer (it panicked): reported, and the route's
/// error. Its flusher is told no more chunks come, so that what is queued is still delivered
/// while the daemon stops.
fn reader_thread_failed(
    queue: &RouteQueue,
    events: &Events,
    input_closed: &CancellationToken,
    error: &tokio::task::JoinError,
) -> PipelineError {
    input_closed.cancel();
    events.stage_failed(queue.name(), "reader", error);
    PipelineError::Task(format!("route {}: the reader thread failed: {error}", queue.name()))
}
