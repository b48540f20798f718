//! The pipeline: one reader and one flusher per route (a source feeding a sink), the start-up
//! recovery that runs before them, and shutdown.
//!
//! Order of start-up: open the queue; per route, verify chunks and re-read the ranges of any
//! that were set aside ([`recover`]); only then start reading and delivering.
//!
//! Shutdown: when the stop token fires, readers stop at the end of their pass (what they read is
//! committed), flushers finish the batches in flight for at most `shutdown_timeout` (or abandon
//! it: it stays queued), and the queue is flushed before [`run`] returns.
//!
//! Around the routes: the admin endpoint (see [`crate::admin`]) and, for sinks that retain
//! acknowledged chunks, a task that prunes them past their retention.
//!
//! Storage failure: an I/O error of the queue, or a queue operation stalled past
//! `storage_stall_timeout`, ends [`run`] at once with [`PipelineError::StorageFailed`] (exit
//! status 74). sled does not recover from such errors in-process, so nothing waits for the other
//! tasks or touches sled again: the queue is left as after a crash, which it is built to survive.

mod acknowledger;
mod courier;
mod flusher;
mod reader;
mod resender;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminError, AdminState};
use crate::config::{Config, SourceSettings};
use crate::events::{EventCounts, Events};
use crate::queue::recovery::{MissingRange, RecoveryReport};
use crate::queue::{now_ms, route_name, Creation, QueueError, QueueStore, RouteQueue};
use crate::sink::{PackingVerdict, Sink};
use crate::source::{recover_range, RecoveryOutcome};

pub use flusher::{Flusher, FlusherStop};
pub use reader::{run_reader, ReadMode, ReaderLimits};

/// Classifies a queue error met while running: storage I/O failures stop tailhose (see
/// [`PipelineError::StorageFailed`]); anything else is returned as it is.
fn storage_failure(route: &str, operation: &'static str, error: QueueError) -> PipelineError {
    match error {
        QueueError::Storage(sled::Error::Io(_)) | QueueError::Stalled { .. } => {
            PipelineError::StorageFailed { route: route.to_owned(), operation, source: error }
        }
        other => PipelineError::Queue(other),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("a pipeline task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Ec2Metadata(#[from] crate::source::fields::Ec2MetadataError),
    #[error("sink {sink}: {source}")]
    SinkSetup { sink: String, source: crate::sink::SinkSetupError },
    #[error("sink {sink}: {change} would change what the destination stores: {reason}; take it out of this sink")]
    PackingRefused { sink: String, change: String, reason: String },
    /// sled does not recover from an I/O error (a full disk, say) in the same process: its next
    /// write blocks. tailhose stops as after a crash, which the queue is built to survive, so
    /// that its supervisor restarts it once `data_dir` is usable again.
    #[error("route {route}: queue storage failed during {operation}: {source}; tailhose stops so that it can be restarted once data_dir is writable again (nothing queued is lost)")]
    StorageFailed { route: String, operation: &'static str, source: QueueError },
}

impl PipelineError {
    /// The process exit status for this error: 74 (EX_IOERR) when the queue's storage failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            PipelineError::StorageFailed { .. } => 74,
            PipelineError::Queue(_)
            | PipelineError::Task(_)
            | PipelineError::Admin(_)
            | PipelineError::PackingRefused { .. }
            | PipelineError::SinkSetup { .. }
            | PipelineError::Ec2Metadata(_) => 1,
        }
    }
}

/// How often retained chunks are checked against their retention.
const RETENTION_CHECK_PERIOD: Duration = Duration::from_secs(10);

/// Runs every route until `stop` fires (or, with [`ReadMode::UntilCaughtUp`], until every file
/// is read and everything read is delivered; with [`ReadMode::DeliverQueued`], until what is
/// queued is delivered). Returns the run's event counts.
pub async fn run(config: &Config, mode: ReadMode, stop: CancellationToken) -> Result<EventCounts, PipelineError> {
    let store = QueueStore::open(&config.data_dir, config.queue_cache_bytes.0)?;
    run_with_store(config, store, mode, stop).await
}

/// [`run`] on a queue the caller has already opened (sled allows one handle per process at a
/// time, and releases its lock only some time after the last handle is dropped).
pub async fn run_with_store(
    config: &Config,
    store: QueueStore,
    mode: ReadMode,
    stop: CancellationToken,
) -> Result<EventCounts, PipelineError> {
    let events = Arc::new(Events::default());
    if let Some(set_aside) = store.rolled_back() {
        events.queue_rolled_back(set_aside);
    }
    if store.creation() == Creation::CreatedAgain {
        events.queue_created_again(store.path());
    }
    if let Some(moved_to) = store.settings_moved_to() {
        events.queue_settings_rewritten(moved_to);
    }
    if let Some(mode) = store.data_dir_open_to_others() {
        events.data_dir_open_to_others(&config.data_dir, mode);
    }
    let started_at_ms = now_ms();
    let is_daemon = mode != ReadMode::DeliverQueued;
    // Bound before any work, so that a taken port stops start-up with a clear message.
    let admin_listener = match is_daemon && config.admin.enabled {
        true => Some(admin::bind(config.admin.address)?),
        false => None,
    };
    let ec2 = crate::source::fields::with_ec2_metadata(config.source_settings()).await?;
    if let Some(why) = &ec2.tags_missing {
        events.ec2_instance_tags_missing(why);
    }
    let sources = ec2.sources;
    let mut tasks = tokio::task::JoinSet::new();
    // Tasks around the routes; aborted when the routes are done.
    let mut helpers = Vec::new();
    let mut route_queues = Vec::new();
    for sink_settings in config.sink_settings() {
        let sink = Arc::new(
            Sink::connect(&sink_settings)
                .await
                .map_err(|error| PipelineError::SinkSetup { sink: sink_settings.name.clone(), source: error })?,
        );
        if sink_settings.packing.is_some() || sink_settings.compression.is_some() {
            let change = match (&sink_settings.packing, sink_settings.compression) {
                (Some(_), Some(compression)) => format!("pack_records = true with compression = \"{}\"", compression.name()),
                (None, Some(compression)) => format!("compression = \"{}\"", compression.name()),
                _ => "pack_records = true".to_owned(),
            };
            match sink.packing_verdict(sink_settings.compression).await {
                PackingVerdict::Allowed => {}
                PackingVerdict::Refused(reason) => {
                    return Err(PipelineError::PackingRefused { sink: sink_settings.name.clone(), change, reason })
                }
                PackingVerdict::Unchecked(reason) => events.packing_unchecked(&sink_settings.name, &reason),
                PackingVerdict::Advised(advice) => tracing::warn!(sink = %sink_settings.name, %change, "{advice}"),
            }
        }
        for input in &sink_settings.inputs {
            let Some(source) = sources.iter().find(|source| &source.name == input).cloned() else { continue };
            let route = route_name(input, &sink_settings.name);
            let (queue, report) = store.open_route(&route, config.max_queue_bytes.0)?;
            queue.set_retention(sink_settings.retention);
            if sink_settings.retention.is_enabled() {
                helpers.push(tokio::spawn(prune_retained_periodically(queue.clone(), events.clone())));
            }
            route_queues.push(queue.clone());
            recover(&queue, &source, &events, report).await?;
            let input_closed = CancellationToken::new();
            let stopping =
                FlusherStop { stop: stop.clone(), input_closed: input_closed.clone(), shutdown_timeout: config.shutdown_timeout };
            let flusher = Flusher::new(
                queue.clone(),
                source.clone(),
                sink.clone(),
                sink_settings.clone(),
                events.clone(),
                stopping,
                config.storage_stall_timeout,
            );
            tracing::info!(route, "route started");
            tasks.spawn(flusher.run());
            if mode == ReadMode::DeliverQueued {
                input_closed.cancel();
                continue;
            }
            let limits =
                ReaderLimits { read_ahead_bytes: config.max_read_ahead_bytes.0, storage_stall_timeout: config.storage_stall_timeout };
            tasks.spawn(run_reader(source, limits, queue, events.clone(), mode, stop.clone(), input_closed));
        }
    }
    if is_daemon {
        let admin_address = match admin_listener {
            Some(listener) => {
                let address = listener.local_addr().map_err(|source| AdminError::Bind { address: config.admin.address, source })?;
                let state = AdminState {
                    data_dir: config.data_dir.clone(),
                    events: events.clone(),
                    routes: route_queues,
                    started_at_ms,
                    unhealthy_after: config.admin.unhealthy_after,
                };
                helpers.push(tokio::spawn(admin::serve(listener, Arc::new(state), stop.clone())));
                tracing::info!(%address, "admin endpoint listening: /metrics, /health, /status");
                Some(address)
            }
            None => None,
        };
        admin::write_daemon_files(&config.data_dir, admin_address)?;
    }
    let result = join_routes(tasks, &store, &events, &stop).await;
    for helper in helpers {
        helper.abort();
    }
    if is_daemon && !matches!(result, Err(PipelineError::StorageFailed { .. })) {
        admin::remove_daemon_files(&config.data_dir);
    }
    result
}

/// Waits for every route task. On a storage failure, returns at once without touching sled again.
async fn join_routes(
    mut tasks: tokio::task::JoinSet<Result<(), PipelineError>>,
    store: &QueueStore,
    events: &Events,
    stop: &CancellationToken,
) -> Result<EventCounts, PipelineError> {
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.map_err(|error| PipelineError::Task(error.to_string())).and_then(|result| result);
        match result {
            Ok(()) => {}
            Err(error @ PipelineError::StorageFailed { .. }) => {
                // Other tasks may be blocked inside sled: do not wait for them, nor flush. sled
                // flushes when its last handle is dropped, and that flush would block too, so the
                // handle is leaked: the process exits next, as after a crash, which the queue is
                // built to survive.
                tracing::error!(%error, "stopping at once");
                stop.cancel();
                std::mem::forget(store.clone());
                return Err(error);
            }
            Err(error) => {
                tracing::error!(%error, "route stopped on an error; stopping the others");
                stop.cancel();
                failure.get_or_insert(error);
            }
        }
    }
    store.flush()?;
    let counts = events.snapshot();
    tracing::info!(summary = %serde_json::to_string(&counts).unwrap_or_default(), "tailhose stopped; queue is durable");
    match failure {
        Some(error) => Err(error),
        None => Ok(counts),
    }
}

/// Deletes retained chunks past their route's retention, every [`RETENTION_CHECK_PERIOD`].
async fn prune_retained_periodically(queue: RouteQueue, events: Arc<Events>) {
    let mut ticks = tokio::time::interval(RETENTION_CHECK_PERIOD);
    loop {
        ticks.tick().await;
        let pruning = queue.clone();
        match tokio::task::spawn_blocking(move || pruning.prune_retained(now_ms())).await {
            Ok(Ok(pruned)) => events.retained_pruned(queue.name(), pruned),
            Ok(Err(error)) => events.queue_failed(queue.name(), "prune retained chunks", &error),
            Err(_) => return,
        }
    }
}

/// Acts on what start-up verification found: reports set-aside chunks and re-reads their byte
/// ranges from the source files (or dead-letters the ranges whose bytes are gone).
pub async fn recover(
    queue: &RouteQueue,
    source: &SourceSettings,
    events: &Arc<Events>,
    report: RecoveryReport,
) -> Result<(), PipelineError> {
    for set_aside in &report.set_aside {
        events.chunk_set_aside(queue.name(), set_aside.seq, &set_aside.error);
    }
    if report.missing.is_empty() {
        return Ok(());
    }
    let queue = queue.clone();
    let source = source.clone();
    let events = events.clone();
    tokio::task::spawn_blocking(move || recover_missing(&queue, &events, &source, &report.missing))
        .await
        .map_err(|error| PipelineError::Task(format!("recovery: {error}")))??;
    Ok(())
}

/// Re-reads ranges a file owes (their chunks were set aside) from the source into the queue,
/// or dead-letters what is gone, then commits. Blocking: file reads and a queue flush.
fn recover_missing(queue: &RouteQueue, events: &Events, source: &SourceSettings, missing: &[MissingRange]) -> Result<(), QueueError> {
    for range in missing {
        match recover_range(queue, events, source, range.file, &range.path, range.start, range.end)? {
            RecoveryOutcome::Recovered { records } => events.range_recovered(queue.name(), &range.path, range.start, range.end, records),
            RecoveryOutcome::DeadLettered { .. } => {}
            RecoveryOutcome::Deferred { reason } => events.range_deferred(queue.name(), &range.path, range.start, range.end, &reason),
        }
    }
    queue.commit()
}

/// Runs queue work that may block (sled reads that miss its cache, writes, fsync) on a blocking
/// thread, off the runtime's workers, and bounds it by `storage_stall_timeout`: sled can block
/// instead of failing after an I/O error, and a stalled queue must stop tailhose (exit 74).
async fn on_blocking_thread<T: Send + 'static>(
    operation: &'static str,
    storage_stall_timeout: Duration,
    work: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    let stalled = QueueError::Stalled { operation, after: storage_stall_timeout };
    match tokio::time::timeout(storage_stall_timeout, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(done)) => done,
        Ok(Err(_)) | Err(_) => Err(stalled),
    }
}

#[cfg(test)]
mod tests;
