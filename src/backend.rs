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

    fn list(&self) -> Result<Vec<PackName>> {
        let mut out = Vec::new();
        let Ok(dirs) = std::fs::read_dir(&self.root) else {
            return Ok(out);
        };
        for d in dirs {
            let d = d.at(&self.root)?;
            if !d.file_type().at(d.path())?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(d.path()).at(d.path())? {
                let f = f.at(d.path())?;
                let n = f.file_name();
                if let Some(hex) = n.to_str().and_then(|s| s.strip_suffix(".pack"))
                    && let Ok(name) = hex.parse()
                {
                    out.push(name);
                }
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
