//! The directory sink: each batch becomes one file, laid out like the S3 objects Firehose writes
//! (`YYYY/MM/DD/HH/<sink>-1-YYYY-MM-DD-HH-MM-SS-<uuid>`, UTC), so a run without an AWS account
//! produces what the real delivery would.
//!
//! A batch is acknowledged only once its file is durable: written to a temporary name, fsynced,
//! renamed into place, and the directory fsynced, so a crash never leaves a half-written object
//! under a final name.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{OutgoingRecords, RecordOutcome, SinkError};

pub struct DirectorySink {
    root: PathBuf,
    sink_name: String,
}

impl DirectorySink {
    pub fn new(root: PathBuf, sink_name: String) -> DirectorySink {
        DirectorySink { root, sink_name }
    }

    pub async fn put(&self, records: &OutgoingRecords, which: &[usize]) -> Result<Vec<RecordOutcome>, SinkError> {
        let mut body = Vec::with_capacity(which.iter().map(|&index| records.get(index).len()).sum());
        for &index in which {
            body.extend_from_slice(records.get(index));
        }
        let now = chrono::Utc::now();
        let folder = self.root.join(now.format("%Y/%m/%d/%H").to_string());
        let name = format!("{}-1-{}-{}", self.sink_name, now.format("%Y-%m-%d-%H-%M-%S"), uuid::Uuid::new_v4());
        tokio::task::spawn_blocking(move || write_durably(&folder, &name, &body))
            .await
            .map_err(|error| SinkError::Transient { message: format!("writer task failed: {error}") })?
            .map_err(|error| SinkError::Transient { message: format!("cannot write to the output directory: {error}") })?;
        Ok(vec![RecordOutcome::Accepted; which.len()])
    }
}

fn write_durably(folder: &Path, name: &str, body: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(folder)?;
    let temporary = folder.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(body)?;
    // The data must be on disk before the name points at it ...
    file.sync_all()?;
    std::fs::rename(&temporary, folder.join(name))?;
    // ... and the new name must be on disk before the batch is acknowledged.
    std::fs::File::open(folder)?.sync_all()
}
