//! An encoded directory page (and, on the same bytes, an xattr list). What
//! decodes must encode back to bytes that decode to the same page.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(page) = snapfs::format::page::decode_page(data) {
            let again = snapfs::format::page::encode_page(&page);
            assert_eq!(
                snapfs::format::page::decode_page(&again).expect("re-encoded page"),
                page
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
