//! Sets of byte ranges of a file, as the queue keeps them for the ranges a file still owes.

use std::collections::BTreeMap;

/// Disjoint, non-adjacent byte ranges `[start, end)`, kept merged.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ByteRanges(BTreeMap<u64, u64>);

impl ByteRanges {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(&start, &end)| (start, end))
    }

    /// Whether `offset` lies in one of the ranges.
    pub fn contains(&self, offset: u64) -> bool {
        self.0.range(..=offset).next_back().is_some_and(|(_, &end)| offset < end)
    }

    /// Adds `[start, end)`, merging it with the ranges it overlaps or touches.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut start, mut end) = (start, end);
        let touching: Vec<(u64, u64)> = self
            .0
            .range(..=end)
            .rev()
            .take_while(|(_, &range_end)| range_end >= start)
            .map(|(&range_start, &range_end)| (range_start, range_end))
            .collect();
        for (range_start, range_end) in touching {
            self.0.remove(&range_start);
            start = start.min(range_start);
            end = end.max(range_end);
        }
        self.0.insert(start, end);
    }

    /// Removes `[start, end)`, splitting a range it falls inside.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let overlapping: Vec<(u64, u64)> = self
            .0
            .range(..end)
            .rev()
            .take_while(|(_, &range_end)| range_end > start)
            .map(|(&range_start, &range_end)| (range_start, range_end))
            .collect();
        for (range_start, range_end) in overlapping {
            self.0.remove(&range_start);
            if range_start < start {
                self.0.insert(range_start, start);
            }
            if end < range_end {
                self.0.insert(end, range_end);
            }
        }
    }

    /// These ranges without what `covered` (start → end, as pending chunks) holds.
    pub fn less(&self, covered: &BTreeMap<u64, u64>) -> ByteRanges {
        let mut left = self.clone();
        for (&start, &end) in covered {
            left.remove(start, end);
        }
        left
    }

    /// Value under a `FileOwed` key: `version: u8 = 1 ‖ count: u32 LE ‖ count × (start: u64 LE ‖ end: u64 LE)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(5 + 16 * self.0.len());
        bytes.push(OWED_VERSION);
        bytes.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        for (start, end) in self.iter() {
            bytes.extend_from_slice(&start.to_le_bytes());
            bytes.extend_from_slice(&end.to_le_bytes());
        }
        bytes
    }

    /// `None` for a value of another version or length.
    pub fn decode(bytes: &[u8]) -> Option<ByteRanges> {
        if *bytes.first()? != OWED_VERSION {
            return None;
        }
        let count = u32::from_le_bytes(bytes.get(1..5)?.try_into().ok()?) as usize;
        let body = bytes.get(5..)?;
        if body.len() != count.checked_mul(16)? {
            return None;
        }
        let mut ranges = ByteRanges::default();
        for pair in body.chunks_exact(16) {
            let start = u64::from_le_bytes(pair[..8].try_into().ok()?);
            let end = u64::from_le_bytes(pair[8..].try_into().ok()?);
            ranges.insert(start, end);
        }
        Some(ranges)
    }
}

const OWED_VERSION: u8 = 1;

/// The parts of `[from, to)` that no range in `covered` (start → end) overlaps.
pub fn uncovered_ranges(from: u64, to: u64, covered: &BTreeMap<u64, u64>) -> Vec<(u64, u64)> {
    let mut gaps = Vec::new();
    let mut cursor = from;
    for (&start, &end) in covered {
        if end <= cursor {
            continue;
        }
        if start > cursor {
            gaps.push((cursor, start.min(to)));
        }
        cursor = cursor.max(end);
        if cursor >= to {
            break;
        }
    }
    if cursor < to {
        gaps.push((cursor, to));
    }
    gaps.retain(|(start, end)| start < end);
    gaps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(pairs: &[(u64, u64)]) -> ByteRanges {
        let mut ranges = ByteRanges::default();
        for &(start, end) in pairs {
            ranges.insert(start, end);
        }
        ranges
    }

    #[test]
    fn inserted_ranges_merge_when_they_touch_or_overlap() {
        let merged = ranges(&[(10, 20), (30, 40), (20, 25), (35, 50), (0, 5)]);
        assert_eq!(merged.iter().collect::<Vec<_>>(), vec![(0, 5), (10, 25), (30, 50)]);
        assert_eq!(ranges(&[(10, 20), (0, 100)]).iter().collect::<Vec<_>>(), vec![(0, 100)]);
        assert!(merged.contains(10) && merged.contains(24) && !merged.contains(25) && !merged.contains(5));
    }

    #[test]
    fn removed_ranges_split_what_they_fall_inside() {
        let mut owed = ranges(&[(0, 100), (200, 300)]);
        owed.remove(10, 20);
        owed.remove(250, 400);
        owed.remove(0, 10);
        assert_eq!(owed.iter().collect::<Vec<_>>(), vec![(20, 100), (200, 250)]);
        owed.remove(0, 1000);
        assert!(owed.is_empty());
    }

    #[test]
    fn less_takes_out_what_is_covered() {
        let owed = ranges(&[(0, 100), (200, 300)]);
        let covered = BTreeMap::from([(0, 10), (50, 60), (250, 400)]);
        assert_eq!(owed.less(&covered).iter().collect::<Vec<_>>(), vec![(10, 50), (60, 100), (200, 250)]);
    }

    #[test]
    fn encoding_round_trips_and_refuses_a_wrong_length() {
        let owed = ranges(&[(0, 100), (200, 300)]);
        assert_eq!(ByteRanges::decode(&owed.encode()), Some(owed.clone()));
        let mut cut = owed.encode();
        cut.pop();
        assert_eq!(ByteRanges::decode(&cut), None);
    }

    #[test]
    fn uncovered_ranges_find_holes_between_and_after_chunks() {
        let covered = BTreeMap::from([(0, 100), (200, 300)]);
        assert_eq!(uncovered_ranges(0, 400, &covered), vec![(100, 200), (300, 400)]);
        assert_eq!(uncovered_ranges(0, 300, &covered), vec![(100, 200)]);
        assert_eq!(uncovered_ranges(250, 300, &covered), vec![]);
        assert_eq!(uncovered_ranges(50, 120, &BTreeMap::new()), vec![(50, 120)]);
    }
}
