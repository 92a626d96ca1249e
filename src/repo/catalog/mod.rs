//! The catalog: the only module that speaks SQL.
//!
//! SQLite in WAL mode, so a mount reads while an ingest writes. Writers commit
//! only after every pack the new rows depend on is durable, so a crash never
//! leaves a row that points at missing data. See `schema.sql` for the tables.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};

use crate::error::{CatalogError, CatalogErrorKind, Error, Result};
use crate::format::pack::{ChunkKind, PackEntry};
use crate::format::record::{Owners, RowDamage, SnapshotRow, decode_paths, encode_paths};
use crate::format::tree::{ChunkList, ChunkRef, ContentRef, Kind, Meta};
use crate::ids::{ChunkId, ContentHash, Hash, PackId, PackName, SnapshotId, TreeId};

pub const SCHEMA_VERSION: i64 = 2;

/// How long a writing command waits for another writer's transaction.
const WRITER_BUSY: Duration = Duration::from_secs(600);
const SCHEMA: &str = include_str!("schema.sql");

/// The database library's errors, in the crate's terms (see `CatalogError`).
impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        use rusqlite::ErrorCode as C;
        let kind = match &e {
            rusqlite::Error::SqliteFailure(f, _) => match f.code {
                C::DiskFull => CatalogErrorKind::DiskFull,
                C::DatabaseBusy
                | C::DatabaseLocked
                | C::SystemIoFailure
                | C::OutOfMemory
                | C::CannotOpen
                | C::PermissionDenied => CatalogErrorKind::Transient,
                _ => CatalogErrorKind::Other,
            },
            _ => CatalogErrorKind::Other,
        };
        Error::Catalog(CatalogError {
            kind,
            message: e.to_string(),
            during: String::new(),
        })
    }
}

/// Names the query (and object) a catalog error happened in: every public
/// catalog method runs its body under one, so an error says more than the
/// database's words.
pub(crate) trait During<T> {
    fn during(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> During<T> for Result<T> {
    fn during(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| match e {
            Error::Catalog(mut c) if c.during.is_empty() => {
                c.during = what();
                Error::Catalog(c)
            }
            e => e,
        })
    }
}

mod dirs;
mod maintenance;
pub(crate) use dirs::Folded;
pub use maintenance::PackUsage;

pub struct Catalog {
    conn: Connection,
    pages: dirs::PageCache,
}

/// Where a chunk is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkLoc {
    pub pack: PackName,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
}

impl ChunkLoc {
    /// Where a pack's table row says its chunk is.
    pub fn in_pack(pack: PackName, e: &crate::format::pack::PackEntry) -> ChunkLoc {
        ChunkLoc {
            pack,
            offset: e.offset,
            stored_len: e.stored_len,
            raw_len: e.raw_len,
        }
    }
}

/// One directory entry, as the mount and restore see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: Vec<u8>,
    pub kind: Kind,
    pub meta: Meta,
    pub link_key: u64,
    /// Encoded extended attributes (`tree::decode_xattrs`).
    pub xattrs: Vec<u8>,
    pub target: Option<Vec<u8>>,
    /// A non-empty file's content.
    pub content: Option<ContentRef>,
    /// A directory's root page (None if the catalog lacks it: damage).
    pub subtree: Option<TreeId>,
    /// Depth-first position inside the directory (its first entry is 0).
    pub node_offset: u64,
}

pub(crate) fn blob_hash(b: Vec<u8>) -> rusqlite::Result<Hash> {
    Hash::from_slice(&b).ok_or_else(|| {
        rusqlite::Error::InvalidColumnType(0, "hash".into(), rusqlite::types::Type::Blob)
    })
}

/// A column holding a size, count or offset: a negative value is damage,
/// reported, not read as a number near 2^64.
fn get_u64(r: &Row, i: usize) -> rusqlite::Result<u64> {
    let v: i64 = r.get(i)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(i, v))
}

const SNAPSHOT_COLUMNS: &str = "id, hash, name, started_ns, finished_ns, host, sources, tags, root_tree, files, dirs, size, added_bytes, read_bytes, warnings, change_share, alarm, owners";

fn snapshot_from_row(r: &Row) -> rusqlite::Result<SnapshotRow> {
    // Read as bytes whatever their SQL type, so that a damaged value marks
    // this one row instead of failing every listing of snapshots.
    let mut damage = RowDamage::default();
    let sources = match r.get_ref(6)?.as_bytes() {
        Ok(b) => decode_paths(b).map_err(|e| e.detail()),
        Err(_) => Err("not bytes".to_string()),
    }
    .unwrap_or_else(|e| {
        damage.sources = Some(e);
        Vec::new()
    });
    let tags = match r.get_ref(7)?.as_bytes() {
        Ok(b) => serde_json::from_slice(b).map_err(|e| e.to_string()),
        Err(_) => Err("not text".to_string()),
    }
    .unwrap_or_else(|e| {
        damage.tags = Some(e);
        Vec::new()
    });
    Ok(SnapshotRow {
        id: SnapshotId(r.get(0)?),
        hash: blob_hash(r.get(1)?)?,
        name: r.get(2)?,
        started_ns: r.get(3)?,
        finished_ns: r.get(4)?,
        host: r.get(5)?,
        sources,
        tags,
        root_tree: TreeId(r.get(8)?),
        files: get_u64(r, 9)?,
        dirs: get_u64(r, 10)?,
        size: get_u64(r, 11)?,
        added_bytes: get_u64(r, 12)?,
        read_bytes: get_u64(r, 13)?,
        warnings: get_u64(r, 14)?,
        change_share: r.get(15)?,
        alarm: r.get::<_, i64>(16)? != 0,
        // Names only help a restore map owners: damaged ones are dropped
        // (numeric ids are kept in every entry), with a word in the log.
        owners: match r.get_ref(17)?.as_bytes().map(Owners::from_bytes) {
            Ok(Ok(o)) => o,
            _ => {
                log::warn!(
                    "snapshot row {}: owner names do not decode",
                    r.get::<_, i64>(0)?
                );
                Owners::default()
            }
        },
        damage: (damage != RowDamage::default()).then_some(damage),
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

/// An open write transaction (see [`Catalog::transaction`]). It derefs to
/// the catalog, so the guarded work reads as ordinary catalog calls.
#[must_use = "a transaction that is not committed is rolled back when dropped"]
/// See [`Catalog::read_view`].
pub struct ReadView<'a>(Option<&'a Catalog>);

impl Drop for ReadView<'_> {
    fn drop(&mut self) {
        if let Some(cat) = self.0 {
            // A read transaction has nothing to lose: ended one way or
            // the other, never left open on a connection that is reused.
            if cat.conn.execute_batch("COMMIT").is_err() {
                let _ = cat.conn.execute_batch("ROLLBACK");
            }
        }
    }
}

pub struct Transaction<'a> {
    cat: &'a Catalog,
}

impl Transaction<'_> {
    /// Make the transaction's work durable. If COMMIT fails, the guard is
    /// dropped with the transaction still open, and so rolls it back.
    pub fn commit(self) -> Result<()> {
        self.cat.conn.execute_batch("COMMIT")?;
        Ok(())
    }
}

impl std::ops::Deref for Transaction<'_> {
    type Target = Catalog;
    fn deref(&self) -> &Catalog {
        self.cat
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        // Autocommit means there is nothing to undo: committed, or SQLite
        // already rolled back (it does on some errors, e.g. a full disk).
        if !self.cat.conn.is_autocommit()
            && let Err(e) = self.cat.conn.execute_batch("ROLLBACK")
        {
            log::warn!("catalog rollback: {e}");
        }
    }
}

/// What a catalog file holds, as far as opening it is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Schema {
    /// Our schema, at the version this release reads.
    Current,
    /// Nothing: a new file for `init` or `rebuild-catalog`, and an unusable
    /// catalog for everyone else.
    Empty,
}

/// Read (never write) which schema the catalog at `path` holds. Anything but
/// ours or nothing at all is an error: tables without our version number
/// are not a catalog we wrote, a higher version needs a newer release.
fn check_schema(conn: &Connection, path: &Path) -> Result<Schema> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| open_error(path, e))?;
    let tables: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(|e| open_error(path, e))?;
    match version {
        SCHEMA_VERSION => Ok(Schema::Current),
        0 if tables == 0 => Ok(Schema::Empty),
        0 => Err(Error::DamagedCatalog {
            path: path.to_path_buf(),
            why: "has tables but no catalog schema version".into(),
        }),
        other => Err(Error::UnsupportedFormat {
            path: path.to_path_buf(),
            found: format!("catalog schema {other}"),
            supported: SCHEMA_VERSION as u32,
        }),
    }
}

/// The error for a catalog file that holds no catalog at all, which only a
/// rebuild from the packs can fill.
fn empty_catalog(path: &Path) -> Error {
    let why = match std::fs::metadata(path) {
        Ok(m) if m.len() == 0 => "is empty (0 bytes)".to_string(),
        _ => "holds no catalog tables".to_string(),
    };
    Error::DamagedCatalog {
        path: path.to_path_buf(),
        why,
    }
}

/// A failure to open or first read a catalog: a missing file or one that is
/// not an SQLite database says so and suggests the rebuild.
fn open_error(path: &Path, e: rusqlite::Error) -> Error {
    let code = e.sqlite_error_code();
    let why = if !path.exists() {
        "is missing".to_string()
    } else if code == Some(rusqlite::ErrorCode::NotADatabase) {
        format!("is not an SQLite database ({e})")
    } else {
        return Error::from(e);
    };
    Error::DamagedCatalog {
        path: path.to_path_buf(),
        why,
    }
}

impl Catalog {
    /// Open for reading only (the mount), without creating or migrating.
    /// Checks the schema like [`Catalog::open`], so a mount of an empty or
    /// foreign catalog fails before it mounts instead of failing every access.
    pub fn open_read(path: &Path) -> Result<Catalog> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| open_error(path, e))?;
        conn.busy_timeout(Duration::from_secs(30))?;
        // First, as any statement's first read of the file would fail on
        // a file that is not a database; it only reads.
        if check_schema(&conn, path)? == Schema::Empty {
            return Err(empty_catalog(path));
        }
        conn.pragma_update(None, "query_only", true)?;
        stable_plans(&conn)?;
        conn.pragma_update(None, "cache_size", -512)?;
        Ok(Catalog {
            conn,
            pages: dirs::PageCache::default(),
        })
    }

    /// Open (or with `create`, create) the catalog at `path`. Without
    /// `create`, a file with no catalog in it is an error that suggests
    /// `rebuild-catalog`, and nothing is written to it: the schema is
    /// checked before any setting (WAL mode writes the file's header).
    pub fn open(path: &Path, create: bool) -> Result<Catalog> {
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
        conn.busy_timeout(WRITER_BUSY)?;
        stable_plans(&conn)?;
        let schema = check_schema(&conn, path)?;
        if schema == Schema::Empty && !create {
            return Err(empty_catalog(path));
        }
        if schema == Schema::Empty {
            // Before anything is written: a page row of a few KiB then
            // shares a database page instead of spilling into overflow pages.
            conn.pragma_update(None, "page_size", 16_384)?;
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a committed snapshot survives a power cut, not only a crash.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "cache_size", -32_768)?;
        if schema == Schema::Empty {
            conn.execute_batch(&format!(
                "BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))?;
        }
        Ok(Catalog {
            conn,
            pages: dirs::PageCache::default(),
        })
    }

    /// Begin a write transaction, rolled back when the guard is dropped
    /// unless [`Transaction::commit`] consumed it: an early return or `?`
    /// inside the guarded section can then never leave it open, nor commit
    /// half of it.
    pub fn transaction(&self) -> Result<Transaction<'_>> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(Transaction { cat: self })
    }

    /// Hold one view of the catalog until this connection closes: a read
    /// transaction, begun now. A restore that runs for an hour sees the
    /// snapshot it started with, even if `forget` and `gc` remove it
    /// meanwhile (its lease keeps the packs; this keeps the rows).
    pub fn hold_read_snapshot(&self) -> Result<()> {
        (|| -> Result<()> {
            self.conn.execute_batch("BEGIN DEFERRED")?;
            self.conn
                .query_row("SELECT COUNT(*) FROM snapshots", [], |r| r.get::<_, i64>(0))?;
            Ok(())
        })()
        .during(|| "hold_read_snapshot".to_string())
    }

    /// One read transaction for a run of queries, ended when the guard
    /// drops; nothing when one is open already. Outside a transaction each
    /// query begins and ends its own, with locks on the write-ahead log's
    /// shared memory that cost more than a lookup: a history listing over
    /// hundreds of snapshots spent as long locking as looking up.
    pub fn read_view(&self) -> Result<ReadView<'_>> {
        if !self.conn.is_autocommit() {
            return Ok(ReadView(None));
        }
        self.conn
            .execute_batch("BEGIN DEFERRED")
            .map_err(Error::from)
            .during(|| "read_view".to_string())?;
        Ok(ReadView(Some(self)))
    }

    /// Begin a write transaction by hand.
    ///
    /// Prefer [`Catalog::transaction`], whose guard rolls back on any early
    /// return. Kept for ingest's checkpoints, which commit and begin again
    /// inside its guarded transaction, and for unit tests.
    pub fn begin(&self) -> Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    /// Commit a transaction opened with [`Catalog::begin`] (prefer
    /// [`Catalog::transaction`] and [`Transaction::commit`]).
    pub fn commit(&self) -> Result<()> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    /// Fold the write-ahead log back into catalog.db and truncate it, so the
    /// repository's size on disk is what it holds (after a writing command).
    ///
    /// Without waiting: a reader that holds its view (a long restore, see
    /// [`Catalog::hold_read_snapshot`]) keeps the log until it is done, and
    /// the command that wrote must not wait for it. Whatever can be folded
    /// in now is; the log is truncated by a later command.
    pub fn checkpoint(&self) {
        let _ = self.conn.busy_timeout(Duration::ZERO);
        let done = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            });
        if !matches!(done, Ok(0))
            && let Err(e) = self
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            log::debug!("catalog checkpoint: {e}");
        }
        let _ = self.conn.busy_timeout(WRITER_BUSY);
    }

    pub fn integrity_check(&self) -> Result<String> {
        (|| -> Result<String> {
            Ok(self
                .conn
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
        })()
        .during(|| "integrity_check".to_string())
    }

    // ---- packs and chunks ----

    pub fn has_chunk(&self, id: &crate::ids::ChunkId) -> Result<bool> {
        (|| -> Result<bool> {
            let mut st = self
                .conn
                .prepare_cached("SELECT 1 FROM chunks WHERE id = ?1")?;
            Ok(st.exists([&id.0.0[..]])?)
        })()
        .during(|| format!("has_chunk (chunk {id})"))
    }

    /// Record a durable pack and its chunks; chunks already known elsewhere keep
    /// their first location.
    pub fn add_pack(&self, name: &PackName, size: u64, entries: &[PackEntry]) -> Result<PackId> {
        (|| -> Result<PackId> {
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
        })()
        .during(|| format!("add_pack (pack {name})"))
    }

    pub fn chunk_loc(&self, id: &crate::ids::ChunkId) -> Result<Option<ChunkLoc>> {
        (|| -> Result<Option<ChunkLoc>> {
            let mut st = self.conn.prepare_cached(
                "SELECT p.name, c.offset, c.stored_len, c.raw_len
                 FROM chunks c JOIN packs p ON p.id = c.pack WHERE c.id = ?1",
            )?;
            Ok(st
                .query_row([&id.0.0[..]], |r| {
                    Ok(ChunkLoc {
                        pack: PackName(blob_hash(r.get(0)?)?),
                        offset: get_u64(r, 1)?,
                        stored_len: r.get(2)?,
                        raw_len: r.get(3)?,
                    })
                })
                .optional()?)
        })()
        .during(|| format!("chunk_loc (chunk {id})"))
    }

    pub fn chunk_kind(&self, id: &crate::ids::ChunkId) -> Result<Option<ChunkKind>> {
        (|| -> Result<Option<ChunkKind>> {
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
        })()
        .during(|| format!("chunk_kind (chunk {id})"))
    }

    /// Every (kind, chunk id) whose bytes live in the given pack.
    pub fn packs(&self) -> Result<Vec<(PackId, PackName, u64)>> {
        (|| -> Result<Vec<(PackId, PackName, u64)>> {
            let mut st = self
                .conn
                .prepare_cached("SELECT id, name, size FROM packs ORDER BY id")?;
            let rows = st.query_map([], |r| {
                Ok((
                    PackId(r.get(0)?),
                    PackName(blob_hash(r.get(1)?)?),
                    get_u64(r, 2)?,
                ))
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })()
        .during(|| "packs".to_string())
    }

    pub fn stored_bytes(&self) -> Result<u64> {
        (|| -> Result<u64> {
            Ok(self
                .conn
                .query_row("SELECT COALESCE(SUM(size), 0) FROM packs", [], |r| {
                    r.get::<_, i64>(0)
                })? as u64)
        })()
        .during(|| "stored_bytes".to_string())
    }

    // ---- contents ----

    /// Whether the chunk list `hash` has its row.
    pub fn has_content(&self, hash: &ContentHash) -> Result<bool> {
        (|| -> Result<bool> {
            let mut st = self
                .conn
                .prepare_cached("SELECT 1 FROM contents WHERE hash = ?1")?;
            Ok(st.exists([&hash.0.0[..]])?)
        })()
        .during(|| format!("has_content (content {hash})"))
    }

    /// Record the chunk list of a file of several chunks (once).
    pub fn add_content(&self, hash: &ContentHash, list: &ChunkList) -> Result<()> {
        (|| -> Result<()> {
            self.conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO contents (hash, size, chunks) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![&hash.0.0[..], list.total() as i64, &list.0])?;
            Ok(())
        })()
        .during(|| format!("add_content (content {hash})"))
    }

    /// A file's chunks: its one chunk, or its list's row.
    pub fn content(&self, c: &ContentRef) -> Result<ChunkList> {
        match c {
            ContentRef::Chunk(id, len) => {
                let mut list = ChunkList::default();
                list.push(ChunkRef { id: *id, len: *len });
                Ok(list)
            }
            ContentRef::List(hash) => (|| -> Result<ChunkList> {
                let mut st = self
                    .conn
                    .prepare_cached("SELECT chunks FROM contents WHERE hash = ?1")?;
                let bytes: Vec<u8> = st
                    .query_row([&hash.0.0[..]], |r| r.get(0))
                    .optional()?
                    .ok_or_else(|| {
                        Error::corrupt(format!("chunk list {hash} missing from catalog"))
                    })?;
                ChunkList::validate(bytes)
            })()
            .during(|| format!("content (content {hash})")),
        }
    }

    // ---- snapshots ----

    /// Whether a snapshot with this record is in the catalog.
    pub fn has_snapshot(&self, record: &Hash) -> Result<bool> {
        (|| -> Result<bool> {
            let mut st = self
                .conn
                .prepare_cached("SELECT 1 FROM snapshots WHERE hash = ?1")?;
            Ok(st.exists([&record.0[..]])?)
        })()
        .during(|| format!("has_snapshot ({})", ChunkId(*record)))
    }

    pub fn name_taken(&self, name: &str) -> Result<bool> {
        (|| -> Result<bool> {
            let mut st = self
                .conn
                .prepare_cached("SELECT 1 FROM snapshots WHERE name = ?1")?;
            Ok(st.exists([name])?)
        })()
        .during(|| format!("name_taken (snapshot {name:?})"))
    }

    /// Record a finished snapshot (the caller commits).
    pub fn add_snapshot(&self, s: &SnapshotRow) -> Result<SnapshotId> {
        (|| -> Result<SnapshotId> {
            self.conn
                .prepare_cached(&format!(
                    "INSERT INTO snapshots ({}) VALUES (NULL, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
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
                    s.owners.to_bytes(),
                ])?;
            Ok(SnapshotId(self.conn.last_insert_rowid()))
        })()
        .during(|| "add_snapshot".to_string())
    }

    /// All snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotRow>> {
        (|| -> Result<Vec<SnapshotRow>> {
            let mut st = self.conn.prepare_cached(&format!(
                "SELECT {SNAPSHOT_COLUMNS} FROM snapshots ORDER BY started_ns, id"
            ))?;
            let rows = st.query_map([], snapshot_from_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })()
        .during(|| "snapshots".to_string())
    }

    pub fn snapshot(&self, id: SnapshotId) -> Result<Option<SnapshotRow>> {
        (|| -> Result<Option<SnapshotRow>> {
            let mut st = self.conn.prepare_cached(&format!(
                "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE id = ?1"
            ))?;
            Ok(st.query_row([id.0], snapshot_from_row).optional()?)
        })()
        .during(|| format!("snapshot (snapshot {id:?})"))
    }

    pub fn snapshot_by_name(&self, name: &str) -> Result<Option<SnapshotRow>> {
        (|| -> Result<Option<SnapshotRow>> {
            let mut st = self.conn.prepare_cached(&format!(
                "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE name = ?1"
            ))?;
            Ok(st.query_row([name], snapshot_from_row).optional()?)
        })()
        .during(|| format!("snapshot_by_name (snapshot {name:?})"))
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
        (|| -> Result<Option<(u64, u64)>> {
            let mut st = self.conn.prepare_cached(
                "SELECT first_node, count FROM hardlinks WHERE snapshot = ?1 AND link_key = ?2",
            )?;
            Ok(st
                .query_row(params![snap.0, key as i64], |r| {
                    Ok((get_u64(r, 0)?, get_u64(r, 1)?))
                })
                .optional()?)
        })()
        .during(|| format!("hardlink (snapshot {snap:?})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ChunkId, Hash};

    /// A read view ends with its guard, so a pooled connection never keeps
    /// an old view (nor holds back checkpoints); inside a transaction it
    /// leaves that transaction alone.
    #[test]
    fn read_view_ends_with_its_guard_and_leaves_an_open_transaction_alone() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("c.db");
        drop(Catalog::open(&path, true).expect("create"));
        let cat = Catalog::open_read(&path).expect("open");
        {
            let _view = cat.read_view().expect("view");
            assert!(!cat.conn.is_autocommit());
            let _inner = cat.read_view().expect("inner view");
        }
        assert!(cat.conn.is_autocommit());
        cat.hold_read_snapshot().expect("hold");
        drop(cat.read_view().expect("view inside"));
        assert!(!cat.conn.is_autocommit(), "the held snapshot was ended");
    }

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

    fn pack_name(n: u8) -> PackName {
        PackName(Hash::of(&[n]))
    }

    /// Bare begin/commit/rollback left a transaction open (or half of it
    /// committed by the next commit) whenever an error path forgot the
    /// rollback: the guard undoes everything on any early return.
    #[test]
    fn an_error_inside_a_transaction_leaves_no_rows() {
        let d = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(&d.path().join("c.db"), true).expect("open");
        let failing = |cat: &Catalog| -> Result<()> {
            let tx = cat.transaction()?;
            tx.add_pack(&pack_name(1), 100, &[])?;
            Err(Error::invalid("something failed after the first write"))?;
            tx.commit()
        };
        assert!(failing(&cat).is_err());
        assert!(cat.packs().expect("packs").is_empty(), "rows left behind");
        assert!(cat.conn.is_autocommit(), "transaction left open");

        let tx = cat.transaction().expect("begin");
        tx.add_pack(&pack_name(2), 100, &[]).expect("add pack");
        tx.commit().expect("commit");
        drop(cat.transaction().expect("begin, then dropped"));
        let names: Vec<PackName> = cat
            .packs()
            .expect("packs")
            .into_iter()
            .map(|p| p.1)
            .collect();
        assert_eq!(names, vec![pack_name(2)]);
    }

    /// A 0-byte catalog.db was reported as "catalog schema 0, use a
    /// matching release", and the mount's read-only open accepted it.
    #[test]
    fn an_empty_catalog_file_suggests_a_rebuild_and_stays_empty() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("catalog.db");
        std::fs::write(&path, b"").expect("create empty file");
        for (what, opened) in [
            ("open", Catalog::open(&path, false).map(drop)),
            ("open_read", Catalog::open_read(&path).map(drop)),
        ] {
            let err = opened.expect_err(what).to_string();
            assert!(
                err.contains("rebuild-catalog") && err.contains("empty"),
                "{what}: {err}"
            );
            assert_eq!(
                std::fs::metadata(&path).expect("stat").len(),
                0,
                "{what} wrote to it"
            );
        }
        std::fs::write(&path, b"not a database, but some bytes of text").expect("write");
        let err = Catalog::open_read(&path)
            .err()
            .expect("accepted")
            .to_string();
        assert!(err.contains("rebuild-catalog"), "{err}");
        let cat = Catalog::open(&d.path().join("new.db"), true).expect("create");
        assert!(cat.snapshots().expect("snapshots").is_empty());
    }

    fn snapshot_row(name: &str) -> SnapshotRow {
        SnapshotRow {
            hash: Hash::of(name.as_bytes()),
            finished_ns: 2,
            host: "h".into(),
            sources: vec![PathBuf::from("/data")],
            tags: vec!["daily".into()],
            files: 1,
            dirs: 1,
            size: 1,
            ..SnapshotRow::new(name.into(), 1, TreeId(1))
        }
    }

    /// Undecodable sources or tags read as empty lists, silently: a
    /// damaged row then fell into another retention group.
    #[test]
    fn undecodable_sources_and_tags_mark_the_row() {
        let d = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(&d.path().join("c.db"), true).expect("open");
        for name in ["good", "bad-sources", "bad-tags"] {
            cat.add_snapshot(&snapshot_row(name)).expect("add");
        }
        let mut trailing = encode_paths(&[PathBuf::from("/data")]);
        trailing.push(0);
        cat.conn
            .execute(
                "UPDATE snapshots SET sources = ?1 WHERE name = 'bad-sources'",
                [trailing],
            )
            .expect("damage sources");
        cat.conn
            .execute(
                "UPDATE snapshots SET tags = X'FF' WHERE name = 'bad-tags'",
                [],
            )
            .expect("damage tags");
        let rows = cat.snapshots().expect("one damaged row fails no listing");
        let by_name = |n: &str| rows.iter().find(|r| r.name == n).expect("listed");
        assert!(by_name("good").decoded().is_ok());
        let bad = by_name("bad-sources");
        let damage = bad.damage.as_ref().expect("marked");
        assert!(
            damage.sources.is_some() && damage.tags.is_none(),
            "{damage:?}"
        );
        assert_eq!(bad.tags, vec!["daily".to_string()]);
        let err = bad.decoded().expect_err("accepted").to_string();
        assert!(
            err.contains("bad-sources") && err.contains("sources"),
            "{err}"
        );
        let bad = by_name("bad-tags");
        let damage = bad.damage.as_ref().expect("marked");
        assert!(
            damage.tags.is_some() && damage.sources.is_none(),
            "{damage:?}"
        );
        let err = bad.decoded().expect_err("accepted").to_string();
        assert!(err.contains("bad-tags") && err.contains("tags"), "{err}");
    }

    #[test]
    fn decode_paths_refuses_short_and_trailing_bytes() {
        let good = encode_paths(&[PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(decode_paths(&good).expect("decodes").len(), 2);
        let mut long = good.clone();
        long.push(7);
        assert!(decode_paths(&long).is_err());
        assert!(decode_paths(&good[..good.len() - 1]).is_err());
        assert!(decode_paths(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    /// A missing tree counted as holding nothing, shifting every inode
    /// number after it.
    #[test]
    fn a_missing_tree_has_no_node_count() {
        let d = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(&d.path().join("c.db"), true).expect("open");
        assert!(cat.tree_nodes(TreeId(42)).is_err());
    }

    /// A catalog error gave only the database's words ("no such table"),
    /// not which query failed on which object.
    #[test]
    fn a_catalog_error_names_the_query_and_the_object() {
        let d = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(&d.path().join("c.db"), true).expect("open");
        cat.conn.execute("DROP TABLE chunks", []).expect("drop");
        let id = ChunkId(Hash::of(b"x"));
        let e = cat.chunk_loc(&id).expect_err("no chunks table");
        let said = e.to_string();
        assert!(
            said.contains("chunk_loc") && said.contains(&id.to_string()),
            "{said}"
        );
        cat.conn.execute("DROP TABLE pages", []).expect("drop");
        let e = cat
            .entry(TreeId(7), b"name")
            .map(drop)
            .expect_err("no pages");
        assert!(e.to_string().contains("(page TreeId(7))"), "{e}");
    }
}
