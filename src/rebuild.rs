//! `snapfs rebuild-catalog`: a new catalog from the packs alone, for the day
//! catalog.db is lost or damaged. The old file is kept aside, never
//! overwritten.
//!
//! Packs describe their own chunks (the chunk index); trees and snapshot
//! records are metadata chunks in them (trees, entries, contents,
//! snapshots); forget records keep forgotten snapshots forgotten.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::catalog::Catalog;
use crate::error::{Error, IoContext, Result};
use crate::ids::Hash;
use crate::import::Importer;
use crate::pack::ChunkKind;
use crate::repo::Repository;
use crate::snapshot::{Record, decode_record};

#[derive(Clone, Debug, Default, Serialize)]
pub struct RebuildStats {
    /// Where the previous catalog was moved, if there was one.
    #[serde(serialize_with = "crate::report::lossy_path_opt")]
    pub old_catalog: Option<PathBuf>,
    pub packs: u64,
    pub unreadable_packs: u64,
    pub chunks: u64,
    pub snapshots: u64,
    pub forgotten: u64,
    pub problems: Vec<String>,
    pub seconds: f64,
}

pub fn rebuild_catalog(repo: &Repository) -> Result<RebuildStats> {
    let t0 = Instant::now();
    let _lock = repo.lock("rebuild-catalog")?;
    let mut stats = RebuildStats::default();
    let path = repo.catalog_path();
    if path.exists() {
        let aside = repo.root.join(format!(
            "catalog.db.before-rebuild-{}",
            crate::time::snapshot_stamp(crate::time::now_ns())
        ));
        if aside.exists() {
            return Err(Error::invalid(format!(
                "{} exists already; move it away first",
                aside.display()
            )));
        }
        std::fs::rename(&path, &aside).at(&path)?;
        for ext in ["-wal", "-shm"] {
            let side = PathBuf::from(format!("{}{ext}", path.display()));
            if side.exists() {
                std::fs::rename(&side, format!("{}{ext}", aside.display())).at(&side)?;
            }
        }
        stats.old_catalog = Some(aside);
    }
    let cat = Catalog::open(&path, true)?;
    cat.begin()?;
    for name in repo.backend.list()? {
        match repo.read_pack_table(&name) {
            Ok((size, entries)) => {
                stats.chunks += entries.len() as u64;
                cat.add_pack(&name, size, &entries)?;
                stats.packs += 1;
            }
            Err(e) => {
                stats.unreadable_packs += 1;
                stats.problems.push(format!("pack {name}: {e}"));
            }
        }
    }
    // Snapshot records, minus the forgotten ones.
    let mut records = Vec::new();
    let mut forgotten: HashSet<Hash> = HashSet::new();
    for id in cat.chunk_ids_of_kind(ChunkKind::Snapshot)? {
        let read = cat
            .chunk_loc(&id)?
            .ok_or_else(|| Error::corrupt(format!("chunk {id} vanished")))
            .and_then(|loc| repo.read_chunk(&id, &loc))
            .and_then(|b| decode_record(&b, id.0));
        match read {
            Ok(Record::Snapshot { row, .. }) => {
                records.push((row.started_ns, row.name.clone(), id))
            }
            Ok(Record::Forget(hashes)) => {
                cat.add_tombstone(&id)?;
                forgotten.extend(hashes);
            }
            Err(e) => stats.problems.push(format!("snapshot record {id}: {e}")),
        }
    }
    records.sort();
    let mut importer = Importer::new(repo, &cat);
    for (_, name, id) in records {
        if forgotten.contains(&id.0) {
            stats.forgotten += 1;
            continue;
        }
        match importer.snapshot(&id, 0) {
            Ok(Some(_)) => stats.snapshots += 1,
            Ok(None) => {}
            Err(e) => stats.problems.push(format!("snapshot {name}: {e}")),
        }
    }
    stats.problems.append(&mut importer.problems);
    cat.commit()?;
    cat.checkpoint();
    stats.seconds = t0.elapsed().as_secs_f64();
    Ok(stats)
}
