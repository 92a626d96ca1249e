//! Decoded frames of chunks, kept in a bounded LRU so that sequential 128 KiB
//! reads inflate each frame once, and read ahead by background threads since
//! a file's chunk list says exactly what comes next.

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::sync::{Arc, Condvar, Mutex};

use lru::LruCache;

use super::frame::{Frame, Slot, Slots};
use crate::format::blob::{FRAME, Header};
use crate::ids::{ChunkId, PackName};

pub type FrameKey = (ChunkId, u32);

/// A parsed blob header belongs to one stored copy of a chunk: its id, its
/// pack and offset, and the length it was checked against. `gc` moves
/// chunks, and `gc --recompress` stores them again in other bytes (other
/// frame lengths) under the same id, so a layout learnt at the old place
/// must not be used to read the new one.
pub type HeaderKey = (ChunkId, PackName, u64, u32);

struct Lru {
    frames: LruCache<FrameKey, Arc<Frame>>,
    bytes: usize,
}

pub struct FrameCache {
    lru: Mutex<Lru>,
    capacity: usize,
    /// Frames being decoded right now; a reader of one waits instead of
    /// decoding it a second time.
    loading: Mutex<HashSet<FrameKey>>,
    loaded: Condvar,
    headers: Mutex<LruCache<HeaderKey, Arc<Header>>>,
    /// Where full-size frames live (see `frame`).
    slots: Option<Arc<Slots>>,
}

/// Slots beyond the cache's own: frames evicted while still being sent to
/// a reader, and frames being decoded.
const SLOTS_IN_FLIGHT: usize = 64;

impl FrameCache {
    pub fn new(capacity: usize) -> FrameCache {
        FrameCache {
            lru: Mutex::new(Lru {
                frames: LruCache::unbounded(),
                bytes: 0,
            }),
            capacity,
            loading: Mutex::new(HashSet::new()),
            loaded: Condvar::new(),
            headers: Mutex::new(LruCache::new(NonZeroUsize::new(4096).expect("non-zero"))),
            slots: Slots::new(capacity / FRAME + SLOTS_IN_FLIGHT),
        }
    }

    pub fn get(&self, key: &FrameKey) -> Option<Arc<Frame>> {
        self.lru
            .lock()
            .expect("frame cache lock")
            .frames
            .get(key)
            .cloned()
    }

    pub fn contains(&self, key: &FrameKey) -> bool {
        self.lru
            .lock()
            .expect("frame cache lock")
            .frames
            .contains(key)
    }

    fn insert(&self, key: FrameKey, data: Arc<Frame>) {
        let mut l = self.lru.lock().expect("frame cache lock");
        l.bytes += data.len();
        if let Some(old) = l.frames.put(key, data) {
            l.bytes -= old.len();
        }
        while l.bytes > self.capacity {
            match l.frames.pop_lru() {
                Some((_, v)) => l.bytes -= v.len(),
                None => break,
            }
        }
    }

    /// Drop a frame that will not be asked for again soon.
    pub fn forget(&self, key: &FrameKey) {
        let mut l = self.lru.lock().expect("frame cache lock");
        if let Some(v) = l.frames.pop(key) {
            l.bytes -= v.len();
        }
    }

    /// A slot to decode a full-size frame into; None: use the heap.
    pub fn slot(&self) -> Option<Slot> {
        self.slots.as_ref()?.take()
    }

    /// The frame from the cache, or decoded by `load` exactly once however
    /// many threads ask at the same time.
    pub fn get_or_load(
        &self,
        key: FrameKey,
        load: impl FnOnce() -> crate::Result<Frame>,
    ) -> crate::Result<Arc<Frame>> {
        loop {
            if let Some(v) = self.get(&key) {
                return Ok(v);
            }
            let mut loading = self.loading.lock().expect("loading lock");
            if loading.contains(&key) {
                let _unused = self.loaded.wait(loading).expect("loading lock");
                continue;
            }
            // Re-check under the lock: it may have landed meanwhile.
            if let Some(v) = self.get(&key) {
                return Ok(v);
            }
            loading.insert(key);
            break;
        }
        let result = load().map(Arc::new);
        if let Ok(v) = &result {
            self.insert(key, v.clone());
        }
        self.loading.lock().expect("loading lock").remove(&key);
        self.loaded.notify_all();
        result
    }

    /// Claim for decoding every frame of `keys` that nobody holds or
    /// decodes: readers of a claimed frame wait for it as for one being
    /// loaded by `get_or_load`. Claimed frames are released as they are
    /// put, and the rest when the claim is dropped.
    pub fn claim(&self, keys: impl IntoIterator<Item = FrameKey>) -> Claim<'_> {
        let mut loading = self.loading.lock().expect("loading lock");
        let lru = self.lru.lock().expect("frame cache lock");
        let keys = keys
            .into_iter()
            .filter(|k| !lru.frames.contains(k) && loading.insert(*k))
            .collect();
        Claim { cache: self, keys }
    }

    /// True if nobody holds or decodes this frame: worth prefetching.
    pub fn absent(&self, key: &FrameKey) -> bool {
        !self.contains(key) && !self.loading.lock().expect("loading lock").contains(key)
    }

    pub fn header(&self, key: &HeaderKey) -> Option<Arc<Header>> {
        self.headers
            .lock()
            .expect("header cache lock")
            .get(key)
            .cloned()
    }

    pub fn put_header(&self, key: HeaderKey, h: Arc<Header>) {
        self.headers.lock().expect("header cache lock").put(key, h);
    }

    pub fn forget_header(&self, key: &HeaderKey) {
        self.headers.lock().expect("header cache lock").pop(key);
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.lru.lock().expect("frame cache lock").bytes
    }
}

/// Frames claimed for decoding (see `FrameCache::claim`).
pub struct Claim<'a> {
    cache: &'a FrameCache,
    keys: HashSet<FrameKey>,
}

impl Claim<'_> {
    pub fn holds(&self, key: &FrameKey) -> bool {
        self.keys.contains(key)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// A claimed frame, decoded: in the cache, and its readers woken.
    pub fn put(&mut self, key: FrameKey, frame: Frame) {
        if self.keys.remove(&key) {
            self.cache.insert(key, Arc::new(frame));
            self.cache
                .loading
                .lock()
                .expect("loading lock")
                .remove(&key);
            self.cache.loaded.notify_all();
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut loading = self.cache.loading.lock().expect("loading lock");
        for k in &self.keys {
            loading.remove(k);
        }
        drop(loading);
        self.cache.loaded.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Hash;

    #[test]
    fn stays_within_its_byte_budget_and_loads_once() {
        let c = FrameCache::new(10_000);
        for i in 0..100u32 {
            let v = c
                .get_or_load((ChunkId(Hash::of(b"x")), i), || {
                    Ok(Frame::heap(vec![0u8; 1000]))
                })
                .unwrap();
            assert_eq!(v.len(), 1000);
        }
        assert!(c.bytes() <= 10_000);
        let key = (ChunkId(Hash::of(b"x")), 99);
        let v = c
            .get_or_load(key, || panic!("must come from the cache"))
            .unwrap();
        assert_eq!(v.len(), 1000);
        assert!(
            c.get_or_load((ChunkId(Hash::of(b"y")), 0), || Err(crate::Error::corrupt(
                "bad"
            )))
            .is_err()
        );
    }

    #[test]
    fn claimed_frames_are_loaded_by_their_claim_alone_and_released() {
        let c = FrameCache::new(1 << 20);
        let id = ChunkId(Hash::of(b"c"));
        c.get_or_load((id, 0), || Ok(Frame::heap(vec![1u8; 10])))
            .unwrap();
        let mut claim = c.claim((0..3).map(|i| (id, i)));
        assert!(!claim.holds(&(id, 0)), "a cached frame is not claimed");
        assert!(claim.holds(&(id, 1)) && claim.holds(&(id, 2)));
        assert!(!c.absent(&(id, 1)) && !c.absent(&(id, 2)));
        assert!(c.claim([(id, 1)]).is_empty(), "claimed once only");
        claim.put((id, 1), Frame::heap(vec![2u8; 10]));
        assert_eq!(c.get(&(id, 1)).unwrap()[0], 2);
        drop(claim);
        assert!(c.absent(&(id, 2)), "an unput claim is released on drop");
        let v = c
            .get_or_load((id, 2), || Ok(Frame::heap(vec![3u8; 10])))
            .unwrap();
        assert_eq!(v[0], 3);
    }

    #[test]
    fn a_forgotten_frame_leaves_and_frees_its_bytes() {
        let c = FrameCache::new(1 << 20);
        let key = (ChunkId(Hash::of(b"z")), 0);
        let held = c
            .get_or_load(key, || Ok(Frame::heap(vec![7u8; 4096])))
            .unwrap();
        assert_eq!(c.bytes(), 4096);
        c.forget(&key);
        assert_eq!(c.bytes(), 0);
        assert!(c.absent(&key));
        // Whoever still holds it keeps valid bytes.
        assert_eq!(held[4095], 7);
        let again = c
            .get_or_load(key, || Ok(Frame::heap(vec![8u8; 4096])))
            .unwrap();
        assert_eq!(again[0], 8, "decoded again after being forgotten");
    }
}
