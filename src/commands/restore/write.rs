//! The workers that write regular files: a fixed pool, fed through a bounded
//! channel, so the number of threads is the number of cores whatever the
//! mix of files (a big file is cut into parts that several workers share,
//! instead of each big file starting threads of its own).
//!
//! A file is written under a temporary name, gets its metadata on the
//! descriptor, and goes to the committer, which gathers files into batches.
//! A batch is made durable with one `syncfs` and only then renamed to the
//! final names, so a name that a restore puts in place always holds complete
//! data, even after a power cut, while the cost of flushing is paid once per
//! batch rather than per file, and off the workers' path.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, Mode, OFlags, openat, unlinkat};

use super::fsops::{apply_meta_fd, io_at, replace, tmp_name};
use crate::error::{Error, IoContext, Result};
use crate::format::blob::{FRAME, Keying};
use crate::format::tree::{ContentRef, FileTime};
use crate::ids::ChunkId;
use crate::repo::Repository;
use crate::repo::catalog::{Catalog, ChunkLoc, Node};
use crate::repo::coalesce::{self, Span};

/// A directory of the target, shared by the jobs of the files inside it.
pub type DirFd = Arc<OwnedFd>;

/// Files at least this big are cut into parts for several workers.
pub const BIG_FILE: u64 = 8 << 20;
/// Chunks per part of a big file (about 4 MiB each at the average chunk).
const PART_CHUNKS: usize = 4;
/// Files smaller than this go to workers in groups (`Job::Files`) where
/// reads are merged: a small file is one chunk, and its neighbours in the
/// directory are usually its neighbours in the pack.
pub const SMALL_FILE: u64 = 1 << 20;
/// A group holds at most this many files ...
pub const GROUP_FILES: usize = 128;
/// ... or this many bytes (one merged read's worth).
pub const GROUP_BYTES: u64 = 4 << 20;
/// A batch is flushed when it holds this many files ...
const BATCH_FILES: usize = 512;
/// ... or this many bytes.
const BATCH_BYTES: u64 = 128 << 20;

/// Where a file goes: its directory, its final name, and how to name it in
/// messages.
pub struct Dest {
    pub dir: DirFd,
    pub name: Vec<u8>,
    pub shown: PathBuf,
}

/// One piece of work for a worker.
pub enum Job {
    /// Write a whole file.
    Write { dest: Dest, node: Node },
    /// Write several small files whose chunks are read in merged runs
    /// (object storage, see `repo::coalesce`).
    Files(Vec<(Dest, Node)>),
    /// A file with the snapshot's size and mtime is already there: keep it
    /// if its bytes hash to the snapshot's chunks, else write it.
    Verify { dest: Dest, node: Node },
    /// Chunks `start..end` of a big file.
    Part {
        file: Arc<BigFile>,
        start: usize,
        end: usize,
    },
}

/// A big file being written by several workers; the one that finishes the
/// last part completes it.
pub struct BigFile {
    dest: Dest,
    node: Node,
    tmp: Vec<u8>,
    file: File,
    work: Vec<(ChunkId, ChunkLoc, u64)>,
    size: u64,
    parts_left: AtomicUsize,
    failed: AtomicBool,
}

/// What the pool shares: the first error, the stop flag, counters.
#[derive(Default)]
pub struct Shared {
    pub failure: Mutex<Option<Error>>,
    pub stop: AtomicBool,
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub skipped: AtomicU64,
}

impl Shared {
    pub fn fail(&self, e: Error) {
        self.stop.store(true, Ordering::SeqCst);
        self.failure.lock().expect("failure lock").get_or_insert(e);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// The chunks of a content with the offset of each, offsets checked (the
/// list comes from the catalog).
fn chunk_work(
    cat: &Catalog,
    cid: ContentRef,
    shown: &Path,
) -> Result<Vec<(ChunkId, ChunkLoc, u64)>> {
    let list = cat.content(&cid)?;
    let mut work: Vec<(ChunkId, ChunkLoc, u64)> = Vec::with_capacity(list.len());
    let mut offset = 0u64;
    for c in list.iter() {
        // A hole is a long run of one zero chunk: look it up once.
        let loc = match work.last() {
            Some((id, loc, _)) if *id == c.id => loc.clone(),
            _ => cat.chunk_loc(&c.id)?.ok_or_else(|| {
                Error::corrupt(format!("chunk {} is missing from the catalog", c.id))
            })?,
        };
        work.push((c.id, loc, offset));
        offset = offset
            .checked_add(u64::from(c.len))
            .ok_or_else(|| Error::corrupt(format!("{}: file size overflows", shown.display())))?;
    }
    Ok(work)
}

fn total(work: &[(ChunkId, ChunkLoc, u64)]) -> u64 {
    work.last()
        .map_or(0, |(_, loc, at)| at.saturating_add(u64::from(loc.raw_len)))
}

/// A new temporary file in `dir`, owner-only, never through a symlink.
fn create_tmp(dir: BorrowedFd, shown: &Path) -> Result<(Vec<u8>, File)> {
    let tmp = tmp_name();
    let fd = io_at(
        openat(
            dir,
            tmp.as_slice(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ),
        shown,
    )?;
    Ok((tmp, File::from(fd)))
}

/// Write chunk `id` at `at`: from `fetched` if a merged read brought it
/// (decoded and verified), else read now.
fn write_chunk(
    repo: &Repository,
    f: &File,
    (id, loc, at): (&ChunkId, &ChunkLoc, u64),
    fetched: Option<Vec<u8>>,
    shown: &Path,
) -> Result<u64> {
    // A chunk of zeros stays a hole: nothing to read, decode or write (the
    // file gets its full length at the end).
    if repo.keying.is_zero_chunk(id, loc.raw_len, loc.stored_len) {
        return Ok(u64::from(loc.raw_len));
    }
    let data = match fetched {
        Some(d) => d,
        None => repo
            .read_chunk(id, loc)
            .map_err(|e| Error::corrupt(format!("{}: {e}", shown.display())))?,
    };
    write_sparse(f, &data, at).at(shown)?;
    Ok(data.len() as u64)
}

/// The chunks of `work` (those that are not holes) read in merged runs:
/// one entry per item of `work`, None where the chunk is to be read alone.
fn fetch_merged(
    repo: &Repository,
    work: &[(ChunkId, ChunkLoc, u64)],
    span: Option<Span>,
) -> Vec<Option<Vec<u8>>> {
    let Some(span) = span else {
        return Vec::new();
    };
    let mut index = Vec::new();
    let mut wanted = Vec::new();
    for (k, (id, loc, _)) in work.iter().enumerate() {
        if !repo.keying.is_zero_chunk(id, loc.raw_len, loc.stored_len) {
            index.push(k);
            wanted.push((*id, loc.clone()));
        }
    }
    let mut out: Vec<Option<Vec<u8>>> = vec![None; work.len()];
    for (i, data) in coalesce::read_chunks(repo, &wanted, span) {
        out[index[i]] = Some(data);
    }
    out
}

/// Write only the frames that hold a non-zero byte: the rest stays a hole.
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

/// A file written under its temporary name, waiting for the batch's flush.
pub struct Written {
    dir: DirFd,
    tmp: Vec<u8>,
    name: Vec<u8>,
    shown: PathBuf,
}

/// A worker's way to the committer.
pub struct Batch {
    pub tx: crossbeam_channel::Sender<(Written, u64)>,
}

impl Batch {
    fn push(&mut self, w: Written, bytes: u64) -> Result<()> {
        self.tx.send((w, bytes)).map_err(|e| {
            let (w, _) = e.into_inner();
            let _ = unlinkat(w.dir.as_fd(), w.tmp.as_slice(), AtFlags::empty());
            Error::invalid("restore: the committer stopped")
        })
    }
}

/// The committer: collects written files into batches, makes each batch
/// durable with one `syncfs`, then renames its files to their final names.
/// It runs beside the workers, so they keep writing while a batch is
/// flushed. After a failure the files still waiting are removed.
pub fn committer(rx: crossbeam_channel::Receiver<(Written, u64)>, shared: &Shared) {
    let mut items: Vec<Written> = Vec::new();
    let mut bytes = 0u64;
    let mut failed = false;
    loop {
        let next = rx.recv();
        let closed = next.is_err();
        if let Ok((w, n)) = next {
            items.push(w);
            bytes = bytes.saturating_add(n);
        }
        let full = items.len() >= BATCH_FILES || bytes >= BATCH_BYTES;
        if !(full || closed) {
            continue;
        }
        let batch = std::mem::take(&mut items);
        bytes = 0;
        if failed {
            discard(batch);
        } else if let Err(e) = flush(batch) {
            failed = true;
            shared.fail(e);
        }
        if closed {
            return;
        }
    }
}

/// Make every file durable with one `syncfs`, then give each its final
/// name. On error the temporary names still held are removed.
fn flush(items: Vec<Written>) -> Result<()> {
    let Some(first) = items.first() else {
        return Ok(());
    };
    let mut result = io_at(rustix::fs::syncfs(first.dir.as_fd()), &first.shown);
    for w in &items {
        if result.is_ok() {
            result = replace(w.dir.as_fd(), &w.tmp, &w.name, &w.shown);
        } else {
            let _ = unlinkat(w.dir.as_fd(), w.tmp.as_slice(), AtFlags::empty());
        }
    }
    result
}

fn discard(items: Vec<Written>) {
    for w in items {
        let _ = unlinkat(w.dir.as_fd(), w.tmp.as_slice(), AtFlags::empty());
    }
}

/// One worker: take jobs until the channel closes. After a failure, jobs
/// are drained without work (big files' temporary names are still removed);
/// files already complete go on to the committer, which keeps them unless
/// it failed itself, since they are whole and a rerun can then skip them.
pub fn worker(
    repo: &Repository,
    rx: crossbeam_channel::Receiver<Job>,
    mut batch: Batch,
    shared: &Shared,
    progress: &crate::commands::progress::Progress,
) {
    let span = Span::of(repo);
    let cat = match repo
        .catalog()
        .and_then(|c| c.hold_read_snapshot().map(|()| c))
    {
        Ok(c) => c,
        Err(e) => {
            shared.fail(e);
            for job in rx {
                abandon(job);
            }
            return;
        }
    };
    for job in rx {
        if shared.stopped() {
            abandon(job);
            continue;
        }
        let r = match job {
            Job::Write { dest, node } => chunk_work_of(&cat, &node, &dest.shown).and_then(|work| {
                write_whole(
                    repo,
                    dest,
                    &node,
                    &work,
                    Vec::new(),
                    &mut batch,
                    shared,
                    progress,
                )
            }),
            Job::Files(files) => write_files(repo, &cat, files, span, &mut batch, shared, progress),
            Job::Verify { dest, node } => {
                verify_or_write(repo, &cat, dest, &node, &mut batch, shared, progress)
            }
            Job::Part { file, start, end } => {
                write_part(repo, &file, start, end, span, &mut batch, shared, progress)
            }
        };
        if let Err(e) = r {
            shared.fail(e);
        }
    }
}

/// A job that will not run: a big file's temporary name is removed by
/// whoever gives up its last part.
fn abandon(job: Job) {
    if let Job::Part { file, .. } = job {
        file.failed.store(true, Ordering::SeqCst);
        if file.parts_left.fetch_sub(1, Ordering::SeqCst) == 1 {
            let _ = unlinkat(file.dest.dir.as_fd(), file.tmp.as_slice(), AtFlags::empty());
        }
    }
}

fn count(shared: &Shared, progress: &crate::commands::progress::Progress, bytes: u64) {
    progress.bytes(bytes);
    progress.item();
    shared.files.fetch_add(1, Ordering::Relaxed);
    shared.bytes.fetch_add(bytes, Ordering::Relaxed);
}

/// Where a file's chunks are and where each goes (empty for an empty file).
fn chunk_work_of(
    cat: &Catalog,
    node: &Node,
    shown: &Path,
) -> Result<Vec<(ChunkId, ChunkLoc, u64)>> {
    match node.content {
        Some(cid) => chunk_work(cat, cid, shown),
        None => Ok(Vec::new()),
    }
}

/// A group of small files: every chunk they need read in merged runs
/// first, then each file written as `write_whole` does.
fn write_files(
    repo: &Repository,
    cat: &Catalog,
    files: Vec<(Dest, Node)>,
    span: Option<Span>,
    batch: &mut Batch,
    shared: &Shared,
    progress: &crate::commands::progress::Progress,
) -> Result<()> {
    let mut works = Vec::with_capacity(files.len());
    let mut all = Vec::new();
    for (dest, node) in files {
        let work = chunk_work_of(cat, &node, &dest.shown)?;
        all.extend(work.iter().cloned());
        works.push((dest, node, work));
    }
    let mut fetched = fetch_merged(repo, &all, span).into_iter();
    for (dest, node, work) in works {
        if shared.stopped() {
            return Ok(());
        }
        let mine: Vec<_> = fetched.by_ref().take(work.len()).collect();
        write_whole(repo, dest, &node, &work, mine, batch, shared, progress)?;
    }
    Ok(())
}

/// Write a file from its chunks; `fetched` holds those already read (one
/// entry per chunk, or empty).
#[allow(clippy::too_many_arguments)]
fn write_whole(
    repo: &Repository,
    dest: Dest,
    node: &Node,
    work: &[(ChunkId, ChunkLoc, u64)],
    mut fetched: Vec<Option<Vec<u8>>>,
    batch: &mut Batch,
    shared: &Shared,
    progress: &crate::commands::progress::Progress,
) -> Result<()> {
    let (tmp, f) = create_tmp(dest.dir.as_fd(), &dest.shown)?;
    let written = (|| -> Result<u64> {
        for (k, (id, loc, at)) in work.iter().enumerate() {
            let data = fetched.get_mut(k).and_then(Option::take);
            write_chunk(repo, &f, (id, loc, *at), data, &dest.shown)?;
        }
        let size = total(work);
        f.set_len(size).at(&dest.shown)?;
        apply_meta_fd(f.as_fd(), node, &dest.shown)?;
        Ok(size)
    })();
    drop(f);
    match written {
        Ok(size) => {
            count(shared, progress, size);
            batch.push(
                Written {
                    dir: dest.dir,
                    tmp,
                    name: dest.name,
                    shown: dest.shown,
                },
                size,
            )
        }
        Err(e) => {
            let _ = unlinkat(dest.dir.as_fd(), tmp.as_slice(), AtFlags::empty());
            Err(e)
        }
    }
}

/// Resume: keep a file already under its final name when it is a regular
/// file with one link, the snapshot's size and mtime, and bytes that hash,
/// chunk by chunk, to the snapshot's chunk ids. Its metadata is then applied
/// again (cheap, and it repairs owner or mode changed since). Anything else
/// is written anew and renamed over it.
fn verify_or_write(
    repo: &Repository,
    cat: &Catalog,
    dest: Dest,
    node: &Node,
    batch: &mut Batch,
    shared: &Shared,
    progress: &crate::commands::progress::Progress,
) -> Result<()> {
    let work = chunk_work_of(cat, node, &dest.shown)?;
    if let Some(f) = existing_matches(&repo.keying, dest.dir.as_fd(), &dest.name, node, &work) {
        apply_meta_fd(f.as_fd(), node, &dest.shown)?;
        progress.bytes(total(&work));
        progress.item();
        shared.skipped.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    write_whole(repo, dest, node, &work, Vec::new(), batch, shared, progress)
}

/// Whether an existing file may be kept in place of writing it again: only
/// one that nobody but its rightful owner could have put there, or could
/// still hold open for writing. Restore gives a kept file the snapshot's
/// owner, mode and xattrs; kept blindly, a file another user planted (with
/// the right bytes and mtime, both public for a system binary) and still
/// holds mapped for writing would become setuid root under their hands.
/// So: it must already carry the owner, group and mode the snapshot gives
/// it (a finished earlier run set exactly those), and where the snapshot
/// grants privileges (set-id bits, file capabilities) it must belong to us.
fn may_keep(st: &rustix::fs::Stat, node: &Node) -> bool {
    let me = rustix::process::geteuid().as_raw();
    let m = &node.meta;
    let mine = st.st_uid == me;
    let owner_ok = st.st_uid == m.uid || (me != 0 && mine);
    let group_ok = st.st_gid == m.gid || me != 0;
    let mode_ok = st.st_mode & 0o7777 == m.mode & 0o7777;
    let privileged = m.mode & 0o6000 != 0
        || crate::format::tree::decode_xattrs(&node.xattrs)
            .map_or(true, |x| x.iter().any(|(k, _)| k.starts_with(b"security.")));
    owner_ok && group_ok && mode_ok && (!privileged || mine)
}

/// The existing file, opened, if it holds exactly the snapshot's bytes.
fn existing_matches(
    keying: &Keying,
    dir: BorrowedFd,
    name: &[u8],
    node: &Node,
    work: &[(ChunkId, ChunkLoc, u64)],
) -> Option<File> {
    let fd = openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    let mtime = FileTime::from_stat(st.st_mtime, st.st_mtime_nsec as i64);
    let regular = rustix::fs::FileType::from_raw_mode(st.st_mode).is_file();
    if !regular
        || st.st_nlink != 1
        || !may_keep(&st, node)
        || u64::try_from(st.st_size).ok()? != total(work)
        || total(work) != node.meta.size
        || mtime != node.meta.mtime
    {
        return None;
    }
    let f = File::from(fd);
    let mut buf = Vec::new();
    for (id, loc, at) in work {
        if keying.is_zero_chunk(id, loc.raw_len, loc.stored_len) && is_hole(&f, *at, loc.raw_len) {
            continue;
        }
        buf.resize(loc.raw_len as usize, 0);
        f.read_exact_at(&mut buf, *at).ok()?;
        if keying.hash_chunk(&buf).id != *id {
            return None;
        }
    }
    Some(f)
}

/// Whether `len` bytes of `f` from `at` are a hole (so read as zeros),
/// asked without reading them: a restored sparse file is checked in the
/// time its data takes, not its size.
fn is_hole(f: &File, at: u64, len: u32) -> bool {
    let Some(end) = at.checked_add(u64::from(len)) else {
        return false;
    };
    match rustix::fs::seek(f, rustix::fs::SeekFrom::Data(at)) {
        Ok(next_data) => next_data >= end,
        // No data from `at` to the end of the file (its size is checked).
        Err(rustix::io::Errno::NXIO) => true,
        Err(_) => false,
    }
}

/// Plan a big file: a temporary file and its parts. Returns None when the
/// file is small after all (few chunks), so the caller sends one job.
pub fn plan_big(
    cat: &Catalog,
    dest: Dest,
    node: Node,
) -> Result<std::result::Result<Vec<Job>, (Dest, Node)>> {
    let Some(cid) = node.content else {
        return Ok(Err((dest, node)));
    };
    let work = chunk_work(cat, cid, &dest.shown)?;
    if work.len() <= PART_CHUNKS {
        return Ok(Err((dest, node)));
    }
    let (tmp, file) = create_tmp(dest.dir.as_fd(), &dest.shown)?;
    let parts = work.len().div_ceil(PART_CHUNKS);
    let size = total(&work);
    let big = Arc::new(BigFile {
        dest,
        node,
        tmp,
        file,
        work,
        size,
        parts_left: AtomicUsize::new(parts),
        failed: AtomicBool::new(false),
    });
    Ok(Ok((0..parts)
        .map(|p| Job::Part {
            file: big.clone(),
            start: p * PART_CHUNKS,
            end: ((p + 1) * PART_CHUNKS).min(big.work.len()),
        })
        .collect()))
}

#[allow(clippy::too_many_arguments)]
fn write_part(
    repo: &Repository,
    big: &Arc<BigFile>,
    start: usize,
    end: usize,
    span: Option<Span>,
    batch: &mut Batch,
    shared: &Shared,
    progress: &crate::commands::progress::Progress,
) -> Result<()> {
    let mut result = Ok(());
    if !big.failed.load(Ordering::SeqCst) {
        let work = big.work.get(start..end).unwrap_or_default();
        let mut fetched = fetch_merged(repo, work, span);
        for (k, (id, loc, at)) in work.iter().enumerate() {
            let data = fetched.get_mut(k).and_then(Option::take);
            match write_chunk(repo, &big.file, (id, loc, *at), data, &big.dest.shown) {
                Ok(n) => progress.bytes(n),
                Err(e) => {
                    big.failed.store(true, Ordering::SeqCst);
                    result = Err(e);
                    break;
                }
            }
        }
    }
    if big.parts_left.fetch_sub(1, Ordering::SeqCst) != 1 {
        return result;
    }
    // The last part out completes the file, or removes it. When a part
    // failed, that part already reported the error.
    let d = &big.dest;
    if big.failed.load(Ordering::SeqCst) {
        let _ = unlinkat(d.dir.as_fd(), big.tmp.as_slice(), AtFlags::empty());
        return result;
    }
    let finished = (|| -> Result<()> {
        big.file.set_len(big.size).at(&d.shown)?;
        apply_meta_fd(big.file.as_fd(), &big.node, &d.shown)
    })();
    match finished {
        Ok(()) => {
            progress.item();
            shared.files.fetch_add(1, Ordering::Relaxed);
            shared.bytes.fetch_add(big.size, Ordering::Relaxed);
            batch.push(
                Written {
                    dir: d.dir.clone(),
                    tmp: big.tmp.clone(),
                    name: d.name.clone(),
                    shown: d.shown.clone(),
                },
                big.size,
            )
        }
        Err(e) => {
            let _ = unlinkat(d.dir.as_fd(), big.tmp.as_slice(), AtFlags::empty());
            Err(e)
        }
    }
}
