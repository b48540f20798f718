//! End to end: the release `tailhose` binary reads a file of seed records and delivers it to the
//! project's fake Firehose on loopback, in three situations:
//!
//! 1. unthrottled: records/s, MB/s, tailhose's CPU seconds and peak RSS; on plain HTTP, through
//!    TLS (the fake behind rustls, trusted through `ca_file`, as Firehose is reached), and through
//!    TLS with packed records (`pack_records`, for destinations that store bytes: S3);
//! 2. at the quota of an ap-northeast-2 Direct PUT stream (1 MiB/s, 1,000 calls/s, 100,000
//!    records/s): time to the last accepted record, share of the byte quota used, throttled calls,
//!    duplicates; one record per line, packed records, and packed records 30 ms away;
//! 3. far from the region (30 ms added to every call): records/s;
//! 4. a trickle: 1,000 records/s written line by line to a followed file (default poll and
//!    flush interval, 1 s): the time from each line's write to its acceptance, p50/p99/max.
//!
//! `cargo bench --bench end_to_end` prints one table row per situation. Under `cargo test
//! --bench end_to_end` (CI), each situation runs with a few thousand records, as a smoke test.
//!
//! `END_TO_END_ONLY=unthrottled` runs only the situations whose name starts with that (no trickle);
//! `END_TO_END_RECORDS` changes the unthrottled situation's record count (default 1,000,000).
//! `TAILHOSE_BIN=path/to/tailhose` runs another build: to compare two builds, alternate them in one
//! sitting (this machine's speed drifts by tens of percent over an hour).
//! `END_TO_END_TOP_LINES` adds top-level settings (`queue_cache_bytes = "8MiB"`).
//! `END_TO_END_SINK_LINES` adds lines to the sink's configuration, e.g.
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

use support::fake_firehose::{FakeFirehose, Faults, Quota, TestCertificate};
use support::{count_seqs, Workspace};

struct Situation {
    name: &'static str,
    records: u64,
    faults: Faults,
    sink_lines: &'static str,
    /// The fake Firehose behind TLS with a certificate authority made for the run (`ca_file`).
    tls: bool,
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
    last_accepted_after: f64,
    bytes: u64,
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let scale = |records: u64| if full { records } else { 3_000 };
    let unthrottled_records = std::env::var("END_TO_END_RECORDS").ok().and_then(|count| count.parse().ok()).unwrap_or(1_000_000);
    let situations = [
        Situation { name: "unthrottled", records: scale(unthrottled_records), faults: Faults::default(), sink_lines: "", tls: false },
        Situation { name: "unthrottled, TLS", records: scale(unthrottled_records), faults: Faults::default(), sink_lines: "", tls: true },
        Situation {
            name: "unthrottled, TLS, packed records",
            records: scale(unthrottled_records),
            faults: Faults::default(),
            sink_lines: "pack_records = true",
            tls: true,
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
        },
    ];
    // `END_TO_END_ONLY=unthrottled` runs the situations whose name starts with that, and no trickle.
    let only = std::env::var("END_TO_END_ONLY").ok();
    if only.is_none() {
        trickle(if full { 10_000 } else { 500 });
    }
    println!(
        "| situation | records | seconds | records/s | MB/s | tailhose CPU s | fake Firehose CPU s | peak RSS MiB | calls | throttled calls | duplicates | byte quota used |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for situation in situations.iter().filter(|situation| only.as_deref().is_none_or(|only| situation.name.starts_with(only))) {
        let measured = run(situation);
        assert_eq!(measured.delivered as u64, situation.records, "{}: every record delivered", situation.name);
        let quota_used = situation.faults.quota.map_or("-".to_owned(), |quota| {
            format!("{:.0} %", 100.0 * measured.bytes as f64 / (measured.last_accepted_after * quota.bytes_per_sec as f64))
        });
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.1} | {:.2} | {:.2} | {:.1} | {} | {} ({:.1} %) | {} | {} |",
            situation.name,
            situation.records,
            measured.seconds,
            situation.records as f64 / measured.seconds,
            measured.bytes as f64 / measured.seconds / 1e6,
            measured.cpu_seconds,
            measured.peer_cpu_seconds,
            measured.peak_rss_mib,
            measured.calls,
            measured.throttled_calls,
            100.0 * measured.throttled_calls as f64 / measured.calls.max(1) as f64,
            measured.duplicates,
            quota_used
        );
    }
}

/// `records` one record per line to a stream with ap-northeast-2's default Direct PUT quota,
/// `latency` away.
fn at_the_quota(records: u64, latency: Duration) -> Situation {
    Situation {
        name: "at the quota",
        records,
        faults: Faults {
            quota: Some(Quota { bytes_per_sec: 1 << 20, records_per_sec: 100_000, calls_per_sec: 1_000 }),
            latency,
            ..Faults::default()
        },
        sink_lines: "",
        tls: false,
    }
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
    let (fake, tls_lines) = if situation.tls {
        let certificate = TestCertificate::new();
        std::fs::write(workspace.path().join("bench-ca.pem"), &certificate.ca_pem).expect("CA file");
        (FakeFirehose::start_tls(situation.faults, &certificate), "ca_file = \"bench-ca.pem\"")
    } else {
        (FakeFirehose::start(situation.faults), "")
    };
    let extra = std::env::var("END_TO_END_SINK_LINES").unwrap_or_default();
    workspace.write_config_for_endpoint(&fake.endpoint, "", &format!("{}\n{tls_lines}\n{extra}", situation.sink_lines));
    use_the_default_poll_interval(&workspace);
    if let Ok(top) = std::env::var("END_TO_END_TOP_LINES") {
        workspace.rewrite_config(|config| format!("{top}\n{config}"));
    }
    let log = workspace.log_file();
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
    let started = Instant::now();
    let peer_before = ProcSample::read(std::process::id()).unwrap_or_default();
    let mut child = workspace
        .tailhose(&["run", "--config", "tailhose.toml", "--once"])
        .env("TAILHOSE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
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
    let counts: BTreeMap<u64, u32> = count_seqs(seen.accepted.iter().map(Vec::as_slice));
    Measured {
        seconds,
        cpu_seconds: last.cpu_seconds,
        peer_cpu_seconds,
        peak_rss_mib: last.peak_rss_kib as f64 / 1024.0,
        calls: seen.calls,
        throttled_calls: seen.quota_throttled_calls,
        delivered: counts.len(),
        duplicates: counts.values().map(|&count| u64::from(count) - 1).sum(),
        last_accepted_after: seen.last_accepted_at.map_or(seconds, |at| at.duration_since(started).as_secs_f64()),
        bytes,
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
