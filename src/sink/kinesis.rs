//! The Kinesis Data Streams sink: `PutRecords` through aws-sdk-kinesis.
//!
//! A room beside the Firehose sink: the client is configured the same way ([`super::aws`]: the
//! default credential chain, no SDK retries, extra CAs and proxies), failed calls are sorted the
//! same way, and batching, pacing, resends of refused entries and acknowledgement are the
//! flusher's, shared by every sink. What is its own:
//!
//! - Each record gets a partition key ([`PartitionKey`]: a field of the JSON record, fixed, or
//!   random) and, if configured, an explicit hash key from a field. A key is never invalid: a
//!   field value is cut to Kinesis's 256 characters, and a record without a usable value gets a
//!   random partition key (or no explicit hash key), so no record is ever refused for its key.
//! - With `aggregate`, each record the flusher packed is a KPL aggregated record's body
//!   ([`super::aggregation`]), wrapped with its partition key table and digest when its batch is
//!   sealed ([`KinesisSink::aggregated_record`]), before any compression: a compressed aggregated
//!   record is compressed whole. Its own partition key is the fixed one, or a random one chosen
//!   at each call (only its shard depends on it; its user records keep the key inside).
//! - Per-record `ProvisionedThroughputExceededException` answers are the shard's quota, and feed
//!   the same pacing as Firehose's `ServiceUnavailableException`; `InternalFailure` is a fault.
//!
//! Guarantees: one `put` is one `PutRecords` call with one entry per selected record, in order;
//! an answer is taken only when it answers every entry consistently (else the call is sent
//! again whole, as after a lost answer).

use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_kinesis::operation::put_records::PutRecordsOutput;
use aws_sdk_kinesis::types::PutRecordsResultEntry;
use aws_sdk_kinesis::Client;

use super::aggregation;
use super::aws::{self, AnswerEntry, AnswerTerms, Fixes};
use super::compression::Compression;
use super::request::{put_records_body, EntryKeys, OurBody};
use super::streams::field_text;
pub use super::streams::FieldPath;
use super::{OutgoingRecords, RecordOutcome, SinkError, SinkSetupError};
use crate::config::{kinesis_limits, AwsEndpoint};

/// What a Kinesis failure asks of its operator.
const FIXES: Fixes = Fixes {
    missing_stream: "create the stream, or fix `stream_name`/`region` in the sink's configuration",
    credentials: "check the AWS credentials and that they allow kinesis:PutRecords on this stream",
    encryption: "check the stream's KMS key: that it exists, is enabled, and allows kms:GenerateDataKey to these credentials",
};

pub struct KinesisSink {
    client: Client,
    stream_name: String,
    keys: RecordKeys,
    aggregate: bool,
    /// How records were compressed when their batch was sealed: keys are read from what was
    /// compressed.
    compression: Option<Compression>,
}

/// How each record's partition key is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionKey {
    /// A new random key for each record: records spread evenly over the shards.
    Random,
    Fixed(String),
    /// The value of a field of the JSON record; a random key when it has none.
    Field(FieldPath),
}

/// The keys of each record: partition key and explicit hash key.
pub struct RecordKeys {
    partition_key: PartitionKey,
    explicit_hash_key: Option<FieldPath>,
    /// Random keys: a counter run through splitmix64 from a random start. Cheap, and spread as
    /// evenly as Kinesis's MD5 of the key needs.
    random: AtomicU64,
}

impl RecordKeys {
    pub fn new(partition_key: PartitionKey, explicit_hash_key: Option<FieldPath>) -> RecordKeys {
        let start = uuid::Uuid::new_v4().as_u64_pair().0;
        RecordKeys { partition_key, explicit_hash_key, random: AtomicU64::new(start) }
    }

    fn random_key(&self) -> String {
        let mut value = self.random.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        format!("{:016x}", value ^ (value >> 31))
    }

    /// Whether a key comes from a field of the record.
    fn reads_fields(&self) -> bool {
        matches!(self.partition_key, PartitionKey::Field(_)) || self.explicit_hash_key.is_some()
    }

    /// The partition key and explicit hash key of `record` (its bytes as read, with the newline).
    fn of(&self, record: &[u8]) -> (String, Option<String>) {
        // Parsed once for both keys; a record that is not JSON has no fields.
        let parsed = self.reads_fields().then(|| serde_json::from_slice::<serde_json::Value>(record).ok()).flatten();
        let field = |path: &FieldPath| parsed.as_ref().and_then(|record| path.find(record)).and_then(field_text);
        let partition_key = match &self.partition_key {
            PartitionKey::Fixed(key) => Some(key.clone()),
            PartitionKey::Field(path) => field(path).map(|key| cut_to_key_length(&key)),
            PartitionKey::Random => None,
        };
        let explicit_hash_key = self.explicit_hash_key.as_ref().and_then(field).filter(|key| is_hash_key(key));
        (partition_key.unwrap_or_else(|| self.random_key()), explicit_hash_key)
    }

    /// The partition key of an aggregated record: fixed or random (the configuration refuses a
    /// field: the record holds many).
    fn of_aggregated(&self) -> String {
        match &self.partition_key {
            PartitionKey::Fixed(key) => key.clone(),
            PartitionKey::Field(_) | PartitionKey::Random => self.random_key(),
        }
    }
}

/// `key` cut to Kinesis's 256 characters: a longer key would fail the whole call.
fn cut_to_key_length(key: &str) -> String {
    match key.char_indices().nth(kinesis_limits::MAX_PARTITION_KEY_CHARS) {
        Some((end, _)) => key[..end].to_owned(),
        None => key.to_owned(),
    }
}

/// Whether `key` is an explicit hash key Kinesis takes: a decimal number below 2^128 written
/// as Kinesis's pattern `0|([1-9]\d{0,38})` has it (no leading zero: `007` fails the whole call).
fn is_hash_key(key: &str) -> bool {
    let canonical = key == "0" || !key.starts_with('0');
    canonical && !key.is_empty() && key.bytes().all(|byte| byte.is_ascii_digit()) && key.parse::<u128>().is_ok()
}

impl KinesisSink {
    pub async fn connect(
        stream_name: &str,
        keys: RecordKeys,
        aggregate: bool,
        compression: Option<Compression>,
        endpoint: &AwsEndpoint,
    ) -> Result<KinesisSink, SinkSetupError> {
        let shared = aws::shared_config(endpoint).await?;
        let mut config = aws_sdk_kinesis::config::Builder::from(&shared)
            .retry_config(aws::retry_config())
            .timeout_config(aws::timeout_config(endpoint.request_timeout));
        if let Some(url) = &endpoint.endpoint_url {
            config = config.endpoint_url(url);
        }
        Ok(KinesisSink { client: Client::from_conf(config.build()), stream_name: stream_name.to_owned(), keys, aggregate, compression })
    }

    /// Whether each record sent is a KPL aggregated record.
    pub fn aggregates(&self) -> bool {
        self.aggregate
    }

    /// The aggregated record of a body the flusher packed, its user records keyed alike.
    pub fn aggregated_record(&self, body: &[u8]) -> Vec<u8> {
        aggregation::aggregated_record(&self.keys.of_aggregated(), body)
    }

    pub async fn put(&self, records: &OutgoingRecords, which: &[usize]) -> Result<Vec<RecordOutcome>, SinkError> {
        self.put_to(&self.stream_name, records, which).await
    }

    /// [`KinesisSink::put`] to `stream_name`, one a template named.
    pub async fn put_to(&self, stream_name: &str, records: &OutgoingRecords, which: &[usize]) -> Result<Vec<RecordOutcome>, SinkError> {
        let keys: Vec<EntryKeys> = which.iter().map(|&index| self.keys_of_sent(records.get(index))).collect();
        // The SDK serializes an empty record list; the body it signs and sends is ours, the
        // document it would write, written in one pass (see [`super::request`]).
        let body = OurBody::new(put_records_body(stream_name, records, which, &keys));
        let output = self
            .client
            .put_records()
            .stream_name(stream_name)
            .set_records(Some(Vec::new()))
            .customize()
            .interceptor(body)
            .send()
            .await
            .map_err(|error| aws::classify(error, &FIXES))?;
        outcomes_of(&output, which.len())
    }

    /// The key an aggregated record is sent with: the one in its table, which its user records
    /// have (a KCL consumer drops the user records whose key hashes outside its shard). It was
    /// wrapped, and maybe compressed, when its batch was sealed; only its first bytes are read.
    fn key_of_aggregated(&self, record: &[u8]) -> String {
        let prefix = match self.compression {
            Some(compression) => compression.decompress_prefix(record, aggregation::KEY_PREFIX_MAX_BYTES).ok(),
            None => Some(record[..record.len().min(aggregation::KEY_PREFIX_MAX_BYTES)].to_vec()),
        };
        // tailhose wrapped it: a record without a readable key is not one it sends.
        prefix.as_deref().and_then(aggregation::partition_key).map_or_else(|| self.keys.of_aggregated(), str::to_owned)
    }

    /// The keys of a record, from its fields as read: a compressed record is decompressed first
    /// when a key comes from a field.
    fn keys_of(&self, record: &[u8]) -> (String, Option<String>) {
        match self.compression.filter(|_| self.keys.reads_fields()) {
            Some(compression) => match compression.decompress(record) {
                Ok(plain) => self.keys.of(&plain),
                Err(_) => self.keys.of(b""),
            },
            None => self.keys.of(record),
        }
    }

    /// The keys one record sent goes with.
    fn keys_of_sent(&self, record: &[u8]) -> EntryKeys {
        let (partition_key, explicit_hash_key) = if self.aggregate { (self.key_of_aggregated(record), None) } else { self.keys_of(record) };
        EntryKeys { partition_key, explicit_hash_key }
    }
}

/// What an answer says of each of `sent` records (see [`aws::outcomes_of`]).
fn outcomes_of(output: &PutRecordsOutput, sent: usize) -> Result<Vec<RecordOutcome>, SinkError> {
    let terms = AnswerTerms { service: "Kinesis", failed_count: "FailedRecordCount", id: "SequenceNumber" };
    aws::outcomes_of(output.records(), answer_entry, i64::from(output.failed_record_count().unwrap_or(0)), sent, &terms)
}

/// One entry of a `PutRecords` answer.
fn answer_entry(entry: &PutRecordsResultEntry) -> AnswerEntry<'_> {
    AnswerEntry { error_code: entry.error_code(), error_message: entry.error_message(), has_id: entry.sequence_number().is_some() }
}

#[cfg(test)]
mod tests {
    use aws_sdk_kinesis::config::retry::RetryConfig;
    use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
    use aws_smithy_http_client::test_util::{capture_request, CaptureRequestReceiver};
    use aws_smithy_types::body::SdkBody;

    use super::*;

    fn sink_answering(answer: Option<(u16, &'static str)>, keys: RecordKeys, aggregate: bool) -> (KinesisSink, CaptureRequestReceiver) {
        let response = answer.map(|(status, body)| {
            let mut response = http::Response::builder().status(status);
            if status != 200 {
                let code = serde_json::from_str::<serde_json::Value>(body).expect("json")["__type"].as_str().unwrap_or_default().to_owned();
                response = response.header("x-amzn-errortype", code);
            }
            response.body(SdkBody::from(body)).expect("an answer")
        });
        let (capture, request) = capture_request(response);
        let config = aws_sdk_kinesis::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("ap-northeast-2"))
            .credentials_provider(Credentials::new("AKIDEXAMPLE", "secret", None, None, "test"))
            .retry_config(RetryConfig::disabled())
            .http_client(capture)
            .build();
        (KinesisSink { client: Client::from_conf(config), stream_name: "conect".into(), keys, aggregate, compression: None }, request)
    }

    fn records(lines: &[&[u8]]) -> OutgoingRecords {
        let mut records = OutgoingRecords::default();
        for line in lines {
            records.push(line, true);
        }
        records
    }

    fn sent_entries(request: CaptureRequestReceiver) -> serde_json::Value {
        let request = request.expect_request();
        assert_eq!(request.headers().get("x-amz-target"), Some("Kinesis_20131202.PutRecords"));
        serde_json::from_slice(request.body().bytes().expect("in memory")).expect("a JSON body")
    }

    #[tokio::test]
    async fn each_record_goes_with_the_partition_key_of_its_field_or_a_random_one() {
        let keys = RecordKeys::new(PartitionKey::Field(FieldPath::parse("user.id").expect("a path")), None);
        let (sink, request) = sink_answering(None, keys, false);
        let long = format!(r#"{{"user": {{"id": "{}"}}}}"#, "é".repeat(300));
        let lines: [&[u8]; 5] =
            [br#"{"user": {"id": "u-1"}}"#, br#"{"user": {"id": 42}}"#, b"not json", br#"{"user": {}}"#, long.as_bytes()];
        let _ = sink.put(&records(&lines), &[0, 1, 2, 3, 4]).await;
        let body = sent_entries(request);
        assert_eq!(body["StreamName"], "conect");
        let entries = body["Records"].as_array().expect("records");
        let keys: Vec<&str> = entries.iter().map(|entry| entry["PartitionKey"].as_str().expect("a key")).collect();
        assert_eq!(&keys[..2], ["u-1", "42"]);
        assert!(keys[2].len() == 16 && keys[3].len() == 16 && keys[2] != keys[3], "random keys for records without the field: {keys:?}");
        assert_eq!(keys[4], "é".repeat(256), "cut to 256 characters");
        assert!(entries.iter().all(|entry| entry.get("ExplicitHashKey").is_none()));
    }

    #[tokio::test]
    async fn an_explicit_hash_key_is_sent_only_when_kinesis_would_take_it() {
        let keys = RecordKeys::new(PartitionKey::Fixed("events".into()), Some(FieldPath::parse("hash").expect("a path")));
        let (sink, request) = sink_answering(None, keys, false);
        let too_large = format!(r#"{{"hash": "{}"}}"#, u128::MAX as f64 * 2.0);
        let lines: [&[u8]; 6] = [
            br#"{"hash": "340282366920938463463374607431768211455"}"#,
            br#"{"hash": 7}"#,
            br#"{"hash": "-1"}"#,
            too_large.as_bytes(),
            br#"{"hash": "007"}"#,
            br#"{"hash": "0"}"#,
        ];
        let _ = sink.put(&records(&lines), &[0, 1, 2, 3, 4, 5]).await;
        let body = sent_entries(request);
        let entries = body["Records"].as_array().expect("records");
        let hash_keys: Vec<Option<&str>> = entries.iter().map(|entry| entry["ExplicitHashKey"].as_str()).collect();
        assert_eq!(hash_keys, [Some("340282366920938463463374607431768211455"), Some("7"), None, None, None, Some("0")]);
        assert!(entries.iter().all(|entry| entry["PartitionKey"] == "events"));
    }

    #[tokio::test]
    async fn an_aggregated_record_is_wrapped_with_its_key_and_digest_and_sent_with_its_key() {
        let mut batch = OutgoingRecords::default();
        batch.push_aggregated(b"{\"a\":1}", true);
        batch.aggregate_into_last(b"{\"b\":2}", true);
        let (sink, request) = sink_answering(None, RecordKeys::new(PartitionKey::Fixed("k".into()), None), true);
        let mut sealed = OutgoingRecords::default();
        sealed.push_record(&sink.aggregated_record(batch.get(0)), batch.lines(0));
        let _ = sink.put(&sealed, &[0]).await;
        let body = sent_entries(request);
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD.decode(body["Records"][0]["Data"].as_str().expect("data")).expect("base64");
        let (keys, user_records) = aggregation::deaggregate(&data).expect("an aggregated record");
        assert_eq!(keys, ["k"]);
        assert_eq!(user_records, [b"{\"a\":1}\n".to_vec(), b"{\"b\":2}\n".to_vec()]);
        assert_eq!(body["Records"][0]["PartitionKey"], "k");
    }

    #[tokio::test]
    async fn answers_are_read_per_record_and_a_self_contradicting_one_is_sent_again() {
        let keys = || RecordKeys::new(PartitionKey::Random, None);
        let lines: [&[u8]; 2] = [b"a", b"b"];
        let partly = r#"{"FailedRecordCount":1,"Records":[{"SequenceNumber":"1","ShardId":"shardId-000000000000"},
            {"ErrorCode":"ProvisionedThroughputExceededException","ErrorMessage":"Rate exceeded for shard shardId-000000000001"}]}"#;
        let (sink, _request) = sink_answering(Some((200, partly)), keys(), false);
        let outcomes = sink.put(&records(&lines), &[0, 1]).await.expect("an answer");
        assert_eq!(outcomes[0], RecordOutcome::Accepted);
        assert!(matches!(&outcomes[1], RecordOutcome::Failed { code, .. } if code == "ProvisionedThroughputExceededException"));
        for answer in [
            r#"{"FailedRecordCount":0,"Records":[{"SequenceNumber":"1","ShardId":"s"}]}"#,
            r#"{"FailedRecordCount":0,"Records":[{"SequenceNumber":"1","ShardId":"s"},{"ErrorCode":"InternalFailure"}]}"#,
            r#"{"FailedRecordCount":0,"Records":[{"SequenceNumber":"1","ShardId":"s"},{"ShardId":"s"}]}"#,
        ] {
            let (sink, _request) = sink_answering(Some((200, answer)), keys(), false);
            assert!(matches!(sink.put(&records(&lines), &[0, 1]).await, Err(SinkError::Transient { .. })), "{answer}");
        }
        let missing = r#"{"__type":"ResourceNotFoundException","message":"Stream conect under account 123456789012 not found."}"#;
        let (sink, _request) = sink_answering(Some((400, missing)), keys(), false);
        match sink.put(&records(&lines), &[0, 1]).await {
            Err(SinkError::Unavailable { fix, .. }) => assert!(fix.contains("stream_name"), "{fix}"),
            other => panic!("{other:?}"),
        }
        let throttled = r#"{"__type":"ProvisionedThroughputExceededException","message":"Rate exceeded"}"#;
        let (sink, _request) = sink_answering(Some((400, throttled)), keys(), false);
        assert!(matches!(sink.put(&records(&lines), &[0, 1]).await, Err(SinkError::Throttled { .. })));
    }

    /// The body tailhose writes itself is byte for byte the one aws-sdk-kinesis's serializer
    /// writes for the same records and keys, and it is what `put` signs and sends.
    #[tokio::test]
    async fn the_body_put_sends_is_the_one_the_sdk_would_write() {
        use aws_sdk_kinesis::primitives::Blob;
        use aws_sdk_kinesis::types::PutRecordsRequestEntry;
        let lines: [&[u8]; 3] =
            ["{\"user\": {\"id\": \"\u{d55c}\\\"\"}, \"hash\": \"7\"}".as_bytes(), br#"{"user": {"id": 3}}"#, b"x\\\x7f"];
        let keys = || {
            RecordKeys::new(
                PartitionKey::Field(FieldPath::parse("user.id").expect("a path")),
                Some(FieldPath::parse("hash").expect("a path")),
            )
        };
        let (sdk_sink, sdk_request) = sink_answering(None, keys(), false);
        let mut call = sdk_sink.client.put_records().stream_name("conect");
        let batch = records(&lines);
        for index in 0..batch.len() {
            let EntryKeys { partition_key, explicit_hash_key } = sdk_sink.keys_of_sent(batch.get(index));
            let partition_key = if index == 2 { "fixed-for-the-comparison".to_owned() } else { partition_key };
            call = call.records(
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(batch.get(index).to_vec()))
                    .partition_key(partition_key)
                    .set_explicit_hash_key(explicit_hash_key)
                    .build()
                    .expect("an entry"),
            );
        }
        let _ = call.send().await;
        let sdk_body = sdk_request.expect_request().body().bytes().expect("in memory").to_vec();

        let (sink, request) = sink_answering(None, keys(), false);
        let mut sent_keys: Vec<EntryKeys> = (0..batch.len()).map(|index| sink.keys_of_sent(batch.get(index))).collect();
        sent_keys[2].partition_key = "fixed-for-the-comparison".into();
        assert_eq!(
            String::from_utf8_lossy(&put_records_body("conect", &batch, &[0, 1, 2], &sent_keys)),
            String::from_utf8_lossy(&sdk_body)
        );
        let _ = sink.put(&batch, &[0, 1, 2]).await;
        let sent = request.expect_request();
        let body = sent.body().bytes().expect("in memory");
        assert_eq!(sent.headers().get("content-length"), Some(body.len().to_string().as_str()));
        assert!(sent.headers().get("authorization").is_some_and(|value| value.starts_with("AWS4-HMAC-SHA256")), "signed");
        let document: serde_json::Value = serde_json::from_slice(body).expect("JSON");
        assert_eq!(document["Records"][0]["PartitionKey"], "\u{d55c}\"");
        assert_eq!(document["Records"][0]["ExplicitHashKey"], "7");
    }

    #[test]
    fn field_paths_name_fields_joined_by_dots() {
        assert!(FieldPath::parse("a..b").is_err());
        assert!(FieldPath::parse("").is_err());
        let path = FieldPath::parse("kubernetes.pod_name").expect("a path");
        let record = serde_json::json!({"kubernetes": {"pod_name": "web-1"}});
        assert_eq!(path.find(&record), Some(&serde_json::json!("web-1")));
    }
}
