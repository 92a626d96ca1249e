//! A damaged catalog or tree: errors that say which snapshot and path are
//! damaged and what to do about it, never silent empty values, never a
//! mount that comes up only to fail every access.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

/// A source tree with a subdirectory `docs/inner` and files in each directory.
fn source_tree() -> (tempfile::TempDir, PathBuf) {
    let dir = tempdir();
    let src = canonical(dir.path()).join("src");
    mkdir(&src.join("docs/inner"));
    mkdir(&src.join("other"));
    write_file(&src.join("top.txt"), b"top level\n");
    write_file(&src.join("docs/readme"), b"the docs\n");
    write_file(&src.join("docs/inner/notes.txt"), b"inner notes, unique\n");
    write_random_file(&src.join("other/data.bin"), 7, 3000);
    (dir, src)
}

fn snapshot_named<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter()
        .find(|s| json_str(s, "name") == name)
        .unwrap_or_else(|| panic!("no snapshot {name} in {list:?}"))
}

/// Broke: a 0-byte catalog.db was reported as "catalog schema 0 ... use a
/// snapfs release that matches the repository" (a rebuild is what helps),
/// the read left a 4 KiB header in it, and `mount` said "mounted" and then
/// failed every access.
#[test]
fn zero_byte_catalog_suggests_rebuild_and_mount_refuses() {
    let (_dir, src) = source_tree();
    let repo = Repo::new();
    repo.ingest(&["--name", "before-the-loss"], &[&src]);
    let db = repo.path.join("catalog.db");
    for side in ["catalog.db-wal", "catalog.db-shm"] {
        let _ = fs::remove_file(repo.path.join(side));
    }
    fs::write(&db, b"").expect("truncate catalog.db");

    for args in [&["snapshots"][..], &["stats"], &["verify"], &["ingest"]] {
        let mut cmd = repo.cmd();
        cmd.args(args);
        if args == ["ingest"] {
            cmd.arg(&src);
        }
        let out = cmd.output().expect("spawn snapfs");
        let what = format!("snapfs {}", args.join(" "));
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&what, &out));
        assert!(
            err.contains("snapfs rebuild-catalog") && err.contains("empty"),
            "{what} should say the catalog is empty and suggest rebuild-catalog:\n{err}"
        );
        assert!(
            !err.contains("release"),
            "{what} blames the release:\n{err}"
        );
        assert_eq!(
            fs::metadata(&db).expect("stat catalog").len(),
            0,
            "{what} wrote to the empty catalog"
        );
    }

    require_fuse();
    let mnt_dir = tempdir();
    let mnt = canonical(mnt_dir.path()).join("mnt");
    mkdir(&mnt);
    let mut child = repo
        .cmd()
        .arg("mount")
        .arg(&mnt)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn snapfs mount");
    let status = wait_timeout(&mut child, Duration::from_secs(15));
    if status.is_none() || is_mounted(&mnt) {
        fusermount_unmount(&mnt, true);
        let _ = child.kill();
        let _ = child.wait();
        panic!("mount of a repository with an empty catalog mounted instead of refusing");
    }
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert_eq!(status.and_then(|s| s.code()), Some(1), "mount: {stderr}");
    assert!(!stdout.contains("mounted"), "mount said {stdout:?}");
    assert!(
        stderr.contains("snapfs rebuild-catalog"),
        "mount should suggest rebuild-catalog:\n{stderr}"
    );
    assert_eq!(fs::metadata(&db).expect("stat catalog").len(), 0);

    // The suggestion works.
    run_ok(repo.cmd().arg("rebuild-catalog"));
    assert_eq!(repo.snapshot_names(), vec!["before-the-loss".to_string()]);
}

/// Broke: a snapshot row whose sources or tags did not decode was read as
/// having none, silently: listings showed it with no sources, and
/// retention put it in the group of snapshots without sources.
#[test]
fn corrupt_snapshot_row_is_reported_not_empty() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let (a, b) = (base.join("a"), base.join("b"));
    mkdir(&a);
    mkdir(&b);
    write_file(&a.join("file"), b"a\n");
    write_file(&b.join("file"), b"b\n");
    let repo = Repo::new();
    repo.ingest(&["--name", "a1", "--tag", "daily"], &[&a]);
    repo.ingest(&["--name", "b1"], &[&b]);
    repo.ingest(&["--name", "a2"], &[&a]);
    // Sources that claim five paths in one byte; tags that are not JSON.
    edit_catalog(
        &repo,
        "db.execute(\"UPDATE snapshots SET sources = ? WHERE name = 'b1'\", (argv[0],))\n\
         db.execute(\"UPDATE snapshots SET tags = '{{' WHERE name = 'a1'\")",
        &[b"\x05\xff"],
    );

    let out = run_ok(repo.cmd().args(["snapshots", "--json"]));
    let list = match parse_json("snapshots --json", &out.stdout) {
        Value::Array(items) => items,
        other => panic!("not a list: {other}"),
    };
    let b1 = snapshot_named(&list, "b1");
    assert_eq!(b1["sources"], Value::Null, "damaged sources listed as {b1}");
    assert!(json_str(b1, "damaged").contains("sources"), "{b1}");
    let a1 = snapshot_named(&list, "a1");
    assert_eq!(a1["tags"], Value::Null, "damaged tags listed as {a1}");
    assert!(json_str(a1, "damaged").contains("tags"), "{a1}");
    assert_eq!(a1["sources"][0], Value::from(a.to_str().expect("utf-8")));
    let a2 = snapshot_named(&list, "a2");
    assert!(a2.get("damaged").is_none(), "{a2}");
    let warned = stderr_of(&out);
    assert!(
        warned.contains("a1") && warned.contains("b1") && warned.contains("rebuild-catalog"),
        "no warning names the damaged snapshots:\n{warned}"
    );
    let out = run_ok(repo.cmd().arg("snapshots"));
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    for name in ["a1", "b1"] {
        assert!(
            listing
                .lines()
                .any(|l| l.contains(name) && l.contains("DAMAGED")),
            "{name} is not marked:\n{listing}"
        );
    }

    // Retention needs the sources and tags: it stops, naming the snapshot,
    // and removes nothing.
    let out = repo
        .cmd()
        .args(["forget", "--keep-last", "1"])
        .output()
        .expect("spawn forget");
    assert_eq!(out.status.code(), Some(1), "{}", describe("forget", &out));
    let err = stderr_of(&out);
    assert!(
        err.contains("snapshot a1") && err.contains("tags") && err.contains("rebuild-catalog"),
        "forget should name the damaged snapshot:\n{err}"
    );
    assert_eq!(repo.snapshots().len(), 3, "forget removed snapshots");

    // The rest of the row is intact: the snapshot restores, and can be
    // forgotten by name.
    let target = base.join("restored");
    repo.restore("b1", &target);
    assert_eq!(
        fs::read(restored_path(&target, &b.join("file"))).expect("read restored"),
        b"b\n"
    );
    run_ok(repo.cmd().args(["forget", "b1"]));
    assert_eq!(repo.snapshots().len(), 2);
}

/// `copy --to PATH` and the error of one damaged chunk, with the target.
fn copy_fails(repo: &Repo) -> (String, Repo, tempfile::TempDir) {
    copy_fails_with(repo, &[])
}

/// `copy_fails` with more arguments to `copy`.
fn copy_fails_with(repo: &Repo, args: &[&str]) -> (String, Repo, tempfile::TempDir) {
    let to = tempdir();
    let target = canonical(to.path()).join("copy");
    let out = repo
        .cmd()
        .arg("copy")
        .arg("--to")
        .arg(&target)
        .args(args)
        .output()
        .expect("spawn copy");
    assert_eq!(out.status.code(), Some(1), "{}", describe("copy", &out));
    (stderr_of(&out), Repo::at(&target), to)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A copy that seals every file again under another key reads each one
/// back first: damage stops it, naming the snapshot and the file, and the
/// destination gets no snapshot.
#[test]
fn copy_to_another_key_of_a_damaged_file_names_the_snapshot_and_file() {
    let (_dir, src) = source_tree();
    let repo = Repo::new();
    repo.ingest(&["--name", "nightly"], &[&src]);
    let chunk = first_chunk_of(&repo, b"notes.txt");
    damage_chunk(&repo, "SELECT ?", &[&chunk]);
    let pass = tempdir();
    let pass_file = canonical(pass.path()).join("pass");
    write_file(&pass_file, b"destination passphrase\n");
    let pass_file = pass_file.to_str().expect("utf-8 path");
    let (err, target, _to) = copy_fails_with(
        &repo,
        &[
            "--to-encryption",
            "xchacha20-poly1305",
            "--to-password-file",
            pass_file,
        ],
    );
    let file = src.join("docs/inner/notes.txt");
    assert!(
        err.contains("snapshot nightly") && err.contains(&format!("file {}", path_str(&file))),
        "the error does not name the snapshot and the file:\n{err}"
    );
    let target = Repo::encrypted_at(
        &target.path,
        &canonical(pass.path()),
        "destination passphrase",
    );
    assert!(
        target.snapshots().is_empty(),
        "the damaged snapshot was copied"
    );
}

/// Broke: `copy` of a snapshot with a damaged directory tree said only
/// "received pack P: chunk C frame 0: content does not match its hash",
/// naming neither the snapshot nor the directory.
#[test]
fn copy_of_a_damaged_tree_names_the_snapshot_and_path() {
    let (_dir, src) = source_tree();
    let repo = Repo::new();
    repo.ingest(&["--name", "nightly"], &[&src]);
    let page = dir_page_hash(&repo, b"inner");
    damage_chunk(&repo, "SELECT ?", &[&page]);
    let (err, target, _to) = copy_fails(&repo);
    let dir = src.join("docs/inner");
    for (what, want) in [
        ("the snapshot", "snapshot nightly"),
        ("the directory", &format!("directory {}", path_str(&dir))),
        ("the page id", &hex(&page)),
    ] {
        assert!(err.contains(want), "the error does not name {what}:\n{err}");
    }
    assert!(
        target.snapshots().is_empty(),
        "the damaged snapshot was copied"
    );
}

/// The same for a file's data: the error names the snapshot and the file.
#[test]
fn copy_of_a_damaged_file_names_the_snapshot_and_file() {
    let (_dir, src) = source_tree();
    let repo = Repo::new();
    repo.ingest(&["--name", "nightly"], &[&src]);
    let chunk = first_chunk_of(&repo, b"notes.txt");
    damage_chunk(&repo, "SELECT ?", &[&chunk]);
    let (err, target, _to) = copy_fails(&repo);
    let file = src.join("docs/inner/notes.txt");
    assert!(
        err.contains("snapshot nightly") && err.contains(&format!("file {}", path_str(&file))),
        "the error does not name the snapshot and the file:\n{err}"
    );
    assert!(
        target.snapshots().is_empty(),
        "the damaged snapshot was copied"
    );
}
