//! `tailhose generate` and `tailhose verify-delivery`: the seed's load generator, and the count
//! that proves what arrived.
//!
//! Records have the seed's shape (`board_id`, `playtime` 0–15, `user_id`, an ISO timestamp in
//! 2019, `interest`) plus a unique `seq`, which is what `verify-delivery` counts by.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A write rate: records per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(pub f64);

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Rate, String> {
        let number = text.strip_suffix("/s").unwrap_or(text);
        match number.trim().parse::<f64>() {
            Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(Rate(rate)),
            _ => Err(format!("`{text}` is not a rate; write records per second, as in 100/s")),
        }
    }
}

pub struct GenerateRequest<'a> {
    pub out: &'a Path,
    pub count: u64,
    pub first_seq: u64,
    pub rate: Option<Rate>,
    pub burst: u64,
    pub seed: u64,
}

/// Appends `count` records to `out` in bursts of `burst` lines, each burst written with one
/// `write` (a reader never sees half a burst's last line), paced to `rate`.
pub fn generate(request: GenerateRequest<'_>) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(request.out)
        .map_err(|error| anyhow::anyhow!("cannot open {}: {error}", request.out.display()))?;
    let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut random = SeedRandom::new(request.seed ^ request.first_seq);
    let started = Instant::now();
    let burst = request.burst.max(1);
    let mut written = 0;
    let mut lines = String::new();
    while written < request.count {
        lines.clear();
        let this_burst = burst.min(request.count - written);
        for seq in request.first_seq + written..request.first_seq + written + this_burst {
            lines.push_str(&seed_record(seq, &mut random));
            lines.push('\n');
        }
        file.write_all(lines.as_bytes())?;
        file.flush()?;
        written += this_burst;
        if let Some(Rate(rate)) = request.rate {
            let due = started + Duration::from_secs_f64(written as f64 / rate);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    }
    eprintln!("wrote {written} records (seq {}..{}) to {}", request.first_seq, request.first_seq + written, request.out.display());
    Ok(())
}

/// One record of the seed's shape.
pub fn seed_record(seq: u64, random: &mut SeedRandom) -> String {
    let board_id = random.below(1_000_001);
    let playtime = random.below(16);
    let user_id = random.below(1_000_001);
    // The seed's generator picks a time between 2019-01-01 13:30 and 2019-12-29 04:50.
    let start = chrono::NaiveDate::from_ymd_opt(2019, 1, 1).and_then(|day| day.and_hms_opt(13, 30, 0)).unwrap_or_default();
    let timestamp = start + chrono::Duration::seconds(random.below(30_864_000) as i64);
    format!(
        "{{\"board_id\": {board_id}, \"playtime\": {playtime}, \"user_id\": {user_id}, \"timestamp\": \"{}Z\", \"interest\": \"test_fluentd_firehose\", \"seq\": {seq}}}",
        timestamp.format("%Y-%m-%dT%H:%M:%S")
    )
}

/// splitmix64: reproducible records from a seed, no dependency.
pub struct SeedRandom(u64);

impl SeedRandom {
    pub fn new(seed: u64) -> SeedRandom {
        SeedRandom(seed)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (mixed ^ (mixed >> 31)) % bound
    }
}

/// What `verify-delivery` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryReport {
    pub records: u64,
    pub distinct: u64,
    pub duplicates: u64,
    pub without_seq: u64,
    /// With an expected count: how many of `0..expected` never arrived, and the first of them.
    pub missing: Option<u64>,
    pub first_missing: Vec<u64>,
}

/// Counts records by `seq` in every file under `dir` (a directory sink's output, or an S3 bucket
/// synced to disk), one record per line.
pub fn verify_delivery(dir: &Path, expected: Option<u64>) -> anyhow::Result<DeliveryReport> {
    let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
    let mut report = DeliveryReport::default();
    for file in files_under(dir)? {
        let bytes = std::fs::read(&file).map_err(|error| anyhow::anyhow!("cannot read {}: {error}", file.display()))?;
        for line in bytes.split(|&byte| byte == b'\n').filter(|line| !line.is_empty()) {
            report.records += 1;
            match serde_json::from_slice::<serde_json::Value>(line).ok().and_then(|record| record.get("seq")?.as_u64()) {
                Some(seq) => *counts.entry(seq).or_default() += 1,
                None => report.without_seq += 1,
            }
        }
    }
    report.distinct = counts.len() as u64;
    report.duplicates = counts.values().map(|count| count - 1).sum();
    if let Some(expected) = expected {
        let missing: Vec<u64> = (0..expected).filter(|seq| !counts.contains_key(seq)).collect();
        report.missing = Some(missing.len() as u64);
        report.first_missing = missing.into_iter().take(20).collect();
    }
    Ok(report)
}

fn files_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries = std::fs::read_dir(&folder).map_err(|error| anyhow::anyhow!("cannot read {}: {error}", folder.display()))?;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue; // a directory sink's files being written
            }
            if entry.file_type()?.is_dir() {
                folders.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_records_have_the_seeds_shape_and_a_unique_seq() {
        let mut random = SeedRandom::new(7);
        for seq in 0..1000 {
            let record: serde_json::Value = serde_json::from_str(&seed_record(seq, &mut random)).expect("JSON");
            assert_eq!(record["seq"].as_u64(), Some(seq));
            assert!(record["playtime"].as_u64().is_some_and(|playtime| playtime <= 15));
            assert!(record["board_id"].as_u64().is_some_and(|id| id <= 1_000_000));
            assert_eq!(record["interest"], "test_fluentd_firehose");
            let timestamp = record["timestamp"].as_str().expect("timestamp");
            assert!(timestamp.starts_with("2019-") && timestamp.ends_with('Z'), "{timestamp}");
        }
    }

    #[test]
    fn verify_delivery_counts_duplicates_and_missing_by_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("2026")).expect("mkdir");
        std::fs::write(dir.path().join("a"), "{\"seq\": 0}\n{\"seq\": 1}\n").expect("write");
        std::fs::write(dir.path().join("2026/b"), "{\"seq\": 1}\nnot json\n{\"seq\": 3}\n").expect("write");
        std::fs::write(dir.path().join(".partial"), "{\"seq\": 2}\n").expect("write");
        let report = verify_delivery(dir.path(), Some(4)).expect("report");
        assert_eq!(
            report,
            DeliveryReport { records: 5, distinct: 3, duplicates: 1, without_seq: 1, missing: Some(1), first_missing: vec![2] }
        );
    }

    #[test]
    fn rates_read_as_records_per_second() {
        assert_eq!("100/s".parse::<Rate>(), Ok(Rate(100.0)));
        assert_eq!("2500".parse::<Rate>(), Ok(Rate(2500.0)));
        assert!("0/s".parse::<Rate>().is_err() && "fast".parse::<Rate>().is_err());
    }
}
