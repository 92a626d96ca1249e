//! Ingest and restore through the CLI: round trips of every kind of entry,
//! deduplication, incremental ingest, and the command-line contract.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::util::*;

#[test]
fn round_trip_preserves_every_kind_of_entry() {
    let src_dir = tempdir();
    let fixture = build_fixture(src_dir.path());
    let repo = Repo::new();

    let snap = repo.ingest(&["--name", "fixture"], &[&fixture.root]);
    assert!(
        snap.num("files") > 300,
        "too few files counted: {}",
        snap.json
    );

    let target_dir = tempdir();
    let target = canonical(target_dir.path()).join("out");
    repo.restore(&snap.id, &target);
    let restored = restored_path(&target, &fixture.root);
    assert_same_tree(&fixture.root, &restored);

    // Owner, mode and mtime as an administrator would check them by hand.
    for rel in [
        "owners/setuid",
        "owners/setgid",
        "owners/foreign",
        "owners/foreign-dir",
        "owners/foreign-symlink",
        "owners/sticky",
        "owners/setgid-dir",
        "owners/private",
        "owners/no-permissions",
        "read-only-dir",
        "files/text.txt",
        "files/empty",
        "special/null-like",
        "special/fifo",
        "symlinks/dangling",
        "xattrs/acl-dir",
    ] {
        let fmt = "%u %g %a %F %t:%T %y";
        assert_eq!(
            stat_c(fmt, &fixture.root.join(rel)),
            stat_c(fmt, &restored.join(rel)),
            "stat of {rel} differs after restore"
        );
    }
    assert_eq!(stat_c("%a", &restored.join("owners/setuid")), "4755");
    assert_eq!(stat_c("%a", &restored.join("owners/sticky")), "1777");
    assert_eq!(
        stat_c("%u %g", &restored.join("owners/foreign")),
        "1234 5678"
    );
    assert_eq!(
        stat_c("%y", &restored.join("files/text.txt")),
        stat_c("%y", &fixture.root.join("files/text.txt"))
    );

    // The 255-byte and non-UTF-8 names survive byte for byte.
    let long = restored
        .join("names")
        .join(std::ffi::OsStr::from_bytes(&[b'n'; 255]));
    assert_eq!(
        fs::read(&long).expect("read 255-byte name"),
        b"odd name 12\n"
    );
    assert!(
        restored
            .join("names")
            .join(std::ffi::OsStr::from_bytes(b"line\nbreak"))
            .is_file()
    );

    // Hard links come back as links, including the one across directories.
    let x = fs::metadata(restored.join("links/x")).expect("stat x");
    let z = fs::metadata(restored.join("links/other/deeper/z")).expect("stat z");
    let e = fs::metadata(restored.join("files/x-from-elsewhere")).expect("stat link");
    assert_eq!((x.ino(), x.nlink()), (z.ino(), 4));
    assert_eq!(x.ino(), e.ino());

    // The sparse file stays sparse: 1 GiB logical, a few MiB allocated.
    let sparse = restored.join("sparse.img");
    assert_eq!(
        fs::metadata(&sparse).expect("stat sparse").len(),
        SPARSE_LOGICAL
    );
    let allocated = allocated_bytes(&sparse);
    assert!(
        allocated < 64 * MIB,
        "restored sparse file allocates {allocated} bytes (source: {})",
        allocated_bytes(&fixture.sparse)
    );
}

#[test]
fn restore_of_a_path_writes_that_directory_contents_into_target() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    mkdir(&root.join("sub/inner"));
    write_file(&root.join("top"), b"top level\n");
    write_file(&root.join("sub/a"), b"in sub\n");
    write_file(&root.join("sub/inner/b"), &random_bytes(1, 100_000));
    let repo = Repo::new();
    let snap = repo.ingest(&[], &[&root]);

    let target_dir = tempdir();
    let target = canonical(target_dir.path()).join("out");
    let spec = spec_of(&snap.id, &root.join("sub"));
    repo.restore(&spec, &target);
    assert_same_tree(&root.join("sub"), &target);
    assert!(
        !target.join("top").exists(),
        "restore of a subdirectory wrote its sibling"
    );
}

#[test]
fn restore_finds_snapshots_by_name_id_prefix_and_latest() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    mkdir(&root);
    let file = root.join("version");
    write_file(&file, b"one\n");
    let repo = Repo::new();
    let first = repo.ingest(&["--name", "first"], &[&root]);
    write_file(&file, b"two, longer\n");
    let second = repo.ingest(&["--name", "second"], &[&root]);
    assert_ne!(first.id, second.id);
    assert_eq!(first.name, "first");
    assert_eq!(second.name, "second");

    // A prefix as the listing shows it (8 characters), longer if the two
    // ids happen to share those.
    let common = first
        .id
        .bytes()
        .zip(second.id.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    let prefix = &first.id[..(common + 1).max(8).min(first.id.len())];

    let target_dir = tempdir();
    let base = canonical(target_dir.path());
    for (i, (spec, want)) in [
        ("first", "one\n"),
        ("second", "two, longer\n"),
        (first.id.as_str(), "one\n"),
        (prefix, "one\n"),
        ("latest", "two, longer\n"),
    ]
    .into_iter()
    .enumerate()
    {
        let target = base.join(format!("t{i}"));
        repo.restore(spec, &target);
        let got = fs::read(restored_path(&target, &file))
            .unwrap_or_else(|e| panic!("restore {spec}: file missing: {e}"));
        assert_eq!(String::from_utf8_lossy(&got), want, "restore of {spec:?}");
    }

    // An unknown snapshot is an error, not an empty restore.
    let target = base.join("unknown");
    let out = run_expect(&mut repo.restore_cmd("no-such-snapshot", &target), 1);
    assert!(!out.stderr.is_empty(), "no message for an unknown snapshot");
}

#[test]
fn snapshots_json_describes_each_snapshot() {
    let src_dir = tempdir();
    let base = canonical(src_dir.path());
    let a = base.join("a");
    let b = base.join("b");
    build_plain_tree(&a, 1, 3, 12, 50_000);
    build_plain_tree(&b, 2, 2, 5, 10_000);
    let repo = Repo::new();
    let snap = repo.ingest(
        &["--name", "nightly", "--tag", "daily", "--tag", "srv"],
        &[&a, &b],
    );
    assert_eq!(snap.num("files"), 17, "files in {}", snap.json);
    assert!(snap.num("added_bytes") > 0, "added_bytes in {}", snap.json);

    let list = repo.snapshots();
    assert_eq!(list.len(), 1, "{list:?}");
    let s = &list[0];
    assert_eq!(json_str(s, "id"), snap.id);
    assert_eq!(json_str(s, "name"), "nightly");
    assert!(
        s.get("time").is_some_and(|t| !t.is_null()),
        "no time in {s}"
    );
    assert!(!json_str(s, "host").is_empty(), "empty host in {s}");
    let sources: Vec<&str> = s["sources"]
        .as_array()
        .unwrap_or_else(|| panic!("sources is not an array in {s}"))
        .iter()
        .map(|v| v.as_str().expect("source as string"))
        .collect();
    assert_eq!(
        sources,
        vec![
            a.to_str().expect("utf-8 temp path"),
            b.to_str().expect("utf-8 temp path")
        ]
    );
    let tags: Vec<&str> = s["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("tags is not an array in {s}"))
        .iter()
        .map(|v| v.as_str().expect("tag as string"))
        .collect();
    assert!(
        tags.contains(&"daily") && tags.contains(&"srv"),
        "tags: {tags:?}"
    );
    assert_eq!(json_u64(s, "files"), 17);
    // The logical size of the files, give or take what directories count.
    let size = dir_bytes(&a) + dir_bytes(&b);
    let reported = json_u64(s, "size");
    assert!(
        (size..size + 64 * KIB).contains(&reported),
        "size {reported} in {s}, files hold {size} bytes"
    );
    assert_eq!(json_u64(s, "added_bytes"), snap.num("added_bytes"));

    // Both sources come back at their absolute paths.
    assert_restores(&repo, "nightly", &[&a, &b], "both sources");

    // The plain listing mentions the snapshot too.
    let out = run_ok(repo.cmd().arg("snapshots"));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nightly"),
        "{}",
        describe("snapshots", &out)
    );
}

#[test]
fn reingest_of_unchanged_tree_adds_almost_nothing() {
    let src_dir = tempdir();
    let fixture = build_fixture(src_dir.path());
    let repo = Repo::new();
    let first = repo.ingest(&[], &[&fixture.root]);
    let packs_after_first = repo.packs_bytes();
    assert!(
        packs_after_first > 10 * MIB,
        "packs hold only {packs_after_first} bytes after the first ingest: {}",
        first.json
    );

    let second = repo.ingest(&[], &[&fixture.root]);
    let growth = repo.packs_bytes() - packs_after_first;
    assert!(
        growth < 64 * KIB,
        "re-ingest grew packs by {growth} bytes: {}",
        second.json
    );
    assert!(
        second.num("added_bytes") < 64 * KIB,
        "re-ingest reports added_bytes: {}",
        second.json
    );
    assert_eq!(repo.snapshots().len(), 2);
}

#[test]
fn second_ingest_of_unchanged_tree_reads_no_file_contents() {
    let src_dir = tempdir();
    let fixture = build_fixture(src_dir.path());
    let repo = Repo::new();
    let first = repo.ingest(&[], &[&fixture.root]);
    assert!(
        first.num("bytes_read") >= 100 * MIB,
        "the first ingest cannot have read everything: {}",
        first.json
    );
    let second = repo.ingest(&[], &[&fixture.root]);
    assert_eq!(
        second.num("bytes_read"),
        0,
        "second ingest read contents: {}",
        second.json
    );
    assert_eq!(second.num("files"), first.num("files"));
}

#[test]
fn incremental_ingest_reads_only_what_changed() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    build_plain_tree(&root, 9, 4, 40, 200_000);
    let repo = Repo::new();
    repo.ingest(&[], &[&root]);

    // Same size and same mtime, new content: only ctime tells.
    let sneaky = root.join("d01/file-00005");
    let meta = fs::metadata(&sneaky).expect("stat");
    let size = meta.len();
    write_random_file(&sneaky, 12_345, size);
    set_mtime(&sneaky, meta.mtime(), meta.mtime_nsec());
    // A grown file, a new file, a removed file.
    let grown = root.join("d02/file-00006");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&grown)
        .expect("open");
    f.write_all(b"appended\n").expect("append");
    drop(f);
    let added = root.join("d03/new-file");
    write_random_file(&added, 777, 33_333);
    fs::remove_file(root.join("d00/file-00000")).expect("remove");

    let expected = size + fs::metadata(&grown).expect("stat").len() + 33_333;
    let snap = repo.ingest(&[], &[&root]);
    assert_eq!(
        snap.num("bytes_read"),
        expected,
        "bytes_read should be exactly the changed and new files: {}",
        snap.json
    );

    assert_restores(&repo, "latest", &[&root], "after the incremental ingest");
}

#[test]
fn one_byte_insert_in_64_mib_file_costs_a_few_chunks() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    mkdir(&root);
    let file = root.join("big.bin");
    write_random_file(&file, 64, 64 * MIB);
    let repo = Repo::new();
    repo.ingest(&[], &[&root]);
    let before = repo.packs_bytes();
    assert!(
        before >= 60 * MIB,
        "64 MiB of random data took only {before} bytes"
    );

    let mut data = fs::read(&file).expect("read");
    data.insert(0, b'!');
    write_file(&file, &data);
    drop(data);
    let snap = repo.ingest(&[], &[&root]);
    let growth = repo.packs_bytes() - before;
    assert!(
        growth < 8 * MIB,
        "a one-byte insertion grew packs by {growth} bytes: {}",
        snap.json
    );
    assert!(snap.num("added_bytes") < 8 * MIB, "{}", snap.json);

    assert_restores(&repo, &snap.id, &[&root], "after the insert");
}

#[test]
fn identical_files_are_stored_once() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    mkdir(&root.join("copy"));
    write_random_file(&root.join("original"), 5, 20 * MIB);
    fs::copy(root.join("original"), root.join("copy/same")).expect("copy");
    let repo = Repo::new();
    let snap = repo.ingest(&[], &[&root]);
    let packs = repo.packs_bytes();
    assert!(
        packs < 21 * MIB,
        "two identical 20 MiB files take {packs} bytes: {}",
        snap.json
    );

    assert_restores(&repo, &snap.id, &[&root], "with a duplicate file");
}

#[test]
fn compressible_data_is_stored_compressed() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    mkdir(&root);
    let mut text = Vec::new();
    let mut i = 0u64;
    while text.len() < 30 * MIB as usize {
        writeln!(
            text,
            "line {i}: lorem ipsum dolor sit amet, consectetur adipiscing"
        )
        .expect("fmt");
        i += 1;
    }
    write_file(&root.join("log.txt"), &text);
    let repo = Repo::new();
    let snap = repo.ingest(&["--compression", "3"], &[&root]);
    let packs = repo.packs_bytes();
    assert!(
        packs < 10 * MIB,
        "30 MiB of text take {packs} bytes: {}",
        snap.json
    );

    assert_restores(&repo, &snap.id, &[&root], "compressed text");
}

#[test]
fn stdin_is_stored_as_one_file() {
    let repo = Repo::new();
    let mut data = random_bytes(31, 3 * MIB as usize + 5);
    data.extend_from_slice(&b"and some text at the end\n".repeat(1000));
    let mut child = repo
        .cmd()
        .args(["ingest", "--json", "--stdin", "--stdin-name", "dump.sql"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ingest --stdin");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&data).expect("feed stdin");
    }
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        describe("ingest --stdin", &out)
    );
    let snap = Ingested::from_output(&out);

    let target_dir = tempdir();
    let target = canonical(target_dir.path()).join("out");
    repo.restore(&snap.id, &target);
    let files: Vec<_> = walk(&target)
        .into_iter()
        .filter(|p| {
            fs::symlink_metadata(p)
                .map(|m| m.is_file())
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(files.len(), 1, "expected one file, restored {files:?}");
    assert_eq!(files[0].file_name().expect("name"), "dump.sql");
    assert!(
        fs::read(&files[0]).expect("read") == data,
        "stdin content differs"
    );
}

#[test]
fn exclude_options_leave_out_matching_entries() {
    let src_dir = tempdir();
    let base = canonical(src_dir.path());
    let root = base.join("src");
    mkdir(&root.join("keep/deeper"));
    mkdir(&root.join("skip-me/sub"));
    mkdir(&root.join("cache"));
    write_file(&root.join("keep/a.txt"), b"kept\n");
    write_file(&root.join("keep/deeper/b.txt"), b"kept too\n");
    write_file(&root.join("keep/scratch.tmp"), b"excluded by --exclude\n");
    write_file(&root.join("top.tmp"), b"excluded by --exclude\n");
    write_file(&root.join("skip-me/sub/c"), b"excluded by --exclude-file\n");
    write_file(
        &root.join("cache/CACHEDIR.TAG"),
        b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache directory\n",
    );
    write_file(&root.join("cache/blob"), b"excluded by --exclude-caches\n");
    let exclude_file = base.join("excludes");
    write_file(&exclude_file, b"# patterns, one a line\n\n**/skip-me\n");

    let repo = Repo::new();
    let snap = repo.ingest(
        &[
            "--exclude",
            "*.tmp",
            "--exclude-file",
            exclude_file.to_str().expect("utf-8 temp path"),
            "--exclude-caches",
        ],
        &[&root],
    );
    let target_dir = tempdir();
    let target = canonical(target_dir.path()).join("out");
    repo.restore(&snap.id, &target);
    let r = restored_path(&target, &root);
    assert!(r.join("keep/a.txt").is_file());
    assert!(r.join("keep/deeper/b.txt").is_file());
    for gone in [
        "keep/scratch.tmp",
        "top.tmp",
        "skip-me/sub/c",
        "skip-me",
        "cache/blob",
    ] {
        assert!(
            fs::symlink_metadata(r.join(gone)).is_err(),
            "{gone} should have been excluded"
        );
    }
}

#[test]
fn one_file_system_stays_on_the_source_filesystem() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    mkdir(&root);
    write_file(&root.join("here"), b"on the source filesystem\n");
    let mnt = Tmpfs::mount(&root.join("mnt"), "4m");
    write_file(&mnt.path.join("elsewhere"), b"on another filesystem\n");

    let repo = Repo::new();
    let crossing = repo.ingest(&[], &[&root]);
    let staying = repo.ingest(&["--one-file-system"], &[&root]);

    let target_dir = tempdir();
    let base = canonical(target_dir.path());
    repo.restore(&crossing.id, &base.join("crossing"));
    repo.restore(&staying.id, &base.join("staying"));
    let crossed = restored_path(&base.join("crossing"), &root);
    let stayed = restored_path(&base.join("staying"), &root);
    assert!(
        crossed.join("mnt/elsewhere").is_file(),
        "without the flag the mount is walked"
    );
    assert!(stayed.join("here").is_file());
    assert!(
        fs::symlink_metadata(stayed.join("mnt/elsewhere")).is_err(),
        "--one-file-system descended into a mount"
    );
}

#[test]
fn init_refuses_a_non_empty_directory_that_is_not_a_repository() {
    let dir = tempdir();
    let path = canonical(dir.path());
    write_file(&path.join("precious"), b"do not touch\n");
    let out = run_expect(
        snapfs()
            .arg("--repo")
            .arg(&path)
            .args(["init", "--encryption", "none"]),
        1,
    );
    assert!(!out.stderr.is_empty(), "init refused without a message");
    assert_eq!(
        fs::read(path.join("precious")).expect("read"),
        b"do not touch\n"
    );
    assert!(
        !path.join("catalog.db").exists(),
        "init wrote into a foreign directory"
    );
    assert!(
        !path.join("packs").exists(),
        "init wrote into a foreign directory"
    );
}

#[test]
fn repository_is_found_through_snapfs_repo() {
    let dir = tempdir();
    let repo_path = canonical(dir.path()).join("repo");
    let root = canonical(dir.path()).join("src");
    build_plain_tree(&root, 3, 1, 3, 1000);
    run_ok(
        snapfs()
            .env("SNAPFS_REPO", &repo_path)
            .args(["init", "--encryption", "none"]),
    );
    run_ok(
        snapfs()
            .env("SNAPFS_REPO", &repo_path)
            .arg("ingest")
            .arg(&root),
    );
    let repo = Repo::at(&repo_path);
    assert_eq!(repo.snapshots().len(), 1);
}

/// One random change to the tree under `root`: files created, rewritten
/// behind an unchanged size and mtime, appended, truncated, removed,
/// renamed and swapped; directories made and removed; links, symlinks,
/// modes, xattrs and mtimes changed; files turned into directories or
/// symlinks and directories into files.
fn mutate(root: &Path, rng: &mut Rng, serial: &mut u64) {
    *serial += 1;
    let n = *serial;
    let entries = walk(root);
    let files: Vec<&PathBuf> = entries
        .iter()
        .filter(|p| {
            fs::symlink_metadata(p)
                .map(|m| m.is_file())
                .unwrap_or(false)
        })
        .collect();
    let mut dirs: Vec<PathBuf> = entries
        .iter()
        .filter(|p| fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false))
        .cloned()
        .collect();
    dirs.push(root.to_path_buf());
    let pick_dir = |rng: &mut Rng| dirs[rng.below(dirs.len() as u64) as usize].clone();
    let new_name = |rng: &mut Rng| -> std::ffi::OsString {
        if rng.below(5) == 0 {
            std::ffi::OsStr::from_bytes(format!("odd-\u{e9}\n{n}").as_bytes()).to_os_string()
        } else if rng.below(7) == 0 {
            let mut b = b"raw-\xff-".to_vec();
            b.extend_from_slice(n.to_string().as_bytes());
            std::ffi::OsStr::from_bytes(&b).to_os_string()
        } else {
            format!("n{n}").into()
        }
    };
    let op = if files.is_empty() { 0 } else { rng.below(17) };
    let file = if files.is_empty() {
        root.to_path_buf()
    } else {
        files[rng.below(files.len() as u64) as usize].clone()
    };
    match op {
        0 => {
            let size = [0, 1, 4096, 70_000, 300_000][rng.below(5) as usize];
            let p = pick_dir(rng).join(new_name(rng));
            write_random_file(&p, rng.next_u64(), size);
        }
        1 => {
            // Same size, same mtime, new bytes: only ctime changes.
            let meta = fs::symlink_metadata(&file).expect("lstat");
            write_random_file(&file, rng.next_u64(), meta.len());
            set_mtime(&file, meta.mtime(), meta.mtime_nsec());
        }
        2 => {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .expect("open for append");
            f.write_all(&random_bytes(rng.next_u64(), 1 + rng.below(5000) as usize))
                .expect("append");
        }
        3 => fs::remove_file(&file).expect("remove"),
        4 => {
            let to = pick_dir(rng).join(new_name(rng));
            fs::rename(&file, &to).expect("rename");
        }
        5 => mkdir(&pick_dir(rng).join(new_name(rng))),
        6 => {
            let d = pick_dir(rng);
            if d != root {
                fs::remove_dir_all(&d).expect("remove dir");
            }
        }
        7 => {
            let to = pick_dir(rng).join(new_name(rng));
            fs::hard_link(&file, &to).expect("hard link");
        }
        8 => {
            let to = pick_dir(rng).join(new_name(rng));
            std::os::unix::fs::symlink(file.file_name().expect("name"), &to).expect("symlink");
        }
        9 => chmod(
            &file,
            [0o644, 0o600, 0o755, 0o4755, 0o440][rng.below(5) as usize],
        ),
        10 => {
            let value = random_bytes(rng.next_u64(), rng.below(100) as usize);
            xattr::set(&file, "user.changed", &value).expect("setxattr");
        }
        11 => set_mtime(
            &file,
            1_000_000_000 + rng.below(1 << 30) as i64,
            rng.below(1_000_000_000) as i64,
        ),
        12 => {
            // Swap two names: each path now holds the other inode.
            let other = files[rng.below(files.len() as u64) as usize].clone();
            if other != file {
                let tmp = root.join(format!(".swap-{n}"));
                fs::rename(&file, &tmp).expect("rename");
                fs::rename(&other, &file).expect("rename");
                fs::rename(&tmp, &other).expect("rename");
            }
        }
        14 => {
            // A file becomes a directory of the same name.
            fs::remove_file(&file).expect("remove");
            mkdir(&file);
            write_file(&file.join("now-a-dir"), b"was a file\n");
        }
        15 => {
            // A file becomes a symlink of the same name.
            fs::remove_file(&file).expect("remove");
            std::os::unix::fs::symlink("somewhere/else", &file).expect("symlink");
        }
        16 => {
            // A directory becomes a file of the same name.
            let d = pick_dir(rng);
            if d != root {
                fs::remove_dir_all(&d).expect("remove dir");
                write_random_file(&d, rng.next_u64(), 1234);
            }
        }
        _ => {
            let len = fs::symlink_metadata(&file).expect("lstat").len();
            fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .expect("open")
                .set_len(len / 2)
                .expect("truncate");
        }
    }
}

#[test]
fn random_changes_over_many_snapshots_restore_exactly() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let root = base.join("src");
    build_plain_tree(&root, 21, 4, 30, 40_000);
    let refs = base.join("refs");
    mkdir(&refs);
    let repo = Repo::new();
    // A fixed seed by default; SNAPFS_TEST_SEED explores others.
    let seed = test_seed();
    eprintln!("random changes with seed {seed}");
    let mut rng = Rng::new(seed);
    let mut serial = 0;
    let mut snapshots = Vec::new();
    for round in 0..10 {
        if round > 0 {
            for _ in 0..20 {
                mutate(&root, &mut rng, &mut serial);
            }
        }
        // What the tree looked like at this snapshot.
        let reference = refs.join(format!("round-{round}"));
        tool(
            "cp",
            &[OsStr::new("-a"), root.as_os_str(), reference.as_os_str()],
        );
        let snap = repo.ingest(&[], &[&root]);
        snapshots.push((round, snap.id, reference));
    }

    let target_dir = tempdir();
    let targets = canonical(target_dir.path());
    for (round, id, reference) in &snapshots {
        let target = targets.join(id);
        repo.restore(id, &target);
        let restored = restored_path(&target, &root);
        let diff = rsync_diff(reference, &restored);
        let meta = metadata_diff(reference, &restored);
        assert!(
            diff.is_empty() && meta.is_empty(),
            "snapshot of round {round} differs from the tree it was taken of:\n{diff}\n{}",
            meta.join("\n")
        );
    }
}

#[test]
fn incremental_ingest_records_metadata_only_changes() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    build_plain_tree(&root, 30, 2, 8, 10_000);
    xattr::set(root.join("d00/file-00002"), "user.gone", b"soon").expect("setxattr");
    let repo = Repo::new();
    repo.ingest(&[], &[&root]);

    chmod(&root.join("d00/file-00000"), 0o4711);
    lchown(&root.join("d01/file-00001"), 2222, 3333);
    xattr::remove(root.join("d00/file-00002"), "user.gone").expect("removexattr");
    xattr::set(root.join("d01/file-00003"), "user.new", b"value").expect("setxattr");
    set_mtime(&root.join("d00/file-00004"), 1_111_111_111, 111);
    chmod(&root.join("d01"), 0o700);
    lchown(&root.join("d00"), 77, 88);
    set_mtime(&root.join("d00"), 1_222_222_222, 222);
    let snap = repo.ingest(&[], &[&root]);

    assert_restores(&repo, &snap.id, &[&root], "after metadata-only changes");
}

#[test]
fn many_small_files_in_one_directory_round_trip() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    let flat = root.join("flat");
    mkdir(&flat);
    for i in 0..20_000u32 {
        write_file(
            &flat.join(format!("entry-{i:05}")),
            format!("{i}\n").as_bytes(),
        );
    }
    for i in 0..2_000u32 {
        let d = root.join(format!("tree/{}/{}", i % 10, i % 7));
        mkdir(&d);
        write_file(
            &d.join(format!("leaf-{i}")),
            &random_bytes(i as u64, (i % 3000) as usize),
        );
    }
    let repo = Repo::new();
    let snap = repo.ingest(&[], &[&root]);
    assert_eq!(snap.num("files"), 22_000, "{}", snap.json);

    assert_restores(&repo, &snap.id, &[&root], "many small files");
}

#[test]
fn relative_sources_are_recorded_as_absolute_paths() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let root = base.join("src");
    build_plain_tree(&root, 40, 1, 3, 1000);
    let repo = Repo::new();
    let out = run_ok(
        repo.cmd()
            .current_dir(&base)
            .args(["ingest", "--json", "src/"]),
    );
    let snap = Ingested::from_output(&out);
    let listed = repo.snapshots();
    assert_eq!(
        listed[0]["sources"],
        serde_json::json!([root.to_str().expect("utf-8 temp path")]),
        "{}",
        listed[0]
    );
    assert_restores(&repo, &snap.id, &[&root], "from a relative source");
}

#[test]
fn restore_of_a_subtree_keeps_hard_links_whose_group_starts_outside_it() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    mkdir(&root.join("a-first"));
    mkdir(&root.join("b-second/inner"));
    write_file(&root.join("a-first/original"), &random_bytes(70, 50_000));
    fs::hard_link(root.join("a-first/original"), root.join("b-second/one")).expect("link");
    fs::hard_link(
        root.join("a-first/original"),
        root.join("b-second/inner/two"),
    )
    .expect("link");
    let repo = Repo::new();
    let snap = repo.ingest(&[], &[&root]);

    let target_dir = tempdir();
    let target = canonical(target_dir.path()).join("out");
    let spec = spec_of(&snap.id, &root.join("b-second"));
    repo.restore(&spec, &target);
    let one = fs::metadata(target.join("one")).expect("stat one");
    let two = fs::metadata(target.join("inner/two")).expect("stat two");
    assert_eq!(
        one.ino(),
        two.ino(),
        "the two links inside the subtree are not linked"
    );
    assert_eq!(
        fs::read(target.join("inner/two")).expect("read"),
        fs::read(root.join("a-first/original")).expect("read")
    );
    assert!(!target.join("original").exists());
}

#[test]
fn a_single_file_can_be_a_source() {
    let src_dir = tempdir();
    let base = canonical(src_dir.path());
    let file = base.join("lonely.bin");
    write_random_file(&file, 80, 300_000);
    set_mtime(&file, 1_400_000_000, 42);
    let repo = Repo::new();
    let snap = repo.ingest(&[], &[&file]);
    assert_eq!(snap.num("files"), 1, "{}", snap.json);

    let target_dir = tempdir();
    let target = canonical(target_dir.path()).join("out");
    repo.restore(&snap.id, &target);
    let restored = restored_path(&target, &file);
    assert!(fs::read(&restored).expect("restored file") == fs::read(&file).expect("read"));
    assert_eq!(stat_c("%a %y", &restored), stat_c("%a %y", &file));
}

#[test]
fn snapshot_names_are_unique() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    build_plain_tree(&root, 90, 1, 2, 1000);
    let repo = Repo::new();
    assert!(
        repo.snapshots().is_empty(),
        "a new repository lists snapshots"
    );
    let first = repo.ingest(&["--name", "same"], &[&root]);
    write_file(&root.join("changed"), b"new\n");
    let out = repo
        .ingest_cmd(&["--name", "same"], &[&root])
        .output()
        .expect("spawn ingest");
    let listed = repo.snapshots();
    match out.status.code() {
        Some(1) => {
            assert!(!out.stderr.is_empty(), "refused without a message");
            assert_eq!(listed.len(), 1, "{listed:?}");
        }
        Some(0) => {
            let names: BTreeSet<&str> = listed.iter().map(|s| json_str(s, "name")).collect();
            assert_eq!(names.len(), 2, "two snapshots share a name: {listed:?}");
        }
        _ => panic!("{}", describe("ingest with a taken name", &out)),
    }
    // Whatever happened, "same" still means the first snapshot.
    let target_dir = tempdir();
    let target = canonical(target_dir.path()).join("out");
    repo.restore("same", &target);
    assert!(!restored_path(&target, &root).join("changed").exists());
    assert_eq!(json_str(&listed[0], "id"), first.id);
}

#[test]
fn odd_bytes_in_repository_and_source_paths_work() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let repo_path = base.join(OsStr::from_bytes(b"repo \xff with: odd bytes"));
    run_ok(
        snapfs()
            .arg("--repo")
            .arg(&repo_path)
            .args(["init", "--encryption", "none"]),
    );
    let repo = Repo::at(&repo_path);
    let root = base.join(OsStr::from_bytes(b"source-caf\xe9"));
    build_plain_tree(&root, 96, 2, 4, 2000);
    let snap = repo.ingest(&[], &[&root]);
    assert_eq!(repo.snapshots().len(), 1);

    let target_dir = tempdir();
    let target = canonical(target_dir.path()).join(OsStr::from_bytes(b"out-\xfe"));
    repo.restore(&snap.id, &target);
    assert_same_tree(&root, &restored_path(&target, &root));
}

#[test]
fn restore_path_may_hold_colons_and_non_utf8_bytes() {
    let dir = tempdir();
    let root = canonical(dir.path()).join("src");
    let colon = root.join("with:colon");
    let latin1 = root.join(OsStr::from_bytes(b"caf\xe9"));
    for d in [&colon, &latin1] {
        mkdir(d);
        write_file(&d.join("inside"), &random_bytes(97, 5000));
    }
    let repo = Repo::new();
    let snap = repo.ingest(&[], &[&root]);
    let target_dir = tempdir();
    let targets = canonical(target_dir.path());

    // SNAPSHOT:PATH splits at the first colon only.
    let spec = spec_of(&snap.id, &colon);
    repo.restore(&spec, &targets.join("colon"));
    assert_same_tree(&colon, &targets.join("colon"));

    // A path that is not UTF-8 can be restored on its own.
    let spec = spec_of(&snap.id, &latin1);
    repo.restore(&spec, &targets.join("latin1"));
    assert_same_tree(&latin1, &targets.join("latin1"));
}

/// Bytes of the catalog once its WAL is folded in.
fn catalog_bytes(repo: &Repo) -> u64 {
    let db = rusqlite::Connection::open(repo.path.join("catalog.db")).expect("open catalog");
    db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
    let pages: i64 = db
        .pragma_query_value(None, "page_count", |r| r.get(0))
        .expect("page_count");
    let size: i64 = db
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .expect("page_size");
    (pages * size) as u64
}

#[test]
fn reingest_of_unchanged_tree_barely_grows_the_catalog() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    for i in 0..20_000u32 {
        let d = root.join(format!("d{:03}", i % 200));
        if i < 200 {
            mkdir(&d);
        }
        write_file(&d.join(format!("f{i:05}")), format!("{i}\n").as_bytes());
    }
    let repo = Repo::new();
    repo.ingest(&[], &[&root]);
    let after_first = catalog_bytes(&repo);
    for _ in 0..3 {
        repo.ingest(&[], &[&root]);
    }
    let growth = catalog_bytes(&repo) - after_first;
    assert!(
        growth < 3 * 64 * KIB,
        "three no-change snapshots of 20k files grew the catalog by {growth} bytes (first: {after_first})"
    );
}

#[test]
fn init_over_an_existing_repository_keeps_it() {
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    build_plain_tree(&root, 99, 1, 3, 5000);
    let repo = Repo::new();
    let snap = repo.ingest(&[], &[&root]);
    let out = repo
        .cmd()
        .args(["init", "--encryption", "none"])
        .output()
        .expect("spawn init");
    assert!(
        matches!(out.status.code(), Some(0) | Some(1)),
        "{}",
        describe("init over a repository", &out)
    );
    assert_eq!(repo.snapshot_ids(), vec![snap.id.clone()]);
    assert_restores(&repo, &snap.id, &[&root], "after init over the repository");
}

#[test]
fn copy_of_a_tree_elsewhere_adds_almost_no_data() {
    let src_dir = tempdir();
    let base = canonical(src_dir.path());
    let original = base.join("original");
    build_plain_tree(&original, 101, 4, 40, 512 * KIB);
    let copy = base.join("elsewhere/copy");
    mkdir(&base.join("elsewhere"));
    tool(
        "cp",
        &[OsStr::new("-a"), original.as_os_str(), copy.as_os_str()],
    );
    let repo = Repo::new();
    repo.ingest(&[], &[&original]);
    let before = repo.packs_bytes();
    let snap = repo.ingest(&[], &[&copy]);
    let growth = repo.packs_bytes() - before;
    assert!(
        growth < 256 * KIB,
        "a copy of a {before}-byte tree at another path added {growth} bytes: {}",
        snap.json
    );
    assert_restores(&repo, &snap.id, &[&copy], "the copy elsewhere");
}

#[test]
fn restore_from_an_empty_repository_fails_with_a_message() {
    let repo = Repo::new();
    let target_dir = tempdir();
    let target = canonical(target_dir.path()).join("out");
    for spec in ["latest", "anything"] {
        let out = run_expect(&mut repo.restore_cmd(spec, &target), 1);
        assert!(
            !out.stderr.is_empty(),
            "restore {spec} failed without a message"
        );
    }
    assert!(!target.exists(), "a failed restore created its target");
}

#[test]
fn hard_links_across_two_sources_stay_linked() {
    let src_dir = tempdir();
    let base = canonical(src_dir.path());
    let a = base.join("a");
    let b = base.join("b");
    mkdir(&a);
    mkdir(&b);
    write_file(&a.join("x"), &random_bytes(110, 70_000));
    fs::hard_link(a.join("x"), b.join("y")).expect("link");
    let repo = Repo::new();
    let snap = repo.ingest(&[], &[&a, &b]);

    let target_dir = tempdir();
    let target = canonical(target_dir.path()).join("out");
    repo.restore(&snap.id, &target);
    let x = fs::metadata(restored_path(&target, &a.join("x"))).expect("stat x");
    let y = fs::metadata(restored_path(&target, &b.join("y"))).expect("stat y");
    assert_eq!(
        x.ino(),
        y.ino(),
        "one file under two sources came back as two files"
    );
    assert_eq!(x.nlink(), 2);
}

/// Regression: relatime updates a directory's atime when the walk reads it
/// (once a day), and anyone's reads update files' atimes. An access alone
/// must not make new trees, or every daily snapshot would rewrite every
/// directory's rows in the catalog.
#[test]
fn access_times_alone_make_no_new_trees() {
    use std::os::unix::fs::MetadataExt;
    let src_dir = tempdir();
    let root = canonical(src_dir.path()).join("src");
    build_plain_tree(&root, 6, 3, 20, 5_000);
    // Access times older than the modification times, so that reads update
    // them (relatime); setting them changes ctime, so do it before ingesting.
    let out = std::process::Command::new("find")
        .arg(&root)
        .args([
            "-exec",
            "touch",
            "-a",
            "-h",
            "-d",
            "2001-02-03 04:05:06",
            "{}",
            "+",
        ])
        .output()
        .expect("run find");
    assert!(out.status.success(), "find -exec touch -a: {out:?}");
    let repo = Repo::new();
    repo.ingest(&[], &[&root]);
    // Read everything the way users do: atimes move, ctimes do not.
    let sample = walk(&root)
        .into_iter()
        .find(|p| p.is_file())
        .expect("a file in the tree");
    let before = fs::metadata(&sample).expect("stat").atime();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ls -laR \"$1\" >/dev/null && find \"$1\" -type f -exec cat {} + >/dev/null")
        .arg("sh")
        .arg(&root)
        .output()
        .expect("read the tree");
    assert!(out.status.success(), "reading the tree: {out:?}");
    let after = fs::metadata(&sample).expect("stat").atime();
    assert_ne!(
        before, after,
        "reading did not update the atime (is the filesystem noatime?)"
    );
    let second = repo.ingest(&[], &[&root]);
    // The snapshot record, and the directories above the source if other
    // tests changed /tmp meanwhile; nothing from the source's 6 directories.
    let above = root.ancestors().count() as u64 - 1;
    assert!(
        second.num("new_chunks") <= 1 + above,
        "only the snapshot record (and the {above} directories above the source) may be new: {}",
        second.json
    );
    assert_eq!(second.num("bytes_read"), 0, "{}", second.json);
}

/// A previous snapshot's extended attributes that do not decode (a damaged
/// row) made the next snapshot record no extended attributes for the file,
/// silently, when the file was unchanged: ACLs and capabilities vanished
/// from every later snapshot. They are read from disk again, with a
/// warning naming the file.
#[test]
fn undecodable_xattrs_of_the_previous_snapshot_are_read_again_with_a_warning() {
    let dir = tempdir();
    let root = canonical(dir.path()).join("src");
    mkdir(&root);
    let file = root.join("file");
    write_file(&file, b"has extended attributes\n");
    xattr::set(&file, "user.keep", b"this value").expect("setxattr");
    xattr::set(&file, "user.binary", &[0, 1, 2, 255]).expect("setxattr");
    let repo = Repo::new();
    repo.ingest(&[], &[&root]);
    // An extended attribute without a name: the page no longer decodes.
    tamper_entry(&repo, b"file", |e, _| {
        e.xattrs.push((Vec::new(), b"v".to_vec()));
    });

    let out = run_ok(&mut repo.ingest_cmd(&[], &[&root]));
    let snap = Ingested::from_output(&out);
    let warned = snap.json["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .any(|w| w["kind"] == "damaged_previous" && w["path"] == root.to_string_lossy().as_ref());
    assert!(warned, "no warning for {}: {}", root.display(), snap.json);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&*root.to_string_lossy()) && stderr.contains("extended attribute"),
        "stderr does not name the directory: {stderr}"
    );

    let target_dir = tempdir();
    let target = canonical(target_dir.path()).join("out");
    repo.restore(&snap.id, &target);
    let restored = restored_path(&target, &file);
    assert_eq!(
        xattr::get(&restored, "user.keep")
            .expect("getxattr")
            .as_deref(),
        Some(&b"this value"[..])
    );
    assert_eq!(
        xattr::get(&restored, "user.binary")
            .expect("getxattr")
            .as_deref(),
        Some(&[0u8, 1, 2, 255][..])
    );
    // The damaged rows were put right: the first snapshot, which shares
    // them, restores with its attributes too.
    let first_target = canonical(target_dir.path()).join("first");
    repo.restore("latest~1", &first_target);
    assert_eq!(
        xattr::get(restored_path(&first_target, &file), "user.keep")
            .expect("getxattr")
            .as_deref(),
        Some(&b"this value"[..])
    );
}

/// Restore writes every file with one pool of threads (one per core, at
/// least two), big files included, plus the thread that walks the snapshot
/// and the one that flushes batches: never a pool per big file.
#[test]
fn restore_runs_one_bounded_pool_of_threads() {
    let dir = tempdir();
    let root = canonical(dir.path()).join("src");
    mkdir(&root);
    for i in 0..6 {
        write_random_file(&root.join(format!("big-{i}")), 70 + i, 24 * MIB);
    }
    build_plain_tree(&root.join("small"), 9, 4, 200, 10_000);
    let repo = Repo::new();
    let snap = repo.ingest(&[], &[&root]);

    let target_dir = tempdir();
    let target = canonical(target_dir.path()).join("out");
    let mut child = repo
        .restore_cmd(&snap.id, &target)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn restore");
    let status = format!("/proc/{}/status", child.id());
    let (mut most, mut samples) = (0u64, 0);
    while child.try_wait().expect("wait").is_none() {
        let threads = fs::read_to_string(&status).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        if let Some(n) = threads {
            most = most.max(n);
            samples += 1;
        }
        std::thread::sleep(std::time::Duration::from_micros(500));
    }
    let out = child.wait_with_output().expect("restore output");
    assert!(out.status.success(), "{}", describe("restore", &out));
    assert!(samples > 0 && most > 1, "never saw the restore's threads");
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let bound = cores.clamp(2, 16) + 2;
    assert!(
        most <= bound,
        "restore ran {most} threads at once on {cores} cores; at most {bound} expected"
    );
    assert_same_tree(&root, &restored_path(&target, &root));
}

/// Broke: with format 2 an empty file refers to no content, and the
/// unchanged-file test took "no content" for "not unchanged": every empty
/// file counted as changed in every snapshot, and a tree of empty files
/// raised the change alarm on each ingest.
#[test]
fn unchanged_empty_files_are_not_counted_as_changed() {
    let dir = tempdir();
    let src = canonical(dir.path()).join("src");
    mkdir(&src);
    for i in 0..100 {
        write_file(&src.join(format!("empty-{i:03}")), b"");
    }
    write_file(&src.join("data"), b"some data\n");
    let repo = Repo::new();
    repo.ingest(&["--name", "first"], &[&src]);
    let again = repo.ingest(&["--name", "again"], &[&src]);
    assert_eq!(again.num("reused_files"), 101, "{}", again.json);
    assert_eq!(again.num("changed"), 0, "{}", again.json);
    assert_eq!(
        again.json["alarm"],
        serde_json::Value::Bool(false),
        "{}",
        again.json
    );
}
