//! `snapfs mount` end to end: real FUSE mounts read with real tools (`cp -a`,
//! `rsync -aHAX`, `diff -r`, `stat`, `getfattr`, `getfacl`, `find`, `setpriv`).
//!
//! Every mount lives behind a [`Mount`] guard whose `Drop` unmounts it and
//! stops the process, so a failing test never leaves a stale mount behind.
//! The tests need `/dev/fuse` and `fusermount3`; without them they fail
//! with a message saying so, they never skip.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

/// How long a snapshot ingested while mounted may take to show up.
const APPEAR_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- helpers

fn io_errno(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("errno {n} ({e})"),
        None => format!("{e}"),
    }
}

/// `stat -c %i`, as a number.
fn ino_of(p: &Path) -> u64 {
    let s = stat_c("%i", p);
    s.parse()
        .unwrap_or_else(|e| panic!("stat -c %i {}: {s:?}: {e}", p.display()))
}

/// A small tree for the tests that do not need the whole fixture: files,
/// a nested directory, an empty directory, a hard-link pair across
/// directories, and symlinks to a file and to a directory.
fn build_small_tree(root: &Path) {
    mkdir(&root.join("dir/sub"));
    mkdir(&root.join("empty"));
    write_file(&root.join("top.txt"), b"top level\n");
    write_file(&root.join("dir/a.txt"), b"alpha\n");
    write_file(&root.join("dir/sub/b.bin"), &random_bytes(11, 300_000));
    write_file(&root.join("dir/linked"), b"linked twice\n");
    fs::hard_link(root.join("dir/linked"), root.join("dir/sub/also-linked")).expect("hard link");
    std::os::unix::fs::symlink("dir/a.txt", root.join("to-file")).expect("symlink");
    std::os::unix::fs::symlink("dir", root.join("to-dir")).expect("symlink");
}

/// Every path under `root` (root included) mapped to its inode number.
fn inode_map(root: &Path) -> BTreeMap<PathBuf, u64> {
    let mut map = BTreeMap::new();
    map.insert(
        PathBuf::from("."),
        fs::symlink_metadata(root).expect("lstat").ino(),
    );
    for p in walk(root) {
        let rel = p.strip_prefix(root).expect("under root").to_path_buf();
        map.insert(rel, fs::symlink_metadata(&p).expect("lstat").ino());
    }
    map
}

fn read_all(p: &Path) -> std::io::Result<Vec<u8>> {
    fs::read(p)
}

// ---------------------------------------------------------------- copying out

/// `cp -a` and `rsync -aHAX` out of the mount reproduce the fixture tree,
/// and `rsync -c`/`diff -r` see no difference between the mount and the source.
#[test]
fn cp_a_and_rsync_out_of_the_mount_reproduce_the_source() {
    let src_dir = tempdir();
    let fixture = build_fixture(src_dir.path());
    let repo = Repo::new();
    repo.ingest(&["--name", "fixture"], &[&fixture.root]);
    let mount = Mount::new(&repo, &[]);
    let mounted = mount.source_in("fixture", &fixture.root);

    // Straight against the mount: checksums, metadata, hard links, ACLs, xattrs.
    let diff = rsync_diff(&fixture.root, &mounted);
    assert!(
        diff.is_empty(),
        "rsync -naHAXc --delete --itemize-changes SOURCE/ MOUNT/ reports:\n{diff}"
    );
    require_tool("diff");
    // diff cannot compare fifos; everything else (devices, symlinks as links) it can.
    let out = Command::new("diff")
        .args(["-r", "--no-dereference", "--exclude=fifo"])
        .arg(&fixture.root)
        .arg(&mounted)
        .output()
        .expect("spawn diff");
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "{}",
        describe("diff -r --no-dereference SOURCE MOUNT", &out)
    );

    let out_dir = tempdir();
    let out_root = canonical(out_dir.path());

    let cp_copy = out_root.join("cp");
    tool(
        "cp",
        &[OsStr::new("-a"), mounted.as_os_str(), cp_copy.as_os_str()],
    );
    assert_same_tree(&fixture.root, &cp_copy);

    let rsync_copy = out_root.join("rsync");
    let mut from = mounted.as_os_str().to_os_string();
    from.push("/");
    let mut to = rsync_copy.as_os_str().to_os_string();
    to.push("/");
    tool("rsync", &[OsStr::new("-aHAX"), &from, &to]);
    assert_same_tree(&fixture.root, &rsync_copy);

    // Without -v a mount that served all this says nothing after its
    // "mounted" line, not even when unmounted from outside.
    let stderr = mount.finish();
    assert!(
        stderr.is_empty(),
        "the mount wrote to stderr without -v:\n{stderr}"
    );
}

/// What `stat`, `getfattr`, `getfacl`, `readlink` and `find -inum` show in the
/// mount is what they show on the source.
#[test]
fn stat_getfattr_readlink_and_find_show_the_source_metadata() {
    let src_dir = tempdir();
    let fixture = build_fixture(src_dir.path());
    let repo = Repo::new();
    repo.ingest(&["--name", "meta"], &[&fixture.root]);
    let mount = Mount::new(&repo, &[]);
    let mounted = mount.source_in("meta", &fixture.root);

    // Mode, owner, mtime (ns), size, nlink, rdev, symlink targets and xattrs
    // of every entry.
    let problems = metadata_diff(&fixture.root, &mounted);
    assert!(
        problems.is_empty(),
        "metadata seen through the mount differs from the source:\n{}",
        problems.join("\n")
    );

    // As an administrator would check by hand.
    let fmt = "%u %g %a %F %s %h %t:%T %y %Y";
    for rel in [
        "owners/setuid",
        "owners/setgid",
        "owners/foreign",
        "owners/foreign-dir",
        "owners/foreign-symlink",
        "owners/sticky",
        "owners/private",
        "owners/no-permissions",
        "read-only-dir",
        "files/text.txt",
        "files/empty",
        "files/also-empty",
        "files/size-4097",
        "special/fifo",
        "special/null-like",
        "special/loop-like",
        "symlinks/dangling",
        "symlinks/long-target",
        "links/h1",
        "links/other/deeper/z",
        "xattrs/acl-dir",
        "sparse.img",
    ] {
        assert_eq!(
            stat_c(fmt, &fixture.root.join(rel)),
            stat_c(fmt, &mounted.join(rel)),
            "stat -c '{fmt}' of {rel}: source (left) and mount (right) differ"
        );
    }
    assert_eq!(stat_c("%F", &mounted.join("special/fifo")), "fifo");
    assert_eq!(
        stat_c("%F %t:%T", &mounted.join("special/null-like")),
        "character special file 1:3"
    );
    assert_eq!(
        stat_c("%F %t:%T", &mounted.join("special/loop-like")),
        "block special file 7:c8"
    );
    assert_eq!(
        stat_c("%y", &mounted.join("files/text.txt")),
        stat_c("%y", &fixture.root.join("files/text.txt")),
        "an mtime before 1970 must survive with its nanoseconds"
    );

    // Hard links: one inode per group, the right link count.
    let h1 = stat_c("%i %h", &mounted.join("links/h1"));
    let h2 = stat_c("%i %h", &mounted.join("links/h2"));
    assert_eq!(h1, h2, "links/h1 and links/h2 are one file");
    assert!(h1.ends_with(" 2"), "links/h1 should have 2 links: {h1}");
    let x_group = [
        "links/x",
        "links/other/y",
        "links/other/deeper/z",
        "files/x-from-elsewhere",
    ];
    let x = stat_c("%i %h", &mounted.join(x_group[0]));
    assert!(x.ends_with(" 4"), "links/x should have 4 links: {x}");
    for rel in x_group {
        assert_eq!(
            stat_c("%i %h", &mounted.join(rel)),
            x,
            "{rel} should share inode and link count with links/x"
        );
    }
    assert_ne!(
        ino_of(&mounted.join("links/h1")),
        ino_of(&mounted.join("links/x")),
        "two hard-link groups share an inode"
    );
    // find -inum finds exactly the members of the group.
    let x_ino = ino_of(&mounted.join("links/x"));
    let out = tool(
        "find",
        &[
            mounted.as_os_str(),
            OsStr::new("-inum"),
            OsStr::new(&x_ino.to_string()),
        ],
    );
    let found: BTreeSet<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect();
    let expected: BTreeSet<PathBuf> = x_group.iter().map(|r| mounted.join(r)).collect();
    assert_eq!(found, expected, "find -inum {x_ino} over the snapshot");

    // Symlink targets, byte for byte.
    for rel in [
        "symlinks/relative",
        "symlinks/absolute",
        "symlinks/dangling",
        "symlinks/to-dir",
        "symlinks/odd-target",
        "symlinks/long-target",
        "owners/foreign-symlink",
    ] {
        assert_eq!(
            fs::read_link(mounted.join(rel)).ok(),
            Some(fs::read_link(fixture.root.join(rel)).expect("readlink source")),
            "readlink {rel}"
        );
    }
    let out = tool("readlink", &[mounted.join("symlinks/relative").as_os_str()]);
    assert_eq!(out.stdout, b"../files/text.txt\n");
    assert_eq!(
        fs::read(mounted.join("symlinks/relative")).expect("read through a relative symlink"),
        b"hello, snapfs\n"
    );

    // Extended attributes and ACLs as getfattr and getfacl print them. Both
    // run inside the tree on relative paths so the outputs compare directly.
    for rel in [
        "xattrs/file",
        "xattrs",
        "xattrs/acl-file",
        "xattrs/acl-dir",
        "xattrs/acl-dir/inherits",
        "files/text.txt",
    ] {
        for (program, args) in [
            (
                "getfattr",
                &["-d", "-m", "-", "-e", "hex", "--absolute-names"][..],
            ),
            ("getfacl", &["--absolute-names"][..]),
        ] {
            require_tool(program);
            let run = |dir: &Path| {
                let out = Command::new(program)
                    .args(args)
                    .arg(rel)
                    .current_dir(dir)
                    .output()
                    .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
                assert!(
                    out.status.success(),
                    "{}",
                    describe(&format!("{program} {rel} in {}", dir.display()), &out)
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            let (src, mnt) = (run(&fixture.root), run(&mounted));
            assert_eq!(
                src, mnt,
                "{program} {args:?} {rel}: source (left) and mount (right) differ"
            );
        }
    }
    let out = tool(
        "getfattr",
        &[
            OsStr::new("--only-values"),
            OsStr::new("-n"),
            OsStr::new("user.comment"),
            mounted.join("xattrs/file").as_os_str(),
        ],
    );
    assert_eq!(out.stdout, b"a comment");
    let out = tool("getfacl", &[mounted.join("xattrs/acl-file").as_os_str()]);
    let acl = String::from_utf8_lossy(&out.stdout);
    assert!(
        acl.contains("user:1234:rw-") && acl.contains("group:5678:r--"),
        "getfacl on the mount lost the ACL entries:\n{acl}"
    );

    mount.finish();
}

// ---------------------------------------------------------------- reading

/// 500 reads at random offsets and lengths of an 80 MiB file match the source.
#[test]
fn random_reads_of_a_large_file_match_the_source() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path());
    let big = root.join("big.bin");
    let len = 80 * MIB;
    write_mixed_file(&big, 4242, len);
    let source = fs::read(&big).expect("read source");
    let repo = Repo::new();
    repo.ingest(&["--name", "big"], &[&root]);
    let mut mount = Mount::new(&repo, &[]);
    let mounted = mount.source_in("big", &big);

    let f = fs::File::open(&mounted).unwrap_or_else(|e| panic!("open {}: {e}", mounted.display()));
    assert_eq!(f.metadata().expect("fstat").len(), len);
    let mut rng = Rng::new(7);
    let mut buf = vec![0u8; 4 * MIB as usize];
    for i in 0..500 {
        let off = match i {
            0 => 0,
            1 => len - 1,
            _ => rng.below(len),
        };
        let max = match rng.below(3) {
            0 => 4096,
            1 => 200_000,
            _ => 4 * MIB,
        };
        let n = (1 + rng.below(max)).min(len - off) as usize;
        f.read_exact_at(&mut buf[..n], off).unwrap_or_else(|e| {
            panic!(
                "read #{i} of {n} bytes at offset {off}: {}\n--- mount stderr ---\n{}",
                io_errno(&e),
                mount.stderr_text()
            )
        });
        let want = &source[off as usize..off as usize + n];
        if &buf[..n] != want {
            let first = buf[..n]
                .iter()
                .zip(want)
                .position(|(a, b)| a != b)
                .expect("a difference");
            panic!(
                "read #{i} of {n} bytes at offset {off}: first wrong byte at file offset {} \
                 (got {:#04x}, source has {:#04x})",
                off + first as u64,
                buf[first],
                want[first]
            );
        }
    }
    // Past the end: nothing; across the end: a short read.
    assert_eq!(f.read_at(&mut buf[..10], len).expect("read at EOF"), 0);
    assert_eq!(
        f.read_at(&mut buf[..10], len - 3).expect("read across EOF"),
        3
    );
    assert_eq!(&buf[..3], &source[len as usize - 3..]);
    drop(f);

    mount.assert_alive();
    mount.finish();
}

/// `gc --recompress` stores a chunk again in other bytes under the same id:
/// a file resolved after it (another file of the same bytes, here) reads
/// the new place, and must not read it through the frame layout the mount
/// remembered from the old one.
#[test]
fn a_file_read_after_gc_recompress_reads_its_chunks_new_layout() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path());
    mkdir(&root.join("one"));
    mkdir(&root.join("two"));
    let a = root.join("one/a.bin");
    let b = root.join("two/b.bin");
    let len = 6 * MIB;
    write_mixed_file(&a, 4343, len);
    fs::copy(&a, &b).expect("copy a to b");
    let source = fs::read(&a).expect("read source");
    let repo = Repo::new();
    repo.ingest(&["--name", "s", "--compression", "1"], &[&root]);
    // A cache of a few frames: most of a.bin's decoded frames are let go,
    // the layout of its chunks is kept.
    let mut mount = Mount::new(&repo, &["--cache-size", "1M"]);
    let f = fs::File::open(mount.source_in("s", &a)).expect("open a.bin");
    let mut got = vec![0u8; len as usize];
    f.read_exact_at(&mut got, 0).expect("read a.bin");
    assert!(got == source, "a.bin read through the mount differs");
    drop(f);

    let g = gc(&repo, &["--recompress", "19"]);
    assert!(json_u64(&g, "packs_recompressed") >= 1, "{g}");

    // b.bin holds the same chunks, now stored elsewhere and smaller.
    let f = fs::File::open(mount.source_in("s", &b)).expect("open b.bin");
    got.fill(0);
    f.read_exact_at(&mut got, 0).unwrap_or_else(|e| {
        panic!(
            "reading b.bin after gc --recompress: {}\n--- mount stderr ---\n{}",
            io_errno(&e),
            mount.stderr_text()
        )
    });
    assert!(got == source, "b.bin read through the mount differs");
    drop(f);
    mount.assert_alive();
    mount.finish();
}

/// Eight threads each read a different file in full at the same time.
#[test]
fn eight_concurrent_readers_see_the_right_bytes() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path());
    let mut rng = Rng::new(99);
    let mut files = Vec::new();
    for i in 0..8u64 {
        let p = root.join(format!("file-{i}"));
        let len = 3 * MIB + rng.below(9 * MIB);
        if i % 2 == 0 {
            write_random_file(&p, 1000 + i, len);
        } else {
            write_mixed_file(&p, 1000 + i, len);
        }
        files.push(p);
    }
    let repo = Repo::new();
    repo.ingest(&["--name", "eight"], &[&root]);
    // A cache far smaller than the data, so entries are evicted under load.
    let mut mount = Mount::new(&repo, &["--cache-size", "16M"]);

    let failures: Vec<String> = thread::scope(|s| {
        let handles: Vec<_> = files
            .iter()
            .map(|src| {
                let mounted = mount.source_in("eight", src);
                s.spawn(move || -> Option<String> {
                    let want = fs::read(src).expect("read source");
                    let got = match read_all(&mounted) {
                        Ok(b) => b,
                        Err(e) => return Some(format!("{}: {}", mounted.display(), io_errno(&e))),
                    };
                    if got.len() != want.len() {
                        return Some(format!(
                            "{}: {} bytes, source has {}",
                            mounted.display(),
                            got.len(),
                            want.len()
                        ));
                    }
                    got.iter()
                        .zip(&want)
                        .position(|(a, b)| a != b)
                        .map(|i| format!("{}: first wrong byte at offset {i}", mounted.display()))
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("reader thread panicked"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "concurrent readers saw wrong data:\n{}\n--- mount stderr ---\n{}",
        failures.join("\n"),
        mount.stderr_text()
    );
    mount.assert_alive();
    mount.finish();
}

// ---------------------------------------------------------------- layout and lifecycle

/// The root holds one directory per snapshot, named by the snapshot, and
/// `latest`; sources appear at their absolute paths inside.
#[test]
fn root_lists_every_snapshot_and_latest() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    build_small_tree(&root);
    let repo = Repo::new();
    repo.ingest(&["--name", "alpha"], &[&root]);
    write_file(&root.join("top.txt"), b"changed before beta\n");
    repo.ingest(&["--name", "beta"], &[&root]);
    let mount = Mount::new(&repo, &[]);

    let names: BTreeSet<String> = fs::read_dir(&mount.path)
        .expect("read the mount root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = ["alpha", "beta", "history", "latest"]
        .map(String::from)
        .into();
    assert_eq!(names, expected, "entries of the mount root");
    assert!(
        fs::symlink_metadata(mount.path.join("alpha"))
            .expect("lstat alpha")
            .is_dir()
    );
    let latest = fs::symlink_metadata(mount.path.join("latest")).expect("lstat latest");
    assert!(
        latest.file_type().is_symlink(),
        "latest should be a symlink"
    );
    let target = fs::read_link(mount.path.join("latest")).expect("readlink latest");
    assert_eq!(
        target.file_name(),
        Some(OsStr::new("beta")),
        "latest points to {}",
        target.display()
    );

    assert_eq!(
        fs::read(mount.source_in("alpha", &root).join("top.txt")).expect("read alpha"),
        b"top level\n"
    );
    assert_eq!(
        fs::read(mount.source_in("beta", &root).join("top.txt")).expect("read beta"),
        b"changed before beta\n"
    );
    assert_eq!(
        fs::read(mount.source_in("latest", &root).join("top.txt")).expect("read through latest"),
        b"changed before beta\n"
    );
    mount.finish();
}

/// A snapshot committed while mounted shows up without remounting, and
/// `latest` follows it.
#[test]
fn snapshot_ingested_while_mounted_appears() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    build_small_tree(&root);
    let repo = Repo::new();
    repo.ingest(&["--name", "first"], &[&root]);
    let mut mount = Mount::new(&repo, &[]);

    // Look first, as a user would, so any caching of the root is exercised.
    let before: Vec<_> = fs::read_dir(&mount.path)
        .expect("read the mount root")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        !before.iter().any(|n| n == "second"),
        "root before: {before:?}"
    );
    assert!(!mount.path.join("second").exists());
    let _ = fs::read_link(mount.path.join("latest"));

    write_file(&root.join("new-file"), b"made after the mount\n");
    repo.ingest(&["--name", "second"], &[&root]);

    let t0 = Instant::now();
    let new_file = mount.source_in("second", &root).join("new-file");
    let (mut listed, mut found, mut latest) = (false, false, None);
    while t0.elapsed() < APPEAR_TIMEOUT {
        listed = fs::read_dir(&mount.path)
            .expect("read the mount root")
            .any(|e| e.expect("entry").file_name() == "second");
        found = new_file.exists();
        latest = fs::read_link(mount.path.join("latest")).ok();
        let latest_ok = latest.as_deref().and_then(Path::file_name) == Some(OsStr::new("second"));
        if listed && found && latest_ok {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let took = t0.elapsed();
    let latest_ok = latest.as_deref().and_then(Path::file_name) == Some(OsStr::new("second"));
    assert!(
        listed && found && latest_ok,
        "{took:?} after snapshot \"second\" was ingested: listed in `ls MNT`: {listed}; \
         MNT/second/.../new-file found by lookup: {found}; readlink MNT/latest: {latest:?} \
         (expected all three to show \"second\")"
    );
    assert_eq!(
        fs::read(&new_file).unwrap_or_else(|e| panic!("read {}: {e}", new_file.display())),
        b"made after the mount\n"
    );
    if took > Duration::from_millis(1500) {
        eprintln!("note: the new snapshot took {took:?} to appear (design: ~1 s)");
    }
    mount.assert_alive();
    mount.finish();
}

/// Every kind of change fails with EROFS and changes nothing.
#[test]
fn writes_fail_with_read_only_file_system() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    build_small_tree(&root);
    xattr::set(root.join("top.txt"), "user.tag", b"keep").expect("setxattr");
    let repo = Repo::new();
    repo.ingest(&["--name", "ro"], &[&root]);
    let mut mount = Mount::new(&repo, &[]);
    let m = mount.source_in("ro", &root);
    let snap = mount.path.join("ro");
    let file = m.join("top.txt");

    fn errno_of(r: std::io::Result<()>) -> Result<(), String> {
        match r {
            Ok(()) => Err("succeeded".to_string()),
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => Ok(()),
            Err(e) => Err(io_errno(&e)),
        }
    }
    fn libc_result(rc: libc::c_int) -> std::io::Result<()> {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    let attempts: Vec<(&str, std::io::Result<()>)> = vec![
        (
            "open for writing",
            fs::OpenOptions::new().write(true).open(&file).map(drop),
        ),
        (
            "open for appending",
            fs::OpenOptions::new().append(true).open(&file).map(drop),
        ),
        (
            "open with O_TRUNC",
            fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&file)
                .map(drop),
        ),
        ("truncate(2)", {
            let c = cpath(&file);
            libc_result(unsafe { libc::truncate(c.as_ptr(), 0) })
        }),
        (
            "create a file in a snapshot",
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(m.join("new"))
                .map(drop),
        ),
        (
            "create a file in the root",
            fs::File::create(mount.path.join("new")).map(drop),
        ),
        ("mkdir in a snapshot", fs::create_dir(m.join("newdir"))),
        (
            "mkdir in the root",
            fs::create_dir(mount.path.join("newdir")),
        ),
        ("rename", fs::rename(&file, m.join("renamed"))),
        (
            "rename a snapshot",
            fs::rename(&snap, mount.path.join("renamed")),
        ),
        (
            "chmod",
            fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o777)),
        ),
        ("chown", {
            let c = cpath(&file);
            libc_result(unsafe { libc::lchown(c.as_ptr(), 1, 1) })
        }),
        ("utimensat", {
            let c = cpath(&file);
            libc_result(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0) })
        }),
        ("setxattr", xattr::set(&file, "user.new", b"x")),
        ("removexattr", xattr::remove(&file, "user.tag")),
        ("unlink", fs::remove_file(&file)),
        ("unlink a hard link", fs::remove_file(m.join("dir/linked"))),
        ("unlink latest", fs::remove_file(mount.path.join("latest"))),
        ("rmdir", fs::remove_dir(m.join("empty"))),
        ("rmdir a snapshot", fs::remove_dir(&snap)),
        (
            "symlink",
            std::os::unix::fs::symlink("top.txt", m.join("new-symlink")),
        ),
        ("link", fs::hard_link(&file, m.join("new-link"))),
        ("mkfifo", {
            let c = cpath(&m.join("new-fifo"));
            libc_result(unsafe { libc::mkfifo(c.as_ptr(), 0o644) })
        }),
    ];
    let wrong: Vec<String> = attempts
        .into_iter()
        .filter_map(|(what, r)| errno_of(r).err().map(|e| format!("{what}: {e}")))
        .collect();
    assert!(
        wrong.is_empty(),
        "these changes did not fail with EROFS (errno {}):\n{}",
        libc::EROFS,
        wrong.join("\n")
    );
    let err = fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .expect_err("open for writing");
    assert!(
        err.to_string().contains("Read-only file system"),
        "message: {err}"
    );

    // Nothing changed.
    assert_eq!(fs::read(&file).expect("read"), b"top level\n");
    assert_eq!(
        xattr::get(&file, "user.tag").expect("getxattr"),
        Some(b"keep".to_vec())
    );
    assert!(m.join("empty").is_dir());
    assert!(!m.join("new").exists());
    mount.assert_alive();
    mount.finish();
}

#[test]
fn sigterm_unmounts_and_exits_zero() {
    let repo = Repo::new();
    let src_dir = tempdir();
    build_small_tree(&canonical(src_dir.path()).join("src"));
    repo.ingest(&["--name", "s"], &[&canonical(src_dir.path()).join("src")]);
    let mount = Mount::new(&repo, &[]);
    let _ = fs::read_dir(&mount.path).expect("ls").count();
    mount.stop_with(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sigint_unmounts_and_exits_zero() {
    let repo = Repo::new();
    let mount = Mount::new(&repo, &[]);
    let _ = fs::read_dir(&mount.path).expect("ls").count();
    mount.stop_with(libc::SIGINT, "SIGINT");
}

/// `fusermount3 -u` ends the process with status 0 (`finish` asserts it),
/// and an empty repository mounts as an empty root.
#[test]
fn fusermount_unmount_ends_the_process_cleanly() {
    let repo = Repo::new();
    let mount = Mount::new(&repo, &[]);
    let entries: Vec<_> = fs::read_dir(&mount.path)
        .expect("ls the root of an empty repository")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        entries == ["history"],
        "an empty repository shows only the (empty) history view: {entries:?}"
    );
    mount.finish();
}

// ---------------------------------------------------------------- inode numbers

/// The same path has the same inode number after unmount and remount, and
/// readdir's d_ino agrees with stat.
#[test]
fn inode_numbers_are_stable_across_remounts() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    build_small_tree(&root);
    let repo = Repo::new();
    repo.ingest(&["--name", "one"], &[&root]);
    repo.ingest(&["--name", "two"], &[&root]);
    let mnt_dir = tempdir();
    let mnt = canonical(mnt_dir.path()).join("mnt");
    mkdir(&mnt);

    let first_mount = Mount::at(&repo, &[], &mnt);
    let file = first_mount.source_in("two", &root).join("dir/sub/b.bin");
    let stat_before = ino_of(&file);
    let before = inode_map(&mnt.join("one"));
    let before_two = inode_map(&mnt.join("two"));
    // d_ino from readdir must be the st_ino of the entry.
    for dir in [
        mnt.clone(),
        mnt.join("one"),
        first_mount.source_in("one", &root),
        first_mount.source_in("one", &root).join("dir"),
    ] {
        for e in fs::read_dir(&dir).expect("read_dir") {
            let e = e.expect("entry");
            let d_ino = std::os::unix::fs::DirEntryExt::ino(&e);
            let st_ino = fs::symlink_metadata(e.path()).expect("lstat").ino();
            assert_eq!(
                d_ino,
                st_ino,
                "readdir and stat disagree on the inode of {}",
                e.path().display()
            );
        }
    }
    first_mount.finish();

    // Read in the other order this time, so numbering cannot depend on the
    // order of lookups.
    let second_mount = Mount::at(&repo, &[], &mnt);
    let after_two = inode_map(&mnt.join("two"));
    let after = inode_map(&mnt.join("one"));
    assert_eq!(ino_of(&file), stat_before, "stat -c %i {}", file.display());
    assert_eq!(
        before, after,
        "inode numbers of snapshot one changed across a remount"
    );
    assert_eq!(
        before_two, after_two,
        "inode numbers of snapshot two changed across a remount"
    );
    second_mount.finish();
}

/// Two snapshots of one unchanged tree share storage but not inode numbers;
/// the only repeated inode numbers in the whole mount are hard links.
#[test]
fn same_tree_in_two_snapshots_has_distinct_inodes() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    build_small_tree(&root);
    let repo = Repo::new();
    repo.ingest(&["--name", "one"], &[&root]);
    repo.ingest(&["--name", "two"], &[&root]);
    let mount = Mount::new(&repo, &[]);

    let one = mount.source_in("one", &root);
    let two = mount.source_in("two", &root);
    for rel in [
        "",
        "top.txt",
        "dir",
        "dir/sub/b.bin",
        "dir/linked",
        "to-dir",
        "empty",
    ] {
        let (a, b) = (ino_of(&one.join(rel)), ino_of(&two.join(rel)));
        assert_ne!(a, b, "{rel:?} has inode {a} in both snapshots");
    }
    assert_ne!(
        ino_of(&mount.path.join("one")),
        ino_of(&mount.path.join("two"))
    );

    // Over the whole mount, an inode number shared by several paths must be
    // one hard-link group: not a directory, in one snapshot, nlink paths.
    let mut by_ino: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    by_ino
        .entry(fs::symlink_metadata(&mount.path).expect("lstat root").ino())
        .or_default()
        .push(mount.path.clone());
    for p in walk(&mount.path) {
        by_ino
            .entry(fs::symlink_metadata(&p).expect("lstat").ino())
            .or_default()
            .push(p);
    }
    let mut problems = Vec::new();
    for (ino, paths) in &by_ino {
        if paths.len() < 2 {
            continue;
        }
        let meta = fs::symlink_metadata(&paths[0]).expect("lstat");
        let snapshots: BTreeSet<_> = paths
            .iter()
            .map(|p| {
                p.strip_prefix(&mount.path)
                    .expect("under mount")
                    .components()
                    .next()
            })
            .collect();
        if meta.is_dir() || snapshots.len() != 1 || meta.nlink() != paths.len() as u64 {
            problems.push(format!("inode {ino} (nlink {}): {paths:?}", meta.nlink()));
        }
    }
    assert!(
        problems.is_empty(),
        "inode numbers shared by unrelated paths:\n{}",
        problems.join("\n")
    );
    let linked = ino_of(&one.join("dir/linked"));
    assert_eq!(by_ino[&linked].len(), 2, "dir/linked of snapshot one");
    mount.finish();
}

/// `find` walks the whole mount without a loop warning, and `find -inum`
/// and `find -samefile` find the members of a hard-link group.
#[test]
fn find_over_the_mount_reports_no_loop() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    build_small_tree(&root);
    let repo = Repo::new();
    repo.ingest(&["--name", "one"], &[&root]);
    write_file(&root.join("top.txt"), b"changed\n");
    repo.ingest(&["--name", "two"], &[&root]);
    repo.ingest(&["--name", "three"], &[&root]);
    let mount = Mount::new(&repo, &[]);

    require_tool("find");
    let out = Command::new("find")
        .arg(&mount.path)
        .output()
        .expect("spawn find");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "{}",
        describe("find MNT", &out)
    );
    assert!(!stderr.contains("loop"), "find reports a loop: {stderr}");
    let history = mount.path.join("history");
    let listed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !Path::new(l).starts_with(&history))
        .count();
    // Per snapshot: its directory, the ancestors of the source, the source and
    // everything under it; plus the root and latest (history/ is left out).
    let expected = 1 + 1 + 3 * (root.ancestors().count() + walk(&root).len());
    assert_eq!(
        listed, expected,
        "find MNT lists {listed} paths outside history/; expected the root, latest and each snapshot's tree"
    );

    let one = mount.source_in("one", &root);
    let ino = ino_of(&one.join("dir/linked"));
    let out = tool(
        "find",
        &[
            mount.path.as_os_str(),
            OsStr::new("-inum"),
            OsStr::new(&ino.to_string()),
        ],
    );
    let found: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    let expected: BTreeSet<String> = [one.join("dir/linked"), one.join("dir/sub/also-linked")]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(found, expected, "find MNT -inum {ino}");
    let out = tool(
        "find",
        &[
            mount.path.join("one").as_os_str(),
            OsStr::new("-samefile"),
            one.join("dir/sub/also-linked").as_os_str(),
        ],
    );
    let found: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(found, expected, "find -samefile");
    mount.finish();
}

// ---------------------------------------------------------------- permissions

/// With --allow-other, another user may read what the source let them read
/// and nothing more: the kernel checks the recorded owner and mode.
#[test]
fn allow_other_lets_the_kernel_enforce_permissions() {
    let (_src_dir, root) = open_source_dir();
    write_file(&root.join("public"), b"anyone may read this\n");
    chmod(&root.join("public"), 0o644);
    write_file(&root.join("secret"), b"root only\n");
    chmod(&root.join("secret"), 0o600);
    mkdir(&root.join("closed"));
    write_file(&root.join("closed/inside"), b"behind a 0700 directory\n");
    chmod(&root.join("closed/inside"), 0o644);
    chmod(&root.join("closed"), 0o700);
    let repo = Repo::new();
    repo.ingest(&["--name", "perm"], &[&root]);

    let mnt_dir = tempdir();
    chmod(mnt_dir.path(), 0o755);
    let mnt = canonical(mnt_dir.path()).join("mnt");
    mkdir(&mnt);
    let mount = Mount::at(&repo, &["--allow-other"], &mnt);
    let m = mount.source_in("perm", &root);

    let out = as_nobody(&[OsStr::new("cat"), m.join("public").as_os_str()]);
    assert!(
        out.status.success(),
        "nobody cannot read a 0644 file through an --allow-other mount\n{}\n--- mount stderr ---\n{}",
        describe("setpriv ... cat public", &out),
        mount.stderr_text()
    );
    assert_eq!(out.stdout, b"anyone may read this\n");

    for rel in ["secret", "closed/inside"] {
        let out = as_nobody(&[OsStr::new("cat"), m.join(rel).as_os_str()]);
        assert!(
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "nobody should get \"Permission denied\" reading {rel}\n{}",
            describe(&format!("setpriv ... cat {rel}"), &out)
        );
    }
    // Root still reads everything.
    assert_eq!(
        fs::read(m.join("secret")).expect("root reads secret"),
        b"root only\n"
    );
    mount.finish();
}

/// Without --allow-other, other users cannot enter the mount at all.
#[test]
fn without_allow_other_other_users_are_kept_out() {
    let (_src_dir, root) = open_source_dir();
    write_file(&root.join("public"), b"anyone may read this\n");
    chmod(&root.join("public"), 0o644);
    let repo = Repo::new();
    repo.ingest(&["--name", "perm"], &[&root]);
    let mnt_dir = tempdir();
    chmod(mnt_dir.path(), 0o755);
    let mnt = canonical(mnt_dir.path()).join("mnt");
    mkdir(&mnt);
    let mount = Mount::at(&repo, &[], &mnt);
    let out = as_nobody(&[
        OsStr::new("cat"),
        mount.source_in("perm", &root).join("public").as_os_str(),
    ]);
    assert!(
        !out.status.success(),
        "another user read through a mount made without --allow-other\n{}",
        describe("setpriv ... cat public", &out)
    );
    mount.finish();
}

// ---------------------------------------------------------------- damage

/// A flipped byte in a pack: reading the damaged file fails with EIO, the
/// other file reads fine, and the mount stays up.
#[test]
fn damaged_pack_byte_gives_eio_for_that_file_only() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    mkdir(&root);
    let len = 4 * MIB;
    write_random_file(&root.join("a.bin"), 501, len);
    write_random_file(&root.join("b.bin"), 502, len);
    let repo = Repo::new();
    repo.ingest(&["--name", "damaged"], &[&root]);

    // The largest pack holds the file data; its middle lies inside one file.
    let packs: Vec<PathBuf> = walk(&repo.path.join("packs"))
        .into_iter()
        .filter(|p| p.extension() == Some(OsStr::new("pack")) && p.is_file())
        .collect();
    let pack = packs
        .iter()
        .max_by_key(|p| fs::metadata(p).expect("stat pack").len())
        .unwrap_or_else(|| panic!("no *.pack under {}", repo.path.join("packs").display()));
    let size = fs::metadata(pack).expect("stat pack").len();
    assert!(size > len, "pack {} is only {size} bytes", pack.display());
    flip_byte(pack, size / 2);

    let mut mount = Mount::new(&repo, &[]);
    let m = mount.source_in("damaged", &root);
    let results: Vec<(&str, std::io::Result<Vec<u8>>)> = ["a.bin", "b.bin"]
        .into_iter()
        .map(|name| (name, fs::read(m.join(name))))
        .collect();
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "exactly one of the two files should be unreadable after a byte flip at {} of {}; \
         results: {:?}\n--- mount stderr ---\n{}",
        size / 2,
        pack.display(),
        results
            .iter()
            .map(|(n, r)| format!(
                "{n}: {}",
                match r {
                    Ok(b) => format!(
                        "read {} bytes (equal to source: {})",
                        b.len(),
                        *b == fs::read(root.join(n)).expect("source")
                    ),
                    Err(e) => io_errno(e),
                }
            ))
            .collect::<Vec<_>>(),
        mount.stderr_text()
    );
    for (name, r) in &results {
        match r {
            Err(e) => assert_eq!(
                e.raw_os_error(),
                Some(libc::EIO),
                "reading damaged {name} should fail with EIO, got {}",
                io_errno(e)
            ),
            Ok(bytes) => assert!(
                *bytes == fs::read(root.join(name)).expect("read source"),
                "undamaged {name} read back wrong bytes"
            ),
        }
    }
    // Still EIO on a second try (no wrong bytes cached), and `cat` says so.
    let damaged = m.join(failed[0]);
    let again = fs::read(&damaged).expect_err("second read of the damaged file");
    assert_eq!(
        again.raw_os_error(),
        Some(libc::EIO),
        "second read: {}",
        io_errno(&again)
    );
    let out = Command::new("cat")
        .arg(&damaged)
        .stdout(Stdio::null())
        .output()
        .expect("spawn cat");
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("Input/output error"),
        "{}",
        describe("cat DAMAGED", &out)
    );

    // The mount is still up and answers.
    mount.assert_alive();
    let out = tool("ls", &[OsStr::new("-l"), m.as_os_str()]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("a.bin") && listing.contains("b.bin"),
        "ls -l after the damage:\n{listing}"
    );
    assert!(
        !mount.stderr_text().trim().is_empty(),
        "the damage was reported to the reader but not logged on the mount's stderr"
    );
    mount.finish();
}

// ---------------------------------------------------------------- sparse files

/// [`sparse_image`] as `ROOT/sparse.img`.
fn build_sparse(root: &Path) -> PathBuf {
    mkdir(root);
    let sparse = root.join("sparse.img");
    sparse_image(&sparse);
    sparse
}

/// A 1 GiB file with 3 MiB of data: the mount reports few blocks, and
/// `cp --sparse=always` out of it makes a small file with the same bytes.
#[test]
fn sparse_file_copies_out_small() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    let sparse = build_sparse(&root);
    let repo = Repo::new();
    repo.ingest(&["--name", "sparse"], &[&root]);
    let mount = Mount::new(&repo, &[]);
    let mounted = mount.source_in("sparse", &sparse);

    assert_eq!(fs::metadata(&mounted).expect("stat").len(), GIB);
    let blocks: u64 = stat_c("%b", &mounted).parse().expect("%b is a number");
    let bytes = blocks * 512;
    assert!(
        (MIB..64 * MIB).contains(&bytes),
        "stat -c %b on the mount gives {blocks} blocks ({bytes} bytes) for a 1 GiB file \
         holding 3 MiB of data; expected about the stored data"
    );

    let out_dir = tempdir();
    let copy = canonical(out_dir.path()).join("copy.img");
    tool(
        "cp",
        &[
            OsStr::new("--sparse=always"),
            mounted.as_os_str(),
            copy.as_os_str(),
        ],
    );
    let du = tool("du", &[OsStr::new("-B1"), copy.as_os_str()]);
    let du_bytes: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .expect("du output");
    assert!(
        du_bytes < 64 * MIB,
        "cp --sparse=always out of the mount made a file of {du_bytes} bytes on disk"
    );
    tool("cmp", &[sparse.as_os_str(), copy.as_os_str()]);
    mount.finish();
}

/// lseek(SEEK_HOLE/SEEK_DATA) on the mount finds the holes of a sparse file.
#[test]
fn seek_hole_and_seek_data_find_the_holes() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    let sparse = build_sparse(&root);
    let repo = Repo::new();
    repo.ingest(&["--name", "sparse"], &[&root]);
    let mount = Mount::new(&repo, &[]);
    let mounted = mount.source_in("sparse", &sparse);

    let f = fs::File::open(&mounted).expect("open sparse on the mount");
    let hole = seek(&f, 0, libc::SEEK_HOLE);
    assert!(
        matches!(hole, Ok(h) if (MIB..512 * MIB).contains(&h)),
        "SEEK_HOLE from 0 gives {hole:?}; data ends at {MIB}, the next data is at {}",
        512 * MIB + 12_345
    );
    let data = seek(&f, 256 * MIB, libc::SEEK_DATA);
    assert!(
        matches!(data, Ok(d) if d > 256 * MIB && d <= 512 * MIB + 12_345),
        "SEEK_DATA from 256 MiB (inside a hole) gives {data:?}; the next data is at {}",
        512 * MIB + 12_345
    );
    let data = seek(&f, 600 * MIB, libc::SEEK_DATA);
    assert!(
        matches!(data, Ok(d) if d > 600 * MIB && d <= GIB - MIB),
        "SEEK_DATA from 600 MiB gives {data:?}; the last data is at {}",
        GIB - MIB
    );
    // The bytes at the data found are the source's.
    let (middle, seed) = SPARSE_ISLANDS[1];
    let want = random_bytes(seed, MIB as usize);
    let mut got = vec![0u8; MIB as usize];
    f.read_exact_at(&mut got, middle).expect("read data region");
    assert!(got == want, "the middle data region reads back wrong");
    drop(f);
    mount.finish();
}

// ---------------------------------------------------------------- errors

fn assert_one_line_failure(out: &Output, what: &str, mentions: &Path) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", describe(what, out));
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what} should explain itself in one line on stderr\n{}",
        describe(what, out)
    );
    let name = mentions.file_name().expect("a file name").to_string_lossy();
    assert!(
        lines[0].contains(name.as_ref()),
        "{what}: the message should name the mount point: {:?}",
        lines[0]
    );
    assert!(out.stdout.is_empty(), "{}", describe(what, out));
}

#[test]
fn missing_mount_point_fails_with_one_line() {
    require_fuse();
    let repo = Repo::new();
    let dir = tempdir();
    let missing = canonical(dir.path()).join("no-such-mountpoint");
    let out = run_within(
        repo.cmd().arg("mount").arg(&missing),
        Duration::from_secs(10),
    );
    assert_one_line_failure(&out, "mount on a missing mount point", &missing);
    assert!(!missing.exists(), "mount created its missing mount point");
}

#[test]
fn mount_point_that_is_a_file_fails_with_one_line() {
    require_fuse();
    let repo = Repo::new();
    let dir = tempdir();
    let file = canonical(dir.path()).join("a-regular-file");
    write_file(&file, b"not a directory\n");
    let out = run_within(repo.cmd().arg("mount").arg(&file), Duration::from_secs(10));
    assert_one_line_failure(&out, "mount on a regular file", &file);
    assert!(!is_mounted(&file));
}

/// `getfattr -d -m-` of `path`, run as is (it may fail).
fn getfattr_all(path: &Path) -> Output {
    require_tool("getfattr");
    Command::new("getfattr")
        .args(["-d", "-m-"])
        .arg(path)
        .output()
        .expect("spawn getfattr")
}

/// A repository without extended attributes: the mount tells the kernel
/// they are not supported, so `ls -l`, `cp -a` and `rsync -X` stop asking
/// for them file by file (a round trip each); copies still succeed.
/// `--xattrs always` answers "none" file by file instead.
#[test]
fn mount_of_a_repository_without_xattrs_says_they_are_not_supported() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    build_small_tree(&root);
    // Times well before the copies: rsync leaves a directory's time alone
    // when it falls in the same second as the copy it just made.
    tool(
        "find",
        &[
            root.as_os_str(),
            OsStr::new("-exec"),
            OsStr::new("touch"),
            OsStr::new("-h"),
            OsStr::new("-d"),
            OsStr::new("@1600000000.5"),
            OsStr::new("{}"),
            OsStr::new("+"),
        ],
    );
    let repo = Repo::new();
    repo.ingest(&["--name", "first"], &[&root]);
    let mount = Mount::new(&repo, &[]);
    let mounted = mount.source_in("first", &root);
    let out = getfattr_all(&mounted.join("top.txt"));
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not supported"),
        "{}",
        describe("getfattr -d -m- MNT/.../top.txt", &out)
    );
    let out_dir = tempdir();
    let copy = canonical(out_dir.path()).join("cp");
    tool(
        "cp",
        &[OsStr::new("-a"), mounted.as_os_str(), copy.as_os_str()],
    );
    assert_same_tree(&root, &copy);
    let copy = canonical(out_dir.path()).join("rsync");
    let mut from = mounted.as_os_str().to_os_string();
    from.push("/");
    tool("rsync", &[OsStr::new("-aHAX"), &from, copy.as_os_str()]);
    assert_same_tree(&root, &copy);
    mount.finish();

    let mount = Mount::new(&repo, &["--xattrs", "always"]);
    let out = getfattr_all(&mount.source_in("first", &root).join("top.txt"));
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "{}",
        describe("getfattr -d -m- MNT/.../top.txt with --xattrs always", &out)
    );
    mount.finish();
}

/// A snapshot with extended attributes, made after a mount decided to
/// serve none, is refused (never shown without its attributes, nor its
/// ACLs unchecked) until a remount, which serves them.
#[test]
fn snapshot_with_xattrs_made_after_an_xattr_less_mount_waits_for_a_remount() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    build_small_tree(&root);
    let repo = Repo::new();
    repo.ingest(&["--name", "first"], &[&root]);
    let mount = Mount::new(&repo, &[]);
    let first = mount.source_in("first", &root).join("top.txt");
    assert!(!getfattr_all(&first).status.success());

    tool(
        "setfattr",
        &[
            OsStr::new("-n"),
            OsStr::new("user.note"),
            OsStr::new("-v"),
            OsStr::new("kept"),
            root.join("top.txt").as_os_str(),
        ],
    );
    repo.ingest(&["--name", "second"], &[&root]);
    let second = mount.source_in("second", &root).join("top.txt");
    let t0 = Instant::now();
    let err = loop {
        match fs::read(&second) {
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => break e,
            r if t0.elapsed() > APPEAR_TIMEOUT => {
                panic!("reading {} after the ingest: {r:?}", second.display())
            }
            _ => thread::sleep(Duration::from_millis(100)),
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{}", io_errno(&err));
    assert_eq!(fs::read(&first).expect("first still reads"), b"top level\n");
    let stderr = mount.finish();
    assert!(stderr.contains("mount again"), "mount stderr: {stderr}");

    let mount = Mount::new(&repo, &[]);
    let second = mount.source_in("second", &root).join("top.txt");
    let out = tool(
        "getfattr",
        &[
            OsStr::new("-n"),
            OsStr::new("user.note"),
            second.as_os_str(),
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("user.note=\"kept\""),
        "{}",
        describe("getfattr -n user.note", &out)
    );
    mount.finish();
}
