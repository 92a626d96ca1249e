//! The walk: read the sources depth-first in name order, build each directory's
//! tree bottom-up, and reuse what the previous snapshot already holds.
//!
//! Only the directory being read is held in memory at each depth (and the
//! matching directory of the previous snapshot), never the whole tree. The
//! walk visits entries in the same depth-first order the mount numbers them,
//! so hard-link groups get their first member's position here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use globset::GlobSet;

use super::pipeline::Pipeline;
use super::sparse::SparseFile;
use super::{IngestStats, Warning};
use crate::error::{Error, Result};
use crate::format::chunker::{Chunker, ChunkerParams, Piece, Source};
use crate::format::keying::Keying;
use crate::format::pack::ChunkKind;
use crate::format::page::build_dir;
use crate::format::tree::{
    Body, ChunkList, ChunkRef, ContentRef, Entry, FileTime, Kind, Meta, encode_xattrs,
};
use crate::ids::{ChunkId, TreeHash, TreeId};
use crate::repo::catalog::{Catalog, Node};

/// Commit the catalog at least this often, so a killed ingest loses little.
const CHECKPOINT_SECS: u64 = 30;
/// ... or when this many new chunks wait for their packs to be recorded.
const CHECKPOINT_CHUNKS: usize = 50_000;

/// What the walk visits above and at the sources.
pub enum Plan {
    /// A source path: walked with everything beneath it.
    Source,
    /// A directory above a source: only the planned names are included.
    Dir(BTreeMap<Vec<u8>, Plan>),
    /// Standard input stored as one file.
    Stdin,
}

impl Plan {
    /// The plan for a set of absolute source paths; a source beneath another
    /// source is covered by it.
    pub fn for_sources(sources: &[PathBuf]) -> BTreeMap<Vec<u8>, Plan> {
        let mut root = BTreeMap::new();
        for s in sources {
            insert(&mut root, &crate::repo::paths::components(s), Plan::Source);
        }
        root
    }

    pub fn for_stdin(name: &Path) -> BTreeMap<Vec<u8>, Plan> {
        let mut root = BTreeMap::new();
        insert(
            &mut root,
            &crate::repo::paths::components(name),
            Plan::Stdin,
        );
        root
    }
}

fn insert(map: &mut BTreeMap<Vec<u8>, Plan>, parts: &[Vec<u8>], leaf: Plan) {
    let Some((first, rest)) = parts.split_first() else {
        return;
    };
    if rest.is_empty() {
        map.insert(first.clone(), leaf);
        return;
    }
    let slot = map
        .entry(first.clone())
        .or_insert_with(|| Plan::Dir(BTreeMap::new()));
    if let Plan::Dir(children) = slot {
        insert(children, rest, leaf);
    }
}

/// An entry found by the walk, with the catalog rows of its content or tree.
type Walked = (Entry, Option<ContentRef>, Option<TreeId>);

#[derive(Clone, Copy)]
pub struct DirResult {
    pub hash: TreeHash,
    pub id: TreeId,
    pub nodes: u64,
}

impl DirResult {
    /// The body, content and subtree of the entry that names this directory.
    pub(crate) fn entry_parts(&self) -> (Body, Option<ContentRef>, Option<TreeId>) {
        (
            Body::Dir {
                tree: self.hash,
                nodes: self.nodes,
            },
            None,
            Some(self.id),
        )
    }
}

pub struct WalkOptions {
    pub excludes: GlobSet,
    pub exclude_names: GlobSet,
    pub exclude_caches: bool,
    pub one_file_system: bool,
    pub chunker: ChunkerParams,
}

pub struct Walker<'a> {
    pub progress: &'a crate::commands::progress::Progress,
    pub cat: &'a Catalog,
    pub pipe: &'a Pipeline,
    pub opts: &'a WalkOptions,
    pub stats: &'a mut IngestStats,
    /// New chunks handed to the pipeline since the last checkpoint.
    pending: HashSet<ChunkId>,
    /// Hard link groups: key → (first member's position, names seen).
    pub links: HashMap<u64, (u64, u64)>,
    /// Owners and groups of the entries walked, to record their names.
    pub uids: std::collections::BTreeSet<u32>,
    pub gids: std::collections::BTreeSet<u32>,
    last_checkpoint: Instant,
    /// Device of the source being walked, for --one-file-system.
    source_dev: u64,
    /// The chunker's read buffer, reused for every file.
    buf: Vec<u8>,
    /// A row of the previous snapshot did not decode: the tree rows this
    /// ingest reuses by hash may be the damaged ones, and are checked.
    saw_damage: bool,
    /// How ids, file chunks and directory pages are cut and named.
    keying: std::sync::Arc<Keying>,
}

impl<'a> Walker<'a> {
    pub fn new(
        cat: &'a Catalog,
        pipe: &'a Pipeline,
        opts: &'a WalkOptions,
        stats: &'a mut IngestStats,
        progress: &'a crate::commands::progress::Progress,
        keying: std::sync::Arc<Keying>,
    ) -> Self {
        Walker {
            progress,
            cat,
            pipe,
            opts,
            stats,
            pending: HashSet::new(),
            links: HashMap::new(),
            uids: Default::default(),
            gids: Default::default(),
            last_checkpoint: Instant::now(),
            source_dev: 0,
            buf: Vec::new(),
            saw_damage: false,
            keying,
        }
    }

    /// Make everything stored so far durable and commit the catalog.
    pub fn checkpoint(&mut self) -> Result<()> {
        for p in self.pipe.flush()? {
            self.stats.added_bytes += p.size;
            self.cat.add_pack(&p.name, p.size, &p.entries)?;
        }
        self.pending.clear();
        self.cat.commit()?;
        self.cat.begin()?;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    fn maybe_checkpoint(&mut self) -> Result<()> {
        if self.pending.len() >= CHECKPOINT_CHUNKS
            || self.last_checkpoint.elapsed().as_secs() >= CHECKPOINT_SECS
        {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Store a chunk unless the repository (or this ingest) already has it.
    pub fn put_chunk(&mut self, kind: ChunkKind, data: &[u8]) -> Result<ChunkId> {
        let hashed = self.keying.hash_chunk(data);
        let id = hashed.id;
        if !self.pending.contains(&id) && !self.cat.has_chunk(&id)? {
            self.pending.insert(id);
            self.stats.new_chunks += 1;
            self.pipe.store(kind, data.to_vec(), hashed)?;
        }
        Ok(id)
    }

    /// A chunk of `len` zeros (from a hole), stored like any chunk unless
    /// the repository has it: readers that know nothing of holes (verify,
    /// copy, older releases) find it in a pack. Its id needs no hashing.
    fn put_zero_chunk(&mut self, len: usize) -> Result<ChunkId> {
        let len32 = u32::try_from(len)
            .map_err(|_| Error::invalid(format!("a chunk of {len} bytes is too long")))?;
        let id = self.keying.zero_id(len32);
        if !self.pending.contains(&id) && !self.cat.has_chunk(&id)? {
            self.pending.insert(id);
            self.stats.new_chunks += 1;
            self.pipe
                .store(ChunkKind::Data, vec![0; len], self.keying.zero_hashed(len))?;
        }
        Ok(id)
    }

    fn warn(&mut self, w: Warning) {
        log::warn!("{w}");
        if matches!(w, Warning::Unreadable { .. }) {
            self.stats.unreadable += 1;
        }
        self.stats.warnings.push(w);
    }

    /// Walk the planned names at `path` (the root is `/`).
    pub fn walk_plan(
        &mut self,
        path: &Path,
        plan: &BTreeMap<Vec<u8>, Plan>,
        prev: Option<TreeId>,
        pos: u64,
    ) -> Result<DirResult> {
        let names: Vec<Vec<u8>> = plan.keys().cloned().collect();
        self.walk_names(path, names, Some(plan), prev, pos)
    }

    fn walk_dir(
        &mut self,
        path: &Path,
        prev: Option<TreeId>,
        pos: u64,
    ) -> Result<Option<DirResult>> {
        let rd = match std::fs::read_dir(path) {
            Ok(rd) => rd,
            Err(e) => {
                self.unreadable(path, e);
                return Ok(None);
            }
        };
        let mut names = Vec::new();
        for e in rd {
            match e {
                Ok(e) => names.push(e.file_name().as_bytes().to_vec()),
                Err(e) => {
                    self.unreadable(path, e);
                    return Ok(None);
                }
            }
        }
        names.sort_unstable();
        if self.opts.exclude_caches
            && names.iter().any(|n| n == b"CACHEDIR.TAG")
            && is_cache_dir(path)
        {
            // Keep the tag itself, so a restore shows why the rest is missing.
            names.retain(|n| n == b"CACHEDIR.TAG");
        }
        self.walk_names(path, names, None, prev, pos).map(Some)
    }

    fn unreadable(&mut self, path: &Path, e: std::io::Error) {
        if e.kind() == std::io::ErrorKind::NotFound {
            self.warn(Warning::Vanished {
                path: path.to_path_buf(),
            });
        } else {
            self.warn(Warning::Unreadable {
                path: path.to_path_buf(),
                error: e.to_string(),
            });
        }
    }

    fn walk_names(
        &mut self,
        path: &Path,
        names: Vec<Vec<u8>>,
        plan: Option<&BTreeMap<Vec<u8>, Plan>>,
        prev: Option<TreeId>,
        pos: u64,
    ) -> Result<DirResult> {
        // A previous listing that does not decode (a damaged page) is
        // no reason to stop backing up: everything here is read again.
        let prev_entries: HashMap<Vec<u8>, Node> = match prev.map(|t| self.cat.entries(t)) {
            Some(Ok(v)) => v.into_iter().map(|n| (n.name.clone(), n)).collect(),
            Some(Err(Error::Corrupt(e))) => {
                self.saw_damage = true;
                self.warn(Warning::DamagedPrevious {
                    path: path.to_path_buf(),
                    what: "directory pages",
                    error: e,
                });
                HashMap::new()
            }
            Some(Err(e)) => return Err(e),
            None => HashMap::new(),
        };
        let mut entries: Vec<Entry> = Vec::with_capacity(names.len());
        let mut ids: Vec<(Option<ContentRef>, Option<TreeId>)> = Vec::with_capacity(names.len());
        let mut offset = 0u64;
        for name in names {
            let child = path.join(OsStr::from_bytes(&name));
            let child_plan = plan.and_then(|p| p.get(&name));
            let child_pos = pos + 1 + offset;
            let prev_node = prev_entries.get(&name);
            let got = match child_plan {
                Some(Plan::Stdin) => Some(self.stdin_entry(name)?),
                Some(Plan::Dir(sub)) => {
                    self.planned_dir(&child, name, sub, prev_node, child_pos)?
                }
                Some(Plan::Source) | None => {
                    if plan.is_none() && self.excluded(&child, &name) {
                        continue;
                    }
                    if matches!(child_plan, Some(Plan::Source)) {
                        match std::fs::symlink_metadata(&child) {
                            Ok(m) => self.source_dev = m.dev(),
                            Err(e) => {
                                self.unreadable(&child, e);
                                continue;
                            }
                        }
                    }
                    self.entry(&child, name, prev_node, child_pos)?
                }
            };
            let Some((entry, content, subtree)) = got else {
                continue;
            };
            if entry.link_key != 0 {
                self.links.entry(entry.link_key).or_insert((child_pos, 0)).1 += 1;
            }
            offset += entry.span();
            self.uids.insert(entry.meta.uid);
            self.gids.insert(entry.meta.gid);
            entries.push(entry);
            ids.push((content, subtree));
        }
        // What the previous snapshot had here and this one has not.
        for (name, n) in &prev_entries {
            if entries
                .binary_search_by(|e| e.name.as_slice().cmp(name))
                .is_err()
            {
                self.stats.deleted += match n.subtree {
                    Some(t) => 1 + self.cat.tree_nodes(t)?,
                    None => 1,
                };
            }
        }
        // Nothing changed here: the previous tree, without encoding or
        // hashing anything, and without fetching the files' chunk lists.
        if let Some(prev) = prev
            && prev_entries.len() == entries.len()
            && entries.iter().zip(&ids).all(|(e, &(c, t))| {
                prev_entries
                    .get(&e.name)
                    .is_some_and(|p| same_entry(p, e, c, t))
            })
        {
            self.maybe_checkpoint()?;
            return Ok(DirResult {
                hash: self.cat.tree_hash(prev)?,
                id: prev,
                nodes: self.cat.tree_nodes(prev)?,
            });
        }
        let res = self.finish_tree(entries)?;
        self.maybe_checkpoint()?;
        Ok(res)
    }

    /// Record a directory's pages, those not already stored.
    pub(crate) fn finish_tree(&mut self, entries: Vec<Entry>) -> Result<DirResult> {
        let built = build_dir(entries, &self.keying);
        let mut id = None;
        for p in &built.pages {
            self.put_chunk(ChunkKind::Page, &p.bytes)?;
            id = Some(match self.cat.tree_by_hash(&p.hash)? {
                // The same page as one already stored: its row is the one
                // its hash describes unless it is damaged, in which case
                // reusing it would carry the damage into this snapshot.
                Some((id, _)) => {
                    if self.saw_damage && self.cat.page_body(id)? != p.bytes {
                        log::warn!(
                            "page {}: damaged row put right from the directory on disk",
                            p.hash
                        );
                        self.cat.replace_page(id, p)?;
                    }
                    id
                }
                None => self.cat.add_page(p)?,
            });
        }
        let root = built.root();
        Ok(DirResult {
            hash: root.hash,
            id: id.expect("a directory has a root page"),
            nodes: root.nodes,
        })
    }

    fn excluded(&self, path: &Path, name: &[u8]) -> bool {
        self.opts.excludes.is_match(path)
            || self.opts.exclude_names.is_match(OsStr::from_bytes(name))
    }

    fn planned_dir(
        &mut self,
        path: &Path,
        name: Vec<u8>,
        plan: &BTreeMap<Vec<u8>, Plan>,
        prev: Option<&Node>,
        pos: u64,
    ) -> Result<Option<Walked>> {
        // A source reached through a symlink (`/srv/current` -> `/srv/v2`)
        // records the directory the link leads to: its mode may be what
        // protects everything below, and a made-up 0755 would open that up
        // to every user of a mount. Only above a stdin name is there no
        // directory at all.
        let mut meta = match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => Meta::from_stat(&m),
            Ok(m) if m.file_type().is_symlink() => match std::fs::metadata(path) {
                Ok(t) if t.is_dir() => Meta::from_stat(&t),
                _ => synthetic_dir_meta(),
            },
            _ => synthetic_dir_meta(),
        };
        keep_atime(&mut meta, prev.filter(|p| p.kind == Kind::Dir));
        let prev_tree = prev.filter(|p| p.kind == Kind::Dir).and_then(|p| p.subtree);
        let xattrs = self.xattrs(path, &meta, prev);
        let d = self.walk_plan(path, plan, prev_tree, pos)?;
        self.stats.dirs += 1;
        Ok(Some((
            Entry {
                name,
                kind: Kind::Dir,
                meta,
                link_key: 0,
                xattrs,
                body: Body::Dir {
                    tree: d.hash,
                    nodes: d.nodes,
                },
            },
            None,
            Some(d.id),
        )))
    }

    fn xattrs(&mut self, path: &Path, meta: &Meta, prev: Option<&Node>) -> Vec<(Vec<u8>, Vec<u8>)> {
        // An xattr change updates ctime: with the same inode and ctime, the
        // previous snapshot's attributes are still right, if they decode.
        // Ones that do not are read again: recording none in their place
        // would drop ACLs and capabilities from every later snapshot.
        if let Some(p) = prev
            && p.meta.ino == meta.ino
            && p.meta.ctime == meta.ctime
        {
            match crate::format::tree::decode_xattrs(&p.xattrs) {
                Ok(x) => return x,
                Err(e) => {
                    self.saw_damage = true;
                    self.warn(Warning::DamagedPrevious {
                        path: path.to_path_buf(),
                        what: "extended attributes",
                        error: e.to_string(),
                    });
                }
            }
        }
        read_xattrs(path).unwrap_or_else(|e| {
            log::debug!("{}: cannot list extended attributes: {e}", path.display());
            Vec::new()
        })
    }

    /// One entry found on disk.
    fn entry(
        &mut self,
        path: &Path,
        name: Vec<u8>,
        prev: Option<&Node>,
        pos: u64,
    ) -> Result<Option<Walked>> {
        let md = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) => {
                self.unreadable(path, e);
                return Ok(None);
            }
        };
        let mut meta = Meta::from_stat(&md);
        let Some(kind) = Kind::from_mode(meta.mode) else {
            log::info!("{}: socket not kept", path.display());
            self.stats.skipped_sockets += 1;
            return Ok(None);
        };
        let prev = prev.filter(|p| p.kind == kind);
        keep_atime(&mut meta, prev);
        let xattrs = self.xattrs(path, &meta, prev);
        let link_key = if kind != Kind::Dir && meta.nlink > 1 {
            link_key(md.dev(), meta.ino)
        } else {
            0
        };
        let (body, content, subtree) = match kind {
            Kind::Dir => {
                let cross = self.opts.one_file_system && md.dev() != self.source_dev;
                let d = if cross {
                    self.finish_tree(Vec::new())?
                } else {
                    let prev_tree = prev.and_then(|p| p.subtree);
                    match self.walk_dir(path, prev_tree, pos)? {
                        Some(d) => d,
                        None => return Ok(None),
                    }
                };
                self.stats.dirs += 1;
                d.entry_parts()
            }
            Kind::File => {
                self.stats.files += 1;
                self.progress.item();
                let unchanged = prev.filter(|p| {
                    p.meta.size == meta.size
                        && p.meta.mtime == meta.mtime
                        && p.meta.ctime == meta.ctime
                        && p.meta.ino == meta.ino
                        && p.meta.mode == meta.mode
                });
                // An unchanged empty file has no content to refer to, and
                // is just as unchanged.
                let cid = match unchanged.map(|p| p.content) {
                    Some(cid) if cid.is_some() || meta.size == 0 => {
                        self.stats.reused_files += 1;
                        cid
                    }
                    _ => {
                        if prev.is_some() {
                            self.stats.changed += 1;
                        }
                        match self.read_file(path, &mut meta)? {
                            Some(list) => self.content_id(&list, meta.size)?,
                            None => {
                                self.stats.files -= 1;
                                return Ok(None);
                            }
                        }
                    }
                };
                self.stats.size += meta.size;
                (Body::File(cid), cid, None)
            }
            Kind::Symlink => match std::fs::read_link(path) {
                Ok(t) => (Body::Symlink(t.as_os_str().as_bytes().to_vec()), None, None),
                Err(e) => {
                    self.unreadable(path, e);
                    return Ok(None);
                }
            },
            _ => (Body::Special, None, None),
        };
        Ok(Some((
            Entry {
                name,
                kind,
                meta,
                link_key,
                xattrs,
                body,
            },
            content,
            subtree,
        )))
    }

    /// How a file refers to its chunks; a list of several is stored (once)
    /// as a chunk of its own and recorded in the catalog.
    pub(crate) fn content_id(&mut self, list: &ChunkList, size: u64) -> Result<Option<ContentRef>> {
        let c = ContentRef::of_list(&self.keying, list, size);
        if let Some(ContentRef::List(hash)) = &c
            && !self.cat.has_content(hash)?
        {
            self.put_chunk(ChunkKind::List, &list.0)?;
            self.cat.add_content(hash, list)?;
        }
        Ok(c)
    }

    /// Chunk and store a file. None if it could not be read (warned).
    fn read_file(&mut self, path: &Path, meta: &mut Meta) -> Result<Option<ChunkList>> {
        let file = match open_noatime(path) {
            Ok(f) => f,
            Err(e) => {
                self.unreadable(path, e);
                return Ok(None);
            }
        };
        match file.metadata() {
            Ok(m) if m.ino() == meta.ino && m.is_file() => {}
            Ok(_) => {
                // Replaced between the listing and the open: take it next time.
                self.warn(Warning::Vanished {
                    path: path.to_path_buf(),
                });
                return Ok(None);
            }
            Err(e) => {
                self.unreadable(path, e);
                return Ok(None);
            }
        }
        // Only a file with fewer blocks than its size can have holes.
        let sparse = meta.blocks.saturating_mul(512) < meta.size;
        let (list, read, source) = match self.store_stream(SparseFile::new(file, sparse)) {
            Ok(v) => v,
            Err(StreamError::Read(e)) => {
                self.unreadable(path, e);
                return Ok(None);
            }
            Err(StreamError::Store(e)) => return Err(e),
        };
        let holes = source.hole_bytes();
        self.stats.bytes_read += read.saturating_sub(holes);
        self.stats.hole_bytes += holes;
        let file = source.into_inner();
        let after = file.metadata().map(|m| Meta::from_stat(&m));
        let changed = match &after {
            Ok(a) => a.size != read || a.mtime != meta.mtime || a.ctime != meta.ctime,
            Err(_) => true,
        };
        if changed || read != meta.size {
            self.warn(Warning::Changed {
                path: path.to_path_buf(),
            });
            // Record what was read; the old ctime makes the next ingest read it again.
            meta.size = read;
        }
        Ok(Some(list))
    }

    /// Chunk and store what `r` gives, which is not a file on disk (`copy`
    /// re-encoding another repository's file): a failure to read is an
    /// error, not a warning. An [`Error`] carried in the `io::Error` of a
    /// read comes back as itself, so damage keeps its message.
    pub(crate) fn store_reader<R: Source>(&mut self, r: R) -> Result<(ChunkList, u64)> {
        match self.store_stream(r) {
            Ok((list, read, _)) => Ok((list, read)),
            Err(StreamError::Store(e)) => Err(e),
            Err(StreamError::Read(e)) => Err(match e.downcast::<Error>() {
                Ok(inner) => inner,
                Err(e) => Error::invalid(e.to_string()),
            }),
        }
    }

    /// Chunk and store a stream; returns its chunks and its length (holes
    /// included).
    fn store_stream<R: Source>(
        &mut self,
        r: R,
    ) -> std::result::Result<(ChunkList, u64, R), StreamError> {
        let mut buf = std::mem::take(&mut self.buf);
        let keying = self.keying.clone();
        let mut chunker = Chunker::new(r, self.opts.chunker, keying.gear(), &mut buf);
        let mut list = ChunkList::default();
        let mut read = 0u64;
        let result = loop {
            let (id, len, count) = match chunker.next_piece() {
                Ok(Some(Piece::Data(chunk))) => match self.put_chunk(ChunkKind::Data, chunk) {
                    Ok(id) => (id, chunk.len(), 1),
                    Err(e) => break Err(StreamError::Store(e)),
                },
                Ok(Some(Piece::Zeros { len, count })) => match self.put_zero_chunk(len) {
                    Ok(id) => (id, len, count),
                    Err(e) => break Err(StreamError::Store(e)),
                },
                Ok(None) => break Ok(()),
                Err(e) => break Err(StreamError::Read(e)),
            };
            let bytes = (len as u64).saturating_mul(count);
            read = read.saturating_add(bytes);
            self.progress.bytes(bytes);
            for _ in 0..count {
                list.push(ChunkRef {
                    id,
                    len: len as u32,
                });
            }
        };
        let reader = chunker.into_inner();
        self.buf = buf;
        result?;
        Ok((list, read, reader))
    }

    fn stdin_entry(&mut self, name: Vec<u8>) -> Result<Walked> {
        let stdin = std::io::stdin().lock();
        let (list, read, _) = self.store_stream(stdin).map_err(|e| match e {
            StreamError::Read(e) => Error::Io {
                path: PathBuf::from("<stdin>"),
                source: e,
            },
            StreamError::Store(e) => e,
        })?;
        self.stats.bytes_read += read;
        let cid = self.content_id(&list, read)?;
        let now = FileTime::from_ns(crate::time::now_ns());
        // SAFETY: plain libc getters.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        self.stats.files += 1;
        self.stats.size += read;
        Ok((
            Entry {
                name,
                kind: Kind::File,
                meta: Meta {
                    mode: libc::S_IFREG | 0o600,
                    uid,
                    gid,
                    size: read,
                    mtime: now,
                    ctime: now,
                    atime: now,
                    nlink: 1,
                    blocks: read.div_ceil(512),
                    ..Meta::default()
                },
                link_key: 0,
                xattrs: Vec::new(),
                body: Body::File(cid),
            },
            cid,
            None,
        ))
    }
}

enum StreamError {
    Read(std::io::Error),
    Store(Error),
}

fn synthetic_dir_meta() -> Meta {
    let now = FileTime::from_ns(crate::time::now_ns());
    Meta {
        mode: libc::S_IFDIR | 0o755,
        mtime: now,
        ctime: now,
        atime: now,
        nlink: 2,
        ..Meta::default()
    }
}

/// An access alone is no change: when nothing but the access time differs
/// from the previous snapshot, keep the previous access time. Reads by
/// anyone (the walk's own directory reads among them: relatime updates a
/// directory's atime once a day) would otherwise make every directory a new
/// tree in every daily snapshot.
fn keep_atime(meta: &mut Meta, prev: Option<&Node>) {
    if let Some(p) = prev
        && p.meta.atime != meta.atime
    {
        let same_otherwise = Meta {
            atime: p.meta.atime,
            ..meta.clone()
        } == p.meta;
        if same_otherwise {
            meta.atime = p.meta.atime;
        }
    }
}

/// Is a new entry exactly the previous snapshot's (so its tree can be reused)?
pub(crate) fn same_entry(
    p: &Node,
    e: &Entry,
    content: Option<ContentRef>,
    subtree: Option<TreeId>,
) -> bool {
    p.kind == e.kind
        && p.meta == e.meta
        && p.link_key == e.link_key
        && p.content == content
        && p.subtree == subtree
        && p.xattrs == encode_xattrs(&e.xattrs)
        && match &e.body {
            Body::Symlink(t) => p.target.as_ref() == Some(t),
            _ => true,
        }
}

/// Open without updating the access time where the kernel allows it (owner
/// or root), so a backup does not disturb what it backs up.
fn open_noatime(path: &Path) -> std::io::Result<File> {
    let flags = libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK;
    match OpenOptions::new()
        .read(true)
        .custom_flags(flags | libc::O_NOATIME)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            OpenOptions::new().read(true).custom_flags(flags).open(path)
        }
        r => r,
    }
}

/// A hard link group's key: stable across snapshots for the same inode.
fn link_key(dev: u64, ino: u64) -> u64 {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&dev.to_le_bytes());
    b[8..].copy_from_slice(&ino.to_le_bytes());
    let h = blake3::hash(&b);
    (u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) >> 1).max(1)
}

pub fn read_xattrs(path: &Path) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in xattr::list(path)? {
        if let Some(v) = xattr::get(path, &name)? {
            out.push((name.as_bytes().to_vec(), v));
        }
    }
    out.sort();
    Ok(out)
}

/// A directory tagged by the Cache Directory Tagging Specification.
fn is_cache_dir(dir: &Path) -> bool {
    const SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";
    let mut buf = [0u8; 43];
    File::open(dir.join("CACHEDIR.TAG"))
        .and_then(|mut f| f.read_exact(&mut buf))
        .map(|_| buf == SIGNATURE)
        .unwrap_or(false)
}
