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

/// One record as it goes to the destination (with its trailing newline when configured): one
/// line read, or several when records are packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRecord {
    pub data: Vec<u8>,
    /// How many lines read from files it carries.
    pub lines: u32,
}

/// Firehose bills each record rounded up to this many bytes (5 KB).
pub const BILLING_UNIT_BYTES: u64 = 5 * 1024;

impl OutgoingRecord {
    /// Firehose billing units this record costs.
    pub fn billed_units(&self) -> u64 {
        (self.data.len() as u64).div_ceil(BILLING_UNIT_BYTES).max(1)
    }
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
    /// Network trouble, a timeout, a 5xx answer: retry with back-off.
    #[error("transient failure: {message}")]
    Transient { message: String },
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
    pub async fn put(&self, records: &[OutgoingRecord], which: &[usize]) -> Result<Vec<RecordOutcome>, SinkError> {
        match self {
            Sink::Firehose(sink) => sink.put(records, which).await,
            Sink::Directory(sink) => sink.put(records, which).await,
        }
    }
}
