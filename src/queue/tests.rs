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

#[test]
fn a_fully_acknowledged_chunk_is_deleted_and_its_file_position_advances() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = draft(file(1), 0, &["{\"a\":1}", "{\"a\":2}"]);
    let second = draft(file(1), first.meta.end_offset, &["{\"a\":3}"]);
    {
        let (queue, _) = open(dir.path());
        let seq1 = queue.append(&first, &[], ReadProgress::Advance).expect("append");
        let seq2 = queue.append(&second, &[], ReadProgress::Advance).expect("append");
        queue.commit().expect("commit");
        let ack = ack_all(&queue, seq1, &first, 2);
        queue.acknowledge(&[ack], &[]).expect("ack");
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

#[test]
fn a_partly_acknowledged_chunk_resumes_after_its_acknowledged_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chunk = draft(file(1), 0, &["{\"a\":1}", "{\"a\":2}", "{\"a\":3}"]);
    {
        let (queue, _) = open(dir.path());
        let seq = queue.append(&chunk, &[], ReadProgress::Advance).expect("append");
        queue.commit().expect("commit");
        let ack = ack_all(&queue, seq, &chunk, 2);
        queue.acknowledge(&[ack], &[]).expect("ack");
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

#[test]
fn inspecting_a_route_writes_nothing_and_leaves_a_chunk_that_fails_verification_to_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = draft(file(1), 0, &["{\"a\":1}"]);
    {
        let (queue, _) = open(dir.path());
        let seq = queue.append(&first, &[], ReadProgress::Advance).expect("append");
        queue.commit().expect("commit");
        queue.flip_a_byte_of_pending_chunk(seq);
    }
    for _ in 0..2 {
        let store = QueueStore::reopen_for_test(dir.path());
        let (inspected, report) = store.inspect_route("a->b").expect("inspect");
        assert_eq!(report.set_aside.len(), 1, "inspection reports what start-up will set aside");
        assert_eq!(inspected.stats().expect("stats").set_aside_chunks, 0, "and sets nothing aside itself");
    }
    let (reopened, report) = open(dir.path());
    assert_eq!(report.set_aside.len(), 1, "start-up still finds it, so its report and counters are not lost");
    assert_eq!(reopened.stats().expect("stats").set_aside_chunks, 1);
}

#[test]
fn dead_letters_are_stored_with_the_chunk_that_skips_them() {
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
    queue.acknowledge(&[ack], &[]).expect("ack");
    tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.expect("reader resumes").expect("task");
    assert!(queue.has_space());
}

#[test]
fn sequence_numbers_are_not_reused_after_the_queue_empties() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chunk = draft(file(1), 0, &["{}"]);
    let first = {
        let (queue, _) = open(dir.path());
        let seq = queue.append(&chunk, &[], ReadProgress::Advance).expect("append");
        queue.commit().expect("commit");
        let ack = ack_all(&queue, seq, &chunk, 1);
        queue.acknowledge(&[ack], &[]).expect("ack");
        seq
    };
    let (queue, _) = open(dir.path());
    let second = queue.append(&draft(file(1), chunk.meta.end_offset, &["{}"]), &[], ReadProgress::Advance).expect("append");
    assert!(second > first, "{second} after {first}");
}

fn retention(max_age: Option<std::time::Duration>, max_bytes: Option<u64>) -> Retention {
    Retention { max_age, max_bytes }
}

#[test]
fn with_retention_an_acknowledged_chunk_is_kept_verifiable_and_counted_until_its_age_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chunk = draft(file(1), 0, &["{\"a\":1}", "{\"a\":2}"]);
    let (queue, _) = open(dir.path());
    queue.set_retention(retention(Some(std::time::Duration::from_secs(60)), None));
    let seq = queue.append(&chunk, &[], ReadProgress::Advance).expect("append");
    queue.commit().expect("commit");
    let ack = ack_all(&queue, seq, &chunk, 2);
    queue.acknowledge(&[ack], &[]).expect("ack");

    let stats = queue.stats().expect("stats");
    assert_eq!((stats.pending_chunks, stats.pending_records, stats.retained_chunks), (0, 0, 1));
    assert_eq!(stats.files[0].acked_offset, chunk.meta.end_offset, "retention does not hold positions back");
    let retained = queue.stored_chunk(inspect::ChunkState::Retained, seq).expect("read").expect("retained");
    let decoded = retained.decode().expect("a retained chunk still verifies under its sequence number");
    assert_eq!(decoded.records().count(), 2);

    assert_eq!(queue.prune_retained(now_ms()).expect("prune"), 0, "younger than its retention");
    assert_eq!(queue.prune_retained(now_ms() + 61_000).expect("prune"), 1);
    assert_eq!(queue.stats().expect("stats").retained_chunks, 0);
}

#[test]
fn the_retention_byte_cap_deletes_the_oldest_retained_chunks_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, _) = open(dir.path());
    let mut offset = 0;
    let mut seqs = Vec::new();
    let mut one_chunk_bytes = 0;
    for round in 0..5 {
        let chunk = draft(file(1), offset, &["{\"padding\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}"]);
        offset = chunk.meta.end_offset;
        let seq = queue.append(&chunk, &[], ReadProgress::Advance).expect("append");
        queue.commit().expect("commit");
        let ack = ack_all(&queue, seq, &chunk, 1);
        if round == 0 {
            one_chunk_bytes = ack.stored_len + retained::RETAINED_PREFIX_LEN as u64;
            queue.set_retention(retention(None, Some(2 * one_chunk_bytes)));
        }
        queue.acknowledge(&[ack], &[]).expect("ack");
        seqs.push(seq);
    }
    let kept: Vec<ChunkSeq> = queue.stored_chunks(inspect::ChunkState::Retained).map(|stored| stored.expect("read").seq).collect();
    assert_eq!(kept, seqs[3..].to_vec(), "the two newest fit the cap");
    assert_eq!(queue.stats().expect("stats").retained_bytes, 2 * one_chunk_bytes);
}

#[test]
fn a_replayed_retained_chunk_is_delivered_again_without_moving_any_position_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chunk = draft(file(1), 0, &["{\"a\":1}", "{\"a\":2}"]);
    let replay_seq = {
        let (queue, _) = open(dir.path());
        queue.set_retention(retention(Some(std::time::Duration::from_secs(3600)), None));
        let seq = queue.append(&chunk, &[], ReadProgress::Advance).expect("append");
        queue.commit().expect("commit");
        queue.acknowledge(&[ack_all(&queue, seq, &chunk, 2)], &[]).expect("ack");
        let dry = queue.replay_retained(&replay::RetainedSelection::default(), replay::ReplayMode::DryRun).expect("dry run");
        assert_eq!((dry.chunks, dry.records), (1, 2));
        assert_eq!(queue.stats().expect("stats").pending_chunks, 0, "a dry run changes nothing");
        queue.replay_retained(&replay::RetainedSelection::default(), replay::ReplayMode::Enqueue).expect("replay");
        queue.commit().expect("commit");
        let pending = queue.read_pending(ChunkSeq(0), ChunkSeq(u64::MAX)).expect("read").expect("replayed chunk");
        pending.seq
    };
    let (queue, report) = open(dir.path());
    assert!(report.missing.is_empty(), "a replay is no hole in any file's range: {:?}", report.missing);
    let stats = queue.stats().expect("stats");
    assert_eq!((stats.pending_chunks, stats.pending_records, stats.retained_chunks), (1, 2, 1));
    let acked_before = stats.files[0].acked_offset;
    let listing = queue.describe(&queue.find_chunk(replay_seq).expect("read").expect("present")).expect("describe");
    assert_eq!(listing.origin, Some(ChunkOrigin::Replay));
    queue.set_retention(retention(Some(std::time::Duration::from_secs(3600)), None));
    queue.acknowledge(&[ack_all(&queue, replay_seq, &chunk, 2)], &[]).expect("ack replay");
    let stats = queue.stats().expect("stats");
    assert_eq!((stats.pending_chunks, stats.retained_chunks), (0, 1), "a replay is not retained twice");
    assert_eq!(stats.files[0].acked_offset, acked_before);
    assert!(queue.verify().expect("verify").faults.is_empty());
}

#[test]
fn replaying_a_dead_letter_queues_its_record_and_removes_it_in_one_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, _) = open(dir.path());
    let letter = |reason, record: &[u8], record_len| DeadLetter {
        reason,
        detail: "test".into(),
        file: file(1),
        path: b"/logs/a.log".to_vec(),
        offset: 0,
        record_len,
        record: record.to_vec(),
        recorded_at_ms: 1,
    };
    let letters = [
        letter(DeadLetterReason::RejectedBySink, b"{\"ok\":1}", 8),
        letter(DeadLetterReason::InvalidJson, b"nope", 4),
        letter(DeadLetterReason::RejectedBySink, b"{\"cut", 5_000_000),
    ];
    queue.append(&draft(file(1), 0, &[]), &letters, ReadProgress::Advance).expect("append");
    let selection = inspect::DeadLetterSelection { reasons: vec!["rejected_by_sink".into()], ids: None };
    let summary = queue.replay_dead_letters(&selection, replay::ReplayMode::Enqueue).expect("replay");
    assert_eq!((summary.records, summary.skipped.len()), (1, 1), "a record not kept whole is never replayed: {summary:?}");
    let remaining: Vec<DeadLetterReason> = queue.dead_letters().map(|entry| entry.expect("read").1.expect("decodes").reason).collect();
    assert_eq!(remaining, vec![DeadLetterReason::InvalidJson, DeadLetterReason::RejectedBySink]);
    let stats = queue.stats().expect("stats");
    assert_eq!((stats.pending_records, stats.dead_letters), (1, 2));
}

#[test]
fn verify_reports_a_flipped_byte_and_a_clean_queue_has_no_faults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, _) = open(dir.path());
    let first = draft(file(1), 0, &["{\"a\":1}"]);
    let second = draft(file(1), first.meta.end_offset, &["{\"a\":2}"]);
    queue.append(&first, &[], ReadProgress::Advance).expect("append");
    let damaged = queue.append(&second, &[], ReadProgress::Advance).expect("append");
    queue.commit().expect("commit");
    let clean = queue.verify().expect("verify");
    assert!(clean.faults.is_empty(), "{:?}", clean.faults);
    assert_eq!((clean.chunks_checked, clean.records_checked, clean.files_checked), (2, 2, 1));
    queue.flip_a_byte_of_pending_chunk(damaged);
    let report = queue.verify().expect("verify");
    let codes: Vec<&str> = report.faults.iter().map(|fault| fault.code.as_str()).collect();
    assert!(codes.contains(&"checksum_mismatch"), "{:?}", report.faults);
    assert!(codes.contains(&"uncovered_range"), "its bytes are covered by no readable chunk: {:?}", report.faults);
}

#[test]
fn purging_retained_chunks_removes_only_the_selected_range_and_never_a_pending_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (queue, _) = open(dir.path());
    queue.set_retention(retention(Some(std::time::Duration::from_secs(3600)), None));
    let mut offset = 0;
    let mut seqs = Vec::new();
    for _ in 0..4 {
        let chunk = draft(file(1), offset, &["{}"]);
        offset = chunk.meta.end_offset;
        let seq = queue.append(&chunk, &[], ReadProgress::Advance).expect("append");
        queue.commit().expect("commit");
        queue.acknowledge(&[ack_all(&queue, seq, &chunk, 1)], &[]).expect("ack");
        seqs.push(seq.0);
    }
    let pending = queue.append(&draft(file(1), offset, &["{}"]), &[], ReadProgress::Advance).expect("append");
    let purged = queue.purge_chunks(inspect::ChunkState::Retained, &(seqs[1]..=seqs[2])).expect("purge");
    assert_eq!(purged, 2);
    let kept: Vec<u64> = queue.stored_chunks(inspect::ChunkState::Retained).map(|stored| stored.expect("read").seq.0).collect();
    assert_eq!(kept, vec![seqs[0], seqs[3]]);
    assert_eq!(queue.purge_chunks(inspect::ChunkState::Pending, &(0..=u64::MAX)).expect("purge"), 0, "pending is never purged");
    assert!(queue.find_chunk(pending).expect("read").is_some());
    assert_eq!(queue.stats().expect("stats").retained_chunks, 2);
}

/// The acknowledger merges the acks of every batch waiting into one write, in queue order: a
/// chunk may appear once per batch (part acknowledged, then the rest). The queue must end as
/// after acknowledging the batches one by one.
#[test]
fn acknowledgements_of_several_batches_in_one_write_end_as_one_by_one() {
    let first = draft(file(1), 0, &["{\"a\":1}", "{\"a\":2}", "{\"a\":3}"]);
    let second = draft(file(1), first.meta.end_offset, &["{\"a\":4}", "{\"a\":5}"]);
    let third = draft(file(1), second.meta.end_offset, &["{\"a\":6}", "{\"a\":7}"]);
    fn outcome(merged: bool, [first, second, third]: [&ChunkDraft; 3]) -> (u64, u64, u64, u32) {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (queue, _) = open(dir.path());
            let seqs: Vec<ChunkSeq> =
                [first, second, third].iter().map(|chunk| queue.append(chunk, &[], ReadProgress::Advance).expect("append")).collect();
            queue.commit().expect("commit");
            // Batch 1: two records of the first chunk; batch 2: its last and the second chunk;
            // batch 3: one record of the third chunk.
            let batches = [
                vec![ack_all(&queue, seqs[0], first, 2)],
                vec![ack_all(&queue, seqs[0], first, 3), ack_all(&queue, seqs[1], second, 2)],
                vec![ack_all(&queue, seqs[2], third, 1)],
            ];
            if merged {
                queue.acknowledge(&batches.concat(), &[]).expect("ack");
            } else {
                for acks in &batches {
                    queue.acknowledge(acks, &[]).expect("ack");
                }
            }
        }
        let (reopened, _) = open(dir.path());
        let stats = reopened.stats().expect("stats");
        let next = reopened.read_pending(ChunkSeq(0), ChunkSeq(u64::MAX)).expect("read").expect("the third chunk is pending");
        (stats.pending_chunks, stats.pending_records, stats.files[0].acked_offset, next.acked_records)
    }
    let chunks = [&first, &second, &third];
    let one_by_one = outcome(false, chunks);
    assert_eq!(one_by_one, (1, 1, second.meta.end_offset, 1));
    assert_eq!(outcome(true, chunks), one_by_one);
}

/// The body trees of route `a->b` as `QueueStore` names them.
fn body_tree(store: &QueueStore, slot: u64) -> sled::Tree {
    store.db.open_tree(format!("bodies:a->b#{slot}")).expect("body tree")
}

#[test]
fn a_body_left_behind_by_a_crash_after_its_acknowledgement_is_deleted_at_start_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chunk = draft(file(1), 0, &["{\"a\":1}"]);
    let seq = {
        let (queue, _) = open(dir.path());
        let seq = queue.append(&chunk, &[], ReadProgress::Advance).expect("append");
        queue.commit().expect("commit");
        let body = queue.inner.bodies.get(seq).expect("read").expect("the body is in its slot");
        queue.acknowledge(&[ack_all(&queue, seq, &chunk, 1)], &[]).expect("ack");
        assert_eq!(queue.inner.bodies.get(seq).expect("read"), None, "deleted with its acknowledgement");
        // What a crash between the acknowledgement's write and the body's deletion leaves.
        queue.inner.bodies.slot(seq).insert(ChunkBodies::key(seq), body).expect("write");
        queue.inner.db.flush().expect("flush");
        seq
    };
    let (reopened, report) = open(dir.path());
    assert!(report.set_aside.is_empty() && report.missing.is_empty(), "{report:?}");
    assert_eq!(reopened.inner.bodies.get(seq).expect("read"), None, "the left-over body is deleted");
    assert!(reopened.read_pending(ChunkSeq(0), ChunkSeq(u64::MAX)).expect("read").is_none(), "nothing is sent again");
    let stats = reopened.stats().expect("stats");
    assert_eq!((stats.pending_chunks, stats.files[0].acked_offset), (0, chunk.meta.end_offset));
}

#[test]
fn a_pending_chunk_whose_body_is_missing_is_set_aside_and_its_range_reported_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = draft(file(1), 0, &["{\"a\":1}"]);
    let second = draft(file(1), first.meta.end_offset, &["{\"a\":2}"]);
    let second_seq = {
        let (queue, _) = open(dir.path());
        let seq = queue.append(&first, &[], ReadProgress::Advance).expect("append");
        let second_seq = queue.append(&second, &[], ReadProgress::Advance).expect("append");
        queue.commit().expect("commit");
        queue.inner.bodies.slot(seq).remove(ChunkBodies::key(seq)).expect("remove");
        queue.inner.db.flush().expect("flush");
        second_seq
    };
    let (reopened, report) = open(dir.path());
    assert_eq!(report.set_aside.len(), 1);
    assert_eq!(report.set_aside[0].error.code(), "chunk_missing");
    assert_eq!(
        report.missing,
        vec![recovery::MissingRange { file: file(1), path: b"/logs/a.log".to_vec(), start: 0, end: first.meta.end_offset }]
    );
    let next = reopened.read_pending(ChunkSeq(0), ChunkSeq(u64::MAX)).expect("read").expect("the second chunk");
    assert_eq!(next.seq, second_seq);
    assert!(chunk::decode_chunk(next.seq, &next.bytes).is_ok());
}

#[test]
fn chunks_stored_whole_in_the_route_tree_by_tailhose_0_1_are_read_acknowledged_and_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chunk = draft(file(1), 0, &["{\"a\":1}", "{\"a\":2}"]);
    let (seq, bytes) = {
        let (queue, _) = open(dir.path());
        let seq = queue.append(&chunk, &[], ReadProgress::Advance).expect("append");
        queue.commit().expect("commit");
        // tailhose 0.1 kept the chunk as the pending entry's value and had no body trees.
        let bytes = queue.inner.bodies.get(seq).expect("read").expect("body");
        queue.inner.tree.insert(keys::seq_key(KeyKind::PendingChunk, seq), bytes.clone()).expect("write");
        queue.inner.bodies.slot(seq).remove(ChunkBodies::key(seq)).expect("remove");
        queue.inner.db.flush().expect("flush");
        (seq, bytes)
    };
    let (reopened, report) = open(dir.path());
    assert!(report.set_aside.is_empty() && report.missing.is_empty(), "{report:?}");
    let stored = reopened.read_pending(ChunkSeq(0), ChunkSeq(u64::MAX)).expect("read").expect("the chunk");
    assert_eq!((stored.seq, &stored.bytes), (seq, &bytes));
    reopened.acknowledge(&[ack_all(&reopened, seq, &chunk, 2)], &[]).expect("ack");
    let stats = reopened.stats().expect("stats");
    assert_eq!((stats.pending_chunks, stats.files[0].acked_offset), (0, chunk.meta.end_offset));
    assert!(!reopened.inner.tree.contains_key(keys::seq_key(KeyKind::PendingChunk, seq)).expect("read"));
}

#[test]
fn a_route_keeps_the_number_of_body_slots_it_was_created_with() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = QueueStore::reopen_for_test(dir.path());
    let route_tree = store.db.open_tree("route:a->b").expect("route tree");
    route_tree.insert(keys::meta_key(keys::BODY_SLOTS), &3u16.to_be_bytes()[..]).expect("write");
    let (queue, _) = store.open_route("a->b", 1 << 30).expect("open route");
    let mut start = 0;
    for n in 0..4 {
        let chunk = draft(file(1), start, &["{}"]);
        start = chunk.meta.end_offset;
        let seq = queue.append(&chunk, &[], ReadProgress::Advance).expect("append");
        assert_eq!(seq, ChunkSeq(n));
        assert!(body_tree(&store, seq.0 % 3).contains_key(ChunkBodies::key(seq)).expect("read"), "chunk {n} in slot {}", n % 3);
    }
    let body_trees =
        |route: &str| store.db.tree_names().iter().filter(|name| name.starts_with(format!("bodies:{route}#").as_bytes())).count();
    assert_eq!(body_trees("a->b"), 3);
    store.open_route("c->d", 1 << 30).expect("open route");
    assert_eq!(body_trees("c->d"), usize::from(bodies::NEW_ROUTE_SLOTS));
}

/// Acknowledges the whole pending chunk `seq` appended from `chunk`.
fn acknowledge_whole(queue: &RouteQueue, seq: ChunkSeq, chunk: &ChunkDraft) {
    let ack = ack_all(queue, seq, chunk, chunk.meta.record_count);
    queue.acknowledge(&[ack], &[]).expect("ack");
}

#[test]
fn a_chunk_set_aside_while_running_leaves_only_its_own_range_to_recover_and_later_deliveries_move_the_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = draft(file(1), 0, &["{\"a\":1}"]);
    let second = draft(file(1), first.meta.end_offset, &["{\"a\":2}"]);
    let third = draft(file(1), second.meta.end_offset, &["{\"a\":3}"]);
    {
        let (queue, _) = open(dir.path());
        let seq1 = queue.append(&first, &[], ReadProgress::Advance).expect("append");
        let seq2 = queue.append(&second, &[], ReadProgress::Advance).expect("append");
        let seq3 = queue.append(&third, &[], ReadProgress::Advance).expect("append");
        queue.commit().expect("commit");
        acknowledge_whole(&queue, seq1, &first);
        // The flusher found the second chunk damaged: it is never sent, its range is owed.
        let owed = queue.set_aside(seq2, &ChunkError::ChecksumMismatch { seq: seq2, expected: 1, actual: 2 }).expect("set aside");
        assert_eq!(
            owed,
            Some(recovery::MissingRange {
                file: file(1),
                path: b"/logs/a.log".to_vec(),
                start: second.meta.start_offset,
                end: second.meta.end_offset
            }),
            "the range to re-read from the source now"
        );
        acknowledge_whole(&queue, seq3, &third);
        assert_eq!(queue.stats().expect("stats").files[0].acked_offset, third.meta.end_offset, "the position is not frozen");
    }
    let (reopened, report) = open(dir.path());
    assert_eq!(
        report.missing,
        vec![recovery::MissingRange {
            file: file(1),
            path: b"/logs/a.log".to_vec(),
            start: second.meta.start_offset,
            end: second.meta.end_offset
        }],
        "only the set-aside chunk's range is re-read at the next start, not everything delivered after it"
    );
    drop(reopened);
}

#[test]
fn a_recovered_range_acknowledged_after_later_chunks_is_neither_reread_nor_lost_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = draft(file(1), 0, &["{\"a\":1}"]);
    let second = draft(file(1), first.meta.end_offset, &["{\"a\":2}"]);
    {
        let (queue, _) = open(dir.path());
        let seq1 = queue.append(&first, &[], ReadProgress::Advance).expect("append");
        queue.append(&second, &[], ReadProgress::Advance).expect("append");
        queue.commit().expect("commit");
        queue.flip_a_byte_of_pending_chunk(seq1);
    }
    let recovered = draft(file(1), 0, &["{\"a\":1}"]);
    {
        // Start-up sets the first chunk aside and re-reads its range: the replacement gets a
        // sequence number behind the second chunk, which is delivered first.
        let (queue, report) = open(dir.path());
        assert_eq!(report.missing.len(), 1);
        let replacement = queue.append(&recovered, &[], ReadProgress::Recovered).expect("append");
        queue.commit().expect("commit");
        let second_seq = queue.read_pending(ChunkSeq(0), replacement).expect("read").expect("second pending").seq;
        acknowledge_whole(&queue, second_seq, &second);
    }
    {
        let (queue, report) = open(dir.path());
        assert_eq!(report.missing, vec![], "the second chunk was delivered and the replacement is still queued");
        let replacement = queue.read_pending(ChunkSeq(0), ChunkSeq(u64::MAX)).expect("read").expect("replacement pending").seq;
        acknowledge_whole(&queue, replacement, &recovered);
        assert_eq!(queue.stats().expect("stats").files[0].acked_offset, second.meta.end_offset);
    }
    let (_reopened, report) = open(dir.path());
    assert_eq!(report.missing, vec![]);
}

#[test]
fn a_replacement_damaged_in_turn_is_recovered_again_although_the_position_passed_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = draft(file(1), 0, &["{\"a\":1}"]);
    let second = draft(file(1), first.meta.end_offset, &["{\"a\":2}"]);
    {
        let (queue, _) = open(dir.path());
        let seq1 = queue.append(&first, &[], ReadProgress::Advance).expect("append");
        queue.append(&second, &[], ReadProgress::Advance).expect("append");
        queue.commit().expect("commit");
        queue.flip_a_byte_of_pending_chunk(seq1);
    }
    {
        let (queue, _) = open(dir.path());
        let replacement = queue.append(&draft(file(1), 0, &["{\"a\":1}"]), &[], ReadProgress::Recovered).expect("append");
        queue.commit().expect("commit");
        let second_seq = queue.read_pending(ChunkSeq(0), replacement).expect("read").expect("second pending").seq;
        acknowledge_whole(&queue, second_seq, &second);
        queue.flip_a_byte_of_pending_chunk(replacement);
    }
    let (_reopened, report) = open(dir.path());
    assert_eq!(report.set_aside.len(), 1);
    assert_eq!(
        report.missing,
        vec![recovery::MissingRange { file: file(1), path: b"/logs/a.log".to_vec(), start: 0, end: first.meta.end_offset }]
    );
}

/// sled's `conf` as a kill between its two writes leaves it: the settings without their crc,
/// or cut inside the settings.
fn torn_sled_settings() -> Vec<Vec<u8>> {
    let complete = tempfile::tempdir().expect("tempdir");
    drop(QueueStore::reopen_for_test(complete.path()));
    let conf = std::fs::read(complete.path().join("queue/conf")).expect("sled wrote its settings");
    vec![conf[..conf.len() - 4].to_vec(), conf[..conf.len() - 10].to_vec()]
}

/// sled writes `conf` before it creates its log (`db`), with two writes and no rename: a kill
/// between them at the very first start left settings sled cannot read, and no tailhose
/// command could open the queue until someone deleted it by hand.
#[test]
fn a_queue_whose_creation_was_cut_short_by_a_kill_is_created_again_and_works() {
    for torn in torn_sled_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("queue/blobs")).expect("mkdir");
        std::fs::write(dir.path().join("queue/conf"), &torn).expect("write");
        let chunk = draft(file(1), 0, &["{\"a\":1}"]);
        {
            let (queue, _) = open(dir.path());
            queue.append(&chunk, &[], ReadProgress::Advance).expect("append");
            queue.commit().expect("commit");
        }
        let (queue, _) = open(dir.path());
        let stored = queue.read_pending(ChunkSeq(0), ChunkSeq(u64::MAX)).expect("read").expect("the chunk survived a restart");
        assert_eq!(chunk::decode_chunk(stored.seq, &stored.bytes).expect("decodes").records().count(), 1);
    }
}

/// Settings that fail their checksum beside a log (torn by a power cut before they were synced)
/// made sled refuse the queue for good. They are the same for every queue tailhose creates, so
/// they are moved aside and sled writes them again: the queue opens with its records, and
/// nothing else in it is touched (its snapshots stay where they are).
#[test]
fn damaged_settings_beside_a_log_are_moved_aside_and_the_queue_opens_with_its_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chunk = draft(file(1), 0, &["{\"a\":1}"]);
    {
        let (queue, _) = open(dir.path());
        queue.append(&chunk, &[], ReadProgress::Advance).expect("append");
        queue.commit().expect("commit");
    }
    // A restart: opening the queue writes sled's snapshot.
    drop(open(dir.path()));
    assert!(!snapshot_files(&dir.path().join("queue")).is_empty(), "sled left a snapshot");
    let torn = torn_sled_settings().remove(0);
    std::fs::write(dir.path().join("queue/conf"), &torn).expect("write");
    let store = QueueStore::reopen_for_test(dir.path());
    let moved = store.settings_moved_to().expect("the damaged settings were moved aside").to_path_buf();
    assert_eq!(std::fs::read(&moved).expect("kept"), torn, "kept as they were, for a bug report");
    assert!(store.rolled_back().is_none(), "no rollback: the log was fine");
    assert!(!dir.path().join(SET_ASIDE_SNAPSHOTS_DIR).exists(), "no snapshot was set aside");
    let (queue, _) = store.open_route("a->b", 1 << 30).expect("route");
    let stored = queue.read_pending(ChunkSeq(0), ChunkSeq(u64::MAX)).expect("read").expect("the record is still queued");
    assert_eq!(chunk::decode_chunk(stored.seq, &stored.bytes).expect("decodes").records().count(), 1);
}

/// A queue whose log is gone but whose blobs are left (fsck, a deletion) would open empty and
/// forget every position: it is refused with the reason, and nothing in it is touched.
#[test]
fn a_queue_whose_log_is_missing_is_refused_and_left_as_it_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (queue, _) = open(dir.path());
        let mut big = ChunkDraft::new(file(1), b"/logs/a.log".to_vec(), 0);
        let record = "x".repeat(200 * 1024);
        big.push_record(record.as_bytes());
        big.meta.end_offset = record.len() as u64 + 1;
        queue.append(&big, &[], ReadProgress::Advance).expect("append");
        queue.commit().expect("commit");
    }
    let queue_dir = dir.path().join("queue");
    assert!(std::fs::read_dir(queue_dir.join("blobs")).expect("blobs").next().is_some(), "a chunk body over 128 KiB is a blob");
    std::fs::remove_file(queue_dir.join("db")).expect("lose the log");
    match QueueStore::open(dir.path(), 1 << 20) {
        Err(error @ QueueError::LogMissing { .. }) => assert!(error.to_string().contains("lost its log"), "{error}"),
        Err(other) => panic!("refused, but as {other}"),
        Ok(_) => panic!("a queue without its log must not open as if empty"),
    }
    assert!(queue_dir.join("conf").exists() && !queue_dir.join("db").exists(), "nothing created or removed");
}

/// The settings tailhose writes again over damaged ones must be sled's, byte for byte: a sled
/// update that changed them would otherwise get past sled's own checks.
#[test]
fn a_new_queues_settings_are_the_ones_tailhose_can_write_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(QueueStore::reopen_for_test(dir.path()));
    assert_eq!(std::fs::read(dir.path().join("queue/conf")).expect("settings"), opening::expected_settings());
    assert!(dir.path().join("queue").join(opening::OPENED_MARKER).exists(), "the queue is marked as one that existed");
}

/// A queue that drained and lost its log keeps only its settings, an empty blobs folder and
/// tailhose's mark: the mark tells it from an interrupted creation, and it is refused.
#[test]
fn a_drained_queue_that_lost_its_log_is_refused_thanks_to_its_mark() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(QueueStore::reopen_for_test(dir.path()));
    let queue_dir = dir.path().join("queue");
    std::fs::remove_file(queue_dir.join("db")).expect("lose the log");
    for entry in std::fs::read_dir(&queue_dir).expect("queue").flatten() {
        if entry.file_name().to_string_lossy().starts_with("snap.") {
            std::fs::remove_file(entry.path()).expect("no snapshot either");
        }
    }
    assert!(matches!(QueueStore::open(dir.path(), 1 << 20), Err(QueueError::LogMissing { .. })));
}
