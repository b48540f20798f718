//! A stream per record: the sink's stream named by a template over the record's fields
//! (`delivery_stream` / `stream_name = "play-${record.playtime}"`), a fallback for records that
//! name none, a pace per stream, and acknowledgement that stays a prefix of the queue when one
//! stream refuses while the others take. Against moto (protocol truth: one delivery stream and
//! bucket per name) and the project's fake (a stream that refuses, a `kill -9`), for every sink.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use support::fake_firehose::{FakeFirehose, Faults, Seen};
use support::{http_get, wait_until, Moto, SinkKind, Workspace, BUCKET, KINESIS_STREAM, STREAM};

const FAST_RETRIES: &str = "retry_initial_backoff = \"20ms\"\nretry_max_backoff = \"300ms\"\nrequest_timeout = \"2s\"";

/// Batches sent and not yet acknowledged at most (four times `max_in_flight`'s default of 8):
/// what a kill may send again, at most.
const MAX_UNACKNOWLEDGED: usize = 32;

/// The stream a seed record goes to under `play-${record.playtime}`, or the fallback.
fn stream_of(line: &[u8]) -> String {
    let record: serde_json::Value = serde_json::from_slice(line).expect("a JSON record");
    match record.get("playtime").and_then(serde_json::Value::as_u64) {
        Some(playtime) => format!("play-{playtime}"),
        None => "play-other".to_owned(),
    }
}

/// The sink table's stream line for `sink` replaced by a template and its fallback.
fn with_template(sink: SinkKind, text: String, template: &str, fallback: &str) -> String {
    let (plain, key) = match sink {
        SinkKind::Firehose => (format!("delivery_stream = \"{STREAM}\""), "delivery_stream"),
        SinkKind::KinesisStreams | SinkKind::KinesisAggregated => (format!("stream_name = \"{KINESIS_STREAM}\""), "stream_name"),
    };
    assert!(text.contains(&plain), "{text}");
    text.replace(&plain, &format!("{key} = \"{template}\"\nfallback_stream = \"{fallback}\""))
}

/// Appends records without the field the stream is named by: they go to the fallback.
fn write_records_without_playtime(workspace: &Workspace, seqs: std::ops::Range<u64>) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).create(true).open(workspace.log_file()).expect("log");
    for seq in seqs {
        writeln!(file, "{{\"interest\": \"no playtime\", \"seq\": {seq}}}").expect("write");
    }
}

/// How many times each seq was accepted, and in which streams.
fn streams_by_seq(seen: &Seen) -> BTreeMap<u64, Vec<String>> {
    let mut by_seq: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (line, &stream) in seen.accepted.iter().zip(&seen.accepted_streams) {
        by_seq.entry(support::seq_of(line)).or_default().push(seen.stream_names[usize::from(stream)].clone());
    }
    by_seq
}

/// How long stream `play-3` refuses every call in the tests of a refusing stream.
const PLAY_3_REFUSES_FOR: Duration = Duration::from_secs(4);

/// A fake whose stream `play-3` refuses every call for its first [`PLAY_3_REFUSES_FOR`], and a
/// workspace whose sink names the stream `play-${record.playtime}` (fallback `play-other`).
struct Play3Refusing {
    fake: FakeFirehose,
    started: Instant,
    workspace: Workspace,
}

impl Play3Refusing {
    fn new(sink: SinkKind, settings: &str) -> Self {
        let fake = FakeFirehose::start(Faults { throttle_stream_until: Some(("play-3", PLAY_3_REFUSES_FOR)), ..Faults::default() });
        let started = Instant::now();
        let workspace = Workspace::new();
        workspace.write_config_for_sink(sink, &fake.endpoint, "", settings);
        workspace.rewrite_config(|text| with_template(sink, text, "play-${record.playtime}", "play-other"));
        Self { fake, started, workspace }
    }
}

for_every_sink! {
    /// Stream `play-3` refuses every call for its first 4 s (at its quota, say) while the other
    /// fifteen take theirs, and the daemon is killed in the middle of it. The other streams'
    /// records keep going out past play-3's first record; acknowledgement stops there, so the
    /// kill may send again only what was unacknowledged; after the restart every record reaches
    /// the stream its field names, play-3's included, and the records without the field reach
    /// the fallback. Each stream's deliveries are counted under its name.
    fn a_refusing_stream_holds_back_no_other_and_after_a_kill_every_record_reaches_its_own_stream(sink) {
        let refused_for = PLAY_3_REFUSES_FOR;
        let Play3Refusing { fake, started, workspace } = Play3Refusing::new(sink, FAST_RETRIES);
        let seed = sink.lines_for_calls_of(3_000);
        support::write_seed_records(&workspace.log_file(), 0..seed, seed, Duration::ZERO);
        write_records_without_playtime(&workspace, seed..seed + 10);
        let written = seed + 10;
        let lines = std::fs::read(workspace.log_file()).expect("the log");
        let first_of_play_3 = lines.split(|&byte| byte == b'\n').find(|line| !line.is_empty() && stream_of(line) == "play-3").map(support::seq_of);
        let first_of_play_3 = first_of_play_3.expect("seed records with playtime 3");

        let daemon = workspace.start_daemon();
        // The other streams take records that come after play-3's first while play-3 refuses.
        let passed = wait_until(Duration::from_secs(20), "records past play-3's first, while it refuses", || {
            let seen = fake.seen();
            let past = streams_by_seq(&seen).keys().filter(|&&seq| seq > first_of_play_3).count();
            (past > 0).then_some(past)
        });
        assert!(started.elapsed() < refused_for, "play-3 still refused when the others went on ({passed} records past its first)");
        let before_kill = fake.seen();
        assert!(streams_by_seq(&before_kill).values().all(|streams| !streams.contains(&"play-3".to_owned())), "play-3 took nothing yet");
        daemon.kill();
        // Calls the fake had read before the kill are still answered: counted once it is quiet.
        let mut accepted_at_kill = fake.seen().accepted.len();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = fake.seen().accepted.len();
            if now == accepted_at_kill {
                break;
            }
            accepted_at_kill = now;
        }

        let daemon = workspace.start_daemon();
        let seen = wait_until(Duration::from_secs(60), "every record delivered after the restart", || {
            let seen = fake.seen();
            let all_there = seen.accepted.len() as u64 >= written && streams_by_seq(&seen).len() as u64 == written;
            all_there.then_some(seen)
        });
        let (_, metrics) = http_get(&workspace.admin_address(), "/metrics").expect("metrics");
        assert!(daemon.terminate(Duration::from_secs(15)).success());
        assert_eq!(seen.limit_violations, 0);

        let by_seq = streams_by_seq(&seen);
        let expected: BTreeMap<u64, String> = seen.accepted.iter().map(|line| (support::seq_of(line), stream_of(line))).collect();
        for (seq, streams) in &by_seq {
            let expected = &expected[seq];
            assert!(streams.iter().all(|stream| stream == expected), "seq {seq} went to {streams:?}, not only to {expected}");
        }
        let fallback: BTreeSet<u64> = by_seq.iter().filter(|(_, streams)| streams[0] == "play-other").map(|(&seq, _)| seq).collect();
        assert_eq!(fallback, (seed..written).collect(), "the records without playtime, and only they, went to the fallback");
        // Only what the kill left unacknowledged went twice: it stood behind play-3's refusals,
        // and was first accepted before the kill.
        let mut first_accepted: BTreeMap<u64, usize> = BTreeMap::new();
        let mut again = Vec::new();
        for (index, line) in seen.accepted.iter().enumerate() {
            let seq = support::seq_of(line);
            match first_accepted.get(&seq) {
                Some(&first) => again.push((seq, first)),
                None => {
                    first_accepted.insert(seq, index);
                }
            }
        }
        let after_the_kill: Vec<&(u64, usize)> = again.iter().filter(|(_, first)| *first >= accepted_at_kill).take(5).collect();
        assert!(after_the_kill.is_empty(), "sent twice though first accepted after the kill: {after_the_kill:?}");
        // A batch's records are split into a call per stream: a batch holds 500 records, or
        // aggregated as many lines as its seventeen calls' (sixteen streams and the fallback).
        let lines_per_batch = match sink {
            SinkKind::KinesisAggregated => seen.max_lines_in_call * 17,
            SinkKind::Firehose | SinkKind::KinesisStreams => 500,
        };
        let bound = MAX_UNACKNOWLEDGED * lines_per_batch;
        assert!(again.len() <= bound, "{} sent twice; at most {bound} were unacknowledged at the kill", again.len());
        assert!(
            metrics.contains("tailhose_stream_records_acked_total{sink=\"events\",stream=\"play-3\"}")
                && metrics.contains("tailhose_stream_failed_calls_total{sink=\"events\",stream=\"play-3\"}")
                && metrics.contains("tailhose_stream_fallbacks_total{sink=\"events\",reason=\"no_field\"} 10"),
            "{}",
            metrics.lines().filter(|line| line.starts_with("tailhose_stream")).collect::<Vec<_>>().join("\n")
        );
    }
}

/// Against moto's Firehose and S3: two delivery streams, each with a bucket of its own, and a
/// fallback stream (the seed's) for records without the field. Every record lands once, in the
/// bucket of the stream its `interest` names.
#[test]
fn records_land_once_each_in_the_bucket_of_the_delivery_stream_their_field_names() {
    let moto = Moto::start();
    for kind in ["video", "music"] {
        moto.create_delivery_stream(&format!("conect-{kind}"), &format!("bucket-{kind}"));
    }
    let workspace = Workspace::new();
    workspace.write_config_for_endpoint(&moto.endpoint, "", "");
    workspace.rewrite_config(|text| {
        let plain = format!("delivery_stream = \"{STREAM}\"");
        assert!(text.contains(&plain), "{text}");
        text.replace(&plain, &format!("delivery_stream = \"conect-${{record.kind}}\"\nfallback_stream = \"{STREAM}\""))
    });
    let mut lines = String::new();
    let kind_of = |seq: u64| match seq % 3 {
        0 => Some("video"),
        1 => Some("music"),
        _ => None,
    };
    for seq in 0..3_000u64 {
        let record = match kind_of(seq) {
            Some(kind) => format!("{{\"kind\": \"{kind}\", \"board_id\": {seq}, \"seq\": {seq}}}"),
            None => format!("{{\"board_id\": {seq}, \"seq\": {seq}}}"),
        };
        lines.push_str(&record);
        lines.push('\n');
    }
    std::fs::write(workspace.log_file(), lines).expect("the log");
    let output = workspace.run_once();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for (bucket, kind) in [("bucket-video", Some("video")), ("bucket-music", Some("music")), (BUCKET, None)] {
        let delivered = moto.delivered_in(bucket);
        let seqs: Vec<u64> = delivered.records.iter().map(|line| support::seq_of(line.as_bytes())).collect();
        let expected: Vec<u64> = (0..3_000).filter(|&seq| kind_of(seq) == kind).collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, expected, "{bucket}: every record of its stream, once");
    }
}

for_every_sink! {
    /// A record's field names a stream that does not exist (a typo in one application's logs):
    /// its records go to the fallback, counted as `missing_stream`, and the route goes on; they
    /// are not held until someone creates the stream.
    fn records_for_a_stream_that_does_not_exist_go_to_the_fallback_and_hold_back_nothing(sink) {
        let fake = FakeFirehose::start(Faults { missing_stream: Some("play-5"), ..Faults::default() });
        let workspace = Workspace::new();
        workspace.write_config_for_sink(sink, &fake.endpoint, "", FAST_RETRIES);
        workspace.rewrite_config(|text| with_template(sink, text, "play-${record.playtime}", "play-other"));
        let written = sink.lines_for_calls_of(2_000);
        support::write_seed_records(&workspace.log_file(), 0..written, written, Duration::ZERO);
        let daemon = workspace.start_daemon();
        let seen = wait_until(Duration::from_secs(60), "every record delivered", || {
            let seen = fake.seen();
            let all_there = seen.accepted.len() as u64 >= written && streams_by_seq(&seen).len() as u64 == written;
            all_there.then_some(seen)
        });
        let (_, metrics) = http_get(&workspace.admin_address(), "/metrics").expect("metrics");
        assert!(daemon.terminate(Duration::from_secs(15)).success());
        let expected: BTreeMap<u64, String> = seen.accepted.iter().map(|line| (support::seq_of(line), stream_of(line))).collect();
        let mut fell_back = 0;
        for (seq, streams) in streams_by_seq(&seen) {
            let wanted = if expected[&seq] == "play-5" { "play-other" } else { expected[&seq].as_str() };
            assert_eq!(streams, [wanted], "seq {seq}, of {}: once, to {wanted}", expected[&seq]);
            fell_back += usize::from(expected[&seq] == "play-5");
        }
        assert!(fell_back > 0, "records with playtime 5 were written");
        let counted = format!("tailhose_stream_fallbacks_total{{sink=\"events\",reason=\"missing_stream\"}} {fell_back}");
        assert!(metrics.contains(&counted), "{counted} in {}", metrics.lines().filter(|line| line.contains("fallbacks")).collect::<Vec<_>>().join("\n"));
    }
}

/// Calls each stream made, from `/metrics`' `tailhose_stream_calls_total`.
fn calls_by_stream(metrics: &str) -> BTreeMap<String, u64> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("tailhose_stream_calls_total{sink=\"events\",stream=\""))
        .filter_map(|rest| {
            let (stream, value) = rest.split_once("\"} ")?;
            Some((stream.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

for_every_sink! {
    /// With one batch calling at a time (`max_in_flight = 1`), stream `play-3` refuses every
    /// call for its first 4 s. Its calls wait in its own place among those calling, not in the
    /// batch's: the batches after the first go on being sent, up to the places of batches
    /// unacknowledged (four times `max_in_flight`), so the other streams make call after call
    /// while play-3 refuses, instead of waiting behind the one batch that holds its records.
    fn a_refusing_stream_waits_in_a_calling_place_of_its_own_and_the_others_go_on_with_later_batches(sink) {
        let refused_for = PLAY_3_REFUSES_FOR;
        let Play3Refusing { fake, started, workspace } = Play3Refusing::new(sink, &format!("{FAST_RETRIES}\nmax_in_flight = 1"));
        let written = sink.lines_for_calls_of(4_000);
        support::write_seed_records(&workspace.log_file(), 0..written, written, Duration::ZERO);
        let daemon = workspace.start_daemon();
        // Each batch makes one call for each stream it holds records of: three calls of one
        // stream are three batches in delivery at once.
        let calls = wait_until(refused_for + Duration::from_secs(20), "three calls of a stream other than play-3", || {
            let (_, metrics) = http_get(&workspace.admin_address(), "/metrics")?;
            let calls = calls_by_stream(&metrics);
            let most = calls.iter().filter(|(stream, _)| stream.as_str() != "play-3").map(|(_, &calls)| calls).max()?;
            (most >= 3).then_some(calls)
        });
        // Read after the calls: if play-3 has taken nothing yet, it took nothing before them.
        let seen = fake.seen();
        let play_3_took = seen.accepted_streams.iter().filter(|&&stream| seen.stream_names[usize::from(stream)] == "play-3").count();
        assert_eq!(
            play_3_took, 0,
            "other streams made three calls only {:?} after the start, once play-3 took records: {calls:?}",
            started.elapsed()
        );
        let seen = wait_until(Duration::from_secs(60), "every record delivered", || {
            let seen = fake.seen();
            (streams_by_seq(&seen).len() as u64 == written).then_some(seen)
        });
        assert!(daemon.terminate(Duration::from_secs(15)).success());
        for (seq, streams) in streams_by_seq(&seen) {
            assert_eq!(streams.len(), 1, "seq {seq} accepted {} times", streams.len());
        }
        for (line, &stream) in seen.accepted.iter().zip(&seen.accepted_streams) {
            assert_eq!(seen.stream_names[usize::from(stream)], stream_of(line), "seq {}", support::seq_of(line));
        }
    }
}
