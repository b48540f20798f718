//! Operating tailhose: the queue commands on the data_dir of a real run, the admin endpoint
//! (`/metrics`, `/health`, `/status`) and `tailhose status` against a running daemon, with the
//! project's fake Firehose.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use support::fake_firehose::{FakeFirehose, Faults, Refusal};
use support::{http_get, seq_of, wait_until, write_seed_records, Workspace};

const ROUTE: &str = "conect->events";
const QUICK_RETRIES: &str = "retry_initial_backoff = \"10ms\"\nretry_max_backoff = \"200ms\"";

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn succeeded(output: std::process::Output) -> String {
    assert!(output.status.success(), "stdout: {}\nstderr: {}", stdout(&output), String::from_utf8_lossy(&output.stderr));
    stdout(&output)
}

fn append_lines(path: &std::path::Path, lines: &[String]) {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open log");
    for line in lines {
        writeln!(file, "{line}").expect("append");
    }
}

/// `/status` of the running daemon, parsed.
fn status(address: &str) -> serde_json::Value {
    let (code, body) = http_get(address, "/status").expect("the admin endpoint answers");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("/status is JSON")
}

/// Sums of every sample of each metric, over all label sets.
fn scrape(address: &str) -> BTreeMap<String, f64> {
    let (code, body) = http_get(address, "/metrics").expect("the admin endpoint answers");
    assert_eq!(code, 200, "{body}");
    let mut sums = BTreeMap::new();
    for line in body.lines().filter(|line| !line.starts_with('#') && !line.is_empty()) {
        let (name_and_labels, value) = line.rsplit_once(' ').expect("`name value`");
        let name = name_and_labels.split('{').next().expect("a name");
        *sums.entry(name.to_owned()).or_insert(0.0) += value.parse::<f64>().expect("a number");
    }
    sums
}

fn metric(sums: &BTreeMap<String, f64>, name: &str) -> u64 {
    *sums.get(name).unwrap_or_else(|| panic!("metric {name} is missing")) as u64
}

fn queue_stats(workspace: &Workspace) -> serde_json::Value {
    let routes: serde_json::Value =
        serde_json::from_str(&succeeded(workspace.run(&["queue", "stats", "--config", "tailhose.toml"]))).expect("queue stats prints JSON");
    routes.as_array().expect("one entry per route").iter().find(|route| route["route"] == ROUTE).expect("the route").clone()
}

fn retained_chunks(workspace: &Workspace) -> Vec<serde_json::Value> {
    let listing = succeeded(workspace.run(&["queue", "list", "--config", "tailhose.toml", "--state", "retained", "--json"]));
    listing.lines().map(|line| serde_json::from_str(line).expect("a JSON line per chunk")).collect()
}

fn rejected_record(seq: u64) -> String {
    format!("{{\"board_id\": 1, \"interest\": \"reject_me\", \"seq\": {seq}}}")
}

/// Flips the last byte of the first retained chunk the way a bit flip below sled's own
/// checksums would, through sled, so that only tailhose's chunk checksum can catch it.
fn flip_a_byte_of_a_retained_chunk(workspace: &Workspace) {
    let path = workspace.path().join("state/queue");
    let db = wait_until(Duration::from_secs(20), "the queue's lock", || sled::Config::new().path(&path).flush_every_ms(None).open().ok());
    let tree = db.open_tree(format!("route:{ROUTE}")).expect("route tree");
    let (key, value) = tree.range([0x02u8]..[0x03u8]).next().expect("a retained chunk").expect("read");
    let mut damaged = value.to_vec();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x01;
    tree.insert(key, damaged).expect("write");
    db.flush().expect("flush");
}

#[test]
fn queue_commands_inspect_verify_replay_export_and_purge_the_data_dir_of_a_real_run() {
    let fake = FakeFirehose::start(Faults { reject_records_containing: Some("reject_me"), ..Faults::default() });
    let workspace = Workspace::new();
    workspace.write_config_for_endpoint(&fake.endpoint, "", &format!("retain_acked = \"1h\"\n{QUICK_RETRIES}"));
    let log = workspace.log_file();
    write_seed_records(&log, 0..2000, 2000, Duration::ZERO);
    append_lines(&log, &[rejected_record(5000), "not json".into(), rejected_record(5001), "{\"cut\": ".into(), rejected_record(5002)]);
    let file_len = std::fs::metadata(&log).expect("log").len();

    let daemon = workspace.start_daemon();
    let address = workspace.admin_address();
    wait_until(Duration::from_secs(60), "2,000 records acknowledged and 5 dead letters", || {
        let status = status(&address);
        (status["events"]["records_acked"] == 2000 && status["events"]["dead_letters"] == 5).then_some(())
    });
    assert!(daemon.terminate(Duration::from_secs(15)).success());
    assert!(!workspace.path().join("state/tailhose.pid").exists(), "a clean stop removes the PID file");

    // stats: nothing pending, every byte acknowledged, the dead letters and retained chunks counted.
    let stats = queue_stats(&workspace);
    assert_eq!((stats["pending_records"].as_u64(), stats["dead_letters"].as_u64()), (Some(0), Some(5)), "{stats}");
    assert_eq!(stats["files"][0]["acked_offset"].as_u64(), Some(file_len), "{stats}");
    assert_eq!(stats["files"][0]["bytes_behind"].as_u64(), Some(0), "{stats}");

    // list and export: the retained chunks hold every record read, the rejected ones included.
    let chunks = retained_chunks(&workspace);
    let retained_records: u64 = chunks.iter().map(|chunk| chunk["records"].as_u64().expect("records")).sum();
    assert_eq!(retained_records, 2003);
    assert_eq!(stats["retained_chunks"].as_u64(), Some(chunks.len() as u64));
    succeeded(workspace.run(&["queue", "export", "--config", "tailhose.toml", "--out", "export.jsonl"]));
    let exported = std::fs::read_to_string(workspace.path().join("export.jsonl")).expect("export");
    let exported_seqs: Vec<u64> = exported
        .lines()
        .map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            seq_of(entry["record"].as_str().expect("record").as_bytes())
        })
        .collect();
    assert_eq!(exported_seqs.len(), 2003);
    assert_eq!(exported_seqs.iter().collect::<std::collections::BTreeSet<_>>().len(), 2003, "each record once");

    // show: the raw records of one chunk, ready for jq, and the same with their location.
    let first = &chunks[0];
    let first_seq = first["seq"].as_u64().expect("seq").to_string();
    let raw = succeeded(workspace.run(&["queue", "show", "--config", "tailhose.toml", &first_seq, "--format", "raw"]));
    let shown_seqs: Vec<u64> = raw.lines().map(|line| seq_of(line.as_bytes())).collect();
    assert_eq!(shown_seqs.len() as u64, first["records"].as_u64().expect("records"));
    let located = succeeded(workspace.run(&["queue", "show", "--data-dir", "state", &first_seq, "--format", "jsonl"]));
    let entry: serde_json::Value = serde_json::from_str(located.lines().next().expect("a line")).expect("JSON");
    assert_eq!((entry["chunk"].to_string(), entry["state"].as_str()), (first_seq.clone(), Some("retained")));

    succeeded(workspace.run(&["queue", "verify", "--config", "tailhose.toml"]));

    // Dead letters: two malformed lines, three records the stream refused.
    let letters = succeeded(workspace.run(&["queue", "dead-letters", "--config", "tailhose.toml"]));
    let reasons: Vec<String> = letters
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("JSON")["reason"].as_str().expect("reason").to_owned())
        .collect();
    assert_eq!(reasons.iter().filter(|reason| *reason == "rejected_by_sink").count(), 3, "{reasons:?}");
    assert_eq!(reasons.iter().filter(|reason| *reason == "invalid_json").count(), 2, "{reasons:?}");

    // Replay of dead letters once the stream takes them: each delivered exactly once.
    let dry = succeeded(workspace.run(&["queue", "replay", "--config", "tailhose.toml", "--dead-letters", "--dry-run"]));
    assert!(dry.contains("would queue 3 records"), "{dry}");
    assert_eq!(queue_stats(&workspace)["dead_letters"].as_u64(), Some(5), "a dry run changes nothing");
    fake.set_faults(Faults::default());
    let accepted_before = fake.seen().accepted.len();
    succeeded(workspace.run(&["queue", "replay", "--config", "tailhose.toml", "--dead-letters"]));
    let accepted = fake.seen().accepted;
    let replayed: Vec<u64> = accepted[accepted_before..].iter().map(|record| seq_of(record)).collect();
    assert_eq!(replayed, vec![5000, 5001, 5002]);
    assert_eq!(queue_stats(&workspace)["dead_letters"].as_u64(), Some(2), "the malformed lines stay dead letters");

    // Replay of one retained chunk: exactly its records go out again.
    let accepted_before = fake.seen().accepted.len();
    succeeded(workspace.run(&[
        "queue",
        "replay",
        "--config",
        "tailhose.toml",
        "--retained",
        "--from-seq",
        &first_seq,
        "--to-seq",
        &first_seq,
    ]));
    let mut replayed: Vec<u64> = fake.seen().accepted[accepted_before..].iter().map(|record| seq_of(record)).collect();
    // Batches of the replay may be in flight together (max_in_flight), so compare as sets.
    replayed.sort_unstable();
    let mut expected = shown_seqs.clone();
    expected.sort_unstable();
    assert_eq!(replayed, expected, "the chunk's records, each once");
    let stats = queue_stats(&workspace);
    assert_eq!((stats["pending_records"].as_u64(), stats["files"][0]["acked_offset"].as_u64()), (Some(0), Some(file_len)));
    succeeded(workspace.run(&["queue", "verify", "--config", "tailhose.toml"]));

    // verify finds a flipped byte, names it and fails.
    flip_a_byte_of_a_retained_chunk(&workspace);
    let output = wait_until(Duration::from_secs(20), "the queue's lock to be released", || {
        let output = workspace.run(&["queue", "verify", "--config", "tailhose.toml"]);
        (!String::from_utf8_lossy(&output.stderr).contains("in use")).then_some(output)
    });
    assert!(!output.status.success(), "a damaged chunk fails verify");
    assert!(stdout(&output).contains("checksum_mismatch"), "{}", stdout(&output));

    // purge: asks first, then deletes only what was named.
    let asked = succeeded(workspace.run(&["queue", "purge", "--config", "tailhose.toml", "--dead-letters"]));
    assert!(asked.contains("would purge 2 dead letters"), "{asked}");
    assert_eq!(queue_stats(&workspace)["dead_letters"].as_u64(), Some(2));
    succeeded(workspace.run(&["queue", "purge", "--config", "tailhose.toml", "--dead-letters", "--yes"]));
    succeeded(workspace.run(&["queue", "purge", "--config", "tailhose.toml", "--retained", "--yes"]));
    let stats = queue_stats(&workspace);
    assert_eq!((stats["dead_letters"].as_u64(), stats["retained_chunks"].as_u64()), (Some(0), Some(0)));
    succeeded(workspace.run(&["queue", "verify", "--config", "tailhose.toml"]));
}

#[test]
fn metrics_add_up_and_health_and_status_follow_the_sink() {
    let fake = FakeFirehose::start(Faults::default());
    let workspace = Workspace::new();
    workspace.write_config_for_endpoint(&fake.endpoint, "", QUICK_RETRIES);
    let log = workspace.log_file();
    write_seed_records(&log, 0..3000, 3000, Duration::ZERO);
    append_lines(&log, &["oops".into(), "{".into(), "[1,".into()]);
    let daemon = workspace.start_daemon();
    let address = workspace.admin_address();

    let adds_up = |sums: &BTreeMap<String, f64>| {
        let read = metric(sums, "tailhose_records_read_total");
        let accounted = metric(sums, "tailhose_records_acked_total")
            + metric(sums, "tailhose_queue_records")
            + metric(sums, "tailhose_dead_letters_total");
        (read, accounted)
    };
    let sums = wait_until(Duration::from_secs(60), "3,000 records acknowledged", || {
        let sums = scrape(&address);
        (metric(&sums, "tailhose_records_acked_total") == 3000 && metric(&sums, "tailhose_records_read_total") == 3003).then_some(sums)
    });
    assert_eq!(adds_up(&sums), (3003, 3003), "read = acked + pending + dead letters");
    assert_eq!(metric(&sums, "tailhose_dead_letters_total"), 3);
    assert_eq!(metric(&sums, "tailhose_healthy"), 1);
    assert!(metric(&sums, "tailhose_calls_total") >= 3);
    assert_eq!(metric(&sums, "tailhose_call_duration_seconds_count"), metric(&sums, "tailhose_calls_total"));
    assert_eq!(metric(&sums, "tailhose_call_records_sum"), 3000, "records per call add up to the records sent");
    assert_eq!(http_get(&address, "/health"), Some((200, "ok\n".to_owned())));

    // The stream goes away: records stay pending, the sums still hold, health turns red.
    fake.set_faults(Faults { refuse_all: Some(Refusal::StreamNotFound), ..Faults::default() });
    write_seed_records(&log, 3000..3500, 500, Duration::ZERO);
    let sums = wait_until(Duration::from_secs(30), "500 records read and pending", || {
        let sums = scrape(&address);
        (metric(&sums, "tailhose_queue_records") == 500 && metric(&sums, "tailhose_records_read_total") == 3503).then_some(sums)
    });
    assert_eq!(adds_up(&sums), (3503, 3503), "read = acked + pending + dead letters, with records pending");
    let outage_started = std::time::Instant::now();
    let (_, reason) =
        wait_until(Duration::from_secs(30), "/health to answer 503", || http_get(&address, "/health").filter(|(code, _)| *code == 503));
    assert!(reason.contains("500 records pending"), "{reason}");
    let output = workspace.run(&["status", "--config", "tailhose.toml"]);
    assert!(!output.status.success(), "status exits non-zero while unhealthy");
    let table = stdout(&output);
    assert!(table.contains("UNHEALTHY") && table.contains(ROUTE) && table.contains("not found"), "{table}");
    let report: serde_json::Value =
        serde_json::from_slice(&workspace.run(&["status", "--config", "tailhose.toml", "--json"]).stdout).expect("status --json");
    assert_eq!(report["routes"][0]["pending_records"].as_u64(), Some(500), "{report}");
    assert_eq!(report["pid"].as_u64(), Some(u64::from(daemon.pid())));

    // Repeated failures are counted every time but logged at most once per 10 s.
    let failed_calls = metric(&scrape(&address), "tailhose_failed_calls_total");
    let logged = daemon.log().matches("the sink refuses every call").count() as u64;
    let periods = outage_started.elapsed().as_secs() / 10 + 2;
    assert!(failed_calls > periods, "enough failures to see the rate limit: {failed_calls}");
    assert!(logged <= periods, "{logged} log lines for {failed_calls} failed calls");

    // The stream is back: everything is delivered and health recovers.
    fake.set_faults(Faults::default());
    wait_until(Duration::from_secs(30), "the backlog delivered", || (fake.seen().accepted.len() == 3500).then_some(()));
    wait_until(Duration::from_secs(10), "/health to answer 200", || http_get(&address, "/health").filter(|(code, _)| *code == 200));
    let table = succeeded(workspace.run(&["status", "--config", "tailhose.toml"]));
    assert!(table.contains("healthy") && table.contains("3500 acknowledged"), "{table}");
    assert_eq!(http_get(&address, "/nothing-here").map(|(code, _)| code), Some(404));

    assert!(daemon.terminate(Duration::from_secs(15)).success());
    let offline = succeeded(workspace.run(&["status", "--config", "tailhose.toml"]));
    assert!(offline.contains("not running") && offline.contains(ROUTE), "{offline}");
}

#[test]
fn a_taken_admin_port_stops_start_up_with_a_message_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let workspace = Workspace::new();
    workspace.write_config_for_endpoint("http://127.0.0.1:9", "", "");
    workspace.rewrite_config(|config| config.replace("127.0.0.1:0", &address));
    let output = workspace.run(&["run", "--config", "tailhose.toml"]);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains(&address) && message.contains("[admin] address"), "{message}");
}

#[test]
fn the_admin_endpoint_caps_its_connections_and_disconnects_clients_that_send_nothing() {
    use std::io::Read;
    let fake = FakeFirehose::start(Faults::default());
    let workspace = Workspace::new();
    workspace.write_config_for_endpoint(&fake.endpoint, "", "");
    let daemon = workspace.start_daemon();
    let address = workspace.admin_address();
    // Clients that connect and send nothing take every place...
    let idle: Vec<std::net::TcpStream> = (0..16).map(|_| std::net::TcpStream::connect(address.as_str()).expect("connect")).collect();
    std::thread::sleep(Duration::from_millis(300));
    // ...so one more is closed at once, not held (the endpoint shares the tailer's descriptors).
    let mut one_more = std::net::TcpStream::connect(address.as_str()).expect("connect");
    one_more.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let mut byte = [0u8; 1];
    assert_eq!(one_more.read(&mut byte).ok(), Some(0), "a connection past the cap is closed at once");
    // The idle ones are disconnected once the header timeout passes, and the endpoint serves again.
    for mut client in idle {
        client.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
        assert_eq!(client.read(&mut byte).ok(), Some(0), "a client that sends no request is disconnected");
    }
    assert_eq!(http_get(&address, "/health").map(|(code, _)| code), Some(200));
    assert!(daemon.terminate(Duration::from_secs(15)).success());
}

#[test]
fn data_dir_and_what_it_holds_are_kept_from_other_users_and_an_open_one_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let fake = FakeFirehose::start(Faults::default());
    let workspace = Workspace::new();
    workspace.write_config_for_endpoint(&fake.endpoint, "", "");
    write_seed_records(&workspace.log_file(), 0..100, 100, Duration::ZERO);
    succeeded(workspace.run_once());
    let data_dir = workspace.path().join("state");
    let mode = |path: &std::path::Path| std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&data_dir), 0o700, "data_dir is created for its owner only");
    let mut pending = vec![data_dir.clone()];
    let mut files = 0;
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).expect("read_dir").flatten() {
            let path = entry.path();
            assert_eq!(mode(&path) & 0o077, 0, "{} is {:o}: others may read it", path.display(), mode(&path));
            if path.is_dir() {
                pending.push(path);
            } else {
                files += 1;
            }
        }
    }
    assert!(files > 0, "sled's files were checked");
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let output = workspace.run_once();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("data_dir can be read or written by other users"), "{log}");
}

/// `tailhose_name{label="value", ...}` as the alert rules and their promtool tests write a series.
struct SeriesReference {
    name: String,
    labels: Vec<(String, String)>,
}

fn series_references(text: &str) -> Vec<SeriesReference> {
    let series = regex::Regex::new(r#"(tailhose_[a-z_]+)(\{[^}]*\})?"#).expect("regex");
    let label = regex::Regex::new(r#"([a-z_]+)\s*=~?\s*\\?"([^"\\]*)\\?""#).expect("regex");
    series
        .captures_iter(text)
        .map(|found| SeriesReference {
            name: found[1].to_owned(),
            labels: found.get(2).map_or(Vec::new(), |labels| {
                label.captures_iter(labels.as_str()).map(|pair| (pair[1].to_owned(), pair[2].to_owned())).collect()
            }),
        })
        .collect()
}

/// The shipped alert rules (data/prometheus) and the series their promtool tests feed them must
/// name what the daemon exports: a renamed metric or label would leave an alert that never fires
/// while its promtool test still passes.
#[test]
fn the_alert_rules_and_their_tests_read_only_series_the_daemon_exports() {
    let fake = FakeFirehose::start(Faults::default());
    let workspace = Workspace::new();
    workspace.write_config_for_endpoint(&fake.endpoint, "", QUICK_RETRIES);
    write_seed_records(&workspace.log_file(), 0..100, 100, Duration::ZERO);
    let daemon = workspace.start_daemon();
    let address = workspace.admin_address();
    let body = wait_until(Duration::from_secs(30), "100 records acknowledged", || {
        let (_, body) = http_get(&address, "/metrics")?;
        body.lines().any(|line| line == "tailhose_records_acked_total 100").then_some(body)
    });
    assert!(daemon.terminate(Duration::from_secs(15)).success());
    let exported: Vec<&str> = body.lines().filter(|line| !line.starts_with('#')).collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/prometheus");
    let mut checked = 0;
    let grouping = regex::Regex::new(r"\b(?:by|on)\s*\(([^)]*)\)").expect("regex");
    for file in ["tailhose-alerts.yml", "tailhose-alerts.test.yml"] {
        let text = std::fs::read_to_string(root.join(file)).expect("the rules are shipped");
        for reference in series_references(&text) {
            let lines: Vec<&&str> = exported
                .iter()
                .filter(|line| line.starts_with(&format!("{} ", reference.name)) || line.starts_with(&format!("{}{{", reference.name)))
                .collect();
            assert!(!lines.is_empty(), "{file} reads {}, which /metrics does not export:\n{body}", reference.name);
            // Prometheus adds instance and job; routes and paths are the user's names; `=~`
            // takes alternatives.
            for (label, value) in reference.labels.iter().filter(|(label, _)| !["instance", "job"].contains(&label.as_str())) {
                for alternative in value.split('|') {
                    let wanted = if ["route", "path"].contains(&label.as_str()) {
                        format!("{label}=\"")
                    } else {
                        format!("{label}=\"{alternative}\"")
                    };
                    assert!(
                        lines.iter().any(|line| line.contains(&wanted)),
                        "{file} reads {}{{{label}=\"{alternative}\"}}, which /metrics does not export: {lines:?}",
                        reference.name
                    );
                }
            }
            checked += 1;
        }
        // The labels alerts are grouped and matched by must be labels the daemon gives.
        for clause in grouping.captures_iter(&text) {
            for label in clause[1].split(',').map(str::trim).filter(|label| !["instance", "job", ""].contains(label)) {
                assert!(body.contains(&format!("{label}=\"")), "{file} groups by {label}, a label /metrics never gives");
            }
        }
    }
    assert!(checked >= 30, "the rules and their tests were read ({checked} series references)");
}
