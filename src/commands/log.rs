//! `snapfs log PATH`: the versions of one path across all snapshots, and
//! when it was created, changed, deleted and recreated.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::format::tree::Kind;
use crate::repo::Repository;
use crate::repo::history::{
    NamedVersion, VersionKey, entries_at, named_versions, sort_by_time, version_key,
};

#[derive(Clone, Debug, Serialize)]
pub struct LogVersion {
    /// Name of the version in the mount's history view.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub size: u64,
    pub mtime: String,
    pub first_snapshot: String,
    pub snapshots: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LogEvent {
    pub snapshot: String,
    pub time: String,
    /// "created", "changed", "deleted", "recreated".
    pub event: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct Log {
    pub path: String,
    pub versions: Vec<LogVersion>,
    pub events: Vec<LogEvent>,
}

/// `snapfs log PATH`.
pub fn log(repo: &Repository, path: &Path) -> Result<Log> {
    let cat = repo.catalog()?;
    let mut snaps = cat.snapshots()?;
    sort_by_time(&mut snaps);
    let found = entries_at(&cat, &snaps, path)?;
    let name = path
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_default();
    let versions = named_versions(&cat, &snaps, &found, &name)?
        .into_iter()
        .map(|NamedVersion { name, version: v }| LogVersion {
            name: String::from_utf8_lossy(&name).into_owned(),
            kind: v.found.node.kind.name(),
            size: v.found.node.meta.size,
            mtime: crate::time::rfc3339_secs(v.found.node.meta.mtime.secs),
            first_snapshot: snaps[v.first].name.clone(),
            snapshots: v.snapshots.iter().map(|&i| snaps[i].name.clone()).collect(),
        })
        .collect();
    let mut events = Vec::new();
    let mut prev: Option<VersionKey> = None;
    let mut ever = false;
    for (i, f) in found.iter().enumerate() {
        let key = f.as_ref().map(|f| {
            if f.node.kind == Kind::Dir {
                VersionKey::Special(Kind::Dir as u8, 0)
            } else {
                version_key(&f.node)
            }
        });
        let event = match (&prev, &key) {
            (None, Some(_)) if ever => Some("recreated"),
            (None, Some(_)) => Some("created"),
            (Some(_), None) => Some("deleted"),
            (Some(a), Some(b)) if a != b => Some("changed"),
            _ => None,
        };
        if let Some(event) = event {
            events.push(LogEvent {
                snapshot: snaps[i].name.clone(),
                time: crate::time::rfc3339(snaps[i].started_ns),
                event,
            });
        }
        ever |= key.is_some();
        prev = key;
    }
    if !ever {
        return Err(crate::Error::NoSuchPath {
            snapshot: "any snapshot".into(),
            path: path.to_path_buf(),
        });
    }
    Ok(Log {
        path: path.display().to_string(),
        versions,
        events,
    })
}
