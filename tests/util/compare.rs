//! Comparing trees the way an administrator would: `rsync -naHAXc` finds
//! no difference, and a metadata walk agrees on every entry; `stat -c` for
//! checks phrased the way one checks by hand.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use super::*;

/// Asserts `restored` reproduces `src`: `rsync -naHAXc --delete
/// --itemize-changes` must print nothing, and a metadata walk must agree
/// on type, mode, owner, size, mtime (ns), device numbers, link counts,
/// symlink targets and extended attributes of every entry.
pub(crate) fn assert_same_tree(src: &Path, restored: &Path) {
    if let Some(problem) = tree_differences(src, restored) {
        panic!("{problem}");
    }
}

/// What [`assert_same_tree`] would fail with, if anything.
fn tree_differences(src: &Path, restored: &Path) -> Option<String> {
    if !fs::symlink_metadata(restored)
        .map(|m| m.is_dir())
        .unwrap_or(false)
    {
        return Some(format!("restored tree {} is missing", restored.display()));
    }
    let diff = rsync_diff(src, restored);
    if !diff.is_empty() {
        return Some(format!(
            "rsync finds differences between {} and {}:\n{diff}",
            src.display(),
            restored.display(),
        ));
    }
    let problems = metadata_diff(src, restored);
    if !problems.is_empty() {
        return Some(format!(
            "metadata differs between {} and {}:\n{}",
            src.display(),
            restored.display(),
            problems.join("\n")
        ));
    }
    None
}

/// Restores snapshot `spec` whole into a fresh directory and asserts that
/// each of `sources` comes back as it is on disk now ([`assert_same_tree`]
/// of the source and its restored copy). `when` says, in every failure,
/// at which point of the test.
pub(crate) fn assert_restores(
    repo: &Repo,
    spec: impl AsRef<OsStr>,
    sources: &[impl AsRef<Path>],
    when: &str,
) {
    let pairs: Vec<(&Path, &Path)> = sources.iter().map(|s| (s.as_ref(), s.as_ref())).collect();
    assert_restores_as(repo, spec, &pairs, when);
}

/// The same, where the source a snapshot recorded has changed since: each
/// `(source, reference)` says that the tree the snapshot holds at `source`
/// must reproduce `reference` (a copy frozen at the time of the ingest).
pub(crate) fn assert_restores_as(
    repo: &Repo,
    spec: impl AsRef<OsStr>,
    pairs: &[(&Path, &Path)],
    when: &str,
) {
    let spec = spec.as_ref();
    let dir = tempdir();
    let target = canonical(dir.path()).join("restored");
    let out = output_of(&mut repo.restore_cmd(spec, &target));
    assert!(
        out.status.success(),
        "{when}: restore of {spec:?} from {} fails\n{}",
        repo.path.display(),
        describe("restore", &out)
    );
    for (src, reference) in pairs {
        if let Some(problem) = tree_differences(reference, &restored_path(&target, src)) {
            panic!(
                "{when}: {} in snapshot {spec:?} of {} does not restore as {}: {problem}",
                src.display(),
                repo.path.display(),
                reference.display()
            );
        }
    }
}

/// The itemized differences rsync sees (empty when the trees are the same).
/// The fixture tree ingested as snapshot `snapshot` (whose id is `id`)
/// comes back whole both ways a user gets files back: through the mount
/// (rsync -naHAXc finds no difference) and through `restore`.
pub(crate) fn assert_fixture_round_trips(repo: &Repo, root: &Path, snapshot: &str, id: &str) {
    let mount = Mount::new(repo, &[]);
    let diff = rsync_diff(root, &mount.source_in(snapshot, root));
    assert!(
        diff.is_empty(),
        "rsync -naHAXc SOURCE/ MOUNT/ reports:\n{diff}"
    );
    drop(mount);
    let out = tempdir();
    let target = canonical(out.path()).join("restored");
    let restored = repo.restore(id, &target);
    assert!(
        restored.status.success(),
        "{}",
        describe("restore", &restored)
    );
    assert_same_tree(root, &restored_path(&target, root));
}

pub(crate) fn rsync_diff(src: &Path, restored: &Path) -> String {
    require_tool("rsync");
    let mut a = src.as_os_str().to_os_string();
    a.push("/");
    let mut b = restored.as_os_str().to_os_string();
    b.push("/");
    let out = Command::new("rsync")
        .args(["-naHAXc", "--delete", "--itemize-changes"])
        .arg(&a)
        .arg(&b)
        .output()
        .expect("spawn rsync");
    assert!(out.status.success(), "{}", describe("rsync", &out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn xattrs_of(p: &Path) -> BTreeMap<OsString, Vec<u8>> {
    let mut map = BTreeMap::new();
    if let Ok(names) = xattr::list(p) {
        for name in names {
            let value = xattr::get(p, &name).ok().flatten().unwrap_or_default();
            map.insert(name, value);
        }
    }
    map
}

/// Differences in metadata between `src` and `restored`, one line each.
pub(crate) fn metadata_diff(src: &Path, restored: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let mut pairs = vec![(src.to_path_buf(), restored.to_path_buf())];
    for p in walk(src) {
        let rel = p.strip_prefix(src).expect("under src").to_path_buf();
        pairs.push((p, restored.join(rel)));
    }
    for (a, b) in pairs {
        let name = a.display().to_string();
        let ma = fs::symlink_metadata(&a).expect("lstat source");
        let mb = match fs::symlink_metadata(&b) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("{name}: missing in restore ({e})"));
                continue;
            }
        };
        let mut diff = |what: &str, x: String, y: String| {
            if x != y {
                problems.push(format!("{name}: {what} {x} != restored {y}"));
            }
        };
        diff(
            "mode",
            format!("{:o}", ma.mode()),
            format!("{:o}", mb.mode()),
        );
        diff("uid", ma.uid().to_string(), mb.uid().to_string());
        diff("gid", ma.gid().to_string(), mb.gid().to_string());
        diff(
            "mtime",
            format!("{}.{:09}", ma.mtime(), ma.mtime_nsec()),
            format!("{}.{:09}", mb.mtime(), mb.mtime_nsec()),
        );
        let ft = ma.file_type();
        if !ft.is_dir() {
            diff("size", ma.len().to_string(), mb.len().to_string());
            diff("nlink", ma.nlink().to_string(), mb.nlink().to_string());
        }
        if ft.is_char_device() || ft.is_block_device() {
            diff("rdev", ma.rdev().to_string(), mb.rdev().to_string());
        }
        if ft.is_symlink() {
            let ta = fs::read_link(&a).expect("readlink source");
            let tb = fs::read_link(&b).unwrap_or_default();
            diff("symlink target", format!("{:?}", ta), format!("{:?}", tb));
        } else {
            diff(
                "xattrs",
                format!("{:?}", xattrs_of(&a)),
                format!("{:?}", xattrs_of(&b)),
            );
        }
    }
    problems
}

/// Bytes actually allocated to `p` on disk.
pub(crate) fn allocated_bytes(p: &Path) -> u64 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
        .blocks()
        * 512
}

/// `stat -c FORMAT PATH` output, for checks phrased the way an
/// administrator would check by hand.
pub(crate) fn stat_c(format: &str, p: &Path) -> String {
    let out = tool(
        "stat",
        &[OsStr::new("-c"), OsStr::new(format), p.as_os_str()],
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

// ---------------------------------------------------------------- checks of the checks

/// The fixture and the comparison agree with `cp -a`: a faithful copy
/// compares equal, so a round-trip failure is never the fixture's fault.
#[test]
fn fixture_copied_with_cp_a_compares_equal() {
    let src_dir = tempdir();
    let fixture = build_fixture(src_dir.path());
    let copy_dir = tempdir();
    let copy = canonical(copy_dir.path()).join("copy");
    tool(
        "cp",
        &[OsStr::new("-a"), fixture.root.as_os_str(), copy.as_os_str()],
    );
    assert_same_tree(&fixture.root, &copy);
}

/// The comparison notices each kind of difference it claims to check.
#[test]
fn tree_comparison_notices_differences() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let a = base.join("a");
    mkdir(&a.join("sub"));
    write_file(&a.join("sub/file"), b"content\n");
    write_file(&a.join("other"), b"other\n");
    set_mtime(&a.join("sub/file"), 1_000_000_000, 5);
    let copy = |name: &str| {
        let b = base.join(name);
        tool("cp", &[OsStr::new("-a"), a.as_os_str(), b.as_os_str()]);
        b
    };
    assert_same_tree(&a, &copy("same"));

    type Change<'a> = (&'a str, Box<dyn Fn(&Path)>);
    let changes: Vec<Change> = vec![
        (
            "content",
            Box::new(|b: &Path| {
                write_file(&b.join("sub/file"), b"CONTENT\n");
                set_mtime(&b.join("sub/file"), 1_000_000_000, 5);
            }),
        ),
        (
            "mtime nanoseconds",
            Box::new(|b: &Path| set_mtime(&b.join("sub/file"), 1_000_000_000, 6)),
        ),
        ("mode", Box::new(|b: &Path| chmod(&b.join("other"), 0o600))),
        ("owner", Box::new(|b: &Path| lchown(&b.join("other"), 1, 1))),
        (
            "xattr",
            Box::new(|b: &Path| xattr::set(b.join("other"), "user.x", b"1").expect("setxattr")),
        ),
        (
            "extra file",
            Box::new(|b: &Path| write_file(&b.join("extra"), b"")),
        ),
        (
            "hard link",
            Box::new(|b: &Path| {
                fs::remove_file(b.join("other")).expect("rm");
                fs::hard_link(b.join("sub/file"), b.join("other")).expect("link");
            }),
        ),
    ];
    for (i, (what, change)) in changes.iter().enumerate() {
        let b = copy(&format!("changed-{i}"));
        change(&b);
        assert!(
            tree_differences(&a, &b).is_some(),
            "the comparison misses a change of {what}"
        );
    }
}
