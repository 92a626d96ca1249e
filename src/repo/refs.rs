//! Snapshot references as users type them: a name, an id or a unique prefix
//! of it, `latest`, or `latest~N` (N snapshots before the newest).

use crate::error::{Error, Result};
use crate::format::record::SnapshotRow;
use crate::repo::catalog::Catalog;

pub fn resolve(cat: &Catalog, reference: &str) -> Result<SnapshotRow> {
    let not_found = || Error::NoSuchSnapshot(reference.to_string());
    if let Some(s) = cat.snapshot_by_name(reference)? {
        return Ok(s);
    }
    let all = cat.snapshots()?;
    if let Some(back) = reference.strip_prefix("latest") {
        let n: usize = match back {
            "" => 0,
            b => b
                .strip_prefix('~')
                .and_then(|n| n.parse().ok())
                .ok_or_else(not_found)?,
        };
        return all.into_iter().rev().nth(n).ok_or_else(not_found);
    }
    let lower = reference.to_ascii_lowercase();
    if lower.len() >= 4 && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        let matches: Vec<SnapshotRow> = all
            .into_iter()
            .filter(|s| s.hash.to_hex().starts_with(&lower))
            .collect();
        return match matches.len() {
            0 => Err(not_found()),
            1 => Ok(matches.into_iter().next().expect("one match")),
            _ => Err(Error::AmbiguousSnapshot(
                reference.to_string(),
                matches
                    .iter()
                    .map(|s| s.name.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        };
    }
    Err(not_found())
}

/// Short form of a snapshot id for listings.
pub fn short_id(s: &SnapshotRow) -> String {
    s.hash.to_hex()[..8].to_string()
}
