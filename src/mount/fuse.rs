//! The FUSE adapter: one match per callback over `snapshot_fs`, errors
//! answered with `Error::errno`. Everything else lives in `snapshot_fs`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use crate::error::Error;
use crate::format::tree::{FileTime, Kind};
use crate::mount::snapshot_fs::{Attr, SnapshotFs, inode};

/// Snapshots never change: the kernel may keep what it learns for long.
const TTL: Duration = Duration::from_secs(24 * 3600);
/// The root lists snapshots, which come and go.
const ROOT_TTL: Duration = Duration::from_secs(1);

pub(super) struct Fuse {
    fs: SnapshotFs,
    /// The kernel takes ENOSYS from open as "no open needed" (see `open`).
    no_open: bool,
    /// The kernel takes ENOSYS from opendir as "no opendir needed" (see
    /// `opendir`).
    no_opendir: bool,
}

fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.errno())
}

fn kind(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime.to_system_time(),
        mtime: a.mtime.to_system_time(),
        ctime: a.ctime.to_system_time(),
        crtime: a.ctime.to_system_time(),
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        flags: 0,
        blksize: 4096,
    }
}

/// Long for what lies inside snapshots; short for the mount's own nodes.
fn ttl_for(ino: u64) -> Duration {
    if inode::decode(ino).is_some() {
        TTL
    } else {
        ROOT_TTL
    }
}

/// How long the kernel may trust a name found in `parent`: briefly at the
/// root (snapshots are forgotten) and in the history view (it grows).
fn entry_ttl(parent: u64, ino: u64) -> Duration {
    if parent == inode::ROOT || inode::history_seq(parent).is_some() {
        ROOT_TTL
    } else {
        ttl_for(ino)
    }
}

/// Answer a getxattr/listxattr-style request: size probe or data.
fn reply_sized(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl Fuse {
    pub(super) fn new(fs: SnapshotFs) -> Fuse {
        Fuse {
            fs,
            no_open: false,
            no_opendir: false,
        }
    }
}

impl Filesystem for Fuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Always readdirplus, not the kernel's automatic choice: that lists
        // all but the first batch plainly when a reader (`cp -a`, `rsync`)
        // reads a whole directory before looking at its entries, and then
        // each entry costs a lookup round trip. Listing attributes costs us
        // next to nothing: they are in the same catalog rows as the names.
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS;
        let _ = config.add_capabilities(wanted & config.capabilities());
        // The kernel checks POSIX ACLs (read through getxattr of
        // `system.posix_acl_access`) as well as mode bits: without this, a
        // group or user that an ACL denies reads the file through the mount.
        // A kernel that cannot enforce ACLs must not serve them half-checked.
        if !config.capabilities().contains(InitFlags::FUSE_POSIX_ACL)
            || config.add_capabilities(InitFlags::FUSE_POSIX_ACL).is_err()
        {
            return Err(std::io::Error::other(
                "this kernel's FUSE cannot enforce POSIX ACLs (FUSE_POSIX_ACL); refusing to mount",
            ));
        }
        self.no_open = config
            .capabilities()
            .contains(InitFlags::FUSE_NO_OPEN_SUPPORT);
        self.no_opendir = config
            .capabilities()
            .contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(parent.0, name.as_bytes()) {
            Ok(Some(a)) => {
                self.fs.hold(parent.0, name.as_bytes(), &a);
                reply.entry(&entry_ttl(parent.0, a.ino), &file_attr(&a), Generation(0))
            }
            // A cached negative entry: file managers probe for names that do not exist.
            Ok(None) => {
                let mut none = file_attr(&Attr {
                    ino: 0,
                    kind: Kind::File,
                    perm: 0,
                    nlink: 0,
                    uid: 0,
                    gid: 0,
                    size: 0,
                    blocks: 0,
                    atime: FileTime::default(),
                    mtime: FileTime::default(),
                    ctime: FileTime::default(),
                    rdev: 0,
                });
                none.ino = INodeNo(0);
                reply.entry(&entry_ttl(parent.0, parent.0), &none, Generation(0))
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&ttl_for(a.ino), &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        // Reads find the file by inode number, and what a file open for
        // long holds is kept by lookup count (`hold`, `forget`), so when the
        // kernel can do without opens, ENOSYS tells it so: no open or
        // release round trip per file any more, and pages are kept across
        // opens.
        if self.no_open {
            return reply.error(Errno::ENOSYS);
        }
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE)
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(ino.0, offset, size) {
            Ok(d) => {
                reply.data(d.as_slice());
                d.recycle();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Nothing to flush on a read-only filesystem; ENOSYS stops the kernel
    /// asking at every close.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Listings need no handle either: without opendir and releasedir
        // round trips, walking a tree costs one readdirplus per directory.
        // The kernel then caches listings as the flags below ask.
        if self.no_opendir {
            return reply.error(Errno::ENOSYS);
        }
        reply.opened(
            FileHandle(0),
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.fs.readdir(ino.0, offset, 512, false) {
            Ok(items) => {
                for it in items {
                    if reply.add(
                        INodeNo(it.attr.ino),
                        it.cookie,
                        kind(it.attr.kind),
                        OsStr::from_bytes(&it.name),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        match self.fs.readdir(ino.0, offset, 256, true) {
            Ok(items) => {
                for it in items {
                    let ttl = entry_ttl(ino.0, it.attr.ino);
                    if reply.add(
                        INodeNo(it.attr.ino),
                        it.cookie,
                        OsStr::from_bytes(&it.name),
                        &ttl,
                        &file_attr(&it.attr),
                        Generation(0),
                    ) {
                        break;
                    }
                    // Counted once in the reply, before it is sent.
                    if it.name != b"." && it.name != b".." {
                        self.fs.hold(ino.0, &it.name, &it.attr);
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.usage() {
            Ok((stored, _)) => reply.statfs(stored.div_ceil(4096), 0, 0, 0, 0, 4096, 255, 4096),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.xattrs_served() {
            Ok(true) => {}
            // The kernel stops asking for the rest of the mount.
            Ok(false) => return reply.error(Errno::ENOSYS),
            Err(e) => return reply.error(errno(&e)),
        }
        match self.fs.xattrs(ino.0) {
            Ok(x) => match x.iter().find(|(k, _)| k.as_slice() == name.as_bytes()) {
                Some((_, v)) => reply_sized(reply, size, v),
                None => reply.error(Errno::NO_XATTR),
            },
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.xattrs_served() {
            Ok(true) => {}
            Ok(false) => return reply.error(Errno::ENOSYS),
            Err(e) => return reply.error(errno(&e)),
        }
        match self.fs.xattrs(ino.0) {
            Ok(x) => {
                let mut names = Vec::new();
                for (k, _) in &x {
                    names.extend_from_slice(k);
                    names.push(0);
                }
                reply_sized(reply, size, &names);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return reply.error(Errno::EINVAL),
        };
        match self.fs.seek(ino.0, offset.max(0) as u64, data) {
            Ok(Some(o)) => reply.offset(o as i64),
            Ok(None) => reply.error(Errno::ENXIO),
            Err(e) => reply.error(errno(&e)),
        }
    }
}
