use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::LineFormat;
use crate::queue::chunk::decode_chunk;
use crate::queue::{ChunkSeq, QueueStore};

fn source(dir: &Path) -> SourceSettings {
    SourceSettings {
        name: "logs".into(),
        paths: vec![dir.join("*.log").to_string_lossy().into_owned()],
        format: LineFormat::Json,
        read_from_head: true,
        refresh_interval: Duration::ZERO,
        poll_interval: Duration::from_millis(10),
        max_line_bytes: 1 << 20,
    }
}

fn append_lines(path: &Path, range: std::ops::Range<u64>) {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open");
    for seq in range {
        writeln!(file, "{{\"seq\": {seq}, \"pad\": \"{}\"}}", "x".repeat(100)).expect("write");
    }
}

/// Every record queued so far, as `seq` values in queue order.
fn queued_seqs(queue: &RouteQueue) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut next = ChunkSeq(0);
    while let Some(stored) = queue.read_pending(next, ChunkSeq(u64::MAX)).expect("read") {
        next = ChunkSeq(stored.seq.0 + 1);
        let chunk = decode_chunk(stored.seq, &stored.bytes).expect("valid");
        for record in chunk.records() {
            let value: serde_json::Value = serde_json::from_slice(record).expect("json");
            seqs.push(value["seq"].as_u64().expect("seq"));
        }
    }
    seqs
}

fn open_queue(state: &Path, max_queue_bytes: u64) -> (QueueStore, RouteQueue) {
    let store = QueueStore::open(state, 1 << 20).expect("store");
    let (queue, _) = store.open_route("logs->sink", max_queue_bytes).expect("route");
    (store, queue)
}

#[test]
fn reading_stops_at_the_read_ahead_window_while_the_file_is_still_in_its_glob() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    append_lines(&logs.path().join("a.log"), 0..20_000);
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let window = 512 * 1024;
    let mut tailer = Tailer::new(source(logs.path()), window, queue.clone(), Arc::new(Events::default()));
    let outcome = tailer.pass().expect("pass");
    assert!(!outcome.caught_up);
    assert!(queue.pending_bytes() >= window, "the window is filled");
    assert!(queue.pending_bytes() < window + (READ_BLOCK as u64) * 2, "and not overrun: {}", queue.pending_bytes());
    let second = tailer.pass().expect("pass");
    assert_eq!(second.bytes_read, 0, "nothing more is read until the sink catches up");
}

#[test]
fn a_file_renamed_out_of_the_glob_is_read_to_its_end_and_the_new_file_from_its_start() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let live = logs.path().join("app.log");
    append_lines(&live, 0..100);
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut tailer = Tailer::new(source(logs.path()), 1 << 30, queue.clone(), Arc::new(Events::default()));
    tailer.pass().expect("pass");
    // logrotate `create`: rename, the writer finishes into the old file, a new file appears.
    std::fs::rename(&live, logs.path().join("app.log.1")).expect("rename");
    append_lines(&logs.path().join("app.log.1"), 100..150);
    append_lines(&live, 150..200);
    for _ in 0..3 {
        tailer.pass().expect("pass");
    }
    assert_eq!(queued_seqs(&queue), (0..200).collect::<Vec<_>>(), "each line once, in order per file");
}

#[test]
fn a_restart_resumes_at_the_stored_read_position() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let live = logs.path().join("app.log");
    append_lines(&live, 0..100);
    {
        let (_store, queue) = open_queue(state.path(), 1 << 30);
        let mut tailer = Tailer::new(source(logs.path()), 1 << 30, queue, Arc::new(Events::default()));
        tailer.pass().expect("pass");
    }
    append_lines(&live, 100..130);
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut tailer = Tailer::new(source(logs.path()), 1 << 30, queue.clone(), Arc::new(Events::default()));
    tailer.pass().expect("pass");
    assert_eq!(queued_seqs(&queue), (0..130).collect::<Vec<_>>(), "the first 100 are not read again");
}

#[test]
fn a_file_truncated_in_place_is_read_again_from_its_start() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let live = logs.path().join("app.log");
    append_lines(&live, 0..50);
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let events = Arc::new(Events::default());
    let mut tailer = Tailer::new(source(logs.path()), 1 << 30, queue.clone(), events.clone());
    tailer.pass().expect("pass");
    std::fs::OpenOptions::new().write(true).open(&live).expect("open").set_len(0).expect("truncate");
    append_lines(&live, 50..60);
    tailer.pass().expect("pass");
    assert_eq!(queued_seqs(&queue), (0..60).collect::<Vec<_>>());
    assert_eq!(events.snapshot().files_truncated, 1);
}
