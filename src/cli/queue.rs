//! `tailhose queue ...`: inspect, verify, replay, export and purge a stopped daemon's queue.

use std::io::Write;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use super::QueueTarget;
use crate::config::Config;
use crate::pipeline::{self, ReadMode};
use crate::queue::inspect::{ChunkState, DeadLetterSelection, StoredValue};
use crate::queue::replay::{ReplayMode, ReplaySummary, RetainedSelection};
use crate::queue::{ChunkSeq, QueueStore, RouteQueue};

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Per route: pending chunks, records and bytes, oldest pending age, dead letters, retained
    /// and set-aside chunks, and each file's read and acknowledged positions, as JSON.
    Stats {
        #[command(flatten)]
        target: QueueTarget,
    },
    /// One line per chunk: sequence number, state, file, byte range, records, size.
    List {
        #[command(flatten)]
        target: QueueTarget,
        #[command(flatten)]
        scope: Scope,
        /// Which chunks.
        #[arg(long, value_enum, default_value_t = StateFilter::All)]
        state: StateFilter,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The records of one chunk.
    Show {
        #[command(flatten)]
        target: QueueTarget,
        #[command(flatten)]
        scope: Scope,
        /// The chunk's sequence number (from `list`).
        seq: u64,
        #[arg(long, value_enum, default_value_t = RecordFormat::Raw)]
        format: RecordFormat,
    },
    /// Check every chunk's checksum and the consistency of positions, progress and dead letters.
    /// Exits with status 1 and a report when anything is wrong.
    Verify {
        #[command(flatten)]
        target: QueueTarget,
        #[command(flatten)]
        scope: Scope,
    },
    /// Every dead letter as one JSON object per line.
    DeadLetters {
        #[command(flatten)]
        target: QueueTarget,
        #[command(flatten)]
        scope: Scope,
    },
    /// Queue records again and deliver them to the configured sink: dead letters once their cause
    /// is fixed, or acknowledged chunks kept by retention (`retain_acked`).
    Replay {
        #[arg(long, short)]
        config: PathBuf,
        #[command(flatten)]
        scope: Scope,
        #[command(flatten)]
        what: ReplayWhat,
        #[command(flatten)]
        selection: Selection,
        /// Show what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Queue the records and exit; the daemon delivers them when it next starts.
        #[arg(long, conflicts_with = "dry_run")]
        enqueue_only: bool,
    },
    /// Write records as JSON lines (route, chunk, state, index, path, record) to a file or stdout.
    Export {
        #[command(flatten)]
        target: QueueTarget,
        #[command(flatten)]
        scope: Scope,
        #[arg(long, value_enum, default_value_t = StateFilter::All)]
        state: StateFilter,
        /// Where to write; stdout when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Delete dead letters, set-aside chunks or retained chunks. Pending chunks are never purged.
    Purge {
        #[command(flatten)]
        target: QueueTarget,
        #[command(flatten)]
        scope: Scope,
        #[command(flatten)]
        what: PurgeWhat,
        #[command(flatten)]
        selection: Selection,
        /// Really delete; without it, only say what would be deleted.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Clone, Args)]
pub struct Scope {
    /// Only this route (`source->sink`); all routes when absent.
    #[arg(long)]
    route: Option<String>,
}

#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct ReplayWhat {
    /// Replay dead letters.
    #[arg(long)]
    dead_letters: bool,
    /// Replay acknowledged chunks kept by retention.
    #[arg(long)]
    retained: bool,
}

#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct PurgeWhat {
    #[arg(long)]
    dead_letters: bool,
    #[arg(long)]
    set_aside: bool,
    #[arg(long)]
    retained: bool,
}

#[derive(Debug, Clone, Args)]
pub struct Selection {
    /// Dead letters: only these reasons (repeatable): rejected_by_sink, record_too_large,
    /// invalid_json, line_too_long, unrecoverable, parse_failed (the line as read, unparsed), or
    /// all. Replay defaults to rejected_by_sink.
    #[arg(long = "reason")]
    reasons: Vec<String>,
    /// Chunks (or dead letters) with a sequence number (id) from this one...
    #[arg(long)]
    from_seq: Option<u64>,
    /// ...up to this one, inclusive.
    #[arg(long)]
    to_seq: Option<u64>,
    /// Retained chunks read at or after this time: RFC 3339 (2026-11-25T14:00:00Z) or an age (2h).
    #[arg(long)]
    since: Option<String>,
    /// Retained chunks read before this time: RFC 3339 or an age.
    #[arg(long)]
    until: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateFilter {
    Pending,
    Retained,
    SetAside,
    All,
}

impl StateFilter {
    fn states(self) -> Vec<ChunkState> {
        match self {
            StateFilter::Pending => vec![ChunkState::Pending],
            StateFilter::Retained => vec![ChunkState::Retained],
            StateFilter::SetAside => vec![ChunkState::SetAside],
            StateFilter::All => ChunkState::ALL.to_vec(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RecordFormat {
    /// Each record's bytes followed by a newline: JSON sources give JSON lines, ready for `jq`.
    Raw,
    /// One JSON object per record with where it is: route, chunk, state, index, path, record.
    Jsonl,
}

pub async fn execute(command: QueueCommand) -> anyhow::Result<()> {
    match command {
        QueueCommand::Stats { target } => {
            println!("{}", serde_json::to_string_pretty(&Routes::open(&target, None, Access::Inspect)?.stats()?)?);
            Ok(())
        }
        QueueCommand::List { target, scope, state, json } => {
            list(&Routes::open(&target, scope.route.as_deref(), Access::Inspect)?, state, json)
        }
        QueueCommand::Show { target, scope, seq, format } => {
            show(&Routes::open(&target, scope.route.as_deref(), Access::Inspect)?, ChunkSeq(seq), format)
        }
        QueueCommand::Verify { target, scope } => verify(&Routes::open(&target, scope.route.as_deref(), Access::Inspect)?),
        QueueCommand::DeadLetters { target, scope } => dead_letters(&Routes::open(&target, scope.route.as_deref(), Access::Inspect)?),
        QueueCommand::Replay { config, scope, what, selection, dry_run, enqueue_only } => {
            replay(&config, scope.route.as_deref(), &what, &selection, dry_run, enqueue_only).await
        }
        QueueCommand::Export { target, scope, state, out } => {
            export(&Routes::open(&target, scope.route.as_deref(), Access::Inspect)?, state, out.as_deref())
        }
        QueueCommand::Purge { target, scope, what, selection, yes } => {
            purge(&Routes::open(&target, scope.route.as_deref(), Access::Change)?, &what, &selection, yes)
        }
    }
}

/// Whether a command only looks at the queue or changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// Nothing is written: a chunk that fails verification is reported and left for the
    /// daemon's start-up to set aside (with its counters and log lines).
    Inspect,
    /// `purge`: the route is opened as the daemon opens it, and what that did is reported.
    Change,
}

/// Says on stderr what opening a route found, and what was (or will be) done about it.
fn report_recovery(route: &str, report: &crate::queue::recovery::RecoveryReport, access: Access) {
    for chunk in &report.set_aside {
        match access {
            Access::Inspect => eprintln!(
                "route {route}: chunk {} fails verification ({}); the daemon sets it aside at its next start and reads its records again from the source",
                chunk.seq, chunk.error
            ),
            Access::Change => eprintln!(
                "route {route}: chunk {} failed verification ({}) and was set aside; the daemon reads its records again from the source at its next start",
                chunk.seq, chunk.error
            ),
        }
    }
}

/// The opened queue and the routes a command works on.
pub(super) struct Routes {
    store: QueueStore,
    queues: Vec<RouteQueue>,
}

impl Routes {
    fn open(target: &QueueTarget, only: Option<&str>, access: Access) -> anyhow::Result<Routes> {
        let (data_dir, cache_bytes) = match (&target.config, &target.data_dir) {
            (Some(config), _) => {
                let config = Config::load(config)?;
                (config.data_dir.clone(), config.queue_cache_bytes.0)
            }
            (None, Some(data_dir)) => (data_dir.clone(), 16 << 20),
            (None, None) => anyhow::bail!("name the queue with --config FILE or --data-dir DIR"),
        };
        if !data_dir.join("queue").exists() {
            anyhow::bail!("{} holds no queue (nothing has run with this data_dir yet)", data_dir.display());
        }
        Routes::open_store(super::open_store(&data_dir, cache_bytes)?, only, access)
    }

    pub(super) fn open_store(store: QueueStore, only: Option<&str>, access: Access) -> anyhow::Result<Routes> {
        let names = store.route_names();
        if let Some(only) = only {
            if !names.iter().any(|name| name == only) {
                anyhow::bail!("no route named {only:?} in this queue (routes: {})", names.join(", "));
            }
        }
        let mut queues = Vec::new();
        for name in names.iter().filter(|name| only.is_none_or(|only| only == name.as_str())) {
            // Opening a route verifies its chunks; a command never queues anything, so no limit.
            let (queue, report) = match access {
                Access::Inspect => store.inspect_route(name)?,
                Access::Change => store.open_route(name, u64::MAX)?,
            };
            report_recovery(name, &report, access);
            queues.push(queue);
        }
        Ok(Routes { store, queues })
    }

    pub(super) fn stats(&self) -> anyhow::Result<Vec<crate::queue::QueueStats>> {
        Ok(self.queues.iter().map(RouteQueue::stats).collect::<Result<Vec<_>, _>>()?)
    }
}

fn list(routes: &Routes, state: StateFilter, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if !json {
        writeln!(
            out,
            "{:<24} {:>8} {:<9} {:>7} {:>9} {:>10} {:>10} {:>9}  PATH",
            "ROUTE", "SEQ", "STATE", "ORIGIN", "RECORDS", "START", "END", "BYTES"
        )?;
    }
    for queue in &routes.queues {
        for state in state.states() {
            for stored in queue.stored_chunks(state) {
                let listing = queue.describe(&stored?)?;
                if json {
                    let mut line = serde_json::to_value(&listing)?;
                    line["route"] = queue.name().into();
                    writeln!(out, "{line}")?;
                    continue;
                }
                let origin = listing.origin.map_or("-", |origin| match origin {
                    crate::queue::ChunkOrigin::Read => "read",
                    crate::queue::ChunkOrigin::Replay => "replay",
                });
                let show = |value: Option<u64>| value.map_or("-".to_owned(), |value| value.to_string());
                let records = match (listing.records, listing.acked_records) {
                    (Some(records), Some(acked)) if acked > 0 => format!("{}/{records}", records - acked),
                    (records, _) => show(records.map(u64::from)),
                };
                let path = listing.error.clone().or(listing.path.clone()).unwrap_or_default();
                writeln!(
                    out,
                    "{:<24} {:>8} {:<9} {:>7} {:>9} {:>10} {:>10} {:>9}  {path}",
                    queue.name(),
                    listing.seq,
                    state_name(listing.state),
                    origin,
                    records,
                    show(listing.start_offset),
                    show(listing.end_offset),
                    listing.stored_bytes
                )?;
            }
        }
    }
    Ok(())
}

fn state_name(state: ChunkState) -> &'static str {
    match state {
        ChunkState::Pending => "pending",
        ChunkState::Retained => "retained",
        ChunkState::SetAside => "set-aside",
    }
}

fn show(routes: &Routes, seq: ChunkSeq, format: RecordFormat) -> anyhow::Result<()> {
    let mut found = Vec::new();
    for queue in &routes.queues {
        if let Some(stored) = queue.find_chunk(seq)? {
            found.push((queue, stored));
        }
    }
    let (queue, stored) = match found.len() {
        0 => anyhow::bail!("no chunk {} in {}", seq.0, route_names(routes)),
        1 => found.remove(0),
        _ => anyhow::bail!("chunk {} exists in several routes; name one with --route ({})", seq.0, route_names(routes)),
    };
    let mut out = std::io::stdout().lock();
    write_records(&mut out, queue.name(), &stored, format)
}

fn route_names(routes: &Routes) -> String {
    routes.queues.iter().map(|queue| queue.name().to_owned()).collect::<Vec<_>>().join(", ")
}

fn write_records(out: &mut impl Write, route: &str, stored: &StoredValue, format: RecordFormat) -> anyhow::Result<()> {
    let chunk = stored.decode().map_err(|error| anyhow::anyhow!("chunk {} of {route} cannot be read: {error}", stored.seq.0))?;
    let path = String::from_utf8_lossy(&chunk.meta.path);
    for (index, record) in chunk.records().enumerate() {
        match format {
            RecordFormat::Raw => {
                out.write_all(record)?;
                out.write_all(b"\n")?;
            }
            RecordFormat::Jsonl => {
                let line = serde_json::json!({
                    "route": route,
                    "chunk": stored.seq.0,
                    "state": state_name(stored.state),
                    "index": index,
                    "path": path,
                    "record": String::from_utf8_lossy(record),
                });
                writeln!(out, "{line}")?;
            }
        }
    }
    Ok(())
}

fn verify(routes: &Routes) -> anyhow::Result<()> {
    let mut faults = 0;
    for queue in &routes.queues {
        let report = queue.verify()?;
        println!(
            "{}: {} chunks, {} records, {} dead letters, {} files checked; {} fault(s)",
            report.route,
            report.chunks_checked,
            report.records_checked,
            report.dead_letters_checked,
            report.files_checked,
            report.faults.len()
        );
        for fault in &report.faults {
            println!("  {}: {}", fault.code, fault.detail);
        }
        faults += report.faults.len();
    }
    if faults > 0 {
        anyhow::bail!("the queue has {faults} fault(s); see the report above");
    }
    Ok(())
}

fn dead_letters(routes: &Routes) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for queue in &routes.queues {
        for entry in queue.dead_letters() {
            let (id, letter) = entry?;
            let line = match letter {
                Ok(letter) => serde_json::json!({
                    "route": queue.name(),
                    "id": id,
                    "reason": letter.reason.code(),
                    "detail": letter.detail,
                    "path": String::from_utf8_lossy(&letter.path),
                    "offset": letter.offset,
                    "length": letter.record_len,
                    "record": String::from_utf8_lossy(&letter.record),
                    "recorded_at_ms": letter.recorded_at_ms,
                }),
                Err(error) => serde_json::json!({ "route": queue.name(), "id": id, "error": error.to_string() }),
            };
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

fn export(routes: &Routes, state: StateFilter, out: Option<&Path>) -> anyhow::Result<()> {
    let mut writer: Box<dyn Write> = match out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|error| anyhow::anyhow!("cannot create {}: {error}", path.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut skipped = Vec::new();
    for queue in &routes.queues {
        for state in state.states() {
            for stored in queue.stored_chunks(state) {
                let stored = stored?;
                if let Err(error) = write_records(&mut writer, queue.name(), &stored, RecordFormat::Jsonl) {
                    skipped.push(error.to_string());
                }
            }
        }
    }
    writer.flush()?;
    for reason in &skipped {
        eprintln!("not exported: {reason}");
    }
    Ok(())
}

impl Selection {
    fn seqs(&self) -> Option<RangeInclusive<u64>> {
        match (self.from_seq, self.to_seq) {
            (None, None) => None,
            (from, to) => Some(from.unwrap_or(0)..=to.unwrap_or(u64::MAX)),
        }
    }

    fn dead_letters(&self, default_reasons: &[&str]) -> DeadLetterSelection {
        let reasons = match self.reasons.as_slice() {
            [] => default_reasons.iter().map(|reason| reason.to_string()).collect(),
            given if given.iter().any(|reason| reason == "all") => Vec::new(),
            given => given.to_vec(),
        };
        DeadLetterSelection { reasons, ids: self.seqs() }
    }

    fn retained(&self) -> anyhow::Result<RetainedSelection> {
        Ok(RetainedSelection {
            seqs: self.seqs(),
            read_since_ms: self.since.as_deref().map(parse_time).transpose()?,
            read_until_ms: self.until.as_deref().map(parse_time).transpose()?,
        })
    }
}

/// Unix milliseconds of an RFC 3339 time, or of `now - age` for an age such as `2h`.
fn parse_time(text: &str) -> anyhow::Result<u64> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.timestamp_millis().max(0) as u64);
    }
    match humantime::parse_duration(text) {
        Ok(age) => Ok(crate::queue::now_ms().saturating_sub(age.as_millis() as u64)),
        Err(_) => anyhow::bail!("{text:?} is neither an RFC 3339 time (2026-11-25T14:00:00Z) nor an age (90m, 2h)"),
    }
}

const REPLAYABLE_BY_DEFAULT: &[&str] = &["rejected_by_sink"];

async fn replay(
    config_path: &Path,
    only: Option<&str>,
    what: &ReplayWhat,
    selection: &Selection,
    dry_run: bool,
    enqueue_only: bool,
) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let mode = if dry_run { ReplayMode::DryRun } else { ReplayMode::Enqueue };
    let mut summaries: Vec<ReplaySummary> = Vec::new();
    let routes = Routes::open(&QueueTarget { config: Some(config_path.to_path_buf()), data_dir: None }, only, Access::Change)?;
    for queue in &routes.queues {
        let summary = if what.retained {
            queue.replay_retained(&selection.retained()?, mode)?
        } else {
            queue.replay_dead_letters(&selection.dead_letters(REPLAYABLE_BY_DEFAULT), mode)?
        };
        if mode == ReplayMode::Enqueue {
            queue.commit()?;
        }
        summaries.push(summary);
    }
    let verb = if dry_run { "would queue" } else { "queued" };
    for summary in &summaries {
        println!("{}: {verb} {} records ({} bytes) in {} chunks for replay", summary.route, summary.records, summary.bytes, summary.chunks);
        for reason in &summary.skipped {
            println!("  skipped: {reason}");
        }
    }
    if dry_run || enqueue_only || summaries.iter().all(|summary| summary.records == 0) {
        return Ok(());
    }
    // The pipeline opens each route afresh from what is stored; these handles must not outlive that.
    let Routes { store, queues } = routes;
    drop(queues);
    let counts = pipeline::run_with_store(&config, store, ReadMode::DeliverQueued, CancellationToken::new()).await?;
    println!(
        "delivered: {} records acknowledged by the sink, {} dead-lettered again (everything pending on these routes was delivered too)",
        counts.records_acked, counts.dead_letters
    );
    Ok(())
}

fn purge(routes: &Routes, what: &PurgeWhat, selection: &Selection, yes: bool) -> anyhow::Result<()> {
    let all_seqs = selection.seqs().unwrap_or(0..=u64::MAX);
    for queue in &routes.queues {
        let (kind, count) = if what.dead_letters {
            let chosen = selection.dead_letters(&[]);
            let matching = queue.dead_letters().filter(|entry| entry.as_ref().is_ok_and(|(id, letter)| chosen.takes(*id, letter))).count();
            let purged = if yes { queue.purge_dead_letters(&chosen)? } else { matching as u64 };
            ("dead letters", purged)
        } else {
            let state = if what.set_aside { ChunkState::SetAside } else { ChunkState::Retained };
            let matching =
                queue.stored_chunks(state).filter(|stored| stored.as_ref().is_ok_and(|stored| all_seqs.contains(&stored.seq.0))).count();
            let purged = if yes { queue.purge_chunks(state, &all_seqs)? } else { matching as u64 };
            (if what.set_aside { "set-aside chunks" } else { "retained chunks" }, purged)
        };
        if yes {
            println!("{}: purged {count} {kind}", queue.name());
        } else {
            println!("{}: would purge {count} {kind}; add --yes to delete them", queue.name());
        }
    }
    Ok(())
}
