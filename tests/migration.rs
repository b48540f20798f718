//! From the seed's Fluentd set-up to tailhose: the seed's configuration imported and run against
//! moto, Fluentd's pos_file positions taken over, record packing for the 5 KB bill, and the
//! seed's load generator.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::fake_firehose::{FakeFirehose, Faults};
use support::{seq_of, wait_until, write_seed_records, Moto, Workspace};

/// Where the seed's published configuration keeps its project.
const SEED_PROJECT: &str = "/Users/st/test/conect_data_poc";

/// The seed's Fluentd configuration (data/fluentd/kinesis_test.config, as published), moved into
/// the workspace and pointed at a local endpoint, with the seed's folders (`pos/`, `source/`).
fn seed_fluentd_setup(workspace: &Workspace, endpoint: &str) -> PathBuf {
    let seed = std::fs::read_to_string(support::repo_root().join("data/fluentd/kinesis_test.config")).expect("seed config");
    assert!(seed.contains(SEED_PROJECT) && seed.contains("  region ap-northeast-2\n"), "the fixture is the seed's configuration");
    let text = seed
        .replace(SEED_PROJECT, &workspace.path().to_string_lossy())
        .replace("  region ap-northeast-2\n", &format!("  region ap-northeast-2\n  endpoint {endpoint}\n"));
    std::fs::create_dir_all(workspace.path().join("pos")).expect("pos folder");
    let path = workspace.path().join("kinesis_test.config");
    std::fs::write(&path, text).expect("write fluentd config");
    path
}

/// Imports the Fluentd set-up into `tailhose.toml` with data_dir `state`; returns what it printed.
fn import(workspace: &Workspace, fluentd: &Path) -> std::process::Output {
    workspace.run(&["import", "fluentd", "--config", fluentd.to_str().expect("utf-8"), "--out", "tailhose.toml", "--data-dir", "state"])
}

/// An import that would change delivery: exit 1, each of `expected` reported, the configuration
/// written for review (returned), no positions imported.
fn assert_refused_for_review(workspace: &Workspace, output: &std::process::Output, expected: &[&str]) -> String {
    assert_eq!(output.status.code(), Some(1), "{}", stderr(output));
    let report = stderr(output);
    for expected in expected.iter().chain(&["positions not imported"]) {
        assert!(report.contains(expected), "missing {expected:?} in\n{report}");
    }
    assert!(!workspace.path().join("state/queue").exists(), "no positions imported");
    std::fs::read_to_string(workspace.config()).expect("the configuration is written for review")
}

/// Imports the Kinesis Agent set-up `agent_json` into `tailhose.toml` with data_dir `state`.
fn import_agent(workspace: &Workspace, agent_json: &Path) -> std::process::Output {
    workspace.run(&[
        "import",
        "kinesis-agent",
        "--config",
        agent_json.to_str().expect("utf-8"),
        "--out",
        "tailhose.toml",
        "--data-dir",
        "state",
    ])
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Test daemons run side by side: their admin endpoints take a free port instead of 8686.
fn allow_parallel_daemons(workspace: &Workspace) {
    workspace.rewrite_config(|config| config + "\n[admin]\naddress = \"127.0.0.1:0\"\n");
}

fn accepted_seqs(fake: &FakeFirehose) -> Vec<u64> {
    fake.seen()
        .accepted
        .iter()
        .flat_map(|record| record.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()).map(seq_of).collect::<Vec<_>>())
        .collect()
}

#[test]
fn the_seeds_fluentd_configuration_imports_and_delivers_the_seeds_ten_thousand_records_once() {
    let moto = Moto::start();
    let workspace = Workspace::new();
    let fluentd = seed_fluentd_setup(&workspace, &moto.endpoint);
    // The seed's layout: the log file is there before the forwarder starts.
    std::fs::write(workspace.log_file(), "").expect("log file");
    let output = import(&workspace, &fluentd);
    assert!(output.status.success(), "{}", stderr(&output));
    let imported = std::fs::read_to_string(workspace.config()).expect("imported config");
    for expected in [
        "delivery_stream = \"test-fluentd-firehose\"",
        "region = \"ap-northeast-2\"",
        "flush_interval = \"1s\"",
        "refresh_interval = \"5s\"",
        "read_from_head = false",
        "append_newline = true",
        "format = \"json\"",
    ] {
        assert!(imported.contains(expected), "missing {expected:?} in\n{imported}");
    }
    allow_parallel_daemons(&workspace);

    let daemon = workspace.start_daemon();
    workspace.admin_address();
    let log = workspace.log_file();
    let generated =
        workspace.run(&["generate", "--out", log.to_str().expect("utf-8"), "--count", "10000", "--rate", "5000/s", "--burst", "100"]);
    assert!(generated.status.success(), "{}", stderr(&generated));
    let delivered = moto.wait_for(Duration::from_secs(90), |delivered| delivered.records.len() >= 10_000);
    assert_eq!(delivered.distinct(), 10_000, "every generated record arrived");
    std::thread::sleep(Duration::from_secs(2));
    let delivered = moto.delivered();
    assert_eq!((delivered.records.len(), delivered.duplicates()), (10_000, 0), "each exactly once");
    // The repository's own check of a bucket agrees.
    let verified = std::process::Command::new(support::repo_root().join("scripts/verify-delivery-s3"))
        .args(["--bucket", support::BUCKET, "--endpoint", &moto.endpoint, "--region", support::REGION, "--expect", "10000"])
        .env("TAILHOSE", env!("CARGO_BIN_EXE_tailhose"))
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .expect("verify-delivery-s3 runs");
    assert!(verified.status.success(), "{}{}", String::from_utf8_lossy(&verified.stdout), stderr(&verified));
    let report: serde_json::Value = serde_json::from_slice(&verified.stdout).expect("a JSON report");
    assert_eq!((report["distinct"].as_u64(), report["duplicates"].as_u64(), report["missing"].as_u64()), (Some(10_000), Some(0), Some(0)));
    assert!(daemon.terminate(Duration::from_secs(15)).success());
}

#[test]
fn fluentds_positions_make_tailhose_resume_where_fluentd_stopped_and_a_changed_file_is_reported() {
    let fake = FakeFirehose::start(Faults::default());
    let workspace = Workspace::new();
    let fluentd = seed_fluentd_setup(&workspace, &fake.endpoint);
    let log = workspace.log_file();
    write_seed_records(&log, 0..1000, 1000, Duration::ZERO);
    let text = std::fs::read_to_string(&log).expect("log");
    let stopped_at: usize = text.lines().take(400).map(|line| line.len() + 1).sum();
    let other = workspace.path().join("source/other.log");
    write_seed_records(&other, 5000..5050, 50, Duration::ZERO);
    let gone = workspace.path().join("source/gone.log");
    use std::os::unix::fs::MetadataExt;
    let inode = |path: &Path| std::fs::metadata(path).expect("metadata").ino();
    let pos_file = format!(
        "{}\t{stopped_at:016x}\t{:016x}\n{}\t{:016x}\t{:016x}\n{}\t{:016x}\t{:016x}\n",
        log.display(),
        inode(&log),
        other.display(),
        100,
        inode(&other) + 12_345,
        gone.display(),
        10,
        7
    );
    std::fs::create_dir_all(workspace.path().join("pos")).expect("pos");
    std::fs::write(workspace.path().join("pos/pos_file.pos"), pos_file).expect("pos file");

    let output = import(&workspace, &fluentd);
    assert!(output.status.success(), "{}", stderr(&output));
    let report = stderr(&output);
    assert!(report.contains(&format!("imported: tailhose starts at byte {stopped_at}")), "{report}");
    assert!(report.contains("other.log") && report.contains("rotated since?"), "{report}");
    assert!(report.contains("gone.log") && report.contains("no longer exists"), "{report}");
    allow_parallel_daemons(&workspace);

    let daemon = workspace.start_daemon();
    workspace.admin_address();
    wait_until(Duration::from_secs(30), "the 600 records after Fluentd's position", || (fake.seen().accepted.len() >= 600).then_some(()));
    write_seed_records(&log, 1000..1100, 100, Duration::ZERO);
    write_seed_records(&other, 5050..5060, 10, Duration::ZERO);
    wait_until(Duration::from_secs(30), "the records written after the start", || (fake.seen().accepted.len() >= 710).then_some(()));
    std::thread::sleep(Duration::from_millis(1500));
    let seqs = accepted_seqs(&fake);
    let expected: Vec<u64> = (400..1100).chain(5050..5060).collect();
    assert_eq!(
        seqs.iter().copied().collect::<BTreeSet<u64>>(),
        expected.iter().copied().collect(),
        "nothing before the positions, all after"
    );
    assert_eq!(seqs.len(), expected.len(), "none twice");
    assert!(daemon.terminate(Duration::from_secs(15)).success());
}

#[test]
fn an_import_that_would_change_delivery_lists_every_point_with_its_line_and_exits_non_zero() {
    let workspace = Workspace::new();
    let fluentd = workspace.path().join("td-agent.conf");
    std::fs::write(
        &fluentd,
        "<source>\n  @type forward\n</source>\n<source>\n  @type tail\n  path /var/log/app/*.log\n  pos_file /var/log/td-agent/app.pos\n  tag app.web\n  <parse>\n    @type regexp\n  </parse>\n</source>\n<filter app.**>\n  @type grep\n</filter>\n<match app.**>\n  @type kinesis_firehose\n  delivery_stream_name web\n  aws_key_id AKIAEXAMPLE\n  compression lz4\n</match>\n",
    )
    .expect("write");
    let output = import(&workspace, &fluentd);
    let written = assert_refused_for_review(
        &workspace,
        &output,
        &[
            "td-agent.conf:2: changes delivery: `@type`",
            "td-agent.conf:10: changes delivery: `@type`",
            "td-agent.conf:13: changes delivery: `<filter>`",
            "td-agent.conf:19: action needed: `aws_key_id`",
            "td-agent.conf:20: changes delivery: `compression`",
        ],
    );
    assert!(!written.contains("AKIAEXAMPLE"), "credentials are never copied");
}

/// Runs `records` seed records through `tailhose run --once` to `endpoint`, packed or not;
/// returns its log.
fn deliver_once(endpoint: &str, records: u64, sink_lines: &str) -> String {
    let workspace = Workspace::new();
    workspace.write_config_for_endpoint(endpoint, "", sink_lines);
    let log = workspace.log_file();
    let generated = workspace.run(&["generate", "--out", log.to_str().expect("utf-8"), "--count", &records.to_string(), "--burst", "1000"]);
    assert!(generated.status.success(), "{}", stderr(&generated));
    stderr(&workspace.run_once())
}

#[test]
fn packed_records_land_in_s3_as_the_same_bytes_as_unpacked_ones() {
    let mut lines = Vec::new();
    for sink_lines in ["", "pack_records = true"] {
        let moto = Moto::start();
        let log = deliver_once(&moto.endpoint, 3000, sink_lines);
        assert!(!log.contains("cannot describe the delivery stream"), "the destination was checked through DescribeDeliveryStream: {log}");
        let mut sorted = moto.delivered().records;
        sorted.sort();
        lines.push(sorted);
    }
    assert_eq!(lines[0].len(), 3000);
    assert_eq!(lines[0], lines[1], "the same lines, byte for byte");
}

#[test]
fn packing_cuts_the_billed_units_more_than_thirtyfold_and_tailhose_counts_them() {
    let mut billed = Vec::new();
    for sink_lines in ["", "pack_records = true"] {
        let fake = FakeFirehose::start(Faults::default());
        let log = deliver_once(&fake.endpoint, 5000, sink_lines);
        let seen = fake.seen();
        let seqs = accepted_seqs(&fake);
        assert_eq!((seqs.len(), seqs.iter().collect::<BTreeSet<_>>().len()), (5000, 5000), "every record once");
        assert!(seen.max_record_bytes <= 5000, "a packed record stays in one billing unit: {}", seen.max_record_bytes);
        assert!(log.contains(&format!("\"billed_units\":{}", seen.billed_units)), "tailhose counts what Firehose bills: {log}");
        // One seed record alone is one unit: what packing saved is the rest.
        let saved = 5000 - seen.billed_units;
        assert!(log.contains(&format!("\"billed_units_saved\":{saved}")), "tailhose counts the units saved ({saved}): {log}");
        let bytes: usize = seen.accepted.iter().map(Vec::len).sum();
        billed.push((seen.accepted.len(), seen.billed_units, bytes));
    }
    let (unpacked, packed) = (billed[0], billed[1]);
    eprintln!("(Firehose records, billed 5 KB units, bytes) for 5,000 seed records: unpacked {unpacked:?}, packed {packed:?}");
    assert_eq!((unpacked.0, unpacked.1), (5000, 5000), "one unit per unpacked seed record");
    assert_eq!(packed.2, unpacked.2, "the same bytes sent");
    assert!(packed.1 * 30 <= unpacked.1, "packed: {packed:?}, unpacked: {unpacked:?}");
}

#[test]
fn packing_is_refused_for_a_stream_that_makes_one_document_per_record() {
    let moto = Moto::start();
    moto.create_elasticsearch_stream("conect-es");
    let workspace = Workspace::new();
    workspace.write_config_for_endpoint(&moto.endpoint, "", "pack_records = true");
    workspace.rewrite_config(|config| config.replace(support::STREAM, "conect-es"));
    write_seed_records(&workspace.log_file(), 0..10, 10, Duration::ZERO);
    let output = workspace.run(&["run", "--config", "tailhose.toml", "--once"]);
    assert!(!output.status.success(), "packing into Elasticsearch must not start");
    let message = stderr(&output);
    assert!(message.contains("Elasticsearch") && message.contains("pack_records = true would change"), "{message}");
}

/// The agent's checkpoint file as its `SQLiteFileCheckpointStore` creates it, with one row.
fn write_agent_checkpoint(path: &Path, flow: &str, recorded_path: &Path, file: &Path, offset: u64) {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(file).expect("metadata");
    let connection = rusqlite::Connection::open(path).expect("checkpoint file");
    connection
        .execute_batch(
            "create table if not exists FILE_CHECKPOINTS(flow text, path text, fileId text, lastModifiedTime bigint, size bigint, offset bigint, lastUpdated datetime, primary key (flow, path))",
        )
        .expect("table");
    // OpenJDK's UnixFileKey: the device in hex, the inode in decimal.
    let file_id = format!("(dev={:x},ino={})", metadata.dev(), metadata.ino());
    connection
        .execute(
            "insert into FILE_CHECKPOINTS values (?1, ?2, ?3, 0, ?4, ?5, strftime('%Y-%m-%d %H:%M:%f', 'now'))",
            rusqlite::params![flow, recorded_path.to_string_lossy(), file_id, metadata.len() as i64, offset as i64],
        )
        .expect("row");
}

fn set_modified(path: &Path, seconds_ago: u64) {
    let file = std::fs::OpenOptions::new().append(true).open(path).expect("open");
    file.set_modified(std::time::SystemTime::now() - Duration::from_secs(seconds_ago)).expect("set mtime");
}

#[test]
fn the_kinesis_agents_flow_and_checkpoint_import_and_tailhose_resumes_exactly_where_the_agent_stopped() {
    let moto = Moto::start();
    let workspace = Workspace::new();
    let folder = workspace.path().join("source");
    std::fs::create_dir_all(&folder).expect("source folder");
    // The agent had finished the oldest file, was 300 lines into the one rotated since (its
    // checkpoint names it by its name then), and had not reached the newest.
    let (finished, reading, newest) = (folder.join("events.log.2"), folder.join("events.log.1"), folder.join("events.log"));
    write_seed_records(&finished, 0..200, 200, Duration::ZERO);
    write_seed_records(&reading, 200..700, 500, Duration::ZERO);
    write_seed_records(&newest, 700..1000, 300, Duration::ZERO);
    std::fs::write(folder.join("events.log.3.gz"), b"\x1f\x8b not read by the agent").expect("compressed");
    // Created empty by the application just before the cut-over: nothing to import, and its
    // first lines, written before tailhose starts, are new to the agent too.
    let empty = folder.join("events.log.new");
    std::fs::write(&empty, b"").expect("empty file");
    for (path, seconds_ago) in [(&finished, 300), (&reading, 200), (&newest, 100)] {
        set_modified(path, seconds_ago);
    }
    let text = std::fs::read_to_string(&reading).expect("log");
    let stopped_at: u64 = text.lines().take(300).map(|line| line.len() as u64 + 1).sum();
    let pattern = format!("{}/events.log*", folder.display());
    let checkpoints = workspace.path().join("checkpoints");
    write_agent_checkpoint(&checkpoints, &format!("fh:{}:{pattern}", support::STREAM), &newest, &reading, stopped_at);
    let agent_json = workspace.path().join("agent.json");
    let agent = serde_json::json!({
        "cloudwatch.emitMetrics": false,
        "firehose.endpoint": moto.endpoint,
        "checkpointFile": checkpoints,
        "flows": [{"filePattern": pattern, "deliveryStream": support::STREAM, "maxBufferAgeMillis": 1000}],
    });
    std::fs::write(&agent_json, serde_json::to_string_pretty(&agent).expect("json")).expect("agent.json");

    let output = import_agent(&workspace, &agent_json);
    let report = stderr(&output);
    assert!(output.status.success(), "{report}");
    for expected in [
        format!("{} (the file the agent was reading): imported: tailhose starts at byte {stopped_at}", reading.display()),
        format!("{} (newer than the agent's file, not reached yet): imported: tailhose starts at byte 0", newest.display()),
        format!("{} (older than the agent's file, finished): imported", finished.display()),
        "action needed: `firehose.endpoint`".to_owned(),
    ] {
        assert!(report.contains(&expected), "missing {expected:?} in\n{report}");
    }
    let imported = std::fs::read_to_string(workspace.config()).expect("imported config");
    assert!(imported.contains("read_from_head = true"), "files without a position are read from their head: {imported}");
    // What the operator does for an endpoint that names no region.
    workspace.rewrite_config(|config| config.replace("endpoint_url = ", &format!("region = \"{}\"\nendpoint_url = ", support::REGION)));
    allow_parallel_daemons(&workspace);
    write_seed_records(&empty, 1100..1110, 10, Duration::ZERO);

    let daemon = workspace.start_daemon();
    workspace.admin_address();
    moto.wait_for(Duration::from_secs(60), |delivered| delivered.records.len() >= 510);
    write_seed_records(&newest, 1000..1100, 100, Duration::ZERO);
    moto.wait_for(Duration::from_secs(60), |delivered| delivered.records.len() >= 610);
    std::thread::sleep(Duration::from_millis(1500));
    let counts = moto.delivered().seq_counts();
    assert_eq!(counts.keys().copied().collect::<Vec<u64>>(), (500..1110).collect::<Vec<u64>>(), "nothing the agent sent, all it had not");
    assert!(counts.values().all(|&count| count == 1), "none twice: {counts:?}");
    assert!(daemon.terminate(Duration::from_secs(15)).success());
}

#[test]
fn an_agent_flow_tailhose_cannot_keep_is_listed_with_its_line_and_the_import_exits_non_zero() {
    let workspace = Workspace::new();
    let agent_json = workspace.path().join("agent.json");
    std::fs::write(
        &agent_json,
        r#"{
  "awsSecretAccessKey": "SECRETEXAMPLE",
  "flows": [
    {
      "filePattern": "/var/log/app/*.log",
      "deliveryStream": "app",
      "dataProcessingOptions": [{"optionName": "ADDBRACKETS"}]
    },
    {
      "filePattern": "/var/log/other/*.log",
      "kinesisStream": "other",
      "partitionKeyOption": "BY_FIELD"
    }
  ]
}"#,
    )
    .expect("agent.json");
    let output = import_agent(&workspace, &agent_json);
    let written = assert_refused_for_review(
        &workspace,
        &output,
        &[
            "agent.json:1: action needed: `awsSecretAccessKey`",
            "agent.json:5: changes delivery: `dataProcessingOptions ADDBRACKETS`",
            "agent.json:10: changes delivery: `partitionKeyOption`",
        ],
    );
    assert!(!written.contains("SECRETEXAMPLE"), "credentials are never copied");
    assert!(written.contains("type = \"kinesis_streams\"\n") && written.contains("stream_name = \"other\""), "{written}");
    assert!(written.contains("# flow at ") && written.contains("paths = [\"/var/log/app/*.log\"]"), "{written}");
}

/// The agent appends the flows of every file in `/etc/aws-kinesis/agent.d/` to agent.json's:
/// an import that read agent.json alone left those files unread after the cut-over.
#[test]
fn the_flows_of_agent_d_are_imported_beside_agent_json_and_every_file_is_delivered_once() {
    let fake = FakeFirehose::start(Faults::default());
    let workspace = Workspace::new();
    let folder = workspace.path().join("source");
    std::fs::create_dir_all(&folder).expect("source folder");
    write_seed_records(&folder.join("app.log"), 0..300, 300, Duration::ZERO);
    write_seed_records(&folder.join("audit.log"), 300..500, 200, Duration::ZERO);
    let flow = |file: &str| serde_json::json!({"filePattern": format!("{}/{file}", folder.display()), "deliveryStream": support::STREAM, "initialPosition": "START_OF_FILE"});
    let agent_json = workspace.path().join("agent.json");
    let agent = serde_json::json!({"firehose.endpoint": fake.endpoint, "flows": [flow("app.log")]});
    std::fs::write(&agent_json, agent.to_string()).expect("agent.json");
    let agent_d = workspace.path().join("agent.d");
    std::fs::create_dir_all(&agent_d).expect("agent.d");
    std::fs::write(agent_d.join("audit.json"), serde_json::json!({"flows": [flow("audit.log")]}).to_string()).expect("audit.json");
    std::fs::write(agent_d.join("broken.json"), "{ not json").expect("broken.json");

    let output = import_agent(&workspace, &agent_json);
    let report = stderr(&output);
    assert!(output.status.success(), "{report}");
    for expected in [format!("reading more flows from {}", agent_d.join("audit.json").display()), "broken.json:1: note: `flows`".to_owned()]
    {
        assert!(report.contains(&expected), "missing {expected:?} in\n{report}");
    }
    workspace.rewrite_config(|config| config.replace("endpoint_url = ", &format!("region = \"{}\"\nendpoint_url = ", support::REGION)));
    allow_parallel_daemons(&workspace);
    workspace.run_once();
    let mut seqs = accepted_seqs(&fake);
    seqs.sort_unstable();
    assert_eq!(seqs, (0..500).collect::<Vec<u64>>(), "both files' records, once each");
}

#[test]
fn a_fluentd_configuration_with_nginx_multiline_record_transformer_and_copy_imports_and_every_record_arrives_parsed_once() {
    let moto = Moto::start();
    let workspace = Workspace::new();
    let folder = workspace.path().join("source");
    std::fs::create_dir_all(&folder).expect("source folder");
    let (access, app) = (folder.join("access.log"), folder.join("orders.log"));
    let fluentd = workspace.path().join("td-agent.conf");
    let firehose = format!(
        "@type kinesis_firehose\n    delivery_stream_name {}\n    region {}\n    endpoint {}\n    <buffer>\n      flush_interval 1s\n    </buffer>",
        support::STREAM,
        support::REGION,
        moto.endpoint
    );
    std::fs::write(
        &fluentd,
        format!(
            r##"<source>
  @type tail
  path {access}
  pos_file {folder}/access.pos
  tag web.access
  read_from_head true
  <parse>
    @type nginx
  </parse>
</source>
<source>
  @type tail
  path {app}
  pos_file {folder}/orders.pos
  tag app.orders
  read_from_head true
  <parse>
    @type multiline
    format_firstline /^\d{{4}}-\d{{2}}-\d{{2}}/
    format1 /^(?<time>\S+ \S+) (?<level>\w+) +(?<message>.*)/
  </parse>
</source>
<filter app.**>
  @type record_transformer
  <record>
    host "#{{Socket.gethostname}}"
    service orders
  </record>
</filter>
<match web.**>
  @type copy
  <store>
    {firehose}
  </store>
  <store>
    @type stdout
  </store>
</match>
<match app.**>
  {firehose}
</match>
"##,
            access = access.display(),
            app = app.display(),
            folder = folder.display(),
        ),
    )
    .expect("td-agent.conf");
    let nginx_line = |index: u64| {
        format!(r#"203.0.113.{index} - - [01/Dec/2026:12:00:00 +0000] "GET /videos/{index} HTTP/1.1" 200 5120 "-" "Mozilla/5.0""#)
    };
    let mut lines: String = (0..100).map(|index| nginx_line(index) + "\n").collect();
    std::fs::write(&access, &lines).expect("access log");
    let trace = |index: u64| {
        format!(
            "2026-12-01 12:00:{:02}.000 ERROR [main] order {index} failed\njava.lang.IllegalStateException: order {index}\n\tat com.example.Orders.place(Orders.java:42)\n\tat com.example.Main.main(Main.java:7)\n",
            index % 60
        )
    };
    let traces: String = (0..50).map(trace).collect();
    std::fs::write(&app, &traces).expect("app log");

    let output = import(&workspace, &fluentd);
    let report = stderr(&output);
    assert!(output.status.success(), "{report}");
    assert!(report.contains("a `stdout` store only prints its copy"), "{report}");
    allow_parallel_daemons(&workspace);
    let daemon = workspace.start_daemon();
    workspace.admin_address();
    // The last trace is the file's last record: sent once the file has been quiet for the
    // multiline flush timeout.
    lines = (100..120).map(|index| nginx_line(index) + "\n").collect();
    write_to(&access, &lines);
    moto.wait_for(Duration::from_secs(60), |delivered| delivered.records.len() >= 170);
    std::thread::sleep(Duration::from_millis(1500));
    let delivered = moto.delivered();
    assert_eq!(delivered.records.len(), 170, "120 requests and 50 traces: {:?}", &delivered.records[..delivered.records.len().min(3)]);
    let objects: Vec<serde_json::Value> =
        delivered.records.iter().map(|record| serde_json::from_str(record).expect("every record arrives as a JSON object")).collect();
    let mut requests: Vec<&str> = objects.iter().filter_map(|object| object["remote"].as_str()).collect();
    requests.sort_unstable();
    requests.dedup();
    assert_eq!(requests.len(), 120, "each request once");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname").trim().to_owned();
    let mut orders: Vec<&serde_json::Value> = objects.iter().filter(|object| object["service"] == "orders").collect();
    assert_eq!(orders.len(), 50, "each trace one record, once");
    orders.sort_by_key(|object| object["message"].as_str().map(str::to_owned));
    let first = orders
        .iter()
        .find(|object| object["message"].as_str().is_some_and(|message| message.starts_with("[main] order 7 failed")))
        .expect("trace 7");
    assert_eq!(first["level"], "ERROR");
    assert_eq!(first["host"].as_str(), Some(hostname.as_str()));
    assert!(first["message"].as_str().is_some_and(|message| message.ends_with("\tat com.example.Main.main(Main.java:7)")), "{first}");
    assert!(
        objects.iter().filter(|object| object["remote"].is_string()).all(|object| object["service"].is_null()),
        "fields only where Fluentd added them"
    );
    assert!(daemon.terminate(Duration::from_secs(15)).success());
}

fn write_to(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).expect("open for append");
    file.write_all(text.as_bytes()).expect("append");
}
