//! Readers that gc respects: every command that reads packs holds a lease
//! (a file in `mounts/`) that gc honours; the mount holds a file's chunk
//! locations for as long as the kernel holds the file open; leases go away
//! with their holders.

use std::ffi::OsStr;
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

/// gc used to date the packs it took out of use with the time it started,
/// before its rewrite and commit: a reader that started in between still
/// read the old catalog, pointing into those packs, but held a lease newer
/// than their date, and gc deleted them under it (EIO through the mount).
#[test]
fn gc_keeps_the_packs_of_a_reader_that_started_during_its_rewrite() {
    let base = tempdir();
    let src = canonical(base.path()).join("src");
    mkdir(&src);
    // Packs of 32 MiB: the live file's tail shares a pack with the dead
    // file's head, which gc then rewrites (more than 10% unused).
    let live = src.join("a_live.bin");
    let len = 60 * MIB;
    write_random_file(&live, 1301, len);
    write_random_file(&src.join("z_dead.bin"), 1302, 10 * MIB);
    let repo = Repo::new();
    repo.ingest(&["--name", "both"], &[&src]);
    fs::remove_file(src.join("z_dead.bin")).expect("remove the dead file");
    repo.ingest(&["--name", "live"], &[&src]);
    forget(&repo, &["both"]);

    // gc, stopped while it writes the rewritten pack (before its commit).
    let mut gc = repo
        .cmd()
        .args(["gc", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gc");
    let tmp = repo.path.join("tmp");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let writing = fs::read_dir(&tmp).is_ok_and(|mut d| d.next().is_some());
        if writing {
            signal(gc.id(), libc::SIGSTOP).expect("stop gc");
            break;
        }
        if let Ok(Some(status)) = gc.try_wait() {
            panic!("gc ended ({status}) before it was seen rewriting a pack");
        }
        assert!(
            Instant::now() < deadline,
            "gc never wrote to {}",
            tmp.display()
        );
        thread::sleep(Duration::from_micros(200));
    }
    // A reader starts now, reading the catalog as it is before gc commits.
    let mount = Mount::new(&repo, &[]);
    let copy = canonical(base.path()).join("copy.bin");
    let reader = PausedReader::start(&restored_path(&mount.path.join("live"), &live), &copy);
    signal(gc.id(), libc::SIGCONT).expect("continue gc");
    let out = gc.wait_with_output().expect("wait for gc");
    assert!(out.status.success(), "{}", describe("gc", &out));
    let done = parse_json("gc", &out.stdout);
    assert!(
        json_u64(&done, "packs_rewritten") > 0,
        "gc should rewrite a pack: {done}"
    );

    let copied = reader.finish().unwrap_or_else(|e| {
        panic!(
            "a reader that started while gc rewrote lost its bytes: {e}\ngc: {done}\n\
             --- mount stderr ---\n{}",
            mount.stderr_text()
        )
    });
    assert_eq!(copied, len);
    let same = tool("cmp", &[live.as_os_str(), copy.as_os_str()]);
    assert!(same.status.success(), "{}", describe("cmp", &same));
    mount.finish();
}

/// A file held open used to hold back every pack taken out of use after it
/// was first read, for as long as it stayed open (any user of an
/// --allow-other mount could stop all space reclamation): a held file whose
/// snapshot is still there is now resolved again when its resolution is old.
#[test]
fn a_file_held_open_of_a_kept_snapshot_does_not_stop_gc_freeing_others() {
    let w = big_and_small();
    let repo = &w.repo;
    let mount = Mount::new(repo, &["--idle-expiry", "1"]);
    let in_mount = restored_path(&mount.path.join("big"), &w.big);
    let copy = canonical(w.base.path()).join("copy.bin");
    let reader = PausedReader::start(&in_mount, &copy);

    // Another snapshot comes and goes while the file stays open.
    let other = canonical(w.base.path()).join("passing");
    mkdir(&other);
    write_random_file(&other.join("p.bin"), 1305, 20 * MIB);
    repo.ingest(&["--name", "passing"], &[&other]);
    let first = forget(repo, &["passing", "--gc"]);
    let freed = json_u64(&first["gc"], "bytes_freed")
        + gc_until_nothing_waits(repo, &mount, "a file held open of a kept snapshot");
    assert!(
        freed >= 18 * MIB,
        "the passing snapshot's packs should be freed while the file is open: {freed} bytes"
    );

    let copied = reader.finish().expect("the open file reads to its end");
    assert_eq!(copied, w.len);
    let same = tool("cmp", &[w.big.as_os_str(), copy.as_os_str()]);
    assert!(same.status.success(), "{}", describe("cmp", &same));
    mount.finish();
}

/// gc took a lease it could not read (here: `mounts/` made by root, the
/// repository's owner running gc) for no reader at all, and deleted packs
/// root's mount still read. Now such a lease keeps every pack, and says so.
#[test]
fn gc_keeps_every_pack_while_a_lease_cannot_be_read() {
    let base = tempdir();
    let top = canonical(base.path());
    chmod(&top, 0o755);
    lchown(&top, 65534, 65534);
    let repo_path = top.join("repo");
    let src = top.join("src");
    mkdir(&src);
    write_random_file(&src.join("f.bin"), 1306, 40 * MIB);
    lchown(&src, 65534, 65534);
    lchown(&src.join("f.bin"), 65534, 65534);
    let init = as_nobody(&[
        snapfs_bin().as_ref(),
        "--repo".as_ref(),
        repo_path.as_os_str(),
        "init".as_ref(),
        "--encryption".as_ref(),
        "none".as_ref(),
    ]);
    assert!(
        init.status.success(),
        "{}",
        describe("init as nobody", &init)
    );
    let as_owner = |args: &[&str]| {
        let mut all: Vec<&OsStr> = vec![
            snapfs_bin().as_ref(),
            "--repo".as_ref(),
            repo_path.as_os_str(),
        ];
        all.extend(args.iter().map(|a| OsStr::new(*a)));
        as_nobody(&all)
    };
    let ingest = as_owner(&["ingest", "--name", "s1", src.to_str().expect("utf-8 path")]);
    assert!(
        ingest.status.success(),
        "{}",
        describe("ingest as the owner", &ingest)
    );

    // Root mounts the owner's repository: its lease directory is root's.
    let repo = Repo::at(&repo_path);
    let mount = Mount::new(&repo, &[]);
    let in_mount = restored_path(&mount.path.join("s1"), &src.join("f.bin"));
    let copy = top.join("copy.bin");
    let reader = PausedReader::start(&in_mount, &copy);

    let forget = as_owner(&["forget", "s1"]);
    assert!(
        forget.status.success(),
        "{}",
        describe("forget as the owner", &forget)
    );
    for round in 0..2 {
        let gc = as_owner(&["gc", "--json"]);
        assert!(gc.status.success(), "{}", describe("gc as the owner", &gc));
        let g = parse_json("gc", &gc.stdout);
        assert_eq!(
            json_u64(&g, "bytes_freed"),
            0,
            "gc {round} freed packs a reader may read: {g}"
        );
        assert!(json_u64(&g, "packs_waiting") > 0, "gc {round}: {g}");
        let said = String::from_utf8_lossy(&gc.stderr);
        assert!(
            said.contains("cannot read the reader lease"),
            "gc {round} should say why: {said}"
        );
        thread::sleep(Duration::from_millis(1500));
    }
    let copied = reader.finish().expect("root's reader reads to the end");
    assert_eq!(copied, 40 * MIB);
    mount.finish();
}
