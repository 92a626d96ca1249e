//! Repository maintenance end to end: `forget`, `gc`, `verify` and
//! `rebuild-catalog` on real repositories, driven through the binary, with
//! real kills, a real FUSE mount and a real full disk.
//!
//! Every snapshot is compared with a frozen copy of its source (`cp -a`
//! right after the ingest), so a test can keep changing its source tree in
//! place (one forget group) and still check every older snapshot later.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

// ---------------------------------------------------------------- helpers

/// Replaces `share_percent` of the files under `root` (every file of the
/// tree, in a seeded random choice) with new random data of similar size.
fn replace_share(root: &Path, seed: u64, share_percent: u64) -> usize {
    let files: Vec<PathBuf> = walk(root).into_iter().filter(|p| p.is_file()).collect();
    let mut rng = Rng::new(seed);
    let mut replaced = 0;
    for f in &files {
        if rng.below(100) < share_percent {
            let len = fs::metadata(f).expect("stat").len();
            let len = len * 3 / 4 + rng.below(len / 2 + 1);
            write_random_file(f, rng.next_u64(), len);
            replaced += 1;
        }
    }
    replaced
}

/// A command left running in the background, with its output collected.
fn spawn_collecting(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

// ---------------------------------------------------------------- forget policies

/// Ingests the current source as one snapshot; returns its id and name.
fn snap(repo: &Repo, src: &Path, extra: &[&str]) -> (String, String) {
    let s = repo.ingest(extra, &[src]);
    (s.id, s.name)
}

fn decisions(json: &Value) -> BTreeMap<String, (bool, Vec<String>)> {
    json["snapshots"]
        .as_array()
        .unwrap_or_else(|| panic!("forget --json has no \"snapshots\" list: {json}"))
        .iter()
        .map(|d| {
            let keep = d["keep"]
                .as_bool()
                .unwrap_or_else(|| panic!("decision without \"keep\": {d}"));
            let reasons = json_str_list(d, "reasons");
            (json_str(d, "name").to_string(), (keep, reasons))
        })
        .collect()
}

/// Two groups: `a` (four snapshots, one tagged) and `b` (two, older).
fn two_groups(work: &Work) -> (Repo, PathBuf, PathBuf) {
    let repo = Repo::new();
    let a = work.base.join("group-a");
    let b = work.base.join("group-b");
    mkdir(&a);
    mkdir(&b);
    write_file(&b.join("f"), b"b one\n");
    snap(&repo, &b, &["--name", "b1"]);
    write_file(&b.join("f"), b"b two\n");
    snap(&repo, &b, &["--name", "b2"]);
    for i in 1..=4 {
        write_file(&a.join("f"), format!("a {i}\n").as_bytes());
        let mut extra = vec!["--name".to_string(), format!("a{i}")];
        if i == 2 {
            extra.extend(["--tag".to_string(), "precious".to_string()]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        snap(&repo, &a, &extra);
    }
    (repo, a, b)
}

#[test]
fn forget_dry_run_lists_every_decision_and_removes_nothing() {
    let work = Work::new();
    let (repo, _, _) = two_groups(&work);
    let before = repo.name_set();
    let packs_before = repo.pack_files();
    let json = forget(
        &repo,
        &["--keep-last", "1", "--keep-tag", "precious", "--dry-run"],
    );
    assert_eq!(json["dry_run"], Value::Bool(true), "{json}");
    let d = decisions(&json);
    let expect: BTreeMap<&str, bool> = [
        ("a4", true),
        ("a3", false),
        ("a2", true),
        ("a1", false),
        ("b2", true),
        ("b1", false),
    ]
    .into_iter()
    .collect();
    for (name, keep) in &expect {
        let (k, reasons) = d
            .get(*name)
            .unwrap_or_else(|| panic!("dry run does not list {name}: {json}"));
        assert_eq!(k, keep, "dry run decision for {name}: {json}");
        assert_eq!(
            reasons.is_empty(),
            !keep,
            "{name}: a kept snapshot names its rules, a removed one none: {json}"
        );
    }
    assert_eq!(
        d.len(),
        expect.len(),
        "dry run lists extra snapshots: {json}"
    );
    assert!(d["a2"].1.iter().any(|r| r.contains("tag")), "{json}");
    assert!(d["a4"].1.iter().any(|r| r.contains("last")), "{json}");
    assert_eq!(repo.name_set(), before, "a dry run removed snapshots");
    assert_eq!(repo.pack_files(), packs_before, "a dry run changed packs");

    // The plain-text dry run says the same without changing anything.
    let out = run_ok(repo.cmd().args(["forget", "--keep-last", "1", "--dry-run"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("a3") && text.contains("remove"),
        "plain dry run output:\n{text}"
    );
    assert_eq!(repo.name_set(), before, "a dry run removed snapshots");
}

/// Today every `--stdin` snapshot recorded no sources, so all streams fell
/// into one group: keeping the last one of db2 removed db1's only snapshot.
#[test]
fn stdin_streams_keep_their_own_newest_snapshot() {
    let repo = Repo::new();
    for (name, stream, body) in [
        ("db1-a", "db1.sql", "first db1\n"),
        ("db2-a", "db2.sql", "first db2\n"),
        ("db2-b", "db2.sql", "second db2\n"),
    ] {
        let mut child = repo
            .cmd()
            .args([
                "ingest",
                "--json",
                "--stdin",
                "--stdin-name",
                stream,
                "--name",
                name,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ingest --stdin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(body.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("wait ingest");
        assert!(out.status.success(), "{}", describe("ingest --stdin", &out));
    }
    let json = forget(&repo, &["--keep-last", "1"]);
    let expect = string_set(&["db1-a", "db2-b"]);
    assert_eq!(
        repo.name_set(),
        expect,
        "after forget --keep-last 1: {json}"
    );
    let target = tempdir();
    let out = repo.restore("db1-a", &target.path().join("r"));
    assert!(out.status.success(), "{}", describe("restore", &out));
    assert_eq!(
        fs::read(target.path().join("r/db1.sql")).expect("read restored stream"),
        b"first db1\n"
    );
}

#[test]
fn forget_keep_last_and_keep_tag_apply_to_each_group_on_its_own() {
    let work = Work::new();
    let (repo, a, _b) = two_groups(&work);
    let json = forget(&repo, &["--keep-last", "1", "--keep-tag", "precious"]);
    assert_eq!(json["dry_run"], Value::Bool(false), "{json}");
    let expect = string_set(&["a4", "a2", "b2"]);
    assert_eq!(repo.name_set(), expect, "after forget: {json}");

    // Group b's last snapshot is older than everything in group a: a policy
    // applied to the whole repository would have removed it.
    let json = forget(&repo, &["--keep-last", "1"]);
    let expect = string_set(&["a4", "b2"]);
    assert_eq!(
        repo.name_set(),
        expect,
        "after forget --keep-last 1: {json}"
    );

    // What is kept still restores (group a's source is its current state).
    let reference = work.freeze_of(&a, "a4");
    work.assert_restores_of(&repo, "a4", &a, &reference);
    let out = output_of(&mut repo.restore_cmd("a1", &work.scratch.join("x")));
    assert_eq!(
        out.status.code(),
        Some(1),
        "restoring a forgotten snapshot should fail\n{}",
        describe("restore a1", &out)
    );
    assert_verify_read_data_ok(&repo, "after forget");
}

#[test]
fn forget_named_snapshots_removes_exactly_those() {
    let work = Work::new();
    let (repo, _, _) = two_groups(&work);
    let by_name: BTreeMap<String, String> = repo
        .snapshots()
        .iter()
        .map(|s| {
            (
                json_str(s, "name").to_string(),
                json_str(s, "id").to_string(),
            )
        })
        .collect();
    // One by name, one by a unique id prefix.
    let prefix = &by_name["b1"][..12];
    let json = forget(&repo, &["a3", prefix]);
    let removed: BTreeSet<String> = decisions(&json)
        .into_iter()
        .filter(|(_, (keep, _))| !keep)
        .map(|(n, _)| n)
        .collect();
    let expect = string_set(&["a3", "b1"]);
    assert_eq!(removed, expect, "forget a3 {prefix}: {json}");
    let left = string_set(&["a1", "a2", "a4", "b2"]);
    assert_eq!(repo.name_set(), left);

    // An unknown name fails and removes nothing.
    let out = output_of(repo.cmd().args(["forget", "no-such-snapshot"]));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("forget no-such-snapshot", &out)
    );
    assert!(
        stderr_of(&out).contains("no-such-snapshot"),
        "the error should name the snapshot: {}",
        stderr_of(&out)
    );
    assert_eq!(repo.name_set(), left);
}

#[test]
fn forget_keep_within_a_long_duration_keeps_everything() {
    let work = Work::new();
    let (repo, _, _) = two_groups(&work);
    let before = repo.name_set();
    let json = forget(&repo, &["--keep-within", "10y"]);
    assert!(
        decisions(&json).values().all(|(keep, _)| *keep),
        "--keep-within 10y should keep every snapshot: {json}"
    );
    assert_eq!(repo.name_set(), before);
    // A within rule combined with --gc removes nothing either.
    let json = forget(&repo, &["--keep-within", "36h", "--gc"]);
    assert_eq!(repo.name_set(), before, "{json}");
    assert_eq!(json["gc"]["packs_removed"], 0, "{json}");
}

// ---------------------------------------------------------------- gc frees space

#[test]
fn gc_after_forgetting_all_but_the_last_frees_the_space_of_the_rest() {
    let work = Work::new();
    build_plain_tree(&work.src, 31, 4, 40, MIB); // ~40 MiB
    let repo = Repo::new();
    let mut last = String::new();
    for round in 0..5u64 {
        if round > 0 {
            let n = replace_share(&work.src, 500 + round, 30);
            assert!(n >= 6, "round {round}: only {n} files replaced");
        }
        last = repo
            .ingest(&["--name", &format!("gen-{round}")], &[&work.src])
            .id;
    }
    let full = repo.packs_bytes();
    let json = forget(&repo, &["--keep-last", "1", "--gc"]);
    assert_eq!(
        repo.id_set(),
        [last.clone()].into_iter().collect(),
        "forget --keep-last 1: {json}"
    );
    let g = &json["gc"];
    assert!(g.is_object(), "forget --gc --json has no gc report: {json}");
    assert!(json_u64(g, "bytes_freed") > 0, "{json}");
    assert_eq!(
        json_u64(g, "packs_waiting"),
        0,
        "no mount is running: {json}"
    );

    let fresh = Repo::new();
    fresh.ingest(&["--name", "fresh"], &[&work.src]);
    let fresh_bytes = fresh.packs_bytes();
    let after = repo.packs_bytes();
    eprintln!("packs: {full} before gc, {after} after, a fresh repository {fresh_bytes}");
    assert!(
        after * 10 <= fresh_bytes * 11,
        "after forget --keep-last 1 --gc the packs hold {after} bytes, more than 110% of \
         the {fresh_bytes} bytes of a fresh repository holding the same tree (before gc: {full})"
    );

    let reference = work.freeze("last");
    work.assert_restores(&repo, &last, &reference);
    assert_verify_read_data_ok(&repo, "after gc");
    // A second gc finds nothing more to do.
    let again = gc(&repo, &[]);
    assert_eq!(json_u64(&again, "packs_removed"), 0, "{again}");
    assert_eq!(json_u64(&again, "packs_rewritten"), 0, "{again}");
}

/// In an encrypted repository a small pack gc just wrote (its table sealed,
/// 40 bytes more) must not look wasteful to the next gc: every gc wrote it
/// again before.
#[test]
fn gc_of_an_encrypted_repository_does_not_rewrite_its_own_small_packs_again() {
    let work = Work::new();
    write_random_file(&work.src.join("a"), 3, 300 << 10);
    write_file(&work.src.join("b"), b"hi");
    let repo = Repo::new_encrypted();
    repo.ingest(&["--name", "one"], &[&work.src]);
    write_random_file(&work.src.join("c"), 4, 100 << 10);
    repo.ingest(&["--name", "two"], &[&work.src]);
    fs::remove_file(work.src.join("c")).expect("rm c");
    repo.ingest(&["--name", "three"], &[&work.src]);
    forget(&repo, &["--keep-last", "1"]);
    let first = gc(&repo, &[]);
    assert!(json_u64(&first, "bytes_freed") > 0, "{first}");
    for round in 0..2 {
        let again = gc(&repo, &[]);
        assert_eq!(
            json_u64(&again, "packs_rewritten"),
            0,
            "round {round}: {again}"
        );
        assert_eq!(
            json_u64(&again, "bytes_written"),
            0,
            "round {round}: {again}"
        );
    }
    let reference = work.freeze("three");
    work.assert_restores(&repo, "three", &reference);
}

/// The compression level byte of each pack's header.
fn pack_levels(repo: &Repo) -> Vec<u8> {
    repo.pack_files()
        .iter()
        .map(|p| fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))[9])
        .collect()
}

#[test]
fn gc_recompress_compresses_packs_again_at_a_higher_level_once() {
    let work = Work::new();
    for i in 0..6 {
        write_mixed_file(&work.src.join(format!("f{i}")), 70 + i, 3 * MIB);
    }
    let repo = Repo::new();
    let id = repo.ingest(&["--compression", "1"], &[&work.src]).id;
    let reference = work.freeze("first");
    assert!(
        pack_levels(&repo).iter().all(|l| *l == 1),
        "{:?}",
        pack_levels(&repo)
    );
    let before = repo.packs_bytes();

    let g = gc(&repo, &["--recompress", "12"]);
    let after = repo.packs_bytes();
    eprintln!("packs: {before} bytes at level 1, {after} at level 12: {g}");
    assert!(json_u64(&g, "packs_recompressed") >= 1, "{g}");
    assert_eq!(json_u64(&g, "packs_waiting"), 0, "{g}");
    assert!(
        after < before,
        "recompressed packs hold {after} bytes, level 1 held {before}"
    );
    assert!(
        pack_levels(&repo).iter().all(|l| *l == 12),
        "{:?}",
        pack_levels(&repo)
    );
    work.assert_restores(&repo, &id, &reference);
    assert_verify_read_data_ok(&repo, "after gc --recompress");

    // Done once: neither the same level nor a lower one rewrites anything.
    for level in ["12", "3"] {
        let again = gc(&repo, &["--recompress", level]);
        assert_eq!(
            json_u64(&again, "packs_rewritten"),
            0,
            "--recompress {level}: {again}"
        );
    }
    for level in ["0", "23"] {
        let out = output_of(repo.cmd().args(["gc", "--recompress", level]));
        assert_eq!(out.status.code(), Some(1), "{}", describe("gc", &out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("between 1 and 22"),
            "{}",
            describe("gc", &out)
        );
    }
}

#[test]
fn gc_keeps_the_recorded_level_of_the_packs_it_rewrites() {
    let work = Work::new();
    write_mixed_file(&work.src.join("kept"), 930, 3 * MIB);
    write_mixed_file(&work.src.join("dropped"), 931, 3 * MIB);
    let repo = Repo::new();
    repo.ingest(&["--compression", "1", "--name", "first"], &[&work.src]);
    gc(&repo, &["--recompress", "12"]);
    fs::remove_file(work.src.join("dropped")).expect("rm");
    let id = repo
        .ingest(&["--compression", "1", "--name", "second"], &[&work.src])
        .id;
    let reference = work.freeze("second");
    forget(&repo, &["first"]);
    let g = gc(&repo, &[]);
    assert!(json_u64(&g, "packs_rewritten") >= 1, "{g}");
    // The rewrite (the largest pack: kept's data) holds blobs compressed at
    // 12 and says so: --recompress 12 has nothing left to do there.
    let largest = repo
        .pack_files()
        .into_iter()
        .max_by_key(|p| fs::metadata(p).expect("stat").len())
        .expect("a pack");
    assert_eq!(fs::read(&largest).expect("read pack")[9], 12, "{g}");
    let before = repo.packs_bytes();
    gc(&repo, &["--recompress", "12"]);
    assert!(largest.exists(), "the rewrite was compressed again");
    assert!(repo.packs_bytes() <= before);
    work.assert_restores(&repo, &id, &reference);
    assert_verify_read_data_ok(&repo, "after gc");
}

// ---------------------------------------------------------------- verify

#[test]
fn verify_read_data_names_the_files_and_snapshots_of_a_flipped_byte() {
    let work = Work::new();
    let len = 4 * MIB;
    write_random_file(&work.src.join("a.bin"), 801, len);
    write_random_file(&work.src.join("b.bin"), 802, len);
    let repo = Repo::new();
    repo.ingest(&["--name", "first"], &[&work.src]);
    write_file(&work.src.join("note"), b"second snapshot\n");
    repo.ingest(&["--name", "second"], &[&work.src]);
    let other = work.base.join("other");
    mkdir(&other);
    write_random_file(&other.join("c.bin"), 803, len);
    repo.ingest(&["--name", "unrelated"], &[&other]);
    assert_verify_read_data_ok(&repo, "before the damage");

    // The first ingest's pack is the only one holding a.bin and b.bin, and
    // both files fill nearly all of it: its middle lies inside one of them.
    let first_pack = repo
        .pack_files()
        .into_iter()
        .filter(|p| fs::metadata(p).expect("stat").len() > 2 * len)
        .min_by_key(|p| fs::metadata(p).expect("stat").modified().expect("mtime"))
        .expect("a pack holding the first snapshot's data");
    let mode = mode_of(&first_pack);
    assert_eq!(
        mode, 0o400,
        "pack files should be read-only and private (mode 0400)"
    );
    let size = fs::metadata(&first_pack).expect("stat").len();
    flip_byte(&first_pack, size / 2);

    let (out, json) = verify(&repo, &["--read-data"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify --read-data should fail on a flipped byte\n{}",
        describe("verify --read-data --json", &out)
    );
    assert_eq!(json["ok"], Value::Bool(false), "{json}");
    assert!(
        !json["problems"].as_array().expect("problems").is_empty(),
        "{json}"
    );
    let damaged: BTreeSet<(String, PathBuf)> = json["damaged_files"]
        .as_array()
        .expect("damaged_files")
        .iter()
        .map(|d| {
            (
                json_str(d, "snapshot").to_string(),
                PathBuf::from(json_str(d, "path")),
            )
        })
        .collect();
    let a = work.src.join("a.bin");
    let b = work.src.join("b.bin");
    let hit = if damaged.iter().any(|(_, p)| *p == a) {
        a
    } else {
        b
    };
    let expect: BTreeSet<(String, PathBuf)> = ["first", "second"]
        .into_iter()
        .map(|s| (s.to_string(), hit.clone()))
        .collect();
    assert_eq!(
        damaged, expect,
        "verify should name exactly the damaged file in both snapshots that hold it: {json}"
    );
    let snaps: BTreeSet<&str> = json["damaged_snapshots"]
        .as_array()
        .expect("damaged_snapshots")
        .iter()
        .map(|v| v.as_str().expect("snapshot name"))
        .collect();
    assert_eq!(
        snaps,
        ["first", "second"].into_iter().collect(),
        "damaged_snapshots: {json}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(hit.to_str().expect("utf-8 path")), "{text}");

    // The human-readable report names the file too.
    let out = output_of(repo.cmd().args(["verify", "--read-data"]));
    assert_eq!(out.status.code(), Some(1), "{}", describe("verify", &out));
    let all = all_output(&out);
    assert!(
        all.contains(hit.to_str().expect("utf-8 path")),
        "plain verify --read-data should name {}:\n{all}",
        hit.display()
    );

    // Without reading data the structure is intact: verify passes.
    let (out, json) = verify(&repo, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify without --read-data sees no structural damage\n{}",
        describe("verify --json", &out)
    );
    assert_eq!(json["ok"], Value::Bool(true), "{json}");
}

// ---------------------------------------------------------------- rebuild-catalog

/// A small tree with hard links, symlinks, xattrs, odd names and modes.
fn build_varied_tree(root: &Path, seed: u64) {
    build_plain_tree(root, seed, 3, 12, 200 * KIB);
    let links = root.join("links");
    mkdir(&links.join("deeper"));
    write_file(&links.join("h1"), &random_bytes(seed + 1, 70_000));
    fs::hard_link(links.join("h1"), links.join("h2")).expect("link");
    fs::hard_link(links.join("h1"), links.join("deeper/h3")).expect("link");
    std::os::unix::fs::symlink("h1", links.join("sym")).expect("symlink");
    std::os::unix::fs::symlink("/no/such/target", links.join("dangling")).expect("symlink");
    let odd = root.join(OsStr::from_bytes(b"odd-\xff\nname"));
    write_file(&odd, b"non-UTF-8 name\n");
    xattr::set(&odd, "user.note", b"kept").expect("setxattr");
    mkdir(&root.join("empty-dir"));
    write_file(&root.join("private"), b"secret\n");
    chmod(&root.join("private"), 0o600);
    lchown(&root.join("private"), 4321, 8765);
    mkfifo(&root.join("fifo"), 0o640);
    set_mtime(&root.join("private"), 1_600_000_000, 123_456_789);
}

#[test]
fn rebuilt_catalog_restores_every_snapshot_identically() {
    let work = Work::new();
    build_varied_tree(&work.src, 61);
    let repo = Repo::new();
    let mut refs: BTreeMap<String, PathBuf> = BTreeMap::new();
    for round in 0..3u64 {
        if round > 0 {
            replace_share(&work.src.join("d00"), 70 + round, 50);
            write_file(
                &work.src.join(format!("added-{round}")),
                &random_bytes(round, 50_000),
            );
            fs::hard_link(
                work.src.join(format!("added-{round}")),
                work.src.join(format!("added-{round}-link")),
            )
            .expect("link");
        }
        let name = format!("snap-{round}");
        let extra = if round == 1 {
            vec!["--name", &name, "--tag", "weekly"]
        } else {
            vec!["--name", &name]
        };
        repo.ingest(&extra, &[&work.src]);
        refs.insert(name.clone(), work.freeze(&name));
    }
    let before = repo.snapshots();
    let key = |list: &[Value]| -> BTreeSet<(String, String, String)> {
        list.iter()
            .map(|s| {
                (
                    json_str(s, "id").to_string(),
                    json_str(s, "name").to_string(),
                    s["tags"].to_string(),
                )
            })
            .collect()
    };

    delete_catalog(&repo);
    let json = rebuild_catalog_ok(&repo);
    assert_eq!(json["snapshots"], 3, "{json}");
    let after = repo.snapshots();
    assert_eq!(after.len(), before.len(), "snapshot count after rebuild");
    assert_eq!(
        key(&after),
        key(&before),
        "ids, names and tags after rebuild"
    );
    for (name, reference) in &refs {
        work.assert_restores(&repo, name, reference);
    }
    // Hard links come back as hard links.
    let target = work.scratch.join("links-check");
    repo.restore("snap-2", &target);
    let links = restored_path(&target, &work.src).join("links");
    let ino = |p: &Path| fs::symlink_metadata(p).expect("lstat").ino();
    assert_eq!(ino(&links.join("h1")), ino(&links.join("h2")));
    assert_eq!(ino(&links.join("h1")), ino(&links.join("deeper/h3")));
    assert_eq!(
        fs::symlink_metadata(links.join("h1"))
            .expect("lstat")
            .nlink(),
        3
    );
    assert_verify_read_data_ok(&repo, "after rebuild-catalog");

    // The new catalog keeps working: one more snapshot on top of it.
    write_file(&work.src.join("after-rebuild"), b"new\n");
    repo.ingest(&["--name", "snap-3"], &[&work.src]);
    let reference = work.freeze("snap-3");
    work.assert_restores(&repo, "snap-3", &reference);
}

#[test]
fn forgotten_snapshots_stay_forgotten_after_a_rebuild() {
    let work = Work::new();
    build_varied_tree(&work.src, 62);
    let repo = Repo::new();
    let mut refs: BTreeMap<String, PathBuf> = BTreeMap::new();
    for round in 0..4u64 {
        if round > 0 {
            replace_share(&work.src, 90 + round, 30);
        }
        let name = format!("s{round}");
        repo.ingest(&["--name", &name], &[&work.src]);
        refs.insert(name.clone(), work.freeze(&name));
    }
    // s0 forgotten and collected; s2 only forgotten.
    forget(&repo, &["s0", "--gc"]);
    forget(&repo, &["s2"]);
    let expect = string_set(&["s1", "s3"]);
    assert_eq!(repo.name_set(), expect);

    delete_catalog(&repo);
    let json = rebuild_catalog_ok(&repo);
    assert_eq!(
        repo.name_set(),
        expect,
        "after rebuild-catalog the forgotten snapshots came back: {json}"
    );
    for name in &expect {
        work.assert_restores(&repo, name, &refs[name]);
    }
    assert_verify_read_data_ok(&repo, "after rebuild");
    // A second rebuild, with the old catalog moved aside, agrees.
    let json = rebuild_catalog_ok(&repo);
    let aside = json["old_catalog"].as_str().unwrap_or_default();
    assert!(
        !aside.is_empty() && Path::new(aside).exists(),
        "the previous catalog should be kept aside: {json}"
    );
    assert_eq!(repo.name_set(), expect);
    // And gc after the rebuild frees what s2 held, without touching s1/s3.
    gc(&repo, &[]);
    for name in &expect {
        work.assert_restores(&repo, name, &refs[name]);
    }
    assert_verify_read_data_ok(&repo, "after rebuild and gc");
}

// ---------------------------------------------------------------- append-only

#[test]
fn append_only_repository_refuses_forget_and_gc_without_allow_delete() {
    let work = Work::new();
    let dir = tempdir();
    let repo = Repo::at(&canonical(dir.path()).join("repo"));
    run_ok(
        repo.cmd()
            .args(["init", "--append-only", "--encryption", "none"]),
    );
    build_plain_tree(&work.src, 71, 2, 6, 300 * KIB);
    repo.ingest(&["--name", "one"], &[&work.src]);
    replace_share(&work.src, 72, 50);
    repo.ingest(&["--name", "two"], &[&work.src]);
    let two = work.freeze("two");
    for p in repo.pack_files() {
        let mode = mode_of(&p);
        assert_eq!(mode, 0o400, "pack {} has mode {mode:o}", p.display());
    }
    let before = repo.name_set();
    let packs = repo.pack_files();

    let refused: [&[&str]; 4] = [
        &["forget", "--keep-last", "1"],
        &["forget", "one"],
        &["forget", "--keep-last", "1", "--gc"],
        &["gc"],
    ];
    for args in refused {
        let out = output_of(repo.cmd().args(args));
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?} on an append-only repository should exit 1\n{}",
            describe(&format!("{args:?}"), &out)
        );
        let err = stderr_of(&out);
        assert!(
            err.contains("append-only") && err.contains("--allow-delete"),
            "{args:?}: the refusal should say why and how to override:\n{err}"
        );
        assert_eq!(repo.name_set(), before, "{args:?} removed snapshots");
        assert_eq!(repo.pack_files(), packs, "{args:?} changed packs");
    }
    // A dry run changes nothing either way; it need not be refused.

    let json = forget(&repo, &["--keep-last", "1", "--allow-delete"]);
    assert_eq!(
        repo.name_set(),
        ["two".to_string()].into_iter().collect(),
        "{json}"
    );
    let g = gc(&repo, &["--allow-delete"]);
    assert!(json_u64(&g, "bytes_freed") > 0, "{g}");
    work.assert_restores(&repo, "two", &two);
    assert_verify_read_data_ok(&repo, "after forget and gc with --allow-delete");
    // Still append-only afterwards.
    let out = output_of(repo.cmd().args(["gc"]));
    assert_eq!(out.status.code(), Some(1), "{}", describe("gc", &out));
}

// ---------------------------------------------------------------- mount and gc

#[test]
fn gc_while_a_mount_reads_a_forgotten_snapshot_keeps_its_packs_until_unmount() {
    let work = Work::new();
    let big = work.src.join("big.bin");
    let len = 200 * MIB;
    write_random_file(&big, 901, len);
    let repo = Repo::new();
    repo.ingest(&["--name", "big"], &[&work.src]);
    let other = work.base.join("other");
    mkdir(&other);
    write_random_file(&other.join("small.bin"), 902, MIB);
    repo.ingest(&["--name", "small"], &[&other]);

    let mount = Mount::new(&repo, &[]);
    let in_mount = restored_path(&mount.path.join("big"), &big);

    // The reader copies the file in 1 MiB pieces; it pauses after a part
    // until the forget and gc have run, then copies the rest.
    let copy = work.base.join("copy.bin");
    let reader = PausedReader::start(&in_mount, &copy);
    let json = forget(&repo, &["big", "--gc"]);
    let g = &json["gc"];
    eprintln!("forget big --gc while mounted: {g}");
    let waiting = json_u64(g, "packs_waiting");
    // While the file is still open, another gc may not delete them either.
    let again = gc(&repo, &[]);
    let copied = reader.finish();
    assert!(
        waiting > 0,
        "gc during a mount should leave the packs of the forgotten snapshot waiting: {json}"
    );
    let copied = copied.unwrap_or_else(|e| {
        panic!(
            "copying the file through the mount failed after the concurrent forget+gc: {e}\n\
             --- mount stderr ---\n{}",
            mount.stderr_text()
        )
    });
    assert!(
        json_u64(&again, "packs_waiting") > 0,
        "a second gc while the file is still open should leave the packs waiting: {again}"
    );
    assert_eq!(copied, len, "bytes copied through the mount");
    let same = tool("cmp", &[big.as_os_str(), copy.as_os_str()]);
    assert!(same.status.success());
    fs::remove_file(&copy).expect("rm copy");

    // The forgotten snapshot leaves the mount: gone from the root listing,
    // and looking it up gives ENOENT.
    let deadline = Instant::now() + Duration::from_secs(3);
    let big_dir = mount.path.join("big");
    loop {
        let listed = fs::read_dir(&mount.path)
            .expect("list the mount root")
            .any(|e| e.expect("entry").file_name() == "big");
        let looked_up = match fs::read_dir(&big_dir) {
            Ok(rd) => Ok(rd
                .map(|e| e.map(|e| e.file_name()))
                .collect::<std::io::Result<Vec<_>>>()),
            Err(e) => Err(e),
        };
        let enoent = matches!(&looked_up, Err(e) if e.raw_os_error() == Some(libc::ENOENT));
        if !listed && enoent {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "3 s after `forget big --gc` the mount still shows the forgotten snapshot: \
             in the root listing: {listed}; listing {} gives {looked_up:?} instead of ENOENT",
            big_dir.display()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        fs::read_dir(mount.path.join("small")).is_ok(),
        "the kept snapshot vanished from the mount"
    );
    mount.finish();
    let g = gc(&repo, &[]);
    assert_eq!(json_u64(&g, "packs_waiting"), 0, "after unmount: {g}");
    assert!(
        json_u64(&g, "bytes_freed") >= len * 9 / 10,
        "after unmount gc should free the forgotten 200 MiB: {g}"
    );
    assert!(
        repo.packs_bytes() < 10 * MIB,
        "packs still hold {} bytes",
        repo.packs_bytes()
    );
    assert_verify_read_data_ok(&repo, "after the mount and gc");
}

// ---------------------------------------------------------------- SIGKILL

/// The snapshots a kill test expects, each with its frozen source copy.
struct Expected {
    refs: BTreeMap<String, PathBuf>,
}

impl Expected {
    /// Asserts every listed snapshot is known and restores identical, and
    /// `verify --read-data` passes.
    fn check(&self, work: &Work, repo: &Repo, when: &str) {
        assert_verify_read_data_ok(repo, when);
        for id in repo.snapshot_ids() {
            let reference = self
                .refs
                .get(&id)
                .unwrap_or_else(|| panic!("{when}: unknown snapshot {id} listed"));
            work.assert_restores(repo, &id, reference);
        }
    }
}

const KILLS: u32 = 20;
const MAX_ROUNDS: u32 = 60;

fn timed_ok(cmd: &mut Command) -> (Output, Duration) {
    let t = Instant::now();
    let out = run_ok(cmd);
    (out, t.elapsed())
}

#[test]
fn sigkill_during_forget_never_breaks_the_repository() {
    let work = Work::new();
    build_plain_tree(&work.src, 41, 2, 10, 200 * KIB);
    let repo = Repo::new();
    let mut exp = Expected {
        refs: BTreeMap::new(),
    };
    let mut killer = Killer::new(4101, Duration::from_millis(30));
    let mut round = 0;
    while killer.kills < KILLS {
        round += 1;
        assert!(
            round <= MAX_ROUNDS,
            "only {} kills in {MAX_ROUNDS} rounds",
            killer.kills
        );
        // Two new snapshots a round, so each forget has work.
        for k in 0..2 {
            replace_share(&work.src, 4200 + round as u64 * 2 + k, 20);
            let id = repo.ingest(&[], &[&work.src]).id;
            let reference = work.freeze(&id);
            exp.refs.insert(id, reference);
        }
        let before = repo.id_set();
        let killed = killer.run(
            repo.cmd().args(["forget", "--keep-last", "3"]),
            "forget --keep-last 3",
        );
        let now = repo.id_set();
        assert!(
            now.is_subset(&before) && now.len() >= before.len().min(3),
            "round {round}: after {} forget the snapshots are {now:?}, before {before:?}",
            if killed { "a killed" } else { "a" }
        );
        exp.check(&work, &repo, &format!("round {round}, after forget"));
        let (_, took) = timed_ok(repo.cmd().args(["forget", "--keep-last", "3"]));
        if killed {
            killer.observe(took);
        }
        assert_eq!(
            repo.id_set().len(),
            before.len().min(3),
            "round {round}: the rerun of forget"
        );
    }
    eprintln!(
        "forget: {} kills, {} completed, typical run {:?}",
        killer.kills, killer.completed, killer.typical
    );
    exp.check(&work, &repo, "at the end");
}

#[test]
fn sigkill_during_gc_never_breaks_the_repository() {
    let work = Work::new();
    build_plain_tree(&work.src, 51, 3, 16, 640 * KIB); // ~10 MiB
    let repo = Repo::new();
    let mut exp = Expected {
        refs: BTreeMap::new(),
    };
    let mut killer = Killer::new(5101, Duration::from_millis(150));
    let mut round = 0;
    while killer.kills < KILLS {
        round += 1;
        assert!(
            round <= MAX_ROUNDS,
            "only {} kills in {MAX_ROUNDS} rounds",
            killer.kills
        );
        replace_share(&work.src, 5200 + round as u64, 30);
        let id = repo.ingest(&[], &[&work.src]).id;
        let reference = work.freeze(&id);
        exp.refs.insert(id, reference);
        forget(&repo, &["--keep-last", "2"]);
        let before = repo.id_set();
        let killed = killer.run(repo.cmd().args(["gc", "--max-unused", "5"]), "gc");
        assert_eq!(
            repo.id_set(),
            before,
            "round {round}: gc changed the snapshot list"
        );
        exp.check(&work, &repo, &format!("round {round}, after gc"));
        let (_, took) = timed_ok(repo.cmd().args(["gc", "--max-unused", "5"]));
        if killed {
            killer.observe(took);
        }
    }
    eprintln!(
        "gc: {} kills, {} completed, typical run {:?}",
        killer.kills, killer.completed, killer.typical
    );
    exp.check(&work, &repo, "at the end");
    let g = gc(&repo, &[]);
    assert_eq!(json_u64(&g, "packs_waiting"), 0, "{g}");
}

#[test]
fn sigkill_during_ingest_with_several_snapshots_never_breaks_the_repository() {
    let work = Work::new();
    build_plain_tree(&work.src, 81, 3, 16, 640 * KIB); // ~10 MiB
    let repo = Repo::new();
    let mut exp = Expected {
        refs: BTreeMap::new(),
    };
    for _ in 0..2 {
        let id = repo.ingest(&[], &[&work.src]).id;
        let reference = work.freeze(&id);
        exp.refs.insert(id, reference);
        replace_share(&work.src, 8100, 30);
    }
    let mut killer = Killer::new(8101, Duration::from_millis(150));
    let mut round = 0;
    while killer.kills < KILLS {
        round += 1;
        assert!(
            round <= MAX_ROUNDS,
            "only {} kills in {MAX_ROUNDS} rounds",
            killer.kills
        );
        replace_share(&work.src, 8200 + round as u64, 30);
        let reference = work.freeze(&format!("round-{round}"));
        let before = repo.id_set();
        let killed = killer.run(&mut repo.ingest_cmd(&[], &[&work.src]), "ingest");
        let now = repo.id_set();
        let new: Vec<&String> = now.difference(&before).collect();
        assert!(
            now.is_superset(&before) && new.len() <= 1,
            "round {round}: snapshots before {before:?}, after {now:?}"
        );
        for id in new {
            exp.refs.insert(id.clone(), reference.clone());
        }
        exp.check(&work, &repo, &format!("round {round}, after ingest"));
        let (out, took) = timed_ok(&mut repo.ingest_cmd(&[], &[&work.src]));
        let id = Ingested::from_output(&out).id;
        exp.refs.insert(id.clone(), reference);
        if killed {
            // The rerun reads only what the killed run did not store.
            killer.observe(took * 2);
        }
        work.assert_restores(&repo, &id, &exp.refs[&id].clone());
        // Keep the number of snapshots (and so the checks) bounded.
        if repo.id_set().len() > 4 {
            forget(&repo, &["--keep-last", "3", "--gc"]);
        }
    }
    eprintln!(
        "ingest: {} kills, {} completed, typical run {:?}",
        killer.kills, killer.completed, killer.typical
    );
    exp.check(&work, &repo, "at the end");
}

// ---------------------------------------------------------------- gc with ingest

#[test]
fn gc_and_ingest_running_together_both_complete() {
    let work = Work::new();
    build_plain_tree(&work.src, 91, 4, 24, MIB); // ~24 MiB
    let repo = Repo::new();
    let mut refs: BTreeMap<String, PathBuf> = BTreeMap::new();
    for seed in 0..3 {
        replace_share(&work.src, 9100 + seed, 30);
        let id = repo.ingest(&[], &[&work.src]).id;
        let r = work.freeze(&id);
        refs.insert(id, r);
    }
    for (i, offset_ms) in [0u64, 30, 120].into_iter().enumerate() {
        // Something for gc to do: the oldest snapshots forgotten.
        forget(&repo, &["--keep-last", "2"]);
        replace_share(&work.src, 9200 + i as u64, 30);
        let reference = work.freeze(&format!("concurrent-{i}"));
        let gc_first = i % 2 == 0;
        let mut gc_cmd = repo.cmd();
        gc_cmd.args(["gc", "--json"]);
        let mut ingest_cmd = repo.ingest_cmd(&[], &[&work.src]);
        let (gc_child, ingest_child) = if gc_first {
            let g = spawn_collecting(&mut gc_cmd);
            thread::sleep(Duration::from_millis(offset_ms));
            (g, spawn_collecting(&mut ingest_cmd))
        } else {
            let n = spawn_collecting(&mut ingest_cmd);
            thread::sleep(Duration::from_millis(offset_ms));
            (spawn_collecting(&mut gc_cmd), n)
        };
        let g = gc_child.wait_with_output().expect("wait for gc");
        let n = ingest_child.wait_with_output().expect("wait for ingest");
        assert!(g.status.success(), "{}", describe("concurrent gc", &g));
        assert!(n.status.success(), "{}", describe("concurrent ingest", &n));
        parse_json("gc --json", &g.stdout);
        let id = Ingested::from_output(&n).id;
        refs.insert(id, reference);
        for id in repo.snapshot_ids() {
            let r = refs[&id].clone();
            work.assert_restores(&repo, &id, &r);
        }
        assert_verify_read_data_ok(&repo, &format!("after concurrent gc and ingest #{i}"));
    }
}

// ---------------------------------------------------------------- disk full

fn free_bytes(p: &Path) -> u64 {
    let c = cpath(p);
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs {}", p.display());
    st.f_bavail as u64 * st.f_frsize as u64
}

#[test]
fn disk_full_during_gc_fails_cleanly_and_a_later_gc_succeeds() {
    let work = Work::new();
    let dir = tempdir();
    let fs_dir = canonical(dir.path()).join("small-fs");
    let tmpfs = Tmpfs::mount(&fs_dir, "48m");
    let repo = Repo::at(&tmpfs.path.join("repo"));
    repo.init();

    // Snapshot 1: x (20 MiB) and y (8 MiB) in one pack; snapshot 2 keeps
    // y only, so forgetting snapshot 1 leaves that pack mostly unused and
    // gc must copy y (8 MiB) into a new pack.
    write_random_file(&work.src.join("x.bin"), 1001, 20 * MIB);
    write_random_file(&work.src.join("y.bin"), 1002, 8 * MIB);
    repo.ingest(&["--name", "one"], &[&work.src]);
    fs::remove_file(work.src.join("x.bin")).expect("rm x");
    write_file(&work.src.join("z.txt"), b"small\n");
    repo.ingest(&["--name", "two"], &[&work.src]);
    let two = work.freeze("two");
    forget(&repo, &["one"]);

    // Fill the filesystem to within 2 MiB.
    let filler = tmpfs.path.join("filler");
    let free = free_bytes(&tmpfs.path);
    assert!(free > 4 * MIB, "the tmpfs has only {free} bytes free");
    write_random_file(&filler, 1003, free - 2 * MIB);
    let packs_before = repo.pack_files();

    let out = output_of(repo.cmd().args(["gc"]));
    assert_eq!(
        out.status.code(),
        Some(1),
        "gc on a full disk should exit 1\n{}",
        describe("gc", &out)
    );
    let err = stderr_of(&out);
    eprintln!("gc on a full disk: {}", err.trim());
    assert!(
        err.contains("No space left on device") || err.to_lowercase().contains("space"),
        "gc should say the disk is full:\n{err}"
    );
    assert!(
        !err.contains("panicked"),
        "gc panicked on a full disk:\n{err}"
    );
    assert_eq!(
        repo.pack_files(),
        packs_before,
        "a failed gc must not delete or add packs"
    );
    // Still full: verify and restore read, they need no space.
    assert_verify_read_data_ok(&repo, "after gc failed on a full disk");
    work.assert_restores(&repo, "two", &two);
    fs::remove_file(&filler).expect("rm filler");
    let g = gc(&repo, &[]);
    assert!(json_u64(&g, "bytes_freed") >= 15 * MIB, "{g}");
    assert_eq!(repo.name_set(), ["two".to_string()].into_iter().collect());
    work.assert_restores(&repo, "two", &two);
    assert_verify_read_data_ok(&repo, "after gc with space again");
    assert!(
        repo.packs_bytes() < 12 * MIB,
        "packs hold {} bytes",
        repo.packs_bytes()
    );
    drop(tmpfs);
}
