//! Bad input and hostile conditions: unreadable and vanishing files,
//! missing sources, unknown formats, a full disk, kills in
//! the middle of an ingest, and two ingests at once.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

/// The string sources recorded for a snapshot in `snapshots --json`.
fn sources_of(snapshot: &Value) -> Vec<PathBuf> {
    json_str_list(snapshot, "sources")
        .into_iter()
        .map(PathBuf::from)
        .collect()
}

/// Restores the whole snapshot and compares every source it records with
/// the tree on disk.
fn assert_snapshot_matches_sources(repo: &Repo, snapshot: &Value) {
    let id = json_str(snapshot, "id");
    assert_restores(repo, id, &sources_of(snapshot), &format!("snapshot {id}"));
}

#[test]
fn unreadable_entries_are_named_and_the_snapshot_is_still_made() {
    // We run as root, which reads anything. Run the ingest as root without
    // CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH instead: then mode 000
    // really is unreadable, while the repository (owned by root) stays
    // writable.
    require_tool("setpriv");
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    build_plain_tree(&root, 4, 2, 6, 10_000);
    write_file(&root.join("secret-file"), b"nobody may read this\n");
    chmod(&root.join("secret-file"), 0o000);
    mkdir(&root.join("locked-dir"));
    write_file(&root.join("locked-dir/inside"), b"behind a locked door\n");
    chmod(&root.join("locked-dir"), 0o000);
    // Names can be listed but not looked up.
    mkdir(&root.join("unsearchable-dir"));
    write_file(
        &root.join("unsearchable-dir/hidden"),
        b"cannot be stat'ed\n",
    );
    chmod(&root.join("unsearchable-dir"), 0o444);
    let repo = Repo::new();

    let mut cmd = Command::new("setpriv");
    cmd.args(["--bounding-set=-dac_override,-dac_read_search", "--"])
        .arg(snapfs_bin())
        .arg("--repo")
        .arg(&repo.path)
        .args(["ingest", "--json"])
        .arg(&root)
        .env_remove("SNAPFS_REPO")
        .stdin(Stdio::null());
    let out = run_expect(&mut cmd, 3);
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("secret-file"),
        "the unreadable file is not named:\n{stderr}"
    );
    assert!(
        stderr.contains("locked-dir"),
        "the unreadable directory is not named:\n{stderr}"
    );
    assert!(
        stderr.contains("unsearchable-dir"),
        "the directory whose entries cannot be looked up is not named:\n{stderr}"
    );
    let snap = Ingested::from_output(&out);
    assert_eq!(repo.snapshot_ids(), vec![snap.id.clone()]);

    let target_dir = tempdir();
    let target = canonical(target_dir.path()).join("out");
    repo.restore(&snap.id, &target);
    let restored = restored_path(&target, &root);
    for d in ["d00", "d01"] {
        assert_same_tree(&root.join(d), &restored.join(d));
    }
    chmod(&root.join("locked-dir"), 0o755);
}

/// Content of the churned file `name`: fixed per name, so any version of it
/// that lands in a snapshot has known bytes.
fn churn_content(name: &str) -> Vec<u8> {
    let seed = name
        .bytes()
        .fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
    random_bytes(seed, 20_000 + (seed % 50_000) as usize)
}

#[test]
fn files_vanishing_during_the_walk_do_not_break_the_snapshot() {
    let src_dir = tempdir();
    let base = canonical(src_dir.path());
    let root = base.join("src");
    let stable = root.join("stable");
    build_plain_tree(&stable, 8, 10, 400, 20_000);
    let churn = root.join("churn");
    let staging = base.join("staging");
    mkdir(&churn);
    mkdir(&staging);
    let files: Vec<String> = (0..60).map(|i| format!("f{i:03}")).collect();
    let dirs: Vec<String> = (0..10).map(|i| format!("dir{i:02}")).collect();
    for name in &files {
        write_file(&churn.join(name), &churn_content(name));
    }
    for d in &dirs {
        mkdir(&churn.join(d));
        for f in ["one", "two", "three"] {
            write_file(&churn.join(d).join(f), &churn_content(f));
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let churner = {
        let stop = Arc::clone(&stop);
        let (churn, staging, files, dirs) =
            (churn.clone(), staging.clone(), files.clone(), dirs.clone());
        thread::spawn(move || {
            let mut rng = Rng::new(99);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if rng.below(4) == 0 {
                    // A whole directory vanishes, then comes back complete.
                    let d = &dirs[rng.below(dirs.len() as u64) as usize];
                    let _ = fs::remove_dir_all(churn.join(d));
                    let fresh = staging.join(format!("d{n}"));
                    mkdir(&fresh);
                    for f in ["one", "two", "three"] {
                        write_file(&fresh.join(f), &churn_content(f));
                    }
                    thread::sleep(Duration::from_micros(rng.below(2000)));
                    let _ = fs::rename(&fresh, churn.join(d));
                    let _ = fs::remove_dir_all(&fresh);
                } else {
                    // A file vanishes, then comes back complete, as a new inode.
                    let name = &files[rng.below(files.len() as u64) as usize];
                    let _ = fs::remove_file(churn.join(name));
                    thread::sleep(Duration::from_micros(rng.below(2000)));
                    let fresh = staging.join(format!("f{n}"));
                    write_file(&fresh, &churn_content(name));
                    let _ = fs::rename(&fresh, churn.join(name));
                }
            }
        })
    };

    let repo = Repo::new();
    let mut made = Vec::new();
    for round in 0..4 {
        let out = repo
            .ingest_cmd(&[], &[&root])
            .output()
            .expect("spawn ingest");
        let code = out.status.code();
        eprintln!(
            "round {round}: exit {code:?}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            code == Some(0) || code == Some(3),
            "round {round}: vanishing files must not fail the ingest\n{}",
            describe("ingest", &out)
        );
        if code == Some(3) {
            let stderr = stderr_of(&out);
            assert!(
                stderr.contains("churn"),
                "round {round}: exit 3 without naming the files:\n{stderr}"
            );
        }
        made.push(Ingested::from_output(&out).id);
    }
    stop.store(true, Ordering::Relaxed);
    churner.join().expect("churn thread");

    let listed = repo.snapshot_ids();
    for id in &made {
        assert!(
            listed.contains(id),
            "snapshot {id} is not listed: {listed:?}"
        );
    }
    let target_dir = tempdir();
    let scratch = canonical(target_dir.path());
    for id in &made {
        let target = scratch.join(id);
        repo.restore(id, &target);
        let restored = restored_path(&target, &root);
        assert_same_tree(&stable, &restored.join("stable"));
        for p in walk(&restored.join("churn")) {
            let meta = fs::symlink_metadata(&p).expect("lstat");
            if meta.is_file() {
                let name = p.file_name().expect("name").to_str().expect("ascii name");
                assert!(
                    fs::read(&p).expect("read") == churn_content(name),
                    "snapshot {id}: {} has bytes that were never in that file",
                    p.display()
                );
            }
        }
    }
}

#[test]
fn missing_source_fails_and_writes_nothing() {
    let src_dir = tempdir();
    let base = canonical(src_dir.path());
    let good = base.join("good");
    build_plain_tree(&good, 5, 2, 4, 100_000);
    let repo = Repo::new();
    let first = repo.ingest(&[], &[&good]);

    let changed = base.join("changed");
    build_plain_tree(&changed, 6, 2, 4, 100_000);
    let missing = base.join("does-not-exist");
    let packs_before = repo.pack_files();
    let bytes_before = repo.packs_bytes();
    let out = run_expect(&mut repo.ingest_cmd(&[], &[&changed, &missing]), 1);
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("does-not-exist"),
        "the missing source is not named:\n{stderr}"
    );
    assert_eq!(
        repo.snapshot_ids(),
        vec![first.id.clone()],
        "a snapshot appeared"
    );
    assert_eq!(repo.pack_files(), packs_before, "packs were written");
    assert_eq!(repo.packs_bytes(), bytes_before, "packs were written");

    run_expect(&mut repo.ingest_cmd(&[], &[&missing]), 1);
    assert_eq!(repo.snapshot_ids(), vec![first.id]);
}

#[test]
fn repository_with_an_unknown_format_version_is_refused() {
    let src_dir = tempdir();
    let src = canonical(src_dir.path()).join("src");
    build_plain_tree(&src, 10, 1, 3, 1000);
    let repo = Repo::new();
    repo.ingest(&[], &[&src]);

    let config = repo.path.join("config");
    let text = fs::read_to_string(&config).expect("read REPO/config");
    assert!(
        text.lines().any(|l| l.trim() == "format = 2"),
        "REPO/config has no `format = 2` line:\n{text}"
    );
    let edited: String = text
        .lines()
        .map(|l| {
            if l.trim() == "format = 2" {
                "format = 99".to_string()
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    write_file(&config, edited.as_bytes());
    let packs_before = repo.pack_files();

    for args in [
        vec!["snapshots"],
        vec!["ingest", src.to_str().expect("utf-8")],
    ] {
        let out = run_expect(repo.cmd().args(&args), 1);
        let stderr = stderr_of(&out).to_lowercase();
        assert!(
            stderr.contains("99") && (stderr.contains("format") || stderr.contains("version")),
            "`snapfs {}` gives no clear message about format 99:\n{stderr}",
            args[0]
        );
    }
    assert_eq!(repo.pack_files(), packs_before, "packs were written");
    assert_eq!(
        fs::read_to_string(&config).expect("read"),
        edited,
        "config was rewritten"
    );
}

#[test]
fn catalog_from_a_newer_schema_is_refused() {
    let src_dir = tempdir();
    let src = canonical(src_dir.path()).join("src");
    build_plain_tree(&src, 11, 1, 3, 1000);
    let repo = Repo::new();
    repo.ingest(&[], &[&src]);

    let db = rusqlite::Connection::open(repo.path.join("catalog.db")).expect("open catalog");
    let version: i64 = db
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("read user_version");
    assert!(
        version > 0,
        "the catalog does not record its schema in user_version"
    );
    db.pragma_update(None, "user_version", version + 1000)
        .expect("set user_version");
    drop(db);

    let out = run_expect(repo.cmd().arg("snapshots"), 1);
    assert!(
        !out.stderr.is_empty(),
        "a newer catalog is refused without a message"
    );
    run_expect(repo.cmd().arg("ingest").arg(&src), 1);
}

#[test]
fn disk_full_while_writing_packs_leaves_the_repository_usable() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let fs_guard = Tmpfs::mount(&base.join("small-fs"), "40m");
    let repo_path = fs_guard.path.join("repo");
    run_ok(
        snapfs()
            .arg("--repo")
            .arg(&repo_path)
            .args(["init", "--encryption", "none"]),
    );
    let repo = Repo::at(&repo_path);

    let small = base.join("small");
    build_plain_tree(&small, 12, 2, 8, 256 * KIB);
    let first = repo.ingest(&["--name", "before-full"], &[&small]);

    let big = base.join("big");
    mkdir(&big);
    for i in 0..5u64 {
        write_random_file(&big.join(format!("random-{i}")), 1000 + i, 20 * MIB);
    }
    let out = run_expect(&mut repo.ingest_cmd(&[], &[&big]), 1);
    let stderr = stderr_of(&out).to_lowercase();
    assert!(
        stderr.contains("space"),
        "no word of the full disk:\n{stderr}"
    );

    let listed = repo.snapshots();
    assert_eq!(
        listed
            .iter()
            .map(|s| json_str(s, "id").to_string())
            .collect::<Vec<_>>(),
        vec![first.id.clone()],
        "a partial snapshot is listed"
    );
    assert_snapshot_matches_sources(&repo, &listed[0]);

    fs_guard.resize("400m");
    let second = repo.ingest(&[], &[&big]);
    assert_eq!(repo.snapshots().len(), 2);
    for s in repo.snapshots() {
        assert_snapshot_matches_sources(&repo, &s);
    }
    assert_ne!(second.id, first.id);
}

#[test]
fn sigkill_during_ingest_never_leaves_a_broken_repository() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let shared = base.join("shared");
    build_plain_tree(&shared, 13, 20, 400, 256 * KIB);
    for i in 0..4u64 {
        write_mixed_file(&shared.join(format!("large-{i}")), 500 + i, 8 * MIB);
    }
    let repo = Repo::new();
    let scratch = base.join("scratch");
    mkdir(&scratch);

    let mut rng = Rng::new(2024);
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut kills = 0;
    // How long the last uninterrupted ingest took: most kills are aimed
    // inside that span so that they land in the middle of the work, not
    // after it, however fast ingest is.
    let mut last_duration = Duration::from_millis(1500);
    for round in 0..12u64 {
        // New data every round, so every ingest has packs to write.
        let generation = base.join(format!("gen-{round:02}"));
        build_plain_tree(&generation, 7000 + round, 3, 12, 2 * MIB);
        let span_ms = if rng.below(3) == 0 {
            1500
        } else {
            (last_duration.as_millis() as u64 * 9 / 10).clamp(1, 1500)
        };
        let delay = Duration::from_millis(rng.below(span_ms));
        let mut cmd = repo.ingest_cmd(&[], &[&shared, &generation]);
        let what = format!("round {round}: an ingest after a kill");
        match run_killed_after(&mut cmd, delay, &what) {
            None => {
                kills += 1;
                eprintln!("round {round}: killed after {delay:?}");
            }
            Some(took) => {
                last_duration = took;
                eprintln!("round {round}: finished in {last_duration:?}");
            }
        }

        let listed = repo.snapshots();
        let ids: BTreeSet<String> = listed
            .iter()
            .map(|s| json_str(s, "id").to_string())
            .collect();
        assert!(
            ids.is_superset(&seen),
            "round {round}: snapshots disappeared: had {seen:?}, now {ids:?}"
        );
        for s in &listed {
            if !seen.contains(json_str(s, "id")) {
                assert_snapshot_matches_sources(&repo, s);
            }
        }
        seen = ids;
    }
    eprintln!(
        "sigkill loop: {kills} of 12 ingests killed, {} snapshots",
        seen.len()
    );
    assert!(
        kills >= 3,
        "only {kills} of 12 ingests were killed: the test proves little"
    );

    // Every snapshot still restores; check the per-round part of each.
    for s in repo.snapshots() {
        let id = json_str(&s, "id");
        let generation = sources_of(&s)
            .into_iter()
            .find(|p| {
                p.starts_with(&base)
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("gen-"))
            })
            .unwrap_or_else(|| panic!("snapshot without its generation source: {s}"));
        let target = scratch.join(format!("gen-of-{id}"));
        let spec = spec_of(id, &generation);
        repo.restore(&spec, &target);
        assert_same_tree(&generation, &target);
        fs::remove_dir_all(&target).expect("clean up");
    }

    // A clean ingest after all that succeeds and restores correctly.
    let last = base.join("gen-final");
    build_plain_tree(&last, 9999, 2, 6, MIB);
    let snap = repo.ingest(&["--name", "after-the-storm"], &[&shared, &last]);
    let listed = repo.snapshots();
    let s = listed
        .iter()
        .find(|s| json_str(s, "id") == snap.id)
        .expect("the final snapshot is listed");
    assert_snapshot_matches_sources(&repo, s);
}

#[test]
fn concurrent_ingests_into_one_repository_both_land_or_one_fails_clearly() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let a = base.join("a");
    let b = base.join("b");
    for (root, seed) in [(&a, 1u64), (&b, 2u64)] {
        build_plain_tree(root, seed, 4, 20, MIB);
        // The same large file in both: both writers meet the same chunks.
        write_random_file(&root.join("common.bin"), 4242, 24 * MIB);
    }
    let repo = Repo::new();
    let spawn = |src: &Path| {
        repo.ingest_cmd(&[], &[src])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ingest")
    };
    let ca = spawn(&a);
    let cb = spawn(&b);
    // Meanwhile a reader lists snapshots: writers must not lock it out.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        let repo_path = repo.path.clone();
        thread::spawn(move || {
            let mut listings = 0;
            while !stop.load(Ordering::Relaxed) {
                let out = snapfs()
                    .arg("--repo")
                    .arg(&repo_path)
                    .args(["snapshots", "--json"])
                    .output()
                    .expect("spawn snapshots");
                assert!(
                    out.status.success(),
                    "listing during concurrent ingests failed\n{}",
                    describe("snapshots", &out)
                );
                parse_json("snapshots --json", &out.stdout);
                listings += 1;
            }
            listings
        })
    };
    let outs = [
        (a.clone(), ca.wait_with_output().expect("wait a")),
        (b.clone(), cb.wait_with_output().expect("wait b")),
    ];
    stop.store(true, Ordering::Relaxed);
    let listings = reader.join().expect("a listing failed during the ingests");
    assert!(listings > 0);
    let mut succeeded = 0;
    for (src, out) in &outs {
        match out.status.code() {
            Some(0) => succeeded += 1,
            Some(1) => {
                assert!(
                    !out.stderr.is_empty(),
                    "a concurrent ingest failed without a message"
                );
                // The refused one must succeed once the repository is free.
                repo.ingest(&[], &[src]);
            }
            _ => panic!("{}", describe("concurrent ingest", out)),
        }
    }
    assert!(succeeded >= 1, "neither concurrent ingest succeeded");

    let listed = repo.snapshots();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for s in &listed {
        assert_snapshot_matches_sources(&repo, s);
    }
}

#[test]
fn restore_from_a_damaged_pack_fails_loudly_and_names_the_file() {
    let src_dir = tempdir();
    let base = canonical(src_dir.path());
    let good = base.join("good");
    build_plain_tree(&good, 50, 2, 6, 100_000);
    let repo = Repo::new();
    let first = repo.ingest(&[], &[&good]);
    let packs_before = repo.pack_files();

    // A second snapshot whose new data is one file: its new packs hold
    // (almost) nothing but that file's chunks.
    let victim_dir = base.join("victim-dir");
    mkdir(&victim_dir);
    let victim = victim_dir.join("victim.bin");
    write_random_file(&victim, 51, 6 * MIB);
    let second = repo.ingest(&[], &[&victim_dir]);
    let new_packs: Vec<PathBuf> = repo
        .pack_files()
        .difference(&packs_before)
        .cloned()
        .collect();
    let largest = new_packs
        .iter()
        .max_by_key(|p| fs::metadata(p).expect("stat pack").len())
        .expect("the second ingest wrote a pack");
    let mut bytes = fs::read(largest).expect("read pack");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    chmod(largest, 0o644);
    write_file(largest, &bytes);

    let target_dir = tempdir();
    let targets = canonical(target_dir.path());
    let out = repo
        .restore_cmd(&second.id, &targets.join("damaged"))
        .output()
        .expect("spawn restore");
    assert!(
        !out.status.success(),
        "restore of damaged data reported success\n{}",
        describe("restore", &out)
    );
    assert!(
        stderr_of(&out).contains("victim.bin"),
        "the damaged file is not named\n{}",
        describe("restore", &out)
    );
    let restored = restored_path(&targets.join("damaged"), &victim);
    if let Ok(data) = fs::read(&restored) {
        assert!(
            data.len() as u64 != 6 * MIB || data != fs::read(&victim).expect("read victim"),
            "restore failed yet wrote the right bytes"
        );
    }

    // Snapshots that do not use the damaged pack are unaffected.
    assert_restores(&repo, &first.id, &[&good], "beside the damaged pack");
}

#[test]
fn file_growing_during_ingest_is_stored_as_a_consistent_prefix() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    mkdir(&root);
    let log = root.join("growing.log");
    let mut expected = Vec::new();
    let mut rng = Rng::new(61);
    // The whole content the file will ever have, written in pieces.
    for i in 0..4000u32 {
        let mut line = format!("{i:06} ").into_bytes();
        line.extend(
            random_bytes(rng.next_u64(), 4000)
                .iter()
                .map(|b| b'a' + b % 26),
        );
        line.push(b'\n');
        expected.extend_from_slice(&line);
    }
    let start = 4 * MIB as usize;
    write_file(&log, &expected[..start]);
    write_random_file(&root.join("neighbour"), 62, 8 * MIB);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, log, expected) = (Arc::clone(&stop), log.clone(), expected.clone());
        thread::spawn(move || {
            use std::io::Write;
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(&log)
                .expect("open log");
            let mut at = start;
            while at < expected.len() && !stop.load(Ordering::Relaxed) {
                let end = (at + 64 * 1024).min(expected.len());
                f.write_all(&expected[at..end]).expect("append");
                at = end;
                thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let repo = Repo::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let out = repo
            .ingest_cmd(&[], &[&root])
            .output()
            .expect("spawn ingest");
        assert!(
            matches!(out.status.code(), Some(0) | Some(3)),
            "{}",
            describe("ingest of a growing file", &out)
        );
        ids.push(Ingested::from_output(&out).id);
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer thread");

    let target_dir = tempdir();
    let targets = canonical(target_dir.path());
    for id in &ids {
        let target = targets.join(id);
        repo.restore(id, &target);
        let got = fs::read(restored_path(&target, &log)).expect("restored log");
        assert!(
            got.len() >= start && got.len() <= expected.len() && got[..] == expected[..got.len()],
            "snapshot {id}: the growing file came back as {} bytes that are not a prefix of what was written",
            got.len()
        );
        let neighbour = root.join("neighbour");
        assert!(
            fs::read(restored_path(&target, &neighbour)).expect("restored neighbour")
                == fs::read(&neighbour).expect("read neighbour"),
            "snapshot {id}: neighbour differs"
        );
    }
}

#[test]
fn restore_over_a_killed_restore_completes_it() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    build_plain_tree(&root, 95, 8, 120, 600 * KIB);
    mkdir(&root.join("links"));
    fs::hard_link(root.join("d00/file-00000"), root.join("links/same")).expect("link");
    std::os::unix::fs::symlink("../d01", root.join("links/dir-link")).expect("symlink");
    chmod(&root.join("d02"), 0o555);
    let repo = Repo::new();
    let snap = repo.ingest(&[], &[&root]);

    let target_dir = tempdir();
    let targets = canonical(target_dir.path());
    let started = std::time::Instant::now();
    repo.restore(&snap.id, &targets.join("timing"));
    let full = started.elapsed();

    for (i, fraction) in [0.2, 0.5, 0.8].into_iter().enumerate() {
        let target = targets.join(format!("killed-{i}"));
        let mut child = repo
            .restore_cmd(&snap.id, &target)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn restore");
        kill_after(&mut child, full.mul_f64(fraction));
        // The same command again, over whatever the killed one left.
        repo.restore(&snap.id, &target);
        assert_same_tree(&root, &restored_path(&target, &root));
    }
    chmod(&root.join("d02"), 0o755);
}

#[test]
fn restore_onto_a_full_disk_fails_with_a_message() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let src = base.join("src");
    build_plain_tree(&src, 98, 2, 10, 2 * MIB);
    let repo = Repo::new();
    let snap = repo.ingest(&[], &[&src]);
    let small = Tmpfs::mount(&base.join("small-fs"), "8m");
    let out = run_expect(&mut repo.restore_cmd(&snap.id, &small.path.join("out")), 1);
    let stderr = stderr_of(&out).to_lowercase();
    assert!(
        stderr.contains("space"),
        "no word of the full disk:\n{stderr}"
    );
}
