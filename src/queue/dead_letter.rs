//! Dead letters: what could not be delivered, kept with the reason, never dropped.
//!
//! A dead letter is written in the same atomic batch as the queue change that skips its bytes
//! (the chunk that covers a malformed line, or the acknowledgement that passes an oversized
//! record), so a position never moves past a record that is neither queued nor dead-lettered.
//!
//! Layout (little-endian): `magic b"THDL" ‖ version: u16 = 1 ‖ reserved: u16 = 0 ‖
//! crc32: u32 (CRC-32/IEEE of bytes 0..8 ‖ the bincode bytes) ‖ bincode 1.3.3 of DeadLetterV1`.

use serde::{Deserialize, Serialize};

use super::positions::FileIdentity;

pub const DEAD_LETTER_MAGIC: [u8; 4] = *b"THDL";
const DEAD_LETTER_VERSION: u16 = 1;
/// At most this much of a dead record's bytes is kept; `record_len` gives its full length and
/// `file`/`offset` say where the whole of it is in the source.
pub const MAX_KEPT_RECORD_BYTES: usize = 1024 * 1024;

/// Why a record was dead-lettered. The code is stable: a metric label and what operators grep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeadLetterReason {
    /// The line is not one JSON value (source `format = "json"`), invalid UTF-8 included.
    InvalidJson,
    /// The line is longer than the source's `max_line_bytes`.
    LineTooLong,
    /// The record is larger than the sink accepts (Firehose: 1,000 KiB).
    RecordTooLarge,
    /// The sink rejected the record itself as invalid.
    RejectedBySink,
    /// A chunk failed verification and its bytes no longer exist in the source file.
    Unrecoverable,
    /// The record does not parse by its source's `parse` table (a line no pattern matches, a
    /// CSV row of another width, a value that is not the type asked for).
    ParseFailed,
}

impl DeadLetterReason {
    pub fn code(self) -> &'static str {
        match self {
            DeadLetterReason::InvalidJson => "invalid_json",
            DeadLetterReason::LineTooLong => "line_too_long",
            DeadLetterReason::RecordTooLarge => "record_too_large",
            DeadLetterReason::RejectedBySink => "rejected_by_sink",
            DeadLetterReason::Unrecoverable => "unrecoverable",
            DeadLetterReason::ParseFailed => "parse_failed",
        }
    }
}

/// One dead letter. Persisted with bincode: do not reorder, add, remove or retype fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub reason: DeadLetterReason,
    /// Human-readable detail: the parser's message, the limit that was passed.
    pub detail: String,
    pub file: FileIdentity,
    pub path: Vec<u8>,
    /// Where the record starts in the source file, and its full length in bytes.
    pub offset: u64,
    pub record_len: u64,
    /// The record's bytes, or its first [`MAX_KEPT_RECORD_BYTES`].
    pub record: Vec<u8>,
    pub recorded_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeadLetterDecodeError {
    #[error("dead letter is not in the dead-letter format (bad magic or too short)")]
    NotADeadLetter,
    #[error("dead letter has version {0}, which this build cannot read")]
    UnknownVersion(u16),
    #[error("dead letter fails its checksum")]
    ChecksumMismatch,
    #[error("dead letter cannot be decoded: {0}")]
    Malformed(String),
}

impl DeadLetter {
    pub fn encode(&self) -> Vec<u8> {
        let body = bincode::serialize(self).unwrap_or_default();
        let mut bytes = Vec::with_capacity(12 + body.len());
        bytes.extend_from_slice(&DEAD_LETTER_MAGIC);
        bytes.extend_from_slice(&DEAD_LETTER_VERSION.to_le_bytes());
        bytes.extend_from_slice(&0u16.to_le_bytes());
        let checksum = dead_letter_checksum(&bytes[..8], &body);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        bytes.extend_from_slice(&body);
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<DeadLetter, DeadLetterDecodeError> {
        if bytes.len() < 12 || bytes[..4] != DEAD_LETTER_MAGIC {
            return Err(DeadLetterDecodeError::NotADeadLetter);
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != DEAD_LETTER_VERSION {
            return Err(DeadLetterDecodeError::UnknownVersion(version));
        }
        let stored = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let body = &bytes[12..];
        if dead_letter_checksum(&bytes[..8], body) != stored {
            return Err(DeadLetterDecodeError::ChecksumMismatch);
        }
        bincode::deserialize(body).map_err(|error| DeadLetterDecodeError::Malformed(error.to_string()))
    }
}

fn dead_letter_checksum(header: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(body);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeadLetter {
        DeadLetter {
            reason: DeadLetterReason::InvalidJson,
            detail: "expected value at line 1 column 1".into(),
            file: FileIdentity { device: 1, inode: 2, fingerprint_len: 3, fingerprint: 4 },
            path: b"/srv/a.log".to_vec(),
            offset: 10,
            record_len: 3,
            record: b"{x}".to_vec(),
            recorded_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn dead_letters_round_trip() {
        assert_eq!(DeadLetter::decode(&sample().encode()), Ok(sample()));
    }

    #[test]
    fn a_flipped_byte_in_a_dead_letter_is_detected() {
        let encoded = sample().encode();
        for at in 0..encoded.len() {
            let mut damaged = encoded.clone();
            damaged[at] ^= 0x40;
            assert!(DeadLetter::decode(&damaged).is_err(), "flip at {at} went unnoticed");
        }
    }
}
