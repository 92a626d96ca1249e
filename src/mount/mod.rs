//! The mount: a process that serves snapshots through FUSE until it is
//! unmounted or stopped. This file is its set-up (checks on the mount
//! point, signal handling, allocator tuning, the kernel's read-ahead, the
//! FUSE session); `fuse` is the adapter from FUSE requests to
//! `snapshot_fs`, which is the filesystem itself.

mod fuse;
pub(crate) mod snapshot_fs;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use fuser::{Config, INodeNo, MountOption, Session, SessionACL};

use crate::error::{Error, IoContext, Result};
use crate::mount::snapshot_fs::{MountOptions, SnapshotFs};
use crate::repo::Repository;
use fuse::Fuse;

pub struct MountRequest {
    pub names: crate::mount::snapshot_fs::Names,
    pub allow_other: bool,
    pub cache_bytes: usize,
    /// Bytes of disk for pack bytes read from a bucket (`repo::disk_cache`);
    /// None: `DEFAULT_DISK_CACHE` for a bucket.
    pub disk_cache: Option<u64>,
    pub threads: usize,
    /// See `MountOptions::idle_expiry`.
    pub idle_expiry: Duration,
    /// See `MountOptions::always_xattrs`.
    pub always_xattrs: bool,
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

/// The disk cache of a mount of a repository in a bucket, unless told.
pub const DEFAULT_DISK_CACHE: u64 = 1 << 30;

/// `repo` reading through a disk cache of the size asked for (or the
/// default) if it is kept in a bucket. A local repository's packs are on
/// disk already: asking for a cache there is refused.
fn with_disk_cache(mut repo: Repository, asked: Option<u64>) -> Result<Repository> {
    let size = match (asked, repo.remote.is_some()) {
        (Some(n), false) if n > 0 => {
            return Err(Error::invalid(
                "--disk-cache-size is for a repository in a bucket: a local repository's packs are read from its disk already",
            ));
        }
        (_, false) => return Ok(repo),
        (asked, true) => asked.unwrap_or(DEFAULT_DISK_CACHE),
    };
    if size > 0
        && let Some(c) =
            crate::repo::disk_cache::DiskCache::open(repo.backend.clone(), &repo.root, size)?
    {
        repo.backend = std::sync::Arc::new(c);
    }
    Ok(repo)
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
    // The lease in a store ends with this function, not whenever the last
    // reader thread lets go of the repository: gc elsewhere waits for it.
    let mut repo = repo;
    let _store_lease = repo.store_lease.take();
    let repo = with_disk_cache(repo, req.disk_cache)?;
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
            always_xattrs: req.always_xattrs,
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
    let mut session = Session::new(Fuse::new(fs), mountpoint, &config).map_err(|e| {
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
