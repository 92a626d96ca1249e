//! Building source trees: temporary directories, seeded random data, the
//! metadata setters (mtime to the nanosecond, owners, devices, ACLs),
//! sparse files, and walking a tree.
//!
//! Names with arbitrary bytes go through `OsStr`/`OsStrExt` and `Command`
//! arguments; nothing is shell-quoted.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::{GIB, KIB, MIB, tool};

/// A temporary directory, created under the system temp dir; pass it
/// through [`canonical`] so that the absolute paths recorded by ingest are
/// predictable.
pub(crate) fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("snapfs-test-")
        .tempdir()
        .expect("create temp dir")
}

pub(crate) fn canonical(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|e| panic!("canonicalize {}: {e}", p.display()))
}

/// A source directory `src` that other users may traverse (tempdirs are
/// 0700), for tests that read it or its snapshots as another user.
pub(crate) fn open_source_dir() -> (TempDir, PathBuf) {
    let dir = tempdir();
    let root = canonical(dir.path()).join("src");
    mkdir(&root);
    chmod(dir.path(), 0o755);
    (dir, root)
}

// ---------------------------------------------------------------- data

/// The seed of a test that draws random moments or changes: fixed, so a
/// failure repeats, unless `SNAPFS_TEST_SEED` asks for another.
pub(crate) fn test_seed() -> u64 {
    std::env::var("SNAPFS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4711)
}

/// A small deterministic generator (splitmix64), so fixtures are
/// reproducible without a crate for randomness.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

pub(crate) fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    Rng::new(seed).fill(&mut buf);
    buf
}

/// Writes `len` bytes of incompressible pseudo-random data.
pub(crate) fn write_random_file(path: &Path, seed: u64, len: u64) {
    let mut rng = Rng::new(seed);
    let mut f = fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).expect("write random data");
        left -= n as u64;
    }
}

/// Writes `len` bytes that are partly random and partly repetitive text,
/// so that compression has something to do but cannot flatten it.
pub(crate) fn write_mixed_file(path: &Path, seed: u64, len: u64) {
    let mut rng = Rng::new(seed);
    let mut f = fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut written = 0u64;
    let mut block = vec![0u8; 64 * KIB as usize];
    let mut line_no = 0u64;
    while written < len {
        let n = (len - written).min(block.len() as u64) as usize;
        if rng.below(2) == 0 {
            rng.fill(&mut block[..n]);
        } else {
            let mut text = Vec::with_capacity(n + 128);
            while text.len() < n {
                line_no += 1;
                let _ = writeln!(
                    text,
                    "{line_no:08} the quick brown fox {} jumps over the lazy dog {}",
                    rng.below(1000),
                    line_no % 97
                );
            }
            block[..n].copy_from_slice(&text[..n]);
        }
        f.write_all(&block[..n]).expect("write mixed data");
        written += n as u64;
    }
}

/// A file of `len` bytes (set_len: all hole) with `islands` of data at
/// their offsets.
pub(crate) fn sparse_file(path: &Path, len: u64, islands: &[(u64, Vec<u8>)]) {
    let f = fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.set_len(len).expect("set_len");
    for (off, data) in islands {
        f.write_all_at(data, *off).expect("write island");
    }
    f.sync_all().expect("fsync");
}

/// lseek(2) (SEEK_DATA, SEEK_HOLE...), with the errno on failure.
pub(crate) fn seek(f: &fs::File, off: u64, whence: libc::c_int) -> Result<u64, i32> {
    // SAFETY: lseek on a descriptor we own.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r as u64)
    }
}

/// Logical size of [`sparse_image`].
pub(crate) const SPARSE_LOGICAL: u64 = GIB;

/// Where [`sparse_image`] holds data, and the seed of each island: 1 MiB
/// of `random_bytes(seed, MIB)` at each offset, holes everywhere else.
pub(crate) const SPARSE_ISLANDS: [(u64, u64); 3] = [
    (0, 900),
    (512 * MIB + 12_345, 901),
    (SPARSE_LOGICAL - MIB, 902),
];

/// A 1 GiB disk image holding 3 MiB of data ([`SPARSE_ISLANDS`]).
pub(crate) fn sparse_image(path: &Path) {
    let islands: Vec<(u64, Vec<u8>)> = SPARSE_ISLANDS
        .iter()
        .map(|&(off, seed)| (off, random_bytes(seed, MIB as usize)))
        .collect();
    sparse_file(path, SPARSE_LOGICAL, &islands);
}

/// A plain tree for tests that need ordinary files only: `count` files of
/// random data spread over `dirs` directories, `size` bytes each (±50%).
pub(crate) fn build_plain_tree(root: &Path, seed: u64, dirs: usize, count: usize, size: u64) {
    let mut rng = Rng::new(seed);
    for i in 0..count {
        let d = root.join(format!("d{:02}", i % dirs.max(1)));
        mkdir(&d);
        let len = size / 2 + rng.below(size.max(1));
        write_random_file(&d.join(format!("file-{i:05}")), rng.next_u64(), len);
    }
}

// ---------------------------------------------------------------- metadata

/// `p` as a C string, for the libc calls std has no wrapper for.
pub(crate) fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn check(rc: libc::c_int, what: &str, p: &Path) {
    if rc != 0 {
        panic!(
            "{what} {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        );
    }
}

/// Sets the mtime (and atime) of `p` itself, not of a symlink's target.
pub(crate) fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let ts = [
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    let c = cpath(p);
    // SAFETY: a valid C string and two timespecs, as utimensat wants.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    check(rc, "utimensat", p);
}

pub(crate) fn lchown(p: &Path, uid: u32, gid: u32) {
    let c = cpath(p);
    // SAFETY: a valid C string.
    let rc = unsafe { libc::lchown(c.as_ptr(), uid, gid) };
    check(rc, "lchown", p);
}

pub(crate) fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, p.display()));
}

/// The permission bits of `p` itself (not of a symlink's target), with
/// setuid, setgid and sticky.
pub(crate) fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// `setfacl ARGS... P`.
pub(crate) fn setfacl(args: &[&str], p: &Path) {
    let mut a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    a.push(p.as_os_str());
    tool("setfacl", &a);
}

pub(crate) fn mkfifo(p: &Path, mode: u32) {
    let c = cpath(p);
    // SAFETY: a valid C string.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), mode as libc::mode_t) };
    check(rc, "mkfifo", p);
}

pub(crate) fn mknod_char(p: &Path, mode: u32, major: u32, minor: u32) {
    mknod(p, libc::S_IFCHR | mode as libc::mode_t, major, minor);
}

pub(crate) fn mknod_block(p: &Path, mode: u32, major: u32, minor: u32) {
    mknod(p, libc::S_IFBLK | mode as libc::mode_t, major, minor);
}

fn mknod(p: &Path, mode: libc::mode_t, major: u32, minor: u32) {
    let c = cpath(p);
    // SAFETY: a valid C string.
    let rc = unsafe { libc::mknod(c.as_ptr(), mode, libc::makedev(major, minor)) };
    check(rc, "mknod", p);
}

pub(crate) fn write_file(p: &Path, data: &[u8]) {
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

pub(crate) fn mkdir(p: &Path) {
    fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
}

// ---------------------------------------------------------------- walking

/// Lists every path under `root` (excluding `root`), parents before children.
pub(crate) fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn rec(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .map(|e| e.expect("read_dir entry").path())
            .collect();
        entries.sort();
        for p in entries {
            out.push(p.clone());
            if fs::symlink_metadata(&p).expect("lstat").is_dir() {
                rec(&p, out);
            }
        }
    }
    rec(root, &mut out);
    out
}

/// Sum of the sizes of the regular files under `dir` (0 if it is missing).
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for entry in entries {
        let entry = entry.expect("read_dir entry");
        let meta = fs::symlink_metadata(entry.path()).expect("lstat");
        if meta.is_dir() {
            total += dir_bytes(&entry.path());
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}

/// Bytes of the files under `dir`, counting none that vanish while it is
/// read (a copy in progress, a cluster's files come and go as it writes).
pub(crate) fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match fs::symlink_metadata(e.path()) {
            Ok(m) if m.is_dir() => bytes_under(&e.path()),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

/// Every regular file under `root`, relative to it.
pub(crate) fn files_under(root: &Path) -> Vec<PathBuf> {
    walk(root)
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .map(|p| p.strip_prefix(root).expect("under root").to_path_buf())
        .collect()
}
