//! Attacks on repository format 2 (directory pages, chunk lists as chunks,
//! owner names, upgrade): crafted packs, a tampered catalog, bad timing.
//! One test per finding, each failing on the code before its fix.

use std::os::unix::fs::{DirEntryExt, MetadataExt};

use snapfs::format::pack::ChunkKind;
use snapfs::format::tree::Entry;

use crate::util::*;

/// A crafted pack planted under `repo` and imported by rebuild-catalog
/// (which must end within a minute): `pages` (leaves, stored as pages),
/// the data chunk `x` and snapshot records of `roots` (name, root page,
/// nodes).
fn plant(repo: &Repo, pages: &[Vec<u8>], roots: &[(&str, snapfs::ids::ChunkId, u64)]) {
    let mut rows = vec![honest_row(ChunkKind::Data, b"x")];
    for p in pages {
        rows.push(honest_row(ChunkKind::Page, p));
    }
    for (name, root, nodes) in roots {
        let record = snapshot_record(name, "/", *root, *nodes, &[0; 5]);
        rows.push(honest_row(ChunkKind::Snapshot, &record));
    }
    plant_pack(&repo.path, &craft_pack(&rows).bytes);
    let out = run_within(
        repo.cmd().arg("rebuild-catalog"),
        std::time::Duration::from_secs(60),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        describe("rebuild-catalog", &out)
    );
}

/// One directory shared 256 times per level, five levels deep: six small
/// pages and a snapshot "huge" of more than 2^40 nodes (with a hard link
/// group at the bottom when `linked`), and a snapshot "next" of the
/// lowest shared level.
fn plant_shared_directories(repo: &Repo, linked: bool) -> u64 {
    let x = honest_blob(b"x").0;
    let mut f = file_entry(b"f", &[(x, 1)]);
    if linked {
        f.link_key = 7;
        f.meta.nlink = 2;
    }
    let mut pages = vec![encode_tree(&[f])];
    let mut below = honest_blob(&pages[0]).0;
    let mut nodes = 1u64;
    for _ in 0..5 {
        let entries: Vec<Entry> = (0..256)
            .map(|i| dir_entry(format!("d{i:03}").as_bytes(), below, nodes))
            .collect();
        let page = encode_tree(&entries);
        below = honest_blob(&page).0;
        nodes = 256 * (nodes + 1);
        pages.push(page);
    }
    assert!(nodes > 1 << 40, "{nodes}");
    let small = honest_blob(&pages[1]).0;
    plant(
        repo,
        &pages,
        &[("huge", below, nodes), ("next", small, 512)],
    );
    nodes
}

/// Broke: rebuild-catalog (and a copy's receiving side) counted hard link
/// groups by visiting every occurrence of every directory, so six pages
/// of directories shared 256 times per level (2^41 nodes) kept it busy
/// for days.
#[test]
fn attack_format2_shared_directories_import_in_time() {
    for linked in [false, true] {
        let repo = Repo::new();
        plant_shared_directories(&repo, linked);
        assert_eq!(repo.snapshots().len(), 2);
    }
}

/// Broke: one directory shared 256 times per level, five levels deep (six
/// pages in all), makes a snapshot of more than 2^40 nodes; the mount
/// numbered the entries past 2^40 into the next snapshot's inode numbers
/// (`snapshot << 40 | position` with a position of more than 40 bits), so
/// an entry of one snapshot had the number of another snapshot's root.
#[test]
fn attack_format2_shared_directories_past_40_bits_do_not_take_other_inodes() {
    let repo = Repo::new();
    let nodes = plant_shared_directories(&repo, false);
    let mount = Mount::new(&repo, &[]);
    let root = ino(&mount.path.join("huge")).expect("stat huge");
    let next = ino(&mount.path.join("next")).expect("stat next");
    assert_ne!(root >> 40, next >> 40);
    // The root's entries lie `nodes / 256` positions apart: the later ones
    // past the 40 bits an inode number keeps for a position, where no
    // number is theirs alone.
    let span = nodes / 256;
    let far = (0..256u64)
        .find(|i| 1 + i * span >= 1 << 40)
        .expect("an entry past 2^40");
    for i in [0, 1, far - 1, far, far + 1, 255] {
        let p = mount.path.join("huge").join(format!("d{i:03}"));
        match ino(&p) {
            Ok(n) => assert!(
                i < far && n == root + 1 + i * span,
                "{} (position {}) has inode number {n:#x} (snapshot root {root:#x})",
                p.display(),
                1 + i * span
            ),
            Err(e) => assert!(i >= far, "{}: {e}", p.display()),
        }
    }
    mount.finish();
}

/// The inode number of `p` in the mount, or the error of its `lstat`.
fn ino(p: &std::path::Path) -> std::io::Result<u64> {
    std::fs::symlink_metadata(p).map(|m| m.ino())
}

/// Broke: a tampered catalog row whose node count (and the entry naming
/// it) says a directory holds fewer nodes than its page does made the
/// directory's entries take the inode numbers of the entries after it: the
/// mount showed `d/a/f2` and `d/b` as one inode, and served one's bytes
/// for the other.
#[test]
fn attack_format2_directory_row_claiming_fewer_nodes_than_its_page_is_refused() {
    let src_dir = tempdir();
    let src = canonical(src_dir.path()).join("d");
    mkdir(&src.join("a"));
    for f in ["f1", "f2", "f3"] {
        write_file(&src.join("a").join(f), f.as_bytes());
    }
    write_file(&src.join("b"), b"the file b\n");
    let repo = Repo::new();
    repo.ingest(&["--name", "s"], &[&src]);
    let a_page = dir_page_hash(&repo, b"a");
    tamper_entry(&repo, b"a", |e, _| {
        if let snapfs::format::tree::Body::Dir { nodes, .. } = &mut e.body {
            *nodes = 1;
        }
    });
    edit_catalog(
        &repo,
        "n = db.execute('UPDATE pages SET nodes = 1 WHERE hash = ?', (argv[0],)).rowcount\n\
         assert n == 1, n",
        &[&a_page],
    );
    let mount = Mount::new(&repo, &[]);
    let d = mount.source_in("s", &src);
    let b = ino(&d.join("b")).expect("stat b");
    for f in ["f1", "f2", "f3"] {
        if let Ok(n) = ino(&d.join("a").join(f)) {
            assert_ne!(n, b, "a/{f} and b have one inode number");
        }
    }
    assert_eq!(std::fs::read(d.join("b")).expect("read b"), b"the file b\n");
    mount.finish();
}

/// Broke: a tampered leaf page row holding one entry more than its index
/// page says gave that entry the inode number of the next leaf's first
/// entry (positions after a leaf come from the index page's counts).
#[test]
fn attack_format2_leaf_row_with_more_entries_than_its_index_says_is_refused() {
    use snapfs::format::page::{Page, decode_page, encode_page};
    let src_dir = tempdir();
    let src = canonical(src_dir.path()).join("d");
    mkdir(&src);
    for i in 0..600 {
        write_file(&src.join(format!("f{i:03}")), format!("{i}\n").as_bytes());
    }
    let repo = Repo::new();
    repo.ingest(&["--name", "s"], &[&src]);
    // The leaf holding f000, and one entry more in it, sorting after its
    // last and before the next leaf's first.
    let rows = query_catalog(&repo, "SELECT id, body FROM pages WHERE level = 0", &[]);
    let (id, mut entries) = rows
        .iter()
        .find_map(|r| match decode_page(&unhex(&r[1])) {
            Ok(Page::Leaf(e)) if e.first().is_some_and(|e| e.name == b"f000") => {
                Some((r[0].clone(), e))
            }
            _ => None,
        })
        .expect("the leaf of f000");
    assert!(entries.len() < 600, "one leaf holds the whole directory");
    let mut extra = entries.last().expect("entries").clone();
    let last = String::from_utf8(extra.name.clone()).expect("utf-8");
    extra.name.push(b'~');
    entries.push(extra);
    let next: u32 = last[1..].parse::<u32>().expect("number") + 1;
    edit_catalog(
        &repo,
        "n = db.execute('UPDATE pages SET body = ? WHERE id = ?', (argv[0], int(argv[1].decode()))).rowcount\n\
         assert n == 1, n",
        &[&encode_page(&Page::Leaf(entries)), id.as_bytes()],
    );
    let mount = Mount::new(&repo, &[]);
    let d = mount.source_in("s", &src);
    let tilde = ino(&d.join(format!("{last}~")));
    let after = ino(&d.join(format!("f{next:03}")));
    if let (Ok(a), Ok(b)) = (&tilde, &after) {
        assert_ne!(a, b, "{last}~ and f{next:03} have one inode number");
    }
    // Listing ends with an error or lists every name once, with unique numbers.
    if let Ok(rd) = std::fs::read_dir(&d) {
        let mut seen = std::collections::BTreeMap::new();
        for e in rd.flatten() {
            let n = e.ino();
            if let Some(other) = seen.insert(n, e.file_name()) {
                panic!("{other:?} and {:?} have one inode number", e.file_name());
            }
        }
    }
    mount.finish();
}

/// Broke: the mount decides once whether to serve extended attributes
/// from every snapshot's pages; one snapshot with a damaged directory row
/// made that decision fail at every request, so every getxattr of every
/// snapshot answered EIO, and the kernel's ACL check with it: another user
/// could read no file of the mount, not even of an undamaged snapshot.
#[test]
fn attack_format2_one_damaged_snapshot_does_not_break_xattrs_of_the_mount() {
    let (_src_dir, root) = open_source_dir();
    mkdir(&root.join("damaged"));
    write_file(&root.join("damaged/f"), b"in the damaged directory\n");
    write_file(&root.join("public"), b"anyone may read this\n");
    chmod(&root.join("public"), 0o644);
    let repo = Repo::new();
    repo.ingest(&["--name", "first"], &[&root]);
    // The second snapshot shares nothing with the first's damaged row.
    let (_other_dir, other) = open_source_dir();
    mkdir(&other.join("kept"));
    write_file(&other.join("kept/g"), b"in an undamaged snapshot\n");
    chmod(&other.join("kept/g"), 0o644);
    repo.ingest(&["--name", "second"], &[&other]);
    let page = dir_page_hash(&repo, b"damaged");
    edit_catalog(
        &repo,
        "n = db.execute(\"UPDATE pages SET body = x'ff' WHERE hash = ?\", (argv[0],)).rowcount\n\
         assert n == 1, n",
        &[&page],
    );

    let mnt_dir = tempdir();
    chmod(mnt_dir.path(), 0o755);
    let mnt = canonical(mnt_dir.path()).join("mnt");
    mkdir(&mnt);
    let mount = Mount::at(&repo, &["--allow-other"], &mnt);
    for (path, want) in [
        (
            mount.source_in("second", &other).join("kept/g"),
            &b"in an undamaged snapshot\n"[..],
        ),
        (
            mount.source_in("first", &root).join("public"),
            &b"anyone may read this\n"[..],
        ),
    ] {
        let out = as_nobody(&[std::ffi::OsStr::new("cat"), path.as_os_str()]);
        assert!(
            out.status.success() && out.stdout == want,
            "{}\n--- mount stderr ---\n{}",
            describe(&format!("setpriv ... cat {}", path.display()), &out),
            mount.stderr_text()
        );
    }
    // The damaged directory itself is an error, as before.
    let listed = std::fs::read_dir(mount.source_in("first", &root).join("damaged"))
        .and_then(|rd| rd.collect::<std::io::Result<Vec<_>>>());
    assert!(listed.is_err(), "{listed:?}");
    mount.finish();
}

/// Broke: rebuild-catalog took a directory page the packs no longer
/// yield from the catalog it replaces and said so for the first snapshot
/// holding it; a later snapshot whose directory (changed elsewhere, so
/// with another root page) shares that page got it from the new catalog
/// and was not told, although its directory shows the same borrowed rows.
#[test]
fn attack_format2_page_taken_from_the_old_catalog_is_reported_for_every_snapshot_sharing_it() {
    use snapfs::format::page::{Page, decode_page};
    let (_src_dir, root) = open_source_dir();
    let big = root.join("big");
    mkdir(&big);
    for i in 0..400 {
        write_file(&big.join(format!("f{i:03}")), format!("{i}\n").as_bytes());
    }
    let repo = Repo::new();
    repo.ingest(&["--name", "s1"], &[&root]);
    let leaf_of_f000 = || {
        query_catalog(&repo, "SELECT hash, body FROM pages WHERE level = 0", &[])
            .iter()
            .find_map(|r| match decode_page(&unhex(&r[1])) {
                Ok(Page::Leaf(e)) if e.first().is_some_and(|e| e.name == b"f000") => {
                    assert!(e.len() < 400, "one leaf holds the whole directory");
                    Some(unhex(&r[0]))
                }
                _ => None,
            })
            .expect("the leaf of f000")
    };
    let shared = leaf_of_f000();
    write_file(&big.join("f399"), b"changed, and longer than before\n");
    repo.ingest(&["--name", "s2"], &[&root]);
    assert_eq!(leaf_of_f000(), shared, "the leaf is not shared");
    damage_chunk(&repo, "SELECT ?", &[&shared]);

    let (out, json) = rebuild_catalog(&repo, &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("rebuild-catalog", &out)
    );
    let path = big.display().to_string();
    let reporting: std::collections::BTreeSet<String> = json["damaged_snapshots"]
        .as_array()
        .expect("damaged_snapshots")
        .iter()
        .filter(|d| json_str_list(d, "reused_dirs").contains(&path))
        .map(|d| json_str(d, "snapshot").to_string())
        .collect();
    assert_eq!(reporting, string_set(&["s1", "s2"]), "{json}");
}
