//! Throughput of the queue path, in records/s and bytes/s of seed-sized records (~140 B):
//! - `chunker`: splitting lines and checking JSON, the reader's CPU work per record; and parsing
//!   text records into JSON objects (`parse_nginx`, `parse_logfmt`: 100,000 access-log lines);
//! - `codec`: encoding and verifying a 256 KiB chunk;
//! - `queue/append_commit`: appending chunks to sled and fsyncing once per 16 MiB, as a read pass does;
//! - `queue/drain_acknowledge`: reading, verifying and acknowledging them, as the flusher does.
//!
//! Run: `cargo bench --bench queue_throughput`. Figures go in docs/performance.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tailhose::cli::generate::{seed_record, SeedRandom};
use tailhose::config::{LineFormat, Retention};
use tailhose::queue::chunk::{decode_chunk, encode_chunk};
use tailhose::queue::{ChunkAck, ChunkSeq, FileIdentity, QueueStore, ReadProgress};
use tailhose::source::parse::Parser;
use tailhose::source::{LineChunker, SealedChunk};

const RECORDS: u64 = 100_000;

fn seed_lines(count: u64) -> Vec<u8> {
    let mut random = SeedRandom::new(7);
    let mut text = Vec::new();
    for seq in 0..count {
        text.extend_from_slice(seed_record(seq, &mut random).as_bytes());
        text.push(b'\n');
    }
    text
}

fn identity() -> FileIdentity {
    FileIdentity { device: 1, inode: 2, fingerprint_len: 256, fingerprint: 3 }
}

fn chunk_lines(bytes: &[u8]) -> Vec<SealedChunk> {
    chunk_lines_as(bytes, LineFormat::Json)
}

fn chunk_lines_as(bytes: &[u8], format: LineFormat) -> Vec<SealedChunk> {
    let mut chunker = LineChunker::new(identity(), b"/srv/conect/source/a.log".to_vec(), format, 1 << 20, 0);
    let mut sealed = Vec::new();
    for block in bytes.chunks(256 * 1024) {
        chunker.feed(block, &mut sealed);
    }
    sealed.extend(chunker.seal());
    sealed
}

fn chunker(c: &mut Criterion) {
    let bytes = seed_lines(RECORDS);
    let mut group = c.benchmark_group("chunker");
    group.throughput(Throughput::Elements(RECORDS));
    group.bench_function("split_and_check_json", |b| b.iter(|| chunk_lines(&bytes)));
    // What checking JSON costs: the same lines taken as they are (`format = "raw"`).
    group.bench_function("split_raw", |b| b.iter(|| chunk_lines_as(&bytes, LineFormat::Raw)));
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("split_and_check_json_bytes", |b| b.iter(|| chunk_lines(&bytes)));
    // Text parsed into one JSON object a record (`[sources.NAME.parse]`), nginx's combined format
    // and the same fields as logfmt.
    group.throughput(Throughput::Elements(RECORDS));
    let (nginx, logfmt) = access_lines(RECORDS);
    for (name, kind, lines) in [("parse_nginx", "nginx", &nginx), ("parse_logfmt", "logfmt", &logfmt)] {
        let parser = Arc::new(Parser::new(kind, None, None, &[("code".into(), "integer".into())]).expect("a preset"));
        group.bench_function(name, |b| b.iter(|| chunk_parsed(lines, &parser)));
    }
    group.finish();
}

/// `count` access-log lines in nginx's combined format, and the same as logfmt.
fn access_lines(count: u64) -> (Vec<u8>, Vec<u8>) {
    let (mut nginx, mut logfmt) = (Vec::new(), Vec::new());
    for seq in 0..count {
        let (address, code, size) = (seq % 250, 200 + (seq % 3) * 100, 512 + seq % 4096);
        nginx.extend_from_slice(
            format!(
                "203.0.113.{address} - - [01/Dec/2026:12:00:00 +0000] \"GET /videos/{seq}?t=3 HTTP/1.1\" {code} {size} \"https://example.com/\" \"Mozilla/5.0 (X11; Linux x86_64)\"\n"
            )
            .as_bytes(),
        );
        logfmt.extend_from_slice(
            format!(
                "remote=203.0.113.{address} time=\"01/Dec/2026:12:00:00 +0000\" method=GET path=\"/videos/{seq}?t=3\" code={code} size={size} referer=https://example.com/ agent=\"Mozilla/5.0 (X11; Linux x86_64)\"\n"
            )
            .as_bytes(),
        );
    }
    (nginx, logfmt)
}

fn chunk_parsed(bytes: &[u8], parser: &Arc<Parser>) -> Vec<SealedChunk> {
    let mut chunker =
        LineChunker::new(identity(), b"/var/log/nginx/access.log".to_vec(), LineFormat::Raw, 1 << 20, 0).with_parser(Some(parser.clone()));
    let mut sealed = Vec::new();
    for block in bytes.chunks(256 * 1024) {
        chunker.feed(block, &mut sealed);
    }
    sealed.extend(chunker.seal());
    assert!(sealed.iter().all(|chunk| chunk.dead_letters.is_empty()), "every line parses");
    sealed
}

fn codec(c: &mut Criterion) {
    let sealed = chunk_lines(&seed_lines(2_000));
    let draft = &sealed[0].draft;
    let encoded = encode_chunk(ChunkSeq(1), draft);
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    group.bench_function("encode", |b| b.iter(|| encode_chunk(ChunkSeq(1), draft)));
    group.bench_function("decode_and_verify", |b| b.iter(|| decode_chunk(ChunkSeq(1), &encoded).map(|chunk| chunk.records().count())));
    group.finish();
}

/// Appends every chunk, committing every 16 MiB; returns the queue and what was appended.
fn fill_queue(store: &QueueStore, sealed: &[SealedChunk]) -> (tailhose::queue::RouteQueue, Vec<ChunkAck>) {
    let (queue, _) = store.open_route("bench->sink", u64::MAX).expect("route");
    let mut acks = Vec::with_capacity(sealed.len());
    let mut since_commit = 0;
    for chunk in sealed {
        let seq = queue.append(&chunk.draft, &chunk.dead_letters, ReadProgress::Advance).expect("append");
        since_commit += chunk.draft.body_len();
        if since_commit >= 16 << 20 {
            queue.commit().expect("commit");
            since_commit = 0;
        }
        acks.push(ChunkAck {
            seq,
            file: chunk.draft.meta.file,
            start_offset: chunk.draft.meta.start_offset,
            stored_len: 0,
            acked_records: chunk.draft.meta.record_count,
            record_count: chunk.draft.meta.record_count,
        });
    }
    queue.commit().expect("commit");
    (queue, acks)
}

fn queue(c: &mut Criterion) {
    let sealed = chunk_lines(&seed_lines(RECORDS));
    let bytes: u64 = sealed.iter().map(|chunk| chunk.draft.body_len() as u64).sum();
    let mut group = c.benchmark_group("queue");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(RECORDS));
    group.bench_function("append_commit", |b| {
        b.iter_batched(
            || tempfile::tempdir().expect("tempdir"),
            |dir| {
                let store = QueueStore::open(dir.path(), 16 << 20).expect("store");
                fill_queue(&store, &sealed);
                dir
            },
            BatchSize::PerIteration,
        )
    });
    for (name, retention) in [
        ("drain_acknowledge", Retention::default()),
        // The same with every acknowledged chunk moved to the retained area (`retain_acked`).
        ("drain_acknowledge_retaining", Retention { max_age: Some(Duration::from_secs(3600)), max_bytes: None }),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let store = QueueStore::open(dir.path(), 16 << 20).expect("store");
                    let (queue, mut acks) = fill_queue(&store, &sealed);
                    queue.set_retention(retention);
                    let started = Instant::now();
                    let mut next = ChunkSeq(0);
                    let mut records = 0u64;
                    for ack in acks.iter_mut() {
                        let stored = queue.read_pending(next, ChunkSeq(u64::MAX)).expect("read").expect("chunk");
                        next = ChunkSeq(stored.seq.0 + 1);
                        let decoded = decode_chunk(stored.seq, &stored.bytes).expect("valid");
                        records += decoded.records().count() as u64;
                        ack.stored_len = stored.bytes.len() as u64;
                    }
                    for batch in acks.chunks(8) {
                        queue.acknowledge(batch, &[]).expect("acknowledge");
                    }
                    assert_eq!(records, RECORDS);
                    total += started.elapsed();
                }
                total
            })
        });
    }
    group.finish();
    eprintln!("queue benchmark: {RECORDS} seed records, {bytes} bytes in {} chunks", sealed.len());
}

criterion_group!(benches, chunker, codec, queue);
criterion_main!(benches);
