//! Delivery against the project's fake Firehose, which fails records and calls on purpose and
//! checks Firehose's limits on every call.

mod support;

use std::time::Duration;

use support::fake_firehose::{FakeFirehose, Faults};
use support::{SinkKind, Workspace};

for_every_sink! {
    fn partly_failed_calls_resend_only_the_failed_entries_until_all_are_accepted(sink) {
        let fake = FakeFirehose::start(Faults { fail_every_nth_record: Some(7), throttle_every_nth_call: Some(5), ..Faults::default() });
        let workspace = Workspace::new();
        // An aggregated call carries some 7,000 lines: the boundaries between batches answered
        // out of order would outnumber the resends this test counts. One call at a time leaves
        // the resends as the only disorder, as many small calls do for the other sinks.
        let in_flight = if sink == SinkKind::KinesisAggregated { "\nmax_in_flight = 1" } else { "" };
        let sink_lines = format!("retry_initial_backoff = \"10ms\"\nretry_max_backoff = \"50ms\"{in_flight}");
        workspace.write_config_for_sink(sink, &fake.endpoint, "", &sink_lines);
        let records = sink.lines_for_calls_of(3_000);
        support::write_seed_records(&workspace.log_file(), 0..records, records, Duration::ZERO);
        workspace.run_once();
        let seen = fake.seen();
        let mut seqs: Vec<u64> = seen.accepted.iter().map(|record| support::seq_of(record)).collect();
        let accepted_in_order = seqs.clone();
        seqs.sort_unstable();
        assert!(seqs == (0..records).collect::<Vec<_>>(), "every record accepted exactly once: accepted ones were never resent");
        assert!(
            seen.failed_entries > 0 && seen.refused_calls > 0,
            "faults were injected: {} entries failed, {} calls refused",
            seen.failed_entries,
            seen.refused_calls
        );
        // An aggregated record is one entry of a call, however many lines it holds.
        let entries = if sink == SinkKind::KinesisAggregated { seen.kinesis_records } else { records };
        assert_eq!(seen.record_attempts, entries + seen.failed_entries, "only failed entries were attempted again");
        assert_eq!(seen.limit_violations, 0);
        assert!(seen.max_records_in_call <= 500);
        let out_of_order = accepted_in_order.windows(2).filter(|pair| pair[0] > pair[1]).count();
        assert!(out_of_order as u64 <= seen.failed_entries, "resends are the only records out of order");
    }
}

#[test]
fn batches_never_exceed_500_records_or_4_mib_and_oversized_records_are_dead_lettered() {
    let fake = FakeFirehose::start(Faults::default());
    let workspace = Workspace::new();
    // Firehose's own ceiling (the default is half of it).
    workspace.write_config_for_endpoint(&fake.endpoint, "max_line_bytes = \"2MiB\"", "max_batch_bytes = \"4MiB\"");
    let mut content = String::new();
    for seq in 0..1_200u64 {
        // 900 KiB records: four fit in 4 MiB, five do not.
        let padding = if seq % 100 == 0 { "p".repeat(900 * 1024) } else { String::new() };
        content.push_str(&format!("{{\"seq\": {seq}, \"pad\": \"{padding}\"}}\n"));
    }
    let oversized = format!("{{\"seq\": 5000, \"pad\": \"{}\"}}\n", "o".repeat(1000 * 1024));
    content.push_str(&oversized);
    std::fs::write(workspace.log_file(), content).expect("write log");
    workspace.run_once();
    let seen = fake.seen();
    assert_eq!(seen.limit_violations, 0, "no call broke a Firehose limit: {seen:?}");
    assert!(seen.max_records_in_call <= 500 && seen.max_bytes_in_call <= 4 * 1024 * 1024);
    assert!(seen.max_bytes_in_call > 3 * 1024 * 1024, "calls were filled up to the limit: {}", seen.max_bytes_in_call);
    assert_eq!(seen.accepted.len(), 1_200, "every record that fits was delivered");
    let config = workspace.config();
    let output = workspace.run(&["queue", "dead-letters", "--config", config.to_str().expect("utf-8")]);
    let letters: Vec<serde_json::Value> =
        String::from_utf8_lossy(&output.stdout).lines().map(|line| serde_json::from_str(line).expect("json")).collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["reason"], "record_too_large");
    assert_eq!(
        letters[0]["length"].as_u64(),
        Some(oversized.len() as u64 - 1),
        "the record as read, without the newline added for sending"
    );
    assert!(
        letters[0]["detail"].as_str().is_some_and(|detail| detail.contains(&format!("{} bytes as sent", oversized.len()))),
        "{letters:?}"
    );
}

for_every_sink! {
    fn at_the_streams_quota_every_record_arrives_once_and_few_calls_are_throttled(sink) {
        at_the_quota_with(sink, "");
    }
}

/// Packed calls are as large as `max_batch_bytes` (2 MiB), eight times this stream's quota a
/// second: one such call could never be accepted whole. Calls are sized to the learned pace.
#[test]
fn at_the_streams_quota_packed_records_arrive_once_in_calls_sized_to_the_quota() {
    let seen = at_the_quota_with(SinkKind::Firehose, "pack_records = true");
    assert!(seen.calls >= 20, "calls sized to a tenth of a second of the quota: {} calls", seen.calls);
}

/// Runs 12,000 seed records into a stream taking 256 KiB/s; checks that each arrives once and
/// that the rate is learned rather than hammered.
fn at_the_quota_with(sink: SinkKind, sink_lines: &str) -> support::fake_firehose::Seen {
    use support::fake_firehose::Quota;
    let quota = Quota { bytes_per_sec: 256 * 1024, records_per_sec: 100_000, calls_per_sec: 1_000 };
    let fake = FakeFirehose::start(Faults { quota: Some(quota), ..Faults::default() });
    let workspace = Workspace::new();
    workspace.write_config_for_sink(sink, &fake.endpoint, "", sink_lines);
    support::write_seed_records(&workspace.log_file(), 0..12_000, 12_000, std::time::Duration::ZERO);
    let bytes = std::fs::metadata(workspace.log_file()).expect("log").len();
    let started = std::time::Instant::now();
    let output = workspace.run_once();
    let seen = fake.seen();
    let counts = support::count_seqs(seen.accepted.iter().map(Vec::as_slice));
    assert_eq!((counts.len(), counts.values().sum::<u32>()), (12_000, 12_000), "every record, once");
    let throttled = seen.quota_throttled_calls as f64 / seen.calls as f64;
    let last = seen.last_accepted_at.expect("records accepted").duration_since(started).as_secs_f64();
    let used = bytes as f64 / (last * quota.bytes_per_sec as f64);
    eprintln!(
        "quota {} B/s ({sink:?} {sink_lines}): {} calls, {} throttled ({:.1} %), last record after {last:.1} s, {:.0} % of the byte quota used",
        quota.bytes_per_sec,
        seen.calls,
        seen.quota_throttled_calls,
        throttled * 100.0,
        used * 100.0
    );
    assert!(throttled <= 0.25, "the rate is learned, not hammered: {:.1} % of calls throttled", throttled * 100.0);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("sending at 95 % of what it took"), "the rate was learned from the quota's refusals");
    assert!(log.contains("max_call_bytes"), "the log says how large calls are at the learned pace");
    seen
}

for_every_sink! {
    fn several_batches_are_in_flight_at_once_and_every_record_still_arrives_once(sink) {
        let fake = FakeFirehose::start(Faults { latency: std::time::Duration::from_millis(50), ..Faults::default() });
        let workspace = Workspace::new();
        workspace.write_config_for_sink(sink, &fake.endpoint, "", "max_in_flight = 4");
        let records = sink.lines_for_calls_of(8_000);
        support::write_seed_records(&workspace.log_file(), 0..records, records, std::time::Duration::ZERO);
        workspace.run_once();
        let seen = fake.seen();
        let counts = support::count_seqs(seen.accepted.iter().map(Vec::as_slice));
        assert_eq!((counts.len() as u64, seen.accepted.len() as u64), (records, records), "every record, once");
        assert!(seen.max_concurrent_calls >= 2, "calls overlapped: at most {} at once", seen.max_concurrent_calls);
        assert!(seen.max_concurrent_calls <= 4, "never more than max_in_flight: {}", seen.max_concurrent_calls);
        let stats = workspace.run(&["queue", "stats", "--config", "tailhose.toml"]);
        let routes: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats JSON");
        let file_len = std::fs::metadata(workspace.log_file()).expect("log").len();
        assert_eq!(
            routes[0]["files"][0]["acked_offset"].as_u64(),
            Some(file_len),
            "positions reached the end through in-order acknowledgements"
        );
    }
}

#[test]
fn an_endpoint_signed_by_a_private_ca_is_trusted_through_ca_file_or_ssl_cert_file_and_not_otherwise() {
    use support::fake_firehose::TestCertificate;
    let certificate = TestCertificate::new();
    let fake = FakeFirehose::start_tls(Faults::default(), &certificate);
    let workspace = Workspace::new();
    std::fs::write(workspace.path().join("private-ca.pem"), &certificate.ca_pem).expect("CA file");
    support::write_seed_records(&workspace.log_file(), 0..100, 100, std::time::Duration::ZERO);

    // Not trusted: the handshake fails, records stay queued, and the failure says why.
    workspace.write_config_for_endpoint(&fake.endpoint, "", "retry_initial_backoff = \"50ms\"\nretry_max_backoff = \"200ms\"");
    let daemon = workspace.start_daemon();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !daemon.log().contains("a call to the sink failed") {
        assert!(std::time::Instant::now() < deadline, "an untrusted certificate is reported: {}", daemon.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(daemon.terminate(std::time::Duration::from_secs(15)).success());
    assert!(fake.seen().accepted.is_empty(), "nothing is sent to an endpoint that is not trusted");

    // Trusted through the sink's ca_file (relative to the configuration file).
    workspace.write_config_for_endpoint(&fake.endpoint, "", "ca_file = \"private-ca.pem\"");
    workspace.run_once();
    assert_eq!(support::count_seqs(fake.seen().accepted.iter().map(Vec::as_slice)).len(), 100);

    // Trusted through SSL_CERT_FILE, as the AWS SDKs do.
    support::write_seed_records(&workspace.log_file(), 100..150, 50, std::time::Duration::ZERO);
    workspace.write_config_for_endpoint(&fake.endpoint, "", "");
    let ca_path = workspace.path().join("private-ca.pem");
    let output = workspace.tailhose(&["run", "--config", "tailhose.toml", "--once"]).env("SSL_CERT_FILE", &ca_path).output().expect("runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(support::count_seqs(fake.seen().accepted.iter().map(Vec::as_slice)).len(), 150);

    // A ca_file that is not a certificate stops start-up with the file named.
    std::fs::write(workspace.path().join("broken.pem"), "not a certificate").expect("write");
    workspace.write_config_for_endpoint(&fake.endpoint, "", "ca_file = \"broken.pem\"");
    let output = workspace.run(&["run", "--config", "tailhose.toml", "--once"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("broken.pem"), "{}", String::from_utf8_lossy(&output.stderr));
}

/// An edge host behind a corporate proxy: tailhose reaches Firehose through the proxy that
/// `HTTPS_PROXY` / `HTTP_PROXY` name (a CONNECT tunnel for https, so TLS still ends at Firehose)
/// and bypasses it for the hosts in `NO_PROXY`, as the AWS SDKs and curl do.
#[test]
fn calls_go_through_the_proxy_the_environment_names_unless_no_proxy_lists_the_host() {
    use support::fake_firehose::TestCertificate;
    use support::proxy::ForwardProxy;
    let certificate = TestCertificate::new();
    let fake = FakeFirehose::start_tls(Faults::default(), &certificate);
    let proxy = ForwardProxy::start();
    let workspace = Workspace::new();
    std::fs::write(workspace.path().join("private-ca.pem"), &certificate.ca_pem).expect("CA file");
    workspace.write_config_for_endpoint(&fake.endpoint, "", "ca_file = \"private-ca.pem\"");
    let run_with = |variables: &[(&str, &str)]| {
        let mut command = workspace.tailhose(&["run", "--config", "tailhose.toml", "--once"]);
        for (name, value) in variables {
            command.env(name, value);
        }
        let output = command.output().expect("runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    };
    let delivered = || support::count_seqs(fake.seen().accepted.iter().map(Vec::as_slice)).len();
    let fake_authority = fake.endpoint.trim_start_matches("https://").to_owned();

    support::write_seed_records(&workspace.log_file(), 0..100, 100, std::time::Duration::ZERO);
    run_with(&[("HTTPS_PROXY", &proxy.url)]);
    assert_eq!(delivered(), 100);
    let tunnels = proxy.requests();
    assert!(!tunnels.is_empty(), "the calls went through the proxy");
    assert!(tunnels.iter().all(|request| *request == format!("CONNECT {fake_authority}")), "only tunnels to the endpoint: {tunnels:?}");

    support::write_seed_records(&workspace.log_file(), 100..150, 50, std::time::Duration::ZERO);
    run_with(&[("https_proxy", &proxy.url), ("NO_PROXY", "localhost,127.0.0.1")]);
    assert_eq!(delivered(), 150);
    assert_eq!(proxy.requests().len(), tunnels.len(), "a host in NO_PROXY is reached directly");

    // A plain-http endpoint (a VPC endpoint behind TLS offload, a test peer) takes HTTP_PROXY.
    let plain = FakeFirehose::start(Faults::default());
    workspace.write_config_for_endpoint(&plain.endpoint, "", "");
    support::write_seed_records(&workspace.log_file(), 150..200, 50, std::time::Duration::ZERO);
    run_with(&[("HTTP_PROXY", &proxy.url)]);
    assert_eq!(support::count_seqs(plain.seen().accepted.iter().map(Vec::as_slice)).len(), 50);
    let plain_authority = plain.endpoint.trim_start_matches("http://").trim_end_matches('/').to_owned();
    assert!(
        proxy.requests()[tunnels.len()..].iter().any(|request| request.starts_with("POST http://") && request.contains(&plain_authority)),
        "the http call was relayed by the proxy: {:?}",
        proxy.requests()
    );
}

/// Kinesis's limits hold on every call, partition keys included (the longest key Kinesis takes
/// on every record), and a record that no call can carry is a dead letter with its reason.
#[test]
fn kinesis_calls_never_exceed_its_limits_and_records_too_large_with_their_key_are_dead_lettered() {
    for sink in [SinkKind::KinesisStreams, SinkKind::KinesisAggregated] {
        let fake = FakeFirehose::start(Faults::default());
        let workspace = Workspace::new();
        let key = "k".repeat(256);
        let sink_lines = format!("max_batch_bytes = \"4MiB\"\nfixed_partition_key = \"{key}\"");
        workspace.write_config_for_sink(sink, &fake.endpoint, "max_line_bytes = \"2MiB\"", &sink_lines);
        let mut content = String::new();
        for seq in 0..1_200u64 {
            // 1,000 KiB records: four fit in a call with their keys, five do not.
            let padding = if seq % 100 == 0 { "p".repeat(1000 * 1024) } else { String::new() };
            content.push_str(&format!("{{\"seq\": {seq}, \"pad\": \"{padding}\"}}\n"));
        }
        // 1 MiB with its newline: over Kinesis's 1 MiB a record once its key is counted.
        let oversized = format!("{{\"seq\": 5000, \"pad\": \"{}\"}}\n", "o".repeat(1024 * 1024 - 24));
        content.push_str(&oversized);
        std::fs::write(workspace.log_file(), content).expect("write log");
        workspace.run_once();
        let seen = fake.seen();
        assert_eq!(seen.limit_violations, 0, "{sink:?}: no call broke a Kinesis limit");
        assert!(seen.max_records_in_call <= 500 && seen.max_bytes_in_call <= 5 * 1024 * 1024, "{sink:?}");
        assert_eq!(support::count_seqs(seen.accepted.iter().map(Vec::as_slice)).len(), 1_200, "{sink:?}: every record that fits");
        assert!(seen.partition_keys.iter().all(|sent| *sent == key));
        let output = workspace.run(&["queue", "dead-letters", "--config", "tailhose.toml"]);
        let letters: Vec<serde_json::Value> =
            String::from_utf8_lossy(&output.stdout).lines().map(|line| serde_json::from_str(line).expect("json")).collect();
        assert_eq!(letters.len(), 1, "{sink:?}: {letters:?}");
        assert_eq!(letters[0]["reason"], "record_too_large");
        assert_eq!(letters[0]["length"].as_u64(), Some(oversized.len() as u64 - 1), "the record as read");
    }
}

/// A stream of four shards takes four shards' quota: random partition keys spread the records,
/// each shard refuses only what passes its own budget, and the pace learned from those refusals
/// delivers every record once without hammering.
#[test]
fn a_stream_of_four_shards_takes_their_quota_together_and_every_record_arrives_once() {
    use support::fake_firehose::Quota;
    let shard_quota = Quota { bytes_per_sec: 96 * 1024, records_per_sec: 1_000, calls_per_sec: 1_000 };
    let fake = FakeFirehose::start(Faults { quota: Some(shard_quota), shards: 4, ..Faults::default() });
    let workspace = Workspace::new();
    workspace.write_config_for_sink(SinkKind::KinesisStreams, &fake.endpoint, "", "");
    support::write_seed_records(&workspace.log_file(), 0..12_000, 12_000, Duration::ZERO);
    let bytes = std::fs::metadata(workspace.log_file()).expect("log").len();
    let started = std::time::Instant::now();
    workspace.run_once();
    let seen = fake.seen();
    let counts = support::count_seqs(seen.accepted.iter().map(Vec::as_slice));
    assert_eq!((counts.len(), counts.values().sum::<u32>()), (12_000, 12_000), "every record, once");
    assert_eq!(seen.shard_records.len(), 4, "every shard took records: {:?}", seen.shard_records);
    let last = seen.last_accepted_at.expect("records accepted").duration_since(started).as_secs_f64();
    let used = bytes as f64 / (last * 4.0 * shard_quota.bytes_per_sec as f64);
    let throttled = seen.quota_throttled_calls as f64 / seen.calls as f64;
    eprintln!(
        "four shards of {} B/s: {} calls, {:.1} % throttled, {:?} records a shard, {:.0} % of their quota used in {last:.1} s",
        shard_quota.bytes_per_sec,
        seen.calls,
        throttled * 100.0,
        seen.shard_records,
        used * 100.0
    );
    assert!(used > 0.5, "the four shards' quota is used, not one shard's: {:.0} %", used * 100.0);
    assert!(throttled <= 0.35, "the rate is learned, not hammered: {:.1} % of calls throttled", throttled * 100.0);
}
