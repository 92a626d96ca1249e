//! The domain model of a snapshot: directory entries with their metadata, and
//! the encoded forms of a directory (tree) and of a file's chunk list.
//!
//! A tree is encoded with every entry's full metadata and, for files, the whole
//! chunk list inline. The encoding is stored in a pack as a metadata chunk, so
//! a lost catalog can be rebuilt from packs alone, and its chunk id is the
//! tree's hash, so an unchanged directory is the same row in every snapshot.

use crate::codec::{Decoder, Encoder};
use crate::error::{Error, Result};
use crate::ids::{ChunkId, ContentHash, TreeHash};

const TREE_FORMAT: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    Fifo = 4,
    CharDev = 5,
    BlockDev = 6,
}

impl Kind {
    pub fn from_u8(v: u8) -> Result<Kind> {
        Ok(match v {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::Fifo,
            5 => Kind::CharDev,
            6 => Kind::BlockDev,
            _ => return Err(Error::corrupt(format!("unknown entry kind {v}"))),
        })
    }

    /// The kind from an `st_mode`, or None for sockets (not kept).
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => return None,
        })
    }
}

/// Inode metadata as recorded; `mode` is the full `st_mode` (type and permission bits).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub atime_ns: i64,
    pub rdev: u64,
    /// Source inode number: part of the "unchanged?" test of the next ingest.
    pub ino: u64,
    /// Link count at the source (the count inside a snapshot is in `hardlinks`).
    pub nlink: u64,
    /// 512-byte blocks allocated at the source, so sparse files report sensibly.
    pub blocks: u64,
}

impl Meta {
    pub fn from_stat(m: &std::fs::Metadata) -> Meta {
        use std::os::unix::fs::MetadataExt;
        Meta {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            atime_ns: m.atime() * 1_000_000_000 + m.atime_nsec(),
            rdev: m.rdev(),
            ino: m.ino(),
            nlink: m.nlink(),
            blocks: m.blocks(),
        }
    }
}

/// One chunk of a file: its id and its uncompressed length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub len: u32,
}

/// The ordered chunk list of a file's content, in its stored encoding:
/// 36 bytes per chunk (id, little-endian length), so an offset lookup needs no
/// decoding beyond slicing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkList(pub Vec<u8>);

impl ChunkList {
    pub const REC: usize = 36;

    pub fn push(&mut self, c: ChunkRef) {
        self.0.extend_from_slice(&c.id.0.0);
        self.0.extend_from_slice(&c.len.to_le_bytes());
    }

    pub fn len(&self) -> usize {
        self.0.len() / Self::REC
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, i: usize) -> ChunkRef {
        let r = &self.0[i * Self::REC..(i + 1) * Self::REC];
        ChunkRef {
            id: ChunkId(crate::ids::Hash::from_slice(&r[..32]).expect("32 bytes")),
            len: u32::from_le_bytes(r[32..36].try_into().expect("4 bytes")),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = ChunkRef> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    pub fn total(&self) -> u64 {
        self.iter().map(|c| u64::from(c.len)).sum()
    }

    pub fn hash(&self) -> ContentHash {
        ContentHash(crate::ids::Hash::of(&self.0))
    }

    pub fn validate(bytes: Vec<u8>) -> Result<ChunkList> {
        if !bytes.len().is_multiple_of(Self::REC) {
            return Err(Error::corrupt("chunk list has a partial record"));
        }
        Ok(ChunkList(bytes))
    }
}

/// What an entry points at besides its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// A regular file's chunks (empty for an empty file).
    File(ChunkList),
    /// A directory: its tree and the number of nodes beneath it.
    Dir {
        tree: TreeHash,
        nodes: u64,
    },
    Symlink(Vec<u8>),
    /// Fifo and device nodes: everything is in the metadata.
    Special,
}

/// One name in a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: Vec<u8>,
    pub kind: Kind,
    pub meta: Meta,
    /// Non-zero for files with more than one link at the source: equal keys
    /// inside one snapshot are one inode.
    pub link_key: u64,
    /// Extended attributes (POSIX ACLs included), sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: Body,
}

impl Entry {
    /// Nodes this entry accounts for in depth-first numbering: itself plus
    /// everything beneath it.
    pub fn span(&self) -> u64 {
        match &self.body {
            Body::Dir { nodes, .. } => 1 + nodes,
            _ => 1,
        }
    }
}

pub fn encode_xattrs(x: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    if x.is_empty() {
        return Vec::new();
    }
    let mut e = Encoder::new();
    e.u64(x.len() as u64);
    for (k, v) in x {
        e.bytes(k);
        e.bytes(v);
    }
    e.buf
}

pub fn decode_xattrs(b: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    if b.is_empty() {
        return Ok(Vec::new());
    }
    let mut d = Decoder::new(b);
    let n = d.u64()?;
    let mut out = Vec::new();
    for _ in 0..n {
        out.push((d.bytes()?.to_vec(), d.bytes()?.to_vec()));
    }
    Ok(out)
}

/// Encode a directory's entries (sorted by name) into the bytes stored in a pack.
pub fn encode_tree(entries: &[Entry]) -> Vec<u8> {
    let mut e = Encoder::new();
    e.u8(TREE_FORMAT);
    e.u64(entries.len() as u64);
    for en in entries {
        e.bytes(&en.name);
        e.u8(en.kind as u8);
        let m = &en.meta;
        for v in [m.mode as u64, m.uid as u64, m.gid as u64, m.size] {
            e.u64(v);
        }
        e.i64(m.mtime_ns);
        e.i64(m.ctime_ns);
        e.i64(m.atime_ns);
        for v in [m.rdev, m.ino, m.nlink, m.blocks, en.link_key] {
            e.u64(v);
        }
        e.bytes(&encode_xattrs(&en.xattrs));
        match &en.body {
            Body::File(list) => e.bytes(&list.0),
            Body::Dir { tree, nodes } => {
                e.hash(&tree.0);
                e.u64(*nodes);
            }
            Body::Symlink(t) => e.bytes(t),
            Body::Special => {}
        }
    }
    e.buf
}

pub fn decode_tree(data: &[u8]) -> Result<Vec<Entry>> {
    let mut d = Decoder::new(data);
    let format = d.u8()?;
    if format != TREE_FORMAT {
        return Err(Error::corrupt(format!("unknown tree format {format}")));
    }
    let n = d.u64()?;
    let mut out = Vec::with_capacity(n.min(1 << 16) as usize);
    for _ in 0..n {
        let name = d.bytes()?.to_vec();
        let kind = Kind::from_u8(d.u8()?)?;
        let meta = Meta {
            mode: d.u32()?,
            uid: d.u32()?,
            gid: d.u32()?,
            size: d.u64()?,
            mtime_ns: d.i64()?,
            ctime_ns: d.i64()?,
            atime_ns: d.i64()?,
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
        out.push(Entry {
            name,
            kind,
            meta,
            link_key,
            xattrs,
            body,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Hash;

    #[test]
    fn tree_encoding_round_trips_odd_names_and_negative_times() {
        let mut list = ChunkList::default();
        list.push(ChunkRef {
            id: ChunkId(Hash::of(b"a")),
            len: 7,
        });
        let entries = vec![
            Entry {
                name: b"\xffodd\nname".to_vec(),
                kind: Kind::File,
                meta: Meta {
                    mode: 0o100644,
                    mtime_ns: -5,
                    size: 7,
                    ..Meta::default()
                },
                link_key: 9,
                xattrs: vec![(b"user.a".to_vec(), b"\x00v".to_vec())],
                body: Body::File(list),
            },
            Entry {
                name: b"sub".to_vec(),
                kind: Kind::Dir,
                meta: Meta::default(),
                link_key: 0,
                xattrs: vec![],
                body: Body::Dir {
                    tree: TreeHash(Hash::of(b"t")),
                    nodes: 3,
                },
            },
            Entry {
                name: b"ln".to_vec(),
                kind: Kind::Symlink,
                meta: Meta::default(),
                link_key: 0,
                xattrs: vec![],
                body: Body::Symlink(b"../x".to_vec()),
            },
        ];
        let bytes = encode_tree(&entries);
        assert_eq!(decode_tree(&bytes).unwrap(), entries);
        assert!(decode_tree(&bytes[..bytes.len() - 1]).is_err());
    }
}
