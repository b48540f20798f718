//! A Firehose that the project owns, for fault injection: it speaks the JSON protocol
//! aws-sdk-firehose sends (`X-Amz-Target: Firehose_20150804.PutRecordBatch`), enforces
//! Firehose's limits (500 records, 4 MiB, 1,000 KiB a record), records every record it accepts,
//! and fails records or whole calls on a deterministic schedule or a seeded random one. It can
//! also refuse at random independently of the send rate (`Noise`, issue 17: a refusal is not
//! always the quota) and change a stream's quota while it is written to (`QuotaChange`).
//!
//! The same server is a Kinesis data stream (`Kinesis_20131202.PutRecords`, [`Dialect`]), with
//! the same faults in Kinesis's words (`ProvisionedThroughputExceededException`), Kinesis's
//! limits (500 records, 5 MiB a call and 1 MiB a record, partition keys included, keys of 1 to
//! 256 characters), and its quota per shard (`Faults::shards`; a record's shard from the MD5 of
//! its partition key, or its explicit hash key). A KPL aggregated record is counted as the
//! records it holds: `Seen::accepted` holds lines read, whatever the sink, so that every fault
//! test runs for every sink.

use std::borrow::Cow;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode};

/// The fixed part of an accepted record's id; a counter follows it.
const RECORD_ID_PREFIX: &str = "ZFvYI6B8IvLrE3rnwAeSCXyiFrJSbpMxVfvkHd9t4MZmwTAV7kkC1TP9JiTDcEw/ZFvYI6B8IvLrE3rnwAeSCXyiFrJSbpMxVfvkHd9t4MZmwTAV7kkC1TP9JiTDcEw/ZFvYI6B8IvLrE3rnwAeSCXyiFrJSbpMx";

/// A call refused whole, every time, until the faults change: a stream that does not exist,
/// credentials that are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    StreamNotFound,
    BadCredentials,
}

/// Which calls and records fail. Counters run over the whole life of the server.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Every n-th record attempt is answered with a per-record `ServiceUnavailableException`.
    pub fail_every_nth_record: Option<u64>,
    /// Every n-th call is refused whole with `ServiceUnavailableException` (throttling).
    pub throttle_every_nth_call: Option<u64>,
    /// Every n-th call is refused whole with `LimitExceededException`.
    pub limit_exceeded_every_nth_call: Option<u64>,
    /// Every n-th call gets this HTTP status (500 or 503) with an `InternalFailure` body.
    pub http_error_every_nth_call: Option<(u64, u16)>,
    /// Every n-th call has its connection closed without an answer (the records are not taken).
    pub reset_every_nth_call: Option<u64>,
    /// Every n-th call is accepted, but its connection is cut in the middle of the answer: the
    /// records are taken and the client cannot know it.
    pub tear_every_nth_call: Option<u64>,
    /// Every call waits this long before it is answered.
    pub latency: Duration,
    /// Every call is refused this way.
    pub refuse_all: Option<Refusal>,
    /// Each call and record fails at random with this seed: 10% of calls throttled, 5% answered
    /// 500, 5% reset, 10% of records failed.
    pub random_seed: Option<u64>,
    /// A call holding a record that contains these bytes is refused whole with
    /// `InvalidArgumentException`, as Firehose refuses a record it will never take.
    pub reject_records_containing: Option<&'static str>,
    /// A Direct PUT stream's quota, counted in fixed one-second windows: a call past the calls
    /// budget is throttled whole; records past the records or bytes budget are answered with
    /// per-record `ServiceUnavailableException` entries, as Firehose does.
    pub quota: Option<Quota>,
    /// Refusals at random, whatever the send rate, from their own seeded stream.
    pub noise: Option<Noise>,
    /// The quota in force from some moment on, in place of `quota`.
    pub quota_change: Option<QuotaChange>,
    /// As a Kinesis stream: its shards (0 counts as 1), each with `quota`'s records and bytes
    /// budgets of its own (Kinesis's 1,000 records and 1 MiB a second per shard).
    pub shards: u32,
    /// Calls to the stream of this name are throttled whole until this long after the server
    /// started, as a stream at its quota (or another writer's burst) refuses while others take.
    pub throttle_stream_until: Option<(&'static str, Duration)>,
    /// Calls to the stream of this name are answered `ResourceNotFoundException`: it does not exist.
    pub missing_stream: Option<&'static str>,
}

impl Faults {
    /// The quota in force `since_start` after the server started.
    pub fn quota_at(&self, since_start: Duration) -> Option<Quota> {
        match self.quota_change {
            Some(change) if since_start >= change.after => Some(change.quota),
            _ => self.quota,
        }
    }
}

/// Refusals that say nothing about the stream's quota: a partition's hiccup, Firehose's own
/// failures. Each record attempt and each call is refused independently of how fast tailhose
/// sends, so slowing down does not make them rarer (issue 17: a governor that took every refusal
/// for the quota delivered 1,000 times slower under 1 % of such refusals).
///
/// Drawn from a stream of their own, seeded with `seed`: adding noise never changes the sequence
/// of `random_seed`'s faults, and one draw is made per call (only when a call fraction is set) and
/// per record (only when `refused_records` is set), to keep the fake cheap.
#[derive(Debug, Clone, Copy)]
pub struct Noise {
    pub seed: u64,
    /// Fraction (0.0..=1.0) of record attempts refused, each independently, with `record_code`.
    pub refused_records: f64,
    pub record_code: EntryCode,
    /// Fraction of calls refused whole with HTTP 400 `ServiceUnavailableException` ("Slow down.").
    pub throttled_calls: f64,
    /// Fraction of calls answered HTTP 500 `InternalFailure`.
    pub failed_calls: f64,
}

/// The `ErrorCode` of a record refused at random.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryCode {
    /// `ServiceUnavailableException`, "Slow down.": the same words as a quota's refusals.
    ServiceUnavailable,
    /// `InternalFailure`: a failure of Firehose's own.
    InternalFailure,
}

/// A stream's quota that changes while it is written to: a limit increase granted, or other
/// writers of a shared stream taking more of it.
#[derive(Debug, Clone, Copy)]
pub struct QuotaChange {
    /// From the server's start ([`FakeFirehose::started`]) on, `quota` is in force. The quota's
    /// windows stay the fixed one-second windows counted from the start.
    pub after: Duration,
    pub quota: Quota,
}

/// Per-second budgets of a stream (ap-northeast-2's defaults: 1 MiB, 1,000 calls, 100,000 records).
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub bytes_per_sec: u64,
    pub records_per_sec: u64,
    pub calls_per_sec: u64,
}

/// What the current one-second window has taken.
#[derive(Debug, Default, Clone, Copy)]
struct WindowUse {
    index: u64,
    bytes: u64,
    records: u64,
    calls: u64,
}

/// What the fake saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub accepted: Vec<Vec<u8>>,
    /// Calls that reached the server, counted before any latency is applied.
    pub arrived: u64,
    pub calls: u64,
    pub call_times: Vec<Instant>,
    pub refused_calls: u64,
    /// Records accepted in calls whose answer was cut off.
    pub accepted_in_torn_calls: u64,
    pub record_attempts: u64,
    pub failed_entries: u64,
    pub max_records_in_call: usize,
    pub max_bytes_in_call: usize,
    pub max_record_bytes: usize,
    /// Calls refused for breaking a Firehose limit; must stay 0.
    pub limit_violations: u64,
    /// What Firehose would bill for the accepted records: each rounded up to 5 KB (5,120 bytes).
    pub billed_units: u64,
    /// Calls that met the quota: throttled whole, or with entries refused for it.
    pub quota_throttled_calls: u64,
    /// When each of `quota_throttled_calls` was answered, in that order.
    pub quota_throttled_at: Vec<Instant>,
    /// Record attempts refused by `Noise` (also in `failed_entries`; never quota use).
    pub noise_refused_records: u64,
    /// Calls refused whole by `Noise` with `ServiceUnavailableException` (also in `refused_calls`,
    /// never in `quota_throttled_calls`).
    pub noise_throttled_calls: u64,
    /// Calls answered 500 by `Noise` (also in `refused_calls`).
    pub noise_failed_calls: u64,
    /// When the last record was accepted.
    pub last_accepted_at: Option<Instant>,
    /// When each record of `accepted` was accepted.
    pub accepted_at: Vec<Instant>,
    /// Most calls being answered at the same moment (calls in flight from the client's side).
    pub max_concurrent_calls: u64,
    in_progress: u64,
    /// Most lines read (user records of aggregated records) in one call.
    pub max_lines_in_call: usize,
    /// As a Kinesis stream: the partition key of each record of `accepted` (an aggregated
    /// record's for each of its user records).
    pub partition_keys: Vec<String>,
    /// The stream each accepted line went to: an index into `stream_names`, beside `accepted`.
    pub accepted_streams: Vec<u16>,
    /// Every stream named by a call, in the order first named.
    pub stream_names: Vec<String>,
    /// As a Kinesis stream: the Kinesis records (aggregated or not) accepted by each shard.
    pub shard_records: Vec<u64>,
    /// As a Kinesis stream: Kinesis records accepted (an aggregated record counts once).
    pub kinesis_records: u64,
}

impl Seen {
    /// Calls received in `[from, to)`.
    pub fn calls_between(&self, from: Instant, to: Instant) -> usize {
        self.call_times.iter().filter(|&&time| time >= from && time < to).count()
    }

    /// Bytes of the records accepted in `[from, to)`, as sent (with the newline tailhose adds).
    /// `accepted_at` is in acceptance order (written under the server's lock), so two binary
    /// searches find the range: cheap on the benchmark's millions of records.
    pub fn accepted_bytes_between(&self, from: Instant, to: Instant) -> u64 {
        let (start, end) = instants_between(&self.accepted_at, from, to);
        self.accepted[start..end].iter().map(|record| record.len() as u64).sum()
    }

    /// Quota-throttled calls answered in `[from, to)`.
    pub fn quota_throttled_between(&self, from: Instant, to: Instant) -> usize {
        let (start, end) = instants_between(&self.quota_throttled_at, from, to);
        end - start
    }
}

/// The index range of the ascending `times` that lie in `[from, to)`.
fn instants_between(times: &[Instant], from: Instant, to: Instant) -> (usize, usize) {
    let start = times.partition_point(|&time| time < from);
    (start, times.partition_point(|&time| time < to).max(start))
}

struct State {
    faults: Faults,
    seen: Seen,
    random: u64,
    /// `Noise`'s own stream, apart from `random`'s.
    noise_random: u64,
    started: Instant,
    window: WindowUse,
    /// As a Kinesis stream: what each shard's current window has taken.
    shard_windows: Vec<WindowUse>,
}

pub struct FakeFirehose {
    pub endpoint: String,
    address: SocketAddr,
    /// Serves HTTPS with this when set.
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<Mutex<State>>,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

type Body = BoxBody<Bytes, std::io::Error>;

/// What the fake does with one call.
enum Answer {
    Reply(Response<Body>),
    Reset,
}

/// An answer body that sends its first bytes and then fails, cutting the connection.
struct TornBody {
    first: Option<Bytes>,
}

impl hyper::body::Body for TornBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        std::task::Poll::Ready(Some(match self.first.take() {
            Some(bytes) => Ok(Frame::data(bytes)),
            None => Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "fault: answer torn")),
        }))
    }
}

impl FakeFirehose {
    pub fn start(faults: Faults) -> FakeFirehose {
        FakeFirehose::start_serving(faults, None)
    }

    /// The fake behind TLS with `certificate`, reachable as `https://localhost:PORT`.
    pub fn start_tls(faults: Faults, certificate: &TestCertificate) -> FakeFirehose {
        let config = tokio_rustls::rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![certificate.leaf_der.clone()], certificate.key_der.clone_key())
            .expect("server TLS configuration");
        let mut fake = FakeFirehose::start_serving(faults, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))));
        fake.endpoint = format!("https://localhost:{}", fake.address.port());
        fake
    }

    fn start_serving(faults: Faults, tls: Option<tokio_rustls::TlsAcceptor>) -> FakeFirehose {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let state = Arc::new(Mutex::new(State {
            faults,
            seen: Seen::default(),
            random: faults.random_seed.unwrap_or(1) | 1,
            noise_random: noise_stream(faults.noise),
            started: Instant::now(),
            window: WindowUse::default(),
            shard_windows: vec![WindowUse::default(); faults.shards.max(1) as usize],
        }));
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind loopback");
        let address = listener.local_addr().expect("address");
        let server = runtime.spawn(serve(listener, state.clone(), tls.clone()));
        FakeFirehose {
            endpoint: format!("http://{address}"),
            address,
            tls,
            state,
            server: Mutex::new(Some(server)),
            runtime: Some(runtime),
        }
    }

    pub fn seen(&self) -> Seen {
        self.state.lock().expect("state").seen.clone()
    }

    /// When the server started: the quota's one-second windows and `QuotaChange::after` count from it.
    pub fn started(&self) -> Instant {
        self.state.lock().expect("state").started
    }

    /// New faults from the next call on. Noise with another seed starts that seed's stream; with
    /// the same seed, its stream goes on.
    pub fn set_faults(&self, faults: Faults) {
        let mut state = self.state.lock().expect("state");
        if faults.noise.map(|noise| noise.seed) != state.faults.noise.map(|noise| noise.seed) {
            state.noise_random = noise_stream(faults.noise);
        }
        state.faults = faults;
    }

    /// Closes the port and every open connection for `outage`, then listens again on the same port.
    pub fn go_down_for(&self, outage: Duration) {
        let Some(runtime) = self.runtime.as_ref() else { return };
        if let Some(server) = self.server.lock().expect("server").take() {
            server.abort();
            let _ = runtime.block_on(server);
        }
        std::thread::sleep(outage);
        let listener = runtime.block_on(tokio::net::TcpListener::bind(self.address)).expect("rebind the same port");
        *self.server.lock().expect("server") = Some(runtime.spawn(serve(listener, self.state.clone(), self.tls.clone())));
    }
}

impl Drop for FakeFirehose {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Accepts connections until aborted; aborting it also ends every connection it serves.
async fn serve(listener: tokio::net::TcpListener, state: Arc<Mutex<State>>, tls: Option<tokio_rustls::TlsAcceptor>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let state = state.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            match tls {
                // A client that does not trust the certificate ends the handshake: nothing to serve.
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve_connection(stream, state).await;
                    }
                }
                None => serve_connection(stream, state).await,
            }
        });
    }
}

async fn serve_connection<IO>(stream: IO, state: Arc<Mutex<State>>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let state = state.clone();
        async move {
            match handle(state, request).await {
                Answer::Reply(response) => Ok::<_, std::io::Error>(response),
                Answer::Reset => Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "fault: reset")),
            }
        }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
}

/// A private certificate authority and a certificate it signed for `localhost` and 127.0.0.1,
/// made for one test.
pub struct TestCertificate {
    pub ca_pem: String,
    leaf_der: tokio_rustls::rustls::pki_types::CertificateDer<'static>,
    key_der: tokio_rustls::rustls::pki_types::PrivateKeyDer<'static>,
}

impl TestCertificate {
    pub fn new() -> TestCertificate {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "tailhose test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("leaf parameters");
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).expect("leaf certificate");
        TestCertificate {
            ca_pem: ca.pem(),
            leaf_der: leaf.der().clone(),
            key_der: tokio_rustls::rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into(),
        }
    }
}

async fn handle(state: Arc<Mutex<State>>, request: Request<Incoming>) -> Answer {
    let target = request.headers().get("x-amz-target").and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned();
    let Ok(collected) = request.into_body().collect().await else {
        return Answer::Reply(error(StatusCode::BAD_REQUEST, "SerializationException", "unreadable body"));
    };
    let latency = {
        let mut state = state.lock().expect("state");
        state.seen.arrived += 1;
        state.seen.in_progress += 1;
        state.seen.max_concurrent_calls = state.seen.max_concurrent_calls.max(state.seen.in_progress);
        state.faults.latency
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    state.lock().expect("state").seen.in_progress -= 1;
    let body = collected.to_bytes();
    let dialect = match target.as_str() {
        "Firehose_20150804.PutRecordBatch" => Dialect::Firehose,
        "Kinesis_20131202.PutRecords" => Dialect::Kinesis,
        _ => return Answer::Reply(error(StatusCode::BAD_REQUEST, "UnknownOperationException", &target)),
    };
    // Typed and borrowing: the fake shares the benchmark's cores with tailhose, so it should
    // not cost more than it must.
    let Ok(parsed) = serde_json::from_slice::<PutRecordsBody>(&body) else {
        return Answer::Reply(error(
            StatusCode::BAD_REQUEST,
            "SerializationException",
            "body is not a PutRecordBatch or PutRecords request",
        ));
    };
    let mut records = Vec::with_capacity(parsed.records.len());
    for record in parsed.records {
        let Ok(data) = base64::engine::general_purpose::STANDARD.decode(record.data.as_bytes()) else {
            return Answer::Reply(error(StatusCode::BAD_REQUEST, "SerializationException", "Data is not base64"));
        };
        let key = match (dialect, record.partition_key) {
            (Dialect::Firehose, _) => None,
            (Dialect::Kinesis, Some(key)) => {
                Some(RecordKey { partition_key: key.into_owned(), explicit_hash_key: record.explicit_hash_key.map(Cow::into_owned) })
            }
            (Dialect::Kinesis, None) => {
                return Answer::Reply(error(StatusCode::BAD_REQUEST, "ValidationException", "a record has no PartitionKey"))
            }
        };
        records.push(RecordIn { data, key });
    }
    let mut state = state.lock().expect("state");
    let stream = parsed.stream.as_deref().unwrap_or_default();
    let stream = match state.seen.stream_names.iter().position(|known| known == stream) {
        Some(index) => index,
        None => {
            state.seen.stream_names.push(stream.to_owned());
            state.seen.stream_names.len() - 1
        }
    };
    answer(&mut state, records, dialect, stream as u16)
}

/// A `PutRecordBatch` or a `PutRecords` request: their records differ only by the keys.
#[derive(serde::Deserialize)]
struct PutRecordsBody<'a> {
    #[serde(rename = "DeliveryStreamName", alias = "StreamName", borrow, default)]
    stream: Option<Cow<'a, str>>,
    #[serde(rename = "Records", borrow)]
    records: Vec<RecordBody<'a>>,
}

#[derive(serde::Deserialize)]
struct RecordBody<'a> {
    #[serde(rename = "Data", borrow)]
    data: Cow<'a, str>,
    #[serde(rename = "PartitionKey", borrow, default)]
    partition_key: Option<Cow<'a, str>>,
    #[serde(rename = "ExplicitHashKey", borrow, default)]
    explicit_hash_key: Option<Cow<'a, str>>,
}

/// Which service the fake is for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Firehose,
    Kinesis,
}

impl Dialect {
    /// The code of a record or a call refused for the stream's throughput.
    fn throughput_code(self) -> &'static str {
        match self {
            Dialect::Firehose => "ServiceUnavailableException",
            Dialect::Kinesis => "ProvisionedThroughputExceededException",
        }
    }

    fn throughput_entry(self) -> &'static str {
        match self {
            Dialect::Firehose => r#"{"ErrorCode":"ServiceUnavailableException","ErrorMessage":"Slow down."}"#,
            Dialect::Kinesis => {
                r#"{"ErrorCode":"ProvisionedThroughputExceededException","ErrorMessage":"Rate exceeded for shard shardId-000000000000 in stream conect under account 123456789012."}"#
            }
        }
    }

    /// Whether a call of `records` breaks the service's limits.
    fn breaks_limits(self, records: &[RecordIn]) -> bool {
        if records.is_empty() || records.len() > 500 {
            return true;
        }
        match self {
            Dialect::Firehose => {
                records.iter().map(|record| record.data.len()).sum::<usize>() > 4 * 1024 * 1024
                    || records.iter().any(|record| record.data.len() > 1000 * 1024)
            }
            Dialect::Kinesis => {
                let size = |record: &RecordIn| record.data.len() + record.key.as_ref().map_or(0, |key| key.partition_key.len());
                let bad_key =
                    |record: &RecordIn| record.key.as_ref().is_none_or(|key| !(1..=256).contains(&key.partition_key.chars().count()));
                records.iter().any(bad_key)
                    || records.iter().map(size).sum::<usize>() > 5 * 1024 * 1024
                    || records.iter().any(|record| size(record) > 1024 * 1024)
            }
        }
    }

    fn billing_unit(self) -> u64 {
        match self {
            Dialect::Firehose => 5 * 1024,
            Dialect::Kinesis => 25 * 1024,
        }
    }
}

/// A Kinesis record's keys.
struct RecordKey {
    partition_key: String,
    explicit_hash_key: Option<String>,
}

impl RecordKey {
    /// The shard of `shards` this record goes to: by its explicit hash key, or the MD5 of its
    /// partition key, as Kinesis places records on evenly split hash key ranges.
    fn shard(&self, shards: u32) -> usize {
        use md5::Digest;
        let hash = match self.explicit_hash_key.as_deref().and_then(|key| key.parse::<u128>().ok()) {
            Some(hash) => hash,
            None => u128::from_be_bytes(md5::Md5::digest(self.partition_key.as_bytes()).into()),
        };
        (((hash >> 64) * u128::from(shards.max(1))) >> 64) as usize
    }
}

struct RecordIn {
    data: Vec<u8>,
    /// As a Kinesis stream.
    key: Option<RecordKey>,
}

/// The lines a record accepted carries: an aggregated record's user records, else itself.
///
/// An aggregated record sent with a partition key other than its table's is read as a KCL
/// consumer reads it on a stream of several shards: the consumer of the shard it landed on keeps
/// only the user records whose key hashes into that shard, so its lines are lost (none here,
/// whatever the shard count, so that every test with aggregation catches it).
fn lines_of(dialect: Dialect, data: Vec<u8>, sent_with: Option<&str>) -> Vec<Vec<u8>> {
    if dialect == Dialect::Kinesis && data.starts_with(&tailhose::sink::aggregation::MAGIC) {
        if let Ok((keys, records)) = tailhose::sink::aggregation::deaggregate(&data) {
            if sent_with.is_some_and(|key| keys.iter().any(|table_key| table_key != key)) {
                return Vec::new();
            }
            return records;
        }
    }
    vec![data]
}

fn answer(state: &mut State, records: Vec<RecordIn>, dialect: Dialect, stream: u16) -> Answer {
    let faults = state.faults;
    if faults.missing_stream.is_some_and(|missing| state.seen.stream_names[usize::from(stream)] == missing) {
        state.seen.calls += 1;
        state.seen.refused_calls += 1;
        return Answer::Reply(error(StatusCode::BAD_REQUEST, "ResourceNotFoundException", "Stream not found."));
    }
    if let Some((throttled, until)) = faults.throttle_stream_until {
        if state.seen.stream_names[usize::from(stream)] == throttled && state.started.elapsed() < until {
            state.seen.calls += 1;
            state.seen.refused_calls += 1;
            return Answer::Reply(error(StatusCode::BAD_REQUEST, dialect.throughput_code(), "Slow down."));
        }
    }
    let call_roll = faults.random_seed.map(|_| next_random(&mut state.random) % 100);
    let seen = &mut state.seen;
    seen.calls += 1;
    seen.call_times.push(Instant::now());
    let calls = seen.calls;
    let bytes: usize = records.iter().map(|record| record.data.len()).sum();
    let largest = records.iter().map(|record| record.data.len()).max().unwrap_or(0);
    seen.max_records_in_call = seen.max_records_in_call.max(records.len());
    seen.max_bytes_in_call = seen.max_bytes_in_call.max(bytes);
    seen.max_record_bytes = seen.max_record_bytes.max(largest);
    if dialect.breaks_limits(&records) {
        seen.limit_violations += 1;
        return Answer::Reply(error(StatusCode::BAD_REQUEST, "InvalidArgumentException", "PutRecordBatch or PutRecords limits exceeded"));
    }
    if let Some(marker) = faults.reject_records_containing {
        let holds_marker = |data: &[u8]| data.windows(marker.len()).any(|window| window == marker.as_bytes());
        // An aggregated record is refused for a user record of its own, as a destination would.
        let refused = records.iter().position(|record| lines_of(dialect, record.data.clone(), None).iter().any(|line| holds_marker(line)));
        if let Some(index) = refused {
            seen.refused_calls += 1;
            let message = format!("Records[{index}] is not valid for this stream");
            return Answer::Reply(error(StatusCode::BAD_REQUEST, "InvalidArgumentException", &message));
        }
    }
    let every = |n: Option<u64>| n.is_some_and(|n| calls % n == 0);
    let refusal = match faults.refuse_all {
        Some(Refusal::StreamNotFound) => Some(error(
            StatusCode::BAD_REQUEST,
            "ResourceNotFoundException",
            match dialect {
                Dialect::Firehose => "Firehose test-fluentd-firehose under account 123456789012 not found.",
                Dialect::Kinesis => "Stream conect under account 123456789012 not found.",
            },
        )),
        Some(Refusal::BadCredentials) => {
            Some(error(StatusCode::BAD_REQUEST, "UnrecognizedClientException", "The security token included in the request is invalid."))
        }
        None => None,
    };
    if let Some(response) = refusal {
        seen.refused_calls += 1;
        return Answer::Reply(response);
    }
    if every(faults.reset_every_nth_call) || call_roll.is_some_and(|roll| roll < 5) {
        seen.refused_calls += 1;
        return Answer::Reset;
    }
    if let Some((n, status)) = faults.http_error_every_nth_call {
        if calls % n == 0 {
            seen.refused_calls += 1;
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Answer::Reply(error(status, "InternalFailure", "fault: server error"));
        }
    }
    if let Some(noise) = faults.noise.filter(|noise| noise.throttled_calls > 0.0 || noise.failed_calls > 0.0) {
        // One draw decides both, so a call is never refused twice over.
        let roll = unit(next_random(&mut state.noise_random));
        if roll < noise.throttled_calls {
            seen.refused_calls += 1;
            seen.noise_throttled_calls += 1;
            return Answer::Reply(error(StatusCode::BAD_REQUEST, dialect.throughput_code(), "Slow down."));
        }
        if roll < noise.throttled_calls + noise.failed_calls {
            seen.refused_calls += 1;
            seen.noise_failed_calls += 1;
            return Answer::Reply(error(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", "fault: internal failure"));
        }
    }
    if call_roll.is_some_and(|roll| (5..10).contains(&roll)) {
        seen.refused_calls += 1;
        return Answer::Reply(error(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", "fault: server error"));
    }
    if every(faults.throttle_every_nth_call) || call_roll.is_some_and(|roll| (10..20).contains(&roll)) {
        seen.refused_calls += 1;
        return Answer::Reply(error(StatusCode::BAD_REQUEST, dialect.throughput_code(), "Slow down."));
    }
    if every(faults.limit_exceeded_every_nth_call) {
        seen.refused_calls += 1;
        return Answer::Reply(error(StatusCode::BAD_REQUEST, "LimitExceededException", "Rate exceeded."));
    }
    let quota = if faults.quota.is_some() || faults.quota_change.is_some() {
        let since_start = state.started.elapsed();
        let index = since_start.as_secs();
        if state.window.index != index {
            state.window = WindowUse { index, ..WindowUse::default() };
            state.shard_windows.fill(WindowUse { index, ..WindowUse::default() });
        }
        faults.quota_at(since_start)
    } else {
        None
    };
    if let Some(quota) = quota {
        if state.window.calls >= quota.calls_per_sec {
            state.seen.refused_calls += 1;
            state.seen.quota_throttled_calls += 1;
            state.seen.quota_throttled_at.push(Instant::now());
            return Answer::Reply(error(StatusCode::BAD_REQUEST, dialect.throughput_code(), "Slow down."));
        }
        state.window.calls += 1;
    }
    let record_noise = faults.noise.filter(|noise| noise.refused_records > 0.0);
    // The answer's entries, written as JSON text as they are decided.
    let mut responses = String::with_capacity(records.len() * 240);
    let now = Instant::now();
    let mut failed = 0;
    let mut over_quota = false;
    let mut lines_in_call = 0;
    for RecordIn { data, key } in records {
        state.seen.record_attempts += 1;
        let random_failure = faults.random_seed.is_some() && next_random(&mut state.random) % 10 == 0;
        // Refused at random before the quota is looked at: such a record takes none of it.
        let noise_code = record_noise
            .and_then(|noise| (unit(next_random(&mut state.noise_random)) < noise.refused_records).then_some(noise.record_code));
        // A Kinesis stream's budgets are its shards', and count the partition key.
        let shard = key.as_ref().map(|key| key.shard(faults.shards));
        let used = data.len() as u64 + key.as_ref().map_or(0, |key| key.partition_key.len() as u64);
        let window = match shard {
            Some(shard) => &mut state.shard_windows[shard],
            None => &mut state.window,
        };
        let past_quota = noise_code.is_none()
            && quota.is_some_and(|quota| window.records + 1 > quota.records_per_sec || window.bytes + used > quota.bytes_per_sec);
        if !past_quota && noise_code.is_none() && quota.is_some() {
            window.records += 1;
            window.bytes += used;
        }
        over_quota |= past_quota;
        let seen = &mut state.seen;
        if !responses.is_empty() {
            responses.push(',');
        }
        if let Some(code) = noise_code {
            failed += 1;
            seen.noise_refused_records += 1;
            responses.push_str(match code {
                EntryCode::ServiceUnavailable => dialect.throughput_entry(),
                EntryCode::InternalFailure => r#"{"ErrorCode":"InternalFailure","ErrorMessage":"fault: internal failure"}"#,
            });
        } else if faults.fail_every_nth_record.is_some_and(|n| seen.record_attempts % n == 0) || random_failure || past_quota {
            failed += 1;
            responses.push_str(dialect.throughput_entry());
        } else {
            match shard {
                // As long as AWS's (about 220 characters), so that reading answers costs what it does there.
                None => {
                    let _ = write!(responses, r#"{{"RecordId":"{RECORD_ID_PREFIX}{:060}"}}"#, seen.accepted.len());
                }
                Some(shard) => {
                    let _ = write!(responses, r#"{{"SequenceNumber":"49{:054}","ShardId":"shardId-{shard:012}"}}"#, seen.accepted.len());
                    if seen.shard_records.len() <= shard {
                        seen.shard_records.resize(shard + 1, 0);
                    }
                    seen.shard_records[shard] += 1;
                    seen.kinesis_records += 1;
                }
            }
            seen.billed_units += used.div_ceil(dialect.billing_unit()).max(1);
            seen.last_accepted_at = Some(now);
            for line in lines_of(dialect, data, key.as_ref().map(|key| key.partition_key.as_str())) {
                lines_in_call += 1;
                seen.accepted_at.push(now);
                seen.accepted.push(line);
                seen.accepted_streams.push(stream);
                if let Some(key) = &key {
                    seen.partition_keys.push(key.partition_key.clone());
                }
            }
        }
    }
    state.seen.max_lines_in_call = state.seen.max_lines_in_call.max(lines_in_call);
    state.seen.failed_entries += failed;
    if over_quota {
        state.seen.quota_throttled_calls += 1;
        state.seen.quota_throttled_at.push(now);
    }
    let reply = match dialect {
        Dialect::Firehose => format!(r#"{{"FailedPutCount":{failed},"Encrypted":false,"RequestResponses":[{responses}]}}"#),
        Dialect::Kinesis => format!(r#"{{"FailedRecordCount":{failed},"Records":[{responses}],"EncryptionType":"NONE"}}"#),
    };
    if every(faults.tear_every_nth_call) {
        state.seen.accepted_in_torn_calls += lines_in_call as u64;
        let text = reply;
        let torn = TornBody { first: Some(Bytes::from(text[..text.len() / 2].to_owned())) };
        let mut response = Response::new(BoxBody::new(torn));
        response.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"));
        return Answer::Reply(response);
    }
    Answer::Reply(json(StatusCode::OK, reply))
}

/// xorshift64: reproducible faults from a seed.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// The start of `Noise`'s stream. Its seed is mixed with a constant so that the same number
/// given to `random_seed` and `Noise::seed` does not make both streams draw alike.
fn noise_stream(noise: Option<Noise>) -> u64 {
    (noise.map_or(1, |noise| noise.seed) ^ 0x9e37_79b9_7f4a_7c15) | 1
}

/// A draw of xorshift64 as a number in `[0, 1)`, from its 53 high bits.
fn unit(draw: u64) -> f64 {
    (draw >> 11) as f64 / (1u64 << 53) as f64
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"));
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let mut response = json(status, serde_json::json!({"__type": code, "message": message}).to_string());
    if let Ok(value) = hyper::header::HeaderValue::from_str(code) {
        response.headers_mut().insert("x-amzn-errortype", value);
    }
    response
}
