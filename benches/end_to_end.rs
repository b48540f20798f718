//! End to end: the release `tailhose` binary reads a file of seed records and delivers it to the
//! project's fake Firehose on loopback, in these situations:
//!
//! 1. unthrottled: records/s, MB/s, tailhose's CPU seconds and peak RSS; on plain HTTP, through
//!    TLS (the fake behind rustls, trusted through `ca_file`, as Firehose is reached), and through
//!    TLS with packed records (`pack_records`, for destinations that store bytes: S3);
//! 2. at the quota of an ap-northeast-2 Direct PUT stream (1 MiB/s, 1,000 calls/s, 100,000
//!    records/s): time to the last accepted record, share of the byte quota used, throttled calls,
//!    duplicates; one record per line, packed records, and packed records 30 ms away;
//! 3. far from the region (30 ms added to every call): records/s;
//! 4. a trickle: 1,000 records/s written line by line to a followed file (default poll and
//!    flush interval, 1 s): the time from each line's write to its acceptance, p50/p99/max;
//! 5. noise (issue 17), through TLS, one record per line, 2,000,000 records: refusals at random
//!    that say nothing about the quota (`Noise`): "noise: clean" (none), 1 % of records
//!    (`ServiceUnavailableException`, then `InternalFailure`), 5 % of records with 5 % of calls
//!    throttled whole or answered 500, 10 % of records. The last column, "vs clean (floor)", is
//!    the median of three pairs' ratios, each the noisy run's records/s over that of a clean run
//!    made just before it (not printed as rows), and the floor: 0.8 × (1 − p) for a
//!    fraction p of records refused, 0.7 for 5 % + 5 %; the row's other columns are the median
//!    pair's noisy run. After the table, how many refusals each row met, every pair's ratio, the
//!    clean runs' records/s and the median run's ratio to the clean row printed;
//! 6. quotas beyond ap-northeast-2's, one record per line on plain HTTP: us-east-1's default (5
//!    MiB/s, 2,000 calls/s, 500,000 records/s; ~500,000 records, ~14 s at the quota), 1 MiB/s with
//!    2 % of records refused at random on top (100,000 records; the target: ≥ 85 % of the
//!    byte quota used), and a quota that changes 5 s after the fake Firehose starts (tailhose
//!    starts a few milliseconds later: the file is written before the fake starts): halved from 2
//!    MiB/s (17 s of records at the quotas) and doubled from 1 MiB/s (40 s). After the table, for
//!    the halved quota: when quota throttling stops (the start of the first 3 s without a
//!    quota-throttled call; target ≤ 3 s after the change); for the doubled one: the first
//!    second from which 5 s carry ≥ 90 % of the new quota (target ≤ 30 s), and the share of the
//!    new quota used over the last 10 s. "byte quota used" follows the change.
//! 7. other sinks and compression, unthrottled through TLS: Kinesis Data Streams (`kinesis_streams`,
//!    the fake in its Kinesis dialect) one record per entry and KPL-aggregated, and packed
//!    Firehose records compressed with gzip and zstd; after the table, bytes before and after
//!    compression.
//!
//! `cargo bench --bench end_to_end` prints one table row per situation. Under `cargo test
//! --bench end_to_end` (CI), each situation runs with a few thousand records, as a smoke test
//! (quota changes then come 50 ms after the start, and rows that end before them say so).
//!
//! `END_TO_END_ONLY=unthrottled` runs only the situations whose name starts with that (no
//! trickle); several prefixes are separated by `|`: `END_TO_END_ONLY=noise` runs the noise rows,
//! `END_TO_END_ONLY='quota|at the quota ('` the quota rows with the 1 MiB/s one to compare with.
//! `END_TO_END_RECORDS` changes the unthrottled situations' record count (default 1,000,000) and
//! the noise rows' (default 2,000,000).
//! `TAILHOSE_BIN=path/to/tailhose` runs another build: to compare two builds, alternate them in one
//! sitting (this machine's speed drifts by tens of percent over an hour).
//! `END_TO_END_TOP_LINES` adds top-level settings (`queue_cache_bytes = "8MiB"`).
//! Each noise row is measured as 3 pairs, a clean run then the noisy one, and shows the median
//! pair's ratio (`END_TO_END_NOISE_PAIRS` changes the count); every pair's ratio is in the notes.
//! `END_TO_END_LOG=FOLDER` keeps each situation's tailhose log there, at info level (the pace's
//! decisions). `END_TO_END_SINK_LINES` adds lines to the sink's configuration, e.g.
//! `END_TO_END_SINK_LINES='max_in_flight = 1' cargo bench --bench end_to_end` (how the default
//! `max_in_flight` was chosen).
//!
//! CPU and memory are read from `/proc/PID/stat` and `/proc/PID/status` (`VmHWM`) while tailhose
//! runs, sampled every 20 ms; the last sample before it exits is reported. "fake Firehose CPU s"
//! is this process's own CPU time over the run: the fake Firehose, its TLS and the sampling,
//! which share the 2 cores with tailhose (Fluent Bit's fake and TLS terminator took 2.5 CPU s
//! for 2 M records in issue 7).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::fake_firehose::{EntryCode, FakeFirehose, Faults, Noise, Quota, QuotaChange, Seen, TestCertificate};
use support::{count_seqs, SinkKind, Workspace};
use tailhose::sink::compression::Compression;

/// ap-northeast-2's default Direct PUT quota.
const AP_NORTHEAST_2: Quota = Quota { bytes_per_sec: 1 << 20, records_per_sec: 100_000, calls_per_sec: 1_000 };
/// us-east-1's default Direct PUT quota.
const US_EAST_1: Quota = Quota { bytes_per_sec: 5 << 20, records_per_sec: 500_000, calls_per_sec: 2_000 };
/// Twice ap-northeast-2's: where the changing quotas start (halved) or end (doubled).
const TWICE_AP_NORTHEAST_2: Quota = Quota { bytes_per_sec: 2 << 20, records_per_sec: 200_000, calls_per_sec: 2_000 };

/// The noise rows' clean row: run again before each noisy run, as the reference of its "vs
/// clean (floor)".
const NOISE_CLEAN: &str = "noise: clean";
/// Pairs of runs (clean, then noisy) that measure each noise row; `END_TO_END_NOISE_PAIRS`
/// changes it.
const NOISE_PAIRS: usize = 3;
/// The noise rows' seed: the same refusals at every run.
const NOISE_SEED: u64 = 17;

struct Situation {
    name: &'static str,
    records: u64,
    faults: Faults,
    sink_lines: &'static str,
    /// The fake Firehose behind TLS with a certificate authority made for the run (`ca_file`).
    tls: bool,
    /// A noise row: the least share of the clean noise row's records/s it must keep (issue 17).
    noise_floor: Option<f64>,
    sink: SinkKind,
    /// How the sink compresses its records (in `sink_lines`): the fake's records are
    /// decompressed before they are counted.
    compression: Option<Compression>,
}

#[derive(Default)]
struct Measured {
    seconds: f64,
    cpu_seconds: f64,
    /// CPU time of this process (the fake Firehose, its TLS, the polling) during the run: it
    /// shares the machine's cores with tailhose.
    peer_cpu_seconds: f64,
    peak_rss_mib: f64,
    calls: u64,
    throttled_calls: u64,
    delivered: usize,
    duplicates: u64,
    bytes: u64,
    /// Bytes the stream's quota allowed from tailhose's start to the last acceptance.
    quota_allowance: Option<f64>,
    /// Lines printed after the table: refusals met, how a changed quota was followed.
    notes: Vec<String>,
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let scale = |records: u64| if full { records } else { 3_000 };
    let records_set: Option<u64> = std::env::var("END_TO_END_RECORDS").ok().and_then(|count| count.parse().ok());
    let unthrottled_records = records_set.unwrap_or(1_000_000);
    let noise_records = scale(records_set.unwrap_or(2_000_000));
    // Quota changes come 5 s after the fake's start; a smoke run lasts about a tenth of a second,
    // and its change comes within it, so that the reports' code runs too.
    let change_after = if full { Duration::from_secs(5) } else { Duration::from_millis(50) };
    let second = Duration::from_secs(1);
    let situations = [
        Situation {
            name: "unthrottled",
            records: scale(unthrottled_records),
            faults: Faults::default(),
            sink_lines: "",
            tls: false,
            noise_floor: None,
            sink: SinkKind::Firehose,
            compression: None,
        },
        Situation {
            name: "unthrottled, TLS",
            records: scale(unthrottled_records),
            faults: Faults::default(),
            sink_lines: "",
            tls: true,
            noise_floor: None,
            sink: SinkKind::Firehose,
            compression: None,
        },
        Situation {
            name: "unthrottled, TLS, packed records",
            records: scale(unthrottled_records),
            faults: Faults::default(),
            sink_lines: "pack_records = true",
            tls: true,
            noise_floor: None,
            sink: SinkKind::Firehose,
            compression: None,
        },
        Situation { name: "at the quota (1 MiB/s, 1,000 calls/s, 100k records/s)", ..at_the_quota(scale(100_000), Duration::ZERO) },
        Situation {
            name: "at the quota, packed records",
            sink_lines: "pack_records = true",
            ..at_the_quota(scale(100_000), Duration::ZERO)
        },
        Situation {
            name: "at the quota, packed records, 30 ms per call",
            sink_lines: "pack_records = true",
            ..at_the_quota(scale(100_000), Duration::from_millis(30))
        },
        Situation {
            name: "30 ms per call",
            records: scale(100_000),
            faults: Faults { latency: Duration::from_millis(30), ..Faults::default() },
            sink_lines: "",
            tls: false,
            noise_floor: None,
            sink: SinkKind::Firehose,
            compression: None,
        },
        // The clean row first: the others are also shown against it.
        noisy(NOISE_CLEAN, noise_records, None, None),
        noisy("noise: 1 % of records", noise_records, refusing(0.01, EntryCode::ServiceUnavailable, 0.0, 0.0), Some(records_floor(0.01))),
        noisy(
            "noise: 1 % of records, InternalFailure",
            noise_records,
            refusing(0.01, EntryCode::InternalFailure, 0.0, 0.0),
            Some(records_floor(0.01)),
        ),
        noisy("noise: 5 % of records", noise_records, refusing(0.05, EntryCode::ServiceUnavailable, 0.0, 0.0), Some(records_floor(0.05))),
        noisy(
            "noise: 5 % of records + 5 % of calls throttled",
            noise_records,
            refusing(0.05, EntryCode::ServiceUnavailable, 0.05, 0.0),
            Some(0.7),
        ),
        noisy(
            "noise: 5 % of records + 5 % of calls answered 500",
            noise_records,
            refusing(0.05, EntryCode::ServiceUnavailable, 0.0, 0.05),
            Some(0.7),
        ),
        noisy("noise: 10 % of records", noise_records, refusing(0.10, EntryCode::ServiceUnavailable, 0.0, 0.0), Some(records_floor(0.10))),
        Situation {
            name: "quota 5 MiB/s, 2,000 calls/s",
            records: scale(records_lasting(&[(Duration::from_secs(14), US_EAST_1)])),
            faults: Faults { quota: Some(US_EAST_1), ..Faults::default() },
            ..at_the_quota(0, Duration::ZERO)
        },
        Situation {
            name: "quota 1 MiB/s + 2 % noise",
            faults: Faults { noise: refusing(0.02, EntryCode::ServiceUnavailable, 0.0, 0.0), ..at_the_quota(0, Duration::ZERO).faults },
            ..at_the_quota(scale(100_000), Duration::ZERO)
        },
        Situation {
            name: "quota halved at 5 s",
            records: scale(records_lasting(&[(5 * second, TWICE_AP_NORTHEAST_2), (12 * second, AP_NORTHEAST_2)])),
            faults: Faults {
                quota: Some(TWICE_AP_NORTHEAST_2),
                quota_change: Some(QuotaChange { after: change_after, quota: AP_NORTHEAST_2 }),
                ..Faults::default()
            },
            ..at_the_quota(0, Duration::ZERO)
        },
        Situation {
            name: "quota doubled at 5 s",
            records: scale(records_lasting(&[(5 * second, AP_NORTHEAST_2), (35 * second, TWICE_AP_NORTHEAST_2)])),
            faults: Faults {
                quota: Some(AP_NORTHEAST_2),
                quota_change: Some(QuotaChange { after: change_after, quota: TWICE_AP_NORTHEAST_2 }),
                ..Faults::default()
            },
            ..at_the_quota(0, Duration::ZERO)
        },
        other_sink("kinesis_streams, TLS", scale(unthrottled_records), SinkKind::KinesisStreams, "", None),
        other_sink("kinesis_streams aggregated, TLS", scale(unthrottled_records), SinkKind::KinesisAggregated, "", None),
        other_sink(
            "unthrottled, TLS, packed records, gzip",
            scale(unthrottled_records),
            SinkKind::Firehose,
            "pack_records = true\ncompression = \"gzip\"",
            Some(Compression::Gzip),
        ),
        other_sink(
            "unthrottled, TLS, packed records, zstd",
            scale(unthrottled_records),
            SinkKind::Firehose,
            "pack_records = true\ncompression = \"zstd\"",
            Some(Compression::Zstd),
        ),
        other_sink(
            "kinesis_streams aggregated, TLS, zstd",
            scale(unthrottled_records),
            SinkKind::KinesisAggregated,
            "compression = \"zstd\"",
            Some(Compression::Zstd),
        ),
    ];
    // `END_TO_END_ONLY=unthrottled` runs the situations whose name starts with that, and no
    // trickle; `|` separates several prefixes (no situation's name holds one).
    let only = std::env::var("END_TO_END_ONLY").ok();
    if only.is_none() {
        trickle(if full { 10_000 } else { 500 });
    }
    let selected = |name: &str| only.as_deref().is_none_or(|only| only.split('|').any(|prefix| name.starts_with(prefix)));
    println!(
        "| situation | records | seconds | records/s | MB/s | tailhose CPU s | fake Firehose CPU s | peak RSS MiB | calls | throttled calls | duplicates | byte quota used | vs clean (floor) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    // How many clean-then-noisy pairs measure a noise row (the median pair's ratio is shown).
    let noise_pairs = match std::env::var("END_TO_END_NOISE_PAIRS") {
        Ok(pairs) => pairs.parse().ok().filter(|&pairs: &usize| pairs > 0).expect("END_TO_END_NOISE_PAIRS: a count of 1 or more"),
        Err(_) => NOISE_PAIRS,
    };
    // The clean noise row's records/s, once it has run.
    let mut clean_rate: Option<f64> = None;
    let clean_situation = situations.iter().find(|situation| situation.name == NOISE_CLEAN).expect("the clean noise row");
    let mut notes = Vec::new();
    for situation in situations.iter().filter(|situation| selected(situation.name)) {
        let (Delivered { measured, rate }, paired) = match situation.noise_floor {
            Some(_) => {
                let paired = run_paired(situation, clean_situation, noise_pairs);
                (paired.median_run, Some(paired.summary))
            }
            None => (run_delivered(situation), None),
        };
        let quota_used =
            measured.quota_allowance.map_or("-".to_owned(), |allowance| format!("{:.0} %", 100.0 * measured.bytes as f64 / allowance));
        if situation.name == NOISE_CLEAN {
            clean_rate = Some(rate);
        }
        let vs_clean = match (situation.name == NOISE_CLEAN, situation.noise_floor, &paired) {
            (true, _, _) => "1.00 (reference)".to_owned(),
            (false, Some(floor), Some(paired)) => format!("{:.2} (≥ {floor:.2})", paired.median_ratio),
            _ => "-".to_owned(),
        };
        if let Some(paired) = paired {
            let vs_first = clean_rate.map_or(String::new(), |clean| format!("; the median run: {:.2} of the clean row's", rate / clean));
            notes.push(format!("{}: {}{vs_first}", situation.name, paired.describe()));
        }
        notes.extend(measured.notes.iter().map(|note| format!("{}: {note}", situation.name)));
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.1} | {:.2} | {:.2} | {:.1} | {} | {} ({:.1} %) | {} | {} | {} |",
            situation.name,
            situation.records,
            measured.seconds,
            rate,
            measured.bytes as f64 / measured.seconds / 1e6,
            measured.cpu_seconds,
            measured.peer_cpu_seconds,
            measured.peak_rss_mib,
            measured.calls,
            measured.throttled_calls,
            100.0 * measured.throttled_calls as f64 / measured.calls.max(1) as f64,
            measured.duplicates,
            quota_used,
            vs_clean
        );
    }
    if !notes.is_empty() {
        println!();
    }
    for note in notes {
        println!("{note}");
    }
}

/// A run that delivered every record, and its records/s.
struct Delivered {
    measured: Measured,
    rate: f64,
}

/// Runs `situation` and checks every record arrived: a row that lost one has no speed to show.
fn run_delivered(situation: &Situation) -> Delivered {
    let measured = run(situation);
    assert_eq!(measured.delivered as u64, situation.records, "{}: every record delivered", situation.name);
    let rate = situation.records as f64 / measured.seconds;
    Delivered { measured, rate }
}

/// A noise row measured as pairs, each a clean run then the noisy one: the ratio of a pair is
/// the noise's cost at that minute, and the median pair's is the row's.
struct Paired {
    median_run: Delivered,
    summary: PairedSummary,
}

struct PairedSummary {
    /// Each pair's noisy records/s over its clean run's, in the order they ran.
    ratios: Vec<f64>,
    clean_rates: Vec<f64>,
    median_ratio: f64,
    /// Records delivered twice over every noisy run (the row shows the median run's).
    duplicates: u64,
}

impl PairedSummary {
    fn describe(&self) -> String {
        let listed = |values: &[f64], digits: usize| values.iter().map(|value| format!("{value:.digits$}")).collect::<Vec<_>>().join(", ");
        format!(
            "{} pairs, clean run then noisy, ratios {} (the median shown); the clean runs: {} records/s; duplicates over the noisy runs: {}",
            self.ratios.len(),
            listed(&self.ratios, 2),
            listed(&self.clean_rates, 0),
            self.duplicates
        )
    }
}

/// Runs `pairs` pairs of `clean` then `noisy`. One pair was too few: the machine's speed
/// drifted by a third over the minute of noise rows (docs/performance.md, session 12) and by
/// ±15 % between two runs seconds apart (session 13), as much as the floors' margins; a clean row
/// run once first stood for rows run a minute later.
fn run_paired(noisy: &Situation, clean: &Situation, pairs: usize) -> Paired {
    let mut runs: Vec<(f64, Delivered)> = Vec::with_capacity(pairs);
    let mut clean_rates = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let reference = run_delivered(clean).rate;
        let run = run_delivered(noisy);
        clean_rates.push(reference);
        runs.push((run.rate / reference, run));
    }
    let ratios: Vec<f64> = runs.iter().map(|(ratio, _)| *ratio).collect();
    let duplicates = runs.iter().map(|(_, run)| run.measured.duplicates).sum();
    runs.sort_by(|(left, _), (right, _)| left.total_cmp(right));
    let (median_ratio, median_run) = runs.swap_remove(runs.len() / 2);
    Paired { median_run, summary: PairedSummary { ratios, clean_rates, median_ratio, duplicates } }
}

/// A noise row: through TLS, one record per line, `noise` on every call.
fn noisy(name: &'static str, records: u64, noise: Option<Noise>, floor: Option<f64>) -> Situation {
    Situation {
        name,
        records,
        faults: Faults { noise, ..Faults::default() },
        sink_lines: "",
        tls: true,
        noise_floor: floor,
        sink: SinkKind::Firehose,
        compression: None,
    }
}

/// Noise refusing `records` of record attempts with `code`, `throttled_calls` of calls whole and
/// `failed_calls` with a 500.
fn refusing(records: f64, code: EntryCode, throttled_calls: f64, failed_calls: f64) -> Option<Noise> {
    Some(Noise { seed: NOISE_SEED, refused_records: records, record_code: code, throttled_calls, failed_calls })
}

/// Issue 17's floor for a fraction `refused` of records refused at random: 80 % of what is left
/// to deliver at the first try, of the clean row's records/s.
fn records_floor(refused: f64) -> f64 {
    0.8 * (1.0 - refused)
}

/// How many seed records take `spans` (each a time at a quota) to send at their quotas' bytes.
fn records_lasting(spans: &[(Duration, Quota)]) -> u64 {
    // As sent: tailhose adds the newline back. A 6-digit seq is the typical one of these counts.
    let record_bytes = support::seed_record(100_000).len() as f64 + 1.0;
    let bytes: f64 = spans.iter().map(|(time, quota)| time.as_secs_f64() * quota.bytes_per_sec as f64).sum();
    (bytes / record_bytes) as u64
}

/// `records` one record per line to a stream with ap-northeast-2's default Direct PUT quota,
/// `latency` away.
fn at_the_quota(records: u64, latency: Duration) -> Situation {
    Situation {
        name: "at the quota",
        records,
        faults: Faults { quota: Some(AP_NORTHEAST_2), latency, ..Faults::default() },
        sink_lines: "",
        tls: false,
        noise_floor: None,
        sink: SinkKind::Firehose,
        compression: None,
    }
}

/// `records` unthrottled through TLS to a sink of `sink`, with `sink_lines`.
fn other_sink(name: &'static str, records: u64, sink: SinkKind, sink_lines: &'static str, compression: Option<Compression>) -> Situation {
    Situation { name, records, faults: Faults::default(), sink_lines, tls: true, noise_floor: None, sink, compression }
}

/// Writes `records` lines at 1,000 a second to a file the daemon follows and reports how long
/// each took from its write to its acceptance by the fake Firehose.
fn trickle(records: u64) {
    let fake = FakeFirehose::start(Faults::default());
    let workspace = Workspace::new();
    workspace.write_config_for_endpoint(&fake.endpoint, "", "");
    use_the_default_poll_interval(&workspace);
    let log = workspace.log_file();
    std::fs::write(&log, "").expect("log file");
    let daemon = workspace.start_daemon();
    workspace.admin_address();
    std::thread::sleep(Duration::from_millis(500));
    let mut file = std::fs::OpenOptions::new().append(true).open(&log).expect("open log");
    let mut written_at = Vec::with_capacity(records as usize);
    let started = Instant::now();
    for seq in 0..records {
        let due = started + Duration::from_millis(seq);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        std::io::Write::write_all(&mut file, format!("{}\n", support::seed_record(seq)).as_bytes()).expect("write");
        written_at.push(Instant::now());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake.seen().accepted.len() < records as usize {
        assert!(Instant::now() < deadline, "trickle: not everything arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = fake.seen();
    let mut latencies: Vec<Duration> = seen
        .accepted
        .iter()
        .zip(&seen.accepted_at)
        .map(|(record, at)| at.saturating_duration_since(written_at[support::seq_of(record) as usize]))
        .collect();
    latencies.sort_unstable();
    let at = |fraction: f64| latencies[((latencies.len() - 1) as f64 * fraction) as usize].as_millis();
    println!(
        "trickle, 1,000 records/s, {records} records, flush_interval 1 s: write → accepted p50 {} ms, p99 {} ms, max {} ms",
        at(0.5),
        at(0.99),
        at(1.0)
    );
    drop(daemon);
}

fn run(situation: &Situation) -> Measured {
    let workspace = Workspace::new();
    let log = workspace.log_file();
    // The file is written before the fake starts, so that tailhose starts within milliseconds of
    // it: the quota's windows and a quota change count from the fake's start.
    let generated = workspace.run(&[
        "generate",
        "--out",
        log.to_str().expect("utf-8 path"),
        "--count",
        &situation.records.to_string(),
        "--burst",
        "10000",
    ]);
    assert!(generated.status.success(), "{}", String::from_utf8_lossy(&generated.stderr));
    let bytes = std::fs::metadata(&log).expect("log").len();
    let (fake, tls_lines) = if situation.tls {
        let certificate = TestCertificate::new();
        std::fs::write(workspace.path().join("bench-ca.pem"), &certificate.ca_pem).expect("CA file");
        (FakeFirehose::start_tls(situation.faults, &certificate), "ca_file = \"bench-ca.pem\"")
    } else {
        (FakeFirehose::start(situation.faults), "")
    };
    let extra = std::env::var("END_TO_END_SINK_LINES").unwrap_or_default();
    workspace.write_config_for_sink(situation.sink, &fake.endpoint, "", &format!("{}\n{tls_lines}\n{extra}", situation.sink_lines));
    use_the_default_poll_interval(&workspace);
    if let Ok(top) = std::env::var("END_TO_END_TOP_LINES") {
        workspace.rewrite_config(|config| format!("{top}\n{config}"));
    }
    let started = Instant::now();
    let peer_before = ProcSample::read(std::process::id()).unwrap_or_default();
    // `END_TO_END_LOG=FOLDER` keeps each situation's log (at info: the pace's decisions) there.
    let log = std::env::var_os("END_TO_END_LOG").map(|folder| {
        let name: String = situation.name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        std::fs::File::create(std::path::Path::new(&folder).join(format!("{name}.log"))).expect("log file")
    });
    let mut child = workspace
        .tailhose(&["run", "--config", "tailhose.toml", "--once"])
        .env("TAILHOSE_LOG", if log.is_some() { "info" } else { "warn" })
        .stdout(std::process::Stdio::null())
        .stderr(log.map_or_else(std::process::Stdio::null, std::process::Stdio::from))
        .spawn()
        .expect("tailhose starts");
    let pid = child.id();
    let mut last = ProcSample::default();
    let status = loop {
        if let Some(sample) = ProcSample::read(pid) {
            last = sample;
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let seconds = started.elapsed().as_secs_f64();
    let peer_cpu_seconds = ProcSample::read(std::process::id()).unwrap_or_default().cpu_seconds - peer_before.cpu_seconds;
    assert!(status.success(), "{}: tailhose failed", situation.name);
    let seen = fake.seen();
    let decompressed: Vec<Vec<u8>> = match situation.compression {
        None => Vec::new(),
        Some(compression) => seen
            .accepted
            .iter()
            .flat_map(|record| {
                let data = compression.decompress(record).expect("a compressed record");
                match situation.sink {
                    SinkKind::KinesisAggregated => tailhose::sink::aggregation::deaggregate(&data).expect("an aggregated record").1,
                    _ => vec![data],
                }
            })
            .collect(),
    };
    let lines = if situation.compression.is_some() { &decompressed } else { &seen.accepted };
    let counts: BTreeMap<u64, u32> = count_seqs(lines.iter().map(Vec::as_slice));
    let last_accepted_after = seen.last_accepted_at.map_or(seconds, |at| at.duration_since(started).as_secs_f64());
    let fake_started = fake.started();
    let mut notes = Vec::new();
    if situation.faults.noise.is_some() {
        notes.push(noise_met(&seen));
    }
    if situation.faults.noise.is_some() && situation.faults.quota.is_some() {
        // Issue 17's target for refusals at random on top of the quota.
        notes.push("target: ≥ 85 % of the byte quota used".to_owned());
    }
    if let Some(compression) = situation.compression {
        let sent: usize = seen.accepted.iter().map(Vec::len).sum();
        let before: usize = decompressed.iter().map(Vec::len).sum();
        notes.push(format!(
            "{}: {before} bytes of records before compression, {sent} sent ({:.1}x); {} billed units",
            compression.name(),
            before as f64 / sent.max(1) as f64,
            seen.billed_units
        ));
    }
    if let Some(change) = situation.faults.quota_change {
        notes.push(quota_change_followed(situation.faults, change, &seen, fake_started, started));
    } else if situation.faults.quota.is_some() {
        notes.push(quota_throttled_when(&seen, started));
    }
    Measured {
        seconds,
        cpu_seconds: last.cpu_seconds,
        peer_cpu_seconds,
        peak_rss_mib: last.peak_rss_kib as f64 / 1024.0,
        calls: seen.calls,
        throttled_calls: seen.quota_throttled_calls,
        delivered: counts.len(),
        duplicates: counts.values().map(|&count| u64::from(count) - 1).sum(),
        bytes,
        quota_allowance: quota_allowance(
            situation.faults,
            started.saturating_duration_since(fake_started),
            started.saturating_duration_since(fake_started) + Duration::from_secs_f64(last_accepted_after),
        ),
        notes,
    }
}

/// Bytes the stream's quota allowed from `from` to `to` (both from the fake's start), following
/// a quota change.
fn quota_allowance(faults: Faults, from: Duration, to: Duration) -> Option<f64> {
    let before = faults.quota?.bytes_per_sec as f64;
    let Some(change) = faults.quota_change else { return Some(before * (to - from).as_secs_f64()) };
    let split = change.after.clamp(from, to);
    Some(before * (split - from).as_secs_f64() + change.quota.bytes_per_sec as f64 * (to - split).as_secs_f64())
}

/// When the calls the quota throttled were answered, in seconds after tailhose started: a
/// start-up burst shows as a cluster near 0, a probe overshooting as one every few seconds.
fn quota_throttled_when(seen: &Seen, tailhose_started: Instant) -> String {
    let at: Vec<String> =
        seen.quota_throttled_at.iter().map(|&at| format!("{:.2}", at.saturating_duration_since(tailhose_started).as_secs_f64())).collect();
    format!("quota-throttled calls answered at (s after tailhose started): [{}]", at.join(", "))
}

/// How many refusals at random the run met.
fn noise_met(seen: &Seen) -> String {
    format!(
        "{} of {} record attempts refused at random ({:.2} %); of {} calls, {} throttled and {} answered 500 at random",
        seen.noise_refused_records,
        seen.record_attempts,
        100.0 * seen.noise_refused_records as f64 / seen.record_attempts.max(1) as f64,
        seen.calls,
        seen.noise_throttled_calls,
        seen.noise_failed_calls
    )
}

/// How tailhose followed a quota that changed during the run. A lower quota: when quota
/// throttling stopped, i.e. the start of the first 3 s after the change without a quota-throttled
/// call (issue 17's target: ≤ 3 s). A higher one: the first whole second after the change from
/// which 5 s carry ≥ 90 % of the new quota (target: ≤ 30 s), and the share of the new quota used
/// over the run's last 10 s.
fn quota_change_followed(faults: Faults, change: QuotaChange, seen: &Seen, fake_started: Instant, tailhose_started: Instant) -> String {
    const QUIET: Duration = Duration::from_secs(3);
    const FILLED: Duration = Duration::from_secs(5);
    const LAST: Duration = Duration::from_secs(10);
    let change_at = fake_started + change.after;
    let head = format!(
        "quota changed {:.2} s after the fake Firehose started (tailhose started {} ms after it)",
        change.after.as_secs_f64(),
        tailhose_started.saturating_duration_since(fake_started).as_millis()
    );
    let Some(last) = seen.last_accepted_at.filter(|&last| last > change_at) else {
        return format!("{head}: run ended before the change");
    };
    let after_change = last - change_at;
    let new_rate = change.quota.bytes_per_sec as f64;
    // Just past the last acceptance, so that it counts in `[from, to)`.
    let end = last + Duration::from_micros(1);
    let used = seen.accepted_bytes_between(change_at, end) as f64 / (new_rate * after_change.as_secs_f64());
    let throttled = seen.quota_throttled_between(change_at, end);
    let common = format!(
        "{head}; the run went on {:.1} s after it: {throttled} quota-throttled calls, {:.0} % of the new quota used",
        after_change.as_secs_f64(),
        100.0 * used
    );
    if faults.quota.is_some_and(|quota| change.quota.bytes_per_sec < quota.bytes_per_sec) {
        // The quiet span starts at the change or just after a throttled call.
        let mut quiet_from = change_at;
        let mut last_throttled = None;
        for &at in seen.quota_throttled_at.iter().filter(|&&at| at >= change_at) {
            last_throttled = Some(at - change_at);
            if at >= quiet_from + QUIET {
                break;
            }
            quiet_from = at;
        }
        let stopped = (quiet_from - change_at).as_secs_f64();
        match last_throttled {
            _ if quiet_from + QUIET <= last => {
                format!("{common}; quota throttling stops within {stopped:.1} s of the change (target ≤ 3 s)")
            }
            Some(at) => format!(
                "{common}; the run ended before 3 s without quota throttling (last throttled call {:.1} s after the change)",
                at.as_secs_f64()
            ),
            None => format!("{common}; the run ended less than 3 s after the change, with no quota-throttled call after it"),
        }
    } else {
        let wanted = 0.9 * new_rate * FILLED.as_secs_f64();
        let mut offset = Duration::ZERO;
        let mut reached = None;
        while change_at + offset + FILLED <= last {
            if seen.accepted_bytes_between(change_at + offset, change_at + offset + FILLED) as f64 >= wanted {
                reached = Some(offset);
                break;
            }
            offset += Duration::from_secs(1);
        }
        let reached = match reached {
            Some(offset) => format!("reaches 90 % of the new quota {} s after the change (target ≤ 30 s)", offset.as_secs()),
            None => format!("never had 5 s at 90 % of the new quota in the {:.1} s after the change", after_change.as_secs_f64()),
        };
        let from = change_at.max(last.checked_sub(LAST).unwrap_or(change_at));
        let last_share = seen.accepted_bytes_between(from, end) as f64 / (new_rate * (last - from).as_secs_f64()).max(1.0);
        format!(
            "{common}; {reached}; {:.0} % of the new quota used over the last {:.1} s before the last acceptance",
            100.0 * last_share,
            (last - from).as_secs_f64()
        )
    }
}

/// The poll a user runs with (1 s; the tests poll every 50 ms to be quick): inotify and
/// acknowledgements wake the reader, the poll is only a safety net, and a benchmark must not
/// hide a reader that waits for it.
fn use_the_default_poll_interval(workspace: &Workspace) {
    workspace.rewrite_config(|config| config.replace("poll_interval = \"50ms\"", "poll_interval = \"1s\""));
}

#[derive(Default, Clone, Copy)]
struct ProcSample {
    cpu_seconds: f64,
    peak_rss_kib: u64,
}

impl ProcSample {
    fn read(pid: u32) -> Option<ProcSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces) start after its closing ')'.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let peak_rss_kib = status.lines().find_map(|line| line.strip_prefix("VmHWM:"))?.split_whitespace().next()?.parse().ok()?;
        // Linux reports CPU time in USER_HZ, 100 per second on every mainstream architecture.
        Some(ProcSample { cpu_seconds: ticks as f64 / 100.0, peak_rss_kib })
    }
}
