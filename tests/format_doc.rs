//! docs/FORMAT.md is complete enough to recover files without snapfs:
//! `tests/format_reader.py`, written from the document alone, lists the
//! snapshots of repositories snapfs made, extracts them, verifies every
//! chunk and cross-checks the catalog against the packs; it refuses damaged
//! packs and formats it does not know; and the document's worked example is
//! a pack that snapfs's own decoder reads as the document says.
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
         the blake3 and zstandard modules, or set SNAPFS_FORMAT_PYTHON to a python3 that has them",
        path.display()
    );
    let out = Command::new(&path)
        .args(["-c", "import blake3, zstandard"])
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
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/format_reader.py");
    let mut cmd = Command::new(python());
    cmd.arg(&script).arg(repo).args(args).stdin(Stdio::null());
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

/// Every kind of entry (the shared fixture: nested and empty directories,
/// empty, multi-chunk and 1 GiB sparse files, hard links across
/// directories, symlinks with odd targets, non-UTF-8 names and names with
/// newlines, devices, a fifo, xattrs and ACLs, foreign owners, odd modes,
/// nanosecond mtimes) in two snapshots, the second after changes, and a
/// third snapshot forgotten, then collected: the reader gets the two back
/// from the packs, bit for bit with their metadata, agrees with snapfs on
/// the list of snapshots (the forgotten one is not in it), and finds the
/// catalog to be exactly what the packs say.
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
    let out = reader_ok(&repo.path, &["list", "--json"]);
    let listed = match parse_json("format_reader.py list --json", &out.stdout) {
        Value::Array(items) => items,
        other => panic!("the reader's list is not an array: {other}"),
    };
    let ids_names = |items: &[Value]| -> Vec<(String, String)> {
        items
            .iter()
            .map(|s| {
                (
                    json_str(s, "id").to_string(),
                    json_str(s, "name").to_string(),
                )
            })
            .collect()
    };
    assert_eq!(ids_names(&listed), ids_names(&repo.snapshots()));
    assert_eq!(
        ids_names(&listed),
        vec![
            (first.id.clone(), first.name.clone()),
            (second.id.clone(), second.name.clone())
        ]
    );
    assert_eq!(listed[1]["tags"], serde_json::json!(["after"]));
    let err = reader_refuses_usage(&repo.path, &["extract", &third.id, "/nonexistent"]);
    assert!(err.contains("no snapshot named"), "{err}");

    // Every row of the catalog is what the document says it is derived from.
    reader_ok(&repo.path, &["check-catalog"]);
    let verified = reader_ok(&repo.path, &["verify"]);
    assert!(
        String::from_utf8_lossy(&verified.stdout).contains("2 snapshots: ok"),
        "{}",
        describe("verify", &verified)
    );

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
    let out = reader_ok(&repo.path, &["list", "--json"]);
    let listed = parse_json("format_reader.py list --json", &out.stdout);
    assert_eq!(
        ids_names(listed.as_array().expect("an array")),
        ids_names(&repo.snapshots())
    );
}

/// The largest data chunk of the repository: (pack file, its name, the
/// blob's offset and stored length, the chunk id in hex).
fn largest_data_blob(repo: &Repo) -> (PathBuf, u64, u32, String) {
    use snapfs::format::pack::{ChunkKind, decode_pack};
    let mut best: Option<(PathBuf, u64, u32, u32, String)> = None;
    for p in repo.pack_files() {
        let bytes = fs::read(&p).expect("read pack");
        for e in decode_pack(&bytes).expect("snapfs decodes its own pack") {
            if e.kind == ChunkKind::Data && best.as_ref().is_none_or(|b| e.raw_len > b.3) {
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
    let (p, offset, stored, _, id) = best.expect("a data chunk");
    (p, offset, stored, id)
}

fn pack_name(p: &Path) -> String {
    p.file_stem()
        .and_then(OsStr::to_str)
        .expect("pack file name")
        .to_string()
}

/// A flipped byte in a chunk's frame, in a pack's table or in its format
/// byte, and a config of a later format: the reader stops with exit status
/// 1 and a message naming what is damaged, and writes no file from bytes
/// that did not verify; with the byte flipped back it reads again.
#[test]
fn format_reader_refuses_damaged_packs_and_unknown_formats() {
    let src_dir = tempdir();
    let src = canonical(src_dir.path()).join("src");
    mkdir(&src);
    write_random_file(&src.join("big.bin"), 11, 6 * MIB);
    write_file(&src.join("small.txt"), b"small\n");
    let repo = Repo::new();
    let snap = repo.ingest(&[], &[&src]);
    reader_ok(&repo.path, &["verify"]);

    // A byte inside the last frame of the biggest data chunk.
    let (pack, offset, stored, id) = largest_data_blob(&repo);
    let at = offset + u64::from(stored) - 100;
    flip_byte(&pack, at);
    let out_dir = tempdir();
    let target = canonical(out_dir.path()).join("out");
    let err = reader_refuses(
        &repo.path,
        &["extract", &snap.name, target.to_str().expect("UTF-8 path")],
    );
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

    // A pack of an unknown format (the byte reserved for encrypted packs).
    flip_byte(&pack, 8);
    let err = reader_refuses(&repo.path, &["list"]);
    assert!(
        err.contains(&pack_name(&pack)) && err.contains("unknown pack format"),
        "{err}"
    );
    flip_byte(&pack, 8);

    // A repository of a later format.
    let config = repo.path.join("config");
    let text = fs::read_to_string(&config).expect("read config");
    write_file(&config, text.replace("format = 2", "format = 3").as_bytes());
    let err = reader_refuses(&repo.path, &["list"]);
    assert!(err.contains("repository format '2'"), "{err}");
    write_file(&config, text.as_bytes());

    let out = reader_ok(&repo.path, &["list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&snap.name));
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

/// The worked example of docs/FORMAT.md is a valid pack as snapfs reads it:
/// the name, chunk ids, kinds and contents the document gives; and the
/// reader, put on it in a repository, finds the same.
#[test]
fn format_doc_worked_example_is_a_pack_snapfs_reads() {
    use snapfs::format::blob::decode_blob;
    use snapfs::format::pack::{ChunkKind, decode_pack};
    use snapfs::format::page::{Page, decode_page};
    use snapfs::ids::Hash;

    let pack = worked_example();
    assert_eq!(pack.len(), 228);
    let name = "c9d392a871eb7e5cbbf65a514198d6c0982a4778247847453adaf342df8b896e";
    assert_eq!(Hash::of(&pack).to_hex(), name);
    let entries = decode_pack(&pack).expect("snapfs decodes the example");
    let got: Vec<(String, ChunkKind, Vec<u8>)> = entries
        .iter()
        .map(|e| {
            let blob = &pack[e.offset as usize..][..e.stored_len as usize];
            let raw = decode_blob(blob, &e.id, e.raw_len as usize).expect("blob decodes");
            (e.id.to_string(), e.kind, raw)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "4180cbd7a2b9297abf1f04eb033f30624f1f17186eab61e01aaaf1896a20de96".to_string(),
                ChunkKind::Data,
                b"hello\n".to_vec()
            ),
            (
                "572532c8a3cc2e801c6da3fcb0334ef09f011994052085255b3e6d76ae623f29".to_string(),
                ChunkKind::Page,
                vec![1, 0]
            ),
        ]
    );
    assert_eq!(
        decode_page(&got[1].2).expect("an empty directory"),
        Page::Leaf(Vec::new())
    );

    let repo = Repo::new();
    let dir = repo.path.join("packs").join(&name[..2]);
    mkdir(&dir);
    write_file(&dir.join(format!("{name}.pack")), &pack);
    let out = reader_ok(&repo.path, &["verify"]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("1 packs, 2 chunks, 228 bytes, 0 snapshots: ok"),
        "{}",
        describe("verify", &out)
    );
}
