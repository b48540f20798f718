//! Added fields: what the record does not say about itself (which host, which file, which
//! source, when it was read, a stable id, which EC2 instance), appended to each record's JSON
//! object.
//!
//! Invariants:
//! - Only a JSON object takes fields: a source with `add_fields` reads JSON (`format = "json"`)
//!   or parses its records (`parse`); a JSON value that is not an object is a dead letter
//!   (`invalid_json`, "not an object"), never sent without its fields.
//! - A field the record has already keeps the record's value, and the added one is left out
//!   (as Fluent Bit's `modify` filter's `Add`): an object never has a name twice, which
//!   OpenSearch would refuse.
//! - Every added field but the read time is a pure function of the record's place (host,
//!   source, file identity, path, byte offset): a recovery from the source gives the same
//!   values, and the **record id** is the same however often the record is sent. The queue
//!   stores the record with its fields, so a replay and a resend after a crash carry the same
//!   read time as the first delivery; only a recovery from the source file (a corrupt chunk)
//!   reads the record again and gives it a new read time.

use std::fmt::Write as _;

use std::sync::Arc;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::config::SourceSettings;
use crate::queue::FileIdentity;

/// The fields a source adds, each under its own name (absent: not added).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AddedFields {
    /// Fixed fields, written as JSON values (`"prod"`, `3`, `true`), in the configuration's order.
    pub fixed: Vec<(String, serde_json::Value)>,
    /// The host name (`hostname_key`) and the name it is added under.
    pub hostname: Option<(String, String)>,
    pub path_key: Option<String>,
    /// The source's name (`source_key`) and the name it is added under.
    pub source: Option<(String, String)>,
    pub read_time_key: Option<String>,
    pub record_id_key: Option<String>,
    /// The name EC2 instance metadata is added under, as an object.
    pub ec2_metadata_key: Option<String>,
    /// The instance's metadata, fetched once at start-up ([`with_ec2_metadata`]).
    pub ec2: Option<Ec2Metadata>,
    /// Whether the Kinesis Agent's `ADDEC2METADATA` fields are added at the top level
    /// ([`KINESIS_AGENT_EC2_FIELDS`]).
    pub kinesis_agent_ec2_metadata: bool,
    /// Those fields with their values, fetched once at start-up ([`with_ec2_metadata`]).
    pub kinesis_agent_ec2: Vec<(String, serde_json::Value)>,
}

/// The fields the Kinesis Agent's `ADDEC2METADATA` adds, in its order: the instance identity
/// document's values under the agent's names, when they were read, and the instance's tags.
pub const KINESIS_AGENT_EC2_FIELDS: [&str; 9] =
    ["privateIp", "availabilityZone", "instanceId", "instanceType", "accountId", "amiId", "region", "metadataTimestamp", "tags"];

/// The agent's names for the instance identity document's fields it copies (`amiId` is the
/// document's `imageId`).
const IDENTITY_DOCUMENT_FIELDS: [(&str, &str); 7] = [
    ("privateIp", "privateIp"),
    ("availabilityZone", "availabilityZone"),
    ("instanceId", "instanceId"),
    ("instanceType", "instanceType"),
    ("accountId", "accountId"),
    ("amiId", "imageId"),
    ("region", "region"),
];

/// What IMDSv2 says of the instance tailhose runs on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ec2Metadata {
    pub instance_id: String,
    pub region: String,
    pub availability_zone: String,
}

/// Why the instance's metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Ec2MetadataError {
    #[error(
        "add_fields asks for EC2 instance metadata (ec2_metadata_key or kinesis_agent_ec2_metadata), but \
         AWS_EC2_METADATA_DISABLED turns IMDS off"
    )]
    Disabled,
    #[error(
        "cannot read EC2 instance metadata ({path}) through IMDSv2: {error}; not on EC2, or IMDS unreachable (set \
         AWS_EC2_METADATA_SERVICE_ENDPOINT, or a hop limit of 2 in a container), or remove ec2_metadata_key and \
         kinesis_agent_ec2_metadata"
    )]
    Unreachable { path: &'static str, error: String },
    #[error("the instance identity document (/latest/dynamic/instance-identity/document) is not a JSON object: {0}")]
    NotADocument(String),
}

/// Where a record was read: what the added fields are made of.
#[derive(Debug, Clone, Copy)]
pub struct RecordPlace<'a> {
    pub file: FileIdentity,
    pub path: &'a [u8],
    /// Where the record starts in its file.
    pub offset: u64,
    /// When it was read, in ms since the Unix epoch.
    pub read_at_ms: u64,
}

/// Why fields could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAnObject {
    #[error("a JSON {0}, not an object: add_fields needs an object")]
    Value(&'static str),
    #[error("{0}")]
    Invalid(String),
}

impl AddedFields {
    pub fn is_empty(&self) -> bool {
        self.fixed.is_empty()
            && self.hostname.is_none()
            && self.path_key.is_none()
            && self.source.is_none()
            && self.read_time_key.is_none()
            && self.record_id_key.is_none()
            && self.ec2_metadata_key.is_none()
            && !self.kinesis_agent_ec2_metadata
    }

    /// `object` (one JSON object's text, already checked to be valid JSON) with the fields
    /// appended before its closing brace.
    pub fn add_to(&self, object: &[u8], place: RecordPlace<'_>) -> Result<Vec<u8>, NotAnObject> {
        let names = top_level_names(object)?;
        let body_end = object.iter().rposition(|&byte| byte == b'}').ok_or(NotAnObject::Value("value"))?;
        let mut out = Vec::with_capacity(object.len() + 160);
        out.extend_from_slice(&object[..body_end]);
        let mut first = names.is_empty();
        let mut add = |out: &mut Vec<u8>, name: &str, write: &dyn Fn(&mut Vec<u8>)| {
            if names.iter().any(|known| known == name) {
                return;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            // Writing strings and values into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, name);
            out.push(b':');
            write(out);
        };
        for (name, value) in &self.fixed {
            add(&mut out, name, &|out| {
                let _ = serde_json::to_writer(out, value);
            });
        }
        if let Some((name, host)) = &self.hostname {
            add(&mut out, name, &|out| {
                let _ = serde_json::to_writer(out, host);
            });
        }
        if let Some(name) = &self.path_key {
            add(&mut out, name, &|out| {
                let _ = serde_json::to_writer(out, &String::from_utf8_lossy(place.path));
            });
        }
        if let Some((name, source)) = &self.source {
            add(&mut out, name, &|out| {
                let _ = serde_json::to_writer(out, source);
            });
        }
        if let Some(name) = &self.read_time_key {
            add(&mut out, name, &|out| {
                let _ = serde_json::to_writer(out, &rfc3339_millis(place.read_at_ms));
            });
        }
        if let Some(name) = &self.record_id_key {
            add(&mut out, name, &|out| {
                let _ = serde_json::to_writer(out, &record_id(place.file, place.offset));
            });
        }
        if let (Some(name), Some(ec2)) = (&self.ec2_metadata_key, &self.ec2) {
            add(&mut out, name, &|out| {
                let _ = serde_json::to_writer(out, ec2);
            });
        }
        for (name, value) in &self.kinesis_agent_ec2 {
            add(&mut out, name, &|out| {
                let _ = serde_json::to_writer(out, value);
            });
        }
        out.push(b'}');
        Ok(out)
    }
}

/// A record's stable id: its file's identity (device, inode, fingerprint of the first bytes)
/// and its byte offset, in hexadecimal: `DEVICE-INODE-FINGERPRINT-OFFSET`. The same record
/// has the same id in every delivery; two records never share one on a host (two files with
/// the same identity are one file to tailhose). Across hosts, pair it with the host name.
pub fn record_id(file: FileIdentity, offset: u64) -> String {
    let mut id = String::with_capacity(40);
    let _ = write!(id, "{:x}-{:x}-{:08x}-{:x}", file.device, file.inode, file.fingerprint, offset);
    id
}

/// `ms` since the Unix epoch as RFC 3339 in UTC with milliseconds (`2026-12-01T12:00:00.123Z`).
pub fn rfc3339_millis(ms: u64) -> String {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Sources whose added fields include EC2 instance metadata get it, fetched once for all of
/// them (IMDSv2, honouring `AWS_EC2_METADATA_SERVICE_ENDPOINT` and `AWS_EC2_METADATA_DISABLED`).
/// A source that asks for it and cannot have it stops start-up: its records would otherwise
/// go out without the fields the operator asked for. Instance tags are the exception: IMDS
/// has them only where the instance allows it, and the agent too sent its records without
/// them when it could not read them; then the sources come back with why
/// ([`Ec2Fields::tags_missing`]).
pub async fn with_ec2_metadata(mut sources: Vec<SourceSettings>) -> Result<Ec2Fields, Ec2MetadataError> {
    let wants = |source: &SourceSettings, which: fn(&AddedFields) -> bool| source.add_fields.as_deref().is_some_and(which);
    let wants_key = |fields: &AddedFields| fields.ec2_metadata_key.is_some();
    let wants_agent = |fields: &AddedFields| fields.kinesis_agent_ec2_metadata;
    let (key_wanted, agent_wanted) =
        (sources.iter().any(|source| wants(source, wants_key)), sources.iter().any(|source| wants(source, wants_agent)));
    if !key_wanted && !agent_wanted {
        return Ok(Ec2Fields { sources, tags_missing: None });
    }
    let imds = Imds::connect()?;
    let metadata = match key_wanted {
        true => Some(imds.metadata().await?),
        false => None,
    };
    let (agent_fields, tags_missing) = match agent_wanted {
        true => imds.kinesis_agent_fields(crate::queue::now_ms()).await?,
        false => (Vec::new(), None),
    };
    for source in &mut sources {
        if let Some(fields) = source.add_fields.as_mut() {
            if fields.ec2_metadata_key.is_some() {
                Arc::make_mut(fields).ec2 = metadata.clone();
            }
            if fields.kinesis_agent_ec2_metadata {
                Arc::make_mut(fields).kinesis_agent_ec2 = agent_fields.clone();
            }
        }
    }
    Ok(Ec2Fields { sources, tags_missing })
}

/// The sources with their EC2 fields, and why instance tags could not be read, if asked for
/// and not read.
pub struct Ec2Fields {
    pub sources: Vec<SourceSettings>,
    pub tags_missing: Option<String>,
}

/// An IMDSv2 client for the few reads of start-up.
struct Imds(aws_config::imds::client::Client);

impl Imds {
    fn connect() -> Result<Imds, Ec2MetadataError> {
        let disabled = std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|value| value.trim().eq_ignore_ascii_case("true"));
        if disabled {
            return Err(Ec2MetadataError::Disabled);
        }
        // A few quick attempts: at boot IMDS may answer late, off EC2 it never answers.
        Ok(Imds(
            aws_config::imds::client::Client::builder()
                .max_attempts(3)
                .connect_timeout(std::time::Duration::from_secs(1))
                .read_timeout(std::time::Duration::from_secs(1))
                .build(),
        ))
    }

    async fn get(&self, path: &'static str) -> Result<String, Ec2MetadataError> {
        self.get_at(path).await.map_err(|error| Ec2MetadataError::Unreachable { path, error })
    }

    /// `path`'s value, or the whole chain of causes of its failure ("dispatch failure" alone
    /// says nothing of a timeout).
    async fn get_at(&self, path: &str) -> Result<String, String> {
        self.0.get(path).await.map(String::from).map_err(|error| aws_smithy_types::error::display::DisplayErrorContext(&error).to_string())
    }

    /// What `ec2_metadata_key` adds.
    async fn metadata(&self) -> Result<Ec2Metadata, Ec2MetadataError> {
        Ok(Ec2Metadata {
            instance_id: self.get("/latest/meta-data/instance-id").await?,
            region: self.get("/latest/meta-data/placement/region").await?,
            availability_zone: self.get("/latest/meta-data/placement/availability-zone").await?,
        })
    }

    /// What `kinesis_agent_ec2_metadata` adds, as the agent's `ADDEC2METADATA` does: the
    /// instance identity document's values (the document the AWS SDK for Java's
    /// `EC2MetadataUtils.getInstanceInfo` reads), the time they were read as the agent writes
    /// it (`2026-12-01T12:00:00+0000`, here in UTC), and the instance's tags with their keys
    /// in lower case. The agent read the tags with EC2's `DescribeTags`; tailhose reads them
    /// from IMDS, which has them when the instance allows tags in its metadata. Without them
    /// the fields go without `tags`, as the agent's did when `DescribeTags` failed, and the
    /// second value says why.
    async fn kinesis_agent_fields(&self, now_ms: u64) -> Result<(Vec<(String, serde_json::Value)>, Option<String>), Ec2MetadataError> {
        let text = self.get("/latest/dynamic/instance-identity/document").await?;
        let document: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|error| Ec2MetadataError::NotADocument(error.to_string()))?;
        let mut fields: Vec<(String, serde_json::Value)> = IDENTITY_DOCUMENT_FIELDS
            .iter()
            .map(|(name, in_document)| ((*name).to_owned(), document.get(*in_document).cloned().unwrap_or(serde_json::Value::Null)))
            .collect();
        fields.push(("metadataTimestamp".into(), agent_timestamp(now_ms).into()));
        match self.instance_tags().await {
            Ok(tags) => fields.push(("tags".into(), serde_json::Value::Object(tags))),
            Err(why) => return Ok((fields, Some(why))),
        }
        Ok((fields, None))
    }

    /// The instance's tags, keys in lower case, or why IMDS did not give them.
    async fn instance_tags(&self) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        const TAGS: &str = "/latest/meta-data/tags/instance";
        let keys = self.get_at(TAGS).await?;
        let mut tags = serde_json::Map::new();
        for key in keys.lines().map(str::trim).filter(|key| !key.is_empty()) {
            let value = self.get_at(&format!("{TAGS}/{key}")).await?;
            tags.insert(key.to_lowercase(), value.into());
        }
        Ok(tags)
    }
}

/// `ms` since the Unix epoch as the Kinesis Agent writes `metadataTimestamp` (Java's
/// `yyyy-MM-dd'T'HH:mm:ssZ`), in UTC: `2026-12-01T12:00:00+0000`.
fn agent_timestamp(ms: u64) -> String {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(|| ms.to_string(), |time| time.format("%Y-%m-%dT%H:%M:%S%z").to_string())
}

/// This host's name, as `gethostname(2)` gives it.
pub fn host_name() -> std::io::Result<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is what is passed.
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let end = buffer.iter().position(|&byte| byte == 0).unwrap_or(buffer.len());
    Ok(String::from_utf8_lossy(&buffer[..end]).into_owned())
}

/// The names of a JSON object's own fields, or what the text is instead.
fn top_level_names(text: &[u8]) -> Result<Vec<String>, NotAnObject> {
    struct Names;
    impl<'de> Visitor<'de> for Names {
        type Value = Result<Vec<String>, NotAnObject>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut names = Vec::new();
            while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                map.next_value::<IgnoredAny>()?;
                names.push(name.into_owned());
            }
            Ok(Ok(names))
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Err(NotAnObject::Value("array")))
        }

        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Err(NotAnObject::Value("string")))
        }

        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Err(NotAnObject::Value("boolean")))
        }

        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Err(NotAnObject::Value("number")))
        }

        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Err(NotAnObject::Value("number")))
        }

        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Err(NotAnObject::Value("number")))
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Err(NotAnObject::Value("null")))
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let names = deserializer.deserialize_any(Names).map_err(|error| NotAnObject::Invalid(error.to_string()))?;
    deserializer.end().map_err(|error| NotAnObject::Invalid(error.to_string()))?;
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: FileIdentity = FileIdentity { device: 0x801, inode: 0x2a, fingerprint_len: 256, fingerprint: 0xdead_beef };

    fn place(offset: u64) -> RecordPlace<'static> {
        RecordPlace { file: FILE, path: b"/srv/conect/source/a.log", offset, read_at_ms: 1_796_126_400_123 }
    }

    fn every_field() -> AddedFields {
        AddedFields {
            fixed: vec![("env".into(), serde_json::json!("prod")), ("shard".into(), serde_json::json!(3))],
            hostname: Some(("host".into(), "web-1".into())),
            path_key: Some("file".into()),
            source: Some(("source".into(), "conect".into())),
            read_time_key: Some("read_at".into()),
            record_id_key: Some("record_id".into()),
            ec2_metadata_key: Some("ec2".into()),
            ec2: Some(Ec2Metadata {
                instance_id: "i-0abc".into(),
                region: "ap-northeast-2".into(),
                availability_zone: "ap-northeast-2a".into(),
            }),
            kinesis_agent_ec2_metadata: false,
            kinesis_agent_ec2: Vec::new(),
        }
    }

    fn added(fields: &AddedFields, object: &str) -> String {
        String::from_utf8(fields.add_to(object.as_bytes(), place(4096)).expect("an object")).expect("UTF-8")
    }

    #[test]
    fn fields_are_appended_to_the_object_as_written() {
        assert_eq!(
            added(&every_field(), r#"{"board_id": 1, "nested": {"env": "x"}}  "#),
            r#"{"board_id": 1, "nested": {"env": "x"},"env":"prod","shard":3,"host":"web-1","file":"/srv/conect/source/a.log","source":"conect","read_at":"2026-12-01T12:00:00.123Z","record_id":"801-2a-deadbeef-1000","ec2":{"instance_id":"i-0abc","region":"ap-northeast-2","availability_zone":"ap-northeast-2a"}}"#
        );
        let only_id = AddedFields { record_id_key: Some("id".into()), ..AddedFields::default() };
        assert_eq!(added(&only_id, "{ }"), r#"{ "id":"801-2a-deadbeef-1000"}"#);
    }

    #[test]
    fn a_field_the_record_has_keeps_its_value() {
        assert_eq!(
            added(&every_field(), r#"{"host":"the app's own","env":"dev"}"#),
            r#"{"host":"the app's own","env":"dev","shard":3,"file":"/srv/conect/source/a.log","source":"conect","read_at":"2026-12-01T12:00:00.123Z","record_id":"801-2a-deadbeef-1000","ec2":{"instance_id":"i-0abc","region":"ap-northeast-2","availability_zone":"ap-northeast-2a"}}"#
        );
        let object: serde_json::Value = serde_json::from_str(&added(&every_field(), r#"{"a\u0062":1,"record_id":2}"#)).expect("JSON");
        assert_eq!(object["record_id"], 2);
    }

    #[test]
    fn a_value_that_is_not_an_object_is_refused() {
        for (text, kind) in [("[1,2]", "array"), ("\"text\"", "string"), ("17", "number"), ("null", "null"), ("true", "boolean")] {
            assert_eq!(every_field().add_to(text.as_bytes(), place(0)), Err(NotAnObject::Value(kind)), "{text}");
        }
        assert!(matches!(every_field().add_to(b"{\"a\":", place(0)), Err(NotAnObject::Invalid(_))));
    }

    #[test]
    fn the_kinesis_agents_ec2_fields_go_at_the_top_level_after_the_others_and_keep_the_records_own() {
        let fields = AddedFields {
            record_id_key: Some("id".into()),
            kinesis_agent_ec2_metadata: true,
            kinesis_agent_ec2: vec![
                ("instanceId".into(), serde_json::json!("i-0abc")),
                ("region".into(), serde_json::json!("ap-northeast-2")),
                ("tags".into(), serde_json::json!({"name": "web"})),
            ],
            ..AddedFields::default()
        };
        assert_eq!(
            added(&fields, r#"{"region":"mine"}"#),
            r#"{"region":"mine","id":"801-2a-deadbeef-1000","instanceId":"i-0abc","tags":{"name":"web"}}"#
        );
        // Java's `yyyy-MM-dd'T'HH:mm:ssZ`: seconds, and the offset without a colon.
        assert_eq!(agent_timestamp(1_796_126_400_123), "2026-12-01T12:00:00+0000");
    }

    #[test]
    fn the_record_id_is_the_same_for_the_same_place_and_differs_for_another() {
        assert_eq!(record_id(FILE, 4096), record_id(FILE, 4096));
        assert_ne!(record_id(FILE, 4096), record_id(FILE, 4097));
        assert_ne!(record_id(FILE, 0), record_id(FileIdentity { inode: 0x2b, ..FILE }, 0));
    }

    #[test]
    fn the_host_name_is_known() {
        assert!(!host_name().expect("gethostname").is_empty());
    }
}
