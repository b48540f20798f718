//! `PutRecordBatch` (Firehose) and `PutRecords` (Kinesis Data Streams) request bodies, written
//! in one pass into one buffer.
//!
//! The SDK's serializer takes every record as a `Blob` (a copy), then base64-encodes each into a
//! string of its own before writing the JSON document: several copies and allocations per
//! record, 500 times a call (`memmove` alone was 7–8 % of tailhose's CPU). This writes the same
//! document straight from the batch's buffer: one exact-size allocation per call, base64 written
//! in place. The SDK still signs, sends and parses the answer; [`super::firehose`] hands it this
//! body through [`OurBody`], which lets go of it once it is in the request.
//!
//! Guarantees: the body is a JSON document whose `Records[i].Data` base64-decodes to the `i`-th
//! selected record and whose `DeliveryStreamName` is the stream's (property-tested below), byte
//! for byte the document the SDK's serializer writes for the same records (tested in
//! `sink::firehose`), and accepted by moto (the end-to-end tests).

use std::sync::{Mutex, PoisonError};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use base64_simd::AsOut;

use super::OutgoingRecords;

const STREAM_KEY: &[u8] = br#"{"DeliveryStreamName":"#;
const RECORDS_KEY: &[u8] = br#","Records":["#;
const RECORD_OPEN: &[u8] = br#"{"Data":""#;
const RECORD_CLOSE: &[u8] = br#""}"#;
const DOCUMENT_CLOSE: &[u8] = b"]}";

/// The JSON body of a `PutRecordBatch` call delivering `records[i]` for each `i` in `which`, in
/// that order, to `delivery_stream`.
pub fn put_record_batch_body(delivery_stream: &str, records: &OutgoingRecords, which: &[usize]) -> Vec<u8> {
    let stream_name = serde_json::to_string(delivery_stream).unwrap_or_else(|_| unreachable!("a str always serializes"));
    let records_len: usize = which
        .iter()
        .map(|&index| RECORD_OPEN.len() + base64_simd::STANDARD.encoded_length(records.get(index).len()) + RECORD_CLOSE.len())
        .sum::<usize>()
        + which.len().saturating_sub(1);
    let mut body = Vec::with_capacity(STREAM_KEY.len() + stream_name.len() + RECORDS_KEY.len() + records_len + DOCUMENT_CLOSE.len());
    body.extend_from_slice(STREAM_KEY);
    body.extend_from_slice(stream_name.as_bytes());
    body.extend_from_slice(RECORDS_KEY);
    for (position, &index) in which.iter().enumerate() {
        if position > 0 {
            body.push(b',');
        }
        body.extend_from_slice(RECORD_OPEN);
        append_base64(&mut body, records.get(index));
        body.extend_from_slice(RECORD_CLOSE);
    }
    body.extend_from_slice(DOCUMENT_CLOSE);
    body
}

/// A Kinesis record's keys, beside its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryKeys {
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
}

/// The JSON body of a `PutRecords` call putting `records[which[i]]` with `keys[i]`, in that
/// order, to `stream_name`: the document aws-sdk-kinesis writes (tested in `sink::kinesis`),
/// without its copy of every record and of its base64 text. A packed or aggregated call is up
/// to 4 MiB of records: four calls in flight held some 20 MiB more through the SDK's serializer.
pub fn put_records_body(stream_name: &str, records: &OutgoingRecords, which: &[usize], keys: &[EntryKeys]) -> Vec<u8> {
    let text = |value: &str| serde_json::to_string(value).unwrap_or_else(|_| unreachable!("a str always serializes"));
    let keys_text: Vec<(String, Option<String>)> =
        keys.iter().map(|keys| (text(&keys.partition_key), keys.explicit_hash_key.as_deref().map(text))).collect();
    let records_len: usize = which
        .iter()
        .zip(&keys_text)
        .map(|(&index, (partition_key, hash_key))| {
            KINESIS_RECORD_OPEN.len()
                + base64_simd::STANDARD.encoded_length(records.get(index).len())
                + 1
                + hash_key.as_ref().map_or(0, |key| HASH_KEY_FIELD.len() + key.len())
                + PARTITION_KEY_FIELD.len()
                + partition_key.len()
                + 1
        })
        .sum::<usize>()
        + which.len().saturating_sub(1);
    let stream_name = text(stream_name);
    let mut body = Vec::with_capacity(KINESIS_RECORDS_KEY.len() + records_len + STREAM_NAME_KEY.len() + stream_name.len() + 1);
    body.extend_from_slice(KINESIS_RECORDS_KEY);
    for (position, (&index, (partition_key, hash_key))) in which.iter().zip(&keys_text).enumerate() {
        if position > 0 {
            body.push(b',');
        }
        body.extend_from_slice(KINESIS_RECORD_OPEN);
        append_base64(&mut body, records.get(index));
        body.push(b'"');
        if let Some(hash_key) = hash_key {
            body.extend_from_slice(HASH_KEY_FIELD);
            body.extend_from_slice(hash_key.as_bytes());
        }
        body.extend_from_slice(PARTITION_KEY_FIELD);
        body.extend_from_slice(partition_key.as_bytes());
        body.push(b'}');
    }
    body.extend_from_slice(STREAM_NAME_KEY);
    body.extend_from_slice(stream_name.as_bytes());
    body.push(b'}');
    body
}

const KINESIS_RECORDS_KEY: &[u8] = br#"{"Records":["#;
const KINESIS_RECORD_OPEN: &[u8] = br#"{"Data":""#;
const HASH_KEY_FIELD: &[u8] = br#","ExplicitHashKey":"#;
const PARTITION_KEY_FIELD: &[u8] = br#","PartitionKey":"#;
const STREAM_NAME_KEY: &[u8] = br#"],"StreamName":"#;

/// Appends `data` in standard, padded base64 (what Firehose's `Data` blob takes) without an
/// intermediate string. SIMD (AVX2 where the CPU has it): base64 was 3–4 % of tailhose's CPU
/// with the scalar `base64` crate. `base64-simd` is the encoder the AWS SDK itself uses.
fn append_base64(body: &mut Vec<u8>, data: &[u8]) {
    let start = body.len();
    body.resize(start + base64_simd::STANDARD.encoded_length(data.len()), 0);
    let encoded = base64_simd::STANDARD.encode(data, body[start..].as_out());
    debug_assert_eq!(encoded.len(), body.len() - start);
}

/// An interceptor that puts a body written by [`put_record_batch_body`] in place of the SDK's
/// (an empty record list) before signing, and keeps no copy: the body is freed once the
/// connection has sent it, not when the answer comes. A packed call's body is up to 5.3 MB and
/// four calls may be in flight; holding bodies to the end of each call cost about 5 MiB of peak
/// RSS with packed records (docs/performance.md).
pub struct OurBody(Mutex<Option<bytes::Bytes>>);

impl OurBody {
    pub fn new(body: Vec<u8>) -> OurBody {
        OurBody(Mutex::new(Some(bytes::Bytes::from(body))))
    }
}

impl std::fmt::Debug for OurBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.0.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(bytes::Bytes::len);
        f.debug_struct("OurBody").field("unsent_bytes", &len).finish()
    }
}

impl Intercept for OurBody {
    fn name(&self) -> &'static str {
        "tailhose::OurBody"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let body = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or("a PutRecordBatch body is sent once: the SDK's own retries must stay off")?;
        let request = context.request_mut();
        request.headers_mut().insert("content-length", body.len().to_string());
        *request.body_mut() = SdkBody::from(body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    // Decoded with the `base64` crate: a second implementation checks the SIMD encoder.
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use proptest::prelude::*;

    use super::*;

    fn decoded(body: &[u8]) -> (String, Vec<Vec<u8>>) {
        let document: serde_json::Value = serde_json::from_slice(body).expect("the body is JSON");
        let stream = document["DeliveryStreamName"].as_str().expect("a stream name").to_owned();
        let records = document["Records"]
            .as_array()
            .expect("a Records array")
            .iter()
            .map(|record| STANDARD.decode(record["Data"].as_str().expect("Data is a string")).expect("Data is base64"))
            .collect();
        (stream, records)
    }

    #[test]
    fn the_body_is_firehoses_json_document() {
        let mut records = OutgoingRecords::default();
        records.push(b"{\"a\":1}", true);
        records.push(b"x", false);
        let body = put_record_batch_body("test-fluentd-firehose", &records, &[0, 1]);
        assert_eq!(
            String::from_utf8(body).expect("ASCII"),
            r#"{"DeliveryStreamName":"test-fluentd-firehose","Records":[{"Data":"eyJhIjoxfQo="},{"Data":"eA=="}]}"#
        );
    }

    proptest! {
        #[test]
        fn the_body_decodes_to_the_selected_records_in_order(
            stream in "\\PC{1,64}",
            contents in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..40),
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 1..60),
        ) {
            let mut records = OutgoingRecords::default();
            for data in &contents {
                records.push(data, false);
            }
            let which: Vec<usize> = picks.iter().map(|pick| pick.index(records.len())).collect();
            let body = put_record_batch_body(&stream, &records, &which);
            prop_assert_eq!(body.capacity(), body.len(), "sized exactly, no reallocation");
            let (decoded_stream, decoded_records) = decoded(&body);
            prop_assert_eq!(decoded_stream, stream);
            let expected: Vec<Vec<u8>> = which.iter().map(|&index| contents[index].clone()).collect();
            prop_assert_eq!(decoded_records, expected);
        }
    }
}
