//! `snapfs diff`: what was added, removed, modified, or changed only in its
//! metadata between two snapshots. Trees are content-addressed, so an
//! unchanged directory is the same row in both and is never descended into:
//! a diff of two snapshots of a huge tree with few changes is fast.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::tree::Kind;
use crate::ids::TreeId;
use crate::repo::Repository;
use crate::repo::catalog::{Catalog, Node};
use crate::repo::paths::{Located, locate};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Removed,
    /// Content (or symlink target, or device number) differs.
    Modified,
    /// Same content; mode, owner, mtime or extended attributes differ.
    Metadata,
}

#[derive(Clone, Debug, Serialize)]
pub struct Change {
    pub change: ChangeKind,
    #[serde(serialize_with = "crate::repo::paths::lossy_path")]
    pub path: PathBuf,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Size in the newer snapshot (in the older one for removals).
    pub size: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DiffReport {
    pub from: String,
    pub to: String,
    pub added: u64,
    pub removed: u64,
    pub modified: u64,
    pub metadata: u64,
    pub added_bytes: u64,
    pub removed_bytes: u64,
    pub modified_bytes: u64,
    pub changes: Vec<Change>,
}

pub fn diff(repo: &Repository, from: &str, to: &str, path: Option<&Path>) -> Result<DiffReport> {
    let cat = repo.catalog()?;
    let a = crate::repo::refs::resolve(&cat, from)?;
    let b = crate::repo::refs::resolve(&cat, to)?;
    let mut r = DiffReport {
        from: a.name.clone(),
        to: b.name.clone(),
        ..Default::default()
    };
    let base = path.unwrap_or(Path::new("/")).to_path_buf();
    let side = |root: TreeId, name: &str| -> Result<Option<Located>> {
        match locate(&cat, root, name, &base) {
            Ok(l) => Ok(Some(l)),
            Err(Error::NoSuchPath { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    };
    let la = side(a.root_tree, &a.name)?;
    let lb = side(b.root_tree, &b.name)?;
    if la.is_none() && lb.is_none() {
        return Err(Error::NoSuchPath {
            snapshot: format!("{} or {}", a.name, b.name),
            path: base,
        });
    }
    let mut d = Differ {
        cat: &cat,
        r: &mut r,
    };
    match (la, lb) {
        (Some(Located::Root(ta)), Some(Located::Root(tb))) => d.trees(Some(ta), Some(tb), &base)?,
        (la, lb) => {
            let node = |l: Option<Located>| match l {
                Some(Located::Entry(n)) => Some(*n),
                _ => None,
            };
            d.pair(node(la), node(lb), &base)?;
        }
    }
    Ok(r)
}

struct Differ<'a> {
    cat: &'a Catalog,
    r: &'a mut DiffReport,
}

fn same_meta(a: &Node, b: &Node) -> bool {
    a.meta.mode == b.meta.mode
        && a.meta.uid == b.meta.uid
        && a.meta.gid == b.meta.gid
        && a.meta.mtime == b.meta.mtime
        && a.xattrs == b.xattrs
}

impl Differ<'_> {
    fn record(&mut self, change: ChangeKind, path: PathBuf, n: &Node) {
        let size = if n.kind == Kind::File { n.meta.size } else { 0 };
        match change {
            ChangeKind::Added => {
                self.r.added += 1;
                self.r.added_bytes += size;
            }
            ChangeKind::Removed => {
                self.r.removed += 1;
                self.r.removed_bytes += size;
            }
            ChangeKind::Modified => {
                self.r.modified += 1;
                self.r.modified_bytes += size;
            }
            ChangeKind::Metadata => self.r.metadata += 1,
        }
        self.r.changes.push(Change {
            change,
            path,
            kind: n.kind.name(),
            size,
        });
    }

    /// Everything beneath a directory present on one side only.
    fn all(&mut self, change: ChangeKind, tree: TreeId, path: &Path) -> Result<()> {
        let _level = crate::format::tree::descend(|| path.display().to_string())?;
        for n in self.cat.entries(tree)? {
            let p = path.join(OsStr::from_bytes(&n.name));
            self.record(change, p.clone(), &n);
            if let Some(t) = n.subtree {
                self.all(change, t, &p)?;
            }
        }
        Ok(())
    }

    fn trees(&mut self, a: Option<TreeId>, b: Option<TreeId>, path: &Path) -> Result<()> {
        if a == b {
            return Ok(());
        }
        let _level = crate::format::tree::descend(|| path.display().to_string())?;
        let mut names: BTreeMap<Vec<u8>, (Option<Node>, Option<Node>)> = BTreeMap::new();
        if let Some(t) = a {
            for n in self.cat.entries(t)? {
                let key = n.name.clone();
                names.entry(key).or_default().0 = Some(n);
            }
        }
        if let Some(t) = b {
            for n in self.cat.entries(t)? {
                let key = n.name.clone();
                names.entry(key).or_default().1 = Some(n);
            }
        }
        for (name, (na, nb)) in names {
            self.pair(na, nb, &path.join(OsStr::from_bytes(&name)))?;
        }
        Ok(())
    }

    fn pair(&mut self, a: Option<Node>, b: Option<Node>, path: &Path) -> Result<()> {
        match (a, b) {
            (None, None) => {}
            (Some(a), None) => {
                self.record(ChangeKind::Removed, path.to_path_buf(), &a);
                if let Some(t) = a.subtree {
                    self.all(ChangeKind::Removed, t, path)?;
                }
            }
            (None, Some(b)) => {
                self.record(ChangeKind::Added, path.to_path_buf(), &b);
                if let Some(t) = b.subtree {
                    self.all(ChangeKind::Added, t, path)?;
                }
            }
            (Some(a), Some(b)) if a.kind != b.kind => {
                self.pair(Some(a), None, path)?;
                self.pair(None, Some(b), path)?;
            }
            (Some(a), Some(b)) => {
                let content_differs = match a.kind {
                    Kind::File => a.content != b.content,
                    Kind::Symlink => a.target != b.target,
                    Kind::CharDev | Kind::BlockDev => a.meta.rdev != b.meta.rdev,
                    Kind::Dir | Kind::Fifo => false,
                };
                if content_differs {
                    self.record(ChangeKind::Modified, path.to_path_buf(), &b);
                } else if !same_meta(&a, &b) {
                    self.record(ChangeKind::Metadata, path.to_path_buf(), &b);
                }
                if a.kind == Kind::Dir {
                    self.trees(a.subtree, b.subtree, path)?;
                }
            }
        }
        Ok(())
    }
}
