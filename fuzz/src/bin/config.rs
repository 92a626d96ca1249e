//! A repository config file. What parses must render and parse back equal.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let path = std::path::Path::new("config");
        if let Ok(c) = snapfs::untrusted::Config::parse(text, path) {
            assert_eq!(
                snapfs::untrusted::Config::parse(&c.render(), path).expect("rendered config"),
                c
            );
        }
    });
}
