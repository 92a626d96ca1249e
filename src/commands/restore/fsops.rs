//! File system calls relative to directory descriptors, none of which
//! follows a symlink.
//!
//! Restore runs as root into a directory that someone else may have filled
//! (a symlink `etc -> /etc` placed by an attacker, or one restored earlier in
//! the same run). Resolving a path string at any step would follow such a
//! link, so below the target every step is one name relative to a directory
//! descriptor: directories are opened with `O_NOFOLLOW | O_DIRECTORY`, files
//! are created with `O_CREAT | O_EXCL | O_NOFOLLOW` under a temporary name
//! and renamed over the final name (a rename replaces a symlink, it never
//! writes through it), and metadata goes on descriptors or uses
//! `AT_SYMLINK_NOFOLLOW`.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags, fchmod, fchown,
    fsetxattr, futimens, lsetxattr, mkdirat, openat, renameat, unlinkat,
};
use rustix::io::Errno;

use crate::error::{Error, IoContext, Result};
use crate::format::tree::{FileTime, Kind, decode_xattrs};
use crate::repo::catalog::Node;

/// Temporary names start with this, so a later run recognises (and removes)
/// what a killed run left behind.
pub const TMP_PREFIX: &[u8] = b".snapfs-restore-";

/// How directories below the target are opened: never through a symlink.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// An I/O error from rustix, with the path it concerns (for messages only;
/// the call itself used a descriptor).
pub fn io_at<T>(r: rustix::io::Result<T>, shown: &Path) -> Result<T> {
    r.map_err(std::io::Error::from).at(shown)
}

/// `parent/name` for messages.
pub fn join(parent: &Path, name: &[u8]) -> PathBuf {
    parent.join(OsStr::from_bytes(name))
}

/// A fresh temporary name (unique in this process and across processes).
pub fn tmp_name() -> Vec<u8> {
    let mut n = TMP_PREFIX.to_vec();
    n.extend_from_slice(
        format!(
            "{}-{}",
            std::process::id(),
            crate::format::pack::unique_token()
        )
        .as_bytes(),
    );
    n
}

/// Open the user's target directory. The user chose this path, so it may be
/// followed; everything beneath it is reached by descriptor.
pub fn open_target(path: &Path) -> Result<OwnedFd> {
    io_at(
        openat(
            rustix::fs::CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ),
        path,
    )
}

/// Open an existing directory entry only if it really is a directory.
pub fn open_dir(parent: BorrowedFd, name: &[u8], shown: &Path) -> Result<OwnedFd> {
    io_at(openat(parent, name, dir_flags(), Mode::empty()), shown)
}

/// Create directory `name`, or reuse it if it already is a real directory.
/// Anything else under that name (a symlink, a file) is unlinked, never
/// followed. The directory is left owner-only (0700) until its own metadata
/// is applied at the end. Returns the descriptor and whether it was reused.
pub fn make_dir(parent: BorrowedFd, name: &[u8], shown: &Path) -> Result<(OwnedFd, bool)> {
    let owner_only = Mode::from_raw_mode(0o700);
    let reused = match mkdirat(parent, name, owner_only) {
        Ok(()) => false,
        Err(Errno::EXIST) => match openat(parent, name, dir_flags(), Mode::empty()) {
            Ok(fd) => {
                // Another user's directory is taken over before anything is
                // written in it, so they cannot add or swap entries while
                // the restore runs; its own metadata comes at the end.
                let st = io_at(rustix::fs::fstat(&fd), shown)?;
                let me = rustix::process::geteuid();
                if st.st_uid != me.as_raw() {
                    io_at(
                        rustix::fs::fchown(&fd, Some(me), Some(rustix::process::getegid())),
                        shown,
                    )?;
                }
                io_at(fchmod(&fd, owner_only), shown)?;
                return Ok((fd, true));
            }
            Err(Errno::LOOP | Errno::NOTDIR) => {
                io_at(unlinkat(parent, name, AtFlags::empty()), shown)?;
                io_at(mkdirat(parent, name, owner_only), shown)?;
                false
            }
            Err(e) => return io_at(Err(e), shown),
        },
        Err(e) => return io_at(Err(e), shown),
    };
    Ok((open_dir(parent, name, shown)?, reused))
}

/// Remove what a killed or failed run left under temporary names in `dir`.
pub fn remove_leftovers(dir: BorrowedFd, shown: &Path) -> Result<usize> {
    let mut removed = 0;
    let mut names = Vec::new();
    for entry in io_at(rustix::fs::Dir::read_from(dir), shown)? {
        let entry = io_at(entry, shown)?;
        let name = entry.file_name().to_bytes();
        if name.starts_with(TMP_PREFIX) && entry.file_type() != FileType::Directory {
            names.push(name.to_vec());
        }
    }
    for name in names {
        match unlinkat(dir, name.as_slice(), AtFlags::empty()) {
            Ok(()) => removed += 1,
            Err(Errno::NOENT) => {}
            Err(e) => return io_at(Err(e), &join(shown, &name)),
        }
    }
    Ok(removed)
}

/// Rename `tmp` over `name` in `dir`. A symlink or file under `name` is
/// replaced (the rename never follows it); an empty directory is removed
/// first; a non-empty directory is an error rather than a silent deletion.
pub fn replace(dir: BorrowedFd, tmp: &[u8], name: &[u8], shown: &Path) -> Result<()> {
    match renameat(dir, tmp, dir, name) {
        Ok(()) => Ok(()),
        Err(Errno::ISDIR) => {
            if let Err(e) = unlinkat(dir, name, AtFlags::REMOVEDIR) {
                let _ = unlinkat(dir, tmp, AtFlags::empty());
                return Err(Error::invalid(format!(
                    "{}: a directory is in the way of the restored entry and cannot be removed ({e})",
                    shown.display()
                )));
            }
            io_at(renameat(dir, tmp, dir, name), shown)
        }
        Err(e) => {
            let _ = unlinkat(dir, tmp, AtFlags::empty());
            io_at(Err(e), shown)
        }
    }
}

fn timespec(t: FileTime) -> Timespec {
    Timespec {
        tv_sec: t.secs,
        tv_nsec: i64::from(t.nanos),
    }
}

fn times(n: &Node) -> Timestamps {
    Timestamps {
        last_access: timespec(n.meta.atime),
        last_modification: timespec(n.meta.mtime),
    }
}

fn uid_gid(n: &Node) -> (Option<Uid>, Option<Gid>) {
    // A tampered value of -1 means "leave as is" to chown, which is harmless.
    (
        Some(Uid::from_raw_unchecked(n.meta.uid)),
        Some(Gid::from_raw_unchecked(n.meta.gid)),
    )
}

/// A chown that fails for lack of privilege is not fatal (a user restoring
/// their own files keeps ownership); anything else is.
fn chown_result(r: rustix::io::Result<()>, shown: &Path) -> Result<()> {
    match r {
        Err(Errno::PERM) => {
            log::debug!("{}: cannot restore owner: not permitted", shown.display());
            Ok(())
        }
        other => io_at(other, shown),
    }
}

fn warn_xattr(shown: &Path, k: &[u8], e: Errno) {
    log::warn!(
        "{}: cannot set extended attribute {}: {}",
        shown.display(),
        String::from_utf8_lossy(k),
        std::io::Error::from(e)
    );
}

/// Metadata on an open file or directory: xattrs (and ACLs), then owner,
/// then mode (chown clears set-id bits, so the mode comes after it), then
/// times (last, as every other step changes ctime only).
pub fn apply_meta_fd(fd: BorrowedFd, n: &Node, shown: &Path) -> Result<()> {
    for (k, v) in decode_xattrs(&n.xattrs)? {
        if let Err(e) = fsetxattr(fd, k.as_slice(), &v, XattrFlags::empty()) {
            warn_xattr(shown, &k, e);
        }
    }
    let (u, g) = uid_gid(n);
    chown_result(fchown(fd, u, g), shown)?;
    io_at(fchmod(fd, Mode::from_raw_mode(n.meta.mode & 0o7777)), shown)?;
    io_at(futimens(fd, &times(n)), shown)
}

/// `/proc/self/fd/DIR/NAME`: lets an l*xattr call (which has no
/// descriptor-relative form) name an entry inside a directory we hold open,
/// without resolving any path we do not control. Only the last component is
/// the entry, and the l-variant does not follow it.
fn proc_path(dir: BorrowedFd, name: &[u8]) -> Result<CString> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    CString::new(p).map_err(|_| Error::invalid("entry name contains NUL"))
}

/// Metadata on a symlink, fifo or device node that we just created under
/// `name` in `dir`, without opening it for I/O (a fifo would block, a device
/// would be a device) and without following it.
pub fn apply_meta_at(dir: BorrowedFd, name: &[u8], n: &Node, shown: &Path) -> Result<()> {
    let xattrs = decode_xattrs(&n.xattrs)?;
    if !xattrs.is_empty() {
        let p = proc_path(dir, name)?;
        for (k, v) in xattrs {
            if let Err(e) = lsetxattr(p.as_c_str(), k.as_slice(), &v, XattrFlags::empty()) {
                warn_xattr(shown, &k, e);
            }
        }
    }
    // An O_PATH descriptor pins the very inode we made, so a name swapped
    // under us cannot redirect the chown or the chmod.
    let node = io_at(
        openat(
            dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ),
        shown,
    )?;
    let st = io_at(rustix::fs::fstat(&node), shown)?;
    let want = match n.kind {
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::Fifo,
        Kind::CharDev => FileType::CharacterDevice,
        Kind::BlockDev => FileType::BlockDevice,
        Kind::File | Kind::Dir => FileType::Unknown,
    };
    if FileType::from_raw_mode(st.st_mode) != want {
        return Err(Error::invalid(format!(
            "{}: replaced by something else while it was being restored",
            shown.display()
        )));
    }
    let (u, g) = uid_gid(n);
    chown_result(
        rustix::fs::chownat(&node, "", u, g, AtFlags::EMPTY_PATH),
        shown,
    )?;
    if n.kind != Kind::Symlink {
        // chmod has no "this descriptor" form for O_PATH; the /proc link of
        // the descriptor resolves to exactly the inode it holds.
        let p = format!("/proc/self/fd/{}", node.as_fd().as_raw_fd());
        io_at(
            rustix::fs::chmod(p.as_str(), Mode::from_raw_mode(n.meta.mode & 0o7777)),
            shown,
        )?;
    }
    io_at(
        rustix::fs::utimensat(dir, name, &times(n), AtFlags::SYMLINK_NOFOLLOW),
        shown,
    )
}
