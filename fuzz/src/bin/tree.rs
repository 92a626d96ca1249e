//! An encoded tree (and, on the same bytes, an xattr list). What decodes
//! must encode back to bytes that decode to the same entries.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(entries) = snapfs::format::tree::decode_tree(data) {
            let again = snapfs::format::tree::encode_tree(&entries);
            assert_eq!(
                snapfs::format::tree::decode_tree(&again).expect("re-encoded tree"),
                entries
            );
        }
        if let Ok(x) = snapfs::format::tree::decode_xattrs(data) {
            let again = snapfs::format::tree::encode_xattrs(&x);
            assert_eq!(
                snapfs::format::tree::decode_xattrs(&again).expect("re-encoded xattrs"),
                x
            );
        }
    });
}
