//! A repository in a bucket over a link that fails: requests dropped,
//! answered 503 or 403 by a proxy in front of a node ([`FaultProxy`]), a
//! bucket that is not there, an endpoint nobody listens on, a node killed
//! in the middle of a transfer, two machines writing at once. Every
//! command either gets through by retrying, or fails with one line that
//! names what failed, and never leaves the repository worse than it was.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::util::*;

/// A handle on the repository under `prefix` whose every request goes
/// through `proxy` (in front of node 1).
fn through(garage: &Garage, prefix: &str, proxy: &FaultProxy) -> Repo {
    let mut repo = Repo::bucket_handle(garage, prefix, &[1]);
    set_env(&mut repo, "AWS_ENDPOINT_URL", &proxy.endpoint());
    repo
}

/// Sets (or replaces) `key` in the environment of `repo`'s commands.
fn set_env(repo: &mut Repo, key: &'static str, value: &str) {
    repo.env.retain(|(k, _)| *k != key);
    repo.env.push((key, value.to_string()));
}

/// A tree of a few MiB: one big file and a directory of small ones.
fn write_tree(src: &Path, seed: u64) {
    write_random_file(&src.join("big"), seed, 4 << 20);
    let small = src.join("small");
    mkdir(&small);
    for i in 0..40u64 {
        write_random_file(&small.join(format!("f{i:02}")), seed + 1 + i, 300 + i * 97);
    }
}

/// Asserts a command failed (exit 1) with a single line on stderr that
/// holds every one of `words` (besides the warning that test key slots
/// are made cheap, which only the test suite's setting prints).
fn assert_one_line_failure(what: &str, out: &Output, words: &[&str]) {
    assert_failure_line(what, out, words, None);
}

/// The same, where warnings holding `warned` may come before the error
/// line (a lease that could not be renewed meanwhile, say).
fn assert_failure_line(what: &str, out: &Output, words: &[&str], warned: Option<&str>) {
    let err = stderr_of(out);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("SNAPFS_TEST_KDF_MEMORY_KIB"))
        .filter(|l| !warned.is_some_and(|w| l.starts_with("[WARN ]") && l.contains(w)))
        .collect();
    assert!(
        out.status.code() == Some(1)
            && lines.len() == 1
            && words.iter().all(|w| lines[0].contains(w)),
        "{what} should fail with one line naming {words:?}\n{}",
        describe(what, out)
    );
}

/// The regular files under `dir` (a cache directory: nothing there after
/// a command that failed before it could do anything).
fn files_in(dir: &Path) -> Vec<PathBuf> {
    if !dir.exists() {
        return Vec::new();
    }
    walk(dir)
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .collect()
}

/// Every command of a backup's life goes through a link that answers 15%
/// of requests `503 SlowDown`, drops 10% of connections (before the
/// request reaches the node, after the node answered, or half way
/// through the answer) and delays 10% by 50 ms: init, ingest, the mount
/// (every file read back through it), restore and verify of every byte
/// all succeed by retrying, and give back exactly what was stored. The
/// proxy's counts show each kind of fault was really injected.
#[test]
fn faulty_link_is_ridden_out_by_retries() {
    let garage = Garage::start();
    let lossy = Policy {
        drop_pct: 10,
        slow_down_pct: 15,
        delay_pct: 10,
        delay: Duration::from_millis(50),
        ..Policy::default()
    };
    let proxy = FaultProxy::start(garage.s3_addr(1), test_seed(), lossy);
    let work = Work::new();
    write_tree(&work.src, 1);
    let repo = through(&garage, "lossy", &proxy);
    run_ok(repo.cmd().arg("init"));
    repo.ingest(&["--name", "lossy"], &[&work.src]);
    let mut mount = Mount::new(&repo, &["--cache-size", "0"]);
    let mounted = mount.source_in("lossy", &work.src);
    for rel in files_under(&work.src) {
        let got = fs::read(mounted.join(&rel))
            .unwrap_or_else(|e| panic!("read {} through the mount: {e}", rel.display()));
        let want = fs::read(work.src.join(&rel)).expect("read source");
        assert!(got == want, "{} differs through the mount", rel.display());
    }
    mount.assert_alive();
    mount.finish();
    work.assert_restores(&repo, "lossy", &work.src);
    assert_verify_read_data_ok(&repo, "after every command went through a faulty link");
    let done = proxy.injected();
    assert!(
        done.dropped > 0 && done.slowed_down > 0 && done.delayed > 0 && done.relayed > 0,
        "the proxy did not inject every kind of fault: {done:?}"
    );
}

/// A bucket that does not exist, an endpoint nobody listens on, and a
/// link that answers every upload `503` past the retry budget: init and
/// snapshots fail within a few seconds with one line that names the
/// bucket, the endpoint or the failure, and leave no file behind in the
/// cache directory. (An init into a missing bucket, or one whose uploads
/// failed, used to leave the repository's key, config and catalog there,
/// and the next command then said the bucket had lost the repository
/// this machine knew.)
#[test]
fn missing_bucket_and_unreachable_endpoint_are_one_clear_line() {
    let garage = Garage::start();
    let mut missing = Repo::bucket_handle(&garage, "nothing", &[1]);
    missing.path = PathBuf::from("s3://no-such-bucket-here/nothing");
    let mut closed = Repo::bucket_handle(&garage, "nothing", &[1]);
    let port = free_port();
    set_env(
        &mut closed,
        "AWS_ENDPOINT_URL",
        &format!("http://127.0.0.1:{port}"),
    );
    set_env(&mut closed, "SNAPFS_S3_RETRY_SECONDS", "2");
    let refusing = FaultProxy::start(
        garage.s3_addr(1),
        test_seed(),
        Policy {
            slow_down_pct: 100,
            only_method: Some("PUT"),
            ..Policy::default()
        },
    );
    let mut busy = through(&garage, "busy", &refusing);
    set_env(&mut busy, "SNAPFS_S3_RETRY_SECONDS", "2");
    let endpoint = format!("127.0.0.1:{port}");
    // What each case is, and what init's and snapshots' lines must name.
    let cases: [(&str, &Repo, &[&str], &[&str]); 3] = [
        (
            "a missing bucket",
            &missing,
            &["no-such-bucket-here", "NoSuchBucket"],
            &["no-such-bucket-here", "NoSuchBucket"],
        ),
        (
            "an unreachable endpoint",
            &closed,
            &[&endpoint, "s3://snapfs-test/nothing/"],
            &[&endpoint, "s3://snapfs-test/nothing/"],
        ),
        (
            "uploads answered 503",
            &busy,
            &["s3://snapfs-test/busy/", "503 SlowDown"],
            &["s3://snapfs-test/busy"],
        ),
    ];
    for (what, repo, init_names, snapshots_names) in cases {
        let cache = repo.secret.clone().expect("a bucket handle").cache_dir;
        for (args, named) in [("init", init_names), ("snapshots", snapshots_names)] {
            let t0 = Instant::now();
            let out = output_of(repo.cmd().arg(args));
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{args} with {what} took {:?}",
                t0.elapsed()
            );
            assert_one_line_failure(&format!("{args} with {what}"), &out, named);
            let left = files_in(&cache);
            assert!(left.is_empty(), "{args} with {what} left {left:?}");
        }
    }
    assert!(
        refusing.injected().slowed_down > 0,
        "the refusing proxy saw no upload"
    );
}

/// Halfway through an ingest (its lease written, its pack waiting for
/// `--limit-upload`), the link starts answering every upload `503` and
/// keeps at it past the retry budget (3 s here): the ingest fails with
/// one error line naming the object in the bucket and the 503 (after
/// warnings that its lease could not be renewed meanwhile), and commits
/// nothing: with the link healthy again, this machine and another (whose
/// catalog comes from the bucket alone) list only the snapshot from
/// before, a new ingest succeeds, both snapshots restore, and verify
/// reads every byte clean.
#[test]
fn uploads_refused_past_the_retry_budget_commit_nothing() {
    let garage = Garage::start();
    let proxy = FaultProxy::start(garage.s3_addr(1), test_seed(), Policy::healthy());
    let work = Work::new();
    write_tree(&work.src, 20);
    let mut repo = through(&garage, "budget", &proxy);
    set_env(&mut repo, "SNAPFS_S3_RETRY_SECONDS", "3");
    run_ok(repo.cmd().arg("init"));
    repo.ingest(&["--name", "before"], &[&work.src]);
    let before = work.freeze("before");
    write_random_file(&work.src.join("more"), 30, 3 << 20);
    let child = repo.spawn_slow_ingest("refused", &work.src, 512);
    let started = eventually(Duration::from_secs(20), || {
        !garage.keys_under("budget/leases/").is_empty()
    });
    proxy.set(Policy {
        slow_down_pct: 100,
        only_method: Some("PUT"),
        ..Policy::default()
    });
    let out = child.wait_with_output().expect("wait for ingest");
    assert!(started, "the ingest wrote no lease");
    assert_failure_line(
        "an ingest whose uploads are refused",
        &out,
        &["s3://snapfs-test/budget/", "503"],
        Some("cannot renew the lease"),
    );
    assert!(proxy.injected().slowed_down > 0, "no upload was refused");
    proxy.set(Policy::healthy());
    assert_eq!(repo.snapshot_names(), ["before"], "on this machine");
    let other = Repo::bucket_handle(&garage, "budget", &[2]);
    assert_eq!(other.snapshot_names(), ["before"], "on another machine");
    repo.ingest(&["--name", "after"], &[&work.src]);
    let after = work.freeze("after");
    work.assert_restores(&other, "before", &before);
    work.assert_restores(&other, "after", &after);
    assert_verify_read_data_ok(&repo, "after an ingest failed past its retry budget");
}

/// Credentials that may read and write but not delete (the proxy answers
/// every DELETE `403 AccessDenied`, which Garage's keys cannot express),
/// as the README advises for the machines that back up: init, two
/// ingests and a restore succeed (the lease a command cannot remove as it
/// ends is left to expire; that is no failure), forget and a gc that only
/// marks succeed, and the gc that must delete a pack fails with one line
/// saying access was denied. Nothing is lost: verify is clean, the kept
/// snapshot restores, and gc on a machine whose credentials may delete
/// then frees the space.
#[test]
fn credentials_that_cannot_delete_back_up_and_gc_fails_clearly() {
    let garage = Garage::start();
    let proxy = FaultProxy::start(
        garage.s3_addr(1),
        test_seed(),
        Policy {
            deny_delete: true,
            ..Policy::default()
        },
    );
    let work = Work::new();
    write_random_file(&work.src.join("keep"), 40, 1 << 20);
    write_random_file(&work.src.join("drop"), 41, 3 << 20);
    let repo = through(&garage, "nodelete", &proxy);
    run_ok(repo.cmd().arg("init"));
    repo.ingest(&["--name", "first"], &[&work.src]);
    fs::remove_file(work.src.join("drop")).expect("rm drop");
    write_file(&work.src.join("note"), b"written for the second backup");
    repo.ingest(&["--name", "second"], &[&work.src]);
    let second = work.freeze("second");
    work.assert_restores(&repo, "second", &second);
    assert!(
        proxy.injected().denied_deletes >= 3,
        "the commands removed no lease of theirs: {:?}",
        proxy.injected()
    );
    forget(&repo, &["first"]);
    let marked = gc(&repo, &[]);
    assert_eq!(marked["bytes_freed"], 0, "{marked}");
    std::thread::sleep(PAST_GRACE);
    let denied = output_of(repo.cmd().args(["gc", "--json"]));
    assert_one_line_failure(
        "gc with credentials that cannot delete",
        &denied,
        &["DELETE s3://snapfs-test/nodelete/", "access denied"],
    );
    assert_verify_read_data_ok(&repo, "after gc was refused a delete");
    work.assert_restores(&repo, "second", &second);
    assert_eq!(repo.snapshot_names(), ["second"]);
    // The machine that runs gc, with credentials that may delete: the
    // first gc there sees the marks, the next one past the grace acts.
    let admin = Repo::bucket_handle(&garage, "nodelete", &[1, 2, 3]);
    gc(&admin, &[]);
    std::thread::sleep(PAST_GRACE);
    let freed = gc(&admin, &[]);
    assert!(
        freed["bytes_freed"].as_u64() >= Some(2 << 20),
        "a gc that may delete freed too little of a 3 MiB file: {freed}"
    );
    assert_verify_read_data_ok(&admin, "after a gc that may delete");
    work.assert_restores(&admin, "second", &second);
}

/// Asserts `copy` holds the same files as `src` (`diff -r`) with the same
/// metadata ([`assert_same_tree`]).
fn assert_copied(src: &Path, copy: &Path, when: &str) {
    let diff = output_of(
        std::process::Command::new("diff")
            .arg("-r")
            .arg(src)
            .arg(copy),
    );
    assert!(
        diff.status.success(),
        "{when}: {}",
        describe("diff -r", &diff)
    );
    assert_same_tree(src, copy);
}

/// The node the client talks to (node 1, first of the endpoints 1, 2, 3)
/// is killed (SIGKILL) in the middle of an ingest slowed to last several
/// seconds, and, once back, again in the middle of a `cp -a` out of a
/// mount slowed by `--limit-download`: both move to the next node and
/// finish right (the snapshot restores identical, the copy equals the
/// source), and verify reads every byte clean with the node down. With
/// the node started again (its data short of what was written while it
/// was down) and first again, a new command still restores and verifies
/// the same.
#[test]
fn node_killed_mid_transfer_is_passed_over_and_comes_back() {
    let mut garage = Garage::start();
    let work = Work::new();
    write_tree(&work.src, 50);
    let mut repo = Repo::bucket_handle(&garage, "killed", &[1, 2, 3]);
    // Leases of the usual life: a write the cluster holds up for a few
    // seconds as it notices a node died must not lapse one.
    repo.env
        .retain(|(k, _)| !SHORT_LEASES.iter().any(|(s, _)| s == k));
    run_ok(repo.cmd().arg("init"));

    let child = repo.spawn_slow_ingest("during", &work.src, 512);
    let started = eventually(Duration::from_secs(20), || {
        !garage.keys_under("killed/leases/").is_empty()
    });
    std::thread::sleep(Duration::from_secs(1));
    garage.kill_node(1);
    let out = child.wait_with_output().expect("wait for ingest");
    assert!(started, "the ingest wrote no lease");
    assert!(
        out.status.success(),
        "{}",
        describe("the ingest whose node was killed", &out)
    );
    assert!(
        stderr_of(&out).contains("does not answer"),
        "the ingest never moved off the killed node (did it end first?)\n{}",
        describe("ingest", &out)
    );
    work.assert_restores(&repo, "during", &work.src);
    assert_verify_read_data_ok(&repo, "with the node killed during the ingest down");

    garage.restart_node(1);
    let mount = Mount::new(&repo, &["--limit-download", "1024", "--cache-size", "0"]);
    let copy = work.scratch.join("copy");
    let mut cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(mount.source_in("during", &work.src))
        .arg(&copy)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn cp -a");
    let copying = eventually(Duration::from_secs(20), || bytes_under(&copy) >= 1 << 20);
    garage.kill_node(1);
    let copied = wait_timeout(&mut cp, Duration::from_secs(120));
    if copied.is_none() {
        let _ = cp.kill();
        let _ = cp.wait();
    }
    let mut cp_said = String::new();
    if let Some(mut e) = cp.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut cp_said);
    }
    assert!(copying, "the copy out of the mount did not get going");
    assert!(
        copied.is_some_and(|s| s.success()),
        "cp -a out of the mount: {copied:?}: {cp_said}\n--- mount ---\n{}",
        mount.stderr_text()
    );
    assert!(
        bytes_under(&copy) >= 4 << 20,
        "the copy holds only {} bytes",
        bytes_under(&copy)
    );
    assert_copied(
        &work.src,
        &copy,
        "a copy out of the mount while its node was killed",
    );
    let said = mount.finish();
    assert!(
        said.contains("does not answer"),
        "the mount never moved off the killed node (did the copy end first?)\n{said}"
    );
    assert_verify_read_data_ok(&repo, "with the node killed during the copy down");

    garage.restart_node(1);
    work.assert_restores(&repo, "during", &work.src);
    assert_verify_read_data_ok(&repo, "with the killed node back and first again");
}

/// Runs `repo`'s ingest and another's at the same time (the second starts
/// while the first runs) and asserts both succeed.
fn ingest_at_once(jobs: [(&Repo, &Path, &str); 2]) {
    let [(ra, sa, na), (rb, sb, nb)] = jobs;
    let mut a = ra.spawn_slow_ingest(na, sa, 1024);
    let b = rb.spawn_slow_ingest(nb, sb, 1024);
    let overlapped = a.try_wait().expect("try_wait").is_none();
    for (name, child) in [(na, a), (nb, b)] {
        let out = child.wait_with_output().expect("wait for ingest");
        assert!(out.status.success(), "{}", describe(name, &out));
    }
    assert!(overlapped, "{na} was over before {nb} started");
}

/// Two machines (each with a cache of its own) back up into one prefix at
/// the same time, twice, each ingest slowed so they overlap; both trees
/// share a file. A third machine forgets both first backups and runs gc
/// twice, the grace period between: the second gc frees the space only
/// the forgotten backups used, and every backup that was not forgotten
/// restores identical on every machine (their catalogs follow the
/// deletes), with verify reading every byte clean.
#[test]
fn two_hosts_back_up_at_once_and_a_third_collects_garbage() {
    let garage = Garage::start();
    let first = Repo::new_in_bucket(&garage, "together", &[1, 2, 3]);
    let second = Repo::bucket_handle(&garage, "together", &[2, 3, 1]);
    let (wa, wb) = (Work::new(), Work::new());
    for (w, seed) in [(&wa, 100), (&wb, 200)] {
        write_random_file(&w.src.join("common"), 7, 1 << 20);
        write_random_file(&w.src.join("own"), seed, 1 << 20);
        write_random_file(&w.src.join("dropped"), seed + 1, 3 << 20);
    }
    ingest_at_once([(&first, &wa.src, "a1"), (&second, &wb.src, "b1")]);
    for (w, seed) in [(&wa, 300), (&wb, 400)] {
        fs::remove_file(w.src.join("dropped")).expect("rm dropped");
        write_random_file(&w.src.join("later"), seed, 512 << 10);
    }
    ingest_at_once([(&second, &wb.src, "b2"), (&first, &wa.src, "a2")]);
    let (a2, b2) = (wa.freeze("a2"), wb.freeze("b2"));

    let third = Repo::bucket_handle(&garage, "together", &[3, 1, 2]);
    assert_eq!(
        third.name_set(),
        string_set(&["a1", "a2", "b1", "b2"]),
        "the third machine does not see both machines' backups"
    );
    forget(&third, &["a1", "b1"]);
    let marked = gc(&third, &[]);
    assert_eq!(marked["bytes_freed"], 0, "{marked}");
    std::thread::sleep(PAST_GRACE);
    let freed = gc(&third, &[]);
    assert!(
        freed["bytes_freed"].as_u64() >= Some(4 << 20),
        "gc freed less than the two forgotten 3 MiB files: {freed}"
    );
    for (host, repo) in [("first", &first), ("second", &second), ("third", &third)] {
        assert_eq!(repo.name_set(), string_set(&["a2", "b2"]), "on the {host}");
        wa.assert_restores(repo, "a2", &a2);
        wb.assert_restores(repo, "b2", &b2);
    }
    assert_verify_read_data_ok(
        &third,
        "after two hosts backed up at once and a third ran gc",
    );
}
