//! The command line as a user meets it: the README's quick start, `check-config`, and the
//! queue commands next to a running daemon.

mod support;

use std::path::Path;
use std::time::Duration;

use support::Workspace;

fn lines_under(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                lines.extend(lines_under(&path));
            } else if !entry.file_name().to_string_lossy().starts_with('.') {
                lines.extend(std::fs::read_to_string(&path).expect("utf-8 output").lines().map(str::to_owned));
            }
        }
    }
    lines
}

#[test]
fn the_quickstart_delivers_the_bundled_sample_to_a_local_folder_once() {
    let workspace = Workspace::new();
    // The bundled files only: a developer's checkout may hold the README demo's generated log.
    std::fs::create_dir_all(workspace.path().join("data/sample")).expect("mkdir");
    for file in ["quickstart.toml", "sample/test_fluentd_firehose.log"] {
        std::fs::copy(support::repo_root().join("data").join(file), workspace.path().join("data").join(file)).expect("copy");
    }
    let sample_lines =
        std::fs::read_to_string(workspace.path().join("data/sample/test_fluentd_firehose.log")).expect("sample").lines().count();
    for _ in 0..2 {
        let output = workspace.run(&["run", "--config", "data/quickstart.toml", "--once"]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let mut delivered = lines_under(&workspace.path().join("target/quickstart/out"));
    assert_eq!(delivered.len(), sample_lines, "every sample record once, also after a second run");
    let mut expected: Vec<String> = std::fs::read_to_string(workspace.path().join("data/sample/test_fluentd_firehose.log"))
        .expect("sample")
        .lines()
        .map(str::to_owned)
        .collect();
    delivered.sort();
    expected.sort();
    assert_eq!(delivered, expected, "byte-identical records");
    let verified = workspace.run(&["verify-delivery", "--dir", "target/quickstart/out", "--expect", &sample_lines.to_string()]);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
    let report: serde_json::Value = serde_json::from_slice(&verified.stdout).expect("a JSON report");
    assert_eq!(
        (report["distinct"].as_u64(), report["duplicates"].as_u64(), report["missing"].as_u64()),
        (Some(sample_lines as u64), Some(0), Some(0))
    );
    std::fs::write(workspace.path().join("target/quickstart/out/extra"), "{\"seq\": 0}\n").expect("a duplicate");
    let verified = workspace.run(&["verify-delivery", "--dir", "target/quickstart/out", "--expect", &sample_lines.to_string()]);
    assert!(!verified.status.success(), "a duplicate fails verify-delivery");
}

#[test]
fn check_config_accepts_the_bundled_configuration() {
    let workspace = Workspace::new();
    let config = support::repo_root().join("data/quickstart.toml");
    let output = workspace.run(&["check-config", "--config", config.to_str().expect("utf-8")]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn check_config_names_the_key_the_line_and_the_problem() {
    let workspace = Workspace::new();
    std::fs::write(
        workspace.config(),
        "data_dir = \"state\"\n[sources.conect]\npaths = [\"source/*.log\"]\n[sinks.events]\ntype = \"firehose\"\ninputs = [\"other\"]\ndelivery_stream = \"s\"\nflush_intervall = \"1s\"\n",
    )
    .expect("write");
    let output = workspace.run(&["check-config", "--config", "tailhose.toml"]);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("line 8") && message.contains("flush_intervall"), "{message}");

    std::fs::write(
        workspace.config(),
        "data_dir = \"state\"\n[sources.conect]\npaths = [\"source/*.log\"]\n[sinks.events]\ntype = \"firehose\"\ninputs = [\"other\"]\nmax_batch_records = 900\n",
    )
    .expect("write");
    let output = workspace.run(&["check-config", "--config", "tailhose.toml"]);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    for expected in
        ["line 6: `sinks.events.inputs`: no source is named `other`", "sinks.events.max_batch_records", "sinks.events.delivery_stream"]
    {
        assert!(message.contains(expected), "missing {expected:?} in {message}");
    }
}

/// Waits for the daemon's log to say its route started (fails the test after 20 s).
fn wait_until_started(daemon: &support::Daemon) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !daemon.log().contains("route started") {
        assert!(std::time::Instant::now() < deadline, "daemon did not start: {}", daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn queue_commands_refuse_a_data_dir_in_use_by_a_running_daemon() {
    let fake = support::fake_firehose::FakeFirehose::start(Default::default());
    let workspace = Workspace::new();
    workspace.write_config_for_endpoint(&fake.endpoint, "", "");
    let daemon = workspace.start_daemon();
    wait_until_started(&daemon);
    let output = workspace.run(&["queue", "stats", "--config", "tailhose.toml"]);
    assert!(!output.status.success(), "a second process must not open the queue");
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("in use by another process"), "{message}");
    assert!(message.contains(&format!("PID {}", daemon.pid())), "the refusal names the running daemon: {message}");
    assert!(daemon.terminate(Duration::from_secs(15)).success());
    let output = workspace.run(&["queue", "stats", "--config", "tailhose.toml"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// A daemon's log on a file (or the journal) is plain text: colour escape codes there split each
/// field (`route=` came out as `\x1b[3mroute\x1b[0m\x1b[2m=\x1b[0m`), so grep found no field.
#[test]
fn a_log_written_to_a_file_has_no_colour_codes_and_its_fields_read_as_key_equals_value() {
    let fake = support::fake_firehose::FakeFirehose::start(Default::default());
    let workspace = Workspace::new();
    workspace.write_config_for_endpoint(&fake.endpoint, "", "");
    let daemon = workspace.start_daemon();
    wait_until_started(&daemon);
    let log = daemon.log();
    assert!(daemon.terminate(Duration::from_secs(15)).success());
    assert!(!log.contains('\x1b'), "no escape codes in a log file: {log:?}");
    assert!(log.contains("route=\""), "fields read as key=value: {log}");
}
