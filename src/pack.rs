//! The pack file format: immutable files of stored chunks, each describing its
//! own chunks in a trailing table so the chunk index can be rebuilt from packs.
//!
//! ```text
//! header   "SNAPFSPK" | format u8 (1 = plain) | 7 zero bytes
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
use crate::ids::{ChunkId, Hash, PackName};

pub const MAGIC: &[u8; 8] = b"SNAPFSPK";
pub const TABLE_MAGIC: &[u8; 8] = b"SNAPFSTB";
pub const FORMAT_PLAIN: u8 = 1;
pub const HEADER_LEN: u64 = 16;
pub const FOOTER_LEN: usize = 28;
const TABLE_REC: usize = 49;

/// What a stored chunk holds; metadata kinds let a lost catalog be rebuilt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ChunkKind {
    Data = 0,
    Tree = 1,
    Snapshot = 2,
}

impl ChunkKind {
    pub fn from_u8(v: u8) -> Result<ChunkKind> {
        match v {
            0 => Ok(ChunkKind::Data),
            1 => Ok(ChunkKind::Tree),
            2 => Ok(ChunkKind::Snapshot),
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
}

/// A finished, fsynced pack file, ready to be handed to a backend.
pub struct SealedPack {
    pub name: PackName,
    pub path: PathBuf,
    pub size: u64,
    pub entries: Vec<PackEntry>,
}

impl PackWriter {
    pub fn create(tmp_dir: &Path) -> Result<PackWriter> {
        let path = tmp_dir.join(format!("{}.pack.tmp", unique_token()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .at(&path)?;
        let mut w = PackWriter {
            path,
            out: BufWriter::with_capacity(1 << 20, file),
            hasher: blake3::Hasher::new(),
            len: 0,
            entries: Vec::new(),
        };
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8] = FORMAT_PLAIN;
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
        let mut footer = Vec::with_capacity(FOOTER_LEN);
        footer.extend_from_slice(&table_offset.to_le_bytes());
        footer.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
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

/// Where a pack's table lives, from its last `FOOTER_LEN` bytes.
pub fn parse_footer(footer: &[u8], pack_size: u64) -> Result<(u64, usize, [u8; 8])> {
    if footer.len() != FOOTER_LEN || &footer[20..28] != TABLE_MAGIC {
        return Err(Error::corrupt("pack footer is missing or damaged"));
    }
    let table_offset = u64::from_le_bytes(footer[0..8].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(footer[8..12].try_into().expect("4 bytes")) as usize;
    let check: [u8; 8] = footer[12..20].try_into().expect("8 bytes");
    let expected_end = table_offset + (count * TABLE_REC) as u64 + FOOTER_LEN as u64;
    if table_offset < HEADER_LEN || expected_end != pack_size {
        return Err(Error::corrupt("pack table does not fit the pack size"));
    }
    Ok((table_offset, count, check))
}

pub fn parse_table(table: &[u8], count: usize, check: [u8; 8]) -> Result<Vec<PackEntry>> {
    if table.len() != count * TABLE_REC || blake3::hash(table).as_bytes()[..8] != check {
        return Err(Error::corrupt("pack table checksum mismatch"));
    }
    table
        .chunks_exact(TABLE_REC)
        .map(|r| {
            Ok(PackEntry {
                id: ChunkId(Hash::from_slice(&r[..32]).expect("32 bytes")),
                kind: ChunkKind::from_u8(r[32])?,
                offset: u64::from_le_bytes(r[33..41].try_into().expect("8 bytes")),
                stored_len: u32::from_le_bytes(r[41..45].try_into().expect("4 bytes")),
                raw_len: u32::from_le_bytes(r[45..49].try_into().expect("4 bytes")),
            })
        })
        .collect()
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

    #[test]
    fn sealed_pack_table_parses_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PackWriter::create(dir.path()).unwrap();
        w.append(ChunkId(Hash::of(b"1")), ChunkKind::Data, 10, b"0123456789")
            .unwrap();
        w.append(ChunkId(Hash::of(b"2")), ChunkKind::Tree, 3, b"abc")
            .unwrap();
        let sealed = w.seal().unwrap();
        let bytes = std::fs::read(&sealed.path).unwrap();
        assert_eq!(Hash::of(&bytes), sealed.name.0);
        let size = bytes.len() as u64;
        let (off, count, check) = parse_footer(&bytes[bytes.len() - FOOTER_LEN..], size).unwrap();
        let table = &bytes[off as usize..bytes.len() - FOOTER_LEN];
        let entries = parse_table(table, count, check).unwrap();
        assert_eq!(entries, sealed.entries);
        assert_eq!(&bytes[entries[1].offset as usize..][..3], b"abc");
        let mut damaged = table.to_vec();
        damaged[0] ^= 1;
        assert!(parse_table(&damaged, count, check).is_err());
    }
}
