//! Compressed records: against moto's Firehose + S3 (objects of gzip members, read back by
//! Python's gzip as zcat reads them), and against the project's fake for zstd and Kinesis,
//! whose records are decompressed by the reference libraries (flate2's, libzstd).

mod support;

use std::time::Duration;

use support::fake_firehose::{FakeFirehose, Faults};
use support::{Moto, SinkKind, Workspace};

/// The summary line's counters of a `run --once`.
fn summary(output: &std::process::Output) -> serde_json::Value {
    let log = String::from_utf8_lossy(&output.stderr);
    let line = log.lines().find(|line| line.contains("tailhose stopped")).expect("a summary line");
    // The counters' JSON ends the line (the field's name before it may be coloured).
    let json = &line[line.find("{\"").expect("a summary")..];
    serde_json::from_str(json.trim()).expect("the summary is JSON")
}

/// Runs `records` seed records to moto's Firehose with `sink_lines`; returns what the bucket
/// holds and the run's counters.
fn delivered_to_s3(sink_lines: &str, records: u64) -> (support::Delivered, serde_json::Value) {
    let moto = Moto::start();
    let workspace = Workspace::new();
    workspace.write_firehose_config(&moto, sink_lines);
    support::write_seed_records(&workspace.log_file(), 0..records, records, Duration::ZERO);
    let output = workspace.run_once();
    (moto.delivered(), summary(&output))
}

#[test]
fn gzip_compressed_packed_records_land_as_gzip_objects_that_decompress_to_the_lines_of_an_uncompressed_run() {
    let (plain, plain_counts) = delivered_to_s3("pack_records = true", 10_000);
    let (compressed, counts) = delivered_to_s3("pack_records = true\ncompression = \"gzip\"", 10_000);
    assert_eq!(plain.gzip_objects, 0);
    assert_eq!(compressed.gzip_objects, compressed.objects, "every object is gzip members");
    assert_eq!(compressed.records, plain.records, "the same lines, in the same order");
    assert_eq!(compressed.distinct(), 10_000);
    let (sent, before) =
        (counts["bytes_acked"].as_u64().expect("bytes"), counts["bytes_acked_before_compression"].as_u64().expect("bytes"));
    let (units, plain_units) = (counts["billed_units"].as_u64().expect("units"), plain_counts["billed_units"].as_u64().expect("units"));
    eprintln!(
        "10,000 seed records packed: {plain_units} billed units plain, {units} gzip; {before} bytes before compression, {sent} sent ({:.1}x)",
        before as f64 / sent as f64
    );
    assert_eq!(before, plain_counts["bytes_acked"].as_u64().expect("bytes"), "the bytes before compression are the plain run's");
    assert!(sent * 4 < before, "seed records compress several-fold: {sent} of {before}");
    assert!(units * 3 < plain_units, "each packed record holds five times the lines in one 5 KB unit: {units} vs {plain_units}");
}

#[test]
fn compression_is_refused_for_a_stream_that_makes_one_document_per_record() {
    let moto = Moto::start();
    moto.create_elasticsearch_stream("conect-es");
    let workspace = Workspace::new();
    workspace.write_firehose_config(&moto, "compression = \"zstd\"");
    workspace.rewrite_config(|config| config.replace(support::STREAM, "conect-es"));
    support::write_seed_records(&workspace.log_file(), 0..10, 10, Duration::ZERO);
    let output = workspace.run(&["run", "--config", "tailhose.toml", "--once"]);
    assert!(!output.status.success(), "compressed records into Elasticsearch must not start");
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("compression = \"zstd\" would change") && message.contains("Elasticsearch"), "{message}");
}

/// Every sink's records decompress, one complete member each, to the lines read; Kinesis's
/// aggregated records are compressed whole (decompress, then deaggregate), and a partition key
/// taken from a field is the field's value, not a random key for bytes that are not JSON.
#[test]
fn every_sinks_records_decompress_one_by_one_to_the_lines_read() {
    for (kind, compression, sink_lines) in [
        (SinkKind::Firehose, "zstd", "pack_records = true"),
        (SinkKind::Firehose, "gzip", ""),
        (SinkKind::KinesisStreams, "zstd", "partition_key_field = \"user_id\""),
        (SinkKind::KinesisAggregated, "gzip", ""),
    ] {
        let fake = FakeFirehose::start(Faults { fail_every_nth_record: Some(5), ..Faults::default() });
        let workspace = Workspace::new();
        workspace.write_config_for_sink(kind, &fake.endpoint, "", &format!("{sink_lines}\ncompression = \"{compression}\""));
        support::write_seed_records(&workspace.log_file(), 0..5_000, 5_000, Duration::ZERO);
        workspace.run_once();
        let seen = fake.seen();
        let decompressed: Vec<Vec<u8>> = seen
            .accepted
            .iter()
            .flat_map(|record| {
                let data = match compression {
                    "gzip" => {
                        use std::io::Read;
                        let mut data = Vec::new();
                        flate2::read::GzDecoder::new(record.as_slice())
                            .read_to_end(&mut data)
                            .unwrap_or_else(|error| panic!("{kind:?}: one gzip member: {error}: {:?}", &record[..record.len().min(20)]));
                        data
                    }
                    _ => zstd::stream::decode_all(record.as_slice()).expect("one zstd frame"),
                };
                match kind {
                    SinkKind::KinesisAggregated => tailhose::sink::aggregation::deaggregate(&data).expect("an aggregated record").1,
                    _ => vec![data],
                }
            })
            .collect();
        let counts = support::count_seqs(decompressed.iter().map(Vec::as_slice));
        assert_eq!(counts.len(), 5_000, "{kind:?} {compression}: every record");
        if kind == SinkKind::KinesisStreams {
            // Keys from a field are read from the record as it was before compression.
            for (record, key) in decompressed.iter().zip(&seen.partition_keys) {
                let value: serde_json::Value = serde_json::from_slice(record).expect("a JSON record");
                assert_eq!(*key, value["user_id"].to_string(), "the partition key is the record's user_id");
            }
        }
        assert!(counts.values().all(|&count| count == 1), "{kind:?} {compression}: none twice, resends included");
        assert_eq!(seen.limit_violations, 0);
    }
}
