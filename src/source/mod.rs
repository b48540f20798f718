//! Source: find the files a source's globs name, read their complete lines, check them against
//! the source's format (or parse them into JSON objects, [`parse`]) and hand them to the queue
//! in chunks.
//!
//! Guarantees:
//! - Only complete lines become records: a last line without its `\n` waits for the rest (a file
//!   that is closed after rotation or deletion is the exception: its unterminated last line can
//!   no longer grow and is delivered as it is).
//! - Every byte of a file up to the read position is accounted for: as a record in a chunk, as a
//!   dead letter (malformed, unparsed or over-long line) or as a counted blank line. Nothing is
//!   dropped without a counter and a log line.
//! - Files are known by [`FileIdentity`](crate::queue::FileIdentity) (device, inode, fingerprint
//!   of the first bytes), so a renamed file is not read twice and a reused inode is a new file.
//! - Memory per file is bounded by `max_line_bytes` plus one chunk (plus `multiline.max_bytes`
//!   for a record of several lines in progress).
//! - A record of several lines ([`multiline`]) is one record: chunks, and so stored positions,
//!   begin and end at record boundaries only.
//!
//! Assumes: files are appended to, or rotated by rename or copy-and-truncate; a truncated file is
//! read again from its start (see `docs/tailing.md`).

mod chunker;
pub mod fields;
mod identity;
pub mod multiline;
pub mod parse;
mod tail;
mod watch;

pub use chunker::{now_ms, LineChunker, SealedChunk};
pub use identity::{identify, IdentityMatch};
#[cfg(test)]
pub(crate) use tail::test_faults;
pub use tail::{recover_range, PassOutcome, RecoveryOutcome, Tailer};
pub use watch::{watch_changes, ChangeSignal, ChangeWatcher};

/// Target size of a chunk's body: large enough that one sled write carries many records, small
/// enough that the flusher holds little in memory.
pub const CHUNK_TARGET_BYTES: usize = 256 * 1024;
