//! What the AWS sinks (Firehose, Kinesis Data Streams) share: how a client is configured, how a
//! successful answer is checked and read entry by entry, and how a failed call is sorted into
//! what the flusher can do about it.
//!
//! Both SDKs take the same shared configuration (the default credential chain, the region, the
//! HTTPS client of [`super::https_client`]) and the same per-client settings: no SDK retries (one
//! `put` is one HTTP call; the courier resends only what was refused, paced), connections kept
//! after a 5xx or a throttle, and the sink's `request_timeout` as the operation's timeout. Their
//! errors carry the same codes for the same situations; only the fix a message suggests names
//! the service's own keys and permissions.

use std::error::Error;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use aws_smithy_types::retry::ReconnectMode;

use super::https_client::https_client;
use super::{RecordOutcome, SinkError, SinkSetupError};
use crate::config::AwsEndpoint;

/// The configuration every AWS client of a sink starts from: credentials from the default chain
/// (environment, profile, SSO, IMDS; none are ever configured in tailhose), the region, and
/// calls through [`https_client`] (extra CAs, proxies from the environment).
pub async fn shared_config(endpoint: &AwsEndpoint) -> Result<SdkConfig, SinkSetupError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &endpoint.region {
        loader = loader.region(Region::new(region.clone()));
    }
    Ok(loader.http_client(https_client(endpoint.ca_file.as_deref())?).load().await)
}

/// The SDK's retries are off: retries are the courier's (paced, per record). A 5xx or a throttle
/// that came as a whole answer says nothing against the connection it came on: by default the SDK
/// would close it and pay a new TLS handshake for the next call (with 5 % of calls answered 500,
/// a third of delivery's CPU). A connection that broke (reset, cut off, timed out) is still never
/// reused: hyper drops it.
pub fn retry_config() -> RetryConfig {
    RetryConfig::disabled().with_reconnect_mode(ReconnectMode::ReuseAllConnections)
}

/// A call that has not answered within the sink's `request_timeout` is abandoned and retried.
pub fn timeout_config(request_timeout: Duration) -> TimeoutConfig {
    TimeoutConfig::builder().operation_timeout(request_timeout).build()
}

/// One entry of a successful `PutRecordBatch` or `PutRecords` answer: an error code (with its
/// message), or the id the service gave the record it took.
#[derive(Debug, Clone, Copy)]
pub struct AnswerEntry<'a> {
    pub error_code: Option<&'a str>,
    pub error_message: Option<&'a str>,
    /// A `RecordId` (Firehose) or a `SequenceNumber` (Kinesis) was given.
    pub has_id: bool,
}

impl AnswerEntry<'_> {
    /// What the entry says of its record.
    pub fn outcome(&self) -> RecordOutcome {
        match self.error_code {
            None => RecordOutcome::Accepted,
            Some(code) => RecordOutcome::Failed { code: code.to_owned(), message: self.error_message.unwrap_or_default().to_owned() },
        }
    }
}

/// The names a service gives an answer's parts, for the messages.
pub struct AnswerTerms {
    pub service: &'static str,
    pub failed_count: &'static str,
    pub id: &'static str,
}

/// What an answer says of each of `sent` records. An answer that contradicts itself (not one
/// entry per record, its failed count not the number of entries with an error code, an entry
/// with neither an id nor an error code) cannot be relied on: the call is sent again whole, as
/// after a lost answer, rather than taking a record for accepted on its word.
pub fn outcomes_of<E>(
    entries: &[E],
    read: impl Fn(&E) -> AnswerEntry<'_>,
    failed_count: i64,
    sent: usize,
    terms: &AnswerTerms,
) -> Result<Vec<RecordOutcome>, SinkError> {
    let AnswerTerms { service, failed_count: count_name, id } = terms;
    let unreliable = |why: String| Err(SinkError::Transient { message: format!("{why}; resending the batch") });
    if entries.len() != sent {
        return unreliable(format!("{service} answered {} entries for {sent} records", entries.len()));
    }
    let failed = entries.iter().filter(|entry| read(entry).error_code.is_some()).count();
    if failed_count != failed as i64 {
        return unreliable(format!("{service} answered {count_name} {failed_count} with {failed} entries failed"));
    }
    if let Some(index) = entries.iter().position(|entry| read(entry).error_code.is_none() && !read(entry).has_id) {
        return unreliable(format!("{service} answered entry {index} with neither a {id} nor an ErrorCode"));
    }
    Ok(entries.iter().map(|entry| read(entry).outcome()).collect())
}

/// What a message suggests for the failures only an operator can fix, in a service's own words.
pub struct Fixes {
    pub missing_stream: &'static str,
    pub credentials: &'static str,
    pub encryption: &'static str,
}

/// Sorts a failed call into what the flusher can do about it.
pub fn classify<E>(error: SdkError<E, HttpResponse>, fixes: &Fixes) -> SinkError
where
    E: ProvideErrorMetadata + Error + 'static,
{
    let message = DisplayErrorContext(&error).to_string();
    match &error {
        SdkError::ServiceError(context) => {
            let status = context.raw().status().as_u16();
            let code = context.err().code().unwrap_or("Unknown").to_owned();
            classify_service_error(&code, status, message, fixes)
        }
        SdkError::ConstructionFailure(_) => SinkError::Unavailable {
            code: "RequestConstruction".into(),
            message,
            fix: "check that AWS credentials and a region are available (environment, profile or instance role)".into(),
        },
        _ => SinkError::Transient { message },
    }
}

/// Sorts an error answer by its code (and status, for codes it does not know).
pub fn classify_service_error(code: &str, status: u16, message: String, fixes: &Fixes) -> SinkError {
    let unavailable = |fix: &str| SinkError::Unavailable { code: code.into(), message: message.clone(), fix: fix.into() };
    match code {
        _ if super::is_throughput_code(code) => SinkError::Throttled { message },
        "InvalidArgumentException" | "ValidationException" => SinkError::InvalidRecords { code: code.into(), message },
        "ResourceNotFoundException" => unavailable(fixes.missing_stream),
        "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "InvalidClientTokenId" => unavailable(fixes.credentials),
        "InvalidKMSResourceException"
        | "InvalidSourceException"
        | "KMSAccessDeniedException"
        | "KMSDisabledException"
        | "KMSInvalidStateException"
        | "KMSNotFoundException"
        | "KMSOptInRequired" => unavailable(fixes.encryption),
        _ if status >= 500 => SinkError::ServerError { status, message },
        _ if status == 429 => SinkError::Throttled { message },
        _ => unavailable("see the message; records stay queued until the cause is fixed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXES: Fixes = Fixes { missing_stream: "create it", credentials: "check them", encryption: "check the key" };

    #[test]
    fn throttling_and_server_errors_are_retried_and_what_an_operator_must_fix_is_reported() {
        let sorted = |code: &str, status: u16| classify_service_error(code, status, String::new(), &FIXES);
        for code in
            ["ServiceUnavailableException", "ProvisionedThroughputExceededException", "KMSThrottlingException", "LimitExceededException"]
        {
            assert!(matches!(sorted(code, 400), SinkError::Throttled { .. }), "{code}");
        }
        assert!(matches!(sorted("InternalFailure", 500), SinkError::ServerError { status: 500, .. }));
        assert!(matches!(sorted("InvalidArgumentException", 400), SinkError::InvalidRecords { .. }));
        for (code, fix) in [
            ("ResourceNotFoundException", "create it"),
            ("AccessDeniedException", "check them"),
            ("KMSDisabledException", "check the key"),
            ("SomethingNew", "see the message; records stay queued until the cause is fixed"),
        ] {
            match sorted(code, 400) {
                SinkError::Unavailable { fix: given, .. } => assert_eq!(given, fix, "{code}"),
                other => panic!("{code}: {other:?}"),
            }
        }
        assert!(matches!(sorted("SomethingNew", 503), SinkError::ServerError { .. }));
        assert!(matches!(sorted("SomethingNew", 429), SinkError::Throttled { .. }));
    }
}
