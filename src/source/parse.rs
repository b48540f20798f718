//! Parsed text: a record of a text log (an nginx access line, a syslog message, a CSV row, a
//! logfmt line, or whatever a regular expression with named captures describes) becomes one
//! JSON object, the record that is queued and sent.
//!
//! Invariants:
//! - Parsing is a pure function of the record's bytes: a replay sends the queued object, and a
//!   recovery from the source file parses the same bytes to the same object. Positions,
//!   recovery and dead letters still speak of the record's bytes in its file.
//! - A record that does not parse is never dropped and never sent half-parsed: it is a dead
//!   letter (`parse_failed`, with its file, offset and why), counted like every other.
//! - Fields keep the order the grammar gives them (capture order, column order), values are
//!   strings unless `types` (or the preset) converts them; a capture that did not take part in
//!   the match is left out, as Fluentd leaves it out.
//!
//! The presets' field names and patterns are Fluentd's (`nginx`, `apache2`, `syslog`), so that a
//! pipeline moved from Fluentd keeps the fields its dashboards and indexes expect (see
//! docs/records.md for each preset's fields).

use std::borrow::Cow;
use std::collections::HashMap;

use regex::Regex;
use serde::Serialize;

use super::multiline::{CriLine, DockerLine, PartialLines};

/// The presets and grammars a `[sources.NAME.parse]` table may name as its `type`.
pub const TYPES: &[&str] = &[
    "regex",
    "nginx",
    "apache2",
    "syslog",
    "syslog_rfc3164",
    "syslog_rfc5424",
    "csv",
    "tsv",
    "ltsv",
    "logfmt",
    "none",
    "split",
    "cri",
    "docker",
];

/// The field a `none` record's text goes in unless `message_key` says otherwise (Fluentd's).
pub const DEFAULT_MESSAGE_KEY: &str = "message";

/// Fluentd's `nginx` parser (`parser_nginx.rb`): every field a string.
const NGINX: &str = r#"^(?<remote>[^ ]*) (?<host>[^ ]*) (?<user>[^ ]*) \[(?<time>[^\]]*)\] "(?<method>\S+)(?: +(?<path>[^"]*?)(?: +\S*)?)?" (?<code>[^ ]*) (?<size>[^ ]*)(?: "(?<referer>[^"]*)" "(?<agent>[^"]*)"(?:\s+(?<http_x_forwarded_for>[^ ]+))?)?$"#;
/// Fluentd's `apache2` parser (`parser_apache2.rb`): `code` and `size` integers, `-` is null.
const APACHE2: &str = r#"^(?<host>[^ ]*) [^ ]* (?<user>[^ ]*) \[(?<time>[^\]]*)\] "(?<method>\S+)(?: +(?<path>(?:[^"]|\\.)*?)(?: +\S*)?)?" (?<code>[^ ]*) (?<size>[^ ]*)(?: "(?<referer>(?:[^"]|\\.)*)" "(?<agent>(?:[^"]|\\.)*)")?$"#;
/// Fluentd's `syslog` parser, RFC 3164, its priority optional (`with_priority`).
const SYSLOG_RFC3164: &str = r"^(?:<(?<pri>[0-9]{1,3})>)?(?<time>[^ ]* {1,2}[^ ]* [^ ]*) (?<host>[^ ]*) (?<ident>[^ :\[]*)(?:\[(?<pid>[0-9]+)\])?(?:[^:]*:)? *(?<message>.*)$";
/// Fluentd's `syslog` parser, RFC 5424 (its structured data without the look-behind Fluentd's
/// Ruby pattern uses: a `]` escaped by a backslash does not end an element).
const SYSLOG_RFC5424: &str = r"(?s)^<(?<pri>[0-9]{1,3})>[1-9][0-9]{0,2} (?<time>[^ ]+) (?<host>[!-~]{1,255}) (?<ident>[!-~]{1,48}) (?<pid>[!-~]{1,128}) (?<msgid>[!-~]{1,32}) (?<extradata>-|(?:\[(?:[^\]\\]|\\.)*\])+)(?: (?<message>.+))?$";

/// How one record's text becomes a JSON object.
#[derive(Debug, Clone)]
pub struct Parser {
    grammar: Grammar,
    /// Fields converted from their text, by name.
    types: HashMap<String, FieldType>,
    /// Fields whose value `-` means "none" (null): Apache's convention for an absent value.
    dash_is_null: &'static [&'static str],
    /// Values that mean "none" (null) in every field: Fluentd's `null_value_pattern`.
    null_value: Option<Regex>,
}

#[derive(Debug, Clone)]
enum Grammar {
    /// Named captures are the fields.
    Pattern(Regex),
    /// RFC 5424 when the record looks like it (`<PRI>VERSION `), RFC 3164 otherwise.
    Syslog { rfc5424: Regex, rfc3164: Regex },
    /// One row of delimited values, named by `columns`; `quoted`: CSV's double quotes.
    Delimited { columns: Vec<String>, delimiter: u8, quoted: bool },
    /// `label:value` pairs separated by tabs.
    Ltsv,
    /// Values split at every match of `delimiter`, named by `columns` (the Kinesis Agent's
    /// CSVTOJSON, Java's `String.split`): quotes are text, empty values at the end are dropped,
    /// a missing column is null, extra values are dropped.
    Split { columns: Vec<String>, delimiter: Regex },
    /// The whole record's text as one field (Fluentd's `none`: `{"message": line}`).
    Whole { key: String },
    /// `key=value` pairs separated by spaces, values bare or in double quotes.
    Logfmt,
    /// A container runtime's lines (a record is an application's line, its parts joined),
    /// with the pod, namespace and container a Kubernetes log file's name gives.
    Container(PartialLines),
}

/// What a field's text is converted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    String,
    Integer,
    Float,
    Bool,
}

impl FieldType {
    pub fn named(name: &str) -> Option<FieldType> {
        match name {
            "string" => Some(FieldType::String),
            "integer" | "int" => Some(FieldType::Integer),
            "float" => Some(FieldType::Float),
            "bool" | "boolean" => Some(FieldType::Bool),
            _ => None,
        }
    }
}

/// Why a record is not parsed: the detail of its `parse_failed` dead letter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseFailure {
    #[error("invalid UTF-8 after byte {valid_up_to}")]
    NotUtf8 { valid_up_to: usize },
    #[error("the record does not match the {grammar} pattern")]
    NoMatch { grammar: &'static str },
    #[error("{found} columns where {expected} are named")]
    Columns { expected: usize, found: usize },
    #[error("field `{field}`: `{value}` is not {wanted}")]
    Conversion { field: String, value: String, wanted: &'static str },
    #[error("{0}")]
    Syntax(String),
}

/// What is wrong with a `[sources.NAME.parse]` table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParserError {
    #[error("no parser type is named `{0}` (types: {types})", types = TYPES.join(", "))]
    UnknownType(String),
    #[error("type = \"regex\" needs a `pattern` with named captures, such as (?<status>\\d+)")]
    NoPattern,
    #[error("`{pattern}` is not a valid regular expression: {error}")]
    BadPattern { pattern: String, error: String },
    #[error("the pattern has no named capture: a record would be an empty object")]
    NoNamedCapture,
    #[error("type = \"{0}\" needs `columns`, the name of each value in order")]
    NoColumns(String),
    #[error("`{0}` applies only to type = \"{1}\"")]
    NotForType(&'static str, String),
    #[error("types.{field}: `{name}` is not a type (string, integer, float, bool)")]
    UnknownFieldType { field: String, name: String },
    #[error("`types` does not apply to type = \"{0}\": its fields are time, stream and log")]
    TypesNotFor(String),
    #[error("`{0}` does not apply to a container runtime's lines (type = \"cri\" or \"docker\")")]
    NotForContainer(&'static str),
}

impl Parser {
    /// The parser of `kind` (see [`TYPES`]), with the pattern a `regex` needs, the columns a
    /// `csv` or `tsv` needs, and `types` for fields converted from their text.
    pub fn new(kind: &str, pattern: Option<&str>, columns: Option<&[String]>, types: &[(String, String)]) -> Result<Parser, ParserError> {
        if pattern.is_some() && kind != "regex" {
            return Err(ParserError::NotForType("pattern", "regex".into()));
        }
        if columns.is_some() && !matches!(kind, "csv" | "tsv" | "split") {
            return Err(ParserError::NotForType("columns", "csv\", \"tsv\" or \"split".into()));
        }
        let delimited = |delimiter: u8, quoted: bool| match columns {
            Some(columns) if !columns.is_empty() => Ok(Grammar::Delimited { columns: columns.to_vec(), delimiter, quoted }),
            _ => Err(ParserError::NoColumns(kind.into())),
        };
        let mut preset_types: &[(&str, FieldType)] = &[];
        let mut dash_is_null: &'static [&'static str] = &[];
        let grammar = match kind {
            "regex" => {
                let regex = compiled(pattern.ok_or(ParserError::NoPattern)?)?;
                if regex.capture_names().flatten().next().is_none() {
                    return Err(ParserError::NoNamedCapture);
                }
                Grammar::Pattern(regex)
            }
            "nginx" => Grammar::Pattern(compiled(NGINX)?),
            "apache2" => {
                preset_types = &[("code", FieldType::Integer), ("size", FieldType::Integer)];
                dash_is_null = &["host", "user", "size", "referer", "agent"];
                Grammar::Pattern(compiled(APACHE2)?)
            }
            "syslog" => Grammar::Syslog { rfc5424: compiled(SYSLOG_RFC5424)?, rfc3164: compiled(SYSLOG_RFC3164)? },
            "syslog_rfc3164" => Grammar::Pattern(compiled(SYSLOG_RFC3164)?),
            "syslog_rfc5424" => Grammar::Pattern(compiled(SYSLOG_RFC5424)?),
            "csv" => delimited(b',', true)?,
            "tsv" => delimited(b'\t', false)?,
            "ltsv" => Grammar::Ltsv,
            "none" => Grammar::Whole { key: DEFAULT_MESSAGE_KEY.into() },
            "split" => match columns {
                Some(columns) if !columns.is_empty() => Grammar::Split { columns: columns.to_vec(), delimiter: compiled(",")? },
                _ => return Err(ParserError::NoColumns(kind.into())),
            },
            "logfmt" => Grammar::Logfmt,
            "cri" | "docker" if !types.is_empty() => return Err(ParserError::TypesNotFor(kind.into())),
            "cri" => Grammar::Container(PartialLines::Cri),
            "docker" => Grammar::Container(PartialLines::Docker),
            other => return Err(ParserError::UnknownType(other.into())),
        };
        if kind.starts_with("syslog") {
            // Fluentd turns the priority into a number.
            preset_types = &[("pri", FieldType::Integer)];
        }
        let mut field_types: HashMap<String, FieldType> = preset_types.iter().map(|&(field, kind)| (field.to_owned(), kind)).collect();
        for (field, name) in types {
            let kind = FieldType::named(name).ok_or_else(|| ParserError::UnknownFieldType { field: field.clone(), name: name.clone() })?;
            field_types.insert(field.clone(), kind);
        }
        Ok(Parser { grammar, types: field_types, dash_is_null, null_value: None })
    }

    /// The same parser, with every value that `pattern` matches (Fluentd's `null_value_pattern`:
    /// a search, not a whole match) made null.
    pub fn with_null_value_pattern(mut self, pattern: &str) -> Result<Parser, ParserError> {
        if matches!(self.grammar, Grammar::Container(_)) {
            return Err(ParserError::NotForContainer("null_value_pattern"));
        }
        let regex = compiled(pattern)?;
        self.null_value = Some(regex);
        Ok(self)
    }

    /// The same parser with a table's optional settings applied: `null_value_pattern`, and
    /// `message_key` (for `none`).
    pub fn with_options(
        self,
        null_value_pattern: Option<&str>,
        message_key: Option<&str>,
        delimiter: Option<&str>,
    ) -> Result<Parser, ParserError> {
        let parser = match null_value_pattern {
            Some(pattern) => self.with_null_value_pattern(pattern)?,
            None => self,
        };
        let parser = match message_key {
            Some(key) => parser.with_message_key(key)?,
            None => parser,
        };
        match delimiter {
            Some(delimiter) => parser.with_delimiter(delimiter),
            None => Ok(parser),
        }
    }

    /// The same `split` parser, splitting at every match of the regular expression `delimiter`.
    pub fn with_delimiter(mut self, delimiter: &str) -> Result<Parser, ParserError> {
        let Grammar::Split { delimiter: splits_at, .. } = &mut self.grammar else {
            return Err(ParserError::NotForType("delimiter", "split".into()));
        };
        let regex = compiled(delimiter)?;
        if regex.is_match("") {
            return Err(ParserError::BadPattern {
                pattern: delimiter.into(),
                error: "it matches an empty text, so it would split between every character".into(),
            });
        }
        *splits_at = regex;
        Ok(self)
    }

    /// The same `none` parser, its record's text in field `key` (Fluentd's `message_key`).
    pub fn with_message_key(mut self, key: &str) -> Result<Parser, ParserError> {
        match &mut self.grammar {
            Grammar::Whole { key: field } => *field = key.to_owned(),
            _ => return Err(ParserError::NotForType("message_key", "none".into())),
        }
        Ok(self)
    }

    /// The runtime whose split lines a record joins, for a container log's parser: the source's
    /// records are then put together by [`super::multiline::MultilineRule::Partial`].
    pub fn partial_lines(&self) -> Option<PartialLines> {
        match self.grammar {
            Grammar::Container(kind) => Some(kind),
            _ => None,
        }
    }

    /// The JSON object `record` parses to, or why it does not.
    pub fn parse(&self, record: &[u8]) -> Result<Vec<u8>, ParseFailure> {
        self.parse_at(record, b"")
    }

    /// The JSON object `record`, read from the file at `path`, parses to (a container log's
    /// file name names its pod), or why it does not.
    pub fn parse_at(&self, record: &[u8], path: &[u8]) -> Result<Vec<u8>, ParseFailure> {
        // A line of a file written with CRLF ends in `\r`: not part of its last field (Fluentd's
        // in_tail strips it too).
        let record = record.strip_suffix(b"\r").unwrap_or(record);
        let text = std::str::from_utf8(record).map_err(|error| ParseFailure::NotUtf8 { valid_up_to: error.valid_up_to() })?;
        let mut fields = Fields::with_capacity(16);
        match &self.grammar {
            Grammar::Pattern(regex) => captures(regex, text, "regex", &mut fields)?,
            Grammar::Syslog { rfc5424, rfc3164 } => {
                if looks_like_rfc5424(text) {
                    captures(rfc5424, text, "syslog (RFC 5424)", &mut fields)?;
                } else {
                    captures(rfc3164, text, "syslog (RFC 3164)", &mut fields)?;
                }
            }
            Grammar::Delimited { columns, delimiter, quoted } => delimited(text, columns, *delimiter, *quoted, &mut fields)?,
            Grammar::Ltsv => ltsv(text, &mut fields)?,
            Grammar::Whole { key } => fields.0.push((key.as_str(), FieldText::Text(Cow::Borrowed(text)))),
            Grammar::Split { columns, delimiter } => split(text, columns, delimiter, &mut fields),
            Grammar::Logfmt => logfmt(text, &mut fields)?,
            // An object of its own shape, from the record's parts.
            Grammar::Container(kind) => return container_record(*kind, text, path),
        }
        let mut object = Vec::with_capacity(record.len() + 16 * fields.0.len());
        object.push(b'{');
        for (index, (name, text)) in fields.0.iter().enumerate() {
            if index > 0 {
                object.push(b',');
            }
            let value = self.value(name, text)?;
            // Writing strings and numbers into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut object, name);
            object.push(b':');
            let _ = match value {
                Converted::Text(text) => serde_json::to_writer(&mut object, text),
                Converted::Integer(number) => serde_json::to_writer(&mut object, &number),
                Converted::Float(number) => serde_json::to_writer(&mut object, &number),
                Converted::Bool(flag) => serde_json::to_writer(&mut object, &flag),
                Converted::Null => serde_json::to_writer(&mut object, &()),
            };
        }
        object.push(b'}');
        Ok(object)
    }

    fn value<'t>(&self, field: &str, text: &'t FieldText<'_>) -> Result<Converted<'t>, ParseFailure> {
        let text = match text {
            FieldText::Flag => return Ok(Converted::Bool(true)),
            FieldText::Absent => return Ok(Converted::Null),
            FieldText::Text(text) => text.as_ref(),
        };
        if text == "-" && self.dash_is_null.contains(&field) || self.null_value.as_ref().is_some_and(|null| null.is_match(text)) {
            return Ok(Converted::Null);
        }
        let failed = |wanted| ParseFailure::Conversion { field: field.into(), value: preview(text).into(), wanted };
        match self.types.get(field).copied().unwrap_or(FieldType::String) {
            FieldType::String => Ok(Converted::Text(text)),
            // An empty value or `-` is "none" in every log that writes it for a number.
            FieldType::Integer | FieldType::Float | FieldType::Bool if text.is_empty() || text == "-" => Ok(Converted::Null),
            FieldType::Integer => text.parse::<i64>().map(Converted::Integer).map_err(|_| failed("an integer")),
            FieldType::Float => match text.parse::<f64>() {
                Ok(number) if number.is_finite() => Ok(Converted::Float(number)),
                _ => Err(failed("a finite number")),
            },
            FieldType::Bool => match text.to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => Ok(Converted::Bool(true)),
                "false" | "no" | "0" => Ok(Converted::Bool(false)),
                _ => Err(failed("true or false")),
            },
        }
    }
}

/// A field's value as it is written into the object.
enum Converted<'t> {
    Text(&'t str),
    Integer(i64),
    Float(f64),
    Bool(bool),
    Null,
}

/// One application line from a container runtime's parts, as Fluent Bit's `cri` and `docker`
/// parsers name its fields, and the Kubernetes names its file gives.
#[derive(Serialize)]
struct ContainerRecord<'a> {
    /// The first part's time, as the runtime wrote it.
    time: &'a str,
    stream: &'a str,
    /// The parts joined, without the line's newline.
    log: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    kubernetes: Option<PodFile<'a>>,
}

/// What a kubelet's `/var/log/containers/POD_NAMESPACE_CONTAINER-ID.log` name says (the names of
/// Fluent Bit's kubernetes filter; no API server is asked).
#[derive(Serialize, Debug, PartialEq, Eq)]
struct PodFile<'a> {
    pod_name: &'a str,
    namespace_name: &'a str,
    container_name: &'a str,
    container_id: &'a str,
}

/// Joins the parts of one application line (the record's lines, `\n` between them).
fn container_record(kind: PartialLines, text: &str, path: &[u8]) -> Result<Vec<u8>, ParseFailure> {
    let file_name = path.rsplit(|&byte| byte == b'/').next().and_then(|name| std::str::from_utf8(name).ok()).unwrap_or_default();
    let kubernetes = pod_file(file_name);
    let mut log = String::with_capacity(text.len());
    let object = match kind {
        PartialLines::Cri => {
            let mut first: Option<(&str, &str)> = None;
            for line in text.split('\n') {
                let cri = CriLine::parse(line).ok_or(ParseFailure::NoMatch { grammar: "cri" })?;
                first.get_or_insert((cri.time, cri.stream));
                log.push_str(cri.message);
            }
            let (time, stream) = first.ok_or(ParseFailure::NoMatch { grammar: "cri" })?;
            serde_json::to_vec(&ContainerRecord { time, stream, log, kubernetes })
        }
        PartialLines::Docker => {
            let mut parts = Vec::new();
            for line in text.split('\n') {
                parts.push(DockerLine::parse(line).ok_or_else(|| ParseFailure::Syntax("not a json-file line (log, stream, time)".into()))?);
            }
            for part in &parts {
                log.push_str(&part.log);
            }
            if log.ends_with('\n') {
                log.pop();
            }
            let first = parts.first().ok_or(ParseFailure::NoMatch { grammar: "docker" })?;
            serde_json::to_vec(&ContainerRecord { time: &first.time, stream: &first.stream, log, kubernetes })
        }
    };
    object.map_err(|error| ParseFailure::Syntax(error.to_string()))
}

/// `POD_NAMESPACE_CONTAINER-ID.log`, the name the kubelet links each container's log under.
fn pod_file(name: &str) -> Option<PodFile<'_>> {
    let stem = name.strip_suffix(".log")?;
    let (pod_name, rest) = stem.split_once('_')?;
    let (namespace_name, rest) = rest.split_once('_')?;
    let (container_name, container_id) = rest.rsplit_once('-')?;
    let is_id = container_id.len() == 64 && container_id.bytes().all(|byte| byte.is_ascii_hexdigit());
    (is_id && !pod_name.is_empty() && !namespace_name.is_empty() && !container_name.is_empty()).then_some(PodFile {
        pod_name,
        namespace_name,
        container_name,
        container_id,
    })
}

/// A field's text as the grammar found it, borrowed from the record where it can be;
/// `Flag`: a logfmt key with no `=` (true).
#[derive(Debug)]
enum FieldText<'a> {
    Text(Cow<'a, str>),
    Flag,
    /// A column the record has no value for: null.
    Absent,
}

/// The fields of one record in order; a name given twice keeps its last value, in its first
/// place (a JSON object's names are unique).
#[derive(Debug)]
struct Fields<'a>(Vec<(&'a str, FieldText<'a>)>, Option<HashMap<&'a str, usize>>);

/// Past this many fields, names are looked up in an index: a line of a megabyte of bare words
/// is 150,000 logfmt keys, and a scan of those before it for each would take minutes.
const SCANNED_FIELDS_AT_MOST: usize = 16;

impl<'a> Fields<'a> {
    fn with_capacity(capacity: usize) -> Fields<'a> {
        Fields(Vec::with_capacity(capacity), None)
    }

    fn push(&mut self, name: &'a str, value: FieldText<'a>) {
        let known = match &mut self.1 {
            Some(index) => index.get(name).copied(),
            None => self.0.iter().position(|(known, _)| *known == name),
        };
        match known {
            Some(place) => self.0[place].1 = value,
            None => {
                if let Some(index) = &mut self.1 {
                    index.insert(name, self.0.len());
                }
                self.0.push((name, value));
                if self.1.is_none() && self.0.len() > SCANNED_FIELDS_AT_MOST {
                    self.1 = Some(self.0.iter().enumerate().map(|(place, (name, _))| (*name, place)).collect());
                }
            }
        }
    }
}

fn captures<'a>(regex: &'a Regex, text: &'a str, grammar: &'static str, fields: &mut Fields<'a>) -> Result<(), ParseFailure> {
    let found = regex.captures(text).ok_or(ParseFailure::NoMatch { grammar })?;
    // Capture names are unique in a pattern: no name needs looking up among those before.
    for (group, name) in regex.capture_names().enumerate() {
        if let (Some(name), Some(value)) = (name, found.get(group)) {
            fields.0.push((name, FieldText::Text(Cow::Borrowed(value.as_str()))));
        }
    }
    Ok(())
}

/// `<PRI>VERSION ` (a digit after the priority): RFC 5424's header; RFC 3164 has a time there.
fn looks_like_rfc5424(text: &str) -> bool {
    let Some(rest) = text.strip_prefix('<') else { return false };
    let Some(end) = rest.find('>') else { return false };
    rest[end + 1..].bytes().next().is_some_and(|byte| byte.is_ascii_digit())
}

fn delimited<'a>(text: &str, columns: &'a [String], delimiter: u8, quoted: bool, fields: &mut Fields<'a>) -> Result<(), ParseFailure> {
    let mut reader =
        csv::ReaderBuilder::new().has_headers(false).delimiter(delimiter).quoting(quoted).flexible(true).from_reader(text.as_bytes());
    let mut row = csv::StringRecord::new();
    match reader.read_record(&mut row) {
        Ok(true) => {}
        Ok(false) => return Err(ParseFailure::Columns { expected: columns.len(), found: 0 }),
        Err(error) => return Err(ParseFailure::Syntax(error.to_string())),
    }
    // A record of several lines is one row: a quoted value may hold newlines, nothing more may follow.
    if !matches!(reader.read_record(&mut csv::StringRecord::new()), Ok(false)) {
        return Err(ParseFailure::Syntax("more than one row".into()));
    }
    if row.len() != columns.len() {
        return Err(ParseFailure::Columns { expected: columns.len(), found: row.len() });
    }
    for (name, value) in columns.iter().zip(row.iter()) {
        fields.push(name, FieldText::Text(Cow::Owned(value.to_owned())));
    }
    Ok(())
}

/// `text` as a regular expression, or what is wrong with it.
fn compiled(text: &str) -> Result<Regex, ParserError> {
    Regex::new(text).map_err(|error| ParserError::BadPattern { pattern: text.into(), error: error.to_string() })
}

fn split<'a>(text: &'a str, columns: &'a [String], delimiter: &Regex, fields: &mut Fields<'a>) {
    let mut values: Vec<&str> = delimiter.split(text).collect();
    // Java's `split` drops the empty values at the end.
    while values.last().is_some_and(|value| value.is_empty()) {
        values.pop();
    }
    for (index, name) in columns.iter().enumerate() {
        let value = values.get(index).map_or(FieldText::Absent, |value| FieldText::Text(Cow::Borrowed(*value)));
        fields.push(name, value);
    }
}

fn ltsv<'a>(text: &'a str, fields: &mut Fields<'a>) -> Result<(), ParseFailure> {
    for pair in text.split('\t') {
        let (label, value) = pair.split_once(':').ok_or_else(|| ParseFailure::Syntax(format!("`{}` is not label:value", preview(pair))))?;
        fields.push(label, FieldText::Text(Cow::Borrowed(value)));
    }
    Ok(())
}

/// logfmt as Go's `kr/logfmt` and Heroku write it: `key=value` pairs separated by spaces, a value
/// in double quotes when it has spaces (with `\"` and `\\` inside), a key alone meaning true.
fn logfmt<'a>(text: &'a str, fields: &mut Fields<'a>) -> Result<(), ParseFailure> {
    let mut rest = text.trim_start();
    if rest.is_empty() {
        return Err(ParseFailure::Syntax("no key=value pair".into()));
    }
    while !rest.is_empty() {
        let key_end = rest.find(|c: char| c == '=' || c.is_ascii_whitespace()).unwrap_or(rest.len());
        let key = &rest[..key_end];
        if key.is_empty() || key.contains('"') {
            return Err(ParseFailure::Syntax(format!("a key is expected at `{}`", preview(rest))));
        }
        rest = &rest[key_end..];
        let Some(after_equals) = rest.strip_prefix('=') else {
            fields.push(key, FieldText::Flag);
            rest = rest.trim_start();
            continue;
        };
        let (value, after) = match after_equals.strip_prefix('"') {
            Some(quoted) => {
                quoted_value(quoted).ok_or_else(|| ParseFailure::Syntax(format!("the value of `{key}` has no closing quote")))?
            }
            None => {
                let end = after_equals.find(|c: char| c.is_ascii_whitespace()).unwrap_or(after_equals.len());
                let value = &after_equals[..end];
                if value.contains('"') {
                    return Err(ParseFailure::Syntax(format!("the value of `{key}` has a stray quote")));
                }
                (Cow::Borrowed(value), &after_equals[end..])
            }
        };
        if !after.is_empty() && !after.starts_with(|c: char| c.is_ascii_whitespace()) {
            return Err(ParseFailure::Syntax(format!("a space is expected after the value of `{key}`")));
        }
        fields.push(key, FieldText::Text(value));
        rest = after.trim_start();
    }
    Ok(())
}

/// A double-quoted value's text (after its opening quote) and what follows its closing quote.
fn quoted_value(text: &str) -> Option<(Cow<'_, str>, &str)> {
    // Most quoted values hold no escape: borrowed as they are.
    let plain_end = text.find(['"', '\\'])?;
    if text.as_bytes()[plain_end] == b'"' {
        return Some((Cow::Borrowed(&text[..plain_end]), &text[plain_end + 1..]));
    }
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => return Some((Cow::Owned(value), &text[index + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                other => value.push(other),
            },
            other => value.push(other),
        }
    }
    None
}

fn preview(text: &str) -> &str {
    let end = text.char_indices().nth(24).map_or(text.len(), |(index, _)| index);
    &text[..end]
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn parser(kind: &str) -> Parser {
        Parser::new(kind, None, None, &[]).expect("a preset")
    }

    fn parsed(parser: &Parser, record: &str) -> String {
        String::from_utf8(parser.parse(record.as_bytes()).expect("parses")).expect("JSON is UTF-8")
    }

    #[test]
    fn nginx_combined_lines_give_fluentds_fields_as_strings() {
        let line = r#"203.0.113.9 - alice [01/Dec/2026:12:00:00 +0000] "GET /videos/17?t=3 HTTP/1.1" 200 5120 "https://example.com/" "Mozilla/5.0 (X11)""#;
        assert_eq!(
            parsed(&parser("nginx"), line),
            r#"{"remote":"203.0.113.9","host":"-","user":"alice","time":"01/Dec/2026:12:00:00 +0000","method":"GET","path":"/videos/17?t=3","code":"200","size":"5120","referer":"https://example.com/","agent":"Mozilla/5.0 (X11)"}"#
        );
        // The common format (no referer and agent): the optional captures are left out.
        let common = r#"::1 - - [01/Dec/2026:12:00:00 +0000] "HEAD / HTTP/1.0" 304 0"#;
        assert_eq!(
            parsed(&parser("nginx"), common),
            r#"{"remote":"::1","host":"-","user":"-","time":"01/Dec/2026:12:00:00 +0000","method":"HEAD","path":"/","code":"304","size":"0"}"#
        );
    }

    #[test]
    fn apache2_converts_code_and_size_and_takes_a_dash_for_none() {
        let line = r#"192.0.2.1 - - [01/Dec/2026:12:00:00 +0900] "GET /a\"b HTTP/1.1" 304 - "-" "curl/8.5""#;
        assert_eq!(
            parsed(&parser("apache2"), line),
            r#"{"host":"192.0.2.1","user":null,"time":"01/Dec/2026:12:00:00 +0900","method":"GET","path":"/a\\\"b","code":304,"size":null,"referer":null,"agent":"curl/8.5"}"#
        );
    }

    #[test]
    fn syslog_reads_both_rfcs_and_the_priority_is_a_number() {
        let syslog = parser("syslog");
        assert_eq!(
            parsed(&syslog, "<34>Dec  1 12:00:00 web-1 sshd[4242]: Accepted publickey for ops"),
            r#"{"pri":34,"time":"Dec  1 12:00:00","host":"web-1","ident":"sshd","pid":"4242","message":"Accepted publickey for ops"}"#
        );
        assert_eq!(
            parsed(&syslog, "Dec 11 02:03:04 web-1 kernel: eth0 up"),
            r#"{"time":"Dec 11 02:03:04","host":"web-1","ident":"kernel","message":"eth0 up"}"#
        );
        assert_eq!(
            parsed(&syslog, r#"<165>1 2026-12-01T12:00:00.003Z web-1 app 77 ID47 [exampleSDID@32473 iut="3" note="a \] b"] order placed"#),
            r#"{"pri":165,"time":"2026-12-01T12:00:00.003Z","host":"web-1","ident":"app","pid":"77","msgid":"ID47","extradata":"[exampleSDID@32473 iut=\"3\" note=\"a \\] b\"]","message":"order placed"}"#
        );
        assert_eq!(
            parsed(&syslog, "<14>1 2026-12-01T12:00:00Z web-1 app - - -"),
            r#"{"pri":14,"time":"2026-12-01T12:00:00Z","host":"web-1","ident":"app","pid":"-","msgid":"-","extradata":"-"}"#
        );
        assert_eq!(syslog.parse(b"<14>1 2026"), Err(ParseFailure::NoMatch { grammar: "syslog (RFC 5424)" }));
    }

    #[test]
    fn none_puts_the_whole_record_in_one_field_as_fluentd_does() {
        let parser = parser("none");
        assert_eq!(parsed(&parser, "any text, \"quoted\" \\ and\ttabs"), r#"{"message":"any text, \"quoted\" \\ and\ttabs"}"#);
        let data = Parser::new("none", None, None, &[]).and_then(|parser| parser.with_message_key("data")).expect("none");
        assert_eq!(parsed(&data, "line one\nline two"), r#"{"data":"line one\nline two"}"#);
        assert!(matches!(self::parser("logfmt").with_message_key("x"), Err(ParserError::NotForType("message_key", _))));
    }

    #[test]
    fn split_is_javas_string_split_and_a_delimiter_that_matches_nothing_is_refused() {
        let columns = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let split = Parser::new("split", None, Some(&columns), &[]).expect("split");
        assert_eq!(parsed(&split, r#"1,"2,3""#), r#"{"a":"1","b":"\"2","c":"3\""}"#);
        assert_eq!(parsed(&split, "1,,"), r#"{"a":"1","b":null,"c":null}"#);
        let spaced = split.clone().with_delimiter(r"\s*;\s*").expect("delimiter");
        assert_eq!(parsed(&spaced, "x ; y;z;extra"), r#"{"a":"x","b":"y","c":"z"}"#);
        assert!(matches!(split.with_delimiter("x*"), Err(ParserError::BadPattern { .. })), "it would split everywhere");
        assert!(matches!(parser("logfmt").with_delimiter(","), Err(ParserError::NotForType("delimiter", _))));
    }

    #[test]
    fn a_null_value_pattern_makes_matching_values_null_in_every_field() {
        let types = [("size".to_owned(), "integer".to_owned())];
        let parser = Parser::new("regex", Some(r"^(?<user>\S+) (?<size>\S+) (?<note>.*)$"), None, &types)
            .and_then(|parser| parser.with_null_value_pattern("^(-|none)$"))
            .expect("parser");
        assert_eq!(parsed(&parser, "- none a-b"), r#"{"user":null,"size":null,"note":"a-b"}"#);
        assert_eq!(parsed(&parser, "alice 12 -"), r#"{"user":"alice","size":12,"note":null}"#);
        assert!(matches!(
            Parser::new("cri", None, None, &[]).and_then(|parser| parser.with_null_value_pattern("-")),
            Err(ParserError::NotForContainer(_))
        ));
        assert!(matches!(parser.with_null_value_pattern("("), Err(ParserError::BadPattern { .. })));
    }

    #[test]
    fn csv_and_tsv_name_their_columns_and_a_row_of_another_width_is_refused() {
        let columns = ["user".to_owned(), "video".to_owned(), "seconds".to_owned()];
        let types = [("seconds".to_owned(), "float".to_owned())];
        let csv = Parser::new("csv", None, Some(&columns), &types).expect("csv");
        assert_eq!(parsed(&csv, r#"u1,"Cats, part 2",12.5"#), r#"{"user":"u1","video":"Cats, part 2","seconds":12.5}"#);
        assert_eq!(parsed(&csv, "u1,\"two\nlines\","), r#"{"user":"u1","video":"two\nlines","seconds":null}"#);
        assert_eq!(csv.parse(b"u1,v"), Err(ParseFailure::Columns { expected: 3, found: 2 }));
        let tsv = Parser::new("tsv", None, Some(&columns), &[]).expect("tsv");
        assert_eq!(parsed(&tsv, "u1\t\"quoted\"\t3"), r#"{"user":"u1","video":"\"quoted\"","seconds":"3"}"#);
    }

    #[test]
    fn logfmt_reads_bare_and_quoted_values_and_keys_alone() {
        let logfmt = parser("logfmt");
        assert_eq!(
            parsed(&logfmt, r#"level=info msg="video \"17\" watched" seconds=15 cached user="""#),
            r#"{"level":"info","msg":"video \"17\" watched","seconds":"15","cached":true,"user":""}"#
        );
        assert_eq!(parsed(&logfmt, "a=1 a=2 b="), r#"{"a":"2","b":""}"#);
        for bad in ["", "msg=\"unterminated", "=value", "a=\"x\"b", "a=x\"y"] {
            assert!(matches!(logfmt.parse(bad.as_bytes()), Err(ParseFailure::Syntax(_))), "{bad:?} parsed");
        }
    }

    #[test]
    fn past_sixteen_fields_a_name_given_again_still_keeps_its_first_place_and_last_value() {
        let mut line: Vec<String> = (0..40).map(|key| format!("k{key}={key}")).collect();
        line.push("k3=again k39=last flag".into());
        let object: serde_json::Map<String, Value> =
            serde_json::from_slice(&parser("logfmt").parse(line.join(" ").as_bytes()).expect("parses")).expect("JSON");
        let names: Vec<&str> = object.keys().map(String::as_str).collect();
        assert_eq!(names.len(), 41);
        assert_eq!((object["k3"].as_str(), object["k39"].as_str(), object["flag"].as_bool()), (Some("again"), Some("last"), Some(true)));
        // A megabyte of bare words: each a key, looked up in an index, not a scan.
        let words: String = (0..150_000).map(|word| format!("w{word} ")).collect();
        assert!(parser("logfmt").parse(words.as_bytes()).is_ok());
    }

    #[test]
    fn a_line_written_with_crlf_parses_without_its_carriage_return() {
        let line = "::1 - - [01/Dec/2026:12:00:00 +0000] \"GET / HTTP/1.1\" 200 5 \"-\" \"curl\"\r";
        assert!(parsed(&parser("nginx"), line).ends_with(r#""agent":"curl"}"#));
        assert_eq!(parsed(&parser("logfmt"), "a=1\r"), r#"{"a":"1"}"#);
    }

    const POD_LOG: &[u8] = b"/var/log/containers/web-7d9f_shop_nginx-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.log";

    #[test]
    fn a_cri_records_parts_are_one_log_with_the_pod_its_file_names() {
        let cri = parser("cri");
        let record = "2026-12-01T12:00:00.1Z stdout P a line the runtime \n2026-12-01T12:00:00.2Z stdout F split in two";
        let object: Value = serde_json::from_slice(&cri.parse_at(record.as_bytes(), POD_LOG).expect("parses")).expect("JSON");
        assert_eq!(
            object,
            serde_json::json!({"time": "2026-12-01T12:00:00.1Z", "stream": "stdout", "log": "a line the runtime split in two",
                "kubernetes": {"pod_name": "web-7d9f", "namespace_name": "shop", "container_name": "nginx",
                    "container_id": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}})
        );
        // Outside the kubelet's naming, no pod; an empty message is an empty log.
        assert_eq!(parsed(&cri, "2026-12-01T12:00:00Z stderr F"), r#"{"time":"2026-12-01T12:00:00Z","stream":"stderr","log":""}"#);
        assert_eq!(cri.parse(b"2026-12-01T12:00:00Z stdin F x"), Err(ParseFailure::NoMatch { grammar: "cri" }));
        assert_eq!(cri.parse(b"just text"), Err(ParseFailure::NoMatch { grammar: "cri" }));
        assert!(matches!(Parser::new("cri", None, None, &[("log".into(), "integer".into())]), Err(ParserError::TypesNotFor(_))));
    }

    #[test]
    fn a_docker_json_file_records_parts_are_one_log_without_its_newline() {
        let docker = parser("docker");
        let record = "{\"log\":\"first half, \",\"stream\":\"stdout\",\"time\":\"2026-12-01T12:00:00.1Z\"}\n{\"log\":\"second half\\n\",\"stream\":\"stdout\",\"time\":\"2026-12-01T12:00:00.2Z\"}";
        assert_eq!(parsed(&docker, record), r#"{"time":"2026-12-01T12:00:00.1Z","stream":"stdout","log":"first half, second half"}"#);
        assert!(matches!(docker.parse(b"{\"log\":1}"), Err(ParseFailure::Syntax(_))));
    }

    #[test]
    fn only_the_kubelets_file_names_give_a_pod() {
        assert!(pod_file("web_shop_nginx-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.log").is_some());
        for name in [
            "web_shop_nginx-0123.log",
            "web_shop_nginx.log",
            "_shop_nginx-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.log",
            "app.log",
            "",
        ] {
            assert_eq!(pod_file(name), None, "{name}");
        }
    }

    #[test]
    fn ltsv_pairs_are_fields() {
        assert_eq!(
            parsed(&parser("ltsv"), "host:127.0.0.1\tstatus:200\ttime:[01/Dec/2026:12:00:00 +0000]"),
            r#"{"host":"127.0.0.1","status":"200","time":"[01/Dec/2026:12:00:00 +0000]"}"#
        );
        assert!(parser("ltsv").parse(b"host:a\tnocolon").is_err());
    }

    #[test]
    fn a_regex_with_types_converts_its_fields_and_a_value_that_does_not_convert_is_a_failure() {
        let types =
            [("status".to_owned(), "integer".to_owned()), ("ms".to_owned(), "float".to_owned()), ("ok".to_owned(), "bool".to_owned())];
        let regex = Parser::new("regex", Some(r"^(?<status>\S+) (?<ms>\S+) (?<ok>\S+)(?: (?<rest>.*))?$"), None, &types).expect("regex");
        assert_eq!(parsed(&regex, "200 1.5 true"), r#"{"status":200,"ms":1.5,"ok":true}"#);
        assert_eq!(parsed(&regex, "- - no tail"), r#"{"status":null,"ms":null,"ok":false,"rest":"tail"}"#);
        assert_eq!(
            regex.parse(b"2x0 1 true"),
            Err(ParseFailure::Conversion { field: "status".into(), value: "2x0".into(), wanted: "an integer" })
        );
        assert_eq!(regex.parse(b"nothing"), Err(ParseFailure::NoMatch { grammar: "regex" }));
        assert_eq!(regex.parse(b"200 \xff true"), Err(ParseFailure::NotUtf8 { valid_up_to: 4 }));
    }

    #[test]
    fn what_a_table_gets_wrong_is_said() {
        let no_pattern = Parser::new("regex", None, None, &[]).map(|_| ());
        assert_eq!(no_pattern, Err(ParserError::NoPattern));
        assert_eq!(Parser::new("regex", Some("^(\\d+)$"), None, &[]).map(|_| ()), Err(ParserError::NoNamedCapture));
        assert!(matches!(Parser::new("regex", Some("(?<a>"), None, &[]), Err(ParserError::BadPattern { .. })));
        assert_eq!(Parser::new("csv", None, None, &[]).map(|_| ()), Err(ParserError::NoColumns("csv".into())));
        assert_eq!(Parser::new("nginx", Some("x"), None, &[]).map(|_| ()), Err(ParserError::NotForType("pattern", "regex".into())));
        assert_eq!(Parser::new("grok", None, None, &[]).map(|_| ()), Err(ParserError::UnknownType("grok".into())));
        let bad_type = Parser::new("nginx", None, None, &[("code".into(), "number".into())]).map(|_| ());
        assert_eq!(bad_type, Err(ParserError::UnknownFieldType { field: "code".into(), name: "number".into() }));
    }

    proptest::proptest! {
        #[test]
        fn any_record_parses_to_one_json_object_or_fails_and_never_panics(record in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), text in "[ -~\t\\\"=:,]{0,120}") {
            let columns = ["a".to_owned(), "b".to_owned()];
            let types = [("a".to_owned(), "integer".to_owned()), ("code".to_owned(), "float".to_owned())];
            let parsers = [
                parser("nginx"), parser("apache2"), parser("syslog"), parser("ltsv"), parser("logfmt"),
                Parser::new("csv", None, Some(&columns), &types).expect("csv"),
                Parser::new("tsv", None, Some(&columns), &[]).expect("tsv"),
                Parser::new("regex", Some(r"^(?<a>\S*) ?(?<b>.*)$"), None, &types).expect("regex"),
                Parser::new("split", None, Some(&columns), &types).expect("split"),
                parser("none"),
            ];
            for parser in &parsers {
                for input in [record.as_slice(), text.as_bytes()] {
                    if let Ok(object) = parser.parse(input) {
                        let parsed = serde_json::from_slice::<serde_json::Map<String, Value>>(&object);
                        proptest::prop_assert!(parsed.is_ok(), "{:?} gave {:?}", input, String::from_utf8_lossy(&object));
                    }
                }
            }
        }
    }

    #[test]
    fn every_output_is_one_json_object() {
        let logfmt = parser("logfmt");
        for record in ["a=\"\\u0000\"", "ключ=значение", "a=\"tab\\there\""] {
            let object: serde_json::Map<String, Value> =
                serde_json::from_slice(&logfmt.parse(record.as_bytes()).expect("parses")).expect("an object");
            assert!(!object.is_empty());
        }
    }
}
