//! Sinks: where batches of records are delivered, and what the destination said of each record.
//!
//! A sink delivers one batch per call and answers per record ([`RecordOutcome`]) or for the whole
//! call ([`SinkError`]). It never retries by itself: the flusher owns retries, back-off and
//! acknowledgement, so that the queue and file positions advance only on what the destination
//! accepted (invariant 2).
//!
//! Around the calls: [`batch`] packs records within a call's limits (and packs several lines
//! into one record when `pack_records` is on), [`rate`] paces calls at the rate the destination
//! takes, learned from its throttling.

pub mod answer;
pub mod batch;
mod directory;
mod firehose;
mod https_client;
pub mod rate;
pub mod request;

use crate::config::{firehose_limits, SinkDestination, SinkSettings};

pub use batch::{BatchLimits, BatchPacker, Offer};
pub use directory::DirectorySink;
pub use firehose::{FirehoseSink, PackingVerdict};

/// The records of one batch as they go to the destination (each with its trailing newline when
/// configured): one line read each, or several when records are packed. They live one after the
/// other in one buffer, so packing a batch copies each line once and allocates only as the
/// buffer grows, instead of once per record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingRecords {
    bytes: Vec<u8>,
    /// Where each record ends in `bytes`; record `i` starts where record `i - 1` ends.
    ends: Vec<usize>,
    /// How many lines read from files each record carries.
    lines: Vec<u32>,
}

/// Firehose bills each record rounded up to this many bytes (5 KB).
pub const BILLING_UNIT_BYTES: u64 = 5 * 1024;

impl OutgoingRecords {
    /// Room for `bytes` bytes of records before the buffer grows.
    pub fn with_capacity(bytes: usize) -> OutgoingRecords {
        OutgoingRecords { bytes: Vec::with_capacity(bytes), ends: Vec::new(), lines: Vec::new() }
    }

    /// Adds a record made of `line`, followed by a newline when `newline` is set.
    pub fn push(&mut self, line: &[u8], newline: bool) {
        self.bytes.extend_from_slice(line);
        if newline {
            self.bytes.push(b'\n');
        }
        self.ends.push(self.bytes.len());
        self.lines.push(1);
    }

    /// Appends `line` and a newline to the last record (record packing); a first line starts one.
    pub fn pack_into_last(&mut self, line: &[u8]) {
        if self.ends.is_empty() {
            return self.push(line, true);
        }
        self.bytes.extend_from_slice(line);
        self.bytes.push(b'\n');
        let last = self.ends.len() - 1;
        self.ends[last] = self.bytes.len();
        self.lines[last] += 1;
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The bytes of record `index`.
    pub fn get(&self, index: usize) -> &[u8] {
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        &self.bytes[start..self.ends[index]]
    }

    /// How many lines read from files record `index` carries.
    pub fn lines(&self, index: usize) -> u32 {
        self.lines[index]
    }

    /// Bytes of all the records.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// Bytes of the last record, if any.
    pub fn last_len(&self) -> Option<usize> {
        self.len().checked_sub(1).map(|last| self.get(last).len())
    }

    /// Firehose billing units record `index` costs.
    pub fn billed_units(&self, index: usize) -> u64 {
        (self.get(index).len() as u64).div_ceil(BILLING_UNIT_BYTES).max(1)
    }
}

/// Error codes, of a whole call or of an entry, that mean "over the stream's throughput".
pub fn is_throughput_code(code: &str) -> bool {
    matches!(code, "ServiceUnavailableException" | "ThrottlingException" | "LimitExceededException")
}

/// What the destination said of one record of an accepted call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    Accepted,
    /// Not taken this time (`ServiceUnavailableException`, `InternalFailure`, ...): send it again.
    Failed {
        code: String,
        message: String,
    },
}

/// A call that failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The destination asked to slow down; retry with back-off.
    #[error("throttled: {message}")]
    Throttled { message: String },
    /// Network trouble, a timeout, an answer that cannot be relied on: retry with back-off.
    #[error("transient failure: {message}")]
    Transient { message: String },
    /// A 5xx answer (`InternalFailure`): a fault of the service, not a rate; retry.
    #[error("server error (HTTP {status}): {message}")]
    ServerError { status: u16, message: String },
    /// The call's content was refused as invalid (`InvalidArgumentException`): some record in it
    /// can never be taken. The flusher splits the batch to find it.
    #[error("records refused as invalid ({code}): {message}")]
    InvalidRecords { code: String, message: String },
    /// Every call will fail until someone acts (stream deleted, no permission, bad credentials).
    /// Records stay queued; retries continue slowly.
    #[error("destination unavailable ({code}): {message}; {fix}")]
    Unavailable { code: String, message: String, fix: String },
}

/// A sink that cannot be set up: its settings point at something unusable.
#[derive(Debug, thiserror::Error)]
pub enum SinkSetupError {
    #[error("cannot read ca_file {path}: {source}")]
    CaFile { path: std::path::PathBuf, source: std::io::Error },
    #[error("ca_file {path} holds no usable PEM certificate: {reason}")]
    TlsContext { path: std::path::PathBuf, reason: String },
}

/// A configured destination.
pub enum Sink {
    Firehose(FirehoseSink),
    Directory(DirectorySink),
}

impl Sink {
    pub async fn connect(settings: &SinkSettings) -> Result<Sink, SinkSetupError> {
        match &settings.destination {
            SinkDestination::Firehose { delivery_stream, region, endpoint_url, request_timeout, ca_file } => {
                let endpoint = firehose::Endpoint {
                    delivery_stream,
                    region: region.as_deref(),
                    endpoint_url: endpoint_url.as_deref(),
                    request_timeout: *request_timeout,
                    ca_file: ca_file.as_deref(),
                };
                Ok(Sink::Firehose(FirehoseSink::connect(endpoint).await?))
            }
            SinkDestination::Directory { path } => Ok(Sink::Directory(DirectorySink::new(path.clone(), settings.name.clone()))),
        }
    }

    /// Whether the destination stores packed records as it would the lines one by one.
    pub async fn packing_verdict(&self) -> PackingVerdict {
        match self {
            Sink::Firehose(sink) => sink.packing_verdict().await,
            Sink::Directory(_) => PackingVerdict::Allowed,
        }
    }

    /// Limits of one call to this destination under `settings`.
    pub fn limits(&self, settings: &SinkSettings) -> BatchLimits {
        let max_record_bytes = match self {
            Sink::Firehose(_) => Some(firehose_limits::MAX_RECORD_BYTES),
            Sink::Directory(_) => None,
        };
        BatchLimits { max_records: settings.max_batch_records as usize, max_bytes: settings.max_batch_bytes, max_record_bytes }
    }

    /// Delivers `records[i]` for each `i` in `which`; on success the answer has one outcome per
    /// entry of `which`, in order.
    pub async fn put(&self, records: &OutgoingRecords, which: &[usize]) -> Result<Vec<RecordOutcome>, SinkError> {
        match self {
            Sink::Firehose(sink) => sink.put(records, which).await,
            Sink::Directory(sink) => sink.put(records, which).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The one-buffer records read back as a list of separately held records would.
        #[test]
        fn records_read_back_as_pushed_and_packed(
            steps in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..50), any::<bool>(), any::<bool>()), 0..100),
        ) {
            let mut records = OutgoingRecords::default();
            // The model: (bytes, lines) of each record.
            let mut model: Vec<(Vec<u8>, u32)> = Vec::new();
            for (line, pack, newline) in &steps {
                match model.last_mut() {
                    Some((bytes, lines)) if *pack => {
                        records.pack_into_last(line);
                        bytes.extend_from_slice(line);
                        bytes.push(b'\n');
                        *lines += 1;
                    }
                    _ => {
                        records.push(line, *newline);
                        let mut bytes = line.clone();
                        if *newline {
                            bytes.push(b'\n');
                        }
                        model.push((bytes, 1));
                    }
                }
            }
            prop_assert_eq!(records.len(), model.len());
            prop_assert_eq!(records.last_len(), model.last().map(|(bytes, _)| bytes.len()));
            for (index, (bytes, lines)) in model.iter().enumerate() {
                prop_assert_eq!(records.get(index), &bytes[..]);
                prop_assert_eq!(records.lines(index), *lines);
                prop_assert_eq!(records.billed_units(index), (bytes.len() as u64).div_ceil(BILLING_UNIT_BYTES).max(1));
            }
        }
    }
}
