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

/// Decode a snapshot or forget record stored as chunk `hash`. Every field
/// must decode and nothing may follow: a record that does not decode is
/// damaged, not a snapshot with empty fields. The name is not judged here:
/// the importer checks it as ingest does before it becomes a mount directory.
pub fn decode_record(data: &[u8], hash: Hash) -> Result<Record> {
    decode_record_fields(data, hash).map_err(|e| match e {
        Error::Corrupt(m) => Error::corrupt(format!("snapshot record {hash}: {m}")),
        e => e,
    })
}

fn decode_record_fields(data: &[u8], hash: Hash) -> Result<Record> {
    let damaged = Error::corrupt;
    let mut d = Decoder::new(data);
    let record = match d.u8()? {
        RECORD_SNAPSHOT => {
            let utf8 = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let name = utf8(d.bytes()?);
            let started_ns = d.i64()?;
            let finished_ns = d.i64()?;
            let host = utf8(d.bytes()?);
            let sources = decode_paths(d.bytes()?)?;
            let tags: Vec<String> = serde_json::from_slice(d.bytes()?)
                .map_err(|e| damaged(format!("tags do not decode: {e}")))?;
            let root = TreeHash(d.hash()?);
            let _nodes = d.u64()?;
            let files = d.u64()?;
            let dirs = d.u64()?;
            let size = d.u64()?;
            let read_bytes = d.u64()?;
            let warnings = d.u64()?;
            Record::Snapshot {
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
                    damage: None,
                }),
                root,
            }
        }
        RECORD_FORGET => {
            let _when = d.i64()?;
            let n = d.count(Hash::LEN)?;
            Record::Forget((0..n).map(|_| d.hash()).collect::<Result<_>>()?)
        }
        t => return Err(damaged(format!("unknown record type {t}"))),
    };
    d.finish("record")?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::codec::mutate;
    use proptest::prelude::*;

    fn row() -> SnapshotRow {
        SnapshotRow {
            id: SnapshotId(0),
            hash: Hash::default(),
            name: "2024-01-02T03-04-05".into(),
            started_ns: -1,
            finished_ns: 2,
            host: "host".into(),
            sources: vec![PathBuf::from("/home")],
            tags: vec!["daily".into()],
            root_tree: TreeId(0),
            files: 1,
            dirs: 2,
            size: 3,
            added_bytes: 0,
            read_bytes: 4,
            warnings: 5,
            change_share: 0.0,
            alarm: false,
            damage: None,
        }
    }

    fn record() -> Vec<u8> {
        encode_record(&row(), &TreeHash(Hash::of(b"root")), 9, &[1, 2, 3, 4, 5])
    }

    #[test]
    fn records_round_trip() {
        let Record::Snapshot { row: r, root } = decode_record(&record(), Hash::default()).unwrap()
        else {
            panic!("not a snapshot record");
        };
        assert_eq!(
            (r.name.as_str(), r.tags.clone(), root),
            (
                "2024-01-02T03-04-05",
                vec!["daily".to_string()],
                TreeHash(Hash::of(b"root"))
            )
        );
        let f = encode_forget_record(&[Hash::of(b"a"), Hash::of(b"b")], 3);
        assert!(
            matches!(decode_record(&f, Hash::default()).unwrap(), Record::Forget(h) if h.len() == 2)
        );
    }

    #[test]
    fn undecodable_tags_are_an_error_not_empty() {
        let mut r = row();
        r.tags = vec!["x".into()];
        let good = record();
        let bad = encode_record(&r, &TreeHash(Hash::of(b"root")), 9, &[1, 2, 3, 4, 5]);
        assert!(decode_record(&bad, Hash::default()).is_ok());
        // Replace the tags' JSON `["daily"]` by bytes of the same length
        // that are not JSON.
        let at = good.windows(9).position(|w| w == b"[\"daily\"]").unwrap();
        let mut broken = good.clone();
        broken[at..at + 9].copy_from_slice(b"{{{{{{{{{");
        let err = decode_record(&broken, Hash::of(b"r"))
            .err()
            .expect("accepted");
        assert!(err.to_string().contains("tags"), "{err}");
        assert!(err.to_string().contains(&Hash::of(b"r").to_hex()), "{err}");
    }

    #[test]
    fn trailing_bytes_and_huge_forget_counts_are_errors() {
        let mut r = record();
        r.push(0);
        assert!(decode_record(&r, Hash::default()).is_err());
        let mut e = Encoder::new();
        e.u8(RECORD_FORGET);
        e.i64(0);
        e.u64(u64::MAX);
        assert!(decode_record(&e.buf, Hash::default()).is_err());
        assert!(decode_record(&[9], Hash::default()).is_err());
        assert!(decode_record(&[], Hash::default()).is_err());
    }

    proptest! {
        #![proptest_config(mutate::config())]

        #[test]
        fn decode_record_never_panics_on_arbitrary_bytes(b in mutate::bytes()) {
            let _ = decode_record(&b, Hash::default());
        }

        #[test]
        fn damaged_records_decode_or_fail(b in mutate::damaged(record())) {
            let _ = decode_record(&b, Hash::default());
        }

        #[test]
        fn damaged_forget_records_decode_or_fail(
            b in mutate::damaged(encode_forget_record(&[Hash::of(b"a"), Hash::of(b"b")], 7))
        ) {
            let _ = decode_record(&b, Hash::default());
        }
    }
}
