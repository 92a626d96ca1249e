//! The data path: a kernel read of a file becomes frames decoded from
//! packs (through the frame cache, with read-ahead for sequential readers
//! and the next files of a directory warmed ahead of `cp`, `tar` and
//! `rsync`); and the bookkeeping of which files the kernel holds.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::Sender;

use super::files::{CachedName, HELD_FRESH, OpenFile};
use super::frame::Frame;
use super::{Attr, InvalidateSlot, Shared, SnapshotFs, inode};
use crate::error::{Error, Result};
use crate::format::blob::FRAME;
use crate::format::tree::ContentRef;
use crate::format::tree::{ChunkList, Kind};
use crate::ids::{SnapshotId, TreeId};
use crate::repo::catalog::ChunkLoc;

thread_local! {
    /// Reads that span frames are assembled here, not in a fresh allocation
    /// each time (fresh pages fault, and faults are dear).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Bytes of a read: a slice of one cached frame (no copy), or assembled.
pub enum ReadData {
    Frame(Arc<Frame>, std::ops::Range<usize>),
    Owned(Vec<u8>),
}

impl ReadData {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            ReadData::Frame(f, r) => &f[r.clone()],
            ReadData::Owned(v) => v,
        }
    }

    /// Done with it: an assembled buffer serves this thread's next read.
    pub fn recycle(self) {
        if let ReadData::Owned(v) = self
            && v.capacity() <= SCRATCH_MAX
        {
            SCRATCH.with(|s| *s.borrow_mut() = v);
        }
    }
}

/// Largest read buffer kept per thread: the kernel asks for at most 1 MiB.
const SCRATCH_MAX: usize = 4 << 20;

/// Work for the read-ahead threads.
pub(super) enum Job {
    /// Decode frame `.2` of chunk `.1` of a file.
    Frame(Arc<OpenFile>, usize, u32),
    /// Resolve the files among the entries of directory `tree` (inode
    /// position `dir_pos`) whose offsets lie in `from..to`, and decode their
    /// first frame: readers such as `cp -a`, `tar` and `rsync` take a
    /// directory's files in order, so the next ones are ready when asked for.
    Siblings {
        snap: SnapshotId,
        dir_pos: u64,
        tree: TreeId,
        from: u64,
        to: u64,
    },
}

/// A pack the catalog points to that is not there is damage (EIO to a
/// reader), not a name that does not exist (ENOENT would tell `cp` the file
/// vanished, and tools treat that as harmless).
pub(super) fn missing_pack_is_damage(e: Error, loc: &ChunkLoc) -> Error {
    match e {
        Error::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::corrupt(format!(
                "pack {} is missing ({}); the catalog still points into it",
                loc.pack,
                path.display()
            ))
        }
        e => e,
    }
}

/// How far from the previous read's end a read still counts as part of a
/// stream (the kernel reads ahead up to 1 MiB at a time, on several threads).
const STREAM_WINDOW: u64 = 8 << 20;

/// How many entries after a file that is first read get warmed (`Job::Siblings`).
const SIBLINGS_AHEAD: u64 = 32;

/// Held files with more chunks than this are not resolved again when old
/// (see `Shared::refresh`): a catalog lookup per chunk each idle expiry.
const REFRESH_MAX_CHUNKS: usize = 1 << 16;

impl Shared {
    /// What reading file `ino` (content `content`) needs: from the cache, or
    /// resolved from the catalog now and remembered.
    fn file(&self, ino: u64, content: Option<ContentRef>) -> Result<Arc<OpenFile>> {
        // The resolution's start is registered (under the same lock as the
        // lookup) before any catalog read: until the result is in `recent`,
        // the lease reports no later than this, so no pack the locations
        // about to be read point into can be deleted meanwhile.
        let (opened_ns, token) = {
            let mut files = self.files.lock().expect("file cache lock");
            if let Some(f) = files.recent.get(&ino) {
                return Ok(f.clone());
            }
            let now = crate::time::now_ns();
            let token = files.next_token;
            files.next_token = files.next_token.wrapping_add(1);
            files.resolving.insert(token, now);
            (now, token)
        };
        let resolved = self.resolve(ino, content, opened_ns);
        let mut files = self.files.lock().expect("file cache lock");
        files.resolving.remove(&token);
        let f = resolved?;
        files.recent.put(ino, f.clone());
        Ok(f)
    }

    /// Read a file's chunk list and the chunks' locations from the catalog.
    fn resolve(
        &self,
        ino: u64,
        content: Option<ContentRef>,
        opened_ns: i64,
    ) -> Result<Arc<OpenFile>> {
        let cat = self.conn()?;
        let chunks = match content {
            Some(c) => cat.content(&c)?,
            None => ChunkList::default(),
        };
        let locs = chunks
            .iter()
            .map(|c| {
                cat.chunk_loc(&c.id)?.ok_or_else(|| {
                    Error::corrupt(format!("chunk {} is missing from the catalog", c.id))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        drop(cat);
        let mut starts = Vec::with_capacity(chunks.len());
        let mut size = 0u64;
        for c in chunks.iter() {
            starts.push(size);
            size += u64::from(c.len);
        }
        Ok(Arc::new(OpenFile {
            ino,
            opened_ns,
            chunks,
            starts,
            size,
            locs,
            last_end: AtomicU64::new(u64::MAX),
        }))
    }

    /// Drop resolutions older than the idle expiry and ask the kernel to
    /// drop the names of held files whose resolution is that old (see
    /// `Files`); the resolution time of the oldest left (or now) is what
    /// the mount's lease reports.
    pub(super) fn expire_files(&self) -> i64 {
        let now = crate::time::now_ns();
        let expired = self
            .files
            .lock()
            .expect("file cache lock")
            .expire(now, self.idle_expiry);
        self.invalidate(expired.stale);
        for (ino, old) in expired.refresh {
            self.refresh(ino, old);
        }
        expired.oldest_ns
    }

    /// Resolve held file `ino` again where every chunk of it is still in
    /// the catalog (its snapshot, or another holding the same chunks, is
    /// still there), so that it no longer holds back packs taken out of use
    /// since its first resolution. Where some chunk is gone, the old
    /// resolution stays: the file is open, and its bytes are kept for it.
    fn refresh(&self, ino: u64, old: Arc<OpenFile>) {
        if old.chunks.len() > REFRESH_MAX_CHUNKS {
            return;
        }
        let (started, token) = {
            let mut files = self.files.lock().expect("file cache lock");
            let now = crate::time::now_ns();
            let token = files.next_token;
            files.next_token = files.next_token.wrapping_add(1);
            files.resolving.insert(token, now);
            (now, token)
        };
        let locs: Option<Vec<ChunkLoc>> = self.conn().ok().and_then(|cat| {
            old.chunks
                .iter()
                .map(|c| cat.chunk_loc(&c.id).ok().flatten())
                .collect()
        });
        let mut files = self.files.lock().expect("file cache lock");
        files.resolving.remove(&token);
        let Some(locs) = locs else { return };
        if let Some(h) = files.held.get_mut(&ino)
            && h.file.as_ref().is_some_and(|f| Arc::ptr_eq(f, &old))
        {
            h.file = Some(Arc::new(OpenFile {
                ino: old.ino,
                opened_ns: started,
                chunks: old.chunks.clone(),
                starts: old.starts.clone(),
                size: old.size,
                locs,
                last_end: AtomicU64::new(old.last_end.load(Ordering::Relaxed)),
            }));
        }
    }

    /// See `Files::trim`.
    pub(super) fn trim_files(&self) {
        let now = crate::time::now_ns();
        let stale = self.files.lock().expect("file cache lock").trim(now);
        self.invalidate(stale);
    }

    /// Outside the file lock: the kernel may send forgets meanwhile, which
    /// another thread answers.
    fn invalidate(&self, names: Vec<CachedName>) {
        if let Some(invalidate) = self.invalidate.get() {
            for (parent, name) in names {
                invalidate(parent, &name);
            }
        }
    }

    /// Run one read-ahead job; errors surface when a reader gets there.
    pub(super) fn run(&self, job: Job, queue: &Sender<Job>) {
        match job {
            Job::Frame(f, ci, fi) => {
                // Queued ahead of a reader that has meanwhile got past it
                // (and had it decoded itself): nothing to do.
                let reached = f.last_end.load(Ordering::Relaxed);
                if reached != u64::MAX && reached >= f.frame_end(ci, fi) {
                    return;
                }
                match self.merge {
                    Some(span) => self.frame_run(&f, ci, fi, span),
                    None => {
                        let _ = self.frame(&f, ci, fi);
                    }
                }
            }
            Job::Siblings {
                snap,
                dir_pos,
                tree,
                from,
                to,
            } => {
                let Ok(nodes) = self
                    .conn()
                    .and_then(|c| c.entries_from(tree, from, SIBLINGS_AHEAD as usize))
                else {
                    return;
                };
                for n in nodes.into_iter().filter(|n| n.node_offset < to) {
                    // Hard links take their inode from their group: rare, skipped.
                    if n.kind != Kind::File || n.link_key != 0 || n.content.is_none() {
                        continue;
                    }
                    let Ok(ino) = inode::encode(snap, inode::child_pos(dir_pos, n.node_offset))
                    else {
                        continue;
                    };
                    if let Ok(f) = self.file(ino, n.content)
                        && !f.chunks.is_empty()
                        && self.frames.absent(&(f.chunks.get(0).id, 0))
                        && queue.try_send(Job::Frame(f, 0, 0)).is_err()
                    {
                        return;
                    }
                }
            }
        }
    }

    /// Decoded frame `fi` of chunk `ci` of an open file, verified.
    pub(super) fn frame(&self, f: &OpenFile, ci: usize, fi: u32) -> Result<Arc<Frame>> {
        let c = f.chunks.get(ci);
        let key = (c.id, fi);
        let loc = &f.locs[ci];
        let load = || {
            let raw_len = c.len as usize;
            let frame_len = (raw_len - fi as usize * FRAME).min(FRAME);
            if self.repo.keying.is_zero_chunk(&c.id, c.len, loc.stored_len) {
                return Ok(Frame::heap(vec![0u8; frame_len]));
            }
            let header = self.header(f, ci)?;
            let (start, len) = header.frame_range(fi as usize);
            if start + len > loc.stored_len as usize {
                return Err(Error::corrupt(format!(
                    "chunk {} frame {fi} lies outside it",
                    c.id
                )));
            }
            self.read_checked(loc, loc.offset + start as u64, len, |stored| {
                if frame_len == FRAME
                    && let Some(mut slot) = self.frames.slot()
                {
                    let n = header.decode_frame_to(fi as usize, stored, &c.id, slot.bytes_mut())?;
                    return Ok(Frame::slot(slot, n));
                }
                Ok(Frame::heap(header.decode_frame(
                    fi as usize,
                    stored,
                    &c.id,
                )?))
            })
        };
        self.frames.get_or_load(key, || match load() {
            // A header from a cached copy that passed its own check but
            // misplaces the frames: drop both and read from the store.
            Err(Error::Corrupt(why)) => {
                if !self
                    .repo
                    .backend
                    .forget(&loc.pack, loc.offset, loc.stored_len as usize)
                {
                    return Err(Error::Corrupt(why));
                }
                self.frames
                    .forget_header(&(c.id, loc.pack, loc.offset, c.len));
                load()
            }
            r => r,
        })
    }
}

impl SnapshotFs {
    /// The kernel is about to be given `attr` under `name` in `parent`, as
    /// a lookup it counts (a lookup, or an entry of a listing with
    /// attributes): called before the reply, so its forget cannot come
    /// first. Only regular files are counted (see `Files`).
    pub fn hold(&self, parent: u64, name: &[u8], attr: &Attr) {
        if attr.kind != Kind::File {
            return;
        }
        let mut files = self.shared.files.lock().expect("file cache lock");
        let h = files.held.entry(attr.ino).or_default();
        h.lookups += 1;
        if attr.nlink > 1 {
            h.add_name(parent, name);
        }
    }

    /// The name the kernel knows inode `ino` by (a hard-linked file's
    /// first one; the others come from `hold`).
    fn name_of(&self, ino: u64) -> Option<CachedName> {
        if inode::history_seq(ino).is_some() {
            return self.history_name(ino);
        }
        // Resolved again if it has left the inode cache: a file that is
        // never named to the kernel again would be held until it runs short
        // of memory.
        let i = self.inode(ino).ok()?;
        let n = i.node.as_ref()?;
        Some((i.parent, n.name.as_slice().into()))
    }

    /// Where the FUSE adapter puts its `Invalidate` once its session exists.
    pub fn invalidate_slot(&self) -> InvalidateSlot {
        InvalidateSlot(self.shared.clone())
    }

    /// What reading file `ino` needs: the resolution it holds while the
    /// kernel holds it (made at its first read), else a recent one or a
    /// new one.
    fn held_file(&self, ino: u64) -> Result<Arc<OpenFile>> {
        if let Some(f) = self
            .shared
            .files
            .lock()
            .expect("file cache lock")
            .held
            .get(&ino)
            .and_then(|h| h.file.clone())
        {
            return Ok(f);
        }
        let f = self.open_file(ino)?;
        let name = self.name_of(ino);
        let mut files = self.shared.files.lock().expect("file cache lock");
        // Not held (forgotten meanwhile): the kernel will look it up again
        // before it reads again.
        if let Some(h) = files.held.get_mut(&ino) {
            if let Some((parent, name)) = name {
                h.add_name(parent, &name);
            }
            if h.file.is_none() {
                h.file = Some(f.clone());
                files.fresh.push_back(ino);
                if files.fresh.len() > HELD_FRESH {
                    let _ = self.shared.trim.try_send(());
                }
            }
        }
        Ok(f)
    }

    /// What reading file `ino` needs, by inode number (reused while recent).
    fn open_file(&self, ino: u64) -> Result<Arc<OpenFile>> {
        let ino = self.resolve_version(ino);
        if let Some(f) = self
            .shared
            .files
            .lock()
            .expect("file cache lock")
            .recent
            .get(&ino)
        {
            return Ok(f.clone());
        }
        let i = self.inode(ino)?;
        let n = i
            .node
            .as_ref()
            .filter(|n| n.kind == Kind::File)
            .ok_or_else(|| Error::Invalid("not a regular file".into()))?;
        self.shared.file(ino, n.content)
    }

    /// Queue the files after `ino` in its directory for warming, unless
    /// they were queued already.
    fn warm_siblings(&self, ino: u64) {
        let Some(tx) = &self.prefetch else { return };
        let Some(i) = self.cached(ino) else { return };
        let Some(node) = &i.node else { return };
        let Some(dir) = self.cached(i.parent) else {
            return;
        };
        let Some(tree) = dir.tree else { return };
        let next = node.node_offset + 1;
        let to = next + SIBLINGS_AHEAD;
        let from = {
            let mut w = self.warmed.lock().expect("warmed lock");
            let done = w.get(&i.parent).copied().unwrap_or(0);
            if done >= next + SIBLINGS_AHEAD / 2 {
                return;
            }
            w.put(i.parent, to);
            done.max(next)
        };
        let _ = tx.try_send(Job::Siblings {
            snap: i.snap,
            dir_pos: dir.pos,
            tree,
            from,
            to,
        });
    }

    /// Bytes `[offset, offset + size)` of file `ino`, short at its end.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<ReadData> {
        let f = self.held_file(ino)?;
        if offset == 0 {
            self.warm_siblings(f.ino);
        }
        if offset >= f.size || size == 0 {
            return Ok(ReadData::Owned(Vec::new()));
        }
        let end = (offset + u64::from(size)).min(f.size);
        let prev = f.last_end.swap(end, Ordering::Relaxed);
        let sequential = prev == offset || offset == 0;
        // A frame a reader streaming through the file has been given whole
        // leaves the cache at once: the kernel keeps those pages
        // (keep_cache), so keeping the frame too would only double the
        // memory and push out what random readers and read-ahead need. The
        // kernel's read-ahead requests are served by several threads and
        // arrive a little out of order: near the last one counts.
        let streaming = sequential || (prev != u64::MAX && offset.abs_diff(prev) <= STREAM_WINDOW);
        if sequential {
            self.read_ahead(&f, end);
        }
        let mut ci = f.starts.partition_point(|&s| s <= offset) - 1;
        // The common case, a kernel read of one aligned frame: no copy.
        let within = offset - f.starts[ci];
        let fi = (within / FRAME as u64) as u32;
        let fstart = (within % FRAME as u64) as usize;
        if fstart + (end - offset) as usize <= FRAME
            && within + (end - offset) <= u64::from(f.chunks.get(ci).len)
        {
            let frame = self.shared.frame(&f, ci, fi).map_err(|e| {
                log::error!("{}: {e}", self.describe(f.ino));
                e
            })?;
            let len = (end - offset) as usize;
            if streaming && frame.serve(len) {
                self.shared.frames.forget(&(f.chunks.get(ci).id, fi));
            }
            return Ok(ReadData::Frame(frame, fstart..fstart + len));
        }
        let mut out = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        out.clear();
        out.reserve((end - offset) as usize);
        let mut pos = offset;
        while pos < end {
            let cstart = f.starts[ci];
            let clen = u64::from(f.chunks.get(ci).len);
            while pos < end && pos < cstart + clen {
                let within = pos - cstart;
                let fi = (within / FRAME as u64) as u32;
                let frame = self.shared.frame(&f, ci, fi).map_err(|e| {
                    log::error!("{}: {e}", self.describe(f.ino));
                    e
                })?;
                let fstart = within - u64::from(fi) * FRAME as u64;
                let take = ((end - pos) as usize).min(frame.len() - fstart as usize);
                out.extend_from_slice(&frame[fstart as usize..fstart as usize + take]);
                if streaming && frame.serve(take) {
                    self.shared.frames.forget(&(f.chunks.get(ci).id, fi));
                }
                pos += take as u64;
            }
            ci += 1;
        }
        Ok(ReadData::Owned(out))
    }

    /// Queue the frames of the next `readahead` bytes that nobody holds yet.
    fn read_ahead(&self, f: &Arc<OpenFile>, from: u64) {
        let Some(tx) = &self.prefetch else { return };
        let until = (from + self.readahead).min(f.size);
        let mut pos = from;
        while pos < until {
            let ci = f.starts.partition_point(|&s| s <= pos) - 1;
            let c = f.chunks.get(ci);
            let fi = ((pos - f.starts[ci]) / FRAME as u64) as u32;
            if self.shared.frames.absent(&(c.id, fi))
                && tx.try_send(Job::Frame(f.clone(), ci, fi)).is_err()
            {
                return;
            }
            pos = match self.shared.merge {
                // The job reads on to the end of its run.
                Some(span) if !self.shared.zero_chunk(f, ci) => {
                    let last = f.run_end(ci, span, |k| self.shared.zero_chunk(f, k));
                    f.starts[last] + u64::from(f.chunks.get(last).len)
                }
                _ => f.frame_end(ci, fi),
            };
        }
    }

    /// SEEK_DATA / SEEK_HOLE: runs of zero chunks are holes.
    pub fn seek(&self, ino: u64, offset: u64, data: bool) -> Result<Option<u64>> {
        let f = self.open_file(ino)?;
        if offset >= f.size {
            return Ok(None);
        }
        let mut ci = f.starts.partition_point(|&s| s <= offset) - 1;
        while ci < f.chunks.len() {
            let c = f.chunks.get(ci);
            let is_hole =
                self.shared
                    .repo
                    .keying
                    .is_zero_chunk(&c.id, c.len, f.locs[ci].stored_len);
            if is_hole != data {
                return Ok(Some(f.starts[ci].max(offset)));
            }
            ci += 1;
        }
        // Past the last data there is the implicit hole at the end of file.
        Ok(if data { None } else { Some(f.size) })
    }

    /// Best-effort path of an inode for log lines: snapshot/…/name.
    fn describe(&self, ino: u64) -> String {
        let mut parts = Vec::new();
        let mut cur = ino;
        for _ in 0..4096 {
            let Some(i) = self.cached(cur) else { break };
            match &i.node {
                Some(n) => parts.push(String::from_utf8_lossy(&n.name).into_owned()),
                None => {
                    if let Ok(s) = self.snapshot(i.snap) {
                        parts.push(s.name);
                    }
                    break;
                }
            }
            cur = i.parent;
        }
        parts.reverse();
        let p: PathBuf = parts.iter().collect();
        format!("{} (inode {ino})", p.display())
    }

    /// (stored bytes, number of snapshots) for statfs.
    pub fn usage(&self) -> Result<(u64, u64)> {
        let stored = self.shared.conn()?.stored_bytes()?;
        let n = self.with_snapshots(true, |s| s.by_time.len() as u64)?;
        Ok((stored, n))
    }
}
