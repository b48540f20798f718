//! Retained chunks: acknowledged chunks kept for `tailhose queue replay` when the route's sink
//! sets `retain_acked` / `retain_acked_bytes`.
//!
//! A retained chunk stays under its sequence number (key kind `0x02`), so its stored chunk still
//! verifies: the chunk checksum covers the sequence number. Value layout:
//! `acked_at_ms: u64 LE ‖ the chunk's stored bytes, unchanged`.
//!
//! Retention never holds up delivery or reading: retained bytes do not count towards
//! `max_queue_bytes`; they are bounded by the retention's own age and byte limits.

/// Bytes before the stored chunk.
pub const RETAINED_PREFIX_LEN: usize = 8;

/// A retained chunk as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainedChunk<'a> {
    /// When the sink acknowledged the chunk's last record (Unix ms).
    pub acked_at_ms: u64,
    /// The chunk's bytes as they were stored while pending.
    pub chunk: &'a [u8],
}

pub fn encode(acked_at_ms: u64, chunk: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(RETAINED_PREFIX_LEN + chunk.len());
    value.extend_from_slice(&acked_at_ms.to_le_bytes());
    value.extend_from_slice(chunk);
    value
}

/// `None` when the value is shorter than its prefix.
pub fn decode(value: &[u8]) -> Option<RetainedChunk<'_>> {
    let prefix: [u8; RETAINED_PREFIX_LEN] = value.get(..RETAINED_PREFIX_LEN)?.try_into().ok()?;
    Some(RetainedChunk { acked_at_ms: u64::from_le_bytes(prefix), chunk: &value[RETAINED_PREFIX_LEN..] })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn retained_values_round_trip(acked_at_ms in any::<u64>(), chunk in proptest::collection::vec(any::<u8>(), 0..512)) {
            let value = super::encode(acked_at_ms, &chunk);
            let decoded = super::decode(&value).expect("decodes");
            prop_assert_eq!(decoded.acked_at_ms, acked_at_ms);
            prop_assert_eq!(decoded.chunk, &chunk[..]);
        }

        #[test]
        fn short_values_are_rejected_not_misread(value in proptest::collection::vec(any::<u8>(), 0..8)) {
            prop_assert!(super::decode(&value).is_none());
        }
    }

    #[test]
    fn the_retained_layout_is_frozen() {
        assert_eq!(super::encode(0x0102_0304_0506_0708, b"THCK"), b"\x08\x07\x06\x05\x04\x03\x02\x01THCK");
    }
}
