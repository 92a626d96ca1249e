//! `snapfs verify`: check the catalog, and optionally every stored byte.
//!
//! Damage is reported as what a user lost, the files and snapshots, not
//! only as chunk ids: damaged chunks are traced to the contents that use
//! them, and those to paths, descending only into trees that hold damage.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::format::blob::decode_blob;
use crate::format::pack;
use crate::format::tree::ContentRef;
use crate::ids::{ChunkId, TreeId};
use crate::repo::Repository;
use crate::repo::catalog::Catalog;

#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Read this share of packs (0.0–1.0) and check every chunk in them.
    pub read_data: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DamagedFile {
    pub snapshot: String,
    #[serde(serialize_with = "crate::repo::paths::lossy_path")]
    pub path: PathBuf,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub snapshots: u64,
    pub packs: u64,
    pub packs_read: u64,
    pub chunks_read: u64,
    pub bytes_read: u64,
    pub problems: Vec<String>,
    pub damaged_files: Vec<DamagedFile>,
    pub damaged_snapshots: Vec<String>,
    pub seconds: f64,
}

pub fn verify(repo: &Repository, opts: &VerifyOptions) -> Result<VerifyReport> {
    let t0 = Instant::now();
    let cat = repo.catalog()?;
    let mut r = VerifyReport::default();
    let ic = cat.integrity_check()?;
    if ic != "ok" {
        r.problems.push(format!("SQLite integrity check: {ic}"));
    }
    let snapshots = cat.snapshots()?;
    r.snapshots = snapshots.len() as u64;
    for name in cat.snapshots_without_root()? {
        r.problems.push(format!(
            "snapshot {name}: its root directory is missing from the catalog"
        ));
    }
    let dangling = cat.dangling_entries()?;
    for (tree, name) in &dangling {
        r.problems.push(format!(
            "entry {:?} of tree {}: its content or directory is missing from the catalog",
            String::from_utf8_lossy(name),
            tree.0
        ));
    }
    for (hash, why) in cat.damaged_pages(&repo.keying)? {
        r.problems
            .push(format!("directory page {hash} in the catalog: {why}"));
    }
    let n = cat.missing_meta_chunks()?;
    if n > 0 {
        r.problems.push(format!(
            "{n} metadata record(s) missing from the packs index"
        ));
    }
    let n = cat.chunks_without_pack()?;
    if n > 0 {
        r.problems.push(format!(
            "{n} chunk(s) point at packs the catalog does not know"
        ));
    }
    let n = cat.chunks_outside_packs()?;
    if n > 0 {
        r.problems
            .push(format!("{n} chunk(s) lie outside the end of their pack"));
    }

    // Contents whose chunks are not indexed.
    let mut bad_chunks: HashSet<ChunkId> = HashSet::new();
    cat.each_content(|_, list| {
        for c in list.iter() {
            if !cat.has_chunk(&c.id)? {
                bad_chunks.insert(c.id);
            }
        }
        Ok(())
    })?;
    if !bad_chunks.is_empty() {
        r.problems.push(format!(
            "{} chunk(s) used by files are missing from the index",
            bad_chunks.len()
        ));
    }

    // Packs: present, right size, and with --read-data, every byte.
    let packs = cat.packs()?;
    r.packs = packs.len() as u64;
    let to_read: u64 = packs
        .iter()
        .filter(|p| selected(p.1.0.0[0], opts.read_data))
        .map(|p| p.2)
        .sum();
    let progress = crate::commands::progress::Progress::new(
        "verify",
        "packs",
        (to_read > 0).then_some(to_read),
    );
    for (id, name, size) in &packs {
        match repo.backend.size(name) {
            Ok(s) if s == *size => {}
            Ok(s) => r.problems.push(format!(
                "pack {name}: {s} bytes on disk, the catalog says {size}"
            )),
            Err(e) => {
                r.problems.push(format!("pack {name}: {e}"));
                for e in cat.chunks_in_pack(*id)? {
                    bad_chunks.insert(e.id);
                }
                continue;
            }
        }
        if !selected(name.0.0[0], opts.read_data) {
            continue;
        }
        r.packs_read += 1;
        let bytes = match repo.backend.read_at(name, 0, *size as usize) {
            Ok(b) => b,
            Err(e) => {
                r.problems.push(format!("pack {name}: {e}"));
                for e in cat.chunks_in_pack(*id)? {
                    bad_chunks.insert(e.id);
                }
                continue;
            }
        };
        r.bytes_read += bytes.len() as u64;
        progress.bytes(bytes.len() as u64);
        progress.item();
        if crate::ids::Hash::of(&bytes) != name.0 {
            r.problems.push(format!(
                "pack {name}: its bytes do not match its name (damaged)"
            ));
        }
        check_table(&repo.keying, &bytes, name, &mut r.problems);
        for e in cat.chunks_in_pack(*id)? {
            r.chunks_read += 1;
            let blob = bytes.get(e.offset as usize..(e.offset + u64::from(e.stored_len)) as usize);
            let ok = blob
                .is_some_and(|b| decode_blob(&repo.keying, b, &e.id, e.raw_len as usize).is_ok());
            if !ok {
                bad_chunks.insert(e.id);
            }
        }
    }
    if !bad_chunks.is_empty() {
        r.problems
            .push(format!("{} chunk(s) damaged or missing", bad_chunks.len()));
        let (files, snaps) = trace_damage(&cat, &bad_chunks, &dangling)?;
        r.damaged_files = files;
        r.damaged_snapshots = snaps;
    } else if !dangling.is_empty() {
        let (files, snaps) = trace_damage(&cat, &bad_chunks, &dangling)?;
        r.damaged_files = files;
        r.damaged_snapshots = snaps;
    }
    r.ok = r.problems.is_empty();
    r.seconds = t0.elapsed().as_secs_f64();
    Ok(r)
}

/// Whether a pack falls in the share to read: by its name's first byte, so
/// successive partial runs with the same share read the same packs, and
/// `--read-data-subset` shares of 1/256 granularity spread evenly.
fn selected(first_byte: u8, share: f64) -> bool {
    if share >= 1.0 {
        return true;
    }
    if share <= 0.0 {
        return false;
    }
    // A different slice each day, so that repeated partial checks cover everything.
    let day = (crate::time::now_ns() / 86_400_000_000_000) as u64;
    let slot = (u64::from(first_byte) + day * (256.0 * share).ceil() as u64) % 256;
    (slot as f64) < 256.0 * share
}

fn check_table(
    keying: &crate::format::keying::Keying,
    bytes: &[u8],
    name: &crate::ids::PackName,
    problems: &mut Vec<String>,
) {
    let size = bytes.len() as u64;
    if size < pack::HEADER_LEN + pack::FOOTER_LEN as u64
        || pack::parse_header(bytes, keying).is_err()
    {
        problems.push(format!("pack {name}: bad header"));
        return;
    }
    let res = pack::parse_footer(&bytes[bytes.len() - pack::FOOTER_LEN..], size, keying).and_then(
        |(off, count, check)| {
            pack::parse_table(
                &bytes[off as usize..bytes.len() - pack::FOOTER_LEN],
                count,
                check,
                keying,
            )
        },
    );
    if let Err(e) = res {
        problems.push(format!("pack {name}: {e}"));
    }
}

/// Files (and their snapshots) that use damaged chunks or dangling rows.
fn trace_damage(
    cat: &Catalog,
    bad_chunks: &HashSet<ChunkId>,
    dangling: &[(TreeId, Vec<u8>)],
) -> Result<(Vec<DamagedFile>, Vec<String>)> {
    let mut bad_contents: HashSet<ContentRef> = HashSet::new();
    cat.each_content(|hash, list| {
        if bad_chunks.contains(&ChunkId(hash.0)) || list.iter().any(|c| bad_chunks.contains(&c.id))
        {
            bad_contents.insert(ContentRef::List(hash));
        }
        Ok(())
    })?;
    let bad_entries: HashSet<(TreeId, Vec<u8>)> = dangling.iter().cloned().collect();
    let mut memo: HashMap<TreeId, bool> = HashMap::new();
    let mut files = Vec::new();
    let mut snaps = Vec::new();
    for s in cat.snapshots()? {
        let before = files.len();
        let root_bad = cat
            .tree_hash(s.root_tree)
            .map(|h| bad_chunks.contains(&ChunkId(h.0)))
            .unwrap_or(true);
        if root_bad {
            files.push(DamagedFile {
                snapshot: s.name.clone(),
                path: PathBuf::from("/"),
            });
        } else {
            let mut ctx = Trace {
                cat,
                bad_chunks,
                bad_contents: &bad_contents,
                bad_entries: &bad_entries,
                memo: &mut memo,
            };
            ctx.collect(s.root_tree, Path::new("/"), &s.name, &mut files)?;
        }
        if files.len() > before {
            snaps.push(s.name);
        }
    }
    Ok((files, snaps))
}

struct Trace<'a> {
    cat: &'a Catalog,
    bad_chunks: &'a HashSet<ChunkId>,
    bad_contents: &'a HashSet<ContentRef>,
    bad_entries: &'a HashSet<(TreeId, Vec<u8>)>,
    memo: &'a mut HashMap<TreeId, bool>,
}

impl Trace<'_> {
    fn bad_content(&self, c: &Option<ContentRef>) -> bool {
        match c {
            Some(ContentRef::Chunk(id, _)) => self.bad_chunks.contains(id),
            Some(c) => self.bad_contents.contains(c),
            None => false,
        }
    }

    /// Is one of the directory's own pages damaged?
    fn bad_pages(&self, tree: TreeId) -> Result<bool> {
        Ok(self
            .cat
            .dir_pages(tree)?
            .iter()
            .any(|h| self.bad_chunks.contains(&ChunkId(h.0))))
    }

    /// Does anything beneath `tree` use damaged data? (memoized: shared trees once)
    fn damaged(&mut self, tree: TreeId) -> Result<bool> {
        if let Some(&d) = self.memo.get(&tree) {
            return Ok(d);
        }
        let _level = crate::format::tree::descend(|| format!("tree row {}", tree.0))?;
        let mut d = self.bad_pages(tree)?;
        if !d {
            for n in self.cat.entries(tree)? {
                if self.bad_entries.contains(&(tree, n.name.clone()))
                    || self.bad_content(&n.content)
                    || n.subtree
                        .map(|t| self.damaged(t))
                        .transpose()?
                        .unwrap_or(false)
                {
                    d = true;
                    break;
                }
            }
        }
        self.memo.insert(tree, d);
        Ok(d)
    }

    fn collect(
        &mut self,
        tree: TreeId,
        path: &Path,
        snap: &str,
        out: &mut Vec<DamagedFile>,
    ) -> Result<()> {
        let _level = crate::format::tree::descend(|| path.display().to_string())?;
        if !self.damaged(tree)? {
            return Ok(());
        }
        if self.bad_pages(tree)? {
            out.push(DamagedFile {
                snapshot: snap.into(),
                path: path.to_path_buf(),
            });
        }
        for n in self.cat.entries(tree)? {
            let p = path.join(OsStr::from_bytes(&n.name));
            if self.bad_entries.contains(&(tree, n.name.clone())) || self.bad_content(&n.content) {
                out.push(DamagedFile {
                    snapshot: snap.into(),
                    path: p.clone(),
                });
            }
            if let Some(sub) = n.subtree {
                self.collect(sub, &p, snap, out)?;
            }
        }
        Ok(())
    }
}
