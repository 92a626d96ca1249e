//! `snapfs restore`: a snapshot (or a path inside it) out to a directory, in
//! parallel, with full metadata: owner, mode, times in ns, xattrs and ACLs,
//! hard links, symlinks, devices, fifos, and holes where the data was zeros.
//!
//! # Safety of the target
//!
//! Restore runs as root and its input may be hostile (a snapshot received by
//! `serve`, a catalog rebuilt from someone's packs, a tampered catalog.db),
//! and so may the target (a symlink `etc -> /etc` placed there beforehand).
//! So:
//!
//! - every entry name is checked where it is read from the catalog
//!   ([`names`]): no empty name, `.`, `..`, `/` or NUL, none over 255 bytes;
//! - below the target chosen by the user, the tree is walked by directory
//!   descriptor and no symlink is ever followed, neither one found in the
//!   target nor one this run restored ([`fsops`]);
//! - a file is written under a temporary name (`.snapfs-restore-…`) and
//!   renamed over its final name only once its data and metadata are
//!   complete and flushed to disk ([`write`]). A failed restore removes its
//!   temporary files; a killed one leaves only temporary names, which the
//!   next run removes. A name restore put in place is therefore complete.
//!
//! # Resuming
//!
//! Restoring again into the same target skips the files that are already
//! complete. A file counts as complete when, under its final name, it is a
//! regular file (not followed if a symlink) with a single link, the
//! snapshot's size and mtime (ns), and contents that hash, chunk by chunk,
//! to the snapshot's chunk ids. Size and mtime alone would be cheaper, but
//! they would also keep a file that was changed or damaged after the first
//! run and had its mtime put back (as `cp -p`, `rsync -t` or a bad disk may),
//! and a restore must not report success over wrong bytes; reading a file
//! back costs far less than decompressing, writing and flushing it. The
//! kept file's metadata is applied again. Files of hard link groups have
//! more than one link and are always written again (and linked again).
//! `RestoreStats::skipped` counts the files kept.
//!
//! # Order
//!
//! Directories are created first (owner-only) and get their own metadata
//! last, deepest first, so writing into them never fails on their final mode
//! and never disturbs their mtime. Hard links are made once every file is
//! in place.

mod fsops;
mod write;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::bounded;
use rustix::fs::{AtFlags, FileType, Mode, linkat, mknodat, statat, symlinkat};
use serde::Serialize;

use crate::commands::owners::OwnerMap;
use crate::error::{Error, IoContext, Result};
use crate::format::names::check_name;
use crate::format::tree::{FileTime, Kind};
use crate::ids::TreeId;
use crate::repo::Repository;
use crate::repo::catalog::{Catalog, Node};
use crate::repo::paths::{Located, locate};
use fsops::{
    apply_meta_at, apply_meta_fd, io_at, join, make_dir, open_dir, open_target, remove_leftovers,
    replace, tmp_name,
};
use write::{BIG_FILE, Dest, DirFd, GROUP_BYTES, GROUP_FILES, Job, SMALL_FILE, Shared};

#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreStats {
    pub snapshot: String,
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub bytes: u64,
    /// Files already complete in the target (see "Resuming" above).
    pub skipped: u64,
    pub seconds: f64,
}

/// Split `SNAPSHOT[:PATH]` at the first colon (snapshot names have none;
/// the path may, and may be any bytes).
pub fn parse_spec(spec: &OsStr) -> (String, Option<PathBuf>) {
    let b = spec.as_bytes();
    match b.iter().position(|&c| c == b':') {
        Some(i) => {
            let snap = String::from_utf8_lossy(&b[..i]).into_owned();
            let path = &b[i + 1..];
            (
                snap,
                (!path.is_empty()).then(|| PathBuf::from(OsStr::from_bytes(path))),
            )
        }
        None => (String::from_utf8_lossy(b).into_owned(), None),
    }
}

/// Restore `spec` into `target`. Files go to the users and groups of the
/// names the snapshot recorded, unless `numeric_owner` keeps the ids.
pub fn restore(
    repo: &Repository,
    spec: &OsStr,
    target: &Path,
    numeric_owner: bool,
) -> Result<RestoreStats> {
    let t0 = Instant::now();
    raise_fd_limit();
    let cat = repo.catalog()?;
    cat.hold_read_snapshot()?;
    let (snap_ref, inner) = parse_spec(spec);
    let snap = crate::repo::refs::resolve(&cat, &snap_ref)?;
    let inner = inner.unwrap_or_else(|| PathBuf::from("/"));
    let owners = OwnerMap::new(&snap.owners, numeric_owner);
    let mut located = locate(&cat, snap.root_tree, &snap.name, &inner)?;
    if let Located::Entry(n) = &mut located {
        owners.apply(n);
    }
    let mut stats = RestoreStats {
        snapshot: snap.name.clone(),
        ..Default::default()
    };

    // Where the restored entry goes: the target directory itself (a whole
    // snapshot or a directory), or one name inside a directory.
    let (root_dir, top_name, root_shown): (OwnedFd, Option<Vec<u8>>, PathBuf) = match &located {
        Located::Entry(n) if n.kind != Kind::Dir => {
            if target.is_dir() {
                (
                    open_target(target)?,
                    Some(n.name.clone()),
                    target.to_path_buf(),
                )
            } else {
                let name = target.file_name().ok_or_else(|| {
                    Error::invalid(format!(
                        "{}: not a file name to restore to",
                        target.display()
                    ))
                })?;
                let parent = match target.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                std::fs::create_dir_all(parent).at(parent)?;
                (
                    open_target(parent)?,
                    Some(name.as_bytes().to_vec()),
                    parent.to_path_buf(),
                )
            }
        }
        _ => {
            std::fs::create_dir_all(target).at(target)?;
            (open_target(target)?, None, target.to_path_buf())
        }
    };
    let root_dir: DirFd = Arc::new(root_dir);
    let removed = remove_leftovers(root_dir.as_fd(), &root_shown)?;

    // One fixed pool for the whole restore, big files included (they are
    // cut into parts for it), and one committer that mostly waits for the
    // disk: nothing else starts threads.
    // Where each read waits on a network round trip (object storage), more
    // readers than cores keep the link busy.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers = pool_size(cores.max(repo.backend.parallel_reads()));
    let (tx, rx) = bounded::<Job>(workers * 4);
    let shared = Shared::default();
    let whole = matches!(located, Located::Root(_));
    let progress =
        crate::commands::progress::Progress::new("restore", "files", whole.then_some(snap.size));
    let mut planner = Planner {
        cat: &cat,
        snapshot: &snap.name,
        owners: &owners,
        tx: Some(tx),
        shared: &shared,
        first_link: HashMap::new(),
        links: Vec::new(),
        dirs: 0,
        leftovers: removed,
        merge: crate::repo::coalesce::Span::of(repo).is_some(),
        group: Vec::new(),
        group_bytes: 0,
    };
    // Bounded too: a committer that falls behind slows the workers down
    // instead of holding descriptors without limit.
    let (done_tx, done_rx) = bounded::<(write::Written, u64)>(4096);
    let planned = std::thread::scope(|scope| {
        for _ in 0..workers {
            let rx = rx.clone();
            let batch = write::Batch {
                tx: done_tx.clone(),
            };
            let (shared, progress) = (&shared, &progress);
            scope.spawn(move || write::worker(repo, rx, batch, shared, progress));
        }
        drop(rx);
        drop(done_tx);
        let shared_ref = &shared;
        scope.spawn(move || write::committer(done_rx, shared_ref));
        let mut rel = Vec::new();
        let r = (|| match &located {
            Located::Root(tree) => planner.dir(*tree, &root_dir, &mut rel, &root_shown, &inner),
            Located::Entry(n) => {
                let snap_parent = inner.parent().unwrap_or(Path::new("/")).to_path_buf();
                match &top_name {
                    Some(name) => planner.node(
                        n.as_ref().clone(),
                        name,
                        &root_dir,
                        &mut rel,
                        &root_shown,
                        &snap_parent,
                    ),
                    None => {
                        let tree = subtree(&snap.name, &inner, n)?;
                        planner.dir(tree, &root_dir, &mut rel, &root_shown, &inner)
                    }
                }
            }
        })();
        let r = r.and_then(|()| planner.send_group());
        // Closing the channel lets the workers finish and the scope end.
        planner.tx = None;
        r
    });
    if let Err(e) = planned {
        shared.fail(e);
    }
    if let Some(e) = shared.failure.lock().expect("failure lock").take() {
        return Err(e);
    }
    stats.dirs = planner.dirs;
    if planner.leftovers > 0 {
        log::info!(
            "removed {} temporary file(s) left by an earlier restore",
            planner.leftovers
        );
    }
    for (first, member) in &planner.links {
        make_link(&root_dir, first, member, &root_shown)?;
        stats.links += 1;
    }
    // Directory metadata last, deepest first, once nothing more is written inside.
    match &located {
        Located::Root(tree) => finish_dirs(
            &cat,
            &snap.name,
            &owners,
            *tree,
            root_dir.as_fd(),
            &root_shown,
            &inner,
        )?,
        Located::Entry(n) if n.kind == Kind::Dir => {
            let tree = subtree(&snap.name, &inner, n)?;
            finish_dirs(
                &cat,
                &snap.name,
                &owners,
                tree,
                root_dir.as_fd(),
                &root_shown,
                &inner,
            )?;
            apply_meta_fd(root_dir.as_fd(), n, &root_shown)?;
        }
        Located::Entry(_) => {}
    }
    stats.files = shared.files.load(Ordering::Relaxed);
    stats.bytes = shared.bytes.load(Ordering::Relaxed);
    stats.skipped = shared.skipped.load(Ordering::Relaxed);
    stats.seconds = t0.elapsed().as_secs_f64();
    Ok(stats)
}

/// Most writer threads a restore runs: each decodes at over 1 GB/s, so
/// more than this outruns any disk and only adds memory (each holds chunk
/// buffers and a catalog connection).
const MAX_WORKERS: usize = 16;

/// Writer threads for `cores` cores: one per core, at least two so that
/// one slow file (a big one, one on a slow disk) never holds up the rest.
fn pool_size(cores: usize) -> usize {
    cores.clamp(2, MAX_WORKERS)
}

/// Name the snapshot and directory in an error of listing it (a damaged
/// or tampered page says only what is wrong with it).
fn in_listing<'a>(snapshot: &'a str, dir: &'a Path) -> impl FnOnce(Error) -> Error + 'a {
    move |e| match e {
        Error::Corrupt(m) => Error::corrupt(format!(
            "snapshot {snapshot}: directory {}: {m}",
            dir.display()
        )),
        e => e,
    }
}

/// A directory entry's tree, or a clear error for a row without one.
fn subtree(snapshot: &str, path: &Path, n: &Node) -> Result<TreeId> {
    n.subtree.ok_or_else(|| {
        Error::corrupt(format!(
            "snapshot {snapshot}: directory {} has no tree",
            path.display()
        ))
    })
}

/// Deep trees hold one descriptor per level while they are walked: allow
/// as many as the hard limit does.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Names from the restore's root directory down to an entry.
type RelPath = Vec<Vec<u8>>;

struct Planner<'a> {
    cat: &'a Catalog,
    snapshot: &'a str,
    owners: &'a OwnerMap,
    /// The workers' channel; None once planning is over.
    tx: Option<crossbeam_channel::Sender<Job>>,
    shared: &'a Shared,
    first_link: HashMap<u64, RelPath>,
    /// (first member, other member) of each hard link to make at the end.
    links: Vec<(RelPath, RelPath)>,
    dirs: u64,
    leftovers: usize,
    /// Whether small files go to workers in groups whose reads are merged
    /// (a repository in a bucket; see `repo::coalesce`).
    merge: bool,
    /// The group being gathered, and its bytes.
    group: Vec<(Dest, Node)>,
    group_bytes: u64,
}

impl Planner<'_> {
    /// Restore the entries of `tree` into `dir`. `shown` is the directory in
    /// the target and `snap_path` the same directory inside the snapshot
    /// (for messages).
    fn dir(
        &mut self,
        tree: TreeId,
        dir: &DirFd,
        rel: &mut RelPath,
        shown: &Path,
        snap_path: &Path,
    ) -> Result<()> {
        let _level = crate::format::tree::descend(|| snap_path.display().to_string())?;
        // Paging starts after the empty name, so an entry with an empty
        // name would be skipped without a word: look for one on purpose.
        let named = in_listing(self.snapshot, snap_path);
        if self.cat.entry(tree, b"").map_err(named)?.is_some() {
            check_name(self.snapshot, snap_path, b"")?;
        }
        // Page through big directories instead of loading them whole.
        let mut after: Option<Vec<u8>> = None;
        loop {
            let batch = self
                .cat
                .entries_after(tree, after.as_deref(), 1024)
                .map_err(in_listing(self.snapshot, snap_path))?;
            let Some(last) = batch.last() else { break };
            after = Some(last.name.clone());
            for mut n in batch {
                if self.shared.stopped() {
                    return Ok(());
                }
                self.owners.apply(&mut n);
                check_name(self.snapshot, snap_path, &n.name)?;
                let name = n.name.clone();
                self.node(n, &name, dir, rel, shown, snap_path)?;
            }
        }
        Ok(())
    }

    /// Restore one entry as `name` inside `dir` (already checked).
    fn node(
        &mut self,
        n: Node,
        name: &[u8],
        dir: &DirFd,
        rel: &mut RelPath,
        parent_shown: &Path,
        snap_parent: &Path,
    ) -> Result<()> {
        let shown = join(parent_shown, name);
        match n.kind {
            Kind::Dir => {
                let snap_path = join(snap_parent, name);
                let tree = subtree(self.snapshot, &snap_path, &n)?;
                let (child, reused) = make_dir(dir.as_fd(), name, &shown)?;
                if reused {
                    self.leftovers += remove_leftovers(child.as_fd(), &shown)?;
                }
                self.dirs += 1;
                rel.push(name.to_vec());
                let r = self.dir(tree, &Arc::new(child), rel, &shown, &snap_path);
                rel.pop();
                r
            }
            Kind::File => {
                if n.link_key != 0 {
                    let mut me = rel.clone();
                    me.push(name.to_vec());
                    if let Some(first) = self.first_link.get(&n.link_key) {
                        self.links.push((first.clone(), me));
                        return Ok(());
                    }
                    self.first_link.insert(n.link_key, me);
                }
                let dest = Dest {
                    dir: dir.clone(),
                    name: name.to_vec(),
                    shown,
                };
                if looks_complete(dir.as_fd(), name, &n) {
                    return self.send(Job::Verify { dest, node: n });
                }
                if n.meta.size >= BIG_FILE {
                    match write::plan_big(self.cat, dest, n)? {
                        Ok(parts) => {
                            for p in parts {
                                self.send(p)?;
                            }
                            return Ok(());
                        }
                        Err((dest, node)) => return self.send(Job::Write { dest, node }),
                    }
                }
                if self.merge && n.meta.size < SMALL_FILE {
                    self.group_bytes += n.meta.size;
                    self.group.push((dest, n));
                    if self.group.len() >= GROUP_FILES || self.group_bytes >= GROUP_BYTES {
                        self.send_group()?;
                    }
                    return Ok(());
                }
                self.send(Job::Write { dest, node: n })
            }
            Kind::Symlink => {
                let tmp = tmp_name();
                let target = n.target.clone().unwrap_or_default();
                io_at(
                    symlinkat(target.as_slice(), dir.as_fd(), tmp.as_slice()),
                    &shown,
                )?;
                self.finish_node(dir.as_fd(), &tmp, name, &n, &shown)
            }
            Kind::Fifo | Kind::CharDev | Kind::BlockDev => {
                let tmp = tmp_name();
                let ft = match n.kind {
                    Kind::Fifo => FileType::Fifo,
                    Kind::CharDev => FileType::CharacterDevice,
                    _ => FileType::BlockDevice,
                };
                io_at(
                    mknodat(
                        dir.as_fd(),
                        tmp.as_slice(),
                        ft,
                        Mode::from_raw_mode(0o600),
                        n.meta.rdev,
                    ),
                    &shown,
                )?;
                self.finish_node(dir.as_fd(), &tmp, name, &n, &shown)
            }
        }
    }

    /// Metadata on a node made under `tmp`, then the node under its name.
    fn finish_node(
        &self,
        dir: BorrowedFd,
        tmp: &[u8],
        name: &[u8],
        n: &Node,
        shown: &Path,
    ) -> Result<()> {
        if let Err(e) = apply_meta_at(dir, tmp, n, shown) {
            let _ = rustix::fs::unlinkat(dir, tmp, AtFlags::empty());
            return Err(e);
        }
        replace(dir, tmp, name, shown)
    }

    /// Hand the small files gathered so far to a worker.
    fn send_group(&mut self) -> Result<()> {
        self.group_bytes = 0;
        let group = std::mem::take(&mut self.group);
        match group.len() {
            0 => Ok(()),
            _ => self.send(Job::Files(group)),
        }
    }

    fn send(&self, job: Job) -> Result<()> {
        self.tx
            .as_ref()
            .ok_or_else(|| Error::invalid("restore planning is over"))?
            .send(job)
            .map_err(|_| Error::invalid("restore workers stopped"))
    }
}

/// Cheap first test of resume: a regular file (not followed) with the
/// snapshot's size and mtime. The worker then reads and hashes it.
fn looks_complete(dir: BorrowedFd, name: &[u8], n: &Node) -> bool {
    let Ok(st) = statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
        return false;
    };
    let mtime = FileTime::from_stat(st.st_mtime, st.st_mtime_nsec as i64);
    FileType::from_raw_mode(st.st_mode).is_file()
        && u64::try_from(st.st_size).is_ok_and(|s| s == n.meta.size)
        && mtime == n.meta.mtime
}

/// Open the directory holding `rel`'s last name, from `root`, one name at
/// a time and never through a symlink.
fn walk_to<'p>(root: &DirFd, rel: &'p RelPath, shown: &Path) -> Result<(DirFd, &'p [u8], PathBuf)> {
    let (name, dirs) = rel
        .split_last()
        .ok_or_else(|| Error::invalid("hard link without a name"))?;
    let mut dir = root.clone();
    let mut path = shown.to_path_buf();
    for d in dirs {
        path.push(OsStr::from_bytes(d));
        dir = Arc::new(open_dir(dir.as_fd(), d, &path)?);
    }
    path.push(OsStr::from_bytes(name));
    Ok((dir, name, path))
}

/// Make `member` another name of `first` (made under a temporary name and
/// renamed, so an entry in the way is replaced, not followed). linkat with
/// no flags does not follow `first` if it is a symlink.
fn make_link(root: &DirFd, first: &RelPath, member: &RelPath, shown: &Path) -> Result<()> {
    let (fdir, fname, _) = walk_to(root, first, shown)?;
    let (mdir, mname, mshown) = walk_to(root, member, shown)?;
    let same =
        |a: &rustix::fs::Stat, b: &rustix::fs::Stat| a.st_dev == b.st_dev && a.st_ino == b.st_ino;
    if let (Ok(a), Ok(b)) = (
        statat(fdir.as_fd(), fname, AtFlags::SYMLINK_NOFOLLOW),
        statat(mdir.as_fd(), mname, AtFlags::SYMLINK_NOFOLLOW),
    ) && same(&a, &b)
    {
        return Ok(());
    }
    let tmp = tmp_name();
    io_at(
        linkat(
            fdir.as_fd(),
            fname,
            mdir.as_fd(),
            tmp.as_slice(),
            AtFlags::empty(),
        ),
        &mshown,
    )?;
    replace(mdir.as_fd(), &tmp, mname, &mshown)
}

/// Apply each directory's metadata after its contents, deepest first, on
/// descriptors opened without following symlinks.
fn finish_dirs(
    cat: &Catalog,
    snapshot: &str,
    owners: &OwnerMap,
    tree: TreeId,
    dir: BorrowedFd,
    shown: &Path,
    snap_path: &Path,
) -> Result<()> {
    let _level = crate::format::tree::descend(|| snap_path.display().to_string())?;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let batch = cat
            .entries_after(tree, after.as_deref(), 1024)
            .map_err(in_listing(snapshot, snap_path))?;
        let Some(last) = batch.last() else { break };
        after = Some(last.name.clone());
        for mut n in batch.into_iter().filter(|n| n.kind == Kind::Dir) {
            owners.apply(&mut n);
            check_name(snapshot, snap_path, &n.name)?;
            let p = join(shown, &n.name);
            let sp = join(snap_path, &n.name);
            let child = open_dir(dir, &n.name, &p)?;
            finish_dirs(
                cat,
                snapshot,
                owners,
                subtree(snapshot, &sp, &n)?,
                child.as_fd(),
                &p,
                &sp,
            )?;
            apply_meta_fd(child.as_fd(), &n, &p)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_pool_is_bounded_whatever_the_core_count() {
        assert_eq!(pool_size(1), 2);
        assert_eq!(pool_size(2), 2);
        assert_eq!(pool_size(8), 8);
        assert_eq!(pool_size(256), MAX_WORKERS);
    }

    #[test]
    fn spec_splits_at_the_first_colon() {
        let p = |s: &str| parse_spec(OsStr::new(s));
        assert_eq!(p("latest"), ("latest".into(), None));
        assert_eq!(
            p("s1:/etc/a:b"),
            ("s1".into(), Some(PathBuf::from("/etc/a:b")))
        );
        assert_eq!(p("s1:"), ("s1".into(), None));
        let odd = parse_spec(OsStr::from_bytes(b"s1:/caf\xe9"));
        assert_eq!(odd.1.unwrap().as_os_str().as_bytes(), b"/caf\xe9");
    }
}
