//! `snapfs restore`: a snapshot (or a path inside it) out to a directory, in
//! parallel, with full metadata: owner, mode, times in ns, xattrs and ACLs,
//! hard links, symlinks, devices, fifos, and holes where the data was zeros.
//!
//! Directories are created first and get their own metadata last (post-order),
//! so writing into them never fails on their final mode and never disturbs
//! their mtime.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use crossbeam_channel::bounded;
use serde::Serialize;

use crate::catalog::{Catalog, Node};
use crate::error::{Error, IoContext, Result};
use crate::ids::{ContentId, TreeId};
use crate::repo::Repository;
use crate::store::FRAME;
use crate::tree::{Kind, Meta, decode_xattrs};

#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreStats {
    pub snapshot: String,
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub bytes: u64,
    pub seconds: f64,
}

struct FileJob {
    path: PathBuf,
    content: Option<ContentId>,
    node: Node,
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

/// What a path inside a snapshot names: the snapshot root or one entry.
pub enum Located {
    Root(TreeId),
    Entry(Node),
}

pub fn locate(cat: &Catalog, root: TreeId, snapshot: &str, path: &Path) -> Result<Located> {
    let mut tree = root;
    let mut found: Option<Node> = None;
    for c in path.components() {
        let std::path::Component::Normal(name) = c else {
            continue;
        };
        if let Some(n) = &found {
            tree = n.subtree.ok_or_else(|| Error::NoSuchPath {
                snapshot: snapshot.into(),
                path: path.into(),
            })?;
        }
        found = Some(
            cat.entry(tree, name.as_bytes())?
                .ok_or_else(|| Error::NoSuchPath {
                    snapshot: snapshot.into(),
                    path: path.into(),
                })?,
        );
    }
    Ok(match found {
        Some(n) => Located::Entry(n),
        None => Located::Root(root),
    })
}

pub fn restore(repo: &Repository, spec: &OsStr, target: &Path) -> Result<RestoreStats> {
    let t0 = Instant::now();
    let cat = repo.catalog()?;
    let (snap_ref, inner) = parse_spec(spec);
    let snap = crate::snapshot::resolve(&cat, &snap_ref)?;
    let inner = inner.unwrap_or_else(|| PathBuf::from("/"));
    let located = locate(&cat, snap.root_tree, &snap.name, &inner)?;
    let mut stats = RestoreStats {
        snapshot: snap.name.clone(),
        ..Default::default()
    };
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let (tx, rx) = bounded::<FileJob>(workers * 4);
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    let done = Mutex::new((0u64, 0u64));
    let whole = matches!(located, Located::Root(_));
    let progress = crate::progress::Progress::new("restore", "files", whole.then_some(snap.size));
    let progress = &progress;
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    std::thread::scope(|scope| -> Result<()> {
        for _ in 0..workers {
            let rx = rx.clone();
            let failure = &failure;
            let done = &done;
            scope.spawn(move || {
                let cat = match repo.catalog() {
                    Ok(c) => c,
                    Err(e) => {
                        failure.lock().expect("failure lock").get_or_insert(e);
                        return;
                    }
                };
                for job in rx {
                    match write_file(repo, &cat, &job) {
                        Ok(n) => {
                            progress.bytes(n);
                            progress.item();
                            let mut d = done.lock().expect("counter lock");
                            d.0 += 1;
                            d.1 += n;
                        }
                        Err(e) => {
                            failure.lock().expect("failure lock").get_or_insert(e);
                        }
                    }
                }
            });
        }
        let res = (|| -> Result<()> {
            let mut first_link: HashMap<u64, PathBuf> = HashMap::new();
            let mut walker = Planner {
                cat: &cat,
                tx: &tx,
                first_link: &mut first_link,
                links: &mut links,
                stats: &mut stats,
                failure: &failure,
            };
            match &located {
                Located::Root(tree) => {
                    std::fs::create_dir_all(target).at(target)?;
                    walker.dir(*tree, target)?;
                }
                Located::Entry(n) => {
                    let dest = if n.kind != Kind::Dir && target.is_dir() {
                        target.join(OsStr::from_bytes(&n.name))
                    } else {
                        target.to_path_buf()
                    };
                    if let Some(p) = dest.parent() {
                        std::fs::create_dir_all(p).at(p)?;
                    }
                    walker.node(n.clone(), dest)?;
                }
            }
            Ok(())
        })();
        drop(tx);
        res
    })?;
    if let Some(e) = failure.into_inner().expect("failure lock") {
        return Err(e);
    }
    for (first, path) in &links {
        let _ = std::fs::remove_file(path);
        std::fs::hard_link(first, path).at(path)?;
        stats.links += 1;
    }
    // Directory metadata last, deepest first, once nothing more is written inside.
    match &located {
        Located::Root(tree) => finish_dirs(&cat, *tree, target)?,
        Located::Entry(n) if n.kind == Kind::Dir => {
            finish_dirs(&cat, n.subtree.expect("directory has a tree"), target)?;
            apply_meta(target, n)?;
        }
        Located::Entry(_) => {}
    }
    let d = done.into_inner().expect("counter lock");
    stats.files += d.0;
    stats.bytes += d.1;
    stats.seconds = t0.elapsed().as_secs_f64();
    Ok(stats)
}

struct Planner<'a> {
    cat: &'a Catalog,
    tx: &'a crossbeam_channel::Sender<FileJob>,
    first_link: &'a mut HashMap<u64, PathBuf>,
    links: &'a mut Vec<(PathBuf, PathBuf)>,
    stats: &'a mut RestoreStats,
    failure: &'a Mutex<Option<Error>>,
}

impl Planner<'_> {
    fn dir(&mut self, tree: TreeId, path: &Path) -> Result<()> {
        // Page through big directories instead of loading them whole.
        let mut after: Option<Vec<u8>> = None;
        loop {
            let batch = self.cat.entries_after(tree, after.as_deref(), 1024)?;
            let Some(last) = batch.last() else { break };
            after = Some(last.name.clone());
            for n in batch {
                let p = path.join(OsStr::from_bytes(&n.name));
                self.node(n, p)?;
            }
            if self.failure.lock().expect("failure lock").is_some() {
                break;
            }
        }
        Ok(())
    }

    fn node(&mut self, n: Node, path: PathBuf) -> Result<()> {
        match n.kind {
            Kind::Dir => {
                match std::fs::create_dir(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
                    Err(e) => return Err(e).at(&path),
                }
                // Owner-writable until its real mode is applied at the end.
                set_mode(&path, 0o700)?;
                self.stats.dirs += 1;
                self.dir(n.subtree.expect("directory has a tree"), &path)
            }
            Kind::File => {
                if n.link_key != 0 {
                    if let Some(first) = self.first_link.get(&n.link_key) {
                        self.links.push((first.clone(), path));
                        return Ok(());
                    }
                    self.first_link.insert(n.link_key, path.clone());
                }
                let job = FileJob {
                    path,
                    content: n.content,
                    node: n,
                };
                self.tx
                    .send(job)
                    .map_err(|_| Error::invalid("restore workers stopped"))
            }
            Kind::Symlink => {
                remove_existing(&path);
                let target = n.target.clone().unwrap_or_default();
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path).at(&path)?;
                apply_meta(&path, &n)
            }
            Kind::Fifo | Kind::CharDev | Kind::BlockDev => {
                remove_existing(&path);
                let c = cpath(&path)?;
                // SAFETY: valid C string; mknod only creates a node.
                if unsafe { libc::mknod(c.as_ptr(), n.meta.mode, n.meta.rdev as libc::dev_t) } != 0
                {
                    return Err(std::io::Error::last_os_error()).at(&path);
                }
                apply_meta(&path, &n)
            }
        }
    }
}

fn remove_existing(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok() {
        let _ = std::fs::remove_file(path);
    }
}

/// Write one file's bytes, leaving holes where whole frames are zeros, then
/// its metadata. Returns the bytes written.
fn write_file(repo: &Repository, cat: &Catalog, job: &FileJob) -> Result<u64> {
    remove_existing(&job.path);
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&job.path)
        .at(&job.path)?;
    let mut offset = 0u64;
    if let Some(cid) = job.content {
        let list = cat.content(cid)?;
        let mut work = Vec::with_capacity(list.len());
        for c in list.iter() {
            let loc = cat.chunk_loc(&c.id)?.ok_or_else(|| {
                Error::corrupt(format!("chunk {} is missing from the catalog", c.id))
            })?;
            work.push((c.id, loc, offset));
            offset += u64::from(c.len);
        }
        // A big file is decoded on every core (each thread takes every n-th
        // chunk and writes it at its place); small ones stay on this thread.
        let threads = if work.len() >= 4 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            1
        };
        let put = |t: usize| -> Result<()> {
            for (id, loc, at) in work.iter().skip(t).step_by(threads) {
                let data = repo
                    .read_chunk(id, loc)
                    .map_err(|e| Error::corrupt(format!("{}: {e}", job.path.display())))?;
                write_sparse(&f, &data, *at).at(&job.path)?;
            }
            Ok(())
        };
        if threads == 1 {
            put(0)?;
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads).map(|t| s.spawn(move || put(t))).collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("restore thread panicked"))
                    .collect::<Result<Vec<()>>>()
            })?;
        }
    }
    f.set_len(offset).at(&job.path)?;
    drop(f);
    apply_meta(&job.path, &job.node)?;
    Ok(offset)
}

fn write_sparse(f: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + FRAME).min(data.len());
        let block = &data[pos..end];
        if block.iter().any(|&b| b != 0) {
            f.write_all_at(block, offset + pos as u64)?;
        }
        pos = end;
    }
    Ok(())
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::invalid("path contains NUL"))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    let c = cpath(path)?;
    // SAFETY: valid C string.
    if unsafe { libc::chmod(c.as_ptr(), mode) } != 0 {
        return Err(std::io::Error::last_os_error()).at(path);
    }
    Ok(())
}

/// xattrs, then owner, then mode (chown clears set-id bits), then times.
pub fn apply_meta(path: &Path, n: &Node) -> Result<()> {
    let c = cpath(path)?;
    let m: &Meta = &n.meta;
    for (k, v) in decode_xattrs(&n.xattrs)? {
        if let Err(e) = xattr::set(path, OsStr::from_bytes(&k), &v) {
            log::warn!(
                "{}: cannot set extended attribute {}: {e}",
                path.display(),
                String::from_utf8_lossy(&k)
            );
        }
    }
    // SAFETY: valid C string; lchown never follows a symlink.
    if unsafe { libc::lchown(c.as_ptr(), m.uid, m.gid) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EPERM) {
            return Err(e).at(path);
        }
        log::debug!("{}: cannot restore owner: {e}", path.display());
    }
    if n.kind != Kind::Symlink {
        set_mode(path, m.mode & 0o7777)?;
    }
    let ts = |ns: i64| libc::timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000),
    };
    let times = [ts(m.atime_ns), ts(m.mtime_ns)];
    // SAFETY: valid C string and a two-element timespec array.
    if unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error()).at(path);
    }
    Ok(())
}

fn finish_dirs(cat: &Catalog, tree: TreeId, path: &Path) -> Result<()> {
    let mut after: Option<Vec<u8>> = None;
    loop {
        let batch = cat.entries_after(tree, after.as_deref(), 1024)?;
        let Some(last) = batch.last() else { break };
        after = Some(last.name.clone());
        for n in batch.into_iter().filter(|n| n.kind == Kind::Dir) {
            let p = path.join(OsStr::from_bytes(&n.name));
            finish_dirs(cat, n.subtree.expect("directory has a tree"), &p)?;
            apply_meta(&p, &n)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
