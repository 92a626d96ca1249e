//! The catalog: the only module that speaks SQL.
//!
//! SQLite in WAL mode, so a mount reads while an ingest writes. Writers commit
//! only after every pack the new rows depend on is durable, so a crash never
//! leaves a row that points at missing data. See `schema.sql` for the tables.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};

use crate::codec::{Decoder, Encoder};
use crate::error::{Error, Result};
use crate::ids::{ContentHash, ContentId, Hash, PackId, PackName, SnapshotId, TreeHash, TreeId};
use crate::pack::{ChunkKind, PackEntry};
use crate::tree::{ChunkList, Kind, Meta};

pub const SCHEMA_VERSION: i64 = 1;
const SCHEMA: &str = include_str!("schema.sql");

mod maintenance;
pub use maintenance::{DeadRows, PackUsage};

pub struct Catalog {
    conn: Connection,
}

/// Where a chunk is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkLoc {
    pub pack: PackName,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
}

/// One entries row: a name in a directory, as the mount and restore see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: Vec<u8>,
    pub kind: Kind,
    pub meta: Meta,
    pub link_key: u64,
    /// Encoded extended attributes (`tree::decode_xattrs`).
    pub xattrs: Vec<u8>,
    pub target: Option<Vec<u8>>,
    pub content: Option<ContentId>,
    pub subtree: Option<TreeId>,
    pub node_offset: u64,
}

/// A snapshot as listed.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotRow {
    pub id: SnapshotId,
    /// Id of the snapshot's record in the packs; shown to users as its id.
    pub hash: Hash,
    pub name: String,
    pub started_ns: i64,
    pub finished_ns: i64,
    pub host: String,
    pub sources: Vec<PathBuf>,
    pub tags: Vec<String>,
    pub root_tree: TreeId,
    pub files: u64,
    pub dirs: u64,
    pub size: u64,
    pub added_bytes: u64,
    pub read_bytes: u64,
    pub warnings: u64,
    pub change_share: f64,
    pub alarm: bool,
}

pub fn encode_paths(paths: &[PathBuf]) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut e = Encoder::new();
    e.u64(paths.len() as u64);
    for p in paths {
        e.bytes(p.as_os_str().as_bytes());
    }
    e.buf
}

pub fn decode_paths(b: &[u8]) -> Result<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let mut d = Decoder::new(b);
    let n = d.u64()?;
    (0..n)
        .map(|_| Ok(PathBuf::from(std::ffi::OsStr::from_bytes(d.bytes()?))))
        .collect()
}

pub(crate) fn blob_hash(b: Vec<u8>) -> rusqlite::Result<Hash> {
    Hash::from_slice(&b).ok_or_else(|| {
        rusqlite::Error::InvalidColumnType(0, "hash".into(), rusqlite::types::Type::Blob)
    })
}

const NODE_COLUMNS: &str = "name, kind, mode, uid, gid, size, mtime_ns, ctime_ns, atime_ns, rdev, ino, nlink, blocks, link_key, xattrs, target, content, subtree, node_offset";

fn node_from_row(r: &Row) -> rusqlite::Result<Node> {
    let kind: u8 = r.get(1)?;
    Ok(Node {
        name: r.get(0)?,
        kind: Kind::from_u8(kind)
            .map_err(|_| rusqlite::Error::IntegralValueOutOfRange(1, i64::from(kind)))?,
        meta: Meta {
            mode: r.get(2)?,
            uid: r.get(3)?,
            gid: r.get(4)?,
            size: r.get::<_, i64>(5)? as u64,
            mtime_ns: r.get(6)?,
            ctime_ns: r.get(7)?,
            atime_ns: r.get(8)?,
            rdev: r.get::<_, i64>(9)? as u64,
            ino: r.get::<_, i64>(10)? as u64,
            nlink: r.get::<_, i64>(11)? as u64,
            blocks: r.get::<_, i64>(12)? as u64,
        },
        link_key: r.get::<_, i64>(13)? as u64,
        xattrs: r.get(14)?,
        target: r.get(15)?,
        content: r.get::<_, Option<i64>>(16)?.map(ContentId),
        subtree: r.get::<_, Option<i64>>(17)?.map(TreeId),
        node_offset: r.get::<_, i64>(18)? as u64,
    })
}

const SNAPSHOT_COLUMNS: &str = "id, hash, name, started_ns, finished_ns, host, sources, tags, root_tree, files, dirs, size, added_bytes, read_bytes, warnings, change_share, alarm";

fn snapshot_from_row(r: &Row) -> rusqlite::Result<SnapshotRow> {
    let sources: Vec<u8> = r.get(6)?;
    let tags: String = r.get(7)?;
    Ok(SnapshotRow {
        id: SnapshotId(r.get(0)?),
        hash: blob_hash(r.get(1)?)?,
        name: r.get(2)?,
        started_ns: r.get(3)?,
        finished_ns: r.get(4)?,
        host: r.get(5)?,
        sources: decode_paths(&sources).unwrap_or_default(),
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        root_tree: TreeId(r.get(8)?),
        files: r.get::<_, i64>(9)? as u64,
        dirs: r.get::<_, i64>(10)? as u64,
        size: r.get::<_, i64>(11)? as u64,
        added_bytes: r.get::<_, i64>(12)? as u64,
        read_bytes: r.get::<_, i64>(13)? as u64,
        warnings: r.get::<_, i64>(14)? as u64,
        change_share: r.get(15)?,
        alarm: r.get::<_, i64>(16)? != 0,
    })
}

/// Plan each statement once. Otherwise SQLite re-plans a statement with a
/// range on a bound value (`node_offset >= ?`) at every execution, in case
/// the value changes the best plan: a full parse each time, which was a
/// tenth of a mount's CPU time while copying a tree. Our statements have one
/// sensible plan whatever their values.
fn stable_plans(conn: &Connection) -> Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

impl Catalog {
    /// Open (or with `create`, create) the catalog at `path`.
    /// Open for reading only (the mount), without creating or migrating.
    pub fn open_read(path: &Path) -> Result<Catalog> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(30))?;
        stable_plans(&conn)?;
        conn.pragma_update(None, "cache_size", -512)?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(Catalog { conn })
    }

    pub fn open(path: &Path, create: bool) -> Result<Catalog> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(Duration::from_secs(600))?;
        stable_plans(&conn)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a committed snapshot survives a power cut, not only a crash.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "cache_size", -32_768)?;
        let cat = Catalog { conn };
        let version: i64 = cat
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        match version {
            0 if create => {
                cat.conn.execute_batch(&format!(
                    "BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))?;
            }
            SCHEMA_VERSION => {}
            other => {
                return Err(Error::UnsupportedFormat {
                    path: path.to_path_buf(),
                    found: format!("catalog schema {other}"),
                    supported: SCHEMA_VERSION as u32,
                });
            }
        }
        Ok(cat)
    }

    pub fn begin(&self) -> Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    pub fn commit(&self) -> Result<()> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    /// Fold the write-ahead log back into catalog.db and truncate it, so the
    /// repository's size on disk is what it holds (after a writing command).
    pub fn checkpoint(&self) {
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            log::debug!("catalog checkpoint: {e}");
        }
    }

    pub fn rollback(&self) {
        let _ = self.conn.execute_batch("ROLLBACK");
    }

    pub fn integrity_check(&self) -> Result<String> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

    // ---- packs and chunks ----

    pub fn has_chunk(&self, id: &crate::ids::ChunkId) -> Result<bool> {
        let mut st = self
            .conn
            .prepare_cached("SELECT 1 FROM chunks WHERE id = ?1")?;
        Ok(st.exists([&id.0.0[..]])?)
    }

    /// Record a durable pack and its chunks; chunks already known elsewhere keep
    /// their first location.
    pub fn add_pack(&self, name: &PackName, size: u64, entries: &[PackEntry]) -> Result<PackId> {
        self.conn
            .prepare_cached("INSERT INTO packs (name, size) VALUES (?1, ?2)")?
            .execute(params![&name.0.0[..], size as i64])?;
        let pack = self.conn.last_insert_rowid();
        // The first copy of a chunk stays where it is; but where two packs
        // disagree on its kind, a metadata kind wins over Data. The bytes
        // are the same (both are verified against the id), and a copy peer
        // that sent a snapshot record's bytes again as Data must not make a
        // rebuild, which finds snapshots by kind, lose that snapshot.
        let mut st = self.conn.prepare_cached(
            "INSERT INTO chunks (id, pack, offset, stored_len, raw_len, kind)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET kind = excluded.kind
             WHERE chunks.kind = 0 AND excluded.kind != 0",
        )?;
        for e in entries {
            st.execute(params![
                &e.id.0.0[..],
                pack,
                e.offset as i64,
                e.stored_len,
                e.raw_len,
                e.kind as u8
            ])?;
        }
        Ok(PackId(pack))
    }

    pub fn chunk_loc(&self, id: &crate::ids::ChunkId) -> Result<Option<ChunkLoc>> {
        let mut st = self.conn.prepare_cached(
            "SELECT p.name, c.offset, c.stored_len, c.raw_len
             FROM chunks c JOIN packs p ON p.id = c.pack WHERE c.id = ?1",
        )?;
        Ok(st
            .query_row([&id.0.0[..]], |r| {
                Ok(ChunkLoc {
                    pack: PackName(blob_hash(r.get(0)?)?),
                    offset: r.get::<_, i64>(1)? as u64,
                    stored_len: r.get(2)?,
                    raw_len: r.get(3)?,
                })
            })
            .optional()?)
    }

    pub fn chunk_kind(&self, id: &crate::ids::ChunkId) -> Result<Option<ChunkKind>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT kind FROM chunks WHERE id = ?1")?;
        match st
            .query_row([&id.0.0[..]], |r| r.get::<_, u8>(0))
            .optional()?
        {
            Some(k) => Ok(Some(ChunkKind::from_u8(k)?)),
            None => Ok(None),
        }
    }

    /// Every (kind, chunk id) whose bytes live in the given pack.
    pub fn packs(&self) -> Result<Vec<(PackId, PackName, u64)>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, name, size FROM packs ORDER BY id")?;
        let rows = st.query_map([], |r| {
            Ok((
                PackId(r.get(0)?),
                PackName(blob_hash(r.get(1)?)?),
                r.get::<_, i64>(2)? as u64,
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn stored_bytes(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(SUM(size), 0) FROM packs", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }

    pub fn chunk_kind_count(&self, kind: ChunkKind) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM chunks WHERE kind = ?1",
            [kind as u8],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    // ---- contents ----

    pub fn content_by_hash(&self, hash: &ContentHash) -> Result<Option<ContentId>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id FROM contents WHERE hash = ?1")?;
        Ok(st
            .query_row([&hash.0.0[..]], |r| r.get(0))
            .optional()?
            .map(ContentId))
    }

    pub fn add_content(&self, hash: &ContentHash, list: &ChunkList) -> Result<ContentId> {
        self.conn
            .prepare_cached("INSERT INTO contents (hash, size, chunks) VALUES (?1, ?2, ?3)")?
            .execute(params![&hash.0.0[..], list.total() as i64, &list.0])?;
        Ok(ContentId(self.conn.last_insert_rowid()))
    }

    pub fn content(&self, id: ContentId) -> Result<ChunkList> {
        let mut st = self
            .conn
            .prepare_cached("SELECT chunks FROM contents WHERE id = ?1")?;
        let bytes: Vec<u8> = st
            .query_row([id.0], |r| r.get(0))
            .optional()?
            .ok_or_else(|| Error::corrupt(format!("content {} missing from catalog", id.0)))?;
        ChunkList::validate(bytes)
    }

    // ---- trees and entries ----

    pub fn tree_by_hash(&self, hash: &TreeHash) -> Result<Option<(TreeId, u64)>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT id, nodes FROM trees WHERE hash = ?1")?;
        Ok(st
            .query_row([&hash.0.0[..]], |r| {
                Ok((TreeId(r.get(0)?), r.get::<_, i64>(1)? as u64))
            })
            .optional()?)
    }

    pub fn tree_nodes(&self, id: TreeId) -> Result<u64> {
        let mut st = self
            .conn
            .prepare_cached("SELECT nodes FROM trees WHERE id = ?1")?;
        Ok(st
            .query_row([id.0], |r| r.get::<_, i64>(0))
            .optional()?
            .unwrap_or(0) as u64)
    }

    pub fn tree_hash(&self, id: TreeId) -> Result<TreeHash> {
        let mut st = self
            .conn
            .prepare_cached("SELECT hash FROM trees WHERE id = ?1")?;
        let h = st
            .query_row([id.0], |r| blob_hash(r.get(0)?))
            .optional()?
            .ok_or_else(|| Error::corrupt(format!("tree {} missing from catalog", id.0)))?;
        Ok(TreeHash(h))
    }

    /// Insert a new tree with its entries (given in name order).
    pub fn add_tree(&self, hash: &TreeHash, nodes: u64, entries: &[Node]) -> Result<TreeId> {
        self.conn
            .prepare_cached("INSERT INTO trees (hash, nodes) VALUES (?1, ?2)")?
            .execute(params![&hash.0.0[..], nodes as i64])?;
        let tree = TreeId(self.conn.last_insert_rowid());
        self.add_entries(tree, entries)?;
        Ok(tree)
    }

    /// Insert the entries of a tree row.
    pub fn add_entries(&self, tree: TreeId, entries: &[Node]) -> Result<()> {
        let tree = tree.0;
        let mut st = self.conn.prepare_cached(&format!(
            "INSERT INTO entries (tree, {NODE_COLUMNS}) VALUES
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
        ))?;
        for n in entries {
            let m = &n.meta;
            st.execute(params![
                tree,
                &n.name,
                n.kind as u8,
                m.mode,
                m.uid,
                m.gid,
                m.size as i64,
                m.mtime_ns,
                m.ctime_ns,
                m.atime_ns,
                m.rdev as i64,
                m.ino as i64,
                m.nlink as i64,
                m.blocks as i64,
                n.link_key as i64,
                &n.xattrs,
                &n.target,
                n.content.map(|c| c.0),
                n.subtree.map(|t| t.0),
                n.node_offset as i64,
            ])?;
        }
        Ok(())
    }

    /// Put right the entries of a tree row found to disagree with its hash
    /// (a damaged row): the entries the hash describes replace them.
    pub(crate) fn replace_entries(&self, tree: TreeId, entries: &[Node]) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM entries WHERE tree = ?1")?
            .execute(params![tree.0])?;
        self.add_entries(tree, entries)
    }

    /// A directory listing in name order, starting after `after` (for paged reads).
    pub fn entries_after(
        &self,
        tree: TreeId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Node>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {NODE_COLUMNS} FROM entries WHERE tree = ?1 AND name > ?2 ORDER BY name LIMIT ?3"
        ))?;
        let rows = st.query_map(
            params![tree.0, after.unwrap_or(&[]), limit as i64],
            node_from_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A directory listing in depth-first (= name) order from `node_offset`
    /// onwards: the mount's readdir resumes here by a stable cookie.
    pub fn entries_from(&self, tree: TreeId, min_offset: u64, limit: usize) -> Result<Vec<Node>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {NODE_COLUMNS} FROM entries WHERE tree = ?1 AND node_offset >= ?2
             ORDER BY node_offset LIMIT ?3"
        ))?;
        let rows = st.query_map(
            params![tree.0, min_offset as i64, limit as i64],
            node_from_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The whole listing of a directory (bounded by the directory's size).
    pub fn entries(&self, tree: TreeId) -> Result<Vec<Node>> {
        self.entries_after(tree, None, usize::MAX >> 1)
    }

    pub fn entry(&self, tree: TreeId, name: &[u8]) -> Result<Option<Node>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {NODE_COLUMNS} FROM entries WHERE tree = ?1 AND name = ?2"
        ))?;
        Ok(st
            .query_row(params![tree.0, name], node_from_row)
            .optional()?)
    }

    /// The entry whose depth-first span contains `offset` inside `tree`.
    pub fn entry_at(&self, tree: TreeId, offset: u64) -> Result<Option<Node>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {NODE_COLUMNS} FROM entries WHERE tree = ?1 AND node_offset <= ?2
             ORDER BY node_offset DESC LIMIT 1"
        ))?;
        Ok(st
            .query_row(params![tree.0, offset as i64], node_from_row)
            .optional()?)
    }

    // ---- snapshots ----

    pub fn name_taken(&self, name: &str) -> Result<bool> {
        let mut st = self
            .conn
            .prepare_cached("SELECT 1 FROM snapshots WHERE name = ?1")?;
        Ok(st.exists([name])?)
    }

    /// Record a finished snapshot (the caller commits).
    pub fn add_snapshot(&self, s: &SnapshotRow) -> Result<SnapshotId> {
        self.conn
            .prepare_cached(&format!(
                "INSERT INTO snapshots ({}) VALUES (NULL, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                SNAPSHOT_COLUMNS
            ))?
            .execute(params![
                &s.hash.0[..],
                s.name,
                s.started_ns,
                s.finished_ns,
                s.host,
                encode_paths(&s.sources),
                serde_json::to_string(&s.tags).expect("tags serialize"),
                s.root_tree.0,
                s.files as i64,
                s.dirs as i64,
                s.size as i64,
                s.added_bytes as i64,
                s.read_bytes as i64,
                s.warnings as i64,
                s.change_share,
                s.alarm as i64,
            ])?;
        Ok(SnapshotId(self.conn.last_insert_rowid()))
    }

    /// All snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots ORDER BY started_ns, id"
        ))?;
        let rows = st.query_map([], snapshot_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn snapshot(&self, id: SnapshotId) -> Result<Option<SnapshotRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE id = ?1"
        ))?;
        Ok(st.query_row([id.0], snapshot_from_row).optional()?)
    }

    pub fn snapshot_by_name(&self, name: &str) -> Result<Option<SnapshotRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE name = ?1"
        ))?;
        Ok(st.query_row([name], snapshot_from_row).optional()?)
    }

    /// The newest snapshots of these sources from this host, newest first.
    pub fn recent_snapshots(
        &self,
        host: &str,
        sources: &[PathBuf],
        n: usize,
    ) -> Result<Vec<SnapshotRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE host = ?1 AND sources = ?2
             ORDER BY started_ns DESC, id DESC LIMIT ?3"
        ))?;
        let rows = st.query_map(
            params![host, encode_paths(sources), n as i64],
            snapshot_from_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The newest snapshot of exactly these sources from this host: the base
    /// of an incremental ingest.
    pub fn previous_snapshot(
        &self,
        host: &str,
        sources: &[PathBuf],
    ) -> Result<Option<SnapshotRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE host = ?1 AND sources = ?2
             ORDER BY started_ns DESC, id DESC LIMIT 1"
        ))?;
        Ok(st
            .query_row(params![host, encode_paths(sources)], snapshot_from_row)
            .optional()?)
    }

    pub fn add_hardlink(
        &self,
        snap: SnapshotId,
        key: u64,
        first_node: u64,
        count: u64,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO hardlinks (snapshot, link_key, first_node, count) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![snap.0, key as i64, first_node as i64, count as i64])?;
        Ok(())
    }

    /// (first member's position, names in the snapshot) of a hard link group.
    pub fn hardlink(&self, snap: SnapshotId, key: u64) -> Result<Option<(u64, u64)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT first_node, count FROM hardlinks WHERE snapshot = ?1 AND link_key = ?2",
        )?;
        Ok(st
            .query_row(params![snap.0, key as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ChunkId, Hash};

    /// A copy peer sent a snapshot record's bytes again as a Data chunk, in
    /// a pack listed before the real one: a rebuild then found no record
    /// (it looks snapshots up by kind) and dropped the snapshot silently.
    #[test]
    fn squatted_data_kind_does_not_hide_a_snapshot_record() {
        let d = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(&d.path().join("c.db"), true).expect("open");
        let id = ChunkId(Hash::of(b"record"));
        let entry = |kind| PackEntry {
            id,
            kind,
            offset: 16,
            stored_len: 50,
            raw_len: 10,
        };
        for (n, order) in [
            [ChunkKind::Data, ChunkKind::Snapshot],
            [ChunkKind::Snapshot, ChunkKind::Data],
        ]
        .into_iter()
        .enumerate()
        {
            cat.conn.execute("DELETE FROM chunks", []).expect("clear");
            for (i, kind) in order.into_iter().enumerate() {
                let name = PackName(Hash::of(format!("{n}-{i}").as_bytes()));
                cat.add_pack(&name, 100, &[entry(kind)]).expect("add pack");
            }
            assert_eq!(
                cat.chunk_ids_of_kind(ChunkKind::Snapshot).expect("query"),
                vec![id],
                "order {order:?}"
            );
        }
    }
}
