//! Security: restore never writes outside its target, never follows a symlink it did not create, and leaves nothing half-written.
//!
//! A hostile catalog is made the way an attacker would: by editing
//! `catalog.db` after an honest ingest (with python3's sqlite3, which the
//! test machines have), so the packs stay valid and only the rows lie.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::util::*;

const TMP_PREFIX: &str = ".snapfs-restore-";

/// Renames every catalog entry called `from` to the bytes `to`.
fn rename_entry(repo: &Repo, from: &str, to: &[u8]) {
    tamper_entry(repo, from.as_bytes(), |e, _| e.name = to.to_vec());
}

/// Every path under `dir` (recursively, without following symlinks),
/// relative to it.
fn listing(dir: &Path) -> BTreeSet<PathBuf> {
    if !dir.exists() {
        return BTreeSet::new();
    }
    walk(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).expect("under dir").to_path_buf())
        .collect()
}

/// Names under `dir` that are restore's temporary files.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    if !dir.exists() {
        return Vec::new();
    }
    walk(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.as_bytes().starts_with(TMP_PREFIX.as_bytes()))
        })
        .collect()
}

/// A directory outside every restore target, root-owned 0755 with one
/// file, and what it looks like (mode, owner, mtime, listing) for later
/// comparison.
struct Outside {
    path: PathBuf,
    before: (u32, u32, u32, i64, i64, BTreeSet<PathBuf>),
}

impl Outside {
    fn new(path: PathBuf) -> Outside {
        mkdir(&path);
        write_file(&path.join("keep"), b"keep me\n");
        chmod(&path, 0o755);
        lchown(&path, 0, 0);
        set_mtime(&path, 1_500_000_000, 0);
        let before = Outside::state(&path);
        Outside { path, before }
    }

    fn state(path: &Path) -> (u32, u32, u32, i64, i64, BTreeSet<PathBuf>) {
        let m = fs::symlink_metadata(path).expect("lstat outside dir");
        (
            m.mode(),
            m.uid(),
            m.gid(),
            m.mtime(),
            m.mtime_nsec(),
            listing(path),
        )
    }

    fn assert_untouched(&self, what: &str) {
        assert_eq!(
            Outside::state(&self.path),
            self.before,
            "{what}: the directory outside the target changed (mode, owner, mtime or contents)"
        );
        assert_eq!(
            fs::read(self.path.join("keep")).expect("read keep"),
            b"keep me\n",
            "{what}: a file outside the target was rewritten"
        );
    }
}

/// An honest snapshot of `src/dir/aaXaa` (setuid, so an escape would plant
/// a setuid file) beside ordinary files; returns (repo, base, src).
fn snapshot_with_victim_name() -> (Repo, tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempdir();
    let base = canonical(dir.path());
    let src = base.join("src");
    mkdir(&src.join("dir"));
    write_file(&src.join("dir/aaXaa"), b"#!/bin/sh\necho pwned\n");
    chmod(&src.join("dir/aaXaa"), 0o4755);
    write_file(&src.join("dir/plain"), b"plain\n");
    let repo = Repo::new();
    repo.ingest(&[], &[&src]);
    (repo, dir, base, src)
}

/// Restore of a tampered name fails, names the entry, and nothing appears
/// outside `target` (checked by listing `base`, which holds the target).
fn assert_refused(repo: &Repo, base: &Path, bad: &[u8], escape: &Path) {
    let before = listing(base);
    let target = base.join("targets").join("t");
    let out = output_of(&mut repo.restore_cmd("latest", &target));
    let what = format!("entry named {:?}", String::from_utf8_lossy(bad));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: restore did not fail\n{}",
        describe("restore", &out)
    );
    let shown = bad.escape_ascii().to_string();
    let err = stderr_of(&out);
    assert!(
        err.contains(&shown) && err.contains("snapshot"),
        "{what}: the error does not name the bad entry and its snapshot\n{err}"
    );
    assert!(
        fs::symlink_metadata(escape).is_err(),
        "{what}: restore wrote {} outside its target",
        escape.display()
    );
    let mut after = listing(base);
    after.retain(|p| !p.starts_with("targets"));
    let mut before = before;
    before.retain(|p| !p.starts_with("targets"));
    assert_eq!(
        after, before,
        "{what}: restore changed files outside its target"
    );
    let _ = fs::remove_dir_all(base.join("targets"));
}

/// Broke: entry names went straight into path joins, so `..` in a tampered
/// catalog wrote outside the target.
#[test]
fn restore_refuses_dotdot_names_from_a_tampered_catalog() {
    let (repo, _dir, base, src) = snapshot_with_victim_name();
    // The entry sits at TARGET/<src>/dir/aaXaa: one `..` per component of
    // <src>/dir, and one more, leaves TARGET and lands beside it.
    let depth = src.join("dir").components().count(); // counts the root too
    let up = "../".repeat(depth);
    let escape = base.join("targets").join("escaped");
    let bad = format!("{up}escaped");
    let honest = page_rows(&repo);
    for name in [bad.as_bytes(), b"..", b"."] {
        rename_entry(&repo, "aaXaa", name);
        assert_refused(&repo, &base, name, &escape);
        put_page_rows(&repo, &honest);
    }
}

/// Broke: an absolute entry name replaced the whole path in the join, so a
/// tampered catalog wrote anywhere on the machine.
#[test]
fn restore_refuses_absolute_and_slashed_names_from_a_tampered_catalog() {
    let (repo, _dir, base, _src) = snapshot_with_victim_name();
    let escape = base.join("absolute-escape");
    let bad = escape.as_os_str().as_bytes().to_vec();
    let honest = page_rows(&repo);
    rename_entry(&repo, "aaXaa", &bad);
    assert_refused(&repo, &base, &bad, &escape);
    // A slash inside a name, an empty name, a NUL byte: refused as well.
    for next in [&b"sub/name"[..], b"", b"nul\0byte"] {
        put_page_rows(&repo, &honest);
        rename_entry(&repo, "aaXaa", next);
        assert_refused(&repo, &base, next, &base.join("sub"));
    }
}

/// Broke: a tampered name escaped the target with a setuid root file
/// (the escaped file kept mode 4755).
#[test]
fn restore_creates_no_setuid_file_outside_target() {
    let (repo, _dir, base, src) = snapshot_with_victim_name();
    let depth = src.join("dir").components().count();
    let bad = format!("{}planted-suid", "../".repeat(depth + 1));
    rename_entry(&repo, "aaXaa", bad.as_bytes());
    let target = base.join("targets").join("t");
    let out = output_of(&mut repo.restore_cmd("latest", &target));
    assert_eq!(out.status.code(), Some(1), "{}", describe("restore", &out));
    for p in walk(&base) {
        if p.starts_with(&target) {
            continue;
        }
        let m = fs::symlink_metadata(&p).expect("lstat");
        assert!(
            !(m.is_file() && m.mode() & 0o6000 != 0 && p != src.join("dir/aaXaa")),
            "restore planted a set-id file outside its target: {} ({:o})",
            p.display(),
            m.mode()
        );
    }
    assert!(
        !base.join("planted-suid").exists(),
        "restore wrote outside its target"
    );
}

/// Broke: restore wrote files through a symlink that was already in the
/// target (`etc -> /somewhere`), as root.
#[test]
fn restore_does_not_write_through_a_symlink_in_the_target() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let src = base.join("src");
    mkdir(&src.join("etc"));
    write_file(&src.join("etc/passwd"), b"restored passwd\n");
    write_file(&src.join("etc/new-file"), b"new\n");
    write_file(&src.join("config"), b"restored config\n");
    let repo = Repo::new();
    let snap = repo.ingest(&[], &[&src]);

    let outside = Outside::new(base.join("outside"));
    let victim = base.join("victim-file");
    write_file(&victim, b"victim\n");
    let target = base.join("target");
    mkdir(&target);
    symlink(&outside.path, target.join("etc")).expect("plant dir symlink");
    symlink(&victim, target.join("config")).expect("plant file symlink");

    let out = output_of(&mut repo.restore_cmd(spec_of(&snap.id, &src), &target));
    assert!(out.status.success(), "{}", describe("restore", &out));
    outside.assert_untouched("symlinked directory");
    assert_eq!(fs::read(&victim).expect("read victim"), b"victim\n");
    assert!(
        fs::symlink_metadata(target.join("etc"))
            .expect("lstat etc")
            .is_dir(),
        "the planted symlink was kept instead of the restored directory"
    );
    assert_same_tree(&src, &target);
}

/// Broke: restore chmodded (and chowned, and set the times of) what a
/// symlink in the target pointed to: a root-owned 0755 directory became
/// 1777.
#[test]
fn restore_does_not_chmod_through_a_symlink() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let src = base.join("src");
    mkdir(&src.join("public"));
    write_file(&src.join("public/readme"), b"hello\n");
    chmod(&src.join("public"), 0o1777);
    lchown(&src.join("public"), 1234, 1234);
    let repo = Repo::new();
    let snap = repo.ingest(&[], &[&src]);

    let outside = Outside::new(base.join("outside"));
    let target = base.join("target");
    mkdir(&target);
    symlink(&outside.path, target.join("public")).expect("plant symlink");
    let out = output_of(&mut repo.restore_cmd(spec_of(&snap.id, &src), &target));
    assert!(out.status.success(), "{}", describe("restore", &out));
    outside.assert_untouched("chmod through a symlink");
    assert_eq!(
        fs::symlink_metadata(target.join("public"))
            .expect("lstat")
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );
    assert_same_tree(&src, &target);
}

/// Broke: a symlink restored earlier in the same run was followed by a
/// later entry of the same name (a tampered catalog holding a symlink
/// `d -> outside` and a directory `d`), writing into `outside`.
#[test]
fn restore_never_follows_a_symlink_it_restored_itself() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let outside = Outside::new(base.join("outside"));
    let src = base.join("src");
    mkdir(&src.join("e"));
    write_file(&src.join("e/dropped"), b"dropped\n");
    chmod(&src.join("e"), 0o1777);
    symlink(&outside.path, src.join("d")).expect("symlink");
    let repo = Repo::new();
    repo.ingest(&[], &[&src]);
    // Two entries named `d` in one directory: rename the directory `e`
    // onto the symlink's name.
    tamper_entry(&repo, b"e", |e, _| e.name = b"d".to_vec());
    let target = base.join("target");
    let out = output_of(&mut repo.restore_cmd("latest", &target));
    outside.assert_untouched(&format!(
        "symlink restored in the same run\n{}",
        describe("restore", &out)
    ));
    assert!(leftovers(&target).is_empty(), "{:?}", leftovers(&target));
}

/// Ingests 40 small files and one bigger one, `zz-victim.bin`, whose data
/// alone fills the second snapshot's new pack; returns that pack.
fn snapshot_with_damageable_file(base: &Path) -> (Repo, PathBuf, String, PathBuf) {
    let src = base.join("src");
    mkdir(&src);
    for i in 0..40 {
        write_file(
            &src.join(format!("a-{i:02}")),
            &random_bytes(i, 1000 + 100 * i as usize),
        );
    }
    let repo = Repo::new();
    repo.ingest(&[], &[&src]);
    let packs_before = repo.pack_files();
    write_random_file(&src.join("zz-victim.bin"), 7, 12 * MIB);
    let snap = repo.ingest(&[], &[&src]);
    let pack = repo
        .pack_files()
        .difference(&packs_before)
        .max_by_key(|p| fs::metadata(p).expect("stat pack").len())
        .cloned()
        .expect("the second ingest wrote a pack");
    (repo, src, snap.id, pack)
}

/// Broke: a failed restore left 0-byte (or partial) files under their
/// final names, beside complete ones.
#[test]
fn failed_restore_leaves_no_half_written_files() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let (repo, src, id, pack) = snapshot_with_damageable_file(&base);
    let len = fs::metadata(&pack).expect("stat pack").len();
    flip_byte(&pack, len / 2);

    let target = base.join("target");
    let out = output_of(&mut repo.restore_cmd(spec_of(&id, &src), &target));
    assert_eq!(out.status.code(), Some(1), "{}", describe("restore", &out));
    assert!(
        stderr_of(&out).contains("zz-victim.bin"),
        "{}",
        describe("restore", &out)
    );
    for p in walk(&target) {
        let m = fs::symlink_metadata(&p).expect("lstat");
        if !m.is_file() {
            continue;
        }
        let rel = p.strip_prefix(&target).expect("under target");
        assert!(
            !rel.as_os_str()
                .as_bytes()
                .starts_with(TMP_PREFIX.as_bytes()),
            "a temporary file was left behind: {}",
            rel.display()
        );
        let want = fs::read(src.join(rel)).expect("read source");
        assert!(
            fs::read(&p).expect("read restored") == want,
            "{} is under its final name but not complete ({} of {} bytes)",
            rel.display(),
            m.len(),
            want.len()
        );
    }
    assert!(leftovers(&target).is_empty(), "{:?}", leftovers(&target));
}

/// Broke: a restore run again after a failure rewrote everything and had
/// no way to say what it kept (and, before temporary names, could keep a
/// half-written file).
#[test]
fn interrupted_restore_resumes_and_skips_complete_files() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let (repo, src, id, pack) = snapshot_with_damageable_file(&base);
    let len = fs::metadata(&pack).expect("stat pack").len();
    flip_byte(&pack, len / 2);
    let target = base.join("target");
    let out = output_of(&mut repo.restore_cmd(spec_of(&id, &src), &target));
    assert_eq!(out.status.code(), Some(1), "{}", describe("restore", &out));

    // The pack repaired (the flip undone), the same restore completes and
    // keeps what the first run finished.
    flip_byte(&pack, len / 2);
    let out = run_ok(
        repo.cmd()
            .args(["restore", "--json"])
            .arg(spec_of(&id, &src))
            .arg(&target),
    );
    let json = parse_json("restore --json", &out.stdout);
    let skipped = json_u64(&json, "skipped");
    assert!(skipped > 0, "nothing was skipped: {json}");
    assert_eq!(
        skipped + json_u64(&json, "files"),
        41,
        "every file is either kept or written: {json}"
    );
    assert_same_tree(&src, &target);
    assert!(leftovers(&target).is_empty(), "{:?}", leftovers(&target));

    // A kept file whose bytes changed behind an unchanged size and mtime
    // is not trusted: it is written again.
    let tampered = target.join("a-05");
    let mtime = fs::metadata(&tampered).expect("stat");
    let mut bytes = fs::read(&tampered).expect("read");
    bytes[0] ^= 1;
    write_file(&tampered, &bytes);
    set_mtime(&tampered, mtime.mtime(), mtime.mtime_nsec());
    let out = run_ok(
        repo.cmd()
            .args(["restore", "--json"])
            .arg(spec_of(&id, &src))
            .arg(&target),
    );
    let json = parse_json("restore --json", &out.stdout);
    assert_eq!(json_u64(&json, "files"), 1, "{json}");
    assert_same_tree(&src, &target);
}

/// Broke: a killed restore left 0-byte files under final names; the next
/// run must remove the temporary files and complete the tree.
#[test]
fn killed_restore_leaves_only_temporary_names_and_the_next_run_removes_them() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let src = base.join("src");
    build_plain_tree(&src, 11, 4, 200, 64 * KIB);
    let repo = Repo::new();
    let snap = repo.ingest(&[], &[&src]);
    let target = base.join("target");
    // A temporary file as a killed run leaves it, in a directory the next
    // run reuses, and a killed run itself.
    mkdir(&target.join("d01"));
    write_file(
        &target.join("d01").join(format!("{TMP_PREFIX}1-x")),
        b"half",
    );
    let mut child = repo
        .restore_cmd(spec_of(&snap.id, &src), &target)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn restore");
    kill_after(&mut child, std::time::Duration::from_millis(150));
    for p in walk(&target) {
        let m = fs::symlink_metadata(&p).expect("lstat");
        let name = p.file_name().expect("name").as_bytes();
        if m.is_file() && !name.starts_with(TMP_PREFIX.as_bytes()) {
            let rel = p.strip_prefix(&target).expect("under target");
            assert_eq!(
                fs::read(&p).expect("read"),
                fs::read(src.join(rel)).expect("read source"),
                "{} is under its final name but incomplete after a kill",
                rel.display()
            );
        }
    }
    repo.restore(spec_of(&snap.id, &src), &target);
    assert!(leftovers(&target).is_empty(), "{:?}", leftovers(&target));
    assert_same_tree(&src, &target);
}

/// A user who can write where a restore goes planted a file with the bytes
/// and mtime of a setuid-root file of the snapshot (both public for a
/// system binary) and kept it mapped for writing; restore's resume kept
/// that inode as "already complete" and made it setuid root.
#[test]
fn restore_does_not_adopt_a_file_another_user_planted() {
    let src_dir = tempdir();
    let src = canonical(src_dir.path()).join("src");
    mkdir(&src);
    write_file(&src.join("su"), b"#!/bin/sh\necho privileged\n");
    lchown(&src.join("su"), 0, 0);
    chmod(&src.join("su"), 0o4755);
    set_mtime(&src.join("su"), 1_700_000_000, 123);
    let repo = Repo::new();
    repo.ingest(&[], &[&src]);

    // The attacker's tree at the place the restore will write.
    let base = tempdir();
    let target = canonical(base.path()).join("t");
    let planted = restored_path(&target, &src).join("su");
    fs::create_dir_all(planted.parent().expect("parent")).expect("mkdir -p");
    write_file(&planted, b"#!/bin/sh\necho privileged\n");
    set_mtime(&planted, 1_700_000_000, 123);
    let mut p = planted.clone();
    while p != canonical(base.path()) {
        lchown(&p, 65534, 65534);
        p = p.parent().expect("parent").to_path_buf();
    }
    let planted_ino = fs::metadata(&planted).expect("stat").ino();

    let out = run_ok(
        repo.cmd()
            .args(["restore", "--json", "latest"])
            .arg(&target),
    );
    let json = parse_json("restore", &out.stdout);
    let md = fs::symlink_metadata(&planted).expect("stat restored");
    assert_ne!(
        md.ino(),
        planted_ino,
        "restore kept the planted inode and made it setuid root: {json}"
    );
    assert_eq!((md.uid(), md.mode() & 0o7777), (0, 0o4755));
    assert_eq!(json_u64(&json, "skipped"), 0, "{json}");
    // The attacker's directories are no longer theirs.
    let dir = fs::metadata(planted.parent().expect("parent")).expect("stat dir");
    assert_ne!(
        dir.uid(),
        65534,
        "a directory of the restore still belongs to the attacker"
    );
}
