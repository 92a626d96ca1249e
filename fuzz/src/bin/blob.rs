//! A stored blob: raw length (4 bytes, little-endian) then the blob. The id
//! is taken from the blob's own header, so frame decoding is reached.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((len, blob)) = data.split_first_chunk::<4>() else {
            return;
        };
        // Keep sizes a fuzzer can reach: up to 4 frames.
        let raw_len = (u32::from_le_bytes(*len) as usize) % (4 * snapfs::format::blob::FRAME + 1);
        let Some(id) = snapfs_fuzz::claimed_id(blob, raw_len) else {
            return;
        };
        let keying = snapfs::format::keying::Keying::plain();
        if let Ok(out) = snapfs::format::blob::decode_blob(&keying, blob, &id, raw_len) {
            assert_eq!(out.len(), raw_len);
            assert_eq!(keying.hash_chunk(&out).id, id);
        }
        if let Ok(h) = snapfs::format::blob::Header::parse(&keying, blob, &id, raw_len) {
            for i in 0..h.frame_count() + 1 {
                let (start, len) = h.frame_range(i);
                let stored = blob.get(start..start.saturating_add(len)).unwrap_or(&[]);
                let mut out = vec![0u8; snapfs::format::blob::FRAME];
                if let Ok(n) = h.decode_frame_to(i, stored, &id, &mut out) {
                    assert_eq!(n, h.frame_len(i));
                }
            }
        }
    });
}
