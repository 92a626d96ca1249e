//! A snapshot or forget record.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let _ = snapfs::format::record::decode_record(data, snapfs::ids::Hash::default());
    });
}
