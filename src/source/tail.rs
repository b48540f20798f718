//! The tailer of one route: discovers the files of a source, reads them in turn, and appends
//! what it read to the route's queue.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::chunker::{LineChunker, SealedChunk};
use super::identity::{self, IdentityMatch};
use crate::config::SourceSettings;
use crate::events::Events;
use crate::queue::{DeadLetter, DeadLetterReason, FileIdentity, QueueError, ReadProgress, RouteQueue};

/// Bytes read from one file before the tailer moves to the next: a hot file cannot starve the others.
const FILE_BUDGET_PER_PASS: usize = 4 * 1024 * 1024;
/// Bytes read in one pass over all files before the pass commits (one fsync per pass).
const PASS_BUDGET: usize = 16 * 1024 * 1024;
const READ_BLOCK: usize = 256 * 1024;

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassOutcome {
    pub bytes_read: u64,
    /// Reading stopped because the queue reached `max_queue_bytes`.
    pub queue_full: bool,
    /// Every open file was read to its current end.
    pub caught_up: bool,
}

/// Where reading of a newly seen file starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartAt {
    Head,
    End,
    Stored(u64),
}

/// Device and inode: what the tailer keys open files by.
type DevIno = (u64, u64);

struct WatchedFile {
    path: PathBuf,
    file: File,
    /// Next byte to read. Until the file has an identity (it was empty), this stays 0.
    read_offset: u64,
    /// Exists once the file has bytes, and so an identity.
    chunker: Option<LineChunker>,
    /// Seen by the latest glob scan.
    in_glob: bool,
    /// When bytes were last read: a file gone from the glob is closed once it has not grown for
    /// one `refresh_interval` (the writer may still finish lines into a file it just rotated).
    last_growth: Instant,
}

/// Why a file could not be started.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Reads the files of one source for one route. Owned by the route's reader task and moved into
/// a blocking thread for each pass; all its I/O is blocking.
pub struct Tailer {
    source: SourceSettings,
    /// Queue size above which files still in their glob wait (see `Config::max_read_ahead_bytes`).
    read_ahead_bytes: u64,
    queue: RouteQueue,
    events: Arc<Events>,
    files: HashMap<DevIno, WatchedFile>,
    next_scan: Option<Instant>,
    first_scan_done: bool,
    buffer: Vec<u8>,
}

impl Tailer {
    pub fn new(source: SourceSettings, read_ahead_bytes: u64, queue: RouteQueue, events: Arc<Events>) -> Tailer {
        Tailer {
            source,
            read_ahead_bytes,
            queue,
            events,
            files: HashMap::new(),
            next_scan: None,
            first_scan_done: false,
            buffer: vec![0; READ_BLOCK],
        }
    }

    pub fn open_files(&self) -> usize {
        self.files.len()
    }

    /// Scans the globs when due, reads every file up to its budget, appends what was read and
    /// commits it (fsync). Blocking.
    pub fn pass(&mut self) -> Result<PassOutcome, QueueError> {
        let now = Instant::now();
        if self.next_scan.is_none_or(|due| now >= due) {
            self.scan();
            self.next_scan = Some(now + self.source.refresh_interval);
        }
        let mut outcome = PassOutcome { caught_up: true, ..PassOutcome::default() };
        let mut order: Vec<DevIno> = self.files.keys().copied().collect();
        order.sort_unstable();
        for key in order {
            if outcome.bytes_read as usize >= PASS_BUDGET {
                outcome.caught_up = false;
                break;
            }
            if !self.queue.has_space() {
                outcome.queue_full = true;
                outcome.caught_up = false;
                break;
            }
            let budget = self.read_budget(key);
            if budget == 0 {
                // The file keeps its bytes; read them once the sink has caught up.
                outcome.caught_up = false;
                continue;
            }
            let (read, at_end) = self.read_file(key, budget)?;
            outcome.bytes_read += read;
            outcome.caught_up &= at_end;
        }
        self.close_finished_files()?;
        self.queue.commit()?;
        Ok(outcome)
    }

    /// How many bytes of this file the pass may read: a file still in its glob keeps its own
    /// bytes, so it may only fill the read-ahead window; one that left its glob (rotated, soon
    /// deleted) may fill the queue.
    fn read_budget(&self, key: DevIno) -> usize {
        let in_glob = self.files.get(&key).is_some_and(|watched| watched.in_glob);
        let limit = if in_glob { self.read_ahead_bytes } else { u64::MAX };
        let room = limit.saturating_sub(self.queue.pending_bytes());
        usize::try_from(room).unwrap_or(usize::MAX).min(FILE_BUDGET_PER_PASS)
    }

    /// Reads one file up to `budget` bytes (rounded up to a read block) and appends the sealed
    /// chunks. Returns the bytes read and whether the file's end was reached.
    fn read_file(&mut self, key: DevIno, budget: usize) -> Result<(u64, bool), QueueError> {
        let Some(watched) = self.files.get_mut(&key) else { return Ok((0, true)) };
        let mut sealed = Vec::new();
        let mut read_total = 0u64;
        let mut at_end = false;
        while (read_total as usize) < budget {
            if watched.chunker.is_none() && !start_chunker(watched, &self.source, &self.events) {
                at_end = true;
                break;
            }
            let read = match watched.file.read_at(&mut self.buffer, watched.read_offset) {
                Ok(read) => read,
                Err(error) => {
                    self.events.file_read_failed(&watched.path, &error);
                    at_end = true;
                    break;
                }
            };
            if read == 0 {
                if detect_truncation(watched, &self.events) {
                    continue;
                }
                at_end = true;
                break;
            }
            watched.read_offset += read as u64;
            read_total += read as u64;
            if let Some(chunker) = watched.chunker.as_mut() {
                chunker.feed(&self.buffer[..read], &mut sealed);
            }
        }
        if read_total > 0 {
            watched.last_growth = Instant::now();
        }
        if let Some(chunker) = watched.chunker.as_mut() {
            sealed.extend(chunker.seal());
        }
        self.events.bytes_read(read_total);
        if let Err(error) = append_all(&self.queue, &self.events, &sealed, ReadProgress::Advance) {
            // What was read but not appended must be read again: forget the file, so the next
            // scan reopens it at its stored read position.
            self.files.remove(&key);
            return Err(error);
        }
        Ok((read_total, at_end))
    }

    /// Re-reads the globs: new files are opened, renamed ones get their new path, and those that
    /// are gone are marked so they close once drained.
    fn scan(&mut self) {
        let startup = !self.first_scan_done;
        self.first_scan_done = true;
        for watched in self.files.values_mut() {
            watched.in_glob = false;
        }
        for path in self.glob_paths() {
            let metadata = match std::fs::metadata(&path) {
                Ok(metadata) if metadata.is_file() => metadata,
                _ => continue,
            };
            let key = (metadata.dev(), metadata.ino());
            if let Some(watched) = self.files.get_mut(&key) {
                if watched.path != path {
                    self.events.file_renamed(&watched.path, &path);
                    watched.path = path;
                }
                watched.in_glob = true;
                continue;
            }
            match self.open_file(&path, startup) {
                Ok(watched) => {
                    self.files.insert(key, watched);
                }
                Err(error) => self.events.file_open_failed(&path, &error),
            }
        }
    }

    fn glob_paths(&self) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        for pattern in &self.source.paths {
            match glob::glob(pattern) {
                Ok(found) => paths.extend(found.filter_map(Result::ok)),
                Err(error) => self.events.glob_failed(pattern, &error.to_string()),
            }
        }
        paths.sort();
        paths.dedup();
        paths
    }

    fn open_file(&self, path: &Path, startup: bool) -> Result<WatchedFile, OpenError> {
        let file = File::open(path)?;
        let size = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
        let stored = self.stored_position(&file)?;
        let start = match (stored, startup, self.source.read_from_head) {
            (Some((_, queued)), _, _) if queued <= size => StartAt::Stored(queued),
            (Some((_, queued)), _, _) => {
                self.events.file_truncated(path, queued, size);
                StartAt::Head
            }
            (None, true, false) => StartAt::End,
            (None, _, _) => StartAt::Head,
        };
        let read_offset = match start {
            StartAt::Head => 0,
            StartAt::End => size,
            StartAt::Stored(offset) => offset,
        };
        let chunker = match stored {
            Some((identity, _)) if start != StartAt::Head => Some(new_chunker(identity, path, &self.source, read_offset)),
            _ => identity::identify(&file).ok().flatten().map(|identity| new_chunker(identity, path, &self.source, read_offset)),
        };
        self.events.file_added(self.queue.name(), path, read_offset, start_name(start));
        Ok(WatchedFile { path: path.to_path_buf(), file, read_offset, chunker, in_glob: true, last_growth: Instant::now() })
    }

    /// The stored identity and read position of this open file, if the queue knows it.
    fn stored_position(&self, file: &File) -> Result<Option<(FileIdentity, u64)>, QueueError> {
        let Ok(metadata) = file.metadata() else { return Ok(None) };
        for (identity, state) in self.queue.stored_files(metadata.dev(), metadata.ino())? {
            if let Ok(IdentityMatch::Same) = identity::compare(file, &identity) {
                return Ok(Some((identity, state.queued_offset)));
            }
        }
        Ok(None)
    }

    /// Closes files that left the glob (rotated away or deleted) and have stopped growing, after
    /// delivering their unterminated last line: such a file cannot grow any more.
    fn close_finished_files(&mut self) -> Result<(), QueueError> {
        let rotate_wait = self.source.refresh_interval;
        let finished: Vec<DevIno> = self
            .files
            .iter()
            .filter(|(_, watched)| !watched.in_glob && watched.last_growth.elapsed() >= rotate_wait)
            .map(|(key, _)| *key)
            .collect();
        for key in finished {
            let Some(mut watched) = self.files.remove(&key) else { continue };
            if let Some(chunker) = watched.chunker.as_mut() {
                chunker.finish_unterminated_line();
                let sealed: Vec<SealedChunk> = chunker.seal().into_iter().collect();
                append_all(&self.queue, &self.events, &sealed, ReadProgress::Advance)?;
            }
            self.events.file_closed(&watched.path);
        }
        Ok(())
    }
}

fn start_name(start: StartAt) -> &'static str {
    match start {
        StartAt::Head => "head",
        StartAt::End => "end",
        StartAt::Stored(_) => "stored position",
    }
}

fn new_chunker(identity: FileIdentity, path: &Path, source: &SourceSettings, offset: u64) -> LineChunker {
    LineChunker::new(identity, path.as_os_str().as_bytes().to_vec(), source.format, source.max_line_bytes, offset)
}

/// Gives a file that was empty its identity once it has bytes. Returns whether it has one.
fn start_chunker(watched: &mut WatchedFile, source: &SourceSettings, events: &Events) -> bool {
    match identity::identify(&watched.file) {
        Ok(Some(identity)) => {
            watched.chunker = Some(new_chunker(identity, &watched.path, source, watched.read_offset));
            true
        }
        Ok(None) => false,
        Err(error) => {
            events.file_read_failed(&watched.path, &error);
            false
        }
    }
}

/// A file now shorter than what was read was truncated in place (copytruncate): read it again
/// from its start, as a new file (its first bytes, and so its identity, are new).
fn detect_truncation(watched: &mut WatchedFile, events: &Events) -> bool {
    let Ok(size) = watched.file.metadata().map(|metadata| metadata.len()) else { return false };
    if size >= watched.read_offset {
        return false;
    }
    events.file_truncated(&watched.path, watched.read_offset, size);
    watched.read_offset = 0;
    watched.chunker = None;
    true
}

fn append_all(queue: &RouteQueue, events: &Events, sealed: &[SealedChunk], progress: ReadProgress) -> Result<(), QueueError> {
    for chunk in sealed {
        queue.append(&chunk.draft, &chunk.dead_letters, progress)?;
        events.chunk_appended(queue.name(), chunk);
    }
    Ok(())
}

/// What recovery of a missing range did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryOutcome {
    /// The bytes were read again from the source and queued.
    Recovered { records: u64 },
    /// The bytes no longer exist in the source; a dead letter records the range.
    DeadLettered { reason: String },
}

/// Re-reads `[start, end)` of the file `identity` (last seen at `path`) into the queue, for a
/// chunk that was set aside. Where the file is gone, replaced or shorter, the range is recorded
/// as an unrecoverable dead letter instead. Blocking.
pub fn recover_range(
    queue: &RouteQueue,
    events: &Events,
    source: &SourceSettings,
    identity: FileIdentity,
    path: &[u8],
    start: u64,
    end: u64,
) -> Result<RecoveryOutcome, QueueError> {
    let os_path = Path::new(std::ffi::OsStr::from_bytes(path));
    let reason = match File::open(os_path) {
        Err(error) => format!("source file cannot be opened: {error}"),
        Ok(file) => match identity::compare(&file, &identity) {
            Ok(IdentityMatch::Same) => match read_range(&file, start, end) {
                Ok(bytes) => {
                    let mut chunker = new_chunker(identity, os_path, source, start);
                    let mut sealed = Vec::new();
                    chunker.feed(&bytes, &mut sealed);
                    chunker.finish_unterminated_line();
                    sealed.extend(chunker.seal());
                    append_all(queue, events, &sealed, ReadProgress::Recovered)?;
                    let records = sealed.iter().map(|chunk| u64::from(chunk.draft.meta.record_count)).sum();
                    return Ok(RecoveryOutcome::Recovered { records });
                }
                Err(error) => format!("source file no longer holds bytes {start}..{end}: {error}"),
            },
            Ok(_) => "the file at that path is no longer the file the records came from".to_owned(),
            Err(error) => format!("source file cannot be checked: {error}"),
        },
    };
    let mut dead_letter = DeadLetter {
        reason: DeadLetterReason::Unrecoverable,
        detail: reason.clone(),
        file: identity,
        path: path.to_vec(),
        offset: start,
        record_len: end - start,
        record: Vec::new(),
        recorded_at_ms: super::chunker::now_ms(),
    };
    // A zero-record chunk over the range carries the dead letter, so the range is accounted for.
    let mut draft = crate::queue::ChunkDraft::new(identity, path.to_vec(), start);
    draft.meta.end_offset = end;
    draft.meta.created_at_ms = dead_letter.recorded_at_ms;
    queue.append(&draft, std::slice::from_ref(&dead_letter), ReadProgress::Recovered)?;
    dead_letter.record.clear();
    events.dead_lettered(queue.name(), &dead_letter);
    Ok(RecoveryOutcome::DeadLettered { reason })
}

fn read_range(file: &File, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
    let len = usize::try_from(end - start).map_err(|_| std::io::Error::other("range too large"))?;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, start)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests;
