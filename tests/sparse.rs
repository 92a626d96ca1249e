//! Sparse files: ingest finds holes with SEEK_DATA/SEEK_HOLE and records
//! them without reading them; restore, the mount and `cp --sparse=always`
//! out of the mount keep them holes.
//!
//! Files here are 1 TB (logical): comparing them byte for byte would take
//! as long as the bug these tests guard against, so contents are compared
//! over the data regions of both files (`assert_same_sparse`), outside of
//! which both are holes. Commands run with a time limit that only guards
//! against a hang; no test measures speed.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::util::*;

const TIB: u64 = 1 << 40;
/// Long enough for anything that does not read the holes, far too short to
/// read 1 TB of zeros (about 35 minutes before holes were skipped).
const HANG_GUARD: Duration = Duration::from_secs(300);

/// A temporary directory on a filesystem that keeps files sparse and tells
/// where their holes are: the system's temporary directory when it does
/// (ext4, xfs, btrfs, tmpfs), else a tmpfs mounted in it.
struct SparseDir {
    path: PathBuf,
    // Unmounted before the directory holding it is removed.
    _tmpfs: Option<Tmpfs>,
    _dir: TempDir,
}

impl SparseDir {
    fn new() -> SparseDir {
        let dir = tempdir();
        let base = canonical(dir.path());
        if holes_supported(&base) {
            return SparseDir {
                path: base,
                _tmpfs: None,
                _dir: dir,
            };
        }
        let tmpfs = Tmpfs::mount(&base.join("tmpfs"), "1G");
        assert!(
            holes_supported(&tmpfs.path),
            "neither {} nor a tmpfs keeps a 1 TB file sparse with SEEK_HOLE",
            base.display()
        );
        SparseDir {
            path: tmpfs.path.clone(),
            _tmpfs: Some(tmpfs),
            _dir: dir,
        }
    }
}

fn holes_supported(dir: &Path) -> bool {
    let probe = dir.join("probe");
    let ok = File::create(&probe).is_ok_and(|f| {
        f.set_len(TIB).is_ok() && matches!(seek(&f, 0, libc::SEEK_DATA), Err(libc::ENXIO))
    });
    let _ = fs::remove_file(&probe);
    ok
}

/// The data regions of `f`, as SEEK_DATA and SEEK_HOLE report them.
fn data_regions(f: &File) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let start = match seek(f, pos, libc::SEEK_DATA) {
            Ok(d) => d,
            Err(libc::ENXIO) => return out,
            Err(e) => panic!("SEEK_DATA at {pos}: errno {e}"),
        };
        let end = seek(f, start, libc::SEEK_HOLE)
            .unwrap_or_else(|e| panic!("SEEK_HOLE at {start}: errno {e}"));
        assert!(end > start, "SEEK_HOLE at {start} gives {end}");
        out.push((start, end));
        pos = end;
    }
}

/// Bytes in data regions.
fn data_bytes(p: &Path) -> u64 {
    let f = File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    data_regions(&f).iter().map(|(s, e)| e - s).sum()
}

/// `a` and `b` hold the same bytes: same size, and the same bytes over the
/// union of both files' data regions. Everywhere else both are holes, which
/// read as zeros, so this compares every byte without reading the holes.
fn assert_same_sparse(a: &Path, b: &Path) {
    let open = |p: &Path| File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let (fa, fb) = (open(a), open(b));
    let size = fa.metadata().expect("stat").len();
    assert_eq!(
        size,
        fb.metadata().expect("stat").len(),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    let mut regions = data_regions(&fa);
    regions.extend(data_regions(&fb));
    regions.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in regions {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let total: u64 = merged.iter().map(|(s, e)| e - s).sum();
    assert!(
        total < 256 * MIB,
        "{total} bytes of data regions between {} and {}: the files are not sparse",
        a.display(),
        b.display()
    );
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    for (s, e) in merged {
        let mut at = s;
        while at < e {
            let n = (e - at).min(MIB) as usize;
            fa.read_exact_at(&mut ba[..n], at).expect("read a");
            fb.read_exact_at(&mut bb[..n], at).expect("read b");
            if ba[..n] != bb[..n] {
                let i = (0..n).find(|&i| ba[i] != bb[i]).expect("a difference");
                panic!(
                    "{} and {} differ at byte {}",
                    a.display(),
                    b.display(),
                    at + i as u64
                );
            }
            at += n as u64;
        }
    }
}

fn expect_ok(what: &str, out: Output) -> Output {
    assert!(out.status.success(), "{}", describe(what, &out));
    out
}

/// Ingest `src` into `repo` (JSON summary) and what the process read in
/// all (`rchar` of /proc/PID/io, counted by the kernel, whatever the
/// program itself reports): a shell runs it and reports its own counters,
/// which include those of the child it waited for.
fn ingest_counting_reads(repo: &Repo, src: &Path) -> (Ingested, u64) {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#""$@"; rc=$?; grep '^rchar:' /proc/$$/io >&2; exit $rc"#)
        .arg("sh")
        .arg(snapfs_bin())
        .arg("--repo")
        .arg(&repo.path)
        .args(["ingest", "--json"])
        .arg(src)
        .env_remove("SNAPFS_REPO");
    let out = expect_ok("ingest", run_within(&mut cmd, HANG_GUARD));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rchar =
        proc_field(&stderr, "rchar:").unwrap_or_else(|| panic!("no rchar line in {stderr}"));
    (Ingested::from_output(&out), rchar)
}

fn restore_within(repo: &Repo, spec: &str, target: &Path) {
    expect_ok(
        "restore",
        run_within(&mut repo.restore_cmd(spec, target), HANG_GUARD),
    );
}

/// Islands at the start, an unaligned one in the middle of a long hole,
/// one holding zeros of its own, and one at the very end.
fn islands_of_1tb() -> Vec<(u64, Vec<u8>)> {
    let mut with_zeros = random_bytes(14, 3 * MIB as usize);
    with_zeros[MIB as usize..2 * MIB as usize].fill(0);
    vec![
        (0, random_bytes(11, (MIB + 17) as usize)),
        (3 * GIB + 7, random_bytes(12, 100_000)),
        (TIB / 2 + 12_345, random_bytes(13, 2 * MIB as usize)),
        (700 * GIB + 4096 * 3, with_zeros),
        (TIB - MIB, random_bytes(15, MIB as usize)),
    ]
}

const ISLANDS_1TB: u64 = (MIB + 17) + 100_000 + 2 * MIB + 3 * MIB + MIB;

/// The issue: a 1 TB virtual disk image with a few MiB written was read
/// byte for byte at every ingest (about 35 minutes of zeros). Its holes
/// are now found with SEEK_DATA/SEEK_HOLE and never read, and every way
/// out (restore, the mount, `cp --sparse=always` from the mount) keeps
/// them holes with the right bytes around them.
#[test]
fn a_1tb_sparse_file_ingests_in_seconds_and_restores_sparse() {
    let dir = SparseDir::new();
    let src = dir.path.join("src");
    mkdir(&src);
    let disk = src.join("disk.img");
    sparse_file(&disk, TIB, &islands_of_1tb());
    let repo = Repo::new();

    let (snap, rchar) = ingest_counting_reads(&repo, &src);
    assert!(
        rchar < 256 * MIB,
        "ingest read {rchar} bytes for {ISLANDS_1TB} bytes of data: it read the holes"
    );
    let bytes_read = snap.num("bytes_read");
    assert!(
        (ISLANDS_1TB..=64 * MIB).contains(&bytes_read),
        "ingest says it read {bytes_read} bytes for {ISLANDS_1TB} bytes of data"
    );
    assert!(
        snap.num("hole_bytes") >= TIB - 64 * MIB,
        "ingest says it skipped {} bytes of holes",
        snap.num("hole_bytes")
    );
    assert_eq!(snap.num("size"), TIB);
    assert!(
        snap.num("added_bytes") < 64 * MIB,
        "ingest stored {} bytes",
        snap.num("added_bytes")
    );

    // Restore: the same bytes, holes kept.
    let target = dir.path.join("restored");
    restore_within(&repo, &snap.id, &target);
    let restored = restored_path(&target, &disk);
    assert_same_sparse(&disk, &restored);
    let allocated = allocated_bytes(&restored);
    assert!(
        allocated < 64 * MIB,
        "the restored 1 TB file allocates {allocated} bytes for {ISLANDS_1TB} bytes of data"
    );
    // Restoring again checks the file in place without reading its holes.
    restore_within(&repo, &snap.id, &target);
    assert_same_sparse(&disk, &restored);

    // The mount: SEEK_DATA/SEEK_HOLE find the holes, the bytes read are
    // the source's, and cp --sparse=always makes a sparse copy.
    let mount = Mount::new(&repo, &[]);
    let mounted = restored_path(&mount.path.join(&snap.name), &disk);
    let on_mount = data_bytes(&mounted);
    assert!(
        on_mount < 64 * MIB,
        "SEEK_DATA/SEEK_HOLE on the mount find {on_mount} bytes of data for {ISLANDS_1TB}"
    );
    assert_same_sparse(&disk, &mounted);
    let copy = dir.path.join("copy.img");
    let out = run_within(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&mounted)
            .arg(&copy),
        HANG_GUARD,
    );
    expect_ok("cp --sparse=always out of the mount", out);
    let allocated = allocated_bytes(&copy);
    assert!(
        allocated < 64 * MIB,
        "cp --sparse=always out of the mount made a file allocating {allocated} bytes"
    );
    assert_same_sparse(&disk, &copy);
    mount.finish();

    // What verify reads is the data, once.
    expect_ok(
        "verify --read-data",
        run_within(repo.cmd().args(["verify", "--read-data"]), HANG_GUARD),
    );
}

/// Ingesting a sparse file again stores nothing new: its holes are the
/// same zero chunks as before, and a copy with its zeros written out (no
/// holes at all) is cut into exactly the chunks of the sparse one.
#[test]
fn a_sparse_file_ingested_again_stores_nothing_new() {
    let dir = SparseDir::new();
    let src = dir.path.join("src");
    mkdir(&src);
    let disk = src.join("disk.img");
    sparse_file(&disk, TIB, &islands_of_1tb());
    // Small enough to write out in full.
    let small = src.join("small.img");
    sparse_file(
        &small,
        100 * MIB + 3,
        &[
            (5 * MIB + 1, random_bytes(21, 300_000)),
            (60 * MIB, random_bytes(22, 2 * MIB as usize)),
        ],
    );
    let repo = Repo::new();
    let first = ingest_counting_reads(&repo, &src).0;
    assert!(first.num("hole_bytes") > TIB - 64 * MIB);

    // Make the walk read the sparse file again, and add a dense copy.
    set_mtime(&disk, 1_600_000_000, 1);
    let dense = src.join("small-dense.img");
    tool(
        "cp",
        &[
            std::ffi::OsStr::new("--sparse=never"),
            small.as_os_str(),
            dense.as_os_str(),
        ],
    );
    assert!(
        allocated_bytes(&dense) >= 100 * MIB,
        "the copy is not dense"
    );
    let (second, rchar) = ingest_counting_reads(&repo, &src);
    assert_eq!(second.num("changed"), 1, "{}", second.json);
    assert!(
        rchar < 512 * MIB,
        "the second ingest read {rchar} bytes: it read the holes"
    );
    // New: the trees of the directories from / down to the source (each
    // holds a changed entry) and the snapshot's record, nothing else.
    let trees = src.ancestors().count() as u64;
    assert!(
        second.num("new_chunks") <= trees + 1,
        "the second ingest stored {} new chunks: {}",
        second.num("new_chunks"),
        second.json
    );
    assert!(
        second.num("added_bytes") < 2 * MIB,
        "the second ingest added {} bytes",
        second.num("added_bytes")
    );
    let target = dir.path.join("restored");
    restore_within(&repo, &second.id, &target);
    assert_same_sparse(&disk, &restored_path(&target, &disk));
    assert_same_sparse(&small, &restored_path(&target, &dense));
}

/// The descriptor number by which process `pid` holds `path` open, if any.
fn open_fd(pid: u32, path: &Path) -> Option<String> {
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    fds.flatten().find_map(|e| {
        (fs::read_link(e.path()).ok()? == path)
            .then(|| e.file_name().to_string_lossy().into_owned())
    })
}

/// The file offset of descriptor `fd` of `pid` (where its last
/// SEEK_DATA/SEEK_HOLE landed), while it is open.
fn fd_pos(pid: u32, fd: &str) -> Option<u64> {
    let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    proc_field(&info, "pos:")
}

/// Resumes a stopped process and kills it, if it still runs, when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = signal(self.0.id(), libc::SIGCONT);
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Holes filled while ingest reads the file (after it found some of them,
/// before it came to others) must not give a snapshot that mixes the two
/// states and claims to be consistent: ingest reports the file as changed
/// while read (the next snapshot reads it again and has the final bytes),
/// or, if it was done with the file before the writes, has exactly the
/// bytes from before.
#[test]
fn holes_filled_while_a_sparse_file_is_ingested_are_reported_or_not_seen() {
    const STRIDE: u64 = 16 * GIB;
    let dir = SparseDir::new();
    let src = dir.path.join("src");
    mkdir(&src);
    let disk = src.join("disk.img");
    let islands: Vec<(u64, Vec<u8>)> = (0..TIB / STRIDE)
        .map(|i| {
            (
                i * STRIDE + 4096 * i,
                random_bytes(100 + i, 64 * KIB as usize),
            )
        })
        .collect();
    sparse_file(&disk, TIB, &islands);
    // The file as it is before anything fills its holes.
    let before = dir.path.join("before.img");
    sparse_file(&before, TIB, &islands);

    let mut caught = false;
    for attempt in 0..5 {
        let repo = Repo::new();
        let mut cmd = repo.ingest_cmd(&[], &[&src]);
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ingest");
        let mut child = Child(child);
        let pid = child.0.id();
        // Wait for ingest to be half way through the file, then stop it.
        let deadline = Instant::now() + HANG_GUARD;
        let stopped = loop {
            if let Some(fd) = open_fd(pid, &disk)
                && fd_pos(pid, &fd).is_some_and(|p| p >= TIB / 2)
            {
                signal(pid, libc::SIGSTOP).expect("SIGSTOP ingest");
                break fd_pos(pid, &fd);
            }
            if child.0.try_wait().expect("wait").is_some() || Instant::now() > deadline {
                break None;
            }
            thread::sleep(Duration::from_micros(100));
        };
        let mut written = Vec::new();
        if let Some(pos) = stopped {
            // Between islands: one hole already behind the file offset, one
            // well ahead of it.
            let mids: Vec<u64> = (0..TIB / STRIDE).map(|i| i * STRIDE + STRIDE / 2).collect();
            let behind = mids.iter().rev().find(|&&m| m + 64 * MIB < pos);
            let ahead = mids.iter().find(|&&m| m > pos + 64 * MIB);
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&disk)
                .expect("open for writing");
            for &at in behind.into_iter().chain(ahead) {
                f.write_all_at(&[0xEE; 4096], at).expect("fill a hole");
                written.push(at);
            }
            f.sync_all().expect("fsync");
        }
        signal(pid, libc::SIGCONT).expect("SIGCONT ingest");
        let status = wait_timeout(&mut child.0, HANG_GUARD)
            .unwrap_or_else(|| panic!("ingest still running after {HANG_GUARD:?}"));
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut child.0.stdout.take().expect("stdout"), &mut out)
            .expect("read stdout");
        assert!(status.success(), "ingest failed: {status}");
        let snap = Ingested::from_output(&Output {
            status,
            stdout: out,
            stderr: Vec::new(),
        });
        let disk_name = disk.to_string_lossy().into_owned();
        let changed = snap.json["warnings"]
            .as_array()
            .expect("warnings")
            .iter()
            .any(|w| w["kind"] == "changed" && w["path"] == disk_name.as_str());

        eprintln!(
            "attempt {attempt}: stopped at {stopped:?}, holes filled at {written:?}, \
             reported as changed: {changed}"
        );
        let target = dir.path.join(format!("restored-{attempt}"));
        restore_within(&repo, &snap.id, &target);
        let restored = restored_path(&target, &disk);
        if !changed {
            // Done with the file before the writes: the bytes from before.
            assert_same_sparse(&before, &restored);
        } else {
            assert!(!written.is_empty(), "changed, though nothing was written");
            // The next snapshot reads it again and has the bytes written.
            let again = repo.ingest(&[], &[&src]);
            let target = dir.path.join(format!("again-{attempt}"));
            restore_within(&repo, &again.id, &target);
            assert_same_sparse(&disk, &restored_path(&target, &disk));
        }
        if !written.is_empty() {
            caught |= written.len() == 2;
            // Empty the filled holes again for the next attempt.
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&disk)
                .expect("open for writing");
            for at in written {
                // SAFETY: fallocate on a descriptor we own.
                let rc = unsafe {
                    libc::fallocate(
                        f.as_raw_fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        at as libc::off_t,
                        4096,
                    )
                };
                assert_eq!(rc, 0, "punch hole: {}", std::io::Error::last_os_error());
            }
            if changed {
                break;
            }
        }
    }
    assert!(
        caught,
        "ingest was never stopped half way through the file in 5 attempts; the race was not tried"
    );
}
