//! The pack file format: immutable files of stored chunks, each describing its
//! own chunks in a trailing table so the chunk index can be rebuilt from packs.
//!
//! ```text
//! header   "SNAPFSPK" | format u8 (1 = plain, 2 = sealed) | level u8 | 6 zero bytes
//! blobs    stored chunks, back to back (see `store` for a blob's layout)
//! table    per chunk: id[32] | kind u8 | offset u64 | stored_len u32 | raw_len u32
//! footer   table_offset u64 | count u32 | blake3(table)[..8] | "SNAPFSTB"
//! ```
//! All integers little-endian. A pack's name is the BLAKE3 of the whole file,
//! so damage anywhere is detectable by re-hashing it. The format byte leaves
//! room for encrypted packs beside plain ones.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::format::blob;
use crate::format::keying::Keying;
use crate::ids::{ChunkId, Hash, PackName};

pub const MAGIC: &[u8; 8] = b"SNAPFSPK";
pub const TABLE_MAGIC: &[u8; 8] = b"SNAPFSTB";
pub const FORMAT_PLAIN: u8 = 1;
/// An encrypted repository's packs: sealed blobs, and the table sealed as
/// one object (`nonce ‖ ciphertext ‖ tag`, see `crypto::aead`).
pub const FORMAT_SEALED: u8 = 2;
/// The associated data of a sealed table, before its row count.
const TABLE_AAD: &[u8] = b"snapfs pack table";
pub const HEADER_LEN: u64 = 16;
pub const FOOTER_LEN: usize = 28;
const TABLE_REC: usize = 49;
/// Most rows a pack table may have. The table is read whole into memory,
/// and its size is only checked against the file's: a sparse file of a
/// terabyte could otherwise claim 2^32 rows and a 210 GB buffer. A pack of
/// the largest `pack_size` (4 GiB) in blobs of 512 bytes stays below it.
pub const MAX_TABLE_ROWS: u32 = 1 << 23;

/// Header byte that records the zstd level the pack's blobs were
/// compressed at, so `gc --recompress` knows which packs it has done
/// (0: not recorded, e.g. blobs copied as they were from other packs).
const LEVEL_AT: usize = 9;
pub const MAX_RECORDED_LEVEL: u8 = 22;

/// The header byte for blobs compressed at zstd `level`: levels outside
/// 1..=22 (the fast negative ones) are not recorded.
pub fn recorded_level(level: i32) -> u8 {
    u8::try_from(level)
        .ok()
        .filter(|l| (1..=MAX_RECORDED_LEVEL).contains(l))
        .unwrap_or(0)
}

/// The format byte of the packs of a repository of this keying.
fn format_of(keying: &Keying) -> u8 {
    if keying.is_sealed() {
        FORMAT_SEALED
    } else {
        FORMAT_PLAIN
    }
}

/// Bytes of a table of `count` rows as stored.
pub(crate) fn table_len(keying: &Keying, count: u64) -> Option<u64> {
    let rows = count.checked_mul(TABLE_REC as u64)?;
    match keying.seal() {
        Some(_) => rows.checked_add(crate::crypto::aead::OVERHEAD as u64),
        None => Some(rows),
    }
}

/// Check a pack's 16-byte header: a pack of this repository's kind (an
/// encrypted repository reads sealed packs only). Returns the recorded
/// level.
pub fn parse_header(header: &[u8], keying: &Keying) -> Result<u8> {
    let ok = header.len() >= HEADER_LEN as usize
        && &header[..8] == MAGIC
        && header[8] == format_of(keying)
        && header[LEVEL_AT] <= MAX_RECORDED_LEVEL
        && header[LEVEL_AT + 1..HEADER_LEN as usize] == [0; 6];
    if !ok {
        return Err(Error::corrupt(
            "pack header is damaged or of an unknown format",
        ));
    }
    Ok(header[LEVEL_AT])
}

/// What a stored chunk holds; metadata kinds let a lost catalog be rebuilt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ChunkKind {
    Data = 0,
    /// A directory page (`page.rs`).
    Page = 1,
    /// A snapshot or forget record (`record.rs`).
    Snapshot = 2,
    /// The chunk list of a file of several chunks (`tree::ChunkList`).
    List = 3,
}

impl ChunkKind {
    pub fn from_u8(v: u8) -> Result<ChunkKind> {
        match v {
            0 => Ok(ChunkKind::Data),
            1 => Ok(ChunkKind::Page),
            2 => Ok(ChunkKind::Snapshot),
            3 => Ok(ChunkKind::List),
            _ => Err(Error::corrupt(format!("unknown chunk kind {v}"))),
        }
    }
}

/// One row of a pack's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub id: ChunkId,
    pub kind: ChunkKind,
    pub offset: u64,
    pub stored_len: u32,
    pub raw_len: u32,
}

/// A pack being written to a local temporary file.
pub struct PackWriter {
    path: PathBuf,
    out: BufWriter<File>,
    hasher: blake3::Hasher,
    len: u64,
    entries: Vec<PackEntry>,
    /// Seals the table in an encrypted repository.
    keying: std::sync::Arc<Keying>,
}

/// A finished, fsynced pack file, ready to be handed to a backend.
pub struct SealedPack {
    pub name: PackName,
    pub path: PathBuf,
    pub size: u64,
    pub entries: Vec<PackEntry>,
}

impl PackWriter {
    /// A pack whose blobs are compressed at the `recorded_level` `level`,
    /// for a repository of this keying.
    pub fn create(
        tmp_dir: &Path,
        level: u8,
        keying: &std::sync::Arc<Keying>,
    ) -> Result<PackWriter> {
        let path = tmp_dir.join(format!("{}.pack.tmp", unique_token()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            // The owner's, and a sharing group's where the repository has
            // one: the umask (see `repo::Access`) takes the group's away
            // otherwise.
            .mode(0o640)
            .open(&path)
            .at(&path)?;
        let mut w = PackWriter {
            path,
            out: BufWriter::with_capacity(1 << 20, file),
            hasher: blake3::Hasher::new(),
            len: 0,
            entries: Vec::new(),
            keying: keying.clone(),
        };
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8] = format_of(keying);
        header[LEVEL_AT] = level.min(MAX_RECORDED_LEVEL);
        w.write(&header)?;
        Ok(w)
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b).at(&self.path)?;
        self.hasher.update(b);
        self.len += b.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn append(
        &mut self,
        id: ChunkId,
        kind: ChunkKind,
        raw_len: u32,
        blob: &[u8],
    ) -> Result<()> {
        let offset = self.len;
        self.write(blob)?;
        self.entries.push(PackEntry {
            id,
            kind,
            offset,
            stored_len: u32::try_from(blob.len()).expect("blobs are far below 4 GiB"),
            raw_len,
        });
        Ok(())
    }

    /// Write the table and footer, fsync, and make the file read-only.
    pub fn seal(self) -> Result<SealedPack> {
        self.seal_unsynced()?.sync()
    }

    /// Write the table and footer; the caller syncs (perhaps on another
    /// thread, so the next pack is being written meanwhile).
    pub fn seal_unsynced(mut self) -> Result<Unsynced> {
        let table_offset = self.len;
        let mut table = Vec::with_capacity(self.entries.len() * TABLE_REC);
        for e in &self.entries {
            table.extend_from_slice(&e.id.0.0);
            table.push(e.kind as u8);
            table.extend_from_slice(&e.offset.to_le_bytes());
            table.extend_from_slice(&e.stored_len.to_le_bytes());
            table.extend_from_slice(&e.raw_len.to_le_bytes());
        }
        let count = self.entries.len() as u32;
        if let Some(seal) = self.keying.seal() {
            let mut sealed = Vec::with_capacity(table.len() + crate::crypto::aead::OVERHEAD);
            crate::crypto::aead::seal_into(&seal.table, &table_aad(count), &table, &mut sealed)?;
            table = sealed;
        }
        let mut footer = Vec::with_capacity(FOOTER_LEN);
        footer.extend_from_slice(&table_offset.to_le_bytes());
        footer.extend_from_slice(&count.to_le_bytes());
        footer.extend_from_slice(&blake3::hash(&table).as_bytes()[..8]);
        footer.extend_from_slice(TABLE_MAGIC);
        self.write(&table)?;
        self.write(&footer)?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| e.into_error())
            .at(&self.path)?;
        Ok(Unsynced {
            file,
            pack: SealedPack {
                name: PackName(Hash(*self.hasher.finalize().as_bytes())),
                path: self.path,
                size: self.len,
                entries: self.entries,
            },
        })
    }

    /// Give up on this pack (its chunks will be written again).
    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A complete pack file not yet made durable.
pub struct Unsynced {
    file: File,
    pack: SealedPack,
}

impl Unsynced {
    /// fsync and make read-only: from here on the pack may be referred to.
    pub fn sync(self) -> Result<SealedPack> {
        let path = &self.pack.path;
        self.file.sync_all().at(path)?;
        // Read-only, for whoever could read it (the umask made it the
        // owner's alone, or the owner's and a sharing group's).
        let mut perms = self.file.metadata().at(path)?.permissions();
        let mode = std::os::unix::fs::PermissionsExt::mode(&perms) & 0o444;
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, mode);
        self.file.set_permissions(perms).at(path)?;
        Ok(self.pack)
    }

    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.pack.path);
    }
}

/// Where a pack's table is and how many rows it has, as read from the footer
/// and checked against the pack's size. Callers pass it on to [`parse_table`]
/// unchanged, so the table's rows can be checked against the blob area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableLoc {
    pub offset: u64,
    pub count: usize,
}

/// Where a pack's table lives, from its last `FOOTER_LEN` bytes: the table's
/// offset, its location (for [`parse_table`]) and its checksum.
///
/// Every figure comes from the file, so all arithmetic is checked: a footer
/// whose sums wrap must not pass for one that fits (a wrapped sum once made a
/// 137-byte pack ask for a 196 GiB table).
pub fn parse_footer(
    footer: &[u8],
    pack_size: u64,
    keying: &Keying,
) -> Result<(u64, TableLoc, [u8; 8])> {
    if footer.len() != FOOTER_LEN || &footer[20..28] != TABLE_MAGIC {
        return Err(Error::corrupt("pack footer is missing or damaged"));
    }
    let table_offset = u64::from_le_bytes(footer[0..8].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(footer[8..12].try_into().expect("4 bytes"));
    if count > MAX_TABLE_ROWS {
        return Err(Error::corrupt(format!(
            "pack table claims {count} rows, more than any pack holds ({MAX_TABLE_ROWS})"
        )));
    }
    let check: [u8; 8] = footer[12..20].try_into().expect("8 bytes");
    let expected_end = table_len(keying, u64::from(count))
        .and_then(|t| t.checked_add(table_offset))
        .and_then(|t| t.checked_add(FOOTER_LEN as u64));
    if table_offset < HEADER_LEN || expected_end != Some(pack_size) {
        return Err(Error::corrupt(format!(
            "pack table ({count} rows at offset {table_offset}) does not fit the pack size {pack_size}"
        )));
    }
    let loc = TableLoc {
        offset: table_offset,
        count: usize::try_from(count).map_err(|_| Error::corrupt("pack table too large"))?,
    };
    Ok((table_offset, loc, check))
}

/// The rows of a pack's table, each checked: a known kind, a blob that lies
/// inside the blob area (between the header and the table), a raw length
/// within [`blob::MAX_CHUNK_LEN`] (data chunks: [`blob::MAX_DATA_CHUNK_LEN`])
/// and a stored length a blob of that raw length can have. Rows are trusted
/// by the catalog afterwards, so nothing a row says may be out of bounds.
pub fn parse_table(
    table: &[u8],
    loc: TableLoc,
    check: [u8; 8],
    keying: &Keying,
) -> Result<Vec<PackEntry>> {
    if Some(table.len() as u64) != table_len(keying, loc.count as u64)
        || blake3::hash(table).as_bytes()[..8] != check
    {
        return Err(Error::corrupt("pack table checksum mismatch"));
    }
    let opened;
    let table = match keying.seal() {
        Some(seal) => {
            let count =
                u32::try_from(loc.count).map_err(|_| Error::corrupt("pack table too large"))?;
            opened = crate::crypto::aead::open(&seal.table, &table_aad(count), table)
                .map_err(|e| Error::corrupt(format!("pack table: {e}")))?;
            &opened[..]
        }
        None => table,
    };
    let sealed = keying.is_sealed();
    table
        .chunks_exact(TABLE_REC)
        .map(|r| {
            let e = PackEntry {
                id: ChunkId(Hash::from_slice(&r[..32]).expect("32 bytes")),
                kind: ChunkKind::from_u8(r[32])?,
                offset: u64::from_le_bytes(r[33..41].try_into().expect("8 bytes")),
                stored_len: u32::from_le_bytes(r[41..45].try_into().expect("4 bytes")),
                raw_len: u32::from_le_bytes(r[45..49].try_into().expect("4 bytes")),
            };
            check_entry(&e, loc.offset, sealed)?;
            Ok(e)
        })
        .collect()
}

/// The associated data of a sealed table of `count` rows.
fn table_aad(count: u32) -> Vec<u8> {
    [TABLE_AAD, &count.to_le_bytes()].concat()
}

fn check_entry(e: &PackEntry, table_offset: u64, sealed: bool) -> Result<()> {
    let bad = |what: String| {
        Err(Error::corrupt(format!(
            "pack table row for chunk {}: {what}",
            e.id
        )))
    };
    let end = e.offset.checked_add(u64::from(e.stored_len));
    if e.offset < HEADER_LEN || end.is_none_or(|end| end > table_offset) {
        return bad(format!(
            "blob at {} (+{}) lies outside the blob area {HEADER_LEN}..{table_offset}",
            e.offset, e.stored_len
        ));
    }
    let raw = e.raw_len as usize;
    let cap = match e.kind {
        ChunkKind::Data => blob::MAX_DATA_CHUNK_LEN,
        ChunkKind::Page | ChunkKind::Snapshot | ChunkKind::List => blob::MAX_CHUNK_LEN,
    };
    if raw > cap {
        return bad(format!("raw length {raw} exceeds the limit {cap}"));
    }
    let stored = e.stored_len as usize;
    let (least, most) = blob::stored_len_bounds(sealed, raw);
    if stored < least || stored > most {
        return bad(format!(
            "stored length {stored} is impossible for raw length {raw}"
        ));
    }
    Ok(())
}

/// Check and parse a whole pack held in memory: header, footer and table.
/// The entry point for fuzzing and for callers that have the pack's bytes.
pub fn decode_pack(bytes: &[u8], keying: &Keying) -> Result<Vec<PackEntry>> {
    let size = bytes.len() as u64;
    if size < HEADER_LEN + FOOTER_LEN as u64 {
        return Err(Error::corrupt("pack is truncated"));
    }
    parse_header(bytes, keying)?;
    let (offset, loc, check) = parse_footer(&bytes[bytes.len() - FOOTER_LEN..], size, keying)?;
    let start = usize::try_from(offset).map_err(|_| Error::corrupt("pack table offset"))?;
    let table = bytes
        .get(start..bytes.len() - FOOTER_LEN)
        .ok_or_else(|| Error::corrupt("pack table lies outside the pack"))?;
    parse_table(table, loc, check, keying)
}

/// A name no other process or thread will pick for a temporary file.
pub fn unique_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let h = blake3::hash(format!("{}-{now}-{n}", std::process::id()).as_bytes());
    h.to_hex()[..24].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sealed pack holding `chunks` as real blobs (data, then trees).
    fn sample_pack(dir: &Path, chunks: &[&[u8]]) -> SealedPack {
        let mut w = PackWriter::create(dir, 3, &crate::format::keying::Keying::plain()).unwrap();
        for (i, c) in chunks.iter().enumerate() {
            let h = blob::Keying::plain().hash_chunk(c);
            let blob = blob::Encoder::new(3, &crate::format::keying::Keying::plain())
                .unwrap()
                .encode(c, &h)
                .unwrap();
            let kind = if i == 0 {
                ChunkKind::Data
            } else {
                ChunkKind::Page
            };
            w.append(h.id, kind, c.len() as u32, &blob).unwrap();
        }
        w.seal().unwrap()
    }

    #[test]
    fn a_sealed_pack_table_opens_only_with_its_key_and_detects_every_flip() {
        let k = Keying::encrypted(&crate::crypto::MasterKey::from_bytes([5; 32]).subkeys());
        let other = Keying::encrypted(&crate::crypto::MasterKey::from_bytes([6; 32]).subkeys());
        let dir = tempfile::tempdir().unwrap();
        let mut w = PackWriter::create(dir.path(), 3, &k).unwrap();
        for c in [&b"first chunk"[..], b"second"] {
            let h = k.hash_chunk(c);
            let blob = blob::Encoder::new(3, &k).unwrap().encode(c, &h).unwrap();
            w.append(h.id, ChunkKind::Data, c.len() as u32, &blob)
                .unwrap();
        }
        let sealed = w.seal().unwrap();
        let bytes = std::fs::read(&sealed.path).unwrap();
        assert_eq!(bytes[8], FORMAT_SEALED);
        assert_eq!(decode_pack(&bytes, &k).unwrap(), sealed.entries);
        assert!(decode_pack(&bytes, &other).is_err(), "another key");
        assert!(
            decode_pack(&bytes, &Keying::plain()).is_err(),
            "a plain repository"
        );
        // No chunk id is readable without the key.
        for e in &sealed.entries {
            assert!(!bytes.windows(32).any(|win| win == e.id.0.0));
        }
        let table_start = sealed
            .entries
            .last()
            .map(|e| (e.offset + u64::from(e.stored_len)) as usize)
            .unwrap();
        for pos in table_start..bytes.len() {
            let mut bad = bytes.clone();
            bad[pos] ^= 0x01;
            assert!(decode_pack(&bad, &k).is_err(), "flip at {pos}");
        }
    }

    #[test]
    fn header_records_the_level_and_refuses_what_it_does_not_know() {
        let dir = tempfile::tempdir().unwrap();
        let w = PackWriter::create(
            dir.path(),
            recorded_level(7),
            &crate::format::keying::Keying::plain(),
        )
        .unwrap();
        let sealed = w.seal().unwrap();
        let bytes = std::fs::read(&sealed.path).unwrap();
        assert_eq!(
            parse_header(&bytes, &crate::format::keying::Keying::plain()).unwrap(),
            7
        );
        assert_eq!(recorded_level(-5), 0);
        assert_eq!(recorded_level(23), 0);
        for (at, value) in [(9, 23u8), (10, 1), (15, 1), (8, 2)] {
            let mut bad = bytes[..16].to_vec();
            bad[at] = value;
            assert!(
                parse_header(&bad, &crate::format::keying::Keying::plain()).is_err(),
                "byte {at} = {value} was accepted"
            );
        }
    }

    #[test]
    fn sealed_pack_table_parses_back() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = sample_pack(dir.path(), &[b"0123456789", b"abc"]);
        let bytes = std::fs::read(&sealed.path).unwrap();
        assert_eq!(Hash::of(&bytes), sealed.name.0);
        let size = bytes.len() as u64;
        let (off, loc, check) = parse_footer(
            &bytes[bytes.len() - FOOTER_LEN..],
            size,
            &crate::format::keying::Keying::plain(),
        )
        .unwrap();
        let table = &bytes[off as usize..bytes.len() - FOOTER_LEN];
        let entries =
            parse_table(table, loc, check, &crate::format::keying::Keying::plain()).unwrap();
        assert_eq!(entries, sealed.entries);
        let e = &entries[1];
        let blob = &bytes[e.offset as usize..][..e.stored_len as usize];
        assert_eq!(
            blob::decode_blob(&blob::Keying::plain(), blob, &e.id, e.raw_len as usize).unwrap(),
            b"abc"
        );
        assert_eq!(
            decode_pack(&bytes, &crate::format::keying::Keying::plain()).unwrap(),
            sealed.entries
        );
        let mut damaged = table.to_vec();
        damaged[0] ^= 1;
        assert!(
            parse_table(
                &damaged,
                loc,
                check,
                &crate::format::keying::Keying::plain()
            )
            .is_err()
        );
    }

    fn sample_bytes() -> &'static [u8] {
        static PACK: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        PACK.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let text = b"all work and no play ".repeat(100);
            let sealed = sample_pack(dir.path(), &[&text, b"", b"abc"]);
            std::fs::read(&sealed.path).unwrap()
        })
    }

    fn footer(table_offset: u64, count: u32, check: [u8; 8]) -> Vec<u8> {
        let mut f = table_offset.to_le_bytes().to_vec();
        f.extend_from_slice(&count.to_le_bytes());
        f.extend_from_slice(&check);
        f.extend_from_slice(TABLE_MAGIC);
        f
    }

    #[test]
    fn a_sparse_terabyte_pack_claiming_billions_of_rows_is_refused() {
        // The footer fits the file's size exactly: only the row cap stops
        // the table from being read into a buffer of 210 GB.
        let k = crate::format::keying::Keying::plain();
        let rows = u32::MAX;
        let size = HEADER_LEN + u64::from(rows) * TABLE_REC as u64 + FOOTER_LEN as u64;
        let err = parse_footer(&footer(HEADER_LEN, rows, [0; 8]), size, &k).unwrap_err();
        assert!(
            err.to_string().contains("more than any pack holds"),
            "{err}"
        );
        let ok = MAX_TABLE_ROWS;
        let size = HEADER_LEN + u64::from(ok) * TABLE_REC as u64 + FOOTER_LEN as u64;
        assert!(parse_footer(&footer(HEADER_LEN, ok, [0; 8]), size, &k).is_ok());
    }

    #[test]
    fn footer_whose_sums_wrap_is_rejected() {
        // The 137-byte pack that once made `serve` ask for 196 GiB: its
        // table offset plus count * 49 + 28 wraps around to 137.
        let size = 137u64;
        let count = u32::MAX;
        let table_offset = size
            .wrapping_sub(FOOTER_LEN as u64)
            .wrapping_sub(u64::from(count) * TABLE_REC as u64);
        let f = footer(table_offset, count, [0; 8]);
        assert!(parse_footer(&f, size, &crate::format::keying::Keying::plain()).is_err());
        let mut pack = vec![0u8; size as usize];
        pack[..8].copy_from_slice(MAGIC);
        pack[8] = FORMAT_PLAIN;
        pack[size as usize - FOOTER_LEN..].copy_from_slice(&f);
        assert!(decode_pack(&pack, &crate::format::keying::Keying::plain()).is_err());
        // Each figure at its extreme.
        for (off, count) in [(u64::MAX, 0), (u64::MAX - 27, 0), (16, u32::MAX), (0, 0)] {
            assert!(
                parse_footer(
                    &footer(off, count, [0; 8]),
                    137,
                    &crate::format::keying::Keying::plain()
                )
                .is_err()
            );
        }
    }

    /// A table of one row, with its checksum, for a pack whose table is at
    /// `table_offset`.
    fn one_row(e: &PackEntry, table_offset: u64) -> Result<Vec<PackEntry>> {
        let mut t = e.id.0.0.to_vec();
        t.push(e.kind as u8);
        t.extend_from_slice(&e.offset.to_le_bytes());
        t.extend_from_slice(&e.stored_len.to_le_bytes());
        t.extend_from_slice(&e.raw_len.to_le_bytes());
        let check = blake3::hash(&t).as_bytes()[..8].try_into().unwrap();
        let loc = TableLoc {
            offset: table_offset,
            count: 1,
        };
        parse_table(&t, loc, check, &crate::format::keying::Keying::plain())
    }

    #[test]
    fn table_rows_must_describe_blobs_inside_the_blob_area() {
        let ok = PackEntry {
            id: ChunkId(Hash::of(b"x")),
            kind: ChunkKind::Data,
            offset: HEADER_LEN,
            stored_len: 39 + 10,
            raw_len: 10,
        };
        assert!(one_row(&ok, HEADER_LEN + 49).is_ok());
        assert!(
            one_row(&ok, HEADER_LEN + 48).is_err(),
            "ends inside the table"
        );
        for bad in [
            PackEntry {
                offset: 0,
                ..ok.clone()
            },
            PackEntry {
                offset: u64::MAX - 10,
                ..ok.clone()
            },
            PackEntry {
                stored_len: u32::MAX,
                ..ok.clone()
            },
            PackEntry {
                stored_len: 38,
                ..ok.clone()
            },
            PackEntry {
                stored_len: 39 + 11,
                ..ok.clone()
            },
            PackEntry {
                raw_len: u32::MAX,
                stored_len: 100,
                ..ok.clone()
            },
            PackEntry {
                raw_len: (blob::MAX_DATA_CHUNK_LEN + 1) as u32,
                ..ok.clone()
            },
        ] {
            assert!(one_row(&bad, u64::MAX).is_err(), "{bad:?}");
        }
        let mut t = vec![0u8; TABLE_REC];
        t[32] = 7;
        let check = blake3::hash(&t).as_bytes()[..8].try_into().unwrap();
        let loc = TableLoc {
            offset: 1 << 40,
            count: 1,
        };
        assert!(
            parse_table(&t, loc, check, &crate::format::keying::Keying::plain()).is_err(),
            "unknown kind"
        );
        let loc = TableLoc {
            offset: 1 << 40,
            count: 2,
        };
        assert!(
            parse_table(&t, loc, check, &crate::format::keying::Keying::plain()).is_err(),
            "count says two rows"
        );
    }

    #[test]
    fn pack_with_a_damaged_header_is_refused() {
        let mut b = sample_bytes().to_vec();
        b[8] = 2;
        assert!(decode_pack(&b, &crate::format::keying::Keying::plain()).is_err());
    }

    fn row() -> impl Strategy<Value = PackEntry> {
        let small = prop_oneof![0..200u64, Just(u64::MAX), any::<u64>()];
        (
            0..4u8,
            small,
            any::<u32>(),
            prop_oneof![0..100u32, any::<u32>()],
        )
            .prop_map(|(k, offset, stored_len, raw_len)| PackEntry {
                id: ChunkId(Hash::of(&[k])),
                kind: ChunkKind::from_u8(k).unwrap_or(ChunkKind::Data),
                offset,
                stored_len,
                raw_len,
            })
    }

    use crate::format::codec::mutate;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(mutate::config())]

        #[test]
        fn decode_pack_never_panics_on_arbitrary_bytes(b in mutate::bytes()) {
            let _ = decode_pack(&b, &crate::format::keying::Keying::plain());
        }

        #[test]
        fn parse_footer_never_panics(f in prop::collection::vec(any::<u8>(), 28), size in any::<u64>()) {
            let mut f = f;
            f[20..].copy_from_slice(TABLE_MAGIC);
            if let Ok((off, loc, _)) = parse_footer(&f, size, &crate::format::keying::Keying::plain()) {
                prop_assert_eq!(off + loc.count as u64 * 49 + 28, size);
            }
        }

        #[test]
        fn damaged_packs_decode_to_rows_inside_the_pack_or_fail(b in mutate::damaged(sample_bytes().to_vec())) {
            if let Ok(rows) = decode_pack(&b, &crate::format::keying::Keying::plain()) {
                for e in rows {
                    prop_assert!(e.offset >= HEADER_LEN);
                    prop_assert!(e.offset + u64::from(e.stored_len) <= b.len() as u64);
                }
            }
        }

        #[test]
        fn accepted_table_rows_lie_below_the_table(e in row(), table_offset in prop_oneof![0..400u64, any::<u64>()]) {
            if one_row(&e, table_offset).is_ok() {
                prop_assert!(e.offset >= HEADER_LEN);
                prop_assert!(e.offset.checked_add(u64::from(e.stored_len)).is_some_and(|end| end <= table_offset));
                prop_assert!(e.raw_len as usize <= blob::MAX_CHUNK_LEN);
            }
        }
    }
}
