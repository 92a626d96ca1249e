//! Resolved files: what reading one needs (its chunk list and where each
//! chunk lies, read from the catalog once), and what keeps a resolution —
//! the kernel holding the file, recent use — with the time the mount's
//! lease reports for all of them, so gc keeps the packs they point into.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use lru::LruCache;

use crate::format::blob::FRAME;
use crate::format::tree::ChunkList;
use crate::repo::catalog::ChunkLoc;

/// What reading a file needs, resolved once: kept for as long as the
/// kernel holds the file, and by inode number for a while after (`Files`).
pub(super) struct OpenFile {
    pub(super) ino: u64,
    /// When it was resolved: its chunk locations are from then. The mount's
    /// lease reports the oldest of these, so gc keeps the packs they point
    /// into.
    pub(super) opened_ns: i64,
    pub(super) chunks: ChunkList,
    /// Start offset of each chunk, for a binary search by offset.
    pub(super) starts: Vec<u64>,
    pub(super) size: u64,
    /// Resolved once, so a file being read keeps its bytes even if gc moves
    /// its chunks meanwhile (the old pack stays while the lease says so).
    pub(super) locs: Vec<ChunkLoc>,
    /// End of the last read, to recognize a sequential reader.
    pub(super) last_end: AtomicU64,
}

impl OpenFile {
    /// File offset just past frame `fi` of chunk `ci` (a chunk's last frame
    /// is short).
    pub(super) fn frame_end(&self, ci: usize, fi: u32) -> u64 {
        let chunk_end = self.starts[ci] + u64::from(self.chunks.get(ci).len);
        (self.starts[ci] + (u64::from(fi) + 1) * FRAME as u64).min(chunk_end)
    }
}

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
pub(super) struct Files {
    /// By inode number: what the next read of the file reuses (bounded).
    pub(super) recent: LruCache<u64, Arc<OpenFile>>,
    /// Regular files the kernel holds, by the inode number it knows them by.
    pub(super) held: HashMap<u64, Held>,
    /// Held files in the order they were given a resolution, not yet asked
    /// to be dropped: past `HELD_FRESH`, the oldest are asked at once rather
    /// than after the idle expiry, so that a reader going through millions
    /// of files keeps a bounded number of resolutions here (the kernel keeps
    /// the files it has looked up for as long as it has memory to spare).
    pub(super) fresh: VecDeque<u64>,
    /// Start times of resolutions under way, by a token of their own.
    pub(super) resolving: HashMap<u64, i64>,
    pub(super) next_token: u64,
}

/// What `Files::expire` found: the time for the lease, names for the kernel
/// to drop, and held files (most likely open) whose resolution is old, to
/// be resolved again where their chunks are still in the catalog, so that
/// an open file pins only what its own snapshot no longer keeps.
pub(super) struct Expired {
    pub(super) oldest_ns: i64,
    pub(super) stale: Vec<CachedName>,
    pub(super) refresh: Vec<(u64, Arc<OpenFile>)>,
}

/// A name in the kernel's cache: (parent directory's inode, name).
pub(super) type CachedName = (u64, Box<[u8]>);

/// A regular file the kernel has looked up and not yet forgotten.
#[derive(Default)]
pub(super) struct Held {
    pub(super) lookups: u64,
    /// Its resolution, from its first read while held.
    pub(super) file: Option<Arc<OpenFile>>,
    /// (parent, name) the kernel may cache it under: from its first read,
    /// and from every lookup of a hard-linked file (whose other names the
    /// catalog does not give by inode number).
    pub(super) names: Vec<CachedName>,
    /// When the kernel was last asked to drop those names.
    pub(super) nudged_ns: i64,
}

/// Held files with a resolution that may wait for the idle expiry before
/// the kernel is asked to drop them (see `Files::fresh`): about 0.5 KiB each.
pub(super) const HELD_FRESH: usize = 1024;

/// A hard-linked file's names kept for dropping from the kernel's cache;
/// past this, the kernel forgets it when its memory runs short.
pub(super) const MAX_NAMES: usize = 256;

impl Held {
    pub(super) fn add_name(&mut self, parent: u64, name: &[u8]) {
        if self.names.len() < MAX_NAMES
            && !self.names.iter().any(|(p, n)| *p == parent && **n == *name)
        {
            self.names.push((parent, name.into()));
        }
    }
}

impl Files {
    pub(super) fn new() -> Files {
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
    pub(super) fn expire(&mut self, now: i64, idle: Duration) -> Expired {
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
        let mut refresh = Vec::new();
        for (&ino, h) in self.held.iter_mut() {
            let Some(f) = &h.file else { continue };
            if f.opened_ns < limit && h.nudged_ns < limit {
                // Asked once already and still held: most likely open.
                if h.nudged_ns != 0 {
                    refresh.push((ino, f.clone()));
                }
                h.nudged_ns = now;
                stale.extend(h.names.iter().cloned());
            }
        }
        Expired {
            oldest_ns: self.oldest_ns().unwrap_or(now),
            stale,
            refresh,
        }
    }

    /// Past `HELD_FRESH`, ask the kernel to drop the oldest held files
    /// given a resolution (see `fresh`) down to half of it: their names, for
    /// `Invalidate`. In batches, because each drop also invalidates the
    /// attributes of the file's directory, which the kernel then asks for
    /// again (once per batch, not once per file).
    pub(super) fn trim(&mut self, now: i64) -> Vec<CachedName> {
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

    pub(super) fn oldest_ns(&self) -> Option<i64> {
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

pub(super) const FILE_CACHE: usize = 1024;

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
        let first = files.expire(2_000_000_000, idle);
        assert_eq!(
            first.oldest_ns, 0,
            "an open file keeps the lease at its resolution"
        );
        assert_eq!(first.stale.len(), 1);
        assert!(
            first.refresh.is_empty(),
            "first asked to drop it, not resolved again"
        );
        let again = files.expire(2_500_000_000, idle);
        assert!(again.stale.is_empty(), "not asked again within the expiry");
        let later = files.expire(3_100_000_000, idle);
        assert_eq!(
            later.stale.len(),
            1,
            "asked again once the expiry has passed"
        );
        assert_eq!(
            later.refresh.len(),
            1,
            "still held: resolved again if it can be"
        );
        files.held.remove(&7);
        let gone = files.expire(3_200_000_000, idle);
        assert_eq!(
            gone.oldest_ns, 3_200_000_000,
            "forgotten: the lease moves on"
        );
    }
}
