//! The mount's `history/` directory: `history/<absolute path>/` is the union
//! of every directory that ever existed at that path (deleted entries
//! included), and a path that held a file is a directory of its distinct
//! versions, each named `<time of first snapshot, to the millisecond>.<name>`
//! (`history::named_versions` says how names stay unique) and served as that
//! snapshot's own inode.
//!
//! History entries have no position in any snapshot, so their inode numbers
//! come from a table, kept only while the kernel holds them. A version is
//! its own inode there too (unique inode numbers across the mount), and
//! reads go to the snapshot entry it stands for.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Attr, DirItem, SnapshotFs, dir_attr, inode};
use crate::error::{Error, Result};
use crate::format::record::SnapshotRow;
use crate::format::tree::{FileTime, Kind};
use crate::repo::catalog::Node;
use crate::repo::history::{
    Child, DirSpots, Found, Reach, entries_in, named_versions, root_spots, sort_by_time, subdirs,
    union_children,
};
use crate::repo::paths::components;

/// Entries nobody holds are dropped once the table grows past this.
const MAX_IDLE: usize = 50_000;

struct HistNode {
    path: PathBuf,
    /// A directory of a file's versions (else a directory of names).
    versions: bool,
    /// For a version: the snapshot inode it shows.
    target: Option<u64>,
    attr: Attr,
    parent: u64,
    lookups: u64,
}

/// A history directory's names, kept while the kernel fetches the listing
/// batch after batch: computing them means reading the directory in every
/// snapshot, and a listing of thousands of names takes dozens of batches.
pub(super) struct Listing {
    ino: u64,
    at: std::time::Instant,
    children: Arc<BTreeMap<Vec<u8>, Child>>,
}

/// Where a history directory lies in each snapshot, for the snapshot list
/// it was computed with (count, oldest and newest id).
pub(super) type Spots = ((usize, i64, i64), Arc<DirSpots>);

/// A history path, the snapshot list it was looked up in, and what each
/// snapshot holds there.
pub(super) type FoundAt = (PathBuf, (usize, i64, i64), Arc<Vec<Option<Found>>>);

fn list_key(snaps: &[SnapshotRow]) -> (usize, i64, i64) {
    (
        snaps.len(),
        snaps.first().map_or(0, |s| s.id.0),
        snaps.last().map_or(0, |s| s.id.0),
    )
}

/// How long a listing in progress may use names computed at its start.
const LISTING_TTL: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Default)]
pub(super) struct Table {
    by_ino: HashMap<u64, HistNode>,
    by_path: HashMap<PathBuf, u64>,
    next: u64,
}

/// Attributes of a history directory: times from the newest entry at its
/// path, access from all of them (see `Reach`).
fn hist_attr(ino: u64, newest: &Node, reach: &Reach) -> Attr {
    let (perm, uid, gid) = reach.attr();
    Attr {
        perm,
        uid,
        gid,
        ..dir_attr(ino, perm, newest.meta.mtime)
    }
}

impl SnapshotFs {
    /// The snapshots oldest first, in the order version names are given
    /// (`history::sort_by_time`).
    fn snapshots_by_time(&self) -> Result<Vec<SnapshotRow>> {
        let mut snaps = self.with_snapshots(true, |s| s.by_time.clone())?;
        sort_by_time(&mut snaps);
        Ok(snaps)
    }

    pub(super) fn history_root_attr(&self) -> Attr {
        dir_attr(inode::history(0), 0o555, FileTime::from_ns(self.started_ns))
    }

    /// The table entry for `path`, made if needed; `hold` counts a lookup.
    fn hist_node(
        &self,
        path: PathBuf,
        versions: bool,
        newest: &Node,
        reach: &Reach,
        parent: u64,
        hold: bool,
    ) -> Attr {
        let mut t = self.history.lock().expect("history table lock");
        if let Some(&ino) = t.by_path.get(&path)
            && let Some(n) = t.by_ino.get_mut(&ino)
        {
            n.versions = versions;
            n.attr = hist_attr(ino, newest, reach);
            n.lookups += u64::from(hold);
            return n.attr.clone();
        }
        if t.by_ino.len() >= MAX_IDLE {
            let idle: Vec<u64> = t
                .by_ino
                .iter()
                .filter(|(_, n)| n.lookups == 0)
                .map(|(&i, _)| i)
                .collect();
            for i in idle {
                if let Some(n) = t.by_ino.remove(&i) {
                    t.by_path.remove(&n.path);
                }
            }
        }
        t.next += 1;
        let ino = inode::history(t.next);
        let attr = hist_attr(ino, newest, reach);
        t.by_path.insert(path.clone(), ino);
        t.by_ino.insert(
            ino,
            HistNode {
                path,
                versions,
                target: None,
                attr: attr.clone(),
                parent,
                lookups: u64::from(hold),
            },
        );
        attr
    }

    /// The table entry for a version at `path`, showing snapshot inode
    /// `attr.ino`; returns its attributes under its own number.
    fn hist_version(&self, path: PathBuf, mut attr: Attr, parent: u64, hold: bool) -> Attr {
        let target = attr.ino;
        attr.nlink = 1;
        let mut t = self.history.lock().expect("history table lock");
        if let Some(&ino) = t.by_path.get(&path)
            && let Some(n) = t.by_ino.get_mut(&ino)
        {
            attr.ino = ino;
            n.target = Some(target);
            n.attr = attr.clone();
            n.lookups += u64::from(hold);
            return attr;
        }
        t.next += 1;
        let ino = inode::history(t.next);
        attr.ino = ino;
        t.by_path.insert(path.clone(), ino);
        t.by_ino.insert(
            ino,
            HistNode {
                path,
                versions: false,
                target: Some(target),
                attr: attr.clone(),
                parent,
                lookups: u64::from(hold),
            },
        );
        attr
    }

    /// The snapshot inode a history version stands for (else `ino` itself).
    pub(super) fn resolve_version(&self, ino: u64) -> u64 {
        if inode::history_seq(ino).is_none() {
            return ino;
        }
        let t = self.history.lock().expect("history table lock");
        t.by_ino.get(&ino).and_then(|n| n.target).unwrap_or(ino)
    }

    /// (path, versions?, parent) of a history inode.
    fn hist_get(&self, ino: u64) -> Result<(PathBuf, bool, u64)> {
        if inode::history_seq(ino) == Some(0) {
            return Ok((PathBuf::from("/"), false, inode::ROOT));
        }
        let t = self.history.lock().expect("history table lock");
        t.by_ino
            .get(&ino)
            .map(|n| (n.path.clone(), n.versions, n.parent))
            .ok_or(Error::NoSuchInode(ino))
    }

    /// (parent, name) of a history inode, while the table holds it.
    pub(super) fn history_name(&self, ino: u64) -> Option<super::files::CachedName> {
        let t = self.history.lock().expect("history table lock");
        let n = t.by_ino.get(&ino)?;
        Some((n.parent, n.path.file_name()?.as_bytes().into()))
    }

    pub(super) fn history_getattr(&self, ino: u64) -> Result<Attr> {
        if inode::history_seq(ino) == Some(0) {
            return Ok(self.history_root_attr());
        }
        let t = self.history.lock().expect("history table lock");
        t.by_ino
            .get(&ino)
            .map(|n| n.attr.clone())
            .ok_or(Error::NoSuchInode(ino))
    }

    pub(super) fn history_forget(&self, ino: u64, n: u64) {
        let mut t = self.history.lock().expect("history table lock");
        let gone = match t.by_ino.get_mut(&ino) {
            Some(h) => {
                h.lookups = h.lookups.saturating_sub(n);
                h.lookups == 0
            }
            None => false,
        };
        if gone && let Some(h) = t.by_ino.remove(&ino) {
            t.by_path.remove(&h.path);
        }
    }

    /// The versions of the file at `path`: (name in the view, attr). Names
    /// are unique in the directory that lists them, beside any names of a
    /// directory at the same path (see `history::named_versions`), so a
    /// lookup finds exactly one version or none.
    fn version_items(&self, snaps: &[SnapshotRow], path: &Path) -> Result<Vec<(Vec<u8>, Attr)>> {
        let found = self.hist_entries_at(snaps, path)?;
        let name = path
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        let cat = self.shared.conn()?;
        let _view = cat.read_view()?;
        let named = named_versions(&cat, snaps, &found, &name)?;
        let mut out = Vec::with_capacity(named.len());
        for v in named {
            let snap = &snaps[v.version.first];
            let ino = inode::encode(snap.id, v.version.found.pos)?;
            let attr = self.node_attr(ino, snap.id, &v.version.found.node)?;
            out.push((v.name, attr));
        }
        Ok(out)
    }

    pub(super) fn history_lookup(&self, parent: u64, name: &[u8]) -> Result<Option<Attr>> {
        let (ppath, pversions, _) = self.hist_get(parent)?;
        let snaps = self.snapshots_by_time()?;
        if pversions {
            return Ok(self
                .version_items(&snaps, &ppath)?
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(n, a)| {
                    self.hist_version(ppath.join(OsStr::from_bytes(&n)), a, parent, true)
                }));
        }
        // A path that was a file in some snapshots and a directory in others
        // is a directory that also holds the file's versions.
        if ppath != Path::new("/")
            && let Some((n, a)) = self
                .version_items(&snaps, &ppath)?
                .into_iter()
                .find(|(n, _)| n == name)
        {
            return Ok(Some(self.hist_version(
                ppath.join(OsStr::from_bytes(&n)),
                a,
                parent,
                true,
            )));
        }
        let path = ppath.join(OsStr::from_bytes(name));
        let found = self.hist_entries_at(&snaps, &path)?;
        let is_dir = found.iter().flatten().any(|f| f.node.kind == Kind::Dir);
        let mut reach = Reach::default();
        for f in found.iter().flatten() {
            reach.add(&f.node);
        }
        let Some(newest) = found.iter().flatten().next_back() else {
            return Ok(None);
        };
        Ok(Some(self.hist_node(
            path,
            !is_dir,
            &newest.node,
            &reach,
            parent,
            true,
        )))
    }

    /// Where directory `path` lies in each snapshot. Remembered per path:
    /// walking down `history/` looks up every component of a deep path,
    /// and each lookup then costs one step from its parent, not a descent
    /// from the root in every snapshot.
    fn dir_spots(&self, snaps: &[SnapshotRow], path: &Path) -> Result<Arc<DirSpots>> {
        let parts = components(path);
        let Some(name) = parts.last() else {
            return Ok(Arc::new(root_spots(snaps)));
        };
        let key = list_key(snaps);
        if let Some((k, spots)) = self.hist_dirs.lock().expect("history dirs lock").get(path)
            && *k == key
        {
            return Ok(spots.clone());
        }
        let up = self.dir_spots(snaps, path.parent().unwrap_or(Path::new("/")))?;
        let cat = self.shared.conn()?;
        let view = cat.read_view()?;
        let spots = Arc::new(subdirs(&entries_in(&cat, &up, name)?));
        drop(view);
        self.hist_dirs
            .lock()
            .expect("history dirs lock")
            .put(path.to_path_buf(), (key, spots.clone()));
        Ok(spots)
    }

    /// For each snapshot, the entry at `path` (as `history::entries_at`).
    /// The last answer is kept for the same path and snapshot list.
    fn hist_entries_at(
        &self,
        snaps: &[SnapshotRow],
        path: &Path,
    ) -> Result<Arc<Vec<Option<Found>>>> {
        let parts = components(path);
        let Some(name) = parts.last() else {
            return Ok(Arc::new(vec![None; snaps.len()]));
        };
        let key = list_key(snaps);
        if let Some((p, k, found)) = &*self.hist_found.lock().expect("history found lock")
            && p == path
            && *k == key
        {
            return Ok(found.clone());
        }
        let up = self.dir_spots(snaps, path.parent().unwrap_or(Path::new("/")))?;
        let cat = self.shared.conn()?;
        let view = cat.read_view()?;
        let found = Arc::new(entries_in(&cat, &up, name)?);
        drop(view);
        *self.hist_found.lock().expect("history found lock") =
            Some((path.to_path_buf(), key, found.clone()));
        Ok(found)
    }

    /// The names under history directory `ino`: computed afresh when a
    /// listing starts, reused by the batches that continue it.
    fn hist_children(
        &self,
        ino: u64,
        cookie: u64,
        snaps: &[SnapshotRow],
        path: &Path,
    ) -> Result<Arc<BTreeMap<Vec<u8>, Child>>> {
        let mut last = self.hist_listing.lock().expect("history listing lock");
        if cookie > 2
            && let Some(l) = last.as_ref()
            && l.ino == ino
            && l.at.elapsed() < LISTING_TTL
        {
            return Ok(l.children.clone());
        }
        let cat = self.shared.conn()?;
        let view = cat.read_view()?;
        let children = Arc::new(union_children(&cat, snaps, path)?);
        drop(view);
        *last = Some(Listing {
            ino,
            at: std::time::Instant::now(),
            children: children.clone(),
        });
        Ok(children)
    }

    pub(super) fn history_readdir(
        &self,
        ino: u64,
        cookie: u64,
        max: usize,
        plus: bool,
    ) -> Result<Vec<DirItem>> {
        let (path, is_versions, parent) = self.hist_get(ino)?;
        let snaps = self.snapshots_by_time()?;
        let mut items = vec![
            DirItem {
                name: b".".to_vec(),
                cookie: 1,
                attr: self.history_getattr(ino)?,
            },
            DirItem {
                name: b"..".to_vec(),
                cookie: 2,
                attr: self.getattr(parent)?,
            },
        ];
        let mut next = 3;
        // A file's versions: all of a versions directory, and the tail of a
        // directory whose path was also a file in some snapshots.
        let push_versions = |items: &mut Vec<DirItem>, next: &mut u64| -> Result<()> {
            for (name, attr) in self.version_items(&snaps, &path)? {
                if *next > cookie && items.len() < max + 2 {
                    let attr =
                        self.hist_version(path.join(OsStr::from_bytes(&name)), attr, ino, plus);
                    items.push(DirItem {
                        name,
                        cookie: *next,
                        attr,
                    });
                }
                *next += 1;
            }
            Ok(())
        };
        if is_versions {
            push_versions(&mut items, &mut next)?;
        } else {
            let children = self.hist_children(ino, cookie, &snaps, &path)?;
            for (name, child) in children.iter() {
                if next > cookie && items.len() < max + 2 {
                    let p = path.join(OsStr::from_bytes(name));
                    let attr =
                        self.hist_node(p, !child.is_dir, &child.newest, &child.reach, ino, plus);
                    items.push(DirItem {
                        name: name.clone(),
                        cookie: next,
                        attr,
                    });
                }
                next += 1;
            }
            if path != Path::new("/") {
                push_versions(&mut items, &mut next)?;
            }
        }
        Ok(items
            .into_iter()
            .filter(|i| i.cookie > cookie)
            .take(max)
            .collect())
    }
}
