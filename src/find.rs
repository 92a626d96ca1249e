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

use crate::catalog::{Catalog, Node};
use crate::error::{Error, Result};
use crate::ids::TreeId;
use crate::repo::Repository;

#[derive(Clone, Debug, Serialize)]
pub struct FindMatch {
    #[serde(serialize_with = "crate::report::lossy_path")]
    pub path: PathBuf,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Size in the newest snapshot holding the path.
    pub size: u64,
    /// Snapshots holding the path, oldest first.
    pub snapshots: Vec<String>,
}

type Matches = Arc<Vec<(PathBuf, Node)>>;

struct Finder<'a> {
    cat: &'a Catalog,
    name: GlobMatcher,
    memo: HashMap<TreeId, Matches>,
}

impl Finder<'_> {
    /// Matches beneath `tree`, paths relative to it.
    fn matches(&mut self, tree: TreeId) -> Result<Matches> {
        if let Some(m) = self.memo.get(&tree) {
            return Ok(m.clone());
        }
        let mut out = Vec::new();
        for n in self.cat.entries(tree)? {
            let rel = PathBuf::from(OsStr::from_bytes(&n.name));
            if let Some(sub) = n.subtree {
                for (p, m) in self.matches(sub)?.iter() {
                    out.push((rel.join(p), m.clone()));
                }
            }
            if self.name.is_match(OsStr::from_bytes(&n.name)) {
                out.push((rel, n));
            }
        }
        let out = Arc::new(out);
        self.memo.insert(tree, out.clone());
        Ok(out)
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
        Some(r) => vec![crate::snapshot::resolve(&cat, r)?],
        None => cat.snapshots()?,
    };
    snaps.sort_by_key(|s| (s.started_ns, s.id.0));
    let mut by_path: BTreeMap<PathBuf, FindMatch> = BTreeMap::new();
    for s in &snaps {
        for (rel, n) in finder.matches(s.root_tree)?.iter() {
            let path = Path::new("/").join(rel);
            if full.as_ref().is_some_and(|f| !f.is_match(&path)) {
                continue;
            }
            let m = by_path.entry(path.clone()).or_insert_with(|| FindMatch {
                path,
                kind: crate::diff::kind_name(n.kind),
                size: 0,
                snapshots: Vec::new(),
            });
            m.kind = crate::diff::kind_name(n.kind);
            m.size = n.meta.size;
            m.snapshots.push(s.name.clone());
        }
    }
    Ok(by_path.into_values().collect())
}
