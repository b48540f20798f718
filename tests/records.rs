//! Records as real logs are (issue 19): the daemon against the project's fake Firehose, with
//! records of several lines (stack traces) read from a raw text log.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use support::fake_firehose::{FakeFirehose, Faults};
use support::fake_imds::FakeImds;
use support::{http_get, wait_until, Workspace};

/// A Java service's log: ordinary lines and stack traces.
const STARTED: &str = "2026-12-01 12:00:00.001 INFO  [main] c.e.Orders - started";
const TRACE: &str = "2026-12-01 12:00:01.002 ERROR [http-1] c.e.Api - request failed
java.lang.IllegalStateException: order 17 is closed
\tat com.example.Orders.place(Orders.java:42)
\tat com.example.Api.handle(Api.java:7)
Caused by: java.io.IOException: disk full
\tat java.base/java.io.FileOutputStream.write(FileOutputStream.java:354)
\t... 2 more";
const NEXT: &str = "2026-12-01 12:00:02.003 INFO  [main] c.e.Orders - next";

/// A config reading `source/*.log` as raw text, with `source_tables` (`[sources.app.multiline]`,
/// `[sources.app.parse]`) after the source's own keys.
fn write_config(workspace: &Workspace, endpoint: &str, source_tables: &str) {
    let text = format!(
        r#"data_dir = "state"
shutdown_timeout = "5s"

[admin]
address = "127.0.0.1:0"

[sources.app]
paths = ["source/*.log"]
format = "raw"
poll_interval = "50ms"

{source_tables}

[sinks.events]
type = "firehose"
inputs = ["app"]
delivery_stream = "{}"
region = "{}"
endpoint_url = "{endpoint}"
flush_interval = "200ms"
append_newline = true
"#,
        support::STREAM,
        support::REGION
    );
    std::fs::write(workspace.config(), text).expect("write config");
}

/// Runs the daemon until two records are acknowledged, checks that one record failed to
/// parse (a counted dead letter), and stops it.
fn run_until_two_records_and_one_parse_failure(workspace: &Workspace) {
    let daemon = workspace.start_daemon();
    let address = workspace.admin_address();
    wait_until(Duration::from_secs(30), "two records acknowledged", || (records_acked(&address) == Some(2)).then_some(()));
    let (_, metrics) = http_get(&address, "/metrics").expect("metrics");
    assert!(metrics.contains("tailhose_dead_letters_total{reason=\"parse_failed\"} 1"), "{metrics}");
    assert!(daemon.terminate(Duration::from_secs(15)).success());
}

fn multiline(rule: &str) -> String {
    format!("[sources.app.multiline]\n{rule}")
}

fn append(workspace: &Workspace, text: &str) {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(workspace.log_file()).expect("open log");
    file.write_all(text.as_bytes()).expect("append");
}

/// The records the fake accepted, without the newline each is sent with, in order.
fn accepted(fake: &FakeFirehose) -> Vec<String> {
    fake.seen().accepted.iter().map(|record| String::from_utf8_lossy(record.strip_suffix(b"\n").unwrap_or(record)).into_owned()).collect()
}

/// Records the daemon at `address` has acknowledged since it started, once it answers.
fn records_acked(address: &str) -> Option<u64> {
    let (code, body) = http_get(address, "/status")?;
    let status: serde_json::Value = serde_json::from_str(&body).ok()?;
    (code == 200).then(|| status["events"]["records_acked"].as_u64()).flatten()
}

#[test]
fn a_stack_trace_is_one_record_and_a_kill_in_the_middle_of_its_writing_neither_splits_nor_repeats_it() {
    let fake = FakeFirehose::start(Faults::default());
    let workspace = Workspace::new();
    // A long flush timeout: the trace cut by the kill stays in progress until its rest comes.
    write_config(&workspace, &fake.endpoint, &multiline("start = '^\\d{4}-\\d{2}-\\d{2} '\nflush_timeout = \"60s\""));
    let (head, rest) = TRACE.split_at(TRACE.find("Caused by").expect("a cause"));
    append(&workspace, &format!("{STARTED}\n{TRACE}\n{NEXT}\n{head}"));

    let daemon = workspace.start_daemon();
    let address = workspace.admin_address();
    // The first three are delivered and their acknowledgement durable; the fourth record (the
    // trace's head) waits for the lines that may continue it.
    wait_until(Duration::from_secs(30), "three records acknowledged", || (records_acked(&address) == Some(3)).then_some(()));
    daemon.kill();
    // The next daemon writes its own address.
    std::fs::remove_file(workspace.path().join("state/admin-address")).expect("the killed daemon's address");

    append(&workspace, &format!("{rest}\n{NEXT}\n"));
    let daemon = workspace.start_daemon();
    let address = workspace.admin_address();
    // The trace is complete once the next ordinary line begins a record, which in turn waits
    // for what may continue it (a graceful stop does not cut it: the next start reads it again).
    wait_until(Duration::from_secs(30), "the whole trace acknowledged", || (records_acked(&address) == Some(1)).then_some(()));
    assert!(daemon.terminate(Duration::from_secs(15)).success());
    assert_eq!(accepted(&fake), [STARTED, TRACE, NEXT, TRACE], "each record once, each trace whole");
}

#[test]
fn a_quiet_files_last_record_is_sent_after_the_flush_timeout_and_later_lines_are_records_of_their_own() {
    let fake = FakeFirehose::start(Faults::default());
    let workspace = Workspace::new();
    write_config(&workspace, &fake.endpoint, &multiline("start = '^\\d{4}-\\d{2}-\\d{2} '\nflush_timeout = \"300ms\""));
    append(&workspace, &format!("{STARTED}\n{TRACE}\n"));
    let daemon = workspace.start_daemon();
    let address = workspace.admin_address();
    // Nothing follows the trace: only the flush timeout ends it.
    wait_until(Duration::from_secs(30), "both records acknowledged", || (records_acked(&address) == Some(2)).then_some(()));
    append(&workspace, "\tat a line too late for the trace\n");
    wait_until(Duration::from_secs(30), "the late line acknowledged", || (records_acked(&address) == Some(3)).then_some(()));
    assert!(daemon.terminate(Duration::from_secs(15)).success());
    assert_eq!(accepted(&fake), [STARTED, TRACE, "\tat a line too late for the trace"]);
}

#[test]
fn with_the_java_preset_an_exception_and_its_frames_are_one_record_and_ordinary_lines_wait_for_nothing() {
    let fake = FakeFirehose::start(Faults::default());
    let workspace = Workspace::new();
    write_config(&workspace, &fake.endpoint, &multiline("preset = \"java\"\nflush_timeout = \"300ms\""));
    append(&workspace, &format!("{STARTED}\n{TRACE}\n{NEXT}\n"));
    let daemon = workspace.start_daemon();
    let address = workspace.admin_address();
    wait_until(Duration::from_secs(30), "four records acknowledged", || (records_acked(&address) == Some(4)).then_some(()));
    assert!(daemon.terminate(Duration::from_secs(15)).success());
    // The logger's own line names no exception: a record of its own, as in Fluent Bit's preset.
    let (logger_line, exception) = TRACE.split_once('\n').expect("two parts");
    assert_eq!(accepted(&fake), [STARTED, logger_line, exception, NEXT]);
}

#[test]
fn a_multiline_or_parse_table_that_cannot_work_is_refused_with_its_key() {
    let workspace = Workspace::new();
    for (table, text, expected) in [
        ("multiline", "start = '(unclosed'", "is not a valid regular expression"),
        ("multiline", "preset = \"cobol\"", "no preset is named `cobol` (presets: java, python, go)"),
        ("multiline", "start = 'a'\ncontinuation = 'b'", "give exactly one of `start`, `continuation` and `preset`"),
        ("parse", "type = \"grok\"", "no parser type is named `grok`"),
        ("parse", "type = \"csv\"", "needs `columns`"),
        ("parse", "type = \"regex\"\npattern = '(?<a>'", "is not a valid regular expression"),
        ("parse", "type = \"nginx\"\ntypes = { code = \"number\" }", "types.code: `number` is not a type"),
    ] {
        assert_refused(&workspace, table, text, expected);
    }
}

/// `check-config` refuses `[sources.app.TABLE]` holding `text`, naming the table and `expected`.
fn assert_refused(workspace: &Workspace, table: &str, text: &str, expected: &str) {
    write_config(workspace, "http://127.0.0.1:9", &format!("[sources.app.{table}]\n{text}"));
    let output = workspace.run(&["check-config", "--config", "tailhose.toml"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{text}: accepted");
    assert!(stderr.contains(&format!("sources.app.{table}")) && stderr.contains(expected), "{text}: {stderr}");
}

#[test]
fn nginx_lines_are_sent_as_json_objects_and_a_line_that_does_not_parse_is_a_counted_dead_letter_at_its_offset() {
    let fake = FakeFirehose::start(Faults::default());
    let workspace = Workspace::new();
    write_config(&workspace, &fake.endpoint, "[sources.app.parse]\ntype = \"nginx\"\ntypes = { code = \"integer\", size = \"integer\" }");
    let first = r#"203.0.113.9 - - [01/Dec/2026:12:00:00 +0000] "GET /videos/17 HTTP/1.1" 200 5120 "-" "Mozilla/5.0""#;
    let garbled = "nginx: [emerg] bind() to 0.0.0.0:80 failed";
    let second = r#"203.0.113.10 - bob [01/Dec/2026:12:00:01 +0000] "POST /views HTTP/1.1" 201 0 "-" "curl/8.5""#;
    append(&workspace, &format!("{first}\n{garbled}\n{second}\n"));
    run_until_two_records_and_one_parse_failure(&workspace);

    let objects: Vec<serde_json::Value> =
        accepted(&fake).iter().map(|record| serde_json::from_str(record).expect("each record is JSON")).collect();
    assert_eq!(objects.len(), 2);
    assert_eq!(
        objects[0],
        serde_json::json!({"remote": "203.0.113.9", "host": "-", "user": "-", "time": "01/Dec/2026:12:00:00 +0000",
            "method": "GET", "path": "/videos/17", "code": 200, "size": 5120, "referer": "-", "agent": "Mozilla/5.0"})
    );
    assert_eq!((objects[1]["user"].as_str(), objects[1]["code"].as_i64()), (Some("bob"), Some(201)));

    let output = workspace.run(&["queue", "dead-letters", "--config", "tailhose.toml"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let letters: Vec<serde_json::Value> =
        String::from_utf8_lossy(&output.stdout).lines().map(|line| serde_json::from_str(line).expect("JSON")).collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["reason"], "parse_failed");
    assert_eq!(letters[0]["offset"].as_u64(), Some(first.len() as u64 + 1));
    assert!(letters[0]["detail"].as_str().is_some_and(|detail| detail.contains("does not match")), "{letters:?}");
}

#[test]
fn added_fields_are_on_every_record_and_the_copies_that_resends_and_a_kill_bring_share_their_record_id() {
    // Every third answer is cut off after the records were taken: those records are sent again.
    let fake = FakeFirehose::start(Faults { tear_every_nth_call: Some(3), ..Faults::default() });
    let workspace = Workspace::new();
    let fields = "\n[sources.conect.add_fields]\nstatic = { env = \"prod\" }\nhostname_key = \"host\"\npath_key = \"file\"\n\
                  source_key = \"source\"\nread_time_key = \"read_at\"\nrecord_id_key = \"record_id\"";
    workspace.write_config_for_endpoint(&fake.endpoint, fields, "retry_max_backoff = \"200ms\"");
    let written = 3_000u64;
    support::write_seed_records(&workspace.log_file(), 0..written, written, Duration::ZERO);
    let daemon = workspace.start_daemon();
    wait_until(Duration::from_secs(30), "a third of the records accepted", || (fake.seen().accepted.len() >= 1_000).then_some(()));
    daemon.kill();
    let daemon = workspace.start_daemon();
    // Each record of a cut-off call is sent again: accepted once more at least.
    wait_until(Duration::from_secs(60), "every record accepted, those of cut-off calls again", || {
        let seen = fake.seen();
        let distinct = support::count_seqs(seen.accepted.iter().map(Vec::as_slice)).len() as u64;
        (distinct == written && seen.accepted.len() as u64 >= written + seen.accepted_in_torn_calls).then_some(())
    });
    assert!(daemon.terminate(Duration::from_secs(15)).success());

    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("host name").trim().to_owned();
    let accepted = fake.seen().accepted;
    let mut by_id: BTreeMap<String, (u64, Vec<u8>)> = BTreeMap::new();
    for record in &accepted {
        let object: serde_json::Value = serde_json::from_slice(record).expect("a JSON object");
        assert_eq!(
            (object["env"].as_str(), object["host"].as_str(), object["source"].as_str()),
            (Some("prod"), Some(host.as_str()), Some("conect"))
        );
        assert!(object["file"].as_str().is_some_and(|file| file.ends_with(".log")), "{object}");
        assert!(object["read_at"].as_str().is_some_and(|time| chrono::DateTime::parse_from_rfc3339(time).is_ok()), "{object}");
        let id = object["record_id"].as_str().expect("a record id").to_owned();
        let seq = support::seq_of(record);
        let first = by_id.entry(id.clone()).or_insert_with(|| (seq, record.clone()));
        // A copy is the record sent again: the same id, the same bytes, its first read time included.
        assert_eq!((first.0, &first.1), (seq, record), "record id {id}");
    }
    let seen = fake.seen();
    assert!(
        accepted.len() as u64 > written,
        "cut-off answers and the kill brought copies ({} accepted, {} calls, {} in cut-off calls)",
        accepted.len(),
        seen.calls,
        seen.accepted_in_torn_calls
    );
    assert_eq!(by_id.len() as u64, written, "one id per record");
}

#[test]
fn a_kubernetes_containers_cri_log_is_sent_as_one_object_a_line_with_its_parts_joined_and_its_pod_named() {
    let fake = FakeFirehose::start(Faults::default());
    let workspace = Workspace::new();
    write_config(&workspace, &fake.endpoint, "[sources.app.parse]\ntype = \"cri\"");
    let id = "4f3c2b1a".repeat(8);
    let file = workspace.path().join(format!("source/checkout-5c7d9_shop_api-{id}.log"));
    let long = "x".repeat(20_000);
    let lines = format!(
        "2026-12-01T12:00:00.000000001Z stdout P {}\n2026-12-01T12:00:00.000000002Z stdout F {}\n\
         2026-12-01T12:00:01.5Z stderr F order 17 failed\nnot a cri line\n",
        &long[..16_384],
        &long[16_384..]
    );
    std::fs::write(&file, lines).expect("write the container's log");
    run_until_two_records_and_one_parse_failure(&workspace);
    let objects: Vec<serde_json::Value> = accepted(&fake).iter().map(|record| serde_json::from_str(record).expect("JSON")).collect();
    assert_eq!(objects.len(), 2, "the split line is one record");
    assert_eq!(objects[0]["log"].as_str().map(str::len), Some(20_000));
    assert_eq!(objects[0]["time"], "2026-12-01T12:00:00.000000001Z");
    let pod = serde_json::json!({"pod_name": "checkout-5c7d9", "namespace_name": "shop", "container_name": "api", "container_id": id});
    assert_eq!((&objects[0]["kubernetes"], &objects[1]["kubernetes"]), (&pod, &pod));
    assert_eq!((objects[1]["stream"].as_str(), objects[1]["log"].as_str()), (Some("stderr"), Some("order 17 failed")));
}

/// `tailhose run --once` with IMDS at `imds`.
fn run_once_with_imds(workspace: &Workspace, imds: &FakeImds) -> std::process::Output {
    workspace
        .tailhose(&["run", "--config", "tailhose.toml", "--once"])
        .env("AWS_EC2_METADATA_DISABLED", "false")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.endpoint)
        .output()
        .expect("tailhose runs")
}

#[test]
fn ec2_instance_metadata_is_read_once_through_imdsv2_and_added_to_every_record_and_without_imds_start_up_stops() {
    let fake = FakeFirehose::start(Faults::default());
    let imds = FakeImds::start();
    let workspace = Workspace::new();
    workspace.write_config_for_endpoint(&fake.endpoint, "\n[sources.conect.add_fields]\nec2_metadata_key = \"ec2\"", "");
    support::write_seed_records(&workspace.log_file(), 0..1_000, 1_000, Duration::ZERO);
    let output = run_once_with_imds(&workspace, &imds);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let accepted = accepted(&fake);
    assert_eq!(accepted.len(), 1_000);
    let instance =
        serde_json::json!({"instance_id": "i-0123456789abcdef0", "region": "ap-northeast-2", "availability_zone": "ap-northeast-2c"});
    for record in &accepted {
        let object: serde_json::Value = serde_json::from_str(record).expect("JSON");
        assert_eq!(object["ec2"], instance, "{record}");
    }
    // Once at start-up, not per record: a token, then each value with it.
    assert_eq!(
        imds.requests(),
        [
            "PUT /latest/api/token",
            "GET /latest/meta-data/instance-id",
            "GET /latest/meta-data/placement/region",
            "GET /latest/meta-data/placement/availability-zone"
        ]
    );

    // With IMDS turned off, records would go out without the fields asked for: start-up stops.
    support::write_seed_records(&workspace.log_file(), 1_000..1_010, 10, Duration::ZERO);
    let output = workspace.run(&["run", "--config", "tailhose.toml", "--once"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("AWS_EC2_METADATA_DISABLED turns IMDS off"), "{stderr}");
    assert_eq!(fake.seen().accepted.len(), 1_000, "nothing sent without its fields");
}

#[test]
fn the_kinesis_agents_ec2_metadata_goes_at_the_top_level_from_the_identity_document_and_without_instance_tags_records_still_go() {
    for (imds, tags) in [(FakeImds::start(), Some(serde_json::json!({"name": "web-7", "team": "video"}))), (FakeImds::without_tags(), None)]
    {
        let fake = FakeFirehose::start(Faults::default());
        let workspace = Workspace::new();
        workspace.write_config_for_endpoint(&fake.endpoint, "\n[sources.conect.add_fields]\nkinesis_agent_ec2_metadata = true", "");
        support::write_seed_records(&workspace.log_file(), 0..100, 100, Duration::ZERO);
        let started_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs();
        let output = run_once_with_imds(&workspace, &imds);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        let accepted = accepted(&fake);
        assert_eq!(accepted.len(), 100);
        for record in &accepted {
            let object: serde_json::Value = serde_json::from_str(record).expect("JSON");
            // The agent's names and order; `amiId` is the document's `imageId`.
            let expected = [
                ("privateIp", "10.0.1.23"),
                ("availabilityZone", "ap-northeast-2c"),
                ("instanceId", "i-0123456789abcdef0"),
                ("instanceType", "m6i.large"),
                ("accountId", "123456789012"),
                ("amiId", "ami-0a1b2c3d4e5f67890"),
                ("region", "ap-northeast-2"),
            ];
            for (name, value) in expected {
                assert_eq!(object[name], value, "{name} in {record}");
            }
            // The record as written, then the agent's fields in its order.
            let at = |name: &str| record.find(&format!("\"{name}\":")).unwrap_or_else(|| panic!("{name} in {record}"));
            assert!(record.starts_with("{\"board_id\""), "{record}");
            assert!(expected.windows(2).all(|pair| at(pair[0].0) < at(pair[1].0)) && at("seq") < at("privateIp"), "{record}");
            let stamp = object["metadataTimestamp"].as_str().expect("metadataTimestamp");
            let read_at = chrono::DateTime::parse_from_str(stamp, "%Y-%m-%dT%H:%M:%S%z").expect("Java's yyyy-MM-dd'T'HH:mm:ssZ");
            assert!(read_at.timestamp() as u64 + 1 >= started_s, "read at start-up: {stamp}");
            assert_eq!(object.get("tags"), tags.as_ref(), "{record}");
        }
        match tags {
            Some(_) => assert!(!stderr.contains("instance tags"), "{stderr}"),
            None => {
                assert!(stderr.contains("IMDS gives no instance tags") && stderr.contains("--instance-metadata-tags enabled"), "{stderr}")
            }
        }
        // Once at start-up: the document, and the tags' keys and values.
        let requests = imds.requests();
        assert_eq!(requests.iter().filter(|request| request.contains("instance-identity/document")).count(), 1, "{requests:?}");
    }
}

/// Every line of every file under `folder`, in no particular order.
fn lines_under(folder: &std::path::Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(folder).expect("read the folder").flatten() {
        let path = entry.path();
        if path.is_dir() {
            lines.extend(lines_under(&path));
        } else {
            lines.extend(std::fs::read_to_string(&path).expect("read a file").lines().map(str::to_owned));
        }
    }
    lines
}

#[test]
fn parsed_records_with_added_fields_land_the_same_in_s3_packed_or_not_and_in_the_directory_sink() {
    let text: String = (0..500).map(|seq| format!("seq={seq} level=info msg=\"viewed video {seq}\"\n")).collect();
    let tables = "\n[sources.conect.parse]\ntype = \"logfmt\"\ntypes = { seq = \"integer\" }\n\
                  [sources.conect.add_fields]\nstatic = { env = \"prod\" }\nrecord_id_key = \"record_id\"";
    // What each run delivered, without the record ids (each run reads its own file).
    let mut runs: Vec<Vec<String>> = Vec::new();
    let without_id = |lines: Vec<String>| -> Vec<String> {
        let mut objects: Vec<String> = lines
            .iter()
            .map(|line| {
                let mut object: serde_json::Value = serde_json::from_str(line).expect("each line one JSON object");
                let id = object.as_object_mut().and_then(|fields| fields.remove("record_id"));
                assert!(id.is_some_and(|id| id.is_string()), "{line}");
                object.to_string()
            })
            .collect();
        objects.sort();
        objects
    };
    for sink_lines in ["", "pack_records = true"] {
        let moto = support::Moto::start();
        let workspace = Workspace::new();
        workspace.write_config_for_endpoint(&moto.endpoint, tables, sink_lines);
        workspace.rewrite_config(|config| config.replace("format = \"json\"\n", ""));
        std::fs::write(workspace.log_file(), &text).expect("write the log");
        let output = workspace.run_once();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let delivered = moto.delivered();
        assert_eq!(delivered.records.len(), 500, "{sink_lines}");
        let ids: std::collections::BTreeSet<String> = delivered
            .records
            .iter()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("JSON")["record_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(ids.len(), 500, "one id per record");
        runs.push(without_id(delivered.records));
    }
    // The directory sink, with the same source.
    let workspace = Workspace::new();
    workspace.write_config_for_endpoint("http://127.0.0.1:9", tables, "");
    workspace.rewrite_config(|config| {
        let config = config.replace("format = \"json\"\n", "");
        let sink = config.find("[sinks.events]").expect("the sink table");
        format!("{}[sinks.events]\ntype = \"directory\"\ninputs = [\"conect\"]\npath = \"out\"\nflush_interval = \"200ms\"\nappend_newline = true\n", &config[..sink])
    });
    std::fs::write(workspace.log_file(), &text).expect("write the log");
    let output = workspace.run_once();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    runs.push(without_id(lines_under(&workspace.path().join("out"))));
    assert_eq!(runs[0].len(), 500);
    assert_eq!(runs[0], runs[1], "packed records unpack to the same objects");
    assert_eq!(runs[0], runs[2], "the directory sink holds the same objects");
    assert!(runs[0][0].contains("\"env\":\"prod\"") && runs[0][0].contains("\"seq\":"), "{}", runs[0][0]);
}

#[test]
fn a_csv_files_header_is_skipped_and_counted_and_a_restart_after_it_skips_nothing() {
    let fake = FakeFirehose::start(Faults::default());
    let workspace = Workspace::new();
    write_config(
        &workspace,
        &fake.endpoint,
        "skip_header_lines = 1\n\n[sources.app.parse]\ntype = \"csv\"\ncolumns = [\"user\", \"video\", \"seconds\"]",
    );
    append(&workspace, "user,video,seconds\nalice,17,15\nbob,18,3\n");
    let daemon = workspace.start_daemon();
    let address = workspace.admin_address();
    wait_until(Duration::from_secs(30), "two records acknowledged", || (records_acked(&address) == Some(2)).then_some(()));
    let (_, metrics) = http_get(&address, "/metrics").expect("metrics");
    assert!(metrics.contains("tailhose_header_lines_total 1"), "{metrics}");
    assert!(!metrics.contains("reason=\"parse_failed\"} 1"), "the header is no dead letter: {metrics}");
    assert!(daemon.terminate(Duration::from_secs(15)).success());

    append(&workspace, "carol,19,9\n");
    let daemon = workspace.start_daemon();
    let address = workspace.admin_address();
    wait_until(Duration::from_secs(30), "the record written while stopped", || (records_acked(&address) == Some(1)).then_some(()));
    let (_, metrics) = http_get(&address, "/metrics").expect("metrics");
    assert!(metrics.contains("tailhose_header_lines_total 0"), "read from its position, the file has no header: {metrics}");
    assert!(daemon.terminate(Duration::from_secs(15)).success());
    assert_eq!(
        accepted(&fake),
        vec![
            r#"{"user":"alice","video":"17","seconds":"15"}"#,
            r#"{"user":"bob","video":"18","seconds":"3"}"#,
            r#"{"user":"carol","video":"19","seconds":"9"}"#
        ]
    );
}

fn succeeded(output: std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[test]
fn queue_commands_show_export_verify_and_replay_parsed_records_as_they_were_first_sent() {
    let fake = FakeFirehose::start(Faults::default());
    let workspace = Workspace::new();
    write_config(&workspace, &fake.endpoint, "[sources.app.parse]\ntype = \"nginx\"");
    // The sink is the configuration's last table: keep what it delivered, for replay.
    workspace.rewrite_config(|config| config + "retain_acked = \"1h\"\n");
    let first = r#"203.0.113.9 - - [01/Dec/2026:12:00:00 +0000] "GET /videos/17 HTTP/1.1" 200 5120 "-" "Mozilla/5.0""#;
    let second = r#"203.0.113.10 - bob [01/Dec/2026:12:00:01 +0000] "POST /views HTTP/1.1" 201 0 "-" "curl/8.5""#;
    append(&workspace, &format!("{first}\nnot an access log line\n{second}\n"));
    run_until_two_records_and_one_parse_failure(&workspace);
    let sent = accepted(&fake);
    assert!(sent.iter().all(|record| record.starts_with("{\"remote\":")), "{sent:?}");

    let listing = succeeded(workspace.run(&["queue", "list", "--config", "tailhose.toml", "--state", "retained", "--json"]));
    let chunks: Vec<serde_json::Value> = listing.lines().map(|line| serde_json::from_str(line).expect("a JSON line per chunk")).collect();
    assert_eq!(chunks.iter().map(|chunk| chunk["records"].as_u64().expect("records")).sum::<u64>(), 2, "{listing}");
    let shown: Vec<String> = chunks
        .iter()
        .flat_map(|chunk| {
            let seq = chunk["seq"].as_u64().expect("seq").to_string();
            let shown = succeeded(workspace.run(&["queue", "show", "--config", "tailhose.toml", &seq, "--format", "raw"]));
            shown.lines().map(str::to_owned).collect::<Vec<_>>()
        })
        .collect();
    let exported = succeeded(workspace.run(&["queue", "export", "--config", "tailhose.toml"]));
    let exported: Vec<String> = exported
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("JSON line")["record"].as_str().expect("record").to_owned())
        .collect();
    assert_eq!(shown, sent, "show prints the objects sent");
    assert_eq!(exported, sent, "export writes the objects sent");
    succeeded(workspace.run(&["queue", "verify", "--config", "tailhose.toml"]));
    let letters = succeeded(workspace.run(&["queue", "dead-letters", "--config", "tailhose.toml"]));
    let letter: serde_json::Value = serde_json::from_str(letters.lines().next().expect("one dead letter")).expect("JSON");
    assert_eq!((letter["reason"].as_str(), letter["record"].as_str()), (Some("parse_failed"), Some("not an access log line")));

    // A replay sends the very bytes of the first delivery: the record is what was queued.
    succeeded(workspace.run(&["queue", "replay", "--config", "tailhose.toml", "--retained"]));
    let mut replayed = accepted(&fake)[sent.len()..].to_vec();
    replayed.sort();
    let mut first_sent = sent.clone();
    first_sent.sort();
    assert_eq!(replayed, first_sent);
}
