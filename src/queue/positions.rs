//! File identity and the two persisted positions of a file: how far it has been *read* into the
//! queue, and how far it has been *acknowledged* by the sink.
//!
//! Invariants (see `docs/architecture.md`):
//! - The read position (`FileRead`) is written in the same atomic sled batch as the chunk that
//!   covers the bytes up to it, so it is never durable before those records are (invariant 1).
//! - The acknowledged position (`FileAcked`) only moves when the sink has acknowledged every
//!   record before it, per record (invariant 2); nothing else writes it.

use serde::{Deserialize, Serialize};

/// Which file this is, independent of its name: a rename keeps it, inode reuse does not.
///
/// `fingerprint` is the CRC-32/IEEE of the file's first `fingerprint_len` bytes (at most
/// [`FileIdentity::FINGERPRINT_BYTES`]), taken when the file first had a complete line. A new
/// file that happens to get a deleted file's inode has other first bytes, so another identity.
///
/// Persisted (bincode inside chunk metadata, fixed bytes in keys): do not reorder or change fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileIdentity {
    pub device: u64,
    pub inode: u64,
    pub fingerprint_len: u32,
    pub fingerprint: u32,
}

impl FileIdentity {
    /// How many leading bytes of a file its fingerprint covers at most.
    pub const FINGERPRINT_BYTES: usize = 256;
    pub const ENCODED_LEN: usize = 24;

    /// Big-endian `device ‖ inode ‖ fingerprint_len ‖ fingerprint`: sorts by device and inode.
    pub fn to_key_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut bytes = [0u8; Self::ENCODED_LEN];
        bytes[0..8].copy_from_slice(&self.device.to_be_bytes());
        bytes[8..16].copy_from_slice(&self.inode.to_be_bytes());
        bytes[16..20].copy_from_slice(&self.fingerprint_len.to_be_bytes());
        bytes[20..24].copy_from_slice(&self.fingerprint.to_be_bytes());
        bytes
    }

    pub fn from_key_bytes(bytes: &[u8]) -> Option<FileIdentity> {
        if bytes.len() != Self::ENCODED_LEN {
            return None;
        }
        let u64_at = |at: usize| bytes[at..at + 8].try_into().ok().map(u64::from_be_bytes);
        let u32_at = |at: usize| bytes[at..at + 4].try_into().ok().map(u32::from_be_bytes);
        Some(FileIdentity { device: u64_at(0)?, inode: u64_at(8)?, fingerprint_len: u32_at(16)?, fingerprint: u32_at(20)? })
    }
}

impl std::fmt::Display for FileIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "dev {} ino {} fp {:08x}/{}", self.device, self.inode, self.fingerprint, self.fingerprint_len)
    }
}

/// Value under a `FileRead` key. Layout: `version: u8 = 1 ‖ queued_offset: u64 LE ‖ path bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReadState {
    /// Everything before this offset is in the queue (as records or dead letters).
    pub queued_offset: u64,
    /// The file's path when it was last read (raw OS bytes).
    pub path: Vec<u8>,
}

const POSITION_VERSION: u8 = 1;

impl FileReadState {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(9 + self.path.len());
        bytes.push(POSITION_VERSION);
        bytes.extend_from_slice(&self.queued_offset.to_le_bytes());
        bytes.extend_from_slice(&self.path);
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Option<FileReadState> {
        if *bytes.first()? != POSITION_VERSION {
            return None;
        }
        let queued_offset = u64::from_le_bytes(bytes.get(1..9)?.try_into().ok()?);
        Some(FileReadState { queued_offset, path: bytes[9..].to_vec() })
    }
}

/// Value under a `FileAcked` key. Layout: `version: u8 = 1 ‖ acked_offset: u64 LE`.
pub fn encode_acked_offset(offset: u64) -> [u8; 9] {
    let mut bytes = [0u8; 9];
    bytes[0] = POSITION_VERSION;
    bytes[1..].copy_from_slice(&offset.to_le_bytes());
    bytes
}

pub fn decode_acked_offset(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != 9 || bytes[0] != POSITION_VERSION {
        return None;
    }
    Some(u64::from_le_bytes(bytes[1..9].try_into().ok()?))
}

/// Value under a `ChunkProgress` key: how many leading records of the chunk are acknowledged,
/// `u32 LE`.
pub fn encode_progress(acked_records: u32) -> [u8; 4] {
    acked_records.to_le_bytes()
}

pub fn decode_progress(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_key_bytes_are_frozen() {
        let identity = FileIdentity { device: 0x0102, inode: 0x0304, fingerprint_len: 256, fingerprint: 0xdeadbeef };
        let bytes = identity.to_key_bytes();
        assert_eq!(
            bytes,
            [0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 3, 4, 0, 0, 1, 0, 0xde, 0xad, 0xbe, 0xef],
            "the key layout is part of the on-disk format"
        );
        assert_eq!(FileIdentity::from_key_bytes(&bytes), Some(identity));
    }

    #[test]
    fn positions_round_trip_and_reject_other_versions() {
        let state = FileReadState { queued_offset: 12345, path: b"/var/log/app.log".to_vec() };
        assert_eq!(FileReadState::decode(&state.encode()), Some(state));
        assert_eq!(decode_acked_offset(&encode_acked_offset(77)), Some(77));
        let mut future = encode_acked_offset(77);
        future[0] = 2;
        assert_eq!(decode_acked_offset(&future), None);
    }
}
