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
//!
//! # The receiver trusts nothing the sender says
//!
//! Over ssh the sender may be a compromised machine, and even a local copy
//! reads a repository someone else may have written. So the receiving side
//! ([`LocalTarget`], which `snapfs serve` drives too) checks for itself:
//!
//! - a pack enters `packs/` only once its layout is sound and every blob in
//!   it decodes and matches the chunk id its table claims ([`verify_pack`]);
//!   otherwise a sender could squat an id with garbage and every later
//!   ingest of that chunk would "deduplicate" against it;
//! - a pack whose name exists already is never replaced;
//! - a snapshot is committed only when every tree and data chunk beneath it
//!   is present (chunks present were verified on arrival or written by
//!   ingest), its directory node counts add up, and its name is one ingest
//!   would accept;
//! - sizes come from the receiver's own limits ([`pack_limit`],
//!   [`MAX_CHUNK_RAW`]), so a pack or chunk cannot make it allocate without
//!   bound.

pub(crate) mod reencode;
pub(crate) mod remote;

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::format::blob::{self, decode_blob};
use crate::format::pack::{self, ChunkKind, PackEntry, PackWriter};
use crate::format::page::{decode_page, load_dir};
use crate::format::record::{Record, decode_record};
use crate::format::tree::{Body, ChunkList, ContentRef};
use crate::ids::{ChunkId, Hash, PackName, TreeHash, TreeId};
use crate::repo::catalog::Catalog;
use crate::repo::import::Importer;
use crate::repo::{Config, Encryption, RepoLock, Repository};

/// The largest uncompressed chunk a receiver accepts. Data chunks are at
/// most the chunker's maximum (4 MiB by default), but a directory's tree is
/// one chunk however many entries it has: this allows about a million
/// entries in one directory, while bounding what a hostile sender can make
/// the receiver inflate in memory.
pub const MAX_CHUNK_RAW: u32 = 128 << 20;

/// Bytes per row of a pack's table (id, kind, offset, stored and raw length;
/// see the layout in `pack`).
const PACK_TABLE_REC: u64 = 49;

/// Nodes of one snapshot must fit the mount's inode numbering
/// (`snapshot id << 40 | position`).
const MAX_SNAPSHOT_NODES: u64 = 1 << 40;

/// The largest pack a repository with `config` receives. A sender fills a
/// pack to about `pack_size` and may pass it by one chunk; the table adds
/// 49 bytes per blob of at least 39 bytes, under `pack_size` again. Bounds
/// what one `put_pack` may make the receiver hold in memory.
pub fn pack_limit(config: &Config) -> u64 {
    let raw = MAX_CHUNK_RAW as usize;
    let blob = (blob::header_len(raw) + raw) as u64;
    config
        .pack_size
        .saturating_mul(2)
        .saturating_add(blob)
        .saturating_add(64 << 10)
}

/// The receiving repository, local or across a connection.
pub trait Target {
    /// Record hashes of the snapshots it has.
    fn snapshots(&mut self) -> Result<HashSet<Hash>>;
    /// For each id, whether the target lacks it.
    fn missing_chunks(&mut self, ids: &[ChunkId]) -> Result<Vec<bool>>;
    /// For each tree, whether the target has its rows (and so all beneath).
    fn has_trees(&mut self, hashes: &[TreeHash]) -> Result<Vec<bool>>;
    /// The largest pack (in bytes) the target accepts.
    fn pack_limit(&self) -> u64;
    /// Store a sealed pack durably and index its chunks.
    fn put_pack(&mut self, name: &PackName, bytes: &[u8]) -> Result<()>;
    /// Add the snapshot whose record chunk is `record` (all its data is there).
    fn commit_snapshot(&mut self, record: &ChunkId, added_bytes: u64) -> Result<()>;
    /// Whether `put_pack` itself decodes and verifies every chunk before it
    /// stores anything, in this process, so the sender need not do it too.
    /// Across a connection the far side may be an older release that does
    /// not, so the sender checks.
    fn verifies_packs(&self) -> bool {
        false
    }
}

/// How a receiving repository is opened.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReceiveOptions {
    /// Never create the repository. (Nothing in an existing repository is
    /// ever replaced or removed by a receiver, append-only or not: packs
    /// are only added, snapshots only added under names not taken.)
    pub append_only: bool,
}

/// A repository on a local path, created if it does not exist yet (unless
/// append-only).
pub struct LocalTarget {
    repo: Repository,
    cat: Catalog,
    /// Bytes of packs stored since the last commit: the "added" figure of
    /// the next snapshot, counted here rather than taken from the sender.
    received: u64,
    _lock: RepoLock,
}

impl LocalTarget {
    pub fn open_or_init(path: &Path, config: Config) -> Result<LocalTarget> {
        LocalTarget::open(path, config, ReceiveOptions::default())
    }

    /// Open the repository at `path` to receive snapshots; `config` is used
    /// if it has to be created. Something that looks like an ssh URL is
    /// never taken for a local path.
    pub fn open(path: &Path, config: Config, opts: ReceiveOptions) -> Result<LocalTarget> {
        if path.to_str().is_some_and(|p| p.starts_with("ssh://")) {
            return Err(Error::invalid(format!(
                "{} is not a valid ssh://[user@]host[:port]/path destination",
                path.display()
            )));
        }
        // Blobs travel as they are stored: an encrypted repository's are
        // sealed under its own key, and no key reaches a receiver.
        if crate::repo::config_at(path)?.is_some_and(|c| c.encryption != Encryption::None) {
            return Err(not_yet_encrypted(path));
        }
        let repo = match Repository::open(path) {
            Ok(r) => r,
            Err(Error::NotARepository(_)) if opts.append_only => {
                return Err(Error::invalid(format!(
                    "{} is not a snapfs repository, and an append-only receiver does not create one; \
                     create it on this machine first (`snapfs --repo {} init --append-only`)",
                    path.display(),
                    path.display()
                )));
            }
            // Another repository: its own id, so its own cache.
            Err(Error::NotARepository(_)) => Repository::init(
                path,
                Config {
                    append_only: false,
                    id: Some(crate::repo::RepoId::random()?),
                    encryption: Encryption::None,
                    ..config
                },
            )?,
            Err(e) => return Err(e),
        };
        // The lock clears tmp/ (temporary files of dead writers, never
        // history); adopting orphan packs only adds index rows.
        let lock = repo.lock("copy")?;
        let cat = repo.catalog()?;
        let tx = cat.transaction()?;
        repo.adopt_orphan_packs(&tx)?;
        tx.commit()?;
        Ok(LocalTarget {
            repo,
            cat,
            received: 0,
            _lock: lock,
        })
    }

    /// Whether a pack file of this name is stored already.
    fn pack_exists(&self, name: &PackName) -> Result<bool> {
        match self.repo.backend.size(name) {
            Ok(_) => Ok(true),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// A metadata chunk of the expected kind, read and verified.
    fn read_meta(&self, id: &ChunkId, kind: ChunkKind) -> Result<Vec<u8>> {
        let loc = self
            .cat
            .chunk_loc(id)?
            .ok_or_else(|| Error::corrupt(format!("chunk {id} is absent")))?;
        match self.cat.chunk_kind(id)? {
            Some(k) if k == kind => {}
            other => {
                return Err(Error::corrupt(format!(
                    "chunk {id} is stored as {other:?}, not as {kind:?}"
                )));
            }
        }
        self.repo.read_chunk(id, &loc)
    }

    /// Refuse a snapshot unless everything beneath it is here and
    /// consistent. Trees with rows were complete when committed, so only
    /// trees new to this repository are read.
    fn check_complete(&self, record: &ChunkId) -> Result<()> {
        let refuse = |what: String| Error::corrupt(format!("snapshot {record} refused: {what}"));
        let raw = self
            .read_meta(record, ChunkKind::Snapshot)
            .map_err(|e| refuse(format!("its record cannot be read ({e})")))?;
        let (name, root) = match decode_record(&raw, record.0) {
            Ok(Record::Snapshot { row, root }) => (row.name, root),
            Ok(Record::Forget(_)) => return Err(refuse("it is a forget record".into())),
            Err(e) => return Err(refuse(format!("its record does not decode ({e})"))),
        };
        crate::format::record::check_snapshot_name(&name).map_err(|e| refuse(e.to_string()))?;
        let refuse =
            |what: String| Error::corrupt(format!("snapshot {name:?} ({record}) refused: {what}"));

        // Node counts: what each tree holds, and what its parents claim.
        let mut holds: HashMap<TreeHash, u64> = HashMap::new();
        let mut claims: Vec<(TreeHash, u64, String)> = Vec::new();
        let mut problems: Vec<String> = Vec::new();
        let mut absent_chunks = 0u64;
        let mut checked: HashSet<ChunkId> = HashSet::new();
        let mut stack: Vec<(TreeHash, String)> = vec![(root, "/".to_string())];
        while let Some((hash, path)) = stack.pop() {
            if holds.contains_key(&hash) {
                continue;
            }
            if let Some((_, nodes)) = self.cat.tree_by_hash(&hash)? {
                holds.insert(hash, nodes);
                continue;
            }
            let loaded = load_dir(&hash, |h| match self.cat.tree_by_hash(h)? {
                Some((id, _)) => self.cat.page_body(id),
                None => self.read_meta(&ChunkId(h.0), ChunkKind::Page),
            });
            let entries = match loaded {
                Ok((_, e)) => e,
                Err(e) => {
                    problems.push(format!("directory {path}: page {hash}: {e}"));
                    // Counted as holding nothing, so it is not read again.
                    holds.insert(hash, 0);
                    continue;
                }
            };
            let mut nodes = 0u64;
            for e in entries {
                let child = format!(
                    "{}{}{}",
                    path,
                    if path.ends_with('/') { "" } else { "/" },
                    String::from_utf8_lossy(&e.name)
                );
                let span = match &e.body {
                    Body::Dir { nodes, .. } => nodes.checked_add(1),
                    _ => Some(1),
                };
                nodes = span
                    .and_then(|s| nodes.checked_add(s))
                    .filter(|n| *n < MAX_SNAPSHOT_NODES)
                    .ok_or_else(|| refuse(format!("directory {path} claims too many entries")))?;
                let mut check = |id: ChunkId, problems: &mut Vec<String>| -> Result<()> {
                    if checked.insert(id) && !self.cat.has_chunk(&id)? {
                        absent_chunks += 1;
                        if problems.len() < 5 {
                            problems.push(format!("file {child}: chunk {id} is absent"));
                        }
                    }
                    Ok(())
                };
                match e.body {
                    Body::File(None) => {}
                    Body::File(Some(ContentRef::Chunk(id, _))) => check(id, &mut problems)?,
                    Body::File(Some(ContentRef::List(h))) => {
                        let list = if self.cat.has_content(&h)? {
                            self.cat.content(&ContentRef::List(h))
                        } else {
                            self.read_meta(&ChunkId(h.0), ChunkKind::List)
                                .and_then(ChunkList::validate)
                        };
                        match list {
                            Ok(list) => {
                                for c in list.iter() {
                                    check(c.id, &mut problems)?;
                                }
                            }
                            Err(e) => problems.push(format!("file {child}: chunk list {h}: {e}")),
                        }
                    }
                    Body::Dir { tree, nodes } => {
                        claims.push((tree, nodes, child.clone()));
                        stack.push((tree, child));
                    }
                    Body::Symlink(_) | Body::Special => {}
                }
            }
            holds.insert(hash, nodes);
        }
        for (tree, claimed, path) in claims {
            let held = holds.get(&tree).copied().unwrap_or(0);
            if held != claimed && problems.len() < 10 {
                problems.push(format!(
                    "directory {path} claims {claimed} entries beneath it, its tree holds {held}"
                ));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        if absent_chunks > 0 {
            problems.push(format!("{absent_chunks} data chunks absent in all"));
        }
        Err(refuse(problems.join("; ")))
    }
}

/// Check a received pack through and through before it is stored: its
/// name is the hash of its bytes, its header, footer and table are sound,
/// its blobs tile the space between header and table exactly, each chunk
/// is listed once, each blob inflates to exactly the chunk its table row
/// names (`decode_blob` checks the id), and metadata chunks decode as a
/// tree or a snapshot record. A forget record is refused: a copy never
/// sends one, and in a pack it would make `rebuild-catalog` drop the
/// snapshots it names. Returns the table. Pure: a fuzz target in one line.
pub fn verify_pack(
    keying: &std::sync::Arc<blob::Keying>,
    name: &PackName,
    bytes: &[u8],
) -> Result<Vec<PackEntry>> {
    let bad = |what: String| Error::corrupt(format!("received pack {name}: {what}"));
    let inner = |e: Error| match e {
        Error::Corrupt(m) => bad(m),
        other => bad(other.to_string()),
    };
    let size = bytes.len() as u64;
    if size < pack::HEADER_LEN + pack::FOOTER_LEN as u64 {
        return Err(bad(format!("only {size} bytes")));
    }
    if Hash::of(bytes) != name.0 {
        return Err(bad("its bytes do not hash to its name".into()));
    }
    if pack::parse_header(bytes, keying).is_err() {
        return Err(bad(
            "not a snapfs pack of this repository's kind (header)".into()
        ));
    }
    let table_end = bytes.len() - pack::FOOTER_LEN;
    let (table_offset, count, check) =
        pack::parse_footer(&bytes[table_end..], size, keying).map_err(inner)?;
    let table = usize::try_from(table_offset)
        .ok()
        .filter(|o| *o >= pack::HEADER_LEN as usize)
        .and_then(|o| bytes.get(o..table_end))
        .ok_or_else(|| bad("its table lies outside the pack".into()))?;
    let entries = pack::parse_table(table, count, check, keying).map_err(inner)?;
    let mut next = pack::HEADER_LEN;
    let mut seen: HashSet<ChunkId> = HashSet::with_capacity(entries.len());
    for e in &entries {
        let id = e.id;
        next = e
            .offset
            .checked_add(u64::from(e.stored_len))
            .filter(|end| e.offset == next && *end <= table_offset)
            .ok_or_else(|| bad(format!("chunk {id} is not where the blobs before it end")))?;
        if !seen.insert(id) {
            return Err(bad(format!("chunk {id} is listed twice")));
        }
        if e.raw_len > MAX_CHUNK_RAW {
            return Err(bad(format!(
                "chunk {id} claims {} bytes, more than a receiver accepts ({MAX_CHUNK_RAW})",
                e.raw_len
            )));
        }
    }
    if next != table_offset {
        return Err(bad("bytes no chunk accounts for before its table".into()));
    }
    // Inflating is the receiver's main cost: spread it over the cores
    // (packs of many small chunks and packs of a few large ones alike).
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let per_thread = entries.len().div_ceil(threads).max(1);
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let workers: Vec<_> = entries
            .chunks(per_thread)
            .map(|part| {
                scope.spawn(move || part.iter().try_for_each(|e| check_blob(keying, bytes, e)))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(Error::corrupt("a chunk check panicked")))
            })
            .collect()
    });
    for r in results {
        r.map_err(inner)?;
    }
    Ok(entries)
}

/// Inflate one blob of a pack whose layout was checked (its range lies
/// inside `bytes`) and check it is the chunk its row names.
fn check_blob(keying: &std::sync::Arc<blob::Keying>, bytes: &[u8], e: &PackEntry) -> Result<()> {
    let id = e.id;
    let blob = usize::try_from(e.offset)
        .ok()
        .and_then(|start| bytes.get(start..start.checked_add(e.stored_len as usize)?))
        .ok_or_else(|| Error::corrupt(format!("chunk {id} lies outside the pack")))?;
    let raw = decode_blob(keying, blob, &id, e.raw_len as usize)?;
    match e.kind {
        ChunkKind::Data => Ok(()),
        ChunkKind::Page => decode_page(&raw)
            .map(drop)
            .map_err(|err| Error::corrupt(format!("page {id} does not decode: {err}"))),
        ChunkKind::List => ChunkList::validate(raw)
            .map(drop)
            .map_err(|err| Error::corrupt(format!("chunk list {id} does not decode: {err}"))),
        ChunkKind::Snapshot => match decode_record(&raw, id.0) {
            Ok(Record::Snapshot { .. }) => Ok(()),
            Ok(Record::Forget(_)) => Err(Error::corrupt(format!(
                "chunk {id} is a forget record, which a copy never sends"
            ))),
            Err(err) => Err(Error::corrupt(format!(
                "snapshot record {id} does not decode: {err}"
            ))),
        },
    }
}

impl Drop for LocalTarget {
    fn drop(&mut self) {
        self.cat.checkpoint();
    }
}

impl Target for LocalTarget {
    fn verifies_packs(&self) -> bool {
        true
    }

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

    fn pack_limit(&self) -> u64 {
        pack_limit(&self.repo.config)
    }

    fn put_pack(&mut self, name: &PackName, bytes: &[u8]) -> Result<()> {
        let limit = self.pack_limit();
        if bytes.len() as u64 > limit {
            return Err(Error::invalid(format!(
                "received pack {name} has {} bytes, more than this repository accepts ({limit})",
                bytes.len()
            )));
        }
        let entries = verify_pack(&self.repo.keying, name, bytes)?;
        // Same name, same bytes: nothing to do, and never a replacement
        // (an append-only repository's files are never rewritten). A pack
        // on disk is indexed: the open adopted any orphans.
        if self.pack_exists(name)? {
            log::debug!("pack {name} is stored already; not replaced");
            return Ok(());
        }
        let tmp = self
            .repo
            .tmp_dir()
            .join(format!("{}.pack.tmp", pack::unique_token()));
        let written = (|| -> Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o640)
                .open(&tmp)
                .at(&tmp)?;
            f.write_all(bytes).at(&tmp)?;
            f.sync_all().at(&tmp)?;
            // Read-only for whoever the umask let read it: the owner, and
            // the sharing group of a repository made with `init --group`.
            let mode = f.metadata().at(&tmp)?.permissions().mode() & 0o440;
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .at(&tmp)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.repo.backend.put(name, &tmp)?;
        let tx = self.cat.transaction()?;
        tx.add_pack(name, bytes.len() as u64, &entries)?;
        tx.commit()?;
        self.received = self.received.saturating_add(bytes.len() as u64);
        Ok(())
    }

    fn commit_snapshot(&mut self, record: &ChunkId, _added_bytes: u64) -> Result<()> {
        let tx = self.cat.transaction()?;
        self.check_complete(record)?;
        let mut imp = Importer::new(&self.repo, &tx);
        let res = imp.snapshot(record, self.received);
        let problems = std::mem::take(&mut imp.problems);
        match res {
            Ok(_) if problems.is_empty() => {}
            Ok(_) => {
                return Err(Error::corrupt(format!(
                    "snapshot {record} refused: {}",
                    problems.join("; ")
                )));
            }
            Err(e) => return Err(e),
        }
        tx.commit()?;
        self.received = 0;
        Ok(())
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CopyStats {
    pub snapshots_copied: Vec<String>,
    pub snapshots_present: u64,
    pub chunks_sent: u64,
    pub packs_sent: u64,
    pub bytes_sent: u64,
    /// Bytes of the source's chunks read to send them (as stored, or, for
    /// a copy to another key, the files' bytes read back).
    pub bytes_read: u64,
    pub seconds: f64,
}

/// Where in a snapshot a chunk being sent comes from, so that damage found
/// in it (by this side or by the receiver) names the file or directory
/// rather than only a chunk id.
#[derive(Clone, Debug)]
enum Origin {
    File(Rc<str>),
    /// The chunk list of a file of several chunks.
    List(Rc<str>),
    /// A page of a directory.
    Dir(Rc<str>),
    Record,
}

impl Origin {
    fn describe(&self, id: &ChunkId) -> String {
        match self {
            Origin::File(path) => format!("file {path} (chunk {id})"),
            Origin::List(path) => format!("file {path} (chunk list {id})"),
            Origin::Dir(path) => format!("directory {path} (page {id})"),
            Origin::Record => format!("its snapshot record {id}"),
        }
    }
}

/// `dir/name` for messages, the root being `/`.
/// Copies move stored blobs as they are; an encrypted repository's would
/// have to be opened and sealed again under the other key.
fn not_yet_encrypted(root: &Path) -> Error {
    Error::invalid(format!(
        "{} is encrypted: the copy protocol moves stored blobs as they are, and cannot take them into or out of an encrypted repository (a copy through `--repo ssh://` or `copy --to ssh://` seals them again)",
        root.display()
    ))
}

fn child_path(dir: &str, name: &[u8]) -> String {
    let sep = if dir.ends_with('/') { "" } else { "/" };
    format!("{dir}{sep}{}", String::from_utf8_lossy(name))
}

/// Name the snapshot in an error of copying it (the variants a user reads
/// as a sentence; I/O and catalog errors keep their own form, by which a
/// full disk is still recognized).
fn in_snapshot(name: &str, e: Error) -> Error {
    match e {
        Error::Corrupt(m) => Error::Corrupt(format!("snapshot {name}: {m}")),
        Error::Invalid(m) => Error::Invalid(format!("snapshot {name}: {m}")),
        e => e,
    }
}

/// Collects missing chunks into packs and hands them to the target.
struct Sender<'a> {
    src: &'a Repository,
    cat: &'a Catalog,
    target: &'a mut dyn Target,
    tmp: PathBuf,
    writer: Option<PackWriter>,
    /// Chunks in the pack being filled (the target does not know them yet),
    /// with where they come from, in the order they were added.
    sent: HashSet<ChunkId>,
    pending: Vec<(ChunkId, Origin)>,
    pack_size: u64,
    /// The largest pack the target accepts; a pack is sealed before a chunk
    /// would take it past this.
    pack_limit: u64,
    stats: &'a mut CopyStats,
    added: u64,
}

impl Sender<'_> {
    /// Queue the chunks among `ids` that the target lacks.
    fn send_missing(&mut self, ids: &[(ChunkId, Origin)]) -> Result<()> {
        let ask: Vec<&(ChunkId, Origin)> = {
            let mut seen = HashSet::new();
            ids.iter()
                .filter(|(id, _)| !self.sent.contains(id) && seen.insert(*id))
                .collect()
        };
        for batch in ask.chunks(1024) {
            let batch_ids: Vec<ChunkId> = batch.iter().map(|(id, _)| *id).collect();
            let missing = self.target.missing_chunks(&batch_ids)?;
            for ((id, origin), m) in batch.iter().zip(missing) {
                if m {
                    self.send(id, origin)?;
                }
            }
        }
        Ok(())
    }

    /// The size of the pack being filled, once sealed with one more blob.
    fn sealed_len_with(&self, blob_len: usize) -> u64 {
        let (len, count) = match &self.writer {
            Some(w) => (w.len(), self.sent.len() as u64),
            None => (pack::HEADER_LEN, 0),
        };
        len + blob_len as u64 + (count + 1) * PACK_TABLE_REC + pack::FOOTER_LEN as u64
    }

    fn send(&mut self, id: &ChunkId, origin: &Origin) -> Result<()> {
        let at = |e: Error| match e {
            Error::Corrupt(m) => Error::corrupt(format!("{}: {m}", origin.describe(id))),
            e => e,
        };
        let loc = self.cat.chunk_loc(id)?.ok_or_else(|| {
            at(Error::corrupt(
                "the chunk is missing from the source catalog".to_string(),
            ))
        })?;
        let blob = self
            .src
            .backend
            .read_at(&loc.pack, loc.offset, loc.stored_len as usize)?;
        self.stats.bytes_read += blob.len() as u64;
        // Never replicate damage: a chunk that fails here stops the copy
        // (a local target's own check does the same, and `flush` then
        // finds which chunk it was).
        if !self.target.verifies_packs() {
            decode_blob(&self.src.keying, &blob, id, loc.raw_len as usize).map_err(at)?;
        }
        let kind = self.cat.chunk_kind(id)?.ok_or_else(|| {
            at(Error::corrupt(
                "the chunk's row vanished from the source catalog".to_string(),
            ))
        })?;
        if self.writer.is_some() && self.sealed_len_with(blob.len()) > self.pack_limit {
            self.flush()?;
        }
        if self.sealed_len_with(blob.len()) > self.pack_limit || loc.raw_len > MAX_CHUNK_RAW {
            return Err(Error::invalid(format!(
                "{}: {} bytes stored, {} raw, is larger than the target accepts",
                origin.describe(id),
                blob.len(),
                loc.raw_len
            )));
        }
        if self.writer.is_none() {
            self.writer = Some(PackWriter::create(&self.tmp, 0, &self.src.keying)?);
        }
        let w = self.writer.as_mut().expect("writer just created");
        w.append(*id, kind, loc.raw_len, &blob)?;
        self.sent.insert(*id);
        self.pending.push((*id, origin.clone()));
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
        if let Err(e) = self.target.put_pack(&sealed.name, &bytes) {
            return Err(self.damage_in_pending().unwrap_or(e));
        }
        self.stats.packs_sent += 1;
        self.stats.bytes_sent += sealed.size;
        self.added += sealed.size;
        self.sent.clear();
        self.pending.clear();
        Ok(())
    }

    /// After the target refused a pack: the first of its chunks that does
    /// not read back and decode here, named by where it is in the snapshot.
    /// The receiver only knows chunk ids; checking again here costs one
    /// pack's decoding, and only when a copy fails anyway. `None` when every
    /// chunk is sound (the refusal had another cause, e.g. a full disk).
    fn damage_in_pending(&self) -> Option<Error> {
        self.pending.iter().find_map(|(id, origin)| {
            let check = || -> Result<()> {
                let loc = self.cat.chunk_loc(id)?.ok_or_else(|| {
                    Error::corrupt("the chunk is missing from the source catalog")
                })?;
                let raw = self.src.read_chunk(id, &loc)?;
                match origin {
                    Origin::Dir(_) => decode_page(&raw)
                        .map(drop)
                        .map_err(|e| Error::corrupt(format!("it does not decode: {}", e.detail()))),
                    Origin::List(_) => ChunkList::validate(raw).map(drop),
                    Origin::Record => decode_record(&raw, id.0).map(drop),
                    Origin::File(_) => Ok(()),
                }
            };
            check()
                .err()
                .map(|e| Error::corrupt(format!("{}: {}", origin.describe(id), e.detail())))
        })
    }

    /// Send what the target lacks beneath `tree`, the directory at `path`
    /// in the snapshot (the caller checked the tree itself).
    fn tree(&mut self, tree: TreeId, hash: TreeHash, path: &str) -> Result<()> {
        let _level = crate::format::tree::descend(|| format!("tree {hash}"))?;
        let here = |e: Error| match e {
            Error::Corrupt(m) => Error::corrupt(format!("directory {path} (tree {hash}): {m}")),
            e => e,
        };
        let entries = self.cat.entries(tree).map_err(here)?;
        let mut chunk_ids = Vec::new();
        let mut subdirs: Vec<(TreeId, TreeHash, String)> = Vec::new();
        for n in &entries {
            if let Some(c) = n.content {
                let file: Rc<str> = child_path(path, &n.name).into();
                let list = self.cat.content(&c).map_err(|e| match e {
                    Error::Corrupt(m) => Error::corrupt(format!("file {file}: {m}")),
                    e => e,
                })?;
                chunk_ids.extend(list.iter().map(|c| (c.id, Origin::File(file.clone()))));
                if let ContentRef::List(h) = c {
                    chunk_ids.push((ChunkId(h.0), Origin::List(file)));
                }
            }
            if let Some(t) = n.subtree {
                let dir = child_path(path, &n.name);
                let h = self.cat.tree_hash(t).map_err(|e| match e {
                    Error::Corrupt(m) => Error::corrupt(format!("directory {dir}: {m}")),
                    e => e,
                })?;
                subdirs.push((t, h, dir));
            }
        }
        self.send_missing(&chunk_ids)?;
        let hashes: Vec<TreeHash> = subdirs.iter().map(|s| s.1).collect();
        let mut present = Vec::new();
        for b in hashes.chunks(1024) {
            present.extend(self.target.has_trees(b)?);
        }
        for ((t, h, dir), have) in subdirs.into_iter().zip(present) {
            if !have {
                self.tree(t, h, &dir)?;
            }
        }
        let pages: Vec<(ChunkId, Origin)> = self
            .cat
            .dir_pages(tree)
            .map_err(here)?
            .into_iter()
            .map(|h| (ChunkId(h.0), Origin::Dir(path.into())))
            .collect();
        self.send_missing(&pages)
    }
}

const SCRATCH_PREFIX: &str = "snapfs-copy-";

/// A private directory for packs being filled, in the system's temporary
/// directory, which other users can write to. It is created here with mode
/// 0700 (`mkdir` never follows a symlink and fails if the name exists, so a
/// directory or link planted under the name is never used); its name
/// carries our process id, so leftovers of a killed copy are recognized
/// and removed by the next one, but only if they are our own directories.
fn scratch_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if let Ok(rd) = std::fs::read_dir(&base) {
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(SCRATCH_PREFIX)) else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let ours = std::fs::symlink_metadata(e.path())
                .is_ok_and(|m| m.file_type().is_dir() && m.uid() == me);
            if let Some(pid) = pid
                && ours
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = base.join(format!(
        "{SCRATCH_PREFIX}{}-{}",
        std::process::id(),
        pack::unique_token()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .at(&dir)?;
    // The umask may have taken bits away, never added any; make it exactly
    // 0700 and make sure it is the directory we made.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).at(&dir)?;
    let m = std::fs::symlink_metadata(&dir).at(&dir)?;
    if !m.file_type().is_dir() || m.uid() != me || m.mode() & 0o777 != 0o700 {
        return Err(Error::invalid(format!(
            "{} is not the private directory just created; refusing to use it",
            dir.display()
        )));
    }
    Ok(dir)
}

/// The snapshots `which` names (all when empty), oldest first, each once.
fn selected_snapshots(
    cat: &Catalog,
    which: &[String],
) -> Result<Vec<crate::format::record::SnapshotRow>> {
    let mut snaps = if which.is_empty() {
        cat.snapshots()?
    } else {
        which
            .iter()
            .map(|r| crate::repo::refs::resolve(cat, r))
            .collect::<Result<Vec<_>>>()?
    };
    snaps.sort_by_key(|s| (s.started_ns, s.id.0));
    snaps.dedup_by_key(|s| s.id);
    Ok(snaps)
}

/// Refuse to copy from `src` before any target is made, if it is encrypted.
pub fn refuse_encrypted(src: &Repository) -> Result<()> {
    if src.config.encryption != Encryption::None {
        return Err(not_yet_encrypted(&src.root));
    }
    Ok(())
}

pub fn copy(src: &Repository, target: &mut dyn Target, which: &[String]) -> Result<CopyStats> {
    refuse_encrypted(src)?;
    let t0 = Instant::now();
    let cat = src.catalog()?;
    let mut stats = CopyStats::default();
    let present = target.snapshots()?;
    let snaps = selected_snapshots(&cat, which)?;
    let tmp = scratch_dir()?;
    let pack_limit = target.pack_limit();
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
                pending: Vec::new(),
                pack_size: src.config.pack_size,
                pack_limit,
                stats: &mut stats,
                added: 0,
            };
            let added = (|| -> Result<u64> {
                let root_hash = cat.tree_hash(s.root_tree)?;
                if !sender.target.has_trees(&[root_hash])?[0] {
                    sender.tree(s.root_tree, root_hash, "/")?;
                }
                sender.send_missing(&[(ChunkId(s.hash), Origin::Record)])?;
                sender.flush()?;
                Ok(sender.added)
            })()
            .map_err(|e| in_snapshot(&s.name, e))?;
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
