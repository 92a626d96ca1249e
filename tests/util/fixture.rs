//! The fixture: one source tree holding every kind of entry a backup must
//! keep, built once per test that round-trips it.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::*;

/// Paths inside the fixture that tests look at individually.
pub(crate) struct Fixture {
    pub(crate) root: PathBuf,
    pub(crate) sparse: PathBuf,
    /// The 100 MiB file of mixed data.
    pub(crate) big: PathBuf,
}

/// Builds, under `dir`, a tree with every kind of entry a backup must keep:
/// files of many sizes (empty to 100 MiB, partly compressible), empty and
/// nested directories, non-UTF-8 names, names with newlines, a 255-byte name,
/// two hard-link groups (one spanning directories), relative, absolute and
/// dangling symlinks, a fifo, character and block devices, user xattrs,
/// POSIX access and default ACLs, foreign owners, setuid/sticky/odd modes, a
/// 1 GiB sparse file, and chosen mtimes with nanoseconds (one before 1970).
pub(crate) fn build_fixture(dir: &Path) -> Fixture {
    require_tool("setfacl");
    let root = canonical(dir);

    // Regular files of various sizes.
    let files = root.join("files");
    mkdir(&files);
    for (i, size) in [
        0u64,
        1,
        100,
        4095,
        4096,
        4097,
        65_536,
        MIB + 1,
        3 * MIB + 17,
    ]
    .into_iter()
    .enumerate()
    {
        let data = random_bytes(100 + i as u64, size as usize);
        write_file(&files.join(format!("size-{size}")), &data);
    }
    write_file(&files.join("text.txt"), b"hello, snapfs\n");
    write_file(&files.join("empty"), b"");
    write_file(&files.join("also-empty"), b"");
    // Identical content under different names: dedup must keep both names.
    write_file(&files.join("dup-a"), &random_bytes(7, 300_000));
    write_file(&files.join("dup-b"), &random_bytes(7, 300_000));
    let many = root.join("many");
    mkdir(&many);
    for i in 0..300u64 {
        write_file(
            &many.join(format!("f{i:04}")),
            format!("small file number {i}\n")
                .repeat((i % 13) as usize)
                .as_bytes(),
        );
    }

    // A 100 MiB file of pseudo-random but partly compressible data.
    let big = root.join("files").join("big-mixed.bin");
    write_mixed_file(&big, 42, 100 * MIB);

    // A sparse file: 1 GiB logical, 3 MiB of data.
    let sparse = root.join("sparse.img");
    sparse_image(&sparse);

    // Directories: empty, nested, read-only with contents.
    mkdir(&root.join("empty-dir"));
    mkdir(&root.join("nested/a/b/c/d/e"));
    write_file(&root.join("nested/a/b/c/d/e/leaf"), b"deep\n");
    mkdir(&root.join("nested/a/b/empty"));
    let ro = root.join("read-only-dir");
    mkdir(&ro);
    write_file(
        &ro.join("inside"),
        b"in a directory without write permission\n",
    );

    // Odd names.
    let names = root.join("names");
    mkdir(&names);
    let odd: Vec<Vec<u8>> = vec![
        b"latin1-caf\xe9".to_vec(),
        b"\xff\xfe\xfd".to_vec(),
        b"line\nbreak".to_vec(),
        b"\nstarts-with-newline".to_vec(),
        b"tab\there".to_vec(),
        b"back\\slash".to_vec(),
        b"-starts-with-dash".to_vec(),
        b"with:colon".to_vec(),
        b" leading space".to_vec(),
        b"trailing space ".to_vec(),
        "unicode-\u{e9}\u{1f600}".as_bytes().to_vec(),
        b"*?[glob]".to_vec(),
        vec![b'n'; 255],
    ];
    for (i, name) in odd.iter().enumerate() {
        let p = names.join(OsStr::from_bytes(name));
        write_file(&p, format!("odd name {i}\n").as_bytes());
    }
    mkdir(&names.join(OsStr::from_bytes(b"dir-\xc0\xaf-invalid")));
    write_file(
        &names
            .join(OsStr::from_bytes(b"dir-\xc0\xaf-invalid"))
            .join(OsStr::from_bytes(&[b'x'; 255])),
        b"255-byte name in a non-UTF-8 directory\n",
    );

    // Hard links: one group in one directory, one across directories.
    let links = root.join("links");
    mkdir(&links.join("other/deeper"));
    write_file(&links.join("h1"), b"hard link group one\n");
    fs::hard_link(links.join("h1"), links.join("h2")).expect("link h2");
    write_file(&links.join("x"), &random_bytes(55, 200_000));
    fs::hard_link(links.join("x"), links.join("other/y")).expect("link y");
    fs::hard_link(links.join("x"), links.join("other/deeper/z")).expect("link z");
    fs::hard_link(links.join("x"), files.join("x-from-elsewhere")).expect("link across top dirs");

    // Symlinks.
    let sym = root.join("symlinks");
    mkdir(&sym);
    symlink("../files/text.txt", sym.join("relative")).expect("symlink");
    symlink("/etc/hostname", sym.join("absolute")).expect("symlink");
    symlink("does/not/exist", sym.join("dangling")).expect("symlink");
    symlink("../nested", sym.join("to-dir")).expect("symlink");
    symlink(
        OsStr::from_bytes(b"target-\xff\nodd"),
        sym.join("odd-target"),
    )
    .expect("symlink");
    symlink(
        OsString::from_vec(vec![b'l'; 1000]),
        sym.join("long-target"),
    )
    .expect("symlink");

    // Special files.
    let special = root.join("special");
    mkdir(&special);
    mkfifo(&special.join("fifo"), 0o640);
    mknod_char(&special.join("null-like"), 0o620, 1, 3);
    mknod_block(&special.join("loop-like"), 0o660, 7, 200);

    // Extended attributes and ACLs.
    let xa = root.join("xattrs");
    mkdir(&xa);
    let with_x = xa.join("file");
    write_file(&with_x, b"has xattrs\n");
    xattr::set(&with_x, "user.comment", b"a comment").expect("setxattr");
    xattr::set(&with_x, "user.binary", &[0, 1, 2, 255, 254, 0]).expect("setxattr");
    xattr::set(&with_x, "user.empty", b"").expect("setxattr");
    xattr::set(&with_x, "user.big", &random_bytes(3, 3000)).expect("setxattr");
    xattr::set(&xa, "user.on-dir", b"directory xattr").expect("setxattr");
    let acl_file = xa.join("acl-file");
    write_file(&acl_file, b"has an access ACL\n");
    setfacl(&["-m", "u:1234:rw-,g:5678:r--"], &acl_file);
    let acl_dir = xa.join("acl-dir");
    mkdir(&acl_dir);
    setfacl(&["-d", "-m", "u:1234:rwx"], &acl_dir);
    setfacl(&["-m", "u:4321:r-x"], &acl_dir);
    write_file(&acl_dir.join("inherits"), b"created under a default ACL\n");

    // Ownership and modes (chown first: it clears setuid).
    let own = root.join("owners");
    mkdir(&own);
    write_file(&own.join("foreign"), b"owned by 1234:5678\n");
    lchown(&own.join("foreign"), 1234, 5678);
    mkdir(&own.join("foreign-dir"));
    lchown(&own.join("foreign-dir"), 1234, 5678);
    symlink("foreign", own.join("foreign-symlink")).expect("symlink");
    lchown(&own.join("foreign-symlink"), 4242, 4343);
    write_file(&own.join("private"), b"mode 0600\n");
    chmod(&own.join("private"), 0o600);
    write_file(&own.join("setuid"), b"#!/bin/sh\n");
    lchown(&own.join("setuid"), 1234, 0);
    chmod(&own.join("setuid"), 0o4755);
    write_file(&own.join("setgid"), b"#!/bin/sh\n");
    chmod(&own.join("setgid"), 0o2751);
    write_file(&own.join("no-permissions"), b"mode 0000\n");
    chmod(&own.join("no-permissions"), 0o000);
    mkdir(&own.join("sticky"));
    chmod(&own.join("sticky"), 0o1777);
    mkdir(&own.join("setgid-dir"));
    chmod(&own.join("setgid-dir"), 0o2775);
    chmod(&ro, 0o555);

    // Chosen mtimes with nanoseconds, children before parents so that
    // nothing disturbs a directory's mtime after it is set.
    let mut all = walk(&root);
    all.reverse();
    for (i, p) in all.iter().enumerate() {
        let sec = 1_500_000_000 + (i as i64) * 3_607;
        let nsec = ((i as i64) * 7_919_113 + 123) % 1_000_000_000;
        set_mtime(p, sec, nsec);
    }
    set_mtime(&files.join("text.txt"), -86_400 * 365 * 3, 500_000_001);
    set_mtime(&files.join("empty"), 4_102_444_800, 999_999_999); // year 2100
    set_mtime(&files.join("also-empty"), 1_000_000_000, 0);
    set_mtime(&root, 1_234_567_890, 987_654_321);

    Fixture { root, sparse, big }
}
