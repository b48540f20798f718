//! Configuration: the TOML file a user writes, parsed and validated in one place.
//!
//! Job: turn `tailhose.toml` into a [`Config`] whose every value has been checked, or into a
//! [`ConfigError`] that lists *all* problems at once, each with the key, the line and what to do.
//!
//! Guarantees:
//! - Unknown keys are errors (`deny_unknown_fields` everywhere): a typo never silently becomes a default.
//! - Durations are strings (`"1s"`, `"250ms"`) parsed by `humantime`; byte sizes are integers or
//!   strings with a unit (`"64MiB"`).
//! - After [`Config::parse`] succeeds, every sink input names a source, every limit is within what
//!   Firehose accepts, and every sink has the keys its `type` needs.
//!
//! Credentials are never part of the configuration: the Firehose sink uses the AWS default chain.

mod byte_size;

pub use byte_size::ByteSize;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::sink::aggregation;
use crate::sink::compression::Compression;
use crate::sink::kinesis::{FieldPath, PartitionKey};
use crate::sink::{PackFormat, Packing};
use crate::source::fields::{host_name, AddedFields};
use crate::source::multiline::{Multiline, MultilineRule, PartialLines, SingleLine};
use crate::source::parse::Parser;

/// Firehose's own limits for `PutRecordBatch` (they cannot be raised).
pub mod firehose_limits {
    /// Records per `PutRecordBatch` call.
    pub const MAX_BATCH_RECORDS: u32 = 500;
    /// Bytes of record data per call (before base64).
    pub const MAX_BATCH_BYTES: u64 = 4 * 1024 * 1024;
    /// Bytes of one record (before base64): 1,000 KiB.
    pub const MAX_RECORD_BYTES: u64 = 1000 * 1024;
    /// Characters of a delivery stream's name.
    pub const MAX_STREAM_NAME_CHARS: usize = 64;
}

/// Kinesis Data Streams' own limits for `PutRecords` (they cannot be raised).
pub mod kinesis_limits {
    /// Records per `PutRecords` call.
    pub const MAX_BATCH_RECORDS: u32 = 500;
    /// Bytes of one call: every record's data and partition key.
    pub const MAX_CALL_BYTES: u64 = 5 * 1024 * 1024;
    /// Bytes of one record: its data and its partition key.
    pub const MAX_RECORD_BYTES: u64 = 1024 * 1024;
    /// Characters of a partition key.
    pub const MAX_PARTITION_KEY_CHARS: usize = 256;
    /// Bytes of the longest partition key (256 characters of four UTF-8 bytes).
    pub const MAX_PARTITION_KEY_BYTES: u64 = 4 * MAX_PARTITION_KEY_CHARS as u64;
    /// Characters of a stream's name.
    pub const MAX_STREAM_NAME_CHARS: usize = 128;
}

/// The whole daemon configuration, as validated by [`Config::parse`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the sled queue (chunks, positions, dead letters) lives.
    pub data_dir: PathBuf,
    /// Queue size at which reading pauses until the sinks catch up (back-pressure).
    #[serde(default = "default_max_queue_bytes")]
    pub max_queue_bytes: ByteSize,
    /// How far reading may run ahead of delivery while a file is still where its glob finds it.
    /// Such a file is itself the backlog (its bytes stay readable), so only a window is queued;
    /// files that left their glob (rotated, about to be deleted) are read on up to
    /// `max_queue_bytes`. Bounds memory: sled keeps queued chunks in memory until delivered.
    #[serde(default = "default_max_read_ahead_bytes")]
    pub max_read_ahead_bytes: ByteSize,
    /// Memory sled may use for its page cache; part of the daemon's memory budget.
    #[serde(default = "default_queue_cache_bytes")]
    pub queue_cache_bytes: ByteSize,
    /// A queue operation (a read pass, an acknowledgement) that takes longer is a storage
    /// failure: tailhose stops with status 74 so its supervisor restarts it (sled can block
    /// instead of failing after an I/O error such as a full disk).
    #[serde(default = "default_storage_stall_timeout", with = "humantime_serde")]
    pub storage_stall_timeout: Duration,
    /// How long a stopping daemon may spend finishing the batches in flight before it abandons them
    /// (an abandoned batch stays queued and is sent again on the next start).
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// The admin HTTP endpoint: `/metrics`, `/health`, `/status`.
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub sources: BTreeMap<String, Spanned<SourceConfig>>,
    #[serde(default)]
    pub sinks: BTreeMap<String, Spanned<SinkConfig>>,
}

/// The `[admin]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Off switch for the endpoint.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Where the endpoint listens. Keep it on loopback or a management network: it is not
    /// authenticated. Port 0 picks a free port (written to `data_dir/admin-address`).
    #[serde(default = "default_admin_address")]
    pub address: std::net::SocketAddr,
    /// `/health` answers 503 when records are pending and none was acknowledged for this long.
    #[serde(default = "default_unhealthy_after", with = "humantime_serde")]
    pub unhealthy_after: Duration,
}

impl Default for AdminConfig {
    fn default() -> AdminConfig {
        AdminConfig { enabled: true, address: default_admin_address(), unhealthy_after: default_unhealthy_after() }
    }
}

/// How the lines of a source are checked before they are queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineFormat {
    /// Each line must be one JSON value; other lines go to the dead-letter area.
    Json,
    /// Lines are delivered as they are, any bytes.
    Raw,
}

/// A `[sources.NAME]` table: files to tail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Glob patterns, re-scanned every `refresh_interval`.
    pub paths: Vec<String>,
    /// `json` (checked) unless a `parse` table says how to read the records.
    #[serde(default)]
    pub format: Option<LineFormat>,
    /// For a file with no stored position found at start-up: read it from its first byte (`true`)
    /// or only what is written from now on (`false`). Files that appear later are always read
    /// from their head, so nothing written to them is missed.
    #[serde(default = "default_true")]
    pub read_from_head: bool,
    #[serde(default = "default_refresh_interval", with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// How often files are checked for new bytes when no change notification (inotify) woke
    /// the reader first: the safety net, and the only way on file systems without notifications.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// A longer line is set aside in the dead-letter area (with its file and offset), never
    /// buffered whole: this bounds the reader's memory.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: ByteSize,
    /// The first lines of a file read from its head are a header, not records (a CSV's column
    /// names): skipped and counted. A file read from a later offset skips none (its header
    /// was read before), as the Kinesis Agent's `skipHeaderLines`.
    #[serde(default)]
    pub skip_header_lines: u32,
    /// Globs of paths that `paths` matches but that are not to be read.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// A file first seen with no write for this long is not read (a stored position still resumes).
    #[serde(default, with = "humantime_serde")]
    pub ignore_older_than: Option<Duration>,
    /// At most this many files of the source are held open. Files idle longest are closed and
    /// reopened (by identity) when they grow.
    #[serde(default = "default_max_open_files")]
    pub max_open_files: usize,
    /// Records that span lines (stack traces): `[sources.NAME.multiline]`.
    #[serde(default)]
    pub multiline: Option<MultilineConfig>,
    /// Text records parsed into JSON objects: `[sources.NAME.parse]`.
    #[serde(default)]
    pub parse: Option<ParseConfig>,
    /// Fields appended to each record's object: `[sources.NAME.add_fields]`.
    #[serde(default)]
    pub add_fields: Option<AddFieldsConfig>,
    /// A record of several lines sent as one line: `[sources.NAME.single_line]`.
    #[serde(default)]
    pub single_line: Option<SingleLineConfig>,
}

/// A `[sources.NAME.single_line]` table (see [`crate::source::multiline::SingleLine`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SingleLineConfig {
    /// Each line trimmed of the spaces and control characters at its ends (the default).
    #[serde(default = "default_true")]
    pub trim: bool,
    /// What joins the lines (nothing unless said; `" "` or `"\\n"` keep them apart).
    #[serde(default)]
    pub separator: String,
}

impl SingleLineConfig {
    fn compile(&self) -> SingleLine {
        SingleLine { trim: self.trim, separator: self.separator.clone().into_bytes() }
    }
}

/// A `[sources.NAME.add_fields]` table: fields appended to each record's JSON object (see
/// [`crate::source::fields`]); each `*_key` names the field its value is added under.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddFieldsConfig {
    /// Fixed fields: strings, numbers or booleans, added in name order.
    #[serde(rename = "static", default)]
    pub fixed: BTreeMap<String, toml::Value>,
    /// The host's name (`gethostname`, read once at start-up).
    pub hostname_key: Option<String>,
    /// The path of the file the record was read from.
    pub path_key: Option<String>,
    /// The source's name (Fluentd's tag).
    pub source_key: Option<String>,
    /// When tailhose read the record: RFC 3339, UTC, milliseconds.
    pub read_time_key: Option<String>,
    /// The record's stable id (file identity and byte offset), the same in every delivery.
    pub record_id_key: Option<String>,
    /// The EC2 instance's id, region and availability zone (IMDSv2, read once at start-up).
    pub ec2_metadata_key: Option<String>,
    /// The Kinesis Agent's `ADDEC2METADATA` fields at the top level of each record, under
    /// its names (`instanceId`, `tags`, …: [`crate::source::fields::KINESIS_AGENT_EC2_FIELDS`]).
    #[serde(default)]
    pub kinesis_agent_ec2_metadata: bool,
}

/// A static field's TOML value as the JSON it adds: tables and arrays as objects and arrays (the
/// Kinesis Agent's `metadata` is any JSON). A date is refused: JSON has none, and its text would
/// be a guess at a format.
fn static_json(value: &toml::Value) -> Result<serde_json::Value, String> {
    Ok(match value {
        toml::Value::String(text) => serde_json::Value::from(text.as_str()),
        toml::Value::Integer(number) => serde_json::Value::from(*number),
        toml::Value::Float(number) if number.is_finite() => serde_json::Value::from(*number),
        toml::Value::Float(_) => return Err("not a finite number (JSON has no NaN or infinity)".into()),
        toml::Value::Boolean(flag) => serde_json::Value::from(*flag),
        toml::Value::Datetime(_) => return Err("a TOML date; write it as the string it is to be sent as".into()),
        toml::Value::Array(items) => serde_json::Value::Array(items.iter().map(static_json).collect::<Result<_, _>>()?),
        toml::Value::Table(fields) => serde_json::Value::Object(
            fields.iter().map(|(name, value)| static_json(value).map(|json| (name.clone(), json))).collect::<Result<_, _>>()?,
        ),
    })
}

impl AddFieldsConfig {
    /// The fields this table adds to the records of source `source`, or what is wrong with it.
    pub fn compile(&self, source: &str) -> Result<AddedFields, String> {
        let mut fixed = Vec::new();
        for (name, value) in &self.fixed {
            let json = static_json(value).map_err(|problem| format!("static.{name}: {problem}"))?;
            fixed.push((name.clone(), json));
        }
        let hostname = match &self.hostname_key {
            Some(key) => Some((key.clone(), host_name().map_err(|error| format!("cannot read the host name: {error}"))?)),
            None => None,
        };
        let fields = AddedFields {
            fixed,
            hostname,
            path_key: self.path_key.clone(),
            source: self.source_key.clone().map(|key| (key, source.to_owned())),
            read_time_key: self.read_time_key.clone(),
            record_id_key: self.record_id_key.clone(),
            ec2_metadata_key: self.ec2_metadata_key.clone(),
            ec2: None,
            kinesis_agent_ec2_metadata: self.kinesis_agent_ec2_metadata,
            kinesis_agent_ec2: Vec::new(),
        };
        let mut names: Vec<&str> = fields.fixed.iter().map(|(name, _)| name.as_str()).collect();
        names.extend(fields.hostname.iter().map(|(name, _)| name.as_str()));
        names.extend(fields.source.iter().map(|(name, _)| name.as_str()));
        names.extend(
            [&fields.path_key, &fields.read_time_key, &fields.record_id_key, &fields.ec2_metadata_key]
                .into_iter()
                .flatten()
                .map(String::as_str),
        );
        if fields.kinesis_agent_ec2_metadata {
            names.extend(crate::source::fields::KINESIS_AGENT_EC2_FIELDS);
        }
        if names.iter().any(|name| name.is_empty()) {
            return Err("a field name is empty".into());
        }
        let mut sorted = names.clone();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(format!("`{}` is added twice", pair[0]));
        }
        if fields.is_empty() {
            return Err("adds nothing: give static fields or a *_key".into());
        }
        Ok(fields)
    }
}

/// A `[sources.NAME.parse]` table: how a text record becomes a JSON object (see
/// [`crate::source::parse`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParseConfig {
    /// `regex`, a preset (`nginx`, `apache2`, `syslog`, `syslog_rfc3164`, `syslog_rfc5424`),
    /// a grammar (`csv`, `tsv`, `ltsv`, `logfmt`), or a container runtime's lines (`cri`,
    /// `docker`).
    #[serde(rename = "type")]
    pub parser_type: String,
    /// For `regex`: named captures are the fields.
    pub pattern: Option<String>,
    /// For `csv` and `tsv`: each value's name, in order.
    pub columns: Option<Vec<String>>,
    /// Fields converted from their text: `integer`, `float`, `bool` or `string`.
    #[serde(default)]
    pub types: BTreeMap<String, String>,
    /// Values that mean "none", made null in every field (Fluentd's `null_value_pattern`; the
    /// Kinesis Agent's Apache formats: `^-$`).
    pub null_value_pattern: Option<String>,
    /// For `none`: the field the record's text goes in (`message` unless said).
    pub message_key: Option<String>,
    /// For `split`: a regular expression the values are split at (`,` unless said).
    pub delimiter: Option<String>,
}

impl ParseConfig {
    /// The parser this table describes, or what is wrong with it.
    pub fn compile(&self) -> Result<Parser, String> {
        let types: Vec<(String, String)> = self.types.iter().map(|(field, kind)| (field.clone(), kind.clone())).collect();
        Parser::new(&self.parser_type, self.pattern.as_deref(), self.columns.as_deref(), &types)
            .and_then(|parser| {
                parser.with_options(self.null_value_pattern.as_deref(), self.message_key.as_deref(), self.delimiter.as_deref())
            })
            .map_err(|error| error.to_string())
    }
}

/// A `[sources.NAME.multiline]` table: which lines make one record (see
/// [`crate::source::multiline`]). Exactly one of `start`, `continuation` and `preset`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultilineConfig {
    /// A regular expression: a line that matches begins a record, the others continue it.
    pub start: Option<String>,
    /// A regular expression: a line that matches continues the record before it.
    pub continuation: Option<String>,
    /// Ready-made rules: `java`, `python` or `go`.
    pub preset: Option<String>,
    /// A record is complete once its file has not grown for this long.
    #[serde(default = "default_multiline_flush_timeout", with = "humantime_serde")]
    pub flush_timeout: Duration,
    /// Most lines in a record; the next line begins another (counted and logged).
    #[serde(default = "default_multiline_max_lines")]
    pub max_lines: u32,
    /// Most bytes in a record, newlines included; the line that would pass it begins another.
    #[serde(default = "default_multiline_max_bytes")]
    pub max_bytes: ByteSize,
}

impl MultilineConfig {
    /// The rule this table describes, or what is wrong with it, for a source whose parser reads
    /// a container runtime's lines (`partial`) or none: beside such a parser, which joins the
    /// parts the runtime split a line into by a rule of its own, the table only sets that
    /// rule's limits.
    pub fn compile(&self, partial: Option<PartialLines>) -> Result<Multiline, String> {
        let pattern =
            |text: &str| regex::bytes::Regex::new(text).map_err(|error| format!("`{text}` is not a valid regular expression: {error}"));
        let rule = match (partial, &self.start, &self.continuation, &self.preset) {
            (Some(kind), None, None, None) => MultilineRule::Partial(kind),
            (Some(_), ..) => {
                return Err("a container log's parser joins the parts its runtime split a line into by its own rule: \
                            beside it, give only flush_timeout, max_lines and max_bytes"
                    .into())
            }
            (None, Some(start), None, None) => MultilineRule::Start(pattern(start)?),
            (None, None, Some(continuation), None) => MultilineRule::Continuation(pattern(continuation)?),
            (None, None, None, Some(preset)) => MultilineRule::preset(preset)
                .ok_or_else(|| format!("no preset is named `{preset}` (presets: {})", crate::source::multiline::PRESETS.join(", ")))?,
            _ => return Err("give exactly one of `start`, `continuation` and `preset`".into()),
        };
        if self.flush_timeout < Duration::from_millis(100) {
            return Err("flush_timeout must be at least 100ms (the reader looks twice per timeout)".into());
        }
        // Firehose takes 1,000 KiB a record, the newline appended to it included: a larger
        // record would be a dead letter whole.
        let largest = firehose_limits::MAX_RECORD_BYTES - 1;
        if self.max_lines < 2 || self.max_bytes.0 == 0 || self.max_bytes.0 > largest {
            return Err(format!("max_lines must be at least 2, and max_bytes above 0 and at most {largest} bytes (a Firehose record)"));
        }
        Ok(Multiline { rule, flush_timeout: self.flush_timeout, max_lines: self.max_lines, max_bytes: self.max_bytes.0 })
    }
}

/// How a source's lines become records: its multiline table, or for a container log its
/// parser's joining of the runtime's parts (with the table's limits, else the defaults).
fn source_multiline(table: Option<&MultilineConfig>, partial: Option<PartialLines>) -> Result<Option<Multiline>, String> {
    match (table, partial) {
        (Some(table), partial) => table.compile(partial).map(Some),
        (None, Some(kind)) => Ok(Some(Multiline {
            rule: MultilineRule::Partial(kind),
            flush_timeout: default_multiline_flush_timeout(),
            max_lines: default_multiline_max_lines(),
            max_bytes: default_multiline_max_bytes().0,
        })),
        (None, None) => Ok(None),
    }
}

/// Where a sink delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkType {
    /// AWS Kinesis Data Firehose, `PutRecordBatch`.
    Firehose,
    /// AWS Kinesis Data Streams, `PutRecords`.
    KinesisStreams,
    /// Files in a local directory, laid out like Firehose's S3 keys: no AWS account needed.
    Directory,
}

/// A `[sinks.NAME]` table. One struct for every `type`, so that unknown keys are rejected and
/// every problem can be reported with its line; [`Config::parse`] checks that each key fits the
/// sink's `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    #[serde(rename = "type")]
    pub sink_type: SinkType,
    /// Names of the sources whose records this sink delivers.
    pub inputs: Vec<Spanned<String>>,
    /// A batch that is not full is sent once its oldest record has waited this long.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Deliver each record followed by `\n` (as fluent-plugin-kinesis `append_new_line`), so
    /// records stay apart in the objects Firehose writes to S3.
    #[serde(default = "default_true")]
    pub append_newline: bool,
    #[serde(default = "default_max_batch_records")]
    pub max_batch_records: u32,
    /// Bytes of records in one call: 2 MiB by default (1 MiB with `aggregate`), at most 4 MiB
    /// (Firehose's limit). Once a pace is learned or set (`max_bytes_per_sec`), calls carry at
    /// most a tenth of a second of it.
    #[serde(default)]
    pub max_batch_bytes: Option<ByteSize>,
    /// Retry back-off: first delay and cap. Retries never stop on their own; they only slow down.
    #[serde(default = "default_retry_initial", with = "humantime_serde")]
    pub retry_initial_backoff: Duration,
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// Keep acknowledged chunks this long after their acknowledgement, for `tailhose queue
    /// replay` (a downstream that lost data). Off when neither this nor `retain_acked_bytes` is set.
    #[serde(default, with = "humantime_serde")]
    pub retain_acked: Option<Duration>,
    /// Keep at most this many bytes of acknowledged chunks per route (oldest go first). Retained
    /// chunks live on disk in the queue and do not count towards `max_queue_bytes`.
    #[serde(default)]
    pub retain_acked_bytes: Option<ByteSize>,

    // type = "firehose"
    /// The delivery stream, or a template naming one per record (`logs-${record.service}`,
    /// `${source}-events`: see [`crate::sink::streams`]).
    pub delivery_stream: Option<String>,
    /// Where records go whose stream a template cannot name (the record lacks the field, or
    /// its value is no stream name); required when `delivery_stream` or `stream_name` reads
    /// a record field.
    pub fallback_stream: Option<String>,
    /// Streams one route of this sink sends to at most, the fallback among them: records that
    /// would open one more go to the fallback. Default [`DEFAULT_MAX_STREAMS`].
    pub max_streams: Option<usize>,
    /// AWS region; when absent, the AWS default chain (AWS_REGION, profile) decides.
    pub region: Option<String>,
    /// Another endpoint for Firehose (a VPC endpoint, LocalStack, moto).
    pub endpoint_url: Option<String>,
    /// A call that has not answered by then is abandoned and retried.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// PEM file of certificate authorities to trust for the endpoint, on top of the system's
    /// (`SSL_CERT_FILE` / `SSL_CERT_DIR` also name the system's): a VPC endpoint or a
    /// TLS-inspecting proxy signed by a private CA.
    pub ca_file: Option<PathBuf>,
    /// Put several lines in one Firehose record (up to `pack_max_bytes`): Firehose bills each
    /// record rounded up to 5 KB, so packed seed records cost ~35 times less. The bytes written to
    /// S3 are the same; a destination that makes one document of each record (Elasticsearch,
    /// OpenSearch, Splunk, HTTP, or record transformation) is refused at start-up.
    #[serde(default)]
    pub pack_records: bool,
    /// Largest packed record, before compression. The default keeps each packed record in one
    /// 5 KB billing unit: 5,000 bytes, or 25,000 with `compression` (seed records compress about
    /// six-fold).
    #[serde(default)]
    pub pack_max_bytes: Option<ByteSize>,
    /// Compress each record sent as a whole: `gzip` or `zstd` (or `zlib`, fluent-plugin-kinesis's). With `pack_records`, an S3 object
    /// is a concatenation of gzip members (zstd frames) that zcat, Athena and Spark read as one
    /// file; give the stream the file extension `.gz` (`.zst`). Refused where the destination
    /// reads each record (Elasticsearch, OpenSearch, HTTP endpoints, Lambda processing, format
    /// conversion) or compresses it again.
    #[serde(default)]
    pub compression: Option<Compression>,
    /// Never send faster than this (bytes of record data per second), e.g. to leave part of a
    /// shared stream's quota to other writers. Below it, the rate is learned from throttling.
    #[serde(default)]
    pub max_bytes_per_sec: Option<ByteSize>,
    /// Never send more records per second than this (packed records count as one).
    #[serde(default)]
    pub max_records_per_sec: Option<u64>,
    /// Batches of this sink in delivery at once. More hide a long round trip (a far region,
    /// the resends of records refused at random); each holds up to `max_batch_bytes` in memory
    /// and may be sent twice after a `kill -9`. Acknowledgements stay in queue order. Default:
    /// [`default_max_in_flight`].
    #[serde(default)]
    pub max_in_flight: Option<usize>,

    // type = "kinesis_streams" (also `region`, `endpoint_url`, `request_timeout`, `ca_file`)
    /// The Kinesis data stream records are put to.
    pub stream_name: Option<String>,
    /// Each record's partition key (which shard it goes to) is this field of the JSON record, a
    /// dotted path (`kubernetes.pod_name`); a record without it, or not JSON, gets a random key.
    /// Without this or `fixed_partition_key`, every record gets a random key.
    pub partition_key_field: Option<String>,
    /// Every record (every aggregated record) has this partition key: one shard takes them all.
    pub fixed_partition_key: Option<String>,
    /// Each record's explicit hash key (a decimal 128-bit number that places it on a shard
    /// directly) is this field of the JSON record; a record without a valid one is placed by its
    /// partition key.
    pub explicit_hash_key_field: Option<String>,
    /// Put many records in each Kinesis record, in the KPL's aggregated format (a KCL consumer or
    /// AWS's deaggregation libraries give the records back). Kinesis bills 25 KB units: seed
    /// records cost about 170 times fewer. An aggregated record has one partition key, random or
    /// `fixed_partition_key`.
    #[serde(default)]
    pub aggregate: bool,

    // type = "directory"
    pub path: Option<PathBuf>,
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key, e.g. `sinks.events.inputs`.
    pub key: String,
    /// 1-based line in the file, where known.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: `{}`: {}", self.key, self.message),
            None => write!(f, "`{}`: {}", self.key, self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path} has {} problem(s):\n{}", problems.len(), render_problems(problems))]
    Invalid { path: PathBuf, problems: Vec<ConfigProblem> },
}

fn render_problems(problems: &[ConfigProblem]) -> String {
    problems.iter().map(|problem| format!("  - {problem}")).collect::<Vec<_>>().join("\n")
}

/// A source's resolved settings, as the reader uses them.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub name: String,
    pub paths: Vec<String>,
    pub exclude: Vec<String>,
    pub ignore_older_than: Option<Duration>,
    pub max_open_files: usize,
    pub format: LineFormat,
    pub read_from_head: bool,
    pub refresh_interval: Duration,
    pub poll_interval: Duration,
    pub max_line_bytes: u64,
    pub skip_header_lines: u32,
    pub multiline: Option<Arc<Multiline>>,
    pub parse: Option<Arc<Parser>>,
    pub add_fields: Option<Arc<AddedFields>>,
    pub single_line: Option<Arc<SingleLine>>,
}

impl SourceSettings {
    /// How long the reader may sleep between passes: a record of several lines in progress is
    /// ended on time (within half its `flush_timeout` late), not at the next `poll_interval`.
    pub fn pass_interval(&self) -> Duration {
        match &self.multiline {
            Some(multiline) => self.poll_interval.min(multiline.flush_timeout / 2),
            None => self.poll_interval,
        }
    }
}

#[cfg(test)]
impl SourceSettings {
    /// Test support: a JSON source reading `folder/*.log` from the head, re-scanning on every pass.
    pub(crate) fn for_test_folder(folder: &Path) -> SourceSettings {
        SourceSettings {
            name: "logs".into(),
            paths: vec![folder.join("*.log").to_string_lossy().into_owned()],
            exclude: Vec::new(),
            ignore_older_than: None,
            max_open_files: 64,
            format: LineFormat::Json,
            read_from_head: true,
            refresh_interval: Duration::ZERO,
            poll_interval: Duration::from_millis(10),
            max_line_bytes: 1 << 20,
            skip_header_lines: 0,
            multiline: None,
            parse: None,
            add_fields: None,
            single_line: None,
        }
    }
}

/// Streams a templated sink's route sends to at most, unless `max_streams` says otherwise:
/// each holds a batch and a pace of its own, and a field with many values (a user id) is a
/// mistake to be told of, not thousands of streams.
pub const DEFAULT_MAX_STREAMS: usize = 64;

/// The most `max_streams` may be.
const MAX_STREAMS_AT_MOST: usize = 1000;

/// Where a sink delivers, with what that destination needs.
#[derive(Debug, Clone)]
pub enum SinkDestination {
    Firehose {
        /// The stream the sink is checked against at start-up and sends to when its name is
        /// plain: the fallback of a template, or the template resolved for the first input.
        delivery_stream: String,
        endpoint: AwsEndpoint,
    },
    KinesisStreams {
        stream_name: String,
        endpoint: AwsEndpoint,
        partition_key: PartitionKey,
        explicit_hash_key: Option<FieldPath>,
        aggregate: bool,
    },
    Directory {
        path: PathBuf,
    },
}

/// Where and how an AWS sink (Firehose, Kinesis) connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsEndpoint {
    /// When absent, the AWS default chain (AWS_REGION, profile) decides.
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub request_timeout: Duration,
    /// Extra certificate authorities (PEM) to trust, besides the system's.
    pub ca_file: Option<PathBuf>,
}

/// A sink's resolved settings, as the flusher uses them.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub name: String,
    pub inputs: Vec<String>,
    pub destination: SinkDestination,
    pub flush_interval: Duration,
    pub append_newline: bool,
    pub max_batch_records: u32,
    pub max_batch_bytes: u64,
    pub retry_initial_backoff: Duration,
    pub retry_max_backoff: Duration,
    pub retention: Retention,
    /// How several lines go in one record sent, when they do (`pack_records`, `aggregate`).
    pub packing: Option<Packing>,
    /// How each record sent is compressed, if it is.
    pub compression: Option<Compression>,
    /// `max_bytes_per_sec` and `max_records_per_sec`, for each stream.
    pub rate_ceiling: crate::sink::rate::Rates,
    pub max_in_flight: usize,
    /// How each record's stream is named, when the stream's name is a template.
    pub streams: Option<Arc<crate::sink::streams::StreamRouting>>,
}

/// How long acknowledged chunks are kept for replay. Both limits apply when both are set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
}

impl Retention {
    pub fn is_enabled(&self) -> bool {
        self.max_age.is_some() || self.max_bytes.is_some()
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        // Absolute, so relative paths in the file resolve the same from any working directory.
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        Config::parse(&text, &path)
    }

    /// Parses and validates configuration text; `origin` names it in messages. Relative
    /// `data_dir`, source `paths` and sink `path` values are taken relative to the file's
    /// folder, so a configuration means the same whatever the working directory.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let mut config: Config =
            toml::from_str(text).map_err(|error| ConfigError::Syntax { path: origin.to_path_buf(), message: error.to_string() })?;
        let problems = config.problems(text);
        if !problems.is_empty() {
            return Err(ConfigError::Invalid { path: origin.to_path_buf(), problems });
        }
        let base = origin.parent().unwrap_or_else(|| Path::new("."));
        config.data_dir = base.join(&config.data_dir);
        for source in config.sources.values_mut() {
            let source = source.get_mut();
            for pattern in source.paths.iter_mut().chain(source.exclude.iter_mut()) {
                if Path::new(pattern.as_str()).is_relative() {
                    *pattern = base.join(pattern.as_str()).to_string_lossy().into_owned();
                }
            }
        }
        for sink in config.sinks.values_mut() {
            let sink = sink.get_mut();
            if let Some(path) = sink.path.as_mut() {
                *path = base.join(&*path);
            }
            if let Some(ca_file) = sink.ca_file.as_mut() {
                *ca_file = base.join(&*ca_file);
            }
        }
        Ok(config)
    }

    /// Every problem in the configuration, in file order.
    fn problems(&self, text: &str) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if self.sources.is_empty() {
            problems.push(ConfigProblem {
                key: "sources".into(),
                line: None,
                message: "no source is configured; add a [sources.NAME] table with `paths`".into(),
            });
        }
        if self.sinks.is_empty() {
            problems.push(ConfigProblem {
                key: "sinks".into(),
                line: None,
                message: "no sink is configured; add a [sinks.NAME] table with `type` and `inputs`".into(),
            });
        }
        if self.max_read_ahead_bytes.0 == 0 || self.max_read_ahead_bytes > self.max_queue_bytes {
            problems.push(ConfigProblem {
                key: "max_read_ahead_bytes".into(),
                line: None,
                message: format!("must be above 0 and at most max_queue_bytes ({})", self.max_queue_bytes.0),
            });
        }
        let mut report = |key: String, span: std::ops::Range<usize>, message: String| {
            problems.push(ConfigProblem { key, line: Some(line_of(text, span.start)), message });
        };
        for (name, source) in &self.sources {
            let key = format!("sources.{name}");
            if source.get_ref().paths.is_empty() {
                report(format!("{key}.paths"), source.span(), "must list at least one glob pattern".into());
            }
            for (field, patterns) in [("paths", &source.get_ref().paths), ("exclude", &source.get_ref().exclude)] {
                for pattern in patterns {
                    if let Err(error) = glob::Pattern::new(pattern) {
                        report(format!("{key}.{field}"), source.span(), format!("`{pattern}` is not a valid glob: {error}"));
                    }
                }
            }
            if source.get_ref().max_open_files == 0 {
                report(format!("{key}.max_open_files"), source.span(), "must be at least 1".into());
            }
            if source.get_ref().max_line_bytes.0 == 0 {
                report(format!("{key}.max_line_bytes"), source.span(), "must be greater than 0".into());
            }
            let partial = match source.get_ref().parse.as_ref().map(ParseConfig::compile) {
                Some(Err(problem)) => {
                    report(format!("{key}.parse"), source.span(), problem);
                    None
                }
                Some(Ok(parser)) => parser.partial_lines(),
                None => None,
            };
            if let Err(problem) = source_multiline(source.get_ref().multiline.as_ref(), partial) {
                report(format!("{key}.multiline"), source.span(), problem);
            }
            if partial.is_some() && source.get_ref().single_line.is_some() {
                let why = "a container log's lines are the runtime's, each a record's part: single_line would break them";
                report(format!("{key}.single_line"), source.span(), why.into());
            }
            if let Some(Err(problem)) = source.get_ref().add_fields.as_ref().map(|fields| fields.compile(name)) {
                report(format!("{key}.add_fields"), source.span(), problem);
            }
            if source.get_ref().add_fields.is_some() && source.get_ref().parse.is_none() && source.get_ref().format == Some(LineFormat::Raw)
            {
                let why = "add_fields appends to a JSON object: read JSON (format = \"json\") or parse the text (a parse table)";
                report(format!("{key}.add_fields"), source.span(), why.into());
            }
            if source.get_ref().parse.is_some() && source.get_ref().format == Some(LineFormat::Json) {
                let why =
                    "format = \"json\" and a parse table both say how to read a record: a parsed record is JSON already; leave format out";
                report(format!("{key}.format"), source.span(), why.into());
            }
        }
        for (name, sink) in &self.sinks {
            let key = format!("sinks.{name}");
            let settings = sink.get_ref();
            if settings.inputs.is_empty() {
                report(format!("{key}.inputs"), sink.span(), "must name at least one source".into());
            }
            for input in &settings.inputs {
                if !self.sources.contains_key(input.get_ref()) {
                    let known: Vec<&str> = self.sources.keys().map(String::as_str).collect();
                    report(
                        format!("{key}.inputs"),
                        input.span(),
                        format!("no source is named `{}` (sources: {})", input.get_ref(), known.join(", ")),
                    );
                }
            }
            // Kinesis takes 500 records and 5 MiB a call, partition keys included: 4 MiB of
            // records leaves room for 500 of the longest keys (and aggregated records' envelopes).
            let max_records = firehose_limits::MAX_BATCH_RECORDS.min(kinesis_limits::MAX_BATCH_RECORDS);
            if settings.max_batch_records == 0 || settings.max_batch_records > max_records {
                report(
                    format!("{key}.max_batch_records"),
                    sink.span(),
                    format!("must be between 1 and {max_records} (the PutRecordBatch and PutRecords limit)"),
                );
            }
            let max_bytes = firehose_limits::MAX_BATCH_BYTES;
            let batch_bytes = sink_max_batch_bytes(settings);
            if batch_bytes < firehose_limits::MAX_RECORD_BYTES || batch_bytes > max_bytes {
                report(
                    format!("{key}.max_batch_bytes"),
                    sink.span(),
                    format!("must be between 1000KiB (one record) and 4MiB (the PutRecordBatch limit), not {batch_bytes}"),
                );
            }
            if settings.retain_acked.is_some_and(|age| age.is_zero()) || settings.retain_acked_bytes.is_some_and(|size| size.0 == 0) {
                report(
                    format!("{key}.retain_acked"),
                    sink.span(),
                    "retain_acked and retain_acked_bytes must be above 0 (leave both out to keep nothing)".into(),
                );
            }
            if settings.retry_initial_backoff.is_zero() || settings.retry_max_backoff < settings.retry_initial_backoff {
                report(
                    format!("{key}.retry_max_backoff"),
                    sink.span(),
                    "retry_initial_backoff must be above 0 and at most retry_max_backoff".into(),
                );
            }
            if settings.max_bytes_per_sec.is_some_and(|size| size.0 < 1024) || settings.max_records_per_sec == Some(0) {
                report(
                    format!("{key}.max_bytes_per_sec"),
                    sink.span(),
                    "max_bytes_per_sec must be at least 1KiB and max_records_per_sec at least 1".into(),
                );
            }
            if settings.max_in_flight.is_some_and(|in_flight| in_flight == 0 || in_flight > 64) {
                report(format!("{key}.max_in_flight"), sink.span(), "must be between 1 and 64".into());
            }
            if settings.pack_records {
                if !settings.append_newline {
                    report(
                        format!("{key}.pack_records"),
                        sink.span(),
                        "needs append_newline = true: the newline is what keeps packed lines apart".into(),
                    );
                }
                if settings.pack_max_bytes.is_some_and(|size| size.0 == 0 || size.0 > firehose_limits::MAX_RECORD_BYTES) {
                    report(
                        format!("{key}.pack_max_bytes"),
                        sink.span(),
                        "must be between 1 and 1000KiB (a Firehose record's limit)".into(),
                    );
                }
            }
            let kinesis_keys = [
                ("stream_name", settings.stream_name.is_some()),
                ("partition_key_field", settings.partition_key_field.is_some()),
                ("fixed_partition_key", settings.fixed_partition_key.is_some()),
                ("explicit_hash_key_field", settings.explicit_hash_key_field.is_some()),
                ("aggregate", settings.aggregate),
            ];
            let misplaced: Vec<(&str, bool)> = match settings.sink_type {
                SinkType::Firehose => {
                    if settings.delivery_stream.as_deref().is_none_or(str::is_empty) {
                        report(format!("{key}.delivery_stream"), sink.span(), "is required for type = \"firehose\"".into());
                    }
                    for (field, problem) in stream_problems(settings) {
                        report(format!("{key}.{field}"), sink.span(), problem);
                    }
                    [("path", settings.path.is_some())].into_iter().chain(kinesis_keys).collect()
                }
                SinkType::KinesisStreams => {
                    for (field, problem) in kinesis_problems(settings).into_iter().chain(stream_problems(settings)) {
                        report(format!("{key}.{field}"), sink.span(), problem);
                    }
                    vec![
                        ("path", settings.path.is_some()),
                        ("delivery_stream", settings.delivery_stream.is_some()),
                        // Lines joined in one record are what a Firehose destination stores; a
                        // Kinesis consumer takes records one by one: aggregation is its packing.
                        ("pack_records", settings.pack_records),
                        ("pack_max_bytes", settings.pack_max_bytes.is_some()),
                    ]
                }
                SinkType::Directory => {
                    if settings.path.is_none() {
                        report(format!("{key}.path"), sink.span(), "is required for type = \"directory\"".into());
                    }
                    [
                        ("delivery_stream", settings.delivery_stream.is_some()),
                        ("region", settings.region.is_some()),
                        ("endpoint_url", settings.endpoint_url.is_some()),
                        ("pack_records", settings.pack_records),
                        ("ca_file", settings.ca_file.is_some()),
                        ("fallback_stream", settings.fallback_stream.is_some()),
                        ("max_streams", settings.max_streams.is_some()),
                    ]
                    .into_iter()
                    .chain(kinesis_keys)
                    .collect()
                }
            };
            for (field, present) in misplaced {
                if present {
                    report(
                        format!("{key}.{field}"),
                        sink.span(),
                        format!("does not apply to a sink of type = \"{}\"", settings.sink_type.name()),
                    );
                }
            }
        }
        problems.sort_by_key(|problem| problem.line);
        problems
    }

    /// The sources with their settings resolved.
    pub fn source_settings(&self) -> Vec<SourceSettings> {
        self.sources
            .iter()
            .map(|(name, source)| {
                let source = source.get_ref();
                let parse = source.parse.as_ref().and_then(|parse| parse.compile().ok()).map(Arc::new);
                SourceSettings {
                    name: name.clone(),
                    paths: source.paths.clone(),
                    exclude: source.exclude.clone(),
                    ignore_older_than: source.ignore_older_than,
                    max_open_files: source.max_open_files,
                    // A parsed record is checked by its parser; the JSON it gives is not checked again.
                    format: source.format.unwrap_or(if source.parse.is_some() { LineFormat::Raw } else { LineFormat::Json }),
                    read_from_head: source.read_from_head,
                    refresh_interval: source.refresh_interval,
                    poll_interval: source.poll_interval,
                    max_line_bytes: source.max_line_bytes.0,
                    skip_header_lines: source.skip_header_lines,
                    // Checked by `Config::parse`: a table that does not compile never gets here.
                    multiline: source_multiline(source.multiline.as_ref(), parse.as_ref().and_then(|parse| parse.partial_lines()))
                        .ok()
                        .flatten()
                        .map(Arc::new),
                    parse,
                    add_fields: source.add_fields.as_ref().and_then(|fields| fields.compile(name).ok()).map(Arc::new),
                    single_line: source.single_line.as_ref().map(|single_line| Arc::new(single_line.compile())),
                }
            })
            .collect()
    }

    /// The sinks with their settings resolved. Only valid after [`Config::parse`].
    pub fn sink_settings(&self) -> Vec<SinkSettings> {
        self.sinks
            .iter()
            .filter_map(|(name, sink)| {
                let sink = sink.get_ref();
                let endpoint = AwsEndpoint {
                    region: sink.region.clone(),
                    endpoint_url: sink.endpoint_url.clone(),
                    request_timeout: sink.request_timeout,
                    ca_file: sink.ca_file.clone(),
                };
                let destination = match sink.sink_type {
                    SinkType::Firehose => {
                        SinkDestination::Firehose { delivery_stream: sink_first_stream(sink, sink.delivery_stream.as_deref()?), endpoint }
                    }
                    SinkType::KinesisStreams => SinkDestination::KinesisStreams {
                        stream_name: sink_first_stream(sink, sink.stream_name.as_deref()?),
                        endpoint,
                        partition_key: sink_partition_key(sink).ok()?,
                        explicit_hash_key: sink.explicit_hash_key_field.as_deref().map(FieldPath::parse).transpose().ok()?,
                        aggregate: sink.aggregate,
                    },
                    SinkType::Directory => SinkDestination::Directory { path: sink.path.clone()? },
                };
                Some(SinkSettings {
                    name: name.clone(),
                    inputs: sink.inputs.iter().map(|input| input.get_ref().clone()).collect(),
                    destination,
                    flush_interval: sink.flush_interval,
                    append_newline: sink.append_newline,
                    max_batch_records: sink.max_batch_records,
                    max_batch_bytes: sink_max_batch_bytes(sink),
                    retry_initial_backoff: sink.retry_initial_backoff,
                    retry_max_backoff: sink.retry_max_backoff,
                    retention: Retention { max_age: sink.retain_acked, max_bytes: sink.retain_acked_bytes.map(|size| size.0) },
                    packing: sink_packing(sink),
                    compression: sink.compression,
                    rate_ceiling: crate::sink::rate::Rates {
                        bytes: sink.max_bytes_per_sec.map(|size| size.0 as f64),
                        records: sink.max_records_per_sec.map(|records| records as f64),
                        calls: None,
                    },
                    max_in_flight: sink.max_in_flight.unwrap_or_else(|| default_max_in_flight(sink_packing(sink).is_some())),
                    streams: sink_stream_routing(sink).ok().flatten().map(Arc::new),
                })
            })
            .collect()
    }
}

impl SinkType {
    pub fn name(self) -> &'static str {
        match self {
            SinkType::Firehose => "firehose",
            SinkType::KinesisStreams => "kinesis_streams",
            SinkType::Directory => "directory",
        }
    }
}

/// How a sink's records take several lines, if they do.
fn sink_packing(sink: &SinkConfig) -> Option<Packing> {
    if sink.sink_type == SinkType::KinesisStreams && sink.aggregate {
        return Some(Packing { format: PackFormat::Aggregated, max_bytes: aggregation::BODY_MAX_BYTES });
    }
    let max_bytes = match (sink.pack_max_bytes, sink.compression) {
        (Some(size), _) => size.0,
        (None, Some(_)) => default_compressed_pack_max_bytes(),
        (None, None) => default_pack_max_bytes(),
    };
    sink.pack_records.then_some(Packing { format: PackFormat::Lines, max_bytes })
}

/// A Kinesis sink's partition key, from `partition_key_field` or `fixed_partition_key`.
fn sink_partition_key(sink: &SinkConfig) -> Result<PartitionKey, String> {
    match (&sink.partition_key_field, &sink.fixed_partition_key) {
        (Some(_), Some(_)) => Err("partition_key_field and fixed_partition_key both choose the partition key: keep one".into()),
        (Some(field), None) => FieldPath::parse(field).map(PartitionKey::Field),
        (None, Some(fixed)) => {
            let chars = fixed.chars().count();
            if chars == 0 || chars > kinesis_limits::MAX_PARTITION_KEY_CHARS {
                return Err(format!("must be 1 to {} characters (Kinesis's limit)", kinesis_limits::MAX_PARTITION_KEY_CHARS));
            }
            Ok(PartitionKey::Fixed(fixed.clone()))
        }
        (None, None) => Ok(PartitionKey::Random),
    }
}

/// The key naming a Firehose or Kinesis sink's stream, its value, and the longest name the
/// service takes.
fn stream_key(sink: &SinkConfig) -> Option<(&'static str, &str, usize)> {
    match sink.sink_type {
        SinkType::Firehose => Some(("delivery_stream", sink.delivery_stream.as_deref()?, firehose_limits::MAX_STREAM_NAME_CHARS)),
        SinkType::KinesisStreams => Some(("stream_name", sink.stream_name.as_deref()?, kinesis_limits::MAX_STREAM_NAME_CHARS)),
        SinkType::Directory => None,
    }
}

/// How a sink's stream name reads: plain (`None`), or a template with its fallback.
fn sink_stream_routing(sink: &SinkConfig) -> Result<Option<crate::sink::streams::StreamRouting>, (&'static str, String)> {
    use crate::sink::streams::{is_stream_name, StreamRouting, StreamTemplate};
    let Some((key, text, max_name_chars)) = stream_key(sink).filter(|(_, text, _)| !text.is_empty()) else { return Ok(None) };
    let not_a_name = |name: &str| format!("`{name}` is not a stream name (1 to {max_name_chars} of a-z, A-Z, 0-9, `_`, `.`, `-`)");
    let template = StreamTemplate::parse(text).map_err(|problem| (key, problem))?;
    if template.is_plain() {
        if !is_stream_name(text, max_name_chars) {
            return Err((key, not_a_name(text)));
        }
        for (field, present) in [("fallback_stream", sink.fallback_stream.is_some()), ("max_streams", sink.max_streams.is_some())] {
            if present {
                return Err((field, format!("does not apply: {key} is one stream's name, not a template")));
            }
        }
        return Ok(None);
    }
    // Every value a field may give is checked as records come; the template's own text must
    // be made of a name's characters already.
    if !template.text_is_name_like() {
        return Err((key, format!("`{text}`: outside its placeholders a stream's name has only a-z, A-Z, 0-9, `_`, `.`, `-`")));
    }
    let fallback = match (&sink.fallback_stream, template.reads_records()) {
        (Some(fallback), _) if !is_stream_name(fallback, max_name_chars) => return Err(("fallback_stream", not_a_name(fallback))),
        (None, true) => {
            let why =
                format!("is required when {key} names a record field: records without it (or whose value is no stream name) go there");
            return Err(("fallback_stream", why));
        }
        (fallback, _) => fallback.clone(),
    };
    if !template.reads_records() {
        for input in &sink.inputs {
            let name = template.resolve(input.get_ref(), None).unwrap_or_default();
            if !is_stream_name(&name, max_name_chars) {
                return Err((key, format!("for input `{}`: {}", input.get_ref(), not_a_name(&name))));
            }
        }
    }
    let max_streams = sink.max_streams.unwrap_or(DEFAULT_MAX_STREAMS);
    if !(1..=MAX_STREAMS_AT_MOST).contains(&max_streams) {
        return Err(("max_streams", format!("must be 1 to {MAX_STREAMS_AT_MOST}")));
    }
    Ok(Some(StreamRouting { template, fallback, max_streams, max_name_chars }))
}

/// What is wrong with how a Firehose or Kinesis sink names its stream.
fn stream_problems(sink: &SinkConfig) -> Vec<(&'static str, String)> {
    sink_stream_routing(sink).err().into_iter().collect()
}

/// The stream a sink is checked against and sends to when it names one: its fallback, the
/// template resolved for its first input, or its plain name.
fn sink_first_stream(sink: &SinkConfig, text: &str) -> String {
    match sink_stream_routing(sink).ok().flatten() {
        Some(routing) => routing.fallback.clone().unwrap_or_else(|| {
            let first = sink.inputs.first().map(|input| input.get_ref().as_str()).unwrap_or_default();
            routing.template.resolve(first, None).unwrap_or_default()
        }),
        None => text.to_owned(),
    }
}

/// What is wrong with a `kinesis_streams` sink's own keys, each with the key it is about.
fn kinesis_problems(sink: &SinkConfig) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if sink.stream_name.as_deref().is_none_or(str::is_empty) {
        problems.push(("stream_name", "is required for type = \"kinesis_streams\"".to_owned()));
    }
    let key_field = if sink.partition_key_field.is_some() { "partition_key_field" } else { "fixed_partition_key" };
    if let Err(problem) = sink_partition_key(sink) {
        problems.push((key_field, problem));
    }
    if let Some(Err(problem)) = sink.explicit_hash_key_field.as_deref().map(FieldPath::parse) {
        problems.push(("explicit_hash_key_field", problem));
    }
    if sink.aggregate {
        let why = "an aggregated record holds many records and lands on one shard: its partition key is random or fixed_partition_key";
        if sink.partition_key_field.is_some() {
            problems.push(("partition_key_field", why.to_owned()));
        }
        if sink.explicit_hash_key_field.is_some() {
            problems.push(("explicit_hash_key_field", why.to_owned()));
        }
    }
    problems
}

/// 1-based line number of a byte offset in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&byte| byte == b'\n').count() + 1
}

fn default_admin_address() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 8686))
}
fn default_unhealthy_after() -> Duration {
    Duration::from_secs(300)
}
fn default_true() -> bool {
    true
}
fn default_max_queue_bytes() -> ByteSize {
    ByteSize(1024 * 1024 * 1024)
}
fn default_max_read_ahead_bytes() -> ByteSize {
    // Measured (docs/performance.md): 6 MiB is as fast as 8 and 2-10 MiB lighter; 4 MiB starves
    // packed batches (2.5 MB each).
    ByteSize(6 * 1024 * 1024)
}
fn default_queue_cache_bytes() -> ByteSize {
    ByteSize(16 * 1024 * 1024)
}
fn default_storage_stall_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_refresh_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}
/// Fluent Bit waits 4 s, Fluentd's `multiline_flush_interval` has no default (a record waits
/// for the next start line): a second keeps a quiet file's last record within about a flush
/// interval of its write.
fn default_multiline_flush_timeout() -> Duration {
    Duration::from_secs(1)
}
/// A Java stack trace of a deep framework runs to a few hundred lines.
fn default_multiline_max_lines() -> u32 {
    1000
}
/// Under Firehose's 1,000 KiB record limit, with room for a packed record's other lines.
fn default_multiline_max_bytes() -> ByteSize {
    ByteSize(512 * 1024)
}
fn default_max_open_files() -> usize {
    256
}
fn default_max_line_bytes() -> ByteSize {
    ByteSize(1024 * 1024)
}
fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_max_batch_records() -> u32 {
    firehose_limits::MAX_BATCH_RECORDS
}
/// A sink's `max_batch_bytes`, or its default: half of Firehose's limit, since each of the
/// `max_in_flight` calls holds its records until acknowledged, and with packed records 4 MiB
/// batches cost 3–5 MiB more memory at the same speed (docs/performance.md); seed-sized records
/// reach the 500-record limit first either way. Aggregated batches are sealed into a copy with
/// their envelopes: 1 MiB keeps peak RSS under 50 MiB (52.9 MiB at 2 MiB, 46.8 at 1 MiB, the
/// same speed: `cargo bench --bench end_to_end`, "kinesis_streams aggregated, TLS").
fn sink_max_batch_bytes(sink: &SinkConfig) -> u64 {
    let aggregated = sink.sink_type == SinkType::KinesisStreams && sink.aggregate;
    sink.max_batch_bytes.map_or(firehose_limits::MAX_BATCH_BYTES / if aggregated { 4 } else { 2 }, |size| size.0)
}
fn default_retry_initial() -> Duration {
    Duration::from_millis(100)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(30)
}
/// Measured with `cargo bench --bench end_to_end` (docs/performance.md): 8 batches of one
/// record per line (73 KB each for seed records) hide a 30 ms round trip at 100,000 records/s
/// and the resends of records refused at random (issue 17: with 10 % refused, 0.48 of the clean
/// rate with 4, 0.69 with 8). Packed batches are up to 2 MiB each: 4 keep peak RSS under 50 MiB.
/// Four times as many batches may be unacknowledged, 8 MiB of records at most (the flusher's
/// `Places`).
fn default_max_in_flight(pack_records: bool) -> usize {
    if pack_records {
        4
    } else {
        8
    }
}
/// Just under Firehose's 5 KB (5,120-byte) billing unit.
fn default_pack_max_bytes() -> u64 {
    5_000
}
/// Seed records compress about six-fold with gzip (docs/performance.md): 25,000 bytes of them
/// are some 4,200 bytes compressed, one 5 KB billing unit.
fn default_compressed_pack_max_bytes() -> u64 {
    25_000
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

#[cfg(test)]
mod tests;
