//! Tailing as the daemon does it, end to end: change notifications wake the reader.

mod support;

use std::time::{Duration, Instant};

use support::fake_firehose::{FakeFirehose, Faults};
use support::Workspace;

#[test]
fn a_line_written_at_idle_is_delivered_through_change_notification_without_waiting_for_the_poll() {
    let fake = FakeFirehose::start(Faults::default());
    let workspace = Workspace::new();
    // Polling every minute: only a change notification can bring the line in quickly.
    workspace.write_config_for_endpoint(&fake.endpoint, "", "");
    workspace.rewrite_config(|config| {
        config
            .replace("poll_interval = \"50ms\"", "poll_interval = \"60s\"")
            .replace("refresh_interval = \"1s\"", "refresh_interval = \"60s\"")
            .replace("flush_interval = \"1s\"", "flush_interval = \"100ms\"")
    });
    std::fs::write(workspace.log_file(), support::seed_record(0) + "\n").expect("first line");
    let daemon = workspace.start_daemon();
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake.seen().accepted.is_empty() {
        assert!(Instant::now() < deadline, "the first line was not delivered: {}", daemon.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    support::write_seed_records(&workspace.log_file(), 1..2, 1, Duration::ZERO);
    let written = Instant::now();
    while fake.seen().accepted.len() < 2 {
        assert!(written.elapsed() < Duration::from_secs(20), "the line written at idle was not picked up without a poll: {}", daemon.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let latency = written.elapsed();
    assert!(daemon.terminate(Duration::from_secs(15)).success());
    // The documented bound: acknowledged within flush_interval + 200 ms (112 ms measured).
    assert!(latency < Duration::from_millis(100 + 200), "delivered {latency:?} after its write: the notification did not wake the reader");
    eprintln!("line written at idle delivered in {latency:?} (flush_interval 100ms, poll_interval 60s)");
}
