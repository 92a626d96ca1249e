//! Directory pages: how a directory's entries are stored.
//!
//! A directory is a small tree of pages. Leaf pages hold entries in name
//! order; index pages (level 1 and up) hold, per child page, its first name,
//! its hash and how many entries and depth-first nodes lie beneath it. A
//! directory's identity is its root page's hash.
//!
//! Where a leaf ends depends only on the names in it: after a name whose
//! keyed hash has its low six bits zero (about 64 entries a page), or at 256
//! entries, or at about 32 KiB. Index pages end likewise on their children's
//! hashes (about 32 children). So the pages of a directory depend on its
//! current entries alone, not on its history: a changed entry rewrites its
//! leaf and the index pages above it, an added or removed one at most two
//! leaves, and every other page is the same chunk, stored once, in every
//! snapshot that has it. One file changed a day in a directory of 100,000
//! costs a few KiB a day, not the whole listing again.
//!
//! Entries are compact: names share their prefix with the previous name,
//! (mode, uid, gid) triples are listed once per page, times are deltas from
//! the page's first modification time, and a file of one chunk refers to
//! that chunk directly (see [`ContentRef`]).

use crate::error::{Error, Result};
use crate::format::codec::{Decoder, Encoder};
use crate::format::names::name_problem;
use crate::format::tree::{
    Body, ContentRef, Entry, FileTime, Kind, MAX_NODES, Meta, decode_xattrs, encode_xattrs,
};
use crate::ids::{ChunkId, ContentHash, TreeHash};

/// The first byte of every page.
pub const PAGE_FORMAT: u8 = 2;

/// The highest index level a page may have. 64 entries a leaf and 32
/// children an index page reach 2^61 entries at level 12; a deeper claim is
/// damage, and levels strictly decrease downwards, so no walk of pages can
/// loop or go deeper than this.
pub const MAX_LEVEL: u8 = 12;

const LEAF_CUT_MASK: u32 = 63;
const LEAF_MAX_ENTRIES: usize = 256;
const LEAF_MAX_BYTES: usize = 32 * 1024;
const INDEX_CUT_MASK: u32 = 31;
const INDEX_MAX_CHILDREN: usize = 128;

const F_XATTRS: u8 = 1;
const F_LINK: u8 = 2;
const F_CTIME: u8 = 4;
const F_ATIME: u8 = 8;
const F_NLINK: u8 = 16;
const F_RDEV: u8 = 32;
const F_ALL: u8 = 63;

const FILE_EMPTY: u8 = 0;
const FILE_CHUNK: u8 = 1;
const FILE_LIST: u8 = 2;

/// The key of the hash that decides where leaf pages end.
#[derive(Clone)]
pub struct BoundaryKey([u8; 32]);

impl BoundaryKey {
    /// The key of a repository whose names are stored readable: a constant,
    /// since anyone who can read the pages can read the names.
    pub fn public() -> BoundaryKey {
        BoundaryKey(blake3::derive_key(
            "snapfs 2026 directory page boundaries",
            b"",
        ))
    }

    /// The key of an encrypted repository: where pages end then says
    /// nothing about the names to one who holds no key.
    pub fn keyed(key: [u8; 32]) -> BoundaryKey {
        BoundaryKey(key)
    }

    fn cuts_after(&self, name: &[u8]) -> bool {
        let h = blake3::keyed_hash(&self.0, name);
        low_bits(h.as_bytes()) & LEAF_CUT_MASK == 0
    }
}

fn low_bits(b: &[u8; 32]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// One child of an index page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildRef {
    pub first_name: Vec<u8>,
    pub page: TreeHash,
    /// Entries beneath the child.
    pub entries: u64,
    /// Depth-first nodes beneath it: its entries and everything in their
    /// directories (the numbers that make inode numbers).
    pub nodes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Page {
    Leaf(Vec<Entry>),
    Index { level: u8, children: Vec<ChildRef> },
}

impl Page {
    pub fn level(&self) -> u8 {
        match self {
            Page::Leaf(_) => 0,
            Page::Index { level, .. } => *level,
        }
    }

    /// Entries beneath this page. Decoded pages cannot overflow (checked).
    pub fn entries(&self) -> u64 {
        match self {
            Page::Leaf(e) => e.len() as u64,
            Page::Index { children, .. } => children.iter().map(|c| c.entries).sum(),
        }
    }

    /// Depth-first nodes beneath this page.
    pub fn nodes(&self) -> u64 {
        match self {
            Page::Leaf(e) => e.iter().map(Entry::span).sum(),
            Page::Index { children, .. } => children.iter().map(|c| c.nodes).sum(),
        }
    }

    pub fn first_name(&self) -> Option<&[u8]> {
        match self {
            Page::Leaf(e) => e.first().map(|e| e.name.as_slice()),
            Page::Index { children, .. } => children.first().map(|c| c.first_name.as_slice()),
        }
    }
}

fn put_name(e: &mut Encoder, prev: &[u8], name: &[u8]) {
    let shared = prev.iter().zip(name).take_while(|(a, b)| a == b).count();
    e.u64(shared as u64);
    e.bytes(&name[shared..]);
}

/// The next name of a page: a prefix of the previous one and new bytes,
/// a valid entry name, strictly after the previous one.
fn take_name(d: &mut Decoder, prev: Option<&[u8]>) -> Result<Vec<u8>> {
    let prev_name = prev.unwrap_or(&[]);
    let shared = usize::try_from(d.u64()?)
        .ok()
        .filter(|&n| n <= prev_name.len())
        .ok_or_else(|| {
            Error::corrupt("page entry: shared name prefix is longer than the name before it")
        })?;
    let mut name = prev_name[..shared].to_vec();
    name.extend_from_slice(d.bytes()?);
    let show = || name.escape_ascii().to_string();
    if let Some(why) = name_problem(&name) {
        return Err(Error::corrupt(format!("page entry \"{}\": {why}", show())));
    }
    if prev.is_some_and(|p| p >= name.as_slice()) {
        return Err(Error::corrupt(format!(
            "page entry \"{}\": names are duplicated or out of order",
            show()
        )));
    }
    Ok(name)
}

fn put_time(e: &mut Encoder, t: FileTime, base: i64) {
    e.i64(t.secs.wrapping_sub(base));
    e.u64(u64::from(t.nanos));
}

/// A time stored as seconds from `base` (wrapping: every i64 round-trips)
/// and nanoseconds, which must be below one second.
fn take_time(d: &mut Decoder, base: i64) -> Result<FileTime> {
    let secs = d.i64()?.wrapping_add(base);
    let nanos = d.u32()?;
    if nanos >= FileTime::NANOS_PER_SEC {
        return Err(Error::corrupt(format!(
            "page entry: {nanos} nanoseconds is not within a second"
        )));
    }
    Ok(FileTime { secs, nanos })
}

/// Encode a page. Entries and children must be in strictly increasing name
/// order (the decoder refuses anything else).
pub fn encode_page(page: &Page) -> Vec<u8> {
    let mut e = Encoder::new();
    e.u8(PAGE_FORMAT);
    e.u8(page.level());
    match page {
        Page::Leaf(entries) => encode_leaf(&mut e, entries),
        Page::Index { children, .. } => {
            e.u64(children.len() as u64);
            let mut prev: &[u8] = &[];
            for c in children {
                put_name(&mut e, prev, &c.first_name);
                e.hash(&c.page.0);
                e.u64(c.entries);
                e.u64(c.nodes);
                prev = &c.first_name;
            }
        }
    }
    e.buf
}

fn encode_leaf(e: &mut Encoder, entries: &[Entry]) {
    let mut attrs: Vec<(u32, u32, u32)> = Vec::new();
    let attr_of: Vec<usize> = entries
        .iter()
        .map(|en| {
            let a = (en.meta.mode, en.meta.uid, en.meta.gid);
            match attrs.iter().position(|x| *x == a) {
                Some(i) => i,
                None => {
                    attrs.push(a);
                    attrs.len() - 1
                }
            }
        })
        .collect();
    e.u64(attrs.len() as u64);
    for (mode, uid, gid) in &attrs {
        e.u64(u64::from(*mode));
        e.u64(u64::from(*uid));
        e.u64(u64::from(*gid));
    }
    e.u64(entries.len() as u64);
    let base = entries.first().map_or(0, |en| en.meta.mtime.secs);
    e.i64(base);
    let mut prev: &[u8] = &[];
    let mut prev_ino = 0u64;
    for (en, attr) in entries.iter().zip(attr_of) {
        let m = &en.meta;
        let mut flags = 0;
        for (set, bit) in [
            (!en.xattrs.is_empty(), F_XATTRS),
            (en.link_key != 0, F_LINK),
            (m.ctime != m.mtime, F_CTIME),
            (m.atime != m.mtime, F_ATIME),
            (m.nlink != 1, F_NLINK),
            (m.rdev != 0, F_RDEV),
        ] {
            if set {
                flags |= bit;
            }
        }
        e.u8(flags);
        put_name(e, prev, &en.name);
        prev = &en.name;
        e.u64(attr as u64);
        e.u64(m.size);
        put_time(e, m.mtime, base);
        if flags & F_CTIME != 0 {
            put_time(e, m.ctime, m.mtime.secs);
        }
        if flags & F_ATIME != 0 {
            put_time(e, m.atime, m.mtime.secs);
        }
        e.i64(m.ino.wrapping_sub(prev_ino) as i64);
        prev_ino = m.ino;
        if flags & F_NLINK != 0 {
            e.u64(m.nlink);
        }
        e.u64(m.blocks);
        if flags & F_LINK != 0 {
            e.u64(en.link_key);
        }
        if flags & F_RDEV != 0 {
            e.u64(m.rdev);
        }
        if flags & F_XATTRS != 0 {
            e.bytes(&encode_xattrs(&en.xattrs));
        }
        match &en.body {
            Body::File(None) => e.u8(FILE_EMPTY),
            Body::File(Some(ContentRef::Chunk(id, _))) => {
                e.u8(FILE_CHUNK);
                e.hash(&id.0);
            }
            Body::File(Some(ContentRef::List(h))) => {
                e.u8(FILE_LIST);
                e.hash(&h.0);
            }
            Body::Dir { tree, nodes } => {
                e.hash(&tree.0);
                e.u64(*nodes);
            }
            Body::Symlink(t) => e.bytes(t),
            Body::Special => {}
        }
    }
}

/// The smallest encoded leaf entry: flags, the name's two length bytes and
/// one byte of it, attribute index, size, mtime (two bytes), inode delta,
/// blocks; a `Special` entry has no body.
const MIN_ENTRY_LEN: usize = 10;
/// The smallest encoded child: two name bytes and one of name, the hash, two counts.
const MIN_CHILD_LEN: usize = 3 + 32 + 2;

/// Decode a page, checking everything a page alone can show: names valid
/// and strictly increasing, modes of a known kind, nanoseconds within a
/// second, file bodies consistent with sizes, counts that add up without
/// overflow, nothing after the last entry. That pages fit together (levels,
/// first names, counts) is checked by whoever walks from page to page.
pub fn decode_page(data: &[u8]) -> Result<Page> {
    let mut d = Decoder::new(data);
    let format = d.u8()?;
    if format != PAGE_FORMAT {
        return Err(Error::corrupt(format!("unknown page format {format}")));
    }
    let level = d.u8()?;
    let page = if level == 0 {
        Page::Leaf(decode_leaf(&mut d)?)
    } else if level > MAX_LEVEL {
        return Err(Error::corrupt(format!(
            "page level {level} is above the highest possible ({MAX_LEVEL})"
        )));
    } else {
        let n = d.count(MIN_CHILD_LEN)?;
        if n == 0 {
            return Err(Error::corrupt("index page without children"));
        }
        let mut children: Vec<ChildRef> = Vec::with_capacity(n);
        let (mut entries, mut nodes) = (0u64, 0u64);
        for _ in 0..n {
            let first_name = take_name(&mut d, children.last().map(|c| c.first_name.as_slice()))?;
            let page = TreeHash(d.hash()?);
            let (e, nd) = (d.u64()?, d.u64()?);
            if e == 0 || nd < e {
                return Err(Error::corrupt(format!(
                    "index page: child {page} claims {e} entries and {nd} nodes"
                )));
            }
            entries = entries
                .checked_add(e)
                .filter(|&t| t <= MAX_NODES)
                .ok_or_else(|| Error::corrupt("index page: entry count overflows"))?;
            nodes = nodes
                .checked_add(nd)
                .filter(|&t| t <= MAX_NODES)
                .ok_or_else(|| Error::corrupt("index page: node count overflows"))?;
            children.push(ChildRef {
                first_name,
                page,
                entries: e,
                nodes: nd,
            });
        }
        Page::Index { level, children }
    };
    d.finish("page")?;
    Ok(page)
}

fn decode_leaf(d: &mut Decoder) -> Result<Vec<Entry>> {
    let n_attrs = d.count(3)?;
    let mut attrs = Vec::with_capacity(n_attrs);
    for _ in 0..n_attrs {
        let (mode, uid, gid) = (d.u32()?, d.u32()?, d.u32()?);
        let kind = Kind::from_mode(mode).ok_or_else(|| {
            Error::corrupt(format!("page: mode {mode:o} is of no kind snapfs stores"))
        })?;
        attrs.push((kind, mode, uid, gid));
    }
    let n = d.count(MIN_ENTRY_LEN)?;
    let base = d.i64()?;
    let mut out: Vec<Entry> = Vec::with_capacity(n);
    let mut prev_ino = 0u64;
    let mut nodes = 0u64;
    for _ in 0..n {
        let flags = d.u8()?;
        if flags & !F_ALL != 0 {
            return Err(Error::corrupt(format!(
                "page entry: unknown flags {flags:#x}"
            )));
        }
        let name = take_name(d, out.last().map(|e| e.name.as_slice()))?;
        let show = || name.escape_ascii().to_string();
        let bad = |why: String| Error::corrupt(format!("page entry \"{}\": {why}", show()));
        let attr = usize::try_from(d.u64()?).ok().and_then(|i| attrs.get(i));
        let &(kind, mode, uid, gid) =
            attr.ok_or_else(|| bad("attribute index out of range".into()))?;
        let size = d.u64()?;
        let mtime = take_time(d, base)?;
        let ctime = if flags & F_CTIME != 0 {
            take_time(d, mtime.secs)?
        } else {
            mtime
        };
        let atime = if flags & F_ATIME != 0 {
            take_time(d, mtime.secs)?
        } else {
            mtime
        };
        let ino = prev_ino.wrapping_add(d.i64()? as u64);
        prev_ino = ino;
        let nlink = if flags & F_NLINK != 0 { d.u64()? } else { 1 };
        let blocks = d.u64()?;
        let link_key = if flags & F_LINK != 0 { d.u64()? } else { 0 };
        let rdev = if flags & F_RDEV != 0 { d.u64()? } else { 0 };
        let xattrs = if flags & F_XATTRS != 0 {
            decode_xattrs(d.bytes()?)?
        } else {
            Vec::new()
        };
        let body = match kind {
            Kind::File => Body::File(match d.u8()? {
                FILE_EMPTY if size == 0 => None,
                FILE_CHUNK => {
                    let id = ChunkId(d.hash()?);
                    let len = u32::try_from(size)
                        .ok()
                        .filter(|&l| l > 0 && l as usize <= crate::format::blob::MAX_DATA_CHUNK_LEN)
                        .ok_or_else(|| {
                            bad(format!("a file of {size} bytes cannot be one chunk"))
                        })?;
                    Some(ContentRef::Chunk(id, len))
                }
                FILE_LIST => Some(ContentRef::List(ContentHash(d.hash()?))),
                FILE_EMPTY => return Err(bad(format!("a file of {size} bytes has no content"))),
                t => return Err(bad(format!("unknown file content tag {t}"))),
            }),
            Kind::Dir => Body::Dir {
                tree: TreeHash(d.hash()?),
                nodes: d.u64()?,
            },
            Kind::Symlink => Body::Symlink(d.bytes()?.to_vec()),
            _ => Body::Special,
        };
        let entry = Entry {
            name,
            kind,
            meta: Meta {
                mode,
                uid,
                gid,
                size,
                mtime,
                ctime,
                atime,
                rdev,
                ino,
                nlink,
                blocks,
            },
            link_key,
            xattrs,
            body,
        };
        let span = match &entry.body {
            Body::Dir { nodes, .. } => nodes.checked_add(1),
            _ => Some(1),
        };
        nodes = span
            .and_then(|s| nodes.checked_add(s))
            .filter(|&t| t <= MAX_NODES)
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "page entry {:?}: node count overflows",
                    String::from_utf8_lossy(&entry.name)
                ))
            })?;
        out.push(entry);
    }
    Ok(out)
}

/// One page of a directory being stored.
#[derive(Clone, Debug)]
pub struct BuiltPage {
    pub hash: TreeHash,
    pub bytes: Vec<u8>,
    pub level: u8,
    pub entries: u64,
    pub nodes: u64,
}

/// A directory's pages, each child before its parent; the last is the root.
#[derive(Clone, Debug)]
pub struct BuiltDir {
    pub pages: Vec<BuiltPage>,
}

impl BuiltDir {
    pub fn root(&self) -> &BuiltPage {
        self.pages.last().expect("a directory has a root page")
    }
}

fn built(page: &Page, keying: &crate::format::keying::Keying) -> BuiltPage {
    let bytes = encode_page(page);
    BuiltPage {
        hash: TreeHash(keying.hash_chunk(&bytes).id.0),
        level: page.level(),
        entries: page.entries(),
        nodes: page.nodes(),
        bytes,
    }
}

/// The pages of a directory whose entries are `entries`, sorted by name.
/// An empty directory is one empty leaf.
pub fn build_dir(entries: Vec<Entry>, keying: &crate::format::keying::Keying) -> BuiltDir {
    let key = keying.boundary();
    let mut pages = Vec::new();
    let mut level: Vec<ChildRef> = Vec::new();
    let mut leaf: Vec<Entry> = Vec::new();
    let mut bytes = 0usize;
    let total = entries.len();
    for (i, en) in entries.into_iter().enumerate() {
        bytes += 64
            + en.name.len()
            + en.xattrs
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + match &en.body {
                Body::Symlink(t) => t.len(),
                _ => 0,
            };
        let cut = key.cuts_after(&en.name);
        leaf.push(en);
        if cut || leaf.len() >= LEAF_MAX_ENTRIES || bytes >= LEAF_MAX_BYTES || i + 1 == total {
            let page = Page::Leaf(std::mem::take(&mut leaf));
            let b = built(&page, keying);
            level.push(ChildRef {
                first_name: page.first_name().unwrap_or_default().to_vec(),
                page: b.hash,
                entries: b.entries,
                nodes: b.nodes,
            });
            pages.push(b);
            bytes = 0;
        }
    }
    if pages.is_empty() {
        pages.push(built(&Page::Leaf(Vec::new()), keying));
        return BuiltDir { pages };
    }
    let mut height = 0u8;
    while level.len() > 1 {
        height += 1;
        let mut next = Vec::new();
        let mut group: Vec<ChildRef> = Vec::new();
        let n = level.len();
        // Where every child would cut (a rare run of hashes), the level
        // would not shrink: then the count alone cuts, so a directory
        // always ends in one root within `MAX_LEVEL` levels.
        let by_hash = level
            .iter()
            .filter(|c| low_bits(&c.page.0.0) & INDEX_CUT_MASK == 0)
            .count()
            < n - 1;
        for (i, c) in level.into_iter().enumerate() {
            let cut = by_hash && low_bits(&c.page.0.0) & INDEX_CUT_MASK == 0;
            group.push(c);
            if cut || group.len() >= INDEX_MAX_CHILDREN || i + 1 == n {
                let page = Page::Index {
                    level: height,
                    children: std::mem::take(&mut group),
                };
                let b = built(&page, keying);
                next.push(ChildRef {
                    first_name: page.first_name().unwrap_or_default().to_vec(),
                    page: b.hash,
                    entries: b.entries,
                    nodes: b.nodes,
                });
                pages.push(b);
            }
        }
        level = next;
    }
    BuiltDir { pages }
}

/// What a page holds, as its parent and the pages beside it are checked
/// against: kept for a page loaded once, so that a later directory sharing
/// it is checked without reading it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageFacts {
    pub level: u8,
    pub entries: u64,
    pub nodes: u64,
    /// The first and last names beneath the page (none for an empty
    /// directory's only page).
    pub first: Option<Vec<u8>>,
    pub last: Option<Vec<u8>>,
}

impl PageFacts {
    /// What `page` itself shows: an index page's last name is its last
    /// child's, which the page does not hold (None here).
    pub fn of(page: &Page) -> PageFacts {
        PageFacts {
            level: page.level(),
            entries: page.entries(),
            nodes: page.nodes(),
            first: page.first_name().map(<[u8]>::to_vec),
            last: match page {
                Page::Leaf(e) => e.last().map(|e| e.name.clone()),
                Page::Index { .. } => None,
            },
        }
    }
}

/// A page must sit one level below its parent (so no walk loops), start
/// with the name and hold the counts the parent's reference `c` says:
/// positions after it come from the parent's counts, and a page holding
/// more than they say would number two entries alike.
pub fn fits_parent(
    c: &ChildRef,
    parent: u8,
    level: u8,
    first: Option<&[u8]>,
    entries: u64,
    nodes: u64,
) -> Result<()> {
    if u16::from(level) + 1 != u16::from(parent) {
        return Err(Error::corrupt(format!(
            "directory page {}: level {level} under a page of level {parent}",
            c.page
        )));
    }
    if first != Some(c.first_name.as_slice()) || entries != c.entries || nodes != c.nodes {
        return Err(Error::corrupt(format!(
            "directory page {}: its first name or counts differ from what its parent page says",
            c.page
        )));
    }
    Ok(())
}

/// The pages of a directory that [`load_new`] had to read, what each holds
/// (in the same order), and the entries of the leaves among them, in order.
pub struct Loaded {
    pub pages: Vec<BuiltPage>,
    pub facts: Vec<PageFacts>,
    pub entries: Vec<Entry>,
}

/// Every page of the directory whose root page is `root`, and its entries
/// in order, with `fetch` giving a page's bytes by hash. See [`load_new`].
pub fn load_dir(
    root: &TreeHash,
    fetch: impl FnMut(&TreeHash) -> Result<Vec<u8>>,
) -> Result<(Vec<BuiltPage>, Vec<Entry>)> {
    let l = load_new(root, |_| Ok(None), fetch)?;
    Ok((l.pages, l.entries))
}

/// The pages of the directory whose root page is `root` that `known` does
/// not know, read with `fetch`; the entries of the new leaves, in order.
/// Beneath a known page nothing is read: an import that has taken in a
/// page with everything beneath it does so once, whatever number of
/// directories share it.
///
/// Checked beyond what each page shows alone: each page sits one level
/// below its parent, starts with the name and holds the counts its parent
/// says, and names rise strictly across pages (known ones by their first
/// and last names). An explicit stack; levels fall by one per step from
/// at most [`MAX_LEVEL`], so the walk is short whatever the bytes say.
pub fn load_new(
    root: &TreeHash,
    mut known: impl FnMut(&TreeHash) -> Result<Option<PageFacts>>,
    mut fetch: impl FnMut(&TreeHash) -> Result<Vec<u8>>,
) -> Result<Loaded> {
    let mut pages = Vec::new();
    let mut entries: Vec<Entry> = Vec::new();
    // Per new page: its own facts, but for an index page the last name is
    // that of its last child, filled in once all are loaded.
    let mut facts: Vec<PageFacts> = Vec::new();
    let mut last_child: Vec<Option<TreeHash>> = Vec::new();
    let mut known_last: std::collections::HashMap<TreeHash, Option<Vec<u8>>> =
        std::collections::HashMap::new();
    let mut last_name: Option<Vec<u8>> = None;
    let mut stack: Vec<(TreeHash, Option<(ChildRef, u8)>)> = vec![(*root, None)];
    let fits = |want: &ChildRef, parent: u8, f: &PageFacts| {
        fits_parent(
            want,
            parent,
            f.level,
            f.first.as_deref(),
            f.entries,
            f.nodes,
        )
    };
    let in_order = |h: &TreeHash, last: &Option<Vec<u8>>, first: Option<&[u8]>| -> Result<()> {
        if let (Some(last), Some(first)) = (last, first)
            && last.as_slice() >= first
        {
            return Err(Error::corrupt(format!(
                "page {h}: names are out of order across pages"
            )));
        }
        Ok(())
    };
    while let Some((h, parent)) = stack.pop() {
        if let Some((want, level)) = &parent
            && let Some(f) = known(&h)?
        {
            fits(want, *level, &f)?;
            in_order(&h, &last_name, f.first.as_deref())?;
            last_name = f.last.clone();
            known_last.insert(h, f.last);
            continue;
        }
        let bytes = fetch(&h)?;
        let page = decode_page(&bytes).map_err(|e| Error::corrupt(format!("page {h}: {e}")))?;
        let f = PageFacts::of(&page);
        if let Some((want, level)) = &parent {
            fits(want, *level, &f)?;
        }
        pages.push(BuiltPage {
            hash: h,
            level: f.level,
            entries: f.entries,
            nodes: f.nodes,
            bytes,
        });
        match page {
            Page::Leaf(e) => {
                in_order(&h, &last_name, f.first.as_deref())?;
                if f.last.is_some() {
                    last_name = f.last.clone();
                }
                last_child.push(None);
                entries.extend(e);
            }
            Page::Index { level, children } => {
                last_child.push(children.last().map(|c| c.page));
                for c in children.into_iter().rev() {
                    stack.push((c.page, Some((c, level))));
                }
            }
        }
        facts.push(f);
    }
    // Pages are in depth-first preorder: backwards, every page comes after
    // all the pages beneath it, so an index page's last child is settled.
    for i in (0..pages.len()).rev() {
        if let Some(c) = last_child[i] {
            facts[i].last = known_last
                .get(&c)
                .ok_or_else(|| Error::corrupt(format!("page {c}: not loaded")))?
                .clone();
        }
        known_last.insert(pages[i].hash, facts[i].last.clone());
    }
    Ok(Loaded {
        pages,
        facts,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::codec::mutate;
    use crate::format::tree::{ChunkList, ChunkRef};
    use crate::ids::Hash;
    use proptest::prelude::*;

    fn special(name: &[u8]) -> Entry {
        Entry {
            name: name.to_vec(),
            kind: Kind::Fifo,
            meta: Meta {
                mode: libc::S_IFIFO | 0o644,
                nlink: 1,
                ..Meta::default()
            },
            link_key: 0,
            xattrs: vec![],
            body: Body::Special,
        }
    }

    fn dir(name: &[u8], nodes: u64) -> Entry {
        Entry {
            name: name.to_vec(),
            kind: Kind::Dir,
            meta: Meta {
                mode: libc::S_IFDIR | 0o755,
                nlink: 2,
                ..Meta::default()
            },
            link_key: 0,
            xattrs: vec![],
            body: Body::Dir {
                tree: TreeHash(Hash::of(name)),
                nodes,
            },
        }
    }

    fn file(name: &[u8], size: u64, seed: u64) -> Entry {
        let mut list = ChunkList::default();
        list.push(ChunkRef {
            id: ChunkId(Hash::of(&seed.to_le_bytes())),
            len: size as u32,
        });
        Entry {
            name: name.to_vec(),
            kind: Kind::File,
            meta: Meta {
                mode: libc::S_IFREG | 0o640,
                uid: 1000,
                gid: 100,
                size,
                mtime: FileTime::from_stat(1_700_000_000 + seed as i64, 5),
                ctime: FileTime::from_stat(1_700_000_000 + seed as i64, 7),
                atime: FileTime::from_stat(1_700_000_000, 0),
                ino: 5000 + seed,
                nlink: 1,
                blocks: 8,
                rdev: 0,
            },
            link_key: 0,
            xattrs: vec![],
            body: Body::File(ContentRef::of_list(
                &crate::format::keying::Keying::plain(),
                &list,
                size,
            )),
        }
    }

    fn sample_entries() -> Vec<Entry> {
        let mut f = file(b"\xffodd\nname", 7, 1);
        f.meta.mtime = FileTime::from_stat(-5, 999_999_999);
        f.meta.atime = FileTime::from_stat(10_413_792_000, 1);
        f.link_key = 9;
        f.meta.nlink = 2;
        f.xattrs = vec![(b"user.a".to_vec(), b"\x00v".to_vec())];
        let mut l = special(b"ln");
        l.kind = Kind::Symlink;
        l.meta.mode = libc::S_IFLNK | 0o777;
        l.body = Body::Symlink(b"../x".to_vec());
        let mut c = special(b"null");
        c.kind = Kind::CharDev;
        c.meta.mode = libc::S_IFCHR | 0o666;
        c.meta.rdev = 0x103;
        let mut e = file(b"empty", 0, 2);
        e.body = Body::File(None);
        let mut big = file(b"big", 1 << 30, 3);
        big.body = Body::File(Some(ContentRef::List(ContentHash(Hash::of(b"l")))));
        let mut v = vec![f, dir(b"sub", 3), l, c, e, big, special(b"pipe")];
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    #[test]
    fn leaf_encoding_round_trips_odd_names_and_far_times() {
        let entries = sample_entries();
        let page = Page::Leaf(entries.clone());
        let bytes = encode_page(&page);
        assert_eq!(decode_page(&bytes).unwrap(), page);
        assert!(decode_page(&bytes[..bytes.len() - 1]).is_err());
        let mut far = file(b"far", 1, 1);
        far.meta.mtime = FileTime {
            secs: i64::MIN,
            nanos: 999_999_999,
        };
        far.meta.ctime = FileTime {
            secs: i64::MAX,
            nanos: 0,
        };
        let page = Page::Leaf(vec![far, file(b"next", 2, 2)]);
        assert_eq!(decode_page(&encode_page(&page)).unwrap(), page);
    }

    #[test]
    fn bad_names_are_rejected() {
        let long = vec![b'x'; 256];
        for name in [&b".."[..], b".", b"", b"a/b", b"/", b"a\0b", &long] {
            let mut v = vec![special(b"a"), special(name)];
            v.sort_by(|a, b| a.name.cmp(&b.name));
            let bytes = encode_page(&Page::Leaf(v));
            let err = decode_page(&bytes).expect_err("bad name accepted");
            assert!(err.to_string().contains("page entry"), "{err}");
        }
        assert!(decode_page(&encode_page(&Page::Leaf(vec![special(&[b'x'; 255])]))).is_ok());
    }

    #[test]
    fn duplicate_or_unsorted_names_are_rejected() {
        let dup = encode_page(&Page::Leaf(vec![special(b"a"), special(b"a")]));
        assert!(decode_page(&dup).is_err());
        let unsorted = encode_page(&Page::Leaf(vec![special(b"b"), special(b"a")]));
        assert!(decode_page(&unsorted).is_err());
        let children = |a: &[u8], b: &[u8]| Page::Index {
            level: 1,
            children: [a, b]
                .iter()
                .map(|n| ChildRef {
                    first_name: n.to_vec(),
                    page: TreeHash(Hash::of(n)),
                    entries: 1,
                    nodes: 1,
                })
                .collect(),
        };
        assert!(decode_page(&encode_page(&children(b"b", b"a"))).is_err());
        assert!(decode_page(&encode_page(&children(b"a", b"b"))).is_ok());
    }

    #[test]
    fn counts_that_overflow_or_lie_are_rejected() {
        assert!(decode_page(&encode_page(&Page::Leaf(vec![dir(b"a", u64::MAX)]))).is_err());
        assert!(
            decode_page(&encode_page(&Page::Leaf(vec![
                dir(b"a", MAX_NODES),
                dir(b"b", 1)
            ])))
            .is_err()
        );
        let child = |n: &[u8], entries, nodes| ChildRef {
            first_name: n.to_vec(),
            page: TreeHash(Hash::of(n)),
            entries,
            nodes,
        };
        for bad in [
            vec![child(b"a", 0, 0)],
            vec![child(b"a", 2, 1)],
            vec![child(b"a", MAX_NODES, MAX_NODES), child(b"b", 1, 1)],
        ] {
            let p = Page::Index {
                level: 1,
                children: bad,
            };
            assert!(decode_page(&encode_page(&p)).is_err());
        }
        let p = Page::Index {
            level: MAX_LEVEL + 1,
            children: vec![child(b"a", 1, 1)],
        };
        assert!(decode_page(&encode_page(&p)).is_err());
        let p = Page::Index {
            level: 1,
            children: vec![],
        };
        assert!(decode_page(&encode_page(&p)).is_err());
    }

    #[test]
    fn file_bodies_must_fit_their_size() {
        let mut f = file(b"f", 5, 1);
        f.meta.size = 0;
        assert!(decode_page(&encode_page(&Page::Leaf(vec![f]))).is_err());
        let mut f = file(b"f", 5, 1);
        f.body = Body::File(None);
        assert!(decode_page(&encode_page(&Page::Leaf(vec![f]))).is_err());
        let mut f = file(b"f", 5, 1);
        f.meta.size = 1 << 40;
        assert!(decode_page(&encode_page(&Page::Leaf(vec![f]))).is_err());
    }

    #[test]
    fn trailing_bytes_and_huge_counts_are_rejected() {
        let mut bytes = encode_page(&Page::Leaf(vec![special(b"a")]));
        bytes.push(0);
        assert!(decode_page(&bytes).is_err());
        let mut e = Encoder::new();
        e.u8(PAGE_FORMAT);
        e.u8(0);
        e.u64(0);
        e.u64(u64::MAX);
        assert!(decode_page(&e.buf).is_err());
        let mut e = Encoder::new();
        e.u8(1);
        assert!(decode_page(&e.buf).is_err());
    }

    fn names(n: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| file(format!("file-{i:07}").as_bytes(), 100, i as u64))
            .collect()
    }

    /// Every entry of a built directory, read back through its pages.
    fn read_back(d: &BuiltDir) -> Vec<Entry> {
        let by_hash: std::collections::HashMap<TreeHash, Page> = d
            .pages
            .iter()
            .map(|p| (p.hash, decode_page(&p.bytes).unwrap()))
            .collect();
        let mut out = Vec::new();
        let mut stack = vec![d.root().hash];
        while let Some(h) = stack.pop() {
            match &by_hash[&h] {
                Page::Leaf(e) => out.extend(e.iter().cloned()),
                Page::Index { children, .. } => {
                    stack.extend(children.iter().rev().map(|c| c.page));
                }
            }
        }
        out
    }

    #[test]
    fn directories_of_every_size_read_back_whole() {
        let key = crate::format::keying::Keying::plain();
        for n in [0, 1, 63, 64, 65, 300, 10_000] {
            let entries = names(n);
            let d = build_dir(entries.clone(), &key);
            assert_eq!(read_back(&d), entries, "{n} entries");
            let bytes: std::collections::HashMap<TreeHash, Vec<u8>> =
                d.pages.iter().map(|p| (p.hash, p.bytes.clone())).collect();
            let (pages, loaded) = load_dir(&d.root().hash, |h| Ok(bytes[h].clone())).unwrap();
            assert_eq!(loaded, entries);
            assert_eq!(pages.len(), d.pages.len());
            assert_eq!(d.root().entries, n as u64);
            assert_eq!(d.root().nodes, n as u64);
            if n > 256 {
                assert!(d.root().level > 0);
            }
        }
    }

    #[test]
    fn one_change_rewrites_one_leaf_and_the_path_above_it() {
        let key = crate::format::keying::Keying::plain();
        let entries = names(20_000);
        let before = build_dir(entries.clone(), &key);
        let old: std::collections::HashSet<TreeHash> =
            before.pages.iter().map(|p| p.hash).collect();
        let height = before.root().level as usize;
        let new_pages = |after: &BuiltDir| {
            after
                .pages
                .iter()
                .filter(|p| !old.contains(&p.hash))
                .count()
        };
        // A changed entry: its leaf and one page per level above.
        let mut changed = entries.clone();
        changed[12_345].meta.size = 101;
        assert_eq!(new_pages(&build_dir(changed, &key)), 1 + height);
        // An added entry: at most two leaves (a split) and the path above.
        let mut added = entries.clone();
        added.push(file(b"file-9999999", 5, 7));
        assert!(new_pages(&build_dir(added, &key)) <= 2 + 2 * height);
        let mut removed = entries;
        removed.remove(777);
        assert!(new_pages(&build_dir(removed, &key)) <= 2 + 2 * height);
        assert!(before.pages.len() > 200, "{} pages", before.pages.len());
    }

    /// Every page's facts, from a whole load of the directory.
    fn facts_of(d: &BuiltDir) -> std::collections::HashMap<TreeHash, PageFacts> {
        let bytes: std::collections::HashMap<TreeHash, Vec<u8>> =
            d.pages.iter().map(|p| (p.hash, p.bytes.clone())).collect();
        let l = load_new(&d.root().hash, |_| Ok(None), |h| Ok(bytes[h].clone())).unwrap();
        l.pages.iter().map(|p| p.hash).zip(l.facts).collect()
    }

    #[test]
    fn a_directory_sharing_known_pages_loads_only_its_new_ones() {
        let key = crate::format::keying::Keying::plain();
        let entries = names(20_000);
        let before = build_dir(entries.clone(), &key);
        let known = facts_of(&before);
        let root = &known[&before.root().hash];
        assert_eq!(root.first.as_deref(), Some(&b"file-0000000"[..]));
        assert_eq!(root.last.as_deref(), Some(&b"file-0019999"[..]));
        assert_eq!((root.entries, root.nodes), (20_000, 20_000));
        let mut changed = entries;
        changed[12_345].meta.size = 101;
        let after = build_dir(changed.clone(), &key);
        let bytes: std::collections::HashMap<TreeHash, Vec<u8>> = after
            .pages
            .iter()
            .map(|p| (p.hash, p.bytes.clone()))
            .collect();
        let mut fetched = 0;
        let l = load_new(
            &after.root().hash,
            |h| Ok(known.get(h).cloned()),
            |h| {
                fetched += 1;
                Ok(bytes[h].clone())
            },
        )
        .unwrap();
        let height = after.root().level as usize;
        assert_eq!(fetched, 1 + height);
        assert_eq!(l.pages.len(), 1 + height);
        assert!(l.entries.len() < 300, "{} entries", l.entries.len());
        let e = l.entries.iter().find(|e| e.name == changed[12_345].name);
        assert_eq!(e.map(|e| e.meta.size), Some(101));
        // The new root (loaded first) has the facts a whole load finds.
        assert_eq!(l.pages[0].hash, after.root().hash);
        assert_eq!(l.facts[0], facts_of(&after)[&after.root().hash]);
    }

    #[test]
    fn a_known_page_whose_names_overlap_its_neighbours_is_refused() {
        let key = crate::format::keying::Keying::plain();
        let d = build_dir(names(2_000), &key);
        let bytes: std::collections::HashMap<TreeHash, Vec<u8>> =
            d.pages.iter().map(|p| (p.hash, p.bytes.clone())).collect();
        let mut known = facts_of(&d);
        known.remove(&d.root().hash);
        let leaves: Vec<TreeHash> = d
            .pages
            .iter()
            .filter(|p| p.level == 0)
            .map(|p| p.hash)
            .collect();
        // A first leaf said to end after the second begins.
        known.get_mut(&leaves[0]).unwrap().last = Some(b"file-9".to_vec());
        let err = load_new(
            &d.root().hash,
            |h| Ok(known.get(h).cloned()),
            |h| Ok(bytes[h].clone()),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("out of order"), "{err}");
    }

    #[test]
    fn pages_that_do_not_fit_together_are_refused() {
        let key = crate::format::keying::Keying::plain();
        let d = build_dir(names(2_000), &key);
        let mut bytes: std::collections::HashMap<TreeHash, Vec<u8>> =
            d.pages.iter().map(|p| (p.hash, p.bytes.clone())).collect();
        let leaves: Vec<&BuiltPage> = d.pages.iter().filter(|p| p.level == 0).collect();
        // A leaf swapped for another: first name and counts disagree.
        let (a, b) = (leaves[0].hash, leaves[1].hash);
        let other = bytes[&b].clone();
        bytes.insert(a, other);
        let err = load_dir(&d.root().hash, |h| Ok(bytes[h].clone())).unwrap_err();
        assert!(err.to_string().contains("differ"), "{err}");
        // An index page whose child is itself (a loop): refused by level.
        let root = d.root();
        let Page::Index { children, level } = decode_page(&root.bytes).unwrap() else {
            panic!("2,000 entries make an index")
        };
        let mut looped = children.clone();
        looped[0].page = root.hash;
        let evil = encode_page(&Page::Index {
            level,
            children: looped,
        });
        let err = load_dir(&root.hash, |_| Ok(evil.clone())).unwrap_err();
        assert!(err.to_string().contains("level"), "{err}");
    }

    proptest! {
        #![proptest_config(mutate::config())]

        #[test]
        fn decode_page_never_panics_on_arbitrary_bytes(b in mutate::bytes()) {
            if let Ok(page) = decode_page(&b) {
                prop_assert_eq!(decode_page(&encode_page(&page)).unwrap(), page);
            }
        }

        #[test]
        fn damaged_pages_decode_to_valid_entries_or_fail(
            b in mutate::damaged(encode_page(&Page::Leaf(sample_entries())))
        ) {
            if let Ok(page) = decode_page(&b) {
                if let Page::Leaf(entries) = &page {
                    for w in entries.windows(2) {
                        prop_assert!(w[0].name < w[1].name);
                    }
                    for e in entries {
                        prop_assert!(name_problem(&e.name).is_none());
                        prop_assert!(e.meta.mtime.nanos < FileTime::NANOS_PER_SEC);
                    }
                }
                prop_assert_eq!(decode_page(&encode_page(&page)).unwrap(), page);
            }
        }
    }
}
