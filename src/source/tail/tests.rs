use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::LineFormat;
use crate::queue::chunk::decode_chunk;
use crate::queue::{ChunkSeq, QueueStore};

fn source(dir: &Path) -> SourceSettings {
    SourceSettings::for_test_folder(dir)
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
    let store = QueueStore::reopen_for_test(state);
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
    assert_each_once_in_file_order(&queued_seqs(&queue), &[0..150, 150..200]);
}

/// Every seq of `files` appears once, and the seqs of each file appear in their file's order
/// (files are read in turns, so lines of different files interleave).
fn assert_each_once_in_file_order(queued: &[u64], files: &[std::ops::Range<u64>]) {
    let mut sorted = queued.to_vec();
    sorted.sort_unstable();
    let expected: Vec<u64> = files.iter().flat_map(|range| range.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    assert_eq!(sorted, expected, "each line exactly once");
    for range in files {
        let of_file: Vec<u64> = queued.iter().copied().filter(|seq| range.contains(seq)).collect();
        assert!(of_file.windows(2).all(|pair| pair[0] < pair[1]), "lines of one file keep their order");
    }
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

/// Acknowledges every pending chunk, as a flusher would after delivering it.
fn acknowledge_everything(queue: &RouteQueue) {
    let (acks, _) = queue.whole_acks_of_pending(ChunkSeq(0));
    queue.acknowledge(&acks, &[]).expect("acknowledge");
}

/// Descriptors of this process open on files under `folder` (including deleted ones).
fn descriptors_open_under(folder: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else { return 0 };
    entries.flatten().filter_map(|entry| std::fs::read_link(entry.path()).ok()).filter(|target| target.starts_with(folder)).count()
}

#[test]
fn a_rename_in_the_middle_of_a_line_loses_and_doubles_nothing() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let live = logs.path().join("app.log");
    append_lines(&live, 0..10);
    std::fs::OpenOptions::new().append(true).open(&live).expect("open").write_all(b"{\"seq\": 10, \"pa").expect("half a line");
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut tailer = Tailer::new(source(logs.path()), 1 << 30, queue.clone(), Arc::new(Events::default()));
    tailer.pass().expect("pass");
    std::fs::rename(&live, logs.path().join("app.log.1")).expect("rename");
    std::fs::OpenOptions::new().append(true).open(logs.path().join("app.log.1")).expect("open").write_all(b"d\": \"\"}\n").expect("rest");
    append_lines(&live, 11..20);
    for _ in 0..3 {
        tailer.pass().expect("pass");
    }
    assert_each_once_in_file_order(&queued_seqs(&queue), &[0..11, 11..20]);
}

#[test]
fn a_deleted_file_is_released_and_a_thousand_rotate_and_delete_cycles_leak_no_descriptor() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let live = logs.path().join("app.log");
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut tailer = Tailer::new(source(logs.path()), 1 << 30, queue.clone(), Arc::new(Events::default()));
    for cycle in 0..1_000u64 {
        append_lines(&live, cycle * 3..cycle * 3 + 3);
        tailer.pass().expect("pass");
        let rotated = logs.path().join("app.log.1");
        std::fs::rename(&live, &rotated).expect("rotate");
        tailer.pass().expect("pass");
        std::fs::remove_file(&rotated).expect("delete");
        tailer.pass().expect("pass");
        if cycle % 100 == 99 {
            acknowledge_everything(&queue);
        }
    }
    tailer.pass().expect("pass");
    acknowledge_everything(&queue);
    assert!(tailer.open_descriptors() <= 1, "only the live file may be open: {}", tailer.open_descriptors());
    assert!(descriptors_open_under(logs.path()) <= 1, "descriptors leaked: {}", descriptors_open_under(logs.path()));
    assert!(queue.tracked_files() <= 1, "positions of deleted, delivered files are released: {}", queue.tracked_files());
}

#[test]
fn what_was_read_from_a_file_deleted_before_delivery_is_still_delivered() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let live = logs.path().join("app.log");
    append_lines(&live, 0..40);
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut tailer = Tailer::new(source(logs.path()), 1 << 30, queue.clone(), Arc::new(Events::default()));
    tailer.pass().expect("pass");
    std::fs::remove_file(&live).expect("delete");
    tailer.pass().expect("pass");
    assert_eq!(tailer.open_descriptors(), 0, "the handle is released once drained");
    assert_eq!(queued_seqs(&queue), (0..40).collect::<Vec<_>>(), "the queue still holds every line for delivery");
    assert_eq!(queue.tracked_files(), 1, "its position stays until those lines are acknowledged");
    acknowledge_everything(&queue);
    assert_eq!(queue.tracked_files(), 0);
}

#[test]
fn a_file_rewritten_under_the_same_inode_while_stopped_is_read_from_its_head() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let live = logs.path().join("app.log");
    append_lines(&live, 0..30);
    {
        let (_store, queue) = open_queue(state.path(), 1 << 30);
        Tailer::new(source(logs.path()), 1 << 30, queue, Arc::new(Events::default())).pass().expect("pass");
    }
    // Same inode, new first bytes: as when a deleted file's inode is reused.
    let file = std::fs::OpenOptions::new().write(true).open(&live).expect("open");
    file.set_len(0).expect("truncate");
    drop(file);
    append_lines(&live, 1000..1050);
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut tailer = Tailer::new(source(logs.path()), 1 << 30, queue.clone(), Arc::new(Events::default()));
    tailer.pass().expect("pass");
    let seqs = queued_seqs(&queue);
    assert_eq!(&seqs[seqs.len() - 50..], &(1000..1050).collect::<Vec<_>>()[..], "the new content from its first line");
}

#[test]
fn without_read_from_head_files_present_at_start_are_read_from_their_end_and_new_files_from_their_head() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    append_lines(&logs.path().join("old.log"), 0..10);
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut settings = source(logs.path());
    settings.read_from_head = false;
    let mut tailer = Tailer::new(settings, 1 << 30, queue.clone(), Arc::new(Events::default()));
    tailer.pass().expect("pass");
    append_lines(&logs.path().join("old.log"), 10..15);
    append_lines(&logs.path().join("new.log"), 100..105);
    tailer.pass().expect("pass");
    tailer.pass().expect("pass");
    assert_each_once_in_file_order(&queued_seqs(&queue), &[10..15, 100..105]);
}

#[test]
fn empty_files_and_lines_without_their_newline_wait_until_they_are_complete() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let live = logs.path().join("app.log");
    std::fs::write(&live, b"").expect("empty file");
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut tailer = Tailer::new(source(logs.path()), 1 << 30, queue.clone(), Arc::new(Events::default()));
    tailer.pass().expect("pass");
    std::fs::write(&live, b"{\"seq\": 0}\n{\"seq\": 1").expect("write");
    tailer.pass().expect("pass");
    assert_eq!(queued_seqs(&queue), vec![0], "the unfinished line waits");
    std::fs::OpenOptions::new().append(true).open(&live).expect("open").write_all(b"}\n").expect("finish it");
    tailer.pass().expect("pass");
    assert_eq!(queued_seqs(&queue), vec![0, 1]);
}

#[test]
fn a_thousand_files_are_read_with_a_bounded_number_open() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    for file in 0..1_000u64 {
        append_lines(&logs.path().join(format!("f{file:04}.log")), file * 10..file * 10 + 5);
    }
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut settings = source(logs.path());
    settings.max_open_files = 50;
    let mut tailer = Tailer::new(settings, 1 << 30, queue.clone(), Arc::new(Events::default()));
    tailer.pass().expect("pass");
    assert!(tailer.open_descriptors() <= 50, "{} open", tailer.open_descriptors());
    for file in 0..1_000u64 {
        append_lines(&logs.path().join(format!("f{file:04}.log")), file * 10 + 5..file * 10 + 10);
    }
    for _ in 0..3 {
        tailer.pass().expect("pass");
        assert!(tailer.open_descriptors() <= 50, "{} open", tailer.open_descriptors());
    }
    let files: Vec<std::ops::Range<u64>> = (0..1_000u64).map(|file| file * 10..file * 10 + 10).collect();
    assert_each_once_in_file_order(&queued_seqs(&queue), &files);
}

#[test]
fn a_hot_file_does_not_starve_the_others() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    append_lines(&logs.path().join("a-hot.log"), 0..200_000);
    for file in 1..=5u64 {
        append_lines(&logs.path().join(format!("b{file}.log")), file * 1_000_000..file * 1_000_000 + 10);
    }
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut tailer = Tailer::new(source(logs.path()), 1 << 30, queue.clone(), Arc::new(Events::default()));
    let outcome = tailer.pass().expect("pass");
    assert!(!outcome.caught_up, "the hot file is not finished in one pass");
    let seqs = queued_seqs(&queue);
    for file in 1..=5u64 {
        assert!(seqs.contains(&(file * 1_000_000 + 9)), "file b{file} was read in the first pass");
    }
}

#[test]
fn excluded_paths_are_not_read() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    append_lines(&logs.path().join("app.log"), 0..3);
    append_lines(&logs.path().join("debug.log"), 100..103);
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut settings = source(logs.path());
    settings.exclude = vec![logs.path().join("debug*").to_string_lossy().into_owned()];
    let mut tailer = Tailer::new(settings, 1 << 30, queue.clone(), Arc::new(Events::default()));
    tailer.pass().expect("pass");
    assert_eq!(queued_seqs(&queue), vec![0, 1, 2]);
}

#[test]
fn a_full_queue_pauses_reading_of_a_rotated_file_until_deliveries_free_space() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let live = logs.path().join("app.log");
    append_lines(&live, 0..1);
    let max_queue_bytes = 256 * 1024;
    let (_store, queue) = open_queue(state.path(), max_queue_bytes);
    let mut tailer = Tailer::new(source(logs.path()), 64 * 1024, queue.clone(), Arc::new(Events::default()));
    tailer.pass().expect("pass");
    append_lines(&live, 1..20_000);
    std::fs::rename(&live, logs.path().join("app.log.1")).expect("rotate");
    let mut outcome = tailer.pass().expect("pass");
    for _ in 0..100 {
        if outcome.queue_full {
            break;
        }
        outcome = tailer.pass().expect("pass");
    }
    assert!(outcome.queue_full, "the queue fills up");
    assert!(queue.pending_bytes() >= max_queue_bytes, "a rotated file fills the queue, not just the read-ahead window");
    assert!(queue.pending_bytes() < max_queue_bytes + 2 * READ_BLOCK as u64, "but not beyond it: {}", queue.pending_bytes());
    assert_eq!(tailer.pass().expect("pass").bytes_read, 0, "reading pauses while the queue is full");
    let mut delivered = queued_seqs(&queue);
    for _ in 0..1_000 {
        if delivered.len() >= 20_000 {
            break;
        }
        acknowledge_everything(&queue);
        tailer.pass().expect("pass");
        let now = queued_seqs(&queue);
        assert!(!now.is_empty(), "reading resumed after deliveries");
        delivered.extend(now);
    }
    delivered.sort_unstable();
    delivered.dedup();
    assert_eq!(delivered, (0..20_000).collect::<Vec<_>>(), "nothing dropped");
}

#[test]
fn a_file_rotated_while_tailhose_was_stopped_is_drained_after_restart() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let live = logs.path().join("app.log");
    append_lines(&live, 0..20);
    {
        let (_store, queue) = open_queue(state.path(), 1 << 30);
        Tailer::new(source(logs.path()), 1 << 30, queue, Arc::new(Events::default())).pass().expect("pass");
    }
    append_lines(&live, 20..30);
    std::fs::rename(&live, logs.path().join("app.log.1")).expect("rotate while stopped");
    append_lines(&live, 30..35);
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut tailer = Tailer::new(source(logs.path()), 1 << 30, queue.clone(), Arc::new(Events::default()));
    for _ in 0..3 {
        tailer.pass().expect("pass");
    }
    assert_each_once_in_file_order(&queued_seqs(&queue), &[0..30, 30..35]);
    assert_eq!(tailer.open_descriptors(), 1, "the rotated file is closed once drained");
}

#[test]
fn files_not_written_for_longer_than_ignore_older_than_are_not_read() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    append_lines(&logs.path().join("stale.log"), 0..3);
    append_lines(&logs.path().join("fresh.log"), 100..103);
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    std::fs::File::options().write(true).open(logs.path().join("stale.log")).expect("open").set_modified(two_days_ago).expect("set mtime");
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut settings = source(logs.path());
    settings.ignore_older_than = Some(Duration::from_secs(24 * 3600));
    let mut tailer = Tailer::new(settings, 1 << 30, queue.clone(), Arc::new(Events::default()));
    tailer.pass().expect("pass");
    assert_eq!(queued_seqs(&queue), vec![100, 101, 102]);
}

#[test]
fn the_position_of_a_file_deleted_while_stopped_is_released_once_delivered() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let live = logs.path().join("app.log");
    append_lines(&live, 0..5);
    {
        let (_store, queue) = open_queue(state.path(), 1 << 30);
        Tailer::new(source(logs.path()), 1 << 30, queue, Arc::new(Events::default())).pass().expect("pass");
    }
    std::fs::remove_file(&live).expect("delete while stopped");
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut tailer = Tailer::new(source(logs.path()), 1 << 30, queue.clone(), Arc::new(Events::default()));
    tailer.pass().expect("pass");
    assert_eq!(queued_seqs(&queue), (0..5).collect::<Vec<_>>(), "what was read is still delivered");
    acknowledge_everything(&queue);
    assert_eq!(queue.tracked_files(), 0);
    assert!(queue.stored_file_states().expect("states").is_empty());
}

#[test]
fn an_over_long_line_in_a_file_is_dead_lettered_with_its_offset_and_reading_resynchronises() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let live = logs.path().join("app.log");
    append_lines(&live, 0..3);
    let long_line_at = std::fs::metadata(&live).expect("stat").len();
    let long_line = format!("{{\"seq\": 99, \"pad\": \"{}\"}}\n", "y".repeat(3 * 1024 * 1024));
    std::fs::OpenOptions::new().append(true).open(&live).expect("open").write_all(long_line.as_bytes()).expect("write");
    append_lines(&live, 3..6);
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut settings = source(logs.path());
    settings.max_line_bytes = 1024 * 1024;
    let mut tailer = Tailer::new(settings, 1 << 30, queue.clone(), Arc::new(Events::default()));
    tailer.pass().expect("pass");
    assert_eq!(queued_seqs(&queue), (0..6).collect::<Vec<_>>(), "the lines around it are delivered");
    let letters: Vec<_> = queue.dead_letters().map(|entry| entry.expect("read").1.expect("decodes")).collect();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, crate::queue::DeadLetterReason::LineTooLong);
    assert_eq!((letters[0].offset, letters[0].record_len), (long_line_at, long_line.len() as u64 - 1));
    assert!(letters[0].record.len() <= 64 * 1024, "only a sample is kept in memory and in the dead letter");
}

#[test]
fn raw_format_delivers_lines_that_are_not_json_or_utf8_from_a_file() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    std::fs::write(logs.path().join("app.log"), b"plain text\n\xff\xfe binary\n").expect("write");
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut settings = source(logs.path());
    settings.format = LineFormat::Raw;
    let mut tailer = Tailer::new(settings, 1 << 30, queue.clone(), Arc::new(Events::default()));
    tailer.pass().expect("pass");
    let stored = queue.read_pending(ChunkSeq(0), ChunkSeq(u64::MAX)).expect("read").expect("a chunk");
    let chunk = decode_chunk(stored.seq, &stored.bytes).expect("valid");
    let records: Vec<&[u8]> = chunk.records().collect();
    assert_eq!(records, vec![&b"plain text"[..], &b"\xff\xfe binary"[..]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_created_and_rotated_away_while_reading_is_paused_is_still_read() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    append_lines(&logs.path().join("a.log"), 0..2_000);
    let max_queue_bytes = 64 * 1024;
    let (_store, queue) = open_queue(state.path(), max_queue_bytes);
    let limits = crate::pipeline::ReaderLimits { read_ahead_bytes: max_queue_bytes, storage_stall_timeout: Duration::from_secs(30) };
    let (stop, input_closed) = (tokio_util::sync::CancellationToken::new(), tokio_util::sync::CancellationToken::new());
    let reader = tokio::spawn(crate::pipeline::run_reader(
        source(logs.path()),
        limits,
        queue.clone(),
        Arc::new(Events::default()),
        crate::pipeline::ReadMode::Follow,
        stop.clone(),
        input_closed,
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while queue.has_space() {
        assert!(std::time::Instant::now() < deadline, "the queue fills up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // While reading is paused: a new file appears and is rotated out of the glob.
    let rotated = logs.path().join("b.log");
    append_lines(&rotated, 10_000..10_100);
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::rename(&rotated, logs.path().join("b.log.1")).expect("rotate");
    let mut seen = Vec::new();
    while !(10_000..10_100).all(|seq| seen.contains(&seq)) {
        assert!(std::time::Instant::now() < deadline + Duration::from_secs(20), "b.log's records were never read");
        seen.extend(queued_seqs(&queue));
        let queue = queue.clone();
        tokio::task::spawn_blocking(move || acknowledge_everything(&queue)).await.expect("ack");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    reader.await.expect("reader task").expect("reader");
}

/// Every seq queued over `passes` passes, acknowledging everything after each so the queue
/// never stays full.
fn drain(tailer: &mut Tailer, queue: &RouteQueue, passes: usize) -> Vec<u64> {
    let mut delivered = Vec::new();
    for _ in 0..passes {
        tailer.pass().expect("pass");
        delivered.extend(queued_seqs(queue));
        acknowledge_everything(queue);
    }
    delivered
}

#[test]
fn a_rotated_file_that_grew_while_a_full_queue_stopped_passes_is_read_to_its_end_before_it_is_closed() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let live = logs.path().join("app.log");
    let rotated = logs.path().join("app.log.1");
    append_lines(&live, 0..10);
    let (_store, queue) = open_queue(state.path(), 64 * 1024);
    let mut tailer = Tailer::new(source(logs.path()), 1 << 30, queue.clone(), Arc::new(Events::default()));
    tailer.pass().expect("pass");
    // Another file fills the queue: passes now stop before they reach any other file.
    append_lines(&logs.path().join("other.log"), 10_000..12_000);
    for _ in 0..100 {
        if tailer.pass().expect("pass").queue_full {
            break;
        }
    }
    assert!(!queue.has_space(), "the queue is full");
    // Rotated while reading is paused, and the writer finishes its last lines into it.
    std::fs::rename(&live, &rotated).expect("rotate");
    append_lines(&rotated, 10..20);
    tailer.pass().expect("pass");
    let mut delivered = queued_seqs(&queue);
    acknowledge_everything(&queue);
    delivered.extend(drain(&mut tailer, &queue, 20));
    delivered.sort_unstable();
    delivered.dedup();
    let of_the_rotated_file: Vec<u64> = delivered.iter().copied().filter(|&seq| seq < 10_000).collect();
    assert_eq!(of_the_rotated_file, (0..20).collect::<Vec<_>>(), "the lines written after its last read are not lost");
}

#[test]
fn without_read_from_head_a_file_rewritten_under_the_same_inode_while_stopped_is_read_from_its_head() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let live = logs.path().join("app.log");
    append_lines(&live, 0..30);
    let mut settings = source(logs.path());
    settings.read_from_head = false;
    {
        let (_store, queue) = open_queue(state.path(), 1 << 30);
        let mut tailer = Tailer::new(settings.clone(), 1 << 30, queue.clone(), Arc::new(Events::default()));
        tailer.pass().expect("pass");
        append_lines(&live, 30..40);
        tailer.pass().expect("pass");
        assert_eq!(queued_seqs(&queue), (30..40).collect::<Vec<_>>(), "started at its end, then followed");
    }
    // Truncated and written again while tailhose was stopped (copytruncate during a restart).
    let file = std::fs::OpenOptions::new().write(true).open(&live).expect("open");
    file.set_len(0).expect("truncate");
    drop(file);
    append_lines(&live, 1000..1050);
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut tailer = Tailer::new(settings, 1 << 30, queue.clone(), Arc::new(Events::default()));
    tailer.pass().expect("pass");
    let seqs = queued_seqs(&queue);
    assert!(seqs.len() >= 50, "{seqs:?}");
    assert_eq!(&seqs[seqs.len() - 50..], &(1000..1050).collect::<Vec<_>>()[..], "what was written while stopped, from its first line");
}

#[test]
fn a_copytruncate_while_reading_waits_for_the_window_is_noticed_even_when_the_file_grew_past_the_old_offset() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let live = logs.path().join("app.log");
    append_lines(&live, 0..20_000);
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let events = Arc::new(Events::default());
    let window = 256 * 1024;
    let mut tailer = Tailer::new(source(logs.path()), window, queue.clone(), events.clone());
    // The sink is down: reading stops at the read-ahead window, a few thousand lines in.
    tailer.pass().expect("pass");
    assert_eq!(tailer.pass().expect("pass").bytes_read, 0, "reading waits for the window");
    let read_before = queued_seqs(&queue);
    let offset = *read_before.last().expect("some lines read");
    assert!(offset < 10_000, "{offset}");
    // logrotate's copytruncate, then the application writes on, well past the old read offset.
    std::fs::copy(&live, logs.path().join("app.log.1")).expect("copy");
    std::fs::OpenOptions::new().write(true).open(&live).expect("open").set_len(0).expect("truncate");
    append_lines(&live, 100_000..120_000);
    // The sink comes back.
    acknowledge_everything(&queue);
    let mut delivered = drain(&mut tailer, &queue, 40);
    delivered.sort_unstable();
    let new_lines: Vec<u64> = delivered.iter().copied().filter(|&seq| seq >= 100_000).collect();
    assert_eq!(new_lines, (100_000..120_000).collect::<Vec<_>>(), "every line written after the truncation, once");
    assert_eq!(events.snapshot().dead_invalid_json, 0, "no read starts in the middle of a line");
    assert_eq!(events.snapshot().files_truncated, 1);
}

#[test]
fn the_position_of_a_file_before_its_truncation_is_released_once_what_was_read_is_delivered() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let live = logs.path().join("app.log");
    append_lines(&live, 0..50);
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut tailer = Tailer::new(source(logs.path()), 1 << 30, queue.clone(), Arc::new(Events::default()));
    for rotation in 0..5 {
        tailer.pass().expect("pass");
        acknowledge_everything(&queue);
        // copytruncate, and new lines.
        std::fs::OpenOptions::new().write(true).open(&live).expect("open").set_len(0).expect("truncate");
        append_lines(&live, 1_000 * (rotation + 1)..1_000 * (rotation + 1) + 10);
    }
    tailer.pass().expect("pass");
    acknowledge_everything(&queue);
    assert_eq!(queue.tracked_files(), 1, "only the file as it is now keeps a position");
}

/// A folder of logs on its own filesystem (a tmpfs) that can be unmounted from where tailhose
/// looks and mounted there again with its files intact: `backing` holds the files, and is
/// bind-mounted at `at`. Needs root (CI runs as root); both are unmounted when dropped.
struct LogVolume {
    backing: std::path::PathBuf,
    at: std::path::PathBuf,
}

impl LogVolume {
    fn mount(root: &Path) -> LogVolume {
        let volume = LogVolume { backing: root.join("backing"), at: root.join("logs") };
        std::fs::create_dir_all(&volume.backing).expect("backing folder");
        std::fs::create_dir_all(&volume.at).expect("mount point");
        run_mount(&["-t", "tmpfs", "tmpfs"], &volume.backing);
        volume.attach();
        volume
    }

    fn attach(&self) {
        let status = std::process::Command::new("mount").arg("--bind").arg(&self.backing).arg(&self.at).status().expect("mount runs");
        assert!(status.success(), "bind mount failed: this test needs root");
    }

    /// Lazily, as `umount -l` does to a busy volume: open files stay readable.
    fn detach(&self) {
        let status = std::process::Command::new("umount").arg("-l").arg(&self.at).status().expect("umount runs");
        assert!(status.success(), "umount failed");
    }
}

fn run_mount(args: &[&str], path: &Path) {
    let status = std::process::Command::new("mount").args(args).arg(path).status().expect("mount runs");
    assert!(status.success(), "mounting a tmpfs failed: this test needs root");
}

impl Drop for LogVolume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.at).status();
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.backing).status();
    }
}

#[test]
fn a_stored_position_on_a_volume_not_mounted_at_start_up_is_kept_and_resumed_once_it_is_mounted() {
    let root = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let volume = LogVolume::mount(root.path());
    append_lines(&volume.backing.join("app.log"), 0..100);
    {
        let (_store, queue) = open_queue(state.path(), 1 << 30);
        Tailer::new(source(&volume.at), 1 << 30, queue.clone(), Arc::new(Events::default())).pass().expect("pass");
        assert_eq!(queued_seqs(&queue).len(), 100);
        acknowledge_everything(&queue);
    }
    volume.detach();
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut tailer = Tailer::new(source(&volume.at), 1 << 30, queue.clone(), Arc::new(Events::default()));
    tailer.pass().expect("pass at start-up, the volume not mounted yet");
    assert_eq!(queue.stored_file_states().expect("states").len(), 1, "the position is kept: the file cannot be looked for");
    append_lines(&volume.backing.join("app.log"), 100..150);
    volume.attach();
    tailer.pass().expect("pass");
    tailer.pass().expect("pass");
    assert_eq!(queued_seqs(&queue), (100..150).collect::<Vec<_>>(), "reading resumes at the stored position, nothing read twice");
}

#[test]
fn a_file_whose_volume_is_unmounted_while_it_is_read_is_not_closed_as_rotated_and_nothing_is_read_twice() {
    let root = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let volume = LogVolume::mount(root.path());
    append_lines(&volume.backing.join("app.log"), 0..100);
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut tailer = Tailer::new(source(&volume.at), 1 << 30, queue.clone(), Arc::new(Events::default()));
    tailer.pass().expect("pass");
    acknowledge_everything(&queue);
    volume.detach();
    for _ in 0..3 {
        tailer.pass().expect("pass while the volume is away");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(tailer.open_descriptors(), 1, "a file that cannot be looked for is not taken for rotated away");
    append_lines(&volume.backing.join("app.log"), 100..150);
    volume.attach();
    for _ in 0..3 {
        tailer.pass().expect("pass");
    }
    assert_eq!(queued_seqs(&queue), (100..150).collect::<Vec<_>>(), "the file goes on from its position, not again from its head");
}

#[test]
fn a_file_read_through_a_symbolic_link_to_another_filesystem_is_closed_once_deleted() {
    // As Kubernetes' /var/log/containers/*.log links point at the pods' logs: here on a tmpfs.
    let root = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let logs = root.path().join("containers");
    std::fs::create_dir_all(&logs).expect("links folder");
    let volume = LogVolume::mount(root.path());
    let target = volume.backing.join("0.log");
    append_lines(&target, 0..10);
    std::os::unix::fs::symlink(&target, logs.join("pod.log")).expect("link");
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut tailer = Tailer::new(source(&logs), 1 << 30, queue.clone(), Arc::new(Events::default()));
    tailer.pass().expect("pass");
    assert_eq!(queued_seqs(&queue), (0..10).collect::<Vec<_>>());
    std::fs::remove_file(logs.join("pod.log")).expect("unlink");
    std::fs::remove_file(&target).expect("delete the log");
    for _ in 0..3 {
        tailer.pass().expect("pass");
    }
    assert_eq!(tailer.open_descriptors(), 0, "a deleted file is closed, not kept as one that cannot be looked for");
}

/// Every record queued so far, as text, in queue order.
fn queued_texts(queue: &RouteQueue) -> Vec<String> {
    let mut texts = Vec::new();
    let mut next = ChunkSeq(0);
    while let Some(stored) = queue.read_pending(next, ChunkSeq(u64::MAX)).expect("read") {
        next = ChunkSeq(stored.seq.0 + 1);
        let chunk = decode_chunk(stored.seq, &stored.bytes).expect("valid");
        texts.extend(chunk.records().map(|record| String::from_utf8_lossy(record).into_owned()));
    }
    texts
}

/// A raw source whose records begin at lines starting with a digit.
fn multiline_source(dir: &Path) -> SourceSettings {
    let multiline = crate::source::multiline::Multiline {
        rule: crate::source::multiline::MultilineRule::Start(regex::bytes::Regex::new("^[0-9]").expect("pattern")),
        flush_timeout: Duration::from_secs(3600),
        max_lines: 100,
        max_bytes: 1 << 20,
    };
    SourceSettings { format: LineFormat::Raw, multiline: Some(Arc::new(multiline)), ..source(dir) }
}

#[test]
fn a_record_in_progress_when_its_file_is_truncated_is_queued_not_dropped() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    let live = logs.path().join("app.log");
    std::fs::write(&live, "1 first\n  more\n2 second\n  at a\n").expect("write");
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut tailer = Tailer::new(multiline_source(logs.path()), 1 << 30, queue.clone(), Arc::new(Events::default()));
    tailer.pass().expect("pass");
    assert_eq!(queued_texts(&queue), ["1 first\n  more"], "the second record may still grow");
    // copytruncate: the old bytes are copied out of the glob, the file starts again.
    std::fs::OpenOptions::new().write(true).open(&live).expect("open").set_len(0).expect("truncate");
    std::fs::write(&live, "3 third\n").expect("write");
    tailer.pass().expect("pass");
    assert_eq!(queued_texts(&queue), ["1 first\n  more", "2 second\n  at a"]);
}

#[test]
fn with_records_ended_at_file_end_a_files_last_record_is_queued_once_it_is_read() {
    let logs = tempfile::tempdir().expect("tempdir");
    let state = tempfile::tempdir().expect("tempdir");
    std::fs::write(logs.path().join("app.log"), "1 first\n  more\n2 last\n  at a\n").expect("write");
    let (_store, queue) = open_queue(state.path(), 1 << 30);
    let mut tailer =
        Tailer::new(multiline_source(logs.path()), 1 << 30, queue.clone(), Arc::new(Events::default())).ending_records_at_file_end();
    let outcome = tailer.pass().expect("pass");
    assert!(outcome.caught_up);
    assert_eq!(queued_texts(&queue), ["1 first\n  more", "2 last\n  at a"]);
}
