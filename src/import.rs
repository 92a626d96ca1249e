//! Catalog rows from metadata chunks already in packs: a snapshot record and
//! the trees beneath it. Used to rebuild a lost catalog and to receive
//! copied snapshots; in both, the packs are durable before rows refer to them.

use std::collections::HashMap;

use crate::catalog::{Catalog, Node, SnapshotRow};
use crate::error::{Error, Result};
use crate::ids::{ChunkId, SnapshotId, TreeHash, TreeId};
use crate::repo::Repository;
use crate::snapshot::{Record, decode_record};
use crate::tree::{Body, Entry, decode_tree, encode_tree, encode_xattrs};

pub struct Importer<'a> {
    pub repo: &'a Repository,
    pub cat: &'a Catalog,
    /// What could not be imported (lost trees), for the caller to report.
    pub problems: Vec<String>,
}

impl<'a> Importer<'a> {
    pub fn new(repo: &'a Repository, cat: &'a Catalog) -> Self {
        Importer {
            repo,
            cat,
            problems: Vec::new(),
        }
    }

    fn read(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let loc = self
            .cat
            .chunk_loc(id)?
            .ok_or_else(|| Error::corrupt(format!("metadata chunk {id} is not in any pack")))?;
        self.repo.read_chunk(id, &loc)
    }

    /// The row of an empty directory, standing in for one whose tree is lost.
    fn empty_tree(&self) -> Result<TreeId> {
        let hash = TreeHash(crate::store::hash_chunk(&encode_tree(&[])).id.0);
        match self.cat.tree_by_hash(&hash)? {
            Some((t, _)) => Ok(t),
            None => self.cat.add_tree(&hash, 0, &[]),
        }
    }

    /// The tree row for `hash`, imported (with everything beneath) if missing.
    pub fn tree(&mut self, hash: &TreeHash) -> Result<TreeId> {
        if let Some((t, _)) = self.cat.tree_by_hash(hash)? {
            return Ok(t);
        }
        let entries: Vec<Entry> = decode_tree(&self.read(&ChunkId(hash.0))?)?;
        let nodes = entries.iter().map(Entry::span).sum();
        let mut rows = Vec::with_capacity(entries.len());
        let mut offset = 0;
        for e in entries {
            let span = e.span();
            let (content, subtree, target) = match &e.body {
                Body::File(list) => {
                    let h = list.hash();
                    let c = match self.cat.content_by_hash(&h)? {
                        Some(c) => c,
                        None => self.cat.add_content(&h, list)?,
                    };
                    (Some(c), None, None)
                }
                Body::Dir { tree: sub, .. } => match self.tree(sub) {
                    Ok(t) => (None, Some(t), None),
                    Err(err) => {
                        self.problems.push(format!(
                            "directory {:?}: its contents are lost, shown empty ({err})",
                            String::from_utf8_lossy(&e.name)
                        ));
                        (None, Some(self.empty_tree()?), None)
                    }
                },
                Body::Symlink(t) => (None, None, Some(t.clone())),
                Body::Special => (None, None, None),
            };
            rows.push(Node {
                xattrs: encode_xattrs(&e.xattrs),
                name: e.name,
                kind: e.kind,
                meta: e.meta,
                link_key: e.link_key,
                target,
                content,
                subtree,
                node_offset: offset,
            });
            offset += span;
        }
        self.cat.add_tree(hash, nodes, &rows)
    }

    /// Add the snapshot whose record is chunk `record` (trees imported as
    /// needed). Returns None if the record is a forget record or the
    /// snapshot is already present.
    pub fn snapshot(&mut self, record: &ChunkId, added_bytes: u64) -> Result<Option<SnapshotId>> {
        let Record::Snapshot { row, root } = decode_record(&self.read(record)?, record.0)? else {
            return Ok(None);
        };
        if self.cat.snapshots()?.iter().any(|s| s.hash == row.hash) {
            return Ok(None);
        }
        let mut row: SnapshotRow = *row;
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
        count_links(self.cat, row.root_tree, 0, &mut links)?;
        for (key, (first, count)) in links {
            if count > 1 {
                self.cat.add_hardlink(id, key, first, count)?;
            }
        }
        Ok(Some(id))
    }
}

/// Hard link groups of a snapshot in depth-first order, as ingest numbers them.
pub fn count_links(
    cat: &Catalog,
    tree: TreeId,
    pos: u64,
    links: &mut HashMap<u64, (u64, u64)>,
) -> Result<()> {
    for n in cat.entries(tree)? {
        let p = pos + 1 + n.node_offset;
        if n.link_key != 0 {
            links.entry(n.link_key).or_insert((p, 0)).1 += 1;
        }
        if let Some(sub) = n.subtree {
            count_links(cat, sub, p, links)?;
        }
    }
    Ok(())
}
