//! The chunk codec: one encoder and one decoder for the bytes stored under a chunk key.
//!
//! A chunk is a run of complete records read from one byte range `[start, end)` of one source
//! file. Layout (version 1; every integer little-endian; byte-exact spec in `docs/queue-format.md`):
//!
//! ```text
//! offset  size  field
//!      0     4  magic            b"THCK"
//!      4     2  version          u16 = 1
//!      6     2  meta_len         u16, bytes of `meta`
//!      8     4  body_len         u32, bytes of `body`
//!     12     4  checksum         u32, CRC-32/IEEE (crc32fast) of
//!                                seq as u64 big-endian ‖ bytes 0..12 ‖ meta ‖ body
//!     16     …  meta             bincode 1.3.3 (fixed-width LE ints) of `ChunkMetaV1`
//!      …     …  body             record_count × { len: u32, bytes: [u8; len] }
//! ```
//!
//! The chunk's sequence number (its key) is inside the checksum, so a chunk read under a key it
//! was not written for fails verification like a flipped byte would.
//!
//! Guarantees: [`decode_chunk`] never panics on any input; every structural fault (short input,
//! wrong magic, unknown version, checksum, lengths that do not add up) is a [`ChunkError`].

use serde::{Deserialize, Serialize};

use super::positions::FileIdentity;

pub const CHUNK_MAGIC: [u8; 4] = *b"THCK";
/// Bytes before `meta`.
pub const CHUNK_HEADER_LEN: usize = 16;

/// Versions of the chunk layout this build can read. An unknown version is a typed error,
/// never a guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ChunkVersion {
    V1 = 1,
}

impl ChunkVersion {
    fn from_u16(value: u16) -> Option<ChunkVersion> {
        match value {
            1 => Some(ChunkVersion::V1),
            _ => None,
        }
    }
}

/// Position of a chunk in a route's queue; also its key. Assigned in append order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkSeq(pub u64);

impl std::fmt::Display for ChunkSeq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What a chunk says about itself.
///
/// Persisted with bincode: do not reorder, add, remove or retype fields. A change needs a new
/// [`ChunkVersion`] and a decoder for the old one (see the golden test below).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMeta {
    /// The source file the records were read from.
    pub file: FileIdentity,
    /// The file's path when the records were read (raw OS bytes; may not be UTF-8).
    pub path: Vec<u8>,
    /// First byte of the range this chunk covers.
    pub start_offset: u64,
    /// One past the last byte covered, always just after a `\n`.
    pub end_offset: u64,
    pub record_count: u32,
    /// Milliseconds since the Unix epoch when the chunk was sealed.
    pub created_at_ms: u64,
}

/// A chunk as the reader builds it, before it has a sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkDraft {
    pub meta: ChunkMeta,
    /// Encoded records, `{ len: u32 LE, bytes }` each.
    pub body: Vec<u8>,
}

impl ChunkDraft {
    pub fn new(file: FileIdentity, path: Vec<u8>, start_offset: u64) -> ChunkDraft {
        ChunkDraft {
            meta: ChunkMeta { file, path, start_offset, end_offset: start_offset, record_count: 0, created_at_ms: 0 },
            body: Vec::new(),
        }
    }

    /// Appends one record. Records longer than `u32::MAX` cannot occur: the reader's line limit
    /// is far below it.
    pub fn push_record(&mut self, record: &[u8]) {
        let len = u32::try_from(record.len()).unwrap_or(u32::MAX);
        self.body.extend_from_slice(&len.to_le_bytes());
        self.body.extend_from_slice(&record[..len as usize]);
        self.meta.record_count += 1;
    }

    pub fn body_len(&self) -> usize {
        self.body.len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk {seq} has no bytes in the queue (its pending entry outlived its body)")]
    Missing { seq: ChunkSeq },
    #[error("chunk {seq} is {len} bytes, shorter than its header says")]
    Truncated { seq: ChunkSeq, len: usize },
    #[error("chunk {seq} does not start with the chunk magic (found {found:02x?})")]
    BadMagic { seq: ChunkSeq, found: [u8; 4] },
    #[error(
        "chunk {seq} has layout version {version}, which this build cannot read; run the tailhose version that wrote it, or a newer one"
    )]
    UnknownVersion { seq: ChunkSeq, version: u16 },
    #[error("chunk {seq} fails its checksum (stored {expected:#010x}, computed {actual:#010x})")]
    ChecksumMismatch { seq: ChunkSeq, expected: u32, actual: u32 },
    #[error("chunk {seq} metadata cannot be decoded: {reason}")]
    BadMeta { seq: ChunkSeq, reason: String },
    #[error("chunk {seq} body does not hold the {expected} records its header announces")]
    BadBody { seq: ChunkSeq, expected: u32 },
}

impl ChunkError {
    /// Stable name for metrics labels and reports.
    pub fn code(&self) -> &'static str {
        match self {
            ChunkError::Missing { .. } => "chunk_missing",
            ChunkError::Truncated { .. } => "chunk_truncated",
            ChunkError::BadMagic { .. } => "chunk_bad_magic",
            ChunkError::UnknownVersion { .. } => "chunk_unknown_version",
            ChunkError::ChecksumMismatch { .. } => "checksum_mismatch",
            ChunkError::BadMeta { .. } => "chunk_bad_meta",
            ChunkError::BadBody { .. } => "chunk_bad_body",
        }
    }
}

/// Encodes a draft as the bytes stored under `seq`.
pub fn encode_chunk(seq: ChunkSeq, draft: &ChunkDraft) -> Vec<u8> {
    // bincode's legacy `serialize` is fixed-width little-endian and cannot fail for this
    // struct (no maps, no unsized fields); the fallback keeps the encoder panic-free anyway.
    let meta = bincode::serialize(&draft.meta).unwrap_or_default();
    let meta_len = u16::try_from(meta.len()).unwrap_or(u16::MAX);
    let body_len = u32::try_from(draft.body.len()).unwrap_or(u32::MAX);
    let mut bytes = Vec::with_capacity(CHUNK_HEADER_LEN + meta.len() + draft.body.len());
    bytes.extend_from_slice(&CHUNK_MAGIC);
    bytes.extend_from_slice(&(ChunkVersion::V1 as u16).to_le_bytes());
    bytes.extend_from_slice(&meta_len.to_le_bytes());
    bytes.extend_from_slice(&body_len.to_le_bytes());
    let checksum = chunk_checksum(seq, &bytes[..12], &meta, &draft.body);
    bytes.extend_from_slice(&checksum.to_le_bytes());
    bytes.extend_from_slice(&meta);
    bytes.extend_from_slice(&draft.body);
    bytes
}

fn chunk_checksum(seq: ChunkSeq, header_prefix: &[u8], meta: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.0.to_be_bytes());
    hasher.update(header_prefix);
    hasher.update(meta);
    hasher.update(body);
    hasher.finalize()
}

/// A verified chunk, borrowing the stored bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedChunk<'a> {
    pub seq: ChunkSeq,
    pub meta: ChunkMeta,
    body: &'a [u8],
    /// Where `body` starts in the stored bytes.
    body_offset: usize,
}

impl<'a> DecodedChunk<'a> {
    /// The records in order.
    pub fn records(&self) -> RecordIter<'a> {
        RecordIter { rest: self.body }
    }

    /// Where each record lies in the stored bytes the chunk was decoded from, in order: lets a
    /// caller keep the stored bytes and drop the borrow.
    pub fn record_ranges(&self) -> impl Iterator<Item = std::ops::Range<usize>> + 'a {
        let mut at = self.body_offset;
        self.records().map(move |record| {
            let range = at + 4..at + 4 + record.len();
            at = range.end;
            range
        })
    }
}

/// Iterates the records of a verified body. The body was checked to hold exactly
/// `record_count` well-formed records, so this cannot run past it.
pub struct RecordIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (record, rest) = split_record(self.rest)?;
        self.rest = rest;
        Some(record)
    }
}

fn split_record(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len_bytes: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    let record = bytes.get(4..4 + len)?;
    Some((record, &bytes[4 + len..]))
}

/// Reads only the fixed header: `(version, meta_len, body_len, stored checksum)`.
fn read_header(seq: ChunkSeq, bytes: &[u8]) -> Result<(u16, usize, usize, u32), ChunkError> {
    let header = bytes.get(..CHUNK_HEADER_LEN).ok_or(ChunkError::Truncated { seq, len: bytes.len() })?;
    let le_u16 = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
    let le_u32 = |at: usize| u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    let magic = [header[0], header[1], header[2], header[3]];
    if magic != CHUNK_MAGIC {
        return Err(ChunkError::BadMagic { seq, found: magic });
    }
    Ok((le_u16(4), le_u16(6) as usize, le_u32(8) as usize, le_u32(12)))
}

/// Verifies and decodes the bytes stored under `seq`.
pub fn decode_chunk(seq: ChunkSeq, bytes: &[u8]) -> Result<DecodedChunk<'_>, ChunkError> {
    if bytes.is_empty() {
        return Err(ChunkError::Missing { seq });
    }
    let (version, meta_len, body_len, expected) = read_header(seq, bytes)?;
    match ChunkVersion::from_u16(version) {
        Some(ChunkVersion::V1) => {}
        None => return Err(ChunkError::UnknownVersion { seq, version }),
    }
    let total = CHUNK_HEADER_LEN + meta_len + body_len;
    if bytes.len() != total {
        return Err(ChunkError::Truncated { seq, len: bytes.len() });
    }
    let meta_bytes = &bytes[CHUNK_HEADER_LEN..CHUNK_HEADER_LEN + meta_len];
    let body = &bytes[CHUNK_HEADER_LEN + meta_len..];
    let actual = chunk_checksum(seq, &bytes[..12], meta_bytes, body);
    if actual != expected {
        return Err(ChunkError::ChecksumMismatch { seq, expected, actual });
    }
    let meta: ChunkMeta = bincode::deserialize(meta_bytes).map_err(|error| ChunkError::BadMeta { seq, reason: error.to_string() })?;
    if !body_holds_exactly(body, meta.record_count) {
        return Err(ChunkError::BadBody { seq, expected: meta.record_count });
    }
    Ok(DecodedChunk { seq, meta, body, body_offset: CHUNK_HEADER_LEN + meta_len })
}

fn body_holds_exactly(mut body: &[u8], record_count: u32) -> bool {
    for _ in 0..record_count {
        match split_record(body) {
            Some((_, rest)) => body = rest,
            None => return false,
        }
    }
    body.is_empty()
}

#[cfg(test)]
mod tests;
