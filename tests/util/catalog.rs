//! The catalog from outside: read and edited with python3's sqlite3, the
//! way an administrator (or an attacker) would, never through snapfs.
//!
//! Arguments travel as hex on the command line and arrive as byte strings
//! (`argv` in edit scripts, `?` parameters in queries), so a name holding
//! a NUL or a non-UTF-8 byte passes unharmed.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use super::*;

fn hex_args(cmd: &mut Command, args: &[&[u8]]) {
    for a in args {
        cmd.arg(a.iter().map(|b| format!("{b:02x}")).collect::<String>());
    }
}

/// Runs python3 `script` against the repository's catalog, with `args`
/// available as the byte strings `argv`; commits what it changed.
pub(crate) fn edit_catalog(repo: &Repo, script: &str, args: &[&[u8]]) {
    require_tool("python3");
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(format!(
        "import sqlite3, sys\n\
         db = sqlite3.connect(sys.argv[1])\n\
         argv = [bytes.fromhex(a) for a in sys.argv[2:]]\n\
         {script}\n\
         db.commit()\n\
         db.close()\n"
    ));
    cmd.arg(repo.path.join("catalog.db"));
    hex_args(&mut cmd, args);
    let out = output_of(&mut cmd);
    assert!(out.status.success(), "{}", describe("edit catalog", &out));
}

/// The rows of `sql` against the repository's catalog (opened read-only),
/// with `args` as blob parameters; each field as text, blobs in lowercase
/// hex.
pub(crate) fn query_catalog(repo: &Repo, sql: &str, args: &[&[u8]]) -> Vec<Vec<String>> {
    require_tool("python3");
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(
            "import sqlite3, sys\n\
             db = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True)\n\
             args = [bytes.fromhex(a) for a in sys.argv[3:]]\n\
             for row in db.execute(sys.argv[2], args):\n\
             \x20   print('\\t'.join(v.hex() if isinstance(v, bytes) else str(v) for v in row))\n",
        )
        .arg(repo.path.join("catalog.db"))
        .arg(sql);
    hex_args(&mut cmd, args);
    let out = output_of(&mut cmd);
    assert!(
        out.status.success(),
        "{}",
        describe(&format!("query catalog: {sql}"), &out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// Where the one chunk that `sql_for_chunk` (selecting chunk ids) finds is
/// stored, per the catalog: (pack file, offset, stored length).
pub(crate) fn chunk_place(repo: &Repo, sql_for_chunk: &str, args: &[&[u8]]) -> (PathBuf, u64, u64) {
    let rows = query_catalog(
        repo,
        &format!(
            "SELECT DISTINCT p.name, c.offset, c.stored_len \
             FROM chunks c JOIN packs p ON p.id = c.pack WHERE c.id IN ({sql_for_chunk})"
        ),
        args,
    );
    assert_eq!(
        rows.len(),
        1,
        "{sql_for_chunk} should find one chunk: {rows:?}"
    );
    let (hex, offset, len) = (&rows[0][0], &rows[0][1], &rows[0][2]);
    let pack = repo
        .path
        .join("packs")
        .join(&hex[..2])
        .join(format!("{hex}.pack"));
    assert!(pack.is_file(), "{} is not a pack file", pack.display());
    (
        pack,
        offset.parse().expect("offset"),
        len.parse().expect("stored length"),
    )
}

/// Removes catalog.db and its WAL and shared-memory files, as a lost disk
/// or a careless administrator would.
pub(crate) fn delete_catalog(repo: &Repo) {
    for name in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
        let p = repo.path.join(name);
        if p.exists() {
            fs::remove_file(&p).unwrap_or_else(|e| panic!("rm {}: {e}", p.display()));
        }
    }
    assert!(!repo.path.join("catalog.db").exists());
}

/// Bytes from lowercase hex (as `query_catalog` gives blobs).
pub(crate) fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Every leaf page row of the catalog: (row id, hash, entries), decoded
/// from the row's bytes with the format's own decoder.
fn leaf_pages(repo: &Repo) -> Vec<(i64, Vec<u8>, Vec<snapfs::format::tree::Entry>)> {
    use snapfs::format::page::{Page, decode_page};
    query_catalog(
        repo,
        "SELECT id, hash, body FROM pages WHERE level = 0",
        &[],
    )
    .into_iter()
    .filter_map(|r| match decode_page(&unhex(&r[2])) {
        Ok(Page::Leaf(entries)) => Some((r[0].parse().expect("id"), unhex(&r[1]), entries)),
        _ => None,
    })
    .collect()
}

/// The first entry called `name` in any directory page of the catalog.
pub(crate) fn catalog_entry(repo: &Repo, name: &[u8]) -> snapfs::format::tree::Entry {
    leaf_pages(repo)
        .into_iter()
        .flat_map(|(_, _, e)| e)
        .find(|e| e.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no entry {:?} in the catalog",
                String::from_utf8_lossy(name)
            )
        })
}

/// The hash of the root page of the directory called `name` (hex).
pub(crate) fn dir_page_hash(repo: &Repo, name: &[u8]) -> Vec<u8> {
    match catalog_entry(repo, name).body {
        snapfs::format::tree::Body::Dir { tree, .. } => tree.0.0.to_vec(),
        _ => panic!("{:?} is not a directory", String::from_utf8_lossy(name)),
    }
}

/// The id of the first chunk of the file called `name`.
pub(crate) fn first_chunk_of(repo: &Repo, name: &[u8]) -> Vec<u8> {
    use snapfs::format::tree::{Body, ContentRef};
    match catalog_entry(repo, name).body {
        Body::File(Some(ContentRef::Chunk(id, _))) => id.0.0.to_vec(),
        Body::File(Some(ContentRef::List(h))) => {
            let rows = query_catalog(
                repo,
                "SELECT substr(chunks, 1, 32) FROM contents WHERE hash = ?",
                &[&h.0.0],
            );
            unhex(&rows[0][0])
        }
        _ => panic!(
            "{:?} is not a file with data",
            String::from_utf8_lossy(name)
        ),
    }
}

/// Rewrites, as an attacker who knows the format would, every directory
/// page of the catalog holding an entry called `name`: `f` changes the
/// entry (given the hash its page row claims), the page is encoded again
/// without any check and stored over the row's bytes. Returns how many
/// pages were changed (at least one, asserted).
pub(crate) fn tamper_entry(
    repo: &Repo,
    name: &[u8],
    f: impl Fn(&mut snapfs::format::tree::Entry, &[u8]),
) -> usize {
    use snapfs::format::page::{Page, encode_page};
    let mut changed = 0;
    for (id, hash, mut entries) in leaf_pages(repo) {
        let mut hit = false;
        for e in entries.iter_mut().filter(|e| e.name == name) {
            f(e, &hash);
            hit = true;
        }
        if hit {
            let bytes = encode_page(&Page::Leaf(entries));
            edit_catalog(
                repo,
                "n = db.execute('UPDATE pages SET body = ? WHERE id = ?', (argv[0], int(argv[1].decode()))).rowcount\n\
                 assert n == 1, n",
                &[&bytes, id.to_string().as_bytes()],
            );
            changed += 1;
        }
    }
    assert!(
        changed >= 1,
        "no entry {:?} to tamper with",
        String::from_utf8_lossy(name)
    );
    changed
}

/// Lowercase hex of bytes (as `query_catalog` gives blobs).
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every page row's id and bytes, to put back with [`put_page_rows`].
pub(crate) fn page_rows(repo: &Repo) -> Vec<(String, Vec<u8>)> {
    query_catalog(repo, "SELECT id, body FROM pages", &[])
        .into_iter()
        .map(|r| (r[0].clone(), unhex(&r[1])))
        .collect()
}

/// Puts page rows' bytes back as [`page_rows`] read them.
pub(crate) fn put_page_rows(repo: &Repo, rows: &[(String, Vec<u8>)]) {
    for (id, body) in rows {
        edit_catalog(
            repo,
            "db.execute('UPDATE pages SET body = ? WHERE id = ?', (argv[0], int(argv[1].decode())))",
            &[body, id.as_bytes()],
        );
    }
}
