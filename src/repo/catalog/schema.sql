-- snapfs catalog, schema version 1 (PRAGMA user_version).
-- Later versions migrate forward from this one; nothing is ever dropped and rebuilt.

-- Immutable pack files, by content hash.
CREATE TABLE packs (
    id   INTEGER PRIMARY KEY,
    name BLOB NOT NULL UNIQUE,
    size INTEGER NOT NULL
);

-- The chunk index: where each stored chunk lives.
CREATE TABLE chunks (
    id         BLOB PRIMARY KEY,
    pack       INTEGER NOT NULL,
    offset     INTEGER NOT NULL,
    stored_len INTEGER NOT NULL,
    raw_len    INTEGER NOT NULL,
    kind       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX chunks_by_pack ON chunks (pack);

-- File contents, shared by every entry (in any snapshot) with the same bytes.
-- chunks: 36 bytes per chunk, (id, little-endian raw length).
CREATE TABLE contents (
    id     INTEGER PRIMARY KEY,
    hash   BLOB NOT NULL UNIQUE,
    size   INTEGER NOT NULL,
    chunks BLOB NOT NULL
);

-- Directories, shared by every snapshot in which they are unchanged.
-- nodes: the number of entries beneath, recursively (for inode numbering).
CREATE TABLE trees (
    id    INTEGER PRIMARY KEY,
    hash  BLOB NOT NULL UNIQUE,
    nodes INTEGER NOT NULL
);

-- Lookup of (tree, name) is one seek; a listing is a range scan.
-- node_offset: the entry's depth-first position inside its tree.
CREATE TABLE entries (
    tree        INTEGER NOT NULL,
    name        BLOB NOT NULL,
    kind        INTEGER NOT NULL,
    mode        INTEGER NOT NULL,
    uid         INTEGER NOT NULL,
    gid         INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    ctime_ns    INTEGER NOT NULL,
    atime_ns    INTEGER NOT NULL,
    rdev        INTEGER NOT NULL,
    ino         INTEGER NOT NULL,
    nlink       INTEGER NOT NULL,
    blocks      INTEGER NOT NULL,
    link_key    INTEGER NOT NULL,
    xattrs      BLOB NOT NULL,
    target      BLOB,
    content     INTEGER,
    subtree     INTEGER,
    node_offset INTEGER NOT NULL,
    PRIMARY KEY (tree, name)
) WITHOUT ROWID;
CREATE INDEX entries_by_position ON entries (tree, node_offset);

CREATE TABLE snapshots (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    hash        BLOB NOT NULL UNIQUE,      -- chunk id of the snapshot record in a pack
    name        TEXT NOT NULL UNIQUE,
    started_ns  INTEGER NOT NULL,
    finished_ns INTEGER NOT NULL,
    host        TEXT NOT NULL,
    sources     BLOB NOT NULL,             -- encoded list of absolute paths (bytes)
    tags        TEXT NOT NULL,             -- JSON array
    root_tree   INTEGER NOT NULL,
    files       INTEGER NOT NULL,
    dirs        INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    added_bytes INTEGER NOT NULL,
    read_bytes  INTEGER NOT NULL,
    warnings    INTEGER NOT NULL,
    -- Share of the previous snapshot's entries changed or deleted, and
    -- whether that was far above the usual level (see ingest's change alarm).
    change_share REAL NOT NULL DEFAULT 0,
    alarm        INTEGER NOT NULL DEFAULT 0
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
