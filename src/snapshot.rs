//! Snapshot references as users type them: a name, an id or a unique prefix
//! of it, `latest`, or `latest~N` (N snapshots before the newest).

use crate::catalog::{Catalog, SnapshotRow, decode_paths, encode_paths};
use crate::codec::{Decoder, Encoder};
use crate::error::{Error, Result};
use crate::ids::{Hash, SnapshotId, TreeHash, TreeId};

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

const RECORD_SNAPSHOT: u8 = 1;
const RECORD_FORGET: u8 = 2;

/// A snapshot's own record, stored in a pack so a lost catalog can be rebuilt.
/// `counts`: files, dirs, size, bytes read, warnings.
pub fn encode_record(row: &SnapshotRow, root: &TreeHash, nodes: u64, counts: &[u64; 5]) -> Vec<u8> {
    let mut e = Encoder::new();
    e.u8(RECORD_SNAPSHOT);
    e.bytes(row.name.as_bytes());
    e.i64(row.started_ns);
    e.i64(row.finished_ns);
    e.bytes(row.host.as_bytes());
    e.bytes(&encode_paths(&row.sources));
    e.bytes(
        serde_json::to_string(&row.tags)
            .expect("tags serialize")
            .as_bytes(),
    );
    e.hash(&root.0);
    e.u64(nodes);
    for v in counts {
        e.u64(*v);
    }
    e.buf
}

/// A record saying which snapshots were forgotten, so that a catalog rebuilt
/// from packs does not bring them back.
pub fn encode_forget_record(hashes: &[Hash], when_ns: i64) -> Vec<u8> {
    let mut e = Encoder::new();
    e.u8(RECORD_FORGET);
    e.i64(when_ns);
    e.u64(hashes.len() as u64);
    for h in hashes {
        e.hash(h);
    }
    e.buf
}

pub enum Record {
    Snapshot {
        row: Box<SnapshotRow>,
        root: TreeHash,
    },
    Forget(Vec<Hash>),
}

pub fn decode_record(data: &[u8], hash: Hash) -> Result<Record> {
    let mut d = Decoder::new(data);
    match d.u8()? {
        RECORD_SNAPSHOT => {
            let utf8 = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let name = utf8(d.bytes()?);
            let started_ns = d.i64()?;
            let finished_ns = d.i64()?;
            let host = utf8(d.bytes()?);
            let sources = decode_paths(d.bytes()?)?;
            let tags: Vec<String> = serde_json::from_slice(d.bytes()?).unwrap_or_default();
            let root = TreeHash(d.hash()?);
            let _nodes = d.u64()?;
            let files = d.u64()?;
            let dirs = d.u64()?;
            let size = d.u64()?;
            let read_bytes = d.u64()?;
            let warnings = d.u64()?;
            Ok(Record::Snapshot {
                row: Box::new(SnapshotRow {
                    id: SnapshotId(0),
                    hash,
                    name,
                    started_ns,
                    finished_ns,
                    host,
                    sources,
                    tags,
                    root_tree: TreeId(0),
                    files,
                    dirs,
                    size,
                    added_bytes: 0,
                    read_bytes,
                    warnings,
                    change_share: 0.0,
                    alarm: false,
                }),
                root,
            })
        }
        RECORD_FORGET => {
            let _when = d.i64()?;
            let n = d.u64()?;
            (0..n)
                .map(|_| d.hash())
                .collect::<Result<_>>()
                .map(Record::Forget)
        }
        t => Err(Error::corrupt(format!("unknown snapshot record type {t}"))),
    }
}
