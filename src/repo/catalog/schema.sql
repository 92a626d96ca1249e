-- snapfs catalog, schema version 2 (PRAGMA user_version), for repository
-- format 2. Created with 16 KiB database pages, so that a directory page's
-- row (a few KiB) shares a database page with others instead of spilling.

-- Immutable pack files, by content hash.
CREATE TABLE packs (
    id   INTEGER PRIMARY KEY,
    name BLOB NOT NULL UNIQUE,
    size INTEGER NOT NULL
);

-- The chunk index: where each stored chunk lives. Keyed by id alone (no
-- index by pack: gc and verify scan it), so a file of one chunk costs the
-- catalog one row here and its entry in a page.
CREATE TABLE chunks (
    id         BLOB PRIMARY KEY,
    pack       INTEGER NOT NULL,
    offset     INTEGER NOT NULL,
    stored_len INTEGER NOT NULL,
    raw_len    INTEGER NOT NULL,
    kind       INTEGER NOT NULL
) WITHOUT ROWID;

-- Chunk lists of files of several chunks (a file of one chunk refers to its
-- chunk directly), shared by every entry with the same bytes.
-- hash: the chunk id of the list stored in a pack (kind List).
-- chunks: 36 bytes per chunk, (id, little-endian raw length).
CREATE TABLE contents (
    id     INTEGER PRIMARY KEY,
    hash   BLOB NOT NULL UNIQUE,
    size   INTEGER NOT NULL,
    chunks BLOB NOT NULL
);

-- Directory pages (format/page.rs), each stored once and shared by every
-- directory version that holds it. A directory is its root page: snapshot
-- roots and directory entries refer to one by hash (inside page bodies).
-- entries, nodes: the names and depth-first nodes beneath the page.
-- body: the page's bytes, as in its pack.
CREATE TABLE pages (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    hash    BLOB NOT NULL UNIQUE,
    level   INTEGER NOT NULL,
    entries INTEGER NOT NULL,
    nodes   INTEGER NOT NULL,
    body    BLOB NOT NULL
);

CREATE TABLE snapshots (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    hash        BLOB NOT NULL UNIQUE,      -- chunk id of the snapshot record in a pack
    name        TEXT NOT NULL UNIQUE,
    started_ns  INTEGER NOT NULL,
    finished_ns INTEGER NOT NULL,
    host        TEXT NOT NULL,
    sources     BLOB NOT NULL,             -- encoded list of absolute paths (bytes)
    tags        TEXT NOT NULL,             -- JSON array
    root_tree   INTEGER NOT NULL,          -- root page of the snapshot's top directory
    files       INTEGER NOT NULL,
    dirs        INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    added_bytes INTEGER NOT NULL,
    read_bytes  INTEGER NOT NULL,
    warnings    INTEGER NOT NULL,
    -- Share of the previous snapshot's entries changed or deleted, and
    -- whether that was far above the usual level (see ingest's change alarm).
    change_share REAL NOT NULL DEFAULT 0,
    alarm        INTEGER NOT NULL DEFAULT 0,
    -- User and group names by id (format/record.rs `Owners`).
    owners       BLOB NOT NULL DEFAULT x'0000'
);

-- Hard link groups of a snapshot: the first member's depth-first position
-- (its inode in the mount) and how many names the snapshot has for it.
CREATE TABLE hardlinks (
    snapshot   INTEGER NOT NULL,
    link_key   INTEGER NOT NULL,
    first_node INTEGER NOT NULL,
    count      INTEGER NOT NULL,
    PRIMARY KEY (snapshot, link_key)
) WITHOUT ROWID;

-- Packs that gc took out of use. Their files stay until no mount that
-- started before `doomed_ns` is running, so an open file never loses bytes.
CREATE TABLE doomed_packs (
    name      BLOB PRIMARY KEY,
    doomed_ns INTEGER NOT NULL
) WITHOUT ROWID;

-- Records of forgotten snapshots (chunk ids), kept so that a catalog
-- rebuilt from packs does not bring those snapshots back.
CREATE TABLE tombstones (
    chunk BLOB PRIMARY KEY
) WITHOUT ROWID;
