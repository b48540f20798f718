//! `tailhose import fluentd` and `tailhose import kinesis-agent`: another forwarder's
//! configuration and positions, carried over.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::migrate::translate::{self, Severity};
use crate::migrate::{agent_checkpoints, fluentd_syntax, kinesis_agent, pos_file};
use crate::queue::route_name;

pub struct ImportRequest<'a> {
    /// The other forwarder's configuration.
    pub from: &'a Path,
    pub out: Option<&'a Path>,
    pub data_dir: &'a Path,
    pub overwrite: bool,
}

pub fn fluentd(request: ImportRequest<'_>) -> anyhow::Result<()> {
    let root = fluentd_syntax::parse_file(request.from)?;
    let translation = translate::translate(&root);
    if translation.sources.is_empty() {
        for note in &translation.notes {
            eprintln!("{note}");
        }
        anyhow::bail!("no in_tail source routed to kinesis_firehose was found in {}", request.from.display());
    }
    let Some(config) = write_translation(&request, &translation)? else { return finish(&translation, false) };
    import_positions(&config, &translation)?;
    finish(&translation, true)
}

pub fn kinesis_agent(request: ImportRequest<'_>, checkpoints: Option<&Path>, flows_dir: Option<&Path>) -> anyhow::Result<()> {
    // The agent always appends the flows of agent.d's files: a cut-over without them would
    // leave those files unread.
    let beside = request.from.parent().map(|folder| folder.join("agent.d"));
    let flow_files = match (flows_dir, beside) {
        (Some(given), _) if !given.is_dir() => anyhow::bail!("no folder of flows at {}", given.display()),
        (Some(given), _) => kinesis_agent::flow_files(given)?,
        (None, Some(beside)) if beside.is_dir() => kinesis_agent::flow_files(&beside)?,
        (None, _) => Vec::new(),
    };
    for file in &flow_files {
        eprintln!("reading more flows from {}", file.display());
    }
    let mut import = kinesis_agent::translate(&kinesis_agent::AgentFile::read(request.from)?, &flow_files)?;
    if import.translation.sources.is_empty() {
        for note in &import.translation.notes {
            eprintln!("{note}");
        }
        anyhow::bail!("no flow to a Firehose delivery stream was found in {}", request.from.display());
    }
    let checkpoint_file = match checkpoints {
        Some(given) if !given.exists() => anyhow::bail!("no checkpoint file at {}", given.display()),
        Some(given) => given.to_path_buf(),
        None => import.checkpoint_file.clone(),
    };
    // Where each flow resumes is decided before the configuration is written: a flow that
    // resumes from its checkpoint reads files without a position (empty now, or created before
    // tailhose starts) from their head, as the agent reads the files newer than its own.
    let plans = plan_checkpoints(&mut import, &checkpoint_file, request.out.is_some())?;
    let Some(config) = write_translation(&request, &import.translation)? else { return finish(&import.translation, false) };
    apply_checkpoints(&config, plans)?;
    finish(&import.translation, true)
}

/// Each flow's plan (or why it has none), in the order of `import.flows`; an empty list when no
/// positions will be imported.
fn plan_checkpoints(import: &mut kinesis_agent::AgentImport, checkpoint_file: &Path, writes_a_file: bool) -> anyhow::Result<Vec<FlowPlan>> {
    if !writes_a_file || import.translation.changes_delivery() {
        return Ok(Vec::new());
    }
    if !checkpoint_file.exists() {
        eprintln!("no checkpoint file at {}: no positions imported; tailhose starts as read_from_head says", checkpoint_file.display());
        return Ok(Vec::new());
    }
    let checkpoints = agent_checkpoints::CheckpointFile::open(checkpoint_file)?;
    let mut plans = Vec::with_capacity(import.flows.len());
    for flow in &import.flows {
        let Some(source) = import.translation.sources.iter_mut().find(|source| source.name == flow.source) else { continue };
        let plan = agent_checkpoints::plan(&source.paths, &source.exclude, checkpoints.latest(&flow.id)?.as_ref());
        if plan.is_ok() {
            source.read_from_head = true;
        }
        plans.push(FlowPlan { flow: flow.clone(), plan });
    }
    Ok(plans)
}

/// Where one flow's files resume, or why they do not.
struct FlowPlan {
    flow: kinesis_agent::FlowIdentity,
    plan: Result<agent_checkpoints::Plan, agent_checkpoints::NotImported>,
}

/// The plans' positions, flow by flow, into the routes of the flow's source.
fn apply_checkpoints(config: &Config, plans: Vec<FlowPlan>) -> anyhow::Result<()> {
    if plans.is_empty() {
        return Ok(());
    }
    let store = with_store(config)?;
    for FlowPlan { flow, plan } in plans {
        for sink in config.sink_settings().iter().filter(|sink| sink.inputs.contains(&flow.source)) {
            let route = route_name(&flow.source, &sink.name);
            match &plan {
                Ok(plan) => {
                    let (queue, _) = store.open_route(&route, config.max_queue_bytes.0)?;
                    for file in plan.apply(&queue)? {
                        eprintln!("flow {} → route {route}: {file}", flow.id);
                    }
                }
                Err(why) => eprintln!("flow {} → route {route}: {why}", flow.id),
            }
        }
    }
    Ok(())
}

/// Prints the notes and writes the configuration; returns it, loaded, when positions may be
/// imported into it (written to a file, and nothing changes delivery).
fn write_translation(request: &ImportRequest<'_>, translation: &translate::Translation) -> anyhow::Result<Option<Config>> {
    for note in &translation.notes {
        eprintln!("{note}");
    }
    let data_dir = std::path::absolute(request.data_dir)?;
    let text = translate::render_toml(translation, &data_dir.to_string_lossy(), request.from);
    let Some(out) = request.out else {
        print!("{text}");
        return Ok(None);
    };
    if out.exists() && !request.overwrite {
        anyhow::bail!("{} exists; add --force to replace it", out.display());
    }
    std::fs::write(out, &text).map_err(|error| anyhow::anyhow!("cannot write {}: {error}", out.display()))?;
    eprintln!("wrote {}", out.display());
    // The written file must be a valid configuration; a failure here is tailhose's bug.
    let config = Config::load(out)?;
    if translation.changes_delivery() {
        eprintln!("positions not imported: fix the points marked `changes delivery` first, then import again");
        return Ok(None);
    }
    Ok(Some(config))
}

fn finish(translation: &translate::Translation, positions_done: bool) -> anyhow::Result<()> {
    if translation.changes_delivery() {
        let count = translation.notes.iter().filter(|note| note.severity == Severity::ChangesDelivery).count();
        anyhow::bail!("{count} point(s) would change what is delivered (listed above as `changes delivery`)");
    }
    if positions_done {
        let (forwarder, page) = match translation.origin {
            translate::Origin::Fluentd => ("Fluentd", "docs/migrating-from-fluentd.md"),
            translate::Origin::KinesisAgent => ("the Kinesis Agent", "docs/migrating-from-kinesis-agent.md"),
        };
        eprintln!("done: stop {forwarder} before starting tailhose with this configuration (see {page})");
    }
    Ok(())
}

/// The queue of `config`'s data_dir, created if need be (0700, and by the owner of a data_dir
/// that exists: see `queue::opening`).
fn with_store(config: &Config) -> anyhow::Result<crate::queue::QueueStore> {
    super::open_store(&config.data_dir, config.queue_cache_bytes.0)
}

fn import_positions(config: &Config, translation: &translate::Translation) -> anyhow::Result<()> {
    let sources = config.source_settings();
    // Every pos_file and every file it names is opened before the queue: an import run as root
    // reads them as root, and the queue may make the process its owner.
    let mut planned = Vec::new();
    for imported in &translation.sources {
        let Some(pos_path) = imported.pos_file.as_deref().map(PathBuf::from) else {
            eprintln!("source {}: no pos_file, no positions to import", imported.name);
            continue;
        };
        let text = match std::fs::read_to_string(&pos_path) {
            Ok(text) => text,
            Err(error) => {
                eprintln!("source {}: cannot read pos_file {} ({error}); no positions imported", imported.name, pos_path.display());
                continue;
            }
        };
        let (entries, problems) = pos_file::parse(&text);
        for problem in problems {
            eprintln!("{}: {problem}", pos_path.display());
        }
        let Some(source) = sources.iter().find(|source| source.name == imported.name) else { continue };
        planned.push((source, pos_path, pos_file::plan(source, &entries)));
    }
    if planned.is_empty() {
        return Ok(());
    }
    let store = with_store(config)?;
    for (source, pos_path, entries) in &planned {
        for sink in config.sink_settings().iter().filter(|sink| sink.inputs.contains(&source.name)) {
            let route = route_name(&source.name, &sink.name);
            let (queue, _) = store.open_route(&route, config.max_queue_bytes.0)?;
            for (entry, outcome) in pos_file::import(&queue, entries)? {
                eprintln!("{} line {}: {} → route {route}: {outcome}", pos_path.display(), entry.line, entry.path.display());
            }
        }
    }
    Ok(())
}
