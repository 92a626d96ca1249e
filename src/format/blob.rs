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
//! sealed version u8 (2) | frames u16 | per frame: sealed_len u32 (bit 31 = raw)
//!        | sealed frames, back to back: nonce[24] ‖ ciphertext ‖ tag[16]
//! ```
//!
//! An encrypted repository writes sealed blobs only: each frame is
//! compressed, then sealed with XChaCha20-Poly1305 under the blob key, with
//! the chunk id, the chunk's length, the frame's index and its length word
//! as associated data.
//! A frame then stays readable on its own, cannot be moved to another chunk
//! or place, and its tag authenticates it: no digest is stored (it would
//! confirm content to one without the key) and none is computed on a read.

use crate::crypto::aead;
use crate::error::{Error, Result};
use crate::ids::{ChunkId, Hash};

/// Uncompressed bytes per frame. Smaller frames make a random 4 KiB read
/// cheaper (one frame is inflated) but compress worse: on real data zstd-3
/// loses about 11% at 128 KiB, 6% at 256 KiB and 4% at 512 KiB against 2 MiB
/// units. Through the mount, random 4 KiB reads measured 1,660/s with 512 KiB
/// frames; 256 KiB halves that work for 2% more space.
pub const FRAME: usize = 256 * 1024;
const BLOB_VERSION: u8 = 1;
const SEALED_VERSION: u8 = 2;
const RAW_FLAG: u32 = 1 << 31;
const FRAME_REC: usize = 36;
const SEALED_REC: usize = 4;

pub fn frame_count(raw_len: usize) -> usize {
    raw_len.div_ceil(FRAME).max(1)
}

/// Header bytes of a plain blob of `raw_len` bytes.
pub fn header_len(raw_len: usize) -> usize {
    3 + FRAME_REC * frame_count(raw_len)
}

/// Header bytes of a blob of `raw_len` bytes, sealed or not.
pub fn header_len_of(sealed: bool, raw_len: usize) -> usize {
    if sealed {
        3 + SEALED_REC * frame_count(raw_len)
    } else {
        header_len(raw_len)
    }
}

/// What a frame adds stored beyond its (compressed or raw) bytes.
fn frame_overhead(sealed: bool) -> usize {
    if sealed { aead::OVERHEAD } else { 0 }
}

/// The fewest and most bytes a blob of `raw_len` bytes can be stored in:
/// what a pack table's row is checked against.
pub fn stored_len_bounds(sealed: bool, raw_len: usize) -> (usize, usize) {
    let fixed = header_len_of(sealed, raw_len)
        .saturating_add(frame_count(raw_len).saturating_mul(frame_overhead(sealed)));
    (fixed, fixed.saturating_add(raw_len))
}

pub use crate::format::keying::{Hashed, Keying};

/// Most bytes a frame of zeros takes stored (zstd makes ~20 of 256 KiB).
const ZERO_FRAME_STORED_MAX: usize = 64;

/// Most bytes a chunk of `len` zeros can take stored: a chunk stored larger
/// is not one, whatever its id (see `Keying::is_zero_chunk`).
pub(crate) fn zero_stored_max(sealed: bool, len: usize) -> usize {
    let per_frame = ZERO_FRAME_STORED_MAX + frame_overhead(sealed);
    stored_len_bounds(sealed, len)
        .0
        .saturating_add(frame_count(len).saturating_mul(per_frame))
}

/// The associated data of frame `i` of chunk `id` of `raw_len` bytes whose
/// length word is `word`: a sealed frame opens only in its own place. The
/// chunk's length is bound too, as a plain header's digests bind it: a
/// chunk cut after its first whole frames (its frame count lowered to
/// match) must not read as a shorter chunk of the same id.
fn frame_aad(id: &ChunkId, raw_len: usize, i: usize, word: u32) -> [u8; 60] {
    let mut aad = [0u8; 60];
    aad[..12].copy_from_slice(b"snapfs frame");
    aad[12..44].copy_from_slice(&id.0.0);
    aad[44..52].copy_from_slice(&(raw_len as u64).to_le_bytes());
    aad[52..56].copy_from_slice(&(i as u32).to_le_bytes());
    aad[56..].copy_from_slice(&word.to_le_bytes());
    aad
}

/// Compresses chunks into blobs; one per worker thread, to reuse zstd state.
pub struct Encoder {
    zstd: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
    /// Seals frames when the repository is encrypted.
    keying: std::sync::Arc<Keying>,
}

impl Encoder {
    pub fn new(level: i32, keying: &std::sync::Arc<Keying>) -> Result<Encoder> {
        let zstd = zstd::bulk::Compressor::new(level)
            .map_err(|e| Error::invalid(format!("compression level {level}: {e}")))?;
        Ok(Encoder {
            zstd,
            scratch: Vec::with_capacity(zstd::zstd_safe::compress_bound(FRAME)),
            keying: keying.clone(),
        })
    }

    pub fn encode(&mut self, data: &[u8], hashed: &Hashed) -> Result<Vec<u8>> {
        let keying = self.keying.clone();
        let seal = keying.seal().map(|s| &s.blob);
        let sealed = seal.is_some();
        let (version, rec_len) = if sealed {
            (SEALED_VERSION, SEALED_REC)
        } else {
            (BLOB_VERSION, FRAME_REC)
        };
        let frames = frame_count(data.len());
        let hlen = header_len_of(sealed, data.len());
        let mut blob = Vec::with_capacity(hlen + data.len() / 2 + frames * frame_overhead(sealed));
        blob.push(version);
        blob.extend_from_slice(&(frames as u16).to_le_bytes());
        blob.resize(hlen, 0);
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
            let (payload, flag): (&[u8], u32) = if n < part.len() {
                (&self.scratch[..n], 0)
            } else {
                (part, RAW_FLAG)
            };
            let word = (payload.len() + frame_overhead(sealed)) as u32 | flag;
            let rec = 3 + i * rec_len;
            blob[rec..rec + 4].copy_from_slice(&word.to_le_bytes());
            match seal {
                // Sealed: the tag stands in for the digest.
                Some(key) => {
                    let aad = frame_aad(&hashed.id, data.len(), i, word);
                    aead::seal_into(key, &aad, payload, &mut blob)?;
                }
                None => {
                    blob[rec + 4..rec + FRAME_REC].copy_from_slice(&hashed.frame_hashes[i].0);
                    blob.extend_from_slice(payload);
                }
            }
        }
        Ok(blob)
    }
}

thread_local! {
    /// One zstd decoding context per thread, reused: creating one per frame
    /// costs more than decoding a small frame.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    /// A compressed sealed frame, opened: reused, at most one frame long.
    static OPENED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
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
    /// The frame's digest (plain blobs; zero in sealed ones).
    hash: Hash,
    /// The frame's length word as stored (sealed blobs bind it).
    word: u32,
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
        // An encrypted repository reads sealed blobs only, and a plain one
        // plain blobs only: a plain blob planted in an encrypted repository
        // is refused, not read unauthenticated.
        let sealed = keying.is_sealed();
        let (version, rec_len) = if sealed {
            (SEALED_VERSION, SEALED_REC)
        } else {
            (BLOB_VERSION, FRAME_REC)
        };
        let over = frame_overhead(sealed);
        let n = frame_count(raw_len);
        let hlen = header_len_of(sealed, raw_len);
        if bytes.len() < hlen
            || bytes[0] != version
            || u16::from_le_bytes([bytes[1], bytes[2]]) as usize != n
        {
            return Err(bad("damaged header"));
        }
        let mut frames = Vec::with_capacity(n);
        let mut start = hlen;
        for (i, r) in bytes[3..hlen].chunks_exact(rec_len).enumerate() {
            let v = u32::from_le_bytes(r[..4].try_into().expect("4 bytes"));
            let raw = v & RAW_FLAG != 0;
            let stored_len = (v & !RAW_FLAG) as usize;
            let want = frame_len_of(raw_len, i);
            // The frame's own bytes: a raw frame exactly its length, a
            // compressed one at least a byte and no longer.
            let payload = stored_len.checked_sub(over);
            let fits = match payload {
                Some(p) if raw => p == want,
                Some(p) => p > 0 && p <= want,
                None => false,
            };
            if !fits {
                return Err(bad(&format!(
                    "frame {i} has an impossible stored length {stored_len}"
                )));
            }
            frames.push(FrameRec {
                start,
                stored_len,
                raw,
                hash: if sealed {
                    Hash([0; 32])
                } else {
                    Hash::from_slice(&r[4..]).expect("32 bytes")
                },
                word: v,
            });
            start += stored_len;
        }
        // A sealed header carries no digests: each frame's tag binds it to
        // the id instead.
        if !sealed {
            let hashes: Vec<Hash> = frames.iter().map(|f| f.hash).collect();
            if keying.id_from_frames(&hashes) != *id {
                return Err(bad("header does not match its id"));
            }
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
            .map_or(header_len_of(self.keying.is_sealed(), self.raw_len), |f| {
                f.start + f.stored_len
            })
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
        if let Some(seal) = self.keying.seal() {
            // The tag authenticates the frame (id, place, length word and
            // the chunk's length included): no digest to compute. A raw
            // frame opens straight into `out`; a compressed one into a
            // buffer of this thread's, then inflates into `out`.
            let aad = frame_aad(id, self.raw_len, i, f.word);
            if f.raw {
                aead::open_to(&seal.blob, &aad, stored, out).map_err(|e| bad(e.to_string()))?;
                return Ok(raw_len);
            }
            return OPENED.with(|buf| {
                let mut buf = buf.borrow_mut();
                buf.clear();
                aead::open_into(&seal.blob, &aad, stored, &mut buf)
                    .map_err(|e| bad(e.to_string()))?;
                match inflate_to(&buf, out).map_err(bad)? {
                    n if n == raw_len => Ok(n),
                    n => Err(bad(format!("inflates to {n} bytes, not {raw_len}"))),
                }
            });
        }
        let n = if f.raw {
            if stored.len() != raw_len {
                return Err(bad(format!("{} raw bytes, not {raw_len}", stored.len())));
            }
            out.copy_from_slice(stored);
            stored.len()
        } else {
            inflate_to(stored, out).map_err(bad)?
        };
        if n != raw_len {
            return Err(bad(format!("inflates to {n} bytes, not {raw_len}")));
        }
        if self.keying.frame_hash(&out[..n]) != f.hash {
            return Err(bad("content does not match its hash".into()));
        }
        Ok(n)
    }
}

/// Inflate one zstd frame into `out` (never more than its length); the
/// number of bytes it made.
fn inflate_to(stored: &[u8], out: &mut [u8]) -> std::result::Result<usize, String> {
    DECOMPRESSOR
        .with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new()?);
            }
            d.as_mut()
                .expect("just created")
                .decompress_to_buffer(stored, out)
        })
        .map_err(|e| e.to_string())
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
    // Frames that authenticate were sealed by a key holder; that the whole
    // is the content its id names is checked too where a whole chunk is
    // read (verify, copy, gc), at the cost of one hash.
    if keying.is_sealed() && keying.hash_chunk(&out).id != *id {
        return Err(Error::corrupt(format!(
            "chunk {id}: its content is not what its id names"
        )));
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
        let blob = Encoder::new(3, &crate::format::keying::Keying::plain())
            .unwrap()
            .encode(data, &h)
            .unwrap();
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
        let blob = Encoder::new(3, &crate::format::keying::Keying::plain())
            .unwrap()
            .encode(&noise, &h)
            .unwrap();
        assert_eq!(blob.len(), header_len(FRAME) + FRAME);
    }

    #[test]
    fn a_flipped_byte_is_detected_not_returned() {
        let text: Vec<u8> = b"0123456789".repeat(50_000);
        let h = plain().hash_chunk(&text);
        let blob = Encoder::new(3, &crate::format::keying::Keying::plain())
            .unwrap()
            .encode(&text, &h)
            .unwrap();
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
        (
            h.id,
            Encoder::new(3, &crate::format::keying::Keying::plain())
                .unwrap()
                .encode(data, &h)
                .unwrap(),
        )
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
            let blob = Encoder::new(3, &crate::format::keying::Keying::plain())
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

    fn sealed(seed: u8) -> std::sync::Arc<Keying> {
        Keying::encrypted(&crate::crypto::MasterKey::from_bytes([seed; 32]).subkeys())
    }

    #[test]
    fn sealed_blobs_round_trip_and_hide_their_content() {
        let k = sealed(1);
        let marker = b"a marker no byte of a sealed blob may show ".repeat(10_000);
        for data in [
            marker.clone(),
            crate::format::chunker::seeded_bytes(4, 3 * FRAME + 7),
            Vec::new(),
        ] {
            let h = k.hash_chunk(&data);
            let blob = Encoder::new(3, &k).unwrap().encode(&data, &h).unwrap();
            assert_eq!(blob[0], SEALED_VERSION);
            assert_eq!(decode_blob(&k, &blob, &h.id, data.len()).unwrap(), data);
            let (least, most) = stored_len_bounds(true, data.len());
            assert!(
                (least..=most).contains(&blob.len()),
                "{} not in {least}..={most}",
                blob.len()
            );
            assert!(
                !blob
                    .windows(16)
                    .any(|w| marker.windows(16).next() == Some(w))
            );
        }
    }

    #[test]
    fn a_sealed_blob_opens_only_with_its_key_its_id_and_in_its_kind_of_repository() {
        let (k, other) = (sealed(1), sealed(2));
        let text: Vec<u8> = b"0123456789".repeat(60_000);
        let h = k.hash_chunk(&text);
        let blob = Encoder::new(3, &k).unwrap().encode(&text, &h).unwrap();
        assert!(
            decode_blob(&other, &blob, &h.id, text.len()).is_err(),
            "another key"
        );
        assert!(
            decode_blob(&plain(), &blob, &h.id, text.len()).is_err(),
            "a plain repository"
        );
        let wrong = k.hash_chunk(b"something else").id;
        assert!(
            decode_blob(&k, &blob, &wrong, text.len()).is_err(),
            "another id"
        );
        // A plain blob planted in an encrypted repository is not read.
        let hp = plain().hash_chunk(&text);
        let plain_blob = Encoder::new(3, &plain())
            .unwrap()
            .encode(&text, &hp)
            .unwrap();
        assert!(decode_blob(&k, &plain_blob, &hp.id, text.len()).is_err());
        // Frames swapped within the blob do not open in each other's place.
        let hdr = Header::parse(&k, &blob, &h.id, text.len()).unwrap();
        let (s0, l0) = hdr.frame_range(0);
        let (s1, l1) = hdr.frame_range(1);
        assert_eq!(l0, l1);
        assert!(hdr.decode_frame(0, &blob[s1..s1 + l1], &h.id).is_err());
        assert!(hdr.decode_frame(0, &blob[s0..s0 + l0], &h.id).is_ok());
    }

    #[test]
    fn every_flipped_byte_of_a_sealed_blob_is_detected() {
        let k = sealed(3);
        let text: Vec<u8> = b"abcdefgh".repeat(5_000);
        let h = k.hash_chunk(&text);
        let blob = Encoder::new(3, &k).unwrap().encode(&text, &h).unwrap();
        for pos in 0..blob.len() {
            let mut bad = blob.clone();
            bad[pos] ^= 0x01;
            assert!(
                decode_blob(&k, &bad, &h.id, text.len()).is_err(),
                "flip at {pos}"
            );
        }
    }

    /// A sealed chunk cut after its first frames, with its frame count
    /// lowered to match: each frame still carries its own id, place and
    /// length word, so only the chunk's length tells the cut one apart. A
    /// plain blob refuses this through its header's digests.
    #[test]
    fn a_sealed_chunk_cut_to_fewer_frames_is_refused_for_the_shorter_length() {
        let k = sealed(7);
        let data = crate::format::chunker::seeded_bytes(11, 3 * FRAME);
        let h = k.hash_chunk(&data);
        let blob = Encoder::new(3, &k).unwrap().encode(&data, &h).unwrap();
        let hdr = Header::parse(&k, &blob, &h.id, data.len()).unwrap();
        let (s0, l0) = hdr.frame_range(0);
        let (s1, l1) = hdr.frame_range(1);
        let mut cut = vec![SEALED_VERSION];
        cut.extend_from_slice(&2u16.to_le_bytes());
        cut.extend_from_slice(&blob[3..3 + 2 * SEALED_REC]);
        cut.extend_from_slice(&blob[s0..s0 + l0]);
        cut.extend_from_slice(&blob[s1..s1 + l1]);
        let short = 2 * FRAME;
        if let Ok(hdr) = Header::parse(&k, &cut, &h.id, short) {
            for i in 0..2 {
                let (s, l) = hdr.frame_range(i);
                assert!(
                    hdr.decode_frame(i, &cut[s..s + l], &h.id).is_err(),
                    "frame {i} of a {}-byte chunk opened as part of a {short}-byte one",
                    data.len()
                );
            }
        }
        assert!(decode_blob(&k, &cut, &h.id, short).is_err());
        // The same holds for a frame's length: the last frame of a chunk
        // read as a chunk whose last frame is as long.
        let hp = plain().hash_chunk(&data);
        let pb = Encoder::new(3, &plain())
            .unwrap()
            .encode(&data, &hp)
            .unwrap();
        let mut pcut = vec![BLOB_VERSION];
        pcut.extend_from_slice(&2u16.to_le_bytes());
        pcut.extend_from_slice(&pb[3..3 + 2 * FRAME_REC]);
        assert!(
            Header::parse(&plain(), &pcut, &hp.id, short).is_err(),
            "a plain header ties its frame count to the id"
        );
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
