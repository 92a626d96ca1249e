//! Repository format 1, read only: what `snapfs upgrade` needs to convert
//! a repository written by an earlier release. Format 1 stored each
//! directory as one tree chunk (every entry, with its chunk list inline)
//! and times as one i64 of nanoseconds; blob frames and packs are the same
//! as in format 2, and so are records but for owner names
//! (`record::decode_record_v1`). Decoders here check what format 1's own
//! decoders did.

use crate::error::{Error, Result};
use crate::format::codec::Decoder;
use crate::format::names::name_problem;
use crate::format::tree::{ChunkList, FileTime, Kind, MAX_NODES, Meta, decode_xattrs};
use crate::ids::TreeHash;

const TREE_FORMAT: u8 = 1;

/// What a format-1 entry points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    File(ChunkList),
    Dir { tree: TreeHash, nodes: u64 },
    Symlink(Vec<u8>),
    Special,
}

/// One name of a format-1 tree. `meta` holds its times as format 2 does
/// (converted from nanoseconds, which always fit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: Vec<u8>,
    pub kind: Kind,
    pub meta: Meta,
    pub link_key: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Body,
}

/// The smallest encoded format-1 entry.
const MIN_ENTRY_LEN: usize = 1 + 1 + 11 + 1 + 1;

/// Decode a format-1 tree: names valid and strictly rising, node counts
/// that add up without overflow, nothing after the last entry.
pub fn decode_tree(data: &[u8]) -> Result<Vec<Entry>> {
    let mut d = Decoder::new(data);
    let format = d.u8()?;
    if format != TREE_FORMAT {
        return Err(Error::corrupt(format!("unknown tree format {format}")));
    }
    let n = d.count(MIN_ENTRY_LEN)?;
    let mut out: Vec<Entry> = Vec::with_capacity(n);
    let mut nodes: u64 = 0;
    for _ in 0..n {
        let name = d.bytes()?.to_vec();
        let show = || name.escape_ascii().to_string();
        if let Some(why) = name_problem(&name) {
            return Err(Error::corrupt(format!("tree entry \"{}\": {why}", show())));
        }
        if out.last().is_some_and(|prev| prev.name >= name) {
            return Err(Error::corrupt(format!(
                "tree entry \"{}\": names are duplicated or out of order",
                show()
            )));
        }
        let kind = Kind::from_u8(d.u8()?)?;
        let (mode, uid, gid, size) = (d.u32()?, d.u32()?, d.u32()?, d.u64()?);
        let (mtime, ctime, atime) = (d.i64()?, d.i64()?, d.i64()?);
        let meta = Meta {
            mode,
            uid,
            gid,
            size,
            mtime: FileTime::from_ns(mtime),
            ctime: FileTime::from_ns(ctime),
            atime: FileTime::from_ns(atime),
            rdev: d.u64()?,
            ino: d.u64()?,
            nlink: d.u64()?,
            blocks: d.u64()?,
        };
        let link_key = d.u64()?;
        let xattrs = decode_xattrs(d.bytes()?)?;
        let body = match kind {
            Kind::File => Body::File(ChunkList::validate(d.bytes()?.to_vec())?),
            Kind::Dir => Body::Dir {
                tree: TreeHash(d.hash()?),
                nodes: d.u64()?,
            },
            Kind::Symlink => Body::Symlink(d.bytes()?.to_vec()),
            _ => Body::Special,
        };
        let span = match &body {
            Body::Dir { nodes, .. } => nodes.checked_add(1),
            _ => Some(1),
        };
        nodes = span
            .and_then(|s| nodes.checked_add(s))
            .filter(|&t| t <= MAX_NODES)
            .ok_or_else(|| {
                Error::corrupt(format!("tree entry \"{}\": node count overflows", show()))
            })?;
        out.push(Entry {
            name,
            kind,
            meta,
            link_key,
            xattrs,
            body,
        });
    }
    d.finish("tree")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::codec::{Encoder, mutate};
    use proptest::prelude::*;

    /// A format-1 tree as its writer encoded it: one fifo entry.
    fn fifo_tree(name: &[u8], mtime_ns: i64) -> Vec<u8> {
        let mut e = Encoder::new();
        e.u8(TREE_FORMAT);
        e.u64(1);
        e.bytes(name);
        e.u8(Kind::Fifo as u8);
        for v in [0o10644u64, 1, 2, 0] {
            e.u64(v);
        }
        e.i64(mtime_ns);
        e.i64(mtime_ns);
        e.i64(mtime_ns);
        for v in [0u64, 7, 1, 0, 0] {
            e.u64(v);
        }
        e.bytes(&[]);
        e.buf
    }

    #[test]
    fn format_1_trees_decode_with_their_times() {
        let t = decode_tree(&fifo_tree(b"p", -1)).unwrap();
        assert_eq!(t[0].meta.mtime, FileTime::from_stat(-1, 999_999_999));
        assert_eq!(t[0].kind, Kind::Fifo);
        assert!(decode_tree(&fifo_tree(b"..", 0)).is_err());
        let mut b = fifo_tree(b"p", 0);
        b.push(0);
        assert!(decode_tree(&b).is_err());
    }

    proptest! {
        #![proptest_config(mutate::config())]

        #[test]
        fn damaged_format_1_trees_decode_or_fail(b in mutate::damaged(fifo_tree(b"p", 5))) {
            let _ = decode_tree(&b);
        }

    }
}
