//! Which stream a record goes to: a sink's stream name (`delivery_stream`, `stream_name`) may
//! be a template over the record's fields, `logs-${record.service}`, or over its source,
//! `${source}-events`. Also the record fields that Kinesis keys are read from ([`FieldPath`]).
//!
//! Invariants:
//! - Every record goes to a stream: one whose field is missing, not a string, number or
//!   boolean, or gives a name the service refuses goes to the sink's `fallback_stream`, and so
//!   does a record that would open a stream past `max_streams`. No record is held or dropped
//!   for its stream's name, and each such fallback is counted by reason.
//! - A record's stream depends only on its bytes and its source: a resend, a replay and a
//!   recovery from the source file send it to the same stream.

use std::collections::HashMap;
use std::sync::Arc;

/// A dotted path to a field of a JSON record: `kubernetes.pod_name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        let names: Vec<String> = text.split('.').map(str::to_owned).collect();
        if names.iter().any(String::is_empty) {
            return Err(format!("`{text}` is not a field path: names joined by dots, as `user.id`"));
        }
        Ok(FieldPath(names))
    }

    /// The value at this path in `record`, if any.
    pub fn find<'a>(&self, record: &'a serde_json::Value) -> Option<&'a serde_json::Value> {
        self.0.iter().try_fold(record, |value, name| value.get(name))
    }
}

/// A field's value as a name or key: a string as it is, a number or a boolean as JSON writes
/// it. Empty strings, null, objects and arrays are none.
pub fn field_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(text) if !text.is_empty() => Some(text.clone()),
        serde_json::Value::Number(number) => Some(number.to_string()),
        serde_json::Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// What a stream's name may be: 1 to `max_chars` of a-z, A-Z, 0-9, `_`, `.`, `-` (Firehose: 64,
/// Kinesis: 128).
pub fn is_stream_name(name: &str, max_chars: usize) -> bool {
    !name.is_empty() && name.len() <= max_chars && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"_.-".contains(&byte))
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// `${source}`: the name of the record's source.
    Source,
    /// `${record.PATH}`: a field of the JSON record.
    Field(FieldPath),
}

/// A stream name with placeholders: `${source}` and `${record.PATH}` (a dotted path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTemplate {
    pieces: Vec<Piece>,
}

impl StreamTemplate {
    pub fn parse(text: &str) -> Result<StreamTemplate, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or_else(|| format!("`{text}`: a placeholder `${{` is not closed by `}}`"))?;
            let inside = after[..end].trim();
            pieces.push(match inside {
                "source" => Piece::Source,
                _ => match inside.strip_prefix("record.") {
                    Some(path) => Piece::Field(FieldPath::parse(path)?),
                    None => {
                        return Err(format!(
                            "`${{{inside}}}` is not a placeholder tailhose knows: `${{source}}` or `${{record.FIELD}}` (a dotted path)"
                        ))
                    }
                },
            });
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(StreamTemplate { pieces })
    }

    /// Whether the name depends on the record itself (then a fallback stream is needed).
    pub fn reads_records(&self) -> bool {
        self.pieces.iter().any(|piece| matches!(piece, Piece::Field(_)))
    }

    /// Whether the name has no placeholder at all.
    pub fn is_plain(&self) -> bool {
        self.pieces.iter().all(|piece| matches!(piece, Piece::Text(_)))
    }

    /// Whether the template's text outside its placeholders has only a stream name's characters.
    pub fn text_is_name_like(&self) -> bool {
        self.pieces.iter().all(|piece| match piece {
            Piece::Text(text) => is_stream_name(text, usize::MAX),
            Piece::Source | Piece::Field(_) => true,
        })
    }

    /// The name for a record of `source`; `record` is the record's JSON (`None`: not JSON, or
    /// not read because the template reads no field). `None` when a field it needs is missing.
    pub fn resolve(&self, source: &str, record: Option<&serde_json::Value>) -> Option<String> {
        let mut name = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => name.push_str(text),
                Piece::Source => name.push_str(source),
                Piece::Field(path) => name.push_str(&field_text(path.find(record?)?)?),
            }
        }
        Some(name)
    }
}

/// How a sink chooses each record's stream, when its name is a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRouting {
    pub template: StreamTemplate,
    /// Where records go whose stream cannot be named; required when the template reads records.
    pub fallback: Option<String>,
    /// Streams one route sends to at most; records past it go to the fallback.
    pub max_streams: usize,
    /// The longest name the service takes (Firehose 64, Kinesis 128).
    pub max_name_chars: usize,
}

/// Why a record went to the fallback stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FallbackReason {
    /// The record is not JSON, or lacks a field the template reads, or its value is no name.
    NoField,
    /// The name the template gave is not one the service takes.
    InvalidName,
    /// The route already sends to `max_streams` streams.
    TooManyStreams,
    /// The service answered that the stream named does not exist.
    MissingStream,
}

impl FallbackReason {
    pub fn label(self) -> &'static str {
        match self {
            FallbackReason::NoField => "no_field",
            FallbackReason::InvalidName => "invalid_name",
            FallbackReason::TooManyStreams => "too_many_streams",
            FallbackReason::MissingStream => "missing_stream",
        }
    }
}

/// The index of one of a route's streams: 0 is the route's first, the fallback when there is one.
pub type Lane = usize;

/// Where one route's records go: each record's lane, a new lane for each new stream named.
#[derive(Debug)]
pub struct StreamRouter {
    routing: Option<Arc<StreamRouting>>,
    source: String,
    /// Each lane's stream, in the order they were opened.
    streams: Vec<Arc<str>>,
    lanes: HashMap<Arc<str>, Lane>,
}

/// A record's lane, and whether it is the fallback's instead of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    pub lane: Lane,
    pub fallback: Option<FallbackReason>,
    /// Whether this record opened its lane.
    pub opened: bool,
}

impl StreamRouter {
    /// The router of a route of `source` to a sink whose stream is `stream` (a plain name, or
    /// the fallback of `routing`'s template) .
    pub fn new(stream: &str, routing: Option<Arc<StreamRouting>>, source: &str) -> StreamRouter {
        // A template over the source only names one stream per route: it is the first lane.
        let first = match routing.as_deref() {
            Some(routing) if !routing.template.reads_records() => {
                routing.template.resolve(source, None).unwrap_or_else(|| stream.to_owned())
            }
            _ => stream.to_owned(),
        };
        let first: Arc<str> = first.into();
        let routing = routing.filter(|routing| routing.template.reads_records());
        StreamRouter { routing, source: source.to_owned(), lanes: HashMap::from([(first.clone(), 0)]), streams: vec![first] }
    }

    /// Whether records go to more than the first lane.
    pub fn reads_records(&self) -> bool {
        self.routing.is_some()
    }

    pub fn stream(&self, lane: Lane) -> &Arc<str> {
        &self.streams[lane]
    }

    pub fn streams(&self) -> &[Arc<str>] {
        &self.streams
    }

    /// The lane of `record` (its bytes as queued).
    pub fn route(&mut self, record: &[u8]) -> Routed {
        let Some(routing) = self.routing.as_deref() else {
            return Routed { lane: 0, fallback: None, opened: false };
        };
        let parsed = serde_json::from_slice::<serde_json::Value>(record).ok();
        let name = match routing.template.resolve(&self.source, parsed.as_ref()) {
            None => return Routed { lane: 0, fallback: Some(FallbackReason::NoField), opened: false },
            Some(name) if !is_stream_name(&name, routing.max_name_chars) => {
                return Routed { lane: 0, fallback: Some(FallbackReason::InvalidName), opened: false }
            }
            Some(name) => name,
        };
        if let Some(&lane) = self.lanes.get(name.as_str()) {
            return Routed { lane, fallback: None, opened: false };
        }
        // The fallback is one of the streams counted.
        if self.streams.len() >= routing.max_streams {
            return Routed { lane: 0, fallback: Some(FallbackReason::TooManyStreams), opened: false };
        }
        let name: Arc<str> = name.into();
        let lane = self.streams.len();
        self.streams.push(name.clone());
        self.lanes.insert(name, lane);
        Routed { lane, fallback: None, opened: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(template: &str, max_streams: usize) -> Arc<StreamRouting> {
        Arc::new(StreamRouting {
            template: StreamTemplate::parse(template).expect("a template"),
            fallback: Some("other".into()),
            max_streams,
            max_name_chars: 64,
        })
    }

    #[test]
    fn placeholders_name_the_stream_from_the_source_and_the_records_fields() {
        let template = StreamTemplate::parse("logs-${record.service.name}-${source}").expect("parses");
        assert!(template.reads_records() && !template.is_plain());
        let record = serde_json::json!({"service": {"name": "video"}, "n": 3});
        assert_eq!(template.resolve("conect", Some(&record)).as_deref(), Some("logs-video-conect"));
        assert_eq!(template.resolve("conect", Some(&serde_json::json!({"service": {}}))), None);
        assert_eq!(template.resolve("conect", None), None);
        let by_number = StreamTemplate::parse("shard-${ record.n }").expect("parses");
        assert_eq!(by_number.resolve("s", Some(&record)).as_deref(), Some("shard-3"));
        let plain = StreamTemplate::parse("events").expect("parses");
        assert!(plain.is_plain() && !plain.reads_records());
        assert_eq!(plain.resolve("s", None).as_deref(), Some("events"));
        for wrong in ["logs-${tag}", "logs-${record.}", "logs-${record.a", "${record..b}"] {
            assert!(StreamTemplate::parse(wrong).is_err(), "{wrong}");
        }
    }

    #[test]
    fn a_record_without_a_usable_name_or_past_max_streams_goes_to_the_fallback_and_known_streams_keep_their_lane() {
        let mut router = StreamRouter::new("other", Some(routing("logs-${record.app}", 3)), "conect");
        assert_eq!(router.route(br#"{"app":"a"}"#), Routed { lane: 1, fallback: None, opened: true });
        assert_eq!(router.route(br#"{"app":"a","x":1}"#), Routed { lane: 1, fallback: None, opened: false });
        assert_eq!(router.route(br#"{"app":"b"}"#), Routed { lane: 2, fallback: None, opened: true });
        // The fallback counts among the three: a fourth stream is not opened.
        assert_eq!(router.route(br#"{"app":"c"}"#).fallback, Some(FallbackReason::TooManyStreams));
        assert_eq!(router.route(br#"{"app":{"nested":1}}"#).fallback, Some(FallbackReason::NoField));
        assert_eq!(router.route(b"not json").fallback, Some(FallbackReason::NoField));
        assert_eq!(router.route(br#"{"app":"has space"}"#).fallback, Some(FallbackReason::InvalidName));
        assert_eq!(router.route(&format!(r#"{{"app":"{}"}}"#, "x".repeat(60)).into_bytes()).fallback, Some(FallbackReason::InvalidName));
        let streams: Vec<&str> = router.streams().iter().map(|stream| &**stream).collect();
        assert_eq!(streams, ["other", "logs-a", "logs-b"]);
    }

    #[test]
    fn a_template_over_the_source_alone_is_one_stream_per_route_read_from_no_record() {
        let mut router = StreamRouter::new("unused", Some(routing("${source}-events", 64)), "conect");
        assert!(!router.reads_records());
        assert_eq!(&**router.stream(0), "conect-events");
        assert_eq!(router.route(b"not even json"), Routed { lane: 0, fallback: None, opened: false });
    }
}
