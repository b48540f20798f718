//! `/metrics` in the Prometheus text exposition format (version 0.0.4).
//!
//! Counters are totals since the daemon started; gauges are read from the queue at scrape time.
//! For a daemon started on an empty queue, at any quiet moment:
//! `tailhose_records_read_total = tailhose_records_acked_total + sum(tailhose_queue_records)
//! + sum(tailhose_dead_letters_total)`: every record read is delivered, pending or dead-lettered.

use std::fmt::Write;

use super::AdminState;
use crate::events::HistogramSnapshot;
use crate::queue::{QueueError, QueueStats};

/// Renders every metric. Reads the queue: call from a blocking thread.
pub fn render(state: &AdminState) -> Result<String, QueueError> {
    let counts = state.events.snapshot();
    let mut out = Exposition::default();
    let counters: [(&str, &str, u64); 30] = [
        ("tailhose_records_read_total", "Records taken from files: queued, or dead-lettered as read.", counts.records_read),
        ("tailhose_records_queued_total", "Records appended to the queue.", counts.records_queued),
        ("tailhose_records_acked_total", "Records the sink acknowledged.", counts.records_acked),
        ("tailhose_bytes_read_total", "Bytes read from files.", counts.bytes_read),
        (
            "tailhose_bytes_acked_total",
            "Bytes of records the sink acknowledged (as sent: compressed, with compression).",
            counts.bytes_acked,
        ),
        (
            "tailhose_bytes_acked_before_compression_total",
            "Bytes of the records the sink acknowledged, before compression.",
            counts.bytes_acked_before_compression,
        ),
        ("tailhose_batches_acked_total", "Batches delivered and acknowledged.", counts.batches_acked),
        ("tailhose_batches_abandoned_total", "Batches left queued at a shutdown deadline.", counts.batches_abandoned),
        ("tailhose_calls_total", "Calls the sink answered.", counts.calls),
        ("tailhose_failed_entries_total", "Records a sink refused inside an answered call (resent).", counts.failed_entries),
        ("tailhose_throttled_calls_total", "Calls the sink throttled as a whole.", counts.throttled_calls),
        ("tailhose_failed_calls_total", "Calls that failed (network, timeouts, 5xx, refusals).", counts.failed_calls),
        ("tailhose_retries_total", "Retries scheduled.", counts.retries),
        ("tailhose_files_added_total", "Files followed.", counts.files_added),
        ("tailhose_files_closed_total", "Files closed after being read to their end.", counts.files_closed),
        ("tailhose_files_truncated_total", "Files found truncated and read again from their start.", counts.files_truncated),
        ("tailhose_read_errors_total", "Errors opening or reading files.", counts.read_errors),
        ("tailhose_blank_lines_total", "Blank lines skipped.", counts.blank_lines),
        ("tailhose_header_lines_total", "Header lines of files read from their head skipped (skip_header_lines).", counts.header_lines),
        ("tailhose_multiline_splits_total", "Records of several lines cut at multiline.max_lines or max_bytes.", counts.multiline_splits),
        ("tailhose_chunks_set_aside_total", "Queue chunks that failed verification.", counts.chunks_set_aside),
        ("tailhose_ranges_recovered_total", "Ranges of set-aside chunks re-read from their source.", counts.ranges_recovered),
        ("tailhose_backpressure_pauses_total", "Times reading paused for a full queue.", counts.backpressure_pauses),
        ("tailhose_queue_errors_total", "Queue storage errors.", counts.queue_errors),
        ("tailhose_chunks_queued_total", "Chunks appended to the queue.", counts.chunks_queued),
        (
            "tailhose_sink_records_acked_total",
            "Records as the sink counts them (several lines each when packed).",
            counts.sink_records_acked,
        ),
        (
            "tailhose_billed_units_total",
            "Billing units acknowledged: Firehose records rounded up to 5 KB, Kinesis records to 25 KB.",
            counts.billed_units,
        ),
        (
            "tailhose_billed_units_saved_total",
            "Billing units the acknowledged lines would have cost one record per line, uncompressed, less those billed.",
            counts.billed_units_saved,
        ),
        ("tailhose_stage_failures_total", "Stages of a route that died (the daemon then stops with an error).", counts.stage_failures),
        ("tailhose_rate_decreases_total", "Times the send rate was lowered (a quota found, or a test begun).", counts.rate_decreases),
    ];
    for (name, help, value) in counters {
        out.header(name, help, "counter");
        out.sample(name, &[], value as f64);
    }
    out.labelled_counter(
        "tailhose_dead_letters_total",
        "Records moved to the dead-letter area, by reason.",
        "reason",
        &[
            ("invalid_json", counts.dead_invalid_json),
            ("line_too_long", counts.dead_line_too_long),
            ("record_too_large", counts.dead_record_too_large),
            ("rejected_by_sink", counts.dead_rejected_by_sink),
            ("unrecoverable", counts.dead_unrecoverable),
            ("parse_failed", counts.dead_parse_failed),
        ],
    );
    out.labelled_counter(
        "tailhose_refused_entries_total",
        "Records a sink refused inside an answered call, by what the code means.",
        "reason",
        &[
            ("throughput", counts.entries_refused_throughput),
            ("internal_failure", counts.entries_refused_internal),
            ("other", counts.entries_refused_other),
        ],
    );
    out.labelled_counter(
        "tailhose_call_failures_total",
        "Calls that failed whole, by cause: throttled (also tailhose_throttled_calls_total), server_error (5xx), network (no usable answer: resets, timeouts, answers that cannot be relied on), unavailable (the other three are tailhose_failed_calls_total).",
        "cause",
        &[
            ("throttled", counts.throttled_calls),
            ("server_error", counts.calls_failed_server_error),
            ("network", counts.calls_failed_network),
            ("unavailable", counts.calls_failed_unavailable),
        ],
    );
    out.labelled_counter(
        "tailhose_pace_decisions_total",
        "Decisions of the send rate's governor (docs/rate-control.md).",
        "decision",
        &[
            ("lowered", counts.pace_lowered),
            ("testing", counts.pace_testing),
            ("quota_confirmed", counts.pace_quota_confirmed),
            ("noise_restored", counts.pace_noise_restored),
            ("noise_recognized", counts.pace_noise_recognized),
        ],
    );
    // Per stream, for sinks that name a stream per record (none otherwise).
    let streams = state.events.stream_counts();
    let per_stream: [(&str, &str, &str, StreamValue); 5] = [
        ("tailhose_stream_records_acked_total", "Records acknowledged, by sink and stream a template named.", "counter", |counts| {
            Some(counts.records_acked as f64)
        }),
        ("tailhose_stream_calls_total", "Calls made, by sink and stream a template named.", "counter", |counts| Some(counts.calls as f64)),
        (
            "tailhose_stream_refused_entries_total",
            "Records refused inside answered calls (resent), by sink and stream a template named.",
            "counter",
            |counts| Some(counts.refused_entries as f64),
        ),
        ("tailhose_stream_failed_calls_total", "Calls failed whole, by sink and stream a template named.", "counter", |counts| {
            Some(counts.failed_calls as f64)
        }),
        (
            "tailhose_stream_pace_bytes_per_second",
            "The pace learned from a stream's throttling, bytes per second (absent while unpaced).",
            "gauge",
            |counts| counts.pace_bytes_per_sec,
        ),
    ];
    for (name, help, kind, value) in per_stream {
        out.header(name, help, kind);
        for ((sink, stream), counts) in &streams {
            if let Some(value) = value(counts) {
                out.sample(name, &[("sink", sink), ("stream", stream)], value);
            }
        }
    }
    out.header("tailhose_stream_fallbacks_total", "Records sent to a sink's fallback stream, by sink and reason.", "counter");
    for ((sink, reason), count) in state.events.stream_fallback_counts() {
        out.sample("tailhose_stream_fallbacks_total", &[("sink", &sink), ("reason", reason)], count as f64);
    }
    out.histogram("tailhose_call_duration_seconds", "Seconds from sending a call to its answer.", &state.events.call_latency.snapshot());
    out.histogram("tailhose_call_records", "Records per call.", &state.events.call_records.snapshot());

    let now_ms = crate::queue::now_ms();
    let stats = state.routes.iter().map(|queue| queue.stats()).collect::<Result<Vec<_>, _>>()?;
    let gauges: [(&str, &str, RouteGauge); 7] = [
        ("tailhose_queue_records", "Records pending delivery.", |stats: &QueueStats| stats.pending_records as f64),
        ("tailhose_queue_bytes", "Bytes of chunks pending delivery.", |stats: &QueueStats| stats.pending_bytes as f64),
        ("tailhose_queue_chunks", "Chunks pending delivery.", |stats: &QueueStats| stats.pending_chunks as f64),
        ("tailhose_queue_oldest_pending_age_seconds", "Age of the oldest pending chunk; 0 when none.", |stats| {
            stats.oldest_pending_age_ms.unwrap_or(0) as f64 / 1000.0
        }),
        ("tailhose_queue_dead_letters", "Dead letters stored.", |stats: &QueueStats| stats.dead_letters as f64),
        ("tailhose_queue_retained_bytes", "Bytes of acknowledged chunks kept for replay.", |stats: &QueueStats| {
            stats.retained_bytes as f64
        }),
        ("tailhose_queue_set_aside_chunks", "Chunks set aside after failing verification.", |stats: &QueueStats| {
            stats.set_aside_chunks as f64
        }),
    ];
    for (name, help, value) in gauges {
        out.header(name, help, "gauge");
        for route in &stats {
            out.sample(name, &[("route", &route.route)], value(route));
        }
    }
    // Per route, for an alert on one route stuck while others deliver: since its last
    // acknowledgement, or since the daemon started when none has come yet.
    out.header(
        "tailhose_queue_seconds_since_ack",
        "Seconds since the route's last acknowledgement (since the start when none yet).",
        "gauge",
    );
    for queue in &state.routes {
        let since_ms = queue.pending_summary().last_ack_ms.unwrap_or(state.started_at_ms).max(state.started_at_ms);
        out.sample("tailhose_queue_seconds_since_ack", &[("route", queue.name())], now_ms.saturating_sub(since_ms) as f64 / 1000.0);
    }
    // Beside tailhose_queue_bytes: an alert on a queue filling up needs its limit.
    out.header("tailhose_queue_max_bytes", "Queue size at which reading pauses (max_queue_bytes).", "gauge");
    for queue in &state.routes {
        out.sample("tailhose_queue_max_bytes", &[("route", queue.name())], queue.max_queue_bytes() as f64);
    }
    out.header("tailhose_source_lag_bytes", "Bytes of a file not yet acknowledged, for files still at their path.", "gauge");
    for route in &stats {
        for file in &route.files {
            if let Some(behind) = file.bytes_behind {
                out.sample("tailhose_source_lag_bytes", &[("route", &route.route), ("path", &file.path)], behind as f64);
            }
        }
    }
    let health = state.health();
    out.header("tailhose_healthy", "1 when every route is delivering or idle (see /health).", "gauge");
    out.sample("tailhose_healthy", &[], if health.healthy { 1.0 } else { 0.0 });
    out.header("tailhose_uptime_seconds", "Seconds since the daemon started.", "gauge");
    out.sample("tailhose_uptime_seconds", &[], now_ms.saturating_sub(state.started_at_ms) as f64 / 1000.0);
    Ok(out.text)
}

/// Reads one per-stream sample's value from a stream's counters (`None`: no sample).
type StreamValue = fn(&crate::events::StreamCounts) -> Option<f64>;

/// Reads one gauge's value from a route's stats.
type RouteGauge = fn(&QueueStats) -> f64;

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            let rendered: Vec<String> = labels.iter().map(|(key, value)| format!("{key}=\"{}\"", escape_label(value))).collect();
            let _ = write!(self.text, "{{{}}}", rendered.join(","));
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// One counter family with a sample per value of `label`.
    fn labelled_counter(&mut self, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
        self.header(name, help, "counter");
        for &(value, count) in values {
            self.sample(name, &[(label, value)], count as f64);
        }
    }

    fn histogram(&mut self, name: &str, help: &str, snapshot: &HistogramSnapshot) {
        self.header(name, help, "histogram");
        let bucket = format!("{name}_bucket");
        for (bound, count) in &snapshot.buckets {
            self.sample(&bucket, &[("le", &bound.to_string())], *count as f64);
        }
        self.sample(&bucket, &[("le", "+Inf")], snapshot.count as f64);
        self.sample(&format!("{name}_sum"), &[], snapshot.sum);
        self.sample(&format!("{name}_count"), &[], snapshot.count as f64);
    }
}

/// Label values escape `\`, `"` and newlines (the exposition format's rule).
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::{escape_label, Exposition};
    use crate::events::HistogramSnapshot;

    #[test]
    fn label_values_escape_quotes_backslashes_and_newlines() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn histograms_end_with_an_infinite_bucket_a_sum_and_a_count() {
        let mut out = Exposition::default();
        out.histogram("h", "help", &HistogramSnapshot { buckets: vec![(0.5, 1), (1.0, 3)], count: 4, sum: 2.5 });
        let expected = "# HELP h help\n# TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 4\nh_sum 2.5\nh_count 4\n";
        assert_eq!(out.text, expected);
    }
}
