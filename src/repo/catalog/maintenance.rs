//! Catalog queries of forget, gc, verify and rebuild: reachability, pack
//! usage, relocation. Reachability is computed in temporary tables, so memory
//! stays flat however large the repository is.

use rusqlite::params;

use super::During;
use super::{Catalog, Folded, blob_hash, get_u64};
use crate::error::{Error, Result};
use crate::format::pack::{ChunkKind, PackEntry};
use crate::format::page::Page;
use crate::format::tree::{Body, ChunkList, ContentRef, Kind};
use crate::ids::{ChunkId, ContentHash, PackId, PackName, SnapshotId, TreeHash, TreeId};

/// A pack and how much of it is still referenced.
#[derive(Clone, Debug)]
pub struct PackUsage {
    pub id: PackId,
    pub name: PackName,
    pub size: u64,
    pub live_bytes: u64,
    pub live_chunks: u64,
}

/// What a tree holds, counted from its rows: entries beneath it (at every
/// depth, a shared subtree as often as it appears) and the sizes of the
/// regular files among them. A rebuild compares these between the catalog
/// it built and the one it would replace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Holdings {
    pub entries: u64,
    pub bytes: u64,
}

impl Holdings {
    /// Figures for comparison, not arithmetic anyone relies on: a crafted
    /// catalog whose shared subtrees multiply past u64 saturates instead of
    /// wrapping to a small number.
    pub fn add(&mut self, other: &Holdings) {
        self.entries = self.entries.saturating_add(other.entries);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }
}

/// Rows gc removed.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DeadRows {
    pub pages: u64,
    pub contents: u64,
    pub chunks: u64,
}

/// The time of a pack taken out of use whose transaction may not have been
/// committed yet (see `Catalog::doom_pack`): later than any lease.
pub const UNSTAMPED: i64 = i64::MAX;

impl Catalog {
    pub fn delete_snapshot(&self, id: SnapshotId) -> Result<()> {
        (|| -> Result<()> {
            self.conn
                .execute("DELETE FROM hardlinks WHERE snapshot = ?1", [id.0])?;
            self.conn
                .execute("DELETE FROM snapshots WHERE id = ?1", [id.0])?;
            Ok(())
        })()
        .during(|| format!("delete_snapshot (snapshot {id:?})"))
    }

    /// Fill temp tables `live_pages` and `live_contents` with what some
    /// snapshot reaches, and `live_chunks` with their chunks (data, pages,
    /// chunk lists, snapshot records).
    pub fn mark_live(&self) -> Result<()> {
        self.mark_reachable("live", "1 = 1", true)
            .during(|| "mark_live".to_string())
    }

    /// Visit every page reachable from `roots` not yet in the temp table
    /// `set`, adding it there, and call `f` with each. Memory holds the
    /// pages still to visit, never the set of those visited. A page that
    /// does not decode stops the walk (gc must not delete what it could
    /// not see beneath); references to pages the catalog lacks are
    /// returned (the referring page and the entry's or child's name).
    fn walk_pages(
        &self,
        set: &str,
        roots: &[TreeId],
        mut f: impl FnMut(&TreeHash, &Page) -> Result<()>,
    ) -> Result<Vec<(TreeId, Vec<u8>)>> {
        let mut ins = self.conn.prepare(&format!(
            "INSERT OR IGNORE INTO temp.{set} (id) VALUES (?1)"
        ))?;
        let mut stack: Vec<TreeId> = roots.to_vec();
        let mut missing = Vec::new();
        while let Some(id) = stack.pop() {
            if ins.execute([id.0])? == 0 {
                continue;
            }
            let page = self.page(id)?;
            let mut follow = |hash: &TreeHash, name: &[u8]| -> Result<()> {
                match self.tree_by_hash(hash)? {
                    Some((t, _)) => stack.push(t),
                    None => missing.push((id, name.to_vec())),
                }
                Ok(())
            };
            match &*page {
                Page::Index { children, .. } => {
                    for c in children {
                        follow(&c.page, &c.first_name)?;
                    }
                }
                Page::Leaf(entries) => {
                    for e in entries {
                        if let Body::Dir { tree, .. } = &e.body {
                            follow(tree, &e.name)?;
                        }
                    }
                }
            }
            f(&self.tree_hash(id)?, &page)?;
        }
        Ok(missing)
    }

    /// Fill temp tables `<prefix>_pages`, `<prefix>_contents`, `<prefix>_chunks`
    /// with what the snapshots matching `filter` (SQL over `snapshots`) reach.
    fn mark_reachable(&self, prefix: &str, filter: &str, tombstones: bool) -> Result<()> {
        let tomb = if tombstones {
            format!("INSERT OR IGNORE INTO {prefix}_chunks SELECT chunk FROM tombstones;")
        } else {
            String::new()
        };
        self.conn.execute_batch(&format!(
            "DROP TABLE IF EXISTS temp.{prefix}_pages;
             DROP TABLE IF EXISTS temp.{prefix}_contents;
             DROP TABLE IF EXISTS temp.{prefix}_chunks;
             CREATE TEMP TABLE {prefix}_pages (id INTEGER PRIMARY KEY);
             CREATE TEMP TABLE {prefix}_contents (hash BLOB PRIMARY KEY) WITHOUT ROWID;
             CREATE TEMP TABLE {prefix}_chunks (id BLOB PRIMARY KEY) WITHOUT ROWID;"
        ))?;
        let roots: Vec<TreeId> = {
            let mut st = self
                .conn
                .prepare(&format!("SELECT root_tree FROM snapshots WHERE {filter}"))?;
            let rows = st.query_map([], |r| Ok(TreeId(r.get(0)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut chunk = self.conn.prepare(&format!(
            "INSERT OR IGNORE INTO {prefix}_chunks (id) VALUES (?1)"
        ))?;
        let mut list = self.conn.prepare(&format!(
            "INSERT OR IGNORE INTO {prefix}_contents (hash) VALUES (?1)"
        ))?;
        self.walk_pages(&format!("{prefix}_pages"), &roots, |_, page| {
            if let Page::Leaf(entries) = page {
                for e in entries {
                    match &e.body {
                        Body::File(Some(ContentRef::Chunk(id, _))) => {
                            chunk.execute([&id.0.0[..]])?;
                        }
                        Body::File(Some(ContentRef::List(h))) => {
                            list.execute([&h.0.0[..]])?;
                        }
                        _ => {}
                    }
                }
            }
            Ok(())
        })?;
        self.conn.execute_batch(&format!(
            "INSERT OR IGNORE INTO {prefix}_chunks SELECT hash FROM snapshots WHERE {filter};
             {tomb}
             INSERT OR IGNORE INTO {prefix}_chunks
                 SELECT p.hash FROM pages p JOIN {prefix}_pages l ON l.id = p.id;
             INSERT OR IGNORE INTO {prefix}_chunks SELECT hash FROM {prefix}_contents;"
        ))?;
        let mut st = self.conn.prepare(&format!(
            "SELECT c.chunks FROM contents c JOIN {prefix}_contents l ON l.hash = c.hash"
        ))?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let list = ChunkList::validate(r.get(0)?)?;
            for c in list.iter() {
                chunk.execute([&c.id.0.0[..]])?;
            }
        }
        Ok(())
    }

    /// Delete the rows `mark_live` did not reach.
    pub fn delete_dead(&self) -> Result<DeadRows> {
        (|| -> Result<DeadRows> {
            let c = &self.conn;
            let pages = c.execute(
                "DELETE FROM pages WHERE id NOT IN (SELECT id FROM temp.live_pages)",
                [],
            )? as u64;
            let contents = c.execute(
                "DELETE FROM contents WHERE hash NOT IN (SELECT hash FROM temp.live_contents)",
                [],
            )? as u64;
            let chunks = c.execute(
                "DELETE FROM chunks WHERE id NOT IN (SELECT id FROM temp.live_chunks)",
                [],
            )? as u64;
            Ok(DeadRows {
                pages,
                contents,
                chunks,
            })
        })()
        .during(|| "delete_dead".to_string())
    }

    /// Every pack with its referenced bytes (after `delete_dead`).
    pub fn pack_usage(&self) -> Result<Vec<PackUsage>> {
        (|| -> Result<Vec<PackUsage>> {
            let mut st = self.conn.prepare(
                "SELECT p.id, p.name, p.size, COALESCE(SUM(c.stored_len), 0), COUNT(c.id)
                 FROM packs p LEFT JOIN chunks c ON c.pack = p.id GROUP BY p.id ORDER BY p.id",
            )?;
            let rows = st.query_map([], |r| {
                Ok(PackUsage {
                    id: PackId(r.get(0)?),
                    name: PackName(blob_hash(r.get(1)?)?),
                    size: r.get::<_, i64>(2)? as u64,
                    live_bytes: r.get::<_, i64>(3)? as u64,
                    live_chunks: r.get::<_, i64>(4)? as u64,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })()
        .during(|| "pack_usage".to_string())
    }

    /// The catalog's chunks stored in one pack, in pack order.
    pub fn chunks_in_pack(&self, pack: PackId) -> Result<Vec<PackEntry>> {
        (|| -> Result<Vec<PackEntry>> {
            let mut st = self.conn.prepare_cached(
                "SELECT id, kind, offset, stored_len, raw_len FROM chunks WHERE pack = ?1 ORDER BY offset",
            )?;
            let rows = st.query_map([pack.0], |r| {
                let kind: u8 = r.get(1)?;
                Ok((
                    blob_hash(r.get(0)?)?,
                    kind,
                    r.get::<_, i64>(2)?,
                    r.get(3)?,
                    r.get(4)?,
                ))
            })?;
            rows.map(|r| {
                let (id, kind, offset, stored_len, raw_len) = r?;
                Ok(PackEntry {
                    id: ChunkId(id),
                    kind: ChunkKind::from_u8(kind)?,
                    offset: offset as u64,
                    stored_len,
                    raw_len,
                })
            })
            .collect()
        })()
        .during(|| "chunks_in_pack".to_string())
    }

    /// Point a chunk at its new place (a rewrite may also have compressed
    /// it again: hence its stored length).
    pub fn move_chunk(
        &self,
        id: &ChunkId,
        pack: PackId,
        offset: u64,
        stored_len: u32,
    ) -> Result<()> {
        (|| -> Result<()> {
            self.conn
                .prepare_cached(
                    "UPDATE chunks SET pack = ?2, offset = ?3, stored_len = ?4 WHERE id = ?1",
                )?
                .execute(params![&id.0.0[..], pack.0, offset as i64, stored_len])?;
            Ok(())
        })()
        .during(|| "move_chunk".to_string())
    }

    /// Record a pack (with no chunk rows of its own yet).
    pub fn add_empty_pack(&self, name: &PackName, size: u64) -> Result<PackId> {
        self.add_pack(name, size, &[])
            .during(|| format!("add_empty_pack (pack {name})"))
    }

    /// Take a pack out of use; its file is deleted later (see `doomed_packs`).
    /// Take a pack out of use. Its time is stamped only once the caller's
    /// transaction is committed (`stamp_doomed`): a reader that starts
    /// before the commit still reads the catalog that points into the pack,
    /// so the time that tells it apart must come after.
    pub fn doom_pack(&self, id: PackId, name: &PackName) -> Result<()> {
        (|| -> Result<()> {
            self.conn
                .execute("DELETE FROM packs WHERE id = ?1", [id.0])?;
            self.conn.execute(
                "INSERT OR REPLACE INTO doomed_packs (name, doomed_ns) VALUES (?1, ?2)",
                params![&name.0.0[..], UNSTAMPED],
            )?;
            Ok(())
        })()
        .during(|| format!("doom_pack (pack {name})"))
    }

    /// Give packs taken out of use by a committed transaction their time
    /// (see `doom_pack`): now, which is after that commit.
    pub fn stamp_doomed(&self, now_ns: i64) -> Result<()> {
        (|| -> Result<()> {
            self.conn.execute(
                "UPDATE doomed_packs SET doomed_ns = ?1 WHERE doomed_ns = ?2",
                params![now_ns, UNSTAMPED],
            )?;
            Ok(())
        })()
        .during(|| "stamp_doomed".to_string())
    }

    pub fn doomed_packs(&self) -> Result<Vec<(PackName, i64)>> {
        (|| -> Result<Vec<(PackName, i64)>> {
            let mut st = self
                .conn
                .prepare_cached("SELECT name, doomed_ns FROM doomed_packs")?;
            let rows = st.query_map([], |r| Ok((PackName(blob_hash(r.get(0)?)?), r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })()
        .during(|| "doomed_packs".to_string())
    }

    pub fn forget_doomed(&self, name: &PackName) -> Result<()> {
        (|| -> Result<()> {
            self.conn
                .execute("DELETE FROM doomed_packs WHERE name = ?1", [&name.0.0[..]])?;
            Ok(())
        })()
        .during(|| format!("forget_doomed (pack {name})"))
    }

    /// Point the chunks that `entries` (of pack `to`) hold at `to` where
    /// they are now located in one of `from` (packs another host's gc took
    /// out of use): a chunk is read from a pack that stays wherever one
    /// holds it.
    pub fn move_out_of(&self, from: &[PackId], to: PackId, entries: &[PackEntry]) -> Result<()> {
        if from.is_empty() {
            return Ok(());
        }
        (|| -> Result<()> {
            let list = sql_ids(from);
            let mut st = self.conn.prepare(&format!(
                "UPDATE chunks SET pack = ?1, offset = ?2, stored_len = ?3
                 WHERE id = ?4 AND pack IN ({list})"
            ))?;
            for e in entries {
                st.execute(params![to.0, e.offset as i64, e.stored_len, &e.id.0.0[..]])?;
            }
            Ok(())
        })()
        .during(|| "move_out_of".to_string())
    }

    /// How many chunks each of `packs` still holds for this catalog (one
    /// scan of the chunk index).
    pub fn chunks_held(&self, packs: &[PackId]) -> Result<std::collections::HashMap<PackId, u64>> {
        self.count_held(packs, "")
            .during(|| "chunks_held".to_string())
    }

    /// How many chunks some snapshot reaches each of `packs` holds: rows
    /// no snapshot reaches (left by a forget) do not count. Runs
    /// `mark_live`.
    pub fn reached_chunks_held(
        &self,
        packs: &[PackId],
    ) -> Result<std::collections::HashMap<PackId, u64>> {
        if packs.is_empty() {
            return Ok(Default::default());
        }
        self.mark_live()?;
        self.count_held(packs, "JOIN temp.live_chunks l ON l.id = chunks.id")
            .during(|| "reached_chunks_held".to_string())
    }

    /// Drop the chunk rows of `packs` no snapshot reaches (after
    /// `reached_chunks_held`, which fills what is reached), and the page
    /// and content rows no snapshot reaches (a snapshot whose import
    /// failed half way leaves some), which could name those chunks: a
    /// rebuilt catalog then never deduplicates against chunks of packs a
    /// gc elsewhere took out of use.
    pub fn drop_unreached_in(&self, packs: &[PackId]) -> Result<u64> {
        if packs.is_empty() {
            return Ok(0);
        }
        (|| -> Result<u64> {
            let list = sql_ids(packs);
            self.conn.execute_batch(
                "DELETE FROM pages WHERE id NOT IN (SELECT id FROM temp.live_pages);
                 DELETE FROM contents WHERE hash NOT IN (SELECT hash FROM temp.live_contents);",
            )?;
            Ok(self.conn.execute(
                &format!(
                    "DELETE FROM chunks WHERE pack IN ({list})
                     AND id NOT IN (SELECT id FROM temp.live_chunks)"
                ),
                [],
            )? as u64)
        })()
        .during(|| "drop_unreached_in".to_string())
    }

    fn count_held(
        &self,
        packs: &[PackId],
        join: &str,
    ) -> Result<std::collections::HashMap<PackId, u64>> {
        let mut out = std::collections::HashMap::new();
        if packs.is_empty() {
            return Ok(out);
        }
        let mut st = self.conn.prepare(&format!(
            "SELECT pack, count(*) FROM chunks {join} WHERE pack IN ({}) GROUP BY pack",
            sql_ids(packs)
        ))?;
        let rows = st.query_map([], |r| Ok((PackId(r.get(0)?), get_u64(r, 1)?)))?;
        for r in rows {
            let (p, n) = r?;
            out.insert(p, n);
        }
        Ok(out)
    }

    /// The forget records this catalog keeps.
    pub fn tombstones(&self) -> Result<Vec<ChunkId>> {
        (|| -> Result<Vec<ChunkId>> {
            let mut st = self.conn.prepare("SELECT chunk FROM tombstones")?;
            let rows = st.query_map([], |r| Ok(ChunkId(blob_hash(r.get(0)?)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })()
        .during(|| "tombstones".to_string())
    }

    /// Whether `chunk` is a forget record this catalog keeps.
    pub fn is_tombstone(&self, chunk: &ChunkId) -> Result<bool> {
        (|| -> Result<bool> {
            let mut st = self
                .conn
                .prepare_cached("SELECT 1 FROM tombstones WHERE chunk = ?1")?;
            Ok(st.exists([&chunk.0.0[..]])?)
        })()
        .during(|| "is_tombstone".to_string())
    }

    pub fn add_tombstone(&self, chunk: &ChunkId) -> Result<()> {
        (|| -> Result<()> {
            self.conn.execute(
                "INSERT OR IGNORE INTO tombstones (chunk) VALUES (?1)",
                [&chunk.0.0[..]],
            )?;
            Ok(())
        })()
        .during(|| "add_tombstone".to_string())
    }

    /// Ids of stored metadata chunks of one kind (for a rebuild).
    pub fn chunk_ids_of_kind(&self, kind: ChunkKind) -> Result<Vec<ChunkId>> {
        (|| -> Result<Vec<ChunkId>> {
            let mut st = self.conn.prepare("SELECT id FROM chunks WHERE kind = ?1")?;
            let rows = st.query_map([kind as u8], |r| Ok(ChunkId(blob_hash(r.get(0)?)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })()
        .during(|| "chunk_ids_of_kind".to_string())
    }

    /// The chunks this catalog places in the pack named `name`: what a
    /// rebuild can still use of a pack whose own table is lost (truncated).
    pub fn chunks_in_pack_named(&self, name: &PackName) -> Result<Vec<PackEntry>> {
        (|| -> Result<Vec<PackEntry>> {
            let mut st = self.conn.prepare(
                "SELECT c.id, c.kind, c.offset, c.stored_len, c.raw_len
                 FROM chunks c JOIN packs p ON p.id = c.pack WHERE p.name = ?1 ORDER BY c.offset",
            )?;
            let rows = st.query_map([&name.0.0[..]], |r| {
                Ok((
                    blob_hash(r.get(0)?)?,
                    r.get::<_, u8>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, u32>(3)?,
                    r.get::<_, u32>(4)?,
                ))
            })?;
            rows.map(|r| {
                let (id, kind, offset, stored_len, raw_len) = r?;
                Ok(PackEntry {
                    id: ChunkId(id),
                    kind: ChunkKind::from_u8(kind)?,
                    offset: u64::try_from(offset).map_err(|_| {
                        Error::corrupt(format!(
                            "chunk {}: negative offset in pack {name}",
                            ChunkId(id)
                        ))
                    })?,
                    stored_len,
                    raw_len,
                })
            })
            .collect()
        })()
        .during(|| format!("chunks_in_pack_named (pack {name})"))
    }

    /// What the tree `root` holds (see [`Holdings`]). `memo` keeps the
    /// figures of every page counted so far, so snapshots that share pages
    /// cost one visit of each ([`Catalog::fold_pages`]: a chain or cycle
    /// of trees ends with an error past `MAX_DEPTH` levels).
    pub fn holdings(&self, root: TreeId, memo: &mut Folded<Holdings>) -> Result<Holdings> {
        self.fold_pages(root, memo, |page, below| {
            let mut sum = Holdings::default();
            if let Page::Leaf(entries) = page {
                for e in entries {
                    sum.entries = sum.entries.saturating_add(1);
                    if e.kind == Kind::File {
                        sum.bytes = sum.bytes.saturating_add(e.meta.size);
                    }
                }
            }
            for h in below.iter().flatten() {
                sum.add(h);
            }
            Ok(sum)
        })
        .during(|| "holdings".to_string())
    }

    /// Set every snapshot's `added_bytes` from the packs: the size of each
    /// pack whose chunks a snapshot is the first (oldest first) to use.
    ///
    /// Ingest records the packs it wrote, and it writes only chunks the
    /// repository did not have, all of which its snapshot uses: so the
    /// packs a snapshot uses first are the packs its ingest wrote, and the
    /// figure is what ingest recorded. It differs only where the packs no
    /// longer say who wrote them: after gc moved chunks into new packs,
    /// after an interrupted ingest left packs that a later one used, or
    /// when a forgotten snapshot still waiting for gc wrote them.
    ///
    /// Trees and contents already seen are not walked again, so the work is
    /// one visit of each row, in temporary tables (memory stays flat).
    pub fn attribute_added_bytes(&self) -> Result<()> {
        (|| -> Result<()> {
            self.conn.execute_batch(
                "DROP TABLE IF EXISTS temp.seen_pages;
                 DROP TABLE IF EXISTS temp.seen_contents;
                 DROP TABLE IF EXISTS temp.claimed_packs;
                 DROP TABLE IF EXISTS temp.fresh_chunks;
                 CREATE TEMP TABLE seen_pages (id INTEGER PRIMARY KEY);
                 CREATE TEMP TABLE seen_contents (hash BLOB PRIMARY KEY) WITHOUT ROWID;
                 CREATE TEMP TABLE claimed_packs (id INTEGER PRIMARY KEY);
                 CREATE TEMP TABLE fresh_chunks (id BLOB PRIMARY KEY) WITHOUT ROWID;",
            )?;
            let snaps: Vec<(i64, i64, Vec<u8>)> = {
                let mut st = self
                    .conn
                    .prepare("SELECT id, root_tree, hash FROM snapshots ORDER BY started_ns, id")?;
                let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut add_chunk = self
                .conn
                .prepare("INSERT OR IGNORE INTO temp.fresh_chunks (id) VALUES (?1)")?;
            let mut see_list = self
                .conn
                .prepare("INSERT OR IGNORE INTO temp.seen_contents (hash) VALUES (?1)")?;
            for (id, root, hash) in snaps {
                self.conn.execute_batch("DELETE FROM temp.fresh_chunks;")?;
                add_chunk.execute([&hash])?;
                self.walk_pages("seen_pages", &[TreeId(root)], |page_hash, page| {
                    add_chunk.execute([&page_hash.0.0[..]])?;
                    let Page::Leaf(entries) = page else {
                        return Ok(());
                    };
                    for e in entries {
                        match &e.body {
                            Body::File(Some(ContentRef::Chunk(c, _))) => {
                                add_chunk.execute([&c.0.0[..]])?;
                            }
                            Body::File(Some(c @ ContentRef::List(h)))
                                if see_list.execute([&h.0.0[..]])? > 0 =>
                            {
                                add_chunk.execute([&h.0.0[..]])?;
                                if let Ok(list) = self.content(c) {
                                    for c in list.iter() {
                                        add_chunk.execute([&c.id.0.0[..]])?;
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                    Ok(())
                })?;
                // CROSS JOIN keeps SQLite from scanning every chunk for
                // each snapshot: the fresh ones are few, and looked up.
                let added: i64 = self.conn.query_row(
                    "SELECT COALESCE(SUM(size), 0) FROM packs
                     WHERE id IN (SELECT c.pack FROM temp.fresh_chunks f CROSS JOIN chunks c ON c.id = f.id)
                       AND id NOT IN (SELECT id FROM temp.claimed_packs)",
                    [],
                    |r| r.get(0),
                )?;
                self.conn.execute(
                    "INSERT OR IGNORE INTO temp.claimed_packs
                         SELECT c.pack FROM temp.fresh_chunks f CROSS JOIN chunks c ON c.id = f.id",
                    [],
                )?;
                self.conn.execute(
                    "UPDATE snapshots SET added_bytes = ?2 WHERE id = ?1",
                    params![id, added],
                )?;
            }
            Ok(())
        })()
        .during(|| "attribute_added_bytes".to_string())
    }

    /// A snapshot's share of changed entries and its change alarm: figures
    /// of the ingest that made it, which its record does not hold, so a
    /// rebuild takes them from the catalog it replaces.
    pub fn set_change(&self, id: SnapshotId, change_share: f64, alarm: bool) -> Result<()> {
        (|| -> Result<()> {
            self.conn.execute(
                "UPDATE snapshots SET change_share = ?2, alarm = ?3 WHERE id = ?1",
                params![id.0, change_share, alarm as i64],
            )?;
            Ok(())
        })()
        .during(|| format!("set_change (snapshot {id:?})"))
    }

    /// Fold the write-ahead log into the database file, or fail: before a
    /// rebuilt catalog is renamed into place, everything must be in the one
    /// file that is renamed.
    pub fn fold_wal(&self) -> Result<()> {
        (|| -> Result<()> {
            let busy: i64 = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
            if busy != 0 {
                return Err(Error::invalid(
                    "the catalog's write-ahead log could not be folded in: another process is reading it",
                ));
            }
            Ok(())
        })()
        .during(|| "fold_wal".to_string())
    }

    /// Stored bytes only this snapshot references (what forgetting it frees).
    pub fn unique_bytes(&self, snap: SnapshotId) -> Result<u64> {
        (|| -> Result<u64> {
            self.mark_reachable("other", &format!("id != {}", snap.0), true)?;
            self.mark_reachable("this", &format!("id = {}", snap.0), false)?;
            Ok(self.conn.query_row(
                "SELECT COALESCE(SUM(c.stored_len), 0) FROM temp.this_chunks t JOIN chunks c ON c.id = t.id
                 WHERE t.id NOT IN (SELECT id FROM temp.other_chunks)",
                [],
                |r| r.get::<_, i64>(0),
            )? as u64)
        })()
        .during(|| format!("unique_bytes (snapshot {snap:?})"))
    }

    /// (raw bytes, stored bytes, chunks) of the file data in the repository.
    pub fn data_totals(&self) -> Result<(u64, u64, u64)> {
        (|| -> Result<(u64, u64, u64)> {
            Ok(self.conn.query_row(
                "SELECT COALESCE(SUM(raw_len), 0), COALESCE(SUM(stored_len), 0), COUNT(*) FROM chunks WHERE kind = 0",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64)),
            )?)
        })()
        .during(|| "data_totals".to_string())
    }

    // ---- verify ----

    /// (directory, entry name) of entries whose chunk list or directory
    /// pages are missing; a directory whose own pages cannot be listed
    /// comes with an empty name.
    pub fn dangling_entries(&self) -> Result<Vec<(TreeId, Vec<u8>)>> {
        (|| -> Result<Vec<(TreeId, Vec<u8>)>> {
            let roots: Vec<TreeId> = {
                let mut st = self.conn.prepare(
                    "SELECT root_tree FROM snapshots s WHERE EXISTS (SELECT 1 FROM pages p WHERE p.id = s.root_tree)",
                )?;
                let rows = st.query_map([], |r| Ok(TreeId(r.get(0)?)))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut seen = std::collections::HashSet::new();
            let mut stack = roots;
            let mut out = Vec::new();
            while let Some(tree) = stack.pop() {
                if !seen.insert(tree) {
                    continue;
                }
                let entries = match self.entries(tree) {
                    Ok(e) => e,
                    Err(Error::Corrupt(_)) => {
                        out.push((tree, Vec::new()));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                for n in entries {
                    let bad = match (&n.content, n.kind) {
                        (Some(ContentRef::List(h)), _) => !self.has_content(h)?,
                        (_, Kind::Dir) => n.subtree.is_none(),
                        _ => false,
                    };
                    if bad {
                        out.push((tree, n.name.clone()));
                    }
                    if let Some(t) = n.subtree {
                        stack.push(t);
                    }
                }
            }
            Ok(out)
        })()
        .during(|| "dangling_entries".to_string())
    }

    /// Page rows whose bytes are not the page their hash names, do not
    /// decode, or disagree with their own level and counts; why, for each.
    /// The mount trusts a row's counts to number inodes, so `verify` checks
    /// every row here.
    pub fn damaged_pages(
        &self,
        keying: &crate::format::keying::Keying,
    ) -> Result<Vec<(TreeHash, String)>> {
        (|| -> Result<Vec<(TreeHash, String)>> {
            let mut st = self
                .conn
                .prepare("SELECT hash, level, entries, nodes, body FROM pages")?;
            let mut rows = st.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let hash = TreeHash(blob_hash(r.get(0)?)?);
                let cols: (i64, i64, i64) = (r.get(1)?, r.get(2)?, r.get(3)?);
                let body: Vec<u8> = r.get(4)?;
                let why = if keying.hash_chunk(&body).id.0 != hash.0 {
                    Some("its bytes are not the page its hash names".to_string())
                } else {
                    match crate::format::page::decode_page(&body) {
                        Err(e) => Some(e.to_string()),
                        Ok(p)
                            if (i64::from(p.level()), p.entries() as i64, p.nodes() as i64)
                                != cols =>
                        {
                            Some("its level or counts disagree with its bytes".to_string())
                        }
                        Ok(_) => None,
                    }
                };
                if let Some(why) = why {
                    out.push((hash, why));
                }
            }
            Ok(out)
        })()
        .during(|| "damaged_pages".to_string())
    }

    /// Snapshots whose root page row is missing.
    pub fn snapshots_without_root(&self) -> Result<Vec<String>> {
        (|| -> Result<Vec<String>> {
            let mut st = self.conn.prepare(
                "SELECT s.name FROM snapshots s WHERE NOT EXISTS (SELECT 1 FROM pages p WHERE p.id = s.root_tree)",
            )?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })()
        .during(|| "snapshots_without_root".to_string())
    }

    /// Call `f` with every chunk list row (hash, chunk list).
    pub fn each_content(
        &self,
        mut f: impl FnMut(ContentHash, ChunkList) -> Result<()>,
    ) -> Result<()> {
        let mut st = self.conn.prepare("SELECT hash, chunks FROM contents")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            f(
                ContentHash(blob_hash(r.get(0)?)?),
                ChunkList::validate(r.get(1)?)?,
            )?;
        }
        Ok(())
    }

    /// Metadata chunks (pages, chunk lists, snapshot records) missing from the chunk index.
    pub fn missing_meta_chunks(&self) -> Result<u64> {
        (|| -> Result<u64> {
            Ok(self.conn.query_row(
                "SELECT (SELECT COUNT(*) FROM pages t WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.id = t.hash))
                      + (SELECT COUNT(*) FROM contents t WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.id = t.hash))
                      + (SELECT COUNT(*) FROM snapshots s WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.id = s.hash))",
                [],
                |r| r.get::<_, i64>(0),
            )? as u64)
        })()
        .during(|| "missing_meta_chunks".to_string())
    }

    /// Chunks whose recorded place does not fit inside their pack.
    pub fn chunks_outside_packs(&self) -> Result<u64> {
        (|| -> Result<u64> {
            Ok(self.conn.query_row(
                "SELECT COUNT(*) FROM chunks c JOIN packs p ON p.id = c.pack
                 WHERE c.offset + c.stored_len > p.size",
                [],
                |r| r.get::<_, i64>(0),
            )? as u64)
        })()
        .during(|| "chunks_outside_packs".to_string())
    }

    pub fn chunks_without_pack(&self) -> Result<u64> {
        (|| -> Result<u64> {
            Ok(self.conn.query_row(
                "SELECT COUNT(*) FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM packs p WHERE p.id = c.pack)",
                [],
                |r| r.get::<_, i64>(0),
            )? as u64)
        })()
        .during(|| "chunks_without_pack".to_string())
    }
}

/// `packs` as a list for SQL's `IN (…)`: integers only, so nothing can be
/// smuggled into the statement.
fn sql_ids(packs: &[PackId]) -> String {
    packs
        .iter()
        .map(|p| p.0.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::record::SnapshotRow;
    use crate::format::tree::{Entry, FileTime, Meta};
    use crate::ids::Hash;
    use std::collections::HashMap;

    fn id(s: &str) -> ChunkId {
        ChunkId(Hash::of(s.as_bytes()))
    }

    fn file(name: &str, size: u64, chunk: &str) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            kind: Kind::File,
            meta: Meta {
                mode: libc::S_IFREG | 0o644,
                size,
                nlink: 1,
                mtime: FileTime::from_ns(1),
                ..Meta::default()
            },
            link_key: 0,
            xattrs: Vec::new(),
            body: Body::File(Some(ContentRef::Chunk(id(chunk), size as u32))),
        }
    }

    fn dir(cat: &Catalog, name: &str, tree: TreeId) -> Entry {
        Entry {
            name: name.as_bytes().to_vec(),
            kind: Kind::Dir,
            meta: Meta {
                mode: libc::S_IFDIR | 0o755,
                nlink: 2,
                ..Meta::default()
            },
            link_key: 0,
            xattrs: Vec::new(),
            body: Body::Dir {
                tree: cat.tree_hash(tree).unwrap(),
                nodes: cat.tree_nodes(tree).unwrap(),
            },
        }
    }

    fn pack(cat: &Catalog, name: &str, size: u64, chunks: &[ChunkId]) {
        let entries: Vec<PackEntry> = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| PackEntry {
                id: *c,
                kind: ChunkKind::Data,
                offset: 16 + i as u64,
                stored_len: 1,
                raw_len: 1,
            })
            .collect();
        cat.add_pack(&PackName(Hash::of(name.as_bytes())), size, &entries)
            .unwrap();
    }

    fn snapshot(cat: &Catalog, record: &str, started_ns: i64, root: TreeId) -> SnapshotId {
        cat.add_snapshot(&SnapshotRow {
            hash: id(record).0,
            host: "h".into(),
            ..SnapshotRow::new(record.to_string(), started_ns, root)
        })
        .unwrap()
    }

    fn page(cat: &Catalog, t: TreeId) -> ChunkId {
        ChunkId(cat.tree_hash(t).unwrap().0)
    }

    /// s1: a/ and b/ (one shared directory holding f) and g; s2: a/ again
    /// and h, written to a pack of its own; s3: s2's tree again, only its
    /// record new. Each snapshot is credited with the packs its ingest
    /// would have written, and counts the shared directory twice.
    #[test]
    fn added_bytes_go_to_the_first_user_of_each_pack_and_shared_trees_count_per_name() {
        let d = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&d.path().join("c.db"), true).unwrap();
        cat.begin().unwrap();
        let a = cat.add_dir(vec![file("f", 10, "x")]).unwrap();
        let r1 = cat
            .add_dir(vec![
                dir(&cat, "a", a),
                dir(&cat, "b", a),
                file("g", 5, "y"),
            ])
            .unwrap();
        let r2 = cat
            .add_dir(vec![dir(&cat, "a", a), file("h", 7, "z")])
            .unwrap();
        pack(
            &cat,
            "p1",
            1000,
            &[id("x"), id("y"), page(&cat, a), page(&cat, r1), id("rec1")],
        );
        pack(&cat, "p2", 200, &[id("z"), page(&cat, r2), id("rec2")]);
        pack(&cat, "p3", 30, &[id("rec3")]);
        let s1 = snapshot(&cat, "rec1", 1, r1);
        let s2 = snapshot(&cat, "rec2", 2, r2);
        let s3 = snapshot(&cat, "rec3", 3, r2);
        cat.attribute_added_bytes().unwrap();
        cat.commit().unwrap();
        let added = |s| cat.snapshot(s).unwrap().unwrap().added_bytes;
        assert_eq!((added(s1), added(s2), added(s3)), (1000, 200, 30));

        let mut memo = HashMap::new();
        let h = cat.holdings(r1, &mut memo).unwrap();
        assert_eq!((h.entries, h.bytes), (5, 25));
        let h = cat.holdings(r2, &mut memo).unwrap();
        assert_eq!((h.entries, h.bytes), (3, 17));

        // gc's marking keeps what the snapshots reach and nothing else.
        cat.delete_snapshot(s1).unwrap();
        cat.mark_live().unwrap();
        let dead = cat.delete_dead().unwrap();
        assert_eq!((dead.pages, dead.chunks), (1, 3), "{dead:?}");
        assert!(cat.has_chunk(&id("z")).unwrap() && cat.has_chunk(&id("x")).unwrap());
        assert!(!cat.has_chunk(&id("y")).unwrap());
    }

    /// A tampered catalog whose directory contains itself: counting its
    /// holdings ends with an error, not a hang or a stack overflow.
    #[test]
    fn holdings_of_a_tree_that_contains_itself_are_an_error() {
        let d = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&d.path().join("c.db"), true).unwrap();
        // A directory whose entry names its own root page: the page's hash
        // is fixed by its bytes, so the row is put under the hash it names,
        // and its node count column is made to agree with the claim (no
        // honest count can: a directory holds more than it contains).
        let built = crate::format::page::build_dir(
            vec![Entry {
                body: Body::Dir {
                    tree: TreeHash(Hash::of(b"self")),
                    nodes: 5,
                },
                ..dir(&cat, "again", cat.add_dir(Vec::new()).unwrap())
            }],
            &crate::format::keying::Keying::plain(),
        );
        let mut p = built.root().clone();
        p.hash = TreeHash(Hash::of(b"self"));
        p.nodes = 5;
        let t = cat.add_page(&p).unwrap();
        let err = cat
            .holdings(t, &mut HashMap::new())
            .unwrap_err()
            .to_string();
        // The page holds more than its row says (a loop always does), or
        // else the walk goes too deep.
        assert!(
            err.contains("deeper than") || err.contains("its row says"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod fold_tests {
    use std::collections::HashMap;

    use crate::format::page::{Page, build_dir, decode_page, encode_page};
    use crate::format::tree::{Body, ContentRef, Entry, Kind, Meta};
    use crate::ids::{ChunkId, Hash, TreeHash};
    use crate::repo::catalog::Catalog;

    fn files(n: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| Entry {
                name: format!("f{i:05}").into_bytes(),
                kind: Kind::File,
                meta: Meta {
                    mode: libc::S_IFREG | 0o644,
                    size: 10,
                    nlink: 1,
                    ..Meta::default()
                },
                link_key: 0,
                xattrs: Vec::new(),
                body: Body::File(Some(ContentRef::Chunk(ChunkId(Hash::of(b"c")), 10))),
            })
            .collect()
    }

    /// A page counted once is remembered by hash; a later directory whose
    /// index page names it with other counts is refused all the same, not
    /// given the remembered figures.
    #[test]
    fn a_remembered_page_under_a_parent_that_miscounts_it_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&d.path().join("c.db"), true).unwrap();
        let honest = cat.add_dir(files(2_000)).unwrap();
        let mut memo = HashMap::new();
        let h = cat.holdings(honest, &mut memo).unwrap();
        assert_eq!((h.entries, h.bytes), (2_000, 20_000));
        let root = cat.page_body(honest).unwrap();
        let Page::Index {
            level,
            mut children,
        } = decode_page(&root).unwrap()
        else {
            panic!("2,000 entries make an index page")
        };
        children[0].entries += 1;
        children[0].nodes += 1;
        let bytes = encode_page(&Page::Index { level, children });
        let mut built =
            build_dir(Vec::new(), &crate::format::keying::Keying::plain()).pages[0].clone();
        built.hash = TreeHash(Hash::of(&bytes));
        built.bytes = bytes;
        built.level = level;
        built.entries = 2_001;
        built.nodes = 2_001;
        let liar = cat.add_page(&built).unwrap();
        let err = cat.holdings(liar, &mut memo).unwrap_err().to_string();
        assert!(
            err.contains("differ from what its parent page says"),
            "{err}"
        );
    }
}
