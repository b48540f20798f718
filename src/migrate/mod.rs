//! Migration from the seed's set-up: a Fluentd configuration (`in_tail` → `kinesis_firehose`)
//! and its `pos_file` positions, or the Kinesis Agent's `agent.json` and its checkpoint file,
//! turned into a tailhose configuration and queue positions, so that a cut-over (stop the old
//! forwarder, import, start tailhose) neither loses nor repeats a record.
//!
//! - [`fluentd_syntax`] reads Fluentd's configuration language.
//! - [`translate`] maps what it can and lists every key it cannot, with the reason; it also
//!   writes the tailhose configuration of either forwarder's translation.
//! - [`pos_file`] imports where Fluentd stopped in each file.
//! - [`kinesis_agent`] translates an `agent.json`, [`agent_checkpoints`] imports where each of
//!   its flows stopped.
//!
//! Guarantees: credentials are never copied into the tailhose configuration; a translation that
//! would deliver something else than Fluentd did is reported as such (the CLI exits non-zero and
//! imports no positions); a position is imported only for the same file Fluentd recorded.

pub mod agent_checkpoints;
pub mod fluentd_syntax;
pub mod kinesis_agent;
pub mod pos_file;
pub mod translate;
