//! `tailhose import fluentd`: a Fluentd configuration and its positions, carried over.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::migrate::translate::{self, Severity};
use crate::migrate::{fluentd_syntax, pos_file};
use crate::queue::route_name;

pub struct ImportRequest<'a> {
    pub fluentd_config: &'a Path,
    pub out: Option<&'a Path>,
    pub data_dir: &'a Path,
    pub overwrite: bool,
}

pub fn fluentd(request: ImportRequest<'_>) -> anyhow::Result<()> {
    let root = fluentd_syntax::parse_file(request.fluentd_config)?;
    let translation = translate::translate(&root);
    for note in &translation.notes {
        eprintln!("{note}");
    }
    let data_dir = std::path::absolute(request.data_dir)?;
    let text = translate::render_toml(&translation, &data_dir.to_string_lossy(), request.fluentd_config);
    if translation.sources.is_empty() {
        anyhow::bail!("no in_tail source routed to kinesis_firehose was found in {}", request.fluentd_config.display());
    }
    let Some(out) = request.out else {
        print!("{text}");
        return finish(&translation, false);
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
        return finish(&translation, false);
    }
    import_positions(&config, &translation)?;
    finish(&translation, true)
}

fn finish(translation: &translate::Translation, positions_done: bool) -> anyhow::Result<()> {
    if translation.changes_delivery() {
        let count = translation.notes.iter().filter(|note| note.severity == Severity::ChangesDelivery).count();
        anyhow::bail!("{count} point(s) would change what is delivered (listed above as `changes delivery`)");
    }
    if positions_done {
        eprintln!("done: stop Fluentd before starting tailhose with this configuration (see docs/migrating-from-fluentd.md)");
    }
    Ok(())
}

fn import_positions(config: &Config, translation: &translate::Translation) -> anyhow::Result<()> {
    let sources = config.source_settings();
    let mut store = None;
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
        let store = match &store {
            Some(store) => store,
            None => {
                std::fs::create_dir_all(&config.data_dir)?;
                store.insert(super::open_store(&config.data_dir, config.queue_cache_bytes.0)?)
            }
        };
        for sink in config.sink_settings().iter().filter(|sink| sink.inputs.contains(&source.name)) {
            let route = route_name(&source.name, &sink.name);
            let (queue, _) = store.open_route(&route, config.max_queue_bytes.0)?;
            for (entry, outcome) in pos_file::import(&queue, source, &entries)? {
                eprintln!("{} line {}: {} → route {route}: {outcome}", pos_path.display(), entry.line, entry.path.display());
            }
        }
    }
    Ok(())
}
