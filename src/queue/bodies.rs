//! Where the bytes of pending chunks live: a fixed set of sled trees per route ("body slots"),
//! chunk `seq` in slot `seq % slots`, keyed by its sequence number.
//!
//! Why not in the route's tree next to everything else: sled keeps up to 16 entries in a leaf
//! node and rewrites the whole node every 10 changes to it and on every split. With 256 KiB
//! chunks in the route's tree each chunk was written about four times over (frames, node
//! rewrites, splits) and, over 128 KiB, as files of their own: half of tailhose's CPU went
//! there (docs/performance.md). A queue is first in, first out, so consecutive sequence numbers
//! spread over the slots leave each slot tree holding about one chunk while fewer than `slots`
//! chunks are pending, and each chunk is written about once.
//!
//! Invariants:
//! - A pending chunk's body is written in the same sled transaction as its pending entry and
//!   the read position that covers it ([`RouteQueue::append`](super::RouteQueue::append)), so a
//!   crash keeps both or neither.
//! - A body is deleted after the pending entry that refers to it. A crash in between leaves a
//!   body that no pending entry refers to; start-up deletes it ([`super::recovery`]).
//! - A pending entry whose body is missing is a damaged chunk: set aside and re-read from the
//!   source, never sent.
//! - The number of slots of a route is stored in the route's tree at its creation and never
//!   changes afterwards; only new routes would get another number.

use sled::IVec;

use super::chunk::ChunkSeq;
use super::keys;
use super::QueueError;

/// Slots of a new route: enough that the usual backlog (`max_read_ahead_bytes`, 6 MiB by
/// default, is 24 chunks of 256 KiB, plus those in flight) never puts two chunks in one slot.
pub const NEW_ROUTE_SLOTS: u16 = 64;

/// The body trees of one route.
#[derive(Clone)]
pub(crate) struct ChunkBodies {
    slots: Vec<sled::Tree>,
}

impl ChunkBodies {
    /// Opens the body trees of `route`, whose own tree is `route_tree`: as many as that tree
    /// records, or [`NEW_ROUTE_SLOTS`] (recorded now) for a route that has none yet.
    pub fn open(db: &sled::Db, route_tree: &sled::Tree, route: &str) -> Result<ChunkBodies, QueueError> {
        let slot_key = keys::meta_key(keys::BODY_SLOTS);
        let stored = route_tree.get(&slot_key)?.and_then(|value| <[u8; 2]>::try_from(value.as_ref()).ok().map(u16::from_be_bytes));
        let count = match stored {
            Some(count) if count > 0 => count,
            _ => {
                route_tree.insert(&slot_key, &NEW_ROUTE_SLOTS.to_be_bytes()[..])?;
                NEW_ROUTE_SLOTS
            }
        };
        let slots = (0..count).map(|slot| db.open_tree(tree_name(route, slot))).collect::<Result<Vec<_>, _>>()?;
        Ok(ChunkBodies { slots })
    }

    /// The tree that holds chunk `seq`'s body.
    pub fn slot(&self, seq: ChunkSeq) -> &sled::Tree {
        // `slots` is never empty (see `open`), and the remainder is below its length.
        &self.slots[(seq.0 % self.slots.len() as u64) as usize]
    }

    pub fn key(seq: ChunkSeq) -> [u8; 8] {
        seq.0.to_be_bytes()
    }

    pub fn get(&self, seq: ChunkSeq) -> Result<Option<IVec>, QueueError> {
        Ok(self.slot(seq).get(Self::key(seq))?)
    }

    /// The stored bytes of pending chunk `seq`, given its pending entry's value: its body, or the
    /// entry itself for a chunk written before body slots. Empty when the body is missing, which
    /// [`super::chunk::decode_chunk`] reports as [`super::ChunkError::Missing`].
    pub fn pending_chunk_bytes(&self, seq: ChunkSeq, pending_value: IVec) -> Result<IVec, QueueError> {
        if is_inline_chunk(&pending_value) {
            return Ok(pending_value);
        }
        Ok(self.get(seq)?.unwrap_or_default())
    }

    /// Deletes the bodies of chunks whose pending entries are gone. Not flushed: a body that
    /// survives a crash is found by [`ChunkBodies::unreferenced`] at the next start.
    pub fn remove_all(&self, seqs: impl IntoIterator<Item = ChunkSeq>) -> Result<(), QueueError> {
        for seq in seqs {
            self.slot(seq).remove(Self::key(seq))?;
        }
        Ok(())
    }

    /// Sequence numbers of stored bodies that `is_pending` says no pending entry refers to.
    pub fn unreferenced(&self, is_pending: impl Fn(ChunkSeq) -> bool) -> Result<Vec<ChunkSeq>, QueueError> {
        let mut found = Vec::new();
        for slot in &self.slots {
            for key in slot.iter().keys() {
                let key = key?;
                let seq = <[u8; 8]>::try_from(key.as_ref()).map(|bytes| ChunkSeq(u64::from_be_bytes(bytes)));
                match seq {
                    Ok(seq) if is_pending(seq) => {}
                    Ok(seq) => found.push(seq),
                    // Not a key this module writes: left alone.
                    Err(_) => {}
                }
            }
        }
        Ok(found)
    }
}

/// What a pending entry in the route's tree holds: nothing when the body is in its slot, the
/// whole chunk when the entry was written by tailhose 0.1 (before body slots).
fn is_inline_chunk(pending_value: &[u8]) -> bool {
    !pending_value.is_empty()
}

fn tree_name(route: &str, slot: u16) -> String {
    format!("{BODY_TREE_PREFIX}{route}#{slot}")
}

/// Prefix of body tree names, distinct from the route trees' `route:`.
pub const BODY_TREE_PREFIX: &str = "bodies:";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_layout_is_frozen() {
        assert_eq!(tree_name("tail->firehose", 7), "bodies:tail->firehose#7");
        assert_eq!(ChunkBodies::key(ChunkSeq(0x0102)), [0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(keys::meta_key(keys::BODY_SLOTS), b"\x00body_slots");
        assert!(!is_inline_chunk(b""));
        assert!(is_inline_chunk(b"THCK"));
    }
}
