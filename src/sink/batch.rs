//! Packing records into `PutRecordBatch`-sized batches.
//!
//! Guarantees (property-tested below): a batch never holds more than `max_records` records or
//! `max_bytes` bytes; records keep their order; a record is either added, refused because the
//! batch is full (it goes into the next one), or refused as too large for any batch.
//!
//! A batch may also be asked to stop filling earlier ([`BatchPacker::filled_to`], at what one
//! call may carry at the pace learned at the stream's quota): then it holds no more than that,
//! except that a record alone in its batch is always taken up to the destination's limits, so
//! pacing never makes a record too large.

use super::rate::CallSize;

/// The limits of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_records: usize,
    pub max_bytes: u64,
    /// Largest single record; `None` when the destination has no such limit.
    pub max_record_bytes: Option<u64>,
    /// The destination bills each record in units of this many bytes.
    pub billing_unit_bytes: u64,
    /// Bytes each record sent carries besides what is packed into it, added when its batch is
    /// sealed (an aggregated record's envelope): counted when the record is offered, so that the
    /// sealed batch stays within the call it was packed for.
    pub record_overhead_bytes: u64,
}

/// What happened to a record offered to a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Added,
    /// The batch is full; send it and offer the record to the next one.
    Full,
    /// No batch can ever hold this record.
    TooLarge,
}

/// Counts what a batch under construction holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPacker {
    limits: BatchLimits,
    /// Where filling stops: at or below `limits`.
    fill_records: usize,
    fill_bytes: u64,
    records: usize,
    bytes: u64,
}

impl BatchPacker {
    /// A batch that fills up to the destination's limits.
    pub fn new(limits: BatchLimits) -> BatchPacker {
        BatchPacker::filled_to(limits, CallSize { records: u64::MAX, bytes: u64::MAX })
    }

    /// A batch that stops filling at `fill` (capped by `limits`); a record alone in it is still
    /// taken up to `limits`.
    pub fn filled_to(limits: BatchLimits, fill: CallSize) -> BatchPacker {
        let fill_records = usize::try_from(fill.records).unwrap_or(usize::MAX).clamp(1, limits.max_records.max(1));
        BatchPacker { limits, fill_records, fill_bytes: fill.bytes.min(limits.max_bytes), records: 0, bytes: 0 }
    }

    pub fn offer(&mut self, record_len: u64) -> Offer {
        let record_len = record_len + self.limits.record_overhead_bytes;
        let too_large_for_destination = self.limits.max_record_bytes.is_some_and(|max| record_len > max);
        if too_large_for_destination || record_len > self.limits.max_bytes {
            return Offer::TooLarge;
        }
        // Alone in its batch, a record is taken whatever the fill: it is within the limits.
        let past_fill = self.records > 0 && self.bytes + record_len > self.fill_bytes;
        if self.records >= self.fill_records || past_fill {
            return Offer::Full;
        }
        self.records += 1;
        self.bytes += record_len;
        Offer::Added
    }

    /// Adds `piece_len` bytes to the last record (record packing): refused as [`Offer::Full`]
    /// when the batch's fill would be passed.
    pub fn extend_last(&mut self, piece_len: u64) -> Offer {
        if self.records == 0 || self.bytes + piece_len > self.fill_bytes {
            return Offer::Full;
        }
        self.bytes += piece_len;
        Offer::Added
    }

    pub fn is_full(&self) -> bool {
        self.records >= self.fill_records || self.bytes >= self.fill_bytes
    }

    pub fn records(&self) -> usize {
        self.records
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn limits(&self) -> BatchLimits {
        self.limits
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const FIREHOSE: BatchLimits = BatchLimits {
        max_records: 500,
        max_bytes: 4 * 1024 * 1024,
        max_record_bytes: Some(1000 * 1024),
        billing_unit_bytes: 5 * 1024,
        record_overhead_bytes: 0,
    };

    /// Packs lengths the way the flusher does: offer each record, start a new batch when full.
    fn pack(lengths: &[u64], limits: BatchLimits) -> (Vec<Vec<usize>>, Vec<usize>) {
        pack_filled_to(lengths, limits, CallSize { records: u64::MAX, bytes: u64::MAX })
    }

    fn pack_filled_to(lengths: &[u64], limits: BatchLimits, fill: CallSize) -> (Vec<Vec<usize>>, Vec<usize>) {
        let mut batches = vec![Vec::new()];
        let mut too_large = Vec::new();
        let mut packer = BatchPacker::filled_to(limits, fill);
        for (index, &len) in lengths.iter().enumerate() {
            match packer.offer(len) {
                Offer::Added => batches.last_mut().expect("one batch").push(index),
                Offer::TooLarge => too_large.push(index),
                Offer::Full => {
                    packer = BatchPacker::filled_to(limits, fill);
                    assert_eq!(packer.offer(len), Offer::Added, "a record that fits no empty batch must be TooLarge");
                    batches.push(vec![index]);
                }
            }
        }
        (batches, too_large)
    }

    #[test]
    fn five_hundred_and_one_small_records_make_two_batches() {
        let (batches, too_large) = pack(&[140; 501], FIREHOSE);
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), vec![500, 1]);
        assert!(too_large.is_empty());
    }

    #[test]
    fn a_record_over_1000_kib_is_refused_as_too_large() {
        let mut packer = BatchPacker::new(FIREHOSE);
        assert_eq!(packer.offer(1000 * 1024 + 1), Offer::TooLarge);
        assert_eq!(packer.offer(1000 * 1024), Offer::Added);
    }

    #[test]
    fn a_records_overhead_counts_towards_the_batch_and_the_record_limit() {
        let mut packer = BatchPacker::new(BatchLimits { record_overhead_bytes: 100, ..FIREHOSE });
        assert_eq!(packer.offer(1000 * 1024 - 100), Offer::Added);
        assert_eq!(packer.bytes(), 1000 * 1024, "the record as sealed");
        assert_eq!(packer.offer(1000 * 1024 - 99), Offer::TooLarge);
    }

    #[test]
    fn a_record_larger_than_the_fill_is_sent_alone_not_refused() {
        let fill = CallSize { records: 500, bytes: 100_000 };
        let (batches, too_large) = pack_filled_to(&[40_000, 40_000, 40_000, 300_000, 10], FIREHOSE, fill);
        assert_eq!(batches, vec![vec![0, 1], vec![2], vec![3], vec![4]]);
        assert!(too_large.is_empty());
    }

    proptest! {
        /// Paced batches: past the first record, a batch stays within its fill; no record within
        /// the destination's limits is ever refused because of the fill.
        #[test]
        fn paced_batches_stay_within_their_fill_and_refuse_nothing_more(
            lengths in proptest::collection::vec(prop_oneof![1u64..2_000, 20_000u64..200_000, 900_000u64..1_100_000], 0..1_000),
            fill_bytes in 1u64..=5 * 1024 * 1024,
            fill_records in 0usize..=600,
        ) {
            let fill = CallSize { records: fill_records as u64, bytes: fill_bytes };
            let (batches, too_large) = pack_filled_to(&lengths, FIREHOSE, fill);
            for batch in batches.iter().filter(|batch| batch.len() > 1) {
                let bytes: u64 = batch.iter().map(|&index| lengths[index]).sum();
                prop_assert!(bytes <= fill_bytes.min(FIREHOSE.max_bytes));
                prop_assert!(batch.len() <= fill_records.clamp(1, FIREHOSE.max_records));
            }
            for &index in &too_large {
                prop_assert!(lengths[index] > 1000 * 1024);
            }
            let mut seen: Vec<usize> = batches.iter().flatten().copied().chain(too_large.iter().copied()).collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        }

        #[test]
        fn batches_respect_limits_keep_order_and_lose_nothing(
            lengths in proptest::collection::vec(prop_oneof![1u64..2_000, 900_000u64..1_100_000], 0..2_000),
            max_records in 1usize..=500,
        ) {
            let limits = BatchLimits { max_records, ..FIREHOSE };
            let (batches, too_large) = pack(&lengths, limits);
            for batch in &batches {
                prop_assert!(batch.len() <= max_records);
                let bytes: u64 = batch.iter().map(|&index| lengths[index]).sum();
                prop_assert!(bytes <= limits.max_bytes);
            }
            for &index in &too_large {
                prop_assert!(lengths[index] > 1000 * 1024);
            }
            let mut seen: Vec<usize> = batches.iter().flatten().copied().chain(too_large.iter().copied()).collect();
            let in_batch_order: Vec<usize> = batches.iter().flatten().copied().collect();
            prop_assert!(in_batch_order.windows(2).all(|pair| pair[0] < pair[1]), "order kept");
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        }

        /// Record packing as the flusher does it: a line joins the last record while that stays
        /// within `pack_max`, otherwise it starts a record of its own.
        #[test]
        fn packed_batches_respect_the_call_limits_and_the_packed_record_size(
            lengths in proptest::collection::vec(1u64..6_000, 0..3_000),
            pack_max in 1u64..=10_000,
            max_records in 1usize..=500,
        ) {
            let limits = BatchLimits { max_records, ..FIREHOSE };
            let mut packer = BatchPacker::new(limits);
            // (bytes, lines) of each record.
            let mut records: Vec<(u64, u32)> = Vec::new();
            let mut packed_lines = 0;
            for &len in &lengths {
                let joins_last = records.last().is_some_and(|(bytes, _)| bytes + len <= pack_max);
                let offer = if joins_last { packer.extend_last(len) } else { packer.offer(len) };
                match (offer, records.last_mut()) {
                    (Offer::Added, Some((bytes, lines))) if joins_last => {
                        *bytes += len;
                        *lines += 1;
                    }
                    (Offer::Added, _) => records.push((len, 1)),
                    (Offer::Full | Offer::TooLarge, _) => break,
                }
                packed_lines += 1;
                let total: u64 = records.iter().map(|(bytes, _)| bytes).sum();
                prop_assert!(records.len() <= max_records);
                prop_assert!(total <= limits.max_bytes);
                prop_assert_eq!(total, packer.bytes());
                prop_assert!(records.iter().all(|&(bytes, lines)| lines == 1 || bytes <= pack_max), "only a lone line may pass pack_max");
            }
            prop_assert!(packed_lines == lengths.len() || records.len() == max_records || packer.bytes() + 6_000 > limits.max_bytes, "packing stops only at a call limit");
        }
    }
}
