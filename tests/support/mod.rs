//! Shared helpers for the end-to-end tests: the real `tailhose` binary, a real moto server on a
//! loopback port, the seed's record generator, and reading back what arrived.
//!
//! A missing peer is a failure, never a skip: run `scripts/install-test-peers` (the README's test
//! command does) to get moto into `.venv`.

#![allow(dead_code)]

pub mod fake_firehose;
pub mod fake_imds;
pub mod proxy;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const REGION: &str = "ap-northeast-2";
pub const BUCKET: &str = "sw-test123";
pub const STREAM: &str = "test-fluentd-firehose";
/// The Kinesis data stream of the Kinesis sink's tests.
pub const KINESIS_STREAM: &str = "conect";

/// A sink a test runs against: each sink-facing fault test runs once per kind, through the same
/// flusher, pacing, retries and acknowledgement ([`for_every_sink!`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    Firehose,
    KinesisStreams,
    /// Kinesis Data Streams with KPL aggregation.
    KinesisAggregated,
}

impl SinkKind {
    /// The lines of a `[sinks.events]` table that make this kind deliver to `endpoint`.
    pub fn sink_lines(self, endpoint: &str) -> String {
        match self {
            SinkKind::Firehose => format!("type = \"firehose\"\ndelivery_stream = \"{STREAM}\"\nregion = \"{REGION}\"\nendpoint_url = \"{endpoint}\""),
            SinkKind::KinesisStreams | SinkKind::KinesisAggregated => format!(
                "type = \"kinesis_streams\"\nstream_name = \"{KINESIS_STREAM}\"\nregion = \"{REGION}\"\nendpoint_url = \"{endpoint}\"\naggregate = {}",
                self == SinkKind::KinesisAggregated
            ),
        }
    }

    /// How many seed records make as many calls as `records` make one record per entry: an
    /// aggregated call carries about 14,000 seed records (2 MiB), not 500, and a fault set for
    /// every n-th call needs calls to happen.
    pub fn lines_for_calls_of(self, records: u64) -> u64 {
        match self {
            SinkKind::Firehose | SinkKind::KinesisStreams => records,
            SinkKind::KinesisAggregated => records * 30,
        }
    }

    /// Words of the fix logged when the stream does not exist.
    pub fn missing_stream_fix(self) -> &'static str {
        match self {
            SinkKind::Firehose => "create the delivery stream",
            SinkKind::KinesisStreams | SinkKind::KinesisAggregated => "create the stream, or fix `stream_name`",
        }
    }
}

/// `for_every_sink! { fn name(sink) { ... } }`: a module `name` with one test per [`SinkKind`]
/// (`name::firehose`, `name::kinesis_streams`, `name::kinesis_streams_aggregated`), each running
/// the body with its kind. A fault test written once runs for every sink.
#[macro_export]
macro_rules! for_every_sink {
    ($(#[$meta:meta])* fn $name:ident($sink:ident) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($sink: $crate::support::SinkKind) $body

            #[test]
            fn firehose() {
                run($crate::support::SinkKind::Firehose)
            }

            #[test]
            fn kinesis_streams() {
                run($crate::support::SinkKind::KinesisStreams)
            }

            #[test]
            fn kinesis_streams_aggregated() {
                run($crate::support::SinkKind::KinesisAggregated)
            }
        }
    };
}

/// A server on 127.0.0.1 that hands each connection, on a thread of its own, to `serve` with
/// the list every request is recorded in (`METHOD target`); returns its address and that list.
/// Its threads end with the test process.
pub fn serve_connections(
    serve: fn(std::net::TcpStream, &std::sync::Mutex<Vec<String>>) -> std::io::Result<()>,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback server");
    let address = listener.local_addr().expect("its address");
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = requests.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let recorded = recorded.clone();
            // A failed exchange is the client's to report, as with a real server.
            std::thread::spawn(move || {
                let _ = serve(client, &recorded);
            });
        }
    });
    (address, requests)
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn venv() -> PathBuf {
    std::env::var_os("TAILHOSE_VENV").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".venv"))
}

fn venv_program(name: &str) -> PathBuf {
    let program = venv().join("bin").join(name);
    assert!(
        program.exists(),
        "{} is missing: the end-to-end tests need moto and boto3; run scripts/install-test-peers (or set TAILHOSE_VENV)",
        program.display()
    );
    program
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).map(|address| address.port()).expect("a free loopback port")
}

/// A moto server on 127.0.0.1, killed when dropped.
pub struct Moto {
    child: Child,
    pub endpoint: String,
    _log_dir: tempfile::TempDir,
}

impl Moto {
    /// Starts moto and creates the seed's bucket and delivery stream in it.
    pub fn start() -> Moto {
        let port = free_port();
        let log_dir = tempfile::tempdir().expect("tempdir");
        let log = std::fs::File::create(log_dir.path().join("moto.log")).expect("moto log");
        let child = Command::new(venv_program("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("moto_server starts");
        let moto = Moto { child, endpoint: format!("http://127.0.0.1:{port}"), _log_dir: log_dir };
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen on {address} within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto.peer(&["setup", "--bucket", BUCKET, "--stream", STREAM]);
        moto
    }

    /// Creates a delivery stream named `stream` that delivers to a bucket of its own, `bucket`.
    pub fn create_delivery_stream(&self, stream: &str, bucket: &str) {
        self.peer(&["setup", "--bucket", bucket, "--stream", stream]);
    }

    /// Creates a delivery stream named `stream` that delivers to Elasticsearch.
    pub fn create_elasticsearch_stream(&self, stream: &str) {
        self.peer(&["setup-es", "--bucket", BUCKET, "--stream", stream]);
    }

    /// Creates a Kinesis data stream of `shards` shards.
    pub fn create_kinesis_stream(&self, stream: &str, shards: u32) {
        self.peer(&["setup-kinesis", "--stream", stream, "--shards", &shards.to_string()]);
    }

    /// Every line of every record in `stream`, read from each shard's start and deaggregated by
    /// AWS's KPL library (see moto_peer.py).
    pub fn kinesis_records(&self, stream: &str) -> KinesisDelivered {
        let answer: serde_json::Value = serde_json::from_str(&self.peer(&["kinesis-records", "--stream", stream])).expect("json");
        let records = answer["records"]
            .as_array()
            .expect("records")
            .iter()
            .map(|record| KinesisLine {
                line: record["line"].as_str().expect("a line").to_owned(),
                partition_key: record["partition_key"].as_str().expect("a partition key").to_owned(),
                shard: record["shard"].as_str().expect("a shard").to_owned(),
                aggregated: record["aggregated"].as_bool().expect("aggregated or not"),
            })
            .collect();
        KinesisDelivered { kinesis_records: answer["kinesis_records"].as_u64().expect("a count"), records }
    }

    fn peer(&self, args: &[&str]) -> String {
        let output = Command::new(venv_program("python"))
            .arg(repo_root().join("tests/support/moto_peer.py"))
            .args(args)
            .args(["--endpoint", &self.endpoint, "--region", REGION])
            .output()
            .expect("moto_peer.py runs");
        assert!(output.status.success(), "moto_peer.py {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("utf-8 output")
    }

    /// Every record in the bucket (one per line of every object) and the object count.
    pub fn delivered(&self) -> Delivered {
        self.delivered_in(BUCKET)
    }

    /// Every record in `bucket`, as [`Moto::delivered`] reads the seed's.
    pub fn delivered_in(&self, bucket: &str) -> Delivered {
        let answer: serde_json::Value = serde_json::from_str(&self.peer(&["records", "--bucket", bucket])).expect("json");
        let records =
            answer["records"].as_array().expect("records").iter().map(|line| line.as_str().unwrap_or_default().to_owned()).collect();
        let keys = answer["keys"].as_array().expect("keys").iter().map(|key| key.as_str().unwrap_or_default().to_owned()).collect();
        Delivered {
            objects: answer["objects"].as_u64().expect("objects"),
            gzip_objects: answer["gzip_objects"].as_u64().expect("gzip objects"),
            records,
            sample_keys: keys,
        }
    }

    /// Polls the bucket until `done` holds or `timeout` passes; returns the last look.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&Delivered) -> bool) -> Delivered {
        let deadline = Instant::now() + timeout;
        loop {
            let delivered = self.delivered();
            if done(&delivered) || Instant::now() >= deadline {
                return delivered;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a Kinesis data stream holds, as a consumer reads it.
pub struct KinesisDelivered {
    /// Kinesis records (an aggregated record counts once).
    pub kinesis_records: u64,
    /// One per line of every user record.
    pub records: Vec<KinesisLine>,
}

pub struct KinesisLine {
    pub line: String,
    pub partition_key: String,
    pub shard: String,
    /// Whether it came out of a KPL aggregated record.
    pub aggregated: bool,
}

impl KinesisDelivered {
    /// How many times each `seq` arrived.
    pub fn seq_counts(&self) -> BTreeMap<u64, u32> {
        count_seqs(self.records.iter().map(|record| record.line.as_bytes()))
    }
}

/// What a bucket or output folder holds.
pub struct Delivered {
    pub objects: u64,
    /// Objects of gzip members, decompressed into `records`.
    pub gzip_objects: u64,
    pub records: Vec<String>,
    pub sample_keys: Vec<String>,
}

impl Delivered {
    /// How many times each `seq` arrived.
    pub fn seq_counts(&self) -> BTreeMap<u64, u32> {
        count_seqs(self.records.iter().map(String::as_bytes))
    }

    pub fn distinct(&self) -> usize {
        self.seq_counts().len()
    }

    /// Deliveries beyond the first of each record.
    pub fn duplicates(&self) -> u64 {
        self.seq_counts().values().map(|&count| u64::from(count) - 1).sum()
    }
}

/// The `seq` of a delivered seed record.
pub fn seq_of(record: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(record);
    let value: serde_json::Value =
        serde_json::from_slice(record).unwrap_or_else(|error| panic!("delivered record is not JSON ({error}): {text}"));
    value["seq"].as_u64().unwrap_or_else(|| panic!("delivered record has no seq: {text}"))
}

/// How many times each `seq` appears among the lines of `records` (a packed record holds several).
pub fn count_seqs<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> BTreeMap<u64, u32> {
    let mut counts = BTreeMap::new();
    for record in records {
        for line in record.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
            *counts.entry(seq_of(line)).or_insert(0) += 1;
        }
    }
    counts
}

/// One record of the seed's generator (`data_generator.py`), with a unique `seq`, written the way
/// Python's `json.dumps` writes it.
pub fn seed_record(seq: u64) -> String {
    let mut state = seq.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    let mut next = |bound: u64| {
        state ^= state >> 33;
        state = state.wrapping_mul(0xff51_afd7_ed55_8ccd);
        state ^= state >> 33;
        state % bound
    };
    let (board_id, playtime, user_id) = (next(1_000_001), next(16), next(1_000_001));
    let (month, day, hour, minute, second) = (1 + next(12), 1 + next(28), next(24), next(60), next(60));
    format!(
        "{{\"board_id\": {board_id}, \"playtime\": {playtime}, \"user_id\": {user_id}, \"timestamp\": \"2019-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z\", \"interest\": \"test_fluentd_firehose\", \"seq\": {seq}}}"
    )
}

/// Appends records `range` to `path` in bursts of `burst` lines, pausing `pause` between bursts,
/// like the seed's generator (which wrote 100 lines a second).
pub fn write_seed_records(path: &Path, range: std::ops::Range<u64>, burst: u64, pause: Duration) {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open log for append");
    let mut seq = range.start;
    while seq < range.end {
        let end = (seq + burst).min(range.end);
        let mut lines = String::new();
        for record in seq..end {
            lines.push_str(&seed_record(record));
            lines.push('\n');
        }
        file.write_all(lines.as_bytes()).expect("write burst");
        seq = end;
        if seq < range.end {
            std::thread::sleep(pause);
        }
    }
}

/// How long the test daemons' `/health` waits before calling a stalled route unhealthy.
pub const UNHEALTHY_AFTER: &str = "2s";

/// A folder with a tailhose configuration, its data_dir and its log folder.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("source")).expect("source folder");
        Workspace { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_file(&self) -> PathBuf {
        self.path().join("source/test_fluentd_firehose.log")
    }

    pub fn config(&self) -> PathBuf {
        self.path().join("tailhose.toml")
    }

    /// The seed's set-up: `source/*.log`, JSON, a 1 s flush, to moto's Firehose.
    pub fn write_firehose_config(&self, moto: &Moto, extra_sink_lines: &str) {
        self.write_config_for_endpoint(&moto.endpoint, "", extra_sink_lines);
    }

    /// The seed's set-up against any Firehose endpoint, with extra lines for the source and sink tables.
    pub fn write_config_for_endpoint(&self, endpoint: &str, extra_source_lines: &str, extra_sink_lines: &str) {
        self.write_config_for_sink(SinkKind::Firehose, endpoint, extra_source_lines, extra_sink_lines);
    }

    /// The seed's set-up delivering to a sink of `kind` at `endpoint`.
    pub fn write_config_for_sink(&self, kind: SinkKind, endpoint: &str, extra_source_lines: &str, extra_sink_lines: &str) {
        let sink_lines = kind.sink_lines(endpoint);
        let text = format!(
            r#"data_dir = "state"
shutdown_timeout = "5s"

[admin]
address = "127.0.0.1:0"
unhealthy_after = "{UNHEALTHY_AFTER}"

[sources.conect]
paths = ["source/*.log"]
format = "json"
read_from_head = true
refresh_interval = "1s"
poll_interval = "50ms"
{extra_source_lines}

[sinks.events]
inputs = ["conect"]
{sink_lines}
flush_interval = "1s"
append_newline = true
{extra_sink_lines}
"#
        );
        std::fs::write(self.config(), text).expect("write config");
    }

    pub fn tailhose(&self, args: &[&str]) -> Command {
        // `TAILHOSE_BIN` runs another build (benchmarks compare two builds in one sitting).
        let binary = std::env::var_os("TAILHOSE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_tailhose").into());
        let mut command = Command::new(binary);
        command
            .args(args)
            .current_dir(self.path())
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", self.path().join("no-aws-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.path().join("no-aws-credentials"))
            .env_remove("AWS_PROFILE")
            .env("TAILHOSE_LOG", "info");
        // The peers are on loopback: a proxy set for the machine running the tests must not
        // stand between them (the proxy test sets its own).
        for variable in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"] {
            command.env_remove(variable);
        }
        command
    }

    /// Starts `tailhose run` in the background; its log goes to `daemon-N.log`.
    pub fn start_daemon(&self) -> Daemon {
        self.start_daemon_with(&[])
    }

    /// [`Workspace::start_daemon`], with options before `run` (`--log-format json`).
    pub fn start_daemon_with(&self, global_options: &[&str]) -> Daemon {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let start = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log_path = self.path().join(format!("daemon-{start}.log"));
        let log = std::fs::File::create(&log_path).expect("daemon log");
        let config = self.config();
        let child = self
            .tailhose(&[global_options, &["run", "--config", config.to_str().expect("utf-8 path")]].concat())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tailhose starts");
        Daemon { child, log_path }
    }

    /// Runs a tailhose command to completion.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.tailhose(args).output().expect("tailhose runs")
    }

    /// `tailhose run --once` with the workspace's configuration; fails the test unless it exits 0.
    pub fn run_once(&self) -> std::process::Output {
        let output = self.run(&["run", "--config", "tailhose.toml", "--once"]);
        assert!(output.status.success(), "run --once failed: {}", String::from_utf8_lossy(&output.stderr));
        output
    }

    /// Rewrites the configuration file through `edit`.
    pub fn rewrite_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(self.config()).expect("read config");
        std::fs::write(self.config(), edit(text)).expect("write config");
    }
}

pub struct Daemon {
    child: Child,
    pub log_path: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then the exit status (fails the test if it takes longer than `timeout`).
    pub fn terminate(mut self, timeout: Duration) -> ExitStatus {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(sent.success(), "kill -TERM failed");
        self.wait_for_exit(timeout)
    }

    /// Waits for the daemon to exit on its own (fails the test after `timeout`).
    pub fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "tailhose did not exit within {timeout:?}; log: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status if the daemon has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait")
    }

    /// kill -9.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it returns `Some`, failing the test with `what` after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.1 GET on loopback: `(status, body)`, or `None` when nothing answers.
pub fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    Some((status, body))
}

impl Workspace {
    /// The admin endpoint's address, once the daemon has written it to its data_dir.
    pub fn admin_address(&self) -> String {
        let path = self.path().join("state/admin-address");
        wait_until(Duration::from_secs(20), "the admin endpoint's address", || {
            std::fs::read_to_string(&path).ok().map(|text| text.trim().to_owned()).filter(|text| !text.is_empty())
        })
    }
}
