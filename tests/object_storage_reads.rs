//! Reads from a repository in a bucket of a real three-node Garage cluster:
//! restore merges reads of neighbouring chunks, and the mount keeps what
//! it fetched in a bounded disk cache that it never trusts blindly.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::util::*;

/// A tree of one big file and many small ones: big enough that the
/// mount's memory cache (1 MiB in these tests) cannot hold it.
fn write_tree(src: &Path) {
    write_random_file(&src.join("big"), 41, 6 << 20);
    let small = src.join("small");
    mkdir(&small);
    for i in 0..150u64 {
        write_random_file(&small.join(format!("f{i:03}")), 100 + i, 1000 + i * 37);
    }
}

/// Read every file of `src` through `mounted` (where the snapshot shows
/// it) and compare, after asking the kernel to drop what it cached of it.
fn assert_reads_match(src: &Path, mounted: &Path, when: &str) {
    for rel in files_under(src) {
        let m = mounted.join(&rel);
        let f = fs::File::open(&m).unwrap_or_else(|e| panic!("{when}: open {}: {e}", m.display()));
        // SAFETY: advice on a descriptor we own; failure is harmless here.
        unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        drop(f);
        let got = fs::read(&m).unwrap_or_else(|e| panic!("{when}: read {}: {e}", m.display()));
        let want = fs::read(src.join(&rel)).expect("read source");
        assert!(
            got == want,
            "{when}: {} differs from its source",
            rel.display()
        );
    }
}

/// The disk cache's directory under the repository's state directory.
fn read_cache_of(repo: &Repo) -> PathBuf {
    let cache = repo.secret.clone().expect("a bucket repository").cache_dir;
    walk(&cache)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "read-cache"))
        .unwrap_or_else(|| panic!("no read-cache under {}", cache.display()))
}

/// The cached blocks: (path, length).
fn blocks_in(dir: &Path) -> Vec<(PathBuf, u64)> {
    fs::read_dir(dir)
        .expect("read_dir read-cache")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n != "lock"))
        .map(|p| {
            let len = fs::metadata(&p).expect("stat block").len();
            (p, len)
        })
        .collect()
}

/// A repository in the bucket holding `write_tree`'s tree as snapshot
/// "reads", and where that tree is; requests give up after a few seconds,
/// so that a read the cache should have served fails quickly.
fn bucket_with_tree(garage: &Garage, prefix: &str, work: &Work) -> Repo {
    write_tree(&work.src);
    let mut repo = Repo::new_in_bucket(garage, prefix, &[1, 2, 3]);
    repo.ingest(&["--name", "reads"], &[&work.src]);
    repo.env.push(("SNAPFS_S3_RETRY_SECONDS", "3".to_string()));
    repo
}

/// Two directories of small files, stored in one pack smaller than a
/// cache block: reading the first directory through the mount brings the
/// whole pack into the disk cache, while the second is never read (nor
/// warmed ahead, which stays within a directory). Reading it then can
/// only be served by the disk cache or the bucket: not by the kernel's
/// page cache or the mount's memory.
fn bucket_with_two_dirs(garage: &Garage, prefix: &str, work: &Work) -> Repo {
    for d in ["a", "b"] {
        mkdir(&work.src.join(d));
        for i in 0..40u64 {
            let seed = i + if d == "a" { 0 } else { 1000 };
            let path = work.src.join(d).join(format!("f{i:02}"));
            write_random_file(&path, seed, 300 + i * 11);
        }
    }
    let mut repo = Repo::new_in_bucket(garage, prefix, &[1, 2, 3]);
    repo.ingest(&["--name", "reads"], &[&work.src]);
    repo.env.push(("SNAPFS_S3_RETRY_SECONDS", "3".to_string()));
    repo
}

#[test]
fn bucket_restore_with_merged_reads_gives_an_identical_tree() {
    let garage = Garage::start();
    let work = Work::new();
    let repo = bucket_with_tree(&garage, "merged", &work);
    let out = work.scratch.join("restored");
    let done = run_ok(
        repo.cmd()
            .env("RUST_LOG", "snapfs=debug")
            .args(["restore", "reads"])
            .arg(&out),
    );
    let said = String::from_utf8_lossy(&done.stderr);
    assert!(
        said.contains("in one request"),
        "no merged read was made: {}",
        describe("restore", &done)
    );
    let restored = restored_path(&out, &work.src);
    let diff = output_of(
        std::process::Command::new("diff")
            .arg("-r")
            .arg(&work.src)
            .arg(&restored),
    );
    assert!(diff.status.success(), "{}", describe("diff -r", &diff));
    assert_same_tree(&work.src, &restored);
}

/// The second directory, never read before the cluster stops, can then
/// only come from the disk cache.
#[test]
fn mount_disk_cache_serves_what_it_fetched_with_every_node_stopped() {
    let mut garage = Garage::start();
    let work = Work::new();
    let repo = bucket_with_two_dirs(&garage, "offline", &work);
    let mut mount = Mount::new(&repo, &["--cache-size", "1M", "--disk-cache-size", "64M"]);
    let mounted = mount.source_in("reads", &work.src);
    assert_reads_match(&work.src.join("a"), &mounted.join("a"), "first read");
    for i in 1..=3 {
        garage.kill_node(i);
    }
    assert_reads_match(
        &work.src.join("b"),
        &mounted.join("b"),
        "with every node stopped",
    );
    mount.assert_alive();
    let dir = read_cache_of(&repo);
    assert_eq!(mode_of(&dir) & 0o777, 0o700, "{}", dir.display());
    for (p, _) in blocks_in(&dir) {
        let mode = fs::metadata(&p).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", p.display());
    }
}

#[test]
fn mount_disk_cache_stays_within_its_size() {
    let garage = Garage::start();
    let work = Work::new();
    let repo = bucket_with_tree(&garage, "bounded", &work);
    let limit = 2u64 << 20;
    let mut mount = Mount::new(&repo, &["--cache-size", "1M", "--disk-cache-size", "2M"]);
    let mounted = mount.source_in("reads", &work.src);
    assert_reads_match(&work.src, &mounted, "through a 2 MiB disk cache");
    mount.assert_alive();
    let blocks = blocks_in(&read_cache_of(&repo));
    let total: u64 = blocks.iter().map(|b| b.1).sum();
    assert!(!blocks.is_empty(), "nothing was cached");
    assert!(
        total <= limit,
        "{total} bytes cached, more than {limit}: {blocks:?}"
    );
}

/// Every block overwritten at its own length (used, and wrong) before the
/// second directory is read: its bytes are noticed, fetched again from the
/// bucket, and read right, with no damage reported.
#[test]
fn mount_disk_cache_tampered_block_is_fetched_again_from_the_bucket() {
    let garage = Garage::start();
    let work = Work::new();
    let repo = bucket_with_two_dirs(&garage, "tampered", &work);
    let mut mount = Mount::new(&repo, &["--cache-size", "0", "--disk-cache-size", "64M"]);
    let mounted = mount.source_in("reads", &work.src);
    assert_reads_match(&work.src.join("a"), &mounted.join("a"), "first read");
    let blocks = blocks_in(&read_cache_of(&repo));
    assert!(!blocks.is_empty(), "nothing was cached");
    for (p, len) in &blocks {
        fs::write(p, vec![0x5a; *len as usize]).expect("tamper");
    }
    // The first directory again: its blocks are all in the disk cache
    // (the memory cache is kept out of the way), then the second.
    assert_reads_match(
        &work.src.join("a"),
        &mounted.join("a"),
        "a after the cache was tampered with",
    );
    let (src_b, mounted_b) = (work.src.join("b"), mounted.join("b"));
    assert_reads_match(&src_b, &mounted_b, "after the cache was tampered with");
    mount.assert_alive();
    let stderr = mount.finish();
    assert!(
        stderr.contains("failed their check; read again"),
        "the tampered blocks were not noticed:\n{stderr}"
    );
    assert!(!stderr.contains("ERROR"), "reported as damage:\n{stderr}");
}

#[test]
fn mount_disk_cache_is_refused_for_a_local_repository() {
    let repo = Repo::new();
    let dir = tempdir();
    let out = output_of(
        repo.cmd()
            .args(["mount", "--disk-cache-size", "1G"])
            .arg(dir.path()),
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe("mount", &out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--disk-cache-size is for a repository in a bucket"),
        "{}",
        describe("mount --disk-cache-size of a local repository", &out)
    );
}

/// A second machine makes its catalog from the bucket's packs, reading
/// their tables from each pack's tail and the directory pages ahead in
/// merged runs: a pack whose table outgrows one read of its tail (2,000
/// small files: more rows than 64 KiB holds) and a tree of many
/// directories come out whole, and every file restores to its bytes.
#[test]
fn catalog_from_a_bucket_reads_big_pack_tables_and_pages_ahead() {
    let garage = Garage::start();
    let work = Work::new();
    for d in 0..40u64 {
        let dir = work.src.join(format!("d{d:02}"));
        mkdir(&dir);
        for i in 0..50u64 {
            write_random_file(&dir.join(format!("f{i:02}")), d * 100 + i, 200 + i);
        }
    }
    let first = Repo::new_in_bucket(&garage, "tables", &[1]);
    first.ingest(&["--name", "many"], &[&work.src]);
    let reference = work.freeze("many");
    let second = Repo::bucket_handle(&garage, "tables", &[2]);
    let out = output_of(second.cmd().args(["-v", "snapshots"]));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.contains("rebuilding it from the packs"),
        "{}",
        describe("the second machine's first command", &out)
    );
    work.assert_restores(&second, "many", &reference);
    assert_verify_read_data_ok(&second, "a catalog made from the bucket");
}
