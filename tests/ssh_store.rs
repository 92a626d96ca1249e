//! Repositories reached over ssh (`--repo ssh://…`): `snapfs serve` on the
//! far side keeps the objects and holds no key.
//!
//! The first tests go through a real sshd on loopback, as a user would;
//! then the keyless server is driven directly over its stdin/stdout with
//! requests a client would never send; last, a script stands in for
//! snapfs on the far side and answers badly.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use snapfs::format::codec::Encoder;

use crate::util::*;

/// Every regular file under `dir`, read.
fn far_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    walk(dir)
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).expect("lstat").is_file())
        .map(|p| {
            let b = fs::read(&p).expect("read far file");
            (p, b)
        })
        .collect()
}

/// The pack files under a repository directory.
fn far_packs(dir: &Path) -> Vec<PathBuf> {
    far_files(dir)
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect()
}

/// Needles (at least 8 bytes each) that occur in `haystack`, found in one
/// pass: each window's first 8 bytes are looked up among the needles'.
fn needles_found<'n>(haystack: &[u8], needles: &'n [Vec<u8>]) -> Vec<&'n [u8]> {
    let mut by_head: HashMap<[u8; 8], Vec<&[u8]>> = HashMap::new();
    for n in needles.iter().filter(|n| n.len() >= 8) {
        by_head
            .entry(n[..8].try_into().expect("8 bytes"))
            .or_default()
            .push(n);
    }
    let mut found = HashSet::new();
    for i in 0..haystack.len().saturating_sub(7) {
        let head: [u8; 8] = haystack[i..i + 8].try_into().expect("8 bytes");
        if let Some(list) = by_head.get(&head) {
            for n in list {
                if haystack[i..].starts_with(n) {
                    found.insert(*n);
                }
            }
        }
    }
    found.into_iter().collect()
}

/// Names (of 8 bytes or more) and 64-byte pieces of the files of `root`.
fn clear_text_of(root: &Path) -> Vec<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for p in walk(root) {
        let name = p.file_name().expect("a name").as_bytes();
        if name.len() >= 8 {
            out.push(name.to_vec());
        }
        let md = fs::symlink_metadata(&p).expect("lstat");
        if md.is_file() && md.len() >= 4096 && md.blocks() > 0 && out.len() < 400 {
            let mut f = fs::File::open(&p).expect("open fixture file");
            let mut piece = vec![0u8; 64];
            use std::os::unix::fs::FileExt;
            f.read_exact_at(&mut piece, md.len() / 2 - 32)
                .expect("read fixture file");
            if piece.iter().any(|b| *b != 0) {
                out.push(piece);
            }
            let mut head = vec![0u8; 64];
            f.read_exact(&mut head).expect("read fixture file");
            if head.iter().any(|b| *b != 0) {
                out.push(head);
            }
        }
    }
    out
}

fn assert_private(dir: &Path) {
    for p in std::iter::once(dir.to_path_buf()).chain(walk(dir)) {
        let md = fs::symlink_metadata(&p).expect("lstat");
        let mode = md.permissions().mode() & 0o7777;
        let want = if md.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} has mode {mode:o}", p.display());
    }
}

// ---------------------------------------------------------------- through a real sshd

/// The fixture through an encrypted repository at ssh://: ingest, the
/// mount (rsync finds no difference), restore, verify of every byte; the
/// far directory holds no name or content of the fixture in the clear,
/// and nothing but private files.
#[test]
fn encrypted_ssh_repository_round_trips_the_fixture_and_the_far_side_sees_only_ciphertext() {
    let sshd = Sshd::start();
    let base = tempdir();
    let far = canonical(base.path()).join("far");
    let src_dir = tempdir();
    let fixture = build_fixture(src_dir.path());
    let repo = sshd.repo_handle(&far);
    run_ok(
        repo.cmd()
            .args(["init", "--encryption", "xchacha20-poly1305"]),
    );
    let id = repo.ingest(&["--name", "fixture"], &[&fixture.root]).id;
    assert_fixture_round_trips(&repo, &fixture.root, "fixture", &id);
    assert_verify_read_data_ok(&repo, "a repository over ssh");

    assert_private(&far);
    let files = far_files(&far);
    assert!(
        files.iter().any(|(p, _)| p.ends_with("config")) && far_packs(&far).len() > 1,
        "the far side holds no repository: {:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let mut haystack = Vec::new();
    for (p, bytes) in &files {
        haystack.extend_from_slice(p.as_os_str().as_encoded_bytes());
        haystack.push(0);
        haystack.extend_from_slice(bytes);
    }
    let needles = clear_text_of(&fixture.root);
    assert!(needles.len() > 10, "too few needles: {}", needles.len());
    // The search finds what is there.
    let planted = [b"prefix".as_slice(), &needles[0]].concat();
    assert_eq!(needles_found(&planted, &needles[..1]).len(), 1);
    let found = needles_found(&haystack, &needles);
    assert!(
        found.is_empty(),
        "the far side holds in the clear: {:?}",
        found
            .iter()
            .map(|n| String::from_utf8_lossy(n))
            .collect::<Vec<_>>()
    );
}

/// Every command on a repository at ssh://: snapshots, log, find, diff,
/// stats, key add/list/remove, forget, gc, rebuild-catalog, verify.
#[test]
fn every_command_works_on_an_ssh_repository() {
    let sshd = Sshd::start();
    let base = tempdir();
    let far = canonical(base.path()).join("far");
    let work = Work::new();
    write_random_file(&work.src.join("data"), 3, 300 << 10);
    write_file(&work.src.join("note"), b"first");
    let repo = sshd.repo_handle(&far);
    run_ok(repo.cmd().arg("init"));
    repo.ingest(&["--name", "one"], &[&work.src]);
    write_file(&work.src.join("note"), b"second, longer");
    repo.ingest(&["--name", "two"], &[&work.src]);
    assert_eq!(repo.snapshot_names(), vec!["one", "two"]);
    let note = work.src.join("note");
    let out = run_ok(repo.cmd().arg("log").arg(&note));
    assert!(stdout_of(&out).contains("one") && stdout_of(&out).contains("two"));
    let out = run_ok(repo.cmd().args(["find", "note"]));
    assert!(
        stdout_of(&out).contains("note"),
        "{}",
        describe("find", &out)
    );
    let out = run_ok(repo.cmd().args(["diff", "one", "two"]));
    assert!(
        stdout_of(&out).contains("note"),
        "{}",
        describe("diff", &out)
    );
    run_ok(repo.cmd().args(["stats", "two"]));

    let pw2 = base.path().join("pw2");
    write_file(&pw2, b"another passphrase\n");
    chmod(&pw2, 0o600);
    run_ok(
        repo.cmd()
            .args(["key", "add", "--new-password-file"])
            .arg(&pw2),
    );
    let slots = json_of("key list", repo.cmd().args(["key", "list", "--json"]));
    let slots = slots.as_array().expect("a list of slots").clone();
    assert_eq!(slots.len(), 2, "{slots:?}");
    assert_eq!(fs::read_dir(far.join("keys")).expect("keys/").count(), 2);
    let opened = slots
        .iter()
        .find(|s| s["current"] == true)
        .map(|s| json_str(s, "id").to_string())
        .expect("the slot that opened it");
    run_ok(repo.cmd().args(["key", "remove", &opened]));
    assert_eq!(fs::read_dir(far.join("keys")).expect("keys/").count(), 1);
    let mut again = repo.cmd();
    again.env("SNAPFS_PASSWORD_FILE", &pw2);
    run_ok(again.arg("snapshots"));
    let s = repo.secret.as_ref().expect("encrypted");
    fs::copy(&pw2, &s.password_file).expect("the remaining passphrase");

    forget(&repo, &["--keep-last", "1"]);
    gc(&repo, &["--max-unused", "0"]);
    assert_eq!(repo.snapshot_names(), vec!["two"]);
    rebuild_catalog_ok(&repo);
    assert_verify_read_data_ok(&repo, "after forget, gc and a rebuilt catalog");
    let reference = work.freeze("two");
    work.assert_restores(&repo, "two", &reference);
}

/// `copy --to ssh://` from an encrypted repository goes through the far
/// side as a store; a second copy finds everything there and sends nothing.
#[test]
fn encrypted_copy_to_ssh_sends_only_once() {
    let sshd = Sshd::start();
    let base = tempdir();
    let far = canonical(base.path()).join("far");
    let work = Work::new();
    write_random_file(&work.src.join("data"), 11, 2 << 20);
    write_file(&work.src.join("small"), b"small file");
    let src = Repo::new_encrypted();
    src.ingest(&["--name", "copied"], &[&work.src]);
    let dst = sshd.repo_handle(&far);
    let copy = || {
        let mut cmd = src.cmd();
        cmd.args(["copy", "--json", "--to", &sshd.url(&far)])
            .args(sshd.options())
            .arg("--to-password-file")
            .arg(&dst.secret.as_ref().expect("encrypted").password_file);
        json_of("copy over ssh", &mut cmd)
    };
    let first = copy();
    assert_eq!(first["snapshots_copied"].as_array().map(Vec::len), Some(1));
    let packs = far_packs(&far);
    assert!(!packs.is_empty(), "no pack reached the far side");
    let second = copy();
    assert_eq!(
        second["snapshots_copied"].as_array().map(Vec::len),
        Some(0),
        "{second}"
    );
    assert_eq!(second["snapshots_present"], 1, "{second}");
    assert_eq!(second["packs_sent"], 0, "{second}");
    assert_eq!(second["bytes_sent"], 0, "{second}");
    assert_eq!(far_packs(&far), packs, "the second copy stored packs");
    let reference = work.freeze("copied");
    work.assert_restores(&dst, "copied", &reference);
}

/// A plain repository copied into an existing encrypted one over ssh is
/// sealed under the far repository's key on the way (before, the far side
/// refused it as a repository the copy protocol cannot write into).
#[test]
fn plain_copy_into_an_encrypted_ssh_repository_is_sealed_on_the_way() {
    let sshd = Sshd::start();
    let base = tempdir();
    let far = canonical(base.path()).join("far");
    let work = Work::new();
    write_random_file(&work.src.join("data"), 13, 256 << 10);
    let src = Repo::new();
    src.ingest(&["--name", "plain"], &[&work.src]);
    let dst = sshd.repo_handle(&far);
    run_ok(dst.cmd().arg("init"));
    let mut cmd = src.cmd();
    cmd.args(["copy", "--json", "--to", &sshd.url(&far)])
        .args(sshd.options())
        .arg("--to-password-file")
        .arg(&dst.secret.as_ref().expect("encrypted").password_file);
    let copied = json_of("plain copy into an encrypted far repository", &mut cmd);
    assert_eq!(
        copied["snapshots_copied"].as_array().map(Vec::len),
        Some(1),
        "{copied}"
    );
    let reference = work.freeze("plain");
    work.assert_restores(&dst, "plain", &reference);
}

/// A far side that hides the encrypted repository this machine knew there
/// (or swaps in a plain one) gets no plain copy: before, the copy took the
/// copy protocol and sent every blob in the clear.
#[test]
fn plain_copy_to_a_far_side_that_hid_its_encrypted_repository_is_refused() {
    let sshd = Sshd::start();
    let base = tempdir();
    let far = canonical(base.path()).join("far");
    let work = Work::new();
    write_file(&work.src.join("secret"), b"TOP-SECRET-PLAINTEXT-MARKER");
    let src = Repo::new();
    src.ingest(&["--name", "plain"], &[&work.src]);
    let dst = sshd.repo_handle(&far);
    run_ok(dst.cmd().arg("init"));
    let hidden = canonical(base.path()).join("hidden");
    fs::rename(&far, &hidden).expect("hide the far repository");
    let mut cmd = src.cmd();
    cmd.args(["copy", "--to", &sshd.url(&far)])
        .args(sshd.options())
        .arg("--to-password-file")
        .arg(&dst.secret.as_ref().expect("encrypted").password_file);
    // The copy runs with the destination's cache, where its pin is.
    for (k, v) in &dst.env {
        cmd.env(k, v);
    }
    cmd.env(
        "SNAPFS_CACHE_DIR",
        &dst.secret.as_ref().expect("encrypted").cache_dir,
    );
    let out = output_of(&mut cmd);
    assert!(!out.status.success(), "{}", describe("copy", &out));
    assert!(
        stderr_of(&out).contains("no longer holds"),
        "{}",
        describe("copy", &out)
    );
    let made = if far.exists() { walk(&far) } else { Vec::new() };
    let leaked = made.iter().filter(|p| p.is_file()).any(|p| {
        fs::read(p).is_ok_and(|b| b.windows(27).any(|w| w == b"TOP-SECRET-PLAINTEXT-MARKER"))
    });
    assert!(!leaked, "plain bytes reached the far side");
}

/// A junk object named like a pack that appears in the repository (the far
/// side's damage, or a client that may only add objects) is named in a
/// warning and left out: before, every later command rebuilt the whole
/// catalog from the far side because of it.
#[test]
fn junk_pack_on_the_far_side_is_left_out_not_a_rebuild_at_every_command() {
    let sshd = Sshd::start();
    let base = tempdir();
    let far = canonical(base.path()).join("far");
    let work = Work::new();
    write_random_file(&work.src.join("data"), 17, 64 << 10);
    let repo = sshd.repo_handle(&far);
    run_ok(repo.cmd().arg("init"));
    repo.ingest(&["--name", "kept"], &[&work.src]);
    let junk = b"SNAPFS-PACK junk that only looks like a pack".to_vec();
    let hex = blake3::hash(&junk).to_hex();
    let dir = far.join("packs").join(&hex[..2]);
    fs::create_dir_all(&dir).expect("mkdir");
    fs::write(dir.join(format!("{hex}.pack")), &junk).expect("plant");
    for round in 0..2 {
        let out = run_ok(repo.cmd().args(["-v", "snapshots"]));
        let said = stderr_of(&out);
        assert!(!said.contains("rebuilding"), "round {round}: {said}");
        assert!(
            said.contains(&format!("ignoring pack {hex}")),
            "round {round}: {said}"
        );
    }
    let reference = work.freeze("kept");
    work.assert_restores(&repo, "kept", &reference);
}

/// Over ssh the far side tells its clock too: a machine whose clock is
/// ten minutes behind it (more than half the default skew of five)
/// reads, with a warning, and writes nothing.
#[test]
fn machine_whose_clock_is_off_the_far_sides_reads_but_writes_nothing() {
    let sshd = Sshd::start();
    let base = tempdir();
    let far = canonical(base.path()).join("far");
    let work = Work::new();
    write_random_file(&work.src.join("data"), 18, 64 << 10);
    let repo = sshd.repo_handle(&far);
    run_ok(repo.cmd().arg("init"));
    repo.ingest(&["--name", "kept"], &[&work.src]);
    let read = output_of(&mut with_clock_off(repo.cmd().arg("snapshots"), "-600s"));
    assert!(
        read.status.success() && stderr_of(&read).contains("clock is 600 s behind"),
        "{}",
        describe("snapshots with the clock behind", &read)
    );
    let mut ingest = repo.cmd();
    ingest.args(["ingest", "--name", "late"]).arg(&work.src);
    let refused = output_of(&mut with_clock_off(&ingest, "-600s"));
    assert!(
        !refused.status.success() && stderr_of(&refused).contains("clock is 600 s behind"),
        "{}",
        describe("ingest with the clock behind", &refused)
    );
    assert_eq!(repo.snapshots().len(), 1);
}

/// A pack changed on the far side is found by the key holder: the read
/// fails naming the pack, and no wrong byte is restored.
#[test]
fn pack_tampered_on_the_far_side_fails_the_key_holders_read_naming_it() {
    let sshd = Sshd::start();
    let base = tempdir();
    let far = canonical(base.path()).join("far");
    let work = Work::new();
    write_random_file(&work.src.join("data"), 5, 256 << 10);
    let repo = sshd.repo_handle(&far);
    run_ok(repo.cmd().arg("init"));
    let id = repo.ingest(&[], &[&work.src]).id;
    let packs = far_packs(&far);
    // The largest pack holds the file's data; flip a byte in its middle.
    let pack = packs
        .iter()
        .max_by_key(|p| fs::metadata(p).expect("stat").len())
        .expect("a pack");
    let mut bytes = fs::read(pack).expect("read pack");
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x40;
    fs::write(pack, &bytes).expect("tamper");
    let target = canonical(base.path()).join("restored");
    let out = output_of(&mut repo.restore_cmd(&id, &target));
    let err = stderr_of(&out);
    assert!(
        !out.status.success() && err.contains("src/data") && err.contains("authenticate"),
        "{}",
        describe("restore from a tampered pack", &out)
    );
    let pack_hex = pack
        .file_stem()
        .expect("named")
        .to_string_lossy()
        .into_owned();
    let (out, _) = verify(&repo, &["--read-data"]);
    assert!(
        !out.status.success() && all_output(&out).contains(&pack_hex[..16]),
        "{}",
        describe("verify --read-data of a tampered pack", &out)
    );
    if let Ok(restored) = fs::read(restored_path(&target, &work.src).join("data")) {
        let original = fs::read(work.src.join("data")).expect("source");
        assert!(
            restored.len() < original.len()
                || restored == original
                || restored.iter().all(|b| *b == 0),
            "wrong bytes were restored"
        );
    }
}

// ---------------------------------------------------------------- a hostile client

/// `snapfs --repo DIR serve` in a store session, spoken to directly.
struct StoreSession(ServeProcess);

impl StoreSession {
    fn start(dir: &Path, extra: &[&str]) -> StoreSession {
        StoreSession::open(dir, extra).expect("a store session opens")
    }

    /// A store session, or the server's refusal of one.
    fn open(dir: &Path, extra: &[&str]) -> Result<StoreSession, String> {
        let mut s = StoreSession(ServeProcess::start(dir, extra));
        let mut hello = Encoder::new();
        hello.u8(0);
        hello.u64(2);
        s.call(&hello.buf)?;
        Ok(s)
    }

    fn call(&mut self, payload: &[u8]) -> Result<Vec<u8>, String> {
        self.0.call(payload)
    }

    fn put(&mut self, name: &str, bytes: &[u8]) -> Result<(), String> {
        let mut e = Encoder::new();
        e.u8(10);
        e.bytes(name.as_bytes());
        e.bytes(bytes);
        self.call(&e.buf).map(|_| ())
    }

    fn get(&mut self, name: &str) -> Result<Vec<u8>, String> {
        let mut e = Encoder::new();
        e.u8(6);
        e.bytes(name.as_bytes());
        e.u64(1 << 30);
        self.call(&e.buf)
    }

    fn delete(&mut self, name: &str) -> Result<(), String> {
        let mut e = Encoder::new();
        e.u8(11);
        e.bytes(name.as_bytes());
        self.call(&e.buf).map(|_| ())
    }
}

/// A local encrypted repository with one snapshot: the directory a
/// keyless server serves, its packs and one key slot.
fn served_repository() -> (Repo, Vec<PathBuf>, PathBuf) {
    let repo = Repo::new_encrypted();
    let work = Work::new();
    write_random_file(&work.src.join("data"), 7, 100 << 10);
    repo.ingest(&[], &[&work.src]);
    let packs = far_packs(&repo.path);
    let slot = fs::read_dir(repo.path.join("keys"))
        .expect("keys/")
        .next()
        .expect("a slot")
        .expect("entry")
        .path();
    (repo, packs, slot)
}

/// The object name of a file under the served directory.
fn name_in(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .expect("under the root")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn keyless_serve_refuses_a_pack_whose_bytes_do_not_hash_to_its_name() {
    let (repo, packs, _) = served_repository();
    let mut s = StoreSession::start(&repo.path, &[]);
    let pack = &packs[0];
    let name = name_in(&repo.path, pack);
    let good = fs::read(pack).expect("pack");
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 1;
    let err = s
        .put(&name, &bad)
        .expect_err("a pack not matching its name");
    assert!(err.contains("hash"), "{err}");
    assert_eq!(fs::read(pack).expect("pack"), good, "the pack was replaced");
    // Its own bytes under its own name: already there, a no-op.
    s.put(&name, &good).expect("the same pack again");
    // Bytes that hash to the name but are no pack.
    let junk = b"not a pack at all, though named after its hash".to_vec();
    let hex = blake3::hash(&junk).to_hex();
    let junk_name = format!("packs/{}/{hex}.pack", &hex[..2]);
    let err = s.put(&junk_name, &junk).expect_err("junk under its hash");
    assert!(err.contains("not a snapfs pack"), "{err}");
    assert!(!repo.path.join(&junk_name).exists());
}

#[test]
fn keyless_serve_refuses_names_outside_the_repository_layout() {
    let (repo, _, _) = served_repository();
    let outside = repo.path.parent().expect("a parent").to_path_buf();
    let mut s = StoreSession::start(&repo.path, &[]);
    for name in [
        "../escape",
        "keys/../../escape",
        "/etc/escape",
        "catalog.db",
        "lock",
        "tmp/escape",
        "keys/0123456789abcdef.key/../../escape",
        "leases/ESCAPE.lease",
        "config\0",
        "packs/00/escape.pack",
    ] {
        let err = s.put(name, b"x").expect_err(name);
        assert!(
            err.contains("not the name of a repository object"),
            "{name:?}: {err}"
        );
        assert!(s.get(name).is_err(), "{name:?} read");
        assert!(s.delete(name).is_err(), "{name:?} deleted");
    }
    assert!(!outside.join("escape").exists());
    assert!(!repo.path.join("tmp/escape").exists());
}

#[test]
fn keyless_serve_refuses_oversize_objects_and_a_second_config() {
    let (repo, _, _) = served_repository();
    let mut s = StoreSession::start(&repo.path, &[]);
    let slot = "keys/00000000000000aa.key";
    let err = s
        .put(slot, &vec![1u8; (64 << 10) + 1])
        .expect_err("a 64 KiB + 1 key slot");
    assert!(err.contains("at most 65536"), "{err}");
    let lease = format!("leases/{}.lease", "ab".repeat(16));
    assert!(
        s.put(&lease, &vec![1u8; 4097]).is_err(),
        "a 4097-byte lease"
    );
    s.put(&lease, b"a lease").expect("a small lease");
    let config = fs::read(repo.path.join("config")).expect("config");
    let err = s.put("config", &config).expect_err("a second config");
    assert!(err.contains("exists already"), "{err}");
    assert_eq!(fs::read(repo.path.join("config")).expect("config"), config);
    // A range longer than any pack, asked of a real pack.
    let mut e = Encoder::new();
    e.u8(7);
    e.bytes(name_in(&repo.path, &far_packs(&repo.path)[0]).as_bytes());
    e.u64(0);
    e.u64(1 << 40);
    assert!(s.call(&e.buf).is_err(), "a 1 TiB range");
    // Slots beyond the 64th.
    for i in 0..70u32 {
        let r = s.put(&format!("keys/{i:016x}.key"), b"slot");
        if r.is_err() {
            let n = fs::read_dir(repo.path.join("keys")).expect("keys").count();
            assert_eq!(n, 64, "refused at {n} slots");
            return;
        }
    }
    panic!("70 key slots accepted");
}

/// Sixteen append-only sessions adding slots in lockstep each counted 63
/// and all added one: 65 slots, and then every client refused to open the
/// repository ("holds 65 key slots, more than the 64").
#[test]
fn concurrent_slot_puts_never_pass_the_slot_limit() {
    let (repo, _, _) = served_repository();
    let sessions = 16;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(sessions));
    let threads: Vec<_> = (0..sessions)
        .map(|k| {
            let dir = repo.path.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut s = StoreSession::start(&dir, &["--append-only"]);
                for i in 0..8u32 {
                    barrier.wait();
                    let _ = s.put(&format!("keys/{k:02x}{i:014x}.key"), b"slot");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a session thread");
    }
    let n = fs::read_dir(repo.path.join("keys")).expect("keys").count();
    assert_eq!(n, 64, "{n} key slots");
}

/// Temporary files of killed puts stayed for ever; and refusals named
/// objects by the server's absolute paths.
#[test]
fn stale_temporary_files_are_removed_and_errors_name_no_server_path() {
    let (repo, packs, _) = served_repository();
    let fan = packs[0]
        .parent()
        .expect("a fan-out directory")
        .to_path_buf();
    let hours_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    let old = [fan.join(".tmp-killed"), repo.path.join("keys/.tmp-killed")];
    for p in &old {
        write_file(p, b"half a put");
        fs::File::options()
            .write(true)
            .open(p)
            .and_then(|f| f.set_modified(hours_ago))
            .expect("age a file");
    }
    let fresh = fan.join(".tmp-running");
    write_file(&fresh, b"a put under way");
    let mut s = StoreSession::start(&repo.path, &[]);
    let lease = format!("leases/{}.lease", "ab".repeat(16));
    s.put(&lease, b"lease").expect("a lease");
    for p in &old {
        assert!(!p.exists(), "{} stayed", p.display());
    }
    assert!(fresh.exists(), "a put under way lost its file");
    let name = name_in(&repo.path, &packs[0]);
    let mut bad = fs::read(&packs[0]).expect("pack");
    bad[40] ^= 1;
    let err = s
        .put(&name, &bad)
        .expect_err("a pack not matching its name");
    assert!(
        err.contains(&name) && !err.contains(&*repo.path.to_string_lossy()),
        "{err}"
    );
    let err = s
        .get(&format!("leases/{}.lease", "cd".repeat(16)))
        .map(|_| String::new())
        .unwrap_or_else(|e| e);
    assert!(!err.contains(&*repo.path.to_string_lossy()), "{err}");
}

#[test]
fn keyless_serve_never_follows_a_symlink_inside_the_repository() {
    let (repo, _, _) = served_repository();
    let elsewhere = tempdir();
    std::os::unix::fs::symlink(elsewhere.path(), repo.path.join("leases")).expect("symlink");
    let secret = elsewhere.path().join("secret");
    write_file(&secret, b"not for the client");
    let doomed = repo.path.join("doomed");
    mkdir(&doomed);
    let doom = format!("{}.doom", "cd".repeat(32));
    std::os::unix::fs::symlink(&secret, doomed.join(&doom)).expect("symlink");
    let mut s = StoreSession::start(&repo.path, &[]);
    let lease = format!("leases/{}.lease", "ab".repeat(16));
    let err = s
        .put(&lease, b"lease")
        .expect_err("a put through a symlink");
    assert!(err.contains("symlink"), "{err}");
    let err = s
        .get(&format!("doomed/{doom}"))
        .expect_err("a read of a symlink");
    assert!(err.contains("symlink"), "{err}");
    assert_eq!(
        fs::read_dir(elsewhere.path()).expect("elsewhere").count(),
        1,
        "something was written through the symlink"
    );
}

#[test]
fn append_only_serve_refuses_deleting_packs_and_keys_replacing_slots_and_doom_notices() {
    let (repo, packs, slot) = served_repository();
    let mut s = StoreSession::start(&repo.path, &["--append-only"]);
    let pack = name_in(&repo.path, &packs[0]);
    let key = name_in(&repo.path, &slot);
    for name in [&pack, &key] {
        let err = s.delete(name).expect_err(name);
        assert!(err.contains("append-only"), "{err}");
    }
    assert!(packs[0].exists() && slot.exists());
    let old = fs::read(&slot).expect("slot");
    s.put(&key, &old).expect("the same slot again is no change");
    assert!(s.put(&key, b"another slot").is_err(), "a slot replaced");
    assert_eq!(fs::read(&slot).expect("slot"), old);
    let doom = format!("doomed/{}.doom", "cd".repeat(32));
    assert!(s.put(&doom, b"doomed").is_err(), "a doom notice taken");
    let lease = format!("leases/{}.lease", "ab".repeat(16));
    s.put(&lease, b"lease").expect("a lease");
}

/// An append-only client replaced or deleted another host's lease, which
/// lets gc delete packs under that host's running writer.
#[test]
fn append_only_serve_keeps_other_holders_leases() {
    let (repo, _, _) = served_repository();
    let lease = format!("leases/{}.lease", "ab".repeat(16));
    let held = |host: &str, pid: u32, expires: u64| {
        format!(
            "snapfs-lease 1\nhost {host}\npid {pid}\nholder backup\nwriter 1\nsince_ns 1\nexpires_ns {expires}\n"
        )
        .into_bytes()
    };
    let mut s = StoreSession::start(&repo.path, &["--append-only"]);
    s.put(&lease, &held("web1", 42, 100)).expect("a new lease");
    s.put(&lease, &held("web1", 42, 200))
        .expect("its holder renewing it");
    let err = s
        .put(&lease, &held("web2", 42, 300))
        .expect_err("another host's lease replaced");
    assert!(err.contains("holder"), "{err}");
    s.put(&lease, &held("web1", 7, 300))
        .expect_err("another process's lease replaced");
    let err = s.delete(&lease).expect_err("a lease deleted");
    assert!(err.contains("append-only"), "{err}");
    assert_eq!(
        fs::read(repo.path.join(&lease)).expect("the lease"),
        held("web1", 42, 200)
    );
}

/// Hello 2 opened a keyless store on any served directory, a plain copy
/// target too: an append-only client planted a pack whose chunk did not
/// match its id (the copy protocol checks chunk ids; the store only the
/// pack's hash), and any other client deleted every indexed pack.
#[test]
fn store_session_on_a_plain_copy_target_is_refused() {
    let repo = Repo::new();
    let work = Work::new();
    write_random_file(&work.src.join("data"), 9, 100 << 10);
    repo.ingest(&[], &[&work.src]);
    let packs = far_packs(&repo.path);
    assert!(!packs.is_empty());
    for extra in [&["--append-only"][..], &[][..]] {
        let err = match StoreSession::open(&repo.path, extra) {
            Ok(mut s) => {
                let name = name_in(&repo.path, &packs[0]);
                let _ = s.delete(&name);
                panic!("a store session opened on a plain repository ({extra:?})");
            }
            Err(e) => e,
        };
        assert!(
            err.contains("copy sessions") && err.contains("catalog"),
            "{err}"
        );
    }
    assert_eq!(far_packs(&repo.path), packs);
    assert_verify_read_data_ok(&repo, "after refused store sessions");
}

/// The other way: a copy session (hello 1) on a directory kept as a store
/// (a config, no catalog) would have made the far side index, and hold a
/// catalog of, a repository whose catalog lives with its clients.
#[test]
fn copy_session_on_a_store_repository_is_refused() {
    let (repo, packs, _) = served_repository();
    let store_made = tempdir();
    let plain_store = canonical(store_made.path()).join("far");
    mkdir(&plain_store);
    write_file(&plain_store.join("config"), b"format = 2\n");
    for dir in [&repo.path, &plain_store] {
        for extra in [&["--append-only"][..], &[][..]] {
            let mut s = ServeProcess::start(dir, extra);
            let mut hello = Encoder::new();
            hello.u8(0);
            hello.u64(1);
            let err = s.call(&hello.buf).expect_err("a copy session opened");
            assert!(err.contains("store sessions"), "{err}");
        }
    }
    assert!(!plain_store.join("catalog.db").exists());
    assert!(!plain_store.join("packs").exists());
    assert_eq!(far_packs(&repo.path), packs);
}

/// An append-only store session created the repository it was pointed
/// at, with a `config` of the client's choosing: `pack_size =
/// 4294967296` made every later session accept 4 GiB frames.
#[test]
fn append_only_store_session_creates_no_repository_or_config() {
    let base = tempdir();
    let missing = canonical(base.path()).join("missing");
    let empty = canonical(base.path()).join("empty");
    mkdir(&empty);
    let config = b"format = 2\npack_size = 4294967296\n";
    for dir in [&missing, &empty] {
        let mut s = StoreSession::start(dir, &["--append-only"]);
        let err = s.put("config", config).expect_err("a config made");
        assert!(err.contains("append-only"), "{err}");
        s.put("keys/00000000000000aa.key", b"slot")
            .expect_err("a slot put where no repository is");
        let lease = format!("leases/{}.lease", "ab".repeat(16));
        s.put(&lease, b"lease")
            .expect_err("a lease put where no repository is");
    }
    assert!(!missing.exists(), "the repository directory was made");
    assert_eq!(fs::read_dir(&empty).expect("empty").count(), 0);
}

/// The pack limit a store session announces (and the frames it reads) is
/// bounded whatever `config` says.
#[test]
fn store_pack_limit_is_bounded_whatever_the_config_says() {
    let base = tempdir();
    let dir = canonical(base.path()).join("far");
    let mut s = StoreSession::start(&dir, &[]);
    s.put("config", b"format = 2\npack_size = 4294967296\n")
        .expect("a config of the largest pack size");
    drop(s);
    let mut s = ServeProcess::start(&dir, &[]);
    let mut hello = Encoder::new();
    hello.u8(0);
    hello.u64(2);
    let answer = s.call(&hello.buf).expect("hello");
    let mut d = snapfs::format::codec::Decoder::new(&answer);
    let limit = d.u64().expect("a pack limit");
    assert!(
        limit <= 512 << 20,
        "a pack limit of {limit} bytes announced"
    );
}

#[test]
fn keyless_serve_creates_a_new_repository_private_whatever_the_umask() {
    let base = tempdir();
    let dir = canonical(base.path()).join("new").join("far");
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg("umask 0; exec \"$0\" --repo \"$1\" serve")
        .arg(snapfs_bin())
        .arg(&dir);
    let mut s = StoreSession(ServeProcess::spawn(sh));
    let mut hello = Encoder::new();
    hello.u8(0);
    hello.u64(2);
    s.call(&hello.buf).expect("hello");
    let config = "format = 2\n";
    let err = s
        .put("config", b"nonsense = \xff")
        .expect_err("a bad config");
    assert!(err.contains("config"), "{err}");
    s.put("config", config.as_bytes()).expect("a config");
    s.put("keys/00000000000000aa.key", b"slot").expect("a slot");
    s.put(&format!("leases/{}.lease", "ab".repeat(16)), b"l")
        .expect("a lease");
    assert_private(&canonical(base.path()).join("new"));
}

// ---------------------------------------------------------------- a hostile server

/// `snapshots` on an ssh:// repository whose far side is `script` (in
/// place of snapfs): it must fail with one clear error, quickly.
fn against_script(sshd: &Sshd, script: &str) -> String {
    let base = tempdir();
    let path = canonical(base.path()).join("fake-snapfs");
    write_file(&path, format!("#!/bin/sh\n{script}\n").as_bytes());
    chmod(&path, 0o755);
    let mut repo = sshd.repo_handle(&canonical(base.path()).join("far"));
    repo.env = sshd.env(&path.to_string_lossy());
    let t0 = Instant::now();
    let out = run_within(
        repo.cmd().env("SNAPFS_SSH_TIMEOUT", "3").arg("snapshots"),
        Duration::from_secs(60),
    );
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{}", describe(script, &out));
    assert!(
        err.contains("snapfs: error: ssh://root@127.0.0.1")
            && !err.contains("panicked")
            && t0.elapsed() < Duration::from_secs(30),
        "{}",
        describe(script, &out)
    );
    err
}

#[test]
fn hostile_far_side_answers_give_a_clear_error_never_a_panic_or_hang() {
    let sshd = Sshd::start();
    // Garbage: an HTTP answer read as a frame length.
    let err = against_script(&sshd, "printf 'HTTP/1.1 200 OK\\r\\n\\r\\n'; sleep 30");
    assert!(err.contains("frame of"), "{err}");
    // Endless data: `yes` claims a huge frame; zeros are empty frames.
    against_script(&sshd, "exec yes");
    let err = against_script(&sshd, "exec cat /dev/zero");
    assert!(err.contains("empty answer"), "{err}");
    // Silence: given up after SNAPFS_SSH_TIMEOUT.
    let err = against_script(&sshd, "exec sleep 60");
    assert!(err.contains("nothing moved"), "{err}");
    // A good hello, then an answer longer than the request allows.
    let err = against_script(
        &sshd,
        "printf '\\002\\000\\000\\000\\000\\100\\000\\000\\020\\000'; exec cat /dev/zero",
    );
    assert!(err.contains("frame of 1048576"), "{err}");
    // A refusal whose text would drive the terminal.
    let err = against_script(
        &sshd,
        "printf '\\012\\000\\000\\000\\001\\033[2Jowned'; sleep 30",
    );
    assert!(!err.contains('\u{1b}'), "{err:?}");
    // A far side that exits at once.
    let err = against_script(&sshd, "exit 3");
    assert!(err.contains("closed the connection"), "{err}");
}

/// The far side's stderr reached the terminal as it was: escape sequences
/// retitled the window, cleared the screen, and bidi overrides could make
/// its text read as something else.
#[test]
fn far_side_stderr_is_escaped_bounded_and_marked_remote() {
    let sshd = Sshd::start();
    let err = against_script(
        &sshd,
        "printf '\\033]0;owned\\007\\033[2Jfake: all good \\342\\200\\256evil\\n' >&2; exit 3",
    );
    assert!(
        err.contains("remote: ") && err.contains("fake: all good"),
        "{err}"
    );
    assert!(
        !err.contains('\u{1b}') && !err.contains('\u{7}') && !err.contains('\u{202e}'),
        "{err:?}"
    );
    // Endless stderr: bounded.
    let err = against_script(&sshd, "yes spam >&2 & exec sleep 60");
    assert!(err.contains("remote: spam"), "{err}");
    assert!(
        err.len() < 100 << 10,
        "{} bytes of stderr shown: {}",
        err.len(),
        &err[err.len() - 600..]
    );
}
