//! Fixtures shared by the end-to-end tests: a handle on a repository driven
//! through the real `snapfs` binary, tree builders, and tree comparison.
//!
//! Every repository, source and restore target lives in its own `TempDir`,
//! so tests can run in parallel. Names with arbitrary bytes go through
//! `OsStr`/`OsStrExt` and `Command` arguments; nothing is shell-quoted.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tempfile::TempDir;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;

/// Path of the binary under test.
pub fn snapfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_snapfs")
}

/// A `snapfs` command with no repository taken from the caller's environment.
pub fn snapfs() -> Command {
    let mut cmd = Command::new(snapfs_bin());
    cmd.env_remove("SNAPFS_REPO");
    cmd.stdin(Stdio::null());
    cmd
}

/// Panics unless `tool` is on PATH: a test that needs a tool fails loudly
/// instead of skipping.
pub fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "this test needs `{tool}` on PATH; install it (scripts/test.sh does) instead of skipping"
    );
}

/// A temporary directory, created under the system temp dir, canonicalized
/// so that the absolute paths recorded by ingest are predictable.
pub fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("snapfs-test-")
        .tempdir()
        .expect("create temp dir")
}

pub fn canonical(p: &Path) -> PathBuf {
    fs::canonicalize(p).unwrap_or_else(|e| panic!("canonicalize {}: {e}", p.display()))
}

/// Renders a command's result for assertion messages.
pub fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn exit_code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// Runs `cmd`, asserting it exits with `expected`.
pub fn run_expect(cmd: &mut Command, expected: i32) -> Output {
    let what = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    assert_eq!(
        out.status.code(),
        Some(expected),
        "unexpected exit status\n{}",
        describe(&what, &out)
    );
    out
}

pub fn run_ok(cmd: &mut Command) -> Output {
    run_expect(cmd, 0)
}

pub fn parse_json(what: &str, bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "{what}: stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(bytes)
        )
    })
}

/// A repository in its own temporary directory.
pub struct Repo {
    _dir: Option<TempDir>,
    pub path: PathBuf,
}

impl Repo {
    /// Creates and initializes a fresh repository.
    pub fn new() -> Repo {
        let dir = tempdir();
        let path = canonical(dir.path()).join("repo");
        let repo = Repo {
            _dir: Some(dir),
            path,
        };
        repo.init();
        repo
    }

    /// A handle on a repository at `path` that this handle does not own.
    pub fn at(path: &Path) -> Repo {
        Repo {
            _dir: None,
            path: path.to_path_buf(),
        }
    }

    pub fn init(&self) {
        run_ok(self.cmd().arg("init"));
        assert!(
            self.path.join("catalog.db").is_file(),
            "init did not create {}",
            self.path.join("catalog.db").display()
        );
    }

    /// `snapfs --repo PATH` ready for a subcommand.
    pub fn cmd(&self) -> Command {
        let mut cmd = snapfs();
        cmd.arg("--repo").arg(&self.path);
        cmd
    }

    /// `snapfs --repo PATH ingest --json EXTRA... SOURCES...` as a command.
    pub fn ingest_cmd<S: AsRef<OsStr>>(&self, extra: &[&str], sources: &[S]) -> Command {
        let mut cmd = self.cmd();
        cmd.arg("ingest").arg("--json").args(extra);
        for s in sources {
            cmd.arg(s.as_ref());
        }
        cmd
    }

    /// Ingests `sources`, expecting success, and returns the JSON summary.
    pub fn ingest<S: AsRef<OsStr>>(&self, extra: &[&str], sources: &[S]) -> Ingested {
        let out = run_ok(&mut self.ingest_cmd(extra, sources));
        Ingested::from_output(&out)
    }

    /// The parsed `snapshots --json` list.
    pub fn snapshots(&self) -> Vec<Value> {
        let out = run_ok(self.cmd().args(["snapshots", "--json"]));
        match parse_json("snapshots --json", &out.stdout) {
            Value::Array(items) => items,
            other => panic!("snapshots --json is not an array: {other}"),
        }
    }

    pub fn snapshot_ids(&self) -> Vec<String> {
        self.snapshots()
            .iter()
            .map(|s| json_str(s, "id").to_string())
            .collect()
    }

    /// Restores `spec` (SNAPSHOT or SNAPSHOT:PATH) into `target`, expecting success.
    pub fn restore(&self, spec: impl AsRef<OsStr>, target: &Path) -> Output {
        run_ok(self.cmd().arg("restore").arg(spec.as_ref()).arg(target))
    }

    /// Total bytes of pack files.
    pub fn packs_bytes(&self) -> u64 {
        dir_bytes(&self.path.join("packs"))
    }
}

/// What `ingest --json` reported.
#[derive(Debug, Clone)]
pub struct Ingested {
    pub json: Value,
    pub id: String,
    pub name: String,
}

impl Ingested {
    pub fn from_output(out: &Output) -> Ingested {
        let json = parse_json("ingest --json", &out.stdout);
        let snap = json
            .get("snapshot")
            .unwrap_or_else(|| panic!("ingest --json has no \"snapshot\": {json}"));
        let id = json_str(snap, "id").to_string();
        let name = json_str(snap, "name").to_string();
        Ingested { json, id, name }
    }

    pub fn num(&self, key: &str) -> u64 {
        json_u64(&self.json, key)
    }
}

pub fn json_str<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("expected string field {key:?} in {v}"))
}

pub fn json_u64(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("expected unsigned number field {key:?} in {v}"))
}

/// Where restoring a whole snapshot into `target` puts the source `source`
/// (snapshots keep sources at their absolute paths).
pub fn restored_path(target: &Path, source: &Path) -> PathBuf {
    let rel = source
        .strip_prefix("/")
        .unwrap_or_else(|_| panic!("{} is not absolute", source.display()));
    target.join(rel)
}

/// Sum of the sizes of the regular files under `dir` (0 if it is missing).
pub fn dir_bytes(dir: &Path) -> u64 {
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

// ---------------------------------------------------------------- data

/// A small deterministic generator (splitmix64), so fixtures are
/// reproducible without a crate for randomness.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    Rng::new(seed).fill(&mut buf);
    buf
}

/// Writes `len` bytes of incompressible pseudo-random data.
pub fn write_random_file(path: &Path, seed: u64, len: u64) {
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
pub fn write_mixed_file(path: &Path, seed: u64, len: u64) {
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

// ---------------------------------------------------------------- metadata helpers

fn cpath(p: &Path) -> CString {
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
pub fn set_mtime(p: &Path, sec: i64, nsec: i64) {
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

pub fn lchown(p: &Path, uid: u32, gid: u32) {
    let c = cpath(p);
    let rc = unsafe { libc::lchown(c.as_ptr(), uid, gid) };
    check(rc, "lchown", p);
}

pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, p.display()));
}

pub fn mkfifo(p: &Path, mode: u32) {
    let c = cpath(p);
    let rc = unsafe { libc::mkfifo(c.as_ptr(), mode as libc::mode_t) };
    check(rc, "mkfifo", p);
}

pub fn mknod_char(p: &Path, mode: u32, major: u32, minor: u32) {
    let c = cpath(p);
    let rc = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | mode as libc::mode_t,
            libc::makedev(major, minor),
        )
    };
    check(rc, "mknod", p);
}

pub fn mknod_block(p: &Path, mode: u32, major: u32, minor: u32) {
    let c = cpath(p);
    let rc = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFBLK | mode as libc::mode_t,
            libc::makedev(major, minor),
        )
    };
    check(rc, "mknod", p);
}

pub fn write_file(p: &Path, data: &[u8]) {
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

pub fn mkdir(p: &Path) {
    fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
}

/// Runs an external tool, panicking with its output if it fails.
pub fn tool(program: &str, args: &[&OsStr]) -> Output {
    require_tool(program);
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    assert!(
        out.status.success(),
        "{}",
        describe(&format!("{cmd:?}"), &out)
    );
    out
}

/// Lists every path under `root` (excluding `root`), parents before children.
pub fn walk(root: &Path) -> Vec<PathBuf> {
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

// ---------------------------------------------------------------- the fixture

/// Paths inside the fixture that tests look at individually.
pub struct Fixture {
    pub root: PathBuf,
    pub sparse: PathBuf,
    pub big: PathBuf,
}

pub const SPARSE_LOGICAL: u64 = GIB;

/// Builds, under `dir`, a tree with every kind of entry a backup must keep:
/// files of many sizes (empty to 100 MiB, partly compressible), empty and
/// nested directories, non-UTF-8 names, names with newlines, a 255-byte name,
/// two hard-link groups (one spanning directories), relative, absolute and
/// dangling symlinks, a fifo, character and block devices, user xattrs,
/// POSIX access and default ACLs, foreign owners, setuid/sticky/odd modes, a
/// 1 GiB sparse file, and chosen mtimes with nanoseconds (one before 1970).
pub fn build_fixture(dir: &Path) -> Fixture {
    require_tool("setfacl");
    let root = canonical(dir);

    // Regular files of various sizes.
    let files = root.join("files");
    mkdir(&files);
    for (i, size) in [
        0u64,
        1,
        100,
        4095,
        4096,
        4097,
        65_536,
        MIB + 1,
        3 * MIB + 17,
    ]
    .into_iter()
    .enumerate()
    {
        let data = random_bytes(100 + i as u64, size as usize);
        write_file(&files.join(format!("size-{size}")), &data);
    }
    write_file(&files.join("text.txt"), b"hello, snapfs\n");
    write_file(&files.join("empty"), b"");
    write_file(&files.join("also-empty"), b"");
    // Identical content under different names: dedup must keep both names.
    write_file(&files.join("dup-a"), &random_bytes(7, 300_000));
    write_file(&files.join("dup-b"), &random_bytes(7, 300_000));
    let many = root.join("many");
    mkdir(&many);
    for i in 0..300u64 {
        write_file(
            &many.join(format!("f{i:04}")),
            format!("small file number {i}\n")
                .repeat((i % 13) as usize)
                .as_bytes(),
        );
    }

    // A 100 MiB file of pseudo-random but partly compressible data.
    let big = root.join("files").join("big-mixed.bin");
    write_mixed_file(&big, 42, 100 * MIB);

    // A sparse file: 1 GiB logical, 3 MiB of data.
    let sparse = root.join("sparse.img");
    {
        use std::io::{Seek, SeekFrom};
        let mut f = fs::File::create(&sparse).expect("create sparse");
        f.set_len(SPARSE_LOGICAL).expect("truncate sparse");
        for (i, off) in [0, 512 * MIB + 12_345, SPARSE_LOGICAL - MIB]
            .into_iter()
            .enumerate()
        {
            f.seek(SeekFrom::Start(off)).expect("seek");
            f.write_all(&random_bytes(900 + i as u64, MIB as usize))
                .expect("write");
        }
    }

    // Directories: empty, nested, read-only with contents.
    mkdir(&root.join("empty-dir"));
    mkdir(&root.join("nested/a/b/c/d/e"));
    write_file(&root.join("nested/a/b/c/d/e/leaf"), b"deep\n");
    mkdir(&root.join("nested/a/b/empty"));
    let ro = root.join("read-only-dir");
    mkdir(&ro);
    write_file(
        &ro.join("inside"),
        b"in a directory without write permission\n",
    );

    // Odd names.
    let names = root.join("names");
    mkdir(&names);
    let odd: Vec<Vec<u8>> = vec![
        b"latin1-caf\xe9".to_vec(),
        b"\xff\xfe\xfd".to_vec(),
        b"line\nbreak".to_vec(),
        b"\nstarts-with-newline".to_vec(),
        b"tab\there".to_vec(),
        b"back\\slash".to_vec(),
        b"-starts-with-dash".to_vec(),
        b"with:colon".to_vec(),
        b" leading space".to_vec(),
        b"trailing space ".to_vec(),
        "unicode-\u{e9}\u{1f600}".as_bytes().to_vec(),
        b"*?[glob]".to_vec(),
        vec![b'n'; 255],
    ];
    for (i, name) in odd.iter().enumerate() {
        let p = names.join(OsStr::from_bytes(name));
        write_file(&p, format!("odd name {i}\n").as_bytes());
    }
    mkdir(&names.join(OsStr::from_bytes(b"dir-\xc0\xaf-invalid")));
    write_file(
        &names
            .join(OsStr::from_bytes(b"dir-\xc0\xaf-invalid"))
            .join(OsStr::from_bytes(&[b'x'; 255])),
        b"255-byte name in a non-UTF-8 directory\n",
    );

    // Hard links: one group in one directory, one across directories.
    let links = root.join("links");
    mkdir(&links.join("other/deeper"));
    write_file(&links.join("h1"), b"hard link group one\n");
    fs::hard_link(links.join("h1"), links.join("h2")).expect("link h2");
    write_file(&links.join("x"), &random_bytes(55, 200_000));
    fs::hard_link(links.join("x"), links.join("other/y")).expect("link y");
    fs::hard_link(links.join("x"), links.join("other/deeper/z")).expect("link z");
    fs::hard_link(links.join("x"), files.join("x-from-elsewhere")).expect("link across top dirs");

    // Symlinks.
    let sym = root.join("symlinks");
    mkdir(&sym);
    symlink("../files/text.txt", sym.join("relative")).expect("symlink");
    symlink("/etc/hostname", sym.join("absolute")).expect("symlink");
    symlink("does/not/exist", sym.join("dangling")).expect("symlink");
    symlink("../nested", sym.join("to-dir")).expect("symlink");
    symlink(
        OsStr::from_bytes(b"target-\xff\nodd"),
        sym.join("odd-target"),
    )
    .expect("symlink");
    symlink(
        OsString::from_vec(vec![b'l'; 1000]),
        sym.join("long-target"),
    )
    .expect("symlink");

    // Special files.
    let special = root.join("special");
    mkdir(&special);
    mkfifo(&special.join("fifo"), 0o640);
    mknod_char(&special.join("null-like"), 0o620, 1, 3);
    mknod_block(&special.join("loop-like"), 0o660, 7, 200);

    // Extended attributes and ACLs.
    let xa = root.join("xattrs");
    mkdir(&xa);
    let with_x = xa.join("file");
    write_file(&with_x, b"has xattrs\n");
    xattr::set(&with_x, "user.comment", b"a comment").expect("setxattr");
    xattr::set(&with_x, "user.binary", &[0, 1, 2, 255, 254, 0]).expect("setxattr");
    xattr::set(&with_x, "user.empty", b"").expect("setxattr");
    xattr::set(&with_x, "user.big", &random_bytes(3, 3000)).expect("setxattr");
    xattr::set(&xa, "user.on-dir", b"directory xattr").expect("setxattr");
    let acl_file = xa.join("acl-file");
    write_file(&acl_file, b"has an access ACL\n");
    tool(
        "setfacl",
        &[
            OsStr::new("-m"),
            OsStr::new("u:1234:rw-,g:5678:r--"),
            acl_file.as_os_str(),
        ],
    );
    let acl_dir = xa.join("acl-dir");
    mkdir(&acl_dir);
    tool(
        "setfacl",
        &[
            OsStr::new("-d"),
            OsStr::new("-m"),
            OsStr::new("u:1234:rwx"),
            acl_dir.as_os_str(),
        ],
    );
    tool(
        "setfacl",
        &[
            OsStr::new("-m"),
            OsStr::new("u:4321:r-x"),
            acl_dir.as_os_str(),
        ],
    );
    write_file(&acl_dir.join("inherits"), b"created under a default ACL\n");

    // Ownership and modes (chown first: it clears setuid).
    let own = root.join("owners");
    mkdir(&own);
    write_file(&own.join("foreign"), b"owned by 1234:5678\n");
    lchown(&own.join("foreign"), 1234, 5678);
    mkdir(&own.join("foreign-dir"));
    lchown(&own.join("foreign-dir"), 1234, 5678);
    symlink("foreign", own.join("foreign-symlink")).expect("symlink");
    lchown(&own.join("foreign-symlink"), 4242, 4343);
    write_file(&own.join("private"), b"mode 0600\n");
    chmod(&own.join("private"), 0o600);
    write_file(&own.join("setuid"), b"#!/bin/sh\n");
    lchown(&own.join("setuid"), 1234, 0);
    chmod(&own.join("setuid"), 0o4755);
    write_file(&own.join("setgid"), b"#!/bin/sh\n");
    chmod(&own.join("setgid"), 0o2751);
    write_file(&own.join("no-permissions"), b"mode 0000\n");
    chmod(&own.join("no-permissions"), 0o000);
    mkdir(&own.join("sticky"));
    chmod(&own.join("sticky"), 0o1777);
    mkdir(&own.join("setgid-dir"));
    chmod(&own.join("setgid-dir"), 0o2775);
    chmod(&ro, 0o555);

    // Chosen mtimes with nanoseconds, children before parents so that
    // nothing disturbs a directory's mtime after it is set.
    let mut all = walk(&root);
    all.reverse();
    for (i, p) in all.iter().enumerate() {
        let sec = 1_500_000_000 + (i as i64) * 3_607;
        let nsec = ((i as i64) * 7_919_113 + 123) % 1_000_000_000;
        set_mtime(p, sec, nsec);
    }
    set_mtime(&files.join("text.txt"), -86_400 * 365 * 3, 500_000_001);
    set_mtime(&files.join("empty"), 4_102_444_800, 999_999_999); // year 2100
    set_mtime(&files.join("also-empty"), 1_000_000_000, 0);
    set_mtime(&root, 1_234_567_890, 987_654_321);

    Fixture { root, sparse, big }
}

/// A plain tree for tests that need ordinary files only: `count` files of
/// random data spread over `dirs` directories, `size` bytes each (±50%).
pub fn build_plain_tree(root: &Path, seed: u64, dirs: usize, count: usize, size: u64) {
    let mut rng = Rng::new(seed);
    for i in 0..count {
        let d = root.join(format!("d{:02}", i % dirs.max(1)));
        mkdir(&d);
        let len = size / 2 + rng.below(size.max(1));
        write_random_file(&d.join(format!("file-{i:05}")), rng.next_u64(), len);
    }
}

// ---------------------------------------------------------------- comparison

/// Asserts `restored` reproduces `src`: `rsync -naHAXc --delete
/// --itemize-changes` must print nothing, and a metadata walk must agree
/// on type, mode, owner, size, mtime (ns), device numbers, link counts,
/// symlink targets and extended attributes of every entry.
pub fn assert_same_tree(src: &Path, restored: &Path) {
    assert!(
        fs::symlink_metadata(restored)
            .map(|m| m.is_dir())
            .unwrap_or(false),
        "restored tree {} is missing",
        restored.display()
    );
    let diff = rsync_diff(src, restored);
    assert!(
        diff.is_empty(),
        "rsync finds differences between {} and {}:\n{}",
        src.display(),
        restored.display(),
        diff
    );
    let problems = metadata_diff(src, restored);
    assert!(
        problems.is_empty(),
        "metadata differs between {} and {}:\n{}",
        src.display(),
        restored.display(),
        problems.join("\n")
    );
}

/// The itemized differences rsync sees (empty when the trees are the same).
pub fn rsync_diff(src: &Path, restored: &Path) -> String {
    require_tool("rsync");
    let mut a = src.as_os_str().to_os_string();
    a.push("/");
    let mut b = restored.as_os_str().to_os_string();
    b.push("/");
    let out = Command::new("rsync")
        .args(["-naHAXc", "--delete", "--itemize-changes"])
        .arg(&a)
        .arg(&b)
        .output()
        .expect("spawn rsync");
    assert!(out.status.success(), "{}", describe("rsync", &out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn xattrs_of(p: &Path) -> BTreeMap<OsString, Vec<u8>> {
    let mut map = BTreeMap::new();
    if let Ok(names) = xattr::list(p) {
        for name in names {
            let value = xattr::get(p, &name).ok().flatten().unwrap_or_default();
            map.insert(name, value);
        }
    }
    map
}

/// Differences in metadata between `src` and `restored`, one line each.
pub fn metadata_diff(src: &Path, restored: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let mut pairs = vec![(src.to_path_buf(), restored.to_path_buf())];
    for p in walk(src) {
        let rel = p.strip_prefix(src).expect("under src").to_path_buf();
        pairs.push((p, restored.join(rel)));
    }
    for (a, b) in pairs {
        let name = a.display().to_string();
        let ma = fs::symlink_metadata(&a).expect("lstat source");
        let mb = match fs::symlink_metadata(&b) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("{name}: missing in restore ({e})"));
                continue;
            }
        };
        let mut diff = |what: &str, x: String, y: String| {
            if x != y {
                problems.push(format!("{name}: {what} {x} != restored {y}"));
            }
        };
        diff(
            "mode",
            format!("{:o}", ma.mode()),
            format!("{:o}", mb.mode()),
        );
        diff("uid", ma.uid().to_string(), mb.uid().to_string());
        diff("gid", ma.gid().to_string(), mb.gid().to_string());
        diff(
            "mtime",
            format!("{}.{:09}", ma.mtime(), ma.mtime_nsec()),
            format!("{}.{:09}", mb.mtime(), mb.mtime_nsec()),
        );
        let ft = ma.file_type();
        if !ft.is_dir() {
            diff("size", ma.len().to_string(), mb.len().to_string());
            diff("nlink", ma.nlink().to_string(), mb.nlink().to_string());
        }
        {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_char_device() || ft.is_block_device() {
                diff("rdev", ma.rdev().to_string(), mb.rdev().to_string());
            }
        }
        if ft.is_symlink() {
            let ta = fs::read_link(&a).expect("readlink source");
            let tb = fs::read_link(&b).unwrap_or_default();
            diff("symlink target", format!("{:?}", ta), format!("{:?}", tb));
        } else {
            diff(
                "xattrs",
                format!("{:?}", xattrs_of(&a)),
                format!("{:?}", xattrs_of(&b)),
            );
        }
    }
    problems
}

/// Bytes actually allocated to `p` on disk.
pub fn allocated_bytes(p: &Path) -> u64 {
    fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
        .blocks()
        * 512
}

/// `stat -c FORMAT PATH` output, for checks phrased the way an
/// administrator would check by hand.
pub fn stat_c(format: &str, p: &Path) -> String {
    let out = tool(
        "stat",
        &[OsStr::new("-c"), OsStr::new(format), p.as_os_str()],
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// A tmpfs mounted for the life of the guard; unmounted on drop. Declare it
/// after the `TempDir` holding its mount point so it drops first.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        mkdir(path);
        tool(
            "mount",
            &[
                OsStr::new("-t"),
                OsStr::new("tmpfs"),
                OsStr::new("-o"),
                OsStr::new(&format!("size={size}")),
                OsStr::new("tmpfs"),
                path.as_os_str(),
            ],
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    pub fn resize(&self, size: &str) {
        tool(
            "mount",
            &[
                OsStr::new("-o"),
                OsStr::new(&format!("remount,size={size}")),
                self.path.as_os_str(),
            ],
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

// ---------------------------------------------------------------- checks of the checks

/// The fixture and the comparison agree with `cp -a`: a faithful copy
/// compares equal, so a round-trip failure is never the fixture's fault.
#[test]
fn fixture_copied_with_cp_a_compares_equal() {
    let src_dir = tempdir();
    let fixture = build_fixture(src_dir.path());
    let copy_dir = tempdir();
    let copy = canonical(copy_dir.path()).join("copy");
    tool(
        "cp",
        &[OsStr::new("-a"), fixture.root.as_os_str(), copy.as_os_str()],
    );
    assert_same_tree(&fixture.root, &copy);
}

/// The comparison notices each kind of difference it claims to check.
#[test]
fn tree_comparison_notices_differences() {
    let dir = tempdir();
    let base = canonical(dir.path());
    let a = base.join("a");
    mkdir(&a.join("sub"));
    write_file(&a.join("sub/file"), b"content\n");
    write_file(&a.join("other"), b"other\n");
    set_mtime(&a.join("sub/file"), 1_000_000_000, 5);
    let copy = |name: &str| {
        let b = base.join(name);
        tool("cp", &[OsStr::new("-a"), a.as_os_str(), b.as_os_str()]);
        b
    };
    assert_same_tree(&a, &copy("same"));

    type Change<'a> = (&'a str, Box<dyn Fn(&Path)>);
    let changes: Vec<Change> = vec![
        (
            "content",
            Box::new(|b: &Path| {
                write_file(&b.join("sub/file"), b"CONTENT\n");
                set_mtime(&b.join("sub/file"), 1_000_000_000, 5);
            }),
        ),
        (
            "mtime nanoseconds",
            Box::new(|b: &Path| set_mtime(&b.join("sub/file"), 1_000_000_000, 6)),
        ),
        ("mode", Box::new(|b: &Path| chmod(&b.join("other"), 0o600))),
        ("owner", Box::new(|b: &Path| lchown(&b.join("other"), 1, 1))),
        (
            "xattr",
            Box::new(|b: &Path| xattr::set(b.join("other"), "user.x", b"1").expect("setxattr")),
        ),
        (
            "extra file",
            Box::new(|b: &Path| write_file(&b.join("extra"), b"")),
        ),
        (
            "hard link",
            Box::new(|b: &Path| {
                fs::remove_file(b.join("other")).expect("rm");
                fs::hard_link(b.join("sub/file"), b.join("other")).expect("link");
            }),
        ),
    ];
    for (i, (what, change)) in changes.iter().enumerate() {
        let b = copy(&format!("changed-{i}"));
        change(&b);
        let noticed = !rsync_diff(&a, &b).is_empty() || !metadata_diff(&a, &b).is_empty();
        assert!(noticed, "the comparison misses a change of {what}");
    }
}

/// Flips one byte of `pack` at `offset` (packs are 0444: made writable
/// for the write and read-only again after).
pub fn flip_byte(pack: &Path, offset: u64) {
    use std::os::unix::fs::{FileExt, PermissionsExt};
    let mode = fs::metadata(pack).expect("stat pack").permissions().mode();
    chmod(pack, 0o644);
    {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pack)
            .expect("open pack for writing");
        let mut byte = [0u8; 1];
        f.read_exact_at(&mut byte, offset).expect("read pack byte");
        byte[0] ^= 0x5a;
        f.write_all_at(&byte, offset).expect("write pack byte");
        f.sync_all().expect("fsync pack");
    }
    chmod(pack, mode & 0o7777);
}

/// Runs python3 `script` against the repository's catalog, with `args`
/// available as the byte strings `argv` (passed in hex, so that a NUL byte
/// can be one of them).
pub fn edit_catalog(repo: &Repo, script: &str, args: &[&[u8]]) {
    require_tool("python3");
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(format!(
        "import sqlite3, sys\n\
         db = sqlite3.connect(sys.argv[1])\n\
         argv = [bytes.fromhex(a) for a in sys.argv[2:]]\n\
         {script}\n\
         db.commit()\n\
         db.close()\n"
    ));
    cmd.arg(repo.path.join("catalog.db"));
    for a in args {
        cmd.arg(a.iter().map(|b| format!("{b:02x}")).collect::<String>());
    }
    let out = cmd.output().expect("spawn python3");
    assert!(out.status.success(), "{}", describe("edit catalog", &out));
}
