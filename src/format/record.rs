//! Snapshot records: what a snapshot is (name, times, host, sources, tags,
//! root tree, counts), as stored in a pack so that a lost catalog can be
//! rebuilt, and the records that forget snapshots.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::format::codec::{Decoder, Encoder};
use crate::ids::{Hash, SnapshotId, TreeHash, TreeId};

/// A snapshot as listed.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotRow {
    pub id: SnapshotId,
    /// Id of the snapshot's record in the packs; shown to users as its id.
    pub hash: Hash,
    pub name: String,
    pub started_ns: i64,
    pub finished_ns: i64,
    pub host: String,
    pub sources: Vec<PathBuf>,
    pub tags: Vec<String>,
    pub root_tree: TreeId,
    pub files: u64,
    pub dirs: u64,
    pub size: u64,
    pub added_bytes: u64,
    pub read_bytes: u64,
    pub warnings: u64,
    pub change_share: f64,
    pub alarm: bool,
    /// The names of the users and groups that own entries of the snapshot,
    /// as the machine it was taken on called them: a restore elsewhere
    /// gives files to the same names (as tar and borg do).
    pub owners: Owners,
    /// Set when the row's `sources` or `tags` column did not decode. The
    /// field that did not is empty and means nothing: whatever needs the
    /// values calls [`SnapshotRow::decoded`], which names the snapshot, and
    /// a listing marks the row. The rest of the row (its tree, its times)
    /// is intact, so the snapshot can still be restored, mounted, copied or
    /// forgotten by name.
    pub damage: Option<RowDamage>,
}

/// User and group names by numeric id, each list sorted by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owners {
    pub users: Vec<(u32, Vec<u8>)>,
    pub groups: Vec<(u32, Vec<u8>)>,
}

/// The longest user or group name kept (Linux allows 32 bytes; some
/// directories allow more).
pub const MAX_OWNER_NAME: usize = 255;

impl Owners {
    pub fn encode(&self, e: &mut Encoder) {
        for list in [&self.users, &self.groups] {
            e.u64(list.len() as u64);
            for (id, name) in list {
                e.u64(u64::from(*id));
                e.bytes(name);
            }
        }
    }

    /// Two lists of (id, name), ids strictly rising, names non-empty and
    /// short, without NUL, ':' or '/' (none of them can be in a name the
    /// system's databases hold).
    pub fn decode(d: &mut Decoder) -> Result<Owners> {
        let mut lists = [Vec::new(), Vec::new()];
        for list in &mut lists {
            let n = d.count(2)?;
            for _ in 0..n {
                let id = d.u32()?;
                let name = d.bytes()?;
                if list.last().is_some_and(|(prev, _)| *prev >= id) {
                    return Err(Error::corrupt(format!(
                        "owner {id}: ids are duplicated or out of order"
                    )));
                }
                if name.is_empty()
                    || name.len() > MAX_OWNER_NAME
                    || name.iter().any(|b| matches!(b, 0 | b':' | b'/' | b'\n'))
                {
                    return Err(Error::corrupt(format!(
                        "owner {id}: \"{}\" cannot be a user or group name",
                        name.escape_ascii()
                    )));
                }
                list.push((id, name.to_vec()));
            }
        }
        let [users, groups] = lists;
        Ok(Owners { users, groups })
    }

    pub fn user(&self, id: u32) -> Option<&[u8]> {
        let i = self.users.binary_search_by_key(&id, |(u, _)| *u).ok()?;
        Some(&self.users[i].1)
    }

    pub fn group(&self, id: u32) -> Option<&[u8]> {
        let i = self.groups.binary_search_by_key(&id, |(g, _)| *g).ok()?;
        Some(&self.groups[i].1)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        self.encode(&mut e);
        e.buf
    }

    pub fn from_bytes(b: &[u8]) -> Result<Owners> {
        let mut d = Decoder::new(b);
        let o = Owners::decode(&mut d)?;
        d.finish("owners")?;
        Ok(o)
    }
}

/// Which columns of a snapshot row did not decode, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowDamage {
    pub sources: Option<String>,
    pub tags: Option<String>,
}

impl std::fmt::Display for RowDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [("sources", &self.sources), ("tags", &self.tags)]
            .into_iter()
            .filter_map(|(what, why)| Some(format!("its {what} do not decode ({})", why.as_ref()?)))
            .collect();
        f.write_str(&parts.join("; "))
    }
}

impl SnapshotRow {
    /// A row with nothing else known yet: no row id or record id, no host,
    /// sources or tags, nothing counted, finished when it started. Callers
    /// fill in the rest with struct update syntax.
    pub fn new(name: String, started_ns: i64, root_tree: TreeId) -> SnapshotRow {
        SnapshotRow {
            id: SnapshotId(0),
            hash: Hash::default(),
            name,
            started_ns,
            finished_ns: started_ns,
            host: String::new(),
            sources: Vec::new(),
            tags: Vec::new(),
            root_tree,
            files: 0,
            dirs: 0,
            size: 0,
            added_bytes: 0,
            read_bytes: 0,
            warnings: 0,
            change_share: 0.0,
            alarm: false,
            owners: Owners::default(),
            damage: None,
        }
    }

    /// The row, if its sources and tags decoded; otherwise an error naming
    /// the snapshot, for commands that act on those values (retention).
    pub fn decoded(&self) -> Result<&SnapshotRow> {
        match &self.damage {
            None => Ok(self),
            Some(why) => Err(Error::corrupt(format!(
                "snapshot {} ({}) in the catalog: {why}; forget it by name, or rebuild the catalog \
                 from the packs with `snapfs rebuild-catalog`",
                self.name,
                self.hash.to_hex().get(..8).unwrap_or_default()
            ))),
        }
    }
}

pub fn encode_paths(paths: &[PathBuf]) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let mut e = Encoder::new();
    e.u64(paths.len() as u64);
    for p in paths {
        e.bytes(p.as_os_str().as_bytes());
    }
    e.buf
}

/// The inverse of [`encode_paths`]: every path must decode and nothing may
/// follow, so damaged bytes are an error rather than a shorter list.
pub fn decode_paths(b: &[u8]) -> Result<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let mut d = Decoder::new(b);
    // Each path costs at least its one-byte length.
    let n = d.count(1)?;
    let paths = (0..n)
        .map(|_| Ok(PathBuf::from(std::ffi::OsStr::from_bytes(d.bytes()?))))
        .collect::<Result<_>>()?;
    d.finish("source paths")?;
    Ok(paths)
}

/// Names the mount uses for itself at its root.
pub const RESERVED_NAMES: &[&str] = &["latest", "history"];

/// A snapshot name must be usable as one directory name at the mount's
/// root, beside the mount's own names, and in a `SNAPSHOT:PATH` reference.
pub fn check_snapshot_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.contains('/')
        || name.contains('\0')
        || name.contains(':')
        || name.starts_with('.')
        || RESERVED_NAMES.contains(&name)
        || name.len() > 200
    {
        return Err(Error::invalid(format!(
            "{name:?} cannot be a snapshot name (reserved: {}; no '/' or ':', no leading '.')",
            RESERVED_NAMES.join(", ")
        )));
    }
    Ok(())
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
    row.owners.encode(&mut e);
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
    decode_record_fields(data, hash, true).map_err(|e| match e {
        Error::Corrupt(m) => Error::corrupt(format!("snapshot record {hash}: {m}")),
        e => e,
    })
}

/// A record as format 1 wrote it: the same fields, without owner names
/// (for `snapfs upgrade`).
pub fn decode_record_v1(data: &[u8], hash: Hash) -> Result<Record> {
    decode_record_fields(data, hash, false).map_err(|e| match e {
        Error::Corrupt(m) => Error::corrupt(format!("format-1 record {hash}: {m}")),
        e => e,
    })
}

fn decode_record_fields(data: &[u8], hash: Hash, with_owners: bool) -> Result<Record> {
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
            let owners = if with_owners {
                Owners::decode(&mut d)?
            } else {
                Owners::default()
            };
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
                    owners,
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
    use crate::format::codec::mutate;
    use proptest::prelude::*;

    fn row() -> SnapshotRow {
        SnapshotRow {
            finished_ns: 2,
            host: "host".into(),
            sources: vec![PathBuf::from("/home")],
            tags: vec!["daily".into()],
            files: 1,
            dirs: 2,
            size: 3,
            read_bytes: 4,
            warnings: 5,
            ..SnapshotRow::new("2024-01-02T03-04-05".into(), -1, TreeId(0))
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

    #[test]
    fn owner_names_round_trip_and_bad_ones_are_refused() {
        let o = Owners {
            users: vec![(0, b"root".to_vec()), (1000, b"ann".to_vec())],
            groups: vec![(100, b"users".to_vec())],
        };
        assert_eq!(Owners::from_bytes(&o.to_bytes()).unwrap(), o);
        assert_eq!(o.user(1000), Some(&b"ann"[..]));
        assert_eq!(o.group(5), None);
        for bad in [
            Owners {
                users: vec![(5, b"b".to_vec()), (5, b"c".to_vec())],
                groups: vec![],
            },
            Owners {
                users: vec![(5, b"b".to_vec()), (4, b"c".to_vec())],
                groups: vec![],
            },
            Owners {
                users: vec![(5, b"a:b".to_vec())],
                groups: vec![],
            },
            Owners {
                users: vec![],
                groups: vec![(5, Vec::new())],
            },
            Owners {
                users: vec![(5, vec![b'x'; MAX_OWNER_NAME + 1])],
                groups: vec![],
            },
        ] {
            assert!(Owners::from_bytes(&bad.to_bytes()).is_err(), "{bad:?}");
        }
        assert!(Owners::from_bytes(&[]).is_err());
    }

    proptest! {
        #![proptest_config(mutate::config())]

        #[test]
        fn decode_record_never_panics_on_arbitrary_bytes(b in mutate::bytes()) {
            let _ = decode_record(&b, Hash::default());
            let _ = decode_record_v1(&b, Hash::default());
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
