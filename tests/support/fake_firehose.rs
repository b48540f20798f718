//! A Firehose that the project owns, for fault injection: it speaks the JSON protocol
//! aws-sdk-firehose sends (`X-Amz-Target: Firehose_20150804.PutRecordBatch`), enforces
//! Firehose's limits (500 records, 4 MiB, 1,000 KiB a record), records every record it accepts,
//! and fails records or whole calls on a deterministic schedule.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};

/// Which calls and records fail. Counters run over the whole life of the server.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Every n-th record attempt is answered with a per-record `ServiceUnavailableException`.
    pub fail_every_nth_record: Option<u64>,
    /// Every n-th call is refused whole with `ServiceUnavailableException` (throttling).
    pub throttle_every_nth_call: Option<u64>,
}

/// What the fake saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub accepted: Vec<Vec<u8>>,
    pub calls: u64,
    pub throttled_calls: u64,
    pub record_attempts: u64,
    pub failed_entries: u64,
    pub max_records_in_call: usize,
    pub max_bytes_in_call: usize,
    pub max_record_bytes: usize,
    /// Calls refused for breaking a Firehose limit; must stay 0.
    pub limit_violations: u64,
}

struct State {
    faults: Faults,
    seen: Seen,
}

pub struct FakeFirehose {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeFirehose {
    pub fn start(faults: Faults) -> FakeFirehose {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let state = Arc::new(Mutex::new(State { faults, seen: Seen::default() }));
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind loopback");
        let address: SocketAddr = listener.local_addr().expect("address");
        let shared = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| handle(state.clone(), request));
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                });
            }
        });
        FakeFirehose { endpoint: format!("http://{address}"), state, runtime: Some(runtime) }
    }

    pub fn seen(&self) -> Seen {
        self.state.lock().expect("state").seen.clone()
    }
}

impl Drop for FakeFirehose {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn handle(state: Arc<Mutex<State>>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let target = request.headers().get("x-amz-target").and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned();
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(error(StatusCode::BAD_REQUEST, "SerializationException", "unreadable body")),
    };
    if target != "Firehose_20150804.PutRecordBatch" {
        return Ok(error(StatusCode::BAD_REQUEST, "UnknownOperationException", &target));
    }
    let Ok(parsed) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return Ok(error(StatusCode::BAD_REQUEST, "SerializationException", "body is not JSON"));
    };
    let mut records = Vec::new();
    for record in parsed["Records"].as_array().cloned().unwrap_or_default() {
        match base64::engine::general_purpose::STANDARD.decode(record["Data"].as_str().unwrap_or_default()) {
            Ok(data) => records.push(data),
            Err(_) => return Ok(error(StatusCode::BAD_REQUEST, "SerializationException", "Data is not base64")),
        }
    }
    let mut state = state.lock().expect("state");
    let faults = state.faults;
    let seen = &mut state.seen;
    seen.calls += 1;
    let bytes: usize = records.iter().map(Vec::len).sum();
    let largest = records.iter().map(Vec::len).max().unwrap_or(0);
    seen.max_records_in_call = seen.max_records_in_call.max(records.len());
    seen.max_bytes_in_call = seen.max_bytes_in_call.max(bytes);
    seen.max_record_bytes = seen.max_record_bytes.max(largest);
    if records.is_empty() || records.len() > 500 || bytes > 4 * 1024 * 1024 || largest > 1000 * 1024 {
        seen.limit_violations += 1;
        return Ok(error(StatusCode::BAD_REQUEST, "InvalidArgumentException", "PutRecordBatch limits exceeded"));
    }
    if faults.throttle_every_nth_call.is_some_and(|n| seen.calls % n == 0) {
        seen.throttled_calls += 1;
        return Ok(error(StatusCode::BAD_REQUEST, "ServiceUnavailableException", "Slow down."));
    }
    let mut responses = Vec::with_capacity(records.len());
    let mut failed = 0;
    for data in records {
        seen.record_attempts += 1;
        if faults.fail_every_nth_record.is_some_and(|n| seen.record_attempts % n == 0) {
            failed += 1;
            responses.push(serde_json::json!({"ErrorCode": "ServiceUnavailableException", "ErrorMessage": "Slow down."}));
        } else {
            responses.push(serde_json::json!({"RecordId": format!("{:056}", seen.accepted.len())}));
            seen.accepted.push(data);
        }
    }
    seen.failed_entries += failed;
    let answer = serde_json::json!({"FailedPutCount": failed, "Encrypted": false, "RequestResponses": responses});
    Ok(json(StatusCode::OK, answer.to_string()))
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"));
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let mut response = json(status, serde_json::json!({"__type": code, "message": message}).to_string());
    if let Ok(value) = hyper::header::HeaderValue::from_str(code) {
        response.headers_mut().insert("x-amzn-errortype", value);
    }
    response
}
