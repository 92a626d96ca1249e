//! Snapshots as directories, without FUSE types: lookup, getattr, readdir,
//! read, xattrs, seek. The FUSE adapter (`mount::fuse`) is a thin layer over
//! this.
//!
//! Nothing is loaded at start: inodes are computed (`inode`), resolved from
//! the catalog on demand and kept in a bounded cache. This file is the
//! namespace (the root, snapshot directories, entries, attributes); the
//! `history/` view is `history_view`; reads go through `data` (the data
//! path), `files` (resolved files and what holds them), `frame` and
//! `cache` (decoded frames, bounded).

pub(crate) mod cache;
mod data;
mod files;
mod frame;
mod history_view;
pub(crate) mod inode;
mod runs;

use data::Job;
use files::{Files, Invalidate};

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded};
use lru::LruCache;

use crate::error::{Error, Result};
use crate::format::record::SnapshotRow;
use crate::format::tree::{FileTime, Kind, Meta, decode_xattrs};
use crate::ids::{SnapshotId, TreeId};
use crate::repo::Repository;
use crate::repo::catalog::{Catalog, Node};
use crate::repo::coalesce::Span;
use cache::FrameCache;

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
    pub atime: FileTime,
    pub mtime: FileTime,
    pub ctime: FileTime,
    pub rdev: u32,
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
    /// Serve extended attributes even when no snapshot has any (see
    /// `SnapshotFs::xattrs_served`).
    pub always_xattrs: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            names: Names::Plain,
            cache_bytes: 256 << 20,
            prefetch_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            readahead: 8 << 20,
            idle_expiry: DEFAULT_IDLE_EXPIRY,
            always_xattrs: false,
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
    /// The catalog file the mount started with (`Repository::catalog_file`).
    catalog_file: (u64, u64),
    /// How read-ahead merges reads of adjacent frames (see `runs`); None
    /// for a local repository, whose reads are a `pread` each.
    merge: Option<Span>,
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
    /// Directories passed on the way to inodes resolved lately, most recent
    /// last (see `inode`).
    ways: Mutex<Vec<DirSpan>>,
    /// Whether extended attributes are served (see `xattrs_served`).
    xattr_mode: Mutex<XattrMode>,
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
    /// The versions of the history path looked up last: `ls` of it looks
    /// it up, then lists it, and both need them (see
    /// `history_view::hist_entries_at`).
    hist_found: Mutex<Option<history_view::FoundAt>>,
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
const WAYS: usize = 64;

/// Whether the mount serves extended attributes, decided at the first
/// request for one, and which snapshots have any.
#[derive(Default)]
struct XattrMode {
    served: Option<bool>,
    has: HashMap<SnapshotId, bool>,
    /// Per directory page: whether any entry at or beneath it has one.
    memo: crate::repo::catalog::Folded<bool>,
}

/// A directory of a snapshot and the positions beneath it: a resolution
/// of a position in `(base, end]` can start there.
#[derive(Clone, Copy)]
struct DirSpan {
    snap: SnapshotId,
    base: u64,
    end: u64,
    tree: TreeId,
}
const DIR_CACHE: usize = 256;
const HIST_DIRS: usize = 1024;
/// See `MountOptions::idle_expiry`.
pub const DEFAULT_IDLE_EXPIRY: Duration = Duration::from_secs(60);
/// How often the mount's lease is brought up to date, at most.
const LEASE_RENEW: Duration = Duration::from_secs(2);

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
            None => {
                let cat = Catalog::open_read(&self.repo.catalog_path())?;
                // Checked after the open: a catalog swapped in before it
                // is seen here, one swapped in after it is not the one open.
                if self.repo.catalog_file()? != self.catalog_file {
                    let e = Error::CatalogReplaced(self.repo.catalog_path());
                    log::error!("{e}");
                    return Err(e);
                }
                cat
            }
        };
        Ok(Conn {
            cat: Some(cat),
            pool: &self.pool,
        })
    }
}

fn dir_attr(ino: u64, perm: u16, time: FileTime) -> Attr {
    Attr {
        ino,
        kind: Kind::Dir,
        perm,
        nlink: 2,
        uid: 0,
        gid: 0,
        size: 0,
        blocks: 0,
        atime: time,
        mtime: time,
        ctime: time,
        rdev: 0,
    }
}

impl SnapshotFs {
    pub fn new(repo: Repository, opts: MountOptions) -> Result<SnapshotFs> {
        // Fail now, with a clear message, if the catalog cannot be opened.
        let first = Catalog::open_read(&repo.catalog_path())?;
        let catalog_file = repo.catalog_file()?;
        let (trim, trim_wanted) = bounded::<()>(1);
        let merge = Span::of(&repo);
        let shared = Arc::new(Shared {
            repo,
            pool: Mutex::new(vec![first]),
            frames: FrameCache::new(opts.cache_bytes),
            files: Mutex::new(Files::new()),
            idle_expiry: opts.idle_expiry,
            invalidate: OnceLock::new(),
            trim,
            catalog_file,
            merge,
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
        // Where each frame read waits on a network round trip (object
        // storage), more readers than cores keep a sequential reader fed.
        let prefetch_threads = if opts.prefetch_threads > 0 {
            opts.prefetch_threads
                .max(shared.repo.backend.parallel_reads())
        } else {
            0
        };
        let prefetch = (prefetch_threads > 0).then(|| {
            let (tx, rx) = bounded::<Job>(256);
            for i in 0..prefetch_threads {
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
            hist_found: Mutex::new(None),
            inodes: Mutex::new(LruCache::new(
                NonZeroUsize::new(INODE_CACHE).expect("non-zero"),
            )),
            ways: Mutex::new(Vec::new()),
            xattr_mode: Mutex::new(XattrMode {
                served: opts.always_xattrs.then_some(true),
                ..XattrMode::default()
            }),
            warmed: Mutex::new(LruCache::new(
                NonZeroUsize::new(DIR_CACHE).expect("non-zero"),
            )),
            prefetch,
            // A job reads a whole run: far enough ahead for half the
            // read-ahead threads to hold a full-size run each (many runs
            // are shorter, ending with a pack or a chunk stored elsewhere).
            readahead: match merge {
                Some(span) => opts
                    .readahead
                    .max(span.max_len * prefetch_threads as u64 / 2),
                None => opts.readahead,
            },
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
        dir_attr(inode::ROOT, 0o555, FileTime::from_ns(newest))
    }

    fn snapshot_attr(s: &SnapshotRow) -> Attr {
        dir_attr(
            inode::snapshot_root(s.id),
            0o555,
            FileTime::from_ns(s.started_ns),
        )
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
            atime: FileTime::from_ns(s.started_ns),
            mtime: FileTime::from_ns(s.started_ns),
            ctime: FileTime::from_ns(s.started_ns),
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
    /// along depth-first positions from the deepest directory recently
    /// passed that holds it (else the snapshot's root). A listing larger
    /// than the inode cache (`ls -l` of 100,000 files) then costs one step
    /// per entry, in pages already decoded, not a descent from the root.
    fn inode(&self, ino: u64) -> Result<Arc<Inode>> {
        if let Some(i) = self.cached(ino) {
            return Ok(i);
        }
        let (snap_id, pos) = inode::decode(ino).ok_or(Error::NoSuchInode(ino))?;
        let snap = self.snapshot(snap_id)?;
        self.xattrs_fit(&snap)?;
        let gone = || Error::NoSuchInode(ino);
        if pos == 0 {
            return Ok(self.remember(
                ino,
                Inode {
                    snap: snap_id,
                    pos: 0,
                    parent: inode::ROOT,
                    node: None,
                    tree: Some(snap.root_tree),
                },
            ));
        }
        let near = self
            .ways
            .lock()
            .expect("ways lock")
            .iter()
            .filter(|d| d.snap == snap_id && d.base < pos && pos <= d.end)
            .max_by_key(|d| d.base)
            .copied();
        let (mut tree, mut base) = near.map_or((snap.root_tree, 0), |d| (d.tree, d.base));
        let mut parent;
        let cat = self.shared.conn()?;
        loop {
            let node = cat.entry_at(tree, pos - base - 1)?.ok_or_else(gone)?;
            let npos = inode::child_pos(base, node.node_offset);
            parent = inode::encode(snap_id, base)?;
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
                    // A subtree is given only where its row holds what the
                    // entry claims: the positions beneath it end there.
                    let end = npos.checked_add(cat.tree_nodes(sub)?).ok_or_else(gone)?;
                    let mut ways = self.ways.lock().expect("ways lock");
                    if ways.len() >= WAYS {
                        ways.remove(0);
                    }
                    ways.push(DirSpan {
                        snap: snap_id,
                        base: npos,
                        end,
                        tree: sub,
                    });
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
            atime: m.atime,
            mtime: m.mtime,
            ctime: m.ctime,
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
            return inode::encode(snap, first);
        }
        inode::encode(snap, pos)
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

    /// Whether this mount serves extended attributes at all. A kernel asks
    /// for them (and for ACLs) once per file and listing, a round trip
    /// each, however few files have any: `ls -l` of 100,000 files costs
    /// 200,000 of them. Told "not supported" once, it stops asking for the
    /// rest of the mount. So when no snapshot in the repository has any
    /// attribute (the common case), none are served; decided at the first
    /// request, from every snapshot's pages (each page read once).
    /// A snapshot with attributes made after that is refused until a
    /// remount ([`Error::XattrsAfterMount`]): never shown without them.
    pub fn xattrs_served(&self) -> Result<bool> {
        let mut st = self.xattr_mode.lock().expect("xattr mode lock");
        if let Some(s) = st.served {
            return Ok(s);
        }
        let snaps = self.with_snapshots(true, |s| s.by_time.clone())?;
        let mut any = false;
        for s in &snaps {
            // A snapshot whose pages cannot all be read may have some: they
            // are then served file by file, its damage an error of its own
            // files, not of every getxattr (and ACL check) of the mount.
            any |= self.has_xattrs(&mut st, s).unwrap_or_else(|e| {
                log::warn!("snapshot {}: {e}; extended attributes are served", s.name);
                true
            });
        }
        st.served = Some(any);
        if any {
            // Served: no snapshot is checked again, so the per-page memo
            // (one row per page of the repository) is let go.
            st.memo = Default::default();
        }
        Ok(any)
    }

    /// Whether any entry of snapshot `s` has an extended attribute.
    fn has_xattrs(&self, st: &mut XattrMode, s: &SnapshotRow) -> Result<bool> {
        if let Some(h) = st.has.get(&s.id) {
            return Ok(*h);
        }
        let h = self
            .shared
            .conn()?
            .fold_pages(s.root_tree, &mut st.memo, |page, below| {
                Ok(below.contains(&Some(true))
                    || match page {
                        crate::format::page::Page::Leaf(e) => {
                            e.iter().any(|e| !e.xattrs.is_empty())
                        }
                        crate::format::page::Page::Index { .. } => false,
                    })
            })?;
        st.has.insert(s.id, h);
        Ok(h)
    }

    /// A snapshot may be served unless this mount serves no attributes and
    /// it has some (see [`SnapshotFs::xattrs_served`]).
    fn xattrs_fit(&self, s: &SnapshotRow) -> Result<()> {
        let mut st = self.xattr_mode.lock().expect("xattr mode lock");
        if st.served != Some(false) {
            return Ok(());
        }
        let known = st.has.contains_key(&s.id);
        if self.has_xattrs(&mut st, s)? {
            if !known {
                log::warn!(
                    "snapshot {} has extended attributes, which this mount does not serve: mount again to see it",
                    s.name
                );
            }
            return Err(Error::XattrsAfterMount(s.name.clone()));
        }
        Ok(())
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
}
