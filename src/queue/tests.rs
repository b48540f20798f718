use super::*;

fn file(inode: u64) -> FileIdentity {
    FileIdentity { device: 1, inode, fingerprint_len: 10, fingerprint: 99 }
}

fn draft(file_id: FileIdentity, start: u64, records: &[&str]) -> ChunkDraft {
    let mut draft = ChunkDraft::new(file_id, b"/logs/a.log".to_vec(), start);
    for record in records {
        draft.push_record(record.as_bytes());
        draft.meta.end_offset += record.len() as u64 + 1;
    }
    draft
}

fn open(dir: &Path) -> (RouteQueue, recovery::RecoveryReport) {
    let store = QueueStore::reopen_for_test(dir);
    store.open_route("a->b", 1 << 30).expect("open route")
}

fn ack_all(queue: &RouteQueue, seq: ChunkSeq, draft: &ChunkDraft, acked_records: u32) -> ChunkAck {
    let stored = queue.read_pending(seq, ChunkSeq(seq.0 + 1)).expect("read").expect("present");
    ChunkAck {
        seq,
        file: draft.meta.file,
        start_offset: draft.meta.start_offset,
        stored_len: stored.bytes.len() as u64,
        acked_records,
        record_count: draft.meta.record_count,
    }
}

#[test]
fn appended_chunks_are_visible_to_the_flusher_only_after_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, _) = open(dir.path());
    let committed = queue.committed();
    let seq = queue.append(&draft(file(1), 0, &["{}"]), &[], ReadProgress::Advance).expect("append");
    assert_eq!(*committed.borrow(), ChunkSeq(0), "not committed yet");
    queue.commit().expect("commit");
    assert_eq!(*committed.borrow(), ChunkSeq(seq.0 + 1));
    let stored = queue.read_pending(ChunkSeq(0), *committed.borrow()).expect("read").expect("a chunk");
    assert_eq!(stored.seq, seq);
    assert_eq!(stored.acked_records, 0);
}

#[tokio::test]
async fn a_fully_acknowledged_chunk_is_deleted_and_its_file_position_advances() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = draft(file(1), 0, &["{\"a\":1}", "{\"a\":2}"]);
    let second = draft(file(1), first.meta.end_offset, &["{\"a\":3}"]);
    {
        let (queue, _) = open(dir.path());
        let seq1 = queue.append(&first, &[], ReadProgress::Advance).expect("append");
        let seq2 = queue.append(&second, &[], ReadProgress::Advance).expect("append");
        queue.commit().expect("commit");
        let ack = ack_all(&queue, seq1, &first, 2);
        queue.acknowledge(&[ack], &[]).await.expect("ack");
        let stats = queue.stats().expect("stats");
        assert_eq!(stats.pending_chunks, 1);
        assert_eq!(stats.files[0].acked_offset, first.meta.end_offset);
        assert_eq!(stats.files[0].queued_offset, second.meta.end_offset);
        assert_eq!(queue.read_pending(ChunkSeq(0), ChunkSeq(u64::MAX)).expect("read").map(|stored| stored.seq), Some(seq2));
    }
    let (reopened, report) = open(dir.path());
    assert!(report.missing.is_empty() && report.set_aside.is_empty());
    let stats = reopened.stats().expect("stats");
    assert_eq!((stats.pending_chunks, stats.files[0].acked_offset), (1, first.meta.end_offset));
}

#[tokio::test]
async fn a_partly_acknowledged_chunk_resumes_after_its_acknowledged_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chunk = draft(file(1), 0, &["{\"a\":1}", "{\"a\":2}", "{\"a\":3}"]);
    {
        let (queue, _) = open(dir.path());
        let seq = queue.append(&chunk, &[], ReadProgress::Advance).expect("append");
        queue.commit().expect("commit");
        let ack = ack_all(&queue, seq, &chunk, 2);
        queue.acknowledge(&[ack], &[]).await.expect("ack");
        assert_eq!(queue.stats().expect("stats").files[0].acked_offset, 0, "position waits for the whole chunk");
    }
    let (reopened, _) = open(dir.path());
    let stored = reopened.read_pending(ChunkSeq(0), ChunkSeq(u64::MAX)).expect("read").expect("still pending");
    assert_eq!(stored.acked_records, 2);
}

#[test]
fn a_chunk_that_fails_verification_is_set_aside_and_its_range_reported_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = draft(file(1), 0, &["{\"a\":1}"]);
    let second = draft(file(1), first.meta.end_offset, &["{\"a\":2}"]);
    {
        let (queue, _) = open(dir.path());
        let seq = queue.append(&first, &[], ReadProgress::Advance).expect("append");
        queue.append(&second, &[], ReadProgress::Advance).expect("append");
        queue.commit().expect("commit");
        queue.flip_a_byte_of_pending_chunk(seq);
    }
    let (reopened, report) = open(dir.path());
    assert_eq!(report.set_aside.len(), 1);
    assert_eq!(report.set_aside[0].error.code(), "checksum_mismatch");
    assert_eq!(
        report.missing,
        vec![recovery::MissingRange { file: file(1), path: b"/logs/a.log".to_vec(), start: 0, end: first.meta.end_offset }]
    );
    let stats = reopened.stats().expect("stats");
    assert_eq!((stats.pending_chunks, stats.set_aside_chunks), (1, 1));
}

#[tokio::test]
async fn dead_letters_are_stored_with_the_chunk_that_skips_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, _) = open(dir.path());
    let letter = DeadLetter {
        reason: DeadLetterReason::InvalidJson,
        detail: "expected value".into(),
        file: file(1),
        path: b"/logs/a.log".to_vec(),
        offset: 8,
        record_len: 5,
        record: b"{bad}".to_vec(),
        recorded_at_ms: 0,
    };
    queue.append(&draft(file(1), 0, &["{}"]), std::slice::from_ref(&letter), ReadProgress::Advance).expect("append");
    let stored: Vec<DeadLetter> = queue.dead_letters().map(|entry| entry.expect("read").1.expect("decodes")).collect();
    assert_eq!(stored, vec![letter]);
}

#[tokio::test]
async fn the_queue_reports_full_at_max_queue_bytes_and_frees_space_on_acknowledgement() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = QueueStore::reopen_for_test(dir.path());
    let (queue, _) = store.open_route("a->b", 100).expect("open route");
    let big = "x".repeat(200);
    let chunk = draft(file(1), 0, &[&big]);
    let seq = queue.append(&chunk, &[], ReadProgress::Advance).expect("append");
    queue.commit().expect("commit");
    assert!(!queue.has_space());
    let waiter = tokio::spawn({
        let queue = queue.clone();
        async move { queue.wait_for_space().await }
    });
    let ack = ack_all(&queue, seq, &chunk, 1);
    queue.acknowledge(&[ack], &[]).await.expect("ack");
    tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.expect("reader resumes").expect("task");
    assert!(queue.has_space());
}

#[tokio::test]
async fn sequence_numbers_are_not_reused_after_the_queue_empties() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chunk = draft(file(1), 0, &["{}"]);
    let first = {
        let (queue, _) = open(dir.path());
        let seq = queue.append(&chunk, &[], ReadProgress::Advance).expect("append");
        queue.commit().expect("commit");
        let ack = ack_all(&queue, seq, &chunk, 1);
        queue.acknowledge(&[ack], &[]).await.expect("ack");
        seq
    };
    let (queue, _) = open(dir.path());
    let second = queue.append(&draft(file(1), chunk.meta.end_offset, &["{}"]), &[], ReadProgress::Advance).expect("append");
    assert!(second > first, "{second} after {first}");
}
