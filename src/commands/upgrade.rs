//! `snapfs upgrade`: convert a repository of format 1 to format 2 in place.
//!
//! File data is the same in both formats, so no data chunk is read or
//! written: only metadata. Every snapshot's directories are rewritten as
//! pages, a file of several chunks gets its chunk list as a chunk of its
//! own, and each snapshot a new record (with the same name, times, host,
//! sources and tags; its id changes, since the record's bytes do). The new
//! catalog is built beside the old one from the packs alone, checked entry
//! by entry against the format-1 trees, and swapped in; the config is
//! rewritten last. That rewrite is the commit point: killed before it, the
//! repository is still format 1 (with a few extra packs the next run uses)
//! and `snapfs upgrade` starts over; after it, format 2. Then gc removes
//! the format-1 trees and records, which nothing refers to any more; a run
//! on a format-2 repository finishes that clean-up if it was interrupted.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::format::blob;
use crate::format::pack::{ChunkKind, PackWriter};
use crate::format::page::build_dir;
use crate::format::record::{Record, check_snapshot_name, decode_record_v1, encode_record};
use crate::format::tree::{Body, ContentRef, Entry, MAX_DEPTH, decode_xattrs};
use crate::format::v1;
use crate::ids::{ChunkId, Hash, TreeHash, TreeId};
use crate::repo::catalog::Catalog;
use crate::repo::{Config, FORMAT, Repository};

#[derive(Debug, Default, Serialize)]
pub struct UpgradeStats {
    /// The format the repository had.
    pub from: u32,
    pub to: u32,
    /// Snapshots converted (forgotten ones are not).
    pub snapshots: u64,
    /// Directories converted (each shared one once).
    pub directories: u64,
    /// Entries compared between the format-1 trees and the new catalog.
    pub entries_checked: u64,
    /// Metadata chunks written (pages, chunk lists, records).
    pub chunks_written: u64,
    pub bytes_written: u64,
    /// Where the format-1 catalog was put aside.
    pub old_catalog: Option<PathBuf>,
    /// Snapshots whose format-1 name format 2 refuses (a `/`, a `:`, a
    /// leading `.`, a reserved name), with the name each has now.
    pub renamed: Vec<Renamed>,
    /// The clean-up that removed the format-1 metadata.
    pub gc: Option<crate::commands::gc::GcStats>,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Renamed {
    pub from: String,
    pub to: String,
}

/// A name format 2 accepts for a format-1 snapshot called `name`: the
/// characters it refuses become `_`, so the name still says what it did;
/// what cannot be mended that way gets one made from the record's id.
fn acceptable_name(name: &str, record: &ChunkId) -> String {
    let mut fixed: String = name
        .chars()
        .map(|c| {
            if matches!(c, '/' | ':' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect();
    while fixed.starts_with('.') {
        fixed.replace_range(..1, "_");
    }
    while fixed.len() > 200 {
        fixed.pop();
    }
    if check_snapshot_name(&fixed).is_ok() {
        fixed
    } else {
        format!("upgraded-{}", &record.0.to_hex()[..12])
    }
}

/// The format the repository at `root` says it has, without judging the rest.
fn format_of(root: &Path) -> Result<(u32, String)> {
    let path = root.join("config");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotARepository(root.to_path_buf()));
        }
        Err(e) => return Err(e).at(&path),
    };
    let found = text
        .lines()
        .find_map(format_in)
        .ok_or_else(|| Error::invalid(format!("{}: no format line", path.display())))?;
    Ok((found, text))
}

/// The format a config line gives, if it is the format line.
fn format_in(line: &str) -> Option<u32> {
    let rest = line.trim().strip_prefix("format")?;
    rest.trim().strip_prefix('=')?.trim().parse().ok()
}

pub fn upgrade(root: &Path) -> Result<UpgradeStats> {
    let t0 = Instant::now();
    let (found, text) = format_of(root)?;
    let mut stats = UpgradeStats {
        from: found,
        to: FORMAT,
        ..Default::default()
    };
    if found == FORMAT {
        // Done before; finish the clean-up should it have been cut short.
        let repo = Repository::open(root)?;
        stats.gc = Some(clean_up(&repo)?);
        stats.seconds = t0.elapsed().as_secs_f64();
        return Ok(stats);
    }
    if found != 1 {
        return Err(Error::UnsupportedFormat {
            path: root.to_path_buf(),
            found: format!("format {found}"),
            supported: FORMAT,
        });
    }
    // Everything else in the config must be as valid as format 2 wants it.
    // The format line is replaced however it is spaced.
    let text: Vec<String> = text
        .lines()
        .map(|l| match format_in(l) {
            Some(_) => format!("format = {FORMAT}"),
            None => l.to_string(),
        })
        .collect();
    let config = Config::parse(&text.join("\n"), &root.join("config"))?;
    let repo = Repository::open_with(root, config)?;
    {
        let _lock = repo.lock("upgrade")?;
        crate::commands::rebuild::refuse_with_readers(&repo, "upgrade")?;
        // A catalog a killed run was building, built again from scratch.
        crate::commands::rebuild::remove_leftovers(repo.catalog_dir(), &repo.catalog_path())?;
        let building = repo.catalog_dir().join(format!(
            "{}{}",
            crate::commands::rebuild::BUILDING,
            crate::format::pack::unique_token()
        ));
        let built = convert(&repo, &building, &mut stats);
        if let Err(e) = built {
            crate::commands::rebuild::remove_building(&building);
            return Err(e);
        }
        if let Err(e) = crate::commands::rebuild::refuse_with_readers(&repo, "upgrade") {
            crate::commands::rebuild::remove_building(&building);
            return Err(e);
        }
        stats.old_catalog = crate::commands::rebuild::swap(&repo, &building, &repo.catalog_path())?;
        repo.write_config(&repo.config)?;
    }
    stats.gc = Some(clean_up(&repo)?);
    stats.seconds = t0.elapsed().as_secs_f64();
    Ok(stats)
}

/// Remove what no snapshot refers to, rewriting every pack that holds any
/// of it: the format-1 trees and records sit in packs beside live data.
fn clean_up(repo: &Repository) -> Result<crate::commands::gc::GcStats> {
    crate::commands::gc::gc(
        repo,
        &crate::commands::gc::GcOptions {
            max_unused: 0.0,
            allow_delete: true,
            ..Default::default()
        },
    )
}

/// Metadata chunks on their way into packs of the repository.
struct Writer<'a> {
    repo: &'a Repository,
    cat: &'a Catalog,
    enc: blob::Encoder,
    pack: Option<PackWriter>,
    /// Chunks in the pack being filled (not in the catalog yet).
    pending: HashSet<ChunkId>,
    chunks: u64,
    bytes: u64,
}

impl Writer<'_> {
    fn put(&mut self, kind: ChunkKind, data: &[u8]) -> Result<ChunkId> {
        let hashed = self.repo.keying.hash_chunk(data);
        let id = hashed.id;
        if self.pending.contains(&id) || self.cat.has_chunk(&id)? {
            return Ok(id);
        }
        let blob = self.enc.encode(data, &hashed)?;
        if self.pack.is_none() {
            self.pack = Some(PackWriter::create(
                &self.repo.tmp_dir(),
                crate::format::pack::recorded_level(self.repo.config.compression),
                &self.repo.keying,
            )?);
        }
        let w = self.pack.as_mut().expect("pack just created");
        let raw =
            u32::try_from(data.len()).map_err(|_| Error::invalid("a metadata chunk over 4 GiB"))?;
        w.append(id, kind, raw, &blob)?;
        self.pending.insert(id);
        self.chunks += 1;
        if w.len() >= self.repo.config.pack_size {
            self.flush()?;
        }
        Ok(id)
    }

    /// Seal the pack being filled, make it durable and index it.
    fn flush(&mut self) -> Result<()> {
        if let Some(w) = self.pack.take() {
            let s = w.seal()?;
            self.repo.backend.put(&s.name, &s.path)?;
            self.cat.add_pack(&s.name, s.size, &s.entries)?;
            self.bytes += s.size;
            self.pending.clear();
        }
        Ok(())
    }
}

/// Read a format-1 metadata chunk through the new catalog's index.
fn read(repo: &Repository, cat: &Catalog, id: &ChunkId) -> Result<Vec<u8>> {
    let loc = cat
        .chunk_loc(id)?
        .ok_or_else(|| Error::corrupt(format!("metadata chunk {id} is not in any pack")))?;
    repo.read_chunk(id, &loc)
}

fn read_tree(repo: &Repository, cat: &Catalog, hash: &TreeHash) -> Result<Vec<v1::Entry>> {
    read(repo, cat, &ChunkId(hash.0))
        .and_then(|b| v1::decode_tree(&b))
        .map_err(|e| match e {
            Error::Corrupt(m) => Error::corrupt(format!("format-1 tree {hash}: {m}")),
            e => e,
        })
}

/// Build the format-2 catalog at `building`, writing new metadata chunks.
fn convert(repo: &Repository, building: &Path, stats: &mut UpgradeStats) -> Result<()> {
    crate::commands::rebuild::create_building(building)?;
    let cat = Catalog::open(building, true)?;
    let tx = cat.transaction()?;
    for name in repo.backend.list()? {
        let (size, entries) = repo.read_pack_table(&name)?;
        cat.add_pack(&name, size, &entries)?;
    }
    let mut records = Vec::new();
    let mut forgotten: HashSet<Hash> = HashSet::new();
    for id in cat.chunk_ids_of_kind(ChunkKind::Snapshot)? {
        let bytes = read(repo, &cat, &id)?;
        match decode_record_v1(&bytes, id.0) {
            Ok(Record::Snapshot { row, root }) => {
                records.push((row.started_ns, row.name.clone(), id, row, root))
            }
            Ok(Record::Forget(hashes)) => forgotten.extend(hashes),
            // A format-2 record from an earlier, interrupted upgrade.
            Err(_) if crate::format::record::decode_record(&bytes, id.0).is_ok() => {}
            Err(e) => return Err(e),
        }
    }
    records.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut w = Writer {
        repo,
        cat: &cat,
        enc: blob::Encoder::new(repo.config.compression, &repo.keying)?,
        pack: None,
        pending: HashSet::new(),
        chunks: 0,
        bytes: 0,
    };
    let mut done: HashMap<TreeHash, (TreeHash, u64)> = HashMap::new();
    let mut converted = Vec::new();
    let mut seen: HashSet<ChunkId> = HashSet::new();
    for (_, _, id, mut row, old_root) in records {
        if forgotten.contains(&id.0) {
            continue;
        }
        let renamed = check_snapshot_name(&row.name).is_err().then(|| {
            let to = acceptable_name(&row.name, &id);
            Renamed {
                from: std::mem::replace(&mut row.name, to.clone()),
                to,
            }
        });
        let (root, nodes) = convert_tree(repo, &mut w, &mut done, &old_root)?;
        let counts = [row.files, row.dirs, row.size, row.read_bytes, row.warnings];
        let record = encode_record(&row, &root, nodes, &counts);
        let rec = w.put(ChunkKind::Snapshot, &record)?;
        // Format-1 records that differ only in their claim of nodes (which
        // format 2 counts itself) become one record: one snapshot.
        if !seen.insert(rec) {
            continue;
        }
        if let Some(r) = renamed {
            log::warn!(
                "snapshot {:?} is renamed {:?}: format 2 refuses its name",
                r.from,
                r.to
            );
            stats.renamed.push(r);
        }
        converted.push((rec, old_root));
    }
    w.flush()?;
    stats.chunks_written = w.chunks;
    stats.bytes_written = w.bytes;
    stats.directories = done.len() as u64;
    drop(w);
    // The new records become snapshots the way a rebuild imports them.
    let mut importer = crate::repo::import::Importer::new(repo, &cat);
    let mut checked: HashSet<TreeHash> = HashSet::new();
    for (rec, old_root) in &converted {
        let id = importer
            .snapshot(rec, 0)?
            .ok_or_else(|| Error::corrupt(format!("converted record {rec} did not import")))?;
        let root = cat
            .snapshot(id)?
            .ok_or_else(|| Error::corrupt("a converted snapshot vanished"))?
            .root_tree;
        stats.entries_checked += compare(repo, &cat, old_root, root, &mut checked)?;
        stats.snapshots += 1;
    }
    if !importer.problems.is_empty() {
        return Err(Error::corrupt(format!(
            "the converted snapshots do not import cleanly: {}",
            importer.problems.join("; ")
        )));
    }
    drop(importer);
    cat.attribute_added_bytes()?;
    tx.commit()?;
    cat.fold_wal()?;
    drop(cat);
    std::fs::File::open(building)
        .and_then(|f| f.sync_all())
        .at(building)?;
    Ok(())
}

/// A format-1 directory and everything beneath it as format-2 pages;
/// returns its root page and node count. Depth-first with an explicit
/// stack, sharing directories converted before.
fn convert_tree(
    repo: &Repository,
    w: &mut Writer,
    done: &mut HashMap<TreeHash, (TreeHash, u64)>,
    root: &TreeHash,
) -> Result<(TreeHash, u64)> {
    struct Frame {
        old: TreeHash,
        entries: std::vec::IntoIter<v1::Entry>,
        new: Vec<Entry>,
        waiting: Option<v1::Entry>,
    }
    if let Some(r) = done.get(root) {
        return Ok(*r);
    }
    let key = w.repo.keying.clone();
    let open = |w: &Writer, old: &TreeHash| -> Result<Frame> {
        Ok(Frame {
            old: *old,
            entries: read_tree(repo, w.cat, old)?.into_iter(),
            new: Vec::new(),
            waiting: None,
        })
    };
    let mut stack = vec![open(w, root)?];
    loop {
        let top = stack.last_mut().expect("the stack is never empty here");
        let Some(e) = top.entries.next() else {
            let f = stack.pop().expect("the stack is never empty here");
            let built = build_dir(f.new, &key);
            for p in &built.pages {
                w.put(ChunkKind::Page, &p.bytes)?;
            }
            let r = (built.root().hash, built.root().nodes);
            done.insert(f.old, r);
            match stack.last_mut() {
                None => return Ok(r),
                Some(parent) => {
                    let e = parent
                        .waiting
                        .take()
                        .expect("a parent waits for its subtree");
                    parent.new.push(entry(
                        e,
                        Body::Dir {
                            tree: r.0,
                            nodes: r.1,
                        },
                    ));
                    continue;
                }
            }
        };
        let body = match &e.body {
            v1::Body::Dir { tree, .. } => match done.get(tree) {
                Some(&(t, n)) => Body::Dir { tree: t, nodes: n },
                None => {
                    if stack.len() >= MAX_DEPTH {
                        return Err(Error::corrupt(format!(
                            "format-1 tree {tree}: nested deeper than {MAX_DEPTH} levels"
                        )));
                    }
                    let tree = *tree;
                    let f = open(w, &tree)?;
                    stack
                        .last_mut()
                        .expect("the stack is never empty here")
                        .waiting = Some(e);
                    stack.push(f);
                    continue;
                }
            },
            v1::Body::File(list) => {
                let c = ContentRef::of_list(&w.repo.keying, list, e.meta.size);
                if let Some(ContentRef::List(h)) = &c {
                    w.put(ChunkKind::List, &list.0)?;
                    w.cat.add_content(h, list)?;
                }
                Body::File(c)
            }
            v1::Body::Symlink(t) => Body::Symlink(t.clone()),
            v1::Body::Special => Body::Special,
        };
        top.new.push(entry(e, body));
    }
}

fn entry(e: v1::Entry, body: Body) -> Entry {
    Entry {
        name: e.name,
        kind: e.kind,
        meta: e.meta,
        link_key: e.link_key,
        xattrs: e.xattrs,
        body,
    }
}

/// Compare every entry of the format-1 tree `old` with the new catalog's
/// directory `new` (names, kinds, metadata, extended attributes, link
/// targets, chunk lists), each shared directory once. Returns the number of
/// entries compared; a difference is an error naming the path.
fn compare(
    repo: &Repository,
    cat: &Catalog,
    old: &TreeHash,
    new: TreeId,
    checked: &mut HashSet<TreeHash>,
) -> Result<u64> {
    let mut n = 0u64;
    let mut stack = vec![(*old, new, PathBuf::from("/"))];
    while let Some((old, new, path)) = stack.pop() {
        if !checked.insert(old) {
            continue;
        }
        let a = read_tree(repo, cat, &old)?;
        let b = cat.entries(new)?;
        if a.len() != b.len() {
            return Err(Error::corrupt(format!(
                "upgrade check: {} has {} entries in format 1 and {} converted",
                path.display(),
                a.len(),
                b.len()
            )));
        }
        for (x, y) in a.iter().zip(&b) {
            let p = path.join(std::ffi::OsStr::new(&*String::from_utf8_lossy(&x.name)));
            let differ = |what: &str| {
                Error::corrupt(format!(
                    "upgrade check: {} differs in its {what}",
                    p.display()
                ))
            };
            if x.name != y.name || x.kind != y.kind {
                return Err(differ("name or kind"));
            }
            if x.meta != y.meta || x.link_key != y.link_key {
                return Err(differ("metadata"));
            }
            if decode_xattrs(&y.xattrs)? != x.xattrs {
                return Err(differ("extended attributes"));
            }
            match &x.body {
                v1::Body::File(list) => {
                    let got = match &y.content {
                        Some(c) => cat.content(c)?,
                        None => Default::default(),
                    };
                    if &got != list {
                        return Err(differ("chunks"));
                    }
                }
                v1::Body::Symlink(t) => {
                    if y.target.as_ref() != Some(t) {
                        return Err(differ("link target"));
                    }
                }
                v1::Body::Dir { tree, .. } => {
                    let sub = y.subtree.ok_or_else(|| differ("directory"))?;
                    stack.push((*tree, sub, p.clone()));
                }
                v1::Body::Special => {}
            }
            n += 1;
        }
    }
    Ok(n)
}
