//! The command line: `tailhose run`, `check-config`, `status`, `queue ...`, `import fluentd`,
//! `generate` and `verify-delivery`.
//!
//! This is the binary's edge: errors become `anyhow` messages with what to do, and exit codes.
//!
//! One process per data_dir: sled locks its database, so `tailhose queue ...` opens the queue
//! only while no daemon runs on it, and otherwise refuses, naming the running PID. A running
//! daemon is observed with `tailhose status` (its admin endpoint) instead.

pub mod generate;
mod import;
mod queue;
mod status;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::config::Config;
use crate::pipeline::{self, ReadMode};
use crate::queue::{Creation, QueueError, QueueStore};

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
    /// Translate another forwarder's set-up into tailhose's (configuration and file positions).
    Import {
        #[command(subcommand)]
        command: ImportCommand,
    },
    /// Append records of the seed's shape (with a unique `seq`) to a log file, at a given rate.
    Generate {
        /// The log file to append to (created if missing).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// The first record's `seq`; the next run can continue where one ended.
        #[arg(long, default_value_t = 0)]
        first_seq: u64,
        /// Records per second, as in `100/s`; as fast as possible when absent.
        #[arg(long)]
        rate: Option<generate::Rate>,
        /// Lines per write.
        #[arg(long, default_value_t = 100)]
        burst: u64,
        /// Seed of the record contents (the same seed writes the same records).
        #[arg(long, default_value_t = 2019)]
        seed: u64,
    },
    /// Count delivered records by `seq` in a directory (a directory sink's output, or an S3 bucket
    /// synced with `aws s3 sync`): delivered, distinct, duplicates, missing. Exit 1 when any record
    /// is missing or duplicated.
    VerifyDelivery {
        #[arg(long)]
        dir: PathBuf,
        /// Expect exactly the seqs `0..N`.
        #[arg(long)]
        expect: Option<u64>,
    },
    /// Inspect, verify, replay, export and purge the queue of a data_dir. The daemon must not be
    /// running on it (use `tailhose status` for a running daemon).
    Queue {
        #[command(subcommand)]
        command: queue::QueueCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// A Fluentd configuration (in_tail → kinesis_firehose, as in the seed) and its pos_file
    /// positions. Lists every key it cannot carry over; exits 1 when one would change what is
    /// delivered (positions are then not imported).
    Fluentd {
        /// The Fluentd configuration (td-agent.conf, fluent.conf); @include is followed.
        #[arg(long, short)]
        config: PathBuf,
        #[command(flatten)]
        written: ImportOutput,
    },
    /// The Kinesis Agent's agent.json (flows tailing files to Firehose or Kinesis Data Streams) and its checkpoint file.
    /// Lists every key it cannot carry over; exits 1 when one would change what is delivered
    /// (positions are then not imported).
    KinesisAgent {
        /// The agent's configuration (/etc/aws-kinesis/agent.json).
        #[arg(long, short)]
        config: PathBuf,
        /// The agent's checkpoint file; its `checkpointFile` (or
        /// /var/run/aws-kinesis-agent/checkpoints) when absent.
        #[arg(long)]
        checkpoints: Option<PathBuf>,
        /// The folder of more flows the agent reads (every file in it), `agent.d` beside the
        /// configuration when absent (/etc/aws-kinesis/agent.d for the agent's own).
        #[arg(long)]
        flows_dir: Option<PathBuf>,
        #[command(flatten)]
        written: ImportOutput,
    },
}

/// Where an import writes the configuration, and the data_dir it names.
#[derive(Debug, Clone, Args)]
pub struct ImportOutput {
    /// Where to write the tailhose configuration; printed to stdout when absent (and then no
    /// positions are imported).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The data_dir written into the configuration, where positions are imported.
    #[arg(long, default_value = "/var/lib/tailhose")]
    data_dir: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

impl ImportOutput {
    fn request<'a>(&'a self, from: &'a Path) -> import::ImportRequest<'a> {
        import::ImportRequest { from, out: self.out.as_deref(), data_dir: &self.data_dir, overwrite: self.force }
    }
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
    // Colours only for a terminal: a log file or the journal would keep the escape codes
    // (`route=` read as `\x1b[3mroute\x1b[0m\x1b[2m=\x1b[0m`), and grep would not find a field.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
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
        Command::Import { command: ImportCommand::Fluentd { config, written } } => import::fluentd(written.request(&config)),
        Command::Import { command: ImportCommand::KinesisAgent { config, checkpoints, flows_dir, written } } => {
            import::kinesis_agent(written.request(&config), checkpoints.as_deref(), flows_dir.as_deref())
        }
        Command::Generate { out, count, first_seq, rate, burst, seed } => {
            generate::generate(generate::GenerateRequest { out: &out, count, first_seq, rate, burst, seed })
        }
        Command::VerifyDelivery { dir, expect } => {
            let report = generate::verify_delivery(&dir, expect)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if report.duplicates > 0 || report.missing.is_some_and(|missing| missing > 0) {
                anyhow::bail!("{} duplicate(s), {} missing", report.duplicates, report.missing.unwrap_or(0));
            }
            Ok(())
        }
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
    match QueueStore::open_as_owner(data_dir, cache_bytes) {
        Ok(store) => {
            if let Some(set_aside) = store.rolled_back() {
                tracing::warn!("{set_aside}");
            }
            if store.creation() == Creation::CreatedAgain {
                tracing::warn!(queue = %store.path().display(), "{}", Creation::CREATED_AGAIN_NOTICE);
            }
            if let Some(moved_to) = store.settings_moved_to() {
                tracing::error!(moved_to = %moved_to.display(), "{}", crate::queue::opening::SETTINGS_REWRITTEN_NOTICE);
            }
            if let Some(owner) = store.adopted_owner() {
                tracing::warn!("{owner}");
            }
            Ok(store)
        }
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
