use std::io::Write;
use std::path::Path;

use super::*;
use crate::queue::chunk::decode_chunk;
use crate::queue::{ChunkSeq, DeadLetterReason};
use crate::source::Tailer;

fn source(dir: &Path) -> SourceSettings {
    SourceSettings::for_test_folder(dir)
}

/// Reads 100 lines into a queue, flips a byte of the chunk, and reopens the queue: start-up
/// verification sets the chunk aside and reports its range missing.
fn queue_with_a_corrupt_chunk(logs: &Path, state: &Path) -> (QueueStore, RouteQueue, RecoveryReport) {
    let mut file = std::fs::File::create(logs.join("app.log")).expect("create");
    for seq in 0..100 {
        writeln!(file, "{{\"seq\": {seq}}}").expect("write");
    }
    {
        let store = QueueStore::reopen_for_test(state);
        let (queue, _) = store.open_route("logs->sink", 1 << 30).expect("route");
        Tailer::new(source(logs), 1 << 30, queue.clone(), Arc::new(Events::default())).pass().expect("pass");
        queue.flip_a_byte_of_pending_chunk(ChunkSeq(0));
    }
    let store = QueueStore::reopen_for_test(state);
    let (queue, report) = store.open_route("logs->sink", 1 << 30).expect("route");
    (store, queue, report)
}

fn pending_records(queue: &RouteQueue) -> usize {
    let mut records = 0;
    let mut next = ChunkSeq(0);
    while let Some(stored) = queue.read_pending(next, ChunkSeq(u64::MAX)).expect("read") {
        next = ChunkSeq(stored.seq.0 + 1);
        records += decode_chunk(stored.seq, &stored.bytes).expect("only valid chunks are pending").records().count();
    }
    records
}

#[tokio::test]
async fn a_corrupt_chunk_is_recovered_from_its_source_file_at_start_up() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let (_store, queue, report) = queue_with_a_corrupt_chunk(logs.path(), state.path());
    assert_eq!(report.set_aside.len(), 1, "the bad chunk is reported");
    assert_eq!(pending_records(&queue), 0, "and never offered for sending");
    let events = Arc::new(Events::default());
    recover(&queue, &source(logs.path()), &events, report).await.expect("recover");
    assert_eq!(pending_records(&queue), 100, "its records are read again from the source");
    let counts = events.snapshot();
    assert_eq!((counts.chunks_set_aside, counts.ranges_recovered, counts.dead_unrecoverable), (1, 1, 0));
}

#[tokio::test]
async fn a_corrupt_chunk_whose_source_is_gone_becomes_an_unrecoverable_dead_letter() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let (_store, queue, report) = queue_with_a_corrupt_chunk(logs.path(), state.path());
    std::fs::remove_file(logs.path().join("app.log")).expect("delete the source");
    let events = Arc::new(Events::default());
    recover(&queue, &source(logs.path()), &events, report.clone()).await.expect("recover");
    let letters: Vec<_> = queue.dead_letters().map(|entry| entry.expect("read").1.expect("decodes")).collect();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, DeadLetterReason::Unrecoverable);
    assert_eq!(
        (letters[0].offset, letters[0].offset + letters[0].record_len),
        (report.missing[0].start, report.missing[0].end),
        "the dead letter names the lost range"
    );
    assert_eq!(events.snapshot().dead_unrecoverable, 1);
}

#[tokio::test]
async fn a_corrupt_chunk_of_a_file_rotated_by_rename_is_recovered_from_the_file_where_it_now_is() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let (_store, queue, report) = queue_with_a_corrupt_chunk(logs.path(), state.path());
    // logrotate's rename + create: the old name now holds a new file; the bytes are in app.log.1.
    std::fs::rename(logs.path().join("app.log"), logs.path().join("app.log.1")).expect("rotate");
    std::fs::write(logs.path().join("app.log"), "{\"seq\": 999}\n").expect("a new file at the old name");
    let events = Arc::new(Events::default());
    recover(&queue, &source(logs.path()), &events, report).await.expect("recover");
    assert_eq!(pending_records(&queue), 100, "its records are read again from the rotated file");
    let counts = events.snapshot();
    assert_eq!((counts.ranges_recovered, counts.dead_unrecoverable), (1, 0));
}

#[tokio::test]
async fn a_range_of_many_read_blocks_is_recovered_a_block_at_a_time_with_every_record_once() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let mut file = std::io::BufWriter::new(std::fs::File::create(logs.path().join("app.log")).expect("create"));
    let total = 12_000;
    for seq in 0..total {
        writeln!(file, "{{\"seq\": {seq}, \"padding\": \"{:0>100}\"}}", seq).expect("write");
    }
    file.flush().expect("flush");
    drop(file);
    let chunks = {
        let store = QueueStore::reopen_for_test(state.path());
        let (queue, _) = store.open_route("logs->sink", 1 << 30).expect("route");
        Tailer::new(source(logs.path()), 1 << 30, queue.clone(), Arc::new(Events::default())).pass().expect("pass");
        let mut seq = ChunkSeq(0);
        let mut chunks = 0;
        while let Some(stored) = queue.read_pending(seq, ChunkSeq(u64::MAX)).expect("read") {
            queue.flip_a_byte_of_pending_chunk(stored.seq);
            seq = ChunkSeq(stored.seq.0 + 1);
            chunks += 1;
        }
        chunks
    };
    assert!(chunks >= 4, "{chunks} chunks: the lost range spans several read blocks");
    let store = QueueStore::reopen_for_test(state.path());
    let (queue, report) = store.open_route("logs->sink", 1 << 30).expect("route");
    assert_eq!(report.missing.len(), 1, "one range, over every chunk: {:?}", report.missing);
    let events = Arc::new(Events::default());
    recover(&queue, &source(logs.path()), &events, report).await.expect("recover");
    assert_eq!(pending_records(&queue), total, "every record re-read once, lines across block edges included");
    assert_eq!(events.snapshot().dead_letters, 0);
}

/// Acknowledges every pending chunk at or after `next` whole, as a sink that takes everything
/// would. Returns the records acknowledged and the next sequence number to look at.
async fn acknowledge_everything_pending(queue: &RouteQueue, next: ChunkSeq) -> (usize, ChunkSeq) {
    let (acks, after) = queue.whole_acks_of_pending(next);
    if !acks.is_empty() {
        queue.acknowledge(&acks, &[]).expect("ack");
    }
    (acks.iter().map(|ack| ack.record_count as usize).sum(), after)
}

#[tokio::test]
async fn a_backlog_larger_than_the_read_ahead_window_is_read_as_acknowledgements_open_it_not_at_each_poll() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    // 40 windows of 256 KiB (one chunk); the file does not change while it is read, so nothing
    // but acknowledgements can wake the reader before its (hour-long) poll.
    let mut file = std::io::BufWriter::new(std::fs::File::create(logs.path().join("app.log")).expect("create"));
    let total = 80_000;
    for seq in 0..total {
        writeln!(file, "{{\"seq\": {seq}, \"padding\": \"{:0>100}\"}}", seq).expect("write");
    }
    file.flush().expect("flush");
    drop(file);
    let store = QueueStore::reopen_for_test(state.path());
    let (queue, _) = store.open_route("logs->sink", 1 << 30).expect("route");
    let settings = SourceSettings { poll_interval: Duration::from_secs(3600), ..source(logs.path()) };
    let limits = ReaderLimits { read_ahead_bytes: 256 * 1024, storage_stall_timeout: Duration::from_secs(60) };
    let stop = CancellationToken::new();
    let reader = tokio::spawn(run_reader(
        settings,
        limits,
        queue.clone(),
        Arc::new(Events::default()),
        ReadMode::Follow,
        stop.clone(),
        CancellationToken::new(),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (mut acknowledged, mut next) = (0, ChunkSeq(0));
    while acknowledged < total && std::time::Instant::now() < deadline {
        let (records, after) = acknowledge_everything_pending(&queue, next).await;
        (acknowledged, next) = (acknowledged + records, after);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    reader.await.expect("reader task").expect("reader");
    assert_eq!(acknowledged, total, "every record read and acknowledged without waiting for a poll");
}

#[tokio::test]
async fn a_reader_thread_that_panics_ends_its_route_with_an_error_not_as_if_it_had_finished() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let store = QueueStore::reopen_for_test(state.path());
    let (queue, _) = store.open_route("logs->sink", 1 << 30).expect("route");
    let settings = source(logs.path());
    crate::source::test_faults::panic_in_passes_of(&settings.paths[0]);
    let limits = ReaderLimits { read_ahead_bytes: 256 * 1024, storage_stall_timeout: Duration::from_secs(60) };
    let events = Arc::new(Events::default());
    let input_closed = CancellationToken::new();
    let ended = run_reader(settings, limits, queue, events.clone(), ReadMode::Follow, CancellationToken::new(), input_closed.clone()).await;
    assert!(matches!(ended, Err(PipelineError::Task(_))), "{ended:?}");
    assert!(input_closed.is_cancelled(), "the flusher still delivers what is queued, then stops");
    assert_eq!(events.snapshot().stage_failures, 1);
    assert!(PipelineError::Task(String::new()).exit_code() != 0);
}

/// Every line of every object a directory sink wrote under `root`.
fn lines_delivered_to(root: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("list output") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                folders.push(path);
            } else {
                lines.extend(std::fs::read_to_string(&path).expect("read object").lines().map(str::to_owned));
            }
        }
    }
    lines
}

#[tokio::test]
async fn a_chunk_found_damaged_while_running_is_reread_from_its_source_at_once_and_the_position_moves_past_it() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let mut file = std::io::BufWriter::new(std::fs::File::create(logs.path().join("app.log")).expect("create"));
    let total = 6_000;
    for seq in 0..total {
        writeln!(file, "{{\"seq\": {seq}, \"padding\": \"{:0>100}\"}}", seq).expect("write");
    }
    file.flush().expect("flush");
    drop(file);
    let store = QueueStore::reopen_for_test(state.path());
    let (queue, _) = store.open_route("logs->sink", 1 << 30).expect("route");
    let settings = source(logs.path());
    Tailer::new(settings.clone(), 1 << 30, queue.clone(), Arc::new(Events::default())).pass().expect("pass");
    queue.commit().expect("commit");
    // Damaged under the running daemon (sled does not fsync its blob files): found by the
    // flusher when it reads the chunk, not by a start-up.
    queue.flip_a_byte_of_pending_chunk(ChunkSeq(0));
    let text = format!(
        "data_dir = \"{}\"\n[sources.logs]\npaths = [\"{}/*.log\"]\n[sinks.sink]\ntype = \"directory\"\ninputs = [\"logs\"]\npath = \"{}\"\n",
        state.path().display(),
        logs.path().display(),
        out.path().display()
    );
    let config = Config::parse(&text, Path::new("test.toml")).expect("config");
    let sink_settings = config.sink_settings().remove(0);
    let sink = Arc::new(Sink::connect(&sink_settings).await.expect("sink"));
    let events = Arc::new(Events::default());
    let input_closed = CancellationToken::new();
    input_closed.cancel();
    let stopping = FlusherStop { stop: CancellationToken::new(), input_closed, shutdown_timeout: Duration::from_secs(5) };
    let flusher = Flusher::new(queue.clone(), settings, sink, sink_settings, events.clone(), stopping, Duration::from_secs(60));
    tokio::time::timeout(Duration::from_secs(60), flusher.run()).await.expect("delivers").expect("flusher");
    let mut seqs: Vec<u64> = lines_delivered_to(out.path())
        .iter()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("json")["seq"].as_u64().expect("seq"))
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..total).collect::<Vec<_>>(), "every record once, the damaged chunk's re-read from the file");
    let counts = events.snapshot();
    assert_eq!((counts.chunks_set_aside, counts.ranges_recovered), (1, 1));
    let file_size = std::fs::metadata(logs.path().join("app.log")).expect("size").len();
    assert_eq!(queue.stats().expect("stats").files[0].acked_offset, file_size, "the position is not frozen at the damaged chunk");
    drop((queue, store));
    let (_reopened, report) = QueueStore::reopen_for_test(state.path()).open_route("logs->sink", 1 << 30).expect("route");
    assert!(report.missing.is_empty(), "nothing is left to re-read at the next start: {:?}", report.missing);
}

#[tokio::test]
async fn a_dead_letter_of_a_recovered_range_is_not_stored_a_second_time() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    std::fs::write(logs.path().join("app.log"), "{\"seq\": 0}\nnot json\n{\"seq\": 2}\n").expect("write");
    {
        let store = QueueStore::reopen_for_test(state.path());
        let (queue, _) = store.open_route("logs->sink", 1 << 30).expect("route");
        Tailer::new(source(logs.path()), 1 << 30, queue.clone(), Arc::new(Events::default())).pass().expect("pass");
        assert_eq!(queue.dead_letters().count(), 1, "the invalid line is dead-lettered when read");
        queue.flip_a_byte_of_pending_chunk(ChunkSeq(0));
    }
    let store = QueueStore::reopen_for_test(state.path());
    let (queue, report) = store.open_route("logs->sink", 1 << 30).expect("route");
    let events = Arc::new(Events::default());
    recover(&queue, &source(logs.path()), &events, report).await.expect("recover");
    assert_eq!(pending_records(&queue), 2, "the valid records are re-read");
    assert_eq!(queue.dead_letters().count(), 1, "the invalid line keeps its one dead letter");
    assert_eq!(events.snapshot().dead_letters, 0, "and is not counted again");
}
