//! The command line: `tailhose run`, `check-config`, `status` and `queue ...`.
//!
//! This is the binary's edge: errors become `anyhow` messages with what to do, and exit codes.
//!
//! One process per data_dir: sled locks its database, so `tailhose queue ...` opens the queue
//! only while no daemon runs on it, and otherwise refuses, naming the running PID. A running
//! daemon is observed with `tailhose status` (its admin endpoint) instead.

mod queue;
mod status;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::config::Config;
use crate::pipeline::{self, ReadMode};
use crate::queue::{QueueError, QueueStore};

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
    /// Health, queue and counters of the running daemon (from its admin endpoint), or of the
    /// stored queue when no daemon runs.
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// Print the JSON of `/status` instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Inspect, verify, replay, export and purge the queue of a data_dir. The daemon must not be
    /// running on it (use `tailhose status` for a running daemon).
    Queue {
        #[command(subcommand)]
        command: queue::QueueCommand,
    },
}

/// Which queue a `tailhose queue` command works on.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct QueueTarget {
    /// The configuration whose data_dir holds the queue.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The data_dir itself (commands that deliver need --config).
    #[arg(long)]
    data_dir: Option<PathBuf>,
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
        Command::Status { config, json } => status::show(&config, json).await,
        Command::Queue { command } => queue::execute(command).await,
    }
}

async fn run(config_path: &Path, once: bool) -> anyhow::Result<()> {
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

/// Opens the queue of `data_dir` for a command, or explains who holds it.
fn open_store(data_dir: &Path, cache_bytes: u64) -> anyhow::Result<QueueStore> {
    match QueueStore::open(data_dir, cache_bytes) {
        Ok(store) => Ok(store),
        Err(QueueError::Locked { .. }) => {
            let holder = match admin::running_pid(data_dir) {
                Some(pid) => format!("tailhose (PID {pid})"),
                None => "another process".to_owned(),
            };
            anyhow::bail!(
                "{holder} is running on data_dir {}: the queue is in use by another process and only one may open it. \
                 `tailhose status` shows a running daemon's queue; stop the daemon first to inspect, replay or purge it",
                data_dir.display()
            )
        }
        Err(error) => Err(error.into()),
    }
}
