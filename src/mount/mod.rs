//! The FUSE adapter: one match per callback over `snapshot_fs`, errors
//! answered with `Error::errno`. Everything else lives in `snapshot_fs`.

pub(crate) mod snapshot_fs;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request, Session, SessionACL,
};

use crate::error::{Error, IoContext, Result};
use crate::format::tree::Kind;
use crate::mount::snapshot_fs::{Attr, MountOptions, SnapshotFs, inode};
use crate::repo::Repository;

/// Snapshots never change: the kernel may keep what it learns for long.
const TTL: Duration = Duration::from_secs(24 * 3600);
/// The root lists snapshots, which come and go.
const ROOT_TTL: Duration = Duration::from_secs(1);

struct Fuse {
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

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
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
        atime: time(a.atime_ns),
        mtime: time(a.mtime_ns),
        ctime: time(a.ctime_ns),
        crtime: time(a.ctime_ns),
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
                    atime_ns: 0,
                    mtime_ns: 0,
                    ctime_ns: 0,
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
        match self.fs.xattrs(ino.0) {
            Ok(x) => match x.iter().find(|(k, _)| k.as_slice() == name.as_bytes()) {
                Some((_, v)) => reply_sized(reply, size, v),
                None => reply.error(Errno::NO_XATTR),
            },
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
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

pub struct MountRequest {
    pub names: crate::mount::snapshot_fs::Names,
    pub allow_other: bool,
    pub cache_bytes: usize,
    pub threads: usize,
    /// See `MountOptions::idle_expiry`.
    pub idle_expiry: Duration,
}

/// Check the mount point and FUSE itself, so failures are one clear line.
fn preflight(mountpoint: &Path) -> Result<()> {
    let md = std::fs::metadata(mountpoint).map_err(|e| {
        Error::invalid(format!(
            "mount point {}: {e}; create it with mkdir",
            mountpoint.display()
        ))
    })?;
    if !md.is_dir() {
        return Err(Error::invalid(format!(
            "mount point {} is not a directory",
            mountpoint.display()
        )));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let canon = std::fs::canonicalize(mountpoint).at(mountpoint)?;
    if mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(m) == canon)
        && mounts.lines().any(|l| {
            l.split(' ').nth(4).is_some_and(|m| Path::new(m) == canon) && l.contains("fuse")
        })
    {
        return Err(Error::invalid(format!(
            "{} is already a mount point; unmount it first (fusermount3 -u {})",
            mountpoint.display(),
            mountpoint.display()
        )));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(Error::invalid(
            "/dev/fuse is missing: load the fuse kernel module (modprobe fuse) or run where FUSE is available",
        ));
    }
    Ok(())
}

/// Serve the repository at `mountpoint` until unmounted or SIGINT/SIGTERM.
/// `ready` is called once the mount is usable.
pub fn mount(
    repo: Repository,
    mountpoint: &Path,
    req: &MountRequest,
    ready: impl FnOnce(),
) -> Result<()> {
    preflight(mountpoint)?;
    // Block the stop signals before any thread starts (threads inherit the
    // mask); one thread waits for them and unmounts.
    // SAFETY: plain signal-mask calls on a zeroed, initialized sigset.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    // Full-size frames live in the cache's own slots; the rest (short
    // frames, assembled reads, compressed bytes) are allocated on one thread
    // and freed on another. One heap arena, with them kept out of mmap, lets
    // freed memory serve the next allocation: no page faults each time, and
    // no per-thread arenas that grow the process past its cache size.
    // SAFETY: mallopt only tunes the allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        // Returning freed frames to the system only to fault them back in
        // costs TLB shootdowns on every core; keep some slack, but little
        // enough that the process stays near its cache size.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
    // Frames of every size come and go in LRU order, which leaves holes in
    // the heap that only its top is trimmed of: measured, the heap held
    // 140 MiB free beside a full 256 MiB cache after copying a tree of
    // small files. malloc_trim hands whole free pages anywhere in the heap
    // back, but pages handed back fault in again when reused, so only when
    // much is free.
    std::thread::Builder::new()
        .name("trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(Duration::from_millis(500));
                // SAFETY: glibc's own statistics and maintenance calls.
                unsafe {
                    if libc::mallinfo2().fordblks > HEAP_SLACK {
                        libc::malloc_trim(0);
                    }
                }
            }
        })
        .expect("spawn trim thread");
    let fs = SnapshotFs::new(
        repo,
        MountOptions {
            names: req.names,
            cache_bytes: req.cache_bytes,
            idle_expiry: req.idle_expiry,
            ..Default::default()
        },
    )?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("snapfs".into()),
        MountOption::Subtype("snapfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        // A snapshot holds copies of setuid binaries, files with
        // capabilities and device nodes; served with their original modes
        // to other users (`--allow-other`), honouring them would hand out
        // root. They are data here, never privileges.
        MountOption::NoSuid,
        MountOption::NoDev,
    ];
    if req.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(req.threads.max(1));
    config.clone_fd = true;
    let invalidate = fs.invalidate_slot();
    let mut session = Session::new(
        Fuse {
            fs,
            no_open: false,
            no_opendir: false,
        },
        mountpoint,
        &config,
    )
    .map_err(|e| {
        Error::invalid(format!(
            "cannot mount at {}: {e} (is fusermount3 installed, and /dev/fuse usable?)",
            mountpoint.display()
        ))
    })?;
    let notifier = session.notifier();
    invalidate.set(Box::new(move |parent, name| {
        // ENOENT: the kernel no longer caches the name. Nothing to do.
        if let Err(e) = notifier.inval_entry(INodeNo(parent), OsStr::from_bytes(name)) {
            log::debug!("dropping a cached name from the kernel: {e}");
        }
    }));
    let mut unmounter = session.unmount_callable();
    let mp = mountpoint.to_path_buf();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: waiting on the set blocked above.
            unsafe { libc::sigwait(&set, &mut sig) };
            log::info!("signal {sig}: unmounting {}", mp.display());
            if let Err(e) = unmounter.unmount() {
                log::error!("unmount of {} failed: {e}", mp.display());
            }
        })
        .expect("spawn signal thread");
    let serving = std::thread::Builder::new()
        .name("fuse".into())
        .spawn(move || session.run())
        .expect("spawn FUSE session thread");
    // The first stat goes through the session: once answered, the mount is usable.
    std::fs::metadata(mountpoint).at(mountpoint)?;
    raise_readahead(mountpoint);
    ready();
    serving
        .join()
        .map_err(|_| Error::invalid("the FUSE session thread panicked"))?
        .at(mountpoint)
}

/// Free heap memory tolerated before it is handed back (see `mount`).
const HEAP_SLACK: usize = 32 << 20;

/// Ask the kernel for 1 MiB reads instead of 128 KiB (root only; best effort).
fn raise_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = md.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let p = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(e) = std::fs::write(&p, "1024") {
        log::debug!("cannot raise read-ahead ({p}): {e}");
    }
}
