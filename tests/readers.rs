//! Readers that gc respects: every command that reads packs holds a lease
//! (a file in `mounts/`) that gc honours; the mount holds a file's chunk
//! locations for as long as the kernel holds the file open; leases go away
//! with their holders.

use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

/// The lease files in the repository's `mounts/`, with their names (which
/// say who holds them).
fn leases(repo: &Repo) -> Vec<(PathBuf, String)> {
    let Ok(rd) = fs::read_dir(repo.path.join("mounts")) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, String)> = rd
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.as_bytes().ends_with(b".lease"))
        })
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (p, name)
        })
        .collect();
    out.sort();
    out
}

/// Waits until a lease naming `holder` is in `mounts/` (the command has
/// taken it), failing if `child` ends first or nothing shows within a minute.
fn wait_for_lease(repo: &Repo, holder: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if leases(repo)
            .iter()
            .any(|(_, name)| name.ends_with(&format!("-{holder}.lease")))
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{holder} ended ({status}) before a lease naming it was seen");
        }
        assert!(
            Instant::now() < deadline,
            "no lease naming {holder} in {}: {:?}",
            repo.path.join("mounts").display(),
            leases(repo)
        );
        thread::sleep(Duration::from_millis(2));
    }
}

/// Bytes on disk under `dir`, for a tree that changes while it is read
/// (a restore renames its temporary files): what vanishes counts nothing.
fn written_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match fs::symlink_metadata(e.path()) {
            Ok(m) if m.is_dir() => written_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// A repository with a 200 MiB snapshot "big" and a small snapshot "small".
struct BigAndSmall {
    repo: Repo,
    base: tempfile::TempDir,
    big: PathBuf,
    len: u64,
}

fn big_and_small() -> BigAndSmall {
    let base = tempdir();
    let src = canonical(base.path()).join("src");
    mkdir(&src);
    let big = src.join("big.bin");
    let len = 200 * MIB;
    write_random_file(&big, 1201, len);
    let repo = Repo::new();
    repo.ingest(&["--name", "big"], &[&src]);
    let other = canonical(base.path()).join("other");
    mkdir(&other);
    write_random_file(&other.join("small.bin"), 1202, MIB);
    repo.ingest(&["--name", "small"], &[&other]);
    BigAndSmall {
        repo,
        base,
        big,
        len,
    }
}

/// Gc until no pack waits for a reader, for at most 30 s: what a closed
/// file read through the mount held must be let go once the expiry has
/// passed, while the mount stays up. Returns the bytes freed in all.
fn gc_until_nothing_waits(repo: &Repo, mount: &Mount, what: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut freed = 0;
    loop {
        thread::sleep(Duration::from_millis(1500));
        let g = gc(repo, &[]);
        freed += json_u64(&g, "bytes_freed");
        if json_u64(&g, "packs_waiting") == 0 {
            return freed;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: 30 s after the file was closed (expiry 1 s), gc still leaves packs waiting: \
             {g}\n--- mount stderr ---\n{}",
            mount.stderr_text()
        );
    }
}

#[test]
fn a_file_held_open_through_the_mount_keeps_its_bytes_past_the_idle_expiry() {
    let w = big_and_small();
    let repo = &w.repo;
    // An expiry of one second: the file stays open, idle, for several.
    let mount = Mount::new(repo, &["--idle-expiry", "1"]);
    let in_mount = restored_path(&mount.path.join("big"), &w.big);
    let copy = canonical(w.base.path()).join("copy.bin");

    let reader = PausedReader::start(&in_mount, &copy);
    // Forget the snapshot and gc, twice, with an idle longer than the
    // expiry before each: the open file's locations must still hold.
    thread::sleep(Duration::from_secs(3));
    let first = forget(repo, &["big", "--gc"]);
    thread::sleep(Duration::from_secs(3));
    let second = gc(repo, &[]);
    thread::sleep(Duration::from_secs(3));
    let third = gc(repo, &[]);
    let copied = reader.finish().unwrap_or_else(|e| {
        panic!(
            "reading the open file through the mount failed after forget + gc with idles past \
             the expiry: {e}\nforget: {first}\ngc: {second}\ngc: {third}\n--- mount stderr ---\n{}",
            mount.stderr_text()
        )
    });
    assert_eq!(copied, w.len, "bytes read through the mount");
    let same = tool("cmp", &[w.big.as_os_str(), copy.as_os_str()]);
    assert!(same.status.success(), "{}", describe("cmp", &same));
    for g in [&first["gc"], &second, &third] {
        assert!(
            json_u64(g, "packs_waiting") > 0,
            "gc while the file was open should leave its packs waiting: {g}"
        );
    }

    // Closed, the file no longer holds them: once the expiry has passed,
    // gc frees the space while the mount is still up.
    let freed = gc_until_nothing_waits(repo, &mount, "a file read by its one name");
    assert!(
        freed >= w.len * 9 / 10,
        "the closed file's packs should be freed, freed {freed} bytes"
    );
    mount.finish();
}

/// The kernel keeps a file it has looked up under each name it was given
/// (both names of a hard link, a version's name in `history/`); a closed
/// file is only let go once every one of them is dropped from its cache.
#[test]
fn a_closed_file_read_by_a_second_hard_link_or_a_history_version_lets_its_packs_go() {
    for how in ["second hard link", "history version"] {
        let base = tempdir();
        let src = canonical(base.path()).join("src");
        mkdir(&src);
        let data = src.join("data.bin");
        let len = 16 * MIB;
        write_random_file(&data, 1203, len);
        fs::hard_link(&data, src.join("data.link")).expect("hard link");
        let repo = Repo::new();
        repo.ingest(&["--name", "old"], &[&src]);
        let other = canonical(base.path()).join("other");
        mkdir(&other);
        write_random_file(&other.join("small.bin"), 1204, MIB);
        repo.ingest(&["--name", "keep"], &[&other]);

        let mount = Mount::new(&repo, &["--idle-expiry", "1"]);
        let in_old = restored_path(&mount.path.join("old"), &data);
        let read_by = match how {
            "second hard link" => {
                // Known to the kernel by its first name too.
                fs::metadata(&in_old).expect("stat the first name");
                in_old.with_file_name("data.link")
            }
            _ => {
                let dir = mount.history(&data);
                let versions: Vec<PathBuf> = fs::read_dir(&dir)
                    .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
                    .map(|e| e.expect("entry").path())
                    .collect();
                assert_eq!(versions.len(), 1, "one version of data.bin: {versions:?}");
                versions[0].clone()
            }
        };
        let bytes = fs::read(&read_by).unwrap_or_else(|e| panic!("{how}: read: {e}"));
        assert!(
            bytes == fs::read(&data).expect("source"),
            "{how}: bytes read"
        );
        drop(bytes);

        let first = forget(&repo, &["old", "--gc"]);
        let freed =
            json_u64(&first["gc"], "bytes_freed") + gc_until_nothing_waits(&repo, &mount, how);
        assert!(
            freed >= len * 9 / 10,
            "{how}: the closed file's packs should be freed, freed {freed} bytes: {first}"
        );
        mount.finish();
    }
}

#[test]
fn restore_paused_while_forget_and_gc_run_still_restores_every_byte() {
    let w = big_and_small();
    let repo = &w.repo;
    let target = canonical(w.base.path()).join("restored");
    let mut child = repo
        .restore_cmd("big", &target)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn restore");
    wait_for_lease(repo, "restore", &mut child);
    // Stopped once it has written part of the file: it has looked up the
    // file's chunks and is reading packs.
    let deadline = Instant::now() + Duration::from_secs(120);
    while written_bytes(&target) < 32 * MIB {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("restore ended ({status}) before it was 32 MiB in");
        }
        assert!(
            Instant::now() < deadline,
            "restore wrote under 32 MiB in 2 minutes"
        );
        thread::sleep(Duration::from_millis(5));
    }
    signal(child.id(), libc::SIGSTOP).expect("kill SIGSTOP");
    let json = forget(repo, &["big", "--gc"]);
    let again = gc(repo, &[]);
    signal(child.id(), libc::SIGCONT).expect("kill SIGCONT");
    let status = wait_timeout(&mut child, Duration::from_secs(300)).expect("restore ends");
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    assert!(
        status.success(),
        "restore failed after forget + gc ran under it: {status}\n{err}\nforget: {json}\ngc: {again}"
    );
    let restored = restored_path(&target, &w.big);
    let same = tool("cmp", &[w.big.as_os_str(), restored.as_os_str()]);
    assert!(same.status.success(), "{}", describe("cmp", &same));
    assert!(
        json_u64(&json["gc"], "packs_waiting") > 0 && json_u64(&again, "packs_waiting") > 0,
        "gc under a running restore should leave its packs waiting: {json} {again}"
    );
    // The restore is over: its lease is gone and the space comes back.
    assert!(leases(repo).is_empty(), "{:?}", leases(repo));
    let g = gc(repo, &[]);
    assert_eq!(json_u64(&g, "packs_waiting"), 0, "{g}");
    assert!(json_u64(&g, "bytes_freed") >= w.len * 9 / 10, "{g}");
}

/// Watches `dir` for names moved into it (how a lease takes its name).
struct MovedIn {
    fd: i32,
}

impl MovedIn {
    fn watch(dir: &Path) -> MovedIn {
        // SAFETY: plain inotify calls; the path is a valid C string.
        unsafe {
            let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
            assert!(fd >= 0, "inotify_init1");
            let c = cpath(dir);
            let wd = libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_MOVED_TO);
            assert!(wd >= 0, "inotify_add_watch {}", dir.display());
            MovedIn { fd }
        }
    }

    /// Names moved in since the watch began.
    fn names(&self) -> Vec<String> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut names = Vec::new();
        loop {
            // SAFETY: reading into a buffer we own, of its length.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return names;
            }
            let mut at = 0usize;
            let head = std::mem::size_of::<libc::inotify_event>();
            while at + head <= n as usize {
                // SAFETY: the kernel wrote a whole event here.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                let name = &buf[at + head..at + head + ev.len as usize];
                let name = name.split(|b| *b == 0).next().unwrap_or(&[]);
                names.push(String::from_utf8_lossy(name).into_owned());
                at += head + ev.len as usize;
            }
        }
    }
}

impl Drop for MovedIn {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor we opened.
        unsafe { libc::close(self.fd) };
    }
}

#[test]
fn verify_copy_diff_and_stats_hold_a_reader_lease_and_release_it() {
    let w = big_and_small();
    let repo = &w.repo;
    let mounts = repo.path.join("mounts");
    fs::create_dir_all(&mounts).expect("mkdir mounts");
    let copy_to = canonical(w.base.path()).join("copy-repo");
    let copy_to = copy_to.to_str().expect("utf-8 path").to_string();
    let restore_to = canonical(w.base.path()).join("restored");
    let restore_to = restore_to.to_str().expect("utf-8 path").to_string();
    let commands: [&[&str]; 5] = [
        &["verify", "--read-data"],
        &["copy", "--to", &copy_to],
        &["diff", "big", "small"],
        &["stats"],
        &["restore", "small", &restore_to],
    ];
    for args in commands {
        let watch = MovedIn::watch(&mounts);
        let out = output_of(repo.cmd().args(args));
        assert!(
            out.status.success(),
            "{}",
            describe(&format!("{args:?}"), &out)
        );
        let taken = watch.names();
        assert!(
            taken.iter().any(|n| n.ends_with(".lease")),
            "{args:?} took no reader lease (names moved into mounts/: {taken:?})"
        );
        assert!(
            leases(repo).is_empty(),
            "{args:?} left its lease behind: {:?}",
            leases(repo)
        );
    }
}

#[test]
fn leases_are_removed_on_clean_unmount_and_a_killed_readers_is_tidied_by_gc() {
    let w = big_and_small();
    let repo = &w.repo;
    let mount = Mount::new(repo, &[]);
    let held = leases(repo);
    assert_eq!(held.len(), 1, "a running mount holds one lease: {held:?}");
    assert!(held[0].1.ends_with("-mount.lease"), "{held:?}");
    assert_eq!(
        fs::metadata(&held[0].0).expect("stat").len(),
        0,
        "a lease holds no data (it must work on a full disk)"
    );
    let mode = fs::metadata(&held[0].0).expect("stat lease");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600, "lease mode");
    mount.finish();
    assert!(
        leases(repo).is_empty(),
        "a cleanly unmounted mount left its lease: {:?}",
        leases(repo)
    );

    // A reader killed outright leaves its file; the next gc sees that
    // nobody holds it, removes it, and is not held back by it.
    forget(repo, &["big"]);
    let target = canonical(w.base.path()).join("restored");
    let mut child = repo
        .restore_cmd("small", &target)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn restore");
    wait_for_lease(repo, "restore", &mut child);
    signal(child.id(), libc::SIGSTOP).expect("kill SIGSTOP");
    signal(child.id(), libc::SIGKILL).expect("kill SIGKILL");
    let _ = child.wait();
    assert_eq!(leases(repo).len(), 1, "the killed restore's lease stays");
    let g = gc(repo, &[]);
    assert_eq!(
        json_u64(&g, "packs_waiting"),
        0,
        "a dead reader's lease held gc: {g}"
    );
    assert!(json_u64(&g, "bytes_freed") >= w.len * 9 / 10, "{g}");
    assert!(
        leases(repo).is_empty(),
        "gc left the stale lease: {:?}",
        leases(repo)
    );
}

#[test]
fn a_missing_pack_reads_as_eio_through_the_mount_not_enoent() {
    let w = big_and_small();
    let repo = &w.repo;
    // Remove every pack: the catalog still lists the file.
    let packs = walk(&repo.path.join("packs"));
    for p in packs
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
    {
        fs::remove_file(p).expect("rm pack");
    }
    let mount = Mount::new(repo, &[]);
    let in_mount = restored_path(&mount.path.join("big"), &w.big);
    let err = fs::read(&in_mount).expect_err("reading a file whose pack is gone should fail");
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EIO),
        "a missing pack should read as EIO (damage), not {err}"
    );
    // The log arrives through a pipe: give it a moment.
    let mut log = String::new();
    let named = eventually(Duration::from_secs(10), || {
        log = mount.stderr_text();
        log.contains("is missing")
    });
    assert!(
        named,
        "the mount's log should name the missing pack:\n{log}"
    );
    drop(mount);
}
