//! Turning a file's bytes into records, dead letters and chunks.

use memchr::memchr;

use super::CHUNK_TARGET_BYTES;
use crate::config::LineFormat;
use crate::queue::dead_letter::MAX_KEPT_RECORD_BYTES;
use crate::queue::{ChunkDraft, DeadLetter, DeadLetterReason, FileIdentity};

/// Of an over-long line only this much is kept in memory and in its dead letter; the dead
/// letter's file, offset and length say where the whole line is.
const OVERSIZED_SAMPLE_BYTES: usize = 64 * 1024;

/// Room reserved for a chunk's body: its target size and a typical line past it.
const CHUNK_BODY_RESERVE: usize = CHUNK_TARGET_BYTES + 8 * 1024;

/// A chunk ready for the queue, with the dead letters for the lines of its range that are not
/// records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedChunk {
    pub draft: ChunkDraft,
    pub dead_letters: Vec<DeadLetter>,
    pub blank_lines: u64,
}

/// Splits the bytes of one file, fed in order from a line boundary, into complete lines, and
/// lines into chunks.
///
/// Invariant: the open draft always covers `[draft.start_offset, draft.end_offset)` where both
/// are line boundaries, and `end_offset` is where the line in progress (if any) starts.
pub struct LineChunker {
    file: FileIdentity,
    path: Vec<u8>,
    format: LineFormat,
    max_line_bytes: usize,
    /// File offset of the next byte to be fed.
    fed_offset: u64,
    /// The line in progress: its first bytes (all of them unless it is over-long).
    partial: Vec<u8>,
    /// Set once the line in progress passed `max_line_bytes`: its full length so far.
    oversized_len: Option<u64>,
    draft: ChunkDraft,
    dead_letters: Vec<DeadLetter>,
    blank_lines: u64,
}

impl LineChunker {
    pub fn new(file: FileIdentity, path: Vec<u8>, format: LineFormat, max_line_bytes: u64, start_offset: u64) -> LineChunker {
        LineChunker {
            file,
            draft: ChunkDraft::new(file, path.clone(), start_offset),
            path,
            format,
            max_line_bytes: usize::try_from(max_line_bytes).unwrap_or(usize::MAX),
            fed_offset: start_offset,
            partial: Vec::new(),
            oversized_len: None,
            dead_letters: Vec::new(),
            blank_lines: 0,
        }
    }

    pub fn file(&self) -> FileIdentity {
        self.file
    }

    /// Where the line in progress starts: everything before it is in a draft or sealed.
    pub fn line_start(&self) -> u64 {
        self.draft.meta.end_offset
    }

    /// File offset of the next byte to feed.
    pub fn fed_offset(&self) -> u64 {
        self.fed_offset
    }

    /// Feeds the next bytes of the file. Chunks that reach the target size are pushed to `sealed`.
    pub fn feed(&mut self, bytes: &[u8], sealed: &mut Vec<SealedChunk>) {
        // A chunk's body is sized once from the bytes at hand, not grown by doubling: growing
        // copied every chunk about twice over and left a 512 KiB buffer for 256 KiB of records.
        let wanted = (bytes.len() + bytes.len() / 16).min(CHUNK_BODY_RESERVE);
        self.draft.body.reserve(wanted.saturating_sub(self.draft.body.len()));
        let mut rest = bytes;
        let mut offset = self.fed_offset;
        self.fed_offset += bytes.len() as u64;
        while let Some(newline) = memchr(b'\n', rest) {
            let line_end = offset + newline as u64 + 1;
            if self.partial.is_empty() && self.oversized_len.is_none() {
                self.complete_line(&rest[..newline], None, line_end);
            } else {
                self.extend_partial(&rest[..newline]);
                let partial = std::mem::take(&mut self.partial);
                let oversized_len = self.oversized_len.take();
                self.complete_line(&partial, oversized_len, line_end);
                self.partial = partial;
                self.partial.clear();
            }
            rest = &rest[newline + 1..];
            offset = line_end;
            if self.draft.body_len() >= CHUNK_TARGET_BYTES {
                sealed.extend(self.seal());
            }
        }
        self.extend_partial(rest);
    }

    /// Treats the bytes after the last newline as a complete line: for a file that can no
    /// longer grow (rotated away or deleted), and for recovery up to a known end.
    pub fn finish_unterminated_line(&mut self) {
        if self.partial.is_empty() && self.oversized_len.is_none() {
            return;
        }
        let partial = std::mem::take(&mut self.partial);
        let oversized_len = self.oversized_len.take();
        self.complete_line(&partial, oversized_len, self.fed_offset);
    }

    /// Seals the open draft if it covers any bytes, and opens the next one at the line in progress.
    pub fn seal(&mut self) -> Option<SealedChunk> {
        if self.draft.meta.end_offset == self.draft.meta.start_offset {
            return None;
        }
        let next = ChunkDraft::new(self.file, self.path.clone(), self.draft.meta.end_offset);
        let mut draft = std::mem::replace(&mut self.draft, next);
        draft.meta.created_at_ms = now_ms();
        Some(SealedChunk {
            draft,
            dead_letters: std::mem::take(&mut self.dead_letters),
            blank_lines: std::mem::take(&mut self.blank_lines),
        })
    }

    fn extend_partial(&mut self, bytes: &[u8]) {
        if let Some(len) = self.oversized_len.as_mut() {
            *len += bytes.len() as u64;
            return;
        }
        if self.partial.len() + bytes.len() > self.max_line_bytes {
            self.oversized_len = Some((self.partial.len() + bytes.len()) as u64);
            let room = OVERSIZED_SAMPLE_BYTES.saturating_sub(self.partial.len());
            self.partial.extend_from_slice(&bytes[..room.min(bytes.len())]);
            self.partial.truncate(OVERSIZED_SAMPLE_BYTES);
            return;
        }
        self.partial.extend_from_slice(bytes);
    }

    /// Files one complete line ending just before `line_end` (which is after its newline, if any).
    fn complete_line(&mut self, line: &[u8], oversized_len: Option<u64>, line_end: u64) {
        let line_start = self.draft.meta.end_offset;
        let line_len = oversized_len.unwrap_or(line.len() as u64);
        self.draft.meta.end_offset = line_end;
        if oversized_len.is_some() || line.len() > self.max_line_bytes {
            let detail = format!("line of {line_len} bytes is longer than max_line_bytes ({})", self.max_line_bytes);
            self.dead_letter(DeadLetterReason::LineTooLong, detail, line_start, line_len, &line[..line.len().min(OVERSIZED_SAMPLE_BYTES)]);
            return;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            self.blank_lines += 1;
            return;
        }
        match self.format {
            LineFormat::Raw => self.draft.push_record(line),
            LineFormat::Json => match json_problem(line) {
                None => self.draft.push_record(line),
                Some(problem) => self.dead_letter(DeadLetterReason::InvalidJson, problem, line_start, line_len, line),
            },
        }
    }

    fn dead_letter(&mut self, reason: DeadLetterReason, detail: String, offset: u64, record_len: u64, record: &[u8]) {
        self.dead_letters.push(DeadLetter {
            reason,
            detail,
            file: self.file,
            path: self.path.clone(),
            offset,
            record_len,
            record: record[..record.len().min(MAX_KEPT_RECORD_BYTES)].to_vec(),
            recorded_at_ms: now_ms(),
        });
    }
}

/// Why `line` is not one JSON value, or `None` when it is. UTF-8 is checked first and on its
/// own: serde_json skips the insides of strings it is not asked to keep, bytes included.
fn json_problem(line: &[u8]) -> Option<String> {
    let text = match std::str::from_utf8(line) {
        Ok(text) => text,
        Err(error) => return Some(format!("invalid UTF-8 after byte {}", error.valid_up_to())),
    };
    serde_json::from_str::<serde::de::IgnoredAny>(text).err().map(|error| error.to_string())
}

pub use crate::queue::now_ms;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn chunker(format: LineFormat, max_line_bytes: u64) -> LineChunker {
        LineChunker::new(
            FileIdentity { device: 1, inode: 2, fingerprint_len: 3, fingerprint: 4 },
            b"/a.log".to_vec(),
            format,
            max_line_bytes,
            0,
        )
    }

    fn records(sealed: &[SealedChunk]) -> Vec<Vec<u8>> {
        sealed
            .iter()
            .flat_map(|chunk| {
                let bytes = crate::queue::chunk::encode_chunk(crate::queue::ChunkSeq(0), &chunk.draft);
                let decoded = crate::queue::chunk::decode_chunk(crate::queue::ChunkSeq(0), &bytes).expect("valid");
                decoded.records().map(<[u8]>::to_vec).collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn a_line_without_its_newline_waits_for_the_rest() {
        let mut chunker = chunker(LineFormat::Json, 1024);
        let mut sealed = Vec::new();
        chunker.feed(b"{\"a\":1}\n{\"b\":", &mut sealed);
        sealed.extend(chunker.seal());
        assert_eq!(records(&sealed), vec![b"{\"a\":1}".to_vec()]);
        assert_eq!(sealed[0].draft.meta.end_offset, 8);
        chunker.feed(b"2}\n", &mut sealed);
        sealed.extend(chunker.seal());
        assert_eq!(records(&sealed), vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]);
        assert_eq!(sealed[1].draft.meta.start_offset, 8);
        assert_eq!(sealed[1].draft.meta.end_offset, 16);
    }

    #[test]
    fn malformed_json_and_invalid_utf8_become_dead_letters_with_their_offsets() {
        let mut chunker = chunker(LineFormat::Json, 1024);
        let mut sealed = Vec::new();
        chunker.feed(b"{\"a\":1}\n{broken\n\xff\xfe\n\n{\"b\":2}\n{\"s\":\"\xc3\x28\"}\n", &mut sealed);
        sealed.extend(chunker.seal());
        let chunk = &sealed[0];
        assert_eq!(records(&sealed).len(), 2);
        assert_eq!(chunk.blank_lines, 1);
        let offsets: Vec<(u64, DeadLetterReason)> = chunk.dead_letters.iter().map(|letter| (letter.offset, letter.reason)).collect();
        assert_eq!(
            offsets,
            vec![(8, DeadLetterReason::InvalidJson), (16, DeadLetterReason::InvalidJson), (28, DeadLetterReason::InvalidJson)]
        );
        assert_eq!(chunk.dead_letters[2].detail, "invalid UTF-8 after byte 6");
        assert_eq!(chunk.draft.meta.end_offset, 39);
    }

    #[test]
    fn raw_format_delivers_any_bytes() {
        let mut chunker = chunker(LineFormat::Raw, 1024);
        let mut sealed = Vec::new();
        chunker.feed(b"plain text\n\xff\xfe\n", &mut sealed);
        sealed.extend(chunker.seal());
        assert_eq!(records(&sealed), vec![b"plain text".to_vec(), b"\xff\xfe".to_vec()]);
    }

    #[test]
    fn an_over_long_line_is_dead_lettered_and_reading_resumes_at_the_next_line() {
        let mut chunker = chunker(LineFormat::Raw, 10);
        let mut sealed = Vec::new();
        chunker.feed(b"short\n0123456789", &mut sealed);
        chunker.feed(b"abcdef", &mut sealed);
        chunker.feed(b"\nafter\n", &mut sealed);
        sealed.extend(chunker.seal());
        assert_eq!(records(&sealed), vec![b"short".to_vec(), b"after".to_vec()]);
        let letter = &sealed[0].dead_letters[0];
        assert_eq!((letter.reason, letter.offset, letter.record_len), (DeadLetterReason::LineTooLong, 6, 16));
    }

    proptest! {
        /// However the bytes are cut into reads, the same records come out, and the chunks tile
        /// the file's complete lines without gap or overlap.
        #[test]
        fn reads_of_any_size_give_the_same_records(lines in proptest::collection::vec("[a-z{}\":0-9]{0,40}", 0..60), cuts in proptest::collection::vec(1usize..50, 1..20)) {
            let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
            let bytes = text.as_bytes();
            let mut chunker = chunker(LineFormat::Raw, 1 << 20);
            let mut sealed = Vec::new();
            let mut at = 0;
            let mut cut = cuts.iter().cycle();
            while at < bytes.len() {
                let next = (at + cut.next().copied().unwrap_or(1)).min(bytes.len());
                chunker.feed(&bytes[at..next], &mut sealed);
                if next % 3 == 0 { sealed.extend(chunker.seal()); }
                at = next;
            }
            sealed.extend(chunker.seal());
            let expected: Vec<Vec<u8>> = lines.iter().filter(|line| !line.trim().is_empty()).map(|line| line.as_bytes().to_vec()).collect();
            prop_assert_eq!(records(&sealed), expected);
            let mut covered = 0;
            for chunk in &sealed {
                prop_assert_eq!(chunk.draft.meta.start_offset, covered);
                covered = chunk.draft.meta.end_offset;
            }
            prop_assert_eq!(covered, bytes.len() as u64);
        }
    }
}
