//! Reader leases: how commands that read packs tell gc what they may still
//! read (see `Lease`).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::Repository;
use crate::error::{Error, IoContext, Result};
use crate::format::pack;

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
    /// `mounts/`, opened without following a symlink (see `Repository::own_dir`).
    dir: OwnedFd,
    name: String,
    /// For messages only.
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
        let _ = rustix::fs::unlinkat(&self.dir, self.name.as_str(), AtFlags::empty());
    }
}

/// How long an unlocked lease still being made may lie in `mounts/` before
/// gc takes it for a dead holder's leftover.
const LEASE_TMP_GRACE: Duration = Duration::from_secs(3600);

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

impl Repository {
    /// Take a lease for a command that reads packs (see `Lease`). `what`
    /// names the holder ("restore", "mount", …).
    ///
    /// The lease is complete (locked, dated) before it takes its name in
    /// `mounts/`, so gc never sees it half made: an unlocked lease there is
    /// a dead holder's. Its time is taken before the caller reads the
    /// catalog, so every chunk location the caller finds was in use then.
    fn take_lease(&self, what: &str) -> Result<Lease> {
        let dirpath = self.root.join("mounts");
        let dir = self
            .own_dir("mounts", Some(0o700))?
            .ok_or_else(|| Error::Io {
                path: dirpath.clone(),
                source: std::io::ErrorKind::NotFound.into(),
            })?;
        let token = pack::unique_token();
        let tmp = format!(".{token}.lease-tmp");
        let at = |name: &str| dirpath.join(name);
        let fd = rustix::fs::openat(
            &dir,
            tmp.as_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(std::io::Error::from)
        .at(at(&tmp))?;
        let file = File::from(fd);
        let made = (|| -> Result<()> {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH) } != 0 {
                return Err(std::io::Error::last_os_error()).at(at(&tmp));
            }
            set_lease_time(&file, crate::time::now_ns()).at(at(&tmp))
        })();
        let holder: String = what
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let name = format!("{token}-pid{}-{holder}.lease", std::process::id());
        let renamed = made.and_then(|()| {
            rustix::fs::renameat(&dir, tmp.as_str(), &dir, name.as_str())
                .map_err(std::io::Error::from)
                .at(at(&tmp))
        });
        if let Err(e) = renamed {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
            return Err(e);
        }
        Ok(Lease {
            path: at(&name),
            dir,
            name,
            file,
        })
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
    /// leases of dead holders are removed. A lease that cannot be read
    /// (wrong owner, damaged directory) counts as the oldest possible one,
    /// with a warning: a reader gc cannot see must never lose its packs.
    pub fn oldest_lease_ns(&self) -> Result<Option<i64>> {
        Ok(self.live_leases()?.into_iter().map(|(_, t)| t).min())
    }

    /// The leases of live holders: (what names the holder, the time it
    /// still reads from). See `oldest_lease_ns`.
    pub fn live_leases(&self) -> Result<Vec<(String, i64)>> {
        let dirpath = self.root.join("mounts");
        let unreadable = |what: &Path, e: &dyn std::fmt::Display| {
            log::warn!(
                "cannot read the reader lease {} ({e}); keeping every pack out of use until it \
                 can be read (is it owned by another user? `chown -R` the repository to its owner)",
                what.display()
            );
            vec![(format!("{} (unreadable)", what.display()), 0)]
        };
        let dir = match self.own_dir("mounts", None) {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(Vec::new()),
            Err(Error::Io { path, source }) => return Ok(unreadable(&path, &source)),
            Err(e) => return Err(e),
        };
        let entries = match rustix::fs::Dir::read_from(&dir) {
            Ok(d) => d,
            Err(e) => return Ok(unreadable(&dirpath, &e)),
        };
        let mut live = Vec::new();
        for e in entries {
            let e = match e {
                Ok(e) => e,
                Err(e) => {
                    live.extend(unreadable(&dirpath, &e));
                    break;
                }
            };
            let name = e.file_name();
            let bytes = name.to_bytes();
            let finished = bytes.ends_with(b".lease");
            let making = bytes.ends_with(b".lease-tmp");
            if !finished && !making {
                continue;
            }
            let path = dirpath.join(std::ffi::OsStr::from_bytes(bytes));
            let f = match rustix::fs::openat(
                &dir,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
                Mode::empty(),
            ) {
                Ok(fd) => File::from(fd),
                // Gone meanwhile (its holder ended), or not a file at all.
                Err(e) if e == Errno::NOENT || e == Errno::LOOP => continue,
                Err(e) => {
                    if finished {
                        live.extend(unreadable(&path, &e));
                    }
                    continue;
                }
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
                    let _ = rustix::fs::unlinkat(&dir, name, AtFlags::empty());
                }
                continue;
            }
            if free {
                let _ = rustix::fs::unlinkat(&dir, name, AtFlags::empty());
                continue;
            }
            live.push((String::from_utf8_lossy(bytes).into_owned(), lease_time(&f)));
        }
        Ok(live)
    }
}
