//! Where packs live, behind a narrow interface: put a sealed pack, read a byte
//! range, list, delete. The local directory is the first implementation; an
//! object store is meant to be another, without touching callers.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, IoContext, Result};
use crate::ids::PackName;

pub trait Backend: Send + Sync {
    /// Store a sealed, fsynced local pack file under `name`; durable on return.
    fn put(&self, name: &PackName, local: &Path) -> Result<()>;
    /// Read `len` bytes at `offset` of a pack.
    fn read_at(&self, name: &PackName, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// A pack's size in bytes.
    fn size(&self, name: &PackName) -> Result<u64>;
    /// Every stored pack.
    fn list(&self) -> Result<Vec<PackName>>;
    fn delete(&self, name: &PackName) -> Result<()>;
    /// How many packs may be stored at once: one where storing is a local
    /// rename, more where each waits on a network round trip.
    fn parallel_puts(&self) -> usize {
        1
    }
    /// How many reads are worth having in flight at once: as many as there
    /// are cores for a local disk, more where each waits on the network.
    fn parallel_reads(&self) -> usize {
        1
    }
    /// Bytes read from `offset..offset + len` failed their check: drop any
    /// copy kept of them. True if there was one, so that reading again may
    /// give other bytes (see `disk_cache`).
    fn forget(&self, _name: &PackName, _offset: u64, _len: usize) -> bool {
        false
    }
    /// The size the last listing gave for `name`, where a listing carries
    /// sizes and asking again would cost a round trip. Packs never change
    /// under their name, so it stays true while the pack is there; whether
    /// it is still there is for `size` to say.
    fn listed_size(&self, _name: &PackName) -> Option<u64> {
        None
    }
}

/// Packs as files `packs/<first two hex digits>/<hex>.pack`.
pub struct LocalDir {
    root: PathBuf,
    /// Open packs, so a read is one `pread` and not an `open` too.
    open: Mutex<HashMap<PackName, Arc<File>>>,
}

const MAX_OPEN: usize = 256;

impl LocalDir {
    pub fn new(root: PathBuf) -> LocalDir {
        LocalDir {
            root,
            open: Mutex::new(HashMap::new()),
        }
    }

    pub fn path_of(&self, name: &PackName) -> PathBuf {
        let hex = name.0.to_hex();
        self.root.join(&hex[..2]).join(format!("{hex}.pack"))
    }

    fn file(&self, name: &PackName) -> Result<Arc<File>> {
        let mut open = self.open.lock().expect("pack handle cache lock");
        if let Some(f) = open.get(name) {
            return Ok(f.clone());
        }
        let path = self.path_of(name);
        let f = Arc::new(File::open(&path).at(&path)?);
        if open.len() >= MAX_OPEN {
            open.clear();
        }
        open.insert(*name, f.clone());
        Ok(f)
    }
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).at(dir)?.sync_all().at(dir)
}

impl Backend for LocalDir {
    fn put(&self, name: &PackName, local: &Path) -> Result<()> {
        let dest = self.path_of(name);
        let dir = dest.parent().expect("pack path has a parent");
        if !dir.exists() {
            std::fs::create_dir_all(dir).at(dir)?;
            fsync_dir(&self.root)?;
        }
        std::fs::rename(local, &dest).at(&dest)?;
        fsync_dir(dir)
    }

    fn read_at(&self, name: &PackName, offset: u64, len: usize) -> Result<Vec<u8>> {
        let f = self.file(name)?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::corrupt(format!("pack {name} is shorter than the catalog says"))
            } else {
                Error::Io {
                    path: self.path_of(name),
                    source: e,
                }
            }
        })?;
        Ok(buf)
    }

    fn size(&self, name: &PackName) -> Result<u64> {
        let p = self.path_of(name);
        Ok(std::fs::metadata(&p).at(&p)?.len())
    }

    /// Every `packs/<xx>/<hex>.pack` regular file whose directory matches its
    /// name. Anything else under `packs/` (a stray or foreign file, a name
    /// that is not an id, an entry that cannot be read) is reported with a
    /// warning naming it and skipped: one bad name must not stop every
    /// command that lists packs.
    fn list(&self) -> Result<Vec<PackName>> {
        let mut out = Vec::new();
        let Ok(dirs) = std::fs::read_dir(&self.root) else {
            return Ok(out);
        };
        let skip = |path: &Path, why: &str| {
            log::warn!("ignoring {} in the pack directory: {why}", path.display());
        };
        for d in dirs {
            let d = match d {
                Ok(d) => d,
                Err(e) => {
                    skip(&self.root, &format!("an entry cannot be read: {e}"));
                    continue;
                }
            };
            let dir = d.path();
            match d.file_type() {
                Ok(t) if t.is_dir() => {}
                Ok(_) => {
                    skip(&dir, "not a pack subdirectory");
                    continue;
                }
                Err(e) => {
                    skip(&dir, &e.to_string());
                    continue;
                }
            }
            let files = match std::fs::read_dir(&dir) {
                Ok(f) => f,
                Err(e) => {
                    skip(&dir, &format!("cannot be listed: {e}"));
                    continue;
                }
            };
            let prefix = d.file_name();
            for f in files {
                let f = match f {
                    Ok(f) => f,
                    Err(e) => {
                        skip(&dir, &format!("an entry cannot be read: {e}"));
                        continue;
                    }
                };
                let path = f.path();
                let n = f.file_name();
                let Some(name) = n
                    .to_str()
                    .and_then(|s| s.strip_suffix(".pack"))
                    .and_then(|hex| hex.parse::<PackName>().ok())
                else {
                    skip(&path, "not named <id>.pack");
                    continue;
                };
                if self.path_of(&name).parent().and_then(|p| p.file_name()) != Some(&prefix) {
                    skip(&path, "in the wrong subdirectory for its name");
                    continue;
                }
                if !f.file_type().is_ok_and(|t| t.is_file()) {
                    skip(&path, "not a regular file");
                    continue;
                }
                out.push(name);
            }
        }
        Ok(out)
    }

    fn delete(&self, name: &PackName) -> Result<()> {
        self.open
            .lock()
            .expect("pack handle cache lock")
            .remove(name);
        let p = self.path_of(name);
        std::fs::remove_file(&p).at(&p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Hash;

    #[test]
    fn foreign_and_non_ascii_files_in_packs_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("packs");
        let b = LocalDir::new(root.clone());
        let good = PackName(Hash::of(b"good"));
        let p = b.path_of(&good);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"x").unwrap();
        let sub = p.parent().unwrap();
        // 64 bytes before ".pack", with a two-byte character across a pair.
        let odd = format!("{}é{}.pack", "a".repeat(31), "b".repeat(31));
        std::fs::write(sub.join(odd), b"x").unwrap();
        use std::os::unix::ffi::OsStrExt;
        let not_utf8 = std::ffi::OsStr::from_bytes(b"\xff\xfe.pack");
        std::fs::write(sub.join(not_utf8), b"x").unwrap();
        std::fs::write(sub.join("notes.txt"), b"x").unwrap();
        std::fs::create_dir(sub.join(format!("{}.pack", Hash::of(b"dir").to_hex()))).unwrap();
        let wrong = PackName(Hash::of(b"elsewhere"));
        std::fs::create_dir_all(root.join("zz")).unwrap();
        std::fs::write(root.join("zz").join(format!("{wrong}.pack")), b"x").unwrap();
        std::fs::write(root.join("stray"), b"x").unwrap();
        assert_eq!(b.list().unwrap(), vec![good]);
    }
}
