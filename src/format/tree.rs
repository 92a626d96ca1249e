//! The domain model of a snapshot: directory entries with their metadata,
//! file times, and a file's chunk list. How a directory's entries are stored
//! (in pages) is `page.rs`.

use crate::error::{Error, Result};
use crate::format::codec::{Decoder, Encoder};
use crate::ids::{ChunkId, ContentHash, TreeHash};

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

/// A file time as the kernel keeps it: seconds since 1970 (negative
/// before) and nanoseconds within that second. Seconds and nanoseconds stay
/// apart: one i64 of nanoseconds ends in 2262 and starts in 1677, and a file
/// dated outside that range would come back with another date.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FileTime {
    pub secs: i64,
    /// Always below one second (checked where times are decoded).
    pub nanos: u32,
}

impl FileTime {
    pub const NANOS_PER_SEC: u32 = 1_000_000_000;

    /// A time from `stat`'s seconds and nanoseconds. The kernel keeps the
    /// nanoseconds in 0..1e9; anything else is folded into the seconds.
    pub fn from_stat(secs: i64, nsec: i64) -> FileTime {
        let per = i64::from(Self::NANOS_PER_SEC);
        FileTime {
            secs: secs.saturating_add(nsec.div_euclid(per)),
            nanos: nsec.rem_euclid(per) as u32,
        }
    }

    /// A time from nanoseconds since 1970 (the range of snapshot times).
    pub fn from_ns(ns: i64) -> FileTime {
        FileTime::from_stat(0, ns)
    }

    /// Nanoseconds since 1970, or None outside the years 1677..2262.
    pub fn as_ns(self) -> Option<i64> {
        self.secs
            .checked_mul(i64::from(Self::NANOS_PER_SEC))?
            .checked_add(i64::from(self.nanos))
    }

    /// The time as a `SystemTime`, which holds any i64 of seconds on Linux.
    pub fn to_system_time(self) -> std::time::SystemTime {
        use std::time::{Duration, UNIX_EPOCH};
        let t = if self.secs >= 0 {
            UNIX_EPOCH.checked_add(Duration::new(self.secs as u64, self.nanos))
        } else {
            UNIX_EPOCH
                .checked_sub(Duration::from_secs(self.secs.unsigned_abs()))
                .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(self.nanos))))
        };
        t.unwrap_or(UNIX_EPOCH)
    }
}

/// Inode metadata as recorded; `mode` is the full `st_mode` (type and permission bits).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: FileTime,
    pub ctime: FileTime,
    pub atime: FileTime,
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
            mtime: FileTime::from_stat(m.mtime(), m.mtime_nsec()),
            ctime: FileTime::from_stat(m.ctime(), m.ctime_nsec()),
            atime: FileTime::from_stat(m.atime(), m.atime_nsec()),
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

    /// The list's identity: the chunk id of the list stored as a chunk of
    /// its own (kind `List`), so the id finds it in a pack.
    pub fn hash(&self, keying: &crate::format::keying::Keying) -> ContentHash {
        ContentHash(keying.hash_chunk(&self.0).id.0)
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

/// Where a non-empty file's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContentRef {
    /// A file of one chunk: that chunk, as long as the file (so the page
    /// holds its id only, and no list is stored for the most common file).
    Chunk(ChunkId, u32),
    /// A file of several chunks: its chunk list, stored as a chunk of its
    /// own (kind `List`) and shared by every entry with the same bytes, so
    /// a page rewritten for a sibling's change does not repeat it.
    List(ContentHash),
}

impl ContentRef {
    /// How a file whose chunks are `list` refers to them.
    pub fn of_list(
        keying: &crate::format::keying::Keying,
        list: &ChunkList,
        size: u64,
    ) -> Option<ContentRef> {
        match list.len() {
            0 => None,
            1 if u64::from(list.get(0).len) == size => {
                Some(ContentRef::Chunk(list.get(0).id, list.get(0).len))
            }
            _ => Some(ContentRef::List(list.hash(keying))),
        }
    }
}

/// What an entry points at besides its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// A regular file's content (None for an empty file).
    File(Option<ContentRef>),
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

/// The most nodes a tree may account for: the catalog stores counts as
/// SQLite integers (i64), and inode numbers leave the high bits to the
/// snapshot.
pub const MAX_NODES: u64 = 1 << 48;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::codec::mutate;
    use crate::ids::Hash;
    use proptest::prelude::*;

    #[test]
    fn file_times_keep_seconds_and_nanoseconds_apart() {
        let t = FileTime::from_stat(-1, 999_999_999);
        assert_eq!((t.secs, t.nanos), (-1, 999_999_999));
        assert_eq!(t.as_ns(), Some(-1));
        let t = FileTime::from_ns(-1);
        assert_eq!((t.secs, t.nanos), (-1, 999_999_999));
        // 2300-01-01: beyond an i64 of nanoseconds, still a time.
        let t = FileTime::from_stat(10_413_792_000, 5);
        assert_eq!(t.as_ns(), None);
        assert_eq!(
            t.to_system_time()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            10_413_792_000
        );
        let t = FileTime::from_stat(i64::MAX, 1_500_000_000);
        assert_eq!((t.secs, t.nanos), (i64::MAX, 500_000_000));
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

    #[test]
    fn a_one_chunk_file_refers_to_its_chunk_and_a_longer_one_to_its_list() {
        let mut list = ChunkList::default();
        assert_eq!(
            ContentRef::of_list(&crate::format::keying::Keying::plain(), &list, 0),
            None
        );
        let c = ChunkRef {
            id: ChunkId(Hash::of(b"a")),
            len: 7,
        };
        list.push(c);
        assert_eq!(
            ContentRef::of_list(&crate::format::keying::Keying::plain(), &list, 7),
            Some(ContentRef::Chunk(c.id, 7))
        );
        // A file that grew while read keeps its list.
        assert_eq!(
            ContentRef::of_list(&crate::format::keying::Keying::plain(), &list, 8),
            Some(ContentRef::List(
                list.hash(&crate::format::keying::Keying::plain())
            ))
        );
        list.push(c);
        assert_eq!(
            ContentRef::of_list(&crate::format::keying::Keying::plain(), &list, 14),
            Some(ContentRef::List(
                list.hash(&crate::format::keying::Keying::plain())
            ))
        );
    }

    #[test]
    fn bad_xattrs_are_rejected() {
        let mut e = Encoder::new();
        e.u64(1 << 60);
        assert!(decode_xattrs(&e.buf).is_err());
        let mut x = encode_xattrs(&[(b"user.a".to_vec(), b"v".to_vec())]);
        x.push(0);
        assert!(decode_xattrs(&x).is_err());
        assert!(decode_xattrs(&encode_xattrs(&[(Vec::new(), b"v".to_vec())])).is_err());
    }

    proptest! {
        #![proptest_config(mutate::config())]

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
