//! Security: the copy receiver (`serve`, a local target) trusts nothing the sender says; append-only serving.
//!
//! Most tests play a compromised client: they start `snapfs --repo R serve`
//! themselves and speak its framed protocol (see
//! `src/commands/copy/remote.rs`) with packs and snapshots crafted by hand
//! through the library's own writers (`util/craft.rs`). Each test is named
//! after the hole it closes.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use snapfs::format::blob::{self as store};
use snapfs::format::codec::Encoder;
use snapfs::format::pack::ChunkKind;
use snapfs::ids::{ChunkId, Hash};

use crate::util::*;

// ---------------------------------------------------------------- a hostile client

/// `snapfs --repo R serve` in a copy session, driven over its
/// stdin/stdout.
struct Serve(ServeProcess);

impl std::ops::Deref for Serve {
    type Target = ServeProcess;
    fn deref(&self) -> &ServeProcess {
        &self.0
    }
}

impl std::ops::DerefMut for Serve {
    fn deref_mut(&mut self) -> &mut ServeProcess {
        &mut self.0
    }
}

impl Serve {
    fn start(repo: &Path, extra: &[&str]) -> Serve {
        Serve(ServeProcess::start(repo, extra))
    }

    fn hello(&mut self) -> Result<Vec<u8>, String> {
        let mut e = Encoder::new();
        e.u8(0);
        e.u64(1);
        self.call(&e.buf)
    }

    fn put_pack(&mut self, pack: &CraftedPack) -> Result<(), String> {
        let mut e = Encoder::new();
        e.u8(4);
        e.hash(&pack.name);
        e.bytes(&pack.bytes);
        self.call(&e.buf).map(|_| ())
    }

    fn commit(&mut self, record: ChunkId) -> Result<(), String> {
        let mut e = Encoder::new();
        e.u8(5);
        e.hash(&record.0);
        e.u64(0);
        self.call(&e.buf).map(|_| ())
    }
}

/// Writes an executable shell script (a stand-in for ssh, a slow peer).
fn write_script(p: &Path, text: &[u8]) {
    write_file(p, text);
    chmod(p, 0o755);
}

// ---------------------------------------------------------------- crafted snapshots

/// A snapshot `name` holding one file whose chunks are `chunks`: the tree
/// chunks and the record as pack rows, and the record's id.
fn one_file_snapshot(name: &str, chunks: &[(ChunkId, u32)]) -> (Vec<Row>, ChunkId) {
    let inner = encode_tree(&[file_entry(b"file", chunks)]);
    let inner_row = honest_row(ChunkKind::Page, &inner);
    let root = encode_tree(&[dir_entry(b"data", inner_row.0, 1)]);
    let root_row = honest_row(ChunkKind::Page, &root);
    let rec_row = honest_row(
        ChunkKind::Snapshot,
        &snapshot_record(name, "/data", root_row.0, 2, &[1, 1, 0, 0, 0]),
    );
    let rec = rec_row.0;
    (vec![inner_row, root_row, rec_row], rec)
}

/// Ingests a file holding `data` (a single chunk, under the chunker's
/// minimum) and asserts it restores byte for byte.
fn assert_ingest_restores(repo: &Repo, data: &[u8], what: &str) {
    let dir = tempdir();
    let src = canonical(dir.path()).join("src");
    mkdir(&src);
    write_file(&src.join("victim"), data);
    repo.ingest(&["--name", "honest"], &[&src]);
    let when = format!("{what}: an honest ingest of the chunk");
    assert_restores(repo, "honest", &[&src], &when);
}

// ---------------------------------------------------------------- the holes

/// A pack whose name is its true BLAKE3 but whose table claims chunk id X
/// for garbage bytes was stored and indexed: X then counted as present.
#[test]
fn serve_refuses_a_pack_whose_chunks_do_not_match_their_ids() {
    let repo = Repo::new();
    let victim = random_bytes(11, 100_000);
    let (x, len, _) = honest_blob(&victim);
    let pack = craft_pack(&[(x, ChunkKind::Data, len, random_bytes(12, 5_000))]);

    let mut serve = Serve::start(&repo.path, &[]);
    serve.hello().expect("hello");
    let answer = serve.put_pack(&pack);
    let stderr = serve.finish();
    assert!(
        answer.is_err(),
        "serve accepted a pack whose chunk does not match its id\n{stderr}"
    );
    assert_eq!(repo.pack_files(), BTreeSet::new());
    assert_ingest_restores(&repo, &victim, "after a refused forged pack");
}

/// A well-formed blob of other data, or X's own header over other frames,
/// filed under X: the later honest ingest of X must store X for real.
#[test]
fn squatted_chunk_id_does_not_poison_later_ingests() {
    let repo = Repo::new();
    let victim = random_bytes(21, 150_000);
    let (x, len, x_blob) = honest_blob(&victim);
    let other = random_bytes(22, 150_000);
    let (_, other_len, other_blob) = honest_blob(&other);
    // X's header (which ties the frame digests to the id) before the other
    // data's frames: only the frame check can tell.
    let header = store::header_len(victim.len());
    let mut spliced = x_blob[..header].to_vec();
    spliced.extend_from_slice(&other_blob[header..]);
    let forged = [
        craft_pack(&[(x, ChunkKind::Data, other_len, other_blob.clone())]),
        craft_pack(&[(x, ChunkKind::Data, len, spliced)]),
    ];

    let mut serve = Serve::start(&repo.path, &[]);
    serve.hello().expect("hello");
    for (i, pack) in forged.iter().enumerate() {
        assert!(
            serve.put_pack(pack).is_err(),
            "forged pack {i} for chunk {x} was accepted"
        );
    }
    serve.finish();
    assert_eq!(repo.pack_files(), BTreeSet::new());
    assert_ingest_restores(&repo, &victim, "after squatting attempts");
    run_ok(repo.cmd().args(["verify", "--read-data"]));
}

/// A snapshot whose file refers to a chunk that was never sent was
/// committed: it listed, and its file could not be read back.
#[test]
fn serve_refuses_to_commit_a_snapshot_with_absent_chunks() {
    let repo = Repo::new();
    let data = random_bytes(31, 80_000);
    let (x, len, blob) = honest_blob(&data);
    let (rows, rec) = one_file_snapshot("crafted", &[(x, len)]);

    let mut serve = Serve::start(&repo.path, &[]);
    serve.hello().expect("hello");
    serve
        .put_pack(&craft_pack(&rows))
        .expect("a pack of sound metadata chunks is accepted");
    let refused = serve.commit(rec);
    let err = match refused {
        Err(e) => e,
        Ok(()) => {
            let stderr = serve.finish();
            panic!("a snapshot with an absent chunk was committed\n{stderr}");
        }
    };
    assert!(
        err.contains("crafted") && err.contains(&x.to_string()) && err.contains("absent"),
        "the refusal does not name the snapshot and the absent chunk: {err}"
    );
    assert!(repo.snapshots().is_empty(), "{:?}", repo.snapshots());

    // Once the chunk arrives, the same snapshot commits and restores.
    serve
        .put_pack(&craft_pack(&[(x, ChunkKind::Data, len, blob)]))
        .expect("the honest data pack");
    serve.commit(rec).expect("the complete snapshot commits");
    serve.finish();
    let out = tempdir();
    let target = canonical(out.path()).join("r");
    repo.restore("crafted", &target);
    assert_eq!(
        fs::read(target.join("data").join("file")).expect("restored file"),
        data
    );
}

/// Directory node counts that lie (they number the mount's inodes) and
/// snapshot names that ingest would refuse are refused at commit.
#[test]
fn serve_refuses_snapshots_with_lying_node_counts_or_bad_names() {
    let repo = Repo::new();
    let data = random_bytes(41, 1_000);
    let (x, len, blob) = honest_blob(&data);
    let mut serve = Serve::start(&repo.path, &[]);
    serve.hello().expect("hello");
    serve
        .put_pack(&craft_pack(&[(x, ChunkKind::Data, len, blob)]))
        .expect("data");

    let inner = encode_tree(&[file_entry(b"file", &[(x, len)])]);
    let inner_row = honest_row(ChunkKind::Page, &inner);
    let lying = encode_tree(&[dir_entry(b"data", inner_row.0, 1 << 41)]);
    let lying_row = honest_row(ChunkKind::Page, &lying);
    let lying_rec = honest_row(
        ChunkKind::Snapshot,
        &snapshot_record("lying", "/data", lying_row.0, 2, &[1, 1, 0, 0, 0]),
    );
    let (bad_name_rows, bad_name_rec) = one_file_snapshot("../../escape", &[(x, len)]);
    let (reserved_rows, reserved_rec) = one_file_snapshot("latest", &[(x, len)]);
    let lying_id = lying_rec.0;
    for (rows, rec, what) in [
        (
            vec![inner_row, lying_row, lying_rec],
            lying_id,
            "lying node count",
        ),
        (bad_name_rows, bad_name_rec, "name with slashes"),
        (reserved_rows, reserved_rec, "reserved name"),
    ] {
        serve.put_pack(&craft_pack(&rows)).expect(what);
        assert!(
            serve.commit(rec).is_err(),
            "a snapshot with a {what} was committed"
        );
    }
    serve.finish();
    assert!(repo.snapshots().is_empty(), "{:?}", repo.snapshots());
}

/// A forget record in a pack makes `rebuild-catalog` drop the snapshots it
/// names: a client could erase the server's history that way.
#[test]
fn serve_refuses_a_forget_record() {
    let repo = Repo::new();
    let dir = tempdir();
    let src = canonical(dir.path()).join("src");
    mkdir(&src);
    write_file(&src.join("f"), b"history to keep\n");
    let kept = repo.ingest(&["--name", "kept"], &[&src]);
    let full: Hash = repo.snapshots()[0]
        .get("id")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("full snapshot id in {:?}", kept.json));
    let before = repo.pack_files();
    let forget = snapfs::format::record::encode_forget_record(&[full], 1_800_000_000_000_000_000);
    let pack = craft_pack(&[honest_row(ChunkKind::Snapshot, &forget)]);

    let mut serve = Serve::start(&repo.path, &["--append-only"]);
    serve.hello().expect("hello");
    let answer = serve.put_pack(&pack);
    let stderr = serve.finish();
    assert!(answer.is_err(), "a forget record was accepted\n{stderr}");
    assert_eq!(repo.pack_files(), before);
    run_ok(repo.cmd().arg("rebuild-catalog"));
    let names: Vec<String> = repo
        .snapshots()
        .iter()
        .map(|s| json_str(s, "name").to_string())
        .collect();
    assert_eq!(names, vec!["kept".to_string()]);
}

/// The peak resident memory of process `pid`, in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    proc_field(&status, "VmHWM:")
}

/// A frame claiming 1 GiB was read into a 1 GiB buffer (and serve waited
/// for it); a claim within bounds must cost only what actually arrives.
#[test]
fn oversized_frame_is_refused_without_allocating() {
    let repo = Repo::new();

    // Far over any pack this repository accepts: refused at once.
    let mut serve = Serve::start(&repo.path, &[]);
    serve.hello().expect("hello");
    let mut claim = (1u32 << 30).to_le_bytes().to_vec();
    claim.extend_from_slice(&[4, 1, 2, 3]);
    serve.send_raw(&claim);
    let status = wait_timeout(&mut serve.child, Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| !s.success()),
        "serve did not fail fast on a 1 GiB frame claim: {status:?}"
    );
    let stderr = serve.finish();
    assert!(stderr.contains("frame"), "{stderr}");

    // Before hello only small requests are read.
    let mut serve = Serve::start(&repo.path, &[]);
    serve.send_raw(&(8u32 << 20).to_le_bytes());
    let status = wait_timeout(&mut serve.child, Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| !s.success()),
        "serve did not refuse an 8 MiB request before hello: {status:?}"
    );

    // A claim a pack may make, with a few bytes behind it: serve waits
    // for the rest without holding the claimed size.
    let mut serve = Serve::start(&repo.path, &[]);
    serve.hello().expect("hello");
    let mut claim = (150u32 << 20).to_le_bytes().to_vec();
    claim.extend_from_slice(&[4; 4096]);
    serve.send_raw(&claim);
    std::thread::sleep(Duration::from_millis(500));
    let pid = serve.child.id();
    let hwm = vm_hwm_kib(pid).expect("VmHWM of serve");
    assert!(
        hwm < 64 * 1024,
        "serve's peak memory reached {hwm} KiB for a claim backed by 4 KiB"
    );
    let stderr = serve.finish();
    assert!(
        serve
            .child
            .try_wait()
            .expect("wait")
            .is_some_and(|s| !s.success()),
        "a frame cut short is not an error\n{stderr}"
    );
}

/// `ssh://-oProxyCommand=...` was handed to ssh as an option: a URL ran a
/// command on the machine making the copy. Malformed URLs must neither
/// reach ssh nor become a local path.
#[test]
fn ssh_host_starting_with_dash_is_refused() {
    require_tool("ssh");
    let repo = Repo::new();
    let dir = tempdir();
    let cwd = canonical(dir.path());
    // A stand-in for ssh that records being run.
    let fake_ssh = cwd.join("fake-ssh");
    write_script(
        &fake_ssh,
        b"#!/bin/sh\necho \"$@\" > \"$(dirname \"$0\")/fake-ssh-ran\"\nexit 1\n",
    );

    let real_ssh_urls = [
        "ssh://-oProxyCommand=touch pwned/srv/repo",
        "ssh://-oProxyCommand=touch pwned@nas/srv/repo",
    ];
    for url in real_ssh_urls {
        let out = repo
            .cmd()
            .current_dir(&cwd)
            .args(["copy", "--ssh", "ssh -o BatchMode=yes", "--to", url])
            .output()
            .expect("spawn copy");
        assert!(!out.status.success(), "{}", describe(url, &out));
        assert!(
            !cwd.join("pwned").exists(),
            "copy --to {url:?} ran the ProxyCommand"
        );
    }
    // Recent OpenSSH happens to refuse the remote command line as a host
    // name before running a ProxyCommand; the stand-in shows whether the
    // option would reach ssh at all.
    for url in [
        "ssh://-oProxyCommand=touch pwned/srv/repo",
        "ssh://backup@-oProxyCommand=x/srv/repo",
        "ssh://nas:0/srv/repo",
        "ssh:///srv/repo",
        "ssh://nas",
    ] {
        let out = repo
            .cmd()
            .current_dir(&cwd)
            .arg("copy")
            .arg("--ssh")
            .arg(&fake_ssh)
            .args(["--to", url])
            .output()
            .expect("spawn copy");
        assert!(!out.status.success(), "{}", describe(url, &out));
        assert!(
            !cwd.join("fake-ssh-ran").exists(),
            "copy --to {url:?} ran ssh with {:?}",
            fs::read_to_string(cwd.join("fake-ssh-ran")).unwrap_or_default()
        );
        assert!(
            !cwd.join("ssh:").exists(),
            "copy --to {url:?} made a local repository"
        );
    }
}

/// `serve --append-only` must not create a repository where the client
/// points it (the administrator creates it).
#[test]
fn append_only_serve_refuses_to_create_a_repository() {
    let dir = tempdir();
    let path = canonical(dir.path()).join("not-yet");
    let mut serve = Serve::start(&path, &["--append-only"]);
    let answer = serve.hello();
    let stderr = serve.finish();
    let err = answer.expect_err(&format!("append-only serve created a repository\n{stderr}"));
    assert!(err.contains("append-only"), "{err}");
    assert!(!path.exists(), "{} was created", path.display());
}

/// A pack sent again under its name replaced the stored file (a rename
/// over it); append-only or not, a stored pack is never rewritten.
#[test]
fn append_only_serve_refuses_overwrite() {
    for extra in [&["--append-only"][..], &[][..]] {
        let repo = Repo::new();
        let data = random_bytes(51, 30_000);
        let (x, len, blob) = honest_blob(&data);
        let pack = craft_pack(&[(x, ChunkKind::Data, len, blob)]);
        let mut serve = Serve::start(&repo.path, extra);
        serve.hello().expect("hello");
        serve.put_pack(&pack).expect("first put");
        let stored = repo.pack_files();
        assert_eq!(stored.len(), 1);
        let pack_file = stored.first().expect("the stored pack");
        let before = fs::metadata(pack_file).expect("stat pack");
        serve
            .put_pack(&pack)
            .expect("the same pack again is a no-op");
        serve.finish();
        let after = fs::metadata(pack_file).expect("stat pack");
        assert_eq!(
            (before.ino(), before.ctime(), before.ctime_nsec()),
            (after.ino(), after.ctime(), after.ctime_nsec()),
            "serve {extra:?} replaced a stored pack"
        );
        assert_eq!(repo.pack_files(), stored);
    }
}

/// Packs received by a local copy are readable by their owner only.
#[test]
fn received_packs_are_private() {
    let repo = Repo::new();
    let dir = tempdir();
    let src = canonical(dir.path()).join("src");
    build_plain_tree(&src, 61, 2, 3, 100 * KIB);
    repo.ingest(&["--name", "one"], &[&src]);
    let far = canonical(dir.path()).join("far");
    run_ok(repo.cmd().arg("copy").arg("--to").arg(&far));
    let packs = Repo::at(&far).pack_files();
    assert!(!packs.is_empty());
    for p in packs {
        let mode = mode_of(&p);
        assert_eq!(
            mode,
            0o400,
            "received pack {} has mode {mode:o}",
            p.display()
        );
    }
}

/// copy's scratch directory in $TMPDIR held the packs being sent with mode
/// 0755: any local user could read them. Observed while the copy waits on
/// a slowed-down far side.
#[test]
fn copy_scratch_dir_is_private() {
    let repo = Repo::new();
    let dir = tempdir();
    let base = canonical(dir.path());
    let src = base.join("src");
    build_plain_tree(&src, 71, 1, 2, 50 * KIB);
    repo.ingest(&["--name", "one"], &[&src]);
    let tmp = base.join("tmp");
    mkdir(&tmp);
    let far = base.join("far");
    let seen = base.join("seen");
    // The "ssh" program: serve the far repository, but hold back every
    // request after hello and snapshots (11 bytes, passed on one by one: a
    // buffering `head` would hold back hello) for two seconds, by which
    // time the sender has made its scratch directory; meanwhile note the
    // directory's mode and owner.
    let fake_ssh = base.join("fake-ssh");
    write_script(
        &fake_ssh,
        format!(
            "#!/bin/sh\n\
             ( for i in $(seq 1 150); do\n\
                 for d in \"$TMPDIR\"/snapfs-copy-*; do\n\
                   if [ -d \"$d\" ]; then stat -c '%a %u' \"$d\" > '{seen}'; exit 0; fi\n\
                 done; sleep 0.02; done ) &\n\
             {{ dd bs=1 count=11 2>/dev/null; sleep 2; cat; }} | exec '{bin}' --repo '{far}' serve\n",
            seen = seen.display(),
            bin = snapfs_bin(),
            far = far.display()
        )
        .as_bytes(),
    );
    let out = repo
        .cmd()
        .env("TMPDIR", &tmp)
        .arg("copy")
        .arg("--ssh")
        .arg(&fake_ssh)
        .args(["--to", "ssh://nas/far"])
        .output()
        .expect("spawn copy");
    assert!(out.status.success(), "{}", describe("copy", &out));
    let seen = fs::read_to_string(&seen).expect("the scratch directory was observed");
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc::getuid() };
    assert_eq!(
        seen.trim(),
        format!("700 {me}"),
        "scratch directory mode and owner"
    );
    assert_eq!(
        fs::read_dir(&tmp).expect("tmp").count(),
        0,
        "the scratch directory was left behind"
    );
}

/// A server claiming a 1 GiB answer made the client allocate it and wait.
#[test]
fn copy_refuses_an_oversized_answer_from_the_server() {
    let repo = Repo::new();
    let dir = tempdir();
    let base = canonical(dir.path());
    let fake_ssh = base.join("fake-ssh");
    write_script(
        &fake_ssh,
        b"#!/bin/sh\nprintf '\\000\\000\\000\\100\\000'\nexec sleep 30\n",
    );
    let started = Instant::now();
    let out = repo
        .cmd()
        .arg("copy")
        .arg("--ssh")
        .arg(&fake_ssh)
        .args(["--to", "ssh://nas/far"])
        .output()
        .expect("spawn copy");
    assert!(!out.status.success(), "{}", describe("copy", &out));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the client waited for a 1 GiB answer ({:?})",
        started.elapsed()
    );
}
