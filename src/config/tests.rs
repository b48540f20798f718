use std::path::Path;
use std::time::Duration;

use super::*;
use crate::sink::kinesis::PartitionKey;

const SEED_LIKE: &str = r#"
data_dir = "/var/lib/tailhose"

[sources.conect]
paths = ["/srv/conect/source/*.log"]
format = "json"
read_from_head = true
refresh_interval = "5s"

[sinks.events]
type = "firehose"
inputs = ["conect"]
delivery_stream = "test-fluentd-firehose"
region = "ap-northeast-2"
endpoint_url = "http://127.0.0.1:4599"
flush_interval = "1s"
append_newline = true
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/tailhose/tailhose.toml"))
}

fn problems(text: &str) -> Vec<ConfigProblem> {
    match parse(text) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected validation problems, got {other:?}"),
    }
}

#[test]
fn the_issue_example_parses_with_defaults_filled_in() {
    let config = parse(SEED_LIKE).expect("valid");
    let sinks = config.sink_settings();
    assert_eq!(sinks.len(), 1);
    assert_eq!(sinks[0].flush_interval, Duration::from_secs(1));
    assert_eq!(sinks[0].max_batch_records, 500);
    assert_eq!(sinks[0].max_batch_bytes, 2 * 1024 * 1024);
    assert!(
        matches!(&sinks[0].destination, SinkDestination::Firehose { delivery_stream, .. } if delivery_stream == "test-fluentd-firehose")
    );
    let sources = config.source_settings();
    assert_eq!(sources[0].max_line_bytes, 1024 * 1024);
    assert_eq!(config.max_queue_bytes, ByteSize(1 << 30));
}

#[test]
fn relative_paths_are_taken_from_the_config_files_folder() {
    let text = "data_dir = \"state\"\n[sources.a]\npaths=[\"x/*.log\"]\n[sinks.out]\ntype=\"directory\"\ninputs=[\"a\"]\npath=\"out\"\n";
    let config = parse(text).expect("valid");
    assert_eq!(config.data_dir, Path::new("/etc/tailhose/state"));
    assert!(
        matches!(&config.sink_settings()[0].destination, SinkDestination::Directory { path } if path == Path::new("/etc/tailhose/out"))
    );
}

#[test]
fn an_unknown_key_is_an_error_that_names_the_key_and_line() {
    let text = SEED_LIKE.replace("append_newline = true", "append_newlines = true");
    let error = parse(&text).expect_err("unknown key").to_string();
    assert!(error.contains("append_newlines"), "{error}");
    assert!(error.contains("line 17"), "{error}");
}

#[test]
fn an_input_that_names_no_source_is_reported_on_its_line() {
    let text = SEED_LIKE.replace("inputs = [\"conect\"]", "inputs = [\"other\"]");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, "sinks.events.inputs");
    assert_eq!(found[0].line, Some(12));
    assert!(found[0].message.contains("`other`"));
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = r#"
data_dir = "d"
[sources.a]
paths = []
[sinks.f]
type = "firehose"
inputs = ["a"]
max_batch_records = 501
max_batch_bytes = "5MiB"
path = "/tmp"
"#;
    let keys: Vec<String> = problems(text).into_iter().map(|problem| problem.key).collect();
    for expected in ["sources.a.paths", "sinks.f.max_batch_records", "sinks.f.max_batch_bytes", "sinks.f.delivery_stream", "sinks.f.path"] {
        assert!(keys.iter().any(|key| key == expected), "missing {expected} in {keys:?}");
    }
}

#[test]
fn a_bad_duration_is_a_syntax_error_with_its_line() {
    let text = SEED_LIKE.replace("flush_interval = \"1s\"", "flush_interval = \"soon\"");
    let error = parse(&text).expect_err("bad duration").to_string();
    assert!(error.contains("line 16"), "{error}");
}

#[test]
fn a_directory_sink_rejects_firehose_keys() {
    let text = "data_dir = \"d\"\n[sources.a]\npaths=[\"*.log\"]\n[sinks.out]\ntype=\"directory\"\ninputs=[\"a\"]\npath=\"out\"\nregion=\"eu-west-1\"\n";
    let found = problems(text);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].key, "sinks.out.region");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5_000))]

    /// Whatever the text, parsing answers with a configuration or an error: never a panic.
    #[test]
    fn any_text_parses_or_fails_without_panicking(text in "\\PC{0,400}") {
        let _ = parse(&text);
    }

    /// Valid TOML with the right table names but random values also never panics.
    #[test]
    fn any_values_in_the_known_keys_never_panic(
        data_dir in "[a-z/]{0,10}",
        paths in proptest::collection::vec("[a-z*/.\\[]{0,12}", 0..3),
        records in proptest::num::i64::ANY,
        size in "[0-9]{0,12}[KMGkmg]?i?[Bb]?",
        interval in "[0-9a-z ]{0,8}",
    ) {
        let text = format!(
            "data_dir = {data_dir:?}\n[sources.a]\npaths = {paths:?}\n[sinks.b]\ntype = \"firehose\"\ninputs = [\"a\"]\ndelivery_stream = \"s\"\nmax_batch_records = {records}\nmax_batch_bytes = {size:?}\nflush_interval = {interval:?}\n"
        );
        let _ = parse(&text);
    }
}

#[test]
fn packing_needs_newlines_a_firehose_sink_and_a_record_sized_limit() {
    let packed = SEED_LIKE.replace("append_newline = true", "append_newline = true\npack_records = true");
    let sink = &parse(&packed).expect("valid").sink_settings()[0];
    assert_eq!(sink.packing.map(|packing| packing.max_bytes), Some(5_000), "the default stays within one 5 KB billing unit");
    assert_eq!(parse(SEED_LIKE).expect("valid").sink_settings()[0].packing, None, "off unless asked");

    let without_newlines = SEED_LIKE.replace("append_newline = true", "append_newline = false\npack_records = true");
    assert!(problems(&without_newlines).iter().any(|problem| problem.key == "sinks.events.pack_records"));
    let too_large = packed.replace("pack_records = true", "pack_records = true\npack_max_bytes = \"2MiB\"");
    assert!(problems(&too_large).iter().any(|problem| problem.key == "sinks.events.pack_max_bytes"));
    let directory = "data_dir = \"d\"\n[sources.s]\npaths = [\"*.log\"]\n[sinks.out]\ntype = \"directory\"\ninputs = [\"s\"]\npath = \"out\"\npack_records = true\n";
    assert!(problems(directory).iter().any(|problem| problem.key == "sinks.out.pack_records"));
}

#[test]
fn retention_limits_must_be_above_zero() {
    let retained =
        SEED_LIKE.replace("append_newline = true", "append_newline = true\nretain_acked = \"24h\"\nretain_acked_bytes = \"512MiB\"");
    let sink = &parse(&retained).expect("valid").sink_settings()[0];
    assert_eq!(sink.retention, Retention { max_age: Some(Duration::from_secs(86_400)), max_bytes: Some(512 << 20) });
    let zero = SEED_LIKE.replace("append_newline = true", "append_newline = true\nretain_acked_bytes = 0");
    assert!(problems(&zero).iter().any(|problem| problem.key == "sinks.events.retain_acked"));
}

#[test]
fn the_admin_endpoint_is_on_loopback_by_default_and_can_be_turned_off() {
    let config = parse(SEED_LIKE).expect("valid");
    assert!(config.admin.enabled);
    assert_eq!(config.admin.address.to_string(), "127.0.0.1:8686");
    let rest = SEED_LIKE.replace("data_dir = \"/var/lib/tailhose\"", "");
    let off = parse(&format!("data_dir = \"d\"\n[admin]\nenabled = false\naddress = \"0.0.0.0:9000\"\n{rest}")).expect("valid");
    assert!(!off.admin.enabled);
    assert_eq!(off.admin.address.to_string(), "0.0.0.0:9000");
}

#[test]
fn a_parse_table_gives_the_source_a_parser_and_its_mistakes_are_reported_on_its_source() {
    let nginx =
        SEED_LIKE.replace("format = \"json\"\n", "") + "\n[sources.conect.parse]\ntype = \"nginx\"\ntypes = { code = \"integer\" }\n";
    let sources = parse(&nginx).expect("valid").source_settings();
    let parser = sources[0].parse.as_ref().expect("a parser");
    let object = parser.parse(br#"::1 - - [01/Dec/2026:12:00:00 +0000] "GET / HTTP/1.1" 200 5"#).expect("parses");
    assert!(String::from_utf8_lossy(&object).contains(r#""code":200"#));
    // A parsed record is not checked as JSON text again.
    assert_eq!(sources[0].format, LineFormat::Raw);

    let both = SEED_LIKE.to_owned() + "\n[sources.conect.parse]\ntype = \"logfmt\"\n";
    let keys: Vec<String> = problems(&both).into_iter().map(|problem| problem.key).collect();
    assert_eq!(keys, ["sources.conect.format"]);
    let wrong = SEED_LIKE.replace("format = \"json\"\n", "") + "\n[sources.conect.parse]\ntype = \"regex\"\npattern = \"^(\\\\d+)$\"\n";
    let problems = problems(&wrong);
    assert_eq!((problems[0].key.as_str(), problems[0].line), ("sources.conect.parse", Some(4)));
    assert!(problems[0].message.contains("no named capture"), "{}", problems[0].message);
}

#[test]
fn added_fields_need_json_objects_and_say_what_they_add_once() {
    let table = "\n[sources.conect.add_fields]\nstatic = { env = \"prod\", shard = 3, meta = { team = \"video\", zones = [\"a\", \"b\"] } }\nrecord_id_key = \"record_id\"\n";
    let sources = parse(&(SEED_LIKE.to_owned() + table)).expect("valid").source_settings();
    let added = sources[0].add_fields.as_ref().expect("fields");
    assert_eq!(
        added.fixed,
        vec![
            ("env".to_owned(), serde_json::json!("prod")),
            ("meta".to_owned(), serde_json::json!({"team": "video", "zones": ["a", "b"]})),
            ("shard".to_owned(), serde_json::json!(3))
        ]
    );
    assert_eq!(added.record_id_key.as_deref(), Some("record_id"));

    let raw = SEED_LIKE.replace("format = \"json\"", "format = \"raw\"") + table;
    assert_eq!(problems(&raw).into_iter().map(|problem| problem.key).collect::<Vec<_>>(), ["sources.conect.add_fields"]);
    for (wrong, expected) in [
        ("static = { env = \"a\" }\nsource_key = \"env\"", "`env` is added twice"),
        ("record_id_key = \"tags\"\nkinesis_agent_ec2_metadata = true", "`tags` is added twice"),
        ("static = { when = 1979-05-27 }", "static.when: a TOML date"),
        ("static = { ratio = nan }", "static.ratio: not a finite number"),
        ("hostname_key = \"\"", "a field name is empty"),
        ("", "adds nothing"),
    ] {
        let text = format!("{SEED_LIKE}\n[sources.conect.add_fields]\n{wrong}\n");
        let problems = problems(&text);
        assert!(problems.iter().any(|problem| problem.message.contains(expected)), "{wrong}: {problems:?}");
    }
}

/// A container log's parts are joined by the parser's own rule; its limits (how long a part
/// waits for the rest, how long a joined line may be) are the multiline table's, when given.
#[test]
fn beside_a_container_log_parser_a_multiline_table_sets_only_the_limits_of_the_joining() {
    let with = |multiline: &str| {
        SEED_LIKE.replace("format = \"json\"\n", "").replace(
            "\n[sinks.events]",
            &format!("\n[sources.conect.parse]\ntype = \"cri\"\n\n[sources.conect.multiline]\n{multiline}\n\n[sinks.events]"),
        )
    };
    let config = parse(&with("flush_timeout = \"3s\"\nmax_bytes = \"64KiB\"")).expect("limits are allowed");
    let source = config.source_settings().remove(0);
    let multiline = source.multiline.expect("the parts are joined");
    assert!(matches!(multiline.rule, MultilineRule::Partial(PartialLines::Cri)), "{:?}", multiline.rule);
    assert_eq!((multiline.flush_timeout, multiline.max_bytes, multiline.max_lines), (Duration::from_secs(3), 64 * 1024, 1000));
    let default = parse(&with("")).expect("an empty table").source_settings().remove(0).multiline.expect("joined");
    assert_eq!((default.flush_timeout, default.max_bytes), (Duration::from_secs(1), 512 * 1024), "the defaults");
    for rule in ["start = '^\\d'", "preset = \"java\""] {
        let found = problems(&with(rule));
        assert!(
            found.iter().any(|problem| problem.key == "sources.conect.multiline" && problem.message.contains("give only flush_timeout")),
            "{rule}: {found:?}"
        );
    }
    let found = problems(&with("max_bytes = \"2MiB\""));
    assert!(found.iter().any(|problem| problem.message.contains("max_bytes")), "a joined line must fit a Firehose record: {found:?}");
}

/// The seed's source delivered to a Kinesis data stream, with `extra` sink lines.
fn kinesis(extra: &str) -> String {
    let firehose_keys = "type = \"firehose\"\ninputs = [\"conect\"]\ndelivery_stream = \"test-fluentd-firehose\"";
    SEED_LIKE.replace(firehose_keys, &format!("type = \"kinesis_streams\"\ninputs = [\"conect\"]\nstream_name = \"conect\"\n{extra}"))
}

#[test]
fn a_kinesis_sink_takes_a_partition_key_from_a_field_a_fixed_one_or_random_ones() {
    let destination = |extra: &str| parse(&kinesis(extra)).expect("valid").sink_settings().remove(0).destination;
    match destination("") {
        SinkDestination::KinesisStreams { stream_name, partition_key, explicit_hash_key, aggregate, .. } => {
            assert_eq!((stream_name.as_str(), partition_key, explicit_hash_key, aggregate), ("conect", PartitionKey::Random, None, false));
        }
        other => panic!("{other:?}"),
    }
    let by_field = destination("partition_key_field = \"user.id\"\nexplicit_hash_key_field = \"hash\"");
    assert!(matches!(by_field, SinkDestination::KinesisStreams { partition_key: PartitionKey::Field(_), explicit_hash_key: Some(_), .. }));
    let aggregated = parse(&kinesis("fixed_partition_key = \"events\"\naggregate = true")).expect("valid").sink_settings().remove(0);
    assert!(
        matches!(aggregated.destination, SinkDestination::KinesisStreams { partition_key: PartitionKey::Fixed(ref key), aggregate: true, .. } if key == "events")
    );
    assert_eq!(aggregated.packing, Some(Packing { format: PackFormat::Aggregated, max_bytes: aggregation::BODY_MAX_BYTES }));
    assert_eq!(aggregated.max_in_flight, 4, "aggregated batches are as large as packed ones");
    assert_eq!(aggregated.max_batch_bytes, 1024 * 1024, "half of packed batches': sealing copies them");
}

#[test]
fn a_kinesis_sinks_mistakes_are_reported_on_their_keys() {
    let keys = |extra: &str| problems(&kinesis(extra)).into_iter().map(|problem| problem.key).collect::<Vec<_>>();
    assert_eq!(keys("partition_key_field = \"a\"\nfixed_partition_key = \"b\""), ["sinks.events.partition_key_field"]);
    assert_eq!(keys("partition_key_field = \"a..b\""), ["sinks.events.partition_key_field"]);
    assert_eq!(keys(&format!("fixed_partition_key = \"{}\"", "k".repeat(257))), ["sinks.events.fixed_partition_key"]);
    assert_eq!(keys("aggregate = true\npartition_key_field = \"user_id\""), ["sinks.events.partition_key_field"]);
    assert_eq!(keys("pack_records = true"), ["sinks.events.pack_records"], "aggregation is a Kinesis sink's packing");
    assert_eq!(keys("delivery_stream = \"x\""), ["sinks.events.delivery_stream"]);
    let unnamed = kinesis("").replace("stream_name = \"conect\"\n", "");
    assert_eq!(problems(&unnamed).into_iter().map(|problem| problem.key).collect::<Vec<_>>(), ["sinks.events.stream_name"]);
    let bad_name = kinesis("").replace("stream_name = \"conect\"", "stream_name = \"has space\"");
    assert_eq!(problems(&bad_name)[0].key, "sinks.events.stream_name");
    // And the other way round: a Firehose sink refuses the Kinesis keys.
    let firehose = SEED_LIKE.replace("append_newline = true", "append_newline = true\nstream_name = \"conect\"\naggregate = true");
    let keys: Vec<String> = problems(&firehose).into_iter().map(|problem| problem.key).collect();
    assert_eq!(keys, ["sinks.events.stream_name", "sinks.events.aggregate"]);
}

/// A stream named per record needs a place for the records that name none; the keys of a
/// template are refused beside a plain name, and a plain name must be one the service takes.
#[test]
fn a_stream_template_needs_a_fallback_and_its_keys_apply_only_to_a_template() {
    let with = |lines: &str| SEED_LIKE.replace("delivery_stream = \"test-fluentd-firehose\"", lines);
    let config =
        parse(&with("delivery_stream = \"logs-${record.service}\"\nfallback_stream = \"logs-other\"\nmax_streams = 8")).expect("valid");
    let sink = &config.sink_settings()[0];
    let routing = sink.streams.as_ref().expect("a template");
    assert_eq!((routing.fallback.as_deref(), routing.max_streams, routing.max_name_chars), (Some("logs-other"), 8, 64));
    // The fallback is the stream the sink is checked against at start-up.
    assert!(matches!(&sink.destination, SinkDestination::Firehose { delivery_stream, .. } if delivery_stream == "logs-other"));
    let by_source = parse(&with("delivery_stream = \"${source}-events\"")).expect("valid without a fallback");
    assert!(
        matches!(&by_source.sink_settings()[0].destination, SinkDestination::Firehose { delivery_stream, .. } if delivery_stream == "conect-events")
    );
    assert!(parse(SEED_LIKE).expect("valid").sink_settings()[0].streams.is_none());
    for (lines, key, expected) in [
        (
            "delivery_stream = \"logs-${record.service}\"",
            "sinks.events.fallback_stream",
            "is required when delivery_stream names a record field",
        ),
        (
            "delivery_stream = \"logs-${record.service}\"\nfallback_stream = \"no spaces\"",
            "sinks.events.fallback_stream",
            "is not a stream name",
        ),
        ("delivery_stream = \"logs\"\nfallback_stream = \"other\"", "sinks.events.fallback_stream", "not a template"),
        ("delivery_stream = \"logs-${tag}\"", "sinks.events.delivery_stream", "is not a placeholder tailhose knows"),
        ("delivery_stream = \"a/b\"", "sinks.events.delivery_stream", "is not a stream name"),
        ("delivery_stream = \"logs ${record.a}\"\nfallback_stream = \"x\"", "sinks.events.delivery_stream", "outside its placeholders"),
        ("delivery_stream = \"${record.a}\"\nfallback_stream = \"x\"\nmax_streams = 0", "sinks.events.max_streams", "must be 1 to 1000"),
    ] {
        let problems = problems(&with(lines));
        assert!(problems.iter().any(|problem| problem.key == key && problem.message.contains(expected)), "{lines}: {problems:?}");
    }
    let kinesis = SEED_LIKE.replace(
        "type = \"firehose\"\ninputs = [\"conect\"]\ndelivery_stream = \"test-fluentd-firehose\"",
        "type = \"kinesis_streams\"\ninputs = [\"conect\"]\nstream_name = \"${record.app}\"",
    );
    let problems = problems(&kinesis);
    assert!(problems.iter().any(|problem| problem.key == "sinks.events.fallback_stream"), "{problems:?}");
}
