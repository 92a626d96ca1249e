//! `snapfs ingest`: make one snapshot of some source paths.
//!
//! The walk (`walk`) reads sources and builds trees; the pipeline
//! (`pipeline`) compresses and packs new chunks on every core. A snapshot
//! appears in one final commit, after every pack it uses is durable.

pub mod pipeline;
mod sparse;
pub mod walk;

use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::format::pack::ChunkKind;
use crate::format::record::SnapshotRow;
use crate::ids::SnapshotId;
use crate::repo::Repository;
use crate::repo::catalog::Catalog;
use pipeline::{Pipeline, PipelineOptions};
use walk::{Plan, WalkOptions, Walker};

use crate::format::record::check_snapshot_name;

#[derive(Clone, Debug, Default)]
pub struct IngestOptions {
    pub name: Option<String>,
    pub tags: Vec<String>,
    pub excludes: Vec<String>,
    pub exclude_files: Vec<PathBuf>,
    pub exclude_caches: bool,
    pub one_file_system: bool,
    /// zstd level; None for the repository's default.
    pub compression: Option<i32>,
    /// Store standard input as one file at this path instead of walking sources.
    pub stdin_name: Option<PathBuf>,
}

/// Something the user should know about that did not stop the snapshot.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Warning {
    Unreadable {
        #[serde(serialize_with = "crate::repo::paths::lossy_path")]
        path: PathBuf,
        error: String,
    },
    Vanished {
        #[serde(serialize_with = "crate::repo::paths::lossy_path")]
        path: PathBuf,
    },
    Changed {
        #[serde(serialize_with = "crate::repo::paths::lossy_path")]
        path: PathBuf,
    },
    /// What the previous snapshot recorded for the path does not decode;
    /// it was read from disk instead of being reused.
    DamagedPrevious {
        #[serde(serialize_with = "crate::repo::paths::lossy_path")]
        path: PathBuf,
        what: &'static str,
        error: String,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::Unreadable { path, error } => {
                write!(f, "{}: not backed up: {error}", path.display())
            }
            Warning::Vanished { path } => {
                write!(
                    f,
                    "{}: vanished while the snapshot was made; skipped",
                    path.display()
                )
            }
            Warning::Changed { path } => write!(
                f,
                "{}: changed while being read; kept as read (the next snapshot reads it again)",
                path.display()
            ),
            Warning::DamagedPrevious { path, what, error } => write!(
                f,
                "{}: the previous snapshot's {what} do not decode ({error}); read from disk instead",
                path.display()
            ),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct IngestStats {
    pub snapshot_id: String,
    pub snapshot_name: String,
    pub files: u64,
    pub dirs: u64,
    /// Logical bytes of file content in the snapshot.
    pub size: u64,
    /// Bytes read from source files (0 when nothing changed).
    pub bytes_read: u64,
    /// Bytes of holes in sparse files, recorded without reading them.
    pub hole_bytes: u64,
    /// Files reused from the previous snapshot without reading.
    pub reused_files: u64,
    pub new_chunks: u64,
    /// Bytes of new packs written to the repository.
    pub added_bytes: u64,
    pub skipped_sockets: u64,
    /// Files of the previous snapshot read again because they changed.
    pub changed: u64,
    /// Entries of the previous snapshot that are gone.
    pub deleted: u64,
    /// (changed + deleted) / entries of the previous snapshot.
    pub change_share: f64,
    /// The change share is far above this source's usual level: look with
    /// `snapfs diff` (mass encryption by ransomware looks exactly like this).
    pub alarm: bool,
    pub unreadable: u64,
    pub warnings: Vec<Warning>,
    pub seconds: f64,
}

fn build_excludes(opts: &IngestOptions) -> Result<(GlobSet, GlobSet)> {
    let mut patterns = opts.excludes.clone();
    for f in &opts.exclude_files {
        let text = std::fs::read_to_string(f).at(f)?;
        patterns.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
    }
    let mut paths = GlobSetBuilder::new();
    let mut names = GlobSetBuilder::new();
    for p in patterns {
        let p = p.trim_end_matches('/');
        let glob = GlobBuilder::new(p)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| Error::invalid(format!("bad --exclude pattern {p:?}: {e}")))?;
        // A pattern with a slash names paths; one without, names anywhere.
        if p.contains('/') {
            paths.add(glob);
        } else {
            names.add(glob);
        }
    }
    let build = |b: GlobSetBuilder| b.build().map_err(|e| Error::invalid(e.to_string()));
    Ok((build(paths)?, build(names)?))
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buffer and length match.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn choose_name(cat: &Catalog, wanted: Option<&str>, started_ns: i64) -> Result<String> {
    if let Some(n) = wanted {
        check_snapshot_name(n)?;
        if cat.name_taken(n)? {
            return Err(Error::invalid(format!(
                "a snapshot named {n:?} exists already"
            )));
        }
        return Ok(n.to_string());
    }
    let base = crate::time::snapshot_stamp(started_ns);
    let mut name = base.clone();
    let mut i = 2;
    while cat.name_taken(&name)? {
        name = format!("{base}-{i}");
        i += 1;
    }
    Ok(name)
}

/// Absolute, normalized source paths (symlinks are not followed).
pub fn absolute_sources(sources: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let cwd = std::env::current_dir().at(".")?;
    let mut out = Vec::new();
    for s in sources {
        let abs = if s.is_absolute() {
            s.clone()
        } else {
            cwd.join(s)
        };
        let mut norm = PathBuf::from("/");
        for c in abs.components() {
            match c {
                std::path::Component::ParentDir => {
                    norm.pop();
                }
                std::path::Component::Normal(n) => norm.push(n),
                _ => {}
            }
        }
        std::fs::symlink_metadata(&norm).map_err(|e| {
            Error::invalid(format!(
                "source {}: {e}; nothing was written",
                norm.display()
            ))
        })?;
        out.push(norm);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

pub fn ingest(repo: &Repository, sources: &[PathBuf], opts: &IngestOptions) -> Result<IngestStats> {
    let t0 = Instant::now();
    let started_ns = crate::time::now_ns();
    // A stdin snapshot records where its stream lies in the snapshot as its
    // source: retention groups snapshots by (host, sources), and two
    // streams (db1.sql, db2.sql) must never share one group.
    let sources = if let Some(n) = &opts.stdin_name {
        let mut at = PathBuf::from("/");
        for c in crate::repo::paths::components(n) {
            at.push(std::ffi::OsStr::from_bytes(&c));
        }
        vec![at]
    } else {
        if sources.is_empty() {
            return Err(Error::invalid(
                "nothing to back up: name at least one SOURCE, or --stdin",
            ));
        }
        absolute_sources(sources)?
    };
    let (excludes, exclude_names) = build_excludes(opts)?;
    let level = opts.compression.unwrap_or(repo.config.compression);
    let host = hostname();

    let _lock = repo.lock("ingest")?;
    let cat = repo.catalog()?;
    let name = choose_name(&cat, opts.name.as_deref(), started_ns)?;
    // Committed at the end (and at the walk's checkpoints, which commit
    // and begin again on the same connection); rolled back if dropped.
    let tx = cat.transaction()?;
    // In a store, the catch-up as the command opened the repository
    // indexed every pack there, a killed ingest's included: listing the
    // store again would only cost its round trips.
    let adopted = if repo.synced_at_open() {
        0
    } else {
        repo.adopt_orphan_packs(&cat)?
    };
    if adopted > 0 {
        log::info!("indexed {adopted} pack(s) left by an interrupted command");
    }
    let prev = if opts.stdin_name.is_some() {
        None
    } else {
        cat.previous_snapshot(&host, &sources)?
    };

    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let pipe = Pipeline::start(
        repo.backend.clone(),
        PipelineOptions {
            level,
            workers,
            pack_size: repo.config.pack_size,
            tmp_dir: repo.tmp_dir(),
            keying: repo.keying.clone(),
        },
    )?;
    let wopts = WalkOptions {
        excludes,
        exclude_names,
        exclude_caches: opts.exclude_caches,
        one_file_system: opts.one_file_system,
        chunker: repo.config.chunker,
    };
    let mut stats = IngestStats::default();
    let result = (|| -> Result<SnapshotId> {
        let progress = crate::commands::progress::Progress::new("ingest", "files", None);
        let mut w = Walker::new(
            &cat,
            &pipe,
            &wopts,
            &mut stats,
            &progress,
            repo.keying.clone(),
        );
        let plan = match &opts.stdin_name {
            Some(n) => Plan::for_stdin(n),
            None => Plan::for_sources(&sources),
        };
        let root = w.walk_plan(Path::new("/"), &plan, prev.as_ref().map(|p| p.root_tree), 0)?;
        let links = std::mem::take(&mut w.links);
        let finished_ns = crate::time::now_ns();
        let mut row = SnapshotRow {
            hash: Default::default(),
            finished_ns,
            host: host.clone(),
            sources: sources.clone(),
            tags: opts.tags.clone(),
            owners: crate::commands::owners::names_of(&w.uids, &w.gids),
            ..SnapshotRow::new(name.clone(), started_ns, root.id)
        };
        // Everything the snapshot needs is stored first; then, before its
        // record goes, the lease must not have lapsed meanwhile.
        w.checkpoint()?;
        repo.check_lease_unbroken()?;
        let record = crate::format::record::encode_record(
            &row,
            &root.hash,
            root.nodes,
            &[
                w.stats.files,
                w.stats.dirs,
                w.stats.size,
                w.stats.bytes_read,
                w.stats.warnings.len() as u64,
            ],
        );
        row.hash = w.put_chunk(ChunkKind::Snapshot, &record)?.0;
        w.checkpoint()?;
        let s = &*w.stats;
        row.files = s.files;
        row.dirs = s.dirs;
        row.size = s.size;
        row.added_bytes = s.added_bytes;
        row.read_bytes = s.bytes_read;
        row.warnings = s.warnings.len() as u64;
        if let Some(p) = &prev {
            let base = (p.files + p.dirs).max(1) as f64;
            row.change_share = ((s.changed + s.deleted) as f64 / base).min(1.0);
            let recent = cat.recent_snapshots(&host, &sources, 6)?;
            // The first of these is `prev`, whose own share describes its change.
            let usual: Vec<f64> = recent.iter().map(|r| r.change_share).collect();
            let usual = if usual.is_empty() {
                0.0
            } else {
                usual.iter().sum::<f64>() / usual.len() as f64
            };
            row.alarm = change_alarm(row.change_share, usual, s.changed + s.deleted);
        }
        let id = cat.add_snapshot(&row)?;
        for (key, (first, count)) in links {
            if count > 1 {
                cat.add_hardlink(id, key, first, count)?;
            }
        }
        tx.commit()?;
        stats.snapshot_id = row.hash.to_hex();
        stats.change_share = row.change_share;
        stats.alarm = row.alarm;
        Ok(id)
    })();
    match result {
        Ok(_) => {
            pipe.finish();
            cat.checkpoint();
            stats.snapshot_name = name;
            stats.seconds = t0.elapsed().as_secs_f64();
            Ok(stats)
        }
        Err(e) => {
            pipe.finish();
            Err(e)
        }
    }
}

/// Far above the usual level: at least 30% of the previous snapshot changed
/// or vanished, when usually under 5% does (or over six times the usual);
/// and at least 10 entries, so a handful of edits in a tiny tree is no alarm.
pub fn change_alarm(share: f64, usual: f64, entries: u64) -> bool {
    entries >= 10 && share >= 0.30 && (usual < 0.05 || share > 6.0 * usual)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_alarm_fires_only_far_above_the_usual_level() {
        assert!(change_alarm(0.9, 0.01, 900));
        assert!(change_alarm(0.3, 0.0, 30));
        assert!(!change_alarm(0.2, 0.0, 200));
        assert!(!change_alarm(0.5, 0.4, 500));
        assert!(change_alarm(0.95, 0.1, 95));
        assert!(!change_alarm(0.4, 0.0, 2));
    }
}
