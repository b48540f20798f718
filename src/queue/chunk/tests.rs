use proptest::prelude::*;

use super::*;

fn identity() -> FileIdentity {
    FileIdentity { device: 2049, inode: 131_074, fingerprint_len: 142, fingerprint: 0x1234_abcd }
}

fn draft(records: &[&[u8]]) -> ChunkDraft {
    let mut draft = ChunkDraft::new(identity(), b"/srv/conect/source/a.log".to_vec(), 1000);
    for record in records {
        draft.push_record(record);
        draft.meta.end_offset += record.len() as u64 + 1;
    }
    draft.meta.created_at_ms = 1_574_000_000_000;
    draft
}

#[test]
fn a_chunk_round_trips() {
    let draft = draft(&[b"{\"board_id\":1}", b"", b"{\"x\":[1,2]}"]);
    let bytes = encode_chunk(ChunkSeq(7), &draft);
    let decoded = decode_chunk(ChunkSeq(7), &bytes).expect("valid chunk");
    assert_eq!(decoded.meta, draft.meta);
    let records: Vec<&[u8]> = decoded.records().collect();
    assert_eq!(records, vec![&b"{\"board_id\":1}"[..], b"", b"{\"x\":[1,2]}"]);
    let by_range: Vec<&[u8]> = decoded.record_ranges().map(|range| &bytes[range]).collect();
    assert_eq!(by_range, records, "record ranges point at the same bytes in the stored chunk");
}

/// Guards the on-disk layout: these bytes are what version 1 writes, and what every later build
/// must still read. See docs/queue-format.md.
#[test]
fn the_version_1_layout_is_frozen() {
    let mut draft = ChunkDraft::new(FileIdentity { device: 1, inode: 2, fingerprint_len: 3, fingerprint: 4 }, b"/a".to_vec(), 5);
    draft.push_record(b"{}");
    draft.meta.end_offset = 8;
    draft.meta.created_at_ms = 9;
    let bytes = encode_chunk(ChunkSeq(1), &draft);
    let expected: Vec<u8> = [
        &b"THCK"[..],
        &[1, 0],                                                                   // version
        &[62, 0],                                                                  // meta_len
        &[6, 0, 0, 0],                                                             // body_len
        &[0, 0, 0, 0],                                                             // checksum, checked below
        &[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0], // file identity
        &[2, 0, 0, 0, 0, 0, 0, 0],
        &b"/a"[..], // path
        &[5, 0, 0, 0, 0, 0, 0, 0],
        &[8, 0, 0, 0, 0, 0, 0, 0], // start, end
        &[1, 0, 0, 0],
        &[9, 0, 0, 0, 0, 0, 0, 0], // record_count, created_at_ms
        &[2, 0, 0, 0],
        &b"{}"[..], // one record
    ]
    .concat();
    assert_eq!(bytes[..12], expected[..12]);
    assert_eq!(bytes[16..], expected[16..]);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&1u64.to_be_bytes());
    hasher.update(&expected[..12]);
    hasher.update(&expected[16..]);
    assert_eq!(bytes[12..16], hasher.finalize().to_le_bytes());
}

#[test]
fn a_chunk_under_another_key_fails_its_checksum() {
    let bytes = encode_chunk(ChunkSeq(7), &draft(&[b"{}"]));
    assert!(matches!(decode_chunk(ChunkSeq(8), &bytes), Err(ChunkError::ChecksumMismatch { .. })));
}

#[test]
fn an_unknown_version_is_a_typed_error() {
    let mut bytes = encode_chunk(ChunkSeq(7), &draft(&[b"{}"]));
    bytes[4] = 9;
    assert_eq!(decode_chunk(ChunkSeq(7), &bytes), Err(ChunkError::UnknownVersion { seq: ChunkSeq(7), version: 9 }));
}

proptest! {
    #[test]
    fn any_records_round_trip(records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..40), seq in any::<u64>()) {
        let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        let draft = draft(&slices);
        let bytes = encode_chunk(ChunkSeq(seq), &draft);
        let decoded = decode_chunk(ChunkSeq(seq), &bytes).expect("valid");
        prop_assert_eq!(&decoded.meta, &draft.meta);
        prop_assert_eq!(decoded.records().collect::<Vec<_>>(), slices);
    }

    #[test]
    fn any_flipped_byte_is_detected(records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..10), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        let mut bytes = encode_chunk(ChunkSeq(3), &draft(&slices));
        let at = at.index(bytes.len());
        bytes[at] ^= flip;
        prop_assert!(decode_chunk(ChunkSeq(3), &bytes).is_err(), "flip of {:#04x} at {} went unnoticed", flip, at);
    }


    #[test]
    fn truncated_chunks_are_errors(cut in 0usize..200) {
        let bytes = encode_chunk(ChunkSeq(1), &draft(&[b"{\"a\":1}", b"{\"b\":2}"]));
        let cut = cut.min(bytes.len() - 1);
        prop_assert!(decode_chunk(ChunkSeq(1), &bytes[..cut]).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    /// At scale: random bytes, and valid chunks with random damage, never panic the decoder.
    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512), seq in any::<u64>()) {
        let _ = decode_chunk(ChunkSeq(seq), &bytes);
    }

    #[test]
    fn damaged_valid_chunks_never_panic_the_decoder(damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let mut bytes = encode_chunk(ChunkSeq(5), &draft(&[b"{\"a\":1}", b"{\"b\":[2,3]}", b"x"]));
        for (at, value) in damage {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        let keep = cut.index(bytes.len() + 1);
        let _ = decode_chunk(ChunkSeq(5), &bytes[..keep]);
    }
}
