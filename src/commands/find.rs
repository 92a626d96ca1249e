//! `snapfs find GLOB`: names across all snapshots. Each distinct tree is
//! searched once (trees are shared by every snapshot in which they are
//! unchanged), and its matches are reused wherever it appears.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use globset::{GlobBuilder, GlobMatcher};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::tree::Kind;
use crate::ids::TreeId;
use crate::repo::Repository;
use crate::repo::catalog::Catalog;

#[derive(Clone, Debug, Serialize)]
pub struct FindMatch {
    #[serde(serialize_with = "crate::repo::paths::lossy_path")]
    pub path: PathBuf,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Size in the newest snapshot holding the path.
    pub size: u64,
    /// Snapshots holding the path, oldest first.
    pub snapshots: Vec<String>,
}

/// What matches beneath one tree: the tree's own matching entries, and the
/// matches of its subtrees by reference. Kept unflattened, so a tree shared
/// by many snapshots (or sitting under many changed ancestors) is held once.
struct Matches {
    items: Vec<Item>,
}

enum Item {
    /// A matching entry: its name, type and size (not the whole row).
    Here(Box<[u8]>, Kind, u64),
    Below(Box<[u8]>, Arc<Matches>),
}

struct Finder<'a> {
    cat: &'a Catalog,
    name: GlobMatcher,
    memo: HashMap<TreeId, Option<Arc<Matches>>>,
}

impl Finder<'_> {
    /// Matches beneath `tree` (None: nothing matches there).
    fn matches(&mut self, tree: TreeId) -> Result<Option<Arc<Matches>>> {
        if let Some(m) = self.memo.get(&tree) {
            return Ok(m.clone());
        }
        let _level = crate::format::tree::descend(|| format!("tree row {}", tree.0))?;
        let mut items = Vec::new();
        for n in self.cat.entries(tree)? {
            if let Some(sub) = n.subtree
                && let Some(m) = self.matches(sub)?
            {
                items.push(Item::Below(n.name.clone().into_boxed_slice(), m));
            }
            if self.name.is_match(OsStr::from_bytes(&n.name)) {
                items.push(Item::Here(n.name.into_boxed_slice(), n.kind, n.meta.size));
            }
        }
        let out = (!items.is_empty()).then(|| Arc::new(Matches { items }));
        self.memo.insert(tree, out.clone());
        Ok(out)
    }
}

/// Call `f` with every match beneath `m` (path from `base`, type, size).
fn each_match(m: &Matches, base: &Path, f: &mut impl FnMut(&Path, Kind, u64)) {
    for it in &m.items {
        match it {
            Item::Here(name, kind, size) => f(&base.join(OsStr::from_bytes(name)), *kind, *size),
            Item::Below(name, sub) => each_match(sub, &base.join(OsStr::from_bytes(name)), f),
        }
    }
}

pub fn find(repo: &Repository, pattern: &str, snapshot: Option<&str>) -> Result<Vec<FindMatch>> {
    let cat = repo.catalog()?;
    let build = |p: &str| {
        GlobBuilder::new(p)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map(|g| g.compile_matcher())
            .map_err(|e| Error::invalid(format!("bad pattern {p:?}: {e}")))
    };
    // The name part narrows the search in every tree; a pattern with '/' is
    // then checked against the whole path.
    let last = pattern.rsplit('/').next().unwrap_or(pattern);
    let last = if last.is_empty() { "*" } else { last };
    let full = pattern.contains('/').then(|| build(pattern)).transpose()?;
    let mut finder = Finder {
        cat: &cat,
        name: build(last)?,
        memo: HashMap::new(),
    };
    let mut snaps = match snapshot {
        Some(r) => vec![crate::repo::refs::resolve(&cat, r)?],
        None => cat.snapshots()?,
    };
    snaps.sort_by_key(|s| (s.started_ns, s.id.0));
    // Per path: kind and size in the newest snapshot, and the snapshots
    // holding it as indices (names are attached once, at the end).
    let mut by_path: BTreeMap<PathBuf, (&'static str, u64, Vec<u32>)> = BTreeMap::new();
    for (i, s) in snaps.iter().enumerate() {
        let Some(m) = finder.matches(s.root_tree)? else {
            continue;
        };
        each_match(&m, Path::new("/"), &mut |path, kind, size| {
            if full.as_ref().is_some_and(|f| !f.is_match(path)) {
                return;
            }
            let e = by_path
                .entry(path.to_path_buf())
                .or_insert_with(|| ("", 0, Vec::new()));
            e.0 = kind.name();
            e.1 = size;
            e.2.push(i as u32);
        });
    }
    Ok(by_path
        .into_iter()
        .map(|(path, (kind, size, idx))| FindMatch {
            path,
            kind,
            size,
            snapshots: idx
                .into_iter()
                .map(|i| snaps[i as usize].name.clone())
                .collect(),
        })
        .collect())
}
