//! The sink's CPU work per call, in records/s of seed-sized records (~145 B with the newline):
//! - `batch/pack`: offering records to a `PutRecordBatch`-sized batch (500 records / 4 MiB);
//! - `batch/pack_records`: packing lines into 5,000-byte Firehose records (`pack_records`);
//! - `request/body`: writing the JSON body of a 500-record call (base64 in place);
//! - `answer/sdk_reader` and `answer/tailhose_reader`: one whole SDK call (signing included)
//!   answered in memory with a 500-entry success, read by the SDK's deserializer or by
//!   `sink::answer` (the difference is what tailhose saves per call).
//!
//! Run: `cargo bench --bench sink_requests`. Figures go in docs/performance.md.

use aws_sdk_firehose::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_firehose::Client;
use aws_smithy_types::body::SdkBody;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tailhose::cli::generate::{seed_record, SeedRandom};
use tailhose::sink::answer::ReadAnswersOurselves;
use tailhose::sink::request::put_record_batch_body;
use tailhose::sink::{BatchLimits, BatchPacker, Offer, OutgoingRecords};

const CALL_RECORDS: usize = 500;
const LIMITS: BatchLimits = BatchLimits {
    max_records: 500,
    max_bytes: 4 * 1024 * 1024,
    max_record_bytes: Some(1000 * 1024),
    billing_unit_bytes: 5 * 1024,
    record_overhead_bytes: 0,
};

/// Seed-shaped records with their newline, as the flusher sends them.
fn seed_records(count: usize) -> Vec<Vec<u8>> {
    let mut random = SeedRandom::new(7);
    (0..count as u64).map(|seq| format!("{}\n", seed_record(seq, &mut random)).into_bytes()).collect()
}

fn batch(c: &mut Criterion) {
    let lengths: Vec<u64> = seed_records(CALL_RECORDS * 20).iter().map(|record| record.len() as u64).collect();
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Elements(lengths.len() as u64));
    group.bench_function("pack", |b| {
        b.iter(|| {
            let mut packer = BatchPacker::new(LIMITS);
            let mut batches = 1;
            for &len in &lengths {
                if packer.offer(len) == Offer::Full {
                    packer = BatchPacker::new(LIMITS);
                    packer.offer(len);
                    batches += 1;
                }
            }
            batches
        })
    });
    group.bench_function("pack_records", |b| {
        b.iter(|| {
            let mut packer = BatchPacker::new(LIMITS);
            let mut last_record_bytes = 0u64;
            let mut records = 0;
            for &len in &lengths {
                if last_record_bytes > 0 && last_record_bytes + len <= 5_000 && packer.extend_last(len) == Offer::Added {
                    last_record_bytes += len;
                    continue;
                }
                if packer.offer(len) == Offer::Full {
                    packer = BatchPacker::new(LIMITS);
                    packer.offer(len);
                }
                last_record_bytes = len;
                records += 1;
            }
            records
        })
    });
    group.finish();
}

fn request(c: &mut Criterion) {
    let mut records = OutgoingRecords::default();
    for record in seed_records(CALL_RECORDS) {
        records.push(&record, false);
    }
    let which: Vec<usize> = (0..CALL_RECORDS).collect();
    let bytes: usize = which.iter().map(|&index| records.get(index).len()).sum();
    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Elements(CALL_RECORDS as u64));
    group.bench_function("body", |b| b.iter(|| put_record_batch_body("test-fluentd-firehose", &records, &which)));
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("body_bytes", |b| b.iter(|| put_record_batch_body("test-fluentd-firehose", &records, &which)));
    group.finish();
}

/// A client whose every call is answered at once with `answer` (status 200).
fn answered_client(answer: &'static str) -> Client {
    let http_client = aws_smithy_http_client::test_util::infallible_client_fn(move |_request| {
        http::Response::builder().status(200).body(SdkBody::from(answer)).expect("a valid answer")
    });
    let config = aws_sdk_firehose::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("ap-northeast-2"))
        .credentials_provider(Credentials::new("AKIDEXAMPLE", "secret", None, None, "bench"))
        .http_client(http_client)
        .build();
    Client::from_conf(config)
}

fn answer(c: &mut Criterion) {
    // AWS's record ids are about 220 characters of base64.
    let record_id: String = "ZFvYI6B8IvLrE3rnwAeSCXyiFrJSbpMxVfvkHd9t4MZmwTAV7kkC1TP9JiTDcEw/".repeat(4)[..220].to_owned();
    let entries: Vec<String> = (0..CALL_RECORDS).map(|_| format!(r#"{{"RecordId":"{record_id}"}}"#)).collect();
    let answer: &'static str =
        Box::leak(format!(r#"{{"FailedPutCount":0,"Encrypted":false,"RequestResponses":[{}]}}"#, entries.join(",")).into_boxed_str());
    let client = answered_client(answer);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let mut group = c.benchmark_group("answer");
    group.throughput(Throughput::Elements(CALL_RECORDS as u64));
    group.bench_function("sdk_reader", |b| {
        b.iter(|| {
            runtime.block_on(client.put_record_batch().delivery_stream_name("s").send()).expect("an answer").request_responses().len()
        })
    });
    group.bench_function("tailhose_reader", |b| {
        b.iter(|| {
            let call = client.put_record_batch().delivery_stream_name("s").customize().interceptor(ReadAnswersOurselves).send();
            runtime.block_on(call).expect("an answer").request_responses().len()
        })
    });
    group.finish();
}

criterion_group!(benches, batch, request, answer);
criterion_main!(benches);
