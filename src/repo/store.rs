//! Repositories kept as named objects somewhere else (a bucket, or a
//! directory behind `snapfs serve` over ssh): the
//! few operations snapfs needs of such a store, and packs kept in one.
//!
//! A store holds what a local repository's directory holds that matters —
//! `config`, the key slots under `keys/`, the packs under `packs/` — under
//! the same names, so the same code (`bucket.rs`) keeps a local state
//! directory in step with any of them. Nothing relies on a conditional
//! write: pack names are the BLAKE3 of their bytes, so a write repeated by
//! a retry, or by two hosts storing the same pack, stores the same object.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::backend::Backend;
use super::s3::{S3Client, S3Location, S3Settings};
use crate::error::{Error, IoContext, Result};
use crate::ids::PackName;

/// The operations a repository needs of a remote store. Names are relative
/// to the repository (`config`, `keys/…`, `packs/…`); the store puts them
/// under its own prefix.
pub trait ObjectStore: Send + Sync {
    /// `name` as the user would recognise it, for messages (control
    /// characters escaped: names a listing gave go to a terminal).
    fn shown(&self, name: &str) -> String;
    /// A file name for this store's local state directory, the same for
    /// every command that reaches the same repository the same way.
    fn state_name(&self) -> String;
    /// Store `body` under `name`, replacing any object of that name.
    fn put(&self, name: &str, body: &[u8]) -> Result<()>;
    /// The whole object `name`, if there is one; refused if it is longer
    /// than `limit`.
    fn get(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>>;
    /// Exactly `len` bytes at `offset` of object `name`.
    fn get_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// The size of object `name`, if there is one.
    fn head(&self, name: &str) -> Result<Option<u64>>;
    /// Every object under `dir/` with its size.
    fn list(&self, dir: &str) -> Result<Vec<(String, u64)>>;
    /// Remove object `name` (no error if it is not there).
    fn delete(&self, name: &str) -> Result<()>;
    /// How many writes are worth having in flight at once.
    fn parallel_puts(&self) -> usize;
    /// How many reads are worth having in flight at once.
    fn parallel_reads(&self) -> usize;
    /// How many seconds the store's clock is ahead of this machine's
    /// (negative: behind), where the store tells its time: the hosts that
    /// share it compare their clocks through it (`store_lease`).
    fn clock_offset(&self) -> Result<Option<i64>>;
}

/// How long a request to a bucket is retried before it fails
/// (`SNAPFS_S3_RETRY_SECONDS`).
const RETRY_FOR: Duration = Duration::from_secs(120);

static ENDPOINTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
static LIMITS: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

/// The endpoints given on the command line (`--s3-endpoint`), which come
/// before `AWS_ENDPOINT_URL`; set once, before any repository is opened.
pub fn set_endpoints(list: Vec<String>) {
    let _ = ENDPOINTS.set(list);
}

/// `--limit-upload` and `--limit-download`, in bytes per second (0: none).
pub fn set_limits(upload: u64, download: u64) {
    let _ = LIMITS.set((upload, download));
}

/// The store `path` names (`s3://…`, `ssh://…`), or None for a local
/// directory.
pub(crate) fn remote(path: &Path) -> Result<Option<Arc<dyn ObjectStore>>> {
    let Some(text) = path.to_str() else {
        return Ok(None);
    };
    if let Some(loc) = S3Location::parse(text) {
        return Ok(Some(Arc::new(s3_client(loc?)?)));
    }
    if let Some(store) = super::ssh::SshStore::parse(text) {
        return Ok(Some(Arc::new(store?)));
    }
    Ok(None)
}

fn s3_client(loc: S3Location) -> Result<S3Client> {
    let env = |k: &str| std::env::var(k).ok();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let given = ENDPOINTS.get().map(Vec::as_slice).unwrap_or(&[]);
    let mut settings = S3Settings::from_env(&env, home.as_deref(), given)?;
    (settings.limit_upload, settings.limit_download) = LIMITS.get().copied().unwrap_or((0, 0));
    let retry_for = std::env::var("SNAPFS_S3_RETRY_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(RETRY_FOR, Duration::from_secs);
    S3Client::new(loc, &settings, retry_for)
}

impl ObjectStore for S3Client {
    fn shown(&self, name: &str) -> String {
        S3Client::shown(self, name)
    }
    fn state_name(&self) -> String {
        let mut ends = self.endpoints().to_vec();
        ends.sort();
        let loc = &self.location;
        let ident =
            blake3::hash(format!("{}\n{}\n{}", ends.join(","), loc.bucket, loc.prefix).as_bytes());
        format!("s3-{}", &ident.to_hex()[..32])
    }
    fn put(&self, name: &str, body: &[u8]) -> Result<()> {
        S3Client::put(self, name, body)
    }
    fn get(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        S3Client::get(self, name, limit)
    }
    fn get_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        S3Client::get_range(self, name, offset, len)
    }
    fn head(&self, name: &str) -> Result<Option<u64>> {
        S3Client::head(self, name)
    }
    fn list(&self, dir: &str) -> Result<Vec<(String, u64)>> {
        S3Client::list(self, dir)
    }
    fn delete(&self, name: &str) -> Result<()> {
        S3Client::delete(self, name)
    }
    /// Four uploads at once: enough to hide a round trip's latency behind
    /// the others, with at most four packs (128 MiB) in memory.
    fn parallel_puts(&self) -> usize {
        4
    }
    /// Sixteen readers: a restore of many small files is one ranged GET
    /// each, and its time is the round trips', not the bytes'.
    fn parallel_reads(&self) -> usize {
        16
    }
    fn clock_offset(&self) -> Result<Option<i64>> {
        S3Client::clock_offset(self)
    }
}

/// Packs as objects `packs/<first two hex digits>/<hex>.pack`, the layout
/// of a local repository's `packs/` directory.
pub struct StorePacks {
    store: Arc<dyn ObjectStore>,
    /// Sizes from the last listing (`Backend::listed_size`).
    listed: std::sync::Mutex<std::collections::HashMap<PackName, u64>>,
}

impl StorePacks {
    pub fn new(store: Arc<dyn ObjectStore>) -> StorePacks {
        StorePacks {
            store,
            listed: Default::default(),
        }
    }

    pub(crate) fn name_of(pack: &PackName) -> String {
        let hex = pack.0.to_hex();
        format!("packs/{}/{hex}.pack", &hex[..2])
    }

    /// The pack an object listed under `packs/` holds, if it is named like
    /// one in its right place.
    pub(crate) fn pack_of(key: &str) -> Option<PackName> {
        let (dir, file) = key.strip_prefix("packs/")?.split_once('/')?;
        let n = file.strip_suffix(".pack")?.parse::<PackName>().ok()?;
        (Self::name_of(&n) == format!("packs/{dir}/{file}")).then_some(n)
    }
}

impl Backend for StorePacks {
    fn put(&self, name: &PackName, local: &Path) -> Result<()> {
        let bytes = std::fs::read(local).at(local)?;
        self.store.put(&Self::name_of(name), &bytes)?;
        // The local copy was only the way there.
        std::fs::remove_file(local).at(local)
    }

    fn read_at(&self, name: &PackName, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.store.get_range(&Self::name_of(name), offset, len)
    }

    fn size(&self, name: &PackName) -> Result<u64> {
        let key = Self::name_of(name);
        self.store.head(&key)?.ok_or_else(|| Error::Io {
            path: self.store.shown(&key).into(),
            source: std::io::ErrorKind::NotFound.into(),
        })
    }

    /// Every object named like a pack in its right place; anything else
    /// under `packs/` is named in a warning and skipped.
    fn list(&self) -> Result<Vec<PackName>> {
        let mut out = Vec::new();
        let mut sizes = std::collections::HashMap::new();
        for (key, size) in self.store.list("packs")? {
            match Self::pack_of(&key) {
                Some(n) => {
                    out.push(n);
                    sizes.insert(n, size);
                }
                None => log::warn!("ignoring {} in the pack prefix", self.store.shown(&key)),
            }
        }
        *self.listed.lock().unwrap_or_else(|e| e.into_inner()) = sizes;
        Ok(out)
    }

    fn listed_size(&self, name: &PackName) -> Option<u64> {
        self.listed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
    }

    fn delete(&self, name: &PackName) -> Result<()> {
        self.store.delete(&Self::name_of(name))
    }

    fn parallel_puts(&self) -> usize {
        self.store.parallel_puts()
    }

    fn parallel_reads(&self) -> usize {
        self.store.parallel_reads()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Hash;

    #[test]
    fn only_packs_in_their_right_place_are_listed() {
        let n = PackName(Hash::of(b"x"));
        let good = StorePacks::name_of(&n);
        assert_eq!(StorePacks::pack_of(&good), Some(n));
        let hex = n.0.to_hex();
        for bad in [
            format!("packs/zz/{hex}.pack"),
            format!("packs/{hex}.pack"),
            format!("packs/{}/{hex}.pack.tmp", &hex[..2]),
            format!("packs/{}/x/{hex}.pack", &hex[..2]),
            "packs/ab/cd.pack".to_string(),
        ] {
            assert_eq!(StorePacks::pack_of(&bad), None, "{bad}");
        }
    }
}
