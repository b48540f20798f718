//! `tailhose status`: the daemon's `/status` as a table, or the stored queue when no daemon runs.

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use crate::admin::{self, client, StatusReport};
use crate::config::Config;
use crate::queue::QueueStats;

const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn show(config_path: &Path, json: bool) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    // The daemon of this data_dir writes where its endpoint listens; the configured address could
    // belong to another tailhose on the same host.
    let recorded_address: Option<std::net::SocketAddr> =
        std::fs::read_to_string(config.data_dir.join(admin::ADDRESS_FILE)).ok().and_then(|text| text.trim().parse().ok());
    let answer = match recorded_address {
        Some(address) => client::get(address, "/status", ANSWER_TIMEOUT).await.map(|body| (address, body)),
        None => Err(client::ClientError::Unreachable { address: config.admin.address, reason: "no admin-address file in data_dir".into() }),
    };
    let report = match answer {
        Ok((address, body)) => {
            let report = serde_json::from_str::<StatusReport>(&body)
                .map_err(|error| anyhow::anyhow!("{address}/status answered unreadable JSON: {error}"))?;
            if report.data_dir != config.data_dir {
                anyhow::bail!(
                    "{address} belongs to the tailhose of data_dir {}, not {}",
                    report.data_dir.display(),
                    config.data_dir.display()
                );
            }
            report
        }
        Err(client::ClientError::Unreachable { address, reason }) => {
            if let Some(pid) = admin::running_pid(&config.data_dir) {
                anyhow::bail!("tailhose (PID {pid}) runs on this data_dir but its admin endpoint does not answer ({address}: {reason}); is [admin] enabled?");
            }
            let routes = stored_routes(&config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&routes)?);
            } else {
                print!("tailhose is not running ({reason}); the queue as stored:\n\n{}", render_routes(&routes));
            }
            return Ok(());
        }
        Err(error) => return Err(error.into()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    if !report.health.healthy {
        anyhow::bail!("unhealthy: {}", report.health.reasons.join("; "));
    }
    Ok(())
}

fn stored_routes(config: &Config) -> anyhow::Result<Vec<QueueStats>> {
    super::queue::Routes::open_store(super::open_store(&config.data_dir, config.queue_cache_bytes.0)?, None, super::queue::Access::Inspect)?
        .stats()
}

fn render(report: &StatusReport) -> String {
    let mut out = String::new();
    let health = if report.health.healthy { "healthy".to_owned() } else { format!("UNHEALTHY: {}", report.health.reasons.join("; ")) };
    let _ = writeln!(out, "tailhose {} running, PID {}, up {}s; {health}\n", report.version, report.pid, report.uptime_seconds);
    out.push_str(&render_routes(&report.routes));
    let events = &report.events;
    let _ = writeln!(
        out,
        "\nsince start: {} records read, {} acknowledged ({} bytes sent, {} before compression, as {} sink records billed as {} units (5 KB for Firehose, 25 KB for Kinesis), {} units fewer than one record per line uncompressed) in {} calls; {} dead-lettered; {} failed entries, {} throttled calls, {} failed calls, {} retries",
        events.records_read,
        events.records_acked,
        events.bytes_acked,
        events.bytes_acked_before_compression,
        events.sink_records_acked,
        events.billed_units,
        events.billed_units_saved,
        events.calls,
        events.dead_letters,
        events.failed_entries,
        events.throttled_calls,
        events.failed_calls,
        events.retries
    );
    if let Some(problem) = &report.last_sink_problem {
        let age_s = crate::queue::now_ms().saturating_sub(problem.at_ms) / 1000;
        let _ = writeln!(out, "last sink problem ({}s ago, route {}): {}", age_s, problem.route, problem.message);
    }
    out
}

fn render_routes(routes: &[QueueStats]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:>10} {:>12} {:>10} {:>8} {:>9} {:>14} {:>9}",
        "ROUTE", "PENDING", "BYTES", "OLDEST", "DEAD", "RETAINED", "RETAINED BYTES", "SET ASIDE"
    );
    for route in routes {
        let oldest = route.oldest_pending_age_ms.map_or("-".to_owned(), |age| format!("{:.1}s", age as f64 / 1000.0));
        let _ = writeln!(
            out,
            "{:<28} {:>10} {:>12} {:>10} {:>8} {:>9} {:>14} {:>9}",
            route.route,
            route.pending_records,
            route.pending_bytes,
            oldest,
            route.dead_letters,
            route.retained_chunks,
            route.retained_bytes,
            route.set_aside_chunks
        );
    }
    for route in routes.iter().filter(|route| !route.files.is_empty()) {
        let _ = writeln!(out, "\nfiles of {}:\n{:>14} {:>14} {:>14}  PATH", route.route, "READ", "ACKNOWLEDGED", "BEHIND");
        for file in &route.files {
            let behind = file.bytes_behind.map_or("(moved)".to_owned(), |behind| behind.to_string());
            let _ = writeln!(out, "{:>14} {:>14} {:>14}  {}", file.queued_offset, file.acked_offset, behind, file.path);
        }
    }
    out
}
