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
//! long; files newer than it are read from their head, older ones never again. The import does
//! the same, for every file the source names: the agent's file at `offset`, newer files at 0,
//! older files at their end. Anything else (no row, the file gone or shorter) is reported and
//! no position is imported, so tailhose starts as `read_from_head` says, as the agent would
//! start at its `initialPosition`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::pos_file::{adopt, names, Outcome};
use crate::config::SourceSettings;
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
            .prepare("select path, fileId, offset from FILE_CHECKPOINTS where flow = ?1 order by lastUpdated desc limit 1")
            .map_err(failed)?;
        let mut rows = statement.query([flow]).map_err(failed)?;
        let Some(row) = rows.next().map_err(failed)? else { return Ok(None) };
        let path: String = row.get(0).map_err(failed)?;
        let file_id: String = row.get(1).map_err(failed)?;
        let offset: i64 = row.get(2).map_err(failed)?;
        Ok(Some(Checkpoint {
            path: PathBuf::from(path),
            file_key: FileKey::parse(&file_id),
            file_id,
            // A negative offset is no position: from the file's head, as the agent reads it.
            offset: u64::try_from(offset).unwrap_or(0),
        }))
    }
}

/// What the import did with one flow, file by file (or why it did nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowOutcome {
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
    Files(Vec<FileOutcome>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOutcome {
    pub path: PathBuf,
    pub place: Place,
    pub outcome: Outcome,
}

/// Where a file stands to the agent's own file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The file the agent was reading: its offset.
    Reading,
    /// Modified after it: the agent had not reached it, and would read it from its head.
    Newer,
    /// Modified before it: the agent had finished it.
    Older,
}

impl std::fmt::Display for FlowOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlowOutcome::NoCheckpoint => write!(f, "no checkpoint for this flow: tailhose starts as read_from_head says (the agent's initialPosition)"),
            FlowOutcome::UnreadableFileId(id) => write!(f, "not imported: fileId {id:?} is not `(dev=HEX,ino=N)`"),
            FlowOutcome::FileGone { recorded, key } => write!(
                f,
                "not imported: no file the pattern names is the one the agent was reading ({} {key}); tailhose starts as read_from_head says",
                recorded.display()
            ),
            FlowOutcome::Shorter { path, size, offset } => write!(
                f,
                "not imported: {} is {size} bytes, shorter than the agent's offset {offset} (truncated?); tailhose starts as read_from_head says",
                path.display()
            ),
            FlowOutcome::Files(files) => write!(f, "{} file(s)", files.len()),
        }
    }
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

/// A file the source names, as found now.
struct Found {
    path: PathBuf,
    file: std::fs::File,
    key: FileKey,
    size: u64,
    modified: SystemTime,
}

/// Imports `checkpoint` (the flow's latest, if any) for every file of `source` into `queue`.
pub fn import(queue: &RouteQueue, source: &SourceSettings, checkpoint: Option<&Checkpoint>) -> Result<FlowOutcome, QueueError> {
    let Some(checkpoint) = checkpoint else { return Ok(FlowOutcome::NoCheckpoint) };
    let Some(key) = checkpoint.file_key else { return Ok(FlowOutcome::UnreadableFileId(checkpoint.file_id.clone())) };
    let found = files_of(source);
    let Some(reading) = found.iter().find(|file| file.key == key) else {
        return Ok(FlowOutcome::FileGone { recorded: checkpoint.path.clone(), key });
    };
    if reading.size < checkpoint.offset {
        return Ok(FlowOutcome::Shorter { path: reading.path.clone(), size: reading.size, offset: checkpoint.offset });
    }
    let mut outcomes = Vec::new();
    for file in &found {
        let (place, offset) = if file.key == key {
            (Place::Reading, checkpoint.offset)
        } else if file.modified > reading.modified {
            (Place::Newer, 0)
        } else {
            (Place::Older, file.size)
        };
        let outcome = adopt(queue, &file.file, &file.path, offset)?;
        outcomes.push(FileOutcome { path: file.path.clone(), place, outcome });
    }
    queue.commit()?;
    Ok(FlowOutcome::Files(outcomes))
}

/// The files the source's globs name now (less its exclusions), open.
fn files_of(source: &SourceSettings) -> Vec<Found> {
    let mut found: Vec<Found> = Vec::new();
    for pattern in &source.paths {
        let Ok(paths) = glob::glob(pattern) else { continue };
        for path in paths.flatten() {
            if !names(source, &path) || found.iter().any(|file| file.path == path) {
                continue;
            }
            let Ok(file) = std::fs::File::open(&path) else { continue };
            let Ok(metadata) = file.metadata() else { continue };
            if !metadata.is_file() {
                continue;
            }
            let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            found.push(Found { path, key: FileKey::of(&metadata), size: metadata.len(), modified, file });
        }
    }
    found
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
