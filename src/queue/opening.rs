//! What [`QueueStore::open`](super::QueueStore::open) does to sled's own files before and after
//! sled opens them, so that no crash at any instant, and no command run as root, leaves a queue
//! that tailhose cannot open again.
//!
//! # Invariants
//! - A queue that may hold records is never deleted or replaced: only settings with no log
//!   beside them (what a kill during the queue's creation leaves) are removed, and damaged
//!   settings beside a log are moved aside, never deleted, for sled to write them again.
//! - One process at a time prepares and opens a data_dir's queue (an advisory lock on the
//!   data_dir itself, held until sled holds its own lock on its log).
//! - After every open, sled's settings file and the folders that name it are on disk.
//! - The files of a data_dir keep the owner of the data_dir: root adopts that user (and its
//!   groups) before sled creates a file there.
//!
//! sled 0.34 keeps its state in `queue/conf` (its settings: text and a crc32, written in two
//! writes, no rename, no fsync, before anything else), `queue/db` (its log), `queue/blobs/`
//! (values over 128 KiB, written only once the log exists) and `queue/snap.*` (snapshots).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::now_ms;

/// Whether [`QueueStore::open`](super::QueueStore::open) found the queue or created it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    /// The queue was there (the usual start).
    Found,
    /// There was no queue: this is the data_dir's first start.
    Created,
    /// An earlier start was stopped while sled created the queue: sled's settings file was
    /// there but its log was not, so the queue had never held a record, and it was created again.
    CreatedAgain,
}

impl Creation {
    /// What the operator is told of [`Creation::CreatedAgain`].
    pub const CREATED_AGAIN_NOTICE: &'static str = "an earlier start was stopped while it created the queue (sled's settings file was \
        left without its log); the queue had never held a record and was created again";
}

/// What the operator is told when damaged settings were moved aside.
pub const SETTINGS_REWRITTEN_NOTICE: &str = "sled's settings file (queue/conf) failed its checksum (a power cut before it reached the \
    disk?); it was moved aside (moved_to) and written again with the settings every tailhose queue has; the queue opened with its \
    records. Check the disk holding data_dir";

/// What was found in the queue folder before sled opened it.
#[derive(Debug)]
pub(super) enum Found {
    /// Nothing, or what a kill during the creation leaves: sled creates the queue.
    Creation(Creation),
    /// A queue with its log.
    Queue {
        /// Its settings failed their checksum and were moved here; sled writes them again.
        settings_moved_to: Option<PathBuf>,
    },
    /// Blobs (or snapshots) without the log that indexes them: the log was lost (fsck, a
    /// deletion). Opening would make an empty queue and forget every position.
    LogMissing,
}

/// Looks at `queue_dir` before sled opens it and prepares it (see the module's invariants).
pub(super) fn prepare(queue_dir: &Path) -> std::io::Result<Found> {
    match std::fs::symlink_metadata(queue_dir.join("db")) {
        Ok(_) => return Ok(Found::Queue { settings_moved_to: move_damaged_settings_aside(queue_dir)? }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let entries = match std::fs::read_dir(queue_dir) {
        Ok(entries) => entries.collect::<Result<Vec<_>, _>>()?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Creation(Creation::Created)),
        Err(error) => return Err(error),
    };
    let mut settings = false;
    for entry in &entries {
        match entry.file_name().to_str() {
            Some("conf") => settings = true,
            Some("blobs") if folder_is_empty(&entry.path())? => {}
            // Anything else was written after the log existed.
            _ => return Ok(Found::LogMissing),
        }
    }
    if !settings {
        return Ok(Found::Creation(Creation::Created));
    }
    std::fs::remove_file(queue_dir.join("conf"))?;
    Ok(Found::Creation(Creation::CreatedAgain))
}

fn folder_is_empty(folder: &Path) -> std::io::Result<bool> {
    Ok(std::fs::read_dir(folder)?.next().is_none())
}

/// The text of sled's settings in every queue tailhose creates: sled 0.34's defaults (tailhose
/// sets none of them). `a_new_queues_settings_are_the_ones_tailhose_can_write_again` checks it
/// against what sled writes, so that a sled update that changes them fails a test instead of
/// letting a rewrite get past sled's own checks.
pub(super) const SETTINGS_TEXT: &[u8] = b"segment_size: 524288\nuse_compression: false\nversion: 0.34\n";

/// `conf` as sled writes it: the text, then its crc32, little-endian.
pub(super) fn expected_settings() -> Vec<u8> {
    let mut bytes = SETTINGS_TEXT.to_vec();
    bytes.extend_from_slice(&crc32fast::hash(SETTINGS_TEXT).to_le_bytes());
    bytes
}

/// sled's settings file beside a log, when it is what tailhose's settings become when torn (a
/// prefix: a power cut before tailhose synced them) or damaged in place (their length, a bad
/// checksum): sled would refuse the queue for good. sled writing them again gives back the
/// very file; the damaged one is kept beside it. Settings that are neither are left to sled.
fn move_damaged_settings_aside(queue_dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let path = queue_dir.join("conf");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let expected = expected_settings();
    let ours_damaged = expected.starts_with(&bytes) || bytes.len() == expected.len();
    // sled takes 8 bytes or fewer for "no settings" and writes them itself.
    if bytes.len() <= 8 || settings_are_intact(&bytes) || !ours_damaged {
        return Ok(None);
    }
    let aside = queue_dir.join(format!("conf.damaged.{}", now_ms()));
    std::fs::rename(&path, &aside)?;
    Ok(Some(aside))
}

/// sled's layout of `conf`: the settings' text, then the crc32 of that text, little-endian.
fn settings_are_intact(bytes: &[u8]) -> bool {
    let Some((text, crc)) = bytes.split_last_chunk::<4>() else { return false };
    crc32fast::hash(text) == u32::from_le_bytes(*crc)
}

/// Puts sled's settings file and the folders naming the queue on disk: sled syncs neither, and
/// a power cut could otherwise leave a log beside settings that never reached the disk. Done at
/// every open, not only the first, so that a kill between creation and sync is made good.
pub(super) fn sync(data_dir: &Path, queue_dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(queue_dir.join("conf"))?.sync_all()?;
    sync_folder(queue_dir)?;
    sync_folder(data_dir)
}

/// Some file systems cannot sync a folder (EINVAL); their renames and creations are as durable
/// as they get.
pub(super) fn sync_folder(folder: &Path) -> std::io::Result<()> {
    match std::fs::File::open(folder)?.sync_all() {
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        other => other,
    }
}

/// An advisory lock on the data_dir, held while its queue is prepared and opened: two starts at
/// once must not both prepare a creation (one could remove the settings the other just wrote).
/// sled's own lock on its log takes over once the queue is open.
pub(super) struct OpeningLock(Option<std::fs::File>);

/// What taking a lock found.
pub(super) enum Lock<T> {
    Taken(T),
    /// Another process holds it: that process is opening or using the queue.
    Held,
}

impl OpeningLock {
    pub(super) fn take(data_dir: &Path) -> std::io::Result<Lock<OpeningLock>> {
        let folder = std::fs::File::open(data_dir)?;
        Ok(match try_lock(&folder)? {
            LockAttempt::Taken => Lock::Taken(OpeningLock(Some(folder))),
            LockAttempt::WouldBlock => Lock::Held,
            // NFS (EFS) locks only files open for writing: sled's lock on its log still
            // keeps a second process out; only the creation race is unguarded there.
            LockAttempt::Unsupported => Lock::Taken(OpeningLock(None)),
        })
    }
}

impl Drop for OpeningLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        if let Some(folder) = &self.0 {
            // SAFETY: releases the lock taken in `take` on the descriptor this value owns.
            unsafe {
                libc::flock(folder.as_raw_fd(), libc::LOCK_UN);
            }
        }
    }
}

enum LockAttempt {
    Taken,
    WouldBlock,
    Unsupported,
}

fn try_lock(file: &std::fs::File) -> std::io::Result<LockAttempt> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock only takes a lock on the open file descriptor it is given.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(LockAttempt::Taken);
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(LockAttempt::WouldBlock),
        Some(libc::EBADF | libc::ENOLCK | libc::EOPNOTSUPP) => Ok(LockAttempt::Unsupported),
        _ => Err(error),
    }
}

/// Whether sled's lock on its log is free: anything [`prepare`] changes must wait until no
/// other process has the queue open (a `status` while the daemon runs would otherwise move the
/// running daemon's settings and then fail on sled's lock). The lock is let go at once, for
/// sled to take (flock locks belong to the open file).
pub(super) fn log_is_free(queue_dir: &Path) -> std::io::Result<bool> {
    let log = match std::fs::OpenOptions::new().read(true).write(true).open(queue_dir.join("db")) {
        Ok(log) => log,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(error) => return Err(error),
    };
    Ok(!matches!(try_lock(&log)?, LockAttempt::WouldBlock))
}

/// Marks a queue that tailhose has opened (written at every open where it is missing): without
/// it, a queue whose log was lost after it drained (only its settings and an empty `blobs/`
/// left) could not be told from an interrupted creation. [`prepare`] takes any file beside the
/// settings for the sign of a queue that existed.
pub(super) const OPENED_MARKER: &str = "opened-by-tailhose";

pub(super) fn mark_opened(queue_dir: &Path) -> std::io::Result<()> {
    let marker = queue_dir.join(OPENED_MARKER);
    if marker.exists() {
        return Ok(());
    }
    std::fs::write(&marker, b"sled's log (db) and settings (conf) are in this folder; see docs/queue-format.md\n")?;
    std::fs::File::open(&marker)?.sync_all()
}

/// The user this process became to open a data_dir that user owns (see [`adopt_owner`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptedOwner {
    pub uid: u32,
    pub gid: u32,
    pub name: Option<String>,
}

impl std::fmt::Display for AdoptedOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.name.as_deref().unwrap_or("the owner");
        write!(
            f,
            "running as {name} (uid {}, gid {}), who owns data_dir, instead of root: files root created in the queue \
             would lock that user's daemon out of it",
            self.uid, self.gid
        )
    }
}

/// What root does with a data_dir another user owns (the package's daemon runs as `tailhose`):
/// sled creates files in the queue at every open (a snapshot, blobs), and files only root could
/// open would stop that user's daemon at its next start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherOwner {
    /// Become that user, with its groups, for the rest of the process, before anything is
    /// created in the data_dir: what a command (`queue ...`, `import ...`, `status`) does, having
    /// read what only root may read first.
    Become,
    /// Refuse: the daemon run by hand as root would read its sources as that user, and a file
    /// only root may read would be skipped (or its damaged range dead-lettered) instead of
    /// failing loudly.
    Refuse,
}

/// The user who owns `data_dir`, when this process is root and that user is not.
pub(super) fn other_owner(data_dir: &Path) -> std::io::Result<Option<AdoptedOwner>> {
    // SAFETY: geteuid only reads the process's effective user id.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let metadata = match std::fs::metadata(data_dir) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    if metadata.uid() == 0 {
        return Ok(None);
    }
    // The user's own group and groups, as a login gives them; a uid with no entry (a volume
    // owned by a host's user, in a container) keeps the folder's group and no others.
    let owner = match user_entry(metadata.uid())? {
        Some((name, gid)) => AdoptedOwner { uid: metadata.uid(), gid, name: Some(name) },
        None => AdoptedOwner { uid: metadata.uid(), gid: metadata.gid(), name: None },
    };
    Ok(Some(owner))
}

/// The name and primary group of `uid`, from the user database.
fn user_entry(uid: u32) -> std::io::Result<Option<(String, u32)>> {
    let mut size = 16 * 1024;
    loop {
        // SAFETY: `passwd` is plain C data (integers and pointers); all zeros is a valid value.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buffer = vec![0 as libc::c_char; size];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: getpwuid_r writes the entry into `entry` and its strings into `buffer`, both
        // ours and as large as said; `found` is set to `&entry` or null.
        let status = unsafe { libc::getpwuid_r(uid, &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut found) };
        match status {
            0 if found.is_null() || entry.pw_name.is_null() => return Ok(None),
            0 => {
                // SAFETY: pw_name points into `buffer`, NUL-terminated by getpwuid_r.
                let name = unsafe { std::ffi::CStr::from_ptr(entry.pw_name) };
                let name = name.to_str().map_err(|_| std::io::Error::other(format!("the name of user {uid} is not UTF-8")))?;
                return Ok(Some((name.to_owned(), entry.pw_gid)));
            }
            libc::ERANGE if size < 1 << 20 => size *= 4,
            error => return Err(std::io::Error::from_raw_os_error(error)),
        }
    }
}

/// Groups first (only root may set them), then the group, then the user: after `setuid` this
/// process can never be root again.
pub(super) fn become_user(owner: &AdoptedOwner) -> std::io::Result<()> {
    let check = |status: libc::c_int| if status == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
    match owner.name.as_deref().and_then(|name| std::ffi::CString::new(name).ok()) {
        // SAFETY: initgroups reads the NUL-terminated name and sets this process's groups.
        Some(name) => check(unsafe { libc::initgroups(name.as_ptr(), owner.gid) })?,
        // SAFETY: an empty list: no supplementary groups.
        None => check(unsafe { libc::setgroups(0, std::ptr::null()) })?,
    }
    // SAFETY: setgid and setuid change this process's (every thread's) ids; checked.
    check(unsafe { libc::setgid(owner.gid) })?;
    check(unsafe { libc::setuid(owner.uid) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_as_sled_writes_them() {
        let text = b"segment_size: 524288\nuse_compression: false\nversion: 0.34\n";
        let mut conf = text.to_vec();
        conf.extend_from_slice(&crc32fast::hash(text).to_le_bytes());
        assert!(settings_are_intact(&conf));
        assert!(!settings_are_intact(&conf[..conf.len() - 4]), "a kill before the crc");
        conf[3] ^= 1;
        assert!(!settings_are_intact(&conf), "a flipped byte");
    }

    #[test]
    fn only_settings_and_an_empty_blobs_folder_are_an_interrupted_creation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = dir.path().join("queue");
        assert!(matches!(prepare(&queue).expect("prepare"), Found::Creation(Creation::Created)), "no folder yet");
        std::fs::create_dir_all(queue.join("blobs")).expect("mkdir");
        assert!(matches!(prepare(&queue).expect("prepare"), Found::Creation(Creation::Created)), "an empty folder");
        std::fs::write(queue.join("conf"), b"segment_size: 52").expect("write");
        assert!(matches!(prepare(&queue).expect("prepare"), Found::Creation(Creation::CreatedAgain)));
        assert!(!queue.join("conf").exists(), "removed for sled to write again");
        std::fs::write(queue.join("conf"), b"segment_size: 52").expect("write");
        std::fs::write(queue.join("blobs/12"), b"a chunk body").expect("write");
        assert!(matches!(prepare(&queue).expect("prepare"), Found::LogMissing), "a blob without its log");
        assert!(queue.join("conf").exists() && queue.join("blobs/12").exists(), "nothing touched");
    }
}
