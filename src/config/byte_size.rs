//! Byte sizes in configuration: an integer (bytes) or a string with a binary or decimal unit.

use serde::{Deserialize, Deserializer};

/// A number of bytes, written `1048576`, `"1MiB"`, `"512KiB"` or `"1GB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"<number><unit>"`; units are B, KB, MB, GB (powers of 1000) and KiB, MiB, GiB
    /// (powers of 1024), case-insensitive, with optional spaces.
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(digits_end);
        let number: u64 =
            number.parse().map_err(|_| format!("`{text}` is not a size: expected a number with an optional unit such as \"64MiB\""))?;
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            other => return Err(format!("`{other}` is not a size unit; use B, KiB, MiB, GiB, KB, MB or GB")),
        };
        number.checked_mul(multiplier).map(ByteSize).ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(u64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Bytes(bytes) => Ok(ByteSize(bytes)),
            Written::Text(text) => ByteSize::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ByteSize;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(ByteSize::parse("1MiB"), Ok(ByteSize(1 << 20)));
        assert_eq!(ByteSize::parse("4 mib"), Ok(ByteSize(4 << 20)));
        assert_eq!(ByteSize::parse("1000KiB"), Ok(ByteSize(1000 * 1024)));
        assert_eq!(ByteSize::parse("2GB"), Ok(ByteSize(2_000_000_000)));
        assert_eq!(ByteSize::parse("17"), Ok(ByteSize(17)));
    }

    #[test]
    fn sizes_without_a_number_or_with_an_unknown_unit_are_rejected() {
        assert!(ByteSize::parse("MiB").is_err());
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert!(ByteSize::parse("99999999999999GiB").is_err());
    }
}
