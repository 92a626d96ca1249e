//! Directories over pages: lookup, listings and positions.
//!
//! A directory is a tree of pages (`format/page.rs`); its catalog rows are
//! the pages' own bytes. Lookup descends one page per level by first name,
//! a listing walks the leaves in order, and an entry's depth-first position
//! inside its directory (which numbers inodes) is summed on the way down
//! from the counts the index pages keep. A page's level must be one below
//! its parent's, so no walk can loop, whatever the rows say.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{OptionalExtension, params};

use super::{Catalog, During, Node, blob_hash, get_u64};
use crate::error::{Error, Result};
use crate::format::page::{BuiltPage, ChildRef, Page, PageFacts, decode_page, fits_parent};
use crate::format::tree::{Body, Entry, MAX_DEPTH, encode_xattrs};
use crate::ids::{TreeHash, TreeId};

/// Decoded pages recently used, most recent last, with their rows' hash
/// and node count. A listing or a run of lookups in one directory decodes
/// each page once, and finds a child page by hash without a query. Page
/// rows never change (ids are never reused, AUTOINCREMENT), so entries
/// stay valid; the one exception, the repair of a damaged row, clears it.
#[derive(Default)]
pub(crate) struct PageCache(RefCell<Vec<Cached>>);

#[derive(Clone)]
struct Cached {
    id: TreeId,
    hash: TreeHash,
    rows: u64,
    page: Arc<Page>,
}

const PAGE_CACHE: usize = 32;

impl PageCache {
    fn find(&self, hit: impl Fn(&Cached) -> bool) -> Option<Cached> {
        let mut v = self.0.borrow_mut();
        let i = v.iter().rposition(hit)?;
        let c = v.remove(i);
        v.push(c.clone());
        Some(c)
    }

    fn put(&self, c: Cached) {
        let mut v = self.0.borrow_mut();
        if v.len() >= PAGE_CACHE {
            v.remove(0);
        }
        v.push(c);
    }

    fn clear(&self) {
        self.0.borrow_mut().clear();
    }
}

/// Where a listing starts.
#[derive(Clone, Copy)]
enum Start<'a> {
    All,
    /// The first entry at or after this depth-first position.
    Offset(u64),
    /// The first entry whose name sorts after this one.
    After(&'a [u8]),
}

/// An index page on the way down: the next child to visit and its position.
struct Frame {
    page: Arc<Page>,
    next: usize,
    base: u64,
}

fn children(page: &Page) -> &[ChildRef] {
    match page {
        Page::Index { children, .. } => children,
        Page::Leaf(_) => &[],
    }
}

/// Values of [`Catalog::fold_pages`] by page hash, with what the page
/// holds, to check a later parent's reference against.
pub(crate) type Folded<T> = HashMap<TreeHash, (Held, T)>;

/// A folded page's level, first name and counts, and its row's node count.
#[derive(Clone, Debug)]
pub(crate) struct Held {
    level: u8,
    first: Option<Vec<u8>>,
    entries: u64,
    nodes: u64,
    rows: u64,
}

impl Catalog {
    /// The directory (root page) with this hash, and its node count.
    pub fn tree_by_hash(&self, hash: &TreeHash) -> Result<Option<(TreeId, u64)>> {
        (|| -> Result<Option<(TreeId, u64)>> {
            let mut st = self
                .conn
                .prepare_cached("SELECT id, nodes FROM pages WHERE hash = ?1")?;
            Ok(st
                .query_row([&hash.0.0[..]], |r| Ok((TreeId(r.get(0)?), get_u64(r, 1)?)))
                .optional()?)
        })()
        .during(|| format!("tree_by_hash (page {hash})"))
    }

    /// Entries beneath a directory, recursively. A missing row is damage, not
    /// an empty directory: counting it as 0 would shift every inode number after it.
    pub fn tree_nodes(&self, id: TreeId) -> Result<u64> {
        (|| -> Result<u64> {
            let mut st = self
                .conn
                .prepare_cached("SELECT nodes FROM pages WHERE id = ?1")?;
            st.query_row([id.0], |r| get_u64(r, 0))
                .optional()?
                .ok_or_else(|| Error::corrupt(format!("page {} missing from catalog", id.0)))
        })()
        .during(|| format!("tree_nodes (page {id:?})"))
    }

    pub fn tree_hash(&self, id: TreeId) -> Result<TreeHash> {
        (|| -> Result<TreeHash> {
            let mut st = self
                .conn
                .prepare_cached("SELECT hash FROM pages WHERE id = ?1")?;
            let h = st
                .query_row([id.0], |r| blob_hash(r.get(0)?))
                .optional()?
                .ok_or_else(|| Error::corrupt(format!("page {} missing from catalog", id.0)))?;
            Ok(TreeHash(h))
        })()
        .during(|| format!("tree_hash (page {id:?})"))
    }

    /// The stored bytes of a page row (for verify and repair).
    pub fn page_body(&self, id: TreeId) -> Result<Vec<u8>> {
        (|| -> Result<Vec<u8>> {
            let mut st = self
                .conn
                .prepare_cached("SELECT body FROM pages WHERE id = ?1")?;
            st.query_row([id.0], |r| r.get(0))
                .optional()?
                .ok_or_else(|| Error::corrupt(format!("page {} missing from catalog", id.0)))
        })()
        .during(|| format!("page_body (page {id:?})"))
    }

    /// Record a page unless one with its hash is there; its id either way.
    pub fn add_page(&self, p: &BuiltPage) -> Result<TreeId> {
        (|| -> Result<TreeId> {
            if let Some((id, _)) = self.tree_by_hash(&p.hash)? {
                return Ok(id);
            }
            self.conn
                .prepare_cached(
                    "INSERT INTO pages (hash, level, entries, nodes, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    &p.hash.0.0[..],
                    p.level,
                    p.entries as i64,
                    p.nodes as i64,
                    &p.bytes
                ])?;
            Ok(TreeId(self.conn.last_insert_rowid()))
        })()
        .during(|| format!("add_page (page {})", p.hash))
    }

    /// Put right a page row found to disagree with its hash (a damaged
    /// row): the bytes the hash describes replace it.
    pub(crate) fn replace_page(&self, id: TreeId, p: &BuiltPage) -> Result<()> {
        (|| -> Result<()> {
            self.conn
                .prepare_cached(
                    "UPDATE pages SET level = ?2, entries = ?3, nodes = ?4, body = ?5 WHERE id = ?1",
                )?
                .execute(params![
                    id.0,
                    p.level,
                    p.entries as i64,
                    p.nodes as i64,
                    &p.bytes
                ])?;
            self.pages.clear();
            Ok(())
        })()
        .during(|| format!("replace_page (page {})", p.hash))
    }

    /// A page, decoded (and kept for the next call). A page may hold fewer
    /// nodes than its row says (a lost directory keeps its claim and holds
    /// none), never more: the row's count is what its entry's claim was
    /// checked against, and nodes beyond it would take the numbers of the
    /// entries after it. Checked once, when the row is read.
    pub(crate) fn page(&self, id: TreeId) -> Result<Arc<Page>> {
        Ok(self.page_row(id)?.page)
    }

    /// [`Catalog::page`] with its row's hash and node count.
    fn page_row(&self, id: TreeId) -> Result<Cached> {
        if let Some(c) = self.pages.find(|c| c.id == id) {
            return Ok(c);
        }
        let (body, rows, hash) = (|| -> Result<(Vec<u8>, u64, TreeHash)> {
            let mut st = self
                .conn
                .prepare_cached("SELECT body, nodes, hash FROM pages WHERE id = ?1")?;
            st.query_row([id.0], |r| {
                Ok((r.get(0)?, get_u64(r, 1)?, TreeHash(blob_hash(r.get(2)?)?)))
            })
            .optional()?
            .ok_or_else(|| Error::corrupt(format!("page {} missing from catalog", id.0)))
        })()
        .during(|| format!("page (page {id:?})"))?;
        let page = decode_page(&body)
            .map_err(|e| Error::corrupt(format!("directory page {} in the catalog: {e}", id.0)))?;
        if page.nodes() > rows {
            return Err(Error::corrupt(format!(
                "directory page {}: holds {} nodes, its row says {rows}",
                id.0,
                page.nodes()
            )));
        }
        let c = Cached {
            id,
            hash,
            rows,
            page: Arc::new(page),
        };
        self.pages.put(c.clone());
        Ok(c)
    }

    /// The page a child reference names, which must be one level below its parent.
    fn child(&self, parent: &Page, c: &ChildRef) -> Result<Arc<Page>> {
        Ok(self.child_row(parent.level(), c)?.1)
    }

    /// [`Catalog::child`] with the child's row: its id and node count.
    fn child_row(&self, parent: u8, c: &ChildRef) -> Result<((TreeId, u64), Arc<Page>)> {
        let (row, page) = match self.pages.find(|p| p.hash == c.page) {
            Some(p) => ((p.id, p.rows), p.page),
            None => {
                let row = self.tree_by_hash(&c.page)?.ok_or_else(|| {
                    Error::corrupt(format!("directory page {} missing from catalog", c.page))
                })?;
                (row, self.page(row.0)?)
            }
        };
        fits_parent(
            c,
            parent,
            page.level(),
            page.first_name(),
            page.entries(),
            page.nodes(),
        )?;
        Ok((row, page))
    }

    /// What the page `id` holds, its last name found by descending its
    /// last children.
    pub(crate) fn page_facts(&self, id: TreeId) -> Result<PageFacts> {
        let page = self.page(id)?;
        let mut f = PageFacts::of(&page);
        let mut at = page;
        loop {
            match &*at {
                Page::Leaf(_) => {
                    f.last = PageFacts::of(&at).last;
                    return Ok(f);
                }
                Page::Index { children, level } => {
                    let Some(c) = children.last() else {
                        return Ok(f);
                    };
                    let next = self.child_row(*level, c)?.1;
                    at = next;
                }
            }
        }
    }

    /// A value computed once per page from the page and the values of what
    /// it refers to, and kept in `memo` by page hash: `combine` gets the
    /// page and, for an index page, its children's values; for a leaf, one
    /// per entry, the value of a subdirectory's root page (None for other
    /// entries, and for a directory whose pages are missing or hold another
    /// number of nodes than its entry claims, as a listing shows it).
    ///
    /// Directories and snapshots that share pages cost one visit of each,
    /// so a walk over every snapshot is proportional to the pages, not to
    /// the entries the snapshots show. Children are checked against their
    /// parent as a listing checks them (also when the value is remembered).
    /// An explicit stack; directories nested past [`MAX_DEPTH`] (a tree
    /// that contains itself) are an error.
    pub(crate) fn fold_pages<T: Clone>(
        &self,
        root: TreeId,
        memo: &mut Folded<T>,
        mut combine: impl FnMut(&Page, &[Option<T>]) -> Result<T>,
    ) -> Result<T> {
        struct Frame<T> {
            hash: TreeHash,
            rows: u64,
            page: Arc<Page>,
            dirs: usize,
            values: Vec<Option<T>>,
        }
        let hash = self.tree_hash(root)?;
        if let Some((_, v)) = memo.get(&hash) {
            return Ok(v.clone());
        }
        let mut stack = vec![Frame {
            hash,
            rows: self.tree_nodes(root)?,
            page: self.page(root)?,
            dirs: 1,
            values: Vec::new(),
        }];
        loop {
            let top = stack.last_mut().expect("the stack is never empty here");
            let i = top.values.len();
            let next = match &*top.page {
                Page::Index { children, .. } => children.get(i).map(|c| Ok(c.clone())),
                Page::Leaf(e) => e.get(i).map(|e| match &e.body {
                    Body::Dir { tree, nodes } => Err(Some((*tree, *nodes))),
                    _ => Err(None),
                }),
            };
            let frame = match next {
                None => {
                    let done = stack.pop().expect("the stack is never empty here");
                    let v = combine(&done.page, &done.values)?;
                    let held = Held {
                        level: done.page.level(),
                        first: done.page.first_name().map(<[u8]>::to_vec),
                        entries: done.page.entries(),
                        nodes: done.page.nodes(),
                        rows: done.rows,
                    };
                    memo.insert(done.hash, (held, v.clone()));
                    match stack.last_mut() {
                        None => return Ok(v),
                        Some(parent) => parent.values.push(Some(v)),
                    }
                    continue;
                }
                Some(Err(None)) => {
                    top.values.push(None);
                    continue;
                }
                Some(Ok(c)) => {
                    let parent = top.page.level();
                    if let Some((h, v)) = memo.get(&c.page) {
                        fits_parent(&c, parent, h.level, h.first.as_deref(), h.entries, h.nodes)?;
                        let v = v.clone();
                        top.values.push(Some(v));
                        continue;
                    }
                    let ((_, rows), page) = self.child_row(parent, &c)?;
                    Frame {
                        hash: c.page,
                        rows,
                        page,
                        dirs: top.dirs,
                        values: Vec::new(),
                    }
                }
                Some(Err(Some((tree, claim)))) => {
                    if let Some((h, v)) = memo.get(&tree) {
                        let v = (h.rows == claim).then(|| v.clone());
                        top.values.push(v);
                        continue;
                    }
                    match self.tree_by_hash(&tree)? {
                        Some((id, rows)) if rows == claim => {
                            // One more than ingest nests: the empty
                            // directory an import puts where it cut a
                            // deeper chain.
                            if top.dirs > MAX_DEPTH {
                                return Err(Error::corrupt(format!(
                                    "directory page {tree}: directories nested deeper than {MAX_DEPTH} levels (perhaps a tree that contains itself)"
                                )));
                            }
                            Frame {
                                hash: tree,
                                rows,
                                page: self.page(id)?,
                                dirs: top.dirs + 1,
                                values: Vec::new(),
                            }
                        }
                        _ => {
                            top.values.push(None);
                            continue;
                        }
                    }
                }
            };
            stack.push(frame);
        }
    }

    /// A directory of `entries` (sorted by name), its pages added as
    /// needed (tests build catalogs with it; ingest stores pages too).
    #[cfg(test)]
    pub(crate) fn add_dir(&self, entries: Vec<Entry>) -> Result<TreeId> {
        let built =
            crate::format::page::build_dir(entries, &crate::format::keying::Keying::plain());
        let mut id = None;
        for p in &built.pages {
            id = Some(self.add_page(p)?);
        }
        Ok(id.expect("a directory has a root page"))
    }

    /// The hashes of every page of the directory `tree`, its root first.
    pub fn dir_pages(&self, tree: TreeId) -> Result<Vec<TreeHash>> {
        (|| -> Result<Vec<TreeHash>> {
            let mut out = vec![self.tree_hash(tree)?];
            let mut stack = vec![self.page(tree)?];
            while let Some(page) = stack.pop() {
                for c in children(&page) {
                    out.push(c.page);
                    let child = self.child(&page, c)?;
                    if child.level() > 0 {
                        stack.push(child);
                    }
                }
            }
            Ok(out)
        })()
        .during(|| format!("dir_pages (page {tree:?})"))
    }

    /// An entry as the catalog's callers see it, at depth-first `offset`.
    fn node_of(&self, e: &Entry, offset: u64) -> Result<Node> {
        let (target, content, subtree) = match &e.body {
            Body::Symlink(t) => (Some(t.clone()), None, None),
            Body::File(c) => (None, *c, None),
            // A directory whose pages hold another number of nodes than
            // its entry claims would number inodes twice (positions after
            // it come from the claim): it is shown as damaged instead.
            Body::Dir { tree, nodes } => (
                None,
                None,
                self.tree_by_hash(tree)?
                    .filter(|(_, held)| held == nodes)
                    .map(|(t, _)| t),
            ),
            Body::Special => (None, None, None),
        };
        Ok(Node {
            name: e.name.clone(),
            kind: e.kind,
            meta: e.meta.clone(),
            link_key: e.link_key,
            xattrs: encode_xattrs(&e.xattrs),
            target,
            content,
            subtree,
            node_offset: offset,
        })
    }

    /// Entries of `tree` in name order from `start`, at most `limit`.
    fn scan(&self, tree: TreeId, start: Start, limit: usize) -> Result<Vec<Node>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let mut stack: Vec<Frame> = Vec::new();
        let mut page = self.page(tree)?;
        let mut base = 0u64;
        // Down to the leaf where `start` lies.
        while let Page::Index { children, .. } = &*page {
            let i = match start {
                Start::All => 0,
                Start::Offset(o) => {
                    let mut at = base;
                    let mut pick = children.len() - 1;
                    for (i, c) in children.iter().enumerate() {
                        if at.saturating_add(c.nodes) > o {
                            pick = i;
                            break;
                        }
                        at = at.saturating_add(c.nodes);
                    }
                    pick
                }
                Start::After(name) => children
                    .partition_point(|c| c.first_name.as_slice() <= name)
                    .saturating_sub(1),
            };
            let child_base = children[..i]
                .iter()
                .fold(base, |a, c| a.saturating_add(c.nodes));
            let next = self.child(&page, &children[i])?;
            stack.push(Frame {
                next: i + 1,
                base: child_base.saturating_add(children[i].nodes),
                page,
            });
            page = next;
            base = child_base;
        }
        let mut first = true;
        loop {
            if let Page::Leaf(entries) = &*page {
                let mut off = base;
                for e in entries {
                    let take = !first
                        || match start {
                            Start::All => true,
                            Start::Offset(o) => off >= o,
                            Start::After(n) => e.name.as_slice() > n,
                        };
                    if take {
                        out.push(self.node_of(e, off)?);
                        if out.len() >= limit {
                            return Ok(out);
                        }
                    }
                    off = off.saturating_add(e.span());
                }
            }
            first = false;
            // On to the next leaf: up to the lowest index page with a child
            // left, then down its leftmost pages.
            loop {
                let Some(top) = stack.last_mut() else {
                    return Ok(out);
                };
                let kids = children(&top.page);
                if top.next >= kids.len() {
                    stack.pop();
                    continue;
                }
                let c = &kids[top.next];
                let child_base = top.base;
                top.next += 1;
                top.base = top.base.saturating_add(c.nodes);
                page = self.child(&top.page.clone(), c)?;
                base = child_base;
                while let Page::Index { children, .. } = &*page {
                    let next = self.child(&page, &children[0])?;
                    stack.push(Frame {
                        next: 1,
                        base: base.saturating_add(children[0].nodes),
                        page,
                    });
                    page = next;
                }
                break;
            }
        }
    }

    /// A directory listing in name order, starting after `after` (for paged reads).
    pub fn entries_after(
        &self,
        tree: TreeId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Node>> {
        let start = match after {
            Some(n) => Start::After(n),
            None => Start::All,
        };
        self.scan(tree, start, limit)
            .during(|| format!("entries_after (page {tree:?})"))
    }

    /// A directory listing in depth-first (= name) order from `min_offset`
    /// onwards: the mount's readdir resumes here by a stable cookie.
    pub fn entries_from(&self, tree: TreeId, min_offset: u64, limit: usize) -> Result<Vec<Node>> {
        self.scan(tree, Start::Offset(min_offset), limit)
            .during(|| format!("entries_from (page {tree:?})"))
    }

    /// The whole listing of a directory (bounded by the directory's size).
    pub fn entries(&self, tree: TreeId) -> Result<Vec<Node>> {
        self.scan(tree, Start::All, usize::MAX)
            .during(|| format!("entries (page {tree:?})"))
    }

    /// The entry called `name` in the directory `tree`.
    pub fn entry(&self, tree: TreeId, name: &[u8]) -> Result<Option<Node>> {
        (|| -> Result<Option<Node>> {
            let mut page = self.page(tree)?;
            let mut base = 0u64;
            loop {
                let next = match &*page {
                    Page::Index { children, .. } => {
                        let i = children.partition_point(|c| c.first_name.as_slice() <= name);
                        if i == 0 {
                            return Ok(None);
                        }
                        base = children[..i - 1]
                            .iter()
                            .fold(base, |a, c| a.saturating_add(c.nodes));
                        self.child(&page, &children[i - 1])?
                    }
                    Page::Leaf(entries) => {
                        let Ok(j) = entries.binary_search_by(|e| e.name.as_slice().cmp(name))
                        else {
                            return Ok(None);
                        };
                        let off = entries[..j]
                            .iter()
                            .fold(base, |a, e| a.saturating_add(e.span()));
                        return Ok(Some(self.node_of(&entries[j], off)?));
                    }
                };
                page = next;
            }
        })()
        .during(|| format!("entry (page {tree:?})"))
    }

    /// The entry whose depth-first span contains `offset` inside `tree`
    /// (the last one that starts at or before it).
    pub fn entry_at(&self, tree: TreeId, offset: u64) -> Result<Option<Node>> {
        (|| -> Result<Option<Node>> {
            let mut page = self.page(tree)?;
            let mut base = 0u64;
            loop {
                let next = match &*page {
                    Page::Index { children, .. } => {
                        let mut pick = children.len() - 1;
                        let mut at = base;
                        let mut pick_base = base;
                        for (i, c) in children.iter().enumerate() {
                            pick_base = at;
                            if at.saturating_add(c.nodes) > offset {
                                pick = i;
                                break;
                            }
                            at = at.saturating_add(c.nodes);
                        }
                        base = pick_base;
                        self.child(&page, &children[pick])?
                    }
                    Page::Leaf(entries) => {
                        let mut off = base;
                        let mut found = None;
                        for e in entries {
                            if off > offset {
                                break;
                            }
                            found = Some((e, off));
                            off = off.saturating_add(e.span());
                        }
                        return match found {
                            Some((e, off)) => Ok(Some(self.node_of(e, off)?)),
                            None => Ok(None),
                        };
                    }
                };
                page = next;
            }
        })()
        .during(|| format!("entry_at (page {tree:?})"))
    }
}
