//! From the Kinesis Agent's `agent.json` (flows tailing files to Firehose or Kinesis Data Streams) to the tailhose
//! configuration that delivers the same records.
//!
//! Read from the agent's own source (awslabs/amazon-kinesis-agent): a flow with `deliveryStream`
//! is a Firehose flow, one with `kinesisStream` a Kinesis Data Streams flow; `filePattern` globs
//! the file name only, in one directory; files ending in `.gz`, `.bz2` or `.zip` are never read;
//! `initialPosition` (`END_OF_FILE` unless said) applies only where no checkpoint does; a record is
//! a line with its `\n` (or, with `multiLineStartPattern`, the lines from one start to the next),
//! and what `dataProcessingOptions` make of it ends in `\n` too.
//!
//! Every key is accounted for, as for Fluentd ([`super::translate`]): mapped, or listed in a
//! [`Note`] with its reason, [`Severity::ChangesDelivery`] where the records would differ.
//! Credentials are never copied.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::fluentd_syntax::Location;
use super::translate::{
    name_from, unique_name, ImportedFields, KinesisStream, Notes, Origin, OutputStream, ParseTable, Severity, SingleLineTable,
    StreamOutput, TailSource, Translation,
};
use crate::config::{firehose_limits, LineFormat};

/// Where the agent keeps its checkpoints unless `checkpointFile` says otherwise.
pub const DEFAULT_CHECKPOINT_FILE: &str = "/var/run/aws-kinesis-agent/checkpoints";

/// Where the agent's Firehose and Kinesis clients send without `firehose.endpoint` or
/// `kinesis.endpoint` (the AWS SDK v1 default).
const AGENT_DEFAULT_REGION: &str = "us-east-1";

/// The agent's `maxBufferAgeMillis` default: records waited up to a minute.
const AGENT_BUFFER_AGE_MILLIS: u64 = 60_000;

#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not JSON the agent reads: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {message}")]
    Shape { path: PathBuf, message: String },
}

/// What a flow is to its checkpoints: the agent's id for it, and the files it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowIdentity {
    /// The tailhose source made of the flow.
    pub source: String,
    /// `fh:STREAM:DIRECTORY/PATTERN`, the `flow` column of the checkpoint file.
    pub id: String,
}

/// An `agent.json`, translated.
#[derive(Debug, Clone)]
pub struct AgentImport {
    pub translation: Translation,
    pub flows: Vec<FlowIdentity>,
    /// `checkpointFile`, or the agent's default.
    pub checkpoint_file: PathBuf,
}

/// One configuration file and its text.
pub struct AgentFile {
    pub path: PathBuf,
    pub text: String,
}

impl AgentFile {
    pub fn read(path: &Path) -> Result<AgentFile, AgentConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| AgentConfigError::Read { path: path.to_owned(), source })?;
        Ok(AgentFile { path: path.to_owned(), text })
    }
}

/// The files the agent reads flows from besides `agent.json`: every file of `agent.d`, the
/// folder it always looks in (`/etc/aws-kinesis/agent.d/`), in name order.
pub fn flow_files(folder: &Path) -> Result<Vec<PathBuf>, AgentConfigError> {
    let read_error = |source| AgentConfigError::Read { path: folder.to_owned(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(folder).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Translates the text of an `agent.json` read from `path`.
pub fn translate_text(text: &str, path: &Path) -> Result<AgentImport, AgentConfigError> {
    translate(&AgentFile { path: path.to_owned(), text: text.to_owned() }, &[])
}

/// Translates `agent.json` and the flows of the files of `agent.d` (`more`, which the agent
/// appends to the main file's flows; only their `flows` are read, and a file it cannot read or
/// parse it skips with a warning, as the import does with a note).
pub fn translate(main: &AgentFile, more: &[PathBuf]) -> Result<AgentImport, AgentConfigError> {
    let shape = |path: &Path, message: &str| AgentConfigError::Shape { path: path.to_owned(), message: message.to_owned() };
    let root: Value = serde_json::from_str(&main.text).map_err(|source| AgentConfigError::Json { path: main.path.clone(), source })?;
    let root = root.as_object().ok_or_else(|| shape(&main.path, "not a JSON object"))?;
    let mut notes = Notes(Vec::new());
    let whole = Location { file: main.path.clone(), line: 1 };
    let settings = Settings::read(root, &whole, &mut notes);
    let mut flows = FlowTranslation {
        translation: Translation { origin: Origin::KinesisAgent, ..Translation::default() },
        identities: Vec::new(),
        seen: 0,
    };
    match root.get("flows") {
        Some(Value::Array(list)) => flows.add(list, main, &settings, &mut notes),
        Some(_) => return Err(shape(&main.path, "`flows` is not a list")),
        None => {}
    }
    for path in more {
        let skipped = |notes: &mut Notes, why: String| {
            let location = Location { file: path.clone(), line: 1 };
            notes.push(Severity::Info, &location, "flows", format!("{why}; the agent skips such a file too, so nothing of it is imported"));
        };
        let file = match AgentFile::read(path) {
            Ok(file) => file,
            Err(error) => {
                skipped(&mut notes, error.to_string());
                continue;
            }
        };
        match serde_json::from_str::<Value>(&file.text) {
            Ok(Value::Object(root)) => match root.get("flows") {
                Some(Value::Array(list)) => flows.add(list, &file, &settings, &mut notes),
                Some(_) => skipped(&mut notes, "`flows` is not a list".to_owned()),
                None => {}
            },
            Ok(_) => skipped(&mut notes, "not a JSON object".to_owned()),
            Err(error) => skipped(&mut notes, format!("not JSON the agent reads: {error}")),
        }
    }
    let FlowTranslation { mut translation, identities, .. } = flows;
    translation.notes = notes.0;
    // In the order the agent reads them: agent.json, then agent.d's files; by line in each.
    let file_order = |file: &Path| if file == main.path { 0 } else { 1 + more.iter().position(|path| path == file).unwrap_or(more.len()) };
    translation.notes.sort_by_key(|note| (file_order(&note.location.file), note.location.line));
    let checkpoint_file = settings.checkpoint_file.unwrap_or_else(|| PathBuf::from(DEFAULT_CHECKPOINT_FILE));
    Ok(AgentImport { translation, flows: identities, checkpoint_file })
}

/// The flows translated so far, from every file.
struct FlowTranslation {
    translation: Translation,
    identities: Vec<FlowIdentity>,
    /// Flows read so far, from every file: the fallback for names.
    seen: usize,
}

impl FlowTranslation {
    fn add(&mut self, flows: &[Value], file: &AgentFile, settings: &Settings, notes: &mut Notes) {
        let line_of = FlowLines::new(&file.text);
        for (index, flow) in flows.iter().enumerate() {
            let location = Location { file: file.path.clone(), line: line_of.flow(index) };
            let number = self.seen;
            self.seen += 1;
            let Some(flow) = flow.as_object() else {
                notes.push(Severity::ChangesDelivery, &location, "flows", format!("flow {} is not an object; not imported", index + 1));
                continue;
            };
            let Some(mut translated) = translate_flow(flow, number, settings, location, notes) else { continue };
            let translation = &mut self.translation;
            let name = unique_name(translated.source.name.clone(), translation.sources.iter().map(|source| source.name.as_str()));
            translated.source.name = name.clone();
            translated.output.name = unique_name(name.clone(), translation.outputs.iter().map(|output| output.name.as_str()));
            translated.output.inputs = vec![name.clone()];
            self.identities.push(FlowIdentity { source: name, id: translated.id });
            translation.sources.push(translated.source);
            translation.outputs.push(translated.output);
        }
    }
}

/// The line of each flow in the file, for notes: the agent's JSON has no other address than
/// "the n-th flow", and a line is what an operator finds.
struct FlowLines(Vec<usize>);

impl FlowLines {
    fn new(text: &str) -> FlowLines {
        let lines = text.lines().enumerate().filter(|(_, line)| line.contains("\"filePattern\"")).map(|(index, _)| index + 1).collect();
        FlowLines(lines)
    }

    fn flow(&self, index: usize) -> usize {
        self.0.get(index).copied().unwrap_or(1)
    }
}

/// The top-level keys a flow's translation needs.
#[derive(Debug, Default)]
struct Settings {
    firehose_endpoint: Option<String>,
    kinesis_endpoint: Option<String>,
    kinesis_region: Option<String>,
    checkpoint_file: Option<PathBuf>,
}

impl Settings {
    fn read(root: &Map<String, Value>, location: &Location, notes: &mut Notes) -> Settings {
        let mut settings = Settings::default();
        for (key, value) in root {
            match key.as_str() {
                "flows" => {}
                // The agent's shipped file has `""`: no endpoint, as for the agent.
                "firehose.endpoint" => {
                    settings.firehose_endpoint = value.as_str().map(str::trim).filter(|text| !text.is_empty()).map(str::to_owned)
                }
                "checkpointFile" => settings.checkpoint_file = value.as_str().map(PathBuf::from),
                "awsAccessKeyId" | "awsSecretAccessKey" => notes.push(
                    Severity::ActionNeeded,
                    location,
                    key,
                    "credentials are not copied: give tailhose the same ones through its credential chain (environment, profile, instance role)".into(),
                ),
                "assumeRoleARN" | "assumeRoleExternalId" | "sts.endpoint" => notes.push(
                    Severity::ActionNeeded,
                    location,
                    key,
                    "assume the role through the credential chain (a profile with role_arn, or AWS_ROLE_ARN with a web identity)".into(),
                ),
                "kinesis.endpoint" => {
                    settings.kinesis_endpoint = value.as_str().map(str::trim).filter(|text| !text.is_empty()).map(str::to_owned)
                }
                "kinesis.region" => {
                    settings.kinesis_region = value.as_str().map(str::trim).filter(|text| !text.is_empty()).map(str::to_owned)
                }
                key if key.starts_with("cloudwatch.") || key.starts_with("log.") => notes.push(
                    Severity::Info,
                    location,
                    key,
                    "the agent's own metrics and status log: tailhose serves its counters at /metrics (Prometheus) and `tailhose status`".into(),
                ),
                key if key.starts_with("checkpoints.") || key == "checkpointTimeToLiveDays" => {
                    notes.push(Severity::Info, location, key, "about the agent's checkpoint store, read only to import positions".into())
                }
                _ => notes.push(
                    Severity::Info,
                    location,
                    key,
                    "threads, connections and time-outs of the agent's HTTP client: tailhose's own defaults apply".into(),
                ),
            }
        }
        settings
    }
}

/// What one flow becomes.
struct TranslatedFlow {
    source: TailSource,
    output: StreamOutput,
    id: String,
}

fn translate_flow(
    flow: &Map<String, Value>,
    index: usize,
    settings: &Settings,
    location: Location,
    notes: &mut Notes,
) -> Option<TranslatedFlow> {
    let Some(pattern) = flow.get("filePattern").and_then(Value::as_str) else {
        notes.push(Severity::ChangesDelivery, &location, "filePattern", "a flow without a file pattern; not imported".into());
        return None;
    };
    // The agent reads `deliveryStream` first: a flow with both is a Firehose flow.
    let (stream, kinesis) = match (flow.get("deliveryStream").and_then(Value::as_str), flow.get("kinesisStream").and_then(Value::as_str)) {
        (Some(stream), _) => (stream, false),
        (None, Some(stream)) => (stream, true),
        (None, None) => {
            notes.push(
                Severity::ChangesDelivery,
                &location,
                "deliveryStream",
                "a flow with neither deliveryStream nor kinesisStream".into(),
            );
            return None;
        }
    };
    let (directory, base) = java_path_parts(pattern);
    // The agent's flow id (`FirehoseFileFlow`, `KinesisFileFlow`): a prefix, the stream, and
    // `SourceFile.toString()`, the directory and the name's glob joined.
    let id = format!("{}:{stream}:{directory}/{base}", if kinesis { "kinesis" } else { "fh" });
    if directory.contains(['*', '?', '[', '{']) {
        notes.push(
            Severity::ChangesDelivery,
            &location,
            "filePattern",
            format!(
                "`{pattern}`: the agent globs the file name only and takes the folder `{directory}` as written; tailhose would glob it too"
            ),
        );
    }
    let folder = Path::new(&directory);
    // The agent never reads compressed files, whatever the case of their extension.
    let excluded = ["[gG][zZ]", "[bB][zZ]2", "[zZ][iI][pP]"]
        .iter()
        .map(|extension| folder.join(format!("*.{extension}")).to_string_lossy().into_owned())
        .collect();
    let mut source = TailSource {
        name: name_from(&base.replace('*', ""), "flow", index),
        tag: id.clone(),
        // Java's glob has `{a,b}`; tailhose's paths take each choice as a glob of its own.
        paths: super::translate::expand_braces(&base).into_iter().map(|name| folder.join(name).to_string_lossy().into_owned()).collect(),
        exclude: excluded,
        pos_file: None,
        read_from_head: false,
        refresh_interval: "10s".into(),
        format: LineFormat::Raw,
        ignore_older_than: None,
        skip_header_lines: 0,
        single_line: None,
        multiline_start: None,
        multiline_flush_interval: None,
        parse: None,
        add_fields: ImportedFields::default(),
        location: location.clone(),
    };
    let (endpoint_key, service, endpoint_setting) = match kinesis {
        false => ("firehose.endpoint", "firehose", settings.firehose_endpoint.as_deref()),
        true => ("kinesis.endpoint", "kinesis", settings.kinesis_endpoint.as_deref()),
    };
    let (mut region, endpoint) = endpoint_of(endpoint_setting, service);
    if kinesis {
        region = settings.kinesis_region.clone().or(region);
    }
    let mut output = StreamOutput {
        name: name_from(stream, service, index),
        compression: None,
        stream: match kinesis {
            false => OutputStream::Firehose { delivery_stream: stream.to_owned() },
            // `partitionKeyOption` RANDOM (the default): a random key for each record.
            true => OutputStream::Kinesis(KinesisStream { stream_name: stream.to_owned(), ..KinesisStream::default() }),
        },
        region,
        endpoint,
        append_newline: true,
        flush_interval: "1s".into(),
        max_batch_records: None,
        max_batch_bytes: None,
        inputs: Vec::new(),
        inject: ImportedFields::default(),
        inject_tag_key: None,
        fallback_stream: None,
        location: location.clone(),
    };
    match (&output.region, &output.endpoint) {
        (Some(_), _) => {}
        // The agent's SDK (v1) client sends to its default endpoint, us-east-1's.
        (None, None) => {
            output.region = Some(AGENT_DEFAULT_REGION.into());
            notes.push(
                Severity::Info,
                &location,
                endpoint_key,
                format!("not set: the agent's SDK sent to {AGENT_DEFAULT_REGION}'s endpoint, and so does the sink (region = \"{AGENT_DEFAULT_REGION}\")"),
            );
        }
        (None, Some(_)) => notes.push(
            Severity::ActionNeeded,
            &location,
            endpoint_key,
            "an endpoint that names no region: set `region` in the sink (the region its requests are signed for), or AWS_REGION".into(),
        ),
    }
    let mut buffer_age = None;
    for (key, value) in flow {
        let number = value.as_u64();
        match key.as_str() {
            "filePattern" | "deliveryStream" | "kinesisStream" => {}
            "initialPosition" => match value.as_str() {
                Some("END_OF_FILE") => {}
                Some("START_OF_FILE") => {
                    source.read_from_head = true;
                    notes.push(
                        Severity::Info,
                        &location,
                        key,
                        "where no position is known, tailhose reads every file the pattern names from its head (the agent only the newest); positions imported from the checkpoints make the difference moot".into(),
                    );
                }
                _ => notes.push(Severity::ChangesDelivery, &location, key, format!("{value} is neither START_OF_FILE nor END_OF_FILE")),
            },
            // The agent matches it at the start of a line (Java's `lookingAt()`).
            "multiLineStartPattern" => match value.as_str().map(|pattern| format!("^(?:{pattern})")) {
                Some(anchored) if regex::Regex::new(&anchored).is_ok() => source.multiline_start = Some(anchored),
                _ => notes.push(
                    Severity::ChangesDelivery,
                    &location,
                    key,
                    format!("{value} is not a pattern tailhose reads (Java's lookaround and backreferences are not kept); lines stay single records"),
                ),
            },
            "skipHeaderLines" => match number.and_then(|lines| u32::try_from(lines).ok()) {
                Some(lines) => source.skip_header_lines = lines,
                None => notes.push(Severity::ChangesDelivery, &location, key, format!("{value} is not a number of lines")),
            },
            "fileFooterPattern" => notes.push(
                Severity::ChangesDelivery,
                &location,
                key,
                "tailhose does not stop reading a file at a footer line: the footer and anything after it would be delivered".into(),
            ),
            "truncatedRecordTerminator" => notes.push(
                Severity::Info,
                &location,
                key,
                "tailhose never truncates: a record over Firehose's 1,000 KiB is a counted dead letter, kept whole".into(),
            ),
            "maxBufferAgeMillis" => buffer_age = number,
            "maxBufferSizeRecords" => match number.and_then(|records| u32::try_from(records).ok()) {
                Some(records) if (1..=firehose_limits::MAX_BATCH_RECORDS).contains(&records) => output.max_batch_records = Some(records),
                _ => notes.push(Severity::Info, &location, key, format!("{value} is not 1 to 500: tailhose's default (500) applies")),
            },
            "maxBufferSizeBytes" => match number {
                Some(bytes) if bytes > 0 && bytes <= firehose_limits::MAX_BATCH_BYTES => output.max_batch_bytes = Some(bytes),
                _ => notes.push(Severity::Info, &location, key, format!("{value} is not 1 B to 4 MiB: tailhose's default applies")),
            },
            "aggregatedRecordSizeBytes" => notes.push(
                Severity::Info,
                &location,
                key,
                "the agent put several records into one Firehose record; S3 gets the same bytes either way. For the same bill, add `pack_records = true` to the sink".into(),
            ),
            "dataProcessingOptions" => match value.as_array() {
                Some(options) => processing(options, &location, &mut source, notes),
                None => notes.push(Severity::ChangesDelivery, &location, key, "not a list of options".into()),
            },
            "partitionKeyOption" => match (kinesis, value.as_str()) {
                (true, Some("RANDOM")) => {}
                (true, Some("DETERMINISTIC")) => notes.push(
                    Severity::Info,
                    &location,
                    key,
                    "the agent keyed each record by a hash of its data; tailhose gives each a random key (the same records reach the same stream, spread over its shards alike)".into(),
                ),
                (true, _) => notes.push(Severity::ChangesDelivery, &location, key, format!("{value} is neither RANDOM nor DETERMINISTIC")),
                (false, _) => notes.push(Severity::Info, &location, key, "only for Kinesis Data Streams flows".into()),
            },
            _ => notes.push(
                Severity::Info,
                &location,
                key,
                "the agent's reading and retry timing: tailhose's own defaults apply (it polls files on change, resends at once and backs off on outages)".into(),
            ),
        }
    }
    let buffer_age = buffer_age.unwrap_or(AGENT_BUFFER_AGE_MILLIS);
    if buffer_age < 1_000 {
        output.flush_interval = format!("{buffer_age}ms");
    } else if buffer_age > 1_000 {
        // A record waited up to a minute in the agent by default: tailhose's one second is what
        // an operator replacing it wants (records at the destination sooner, the same records).
        notes.push(
            Severity::Info,
            &location,
            "maxBufferAgeMillis",
            format!("the agent sent a buffer after up to {buffer_age} ms; tailhose sends within flush_interval = \"1s\""),
        );
    }
    Some(TranslatedFlow { source, output, id })
}

/// The region an endpoint `firehose.REGION.amazonaws.com` names, or the endpoint itself when it
/// is not AWS's (a VPC endpoint, a test server).
/// A pattern's folder and file name as the agent's `SourceFile` holds them: Java's `Path`
/// collapses repeated `/` and drops a trailing one; the root folder is written `/` and joined
/// with another `/` (`//app.log`), as `directory + "/" + name` does.
fn java_path_parts(pattern: &str) -> (String, String) {
    let absolute = pattern.starts_with('/');
    let parts: Vec<&str> = pattern.split('/').filter(|part| !part.is_empty()).collect();
    let (name, folder) = parts.split_last().map_or(("", &[][..]), |(name, folder)| (*name, folder));
    let joined = folder.join("/");
    let directory = match (absolute, joined.is_empty()) {
        (true, true) => "/".to_owned(),
        (true, false) => format!("/{joined}"),
        (false, _) => joined,
    };
    (directory, name.to_owned())
}

/// The region of an AWS endpoint of `service` (`firehose.eu-west-1.amazonaws.com`), or the
/// endpoint as an URL when it is not one (a VPC endpoint, LocalStack).
fn endpoint_of(endpoint: Option<&str>, service: &str) -> (Option<String>, Option<String>) {
    let Some(endpoint) = endpoint else { return (None, None) };
    let host = endpoint.trim_start_matches("https://").trim_end_matches('/');
    let regional = host.strip_prefix(service).and_then(|rest| rest.strip_prefix('.'));
    if let Some(region) = regional.and_then(|rest| rest.strip_suffix(".amazonaws.com")) {
        if !region.is_empty() && !region.contains('.') {
            return (Some(region.to_owned()), None);
        }
    }
    let url = if endpoint.contains("://") { endpoint.to_owned() } else { format!("https://{endpoint}") };
    (None, Some(url))
}

/// `dataProcessingOptions`, applied in order by the agent: the one that turns a line into JSON
/// becomes a parse table; the others change records in ways tailhose does not.
fn processing(options: &[Value], location: &Location, source: &mut TailSource, notes: &mut Notes) {
    for option in options {
        let name = option.get("optionName").and_then(Value::as_str).unwrap_or("?");
        let key = format!("dataProcessingOptions {name}");
        if option.get("jsonFormat").and_then(Value::as_str).is_some_and(|format| format != "COMPACT") {
            notes.push(Severity::ChangesDelivery, location, &key, "tailhose writes compact JSON, one record per line".into());
        }
        let table = match name {
            "LOGTOJSON" => log_to_json(option),
            "CSVTOJSON" => csv_to_json(option),
            "SINGLELINE" => {
                if source.parse.is_some() {
                    let differs = "tailhose makes a record one line before it parses it; the agent parsed the record of several lines first (the same JSON, unless a pattern's `.` stopped at a line's end)";
                    notes.push(Severity::Info, location, &key, differs.into());
                }
                source.single_line = Some(single_line(option));
                continue;
            }
            "ADDMETADATA" => {
                add_metadata(option, location, source, notes);
                continue;
            }
            "ADDEC2METADATA" => {
                source.add_fields.kinesis_agent_ec2_metadata = true;
                let differs = "the same fields under the same names (`add_fields.kinesis_agent_ec2_metadata`), read once at start-up (the agent read them again every `metadataTTL`, an hour by default), `metadataTimestamp` in UTC, and a field the record has keeps its value (the agent overwrote it)";
                notes.push(Severity::Info, location, &key, differs.into());
                let tags = "`tags` come from IMDS, not EC2's DescribeTags: allow tags in the instance's metadata (aws ec2 modify-instance-metadata-options --instance-id ID --instance-metadata-tags enabled), or records go without `tags`, as the agent's did when DescribeTags failed";
                notes.push(Severity::ActionNeeded, location, &key, tags.into());
                continue;
            }
            "ADDBRACKETS" => Err("tailhose does not wrap lines in braces".into()),
            _ => Err(format!("`{name}` is not an option tailhose translates")),
        };
        match table {
            Ok(_) if source.parse.is_some() => {
                notes.push(Severity::ChangesDelivery, location, &key, "a second conversion to JSON after the first is not kept".into())
            }
            Ok((table, caveat)) => {
                notes.push(Severity::Info, location, &key, caveat);
                source.parse = Some(table);
            }
            Err(reason) => notes.push(Severity::ChangesDelivery, location, &key, reason),
        }
    }
    // The agent reads the record as JSON to add the instance's fields: so does tailhose,
    // where no option turned the line into JSON first.
    if source.add_fields.kinesis_agent_ec2_metadata && source.parse.is_none() {
        source.format = LineFormat::Json;
    }
}

/// SINGLELINE: each line trimmed unless `NO_TRIM`, joined by nothing, or with `ESCAPE_NEW_LINE`
/// by the agent's `\\n` (two backslashes and an n: its Java literal is `"\\\\n"`). tailhose
/// applies it before parsing, where the agent's chain usually has it.
fn single_line(option: &Value) -> SingleLineTable {
    let options: Vec<&str> = option
        .get("parseOptions")
        .and_then(Value::as_array)
        .map_or(Vec::new(), |options| options.iter().filter_map(Value::as_str).collect());
    SingleLineTable {
        trim: !options.contains(&"NO_TRIM"),
        separator: if options.contains(&"ESCAPE_NEW_LINE") { r"\\n".into() } else { String::new() },
    }
}

/// ADDMETADATA: `{"ts": the time read, "metadata": …, "data": the record's text}`, as a `none`
/// parse table (the text in `data`) with `metadata` as a static field and `ts` the read time.
fn add_metadata(option: &Value, location: &Location, source: &mut TailSource, notes: &mut Notes) {
    let key = "dataProcessingOptions ADDMETADATA";
    if source.parse.is_some() {
        let reason =
            "after a conversion to JSON the agent wraps that JSON as the text of `data`; tailhose wraps a line, not a record it made";
        notes.push(Severity::ChangesDelivery, location, key, reason.into());
        return;
    }
    let metadata = match option.get("metadata") {
        None | Some(Value::Null) => {
            notes.push(
                Severity::ChangesDelivery,
                location,
                key,
                "no `metadata`: the agent writes \"metadata\": null, which tailhose cannot add".into(),
            );
            return;
        }
        Some(metadata) => metadata.clone(),
    };
    if contains_null(&metadata) {
        notes.push(Severity::ChangesDelivery, location, key, "a null inside `metadata`: tailhose's static fields cannot hold one".into());
        return;
    }
    source.parse = Some(ParseTable {
        parser_type: "none".into(),
        pattern: None,
        columns: None,
        types: Vec::new(),
        null_value_pattern: None,
        message_key: Some("data".into()),
        delimiter: None,
    });
    source.add_fields.fixed.push(("metadata".into(), metadata));
    // The agent reads `timestamp` as the string "true"; a JSON true is what its users write too.
    let timestamp =
        matches!(option.get("timestamp"), Some(Value::Bool(true))) || option.get("timestamp").and_then(Value::as_str) == Some("true");
    if timestamp {
        source.add_fields.read_time_key = Some("ts".into());
    }
    notes.push(
        Severity::Info,
        location,
        key,
        "the same fields, in the order data, metadata, ts (the agent: ts, metadata, data); ts is the time tailhose read the record, in the agent's format (UTC, milliseconds)".into(),
    );
}

fn contains_null(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.iter().any(contains_null),
        Value::Object(fields) => fields.values().any(contains_null),
        _ => false,
    }
}

/// A parse table and what differs from the agent in a way that does not change the records it
/// delivered (or why none can be made).
type Converted = Result<(ParseTable, String), String>;

/// LOGTOJSON: the agent's patterns (`PatternConstants` in its source) with its field names as
/// named captures, or `matchPattern` with `customFieldNames`.
fn log_to_json(option: &Value) -> Converted {
    let format = option.get("logFormat").and_then(Value::as_str).ok_or("LOGTOJSON without logFormat")?;
    let custom: Option<Vec<String>> = option
        .get("customFieldNames")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).map(str::to_owned).collect());
    let (pattern, fields, dash_is_null) = match format {
        "COMMONAPACHELOG" => (format!("{}.*", agent_patterns::common_apache_log()), agent_patterns::COMMON_LOG_FIELDS.to_vec(), true),
        "COMBINEDAPACHELOG" => (format!("{}.*", agent_patterns::combined_apache_log()), agent_patterns::COMBINED_LOG_FIELDS.to_vec(), true),
        "APACHEERRORLOG" => (agent_patterns::apache_error_log(), agent_patterns::ERROR_LOG_FIELDS.to_vec(), true),
        "SYSLOG" => (agent_patterns::syslog(agent_patterns::SyslogTime::Bsd), agent_patterns::SYSLOG_FIELDS.to_vec(), false),
        "RFC3339SYSLOG" => (agent_patterns::syslog(agent_patterns::SyslogTime::Rfc3339), agent_patterns::SYSLOG_FIELDS.to_vec(), false),
        other => return Err(format!("logFormat `{other}` is not one of the agent's")),
    };
    let pattern = match option.get("matchPattern").and_then(Value::as_str) {
        Some(custom_pattern) => custom_pattern.to_owned(),
        None => pattern,
    };
    let names: Vec<String> = match custom {
        Some(names) => names,
        None if option.get("matchPattern").is_some() => {
            return Err("matchPattern without customFieldNames (the agent refuses it too)".into())
        }
        None => fields.iter().map(|field| (*field).to_owned()).collect(),
    };
    // The agent matches the whole record (Java's `matches()`).
    let named = format!("\\A(?:{})\\z", named_groups(&pattern, &names)?);
    let table = ParseTable {
        parser_type: "regex".into(),
        pattern: Some(named),
        columns: None,
        types: Vec::new(),
        // The agent's Apache parser: "the field is not found if it shows as `-`".
        null_value_pattern: dash_is_null.then(|| "^-$".to_owned()),
        message_key: None,
        delimiter: None,
    };
    table.compile().map_err(|error| format!("the pattern cannot be kept ({error})"))?;
    Ok((
        table,
        "a line that does not match is a counted parse_failed dead letter, kept (the agent dropped it); a field the line lacks is left out instead of null"
            .into(),
    ))
}

/// CSVTOJSON: a `split` parse table, the agent's own splitting (Java's `String.split` at
/// `delimiter`, `,` unless said: quotes are text, empty values at a row's end dropped, missing
/// columns null, extra values dropped), the columns named by `customFieldNames`.
fn csv_to_json(option: &Value) -> Converted {
    let names: Vec<String> = option
        .get("customFieldNames")
        .and_then(Value::as_array)
        .ok_or("CSVTOJSON without customFieldNames")?
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    let delimiter = option.get("delimiter").and_then(Value::as_str).unwrap_or(",");
    let table = ParseTable {
        parser_type: "split".into(),
        pattern: None,
        columns: Some(names),
        types: Vec::new(),
        null_value_pattern: None,
        message_key: None,
        delimiter: Some(delimiter.to_owned()),
    };
    table.compile().map_err(|error| format!("the columns or the delimiter cannot be kept ({error})"))?;
    Ok((table, "the delimiter is read as a Rust regular expression (the agent's is Java's); for a plain character the two agree".into()))
}

/// `pattern` with its capture groups named `names` in order: the agent numbers its groups (a
/// named one too, as Java does) and names them by position. Refused when the counts differ, as
/// the agent refuses such a record, and for Java's flags that mean something else in Rust.
fn named_groups(pattern: &str, names: &[String]) -> Result<String, String> {
    let mut named = String::with_capacity(pattern.len() + 16 * names.len());
    let mut names_left = names.iter();
    let mut next_name = || -> Result<String, String> {
        let name = names_left.next().ok_or_else(|| format!("the pattern has more groups than the {} field names", names.len()))?;
        let valid = name.chars().next().is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
            && name.chars().all(|character| character.is_ascii_alphanumeric() || character == '_');
        if !valid {
            return Err(format!("field name `{name}`: tailhose names fields with letters, digits and `_`"));
        }
        Ok(format!("(?<{name}>"))
    };
    // Inside a character class, and whether the class has its first character yet (a `]`
    // there, or after `[^`, is a literal in Java).
    let mut class: Option<bool> = None;
    let characters: Vec<char> = pattern.chars().collect();
    let mut index = 0;
    while index < characters.len() {
        let character = characters[index];
        let rest = &characters[index + 1..];
        match (character, class) {
            ('\\', _) => {
                named.push(character);
                if let Some(&escaped) = rest.first() {
                    named.push(escaped);
                    index += 1;
                }
                if class == Some(false) {
                    class = Some(true);
                }
                index += 1;
                continue;
            }
            ('[', None) => {
                class = Some(false);
                named.push(character);
                if rest.first() == Some(&'^') {
                    named.push('^');
                    index += 1;
                }
                index += 1;
                continue;
            }
            (']', Some(true)) => class = None,
            (_, Some(false)) => class = Some(true),
            ('(', None) => match rest {
                ['?', '<', next, ..] if *next != '=' && *next != '!' => {
                    // A named group: renamed to its position's field, its own name skipped.
                    let close = rest.iter().position(|&character| character == '>').ok_or("a named group without its `>`")?;
                    named.push_str(&next_name()?);
                    index += close + 2;
                    continue;
                }
                ['?', flags @ ..] => {
                    let flags: String =
                        flags.iter().take_while(|character| character.is_ascii_alphabetic() || **character == '-').collect();
                    if flags.contains(['U', 'd']) {
                        return Err(format!(
                            "the flag group `(?{flags}`: Java's U (Unicode classes) and d (Unix lines) differ from Rust's"
                        ));
                    }
                }
                _ => {
                    named.push_str(&next_name()?);
                    index += 1;
                    continue;
                }
            },
            _ => {}
        }
        named.push(character);
        index += 1;
    }
    match names_left.next() {
        Some(_) => Err(format!("the pattern has fewer groups than the {} field names", names.len())),
        None => Ok(named),
    }
}

/// The agent's log patterns, from `PatternConstants.java` (the same text, as Rust strings).
mod agent_patterns {
    const INT: &str = r"(?:[+-]?(?:[0-9]+))";
    const POSINT: &str = r"(?:[1-9][0-9]*)";
    const NONNEGINT: &str = r"(?:[0-9]+)";
    const WORD: &str = r"\w+";
    const NOQUOTE: &str = r#"[^"]+"#;
    const IP: &str = r"(?:[\d\.]+)";
    const HOSTNAME: &str = r"(?:[\w\-]+)(?:\.(?:[\w\-]+))*(?:\.?|\b)";
    const USER: &str = r"(?:[a-zA-Z0-9._-]+)";
    const MONTHDAY: &str = r"(?:(?:0[1-9])|(?:[12][0-9])|(?:3[01])|[1-9])";
    const DAY: &str = r"(?:Mon(?:day)?|Tue(?:sday)?|Wed(?:nesday)?|Thu(?:rsday)?|Fri(?:day)?|Sat(?:urday)?|Sun(?:day)?)";
    const MONTH: &str = r"\b(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|Jun(?:e)?|Jul(?:y)?|Aug(?:ust)?|Sep(?:tember)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\b";
    const YEAR: &str = r"(?:[1-9]\d*)";
    const HOUR: &str = r"(?:2[0123]|[01]?[0-9])";
    const MINUTE: &str = r"(?:[0-5][0-9])";
    const SECOND: &str = r"(?:(?:[0-5]?[0-9]|60)(?:[:\.,][0-9]+)?)";
    const RFC3339: &str = r"(?:\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?)(?:Z|(?:[-+]\d{2}:\d{2}))";

    pub const COMMON_LOG_FIELDS: [&str; 7] = ["host", "ident", "authuser", "datetime", "request", "response", "bytes"];
    pub const COMBINED_LOG_FIELDS: [&str; 9] =
        ["host", "ident", "authuser", "datetime", "request", "response", "bytes", "referer", "agent"];
    pub const ERROR_LOG_FIELDS: [&str; 7] = ["timestamp", "module", "severity", "processid", "threadid", "client", "message"];
    pub const SYSLOG_FIELDS: [&str; 5] = ["timestamp", "hostname", "program", "processid", "message"];

    fn time() -> String {
        format!("(?:{HOUR}:{MINUTE}:{SECOND})")
    }

    fn iporhost() -> String {
        format!("(?:{HOSTNAME}|{IP})")
    }

    pub fn common_apache_log() -> String {
        let httpdate = format!(r"(?:{MONTHDAY}/{MONTH}/{YEAR}:{}\s{INT})", time());
        format!(r#"^({}) ({USER}) ({USER}) \[({httpdate})\] "({NOQUOTE})" ({INT}|\-) ({INT}|\-)"#, iporhost())
    }

    pub fn combined_apache_log() -> String {
        format!(r#"{} "({NOQUOTE})" "({NOQUOTE})""#, common_apache_log())
    }

    pub fn apache_error_log() -> String {
        let timestamp = format!(r"(?:{DAY}\s+{MONTH}\s+{MONTHDAY}\s+{}\s+{YEAR})", time());
        let urihost = format!("(?:{}(?::{POSINT})?)", iporhost());
        format!(r"^\[({timestamp})\] \[(?:({WORD}):)?({WORD})\] \[pid ({NONNEGINT})(?::tid ({NONNEGINT}))?\] \[client ({urihost})\] (.*)")
    }

    /// How a syslog line's time is written: `Dec  1 12:00:00` (SYSLOG) or RFC 3339 (RFC3339SYSLOG).
    pub enum SyslogTime {
        Bsd,
        Rfc3339,
    }

    pub fn syslog(time_format: SyslogTime) -> String {
        let timestamp = match time_format {
            SyslogTime::Bsd => format!(r"(?:{MONTH}\s+{MONTHDAY}\s+{})", time()),
            SyslogTime::Rfc3339 => RFC3339.to_owned(),
        };
        let facility = format!("<{NONNEGINT}.{NONNEGINT}>");
        let program = format!(r"([\w\._/%-]+)(?:\[({POSINT})\])?");
        format!("^({timestamp}) (?:{facility} )?({USER}) {program}: (.*)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::translate::Note;
    use crate::source::parse::Parser;

    fn imported(text: &str) -> AgentImport {
        translate_text(text, Path::new("agent.json")).expect("translates")
    }

    fn parser_of(import: &AgentImport) -> Parser {
        import.translation.sources[0].parse.as_ref().expect("a parse table").compile().expect("compiles")
    }

    fn parsed(parser: &Parser, line: &str) -> serde_json::Value {
        serde_json::from_slice(&parser.parse(line.as_bytes()).expect("parses")).expect("JSON")
    }

    #[test]
    fn the_flows_of_agent_d_files_follow_agent_json_and_a_file_the_agent_skips_is_noted() {
        let folder = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let path = folder.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let main = AgentFile {
            path: PathBuf::from("/etc/aws-kinesis/agent.json"),
            text: r#"{"firehose.endpoint": "firehose.eu-west-1.amazonaws.com", "flows": [{"filePattern": "/var/log/app/*.log", "deliveryStream": "app"}]}"#.into(),
        };
        let more = [
            write("a.json", "{\n\"flows\": [\n{\"filePattern\": \"/var/log/audit/*.log\", \"deliveryStream\": \"audit\"}]}"),
            write("b.json", "{ not json"),
            write("c.json", r#"{"checkpointFile": "/elsewhere", "flows": []}"#),
        ];
        let import = translate(&main, &more).expect("translates");
        let ids: Vec<&str> = import.flows.iter().map(|flow| flow.id.as_str()).collect();
        assert_eq!(ids, ["fh:app:/var/log/app/*.log", "fh:audit:/var/log/audit/*.log"]);
        let audit = import
            .translation
            .outputs
            .iter()
            .find(|output| output.stream == OutputStream::Firehose { delivery_stream: "audit".into() })
            .expect("agent.d's flow");
        assert_eq!(audit.region.as_deref(), Some("eu-west-1"), "agent.json's settings hold for agent.d's flows");
        assert_eq!(import.checkpoint_file, PathBuf::from(DEFAULT_CHECKPOINT_FILE), "only the flows of agent.d's files are read");
        let notes: Vec<String> = import.translation.notes.iter().map(|note| note.to_string()).collect();
        assert!(notes.iter().any(|note| note.starts_with(&format!("{}:1: note: `flows`", more[1].display()))), "{notes:?}");
        assert!(!import.translation.changes_delivery(), "{notes:?}");
    }

    #[test]
    fn firehose_and_kinesis_flows_become_a_source_and_a_sink_each_with_the_agents_flow_ids() {
        let import = imported(
            r#"{
  "checkpointFile": "/tmp/agent/checkpoints",
  "firehose.endpoint": "firehose.ap-northeast-2.amazonaws.com",
  "awsAccessKeyId": "AKIA...",
  "flows": [
    {
      "filePattern": "/var/log/app/events.log*",
      "deliveryStream": "test-firehose",
      "initialPosition": "START_OF_FILE",
      "maxBufferSizeRecords": 100,
      "multiLineStartPattern": "^\\d{4}-"
    },
    {
      "filePattern": "/var/log/other/*.log",
      "kinesisStream": "a-stream",
      "partitionKeyOption": "DETERMINISTIC"
    }
  ]
}"#,
        );
        assert_eq!(import.checkpoint_file, PathBuf::from("/tmp/agent/checkpoints"));
        assert_eq!(
            import.flows,
            vec![
                FlowIdentity { source: "events_log".into(), id: "fh:test-firehose:/var/log/app/events.log*".into() },
                FlowIdentity { source: "log".into(), id: "kinesis:a-stream:/var/log/other/*.log".into() },
            ]
        );
        let source = &import.translation.sources[0];
        assert_eq!(source.paths, vec!["/var/log/app/events.log*".to_owned()]);
        assert!(source.exclude.contains(&"/var/log/app/*.[gG][zZ]".to_owned()), "{:?}", source.exclude);
        assert!(source.read_from_head);
        assert_eq!(source.multiline_start.as_deref(), Some(r"^(?:^\d{4}-)"), "matched at a line's start, as Java's lookingAt");
        let output = &import.translation.outputs[0];
        assert_eq!((output.region.as_deref(), output.endpoint.as_deref()), (Some("ap-northeast-2"), None));
        assert_eq!(output.max_batch_records, Some(100));
        assert!(output.append_newline);
        let keyed =
            |key: &str| import.translation.notes.iter().find(|note| note.key == key).map(|note| (note.severity, note.location.line));
        assert_eq!(keyed("awsAccessKeyId"), Some((Severity::ActionNeeded, 1)));
        assert_eq!(keyed("partitionKeyOption"), Some((Severity::Info, 14)), "{:#?}", import.translation.notes);
        let kinesis = &import.translation.outputs[1];
        assert_eq!(kinesis.stream, OutputStream::Kinesis(KinesisStream { stream_name: "a-stream".into(), ..KinesisStream::default() }));
        assert_eq!(kinesis.region.as_deref(), Some(AGENT_DEFAULT_REGION), "the agent's SDK default without kinesis.endpoint");
        assert!(!import.translation.changes_delivery(), "{:#?}", import.translation.notes);
    }

    #[test]
    fn logtojson_combined_apache_gives_the_agents_field_names_and_dash_as_null() {
        let import = imported(
            r#"{"flows": [{"filePattern": "/var/log/httpd/access_log*", "deliveryStream": "web",
                "dataProcessingOptions": [{"optionName": "LOGTOJSON", "logFormat": "COMBINEDAPACHELOG"}]}]}"#,
        );
        assert!(!import.translation.changes_delivery(), "{:#?}", import.translation.notes);
        let record = parsed(
            &parser_of(&import),
            r#"203.0.113.9 - alice [01/Dec/2026:12:00:00 +0000] "GET /videos/17 HTTP/1.1" 200 - "https://example.com/" "Mozilla/5.0 (X11)""#,
        );
        assert_eq!(
            record,
            serde_json::json!({"host": "203.0.113.9", "ident": null, "authuser": "alice", "datetime": "01/Dec/2026:12:00:00 +0000",
                "request": "GET /videos/17 HTTP/1.1", "response": "200", "bytes": null, "referer": "https://example.com/", "agent": "Mozilla/5.0 (X11)"})
        );
    }

    #[test]
    fn logtojson_syslog_and_a_custom_pattern_name_their_groups_in_order() {
        let import = imported(
            r#"{"flows": [{"filePattern": "/var/log/messages", "deliveryStream": "sys",
                "dataProcessingOptions": [{"optionName": "LOGTOJSON", "logFormat": "SYSLOG"}]}]}"#,
        );
        let record = parsed(&parser_of(&import), "Dec  1 12:00:00 web-1 sshd[4242]: Accepted publickey for alice");
        assert_eq!(
            record,
            serde_json::json!({"timestamp": "Dec  1 12:00:00", "hostname": "web-1", "program": "sshd", "processid": "4242", "message": "Accepted publickey for alice"})
        );
        let custom = imported(
            r#"{"flows": [{"filePattern": "/var/log/app.log", "deliveryStream": "s",
                "dataProcessingOptions": [{"optionName": "LOGTOJSON", "logFormat": "COMMONAPACHELOG",
                "matchPattern": "^([\\w.]+) \\[(\\d+)\\] (.*)", "customFieldNames": ["host", "code", "text"]}]}]}"#,
        );
        let record = parsed(&parser_of(&custom), "web.1 [500] (oops) [x]");
        assert_eq!(record, serde_json::json!({"host": "web.1", "code": "500", "text": "(oops) [x]"}));
        assert_eq!(named_groups(r"(a)(?:b)[(]\((c)", &["x".into(), "y".into()]).as_deref(), Ok(r"(?<x>a)(?:b)[(]\((?<y>c)"));
        // Java's literal `]` first in a class, and a named group counted by its position.
        assert_eq!(
            named_groups(r"[](](\d+)[^]](?<old>x)(?<=y)", &["a".into(), "b".into()]).as_deref(),
            Ok(r"[](](?<a>\d+)[^]](?<b>x)(?<=y)")
        );
        assert!(named_groups("(?U)(a)", &["x".into()]).is_err());
        assert!(named_groups("(a)(b)", &["x".into()]).is_err());
        assert!(named_groups("(a)", &["x".into(), "y".into()]).is_err());
    }

    #[test]
    fn csvtojson_splits_as_the_agent_does_and_what_cannot_be_kept_says_why() {
        let import = imported(
            r#"{"flows": [{"filePattern": "/data/*.csv", "deliveryStream": "s", "skipHeaderLines": 1,
                "dataProcessingOptions": [{"optionName": "CSVTOJSON", "customFieldNames": ["id", "name", "note"]},
                                          {"optionName": "ADDBRACKETS"}]}]}"#,
        );
        let changing: Vec<&str> = import
            .translation
            .notes
            .iter()
            .filter(|note| note.severity == Severity::ChangesDelivery)
            .map(|note| note.key.as_str())
            .collect();
        assert_eq!(changing, vec!["dataProcessingOptions ADDBRACKETS"]);
        assert_eq!(import.translation.sources[0].skip_header_lines, 1);
        let parser = parser_of(&import);
        assert_eq!(parsed(&parser, "7,alice,hi"), serde_json::json!({"id": "7", "name": "alice", "note": "hi"}));
        // Java's split: quotes are text, empty values at the end dropped, missing columns null, extra dropped.
        assert_eq!(parsed(&parser, r#"7,"a,b""#), serde_json::json!({"id": "7", "name": "\"a", "note": "b\""}));
        assert_eq!(parsed(&parser, "7,,"), serde_json::json!({"id": "7", "name": null, "note": null}));
        assert_eq!(parsed(&parser, ",x,y,z"), serde_json::json!({"id": "", "name": "x", "note": "y"}));
        let piped = imported(
            r#"{"flows": [{"filePattern": "/data/*.psv", "deliveryStream": "s",
                "dataProcessingOptions": [{"optionName": "CSVTOJSON", "customFieldNames": ["a", "b"], "delimiter": "\\|"}]}]}"#,
        );
        assert_eq!(parsed(&parser_of(&piped), "1|2"), serde_json::json!({"a": "1", "b": "2"}));
    }

    #[test]
    fn addmetadata_wraps_the_line_as_data_with_the_metadata_and_the_read_time() {
        let import = imported(
            r#"{"flows": [{"filePattern": "/var/log/app.log", "deliveryStream": "s",
                "dataProcessingOptions": [{"optionName": "ADDMETADATA", "timestamp": "true", "metadata": {"env": "prod", "zones": [1, 2]}}]}]}"#,
        );
        assert!(!import.translation.changes_delivery(), "{:#?}", import.translation.notes);
        let source = &import.translation.sources[0];
        assert_eq!(parsed(&parser_of(&import), "plain text, \"quoted\""), serde_json::json!({"data": "plain text, \"quoted\""}));
        assert_eq!(source.add_fields.fixed, vec![("metadata".to_owned(), serde_json::json!({"env": "prod", "zones": [1, 2]}))]);
        assert_eq!(source.add_fields.read_time_key.as_deref(), Some("ts"));
        let config = super::super::translate::render_toml(&import.translation, "/var/lib/tailhose", Path::new("agent.json"));
        assert!(config.contains("static = { metadata = { env = \"prod\", zones = [1, 2] } }"), "{config}");
        let config = crate::config::Config::parse(&config, Path::new("/etc/tailhose/tailhose.toml")).expect("valid");
        let settings = config.source_settings();
        let added = settings[0].add_fields.as_ref().expect("fields");
        assert_eq!(added.fixed, vec![("metadata".to_owned(), serde_json::json!({"env": "prod", "zones": [1, 2]}))]);

        let after_json = imported(
            r#"{"flows": [{"filePattern": "/var/log/app.log", "deliveryStream": "s",
                "dataProcessingOptions": [{"optionName": "CSVTOJSON", "customFieldNames": ["a"]}, {"optionName": "ADDMETADATA", "metadata": 1}]}]}"#,
        );
        assert!(after_json.translation.changes_delivery());
    }

    #[test]
    fn addec2metadata_adds_the_agents_instance_fields_to_json_records_and_after_a_conversion() {
        let import = imported(
            r#"{"flows": [{"filePattern": "/var/log/app.log", "deliveryStream": "s",
                "dataProcessingOptions": [{"optionName": "ADDEC2METADATA", "metadataTTL": 600}]},
                {"filePattern": "/var/log/b.log", "deliveryStream": "s",
                "dataProcessingOptions": [{"optionName": "CSVTOJSON", "customFieldNames": ["a"]}, {"optionName": "ADDEC2METADATA"}]}]}"#,
        );
        assert!(!import.translation.changes_delivery(), "{:#?}", import.translation.notes);
        let sources = &import.translation.sources;
        assert!(sources.iter().all(|source| source.add_fields.kinesis_agent_ec2_metadata));
        // The agent reads a line as JSON to add to it; after CSVTOJSON it adds to the object made.
        assert_eq!((sources[0].format, sources[0].parse.is_some()), (LineFormat::Json, false));
        assert!(sources[1].parse.is_some());
        let notes: Vec<&Note> = import.translation.notes.iter().filter(|note| note.key == "dataProcessingOptions ADDEC2METADATA").collect();
        assert!(notes.iter().any(|note| note.severity == Severity::Info && note.message.contains("metadataTTL")), "{notes:#?}");
        let tags = notes.iter().find(|note| note.severity == Severity::ActionNeeded).expect("what to do for the tags");
        assert!(tags.message.contains("--instance-metadata-tags enabled") && tags.message.contains("DescribeTags"), "{}", tags.message);
        let config = super::super::translate::render_toml(&import.translation, "/var/lib/tailhose", Path::new("agent.json"));
        assert_eq!(config.matches("kinesis_agent_ec2_metadata = true\n").count(), 2, "{config}");
        let config = crate::config::Config::parse(&config, Path::new("/etc/tailhose/tailhose.toml")).expect("valid");
        assert!(config
            .source_settings()
            .iter()
            .all(|source| source.add_fields.as_ref().is_some_and(|fields| fields.kinesis_agent_ec2_metadata)));
    }

    #[test]
    fn singleline_with_a_start_pattern_sends_each_trace_as_one_trimmed_line() {
        let import = imported(
            r#"{"flows": [{"filePattern": "/var/log/app.log", "deliveryStream": "s", "multiLineStartPattern": "^\\d{4}-",
                "dataProcessingOptions": [{"optionName": "SINGLELINE"}]},
                {"filePattern": "/var/log/b.log", "deliveryStream": "s",
                "dataProcessingOptions": [{"optionName": "SINGLELINE", "parseOptions": ["NO_TRIM", "ESCAPE_NEW_LINE"]}]}]}"#,
        );
        assert!(!import.translation.changes_delivery(), "{:#?}", import.translation.notes);
        let tables: Vec<Option<SingleLineTable>> = import.translation.sources.iter().map(|source| source.single_line.clone()).collect();
        assert_eq!(
            tables,
            vec![
                Some(SingleLineTable { trim: true, separator: String::new() }),
                Some(SingleLineTable { trim: false, separator: r"\\n".into() })
            ]
        );
        let config = super::super::translate::render_toml(&import.translation, "/var/lib/tailhose", Path::new("agent.json"));
        let config = crate::config::Config::parse(&config, Path::new("/etc/tailhose/tailhose.toml")).expect("valid");
        let settings = config.source_settings();
        let rule = settings[0].single_line.as_ref().expect("single_line");
        assert_eq!(
            rule.apply(b"2026-12-01 ERROR boom\n\tat a.B(B.java:1)\n  \tat c.D(D.java:2)  "),
            b"2026-12-01 ERROR boomat a.B(B.java:1)at c.D(D.java:2)".to_vec()
        );
        let escaped = settings[1].single_line.as_ref().expect("single_line");
        assert_eq!(escaped.apply(b"a\n b"), br"a\\n b".to_vec());
    }

    #[test]
    fn the_flow_id_is_the_path_as_java_writes_it_and_braces_become_globs_of_their_own() {
        assert_eq!(java_path_parts("/var//log/app/"), ("/var/log".into(), "app".into()));
        assert_eq!(java_path_parts("/app.log"), ("/".into(), "app.log".into()));
        let import = imported(
            r#"{"firehose.endpoint": "", "flows": [{"filePattern": "/var//log/{a,b}.log", "deliveryStream": "s"},
                {"filePattern": "/var/log/*/app.log", "deliveryStream": "t"}]}"#,
        );
        assert_eq!(import.flows[0].id, "fh:s:/var/log/{a,b}.log");
        assert_eq!(import.translation.sources[0].paths, vec!["/var/log/a.log".to_owned(), "/var/log/b.log".to_owned()]);
        assert_eq!(import.translation.outputs[0].region.as_deref(), Some("us-east-1"), "the agent's SDK default, for an empty endpoint");
        assert_eq!(import.translation.outputs[0].endpoint, None);
        let folder_glob = import.translation.notes.iter().find(|note| note.key == "filePattern").expect("a note on the folder's glob");
        assert_eq!(folder_glob.severity, Severity::ChangesDelivery);
    }

    #[test]
    fn an_endpoint_that_is_not_aws_is_kept_as_the_endpoint_url() {
        assert_eq!(endpoint_of(Some("https://firehose.us-east-1.amazonaws.com"), "firehose"), (Some("us-east-1".into()), None));
        assert_eq!(endpoint_of(Some("kinesis.ap-northeast-2.amazonaws.com"), "kinesis"), (Some("ap-northeast-2".into()), None));
        assert_eq!(endpoint_of(Some("http://127.0.0.1:4566"), "firehose"), (None, Some("http://127.0.0.1:4566".into())));
        assert_eq!(
            endpoint_of(Some("vpce-1.firehose.us-east-1.vpce.amazonaws.com"), "firehose"),
            (None, Some("https://vpce-1.firehose.us-east-1.vpce.amazonaws.com".into()))
        );
    }

    #[test]
    fn a_config_that_is_not_the_agents_json_is_refused_with_its_path() {
        let error = translate_text("{ flows: [] }", Path::new("/etc/aws-kinesis/agent.json")).expect_err("not JSON");
        assert!(error.to_string().starts_with("/etc/aws-kinesis/agent.json: not JSON"), "{error}");
        let error = translate_text(r#"{"flows": {}}"#, Path::new("agent.json")).expect_err("flows not a list");
        assert_eq!(error.to_string(), "agent.json: `flows` is not a list");
    }
}
