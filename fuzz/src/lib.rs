//! Helpers shared by the fuzz targets in `src/bin/`: each target feeds one
//! decoder arbitrary bytes and checks that it returns an error or a value
//! that survives a round trip, never a panic.

/// The chunk id the blob in `bytes` claims in its own header (BLAKE3 over its
/// frames' digests), so the fuzzer can get past the id check and reach the
/// frame decoding behind it. None if the bytes are too short to say.
pub fn claimed_id(blob: &[u8], raw_len: usize) -> Option<snapfs::ids::ChunkId> {
    let frames = raw_len.div_ceil(snapfs::format::blob::FRAME).max(1);
    let recs = blob.get(3..3 + frames.checked_mul(36)?)?;
    let mut h = blake3::Hasher::new();
    for r in recs.chunks_exact(36) {
        h.update(&r[4..]);
    }
    Some(snapfs::ids::ChunkId(snapfs::ids::Hash(
        *h.finalize().as_bytes(),
    )))
}
