//! The copy protocol, as `snapfs serve` reads it: a request frame from the
//! peer, and a pack it sends (decoded in full and every chunk verified
//! before anything is written). The first byte picks which.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((&which, rest)) = data.split_first() else {
            return;
        };
        if which & 1 == 0 {
            let _ = snapfs::untrusted::decode_request(rest);
        } else {
            // Named by its true hash, as an honest or a cunning peer would.
            let name = snapfs::ids::PackName(snapfs::ids::Hash::of(rest));
            let _ = snapfs::untrusted::verify_pack(
                &snapfs::format::keying::Keying::plain(),
                &name,
                rest,
            );
        }
    });
}
