//! The command line: `tailhose run`, `tailhose check-config`, `tailhose queue ...`.
//!
//! This is the binary's edge: errors become `anyhow` messages with what to do, and exit codes.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pipeline::{self, ReadMode};
use crate::queue::QueueStore;

#[derive(Debug, Parser)]
#[command(
    name = "tailhose",
    version,
    about = "Tails log files and delivers every record to AWS Kinesis Data Firehose, durably and at least once."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format: human-readable text or JSON lines for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon until SIGINT or SIGTERM.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Read every file to its current end, deliver everything, then exit.
        #[arg(long)]
        once: bool,
    },
    /// Check a configuration file: exit 0 when valid, otherwise list every problem with its line.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Inspect the queue of a data_dir (the daemon must not be running on it).
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Pending chunks and bytes, dead letters, set-aside chunks and file positions per route, as JSON.
    Stats {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Every dead letter as one JSON object per line.
    DeadLetters {
        #[arg(long, short)]
        config: PathBuf,
    },
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TAILHOSE_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config, once } => run(&config, once).await,
        Command::CheckConfig { config } => {
            Config::load(&config)?;
            println!("{}: valid", config.display());
            Ok(())
        }
        Command::Queue { command: QueueCommand::Stats { config } } => queue_stats(&config),
        Command::Queue { command: QueueCommand::DeadLetters { config } } => dead_letters(&config),
    }
}

async fn run(config_path: &std::path::Path, once: bool) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let stop = CancellationToken::new();
    let signals = tokio::spawn(stop_on_signal(stop.clone()));
    tracing::info!(config = %config_path.display(), data_dir = %config.data_dir.display(), "tailhose starting");
    let mode = if once { ReadMode::UntilCaughtUp } else { ReadMode::Follow };
    let result = pipeline::run(&config, mode, stop).await;
    signals.abort();
    result.context("tailhose stopped on an error")?;
    Ok(())
}

async fn stop_on_signal(stop: CancellationToken) {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; stop tailhose with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received; stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; stopping"),
    }
    stop.cancel();
}

fn open_store(config_path: &std::path::Path) -> anyhow::Result<QueueStore> {
    let config = Config::load(config_path)?;
    Ok(QueueStore::open(&config.data_dir, config.queue_cache_bytes.0)?)
}

fn queue_stats(config_path: &std::path::Path) -> anyhow::Result<()> {
    let store = open_store(config_path)?;
    let mut routes = Vec::new();
    for name in store.route_names() {
        let (queue, _) = store.open_route(&name, u64::MAX)?;
        routes.push(queue.stats()?);
    }
    println!("{}", serde_json::to_string_pretty(&routes)?);
    Ok(())
}

fn dead_letters(config_path: &std::path::Path) -> anyhow::Result<()> {
    let store = open_store(config_path)?;
    for name in store.route_names() {
        let (queue, _) = store.open_route(&name, u64::MAX)?;
        for entry in queue.dead_letters() {
            let (id, letter) = entry?;
            let line = match letter {
                Ok(letter) => serde_json::json!({
                    "route": name,
                    "id": id,
                    "reason": letter.reason.code(),
                    "detail": letter.detail,
                    "path": String::from_utf8_lossy(&letter.path),
                    "offset": letter.offset,
                    "length": letter.record_len,
                    "record": String::from_utf8_lossy(&letter.record),
                    "recorded_at_ms": letter.recorded_at_ms,
                }),
                Err(error) => serde_json::json!({ "route": name, "id": id, "error": error.to_string() }),
            };
            println!("{line}");
        }
    }
    Ok(())
}
