//! `snapfs rebuild-catalog`: a new catalog from the packs alone, for the day
//! catalog.db is lost or damaged. The old file is kept aside, never
//! overwritten.
//!
//! Packs describe their own chunks (the chunk index); trees and snapshot
//! records are metadata chunks in them (trees, entries, contents,
//! snapshots); forget records keep forgotten snapshots forgotten.
//! Hard link groups are recounted by walking each snapshot.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::catalog::{Catalog, Node};
use crate::error::{Error, IoContext, Result};
use crate::ids::{Hash, TreeHash, TreeId};
use crate::pack::ChunkKind;
use crate::repo::Repository;
use crate::snapshot::{Record, decode_record};
use crate::tree::{Body, Entry, decode_tree, encode_xattrs};

#[derive(Clone, Debug, Default, Serialize)]
pub struct RebuildStats {
    /// Where the previous catalog was moved, if there was one.
    pub old_catalog: Option<PathBuf>,
    pub packs: u64,
    pub unreadable_packs: u64,
    pub chunks: u64,
    pub trees: u64,
    pub snapshots: u64,
    pub forgotten: u64,
    pub problems: Vec<String>,
    pub seconds: f64,
}

pub fn rebuild_catalog(repo: &Repository) -> Result<RebuildStats> {
    let t0 = Instant::now();
    let _lock = repo.lock("rebuild-catalog")?;
    let mut stats = RebuildStats::default();
    let path = repo.catalog_path();
    if path.exists() {
        let aside = repo.root.join(format!(
            "catalog.db.before-rebuild-{}",
            crate::time::snapshot_stamp(crate::time::now_ns())
        ));
        if aside.exists() {
            return Err(Error::invalid(format!(
                "{} exists already; move it away first",
                aside.display()
            )));
        }
        std::fs::rename(&path, &aside).at(&path)?;
        for ext in ["-wal", "-shm"] {
            let side = PathBuf::from(format!("{}{ext}", path.display()));
            if side.exists() {
                std::fs::rename(&side, format!("{}{ext}", aside.display())).at(&side)?;
            }
        }
        stats.old_catalog = Some(aside);
    }
    let cat = Catalog::open(&path, true)?;
    cat.begin()?;
    for name in repo.backend.list()? {
        match repo.read_pack_table(&name) {
            Ok((size, entries)) => {
                stats.chunks += entries.len() as u64;
                cat.add_pack(&name, size, &entries)?;
                stats.packs += 1;
            }
            Err(e) => {
                stats.unreadable_packs += 1;
                stats.problems.push(format!("pack {name}: {e}"));
            }
        }
    }
    let read = |id: &crate::ids::ChunkId| -> Result<Vec<u8>> {
        let loc = cat
            .chunk_loc(id)?
            .ok_or_else(|| Error::corrupt(format!("chunk {id} vanished")))?;
        repo.read_chunk(id, &loc)
    };

    // Trees, in two passes: rows first (so subtrees resolve), then entries.
    let tree_ids = cat.chunk_ids_of_kind(ChunkKind::Tree)?;
    let mut good: Vec<(crate::ids::ChunkId, TreeId)> = Vec::new();
    for id in &tree_ids {
        match read(id).and_then(|b| decode_tree(&b)) {
            Ok(entries) => {
                let nodes = entries.iter().map(Entry::span).sum();
                let t = cat.add_tree(&TreeHash(id.0), nodes, &[])?;
                good.push((*id, t));
                stats.trees += 1;
            }
            Err(e) => stats.problems.push(format!("tree {id}: {e}")),
        }
    }
    for (id, tree) in &good {
        let entries = decode_tree(&read(id)?)?;
        let mut rows = Vec::with_capacity(entries.len());
        let mut offset = 0;
        for e in entries {
            let span = e.span();
            let (content, subtree, target) = match &e.body {
                Body::File(list) => {
                    let h = list.hash();
                    let c = match cat.content_by_hash(&h)? {
                        Some(c) => c,
                        None => cat.add_content(&h, list)?,
                    };
                    (Some(c), None, None)
                }
                Body::Dir { tree: sub, .. } => match cat.tree_by_hash(sub)? {
                    Some((t, _)) => (None, Some(t), None),
                    None => {
                        stats.problems.push(format!(
                            "directory {:?}: its contents are lost (shown empty)",
                            String::from_utf8_lossy(&e.name)
                        ));
                        (None, Some(empty_tree(&cat)?), None)
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
        cat.add_entries(*tree, &rows)?;
    }

    // Snapshot records, minus the forgotten.
    let mut records = Vec::new();
    let mut forgotten: HashSet<Hash> = HashSet::new();
    for id in cat.chunk_ids_of_kind(ChunkKind::Snapshot)? {
        match read(&id).and_then(|b| decode_record(&b, id.0)) {
            Ok(Record::Snapshot { row, root }) => records.push((*row, root)),
            Ok(Record::Forget(hashes)) => {
                cat.add_tombstone(&id)?;
                forgotten.extend(hashes);
            }
            Err(e) => stats.problems.push(format!("snapshot record {id}: {e}")),
        }
    }
    records.sort_by_key(|(r, _)| (r.started_ns, r.name.clone()));
    for (mut row, root) in records {
        if forgotten.contains(&row.hash) {
            stats.forgotten += 1;
            continue;
        }
        let Some((root_tree, _)) = cat.tree_by_hash(&root)? else {
            stats
                .problems
                .push(format!("snapshot {}: its root directory is lost", row.name));
            continue;
        };
        row.root_tree = root_tree;
        let id = cat.add_snapshot(&row)?;
        let mut links: HashMap<u64, (u64, u64)> = HashMap::new();
        count_links(&cat, root_tree, 0, &mut links)?;
        for (key, (first, count)) in links {
            if count > 1 {
                cat.add_hardlink(id, key, first, count)?;
            }
        }
        stats.snapshots += 1;
    }
    cat.commit()?;
    stats.seconds = t0.elapsed().as_secs_f64();
    Ok(stats)
}

/// The row of an empty directory, standing in for a directory whose tree is lost.
fn empty_tree(cat: &Catalog) -> Result<TreeId> {
    let hash = TreeHash(
        crate::store::hash_chunk(&crate::tree::encode_tree(&[]))
            .id
            .0,
    );
    match cat.tree_by_hash(&hash)? {
        Some((t, _)) => Ok(t),
        None => cat.add_tree(&hash, 0, &[]),
    }
}

/// Hard link groups of a snapshot in depth-first order, as ingest numbers them.
fn count_links(
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
