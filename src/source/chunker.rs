//! Turning a file's bytes into records, dead letters and chunks.

use std::borrow::Cow;
use std::sync::Arc;

use memchr::memchr;

use super::fields::{AddedFields, RecordPlace};
use super::multiline::{LineRole, Multiline, SingleLine};
use super::parse::Parser;
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
    /// A file's header lines skipped (`skip_header_lines`).
    pub header_lines: u64,
    /// Records of several lines cut at `max_lines` or `max_bytes` (see [`super::multiline`]).
    pub multiline_splits: u64,
}

/// Splits the bytes of one file, fed in order from a record boundary, into complete lines, lines
/// into records (one per line, or several lines per record with a [`Multiline`] rule), and
/// records into chunks.
///
/// Invariant: the open draft always covers `[draft.start_offset, draft.end_offset)` where both
/// are record boundaries, and `end_offset` is where the record in progress (if any) starts: its
/// first complete line, or the line in progress.
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
    /// Header lines still to skip: set only for a file read from its head. Until the last is
    /// read, the draft's end stays at 0, so that no position lands inside the header (a read
    /// from there would take the rest of the header for records).
    header_lines_left: u32,
    header_lines: u64,
    /// How lines make records, when a record may span lines.
    multiline: Option<Arc<Multiline>>,
    /// A record of several lines made one line before it is parsed or queued.
    single_line: Option<Arc<SingleLine>>,
    /// How a record's text becomes the JSON object queued in its place.
    parser: Option<Arc<Parser>>,
    /// Fields appended to each record's object.
    added: Option<Arc<AddedFields>>,
    /// The record of several lines being put together: it starts at `draft.meta.end_offset`.
    in_progress: Option<RecordInProgress>,
    multiline_splits: u64,
}

/// Complete lines that make a record so far (see [`super::multiline`]).
struct RecordInProgress {
    /// Its lines with the newlines between them: the record's bytes as the file holds them.
    bytes: Vec<u8>,
    /// File offset just after its last line's newline.
    end: u64,
    lines: u32,
    /// Its state in the rule's state machine.
    state: usize,
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
            header_lines_left: 0,
            header_lines: 0,
            multiline: None,
            single_line: None,
            parser: None,
            added: None,
            in_progress: None,
            multiline_splits: 0,
        }
    }

    /// Skips the first `lines` lines of the file as its header, when reading from its head.
    pub fn with_header_lines(mut self, lines: u32) -> LineChunker {
        if self.fed_offset == 0 {
            self.header_lines_left = lines;
        }
        self
    }

    /// Puts lines together into records by `multiline` (none: one record per line).
    pub fn with_multiline(mut self, multiline: Option<Arc<Multiline>>) -> LineChunker {
        self.multiline = multiline;
        self
    }

    /// Makes each record one line by `single_line` before it is parsed (none: as read).
    pub fn with_single_line(mut self, single_line: Option<Arc<SingleLine>>) -> LineChunker {
        self.single_line = single_line;
        self
    }

    /// Queues each record as the JSON object `parser` makes of it (none: the record's bytes).
    pub fn with_parser(mut self, parser: Option<Arc<Parser>>) -> LineChunker {
        self.parser = parser;
        self
    }

    /// Appends `added` to each record's JSON object (none: records as they are).
    pub fn with_added_fields(mut self, added: Option<Arc<AddedFields>>) -> LineChunker {
        self.added = added;
        self
    }

    /// Whether complete lines wait for the lines that may continue their record.
    pub fn has_record_in_progress(&self) -> bool {
        self.in_progress.is_some()
    }

    /// Takes the record in progress as complete (its file has been quiet for the rule's
    /// `flush_timeout`); a line in progress (no newline yet) stays.
    pub fn end_record_in_progress(&mut self) {
        self.file_in_progress();
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

    /// Treats the bytes after the last newline as a complete line, and the record in progress
    /// as complete: for a file that can no longer grow (rotated away or deleted), and for
    /// recovery up to a known end (a record boundary).
    pub fn finish_unterminated_line(&mut self) {
        if !self.partial.is_empty() || self.oversized_len.is_some() {
            let partial = std::mem::take(&mut self.partial);
            let oversized_len = self.oversized_len.take();
            self.complete_line(&partial, oversized_len, self.fed_offset);
        }
        self.file_in_progress();
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
            header_lines: std::mem::take(&mut self.header_lines),
            multiline_splits: std::mem::take(&mut self.multiline_splits),
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

    /// Takes one complete line ending just before `line_end` (which is after its newline, if
    /// any): a record, or part of the record in progress.
    fn complete_line(&mut self, line: &[u8], oversized_len: Option<u64>, line_end: u64) {
        if self.header_lines_left > 0 {
            self.header_lines_left -= 1;
            self.header_lines += 1;
            if self.header_lines_left == 0 {
                // The whole header read: it is covered by the draft, as blank lines are.
                self.draft.meta.end_offset = line_end;
            }
            return;
        }
        // A line read whole in one buffer was not measured on the way in.
        let oversized_len = oversized_len.or_else(|| (line.len() > self.max_line_bytes).then_some(line.len() as u64));
        let Some(multiline) = self.multiline.clone() else {
            self.file_record(line, oversized_len, line_end);
            return;
        };
        if oversized_len.is_some() {
            // A dead letter of its own, after the record before it.
            self.file_in_progress();
            self.file_record(line, oversized_len, line_end);
            return;
        }
        match multiline.rule.classify(line, self.in_progress.as_ref().map(|record| record.state)) {
            LineRole::Continues { state } => match self.in_progress.as_mut() {
                Some(record)
                    if record.lines < multiline.max_lines && (record.bytes.len() + 1 + line.len()) as u64 <= multiline.max_bytes =>
                {
                    record.bytes.push(b'\n');
                    record.bytes.extend_from_slice(line);
                    record.end = line_end;
                    record.lines += 1;
                    record.state = state;
                }
                _ => {
                    // Past a limit: the record so far is one, and this line begins the next, as
                    // it would for a read from its offset (a restart's, a recovery's): with no
                    // record before it.
                    self.multiline_splits += u64::from(self.in_progress.is_some());
                    self.file_in_progress();
                    match multiline.rule.classify(line, None) {
                        LineRole::Continues { state } | LineRole::Begins { state } => self.begin_record(line, line_end, state),
                        LineRole::Alone => self.file_record(line, None, line_end),
                    }
                }
            },
            LineRole::Begins { state } => {
                self.file_in_progress();
                self.begin_record(line, line_end, state);
            }
            LineRole::Alone => {
                self.file_in_progress();
                self.file_record(line, None, line_end);
            }
        }
        if self.in_progress.as_ref().is_some_and(|record| multiline.rule.is_complete(record.state)) {
            self.file_in_progress();
        }
    }

    fn begin_record(&mut self, line: &[u8], line_end: u64, state: usize) {
        self.in_progress = Some(RecordInProgress { bytes: line.to_vec(), end: line_end, lines: 1, state });
    }

    /// Files the record in progress, if any.
    fn file_in_progress(&mut self) {
        if let Some(record) = self.in_progress.take() {
            // Its lines were each within max_line_bytes, and together within max_bytes.
            self.file_record(&record.bytes, None, record.end);
        }
    }

    /// Files one record starting at the draft's end and ending just before `line_end`; a line
    /// over `max_line_bytes` (`oversized_len`, its whole length) is a dead letter instead.
    fn file_record(&mut self, line: &[u8], oversized_len: Option<u64>, line_end: u64) {
        let line_start = self.draft.meta.end_offset;
        let line_len = oversized_len.unwrap_or(line.len() as u64);
        self.draft.meta.end_offset = line_end;
        if oversized_len.is_some() {
            let detail = format!("line of {line_len} bytes is longer than max_line_bytes ({})", self.max_line_bytes);
            self.dead_letter(DeadLetterReason::LineTooLong, detail, line_start, line_len, &line[..line.len().min(OVERSIZED_SAMPLE_BYTES)]);
            return;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            self.blank_lines += 1;
            return;
        }
        // Dead letters keep the record as the file holds it; what is parsed and queued is the
        // record made one line, the same each time it is read.
        let single: Option<Vec<u8>> = self.single_line.as_ref().map(|rule| rule.apply(line));
        let text = single.as_deref().unwrap_or(line);
        let record = match (&self.parser, self.format) {
            // The record's identity stays its bytes in the file (offsets, recovery); what is
            // queued and sent is the object they parse to, the same each time they are read.
            (Some(parser), _) => match parser.parse_at(text, &self.path) {
                Ok(object) => Cow::Owned(object),
                Err(failure) => {
                    self.dead_letter(DeadLetterReason::ParseFailed, failure.to_string(), line_start, line_len, line);
                    return;
                }
            },
            (None, LineFormat::Raw) => Cow::Borrowed(text),
            (None, LineFormat::Json) => match json_problem(text) {
                None => Cow::Borrowed(text),
                Some(problem) => {
                    self.dead_letter(DeadLetterReason::InvalidJson, problem, line_start, line_len, line);
                    return;
                }
            },
        };
        let Some(added) = &self.added else {
            self.draft.push_record(&record);
            return;
        };
        let place = RecordPlace { file: self.file, path: &self.path, offset: line_start, read_at_ms: now_ms() };
        match added.add_to(&record, place) {
            Ok(with_fields) => self.draft.push_record(&with_fields),
            Err(problem) => self.dead_letter(DeadLetterReason::InvalidJson, problem.to_string(), line_start, line_len, line),
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
    fn a_files_header_is_skipped_from_its_head_only_and_no_chunk_ends_inside_it() {
        let columns = vec!["id".to_owned(), "name".to_owned()];
        let csv = || Some(Arc::new(Parser::new("csv", None, Some(&columns), &[]).expect("csv")));
        let mut chunker = chunker(LineFormat::Raw, 1024).with_header_lines(2).with_parser(csv());
        let mut sealed = Vec::new();
        // The header arrives in two reads, with a seal between (a flush, a quiet file).
        chunker.feed(
            b"id,name
",
            &mut sealed,
        );
        assert_eq!(chunker.seal(), None, "no chunk, no position, inside the header");
        chunker.feed(
            b"# exported 2026-12-01
7,alice
8,bob
",
            &mut sealed,
        );
        sealed.extend(chunker.seal());
        assert_eq!(records(&sealed), vec![br#"{"id":"7","name":"alice"}"#.to_vec(), br#"{"id":"8","name":"bob"}"#.to_vec()]);
        assert_eq!((sealed[0].draft.meta.start_offset, sealed[0].header_lines, sealed[0].dead_letters.len()), (0, 2, 0));
        // Read again from a later offset (a restart), nothing is taken for a header.
        let mut resumed = LineChunker::new(
            FileIdentity { device: 1, inode: 2, fingerprint_len: 3, fingerprint: 4 },
            b"/a.log".to_vec(),
            LineFormat::Raw,
            1024,
            38,
        )
        .with_header_lines(2)
        .with_parser(csv());
        let mut again = Vec::new();
        resumed.feed(b"8,bob\n", &mut again);
        again.extend(resumed.seal());
        assert_eq!(records(&again), vec![br#"{"id":"8","name":"bob"}"#.to_vec()]);
        assert_eq!(again[0].header_lines, 0);
    }

    #[test]
    fn single_line_sends_a_record_of_several_lines_as_one_line_and_its_offsets_stay_the_files() {
        let rule = super::super::multiline::MultilineRule::Start(regex::bytes::Regex::new(r"^\d{4} ").expect("pattern"));
        let multiline = Multiline { rule, flush_timeout: std::time::Duration::from_secs(1), max_lines: 100, max_bytes: 1 << 20 };
        let single = SingleLine { trim: true, separator: b" | ".to_vec() };
        let mut chunker = chunker(LineFormat::Raw, 1024).with_multiline(Some(Arc::new(multiline))).with_single_line(Some(Arc::new(single)));
        let mut sealed = Vec::new();
        let text = b"2026 first\n  at a\n\tat b  \n2026 second\n";
        chunker.feed(text, &mut sealed);
        chunker.finish_unterminated_line();
        sealed.extend(chunker.seal());
        assert_eq!(records(&sealed), vec![b"2026 first | at a | at b".to_vec(), b"2026 second".to_vec()]);
        assert_eq!((sealed[0].draft.meta.start_offset, sealed[0].draft.meta.end_offset), (0, text.len() as u64));
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
    fn a_parsed_record_is_queued_as_its_object_and_one_that_does_not_parse_is_a_dead_letter_at_its_offset() {
        let parser = Parser::new("logfmt", None, None, &[]).expect("logfmt");
        let mut chunker = chunker(LineFormat::Raw, 1024).with_parser(Some(Arc::new(parser)));
        let mut sealed = Vec::new();
        chunker.feed(b"a=1 b=\"x y\"\nnot logfmt \"\n\nc=3\n", &mut sealed);
        sealed.extend(chunker.seal());
        assert_eq!(records(&sealed), vec![br#"{"a":"1","b":"x y"}"#.to_vec(), br#"{"c":"3"}"#.to_vec()]);
        let letter = &sealed[0].dead_letters[0];
        assert_eq!((letter.reason, letter.offset, letter.record_len), (DeadLetterReason::ParseFailed, 12, 12));
        assert_eq!(letter.record, b"not logfmt \"");
        assert_eq!((sealed[0].blank_lines, sealed[0].draft.meta.end_offset), (1, 30));
    }

    #[test]
    fn added_fields_go_on_each_object_and_a_json_value_that_is_not_an_object_is_a_dead_letter() {
        let added = AddedFields { record_id_key: Some("id".into()), path_key: Some("file".into()), ..AddedFields::default() };
        let mut chunker = chunker(LineFormat::Json, 1024).with_added_fields(Some(Arc::new(added)));
        let mut sealed = Vec::new();
        chunker.feed(b"{\"a\":1}\n[1,2]\n{}\n", &mut sealed);
        sealed.extend(chunker.seal());
        assert_eq!(
            records(&sealed),
            vec![br#"{"a":1,"file":"/a.log","id":"1-2-00000004-0"}"#.to_vec(), br#"{"file":"/a.log","id":"1-2-00000004-e"}"#.to_vec()]
        );
        let letter = &sealed[0].dead_letters[0];
        assert_eq!(
            (letter.reason, letter.offset, letter.detail.as_str()),
            (DeadLetterReason::InvalidJson, 8, "a JSON array, not an object: add_fields needs an object")
        );
    }

    #[test]
    fn a_container_runtimes_parts_are_queued_as_one_record_of_the_joined_line() {
        let parser = Parser::new("cri", None, None, &[]).expect("cri");
        let multiline = Multiline {
            rule: super::super::multiline::MultilineRule::Partial(super::super::multiline::PartialLines::Cri),
            flush_timeout: std::time::Duration::from_secs(1),
            max_lines: 1000,
            max_bytes: 1024,
        };
        let mut chunker = chunker(LineFormat::Raw, 1024).with_multiline(Some(Arc::new(multiline))).with_parser(Some(Arc::new(parser)));
        let mut sealed = Vec::new();
        chunker.feed(b"T1 stdout P one \nT2 stdout F line\nT3 stderr F two\n", &mut sealed);
        sealed.extend(chunker.seal());
        assert_eq!(
            records(&sealed),
            vec![
                br#"{"time":"T1","stream":"stdout","log":"one line"}"#.to_vec(),
                br#"{"time":"T3","stream":"stderr","log":"two"}"#.to_vec()
            ]
        );
        assert_eq!(sealed[0].draft.meta.end_offset, 50, "the chunk ends where the last record does");
    }

    #[test]
    fn a_record_of_several_lines_is_parsed_whole() {
        let multiline = Multiline {
            rule: super::super::multiline::MultilineRule::Start(regex::bytes::Regex::new(r"^\d").expect("pattern")),
            flush_timeout: std::time::Duration::from_secs(1),
            max_lines: 10,
            max_bytes: 1024,
        };
        let parser = Parser::new("regex", Some(r"(?s)^(?<at>\d+) (?<message>.*)$"), None, &[]).expect("regex");
        let mut chunker = chunker(LineFormat::Raw, 1024).with_multiline(Some(Arc::new(multiline))).with_parser(Some(Arc::new(parser)));
        let mut sealed = Vec::new();
        chunker.feed(b"1 failed\n  at a\n  at b\n2 next\n", &mut sealed);
        chunker.finish_unterminated_line();
        sealed.extend(chunker.seal());
        assert_eq!(
            records(&sealed),
            vec![br#"{"at":"1","message":"failed\n  at a\n  at b"}"#.to_vec(), br#"{"at":"2","message":"next"}"#.to_vec()]
        );
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

    fn multiline_chunker(rule: crate::source::multiline::MultilineRule, max_lines: u32) -> LineChunker {
        multiline_chunker_at(rule, max_lines, 0)
    }

    /// A raw source's chunker with records of several lines, fed from `start`.
    fn multiline_chunker_at(rule: crate::source::multiline::MultilineRule, max_lines: u32, start: u64) -> LineChunker {
        let multiline = Multiline { rule, flush_timeout: std::time::Duration::from_secs(1), max_lines, max_bytes: 1 << 20 };
        LineChunker::new(
            FileIdentity { device: 1, inode: 2, fingerprint_len: 3, fingerprint: 4 },
            b"/a.log".to_vec(),
            LineFormat::Raw,
            1 << 20,
            start,
        )
        .with_multiline(Some(Arc::new(multiline)))
    }

    fn starting_with_a_date() -> crate::source::multiline::MultilineRule {
        crate::source::multiline::MultilineRule::Start(regex::bytes::Regex::new(r"^\d{4}-").expect("pattern"))
    }

    #[test]
    fn a_record_of_several_lines_is_one_record_and_a_chunk_never_ends_inside_it() {
        let mut chunker = multiline_chunker(starting_with_a_date(), 100);
        let mut sealed = Vec::new();
        chunker.feed(b"2026-01-01 one\n  at a\n  at b\n2026-01-01 two\n  at c\n", &mut sealed);
        // The second record may still grow: the chunk ends where it starts.
        sealed.extend(chunker.seal());
        assert_eq!(records(&sealed), vec![b"2026-01-01 one\n  at a\n  at b".to_vec()]);
        assert_eq!(sealed[0].draft.meta.end_offset, 29);
        assert!(chunker.has_record_in_progress());
        chunker.feed(b"  at d\n", &mut sealed);
        // Quiet for its flush timeout: the record is complete, and later lines are records of their own.
        chunker.end_record_in_progress();
        chunker.feed(b"  late\n", &mut sealed);
        chunker.finish_unterminated_line();
        sealed.extend(chunker.seal());
        assert_eq!(
            records(&sealed),
            vec![b"2026-01-01 one\n  at a\n  at b".to_vec(), b"2026-01-01 two\n  at c\n  at d".to_vec(), b"  late".to_vec()]
        );
        assert_eq!((sealed[1].draft.meta.start_offset, sealed[1].draft.meta.end_offset), (29, 65));
    }

    #[test]
    fn a_record_past_max_lines_is_cut_and_the_cut_is_counted() {
        let mut chunker = multiline_chunker(starting_with_a_date(), 3);
        let mut sealed = Vec::new();
        chunker.feed(b"2026-01-01 a\n 1\n 2\n 3\n 4\n2026-01-02 b\n", &mut sealed);
        chunker.finish_unterminated_line();
        sealed.extend(chunker.seal());
        assert_eq!(records(&sealed), vec![b"2026-01-01 a\n 1\n 2".to_vec(), b" 3\n 4".to_vec(), b"2026-01-02 b".to_vec()]);
        assert_eq!(sealed[0].multiline_splits, 1);
    }

    #[test]
    fn after_a_cut_the_next_record_begins_as_a_read_from_its_offset_would_begin_it() {
        // A Java trace cut at max_lines: the frames after the cut are what a restart or a
        // recovery, reading from the cut (a record boundary), makes of them: records alone.
        let java = crate::source::multiline::MultilineRule::preset("java").expect("preset");
        let text = b"java.lang.IllegalStateException: boom\n\tat a(A.java:1)\n\tat b(B.java:2)\n\tat c(C.java:3)\n";
        let mut chunker = multiline_chunker(java.clone(), 2);
        let mut sealed = Vec::new();
        chunker.feed(text, &mut sealed);
        chunker.finish_unterminated_line();
        sealed.extend(chunker.seal());
        let cut = b"java.lang.IllegalStateException: boom\n\tat a(A.java:1)\n".len() as u64;
        let mut again = multiline_chunker_at(java, 2, cut);
        let mut reread = Vec::new();
        again.feed(&text[cut as usize..], &mut reread);
        again.finish_unterminated_line();
        reread.extend(again.seal());
        let records = records(&sealed);
        assert_eq!(records[0], b"java.lang.IllegalStateException: boom\n\tat a(A.java:1)".to_vec());
        assert_eq!(records[1..].to_vec(), super::tests::records(&reread));
    }

    #[test]
    fn an_over_long_line_inside_a_record_ends_it_and_is_a_dead_letter_of_its_own() {
        let multiline = Multiline {
            rule: starting_with_a_date(),
            flush_timeout: std::time::Duration::from_secs(1),
            max_lines: 100,
            max_bytes: 1 << 20,
        };
        let mut chunker = chunker(LineFormat::Raw, 10).with_multiline(Some(Arc::new(multiline)));
        let mut sealed = Vec::new();
        chunker.feed(b"2026-01 a\n b\n0123456789abc\n c\n", &mut sealed);
        chunker.finish_unterminated_line();
        sealed.extend(chunker.seal());
        assert_eq!(records(&sealed), vec![b"2026-01 a\n b".to_vec(), b" c".to_vec()]);
        let letter = &sealed[0].dead_letters[0];
        assert_eq!((letter.reason, letter.offset, letter.record_len), (DeadLetterReason::LineTooLong, 13, 13));
    }

    /// Feeds `bytes` to `chunker` in reads of the sizes `cuts` gives in turn, sealing after each
    /// read that ends at a multiple of `seal_every`; returns the chunks sealed.
    fn feed_in_cuts(chunker: &mut LineChunker, bytes: &[u8], cuts: &[usize], seal_every: usize) -> Vec<SealedChunk> {
        let mut sealed = Vec::new();
        let mut at = 0;
        let mut cut = cuts.iter().cycle();
        while at < bytes.len() {
            let next = (at + cut.next().copied().unwrap_or(1)).min(bytes.len());
            chunker.feed(&bytes[at..next], &mut sealed);
            if next % seal_every == 0 {
                sealed.extend(chunker.seal());
            }
            at = next;
        }
        sealed
    }

    proptest! {
        /// However the bytes are cut into reads, the same records come out, and the chunks tile
        /// the file's complete lines without gap or overlap.
        #[test]
        fn reads_of_any_size_give_the_same_records(lines in proptest::collection::vec("[a-z{}\":0-9]{0,40}", 0..60), cuts in proptest::collection::vec(1usize..50, 1..20)) {
            let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
            let bytes = text.as_bytes();
            let mut chunker = chunker(LineFormat::Raw, 1 << 20);
            let mut sealed = feed_in_cuts(&mut chunker, bytes, &cuts, 3);
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

        /// With records of several lines too: however the bytes are cut and wherever chunks are
        /// sealed, the same records, and re-reading any sealed chunk's range alone (as recovery
        /// does) gives that chunk's records.
        #[test]
        fn records_of_several_lines_are_the_same_however_read_and_each_chunk_can_be_read_again_alone(
            lines in proptest::collection::vec("(2026-[0-9]{2}|  at)[a-z ]{0,12}", 0..60),
            cuts in proptest::collection::vec(1usize..50, 1..20),
        ) {
            let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
            let bytes = text.as_bytes();
            let read = |cuts: &[usize], seal_every: usize| {
                let mut chunker = multiline_chunker(starting_with_a_date(), 1000);
                let mut sealed = feed_in_cuts(&mut chunker, bytes, cuts, seal_every);
                chunker.finish_unterminated_line();
                sealed.extend(chunker.seal());
                sealed
            };
            let whole = read(&[bytes.len().max(1)], usize::MAX);
            let cut = read(&cuts, 3);
            prop_assert_eq!(records(&cut), records(&whole));
            for chunk in &cut {
                let (start, end) = (chunk.draft.meta.start_offset as usize, chunk.draft.meta.end_offset as usize);
                let mut again = multiline_chunker_at(starting_with_a_date(), 1000, start as u64);
                let mut sealed = Vec::new();
                again.feed(&bytes[start..end], &mut sealed);
                again.finish_unterminated_line();
                sealed.extend(again.seal());
                prop_assert_eq!(records(&sealed), records(std::slice::from_ref(chunk)));
            }
        }
    }
}
