//! The history of a path across snapshots: the mount's `history/` view,
//! `snapfs log`, `snapfs find`, the reserved snapshot names, the
//! `--names gmt` layout, and Samba's `shadow_copy2` serving that layout as
//! "Previous Versions".
//!
//! Ingests follow each other as fast as they run: version names carry the
//! start time to the millisecond and stay unique within one, and each
//! snapshot of a `--names gmt` mount has a second of its own, so no test
//! waits for the clock. Expected names are computed here from the start
//! times the catalog records (read with python3's sqlite3) and formatted
//! by `date`.
//! Every mount and every `smbd` lives behind a guard whose `Drop` stops it,
//! so a failing test leaves nothing running or mounted.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

// ---------------------------------------------------------------- helpers

/// Names in a directory, as bytes, sorted.
fn names_in(dir: &Path) -> BTreeSet<Vec<u8>> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("read_dir entry").file_name().into_vec())
        .collect()
}

fn show(names: &BTreeSet<Vec<u8>>) -> Vec<String> {
    names
        .iter()
        .map(|n| format!("{:?}", String::from_utf8_lossy(n)))
        .collect()
}

fn bytes_set(items: &[&[u8]]) -> BTreeSet<Vec<u8>> {
    items.iter().map(|i| i.to_vec()).collect()
}

fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn lstat(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
}

const SEC: i64 = 1_000_000_000;

/// When a snapshot started: as `snapshots --json` shows it (RFC 3339, to the
/// second) and in nanoseconds, as the catalog records it.
#[derive(Clone, Debug)]
struct Started {
    time: String,
    ns: i64,
}

impl Started {
    fn second(&self) -> i64 {
        self.ns.div_euclid(SEC)
    }
}

/// `started_ns` of each snapshot, by name, read from the catalog.
fn started_ns(repo: &Repo) -> BTreeMap<String, i64> {
    query_catalog(repo, "SELECT name, started_ns FROM snapshots", &[])
        .into_iter()
        .map(|row| {
            let ns = row[1]
                .parse()
                .unwrap_or_else(|e| panic!("started_ns of {row:?}: {e}"));
            (row[0].clone(), ns)
        })
        .collect()
}

/// `date -u -d @SECONDS +FORMAT`.
fn utc(second: i64, format: &str) -> String {
    let out = run_ok(Command::new("date").args([
        "-u".to_string(),
        "-d".to_string(),
        format!("@{second}"),
        format!("+{format}"),
    ]));
    String::from_utf8(out.stdout)
        .expect("date prints UTF-8")
        .trim_end()
        .to_string()
}

/// Each snapshot's start, by name; the two sources must agree.
fn snapshot_times(repo: &Repo) -> BTreeMap<String, Started> {
    let ns = started_ns(repo);
    let times: BTreeMap<String, Started> = repo
        .snapshots()
        .iter()
        .map(|s| {
            let name = json_str(s, "name").to_string();
            let ns = *ns
                .get(&name)
                .unwrap_or_else(|| panic!("snapshot {name} is not in the catalog: {ns:?}"));
            let time = json_str(s, "time").to_string();
            (name, Started { time, ns })
        })
        .collect();
    for (name, t) in &times {
        assert_eq!(
            t.time,
            utc(t.second(), "%Y-%m-%dT%H:%M:%SZ"),
            "snapshots --json and the catalog disagree on when {name} started ({} ns)",
            t.ns
        );
    }
    times
}

/// `2026-11-20T02-00-00.123Z`: the start to the millisecond, a version's
/// stamp in the history view.
fn stamp_of(t: &Started) -> String {
    format!(
        "{}.{:03}Z",
        utc(t.second(), "%Y-%m-%dT%H-%M-%S"),
        t.ns.rem_euclid(SEC) / 1_000_000
    )
}

/// `<stamp>.<name>`: the name of a version in the history view, named after
/// the first snapshot holding it, when nothing else there claims the name.
fn version_name(t: &Started, name: &[u8]) -> Vec<u8> {
    let mut v = stamp_of(t).into_bytes();
    v.push(b'.');
    v.extend_from_slice(name);
    v
}

/// `<stamp>.<short id>.<name>`: the name a version takes when its plain
/// name is already taken (by an earlier version of the same millisecond, or
/// by an entry of a directory at the same path).
fn version_name_with_id(t: &Started, id: &str, name: &[u8]) -> Vec<u8> {
    let mut v = format!("{}.{}.", stamp_of(t), &id[..8]).into_bytes();
    v.extend_from_slice(name);
    v
}

/// The directory of each snapshot in a `--names gmt` mount, `order` being
/// the snapshots oldest first: `@GMT-YYYY.MM.DD-HH.MM.SS` of its start
/// second, or of the next second still free when an earlier snapshot holds
/// that one (a GMT token names one second, and Samba maps it back to one
/// directory).
fn gmt_dirs(times: &BTreeMap<String, Started>, order: &[&str]) -> BTreeMap<String, String> {
    let mut free = i64::MIN;
    let mut out = BTreeMap::new();
    for name in order {
        let second = times[*name].second().max(free);
        free = second + 1;
        out.insert(name.to_string(), utc(second, "@GMT-%Y.%m.%d-%H.%M.%S"));
    }
    out
}

fn ingest_named(repo: &Repo, name: &str, src: &Path) -> Ingested {
    let got = repo.ingest(&["--name", name], &[src]);
    assert_eq!(got.name, name, "ingest --name {name} made {:?}", got.name);
    got
}

/// `snapfs log --json PATH`.
fn log_json(repo: &Repo, path: &Path) -> Value {
    let out = run_ok(repo.cmd().arg("log").arg("--json").arg(path));
    parse_json("log --json", &out.stdout)
}

/// `snapfs find --json EXTRA... GLOB`, as path → entry.
fn find_json(repo: &Repo, extra: &[&str], glob: &str) -> BTreeMap<String, Value> {
    let out = run_ok(repo.cmd().arg("find").arg("--json").args(extra).arg(glob));
    let v = parse_json("find --json", &out.stdout);
    let Value::Array(items) = v else {
        panic!("find --json {glob:?} is not an array: {v}")
    };
    items
        .into_iter()
        .map(|m| (json_str(&m, "path").to_string(), m))
        .collect()
}

/// (snapshot, event) pairs of a `log --json` answer.
fn events(log: &Value) -> Vec<(String, String)> {
    json_array(log, "events")
        .iter()
        .map(|e| {
            (
                json_str(e, "snapshot").to_string(),
                json_str(e, "event").to_string(),
            )
        })
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn lossy(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

// ---------------------------------------------------------------- versions of a file

/// What one version of a file should look like in the history view.
struct Expected<'a> {
    name: Vec<u8>,
    data: &'a [u8],
    mtime: (i64, i64),
    /// The mtime as `log --json` shows it, to the second.
    mtime_utc: &'a str,
    mode: u32,
    owner: (u32, u32),
    snapshots: &'a [&'a str],
}

/// Five snapshots holding v1, v1, v2, v2 (rewritten with the same bytes and
/// a new mtime), v3: three versions, each named after and carrying the
/// metadata of the first snapshot holding it; `log --json` agrees.
#[test]
fn changed_file_shows_each_distinct_version_once() {
    let repo = Repo::new();
    let (_src_dir, src) = open_source_dir();
    let file = src.join("report.odt");
    let v1 = random_bytes(1, 70_000);
    let v2 = b"second version\n".repeat(500);
    let v3 = random_bytes(3, 1_500_000);

    write_file(&file, &v1);
    chmod(&file, 0o640);
    set_mtime(&file, 1_600_000_000, 123_456_789);
    ingest_named(&repo, "s1", &src);
    ingest_named(&repo, "s2", &src);
    write_file(&file, &v2);
    chmod(&file, 0o644);
    set_mtime(&file, 1_700_000_000, 5);
    ingest_named(&repo, "s3", &src);
    // Same bytes, new mtime: the same version by content.
    write_file(&file, &v2);
    set_mtime(&file, 1_650_000_000, 0);
    ingest_named(&repo, "s4", &src);
    write_file(&file, &v3);
    chmod(&file, 0o600);
    lchown(&file, 1234, 5678);
    set_mtime(&file, 1_750_000_000, 999_999_999);
    ingest_named(&repo, "s5", &src);

    let times = snapshot_times(&repo);
    let expected = [
        Expected {
            name: version_name(&times["s1"], b"report.odt"),
            data: &v1,
            mtime: (1_600_000_000, 123_456_789),
            mtime_utc: "2020-09-13T12:26:40",
            mode: 0o640,
            owner: (0, 0),
            snapshots: &["s1", "s2"],
        },
        Expected {
            name: version_name(&times["s3"], b"report.odt"),
            data: &v2,
            mtime: (1_700_000_000, 5),
            mtime_utc: "2023-11-14T22:13:20",
            mode: 0o644,
            owner: (0, 0),
            snapshots: &["s3", "s4"],
        },
        Expected {
            name: version_name(&times["s5"], b"report.odt"),
            data: &v3,
            mtime: (1_750_000_000, 999_999_999),
            mtime_utc: "2025-06-15T15:06:40",
            mode: 0o600,
            owner: (1234, 5678),
            snapshots: &["s5"],
        },
    ];

    let mnt = Mount::new(&repo, &[]);
    // The file's parent lists it (as a directory of versions).
    let parent = mnt.history(&src);
    assert!(
        names_in(&parent).contains(b"report.odt".as_slice()),
        "history{} should list report.odt, lists {:?}",
        src.display(),
        show(&names_in(&parent))
    );
    let versions_dir = mnt.history(&file);
    assert!(
        lstat(&versions_dir).is_dir(),
        "{} should be a directory of versions",
        versions_dir.display()
    );
    let listed = names_in(&versions_dir);
    let want: BTreeSet<Vec<u8>> = expected.iter().map(|e| e.name.clone()).collect();
    assert_eq!(
        show(&listed),
        show(&want),
        "history{} should hold exactly the three versions, named after the first snapshot holding each (times {times:?})",
        file.display()
    );
    for e in &expected {
        let p = versions_dir.join(OsStr::from_bytes(&e.name));
        let got = read(&p);
        assert!(
            got == e.data,
            "{}: content differs from the version it names ({} bytes read, {} expected)",
            p.display(),
            got.len(),
            e.data.len()
        );
        let m = lstat(&p);
        assert!(m.is_file(), "{} should be a regular file", p.display());
        assert_eq!(
            (m.mtime(), m.mtime_nsec()),
            e.mtime,
            "{}: mtime",
            p.display()
        );
        assert_eq!(
            m.mode() & 0o7777,
            e.mode,
            "{}: mode {:o}",
            p.display(),
            m.mode()
        );
        assert_eq!((m.uid(), m.gid()), e.owner, "{}: owner", p.display());
        assert_eq!(m.len(), e.data.len() as u64, "{}: size", p.display());
    }
    // The same bytes through the snapshot directories, for comparison.
    assert_eq!(read(&restored_path(&mnt.path.join("s2"), &file)), v1);
    assert_eq!(read(&restored_path(&mnt.path.join("s4"), &file)), v2);
    drop(mnt);

    let log = log_json(&repo, &file);
    assert_eq!(
        json_str(&log, "path"),
        lossy(&file),
        "log --json path: {log}"
    );
    let versions = json_array(&log, "versions");
    assert_eq!(
        versions.len(),
        3,
        "log --json should list 3 versions: {log}"
    );
    for (v, e) in versions.iter().zip(&expected) {
        assert_eq!(
            json_str(v, "name").as_bytes(),
            e.name.as_slice(),
            "version name in {v}"
        );
        assert_eq!(json_str(v, "type"), "file", "type in {v}");
        assert_eq!(json_u64(v, "size"), e.data.len() as u64, "size in {v}");
        assert!(
            json_str(v, "mtime").starts_with(e.mtime_utc),
            "mtime in {v} should be {} (UTC)",
            e.mtime_utc
        );
        assert_eq!(
            json_str(v, "first_snapshot"),
            e.snapshots[0],
            "first_snapshot in {v}"
        );
        assert_eq!(
            json_str_list(v, "snapshots"),
            strings(e.snapshots),
            "snapshots in {v}"
        );
    }
    assert_eq!(
        events(&log),
        pairs(&[("s1", "created"), ("s3", "changed"), ("s5", "changed")]),
        "log --json events: {log}"
    );
    for e in json_array(&log, "events") {
        let s = json_str(e, "snapshot");
        assert_eq!(json_str(e, "time"), times[s].time, "event time in {e}");
    }
    // The text form names the three versions too.
    let out = run_ok(repo.cmd().arg("log").arg(&file));
    let text = String::from_utf8_lossy(&out.stdout);
    for e in &expected {
        let name = String::from_utf8_lossy(&e.name);
        assert!(
            text.contains(name.as_ref()),
            "log should mention {name}:\n{text}"
        );
    }
}

/// Ingests of a changing file one right after the other, until the last
/// three snapshots started within one second (the first three, unless the
/// machine is slow or a second ends between them); all of them, oldest
/// first, with the bytes of each.
fn ingest_until_three_in_one_second(repo: &Repo, file: &Path) -> Vec<(String, Vec<u8>)> {
    let mut made: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 1..=30 {
        // A new size each time: changed whatever the timestamp granularity.
        let data = format!("version {i} {}\n", "+".repeat(i)).into_bytes();
        write_file(file, &data);
        let name = format!("q{i:02}");
        ingest_named(repo, &name, file.parent().expect("parent"));
        made.push((name, data));
        if made.len() >= 3 {
            let ns = started_ns(repo);
            let seconds: BTreeSet<i64> = made[made.len() - 3..]
                .iter()
                .map(|(n, _)| ns[n].div_euclid(SEC))
                .collect();
            if seconds.len() == 1 {
                return made;
            }
        }
    }
    panic!("30 ingests in a row never put three within one second: {made:?}");
}

/// Three snapshots started within one second (a script ingesting one source
/// after another, a retry) showed three entries of one name in history/,
/// all reading one version. Each version now has a name of its own, to the
/// millisecond, and reads its own bytes through the mount; `log --json`
/// gives the same names; a `--names gmt` mount shows each snapshot in a
/// second of its own; and the names are the same after a remount and after
/// `rebuild-catalog`.
#[test]
fn three_snapshots_in_one_second_show_three_history_versions() {
    let repo = Repo::new();
    let (_src_dir, src) = open_source_dir();
    let file = src.join("data.csv");
    let made = ingest_until_three_in_one_second(&repo, &file);
    let times = snapshot_times(&repo);
    let expected: BTreeMap<Vec<u8>, Vec<u8>> = made
        .iter()
        .map(|(s, data)| (version_name(&times[s], b"data.csv"), data.clone()))
        .collect();
    assert_eq!(
        expected.len(),
        made.len(),
        "snapshots {made:?} started at {times:?}: no two in one millisecond expected"
    );

    let check = |mnt: &Mount, when: &str| {
        let dir = mnt.history(&file);
        let listed = names_in(&dir);
        let want: BTreeSet<Vec<u8>> = expected.keys().cloned().collect();
        assert_eq!(
            show(&listed),
            show(&want),
            "{when}: history{} should hold one version per snapshot (times {times:?})",
            file.display()
        );
        for (name, data) in &expected {
            let p = dir.join(OsStr::from_bytes(name));
            assert_eq!(
                String::from_utf8_lossy(&read(&p)),
                String::from_utf8_lossy(data),
                "{when}: {} should read its own version",
                p.display()
            );
        }
    };
    let mnt = Mount::new(&repo, &[]);
    check(&mnt, "first mount");
    // Listing again (a file manager refreshing) changes nothing.
    check(&mnt, "listed again");
    mnt.finish();

    let log = log_json(&repo, &file);
    let logged: Vec<Vec<u8>> = json_array(&log, "versions")
        .iter()
        .map(|v| json_str(v, "name").as_bytes().to_vec())
        .collect();
    assert_eq!(
        logged,
        expected.keys().cloned().collect::<Vec<_>>(),
        "log --json should name the versions as history/ does: {log}"
    );

    // Previous Versions: one directory per snapshot, each with its own bytes.
    let order: Vec<&str> = made.iter().map(|(s, _)| s.as_str()).collect();
    let gmt = gmt_dirs(&times, &order);
    let mnt = Mount::new(&repo, &["--names", "gmt"]);
    let mut want: BTreeSet<Vec<u8>> = gmt.values().map(|g| g.clone().into_bytes()).collect();
    want.extend(bytes_set(&[b"history", b"latest"]));
    assert_eq!(
        show(&names_in(&mnt.path)),
        show(&want),
        "root of a --names gmt mount (times {times:?})"
    );
    for (s, data) in &made {
        let p = restored_path(&mnt.path.join(&gmt[s]), &file);
        assert_eq!(
            String::from_utf8_lossy(&read(&p)),
            String::from_utf8_lossy(data),
            "{} should hold snapshot {s}",
            p.display()
        );
    }
    mnt.finish();

    let out = run_ok(repo.cmd().arg("rebuild-catalog"));
    assert_eq!(
        repo.snapshots().len(),
        made.len(),
        "rebuild-catalog should bring back every snapshot\n{}",
        describe("rebuild-catalog", &out)
    );
    let mnt = Mount::new(&repo, &[]);
    check(&mnt, "after rebuild-catalog");
    mnt.finish();
}

/// Where a version's name still does not tell it apart, it takes the
/// snapshot's short id: two versions first seen in the same millisecond
/// (start times forced equal in the catalog), and a version whose name an
/// entry of a directory at the same path holds (the entry keeps its name).
/// Every name leads to its own bytes, and `log --json` agrees.
#[test]
fn versions_sharing_a_millisecond_or_an_entry_name_each_keep_their_own_name() {
    let repo = Repo::new();
    let (_src_dir, src) = open_source_dir();
    let doc = src.join("doc");
    let build = src.join("build");
    write_file(&doc, b"doc one\n");
    write_file(&build, b"build file one\n");
    let t1 = ingest_named(&repo, "t1", &src);
    write_file(&doc, b"doc two, longer\n");
    write_file(&build, b"build file two, longer\n");
    let t2 = ingest_named(&repo, "t2", &src);
    edit_catalog(
        &repo,
        "db.execute(\"UPDATE snapshots SET started_ns = \
         (SELECT started_ns FROM snapshots WHERE name = 't1') WHERE name = 't2'\")",
        &[],
    );
    let times = snapshot_times(&repo);
    assert_eq!(
        times["t1"].ns, times["t2"].ns,
        "forced start times {times:?}"
    );
    // build becomes a directory holding an entry named as t1's version.
    let squat = version_name(&times["t1"], b"build");
    fs::remove_file(&build).expect("rm build");
    mkdir(&build);
    write_file(&build.join(OsStr::from_bytes(&squat)), b"squatter\n");
    ingest_named(&repo, "t3", &src);
    let times = snapshot_times(&repo);

    let doc_versions = [
        (version_name(&times["t1"], b"doc"), b"doc one\n".to_vec()),
        (
            version_name_with_id(&times["t2"], &t2.id, b"doc"),
            b"doc two, longer\n".to_vec(),
        ),
    ];
    let build_versions = [
        (
            version_name_with_id(&times["t1"], &t1.id, b"build"),
            b"build file one\n".to_vec(),
        ),
        (
            version_name_with_id(&times["t2"], &t2.id, b"build"),
            b"build file two, longer\n".to_vec(),
        ),
    ];
    let mnt = Mount::new(&repo, &[]);
    for (path, versions, extra) in [
        (&doc, &doc_versions, None),
        (&build, &build_versions, Some(&squat)),
    ] {
        let dir = mnt.history(path);
        let mut want: BTreeSet<Vec<u8>> = versions.iter().map(|(n, _)| n.clone()).collect();
        want.extend(extra.cloned());
        assert_eq!(
            show(&names_in(&dir)),
            show(&want),
            "history{} (times {times:?})",
            path.display()
        );
        for (name, data) in versions {
            let p = dir.join(OsStr::from_bytes(name));
            assert_eq!(
                String::from_utf8_lossy(&read(&p)),
                String::from_utf8_lossy(data),
                "{} should read its own version",
                p.display()
            );
        }
        let log = log_json(&repo, path);
        let logged: Vec<Vec<u8>> = json_array(&log, "versions")
            .iter()
            .map(|v| json_str(v, "name").as_bytes().to_vec())
            .collect();
        let names: Vec<Vec<u8>> = versions.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(
            logged,
            names,
            "log --json names for {}: {log}",
            path.display()
        );
    }
    // The entry is still what the directory held: a file, whose own
    // history lists its one version.
    let held = mnt.history(&build.join(OsStr::from_bytes(&squat)));
    let its_version = version_name(&times["t3"], &squat);
    assert_eq!(
        show(&names_in(&held)),
        show(&bytes_set(&[&its_version])),
        "versions of {}",
        held.display()
    );
    assert_eq!(
        read(&held.join(OsStr::from_bytes(&its_version))),
        b"squatter\n"
    );
    mnt.finish();
}

/// A deleted file stays reachable through history/; `log` reports the
/// deletion, then the re-creation. A snapshot made while mounted shows up
/// in the history view too.
#[test]
fn deleted_file_is_reachable_and_recreation_is_logged() {
    let repo = Repo::new();
    let (_src_dir, src) = open_source_dir();
    let file = src.join("gone.txt");
    write_file(&src.join("stays.txt"), b"always here\n");
    write_file(&file, b"the first life of gone.txt\n");
    ingest_named(&repo, "d1", &src);
    fs::remove_file(&file).expect("rm gone.txt");
    ingest_named(&repo, "d2", &src);

    let log = log_json(&repo, &file);
    assert_eq!(
        events(&log),
        pairs(&[("d1", "created"), ("d2", "deleted")]),
        "log --json after the deletion: {log}"
    );
    assert_eq!(json_array(&log, "versions").len(), 1, "one version: {log}");

    let times = snapshot_times(&repo);
    let mnt = Mount::new(&repo, &[]);
    assert!(
        !restored_path(&mnt.path.join("latest"), &file).exists(),
        "gone.txt should not be in the latest snapshot"
    );
    let parent = mnt.history(&src);
    assert_eq!(
        show(&names_in(&parent)),
        show(&bytes_set(&[b"gone.txt", b"stays.txt"])),
        "history{} should hold the deleted file beside the living one",
        src.display()
    );
    let first = version_name(&times["d1"], b"gone.txt");
    assert_eq!(
        show(&names_in(&mnt.history(&file))),
        show(&bytes_set(&[&first])),
        "the deleted file's versions"
    );
    assert_eq!(
        read(&mnt.history(&file).join(OsStr::from_bytes(&first))),
        b"the first life of gone.txt\n"
    );

    // Re-created while mounted.
    write_file(&file, b"the second life\n");
    ingest_named(&repo, "d3", &src);
    let times = snapshot_times(&repo);
    let second = version_name(&times["d3"], b"gone.txt");
    let want = bytes_set(&[&first, &second]);
    let mut seen = BTreeSet::new();
    let appeared = eventually(Duration::from_secs(5), || {
        seen = names_in(&mnt.history(&file));
        seen == want
    });
    assert!(
        appeared,
        "within 5 s of a snapshot made while mounted, history{} should list {:?}, lists {:?}",
        file.display(),
        show(&want),
        show(&seen)
    );
    assert_eq!(
        read(&mnt.history(&file).join(OsStr::from_bytes(&second))),
        b"the second life\n"
    );
    drop(mnt);

    let log = log_json(&repo, &file);
    assert_eq!(
        events(&log),
        pairs(&[("d1", "created"), ("d2", "deleted"), ("d3", "recreated")]),
        "log --json after the re-creation: {log}"
    );
    let versions = json_array(&log, "versions");
    assert_eq!(versions.len(), 2, "two versions: {log}");
    assert_eq!(json_str_list(&versions[0], "snapshots"), strings(&["d1"]));
    assert_eq!(json_str_list(&versions[1], "snapshots"), strings(&["d3"]));
}

/// A directory deleted in a later snapshot is still listed under history/
/// and can be walked to the versions of the files it held.
#[test]
fn deleted_directory_is_listed_and_walkable() {
    let repo = Repo::new();
    let (_src_dir, src) = open_source_dir();
    let proj = src.join("project");
    mkdir(&proj.join("sub/deeper"));
    mkdir(&proj.join("empty"));
    write_file(&proj.join("a.txt"), b"alpha\n");
    write_file(&proj.join("sub/b.bin"), &random_bytes(5, 200_000));
    write_file(&proj.join("sub/deeper/c.txt"), b"deep\n");
    ingest_named(&repo, "p1", &src);
    // The second snapshot adds a file to project/sub, then project goes.
    write_file(&proj.join("sub/added-later.txt"), b"later\n");
    ingest_named(&repo, "p2", &src);
    fs::remove_dir_all(&proj).expect("rm -r project");
    mkdir(&src.join("other"));
    ingest_named(&repo, "p3", &src);
    let times = snapshot_times(&repo);

    let mnt = Mount::new(&repo, &[]);
    assert!(
        !restored_path(&mnt.path.join("latest"), &proj).exists(),
        "project/ should be gone from the latest snapshot"
    );
    assert_eq!(
        show(&names_in(&mnt.history(&src))),
        show(&bytes_set(&[b"other", b"project"])),
        "history{} should list the deleted directory",
        src.display()
    );
    let hp = mnt.history(&proj);
    assert!(
        lstat(&hp).is_dir(),
        "{} should be a directory",
        hp.display()
    );
    assert_eq!(
        show(&names_in(&hp)),
        show(&bytes_set(&[b"a.txt", b"empty", b"sub"])),
        "history of the deleted directory"
    );
    assert_eq!(
        show(&names_in(&hp.join("sub"))),
        show(&bytes_set(&[b"added-later.txt", b"b.bin", b"deeper"])),
        "the union of project/sub over the snapshots holding it"
    );
    assert!(
        names_in(&hp.join("empty")).is_empty(),
        "project/empty stays empty"
    );
    let cases: [(&str, &str, Vec<u8>); 4] = [
        ("a.txt", "p1", b"alpha\n".to_vec()),
        ("sub/b.bin", "p1", random_bytes(5, 200_000)),
        ("sub/deeper/c.txt", "p1", b"deep\n".to_vec()),
        ("sub/added-later.txt", "p2", b"later\n".to_vec()),
    ];
    for (rel, first, data) in cases {
        let dir = hp.join(rel);
        let base = Path::new(rel).file_name().expect("name").as_bytes();
        let name = version_name(&times[first], base);
        assert_eq!(
            show(&names_in(&dir)),
            show(&bytes_set(&[&name])),
            "versions of project/{rel}"
        );
        assert!(
            read(&dir.join(OsStr::from_bytes(&name))) == data,
            "content of the version of project/{rel}"
        );
    }
    // A whole walk (what `find` or a file manager does) gets through.
    let walked = walk(&hp);
    assert_eq!(
        walked.len(),
        11,
        "walking {} should meet 3 dirs (empty, sub, deeper), 4 version dirs and 4 versions, met {walked:?}",
        hp.display()
    );
    drop(mnt);

    let log = log_json(&repo, &proj);
    assert_eq!(
        events(&log),
        pairs(&[("p1", "created"), ("p3", "deleted")]),
        "log --json of a deleted directory: {log}"
    );
}

/// A path that held a file in one snapshot and a directory in another: the
/// history view shows the union of the directory and, beside its names,
/// the versions of the file, so the old file is not lost from view.
#[test]
fn file_replaced_by_directory_keeps_both_in_history() {
    let repo = Repo::new();
    let (_src_dir, src) = open_source_dir();
    let path = src.join("build");
    write_file(&path, b"was a file\n");
    ingest_named(&repo, "t1", &src);
    fs::remove_file(&path).expect("rm build");
    mkdir(&path);
    write_file(&path.join("inside.txt"), b"now a directory\n");
    ingest_named(&repo, "t2", &src);
    let times = snapshot_times(&repo);

    let mnt = Mount::new(&repo, &[]);
    let hp = mnt.history(&path);
    let file_version = version_name(&times["t1"], b"build");
    let listed = names_in(&hp);
    assert!(
        listed.contains(b"inside.txt".as_slice()),
        "history{} should list the directory's inside.txt, lists {:?}",
        path.display(),
        show(&listed)
    );
    assert!(
        listed.contains(&file_version),
        "history{} should also hold the file version {:?} (the path was a file in t1), lists {:?}",
        path.display(),
        String::from_utf8_lossy(&file_version),
        show(&listed)
    );
    assert_eq!(
        read(&hp.join(OsStr::from_bytes(&file_version))),
        b"was a file\n"
    );
}

// ---------------------------------------------------------------- odd names

fn odd_names() -> Vec<Vec<u8>> {
    vec![
        b"caf\xe9 latin1.txt".to_vec(),
        b"\xff\xfe".to_vec(),
        b"line\nbreak".to_vec(),
        b" spaced  name ".to_vec(),
        "unicode-\u{e9}\u{1f600}".as_bytes().to_vec(),
    ]
}

/// Names that are not UTF-8, hold newlines or spaces come through the
/// history view byte for byte, in directory listings and version names.
#[test]
fn odd_names_in_the_history_view() {
    let repo = Repo::new();
    let (_src_dir, src) = open_source_dir();
    let dir = src.join(OsStr::from_bytes(b"dir \xc0\xaf\nodd"));
    mkdir(&dir);
    let names = odd_names();
    for (i, n) in names.iter().enumerate() {
        write_file(
            &dir.join(OsStr::from_bytes(n)),
            format!("first {i}\n").as_bytes(),
        );
    }
    ingest_named(&repo, "o1", &src);
    for (i, n) in names.iter().enumerate() {
        write_file(
            &dir.join(OsStr::from_bytes(n)),
            format!("second {i}\n").as_bytes(),
        );
    }
    ingest_named(&repo, "o2", &src);
    let times = snapshot_times(&repo);

    let mnt = Mount::new(&repo, &[]);
    assert_eq!(
        show(&names_in(&mnt.history(&src))),
        show(&bytes_set(&[b"dir \xc0\xaf\nodd"])),
        "the odd directory name"
    );
    let hd = mnt.history(&dir);
    let want: BTreeSet<Vec<u8>> = names.iter().cloned().collect();
    assert_eq!(show(&names_in(&hd)), show(&want), "odd file names");
    for (i, n) in names.iter().enumerate() {
        let vdir = hd.join(OsStr::from_bytes(n));
        let first = version_name(&times["o1"], n);
        let second = version_name(&times["o2"], n);
        assert_eq!(
            show(&names_in(&vdir)),
            show(&bytes_set(&[&first, &second])),
            "versions of {:?}",
            String::from_utf8_lossy(n)
        );
        assert_eq!(
            read(&vdir.join(OsStr::from_bytes(&first))),
            format!("first {i}\n").as_bytes()
        );
        assert_eq!(
            read(&vdir.join(OsStr::from_bytes(&second))),
            format!("second {i}\n").as_bytes()
        );
    }
}

/// `log` takes a non-UTF-8 path as bytes; `log --json` and `find --json`
/// answer with valid JSON (names that are not UTF-8 shown with U+FFFD, as
/// everywhere else in the JSON output) rather than failing.
#[test]
fn odd_names_in_log_and_find() {
    let repo = Repo::new();
    let (_src_dir, src) = open_source_dir();
    let names = odd_names();
    for (i, n) in names.iter().enumerate() {
        write_file(
            &src.join(OsStr::from_bytes(n)),
            format!("first {i}\n").as_bytes(),
        );
    }
    ingest_named(&repo, "o1", &src);
    for (i, n) in names.iter().enumerate() {
        write_file(
            &src.join(OsStr::from_bytes(n)),
            format!("second {i}\n").as_bytes(),
        );
    }
    ingest_named(&repo, "o2", &src);
    let times = snapshot_times(&repo);

    let mut problems = Vec::new();
    for n in &names {
        let path = src.join(OsStr::from_bytes(n));
        let out = repo
            .cmd()
            .arg("log")
            .arg("--json")
            .arg(&path)
            .output()
            .expect("spawn log");
        if !out.status.success() {
            problems.push(describe(&format!("log --json {path:?}"), &out));
            continue;
        }
        let log = parse_json("log --json", &out.stdout);
        if json_str(&log, "path") != lossy(&path) {
            problems.push(format!("log --json {path:?}: path field {:?}", log["path"]));
        }
        let got: Vec<String> = json_array(&log, "versions")
            .iter()
            .map(|v| json_str(v, "name").to_string())
            .collect();
        let want: Vec<String> = ["o1", "o2"]
            .iter()
            .map(|s| String::from_utf8_lossy(&version_name(&times[*s], n)).into_owned())
            .collect();
        if got != want {
            problems.push(format!(
                "log --json {path:?}: versions {got:?}, expected {want:?}"
            ));
        }
        if events(&log) != pairs(&[("o1", "created"), ("o2", "changed")]) {
            problems.push(format!("log --json {path:?}: events {:?}", events(&log)));
        }
        // The text form must work too.
        let out = repo
            .cmd()
            .arg("log")
            .arg(&path)
            .output()
            .expect("spawn log");
        if !out.status.success() {
            problems.push(describe(&format!("log {path:?}"), &out));
        }
    }

    // find: every name, by a glob on the directory's path.
    let glob = format!("{}/*", src.display());
    let out = repo
        .cmd()
        .args(["find", "--json"])
        .arg(&glob)
        .output()
        .expect("spawn find");
    if out.status.success() {
        let v = parse_json("find --json", &out.stdout);
        let got: BTreeSet<String> = v
            .as_array()
            .expect("find --json array")
            .iter()
            .map(|m| json_str(m, "path").to_string())
            .collect();
        let want: BTreeSet<String> = names
            .iter()
            .map(|n| lossy(&src.join(OsStr::from_bytes(n))))
            .collect();
        if got != want {
            problems.push(format!(
                "find --json {glob:?}: paths {got:?}, expected {want:?}"
            ));
        }
    } else {
        problems.push(describe(&format!("find --json {glob:?}"), &out));
    }
    // find in text form, by a name glob.
    let out = repo
        .cmd()
        .args(["find", "line*"])
        .output()
        .expect("spawn find");
    if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("line") {
        problems.push(describe("find line*", &out));
    }
    // A name glob reaching a non-UTF-8 name.
    let out = repo
        .cmd()
        .args(["find", "--json", "caf*"])
        .output()
        .expect("spawn find");
    if out.status.success() {
        let v = parse_json("find --json caf*", &out.stdout);
        let n = v.as_array().map(Vec::len).unwrap_or(0);
        if n != 1 {
            problems.push(format!("find --json caf* should find 1 path, found {v}"));
        }
    } else {
        problems.push(describe("find --json caf*", &out));
    }
    assert!(
        problems.is_empty(),
        "odd names in log/find:\n{}",
        problems.join("\n\n")
    );
}

// ---------------------------------------------------------------- permissions

/// With --allow-other, the versions of a 0600 root-owned file cannot be
/// listed or read by another user; those of a 0644 file can.
#[test]
fn private_file_versions_are_closed_to_other_users() {
    let repo = Repo::new();
    let (_src_dir, src) = open_source_dir();
    let secret = src.join("secret");
    let public = src.join("public");
    write_file(&secret, b"root only v1\n");
    chmod(&secret, 0o600);
    write_file(&public, b"anyone v1\n");
    chmod(&public, 0o644);
    ingest_named(&repo, "x1", &src);
    write_file(&secret, b"root only v2\n");
    write_file(&public, b"anyone v2\n");
    ingest_named(&repo, "x2", &src);
    let times = snapshot_times(&repo);

    let mnt = Mount::new(&repo, &["--allow-other"]);
    // The parent directory is open to everyone.
    let out = as_nobody(&[
        OsStr::new("ls"),
        OsStr::new("-1"),
        mnt.history(&src).as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "nobody should list history{}\n{}",
        src.display(),
        describe("ls", &out)
    );
    let out = as_nobody(&[OsStr::new("ls"), mnt.history(&public).as_os_str()]);
    assert!(
        out.status.success(),
        "nobody should list the versions of a 0644 file\n{}",
        describe("ls", &out)
    );
    let listed = String::from_utf8_lossy(&out.stdout);
    for s in ["x1", "x2"] {
        let name = String::from_utf8(version_name(&times[s], b"public")).expect("utf-8");
        assert!(
            listed.contains(&name),
            "nobody's ls should show {name}:\n{listed}"
        );
    }
    let v1 = mnt
        .history(&public)
        .join(OsString::from_vec(version_name(&times["x1"], b"public")));
    let out = as_nobody(&[OsStr::new("cat"), v1.as_os_str()]);
    assert!(out.status.success(), "{}", describe("cat as nobody", &out));
    assert_eq!(out.stdout, b"anyone v1\n");

    let out = as_nobody(&[OsStr::new("ls"), mnt.history(&secret).as_os_str()]);
    assert!(
        !out.status.success(),
        "nobody must not list the versions of a 0600 root-owned file\n{}",
        describe("ls", &out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "expected Permission denied\n{}",
        describe("ls", &out)
    );
    let sv1 = mnt
        .history(&secret)
        .join(OsString::from_vec(version_name(&times["x1"], b"secret")));
    let out = as_nobody(&[OsStr::new("cat"), sv1.as_os_str()]);
    assert!(
        !out.status.success() && out.stdout.is_empty(),
        "nobody must not read a version of a 0600 root-owned file\n{}",
        describe("cat", &out)
    );
    // Root reads it.
    assert_eq!(read(&sv1), b"root only v1\n");
}

// ---------------------------------------------------------------- names

#[test]
fn reserved_snapshot_names_are_refused() {
    let repo = Repo::new();
    let (_src_dir, src) = open_source_dir();
    write_file(&src.join("f"), b"x\n");
    for name in ["latest", "history"] {
        let out = run_expect(&mut repo.ingest_cmd(&["--name", name], &[&src]), 1);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(name),
            "the refusal of --name {name} should name it:\n{err}"
        );
    }
    assert!(
        repo.snapshots().is_empty(),
        "a refused name must not leave a snapshot: {:?}",
        repo.snapshots()
    );
    // Names merely containing them are fine.
    ingest_named(&repo, "latest-but-one", &src);
    ingest_named(&repo, "history2", &src);
}

/// `mount --names gmt`: snapshot directories are @GMT-YYYY.MM.DD-HH.MM.SS of
/// the UTC start time (the next second free, for two made within one),
/// `latest` points at the newest, history/ is there.
#[test]
fn gmt_names_layout() {
    let repo = Repo::new();
    let (_src_dir, src) = open_source_dir();
    let file = src.join("doc.txt");
    write_file(&file, b"old\n");
    ingest_named(&repo, "monday", &src);
    write_file(&file, b"new\n");
    ingest_named(&repo, "tuesday", &src);
    let times = snapshot_times(&repo);
    let gmt = gmt_dirs(&times, &["monday", "tuesday"]);
    let (old, new) = (gmt["monday"].clone(), gmt["tuesday"].clone());

    let mnt = Mount::new(&repo, &["--names", "gmt"]);
    let root = names_in(&mnt.path);
    let want = bytes_set(&[old.as_bytes(), new.as_bytes(), b"history", b"latest"]);
    assert_eq!(show(&root), show(&want), "root of a --names gmt mount");
    let latest = fs::read_link(mnt.path.join("latest")).expect("readlink latest");
    assert_eq!(
        latest,
        Path::new(&new),
        "latest should point at the newest snapshot"
    );
    assert_eq!(read(&restored_path(&mnt.path.join(&old), &file)), b"old\n");
    assert_eq!(read(&restored_path(&mnt.path.join(&new), &file)), b"new\n");
    assert_eq!(
        read(&restored_path(&mnt.path.join("latest"), &file)),
        b"new\n"
    );
    let m = lstat(&mnt.path.join(&old));
    assert!(m.is_dir(), "{old} should be a directory");
    // Plain names are not served in this mode.
    assert!(
        !mnt.path.join("monday").exists(),
        "plain names in a gmt mount"
    );
    // history/ is unchanged.
    assert_eq!(
        show(&names_in(&mnt.history(&file))),
        show(&bytes_set(&[
            &version_name(&times["monday"], b"doc.txt"),
            &version_name(&times["tuesday"], b"doc.txt")
        ])),
        "history/ in a gmt mount"
    );
}

// ---------------------------------------------------------------- find

#[test]
fn find_lists_matches_across_snapshots() {
    let repo = Repo::new();
    let (_src_dir, src) = open_source_dir();
    for d in ["a", "b", "c"] {
        mkdir(&src.join(d));
    }
    write_file(&src.join("a/report.txt"), b"a one\n");
    write_file(&src.join("b/report.txt"), b"b one\n");
    write_file(&src.join("c/notes.md"), b"notes\n");
    mkdir(&src.join("a/deep/er"));
    write_file(&src.join("a/deep/er/report.txt"), b"deep\n");
    ingest_named(&repo, "f1", &src);
    write_file(&src.join("a/report.txt"), b"a two, longer\n");
    fs::remove_file(src.join("b/report.txt")).expect("rm");
    mkdir(&src.join("d"));
    write_file(&src.join("d/report.txt"), b"d\n");
    ingest_named(&repo, "f2", &src);
    let p = |rel: &str| lossy(&src.join(rel));

    // A name glob matches anywhere, with the snapshots holding each path.
    let got = find_json(&repo, &[], "report.txt");
    let want: BTreeMap<String, Vec<String>> = [
        (p("a/report.txt"), strings(&["f1", "f2"])),
        (p("a/deep/er/report.txt"), strings(&["f1", "f2"])),
        (p("b/report.txt"), strings(&["f1"])),
        (p("d/report.txt"), strings(&["f2"])),
    ]
    .into_iter()
    .collect();
    let seen: BTreeMap<String, Vec<String>> = got
        .iter()
        .map(|(k, v)| (k.clone(), json_str_list(v, "snapshots")))
        .collect();
    assert_eq!(seen, want, "find --json report.txt");
    for (path, m) in &got {
        assert_eq!(json_str(m, "type"), "file", "type of {path}: {m}");
    }
    assert_eq!(
        json_u64(&got[&p("a/report.txt")], "size"),
        14,
        "size of a/report.txt (newest): {}",
        got[&p("a/report.txt")]
    );
    assert_eq!(json_u64(&got[&p("b/report.txt")], "size"), 6);

    // --snapshot restricts to one snapshot.
    let got = find_json(&repo, &["--snapshot", "f1"], "report.txt");
    let seen: BTreeMap<String, Vec<String>> = got
        .iter()
        .map(|(k, v)| (k.clone(), json_str_list(v, "snapshots")))
        .collect();
    let want: BTreeMap<String, Vec<String>> = [
        (p("a/report.txt"), strings(&["f1"])),
        (p("a/deep/er/report.txt"), strings(&["f1"])),
        (p("b/report.txt"), strings(&["f1"])),
    ]
    .into_iter()
    .collect();
    assert_eq!(seen, want, "find --snapshot f1 --json report.txt");
    assert_eq!(
        json_u64(&got[&p("a/report.txt")], "size"),
        6,
        "with --snapshot f1, the size is f1's"
    );
    let got = find_json(&repo, &["--snapshot", "f2"], "*.md");
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        vec![p("c/notes.md")],
        "find --snapshot f2 *.md"
    );

    // Wildcards in names, and directories.
    let got = find_json(&repo, &[], "*.md");
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        vec![p("c/notes.md")]
    );
    let got = find_json(&repo, &[], "d");
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        vec![p("d")],
        "find d"
    );
    assert_eq!(json_str(&got[&p("d")], "type"), "dir");
    assert_eq!(json_str_list(&got[&p("d")], "snapshots"), strings(&["f2"]));

    // A glob with '/' matches whole absolute paths; '*' stays in one component.
    let glob = format!("{}/*/report.txt", src.display());
    let got = find_json(&repo, &[], &glob);
    assert_eq!(
        got.keys().cloned().collect::<BTreeSet<_>>(),
        [p("a/report.txt"), p("b/report.txt"), p("d/report.txt")]
            .into_iter()
            .collect::<BTreeSet<_>>(),
        "find {glob}"
    );
    let glob = format!("{}/a/**/report.txt", src.display());
    let got = find_json(&repo, &[], &glob);
    assert_eq!(
        got.keys().cloned().collect::<BTreeSet<_>>(),
        [p("a/report.txt"), p("a/deep/er/report.txt")]
            .into_iter()
            .collect::<BTreeSet<_>>(),
        "find {glob}"
    );
    let glob = format!("{}/b/*", src.display());
    let got = find_json(&repo, &[], &glob);
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        vec![p("b/report.txt")],
        "find {glob}"
    );
    // A relative path-glob matches no absolute path.
    let got = find_json(&repo, &[], "a/report.txt");
    assert!(got.is_empty(), "find a/report.txt (not absolute): {got:?}");
}

// ---------------------------------------------------------------- Samba

/// A running `smbd`, stopped on drop.
struct Smbd {
    child: Option<Child>,
    log_dir: PathBuf,
}

impl Smbd {
    fn start(conf: &Path, port: u16, log_dir: &Path) -> Smbd {
        // Its own process group: on SIGTERM the parent smbd signals its
        // whole group, which must not be the test harness's.
        let child = Command::new("smbd")
            .args(["--foreground", "--no-process-group", "-s"])
            .arg(conf)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn smbd: {e}"));
        let mut smbd = Smbd {
            child: Some(child),
            log_dir: log_dir.to_path_buf(),
        };
        let limit = Duration::from_secs(20);
        if let Err(status) = wait_listening(smbd.child.as_mut().expect("smbd"), port, limit) {
            panic!(
                "smbd did not listen on port {port} within {limit:?} (exit: {status:?})\n{}",
                smbd.logs()
            );
        }
        smbd
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        if let Ok(entries) = fs::read_dir(&self.log_dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("log.") {
                    text.push_str(&format!("--- {} ---\n", e.path().display()));
                    text.push_str(&String::from_utf8_lossy(
                        &fs::read(e.path()).unwrap_or_default(),
                    ));
                }
            }
        }
        text
    }
}

impl Drop for Smbd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = signal(child.id(), libc::SIGTERM);
            if wait_timeout(&mut child, Duration::from_secs(10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn smbclient(port: u16, command: &str) -> Output {
    Command::new("smbclient")
        .arg("//127.0.0.1/snap")
        .args(["-p", &port.to_string(), "-N", "-c", command])
        .stdin(Stdio::null())
        .output()
        .expect("spawn smbclient")
}

/// Samba's shadow_copy2 serves a `--names gmt` mount as the "Previous
/// Versions" of a live share, two snapshots of one second included. The
/// mount keeps each source at its absolute path (MNT/@GMT-.../<live
/// dir>/file), which `shadow:snapsharepath` maps: it is the share's path
/// inside each snapshot.
#[test]
fn samba_shadow_copy2_serves_previous_versions() {
    require_tool("smbd");
    require_tool("smbclient");
    let repo = Repo::new();
    let (_src_dir, live) = open_source_dir();
    let file = live.join("doc.txt");
    write_file(&file, b"old content of the document\n");
    chmod(&file, 0o644);
    ingest_named(&repo, "before", &live);
    write_file(&file, b"current content, edited since\n");
    ingest_named(&repo, "after", &live);
    // Made within one second, as a script may: the later one is offered at
    // the next second (forced here, so that the test always covers it).
    edit_catalog(
        &repo,
        "db.execute(\"UPDATE snapshots SET started_ns = 1 + \
         (SELECT started_ns FROM snapshots WHERE name = 'before') WHERE name = 'after'\")",
        &[],
    );
    let times = snapshot_times(&repo);
    let gmt = gmt_dirs(&times, &["before", "after"]);
    let (old, new) = (gmt["before"].clone(), gmt["after"].clone());

    let mnt = Mount::new(&repo, &["--names", "gmt", "--allow-other"]);

    let state_dir = tempdir();
    let state = canonical(state_dir.path());
    for d in ["private", "lock", "state", "cache", "pid", "ncalrpc"] {
        mkdir(&state.join(d));
    }
    let port = free_port();
    let share_in_snapshot = live
        .strip_prefix("/")
        .expect("absolute live dir")
        .display()
        .to_string();
    let conf = format!(
        "[global]
    smb ports = {port}
    bind interfaces only = yes
    interfaces = lo
    private dir = {s}/private
    lock directory = {s}/lock
    state directory = {s}/state
    cache directory = {s}/cache
    pid directory = {s}/pid
    ncalrpc dir = {s}/ncalrpc
    log file = {s}/log.%m
    log level = 2
    map to guest = Bad User
    server role = standalone server
    disable netbios = yes
    load printers = no
    printing = bsd
    printcap name = /dev/null
    disable spoolss = yes

[snap]
    path = {live}
    guest ok = yes
    read only = yes
    vfs objects = shadow_copy2
    shadow:snapdir = {mnt}
    shadow:snapsharepath = {share_in_snapshot}
    shadow:format = @GMT-%Y.%m.%d-%H.%M.%S
    shadow:sort = desc
    shadow:localtime = no
    shadow:snapdirseverywhere = no
",
        s = state.display(),
        live = live.display(),
        mnt = mnt.path.display(),
    );
    let conf_path = state.join("smb.conf");
    write_file(&conf_path, conf.as_bytes());
    let smbd = Smbd::start(&conf_path, port, &state);

    // The snapshots are offered as previous versions of the file.
    let out = smbclient(port, "allinfo doc.txt");
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && info.contains(&old) && info.contains(&new),
        "allinfo should list {old} and {new} as versions of doc.txt\n{}\n{}",
        describe("smbclient allinfo", &out),
        smbd.logs()
    );

    let out_dir = tempdir();
    let got_old = canonical(out_dir.path()).join("old");
    let got_cur = canonical(out_dir.path()).join("current");
    let out = smbclient(
        port,
        &format!("get \"{old}/doc.txt\" \"{}\"", got_old.display()),
    );
    assert!(
        out.status.success() && got_old.exists(),
        "get {old}/doc.txt should fetch the old version\n{}\n{}",
        describe("smbclient get", &out),
        smbd.logs()
    );
    assert_eq!(
        read(&got_old),
        b"old content of the document\n",
        "the previous version served by Samba"
    );
    let out = smbclient(port, &format!("get doc.txt \"{}\"", got_cur.display()));
    assert!(
        out.status.success(),
        "{}\n{}",
        describe("smbclient get doc.txt", &out),
        smbd.logs()
    );
    assert_eq!(
        read(&got_cur),
        b"current content, edited since\n",
        "the live file"
    );
    drop(smbd);
    drop(mnt);
}

/// A history directory of thousands of names comes to the kernel in many
/// batches: every name of the union appears exactly once, also when another
/// history directory is listed in between, and a new listing sees a
/// snapshot made meanwhile.
#[test]
fn large_history_directory_lists_every_name_once() {
    let repo = Repo::new();
    let (_src_dir, src) = open_source_dir();
    let big = src.join("big");
    let small = src.join("small");
    mkdir(&big);
    mkdir(&small);
    for i in 0..1500 {
        write_file(&big.join(format!("old-{i:04}")), b"x");
    }
    write_file(&small.join("one"), b"1");
    ingest_named(&repo, "s1", &src);
    for i in 0..1500 {
        fs::remove_file(big.join(format!("old-{i:04}"))).expect("rm");
        write_file(&big.join(format!("new-{i:04}")), b"y");
    }
    ingest_named(&repo, "s2", &src);

    let mnt = Mount::new(&repo, &[]);
    let expected: BTreeSet<Vec<u8>> = (0..1500)
        .flat_map(|i| [format!("old-{i:04}"), format!("new-{i:04}")])
        .map(String::into_bytes)
        .collect();
    // Two listings read side by side, a batch of each in turn.
    let mut a = fs::read_dir(mnt.history(&big)).expect("read_dir big");
    let mut b = fs::read_dir(mnt.history(&small)).expect("read_dir small");
    let mut seen = Vec::new();
    let mut small_names = Vec::new();
    loop {
        let mut progressed = false;
        for _ in 0..100 {
            match a.next() {
                Some(e) => {
                    seen.push(e.expect("entry").file_name().as_bytes().to_vec());
                    progressed = true;
                }
                None => break,
            }
        }
        if let Some(e) = b.next() {
            small_names.push(e.expect("entry").file_name().as_bytes().to_vec());
        }
        if !progressed {
            break;
        }
    }
    drop((a, b));
    let unique: BTreeSet<Vec<u8>> = seen.iter().cloned().collect();
    assert_eq!(
        seen.len(),
        unique.len(),
        "a name was listed twice in history{}",
        big.display()
    );
    assert_eq!(
        show(&unique),
        show(&expected),
        "history{} should list the union of both snapshots",
        big.display()
    );
    assert_eq!(small_names, vec![b"one".to_vec()]);

    // A snapshot made while mounted shows in the next listing.
    write_file(&big.join("newest"), b"z");
    ingest_named(&repo, "s3", &src);
    let listed = eventually(Duration::from_secs(5), || {
        names_in(&mnt.history(&big)).contains(b"newest".as_slice())
    });
    assert!(
        listed,
        "history{} should show a name added later",
        big.display()
    );
    mnt.finish();
}
