//! KPL aggregation: several user records in one Kinesis record, in the format of the Kinesis
//! Producer Library, so that a KCL consumer or a Lambda with AWS's deaggregation library gets
//! the original records back, each with its partition key.
//!
//! An aggregated record is, byte by byte (docs/kinesis-streams.md has the whole layout):
//!
//! ```text
//! F3 89 9A C2 | AggregatedRecord (protobuf) | MD5 of the protobuf message (16 bytes)
//! ```
//!
//! where `AggregatedRecord` is `repeated string partition_key_table = 1; repeated string
//! explicit_hash_key_table = 2; repeated Record records = 3;` and each `Record` is `required
//! uint64 partition_key_index = 1; optional uint64 explicit_hash_key_index = 2; required bytes
//! data = 3;`. tailhose writes one partition key per aggregated record (the record's own, index
//! 0 for every user record) and no explicit hash keys, as Fluentd's `kinesis_streams_aggregated`
//! does: an aggregated record lands on one shard whatever its user records' keys.
//!
//! The flusher builds the body (the framed user records, field 3) as it packs a batch, one
//! record at a time, exactly as it packs lines ([`super::OutgoingRecords`]); the sink wraps a
//! body into an aggregated record when it sends it ([`aggregated_record`]), once it knows the
//! partition key. Guarantees (tested below, and end to end with the PyPI `aws-kinesis-agg`
//! package): [`user_records`] of a body gives back the data framed into it, in order; an
//! aggregated record deaggregates to those data, each with the record's partition key.

use md5::{Digest, Md5};

/// Bytes of user records an aggregated record's body holds at most (more than one record): with
/// its envelope (a partition key of up to 256 ASCII characters) it stays within one 25 KB
/// (25,600-byte) Kinesis billing unit. The KPL's default is 50 KB; at 25 KB a shard's limit of
/// 1,000 records a second is 25 MB/s of user records, far past its 1 MiB/s: the bytes limit is
/// always met first.
pub const BODY_MAX_BYTES: u64 = 25_000 - 300;

/// The first four bytes of every aggregated record.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;

/// Protobuf keys (field number << 3 | wire type) of the fields tailhose writes.
const PARTITION_KEY_TABLE: u8 = 1 << 3 | 2;
const RECORDS: u8 = 3 << 3 | 2;
const PARTITION_KEY_INDEX: u8 = 1 << 3;
const DATA: u8 = 3 << 3 | 2;

/// An aggregated record tailhose cannot read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a KPL aggregated record: {0}")]
pub struct Malformed(&'static str);

/// Bytes a user record of `data_len` bytes takes in a body.
pub fn framed_len(data_len: usize) -> usize {
    let record_len = record_len(data_len);
    1 + varint_len(record_len as u64) + record_len
}

/// Bytes of one `Record` message with `data_len` bytes of data, partition key index 0.
fn record_len(data_len: usize) -> usize {
    2 + 1 + varint_len(data_len as u64) + data_len
}

/// Bytes an aggregated record adds around its body: the magic, the partition key table (one key
/// of `partition_key_len` bytes) and the digest.
pub fn envelope_len(partition_key_len: usize) -> usize {
    MAGIC.len() + 1 + varint_len(partition_key_len as u64) + partition_key_len + DIGEST_LEN
}

/// Appends `data` (then a newline, when `newline` is set) to `body` as one more user record.
pub fn append_user_record(body: &mut Vec<u8>, data: &[u8], newline: bool) {
    let data_len = data.len() + usize::from(newline);
    body.push(RECORDS);
    push_varint(body, record_len(data_len) as u64);
    body.extend_from_slice(&[PARTITION_KEY_INDEX, 0, DATA]);
    push_varint(body, data_len as u64);
    body.extend_from_slice(data);
    if newline {
        body.push(b'\n');
    }
}

/// The aggregated record of `body`, every user record with `partition_key`.
pub fn aggregated_record(partition_key: &str, body: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(envelope_len(partition_key.len()) + body.len());
    record.extend_from_slice(&MAGIC);
    record.push(PARTITION_KEY_TABLE);
    push_varint(&mut record, partition_key.len() as u64);
    record.extend_from_slice(partition_key.as_bytes());
    record.extend_from_slice(body);
    let digest = Md5::digest(&record[MAGIC.len()..]);
    record.extend_from_slice(&digest);
    record
}

/// Bytes from an aggregated record's start that hold its partition key, at most: the magic,
/// the table's key and length, and the longest key (256 characters of 4 bytes).
pub const KEY_PREFIX_MAX_BYTES: usize = MAGIC.len() + 1 + 2 + 1024;

/// The partition key in an aggregated record's table (from its first
/// [`KEY_PREFIX_MAX_BYTES`] bytes): the key its user records have, and so the key it must be
/// sent with, for a KCL consumer keeps only the user records whose key hashes into its shard.
pub fn partition_key(record: &[u8]) -> Option<&str> {
    let mut reader = Reader(record.strip_prefix(&MAGIC)?);
    if reader.byte().ok()? != PARTITION_KEY_TABLE {
        return None;
    }
    std::str::from_utf8(reader.length_delimited().ok()?).ok()
}

/// The data of each user record framed in `body`, in order.
pub fn user_records(body: &[u8]) -> Result<Vec<&[u8]>, Malformed> {
    let mut reader = Reader(body);
    let mut records = Vec::new();
    while !reader.0.is_empty() {
        if reader.byte()? != RECORDS {
            return Err(Malformed("a body holds only records"));
        }
        let mut record = Reader(reader.length_delimited()?);
        let mut data = None;
        while !record.0.is_empty() {
            match record.byte()? {
                PARTITION_KEY_INDEX => {
                    record.varint()?;
                }
                DATA => data = Some(record.length_delimited()?),
                _ => return Err(Malformed("a record field tailhose does not write")),
            }
        }
        records.push(data.ok_or(Malformed("a record without data"))?);
    }
    Ok(records)
}

/// An aggregated record read back: its partition key table and its user records' data, after
/// its digest is checked. For tests and inspection; consumers use AWS's libraries.
pub fn deaggregate(record: &[u8]) -> Result<(Vec<String>, Vec<Vec<u8>>), Malformed> {
    let message = record
        .strip_prefix(&MAGIC)
        .and_then(|rest| rest.len().checked_sub(DIGEST_LEN).map(|end| rest.split_at(end)))
        .ok_or(Malformed("no magic number or digest"))?;
    let (message, digest) = message;
    if Md5::digest(message).as_slice() != digest {
        return Err(Malformed("the digest does not match"));
    }
    let mut reader = Reader(message);
    let mut keys = Vec::new();
    let mut body_start = message.len();
    while !reader.0.is_empty() {
        let at = message.len() - reader.0.len();
        if reader.0[0] == RECORDS {
            body_start = at;
            break;
        }
        if reader.byte()? != PARTITION_KEY_TABLE {
            return Err(Malformed("a table field tailhose does not write"));
        }
        let key = reader.length_delimited()?;
        keys.push(String::from_utf8(key.to_vec()).map_err(|_| Malformed("a partition key that is not UTF-8"))?);
    }
    let records = user_records(&message[body_start..])?.into_iter().map(<[u8]>::to_vec).collect();
    Ok((keys, records))
}

fn varint_len(mut value: u64) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads protobuf from the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, Malformed> {
        let (&first, rest) = self.0.split_first().ok_or(Malformed("cut short"))?;
        self.0 = rest;
        Ok(first)
    }

    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Malformed("a varint longer than ten bytes"))
    }

    fn length_delimited(&mut self) -> Result<&'a [u8], Malformed> {
        let len = usize::try_from(self.varint()?).map_err(|_| Malformed("a length past memory"))?;
        if len > self.0.len() {
            return Err(Malformed("a length past the end"));
        }
        let (field, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(field)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The aggregated record of "a" and "bc" with partition key "k", written out by hand from the
    /// KPL's `messages.proto`: the bytes any KPL implementation writes for the same records.
    #[test]
    fn two_records_aggregate_to_the_kpl_bytes() {
        let mut body = Vec::new();
        append_user_record(&mut body, b"a", false);
        append_user_record(&mut body, b"bc", true);
        let record = aggregated_record("k", &body);
        let message: &[u8] = &[
            0x0A, 1, b'k', // partition_key_table: "k"
            0x1A, 5, 0x08, 0, 0x1A, 1, b'a', // records: {partition_key_index: 0, data: "a"}
            0x1A, 7, 0x08, 0, 0x1A, 3, b'b', b'c', b'\n',
        ];
        assert_eq!(&record[..4], &MAGIC);
        assert_eq!(&record[4..record.len() - 16], message);
        assert_eq!(&record[record.len() - 16..], Md5::digest(message).as_slice());
        assert_eq!(record.len(), envelope_len(1) + body.len());
        assert_eq!(body.len(), framed_len(1) + framed_len(3));
    }

    #[test]
    fn a_damaged_record_is_refused_not_misread() {
        let mut body = Vec::new();
        append_user_record(&mut body, b"record", false);
        let mut record = aggregated_record("key", &body);
        let last = record.len() - 1;
        record[last] ^= 1;
        assert!(deaggregate(&record).is_err());
        assert!(user_records(&body[..body.len() - 1]).is_err());
        assert!(user_records(&[0x1A, 0x80]).is_err());
    }

    proptest! {
        #[test]
        fn a_body_gives_back_its_records_and_its_framed_length(
            records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..40),
            key in "\\PC{1,256}",
            newline in any::<bool>(),
        ) {
            let mut body = Vec::new();
            for data in &records {
                let before = body.len();
                append_user_record(&mut body, data, newline);
                prop_assert_eq!(body.len() - before, framed_len(data.len() + usize::from(newline)));
            }
            let expected: Vec<Vec<u8>> = records
                .iter()
                .map(|data| data.iter().copied().chain(newline.then_some(b'\n')).collect())
                .collect();
            let read: Vec<Vec<u8>> = user_records(&body).expect("readable").into_iter().map(<[u8]>::to_vec).collect();
            prop_assert_eq!(&read, &expected);
            let record = aggregated_record(&key, &body);
            prop_assert_eq!(record.len(), envelope_len(key.len()) + body.len());
            let (keys, data) = deaggregate(&record).expect("deaggregates");
            prop_assert_eq!(partition_key(&record[..record.len().min(KEY_PREFIX_MAX_BYTES)]), Some(key.as_str()));
            prop_assert_eq!(keys, vec![key]);
            prop_assert_eq!(data, expected);
        }

        #[test]
        fn any_bytes_read_as_a_body_are_records_or_an_error_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = user_records(&bytes);
            let _ = deaggregate(&bytes);
        }
    }
}
