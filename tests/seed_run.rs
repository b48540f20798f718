//! The seed's proof, with tailhose in Fluentd's place: 10,000 records of the seed's generator,
//! written in bursts of 100 to `source/*.log`, tailed and delivered to a Firehose delivery stream
//! (moto's server, speaking the real protocol) with a 1 s flush, then counted in the stream's S3
//! bucket — under a clean run, a SIGTERM and restart, kill -9 at several points, and malformed
//! lines.

mod support;

use std::time::{Duration, Instant};

use support::{Moto, Workspace};

const RECORDS: u64 = 10_000;
const BURST: u64 = 100;
const MAX_BATCH_RECORDS: u64 = 500;
/// Batches sent and not yet acknowledged at most: four times the default `max_in_flight` (8).
const MAX_UNACKNOWLEDGED: u64 = 32;

fn all_arrived(expected: usize) -> impl Fn(&support::Delivered) -> bool {
    move |delivered| delivered.distinct() >= expected
}

#[test]
fn ten_thousand_seed_records_arrive_exactly_once() {
    let moto = Moto::start();
    let workspace = Workspace::new();
    workspace.write_firehose_config(&moto, "");
    let started = Instant::now();
    let daemon = workspace.start_daemon();
    support::write_seed_records(&workspace.log_file(), 0..RECORDS, BURST, Duration::from_millis(20));
    let delivered = moto.wait_for(Duration::from_secs(90), all_arrived(RECORDS as usize));
    let elapsed = started.elapsed();
    let status = daemon.terminate(Duration::from_secs(15));
    assert!(status.success(), "tailhose exits 0 on SIGTERM, got {status}");
    let counts = delivered.seq_counts();
    assert_eq!(counts.len() as u64, RECORDS, "every generated record arrived");
    assert_eq!(delivered.records.len() as u64, RECORDS, "each exactly once (duplicates: {})", delivered.duplicates());
    assert!(counts.keys().copied().eq(0..RECORDS));
    assert!(
        delivered.sample_keys.iter().all(|key| key.contains("/test-fluentd-firehose-1-")),
        "Firehose S3 key layout: {:?}",
        delivered.sample_keys
    );
    assert!(delivered.objects >= RECORDS / MAX_BATCH_RECORDS, "at most 500 records per PutRecordBatch");
    eprintln!("10,000 records delivered exactly once in {elapsed:.2?} ({} PutRecordBatch calls)", delivered.objects);
}

#[test]
fn sigterm_halfway_then_restart_delivers_every_record_exactly_once() {
    let moto = Moto::start();
    let workspace = Workspace::new();
    workspace.write_firehose_config(&moto, "");
    let log_file = workspace.log_file();
    let writer = std::thread::spawn(move || support::write_seed_records(&log_file, 0..RECORDS, BURST, Duration::from_millis(30)));
    let daemon = workspace.start_daemon();
    let before = moto.wait_for(Duration::from_secs(60), all_arrived((RECORDS / 2) as usize));
    assert!(before.distinct() >= (RECORDS / 2) as usize, "half the records arrive before the stop");
    let status = daemon.terminate(Duration::from_secs(15));
    assert!(status.success(), "tailhose exits 0 on SIGTERM, got {status}");
    let at_stop = moto.delivered().distinct();
    writer.join().expect("writer");
    let daemon = workspace.start_daemon();
    let delivered = moto.wait_for(Duration::from_secs(90), all_arrived(RECORDS as usize));
    assert!(daemon.terminate(Duration::from_secs(15)).success());
    assert_eq!(delivered.distinct() as u64, RECORDS, "every record arrived");
    assert_eq!(delivered.duplicates(), 0, "a graceful stop sends nothing twice");
    eprintln!("stopped with {at_stop} of {RECORDS} delivered; after restart all {RECORDS} arrived once");
}

#[test]
fn kill_nine_at_several_points_loses_nothing_and_duplicates_only_batches_in_flight() {
    let moto = Moto::start();
    let workspace = Workspace::new();
    workspace.write_firehose_config(&moto, "");
    let log_file = workspace.log_file();
    let writer = std::thread::spawn(move || support::write_seed_records(&log_file, 0..RECORDS, BURST, Duration::from_millis(25)));
    let kill_after = [150u64, 420, 700, 1_100, 1_700, 2_300];
    // What had arrived at each kill: records already there and sent again after the restart
    // were in flight (or accepted and not yet acknowledged) at that kill.
    let mut at_kill = Vec::new();
    for (run, delay) in kill_after.into_iter().enumerate() {
        let daemon = workspace.start_daemon();
        if run == 0 {
            // A kill before anything is in flight would test nothing.
            let first = moto.wait_for(Duration::from_secs(30), |delivered| delivered.distinct() > 0);
            assert!(first.distinct() > 0, "nothing arrived before the first kill");
        }
        std::thread::sleep(Duration::from_millis(delay));
        daemon.kill();
        at_kill.push(moto.delivered().seq_counts());
    }
    writer.join().expect("writer");
    let daemon = workspace.start_daemon();
    let delivered = moto.wait_for(Duration::from_secs(90), all_arrived(RECORDS as usize));
    assert!(daemon.terminate(Duration::from_secs(15)).success());
    assert_eq!(delivered.distinct() as u64, RECORDS, "every record arrived after {} kills", kill_after.len());
    at_kill.push(delivered.seq_counts());
    // The documented bound: after a kill -9, at most the batches in flight are sent again,
    // four times max_in_flight (8) of at most 500 records.
    let bound = MAX_UNACKNOWLEDGED * MAX_BATCH_RECORDS;
    for (kill, pair) in at_kill.windows(2).enumerate() {
        let (before, after) = (&pair[0], &pair[1]);
        let sent_again: u64 = before.iter().map(|(seq, &count)| u64::from(after.get(seq).copied().unwrap_or(count) - count)).sum();
        assert!(
            sent_again <= bound,
            "kill {kill}: {sent_again} records that had arrived were sent again: more than {MAX_UNACKNOWLEDGED} batches in flight"
        );
    }
    eprintln!("{} kills: {RECORDS} distinct records delivered, {} duplicates", kill_after.len(), delivered.duplicates());
}

#[test]
fn malformed_lines_are_dead_lettered_and_good_lines_all_delivered() {
    let moto = Moto::start();
    let workspace = Workspace::new();
    workspace.write_firehose_config(&moto, "");
    let bad_lines: [&[u8]; 5] = [
        b"{\"board_id\": 1, \"playtime\":",
        b"not json at all",
        b"\xff\xfe{\"board_id\": 2}",
        b"{\"a\": 1} {\"b\": 2}",
        b"{\"text\": \"\xc3\x28\"}",
    ];
    let mut content = Vec::new();
    let mut bad_offsets = Vec::new();
    for seq in 0..1_000u64 {
        content.extend_from_slice(support::seed_record(seq).as_bytes());
        content.push(b'\n');
        if seq % 25 == 24 {
            bad_offsets.push(content.len() as u64);
            content.extend_from_slice(bad_lines[(seq / 25) as usize % bad_lines.len()]);
            content.push(b'\n');
        }
    }
    std::fs::write(workspace.log_file(), &content).expect("write log");
    workspace.run_once();
    let delivered = moto.delivered();
    assert_eq!(delivered.distinct(), 1_000, "every good line delivered");
    assert_eq!(delivered.records.len(), 1_000, "and nothing else");

    let output = workspace.run(&["queue", "dead-letters", "--config", "tailhose.toml"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let letters: Vec<serde_json::Value> =
        String::from_utf8_lossy(&output.stdout).lines().map(|line| serde_json::from_str(line).expect("json line")).collect();
    assert_eq!(letters.len(), bad_offsets.len(), "every bad line is in the dead-letter area");
    for (letter, offset) in letters.iter().zip(&bad_offsets) {
        assert_eq!(letter["reason"], "invalid_json");
        assert_eq!(letter["offset"].as_u64(), Some(*offset), "dead letter names where the line is: {letter}");
    }
    let summary = String::from_utf8_lossy(&output.stderr);
    let run_log = String::from_utf8_lossy(&workspace.run(&["queue", "stats", "--config", "tailhose.toml"]).stdout).into_owned();
    assert!(run_log.contains("\"dead_letters\": 40"), "stats count the dead letters: {run_log} {summary}");
}
