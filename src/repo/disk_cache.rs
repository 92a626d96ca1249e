//! A bounded cache on local disk of pack bytes fetched from a remote store,
//! for the mount (`snapfs mount --disk-cache-size`): what was read once is
//! read again from disk, even with the store out of reach.
//!
//! Pack bytes are cached in aligned blocks (`block` bytes of one pack, the
//! last block of a pack shorter), one file each, under the repository's
//! private state directory: `read-cache/<pack>.<block size log2>.<index>`.
//! A read gets its blocks from the cache, and the ones missing with one
//! ranged read of the store; blocks are stored as they come.
//!
//! - Bounded: least recently used blocks are removed to keep the total
//!   within the size. The index in memory is bounded too: blocks grow with
//!   the size so that there are never more than `MAX_BLOCKS` of them.
//! - Private: the directory is 0700 and files 0600 whatever the umask;
//!   everything is opened relative to the directory's descriptor and
//!   never through a symlink.
//! - Crash-safe: a block is written under a temporary name and renamed
//!   into place; a block is used only if its length is exactly what its
//!   place in the pack says. Temporary names left by a crash go at start.
//! - Not trusted: bytes from the cache are decoded and verified by their
//!   readers like bytes from the store. A reader that finds them damaged
//!   calls [`Backend::forget`], which drops the blocks, and reads again:
//!   the store's bytes, not the cache's, decide whether there is damage.
//! - One mount uses a directory at a time (a lock file); another mount of
//!   the same repository meanwhile goes without the cache.

use std::collections::HashMap;
use std::fs::File;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lru::LruCache;
use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};

use super::backend::Backend;
use crate::error::{Error, IoContext, Result};
use crate::ids::PackName;

/// The smallest block: a read of a frame or a few small files' chunks
/// brings its neighbours along.
const MIN_BLOCK_LOG2: u32 = 20;
/// The most blocks, so that the index stays a few MiB whatever the size.
const MAX_BLOCKS: u64 = 1 << 16;
/// The name of the directory under the repository's state directory.
pub const DIR: &str = "read-cache";

type BlockKey = (PackName, u64);

struct Index {
    /// Block → its length, least recently used first out.
    lru: LruCache<BlockKey, u64>,
    bytes: u64,
    /// Pack sizes learnt (to know the length of a pack's last block).
    sizes: LruCache<PackName, u64>,
}

pub struct DiskCache {
    inner: Arc<dyn Backend>,
    dir: OwnedFd,
    shown: PathBuf,
    capacity: u64,
    block_log2: u32,
    index: Mutex<Index>,
    /// Held for the cache's life: the lock on the directory.
    _lock: OwnedFd,
}

/// The block size for a cache of `capacity` bytes (log2).
fn block_log2(capacity: u64) -> u32 {
    let per = capacity.div_ceil(MAX_BLOCKS).max(1);
    per.next_power_of_two().trailing_zeros().max(MIN_BLOCK_LOG2)
}

impl DiskCache {
    /// A cache of at most `capacity` bytes in `state/read-cache`, in front
    /// of `inner`; None (with a warning) if another process uses it.
    pub fn open(inner: Arc<dyn Backend>, state: &Path, capacity: u64) -> Result<Option<DiskCache>> {
        let shown = state.join(DIR);
        let state_fd = rustix::fs::open(
            state,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(std::io::Error::from)
        .at(state)?;
        match rustix::fs::mkdirat(&state_fd, DIR, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(std::io::Error::from(e)).at(&shown),
        }
        let dir = rustix::fs::openat(
            &state_fd,
            DIR,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => Error::invalid(format!(
                "{} is not a directory of snapfs's own (a symlink?)",
                shown.display()
            )),
            e => Error::Io {
                path: shown.clone(),
                source: e.into(),
            },
        })?;
        rustix::fs::fchmod(&dir, Mode::from_raw_mode(0o700))
            .map_err(std::io::Error::from)
            .at(&shown)?;
        let lock = private_file(&dir, "lock", OFlags::RDWR | OFlags::CREATE)
            .map_err(std::io::Error::from)
            .at(&shown)?;
        if rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            log::warn!(
                "{} is in use by another mount of this repository: this one reads without it",
                shown.display()
            );
            return Ok(None);
        }
        let cache = DiskCache {
            inner,
            dir,
            shown,
            capacity,
            block_log2: block_log2(capacity),
            index: Mutex::new(Index {
                lru: LruCache::unbounded(),
                bytes: 0,
                sizes: LruCache::new(NonZeroUsize::new(4096).expect("non-zero")),
            }),
            _lock: lock,
        };
        cache.load()?;
        Ok(Some(cache))
    }

    fn block(&self) -> u64 {
        1 << self.block_log2
    }

    fn name_of(&self, (pack, b): &BlockKey) -> String {
        format!("{}.{}.{b}", pack.0.to_hex(), self.block_log2)
    }

    /// The block a file name stands for, if it is one of this size.
    fn key_of(&self, name: &[u8]) -> Option<BlockKey> {
        let name = std::str::from_utf8(name).ok()?;
        let mut parts = name.split('.');
        let pack = parts.next()?.parse::<PackName>().ok()?;
        let log2 = parts.next()?.parse::<u32>().ok()?;
        let b = parts.next()?.parse::<u64>().ok()?;
        (parts.next().is_none() && log2 == self.block_log2).then_some((pack, b))
    }

    /// Index the blocks already on disk, oldest first; remove anything else
    /// (temporary names left by a crash, blocks of another size, strays).
    fn load(&self) -> Result<()> {
        let mut found = Vec::new();
        let mut stray = Vec::new();
        let d = rustix::fs::Dir::read_from(&self.dir)
            .map_err(std::io::Error::from)
            .at(&self.shown)?;
        for entry in d {
            let entry = entry.map_err(std::io::Error::from).at(&self.shown)?;
            let name = entry.file_name().to_bytes().to_vec();
            if name == b"." || name == b".." || name == b"lock" {
                continue;
            }
            let st = rustix::fs::statat(&self.dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW);
            match (self.key_of(&name), st) {
                (Some(key), Ok(st))
                    if rustix::fs::FileType::from_raw_mode(st.st_mode).is_file() =>
                {
                    found.push((st.st_mtime, key, st.st_size as u64));
                }
                _ => stray.push(name),
            }
        }
        for name in stray {
            let _ = rustix::fs::unlinkat(&self.dir, name.as_slice(), AtFlags::empty());
        }
        found.sort_by_key(|f| f.0);
        let mut index = self.index.lock().expect("disk cache lock");
        for (_, key, len) in found {
            index.lru.put(key, len);
            index.bytes += len;
        }
        self.evict(&mut index);
        Ok(())
    }

    /// Remove least recently used blocks until the total fits.
    fn evict(&self, index: &mut Index) {
        while index.bytes > self.capacity || index.lru.len() as u64 > MAX_BLOCKS {
            let Some((key, len)) = index.lru.pop_lru() else {
                break;
            };
            index.bytes -= len;
            let _ = rustix::fs::unlinkat(&self.dir, self.name_of(&key).as_str(), AtFlags::empty());
        }
    }

    fn pack_size(&self, pack: &PackName) -> Result<u64> {
        if let Some(s) = self.index.lock().expect("disk cache lock").sizes.get(pack) {
            return Ok(*s);
        }
        let s = self.inner.size(pack)?;
        self.index
            .lock()
            .expect("disk cache lock")
            .sizes
            .put(*pack, s);
        Ok(s)
    }

    /// Bytes `part` of block `key` from disk, if the block is there whole
    /// (`len` bytes).
    fn get(&self, key: &BlockKey, len: u64, part: std::ops::Range<u64>) -> Option<Vec<u8>> {
        let known = self
            .index
            .lock()
            .expect("disk cache lock")
            .lru
            .get(key)
            .copied();
        if known != Some(len) {
            return None;
        }
        let read = || -> std::io::Result<Option<Vec<u8>>> {
            let fd = rustix::fs::openat(
                &self.dir,
                self.name_of(key).as_str(),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let st = rustix::fs::fstat(&fd)?;
            if !rustix::fs::FileType::from_raw_mode(st.st_mode).is_file()
                || st.st_size as u64 != len
            {
                return Ok(None);
            }
            let mut buf = vec![0u8; (part.end - part.start) as usize];
            File::from(fd).read_exact_at(&mut buf, part.start)?;
            Ok(Some(buf))
        };
        match read() {
            Ok(Some(b)) => Some(b),
            _ => {
                self.drop_block(key);
                None
            }
        }
    }

    /// Store block `key` (written under a temporary name, then renamed).
    fn put(&self, key: BlockKey, bytes: &[u8]) {
        let len = bytes.len() as u64;
        if len > self.capacity {
            return;
        }
        let name = self.name_of(&key);
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = format!(".tmp-{name}-{}-{n}", std::process::id());
        let written = (|| -> std::io::Result<()> {
            let fd = private_file(
                &self.dir,
                &tmp,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
            )?;
            File::from(fd).write_all_at(bytes, 0)?;
            rustix::fs::renameat(&self.dir, tmp.as_str(), &self.dir, name.as_str())?;
            Ok(())
        })();
        if let Err(e) = written {
            let _ = rustix::fs::unlinkat(&self.dir, tmp.as_str(), AtFlags::empty());
            log::debug!("{}: a block was not cached: {e}", self.shown.display());
            return;
        }
        let mut index = self.index.lock().expect("disk cache lock");
        if let Some(old) = index.lru.put(key, len) {
            index.bytes -= old;
        }
        index.bytes += len;
        self.evict(&mut index);
    }

    fn drop_block(&self, key: &BlockKey) {
        let mut index = self.index.lock().expect("disk cache lock");
        if let Some(len) = index.lru.pop(key) {
            index.bytes -= len;
        }
        let _ = rustix::fs::unlinkat(&self.dir, self.name_of(key).as_str(), AtFlags::empty());
    }

    /// Bytes cached now.
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.index.lock().expect("disk cache lock").bytes
    }
}

/// Open or create `name` in `dir` as a private file: never through a
/// symlink, 0600 whatever the umask.
fn private_file(dir: &OwnedFd, name: &str, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let fd = rustix::fs::openat(
        dir,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600))?;
    Ok(fd)
}

impl Backend for DiskCache {
    fn put(&self, name: &PackName, local: &Path) -> Result<()> {
        self.inner.put(name, local)
    }

    /// The blocks under `offset..offset + len` from disk, and those
    /// missing with one read of the store from the first missing to the
    /// last.
    fn read_at(&self, name: &PackName, offset: u64, len: usize) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let size = self.pack_size(name)?;
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= size)
            .ok_or_else(|| {
                Error::corrupt(format!("pack {name} is shorter than the catalog says"))
            })?;
        let bs = self.block();
        let (first, last) = (offset / bs, (end - 1) / bs);
        let block_len = |b: u64| (size - b * bs).min(bs);
        // The part of block `b` this read wants, from the block's start.
        let part = |b: u64| offset.max(b * bs) - b * bs..end.min(b * bs + bs) - b * bs;
        let mut parts: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut missing = Vec::new();
        for b in first..=last {
            match self.get(&(*name, b), block_len(b), part(b)) {
                Some(bytes) => {
                    parts.insert(b, bytes);
                }
                None => missing.push(b),
            }
        }
        if let (Some(&lo), Some(&hi)) = (missing.first(), missing.last()) {
            let from = lo * bs;
            let to = hi * bs + block_len(hi);
            let fetched = self.inner.read_at(name, from, (to - from) as usize)?;
            for b in lo..=hi {
                let at = ((b - lo) * bs) as usize;
                let bytes = &fetched[at..at + block_len(b) as usize];
                if let std::collections::hash_map::Entry::Vacant(v) = parts.entry(b) {
                    self.put((*name, b), bytes);
                    let p = part(b);
                    v.insert(bytes[p.start as usize..p.end as usize].to_vec());
                }
            }
        }
        let mut out = Vec::with_capacity(len);
        for b in first..=last {
            out.extend_from_slice(&parts[&b]);
        }
        Ok(out)
    }

    fn size(&self, name: &PackName) -> Result<u64> {
        self.pack_size(name)
    }

    fn list(&self) -> Result<Vec<PackName>> {
        self.inner.list()
    }

    fn delete(&self, name: &PackName) -> Result<()> {
        self.inner.delete(name)
    }

    fn parallel_puts(&self) -> usize {
        self.inner.parallel_puts()
    }

    fn parallel_reads(&self) -> usize {
        self.inner.parallel_reads()
    }

    fn listed_size(&self, name: &PackName) -> Option<u64> {
        self.inner.listed_size(name)
    }

    /// Drop the cached blocks under a range whose bytes failed to verify.
    fn forget(&self, name: &PackName, offset: u64, len: usize) -> bool {
        let bs = self.block();
        let end = offset.saturating_add(len.max(1) as u64);
        for b in offset / bs..=(end - 1) / bs {
            self.drop_block(&(*name, b));
        }
        true
    }
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DiskCache({})", self.shown.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Hash;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Packs in memory, counting reads.
    #[derive(Default)]
    struct Mem {
        packs: Mutex<HashMap<PackName, Vec<u8>>>,
        reads: AtomicUsize,
    }

    impl Backend for Mem {
        fn put(&self, _: &PackName, _: &Path) -> Result<()> {
            unreachable!()
        }
        fn read_at(&self, name: &PackName, offset: u64, len: usize) -> Result<Vec<u8>> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            let p = self.packs.lock().unwrap();
            Ok(p[name][offset as usize..offset as usize + len].to_vec())
        }
        fn size(&self, name: &PackName) -> Result<u64> {
            Ok(self.packs.lock().unwrap()[name].len() as u64)
        }
        fn list(&self) -> Result<Vec<PackName>> {
            Ok(Vec::new())
        }
        fn delete(&self, _: &PackName) -> Result<()> {
            Ok(())
        }
    }

    fn setup(pack_len: usize) -> (tempfile::TempDir, Arc<Mem>, PackName, Vec<u8>) {
        let d = tempfile::tempdir().unwrap();
        let mem = Arc::new(Mem::default());
        let name = PackName(Hash::of(b"pack"));
        let bytes: Vec<u8> = (0..pack_len).map(|i| (i * 7 % 251) as u8).collect();
        mem.packs.lock().unwrap().insert(name, bytes.clone());
        (d, mem, name, bytes)
    }

    #[test]
    fn disk_cache_serves_reads_again_without_the_store() {
        let (d, mem, name, bytes) = setup(3 << 20 | 12345);
        let c = DiskCache::open(mem.clone(), d.path(), 64 << 20)
            .unwrap()
            .unwrap();
        let (at, len) = ((1 << 20) - 10, (2 << 20) + 20);
        assert_eq!(
            c.read_at(&name, at, len).unwrap(),
            &bytes[at as usize..][..len]
        );
        assert_eq!(
            mem.reads.load(Ordering::Relaxed),
            1,
            "one read for three blocks"
        );
        let tail = bytes.len() as u64 - 5;
        assert_eq!(c.read_at(&name, tail, 5).unwrap(), &bytes[tail as usize..]);
        let reads = mem.reads.load(Ordering::Relaxed);
        assert_eq!(
            c.read_at(&name, at + 1, 100).unwrap(),
            &bytes[at as usize + 1..][..100]
        );
        assert_eq!(
            c.read_at(&name, tail - 1, 6).unwrap(),
            &bytes[tail as usize - 1..]
        );
        assert_eq!(mem.reads.load(Ordering::Relaxed), reads, "served from disk");
        // A later cache on the same directory finds the blocks.
        drop(c);
        let c = DiskCache::open(mem.clone(), d.path(), 64 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(
            c.read_at(&name, at, 10).unwrap(),
            &bytes[at as usize..][..10]
        );
        assert_eq!(mem.reads.load(Ordering::Relaxed), reads);
        let mode = std::fs::metadata(d.path().join(DIR).join(c.name_of(&(name, 0))))
            .unwrap()
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
    }

    #[test]
    fn disk_cache_evicts_least_recently_used_blocks_to_stay_within_its_size() {
        let (d, mem, name, bytes) = setup(10 << 20);
        let c = DiskCache::open(mem.clone(), d.path(), 3 << 20)
            .unwrap()
            .unwrap();
        for b in [0u64, 1, 2] {
            c.read_at(&name, b << 20, 10).unwrap();
        }
        c.read_at(&name, 0, 10).unwrap(); // block 0 is now the most recent
        c.read_at(&name, 5 << 20, 10).unwrap(); // evicts block 1
        assert!(c.bytes() <= 3 << 20);
        let on_disk: u64 = std::fs::read_dir(d.path().join(DIR))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(on_disk <= 3 << 20, "{on_disk}");
        let reads = mem.reads.load(Ordering::Relaxed);
        c.read_at(&name, 0, 10).unwrap();
        assert_eq!(mem.reads.load(Ordering::Relaxed), reads, "block 0 kept");
        assert_eq!(
            c.read_at(&name, 1 << 20, 10).unwrap(),
            &bytes[1 << 20..][..10]
        );
        assert_eq!(
            mem.reads.load(Ordering::Relaxed),
            reads + 1,
            "block 1 evicted"
        );
        // A smaller size at the next start evicts down to it.
        drop(c);
        let c = DiskCache::open(mem, d.path(), 1 << 20).unwrap().unwrap();
        assert!(c.bytes() <= 1 << 20);
    }

    #[test]
    fn disk_cache_drops_a_damaged_or_short_block_and_leftovers() {
        let (d, mem, name, bytes) = setup(2 << 20);
        let c = DiskCache::open(mem.clone(), d.path(), 64 << 20)
            .unwrap()
            .unwrap();
        c.read_at(&name, 0, 10).unwrap();
        let path = d.path().join(DIR).join(c.name_of(&(name, 0)));
        // Cut short, as a crash might leave it: not used.
        std::fs::write(&path, b"short").unwrap();
        let reads = mem.reads.load(Ordering::Relaxed);
        assert_eq!(c.read_at(&name, 0, 10).unwrap(), &bytes[..10]);
        assert_eq!(mem.reads.load(Ordering::Relaxed), reads + 1);
        // Damaged at full length: the reader's check fails and it forgets.
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        assert_eq!(c.read_at(&name, 0, 10).unwrap(), vec![0u8; 10]);
        assert!(c.forget(&name, 0, 10));
        assert_eq!(c.read_at(&name, 0, 10).unwrap(), &bytes[..10]);
        // Leftovers of a crash are removed at start.
        drop(c);
        let leftover = d.path().join(DIR).join(".tmp-x");
        std::fs::write(&leftover, b"x").unwrap();
        let _c = DiskCache::open(mem, d.path(), 64 << 20).unwrap().unwrap();
        assert!(!leftover.exists());
    }

    #[test]
    fn disk_cache_blocks_grow_with_its_size_to_bound_the_index() {
        assert_eq!(block_log2(1 << 30), MIN_BLOCK_LOG2);
        assert_eq!(block_log2(1 << 40), 24);
        assert!((1u64 << 40) >> block_log2(1 << 40) <= MAX_BLOCKS);
    }
}
