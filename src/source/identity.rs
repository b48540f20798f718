//! Telling files apart by what they are, not by their name.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

use crate::queue::FileIdentity;

/// How an open file relates to an identity stored earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityMatch {
    /// Same device, inode and first bytes: the same file.
    Same,
    /// Same device and inode, other first bytes: the inode was reused, or the file was truncated
    /// and rewritten.
    Replaced,
    /// Another device or inode.
    Other,
}

/// The identity of an open file, or `None` while it is empty (an empty file has no first bytes
/// to fingerprint yet).
pub fn identify(file: &File) -> std::io::Result<Option<FileIdentity>> {
    let metadata = file.metadata()?;
    let fingerprint_len = metadata.len().min(FileIdentity::FINGERPRINT_BYTES as u64) as usize;
    if fingerprint_len == 0 {
        return Ok(None);
    }
    let Some(fingerprint) = fingerprint_of(file, fingerprint_len)? else {
        return Ok(None);
    };
    Ok(Some(FileIdentity { device: metadata.dev(), inode: metadata.ino(), fingerprint_len: fingerprint_len as u32, fingerprint }))
}

/// Whether `file` is the file `stored` names.
pub fn compare(file: &File, stored: &FileIdentity) -> std::io::Result<IdentityMatch> {
    let metadata = file.metadata()?;
    if metadata.dev() != stored.device || metadata.ino() != stored.inode {
        return Ok(IdentityMatch::Other);
    }
    match fingerprint_of(file, stored.fingerprint_len as usize)? {
        Some(fingerprint) if fingerprint == stored.fingerprint => Ok(IdentityMatch::Same),
        _ => Ok(IdentityMatch::Replaced),
    }
}

/// CRC-32/IEEE of the first `len` bytes, or `None` when the file is shorter.
fn fingerprint_of(file: &File, len: usize) -> std::io::Result<Option<u32>> {
    let mut head = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let read = file.read_at(&mut head[filled..], filled as u64)?;
        if read == 0 {
            return Ok(None);
        }
        filled += read;
    }
    Ok(Some(crc32fast::hash(&head)))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_file_keeps_its_identity_when_it_grows_and_when_renamed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        let mut file = File::create(&path).expect("create");
        file.write_all(b"{\"board_id\":1}\n").expect("write");
        let first = identify(&File::open(&path).expect("open")).expect("identify").expect("not empty");
        file.write_all(&[b'x'; 1000]).expect("grow");
        let renamed = dir.path().join("a.log.1");
        std::fs::rename(&path, &renamed).expect("rename");
        assert_eq!(compare(&File::open(&renamed).expect("open"), &first).expect("compare"), IdentityMatch::Same);
    }

    #[test]
    fn a_rewritten_file_with_the_same_inode_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        std::fs::write(&path, b"{\"board_id\":1}\n").expect("write");
        let first = identify(&File::open(&path).expect("open")).expect("identify").expect("not empty");
        let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
        file.set_len(0).expect("truncate");
        file.write_at(b"{\"board_id\":2}\n", 0).expect("rewrite");
        assert_eq!(compare(&File::open(&path).expect("open"), &first).expect("compare"), IdentityMatch::Replaced);
    }

    #[test]
    fn an_empty_file_has_no_identity_yet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("empty.log");
        std::fs::write(&path, b"").expect("write");
        assert_eq!(identify(&File::open(&path).expect("open")).expect("identify"), None);
    }
}
