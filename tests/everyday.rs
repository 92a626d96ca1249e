//! End-to-end tests of the everyday-use features: `diff`, the change alarm,
//! `stats`, the JSON shapes of every command, snapshot references, exit
//! codes, progress output, shell completions, man pages and the systemd
//! units in `scripts/systemd/`.
//!
//! Exit code 3 (unreadable files) is covered in `faults.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::util::*;

// ---------------------------------------------------------------- helpers

/// `snapfs diff FROM TO [PATH] --json`, expecting success.
fn diff_json(repo: &Repo, from: &str, to: &str, path: Option<&Path>) -> Value {
    let mut cmd = repo.cmd();
    cmd.args(["diff", "--json", from, to]);
    if let Some(p) = path {
        cmd.arg(p);
    }
    json_of("diff --json", &mut cmd)
}

fn stats_json(repo: &Repo, snapshot: Option<&str>) -> Value {
    let mut cmd = repo.cmd();
    cmd.args(["stats", "--json"]);
    if let Some(s) = snapshot {
        cmd.arg(s);
    }
    json_of("stats --json", &mut cmd)
}

/// One change of a diff: (change, path, type).
type ChangeKey = (String, PathBuf, String);

fn change_keys(diff: &Value) -> BTreeSet<ChangeKey> {
    let changes = json_array(diff, "changes");
    let keys: BTreeSet<ChangeKey> = changes
        .iter()
        .map(|c| {
            (
                json_str(c, "change").to_string(),
                PathBuf::from(json_str(c, "path")),
                json_str(c, "type").to_string(),
            )
        })
        .collect();
    assert_eq!(
        keys.len(),
        changes.len(),
        "a change is listed twice in {diff:#}"
    );
    keys
}

fn key(change: &str, path: &Path, kind: &str) -> ChangeKey {
    (change.to_string(), path.to_path_buf(), kind.to_string())
}

/// The size a diff lists for one change.
fn change_size(diff: &Value, change: &str, path: &Path) -> u64 {
    let found: Vec<&Value> = json_array(diff, "changes")
        .iter()
        .filter(|c| json_str(c, "change") == change && Path::new(json_str(c, "path")) == path)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {change} change of {} in {diff:#}",
        path.display()
    );
    json_u64(found[0], "size")
}

/// The counters of a diff agree with its list of changes.
fn assert_diff_totals_consistent(diff: &Value) {
    let mut count: BTreeMap<String, u64> = BTreeMap::new();
    let mut bytes: BTreeMap<String, u64> = BTreeMap::new();
    for c in json_array(diff, "changes") {
        let kind = json_str(c, "change").to_string();
        *count.entry(kind.clone()).or_default() += 1;
        *bytes.entry(kind).or_default() += json_u64(c, "size");
    }
    for kind in ["added", "removed", "modified", "metadata"] {
        assert_eq!(
            json_u64(diff, kind),
            count.get(kind).copied().unwrap_or(0),
            "counter {kind:?} disagrees with the list in {diff:#}"
        );
    }
    for kind in ["added", "removed", "modified"] {
        assert_eq!(
            json_u64(diff, &format!("{kind}_bytes")),
            bytes.get(kind).copied().unwrap_or(0),
            "{kind}_bytes disagrees with the sizes listed in {diff:#}"
        );
    }
}

/// Quotes `s` for `sh -c`.
fn sh_quote(s: &OsStr) -> String {
    let s = s.to_str().expect("UTF-8 path for a shell command");
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Whether output carries progress drawing: carriage returns or ANSI escapes.
fn has_progress_marks(bytes: &[u8]) -> bool {
    bytes.contains(&b'\r') || has_ansi_escapes(bytes)
}

fn has_ansi_escapes(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\x1b[")
}

// ---------------------------------------------------------------- diff

/// Every kind of change between two snapshots of one source, each listed
/// once with the right change, type and size; nothing else.
#[test]
fn diff_lists_exactly_the_changes_between_two_snapshots() {
    let dir = tempdir();
    let root = canonical(dir.path()).join("src");

    // An unchanged subtree.
    mkdir(&root.join("same/sub"));
    write_file(&root.join("same/a"), b"unchanged a\n");
    write_file(&root.join("same/sub/b"), &random_bytes(1, 30_000));
    // Files that will change in place.
    mkdir(&root.join("docs"));
    write_file(&root.join("docs/report.txt"), b"first draft\n");
    write_file(&root.join("docs/mode"), b"chmod me\n");
    chmod(&root.join("docs/mode"), 0o644);
    write_file(&root.join("docs/owner"), b"chown me\n");
    write_file(&root.join("docs/touched"), b"touch me\n");
    set_mtime(&root.join("docs/touched"), 1_600_000_000, 1);
    write_file(&root.join("docs/keep"), b"left alone\n");
    symlink("docs/report.txt", root.join("link")).expect("symlink");
    // What will go away.
    write_file(&root.join("old.txt"), &random_bytes(2, 1234));
    mkdir(&root.join("olddir/sub"));
    write_file(&root.join("olddir/a"), &random_bytes(3, 4321));
    write_file(&root.join("olddir/sub/b"), &random_bytes(4, 777));
    mkfifo(&root.join("pipe"), 0o600);
    mknod_block(&root.join("loop"), 0o660, 7, 201);
    // A file that becomes a directory.
    write_file(&root.join("swap"), b"a file\n");

    // Directory mtimes stay put, so that only what the test changes differs.
    let pin_dirs = || {
        for d in [root.join("docs"), root.clone()] {
            set_mtime(&d, 1_500_000_000, 500);
        }
    };
    pin_dirs();
    let repo = Repo::new();
    repo.ingest(&["--name", "before"], &[&root]);

    // The changes.
    write_file(
        &root.join("docs/report.txt"),
        b"second draft, a bit longer\n",
    );
    chmod(&root.join("docs/mode"), 0o600);
    lchown(&root.join("docs/owner"), 1234, 5678);
    set_mtime(&root.join("docs/touched"), 1_600_000_000, 2);
    fs::remove_file(root.join("link")).expect("rm link");
    symlink("same/a", root.join("link")).expect("symlink");
    fs::remove_file(root.join("old.txt")).expect("rm");
    fs::remove_dir_all(root.join("olddir")).expect("rm -r");
    fs::remove_file(root.join("pipe")).expect("rm fifo");
    fs::remove_file(root.join("loop")).expect("rm device");
    write_file(&root.join("new.txt"), &random_bytes(5, 2000));
    mknod_char(&root.join("tty-like"), 0o620, 5, 0);
    fs::remove_file(root.join("swap")).expect("rm swap");
    mkdir(&root.join("swap"));
    write_file(&root.join("swap/inside"), b"12345");
    pin_dirs();
    repo.ingest(&["--name", "after"], &[&root]);

    let diff = diff_json(&repo, "before", "after", None);
    assert_eq!(json_str(&diff, "from"), "before");
    assert_eq!(json_str(&diff, "to"), "after");
    // Snapshots keep the directories above a source too; their times change
    // with whatever else happens in /tmp, so they may show as metadata
    // changes, and only so.
    let above: BTreeSet<ChangeKey> = change_keys(&diff)
        .into_iter()
        .filter(|(_, p, _)| root.starts_with(p) && *p != root)
        .collect();
    for (change, p, kind) in &above {
        assert!(
            change == "metadata" && kind == "dir",
            "{change} {kind} {} above the source",
            p.display()
        );
    }
    let ancestors = above.len() as u64;
    let r = |p: &str| root.join(p);
    let expected: BTreeSet<ChangeKey> = [
        key("modified", &r("docs/report.txt"), "file"),
        key("metadata", &r("docs/mode"), "file"),
        key("metadata", &r("docs/owner"), "file"),
        key("metadata", &r("docs/touched"), "file"),
        key("modified", &r("link"), "symlink"),
        key("removed", &r("old.txt"), "file"),
        key("removed", &r("olddir"), "dir"),
        key("removed", &r("olddir/a"), "file"),
        key("removed", &r("olddir/sub"), "dir"),
        key("removed", &r("olddir/sub/b"), "file"),
        key("removed", &r("pipe"), "fifo"),
        key("removed", &r("loop"), "block"),
        key("added", &r("new.txt"), "file"),
        key("added", &r("tty-like"), "char"),
        key("removed", &r("swap"), "file"),
        key("added", &r("swap"), "dir"),
        key("added", &r("swap/inside"), "file"),
    ]
    .into_iter()
    .collect();
    let got: BTreeSet<ChangeKey> = change_keys(&diff).difference(&above).cloned().collect();
    let missing: Vec<_> = expected.difference(&got).collect();
    let extra: Vec<_> = got.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "diff before -> after\nmissing: {missing:#?}\nunexpected: {extra:#?}\nfull: {diff:#}"
    );
    assert_diff_totals_consistent(&diff);
    assert_eq!(json_u64(&diff, "added"), 4);
    assert_eq!(json_u64(&diff, "removed"), 8);
    assert_eq!(json_u64(&diff, "modified"), 2);
    assert_eq!(json_u64(&diff, "metadata"), 3 + ancestors);
    // Sizes: the new size for added and modified files, the old one for
    // removed files.
    assert_eq!(change_size(&diff, "added", &r("new.txt")), 2000);
    assert_eq!(change_size(&diff, "added", &r("swap/inside")), 5);
    assert_eq!(change_size(&diff, "removed", &r("old.txt")), 1234);
    assert_eq!(change_size(&diff, "removed", &r("olddir/a")), 4321);
    assert_eq!(change_size(&diff, "removed", &r("swap")), 7);
    assert_eq!(
        change_size(&diff, "modified", &r("docs/report.txt")),
        "second draft, a bit longer\n".len() as u64
    );
    assert_eq!(json_u64(&diff, "added_bytes"), 2005);
    assert_eq!(json_u64(&diff, "removed_bytes"), 1234 + 4321 + 777 + 7);

    // The other way round, additions and removals trade places.
    let back = diff_json(&repo, "after", "before", None);
    assert_diff_totals_consistent(&back);
    assert_eq!(json_u64(&back, "added"), 8, "{back:#}");
    assert_eq!(json_u64(&back, "removed"), 4, "{back:#}");
    assert_eq!(json_u64(&back, "modified"), 2, "{back:#}");
    assert_eq!(json_u64(&back, "metadata"), 3 + ancestors, "{back:#}");

    // With the source itself as PATH: the same changes, nothing above.
    let at_root = diff_json(&repo, "before", "after", Some(&root));
    assert_eq!(
        change_keys(&at_root),
        expected,
        "diff at the source: {at_root:#}"
    );
    assert_diff_totals_consistent(&at_root);

    // With PATH: only what lies at or below it.
    let docs = diff_json(&repo, "before", "after", Some(&r("docs")));
    let want: BTreeSet<ChangeKey> = expected
        .iter()
        .filter(|(_, p, _)| p.starts_with(r("docs")))
        .cloned()
        .collect();
    assert_eq!(want.len(), 4);
    assert_eq!(change_keys(&docs), want, "diff below docs: {docs:#}");
    assert_diff_totals_consistent(&docs);
    let gone = diff_json(&repo, "before", "after", Some(&r("olddir")));
    let want: BTreeSet<ChangeKey> = expected
        .iter()
        .filter(|(_, p, _)| p.starts_with(r("olddir")))
        .cloned()
        .collect();
    assert_eq!(change_keys(&gone), want, "diff below olddir: {gone:#}");

    // An unchanged subtree, and a snapshot against itself: nothing.
    for (from, to, path) in [
        ("before", "after", Some(r("same"))),
        ("before", "after", Some(r("docs/keep"))),
        ("after", "after", None),
        ("before", "before", None),
    ] {
        let d = diff_json(&repo, from, to, path.as_deref());
        assert!(
            json_array(&d, "changes").is_empty(),
            "diff {from} {to} {path:?} lists changes: {d:#}"
        );
        for k in ["added", "removed", "modified", "metadata", "added_bytes"] {
            assert_eq!(json_u64(&d, k), 0, "{k} in {d:#}");
        }
    }

    // Human output: one line per change, then one summary line.
    let out = run_ok(repo.cmd().args(["diff", "before", "after"]));
    let text = stdout_of(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        expected.len() + above.len() + 1,
        "expected {} change lines and a summary:\n{text}",
        expected.len() + above.len()
    );
    for (_, path, _) in &expected {
        let p = path.to_str().expect("UTF-8 path");
        assert!(
            lines[..lines.len() - 1]
                .iter()
                .any(|l| l.trim_end_matches('/').ends_with(p)),
            "no line for {p}:\n{text}"
        );
    }
    let summary = lines[lines.len() - 1];
    for word in [
        "4 added".to_string(),
        "8 removed".to_string(),
        "2 modified".to_string(),
        format!("{} metadata", 3 + ancestors),
    ] {
        assert!(
            summary.contains(&word),
            "summary line lacks {word:?}: {summary}"
        );
    }
    // Human output below an unchanged path: the summary alone.
    let out = run_ok(repo.cmd().args(["diff", "before", "after"]).arg(r("same")));
    assert_eq!(
        stdout_of(&out).lines().count(),
        1,
        "{}",
        describe("diff of an unchanged subtree", &out)
    );

    // A path in neither snapshot is an error.
    let out = run_expect(
        repo.cmd()
            .args(["diff", "before", "after"])
            .arg(r("no/such/path")),
        1,
    );
    assert!(
        stderr_of(&out).contains("no/such/path"),
        "{}",
        describe("diff of a missing path", &out)
    );
}

/// Names are bytes: a changed file with a non-UTF-8 name must not break
/// `diff --json` (the human output shows it already).
#[test]
fn diff_json_survives_non_utf8_names() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempdir();
    let root = canonical(dir.path()).join("src");
    mkdir(&root);
    let odd = root.join(OsStr::from_bytes(b"caf\xe9.txt"));
    write_file(&odd, b"one\n");
    write_file(&root.join("plain"), b"plain\n");
    set_mtime(&root, 1_500_000_000, 0);
    let repo = Repo::new();
    repo.ingest(&["--name", "a"], &[&root]);
    write_file(&odd, b"two, longer\n");
    write_file(&root.join(OsStr::from_bytes(b"new-\xff")), b"new\n");
    set_mtime(&root, 1_500_000_000, 0);
    repo.ingest(&["--name", "b"], &[&root]);

    let human = run_ok(repo.cmd().args(["diff", "a", "b"]).arg(&root));
    assert_eq!(
        stdout_of(&human).lines().count(),
        3,
        "{}",
        describe("diff a b", &human)
    );

    let out = repo
        .cmd()
        .args(["diff", "--json", "a", "b"])
        .arg(&root)
        .output()
        .expect("spawn snapfs diff");
    assert_eq!(
        out.status.code(),
        Some(0),
        "diff --json of a change to a non-UTF-8 name must succeed\n{}",
        describe("diff --json a b", &out)
    );
    let d = parse_json("diff --json", &out.stdout);
    assert_eq!(json_u64(&d, "modified"), 1, "{d:#}");
    assert_eq!(json_u64(&d, "added"), 1, "{d:#}");
    assert_eq!(json_array(&d, "changes").len(), 2, "{d:#}");
}

// ---------------------------------------------------------------- change alarm

/// Overwrites `count` of the files below `root` (in sorted order, starting
/// at `skip`) with random bytes of the same length, the way ransomware
/// encrypts in place.
fn overwrite_files(root: &Path, seed: u64, skip: usize, count: usize) -> usize {
    let files: Vec<PathBuf> = walk(root)
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).expect("lstat").is_file())
        .collect();
    let chosen: Vec<&PathBuf> = files.iter().skip(skip).take(count).collect();
    for (i, p) in chosen.iter().enumerate() {
        let len = fs::metadata(p).expect("stat").len();
        write_file(p, &random_bytes(seed + i as u64, len as usize));
    }
    chosen.len()
}

#[test]
fn mass_change_raises_the_alarm_once() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let root = base.join("src");
    build_plain_tree(&root, 41, 4, 200, 2000);
    let repo = Repo::new();

    // Three ordinary days: about 1% changes.
    let first = repo.ingest(&[], &[&root]);
    assert!(!json_bool(&first.json, "alarm"), "{}", first.json);
    for day in 0..2 {
        overwrite_files(&root, 1000 + day, 10 + day as usize * 50, 2);
        let s = repo.ingest(&[], &[&root]);
        assert!(!json_bool(&s.json, "alarm"), "ordinary day: {}", s.json);
        assert!(json_f64(&s.json, "change_share") < 0.05, "{}", s.json);
    }
    let before = repo.snapshots();
    let prev = before.last().expect("a snapshot");
    let entries = json_u64(prev, "files") + json_u64(prev, "dirs");

    // The bad day: 60% of the files rewritten.
    let rewritten = overwrite_files(&root, 5000, 0, 120);
    assert_eq!(rewritten, 120);
    let expected_share = rewritten as f64 / entries as f64;

    // A copy of the repository as it is now, to see the human output of
    // the same ingest.
    let copy = base.join("repo-copy");
    tool(
        "cp",
        &[OsStr::new("-a"), repo.path.as_os_str(), copy.as_os_str()],
    );
    let copy = Repo::at(&copy);

    let out = run_ok(&mut repo.ingest_cmd(&[], &[&root]));
    let alarm = Ingested::from_output(&out);
    let json_stderr = stderr_of(&out);
    assert!(json_bool(&alarm.json, "alarm"), "{}", alarm.json);
    let share = json_f64(&alarm.json, "change_share");
    assert!(
        (share - expected_share).abs() < 0.02 && (0.5..=0.65).contains(&share),
        "change_share {share}, expected about {expected_share:.3} ({rewritten} of {entries} entries)"
    );

    let human = run_ok(copy.cmd().arg("ingest").arg(&root));
    let human_stderr = stderr_of(&human);
    assert!(
        human_stderr.contains("snapfs diff"),
        "the alarm's warning does not point to `snapfs diff`:\n{}",
        describe("ingest", &human)
    );
    assert!(
        !stdout_of(&human).contains("snapfs diff"),
        "the warning belongs on stderr:\n{}",
        describe("ingest", &human)
    );

    // The listing marks that snapshot, and only it.
    let list = repo.snapshots();
    let flags: Vec<bool> = list.iter().map(|s| json_bool(s, "alarm")).collect();
    assert_eq!(flags, vec![false, false, false, true], "{list:#?}");
    let listed_share = json_f64(&list[3], "change_share");
    assert!((listed_share - share).abs() < 1e-9, "{:#}", list[3]);
    let plain = run_ok(repo.cmd().arg("snapshots"));
    assert!(
        stdout_of(&plain).to_ascii_uppercase().contains("ALARM"),
        "{}",
        describe("snapshots", &plain)
    );

    // What the warning suggests shows the damage.
    let d = diff_json(&repo, "latest~1", "latest", None);
    assert_eq!(json_u64(&d, "modified"), 120, "{d:#}");

    // The next ordinary day is quiet again.
    overwrite_files(&root, 9000, 150, 2);
    let out = run_ok(&mut repo.ingest_cmd(&[], &[&root]));
    let calm = Ingested::from_output(&out);
    assert!(!json_bool(&calm.json, "alarm"), "{}", calm.json);
    assert!(
        !stderr_of(&out).contains("snapfs diff"),
        "{}",
        describe("ordinary ingest after the alarm", &out)
    );
    let flags: Vec<bool> = repo
        .snapshots()
        .iter()
        .map(|s| json_bool(s, "alarm"))
        .collect();
    assert_eq!(flags, vec![false, false, false, true, false]);

    // Last, as it is the one thing a script reading the JSON summary could
    // miss: the warning is on stderr with --json as well.
    assert!(
        json_stderr.contains("snapfs diff"),
        "with --json the alarm's warning is missing from stderr (the JSON says alarm: true):\n--- stderr ---\n{json_stderr}"
    );
}

// ---------------------------------------------------------------- stats

#[test]
fn stats_reports_dedup_and_what_each_snapshot_holds_alone() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let root = base.join("src");
    build_plain_tree(&root, 7, 2, 6, 600 * KIB);
    let data = dir_bytes(&root);
    let repo = Repo::new();
    repo.ingest(&["--name", "one"], &[&root]);
    repo.ingest(&["--name", "two"], &[&root]);

    let all = stats_json(&repo, None);
    assert_eq!(json_u64(&all, "snapshots"), 2, "{all:#}");
    assert_eq!(json_u64(&all, "logical_bytes"), 2 * data, "{all:#}");
    let raw = json_u64(&all, "unique_raw_bytes");
    assert!(
        (data..data + 64 * KIB).contains(&raw),
        "unique_raw_bytes {raw} for {data} bytes of distinct data: {all:#}"
    );
    let dedup = json_f64(&all, "dedup_ratio");
    assert!(
        (1.9..=2.05).contains(&dedup),
        "two snapshots of one tree: dedup_ratio {dedup}: {all:#}"
    );
    // Random data does not compress.
    let compression = json_f64(&all, "compression_ratio");
    assert!(
        (0.9..=1.05).contains(&compression),
        "compression_ratio {compression} for random data: {all:#}"
    );
    let stored = json_u64(&all, "stored_data_bytes");
    let packs = json_u64(&all, "pack_bytes");
    assert!(stored >= data, "stored_data_bytes {stored} < {data}");
    assert!(packs >= stored, "pack_bytes {packs} < stored {stored}");
    assert_eq!(packs, repo.packs_bytes(), "pack_bytes vs the pack files");
    assert!(json_u64(&all, "chunks") >= 6, "{all:#}");
    for k in ["snapshot", "unique_bytes", "added_bytes"] {
        assert!(
            all.get(k).is_some_and(Value::is_null),
            "repository-wide stats: {k} should be null: {all:#}"
        );
    }

    // The second snapshot shares everything: only its metadata is its own.
    let two = stats_json(&repo, Some("two"));
    assert_eq!(json_str(&two, "snapshot"), "two");
    assert_eq!(json_u64(&two, "snapshots"), 1);
    assert_eq!(json_u64(&two, "logical_bytes"), data);
    let unique = json_u64(&two, "unique_bytes");
    assert!(unique < 64 * KIB, "unique_bytes {unique}: {two:#}");
    assert!(json_u64(&two, "added_bytes") < 64 * KIB, "{two:#}");

    // A snapshot with a 5 MiB random file of its own.
    write_random_file(&root.join("only-here"), 99, 5 * MIB);
    repo.ingest(&["--name", "three"], &[&root]);
    let three = stats_json(&repo, Some("three"));
    let unique = json_u64(&three, "unique_bytes");
    assert!(
        (5 * MIB..6 * MIB).contains(&unique),
        "unique_bytes {unique} for a unique 5 MiB file: {three:#}"
    );
    assert!(json_u64(&three, "added_bytes") >= 5 * MIB, "{three:#}");
    // The older two still share everything with each other.
    let one = stats_json(&repo, Some("one"));
    assert!(json_u64(&one, "unique_bytes") < 64 * KIB, "{one:#}");

    // Human output.
    let out = run_ok(repo.cmd().args(["stats", "three"]));
    let text = stdout_of(&out);
    assert!(
        text.contains("three") && text.to_ascii_lowercase().contains("dedup"),
        "{}",
        describe("stats three", &out)
    );
    let out = run_ok(repo.cmd().arg("stats"));
    assert!(!out.stdout.is_empty(), "{}", describe("stats", &out));
}

// ---------------------------------------------------------------- JSON shapes

#[derive(Clone, Copy, Debug)]
enum Ty {
    Str,
    U64,
    Num,
    Bool,
    Arr,
    Obj,
    StrOrNull,
    U64OrNull,
    ObjOrNull,
}

fn has_type(v: &Value, ty: Ty) -> bool {
    match ty {
        Ty::Str => v.is_string(),
        Ty::U64 => v.is_u64(),
        Ty::Num => v.is_number(),
        Ty::Bool => v.is_boolean(),
        Ty::Arr => v.is_array(),
        Ty::Obj => v.is_object(),
        Ty::StrOrNull => v.is_string() || v.is_null(),
        Ty::U64OrNull => v.is_u64() || v.is_null(),
        Ty::ObjOrNull => v.is_object() || v.is_null(),
    }
}

fn assert_shape(what: &str, v: &Value, keys: &[(&str, Ty)]) {
    assert!(v.is_object(), "{what}: not an object: {v:#}");
    for (k, ty) in keys {
        let field = v
            .get(*k)
            .unwrap_or_else(|| panic!("{what}: no key {k:?} in {v:#}"));
        assert!(
            has_type(field, *ty),
            "{what}: {k:?} should be {ty:?}, is {field} in {v:#}"
        );
    }
}

/// `2026-11-24T21:05:54Z`, optionally with fractional seconds.
fn is_rfc3339_utc(t: &str) -> bool {
    let b = t.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && t.ends_with('Z')
}

#[test]
fn json_output_of_every_command_parses_with_the_documented_keys() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let root = base.join("src");
    build_plain_tree(&root, 3, 2, 8, 20_000);
    let repo = Repo::new();
    let first = repo.ingest(&["--name", "first", "--tag", "t"], &[&root]);
    write_file(&root.join("d00/extra"), b"extra\n");
    let out = run_ok(&mut repo.ingest_cmd(&["--name", "second"], &[&root]));
    let ingest = parse_json("ingest --json", &out.stdout);

    assert_shape(
        "ingest --json",
        &ingest,
        &[
            ("snapshot", Ty::Obj),
            ("files", Ty::U64),
            ("dirs", Ty::U64),
            ("size", Ty::U64),
            ("bytes_read", Ty::U64),
            ("reused_files", Ty::U64),
            ("new_chunks", Ty::U64),
            ("added_bytes", Ty::U64),
            ("changed", Ty::U64),
            ("deleted", Ty::U64),
            ("change_share", Ty::Num),
            ("alarm", Ty::Bool),
            ("unreadable", Ty::U64),
            ("warnings", Ty::Arr),
            ("seconds", Ty::Num),
        ],
    );
    assert_shape(
        "ingest --json .snapshot",
        &ingest["snapshot"],
        &[("id", Ty::Str), ("name", Ty::Str)],
    );
    assert_eq!(json_str(&ingest["snapshot"], "name"), "second");
    assert_eq!(json_u64(&ingest, "files"), 9);

    let list = json_of("snapshots --json", repo.cmd().args(["snapshots", "--json"]));
    let items = list.as_array().expect("snapshots --json is an array");
    assert_eq!(items.len(), 2);
    for s in items {
        assert_shape(
            "snapshots --json[]",
            s,
            &[
                ("id", Ty::Str),
                ("name", Ty::Str),
                ("time", Ty::Str),
                ("finished", Ty::Str),
                ("host", Ty::Str),
                ("sources", Ty::Arr),
                ("tags", Ty::Arr),
                ("files", Ty::U64),
                ("dirs", Ty::U64),
                ("size", Ty::U64),
                ("added_bytes", Ty::U64),
                ("warnings", Ty::U64),
                ("change_share", Ty::Num),
                ("alarm", Ty::Bool),
            ],
        );
        let id = json_str(s, "id");
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "id {id:?}"
        );
        for k in ["time", "finished"] {
            let t = json_str(s, k);
            assert!(is_rfc3339_utc(t), "{k} {t:?} is not RFC 3339 UTC");
        }
    }
    assert_eq!(json_str(&items[0], "id"), first.id);

    let target = base.join("restored");
    let restore = json_of(
        "restore --json",
        repo.cmd()
            .args(["restore", "--json", "second"])
            .arg(&target),
    );
    assert_shape(
        "restore --json",
        &restore,
        &[
            ("snapshot", Ty::Str),
            ("files", Ty::U64),
            ("dirs", Ty::U64),
            ("links", Ty::U64),
            ("bytes", Ty::U64),
            ("seconds", Ty::Num),
        ],
    );
    assert_eq!(json_u64(&restore, "files"), 9);

    let verify = json_of(
        "verify --json",
        repo.cmd().args(["verify", "--read-data", "--json"]),
    );
    assert_shape(
        "verify --json",
        &verify,
        &[
            ("ok", Ty::Bool),
            ("snapshots", Ty::U64),
            ("packs", Ty::U64),
            ("packs_read", Ty::U64),
            ("chunks_read", Ty::U64),
            ("bytes_read", Ty::U64),
            ("problems", Ty::Arr),
            ("damaged_files", Ty::Arr),
            ("damaged_snapshots", Ty::Arr),
            ("seconds", Ty::Num),
        ],
    );
    assert!(json_bool(&verify, "ok"), "{verify:#}");
    assert_eq!(json_u64(&verify, "snapshots"), 2);

    let forget = json_of(
        "forget --dry-run --json",
        repo.cmd()
            .args(["forget", "--dry-run", "--keep-last", "1", "--json"]),
    );
    assert_shape(
        "forget --dry-run --json",
        &forget,
        &[
            ("dry_run", Ty::Bool),
            ("snapshots", Ty::Arr),
            ("gc", Ty::ObjOrNull),
        ],
    );
    assert!(json_bool(&forget, "dry_run"));
    let decisions = json_array(&forget, "snapshots");
    assert_eq!(decisions.len(), 2, "{forget:#}");
    for d in decisions {
        assert_shape(
            "forget --json .snapshots[]",
            d,
            &[
                ("id", Ty::Str),
                ("name", Ty::Str),
                ("time", Ty::Str),
                ("host", Ty::Str),
                ("keep", Ty::Bool),
                ("reasons", Ty::Arr),
            ],
        );
    }
    let kept: Vec<&str> = decisions
        .iter()
        .filter(|d| json_bool(d, "keep"))
        .map(|d| json_str(d, "name"))
        .collect();
    assert_eq!(kept, vec!["second"], "{forget:#}");
    assert_eq!(repo.snapshots().len(), 2, "a dry run removed snapshots");

    let diff = diff_json(&repo, "first", "second", None);
    assert_shape(
        "diff --json",
        &diff,
        &[
            ("from", Ty::Str),
            ("to", Ty::Str),
            ("added", Ty::U64),
            ("removed", Ty::U64),
            ("modified", Ty::U64),
            ("metadata", Ty::U64),
            ("added_bytes", Ty::U64),
            ("removed_bytes", Ty::U64),
            ("modified_bytes", Ty::U64),
            ("changes", Ty::Arr),
        ],
    );
    let changes = json_array(&diff, "changes");
    assert!(!changes.is_empty(), "{diff:#}");
    for c in changes {
        assert_shape(
            "diff --json .changes[]",
            c,
            &[
                ("change", Ty::Str),
                ("path", Ty::Str),
                ("type", Ty::Str),
                ("size", Ty::U64),
            ],
        );
        assert!(
            ["added", "removed", "modified", "metadata"].contains(&json_str(c, "change")),
            "{c}"
        );
        assert!(
            ["file", "dir", "symlink", "fifo", "char", "block"].contains(&json_str(c, "type")),
            "{c}"
        );
    }
    assert!(
        change_keys(&diff).contains(&key("added", &root.join("d00/extra"), "file")),
        "{diff:#}"
    );

    let stats_keys = [
        ("snapshots", Ty::U64),
        ("logical_bytes", Ty::U64),
        ("unique_raw_bytes", Ty::U64),
        ("stored_data_bytes", Ty::U64),
        ("pack_bytes", Ty::U64),
        ("chunks", Ty::U64),
        ("dedup_ratio", Ty::Num),
        ("compression_ratio", Ty::Num),
        ("snapshot", Ty::StrOrNull),
        ("unique_bytes", Ty::U64OrNull),
        ("added_bytes", Ty::U64OrNull),
    ];
    let all = stats_json(&repo, None);
    assert_shape("stats --json", &all, &stats_keys);
    let one = stats_json(&repo, Some("first"));
    assert_shape("stats first --json", &one, &stats_keys);
    assert_shape(
        "stats first --json",
        &one,
        &[
            ("snapshot", Ty::Str),
            ("unique_bytes", Ty::U64),
            ("added_bytes", Ty::U64),
        ],
    );

    // gc last: a dry run, then the real thing.
    for args in [vec!["gc", "--dry-run", "--json"], vec!["gc", "--json"]] {
        let gc = json_of(&args.join(" "), repo.cmd().args(&args));
        assert_shape(
            &args.join(" "),
            &gc,
            &[
                ("dry_run", Ty::Bool),
                ("packs_removed", Ty::U64),
                ("packs_rewritten", Ty::U64),
                ("packs_written", Ty::U64),
                ("bytes_freed", Ty::U64),
                ("bytes_written", Ty::U64),
                ("packs_waiting", Ty::U64),
                ("seconds", Ty::Num),
            ],
        );
        assert_eq!(json_bool(&gc, "dry_run"), args.contains(&"--dry-run"));
    }
    // Nothing was forgotten: both snapshots are still there, intact.
    assert_eq!(repo.snapshots().len(), 2);
    run_ok(repo.cmd().args(["verify", "--read-data"]));
}

// ---------------------------------------------------------------- snapshot references

/// The name a reference resolves to, through `stats REF --json`.
fn resolve(repo: &Repo, reference: &str) -> String {
    json_str(&stats_json(repo, Some(reference)), "snapshot").to_string()
}

#[test]
fn snapshot_references_resolve_names_ids_prefixes_and_latest() {
    let dir = tempdir();
    let root = canonical(dir.path()).join("src");
    mkdir(&root);
    let repo = Repo::new();
    let mut snaps = Vec::new();
    for (i, name) in ["mon", "tue", "wed"].iter().enumerate() {
        write_file(&root.join("day"), format!("{name} {i}\n").as_bytes());
        snaps.push(repo.ingest(&["--name", name], &[&root]));
    }
    // The shortest prefix (at least 4) that names each one alone.
    let unique_prefix = |id: &str| -> String {
        (4..=id.len())
            .map(|n| id[..n].to_string())
            .find(|p| {
                snaps
                    .iter()
                    .filter(|s| s.id.starts_with(p.as_str()))
                    .count()
                    == 1
            })
            .expect("ids differ")
    };
    for s in &snaps {
        assert_eq!(resolve(&repo, &s.name), s.name);
        assert_eq!(resolve(&repo, &s.id), s.name, "full id");
        let p = unique_prefix(&s.id);
        assert_eq!(resolve(&repo, &p), s.name, "prefix {p}");
        assert_eq!(
            resolve(&repo, &p.to_ascii_uppercase()),
            s.name,
            "upper-case prefix {p}"
        );
    }
    assert_eq!(resolve(&repo, "latest"), "wed");
    assert_eq!(resolve(&repo, "latest~0"), "wed");
    assert_eq!(resolve(&repo, "latest~1"), "tue");
    assert_eq!(resolve(&repo, "latest~2"), "mon");
    let d = diff_json(&repo, "latest~2", "latest", None);
    assert_eq!(json_str(&d, "from"), "mon");
    assert_eq!(json_str(&d, "to"), "wed");
    // restore takes the same references.
    let target = canonical(dir.path()).join("out");
    repo.restore("latest~1", &target);
    assert_eq!(
        fs::read(restored_path(&target, &root.join("day"))).expect("restored file"),
        b"tue 1\n"
    );

    // Unknown references fail with exit 1 and a message naming them.
    let unused_prefix = (0..0x10000u32)
        .map(|n| format!("{n:04x}"))
        .find(|p| !snaps.iter().any(|s| s.id.starts_with(p.as_str())))
        .expect("a free prefix");
    for bad in [
        "thu",
        "latest~3",
        "latest~x",
        unused_prefix.as_str(),
        &snaps[0].id[..3],
    ] {
        for args in [vec!["stats", bad], vec!["diff", bad, "latest"]] {
            let out = run_expect(repo.cmd().args(&args), 1);
            let err = stderr_of(&out);
            assert!(
                err.contains(bad),
                "`snapfs {}` does not name the reference {bad:?}:\n{err}",
                args.join(" ")
            );
            assert!(out.stdout.is_empty(), "{}", describe("bad reference", &out));
        }
    }
}

/// Two snapshots whose ids share four leading hex digits make that prefix
/// ambiguous: refused with exit 1, the message saying so and naming both.
#[test]
fn ambiguous_id_prefix_is_refused_and_names_the_candidates() {
    let repo = Repo::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut clash = None;
    // Birthday odds: about 320 snapshots on average, fewer than 1500 with
    // overwhelming probability.
    for i in 0..1500u32 {
        let name = format!("s{i}");
        let mut cmd = repo.cmd();
        cmd.args(["ingest", "--json", "--stdin", "--name", &name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ingest --stdin");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(name.as_bytes()).expect("write stdin");
        }
        let out = child.wait_with_output().expect("wait ingest");
        assert!(out.status.success(), "{}", describe("ingest --stdin", &out));
        let snap = Ingested::from_output(&out);
        let prefix = snap.id[..4].to_string();
        if let Some(other) = seen.insert(prefix.clone(), name.clone()) {
            clash = Some((prefix, other, name));
            break;
        }
    }
    let (prefix, a, b) = clash.expect("no two of 1500 snapshot ids share 4 hex digits");
    let out = run_expect(repo.cmd().args(["stats", &prefix]), 1);
    let err = stderr_of(&out);
    assert!(
        err.contains(&prefix),
        "the message does not name the reference {prefix}:\n{err}"
    );
    assert!(
        err.contains(&a) && err.contains(&b),
        "the message does not name both candidates {a} and {b}:\n{err}"
    );
    run_expect(repo.cmd().args(["diff", &prefix, "latest"]), 1);
    // One digit more tells them apart unless they share it too; the full
    // names always do.
    assert_eq!(resolve(&repo, &a), a);
    assert_eq!(resolve(&repo, &b), b);
}

// ---------------------------------------------------------------- exit codes

/// Every command on a repository that is not there exits 1, names it, and
/// creates nothing; on a snapshot that is not there, exits 1 with a message.
#[test]
fn commands_on_a_missing_repository_or_snapshot_exit_1() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let nowhere = base.join("no-repo-here");
    let missing = Repo::at(&nowhere);
    let root = base.join("src");
    build_plain_tree(&root, 5, 1, 3, 1000);
    let root_s = root.to_str().expect("utf-8 path");
    let out_s = base.join("out").to_str().expect("utf-8 path").to_string();
    for args in [
        vec!["ingest", root_s],
        vec!["snapshots"],
        vec!["restore", "latest", out_s.as_str()],
        vec!["diff", "latest~1", "latest"],
        vec!["stats"],
        vec!["verify"],
        vec!["gc"],
        vec!["forget", "--dry-run", "--keep-last", "1"],
    ] {
        let out = run_expect(missing.cmd().args(&args), 1);
        assert!(
            stderr_of(&out).contains("no-repo-here"),
            "`snapfs {}` does not name the missing repository:\n{}",
            args.join(" "),
            stderr_of(&out)
        );
    }
    assert!(
        !nowhere.exists(),
        "a command created the missing repository"
    );

    // An empty repository has no `latest`.
    let repo = Repo::new();
    for args in [vec!["diff", "latest~1", "latest"], vec!["stats", "latest"]] {
        let out = run_expect(repo.cmd().args(&args), 1);
        assert!(
            !out.stderr.is_empty(),
            "{}",
            describe("reference in an empty repository", &out)
        );
    }
    // A working command exits 0.
    repo.ingest(&[], &[&root]);
    run_ok(repo.cmd().args(["diff", "latest", "latest"]));
    run_ok(repo.cmd().args(["stats", "latest"]));
    run_ok(repo.cmd().arg("verify"));
}

/// `snapfs snapshots | head -1` must end quietly when the reader goes away,
/// not with a panic and a backtrace.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempdir();
    let root = canonical(dir.path()).join("src");
    build_plain_tree(&root, 8, 1, 2, 100);
    let repo = Repo::new();
    for i in 0..3 {
        write_file(&root.join("n"), format!("{i}").as_bytes());
        repo.ingest(&[], &[&root]);
    }
    for args in [
        vec!["snapshots"],
        vec!["snapshots", "--json"],
        vec!["diff", "latest~2", "latest"],
        vec!["stats", "--json"],
    ] {
        // A pipe whose reading end is already closed: every write fails
        // with EPIPE, as when `head` has exited.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = repo
            .cmd()
            .args(&args)
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .expect("spawn snapfs");
        let err = stderr_of(&out);
        assert!(
            !err.contains("panicked") && out.status.code() != Some(101),
            "`snapfs {} | head` panics on the closed pipe ({}):\n{err}",
            args.join(" "),
            out.status
        );
    }
}

// ---------------------------------------------------------------- progress

#[test]
fn progress_is_drawn_only_on_a_terminal() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let root = base.join("src");
    mkdir(&root);
    write_random_file(&root.join("big"), 1, 24 * MIB);
    build_plain_tree(&root.join("small"), 2, 3, 100, 3000);
    let repo = Repo::new();

    // Pipes: nothing but the summary.
    let ingest = run_ok(repo.cmd().arg("ingest").arg(&root));
    let target = base.join("out");
    let restore = run_ok(&mut repo.restore_cmd("latest", &target));
    let verify = run_ok(repo.cmd().args(["verify", "--read-data"]));
    for (what, o) in [
        ("ingest", &ingest),
        ("restore", &restore),
        ("verify --read-data", &verify),
    ] {
        assert!(
            !has_progress_marks(&o.stderr) && !has_progress_marks(&o.stdout),
            "{what} drew progress into a pipe: {:?}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    // A pseudo-terminal (script(1)): progress is drawn, except with -q.
    require_tool("script");
    let bin = sh_quote(OsStr::new(snapfs_bin()));
    let repo_arg = sh_quote(repo.path.as_os_str());
    let in_pty = |cmdline: String| -> Output {
        let out = Command::new("script")
            .args(["-qec", &cmdline, "/dev/null"])
            .env_remove("SNAPFS_REPO")
            .env("TERM", "xterm")
            .stdin(Stdio::null())
            .output()
            .expect("spawn script");
        assert!(
            out.status.success(),
            "{}",
            describe(&format!("script -qec {cmdline:?}"), &out)
        );
        out
    };
    // A fresh source, so that ingest really reads something.
    let root2 = base.join("src2");
    mkdir(&root2);
    write_random_file(&root2.join("big"), 3, 24 * MIB);
    let cases = [
        (
            "ingest",
            format!(
                "{bin} --repo {repo_arg} ingest {}",
                sh_quote(root2.as_os_str())
            ),
        ),
        (
            "restore",
            format!(
                "{bin} --repo {repo_arg} restore latest {}",
                sh_quote(base.join("out-pty").as_os_str())
            ),
        ),
        (
            "verify --read-data",
            format!("{bin} --repo {repo_arg} verify --read-data"),
        ),
    ];
    for (what, cmdline) in &cases {
        let out = in_pty(cmdline.clone());
        assert!(
            has_ansi_escapes(&out.stdout),
            "{what} on a terminal drew no progress: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // -q: no progress even on a terminal.
    let root3 = base.join("src3");
    mkdir(&root3);
    write_random_file(&root3.join("big"), 4, 24 * MIB);
    let quiet = [
        format!(
            "{bin} -q --repo {repo_arg} ingest {}",
            sh_quote(root3.as_os_str())
        ),
        format!(
            "{bin} -q --repo {repo_arg} restore latest {}",
            sh_quote(base.join("out-quiet").as_os_str())
        ),
        format!("{bin} -q --repo {repo_arg} verify --read-data"),
    ];
    for cmdline in quiet {
        let out = in_pty(cmdline.clone());
        assert!(
            !has_ansi_escapes(&out.stdout),
            "{cmdline} drew progress despite -q: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

// ---------------------------------------------------------------- completions, man pages

#[test]
fn shell_completions_are_printed_and_bash_accepts_them() {
    for (shell, marker) in [
        ("bash", "_snapfs"),
        ("zsh", "#compdef snapfs"),
        ("fish", "complete -c snapfs"),
    ] {
        let out = run_ok(snapfs().args(["completions", shell]));
        let text = stdout_of(&out);
        assert!(
            text.len() > 200 && text.contains(marker),
            "{shell} completion lacks {marker:?}:\n{text}"
        );
        for sub in ["ingest", "diff", "stats", "restore", "mount"] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let dir = tempdir();
    let script = canonical(dir.path()).join("snapfs.bash");
    let out = run_ok(snapfs().args(["completions", "bash"]));
    fs::write(&script, &out.stdout).expect("write completion script");
    tool("bash", &[OsStr::new("-n"), script.as_os_str()]);
    // Sourcing it defines the completion.
    let out = tool(
        "bash",
        &[
            OsStr::new("-c"),
            OsStr::new(&format!(
                "source {} && complete -p snapfs",
                sh_quote(script.as_os_str())
            )),
        ],
    );
    assert!(
        stdout_of(&out).contains("snapfs"),
        "{}",
        describe("complete -p snapfs", &out)
    );
    run_expect(snapfs().args(["completions", "tcsh"]), 2);
}

#[test]
fn man_pages_are_written_and_render() {
    let dir = tempdir();
    let mandir = canonical(dir.path()).join("man");
    mkdir(&mandir);
    run_ok(snapfs().arg("man").arg(&mandir));
    let mut pages = vec!["snapfs.1".to_string()];
    for sub in [
        "init",
        "ingest",
        "snapshots",
        "restore",
        "forget",
        "gc",
        "verify",
        "rebuild-catalog",
        "diff",
        "stats",
        "completions",
        "man",
        "mount",
    ] {
        pages.push(format!("snapfs-{sub}.1"));
    }
    let groff = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join("groff").is_file()))
        .unwrap_or(false);
    for page in &pages {
        let path = mandir.join(page);
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("man page {} missing: {e}", path.display()));
        assert!(
            text.lines().take(5).any(|l| l.starts_with(".TH ")),
            "{page} has no .TH header near the top:\n{}",
            text.lines().take(5).collect::<Vec<_>>().join("\n")
        );
        if groff {
            let out = Command::new("groff")
                .args(["-man", "-Tascii", "-ww"])
                .arg(&path)
                .output()
                .expect("spawn groff");
            assert!(out.status.success(), "{}", describe("groff", &out));
            assert!(
                out.stderr.is_empty(),
                "groff warns about {page}:\n{}",
                stderr_of(&out)
            );
            let rendered = stdout_of(&out);
            // Bold is drawn by overstriking on -Tascii; strip it.
            let plain: String = {
                let mut s = String::new();
                for c in rendered.chars() {
                    if c == '\u{8}' {
                        s.pop();
                    } else {
                        s.push(c);
                    }
                }
                s
            };
            assert!(
                plain.contains("NAME") && plain.contains("SYNOPSIS"),
                "{page} renders without NAME/SYNOPSIS:\n{plain}"
            );
        }
    }
    if groff {
        let out = run_ok(
            Command::new("groff")
                .args(["-man", "-Tascii"])
                .arg(mandir.join("snapfs-diff.1")),
        );
        let plain = String::from_utf8_lossy(&out.stdout).replace('\u{8}', "");
        assert!(
            plain.contains("json") || plain.contains("jjssoonn"),
            "snapfs-diff(1) does not mention --json"
        );
    }
}

// ---------------------------------------------------------------- systemd units

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    require_tool("systemd-analyze");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/systemd");
    let dir = tempdir();
    let units = canonical(dir.path());
    let mut names = Vec::new();
    let mut replaced = 0;
    for entry in fs::read_dir(&src).expect("read scripts/systemd") {
        let p = entry.expect("entry").path();
        let name = p
            .file_name()
            .and_then(OsStr::to_str)
            .expect("unit name")
            .to_string();
        if !(name.ends_with(".service") || name.ends_with(".timer")) {
            continue;
        }
        let text = fs::read_to_string(&p).expect("read unit");
        replaced += text.matches("/usr/local/bin/snapfs").count();
        let text = text.replace("/usr/local/bin/snapfs", snapfs_bin());
        fs::write(units.join(&name), text).expect("write unit");
        names.push(name);
    }
    names.sort();
    assert!(
        names.iter().any(|n| n.ends_with(".service"))
            && names.iter().any(|n| n.ends_with(".timer")),
        "no units in {}: {names:?}",
        src.display()
    );
    assert!(replaced > 0, "no unit runs /usr/local/bin/snapfs");
    // Every timer has its service.
    for t in names.iter().filter(|n| n.ends_with(".timer")) {
        let service = t.replace(".timer", ".service");
        assert!(names.contains(&service), "{t} has no {service}");
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&names)
        .current_dir(&units)
        .output()
        .expect("spawn systemd-analyze");
    let all = all_output(&out);
    assert!(
        out.status.success(),
        "{}",
        describe("systemd-analyze verify", &out)
    );
    let about_ours: Vec<&str> = all
        .lines()
        .filter(|l| names.iter().any(|n| l.contains(n.as_str())) || l.contains("snapfs"))
        .collect();
    assert!(
        about_ours.is_empty(),
        "systemd-analyze verify complains about the units:\n{}",
        about_ours.join("\n")
    );
    // The binary the units run must exist and be executable.
    let meta = fs::metadata(snapfs_bin()).expect("snapfs binary");
    assert!(meta.mode() & 0o111 != 0);
}
