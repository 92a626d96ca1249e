//! Catalog rows from metadata chunks already in packs: a snapshot record and
//! the trees beneath it. Used to rebuild a lost catalog and to receive
//! copied snapshots; in both, the packs are durable before rows refer to them.

use std::collections::HashMap;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::page::{BuiltPage, PageFacts, build_dir, load_new};
use crate::format::record::SnapshotRow;
use crate::format::record::{Record, decode_record};
use crate::format::tree::{Body, ChunkList, ContentRef, Entry};
use crate::ids::{ChunkId, ContentHash, SnapshotId, TreeHash, TreeId};
use crate::repo::Repository;
use crate::repo::catalog::Catalog;

/// Paths listed per tree and per snapshot in a damage report; beyond this,
/// only counted (a crafted repository can lose any number of directories).
const MAX_LISTED: usize = 100;

pub struct Importer<'a> {
    pub repo: &'a Repository,
    pub cat: &'a Catalog,
    /// What could not be imported (lost trees), for the caller to report.
    pub problems: Vec<String>,
    /// A catalog whose rows stand in for trees the packs no longer yield:
    /// a rebuild passes the catalog it would replace, so that one damaged
    /// tree record does not empty a directory that catalog still knows.
    fallback: Option<&'a Catalog>,
    /// Trees whose rows came from `fallback`.
    pub reused_trees: u64,
    /// Per imported snapshot with any, the directories lost or taken from
    /// `fallback`.
    pub damage: Vec<SnapshotDamage>,
    /// Damage beneath each tree imported so far that has any, with paths
    /// relative to that tree: a later snapshot that shares the tree shares
    /// its damage, and is told so too.
    damaged: HashMap<TreeHash, Damage>,
    /// Pages imported in this run with everything beneath them, and what
    /// they hold: a directory that shares them reads only its new pages.
    /// Pages of a directory with damage beneath are left out, so that a
    /// directory sharing them is told of the damage.
    imported: HashMap<TreeHash, PageFacts>,
    /// Pages of directories with damage beneath.
    damaged_pages: std::collections::HashSet<TreeHash>,
    /// Hard link groups of pages counted so far ([`count_links`]).
    links: crate::repo::catalog::Folded<Groups>,
    /// Pages taken from `fallback` in this run, and whether their bytes
    /// are the very page: a later directory sharing one is told too.
    from_fallback: HashMap<TreeHash, bool>,
    /// Metadata chunks read ahead from a store.
    prefetched: crate::repo::coalesce::Prefetched,
}

/// Directories beneath one tree (paths relative to it, "" for itself)
/// whose contents are lost, or whose rows came from the fallback catalog.
#[derive(Clone, Debug, Default)]
struct Damage {
    lost: Vec<Vec<u8>>,
    reused: Vec<Vec<u8>>,
    /// How many of each there are, listed or not.
    lost_count: u64,
    reused_count: u64,
}

impl Damage {
    fn is_empty(&self) -> bool {
        self.lost_count == 0 && self.reused_count == 0
    }

    /// Take in the damage of the subtree at `name`.
    fn absorb(&mut self, name: &[u8], below: &Damage) {
        let under = |p: &Vec<u8>| {
            let mut q = name.to_vec();
            if !p.is_empty() {
                q.push(b'/');
                q.extend_from_slice(p);
            }
            q
        };
        let room = MAX_LISTED.saturating_sub(self.lost.len());
        self.lost.extend(below.lost.iter().take(room).map(under));
        let room = MAX_LISTED.saturating_sub(self.reused.len());
        self.reused
            .extend(below.reused.iter().take(room).map(under));
        self.lost_count = self.lost_count.saturating_add(below.lost_count);
        self.reused_count = self.reused_count.saturating_add(below.reused_count);
    }
}

/// What one imported snapshot could not get from the packs. Paths are
/// inside the snapshot (`/` is its root).
#[derive(Clone, Debug, Default, Serialize)]
pub struct SnapshotDamage {
    pub snapshot: String,
    /// Directories whose contents are lost: shown empty.
    pub lost_dirs: Vec<String>,
    pub lost_dirs_count: u64,
    /// Directories whose tree record in the packs is missing or damaged,
    /// rebuilt from the rows of the catalog being replaced.
    pub reused_dirs: Vec<String>,
    pub reused_dirs_count: u64,
}

/// A path as the snapshot shows it (its root is `/`), from one relative to
/// the root tree.
fn snapshot_path(rel: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(rel))
}

impl<'a> Importer<'a> {
    pub fn new(repo: &'a Repository, cat: &'a Catalog) -> Self {
        Importer {
            repo,
            cat,
            problems: Vec::new(),
            fallback: None,
            reused_trees: 0,
            damage: Vec::new(),
            damaged: HashMap::new(),
            imported: HashMap::new(),
            damaged_pages: Default::default(),
            links: HashMap::new(),
            from_fallback: HashMap::new(),
            prefetched: Default::default(),
        }
    }

    /// Take metadata chunks from `p` before reading them from the packs.
    pub fn with_prefetched(mut self, p: crate::repo::coalesce::Prefetched) -> Self {
        self.prefetched = p;
        self
    }

    /// Take trees the packs cannot yield from the rows of `old` (see
    /// [`Importer::fallback`]).
    pub fn with_fallback(mut self, old: &'a Catalog) -> Self {
        self.fallback = Some(old);
        self
    }

    fn read(&self, id: &ChunkId) -> Result<Vec<u8>> {
        if let Some(bytes) = self.prefetched.take(id) {
            return Ok(bytes);
        }
        let loc = self
            .cat
            .chunk_loc(id)?
            .ok_or_else(|| Error::corrupt(format!("metadata chunk {id} is not in any pack")))?;
        self.repo.read_chunk(id, &loc)
    }

    /// Stand in for a directory whose pages are lost: a row under its hash
    /// that holds an empty page but the node count its entry claims, so
    /// the entry keeps its place (and every inode number around it stays).
    /// `verify` reports the row as one that disagrees with its hash.
    fn lost_tree(&self, hash: &TreeHash, claimed: u64) -> Result<TreeId> {
        if let Some((t, _)) = self.cat.tree_by_hash(hash)? {
            return Ok(t);
        }
        let mut empty = build_dir(Vec::new(), &self.repo.keying)
            .pages
            .pop()
            .expect("an empty directory has one page");
        empty.hash = *hash;
        empty.nodes = claimed;
        self.cat.add_page(&empty)
    }

    /// One page's bytes: from this catalog when it has the page already
    /// (shared with a directory imported before), else from the packs, else
    /// from the fallback catalog. The flag says it came from the fallback
    /// (in this run, also when this catalog has it from there), and
    /// whether those bytes are the very page (hash and all).
    fn page_bytes(&self, hash: &TreeHash) -> Result<(Vec<u8>, Option<bool>)> {
        if let Some((id, _)) = self.cat.tree_by_hash(hash)? {
            let from_old = self.from_fallback.get(hash).copied();
            return Ok((self.cat.page_body(id)?, from_old));
        }
        let err = match self.read(&ChunkId(hash.0)) {
            Ok(b) => return Ok((b, None)),
            Err(e) => e,
        };
        let old = match self.fallback {
            Some(old) => old,
            None => return Err(err),
        };
        match old.tree_by_hash(hash)? {
            Some((id, _)) => {
                let body = old.page_body(id)?;
                let exact = self.repo.keying.hash_chunk(&body).id.0 == hash.0;
                Ok((body, Some(exact)))
            }
            None => Err(err),
        }
    }

    /// The pages of the directory `hash` not imported before and the
    /// entries of its new leaves in order, checked (`load_new`). Pages come
    /// from the packs, or from the fallback catalog (as untrusted as a
    /// pack, and checked the same). A page this catalog held before the
    /// import is known too, with everything beneath it.
    fn open_tree(&mut self, hash: &TreeHash, path: Vec<u8>) -> Result<Pending> {
        let mut reused = None::<bool>;
        let mut taken = Vec::new();
        let damaged = &self.damaged_pages;
        let loaded = load_new(
            hash,
            |h| {
                if damaged.contains(h) {
                    return Ok(None);
                }
                if let Some(f) = self.imported.get(h) {
                    return Ok(Some(f.clone()));
                }
                match self.cat.tree_by_hash(h)? {
                    Some((id, _)) => self.cat.page_facts(id).map(Some),
                    None => Ok(None),
                }
            },
            |h| {
                let (bytes, from_old) = self.page_bytes(h)?;
                if let Some(exact) = from_old {
                    reused = Some(reused.unwrap_or(true) && exact);
                    taken.push((*h, exact));
                }
                Ok(bytes)
            },
        )?;
        self.from_fallback.extend(taken);
        let mut p = Pending::new(*hash, loaded, path);
        if let Some(exact) = reused {
            self.reused_trees += 1;
            p.damage.reused.push(Vec::new());
            p.damage.reused_count = 1;
            self.problems.push(format!(
                "directory {:?}: pages missing from the packs were taken from the previous catalog{}",
                snapshot_path(&p.path),
                if exact {
                    ""
                } else {
                    " (they differ from the pages the packs recorded: that catalog had lost parts of them too)"
                }
            ));
        }
        Ok(p)
    }

    /// The chunk list `hash` in this catalog, from the packs if missing.
    /// A list that cannot be had is reported; the file's reads fail.
    fn content(&mut self, hash: &ContentHash, path: &[u8]) -> Result<()> {
        if self.cat.has_content(hash)? {
            return Ok(());
        }
        let list = self
            .read(&ChunkId(hash.0))
            .and_then(ChunkList::validate)
            .and_then(|l| {
                if l.hash(&self.repo.keying) == *hash {
                    Ok(l)
                } else {
                    Err(Error::corrupt("its bytes are not the list its id names"))
                }
            });
        match list {
            Ok(l) => self.cat.add_content(hash, &l),
            Err(e) => {
                self.problems.push(format!(
                    "file {:?}: its chunk list {hash} is lost ({e}); reading it fails",
                    snapshot_path(path)
                ));
                Ok(())
            }
        }
    }

    /// The directory row for `hash`, imported (with everything beneath) if missing.
    ///
    /// Depth-first with an explicit stack, not recursion: the depth of a
    /// tree is whatever the packs say, and a chain of ten thousand nested
    /// directories (real or crafted) once overflowed the thread's stack.
    /// A directory that neither the packs nor the fallback catalog yield is
    /// shown as an empty directory and reported in `problems`; catalog
    /// errors stop the import.
    pub fn tree(&mut self, root: &TreeHash) -> Result<TreeId> {
        if let Some((t, _)) = self.cat.tree_by_hash(root)? {
            return Ok(t);
        }
        let first = self.open_tree(root, Vec::new())?;
        let mut stack = vec![first];
        loop {
            let depth = stack.len();
            let top = stack.last_mut().expect("the stack is never empty here");
            let Some(e) = top.entries.next() else {
                let done = stack.pop().expect("the stack is never empty here");
                let mut id = None;
                for p in &done.pages {
                    id = Some(self.cat.add_page(p)?);
                }
                if done.damage.is_empty() {
                    for (p, f) in done.pages.iter().zip(done.facts) {
                        self.imported.insert(p.hash, f);
                    }
                } else {
                    self.damaged.insert(done.hash, done.damage.clone());
                    self.damaged_pages.extend(done.pages.iter().map(|p| p.hash));
                }
                let (id, held) = match self.cat.tree_by_hash(&done.hash)? {
                    Some(t) => t,
                    None => (id.expect("a directory has pages"), 0),
                };
                match stack.last_mut() {
                    None => return Ok(id),
                    Some(parent) => {
                        let e = parent
                            .waiting
                            .take()
                            .expect("a parent waits for its subtree");
                        claims_hold(&e, held, &parent.child_path(&e.name))?;
                        parent.damage.absorb(&e.name, &done.damage);
                        continue;
                    }
                }
            };
            match &e.body {
                Body::File(Some(ContentRef::List(h))) => {
                    let (h, path) = (*h, top.child_path(&e.name));
                    self.content(&h, &path)?;
                }
                Body::Dir { tree: sub, .. } => {
                    if let Some((_, held)) = self.cat.tree_by_hash(sub)? {
                        claims_hold(&e, held, &top.child_path(&e.name))?;
                        if let Some(d) = self.damaged.get(sub) {
                            top.damage.absorb(&e.name, d);
                        }
                        continue;
                    }
                    let path = top.child_path(&e.name);
                    let sub = *sub;
                    let opened = if depth >= crate::format::tree::MAX_DEPTH {
                        Err(Error::corrupt(format!(
                            "nested deeper than {} levels",
                            crate::format::tree::MAX_DEPTH
                        )))
                    } else {
                        self.open_tree(&sub, path.clone())
                    };
                    match opened {
                        Ok(p) => {
                            let top = stack.last_mut().expect("the stack is never empty here");
                            top.waiting = Some(e);
                            stack.push(p);
                        }
                        Err(err) => {
                            self.problems.push(format!(
                                "directory {:?}: its contents are lost, shown empty ({err})",
                                snapshot_path(&path)
                            ));
                            // Recorded under the directory's own hash too:
                            // a later snapshot that shares it is told.
                            let lost = Damage {
                                lost: vec![Vec::new()],
                                lost_count: 1,
                                ..Damage::default()
                            };
                            let top = stack.last_mut().expect("the stack is never empty here");
                            top.damage.absorb(&e.name, &lost);
                            self.damaged.insert(sub, lost);
                            let claimed = match &e.body {
                                Body::Dir { nodes, .. } => *nodes,
                                _ => 0,
                            };
                            self.lost_tree(&sub, claimed)?;
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Add the snapshot whose record is chunk `record` (trees imported as
    /// needed). Returns None if the record is a forget record or the
    /// snapshot is already present.
    pub fn snapshot(&mut self, record: &ChunkId, added_bytes: u64) -> Result<Option<SnapshotId>> {
        let Record::Snapshot { row, root } = decode_record(&self.read(record)?, record.0)? else {
            return Ok(None);
        };
        if self.cat.has_snapshot(&row.hash)? {
            return Ok(None);
        }
        let mut row: SnapshotRow = *row;
        if let Err(e) = crate::format::record::check_snapshot_name(&row.name) {
            // The name becomes a directory of the mount: one that ingest
            // would refuse is replaced, not trusted.
            let safe = format!("imported-{}", &record.0.to_hex()[..12]);
            self.problems
                .push(format!("snapshot record {record}: {e}; imported as {safe}"));
            row.name = safe;
        }
        row.root_tree = self.tree(&root)?;
        row.added_bytes = added_bytes;
        let base = row.name.clone();
        let mut i = 2;
        while self.cat.name_taken(&row.name)? {
            row.name = format!("{base}-{i}");
            i += 1;
        }
        let id = self.cat.add_snapshot(&row)?;
        let mut links: HashMap<u64, (u64, u64)> = HashMap::new();
        count_links(self.cat, row.root_tree, 0, &mut self.links, &mut links)?;
        for (key, (first, count)) in links {
            if count > 1 {
                self.cat.add_hardlink(id, key, first, count)?;
            }
        }
        if let Some(d) = self.damaged.get(&root) {
            self.damage.push(SnapshotDamage {
                snapshot: row.name.clone(),
                lost_dirs: d.lost.iter().map(|p| snapshot_path(p)).collect(),
                lost_dirs_count: d.lost_count,
                reused_dirs: d.reused.iter().map(|p| snapshot_path(p)).collect(),
                reused_dirs_count: d.reused_count,
            });
        }
        Ok(Some(id))
    }
}

/// A directory entry's claim of nodes beneath it must be what its pages
/// hold: inode numbers are computed from the claims, and a false one
/// would give two files one number. The snapshot is refused, naming it.
fn claims_hold(e: &Entry, held: u64, path: &[u8]) -> Result<()> {
    match &e.body {
        Body::Dir { nodes, .. } if *nodes != held => Err(Error::corrupt(format!(
            "directory {:?} claims {nodes} entries beneath it, its pages hold {held}",
            snapshot_path(path)
        ))),
        _ => Ok(()),
    }
}

/// A directory being imported: its new pages and the entries still to do.
struct Pending {
    hash: TreeHash,
    pages: Vec<BuiltPage>,
    facts: Vec<PageFacts>,
    entries: std::vec::IntoIter<Entry>,
    /// The directory entry whose subtree is being imported above this one.
    waiting: Option<Entry>,
    /// Where this directory is, relative to the one the import started from.
    path: Vec<u8>,
    /// Damage found beneath this directory so far.
    damage: Damage,
}

impl Pending {
    fn new(hash: TreeHash, loaded: crate::format::page::Loaded, path: Vec<u8>) -> Pending {
        Pending {
            hash,
            pages: loaded.pages,
            facts: loaded.facts,
            entries: loaded.entries.into_iter(),
            waiting: None,
            path,
            damage: Damage::default(),
        }
    }

    fn child_path(&self, name: &[u8]) -> Vec<u8> {
        let mut p = self.path.clone();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        p
    }
}

/// Hard link groups beneath a page: link key to (first position, count),
/// positions relative to the page's start.
pub type Groups = std::rc::Rc<HashMap<u64, (u64, u64)>>;

/// Hard link groups of a snapshot in depth-first order, as ingest numbers
/// them, added to `links` with positions from `pos`. Each page is counted
/// once however often snapshots hold it ([`Catalog::fold_pages`], `memo`
/// kept across snapshots): its groups are kept relative to its start and
/// added in at every place it appears, so a snapshot costs its new pages,
/// and pages shared many times over (a few pages can claim 2^48 nodes)
/// cost their pages, not their nodes.
pub fn count_links(
    cat: &Catalog,
    tree: TreeId,
    pos: u64,
    memo: &mut crate::repo::catalog::Folded<Groups>,
    links: &mut HashMap<u64, (u64, u64)>,
) -> Result<()> {
    let overflow = || Error::corrupt("snapshot's node numbers overflow");
    let add = |into: &mut HashMap<u64, (u64, u64)>, key: u64, first: u64, count: u64| {
        // Positions are depth-first numbers, so the group's first member
        // is its lowest position, whatever order we visit in.
        let g = into.entry(key).or_insert((first, 0));
        g.0 = g.0.min(first);
        g.1 = g.1.saturating_add(count);
    };
    let shift = |into: &mut HashMap<u64, (u64, u64)>, below: &Groups, by: u64| -> Result<()> {
        for (&key, &(first, count)) in below.iter() {
            add(
                into,
                key,
                by.checked_add(first).ok_or_else(overflow)?,
                count,
            );
        }
        Ok(())
    };
    let groups = cat.fold_pages(tree, memo, |page, below| {
        let mut groups = HashMap::new();
        let mut at = 0u64;
        match page {
            crate::format::page::Page::Index { children, .. } => {
                for (c, b) in children.iter().zip(below) {
                    if let Some(b) = b {
                        shift(&mut groups, b, at)?;
                    }
                    at = at.checked_add(c.nodes).ok_or_else(overflow)?;
                }
            }
            crate::format::page::Page::Leaf(entries) => {
                for (e, b) in entries.iter().zip(below) {
                    let p = at.checked_add(1).ok_or_else(overflow)?;
                    if e.link_key != 0 {
                        add(&mut groups, e.link_key, p, 1);
                    }
                    if let Some(b) = b {
                        shift(&mut groups, b, p)?;
                    }
                    at = at.checked_add(e.span()).ok_or_else(overflow)?;
                }
            }
        }
        Ok(std::rc::Rc::new(groups))
    })?;
    shift(links, &groups, pos)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::format::blob::Encoder;

    fn hash_chunk(data: &[u8]) -> crate::format::keying::Hashed {
        crate::format::keying::Keying::plain().hash_chunk(data)
    }
    use crate::format::pack::{ChunkKind, PackWriter};
    use crate::format::page::{Page, encode_page};
    use crate::format::record::SnapshotRow;
    use crate::format::tree::{Kind, Meta};
    use crate::repo::Config;

    /// A directory small enough for one page, as stored.
    fn encode_tree(entries: &[Entry]) -> Vec<u8> {
        encode_page(&Page::Leaf(entries.to_vec()))
    }

    /// Store `chunks` in one pack of `repo` and index it.
    fn store(repo: &Repository, cat: &Catalog, chunks: &[(ChunkKind, Vec<u8>)]) -> Vec<ChunkId> {
        let mut w = PackWriter::create(&repo.tmp_dir(), 1, &repo.keying).unwrap();
        let mut enc = Encoder::new(1, &repo.keying).unwrap();
        let mut ids = Vec::new();
        for (kind, data) in chunks {
            let h = hash_chunk(data);
            let blob = enc.encode(data, &h).unwrap();
            w.append(h.id, *kind, data.len() as u32, &blob).unwrap();
            ids.push(h.id);
        }
        let sealed = w.seal().unwrap();
        repo.backend.put(&sealed.name, &sealed.path).unwrap();
        cat.begin().unwrap();
        cat.add_pack(&sealed.name, sealed.size, &sealed.entries)
            .unwrap();
        cat.commit().unwrap();
        ids
    }

    fn dir(name: &[u8], tree: ChunkId, nodes: u64) -> Entry {
        Entry {
            name: name.to_vec(),
            kind: Kind::Dir,
            meta: Meta {
                mode: 0o40755,
                ..Meta::default()
            },
            link_key: 0,
            xattrs: vec![],
            body: Body::Dir {
                tree: TreeHash(tree.0),
                nodes,
            },
        }
    }

    fn record(root: ChunkId, nodes: u64) -> Vec<u8> {
        let row = SnapshotRow {
            finished_ns: 2,
            host: "h".into(),
            dirs: nodes,
            ..SnapshotRow::new("s1".into(), 1, TreeId(0))
        };
        crate::format::record::encode_record(&row, &TreeHash(root.0), nodes, &[0, nodes, 0, 0, 0])
    }

    fn repo(dir: &Path) -> (Repository, Catalog) {
        let repo = Repository::init(&dir.join("r"), Config::default()).unwrap();
        let cat = repo.catalog().unwrap();
        (repo, cat)
    }

    #[test]
    fn deep_tree_chain_does_not_overflow_the_stack() {
        // Run on a small stack, so that recursion per level would overflow
        // it long before the bottom.
        std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(|| {
                const DEPTH: u64 = 20_000;
                let d = tempfile::tempdir().unwrap();
                let (repo, cat) = repo(d.path());
                let mut chunks = vec![(ChunkKind::Page, encode_tree(&[]))];
                let mut below = hash_chunk(&chunks[0].1).id;
                for level in 0..DEPTH {
                    let t = encode_tree(&[dir(b"d", below, level)]);
                    below = hash_chunk(&t).id;
                    chunks.push((ChunkKind::Page, t));
                }
                chunks.push((ChunkKind::Snapshot, record(below, DEPTH)));
                let ids = store(&repo, &cat, &chunks);
                cat.begin().unwrap();
                let mut imp = Importer::new(&repo, &cat);
                let snap = imp.snapshot(ids.last().unwrap(), 0).unwrap();
                assert!(snap.is_some());
                // Cut at the deepest nesting snapfs follows, and said so.
                assert_eq!(imp.problems.len(), 1, "{:?}", imp.problems);
                assert!(
                    imp.problems[0].contains("deeper than"),
                    "{:?}",
                    imp.problems
                );
                cat.commit().unwrap();
                assert!(cat.tree_by_hash(&TreeHash(below.0)).unwrap().is_some());
            })
            .unwrap()
            .join()
            .expect("import of a deep chain panicked");
    }

    #[test]
    fn tree_with_dotdot_name_is_rejected_on_import() {
        let d = tempfile::tempdir().unwrap();
        let (repo, cat) = repo(d.path());
        let empty = encode_tree(&[]);
        let empty_id = hash_chunk(&empty).id;
        // encode_tree writes whatever it is given; the decoder must refuse.
        let evil = encode_tree(&[dir(b"..", empty_id, 0)]);
        let evil_id = hash_chunk(&evil).id;
        let parent = encode_tree(&[dir(b"ok", evil_id, 1)]);
        let parent_id = hash_chunk(&parent).id;
        store(
            &repo,
            &cat,
            &[
                (ChunkKind::Page, empty),
                (ChunkKind::Page, evil),
                (ChunkKind::Page, parent),
            ],
        );
        cat.begin().unwrap();
        let mut imp = Importer::new(&repo, &cat);
        let err = imp.tree(&TreeHash(evil_id.0)).unwrap_err().to_string();
        assert!(
            err.contains(&evil_id.to_string()) && err.contains(".."),
            "{err}"
        );
        // Beneath another tree, the bad subtree is shown empty and reported.
        let t = imp.tree(&TreeHash(parent_id.0)).unwrap();
        assert_eq!(imp.problems.len(), 1, "{:?}", imp.problems);
        let rows = cat.entries(t).unwrap();
        assert_eq!(rows.len(), 1);
        assert!(cat.entries(rows[0].subtree.unwrap()).unwrap().is_empty());
        cat.commit().unwrap();
    }

    #[test]
    fn snapshot_name_ingest_would_refuse_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let (repo, cat) = repo(d.path());
        let empty = encode_tree(&[]);
        let root = hash_chunk(&empty).id;
        let rec = record(root, 0);
        // The record's name "s1" becomes "..": same length, so the rest of
        // the record stays as it is.
        let at = rec.windows(2).position(|w| w == b"s1").unwrap();
        let mut rec = rec;
        rec[at..at + 2].copy_from_slice(b"..");
        let ids = store(
            &repo,
            &cat,
            &[(ChunkKind::Page, empty), (ChunkKind::Snapshot, rec)],
        );
        cat.begin().unwrap();
        let mut imp = Importer::new(&repo, &cat);
        imp.snapshot(&ids[1], 0).unwrap().unwrap();
        cat.commit().unwrap();
        let names: Vec<String> = cat
            .snapshots()
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            names,
            vec![format!("imported-{}", &ids[1].0.to_hex()[..12])]
        );
        assert_eq!(imp.problems.len(), 1);
    }

    /// A directory `keep/` whose tree is in no pack, and a catalog (the
    /// fallback) that has the rows of `lost`, its tree. Returns the
    /// snapshot record's id.
    fn keep_dir_not_in_packs(
        repo: &Repository,
        cat: &Catalog,
        old: Option<&Catalog>,
        lost: &[Entry],
    ) -> ChunkId {
        let bytes = encode_tree(lost);
        let lost_id = hash_chunk(&bytes).id;
        if let Some(old) = old {
            old.begin().unwrap();
            let t = old.add_dir(lost.to_vec()).unwrap();
            assert_eq!(old.tree_hash(t).unwrap().0, lost_id.0);
            old.commit().unwrap();
        }
        let root = encode_tree(&[dir(b"keep", lost_id, lost.len() as u64)]);
        let root_id = hash_chunk(&root).id;
        let rec = record(root_id, 1 + lost.len() as u64);
        store(
            repo,
            cat,
            &[(ChunkKind::Page, root), (ChunkKind::Snapshot, rec)],
        )[1]
    }

    fn file(name: &[u8], data: &[u8]) -> Entry {
        let mut list = crate::format::tree::ChunkList::default();
        list.push(crate::format::tree::ChunkRef {
            id: hash_chunk(data).id,
            len: data.len() as u32,
        });
        Entry {
            name: name.to_vec(),
            kind: Kind::File,
            meta: Meta {
                mode: 0o100644,
                size: data.len() as u64,
                nlink: 1,
                ..Meta::default()
            },
            link_key: 0,
            xattrs: vec![(b"user.k".to_vec(), b"v".to_vec())],
            body: Body::File(ContentRef::of_list(
                &crate::format::keying::Keying::plain(),
                &list,
                data.len() as u64,
            )),
        }
    }

    #[test]
    fn tree_missing_from_the_packs_is_taken_from_the_fallback_rows() {
        let d = tempfile::tempdir().unwrap();
        let (repo, cat) = repo(d.path());
        let old = Catalog::open(&d.path().join("old.db"), true).unwrap();
        let lost = vec![
            file(b"f", b"file data"),
            Entry {
                name: b"l".to_vec(),
                kind: Kind::Symlink,
                meta: Meta {
                    mode: 0o120777,
                    ..Meta::default()
                },
                link_key: 0,
                xattrs: vec![],
                body: Body::Symlink(b"f".to_vec()),
            },
        ];
        let rec = keep_dir_not_in_packs(&repo, &cat, Some(&old), &lost);

        cat.begin().unwrap();
        let mut imp = Importer::new(&repo, &cat).with_fallback(&old);
        let id = imp.snapshot(&rec, 0).unwrap().unwrap();
        cat.commit().unwrap();
        assert_eq!(imp.reused_trees, 1);
        assert_eq!(imp.problems.len(), 1, "{:?}", imp.problems);
        assert!(
            imp.problems[0].contains("/keep") && !imp.problems[0].contains("differ"),
            "{:?}",
            imp.problems
        );
        assert_eq!(imp.damage.len(), 1);
        assert_eq!(imp.damage[0].reused_dirs, vec!["/keep".to_string()]);
        assert_eq!(imp.damage[0].lost_dirs_count, 0);
        let root = cat.snapshot(id).unwrap().unwrap().root_tree;
        let keep = cat.entry(root, b"keep").unwrap().unwrap();
        let rows = cat.entries(keep.subtree.unwrap()).unwrap();
        let names: Vec<&[u8]> = rows.iter().map(|n| n.name.as_slice()).collect();
        assert_eq!(names, vec![&b"f"[..], &b"l"[..]]);
        let Body::File(c) = &lost[0].body else {
            unreachable!()
        };
        assert_eq!(&rows[0].content, c);
        assert_eq!(
            rows[0].xattrs,
            crate::format::tree::encode_xattrs(&lost[0].xattrs)
        );
        assert_eq!(rows[1].target.as_deref(), Some(&b"f"[..]));

        // Without the fallback, the directory is shown empty and reported lost.
        let d2 = tempfile::tempdir().unwrap();
        let (repo2, cat2) = self::repo(d2.path());
        let rec2 = keep_dir_not_in_packs(&repo2, &cat2, None, &lost);
        cat2.begin().unwrap();
        let mut imp = Importer::new(&repo2, &cat2);
        imp.snapshot(&rec2, 0).unwrap().unwrap();
        cat2.commit().unwrap();
        assert_eq!(imp.damage[0].lost_dirs, vec!["/keep".to_string()]);
        assert_eq!(imp.reused_trees, 0);
    }

    /// Fallback rows are as untrusted as packs: a name a tree from a pack
    /// may not have is refused there too.
    #[test]
    fn fallback_rows_with_a_bad_name_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let (repo, cat) = repo(d.path());
        let old = Catalog::open(&d.path().join("old.db"), true).unwrap();
        let rec = keep_dir_not_in_packs(&repo, &cat, Some(&old), &[file(b"a/b", b"x")]);
        cat.begin().unwrap();
        let mut imp = Importer::new(&repo, &cat).with_fallback(&old);
        imp.snapshot(&rec, 0).unwrap().unwrap();
        cat.commit().unwrap();
        assert_eq!(imp.reused_trees, 0);
        assert_eq!(imp.damage[0].lost_dirs, vec!["/keep".to_string()]);
        assert!(
            imp.problems[0].contains("lost") && imp.problems[0].contains("contains a slash"),
            "{:?}",
            imp.problems
        );
    }
}
