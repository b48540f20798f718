//! The on-disk queue: records between the file they were read from and the sink that takes them.
//!
//! # Design constraints
//! - One sled database per `data_dir`, one tree per *route* (a source feeding a sink), so each
//!   route is acknowledged on its own and one `apply_batch` changes a route atomically; beside
//!   it the route's [body trees](bodies) hold the bytes of its pending chunks.
//! - Records are stored in checksummed [chunks](chunk), many records per sled write.
//! - **Invariant 1** — a chunk and the read position that covers it are written in one sled
//!   transaction (the chunk's bytes go to the route's [body trees](bodies), the rest to its
//!   tree); the chunk is *committed* (visible to the flusher) only after sled has flushed it.
//! - **Invariant 2** — the acknowledged position of a file is the start of its oldest chunk read
//!   in order and not yet fully acknowledged (or its read position when none is left); only
//!   [`RouteQueue::acknowledge`] writes it, after the sink accepted every record before it, except
//!   for the ranges the file *owes*: those of chunks set aside, stored under their own key
//!   ([`ranges::ByteRanges`]) before the position may pass them, and removed only as the
//!   acknowledgement of their re-read. So a damaged chunk never freezes a file's position, and a
//!   re-read chunk queued behind later ones is neither lost nor read again after a restart.
//! - **Invariant 3** — per chunk, the count of leading records already acknowledged is stored with
//!   each acknowledgement, so a restart resends neither a whole acknowledged chunk nor the
//!   acknowledged prefix of a partly acknowledged one.
//! - **Invariant 4** — every chunk is verified when it is read; one that fails is moved to the
//!   set-aside area, never sent, and its byte range is re-read from the source where it still
//!   exists ([`recovery`]).
//! - **Invariant 5** — the queue's size is tracked; [`RouteQueue::wait_for_space`] is what pauses
//!   reading when `max_queue_bytes` is reached. Dead letters go in the same batch as the change
//!   that skips their bytes.
//! - sled's storage may be damaged under it (sled does not fsync its blob files); its log
//!   recovery rolls back to the last consistent point, which invariant 1 turns into reading
//!   again. [`QueueStore::open`] makes sure a stale snapshot cannot stop that rollback, nor a
//!   kill during the queue's creation leave settings sled refuses for good.
//!
//! # On-disk format
//! Keys are described in [`keys`], values in [`chunk`], [`positions`] and [`dead_letter`], where
//! pending chunks' bytes live in [`bodies`]; the byte-by-byte specification is
//! `docs/queue-format.md`.
//!
//! # Writing
//! The reader calls [`RouteQueue::append`] for each sealed chunk, then [`RouteQueue::commit`]
//! once per read pass: one fsync covers many chunks.
//!
//! # Reading and deleting acknowledged
//! The flusher reads committed chunks in sequence order with [`RouteQueue::read_pending`] and,
//! once the sink has accepted a batch, calls [`RouteQueue::acknowledge`], which deletes completed
//! chunks (or moves them to the retained area, when the route retains acknowledged chunks),
//! records partial progress and advances file positions in one batch, then flushes.
//!
//! # Replay
//! [`RouteQueue::append_replay`] queues records again (retained chunks, dead letters) as pending
//! chunks marked as replays, in the same batch that consumes a replayed dead letter. A replay's
//! acknowledgement moves no file position: the file's bytes were acknowledged long ago.

pub mod bodies;
pub mod chunk;
pub mod dead_letter;
pub mod inspect;
pub mod keys;
pub mod opening;
pub mod positions;
pub mod ranges;
pub mod recovery;
pub mod replay;
pub mod retained;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sled::Transactional;
use tokio::sync::{watch, Notify};

use crate::config::Retention;

pub use chunk::{ChunkDraft, ChunkError, ChunkMeta, ChunkSeq, DecodedChunk};
pub use dead_letter::{DeadLetter, DeadLetterReason};
pub use opening::{AdoptedOwner, Creation, OtherOwner};
pub use positions::{FileIdentity, FileReadState};

use bodies::ChunkBodies;
use keys::KeyKind;
use ranges::ByteRanges;
use recovery::MissingRange;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue in {path} is in use by another process (only one tailhose may use a data_dir at a time): {source}")]
    Locked { path: PathBuf, source: sled::Error },
    #[error("cannot open the queue in {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("the queue in {path} is damaged and its snapshot files could not be moved to {folder}: {source}")]
    SetAsideSnapshots { path: PathBuf, folder: PathBuf, source: std::io::Error },
    #[error(
        "the queue in {path} has lost its log (queue/db: deleted, or moved to lost+found by fsck?) but still holds \
         its other files: opened as it is, it would forget every file position. Move {path} aside to start afresh \
         (files are then read again as read_from_head says)"
    )]
    LogMissing { path: PathBuf },
    #[error("cannot become the user who owns data_dir {path} (root must not leave files there that user cannot open): {source}")]
    AdoptOwner { path: PathBuf, source: std::io::Error },
    #[error(
        "data_dir {path} belongs to {owner}: run the daemon as that user (the package's unit does: User=tailhose), \
         not as root, whose files there would lock that user out and who would read the sources with rights the service lacks"
    )]
    OwnedByAnotherUser { path: PathBuf, owner: String },
    #[error("queue storage failed: {0}; check the disk holding data_dir (space, permissions)")]
    Storage(#[from] sled::Error),
    /// A queue operation did not finish in time: sled blocks instead of failing after some I/O
    /// errors (a full disk), so a stall is a storage failure too.
    #[error("queue storage did not answer within {after:?} during {operation}; check the disk holding data_dir (space, health)")]
    Stalled { operation: &'static str, after: std::time::Duration },
}

/// The sled database of one `data_dir`.
#[derive(Clone)]
pub struct QueueStore {
    db: sled::Db,
    path: PathBuf,
    /// Set when sled could only open the queue without its snapshot files (see [`QueueStore::open`]).
    rolled_back: Option<SnapshotsSetAside>,
    /// See [`QueueStore::data_dir_open_to_others`].
    open_to_others: Option<u32>,
    /// See [`QueueStore::creation`].
    creation: Creation,
    /// See [`QueueStore::settings_moved_to`].
    settings_moved_to: Option<PathBuf>,
    /// See [`QueueStore::adopted_owner`].
    adopted_owner: Option<AdoptedOwner>,
}

/// `data_dir` holds log contents and dead letters: what this process creates from now on is
/// its own (umask 077: folders 0700, files 0600, sled's included), and a missing `data_dir` is
/// created 0700. Returns the mode of an existing one that others may read or write.
fn keep_to_ourselves(data_dir: &Path) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    // SAFETY: umask only sets the process's file-mode mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    match std::fs::metadata(data_dir) {
        Ok(metadata) => {
            let mode = metadata.permissions().mode() & 0o777;
            Ok((mode & 0o077 != 0).then_some(mode))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(data_dir)?;
            if let Some(parent) = data_dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
                opening::sync_folder(parent)?;
            }
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// sled's snapshot files, moved out of the queue so that sled could recover from its log alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotsSetAside {
    /// Where they are now (kept for a bug report; tailhose never reads them again).
    pub folder: PathBuf,
    /// What sled said when it refused to open with them.
    pub refusal: String,
}

fn open_sled(path: &Path, cache_bytes: u64) -> Result<sled::Db, sled::Error> {
    sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        // Durability comes from explicit flushes at commit and acknowledgement; sled's own
        // timer flush only adds fsyncs.
        .flush_every_ms(None)
        .open()
}

fn open_error(path: PathBuf, source: sled::Error) -> QueueError {
    match &source {
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") => {
            QueueError::Locked { path, source }
        }
        _ => QueueError::Open { path, source },
    }
}

/// sled's snapshot files in the queue directory: every file whose name starts with `snap.`
/// (sled reads the newest of them at open).
fn snapshot_files(queue_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(queue_dir) else { return Vec::new() };
    entries.flatten().filter(|entry| entry.file_name().to_string_lossy().starts_with("snap.")).map(|entry| entry.path()).collect()
}

impl std::fmt::Display for SnapshotsSetAside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the queue's log was damaged (sled does not fsync its blob files: after a power cut?) and sled refused it ({}); \
             its snapshot files were moved to {} and the queue rolled back to its last consistent point: \
             what the rollback lost is read again from the source files",
            self.refusal,
            self.folder.display()
        )
    }
}

/// Where [`QueueStore::open`] moves snapshot files that stop sled from opening, under `data_dir`.
pub const SET_ASIDE_SNAPSHOTS_DIR: &str = "queue-snapshots-set-aside";

impl QueueStore {
    /// Opens (or creates) the queue under `data_dir`. `cache_bytes` bounds sled's page cache,
    /// which is most of the daemon's memory.
    ///
    /// sled 0.34 never fsyncs its blob files (each value over 128 KiB, so every chunk body is
    /// one); after a power cut its log can point at a blob whose bytes never reached the disk.
    /// Its recovery then stops at that blob, before the point its snapshot says is stable, and
    /// it refuses to open (`Corruption`), which would stop tailhose for good. So on that
    /// refusal the snapshot files are moved to [`SET_ASIDE_SNAPSHOTS_DIR`] and the queue opened
    /// again: sled recovers from its log alone, up to the damage. Each chunk was written in one
    /// transaction with the read position that covers it, so the rollback only moves reading
    /// back, and what it lost is read again from the source files.
    pub fn open(data_dir: &Path, cache_bytes: u64) -> Result<QueueStore, QueueError> {
        QueueStore::open_with(data_dir, cache_bytes, OtherOwner::Refuse)
    }

    /// [`QueueStore::open`] for a command run as root on a data_dir another user owns: the
    /// process becomes that user ([`OtherOwner::Become`]).
    pub fn open_as_owner(data_dir: &Path, cache_bytes: u64) -> Result<QueueStore, QueueError> {
        QueueStore::open_with(data_dir, cache_bytes, OtherOwner::Become)
    }

    fn open_with(data_dir: &Path, cache_bytes: u64, other_owner: OtherOwner) -> Result<QueueStore, QueueError> {
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| open_error(path, sled::Error::Io(source))
        };
        let owner_error = |source| QueueError::AdoptOwner { path: data_dir.to_path_buf(), source };
        let adopted_owner = match (opening::other_owner(data_dir).map_err(owner_error)?, other_owner) {
            (None, _) => None,
            (Some(owner), OtherOwner::Refuse) => {
                let name = owner.name.clone().unwrap_or_else(|| format!("user id {}", owner.uid));
                return Err(QueueError::OwnedByAnotherUser { path: data_dir.to_path_buf(), owner: name });
            }
            (Some(owner), OtherOwner::Become) => {
                opening::become_user(&owner).map_err(owner_error)?;
                Some(owner)
            }
        };
        let open_to_others = keep_to_ourselves(data_dir).map_err(io_error(data_dir))?;
        let path = data_dir.join("queue");
        let held = || {
            open_error(
                path.clone(),
                sled::Error::Io(std::io::Error::new(std::io::ErrorKind::WouldBlock, "another process opens or holds the queue")),
            )
        };
        let opening::Lock::Taken(_opening) = opening::OpeningLock::take(data_dir).map_err(io_error(data_dir))? else { return Err(held()) };
        if !opening::log_is_free(&path).map_err(io_error(&path))? {
            return Err(held());
        }
        let (creation, settings_moved_to) = match opening::prepare(&path).map_err(io_error(&path))? {
            opening::Found::Creation(creation) => (creation, None),
            opening::Found::Queue { settings_moved_to } => (Creation::Found, settings_moved_to),
            opening::Found::LogMissing => return Err(QueueError::LogMissing { path }),
        };
        let store = |db, rolled_back| QueueStore {
            db,
            path: path.clone(),
            rolled_back,
            open_to_others,
            creation,
            settings_moved_to: settings_moved_to.clone(),
            adopted_owner: adopted_owner.clone(),
        };
        let refusal = match open_sled(&path, cache_bytes) {
            Ok(db) => {
                opening::mark_opened(&path).map_err(io_error(&path))?;
                opening::sync(data_dir, &path).map_err(io_error(&path))?;
                return Ok(store(db, None));
            }
            Err(refusal @ sled::Error::Corruption { .. }) => refusal,
            Err(source) => return Err(open_error(path, source)),
        };
        let snapshots = snapshot_files(&path);
        if snapshots.is_empty() {
            return Err(open_error(path, refusal));
        }
        let folder = data_dir.join(SET_ASIDE_SNAPSHOTS_DIR).join(now_ms().to_string());
        let set_aside = |source| QueueError::SetAsideSnapshots { path: path.clone(), folder: folder.clone(), source };
        std::fs::create_dir_all(&folder).map_err(set_aside)?;
        for snapshot in &snapshots {
            let name = snapshot.file_name().unwrap_or_default();
            std::fs::rename(snapshot, folder.join(name)).map_err(set_aside)?;
        }
        let db = open_sled(&path, cache_bytes).map_err(|source| open_error(path.clone(), source))?;
        opening::mark_opened(&path).map_err(io_error(&path))?;
        opening::sync(data_dir, &path).map_err(io_error(&path))?;
        Ok(store(db, Some(SnapshotsSetAside { folder, refusal: refusal.to_string() })))
    }

    /// Where sled's settings file went when it failed its checksum beside a log (sled wrote it
    /// again: see [`opening`]).
    pub fn settings_moved_to(&self) -> Option<&Path> {
        self.settings_moved_to.as_deref()
    }

    /// The user root became to open a data_dir that user owns (see [`opening`]).
    pub fn adopted_owner(&self) -> Option<&AdoptedOwner> {
        self.adopted_owner.as_ref()
    }

    /// Whether this open found the queue or created it (again, after an interrupted creation).
    pub fn creation(&self) -> Creation {
        self.creation
    }

    /// The permission bits of a `data_dir` that was found readable or writable by others (it
    /// holds log contents and dead letters): the caller warns.
    pub fn data_dir_open_to_others(&self) -> Option<u32> {
        self.open_to_others
    }

    /// Whether this open had to set sled's snapshots aside, and where they went.
    pub fn rolled_back(&self) -> Option<&SnapshotsSetAside> {
        self.rolled_back.as_ref()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names of the routes that have a tree in this store.
    pub fn route_names(&self) -> Vec<String> {
        self.db
            .tree_names()
            .into_iter()
            .filter_map(|name| std::str::from_utf8(&name).ok()?.strip_prefix(ROUTE_TREE_PREFIX).map(str::to_owned))
            .collect()
    }

    /// Opens one route's queue and runs start-up verification (see [`recovery`]).
    pub fn open_route(&self, route: &str, max_queue_bytes: u64) -> Result<(RouteQueue, recovery::RecoveryReport), QueueError> {
        self.open_route_with(route, max_queue_bytes, recovery::Repair::Apply)
    }

    /// Opens a route to look at it: the scan only reads (see [`recovery::Repair::Inspect`]);
    /// the report says what the daemon's start-up would set aside and re-read.
    pub fn inspect_route(&self, route: &str) -> Result<(RouteQueue, recovery::RecoveryReport), QueueError> {
        self.open_route_with(route, u64::MAX, recovery::Repair::Inspect)
    }

    fn open_route_with(
        &self,
        route: &str,
        max_queue_bytes: u64,
        repair: recovery::Repair,
    ) -> Result<(RouteQueue, recovery::RecoveryReport), QueueError> {
        let tree = self.db.open_tree(format!("{ROUTE_TREE_PREFIX}{route}"))?;
        let bodies = ChunkBodies::open(&self.db, &tree, route)?;
        let scan = recovery::scan_route(&tree, &bodies, repair)?;
        let queue = RouteQueue {
            inner: Arc::new(RouteInner {
                name: route.to_owned(),
                db: self.db.clone(),
                tree,
                bodies,
                next_seq: AtomicU64::new(scan.next_seq.0),
                accounting: Mutex::new(Accounting { retention: Retention::default(), ..scan.accounting }),
                committed: watch::Sender::new(scan.next_seq),
                space_freed: Notify::new(),
                max_queue_bytes,
            }),
        };
        Ok((queue, scan.report))
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), QueueError> {
        self.db.flush()?;
        Ok(())
    }
}

const ROUTE_TREE_PREFIX: &str = "route:";

/// Wall-clock milliseconds since the Unix epoch, for timestamps stored in the queue.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
}

/// The route name of a source feeding a sink.
pub fn route_name(source: &str, sink: &str) -> String {
    format!("{source}->{sink}")
}

/// One route's queue. Cheap to clone; all clones share the same state.
#[derive(Clone)]
pub struct RouteQueue {
    inner: Arc<RouteInner>,
}

struct RouteInner {
    name: String,
    db: sled::Db,
    tree: sled::Tree,
    bodies: ChunkBodies,
    next_seq: AtomicU64,
    accounting: Mutex<Accounting>,
    /// Every chunk with a lower sequence number is durable. Written by the reader after a flush,
    /// watched by the flusher.
    committed: watch::Sender<ChunkSeq>,
    /// Signalled by acknowledgements, awaited by a reader paused for back-pressure.
    space_freed: Notify,
    max_queue_bytes: u64,
}

/// In-memory mirror of what the tree holds, rebuilt at start-up by [`recovery::scan_route`].
#[derive(Debug, Default)]
pub(crate) struct Accounting {
    pending_bytes: u64,
    /// Records of pending chunks not yet acknowledged.
    pending_records: u64,
    pending: BTreeMap<ChunkSeq, PendingChunk>,
    files: HashMap<FileIdentity, FileTrack>,
    retained: RetainedTally,
    /// Set by the pipeline from the sink's settings; the default keeps nothing.
    retention: Retention,
    /// When the sink last acknowledged records of this route (Unix ms), in this process.
    last_ack_ms: Option<u64>,
}

/// What the accounting keeps of one pending chunk.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingChunk {
    records_left: u32,
    created_at_ms: u64,
    origin: ChunkOrigin,
    /// The bytes it holds, for a chunk read from a file: owed by the file if it is set aside.
    source: Option<SourceRange>,
}

/// Bytes `[start, end)` of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SourceRange {
    file: FileIdentity,
    start: u64,
    end: u64,
}

/// Where a pending chunk's records came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkOrigin {
    /// Read from a source file; its acknowledgement advances that file's position.
    Read,
    /// Queued again by `tailhose queue replay`; its acknowledgement moves no position.
    Replay,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RetainedTally {
    chunks: u64,
    bytes: u64,
}

/// What the queue knows of one source file.
#[derive(Debug, Default, Clone)]
pub(crate) struct FileTrack {
    /// Everything before this offset has been appended (it may not be committed yet).
    queued_offset: u64,
    /// The persisted acknowledged position.
    acked_offset: u64,
    /// Byte ranges `start → end` of chunks read in order, appended and not yet fully acknowledged.
    outstanding: BTreeMap<u64, u64>,
    /// Byte ranges `start → end` of chunks re-read to recover part of `owed`: queued behind
    /// later chunks, so they may be acknowledged after them.
    recovering: BTreeMap<u64, u64>,
    /// Ranges whose chunks were set aside, until a re-read of them is acknowledged. Stored
    /// (`FileOwed`), so the acknowledged position may pass them.
    owed: ByteRanges,
    /// The reader is done with the file: forget its positions once nothing of it is outstanding.
    released: bool,
}

impl FileTrack {
    /// The offset before which every byte is acknowledged or owed.
    fn acknowledged_prefix(&self) -> u64 {
        self.outstanding.keys().next().copied().unwrap_or(self.queued_offset)
    }

    /// Moves the acknowledged position up to the acknowledged prefix, writing it to `batch`,
    /// when the prefix has passed it.
    fn advance_position(&mut self, batch: &mut sled::Batch, file: &FileIdentity) {
        let prefix = self.acknowledged_prefix();
        if prefix > self.acked_offset {
            self.acked_offset = prefix;
            batch.insert(keys::file_key(KeyKind::FileAcked, file), &positions::encode_acked_offset(prefix)[..]);
        }
    }

    /// Nothing read from the file waits for delivery or recovery.
    fn is_settled(&self) -> bool {
        self.outstanding.is_empty() && self.recovering.is_empty() && self.owed.is_empty()
    }

    /// Marks a chunk's bytes acknowledged. Returns whether the owed ranges changed.
    fn chunk_acknowledged(&mut self, start_offset: u64) -> bool {
        if self.outstanding.remove(&start_offset).is_some() {
            return false;
        }
        match self.recovering.remove(&start_offset) {
            Some(end) => {
                self.owed.remove(start_offset, end);
                true
            }
            None => false,
        }
    }
}

/// Adds to `batch` the file's owed ranges as they are in `track`.
fn store_owed(batch: &mut sled::Batch, file: &FileIdentity, owed: &ByteRanges) {
    let key = keys::file_key(KeyKind::FileOwed, file);
    match owed.is_empty() {
        true => batch.remove(key),
        false => batch.insert(key, owed.encode()),
    }
}

/// Whether appending a chunk moves the file's read position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadProgress {
    /// New bytes read from the file: the read position moves to the chunk's end.
    Advance,
    /// Bytes re-read to recover a chunk that was set aside: the read position is already past
    /// them, and they lie in a range the file owes (see [`RouteQueue::set_aside`]).
    Recovered,
}

/// A pending chunk as stored, with how much of it is already acknowledged.
#[derive(Debug, Clone)]
pub struct StoredChunk {
    pub seq: ChunkSeq,
    pub bytes: sled::IVec,
    pub acked_records: u32,
}

/// Where one chunk stands after a batch was accepted by the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkAck {
    pub seq: ChunkSeq,
    pub file: FileIdentity,
    pub start_offset: u64,
    /// Bytes the chunk takes in the queue.
    pub stored_len: u64,
    /// Leading records now acknowledged (or dead-lettered).
    pub acked_records: u32,
    pub record_count: u32,
}

impl ChunkAck {
    pub fn is_complete(&self) -> bool {
        self.acked_records >= self.record_count
    }
}

/// Counts shown by `tailhose queue stats`, `tailhose status` and `/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueStats {
    pub route: String,
    pub pending_chunks: u64,
    pub pending_records: u64,
    pub pending_bytes: u64,
    /// Age of the oldest pending chunk (since it was read), when one is pending.
    pub oldest_pending_age_ms: Option<u64>,
    pub dead_letters: u64,
    pub retained_chunks: u64,
    pub retained_bytes: u64,
    pub set_aside_chunks: u64,
    pub files: Vec<FileStats>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStats {
    pub path: String,
    pub identity: String,
    /// Everything before this offset is in the queue (or dead-lettered).
    pub queued_offset: u64,
    /// Everything before this offset is acknowledged by the sink.
    pub acked_offset: u64,
    /// Bytes of the file past its acknowledged offset: what is still to be delivered. `None`
    /// when the file is no longer at its path (rotated away or deleted).
    pub bytes_behind: Option<u64>,
}

/// The one-line summary of a route that `/health` and metrics need, without touching disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingSummary {
    pub chunks: u64,
    pub records: u64,
    pub bytes: u64,
    pub oldest_created_at_ms: Option<u64>,
    pub last_ack_ms: Option<u64>,
    pub retained_chunks: u64,
    pub retained_bytes: u64,
}

impl RouteQueue {
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn accounting(&self) -> MutexGuard<'_, Accounting> {
        // A panic while holding this lock leaves plain counters behind; they stay usable.
        self.inner.accounting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends a sealed chunk with the dead letters for lines it skipped, in one atomic batch.
    /// The chunk is not visible to the flusher until [`RouteQueue::commit`].
    pub fn append(&self, draft: &ChunkDraft, dead_letters: &[DeadLetter], progress: ReadProgress) -> Result<ChunkSeq, QueueError> {
        // The number is taken under the lock the write holds: every number below `next_seq` read
        // under it is written (or failed), so [`RouteQueue::commit`] never publishes a chunk still
        // being written by another thread (the tailer and the flusher's re-reads both append).
        let mut accounting = self.accounting();
        let seq = ChunkSeq(self.inner.next_seq.fetch_add(1, Ordering::SeqCst));
        let encoded = sled::IVec::from(chunk::encode_chunk(seq, draft));
        let stored_len = encoded.len() as u64;
        let meta = &draft.meta;
        let mut batch = sled::Batch::default();
        batch.insert(&keys::seq_key(KeyKind::PendingChunk, seq), &[][..]);
        // Sequence numbers are never reused, also once every chunk is delivered and deleted.
        batch.insert(keys::meta_key(keys::NEXT_SEQ), &(seq.0 + 1).to_be_bytes()[..]);
        for dead_letter in dead_letters {
            let id = self.inner.db.generate_id()?;
            batch.insert(&keys::id_key(KeyKind::DeadLetter, id), dead_letter.encode());
        }
        let first_chunk_of_file = !accounting.files.contains_key(&meta.file);
        if progress == ReadProgress::Advance {
            let state = FileReadState { queued_offset: meta.end_offset, path: meta.path.clone() };
            batch.insert(keys::file_key(KeyKind::FileRead, &meta.file), state.encode());
            if first_chunk_of_file {
                // A file first read from its middle (read_from_head = false) is acknowledged up
                // to where reading started: nothing before it was ever meant to be sent.
                batch.insert(keys::file_key(KeyKind::FileAcked, &meta.file), &positions::encode_acked_offset(meta.start_offset)[..]);
            }
        }
        // Holding the accounting lock across the write keeps the tree and its mirror in step
        // with acknowledgements running on another task.
        self.write_with_body(seq, &encoded, &batch)?;
        let track = accounting.files.entry(meta.file).or_default();
        if first_chunk_of_file {
            track.acked_offset = meta.start_offset;
        }
        match progress {
            ReadProgress::Advance => {
                track.queued_offset = track.queued_offset.max(meta.end_offset);
                track.outstanding.insert(meta.start_offset, meta.end_offset);
            }
            ReadProgress::Recovered => {
                track.recovering.insert(meta.start_offset, meta.end_offset);
            }
        }
        accounting.add_pending(seq, meta, stored_len, ChunkOrigin::Read);
        Ok(seq)
    }

    /// Queues records again as a pending chunk marked as a replay, removing the dead letter it
    /// replays (if any) in the same atomic batch, so a crash neither loses nor doubles it. Not
    /// visible to the flusher until [`RouteQueue::commit`].
    pub fn append_replay(&self, draft: &ChunkDraft, replayed_dead_letter: Option<u64>) -> Result<ChunkSeq, QueueError> {
        // Under the lock, as in `append`.
        let mut accounting = self.accounting();
        let seq = ChunkSeq(self.inner.next_seq.fetch_add(1, Ordering::SeqCst));
        let encoded = sled::IVec::from(chunk::encode_chunk(seq, draft));
        let stored_len = encoded.len() as u64;
        let mut batch = sled::Batch::default();
        batch.insert(&keys::seq_key(KeyKind::PendingChunk, seq), &[][..]);
        batch.insert(&keys::seq_key(KeyKind::ReplayMarker, seq), &[][..]);
        batch.insert(keys::meta_key(keys::NEXT_SEQ), &(seq.0 + 1).to_be_bytes()[..]);
        if let Some(id) = replayed_dead_letter {
            batch.remove(&keys::id_key(KeyKind::DeadLetter, id));
        }
        self.write_with_body(seq, &encoded, &batch)?;
        accounting.add_pending(seq, &draft.meta, stored_len, ChunkOrigin::Replay);
        Ok(seq)
    }

    /// Writes a pending chunk's body to its slot and `batch` (its pending entry and what goes
    /// with it) to the route's tree, atomically: after a crash both are there or neither.
    fn write_with_body(&self, seq: ChunkSeq, body: &sled::IVec, batch: &sled::Batch) -> Result<(), QueueError> {
        let key = ChunkBodies::key(seq);
        (&self.inner.tree, self.inner.bodies.slot(seq))
            .transaction(|(route, slot)| -> sled::transaction::ConflictableTransactionResult<(), std::convert::Infallible> {
                route.apply_batch(batch)?;
                slot.insert(&key, body.clone())?;
                Ok(())
            })
            .map_err(|error| match error {
                sled::transaction::TransactionError::Storage(source) => QueueError::Storage(source),
                sled::transaction::TransactionError::Abort(never) => match never {},
            })
    }

    /// Makes every appended chunk durable, then lets the flusher see it. Blocking (fsync).
    pub fn commit(&self) -> Result<(), QueueError> {
        // Read under the appends' lock: every chunk below it is written (see `append`).
        let appended = {
            let _writes_done = self.accounting();
            ChunkSeq(self.inner.next_seq.load(Ordering::SeqCst))
        };
        if *self.inner.committed.borrow() >= appended {
            return Ok(());
        }
        self.inner.db.flush()?;
        // Two threads commit (the tailer, the flusher's re-reads): the watermark only rises.
        self.inner.committed.send_if_modified(|committed| {
            let rises = *committed < appended;
            if rises {
                *committed = appended;
            }
            rises
        });
        Ok(())
    }

    /// Follows the committed watermark: every chunk below it can be read and sent.
    pub fn committed(&self) -> watch::Receiver<ChunkSeq> {
        self.inner.committed.subscribe()
    }

    /// The first pending chunks with `from <= seq < below`, at most `most` of them, in order.
    pub fn read_pending_run(&self, from: ChunkSeq, below: ChunkSeq, most: usize) -> Result<Vec<StoredChunk>, QueueError> {
        let start = keys::seq_key(KeyKind::PendingChunk, from);
        let end = keys::seq_key(KeyKind::PendingChunk, below);
        let mut run = Vec::new();
        for entry in self.inner.tree.range(start..end).take(most) {
            let (key, pending_value) = entry?;
            let Some(seq) = keys::seq_of(&key) else { break };
            let bytes = self.inner.bodies.pending_chunk_bytes(seq, pending_value)?;
            let acked_records = self
                .inner
                .tree
                .get(keys::seq_key(KeyKind::ChunkProgress, seq))?
                .and_then(|value| positions::decode_progress(&value))
                .unwrap_or(0);
            run.push(StoredChunk { seq, bytes, acked_records });
        }
        Ok(run)
    }

    /// The first pending chunk with `from <= seq < below`.
    pub fn read_pending(&self, from: ChunkSeq, below: ChunkSeq) -> Result<Option<StoredChunk>, QueueError> {
        Ok(self.read_pending_run(from, below, 1)?.pop())
    }

    /// Moves a chunk that failed verification out of the pending range, so it is never sent.
    /// Its bytes are kept for inspection. A chunk read from a file leaves its byte range owed by
    /// the file, in the same write: the file's position may then move past it as later chunks
    /// are acknowledged, and the range is returned, to be re-read from the source now (or at
    /// the next start-up, which finds it owed) with [`ReadProgress::Recovered`].
    pub fn set_aside(&self, seq: ChunkSeq, error: &ChunkError) -> Result<Option<MissingRange>, QueueError> {
        let pending_key = keys::seq_key(KeyKind::PendingChunk, seq);
        let mut accounting = self.accounting();
        let Some(pending_value) = self.inner.tree.get(pending_key)? else {
            return Ok(None);
        };
        let bytes = self.inner.bodies.pending_chunk_bytes(seq, pending_value)?;
        let mut batch = sled::Batch::default();
        batch.remove(&pending_key);
        batch.remove(&keys::seq_key(KeyKind::ChunkProgress, seq));
        batch.remove(&keys::seq_key(KeyKind::ReplayMarker, seq));
        batch.insert(&keys::seq_key(KeyKind::SetAsideChunk, seq), recovery::encode_set_aside(error, &bytes));
        let source = accounting.pending.get(&seq).and_then(|pending| pending.source);
        let mut owes = None;
        if let Some(range) = source {
            if let Some(track) = accounting.files.get(&range.file) {
                let mut track = track.clone();
                track.outstanding.remove(&range.start);
                track.recovering.remove(&range.start);
                track.owed.insert(range.start, range.end);
                store_owed(&mut batch, &range.file, &track.owed);
                track.advance_position(&mut batch, &range.file);
                owes = Some(track);
            }
        }
        let path = match source {
            Some(range) => self
                .inner
                .tree
                .get(keys::file_key(KeyKind::FileRead, &range.file))?
                .and_then(|value| FileReadState::decode(&value))
                .map(|state| state.path),
            None => None,
        };
        self.inner.tree.apply_batch(batch)?;
        accounting.remove_pending(seq, bytes.len() as u64);
        let mut missing = None;
        if let (Some(range), Some(track)) = (source, owes) {
            accounting.files.insert(range.file, track);
            missing = Some(MissingRange { file: range.file, path: path.unwrap_or_default(), start: range.start, end: range.end });
        }
        drop(accounting);
        self.inner.bodies.remove_all([seq])?;
        self.inner.db.flush()?;
        self.inner.space_freed.notify_waiters();
        Ok(missing)
    }

    /// Records that the sink accepted records: completed chunks are deleted, partly acknowledged
    /// ones keep their progress, file positions advance over the acknowledged prefix, and dead
    /// letters for records the sink can never take are stored, all in one atomic batch. The
    /// in-memory mirror changes only once the batch is written, so a failed call can be repeated.
    /// Not durable until flushed: [`RouteQueue::acknowledge`] does both.
    pub fn record_acknowledgement(&self, acks: &[ChunkAck], dead_letters: &[DeadLetter]) -> Result<(), QueueError> {
        let mut batch = sled::Batch::default();
        for dead_letter in dead_letters {
            let id = self.inner.db.generate_id()?;
            batch.insert(&keys::id_key(KeyKind::DeadLetter, id), dead_letter.encode());
        }
        let now_ms = now_ms();
        let mut accounting = self.accounting();
        // What each touched file will look like once the batch is written.
        let mut planned: HashMap<FileIdentity, FileTrack> = HashMap::new();
        // Files whose owed ranges a re-read chunk's acknowledgement changed.
        let mut owed_files: HashSet<FileIdentity> = HashSet::new();
        let mut newly_retained = RetainedTally::default();
        for ack in acks {
            if !ack.is_complete() {
                batch.insert(&keys::seq_key(KeyKind::ChunkProgress, ack.seq), &positions::encode_progress(ack.acked_records)[..]);
                continue;
            }
            let pending_key = keys::seq_key(KeyKind::PendingChunk, ack.seq);
            batch.remove(&pending_key);
            batch.remove(&keys::seq_key(KeyKind::ChunkProgress, ack.seq));
            let origin = accounting.pending.get(&ack.seq).map_or(ChunkOrigin::Read, |pending| pending.origin);
            if origin == ChunkOrigin::Replay {
                // A replay is neither retained again nor part of any file's position.
                batch.remove(&keys::seq_key(KeyKind::ReplayMarker, ack.seq));
                continue;
            }
            if accounting.retention.is_enabled() {
                if let Some(pending_value) = self.inner.tree.get(pending_key)? {
                    let bytes = self.inner.bodies.pending_chunk_bytes(ack.seq, pending_value)?;
                    let value = retained::encode(now_ms, &bytes);
                    newly_retained.chunks += 1;
                    newly_retained.bytes += value.len() as u64;
                    batch.insert(&keys::seq_key(KeyKind::RetainedChunk, ack.seq), value);
                }
            }
            if let Some(track) = accounting.files.get(&ack.file) {
                let planned_track = planned.entry(ack.file).or_insert_with(|| track.clone());
                if planned_track.chunk_acknowledged(ack.start_offset) {
                    owed_files.insert(ack.file);
                }
            }
        }
        let mut finished_files = Vec::new();
        for (file, track) in planned.iter_mut() {
            if track.released && track.is_settled() {
                remove_file_positions(&mut batch, file);
                finished_files.push(*file);
                continue;
            }
            if owed_files.contains(file) {
                store_owed(&mut batch, file, &track.owed);
            }
            track.advance_position(&mut batch, file);
        }
        self.inner.tree.apply_batch(batch)?;
        for (file, track) in planned {
            accounting.files.insert(file, track);
        }
        for file in finished_files {
            accounting.files.remove(&file);
        }
        for ack in acks {
            if ack.is_complete() {
                accounting.remove_pending(ack.seq, ack.stored_len);
            } else {
                accounting.set_records_left(ack.seq, ack.record_count.saturating_sub(ack.acked_records));
            }
        }
        accounting.retained.chunks += newly_retained.chunks;
        accounting.retained.bytes += newly_retained.bytes;
        accounting.last_ack_ms = Some(now_ms);
        let over_byte_cap = accounting.retention.max_bytes.is_some_and(|cap| accounting.retained.bytes > cap);
        drop(accounting);
        // After the entries that refer to them: a crash in between leaves bodies that start-up
        // deletes, never an entry without its body.
        self.inner.bodies.remove_all(acks.iter().filter(|ack| ack.is_complete()).map(|ack| ack.seq))?;
        self.inner.space_freed.notify_waiters();
        if over_byte_cap {
            self.prune_retained(now_ms)?;
        }
        // sled frees a removed value's memory through crossbeam-epoch, which keeps up to 64
        // deferred frees per thread until that thread gathers more: a 256 KiB chunk (a body, or
        // a retained chunk pruned) could stay resident on an idle blocking thread long after its
        // removal (10 MiB of them at the peak of a packed-records run). Handing this thread's
        // frees on now bounds that.
        crossbeam_epoch::pin().flush();
        Ok(())
    }

    /// Sets how long this route keeps acknowledged chunks (see [`Retention`]).
    pub fn set_retention(&self, retention: Retention) {
        self.accounting().retention = retention;
    }

    /// Deletes retained chunks past the route's retention (age or byte cap), oldest first.
    /// Does nothing when retention is off: chunks retained under an earlier configuration stay
    /// until `tailhose queue purge --retained` removes them, as nothing is deleted unasked.
    /// Returns how many chunks were deleted.
    pub fn prune_retained(&self, now_ms: u64) -> Result<u64, QueueError> {
        let mut accounting = self.accounting();
        let retention = accounting.retention;
        if !retention.is_enabled() {
            return Ok(0);
        }
        let mut tally = accounting.retained;
        let mut batch = sled::Batch::default();
        let mut pruned = 0;
        for entry in self.inner.tree.range(keys::kind_range(KeyKind::RetainedChunk)) {
            let (key, value) = entry?;
            let acked_at_ms = retained::decode(&value).map_or(0, |chunk| chunk.acked_at_ms);
            let expired = retention.max_age.is_some_and(|age| acked_at_ms.saturating_add(age.as_millis() as u64) <= now_ms);
            let over_cap = retention.max_bytes.is_some_and(|cap| tally.bytes > cap);
            if !expired && !over_cap {
                break;
            }
            batch.remove(key);
            tally.chunks = tally.chunks.saturating_sub(1);
            tally.bytes = tally.bytes.saturating_sub(value.len() as u64);
            pruned += 1;
        }
        if pruned > 0 {
            self.inner.tree.apply_batch(batch)?;
            accounting.retained = tally;
        }
        Ok(pruned)
    }

    /// [`RouteQueue::record_acknowledgement`], then a flush (fsync) that makes it and everything
    /// written before it durable. Blocks: the flush waits on the calling thread rather than on a
    /// hand-off to sled's threadpool (about 30 µs of CPU less each, measured at 10,000 calls).
    pub fn acknowledge(&self, acks: &[ChunkAck], dead_letters: &[DeadLetter]) -> Result<(), QueueError> {
        self.record_acknowledgement(acks, dead_letters)?;
        self.inner.db.flush()?;
        Ok(())
    }

    /// Forgets a file the reader is done with (rotated away and drained, or deleted): its stored
    /// positions are removed now if everything read from it is acknowledged, otherwise with the
    /// acknowledgement that completes it. Keeps the queue from growing with every file ever seen.
    pub fn release_file(&self, file: &FileIdentity) -> Result<(), QueueError> {
        let mut accounting = self.accounting();
        let Some(track) = accounting.files.get_mut(file) else { return Ok(()) };
        if !track.is_settled() {
            track.released = true;
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        remove_file_positions(&mut batch, file);
        self.inner.tree.apply_batch(batch)?;
        accounting.files.remove(file);
        Ok(())
    }

    /// Takes over a position another forwarder recorded (a Fluentd `pos_file`): the file counts
    /// as read and acknowledged up to `offset`. Refused (`false`) when the queue already has a
    /// position for a file with this device and inode: its own record wins. Durable on return.
    pub fn adopt_position(&self, file: FileIdentity, path: Vec<u8>, offset: u64) -> Result<bool, QueueError> {
        if !self.stored_files(file.device, file.inode)?.is_empty() {
            return Ok(false);
        }
        let mut accounting = self.accounting();
        let mut batch = sled::Batch::default();
        batch.insert(keys::file_key(KeyKind::FileRead, &file), FileReadState { queued_offset: offset, path }.encode());
        batch.insert(keys::file_key(KeyKind::FileAcked, &file), &positions::encode_acked_offset(offset)[..]);
        self.inner.tree.apply_batch(batch)?;
        accounting.files.insert(file, FileTrack { queued_offset: offset, acked_offset: offset, ..FileTrack::default() });
        drop(accounting);
        self.inner.db.flush()?;
        Ok(true)
    }

    /// Files the queue keeps positions for.
    pub fn tracked_files(&self) -> usize {
        self.accounting().files.len()
    }

    /// Bytes of chunks not yet fully acknowledged.
    pub fn pending_bytes(&self) -> u64 {
        self.accounting().pending_bytes
    }

    /// The queue size at which reading pauses (`max_queue_bytes`).
    pub fn max_queue_bytes(&self) -> u64 {
        self.inner.max_queue_bytes
    }

    /// Bytes that may still be queued before `max_queue_bytes` is reached.
    pub fn room(&self) -> u64 {
        self.inner.max_queue_bytes.saturating_sub(self.pending_bytes())
    }

    pub fn has_space(&self) -> bool {
        self.pending_bytes() < self.inner.max_queue_bytes
    }

    /// Returns once the queue is below `max_queue_bytes` (back-pressure on the reader).
    pub async fn wait_for_space(&self) {
        self.wait_until_pending_at_most(self.inner.max_queue_bytes.saturating_sub(1)).await;
    }

    /// Returns once at most `bytes` are pending: acknowledgements have made room.
    pub async fn wait_until_pending_at_most(&self, bytes: u64) {
        loop {
            let freed = self.inner.space_freed.notified();
            if self.pending_bytes() <= bytes {
                return;
            }
            freed.await;
        }
    }

    /// Every stored read state: files read before and not yet released.
    pub fn stored_file_states(&self) -> Result<Vec<(FileIdentity, FileReadState)>, QueueError> {
        let mut found = Vec::new();
        for entry in self.inner.tree.range(keys::kind_range(KeyKind::FileRead)) {
            let (key, value) = entry?;
            if let (Some(identity), Some(state)) = (FileIdentity::from_key_bytes(&key[1..]), FileReadState::decode(&value)) {
                found.push((identity, state));
            }
        }
        Ok(found)
    }

    /// Stored read states of files with this device and inode (several when an inode was reused).
    pub fn stored_files(&self, device: u64, inode: u64) -> Result<Vec<(FileIdentity, FileReadState)>, QueueError> {
        let mut prefix = vec![KeyKind::FileRead as u8];
        prefix.extend_from_slice(&device.to_be_bytes());
        prefix.extend_from_slice(&inode.to_be_bytes());
        let mut found = Vec::new();
        for entry in self.inner.tree.scan_prefix(prefix) {
            let (key, value) = entry?;
            if let (Some(identity), Some(state)) = (FileIdentity::from_key_bytes(&key[1..]), FileReadState::decode(&value)) {
                found.push((identity, state));
            }
        }
        Ok(found)
    }

    /// Every dead letter, oldest first. Undecodable entries are returned as errors, not skipped.
    pub fn dead_letters(
        &self,
    ) -> impl Iterator<Item = Result<(u64, Result<DeadLetter, dead_letter::DeadLetterDecodeError>), QueueError>> + '_ {
        self.inner.tree.range(keys::kind_range(KeyKind::DeadLetter)).map(|entry| {
            let (key, value) = entry?;
            let id = keys::seq_of(&key).map(|seq| seq.0).unwrap_or(0);
            Ok((id, DeadLetter::decode(&value)))
        })
    }

    /// Offsets of the stored dead letters of `file` that start in `range`. Reads every dead
    /// letter: for the rare recovery of a set-aside chunk's range, not for the read path.
    pub fn dead_letter_offsets(&self, file: FileIdentity, range: std::ops::Range<u64>) -> Result<HashSet<u64>, QueueError> {
        let mut offsets = HashSet::new();
        for entry in self.dead_letters() {
            if let (_, Ok(letter)) = entry? {
                if letter.file == file && range.contains(&letter.offset) {
                    offsets.insert(letter.offset);
                }
            }
        }
        Ok(offsets)
    }

    /// Counts kept in memory: cheap enough for every metrics scrape and health check.
    pub fn pending_summary(&self) -> PendingSummary {
        let accounting = self.accounting();
        PendingSummary {
            chunks: accounting.pending.len() as u64,
            records: accounting.pending_records,
            bytes: accounting.pending_bytes,
            oldest_created_at_ms: accounting.pending.values().next().map(|pending| pending.created_at_ms),
            last_ack_ms: accounting.last_ack_ms,
            retained_chunks: accounting.retained.chunks,
            retained_bytes: accounting.retained.bytes,
        }
    }

    pub fn stats(&self) -> Result<QueueStats, QueueError> {
        let tree = &self.inner.tree;
        let dead_letters = tree.range(keys::kind_range(KeyKind::DeadLetter)).count() as u64;
        let set_aside_chunks = tree.range(keys::kind_range(KeyKind::SetAsideChunk)).count() as u64;
        let mut files = Vec::new();
        for entry in tree.range(keys::kind_range(KeyKind::FileRead)) {
            let (key, value) = entry?;
            let (Some(identity), Some(state)) = (FileIdentity::from_key_bytes(&key[1..]), FileReadState::decode(&value)) else { continue };
            let acked_offset = tree
                .get(keys::file_key(KeyKind::FileAcked, &identity))?
                .and_then(|value| positions::decode_acked_offset(&value))
                .unwrap_or(0);
            files.push(FileStats {
                path: String::from_utf8_lossy(&state.path).into_owned(),
                identity: identity.to_string(),
                queued_offset: state.queued_offset,
                acked_offset,
                bytes_behind: bytes_behind(&identity, &state.path, acked_offset),
            });
        }
        let summary = self.pending_summary();
        Ok(QueueStats {
            route: self.inner.name.clone(),
            pending_chunks: summary.chunks,
            pending_records: summary.records,
            pending_bytes: summary.bytes,
            oldest_pending_age_ms: summary.oldest_created_at_ms.map(|created| now_ms().saturating_sub(created)),
            dead_letters,
            retained_chunks: summary.retained_chunks,
            retained_bytes: summary.retained_bytes,
            set_aside_chunks,
            files,
        })
    }
}

#[cfg(test)]
impl QueueStore {
    /// Test support: opens `data_dir` again, right after a previous handle in this process was
    /// dropped. sled releases its file lock once its background threads let go of the database,
    /// which can take a moment on a loaded machine.
    pub(crate) fn reopen_for_test(data_dir: &Path) -> QueueStore {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match QueueStore::open(data_dir, 1 << 20) {
                Err(QueueError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                result => return result.expect("queue opens"),
            }
        }
    }
}

impl RouteQueue {
    /// Test support: the acknowledgements that complete every pending chunk from `from` on, as
    /// a flusher sends them after a sink took everything, and the sequence number after them.
    #[cfg(test)]
    pub(crate) fn whole_acks_of_pending(&self, from: ChunkSeq) -> (Vec<ChunkAck>, ChunkSeq) {
        let mut acks = Vec::new();
        let mut next = from;
        while let Some(stored) = self.read_pending(next, ChunkSeq(u64::MAX)).expect("read") {
            next = ChunkSeq(stored.seq.0 + 1);
            let chunk = chunk::decode_chunk(stored.seq, &stored.bytes).expect("valid chunk");
            acks.push(ChunkAck {
                seq: stored.seq,
                file: chunk.meta.file,
                start_offset: chunk.meta.start_offset,
                stored_len: stored.bytes.len() as u64,
                acked_records: chunk.meta.record_count,
                record_count: chunk.meta.record_count,
            });
        }
        (acks, next)
    }

    /// Test support: damages a pending chunk's stored bytes the way a bit flip that sled did not
    /// catch would.
    #[cfg(test)]
    pub(crate) fn flip_a_byte_of_pending_chunk(&self, seq: ChunkSeq) {
        let key = ChunkBodies::key(seq);
        let slot = self.inner.bodies.slot(seq);
        let mut bytes = slot.get(key).expect("read").expect("chunk exists").to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        slot.insert(key, bytes).expect("write");
        slot.flush().expect("flush");
    }
}

impl Accounting {
    fn add_pending(&mut self, seq: ChunkSeq, meta: &ChunkMeta, stored_len: u64, origin: ChunkOrigin) {
        let source =
            (origin == ChunkOrigin::Read).then_some(SourceRange { file: meta.file, start: meta.start_offset, end: meta.end_offset });
        self.pending.insert(seq, PendingChunk { records_left: meta.record_count, created_at_ms: meta.created_at_ms, origin, source });
        self.pending_records += u64::from(meta.record_count);
        self.pending_bytes += stored_len;
    }

    fn remove_pending(&mut self, seq: ChunkSeq, stored_len: u64) {
        if let Some(pending) = self.pending.remove(&seq) {
            self.pending_records = self.pending_records.saturating_sub(u64::from(pending.records_left));
            self.pending_bytes = self.pending_bytes.saturating_sub(stored_len);
        }
    }

    fn set_records_left(&mut self, seq: ChunkSeq, records_left: u32) {
        if let Some(pending) = self.pending.get_mut(&seq) {
            self.pending_records = self.pending_records.saturating_sub(u64::from(pending.records_left)) + u64::from(records_left);
            pending.records_left = records_left;
        }
    }
}

/// Bytes of the file at `path` past `acked_offset`, if `path` still holds the file `identity`.
fn bytes_behind(identity: &FileIdentity, path: &[u8], acked_offset: u64) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(std::ffi::OsStr::from_bytes(path)).ok()?;
    let same_file = metadata.dev() == identity.device && metadata.ino() == identity.inode;
    same_file.then(|| metadata.len().saturating_sub(acked_offset))
}

fn remove_file_positions(batch: &mut sled::Batch, file: &FileIdentity) {
    batch.remove(keys::file_key(KeyKind::FileRead, file));
    batch.remove(keys::file_key(KeyKind::FileAcked, file));
    batch.remove(keys::file_key(KeyKind::FileOwed, file));
}

#[cfg(test)]
mod tests;
