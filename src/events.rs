//! Every observable event of the daemon, counted and logged in one place.
//!
//! Each event has one method here: it bumps its counter and writes its log line. Stages never
//! log an event themselves, so "every such event is counted and logged" (invariant 5) is checked
//! by reading this file. [`Events::snapshot`] gives the counters for the exit summary, the
//! status output and the metrics.
//!
//! Warnings that can repeat many times a second (failed entries, throttling, retries, read
//! errors, dead letters) pass a [`LogGate`]: the first is logged, then at most one per [`REPEAT_LOG_PERIOD`]
//! with the number held back since. Every occurrence is still counted.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::queue::{ChunkError, ChunkSeq, DeadLetter, DeadLetterReason};
use crate::source::SealedChunk;

/// Counters of one daemon run. Shared by all tasks through an `Arc`.
#[derive(Debug)]
pub struct Events {
    files_added: AtomicU64,
    files_closed: AtomicU64,
    files_truncated: AtomicU64,
    read_errors: AtomicU64,
    bytes_read: AtomicU64,
    records_queued: AtomicU64,
    chunks_queued: AtomicU64,
    blank_lines: AtomicU64,
    header_lines: AtomicU64,
    multiline_splits: AtomicU64,
    dead_letters: AtomicU64,
    dead_invalid_json: AtomicU64,
    dead_line_too_long: AtomicU64,
    dead_record_too_large: AtomicU64,
    dead_rejected_by_sink: AtomicU64,
    dead_unrecoverable: AtomicU64,
    dead_parse_failed: AtomicU64,
    batches_acked: AtomicU64,
    batches_abandoned: AtomicU64,
    records_acked: AtomicU64,
    bytes_acked: AtomicU64,
    bytes_acked_before_compression: AtomicU64,
    failed_entries: AtomicU64,
    throttled_calls: AtomicU64,
    failed_calls: AtomicU64,
    retries: AtomicU64,
    chunks_set_aside: AtomicU64,
    ranges_recovered: AtomicU64,
    backpressure_pauses: AtomicU64,
    queue_errors: AtomicU64,
    records_read: AtomicU64,
    calls: AtomicU64,
    sink_records_acked: AtomicU64,
    billed_units: AtomicU64,
    billed_units_saved: AtomicU64,
    rate_decreases: AtomicU64,
    entries_refused_throughput: AtomicU64,
    entries_refused_internal: AtomicU64,
    entries_refused_other: AtomicU64,
    calls_failed_server_error: AtomicU64,
    calls_failed_network: AtomicU64,
    calls_failed_unavailable: AtomicU64,
    pace_lowered: AtomicU64,
    pace_testing: AtomicU64,
    pace_quota_confirmed: AtomicU64,
    pace_noise_restored: AtomicU64,
    pace_noise_recognized: AtomicU64,
    stage_failures: AtomicU64,
    /// Seconds from sending a call to its answer.
    pub call_latency: Histogram,
    /// Records per call.
    pub call_records: Histogram,
    last_sink_problem: Mutex<Option<SinkProblem>>,
    /// What happened to each stream of the sinks that name a stream per record, by sink and
    /// stream (bounded by `max_streams` per route).
    streams: Mutex<std::collections::BTreeMap<(String, String), StreamCounts>>,
    /// Records sent to a sink's fallback stream, by sink and reason.
    stream_fallbacks: Mutex<std::collections::BTreeMap<(String, &'static str), u64>>,
    gates: Gates,
}

/// Counters of one stream of a sink that names a stream per record.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StreamCounts {
    pub records_acked: u64,
    pub calls: u64,
    /// Entries of answered calls refused (resent).
    pub refused_entries: u64,
    /// Calls failed whole (throttled, 5xx, network, unavailable).
    pub failed_calls: u64,
    /// The pace learned for the stream, bytes per second; `None` while unpaced.
    pub pace_bytes_per_sec: Option<f64>,
}

/// One gate per repeatable warning.
#[derive(Debug, Default)]
struct Gates {
    entries_failed: LogGate,
    call_throttled: LogGate,
    call_failed: LogGate,
    sink_unavailable: LogGate,
    retry: LogGate,
    /// One gate per kind of pace decision: a test's verdict must not be held back behind the
    /// line that began it.
    pace: [LogGate; 5],
    read_failed: LogGate,
    backpressure: LogGate,
    dead_letter: LogGate,
    stream_fallback: LogGate,
}

/// The latest trouble with a sink, for `/health` and `tailhose status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SinkProblem {
    pub route: String,
    pub message: String,
    pub at_ms: u64,
}

/// How often a repeated warning is logged at most.
pub const REPEAT_LOG_PERIOD: Duration = Duration::from_secs(10);

/// Lets a repeated warning through at most once per [`REPEAT_LOG_PERIOD`].
#[derive(Debug, Default)]
pub struct LogGate {
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    last_logged: Option<Instant>,
    held_back: u64,
}

/// Whether to log an occurrence now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateDecision {
    /// Log it, saying how many occurrences were held back since the last line.
    Log {
        held_back: u64,
    },
    HoldBack,
}

impl LogGate {
    pub fn admit(&self, now: Instant) -> GateDecision {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let due = state.last_logged.is_none_or(|last| now.saturating_duration_since(last) >= REPEAT_LOG_PERIOD);
        if !due {
            state.held_back += 1;
            return GateDecision::HoldBack;
        }
        state.last_logged = Some(now);
        GateDecision::Log { held_back: std::mem::take(&mut state.held_back) }
    }
}

/// Upper bounds of a histogram's buckets, ascending; a last `+Inf` bucket is implied.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum of observations, in millionths of the unit, so it fits an atomic integer.
    sum_micros: AtomicU64,
}

/// A histogram's state at one instant: cumulative counts per bound, as Prometheus wants them.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum_micros: AtomicU64::new(0) }
    }

    pub fn observe(&self, value: f64) {
        let bucket = self.bounds.iter().position(|&bound| value <= bound).unwrap_or(self.bounds.len());
        bump(&self.counts[bucket], 1);
        bump(&self.sum_micros, (value * 1e6) as u64);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        let count = cumulative + self.counts[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot { buckets, count, sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6 }
    }
}

const LATENCY_SECONDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const RECORDS_PER_CALL: &[f64] = &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0];

impl Default for Events {
    fn default() -> Events {
        Events {
            files_added: AtomicU64::default(),
            files_closed: AtomicU64::default(),
            files_truncated: AtomicU64::default(),
            read_errors: AtomicU64::default(),
            bytes_read: AtomicU64::default(),
            records_queued: AtomicU64::default(),
            chunks_queued: AtomicU64::default(),
            blank_lines: AtomicU64::default(),
            header_lines: AtomicU64::default(),
            multiline_splits: AtomicU64::default(),
            dead_letters: AtomicU64::default(),
            dead_invalid_json: AtomicU64::default(),
            dead_line_too_long: AtomicU64::default(),
            dead_record_too_large: AtomicU64::default(),
            dead_rejected_by_sink: AtomicU64::default(),
            dead_unrecoverable: AtomicU64::default(),
            dead_parse_failed: AtomicU64::default(),
            batches_acked: AtomicU64::default(),
            batches_abandoned: AtomicU64::default(),
            records_acked: AtomicU64::default(),
            bytes_acked: AtomicU64::default(),
            bytes_acked_before_compression: AtomicU64::default(),
            failed_entries: AtomicU64::default(),
            throttled_calls: AtomicU64::default(),
            failed_calls: AtomicU64::default(),
            retries: AtomicU64::default(),
            chunks_set_aside: AtomicU64::default(),
            ranges_recovered: AtomicU64::default(),
            backpressure_pauses: AtomicU64::default(),
            queue_errors: AtomicU64::default(),
            records_read: AtomicU64::default(),
            calls: AtomicU64::default(),
            sink_records_acked: AtomicU64::default(),
            billed_units: AtomicU64::default(),
            billed_units_saved: AtomicU64::default(),
            rate_decreases: AtomicU64::default(),
            entries_refused_throughput: AtomicU64::default(),
            entries_refused_internal: AtomicU64::default(),
            entries_refused_other: AtomicU64::default(),
            calls_failed_server_error: AtomicU64::default(),
            calls_failed_network: AtomicU64::default(),
            calls_failed_unavailable: AtomicU64::default(),
            pace_lowered: AtomicU64::default(),
            pace_testing: AtomicU64::default(),
            pace_quota_confirmed: AtomicU64::default(),
            pace_noise_restored: AtomicU64::default(),
            pace_noise_recognized: AtomicU64::default(),
            stage_failures: AtomicU64::default(),
            call_latency: Histogram::new(LATENCY_SECONDS),
            call_records: Histogram::new(RECORDS_PER_CALL),
            last_sink_problem: Mutex::new(None),
            streams: Mutex::default(),
            stream_fallbacks: Mutex::default(),
            gates: Gates::default(),
        }
    }
}

/// A copy of the counters at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EventCounts {
    pub files_added: u64,
    pub files_closed: u64,
    pub files_truncated: u64,
    pub read_errors: u64,
    pub bytes_read: u64,
    pub records_queued: u64,
    pub chunks_queued: u64,
    pub blank_lines: u64,
    pub header_lines: u64,
    pub multiline_splits: u64,
    pub dead_letters: u64,
    pub dead_invalid_json: u64,
    pub dead_line_too_long: u64,
    pub dead_record_too_large: u64,
    pub dead_rejected_by_sink: u64,
    pub dead_unrecoverable: u64,
    pub dead_parse_failed: u64,
    pub batches_acked: u64,
    pub batches_abandoned: u64,
    pub records_acked: u64,
    pub bytes_acked: u64,
    /// `bytes_acked` as they were before compression (the same without `compression`).
    pub bytes_acked_before_compression: u64,
    pub failed_entries: u64,
    pub throttled_calls: u64,
    pub failed_calls: u64,
    pub retries: u64,
    pub chunks_set_aside: u64,
    pub ranges_recovered: u64,
    pub backpressure_pauses: u64,
    pub queue_errors: u64,
    /// Records taken from files: queued, or dead-lettered as they were read.
    pub records_read: u64,
    /// Calls answered by a sink (accepted in whole or in part).
    pub calls: u64,
    /// Records the sink acknowledged as it counts them: one per line, or per packed record.
    pub sink_records_acked: u64,
    /// Billing units (Firehose records rounded up to 5 KB, Kinesis records to 25 KB) of
    /// acknowledged records.
    pub billed_units: u64,
    /// Units the same lines would have been billed sent one record per line, uncompressed,
    /// less those billed: what `pack_records`, `aggregate` and `compression` saved.
    pub billed_units_saved: u64,
    /// Times the send rate was lowered to what the destination took (see `sink::rate`).
    pub rate_decreases: u64,
    /// Failed entries by what they mean: over the stream's throughput (`ServiceUnavailableException`),
    /// a transient fault (`InternalFailure`), anything else.
    pub entries_refused_throughput: u64,
    pub entries_refused_internal: u64,
    pub entries_refused_other: u64,
    /// Failed calls by cause (throttled whole: `throttled_calls`).
    pub calls_failed_server_error: u64,
    pub calls_failed_network: u64,
    pub calls_failed_unavailable: u64,
    /// The pace's decisions (see `sink::rate::PaceDecision`).
    pub pace_lowered: u64,
    pub pace_testing: u64,
    pub pace_quota_confirmed: u64,
    pub pace_noise_restored: u64,
    pub pace_noise_recognized: u64,
    /// Stages that died (a reader thread that panicked).
    pub stage_failures: u64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// What a sink accepted of one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchDelivery {
    /// Lines read from files.
    pub lines: u64,
    /// Records as the destination counts them (several lines each when packed).
    pub sink_records: u64,
    /// Bytes sent: compressed, with `compression`.
    pub bytes: u64,
    /// The same records' bytes before compression.
    pub bytes_before_compression: u64,
    /// The destination's billing units: Firehose's 5 KB, Kinesis's 25 KB.
    pub billed_units: u64,
    /// Units saved by packing and compression (see [`EventCounts::billed_units_saved`]).
    pub billed_units_saved: u64,
}

/// Failed entries of one answered call, by what their codes mean.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntryRefusals {
    /// Over the stream's throughput: `ServiceUnavailableException` (and the other throttling codes).
    pub throughput: u64,
    /// A transient fault of the service: `InternalFailure`.
    pub internal: u64,
    pub other: u64,
}

impl EntryRefusals {
    pub fn total(&self) -> u64 {
        self.throughput + self.internal + self.other
    }
}

/// Why a call failed whole (other than throttling or a refusal that needs an operator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFailure {
    /// A 5xx answer.
    ServerError,
    /// No usable answer: the network, a timeout, an answer that cannot be read or relied on.
    Network,
}

impl CallFailure {
    pub fn label(self) -> &'static str {
        match self {
            CallFailure::ServerError => "server_error",
            CallFailure::Network => "network",
        }
    }
}

/// Why a retry was scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCause {
    /// Some entries of an accepted call failed (`FailedPutCount` > 0).
    FailedEntries,
    /// The whole call was throttled.
    Throttled,
    /// Network error, timeout, or an answer that cannot be relied on.
    Transient,
    /// A 5xx answer (`InternalFailure`).
    ServerError,
    /// The destination refuses every call (stream missing, access denied); retried slowly.
    Unavailable,
}

impl Events {
    pub fn file_added(&self, route: &str, path: &Path, offset: u64, start: &str) {
        bump(&self.files_added, 1);
        tracing::info!(route, path = %path.display(), offset, start, "following file");
    }

    pub fn file_renamed(&self, from: &Path, to: &Path) {
        tracing::info!(from = %from.display(), to = %to.display(), "file renamed; same file, position kept");
    }

    pub fn file_closed(&self, path: &Path) {
        bump(&self.files_closed, 1);
        tracing::info!(path = %path.display(), "file left the watched paths and is fully read; closed");
    }

    pub fn file_vanished_while_closed(&self, path: &Path) {
        bump(&self.files_closed, 1);
        tracing::warn!(path = %path.display(), "a file closed for being idle is gone (deleted or moved out of its folder); bytes written to it after it was closed cannot be read");
    }

    pub fn file_truncated(&self, path: &Path, position: u64, size: u64) {
        bump(&self.files_truncated, 1);
        tracing::warn!(path = %path.display(), position, size, "file is shorter than what was read (truncated); reading it again from its start");
    }

    pub fn file_open_failed(&self, path: &Path, error: &dyn std::fmt::Display) {
        bump(&self.read_errors, 1);
        if let GateDecision::Log { held_back } = self.gates.read_failed.admit(Instant::now()) {
            tracing::warn!(path = %path.display(), %error, held_back, "cannot open file; will try again at the next scan");
        }
    }

    pub fn file_read_failed(&self, path: &Path, error: &std::io::Error) {
        bump(&self.read_errors, 1);
        if let GateDecision::Log { held_back } = self.gates.read_failed.admit(Instant::now()) {
            tracing::warn!(path = %path.display(), %error, held_back, "cannot read file; will try again");
        }
    }

    /// A file, or the folder it is in, cannot be looked at now: it is kept as it was (open, or
    /// its position stored), never taken for rotated away or deleted.
    pub fn file_unreachable(&self, path: &Path, reason: &str) {
        bump(&self.read_errors, 1);
        if let GateDecision::Log { held_back } = self.gates.read_failed.admit(Instant::now()) {
            tracing::warn!(path = %path.display(), reason, held_back, "cannot look for file; its position is kept and it is looked for again at the next scan");
        }
    }

    /// A set-aside chunk's range could not be re-read because its file cannot be looked for:
    /// it stays owed, and is tried again at the next start.
    pub fn range_deferred(&self, route: &str, path: &[u8], start: u64, end: u64, reason: &str) {
        bump(&self.read_errors, 1);
        tracing::warn!(route, path = %String::from_utf8_lossy(path), start, end, reason, "cannot look for the source of a set-aside chunk; its range stays owed and is re-read at the next start");
    }

    pub fn glob_failed(&self, pattern: &str, error: &str) {
        bump(&self.read_errors, 1);
        tracing::warn!(pattern, error, "cannot expand path pattern");
    }

    pub fn bytes_read(&self, bytes: u64) {
        bump(&self.bytes_read, bytes);
    }

    pub fn chunk_appended(&self, route: &str, chunk: &SealedChunk) {
        bump(&self.chunks_queued, 1);
        bump(&self.records_queued, u64::from(chunk.draft.meta.record_count));
        bump(&self.records_read, u64::from(chunk.draft.meta.record_count) + chunk.dead_letters.len() as u64);
        if chunk.blank_lines > 0 {
            bump(&self.blank_lines, chunk.blank_lines);
            tracing::debug!(route, blank_lines = chunk.blank_lines, "blank lines skipped (they carry no record)");
        }
        if chunk.header_lines > 0 {
            bump(&self.header_lines, chunk.header_lines);
            tracing::info!(
                route,
                path = %String::from_utf8_lossy(&chunk.draft.meta.path),
                header_lines = chunk.header_lines,
                "a file's header lines skipped (skip_header_lines)"
            );
        }
        if chunk.multiline_splits > 0 {
            bump(&self.multiline_splits, chunk.multiline_splits);
            tracing::warn!(
                route,
                path = %String::from_utf8_lossy(&chunk.draft.meta.path),
                splits = chunk.multiline_splits,
                "records of several lines were cut at multiline.max_lines or max_bytes: each part is a record of its own"
            );
        }
        for dead_letter in &chunk.dead_letters {
            self.dead_lettered(route, dead_letter);
        }
    }

    pub fn dead_lettered(&self, route: &str, letter: &DeadLetter) {
        bump(&self.dead_letters, 1);
        let counter = match letter.reason {
            DeadLetterReason::InvalidJson => &self.dead_invalid_json,
            DeadLetterReason::LineTooLong => &self.dead_line_too_long,
            DeadLetterReason::RecordTooLarge => &self.dead_record_too_large,
            DeadLetterReason::RejectedBySink => &self.dead_rejected_by_sink,
            DeadLetterReason::Unrecoverable => &self.dead_unrecoverable,
            DeadLetterReason::ParseFailed => &self.dead_parse_failed,
        };
        bump(counter, 1);
        // Each dead letter is stored with all of this; the log line is the alert, so a file full
        // of malformed lines does not flood the log.
        if let GateDecision::Log { held_back } = self.gates.dead_letter.admit(Instant::now()) {
            tracing::warn!(
                route,
                reason = letter.reason.code(),
                path = %String::from_utf8_lossy(&letter.path),
                offset = letter.offset,
                length = letter.record_len,
                detail = %letter.detail,
                held_back,
                "record moved to the dead-letter area (`tailhose queue dead-letters` lists them all)"
            );
        }
    }

    pub fn batch_acknowledged(&self, route: &str, delivery: &BatchDelivery, elapsed: Duration) {
        bump(&self.batches_acked, 1);
        bump(&self.records_acked, delivery.lines);
        bump(&self.bytes_acked, delivery.bytes);
        bump(&self.bytes_acked_before_compression, delivery.bytes_before_compression);
        bump(&self.sink_records_acked, delivery.sink_records);
        bump(&self.billed_units, delivery.billed_units);
        bump(&self.billed_units_saved, delivery.billed_units_saved);
        tracing::debug!(
            route,
            records = delivery.lines,
            sink_records = delivery.sink_records,
            bytes = delivery.bytes,
            bytes_before_compression = delivery.bytes_before_compression,
            billed_units = delivery.billed_units,
            elapsed_ms = elapsed.as_millis() as u64,
            "batch delivered and acknowledged"
        );
    }

    pub fn batch_abandoned(&self, route: &str, records: u64) {
        bump(&self.batches_abandoned, 1);
        tracing::warn!(route, records, "shutdown timeout reached; batch abandoned: it stays queued and is sent again at the next start");
    }

    /// A sink answered a call carrying `records` records (whatever it answered).
    pub fn call_answered(&self, records: u64, elapsed: Duration) {
        bump(&self.calls, 1);
        self.call_latency.observe(elapsed.as_secs_f64());
        self.call_records.observe(records as f64);
    }

    /// Some entries of an answered call failed: `refused` says how many of each kind, `first`
    /// is the first failure's code and message.
    pub fn entries_failed(&self, route: &str, refused: EntryRefusals, of: u64, first: (&str, &str)) {
        let failed = refused.total();
        let (code, message) = first;
        bump(&self.failed_entries, failed);
        bump(&self.entries_refused_throughput, refused.throughput);
        bump(&self.entries_refused_internal, refused.internal);
        bump(&self.entries_refused_other, refused.other);
        self.note_sink_problem(route, &format!("{failed} of {of} records refused: {code}: {message}"));
        if let GateDecision::Log { held_back } = self.gates.entries_failed.admit(Instant::now()) {
            tracing::warn!(
                route,
                failed,
                of,
                throughput = refused.throughput,
                internal_failure = refused.internal,
                other = refused.other,
                code,
                message,
                held_back,
                "the sink refused some records of a call; resending only those"
            );
        }
    }

    pub fn call_throttled(&self, route: &str, message: &str) {
        bump(&self.throttled_calls, 1);
        self.note_sink_problem(route, &format!("throttled: {message}"));
        if let GateDecision::Log { held_back } = self.gates.call_throttled.admit(Instant::now()) {
            tracing::warn!(route, message, held_back, "the sink throttled a call");
        }
    }

    /// A call failed whole: a 5xx answer (`server_error`), or no usable answer (network, timeout).
    pub fn call_failed(&self, route: &str, cause: CallFailure, message: &str) {
        bump(&self.failed_calls, 1);
        match cause {
            CallFailure::ServerError => bump(&self.calls_failed_server_error, 1),
            CallFailure::Network => bump(&self.calls_failed_network, 1),
        }
        self.note_sink_problem(route, message);
        if let GateDecision::Log { held_back } = self.gates.call_failed.admit(Instant::now()) {
            tracing::warn!(route, cause = cause.label(), message, held_back, "a call to the sink failed");
        }
    }

    pub fn sink_unavailable(&self, route: &str, message: &str, fix: &str) {
        bump(&self.failed_calls, 1);
        bump(&self.calls_failed_unavailable, 1);
        self.note_sink_problem(route, &format!("{message} ({fix})"));
        if let GateDecision::Log { held_back } = self.gates.sink_unavailable.admit(Instant::now()) {
            tracing::error!(route, message, fix, held_back, "the sink refuses every call; records stay queued and tailhose keeps retrying");
        }
    }

    pub fn retry_scheduled(&self, route: &str, cause: RetryCause, attempt: u64, delay: Duration) {
        bump(&self.retries, 1);
        if let GateDecision::Log { held_back } = self.gates.retry.admit(Instant::now()) {
            tracing::info!(route, ?cause, attempt, delay_ms = delay.as_millis() as u64, held_back, "retrying");
        }
    }

    /// The pace changed (see `sink::rate`): every decision is counted and logged with why, at
    /// most one line per period for each kind of decision (with the count held back since).
    pub fn pace_changed(&self, route: &str, change: &crate::sink::rate::PaceChange, call_allowance: crate::sink::rate::CallSize) {
        use crate::sink::rate::PaceDecision;
        let counter = match change.decision {
            PaceDecision::Lowered => &self.pace_lowered,
            PaceDecision::Testing => &self.pace_testing,
            PaceDecision::QuotaConfirmed => &self.pace_quota_confirmed,
            PaceDecision::NoiseRestored => &self.pace_noise_restored,
            PaceDecision::NoiseRecognized => &self.pace_noise_recognized,
        };
        bump(counter, 1);
        if matches!(change.decision, PaceDecision::Lowered | PaceDecision::Testing) {
            bump(&self.rate_decreases, 1);
        }
        let why = match change.decision {
            PaceDecision::Lowered => "the destination refused a quarter or more of what was sent, or, while no rate was learned yet, every entry of a call or the end of one: a quota; sending at 95 % of what it took over the last second, then probing for more",
            PaceDecision::Testing => "the destination refused more than the noise explains: sending at 95 % of what it took, to see whether the refusals fall with the rate",
            PaceDecision::QuotaConfirmed => "the refusals fell with the rate: a quota; keeping the lower rate, then probing for more",
            PaceDecision::NoiseRestored => "the refusals did not fall with the rate: noise, not a quota; the rate before is back and refusals at this share are resent without slowing down",
            PaceDecision::NoiseRecognized => "the refusals are spread over the calls as records refused one by one at random, not lumped as a quota's: noise; the rate stays and refusals at this share are resent without slowing down (tested by the rate when the floor is next due)",
        };
        let gate = match change.decision {
            PaceDecision::Lowered => &self.gates.pace[0],
            PaceDecision::Testing => &self.gates.pace[1],
            PaceDecision::QuotaConfirmed => &self.gates.pace[2],
            PaceDecision::NoiseRestored => &self.gates.pace[3],
            PaceDecision::NoiseRecognized => &self.gates.pace[4],
        };
        if let GateDecision::Log { held_back } = gate.admit(Instant::now()) {
            tracing::info!(
                route,
                decision = change.decision.label(),
                refused_percent = (change.refused_share * 1000.0).round() / 10.0,
                noise_percent = (change.noise_floor * 1000.0).round() / 10.0,
                bytes_per_sec = change.rates.bytes.map(|rate| rate as u64),
                records_per_sec = change.rates.records.map(|rate| rate as u64),
                calls_per_sec = change.rates.calls.map(|rate| rate as u64),
                // Calls carry no more than this at that pace (see `RateGovernor::call_allowance`).
                max_call_bytes = (call_allowance.bytes != u64::MAX).then_some(call_allowance.bytes),
                max_call_records = (call_allowance.records != u64::MAX).then_some(call_allowance.records),
                held_back,
                "{why}"
            );
        }
    }

    fn note_sink_problem(&self, route: &str, message: &str) {
        let problem = SinkProblem { route: route.to_owned(), message: message.to_owned(), at_ms: crate::queue::now_ms() };
        *self.last_sink_problem.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(problem);
    }

    /// The latest sink trouble of this run, if any.
    pub fn last_sink_problem(&self) -> Option<SinkProblem> {
        self.last_sink_problem.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// A stage of a route's path died (a thread that panicked): the daemon stops with an error.
    pub fn stage_failed(&self, route: &str, stage: &str, error: &dyn std::fmt::Display) {
        bump(&self.stage_failures, 1);
        self.note_sink_problem(route, &format!("the {stage} stopped: {error}"));
        tracing::error!(route, stage, %error, "a stage of the route died; tailhose stops with an error so that it is restarted");
    }

    pub fn chunk_set_aside(&self, route: &str, seq: ChunkSeq, error: &ChunkError) {
        bump(&self.chunks_set_aside, 1);
        tracing::error!(route, chunk = seq.0, code = error.code(), %error, "queue chunk failed verification; set aside, never sent; its range is re-read from the source file");
    }

    pub fn range_recovered(&self, route: &str, path: &[u8], start: u64, end: u64, records: u64) {
        bump(&self.ranges_recovered, 1);
        tracing::warn!(route, path = %String::from_utf8_lossy(path), start, end, records, "re-read a range of a set-aside chunk from its source file");
    }

    pub fn queue_rolled_back(&self, set_aside: &crate::queue::SnapshotsSetAside) {
        bump(&self.queue_errors, 1);
        tracing::error!(folder = %set_aside.folder.display(), "{set_aside}");
    }

    pub fn queue_settings_rewritten(&self, moved_to: &Path) {
        bump(&self.queue_errors, 1);
        tracing::error!(moved_to = %moved_to.display(), "{}", crate::queue::opening::SETTINGS_REWRITTEN_NOTICE);
    }

    pub fn queue_created_again(&self, queue_dir: &Path) {
        tracing::warn!(queue = %queue_dir.display(), "{}", crate::queue::Creation::CREATED_AGAIN_NOTICE);
    }

    pub fn ec2_instance_tags_missing(&self, why: &str) {
        tracing::warn!(
            error = why,
            "records go without the Kinesis Agent's `tags` (kinesis_agent_ec2_metadata): IMDS gives no instance tags; allow \
             tags in the instance's metadata (aws ec2 modify-instance-metadata-options --instance-metadata-tags enabled)"
        );
    }

    /// A call to one stream of a sink that names a stream per record was answered (or failed).
    pub fn stream_call_answered(&self, sink: &str, stream: &str, answer: &Result<Vec<crate::sink::RecordOutcome>, crate::sink::SinkError>) {
        self.with_stream(sink, stream, |counts| {
            counts.calls += 1;
            match answer {
                Ok(outcomes) => {
                    let refused = outcomes.iter().filter(|outcome| !matches!(outcome, crate::sink::RecordOutcome::Accepted)).count();
                    counts.refused_entries += refused as u64;
                }
                Err(_) => counts.failed_calls += 1,
            }
        });
    }

    /// The pace of one stream changed: `allowance` is a tenth of a second of it, `None` unpaced.
    pub fn stream_pace_changed(&self, sink: &str, stream: &str, allowance: Option<crate::sink::rate::CallSize>) {
        // An allowance is a tenth of a second of the pace (`RateGovernor::call_allowance`).
        self.with_stream(sink, stream, |counts| counts.pace_bytes_per_sec = allowance.map(|allowance| allowance.bytes as f64 * 10.0));
    }

    /// Records of one stream acknowledged.
    pub fn stream_acknowledged(&self, sink: &str, stream: &str, records: u64) {
        self.with_stream(sink, stream, |counts| counts.records_acked += records);
    }

    /// A record went to its sink's fallback stream instead of the one its template names.
    pub fn stream_fallback(&self, sink: &str, fallback: &str, reason: crate::sink::streams::FallbackReason) {
        let mut fallbacks = self.stream_fallbacks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *fallbacks.entry((sink.to_owned(), reason.label())).or_default() += 1;
        drop(fallbacks);
        if let GateDecision::Log { held_back } = self.gates.stream_fallback.admit(Instant::now()) {
            let why = match reason {
                crate::sink::streams::FallbackReason::NoField => {
                    "the record lacks the field its stream is named by, or its value is no name"
                }
                crate::sink::streams::FallbackReason::InvalidName => "the name the template gives is not a stream name",
                crate::sink::streams::FallbackReason::TooManyStreams => {
                    "the route already sends to max_streams streams (a field with many values? raise max_streams)"
                }
                crate::sink::streams::FallbackReason::MissingStream => {
                    "the stream a record's field names does not exist (create it, or correct the records)"
                }
            };
            tracing::warn!(sink, fallback, reason = reason.label(), held_back, "a record goes to the fallback stream: {why}");
        }
    }

    /// A stream template opened a stream for a route.
    pub fn stream_opened(&self, route: &str, stream: &str) {
        tracing::info!(route, stream, "records go to a new stream");
    }

    fn with_stream(&self, sink: &str, stream: &str, change: impl FnOnce(&mut StreamCounts)) {
        let mut streams = self.streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        change(streams.entry((sink.to_owned(), stream.to_owned())).or_default());
    }

    /// Each named stream's counters, by sink and stream.
    pub fn stream_counts(&self) -> Vec<((String, String), StreamCounts)> {
        let streams = self.streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        streams.iter().map(|(key, counts)| (key.clone(), *counts)).collect()
    }

    /// Records sent to fallback streams, by sink and reason.
    pub fn stream_fallback_counts(&self) -> Vec<((String, &'static str), u64)> {
        let fallbacks = self.stream_fallbacks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        fallbacks.iter().map(|(key, count)| (key.clone(), *count)).collect()
    }

    pub fn data_dir_open_to_others(&self, data_dir: &Path, mode: u32) {
        tracing::warn!(
            data_dir = %data_dir.display(),
            mode = format!("{mode:o}"),
            "data_dir can be read or written by other users, and it holds log contents and dead letters: chmod 700 it"
        );
    }

    pub fn queue_failed(&self, route: &str, operation: &str, error: &dyn std::fmt::Display) {
        bump(&self.queue_errors, 1);
        tracing::error!(route, operation, %error, "queue storage failed (check free space and permissions of data_dir)");
    }

    pub fn packing_unchecked(&self, sink: &str, reason: &str) {
        tracing::warn!(
            sink,
            reason,
            "cannot describe the delivery stream to check that packing suits its destination; packing anyway (allow firehose:DescribeDeliveryStream to have it checked)"
        );
    }

    pub fn retained_pruned(&self, route: &str, chunks: u64) {
        if chunks > 0 {
            tracing::debug!(route, chunks, "retained chunks past their retention deleted");
        }
    }

    pub fn backpressure(&self, route: &str, queued_bytes: u64) {
        bump(&self.backpressure_pauses, 1);
        if let GateDecision::Log { held_back } = self.gates.backpressure.admit(Instant::now()) {
            tracing::warn!(route, queued_bytes, held_back, "queue is full (max_queue_bytes); reading paused until the sink catches up");
        }
    }

    pub fn snapshot(&self) -> EventCounts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        EventCounts {
            files_added: load(&self.files_added),
            files_closed: load(&self.files_closed),
            files_truncated: load(&self.files_truncated),
            read_errors: load(&self.read_errors),
            bytes_read: load(&self.bytes_read),
            records_queued: load(&self.records_queued),
            chunks_queued: load(&self.chunks_queued),
            blank_lines: load(&self.blank_lines),
            header_lines: load(&self.header_lines),
            multiline_splits: load(&self.multiline_splits),
            dead_letters: load(&self.dead_letters),
            dead_invalid_json: load(&self.dead_invalid_json),
            dead_line_too_long: load(&self.dead_line_too_long),
            dead_record_too_large: load(&self.dead_record_too_large),
            dead_rejected_by_sink: load(&self.dead_rejected_by_sink),
            dead_unrecoverable: load(&self.dead_unrecoverable),
            dead_parse_failed: load(&self.dead_parse_failed),
            batches_acked: load(&self.batches_acked),
            batches_abandoned: load(&self.batches_abandoned),
            records_acked: load(&self.records_acked),
            bytes_acked: load(&self.bytes_acked),
            bytes_acked_before_compression: load(&self.bytes_acked_before_compression),
            failed_entries: load(&self.failed_entries),
            throttled_calls: load(&self.throttled_calls),
            failed_calls: load(&self.failed_calls),
            retries: load(&self.retries),
            chunks_set_aside: load(&self.chunks_set_aside),
            ranges_recovered: load(&self.ranges_recovered),
            backpressure_pauses: load(&self.backpressure_pauses),
            queue_errors: load(&self.queue_errors),
            records_read: load(&self.records_read),
            calls: load(&self.calls),
            sink_records_acked: load(&self.sink_records_acked),
            billed_units: load(&self.billed_units),
            billed_units_saved: load(&self.billed_units_saved),
            rate_decreases: load(&self.rate_decreases),
            entries_refused_throughput: load(&self.entries_refused_throughput),
            entries_refused_internal: load(&self.entries_refused_internal),
            entries_refused_other: load(&self.entries_refused_other),
            calls_failed_server_error: load(&self.calls_failed_server_error),
            calls_failed_network: load(&self.calls_failed_network),
            calls_failed_unavailable: load(&self.calls_failed_unavailable),
            pace_lowered: load(&self.pace_lowered),
            pace_testing: load(&self.pace_testing),
            pace_quota_confirmed: load(&self.pace_quota_confirmed),
            pace_noise_restored: load(&self.pace_noise_restored),
            pace_noise_recognized: load(&self.pace_noise_recognized),
            stage_failures: load(&self.stage_failures),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{GateDecision, Histogram, LogGate, REPEAT_LOG_PERIOD};

    #[test]
    fn a_repeated_warning_is_logged_once_per_period_with_the_count_held_back() {
        let gate = LogGate::default();
        let start = Instant::now();
        assert_eq!(gate.admit(start), GateDecision::Log { held_back: 0 });
        for second in 1..10 {
            assert_eq!(gate.admit(start + Duration::from_secs(second)), GateDecision::HoldBack);
        }
        assert_eq!(gate.admit(start + REPEAT_LOG_PERIOD), GateDecision::Log { held_back: 9 });
        assert_eq!(gate.admit(start + REPEAT_LOG_PERIOD + Duration::from_millis(1)), GateDecision::HoldBack);
        assert_eq!(gate.admit(start + 3 * REPEAT_LOG_PERIOD), GateDecision::Log { held_back: 1 });
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_count_values_above_the_last_bound() {
        static BOUNDS: &[f64] = &[1.0, 10.0];
        let histogram = Histogram::new(BOUNDS);
        for value in [0.5, 1.0, 5.0, 50.0] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.buckets, vec![(1.0, 2), (10.0, 3)]);
        assert_eq!(snapshot.count, 4);
        assert!((snapshot.sum - 56.5).abs() < 1e-6);
    }
}
