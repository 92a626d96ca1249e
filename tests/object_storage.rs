//! Repositories in a bucket of a real three-node Garage cluster on
//! loopback (`--repo s3://BUCKET/PREFIX`): every command works there, a
//! second machine sees what the first stored and deduplicates against it,
//! and a node that dies is passed over.

use std::fs;
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use crate::util::*;

/// The fixture tree (every kind of entry) through an encrypted repository
/// in the bucket: ingest, the mount (rsync -aHAXc finds no difference),
/// restore, verify of every byte.
#[test]
fn bucket_repository_round_trips_the_fixture() {
    let garage = Garage::start();
    let src_dir = tempdir();
    let fixture = build_fixture(src_dir.path());
    let repo = Repo::new_in_bucket(&garage, "host1", &[1, 2, 3]);
    let id = repo.ingest(&["--name", "fixture"], &[&fixture.root]).id;
    assert_fixture_round_trips(&repo, &fixture.root, "fixture", &id);
    assert_verify_read_data_ok(&repo, "a repository in a bucket");
}

/// A second machine (its own cache) finds the first one's snapshots in
/// the bucket, stores almost nothing for the same tree, and the first
/// machine then sees the second's snapshot too: the bucket is the truth.
#[test]
fn second_machine_sees_the_bucket_and_deduplicates() {
    let garage = Garage::start();
    let work = Work::new();
    write_random_file(&work.src.join("big"), 5, 3 << 20);
    write_file(&work.src.join("small"), b"small file");
    let first = Repo::new_in_bucket(&garage, "shared", &[1]);
    first.ingest(&["--name", "from-first"], &[&work.src]);
    let second = Repo::bucket_handle(&garage, "shared", &[2]);
    assert_eq!(names(&second), vec!["from-first"]);
    let again = second.ingest(&["--name", "from-second"], &[&work.src]);
    let added = again.json["added_bytes"].as_u64().expect("added_bytes");
    assert!(
        added < 64 << 10,
        "the second machine stored {added} bytes of a tree the bucket holds"
    );
    // The first machine catches up with the second's backup by indexing
    // what it added, not by rebuilding its catalog from the whole bucket.
    let caught_up = output_of(first.cmd().args(["-v", "snapshots"]));
    let said = String::from_utf8_lossy(&caught_up.stderr);
    assert!(
        said.contains("1 snapshot(s) another machine stored") && !said.contains("rebuild"),
        "{}",
        describe("snapshots on the first machine", &caught_up)
    );
    assert_eq!(names(&first), vec!["from-first", "from-second"]);
    let reference = work.freeze("both");
    work.assert_restores(&first, "from-second", &reference);
}

/// With the first endpoint's node killed, commands move to the next
/// endpoint and work; the cluster's quorum of two keeps every byte.
#[test]
fn dead_node_is_passed_over_for_the_next_endpoint() {
    let mut garage = Garage::start();
    let work = Work::new();
    write_random_file(&work.src.join("data"), 9, 1 << 20);
    let repo = Repo::new_in_bucket(&garage, "failover", &[3, 1, 2]);
    repo.ingest(&["--name", "before"], &[&work.src]);
    garage.kill_node(3);
    write_file(&work.src.join("later"), b"written after the node died");
    let t0 = Instant::now();
    repo.ingest(&["--name", "after"], &[&work.src]);
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "the ingest took {:?} with one node down",
        t0.elapsed()
    );
    let reference = work.freeze("after");
    work.assert_restores(&repo, "after", &reference);
}

/// Wrong credentials: a one-line error that names the bucket and says
/// access was denied, without the secret, and no retry loop.
#[test]
fn wrong_bucket_credentials_are_one_clear_line() {
    let garage = Garage::start();
    let mut repo = Repo::bucket_handle(&garage, "denied", &[1]);
    for (k, v) in repo.env.iter_mut() {
        if *k == "AWS_SECRET_ACCESS_KEY" {
            *v = "not-the-secret-at-all-0123456789".to_string();
        }
    }
    let out = output_of(repo.cmd().arg("init"));
    assert_eq!(out.status.code(), Some(1), "{}", describe("init", &out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.trim().lines().count() == 1 && err.contains("s3://") && err.contains("403"),
        "{}",
        describe("init with a wrong secret", &out)
    );
    assert!(!err.contains("not-the-secret"), "the secret was printed");
    let cache = repo.secret.clone().expect("cache").cache_dir;
    let left: Vec<_> = walk(&cache)
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .collect();
    assert!(left.is_empty(), "a failed init left {left:?}");
}

/// Whoever runs the storage learns nothing: a marker in names, contents,
/// a symlink target and an xattr appears in no byte any node stores for an
/// encrypted repository, and does for an unencrypted one (the control).
#[test]
fn encrypted_bucket_stores_no_readable_name_or_content() {
    const MARKER: &[u8] = b"QZXBUCKETMARKER";
    let garage = Garage::start();
    let work = Work::new();
    let m = String::from_utf8_lossy(MARKER).into_owned();
    let dir = work.src.join(format!("dir-{m}"));
    mkdir(&dir);
    let file = dir.join(format!("file-{m}"));
    write_file(&file, format!("contents {m} ").repeat(200).as_bytes());
    std::os::unix::fs::symlink(format!("to-{m}"), work.src.join("link")).expect("symlink");
    xattr::set(&file, format!("user.{m}"), m.as_bytes()).expect("setfattr");
    let holding = || -> Vec<std::path::PathBuf> {
        garage
            .data_dirs()
            .iter()
            .flat_map(|d| walk(d))
            .filter(|p| fs::symlink_metadata(p).is_ok_and(|md| md.is_file()))
            .filter(|p| {
                fs::read(p)
                    .unwrap_or_default()
                    .windows(MARKER.len())
                    .any(|w| w == MARKER)
            })
            .collect()
    };
    let sealed = Repo::new_in_bucket(&garage, "sealed", &[1, 2, 3]);
    sealed.ingest(&[], &[&work.src]);
    let shown = holding();
    assert!(
        shown.is_empty(),
        "the cluster stores the marker in {shown:?}"
    );
    let plain = Repo::bucket_handle(&garage, "plain", &[1, 2, 3]);
    run_ok(plain.cmd().args(["init", "--encryption", "none"]));
    plain.ingest(&[], &[&work.src]);
    assert!(
        !holding().is_empty(),
        "an unencrypted repository does not show the marker either: the check proves nothing"
    );
}

/// `copy --to s3://…` from a local repository: an unencrypted one moves its
/// stored blobs as they are, an encrypted one is sealed again under the
/// bucket repository's own key; both restore the same tree from the bucket.
#[test]
fn copy_into_a_bucket_from_plain_and_encrypted_repositories() {
    let garage = Garage::start();
    let work = Work::new();
    write_random_file(&work.src.join("data"), 21, 1 << 20);
    write_file(&work.src.join("note"), b"a note");
    let reference = work.freeze("copied");
    let plain = Repo::new();
    plain.ingest(&["--name", "plain-one"], &[&work.src]);
    let sealed = Repo::new_encrypted();
    sealed.ingest(&["--name", "sealed-one"], &[&work.src]);
    for (what, from, prefix, extra) in [
        (
            "plain",
            &plain,
            "copy-plain",
            vec!["--to-encryption", "none"],
        ),
        ("encrypted", &sealed, "copy-sealed", vec![]),
    ] {
        let to = Repo::bucket_handle(&garage, prefix, &[1, 2]);
        let mut cmd = from.cmd();
        cmd.args(["copy", "--json", "--to"])
            .arg(&to.path)
            .args(&extra)
            .arg("--to-password-file")
            .arg(&to.secret.clone().expect("passphrase").password_file);
        for (k, v) in &to.env {
            cmd.env(k, v);
        }
        let copied = json_of("copy", &mut cmd);
        assert_eq!(
            copied["snapshots_copied"].as_array().map(Vec::len),
            Some(1),
            "{what}: {copied}"
        );
        let name = format!("{what}-one").replace("encrypted", "sealed");
        work.assert_restores(&to, &name, &reference);
    }
}

/// `--limit-upload` and `--limit-download` hold transfers to the bucket
/// to the rate asked for (after a burst of one second's worth): 3 MiB of
/// incompressible data at 512 KiB/s cannot take less than about 5 s either
/// way, and the data arrives whole.
#[test]
fn upload_and_download_limits_hold_transfers_to_the_rate() {
    let garage = Garage::start();
    let work = Work::new();
    write_random_file(&work.src.join("data"), 33, 3 << 20);
    let repo = Repo::new_in_bucket(&garage, "limited", &[1]);
    let t0 = Instant::now();
    run_ok(
        repo.ingest_cmd(&["--name", "slow"], &[&work.src])
            .args(["--limit-upload", "512"]),
    );
    let up = t0.elapsed();
    assert!(
        up >= Duration::from_secs(4),
        "3 MiB went up in {up:?} at 512 KiB/s"
    );
    let reference = work.freeze("slow");
    let out = tempdir();
    let target = canonical(out.path()).join("restored");
    let t0 = Instant::now();
    let restored = output_of(
        repo.cmd()
            .args(["--limit-download", "512", "restore", "slow"])
            .arg(&target),
    );
    let down = t0.elapsed();
    assert!(
        restored.status.success(),
        "{}",
        describe("restore", &restored)
    );
    assert!(
        down >= Duration::from_secs(4),
        "3 MiB came down in {down:?} at 512 KiB/s"
    );
    assert_same_tree(&reference, &restored_path(&target, &work.src));
}

/// https through a TLS proxy whose certificate only the CA given in
/// `AWS_CA_BUNDLE` vouches for: with it every command works; without it
/// the connection is refused with one line, and nothing is sent in clear.
#[test]
fn https_endpoint_is_trusted_only_through_the_given_ca() {
    let garage = Garage::start();
    let proxy = TlsProxy::start(garage.s3_port);
    let work = Work::new();
    write_random_file(&work.src.join("data"), 41, 256 << 10);
    let mut repo = Repo::bucket_handle(&garage, "tls", &[1]);
    for (k, v) in repo.env.iter_mut() {
        if *k == "AWS_ENDPOINT_URL" {
            *v = format!("https://127.0.0.1:{}", proxy.port);
        }
    }
    let untrusted = output_of(repo.cmd().env("SNAPFS_S3_RETRY_SECONDS", "2").arg("init"));
    assert_eq!(
        untrusted.status.code(),
        Some(1),
        "{}",
        describe("init", &untrusted)
    );
    let err = String::from_utf8_lossy(&untrusted.stderr).to_lowercase();
    assert!(
        err.trim().lines().count() == 1 && err.contains("cert"),
        "{}",
        describe("init through an untrusted certificate", &untrusted)
    );
    repo.env
        .push(("AWS_CA_BUNDLE", proxy.ca.display().to_string()));
    run_ok(repo.cmd().arg("init"));
    repo.ingest(&["--name", "over-tls"], &[&work.src]);
    let reference = work.freeze("tls");
    work.assert_restores(&repo, "over-tls", &reference);
}

/// A backup into a bucket killed (SIGKILL) after its first pack arrived
/// resumes without sending that pack again: the next ingest finds it in
/// the bucket, indexes it and stores only the rest.
#[test]
fn killed_ingest_into_a_bucket_resumes_without_sending_again() {
    let garage = Garage::start();
    let work = Work::new();
    write_random_file(&work.src.join("big"), 51, 64 << 20);
    let repo = Repo::new_in_bucket(&garage, "resume", &[1, 2, 3]);
    // Bytes node 1 stores (not `dir_bytes`: the cluster's files come and
    // go while it writes).
    let stored = || -> u64 { bytes_under(&garage.data_dirs()[0]) };
    let before = stored();
    let mut child = repo.spawn_slow_ingest("resumed", &work.src, 4096);
    // At 4 MiB/s the first 32 MiB pack goes up after about 7 s and the
    // second after about 15 s, each in one quick PUT once its turn comes:
    // seeing most of the first one stored, and giving its PUT 3 s to end,
    // kills the ingest between the two.
    let arrived = eventually(Duration::from_secs(60), || stored() >= before + (30 << 20));
    std::thread::sleep(Duration::from_secs(3));
    let _ = child.kill();
    let status = child.wait().expect("wait");
    assert!(arrived, "no pack arrived in the bucket");
    assert!(
        !status.success(),
        "the ingest finished before it was killed"
    );
    let again = repo.ingest(&["--name", "resumed"], &[&work.src]);
    let added = again.json["added_bytes"].as_u64().expect("added_bytes");
    assert!(
        added < 48 << 20,
        "the resumed ingest stored {added} bytes of 64 MiB, a pack of which was in the bucket"
    );
    let reference = work.freeze("resumed");
    work.assert_restores(&repo, "resumed", &reference);
}

/// forget and gc in a bucket: the forgotten snapshot's own data leaves the
/// bucket (gc deletes its packs there), the other snapshot restores and
/// verifies whole, and a second machine's catalog follows.
#[test]
fn forget_and_gc_in_a_bucket_free_space_and_keep_the_rest() {
    let garage = Garage::start();
    let work = Work::new();
    write_random_file(&work.src.join("keep"), 61, 2 << 20);
    let repo = Repo::new_in_bucket(&garage, "gc", &[1, 2, 3]);
    repo.ingest(&["--name", "first"], &[&work.src]);
    write_random_file(&work.src.join("drop"), 62, 8 << 20);
    repo.ingest(&["--name", "second"], &[&work.src]);
    fs::remove_file(work.src.join("drop")).expect("rm");
    repo.ingest(&["--name", "third"], &[&work.src]);
    let reference = work.freeze("third");
    // Another machine with a catalog of its own from before the forget.
    let other = Repo::bucket_handle(&garage, "gc", &[2]);
    assert_eq!(names(&other), vec!["first", "second", "third"]);
    forget(&repo, &["second"]);
    // The forget record alone (no gc yet) reaches the other machine.
    assert_eq!(names(&other), vec!["first", "third"]);
    // The first gc only marks what it took out of use; the next one,
    // after the grace period, deletes it.
    forget_and_mark(&repo, &[]);
    std::thread::sleep(PAST_GRACE);
    let gc = gc(&repo, &[]);
    let freed = gc["bytes_freed"].as_u64().expect("bytes_freed");
    assert!(
        freed >= 6 << 20,
        "gc freed {freed} bytes of an 8 MiB file: {gc}"
    );
    assert_eq!(gc["packs_waiting"], 0, "{gc}");
    assert_verify_read_data_ok(&repo, "after gc in a bucket");
    work.assert_restores(&repo, "third", &reference);
    // Its catalog knew packs gc deleted: it follows the bucket.
    assert_eq!(names(&other), vec!["first", "third"]);
    assert_verify_read_data_ok(&other, "another machine after gc");
}

/// Another machine's mount that opened before gc marked a pack keeps gc
/// from deleting it, however old the mark; the forgotten snapshot's file
/// still reads whole through that mount, and once the mount ends the next
/// gc frees the space.
#[test]
fn gc_in_a_bucket_waits_for_a_mount_another_machine_holds() {
    let garage = Garage::start();
    let work = Work::new();
    write_random_file(&work.src.join("keep"), 71, 1 << 20);
    let repo = Repo::new_in_bucket(&garage, "mounted", &[1, 2, 3]);
    repo.ingest(&["--name", "first"], &[&work.src]);
    write_random_file(&work.src.join("drop"), 72, 6 << 20);
    repo.ingest(&["--name", "second"], &[&work.src]);
    let dropped = fs::read(work.src.join("drop")).expect("read drop");
    let other = Repo::bucket_handle(&garage, "mounted", &[2]);
    let mount = Mount::new(&other, &[]);
    forget_and_mark(&repo, &["second"]);
    std::thread::sleep(PAST_GRACE);
    let held = gc(&repo, &[]);
    assert_eq!(held["bytes_freed"], 0, "deleted under a mount: {held}");
    assert!(held["packs_waiting"].as_u64() > Some(0), "{held}");
    let through = fs::read(mount.source_in("second", &work.src).join("drop"))
        .expect("read the forgotten snapshot's file through the other mount");
    assert!(through == dropped, "the file read back differs");
    mount.finish();
    let freed = gc(&repo, &[]);
    assert!(
        freed["bytes_freed"].as_u64() >= Some(5 << 20),
        "the mount ended and nothing was freed: {freed}"
    );
    assert_eq!(freed["packs_waiting"], 0, "{freed}");
    assert_verify_read_data_ok(&repo, "after the mount ended and gc ran");
}

/// While another machine writes into the bucket (a slow ingest), gc
/// deletes nothing, however old the marks: that writer may deduplicate
/// against any pack. It says who it waits for.
#[test]
fn gc_in_a_bucket_deletes_nothing_while_another_machine_writes() {
    let garage = Garage::start();
    let work = Work::new();
    write_random_file(&work.src.join("drop"), 81, 4 << 20);
    let repo = Repo::new_in_bucket(&garage, "writing", &[1, 2, 3]);
    repo.ingest(&["--name", "old"], &[&work.src]);
    forget_and_mark(&repo, &["old"]);
    std::thread::sleep(PAST_GRACE);
    let slow = Work::new();
    write_random_file(&slow.src.join("big"), 82, 12 << 20);
    let other = Repo::bucket_handle(&garage, "writing", &[2]);
    let mut child = other.spawn_slow_ingest("slow", &slow.src, 1024);
    // Its lease says "writing" once it holds the writer lock.
    assert!(
        eventually(Duration::from_secs(20), || garage
            .has_writer_lease("writing/")),
        "the other machine's ingest never said it writes"
    );
    let out = output_of(repo.cmd().args(["gc", "--json"]));
    let held: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", describe("gc", &out)));
    assert_eq!(held["bytes_freed"], 0, "deleted under a writer: {held}");
    assert!(
        stderr_of(&out).contains("ingest (writing"),
        "{}",
        describe("gc while another machine writes", &out)
    );
    let status = child.wait().expect("wait");
    assert!(status.success(), "the slow ingest failed");
    let freed = gc(&repo, &[]);
    assert!(
        freed["bytes_freed"].as_u64() >= Some(3 << 20),
        "the writer ended and nothing was freed: {freed}"
    );
    let reference = slow.freeze("slow");
    slow.assert_restores(&repo, "slow", &reference);
}

/// A backup another machine is storing while gc marks a pack, and that
/// deduplicates against that pack (its catalog synced before the forget),
/// keeps the pack: gc checks again, against the snapshots in the bucket,
/// before it deletes anything, and unmarks it.
#[test]
fn gc_in_a_bucket_keeps_a_marked_pack_a_later_backup_uses() {
    let garage = Garage::start();
    let work = Work::new();
    write_random_file(&work.src.join("shared"), 91, 3 << 20);
    let repo = Repo::new_in_bucket(&garage, "rescue", &[1, 2, 3]);
    repo.ingest(&["--name", "gone"], &[&work.src]);
    let other = Repo::bucket_handle(&garage, "rescue", &[2]);
    assert_eq!(other.snapshots().len(), 1);
    // The other machine backs up the same file and a big new one, slowly.
    let later = Work::new();
    fs::copy(work.src.join("shared"), later.src.join("shared")).expect("copy shared");
    write_random_file(&later.src.join("big"), 92, 6 << 20);
    let child = other.spawn_slow_ingest("later", &later.src, 1024);
    assert!(
        eventually(Duration::from_secs(20), || garage
            .has_writer_lease("rescue/")),
        "the other machine's ingest never said it writes"
    );
    forget_and_mark(&repo, &["gone"]);
    let out = child.wait_with_output().expect("wait for ingest");
    assert!(
        out.status.success(),
        "{}",
        describe("the slow ingest", &out)
    );
    let again = Ingested::from_output(&out);
    // Its catalog still had the file's chunks, in the marked pack only.
    let added = again.json["added_bytes"].as_u64().expect("added_bytes");
    assert!(
        added < (6 << 20) + (64 << 10),
        "stored {added} bytes: the shared file again"
    );
    // The first gc after the writer ended starts counting the grace.
    let first = gc(&repo, &[]);
    std::thread::sleep(PAST_GRACE);
    let kept = gc(&repo, &[]);
    // The forgotten snapshot's own metadata may go; the file's data,
    // which the later backup uses, stays.
    let freed =
        first["bytes_freed"].as_u64().unwrap_or(0) + kept["bytes_freed"].as_u64().unwrap_or(0);
    assert!(
        freed < 64 << 10,
        "a pack a snapshot uses was deleted: {first} {kept}"
    );
    assert_eq!(kept["packs_waiting"], 0, "{kept}");
    let reference = later.freeze("later");
    later.assert_restores(&repo, "later", &reference);
    assert_verify_read_data_ok(&other, "the later backup after gc");
}

/// A key slot one machine adds while another changes its passphrase stays
/// in the bucket: `key passwd` removes there only the slot it replaced, not
/// every slot it did not know of when it brought the slots down.
#[test]
fn key_slot_added_elsewhere_survives_a_concurrent_passwd() {
    let garage = Garage::start();
    let repo = Repo::new_in_bucket(&garage, "keys", &[1, 2, 3]);
    let other = Repo::bucket_handle(&garage, "keys", &[2]);
    let secret = repo.secret.clone().expect("encrypted");
    let fifo = secret.password_file.with_file_name("replacement-fifo");
    let made = tool("mkfifo", &["-m".as_ref(), "600".as_ref(), fifo.as_os_str()]);
    assert!(made.status.success(), "{}", describe("mkfifo", &made));
    // The passwd opens the repository (slots brought down), then waits for
    // its new passphrase on the FIFO.
    let child = other
        .cmd()
        .args(["key", "passwd", "--new-password-file"])
        .arg(&fifo)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn key passwd");
    std::thread::sleep(Duration::from_secs(2));
    let added = secret.password_file.with_file_name("added");
    write_file(&added, b"a passphrase added meanwhile\n");
    run_ok(
        repo.cmd()
            .args(["key", "add", "--new-password-file"])
            .arg(&added),
    );
    fs::write(&fifo, b"the replacement passphrase\n").expect("write the FIFO");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", describe("key passwd", &out));
    let third = Repo::bucket_handle(&garage, "keys", &[3]);
    let third_secret = third.secret.clone().expect("encrypted");
    write_file(
        &third_secret.password_file,
        b"a passphrase added meanwhile\n",
    );
    run_ok(third.cmd().arg("snapshots"));
    write_file(&third_secret.password_file, b"the replacement passphrase\n");
    run_ok(third.cmd().arg("snapshots"));
}

/// B's committed snapshot.
#[test]
fn another_machines_backup_committed_while_gc_waits_for_the_lock_is_never_deleted() {
    let garage = Garage::start();
    let work = Work::new();
    write_random_file(&work.src.join("base"), 1, 1 << 20);
    let a = Repo::new_in_bucket(&garage, "adopt", &[1, 2, 3]);
    a.ingest(&["--name", "base"], &[&work.src]);
    let b = Repo::bucket_handle(&garage, "adopt", &[2]);
    assert_eq!(names(&b), vec!["base"]);

    // Hold A's local writer lock (as a local command would).
    let lf = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(lock_file_of(&a))
        .unwrap();
    assert_eq!(
        // SAFETY: flock on a descriptor we own.
        unsafe { libc::flock(lf.as_raw_fd(), libc::LOCK_EX) },
        0
    );
    let mut a_ingest = a
        .ingest_cmd(&["--name", "a2"], &[&work.src])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));

    let other = Work::new();
    write_random_file(&other.src.join("victim"), 2, 4 << 20);
    b.ingest(&["--name", "victim"], &[&other.src]);
    let reference = other.freeze("victim");
    drop(lf);
    assert!(a_ingest.wait().unwrap().success());

    assert!(names(&a).contains(&"victim".to_string()), "{:?}", names(&a));
    gc(&a, &[]);
    std::thread::sleep(PAST_GRACE);
    gc(&a, &[]);
    let c = Repo::bucket_handle(&garage, "adopt", &[3]);
    assert!(names(&c).contains(&"victim".to_string()), "{:?}", names(&c));
    other.assert_restores_of(&b, "victim", &other.src, &reference);
}

/// gc marks them again with a fresh time, and the space never comes back.
#[test]
fn hosts_alternating_forget_and_gc_free_space() {
    let garage = Garage::start();
    let work = Work::new();
    let a = Repo::new_in_bucket(&garage, "remark", &[1, 2, 3]);
    write_file(&work.src.join("keep"), b"keep");
    for i in 0..4u64 {
        let f = work.src.join(format!("f{i}"));
        write_random_file(&f, 100 + i, 3 << 20);
        a.ingest(&["--name", &format!("s{i}")], &[&work.src]);
        fs::remove_file(&f).unwrap();
    }
    a.ingest(&["--name", "last"], &[&work.src]);
    let b = Repo::bucket_handle(&garage, "remark", &[2]);
    assert_eq!(names(&b).len(), 5);
    let mut freed_total = 0;
    for (i, host) in [&a, &b, &a, &b].into_iter().enumerate() {
        forget(host, &[&format!("s{i}")]);
        let g = gc(host, &[]);
        eprintln!("round {i}: {g}");
        freed_total += g["bytes_freed"].as_u64().unwrap();
        std::thread::sleep(PAST_GRACE);
    }
    eprintln!("freed in total: {freed_total}");
    assert!(
        freed_total > 0,
        "4 forgotten 3 MiB files, gc past grace each time, nothing freed"
    );
}

/// commits a snapshot that needs the deleted pack.
#[test]
fn suspended_writer_whose_lease_lapsed_commits_nothing() {
    let garage = Garage::start();
    let work = Work::new();
    write_random_file(&work.src.join("x"), 7, 3 << 20);
    let a = Repo::new_in_bucket(&garage, "suspend", &[1, 2, 3]);
    a.ingest(&["--name", "old"], &[&work.src]);
    let b = Repo::bucket_handle(&garage, "suspend", &[2]);
    assert_eq!(names(&b), vec!["old"]);
    let bwork = Work::new();
    fs::copy(work.src.join("x"), bwork.src.join("a_x")).unwrap();
    write_random_file(&bwork.src.join("b_y"), 8, 12 << 20);
    let reference = bwork.freeze("later");
    forget(&a, &["old"]);
    let g1 = gc(&a, &[]);
    assert_eq!(g1["bytes_freed"], 0, "{g1}");
    let child = b.spawn_slow_ingest("later", &bwork.src, 1024);
    std::thread::sleep(Duration::from_millis(2500));
    let pid = child.id() as i32;
    // SAFETY: signals to our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_secs(8));
    let g2 = gc(&a, &[]);
    eprintln!("gc while the writer sleeps: {g2}");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let out = child.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "{}",
        describe("the suspended ingest", &out)
    );
    assert!(
        stderr_of(&out).contains("without renewal"),
        "{}",
        describe("ingest", &out)
    );
    let c = Repo::bucket_handle(&garage, "suspend", &[3]);
    assert!(!names(&c).contains(&"later".to_string()));
    assert_verify_read_data_ok(&c, "after the suspended writer gave up");
    b.ingest(&["--name", "later"], &[&bwork.src]);
    bwork.assert_restores(&c, "later", &reference);
}

/// add sends up every slot file it brought down.
#[test]
fn key_slot_removed_elsewhere_is_not_brought_back_by_a_concurrent_add() {
    let garage = Garage::start();
    let repo = Repo::new_in_bucket(&garage, "revoke", &[1, 2, 3]);
    let secret = repo.secret.clone().expect("encrypted");
    let leaked = secret.password_file.with_file_name("leaked");
    write_file(&leaked, b"the leaked passphrase\n");
    let added = output_of(
        repo.cmd()
            .args(["key", "add", "--new-password-file"])
            .arg(&leaked),
    );
    let said = String::from_utf8_lossy(&added.stdout).to_string();
    let leaked_id = said.trim().rsplit(' ').next().unwrap().to_string();
    let other = Repo::bucket_handle(&garage, "revoke", &[2]);
    let fifo = other
        .secret
        .clone()
        .unwrap()
        .password_file
        .with_file_name("fifo");
    let made = tool("mkfifo", &["-m".as_ref(), "600".as_ref(), fifo.as_os_str()]);
    assert!(made.status.success());
    let child = other
        .cmd()
        .args(["key", "add", "--new-password-file"])
        .arg(&fifo)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    run_ok(repo.cmd().args(["key", "remove", &leaked_id]));
    fs::write(&fifo, b"another passphrase\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let third = Repo::bucket_handle(&garage, "revoke", &[3]);
    write_file(
        &third.secret.clone().unwrap().password_file,
        b"the leaked passphrase\n",
    );
    let opened = output_of(third.cmd().arg("snapshots"));
    assert!(
        !opened.status.success(),
        "the revoked passphrase opens the repository again: {}",
        describe("snapshots", &opened)
    );
    write_file(
        &third.secret.clone().unwrap().password_file,
        b"another passphrase\n",
    );
    run_ok(third.cmd().arg("snapshots"));
}

/// Forget `snapshots` (none: only gc) and run the first gc, which only
/// marks what it took out of use: it frees nothing, and says packs wait.
fn forget_and_mark(repo: &Repo, snapshots: &[&str]) {
    if !snapshots.is_empty() {
        forget(repo, snapshots);
    }
    let marked = gc(repo, &[]);
    assert_eq!(marked["bytes_freed"], 0, "the first gc deleted: {marked}");
    assert!(marked["packs_waiting"].as_u64() > Some(0), "{marked}");
}

/// A repository in the bucket under `prefix` with two backups of one
/// source: "both" (a file `keep` of 1 MiB and `drop` of 6 MiB), then
/// "kept" (`keep` alone); `between` runs after the first. Forgetting
/// "both" leaves most of its pack unused.
fn both_then_kept(
    garage: &Garage,
    prefix: &str,
    endpoints: &[u32],
    between: impl FnOnce(&Work, &Repo),
) -> (Work, Repo) {
    let work = Work::new();
    write_random_file(&work.src.join("keep"), 95, 1 << 20);
    write_random_file(&work.src.join("drop"), 96, 6 << 20);
    let repo = Repo::new_in_bucket(garage, prefix, endpoints);
    repo.ingest(&["--name", "both"], &[&work.src]);
    between(&work, &repo);
    fs::remove_file(work.src.join("drop")).expect("rm drop");
    repo.ingest(&["--name", "kept"], &[&work.src]);
    (work, repo)
}

fn names(r: &Repo) -> Vec<String> {
    r.snapshots()
        .iter()
        .map(|s| json_str(s, "name").to_string())
        .collect()
}

/// The writer lock file in a bucket repository's local state directory.
fn lock_file_of(r: &Repo) -> std::path::PathBuf {
    let cache = r.secret.clone().expect("secret").cache_dir;
    walk(&cache)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "lock"))
        .expect("a lock file in the state directory")
}

/// A machine whose clock is two minutes off the store's (libfaketime; ten would
/// fail every request: the signatures of S3 requests carry the time)
/// reads, with a warning naming the difference, but writes nothing: its
/// leases would look expired, or its gc would take live leases for dead
/// ones. Behind: ingest and forget are refused; ahead: gc is refused and
/// deletes nothing. The true clock then works as before.
#[test]
fn host_whose_clock_is_off_the_stores_reads_but_writes_nothing() {
    let garage = Garage::start();
    let work = Work::new();
    write_random_file(&work.src.join("f"), 91, 2 << 20);
    let repo = Repo::new_in_bucket(&garage, "clock", &[1, 2, 3]);
    repo.ingest(&["--name", "kept"], &[&work.src]);
    let listed = output_of(&mut with_clock_off(repo.cmd().args(["snapshots"]), "-120s"));
    assert!(
        listed.status.success()
            && stdout_of(&listed).contains("kept")
            && stderr_of(&listed).contains("clock is 120 s behind"),
        "{}",
        describe("snapshots with the clock 2 minutes behind", &listed)
    );
    for (offset, args, said) in [
        ("-120s", vec!["ingest", "--name", "late"], "behind"),
        ("-120s", vec!["forget", "kept"], "behind"),
        ("+120s", vec!["gc"], "ahead of"),
    ] {
        let mut cmd = repo.cmd();
        cmd.args(&args);
        if args[0] == "ingest" {
            cmd.arg(&work.src);
        }
        let out = output_of(&mut with_clock_off(&cmd, offset));
        assert!(
            !out.status.success() && stderr_of(&out).contains(&format!("clock is 120 s {said}")),
            "{}",
            describe(&format!("{args:?} with the clock at {offset}"), &out)
        );
    }
    assert_eq!(names(&repo), ["kept"]);
    forget(&repo, &["kept"]);
    assert_eq!(repo.snapshots().len(), 0);
}

/// A machine that syncs after a gc elsewhere marked a pack, but before
/// that gc stored the pack that takes over its live chunks, still reads
/// those chunks from the marked pack. Its lease then counts as synced
/// before the mark, so the next gc keeps the pack while it reads (before,
/// the lease looked synced after the mark and the pack went from under
/// the mount). The gc's upload is slowed so the mount starts in between.
#[test]
fn reader_synced_between_a_mark_and_its_replacement_keeps_the_marked_pack() {
    let garage = Garage::start();
    let (work, repo) = both_then_kept(&garage, "between", &[1, 2, 3], |_, _| {});
    let kept = fs::read(work.src.join("keep")).expect("read keep");
    forget(&repo, &["both"]);
    // The pack of both files is three quarters unused: gc marks it, then
    // stores its live chunk (1 MiB) in a new pack at 128 KiB/s.
    let slow_gc = repo
        .cmd()
        .args(["gc", "--json", "--limit-upload", "128"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn gc");
    let other = Repo::bucket_handle(&garage, "between", &[2]);
    assert!(
        eventually(Duration::from_secs(5), || !garage
            .keys_under("between/doomed/")
            .is_empty()),
        "gc marked nothing"
    );
    // Later than a mark's write could take (a second here): a lease synced
    // this late is not taken for one that predates the mark.
    std::thread::sleep(Duration::from_secs(2));
    let mount = Mount::new(&other, &[]);
    let out = slow_gc.wait_with_output().expect("wait for gc");
    assert!(out.status.success(), "{}", describe("the slow gc", &out));
    std::thread::sleep(PAST_GRACE);
    let held = gc(&repo, &[]);
    assert_eq!(held["bytes_freed"], 0, "deleted under a mount: {held}");
    assert!(held["packs_waiting"].as_u64() > Some(0), "{held}");
    let through = fs::read(mount.source_in("kept", &work.src).join("keep"))
        .expect("read keep through the mount that synced in between");
    assert!(through == kept, "the file read back differs");
    mount.finish();
    let freed = gc(&repo, &[]);
    assert!(
        freed["bytes_freed"].as_u64() >= Some(5 << 20),
        "the mount ended and nothing was freed: {freed}"
    );
    assert_verify_read_data_ok(&repo, "after the mount ended and gc ran");
}

/// A client that may only add objects (a stolen backup credential) plants
/// doom marks dated long ago on every pack of another machine's backup,
/// before this machine has seen them. The backup is still listed and
/// restored (a mark never hides a snapshot), a gc deletes nothing at
/// once (grace counts from when this machine first saw a mark, not from
/// the time a mark claims), and a gc after the grace finds the packs in
/// use, keeps them and takes the marks away.
#[test]
fn planted_doom_marks_neither_hide_nor_delete_a_backup() {
    let garage = Garage::start();
    let work = Work::new();
    write_random_file(&work.src.join("f"), 97, 3 << 20);
    let first = Repo::new_in_bucket(&garage, "planted", &[1, 2, 3]);
    let other = Repo::bucket_handle(&garage, "planted", &[2]);
    other.ingest(&["--name", "theirs"], &[&work.src]);
    let reference = work.freeze("theirs");
    let packs: Vec<String> = garage
        .keys_under("planted/packs/")
        .iter()
        .filter_map(|k| {
            k.rsplit('/')
                .next()?
                .strip_suffix(".pack")
                .map(String::from)
        })
        .collect();
    assert!(!packs.is_empty(), "no pack in the bucket");
    for hex in &packs {
        let (code, body) = garage.curl(
            "PUT",
            &format!("planted/doomed/{hex}.doom"),
            Some(b"snapfs-doomed 1\ndoomed_ns 0\n"),
        );
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    }
    assert_eq!(names(&first), ["theirs"], "a planted mark hid a backup");
    let at_once = gc(&first, &[]);
    assert_eq!(at_once["bytes_freed"], 0, "{at_once}");
    std::thread::sleep(PAST_GRACE);
    let later = gc(&first, &[]);
    assert_eq!(later["bytes_freed"], 0, "{later}");
    assert!(
        garage.keys_under("planted/doomed/").is_empty(),
        "marks on packs in use were left: {:?}",
        garage.keys_under("planted/doomed/")
    );
    work.assert_restores(&first, "theirs", &reference);
    assert_verify_read_data_ok(&first, "after marks were planted on every pack");
}

/// A gc on one machine deletes a marked pack while an ingest on another
/// waits for its passphrase, having listed the store as it started. The
/// ingest must not deduplicate against the deleted pack: before, its
/// stale listing showed the pack there, its mark was gone (a gc removes a
/// mark after the pack), and the new backup's data pointed into nothing.
#[test]
fn ingest_waiting_for_its_key_never_deduplicates_against_a_pack_a_gc_deleted_meanwhile() {
    let garage = Garage::start();
    let b = Repo::bucket_handle(&garage, "stale", &[2]);
    let mut dropped = Vec::new();
    let (_work, a) = both_then_kept(&garage, "stale", &[1], |work, _| {
        dropped = fs::read(work.src.join("drop")).expect("read drop");
        b.snapshots();
    });
    forget_and_mark(&a, &["both"]);
    b.snapshots();
    std::thread::sleep(PAST_GRACE);
    // The dropped file again, elsewhere: its chunks are in the marked pack.
    let again = Work::new();
    fs::write(again.src.join("again"), &dropped).expect("write again");
    let mut cmd = b.ingest_cmd(&["--name", "again"], &[&again.src]);
    b.passphrase_late(&mut cmd, 6);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ingest");
    std::thread::sleep(Duration::from_secs(2));
    let freed = gc(&a, &[]);
    assert!(
        freed["bytes_freed"].as_u64() >= Some(5 << 20),
        "the gc deleted nothing while the ingest waited: {freed}"
    );
    let out = child.wait_with_output().expect("wait for ingest");
    assert!(
        out.status.success(),
        "{}",
        describe("the late ingest", &out)
    );
    again.assert_restores(&b, "again", &again.src);
    assert_verify_read_data_ok(&a, "after the late ingest");
}

/// A mount on a machine that synced after a gc elsewhere marked a pack
/// and stored what replaces its live chunks reads nothing from that pack:
/// it must not hold it. Before, every chunk row the catalog had there
/// (the dead ones too) counted as read, its lease counted from before the
/// mark, and no gc could delete the pack while the mount lived.
#[test]
fn mount_synced_after_a_gc_replaced_a_pack_does_not_hold_it() {
    let garage = Garage::start();
    let b = Repo::bucket_handle(&garage, "hold", &[2]);
    let (work, a) = both_then_kept(&garage, "hold", &[1], |_, _| {
        b.snapshots();
    });
    forget_and_mark(&a, &["both"]);
    // Well after the mark's write could take.
    std::thread::sleep(Duration::from_secs(2));
    let mount = Mount::new(&b, &[]);
    std::thread::sleep(PAST_GRACE);
    let freed = gc(&a, &[]);
    assert!(
        freed["bytes_freed"].as_u64() >= Some(5 << 20),
        "a mount that reads nothing from the marked pack kept it: {freed}"
    );
    let kept = fs::read(work.src.join("keep")).expect("read keep");
    let through = fs::read(mount.source_in("kept", &work.src).join("keep")).expect("read keep");
    assert!(through == kept, "the file read through the mount differs");
    mount.finish();
    assert_verify_read_data_ok(&a, "after the gc under the mount");
}

/// A command that opens the repository while an ingest on the same
/// machine stores a backup does not rebuild the catalog: the listing made
/// as it started lacks the packs the ingest stored while it waited for
/// its key, which it once took for packs a gc deleted.
#[test]
fn reader_opening_during_a_local_ingest_does_not_rebuild_the_catalog() {
    let garage = Garage::start();
    let work = Work::new();
    write_random_file(&work.src.join("seed"), 1, 1 << 20);
    let a = Repo::new_in_bucket(&garage, "local", &[1]);
    a.ingest(&["--name", "first"], &[&work.src]);
    let mut cmd = a.cmd();
    cmd.args(["snapshots", "--json"]).env("RUST_LOG", "info");
    a.passphrase_late(&mut cmd, 6);
    let reader = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn snapshots");
    std::thread::sleep(Duration::from_secs(1));
    let more = Work::new();
    write_random_file(&more.src.join("more"), 2, 2 << 20);
    let started = Instant::now();
    a.ingest(&["--name", "second"], &[&more.src]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the ingest took longer than the reader waited for its key: the test proves nothing"
    );
    let out = reader.wait_with_output().expect("wait for snapshots");
    assert!(
        out.status.success() && !stderr_of(&out).contains("rebuilding"),
        "{}",
        describe("snapshots opened during the ingest", &out)
    );
    assert_eq!(names(&a), ["first", "second"]);
}

/// A client that may only add objects plants a junk pack and a doom mark
/// for it too big to be a mark. Every command on every machine used to
/// fail on the mark ("larger than 4096 bytes"), and nothing snapfs could
/// do would take it away. A mark that cannot be read counts as marked at
/// no known time: the pack is never deleted for it, and nothing fails.
#[test]
fn oversized_planted_doom_mark_does_not_stop_every_command() {
    let garage = Garage::start();
    let work = Work::new();
    write_random_file(&work.src.join("f"), 97, 1 << 20);
    let a = Repo::new_in_bucket(&garage, "big", &[1]);
    a.ingest(&["--name", "first"], &[&work.src]);
    let junk = "ab".repeat(32);
    let (code, _) = garage.curl(
        "PUT",
        &format!("big/packs/ab/{junk}.pack"),
        Some(b"not a pack at all"),
    );
    assert_eq!(code, 200);
    let (code, _) = garage.curl(
        "PUT",
        &format!("big/doomed/{junk}.doom"),
        Some(&vec![b'x'; 5000]),
    );
    assert_eq!(code, 200);
    let fresh = Repo::bucket_handle(&garage, "big", &[2]);
    for (who, r) in [("the first machine", &a), ("a new machine", &fresh)] {
        for args in [&["snapshots"][..], &["gc", "--json"][..]] {
            let out = output_of(r.cmd().args(args));
            assert!(
                out.status.success(),
                "{}",
                describe(&format!("{args:?} on {who}"), &out)
            );
        }
        assert_eq!(names(r), ["first"]);
    }
    work.assert_restores(&fresh, "first", &work.src);
}

/// A client that may only add objects plants a mark dated 1970 on a pack
/// in use. Every reader that reads the pack then holds its lease before
/// that time, which keeps every gc from deleting anything while it runs;
/// and gc never took the mark away (it only looked again at marks old
/// enough to act on). Now a gc takes away, at once, marks on packs its
/// caught-up catalog finds in use, and a mount opened afterwards holds
/// nothing back.
#[test]
fn ancient_planted_mark_on_a_pack_in_use_is_taken_away_by_the_next_gc() {
    let garage = Garage::start();
    let mut before = Vec::new();
    let (work, a) = both_then_kept(&garage, "ancient", &[1], |_, _| {
        before = garage.keys_under("ancient/packs/");
    });
    let b = Repo::bucket_handle(&garage, "ancient", &[2]);
    b.snapshots();
    // A pack of the second backup (its record, say) stays in use.
    let in_use = garage
        .keys_under("ancient/packs/")
        .into_iter()
        .find(|k| !before.contains(k))
        .expect("a pack of the second backup");
    let hex = in_use
        .rsplit('/')
        .next()
        .and_then(|f| f.strip_suffix(".pack"))
        .expect("a pack name");
    let planted = format!("ancient/doomed/{hex}.doom");
    let (code, _) = garage.curl("PUT", &planted, Some(b"snapfs-doomed 1\ndoomed_ns 0\n"));
    assert_eq!(code, 200);
    forget_and_mark(&a, &["both"]);
    assert!(
        !garage.keys_under("ancient/doomed/").contains(&planted),
        "the planted mark on a pack in use was left"
    );
    std::thread::sleep(Duration::from_secs(2));
    let mount = Mount::new(&b, &[]);
    std::thread::sleep(PAST_GRACE);
    let freed = gc(&a, &[]);
    assert!(
        freed["bytes_freed"].as_u64() >= Some(5 << 20),
        "a mount opened after the planted mark went kept every pack: {freed}"
    );
    let kept = fs::read(work.src.join("keep")).expect("read keep");
    let through = fs::read(mount.source_in("kept", &work.src).join("keep")).expect("read keep");
    assert!(through == kept, "the file read through the mount differs");
    mount.finish();
    assert_verify_read_data_ok(&a, "after a planted mark was taken away");
}
