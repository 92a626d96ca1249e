//! Repository format 2 end to end: file times from any year, owner names,
//! and directories stored in pages, checked against a model of the
//! source over many snapshots.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use snapfs::format::record::Owners;

use crate::util::*;

/// Broke: `mtime_ns` was one i64 of nanoseconds, which ends in 2262, so a
/// file dated 2300 came back dated 1901. Times before 1970 and the last
/// nanosecond of a second must come back too, through the mount and restore.
#[test]
fn files_dated_1901_1969_and_2300_round_trip_through_ingest_mount_and_restore() {
    let dir = tempdir();
    let src = canonical(dir.path()).join("src");
    mkdir(&src);
    let times: [(&str, i64, i64); 4] = [
        ("from-1901", -2_147_000_000, 0),
        ("last-nanosecond-of-1969", -1, 999_999_999),
        ("from-2300", 10_413_792_000, 123_456_789),
        ("from-2262-and-after", 9_300_000_000, 1),
    ];
    for (name, sec, nsec) in times {
        let p = src.join(name);
        write_file(&p, name.as_bytes());
        set_mtime(&p, sec, nsec);
        let m = fs::symlink_metadata(&p).expect("stat source");
        assert_eq!(
            (m.mtime(), m.mtime_nsec()),
            (sec, nsec),
            "{name}: the source file system cannot hold it"
        );
    }
    let repo = Repo::new();
    repo.ingest(&["--name", "times"], &[&src]);

    let mount = Mount::new(&repo, &[]);
    let shown = mount.source_in("times", &src);
    let scratch = tempdir();
    let target = canonical(scratch.path()).join("restored");
    repo.restore(spec_of("times", &src), &target);
    for (name, sec, nsec) in times {
        for (how, p) in [("mount", shown.join(name)), ("restore", target.join(name))] {
            let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{how} {name}: {e}"));
            assert_eq!(
                (m.mtime(), m.mtime_nsec()),
                (sec, nsec),
                "{how}: {name} came back with another time"
            );
        }
    }
    mount.finish();
}

fn owners_of(repo: &Repo, snapshot: &str) -> Owners {
    let rows = query_catalog(
        repo,
        "SELECT owners FROM snapshots WHERE name = CAST(? AS TEXT)",
        &[snapshot.as_bytes()],
    );
    Owners::from_bytes(&unhex(&rows[0][0])).expect("owner names decode")
}

/// A snapshot taken where id 4242 was called `nobody` restores its files to
/// this machine's `nobody`; `--numeric-owner` keeps 4242; ids without a
/// name here or there keep their number.
#[test]
fn owner_names_map_on_restore_and_numeric_owner_keeps_ids() {
    let dir = tempdir();
    let src = canonical(dir.path()).join("src");
    mkdir(&src);
    write_file(&src.join("theirs"), b"owned elsewhere\n");
    lchown(&src.join("theirs"), 4242, 4242);
    write_file(&src.join("unnamed"), b"no name anywhere\n");
    lchown(&src.join("unnamed"), 4343, 4343);
    write_file(&src.join("root-owned"), b"root\n");
    let repo = Repo::new();
    repo.ingest(&["--name", "s"], &[&src]);
    // This machine names root and nobody else among these ids.
    let recorded = owners_of(&repo, "s");
    assert_eq!(recorded.user(0), Some(&b"root"[..]), "{recorded:?}");
    assert_eq!(recorded.user(4242), None, "{recorded:?}");

    // The machine the snapshot came from called 4242 nobody/nogroup.
    let elsewhere = Owners {
        users: vec![(0, b"root".to_vec()), (4242, b"nobody".to_vec())],
        groups: vec![(0, b"root".to_vec()), (4242, b"nogroup".to_vec())],
    };
    edit_catalog(
        &repo,
        "n = db.execute('UPDATE snapshots SET owners = ?', (argv[0],)).rowcount\n\
         assert n == 1, n",
        &[&elsewhere.to_bytes()],
    );
    let nobody = id_of("-u", "nobody");
    let nogroup = id_of("-g", "nobody");
    let scratch = tempdir();
    let by_name = canonical(scratch.path()).join("by-name");
    repo.restore(spec_of("s", &src), &by_name);
    let owner = |p: &Path| {
        let m = fs::symlink_metadata(p).expect("stat restored");
        (m.uid(), m.gid())
    };
    assert_eq!(owner(&by_name.join("theirs")), (nobody, nogroup));
    assert_eq!(owner(&by_name.join("unnamed")), (4343, 4343));
    assert_eq!(owner(&by_name.join("root-owned")), (0, 0));

    let numeric = canonical(scratch.path()).join("numeric");
    run_ok(
        repo.cmd()
            .args(["restore", "--numeric-owner"])
            .arg(spec_of("s", &src))
            .arg(&numeric),
    );
    assert_eq!(owner(&numeric.join("theirs")), (4242, 4242));
    assert_eq!(owner(&numeric.join("unnamed")), (4343, 4343));
}

/// `id -u nobody` and the like, as this machine answers.
fn id_of(flag: &str, name: &str) -> u32 {
    let out = tool("id", &[flag.as_ref(), name.as_ref()]);
    stdout_of(&out).trim().parse().expect("a numeric id")
}

fn page_rows(repo: &Repo) -> u64 {
    query_catalog(repo, "SELECT COUNT(*) FROM pages", &[])[0][0]
        .parse()
        .expect("a count")
}

/// Broke: every changed directory re-inserted one catalog row per entry,
/// so one changed file in a directory of 20,000 cost 20,000 rows a day.
/// Now it costs the page that holds it and the pages above it.
#[test]
fn a_changed_entry_in_a_20000_entry_directory_adds_one_page_and_its_path() {
    let dir = tempdir();
    let src = canonical(dir.path()).join("src");
    let big = src.join("big");
    mkdir(&big);
    for i in 0..20_000 {
        write_file(
            &big.join(format!("mail-{i:06}")),
            format!("{i}\n").as_bytes(),
        );
    }
    let repo = Repo::new();
    repo.ingest(&["--name", "day1"], &[&src]);
    let before = page_rows(&repo);
    assert!(before > 200, "{before} pages for 20,000 entries");
    write_file(&big.join("mail-012345"), b"changed\n");
    repo.ingest(&["--name", "day2"], &[&src]);
    let after = page_rows(&repo);
    // The leaf, at most two pages on each of the two index levels above
    // it in `big` (a leaf's new hash can move an index page's end), and
    // one page for each directory above `big` up to the snapshot's root.
    let depth = big.components().count() as u64;
    assert!(
        after - before <= 1 + 2 * 2 + (depth - 1),
        "one changed entry added {} pages (depth {depth})",
        after - before
    );
    // A new entry too.
    write_file(&big.join("mail-999999"), b"new\n");
    repo.ingest(&["--name", "day3"], &[&src]);
    assert!(page_rows(&repo) - after <= 2 + 2 * 2 + (depth - 1));
}

/// The inode number of every path beneath `root` (hard links share one).
fn inodes(root: &Path) -> BTreeMap<PathBuf, u64> {
    walk(root)
        .into_iter()
        .map(|p| {
            let ino = fs::symlink_metadata(&p).expect("stat").ino();
            (p.strip_prefix(root).expect("beneath").to_path_buf(), ino)
        })
        .collect()
}

/// Directories of 0, 1, 63, 64, 65 and 10,000 entries (straddling page
/// boundaries) changed at random over six snapshots: adds, removals,
/// modifications, chmods, renames, hard links and xattrs. Every snapshot,
/// through restore and through the mount, equals a copy of the source
/// taken when it was made; inode numbers are unique (but for hard links)
/// and the same after a remount and after rebuild-catalog.
#[test]
fn random_changes_over_many_snapshots_match_the_model() {
    require_tool("cp");
    let dir = tempdir();
    let base = canonical(dir.path());
    let src = base.join("src");
    let sizes = [0usize, 1, 63, 64, 65, 10_000];
    for n in sizes {
        let d = src.join(format!("d{n}"));
        mkdir(&d);
        for i in 0..n {
            write_file(&d.join(format!("f{i:05}")), format!("{n}/{i}\n").as_bytes());
        }
    }
    let repo = Repo::new();
    let mut rng = Rng::new(test_seed());
    let mut models = Vec::new();
    for round in 0..6 {
        if round > 0 {
            for _ in 0..12 {
                let d = src.join(format!(
                    "d{}",
                    sizes[rng.below(sizes.len() as u64) as usize]
                ));
                let names: Vec<PathBuf> = fs::read_dir(&d)
                    .expect("list")
                    .map(|e| e.expect("entry").path())
                    .collect();
                let pick = |rng: &mut Rng| names[rng.below(names.len() as u64) as usize].clone();
                let fresh = d.join(format!("new-{round}-{}", rng.below(1 << 30)));
                match (rng.below(7), names.is_empty()) {
                    (_, true) | (0, _) => write_file(&fresh, &random_bytes(rng.next_u64(), 100)),
                    (1, false) => fs::remove_file(pick(&mut rng)).expect("remove"),
                    (2, false) => write_file(&pick(&mut rng), &random_bytes(rng.next_u64(), 300)),
                    (3, false) => chmod(&pick(&mut rng), 0o600 + (rng.below(0o100) as u32)),
                    (4, false) => fs::rename(pick(&mut rng), &fresh).expect("rename"),
                    (5, false) => fs::hard_link(pick(&mut rng), &fresh).expect("link"),
                    _ => xattr::set(pick(&mut rng), "user.round", format!("{round}").as_bytes())
                        .expect("setxattr"),
                }
            }
        }
        let name = format!("s{round}");
        repo.ingest(&["--name", &name], &[&src]);
        let model = base.join(format!("model-{round}"));
        tool("cp", &["-a".as_ref(), src.as_os_str(), model.as_os_str()]);
        models.push((name, model));
    }

    let scratch = tempdir();
    for (name, model) in &models {
        let target = canonical(scratch.path()).join(name);
        repo.restore(spec_of(name, &src), &target);
        assert_same_tree(model, &target);
    }
    let first: Vec<BTreeMap<PathBuf, u64>> = {
        let mount = Mount::new(&repo, &[]);
        let seen = models
            .iter()
            .map(|(name, model)| {
                let shown = mount.source_in(name, &src);
                assert_same_tree(model, &shown);
                let ino = inodes(&shown);
                let mut by_ino: BTreeMap<u64, u64> = BTreeMap::new();
                for (p, i) in &ino {
                    let links = fs::symlink_metadata(shown.join(p)).expect("stat").nlink();
                    if !fs::symlink_metadata(shown.join(p)).expect("stat").is_dir() && links > 1 {
                        continue;
                    }
                    *by_ino.entry(*i).or_default() += 1;
                }
                assert!(
                    by_ino.values().all(|&n| n == 1),
                    "{name}: two paths share an inode number"
                );
                ino
            })
            .collect();
        mount.finish();
        seen
    };
    let again = |why: &str| {
        let mount = Mount::new(&repo, &[]);
        for ((name, _), before) in models.iter().zip(&first) {
            assert_eq!(
                &inodes(&mount.source_in(name, &src)),
                before,
                "{name}: inode numbers changed {why}"
            );
        }
        mount.finish();
    };
    again("across a remount");
    rebuild_catalog_ok(&repo);
    again("after rebuild-catalog");
}
