//! The Kinesis Agent's checkpoints: where each flow stopped, imported so that tailhose starts
//! exactly there.
//!
//! Format (the agent's `SQLiteFileCheckpointStore`): an SQLite file, table `FILE_CHECKPOINTS`
//! (`flow text, path text, fileId text, lastModifiedTime bigint, size bigint, offset bigint,
//! lastUpdated datetime`, primary key `(flow, path)`). `flow` is `fh:STREAM:DIR/PATTERN`;
//! `fileId` is Java's file key, `(dev=HEX,ino=DECIMAL)`; `offset` is the byte just past the
//! last record of a buffer Firehose took.
//!
//! The agent resumes a flow from its most recently updated row, at the file with that file key
//! (found under its new name when it was rotated since), if that file is at least `offset`
//! long; files newer than it are read from their head, older ones never again. "Newer" is the
//! agent's order: a later modification time in milliseconds, or at the same millisecond the
//! smaller file. A file still at its path with that key, smaller than the row's `size` and
//! modified since, was truncated after a copy (copytruncate): the agent resumes the copy (the
//! oldest other file modified since and at least that large) at `offset`, and reads the
//! truncated file from its head. The import does the same, for every file the source names:
//! the agent's file at `offset`, newer files at 0, older files at their end. Anything else (no
//! row, the file gone or shorter, no copy, two files the order cannot tell apart) is reported
//! and no position is imported, so tailhose starts as `read_from_head` says, as the agent would
//! start at its `initialPosition`.

use std::cmp::Ordering;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::pos_file::{adopt, Outcome};
use crate::queue::{QueueError, RouteQueue};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read the agent's checkpoint file {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
}

/// A file as the kernel tells it apart: Java's file key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
}

impl FileKey {
    /// `(dev=803,ino=1234)`: OpenJDK's `UnixFileKey`, the device in hex and the inode in decimal.
    pub fn parse(text: &str) -> Option<FileKey> {
        let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
        let (dev, ino) = inner.split_once(',')?;
        let dev = u64::from_str_radix(dev.trim().strip_prefix("dev=")?, 16).ok()?;
        let ino = ino.trim().strip_prefix("ino=")?.parse().ok()?;
        Some(FileKey { dev, ino })
    }

    fn of(metadata: &std::fs::Metadata) -> FileKey {
        FileKey { dev: metadata.dev(), ino: metadata.ino() }
    }
}

impl std::fmt::Display for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(dev={:x},ino={})", self.dev, self.ino)
    }
}

/// A flow's most recent checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub path: PathBuf,
    /// The `fileId` column as written, and the key it names (none when it names none).
    pub file_id: String,
    pub file_key: Option<FileKey>,
    pub offset: u64,
    /// The file's size and modification time (ms) when the agent last looked at it.
    pub size: u64,
    pub modified_ms: i64,
}

/// The checkpoint file, open for reading.
pub struct CheckpointFile {
    path: PathBuf,
    connection: rusqlite::Connection,
}

impl CheckpointFile {
    /// Opens `path` read-only: the agent's own file is never changed (it is its way back).
    pub fn open(path: &Path) -> Result<CheckpointFile, CheckpointError> {
        let failed = |source| CheckpointError::Sqlite { path: path.to_owned(), source };
        let connection = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(failed)?;
        Ok(CheckpointFile { path: path.to_owned(), connection })
    }

    /// The row the agent itself would resume `flow` from: the one updated last.
    pub fn latest(&self, flow: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        let failed = |source| CheckpointError::Sqlite { path: self.path.clone(), source };
        let mut statement = self
            .connection
            .prepare(
                "select path, fileId, offset, size, lastModifiedTime from FILE_CHECKPOINTS where flow = ?1 order by lastUpdated desc limit 1",
            )
            .map_err(failed)?;
        let mut rows = statement.query([flow]).map_err(failed)?;
        let Some(row) = rows.next().map_err(failed)? else { return Ok(None) };
        let path: String = row.get(0).map_err(failed)?;
        let file_id: String = row.get(1).map_err(failed)?;
        let offset: i64 = row.get(2).map_err(failed)?;
        let size: Option<i64> = row.get(3).map_err(failed)?;
        let modified_ms: Option<i64> = row.get(4).map_err(failed)?;
        Ok(Some(Checkpoint {
            path: PathBuf::from(path),
            file_key: FileKey::parse(&file_id),
            file_id,
            // A negative offset is no position: from the file's head, as the agent reads it.
            offset: u64::try_from(offset).unwrap_or(0),
            size: size.and_then(|size| u64::try_from(size).ok()).unwrap_or(0),
            modified_ms: modified_ms.unwrap_or(0),
        }))
    }
}

/// Why a flow's checkpoint imports nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotImported {
    NoCheckpoint,
    /// The checkpoint's `fileId` is not a file key this import reads.
    UnreadableFileId(String),
    /// No file the source names has the checkpoint's file key.
    FileGone {
        recorded: PathBuf,
        key: FileKey,
    },
    /// The agent's file is shorter than its offset (truncated since).
    Shorter {
        path: PathBuf,
        size: u64,
        offset: u64,
    },
    /// The agent's file was truncated after a copy, and no file is that copy.
    NoCopy {
        path: PathBuf,
    },
    /// Two files the agent's order cannot tell apart (same millisecond, same size).
    Unordered {
        first: PathBuf,
        second: PathBuf,
    },
    /// A file the source names cannot be looked at.
    Unreadable {
        path: PathBuf,
        error: String,
    },
}

impl std::fmt::Display for NotImported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fallback = "tailhose starts as read_from_head says (the agent's initialPosition)";
        match self {
            NotImported::NoCheckpoint => write!(f, "no checkpoint for this flow: {fallback}"),
            NotImported::UnreadableFileId(id) => write!(f, "not imported: fileId {id:?} is not `(dev=HEX,ino=N)`; {fallback}"),
            NotImported::FileGone { recorded, key } => write!(
                f,
                "not imported: no file the pattern names is the one the agent was reading ({} {key}); {fallback}",
                recorded.display()
            ),
            NotImported::Shorter { path, size, offset } => write!(
                f,
                "not imported: {} is {size} bytes, shorter than the agent's offset {offset} (truncated?); {fallback}",
                path.display()
            ),
            NotImported::NoCopy { path } => write!(
                f,
                "not imported: {} was truncated after the agent's checkpoint and no file is its copy (copytruncate); {fallback}",
                path.display()
            ),
            NotImported::Unordered { first, second } => write!(
                f,
                "not imported: {} and {} were modified in the same millisecond and are the same size; the agent's order cannot tell which is newer; {fallback}",
                first.display(),
                second.display()
            ),
            NotImported::Unreadable { path, error } => write!(f, "not imported: cannot look at {} ({error}); {fallback}", path.display()),
        }
    }
}

/// Where a file stands to the agent's own file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The file the agent was reading: its offset.
    Reading,
    /// Newer: the agent had not reached it, and would read it from its head.
    Newer,
    /// Older: the agent had finished it.
    Older,
}

/// A file the source names, as found now.
struct Found {
    path: PathBuf,
    file: std::fs::File,
    key: FileKey,
    size: u64,
    modified_ms: i128,
}

impl Found {
    /// The agent's order: a later modification in whole milliseconds, or at the same
    /// millisecond the smaller file, is newer; the same millisecond and size, no order.
    fn compare(&self, other: &Found) -> Option<Ordering> {
        match self.modified_ms.cmp(&other.modified_ms) {
            Ordering::Equal => match other.size.cmp(&self.size) {
                Ordering::Equal => None,
                order => Some(order),
            },
            order => Some(order),
        }
    }
}

/// Where each file of a flow starts, decided before anything is written.
pub struct Plan {
    files: Vec<(Found, Place, u64)>,
}

/// What the import did with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOutcome {
    pub path: PathBuf,
    pub place: Place,
    pub outcome: Outcome,
}

impl std::fmt::Display for FileOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match self.place {
            Place::Reading => "the file the agent was reading",
            Place::Newer => "newer than the agent's file, not reached yet",
            Place::Older => "older than the agent's file, finished",
        };
        write!(f, "{} ({place}): {}", self.path.display(), self.outcome)
    }
}

/// Where the agent would resume each file `paths` (less `exclude`) names, from `checkpoint` (the
/// flow's latest row), or why it would not.
pub fn plan(paths: &[String], exclude: &[String], checkpoint: Option<&Checkpoint>) -> Result<Plan, NotImported> {
    let checkpoint = checkpoint.ok_or(NotImported::NoCheckpoint)?;
    let key = checkpoint.file_key.ok_or_else(|| NotImported::UnreadableFileId(checkpoint.file_id.clone()))?;
    let found = files_named(paths, exclude)?;
    let keyed = found.iter().position(|file| file.key == key).ok_or(NotImported::FileGone { recorded: checkpoint.path.clone(), key })?;
    let keyed_file = &found[keyed];
    let truncated = keyed_file.path == checkpoint.path
        && keyed_file.size < checkpoint.size
        && keyed_file.modified_ms > i128::from(checkpoint.modified_ms);
    let reading = if truncated {
        // The copy holds what the agent read: the oldest other file modified since, as large.
        found
            .iter()
            .enumerate()
            .filter(|(index, file)| {
                *index != keyed && file.modified_ms >= i128::from(checkpoint.modified_ms) && file.size >= checkpoint.size
            })
            .min_by_key(|(_, file)| file.modified_ms)
            .map(|(index, _)| index)
            .ok_or_else(|| NotImported::NoCopy { path: keyed_file.path.clone() })?
    } else {
        keyed
    };
    if found[reading].size < checkpoint.offset {
        return Err(NotImported::Shorter { path: found[reading].path.clone(), size: found[reading].size, offset: checkpoint.offset });
    }
    let mut places = Vec::with_capacity(found.len());
    for (index, file) in found.iter().enumerate() {
        let place = if index == reading {
            (Place::Reading, checkpoint.offset)
        } else if truncated && index == keyed {
            // Truncated after the copy: all it holds now was written since.
            (Place::Newer, 0)
        } else {
            match file.compare(&found[reading]) {
                Some(Ordering::Greater) => (Place::Newer, 0),
                Some(_) => (Place::Older, file.size),
                None => return Err(NotImported::Unordered { first: found[reading].path.clone(), second: file.path.clone() }),
            }
        };
        places.push(place);
    }
    Ok(Plan { files: found.into_iter().zip(places).map(|(file, (place, offset))| (file, place, offset)).collect() })
}

impl Plan {
    /// Adopts the plan's positions into `queue`.
    pub fn apply(&self, queue: &RouteQueue) -> Result<Vec<FileOutcome>, QueueError> {
        let mut outcomes = Vec::with_capacity(self.files.len());
        for (file, place, offset) in &self.files {
            let outcome = adopt(queue, &file.file, &file.path, *offset)?;
            outcomes.push(FileOutcome { path: file.path.clone(), place: *place, outcome });
        }
        queue.commit()?;
        Ok(outcomes)
    }
}

/// The files the globs name now (less the exclusions), open.
fn files_named(paths: &[String], exclude: &[String]) -> Result<Vec<Found>, NotImported> {
    let excluded: Vec<glob::Pattern> = exclude.iter().filter_map(|pattern| glob::Pattern::new(pattern).ok()).collect();
    let mut found: Vec<Found> = Vec::new();
    for pattern in paths {
        let Ok(matches) = glob::glob(pattern) else { continue };
        for entry in matches {
            let path =
                entry.map_err(|error| NotImported::Unreadable { path: error.path().to_owned(), error: error.error().to_string() })?;
            if excluded.iter().any(|pattern| pattern.matches_path(&path)) || found.iter().any(|file| file.path == path) {
                continue;
            }
            let unreadable = |error: std::io::Error| NotImported::Unreadable { path: path.clone(), error: error.to_string() };
            let file = std::fs::File::open(&path).map_err(unreadable)?;
            let metadata = file.metadata().map_err(unreadable)?;
            if !metadata.is_file() {
                continue;
            }
            let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let modified_ms = match modified.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(since) => since.as_millis() as i128,
                Err(before) => -(before.duration().as_millis() as i128),
            };
            found.push(Found { path, key: FileKey::of(&metadata), size: metadata.len(), modified_ms, file });
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_java_file_key_is_the_device_in_hex_and_the_inode_in_decimal() {
        assert_eq!(FileKey::parse("(dev=803,ino=1234)"), Some(FileKey { dev: 0x803, ino: 1234 }));
        assert_eq!(FileKey { dev: 0xfd01, ino: 77 }.to_string(), "(dev=fd01,ino=77)");
        assert_eq!(FileKey::parse("(ino=1234)"), None);
        assert_eq!(FileKey::parse("dev=803,ino=1234"), None);
    }

    fn write_aged(path: &Path, bytes: &[u8], seconds_ago: u64) {
        std::fs::write(path, bytes).expect("write");
        let file = std::fs::OpenOptions::new().append(true).open(path).expect("open");
        file.set_modified(SystemTime::now() - std::time::Duration::from_secs(seconds_ago)).expect("mtime");
    }

    fn ms_ago(seconds: u64) -> i64 {
        (SystemTime::now() - std::time::Duration::from_secs(seconds))
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as i64
    }

    fn placed(plan: &Plan) -> Vec<(String, Place, u64)> {
        let mut placed: Vec<(String, Place, u64)> = plan
            .files
            .iter()
            .map(|(file, place, offset)| (file.path.file_name().expect("name").to_string_lossy().into_owned(), *place, *offset))
            .collect();
        placed.sort_by(|a, b| a.0.cmp(&b.0));
        placed
    }

    #[test]
    fn after_a_copytruncate_the_copy_resumes_at_the_offset_and_the_truncated_file_from_its_head() {
        let folder = std::env::temp_dir().join(format!("tailhose-copytruncate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&folder);
        std::fs::create_dir_all(&folder).expect("folder");
        let (live, copy) = (folder.join("app.log"), folder.join("app.log.1"));
        // The agent read 40 of the 100 bytes app.log had; logrotate then copied it and truncated it.
        write_aged(&live, &[b'x'; 100], 60);
        let key = FileKey::of(&std::fs::metadata(&live).expect("metadata"));
        let checkpoint = Checkpoint {
            path: live.clone(),
            file_id: key.to_string(),
            file_key: Some(key),
            offset: 40,
            size: 100,
            modified_ms: ms_ago(60),
        };
        write_aged(&copy, &[b'x'; 120], 30);
        write_aged(&live, b"new\n", 10);
        let paths = vec![folder.join("app.log*").to_string_lossy().into_owned()];
        let plan = plan(&paths, &[], Some(&checkpoint)).expect("a plan");
        assert_eq!(placed(&plan), vec![("app.log".into(), Place::Newer, 0), ("app.log.1".into(), Place::Reading, 40)]);
        // Without the copy, nothing is imported (and said).
        std::fs::remove_file(&copy).expect("remove");
        assert!(matches!(super::plan(&paths, &[], Some(&checkpoint)), Err(NotImported::NoCopy { .. })));
        let _ = std::fs::remove_dir_all(&folder);
    }

    #[test]
    fn newer_is_the_agents_order_a_later_millisecond_or_at_the_same_one_the_smaller_file() {
        let folder = std::env::temp_dir().join(format!("tailhose-order-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&folder);
        std::fs::create_dir_all(&folder).expect("folder");
        let at = SystemTime::now() - std::time::Duration::from_secs(100);
        let write_at = |name: &str, len: usize| {
            let path = folder.join(name);
            std::fs::write(&path, vec![b'x'; len]).expect("write");
            std::fs::OpenOptions::new().append(true).open(&path).expect("open").set_modified(at).expect("mtime");
            path
        };
        let reading = write_at("a.log", 50);
        write_at("b.log", 10);
        write_at("c.log", 80);
        let key = FileKey::of(&std::fs::metadata(&reading).expect("metadata"));
        let checkpoint = Checkpoint { path: reading, file_id: key.to_string(), file_key: Some(key), offset: 20, size: 50, modified_ms: 0 };
        let paths = vec![folder.join("*.log").to_string_lossy().into_owned()];
        let plan = plan(&paths, &[], Some(&checkpoint)).expect("a plan");
        assert_eq!(
            placed(&plan),
            vec![("a.log".into(), Place::Reading, 20), ("b.log".into(), Place::Newer, 0), ("c.log".into(), Place::Older, 80)]
        );
        write_at("d.log", 50);
        assert!(matches!(super::plan(&paths, &[], Some(&checkpoint)), Err(NotImported::Unordered { .. })), "same millisecond, same size");
        let _ = std::fs::remove_dir_all(&folder);
    }

    #[test]
    fn the_latest_row_of_a_flow_is_the_one_read() {
        let folder = std::env::temp_dir().join(format!("tailhose-checkpoints-{}", std::process::id()));
        std::fs::create_dir_all(&folder).expect("folder");
        let path = folder.join("checkpoints");
        let _ = std::fs::remove_file(&path);
        let connection = rusqlite::Connection::open(&path).expect("create");
        connection
            .execute_batch(
                "create table FILE_CHECKPOINTS(flow text, path text, fileId text, lastModifiedTime bigint, size bigint, offset bigint, lastUpdated datetime, primary key (flow, path));
                 insert into FILE_CHECKPOINTS values ('fh:s:/var/log/a.log*', '/var/log/a.log.1', '(dev=803,ino=7)', 0, 10, 10, '2026-11-30 10:00:00.000');
                 insert into FILE_CHECKPOINTS values ('fh:s:/var/log/a.log*', '/var/log/a.log', '(dev=803,ino=9)', 0, 99, 42, '2026-11-30 11:00:00.000');",
            )
            .expect("rows");
        drop(connection);
        let file = CheckpointFile::open(&path).expect("opens");
        let latest = file.latest("fh:s:/var/log/a.log*").expect("reads").expect("a row");
        assert_eq!(
            (latest.path, latest.file_key, latest.offset),
            (PathBuf::from("/var/log/a.log"), Some(FileKey { dev: 0x803, ino: 9 }), 42)
        );
        assert_eq!(file.latest("fh:other:/x").expect("reads"), None);
        let _ = std::fs::remove_dir_all(&folder);
    }
}
