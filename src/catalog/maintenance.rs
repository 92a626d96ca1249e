//! Catalog queries of forget, gc, verify and rebuild: reachability, pack
//! usage, relocation. Reachability is computed in temporary tables, so memory
//! stays flat however large the repository is.

use rusqlite::{OptionalExtension, params};

use super::{Catalog, blob_hash};
use crate::error::Result;
use crate::ids::{ChunkId, ContentId, PackId, PackName, SnapshotId, TreeId};
use crate::pack::{ChunkKind, PackEntry};
use crate::tree::ChunkList;

/// A pack and how much of it is still referenced.
#[derive(Clone, Debug)]
pub struct PackUsage {
    pub id: PackId,
    pub name: PackName,
    pub size: u64,
    pub live_bytes: u64,
    pub live_chunks: u64,
}

/// Rows gc removed.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DeadRows {
    pub trees: u64,
    pub contents: u64,
    pub chunks: u64,
}

impl Catalog {
    pub fn delete_snapshot(&self, id: SnapshotId) -> Result<()> {
        self.conn
            .execute("DELETE FROM hardlinks WHERE snapshot = ?1", [id.0])?;
        self.conn
            .execute("DELETE FROM snapshots WHERE id = ?1", [id.0])?;
        Ok(())
    }

    /// Fill temp tables `live_trees` and `live_contents` with what some
    /// snapshot reaches, and `live_chunks` with their chunks (data, trees,
    /// snapshot records).
    pub fn mark_live(&self) -> Result<()> {
        self.mark_reachable("live", "1 = 1", true)
    }

    /// Fill temp tables `<prefix>_trees`, `<prefix>_contents`, `<prefix>_chunks`
    /// with what the snapshots matching `filter` (SQL over `snapshots`) reach.
    fn mark_reachable(&self, prefix: &str, filter: &str, tombstones: bool) -> Result<()> {
        let tomb = if tombstones {
            format!("INSERT OR IGNORE INTO {prefix}_chunks SELECT chunk FROM tombstones;")
        } else {
            String::new()
        };
        self.conn.execute_batch(&format!(
            "DROP TABLE IF EXISTS temp.{prefix}_trees;
             DROP TABLE IF EXISTS temp.{prefix}_contents;
             DROP TABLE IF EXISTS temp.{prefix}_chunks;
             CREATE TEMP TABLE {prefix}_trees (id INTEGER PRIMARY KEY);
             CREATE TEMP TABLE {prefix}_contents (id INTEGER PRIMARY KEY);
             CREATE TEMP TABLE {prefix}_chunks (id BLOB PRIMARY KEY) WITHOUT ROWID;
             WITH RECURSIVE t(id) AS (
                 SELECT root_tree FROM snapshots WHERE {filter}
                 UNION
                 SELECT e.subtree FROM entries e JOIN t ON e.tree = t.id WHERE e.subtree IS NOT NULL
             )
             INSERT INTO {prefix}_trees SELECT id FROM t;
             INSERT OR IGNORE INTO {prefix}_contents
                 SELECT e.content FROM entries e JOIN {prefix}_trees t ON e.tree = t.id
                 WHERE e.content IS NOT NULL;
             INSERT OR IGNORE INTO {prefix}_chunks SELECT hash FROM snapshots WHERE {filter};
             {tomb}
             INSERT OR IGNORE INTO {prefix}_chunks
                 SELECT t.hash FROM trees t JOIN {prefix}_trees l ON l.id = t.id;"
        ))?;
        let mut ins = self.conn.prepare(&format!(
            "INSERT OR IGNORE INTO {prefix}_chunks (id) VALUES (?1)"
        ))?;
        let mut st = self.conn.prepare(&format!(
            "SELECT c.chunks FROM contents c JOIN {prefix}_contents l ON l.id = c.id"
        ))?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let list = ChunkList::validate(r.get(0)?)?;
            for c in list.iter() {
                ins.execute([&c.id.0.0[..]])?;
            }
        }
        Ok(())
    }

    /// Delete the rows `mark_live` did not reach.
    pub fn delete_dead(&self) -> Result<DeadRows> {
        let c = &self.conn;
        c.execute(
            "DELETE FROM entries WHERE tree NOT IN (SELECT id FROM temp.live_trees)",
            [],
        )?;
        let trees = c.execute(
            "DELETE FROM trees WHERE id NOT IN (SELECT id FROM temp.live_trees)",
            [],
        )? as u64;
        let contents = c.execute(
            "DELETE FROM contents WHERE id NOT IN (SELECT id FROM temp.live_contents)",
            [],
        )? as u64;
        let chunks = c.execute(
            "DELETE FROM chunks WHERE id NOT IN (SELECT id FROM temp.live_chunks)",
            [],
        )? as u64;
        Ok(DeadRows {
            trees,
            contents,
            chunks,
        })
    }

    /// Every pack with its referenced bytes (after `delete_dead`).
    pub fn pack_usage(&self) -> Result<Vec<PackUsage>> {
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
    }

    /// The catalog's chunks stored in one pack, in pack order.
    pub fn chunks_in_pack(&self, pack: PackId) -> Result<Vec<PackEntry>> {
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
    }

    /// Point a chunk at its copy in another pack.
    pub fn move_chunk(&self, id: &ChunkId, pack: PackId, offset: u64) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE chunks SET pack = ?2, offset = ?3 WHERE id = ?1")?
            .execute(params![&id.0.0[..], pack.0, offset as i64])?;
        Ok(())
    }

    /// Record a pack (with no chunk rows of its own yet).
    pub fn add_empty_pack(&self, name: &PackName, size: u64) -> Result<PackId> {
        self.add_pack(name, size, &[])
    }

    /// Take a pack out of use; its file is deleted later (see `doomed_packs`).
    pub fn doom_pack(&self, id: PackId, name: &PackName, now_ns: i64) -> Result<()> {
        self.conn
            .execute("DELETE FROM packs WHERE id = ?1", [id.0])?;
        self.conn.execute(
            "INSERT OR REPLACE INTO doomed_packs (name, doomed_ns) VALUES (?1, ?2)",
            params![&name.0.0[..], now_ns],
        )?;
        Ok(())
    }

    pub fn doomed_packs(&self) -> Result<Vec<(PackName, i64)>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT name, doomed_ns FROM doomed_packs")?;
        let rows = st.query_map([], |r| Ok((PackName(blob_hash(r.get(0)?)?), r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn forget_doomed(&self, name: &PackName) -> Result<()> {
        self.conn
            .execute("DELETE FROM doomed_packs WHERE name = ?1", [&name.0.0[..]])?;
        Ok(())
    }

    pub fn add_tombstone(&self, chunk: &ChunkId) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO tombstones (chunk) VALUES (?1)",
            [&chunk.0.0[..]],
        )?;
        Ok(())
    }

    /// Ids of stored metadata chunks of one kind (for a rebuild).
    pub fn chunk_ids_of_kind(&self, kind: ChunkKind) -> Result<Vec<ChunkId>> {
        let mut st = self.conn.prepare("SELECT id FROM chunks WHERE kind = ?1")?;
        let rows = st.query_map([kind as u8], |r| Ok(ChunkId(blob_hash(r.get(0)?)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Stored bytes only this snapshot references (what forgetting it frees).
    pub fn unique_bytes(&self, snap: SnapshotId) -> Result<u64> {
        self.mark_reachable("other", &format!("id != {}", snap.0), true)?;
        self.mark_reachable("this", &format!("id = {}", snap.0), false)?;
        Ok(self.conn.query_row(
            "SELECT COALESCE(SUM(c.stored_len), 0) FROM temp.this_chunks t JOIN chunks c ON c.id = t.id
             WHERE t.id NOT IN (SELECT id FROM temp.other_chunks)",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// (raw bytes, stored bytes, chunks) of the file data in the repository.
    pub fn data_totals(&self) -> Result<(u64, u64, u64)> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(SUM(raw_len), 0), COALESCE(SUM(stored_len), 0), COUNT(*) FROM chunks WHERE kind = 0",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64)),
        )?)
    }

    // ---- verify ----

    /// (tree, entry name) of entries whose content or subtree row is missing.
    pub fn dangling_entries(&self) -> Result<Vec<(TreeId, Vec<u8>)>> {
        let mut st = self.conn.prepare(
            "SELECT e.tree, e.name FROM entries e
             WHERE (e.content IS NOT NULL AND NOT EXISTS (SELECT 1 FROM contents c WHERE c.id = e.content))
                OR (e.subtree IS NOT NULL AND NOT EXISTS (SELECT 1 FROM trees t WHERE t.id = e.subtree))",
        )?;
        let rows = st.query_map([], |r| Ok((TreeId(r.get(0)?), r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Snapshots whose root tree row is missing.
    pub fn snapshots_without_root(&self) -> Result<Vec<String>> {
        let mut st = self.conn.prepare(
            "SELECT s.name FROM snapshots s WHERE NOT EXISTS (SELECT 1 FROM trees t WHERE t.id = s.root_tree)",
        )?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Call `f` with every content row (id, chunk list).
    pub fn each_content(
        &self,
        mut f: impl FnMut(ContentId, ChunkList) -> Result<()>,
    ) -> Result<()> {
        let mut st = self.conn.prepare("SELECT id, chunks FROM contents")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            f(ContentId(r.get(0)?), ChunkList::validate(r.get(1)?)?)?;
        }
        Ok(())
    }

    /// Metadata chunks (trees, snapshot records) missing from the chunk index.
    pub fn missing_meta_chunks(&self) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT (SELECT COUNT(*) FROM trees t WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.id = t.hash))
                  + (SELECT COUNT(*) FROM snapshots s WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.id = s.hash))",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Chunks whose recorded place does not fit inside their pack.
    pub fn chunks_outside_packs(&self) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM chunks c JOIN packs p ON p.id = c.pack
             WHERE c.offset + c.stored_len > p.size",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    pub fn chunks_without_pack(&self) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM packs p WHERE p.id = c.pack)",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    pub fn tree_of_hash_exists(&self, hash: &crate::ids::TreeHash) -> Result<bool> {
        Ok(self.tree_by_hash(hash)?.is_some())
    }

    pub fn content_size(&self, id: ContentId) -> Result<Option<u64>> {
        Ok(self
            .conn
            .query_row("SELECT size FROM contents WHERE id = ?1", [id.0], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
            .map(|v| v as u64))
    }
}
