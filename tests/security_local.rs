//! Security: other local users: private repositories, locks and leases, a
//! nosuid/nodev mount that enforces ACLs, a history view that never shows
//! more than every version allowed.
//!
//! The unprivileged side is a real other user (nobody, 65534) through
//! `setpriv`, against real files and a real mount.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// Every file and directory below `root` (root included) with its mode.
fn modes_below(root: &Path) -> Vec<(std::path::PathBuf, u32)> {
    let mut out = vec![(root.to_path_buf(), mode_of(root))];
    for p in walk(root) {
        out.push((p.clone(), mode_of(&p)));
    }
    out
}

/// `snapfs --repo PATH ARGS...` under a given umask (through the shell),
/// expecting success.
fn snapfs_with_umask(umask: &str, path: &Path, args: &[&OsStr]) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
        .arg(snapfs_bin())
        .arg("--repo")
        .arg(path)
        .args(args)
        .env_remove("SNAPFS_REPO")
        .stdin(Stdio::null())
        .output()
        .expect("spawn sh");
    assert!(
        out.status.success(),
        "{}",
        describe(&format!("umask {umask}; snapfs {args:?}"), &out)
    );
}

/// `snapfs init EXTRA...` under a given umask.
fn init_with_umask(path: &Path, umask: &str, extra: &[&str]) {
    let mut args = vec![
        OsStr::new("init"),
        OsStr::new("--encryption"),
        OsStr::new("none"),
    ];
    args.extend(extra.iter().map(OsStr::new));
    snapfs_with_umask(umask, path, &args);
}

// ---------------------------------------------------------------- the repository

/// Under umask 000 (or 022), today's init made the repository 0755 and the
/// catalog 0644: any user could copy it and restore /etc/shadow from it.
#[test]
fn init_makes_a_private_repository_whatever_the_umask() {
    for umask in ["000", "022"] {
        let dir = tempdir();
        chmod(dir.path(), 0o755);
        let path = canonical(dir.path()).join("repo");
        init_with_umask(&path, umask, &[]);
        let repo = Repo::at(&path);
        let (_src_dir, src) = open_source_dir();
        write_file(&src.join("shadow"), b"root:$6$secret\n");
        chmod(&src.join("shadow"), 0o600);
        // Ingest under the loose umask too: packs, WAL files, lock.
        snapfs_with_umask(umask, &path, &[OsStr::new("ingest"), src.as_os_str()]);
        for (p, mode) in modes_below(&path) {
            assert_eq!(
                mode & 0o077,
                0,
                "umask {umask}: {} is mode {mode:04o}; others or the group can read it",
                p.display()
            );
        }
        assert_eq!(mode_of(&path), 0o700);
        // Another user can neither read the catalog nor restore from it.
        let out = as_nobody(&[OsStr::new("cat"), path.join("catalog.db").as_os_str()]);
        assert!(
            !out.status.success(),
            "{}",
            describe("cat catalog.db", &out)
        );
        let target = tempdir();
        chmod(target.path(), 0o777);
        let out = as_nobody(&[
            OsStr::new(snapfs_bin()),
            OsStr::new("--repo"),
            path.as_os_str(),
            OsStr::new("restore"),
            OsStr::new("latest"),
            target.path().join("r").as_os_str(),
        ]);
        assert!(
            !out.status.success(),
            "nobody restored from a private repository\n{}",
            describe("restore as nobody", &out)
        );
        assert!(
            !target
                .path()
                .join("r")
                .join(src.strip_prefix("/").unwrap())
                .join("shadow")
                .exists()
        );
        drop(repo);
    }
}

/// Today's init renamed a new 0755 directory over an administrator's
/// empty 0700 one.
#[test]
fn init_keeps_an_admin_prepared_directory_and_its_mode() {
    let dir = tempdir();
    let path = canonical(dir.path()).join("repo");
    mkdir(&path);
    lchown(&path, 0, 65534);
    chmod(&path, 0o750);
    let before = fs::metadata(&path).expect("stat");
    init_with_umask(&path, "022", &[]);
    let after = fs::metadata(&path).expect("stat");
    assert_eq!(after.ino(), before.ino(), "init replaced the directory");
    assert_eq!((after.uid(), after.gid()), (0, 65534));
    assert_eq!(mode_of(&path), 0o750, "init changed the directory's mode");
    // What an older release's modes gave to everyone is taken away.
    let open = canonical(dir.path()).join("open");
    mkdir(&open);
    chmod(&open, 0o755);
    init_with_umask(&open, "022", &[]);
    assert_eq!(mode_of(&open), 0o750);
}

/// `init --group` shares read access with one group, explicitly, and never
/// with everyone.
#[test]
fn init_group_shares_read_only_with_that_group() {
    let dir = tempdir();
    chmod(dir.path(), 0o755);
    let path = canonical(dir.path()).join("repo");
    init_with_umask(&path, "000", &["--group", "65534"]);
    let (_src_dir, src) = open_source_dir();
    write_file(&src.join("f"), b"shared\n");
    Repo::at(&path).ingest(&[], &[&src]);
    for (p, mode) in modes_below(&path) {
        let md = fs::symlink_metadata(&p).expect("lstat");
        assert_eq!(
            mode & 0o007,
            0,
            "{} is open to others ({mode:04o})",
            p.display()
        );
        assert_eq!(
            mode & 0o020,
            0,
            "{} is writable by the group ({mode:04o})",
            p.display()
        );
        if p.file_name() != Some(OsStr::new("lock")) {
            assert_eq!(
                md.gid(),
                65534,
                "{} is not in the shared group",
                p.display()
            );
        }
    }
    assert_eq!(mode_of(&path), 0o2750);
    assert_eq!(mode_of(&path.join("catalog.db")), 0o640);
    // The group reads the catalog; a user outside it does not.
    let out = as_nobody(&[OsStr::new("cat"), path.join("config").as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        describe("group member reads config", &out)
    );
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65533",
            "--clear-groups",
            "--",
            "cat",
        ])
        .arg(path.join("config"))
        .output()
        .expect("spawn setpriv");
    assert!(
        !out.status.success(),
        "{}",
        describe("outsider reads config", &out)
    );
}

#[test]
fn opening_a_repository_others_can_read_warns_with_the_fix() {
    let repo = Repo::new();
    chmod(&repo.path, 0o755);
    chmod(&repo.path.join("catalog.db"), 0o644);
    let out = run_ok(repo.cmd().arg("snapshots"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("other users can read this repository") && err.contains("chmod -R o-rwx"),
        "no warning about an open repository:\n{err}"
    );
    chmod(&repo.path, 0o700);
    chmod(&repo.path.join("catalog.db"), 0o600);
    let out = run_ok(repo.cmd().arg("snapshots"));
    assert!(out.stderr.is_empty(), "{}", describe("snapshots", &out));
}

// ---------------------------------------------------------------- locks

/// Today any user could `flock` the world-readable lock file and stop every
/// backup (ingest waited forever).
#[test]
fn other_user_cannot_hold_the_writer_lock() {
    require_tool("flock");
    let repo = Repo::new();
    let (_src_dir, src) = open_source_dir();
    write_file(&src.join("f"), b"x\n");
    repo.ingest(&[], &[&src]);
    let out = as_nobody(&[
        OsStr::new("flock"),
        OsStr::new("-n"),
        repo.path.join("lock").as_os_str(),
        OsStr::new("true"),
    ]);
    assert!(
        !out.status.success(),
        "another user took the repository's writer lock\n{}",
        describe("flock as nobody", &out)
    );
    assert_eq!(mode_of(&repo.path.join("lock")), 0o600);
}

/// A writer waits for the lock at most --lock-wait seconds, and says who
/// holds it.
#[test]
fn lock_wait_gives_up_and_names_the_holder() {
    let repo = Repo::new();
    // An ingest from a pipe that stays open holds the lock.
    let mut holder = repo
        .cmd()
        .args(["ingest", "--stdin", "--stdin-name", "held"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn holder");
    let taken = eventually(Duration::from_secs(20), || {
        fs::read(repo.path.join("lock")).is_ok_and(|b| !b.is_empty())
    });
    assert!(taken, "the holder never took the lock");
    let (_src_dir, src) = open_source_dir();
    write_file(&src.join("f"), b"x\n");
    let t0 = Instant::now();
    let out = run_expect(repo.cmd().args(["--lock-wait", "1", "ingest"]).arg(&src), 1);
    let waited = t0.elapsed();
    drop(holder.stdin.take());
    let _ = holder.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("snapfs ingest (pid {}", holder.id())) && err.contains("--lock-wait"),
        "the error does not name the holder:\n{err}"
    );
    assert!(waited < Duration::from_secs(15), "waited {waited:?}");
}

// ---------------------------------------------------------------- the mount

/// Today's mount honoured setuid: nobody ran a setuid-root copy of `id`
/// from a snapshot and got euid 0.
#[test]
fn setuid_binary_in_a_snapshot_gives_no_privilege() {
    require_fuse();
    let (_src_dir, src) = open_source_dir();
    fs::copy("/usr/bin/id", src.join("id")).expect("copy id");
    lchown(&src.join("id"), 0, 0);
    chmod(&src.join("id"), 0o4755);
    let repo = Repo::new();
    let snap = repo.ingest(&[], &[&src]);
    let mnt = Mount::new(&repo, &["--allow-other"]);
    let id = restored_path(&mnt.path.join(&snap.name), &src).join("id");
    assert_eq!(mode_of(&id), 0o4755, "the mount must still show the mode");
    let out = as_nobody(&[id.as_os_str(), OsStr::new("-u")]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "65534",
        "a setuid binary in a snapshot changed the user's privileges\n{}",
        describe("id -u as nobody", &out)
    );
    let opts = tool(
        "findmnt",
        &[
            OsStr::new("-no"),
            OsStr::new("OPTIONS"),
            mnt.path.as_os_str(),
        ],
    );
    let opts = String::from_utf8_lossy(&opts.stdout);
    assert!(
        opts.contains("nosuid") && opts.contains("nodev"),
        "mount options: {opts}"
    );
}

/// Today's mount honoured device nodes: a copy of a character device opened
/// through the mount.
#[test]
fn device_node_in_a_snapshot_cannot_be_opened() {
    require_fuse();
    let (_src_dir, src) = open_source_dir();
    mknod_char(&src.join("null"), 0o666, 1, 3);
    let repo = Repo::new();
    let snap = repo.ingest(&[], &[&src]);
    let mnt = Mount::new(&repo, &["--allow-other"]);
    let dev = restored_path(&mnt.path.join(&snap.name), &src).join("null");
    let md = fs::symlink_metadata(&dev).expect("lstat the device");
    assert_eq!(
        md.rdev(),
        libc::makedev(1, 3),
        "the mount must still show the device"
    );
    let err = fs::File::open(&dev).expect_err("a device node opened through the mount");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
}

/// Today only mode bits were checked through the mount: the owning group
/// and a named user read files whose ACL denies them.
#[test]
fn acls_deny_the_owning_group_and_a_named_user_through_the_mount() {
    require_fuse();
    let (_src_dir, src) = open_source_dir();
    // Owning group 65534 (nobody's), denied by the ACL; the mask (the
    // group bits of the mode) still says r.
    write_file(&src.join("group-denied"), b"not for the owning group\n");
    lchown(&src.join("group-denied"), 0, 65534);
    setfacl(
        &["--set", "u::rw-,g::---,g:0:r--,m::r--,o::---"],
        &src.join("group-denied"),
    );
    assert_eq!(mode_of(&src.join("group-denied")) & 0o070, 0o040);
    // Readable by others by mode, but not by user 65534.
    write_file(&src.join("user-denied"), b"not for nobody\n");
    setfacl(
        &["--set", "u::rw-,u:65534:---,g::r--,m::r--,o::r--"],
        &src.join("user-denied"),
    );
    write_file(&src.join("open"), b"for everyone\n");
    chmod(&src.join("open"), 0o644);
    // Check the ACLs bite at the source first, so the test means something.
    for f in ["group-denied", "user-denied"] {
        let out = as_nobody(&[OsStr::new("cat"), src.join(f).as_os_str()]);
        assert!(
            !out.status.success(),
            "the source ACL of {f} does not deny nobody"
        );
    }
    let repo = Repo::new();
    let snap = repo.ingest(&[], &[&src]);
    let mnt = Mount::new(&repo, &["--allow-other"]);
    let m = restored_path(&mnt.path.join(&snap.name), &src);
    let out = as_nobody(&[OsStr::new("cat"), m.join("open").as_os_str()]);
    assert!(out.status.success(), "{}", describe("cat open", &out));
    for f in ["group-denied", "user-denied"] {
        let out = as_nobody(&[OsStr::new("cat"), m.join(f).as_os_str()]);
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "nobody read {f} through the mount although its ACL denies it\n{}",
            describe("cat", &out)
        );
    }
    // Root still reads them, and the ACLs are still shown.
    assert_eq!(
        fs::read(m.join("user-denied")).expect("read"),
        b"not for nobody\n"
    );
    let out = tool(
        "getfacl",
        &[OsStr::new("-cn"), m.join("user-denied").as_os_str()],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("user:65534:---"));
}

/// Today a history directory took its permissions from the newest version:
/// a file protected by a 0700 directory became readable through history/
/// once the directory was opened up, or replaced by a symlink.
#[test]
fn history_directory_keeps_what_every_version_protected() {
    require_fuse();
    let (_src_dir, src) = open_source_dir();
    for d in ["opened", "replaced"] {
        mkdir(&src.join(d));
        write_file(&src.join(d).join("secret"), b"behind a 0700 directory\n");
        chmod(&src.join(d).join("secret"), 0o644);
        chmod(&src.join(d), 0o700);
    }
    mkdir(&src.join("public"));
    write_file(&src.join("public/f"), b"open\n");
    chmod(&src.join("public"), 0o755);
    let repo = Repo::new();
    repo.ingest(&["--name", "closed"], &[&src]);
    chmod(&src.join("opened"), 0o755);
    fs::rename(src.join("replaced"), src.join("replaced-old")).expect("rename");
    chmod(&src.join("replaced-old"), 0o755);
    symlink("replaced-old", src.join("replaced")).expect("symlink");
    repo.ingest(&["--name", "opened"], &[&src]);
    let mnt = Mount::new(&repo, &["--allow-other"]);
    let h = mnt.history(&src);
    let out = as_nobody(&[OsStr::new("ls"), h.join("public/f").as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        describe("ls history public", &out)
    );
    for d in ["opened", "replaced"] {
        let out = as_nobody(&[OsStr::new("ls"), h.join(d).join("secret").as_os_str()]);
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "nobody listed the versions of {d}/secret, which a 0700 directory protected\n{}",
            describe("ls", &out)
        );
        let out = as_nobody(&[OsStr::new("ls"), h.join(d).as_os_str()]);
        assert!(!out.status.success(), "{}", describe("ls", &out));
    }
    // Root still sees every version.
    let versions = fs::read_dir(h.join("opened/secret")).expect("list").count();
    assert_eq!(versions, 1);
}

/// Today a source reached through a symlink recorded a made-up 0755
/// directory in place of the real (0700) one, opening what it protected.
#[test]
fn source_through_a_symlink_records_the_real_directory_mode() {
    let (_src_dir, src) = open_source_dir();
    mkdir(&src.join("real/sub"));
    write_file(&src.join("real/sub/f"), b"protected by real/\n");
    chmod(&src.join("real"), 0o700);
    symlink("real", src.join("link")).expect("symlink");
    let repo = Repo::new();
    repo.ingest(&[], &[&src.join("link/sub")]);
    let target = tempdir();
    let out = repo.restore("latest", &target.path().join("r"));
    assert!(out.status.success(), "{}", describe("restore", &out));
    let link = restored_path(&target.path().join("r"), &src.join("link"));
    assert!(link.is_dir());
    assert_eq!(
        mode_of(&link),
        0o700,
        "the recorded ancestor is not the real directory's mode"
    );
}

/// A repository whose own `tmp/` or `mounts/` was a symlink (a crafted
/// disk handed to root, or its owner racing root's gc) made snapfs remove
/// the files where it pointed: with `tmp -> /etc`, every file in /etc.
#[test]
fn a_repository_whose_tmp_or_mounts_is_a_symlink_is_refused_and_nothing_there_is_removed() {
    for own in ["tmp", "mounts"] {
        let base = tempdir();
        let src = canonical(base.path()).join("src");
        mkdir(&src);
        write_file(&src.join("f"), b"data");
        let repo = Repo::new();
        repo.ingest(&[], &[&src]);
        let victim = canonical(base.path()).join("victim");
        mkdir(&victim);
        let kept = ["passwd", "notes.lease", ".old.lease-tmp"];
        for name in kept {
            write_file(&victim.join(name), b"precious");
        }
        let link = repo.path.join(own);
        let _ = fs::remove_dir_all(&link);
        symlink(&victim, &link).expect("symlink");
        for args in [
            &["gc"][..],
            &["verify"],
            &["restore", "latest", "/nonexistent-target"],
        ] {
            let out = repo.cmd().args(args).output().expect("run snapfs");
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && said.contains("symbolic link"),
                "{own} -> elsewhere: {args:?} should refuse the repository: {}",
                describe("snapfs", &out)
            );
        }
        for name in kept {
            assert!(
                victim.join(name).exists(),
                "{own} -> elsewhere: {name} there was removed"
            );
        }
        assert_eq!(
            fs::read_dir(&victim).expect("list victim").count(),
            kept.len()
        );
    }
}
