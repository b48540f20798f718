//! The admin endpoint: what a running daemon tells its operator over HTTP.
//!
//! - `GET /metrics`: Prometheus text format ([`metrics`]).
//! - `GET /health`: `200` while every route is delivering or idle; `503` with the reasons when
//!   a route holds pending records and none was acknowledged for `admin.unhealthy_after`.
//! - `GET /status`: JSON [`StatusReport`], what `tailhose status` prints as a table.
//!
//! Guarantees: the endpoint only reads. It never blocks the pipeline: counters are atomics, and
//! the queue reads it needs run on a blocking thread. It listens on loopback by default and has
//! no authentication; `admin.enabled = false` turns it off.
//!
//! The CLI does not talk to sled while a daemon runs (sled allows one process per database); a
//! running daemon is observed through this endpoint instead. The daemon writes its PID to
//! `data_dir/tailhose.pid` and the endpoint's address to `data_dir/admin-address`.

pub mod client;
pub mod metrics;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::events::{EventCounts, Events, SinkProblem};
use crate::queue::{now_ms, PendingSummary, QueueStats, RouteQueue};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("the admin endpoint cannot listen on {address}: {source}; set [admin] address to a free port, or enabled = false")]
    Bind { address: SocketAddr, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Names of the files through which a running daemon can be found.
pub const PID_FILE: &str = "tailhose.pid";
pub const ADDRESS_FILE: &str = "admin-address";

/// What the endpoint reads from.
pub struct AdminState {
    pub data_dir: PathBuf,
    pub events: Arc<Events>,
    pub routes: Vec<RouteQueue>,
    pub started_at_ms: u64,
    pub unhealthy_after: Duration,
}

/// `/status` and `tailhose status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub pid: u32,
    pub data_dir: PathBuf,
    pub uptime_seconds: u64,
    pub health: HealthReport,
    pub routes: Vec<QueueStats>,
    /// Counters since the daemon started.
    pub events: EventCounts,
    pub last_sink_problem: Option<SinkProblem>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HealthReport {
    pub healthy: bool,
    /// Why not, one line per route that is stuck.
    pub reasons: Vec<String>,
}

/// Whether the routes are making progress: a route is stuck when it holds pending records and
/// nothing was acknowledged for `unhealthy_after`, counting from the latest of: the last
/// acknowledgement, when the oldest pending record was read, and the daemon's start.
pub fn assess_health(routes: &[(String, PendingSummary)], now_ms: u64, started_at_ms: u64, unhealthy_after: Duration) -> HealthReport {
    let mut reasons = Vec::new();
    for (route, summary) in routes {
        if summary.records == 0 {
            continue;
        }
        let progress_at = summary.last_ack_ms.unwrap_or(0).max(summary.oldest_created_at_ms.unwrap_or(0)).max(started_at_ms);
        let stalled_ms = now_ms.saturating_sub(progress_at);
        if stalled_ms > unhealthy_after.as_millis() as u64 {
            reasons.push(format!("route {route}: {} records pending and none acknowledged for {}s", summary.records, stalled_ms / 1000));
        }
    }
    HealthReport { healthy: reasons.is_empty(), reasons }
}

impl AdminState {
    fn summaries(&self) -> Vec<(String, PendingSummary)> {
        self.routes.iter().map(|queue| (queue.name().to_owned(), queue.pending_summary())).collect()
    }

    pub fn health(&self) -> HealthReport {
        assess_health(&self.summaries(), now_ms(), self.started_at_ms, self.unhealthy_after)
    }

    /// Reads the queue (sled and file sizes): call from a blocking thread.
    pub fn status(&self) -> Result<StatusReport, crate::queue::QueueError> {
        let routes = self.routes.iter().map(RouteQueue::stats).collect::<Result<Vec<_>, _>>()?;
        Ok(StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            data_dir: self.data_dir.clone(),
            uptime_seconds: now_ms().saturating_sub(self.started_at_ms) / 1000,
            health: self.health(),
            routes,
            events: self.events.snapshot(),
            last_sink_problem: self.events.last_sink_problem(),
        })
    }
}

/// Binds the endpoint's address, so that a taken port is reported before anything starts.
pub fn bind(address: SocketAddr) -> Result<tokio::net::TcpListener, AdminError> {
    if !address.ip().is_loopback() {
        tracing::warn!(%address, "the admin endpoint has no authentication and is bound beyond loopback: anyone who reaches it reads the queue's status and file paths");
    }
    let bind_error = |source| AdminError::Bind { address, source };
    let listener = std::net::TcpListener::bind(address).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    tokio::net::TcpListener::from_std(listener).map_err(bind_error)
}

/// Writes the PID and the endpoint's address into `data_dir`; [`remove_daemon_files`] undoes it.
pub fn write_daemon_files(data_dir: &Path, address: Option<SocketAddr>) -> Result<(), AdminError> {
    let write = |name: &str, text: String| {
        let path = data_dir.join(name);
        std::fs::write(&path, text).map_err(|source| AdminError::Write { path, source })
    };
    write(PID_FILE, format!("{}\n", std::process::id()))?;
    match address {
        Some(address) => write(ADDRESS_FILE, format!("{address}\n")),
        None => {
            let _ = std::fs::remove_file(data_dir.join(ADDRESS_FILE));
            Ok(())
        }
    }
}

pub fn remove_daemon_files(data_dir: &Path) {
    for name in [PID_FILE, ADDRESS_FILE] {
        let _ = std::fs::remove_file(data_dir.join(name));
    }
}

/// The PID recorded in `data_dir`, if that process is alive.
pub fn running_pid(data_dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(data_dir.join(PID_FILE)).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// Connections served at once; more are closed at once. The endpoint shares the process's
/// descriptors with the tailer's files, so an idle client cannot take them all.
const MAX_CONNECTIONS: usize = 16;
/// A client that has not sent its request's headers by then is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves until `stop` fires. Each connection is served on its own task, at most
/// [`MAX_CONNECTIONS`] at once, each given [`HEADER_READ_TIMEOUT`] to send its request.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "admin endpoint: cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(place) = connections.clone().try_acquire_owned() else {
            tracing::debug!("admin endpoint: {MAX_CONNECTIONS} connections open; closing a new one");
            drop(stream);
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _place = place;
            let service = hyper::service::service_fn(move |request| answer(state.clone(), request));
            let io = hyper_util::rt::TokioIo::new(stream);
            let serving = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(io, service);
            if let Err(error) = serving.await {
                tracing::debug!(%error, "admin endpoint: connection ended with an error");
            }
        });
    }
}

async fn answer(state: Arc<AdminState>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET {
        return Ok(respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET is served\n".into()));
    }
    let response = match request.uri().path() {
        "/health" => {
            let health = state.health();
            let code = if health.healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            let body = if health.healthy { "ok\n".to_owned() } else { format!("{}\n", health.reasons.join("\n")) };
            respond(code, "text/plain; charset=utf-8", body)
        }
        "/status" => match tokio::task::spawn_blocking(move || state.status()).await {
            Ok(Ok(report)) => respond(StatusCode::OK, "application/json", serde_json::to_string_pretty(&report).unwrap_or_default()),
            Ok(Err(error)) => respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("cannot read the queue: {error}\n")),
            Err(error) => respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("status task failed: {error}\n")),
        },
        "/metrics" => match tokio::task::spawn_blocking(move || metrics::render(&state)).await {
            Ok(Ok(text)) => respond(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", text),
            Ok(Err(error)) => respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("cannot read the queue: {error}\n")),
            Err(error) => respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("metrics task failed: {error}\n")),
        },
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found; try /metrics, /health or /status\n".into()),
    };
    Ok(response)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::assess_health;
    use crate::queue::PendingSummary;

    const MINUTE_MS: u64 = 60_000;

    fn route(records: u64, oldest_created_at_ms: Option<u64>, last_ack_ms: Option<u64>) -> Vec<(String, PendingSummary)> {
        vec![("logs->firehose".into(), PendingSummary { records, oldest_created_at_ms, last_ack_ms, ..PendingSummary::default() })]
    }

    #[test]
    fn an_idle_route_is_healthy_however_long_ago_its_last_acknowledgement() {
        let health = assess_health(&route(0, None, Some(0)), 100 * MINUTE_MS, 0, Duration::from_secs(60));
        assert!(health.healthy);
    }

    #[test]
    fn pending_records_with_no_acknowledgement_past_the_limit_make_the_route_unhealthy() {
        let health = assess_health(&route(42, Some(MINUTE_MS), Some(MINUTE_MS)), 3 * MINUTE_MS, 0, Duration::from_secs(60));
        assert!(!health.healthy);
        assert!(health.reasons[0].contains("42 records pending"), "{:?}", health.reasons);
        assert!(health.reasons[0].contains("120s"), "{:?}", health.reasons);
    }

    #[test]
    fn records_that_just_arrived_after_a_long_idle_spell_are_not_a_stall() {
        let health = assess_health(&route(5, Some(100 * MINUTE_MS), Some(0)), 100 * MINUTE_MS + 1000, 0, Duration::from_secs(60));
        assert!(health.healthy);
    }

    #[test]
    fn a_backlog_found_at_start_up_gets_the_full_limit_from_the_start() {
        let started = 50 * MINUTE_MS;
        let health = assess_health(&route(1000, Some(0), None), started + 30_000, started, Duration::from_secs(60));
        assert!(health.healthy);
        let health = assess_health(&route(1000, Some(0), None), started + 61_000, started, Duration::from_secs(60));
        assert!(!health.healthy);
    }
}
