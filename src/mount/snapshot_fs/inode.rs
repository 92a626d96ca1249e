//! Inode numbers of the mount, computed, never allocated.
//!
//! Every node of a snapshot has a depth-first position (the snapshot root is
//! 0; an entry is its parent's position + 1 + its `node_offset`). The inode is
//! `snapshot id << 40 | position`, so the same path has the same number at
//! every mount, a directory shared by two snapshots is two distinct
//! directories to the kernel, and no hash can collide. Hard links take their
//! group's first position. Numbers below 2^40 are the mount's own.

use crate::error::{Error, Result};
use crate::ids::SnapshotId;

pub const ROOT: u64 = 1;
/// The `latest` symlink at the mount root has one number per snapshot it
/// points to, so the kernel never serves a cached target of an older one.
const LATEST_BASE: u64 = 1 << 39;

const POS_BITS: u32 = 40;
/// The snapshot-id bits that mean "the history view" (no real snapshot
/// reaches 2^24 - 1).
const HISTORY: u64 = (1 << 24) - 1;
const POS_MASK: u64 = (1 << POS_BITS) - 1;

/// The number of the node at `pos` of snapshot `snap`. Counts from the
/// repository reach 2^48 (a few directories shared over and over), but a
/// position of more than 40 bits would be a node of another snapshot: such
/// a node has no number, and is an error to whoever asks for it.
pub fn encode(snap: SnapshotId, pos: u64) -> Result<u64> {
    if pos > POS_MASK {
        return Err(Error::corrupt(format!(
            "snapshot {}: node {pos} lies beyond the 2^40 nodes the mount can number",
            snap.0
        )));
    }
    Ok(snapshot_root(snap) | pos)
}

/// The number of a snapshot's root directory (position 0).
pub fn snapshot_root(snap: SnapshotId) -> u64 {
    (snap.0 as u64) << POS_BITS
}

pub fn latest(snap: SnapshotId) -> u64 {
    LATEST_BASE + snap.0 as u64
}

/// The snapshot a `latest` inode points to.
pub fn latest_target(ino: u64) -> Option<SnapshotId> {
    (LATEST_BASE..1 << POS_BITS)
        .contains(&ino)
        .then(|| SnapshotId((ino - LATEST_BASE) as i64))
}

/// (snapshot, position) of an inode inside a snapshot; None for the mount's own.
pub fn decode(ino: u64) -> Option<(SnapshotId, u64)> {
    let snap = ino >> POS_BITS;
    (snap > 0 && snap != HISTORY).then_some((SnapshotId(snap as i64), ino & POS_MASK))
}

/// A directory of the history view, by its number in the mount's table.
pub fn history(seq: u64) -> u64 {
    (HISTORY << POS_BITS) | seq
}

pub fn history_seq(ino: u64) -> Option<u64> {
    (ino >> POS_BITS == HISTORY).then_some(ino & POS_MASK)
}

/// Position of an entry from its parent's position and its offset in the tree.
pub fn child_pos(parent_pos: u64, node_offset: u64) -> u64 {
    parent_pos.saturating_add(1).saturating_add(node_offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_inodes_round_trip_and_never_meet_the_mounts_own() {
        for (s, p) in [(1, 0), (1, 5), (7, POS_MASK), (1 << 20, 12345)] {
            let ino = encode(SnapshotId(s), p).unwrap();
            assert!(latest_target(ino).is_none());
            assert_eq!(decode(ino), Some((SnapshotId(s), p)));
        }
        assert_eq!(decode(ROOT), None);
        let l = latest(SnapshotId(42));
        assert_eq!(decode(l), None);
        assert_eq!(latest_target(l), Some(SnapshotId(42)));
        assert_eq!(latest_target(ROOT), None);
        let h = history(7);
        assert_eq!(history_seq(h), Some(7));
        assert_eq!(decode(h), None);
        assert_eq!(history_seq(encode(SnapshotId(3), 7).unwrap()), None);
    }

    #[test]
    fn same_path_in_two_snapshots_gets_two_numbers() {
        let pos = child_pos(child_pos(0, 3), 0);
        assert_ne!(
            encode(SnapshotId(1), pos).unwrap(),
            encode(SnapshotId(2), pos).unwrap()
        );
        assert!(encode(SnapshotId(1), POS_MASK + 1).is_err());
        assert_eq!(pos, 5);
    }
}
