//! `snapfs copy --to REPO2`: off-site copies end to end, to a local path and
//! over ssh to a real sshd on loopback.
//!
//! Each test checks what an administrator relies on: the second repository
//! is complete on its own (mount, restore, `verify --read-data`, even after
//! the first one is gone), repeated copies move only what is new, and an
//! interrupted copy (SIGKILL, a full disk, a dropped connection) leaves the
//! second repository sound and resumes without sending everything again.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

// ---------------------------------------------------------------- copy helpers

/// What `copy --json` reported.
#[derive(Debug)]
struct Copied {
    json: Value,
    copied: Vec<String>,
    present: u64,
    chunks_sent: u64,
    packs_sent: u64,
    bytes_sent: u64,
}

impl Copied {
    fn parse(out: &Output) -> Copied {
        let json = parse_json("copy --json", &out.stdout);
        let copied = json_str_list(&json, "snapshots_copied");
        assert!(
            json.get("seconds").and_then(Value::as_f64).is_some(),
            "copy --json has no numeric \"seconds\": {json}"
        );
        Copied {
            copied,
            present: json_u64(&json, "snapshots_present"),
            chunks_sent: json_u64(&json, "chunks_sent"),
            packs_sent: json_u64(&json, "packs_sent"),
            bytes_sent: json_u64(&json, "bytes_sent"),
            json,
        }
    }
}

/// `snapfs --repo SRC copy --json --to TO EXTRA...`.
fn copy_cmd(src: &Repo, to: impl AsRef<OsStr>, extra: &[&str]) -> Command {
    let mut cmd = src.cmd();
    cmd.arg("copy")
        .arg("--json")
        .arg("--to")
        .arg(to)
        .args(extra);
    cmd
}

/// Copies, expecting success, and returns the JSON summary.
fn copy_ok(src: &Repo, to: impl AsRef<OsStr>, extra: &[&str]) -> Copied {
    Copied::parse(&run_ok(&mut copy_cmd(src, to, extra)))
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Number of regular files under `dir` (0 if it is missing).
fn count_files(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => n += count_files(&e.path()),
            Ok(t) if t.is_file() => n += 1,
            _ => {}
        }
    }
    n
}

/// A small tree with the awkward parts (hard links, xattrs, odd names,
/// symlinks, a foreign owner) around `mib` MiB of incompressible files.
fn build_small_tree(root: &Path, seed: u64, mib: usize) {
    use std::os::unix::ffi::OsStrExt;
    build_plain_tree(&root.join("data"), seed, 4, mib, MIB);
    let odd = root.join("odd");
    mkdir(&odd);
    write_file(&odd.join(OsStr::from_bytes(b"latin1-caf\xe9")), b"one\n");
    write_file(&odd.join(OsStr::from_bytes(b"line\nbreak")), b"two\n");
    write_file(&odd.join(" leading space"), b"three\n");
    write_file(&odd.join("linked"), &random_bytes(seed ^ 1, 70_000));
    fs::hard_link(odd.join("linked"), root.join("data").join("also-linked")).expect("link");
    xattr::set(odd.join("linked"), "user.note", b"kept across copies").expect("setxattr");
    std::os::unix::fs::symlink("../data", odd.join("to-data")).expect("symlink");
    write_file(&odd.join("foreign"), b"owned by 1234:5678\n");
    lchown(&odd.join("foreign"), 1234, 5678);
    set_mtime(&odd.join("foreign"), 1_600_000_000, 123_456_789);
}

// ---------------------------------------------------------------- local copies

/// Two snapshots of the full fixture (hard links, xattrs, ACLs, odd names,
/// devices, a sparse file) copied to a new repository, which is then
/// mounted: every snapshot reads back identical to its sources.
#[test]
fn copy_then_mount_second_repository_matches_sources() {
    let src_dir = tempdir();
    let fixture = build_fixture(src_dir.path());
    let extra_dir = tempdir();
    let extra = canonical(extra_dir.path()).join("extra");
    build_small_tree(&extra, 11, 6);

    let repo = Repo::new();
    repo.ingest(&["--name", "fixture"], &[&fixture.root]);
    repo.ingest(&["--name", "fixture-and-extra"], &[&fixture.root, &extra]);

    let dst_dir = tempdir();
    let repo2 = Repo::at(&canonical(dst_dir.path()).join("offsite"));
    assert!(!repo2.path.exists());
    let c = copy_ok(&repo, &repo2.path, &[]);
    assert_eq!(
        sorted(c.copied.clone()),
        vec!["fixture".to_string(), "fixture-and-extra".to_string()],
        "{}",
        c.json
    );
    assert_eq!(c.present, 0, "{}", c.json);
    assert!(c.chunks_sent > 0 && c.packs_sent > 0, "{}", c.json);
    assert!(
        repo2.path.join("catalog.db").is_file(),
        "copy did not create the repository at {}",
        repo2.path.display()
    );
    // Only chunks are sent, never more than the source stores.
    assert!(
        c.bytes_sent <= repo.packs_bytes(),
        "bytes_sent {} exceeds the source's pack bytes {}: {}",
        c.bytes_sent,
        repo.packs_bytes(),
        c.json
    );
    assert_eq!(
        sorted(repo2.snapshot_names()),
        sorted(repo.snapshot_names())
    );

    let mnt = Mount::new(&repo2, &[]);
    for (name, sources) in [
        ("fixture", vec![fixture.root.clone()]),
        (
            "fixture-and-extra",
            vec![fixture.root.clone(), extra.clone()],
        ),
    ] {
        for src in sources {
            let seen = restored_path(&mnt.path.join(name), &src);
            let diff = rsync_diff(&src, &seen);
            assert!(
                diff.is_empty(),
                "{} in snapshot {name} of the copy, read through the mount, differs:\n{diff}\n--- mount stderr ---\n{}",
                src.display(),
                mnt.stderr_text()
            );
        }
    }
    drop(mnt);
}

/// The second repository stands alone: `verify --read-data` passes after
/// each copy, and everything restores after the first repository is gone.
#[test]
fn second_repository_verifies_and_restores_without_the_first() {
    let src_dir = tempdir();
    let fixture = build_fixture(src_dir.path());
    let more_dir = tempdir();
    let more = canonical(more_dir.path()).join("more");
    build_small_tree(&more, 23, 8);

    let repo = Repo::new();
    repo.ingest(&["--name", "monday"], &[&fixture.root]);
    let dst_dir = tempdir();
    let repo2 = Repo::at(&canonical(dst_dir.path()).join("offsite"));
    let first = copy_ok(&repo, &repo2.path, &[]);
    assert_eq!(first.copied, vec!["monday".to_string()], "{}", first.json);
    assert_verify_read_data_ok(&repo2, "after the first copy");

    repo.ingest(&["--name", "tuesday"], &[&fixture.root, &more]);
    let second = copy_ok(&repo, &repo2.path, &[]);
    assert_eq!(
        second.copied,
        vec!["tuesday".to_string()],
        "{}",
        second.json
    );
    assert_eq!(second.present, 1, "{}", second.json);
    // The fixture is unchanged: only `more` (8 MiB of random data and a few
    // small files) plus metadata is new.
    assert!(
        second.bytes_sent < 12 * MIB,
        "the incremental copy sent {} bytes for about 8 MiB of new data: {}",
        second.bytes_sent,
        second.json
    );
    assert_verify_read_data_ok(&repo2, "after the second copy");

    fs::remove_dir_all(&repo.path).expect("delete the first repository");
    drop(repo);
    assert_verify_read_data_ok(&repo2, "with the first repository deleted");
    assert_eq!(
        sorted(repo2.snapshot_names()),
        vec!["monday".to_string(), "tuesday".to_string()]
    );
    let when = "with the first repository deleted";
    assert_restores(&repo2, "monday", &[&fixture.root], when);
    assert_restores(&repo2, "tuesday", &[&fixture.root, &more], when);
    // A subtree restore works from the copy too (TARGET mirrors the path).
    let dir = tempdir();
    let sub = canonical(dir.path()).join("sub");
    let spec = format!("tuesday:{}", more.join("odd").display());
    repo2.restore(&spec, &sub);
    // (`odd/linked` has its second link outside the subtree, so compare
    // with rsync only: the restored file rightly has one link.)
    let diff = rsync_diff(&more.join("odd"), &sub);
    assert!(
        diff.is_empty(),
        "subtree restore from the copy differs:\n{diff}"
    );
}

/// A repeated copy moves nothing; after a small daily change and ingest the
/// next copy moves roughly that change, not the tree.
#[test]
fn repeated_copy_sends_nothing_and_increment_sends_only_the_change() {
    let src_dir = tempdir();
    let src = canonical(src_dir.path()).join("data");
    // 50 files of 1 MiB: 50 MiB of incompressible data.
    for i in 0..50u64 {
        let d = src.join(format!("d{}", i % 5));
        mkdir(&d);
        write_random_file(&d.join(format!("f{i:02}")), 1000 + i, MIB);
    }
    let repo = Repo::new();
    repo.ingest(&["--name", "day-1"], &[&src]);
    let dst_dir = tempdir();
    let repo2 = Repo::at(&canonical(dst_dir.path()).join("offsite"));

    let full = copy_ok(&repo, &repo2.path, &[]);
    assert_eq!(full.copied, vec!["day-1".to_string()], "{}", full.json);
    assert!(
        full.bytes_sent >= 50 * MIB,
        "a first copy of 50 MiB of random data sent only {} bytes: {}",
        full.bytes_sent,
        full.json
    );

    let again = copy_ok(&repo, &repo2.path, &[]);
    assert!(again.copied.is_empty(), "{}", again.json);
    assert_eq!(again.present, 1, "{}", again.json);
    assert_eq!(again.bytes_sent, 0, "{}", again.json);
    assert_eq!(again.chunks_sent, 0, "{}", again.json);
    assert_eq!(again.packs_sent, 0, "{}", again.json);

    // The daily change: one file rewritten (1 MiB), one small file added.
    write_random_file(&src.join("d3").join("f13"), 777_777, MIB);
    write_file(&src.join("d0").join("new-note.txt"), b"written on day 2\n");
    repo.ingest(&["--name", "day-2"], &[&src]);
    let inc = copy_ok(&repo, &repo2.path, &[]);
    assert_eq!(inc.copied, vec!["day-2".to_string()], "{}", inc.json);
    assert_eq!(inc.present, 1, "{}", inc.json);
    assert!(
        inc.bytes_sent > 0 && inc.bytes_sent < 3 * MIB,
        "after changing 1 MiB of a 50 MiB tree the copy sent {} bytes (expected about 1 MiB): {}",
        inc.bytes_sent,
        inc.json
    );

    let none = copy_ok(&repo, &repo2.path, &[]);
    assert!(none.copied.is_empty(), "{}", none.json);
    assert_eq!(none.present, 2, "{}", none.json);
    assert_eq!(none.bytes_sent, 0, "{}", none.json);

    assert_verify_read_data_ok(&repo2, "after the incremental copy");
    assert_restores(&repo2, "day-2", &[&src], "day 2");
}

/// `copy --to R2 NAME` copies that snapshot only; a later plain copy
/// brings the rest.
#[test]
fn named_snapshots_only() {
    let base = tempdir();
    let root = canonical(base.path());
    let (a, b, c) = (root.join("a"), root.join("b"), root.join("c"));
    build_plain_tree(&a, 1, 2, 6, 256 * KIB);
    build_plain_tree(&b, 2, 2, 6, 256 * KIB);
    build_plain_tree(&c, 3, 2, 6, 256 * KIB);
    let repo = Repo::new();
    repo.ingest(&["--name", "alpha"], &[&a]);
    let beta = repo.ingest(&["--name", "beta"], &[&b]);
    repo.ingest(&["--name", "gamma"], &[&c]);

    let dst_dir = tempdir();
    let repo2 = Repo::at(&canonical(dst_dir.path()).join("offsite"));
    let one = copy_ok(&repo, &repo2.path, &["beta"]);
    assert_eq!(one.copied, vec!["beta".to_string()], "{}", one.json);
    assert_eq!(one.present, 0, "{}", one.json);
    assert_eq!(repo2.snapshot_names(), vec!["beta".to_string()]);
    // Only beta's data went: about 1.5 MiB, not the 4.5 MiB of all three.
    assert!(
        one.bytes_sent < 3 * MIB,
        "copying only beta sent {} bytes: {}",
        one.bytes_sent,
        one.json
    );
    assert_restores(&repo2, "beta", &[&b], "beta alone");

    // Naming it again (by id prefix) finds it present and sends nothing.
    let prefix = &beta.id[..12];
    let again = copy_ok(&repo, &repo2.path, &[prefix]);
    assert!(again.copied.is_empty(), "{}", again.json);
    assert_eq!(again.present, 1, "{}", again.json);
    assert_eq!(again.bytes_sent, 0, "{}", again.json);

    // Two names at once.
    let two = copy_ok(&repo, &repo2.path, &["gamma", "alpha"]);
    assert_eq!(
        sorted(two.copied.clone()),
        vec!["alpha".to_string(), "gamma".to_string()],
        "{}",
        two.json
    );
    assert_eq!(
        sorted(repo2.snapshot_names()),
        vec!["alpha".to_string(), "beta".to_string(), "gamma".to_string()]
    );

    // A name the source lacks is an error that copies nothing.
    let dst3 = tempdir();
    let repo3 = canonical(dst3.path()).join("r3");
    let out = run_expect(&mut copy_cmd(&repo, &repo3, &["no-such-snapshot"]), 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-snapshot"),
        "the error should name the unknown snapshot:\n{err}"
    );
    if repo3.join("catalog.db").exists() {
        assert!(Repo::at(&repo3).snapshot_names().is_empty());
    }
}

/// SIGKILL at random moments during a copy of ~150 MiB of incompressible
/// data in 15 snapshots: after every kill the second repository opens,
/// verifies and restores every snapshot it lists; the final run completes
/// and, all runs together, about one copy's worth of data arrived.
#[test]
fn killed_copy_resumes_without_resending() {
    let seed = test_seed();
    eprintln!("killed_copy_resumes_without_resending: seed {seed}");
    let mut rng = Rng::new(seed);
    let base = tempdir();
    let root = canonical(base.path());
    let common = root.join("common");
    build_plain_tree(&common, 99, 2, 8, 64 * KIB);
    let repo = Repo::new();
    let mut sources: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for i in 0..15u64 {
        let part = root.join(format!("part-{i:02}"));
        build_plain_tree(&part, 500 + i, 2, 10, MIB);
        let name = format!("part-{i:02}");
        repo.ingest(&["--name", &name], &[&common, &part]);
        sources.push((name, vec![common.clone(), part]));
    }
    let source_pack_bytes = repo.packs_bytes();
    assert!(source_pack_bytes > 140 * MIB, "{source_pack_bytes}");

    let dst_dir = tempdir();
    let repo2 = Repo::at(&canonical(dst_dir.path()).join("offsite"));
    // The sender's own temporary files go here, away from other tests.
    let tmp = canonical(dst_dir.path()).join("tmp");
    mkdir(&tmp);

    let mut kills = 0;
    let mut final_run: Option<Copied> = None;
    let mut log = Vec::new();
    for iteration in 0..40 {
        let last = kills >= 12;
        let mut cmd = copy_cmd(&repo, &repo2.path, &[]);
        cmd.env("TMPDIR", &tmp)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let packs_before = count_files(&repo2.path.join("packs"));
        let started = Instant::now();
        let mut child = cmd.spawn().expect("spawn copy");
        if !last {
            // A random moment: either a random time, or just after the next
            // pack lands (while it is indexed, a snapshot committed, the
            // next one begun), whichever comes first.
            // The delay after a pack lands spans anywhere from its indexing
            // to the middle of the next one. Start-up (init of the target, its fsyncs) takes about a tenth
            // of a second on a quiet machine and several times that on a
            // loaded one: the window is wide enough that a kill can land
            // after the first pack whatever the load, and still mid-way
            // through start-up as often.
            let deadline = started + Duration::from_millis(rng.below(600));
            let after_pack = Duration::from_millis(if rng.below(2) == 0 {
                rng.below(4)
            } else {
                rng.below(80)
            });
            let mut exited = false;
            loop {
                if child.try_wait().expect("try_wait").is_some() {
                    exited = true;
                    break;
                }
                if Instant::now() >= deadline {
                    break;
                }
                if count_files(&repo2.path.join("packs")) > packs_before {
                    thread::sleep(after_pack);
                    break;
                }
                thread::sleep(Duration::from_millis(1));
            }
            if !exited {
                let _ = child.kill();
            }
        }
        let out = child.wait_with_output().expect("wait copy");
        let elapsed = started.elapsed();
        if out.status.code() == Some(0) {
            log.push(format!("run {iteration}: completed after {elapsed:?}"));
            final_run = Some(Copied::parse(&out));
            break;
        }
        assert!(
            out.status.code().is_none(),
            "run {iteration} failed on its own instead of being killed\n{}",
            describe("copy", &out)
        );
        kills += 1;
        let listed = if repo2.path.join("catalog.db").exists() {
            repo2.snapshot_names()
        } else {
            assert!(
                !repo2.path.exists() || count_files(&repo2.path.join("packs")) == 0,
                "after kill {kills}, {} holds packs but no catalog",
                repo2.path.display()
            );
            Vec::new()
        };
        log.push(format!(
            "run {iteration}: killed after {elapsed:?}; {} packs, {} snapshots in the copy",
            count_files(&repo2.path.join("packs")),
            listed.len()
        ));
        if listed.is_empty() && !repo2.path.join("catalog.db").exists() {
            continue;
        }
        let when = format!("after kill {kills} (seed {seed})\n{}", log.join("\n"));
        assert_verify_read_data_ok(&repo2, &when);
        for name in &listed {
            let srcs = &sources
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{when}: unexpected snapshot {name} in the copy"))
                .1;
            assert_restores(&repo2, name, srcs, &when);
        }
    }
    let log = log.join("\n");
    let final_run = final_run.unwrap_or_else(|| panic!("the copy never completed:\n{log}"));
    assert!(
        kills >= 10,
        "the copy completed after only {kills} kills; the test wants at least 10:\n{log}"
    );
    assert_eq!(
        sorted(repo2.snapshot_names()),
        sorted(sources.iter().map(|s| s.0.clone()).collect()),
        "{log}"
    );
    assert_verify_read_data_ok(&repo2, &format!("after the final run\n{log}"));
    for (name, srcs) in &sources {
        assert_restores(&repo2, name, srcs, &format!("after the final run\n{log}"));
    }
    // Resumed, not restarted: what arrived over all runs is about one copy.
    let arrived = repo2.packs_bytes();
    assert!(
        arrived < source_pack_bytes * 3 / 2,
        "over {kills} kills the copy stored {arrived} bytes of packs for a source of \
         {source_pack_bytes}: interrupted work was sent again\n{log}"
    );
    assert!(
        final_run.bytes_sent < source_pack_bytes,
        "the final run sent {} bytes, a full copy's worth ({source_pack_bytes}): it did not resume: {}\n{log}",
        final_run.bytes_sent,
        final_run.json
    );
    eprintln!("{log}");
}

/// A killed copy leaves no partial packs behind in the temporary directory
/// it used (a nightly copy that is killed now and then must not fill /tmp).
#[test]
fn killed_copy_leaves_no_temporary_files_behind() {
    let base = tempdir();
    let root = canonical(base.path());
    let data = root.join("data");
    build_plain_tree(&data, 77, 2, 40, MIB);
    let repo = Repo::new();
    repo.ingest(&["--name", "big"], &[&data]);
    let dst_dir = tempdir();
    let repo2 = Repo::at(&canonical(dst_dir.path()).join("offsite"));
    let tmp = canonical(dst_dir.path()).join("tmp");
    mkdir(&tmp);

    // Kill while the first pack is being filled (the sender's temporary
    // pack holds data), then finish with a second run.
    let mut cmd = copy_cmd(&repo, &repo2.path, &[]);
    cmd.env("TMPDIR", &tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn copy");
    let deadline = Instant::now() + Duration::from_secs(20);
    while dir_bytes(&tmp) < 4 * MIB
        && Instant::now() < deadline
        && child.try_wait().expect("try_wait").is_none()
    {
        thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let status = child.wait().expect("wait");
    assert!(
        status.code().is_none(),
        "the copy finished ({status}) before it could be killed with a partial pack"
    );
    let mut cmd = copy_cmd(&repo, &repo2.path, &[]);
    cmd.env("TMPDIR", &tmp);
    let done = Copied::parse(&run_ok(&mut cmd));
    assert_eq!(done.copied, vec!["big".to_string()], "{}", done.json);
    let left: Vec<String> = walk(&tmp)
        .iter()
        .filter_map(|p| {
            let m = fs::symlink_metadata(p).ok()?;
            m.is_file()
                .then(|| format!("{} ({} bytes)", p.display(), m.len()))
        })
        .collect();
    assert!(
        left.is_empty(),
        "after a killed copy and a completed one, the copy's temporary directory ($TMPDIR={}) still holds:\n{}",
        tmp.display(),
        left.join("\n")
    );
}

/// Three snapshots `part-0`..`part-2` of small trees under `root` (seeds
/// `seed`.., `files` files of 1 MiB each in two directories).
fn ingest_three_parts(repo: &Repo, root: &Path, seed: u64, files: usize) -> Vec<PathBuf> {
    (0..3u64)
        .map(|i| {
            let part = root.join(format!("part-{i}"));
            build_plain_tree(&part, seed + i, 2, files, MIB);
            repo.ingest(&["--name", &format!("part-{i}")], &[&part]);
            part
        })
        .collect()
}

/// A copy that ran out of space said so, and did not panic.
fn assert_says_disk_full(out: &Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("No space left on device") || err.to_lowercase().contains("disk is full"),
        "{what} should say the disk is full:\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// REPO2 holds exactly the three parts, verifies, and restores each.
fn assert_holds_all_parts(repo2: &Repo, parts: &[PathBuf], what: &str) {
    assert_eq!(
        sorted(repo2.snapshot_names()),
        vec![
            "part-0".to_string(),
            "part-1".to_string(),
            "part-2".to_string()
        ]
    );
    assert_verify_read_data_ok(repo2, what);
    for (i, part) in parts.iter().enumerate() {
        assert_restores(repo2, format!("part-{i}"), &[part], what);
    }
}

/// REPO2 on a small tmpfs: the copy fails with exit 1 and says the disk is
/// full; what arrived still verifies; after the filesystem grows the copy
/// completes.
#[test]
fn full_disk_fails_cleanly_and_copy_completes_after_growing() {
    let base = tempdir();
    let repo = Repo::new();
    let parts = ingest_three_parts(&repo, &canonical(base.path()), 300, 16);
    // About 48 MiB to copy onto 28 MiB.
    let fs_dir = tempdir();
    let small = Tmpfs::mount(&canonical(fs_dir.path()).join("small"), "28m");
    let repo2 = Repo::at(&small.path.join("offsite"));

    let out = run_expect(&mut copy_cmd(&repo, &repo2.path, &[]), 1);
    assert_says_disk_full(&out, "the failed copy");
    let got = repo2.snapshot_names();
    assert!(
        got.len() < 3,
        "all three snapshots were copied onto a filesystem too small for them: {got:?}"
    );
    assert_verify_read_data_ok(&repo2, "after the disk filled up");
    for name in &got {
        let i: usize = name.trim_start_matches("part-").parse().expect("part-N");
        assert_restores(&repo2, name, &parts[i..=i], "after the disk filled up");
    }

    small.resize("160m");
    let done = copy_ok(&repo, &repo2.path, &[]);
    assert_eq!(
        done.copied.len() + got.len(),
        3,
        "after growing the filesystem: {}",
        done.json
    );
    assert_eq!(done.present as usize, got.len(), "{}", done.json);
    assert_holds_all_parts(&repo2, &parts, "after the copy completed");
    drop(repo2);
    drop(small);
}

// ---------------------------------------------------------------- over ssh

/// Copies to the far repository at `remote` through this sshd.
impl Sshd {
    fn copy_cmd(&self, src: &Repo, remote: &Path, names: &[&str]) -> Command {
        let opts = self.options();
        let mut extra: Vec<&str> = opts.iter().map(String::as_str).collect();
        extra.extend_from_slice(names);
        copy_cmd(src, self.url(remote), &extra)
    }

    fn copy_ok(&self, src: &Repo, remote: &Path) -> Copied {
        let mut cmd = self.copy_cmd(src, remote, &[]);
        let what = format!("{cmd:?}");
        let out = cmd.output().expect("spawn copy over ssh");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}\n--- sshd log ---\n{}",
            describe(&what, &out),
            self.log()
        );
        Copied::parse(&out)
    }
}

/// A copy to `ssh://root@127.0.0.1:PORT/...` through a real sshd: the far
/// repository is created, holds identical snapshots, and a second copy
/// sends nothing.
#[test]
fn copy_over_ssh_to_a_real_sshd() {
    let sshd = Sshd::start();
    let base = tempdir();
    let root = canonical(base.path());
    let tree = root.join("tree");
    build_small_tree(&tree, 5, 12);
    let repo = Repo::new();
    repo.ingest(&["--name", "first"], &[&tree]);
    write_random_file(&tree.join("data").join("added"), 8, 3 * MIB);
    repo.ingest(&["--name", "second"], &[&tree]);

    let far_dir = tempdir();
    let far = canonical(far_dir.path()).join("repo2");
    let c = sshd.copy_ok(&repo, &far);
    assert_eq!(
        c.copied,
        vec!["first".to_string(), "second".to_string()],
        "{}",
        c.json
    );
    assert!(c.bytes_sent >= 10 * MIB, "{}", c.json);
    let repo2 = Repo::at(&far);
    assert_eq!(repo2.snapshot_names(), vec!["first", "second"]);
    assert_verify_read_data_ok(&repo2, "after a copy over ssh");
    assert_restores(&repo2, "second", &[&tree], "over ssh");
    {
        let mnt = Mount::new(&repo2, &[]);
        let diff = rsync_diff(&tree, &restored_path(&mnt.path.join("second"), &tree));
        assert!(
            diff.is_empty(),
            "the copy made over ssh, read through the mount, differs:\n{diff}"
        );
    }

    let again = sshd.copy_ok(&repo, &far);
    assert!(again.copied.is_empty(), "{}", again.json);
    assert_eq!(again.present, 2, "{}", again.json);
    assert_eq!(again.bytes_sent, 0, "{}", again.json);

    // An incremental copy over ssh sends about the change.
    write_random_file(&tree.join("data").join("added-later"), 9, MIB);
    repo.ingest(&["--name", "third"], &[&tree]);
    let inc = sshd.copy_ok(&repo, &far);
    assert_eq!(inc.copied, vec!["third".to_string()], "{}", inc.json);
    assert!(
        inc.bytes_sent > 0 && inc.bytes_sent < 3 * MIB,
        "{}",
        inc.json
    );
    assert_restores(&repo2, "third", &[&tree], "over ssh, third");
}

/// SIGKILL of the local `snapfs copy` while it talks to the far side over
/// ssh: the far repository stays sound and a rerun completes without
/// sending everything again.
#[test]
fn killed_copy_over_ssh_resumes() {
    let sshd = Sshd::start();
    let mut rng = Rng::new(test_seed() ^ 0x55);
    let base = tempdir();
    let root = canonical(base.path());
    let repo = Repo::new();
    let mut parts = Vec::new();
    for i in 0..6u64 {
        let part = root.join(format!("part-{i}"));
        build_plain_tree(&part, 40 + i, 2, 10, MIB);
        repo.ingest(&["--name", &format!("part-{i}")], &[&part]);
        parts.push(part);
    }
    let far_dir = tempdir();
    let far = canonical(far_dir.path()).join("repo2");
    let repo2 = Repo::at(&far);
    let sender_tmp = canonical(far_dir.path()).join("sender-tmp");
    mkdir(&sender_tmp);

    let mut log = Vec::new();
    for round in 0..4 {
        let packs_before = count_files(&far.join("packs"));
        let mut cmd = sshd.copy_cmd(&repo, &far, &[]);
        // Keep what a killed sender leaves in its temporary directory
        // (see killed_copy_leaves_no_temporary_files_behind) out of /tmp.
        cmd.env("TMPDIR", &sender_tmp)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn copy over ssh");
        // Odd rounds: a random moment in the first pack cycle (connecting,
        // packing, streaming a pack). Even rounds: just after a pack lands.
        let deadline = Instant::now()
            + if round % 2 == 1 {
                Duration::from_millis(rng.below(250))
            } else {
                Duration::from_secs(30)
            };
        while count_files(&far.join("packs")) <= packs_before
            && Instant::now() < deadline
            && child.try_wait().expect("try_wait").is_none()
        {
            thread::sleep(Duration::from_millis(5));
        }
        if round % 2 == 0 {
            thread::sleep(Duration::from_millis(rng.below(60)));
        }
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait");
        log.push(format!(
            "round {round}: {} ; {} packs at the far end",
            out.status,
            count_files(&far.join("packs"))
        ));
        if out.status.success() {
            break;
        }
        // The far `snapfs serve` notices the lost connection and exits,
        // releasing its lock; reading the repository must work meanwhile.
        if far.join("catalog.db").exists() {
            let names = repo2.snapshot_names();
            log.push(format!("  far snapshots: {names:?}"));
        }
    }
    let log = log.join("\n");
    let done = sshd.copy_ok(&repo, &far);
    assert_eq!(
        done.copied.len() as u64 + done.present,
        6,
        "{}\n{log}",
        done.json
    );
    assert!(
        done.present > 0 || done.bytes_sent < repo.packs_bytes() * 3 / 4,
        "the rerun after kills sent {} of {} bytes with nothing present: it did not resume\n{log}",
        done.bytes_sent,
        repo.packs_bytes()
    );
    assert_verify_read_data_ok(&repo2, &format!("after kills over ssh\n{log}"));
    assert_eq!(
        sorted(repo2.snapshot_names()),
        (0..6).map(|i| format!("part-{i}")).collect::<Vec<_>>()
    );
    assert!(
        repo2.packs_bytes() < repo.packs_bytes() * 3 / 2,
        "the far repository holds {} bytes of packs for a source of {}\n{log}",
        repo2.packs_bytes(),
        repo.packs_bytes()
    );
    for (i, part) in parts.iter().enumerate() {
        assert_restores(&repo2, format!("part-{i}"), &[part], "after kills over ssh");
    }
    let again = sshd.copy_ok(&repo, &far);
    assert_eq!(again.bytes_sent, 0, "{}", again.json);
    eprintln!("{log}\nrerun: {}", done.json);
}

/// The far repository's disk fills up during a copy over ssh: the copy
/// fails with exit 1 and says so, the far repository still verifies, and
/// once the far filesystem grows the copy completes.
#[test]
fn full_remote_disk_over_ssh_fails_cleanly_and_resumes() {
    let sshd = Sshd::start();
    let base = tempdir();
    let repo = Repo::new();
    let parts = ingest_three_parts(&repo, &canonical(base.path()), 600, 12);
    let fs_dir = tempdir();
    let small = Tmpfs::mount(&canonical(fs_dir.path()).join("far"), "20m");
    let far = small.path.join("repo2");
    let repo2 = Repo::at(&far);

    let mut cmd = sshd.copy_cmd(&repo, &far, &[]);
    let out = run_expect(&mut cmd, 1);
    assert_says_disk_full(&out, "a copy onto a full far disk");
    let got = repo2.snapshot_names();
    assert!(got.len() < 3, "{got:?}");
    assert_verify_read_data_ok(&repo2, "after the far disk filled up");

    small.resize("128m");
    let done = sshd.copy_ok(&repo, &far);
    assert_eq!(done.present as usize, got.len(), "{}", done.json);
    assert_holds_all_parts(&repo2, &parts, "after the copy over ssh completed");
    drop(repo2);
    drop(small);
}
