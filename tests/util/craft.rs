//! Hostile and damaged repository bytes, for the tests that play an
//! attacker or a failing disk: packs, blobs, trees and snapshot records
//! crafted through the library's own writers (so that only what a test
//! chooses is a lie), and packs damaged in place.

use std::cell::RefCell;
use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use snapfs::format::blob;

/// The plain (unencrypted) id of `data`.
pub(crate) fn hash_chunk(data: &[u8]) -> snapfs::format::keying::Hashed {
    snapfs::format::keying::Keying::plain().hash_chunk(data)
}
use snapfs::format::pack::{ChunkKind, PackWriter};
use snapfs::format::page::{Page, encode_page};
use snapfs::format::record::{SnapshotRow, encode_record};
use snapfs::format::tree::{Body, ChunkList, ChunkRef, ContentRef, Entry, Kind, Meta};
use snapfs::ids::{ChunkId, Hash, TreeHash, TreeId};

use super::*;

// ---------------------------------------------------------------- crafted packs

/// One row of a crafted pack: what the table claims (id, kind, raw
/// length), and the blob stored for it.
pub(crate) type Row = (ChunkId, ChunkKind, u32, Vec<u8>);

/// A sealed pack: its name (the hash of its bytes) and its bytes.
pub(crate) struct CraftedPack {
    pub(crate) name: Hash,
    pub(crate) bytes: Vec<u8>,
}

/// A pack of `rows`, written by the library's own pack writer.
pub(crate) fn craft_pack(rows: &[Row]) -> CraftedPack {
    let dir = tempdir();
    let mut w = PackWriter::create(dir.path(), 3, &snapfs::format::keying::Keying::plain())
        .expect("pack writer");
    for (id, kind, raw_len, blob) in rows {
        w.append(*id, *kind, *raw_len, blob).expect("append");
    }
    let sealed = w.seal().expect("seal");
    let bytes = fs::read(&sealed.path).expect("read sealed pack");
    CraftedPack {
        name: sealed.name.0,
        bytes,
    }
}

thread_local! {
    /// One encoder for every blob a test crafts: a test may craft tens of
    /// thousands (a deep tree chain).
    static ENCODER: RefCell<blob::Encoder> = RefCell::new(blob::Encoder::new(3, &snapfs::format::keying::Keying::plain()).expect("zstd"));
}

/// The honest stored form of `data`: (id, raw length, blob).
pub(crate) fn honest_blob(data: &[u8]) -> (ChunkId, u32, Vec<u8>) {
    let h = hash_chunk(data);
    let blob = ENCODER.with(|e| e.borrow_mut().encode(data, &h).expect("encode"));
    (h.id, data.len() as u32, blob)
}

/// A chunk stored honestly, as a pack row.
pub(crate) fn honest_row(kind: ChunkKind, data: &[u8]) -> Row {
    let (id, len, blob) = honest_blob(data);
    (id, kind, len, blob)
}

/// Puts `bytes` under `repo_path`'s `packs/` as the pack their hash
/// names, with no catalog row: what rebuild-catalog and gc find there.
/// Returns the pack's name.
pub(crate) fn plant_pack(repo_path: &Path, bytes: &[u8]) -> String {
    let hex = Hash::of(bytes).to_hex();
    let dir = repo_path.join("packs").join(&hex[..2]);
    mkdir(&dir);
    write_file(&dir.join(format!("{hex}.pack")), bytes);
    hex
}

// ---------------------------------------------------------------- trees and records

/// A regular file `name` (0644) made of `chunks` (id, length).
pub(crate) fn file_entry(name: &[u8], chunks: &[(ChunkId, u32)]) -> Entry {
    let mut list = ChunkList::default();
    for (id, len) in chunks {
        list.push(ChunkRef { id: *id, len: *len });
    }
    Entry {
        name: name.to_vec(),
        kind: Kind::File,
        meta: Meta {
            mode: 0o100644,
            size: chunks.iter().map(|c| u64::from(c.1)).sum(),
            nlink: 1,
            ..Meta::default()
        },
        link_key: 0,
        xattrs: vec![],
        body: Body::File(ContentRef::of_list(
            &snapfs::format::keying::Keying::plain(),
            &list,
            list.total(),
        )),
    }
}

/// The page of a directory small enough for one page (as snapfs stores
/// one), holding `entries` as given: nothing is checked, so a crafted page
/// can say anything.
pub(crate) fn encode_tree(entries: &[Entry]) -> Vec<u8> {
    encode_page(&Page::Leaf(entries.to_vec()))
}

/// A directory `name` (0755) whose tree is chunk `tree`, claiming `nodes`
/// entries beneath it.
pub(crate) fn dir_entry(name: &[u8], tree: ChunkId, nodes: u64) -> Entry {
    Entry {
        name: name.to_vec(),
        kind: Kind::Dir,
        meta: Meta {
            mode: 0o040755,
            nlink: 2,
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

/// The record of a snapshot `name` of `source` whose root tree is chunk
/// `root`, claiming `nodes` nodes and `counts` (files, dirs, size, bytes
/// read, warnings).
pub(crate) fn snapshot_record(
    name: &str,
    source: &str,
    root: ChunkId,
    nodes: u64,
    counts: &[u64; 5],
) -> Vec<u8> {
    // Only what a record holds is read from the row; the rest is the
    // catalog's.
    let row = SnapshotRow {
        finished_ns: 1_700_000_001_000_000_000,
        host: "crafted".to_string(),
        sources: vec![PathBuf::from(source)],
        ..SnapshotRow::new(name.to_string(), 1_700_000_000_000_000_000, TreeId(0))
    };
    encode_record(&row, &TreeHash(root.0), nodes, counts)
}

// ---------------------------------------------------------------- damage in place

/// Flips one byte of `pack` at `offset` (packs are 0400: made writable
/// for the write and given their mode back after).
pub(crate) fn flip_byte(pack: &Path, offset: u64) {
    let mode = fs::metadata(pack).expect("stat pack").permissions().mode();
    chmod(pack, 0o644);
    {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pack)
            .expect("open pack for writing");
        let mut byte = [0u8; 1];
        f.read_exact_at(&mut byte, offset).expect("read pack byte");
        byte[0] ^= 0x5a;
        f.write_all_at(&byte, offset).expect("write pack byte");
        f.sync_all().expect("fsync pack");
    }
    chmod(pack, mode & 0o7777);
}

/// Truncates a (read-only) pack file to `len` bytes.
pub(crate) fn truncate_pack(pack: &Path, len: u64) {
    let mode = fs::metadata(pack).expect("stat pack").permissions().mode();
    chmod(pack, 0o644);
    fs::OpenOptions::new()
        .write(true)
        .open(pack)
        .and_then(|f| f.set_len(len))
        .unwrap_or_else(|e| panic!("truncate {}: {e}", pack.display()));
    chmod(pack, mode & 0o7777);
}

/// Flips a byte in the middle of the stored blob of the one chunk that
/// `sql_for_chunk` (selecting chunk ids from the catalog) finds.
pub(crate) fn damage_chunk(repo: &Repo, sql_for_chunk: &str, args: &[&[u8]]) {
    let (pack, offset, len) = chunk_place(repo, sql_for_chunk, args);
    flip_byte(&pack, offset + len / 2);
}
