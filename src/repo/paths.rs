//! Paths inside snapshots: split into names, found in a snapshot's tree,
//! and shown (names are bytes; JSON and messages are text).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::names::check_name;
use crate::ids::TreeId;
use crate::repo::catalog::{Catalog, Node};

/// Split an absolute path into its names.
pub fn components(path: &Path) -> Vec<Vec<u8>> {
    path.components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.as_bytes().to_vec()),
            _ => None,
        })
        .collect()
}

/// What a path inside a snapshot names: the snapshot root or one entry.
pub enum Located {
    Root(TreeId),
    Entry(Box<Node>),
}

/// Find `path` inside a snapshot. `..` is refused rather than skipped, and
/// the names met on the way are checked like every other name from the
/// catalog (the entry found names the file restored into a directory).
pub fn locate(cat: &Catalog, root: TreeId, snapshot: &str, path: &Path) -> Result<Located> {
    let mut tree = root;
    let mut found: Option<Node> = None;
    let mut parent = PathBuf::from("/");
    let missing = || Error::NoSuchPath {
        snapshot: snapshot.into(),
        path: path.into(),
    };
    for c in path.components() {
        let name = match c {
            std::path::Component::Normal(name) => name,
            std::path::Component::ParentDir => {
                return Err(Error::invalid(format!(
                    "{}: `..` is not allowed in a path inside a snapshot",
                    path.display()
                )));
            }
            _ => continue,
        };
        check_name(snapshot, &parent, name.as_bytes())?;
        if let Some(n) = &found {
            tree = n.subtree.ok_or_else(missing)?;
        }
        let n = cat.entry(tree, name.as_bytes())?.ok_or_else(missing)?;
        check_name(snapshot, &parent, &n.name)?;
        parent.push(OsStr::from_bytes(&n.name));
        found = Some(n);
    }
    Ok(match found {
        Some(n) => Located::Entry(Box::new(n)),
        None => Located::Root(root),
    })
}

/// Display helper for byte names.
pub fn lossy(name: &[u8]) -> String {
    OsStr::from_bytes(name).to_string_lossy().into_owned()
}

/// Paths in JSON: names are bytes, JSON strings are UTF-8, so bytes that are
/// not UTF-8 show as U+FFFD (the human output and the mount keep them exact).
pub fn lossy_path<S: serde::Serializer>(p: &std::path::Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

pub fn lossy_path_opt<S: serde::Serializer>(
    p: &Option<std::path::PathBuf>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_str(&p.to_string_lossy()),
        None => s.serialize_none(),
    }
}
