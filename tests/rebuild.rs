//! `rebuild-catalog` never leaves a worse catalog than it found: a missing
//! pack, a truncated pack, a damaged tree record and a kill, each on a real
//! repository driven through the binary, each compared with frozen copies
//! of the sources.
//!
//! Before these, the rebuild moved catalog.db aside first and committed
//! whatever it recovered: a missing or truncated pack silently cost
//! snapshots (exit 0 for the missing one), one bad byte in a tree record
//! emptied a directory the old catalog could still restore, a killed
//! rebuild left an empty catalog, and every snapshot showed 0 B added.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

/// Three snapshots `s1`..`s3` of one source, each adding files, with the
/// frozen copy of each and the pack files each ingest wrote.
struct Three {
    work: Work,
    repo: Repo,
    refs: BTreeMap<String, PathBuf>,
    /// Packs each ingest added, by snapshot name.
    packs: BTreeMap<String, BTreeSet<PathBuf>>,
    /// Snapshot ids by name.
    ids: BTreeMap<String, String>,
}

impl Three {
    fn new(seed: u64) -> Three {
        let work = Work::new();
        build_plain_tree(&work.src, seed, 3, 9, 60 * KIB);
        let victim = work.src.join("victim");
        mkdir(&victim.join("sub"));
        write_random_file(&victim.join("v1"), seed + 1, 90 * KIB);
        write_random_file(&victim.join("sub/v2"), seed + 2, 40 * KIB);
        write_file(&victim.join("sub/small"), b"small\n");
        let repo = Repo::new();
        let mut three = Three {
            work,
            repo,
            refs: BTreeMap::new(),
            packs: BTreeMap::new(),
            ids: BTreeMap::new(),
        };
        for (i, name) in ["s1", "s2", "s3"].into_iter().enumerate() {
            if i > 0 {
                write_random_file(
                    &three.work.src.join(format!("added-{i}")),
                    seed + 10 + i as u64,
                    120 * KIB,
                );
            }
            let before = three.repo.pack_files();
            let made = three.repo.ingest(&["--name", name], &[&three.work.src]);
            let after = three.repo.pack_files();
            three.packs.insert(name.to_string(), &after - &before);
            three.ids.insert(name.to_string(), made.id);
            let frozen = three.work.freeze(name);
            three.refs.insert(name.to_string(), frozen);
        }
        three
    }

    fn assert_restore(&self, name: &str) {
        self.work
            .assert_restores(&self.repo, name, &self.refs[name]);
    }
}

/// Files in the repository's root whose names start with `prefix`.
fn root_files(repo: &Repo, prefix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(&repo.path)
        .expect("read repository")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    out.sort();
    out
}

/// The names in the report's `snapshots_lost`.
fn lost_names(json: &Value) -> BTreeSet<String> {
    json["snapshots_lost"]
        .as_array()
        .unwrap_or_else(|| panic!("no snapshots_lost in {json}"))
        .iter()
        .map(|l| json_str(l, "name").to_string())
        .collect()
}

/// A refused rebuild: exit 1, the current catalog byte for byte as it
/// was, nothing built left behind, nothing set aside, and a message that
/// says what would be lost and how to go ahead anyway.
fn assert_refused(repo: &Repo, catalog_before: &[u8], out: &Output, json: &Value) {
    assert_refused_keeping(repo, catalog_before, &[], out, json);
}

/// The same, where `asides` were kept by earlier rebuilds.
fn assert_refused_keeping(
    repo: &Repo,
    catalog_before: &[u8],
    asides: &[PathBuf],
    out: &Output,
    json: &Value,
) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("rebuild-catalog", out)
    );
    assert_eq!(json["replaced"], Value::Bool(false), "{json}");
    assert!(
        !json_str_list(json, "worse").is_empty(),
        "a refusal must say what is worse: {json}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--force") && err.contains("snapshots"),
        "the refusal does not say what is lost and how to replace anyway:\n{err}"
    );
    assert!(
        fs::read(repo.path.join("catalog.db")).expect("read catalog") == catalog_before,
        "a refused rebuild changed catalog.db"
    );
    assert_eq!(
        root_files(repo, "catalog.db.rebuild-"),
        Vec::<PathBuf>::new()
    );
    assert_eq!(root_files(repo, "catalog.db.before-rebuild-"), asides);
}

/// The report of a forced rebuild is the catalog that results.
fn assert_forced(repo: &Repo, out: &Output, json: &Value, expect: &BTreeSet<String>) {
    assert_eq!(
        json["replaced"],
        Value::Bool(true),
        "{}",
        describe("rebuild-catalog --force", out)
    );
    assert_eq!(json["forced"], Value::Bool(true), "{json}");
    assert_eq!(repo.name_set(), *expect, "{json}");
    assert_eq!(json_u64(json, "snapshots"), expect.len() as u64, "{json}");
    assert_eq!(
        json_u64(&json["after"], "snapshots"),
        expect.len() as u64,
        "{json}"
    );
    let aside = json_str(json, "old_catalog");
    assert!(Path::new(aside).is_file(), "old catalog not kept: {json}");
}

#[test]
fn rebuild_with_a_missing_pack_keeps_the_catalog_unless_forced() {
    let t = Three::new(701);
    let gone = t.packs["s3"].clone();
    assert!(!gone.is_empty());
    for p in &gone {
        fs::remove_file(p).expect("remove pack");
    }
    let catalog = fs::read(t.repo.path.join("catalog.db")).expect("read catalog");

    let (out, json) = rebuild_catalog(&t.repo, &[]);
    assert_refused(&t.repo, &catalog, &out, &json);
    assert_eq!(lost_names(&json), string_set(&["s3"]), "{json}");
    assert!(
        json["snapshots_lost"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("missing")),
        "{json}"
    );
    let missing: BTreeSet<String> = json_str_list(&json, "missing_packs").into_iter().collect();
    let expected: BTreeSet<String> = gone
        .iter()
        .map(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .expect("pack name")
                .to_string()
        })
        .collect();
    assert_eq!(missing, expected, "{json}");
    assert_eq!(t.repo.name_set(), string_set(&["s1", "s2", "s3"]));
    t.assert_restore("s1");
    t.assert_restore("s2");

    let (out, json) = rebuild_catalog(&t.repo, &["--force"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("rebuild-catalog --force", &out)
    );
    assert_forced(&t.repo, &out, &json, &string_set(&["s1", "s2"]));
    assert_eq!(lost_names(&json), string_set(&["s3"]), "{json}");
    t.assert_restore("s1");
    t.assert_restore("s2");
}

#[test]
fn rebuild_with_a_truncated_pack_keeps_the_chunks_that_still_read() {
    let t = Three::new(702);
    let s3 = t.ids["s3"].clone();
    let record = hex_bytes(&s3);
    let (pack, offset, _) = chunk_place(&t.repo, "?", &[&record]);
    let size = fs::metadata(&pack).expect("stat pack").len();

    // The pack's table goes: its chunks are all still there.
    truncate_pack(&pack, size - 20);
    let (out, json) = rebuild_catalog(&t.repo, &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("rebuild-catalog", &out)
    );
    assert_eq!(t.repo.name_set(), string_set(&["s1", "s2", "s3"]), "{json}");
    for name in ["s1", "s2", "s3"] {
        t.assert_restore(name);
    }
    assert_eq!(json["replaced"], Value::Bool(true), "{json}");
    let unreadable = &json["unreadable_packs"];
    assert_eq!(unreadable.as_array().map(Vec::len), Some(1), "{json}");
    assert!(json_u64(&unreadable[0], "chunks_kept") > 0, "{json}");

    // Now s3's record goes too.
    truncate_pack(&pack, offset + 1);
    let catalog = fs::read(t.repo.path.join("catalog.db")).expect("read catalog");
    let asides = root_files(&t.repo, "catalog.db.before-rebuild-");
    let (out, json) = rebuild_catalog(&t.repo, &[]);
    assert_refused_keeping(&t.repo, &catalog, &asides, &out, &json);
    assert_eq!(lost_names(&json), string_set(&["s3"]), "{json}");
    assert_eq!(t.repo.name_set(), string_set(&["s1", "s2", "s3"]));

    let (out, json) = rebuild_catalog(&t.repo, &["--force"]);
    assert_forced(&t.repo, &out, &json, &string_set(&["s1", "s2"]));
    assert_eq!(lost_names(&json), string_set(&["s3"]), "{json}");
    t.assert_restore("s1");
    t.assert_restore("s2");
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn rebuild_with_a_damaged_tree_record_restores_the_directory_from_the_old_rows() {
    let t = Three::new(703);
    let page = dir_page_hash(&t.repo, b"victim");
    damage_chunk(&t.repo, "SELECT ?", &[&page]);
    let victim = format!("{}/victim", t.work.src.display());

    let (out, json) = rebuild_catalog(&t.repo, &[]);
    for name in ["s1", "s2", "s3"] {
        t.assert_restore(name);
    }
    // Damage in the packs is a problem to report, although nothing is lost.
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("rebuild-catalog", &out)
    );
    assert_eq!(json["replaced"], Value::Bool(true), "{json}");
    assert!(json_u64(&json, "trees_reused") >= 1, "{json}");
    assert_eq!(json["worse"], Value::Array(vec![]), "{json}");
    let damaged = json["damaged_snapshots"]
        .as_array()
        .expect("damaged_snapshots");
    let reporting: BTreeSet<String> = damaged
        .iter()
        .filter(|d| json_str_list(d, "reused_dirs").contains(&victim))
        .map(|d| json_str(d, "snapshot").to_string())
        .collect();
    assert_eq!(reporting, string_set(&["s1", "s2", "s3"]), "{json}");
    // The directory alone, too (TARGET is the directory).
    let target = t.work.scratch.join("victim-only");
    t.repo.restore(format!("s2:{victim}"), &target);
    assert_same_tree(&t.refs["s2"].join("victim"), &target);
    // The human report names the directory.
    let out = output_of(t.repo.cmd().arg("rebuild-catalog"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&victim), "{text}");

    // Without a catalog to take rows from, the loss is named for each
    // snapshot that shows the directory empty.
    delete_catalog(&t.repo);
    let (_, json) = rebuild_catalog(&t.repo, &[]);
    let damaged = json["damaged_snapshots"]
        .as_array()
        .expect("damaged_snapshots");
    let reporting: BTreeSet<String> = damaged
        .iter()
        .filter(|d| json_str_list(d, "lost_dirs").contains(&victim))
        .map(|d| json_str(d, "snapshot").to_string())
        .collect();
    assert_eq!(reporting, string_set(&["s1", "s2", "s3"]), "{json}");
}

#[test]
fn killed_rebuild_leaves_the_old_catalog_in_place() {
    const KILLS: u32 = 12;
    let work = Work::new();
    build_plain_tree(&work.src, 704, 12, 600, 3 * KIB);
    let repo = Repo::new();
    let mut refs = BTreeMap::new();
    for i in 0..4u64 {
        write_random_file(&work.src.join(format!("round-{i}")), 7040 + i, 50 * KIB);
        let id = repo.ingest(&[], &[&work.src]).id;
        refs.insert(id.clone(), work.freeze(&id));
    }
    let expect = repo.id_set();
    let mut killer = Killer::new(7041, Duration::from_millis(300));
    let mut rounds = 0;
    while killer.kills < KILLS {
        rounds += 1;
        assert!(rounds <= 60, "only {} kills in 60 rounds", killer.kills);
        let before = fs::read(repo.path.join("catalog.db")).expect("read catalog");
        let asides_before = root_files(&repo, "catalog.db.before-rebuild-");
        let killed = killer.run(repo.cmd().arg("rebuild-catalog"), "rebuild-catalog");
        let now = fs::read(repo.path.join("catalog.db")).expect("catalog.db is gone");
        if killed && now != before {
            // Killed after the rename: the old catalog must be the one set aside.
            let asides = root_files(&repo, "catalog.db.before-rebuild-");
            assert!(
                asides
                    .iter()
                    .filter(|a| !asides_before.contains(a))
                    .any(|a| fs::read(a).is_ok_and(|b| b == before)),
                "round {rounds}: a killed rebuild changed catalog.db without keeping the old one"
            );
        }
        if !killed {
            assert_eq!(
                root_files(&repo, "catalog.db.rebuild-"),
                Vec::<PathBuf>::new(),
                "round {rounds}: a finished rebuild left files behind"
            );
        }
        assert_eq!(
            repo.id_set(),
            expect,
            "round {rounds}: after {} rebuild",
            if killed { "a killed" } else { "a" }
        );
    }
    eprintln!("rebuild-catalog: {} kills in {rounds} rounds", killer.kills);
    // The next rebuild tidies what killed ones left (and one planted here,
    // so that there is always something to tidy).
    write_file(
        &repo.path.join("catalog.db.rebuild-0123abcd"),
        b"half built",
    );
    write_file(&repo.path.join("catalog.db.rebuild-0123abcd-wal"), b"log");
    let left = root_files(&repo, "catalog.db.rebuild-").len() as u64;
    let json = rebuild_catalog_ok(&repo);
    assert_eq!(
        root_files(&repo, "catalog.db.rebuild-"),
        Vec::<PathBuf>::new()
    );
    assert_eq!(json_u64(&json, "leftovers_removed"), left, "{json}");
    assert_eq!(repo.id_set(), expect);
    let last = expect.iter().next().expect("a snapshot").clone();
    work.assert_restores(&repo, &last, &refs[&last]);
    assert_verify_read_data_ok(&repo, "after the kills");
}

/// `added` (bytes a snapshot added, in `snapshots` and `stats`) came out
/// as 0 B for every snapshot after a rebuild.
#[test]
fn added_bytes_after_a_rebuild_equal_what_ingest_recorded() {
    let t = Three::new(705);
    let added = |repo: &Repo| -> BTreeMap<String, u64> {
        repo.snapshots()
            .iter()
            .map(|s| (json_str(s, "name").to_string(), json_u64(s, "added_bytes")))
            .collect()
    };
    let before = added(&t.repo);
    assert!(before.values().all(|&a| a > 0), "{before:?}");
    rebuild_catalog_ok(&t.repo);
    assert_eq!(added(&t.repo), before, "with the old catalog present");
    delete_catalog(&t.repo);
    rebuild_catalog_ok(&t.repo);
    assert_eq!(added(&t.repo), before, "from the packs alone");
    let stats = json_of("stats --json", t.repo.cmd().args(["stats", "s2", "--json"]));
    assert_eq!(json_u64(&stats, "added_bytes"), before["s2"], "{stats}");
}

/// An empty or corrupt catalog.db says nothing about what a rebuild
/// should keep: it is replaced (and kept aside), not a reason to refuse.
#[test]
fn unreadable_catalog_is_replaced_and_kept_aside() {
    let t = Three::new(706);
    for (what, bytes) in [
        ("empty", Vec::new()),
        ("garbage", random_bytes(7060, 64 * 1024)),
    ] {
        for side in ["catalog.db-wal", "catalog.db-shm"] {
            let _ = fs::remove_file(t.repo.path.join(side));
        }
        fs::write(t.repo.path.join("catalog.db"), &bytes).expect("write catalog");
        let (out, json) = rebuild_catalog(&t.repo, &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{what}: {}",
            describe("rebuild-catalog", &out)
        );
        assert!(json["old_catalog_unreadable"].is_string(), "{what}: {json}");
        assert_eq!(json["replaced"], Value::Bool(true), "{what}: {json}");
        let aside = json_str(&json, "old_catalog");
        assert_eq!(fs::read(aside).expect("read aside"), bytes, "{what}");
        assert_eq!(t.repo.name_set(), string_set(&["s1", "s2", "s3"]), "{what}");
        let mode = fs::metadata(t.repo.path.join("catalog.db"))
            .expect("stat catalog")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{what}: catalog.db mode {mode:o}");
    }
    t.assert_restore("s3");
}

/// rebuild-catalog replaced the catalog under a running mount, whose cached
/// row ids then named other rows: it served other files' bytes. It now
/// refuses while a reader holds a lease, naming it, and leaves the catalog.
#[test]
fn rebuild_catalog_refuses_while_a_mount_reads_the_catalog() {
    let base = tempdir();
    let src = canonical(base.path()).join("src");
    mkdir(&src);
    write_random_file(&src.join("f.bin"), 1401, MIB);
    let repo = Repo::new();
    repo.ingest(&["--name", "s1"], &[&src]);
    let catalog = repo.path.join("catalog.db");
    let before = fs::metadata(&catalog).expect("catalog").ino();

    let mount = Mount::new(&repo, &[]);
    let out = repo
        .cmd()
        .args(["rebuild-catalog"])
        .output()
        .expect("run rebuild");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("running readers") && said.contains("mount"),
        "rebuild-catalog under a mount should refuse, naming it: {}",
        describe("rebuild-catalog", &out)
    );
    assert_eq!(
        fs::metadata(&catalog).expect("catalog").ino(),
        before,
        "catalog replaced"
    );
    let in_mount = restored_path(&mount.path.join("s1"), &src.join("f.bin"));
    assert!(
        fs::read(&in_mount).expect("read through the mount")
            == fs::read(src.join("f.bin")).expect("source")
    );
    mount.finish();

    let out = repo
        .cmd()
        .args(["rebuild-catalog"])
        .output()
        .expect("run rebuild");
    assert!(
        out.status.success(),
        "{}",
        describe("rebuild-catalog, unmounted", &out)
    );
}
