//! A repository on disk: its config, catalog, packs, temporary files and lock.
//!
//! ```text
//! repo/config        text: format version, chunker limits, settings
//! repo/catalog.db    SQLite catalog (WAL)
//! repo/packs/ab/<hash>.pack
//! repo/tmp/          packs being written (removed when a writer starts)
//! repo/lock          flock: one writer (ingest, gc) at a time
//! repo/keys/<id>.key key slots of an encrypted repository (`crypto::slots`)
//! ```
//!
//! An encrypted repository keeps its catalog in a local cache directory
//! instead (`unlock.rs`): the catalog holds every name in the clear.

pub(crate) mod backend;
pub(crate) mod bucket;
pub(crate) mod catalog;
pub(crate) mod coalesce;
mod config;
pub(crate) mod disk_cache;
pub(crate) mod history;
pub(crate) mod import;
mod lease;
mod lock;
pub(crate) mod paths;
pub(crate) mod refs;
pub(crate) mod s3;
pub mod ssh;
pub(crate) mod store;
pub(crate) mod store_lease;
mod unlock;

pub use config::{Config, Encryption, RepoId};
pub use lock::{RepoLock, set_lock_wait};
pub use unlock::{passphrase_source, set_cache_dir, set_passphrase_source};

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, IoContext, Result};
use crate::format::blob;
use crate::format::pack;
use crate::ids::ChunkId;
use crate::repo::backend::{Backend, LocalDir, fsync_dir};
use crate::repo::catalog::{Catalog, ChunkLoc};

/// The repository format this release writes and reads: 2 (directory
/// pages, `docs/FORMAT.md`). Format 1 is converted by `snapfs upgrade`.
pub const FORMAT: u32 = 2;

/// Bytes of a pack's tail read at once from a store to find its table: a
/// table of about 1,300 chunks, more than most packs hold.
const TABLE_TAIL: u64 = 64 << 10;

pub struct Repository {
    pub root: PathBuf,
    pub config: Config,
    pub backend: Arc<dyn Backend>,
    /// How chunk ids and boundaries are computed (keyed when encrypted).
    pub keying: Arc<crate::format::keying::Keying>,
    /// Where the catalog is: the repository, or a local cache directory
    /// when the repository is encrypted.
    catalog_dir: PathBuf,
    /// The bucket of a repository kept in object storage (`root` is then
    /// its local state directory; see `bucket`).
    pub(crate) remote: Option<Arc<dyn store::ObjectStore>>,
    /// This command's lease in the store of a remote repository, which
    /// keeps another host's gc from deleting packs it uses
    /// (`store_lease`); None for a local repository, or where no lease
    /// could be written (a reader then reads without one, and says so).
    pub(crate) store_lease: Option<store_lease::StoreLease>,
    /// Listings of a store started as it was opened, for the catch-up at
    /// the start of the command (`bucket::ListAhead`).
    ahead: std::sync::Mutex<Option<bucket::ListAhead>>,
    /// Whether the catalog of a repository in a store was brought in step
    /// with the store as this command opened it (`set_synced_at_open`).
    synced: std::sync::atomic::AtomicBool,
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
const INIT_LEFTOVERS: &[&str] = &["packs", "tmp", "keys", "config.tmp"];

/// The catalog's file and SQLite's files beside it.
const CATALOG_FILES: &[&str] = &[
    "catalog.db",
    "catalog.db-wal",
    "catalog.db-shm",
    "catalog.db-journal",
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
        Repository::init_from(root, config, group, &unlock::passphrase_source())
    }

    /// `init_shared`, the passphrase of an encrypted repository read from
    /// `src` (a copy's destination has its own).
    pub fn init_from(
        root: &Path,
        config: Config,
        group: Option<u32>,
        src: &crate::crypto::PassphraseSource,
    ) -> Result<Repository> {
        let place = bucket::place(root)?;
        if let Some(c) = &place.remote {
            bucket::prepare_init(c.as_ref(), &place.root)?;
        }
        let root = place.root.as_path();
        if root.join("config").exists() {
            return Err(Error::invalid(format!(
                "{} is already a snapfs repository",
                root.display()
            )));
        }
        // An encrypted repository's key: made, and its passphrase asked
        // for, before anything is written.
        let key = match config.encryption {
            Encryption::None => None,
            Encryption::XChaCha20Poly1305 => {
                let pass = crate::crypto::read_new_passphrase(
                    src,
                    &format!("new passphrase for {}: ", root.display()),
                )?;
                Some((crate::crypto::MasterKey::generate()?, pass))
            }
        };
        let key = key.as_ref().map(|(m, p)| (m, p.as_str()));
        Repository::init_dir(root, &config, group, key)?;
        // Where the catalog went, when not in `root`.
        let mut catalog_dir = None;
        let keying = match key {
            None => crate::format::keying::Keying::plain(),
            Some((master, _)) => {
                let keying = crate::format::keying::Keying::encrypted(&master.subkeys());
                // The catalog, in its cache directory: a new one (any
                // catalog there of an earlier repository with this id is
                // not this repository's).
                let dir = unlock::catalog_dir(root, &config, &keying, place.remote.is_some())?;
                let db = dir.join("catalog.db");
                for name in CATALOG_FILES {
                    let p = dir.join(name);
                    match std::fs::remove_file(&p) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e).at(&p),
                    }
                }
                create_catalog(&db, Access { group: None })?;
                catalog_dir = Some(dir);
                keying
            }
        };
        if let Some(c) = &place.remote {
            // Keys first: a bucket never shows a repository without them.
            let pushed = bucket::push_keys(c.as_ref(), root, None, &[])
                .and_then(|()| bucket::push_config(c.as_ref(), root));
            if let Err(e) = pushed {
                bucket::undo_init(root, catalog_dir.as_deref());
                return Err(e);
            }
        }
        Repository::open_keyed(&place, config, keying)
    }

    /// Make the repository's directory and what it holds (`init_shared`).
    fn init_dir(
        root: &Path,
        config: &Config,
        group: Option<u32>,
        key: Option<(&crate::crypto::MasterKey, &str)>,
    ) -> Result<()> {
        let access = Access { group };
        set_umask(access);
        match std::fs::metadata(root) {
            Ok(md) if md.is_dir() => {
                for e in std::fs::read_dir(root).at(root)? {
                    let name = e.at(root)?.file_name();
                    if !INIT_LEFTOVERS
                        .iter()
                        .chain(CATALOG_FILES)
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
                Repository::init_in(root, config, access, key)?;
                fsync_dir(root)
            }
            Ok(_) => Err(Error::invalid(format!(
                "{} is not a directory",
                root.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Repository::init_by_rename(root, config, access, key)
            }
            Err(e) => Err(e).at(root),
        }
    }

    /// Fill directory `dir` (already made, with its final mode) with an
    /// empty repository; `config` last.
    fn init_in(
        dir: &Path,
        config: &Config,
        access: Access,
        key: Option<(&crate::crypto::MasterKey, &str)>,
    ) -> Result<()> {
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
        if let Some((master, pass)) = key {
            // The key slot before the config: a repository is complete
            // once its config is there, and then must open. Slots a killed
            // init left here wrap another master key: never this one's.
            let keys = dir.join(crate::crypto::slots::KEYS_DIR);
            match std::fs::remove_dir_all(&keys) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).at(&keys),
            }
            let id = config
                .id
                .as_ref()
                .ok_or_else(|| Error::invalid("an encrypted repository needs an id"))?;
            crate::crypto::create_slot(
                dir,
                &id.0,
                master,
                pass,
                crate::crypto::KdfParams::from_env_or_default()?,
            )?;
            return Self::write_config_in(dir, config, access);
        }
        create_catalog(&dir.join("catalog.db"), access)?;
        Self::write_config_in(dir, config, access)
    }

    fn write_config_in(dir: &Path, config: &Config, access: Access) -> Result<()> {
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

    /// Replace the config file (atomically: a new file renamed over it).
    pub fn write_config(&self, config: &Config) -> Result<()> {
        Self::write_config_in(&self.root, config, self.access())?;
        fsync_dir(&self.root)
    }

    fn init_by_rename(
        root: &Path,
        config: &Config,
        access: Access,
        key: Option<(&crate::crypto::MasterKey, &str)>,
    ) -> Result<()> {
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
            Repository::init_in(&tmp, config, access, key)?;
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
        fsync_dir(&parent)
    }

    pub fn open(root: &Path) -> Result<Repository> {
        Repository::open_from(root, &unlock::passphrase_source())
    }

    /// Open a local repository with a config already read (`upgrade` reads
    /// an earlier format's).
    pub fn open_with(root: &Path, config: Config) -> Result<Repository> {
        let keying = unlock::keying_for(root, &config, &unlock::passphrase_source())?;
        Repository::open_keyed(&bucket::Place::local(root), config, keying)
    }

    /// Open, the passphrase of an encrypted repository read from `src` (a
    /// copy's destination has its own).
    pub fn open_from(root: &Path, src: &crate::crypto::PassphraseSource) -> Result<Repository> {
        let (place, ahead) = bucket::opened_listing_ahead(root)?;
        let config = read_config(&place.root)?;
        let keying = unlock::keying_for(&place.root, &config, src)?;
        Repository::open_keyed_ahead(&place, config, keying, ahead)
    }

    /// Open an encrypted repository, keeping its master key and the key
    /// slot that opened it (`snapfs key`).
    pub fn open_with_master(
        root: &Path,
    ) -> Result<(Repository, crate::crypto::MasterKey, crate::crypto::SlotId)> {
        let place = bucket::opened(root)?;
        let config = read_config(&place.root)?;
        let (master, slot) =
            unlock::unlock_master(&place.root, &config, &unlock::passphrase_source())?;
        let keying = crate::format::keying::Keying::encrypted(&master.subkeys());
        Ok((
            Repository::open_keyed(&place, config, keying)?,
            master,
            slot,
        ))
    }

    /// Open an encrypted repository with a master key typed back from paper
    /// (`key import`), no passphrase asked. Whether the key is the
    /// repository's is for the caller to prove.
    pub fn open_with_key(root: &Path, master: &crate::crypto::MasterKey) -> Result<Repository> {
        let place = bucket::opened(root)?;
        let config = read_config(&place.root)?;
        let keying = crate::format::keying::Keying::encrypted(&master.subkeys());
        Repository::open_keyed(&place, config, keying)
    }

    /// After key slots were `added` or `removed` locally: a repository in
    /// a store gets the change there too.
    pub(crate) fn push_keys(
        &self,
        added: &[crate::crypto::SlotId],
        removed: &[crate::crypto::SlotId],
    ) -> Result<()> {
        match &self.remote {
            Some(c) => {
                let names = |ids: &[crate::crypto::SlotId]| -> Vec<String> {
                    ids.iter().map(|id| id.file_name()).collect()
                };
                bucket::push_keys(c.as_ref(), &self.root, Some(&names(added)), &names(removed))
            }
            None => Ok(()),
        }
    }

    /// The repository as the user named it: its directory, or its bucket.
    pub fn location(&self) -> String {
        match &self.remote {
            Some(c) => c.shown(""),
            None => self.root.display().to_string(),
        }
    }

    /// Open with the keying already at hand (`init` just made the key).
    fn open_keyed(
        place: &bucket::Place,
        config: Config,
        keying: Arc<crate::format::keying::Keying>,
    ) -> Result<Repository> {
        Repository::open_keyed_ahead(place, config, keying, None)
    }

    /// `open_keyed`, with the listings `ahead` started as it was opened.
    fn open_keyed_ahead(
        place: &bucket::Place,
        config: Config,
        keying: Arc<crate::format::keying::Keying>,
        ahead: Option<bucket::ListAhead>,
    ) -> Result<Repository> {
        let root = place.root.as_path();
        for own in ["packs", "tmp", "mounts", "catalog.db", "keys"] {
            let p = root.join(own);
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(not_own_dir(&p));
            }
        }
        let catalog_dir = unlock::catalog_dir(root, &config, &keying, place.remote.is_some())?;
        let backend: Arc<dyn Backend> = match (&place.remote, &ahead) {
            (Some(_), Some(a)) => a.packs.clone(),
            (Some(c), None) => Arc::new(store::StorePacks::new(c.clone())),
            (None, _) => Arc::new(LocalDir::new(root.join("packs"))),
        };
        // Taken before the catalog is brought in step with the store, so
        // its time is no later than what the catalog knows.
        let store_lease = match &place.remote {
            Some(store) => {
                let taken = match &ahead {
                    // Written before the listings started ahead.
                    Some(a) => a.lease(),
                    None => store_lease::StoreLease::take(
                        store.clone(),
                        store_lease::Times::from_env()?,
                        "open",
                        crate::time::now_ns(),
                    ),
                };
                match taken {
                    Ok(l) => Some(l),
                    Err(e) => {
                        log::warn!(
                            "cannot write a lease in {} ({e}); a gc elsewhere could delete packs this command reads",
                            store.shown("leases/")
                        );
                        None
                    }
                }
            }
            None => None,
        };
        let repo = Repository {
            root: root.to_path_buf(),
            config,
            backend,
            keying,
            catalog_dir,
            remote: place.remote.clone(),
            store_lease,
            ahead: std::sync::Mutex::new(ahead),
            synced: std::sync::atomic::AtomicBool::new(false),
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
        self.catalog_dir.join("catalog.db")
    }

    /// The directory of the catalog (and of the files a rebuild makes
    /// beside it).
    pub fn catalog_dir(&self) -> &Path {
        &self.catalog_dir
    }

    /// Which file the catalog is (device, inode). A reader that opens it
    /// again (a mount's further connections) checks that it is still the
    /// one it started with: `rebuild-catalog` puts a new one in its place,
    /// whose row ids mean other things.
    pub fn catalog_file(&self) -> Result<(u64, u64)> {
        let p = self.catalog_path();
        let md = std::fs::metadata(&p).at(&p)?;
        Ok((md.dev(), md.ino()))
    }

    pub fn catalog(&self) -> Result<Catalog> {
        let p = self.catalog_path();
        if !p.exists() {
            return Err(Error::corrupt(format!(
                "{} is missing; the repository's catalog is lost: `snapfs rebuild-catalog` makes it again from the packs",
                p.display()
            )));
        }
        Catalog::open(&p, false)
    }

    /// One of the repository's own directories (`tmp`, `mounts`), made
    /// with `mode` (under the umask) if missing and asked for, opened as a
    /// descriptor without following a symlink; None if missing. Files in
    /// them are removed through the descriptor: a repository whose
    /// directory points elsewhere (a crafted disk, or its owner when root
    /// runs gc) must not make snapfs remove files there.
    pub(crate) fn own_dir(&self, name: &str, mode: Option<u32>) -> Result<Option<OwnedFd>> {
        let path = self.root.join(name);
        if let Some(mode) = mode {
            match std::fs::DirBuilder::new().mode(mode).create(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).at(&path),
            }
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::open(&path, flags, Mode::empty()) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e == Errno::NOENT => Ok(None),
            Err(e) if e == Errno::LOOP || e == Errno::NOTDIR => Err(not_own_dir(&path)),
            Err(e) => Err(std::io::Error::from(e)).at(&path),
        }
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Index packs that are on disk but not in the catalog: the work of an
    /// ingest killed after a pack was stored but before its catalog commit.
    /// Their chunks are then reused instead of being written again.
    pub fn adopt_orphan_packs(&self, cat: &Catalog) -> Result<usize> {
        if self.remote.is_some() {
            // In a store, a pack this catalog does not know may hold another
            // host's snapshot: it is caught up with (records imported), never
            // merely indexed, or gc would take that snapshot's data for dead.
            return match bucket::behind(self)? {
                bucket::Behind::New { new, doomed, .. } => {
                    if bucket::index_new(self, cat, &new, &doomed, false, true)? {
                        Ok(new.len())
                    } else {
                        // Half of it may be done in the caller's
                        // transaction: nothing of it must be committed.
                        Err(Error::invalid(format!(
                            "the catalog of {} cannot catch up with what another machine did \
                             meanwhile (it forgot snapshots, or a new snapshot needs what this \
                             catalog lacks): nothing was written; run the command again, which \
                             rebuilds the catalog",
                            self.location()
                        )))
                    }
                }
                bucket::Behind::No => Ok(0),
                // A writer must not deduplicate against packs that are
                // gone: it stops, and the next command rebuilds.
                bucket::Behind::Gone => Err(Error::invalid(format!(
                    "packs the catalog of {} uses are gone from the store (a gc elsewhere \
                     deleted them): nothing was written; run the command again, which rebuilds \
                     the catalog",
                    self.location()
                ))),
            };
        }
        let mut known: HashSet<_> = cat.packs()?.into_iter().map(|p| p.1).collect();
        known.extend(cat.doomed_packs()?.into_iter().map(|d| d.0));
        // A pack a gc marked in a store is nobody's orphan.
        known.extend(self.marked_packs()?);
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

    /// The listings started as the repository was opened, once: for the
    /// catch-up at the start of a command, and no later use (they grow
    /// stale).
    pub(crate) fn take_ahead(&self) -> Option<bucket::ListAhead> {
        self.ahead.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Say that the catalog was just brought in step with the store.
    pub(crate) fn set_synced_at_open(&self) {
        self.synced
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether this command brought the catalog of a repository in a store
    /// in step with it as it opened it.
    pub(crate) fn synced_at_open(&self) -> bool {
        self.remote.is_some() && self.synced.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Before a writer commits (stores a snapshot record): its lease in a
    /// store, if any, never lapsed (`StoreLease::check_unbroken`).
    pub(crate) fn check_lease_unbroken(&self) -> Result<()> {
        match &self.store_lease {
            Some(l) => l.check_unbroken(),
            None => Ok(()),
        }
    }

    /// Packs of a repository in a store that a gc took out of use and will
    /// delete (`store_lease`); none for a local repository.
    pub(crate) fn marked_packs(&self) -> Result<HashSet<crate::ids::PackName>> {
        match &self.remote {
            Some(store) => Ok(store_lease::marked_names(store.as_ref())?
                .into_iter()
                .collect()),
            None => Ok(HashSet::new()),
        }
    }

    /// A pack's size and its own table of chunks. From a store, the size
    /// comes from the listing when it gave one, and the footer and table
    /// from one read of the pack's tail when the table fits in it: one
    /// request instead of three.
    pub fn read_pack_table(
        &self,
        name: &crate::ids::PackName,
    ) -> Result<(u64, Vec<pack::PackEntry>)> {
        let size = match self.backend.listed_size(name) {
            Some(s) => s,
            None => self.backend.size(name)?,
        };
        let min = pack::HEADER_LEN + pack::FOOTER_LEN as u64;
        if size < min {
            return Err(Error::corrupt(format!("pack {name} is truncated")));
        }
        // Bytes of the tail read at once: just the footer from a local
        // disk, where a second read costs nothing.
        let tail_len = if self.remote.is_some() {
            (size - pack::HEADER_LEN).min(TABLE_TAIL)
        } else {
            pack::FOOTER_LEN as u64
        };
        let tail_at = size - tail_len;
        let tail = self.backend.read_at(name, tail_at, tail_len as usize)?;
        let footer = tail
            .get(tail.len().saturating_sub(pack::FOOTER_LEN)..)
            .filter(|f| f.len() == pack::FOOTER_LEN)
            .ok_or_else(|| Error::corrupt(format!("pack {name}: its tail reads short")))?;
        let (offset, count, check) = pack::parse_footer(footer, size, &self.keying)?;
        let table_end = size - pack::FOOTER_LEN as u64;
        let table = if offset >= tail_at {
            // parse_footer checked offset ≤ table_end < size.
            let from = (offset - tail_at) as usize;
            let to = (table_end - tail_at) as usize;
            tail.get(from..to)
                .ok_or_else(|| Error::corrupt(format!("pack {name}: its tail reads short")))?
                .to_vec()
        } else {
            self.backend
                .read_at(name, offset, (table_end - offset) as usize)?
        };
        Ok((size, pack::parse_table(&table, count, check, &self.keying)?))
    }

    /// The tables of `names`, in their order, read by as many threads as
    /// the backend wants reads in flight (one at a time from a local disk),
    /// a few such rounds at a time: memory holds the tables of one batch,
    /// never those of a whole repository (a table may have millions of
    /// rows).
    pub fn pack_tables<'a>(
        &'a self,
        names: &'a [crate::ids::PackName],
    ) -> impl Iterator<
        Item = (
            &'a crate::ids::PackName,
            Result<(u64, Vec<pack::PackEntry>)>,
        ),
    > + 'a {
        let threads = self.backend.parallel_reads().max(1);
        names.chunks(4 * threads).flat_map(move |batch| {
            batch
                .iter()
                .zip(crate::repo::coalesce::in_parallel(batch, threads, |n| {
                    self.read_pack_table(n)
                }))
        })
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
        let hashed = self.keying.hash_chunk(data);
        if cat.has_chunk(&hashed.id)? {
            return Ok(hashed.id);
        }
        let blob =
            blob::Encoder::new(self.config.compression, &self.keying)?.encode(data, &hashed)?;
        let mut w = pack::PackWriter::create(
            &self.tmp_dir(),
            pack::recorded_level(self.config.compression),
            &self.keying,
        )?;
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
        blob::decode_blob(&self.keying, &blob, id, loc.raw_len as usize)
    }
}

impl Repository {
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

/// The config of the repository at `root`, checked.
/// The config of the repository at `path` (a directory or a bucket), or
/// None if there is no repository there.
pub(crate) fn config_at(path: &Path) -> Result<Option<Config>> {
    let place = match bucket::opened(path) {
        Ok(p) => p,
        Err(Error::NotARepository(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    match read_config(&place.root) {
        Ok(c) => Ok(Some(c)),
        Err(Error::NotARepository(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) fn read_config(root: &Path) -> Result<Config> {
    let cfg_path = root.join("config");
    let text = match std::fs::read_to_string(&cfg_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotARepository(root.to_path_buf()));
        }
        Err(e) => return Err(e).at(&cfg_path),
    };
    Config::parse(&text, &cfg_path)
}

/// An empty catalog at `db`, made with its mode first, so SQLite (which
/// gives its -wal and -shm files the database's mode and owner) never makes
/// it with another.
fn create_catalog(db: &Path, access: Access) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(access.file_mode())
        .custom_flags(libc::O_NOFOLLOW)
        .open(db)
        .at(db)?;
    if let Some(gid) = access.group {
        chgrp(db, gid)?;
    }
    chmod(db, access.file_mode())?;
    drop(Catalog::open(db, true)?);
    Ok(())
}

/// A repository's own directory that is a symlink or not a directory.
fn not_own_dir(path: &Path) -> Error {
    Error::invalid(format!(
        "{} is a symbolic link or not what it should be; a repository's own directories and \
         files must be real ones, never links to elsewhere (move it aside, or restore the \
         repository from a copy)",
        path.display()
    ))
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
        let future = c.render().replace("format = 2", "format = 99");
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
