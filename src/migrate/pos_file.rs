//! Fluentd's `pos_file`: where `in_tail` stopped in each file, imported so that tailhose starts
//! exactly there.
//!
//! Format (one line per file): `path \t offset (16 hex digits) \t inode (16 hex digits)`. An
//! offset of `ffffffffffffffff` marks a file Fluentd stopped watching.
//!
//! Guarantees: a position is imported only for a file that is still at its path with the inode
//! Fluentd recorded; anything else is reported with the reason, never guessed. A position is
//! imported as both read and acknowledged (Fluentd had delivered everything before it), and only
//! for a file the queue does not know yet.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::SourceSettings;
use crate::queue::{QueueError, RouteQueue};

/// One line of a pos_file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PosEntry {
    pub path: PathBuf,
    pub offset: u64,
    pub inode: u64,
    pub line: usize,
}

/// Fluentd's mark for a file it no longer watches.
const UNWATCHED: u64 = u64::MAX;

/// The entries of a pos_file, and a message for each line that is not one.
pub fn parse(text: &str) -> (Vec<PosEntry>, Vec<String>) {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for (index, line) in text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        let parsed = match fields[..] {
            [path, offset, inode] => u64::from_str_radix(offset.trim(), 16)
                .ok()
                .zip(u64::from_str_radix(inode.trim(), 16).ok())
                .map(|(offset, inode)| PosEntry { path: PathBuf::from(path), offset, inode, line: index + 1 }),
            _ => None,
        };
        match parsed {
            Some(entry) => entries.push(entry),
            None => problems.push(format!("line {}: not `path<TAB>hex offset<TAB>hex inode`: {line:?}", index + 1)),
        }
    }
    (entries, problems)
}

/// What became of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Imported {
        offset: u64,
    },
    /// Fluentd had stopped watching the file.
    Unwatched,
    /// Another file is at the path now (rotated since it was recorded).
    InodeChanged {
        recorded: u64,
        found: u64,
    },
    Missing,
    /// The file is shorter than the recorded offset (truncated since).
    Shorter {
        size: u64,
    },
    /// None of the source's globs names it (or an exclusion does).
    NotInPaths,
    /// The queue already has a position for this file; it is kept.
    AlreadyKnown,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Imported { offset } => write!(f, "imported: tailhose starts at byte {offset}"),
            Outcome::Unwatched => write!(f, "not imported: Fluentd no longer watched this file"),
            Outcome::InodeChanged { recorded, found } => write!(
                f,
                "not imported: the recorded inode is {recorded}, the file there now is inode {found} (rotated since?); tailhose treats it as a file without position"
            ),
            Outcome::Missing => write!(f, "not imported: the file no longer exists"),
            Outcome::Shorter { size } => write!(f, "not imported: the file is now {size} bytes, shorter than the recorded offset (truncated?)"),
            Outcome::NotInPaths => write!(f, "not imported: the source's paths do not name this file"),
            Outcome::AlreadyKnown => write!(f, "not imported: tailhose already has a position for this file; it is kept"),
        }
    }
}

/// Imports every entry that names a file of `source` into `queue`.
/// One entry, looked at before the queue is opened: its file is opened then, so that an import
/// run as root reads it as root even after the queue made it its owner (see
/// [`crate::queue::opening`]).
pub struct PlannedEntry {
    pub entry: PosEntry,
    plan: EntryPlan,
}

enum EntryPlan {
    Adopt { file: std::fs::File, offset: u64 },
    Decided(Outcome),
}

/// Looks at every entry of a source's pos_file: which files may take their position.
pub fn plan(source: &SourceSettings, entries: &[PosEntry]) -> Vec<PlannedEntry> {
    entries.iter().map(|entry| PlannedEntry { entry: entry.clone(), plan: plan_one(source, entry) }).collect()
}

fn plan_one(source: &SourceSettings, entry: &PosEntry) -> EntryPlan {
    if entry.offset == UNWATCHED {
        return EntryPlan::Decided(Outcome::Unwatched);
    }
    if !names(source, &entry.path) {
        return EntryPlan::Decided(Outcome::NotInPaths);
    }
    let Ok(file) = std::fs::File::open(&entry.path) else { return EntryPlan::Decided(Outcome::Missing) };
    let Ok(metadata) = file.metadata() else { return EntryPlan::Decided(Outcome::Missing) };
    if metadata.ino() != entry.inode {
        return EntryPlan::Decided(Outcome::InodeChanged { recorded: entry.inode, found: metadata.ino() });
    }
    if metadata.len() < entry.offset {
        return EntryPlan::Decided(Outcome::Shorter { size: metadata.len() });
    }
    EntryPlan::Adopt { file, offset: entry.offset }
}

/// Imports the planned entries into one route's queue.
pub fn import(queue: &RouteQueue, planned: &[PlannedEntry]) -> Result<Vec<(PosEntry, Outcome)>, QueueError> {
    let mut outcomes = Vec::new();
    for PlannedEntry { entry, plan } in planned {
        let outcome = match plan {
            EntryPlan::Adopt { file, offset } => adopt(queue, file, &entry.path, *offset)?,
            EntryPlan::Decided(outcome) => outcome.clone(),
        };
        outcomes.push((entry.clone(), outcome));
    }
    queue.commit()?;
    Ok(outcomes)
}

/// Makes `offset` the read and acknowledged position of `file` (open at `path`), unless the
/// queue knows the file already.
pub fn adopt(queue: &RouteQueue, file: &std::fs::File, path: &Path, offset: u64) -> Result<Outcome, QueueError> {
    let identity = match crate::source::identify(file) {
        Ok(Some(identity)) => identity,
        // An empty file: nothing was read from it, and reading from its head loses nothing.
        Ok(None) | Err(_) => return Ok(Outcome::Imported { offset: 0 }),
    };
    use std::os::unix::ffi::OsStrExt;
    match queue.adopt_position(identity, path.as_os_str().as_bytes().to_vec(), offset)? {
        true => Ok(Outcome::Imported { offset }),
        false => Ok(Outcome::AlreadyKnown),
    }
}

/// Whether the source's globs (less its exclusions) name `path`.
fn names(source: &SourceSettings, path: &Path) -> bool {
    let matches =
        |patterns: &[String]| patterns.iter().any(|pattern| glob::Pattern::new(pattern).is_ok_and(|pattern| pattern.matches_path(path)));
    matches(&source.paths) && !matches(&source.exclude)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pos_file_lines_are_path_hex_offset_hex_inode() {
        let text =
            "/var/log/a.log\t00000000000004d2\t0000000000a1b2c3\n/var/log/old.log\tffffffffffffffff\t0000000000000007\nbroken line\n";
        let (entries, problems) = parse(text);
        assert_eq!(entries[0], PosEntry { path: "/var/log/a.log".into(), offset: 1234, inode: 0xa1b2c3, line: 1 });
        assert_eq!(entries[1].offset, UNWATCHED);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("line 3:"), "{problems:?}");
    }
}
