//! From a Fluentd configuration (`in_tail` → `kinesis_firehose`) to the tailhose configuration
//! that delivers the same records.
//!
//! Every parameter is accounted for: mapped to a tailhose key, or listed in a [`Note`] with its
//! reason. A note of [`Severity::ChangesDelivery`] means the translated configuration would
//! deliver something else than Fluentd did (another input type, a filter that rewrites records,
//! an output tailhose does not have): the caller exits non-zero.

use super::fluentd_syntax::{Directive, Location, Param};
use crate::config::{firehose_limits, LineFormat};

/// How much a note matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Not carried over, and no effect on what is delivered.
    Info,
    /// Delivery is the same, but the operator has something to do (credentials, say).
    ActionNeeded,
    /// The translation would deliver something else than Fluentd did.
    ChangesDelivery,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub severity: Severity,
    pub location: Location,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let label = match self.severity {
            Severity::Info => "note",
            Severity::ActionNeeded => "action needed",
            Severity::ChangesDelivery => "changes delivery",
        };
        write!(f, "{}: {label}: `{}`: {}", self.location, self.key, self.message)
    }
}

/// An `in_tail` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailSource {
    pub name: String,
    pub tag: String,
    pub paths: Vec<String>,
    pub exclude: Vec<String>,
    pub pos_file: Option<String>,
    pub read_from_head: bool,
    pub refresh_interval: String,
    pub format: LineFormat,
    pub ignore_older_than: Option<String>,
    /// The Kinesis Agent's `skipHeaderLines`.
    pub skip_header_lines: u32,
    /// The Kinesis Agent's SINGLELINE.
    pub single_line: Option<SingleLineTable>,
    /// `<parse> @type multiline`'s `format_firstline`, as a regular expression.
    pub multiline_start: Option<String>,
    /// in_tail's `multiline_flush_interval`, as a humantime string.
    pub multiline_flush_interval: Option<String>,
    /// A `<parse>` that builds records from fields, as a `[sources.NAME.parse]` table.
    pub parse: Option<ParseTable>,
    /// in_tail's `path_key`, a `record_transformer`'s `<record>`, the output's `<inject>`.
    pub add_fields: ImportedFields,
    pub location: Location,
}

/// Fields Fluentd added to a source's records, as a `[sources.NAME.add_fields]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportedFields {
    /// Fixed values: strings from Fluentd (its record values are strings), any JSON from the
    /// Kinesis Agent's `metadata`.
    pub fixed: Vec<(String, serde_json::Value)>,
    pub hostname_key: Option<String>,
    pub path_key: Option<String>,
    pub read_time_key: Option<String>,
    /// The Kinesis Agent's ADDEC2METADATA.
    pub kinesis_agent_ec2_metadata: bool,
}

impl ImportedFields {
    fn is_empty(&self) -> bool {
        self.fixed.is_empty()
            && self.hostname_key.is_none()
            && self.path_key.is_none()
            && self.read_time_key.is_none()
            && !self.kinesis_agent_ec2_metadata
    }
}

/// A `[sources.NAME.single_line]` table (see `crate::source::multiline::SingleLine`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SingleLineTable {
    pub trim: bool,
    pub separator: String,
}

/// A `[sources.NAME.parse]` table (see `crate::source::parse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseTable {
    pub parser_type: String,
    pub pattern: Option<String>,
    pub columns: Option<Vec<String>>,
    /// Field and type, in Fluentd's `types` order.
    pub types: Vec<(String, String)>,
    pub null_value_pattern: Option<String>,
    pub message_key: Option<String>,
    pub delimiter: Option<String>,
}

/// A `kinesis_firehose`, `kinesis_streams` or `kinesis_streams_aggregated` output, with the
/// sources routed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOutput {
    pub name: String,
    pub stream: OutputStream,
    /// fluent-plugin-kinesis's `compression`: each record compressed, as tailhose's is.
    pub compression: Option<&'static str>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub append_newline: bool,
    pub flush_interval: String,
    pub max_batch_records: Option<u32>,
    pub max_batch_bytes: Option<u64>,
    pub inputs: Vec<String>,
    /// `<inject>`: fields added to the records of every source routed here (`tag_key` is the
    /// source's tag, a fixed value per source).
    pub inject: ImportedFields,
    pub inject_tag_key: Option<String>,
    /// Where records go that lack a field the stream's name is made of (tailhose's
    /// `fallback_stream`), when the name has one.
    pub fallback_stream: Option<String>,
    pub location: Location,
}

/// The stream an output delivers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputStream {
    Firehose { delivery_stream: String },
    Kinesis(KinesisStream),
}

impl OutputStream {
    /// The delivery stream's or the data stream's name.
    pub fn name(&self) -> &str {
        match self {
            OutputStream::Firehose { delivery_stream } => delivery_stream,
            OutputStream::Kinesis(stream) => &stream.stream_name,
        }
    }
}

/// A Kinesis data stream and how its records are keyed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KinesisStream {
    pub stream_name: String,
    pub partition_key_field: Option<String>,
    pub fixed_partition_key: Option<String>,
    pub explicit_hash_key_field: Option<String>,
    pub aggregate: bool,
}

/// The Fluentd outputs tailhose delivers the way they did (fluent-plugin-kinesis's three).
const STREAM_OUTPUTS: [&str; 3] = ["kinesis_firehose", "kinesis_streams", "kinesis_streams_aggregated"];

#[derive(Debug, Clone, Default)]
pub struct Translation {
    pub origin: Origin,
    pub sources: Vec<TailSource>,
    pub outputs: Vec<StreamOutput>,
    pub notes: Vec<Note>,
}

/// Which forwarder's set-up a translation comes from: it names the file and its sections in the
/// comments of the configuration written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Origin {
    #[default]
    Fluentd,
    KinesisAgent,
}

impl Origin {
    /// The file, the command, a source's section, what names a source, an output's section.
    fn describe(self) -> (&'static str, &'static str, &'static str, &'static str, &'static str) {
        match self {
            Origin::Fluentd => ("the Fluentd configuration", "tailhose import fluentd", "<source>", "tag", "<match>"),
            Origin::KinesisAgent => ("the Kinesis Agent configuration", "tailhose import kinesis-agent", "flow", "flow id", "flow"),
        }
    }
}

impl Translation {
    pub fn changes_delivery(&self) -> bool {
        self.notes.iter().any(|note| note.severity == Severity::ChangesDelivery)
    }
}

/// Fluentd's `in_tail` default `refresh_interval`.
const FLUENTD_REFRESH_INTERVAL: &str = "60s";

pub fn translate(root: &Directive) -> Translation {
    let mut translation = Translation::default();
    let mut notes = Notes::default();
    let mut sections = Vec::new();
    flatten(root, &mut sections, &mut notes);
    let matches: Vec<&Directive> = sections.iter().copied().filter(|section| section.name == "match").collect();
    let filters: Vec<&Directive> = sections.iter().copied().filter(|section| section.name == "filter").collect();
    for section in sections.iter().filter(|section| section.name == "source") {
        let Some(mut source) = tail_source(section, translation.sources.len(), &mut notes) else { continue };
        source.name = unique_name(source.name, translation.sources.iter().map(|source| source.name.as_str()));
        let tag = source.tag.clone();
        for filter in filters.iter().filter(|filter| tag_matches(&filter.argument, &tag)) {
            if filter.value("@type") == Some("record_transformer") {
                record_transformer(filter, &mut source, &mut notes);
                continue;
            }
            notes.push(
                Severity::ChangesDelivery,
                &filter.location,
                "<filter>",
                format!(
                    "`{}` filter ({}) changes records of tag {}; tailhose delivers lines as written",
                    filter.argument,
                    filter.value("@type").unwrap_or("?"),
                    source.tag
                ),
            );
        }
        // Fluentd routes each event to the first <match> whose pattern matches its tag.
        match matches.iter().find(|matched| tag_matches(&matched.argument, &source.tag)) {
            None => notes.push(
                Severity::Info,
                &source.location,
                "tag",
                format!("no <match> takes tag {}: Fluentd discards these records, so the source is not imported", source.tag),
            ),
            Some(matched) => match matched.value("@type").unwrap_or_default() {
                kind if STREAM_OUTPUTS.contains(&kind) => {
                    if route_to_output(matched, &mut translation, &mut source, &mut notes).is_some() {
                        translation.sources.push(source);
                    }
                }
                // Every <store> gets every event: several sinks for one source, each with its
                // own route (queue, positions), as each store had its own buffer.
                "copy" => {
                    copy_parameters(matched, &mut notes);
                    let mut routed = Vec::new();
                    for store in matched.children_named("store") {
                        match store.value("@type").unwrap_or_default() {
                            kind if STREAM_OUTPUTS.contains(&kind) => {
                                routed.extend(route_to_output(store, &mut translation, &mut source, &mut notes))
                            }
                            "null" => notes.push(Severity::Info, &store.location, "<store>", "a `null` store discards its copy".into()),
                            "stdout" => {
                                notes.push(Severity::Info, &store.location, "<store>", "a `stdout` store only prints its copy".into())
                            }
                            other => notes.push(
                                Severity::ChangesDelivery,
                                type_location(store),
                                "@type",
                                format!(
                                    "a copy of tag {} goes to `{other}`, which tailhose does not deliver to (only kinesis_firehose, kinesis_streams and kinesis_streams_aggregated)",
                                    source.tag
                                ),
                            ),
                        }
                    }
                    // Added fields belong to the source, so to every sink it feeds.
                    let injected = |index: &usize| (&translation.outputs[*index].inject, &translation.outputs[*index].inject_tag_key);
                    if routed.windows(2).any(|pair| injected(&pair[0]) != injected(&pair[1])) {
                        notes.push(
                            Severity::ChangesDelivery,
                            &matched.location,
                            "<inject>",
                            "the stores inject different fields; tailhose adds fields per source, so every store would get all of them"
                                .into(),
                        );
                    }
                    if !routed.is_empty() {
                        translation.sources.push(source);
                    }
                }
                "null" => notes.push(
                    Severity::Info,
                    &matched.location,
                    "@type",
                    format!("tag {} goes to `null` (discarded) in Fluentd; the source is not imported", source.tag),
                ),
                other => notes.push(
                    Severity::ChangesDelivery,
                    type_location(matched),
                    "@type",
                    format!("tag {} goes to `{other}`, which tailhose does not deliver to (only kinesis_firehose, kinesis_streams and kinesis_streams_aggregated)", source.tag),
                ),
            },
        }
    }
    resolve_tags(&mut translation, &mut notes);
    translation.notes = notes.0;
    translation.notes.sort_by(|a, b| (&a.location.file, a.location.line).cmp(&(&b.location.file, b.location.line)));
    translation
}

/// The record fields a `<buffer KEYS>` section names (chunk keys other than `tag` and `time`):
/// Fluentd replaces `${KEY}` in a stream's name with the record's value of each.
fn buffer_chunk_keys(section: &Directive) -> Vec<String> {
    let Some(buffer) = section.children.iter().find(|child| child.name == "buffer") else { return Vec::new() };
    buffer.argument.split(',').map(str::trim).filter(|key| !key.is_empty() && *key != "tag" && *key != "time").map(str::to_owned).collect()
}

/// A Fluentd stream name with placeholders as tailhose's template: `${record["a"]["b"]}`,
/// `${$.a.b}` and a chunk key's `${a}` become `${record.a.b}`; `${tag}` and `${tag[N]}` stay, to
/// be resolved per source once the output's inputs are known ([`resolve_tags`]). Time
/// placeholders (`%Y`, …) have no counterpart.
fn stream_template(name: &str, chunk_keys: &[String]) -> Result<String, String> {
    if name.contains('%') {
        return Err(format!(
            "`{name}`: a time placeholder (`%Y`, …) in a stream's name; tailhose names a stream from the record's fields and source only"
        ));
    }
    let mut template = String::new();
    let mut rest = name;
    while let Some(start) = rest.find("${") {
        template.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("`{name}`: a placeholder is not closed"))?;
        let inside = after[..end].trim();
        let path: Option<String> = if inside == "tag" || (inside.starts_with("tag[") && inside.ends_with(']')) {
            template.push_str(&format!("${{{inside}}}"));
            None
        } else if let Some(keys) = inside.strip_prefix("record[") {
            let path = record_path(keys)?;
            Some(path)
        } else if let Some(path) = inside.strip_prefix("$.") {
            Some(path.to_owned())
        } else if chunk_keys.iter().any(|key| key == inside) {
            Some(inside.to_owned())
        } else {
            return Err(format!("`${{{inside}}}` in `{name}` is neither ${{tag}}, a record field nor one of the <buffer>'s chunk keys"));
        };
        if let Some(path) = path {
            template.push_str(&format!("${{record.{path}}}"));
        }
        rest = &after[end + 1..];
    }
    template.push_str(rest);
    Ok(template)
}

/// `"a"]["b"]` (what follows `record[`) as the dotted path `a.b`; a key holding a dot has no
/// path (tailhose reads dots as nesting).
fn record_path(keys: &str) -> Result<String, String> {
    let names: Vec<&str> = keys
        .split(']')
        .map(|part| part.trim().trim_start_matches('[').trim().trim_matches(|quote| quote == '"' || quote == '\''))
        .filter(|part| !part.is_empty())
        .collect();
    match names.iter().find(|name| name.contains('.')) {
        Some(dotted) => Err(format!("the record key `{dotted}` holds a dot, which a tailhose field path reads as nesting")),
        None => Ok(names.join(".")),
    }
}

/// A fallback stream's name for `template`: its text with each record field as `unknown`.
fn fallback_name(template: &str) -> String {
    let mut name = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("${record.") {
        name.push_str(&rest[..start]);
        name.push_str("unknown");
        rest = rest[start..].find('}').map_or("", |end| &rest[start + end + 1..]);
    }
    name.push_str(rest);
    name
}

/// Fluentd's `${tag}` and `${tag[N]}` in the outputs' stream names, once their inputs are
/// known: `${source}` where every input's source is named by its tag, else the tag itself
/// where every input has the same one. Inputs of several tags would need several sinks.
fn resolve_tags(translation: &mut Translation, notes: &mut Notes) {
    for output in &mut translation.outputs {
        let template = output.stream.name().to_owned();
        if !template.contains("${tag") {
            continue;
        }
        let tags: Vec<&str> = output
            .inputs
            .iter()
            .filter_map(|input| translation.sources.iter().find(|source| &source.name == input))
            .map(|source| source.tag.as_str())
            .collect();
        let named_by_tag = !template.contains("${tag[")
            && output.inputs.iter().all(|input| translation.sources.iter().any(|source| &source.name == input && source.tag == *input));
        let shared_tag = tags.first().copied().filter(|tag| tags.iter().all(|other| other == tag));
        let resolved = match (named_by_tag, shared_tag) {
            (true, _) => Some(template.replace("${tag}", "${source}")),
            (false, Some(tag)) => Some(with_tag(&template, tag)),
            (false, None) => None,
        };
        // A fallback is one stream for all inputs: their tag where they share one.
        if let Some(fallback) = output.fallback_stream.as_mut() {
            *fallback = with_tag(fallback, shared_tag.unwrap_or("unknown"));
        }
        match resolved {
            Some(resolved) => match &mut output.stream {
                OutputStream::Firehose { delivery_stream } => *delivery_stream = resolved,
                OutputStream::Kinesis(stream) => stream.stream_name = resolved,
            },
            None => notes.push(
                Severity::ChangesDelivery,
                &output.location,
                "${tag}",
                format!("`{template}` names a stream per tag for sources of several tags ({}); give each its own sink", tags.join(", ")),
            ),
        }
    }
}

/// `template` with `${tag}` and `${tag[N]}` (the tag's N-th dot-separated part; `unknown` past
/// its parts) replaced, in one pass: a tag holding `${tag}` is written as it is.
fn with_tag(template: &str, tag: &str) -> String {
    let parts: Vec<&str> = tag.split('.').collect();
    let mut out = String::with_capacity(template.len() + tag.len());
    let mut rest = template;
    while let Some(start) = rest.find("${tag") {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let Some(end) = after.find('}') else { break };
        let inside = &after[2..end];
        match inside.strip_prefix("tag[").and_then(|index| index.strip_suffix(']')) {
            _ if inside == "tag" => out.push_str(tag),
            Some(index) => out.push_str(index.parse::<usize>().ok().and_then(|index| parts.get(index)).copied().unwrap_or("unknown")),
            None => out.push_str(&after[..=end]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Routes `source` to the output `section` (a `<match>` or a copy's `<store>`), translated once
/// however many sources it takes. Returns the output's index, or none when it cannot be translated.
fn route_to_output(section: &Directive, translation: &mut Translation, source: &mut TailSource, notes: &mut Notes) -> Option<usize> {
    let output = match translation.outputs.iter().position(|output| output.location == section.location) {
        Some(index) => index,
        None => {
            let mut output = stream_output(section, translation.outputs.len(), notes)?;
            output.name = unique_name(output.name, translation.outputs.iter().map(|output| output.name.as_str()));
            translation.outputs.push(output);
            translation.outputs.len() - 1
        }
    };
    let routed_to = &mut translation.outputs[output];
    routed_to.inputs.push(source.name.clone());
    inject_into(routed_to, source, notes);
    Some(output)
}

/// The parameters of `@type copy` itself: how Fluentd shared an event between its stores.
fn copy_parameters(section: &Directive, notes: &mut Notes) {
    for param in section.params.iter().filter(|param| param.key != "@type") {
        let message = match param.key.as_str() {
            "copy_mode" | "deep_copy" => "each sink is sent the record as read; no store can change another's copy".into(),
            other => format!("a copy parameter (`{other}`) with no effect on what tailhose delivers"),
        };
        notes.push(Severity::Info, &param.location, &param.key, message);
    }
    for store in section.children_named("store").filter(|store| !store.argument.is_empty()) {
        notes.push(
            Severity::Info,
            &store.location,
            "<store ignore_error>",
            "each sink has its own queue: one that fails holds back no other, and nothing is given up".into(),
        );
    }
}

/// A `<filter> @type record_transformer`: its `<record>` values become added fields: a string as
/// it is, `"#{Socket.gethostname}"` and `${hostname}` the host name, `${tag}` the source's tag.
/// Anything else Ruby would compute is listed as changing delivery.
fn record_transformer(filter: &Directive, source: &mut TailSource, notes: &mut Notes) {
    for param in filter.params.iter().filter(|param| param.key != "@type") {
        let why = match param.key.as_str() {
            "enable_ruby" if param.value == "false" => continue,
            "auto_typecast" => "values stay strings in tailhose (`static` takes numbers and booleans: edit the table)",
            _ => "reshapes records (removes, keeps or renews keys, or runs Ruby); tailhose only adds fields",
        };
        notes.push(Severity::ChangesDelivery, &param.location, &param.key, why.into());
    }
    for record in filter.children_named("record") {
        for param in &record.params {
            let value = param.value.trim_matches('"');
            match value {
                "#{Socket.gethostname}" | "${hostname}" => source.add_fields.hostname_key = Some(param.key.clone()),
                "${tag}" => source.add_fields.fixed.push((param.key.clone(), source.tag.clone().into())),
                _ if value.contains("${") || value.contains("#{") => notes.push(
                    Severity::ChangesDelivery,
                    &param.location,
                    &param.key,
                    format!("`{value}` is computed by Fluentd for each event; tailhose adds the host name, the tag and fixed values only"),
                ),
                _ => source.add_fields.fixed.push((param.key.clone(), value.into())),
            }
        }
    }
    for child in filter.children.iter().filter(|child| child.name != "record") {
        notes.push(
            Severity::ChangesDelivery,
            &child.location,
            &child.name,
            "a record_transformer section tailhose does not translate".into(),
        );
    }
}

/// The output's `<inject>` fields, on a source routed to it.
fn inject_into(output: &StreamOutput, source: &mut TailSource, notes: &mut Notes) {
    let fields = &mut source.add_fields;
    fields.hostname_key = fields.hostname_key.take().or_else(|| output.inject.hostname_key.clone());
    fields.read_time_key = fields.read_time_key.take().or_else(|| output.inject.read_time_key.clone());
    if let Some(key) = &output.inject_tag_key {
        // Two stores of a copy with the same <inject> add the tag once.
        if !fields.fixed.iter().any(|(name, _)| name == key) {
            fields.fixed.push((key.clone(), source.tag.clone().into()));
        }
    }
    // Fields go on JSON objects only: a source delivering raw lines cannot take them.
    if !fields.is_empty() && source.format == LineFormat::Raw && source.parse.is_none() {
        notes.push(
            Severity::ChangesDelivery,
            &source.location,
            "add_fields",
            "Fluentd added fields (path_key, <record>, <inject>) to records tailhose delivers as raw lines; they are left out".into(),
        );
        source.add_fields = ImportedFields::default();
    }
}

#[derive(Default)]
pub(crate) struct Notes(pub(crate) Vec<Note>);

impl Notes {
    pub(crate) fn push(&mut self, severity: Severity, location: &Location, key: &str, message: String) {
        self.0.push(Note { severity, location: location.clone(), key: key.to_owned(), message });
    }
}

/// Top-level sections, with `<label>` sections opened up (a label only names a route).
fn flatten<'a>(root: &'a Directive, sections: &mut Vec<&'a Directive>, notes: &mut Notes) {
    for child in &root.children {
        match child.name.as_str() {
            "source" | "match" | "filter" => sections.push(child),
            "label" => {
                notes.push(
                    Severity::ChangesDelivery,
                    &child.location,
                    "<label>",
                    format!("label routing ({}) is not translated; route by tag with <match> instead", child.argument),
                );
            }
            "system" => {
                notes.push(Severity::Info, &child.location, "<system>", "Fluentd's own process settings; nothing to carry over".into())
            }
            other => notes.push(Severity::Info, &child.location, other, "unknown top-level section; ignored".into()),
        }
    }
}

fn tail_source(section: &Directive, index: usize, notes: &mut Notes) -> Option<TailSource> {
    let kind = section.value("@type").unwrap_or_default();
    if kind != "tail" {
        notes.push(
            Severity::ChangesDelivery,
            type_location(section),
            "@type",
            format!("input `{kind}` is not translated: tailhose only tails files (in_tail)"),
        );
        return None;
    }
    let Some(path) = section.param("path") else {
        notes.push(Severity::ChangesDelivery, &section.location, "path", "an in_tail source without `path`".into());
        return None;
    };
    let tag = section.value("tag").unwrap_or_default().to_owned();
    let mut source = TailSource {
        name: name_from(&tag, "source", index),
        tag,
        paths: path.value.split(',').map(|pattern| pattern.trim().to_owned()).filter(|pattern| !pattern.is_empty()).collect(),
        exclude: Vec::new(),
        pos_file: None,
        // in_tail's default: files found at start-up with no stored position are read from their end.
        read_from_head: false,
        refresh_interval: FLUENTD_REFRESH_INTERVAL.into(),
        format: LineFormat::Json,
        ignore_older_than: None,
        skip_header_lines: 0,
        single_line: None,
        multiline_start: None,
        multiline_flush_interval: None,
        parse: None,
        add_fields: ImportedFields::default(),
        location: section.location.clone(),
    };
    let legacy = legacy_parse(section);
    for param in &section.params {
        let location = &param.location;
        match param.key.as_str() {
            "@type" | "path" | "tag" => {}
            // Read as the <parse> section they stand for, below.
            key if legacy.is_some() && (key == "format" || is_legacy_parser_key(key)) => {}
            "pos_file" => source.pos_file = Some(param.value.clone()),
            "read_from_head" => source.read_from_head = param.value == "true",
            "refresh_interval" => source.refresh_interval = fluentd_duration(&param.value),
            "exclude_path" => match serde_json::from_str::<Vec<String>>(&param.value) {
                Ok(patterns) => source.exclude = patterns,
                Err(error) => {
                    notes.push(Severity::ChangesDelivery, location, "exclude_path", format!("not a JSON array of globs: {error}"))
                }
            },
            "limit_recently_modified" => source.ignore_older_than = Some(fluentd_duration(&param.value)),
            "rotate_wait" => notes.push(
                Severity::Info,
                location,
                "rotate_wait",
                "tailhose reads a rotated file to its end and closes it once it has not grown for one refresh_interval".into(),
            ),
            "follow_inodes" => {
                notes.push(Severity::Info, location, "follow_inodes", "tailhose always knows files by inode and first bytes".into())
            }
            "enable_watch_timer"
            | "enable_stat_watcher"
            | "pos_file_compaction_interval"
            | "open_on_every_update"
            | "skip_refresh_on_startup"
            | "read_lines_limit"
            | "read_bytes_limit_per_second"
            | "max_line_size"
            | "emit_unmatched_lines"
            | "encoding"
            | "from_encoding" => notes.push(
                Severity::Info,
                location,
                &param.key,
                "tuning of Fluentd's reader; tailhose has its own (see docs/tailing.md)".into(),
            ),
            "format" => source.format = line_format(&param.value, location, notes),
            "multiline_flush_interval" => source.multiline_flush_interval = Some(fluentd_duration(&param.value)),
            "path_key" => source.add_fields.path_key = Some(param.value.clone()),
            other => notes.push(Severity::ChangesDelivery, location, other, "an in_tail parameter tailhose does not know".into()),
        }
    }
    for parse in legacy.iter().chain(section.children_named("parse")) {
        let kind = parse.value("@type").unwrap_or_default();
        if kind == "multiline" {
            multiline_parse(parse, &mut source, notes);
            continue;
        }
        match fields_parse(kind, parse, notes) {
            FieldsParse::Table(table) => {
                source.format = LineFormat::Raw;
                source.parse = Some(table);
                continue;
            }
            FieldsParse::CannotKeep => {
                source.format = LineFormat::Raw;
                continue;
            }
            FieldsParse::NotOne => {}
        }
        source.format = line_format(kind, type_location(parse), notes);
        for param in parse.params.iter().filter(|param| param.key != "@type") {
            notes.push(
                Severity::Info,
                &param.location,
                &param.key,
                "parser option: tailhose checks that each line is JSON and sends it as written".into(),
            );
        }
    }
    for child in section.children.iter().filter(|child| child.name != "parse") {
        notes.push(Severity::ChangesDelivery, &child.location, &child.name, "a section of in_tail tailhose does not translate".into());
    }
    match (&source.multiline_start, &source.multiline_flush_interval) {
        (None, Some(_)) => notes.push(
            Severity::Info,
            &section.location,
            "multiline_flush_interval",
            "no `<parse> @type multiline` uses it: records are one line each".into(),
        ),
        (Some(_), None) => notes.push(
            Severity::Info,
            &section.location,
            "multiline_flush_interval",
            "not set: Fluentd holds a quiet file's last event until the next one; tailhose ends it after flush_timeout (1s)".into(),
        ),
        _ => {}
    }
    Some(source)
}

/// Fluentd v0.12's parser settings, written as in_tail parameters (`format nginx`, `format /…/`,
/// `format multiline` with `format_firstline` and `format1`…, `types`, `keys`): the `<parse>`
/// section they stand for (Fluentd v1 reads them so too), when the source has none of its own.
fn legacy_parse(section: &Directive) -> Option<Directive> {
    let format = section.param("format")?;
    if section.children_named("parse").next().is_some() {
        return None;
    }
    let at = |key: &str, value: &str| Param { key: key.into(), value: value.into(), location: format.location.clone() };
    let mut params = match format.value.starts_with('/') {
        true => vec![at("@type", "regexp"), at("expression", &format.value)],
        false => vec![at("@type", &format.value)],
    };
    params.extend(section.params.iter().filter(|param| is_legacy_parser_key(&param.key)).cloned());
    Some(Directive { name: "parse".into(), argument: String::new(), params, children: Vec::new(), location: format.location.clone() })
}

/// The in_tail parameters that were parser settings before `<parse>` sections.
fn is_legacy_parser_key(key: &str) -> bool {
    matches!(
        key,
        "format_firstline"
            | "types"
            | "keys"
            | "time_format"
            | "time_key"
            | "keep_time_key"
            | "time_type"
            | "timezone"
            | "utc"
            | "localtime"
            | "estimate_current_event"
            | "null_value_pattern"
            | "message_format"
            | "with_priority"
    ) || key.strip_prefix("format").is_some_and(|number| number.parse::<u32>().is_ok())
}

/// `<parse> @type multiline`: `format_firstline` begins each record (docs/records.md), and
/// `format1`, `format2`… joined in order are the pattern the whole record is parsed by, as
/// Fluentd joins them (its `.` matches newlines there: `(?s)`).
fn multiline_parse(parse: &Directive, source: &mut TailSource, notes: &mut Notes) {
    source.format = LineFormat::Raw;
    let mut formats: Vec<(u32, String)> = Vec::new();
    for param in parse.params.iter().filter(|param| param.key != "@type") {
        let location = &param.location;
        match param.key.as_str() {
            "format_firstline" => {
                let pattern = ruby_regexp(&param.value);
                match regex::bytes::Regex::new(&pattern) {
                    Ok(_) => source.multiline_start = Some(pattern),
                    Err(error) => notes.push(
                        Severity::ChangesDelivery,
                        location,
                        "format_firstline",
                        format!("`{pattern}` is not a regular expression tailhose can use ({error}): records are one line each"),
                    ),
                }
            }
            key if key.strip_prefix("format").is_some_and(|number| number.parse::<u32>().is_ok()) => {
                let number = key["format".len()..].parse::<u32>().unwrap_or_default();
                formats.push((number, ruby_regexp(&param.value)));
            }
            key => notes.push(Severity::ChangesDelivery, location, key, "a multiline parser option tailhose does not translate".into()),
        }
    }
    formats.sort();
    let numbered_in_order = formats.iter().enumerate().all(|(index, (number, _))| *number as usize == index + 1);
    if !formats.is_empty() {
        // Fluentd joins the formats into one Ruby regexp with its multiline flag: `.` crosses
        // lines, and `^` and `$` are line anchors, as they always are in Ruby.
        let pattern = format!("(?sm){}", formats.iter().map(|(_, format)| format.as_str()).collect::<String>());
        let table = ParseTable {
            parser_type: "regex".into(),
            pattern: Some(pattern),
            columns: None,
            types: Vec::new(),
            null_value_pattern: None,
            message_key: None,
            delimiter: None,
        };
        match table.compile() {
            // Without a first-line pattern the lines are not put together: the pattern of the
            // whole record would refuse each line alone.
            Ok(_) if numbered_in_order && source.multiline_start.is_some() => source.parse = Some(table),
            outcome => notes.push(
                Severity::ChangesDelivery,
                &parse.location,
                "format1",
                match outcome {
                    Err(problem) => format!("the joined formats cannot be kept ({problem}): records are delivered as written"),
                    Ok(_) if !numbered_in_order => "formats are not numbered 1, 2, 3…: records are delivered as written".into(),
                    Ok(_) => "no usable format_firstline to put lines together: records are delivered as written".into(),
                },
            ),
        }
    }
    if source.multiline_start.is_none() {
        notes.push(
            Severity::ChangesDelivery,
            &parse.location,
            "@type multiline",
            "no usable format_firstline: records are one line each".into(),
        );
    }
}

/// A `<parse>` that builds each record from fields (`regexp`, `nginx`, `apache2`, `syslog`, `csv`,
/// `tsv`, `ltsv`, `logfmt`, and `none`'s one field) as a parse table, checked by compiling it;
/// `None` for the others (`json` and parsers tailhose does not have), or when the table cannot
/// work (noted).
fn fields_parse(kind: &str, parse: &Directive, notes: &mut Notes) -> FieldsParse {
    let mut table = ParseTable {
        parser_type: kind.to_owned(),
        pattern: None,
        columns: None,
        types: Vec::new(),
        null_value_pattern: None,
        message_key: None,
        delimiter: None,
    };
    match kind {
        "regexp" => table.parser_type = "regex".into(),
        "nginx" | "apache2" | "csv" | "tsv" | "ltsv" | "logfmt" | "none" => {}
        "syslog" => {
            table.parser_type = match parse.value("message_format").unwrap_or("rfc3164") {
                "rfc5424" => "syslog_rfc5424",
                "auto" => "syslog",
                _ => "syslog_rfc3164",
            }
            .into()
        }
        _ => return FieldsParse::NotOne,
    }
    for param in parse.params.iter().filter(|param| param.key != "@type") {
        let location = &param.location;
        match (kind, param.key.as_str()) {
            ("regexp", "expression") => table.pattern = Some(ruby_pattern(&param.value)),
            (_, "null_value_pattern") => table.null_value_pattern = Some(ruby_pattern(&param.value)),
            ("none", "message_key") => table.message_key = Some(param.value.clone()),
            ("csv" | "tsv", "keys") => {
                // Fluentd takes `a,b` or a JSON array `["a","b"]`.
                let keys = match serde_json::from_str::<Vec<String>>(&param.value) {
                    Ok(keys) => keys,
                    Err(_) => param.value.split(',').map(|key| key.trim().to_owned()).collect(),
                };
                table.columns = Some(keys.into_iter().filter(|key| !key.is_empty()).collect())
            }
            (_, "types") => {
                notes.push(
                    Severity::Info,
                    location,
                    "types",
                    "a value that does not convert is a parse_failed dead letter, and `-` or an empty value is null (Fluentd's to_i made both 0)"
                        .into(),
                );
                for pair in param.value.split(',').map(str::trim).filter(|pair| !pair.is_empty()) {
                    let (field, kind) = pair.split_once(':').unwrap_or((pair, "string"));
                    match crate::source::parse::FieldType::named(kind.trim()) {
                        Some(_) => table.types.push((field.trim().to_owned(), kind.trim().to_owned())),
                        None => notes.push(
                            Severity::ChangesDelivery,
                            location,
                            "types",
                            format!("`{pair}`: tailhose converts to integer, float, bool or string; `{field}` stays a string"),
                        ),
                    }
                }
            }
            ("syslog", "message_format" | "with_priority") => notes.push(
                Severity::Info,
                location,
                &param.key,
                "tailhose reads the priority when the message has one, whatever with_priority says".into(),
            ),
            (
                _,
                "time_key" | "time_format" | "time_type" | "keep_time_key" | "timezone" | "utc" | "localtime" | "estimate_current_event",
            ) => notes.push(
                Severity::Info,
                location,
                &param.key,
                "the time field stays in the record as its text (Fluentd moved it into the event time unless keep_time_key true)".into(),
            ),
            (_, key) => notes.push(Severity::ChangesDelivery, location, key, "a parser option tailhose does not translate".into()),
        }
    }
    match table.compile() {
        Ok(_) => FieldsParse::Table(table),
        Err(problem) => {
            notes.push(
                Severity::ChangesDelivery,
                type_location(parse),
                "@type",
                format!("`{kind}` cannot be kept as it is ({problem}): lines are delivered as written (format = \"raw\")"),
            );
            FieldsParse::CannotKeep
        }
    }
}

/// What [`fields_parse`] made of a `<parse>`.
enum FieldsParse {
    /// Not a parser that builds records from fields (`json`, `none`, unknown ones).
    NotOne,
    Table(ParseTable),
    /// One that cannot be kept as it is: noted, and the lines are delivered raw.
    CannotKeep,
}

impl ParseTable {
    /// The parser the table makes, or why it cannot work.
    pub fn compile(&self) -> Result<crate::source::parse::Parser, crate::source::parse::ParserError> {
        crate::source::parse::Parser::new(&self.parser_type, self.pattern.as_deref(), self.columns.as_deref(), &self.types)?.with_options(
            self.null_value_pattern.as_deref(),
            self.message_key.as_deref(),
            self.delimiter.as_deref(),
        )
    }
}

/// A Ruby `/pattern/flags` literal as the pattern of a record parser: Ruby's `^` and `$` are
/// always line anchors (`(?m)`), its `m` flag makes `.` cross lines (`(?s)`), `i` and `x` are
/// the same; anything that is not a literal, as it is.
fn ruby_pattern(literal: &str) -> String {
    let Some((pattern, flags)) = ruby_literal(literal) else {
        return literal.trim().to_owned();
    };
    let mut inline = String::from("m");
    for (flag, rust) in [('m', 's'), ('i', 'i'), ('x', 'x')] {
        if flags.contains(flag) {
            inline.push(rust);
        }
    }
    format!("(?{inline}){pattern}")
}

/// A Ruby `/pattern/` literal's pattern (flags after the last slash are dropped); anything else
/// as it is.
fn ruby_regexp(literal: &str) -> String {
    ruby_literal(literal).map_or_else(|| literal.trim().to_owned(), |(pattern, _)| pattern.to_owned())
}

/// A Ruby `/pattern/flags` literal's pattern and flags; `None` when the text is not one.
fn ruby_literal(literal: &str) -> Option<(&str, &str)> {
    let rest = literal.trim().strip_prefix('/')?;
    let end = rest.rfind('/')?;
    Some((&rest[..end], &rest[end + 1..]))
}

/// Where a section's `@type` is written (the section's own line when it has none).
fn type_location(section: &Directive) -> &Location {
    section.param("@type").map_or(&section.location, |param| &param.location)
}

/// `<parse> @type` (or the legacy `format`) as tailhose's line format.
fn line_format(kind: &str, location: &Location, notes: &mut Notes) -> LineFormat {
    match kind {
        "json" => {
            notes.push(
                Severity::Info,
                location,
                "@type json",
                "tailhose checks each line is one JSON value and delivers it as written; Fluentd re-serialized it (same values, \
                 its own spacing) and moved a `time` key into the event time"
                    .into(),
            );
            LineFormat::Json
        }
        "none" => {
            notes.push(
                Severity::ChangesDelivery,
                location,
                "@type none",
                "Fluentd wraps each line as {\"message\": line}; tailhose (format = \"raw\") delivers the line itself".into(),
            );
            LineFormat::Raw
        }
        other => {
            notes.push(
                Severity::ChangesDelivery,
                location,
                "@type",
                format!("parser `{other}` builds records from fields; tailhose delivers lines as written (json or raw)"),
            );
            LineFormat::Raw
        }
    }
}

fn stream_output(section: &Directive, index: usize, notes: &mut Notes) -> Option<StreamOutput> {
    let kind = section.value("@type").unwrap_or_default();
    let stream_key = if kind == "kinesis_firehose" { "delivery_stream_name" } else { "stream_name" };
    let Some(stream_name) = section.value(stream_key) else {
        notes.push(Severity::ChangesDelivery, &section.location, stream_key, format!("a {kind} output without a stream"));
        return None;
    };
    let stream = match kind {
        "kinesis_firehose" => OutputStream::Firehose { delivery_stream: stream_name.to_owned() },
        _ => OutputStream::Kinesis(KinesisStream {
            stream_name: stream_name.to_owned(),
            aggregate: kind == "kinesis_streams_aggregated",
            ..KinesisStream::default()
        }),
    };
    let mut output = StreamOutput {
        name: name_from(stream_name, if kind == "kinesis_firehose" { "firehose" } else { "kinesis" }, index),
        stream,
        compression: None,
        region: None,
        endpoint: None,
        append_newline: true,
        flush_interval: "1s".into(),
        max_batch_records: None,
        max_batch_bytes: None,
        inputs: Vec::new(),
        inject: ImportedFields::default(),
        inject_tag_key: None,
        fallback_stream: None,
        location: section.location.clone(),
    };
    let chunk_keys = buffer_chunk_keys(section);
    match stream_template(stream_name, &chunk_keys) {
        Ok(template) if template != stream_name || template.contains("${") => {
            // `${tag}` is still Fluentd's here: whether the name reads a record field is all that is asked.
            let fallback = template.contains("${record.").then(|| fallback_name(&template));
            if let Some(fallback) = &fallback {
                let why = format!(
                    "tailhose sends records without the field the stream is named by to `fallback_stream = \"{fallback}\"` (Fluentd named a stream without it): create that stream, or name another"
                );
                notes.push(Severity::ActionNeeded, &section.location, stream_key, why);
            }
            output.fallback_stream = fallback;
            match &mut output.stream {
                OutputStream::Firehose { delivery_stream } => *delivery_stream = template,
                OutputStream::Kinesis(stream) => stream.stream_name = template,
            }
        }
        Ok(_) => {}
        Err(problem) => notes.push(Severity::ChangesDelivery, &section.location, stream_key, problem),
    }
    for param in &section.params {
        let location = &param.location;
        match param.key.as_str() {
            key if key == "@type" || key == stream_key => {}
            "partition_key" | "explicit_hash_key" | "fixed_partition_key" => kinesis_key(&mut output, param, notes),
            // The plugin compresses each record it sends, as tailhose's `compression` does.
            "compression" => match param.value.as_str() {
                "gzip" => output.compression = Some("gzip"),
                "zlib" => output.compression = Some("zlib"),
                other => notes.push(Severity::ChangesDelivery, location, "compression", format!("`{other}` is neither zlib nor gzip")),
            },
            "region" => output.region = Some(param.value.clone()),
            "endpoint" => output.endpoint = Some(param.value.clone()),
            "append_new_line" => output.append_newline = param.value != "false",
            "batch_request_max_count" => match param.value.parse::<u32>() {
                Ok(count) => output.max_batch_records = Some(count.clamp(1, firehose_limits::MAX_BATCH_RECORDS)),
                Err(_) => {
                    notes.push(Severity::Info, location, "batch_request_max_count", "not a number; tailhose's default (500) is used".into())
                }
            },
            "batch_request_max_size" => match fluentd_size(&param.value) {
                Some(size) => {
                    output.max_batch_bytes = Some(size.clamp(firehose_limits::MAX_RECORD_BYTES, firehose_limits::MAX_BATCH_BYTES))
                }
                None => {
                    notes.push(Severity::Info, location, "batch_request_max_size", "not a size; tailhose's default (2MiB) is used".into())
                }
            },
            "retries_on_batch_request" | "reset_backoff_if_success" => notes.push(
                Severity::Info,
                location,
                &param.key,
                "tailhose retries failed records until they are accepted, with capped back-off; it never gives a batch up".into(),
            ),
            "aws_key_id" | "aws_sec_key" | "aws_ses_token" => notes.push(
                Severity::ActionNeeded,
                location,
                &param.key,
                "credentials are never written to tailhose's configuration: provide them through the AWS default chain \
                 (instance role, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the service's environment)"
                    .into(),
            ),
            "profile" | "credentials_path" => notes.push(
                Severity::ActionNeeded,
                location,
                &param.key,
                "set AWS_PROFILE / AWS_SHARED_CREDENTIALS_FILE in tailhose's environment instead".into(),
            ),
            "log_truncate_max_size" | "max_record_size" | "debug" => {
                notes.push(Severity::Info, location, &param.key, "a Fluentd plugin setting with no effect on what is delivered".into())
            }
            other => notes.push(Severity::ChangesDelivery, location, other, format!("a {kind} parameter tailhose does not translate")),
        }
    }
    for child in &section.children {
        match child.name.as_str() {
            "buffer" => {
                for param in &child.params {
                    match param.key.as_str() {
                        "flush_interval" => output.flush_interval = fluentd_duration(&param.value),
                        _ => notes.push(
                            Severity::Info,
                            &param.location,
                            &param.key,
                            "Fluentd buffer setting; tailhose's queue is on disk (data_dir, max_queue_bytes)".into(),
                        ),
                    }
                }
            }
            "format" if matches!(child.value("@type"), None | Some("json")) => {}
            "inject" => {
                for param in &child.params {
                    match param.key.as_str() {
                        "hostname_key" => output.inject.hostname_key = Some(param.value.clone()),
                        "tag_key" => output.inject_tag_key = Some(param.value.clone()),
                        "time_key" => {
                            output.inject.read_time_key = Some(param.value.clone());
                            notes.push(
                                Severity::Info,
                                &param.location,
                                "time_key",
                                "the time tailhose read the record, RFC 3339 UTC with ms (Fluentd's event time: the same unless a parser took a time field)"
                                    .into(),
                            );
                        }
                        "time_type" | "time_format" | "localtime" | "utc" | "timezone" => notes.push(
                            Severity::Info,
                            &param.location,
                            &param.key,
                            "tailhose writes the time as RFC 3339 in UTC with milliseconds".into(),
                        ),
                        other => notes.push(
                            Severity::ChangesDelivery,
                            &param.location,
                            other,
                            "an <inject> setting tailhose does not translate".into(),
                        ),
                    }
                }
            }
            _ => notes.push(
                Severity::ChangesDelivery,
                &child.location,
                &child.name,
                "changes how records are written (formatting, injected fields); tailhose sends lines as written".into(),
            ),
        }
    }
    Some(output)
}

/// A Kinesis output's `partition_key` / `explicit_hash_key` (a record key whose value is the
/// key) or `fixed_partition_key`.
fn kinesis_key(output: &mut StreamOutput, param: &super::fluentd_syntax::Param, notes: &mut Notes) {
    let (key, value) = (param.key.as_str(), param.value.clone());
    let OutputStream::Kinesis(stream) = &mut output.stream else {
        notes.push(Severity::ChangesDelivery, &param.location, key, "a Kinesis Data Streams parameter in a Firehose output".into());
        return;
    };
    match key {
        "fixed_partition_key" => stream.fixed_partition_key = Some(value),
        // Fluentd names a top-level key; tailhose's path joins names with dots.
        _ if value.contains('.') => notes.push(
            Severity::ChangesDelivery,
            &param.location,
            key,
            format!("the record key `{value}` has a dot, which tailhose reads as a path into nested objects; set the field by hand"),
        ),
        "explicit_hash_key" => stream.explicit_hash_key_field = Some(value),
        _ if stream.aggregate => notes.push(
            Severity::ChangesDelivery,
            &param.location,
            key,
            "an aggregated record has one partition key: kinesis_streams_aggregated takes fixed_partition_key".into(),
        ),
        _ => stream.partition_key_field = Some(value),
    }
}

/// A Fluentd duration (`5s`, `1m`, `0.5`, a bare number of seconds) as a humantime string.
fn fluentd_duration(value: &str) -> String {
    match value.parse::<f64>() {
        Ok(seconds) => format!("{}ms", (seconds * 1000.0).round() as u64),
        Err(_) => value.to_owned(),
    }
}

/// A Fluentd size: bytes, or a number with `k`, `m`, `g` or `t` (powers of 1024).
fn fluentd_size(value: &str) -> Option<u64> {
    let value = value.trim().to_ascii_lowercase();
    let (number, multiplier) = match value.char_indices().last()? {
        (at, 'k') => (&value[..at], 1u64 << 10),
        (at, 'm') => (&value[..at], 1 << 20),
        (at, 'g') => (&value[..at], 1 << 30),
        (at, 't') => (&value[..at], 1 << 40),
        _ => (value.as_str(), 1),
    };
    number.trim().parse::<u64>().ok()?.checked_mul(multiplier)
}

/// A TOML-friendly name from a tag or stream name.
pub(crate) fn name_from(text: &str, fallback: &str, index: usize) -> String {
    let name: String = text.chars().map(|character| if character.is_ascii_alphanumeric() { character } else { '_' }).collect();
    let name = name.trim_matches('_').to_owned();
    if name.is_empty() {
        format!("{fallback}_{}", index + 1)
    } else {
        name
    }
}

/// `name`, or `name_2`, `name_3`, … when it is taken already (two sources with one tag, say).
pub(crate) fn unique_name<'a>(name: String, taken: impl Iterator<Item = &'a str> + Clone) -> String {
    let is_free = |candidate: &str| !taken.clone().any(|used| used == candidate);
    if is_free(&name) {
        return name;
    }
    (2..).map(|suffix| format!("{name}_{suffix}")).find(|candidate| is_free(candidate)).unwrap_or(name)
}

/// Whether a `<match>`/`<filter>` argument (space-separated patterns) matches `tag`, with
/// Fluentd's rules: `*` one tag part, `**` zero or more parts, `{a,b}` either.
pub fn tag_matches(patterns: &str, tag: &str) -> bool {
    let tag_parts: Vec<&str> = tag.split('.').collect();
    patterns.split_whitespace().flat_map(expand_braces).any(|pattern| {
        let parts: Vec<&str> = pattern.split('.').collect();
        parts_match(&parts, &tag_parts)
    })
}

fn parts_match(pattern: &[&str], tag: &[&str]) -> bool {
    match pattern.split_first() {
        None => tag.is_empty(),
        Some((&"**", rest)) => (0..=tag.len()).any(|skip| parts_match(rest, &tag[skip..])),
        Some((part, rest)) => tag.split_first().is_some_and(|(first, tag_rest)| wildcard(part, first) && parts_match(rest, tag_rest)),
    }
}

/// `*` within one tag part.
fn wildcard(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((prefix, rest)) => {
            text.starts_with(prefix)
                && (0..=text.len() - prefix.len())
                    .any(|at| text.is_char_boundary(prefix.len() + at) && wildcard(rest, &text[prefix.len() + at..]))
        }
    }
}

pub(crate) fn expand_braces(pattern: &str) -> Vec<String> {
    let (Some(open), Some(close)) = (pattern.find('{'), pattern.find('}')) else { return vec![pattern.to_owned()] };
    if close < open {
        return vec![pattern.to_owned()];
    }
    let (head, tail) = (&pattern[..open], &pattern[close + 1..]);
    pattern[open + 1..close].split(',').flat_map(|choice| expand_braces(&format!("{head}{choice}{tail}"))).collect()
}

/// The tailhose configuration text for a translation, with where each part came from.
/// A bare TOML key where TOML allows one (letters, digits, `_`, `-`), a quoted one otherwise.
fn toml_key(name: &str) -> String {
    let bare = !name.is_empty() && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if bare {
        name.to_owned()
    } else {
        toml::Value::String(name.to_owned()).to_string()
    }
}

/// A JSON value as a TOML inline value (a null, which TOML has not, as an empty string: the
/// translations check for nulls before they get here).
fn toml_inline(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Null => "\"\"".into(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        Value::String(text) => toml::Value::String(text.clone()).to_string(),
        Value::Array(items) => format!("[{}]", items.iter().map(toml_inline).collect::<Vec<_>>().join(", ")),
        Value::Object(fields) => {
            let fields: Vec<String> = fields.iter().map(|(name, value)| format!("{} = {}", toml_key(name), toml_inline(value))).collect();
            if fields.is_empty() {
                "{}".into()
            } else {
                format!("{{ {} }}", fields.join(", "))
            }
        }
    }
}

pub fn render_toml(translation: &Translation, data_dir: &str, origin: &std::path::Path) -> String {
    let quote = |text: &str| toml::Value::String(text.to_owned()).to_string();
    let (described, command, source_section, source_named_by, output_section) = translation.origin.describe();
    let mut out = String::new();
    out.push_str(&format!("# Translated from {described} {} by `{command}`.\n", origin.display()));
    out.push_str("# Check it with `tailhose check-config --config FILE`.\n\n");
    out.push_str(&format!("data_dir = {}\n", quote(data_dir)));
    for source in &translation.sources {
        out.push_str(&format!(
            "\n# {source_section} at {} ({source_named_by} {})\n[sources.{}]\n",
            source.location, source.tag, source.name
        ));
        let paths: Vec<String> = source.paths.iter().map(|path| quote(path)).collect();
        out.push_str(&format!("paths = [{}]\n", paths.join(", ")));
        if !source.exclude.is_empty() {
            let exclude: Vec<String> = source.exclude.iter().map(|path| quote(path)).collect();
            out.push_str(&format!("exclude = [{}]\n", exclude.join(", ")));
        }
        // A parse table says how records are read: a format beside it would contradict it.
        if source.parse.is_none() {
            let format = match source.format {
                LineFormat::Json => "json",
                LineFormat::Raw => "raw",
            };
            out.push_str(&format!("format = \"{format}\"\n"));
        }
        out.push_str(&format!("read_from_head = {}\n", source.read_from_head));
        out.push_str(&format!("refresh_interval = {}\n", quote(&source.refresh_interval)));
        if let Some(age) = &source.ignore_older_than {
            out.push_str(&format!("ignore_older_than = {}\n", quote(age)));
        }
        if source.skip_header_lines > 0 {
            out.push_str(&format!("skip_header_lines = {}\n", source.skip_header_lines));
        }
        if let Some(start) = &source.multiline_start {
            out.push_str(&format!("\n[sources.{}.multiline]\nstart = {}\n", source.name, quote(start)));
            if let Some(timeout) = &source.multiline_flush_interval {
                out.push_str(&format!("flush_timeout = {}\n", quote(timeout)));
            }
        }
        if let Some(parse) = &source.parse {
            out.push_str(&format!("\n[sources.{}.parse]\ntype = {}\n", source.name, quote(&parse.parser_type)));
            if let Some(pattern) = &parse.pattern {
                out.push_str(&format!("pattern = {}\n", quote(pattern)));
            }
            if let Some(columns) = &parse.columns {
                let columns: Vec<String> = columns.iter().map(|column| quote(column)).collect();
                out.push_str(&format!("columns = [{}]\n", columns.join(", ")));
            }
            if !parse.types.is_empty() {
                let types: Vec<String> = parse.types.iter().map(|(field, kind)| format!("{} = {}", toml_key(field), quote(kind))).collect();
                out.push_str(&format!("types = {{ {} }}\n", types.join(", ")));
            }
            if let Some(pattern) = &parse.null_value_pattern {
                out.push_str(&format!("null_value_pattern = {}\n", quote(pattern)));
            }
            if let Some(key) = &parse.message_key {
                out.push_str(&format!("message_key = {}\n", quote(key)));
            }
            if let Some(delimiter) = &parse.delimiter {
                out.push_str(&format!("delimiter = {}\n", quote(delimiter)));
            }
        }
        if let Some(single_line) = &source.single_line {
            out.push_str(&format!(
                "\n[sources.{}.single_line]\ntrim = {}\nseparator = {}\n",
                source.name,
                single_line.trim,
                quote(&single_line.separator)
            ));
        }
        let fields = &source.add_fields;
        if !fields.is_empty() {
            out.push_str(&format!("\n[sources.{}.add_fields]\n", source.name));
            if !fields.fixed.is_empty() {
                let fixed: Vec<String> =
                    fields.fixed.iter().map(|(name, value)| format!("{} = {}", toml_key(name), toml_inline(value))).collect();
                out.push_str(&format!("static = {{ {} }}\n", fixed.join(", ")));
            }
            for (setting, key) in
                [("hostname_key", &fields.hostname_key), ("path_key", &fields.path_key), ("read_time_key", &fields.read_time_key)]
            {
                if let Some(key) = key {
                    out.push_str(&format!("{setting} = {}\n", quote(key)));
                }
            }
            if fields.kinesis_agent_ec2_metadata {
                out.push_str("kinesis_agent_ec2_metadata = true\n");
            }
        }
    }
    for output in &translation.outputs {
        let sink_type = match output.stream {
            OutputStream::Firehose { .. } => "firehose",
            OutputStream::Kinesis(_) => "kinesis_streams",
        };
        out.push_str(&format!("\n# {output_section} at {}\n[sinks.{}]\ntype = \"{sink_type}\"\n", output.location, output.name));
        let inputs: Vec<String> = output.inputs.iter().map(|input| quote(input)).collect();
        out.push_str(&format!("inputs = [{}]\n", inputs.join(", ")));
        match &output.stream {
            OutputStream::Firehose { delivery_stream } => out.push_str(&format!("delivery_stream = {}\n", quote(delivery_stream))),
            OutputStream::Kinesis(stream) => {
                out.push_str(&format!("stream_name = {}\n", quote(&stream.stream_name)));
                for (setting, value) in [
                    ("partition_key_field", &stream.partition_key_field),
                    ("fixed_partition_key", &stream.fixed_partition_key),
                    ("explicit_hash_key_field", &stream.explicit_hash_key_field),
                ] {
                    if let Some(value) = value {
                        out.push_str(&format!("{setting} = {}\n", quote(value)));
                    }
                }
                if stream.aggregate {
                    out.push_str("aggregate = true\n");
                }
            }
        }
        if let Some(fallback) = &output.fallback_stream {
            out.push_str(&format!("fallback_stream = {}\n", quote(fallback)));
        }
        if let Some(region) = &output.region {
            out.push_str(&format!("region = {}\n", quote(region)));
        }
        if let Some(endpoint) = &output.endpoint {
            out.push_str(&format!("endpoint_url = {}\n", quote(endpoint)));
        }
        out.push_str(&format!("flush_interval = {}\n", quote(&output.flush_interval)));
        out.push_str(&format!("append_newline = {}\n", output.append_newline));
        if let Some(records) = output.max_batch_records {
            out.push_str(&format!("max_batch_records = {records}\n"));
        }
        if let Some(bytes) = output.max_batch_bytes {
            out.push_str(&format!("max_batch_bytes = {bytes}\n"));
        }
        if let Some(compression) = output.compression {
            out.push_str(&format!("compression = \"{compression}\"\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::migrate::fluentd_syntax::parse_text;

    #[test]
    fn tags_match_with_fluentds_wildcards() {
        assert!(tag_matches("kinesis.*", "kinesis.test"));
        assert!(!tag_matches("kinesis.*", "kinesis.test.more"));
        assert!(!tag_matches("kinesis.*", "kinesis"));
        assert!(tag_matches("kinesis.**", "kinesis"));
        assert!(tag_matches("kinesis.**", "kinesis.a.b"));
        assert!(tag_matches("other kinesis.{test,prod}", "kinesis.prod"));
        assert!(tag_matches("app.log*", "app.log2"));
        assert!(tag_matches("**", "anything.at.all"));
        assert!(!tag_matches("a.b", "a.c"));
    }

    fn translated(text: &str) -> Translation {
        translate(&parse_text(text, Path::new("td-agent.conf")).expect("parses"))
    }

    #[test]
    fn placeholders_in_stream_names_become_templates_with_a_fallback_and_tags_are_resolved_per_source() {
        let conf = "<source>\n  @type tail\n  path /a/*.log\n  tag app\n  <parse>\n    @type json\n  </parse>\n</source>\n\
<source>\n  @type tail\n  path /b/*.log\n  tag web.front\n  <parse>\n    @type json\n  </parse>\n</source>\n\
<match app>\n  @type copy\n  <store>\n    @type kinesis_firehose\n    delivery_stream_name logs-${tag}\n  </store>\n  <store>\n    @type kinesis_streams\n    stream_name ns-${record[\"kubernetes\"][\"namespace\"]}-${service}\n    <buffer tag, service>\n    </buffer>\n  </store>\n</match>\n\
<match web.**>\n  @type kinesis_firehose\n  delivery_stream_name ${tag[1]}-${$.level}\n</match>\n";
        let translation = translated(conf);
        let names: Vec<&str> = translation.outputs.iter().map(|output| output.stream.name()).collect();
        // `app` is both the tag and the source's name: ${source}; web.front's source is `web_front`.
        assert_eq!(names, ["logs-${source}", "ns-${record.kubernetes.namespace}-${record.service}", "front-${record.level}"]);
        let fallbacks: Vec<Option<&str>> = translation.outputs.iter().map(|output| output.fallback_stream.as_deref()).collect();
        assert_eq!(fallbacks, [None, Some("ns-unknown-unknown"), Some("front-unknown")]);
        assert!(!translation.changes_delivery(), "{:#?}", translation.notes);
        assert_eq!(translation.notes.iter().filter(|note| note.severity == Severity::ActionNeeded).count(), 2, "{:#?}", translation.notes);
        let toml = render_toml(&translation, "/var/lib/tailhose", Path::new("td-agent.conf"));
        assert!(toml.contains("fallback_stream = \"front-unknown\"\n"), "{toml}");
        let config = crate::config::Config::parse(&toml, Path::new("/etc/tailhose/tailhose.toml")).expect("valid");
        assert!(config.sink_settings().iter().all(|sink| sink.streams.is_some()));

        // A tag that holds a placeholder is written as it is, once.
        assert_eq!(with_tag("s-${tag}-${tag[1]}-${tag[7]}", "${tag}.b"), "s-${tag}.b-b-unknown");
        for (name, why) in [
            ("logs-%Y%m%d", "time placeholder"),
            ("logs-${unknown}", "chunk keys"),
            ("logs-${record[\"kubernetes.io/app\"]}", "holds a dot"),
        ] {
            let conf = format!("<source>\n  @type tail\n  path /a/*.log\n  tag app\n</source>\n<match app>\n  @type kinesis_firehose\n  delivery_stream_name {name}\n</match>\n");
            let translation = translated(&conf);
            let refused = translation.notes.iter().find(|note| note.severity == Severity::ChangesDelivery).expect("refused");
            assert!(refused.message.contains(why), "{name}: {}", refused.message);
        }
        // Sources of several tags in one stream per tag: one sink cannot say it.
        let conf = "<source>\n  @type tail\n  path /a/*.log\n  tag a.x\n</source>\n<source>\n  @type tail\n  path /b/*.log\n  tag a.y\n</source>\n<match a.*>\n  @type kinesis_firehose\n  delivery_stream_name s-${tag[1]}\n</match>\n";
        let translation = translated(conf);
        assert!(
            translation.notes.iter().any(|note| note.severity == Severity::ChangesDelivery && note.key == "${tag}"),
            "{:#?}",
            translation.notes
        );
    }

    #[test]
    fn unknown_inputs_filters_and_outputs_are_listed_as_changing_delivery() {
        let translation = translated(
            "<source>\n  @type forward\n</source>\n<source>\n  @type tail\n  path /a/*.log\n  tag app.a\n  format none\n</source>\n<filter app.**>\n  @type grep\n</filter>\n<match app.**>\n  @type s3\n</match>\n",
        );
        assert!(translation.changes_delivery());
        let keys: Vec<(usize, &str)> = translation
            .notes
            .iter()
            .filter(|note| note.severity == Severity::ChangesDelivery)
            .map(|note| (note.location.line, note.key.as_str()))
            .collect();
        assert_eq!(keys, vec![(2, "@type"), (10, "<filter>"), (14, "@type")]);
    }

    #[test]
    fn a_copy_to_three_streams_is_three_sinks_for_one_source_and_a_store_tailhose_lacks_is_listed() {
        let text = "<source>\n  @type tail\n  path /a/*.log\n  tag app\n</source>\n<match app>\n  @type copy\n  copy_mode deep\n  <store>\n    @type kinesis_firehose\n    delivery_stream_name one\n  </store>\n  <store ignore_error>\n    @type kinesis_streams\n    stream_name two\n    partition_key user_id\n    compression zlib\n  </store>\n  <store>\n    @type kinesis_streams_aggregated\n    stream_name three\n    fixed_partition_key app\n  </store>\n  <store>\n    @type s3\n  </store>\n</match>\n";
        let translation = translated(text);
        let outputs: Vec<(&str, &[String])> =
            translation.outputs.iter().map(|output| (output.stream.name(), output.inputs.as_slice())).collect();
        let app = &["app".to_owned()][..];
        assert_eq!(outputs, vec![("one", app), ("two", app), ("three", app)]);
        let keyed = KinesisStream { stream_name: "two".into(), partition_key_field: Some("user_id".into()), ..KinesisStream::default() };
        assert_eq!(translation.outputs[1].stream, OutputStream::Kinesis(keyed));
        assert_eq!(translation.outputs[1].compression, Some("zlib"), "each record compressed, as the plugin did");
        let aggregated = KinesisStream {
            stream_name: "three".into(),
            fixed_partition_key: Some("app".into()),
            aggregate: true,
            ..KinesisStream::default()
        };
        assert_eq!(translation.outputs[2].stream, OutputStream::Kinesis(aggregated));
        let notes: Vec<(Severity, usize, &str)> =
            translation.notes.iter().map(|note| (note.severity, note.location.line, note.key.as_str())).collect();
        assert_eq!(
            notes,
            vec![(Severity::Info, 8, "copy_mode"), (Severity::Info, 13, "<store ignore_error>"), (Severity::ChangesDelivery, 25, "@type")]
        );
        let rendered = render_toml(&translation, "/var/lib/tailhose", Path::new("/etc/td-agent/td-agent.conf"));
        let config = Config::parse(&rendered, Path::new("/etc/tailhose/tailhose.toml")).expect("a valid configuration");
        let types: Vec<&str> = config.sinks.values().map(|sink| sink.get_ref().sink_type.name()).collect();
        assert_eq!(types, ["firehose", "kinesis_streams", "kinesis_streams"], "sinks one, three and two: {rendered}");
    }

    #[test]
    fn a_partition_key_an_aggregated_output_cannot_keep_is_listed_as_changing_delivery() {
        let translation = translated(
            "<source>\n  @type tail\n  path /a/*.log\n  tag app\n</source>\n<match app>\n  @type kinesis_streams_aggregated\n  stream_name s\n  partition_key user_id\n</match>\n",
        );
        let note = translation.notes.iter().find(|note| note.key == "partition_key").expect("a note on partition_key");
        assert_eq!((note.severity, note.location.line), (Severity::ChangesDelivery, 9));
    }

    #[test]
    fn fluentd_v0_12_parser_parameters_in_the_source_are_read_as_the_parse_section_they_stand_for() {
        let translation = translated(
            "<source>\n  @type tail\n  path /var/log/nginx/access.log\n  tag web\n  format nginx\n  types code:integer\n</source>\n\
<source>\n  @type tail\n  path /var/log/app.log\n  tag app\n  format multiline\n  format_firstline /^\\d{4}-/\n  format1 /^(?<time>\\S+) (?<message>.*)/\n</source>\n\
<source>\n  @type tail\n  path /var/log/api.log\n  tag api\n  format /^(?<status>\\d+) (?<path>\\S+)$/\n</source>\n\
<match **>\n  @type kinesis_firehose\n  delivery_stream_name s\n</match>\n",
        );
        assert!(!translation.changes_delivery(), "{:#?}", translation.notes);
        let parsed: Vec<(&str, &str, Option<&str>)> = translation
            .sources
            .iter()
            .map(|source| {
                let parse = source.parse.as_ref().expect("a parse table");
                (source.name.as_str(), parse.parser_type.as_str(), source.multiline_start.as_deref())
            })
            .collect();
        assert_eq!(parsed, vec![("web", "nginx", None), ("app", "regex", Some("^\\d{4}-")), ("api", "regex", None)]);
        assert_eq!(
            translation.sources[0].parse.as_ref().map(|parse| parse.types.clone()),
            Some(vec![("code".to_owned(), "integer".to_owned())])
        );
        let config = render_toml(&translation, "/var/lib/tailhose", Path::new("td-agent.conf"));
        Config::parse(&config, Path::new("/etc/tailhose/tailhose.toml")).expect("valid");
    }

    #[test]
    fn two_sources_with_one_tag_get_distinct_names_and_share_their_output() {
        let source = |path: &str| format!("<source>\n  @type tail\n  path {path}\n  tag app\n</source>\n");
        let text = format!(
            "{}{}<match app>\n  @type kinesis_firehose\n  delivery_stream_name s\n</match>\n",
            source("/a/*.log"),
            source("/b/*.log")
        );
        let translation = translated(&text);
        let names: Vec<&str> = translation.sources.iter().map(|source| source.name.as_str()).collect();
        assert_eq!(names, vec!["app", "app_2"]);
        assert_eq!(translation.outputs.len(), 1);
        assert_eq!(translation.outputs[0].inputs, vec!["app".to_owned(), "app_2".to_owned()]);
        let toml = render_toml(&translation, "/var/lib/tailhose", Path::new("td-agent.conf"));
        Config::parse(&toml, Path::new("/etc/tailhose/tailhose.toml")).expect("the rendered configuration is valid");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// Whatever names, paths and values a Fluentd configuration holds, the translation is a
        /// valid tailhose configuration (quoting, names, durations).
        #[test]
        fn any_translated_configuration_is_valid(
            tag in "[a-z][a-z0-9._-]{0,12}",
            path in r"/[^\x00\n\r#\[\]{}*?,]{1,30}",
            stream in "[A-Za-z0-9_.-]{1,20}",
            region in "[a-z0-9-]{0,12}",
            flush in proptest::prop_oneof!["[1-9][0-9]{0,2}s", "[0-9]\\.[0-9]", "[1-9]m"],
        ) {
            let text = format!(
                "<source>\n  @type tail\n  path \"{}\"\n  tag {tag}\n</source>\n<match {tag}>\n  @type kinesis_firehose\n  delivery_stream_name {stream}\n  region \"{region}\"\n  <buffer>\n    flush_interval {flush}\n  </buffer>\n</match>\n",
                path.replace('\\', "\\\\").replace('"', "\\\"")
            );
            let translation = translated(&text);
            proptest::prop_assert_eq!(translation.sources.len(), 1, "{:?}", translation.notes);
            proptest::prop_assert_eq!(&translation.sources[0].paths, &vec![path.trim().to_owned()]);
            let toml = render_toml(&translation, "/var/lib/tailhose", Path::new("td-agent.conf"));
            let parsed = Config::parse(&toml, Path::new("/etc/tailhose/tailhose.toml"));
            proptest::prop_assert!(parsed.is_ok(), "{:?}\n{}", parsed.err(), toml);
        }
    }

    #[test]
    fn a_multiline_parser_becomes_a_start_pattern_and_its_formats_the_pattern_of_the_whole_record() {
        let translation = translated(
            "<source>\n  @type tail\n  path /var/log/app/*.log\n  tag app\n  multiline_flush_interval 5s\n  <parse>\n    @type multiline\n    format_firstline /^\\d{4}-\\d{2}-\\d{2} /\n    format1 /^(?<time>\\S+ \\S+) (?<level>\\w+) (?<message>.*)/\n  </parse>\n</source>\n<match app>\n  @type kinesis_firehose\n  delivery_stream_name s\n</match>\n",
        );
        let source = &translation.sources[0];
        assert_eq!((source.format, source.multiline_start.as_deref()), (LineFormat::Raw, Some(r"^\d{4}-\d{2}-\d{2} ")));
        let changed: Vec<&str> =
            translation.notes.iter().filter(|note| note.severity == Severity::ChangesDelivery).map(|note| note.key.as_str()).collect();
        assert!(changed.is_empty(), "{:?}", translation.notes);
        let toml = render_toml(&translation, "/var/lib/tailhose", Path::new("td-agent.conf"));
        assert!(toml.contains("[sources.app.multiline]\nstart = '^\\d{4}-\\d{2}-\\d{2} '\nflush_timeout = \"5s\"\n"), "{toml}");
        assert!(
            toml.contains("[sources.app.parse]\ntype = \"regex\"\npattern = '(?sm)^(?<time>\\S+ \\S+) (?<level>\\w+) (?<message>.*)'\n"),
            "{toml}"
        );
        let config = Config::parse(&toml, Path::new("/etc/tailhose/tailhose.toml")).expect("the rendered configuration is valid");
        let settings = config.source_settings();
        let multiline = settings[0].multiline.as_ref().expect("records of several lines");
        assert_eq!(multiline.flush_timeout, std::time::Duration::from_secs(5));
        let parser = settings[0].parse.as_ref().expect("a parser");
        let object = parser.parse(b"2026-12-01 12:00:00 ERROR failed\n\tat a").expect("the record parses");
        assert_eq!(object, br#"{"time":"2026-12-01 12:00:00","level":"ERROR","message":"failed\n\tat a"}"#);
    }

    #[test]
    fn text_parsers_become_parse_tables_with_their_types_and_the_result_is_a_valid_configuration() {
        let conf = "<source>\n  @type tail\n  path /var/log/nginx/access.log\n  tag nginx\n  <parse>\n    @type nginx\n    types code:integer,size:integer\n    keep_time_key true\n  </parse>\n</source>\n\
<source>\n  @type tail\n  path /var/log/messages\n  tag sys\n  <parse>\n    @type syslog\n    message_format auto\n  </parse>\n</source>\n\
<source>\n  @type tail\n  path /var/log/app/views.csv\n  tag views\n  <parse>\n    @type csv\n    keys user,video,seconds\n    types seconds:float,when:time\n  </parse>\n</source>\n\
<source>\n  @type tail\n  path /var/log/app/api.log\n  tag api\n  <parse>\n    @type regexp\n    expression /^(?<status>\\d+) (?<path>\\S+)$/\n    null_value_pattern /^-$/\n  </parse>\n</source>\n\
<match **>\n  @type kinesis_firehose\n  delivery_stream_name s\n</match>\n";
        let translation = translated(conf);
        let tables: Vec<(&str, &str)> = translation
            .sources
            .iter()
            .map(|source| (source.name.as_str(), source.parse.as_ref().map_or("-", |parse| parse.parser_type.as_str())))
            .collect();
        assert_eq!(tables, [("nginx", "nginx"), ("sys", "syslog"), ("views", "csv"), ("api", "regex")]);
        let changed: Vec<(&str, &str)> = translation
            .notes
            .iter()
            .filter(|note| note.severity == Severity::ChangesDelivery)
            .map(|note| (note.key.as_str(), note.message.as_str()))
            .collect();
        // Only the conversion tailhose does not have (Fluentd's `time` type) changes what is sent.
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert!(changed[0].1.contains("when:time"), "{changed:?}");
        let toml = render_toml(&translation, "/var/lib/tailhose", Path::new("td-agent.conf"));
        assert!(toml.contains("[sources.nginx.parse]\ntype = \"nginx\"\ntypes = { code = \"integer\", size = \"integer\" }\n"), "{toml}");
        assert!(toml.contains("columns = [\"user\", \"video\", \"seconds\"]\ntypes = { seconds = \"float\" }\n"), "{toml}");
        assert!(!toml.contains("format = "), "a parsed source has no format line: {toml}");
        let config = Config::parse(&toml, Path::new("/etc/tailhose/tailhose.toml")).expect("the rendered configuration is valid");
        let settings = config.source_settings();
        let api = settings.iter().find(|source| source.name == "api").and_then(|source| source.parse.as_ref()).expect("api parser");
        assert_eq!(api.parse(b"404 /missing").expect("parses"), br#"{"status":"404","path":"/missing"}"#);
        assert_eq!(api.parse(b"404 -").expect("parses"), br#"{"status":"404","path":null}"#, "null_value_pattern carried over");
    }

    #[test]
    fn record_transformer_values_inject_and_path_key_become_added_fields() {
        let conf = "<source>\n  @type tail\n  path /var/log/app/app.log\n  tag app\n  path_key file\n  <parse>\n    @type json\n  </parse>\n</source>\n\
<filter app>\n  @type record_transformer\n  <record>\n    hostname \"#{Socket.gethostname}\"\n    env prod\n    from ${tag}\n    took ${record[\"ms\"]}\n  </record>\n</filter>\n\
<match app>\n  @type kinesis_firehose\n  delivery_stream_name s\n  <inject>\n    tag_key tag\n    time_key read_at\n  </inject>\n</match>\n";
        let translation = translated(conf);
        let fields = &translation.sources[0].add_fields;
        assert_eq!(
            fields,
            &ImportedFields {
                fixed: vec![("env".into(), "prod".into()), ("from".into(), "app".into()), ("tag".into(), "app".into())],
                hostname_key: Some("hostname".into()),
                path_key: Some("file".into()),
                read_time_key: Some("read_at".into()),
                kinesis_agent_ec2_metadata: false,
            }
        );
        // Only the value Ruby computes from each event changes what is sent.
        let changed: Vec<&str> =
            translation.notes.iter().filter(|note| note.severity == Severity::ChangesDelivery).map(|note| note.key.as_str()).collect();
        assert_eq!(changed, ["took"], "{:?}", translation.notes);
        let toml = render_toml(&translation, "/var/lib/tailhose", Path::new("td-agent.conf"));
        assert!(
            toml.contains("[sources.app.add_fields]\nstatic = { env = \"prod\", from = \"app\", tag = \"app\" }\nhostname_key = \"hostname\"\npath_key = \"file\"\nread_time_key = \"read_at\"\n"),
            "{toml}"
        );
        let config = Config::parse(&toml, Path::new("/etc/tailhose/tailhose.toml")).expect("the rendered configuration is valid");
        let added = config.source_settings()[0].add_fields.clone().expect("added fields");
        assert_eq!(added.hostname.as_ref().map(|(key, _)| key.as_str()), Some("hostname"));
    }

    #[test]
    fn credentials_are_never_copied_and_retries_are_explained() {
        let translation = translated(
            "<source>\n  @type tail\n  path /a/*.log, /b/*.log\n  tag a\n  read_from_head true\n  <parse>\n    @type json\n  </parse>\n</source>\n<match a>\n  @type kinesis_firehose\n  delivery_stream_name s\n  aws_key_id AKIA\n  aws_sec_key secret\n  retries_on_batch_request 3\n</match>\n",
        );
        assert!(!translation.changes_delivery(), "{:?}", translation.notes);
        let toml = render_toml(&translation, "/var/lib/tailhose", Path::new("td-agent.conf"));
        assert!(!toml.contains("AKIA") && !toml.contains("secret"), "{toml}");
        assert!(toml.contains("paths = [\"/a/*.log\", \"/b/*.log\"]") && toml.contains("read_from_head = true"), "{toml}");
        assert_eq!(translation.notes.iter().filter(|note| note.severity == Severity::ActionNeeded).count(), 2);
        assert!(translation.notes.iter().any(|note| note.key == "retries_on_batch_request" && note.message.contains("never gives")));
    }
}
