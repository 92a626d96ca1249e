//! A repository on disk: its config, catalog, packs, temporary files and lock.
//!
//! ```text
//! repo/config        text: format version, chunker limits, settings
//! repo/catalog.db    SQLite catalog (WAL)
//! repo/packs/ab/<hash>.pack
//! repo/tmp/          packs being written (removed when a writer starts)
//! repo/lock          flock: one writer (ingest, gc) at a time
//! ```

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::{Backend, LocalDir, fsync_dir};
use crate::catalog::{Catalog, ChunkLoc};
use crate::chunker::ChunkerParams;
use crate::error::{Error, IoContext, Result};
use crate::ids::ChunkId;
use crate::pack;
use crate::store;

pub const FORMAT: u32 = 1;

/// Repository settings, fixed at `init` (the chunker limits must never change:
/// dedup depends on them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub format: u32,
    pub chunker: ChunkerParams,
    pub pack_size: u64,
    pub compression: i32,
    pub append_only: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            format: FORMAT,
            chunker: ChunkerParams::default(),
            pack_size: 32 << 20,
            compression: 3,
            append_only: false,
        }
    }
}

impl Config {
    /// The config file's text, as `init` writes it. Public for fuzzing and tests.
    pub fn render(&self) -> String {
        format!(
            "# snapfs repository configuration\nformat = {}\nchunk_min = {}\nchunk_avg = {}\nchunk_max = {}\nframe = {}\npack_size = {}\ncompression = {}\nappend_only = {}\n",
            self.format,
            self.chunker.min,
            self.chunker.avg,
            self.chunker.max,
            store::FRAME,
            self.pack_size,
            self.compression,
            self.append_only
        )
    }

    /// Parse and check a config file. Every key is known, given once and
    /// within its range; an error names the file and the key. The file is
    /// input like any other: a zero `chunk_avg` once made every ingest panic.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let mut c = Config::default();
        let bad = |what: &str| Error::UnsupportedFormat {
            path: path.to_path_buf(),
            found: what.to_string(),
            supported: FORMAT,
        };
        let invalid =
            |key: &str, why: String| Error::invalid(format!("{}: {key}: {why}", path.display()));
        let mut saw_format = false;
        let mut seen = HashSet::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "{}: unreadable line {line:?} (expected key = value)",
                        path.display()
                    ))
                })?;
            if !seen.insert(k.to_string()) {
                return Err(invalid(k, "given more than once".into()));
            }
            let num = |lo: u64, hi: u64| match v.parse::<u64>() {
                Ok(n) if (lo..=hi).contains(&n) => Ok(n),
                _ => Err(invalid(k, format!("{v:?} is not a number in {lo}..={hi}"))),
            };
            let size = |lo: u64, hi: u64| num(lo, hi).map(|n| n as usize);
            match k {
                "format" => {
                    saw_format = true;
                    c.format = v.parse::<u32>().map_err(|_| bad(v))?;
                    if c.format != FORMAT {
                        return Err(bad(v));
                    }
                }
                "chunk_min" => c.chunker.min = size(0, u32::MAX.into())?,
                "chunk_avg" => c.chunker.avg = size(0, u32::MAX.into())?,
                "chunk_max" => c.chunker.max = size(0, u32::MAX.into())?,
                "frame" => {
                    let f = store::FRAME as u64;
                    num(f, f)?;
                }
                "pack_size" => c.pack_size = num(MIN_PACK_SIZE, MAX_PACK_SIZE)?,
                "compression" => {
                    let range = zstd::compression_level_range();
                    c.compression =
                        v.parse()
                            .ok()
                            .filter(|l| range.contains(l))
                            .ok_or_else(|| {
                                invalid(
                                    k,
                                    format!(
                                        "{v:?} is not a zstd level in {}..={}",
                                        range.start(),
                                        range.end()
                                    ),
                                )
                            })?;
                }
                "append_only" => {
                    c.append_only = match v {
                        "true" => true,
                        "false" => false,
                        _ => return Err(invalid(k, format!("{v:?} is neither true nor false"))),
                    }
                }
                _ => return Err(invalid(k, "unknown key".into())),
            }
        }
        if !saw_format {
            return Err(bad("no format line"));
        }
        if let Some((key, why)) = c.chunker.problem() {
            return Err(invalid(key, why));
        }
        Ok(c)
    }
}

/// Smallest `pack_size`: below this, packs are mostly table and footer.
const MIN_PACK_SIZE: u64 = 64 << 10;
/// Largest `pack_size`: a pack is read whole by verify and copy.
const MAX_PACK_SIZE: u64 = 4 << 30;

#[cfg(test)]
mod config_tests {
    use super::*;
    use crate::codec::mutate;
    use proptest::prelude::*;

    fn with(key: &str, value: &str) -> String {
        Config::default()
            .render()
            .lines()
            .map(|l| match l.split_once(" = ") {
                Some((k, _)) if k == key => format!("{k} = {value}\n"),
                _ => format!("{l}\n"),
            })
            .collect()
    }

    fn error(key: &str, value: &str) -> String {
        match Config::parse(&with(key, value), Path::new("/r/config")) {
            Ok(c) => panic!("{key} = {value} accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn config_with_zero_chunk_avg_is_a_clear_error() {
        let e = error("chunk_avg", "0");
        assert!(e.contains("/r/config") && e.contains("chunk_avg"), "{e}");
    }

    #[test]
    fn every_config_value_is_range_checked() {
        for (k, v) in [
            ("chunk_min", "0"),
            ("chunk_min", "2097152"),
            ("chunk_max", "18446744073709551615"),
            ("chunk_max", "65536"),
            ("chunk_avg", "1048577"),
            ("chunk_avg", "-1"),
            ("frame", "1"),
            ("pack_size", "0"),
            ("pack_size", "18446744073709551615"),
            ("compression", "1000"),
            ("compression", "x"),
            ("append_only", "yes"),
            ("format", "4294967297"),
        ] {
            let e = error(k, v);
            assert!(e.contains("/r/config"), "{k}: {e}");
        }
        let dup = format!("{}chunk_avg = 1048576\n", Config::default().render());
        assert!(Config::parse(&dup, Path::new("c")).is_err());
        let unknown = format!("{}apend_only = true\n", Config::default().render());
        let e = Config::parse(&unknown, Path::new("c"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("apend_only"), "{e}");
        let small = with("chunk_min", "64")
            .replace("chunk_avg = 1048576", "chunk_avg = 256")
            .replace("chunk_max = 4194304", "chunk_max = 1024");
        assert!(Config::parse(&small, Path::new("c")).is_ok());
    }

    proptest! {
        #![proptest_config(mutate::config())]

        #[test]
        fn config_parse_never_panics(b in mutate::bytes()) {
            if let Ok(c) = Config::parse(&String::from_utf8_lossy(&b), Path::new("c")) {
                prop_assert_eq!(Config::parse(&c.render(), Path::new("c")).unwrap(), c);
            }
        }

        #[test]
        fn damaged_configs_parse_to_usable_values_or_fail(
            b in mutate::damaged(Config::default().render().into_bytes())
        ) {
            if let Ok(c) = Config::parse(&String::from_utf8_lossy(&b), Path::new("c")) {
                prop_assert!(c.chunker.problem().is_none());
                prop_assert_eq!(Config::parse(&c.render(), Path::new("c")).unwrap(), c);
            }
        }
    }
}

pub struct Repository {
    pub root: PathBuf,
    pub config: Config,
    pub backend: Arc<dyn Backend>,
}

/// Held while a command writes packs; released on drop (or process death).
pub struct RepoLock {
    _file: File,
}

impl Repository {
    /// Create a repository. It is built in a hidden sibling directory and
    /// renamed into place, so a killed init leaves either nothing or a
    /// complete repository, never a half one that refuses to open.
    pub fn init(root: &Path, config: Config) -> Result<Repository> {
        if root.join("config").exists() {
            return Err(Error::invalid(format!(
                "{} is already a snapfs repository",
                root.display()
            )));
        }
        if root.exists() && std::fs::read_dir(root).at(root)?.next().is_some() {
            return Err(Error::NotEmpty(root.to_path_buf()));
        }
        if let Ok(repo) = Repository::init_by_rename(root, &config) {
            return Ok(repo);
        }
        // The rename can fail where the target is a mount point (an empty USB
        // disk): build in place, the config last.
        std::fs::create_dir_all(root.join("packs")).at(root)?;
        std::fs::create_dir_all(root.join("tmp")).at(root)?;
        drop(Catalog::open(&root.join("catalog.db"), true)?);
        let cfg = root.join("config.tmp");
        std::fs::write(&cfg, config.render()).at(&cfg)?;
        File::open(&cfg).at(&cfg)?.sync_all().at(&cfg)?;
        std::fs::rename(&cfg, root.join("config")).at(root)?;
        fsync_dir(root)?;
        Repository::open(root)
    }

    fn init_by_rename(root: &Path, config: &Config) -> Result<Repository> {
        let parent = match root.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).at(&parent)?;
        let base = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "repo".into());
        remove_dead_inits(&parent, &base);
        let tmp = parent.join(format!(
            ".{base}.init-{}-{}",
            std::process::id(),
            pack::unique_token()
        ));
        std::fs::create_dir_all(tmp.join("packs")).at(&tmp)?;
        std::fs::create_dir_all(tmp.join("tmp")).at(&tmp)?;
        drop(Catalog::open(&tmp.join("catalog.db"), true)?);
        let cfg = tmp.join("config");
        std::fs::write(&cfg, config.render()).at(&cfg)?;
        File::open(&cfg).at(&cfg)?.sync_all().at(&cfg)?;
        fsync_dir(&tmp)?;
        if let Err(e) = std::fs::rename(&tmp, root) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e).at(root);
        }
        fsync_dir(&parent)?;
        Repository::open(root)
    }

    pub fn open(root: &Path) -> Result<Repository> {
        let cfg_path = root.join("config");
        let text = match std::fs::read_to_string(&cfg_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotARepository(root.to_path_buf()));
            }
            Err(e) => return Err(e).at(&cfg_path),
        };
        let config = Config::parse(&text, &cfg_path)?;
        Ok(Repository {
            root: root.to_path_buf(),
            config,
            backend: Arc::new(LocalDir::new(root.join("packs"))),
        })
    }

    pub fn catalog_path(&self) -> PathBuf {
        self.root.join("catalog.db")
    }

    pub fn catalog(&self) -> Result<Catalog> {
        let p = self.catalog_path();
        if !p.exists() {
            return Err(Error::corrupt(format!(
                "{} is missing; the repository's catalog is lost",
                p.display()
            )));
        }
        Catalog::open(&p, false)
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Take the writer lock, waiting (and saying so) if another writer holds it.
    /// Leftovers of a killed writer are removed once the lock is ours.
    pub fn lock(&self, what: &str) -> Result<RepoLock> {
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .at(&path)?;
        let fd = file.as_raw_fd();
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            log::warn!("waiting for another command to finish writing to the repository ({what})");
            // SAFETY: as above.
            if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error()).at(&path);
            }
        }
        let tmp = self.tmp_dir();
        std::fs::create_dir_all(&tmp).at(&tmp)?;
        for e in std::fs::read_dir(&tmp).at(&tmp)? {
            let e = e.at(&tmp)?;
            let _ = std::fs::remove_file(e.path());
        }
        Ok(RepoLock { _file: file })
    }

    /// Index packs that are on disk but not in the catalog: the work of an
    /// ingest killed after a pack was stored but before its catalog commit.
    /// Their chunks are then reused instead of being written again.
    pub fn adopt_orphan_packs(&self, cat: &Catalog) -> Result<usize> {
        let mut known: HashSet<_> = cat.packs()?.into_iter().map(|p| p.1).collect();
        known.extend(cat.doomed_packs()?.into_iter().map(|d| d.0));
        let mut adopted = 0;
        for name in self.backend.list()? {
            if known.contains(&name) {
                continue;
            }
            match self.read_pack_table(&name) {
                Ok((size, entries)) => {
                    cat.add_pack(&name, size, &entries)?;
                    adopted += 1;
                }
                Err(e) => log::warn!("ignoring unreadable pack {name}: {e}"),
            }
        }
        Ok(adopted)
    }

    /// A pack's size and its own table of chunks.
    pub fn read_pack_table(
        &self,
        name: &crate::ids::PackName,
    ) -> Result<(u64, Vec<pack::PackEntry>)> {
        let size = self.backend.size(name)?;
        if size < pack::HEADER_LEN + pack::FOOTER_LEN as u64 {
            return Err(Error::corrupt(format!("pack {name} is truncated")));
        }
        let footer =
            self.backend
                .read_at(name, size - pack::FOOTER_LEN as u64, pack::FOOTER_LEN)?;
        let (offset, count, check) = pack::parse_footer(&footer, size)?;
        let table =
            self.backend
                .read_at(name, offset, (size - offset) as usize - pack::FOOTER_LEN)?;
        Ok((size, pack::parse_table(&table, count, check)?))
    }

    /// Store one small metadata chunk in a pack of its own, durably, and index
    /// it (inside the caller's transaction). For records written outside an
    /// ingest, such as forget's.
    pub fn store_meta_chunk(
        &self,
        cat: &Catalog,
        kind: pack::ChunkKind,
        data: &[u8],
    ) -> Result<ChunkId> {
        let hashed = store::hash_chunk(data);
        if cat.has_chunk(&hashed.id)? {
            return Ok(hashed.id);
        }
        let blob = store::Encoder::new(self.config.compression)?.encode(data, &hashed)?;
        let mut w = pack::PackWriter::create(&self.tmp_dir())?;
        w.append(hashed.id, kind, data.len() as u32, &blob)?;
        let sealed = w.seal()?;
        self.backend.put(&sealed.name, &sealed.path)?;
        cat.add_pack(&sealed.name, sealed.size, &sealed.entries)?;
        Ok(hashed.id)
    }

    /// Read, inflate and verify a whole chunk.
    pub fn read_chunk(&self, id: &ChunkId, loc: &ChunkLoc) -> Result<Vec<u8>> {
        let blob = self
            .backend
            .read_at(&loc.pack, loc.offset, loc.stored_len as usize)?;
        store::decode_blob(&blob, id, loc.raw_len as usize)
    }
}

/// Held by a running mount: gc deletes a doomed pack only when every mount
/// that is running started after the pack was doomed (so no open file can
/// still point into it).
pub struct MountLease {
    path: PathBuf,
    _file: File,
}

impl MountLease {
    /// Declare that nothing this mount holds predates `since_ns`, so packs
    /// doomed before then may go.
    pub fn renew(&self, since_ns: i64) {
        // Rewritten in place (the lock is on this inode); a reader that sees
        // a torn value treats it as 0, the most careful answer.
        let _ = std::fs::write(&self.path, since_ns.to_string());
    }
}

impl Drop for MountLease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Repository {
    pub fn take_mount_lease(&self) -> Result<MountLease> {
        let dir = self.root.join("mounts");
        std::fs::create_dir_all(&dir).at(&dir)?;
        let path = dir.join(format!("{}.lease", pack::unique_token()));
        let mut file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .at(&path)?;
        std::io::Write::write_all(&mut file, crate::time::now_ns().to_string().as_bytes())
            .at(&path)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH) } != 0 {
            return Err(std::io::Error::last_os_error()).at(&path);
        }
        Ok(MountLease { path, _file: file })
    }

    /// Start time of the oldest running mount; leases of dead mounts are removed.
    pub fn oldest_mount_ns(&self) -> Result<Option<i64>> {
        let dir = self.root.join("mounts");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(None);
        };
        let mut oldest: Option<i64> = None;
        for e in rd {
            let path = e.at(&dir)?.path();
            let Ok(f) = File::open(&path) else { continue };
            // SAFETY: flock on a descriptor we own.
            let free = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
            if free {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let started = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .unwrap_or(0);
            oldest = Some(oldest.map_or(started, |o| o.min(started)));
        }
        Ok(oldest)
    }

    /// Refuse to destroy history in an append-only repository unless overridden.
    pub fn check_may_delete(&self, what: &str, override_: bool) -> Result<()> {
        if self.config.append_only && !override_ {
            return Err(Error::invalid(format!(
                "the repository is append-only: {what} refused (pass --allow-delete to override, from a trusted machine)"
            )));
        }
        Ok(())
    }
}

/// Remove the leftovers of inits of `base` whose process is gone.
fn remove_dead_inits(parent: &Path, base: &str) {
    let prefix = format!(".{base}.init-");
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok())
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The default repository when neither --repo nor SNAPFS_REPO is given.
pub fn default_path() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".local/share/snapfs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_unknown_format_is_refused() {
        let c = Config::default();
        let p = Path::new("config");
        assert_eq!(Config::parse(&c.render(), p).unwrap(), c);
        let future = c.render().replace("format = 1", "format = 99");
        assert!(matches!(
            Config::parse(&future, p),
            Err(Error::UnsupportedFormat { .. })
        ));
    }

    #[test]
    fn init_refuses_a_non_empty_directory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x"), b"x").unwrap();
        assert!(matches!(
            Repository::init(d.path(), Config::default()),
            Err(Error::NotEmpty(_))
        ));
        let r = d.path().join("repo");
        Repository::init(&r, Config::default()).unwrap();
        assert!(Repository::init(&r, Config::default()).is_err());
        Repository::open(&r).unwrap().catalog().unwrap();
    }
}
