//! Stored chunks: hashing, compression and verification.
//!
//! A chunk is cut into frames of [`FRAME`] bytes, each compressed on its own
//! (or kept raw when zstd does not shrink it). A small read through the mount
//! then inflates one frame, not a whole 1 MiB chunk. The chunk id is BLAKE3
//! over the frames' BLAKE3 digests, so each frame is verified on its own:
//! its digest is in the blob header, and the header is tied to the id.
//!
//! ```text
//! blob   version u8 (1) | frames u16 | per frame: stored_len u32 (bit 31 = raw) | blake3[32]
//!        | frame bytes, back to back
//! ```

use crate::error::{Error, Result};
use crate::ids::{ChunkId, Hash};

/// Uncompressed bytes per frame. Smaller frames make a random 4 KiB read
/// cheaper (one frame is inflated) but compress worse: on real data zstd-3
/// loses about 11% at 128 KiB, 6% at 256 KiB and 4% at 512 KiB against 2 MiB
/// units. Through the mount, random 4 KiB reads measured 1,660/s with 512 KiB
/// frames; 256 KiB halves that work for 2% more space.
pub const FRAME: usize = 256 * 1024;
const BLOB_VERSION: u8 = 1;
const RAW_FLAG: u32 = 1 << 31;
const FRAME_REC: usize = 36;

pub fn frame_count(raw_len: usize) -> usize {
    raw_len.div_ceil(FRAME).max(1)
}

pub fn header_len(raw_len: usize) -> usize {
    3 + FRAME_REC * frame_count(raw_len)
}

pub use crate::format::keying::{Hashed, Keying};

/// Most bytes a frame of zeros takes stored (zstd makes ~20 of 256 KiB).
const ZERO_FRAME_STORED_MAX: usize = 64;

/// Most bytes a chunk of `len` zeros can take stored: a chunk stored larger
/// is not one, whatever its id (see `Keying::is_zero_chunk`).
pub(crate) fn zero_stored_max(len: usize) -> usize {
    let frames = frame_count(len);
    header_len(len).saturating_add(frames.saturating_mul(ZERO_FRAME_STORED_MAX))
}

/// Compresses chunks into blobs; one per worker thread, to reuse zstd state.
pub struct Encoder {
    zstd: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
}

impl Encoder {
    pub fn new(level: i32) -> Result<Encoder> {
        let zstd = zstd::bulk::Compressor::new(level)
            .map_err(|e| Error::invalid(format!("compression level {level}: {e}")))?;
        Ok(Encoder {
            zstd,
            scratch: Vec::with_capacity(zstd::zstd_safe::compress_bound(FRAME)),
        })
    }

    pub fn encode(&mut self, data: &[u8], hashed: &Hashed) -> Result<Vec<u8>> {
        let frames = frame_count(data.len());
        let mut blob = Vec::with_capacity(header_len(data.len()) + data.len() / 2);
        blob.push(BLOB_VERSION);
        blob.extend_from_slice(&(frames as u16).to_le_bytes());
        blob.resize(header_len(data.len()), 0);
        let mut parts: Vec<&[u8]> = data.chunks(FRAME).collect();
        if parts.is_empty() {
            parts.push(&[]);
        }
        for (i, part) in parts.into_iter().enumerate() {
            self.scratch.clear();
            let n = self
                .zstd
                .compress_to_buffer(part, &mut self.scratch)
                .map_err(|e| Error::corrupt(format!("zstd: {e}")))?;
            let (stored, flag): (&[u8], u32) = if n < part.len() {
                (&self.scratch[..n], 0)
            } else {
                (part, RAW_FLAG)
            };
            let rec = 3 + i * FRAME_REC;
            blob[rec..rec + 4].copy_from_slice(&(stored.len() as u32 | flag).to_le_bytes());
            blob[rec + 4..rec + FRAME_REC].copy_from_slice(&hashed.frame_hashes[i].0);
            blob.extend_from_slice(stored);
        }
        Ok(blob)
    }
}

thread_local! {
    /// One zstd decoding context per thread, reused: creating one per frame
    /// costs more than decoding a small frame.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// The largest data chunk any repository can hold: the chunker's own upper
/// limit for `chunk_max` (the config is checked against it). A pack row or a
/// chunk list claiming more is damaged.
pub const MAX_DATA_CHUNK_LEN: usize = fastcdc::v2020::MAXIMUM_MAX;

/// The largest chunk of any kind a reader will inflate. Trees are stored as
/// one chunk, so a directory of millions of entries makes a large one; this
/// bound (4096 frames) keeps what a crafted blob can make us allocate finite
/// while leaving room for such directories.
pub const MAX_CHUNK_LEN: usize = 1 << 30;

/// The parsed header of a blob: where each frame is, and its digest.
pub struct Header {
    frames: Vec<FrameRec>,
    raw_len: usize,
    /// How the frames' digests are computed.
    keying: std::sync::Arc<Keying>,
}

struct FrameRec {
    /// Offset of the frame's stored bytes from the blob's start.
    start: usize,
    stored_len: usize,
    raw: bool,
    hash: Hash,
}

impl Header {
    /// Parse and check a header against the chunk id it must belong to.
    /// `bytes` may be the header alone or the whole blob.
    ///
    /// Every stored length is checked against what the encoder can write (a
    /// raw frame is exactly its raw length, a compressed one shorter), so the
    /// frame offsets cannot wrap and a reader never asks for more than one
    /// frame's worth of bytes.
    pub fn parse(
        keying: &std::sync::Arc<Keying>,
        bytes: &[u8],
        id: &ChunkId,
        raw_len: usize,
    ) -> Result<Header> {
        let bad = |what: &str| Error::corrupt(format!("chunk {id}: {what}"));
        if raw_len > MAX_CHUNK_LEN {
            return Err(bad(&format!(
                "raw length {raw_len} exceeds the limit {MAX_CHUNK_LEN}"
            )));
        }
        let n = frame_count(raw_len);
        let hlen = header_len(raw_len);
        if bytes.len() < hlen
            || bytes[0] != BLOB_VERSION
            || u16::from_le_bytes([bytes[1], bytes[2]]) as usize != n
        {
            return Err(bad("damaged header"));
        }
        let mut frames = Vec::with_capacity(n);
        let mut start = hlen;
        for (i, r) in bytes[3..hlen].chunks_exact(FRAME_REC).enumerate() {
            let v = u32::from_le_bytes(r[..4].try_into().expect("4 bytes"));
            let raw = v & RAW_FLAG != 0;
            let stored_len = (v & !RAW_FLAG) as usize;
            let want = frame_len_of(raw_len, i);
            if (raw && stored_len != want) || (!raw && (stored_len == 0 || stored_len > want)) {
                return Err(bad(&format!(
                    "frame {i} has an impossible stored length {stored_len}"
                )));
            }
            frames.push(FrameRec {
                start,
                stored_len,
                raw,
                hash: Hash::from_slice(&r[4..]).expect("32 bytes"),
            });
            start += stored_len;
        }
        let hashes: Vec<Hash> = frames.iter().map(|f| f.hash).collect();
        if keying.id_from_frames(&hashes) != *id {
            return Err(bad("header does not match its id"));
        }
        Ok(Header {
            frames,
            raw_len,
            keying: keying.clone(),
        })
    }

    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// The blob's length as the header describes it: header plus frames.
    pub fn blob_len(&self) -> usize {
        self.frames
            .last()
            .map_or(header_len(self.raw_len), |f| f.start + f.stored_len)
    }

    /// Offset (from the blob start) and stored length of frame `i`. A frame
    /// past the end gives an empty range at the blob's end (which then fails
    /// to decode), so a caller's wrong index is an error, not a panic.
    pub fn frame_range(&self, i: usize) -> (usize, usize) {
        match self.frames.get(i) {
            Some(f) => (f.start, f.stored_len),
            None => (self.blob_len(), 0),
        }
    }

    /// Inflate and verify frame `i` from its stored bytes.
    pub fn decode_frame(&self, i: usize, stored: &[u8], id: &ChunkId) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.decode_frame_into(i, stored, id, &mut out)?;
        Ok(out)
    }

    /// Inflate and verify frame `i` into `out`, which ends up exactly the
    /// frame's length. A buffer that is already long enough is written over
    /// without being cleared first.
    pub fn decode_frame_into(
        &self,
        i: usize,
        stored: &[u8],
        id: &ChunkId,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let raw_len = self.frame_len(i);
        if out.len() < raw_len {
            out.resize(raw_len, 0);
        }
        let n = self.decode_frame_to(i, stored, id, out)?;
        out.truncate(n);
        Ok(())
    }

    /// Raw length of frame `i` (0 past the last frame).
    pub fn frame_len(&self, i: usize) -> usize {
        frame_len_of(self.raw_len, i)
    }

    /// Inflate and verify frame `i` into the start of `out` (at least the
    /// frame's length); returns that length. Returns Ok only once the bytes
    /// match the frame's digest: on an error `out` may hold garbage.
    pub fn decode_frame_to(
        &self,
        i: usize,
        stored: &[u8],
        id: &ChunkId,
        out: &mut [u8],
    ) -> Result<usize> {
        let bad = |what: String| Error::corrupt(format!("chunk {id} frame {i}: {what}"));
        let f = self
            .frames
            .get(i)
            .ok_or_else(|| bad(format!("no such frame (of {})", self.frames.len())))?;
        let raw_len = self.frame_len(i);
        if stored.len() != f.stored_len {
            return Err(bad(format!(
                "{} stored bytes, the header says {}",
                stored.len(),
                f.stored_len
            )));
        }
        let out = out
            .get_mut(..raw_len)
            .ok_or_else(|| bad(format!("output buffer shorter than {raw_len}")))?;
        let n = if f.raw {
            out.copy_from_slice(stored);
            stored.len()
        } else {
            DECOMPRESSOR
                .with(|d| {
                    let mut d = d.borrow_mut();
                    if d.is_none() {
                        *d = Some(zstd::bulk::Decompressor::new()?);
                    }
                    d.as_mut()
                        .expect("just created")
                        .decompress_to_buffer(stored, &mut *out)
                })
                .map_err(|e| bad(e.to_string()))?
        };
        if n != raw_len || self.keying.frame_hash(&out[..n]) != f.hash {
            return Err(bad("content does not match its hash".into()));
        }
        Ok(n)
    }
}

/// Raw length of frame `i` of a chunk of `raw_len` bytes (0 past the end).
pub(crate) fn frame_len_of(raw_len: usize, i: usize) -> usize {
    raw_len.saturating_sub(i.saturating_mul(FRAME)).min(FRAME)
}

/// Inflate and verify a whole blob: exactly a header and its frames, no more.
pub fn decode_blob(
    keying: &std::sync::Arc<Keying>,
    blob: &[u8],
    id: &ChunkId,
    raw_len: usize,
) -> Result<Vec<u8>> {
    let header = Header::parse(keying, blob, id, raw_len)?;
    if blob.len() != header.blob_len() {
        return Err(Error::corrupt(format!(
            "chunk {id}: blob is {} bytes, its header says {}",
            blob.len(),
            header.blob_len()
        )));
    }
    let mut out = Vec::with_capacity(raw_len);
    let mut frame = Vec::new();
    for i in 0..header.frame_count() {
        let (start, len) = header.frame_range(i);
        let stored = blob
            .get(start..start + len)
            .ok_or_else(|| Error::corrupt(format!("chunk {id}: truncated")))?;
        header.decode_frame_into(i, stored, id, &mut frame)?;
        out.extend_from_slice(&frame);
    }
    Ok(out)
}

/// The compression levels a repository's config may ask for.
pub fn compression_levels() -> std::ops::RangeInclusive<i32> {
    zstd::compression_level_range()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> std::sync::Arc<Keying> {
        Keying::plain()
    }

    fn round_trip(data: &[u8]) -> Vec<u8> {
        let h = plain().hash_chunk(data);
        let blob = Encoder::new(3).unwrap().encode(data, &h).unwrap();
        decode_blob(&plain(), &blob, &h.id, data.len()).unwrap()
    }

    #[test]
    fn compressible_random_and_empty_chunks_round_trip() {
        let text: Vec<u8> = b"all work and no play ".repeat(20_000);
        assert_eq!(round_trip(&text), text);
        let noise = crate::format::chunker::seeded_bytes(3, 300_000);
        assert_eq!(round_trip(&noise), noise);
        assert_eq!(round_trip(&[]), Vec::<u8>::new());
    }

    #[test]
    fn incompressible_frames_are_stored_raw() {
        let noise = crate::format::chunker::seeded_bytes(5, FRAME);
        let h = plain().hash_chunk(&noise);
        let blob = Encoder::new(3).unwrap().encode(&noise, &h).unwrap();
        assert_eq!(blob.len(), header_len(FRAME) + FRAME);
    }

    #[test]
    fn a_flipped_byte_is_detected_not_returned() {
        let text: Vec<u8> = b"0123456789".repeat(50_000);
        let h = plain().hash_chunk(&text);
        let blob = Encoder::new(3).unwrap().encode(&text, &h).unwrap();
        for pos in [1, 10, header_len(text.len()) + 5, blob.len() - 1] {
            let mut bad = blob.clone();
            bad[pos] ^= 0x40;
            assert!(
                decode_blob(&plain(), &bad, &h.id, text.len()).is_err(),
                "flip at {pos}"
            );
        }
    }

    fn encoded(data: &[u8]) -> (ChunkId, Vec<u8>) {
        let h = plain().hash_chunk(data);
        (h.id, Encoder::new(3).unwrap().encode(data, &h).unwrap())
    }

    /// Overwrite frame `i`'s stored-length word (the digests, and so the id,
    /// stay valid).
    fn set_stored_len(blob: &mut [u8], i: usize, v: u32) {
        let rec = 3 + i * FRAME_REC;
        blob[rec..rec + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn hostile_stored_lengths_are_refused_not_summed() {
        let text: Vec<u8> = b"0123456789".repeat(60_000);
        let (id, blob) = encoded(&text);
        assert_eq!(frame_count(text.len()), 3);
        for v in [
            0,
            u32::MAX,
            RAW_FLAG - 1,
            RAW_FLAG,
            RAW_FLAG | 1,
            FRAME as u32 + 1,
        ] {
            let mut bad = blob.clone();
            set_stored_len(&mut bad, 0, v);
            assert!(
                Header::parse(&plain(), &bad, &id, text.len()).is_err(),
                "{v:#x}"
            );
            assert!(
                decode_blob(&plain(), &bad, &id, text.len()).is_err(),
                "{v:#x}"
            );
        }
    }

    #[test]
    fn frame_index_past_the_end_is_an_error_not_a_panic() {
        let (id, blob) = encoded(b"abc");
        let h = Header::parse(&plain(), &blob, &id, 3).unwrap();
        assert_eq!(h.frame_range(5), (blob.len(), 0));
        assert_eq!(h.frame_len(usize::MAX), 0);
        assert!(h.decode_frame(5, &[], &id).is_err());
        let mut out = [0u8; 1];
        let (start, len) = h.frame_range(0);
        assert!(
            h.decode_frame_to(0, &blob[start..start + len], &id, &mut out)
                .is_err(),
            "an output buffer too short is an error"
        );
    }

    #[test]
    fn trailing_bytes_and_huge_raw_lengths_are_refused() {
        let (id, mut blob) = encoded(b"some data");
        blob.push(0);
        assert!(decode_blob(&plain(), &blob, &id, 9).is_err());
        assert!(Header::parse(&plain(), &blob, &id, MAX_CHUNK_LEN + 1).is_err());
        assert!(decode_blob(&plain(), &blob, &id, usize::MAX).is_err());
    }

    #[test]
    fn stored_bytes_of_the_wrong_length_are_never_returned() {
        let noise = crate::format::chunker::seeded_bytes(9, 1000);
        let (id, blob) = encoded(&noise);
        let h = Header::parse(&plain(), &blob, &id, noise.len()).unwrap();
        let (start, len) = h.frame_range(0);
        let mut longer = blob[start..start + len].to_vec();
        longer.push(1);
        assert!(h.decode_frame(0, &longer, &id).is_err());
        assert!(
            h.decode_frame(0, &blob[start..start + len - 1], &id)
                .is_err()
        );
        assert_eq!(
            h.decode_frame(0, &blob[start..start + len], &id).unwrap(),
            noise
        );
    }

    #[test]
    fn zeros_as_the_encoder_stores_them_pass_the_size_test() {
        let k = plain();
        for len in [
            0,
            1,
            FRAME - 1,
            FRAME,
            3 * FRAME + 12_345,
            MAX_DATA_CHUNK_LEN,
        ] {
            let want = k.hash_chunk(&vec![0u8; len]);
            let blob = Encoder::new(3)
                .unwrap()
                .encode(&vec![0u8; len], &want)
                .unwrap();
            assert!(
                k.is_zero_chunk(&want.id, len as u32, blob.len() as u32),
                "{len} zeros stored in {}",
                blob.len()
            );
        }
    }

    use crate::format::codec::mutate;
    use proptest::prelude::*;

    /// Data, its id and its blob.
    type Sample = (Vec<u8>, ChunkId, Vec<u8>);

    fn samples() -> &'static [Sample] {
        static S: std::sync::OnceLock<Vec<Sample>> = std::sync::OnceLock::new();
        S.get_or_init(|| {
            [
                b"all work and no play ".repeat(30_000),
                crate::format::chunker::seeded_bytes(4, 3000),
                Vec::new(),
            ]
            .into_iter()
            .map(|d| {
                let (id, b) = encoded(&d);
                (d, id, b)
            })
            .collect()
        })
    }

    /// The id a blob's own header claims, so damaged blobs get past the id
    /// check to the frame decoding.
    fn claimed_id(blob: &[u8], raw_len: usize) -> Option<ChunkId> {
        let recs = blob.get(3..header_len(raw_len))?;
        let hashes: Vec<Hash> = recs
            .chunks_exact(FRAME_REC)
            .map(|r| Hash::from_slice(&r[4..]).expect("32 bytes"))
            .collect();
        Some(plain().id_from_frames(&hashes))
    }

    proptest! {
        #![proptest_config(mutate::config())]

        #[test]
        fn decode_blob_never_panics_on_arbitrary_bytes(b in mutate::bytes(), raw_len in 0..3 * FRAME) {
            if let Some(id) = claimed_id(&b, raw_len)
                && let Ok(out) = decode_blob(&plain(), &b, &id, raw_len)
            {
                prop_assert_eq!(plain().hash_chunk(&out).id, id);
            }
        }

        #[test]
        fn damaged_blobs_decode_to_their_bytes_or_fail(
            which in 0..3usize,
            edits in prop::collection::vec(mutate::edit(), 1..4),
            len_delta in prop_oneof![Just(0i64), -3..3i64, Just(FRAME as i64)],
        ) {
            let (data, id, blob) = &samples()[which];
            let bad = mutate::apply(blob.clone(), &edits);
            let raw_len = (data.len() as i64 + len_delta).max(0) as usize;
            for id in [Some(*id), claimed_id(&bad, raw_len)].into_iter().flatten() {
                if let Ok(out) = decode_blob(&plain(), &bad, &id, raw_len) {
                    prop_assert_eq!(out.len(), raw_len);
                    prop_assert_eq!(plain().hash_chunk(&out).id, id);
                }
            }
        }
    }
}
