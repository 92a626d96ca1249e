//! What a repository's key changes in how its objects are named and cut.
//!
//! An unencrypted repository names a chunk by plain BLAKE3 of its content,
//! cuts files with FastCDC's published gear table and ends directory pages
//! where a public hash of a name says. Anyone can then compute the ids and
//! boundaries of a known file and confirm that it is stored. An encrypted
//! repository does all three under keys derived from its master key:
//! BLAKE3 in keyed mode for chunk ids and page boundaries, and a gear table
//! drawn from a keyed BLAKE3 stream, so only a key holder can tell which
//! chunks a known file would make.
//!
//! Everything that computes an id or a boundary takes the repository's
//! `Keying`, so two repositories with different keys can be open in one
//! process (`copy` between them).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};

use crate::crypto::{Key, Subkeys};
use crate::format::blob::{FRAME, frame_count, frame_len_of};
use crate::format::page::BoundaryKey;
use crate::ids::{ChunkId, Hash};

/// The gear tables the chunker uses (the table and the table shifted left
/// by one, as FastCDC 2020 needs both).
pub struct Gear {
    pub table: [u64; 256],
    pub shifted: [u64; 256],
}

/// The sealing keys of an encrypted repository.
pub struct Seal {
    /// Seals each frame of a blob.
    pub blob: Key,
    /// Seals each pack's table.
    pub table: Key,
}

/// The keys that shape ids and boundaries, and seal what is stored.
pub struct Keying {
    /// BLAKE3 key of frame digests and chunk ids; None: plain BLAKE3.
    id: Option<[u8; 32]>,
    boundary: BoundaryKey,
    gear: Option<Box<Gear>>,
    seal: Option<Seal>,
    /// The digest of one whole frame of zeros under `id`.
    zero_frame: Hash,
    /// Ids of zero chunks already computed, by length (see `zero_id`).
    zero_ids: RwLock<HashMap<u32, ChunkId>>,
    /// Which key this is, for naming the local cache of the catalog
    /// ([`Keying::cache_tag`]); None: unencrypted.
    cache_tag: Option<[u8; 8]>,
}

/// BLAKE3 of one whole frame of zeros (pinned by a test), so that the id of
/// a run of zeros as long as a hole's chunks is known without hashing
/// megabytes of zeros in the common, unkeyed case.
const ZERO_FRAME_HASH: [u8; 32] = [
    0x86, 0xbb, 0x2b, 0x52, 0x1a, 0x10, 0x61, 0x2d, 0x5a, 0x1d, 0x38, 0x20, 0x4f, 0xac, 0x4f, 0xa6,
    0x32, 0x46, 0x6d, 0x18, 0x66, 0x14, 0x4d, 0x8a, 0x6a, 0x7e, 0x3a, 0xfc, 0x05, 0x0c, 0xe7, 0xae,
];

/// A frame's worth of zeros, for the hashes of zero chunks' frames.
static ZEROS: [u8; FRAME] = [0; FRAME];

/// Bounded: a damaged catalog may name chunks of any length, and one that is
/// missing here only costs a recomputation.
const ZERO_IDS_MAX: usize = 1024;

static PLAIN: LazyLock<Arc<Keying>> = LazyLock::new(|| {
    Arc::new(Keying {
        id: None,
        boundary: BoundaryKey::public(),
        gear: None,
        seal: None,
        zero_frame: Hash(ZERO_FRAME_HASH),
        zero_ids: RwLock::default(),
        cache_tag: None,
    })
});

/// A chunk's id and its frames' digests, computed once by the reader.
pub struct Hashed {
    pub id: ChunkId,
    pub frame_hashes: Vec<Hash>,
}

impl Keying {
    /// The keying of an unencrypted repository (shared: it holds no secret).
    pub fn plain() -> Arc<Keying> {
        PLAIN.clone()
    }

    /// The keying of an encrypted repository, from its derived subkeys.
    pub fn encrypted(keys: &Subkeys) -> Arc<Keying> {
        let tag = blake3::keyed_hash(keys.cache.as_bytes(), b"snapfs catalog directory");
        let mut keying = Keying::keyed(
            *keys.id.as_bytes(),
            *keys.page.as_bytes(),
            *keys.chunker.as_bytes(),
            Some(Seal {
                blob: keys.blob.clone(),
                table: keys.table.clone(),
            }),
        );
        Arc::get_mut(&mut keying).expect("just made").cache_tag =
            Some(tag.as_bytes()[..8].try_into().expect("8 bytes"));
        keying
    }

    /// Eight bytes that tell this key from others (keyed BLAKE3 under the
    /// cache subkey, so they say nothing of the key), for the name of the
    /// catalog's local cache directory: a repository's id is in the clear
    /// in its config, and a repository under another key that copies it
    /// must not find that id's catalog. None: unencrypted.
    pub fn cache_tag(&self) -> Option<[u8; 8]> {
        self.cache_tag
    }

    /// A keying from its parts: `id` for chunk ids, `boundary` for page
    /// boundaries, `chunker` for the gear table, `seal` to seal.
    fn keyed(
        id: [u8; 32],
        boundary: [u8; 32],
        chunker: [u8; 32],
        seal: Option<Seal>,
    ) -> Arc<Keying> {
        let mut stream = blake3::Hasher::new_keyed(&chunker);
        stream.update(b"snapfs gear table");
        let mut bytes = [0u8; 256 * 8];
        stream.finalize_xof().fill(&mut bytes);
        let mut table = [0u64; 256];
        for (v, b) in table.iter_mut().zip(bytes.chunks_exact(8)) {
            *v = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
        let shifted = table.map(|v| v << 1);
        Arc::new(Keying {
            id: Some(id),
            boundary: BoundaryKey::keyed(boundary),
            gear: Some(Box::new(Gear { table, shifted })),
            seal,
            zero_frame: Hash(*blake3::keyed_hash(&id, &ZEROS).as_bytes()),
            zero_ids: RwLock::default(),
            cache_tag: None,
        })
    }

    /// Whether blobs and pack tables are sealed (an encrypted repository).
    pub fn is_sealed(&self) -> bool {
        self.seal.is_some()
    }

    /// The sealing keys; None in an unencrypted repository.
    pub fn seal(&self) -> Option<&Seal> {
        self.seal.as_ref()
    }

    pub fn boundary(&self) -> &BoundaryKey {
        &self.boundary
    }

    /// The chunker's gear tables; None: FastCDC's own.
    pub fn gear(&self) -> Option<&Gear> {
        self.gear.as_deref()
    }

    /// The digest of one frame's bytes.
    pub fn frame_hash(&self, data: &[u8]) -> Hash {
        match &self.id {
            None => Hash::of(data),
            Some(k) => Hash(*blake3::keyed_hash(k, data).as_bytes()),
        }
    }

    /// A chunk's id from its frames' digests.
    pub fn id_from_frames(&self, frames: &[Hash]) -> ChunkId {
        let mut h = match &self.id {
            None => blake3::Hasher::new(),
            Some(k) => blake3::Hasher::new_keyed(k),
        };
        for f in frames {
            h.update(&f.0);
        }
        ChunkId(Hash(*h.finalize().as_bytes()))
    }

    /// The id of `data` and its frames' digests. The id is BLAKE3 over the
    /// frames' digests, so each frame can be verified on its own.
    pub fn hash_chunk(&self, data: &[u8]) -> Hashed {
        let mut frame_hashes = Vec::with_capacity(frame_count(data.len()));
        if data.is_empty() {
            frame_hashes.push(self.frame_hash(&[]));
        }
        for f in data.chunks(FRAME) {
            frame_hashes.push(self.frame_hash(f));
        }
        Hashed {
            id: self.id_from_frames(&frame_hashes),
            frame_hashes,
        }
    }

    /// The digest of frame `i` of a chunk of `len` zeros.
    fn zero_frame_hash(&self, len: usize, i: usize) -> Hash {
        match frame_len_of(len, i) {
            FRAME => self.zero_frame,
            short => self.frame_hash(&ZEROS[..short]),
        }
    }

    /// What [`Keying::hash_chunk`] gives for `len` zeros, from the frame
    /// structure: one constant per whole frame and at most one short frame
    /// hashed.
    pub fn zero_hashed(&self, len: usize) -> Hashed {
        let frame_hashes: Vec<Hash> = (0..frame_count(len))
            .map(|i| self.zero_frame_hash(len, i))
            .collect();
        Hashed {
            id: self.id_from_frames(&frame_hashes),
            frame_hashes,
        }
    }

    /// The id of a chunk of `len` zeros: the chunks that holes of sparse
    /// files are recorded as, which readers then pass over (the mount
    /// answers SEEK_HOLE with them and reads them without decoding, restore
    /// leaves them as holes). The read path asks for every chunk it meets,
    /// from many threads at once: a lookup takes a shared lock only, and a
    /// new length is computed outside any lock.
    pub fn zero_id(&self, len: u32) -> ChunkId {
        if let Some(id) = self.zero_ids.read().expect("zero id lock").get(&len) {
            return *id;
        }
        let id = self.zero_hashed(len as usize).id;
        let mut ids = self.zero_ids.write().expect("zero id lock");
        if ids.len() >= ZERO_IDS_MAX {
            ids.clear();
        }
        ids.insert(len, id);
        id
    }

    /// Whether chunk `id` of `len` bytes, stored in `stored_len` bytes, holds
    /// nothing but zeros. A chunk stored larger than zeros ever compress to
    /// is not one, whatever its id: readers ask this of every chunk they
    /// meet, and computing the id of zeros of a new length means hashing up
    /// to a frame of them, which on a restore of many small files cost a
    /// sixth of its time.
    pub fn is_zero_chunk(&self, id: &ChunkId, len: u32, stored_len: u32) -> bool {
        stored_len as usize
            <= crate::format::blob::zero_stored_max(self.seal.is_some(), len as usize)
            && self.zero_id(len) == *id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(seed: u8) -> Arc<Keying> {
        Keying::keyed([seed; 32], [seed ^ 1; 32], [seed ^ 2; 32], None)
    }

    #[test]
    fn zero_chunk_ids_are_the_ids_of_hashed_zeros_with_and_without_a_key() {
        assert_eq!(Hash::of(&[0u8; FRAME]).0, ZERO_FRAME_HASH);
        for k in [Keying::plain(), keyed(7)] {
            for len in [
                0,
                1,
                4095,
                FRAME - 1,
                FRAME,
                FRAME + 1,
                3 * FRAME + 12_345,
                4 << 20,
            ] {
                let want = k.hash_chunk(&vec![0u8; len]);
                let got = k.zero_hashed(len);
                assert_eq!(got.id, want.id, "{len} zeros");
                assert_eq!(got.frame_hashes, want.frame_hashes, "{len} zeros");
                assert_eq!(k.zero_id(len as u32), want.id, "{len} zeros, by id");
                assert_eq!(k.zero_id(len as u32), want.id, "{len} zeros, cached");
                assert!(k.is_zero_chunk(&want.id, len as u32, 0));
                assert!(!k.is_zero_chunk(&want.id, len as u32, u32::MAX));
            }
            let one = k.hash_chunk(&[0, 1]).id;
            assert!(!k.is_zero_chunk(&one, 2, 0));
            assert!(
                !k.is_zero_chunk(&k.zero_id(10), 11, 0),
                "the length is part of the id"
            );
        }
    }

    #[test]
    fn zero_ids_stay_right_past_the_cache_bound() {
        let k = Keying::plain();
        for len in 0..(ZERO_IDS_MAX as u32 + 10) {
            let len = len * 7;
            assert_eq!(k.zero_id(len), k.hash_chunk(&vec![0u8; len as usize]).id);
        }
    }

    #[test]
    fn a_key_changes_ids_boundaries_and_the_gear_table() {
        let data = crate::format::chunker::seeded_bytes(1, 3 * FRAME);
        let (plain, a, b) = (Keying::plain(), keyed(1), keyed(2));
        let ids = [&plain, &a, &b].map(|k| k.hash_chunk(&data).id);
        assert_ne!(ids[0], ids[1]);
        assert_ne!(ids[1], ids[2]);
        assert_eq!(a.hash_chunk(&data).id, keyed(1).hash_chunk(&data).id);
        assert!(plain.gear().is_none());
        let (ga, gb) = (a.gear().unwrap(), b.gear().unwrap());
        assert_ne!(ga.table, gb.table);
        assert_eq!(ga.shifted[3], ga.table[3] << 1);
        assert_ne!(a.zero_id(100), plain.zero_id(100));
    }
}
