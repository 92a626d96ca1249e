//! The history of one path across all snapshots: which entry (if any) each
//! snapshot has there, the distinct versions and their names, and the union
//! of a directory's names. Used by `snapfs log` and the mount's `history/`
//! view; also the `@GMT-...` names under which a `--names gmt` mount offers
//! the snapshots as Windows "Previous Versions".
//!
//! It is an indexed descent, not a walk: one seek per path component per
//! *distinct* tree, so snapshots that share a directory share the work.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use crate::error::Result;
use crate::format::names::NAME_MAX;
use crate::format::record::SnapshotRow;
use crate::format::tree::Kind;
use crate::ids::TreeId;
use crate::repo::catalog::{Catalog, Node};
use crate::repo::paths::{components, lossy};

/// The entry at a path in one snapshot, with its depth-first position.
#[derive(Clone, Debug)]
pub struct Found {
    pub node: Node,
    pub pos: u64,
}

/// Where one directory path lies in each snapshot: its tree and its
/// depth-first position; None where the path is absent or not a directory.
pub type DirSpots = Vec<Option<(TreeId, u64)>>;

/// Where the snapshot roots lie.
pub fn root_spots(snaps: &[SnapshotRow]) -> DirSpots {
    snaps.iter().map(|s| Some((s.root_tree, 0))).collect()
}

/// One step down: for each snapshot, the entry `name` in the directory at
/// `dirs`, looked up once per distinct tree.
pub fn entries_in(
    cat: &Catalog,
    dirs: &[Option<(TreeId, u64)>],
    name: &[u8],
) -> Result<Vec<Option<Found>>> {
    let mut memo: HashMap<TreeId, Option<Node>> = HashMap::new();
    let mut found: Vec<Option<Found>> = vec![None; dirs.len()];
    for (i, slot) in dirs.iter().enumerate() {
        let Some((tree, pos)) = *slot else { continue };
        let node = match memo.get(&tree) {
            Some(n) => n.clone(),
            None => {
                let n = cat.entry(tree, name)?;
                memo.insert(tree, n.clone());
                n
            }
        };
        found[i] = node.map(|n| Found {
            pos: pos + 1 + n.node_offset,
            node: n,
        });
    }
    Ok(found)
}

/// The directories among what a step found, for the next step.
pub fn subdirs(found: &[Option<Found>]) -> DirSpots {
    found
        .iter()
        .map(|f| {
            let f = f.as_ref()?;
            let tree = f.node.subtree.filter(|_| f.node.kind == Kind::Dir)?;
            Some((tree, f.pos))
        })
        .collect()
}

/// For each snapshot (same order), the entry at `path`; None where absent.
/// The empty path (the root) has no entry: every result is None.
pub fn entries_at(cat: &Catalog, snaps: &[SnapshotRow], path: &Path) -> Result<Vec<Option<Found>>> {
    let parts = components(path);
    let mut dirs = root_spots(snaps);
    let mut found: Vec<Option<Found>> = vec![None; snaps.len()];
    for (depth, name) in parts.iter().enumerate() {
        found = entries_in(cat, &dirs, name)?;
        if depth + 1 < parts.len() {
            dirs = subdirs(&found);
        }
    }
    Ok(found)
}

/// What distinguishes two versions of a non-directory entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum VersionKey {
    Content(Option<crate::format::tree::ContentRef>),
    Target(Option<Vec<u8>>),
    Special(u8, u64),
}

pub fn version_key(n: &Node) -> VersionKey {
    match n.kind {
        Kind::File => VersionKey::Content(n.content),
        Kind::Symlink => VersionKey::Target(n.target.clone()),
        k => VersionKey::Special(k as u8, n.meta.rdev),
    }
}

/// One distinct version of a path, in order of first appearance.
#[derive(Clone, Debug)]
pub struct Version {
    /// Index (into the snapshot slice) of the first snapshot holding it.
    pub first: usize,
    /// Every snapshot holding it.
    pub snapshots: Vec<usize>,
    pub found: Found,
}

/// Distinct non-directory versions at `path`; `snaps` oldest first.
pub fn versions(found: &[Option<Found>]) -> Vec<Version> {
    let mut out: Vec<Version> = Vec::new();
    let mut index: HashMap<VersionKey, usize> = HashMap::new();
    for (i, f) in found.iter().enumerate() {
        let Some(f) = f else { continue };
        if f.node.kind == Kind::Dir {
            continue;
        }
        let key = version_key(&f.node);
        match index.get(&key) {
            Some(&v) => out[v].snapshots.push(i),
            None => {
                index.insert(key, out.len());
                out.push(Version {
                    first: i,
                    snapshots: vec![i],
                    found: f.clone(),
                });
            }
        }
    }
    out
}

/// A name found under a directory path in some snapshot.
#[derive(Clone, Debug)]
pub struct Child {
    /// A directory in at least one snapshot.
    pub is_dir: bool,
    /// The entry in the newest snapshot that has the name.
    pub newest: Node,
    /// Who could reach the name in every snapshot that has it.
    pub reach: Reach,
}

/// Who may pass a path of the history view: only those who could have
/// reached it in *every* snapshot that holds it. A history directory shows
/// what all versions held at once, so the permissions of the newest alone
/// would open up what an older, stricter version protected (a 0700
/// directory later opened to all, or replaced by a symlink).
///
/// Folded from each version's owner, group and mode, class by class; where
/// owners or groups differ between versions, what a user was in one version
/// (owner, group member, other) may differ from what they are in another, so
/// each class gets the bits of every class it may have been. An access ACL
/// in any version may deny named users and groups beyond the mode bits: then
/// only the owner passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reach {
    uid: Option<u32>,
    gid: Option<u32>,
    mixed_uid: bool,
    mixed_gid: bool,
    /// rwx of the owner, group and others, ANDed over the versions.
    bits: [u32; 3],
    acl: bool,
    seen: bool,
}

impl Default for Reach {
    fn default() -> Self {
        Reach {
            uid: None,
            gid: None,
            mixed_uid: false,
            mixed_gid: false,
            bits: [0o7; 3],
            acl: false,
            seen: false,
        }
    }
}

impl Reach {
    /// Count one version. A directory is passed with its own bits; a file
    /// (whose versions are listed in its place) with read, since listing
    /// its versions needs what reading it needed. Symlinks lead elsewhere
    /// and hold nothing here.
    pub fn add(&mut self, n: &Node) {
        let mode = match n.kind {
            Kind::Symlink => return,
            Kind::Dir => n.meta.mode,
            _ => {
                let r = n.meta.mode & 0o444;
                r | (r >> 2)
            }
        };
        let m = &n.meta;
        if !self.seen {
            self.uid = Some(m.uid);
            self.gid = Some(m.gid);
            self.seen = true;
        }
        self.mixed_uid |= self.uid != Some(m.uid);
        self.mixed_gid |= self.gid != Some(m.gid);
        for (i, b) in self.bits.iter_mut().enumerate() {
            *b &= (mode >> (6 - 3 * i)) & 0o7;
        }
        self.acl |= has_access_acl(&n.xattrs);
    }

    /// (permission bits, owner, group) for the history node.
    pub fn attr(&self) -> (u16, u32, u32) {
        if !self.seen {
            return (0o500, 0, 0);
        }
        let [u, g, o] = self.bits;
        let if_mixed = |mixed: bool, b: u32| if mixed { b } else { 0o7 };
        let user = if self.mixed_uid { 0o7 } else { u };
        let (group, other) = if self.acl {
            (0, 0)
        } else {
            (
                g & if_mixed(self.mixed_uid, u) & if_mixed(self.mixed_gid, o),
                o & if_mixed(self.mixed_uid, u) & if_mixed(self.mixed_gid, g),
            )
        };
        let uid = if self.mixed_uid {
            0
        } else {
            self.uid.unwrap_or(0)
        };
        let gid = if self.mixed_gid {
            0
        } else {
            self.gid.unwrap_or(0)
        };
        ((user << 6 | group << 3 | other) as u16, uid, gid)
    }
}

/// Whether an encoded xattr list holds an access ACL (undecodable: assume so).
fn has_access_acl(xattrs: &[u8]) -> bool {
    if xattrs.is_empty() {
        return false;
    }
    crate::format::tree::decode_xattrs(xattrs).map_or(true, |x| {
        x.iter()
            .any(|(k, _)| k.as_slice() == b"system.posix_acl_access")
    })
}

/// The union of the names under `path` in every snapshot where it is a
/// directory (`path` = `/` for the snapshot roots); `snaps` oldest first.
pub fn union_children(
    cat: &Catalog,
    snaps: &[SnapshotRow],
    path: &Path,
) -> Result<BTreeMap<Vec<u8>, Child>> {
    let trees: Vec<TreeId> = if components(path).is_empty() {
        snaps.iter().map(|s| s.root_tree).collect()
    } else {
        entries_at(cat, snaps, path)?
            .into_iter()
            .flatten()
            .filter(|f| f.node.kind == Kind::Dir)
            .filter_map(|f| f.node.subtree)
            .collect()
    };
    let mut seen = std::collections::HashSet::new();
    let mut out: BTreeMap<Vec<u8>, Child> = BTreeMap::new();
    // Oldest first, so the newest entry of a name wins.
    for t in trees {
        if !seen.insert(t) {
            continue;
        }
        for n in cat.entries(t)? {
            let is_dir = n.kind == Kind::Dir;
            match out.get_mut(&n.name) {
                Some(c) => {
                    c.is_dir |= is_dir;
                    c.reach.add(&n);
                    c.newest = n;
                }
                None => {
                    let mut reach = Reach::default();
                    reach.add(&n);
                    out.insert(
                        n.name.clone(),
                        Child {
                            is_dir,
                            newest: n,
                            reach,
                        },
                    );
                }
            }
        }
    }
    Ok(out)
}

/// Snapshots in the order the history view shows them: by start time, and
/// by name where two started in the same nanosecond. Names, unlike row ids,
/// survive `rebuild-catalog` and `copy`, so version names built on this
/// order do too.
pub fn sort_by_time(snaps: &mut [SnapshotRow]) {
    snaps.sort_by(|a, b| (a.started_ns, &a.name).cmp(&(b.started_ns, &b.name)));
}

/// The time part of a version's name, `2026-11-20T02-00-00.123Z`: the
/// snapshot stamp with milliseconds. Snapshots that a script makes one after
/// another (several sources, a retry) often share a second, never a
/// millisecond; and a fixed width keeps names sorted by time.
fn version_stamp(started_ns: i64) -> String {
    let (y, mo, d, h, mi, s) = crate::time::utc_parts(started_ns);
    let ms = started_ns.rem_euclid(1_000_000_000) / 1_000_000;
    format!("{y:04}-{mo:02}-{d:02}T{h:02}-{mi:02}-{s:02}.{ms:03}Z")
}

/// `<stamp>.<name>`, or `<stamp>.<tag>.<name>`: the original name last, so
/// the extension still tells a file manager what opens it. Never longer
/// than a name may be (NAME_MAX): a long name is cut (see `shortened`), or
/// copying the version out of the mount would fail on every filesystem.
fn compose(stamp: &str, tag: Option<&str>, name: &[u8]) -> Vec<u8> {
    let mut v = stamp.as_bytes().to_vec();
    v.push(b'.');
    if let Some(t) = tag {
        v.extend_from_slice(t.as_bytes());
        v.push(b'.');
    }
    let room = NAME_MAX.saturating_sub(v.len());
    if name.len() <= room {
        v.extend_from_slice(name);
    } else {
        v.extend_from_slice(&shortened(name, room));
    }
    v
}

/// `name` in at most `room` bytes: the start of it, `~`, and its extension
/// (when it has a short one), cut between characters of a UTF-8 name.
fn shortened(name: &[u8], room: usize) -> Vec<u8> {
    let ext: &[u8] = match name.iter().rposition(|&b| b == b'.') {
        Some(i) if i > 0 && name.len() - i <= 16 => &name[i..],
        _ => &[],
    };
    let mut cut = room
        .saturating_sub(ext.len() + 1)
        .min(name.len() - ext.len());
    while cut > 0 && name[cut] & 0xC0 == 0x80 {
        cut -= 1;
    }
    [&name[..cut], b"~", ext].concat()
}

/// A version with its name in the history view.
#[derive(Clone, Debug)]
pub struct NamedVersion {
    pub name: Vec<u8>,
    pub version: Version,
}

/// Names the distinct versions of the entry called `name`, whose entries in
/// each snapshot of `snaps` (oldest first) are `found`.
///
/// A version is named `<stamp>.<name>` after the first snapshot holding it
/// (see `version_stamp`). The name must map back to exactly one version,
/// so where it does not (two versions first seen in the same millisecond,
/// or a directory at the same path, in some snapshot, holding an entry of
/// that very name), the version takes `<stamp>.<id>.<name>` with its
/// snapshot's short id (as `snapfs snapshots` lists it), then
/// `<stamp>.<id>-2.<name>` and so on; versions choose oldest first, so the
/// earlier of two keeps the plain name. A real entry keeps its name: it is
/// what the source held.
///
/// Names depend on start times, snapshot names and ids only (never on row
/// ids), so they are the same after a remount, a `rebuild-catalog` or a
/// `copy`; and since a new snapshot is the newest, it leaves older names
/// alone, unless it is the one adding such an entry.
pub fn named_versions(
    cat: &Catalog,
    snaps: &[SnapshotRow],
    found: &[Option<Found>],
    name: &[u8],
) -> Result<Vec<NamedVersion>> {
    // Where the path was a directory: the names its entries take.
    let dirs = subdirs(found);
    let is_dir = dirs.iter().any(Option::is_some);
    let mut taken: HashSet<Vec<u8>> = HashSet::new();
    let mut out = Vec::new();
    for version in versions(found) {
        // `found` comes from `snaps`, entry for entry.
        let snap = snaps.get(version.first).ok_or_else(|| {
            crate::Error::invalid(format!(
                "history of {:?}: {} entries for {} snapshots",
                lossy(name),
                found.len(),
                snaps.len()
            ))
        })?;
        let stamp = version_stamp(snap.started_ns);
        let id = crate::repo::refs::short_id(snap);
        let mut attempt: u64 = 0;
        let chosen = loop {
            let candidate = match attempt {
                0 => compose(&stamp, None, name),
                1 => compose(&stamp, Some(&id), name),
                n => compose(&stamp, Some(&format!("{id}-{n}")), name),
            };
            attempt += 1;
            if taken.contains(&candidate) {
                continue;
            }
            if is_dir
                && entries_in(cat, &dirs, &candidate)?
                    .iter()
                    .any(Option::is_some)
            {
                continue;
            }
            break candidate;
        };
        taken.insert(chosen.clone());
        out.push(NamedVersion {
            name: chosen,
            version,
        });
    }
    Ok(out)
}

/// Directory names of a `mount --names gmt`, one per snapshot, oldest first:
/// `@GMT-YYYY.MM.DD-HH.MM.SS` of its start time, the form Samba's
/// `vfs_shadow_copy2` offers as Windows "Previous Versions".
///
/// A GMT token has one-second resolution, in the directory name and in
/// the SMB protocol itself: a client asks for a previous version by its
/// token, and Samba finds the directory by printing the token with
/// `shadow:format` (a suffix after the seconds would be ignored when
/// listing and never found when opening). So each snapshot gets a second of
/// its own: its start second, or, when an earlier snapshot already holds
/// that one, the next second still free. Of snapshots made within one
/// second, none is hidden; the later ones are shown up to a few seconds
/// after they started, in the order they were made. The order is by start
/// time, then name (see `sort_by_time`), so the tokens stay the same across
/// remounts and catalog rebuilds; a new snapshot, being the newest, leaves
/// the others' tokens alone.
pub fn gmt_names(snaps: &[SnapshotRow]) -> Vec<(String, SnapshotRow)> {
    let mut order = snaps.to_vec();
    sort_by_time(&mut order);
    let mut free: Option<i64> = None;
    let mut out = Vec::with_capacity(order.len());
    for s in order {
        let own = s.started_ns.div_euclid(1_000_000_000);
        let second = free.map_or(own, |f| own.max(f));
        // Only a start time within a second of the end of i64 nanoseconds
        // (the year 2262) has no token to move to.
        let Some(ns) = second.checked_mul(1_000_000_000) else {
            continue;
        };
        let (y, mo, d, h, mi, sec) = crate::time::utc_parts(ns);
        free = Some(second + 1);
        out.push((
            format!("@GMT-{y:04}.{mo:02}.{d:02}-{h:02}.{mi:02}.{sec:02}"),
            s,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tree::Meta;

    fn node(kind: Kind, mode: u32, uid: u32, gid: u32, acl: bool) -> Node {
        let xattrs = if acl {
            crate::format::tree::encode_xattrs(&[(
                b"system.posix_acl_access".to_vec(),
                vec![2, 0, 0, 0],
            )])
        } else {
            Vec::new()
        };
        Node {
            name: b"x".to_vec(),
            kind,
            meta: Meta {
                mode,
                uid,
                gid,
                ..Meta::default()
            },
            link_key: 0,
            xattrs,
            target: None,
            content: None,
            subtree: None,
            node_offset: 0,
        }
    }

    fn reach(nodes: &[Node]) -> (u16, u32, u32) {
        let mut r = Reach::default();
        for n in nodes {
            r.add(n);
        }
        r.attr()
    }

    #[test]
    fn history_reach_is_the_strictest_of_all_versions() {
        let dir = |mode, uid, gid| node(Kind::Dir, libc::S_IFDIR | mode, uid, gid, false);
        assert_eq!(reach(&[dir(0o755, 1, 2)]), (0o755, 1, 2));
        // Once 0700, always 0700 here.
        assert_eq!(reach(&[dir(0o700, 1, 2), dir(0o755, 1, 2)]), (0o700, 1, 2));
        // Owners differ: the former owner may now be "other" in one version.
        assert_eq!(reach(&[dir(0o750, 1, 2), dir(0o755, 3, 2)]), (0o750, 0, 2));
        assert_eq!(reach(&[dir(0o705, 1, 2), dir(0o755, 3, 2)]), (0o705, 0, 2));
        // Groups differ: a member of one group was "other" in the other version.
        assert_eq!(reach(&[dir(0o755, 1, 2), dir(0o750, 1, 4)]), (0o700, 1, 0));
        // Symlinks hold nothing here; nothing but symlinks is root's alone.
        let link = node(Kind::Symlink, libc::S_IFLNK | 0o777, 9, 9, false);
        assert_eq!(reach(&[dir(0o700, 1, 2), link.clone()]), (0o700, 1, 2));
        assert_eq!(reach(&[link]), (0o500, 0, 0));
        // Listing a file's versions needs read.
        let file = node(Kind::File, libc::S_IFREG | 0o640, 1, 2, false);
        assert_eq!(reach(&[file]), (0o550, 1, 2));
        // An access ACL may deny named users and groups: only the owner.
        let acl = node(Kind::Dir, libc::S_IFDIR | 0o755, 1, 2, true);
        assert_eq!(reach(&[acl]), (0o700, 1, 2));
    }

    const SEC: i64 = 1_000_000_000;
    /// 2026-11-20T02:00:00Z.
    const T0: i64 = 1_795_140_000 * SEC;

    fn snap(name: &str, started_ns: i64) -> SnapshotRow {
        SnapshotRow {
            id: crate::ids::SnapshotId(0),
            hash: crate::ids::Hash::of(name.as_bytes()),
            host: "h".into(),
            ..SnapshotRow::new(name.into(), started_ns, TreeId(1))
        }
    }

    fn file(name: &[u8], content: i64) -> Option<Found> {
        let mut n = node(Kind::File, libc::S_IFREG | 0o644, 0, 0, false);
        n.name = name.to_vec();
        n.meta.size = 1;
        n.content = Some(crate::format::tree::ContentRef::Chunk(
            crate::ids::ChunkId(crate::ids::Hash::of(&content.to_le_bytes())),
            1,
        ));
        Some(Found { node: n, pos: 1 })
    }

    fn names(cat: &Catalog, snaps: &[SnapshotRow], found: &[Option<Found>]) -> Vec<String> {
        named_versions(cat, snaps, found, b"a.txt")
            .expect("names")
            .iter()
            .map(|v| lossy(&v.name))
            .collect()
    }

    fn catalog() -> (tempfile::TempDir, Catalog) {
        let d = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(&d.path().join("c.db"), true).expect("open catalog");
        (d, cat)
    }

    #[test]
    fn version_names_carry_milliseconds_and_stay_unique_within_one() {
        let (_d, cat) = catalog();
        let snaps = [
            snap("s1", T0 + 5_000_000),
            snap("s2", T0 + 5_900_000),
            snap("s3", T0 + 999_999_999),
            snap("s4", T0 + 999_999_999),
        ];
        let id = |i: usize| crate::repo::refs::short_id(&snaps[i]);
        // One version per snapshot, s1 and s2 in the same millisecond.
        let found: Vec<_> = (0..4).map(|i| file(b"a.txt", i)).collect();
        assert_eq!(
            names(&cat, &snaps, &found),
            [
                "2026-11-20T02-00-00.005Z.a.txt".to_string(),
                format!("2026-11-20T02-00-00.005Z.{}.a.txt", id(1)),
                "2026-11-20T02-00-00.999Z.a.txt".to_string(),
                format!("2026-11-20T02-00-00.999Z.{}.a.txt", id(3)),
            ]
        );
        // The same version in all: named after the first snapshot.
        let same: Vec<_> = (0..4).map(|_| file(b"a.txt", 7)).collect();
        assert_eq!(
            names(&cat, &snaps, &same),
            ["2026-11-20T02-00-00.005Z.a.txt"]
        );
        // Before 1970 the milliseconds still count up within the second.
        let old = [snap("old", -SEC + 250_000_000)];
        assert_eq!(
            names(&cat, &old, &[file(b"a.txt", 1)]),
            ["1969-12-31T23-59-59.250Z.a.txt"]
        );
    }

    /// A path that was a directory in one snapshot may hold an entry named
    /// like a version of the file it was in another: the entry keeps its
    /// name, the version takes the next one free.
    #[test]
    fn version_names_step_aside_for_a_directory_entry() {
        let (_d, cat) = catalog();
        let snaps = [snap("s1", T0 + 5_000_000), snap("s2", T0 + 5_100_000)];
        let plain = b"2026-11-20T02-00-00.005Z.a.txt".to_vec();
        let id = crate::repo::refs::short_id(&snaps[0]);
        let with_id = format!("2026-11-20T02-00-00.005Z.{id}.a.txt").into_bytes();
        let squat = |names: &[&[u8]]| {
            let mut entries: Vec<crate::format::tree::Entry> = names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let e = file(n, 100 + i as i64).expect("entry").node;
                    crate::format::tree::Entry {
                        name: e.name,
                        kind: e.kind,
                        meta: e.meta,
                        link_key: 0,
                        xattrs: Vec::new(),
                        body: crate::format::tree::Body::File(e.content),
                    }
                })
                .collect();
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            let tree = cat.add_dir(entries).expect("add tree");
            let mut dir = node(Kind::Dir, libc::S_IFDIR | 0o755, 0, 0, false);
            dir.name = b"a.txt".to_vec();
            dir.subtree = Some(tree);
            Some(Found { node: dir, pos: 1 })
        };
        let found = [file(b"a.txt", 1), squat(&[&plain])];
        assert_eq!(names(&cat, &snaps, &found), [lossy(&with_id)]);
        let found = [file(b"a.txt", 1), squat(&[&plain, &with_id])];
        assert_eq!(
            names(&cat, &snaps, &found),
            [format!("2026-11-20T02-00-00.005Z.{id}-2.a.txt")]
        );
    }

    #[test]
    fn gmt_names_give_each_snapshot_a_second_of_its_own() {
        let gmt = |snaps: &[SnapshotRow]| -> Vec<(String, String)> {
            gmt_names(snaps)
                .into_iter()
                .map(|(g, s)| (g, s.name))
                .collect()
        };
        let pairs = |items: &[(&str, &str)]| -> Vec<(String, String)> {
            items
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        // Listed in any order; three in one second, one in the next, one
        // later; two in the same nanosecond ordered by name.
        let snaps = [
            snap("c", T0 + 900_000_000),
            snap("a", T0 + 100_000_000),
            snap("b", T0 + 100_000_000),
            snap("d", T0 + SEC + 1),
            snap("e", T0 + 60 * SEC + 3),
        ];
        assert_eq!(
            gmt(&snaps),
            pairs(&[
                ("@GMT-2026.11.20-02.00.00", "a"),
                ("@GMT-2026.11.20-02.00.01", "b"),
                ("@GMT-2026.11.20-02.00.02", "c"),
                ("@GMT-2026.11.20-02.00.03", "d"),
                ("@GMT-2026.11.20-02.01.00", "e"),
            ])
        );
        // A snapshot added later leaves the others' tokens alone.
        let mut more = snaps.to_vec();
        more.push(snap("f", T0 + 60 * SEC + 4));
        assert_eq!(gmt(&more)[..5], gmt(&snaps)[..]);
        assert_eq!(gmt(&more)[5].0, "@GMT-2026.11.20-02.01.01");
        // No token to move to past the end of i64 nanoseconds: left out,
        // never a panic or a duplicate.
        let end = [snap("x", i64::MAX), snap("y", i64::MAX)];
        assert_eq!(gmt(&end).len(), 1);
    }

    /// A version of a file whose name is near 255 bytes was named longer
    /// than any filesystem allows: copying it out of the mount failed.
    #[test]
    fn version_names_of_long_names_fit_in_a_name() {
        let stamp = version_stamp(1_700_000_000_123_000_000);
        let long = [vec![b'a'; 240], b".tar.gz".to_vec()].concat();
        for tag in [None, Some("3fa2c4d1"), Some("3fa2c4d1-2")] {
            let v = compose(&stamp, tag, &long);
            assert!(v.len() <= NAME_MAX, "{} bytes", v.len());
            assert!(v.ends_with(b"~.gz"), "{}", String::from_utf8_lossy(&v));
        }
        // Multi-byte characters are never cut in half.
        let wide = "é".repeat(127).into_bytes();
        let v = compose(&stamp, Some("3fa2c4d1"), &wide);
        assert!(v.len() <= NAME_MAX);
        assert!(std::str::from_utf8(&v).is_ok(), "{v:?}");
        // Short names are left as they are.
        assert_eq!(
            compose(&stamp, None, b"report.odt"),
            [stamp.as_bytes(), b".report.odt"].concat()
        );
    }
}
