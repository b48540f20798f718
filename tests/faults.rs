//! At-least-once on bad days: the daemon against the project's fake Firehose injecting every
//! fault of a real edge host's life, alone and mixed (seeded, reproducible), outages, refusals
//! that need an operator, crash loops, and shutdown under load.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::fake_firehose::{EntryCode, FakeFirehose, Faults, Noise, Refusal, Seen};
use support::{wait_until, SinkKind, Workspace};

const FAST_RETRIES: &str = "retry_initial_backoff = \"20ms\"\nretry_max_backoff = \"300ms\"\nrequest_timeout = \"2s\"";

fn seq_counts(seen: &Seen) -> BTreeMap<u64, u32> {
    support::count_seqs(seen.accepted.iter().map(Vec::as_slice))
}

/// Writes `records` seed records, runs `tailhose run --once` against a fake with `faults`, and
/// checks that every record was accepted, none twice, and no call broke a Firehose limit.
fn delivers_everything_exactly_once_despite(sink: SinkKind, faults: Faults, records: u64) -> Seen {
    let records = sink.lines_for_calls_of(records);
    let fake = FakeFirehose::start(faults);
    let workspace = Workspace::new();
    workspace.write_config_for_sink(sink, &fake.endpoint, "", FAST_RETRIES);
    support::write_seed_records(&workspace.log_file(), 0..records, records, Duration::ZERO);
    workspace.run_once();
    let seen = fake.seen();
    let counts = seq_counts(&seen);
    assert_eq!(counts.len() as u64, records, "every record delivered ({faults:?})");
    assert!(counts.values().all(|&count| count == 1), "no accepted record was sent again ({faults:?})");
    assert_eq!(seen.limit_violations, 0);
    assert!(seen.refused_calls > 0 || seen.failed_entries > 0, "the faults happened: {faults:?}");
    seen
}

for_every_sink! {
    fn throttled_calls_are_retried_until_accepted(sink) {
        delivers_everything_exactly_once_despite(sink, Faults { throttle_every_nth_call: Some(2), ..Faults::default() }, 3_000);
    }
}

for_every_sink! {
    fn limit_exceeded_calls_are_retried_until_accepted(sink) {
        delivers_everything_exactly_once_despite(sink, Faults { limit_exceeded_every_nth_call: Some(2), ..Faults::default() }, 3_000);
    }
}

for_every_sink! {
    fn http_500_answers_are_retried_until_accepted(sink) {
        delivers_everything_exactly_once_despite(sink, Faults { http_error_every_nth_call: Some((2, 500)), ..Faults::default() }, 3_000);
    }
}

for_every_sink! {
    fn http_503_answers_are_retried_until_accepted(sink) {
        delivers_everything_exactly_once_despite(sink, Faults { http_error_every_nth_call: Some((3, 503)), ..Faults::default() }, 3_000);
    }
}

for_every_sink! {
    fn connections_reset_before_the_answer_are_retried_until_accepted(sink) {
        delivers_everything_exactly_once_despite(sink, Faults { reset_every_nth_call: Some(2), ..Faults::default() }, 3_000);
    }
}

for_every_sink! {
    fn answers_cut_off_mid_response_lead_to_resends_and_at_most_those_duplicates(sink) {
        let fake = FakeFirehose::start(Faults { tear_every_nth_call: Some(3), ..Faults::default() });
        let workspace = Workspace::new();
        workspace.write_config_for_sink(sink, &fake.endpoint, "", FAST_RETRIES);
        let records = sink.lines_for_calls_of(3_000);
        support::write_seed_records(&workspace.log_file(), 0..records, records, Duration::ZERO);
        workspace.run_once();
        let seen = fake.seen();
        let counts = seq_counts(&seen);
        assert_eq!(counts.len() as u64, records, "every record delivered at least once");
        let duplicates: u64 = counts.values().map(|&count| u64::from(count) - 1).sum();
        assert!(seen.accepted_in_torn_calls > 0, "answers were cut off");
        assert!(
            duplicates <= seen.accepted_in_torn_calls,
            "only records of cut-off calls are sent twice ({duplicates} > {})",
            seen.accepted_in_torn_calls
        );
    }
}

for_every_sink! {
    fn slow_answers_are_waited_for(sink) {
        let seen = delivers_everything_exactly_once_despite(
            sink,
            Faults { latency: Duration::from_millis(300), fail_every_nth_record: Some(50), ..Faults::default() },
            1_500,
        );
        assert!(seen.calls >= 3);
    }
}

for_every_sink! {
    fn random_mixes_of_faults_lose_nothing(sink) {
        for seed in [7, 1_234, 99_991] {
            delivers_everything_exactly_once_despite(sink, Faults { random_seed: Some(seed), ..Faults::default() }, 2_000);
        }
    }
}

for_every_sink! {
    fn a_dead_port_delays_delivery_and_loses_nothing(sink) {
        let fake = FakeFirehose::start(Faults::default());
        let workspace = Workspace::new();
        workspace.write_config_for_sink(sink, &fake.endpoint, "", FAST_RETRIES);
        let daemon = workspace.start_daemon();
        support::write_seed_records(&workspace.log_file(), 0..1_000, 100, Duration::from_millis(10));
        wait_until(Duration::from_secs(30), "the first records arrive", || (seq_counts(&fake.seen()).len() == 1_000).then_some(()));
        let log_file = workspace.log_file();
        let writer = std::thread::spawn(move || support::write_seed_records(&log_file, 1_000..2_000, 100, Duration::from_millis(200)));
        fake.go_down_for(Duration::from_secs(3));
        writer.join().expect("writer");
        wait_until(Duration::from_secs(60), "every record arrives after the outage", || {
            (seq_counts(&fake.seen()).len() == 2_000).then_some(())
        });
        assert!(daemon.terminate(Duration::from_secs(15)).success());
        assert!(seq_counts(&fake.seen()).values().all(|&count| count == 1));
    }
}

for_every_sink! {
    fn a_missing_stream_is_reported_with_its_fix_retried_slowly_and_nothing_is_dropped(sink) {
        refusal_keeps_the_data_until_fixed(sink, Refusal::StreamNotFound, sink.missing_stream_fix());
    }
}

for_every_sink! {
    fn refused_credentials_are_reported_with_their_fix_retried_slowly_and_nothing_is_dropped(sink) {
        refusal_keeps_the_data_until_fixed(sink, Refusal::BadCredentials, "check the AWS credentials");
    }
}

fn refusal_keeps_the_data_until_fixed(sink: SinkKind, refusal: Refusal, fix: &str) {
    let outage = Faults { refuse_all: Some(refusal), ..Faults::default() };
    let (calls, log) =
        calls_during_an_outage(sink, outage, "retry_initial_backoff = \"20ms\"\nretry_max_backoff = \"1s\"", 500, Duration::from_secs(4));
    assert!(calls <= 6, "{calls} calls in 4 s: a refusing destination is retried at the slowest pace");
    assert!(log.contains(fix), "the log says what to do: {log}");
}

for_every_sink! {
    fn a_throttling_outage_is_retried_with_growing_delays(sink) {
        let outage = Faults { throttle_every_nth_call: Some(1), ..Faults::default() };
        let (calls, _) =
            calls_during_an_outage(sink, outage, "retry_initial_backoff = \"100ms\"\nretry_max_backoff = \"30s\"", 100, Duration::from_secs(5));
        assert!(calls <= 10, "{calls} calls in 5 s of throttling: back-off is exponential");
    }
}

/// Runs the daemon with `records` to send while the fake answers with `outage`; counts the calls
/// made during `window` once the first has arrived; then ends the outage and checks that every
/// record arrives and that tailhose kept running throughout. Returns the count and the log.
fn calls_during_an_outage(sink: SinkKind, outage: Faults, sink_lines: &str, records: u64, window: Duration) -> (usize, String) {
    let fake = FakeFirehose::start(outage);
    let workspace = Workspace::new();
    workspace.write_config_for_sink(sink, &fake.endpoint, "", sink_lines);
    let daemon = workspace.start_daemon();
    support::write_seed_records(&workspace.log_file(), 0..records, records, Duration::ZERO);
    wait_until(Duration::from_secs(30), "the first call of the outage", || (fake.seen().calls > 0).then_some(()));
    let window_start = Instant::now();
    std::thread::sleep(window);
    let calls = fake.seen().calls_between(window_start, Instant::now());
    let log = daemon.log();
    fake.set_faults(Faults::default());
    wait_until(Duration::from_secs(60), "every record arrives after the outage", || {
        (seq_counts(&fake.seen()).len() as u64 == records).then_some(())
    });
    assert!(daemon.terminate(Duration::from_secs(15)).success(), "tailhose kept running through the outage");
    (calls, log)
}

/// How long after Firehose's answer a record's acknowledgement may still be missing from the
/// queue. Issue 17 requires the first acknowledgements recorded within a second of the answer
/// (a batch waits for those before it in queue order, so a batch stuck in retries holds back
/// the acknowledgement of every batch after it); the other half second is the acknowledgement's
/// write and fsync on a loaded machine. A record first accepted longer than this before a kill was
/// durably acknowledged and must never be sent again.
const ACK_WITHIN: Duration = Duration::from_millis(1_500);
/// Batches of a route sent and not yet durably acknowledged at once (four times
/// `max_in_flight`'s default of 8): what a kill may send again, at most.
const MAX_UNACKNOWLEDGED: usize = 32;
/// Every record has arrived this long after the last start of the crash loop.
const DRAIN_WITHIN: Duration = Duration::from_secs(30);
/// After a kill, the fake may still answer a call whose request it had read before the daemon
/// died: the kill's count of accepted records is taken once the fake has answered nothing for
/// this long (it adds no latency here, so a call read is a call answered within moments).
const QUIET_AFTER_KILL: Duration = Duration::from_millis(100);

/// One `kill -9` of the crash loop.
struct Kill {
    /// Just before the signal.
    at: Instant,
    /// Records the fake had accepted once the killed daemon's last calls were answered: those
    /// at lower indexes of `Seen::accepted` came before the kill, the others after it.
    accepted: usize,
}

/// The fake's count of accepted records once it has answered no call for `QUIET_AFTER_KILL`
/// (a dead daemon sends nothing new), or after a second at most.
fn accepted_once_quiet(fake: &FakeFirehose) -> usize {
    let give_up = Instant::now() + Duration::from_secs(1);
    let mut last = fake.seen();
    let mut quiet_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = fake.seen();
        if (now.arrived, now.calls) != (last.arrived, last.calls) {
            quiet_since = Instant::now();
        }
        last = now;
        if quiet_since.elapsed() >= QUIET_AFTER_KILL || Instant::now() >= give_up {
            return last.accepted.len();
        }
    }
}

for_every_sink! {
    /// Issue 17's reproduction: `kill -9` every 0.3–1.5 s while 30,000 records are written and 5 % of
    /// records and 5 % of calls are refused at random. Nothing may be lost; only what could really
    /// be unacknowledged at a kill may be sent again; and the backlog drains soon after the last
    /// restart (a governor that took the refusals for a quota crawled).
    ///
    /// Noise instead of `random_seed`'s mix: the mix (10 % of calls throttled, 5 % answered 500, 5 %
    /// reset, 10 % of records failed) is twice as heavy as what the issue measured, which the bounds
    /// here are set by, and is covered without kills by `random_mixes_of_faults_lose_nothing`; noise
    /// has no resets or torn answers either, so every duplicate here comes from a kill.
    fn a_crash_loop_under_random_faults_loses_nothing(sink) {
        let noise =
            Noise { seed: 2_026, refused_records: 0.05, record_code: EntryCode::ServiceUnavailable, throttled_calls: 0.05, failed_calls: 0.0 };
        // An aggregated call carries some 14,000 records: the crash loop makes a few dozen calls,
        // which 5 % of calls refused at random may all miss. Every fifth is throttled as well.
        let throttled = (sink == SinkKind::KinesisAggregated).then_some(5);
        let fake = FakeFirehose::start(Faults { noise: Some(noise), throttle_every_nth_call: throttled, ..Faults::default() });
        let workspace = Workspace::new();
        workspace.write_config_for_sink(sink, &fake.endpoint, "", FAST_RETRIES);
        let log_file = workspace.log_file();
        let written = 30_000u64;
        // 100 records every 40 ms, 2,500 a second: written during the first 12 s of the crash loop.
        let writer = std::thread::spawn(move || support::write_seed_records(&log_file, 0..written, 100, Duration::from_millis(40)));
        let test_started = Instant::now();
        let mut kills: Vec<Kill> = Vec::new();
        let mut random = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..14 {
            let daemon = workspace.start_daemon();
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            std::thread::sleep(Duration::from_millis(300 + random % 1_201));
            let at = Instant::now();
            daemon.kill();
            kills.push(Kill { at, accepted: accepted_once_quiet(&fake) });
        }
        writer.join().expect("writer");
        let last_start = Instant::now();
        let daemon = workspace.start_daemon();
        loop {
            let seen = fake.seen();
            let delivered = if seen.accepted.len() as u64 >= written { seq_counts(&seen).len() as u64 } else { 0 };
            if delivered == written {
                break;
            }
            let waited = last_start.elapsed();
            assert!(
                waited < DRAIN_WITHIN,
                "{} of {written} records delivered {:.1} s after the last of {} restarts (all are due within {DRAIN_WITHIN:?}); \
                 {} record attempts, {} refused at random, {} calls, {} throttled at random",
                seq_counts(&seen).len(),
                waited.as_secs_f64(),
                kills.len(),
                seen.record_attempts,
                seen.noise_refused_records,
                seen.calls,
                seen.noise_throttled_calls
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(daemon.terminate(Duration::from_secs(15)).success());
        let seen = fake.seen();
        let calls_refused = if throttled.is_some() { seen.refused_calls } else { seen.noise_throttled_calls };
        assert!(seen.noise_refused_records > 0 && calls_refused > 0, "the noise happened: {noise:?}");
        assert_eq!(seen.limit_violations, 0);

        // Every acceptance of a record that is accepted again later was not durably acknowledged at
        // the first kill after it (the kill whose count of accepted records is past its index): that
        // kill came at most ACK_WITHIN after it, and each kill sends again at most the batches that
        // may be unacknowledged at once.
        let per_kill_bound = MAX_UNACKNOWLEDGED * seen.max_lines_in_call;
        let mut per_kill = vec![0usize; kills.len()];
        let mut unexplained = Vec::new();
        let mut latest: BTreeMap<u64, usize> = BTreeMap::new();
        let mut last_new_record = last_start;
        for (index, record) in seen.accepted.iter().enumerate() {
            let seq = support::seq_of(record);
            let Some(previous) = latest.insert(seq, index) else {
                last_new_record = last_new_record.max(seen.accepted_at[index]);
                continue;
            };
            let previous_at = seen.accepted_at[previous];
            match kills.iter().position(|kill| previous < kill.accepted) {
                Some(kill) if kills[kill].at <= previous_at + ACK_WITHIN => per_kill[kill] += 1,
                Some(kill) => unexplained.push(format!(
                    "seq {seq}: accepted {:.2} s into the test, {:.2} s before the next kill, and again {:.2} s into it",
                    previous_at.saturating_duration_since(test_started).as_secs_f64(),
                    kills[kill].at.saturating_duration_since(previous_at).as_secs_f64(),
                    seen.accepted_at[index].saturating_duration_since(test_started).as_secs_f64()
                )),
                None => unexplained.push(format!(
                    "seq {seq}: accepted {:.2} s into the test, after the last kill, and again {:.2} s into it",
                    previous_at.saturating_duration_since(test_started).as_secs_f64(),
                    seen.accepted_at[index].saturating_duration_since(test_started).as_secs_f64()
                )),
            }
        }
        let duplicates = seen.accepted.len() - latest.len();
        eprintln!(
            "crash loop: {} kills, {written} written, {} distinct delivered, {duplicates} duplicates ({per_kill:?} sent again per kill, \
             at most {per_kill_bound} each), drained {:.1} s after the last restart; {} of {} record attempts and {} of {} calls refused at random",
            kills.len(),
            latest.len(),
            last_new_record.duration_since(last_start).as_secs_f64(),
            seen.noise_refused_records,
            seen.record_attempts,
            seen.noise_throttled_calls,
            seen.calls
        );
        assert!(
            unexplained.is_empty(),
            "{} records were sent again though accepted more than {ACK_WITHIN:?} before the next kill (or after the last), e.g. {:?}",
            unexplained.len(),
            &unexplained[..unexplained.len().min(5)]
        );
        for (index, &again) in per_kill.iter().enumerate() {
            assert!(
                again <= per_kill_bound,
                "kill {index} sent {again} accepted records again: more than {MAX_UNACKNOWLEDGED} batches of {} ({per_kill:?})",
                seen.max_lines_in_call
            );
        }
        // Every acceptance made at most ACK_WITHIN before the next kill: all that could have been
        // unacknowledged at the kills, summed.
        let exposed: usize = kills
            .iter()
            .enumerate()
            .map(|(index, kill)| {
                let from = if index == 0 { 0 } else { kills[index - 1].accepted };
                (from..kill.accepted).filter(|&at| seen.accepted_at[at] + ACK_WITHIN >= kill.at).count()
            })
            .sum();
        assert!(duplicates <= exposed, "{duplicates} duplicates, more than the {exposed} acceptances shortly before a kill");
    }
}

for_every_sink! {
    fn a_graceful_stop_under_load_ends_within_the_shutdown_timeout_and_loses_nothing(sink) {
        let fake = FakeFirehose::start(Faults { latency: Duration::from_secs(30), ..Faults::default() });
        let workspace = Workspace::new();
        workspace.write_config_for_sink(sink, &fake.endpoint, "", "request_timeout = \"60s\"");
        let daemon = workspace.start_daemon();
        support::write_seed_records(&workspace.log_file(), 0..2_000, 2_000, Duration::ZERO);
        wait_until(Duration::from_secs(30), "a call is in flight", || (fake.seen().arrived > 0).then_some(()));
        let stopping = Instant::now();
        let status = daemon.terminate(Duration::from_secs(20));
        let took = stopping.elapsed();
        assert!(status.success(), "exit 0 after abandoning the batch in flight");
        assert!(took < Duration::from_secs(9), "stopped in {took:?}; shutdown_timeout is 5 s");
        fake.set_faults(Faults::default());
        let daemon = workspace.start_daemon();
        wait_until(Duration::from_secs(60), "every record arrives after the restart", || {
            (seq_counts(&fake.seen()).len() == 2_000).then_some(())
        });
        assert!(daemon.terminate(Duration::from_secs(15)).success());
    }
}

#[test]
fn a_long_outage_with_rotations_is_absorbed_by_the_queue_and_drained_in_order_afterwards() {
    let fake = FakeFirehose::start(Faults { refuse_all: Some(Refusal::StreamNotFound), ..Faults::default() });
    let workspace = Workspace::new();
    // One batch in flight keeps each file's records in the order they were written at the
    // destination (with several, calls overlap and may land in any order).
    workspace.write_config_for_endpoint(
        &fake.endpoint,
        "",
        "retry_initial_backoff = \"20ms\"\nretry_max_backoff = \"500ms\"\nmax_in_flight = 1",
    );
    workspace.rewrite_config(|config| format!("max_queue_bytes = \"1MiB\"\nmax_read_ahead_bytes = \"256KiB\"\n{config}"));
    let daemon = workspace.start_daemon();
    // Three hourly files, each rotated away (renamed out of the glob) while Firehose refuses everything.
    let per_file = 4_000u64;
    for hour in 0..3u64 {
        support::write_seed_records(&workspace.log_file(), hour * per_file..(hour + 1) * per_file, 500, Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(1_500));
        std::fs::rename(workspace.log_file(), workspace.path().join(format!("source/test_fluentd_firehose.log.{hour}"))).expect("rotate");
    }
    support::write_seed_records(&workspace.log_file(), 3 * per_file..4 * per_file, 500, Duration::from_millis(50));
    std::thread::sleep(Duration::from_secs(2));
    assert!(daemon.log().contains("queue is full"), "back-pressure engaged: {}", daemon.log());
    assert!(seq_counts(&fake.seen()).is_empty());
    fake.set_faults(Faults::default());
    let drained = Instant::now() + Duration::from_secs(90);
    while seq_counts(&fake.seen()).len() as u64 != 4 * per_file {
        assert!(
            Instant::now() < drained,
            "not drained: {} of {} arrived; log: {}",
            seq_counts(&fake.seen()).len(),
            4 * per_file,
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(daemon.terminate(Duration::from_secs(15)).success());
    let arrival: Vec<u64> = fake.seen().accepted.iter().map(|record| support::seq_of(record)).collect();
    for hour in 0..4u64 {
        let of_file: Vec<u64> = arrival.iter().copied().filter(|seq| seq / per_file == hour).collect();
        assert!(of_file.windows(2).all(|pair| pair[0] < pair[1]), "file {hour} delivered in the order it was written");
    }
    assert!(seq_counts(&fake.seen()).values().all(|&count| count == 1));
}

/// A tmpfs mounted for one test, unmounted when dropped. Needs root (CI runs as root).
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(path).expect("mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount runs");
        assert!(status.success(), "mounting a tmpfs failed: this test needs root to make a small disk");
        SmallDisk { path: path.to_path_buf() }
    }

    fn grow(&self, size: &str) {
        let status =
            std::process::Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.path).status().expect("mount runs");
        assert!(status.success(), "remount failed");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[test]
fn a_full_disk_stops_tailhose_with_status_74_and_a_restart_once_space_returns_delivers_everything() {
    let fake = FakeFirehose::start(Faults { refuse_all: Some(Refusal::StreamNotFound), ..Faults::default() });
    let workspace = Workspace::new();
    let disk = SmallDisk::mount(&workspace.path().join("state"), "6m");
    workspace.write_config_for_endpoint(&fake.endpoint, "", "retry_initial_backoff = \"20ms\"\nretry_max_backoff = \"300ms\"");
    workspace.rewrite_config(|config| format!("max_read_ahead_bytes = \"64MiB\"\nstorage_stall_timeout = \"5s\"\n{config}"));
    let written = 60_000u64;
    support::write_seed_records(&workspace.log_file(), 0..written, written, Duration::ZERO);
    let mut daemon = workspace.start_daemon();
    let status = daemon.wait_for_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(74), "a full data_dir stops tailhose with EX_IOERR: {}", daemon.log());
    let log = daemon.log();
    assert!(log.contains("No space left on device") || log.contains("did not answer within"), "the log says why: {log}");
    disk.grow("256m");
    fake.set_faults(Faults::default());
    let daemon = workspace.start_daemon();
    wait_until(Duration::from_secs(120), "every record arrives after the restart", || {
        (seq_counts(&fake.seen()).len() as u64 == written).then_some(())
    });
    assert!(daemon.terminate(Duration::from_secs(15)).success());
}

/// Offsets of every chunk header (`THCK` magic) in the files under `dir`.
fn chunk_magic_offsets(dir: &std::path::Path) -> Vec<(std::path::PathBuf, usize)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).expect("read");
            found.extend(bytes.windows(4).enumerate().filter(|(_, window)| *window == b"THCK").map(|(at, _)| (path.clone(), at)));
        }
    }
    found
}

/// Fills the queue while Firehose refuses everything, stops cleanly, damages the queue's files
/// with `damage` (given the workspace and the queue's folder), and starts again with Firehose
/// accepting: returns the fake and the daemon log.
fn restart_after_damaging_the_queue(damage: impl FnOnce(&Workspace, &std::path::Path)) -> (FakeFirehose, String, u64) {
    let fake = FakeFirehose::start(Faults { refuse_all: Some(Refusal::StreamNotFound), ..Faults::default() });
    let workspace = Workspace::new();
    workspace.write_config_for_endpoint(&fake.endpoint, "", FAST_RETRIES);
    let written = 20_000u64;
    support::write_seed_records(&workspace.log_file(), 0..written, written, Duration::ZERO);
    let daemon = workspace.start_daemon();
    wait_until(Duration::from_secs(30), "Firehose refuses the first batch", || (fake.seen().refused_calls > 0).then_some(()));
    std::thread::sleep(Duration::from_secs(1));
    assert!(daemon.terminate(Duration::from_secs(15)).success());
    damage(&workspace, &workspace.path().join("state/queue"));
    fake.set_faults(Faults::default());
    let mut daemon = workspace.start_daemon();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (seq_counts(&fake.seen()).len() as u64) < written && Instant::now() < deadline {
        if let Some(status) = daemon.try_exit_status() {
            panic!("tailhose stopped ({status}) after the damage: {}", daemon.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = daemon.log();
    assert!(daemon.terminate(Duration::from_secs(15)).success(), "{log}");
    assert!(!log.contains("panicked"), "no panic: {log}");
    (fake, log, written)
}

#[test]
fn flipped_bytes_in_the_queue_files_never_panic_and_every_record_is_still_delivered() {
    let (fake, log, written) = restart_after_damaging_the_queue(|_, queue_dir| {
        let magics = chunk_magic_offsets(queue_dir);
        assert!(magics.len() >= 3, "chunks are on disk: {magics:?}");
        for (path, at) in magics.iter().step_by(3) {
            let mut bytes = std::fs::read(path).expect("read");
            let target = (at + 300).min(bytes.len() - 1);
            bytes[target] ^= 0x5a;
            bytes[*at + 5] ^= 0x01; // the chunk header's version field
            std::fs::write(path, bytes).expect("write");
        }
    });
    assert_eq!(seq_counts(&fake.seen()).len() as u64, written, "every record delivered, re-read from the source where needed: {log}");
    assert!(log.contains("crc"), "the damage is reported: {log}");
}

#[test]
fn truncated_queue_files_never_panic_and_every_record_is_still_delivered() {
    let (fake, log, written) = restart_after_damaging_the_queue(|_, queue_dir| {
        for entry in std::fs::read_dir(queue_dir.join("blobs")).expect("blobs").flatten() {
            let file = std::fs::OpenOptions::new().write(true).open(entry.path()).expect("open");
            let len = file.metadata().expect("stat").len();
            file.set_len(len / 2).expect("truncate");
        }
        let db = std::fs::OpenOptions::new().write(true).open(queue_dir.join("db")).expect("open db");
        let len = db.metadata().expect("stat").len();
        db.set_len(len * 3 / 4).expect("truncate db");
    });
    assert_eq!(seq_counts(&fake.seen()).len() as u64, written, "every record delivered: {log}");
}

/// sled writes its settings (`queue/conf`) before its log, in two writes and without a rename: a
/// kill -9 between them at the very first start (tests/model.rs found it, seed 180) left a queue
/// that neither the daemon nor any queue command could open until someone deleted it. A queue
/// with no log never held a record, so the next start creates it again.
#[test]
fn a_kill_while_the_queue_was_being_created_stops_nothing_and_every_record_is_delivered_once() {
    let fake = FakeFirehose::start(Faults::default());
    let settings = {
        let elsewhere = FakeFirehose::start(Faults::default());
        let first_start = Workspace::new();
        first_start.write_config_for_endpoint(&elsewhere.endpoint, "", FAST_RETRIES);
        support::write_seed_records(&first_start.log_file(), 0..1, 1, Duration::ZERO);
        first_start.run_once();
        std::fs::read(first_start.path().join("state/queue/conf")).expect("sled wrote its settings")
    };
    let workspace = Workspace::new();
    workspace.write_config_for_endpoint(&fake.endpoint, "", FAST_RETRIES);
    let written = 3_000u64;
    support::write_seed_records(&workspace.log_file(), 0..written, written, Duration::ZERO);
    let queue_dir = workspace.path().join("state/queue");
    std::fs::create_dir_all(queue_dir.join("blobs")).expect("mkdir");
    // The settings without their crc: the kill came between sled's two writes.
    std::fs::write(queue_dir.join("conf"), &settings[..settings.len() - 4]).expect("write");
    let stats = workspace.run(&["queue", "stats", "--config", "tailhose.toml"]);
    assert!(stats.status.success(), "queue commands open it: {}", String::from_utf8_lossy(&stats.stderr));
    workspace.run_once();
    let counts = seq_counts(&fake.seen());
    assert_eq!(counts.len() as u64, written, "every record delivered");
    assert!(counts.values().all(|&count| count == 1), "none twice");
}

/// sled never fsyncs its blob files (every chunk body is one). Each open writes a snapshot that
/// says how far its log is stable; a blob below that point lost afterwards (a power cut soon
/// after a restart, or a bad sector) made sled refuse to open the queue at all. tailhose sets
/// the snapshot aside, sled rolls back to its last consistent point, and what it lost is read
/// again from the source file.
#[test]
fn a_blob_file_emptied_after_a_restart_rolls_the_queue_back_and_every_record_is_still_delivered() {
    let (fake, log, written) = restart_after_damaging_the_queue(|workspace, queue_dir| {
        // A restart: opening the queue writes sled's snapshot.
        let config = workspace.config();
        let stats =
            workspace.tailhose(&["queue", "stats", "--config", config.to_str().expect("utf-8 path")]).output().expect("queue stats");
        assert!(stats.status.success(), "{}", String::from_utf8_lossy(&stats.stderr));
        let snapshots = std::fs::read_dir(queue_dir).expect("queue dir").flatten();
        assert!(snapshots.filter(|entry| entry.file_name().to_string_lossy().starts_with("snap.")).count() > 0, "opening left a snapshot");
        let mut blobs: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(queue_dir.join("blobs"))
            .expect("blobs")
            .flatten()
            .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path())))
            .collect();
        blobs.sort();
        let (_, oldest) = blobs.first().expect("chunk bodies are blob files");
        std::fs::File::create(oldest).expect("empty the blob");
    });
    assert_eq!(seq_counts(&fake.seen()).len() as u64, written, "every record delivered: {log}");
    assert!(log.contains("snapshot files were moved"), "the rollback is reported: {log}");
}
