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
