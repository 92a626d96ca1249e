//! Encrypted repositories end to end: nothing readable without the key, and
//! everything a user does works with it (ingest, mount, restore, verify,
//! rebuild-catalog from the packs and the key alone).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use crate::util::*;

/// A string placed in every kind of name and content; no byte of an
/// encrypted repository may show it.
const MARKER: &str = "QZXMARKERVJK";

/// A tree with the marker in a file name, a directory name, file contents,
/// a symlink target, an xattr name and an xattr value.
fn marked_tree(root: &Path) {
    let dir = root.join(format!("dir-{MARKER}"));
    mkdir(&dir);
    let file = dir.join(format!("file-{MARKER}.txt"));
    write_file(&file, format!("contents {MARKER} ").repeat(1000).as_bytes());
    std::os::unix::fs::symlink(format!("target-{MARKER}"), root.join("link")).expect("symlink");
    let name = format!("user.{MARKER}");
    xattr::set(&file, &name, format!("value-{MARKER}").as_bytes()).expect("setfattr");
}

/// An encrypted repository holding one snapshot of a marked tree: the
/// tree, the repository, the snapshot's id and a frozen copy of the tree.
fn marked_encrypted() -> (Work, Repo, String, PathBuf) {
    let work = Work::new();
    marked_tree(&work.src);
    let repo = Repo::new_encrypted();
    let id = repo.ingest(&[], &[&work.src]).id;
    let reference = work.freeze("marked");
    (work, repo, id, reference)
}

/// Every regular file under `dir` (the repository, and a cache if given)
/// that holds `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .filter(|p| {
            fs::read(p)
                .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
                .windows(needle.len())
                .any(|w| w == needle)
        })
        .collect()
}

#[test]
fn encrypted_repository_shows_no_name_content_target_or_xattr() {
    let work = Work::new();
    marked_tree(&work.src);
    let plain = Repo::new();
    plain.ingest(&[], &[&work.src]);
    let repo = Repo::new_encrypted();
    let id = repo.ingest(&[], &[&work.src]).id;
    // The check can fail: an unencrypted repository does show the marker.
    assert!(
        !files_holding(&plain.path, MARKER.as_bytes()).is_empty(),
        "the unencrypted repository does not hold the marker: the check proves nothing"
    );
    let shown = files_holding(&repo.path, MARKER.as_bytes());
    assert!(
        shown.is_empty(),
        "the encrypted repository shows the marker in {shown:?}"
    );
    // The catalog, which does hold names, is in the cache, not the repository.
    let secret = repo.secret.clone().expect("encrypted");
    assert!(!files_holding(&secret.cache_dir, MARKER.as_bytes()).is_empty());
    for p in walk(&secret.cache_dir) {
        let mode = mode_of(&p) & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", p.display());
    }
    let reference = work.freeze("marked");
    work.assert_restores(&repo, &id, &reference);
    assert_verify_read_data_ok(&repo, "an encrypted repository");
}

#[test]
fn encrypted_fixture_round_trips_through_the_mount_and_restore() {
    let src_dir = tempdir();
    let fixture = build_fixture(src_dir.path());
    let repo = Repo::new_encrypted();
    let id = repo.ingest(&["--name", "fixture"], &[&fixture.root]).id;
    assert_fixture_round_trips(&repo, &fixture.root, "fixture", &id);
}

#[test]
fn same_file_in_two_encrypted_repositories_has_other_ids_and_other_boundaries() {
    let work = Work::new();
    write_mixed_file(&work.src.join("big"), 11, 24 * MIB);
    let chunks = |repo: &Repo| {
        repo.ingest(&[], &[&work.src]);
        let cat = repo.secret.as_ref().map_or_else(
            || repo.path.join("catalog.db"),
            |s| catalog_in(&s.cache_dir),
        );
        let conn = rusqlite::Connection::open(&cat).expect("open catalog");
        let mut st = conn
            .prepare("SELECT id, raw_len FROM chunks WHERE kind = 0 ORDER BY id")
            .expect("query");
        st.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, u32>(1)?)))
            .expect("rows")
            .map(|r| r.expect("row"))
            .collect::<Vec<_>>()
    };
    let (a, b, p) = (
        chunks(&Repo::new_encrypted()),
        chunks(&Repo::new_encrypted()),
        chunks(&Repo::new()),
    );
    for (x, y, what) in [(&a, &b, "two keys"), (&a, &p, "a key and none")] {
        assert!(
            x.iter().all(|c| !y.iter().any(|d| d.0 == c.0)),
            "{what}: a chunk id in common"
        );
        let mut xs: Vec<u32> = x.iter().map(|c| c.1).collect();
        let mut ys: Vec<u32> = y.iter().map(|c| c.1).collect();
        xs.sort_unstable();
        ys.sort_unstable();
        assert_ne!(xs, ys, "{what}: the same chunk sizes");
    }
}

/// Every path under `dir` with its modification time.
fn mtimes(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    walk(dir)
        .into_iter()
        .map(|p| {
            let t = fs::symlink_metadata(&p).and_then(|m| m.modified());
            let t = t.unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
            (p, t)
        })
        .collect()
}

/// The catalog file in an encrypted repository's cache directory.
fn catalog_in(cache: &Path) -> PathBuf {
    walk(cache)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "catalog.db"))
        .unwrap_or_else(|| panic!("no catalog under {}", cache.display()))
}

#[test]
fn wrong_passphrase_is_refused_in_one_line_before_anything_is_written() {
    let work = Work::new();
    write_file(&work.src.join("a"), b"a");
    let repo = Repo::new_encrypted();
    repo.ingest(&[], &[&work.src]);
    let before = mtimes(&repo.path);
    let secret = repo.secret.clone().expect("encrypted");
    write_file(&secret.password_file, b"not the passphrase\n");
    for args in [&["snapshots"][..], &["ingest", "--json"], &["verify"]] {
        let mut cmd = repo.cmd();
        cmd.args(args);
        if args[0] == "ingest" {
            cmd.arg(&work.src);
        }
        let out = output_of(&mut cmd);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            describe("wrong passphrase", &out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("wrong passphrase"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "more than one line: {err}");
    }
    let after = mtimes(&repo.path);
    assert_eq!(before, after, "a refused command changed the repository");
}

#[test]
fn lost_local_catalog_is_rebuilt_from_the_packs_and_the_key() {
    let (work, repo, id, reference) = marked_encrypted();
    let secret = repo.secret.clone().expect("encrypted");
    // The next command finds the cache gone (another machine, a cleared
    // cache) and rebuilds it before it answers, saying so.
    fs::remove_dir_all(&secret.cache_dir).expect("lose the cache");
    let out = run_ok(repo.cmd().args(["snapshots", "--json"]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rebuilding it from the packs"),
        "{}",
        describe("snapshots without a catalog", &out)
    );
    let listed = parse_json("snapshots --json", &out.stdout);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    work.assert_restores(&repo, &id, &reference);
    // And rebuild-catalog makes it again on demand.
    fs::remove_dir_all(&secret.cache_dir).expect("lose the cache again");
    rebuild_catalog_ok(&repo);
    work.assert_restores(&repo, &id, &reference);
    assert_verify_read_data_ok(&repo, "after the rebuild");
}

#[test]
fn key_passwd_refuses_the_old_passphrase_and_opens_with_the_new_one() {
    let (work, repo, id, reference) = marked_encrypted();
    let secret = repo.secret.clone().expect("encrypted");
    let slots = |repo: &Repo| -> Vec<serde_json::Value> {
        let out = run_ok(repo.cmd().args(["key", "list", "--json"]));
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .expect("key list --json")
            .as_array()
            .expect("a list")
            .clone()
    };
    assert_eq!(slots(&repo).len(), 1);

    // A second passphrase opens the same repository.
    let second = secret.password_file.with_file_name("second");
    write_file(&second, b"a second passphrase\n");
    run_ok(
        repo.cmd()
            .args(["key", "add", "--new-password-file"])
            .arg(&second),
    );
    assert_eq!(slots(&repo).len(), 2);
    let old = fs::read(&secret.password_file).expect("old passphrase");
    write_file(&secret.password_file, b"a second passphrase\n");
    let listed = slots(&repo);
    let opened: Vec<&str> = listed
        .iter()
        .filter(|s| s["current"] == true)
        .map(|s| s["id"].as_str().expect("id"))
        .collect();
    assert_eq!(opened.len(), 1, "{listed:?}");
    let second_id = opened[0].to_string();

    // passwd replaces the slot that opened: the second passphrase stops
    // working, a third takes its place, the first still works.
    let third = secret.password_file.with_file_name("third");
    write_file(&third, b"a third passphrase\n");
    run_ok(
        repo.cmd()
            .args(["key", "passwd", "--new-password-file"])
            .arg(&third),
    );
    let out = output_of(repo.cmd().arg("snapshots"));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("the replaced passphrase", &out)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
    write_file(&secret.password_file, b"a third passphrase\n");
    assert!(slots(&repo).iter().all(|s| s["id"] != second_id.as_str()));
    work.assert_restores(&repo, &id, &reference);
    write_file(&secret.password_file, &old);
    work.assert_restores(&repo, &id, &reference);

    // The last slot is never removed; another one is.
    let listed = slots(&repo);
    let other = listed
        .iter()
        .find(|s| s["current"] != true)
        .expect("the third passphrase's slot");
    run_ok(
        repo.cmd()
            .args(["key", "remove", other["id"].as_str().expect("id")]),
    );
    let last = slots(&repo);
    assert_eq!(last.len(), 1);
    let out = output_of(
        repo.cmd()
            .args(["key", "remove", last[0]["id"].as_str().expect("id")]),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("removing the last slot", &out)
    );
    assert_verify_read_data_ok(&repo, "after the key changes");
}

/// A new repository is encrypted unless `--encryption none` is said; with
/// no passphrase to be had, init says where to give one and makes nothing.
#[test]
fn init_encrypts_unless_told_none() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let pass = base.join("pass");
    write_file(&pass, b"a passphrase\n");
    let repo = base.join("repo");
    run_ok(
        snapfs()
            .env("SNAPFS_CACHE_DIR", base.join("cache"))
            .env("SNAPFS_PASSWORD_FILE", &pass)
            .env("SNAPFS_TEST_KDF_MEMORY_KIB", "8192")
            .arg("--repo")
            .arg(&repo)
            .arg("init"),
    );
    let config = fs::read_to_string(repo.join("config")).expect("config");
    assert!(
        config.contains("encryption = xchacha20-poly1305"),
        "init without --encryption made:\n{config}"
    );
    assert!(repo.join("keys").is_dir() && !repo.join("catalog.db").exists());

    let bare = base.join("bare");
    let mut cmd = snapfs();
    cmd.env_remove("SNAPFS_PASSWORD_FILE")
        .env_remove("SNAPFS_PASSWORD_COMMAND")
        .env("SNAPFS_CACHE_DIR", base.join("cache"))
        .arg("--repo")
        .arg(&bare)
        .arg("init")
        .stdin(std::process::Stdio::null());
    // In a session of its own: no terminal to ask on, even when the tests
    // run from one.
    // SAFETY: setsid is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let out = output_of(&mut cmd);
    assert_eq!(out.status.code(), Some(1), "{}", describe("init", &out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.trim().lines().count() == 1 && err.contains("--password-file"),
        "{}",
        describe("init without a passphrase", &out)
    );
    assert!(
        !bare.exists(),
        "init without a passphrase made {}",
        bare.display()
    );
}

#[test]
fn copy_of_an_encrypted_repository_to_an_unreachable_ssh_host_fails_and_leaves_its_cache_untouched()
{
    // An encrypted copy over ssh goes through the far side as a keyless
    // store (tests/ssh_store.rs); one that cannot connect is one error
    // naming the destination, and the source's cache is as it was.
    let work = Work::new();
    write_file(&work.src.join("a"), b"a");
    let repo = Repo::new_encrypted();
    repo.ingest(&[], &[&work.src]);
    let secret = repo.secret.clone().expect("encrypted");
    let catalog = catalog_in(&secret.cache_dir);
    let before = fs::read(&catalog).expect("catalog");
    let out = output_of(
        repo.cmd()
            .args(["copy", "--to", "ssh://nobody@127.0.0.1:1/x"])
            .env("SNAPFS_SSH", "false"),
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe("copy", &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ssh://nobody@127.0.0.1:1/x"),
        "{}",
        describe("copy", &out)
    );
    assert_eq!(fs::read(&catalog).expect("catalog"), before);
}

/// Copies the repository `from` into `to` (made by the copy when it does
/// not exist, with `extra` arguments), its passphrase given as the
/// destination's; returns the copy's JSON.
fn copy_into(from: &Repo, to: &Repo, extra: &[&str]) -> serde_json::Value {
    let mut cmd = from.cmd();
    cmd.args(["copy", "--json", "--to"])
        .arg(&to.path)
        .args(extra);
    if let Some(s) = &to.secret {
        cmd.arg("--to-password-file").arg(&s.password_file);
    }
    json_of("copy", &mut cmd)
}

/// The whole fixture (every kind of entry) from an encrypted repository
/// into one with another key, from there into an unencrypted one and back
/// into an encrypted one: each holds the same tree, rsync -aHAXc finds no
/// difference through each mount, and a second copy sends nothing.
#[test]
fn copy_between_keys_encrypted_other_key_plain_and_back() {
    let src_dir = tempdir();
    let fixture = build_fixture(src_dir.path());
    let a = Repo::new_encrypted();
    a.ingest(&["--name", "fixture"], &[&fixture.root]);
    let cache = a.secret.clone().expect("encrypted").cache_dir;
    let dirs = tempdir();
    let base = canonical(dirs.path());
    let b = Repo::encrypted_at(&base.join("b"), &cache, "the other key's passphrase");
    let c = Repo::at(&base.join("c"));
    let d = Repo::encrypted_at(&base.join("d"), &cache, "yet another passphrase");
    let first = copy_into(&a, &b, &[]);
    assert_eq!(first["snapshots_copied"], serde_json::json!(["fixture"]));
    copy_into(&b, &c, &["--to-encryption", "none"]);
    copy_into(&c, &d, &["--to-encryption", "xchacha20-poly1305"]);
    assert!(
        !c.path.join("keys").exists() && c.path.join("catalog.db").is_file(),
        "the unencrypted copy is not a plain repository"
    );
    for (what, r) in [("other key", &b), ("unencrypted", &c), ("back", &d)] {
        let id = json_str(&r.snapshots()[0], "id").to_string();
        assert_fixture_round_trips(r, &fixture.root, "fixture", &id);
        assert_verify_read_data_ok(r, what);
    }
    // Other keys, other ids: no chunk id of the source is one of the copy's.
    let ids = |r: &Repo| -> std::collections::BTreeSet<String> {
        r.snapshots()
            .iter()
            .map(|s| json_str(s, "id").to_string())
            .collect()
    };
    assert!(
        ids(&a).is_disjoint(&ids(&b)),
        "the same snapshot ids under two keys"
    );
    let again = copy_into(&a, &b, &[]);
    assert_eq!(again["snapshots_copied"], serde_json::json!([]));
    assert_eq!(again["snapshots_present"], 1);
    assert_eq!(again["chunks_sent"], 0);
}

/// A later copy to another key reads again only what changed: the files
/// and directories its source snapshot shares with one copied before are
/// taken from that copy.
#[test]
fn copy_between_keys_sends_only_what_changed_since_the_last_copy() {
    let work = Work::new();
    write_random_file(&work.src.join("big"), 11, 4 << 20);
    mkdir(&work.src.join("docs"));
    write_file(&work.src.join("docs/a"), b"first");
    let a = Repo::new_encrypted();
    a.ingest(&["--name", "one"], &[&work.src]);
    let dirs = tempdir();
    let c = Repo::at(&canonical(dirs.path()).join("c"));
    let first = copy_into(&a, &c, &["--to-encryption", "none"]);
    let first_bytes = first["bytes_sent"].as_u64().expect("bytes_sent");
    assert!(
        first_bytes > 4 << 20,
        "the first copy sent only {first_bytes} bytes"
    );
    write_file(&work.src.join("docs/a"), b"second");
    a.ingest(&["--name", "two"], &[&work.src]);
    let second = copy_into(&a, &c, &[]);
    assert_eq!(second["snapshots_copied"], serde_json::json!(["two"]));
    let read = second["bytes_read"].as_u64().expect("bytes_read");
    assert!(
        read < 64 << 10,
        "the second copy read {read} bytes of the source for a 6-byte change"
    );
    let reference = work.freeze("two");
    work.assert_restores(&c, "two", &reference);
}

#[test]
fn forget_gc_and_recompress_keep_an_encrypted_repository_whole() {
    let work = Work::new();
    for i in 0..4 {
        write_mixed_file(&work.src.join(format!("f{i}")), 30 + i, 2 * MIB);
    }
    let repo = Repo::new_encrypted();
    repo.ingest(&["--name", "one", "--compression", "1"], &[&work.src]);
    write_mixed_file(&work.src.join("f0"), 99, 2 * MIB);
    let id = repo
        .ingest(&["--name", "two", "--compression", "1"], &[&work.src])
        .id;
    let reference = work.freeze("two");
    forget(&repo, &["one"]);
    let g = gc(&repo, &["--recompress", "9"]);
    assert!(json_u64(&g, "packs_recompressed") >= 1, "{g}");
    assert!(json_u64(&g, "bytes_freed") > 0, "{g}");
    work.assert_restores(&repo, &id, &reference);
    assert_verify_read_data_ok(&repo, "after forget and gc --recompress");
    let again = gc(&repo, &["--recompress", "9"]);
    assert_eq!(json_u64(&again, "packs_rewritten"), 0, "{again}");
}

#[test]
fn encrypted_init_over_the_keys_of_a_killed_init_in_place() {
    // An init killed after its key slot but before its config leaves
    // keys/ in the (otherwise empty) directory an administrator prepared:
    // the next init must take the directory, and no slot of the dead
    // init's master key may survive to open it with the wrong key.
    let dir = tempdir();
    let base = canonical(dir.path());
    let path = base.join("prepared");
    mkdir(&path);
    mkdir(&path.join("keys"));
    write_file(
        &path.join("keys/0123456789abcdef.key"),
        b"{\"left\": \"by a dead init\"}",
    );
    let pw = base.join("passphrase");
    write_file(&pw, b"correct horse battery staple\n");
    let mut repo = Repo::at(&path);
    repo.secret = Some(Secret {
        password_file: pw,
        cache_dir: base.join("cache"),
    });
    run_ok(
        repo.cmd()
            .args(["init", "--encryption", "xchacha20-poly1305"]),
    );
    assert!(
        !path.join("keys/0123456789abcdef.key").exists(),
        "a dead init's slot survived"
    );
    let work = Work::new();
    write_file(&work.src.join("a"), b"a");
    let id = repo.ingest(&[], &[&work.src]).id;
    let reference = work.freeze("a");
    work.assert_restores(&repo, &id, &reference);
}

#[test]
fn catalog_cache_directory_of_another_user_is_refused() {
    // Where the cache is shared (SNAPFS_CACHE_DIR under /tmp), another
    // user may make the repository's directory first: it must not receive
    // the catalog, which names every file.
    let (_work, repo, _id, _reference) = marked_encrypted();
    let secret = repo.secret.clone().expect("encrypted");
    let dir = catalog_in(&secret.cache_dir)
        .parent()
        .expect("cache directory")
        .to_path_buf();
    fs::remove_dir_all(&dir).expect("remove the cache");
    mkdir(&dir);
    lchown(&dir, 65534, 65534);
    let out = output_of(repo.cmd().arg("snapshots"));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("snapshots", &out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("belongs to another user"),
        "{}",
        describe("snapshots", &out)
    );
    assert!(
        walk(&dir).into_iter().all(|p| p == dir),
        "something was written into it"
    );
}

/// The paper copy: `key export` writes the master key (0600, or refuses a
/// standard output that is no terminal); after every key slot is lost,
/// `key import` of it with a new passphrase opens the repository again,
/// its data whole; a paper of another repository is refused.
#[test]
fn key_export_then_import_after_every_slot_is_lost() {
    let (work, repo, id, reference) = marked_encrypted();
    let out = output_of(repo.cmd().args(["key", "export"]));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("export to a pipe", &out)
    );
    assert!(out.stdout.is_empty(), "the key went to a pipe");
    let paper = work.scratch.join("paper.txt");
    run_ok(repo.cmd().args(["key", "export", "--output"]).arg(&paper));
    assert_eq!(mode_of(&paper) & 0o777, 0o600);

    // Every slot lost: nothing opens it.
    fs::remove_dir_all(repo.path.join("keys")).expect("remove keys/");
    let out = output_of(repo.cmd().arg("snapshots"));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("snapshots", &out)
    );

    // A paper of another repository is refused, and adds no slot.
    let other = Repo::new_encrypted();
    let other_paper = work.scratch.join("other-paper.txt");
    run_ok(
        other
            .cmd()
            .args(["key", "export", "--output"])
            .arg(&other_paper),
    );
    let new_pass = work.scratch.join("new-pass");
    write_file(&new_pass, b"typed back from paper\n");
    let out = output_of(
        repo.cmd()
            .args(["key", "import", "--input"])
            .arg(&other_paper)
            .arg("--new-password-file")
            .arg(&new_pass),
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe("import", &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another repository"),
        "{}",
        describe("import of another repository's paper", &out)
    );

    run_ok(
        repo.cmd()
            .args(["key", "import", "--input"])
            .arg(&paper)
            .arg("--new-password-file")
            .arg(&new_pass),
    );
    let reopened = Repo::encrypted_at(
        &repo.path,
        &repo.secret.clone().expect("encrypted").cache_dir,
        "typed back from paper",
    );
    work.assert_restores(&reopened, &id, &reference);
    assert_verify_read_data_ok(&reopened, "after key import");
}

/// Once a passphrase is read the process is kept out of core dumps and
/// away from other processes of its user: its /proc files belong to root
/// (checked from the passphrase command itself, run by a process of the
/// unprivileged user nobody; the same check on an ordinary process of that
/// user sees nobody's id, or it proves nothing).
#[test]
fn process_holding_a_key_is_not_dumpable() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let nobody_dir = base.join("nobody");
    mkdir(&nobody_dir);
    lchown(&nobody_dir, 65534, 65534);
    let seen = nobody_dir.join("owner");
    let env = |cmd: &str| -> Vec<std::ffi::OsString> {
        vec![
            "env".into(),
            format!("SNAPFS_CACHE_DIR={}", nobody_dir.join("cache").display()).into(),
            "SNAPFS_TEST_KDF_MEMORY_KIB=8192".into(),
            format!("SNAPFS_PASSWORD_COMMAND={cmd}").into(),
        ]
    };
    let probe = format!(
        "stat -c %u /proc/$PPID/status > {}; echo pw",
        seen.display()
    );
    let control: Vec<std::ffi::OsString> = vec![
        "sh".into(),
        "-c".into(),
        format!("sh -c '{}'", probe.replace("; echo pw", "")).into(),
    ];
    let out = as_nobody(&control.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", describe("control", &out));
    assert_eq!(
        fs::read_to_string(&seen).expect("control owner").trim(),
        "65534",
        "an ordinary process of nobody does not show as nobody's: the check proves nothing"
    );
    fs::remove_file(&seen).expect("remove");
    let mut args = env(&probe);
    args.extend([
        snapfs_bin().into(),
        "--repo".into(),
        nobody_dir.join("repo").into(),
        "init".into(),
    ]);
    let out = as_nobody(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", describe("init as nobody", &out));
    assert_eq!(
        fs::read_to_string(&seen).expect("owner seen").trim(),
        "0",
        "snapfs reading a passphrase is still dumpable"
    );
}

/// The `id = ` line of the repository's config.
fn config_id(repo: &Path) -> String {
    fs::read_to_string(repo.join("config"))
        .expect("config")
        .lines()
        .find_map(|l| l.strip_prefix("id = "))
        .expect("an id")
        .to_string()
}

/// A repository's id is in the clear in its config, so a repository that
/// someone else made (a copy source handed over with its passphrase, a
/// disk) can carry the id of one's own. Its catalog cache was then the
/// same directory: opening the stranger listed one's own snapshots and
/// file names as its own, and what was done in it went into one's own
/// catalog, which then named packs one's repository does not have.
#[test]
fn repository_with_a_copied_id_does_not_share_the_catalog_cache() {
    let (work, a, a_snap, reference) = marked_encrypted();
    let cache = a.secret.clone().expect("encrypted").cache_dir;
    let b = Repo::encrypted_at(&work.scratch.join("b"), &cache, "the stranger's passphrase");
    run_ok(b.cmd().arg("init"));
    // Its maker gives it A's id: the key from its paper copy, wrapped in
    // a slot bound to that id.
    let paper = work.scratch.join("b-paper");
    run_ok(b.cmd().args(["key", "export", "--output"]).arg(&paper));
    let (a_id, b_id) = (config_id(&a.path), config_id(&b.path));
    let master =
        snapfs::crypto::paper::import(&fs::read_to_string(&paper).expect("paper"), &unhex(&b_id))
            .expect("b's paper");
    let config = fs::read_to_string(b.path.join("config")).expect("config");
    fs::write(b.path.join("config"), config.replace(&b_id, &a_id)).expect("relabel");
    fs::remove_dir_all(b.path.join("keys")).expect("remove keys/");
    snapfs::crypto::create_slot(
        &b.path,
        &unhex(&a_id),
        &master,
        "the stranger's passphrase",
        snapfs::crypto::KdfParams::new(64 << 10, 1, 1).expect("params"),
    )
    .expect("slot for a's id");

    let out = run_ok(b.cmd().args(["snapshots", "--json"]));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&a_snap),
        "the stranger shows a's snapshot: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(b.snapshots().is_empty(), "{:?}", b.snapshots());
    let other = work.scratch.join("other");
    mkdir(&other);
    write_file(&other.join("f"), b"the stranger's file\n");
    b.ingest(&[], &[&other]);
    assert_eq!(b.snapshots().len(), 1);

    // A's catalog is A's alone.
    assert_eq!(a.snapshots().len(), 1, "{:?}", a.snapshots());
    work.assert_restores(&a, &a_snap, &reference);
    assert_verify_read_data_ok(&a, "after the stranger was used");
}

/// A cache directory another user owns or can write (a shared
/// SNAPFS_CACHE_DIR such as /tmp/snapfs made by someone else, a link to
/// theirs, or one under a directory of theirs) took the repository's own
/// directory and then its catalog, which names every file: its owner can
/// rename the repository's directory away and put one of theirs in its
/// place between the check and the write (a rebuild gives all the time
/// needed). Refused, naming the directory, before anything is written.
#[test]
fn catalog_cache_base_another_user_controls_is_refused() {
    let (work, repo, _id, _reference) = marked_encrypted();
    let theirs = work.scratch.join("theirs");
    mkdir(&theirs);
    lchown(&theirs, 65534, 65534);
    let open = work.scratch.join("open");
    mkdir(&open);
    chmod(&open, 0o777);
    let link = work.scratch.join("link");
    std::os::unix::fs::symlink(&theirs, &link).expect("symlink");
    for (base, named) in [
        (theirs.clone(), theirs.clone()),
        (theirs.join("sub"), theirs.clone()),
        (link.clone(), theirs.clone()),
        (open.join("cache"), open.clone()),
    ] {
        let out = output_of(repo.cmd().env("SNAPFS_CACHE_DIR", &base).arg("snapshots"));
        let what = format!("snapshots with the cache in {}", base.display());
        assert_eq!(out.status.code(), Some(1), "{}", describe(&what, &out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&named.display().to_string()) && err.contains("other users"),
            "{}",
            describe(&what, &out)
        );
        assert_eq!(err.lines().count(), 1, "{}", describe(&what, &out));
    }
    for d in [&theirs, &open] {
        assert!(
            walk(d).into_iter().all(|p| p == *d),
            "something was written into {}",
            d.display()
        );
    }
}

/// `key import` proved the paper key against whichever pack was listed
/// first: one damaged pack, or a file planted in `packs/` by whoever can
/// write the storage, made the right key "not this repository's key" and
/// left every passphrase lost for good. A key is the repository's once any
/// pack's sealed table opens with it; one that opens none is refused.
#[test]
fn key_import_is_not_stopped_by_a_damaged_or_planted_pack() {
    let (work, repo, id, reference) = marked_encrypted();
    let paper = work.scratch.join("paper.txt");
    run_ok(repo.cmd().args(["key", "export", "--output"]).arg(&paper));
    fs::remove_dir_all(repo.path.join("keys")).expect("remove keys/");
    // Enough of them that one is listed first, whatever the order.
    for i in 0..300u32 {
        plant_pack(&repo.path, format!("not a pack {i}").as_bytes());
    }
    let new_pass = work.scratch.join("new-pass");
    write_file(&new_pass, b"typed back from paper\n");
    let import = |paper: &Path| {
        output_of(
            repo.cmd()
                .args(["key", "import", "--input"])
                .arg(paper)
                .arg("--new-password-file")
                .arg(&new_pass),
        )
    };
    let out = import(&paper);
    assert_eq!(out.status.code(), Some(0), "{}", describe("import", &out));
    let reopened = Repo::encrypted_at(
        &repo.path,
        &repo.secret.clone().expect("encrypted").cache_dir,
        "typed back from paper",
    );
    work.assert_restores(&reopened, &id, &reference);

    // A key that opens no pack is still refused: the right paper for this
    // id, but the packs are another key's.
    let other = Repo::new_encrypted();
    other.ingest(&[], &[&work.src]);
    fs::remove_dir_all(repo.path.join("packs")).expect("remove packs");
    run_ok(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(other.path.join("packs"))
            .arg(&repo.path),
    );
    fs::remove_dir_all(repo.path.join("keys")).expect("remove keys/");
    let out = import(&paper);
    assert_eq!(out.status.code(), Some(1), "{}", describe("import", &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not this repository's key"),
        "{}",
        describe("import against another key's packs", &out)
    );
    let keys = repo.path.join("keys");
    assert!(
        !keys.exists() || fs::read_dir(&keys).expect("keys/").next().is_none(),
        "a refused import wrote a slot"
    );
}

/// A failing SNAPFS_TO_PASSWORD_COMMAND was reported as a failure of
/// SNAPFS_PASSWORD_COMMAND, the source's, which may not even be set: the
/// error must name the variable whose command failed.
#[test]
fn failing_destination_password_command_is_named_as_such() {
    let (work, repo, _id, _reference) = marked_encrypted();
    let to = work.scratch.join("to");
    let out = output_of(
        repo.cmd()
            .env("SNAPFS_TO_PASSWORD_COMMAND", "exit 3")
            .arg("copy")
            .arg("--to")
            .arg(&to),
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe("copy", &out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SNAPFS_TO_PASSWORD_COMMAND failed")
            && !err.contains("SNAPFS_PASSWORD_COMMAND"),
        "{}",
        describe("copy", &out)
    );
    assert!(!to.exists(), "the destination was made");
}

/// A copy of an encrypted repository made with `cp -a` (same id, same
/// key) keeps a cache catalog of its own: before, both copies shared one,
/// so a backup into the copy deduplicated against packs only the original
/// had, and the copy's snapshot lost that data.
#[test]
fn copied_encrypted_repository_keeps_a_catalog_of_its_own() {
    let work = Work::new();
    write_random_file(&work.src.join("first"), 11, 256 << 10);
    let repo = Repo::new_encrypted();
    repo.ingest(&["--name", "one"], &[&work.src]);
    let twin_path = repo.path.with_file_name("twin");
    let out = tool(
        "cp",
        &["-a".as_ref(), repo.path.as_os_str(), twin_path.as_os_str()],
    );
    assert!(out.status.success(), "{}", describe("cp -a", &out));
    let twin = repo.copy_at(&twin_path);
    write_random_file(&work.src.join("second"), 12, 512 << 10);
    repo.ingest(&["--name", "two"], &[&work.src]);
    assert_eq!(
        twin.snapshots().len(),
        1,
        "the copy shows the original's snapshot"
    );
    let stored = twin.ingest(&["--name", "two"], &[&work.src]);
    let added = stored.json["added_bytes"].as_u64().expect("added_bytes");
    assert!(
        added >= 512 << 10,
        "the copy stored only {added} bytes of a new 512 KiB file"
    );
    let reference = work.freeze("two");
    work.assert_restores(&twin, "two", &reference);
    assert_verify_read_data_ok(&twin, "the copy");
    assert_verify_read_data_ok(&repo, "the original");
}
