//! Copying between repositories whose keys differ: an encrypted repository
//! and an unencrypted one, or two encrypted ones with their own keys.
//!
//! Stored blobs cannot travel as they are: a chunk's id, the boundaries
//! of a file's chunks and the pages of a directory all depend on the key,
//! and every frame is sealed under it. So each snapshot is written into
//! the destination as ingest would write it, with the source snapshot
//! standing in for the filesystem: every file is read back out of the
//! source (verified as it is read), cut again by the destination's
//! chunker, named by the destination's ids and sealed under its key;
//! directories, metadata, hard links and the snapshot's own record keep
//! what the source holds.
//!
//! Deduplication therefore starts over in the destination: nothing it
//! stores can be matched with the source's chunks, and the first copy
//! sends the whole of every file. Within the destination it works as
//! always (its own ingests and later copies deduplicate against what the
//! copy stored), and a later copy reads again only what changed: each
//! snapshot is paired with the newest earlier source snapshot the
//! destination already has, and a directory or file the two source
//! snapshots share is taken from the destination's copy of that one.

use std::collections::HashMap;
use std::io::Read;
use std::time::Instant;

use super::{CopyStats, child_path, selected_snapshots};
use crate::commands::ingest::IngestStats;
use crate::commands::ingest::pipeline::{Pipeline, PipelineOptions};
use crate::commands::ingest::walk::{DirResult, WalkOptions, Walker, same_entry};
use crate::error::{Error, Result};
use crate::format::chunker::Source;
use crate::format::pack::ChunkKind;
use crate::format::record::SnapshotRow;
use crate::format::tree::{Body, ChunkList, ContentRef, Entry, Kind, decode_xattrs};
use crate::ids::TreeId;
use crate::repo::Repository;
use crate::repo::catalog::{Catalog, Node};

/// Contents (and directories) already re-encoded in this run, by the
/// source's reference (hard links, copies of one file, files and trees
/// shared by the snapshots copied). Bounded: forgetting costs only reading
/// a file or a directory again.
const CONTENT_MEMO_MAX: usize = 1 << 20;

/// Two rows describe the same snapshot: a re-encoded copy keeps the times,
/// host and sources of the one it copies (its id, the hash of its record,
/// differs; its name may have been taken).
fn same_snapshot(a: &SnapshotRow, b: &SnapshotRow) -> bool {
    a.started_ns == b.started_ns
        && a.finished_ns == b.finished_ns
        && a.host == b.host
        && a.sources == b.sources
}

/// A snapshot of the source already in the destination, and its copy
/// there: what an unchanged directory or file is taken from.
struct Pair {
    src: TreeId,
    dst: TreeId,
}

/// Copy the snapshots named by `which` (default: all) from `src` into
/// `dst`, re-encoding them under `dst`'s key. The caller holds no lock on
/// `dst`; this takes it.
pub fn copy_reencoded(src: &Repository, dst: &Repository, which: &[String]) -> Result<CopyStats> {
    let t0 = Instant::now();
    let src_cat = src.catalog()?;
    let snaps = selected_snapshots(&src_cat, which)?;

    let _lock = dst.lock("copy")?;
    let cat = dst.catalog()?;
    let tx = cat.transaction()?;
    dst.adopt_orphan_packs(&cat)?;
    let packs_before = dst.backend.list()?.len();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let pipe = Pipeline::start(
        dst.backend.clone(),
        PipelineOptions {
            level: dst.config.compression,
            workers,
            pack_size: dst.config.pack_size,
            tmp_dir: dst.tmp_dir(),
            keying: dst.keying.clone(),
        },
    )?;
    let wopts = WalkOptions {
        excludes: globset::GlobSet::empty(),
        exclude_names: globset::GlobSet::empty(),
        exclude_caches: false,
        one_file_system: false,
        chunker: dst.config.chunker,
    };
    let mut stats = CopyStats::default();
    let mut istats = IngestStats::default();
    let progress = crate::commands::progress::Progress::new("copy", "files", None);
    let result = (|| -> Result<()> {
        let mut w = Walker::new(
            &cat,
            &pipe,
            &wopts,
            &mut istats,
            &progress,
            dst.keying.clone(),
        );
        let mut copier = Copier {
            src,
            src_cat: &src_cat,
            memo: HashMap::new(),
            dirs: HashMap::new(),
            read: 0,
        };
        let mut links_memo = Default::default();
        // Read once: the destination's list grows by the rows added here.
        let mut present = cat.snapshots()?;
        let src_all = src_cat.snapshots()?;
        for s in snaps {
            let s = s.decoded()?.clone();
            if present.iter().any(|d| same_snapshot(d, &s)) {
                stats.snapshots_present += 1;
                continue;
            }
            // The newest earlier source snapshot the destination has.
            let pair = src_all
                .iter()
                .filter(|p| p.started_ns <= s.started_ns && p.id != s.id)
                .rev()
                .find_map(|p| {
                    present.iter().find(|d| same_snapshot(d, p)).map(|d| Pair {
                        src: p.root_tree,
                        dst: d.root_tree,
                    })
                });
            let added_before = w.stats.added_bytes;
            let root = copier
                .dir(&mut w, s.root_tree, pair.as_ref(), "/")
                .map_err(|e| super::in_snapshot(&s.name, e))?;
            let mut row = SnapshotRow {
                hash: Default::default(),
                root_tree: root.id,
                ..s.clone()
            };
            // Everything the snapshot needs is stored first; then, before its
            // record goes, the lease must not have lapsed meanwhile.
            w.checkpoint()?;
            dst.check_lease_unbroken()?;
            let record = crate::format::record::encode_record(
                &row,
                &root.hash,
                root.nodes,
                &[s.files, s.dirs, s.size, s.read_bytes, s.warnings],
            );
            row.hash = w.put_chunk(ChunkKind::Snapshot, &record)?.0;
            w.checkpoint()?;
            row.added_bytes = w.stats.added_bytes - added_before;
            let mut i = 2;
            while cat.name_taken(&row.name)? {
                row.name = format!("{}-{i}", s.name);
                i += 1;
            }
            let id = cat.add_snapshot(&row)?;
            let mut links = HashMap::new();
            crate::repo::import::count_links(&cat, root.id, 0, &mut links_memo, &mut links)?;
            for (key, (first, count)) in links {
                if count > 1 {
                    cat.add_hardlink(id, key, first, count)?;
                }
            }
            w.checkpoint()?;
            stats.bytes_sent += row.added_bytes;
            stats.snapshots_copied.push(row.name.clone());
            present.push(SnapshotRow { id, ..row });
        }
        stats.bytes_read = copier.read;
        Ok(())
    })();
    pipe.finish();
    result?;
    tx.commit()?;
    cat.checkpoint();
    stats.chunks_sent = istats.new_chunks;
    stats.packs_sent = dst.backend.list()?.len().saturating_sub(packs_before) as u64;
    stats.seconds = t0.elapsed().as_secs_f64();
    Ok(stats)
}

/// Re-encodes a source snapshot's directories and files.
struct Copier<'a> {
    src: &'a Repository,
    src_cat: &'a Catalog,
    /// Source content → the destination's (see [`CONTENT_MEMO_MAX`]).
    memo: HashMap<ContentRef, Option<ContentRef>>,
    /// Source directories already re-encoded in this run, by their tree's
    /// hash: a directory that appears in several places (or several
    /// snapshots) is done once, and a forged tree that names one
    /// directory many times over costs no more than its distinct ones.
    dirs: HashMap<crate::ids::TreeHash, DirResult>,
    /// Bytes of files read back out of the source.
    read: u64,
}

impl Copier<'_> {
    /// The destination's directory for the source's `tree` at `path`.
    fn dir(
        &mut self,
        w: &mut Walker,
        tree: TreeId,
        pair: Option<&Pair>,
        path: &str,
    ) -> Result<DirResult> {
        let src_hash = self.src_cat.tree_hash(tree)?;
        if let Some(d) = self.dirs.get(&src_hash) {
            return Ok(*d);
        }
        let _level = crate::format::tree::descend(|| format!("tree {src_hash}"))?;
        let d = self.dir_uncached(w, tree, src_hash, pair, path)?;
        if self.dirs.len() >= CONTENT_MEMO_MAX {
            self.dirs.clear();
        }
        self.dirs.insert(src_hash, d);
        Ok(d)
    }

    fn dir_uncached(
        &mut self,
        w: &mut Walker,
        tree: TreeId,
        src_hash: crate::ids::TreeHash,
        pair: Option<&Pair>,
        path: &str,
    ) -> Result<DirResult> {
        let dst_cat = w.cat;
        // The same directory as in the paired snapshot: its copy is this
        // one's, everything beneath it included.
        if let Some(p) = pair
            && self.src_cat.tree_hash(p.src)? == src_hash
        {
            return Ok(DirResult {
                hash: dst_cat.tree_hash(p.dst)?,
                id: p.dst,
                nodes: dst_cat.tree_nodes(p.dst)?,
            });
        }
        let here = |e: Error| match e {
            Error::Corrupt(m) => Error::corrupt(format!("directory {path} (tree {src_hash}): {m}")),
            e => e,
        };
        let nodes = self.src_cat.entries(tree).map_err(here)?;
        let (before, copied): (HashMap<Vec<u8>, Node>, HashMap<Vec<u8>, Node>) = match pair {
            Some(p) => (
                by_name(self.src_cat.entries(p.src).map_err(here)?),
                by_name(dst_cat.entries(p.dst)?),
            ),
            None => Default::default(),
        };
        let mut entries = Vec::with_capacity(nodes.len());
        let mut ids = Vec::with_capacity(nodes.len());
        for n in nodes {
            let child = child_path(path, &n.name);
            let was = before.get(&n.name).filter(|b| b.kind == n.kind);
            let was_copied = copied.get(&n.name).filter(|c| c.kind == n.kind);
            let xattrs = decode_xattrs(&n.xattrs).map_err(|e| {
                Error::corrupt(format!("{child}: extended attributes: {}", e.detail()))
            })?;
            let (body, content, subtree) = match n.kind {
                Kind::Dir => {
                    let sub = n.subtree.ok_or_else(|| {
                        Error::corrupt(format!("directory {child}: its tree is missing"))
                    })?;
                    let child_pair = match (was.and_then(|b| b.subtree), was_copied) {
                        (Some(src), Some(c)) => c.subtree.map(|dst| Pair { src, dst }),
                        _ => None,
                    };
                    self.dir(w, sub, child_pair.as_ref(), &child)?.entry_parts()
                }
                Kind::File => {
                    let c = match n.content {
                        None => None,
                        // The paired snapshot's file, unchanged: its copy.
                        Some(c)
                            if was.is_some_and(|b| b.content == Some(c))
                                && was_copied.is_some_and(|d| {
                                    d.content.is_some() && d.meta.size == n.meta.size
                                }) =>
                        {
                            was_copied.and_then(|d| d.content)
                        }
                        Some(c) => self.file(w, c, n.meta.size, &child)?,
                    };
                    w.progress.item();
                    (Body::File(c), c, None)
                }
                Kind::Symlink => {
                    let t = n.target.clone().ok_or_else(|| {
                        Error::corrupt(format!("symlink {child}: its target is missing"))
                    })?;
                    (Body::Symlink(t), None, None)
                }
                _ => (Body::Special, None, None),
            };
            entries.push(Entry {
                name: n.name,
                kind: n.kind,
                meta: n.meta,
                link_key: n.link_key,
                xattrs,
                body,
            });
            ids.push((content, subtree));
        }
        // What the paired copy holds already, entry for entry.
        if let Some(p) = pair
            && copied.len() == entries.len()
            && entries.iter().zip(&ids).all(|(e, &(c, t))| {
                copied
                    .get(&e.name)
                    .is_some_and(|prev| same_entry(prev, e, c, t))
            })
        {
            return Ok(DirResult {
                hash: dst_cat.tree_hash(p.dst)?,
                id: p.dst,
                nodes: dst_cat.tree_nodes(p.dst)?,
            });
        }
        w.finish_tree(entries)
    }

    /// The destination's content for the source's `content` of file `path`.
    fn file(
        &mut self,
        w: &mut Walker,
        content: ContentRef,
        size: u64,
        path: &str,
    ) -> Result<Option<ContentRef>> {
        if let Some(c) = self.memo.get(&content) {
            return Ok(*c);
        }
        let at = |e: Error| match e {
            Error::Corrupt(m) => Error::corrupt(format!("file {path}: {m}")),
            e => e,
        };
        let list = self.src_cat.content(&content).map_err(at)?;
        let reader = StoredFile {
            repo: self.src,
            cat: self.src_cat,
            list,
            next: 0,
            state: State::Empty,
        };
        let (list, read) = w.store_reader(reader).map_err(at)?;
        self.read += read;
        if read != size {
            return Err(Error::corrupt(format!(
                "file {path}: its chunks hold {read} bytes, its entry says {size}"
            )));
        }
        let c = w.content_id(&list, size)?;
        if self.memo.len() >= CONTENT_MEMO_MAX {
            self.memo.clear();
        }
        self.memo.insert(content, c);
        Ok(c)
    }
}

fn by_name(nodes: Vec<Node>) -> HashMap<Vec<u8>, Node> {
    nodes.into_iter().map(|n| (n.name.clone(), n)).collect()
}

/// Where a [`StoredFile`] is in its current chunk.
enum State {
    /// Nothing loaded: the next chunk is looked at when asked.
    Empty,
    /// Bytes of a chunk read and verified, from `at` on not yet given out.
    Data { buf: Vec<u8>, at: usize },
    /// Zeros of a chunk of zeros (a hole at the source), not read.
    Zeros { left: u64 },
}

/// A file's content, read chunk by chunk out of the repository that holds
/// it; a chunk of zeros is handed to the chunker as a hole, so a sparse
/// file stays sparse in the destination.
struct StoredFile<'a> {
    repo: &'a Repository,
    cat: &'a Catalog,
    list: ChunkList,
    next: usize,
    state: State,
}

impl StoredFile<'_> {
    /// Look at the next chunk if nothing is loaded. False at the end.
    fn load(&mut self) -> Result<bool> {
        loop {
            match &self.state {
                State::Data { buf, at } if *at < buf.len() => return Ok(true),
                State::Zeros { left } if *left > 0 => return Ok(true),
                _ => {}
            }
            if self.next >= self.list.len() {
                self.state = State::Empty;
                return Ok(false);
            }
            let c = self.list.get(self.next);
            self.next += 1;
            let loc = self
                .cat
                .chunk_loc(&c.id)?
                .ok_or_else(|| Error::corrupt(format!("chunk {} is absent", c.id)))?;
            if loc.raw_len != c.len {
                return Err(Error::corrupt(format!(
                    "chunk {} holds {} bytes, its list says {}",
                    c.id, loc.raw_len, c.len
                )));
            }
            self.state = if self.repo.keying.is_zero_chunk(&c.id, c.len, loc.stored_len) {
                State::Zeros {
                    left: u64::from(c.len),
                }
            } else {
                State::Data {
                    buf: self.repo.read_chunk(&c.id, &loc)?,
                    at: 0,
                }
            };
        }
    }
}

fn io_error(e: Error) -> std::io::Error {
    std::io::Error::other(e)
}

impl Read for StoredFile<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if !self.load().map_err(io_error)? {
            return Ok(0);
        }
        match &mut self.state {
            State::Data { buf, at } => {
                let n = (buf.len() - *at).min(out.len());
                out[..n].copy_from_slice(&buf[*at..*at + n]);
                *at += n;
                Ok(n)
            }
            State::Zeros { left } => {
                let n = usize::try_from(*left).map_or(out.len(), |l| l.min(out.len()));
                out[..n].fill(0);
                *left -= n as u64;
                Ok(n)
            }
            State::Empty => Ok(0),
        }
    }
}

impl Source for StoredFile<'_> {
    fn hole_ahead(&mut self) -> u64 {
        // A chunk that cannot be looked at is read (and fails) instead.
        if !self.load().unwrap_or(false) {
            return 0;
        }
        match self.state {
            State::Zeros { left } => left,
            _ => 0,
        }
    }

    fn skip_hole(&mut self, n: u64) {
        if let State::Zeros { left } = &mut self.state {
            *left -= n.min(*left);
        }
    }
}
