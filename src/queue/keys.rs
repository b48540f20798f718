//! Keys of a route's sled tree. Every key starts with one [`KeyKind`] byte, so each kind of
//! entry is a contiguous, ordered range and one `apply_batch` can change several kinds at once
//! atomically (sled batches are atomic within one tree).
//!
//! Integers in keys are big-endian so that byte order is numeric order.

use super::chunk::ChunkSeq;
use super::positions::FileIdentity;

/// The first byte of every key. Values are part of the on-disk format: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KeyKind {
    /// `[0x00] name` → queue metadata; see [`NEXT_SEQ`].
    Meta = 0x00,
    /// `[0x01] seq:u64` → chunk waiting to be delivered: empty, its bytes being in its body
    /// tree ([`super::bodies`]); the chunk itself in queues written by tailhose 0.1.
    PendingChunk = 0x01,
    /// `[0x02] seq:u64` → delivered chunk kept for replay (retention).
    RetainedChunk = 0x02,
    /// `[0x03] id:u64` → dead-letter record.
    DeadLetter = 0x03,
    /// `[0x04] identity` → where reading of that file has reached (queued offset and path).
    FileRead = 0x04,
    /// `[0x05] identity` → offset up to which that file is acknowledged.
    FileAcked = 0x05,
    /// `[0x06] seq:u64` → records of a pending chunk already acknowledged (a prefix count).
    ChunkProgress = 0x06,
    /// `[0x07] seq:u64` → a chunk that failed verification, set aside, never sent.
    SetAsideChunk = 0x07,
    /// `[0x08] seq:u64` → marks a pending chunk as a replay (`tailhose queue replay`): its
    /// acknowledgement moves no file position and it is not retained again.
    ReplayMarker = 0x08,
    /// `[0x09] identity` → byte ranges of that file read into the queue whose chunks were set
    /// aside: owed until a re-read of them is acknowledged (see [`super::ranges::ByteRanges`]).
    /// The acknowledged position may pass them; they are never skipped.
    FileOwed = 0x09,
}

/// Meta entry: the next chunk sequence number, `u64` big-endian.
pub const NEXT_SEQ: &str = "next_seq";

/// Meta entry: how many body trees the route has (`u16` big-endian), see [`super::bodies`].
pub const BODY_SLOTS: &str = "body_slots";

pub fn seq_key(kind: KeyKind, seq: ChunkSeq) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = kind as u8;
    key[1..].copy_from_slice(&seq.0.to_be_bytes());
    key
}

pub fn id_key(kind: KeyKind, id: u64) -> [u8; 9] {
    seq_key(kind, ChunkSeq(id))
}

/// The sequence number of a `[kind] seq:u64` key; `None` for a key of another shape.
pub fn seq_of(key: &[u8]) -> Option<ChunkSeq> {
    let bytes: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    (key.len() == 9).then_some(ChunkSeq(u64::from_be_bytes(bytes)))
}

pub fn file_key(kind: KeyKind, file: &FileIdentity) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + FileIdentity::ENCODED_LEN);
    key.push(kind as u8);
    key.extend_from_slice(&file.to_key_bytes());
    key
}

pub fn meta_key(name: &str) -> Vec<u8> {
    let mut key = vec![KeyKind::Meta as u8];
    key.extend_from_slice(name.as_bytes());
    key
}

/// The key range `[kind]..[kind+1]`.
pub fn kind_range(kind: KeyKind) -> std::ops::Range<[u8; 1]> {
    [kind as u8]..[kind as u8 + 1]
}
