//! The Kinesis Data Streams sink against moto's Kinesis (protocol truth): records put by the real
//! binary are read back with `GetRecords` from every shard, each once, with the partition keys
//! configured; aggregated records are deaggregated by AWS's KPL library (PyPI
//! `aws-kinesis-agg`), a reading of the format that is not tailhose's.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::{Moto, SinkKind, Workspace, KINESIS_STREAM};

const SHARDS: u32 = 4;

/// moto's Kinesis numbers a shard's records without a lock ("not safe for concurrency", its
/// `Shard.put_record`): two `PutRecords` calls at once can give two records one sequence number,
/// and the second overwrites the first. Its threaded server must take one call at a time; the
/// project's fake, which is safe, takes tailhose's concurrent calls in `tests/faults.rs`.
const ONE_CALL_AT_A_TIME: &str = "max_in_flight = 1";

/// Writes `records` seed records, runs `tailhose run --once` to moto's Kinesis with the extra
/// sink lines, and reads the stream back.
fn delivered_to_kinesis(kind: SinkKind, sink_lines: &str, records: u64) -> support::KinesisDelivered {
    let moto = Moto::start();
    moto.create_kinesis_stream(KINESIS_STREAM, SHARDS);
    let workspace = Workspace::new();
    workspace.write_config_for_sink(kind, &moto.endpoint, "", &format!("{sink_lines}\n{ONE_CALL_AT_A_TIME}"));
    support::write_seed_records(&workspace.log_file(), 0..records, records, Duration::ZERO);
    workspace.run_once();
    let delivered = moto.kinesis_records(KINESIS_STREAM);
    let counts = delivered.seq_counts();
    assert_eq!(counts.len() as u64, records, "every record arrived");
    assert!(counts.values().all(|&count| count == 1), "none twice");
    delivered
}

/// The value of `field` in a delivered seed record, as text.
fn field_of(line: &str, field: &str) -> String {
    let record: serde_json::Value = serde_json::from_str(line).expect("a JSON record");
    record[field].to_string()
}

#[test]
fn records_put_with_a_field_as_partition_key_are_read_back_from_every_shard_once_with_that_key() {
    let delivered = delivered_to_kinesis(SinkKind::KinesisStreams, "partition_key_field = \"user_id\"", 2_000);
    assert_eq!(delivered.kinesis_records, 2_000, "one Kinesis record per line");
    for record in &delivered.records {
        assert_eq!(record.partition_key, field_of(&record.line, "user_id"), "{}", record.line);
        assert!(!record.aggregated);
    }
    let shards: BTreeSet<&str> = delivered.records.iter().map(|record| record.shard.as_str()).collect();
    assert_eq!(shards.len(), SHARDS as usize, "user ids spread over every shard: {shards:?}");
}

#[test]
fn random_partition_keys_spread_records_over_every_shard() {
    let delivered = delivered_to_kinesis(SinkKind::KinesisStreams, "", 2_000);
    let keys: BTreeSet<&str> = delivered.records.iter().map(|record| record.partition_key.as_str()).collect();
    assert_eq!(keys.len(), 2_000, "a key of its own for each record");
    for shard in 0..SHARDS {
        let name = format!("shardId-{shard:012}");
        let taken = delivered.records.iter().filter(|record| record.shard == name).count();
        assert!(taken > 2_000 / SHARDS as usize / 2, "{name} took {taken} of 2,000 records");
    }
}

/// The seed's proof (10,000 records generated, 10,000 arrived) through KPL aggregation.
#[test]
fn aggregated_records_deaggregate_with_the_kpl_library_into_every_record_once() {
    let delivered = delivered_to_kinesis(SinkKind::KinesisAggregated, "fixed_partition_key = \"conect-events\"", 10_000);
    assert!(delivered.records.iter().all(|record| record.aggregated), "every record came out of an aggregated record");
    assert!(delivered.records.iter().all(|record| record.partition_key == "conect-events"));
    // 10,000 seed records are about 1.5 MB: some 60 aggregated records of up to 25 KB.
    assert!(
        (40..=100).contains(&delivered.kinesis_records),
        "{} Kinesis records for 10,000 lines: each aggregated record fills one 25 KB billing unit",
        delivered.kinesis_records
    );
}

/// A Fluentd set-up with fluent-plugin-kinesis's two Kinesis Data Streams outputs behind a
/// `copy` imports with exit 0, and every record reaches both streams once, keyed as Fluentd
/// keyed them.
#[test]
fn a_fluentd_copy_to_kinesis_streams_and_kinesis_streams_aggregated_imports_and_delivers_every_record_once_to_each() {
    let moto = Moto::start();
    moto.create_kinesis_stream("events", 2);
    moto.create_kinesis_stream("events-aggregated", 2);
    let workspace = Workspace::new();
    let fluentd = workspace.path().join("td-agent.conf");
    let source = workspace.path().join("source");
    let endpoint = &moto.endpoint;
    let region = support::REGION;
    std::fs::write(
        &fluentd,
        format!(
            "<source>\n  @type tail\n  path {}/*.log\n  pos_file {}/app.pos\n  tag conect\n  read_from_head true\n  <parse>\n    @type json\n  </parse>\n</source>\n\
             <match conect>\n  @type copy\n  <store>\n    @type kinesis_streams\n    stream_name events\n    region {region}\n    endpoint {endpoint}\n    partition_key user_id\n  </store>\n  \
             <store>\n    @type kinesis_streams_aggregated\n    stream_name events-aggregated\n    region {region}\n    endpoint {endpoint}\n    fixed_partition_key conect\n  </store>\n</match>\n",
            source.display(),
            workspace.path().display()
        ),
    )
    .expect("write td-agent.conf");
    support::write_seed_records(&workspace.log_file(), 0..3_000, 3_000, Duration::ZERO);
    let output = workspace.run(&[
        "import",
        "fluentd",
        "--config",
        fluentd.to_str().expect("utf-8"),
        "--out",
        "tailhose.toml",
        "--data-dir",
        "state",
    ]);
    assert!(output.status.success(), "import: {}", String::from_utf8_lossy(&output.stderr));
    workspace.rewrite_config(|text| {
        text.replace("type = \"kinesis_streams\"\n", &format!("type = \"kinesis_streams\"\n{ONE_CALL_AT_A_TIME}\n"))
    });
    workspace.run_once();
    for (stream, aggregated) in [("events", false), ("events-aggregated", true)] {
        let delivered = moto.kinesis_records(stream);
        let counts = delivered.seq_counts();
        assert_eq!(counts.len(), 3_000, "{stream}: every record");
        assert!(counts.values().all(|&count| count == 1), "{stream}: none twice");
        for record in &delivered.records {
            assert_eq!(record.aggregated, aggregated, "{stream}");
            let expected = if aggregated { "conect".to_owned() } else { field_of(&record.line, "user_id") };
            assert_eq!(record.partition_key, expected, "{stream}");
        }
    }
}
