//! Opening an encrypted repository: where its passphrase comes from, and
//! where its catalog lives.
//!
//! The catalog holds every file name in the clear, so an encrypted
//! repository keeps it out of the repository: in a local cache directory
//! of its own (0700), named after the repository's id, rebuilt from the
//! packs and the key whenever it is missing. Whoever can read that
//! directory can read the names (see SECURITY.md).

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::crypto::{MasterKey, PassphraseSource, SlotId, read_passphrase, unlock};
use crate::error::{Error, IoContext, Result};
use crate::format::keying::Keying;
use crate::repo::config::{Config, Encryption, RepoId};

static SOURCE: OnceLock<PassphraseSource> = OnceLock::new();
static CACHE_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Environment variable naming the cache directory (`--cache-dir`).
pub(crate) const CACHE_DIR_ENV: &str = "SNAPFS_CACHE_DIR";

/// Where passphrases come from in this process (`--password-file`); set
/// once, by the command line, before any repository is opened.
pub fn set_passphrase_source(src: PassphraseSource) {
    let _ = SOURCE.set(src);
}

/// The cache directory given on the command line (`--cache-dir`).
pub fn set_cache_dir(dir: PathBuf) {
    let _ = CACHE_DIR.set(dir);
}

pub fn passphrase_source() -> PassphraseSource {
    SOURCE.get().cloned().unwrap_or_default()
}

/// The keying of the repository at `root`: plain, or unlocked with a
/// passphrase from `src` (asked for once per open).
pub(crate) fn keying_for(
    root: &Path,
    config: &Config,
    src: &PassphraseSource,
) -> Result<Arc<Keying>> {
    match config.encryption {
        Encryption::None => Ok(Keying::plain()),
        Encryption::XChaCha20Poly1305 => {
            let (master, _slot) = unlock_master(root, config, src)?;
            Ok(Keying::encrypted(&master.subkeys()))
        }
    }
}

/// The id of an encrypted repository (None: unencrypted). A config read
/// from disk always has one then; one made in code is checked here.
fn encrypted_id<'c>(root: &Path, config: &'c Config) -> Result<Option<&'c RepoId>> {
    match (config.encryption, &config.id) {
        (Encryption::None, _) => Ok(None),
        (_, Some(id)) => Ok(Some(id)),
        (_, None) => Err(Error::invalid(format!(
            "{}: an encrypted repository without an id",
            root.display()
        ))),
    }
}

/// The master key of the encrypted repository at `root`, and the slot its
/// passphrase (from `src`) opened.
pub(crate) fn unlock_master(
    root: &Path,
    config: &Config,
    src: &PassphraseSource,
) -> Result<(MasterKey, SlotId)> {
    let Some(id) = encrypted_id(root, config)? else {
        return Err(Error::invalid(format!(
            "{} is not encrypted: it has no key",
            root.display()
        )));
    };
    let pass = read_passphrase(src, &format!("passphrase for {}: ", root.display()))?;
    unlock(root, &id.0, &pass)
}

/// The directory that holds the catalog of the repository at `root`: the
/// repository itself when unencrypted, else its own directory under the
/// cache (`--cache-dir`, `$SNAPFS_CACHE_DIR`, `$XDG_CACHE_HOME/snapfs` or
/// `~/.cache/snapfs`), made 0700 whatever the umask.
///
/// That directory is named after the repository's id *and* its key
/// (`<id>-<tag>-<copy>`, [`Keying::cache_tag`], `copy_tag`): the id alone is whatever the
/// config says, and a repository made by someone else with the id of one
/// of ours would otherwise be shown our catalog as its own, and write into
/// it.
pub(crate) fn catalog_dir(
    root: &Path,
    config: &Config,
    keying: &Keying,
    remote: bool,
) -> Result<PathBuf> {
    let Some(id) = encrypted_id(root, config)? else {
        return Ok(root.to_path_buf());
    };
    let Some(tag) = keying.cache_tag() else {
        return Err(Error::invalid(format!(
            "{}: an encrypted repository opened without its key",
            root.display()
        )));
    };
    let base = private_base(&cache_base()?)?;
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    // A store's state directory is this machine's alone: no copies.
    let name = if remote {
        format!("{}-{hex}", id.to_hex())
    } else {
        format!("{}-{hex}-{}", id.to_hex(), copy_tag(root)?)
    };
    let dir = base.join(name);
    private_dir(&base, &dir)?;
    Ok(dir)
}

/// Which copy of a repository `root` is: its `config` file's inode number
/// and birth time. `cp -a` or rsync of a repository makes a second copy
/// with the same id and key, which goes its own way from then on; sharing
/// one cache catalog, each would believe it holds the other's packs (and
/// deduplicate against data it does not have). A copy moved whole keeps
/// its tag; one rewritten (an upgrade rewrites `config`) gets its catalog
/// rebuilt once.
fn copy_tag(root: &Path) -> Result<String> {
    use rustix::fs::{AtFlags, CWD, StatxFlags};
    let config = root.join("config");
    let st = rustix::fs::statx(
        CWD,
        &config,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::INO | StatxFlags::BTIME,
    )
    .map_err(std::io::Error::from)
    .at(&config)?;
    let born = if st.stx_mask & StatxFlags::BTIME.bits() != 0 {
        (st.stx_btime.tv_sec, st.stx_btime.tv_nsec)
    } else {
        (0, 0)
    };
    let h = blake3::hash(format!("{}:{}:{}", st.stx_ino, born.0, born.1).as_bytes());
    Ok(h.to_hex()[..8].to_string())
}

/// `dir`, a directory right under `base` (a resolved [`private_base`] or
/// a directory made by this function), made 0700 if missing and refused
/// unless it is a directory of this user's (one planted by another user
/// would hand them what it holds); made 0700 whatever an earlier umask or
/// hand made it.
pub(crate) fn private_dir(base: &Path, dir: &Path) -> Result<()> {
    debug_assert_eq!(dir.parent(), Some(base));
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).at(dir),
    }
    let md = std::fs::symlink_metadata(dir).at(dir)?;
    if !md.is_dir() {
        return Err(Error::invalid(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if md.uid() != rustix::process::geteuid().as_raw() {
        return Err(Error::invalid(format!(
            "{} belongs to another user: it cannot hold this repository's local state",
            dir.display()
        )));
    }
    if md.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).at(dir)?;
    }
    Ok(())
}

/// The cache directory `base`, its links resolved, made (0700) where it is
/// missing, once it is known that no other user can change what it holds:
/// it and every directory above it belong to this user or root, and none
/// lets others write in it without the sticky bit. Otherwise its owner (of
/// a shared `SNAPFS_CACHE_DIR` such as `/tmp/snapfs`, or of a directory
/// above it) could rename the repository's directory away and put one of
/// theirs in its place, between the check of its owner and the writing of
/// the catalog, and read every file name. The resolved path is what is
/// used from then on, so a link replaced later changes nothing.
pub(crate) fn private_base(base: &Path) -> Result<PathBuf> {
    let mut existing = base;
    let mut missing = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                existing = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
            }
            _ => break,
        }
    }
    let mut resolved = std::fs::canonicalize(existing).at(existing)?;
    let me = rustix::process::geteuid().as_raw();
    for d in resolved.ancestors() {
        let md = std::fs::metadata(d).at(d)?;
        let others_write = md.mode() & 0o002 != 0 && md.mode() & 0o1000 == 0;
        if (md.uid() != me && md.uid() != 0) || others_write {
            return Err(Error::invalid(format!(
                "{} belongs to another user or lets other users write in it: the catalog of an \
                 encrypted repository, which names every file, cannot be kept under it (give \
                 --cache-dir a directory of your own)",
                d.display()
            )));
        }
    }
    for name in missing.iter().rev() {
        resolved.push(name);
        match std::fs::DirBuilder::new().mode(0o700).create(&resolved) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).at(&resolved),
        }
    }
    Ok(resolved)
}

pub(crate) fn cache_base() -> Result<PathBuf> {
    if let Some(d) = CACHE_DIR.get() {
        return Ok(d.clone());
    }
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var(CACHE_DIR_ENV) {
        return Ok(d);
    }
    if let Some(d) = var("XDG_CACHE_HOME").filter(|d| d.is_absolute()) {
        return Ok(d.join("snapfs"));
    }
    if let Some(h) = var("HOME").filter(|h| h.is_absolute()) {
        return Ok(h.join(".cache").join("snapfs"));
    }
    Err(Error::invalid(format!(
        "no cache directory for the catalog of an encrypted repository: give --cache-dir or set {CACHE_DIR_ENV} (or HOME)"
    )))
}
