//! A repository on disk: its config, catalog, packs, temporary files and lock.
//!
//! ```text
//! repo/config        text: format version, chunker limits, settings
//! repo/catalog.db    SQLite catalog (WAL)
//! repo/packs/ab/<hash>.pack
//! repo/tmp/          packs being written (removed when a writer starts)
//! repo/lock          flock: one writer (ingest, gc) at a time
//! ```

pub(crate) mod backend;
pub(crate) mod catalog;
pub(crate) mod history;
pub(crate) mod import;
pub(crate) mod paths;
pub(crate) mod refs;

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::format::blob;
use crate::format::chunker::ChunkerParams;
use crate::format::pack;
use crate::ids::ChunkId;
use crate::repo::backend::{Backend, LocalDir, fsync_dir};
use crate::repo::catalog::{Catalog, ChunkLoc};

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
            blob::FRAME,
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
                    let f = blob::FRAME as u64;
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
    use crate::format::codec::mutate;
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

/// Modes of what a repository holds. Private by default: only the owner
/// reads anything (a repository holds copies of every protected file of a
/// machine). A repository shared with a group (`init --group`) lets that
/// group read, never write; others get nothing either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// The group the repository is shared with, if any.
    pub group: Option<u32>,
}

impl Access {
    /// The umask that gives every new file and directory these modes.
    fn umask(self) -> u32 {
        if self.group.is_some() { 0o027 } else { 0o077 }
    }

    fn dir_mode(self) -> u32 {
        // setgid: what is created inside keeps the shared group.
        if self.group.is_some() { 0o2750 } else { 0o700 }
    }

    fn file_mode(self) -> u32 {
        if self.group.is_some() { 0o640 } else { 0o600 }
    }
}

/// Make everything this process creates from now on private to its owner,
/// whatever umask it was started with.
pub fn private_umask() {
    // SAFETY: umask only sets the process's file mode creation mask.
    unsafe { libc::umask(0o077) };
}

fn set_umask(access: Access) {
    // SAFETY: as above.
    unsafe { libc::umask(access.umask() as libc::mode_t) };
}

/// How long `lock` waits for another writer, in milliseconds (`--lock-wait`).
static LOCK_WAIT_MS: AtomicU64 = AtomicU64::new(300_000);

/// How long a command waits for the writer lock before giving up.
pub fn set_lock_wait(wait: Duration) {
    LOCK_WAIT_MS.store(
        u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// The id of group `name` (or a number), for `init --group`.
pub fn group_id(name: &str) -> Result<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let c = std::ffi::CString::new(name)
        .map_err(|_| Error::invalid(format!("group name {name:?} contains NUL")))?;
    let mut grp: libc::group = unsafe {
        // SAFETY: a plain C struct; getgrnam_r fills it.
        std::mem::zeroed()
    };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: valid C string, struct, buffer and its length, out pointer.
    let rc =
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return Err(Error::invalid(format!(
            "no group named {name:?} on this machine"
        )));
    }
    Ok(grp.gr_gid)
}

/// Names an interrupted `init` may leave in a directory before it wrote
/// `config`: such a directory is still "empty" for the next `init`.
const INIT_LEFTOVERS: &[&str] = &[
    "packs",
    "tmp",
    "catalog.db",
    "catalog.db-wal",
    "catalog.db-shm",
    "catalog.db-journal",
    "config.tmp",
];

fn chmod(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).at(path)
}

fn chgrp(path: &Path, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, None, Some(gid)).at(path)
}

impl Repository {
    /// Create a private repository (see [`Repository::init_shared`]).
    pub fn init(root: &Path, config: Config) -> Result<Repository> {
        Repository::init_shared(root, config, None)
    }

    /// Create a repository, private to its owner, or readable by `group`
    /// too. A new directory is built as a hidden sibling and renamed into
    /// place, so a killed init leaves either nothing or a complete
    /// repository. An existing empty directory (one an administrator
    /// prepared, or a mount point) is used in place and keeps its owner,
    /// group and mode: only what it gave to all users is taken away.
    pub fn init_shared(root: &Path, config: Config, group: Option<u32>) -> Result<Repository> {
        if root.join("config").exists() {
            return Err(Error::invalid(format!(
                "{} is already a snapfs repository",
                root.display()
            )));
        }
        let access = Access { group };
        set_umask(access);
        match std::fs::metadata(root) {
            Ok(md) if md.is_dir() => {
                for e in std::fs::read_dir(root).at(root)? {
                    let name = e.at(root)?.file_name();
                    if !INIT_LEFTOVERS
                        .iter()
                        .any(|l| name.as_bytes() == l.as_bytes())
                    {
                        return Err(Error::NotEmpty(root.to_path_buf()));
                    }
                }
                let mode = md.permissions().mode() & 0o7777;
                if mode & 0o007 != 0 {
                    log::warn!(
                        "{}: taking away the access of other users (mode {mode:04o} -> {:04o})",
                        root.display(),
                        mode & !0o007
                    );
                    chmod(root, mode & !0o007)?;
                }
                if let Some(gid) = group {
                    chgrp(root, gid)?;
                    chmod(root, (mode & !0o007) | 0o2750)?;
                }
                Repository::init_in(root, &config, access)?;
                fsync_dir(root)?;
                Repository::open(root)
            }
            Ok(_) => Err(Error::invalid(format!(
                "{} is not a directory",
                root.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Repository::init_by_rename(root, &config, access)
            }
            Err(e) => Err(e).at(root),
        }
    }

    /// Fill directory `dir` (already made, with its final mode) with an
    /// empty repository; `config` last.
    fn init_in(dir: &Path, config: &Config, access: Access) -> Result<()> {
        for sub in ["packs", "tmp"] {
            let p = dir.join(sub);
            match std::fs::DirBuilder::new().mode(0o700).create(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).at(&p),
            }
            if let Some(gid) = access.group {
                chgrp(&p, gid)?;
            }
            chmod(&p, access.dir_mode())?;
        }
        // Made here with its mode, so SQLite (which gives its -wal and -shm
        // files the database's mode and owner) never makes it with another.
        let db = dir.join("catalog.db");
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(access.file_mode())
            .custom_flags(libc::O_NOFOLLOW)
            .open(&db)
            .at(&db)?;
        if let Some(gid) = access.group {
            chgrp(&db, gid)?;
        }
        chmod(&db, access.file_mode())?;
        drop(Catalog::open(&db, true)?);
        let tmp = dir.join("config.tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(access.file_mode())
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .at(&tmp)?;
        std::io::Write::write_all(&mut f, config.render().as_bytes()).at(&tmp)?;
        if let Some(gid) = access.group {
            chgrp(&tmp, gid)?;
        }
        f.sync_all().at(&tmp)?;
        drop(f);
        std::fs::rename(&tmp, dir.join("config")).at(dir)
    }

    fn init_by_rename(root: &Path, config: &Config, access: Access) -> Result<Repository> {
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
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .at(&tmp)?;
        let built = (|| {
            if let Some(gid) = access.group {
                chgrp(&tmp, gid)?;
            }
            chmod(&tmp, access.dir_mode())?;
            Repository::init_in(&tmp, config, access)?;
            fsync_dir(&tmp)
        })();
        if let Err(e) = built {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        // Never over something that appeared meanwhile: rename(2) would
        // replace an empty directory, and with it its owner and mode.
        if root.exists() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(Error::invalid(format!(
                "{} appeared while the repository was being made; run init again",
                root.display()
            )));
        }
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
        let repo = Repository {
            root: root.to_path_buf(),
            config,
            backend: Arc::new(LocalDir::new(root.join("packs"))),
        };
        set_umask(repo.access());
        repo.warn_if_open();
        Ok(repo)
    }

    /// Who may read the repository, from its directory's mode and group: a
    /// directory that lets its group in is shared with that group.
    pub fn access(&self) -> Access {
        match std::fs::metadata(&self.root) {
            Ok(md) if md.permissions().mode() & 0o070 != 0 => Access {
                group: Some(md.gid()),
            },
            _ => Access { group: None },
        }
    }

    /// Say so when anyone on the machine can read the repository (made by
    /// an older release, copied with `cp -r`, or opened up by hand): it
    /// holds every protected file that was backed up.
    fn warn_if_open(&self) {
        let open: Vec<String> = [
            self.root.clone(),
            self.root.join("config"),
            self.catalog_path(),
        ]
        .iter()
        .filter_map(|p| {
            let md = std::fs::symlink_metadata(p).ok()?;
            (md.permissions().mode() & 0o007 != 0).then(|| {
                format!(
                    "{} (mode {:04o})",
                    p.display(),
                    md.permissions().mode() & 0o7777
                )
            })
        })
        .collect();
        if !open.is_empty() {
            log::warn!(
                "other users can read this repository: {}; make it private with: chmod -R o-rwx {}",
                open.join(", "),
                self.root.display()
            );
        }
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

    /// Take the writer lock, waiting (and saying so, naming the holder) if
    /// another writer holds it, for at most `--lock-wait`. Leftovers of a
    /// killed writer are removed once the lock is ours.
    ///
    /// The lock file is the owner's alone (0600, never through a symlink):
    /// a user who could open it could hold the lock and stop every backup.
    pub fn lock(&self, what: &str) -> Result<RepoLock> {
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .at(&path)?;
        // An older release made it 0644: close it to others now.
        if file.metadata().at(&path)?.permissions().mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .at(&path)?;
        }
        let fd = file.as_raw_fd();
        let try_lock = || {
            // SAFETY: flock on a descriptor we own.
            unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) == 0 }
        };
        if !try_lock() {
            let wait = Duration::from_millis(LOCK_WAIT_MS.load(Ordering::Relaxed));
            let holder = lock_holder(&file);
            log::warn!(
                "waiting for {holder} to finish writing to the repository ({what}; giving up after {} s, see --lock-wait)",
                wait.as_secs()
            );
            let t0 = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(100));
                if try_lock() {
                    break;
                }
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                    return Err(e).at(&path);
                }
                if t0.elapsed() >= wait {
                    return Err(Error::invalid(format!(
                        "the repository is busy: {} holds its writer lock ({}); waited {} s (--lock-wait sets how long)",
                        lock_holder(&file),
                        path.display(),
                        wait.as_secs()
                    )));
                }
            }
        }
        // Say who holds it, for the next one who waits.
        let me = format!(
            "snapfs {what} (pid {}, uid {}, since {})",
            std::process::id(),
            // SAFETY: getuid cannot fail.
            unsafe { libc::getuid() },
            crate::time::rfc3339(crate::time::now_ns())
        );
        let _ = file.set_len(0);
        let _ = file.write_all_at(me.as_bytes(), 0);
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
        let hashed = blob::hash_chunk(data);
        if cat.has_chunk(&hashed.id)? {
            return Ok(hashed.id);
        }
        let blob = blob::Encoder::new(self.config.compression)?.encode(data, &hashed)?;
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
        blob::decode_blob(&blob, id, loc.raw_len as usize)
    }
}

/// Held by every command that reads packs (a mount, restore, verify, copy,
/// diff, stats): gc deletes a doomed pack only when every lease held says
/// that nothing its holder still reads predates the doom (so no reader can
/// still point into the pack).
///
/// A lease is a file in `mounts/` (the name predates the other readers; an
/// older gc reads the same files), shared-locked with `flock` for as long as
/// its holder lives: a lease whose lock is free is left over from a dead
/// holder, and gc removes it. Its modification time is the holder's start
/// (or, for a mount, the oldest state it still serves), to the nanosecond;
/// its name says who holds it, for an administrator looking at what keeps
/// space from being freed. The time is in the inode, not in the file's
/// bytes, so a lease needs no data block (a restore must work on a full
/// disk) and is renewed atomically.
pub struct Lease {
    path: PathBuf,
    file: File,
}

/// Set a lease's time (see `Lease`).
fn set_lease_time(file: &File, since_ns: i64) -> std::io::Result<()> {
    let ts = libc::timespec {
        tv_sec: since_ns.div_euclid(1_000_000_000),
        tv_nsec: since_ns.rem_euclid(1_000_000_000),
    };
    let times = [ts, ts];
    // SAFETY: futimens on a descriptor we own, with two valid timespecs.
    if unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Lease {
    /// Declare that nothing this holder reads predates `since_ns`, so packs
    /// doomed before then may go.
    pub fn renew(&self, since_ns: i64) {
        if let Err(e) = set_lease_time(&self.file, since_ns) {
            // The old time stays: more careful than the new one.
            log::debug!("renewing {}: {e}", self.path.display());
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How long an unlocked lease still being made may lie in `mounts/` before
/// gc takes it for a dead holder's leftover.
const LEASE_TMP_GRACE: Duration = Duration::from_secs(3600);

impl Repository {
    /// Take a lease for a command that reads packs (see `Lease`). `what`
    /// names the holder ("restore", "mount", …).
    ///
    /// The lease is complete (locked, dated) before it takes its name in
    /// `mounts/`, so gc never sees it half made: an unlocked lease there is
    /// a dead holder's. Its time is taken before the caller reads the
    /// catalog, so every chunk location the caller finds was in use then.
    fn take_lease(&self, what: &str) -> Result<Lease> {
        let dir = self.root.join("mounts");
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).at(&dir),
        }
        let token = pack::unique_token();
        let tmp = dir.join(format!(".{token}.lease-tmp"));
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .at(&tmp)?;
        let made = (|| -> Result<()> {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH) } != 0 {
                return Err(std::io::Error::last_os_error()).at(&tmp);
            }
            set_lease_time(&file, crate::time::now_ns()).at(&tmp)
        })();
        let holder: String = what
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let path = dir.join(format!("{token}-pid{}-{holder}.lease", std::process::id()));
        if let Err(e) = made.and_then(|()| std::fs::rename(&tmp, &path).at(&tmp)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(Lease { path, file })
    }

    /// `take_lease` for a command that only reads: where no lease can be
    /// made (a read-only medium, a full disk, a repository shared with the
    /// reader's group, which may not write in it) it reads without one,
    /// saying what that risks, rather than refuse to restore on the day the
    /// disk is full.
    pub fn reader_lease(&self, what: &str) -> Result<Option<Lease>> {
        match self.take_lease(what) {
            Ok(l) => Ok(Some(l)),
            Err(Error::Io { path, source })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::EROFS | libc::EACCES | libc::EPERM | libc::ENOSPC | libc::EDQUOT)
                ) =>
            {
                log::warn!(
                    "cannot take a reader lease ({}: {source}); a gc running meanwhile could delete packs this {what} reads",
                    path.display()
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The oldest time a live lease holder still reads from (see `Lease`);
    /// leases of dead holders are removed.
    pub fn oldest_lease_ns(&self) -> Result<Option<i64>> {
        let dir = self.root.join("mounts");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(None);
        };
        let mut oldest: Option<i64> = None;
        for e in rd {
            let e = e.at(&dir)?;
            let path = e.path();
            let name = e.file_name();
            let name = name.as_bytes();
            let finished = name.ends_with(b".lease");
            let making = name.ends_with(b".lease-tmp");
            if !finished && !making {
                continue;
            }
            let Ok(f) = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
                .open(&path)
            else {
                continue;
            };
            let Ok(md) = f.metadata() else { continue };
            if !md.is_file() {
                continue;
            }
            // SAFETY: flock on a descriptor we own.
            let free = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
            if making {
                // Still being made by a live holder (it renames it when
                // done): nothing reads yet. A dead one's is tidied late, so
                // a holder that is merely slow is never robbed of its file.
                let stale = md
                    .modified()
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|age| age > LEASE_TMP_GRACE);
                if free && stale {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            if free {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let started = lease_time(&f);
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

/// The time a lease's live holder set (see `Lease`), or 0, the most careful
/// answer, where it cannot be read.
fn lease_time(f: &File) -> i64 {
    let Ok(m) = f.metadata() else { return 0 };
    if m.len() == 0 {
        return m
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(m.mtime_nsec());
    }
    // An older release's mount wrote its time as text (and its mtime moves
    // with every renewal, so it says nothing).
    let mut text = [0u8; 20];
    let n = f.read_at(&mut text, 0).unwrap_or(0);
    std::str::from_utf8(&text[..n])
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or(0)
}

/// What the writer lock's holder wrote of itself (see `Repository::lock`).
fn lock_holder(file: &File) -> String {
    let mut buf = [0u8; 256];
    let n = file.read_at(&mut buf, 0).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    let text = text.trim();
    if text.is_empty() {
        "another snapfs command".to_string()
    } else {
        text.chars().filter(|c| !c.is_control()).collect()
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
