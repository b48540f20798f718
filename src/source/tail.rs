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
use super::watch::ChangeSignal;
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
    /// A file in its glob was not read because the read-ahead window was full: read it again
    /// once acknowledgements have opened the window.
    pub read_ahead_full: bool,
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
    /// `None` while closed to stay within `max_open_files`; reopened by identity when it grows.
    file: Option<File>,
    /// Next byte to read. Until the file has an identity (it was empty), this stays 0.
    read_offset: u64,
    /// Exists once the file has bytes, and so an identity.
    chunker: Option<LineChunker>,
    /// Seen by the latest glob scan.
    in_glob: bool,
    /// When bytes were last read: a file gone from the glob is closed once it has not grown for
    /// one `refresh_interval` (the writer may still finish lines into a file it just rotated).
    last_growth: Instant,
    /// When a scan first found the file gone from its glob (renamed away, deleted): the rotate
    /// wait also counts from here, so a file idle before its rename still gets the whole wait
    /// for what the writer finishes into it after the rename.
    left_glob_at: Option<Instant>,
    /// The latest read reached the end of the file.
    at_end: bool,
    /// The last bytes read, just before `read_offset`.
    marker: TailMarker,
}

/// How many of the last bytes read are kept to check, before reading on, that they are still
/// there (Fluent Bit's offset marker does the same).
const MARKER_BYTES: usize = 32;

/// The last bytes read from a file, up to [`MARKER_BYTES`]. A file truncated (copytruncate) and
/// written past the old offset again while it was not read (reading paused for the sink, or
/// simply between two passes) looks like a file that grew; its first bytes (the identity) and
/// the bytes before the offset tell them apart.
#[derive(Debug, Clone, Copy, Default)]
struct TailMarker {
    bytes: [u8; MARKER_BYTES],
    len: usize,
}

impl TailMarker {
    /// Keeps the last bytes of what was just read.
    fn extend(&mut self, read: &[u8]) {
        if read.len() >= MARKER_BYTES {
            self.bytes.copy_from_slice(&read[read.len() - MARKER_BYTES..]);
            self.len = MARKER_BYTES;
            return;
        }
        let keep = (MARKER_BYTES - read.len()).min(self.len);
        self.bytes.copy_within(self.len - keep..self.len, 0);
        self.bytes[keep..keep + read.len()].copy_from_slice(read);
        self.len = keep + read.len();
    }

    /// Whether `file` no longer holds these bytes just before `offset`.
    fn changed_in(&self, file: &File, offset: u64) -> bool {
        if self.len == 0 || offset < self.len as u64 {
            return false;
        }
        let mut now = [0u8; MARKER_BYTES];
        match file.read_exact_at(&mut now[..self.len], offset - self.len as u64) {
            Ok(()) => now[..self.len] != self.bytes[..self.len],
            // Shorter than the offset: truncated, as a short read finds out.
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => true,
            // Cannot tell: read on (the read itself reports a failing file).
            Err(_) => false,
        }
    }
}

impl WatchedFile {
    /// Whether the file was truncated or rewritten in place since it was last read: its first
    /// bytes are not the ones it was identified by, or the bytes before the read offset changed.
    fn rewritten_since_read(&self) -> bool {
        let (Some(file), Some(chunker)) = (self.file.as_ref(), self.chunker.as_ref()) else { return false };
        matches!(identity::compare(file, &chunker.file()), Ok(IdentityMatch::Replaced)) || self.marker.changed_in(file, self.read_offset)
    }

    /// A truncated or rewritten file (now `size` bytes) is a new file: reported, read again from
    /// its start with a new identity, and the positions of the identity it had are released once
    /// what was read under it is acknowledged: no file will have that identity again, and one
    /// stale position per copytruncate rotation would otherwise be kept forever.
    fn read_again_from_start(&mut self, size: u64, queue: &RouteQueue, events: &Events) {
        events.file_truncated(&self.path, self.read_offset, size);
        self.read_offset = 0;
        self.marker = TailMarker::default();
        if let Some(mut chunker) = self.chunker.take() {
            // The complete lines of a record in progress were the old file's: queued as its last
            // record, not dropped with the chunker.
            if chunker.has_record_in_progress() {
                chunker.end_record_in_progress();
                let sealed: Vec<SealedChunk> = chunker.seal().into_iter().collect();
                if let Err(error) = append_all(queue, events, &sealed, ReadProgress::Advance) {
                    events.queue_failed(queue.name(), "append a truncated file's last record", &error);
                }
            }
            let identity = chunker.file();
            if let Err(error) = queue.release_file(&identity) {
                events.queue_failed(queue.name(), "release a truncated file's old position", &error);
            }
        }
    }
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
    /// Stored positions whose files could not be looked for at start-up (see
    /// [`Whereabouts::Unknown`]): kept, and looked for again at each scan.
    unreachable_positions: std::collections::HashSet<FileIdentity>,
    /// Set by change notifications: re-scan the globs at the next pass.
    changes: Arc<ChangeSignal>,
    /// Where the next pass starts in the file order, so every file gets the first turn in turn.
    next_turn: usize,
    buffer: Vec<u8>,
    /// A record of several lines is complete at its file's end (`run --once`: nothing later
    /// is read in this run), not only after its flush timeout.
    end_records_at_file_end: bool,
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
            unreachable_positions: std::collections::HashSet::new(),
            changes: Arc::new(ChangeSignal::default()),
            next_turn: 0,
            buffer: vec![0; READ_BLOCK],
            end_records_at_file_end: false,
        }
    }

    /// Lets change notifications ask for a re-scan.
    pub fn with_change_signal(mut self, changes: Arc<ChangeSignal>) -> Tailer {
        self.changes = changes;
        self
    }

    /// Ends each record of several lines at its file's end (see `end_records_at_file_end`).
    pub fn ending_records_at_file_end(mut self) -> Tailer {
        self.end_records_at_file_end = true;
        self
    }

    /// Files held open now (at most `max_open_files`, plus rotated files still being drained).
    pub fn open_descriptors(&self) -> usize {
        self.files.values().filter(|watched| watched.file.is_some()).count()
    }

    /// Scans the globs when due, reads every file up to its budget, appends what was read and
    /// commits it (fsync). Blocking.
    pub fn pass(&mut self) -> Result<PassOutcome, QueueError> {
        #[cfg(test)]
        test_faults::panic_if_asked(&self.source);
        self.discover();
        let mut outcome = PassOutcome { caught_up: true, ..PassOutcome::default() };
        let mut order: Vec<DevIno> = self.files.keys().copied().collect();
        order.sort_unstable();
        if !order.is_empty() {
            let first = self.next_turn % order.len();
            order.rotate_left(first);
            self.next_turn = first + 1;
        }
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
                outcome.read_ahead_full = true;
                continue;
            }
            if !self.make_ready(key) {
                continue;
            }
            let (read, at_end) = self.read_file(key, budget)?;
            outcome.bytes_read += read;
            outcome.caught_up &= at_end;
        }
        self.close_finished_files()?;
        self.close_idle_files();
        self.queue.commit()?;
        Ok(outcome)
    }

    /// Scans the globs when due (every `refresh_interval`, or at once after a change
    /// notification) without reading. While reading is paused for back-pressure this still runs,
    /// so that a file created and rotated away during the pause is found and held open, and
    /// read once there is room. Blocking.
    pub fn discover(&mut self) {
        let now = Instant::now();
        let rescan_requested = self.changes.rescan.swap(false, std::sync::atomic::Ordering::Relaxed);
        if rescan_requested || self.next_scan.is_none_or(|due| now >= due) {
            self.scan();
            self.next_scan = Some(now + self.source.refresh_interval);
        }
    }

    /// Makes sure a file is open when it has bytes to read. A closed file is reopened only when
    /// it grew, after closing the longest-idle open file if the source is at `max_open_files`.
    /// Returns whether the file can be read now.
    fn make_ready(&mut self, key: DevIno) -> bool {
        let Some(watched) = self.files.get(&key) else { return false };
        if watched.file.is_some() {
            return true;
        }
        let path = match find_file(key, &watched.path) {
            Whereabouts::At(path) => path,
            Whereabouts::Gone => {
                let path = watched.path.clone();
                self.forget(key);
                self.events.file_vanished_while_closed(&path);
                return false;
            }
            Whereabouts::Unknown(reason) => {
                self.events.file_unreachable(&watched.path, &reason);
                return false;
            }
        };
        let Ok(metadata) = std::fs::metadata(&path) else { return false };
        if metadata.len() == watched.read_offset {
            return false;
        }
        if self.open_descriptors() >= self.source.max_open_files {
            self.close_longest_idle(1);
        }
        let reopened = match File::open(&path) {
            Ok(file) => file,
            Err(error) => {
                self.events.file_open_failed(&path, &error);
                return false;
            }
        };
        let Some(watched) = self.files.get_mut(&key) else { return false };
        if let Some(identity) = watched.chunker.as_ref().map(LineChunker::file) {
            if !matches!(identity::compare(&reopened, &identity), Ok(IdentityMatch::Same)) {
                // Rewritten in place while closed: as after a truncation, it is a new file.
                watched.path = path.clone();
                watched.read_again_from_start(metadata.len(), &self.queue, &self.events);
            }
        }
        watched.path = path;
        watched.file = Some(reopened);
        true
    }

    /// Closes files, longest idle first, until no more than `max_open_files` are open. Only
    /// files still in their glob and read to their end are closed: they can be found and
    /// reopened; a rotated file is kept open until it is drained.
    fn close_idle_files(&mut self) {
        let open = self.open_descriptors();
        if open > self.source.max_open_files {
            self.close_longest_idle(open - self.source.max_open_files);
        }
    }

    fn close_longest_idle(&mut self, count: usize) {
        let mut idle: Vec<(Instant, DevIno)> = self
            .files
            .iter()
            // A record in progress is ended by a read that finds the file quiet: its file stays open.
            .filter(|(_, watched)| watched.file.is_some() && watched.in_glob && watched.at_end)
            .filter(|(_, watched)| watched.chunker.as_ref().is_none_or(|chunker| !chunker.has_record_in_progress()))
            .map(|(key, watched)| (watched.last_growth, *key))
            .collect();
        idle.sort_unstable();
        for (_, key) in idle.into_iter().take(count) {
            if let Some(watched) = self.files.get_mut(&key) {
                watched.file = None;
            }
        }
    }

    /// Stops following a file and lets the queue release its stored positions once everything
    /// read from it is acknowledged.
    fn forget(&mut self, key: DevIno) {
        if let Some(identity) = self.files.remove(&key).and_then(|watched| watched.chunker.map(|chunker| chunker.file())) {
            if let Err(error) = self.queue.release_file(&identity) {
                self.events.queue_failed(self.queue.name(), "release a finished file's position", &error);
            }
        }
    }

    /// How many bytes of this file the pass may read: a file still in its glob keeps its own
    /// bytes, so it may only fill the read-ahead window; one that left its glob (rotated, soon
    /// deleted) may fill the queue.
    fn read_budget(&self, key: DevIno) -> usize {
        let in_glob = self.files.get(&key).is_some_and(|watched| watched.in_glob);
        let window = if in_glob { self.read_ahead_bytes.saturating_sub(self.queue.pending_bytes()) } else { u64::MAX };
        let room = window.min(self.queue.room());
        usize::try_from(room).unwrap_or(usize::MAX).min(FILE_BUDGET_PER_PASS)
    }

    /// Reads one file up to `budget` bytes (rounded up to a read block) and appends the sealed
    /// chunks. Returns the bytes read and whether the file's end was reached.
    fn read_file(&mut self, key: DevIno, budget: usize) -> Result<(u64, bool), QueueError> {
        let Some(watched) = self.files.get_mut(&key) else { return Ok((0, true)) };
        let mut sealed = Vec::new();
        let mut appended = Ok(());
        let mut read_total = 0u64;
        let mut at_end = false;
        let mut checked = false;
        while (read_total as usize) < budget {
            if watched.chunker.is_none() && !start_chunker(watched, &self.source, &self.events) {
                at_end = true;
                break;
            }
            let Some(file) = watched.file.as_ref() else { break };
            let read = match file.read_at(&mut self.buffer, watched.read_offset) {
                Ok(read) => read,
                Err(error) => {
                    self.events.file_read_failed(&watched.path, &error);
                    at_end = true;
                    break;
                }
            };
            if read == 0 {
                if detect_truncation(watched, &self.queue, &self.events) {
                    continue;
                }
                at_end = true;
                break;
            }
            // New bytes: before taking them as what follows the last read, check that the file
            // is still the one read (a copytruncate may have been written past the old offset).
            if !checked {
                checked = true;
                if watched.rewritten_since_read() {
                    let size = file.metadata().map_or(0, |metadata| metadata.len());
                    watched.read_again_from_start(size, &self.queue, &self.events);
                    continue;
                }
            }
            watched.read_offset += read as u64;
            watched.marker.extend(&self.buffer[..read]);
            read_total += read as u64;
            if let Some(chunker) = watched.chunker.as_mut() {
                chunker.feed(&self.buffer[..read], &mut sealed);
            }
            // Appended as they seal, not at the end of the pass: a pass reads up to 4 MiB, and
            // holding its chunks until then was that much more memory at every pass.
            appended = append_all(&self.queue, &self.events, &sealed, ReadProgress::Advance);
            sealed.clear();
            if appended.is_err() {
                break;
            }
        }
        if read_total > 0 {
            watched.last_growth = Instant::now();
        }
        watched.at_end = at_end;
        if appended.is_ok() {
            if let Some(chunker) = watched.chunker.as_mut() {
                // A record of several lines is complete once its file has been at its end,
                // without growing, for the flush timeout: no later line may join it.
                let quiet = |flush_timeout| read_total == 0 && at_end && watched.last_growth.elapsed() >= flush_timeout;
                let ended = self.end_records_at_file_end && at_end
                    || self.source.multiline.as_ref().is_some_and(|multiline| quiet(multiline.flush_timeout));
                if chunker.has_record_in_progress() && ended {
                    chunker.end_record_in_progress();
                }
                sealed.extend(chunker.seal());
            }
            appended = append_all(&self.queue, &self.events, &sealed, ReadProgress::Advance);
        }
        self.events.bytes_read(read_total);
        if let Err(error) = appended {
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
        let exclude: Vec<glob::Pattern> = self.source.exclude.iter().filter_map(|pattern| glob::Pattern::new(pattern).ok()).collect();
        for path in self.glob_paths() {
            if exclude.iter().any(|pattern| pattern.matches_path(&path)) {
                continue;
            }
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
            match self.open_file(&path, &metadata, startup) {
                Ok(Some(watched)) => {
                    self.files.insert(key, watched);
                }
                Ok(None) => {}
                Err(error) => self.events.file_open_failed(&path, &error),
            }
        }
        let patterns: Vec<glob::Pattern> = self.source.paths.iter().filter_map(|pattern| glob::Pattern::new(pattern).ok()).collect();
        for (key, watched) in self.files.iter_mut().filter(|(_, watched)| !watched.in_glob) {
            match still_in_glob(*key, &watched.path, watched.file.as_ref(), &patterns, &exclude) {
                Some(Whereabouts::Unknown(reason)) => {
                    self.events.file_unreachable(&watched.path, &reason);
                    watched.in_glob = true;
                }
                Some(_) => watched.in_glob = true,
                None => {}
            }
        }
        let now = Instant::now();
        for watched in self.files.values_mut() {
            watched.left_glob_at = match watched.in_glob {
                true => None,
                false => Some(watched.left_glob_at.unwrap_or(now)),
            };
        }
        if startup || !self.unreachable_positions.is_empty() {
            self.follow_files_rotated_while_stopped(startup);
        }
    }

    /// Files read before the stop that the globs no longer find: rotated away while tailhose was
    /// not running. Found again by device and inode in their last folder, they are read from
    /// their stored position to their end, then closed like any rotated file.
    /// After start-up, only the positions whose files could not be looked for are tried again.
    fn follow_files_rotated_while_stopped(&mut self, startup: bool) {
        let stored = match self.queue.stored_file_states() {
            Ok(stored) => stored,
            Err(error) => {
                self.events.queue_failed(
                    self.queue.name(),
                    "list stored positions (files rotated while stopped are not looked for)",
                    &error,
                );
                return;
            }
        };
        for (identity, state) in stored {
            let key = (identity.device, identity.inode);
            if self.files.contains_key(&key) {
                self.unreachable_positions.remove(&identity);
                continue;
            }
            if !startup && !self.unreachable_positions.contains(&identity) {
                continue;
            }
            let last_path = Path::new(std::ffi::OsStr::from_bytes(&state.path));
            let path = match find_file(key, last_path) {
                Whereabouts::At(path) => path,
                Whereabouts::Gone => {
                    // Deleted while stopped: nothing more can be read; forget it once delivered.
                    if let Err(error) = self.queue.release_file(&identity) {
                        self.events.queue_failed(self.queue.name(), "release a deleted file's position", &error);
                    }
                    continue;
                }
                Whereabouts::Unknown(reason) => {
                    // Kept, and looked for again at each scan: found in its glob later, it
                    // resumes at its position like any file read before.
                    self.events.file_unreachable(last_path, &reason);
                    self.unreachable_positions.insert(identity);
                    continue;
                }
            };
            self.unreachable_positions.remove(&identity);
            let Ok(file) = File::open(&path) else { continue };
            if !matches!(identity::compare(&file, &identity), Ok(IdentityMatch::Same)) {
                continue;
            }
            self.events.file_added(self.queue.name(), &path, state.queued_offset, "stored position (rotated while stopped)");
            self.files.insert(
                key,
                WatchedFile {
                    chunker: Some(new_chunker(identity, &path, &self.source, state.queued_offset)),
                    path,
                    file: Some(file),
                    read_offset: state.queued_offset,
                    in_glob: false,
                    last_growth: Instant::now(),
                    left_glob_at: Some(Instant::now()),
                    at_end: false,
                    marker: TailMarker::default(),
                },
            );
        }
    }

    fn glob_paths(&self) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        for pattern in &self.source.paths {
            match glob::glob(pattern) {
                Ok(found) => {
                    for entry in found {
                        match entry {
                            Ok(path) => paths.push(path),
                            // A folder that cannot be listed: its files are not taken for gone
                            // (see `still_in_glob`), but it is said.
                            Err(error) => self.events.file_unreachable(error.path(), &error.error().to_string()),
                        }
                    }
                }
                Err(error) => self.events.glob_failed(pattern, &error.to_string()),
            }
        }
        paths.sort();
        paths.dedup();
        paths
    }

    /// Opens a newly found file and decides where reading starts; `None` for a file that
    /// `ignore_older_than` leaves alone.
    fn open_file(&self, path: &Path, metadata: &std::fs::Metadata, startup: bool) -> Result<Option<WatchedFile>, OpenError> {
        let file = File::open(path)?;
        let size = metadata.len();
        let (stored, replaced) = self.stored_position(&file)?;
        let too_old = self
            .source
            .ignore_older_than
            .zip(metadata.modified().ok())
            .is_some_and(|(limit, modified)| modified.elapsed().is_ok_and(|age| age > limit));
        if too_old && stored.is_none() {
            return Ok(None);
        }
        let start = match (stored, startup, self.source.read_from_head) {
            (Some((_, queued)), _, _) if queued <= size => StartAt::Stored(queued),
            (Some((_, queued)), _, _) => {
                self.events.file_truncated(path, queued, size);
                StartAt::Head
            }
            // Positions are stored for this inode but none is this file's: it was truncated,
            // rewritten or reused while tailhose was stopped. What it holds was written since
            // (or is a new file): read it all rather than skip it.
            (None, true, false) if replaced => {
                self.events.file_truncated(path, 0, size);
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
        Ok(Some(WatchedFile {
            path: path.to_path_buf(),
            file: Some(file),
            read_offset,
            chunker,
            in_glob: true,
            last_growth: Instant::now(),
            left_glob_at: None,
            at_end: false,
            marker: TailMarker::default(),
        }))
    }

    /// The stored identity and read position of this open file, if the queue knows it, and
    /// whether positions are stored for its device and inode that are not its own (the file
    /// was replaced or rewritten in place since they were stored).
    fn stored_position(&self, file: &File) -> Result<(Option<(FileIdentity, u64)>, bool), QueueError> {
        let Ok(metadata) = file.metadata() else { return Ok((None, false)) };
        let stored = self.queue.stored_files(metadata.dev(), metadata.ino())?;
        for (identity, state) in &stored {
            if let Ok(IdentityMatch::Same) = identity::compare(file, identity) {
                return Ok((Some((*identity, state.queued_offset)), false));
            }
        }
        Ok((None, !stored.is_empty()))
    }

    /// Closes files that left the glob (rotated away or deleted), are read to their end and have
    /// not grown for one `refresh_interval`, after delivering their unterminated last line: such
    /// a file cannot grow any more. A file paused by back-pressure is not at its end: it stays.
    fn close_finished_files(&mut self) -> Result<(), QueueError> {
        let rotate_wait = self.source.refresh_interval;
        let finished: Vec<DevIno> = self
            .files
            .iter_mut()
            .filter(|(_, watched)| {
                let waited = |since: Instant| since.elapsed() >= rotate_wait;
                !watched.in_glob && watched.at_end && waited(watched.last_growth) && watched.left_glob_at.is_some_and(waited)
            })
            .filter_map(|(key, watched)| {
                // "At its end" is what the last read found: a pass that stopped before this file
                // (queue full, pass budget) left it as it was, and the file may have grown since.
                let grown =
                    watched.file.as_ref().is_some_and(|file| file.metadata().is_ok_and(|metadata| metadata.len() > watched.read_offset));
                if grown {
                    watched.at_end = false;
                    return None;
                }
                Some(*key)
            })
            .collect();
        for key in finished {
            let Some(watched) = self.files.get_mut(&key) else { continue };
            if let Some(chunker) = watched.chunker.as_mut() {
                chunker.finish_unterminated_line();
                let sealed: Vec<SealedChunk> = chunker.seal().into_iter().collect();
                append_all(&self.queue, &self.events, &sealed, ReadProgress::Advance)?;
            }
            self.events.file_closed(&watched.path);
            self.forget(key);
        }
        Ok(())
    }
}

/// Where a file known by device and inode is now, as far as can be told.
#[derive(Debug)]
enum Whereabouts {
    /// At this path: its last one, or (renamed while closed) another entry of its folder.
    At(PathBuf),
    /// Looked for on its own filesystem and not there: deleted, or moved out of its folder.
    Gone,
    /// Could not be looked for: its folder cannot be listed (permissions, a stale NFS handle, an
    /// I/O error), or is not on the file's filesystem (a volume not mounted yet, or unmounted).
    /// It may still exist, so its position is kept and nothing is read again from its head.
    Unknown(String),
}

/// Where the file `key`, last seen at `last_path`, is now.
fn find_file(key: DevIno, last_path: &Path) -> Whereabouts {
    let same_file = |path: &Path| std::fs::metadata(path).is_ok_and(|metadata| (metadata.dev(), metadata.ino()) == key);
    if same_file(last_path) {
        return Whereabouts::At(last_path.to_path_buf());
    }
    let Some(folder) = last_path.parent() else { return Whereabouts::Gone };
    match std::fs::read_dir(folder) {
        Ok(entries) => {
            let mut unlisted = None;
            for entry in entries {
                match entry {
                    Ok(entry) if same_file(&entry.path()) => return Whereabouts::At(entry.path()),
                    Ok(_) => {}
                    Err(error) => unlisted = Some(error),
                }
            }
            match unlisted {
                Some(error) => Whereabouts::Unknown(format!("cannot list {}: {error}", folder.display())),
                None => on_its_filesystem(key.0, folder),
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => on_its_filesystem(key.0, folder),
        Err(error) => Whereabouts::Unknown(format!("cannot list {}: {error}", folder.display())),
    }
}

/// A file not found in `folder` is gone if `folder` (or, if it does not exist, its nearest
/// existing ancestor) is on the file's own filesystem, or is a folder with entries on another
/// one (the file was reached through a symbolic link from it, as Kubernetes' `/var/log/containers`
/// links are, or moved away). An empty folder, or a missing one, on another filesystem is where
/// the file's volume is not mounted now: it cannot be looked for.
fn on_its_filesystem(device: u64, folder: &Path) -> Whereabouts {
    match folder.ancestors().find_map(|ancestor| std::fs::metadata(ancestor).ok().map(|metadata| (ancestor, metadata.dev()))) {
        Some((_, found_device)) if found_device == device => Whereabouts::Gone,
        Some((ancestor, _)) if ancestor == folder && has_entries(folder) => Whereabouts::Gone,
        Some((ancestor, found_device)) => Whereabouts::Unknown(format!(
            "{} is on device {found_device}, not the file's device {device}: is its volume mounted?",
            ancestor.display()
        )),
        None => Whereabouts::Unknown(format!("no part of {} can be looked at", folder.display())),
    }
}

fn has_entries(folder: &Path) -> bool {
    std::fs::read_dir(folder).is_ok_and(|mut entries| entries.next().is_some())
}

/// Whether a watched file the glob scan did not list is still in its glob: its path still
/// matches a pattern and is the same file (the folder's listing failed or raced), or it cannot
/// be looked for. Either way it is not taken for rotated away.
fn still_in_glob(
    key: DevIno,
    path: &Path,
    open: Option<&File>,
    patterns: &[glob::Pattern],
    exclude: &[glob::Pattern],
) -> Option<Whereabouts> {
    if !patterns.iter().any(|pattern| pattern.matches_path(path)) || exclude.iter().any(|pattern| pattern.matches_path(path)) {
        return None;
    }
    // An open file with no name left is deleted, wherever its folder is.
    if open.and_then(|file| file.metadata().ok()).is_some_and(|metadata| metadata.nlink() == 0) {
        return None;
    }
    match std::fs::metadata(path) {
        Ok(metadata) if (metadata.dev(), metadata.ino()) == key => Some(Whereabouts::At(path.to_path_buf())),
        Ok(_) => None,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => match path.parent().map(|folder| on_its_filesystem(key.0, folder)) {
            Some(unknown @ Whereabouts::Unknown(_)) => Some(unknown),
            _ => None,
        },
        Err(error) => Some(Whereabouts::Unknown(format!("cannot look at {}: {error}", path.display()))),
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
        .with_header_lines(source.skip_header_lines)
        .with_multiline(source.multiline.clone())
        .with_single_line(source.single_line.clone())
        .with_parser(source.parse.clone())
        .with_added_fields(source.add_fields.clone())
}

/// Gives a file that was empty its identity once it has bytes. Returns whether it has one.
fn start_chunker(watched: &mut WatchedFile, source: &SourceSettings, events: &Events) -> bool {
    let Some(file) = watched.file.as_ref() else { return false };
    match identity::identify(file) {
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
fn detect_truncation(watched: &mut WatchedFile, queue: &RouteQueue, events: &Events) -> bool {
    let Some(Ok(size)) = watched.file.as_ref().map(|file| file.metadata().map(|metadata| metadata.len())) else { return false };
    if size >= watched.read_offset {
        return false;
    }
    watched.read_again_from_start(size, queue, events);
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
    /// The file could not be looked for (see [`Whereabouts::Unknown`]): the range stays owed
    /// and is tried again at the next start-up.
    Deferred { reason: String },
}

/// Re-reads `[start, end)` of the file `identity` (last seen at `path`, or renamed since within
/// the same folder) into the queue, for a chunk that was set aside. Where the file is gone,
/// replaced or shorter, the range is recorded as an unrecoverable dead letter instead. Blocking.
pub fn recover_range(
    queue: &RouteQueue,
    events: &Events,
    source: &SourceSettings,
    identity: FileIdentity,
    path: &[u8],
    start: u64,
    end: u64,
) -> Result<RecoveryOutcome, QueueError> {
    let last_path = Path::new(std::ffi::OsStr::from_bytes(path));
    // The file may have been renamed since (logrotate's rename + create): the bytes are where
    // the file now is, found by device and inode in the same folder, as at start-up.
    let located = match find_file((identity.device, identity.inode), last_path) {
        Whereabouts::At(path) => Some(path),
        Whereabouts::Gone => None,
        // The bytes may still exist: the range stays owed and is looked for at the next start.
        Whereabouts::Unknown(reason) => return Ok(RecoveryOutcome::Deferred { reason }),
    };
    let os_path = located.as_deref().unwrap_or(last_path);
    // Where the bytes that cannot be recovered start: the whole range, unless a read fails
    // part of the way through it.
    let mut lost_from = start;
    let reason = match File::open(os_path) {
        Err(error) => format!("source file cannot be opened: {error}"),
        Ok(file) => match (identity::compare(&file, &identity), file.metadata()) {
            (Ok(IdentityMatch::Same), Ok(metadata)) if metadata.len() >= end => {
                match reread_in_blocks(queue, events, source, &file, identity, os_path, start..end)? {
                    Reread::Whole { records } => return Ok(RecoveryOutcome::Recovered { records }),
                    Reread::StoppedAt { offset, error } => {
                        lost_from = offset;
                        format!("source file could not be read past byte {offset} of {start}..{end}: {error}")
                    }
                }
            }
            (Ok(IdentityMatch::Same), Ok(metadata)) => {
                format!("source file no longer holds bytes {start}..{end}: it is {} bytes long", metadata.len())
            }
            (Ok(IdentityMatch::Same), Err(error)) | (Err(error), _) => format!("source file cannot be checked: {error}"),
            (Ok(_), _) => "the file at that path is no longer the file the records came from".to_owned(),
        },
    };
    let mut dead_letter = DeadLetter {
        reason: DeadLetterReason::Unrecoverable,
        detail: reason.clone(),
        file: identity,
        path: path.to_vec(),
        offset: lost_from,
        record_len: end - lost_from,
        record: Vec::new(),
        recorded_at_ms: super::chunker::now_ms(),
    };
    // A zero-record chunk over the range carries the dead letter, so the range is accounted for.
    let mut draft = crate::queue::ChunkDraft::new(identity, path.to_vec(), lost_from);
    draft.meta.end_offset = end;
    draft.meta.created_at_ms = dead_letter.recorded_at_ms;
    queue.append(&draft, std::slice::from_ref(&dead_letter), ReadProgress::Recovered)?;
    dead_letter.record.clear();
    events.dead_lettered(queue.name(), &dead_letter);
    Ok(RecoveryOutcome::DeadLettered { reason })
}

/// How re-reading a range went.
enum Reread {
    Whole {
        records: u64,
    },
    /// A read failed at `offset`: what came before it is queued (its last line as it was).
    StoppedAt {
        offset: u64,
        error: std::io::Error,
    },
}

/// Reads `range` of `file` a block at a time into the queue, appending chunks as they seal: a
/// range of gigabytes (one corrupt chunk early in a large file) costs one block and one chunk
/// of memory, not its size.
fn reread_in_blocks(
    queue: &RouteQueue,
    events: &Events,
    source: &SourceSettings,
    file: &File,
    identity: FileIdentity,
    path: &Path,
    range: std::ops::Range<u64>,
) -> Result<Reread, QueueError> {
    let mut chunker = new_chunker(identity, path, source, range.start);
    // The range was read once already: the dead letters it made then are stored.
    let stored_dead_letters = queue.dead_letter_offsets(identity, range.clone())?;
    let mut block = vec![0u8; READ_BLOCK];
    let mut sealed = Vec::new();
    let mut records = 0u64;
    let mut offset = range.start;
    let mut failed = None;
    while offset < range.end {
        let want = usize::try_from(range.end - offset).unwrap_or(usize::MAX).min(READ_BLOCK);
        if let Err(error) = file.read_exact_at(&mut block[..want], offset) {
            failed = Some(error);
            break;
        }
        chunker.feed(&block[..want], &mut sealed);
        offset += want as u64;
        records += append_reread(queue, events, &mut sealed, &stored_dead_letters)?;
    }
    chunker.finish_unterminated_line();
    sealed.extend(chunker.seal());
    records += append_reread(queue, events, &mut sealed, &stored_dead_letters)?;
    Ok(match failed {
        None => Reread::Whole { records },
        Some(error) => Reread::StoppedAt { offset, error },
    })
}

/// Appends chunks sealed from a re-read range (and empties `sealed`) without the dead letters
/// stored when their bytes were first read (same file, same offset), so a recovered range does
/// not store or count them twice. Returns the records appended.
fn append_reread(
    queue: &RouteQueue,
    events: &Events,
    sealed: &mut Vec<SealedChunk>,
    stored_dead_letters: &std::collections::HashSet<u64>,
) -> Result<u64, QueueError> {
    let records = sealed.iter().map(|chunk| u64::from(chunk.draft.meta.record_count)).sum();
    for chunk in sealed.iter_mut() {
        chunk.dead_letters.retain(|letter| !stored_dead_letters.contains(&letter.offset));
    }
    append_all(queue, events, sealed, ReadProgress::Recovered)?;
    sealed.clear();
    Ok(records)
}

/// Faults a test can ask of a tailer, keyed by its source's first glob (tests run in parallel).
#[cfg(test)]
pub(crate) mod test_faults {
    use std::sync::Mutex;

    static PANIC_IN_PASS: Mutex<Vec<String>> = Mutex::new(Vec::new());

    /// Every pass of a tailer of a source whose first glob is `pattern` panics.
    pub(crate) fn panic_in_passes_of(pattern: &str) {
        PANIC_IN_PASS.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(pattern.to_owned());
    }

    pub(super) fn panic_if_asked(source: &crate::config::SourceSettings) {
        let asked = PANIC_IN_PASS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .any(|pattern| source.paths.first() == Some(pattern));
        assert!(!asked, "a test asked this pass to panic");
    }
}

#[cfg(test)]
mod tests;
