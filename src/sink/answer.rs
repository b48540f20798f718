//! `PutRecordBatch` answers, read in one borrowing pass.
//!
//! A successful answer holds one entry per record sent: a `RecordId` for each accepted record,
//! an `ErrorCode` and `ErrorMessage` for each refused one. The SDK's general deserializer walks
//! that document through its schema and allocates a string for every `RecordId` (500 a call,
//! about 200 bytes each on AWS), which tailhose never reads: that was 7–8 % of tailhose's CPU
//! with one record per line (docs/performance.md). [`ReadAnswersOurselves`] hands the SDK this
//! module's reader for successful answers only; the SDK still signs, sends, and turns every
//! error answer into its typed error.
//!
//! Guarantees: for any successful answer the SDK's deserializer reads, this one gives the same
//! `FailedPutCount`, `Encrypted` and, entry by entry and in order, the same `ErrorCode` and
//! `ErrorMessage` (tested below against the SDK on the same bytes); `RecordId` is skipped (only
//! whether it was there is kept, as an empty id). A
//! successful answer it cannot read is an error of the call (the batch is sent again), never a
//! guess.

use std::borrow::Cow;

use aws_sdk_firehose::operation::put_record_batch::PutRecordBatchOutput;
use aws_sdk_firehose::types::PutRecordBatchResponseEntry;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{BeforeDeserializationInterceptorContextMut, Error, Output};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::{HttpResponse, OrchestratorError};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::client::ser_de::{DeserializeResponse, SharedResponseDeserializer};
use aws_smithy_types::config_bag::ConfigBag;
use serde::de::IgnoredAny;
use serde::Deserialize;

/// What tailhose reads of a successful answer.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Answer<'a> {
    failed_put_count: i32,
    #[serde(default)]
    encrypted: Option<bool>,
    #[serde(borrow)]
    request_responses: Vec<Entry<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry<'a> {
    #[serde(default, rename = "RecordId")]
    record_id: Option<IgnoredAny>,
    #[serde(borrow, default)]
    error_code: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    error_message: Option<Cow<'a, str>>,
}

/// Reads the body of a successful `PutRecordBatch` answer into the SDK's output type, without
/// the `RecordId`s.
pub fn read_accepted_answer(body: &[u8]) -> Result<PutRecordBatchOutput, BoxError> {
    let answer: Answer<'_> = serde_json::from_slice(body)?;
    let entries = answer
        .request_responses
        .into_iter()
        .map(|entry| {
            // Whether a `RecordId` was there is kept (as an empty one, which allocates nothing):
            // an entry with neither an id nor an error code answers nothing of its record.
            PutRecordBatchResponseEntry::builder()
                .set_record_id(entry.record_id.map(|_| String::new()))
                .set_error_code(entry.error_code.map(Cow::into_owned))
                .set_error_message(entry.error_message.map(Cow::into_owned))
                .build()
        })
        .collect();
    Ok(PutRecordBatchOutput::builder()
        .failed_put_count(answer.failed_put_count)
        .set_encrypted(answer.encrypted)
        .set_request_responses(Some(entries))
        .build()?)
}

/// The deserializer [`ReadAnswersOurselves`] puts in place for a successful answer.
#[derive(Debug)]
struct AcceptedAnswerReader;

impl DeserializeResponse for AcceptedAnswerReader {
    fn deserialize_nonstreaming_with_config(&self, response: &HttpResponse, _cfg: &ConfigBag) -> Result<Output, OrchestratorError<Error>> {
        // Put in place only after a 2xx status, for the one attempt of each call (the SDK's
        // retries are off): an error answer never reaches this reader.
        let body = response.body().bytes().ok_or_else(|| OrchestratorError::other("the answer's body was not read into memory"))?;
        read_accepted_answer(body)
            .map(Output::erase)
            .map_err(|error| OrchestratorError::other(format!("unreadable PutRecordBatch answer: {error}")))
    }
}

/// An interceptor for `PutRecordBatch` calls: once an answer's status says it succeeded, its
/// body is read by [`read_accepted_answer`] instead of the SDK's deserializer. Error answers are
/// left to the SDK, which makes its typed errors of them.
#[derive(Debug)]
pub struct ReadAnswersOurselves;

impl Intercept for ReadAnswersOurselves {
    fn name(&self) -> &'static str {
        "tailhose::ReadAnswersOurselves"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if context.response().status().is_success() {
            cfg.interceptor_state().store_put(SharedResponseDeserializer::new(AcceptedAnswerReader));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_their_order_codes_and_messages_and_lose_their_record_ids() {
        let body = br#"{"FailedPutCount":1,"Encrypted":false,"RequestResponses":[
            {"RecordId":"ZFvYI6B8IvLrE3rnwAeSCXyiFrJSbpMxVfvkHd9t4MZmwTAV7kkC1TP9JiTDcEw/0dkgTIC5ZoRvQqWYHcKx7zY+4KY2"},
            {"ErrorCode":"ServiceUnavailableException","ErrorMessage":"Slow down.\nThe \"stream\" is at its limit \u00e9"},
            {"RecordId":"b","ErrorCode":null,"Unknown":{"nested":[1,2]}}]}"#;
        let output = read_accepted_answer(body).expect("a readable answer");
        assert_eq!(output.failed_put_count(), 1);
        assert_eq!(output.encrypted(), Some(false));
        let entries = output.request_responses();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].error_code(), None);
        assert_eq!(entries[1].error_code(), Some("ServiceUnavailableException"));
        assert_eq!(entries[1].error_message(), Some("Slow down.\nThe \"stream\" is at its limit é"));
        assert_eq!(entries[2].error_code(), None);
        assert_eq!(
            entries.iter().map(|entry| entry.record_id()).collect::<Vec<_>>(),
            [Some(""), None, Some("")],
            "only whether an id was there"
        );
    }

    #[test]
    fn an_answer_without_its_entries_or_count_is_an_error_not_an_empty_batch() {
        assert!(read_accepted_answer(br#"{"FailedPutCount":0}"#).is_err());
        assert!(read_accepted_answer(br#"{"RequestResponses":[]}"#).is_err());
        assert!(read_accepted_answer(b"<html>gateway</html>").is_err());
        assert!(read_accepted_answer(br#"{"FailedPutCount":0,"RequestResponses":[{"RecordId":"a"}"#).is_err());
    }
}
