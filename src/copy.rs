//! `snapfs copy --to REPO2`: replicate snapshots into a second, independent
//! repository (a USB disk, an NFS mount, or `ssh://host/path`), sending only
//! the chunks it lacks.
//!
//! The source side walks each snapshot, skipping trees the target already
//! has (a tree row there means everything beneath is there), packs the
//! missing chunks as they are stored (verified on the way, never
//! recompressed), and hands sealed packs over. The target makes each pack
//! durable and indexes it at once, so an interrupted copy resumes without
//! re-sending; it adds a snapshot only after all its data is durable, by
//! importing the rows from the copied metadata chunks.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::catalog::Catalog;
use crate::error::{Error, IoContext, Result};
use crate::ids::{ChunkId, Hash, PackName, TreeHash, TreeId};
use crate::import::Importer;
use crate::pack::{ChunkKind, PackWriter};
use crate::repo::{Config, RepoLock, Repository};
use crate::store::decode_blob;

/// The receiving repository, local or across a connection.
pub trait Target {
    /// Record hashes of the snapshots it has.
    fn snapshots(&mut self) -> Result<HashSet<Hash>>;
    /// For each id, whether the target lacks it.
    fn missing_chunks(&mut self, ids: &[ChunkId]) -> Result<Vec<bool>>;
    /// For each tree, whether the target has its rows (and so all beneath).
    fn has_trees(&mut self, hashes: &[TreeHash]) -> Result<Vec<bool>>;
    /// Store a sealed pack durably and index its chunks.
    fn put_pack(&mut self, name: &PackName, bytes: &[u8]) -> Result<()>;
    /// Add the snapshot whose record chunk is `record` (all its data is there).
    fn commit_snapshot(&mut self, record: &ChunkId, added_bytes: u64) -> Result<()>;
}

/// A repository on a local path, created if it does not exist yet.
pub struct LocalTarget {
    repo: Repository,
    cat: Catalog,
    _lock: RepoLock,
}

impl LocalTarget {
    pub fn open_or_init(path: &Path, config: Config) -> Result<LocalTarget> {
        let repo = match Repository::open(path) {
            Ok(r) => r,
            Err(Error::NotARepository(_)) => Repository::init(
                path,
                Config {
                    append_only: false,
                    ..config
                },
            )?,
            Err(e) => return Err(e),
        };
        let lock = repo.lock("copy")?;
        let cat = repo.catalog()?;
        cat.begin()?;
        repo.adopt_orphan_packs(&cat)?;
        cat.commit()?;
        Ok(LocalTarget {
            repo,
            cat,
            _lock: lock,
        })
    }
}

impl Drop for LocalTarget {
    fn drop(&mut self) {
        self.cat.checkpoint();
    }
}

impl Target for LocalTarget {
    fn snapshots(&mut self) -> Result<HashSet<Hash>> {
        Ok(self.cat.snapshots()?.into_iter().map(|s| s.hash).collect())
    }

    fn missing_chunks(&mut self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        ids.iter().map(|id| Ok(!self.cat.has_chunk(id)?)).collect()
    }

    fn has_trees(&mut self, hashes: &[TreeHash]) -> Result<Vec<bool>> {
        hashes
            .iter()
            .map(|h| Ok(self.cat.tree_by_hash(h)?.is_some()))
            .collect()
    }

    fn put_pack(&mut self, name: &PackName, bytes: &[u8]) -> Result<()> {
        if Hash::of(bytes) != name.0 {
            return Err(Error::corrupt(format!("pack {name} arrived damaged")));
        }
        let tmp = self
            .repo
            .tmp_dir()
            .join(format!("{}.pack.tmp", crate::pack::unique_token()));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).at(&tmp)?;
            f.write_all(bytes).at(&tmp)?;
            f.sync_all().at(&tmp)?;
            let mut perms = f.metadata().at(&tmp)?.permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
            f.set_permissions(perms).at(&tmp)?;
        }
        self.repo.backend.put(name, &tmp)?;
        let (size, entries) = self.repo.read_pack_table(name)?;
        self.cat.begin()?;
        self.cat.add_pack(name, size, &entries)?;
        self.cat.commit()
    }

    fn commit_snapshot(&mut self, record: &ChunkId, added_bytes: u64) -> Result<()> {
        self.cat.begin()?;
        let mut imp = Importer::new(&self.repo, &self.cat);
        let res = imp.snapshot(record, added_bytes);
        let problems = std::mem::take(&mut imp.problems);
        match res {
            Ok(_) if problems.is_empty() => self.cat.commit(),
            Ok(_) => {
                self.cat.rollback();
                Err(Error::corrupt(problems.join("; ")))
            }
            Err(e) => {
                self.cat.rollback();
                Err(e)
            }
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CopyStats {
    pub snapshots_copied: Vec<String>,
    pub snapshots_present: u64,
    pub chunks_sent: u64,
    pub packs_sent: u64,
    pub bytes_sent: u64,
    pub seconds: f64,
}

/// Collects missing chunks into packs and hands them to the target.
struct Sender<'a> {
    src: &'a Repository,
    cat: &'a Catalog,
    target: &'a mut dyn Target,
    tmp: PathBuf,
    writer: Option<PackWriter>,
    /// Chunks in the pack being filled (the target does not know them yet).
    sent: HashSet<ChunkId>,
    pack_size: u64,
    stats: &'a mut CopyStats,
    added: u64,
}

impl Sender<'_> {
    /// Queue the chunks among `ids` that the target lacks.
    fn send_missing(&mut self, ids: &[ChunkId]) -> Result<()> {
        let ask: Vec<ChunkId> = {
            let mut seen = HashSet::new();
            ids.iter()
                .filter(|id| !self.sent.contains(id) && seen.insert(**id))
                .copied()
                .collect()
        };
        for batch in ask.chunks(1024) {
            let missing = self.target.missing_chunks(batch)?;
            for (id, m) in batch.iter().zip(missing) {
                if m {
                    self.send(id)?;
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, id: &ChunkId) -> Result<()> {
        let loc = self.cat.chunk_loc(id)?.ok_or_else(|| {
            Error::corrupt(format!("chunk {id} is missing from the source catalog"))
        })?;
        let blob = self
            .src
            .backend
            .read_at(&loc.pack, loc.offset, loc.stored_len as usize)?;
        // Never replicate damage: a chunk that fails here stops the copy.
        decode_blob(&blob, id, loc.raw_len as usize)?;
        let kind = self.cat.chunk_kind(id)?.unwrap_or(ChunkKind::Data);
        if self.writer.is_none() {
            self.writer = Some(PackWriter::create(&self.tmp)?);
        }
        let w = self.writer.as_mut().expect("writer just created");
        w.append(*id, kind, loc.raw_len, &blob)?;
        self.sent.insert(*id);
        self.stats.chunks_sent += 1;
        if w.len() >= self.pack_size {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let Some(w) = self.writer.take() else {
            return Ok(());
        };
        let sealed = w.seal()?;
        let bytes = std::fs::read(&sealed.path).at(&sealed.path)?;
        let _ = std::fs::remove_file(&sealed.path);
        self.target.put_pack(&sealed.name, &bytes)?;
        self.stats.packs_sent += 1;
        self.stats.bytes_sent += sealed.size;
        self.added += sealed.size;
        self.sent.clear();
        Ok(())
    }

    /// Send what the target lacks beneath `tree` (the caller checked the tree itself).
    fn tree(&mut self, tree: TreeId, hash: TreeHash) -> Result<()> {
        let entries = self.cat.entries(tree)?;
        let mut chunk_ids = Vec::new();
        let mut subdirs: Vec<(TreeId, TreeHash)> = Vec::new();
        for n in &entries {
            if let Some(c) = n.content {
                chunk_ids.extend(self.cat.content(c)?.iter().map(|c| c.id));
            }
            if let Some(t) = n.subtree {
                subdirs.push((t, self.cat.tree_hash(t)?));
            }
        }
        self.send_missing(&chunk_ids)?;
        let hashes: Vec<TreeHash> = subdirs.iter().map(|s| s.1).collect();
        let mut present = Vec::new();
        for b in hashes.chunks(1024) {
            present.extend(self.target.has_trees(b)?);
        }
        for ((t, h), have) in subdirs.into_iter().zip(present) {
            if !have {
                self.tree(t, h)?;
            }
        }
        self.send_missing(&[ChunkId(hash.0)])
    }
}

/// A private directory for packs being filled, in the system's temporary
/// directory. Its name carries our process id, so leftovers of a killed copy
/// are recognized and removed by the next one.
fn scratch_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    if let Ok(rd) = std::fs::read_dir(&base) {
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("snapfs-copy-")) else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = base.join(format!(
        "snapfs-copy-{}-{}",
        std::process::id(),
        crate::pack::unique_token()
    ));
    std::fs::create_dir_all(&dir).at(&dir)?;
    Ok(dir)
}

pub fn copy(src: &Repository, target: &mut dyn Target, which: &[String]) -> Result<CopyStats> {
    let t0 = Instant::now();
    let cat = src.catalog()?;
    let mut stats = CopyStats::default();
    let present = target.snapshots()?;
    let mut snaps = if which.is_empty() {
        cat.snapshots()?
    } else {
        which
            .iter()
            .map(|r| crate::snapshot::resolve(&cat, r))
            .collect::<Result<Vec<_>>>()?
    };
    snaps.sort_by_key(|s| (s.started_ns, s.id.0));
    snaps.dedup_by_key(|s| s.id);
    let tmp = scratch_dir()?;
    let result = (|| -> Result<()> {
        for s in snaps {
            if present.contains(&s.hash) {
                stats.snapshots_present += 1;
                continue;
            }
            let mut sender = Sender {
                src,
                cat: &cat,
                target: &mut *target,
                tmp: tmp.clone(),
                writer: None,
                sent: HashSet::new(),
                pack_size: src.config.pack_size,
                stats: &mut stats,
                added: 0,
            };
            let root_hash = cat.tree_hash(s.root_tree)?;
            if !sender.target.has_trees(&[root_hash])?[0] {
                sender.tree(s.root_tree, root_hash)?;
            }
            sender.send_missing(&[ChunkId(s.hash)])?;
            sender.flush()?;
            let added = sender.added;
            target.commit_snapshot(&ChunkId(s.hash), added)?;
            stats.snapshots_copied.push(s.name.clone());
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    stats.seconds = t0.elapsed().as_secs_f64();
    Ok(stats)
}
