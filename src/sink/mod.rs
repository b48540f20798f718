//! Sinks: where batches of records are delivered, and what the destination said of each record.
//!
//! Three rooms share one path: [`firehose`] (`PutRecordBatch`), [`kinesis`] (Kinesis Data
//! Streams' `PutRecords`) and [`directory`] (local files, no AWS account). The batching, pacing,
//! retries and acknowledgement around them are the flusher's, the same for every sink; a sink
//! only says how a batch goes in one call and what came back.
//!
//! A sink delivers one batch per call and answers per record ([`RecordOutcome`]) or for the whole
//! call ([`SinkError`]). It never retries by itself: the flusher owns retries, back-off and
//! acknowledgement, so that the queue and file positions advance only on what the destination
//! accepted (invariant 2).
//!
//! Around the calls: [`batch`] packs records within a call's limits (and packs several lines
//! into one record when `pack_records` is on), [`rate`] paces calls at the rate the destination
//! takes, learned from its throttling.

pub mod aggregation;
pub mod answer;
mod aws;
pub mod batch;
pub mod compression;
mod directory;
mod firehose;
mod https_client;
pub mod kinesis;
pub mod rate;
pub mod request;
pub mod streams;

use crate::config::{firehose_limits, kinesis_limits, SinkDestination, SinkSettings};

pub use batch::{BatchLimits, BatchPacker, Offer};
pub use directory::DirectorySink;
pub use firehose::{FirehoseSink, PackingVerdict};
pub use kinesis::KinesisSink;

/// How several lines read go in one record sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packing {
    pub format: PackFormat,
    /// A line joins the last record while that stays within this many bytes.
    pub max_bytes: u64,
}

/// The layout of a record that holds several lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackFormat {
    /// The lines one after the other, each ending in a newline (`pack_records`): what a Firehose
    /// destination writing to S3 stores the same as the lines sent one by one.
    Lines,
    /// A KPL aggregated record's body ([`aggregation`]): consumers deaggregate it into the lines.
    Aggregated,
}

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

/// Kinesis Data Streams bills each record's payload in units of this many bytes (25 KB).
pub const KINESIS_BILLING_UNIT_BYTES: u64 = 25 * 1024;

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
        self.grew_last();
    }

    /// Adds a record whose body frames `line` (and a newline when `newline` is set) as the one
    /// user record of an aggregated record ([`aggregation`]).
    pub fn push_aggregated(&mut self, line: &[u8], newline: bool) {
        aggregation::append_user_record(&mut self.bytes, line, newline);
        self.ends.push(self.bytes.len());
        self.lines.push(1);
    }

    /// Frames `line` as one more user record of the last record; a first line starts one.
    pub fn aggregate_into_last(&mut self, line: &[u8], newline: bool) {
        if self.ends.is_empty() {
            return self.push_aggregated(line, newline);
        }
        aggregation::append_user_record(&mut self.bytes, line, newline);
        self.grew_last();
    }

    /// Adds a record of `record`'s bytes that carries `lines` lines (a record compressed).
    pub fn push_record(&mut self, record: &[u8], lines: u32) {
        self.bytes.extend_from_slice(record);
        self.ends.push(self.bytes.len());
        self.lines.push(lines);
    }

    /// The last record now ends where the buffer does, with one line more.
    fn grew_last(&mut self) {
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

    /// Billing units of `unit_bytes` that record `index` costs.
    pub fn billed_units(&self, index: usize, unit_bytes: u64) -> u64 {
        (self.get(index).len() as u64).div_ceil(unit_bytes).max(1)
    }
}

/// Error codes, of a whole call or of an entry, that mean "over the stream's throughput".
pub fn is_throughput_code(code: &str) -> bool {
    matches!(
        code,
        "ServiceUnavailableException"
            | "ThrottlingException"
            | "LimitExceededException"
            | "ProvisionedThroughputExceededException"
            | "KMSThrottlingException"
    )
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
    KinesisStreams(KinesisSink),
    Directory(DirectorySink),
}

impl Sink {
    pub async fn connect(settings: &SinkSettings) -> Result<Sink, SinkSetupError> {
        match &settings.destination {
            SinkDestination::Firehose { delivery_stream, endpoint } => {
                Ok(Sink::Firehose(FirehoseSink::connect(delivery_stream, endpoint).await?))
            }
            SinkDestination::KinesisStreams { stream_name, endpoint, partition_key, explicit_hash_key, aggregate } => {
                let keys = kinesis::RecordKeys::new(partition_key.clone(), explicit_hash_key.clone());
                Ok(Sink::KinesisStreams(KinesisSink::connect(stream_name, keys, *aggregate, settings.compression, endpoint).await?))
            }
            SinkDestination::Directory { path } => Ok(Sink::Directory(DirectorySink::new(path.clone(), settings.name.clone()))),
        }
    }

    /// Whether the destination stores packed (and compressed) records as it would the lines one by one.
    pub async fn packing_verdict(&self, compression: Option<compression::Compression>) -> PackingVerdict {
        match self {
            Sink::Firehose(sink) => sink.packing_verdict(compression).await,
            // Aggregated records are the KPL's format, which Kinesis consumers deaggregate.
            Sink::KinesisStreams(_) | Sink::Directory(_) => PackingVerdict::Allowed,
        }
    }

    /// The quota a stream of this destination most likely has, where one is documented: a
    /// Firehose region's Direct PUT default. A Kinesis stream's depends on its shards, which
    /// are not known here; a directory has none.
    pub fn default_quota(&self) -> Option<rate::Rates> {
        match self {
            Sink::Firehose(sink) => Some(sink.default_quota()),
            Sink::KinesisStreams(_) | Sink::Directory(_) => None,
        }
    }

    /// `record` finished for sending when its batch is sealed, if this sink finishes records:
    /// a Kinesis sink's aggregated body wrapped into its aggregated record.
    pub fn finished_record(&self, record: &[u8]) -> Option<Vec<u8>> {
        match self {
            Sink::KinesisStreams(sink) if sink.aggregates() => Some(sink.aggregated_record(record)),
            _ => None,
        }
    }

    /// Limits of one call to this destination under `settings`.
    pub fn limits(&self, settings: &SinkSettings) -> BatchLimits {
        let (max_record_bytes, billing_unit_bytes) = match self {
            Sink::Firehose(_) => (Some(firehose_limits::MAX_RECORD_BYTES), BILLING_UNIT_BYTES),
            // A record carries its partition key besides its data.
            Sink::KinesisStreams(_) => {
                (Some(kinesis_limits::MAX_RECORD_BYTES - kinesis_limits::MAX_PARTITION_KEY_BYTES), KINESIS_BILLING_UNIT_BYTES)
            }
            Sink::Directory(_) => (None, BILLING_UNIT_BYTES),
        };
        let (mut max_bytes, mut max_record_bytes) = (settings.max_batch_bytes, max_record_bytes);
        // Batches are packed before they are compressed: what compression may add (nothing
        // but framing for incompressible records) is kept free under the destination's limits.
        if let Some(compression) = settings.compression {
            max_record_bytes = max_record_bytes.map(|max| max - compression.max_growth(max));
            let growth = settings.max_batch_records as u64 * 64 + compression.max_growth(max_bytes);
            max_bytes = max_bytes.min(firehose_limits::MAX_BATCH_BYTES - growth);
        }
        // An aggregated record's envelope, with the longest key it may have.
        let record_overhead_bytes = match self {
            Sink::KinesisStreams(sink) if sink.aggregates() => {
                aggregation::envelope_len(kinesis_limits::MAX_PARTITION_KEY_BYTES as usize) as u64
            }
            _ => 0,
        };
        BatchLimits {
            max_records: settings.max_batch_records as usize,
            max_bytes,
            max_record_bytes,
            billing_unit_bytes,
            record_overhead_bytes,
        }
    }

    /// Delivers `records[i]` for each `i` in `which` to `stream` (the sink's own, or one a
    /// stream template named; a directory has one place); on success the answer has one
    /// outcome per entry of `which`, in order.
    pub async fn put_to(&self, stream: &str, records: &OutgoingRecords, which: &[usize]) -> Result<Vec<RecordOutcome>, SinkError> {
        match self {
            Sink::Firehose(sink) => sink.put_to(stream, records, which).await,
            Sink::KinesisStreams(sink) => sink.put_to(stream, records, which).await,
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
                prop_assert_eq!(records.billed_units(index, BILLING_UNIT_BYTES), (bytes.len() as u64).div_ceil(BILLING_UNIT_BYTES).max(1));
            }
        }
    }
}
