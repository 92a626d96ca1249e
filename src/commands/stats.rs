//! `snapfs stats`: sizes and ratios of the repository, or of one snapshot.

use serde::Serialize;

use crate::error::Result;
use crate::repo::Repository;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    pub snapshots: u64,
    /// Sum of the logical sizes of the snapshots considered.
    pub logical_bytes: u64,
    /// Distinct file data, uncompressed.
    pub unique_raw_bytes: u64,
    /// Distinct file data as stored (compressed).
    pub stored_data_bytes: u64,
    /// Size of all pack files (data and metadata).
    pub pack_bytes: u64,
    pub chunks: u64,
    /// logical / unique raw: how much deduplication saves.
    pub dedup_ratio: f64,
    /// unique raw / stored: how much compression saves.
    pub compression_ratio: f64,
    /// For one snapshot: its name, and the stored bytes only it references
    /// (what forgetting it and running gc would free).
    pub snapshot: Option<String>,
    pub unique_bytes: Option<u64>,
    pub added_bytes: Option<u64>,
}

pub fn stats(repo: &Repository, snapshot: Option<&str>) -> Result<Stats> {
    let cat = repo.catalog()?;
    let (raw, stored, chunks) = cat.data_totals()?;
    let mut s = Stats {
        unique_raw_bytes: raw,
        stored_data_bytes: stored,
        pack_bytes: cat.stored_bytes()?,
        chunks,
        ..Default::default()
    };
    match snapshot {
        None => {
            let all = cat.snapshots()?;
            s.snapshots = all.len() as u64;
            s.logical_bytes = all.iter().map(|r| r.size).sum();
        }
        Some(r) => {
            let snap = crate::repo::refs::resolve(&cat, r)?;
            s.snapshots = 1;
            s.logical_bytes = snap.size;
            s.snapshot = Some(snap.name.clone());
            s.added_bytes = Some(snap.added_bytes);
            // Its temporary tables are dropped with the transaction.
            let tx = cat.transaction()?;
            s.unique_bytes = Some(tx.unique_bytes(snap.id)?);
            drop(tx);
        }
    }
    s.dedup_ratio = s.logical_bytes as f64 / s.unique_raw_bytes.max(1) as f64;
    s.compression_ratio = s.unique_raw_bytes as f64 / s.stored_data_bytes.max(1) as f64;
    Ok(s)
}
