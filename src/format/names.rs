//! Entry names: what one directory entry may be called.
//!
//! Names come from catalog rows, and a catalog can be tampered with (or
//! received from a peer, or rebuilt from packs someone else wrote). The tree
//! decoder checks names too, but restore does not rely on it: every name is
//! checked here, where it is read, before anything is created for it.

use std::path::Path;

use crate::error::{Error, Result};

/// The longest name Linux file systems accept (NAME_MAX).
pub const NAME_MAX: usize = 255;

/// Why `name` cannot be one directory entry, or None when it can.
pub fn name_problem(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name == b"." || name == b".." {
        Some("is a dot entry")
    } else if name.contains(&b'/') {
        Some("contains a slash")
    } else if name.contains(&0) {
        Some("contains a NUL byte")
    } else if name.len() > NAME_MAX {
        Some("is longer than 255 bytes")
    } else {
        None
    }
}

/// Refuse a name that would leave its directory (`..`, `/`), name the
/// directory itself, or that no file system stores; the error names the
/// snapshot, the parent directory inside it and the bytes of the name.
pub fn check_name(snapshot: &str, parent: &Path, name: &[u8]) -> Result<()> {
    match name_problem(name) {
        None => Ok(()),
        Some(why) => Err(Error::corrupt(format!(
            "snapshot {snapshot}: the entry named \"{}\" in {} {why}; nothing was restored for it \
             (the catalog may have been tampered with: run `snapfs verify`)",
            name.escape_ascii(),
            shown_dir(parent).display()
        ))),
    }
}

/// The snapshot-side path of a directory, `/` for the root.
fn shown_dir(parent: &Path) -> &Path {
    if parent.as_os_str().is_empty() {
        Path::new("/")
    } else {
        parent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_leave_their_directory_are_refused() {
        for bad in [
            &b""[..],
            b".",
            b"..",
            b"a/b",
            b"/abs",
            b"../../escape",
            b"nul\0byte",
            &[b'x'; 256][..],
        ] {
            assert!(
                name_problem(bad).is_some(),
                "{:?} accepted",
                bad.escape_ascii()
            );
        }
        for good in [
            &b"a"[..],
            b"...",
            b".hidden",
            b"caf\xe9",
            b"new\nline",
            &[b'x'; 255][..],
        ] {
            assert_eq!(
                name_problem(good),
                None,
                "{:?} refused",
                good.escape_ascii()
            );
        }
    }

    #[test]
    fn the_error_names_the_snapshot_the_directory_and_the_entry() {
        let e = check_name("s1", Path::new("/srv/www"), b"../../etc").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("s1") && msg.contains("/srv/www") && msg.contains("../../etc"));
    }
}
