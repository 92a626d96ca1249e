//! Security: damaged and hostile repository bytes (packs, blobs, trees, records, config) give clear errors, never panics, aborts, hangs or unbounded allocations.

use crate::util::*;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use snapfs::format::pack::ChunkKind;
use snapfs::format::tree::{Body, Entry, Kind, Meta};

/// Fails unless `out` ended by itself (no signal: no abort, no stack
/// overflow) without a panic.
fn assert_no_crash(what: &str, out: &Output) {
    assert!(
        out.status.code().is_some(),
        "{what} was killed by a signal\n{}",
        describe(what, out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && out.status.code() != Some(101),
        "{what} panicked\n{}",
        describe(what, out)
    );
}

fn run(repo: &Repo, args: &[&str]) -> Output {
    let out = repo.cmd().args(args).output().expect("spawn snapfs");
    assert_no_crash(&format!("snapfs {}", args.join(" ")), &out);
    out
}

/// A 137-byte pack whose footer says: table at offset T with 2^32-1 rows,
/// where T + rows * 49 + 28 wraps around to exactly 137.
fn wrapping_pack() -> Vec<u8> {
    let size = 137u64;
    let count = u32::MAX;
    let table_offset = size.wrapping_sub(28).wrapping_sub(u64::from(count) * 49);
    let mut b = vec![0u8; size as usize];
    b[..8].copy_from_slice(snapfs::format::pack::MAGIC);
    b[8] = snapfs::format::pack::FORMAT_PLAIN;
    let f = &mut b[size as usize - 28..];
    f[..8].copy_from_slice(&table_offset.to_le_bytes());
    f[8..12].copy_from_slice(&count.to_le_bytes());
    f[20..].copy_from_slice(snapfs::format::pack::TABLE_MAGIC);
    b
}

fn small_source() -> (tempfile::TempDir, PathBuf) {
    let dir = tempdir();
    let src = canonical(dir.path()).join("src");
    build_plain_tree(&src, 31, 2, 3, 5000);
    (dir, src)
}

/// ingest, gc, verify, rebuild-catalog and copy (with the planted file in
/// the source, then in the target too) all finish, and the snapshot
/// survives; `name` is reported by ingest and rebuild-catalog.
fn every_command_survives(repo: &Repo, src: &Path, name: &str, plant: impl Fn(&Path)) {
    let out = run(repo, &["ingest", src.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", describe("ingest", &out));
    assert!(
        all_output(&out).contains(name),
        "ingest does not report {name}:\n{}",
        all_output(&out)
    );
    let out = run(repo, &["gc"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe("gc", &out));
    let out = run(repo, &["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe("verify", &out));
    let out = run(repo, &["rebuild-catalog"]);
    assert!(
        all_output(&out).contains(name),
        "rebuild-catalog does not report {name}:\n{}",
        all_output(&out)
    );
    assert_eq!(
        repo.snapshots().len(),
        2,
        "snapshots lost by rebuild-catalog"
    );
    let to = tempdir();
    let target = canonical(to.path()).join("copy");
    let target_s = target.to_str().expect("utf-8");
    let out = run(repo, &["copy", "--to", target_s]);
    assert_eq!(out.status.code(), Some(0), "{}", describe("copy", &out));
    plant(&target);
    let out = run(repo, &["copy", "--to", target_s]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        describe("copy again", &out)
    );
    assert_eq!(Repo::at(&target).snapshots().len(), 2);
}

#[test]
fn crafted_pack_footer_that_wraps_is_skipped_not_fatal() {
    let (_d, src) = small_source();
    let repo = Repo::new();
    repo.ingest(&[], &[&src]);
    let name = plant_pack(&repo.path, &wrapping_pack());
    every_command_survives(&repo, &src, &name, |target| {
        plant_pack(target, &wrapping_pack());
    });
}

#[test]
fn non_ascii_file_in_packs_is_skipped() {
    let (_d, src) = small_source();
    let repo = Repo::new();
    repo.ingest(&[], &[&src]);
    // 64 bytes before ".pack", a two-byte character across a hex pair.
    let odd = format!("{}é{}", "a".repeat(31), "b".repeat(31));
    let plant = |root: &Path| {
        let dir = root.join("packs").join("aa");
        fs::create_dir_all(&dir).expect("mkdir");
        write_file(&dir.join(format!("{odd}.pack")), b"not a pack");
    };
    plant(&repo.path);
    let out = run(&repo, &["ingest", src.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", describe("ingest", &out));
    assert!(
        all_output(&out).contains(&odd),
        "the stray file is not named:\n{}",
        all_output(&out)
    );
    for args in [&["gc"][..], &["verify"], &["rebuild-catalog"]] {
        run(&repo, args);
    }
    assert_eq!(repo.snapshots().len(), 2);
    let to = tempdir();
    let target = canonical(to.path()).join("copy");
    plant(&target);
    // The target is not a repository yet; plant into it after the first copy.
    let _ = fs::remove_dir_all(&target);
    let target_s = target.to_str().expect("utf-8");
    let out = run(&repo, &["copy", "--to", target_s]);
    assert_eq!(out.status.code(), Some(0), "{}", describe("copy", &out));
    plant(&target);
    let out = run(&repo, &["copy", "--to", target_s]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        describe("copy again", &out)
    );
}

#[test]
fn config_with_zero_chunk_avg_is_a_clear_error() {
    let (_d, src) = small_source();
    let repo = Repo::new();
    let config = repo.path.join("config");
    let edited = fs::read_to_string(&config)
        .expect("read config")
        .replace("chunk_avg = 1048576", "chunk_avg = 0");
    assert!(
        edited.contains("chunk_avg = 0"),
        "no chunk_avg line:\n{edited}"
    );
    write_file(&config, edited.as_bytes());
    for args in [
        vec!["ingest", src.to_str().expect("utf-8")],
        vec!["snapshots"],
    ] {
        let out = run(&repo, &args);
        assert_eq!(out.status.code(), Some(1), "{}", describe(args[0], &out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("chunk_avg") && err.contains(&*config.to_string_lossy()),
            "`snapfs {}` does not name the key and the file:\n{err}",
            args[0]
        );
    }
    assert!(
        !repo
            .path
            .join("packs")
            .read_dir()
            .expect("packs")
            .any(|e| e.is_ok())
    );
}

/// Packs a chain of `depth` nested directories `d/d/d/...` and a snapshot
/// record for it into one pack under `repo`'s packs/, with no catalog rows:
/// what rebuild-catalog imports.
fn plant_tree_chain(repo: &Repo, depth: u64, bottom: Vec<Entry>) {
    let mut rows = Vec::new();
    let mut nodes = bottom.iter().map(Entry::span).sum::<u64>();
    let first = honest_row(ChunkKind::Page, &encode_tree(&bottom));
    let mut below = first.0;
    rows.push(first);
    for _ in 0..depth {
        let row = honest_row(
            ChunkKind::Page,
            &encode_tree(&[dir_entry(b"d", below, nodes)]),
        );
        nodes += 1;
        below = row.0;
        rows.push(row);
    }
    let record = snapshot_record("crafted", "/d", below, nodes, &[0, depth, 0, 0, 0]);
    rows.push(honest_row(ChunkKind::Snapshot, &record));
    plant_pack(&repo.path, &craft_pack(&rows).bytes);
}

#[test]
fn deep_tree_chain_does_not_overflow_the_stack() {
    const DEPTH: u64 = 30_000;
    let repo = Repo::new();
    plant_tree_chain(&repo, DEPTH, vec![]);
    let out = run(&repo, &["rebuild-catalog"]);
    // Imported down to the deepest nesting snapfs follows; the rest is
    // reported lost.
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("rebuild-catalog", &out)
    );
    assert!(
        all_output(&out).contains("deeper than"),
        "{}",
        all_output(&out)
    );
    assert_eq!(
        repo.snapshots().len(),
        1,
        "the crafted snapshot was not imported"
    );
    // Every command that walks the snapshot stops with an error or
    // succeeds; none runs out of stack (a signal, no exit code).
    assert_walks_end(&repo, "crafted", "*");
}

/// verify, find, diff, restore and copy of snapshot `snap` each end with an
/// exit code (success or a clear failure), none by a signal.
fn assert_walks_end(repo: &Repo, snap: &str, glob: &str) {
    let scratch = tempdir();
    let restore_to = scratch.path().join("restored");
    let copy_to = scratch.path().join("copy");
    for args in [
        vec!["verify".to_string()],
        vec!["find".into(), glob.into()],
        vec!["diff".into(), snap.into(), snap.into()],
        vec![
            "restore".into(),
            snap.into(),
            restore_to.display().to_string(),
        ],
        vec!["copy".into(), "--to".into(), copy_to.display().to_string()],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(repo, &args);
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{}",
            describe(&args.join(" "), &out)
        );
    }
}

#[test]
fn tree_with_dotdot_name_is_rejected_on_import() {
    let repo = Repo::new();
    // d/d/.. would be a second name for d/.
    let dotdot = Entry {
        name: b"..".to_vec(),
        kind: Kind::Symlink,
        meta: Meta {
            mode: 0o120777,
            nlink: 1,
            ..Meta::default()
        },
        link_key: 0,
        xattrs: vec![],
        body: Body::Symlink(b"/etc".to_vec()),
    };
    plant_tree_chain(&repo, 2, vec![dotdot]);
    let out = run(&repo, &["rebuild-catalog"]);
    let all = all_output(&out);
    assert!(
        all.contains("..") && all.contains("tree"),
        "rebuild-catalog does not report the bad name:\n{all}"
    );
    assert_eq!(repo.snapshots().len(), 1);
    let to = tempdir();
    let target = canonical(to.path()).join("restored");
    let out = run(
        &repo,
        &["restore", "crafted", target.to_str().expect("utf-8")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe("restore", &out));
    let bottom = walk(&target);
    assert!(
        bottom.iter().all(|p| !p.ends_with("..")),
        "a `..` entry was restored: {bottom:?}"
    );
}

/// A tampered catalog whose directory contains itself made restore, find
/// and copy run out of stack (exit by signal, "has overflowed its stack").
#[test]
fn catalog_cycle_is_an_error_not_a_crash() {
    let repo = Repo::new();
    let src_dir = tempdir();
    let src = canonical(src_dir.path()).join("src");
    mkdir(&src.join("b/c"));
    write_file(&src.join("b/c/f"), b"x\n");
    repo.ingest(&["--name", "s"], &[&src]);
    // `b` names the page that holds it as its own directory, and that
    // page's row is made to claim the node count `b` claims (no honest
    // count can agree with itself around a loop).
    let claim = std::cell::Cell::new((0u64, Vec::new()));
    tamper_entry(&repo, b"b", |e, page| {
        if let Body::Dir { tree, nodes } = &mut e.body {
            tree.0.0.copy_from_slice(page);
            claim.set((*nodes, page.to_vec()));
        }
    });
    let (nodes, page) = claim.take();
    // `src`, which names that page too, claims the same.
    tamper_entry(&repo, b"src", |e, _| {
        if let Body::Dir { nodes: n, .. } = &mut e.body {
            *n = nodes;
        }
    });
    edit_catalog(
        &repo,
        "n = db.execute('UPDATE pages SET nodes = ? WHERE hash = ?', (int(argv[0].decode()), argv[1])).rowcount\n\
         assert n == 1, n",
        &[nodes.to_string().as_bytes(), &page],
    );
    assert_walks_end(&repo, "s", "f");
    let scratch = tempdir();
    let restore_to = scratch.path().join("restored");
    let out = run(
        &repo,
        &["restore", "s", restore_to.to_str().expect("utf-8")],
    );
    // Refused where the loop's page is found to hold more than its row
    // says, or else where the walk goes too deep.
    let said = all_output(&out);
    assert!(
        said.contains("deeper than") || said.contains("its row says"),
        "restore of a cycle does not say what is wrong:\n{}",
        all_output(&out)
    );
}
