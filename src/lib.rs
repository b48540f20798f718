//! tailhose: tails log files and delivers every record to AWS Kinesis Data Firehose, durably and
//! at least once.
//!
//! The modules follow a record's path:
//! - [`config`]: the TOML configuration, validated in one place.
//! - [`source`]: finds files, reads complete lines, checks their format, cuts them into chunks.
//! - [`queue`]: the sled queue of checksummed chunks, file positions and dead letters.
//! - [`sink`]: packs records into batches and delivers them (Firehose, a local directory).
//! - [`pipeline`]: wires one reader and one flusher per route, acknowledgements and shutdown.
//! - [`cli`]: the command line.
//!
//! [`events`] counts and logs everything that happens on the way; [`admin`] shows it over HTTP
//! (`/metrics`, `/health`, `/status`).

pub mod admin;
pub mod cli;
pub mod config;
pub mod events;
pub mod migrate;
pub mod pipeline;
pub mod queue;
pub mod sink;
pub mod source;
