//! The Kinesis Data Streams sink against moto's Kinesis (protocol truth): records put by the real
//! binary are read back with `GetRecords` from every shard, each once, with the partition keys
//! configured; aggregated records are deaggregated by AWS's KPL library (PyPI
//! `aws-kinesis-agg`), a reading of the format that is not tailhose's.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::{Moto, SinkKind, Workspace, KINESIS_STREAM};

const SHARDS: u32 = 4;

/// Writes `records` seed records, runs `tailhose run --once` to moto's Kinesis with the extra
/// sink lines, and reads the stream back.
fn delivered_to_kinesis(kind: SinkKind, sink_lines: &str, records: u64) -> support::KinesisDelivered {
    let moto = Moto::start();
    moto.create_kinesis_stream(KINESIS_STREAM, SHARDS);
    let workspace = Workspace::new();
    workspace.write_config_for_sink(kind, &moto.endpoint, "", sink_lines);
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
