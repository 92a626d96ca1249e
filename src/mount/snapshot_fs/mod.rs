//! Snapshots as directories, without FUSE types: lookup, getattr, readdir,
//! read, xattrs, seek. `mount` is a thin adapter over this.
//!
//! Nothing is loaded at start: inodes are computed (`inode`), resolved from
//! the catalog on demand and kept in a bounded cache; file data comes through
//! a bounded cache of decoded frames with read-ahead (`cache`).

pub mod cache;
mod frame;
mod history_view;
pub mod inode;

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded};
use lru::LruCache;

use crate::error::{Error, Result};
use crate::format::blob::{FRAME, Header, header_len, is_zero_chunk};
use crate::format::record::SnapshotRow;
use crate::format::tree::{ChunkList, Kind, Meta, decode_xattrs};
use crate::ids::{ContentId, SnapshotId, TreeId};
use crate::repo::Repository;
use crate::repo::catalog::{Catalog, ChunkLoc, Node};
use cache::FrameCache;
use frame::Frame;

/// What the kernel needs to know of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub blocks: u64,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub rdev: u32,
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

thread_local! {
    /// Reads that span frames are assembled here, not in a fresh allocation
    /// each time (fresh pages fault, and faults are dear).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One directory entry as listed; `cookie` resumes the listing after it.
pub struct DirItem {
    pub name: Vec<u8>,
    pub cookie: u64,
    pub attr: Attr,
}

/// A resolved inode inside a snapshot.
#[derive(Clone, Debug)]
struct Inode {
    snap: SnapshotId,
    pos: u64,
    parent: u64,
    /// None for the snapshot's own root directory.
    node: Option<Node>,
    /// For directories: the tree listed inside.
    tree: Option<TreeId>,
}

/// What reading a file needs, resolved once: kept for as long as the
/// kernel holds the file, and by inode number for a while after (`Files`).
struct OpenFile {
    ino: u64,
    /// When it was resolved: its chunk locations are from then. The mount's
    /// lease reports the oldest of these, so gc keeps the packs they point
    /// into.
    opened_ns: i64,
    chunks: ChunkList,
    /// Start offset of each chunk, for a binary search by offset.
    starts: Vec<u64>,
    size: u64,
    /// Resolved once, so a file being read keeps its bytes even if gc moves
    /// its chunks meanwhile (the old pack stays while the lease says so).
    locs: Vec<ChunkLoc>,
    /// End of the last read, to recognize a sequential reader.
    last_end: AtomicU64,
}

pub struct MountOptions {
    pub names: Names,
    pub cache_bytes: usize,
    pub prefetch_threads: usize,
    /// How far ahead of a sequential reader to decode.
    pub readahead: u64,
    /// How old a file's resolved chunk locations may grow before the
    /// kernel is asked to drop the file if it is closed. An open file keeps
    /// them until it is closed, however long that is (see `Files`).
    pub idle_expiry: Duration,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            names: Names::Plain,
            cache_bytes: 256 << 20,
            prefetch_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            readahead: 8 << 20,
            idle_expiry: DEFAULT_IDLE_EXPIRY,
        }
    }
}

struct SnapshotList {
    loaded: Option<Instant>,
    /// (directory name, snapshot), sorted by directory name.
    by_name: Vec<(String, SnapshotRow)>,
    by_id: HashMap<i64, SnapshotRow>,
    /// Oldest first, for the history view.
    by_time: Vec<SnapshotRow>,
}

/// How snapshot directories are named at the mount root.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Names {
    /// The snapshot's name.
    #[default]
    Plain,
    /// `@GMT-YYYY.MM.DD-HH.MM.SS` of its start time, as Samba's
    /// `vfs_shadow_copy2` expects for Windows "Previous Versions"; each
    /// snapshot has a second of its own (see `history::gmt_names`).
    Gmt,
}

pub fn gmt_name(started_ns: i64) -> String {
    let (y, mo, d, h, mi, s) = crate::time::utc_parts(started_ns);
    format!("@GMT-{y:04}.{mo:02}.{d:02}-{h:02}.{mi:02}.{s:02}")
}

impl OpenFile {
    /// File offset just past frame `fi` of chunk `ci` (a chunk's last frame
    /// is short).
    fn frame_end(&self, ci: usize, fi: u32) -> u64 {
        let chunk_end = self.starts[ci] + u64::from(self.chunks.get(ci).len);
        (self.starts[ci] + (u64::from(fi) + 1) * FRAME as u64).min(chunk_end)
    }
}

/// Work for the read-ahead threads.
enum Job {
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

/// The part shared with read-ahead threads.
struct Shared {
    repo: Repository,
    pool: Mutex<Vec<Catalog>>,
    frames: FrameCache,
    /// Resolved files (see `Files`).
    files: Mutex<Files>,
    idle_expiry: Duration,
    /// See `Files`; unset until the FUSE session exists.
    invalidate: OnceLock<Invalidate>,
    /// Wakes the lease thread to trim `Files::fresh`.
    trim: Sender<()>,
}

/// Where the FUSE adapter puts the `Invalidate` for its session.
pub struct InvalidateSlot(Arc<Shared>);

impl InvalidateSlot {
    pub fn set(self, f: Invalidate) {
        let _ = self.0.invalidate.set(f);
    }
}

pub struct SnapshotFs {
    shared: Arc<Shared>,
    snapshots: Mutex<SnapshotList>,
    inodes: Mutex<LruCache<u64, Arc<Inode>>>,
    /// Per directory inode: the entry offset up to which its files were
    /// queued for warming.
    warmed: Mutex<LruCache<u64, u64>>,
    prefetch: Option<Sender<Job>>,
    readahead: u64,
    started_ns: i64,
    names: Names,
    history: Mutex<history_view::Table>,
    /// The names of the history directory listed last (see
    /// `history_readdir`).
    hist_listing: Mutex<Option<history_view::Listing>>,
    /// Where history directories lie in each snapshot, by path (see
    /// `history_view::dir_spots`).
    hist_dirs: Mutex<LruCache<PathBuf, history_view::Spots>>,
    /// Stops the thread that renews the mount's lease, and that thread:
    /// joined on drop, so the lease file is gone when the mount is.
    lease: Option<(Sender<()>, std::thread::JoinHandle<()>)>,
}

impl Drop for SnapshotFs {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.lease.take() {
            drop(stop);
            let _ = thread.join();
        }
    }
}

/// How long the snapshot list may be served before it is read again.
const SNAPSHOT_LIST_TTL: Duration = Duration::from_secs(1);
const INODE_CACHE: usize = 32 * 1024;
const FILE_CACHE: usize = 1024;
const DIR_CACHE: usize = 256;
const HIST_DIRS: usize = 1024;
/// See `MountOptions::idle_expiry`.
pub const DEFAULT_IDLE_EXPIRY: Duration = Duration::from_secs(60);
/// How often the mount's lease is brought up to date, at most.
const LEASE_RENEW: Duration = Duration::from_secs(2);
/// How far from the previous read's end a read still counts as part of a
/// stream (the kernel reads ahead up to 1 MiB at a time, on several threads).
const STREAM_WINDOW: u64 = 8 << 20;
/// How many entries after a file that is first read get warmed (`Job::Siblings`).
const SIBLINGS_AHEAD: u64 = 32;

/// Resolved files. Every chunk location held here is covered by the mount's
/// lease (`oldest_ns`), so gc keeps the packs they point into: those of
/// files the kernel holds for as long as it holds them, the recently
/// resolved ones until they are older than the idle expiry, and those being
/// resolved right now from the time their catalog reads began. One lock
/// covers all three, so a file cannot pass from one to another unseen by
/// the lease.
///
/// The kernel is not asked to tell of opens and closes: that is two round
/// trips per file, a fifth of the time of reading small files. It tells
/// instead which inodes it holds (lookups, and forgets when it drops them),
/// and an open file is always held. A file whose resolution grows old is
/// dropped from the kernel's name cache (`Invalidate`): if nothing has it
/// open, the kernel then forgets it, and the lease moves on; if something
/// does, the kernel keeps it, and so do we, however long it stays open.
struct Files {
    /// By inode number: what the next read of the file reuses (bounded).
    recent: LruCache<u64, Arc<OpenFile>>,
    /// Regular files the kernel holds, by the inode number it knows them by.
    held: HashMap<u64, Held>,
    /// Held files in the order they were given a resolution, not yet asked
    /// to be dropped: past `HELD_FRESH`, the oldest are asked at once rather
    /// than after the idle expiry, so that a reader going through millions
    /// of files keeps a bounded number of resolutions here (the kernel keeps
    /// the files it has looked up for as long as it has memory to spare).
    fresh: VecDeque<u64>,
    /// Start times of resolutions under way, by a token of their own.
    resolving: HashMap<u64, i64>,
    next_token: u64,
}

/// A name in the kernel's cache: (parent directory's inode, name).
type CachedName = (u64, Box<[u8]>);

/// A regular file the kernel has looked up and not yet forgotten.
#[derive(Default)]
struct Held {
    lookups: u64,
    /// Its resolution, from its first read while held.
    file: Option<Arc<OpenFile>>,
    /// (parent, name) the kernel may cache it under: from its first read,
    /// and from every lookup of a hard-linked file (whose other names the
    /// catalog does not give by inode number).
    names: Vec<CachedName>,
    /// When the kernel was last asked to drop those names.
    nudged_ns: i64,
}

/// Held files with a resolution that may wait for the idle expiry before
/// the kernel is asked to drop them (see `Files::fresh`): about 0.5 KiB each.
const HELD_FRESH: usize = 1024;

/// A hard-linked file's names kept for dropping from the kernel's cache;
/// past this, the kernel forgets it when its memory runs short.
const MAX_NAMES: usize = 256;

impl Held {
    fn add_name(&mut self, parent: u64, name: &[u8]) {
        if self.names.len() < MAX_NAMES
            && !self.names.iter().any(|(p, n)| *p == parent && **n == *name)
        {
            self.names.push((parent, name.into()));
        }
    }
}

impl Files {
    fn new() -> Files {
        Files {
            recent: LruCache::new(NonZeroUsize::new(FILE_CACHE).expect("non-zero")),
            held: HashMap::new(),
            fresh: VecDeque::new(),
            resolving: HashMap::new(),
            next_token: 0,
        }
    }

    /// Forget recent resolutions older than `idle`, and list the names of
    /// held files whose resolution is that old, for the kernel to drop
    /// (once per `idle`); the time before which nothing held here was
    /// resolved (or now), for the lease.
    fn expire(&mut self, now: i64, idle: Duration) -> (i64, Vec<CachedName>) {
        let limit = now.saturating_sub(i64::try_from(idle.as_nanos()).unwrap_or(i64::MAX));
        let old: Vec<u64> = self
            .recent
            .iter()
            // Held elsewhere means being read right now: keep it.
            .filter(|(_, f)| f.opened_ns < limit && Arc::strong_count(f) == 1)
            .map(|(ino, _)| *ino)
            .collect();
        for ino in old {
            self.recent.pop(&ino);
        }
        let mut stale = Vec::new();
        for h in self.held.values_mut() {
            if h.file.as_ref().is_some_and(|f| f.opened_ns < limit) && h.nudged_ns < limit {
                h.nudged_ns = now;
                stale.extend(h.names.iter().cloned());
            }
        }
        (self.oldest_ns().unwrap_or(now), stale)
    }

    /// Past `HELD_FRESH`, ask the kernel to drop the oldest held files
    /// given a resolution (see `fresh`) down to half of it: their names, for
    /// `Invalidate`. In batches, because each drop also invalidates the
    /// attributes of the file's directory, which the kernel then asks for
    /// again (once per batch, not once per file).
    fn trim(&mut self, now: i64) -> Vec<CachedName> {
        let mut stale = Vec::new();
        if self.fresh.len() <= HELD_FRESH {
            return stale;
        }
        while self.fresh.len() > HELD_FRESH / 2 {
            let Some(ino) = self.fresh.pop_front() else {
                break;
            };
            if let Some(h) = self.held.get_mut(&ino)
                && h.file.is_some()
                && h.nudged_ns == 0
            {
                h.nudged_ns = now;
                stale.extend(h.names.iter().cloned());
            }
        }
        stale
    }

    fn oldest_ns(&self) -> Option<i64> {
        let recent = self.recent.iter().map(|(_, f)| f.opened_ns);
        let held = self.held.values().filter_map(|h| h.file.as_ref());
        let resolving = self.resolving.values().copied();
        recent
            .chain(held.map(|f| f.opened_ns))
            .chain(resolving)
            .min()
    }
}

/// Asks the kernel to drop a name from its cache (FUSE's entry
/// invalidation); set by the FUSE adapter once the session exists.
pub type Invalidate = Box<dyn Fn(u64, &[u8]) + Send + Sync>;

/// A catalog connection borrowed from the pool, returned on drop.
struct Conn<'a> {
    cat: Option<Catalog>,
    pool: &'a Mutex<Vec<Catalog>>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Catalog;
    fn deref(&self) -> &Catalog {
        self.cat.as_ref().expect("connection present until drop")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.cat.take() {
            self.pool.lock().expect("pool lock").push(c);
        }
    }
}

impl Shared {
    fn conn(&self) -> Result<Conn<'_>> {
        let cat = match self.pool.lock().expect("pool lock").pop() {
            Some(c) => c,
            None => Catalog::open_read(&self.repo.catalog_path())?,
        };
        Ok(Conn {
            cat: Some(cat),
            pool: &self.pool,
        })
    }

    /// What reading file `ino` (content `content`) needs: from the cache, or
    /// resolved from the catalog now and remembered.
    fn file(&self, ino: u64, content: Option<ContentId>) -> Result<Arc<OpenFile>> {
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
        content: Option<ContentId>,
        opened_ns: i64,
    ) -> Result<Arc<OpenFile>> {
        let cat = self.conn()?;
        let chunks = match content {
            Some(c) => cat.content(c)?,
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
    fn expire_files(&self) -> i64 {
        let now = crate::time::now_ns();
        let (oldest, stale) = self
            .files
            .lock()
            .expect("file cache lock")
            .expire(now, self.idle_expiry);
        self.invalidate(stale);
        oldest
    }

    /// See `Files::trim`.
    fn trim_files(&self) {
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
    fn run(&self, job: Job, queue: &Sender<Job>) {
        match job {
            Job::Frame(f, ci, fi) => {
                // Queued ahead of a reader that has meanwhile got past it
                // (and had it decoded itself): nothing to do.
                let reached = f.last_end.load(Ordering::Relaxed);
                if reached != u64::MAX && reached >= f.frame_end(ci, fi) {
                    return;
                }
                let _ = self.frame(&f, ci, fi);
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
                    let ino = inode::encode(snap, inode::child_pos(dir_pos, n.node_offset));
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
    fn frame(&self, f: &OpenFile, ci: usize, fi: u32) -> Result<Arc<Frame>> {
        let c = f.chunks.get(ci);
        let key = (c.id, fi);
        self.frames.get_or_load(key, || {
            let raw_len = c.len as usize;
            let frame_len = (raw_len - fi as usize * FRAME).min(FRAME);
            let loc = &f.locs[ci];
            if is_zero_chunk(&c.id, c.len, loc.stored_len) {
                return Ok(Frame::heap(vec![0u8; frame_len]));
            }
            let header = match self.frames.header(&c.id) {
                Some(h) => h,
                None => {
                    let bytes = self
                        .repo
                        .backend
                        .read_at(&loc.pack, loc.offset, header_len(raw_len))
                        .map_err(|e| missing_pack_is_damage(e, loc))?;
                    let h = Arc::new(Header::parse(&bytes, &c.id, raw_len)?);
                    self.frames.put_header(c.id, h.clone());
                    h
                }
            };
            let (start, len) = header.frame_range(fi as usize);
            if start + len > loc.stored_len as usize {
                return Err(Error::corrupt(format!(
                    "chunk {} frame {fi} lies outside it",
                    c.id
                )));
            }
            let stored = self
                .repo
                .backend
                .read_at(&loc.pack, loc.offset + start as u64, len)
                .map_err(|e| missing_pack_is_damage(e, loc))?;
            if frame_len == FRAME
                && let Some(mut slot) = self.frames.slot()
            {
                let n = header.decode_frame_to(fi as usize, &stored, &c.id, slot.bytes_mut())?;
                return Ok(Frame::slot(slot, n));
            }
            Ok(Frame::heap(header.decode_frame(
                fi as usize,
                &stored,
                &c.id,
            )?))
        })
    }
}

/// A pack the catalog points to that is not there is damage (EIO to a
/// reader), not a name that does not exist (ENOENT would tell `cp` the file
/// vanished, and tools treat that as harmless).
fn missing_pack_is_damage(e: Error, loc: &ChunkLoc) -> Error {
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

fn dir_attr(ino: u64, perm: u16, time_ns: i64) -> Attr {
    Attr {
        ino,
        kind: Kind::Dir,
        perm,
        nlink: 2,
        uid: 0,
        gid: 0,
        size: 0,
        blocks: 0,
        atime_ns: time_ns,
        mtime_ns: time_ns,
        ctime_ns: time_ns,
        rdev: 0,
    }
}

impl SnapshotFs {
    pub fn new(repo: Repository, opts: MountOptions) -> Result<SnapshotFs> {
        // Fail now, with a clear message, if the catalog cannot be opened.
        let first = Catalog::open_read(&repo.catalog_path())?;
        let (trim, trim_wanted) = bounded::<()>(1);
        let shared = Arc::new(Shared {
            repo,
            pool: Mutex::new(vec![first]),
            frames: FrameCache::new(opts.cache_bytes),
            files: Mutex::new(Files::new()),
            idle_expiry: opts.idle_expiry,
            invalidate: OnceLock::new(),
            trim,
        });
        let lease = shared.repo.reader_lease("mount")?;
        let leased = shared.clone();
        let (stop_lease, stopped) = bounded::<()>(0);
        // Often enough that a closed file's locations stop holding packs
        // soon after the idle expiry.
        let every = LEASE_RENEW
            .min(opts.idle_expiry / 2)
            .max(Duration::from_millis(100));
        let lease_thread = std::thread::Builder::new()
            .name("lease".into())
            .spawn(move || {
                // Renewed until the filesystem is dropped (the sender goes):
                // then the lease is dropped too, and its file removed.
                loop {
                    crossbeam_channel::select! {
                        recv(stopped) -> _ => break,
                        recv(trim_wanted) -> _ => leased.trim_files(),
                        default(every) => {
                            let since = leased.expire_files();
                            if let Some(lease) = &lease {
                                lease.renew(since);
                            }
                        }
                    }
                }
                drop(lease);
            })
            .expect("spawn lease thread");
        let prefetch = (opts.prefetch_threads > 0).then(|| {
            let (tx, rx) = bounded::<Job>(256);
            for i in 0..opts.prefetch_threads {
                let rx = rx.clone();
                let queue = tx.clone();
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("readahead-{i}"))
                    .spawn(move || {
                        for job in rx.iter() {
                            shared.run(job, &queue);
                        }
                    })
                    .expect("spawn read-ahead thread");
            }
            tx
        });
        Ok(SnapshotFs {
            shared,
            snapshots: Mutex::new(SnapshotList {
                loaded: None,
                by_name: Vec::new(),
                by_id: HashMap::new(),
                by_time: Vec::new(),
            }),
            names: opts.names,
            history: Mutex::new(history_view::Table::default()),
            hist_listing: Mutex::new(None),
            hist_dirs: Mutex::new(LruCache::new(
                NonZeroUsize::new(HIST_DIRS).expect("non-zero"),
            )),
            inodes: Mutex::new(LruCache::new(
                NonZeroUsize::new(INODE_CACHE).expect("non-zero"),
            )),
            warmed: Mutex::new(LruCache::new(
                NonZeroUsize::new(DIR_CACHE).expect("non-zero"),
            )),
            prefetch,
            readahead: opts.readahead,
            started_ns: crate::time::now_ns(),
            lease: Some((stop_lease, lease_thread)),
        })
    }

    /// The snapshot list, re-read at most once a second so that a snapshot
    /// committed while mounted appears without a remount.
    fn with_snapshots<T>(&self, fresh: bool, f: impl FnOnce(&SnapshotList) -> T) -> Result<T> {
        let mut s = self.snapshots.lock().expect("snapshot list lock");
        let stale = match s.loaded {
            None => true,
            Some(t) => fresh && t.elapsed() >= SNAPSHOT_LIST_TTL,
        };
        if stale {
            let mut list = self.shared.conn()?.snapshots()?;
            list.sort_by_key(|r| (r.started_ns, r.id.0));
            s.by_id = list.iter().map(|r| (r.id.0, r.clone())).collect();
            let mut named: Vec<(String, SnapshotRow)> = match self.names {
                Names::Plain => list.iter().map(|r| (r.name.clone(), r.clone())).collect(),
                Names::Gmt => crate::repo::history::gmt_names(&list),
            };
            named.sort_by(|a, b| a.0.cmp(&b.0));
            s.by_name = named;
            s.by_time = list;
            s.loaded = Some(Instant::now());
        }
        Ok(f(&s))
    }

    fn snapshot(&self, id: SnapshotId) -> Result<SnapshotRow> {
        if let Some(s) = self.with_snapshots(false, |s| s.by_id.get(&id.0).cloned())? {
            return Ok(s);
        }
        self.with_snapshots(true, |s| s.by_id.get(&id.0).cloned())?
            .ok_or_else(|| Error::NoSuchSnapshot(id.to_string()))
    }

    fn newest(&self) -> Result<Option<SnapshotRow>> {
        self.with_snapshots(true, |s| s.by_time.last().cloned())
    }

    /// The name of a snapshot's directory at the mount root.
    fn dir_name(&self, s: &SnapshotRow) -> String {
        match self.names {
            Names::Plain => s.name.clone(),
            // A snapshot of a busy second may be shown a second or two
            // later (see `history::gmt_names`).
            Names::Gmt => self
                .with_snapshots(false, |l| {
                    l.by_name
                        .iter()
                        .find(|(_, r)| r.id == s.id)
                        .map(|(n, _)| n.clone())
                })
                .ok()
                .flatten()
                .unwrap_or_else(|| gmt_name(s.started_ns)),
        }
    }

    /// The root changes when snapshots come and go: its mtime is the newest
    /// snapshot's, so caches keyed on it notice.
    fn root_attr(&self) -> Attr {
        let newest = self
            .newest()
            .ok()
            .flatten()
            .map_or(self.started_ns, |s| s.started_ns.max(s.finished_ns));
        dir_attr(inode::ROOT, 0o555, newest)
    }

    fn snapshot_attr(s: &SnapshotRow) -> Attr {
        dir_attr(inode::encode(s.id, 0), 0o555, s.started_ns)
    }

    fn latest_attr(&self) -> Result<Option<Attr>> {
        Ok(self.newest()?.map(|s| self.latest_attr_of(&s)))
    }

    fn latest_attr_of(&self, s: &SnapshotRow) -> Attr {
        Attr {
            ino: inode::latest(s.id),
            kind: Kind::Symlink,
            perm: 0o777,
            nlink: 1,
            uid: 0,
            gid: 0,
            size: self.dir_name(s).len() as u64,
            blocks: 0,
            atime_ns: s.started_ns,
            mtime_ns: s.started_ns,
            ctime_ns: s.started_ns,
            rdev: 0,
        }
    }

    fn cached(&self, ino: u64) -> Option<Arc<Inode>> {
        self.inodes
            .lock()
            .expect("inode cache lock")
            .get(&ino)
            .cloned()
    }

    fn remember(&self, ino: u64, i: Inode) -> Arc<Inode> {
        let a = Arc::new(i);
        self.inodes
            .lock()
            .expect("inode cache lock")
            .put(ino, a.clone());
        a
    }

    /// Resolve an inode inside a snapshot: from the cache, or by descending
    /// from the snapshot root along depth-first positions.
    fn inode(&self, ino: u64) -> Result<Arc<Inode>> {
        if let Some(i) = self.cached(ino) {
            return Ok(i);
        }
        let (snap_id, pos) =
            inode::decode(ino).ok_or_else(|| Error::NoSuchSnapshot(ino.to_string()))?;
        let snap = self.snapshot(snap_id)?;
        let gone = || Error::NoSuchSnapshot(format!("inode {ino}"));
        let mut tree = snap.root_tree;
        let mut base = 0u64;
        let mut parent;
        if pos == 0 {
            return Ok(self.remember(
                ino,
                Inode {
                    snap: snap_id,
                    pos: 0,
                    parent: inode::ROOT,
                    node: None,
                    tree: Some(tree),
                },
            ));
        }
        let cat = self.shared.conn()?;
        loop {
            let node = cat.entry_at(tree, pos - base - 1)?.ok_or_else(gone)?;
            let npos = inode::child_pos(base, node.node_offset);
            parent = inode::encode(snap_id, base);
            if npos == pos {
                let t = node.subtree;
                return Ok(self.remember(
                    ino,
                    Inode {
                        snap: snap_id,
                        pos,
                        parent,
                        node: Some(node),
                        tree: t,
                    },
                ));
            }
            match (node.kind, node.subtree) {
                (Kind::Dir, Some(sub)) => {
                    tree = sub;
                    base = npos;
                }
                _ => return Err(gone()),
            }
        }
    }

    fn node_attr(&self, ino: u64, snap: SnapshotId, n: &Node) -> Result<Attr> {
        let m: &Meta = &n.meta;
        let nlink = match n.kind {
            Kind::Dir => m.nlink.max(2),
            _ if n.link_key != 0 => self
                .shared
                .conn()?
                .hardlink(snap, n.link_key)?
                .map_or(1, |(_, count)| count),
            _ => 1,
        };
        let size = match n.kind {
            Kind::Symlink => n.target.as_ref().map_or(0, |t| t.len() as u64),
            Kind::Dir => m.size,
            _ => m.size,
        };
        Ok(Attr {
            ino,
            kind: n.kind,
            perm: (m.mode & 0o7777) as u16,
            nlink: nlink as u32,
            uid: m.uid,
            gid: m.gid,
            size,
            blocks: m.blocks,
            atime_ns: m.atime_ns,
            mtime_ns: m.mtime_ns,
            ctime_ns: m.ctime_ns,
            rdev: m.rdev as u32,
        })
    }

    /// Attributes of an entry of directory `parent` (inode `parent_ino`),
    /// remembered for later lookups by inode number.
    fn child(&self, parent_ino: u64, parent: &Inode, node: Node) -> Result<Attr> {
        let pos = inode::child_pos(parent.pos, node.node_offset);
        let ino = self.entry_ino(parent.snap, pos, &node)?;
        let attr = self.node_attr(ino, parent.snap, &node)?;
        if self.cached(ino).is_none() {
            let tree = node.subtree;
            self.remember(
                ino,
                Inode {
                    snap: parent.snap,
                    pos: inode::decode(ino).map_or(pos, |d| d.1),
                    parent: parent_ino,
                    node: Some(node),
                    tree,
                },
            );
        }
        Ok(attr)
    }

    /// The inode number the kernel sees for an entry: hard links share their
    /// group's first position.
    fn entry_ino(&self, snap: SnapshotId, pos: u64, n: &Node) -> Result<u64> {
        if n.link_key != 0
            && let Some((first, _)) = self.shared.conn()?.hardlink(snap, n.link_key)?
        {
            return Ok(inode::encode(snap, first));
        }
        Ok(inode::encode(snap, pos))
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        if inode::history_seq(ino).is_some() {
            return self.history_getattr(ino);
        }
        match ino {
            inode::ROOT => Ok(self.root_attr()),
            _ if inode::latest_target(ino).is_some() => {
                let target = inode::latest_target(ino).expect("checked");
                Ok(self.latest_attr_of(&self.snapshot(target)?))
            }
            _ => {
                let i = self.inode(ino)?;
                match &i.node {
                    None => Ok(Self::snapshot_attr(&self.snapshot(i.snap)?)),
                    Some(n) => self.node_attr(ino, i.snap, n),
                }
            }
        }
    }

    /// None: no such name (the kernel may cache that).
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Option<Attr>> {
        if parent == inode::ROOT {
            if name == b"latest" {
                return self.latest_attr();
            }
            if name == b"history" {
                return Ok(Some(self.history_root_attr()));
            }
            let name = String::from_utf8_lossy(name);
            return self.with_snapshots(true, |s| {
                s.by_name
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, r)| Self::snapshot_attr(r))
            });
        }
        if inode::history_seq(parent).is_some() {
            return self.history_lookup(parent, name);
        }
        let p = self.inode(parent)?;
        let Some(tree) = p.tree else {
            return Err(Error::Invalid("not a directory".into()));
        };
        let Some(node) = self.shared.conn()?.entry(tree, name)? else {
            return Ok(None);
        };
        self.child(parent, &p, node).map(Some)
    }

    /// Up to `max` entries after `cookie` (0 = from the start), `.` and `..`
    /// included. `plus`: the kernel counts each entry as looked up.
    pub fn readdir(&self, ino: u64, cookie: u64, max: usize, plus: bool) -> Result<Vec<DirItem>> {
        if inode::history_seq(ino).is_some() {
            return self.history_readdir(ino, cookie, max, plus);
        }
        let mut out = Vec::new();
        if ino == inode::ROOT {
            let root = self.root_attr();
            let mut items = vec![
                DirItem {
                    name: b".".to_vec(),
                    cookie: 1,
                    attr: root.clone(),
                },
                DirItem {
                    name: b"..".to_vec(),
                    cookie: 2,
                    attr: root,
                },
            ];
            if let Some(l) = self.latest_attr()? {
                items.push(DirItem {
                    name: b"latest".to_vec(),
                    cookie: 3,
                    attr: l,
                });
            }
            items.push(DirItem {
                name: b"history".to_vec(),
                cookie: 4,
                attr: self.history_root_attr(),
            });
            self.with_snapshots(true, |s| {
                for (i, (n, r)) in s.by_name.iter().enumerate() {
                    items.push(DirItem {
                        name: n.as_bytes().to_vec(),
                        cookie: 5 + i as u64,
                        attr: Self::snapshot_attr(r),
                    });
                }
            })?;
            out.extend(items.into_iter().filter(|i| i.cookie > cookie).take(max));
            return Ok(out);
        }
        let dir = self.inode(ino)?;
        let tree = dir
            .tree
            .ok_or_else(|| Error::Invalid("not a directory".into()))?;
        let self_attr = self.getattr(ino)?;
        if cookie < 1 {
            out.push(DirItem {
                name: b".".to_vec(),
                cookie: 1,
                attr: self_attr.clone(),
            });
        }
        if cookie < 2 {
            let parent_attr = self.getattr(dir.parent).unwrap_or(self_attr);
            out.push(DirItem {
                name: b"..".to_vec(),
                cookie: 2,
                attr: parent_attr,
            });
        }
        // Entry cookies are node_offset + 3: stable, and a resumable index seek.
        let from = cookie.saturating_sub(2);
        let nodes = self
            .shared
            .conn()?
            .entries_from(tree, from, max.saturating_sub(out.len()))?;
        for n in nodes {
            let cookie = n.node_offset + 3;
            let name = n.name.clone();
            let attr = self.child(ino, &dir, n)?;
            out.push(DirItem { name, cookie, attr });
        }
        Ok(out)
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let ino = self.resolve_version(ino);
        if let Some(target) = inode::latest_target(ino) {
            return Ok(self.dir_name(&self.snapshot(target)?).into_bytes());
        }
        let i = self.inode(ino)?;
        i.node
            .as_ref()
            .and_then(|n| n.target.clone())
            .ok_or_else(|| Error::Invalid("not a symlink".into()))
    }

    /// The kernel dropped `n` references to an inode.
    pub fn forget(&self, ino: u64, n: u64) {
        if inode::history_seq(ino).is_some() {
            self.history_forget(ino, n);
        }
        let mut files = self.shared.files.lock().expect("file cache lock");
        if let Some(h) = files.held.get_mut(&ino) {
            h.lookups = h.lookups.saturating_sub(n);
            if h.lookups == 0 {
                files.held.remove(&ino);
            }
        }
    }

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
        let i = self.cached(ino)?;
        let n = i.node.as_ref()?;
        Some((i.parent, n.name.as_slice().into()))
    }

    pub fn xattrs(&self, ino: u64) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let ino = self.resolve_version(ino);
        if inode::decode(ino).is_none() {
            return Ok(Vec::new());
        }
        let i = self.inode(ino)?;
        match &i.node {
            Some(n) => decode_xattrs(&n.xattrs),
            None => Ok(Vec::new()),
        }
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
            pos = f.frame_end(ci, fi);
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
            let is_hole = is_zero_chunk(&c.id, c.len, f.locs[ci].stored_len);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tree::ChunkRef;
    use crate::ids::{ChunkId, Hash};

    #[test]
    fn a_frame_ends_at_the_next_frame_or_its_chunks_end() {
        const K: u64 = 1024;
        let mut chunks = ChunkList::default();
        for (i, len) in [300 * K, 100 * K].into_iter().enumerate() {
            chunks.push(ChunkRef {
                id: ChunkId(Hash::of(&[i as u8])),
                len: len as u32,
            });
        }
        let f = OpenFile {
            ino: 1,
            opened_ns: 0,
            chunks,
            starts: vec![0, 300 * K],
            size: 400 * K,
            locs: Vec::new(),
            last_end: AtomicU64::new(u64::MAX),
        };
        assert_eq!(f.frame_end(0, 0), 256 * K);
        assert_eq!(f.frame_end(0, 1), 300 * K, "a chunk's short last frame");
        // Stepping from frame end to frame end visits the short final chunk.
        assert_eq!(f.frame_end(1, 0), 400 * K);
    }

    fn resolved(ino: u64, opened_ns: i64) -> Arc<OpenFile> {
        Arc::new(OpenFile {
            ino,
            opened_ns,
            chunks: ChunkList::default(),
            starts: Vec::new(),
            size: 0,
            locs: Vec::new(),
            last_end: AtomicU64::new(u64::MAX),
        })
    }

    /// Hold `ino` as the kernel would (one lookup under `name` in directory
    /// 1) and give it a resolution, as its first read does.
    fn hold_and_read(files: &mut Files, ino: u64, opened_ns: i64) {
        let h = files.held.entry(ino).or_default();
        h.lookups += 1;
        h.add_name(1, format!("f{ino}").as_bytes());
        h.file = Some(resolved(ino, opened_ns));
        files.fresh.push_back(ino);
    }

    #[test]
    fn a_reader_of_many_files_gets_the_oldest_dropped_past_the_budget() {
        let mut files = Files::new();
        for ino in 0..HELD_FRESH as u64 + 10 {
            hold_and_read(&mut files, ino + 100, ino as i64);
        }
        // The kernel forgot one of the oldest already: nothing to ask.
        files.held.remove(&100);
        let names = files.trim(1_000);
        let want: Vec<CachedName> = (101..100 + HELD_FRESH as u64 / 2 + 10)
            .map(|i| (1, format!("f{i}").into_bytes().into_boxed_slice()))
            .collect();
        assert_eq!(
            names, want,
            "the oldest, down to half the budget, each once"
        );
        assert_eq!(files.fresh.len(), HELD_FRESH / 2);
        for ino in 0..HELD_FRESH as u64 / 2 {
            hold_and_read(&mut files, ino + 10_000, 1_500);
        }
        assert!(
            files.trim(2_000).is_empty(),
            "nothing while within the budget"
        );
        // Asked once: the idle expiry asks again later, not the budget.
        assert_eq!(files.held[&101].nudged_ns, 1_000);
    }

    #[test]
    fn an_old_held_file_is_asked_for_once_per_expiry_and_holds_the_lease() {
        let idle = Duration::from_secs(1);
        let mut files = Files::new();
        hold_and_read(&mut files, 7, 0);
        let (oldest, names) = files.expire(2_000_000_000, idle);
        assert_eq!(oldest, 0, "an open file keeps the lease at its resolution");
        assert_eq!(names.len(), 1);
        let (_, again) = files.expire(2_500_000_000, idle);
        assert!(again.is_empty(), "not asked again within the expiry");
        let (_, later) = files.expire(3_100_000_000, idle);
        assert_eq!(later.len(), 1, "asked again once the expiry has passed");
        files.held.remove(&7);
        let (oldest, _) = files.expire(3_200_000_000, idle);
        assert_eq!(oldest, 3_200_000_000, "forgotten: the lease moves on");
    }
}
