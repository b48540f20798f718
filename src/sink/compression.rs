//! Compressed records (`compression = "gzip"` or `"zstd"`): each record sent is compressed as a
//! whole, once, when its batch leaves the flusher.
//!
//! A Firehose record compressed this way lands in S3 as one gzip member (or zstd frame) after
//! another: a concatenation that `zcat`, `zstdcat`, Athena and Spark read as one file, once the
//! object's name ends in `.gz` or `.zst` (the delivery stream's file extension). A Kinesis record
//! is one member whole, for its consumer to decompress (and then deaggregate, when aggregated).
//!
//! Guarantees (tested below): [`Compression::decompress`] gives back exactly what
//! [`Compression::compress`] was given, for any bytes; a compressed record is at most
//! [`Compression::max_growth`] larger than its input, so limits checked before compression hold
//! after it; a compressed record never depends on another (each is a complete member).

use std::io::{Read, Write};

/// A compression of records sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// RFC 1952 gzip at level 6 (gzip's own default).
    Gzip,
    /// Zstandard at level 3 (zstd's own default): as small as gzip's at a fraction of its CPU.
    Zstd,
    /// RFC 1950 zlib at level 6: what fluent-plugin-kinesis's `compression zlib` sends, for
    /// consumers written for it (zcat does not read it).
    Zlib,
}

/// Level of each, the tools' defaults: measured on seed records in docs/performance.md.
const GZIP_LEVEL: u32 = 6;
const ZSTD_LEVEL: i32 = 3;

/// Compressed data that cannot be read back.
#[derive(Debug, thiserror::Error)]
#[error("cannot decompress a {compression:?} record: {source}")]
pub struct Undecodable {
    compression: Compression,
    source: std::io::Error,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Zlib => "zlib",
        }
    }

    /// The file extension of a file of such records.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
            Compression::Zlib => ".zz",
        }
    }

    /// `data`, compressed as one complete member.
    pub fn compress(self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() / 4 + 64);
        match self {
            Compression::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::new(GZIP_LEVEL));
                // Writing to a Vec cannot fail.
                let written = encoder.write_all(data).and_then(|()| encoder.finish());
                out = written.unwrap_or_else(|_| unreachable!("a gzip encoder writing to memory does not fail"));
            }
            Compression::Zstd => {
                out = zstd::bulk::compress(data, ZSTD_LEVEL).unwrap_or_else(|_| unreachable!("zstd compresses any bytes in memory"));
            }
            Compression::Zlib => {
                let mut encoder = flate2::write::ZlibEncoder::new(out, flate2::Compression::new(GZIP_LEVEL));
                let written = encoder.write_all(data).and_then(|()| encoder.finish());
                out = written.unwrap_or_else(|_| unreachable!("a zlib encoder writing to memory does not fail"));
            }
        }
        out
    }

    /// The data of a record compressed by [`Compression::compress`].
    pub fn decompress(self, data: &[u8]) -> Result<Vec<u8>, Undecodable> {
        let mut out = Vec::with_capacity(data.len() * 4);
        let read = match self {
            // Several members read as their concatenation, as `zcat` reads them.
            Compression::Gzip => flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out),
            Compression::Zstd => zstd::stream::read::Decoder::new(data).and_then(|mut decoder| decoder.read_to_end(&mut out)),
            Compression::Zlib => flate2::read::ZlibDecoder::new(data).read_to_end(&mut out),
        };
        read.map(|_| out).map_err(|source| Undecodable { compression: self, source })
    }

    /// The first `len` bytes (or fewer, if it holds fewer) of a record compressed by
    /// [`Compression::compress`], decompressing no more than that.
    pub fn decompress_prefix(self, data: &[u8], len: usize) -> Result<Vec<u8>, Undecodable> {
        let mut out = Vec::with_capacity(len);
        let limit = len as u64;
        let read = match self {
            Compression::Gzip => flate2::read::MultiGzDecoder::new(data).take(limit).read_to_end(&mut out),
            Compression::Zstd => zstd::stream::read::Decoder::new(data).and_then(|decoder| decoder.take(limit).read_to_end(&mut out)),
            Compression::Zlib => flate2::read::ZlibDecoder::new(data).take(limit).read_to_end(&mut out),
        };
        read.map(|_| out).map_err(|source| Undecodable { compression: self, source })
    }

    /// How many bytes compressing `len` bytes may add at most: incompressible data is stored, in
    /// blocks with a few bytes of framing each, behind a header and a trailer.
    pub fn max_growth(self, len: u64) -> u64 {
        match self {
            // Stored deflate blocks: 5 bytes per 16 KiB at worst; 18 bytes of header and trailer.
            Compression::Gzip | Compression::Zlib => len.div_ceil(16 * 1024) * 5 + 64,
            // ZSTD_COMPRESSBOUND: len / 256 plus a frame's header.
            Compression::Zstd => len / 256 + 64 + if len < 128 * 1024 { (128 * 1024 - len) >> 11 } else { 0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const BOTH: [Compression; 3] = [Compression::Gzip, Compression::Zstd, Compression::Zlib];

    #[test]
    fn seed_like_lines_shrink_several_fold_and_gzip_members_concatenate_as_zcat_reads_them() {
        let lines: String = (0..300)
            .map(|seq| {
                format!(
                    "{{\"board_id\": {}, \"playtime\": {}, \"interest\": \"test_fluentd_firehose\", \"seq\": {seq}}}\n",
                    seq * 7919 % 1_000_003,
                    seq % 16
                )
            })
            .collect();
        for compression in BOTH {
            let compressed = compression.compress(lines.as_bytes());
            assert!(compressed.len() * 4 < lines.len(), "{compression:?}: {} of {} bytes", compressed.len(), lines.len());
        }
        let (first, second) = lines.split_at(lines.len() / 2);
        let mut object = Compression::Gzip.compress(first.as_bytes());
        object.extend(Compression::Gzip.compress(second.as_bytes()));
        assert_eq!(Compression::Gzip.decompress(&object).expect("two members"), lines.as_bytes());
    }

    #[test]
    fn bytes_that_are_not_a_compressed_record_are_an_error() {
        for compression in BOTH {
            assert!(compression.decompress(b"plainly not compressed").is_err(), "{compression:?}");
        }
    }

    proptest! {
        #[test]
        fn any_record_comes_back_whole_and_grows_at_most_as_said(
            data in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..70_000),
                proptest::collection::vec(0u8..4, 0..70_000),
            ],
        ) {
            for compression in BOTH {
                let compressed = compression.compress(&data);
                prop_assert!(compressed.len() as u64 <= data.len() as u64 + compression.max_growth(data.len() as u64));
                prop_assert_eq!(compression.decompress(&compressed).expect("decompresses"), data.clone());
                let prefix = compression.decompress_prefix(&compressed, 1_000).expect("a prefix");
                prop_assert_eq!(&prefix[..], &data[..data.len().min(1_000)]);
            }
        }
    }
}
