//! The domain model of a snapshot: directory entries with their metadata, and
//! the encoded forms of a directory (tree) and of a file's chunk list.
//!
//! A tree is encoded with every entry's full metadata and, for files, the whole
//! chunk list inline. The encoding is stored in a pack as a metadata chunk, so
//! a lost catalog can be rebuilt from packs alone, and its chunk id is the
//! tree's hash, so an unchanged directory is the same row in every snapshot.

use crate::error::{Error, Result};
use crate::format::codec::{Decoder, Encoder};
use crate::format::names::name_problem;
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
    /// The kind's name in listings and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::CharDev => "char",
            Kind::BlockDev => "block",
        }
    }
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

    /// Chunk `i`. Lists come from [`ChunkList::validate`] (whole records
    /// only) and callers index below [`ChunkList::len`]; should either fail,
    /// the answer is an all-zero reference, whose id matches no chunk, so the
    /// read fails as damaged instead of the process panicking.
    pub fn get(&self, i: usize) -> ChunkRef {
        let r = i
            .checked_mul(Self::REC)
            .and_then(|start| self.0.get(start..start.checked_add(Self::REC)?));
        match r {
            Some(r) => ChunkRef {
                id: ChunkId(crate::ids::Hash::from_slice(&r[..32]).expect("32 bytes")),
                len: u32::from_le_bytes(r[32..36].try_into().expect("4 bytes")),
            },
            None => ChunkRef {
                id: ChunkId(crate::ids::Hash([0; 32])),
                len: 0,
            },
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

    /// A chunk list from stored bytes: whole records, each chunk no longer
    /// than any data chunk can be, so offsets summed over it cannot overflow.
    pub fn validate(bytes: Vec<u8>) -> Result<ChunkList> {
        if !bytes.len().is_multiple_of(Self::REC) {
            return Err(Error::corrupt("chunk list has a partial record"));
        }
        let list = ChunkList(bytes);
        if let Some(c) = list
            .iter()
            .find(|c| c.len as usize > crate::format::blob::MAX_DATA_CHUNK_LEN)
        {
            return Err(Error::corrupt(format!(
                "chunk list: chunk {} claims {} bytes, more than any chunk holds",
                c.id, c.len
            )));
        }
        Ok(list)
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

/// Extended attributes from their stored form: a count, then name and value
/// pairs, nothing after. Names must be non-empty (the kernel refuses empty
/// ones, and a restore would fail on them late).
pub fn decode_xattrs(b: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    if b.is_empty() {
        return Ok(Vec::new());
    }
    let mut d = Decoder::new(b);
    // Each pair is at least two length bytes.
    let n = d.count(2)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let k = d.bytes()?;
        let v = d.bytes()?;
        if k.is_empty() || k.contains(&0) {
            return Err(Error::corrupt(format!(
                "extended attribute name {:?} is invalid",
                String::from_utf8_lossy(k)
            )));
        }
        out.push((k.to_vec(), v.to_vec()));
    }
    d.finish("extended attributes")?;
    Ok(out)
}

/// Deepest nesting of directories that snapfs follows. Ingest cannot make
/// deeper trees (absolute paths end at PATH_MAX, 4096 bytes, so it stops at
/// about 2040 levels); a deeper or cyclic tree comes from a crafted or
/// damaged repository. The recursive walks take about 2 KiB of stack a
/// level, so this many fit the main thread's 8 MiB with room to spare. Import cuts it there (the rest is reported lost), and every
/// recursive walk of the catalog stops there with an error instead of
/// running out of stack on a chain, or forever on a cycle of rows.
pub const MAX_DEPTH: usize = 2500;

thread_local! {
    static DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One level of a recursive walk of the catalog (see [`descend`]).
pub struct Level(());

impl Drop for Level {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Enter one more level of a recursive walk on this thread; hold the
/// returned value for as long as the level lasts. Past [`MAX_DEPTH`] the
/// walk fails with an error naming `what` (the tree being entered).
pub fn descend(what: impl FnOnce() -> String) -> Result<Level> {
    DEPTH.with(|d| {
        if d.get() >= MAX_DEPTH {
            return Err(Error::corrupt(format!(
                "{}: directories nested deeper than {MAX_DEPTH} levels (a damaged or crafted catalog, perhaps a tree that contains itself)",
                what()
            )));
        }
        d.set(d.get() + 1);
        Ok(Level(()))
    })
}

/// The smallest encoded entry: the name's length byte, kind, eleven
/// one-byte varints, link key and the empty xattrs' length byte (a
/// `Special` entry has no body).
const MIN_ENTRY_LEN: usize = 1 + 1 + 11 + 1 + 1;

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

/// Decode a tree. Names are checked (see [`name_problem`]) and must be in
/// strictly increasing byte order, as the encoder writes them: a duplicate
/// would let one path mean two things. The node counts of subdirectories
/// must add up without overflow (they number inodes), and nothing may follow
/// the last entry.
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
        let show = || String::from_utf8_lossy(&name).into_owned();
        if let Some(why) = name_problem(&name) {
            return Err(Error::corrupt(format!("tree entry {:?}: {why}", show())));
        }
        if let Some(prev) = out.last()
            && prev.name >= name
        {
            return Err(Error::corrupt(format!(
                "tree entry {:?}: names are duplicated or out of order",
                show()
            )));
        }
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
        let span = match &body {
            Body::Dir { nodes, .. } => nodes.checked_add(1),
            _ => Some(1),
        };
        nodes = span
            .and_then(|s| nodes.checked_add(s))
            .filter(|&t| t <= MAX_NODES)
            .ok_or_else(|| {
                Error::corrupt(format!("tree entry {:?}: node count overflows", show()))
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

/// The most nodes a tree may account for: the catalog stores counts as
/// SQLite integers (i64), and inode numbers leave the high bits to the
/// snapshot.
pub const MAX_NODES: u64 = 1 << 48;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::codec::Encoder;
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
        let mut entries = entries;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let bytes = encode_tree(&entries);
        assert_eq!(decode_tree(&bytes).unwrap(), entries);
        assert!(decode_tree(&bytes[..bytes.len() - 1]).is_err());
    }

    fn special(name: &[u8]) -> Entry {
        Entry {
            name: name.to_vec(),
            kind: Kind::Fifo,
            meta: Meta::default(),
            link_key: 0,
            xattrs: vec![],
            body: Body::Special,
        }
    }

    fn dir(name: &[u8], nodes: u64) -> Entry {
        Entry {
            name: name.to_vec(),
            kind: Kind::Dir,
            meta: Meta::default(),
            link_key: 0,
            xattrs: vec![],
            body: Body::Dir {
                tree: TreeHash(Hash::of(name)),
                nodes,
            },
        }
    }

    #[test]
    fn tree_with_dotdot_name_is_rejected() {
        let long = vec![b'x'; 256];
        for name in [&b".."[..], b".", b"", b"a/b", b"/", b"a\0b", &long] {
            let bytes = encode_tree(&[special(b"a"), special(name)]);
            let err = decode_tree(&bytes).expect_err("bad name accepted");
            assert!(err.to_string().contains("tree entry"), "{err}");
        }
        assert!(decode_tree(&encode_tree(&[special(&[b'x'; 255])])).is_ok());
        assert!(decode_tree(&encode_tree(&[special(b"a\0")])).is_err());
    }

    #[test]
    fn duplicate_or_unsorted_names_are_rejected() {
        let dup = encode_tree(&[special(b"a"), special(b"a")]);
        assert!(decode_tree(&dup).is_err());
        let unsorted = encode_tree(&[special(b"b"), special(b"a")]);
        assert!(decode_tree(&unsorted).is_err());
        let sorted = encode_tree(&[special(b"a"), special(b"b")]);
        assert_eq!(decode_tree(&sorted).unwrap().len(), 2);
    }

    #[test]
    fn trailing_bytes_and_huge_counts_are_rejected() {
        let mut bytes = encode_tree(&[special(b"a")]);
        bytes.push(0);
        assert!(decode_tree(&bytes).is_err());
        let mut e = Encoder::new();
        e.u8(TREE_FORMAT);
        e.u64(u64::MAX);
        assert!(decode_tree(&e.buf).is_err());
        let mut e = Encoder::new();
        e.u64(1 << 60);
        assert!(decode_xattrs(&e.buf).is_err());
        let mut x = encode_xattrs(&[(b"user.a".to_vec(), b"v".to_vec())]);
        x.push(0);
        assert!(decode_xattrs(&x).is_err());
        assert!(decode_xattrs(&encode_xattrs(&[(Vec::new(), b"v".to_vec())])).is_err());
    }

    #[test]
    fn node_counts_that_overflow_are_rejected() {
        assert!(decode_tree(&encode_tree(&[dir(b"a", u64::MAX)])).is_err());
        assert!(decode_tree(&encode_tree(&[dir(b"a", MAX_NODES), dir(b"b", 1)])).is_err());
        assert!(decode_tree(&encode_tree(&[dir(b"a", 10), dir(b"b", 1)])).is_ok());
    }

    #[test]
    fn chunk_lists_are_checked_and_get_never_panics() {
        let mut list = ChunkList::default();
        list.push(ChunkRef {
            id: ChunkId(Hash::of(b"a")),
            len: u32::MAX,
        });
        assert!(ChunkList::validate(list.0.clone()).is_err());
        assert!(ChunkList::validate(vec![0; 35]).is_err());
        let short = ChunkList(vec![1; 40]);
        assert_eq!(short.len(), 1);
        assert_eq!(short.get(1).len, 0);
        assert_eq!(short.get(usize::MAX).len, 0);
        assert_eq!(short.iter().count(), 1);
    }

    use crate::format::codec::mutate;
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        let mut list = ChunkList::default();
        list.push(ChunkRef {
            id: ChunkId(Hash::of(b"c")),
            len: 9,
        });
        let mut f = special(b"file");
        f.kind = Kind::File;
        f.body = Body::File(list);
        f.xattrs = vec![(b"user.k".to_vec(), b"v".to_vec())];
        let mut l = special(b"link");
        l.kind = Kind::Symlink;
        l.body = Body::Symlink(b"file".to_vec());
        encode_tree(&[dir(b"dir", 4), f, l, special(b"pipe")])
    }

    proptest! {
        #![proptest_config(mutate::config())]

        #[test]
        fn decode_tree_never_panics_on_arbitrary_bytes(b in mutate::bytes()) {
            if let Ok(entries) = decode_tree(&b) {
                prop_assert_eq!(decode_tree(&encode_tree(&entries)).unwrap(), entries);
            }
        }

        #[test]
        fn damaged_trees_decode_to_valid_entries_or_fail(b in mutate::damaged(sample())) {
            if let Ok(entries) = decode_tree(&b) {
                for w in entries.windows(2) {
                    prop_assert!(w[0].name < w[1].name);
                }
                for e in &entries {
                    prop_assert!(name_problem(&e.name).is_none());
                }
                prop_assert_eq!(decode_tree(&encode_tree(&entries)).unwrap(), entries);
            }
        }

        #[test]
        fn decode_xattrs_never_panics(b in mutate::bytes()) {
            if let Ok(x) = decode_xattrs(&b) {
                prop_assert_eq!(decode_xattrs(&encode_xattrs(&x)).unwrap(), x);
            }
        }

        #[test]
        fn damaged_xattrs_decode_or_fail(b in mutate::damaged(encode_xattrs(&[
            (b"user.a".to_vec(), b"1".to_vec()),
            (b"user.b".to_vec(), vec![0; 40]),
        ]))) {
            let _ = decode_xattrs(&b);
        }
    }
}
