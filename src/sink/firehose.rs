//! The Firehose sink: `PutRecordBatch` through aws-sdk-firehose.
//!
//! The client is configured as every AWS sink's ([`super::aws`]: the default credential chain, no
//! SDK retries, extra CAs and proxies), and failed calls are sorted the same way. The request body is
//! written by [`super::request`] and successful answers are read by [`super::answer`]: the SDK
//! still signs, sends, times out and types every error.

use aws_sdk_firehose::error::DisplayErrorContext;
use aws_sdk_firehose::operation::put_record_batch::PutRecordBatchOutput;
use aws_sdk_firehose::types::{CompressionFormat, PutRecordBatchResponseEntry};
use aws_sdk_firehose::Client;

use super::answer::ReadAnswersOurselves;
use super::aws::{self, AnswerEntry, AnswerTerms, Fixes};
use super::compression::Compression;
use super::rate::Rates;
use super::request::{put_record_batch_body, OurBody};
use super::{OutgoingRecords, RecordOutcome, SinkError, SinkSetupError};
use crate::config::AwsEndpoint;

pub struct FirehoseSink {
    client: Client,
    delivery_stream: String,
    /// The region the client resolved (configured, or from the AWS default chain).
    region: Option<String>,
}

/// A Direct PUT stream's default quota in `region`, from Firehose's quotas page: 5 MiB/s,
/// 2,000 calls/s and 500,000 records/s in US East (N. Virginia), US West (Oregon) and Europe
/// (Ireland), 1 MiB/s, 1,000 calls/s and 100,000 records/s in the others (and where the
/// region is not known: the smaller default costs a round trip at most where it is wrong).
/// An increase raises the three in proportion.
pub fn default_direct_put_quota(region: Option<&str>) -> Rates {
    const MIB: f64 = 1024.0 * 1024.0;
    match region {
        Some("us-east-1" | "us-west-2" | "eu-west-1") => Rates { bytes: Some(5.0 * MIB), records: Some(500_000.0), calls: Some(2_000.0) },
        _ => Rates { bytes: Some(MIB), records: Some(100_000.0), calls: Some(1_000.0) },
    }
}

/// What a Firehose failure asks of its operator.
const FIXES: Fixes = Fixes {
    missing_stream: "create the delivery stream, or fix `delivery_stream`/`region` in the sink's configuration",
    credentials: "check the AWS credentials and that they allow firehose:PutRecordBatch on this stream",
    encryption: "check the delivery stream's encryption key and source settings",
};

impl FirehoseSink {
    pub async fn connect(delivery_stream: &str, endpoint: &AwsEndpoint) -> Result<FirehoseSink, SinkSetupError> {
        let shared = aws::shared_config(endpoint).await?;
        let mut config = aws_sdk_firehose::config::Builder::from(&shared)
            .retry_config(aws::retry_config())
            .timeout_config(aws::timeout_config(endpoint.request_timeout));
        if let Some(url) = &endpoint.endpoint_url {
            config = config.endpoint_url(url);
        }
        let region = shared.region().map(|region| region.as_ref().to_owned());
        Ok(FirehoseSink { client: Client::from_conf(config.build()), delivery_stream: delivery_stream.to_owned(), region })
    }

    /// The quota a stream of this sink most likely has (see [`default_direct_put_quota`]).
    pub fn default_quota(&self) -> Rates {
        default_direct_put_quota(self.region.as_deref())
    }

    pub async fn put(&self, records: &OutgoingRecords, which: &[usize]) -> Result<Vec<RecordOutcome>, SinkError> {
        self.put_to(&self.delivery_stream, records, which).await
    }

    /// [`FirehoseSink::put`] to `delivery_stream`, one a template named.
    pub async fn put_to(&self, delivery_stream: &str, records: &OutgoingRecords, which: &[usize]) -> Result<Vec<RecordOutcome>, SinkError> {
        // The SDK serializes an empty record list; the body it signs and sends is ours, written
        // in one pass (see [`super::request`]), with the same document the SDK would write.
        let body = OurBody::new(put_record_batch_body(delivery_stream, records, which));
        let output = self
            .client
            .put_record_batch()
            .delivery_stream_name(delivery_stream)
            .set_records(Some(Vec::new()))
            .customize()
            .interceptor(body)
            .interceptor(ReadAnswersOurselves)
            .send()
            .await
            .map_err(|error| aws::classify(error, &FIXES))?;
        outcomes_of(&output, which.len())
    }
}

/// What an answer says of each of `sent` records (see [`aws::outcomes_of`]).
fn outcomes_of(output: &PutRecordBatchOutput, sent: usize) -> Result<Vec<RecordOutcome>, SinkError> {
    let terms = AnswerTerms { service: "Firehose", failed_count: "FailedPutCount", id: "RecordId" };
    aws::outcomes_of(output.request_responses(), answer_entry, i64::from(output.failed_put_count()), sent, &terms)
}

/// One entry of a `PutRecordBatch` answer.
fn answer_entry(entry: &PutRecordBatchResponseEntry) -> AnswerEntry<'_> {
    AnswerEntry { error_code: entry.error_code(), error_message: entry.error_message(), has_id: entry.record_id().is_some() }
}

impl FirehoseSink {
    /// Whether packing several lines into one record, or compressing records, keeps what the
    /// stream's destination stores the same, from `DescribeDeliveryStream`.
    pub async fn packing_verdict(&self, compression: Option<Compression>) -> PackingVerdict {
        let answer = self.client.describe_delivery_stream().delivery_stream_name(&self.delivery_stream).send().await;
        let output = match answer {
            Ok(output) => output,
            Err(error) => return PackingVerdict::Unchecked(DisplayErrorContext(&error).to_string()),
        };
        let Some(description) = output.delivery_stream_description() else {
            return PackingVerdict::Unchecked("DescribeDeliveryStream gave no description".into());
        };
        if let Some(reason) = description.destinations().iter().find_map(packing_breaks) {
            return PackingVerdict::Refused(reason);
        }
        let Some(compression) = compression else { return PackingVerdict::Allowed };
        let s3 = description.destinations().iter().find_map(|destination| destination.extended_s3_destination_description());
        match s3 {
            Some(s3) if *s3.compression_format() != CompressionFormat::Uncompressed => PackingVerdict::Refused(format!(
                "the stream compresses what it writes ({}): records compressed by tailhose would be compressed twice",
                s3.compression_format().as_str()
            )),
            Some(s3) if !s3.file_extension().is_some_and(|extension| extension.ends_with(compression.extension())) => {
                PackingVerdict::Advised(format!(
                    "the stream's objects do not end in {}: Athena and Spark tell a compressed file by its name; set the delivery stream's file extension to {}",
                    compression.extension(),
                    compression.extension()
                ))
            }
            _ => PackingVerdict::Allowed,
        }
    }
}

/// What a destination makes of a packed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackingVerdict {
    /// The destination writes records' bytes one after the other (S3, Redshift through S3):
    /// packed lines land as they would unpacked.
    Allowed,
    /// The destination makes one document (or one transformed row) of each record.
    Refused(String),
    /// The stream could not be described (no permission, say): packing goes ahead, with a warning.
    Unchecked(String),
    /// Allowed, with something the operator should change for what is stored to be read well.
    Advised(String),
}

/// Why packing would change what `destination` stores, if it would.
fn packing_breaks(destination: &aws_sdk_firehose::types::DestinationDescription) -> Option<String> {
    let one_document_per_record = [
        (destination.elasticsearch_destination_description().is_some(), "Elasticsearch"),
        (destination.amazonopensearchservice_destination_description().is_some(), "OpenSearch Service"),
        (destination.amazon_open_search_serverless_destination_description().is_some(), "OpenSearch Serverless"),
        (destination.splunk_destination_description().is_some(), "Splunk"),
        (destination.http_endpoint_destination_description().is_some(), "an HTTP endpoint"),
        (destination.snowflake_destination_description().is_some(), "Snowflake"),
        (destination.iceberg_destination_description().is_some(), "Apache Iceberg tables"),
    ];
    if let Some((_, name)) = one_document_per_record.iter().find(|(present, _)| *present) {
        return Some(format!("the stream delivers to {name}, which makes one document of each Firehose record"));
    }
    let s3 = destination.extended_s3_destination_description()?;
    let enabled = |flag: Option<bool>| flag.unwrap_or(false);
    if enabled(s3.processing_configuration().and_then(|processing| processing.enabled())) {
        return Some("the stream transforms each record (a Lambda processor)".into());
    }
    if enabled(s3.data_format_conversion_configuration().and_then(|conversion| conversion.enabled())) {
        return Some("the stream converts each record to Parquet/ORC".into());
    }
    if enabled(s3.dynamic_partitioning_configuration().and_then(|partitioning| partitioning.enabled())) {
        return Some("the stream partitions by each record's content (dynamic partitioning)".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use aws_sdk_firehose::config::retry::RetryConfig;
    use aws_sdk_firehose::config::{BehaviorVersion, Credentials, Region};
    use aws_sdk_firehose::primitives::Blob;
    use aws_sdk_firehose::types::Record;
    use aws_smithy_http_client::test_util::capture_request;
    use aws_smithy_types::body::SdkBody;

    use super::*;
    use crate::sink::OutgoingRecords;

    /// A client whose one call is captured, and answered with `answer` if one is given.
    fn capturing_client_answering(
        answer: Option<http::Response<SdkBody>>,
    ) -> (Client, aws_smithy_http_client::test_util::CaptureRequestReceiver) {
        let (capture, request) = capture_request(answer);
        let config = aws_sdk_firehose::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("ap-northeast-2"))
            .credentials_provider(Credentials::new("AKIDEXAMPLE", "secret", None, None, "test"))
            .retry_config(RetryConfig::disabled())
            .http_client(capture)
            .build();
        (Client::from_conf(config), request)
    }

    /// A client that sends nowhere: the request it would send is captured.
    fn capturing_client() -> (Client, aws_smithy_http_client::test_util::CaptureRequestReceiver) {
        capturing_client_answering(None)
    }

    /// The body tailhose writes itself is byte for byte the one the SDK's serializer writes for
    /// the same records, and it is what `put` signs and sends, with a matching Content-Length.
    #[tokio::test]
    async fn the_body_put_sends_is_the_one_the_sdk_would_write() {
        let lines: [&[u8]; 3] = [b"{\"board_id\": 1, \"interest\": \"\xed\x95\x9c\"}", b"", b"x\"\\\x7f"];
        let mut records = OutgoingRecords::default();
        for line in lines {
            records.push(line, true);
        }
        let (client, sdk_request) = capturing_client();
        let mut sdk_call = client.put_record_batch().delivery_stream_name("test-fluentd-firehose");
        for index in 0..records.len() {
            sdk_call = sdk_call.records(Record::builder().data(Blob::new(records.get(index).to_vec())).build().expect("a record"));
        }
        // No answer comes back from the capture; only the request matters.
        let _ = sdk_call.send().await;
        let sdk_body = sdk_request.expect_request().body().bytes().expect("an in-memory body").to_vec();

        let (client, tailhose_request) = capturing_client();
        let sink = FirehoseSink { client, delivery_stream: "test-fluentd-firehose".into(), region: None };
        let _ = sink.put(&records, &[0, 1, 2]).await;
        let sent = tailhose_request.expect_request();
        let body = sent.body().bytes().expect("an in-memory body");
        assert_eq!(String::from_utf8_lossy(body), String::from_utf8_lossy(&sdk_body));
        assert_eq!(body, put_record_batch_body("test-fluentd-firehose", &records, &[0, 1, 2]).as_slice());
        assert_eq!(sent.headers().get("content-length"), Some(body.len().to_string().as_str()));
        assert!(sent.headers().get("authorization").is_some_and(|value| value.starts_with("AWS4-HMAC-SHA256")), "signed");
    }

    /// A client whose one call is answered with `status` and `body`.
    fn answering_client(status: u16, headers: &[(&str, &str)], body: &'static str) -> Client {
        let mut answer = http::Response::builder().status(status);
        for (name, value) in headers {
            answer = answer.header(*name, *value);
        }
        capturing_client_answering(Some(answer.body(SdkBody::from(body)).expect("a valid answer"))).0
    }

    fn three_records() -> OutgoingRecords {
        let mut records = OutgoingRecords::default();
        for line in [b"a".as_slice(), b"b", b"c"] {
            records.push(line, true);
        }
        records
    }

    /// tailhose reads successful answers itself (`sink::answer`); what `put` makes of them is
    /// what it would make of the SDK's own reading of the same bytes.
    #[tokio::test]
    async fn put_reads_successful_answers_as_the_sdk_reads_them() {
        let answers = [
            r#"{"FailedPutCount":0,"Encrypted":false,"RequestResponses":[{"RecordId":"1"},{"RecordId":"2"},{"RecordId":"3"}]}"#,
            r#"{"FailedPutCount":2,"RequestResponses":[{"ErrorCode":"ServiceUnavailableException","ErrorMessage":"Slow down."},{"RecordId":"2","ErrorCode":null},{"ErrorCode":"InternalFailure","ErrorMessage":"quote \" and \u00e9"}]}"#,
        ];
        for answer in answers {
            let sdk_output = answering_client(200, &[], answer)
                .put_record_batch()
                .delivery_stream_name("s")
                .send()
                .await
                .expect("the SDK reads the answer");
            let sdk_outcomes: Vec<RecordOutcome> =
                sdk_output.request_responses().iter().map(|entry| answer_entry(entry).outcome()).collect();
            let sink = FirehoseSink { client: answering_client(200, &[], answer), delivery_stream: "s".into(), region: None };
            let outcomes = sink.put(&three_records(), &[0, 1, 2]).await.expect("tailhose reads the answer");
            assert_eq!(outcomes, sdk_outcomes, "answer: {answer}");
        }
    }

    /// Error answers are still the SDK's to read: their codes decide retry or stop.
    #[tokio::test]
    async fn error_answers_are_still_typed_by_the_sdk() {
        let throttled = answering_client(
            400,
            &[("x-amzn-errortype", "ServiceUnavailableException")],
            r#"{"__type":"ServiceUnavailableException","message":"Slow down."}"#,
        );
        let sink = FirehoseSink { client: throttled, delivery_stream: "s".into(), region: None };
        assert!(matches!(sink.put(&three_records(), &[0, 1, 2]).await, Err(SinkError::Throttled { .. })));

        let missing =
            answering_client(400, &[], r#"{"__type":"ResourceNotFoundException","message":"Firehose s under account 1 not found."}"#);
        let sink = FirehoseSink { client: missing, delivery_stream: "s".into(), region: None };
        assert!(matches!(sink.put(&three_records(), &[0, 1, 2]).await, Err(SinkError::Unavailable { .. })));
    }

    /// A successful answer that cannot be read, that does not answer every record, or that
    /// contradicts itself sends the batch again; nothing is taken as accepted.
    #[tokio::test]
    async fn an_unreadable_short_or_self_contradicting_successful_answer_is_a_transient_failure() {
        for answer in [
            r#"{"FailedPutCount":0,"RequestResponses":[{"RecordId":"1"}]}"#,
            "<html>proxy error</html>",
            // FailedPutCount says one failed, no entry says which.
            r#"{"FailedPutCount":1,"RequestResponses":[{"RecordId":"1"},{"RecordId":"2"},{"RecordId":"3"}]}"#,
            // Two entries failed, FailedPutCount says none.
            r#"{"FailedPutCount":0,"RequestResponses":[{"RecordId":"1"},{"ErrorCode":"InternalFailure"},{"ErrorCode":"InternalFailure"}]}"#,
            // The second entry answers nothing of its record.
            r#"{"FailedPutCount":0,"RequestResponses":[{"RecordId":"1"},{},{"RecordId":"3"}]}"#,
        ] {
            let sink = FirehoseSink { client: answering_client(200, &[], answer), delivery_stream: "s".into(), region: None };
            assert!(matches!(sink.put(&three_records(), &[0, 1, 2]).await, Err(SinkError::Transient { .. })), "answer: {answer}");
        }
    }
}
