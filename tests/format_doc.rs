//! docs/FORMAT.md is complete enough to recover files without snapfs:
//! `tests/format_reader.py`, written from the document alone, lists the
//! snapshots of repositories snapfs made, extracts them (directories of many
//! pages, files of several chunks, any date a file system holds), verifies
//! every chunk, cross-checks the catalog against the packs, and finds
//! snapfs's directory pages cut where the document says; it refuses damaged
//! packs, pages that do not fit together and formats it does not know; and
//! the document's worked example is the pack snapfs's own encoders write,
//! which both snapfs and the reader read as a repository.
//!
//! The reader runs under the Python of `target/format-reader-venv` (made by
//! scripts/test.sh, with the `blake3` and `zstandard` modules), or the one
//! named by `SNAPFS_FORMAT_PYTHON`. Without it these tests fail; they never
//! skip.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::util::*;

/// The Python interpreter that has the reader's modules.
fn python() -> PathBuf {
    let path = match std::env::var_os("SNAPFS_FORMAT_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/format-reader-venv/bin/python3"),
    };
    assert!(
        path.is_file(),
        "the format reader's Python ({}) is missing: run scripts/test.sh, which makes it with \
         the blake3, zstandard, nacl and argon2 modules, or set SNAPFS_FORMAT_PYTHON to a python3 \
         that has them",
        path.display()
    );
    let out = Command::new(&path)
        .args([
            "-c",
            "import blake3, zstandard, nacl.bindings, argon2.low_level",
        ])
        .output()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{} lacks the reader's modules (scripts/test.sh installs them):\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// `format_reader.py REPO ARGS...`, run to completion.
fn reader(repo: &Path, args: &[&OsStr]) -> Output {
    reader_keyed(repo, None, args)
}

/// `format_reader.py [--password-file FILE] REPO ARGS...`, run to completion.
fn reader_keyed(repo: &Path, password_file: Option<&Path>, args: &[&OsStr]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/format_reader.py");
    let mut cmd = Command::new(python());
    cmd.arg(&script);
    if let Some(p) = password_file {
        cmd.arg("--password-file").arg(p);
    }
    cmd.arg(repo).args(args).stdin(Stdio::null());
    let what = format!("{cmd:?}");
    cmd.output().unwrap_or_else(|e| panic!("spawn {what}: {e}"))
}

/// The reader's output, asserting it succeeded.
fn reader_ok(repo: &Path, args: &[&str]) -> Output {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let out = reader(repo, &args);
    assert!(
        out.status.success(),
        "{}",
        describe(&format!("format_reader.py {args:?}"), &out)
    );
    out
}

/// The reader's stderr, asserting it failed with exit status 1 (damage).
fn reader_refuses(repo: &Path, args: &[&str]) -> String {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let out = reader(repo, &args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the reader accepted a damaged repository\n{}",
        describe(&format!("format_reader.py {args:?}"), &out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The reader's stderr, asserting it refused the request (exit status 2).
fn reader_refuses_usage(repo: &Path, args: &[&str]) -> String {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let out = reader(repo, &args);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        describe(&format!("format_reader.py {args:?}"), &out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn extract(repo: &Repo, snapshot: &str, target: &Path) {
    reader_ok(
        &repo.path,
        &[
            "extract",
            snapshot,
            target.to_str().expect("temporary paths are UTF-8"),
        ],
    );
}

/// `diff -r` finds no difference in contents, symlink targets or names.
/// GNU diff calls any two fifos or device nodes different, so the
/// fixture's `special` directory is left to the metadata comparison
/// (type, mode, owner, device numbers).
fn assert_diff_r_clean(a: &Path, b: &Path) {
    require_tool("diff");
    let out = Command::new("diff")
        .args(["-r", "--no-dereference", "--exclude=special"])
        .arg(a)
        .arg(b)
        .output()
        .expect("spawn diff");
    assert!(
        out.status.success(),
        "{}",
        describe(&format!("diff -r {} {}", a.display(), b.display()), &out)
    );
}

/// The reader's stdout, as text.
fn stdout_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The ids and names of a snapshot list (the reader's or snapfs's JSON).
fn ids_names(items: &[Value]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|s| {
            (
                json_str(s, "id").to_string(),
                json_str(s, "name").to_string(),
            )
        })
        .collect()
}

/// The reader's `list --json`, as an array.
fn reader_list(repo: &Repo) -> Vec<Value> {
    let out = reader_ok(&repo.path, &["list", "--json"]);
    match parse_json("format_reader.py list --json", &out.stdout) {
        Value::Array(items) => items,
        other => panic!("the reader's list is not an array: {other}"),
    }
}

/// `check-pages` finds every directory cut where docs/FORMAT.md section
/// 8.11 says; returns its summary line.
fn assert_pages_as_documented(repo: &Repo) -> String {
    let out = reader_ok(&repo.path, &["check-pages"]);
    let text = stdout_text(&out);
    assert!(
        text.contains("as the document says"),
        "{}",
        describe("check-pages", &out)
    );
    text
}

/// Every kind of entry (the shared fixture: nested and empty directories,
/// a directory of 300 files (two leaves and an index page), empty,
/// multi-chunk and 1 GiB sparse files, hard links across directories,
/// symlinks with odd targets, non-UTF-8 names and names with newlines,
/// devices, a fifo, xattrs and ACLs, foreign owners, odd modes, nanosecond
/// mtimes) in two snapshots, the second after changes, and a third snapshot
/// forgotten, then collected: the reader gets the two back from the packs,
/// bit for bit with their metadata, agrees with snapfs on the list of
/// snapshots (the forgotten one is not in it), finds the catalog to be
/// exactly what the packs say, and every directory cut as the document says.
#[test]
fn format_reader_recovers_every_snapshot_from_the_packs_alone() {
    // Fail before the long set-up if the reader cannot run.
    python();
    let src_dir = tempdir();
    let fixture = build_fixture(src_dir.path());
    let root = fixture.root.clone();
    let repo = Repo::new();
    let first = repo.ingest(&[], &[&root]);

    // The first snapshot's tree, kept to compare with after the changes.
    let ref_dir = tempdir();
    let ref1 = canonical(ref_dir.path()).join("first");
    tool(
        "cp",
        &[OsStr::new("-a"), root.as_os_str(), ref1.as_os_str()],
    );

    write_file(
        &root.join("files/text.txt"),
        b"changed for the second snapshot\n",
    );
    set_mtime(&root.join("files/text.txt"), 1_700_000_000, 42);
    write_file(&root.join("added in the second"), &random_bytes(8, 5000));
    fs::remove_file(root.join("many/f0007")).expect("remove a file");
    chmod(&root.join("owners/private"), 0o640);
    xattr::set(root.join("files/size-100"), "user.added", b"later").expect("setxattr");
    {
        // A few bytes in the middle of the big file: most of its chunks
        // are shared by both snapshots.
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&fixture.big)
            .expect("open big file");
        f.write_all_at(b"edited", 50 * MIB).expect("edit big file");
    }
    set_mtime(&fixture.big, 1_600_000_000, 7);
    let second = repo.ingest(&["--tag", "after"], &[&root]);
    assert_ne!(first.id, second.id);

    // A third snapshot, of another source, forgotten: its record stays in
    // its pack until gc, and the forget record must hide it.
    let other_dir = tempdir();
    let other = canonical(other_dir.path()).join("other");
    mkdir(&other);
    write_random_file(&other.join("only-here"), 12, 300_000);
    let third = repo.ingest(&["--name", "to-forget"], &[&other]);
    run_ok(repo.cmd().args(["forget", "to-forget"]));

    // The list, from the packs alone, is snapfs's.
    let listed = reader_list(&repo);
    assert_eq!(ids_names(&listed), ids_names(&repo.snapshots()));
    assert_eq!(
        ids_names(&listed),
        vec![
            (first.id.clone(), first.name.clone()),
            (second.id.clone(), second.name.clone())
        ]
    );
    assert_eq!(listed[1]["tags"], serde_json::json!(["after"]));
    // The owner names recorded: root owns most of the fixture.
    assert_eq!(listed[1]["users"]["0"], serde_json::json!("root"));
    let err = reader_refuses_usage(&repo.path, &["extract", &third.id, "/nonexistent"]);
    assert!(err.contains("no snapshot named"), "{err}");

    // Every row of the catalog is what the document says it is derived from.
    reader_ok(&repo.path, &["check-catalog"]);
    let verified = reader_ok(&repo.path, &["verify"]);
    assert!(
        stdout_text(&verified).contains("2 snapshots: ok"),
        "{}",
        describe("verify", &verified)
    );
    assert_pages_as_documented(&repo);

    // Both snapshots, extracted by name and by id, are their trees.
    let out_dir = tempdir();
    let base = canonical(out_dir.path());
    let t1 = base.join("first");
    let t2 = base.join("second");
    extract(&repo, &first.name, &t1);
    extract(&repo, &second.id, &t2);
    assert_same_tree(&ref1, &restored_path(&t1, &root));
    assert_diff_r_clean(&ref1, &restored_path(&t1, &root));
    assert_same_tree(&root, &restored_path(&t2, &root));
    assert_diff_r_clean(&root, &restored_path(&t2, &root));

    // Holes stay holes: 3 MiB of data in 1 GiB.
    let sparse = restored_path(&t2, &fixture.sparse);
    assert_eq!(
        fs::metadata(&sparse).expect("stat sparse").len(),
        SPARSE_LOGICAL
    );
    let allocated = allocated_bytes(&sparse);
    assert!(
        allocated < 64 * MIB,
        "the extracted sparse file allocates {allocated} bytes for 3 MiB of data"
    );

    // After gc (the forgotten snapshot's pack deleted, packs rewritten),
    // the packs still say what the catalog says.
    run_ok(repo.cmd().arg("gc"));
    reader_ok(&repo.path, &["check-catalog"]);
    let listed = reader_list(&repo);
    assert_eq!(ids_names(&listed), ids_names(&repo.snapshots()));
}

/// docs/FORMAT.md section 15 is enough to read an encrypted repository: the
/// independent reader, given the passphrase, lists the snapshot from the
/// packs, verifies every sealed blob and table, finds the pages cut with
/// the keyed boundary, and extracts the fixture exactly; with another
/// passphrase it opens nothing.
#[test]
fn format_reader_reads_an_encrypted_repository_with_its_passphrase() {
    python();
    let src_dir = tempdir();
    let fixture = build_fixture(src_dir.path());
    let repo = Repo::new_encrypted();
    let snap = repo.ingest(&["--name", "sealed"], &[&fixture.root]);
    let pw = repo.secret.clone().expect("encrypted").password_file;
    let ok = |args: &[&str]| {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let out = reader_keyed(&repo.path, Some(&pw), &args);
        assert!(
            out.status.success(),
            "{}",
            describe(&format!("format_reader.py {args:?}"), &out)
        );
        out
    };
    let listed = parse_json(
        "format_reader.py list --json",
        &ok(&["list", "--json"]).stdout,
    );
    assert_eq!(
        ids_names(listed.as_array().expect("a list")),
        ids_names(&repo.snapshots())
    );
    let verified = ok(&["verify"]);
    assert!(
        stdout_text(&verified).contains("1 snapshots: ok"),
        "{}",
        describe("verify", &verified)
    );
    let pages = ok(&["check-pages"]);
    assert!(
        stdout_text(&pages).contains("as the document says"),
        "{}",
        describe("check-pages", &pages)
    );
    let out_dir = tempdir();
    let target = canonical(out_dir.path()).join("extracted");
    ok(&["extract", &snap.id, target.to_str().expect("utf-8 path")]);
    assert_same_tree(&fixture.root, &restored_path(&target, &fixture.root));

    let wrong = pw.with_file_name("wrong");
    write_file(&wrong, b"not it\n");
    let out = reader_keyed(&repo.path, Some(&wrong), &[OsStr::new("list")]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        describe("a wrong passphrase", &out)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
}

/// What the packs of `repo` hold, as snapfs's own decoders see it: the
/// highest page level, and how many chunk lists (kind 3) there are.
fn page_levels_and_lists(repo: &Repo) -> (u8, usize) {
    use snapfs::format::blob::decode_blob;
    use snapfs::format::pack::{ChunkKind, decode_pack};
    use snapfs::format::page::decode_page;
    let (mut level, mut lists) = (0, 0);
    for p in repo.pack_files() {
        let bytes = fs::read(&p).expect("read pack");
        for e in decode_pack(&bytes, &snapfs::format::keying::Keying::plain())
            .expect("snapfs decodes its own pack")
        {
            match e.kind {
                ChunkKind::Page => {
                    let blob = &bytes[e.offset as usize..][..e.stored_len as usize];
                    let raw = decode_blob(
                        &snapfs::format::keying::Keying::plain(),
                        blob,
                        &e.id,
                        e.raw_len as usize,
                    )
                    .expect("page blob");
                    level = level.max(decode_page(&raw).expect("page decodes").level());
                }
                ChunkKind::List => lists += 1,
                _ => {}
            }
        }
    }
    (level, lists)
}

/// 1901-12-19T16:53:20.123456789Z: before 1970 and before any 32-bit
/// time_t reaches, still inside what ext4 stores (from 1901-12-13).
const SECS_1901: i64 = -2_147_000_000;
/// 2300-01-01T00:00:00.987654321Z: after 2262, where an i64 of
/// nanoseconds ends.
const SECS_2300: i64 = 10_413_792_000;

/// A directory of 1,000 entries (several leaves under index pages, with
/// subdirectories, symlinks, attributes and a hard link whose names lie in
/// different leaves), directories whose leaves end at 256 entries and by
/// weight, a file of several chunks (a chunk list of its own), and files
/// and a directory dated 1901 and 2300: the reader extracts both
/// snapshots (the second after one entry of the big directory changed)
/// exactly, dates included, verifies them, agrees with the catalog, and
/// finds every page cut as the document says.
#[test]
fn format_reader_reads_paged_directories_chunk_lists_and_far_dates() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    python();
    let src_dir = tempdir();
    let src = canonical(src_dir.path()).join("src");
    let big = src.join("big-dir");
    mkdir(&big);
    for i in 0..1000u32 {
        let p = big.join(format!("entry-{i:04}"));
        if i % 100 == 50 {
            mkdir(&p);
            write_file(&p.join("inner-a"), format!("inside {i}\n").as_bytes());
            write_file(&p.join("inner-b"), b"");
        } else if i % 97 == 3 {
            std::os::unix::fs::symlink(format!("entry-{:04}", i + 1), &p).expect("symlink");
        } else if i == 900 {
            fs::hard_link(big.join("entry-0010"), &p).expect("hard link across leaves");
        } else {
            write_file(
                &p,
                format!("entry number {i}\n")
                    .repeat(i as usize % 7)
                    .as_bytes(),
            );
            if i % 250 == 7 {
                xattr::set(&p, "user.n", format!("{i}").as_bytes()).expect("setxattr");
            }
        }
    }
    // 300 names none of which ends a leaf by its hash (section 8.11): the
    // leaf ends at 256 entries. And symlinks with long targets: leaves end
    // by weight, every eight entries or so.
    let no_cut = src.join("no-cut");
    mkdir(&no_cut);
    let key = blake3::derive_key("snapfs 2026 directory page boundaries", b"");
    let names = (0u32..)
        .map(|i| format!("n-{i}"))
        .filter(|n| blake3::keyed_hash(&key, n.as_bytes()).as_bytes()[0] & 63 != 0)
        .take(300);
    for n in names {
        write_file(&no_cut.join(n), b"");
    }
    let heavy = src.join("heavy");
    mkdir(&heavy);
    for i in 0..40u8 {
        let target = vec![b'a' + i % 26; 4000];
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), heavy.join(format!("l{i:02}")))
            .expect("symlink");
    }
    write_random_file(&src.join("several-chunks.bin"), 21, 5 * MIB);
    let dated = src.join("dated");
    mkdir(&dated);
    write_file(&dated.join("from-1901"), b"old\n");
    set_mtime(&dated.join("from-1901"), SECS_1901, 123_456_789);
    write_file(&dated.join("from-2300"), b"new\n");
    set_mtime(&dated.join("from-2300"), SECS_2300, 987_654_321);
    mkdir(&dated.join("dir-from-2300"));
    set_mtime(&dated.join("dir-from-2300"), SECS_2300, 1);
    set_mtime(&dated, SECS_1901, 0);

    let repo = Repo::new();
    let first = repo.ingest(&[], &[&src]);
    let ref_dir = tempdir();
    let ref1 = canonical(ref_dir.path()).join("first");
    tool("cp", &[OsStr::new("-a"), src.as_os_str(), ref1.as_os_str()]);
    write_file(&big.join("entry-0500"), b"changed in the second snapshot\n");
    let second = repo.ingest(&[], &[&src]);

    // What the test is about is there: index pages and chunk lists.
    let (level, lists) = page_levels_and_lists(&repo);
    assert!(level >= 1, "1,000 entries made no index page");
    assert!(lists >= 1, "a 5 MiB file made no chunk list");

    assert_eq!(
        ids_names(&reader_list(&repo)),
        vec![
            (first.id.clone(), first.name.clone()),
            (second.id.clone(), second.name.clone())
        ]
    );
    let verified = reader_ok(&repo.path, &["verify"]);
    assert!(
        stdout_text(&verified).contains("2 snapshots: ok"),
        "{}",
        describe("verify", &verified)
    );
    reader_ok(&repo.path, &["check-catalog"]);
    let pages = assert_pages_as_documented(&repo);
    assert!(
        !pages.contains("highest root level 0"),
        "check-pages saw no index page: {pages}"
    );

    let out_dir = tempdir();
    let base = canonical(out_dir.path());
    let (t1, t2) = (base.join("first"), base.join("second"));
    extract(&repo, &first.name, &t1);
    extract(&repo, &second.name, &t2);
    assert_same_tree(&ref1, &restored_path(&t1, &src));
    assert_diff_r_clean(&ref1, &restored_path(&t1, &src));
    assert_same_tree(&src, &restored_path(&t2, &src));
    assert_diff_r_clean(&src, &restored_path(&t2, &src));

    // The dates, said once more in so many words.
    let back = restored_path(&t2, &dated);
    for (name, secs, nanos) in [
        ("from-1901", SECS_1901, 123_456_789),
        ("from-2300", SECS_2300, 987_654_321),
        ("dir-from-2300", SECS_2300, 1),
    ] {
        let m = fs::symlink_metadata(back.join(name)).expect("stat extracted");
        assert_eq!((m.mtime(), m.mtime_nsec()), (secs, nanos), "{name}");
    }
    let m = fs::metadata(restored_path(&t2, &big.join("entry-0900"))).expect("stat link");
    let n = fs::metadata(restored_path(&t2, &big.join("entry-0010"))).expect("stat link");
    assert_eq!(m.ino(), n.ino(), "the hard link across leaves is one file");
}

/// The largest data chunk of the repository: (pack file, the blob's offset
/// and stored length, the chunk id in hex).
fn largest_blob(repo: &Repo, kind: snapfs::format::pack::ChunkKind) -> (PathBuf, u64, u32, String) {
    use snapfs::format::pack::decode_pack;
    let mut best: Option<(PathBuf, u64, u32, u32, String)> = None;
    for p in repo.pack_files() {
        let bytes = fs::read(&p).expect("read pack");
        for e in decode_pack(&bytes, &snapfs::format::keying::Keying::plain())
            .expect("snapfs decodes its own pack")
        {
            if e.kind == kind && best.as_ref().is_none_or(|b| e.raw_len > b.3) {
                best = Some((
                    p.clone(),
                    e.offset,
                    e.stored_len,
                    e.raw_len,
                    e.id.to_string(),
                ));
            }
        }
    }
    let (p, offset, stored, _, id) = best.expect("a chunk of that kind");
    (p, offset, stored, id)
}

fn pack_name(p: &Path) -> String {
    p.file_stem()
        .and_then(OsStr::to_str)
        .expect("pack file name")
        .to_string()
}

/// A flipped byte in a chunk's frame, in a directory page, in a pack's
/// table or in its format byte, and a config of a later or an earlier
/// format: the reader stops with exit status 1 and a message naming what is
/// damaged (for format 1, what to do), and writes no file from bytes that
/// did not verify; with the byte flipped back it reads again.
#[test]
fn format_reader_refuses_damaged_packs_and_unknown_formats() {
    use snapfs::format::pack::ChunkKind;
    let src_dir = tempdir();
    let src = canonical(src_dir.path()).join("src");
    mkdir(&src);
    write_random_file(&src.join("big.bin"), 11, 6 * MIB);
    write_file(&src.join("small.txt"), b"small\n");
    let repo = Repo::new();
    let snap = repo.ingest(&[], &[&src]);
    reader_ok(&repo.path, &["verify"]);
    let out_dir = tempdir();
    let target = canonical(out_dir.path()).join("out");
    let extract_args = ["extract", &snap.name, target.to_str().expect("UTF-8 path")];

    // A byte inside the last frame of the biggest data chunk.
    let (pack, offset, stored, id) = largest_blob(&repo, ChunkKind::Data);
    let at = offset + u64::from(stored) - 100;
    flip_byte(&pack, at);
    let err = reader_refuses(&repo.path, &extract_args);
    assert!(
        err.contains("damaged repository") && err.contains(&id) && err.contains("does not match"),
        "the error does not say which chunk is damaged: {err}"
    );
    let partial = restored_path(&target, &src.join("big.bin"));
    if let Ok(m) = fs::metadata(&partial) {
        assert!(
            m.len() < 6 * MIB,
            "the damaged file was extracted whole ({} bytes)",
            m.len()
        );
    }
    let err = reader_refuses(&repo.path, &["verify"]);
    assert!(
        err.contains(&pack_name(&pack)) && err.contains(&id),
        "verify does not name the damaged pack and chunk: {err}"
    );
    flip_byte(&pack, at);
    reader_ok(&repo.path, &["verify"]);

    // A byte of a directory page: nothing beneath it is extracted.
    let (page_pack, offset, stored, page_id) = largest_blob(&repo, ChunkKind::Page);
    let at = offset + u64::from(stored) - 1;
    flip_byte(&page_pack, at);
    fs::remove_dir_all(&target).ok();
    let err = reader_refuses(&repo.path, &extract_args);
    assert!(
        err.contains("damaged repository") && err.contains(&page_id),
        "the error does not name the damaged page: {err}"
    );
    flip_byte(&page_pack, at);

    // A byte of a pack's table: its checksum no longer matches.
    let size = fs::metadata(&pack).expect("stat pack").len();
    let table_byte = size - 28 - 49 + 3;
    flip_byte(&pack, table_byte);
    let err = reader_refuses(&repo.path, &["list"]);
    assert!(
        err.contains(&pack_name(&pack)) && err.contains("table checksum mismatch"),
        "{err}"
    );
    flip_byte(&pack, table_byte);

    // A pack of another format than the repository's.
    flip_byte(&pack, 8);
    let err = reader_refuses(&repo.path, &["list"]);
    assert!(
        err.contains(&pack_name(&pack)) && err.contains("not 1 as this repository's packs are"),
        "{err}"
    );
    flip_byte(&pack, 8);

    // A repository of a later format.
    let config = repo.path.join("config");
    let text = fs::read_to_string(&config).expect("read config");
    assert!(text.contains("format = 2\n"), "{text}");
    write_file(&config, text.replace("format = 2", "format = 3").as_bytes());
    let err = reader_refuses(&repo.path, &["list"]);
    assert!(err.contains("repository format '3'"), "{err}");

    // A repository of the previous format: refused, by snapfs and by the
    // reader, with the command that converts it.
    write_file(&config, text.replace("format = 2", "format = 1").as_bytes());
    let err = reader_refuses(&repo.path, &["list"]);
    assert!(
        err.contains("repository format '1'") && err.contains("snapfs upgrade"),
        "{err}"
    );
    let out = run_expect(repo.cmd().arg("snapshots"), 1);
    let said = stderr_of(&out);
    assert!(
        said.contains("format 1") && said.contains("snapfs upgrade"),
        "{}",
        describe("snapfs snapshots of a format-1 repository", &out)
    );
    write_file(&config, text.as_bytes());

    let out = reader_ok(&repo.path, &["list"]);
    assert!(stdout_text(&out).contains(&snap.name));
}

/// A small file entry (`name`, one chunk `data`).
fn small_file(name: &[u8], data: &[u8]) -> snapfs::format::tree::Entry {
    file_entry(name, &[(honest_blob(data).0, data.len() as u32)])
}

/// The reference an index page keeps to `page`.
fn child_of(page: &snapfs::format::page::Page) -> snapfs::format::page::ChildRef {
    use snapfs::format::page::{ChildRef, encode_page};
    use snapfs::ids::TreeHash;
    ChildRef {
        first_name: page.first_name().expect("a page with entries").to_vec(),
        page: TreeHash(honest_blob(&encode_page(page)).0.0),
        entries: page.entries(),
        nodes: page.nodes(),
    }
}

/// A repository whose one snapshot's root directory is `root` (a page),
/// with `pages` and the data chunk `x` in its one pack.
fn crafted_repo(root: &snapfs::format::page::Page, pages: &[snapfs::format::page::Page]) -> Repo {
    use snapfs::format::pack::ChunkKind;
    use snapfs::format::page::encode_page;
    let mut rows = vec![honest_row(ChunkKind::Data, b"x")];
    for p in pages.iter().chain([root]) {
        rows.push(honest_row(ChunkKind::Page, &encode_page(p)));
    }
    let root_id = honest_blob(&encode_page(root)).0;
    let record = snapshot_record("crafted", "/", root_id, root.nodes(), &[0; 5]);
    rows.push(honest_row(ChunkKind::Snapshot, &record));
    let repo = Repo::new();
    plant_pack(&repo.path, &craft_pack(&rows).bytes);
    repo
}

/// Directories whose pages do not fit together (section 8.10): counts or a
/// first name that differ from what the parent page says, a level that is
/// not one below the parent's, names that go back across leaves, and a
/// directory entry whose node count is not its directory's. Each page
/// decodes alone; the reader refuses the directory, naming the page.
#[test]
fn format_reader_refuses_pages_that_do_not_fit_together() {
    use snapfs::format::page::{Page, encode_page};
    python();
    let leaf_a = Page::Leaf(vec![small_file(b"a", b"x"), small_file(b"b", b"x")]);
    let leaf_b = Page::Leaf(vec![small_file(b"c", b"x"), small_file(b"d", b"x")]);
    let b_hash = honest_blob(&encode_page(&leaf_b)).0.to_string();
    let index =
        |level: u8, children: Vec<snapfs::format::page::ChildRef>| Page::Index { level, children };

    // Sound, to show that what follows is refused for what it changes.
    let sound = crafted_repo(
        &index(1, vec![child_of(&leaf_a), child_of(&leaf_b)]),
        &[leaf_a.clone(), leaf_b.clone()],
    );
    reader_ok(&sound.path, &["verify"]);

    let mut wrong_count = child_of(&leaf_b);
    wrong_count.entries = 3;
    wrong_count.nodes = 3;
    let mut wrong_name = child_of(&leaf_b);
    wrong_name.first_name = b"bb".to_vec();
    let leaf_back = Page::Leaf(vec![small_file(b"aa", b"x")]);
    let mut sub_leaf = leaf_a.clone();
    if let Page::Leaf(e) = &mut sub_leaf {
        e.truncate(1);
    }
    let claims_too_much = Page::Leaf(vec![dir_entry(
        b"sub",
        honest_blob(&encode_page(&sub_leaf)).0,
        5,
    )]);
    let cases: Vec<(&str, Page, Vec<Page>, String)> = vec![
        (
            "counts",
            index(1, vec![child_of(&leaf_a), wrong_count]),
            vec![leaf_a.clone(), leaf_b.clone()],
            format!("page {b_hash}: its first name or counts differ"),
        ),
        (
            "first name",
            index(1, vec![child_of(&leaf_a), wrong_name]),
            vec![leaf_a.clone(), leaf_b.clone()],
            format!("page {b_hash}: its first name or counts differ"),
        ),
        (
            "level",
            index(2, vec![child_of(&leaf_a), child_of(&leaf_b)]),
            vec![leaf_a.clone(), leaf_b.clone()],
            "level 0 under a page of level 2".to_string(),
        ),
        (
            "order",
            index(1, vec![child_of(&leaf_a), child_of(&leaf_back)]),
            vec![leaf_a.clone(), leaf_back.clone()],
            "names are out of order across pages".to_string(),
        ),
        (
            "node count",
            claims_too_much,
            vec![sub_leaf.clone()],
            "claims 5 nodes beneath it, its pages hold 1".to_string(),
        ),
    ];
    for (what, root, pages, want) in cases {
        let repo = crafted_repo(&root, &pages);
        let out_dir = tempdir();
        let target = canonical(out_dir.path()).join("out");
        let err = reader_refuses(
            &repo.path,
            &["extract", "crafted", target.to_str().expect("UTF-8 path")],
        );
        assert!(
            err.contains("damaged repository") && err.contains(&want),
            "{what}: {err}"
        );
        let err = reader_refuses(&repo.path, &["verify"]);
        assert!(err.contains(&want), "{what}: {err}");
    }
}

/// The pack of section 13 of docs/FORMAT.md, written by snapfs's own
/// encoders: the data chunk of `hello\n`, the one page of a root directory
/// holding `a.txt` (that chunk) and `a.txt-link` (a symlink to it), and the
/// snapshot record.
fn worked_example_from_snapfs() -> Vec<u8> {
    use crate::util::hash_chunk;
    use snapfs::format::blob::Encoder;
    use snapfs::format::pack::{ChunkKind, PackWriter};
    use snapfs::format::page::{Page, encode_page};
    use snapfs::format::record::{Owners, SnapshotRow, encode_record};
    use snapfs::format::tree::{Body, ContentRef, Entry, FileTime, Kind, Meta};
    use snapfs::ids::{TreeHash, TreeId};

    let hello = b"hello\n";
    let data = hash_chunk(hello);
    let at = |secs, nanos| FileTime { secs, nanos };
    let file = Entry {
        name: b"a.txt".to_vec(),
        kind: Kind::File,
        meta: Meta {
            mode: 0o100644,
            size: 6,
            mtime: at(1_767_225_600, 500_000_000),
            ctime: at(1_767_225_601, 0),
            atime: at(1_767_225_600, 500_000_000),
            ino: 1234,
            nlink: 1,
            blocks: 8,
            ..Meta::default()
        },
        link_key: 0,
        xattrs: vec![],
        body: Body::File(Some(ContentRef::Chunk(data.id, 6))),
    };
    let link = Entry {
        name: b"a.txt-link".to_vec(),
        kind: Kind::Symlink,
        meta: Meta {
            mode: 0o120777,
            size: 5,
            mtime: at(1_767_225_600, 0),
            ctime: at(1_767_225_600, 0),
            atime: at(1_767_225_600, 0),
            ino: 1235,
            nlink: 1,
            ..Meta::default()
        },
        link_key: 0,
        xattrs: vec![],
        body: Body::Symlink(b"a.txt".to_vec()),
    };
    let page = encode_page(&Page::Leaf(vec![file, link]));
    let page_hash = hash_chunk(&page);
    let root = b"root".to_vec();
    let row = SnapshotRow {
        finished_ns: 1_767_225_603_000_000_000,
        host: "example".into(),
        sources: vec![PathBuf::from("/a.txt"), PathBuf::from("/a.txt-link")],
        owners: Owners {
            users: vec![(0, root.clone())],
            groups: vec![(0, root)],
        },
        ..SnapshotRow::new(
            "2026-01-01T00-00-02Z".into(),
            1_767_225_602_000_000_000,
            TreeId(0),
        )
    };
    let record = encode_record(&row, &TreeHash(page_hash.id.0), 2, &[1, 0, 6, 6, 0]);
    let record_hash = hash_chunk(&record);

    let dir = tempdir();
    let mut w = PackWriter::create(dir.path(), 0, &snapfs::format::keying::Keying::plain())
        .expect("pack writer");
    let mut enc = Encoder::new(3, &snapfs::format::keying::Keying::plain()).expect("zstd");
    for (kind, bytes, h) in [
        (ChunkKind::Data, &hello[..], &data),
        (ChunkKind::Page, &page[..], &page_hash),
        (ChunkKind::Snapshot, &record[..], &record_hash),
    ] {
        let blob = enc.encode(bytes, h).expect("encode");
        w.append(h.id, kind, bytes.len() as u32, &blob)
            .expect("append");
    }
    let sealed = w.seal().expect("seal");
    fs::read(&sealed.path).expect("read the pack")
}

/// The hex block of section 13 of docs/FORMAT.md, as bytes.
fn worked_example() -> Vec<u8> {
    let doc = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/FORMAT.md"))
        .expect("read docs/FORMAT.md");
    let block = doc
        .split("```hex\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/FORMAT.md has a ```hex block");
    block
        .lines()
        .flat_map(|l| l.split('#').next().unwrap_or("").split_whitespace())
        .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|_| panic!("{b:?} is not a hex byte")))
        .collect()
}

/// The worked example of docs/FORMAT.md is the pack snapfs writes for it,
/// with the name, chunk ids, kinds and contents the document gives; put in
/// a repository, the reader lists and extracts its snapshot, and snapfs
/// rebuilds a catalog from it and restores the same files.
#[test]
fn format_doc_worked_example_is_a_pack_snapfs_writes_and_reads() {
    use snapfs::format::blob::decode_blob;
    use snapfs::format::pack::{ChunkKind, decode_pack};
    use snapfs::format::page::{Page, build_dir, decode_page};
    use snapfs::format::record::{Record, decode_record};
    use snapfs::ids::Hash;
    use std::os::unix::fs::MetadataExt;

    let pack = worked_example();
    assert_eq!(
        pack,
        worked_example_from_snapfs(),
        "section 13 is not the pack snapfs writes"
    );
    assert_eq!(pack.len(), 531);
    let name = "cea3ff229dabb9f2bfde37a126b41ab0072a0aeec761bf31f21f65109cf26a5a";
    assert_eq!(Hash::of(&pack).to_hex(), name);
    let entries = decode_pack(&pack, &snapfs::format::keying::Keying::plain())
        .expect("snapfs decodes the example");
    let got: Vec<(String, ChunkKind, Vec<u8>)> = entries
        .iter()
        .map(|e| {
            let blob = &pack[e.offset as usize..][..e.stored_len as usize];
            let raw = decode_blob(
                &snapfs::format::keying::Keying::plain(),
                blob,
                &e.id,
                e.raw_len as usize,
            )
            .expect("blob decodes");
            (e.id.to_string(), e.kind, raw)
        })
        .collect();
    let ids: Vec<(&str, ChunkKind)> = got.iter().map(|g| (g.0.as_str(), g.1)).collect();
    assert_eq!(
        ids,
        vec![
            (
                "4180cbd7a2b9297abf1f04eb033f30624f1f17186eab61e01aaaf1896a20de96",
                ChunkKind::Data
            ),
            (
                "77d5b1cf7f1bc22b8c1a9decd50e8380edeaaeda3860c0824c1ba3a27c370a97",
                ChunkKind::Page
            ),
            (
                "c3c7f8ff47ca2df0e5f946e43f69bff599bdf36e930911a08a5d22f9bd0dd055",
                ChunkKind::Snapshot
            ),
        ]
    );
    assert_eq!(got[0].2, b"hello\n");
    let Page::Leaf(page) = decode_page(&got[1].2).expect("the page decodes") else {
        panic!("the example's page is a leaf")
    };
    let names: Vec<&[u8]> = page.iter().map(|e| e.name.as_slice()).collect();
    assert_eq!(names, vec![&b"a.txt"[..], b"a.txt-link"]);
    let Record::Snapshot { row, root } =
        decode_record(&got[2].2, Hash::default()).expect("the record decodes")
    else {
        panic!("the example's record is a snapshot's")
    };
    assert_eq!(root.to_string(), got[1].0);
    assert_eq!(row.owners.user(0), Some(&b"root"[..]));

    // The empty directory of section 8.1.
    let empty = build_dir(Vec::new(), &snapfs::format::keying::Keying::plain());
    assert_eq!(empty.root().bytes, [2, 0, 0, 0, 0]);
    assert_eq!(
        empty.root().hash.to_string(),
        "608c66fbb54a1b747c237a474cc06f51bc6471629cfdb70b076678d3478fe95e"
    );

    // A repository of that one pack, as the reader and snapfs see it.
    let repo = Repo::new();
    plant_pack(&repo.path, &pack);
    let out = reader_ok(&repo.path, &["verify"]);
    assert!(
        stdout_text(&out).contains("1 packs, 3 chunks, 531 bytes, 1 snapshots: ok"),
        "{}",
        describe("verify", &out)
    );
    assert_pages_as_documented(&repo);
    rebuild_catalog_ok(&repo);
    reader_ok(&repo.path, &["check-catalog"]);
    let out_dir = tempdir();
    let base = canonical(out_dir.path());
    let by_reader = base.join("reader");
    let by_snapfs = base.join("snapfs");
    extract(&repo, "2026-01-01T00-00-02Z", &by_reader);
    repo.restore("2026-01-01T00-00-02Z", &by_snapfs);
    for t in [&by_reader, &by_snapfs] {
        let f = t.join("a.txt");
        assert_eq!(fs::read(&f).expect("read a.txt"), b"hello\n");
        let m = fs::metadata(&f).expect("stat a.txt");
        assert_eq!(
            (m.mode() & 0o7777, m.mtime(), m.mtime_nsec()),
            (0o644, 1_767_225_600, 500_000_000)
        );
        let l = t.join("a.txt-link");
        assert_eq!(fs::read_link(&l).expect("readlink"), Path::new("a.txt"));
        let m = fs::symlink_metadata(&l).expect("lstat link");
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_767_225_600, 0));
    }
}
