//! `snapfs rebuild-catalog`: a new catalog from the packs, for the day
//! catalog.db is lost or damaged, and never a worse one than it replaces.
//!
//! Packs describe their own chunks (the chunk index); trees and snapshot
//! records are metadata chunks in them; forget records keep forgotten
//! snapshots forgotten.
//!
//! The new catalog is built in a file of its own beside catalog.db, which
//! stays as it is until the new one is complete: then it is made durable and
//! renamed over catalog.db in one step, the old file kept under a second
//! name. A killed rebuild leaves the old catalog in place; the next rebuild
//! removes what the killed one left.
//!
//! The catalog being replaced, when it still opens, is both a source and the
//! yardstick. Where the packs no longer yield a tree (a missing pack, a
//! damaged tree record), its rows stand in; where a pack's own table is lost
//! (a truncated pack), the chunk locations it knew that still read correctly
//! are kept. And a result that holds fewer snapshots, entries or file bytes
//! than it does is not swapped in without `--force`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::format::pack::{ChunkKind, PackEntry};
use crate::format::record::{Record, decode_record};
use crate::ids::{Hash, PackName};
use crate::repo::Repository;
use crate::repo::backend::fsync_dir;
use crate::repo::catalog::{Catalog, ChunkLoc};
use crate::repo::coalesce::Prefetched;
use crate::repo::import::{Importer, SnapshotDamage};

/// Names of files a rebuild builds its catalog in (then renamed into place).
pub(crate) const BUILDING: &str = "catalog.db.rebuild-";
/// Names under which replaced catalogs are kept.
const ASIDE: &str = "catalog.db.before-rebuild-";

#[derive(Clone, Debug, Default)]
pub struct RebuildOptions {
    /// Replace the catalog even when the rebuilt one holds less than it.
    pub force: bool,
}

/// What a catalog holds: the figures a rebuild compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CatalogTotals {
    pub snapshots: u64,
    /// Entries (files, directories, links, devices) of every snapshot, a
    /// name that is in several snapshots counted in each.
    pub entries: u64,
    /// Sizes of the regular files of every snapshot, summed the same way:
    /// the bytes a restore of every snapshot would write. Stored bytes
    /// would not do: a catalog can point at chunks the packs have lost.
    pub bytes: u64,
}

/// A pack whose own table cannot be read.
#[derive(Clone, Debug, Serialize)]
pub struct UnreadablePack {
    pub pack: String,
    pub error: String,
    /// Chunks the previous catalog placed in it that still read correctly
    /// at those places, and are kept.
    pub chunks_kept: u64,
}

/// A snapshot of the previous catalog that the rebuilt one lacks.
#[derive(Clone, Debug, Serialize)]
pub struct LostSnapshot {
    pub name: String,
    pub id: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RebuildStats {
    /// Whether the rebuilt catalog is now catalog.db.
    pub replaced: bool,
    /// Whether it replaced a catalog that held more, because of --force.
    pub forced: bool,
    /// Where the replaced catalog is kept, if there was one.
    #[serde(serialize_with = "crate::repo::paths::lossy_path_opt")]
    pub old_catalog: Option<PathBuf>,
    /// Why the previous catalog could not be read, if it could not (it is
    /// then simply replaced, and kept aside all the same).
    pub old_catalog_unreadable: Option<String>,
    /// Files a killed rebuild had left, removed.
    pub leftovers_removed: u64,
    pub packs: u64,
    pub chunks: u64,
    pub snapshots: u64,
    pub forgotten: u64,
    /// Packs the previous catalog lists that are not in the repository.
    pub missing_packs: Vec<String>,
    pub unreadable_packs: Vec<UnreadablePack>,
    /// Trees taken from the previous catalog's rows (their records in the
    /// packs are missing or damaged).
    pub trees_reused: u64,
    /// Snapshots of the previous catalog the rebuilt one lacks.
    pub snapshots_lost: Vec<LostSnapshot>,
    /// Per snapshot, directories whose contents are lost (shown empty) or
    /// were taken from the previous catalog.
    pub damaged_snapshots: Vec<SnapshotDamage>,
    /// What the previous catalog holds, if it could be read.
    pub before: Option<CatalogTotals>,
    /// What the rebuilt catalog holds.
    pub after: CatalogTotals,
    /// How the rebuilt catalog holds less than the previous one. When not
    /// empty, it replaced that one only with --force.
    pub worse: Vec<String>,
    pub problems: Vec<String>,
    pub seconds: f64,
}

/// The catalog a rebuild would replace, opened for reading only.
struct Previous {
    cat: Catalog,
    totals: CatalogTotals,
    /// By record id.
    snapshots: HashMap<Hash, PreviousSnapshot>,
}

struct PreviousSnapshot {
    name: String,
    entries: u64,
    bytes: u64,
    change_share: f64,
    alarm: bool,
}

impl Previous {
    /// None when there is no catalog; an error when it does not read.
    fn open(path: &Path) -> Result<Option<Previous>> {
        if std::fs::symlink_metadata(path).is_err() {
            return Ok(None);
        }
        // Read-only: a rebuild that is refused or killed leaves it as it was.
        let cat = Catalog::open_read(path)?;
        let mut memo = HashMap::new();
        let mut totals = CatalogTotals::default();
        let mut snapshots = HashMap::new();
        for s in cat.snapshots()? {
            let (entries, bytes) = match cat.holdings(s.root_tree, &mut memo) {
                Ok(h) => (h.entries, h.bytes),
                Err(e) => {
                    // Counted as holding nothing: a rebuild that recovers
                    // the snapshot can only do better.
                    log::warn!("previous catalog, snapshot {}: {e}", s.name);
                    (0, 0)
                }
            };
            totals.snapshots += 1;
            totals.entries = totals.entries.saturating_add(entries);
            totals.bytes = totals.bytes.saturating_add(bytes);
            snapshots.insert(
                s.hash,
                PreviousSnapshot {
                    name: s.name,
                    entries,
                    bytes,
                    change_share: s.change_share,
                    alarm: s.alarm,
                },
            );
        }
        Ok(Some(Previous {
            cat,
            totals,
            snapshots,
        }))
    }
}

/// A mount, restore, verify or copy reading the catalog would go on with
/// the row ids of the old one against the new one (other files' bytes, or
/// errors): the catalog is only replaced with no reader about.
pub(crate) fn refuse_with_readers(repo: &Repository, command: &str) -> Result<()> {
    let readers = repo.live_leases()?;
    if readers.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = readers.into_iter().map(|(name, _)| name).collect();
    Err(Error::invalid(format!(
        "{command} replaces the catalog that running readers use ({}, leases in {}); \
         unmount the mounts and let restores, verifies and copies finish, then run it again",
        names.join(", "),
        repo.root.join("mounts").display()
    )))
}

pub fn rebuild_catalog(repo: &Repository, opts: &RebuildOptions) -> Result<RebuildStats> {
    let t0 = Instant::now();
    let _lock = repo.lock("rebuild-catalog")?;
    refuse_with_readers(repo, "rebuild-catalog")?;
    let mut stats = RebuildStats::default();
    let path = repo.catalog_path();
    stats.leftovers_removed = remove_leftovers(repo.catalog_dir(), &path)?;
    let previous = match Previous::open(&path) {
        Ok(p) => p,
        // Busy or an I/O error says nothing about the catalog: stop rather
        // than replace a catalog that may be fine.
        Err(e) if transient(&e) => return Err(e),
        Err(e) => {
            stats.old_catalog_unreadable = Some(e.to_string());
            None
        }
    };
    stats.before = previous.as_ref().map(|p| p.totals);

    let building = repo
        .catalog_dir()
        .join(format!("{BUILDING}{}", crate::format::pack::unique_token()));
    let built = build(repo, &building, previous.as_ref(), &mut stats);
    let new_snapshots = match built {
        Ok(s) => s,
        Err(e) => {
            remove_building(&building);
            return Err(e);
        }
    };
    if let Some(prev) = &previous {
        compare(prev, &new_snapshots, &mut stats);
    }
    // Closed before the swap, which may fold its log in.
    drop(previous);
    if !stats.worse.is_empty() && !opts.force {
        remove_building(&building);
        stats.seconds = t0.elapsed().as_secs_f64();
        return Ok(stats);
    }
    stats.forced = !stats.worse.is_empty();
    // A reader that started during the build (readers take no writer lock).
    if let Err(e) = refuse_with_readers(repo, "rebuild-catalog") {
        remove_building(&building);
        return Err(e);
    }
    match swap(repo, &building, &path) {
        Ok(aside) => stats.old_catalog = aside,
        Err(e) => {
            remove_building(&building);
            return Err(e);
        }
    }
    stats.replaced = true;
    stats.seconds = t0.elapsed().as_secs_f64();
    Ok(stats)
}

/// Whether an error opening the previous catalog is about the moment, not
/// about the file: another process holding it, or the disk failing.
fn transient(e: &Error) -> bool {
    match e {
        Error::Io { .. } => true,
        Error::Catalog(c) => c.kind == crate::error::CatalogErrorKind::Transient,
        _ => false,
    }
}

/// Build the new catalog at `building`. Returns what each of its snapshots
/// holds, by record id, and fills `stats`.
fn build(
    repo: &Repository,
    building: &Path,
    previous: Option<&Previous>,
    stats: &mut RebuildStats,
) -> Result<HashMap<Hash, (u64, u64)>> {
    create_building(building)?;
    let cat = Catalog::open(building, true)?;
    let tx = cat.transaction()?;
    let old = previous.map(|p| &p.cat);

    let (mut listed, marked) = crate::repo::bucket::list_between_marks(
        || Ok(repo.marked_packs()?.into_iter().collect()),
        || repo.backend.list(),
    )?;
    // Packs a gc marked in a store come last: a chunk is located in one of
    // them only where no pack that stays holds it.
    listed.sort_by_key(|p| marked.contains(p));
    // Held from before they are read.
    let marks = if marked.is_empty() {
        Default::default()
    } else {
        let reads: Vec<_> = listed
            .iter()
            .filter(|p| marked.contains(p))
            .copied()
            .collect();
        crate::repo::bucket::hold_marked(repo, &reads)?
    };
    let mut unreadable: HashMap<PackName, String> = HashMap::new();
    // From a store, the metadata chunks are read ahead, many at a time.
    let mut metadata = Vec::new();
    for (name, table) in repo.pack_tables(&listed) {
        match table {
            Ok((size, entries)) => {
                stats.chunks += entries.len() as u64;
                cat.add_pack(name, size, &entries)?;
                stats.packs += 1;
                if repo.remote.is_some() {
                    metadata.extend(
                        entries
                            .iter()
                            .filter(|e| e.kind != ChunkKind::Data)
                            .map(|e| (*name, e.clone())),
                    );
                }
            }
            Err(e) => {
                let kept = match old {
                    Some(old) => salvage(repo, old, name),
                    None => None,
                };
                let chunks_kept = kept.as_ref().map_or(0, |k| k.1.len() as u64);
                stats.problems.push(if chunks_kept > 0 {
                    format!(
                        "pack {name}: {e}; kept {chunks_kept} chunk(s) the previous catalog placed in it, which still read correctly"
                    )
                } else {
                    format!("pack {name}: {e}")
                });
                if let Some((size, entries)) = kept.filter(|k| !k.1.is_empty()) {
                    stats.chunks += entries.len() as u64;
                    cat.add_pack(name, size, &entries)?;
                    stats.packs += 1;
                }
                unreadable.insert(*name, e.to_string());
                stats.unreadable_packs.push(UnreadablePack {
                    pack: name.to_string(),
                    error: e.to_string(),
                    chunks_kept,
                });
            }
        }
    }
    let mut missing: HashSet<PackName> = HashSet::new();
    if let Some(old) = old {
        let on_disk: HashSet<&PackName> = listed.iter().collect();
        match old.packs() {
            Ok(packs) => {
                for (_, name, _) in packs {
                    if !on_disk.contains(&name) {
                        stats.problems.push(format!(
                            "pack {name}: listed in the previous catalog, missing from the repository"
                        ));
                        stats.missing_packs.push(name.to_string());
                        missing.insert(name);
                    }
                }
            }
            Err(e) => log::warn!("previous catalog: its packs cannot be listed: {e}"),
        }
    }

    let prefetched = Prefetched::metadata(repo, metadata.iter().map(|(p, e)| (*p, e)));
    drop(metadata);

    // Snapshot records, minus the forgotten ones.
    let mut records = Vec::new();
    let mut forgotten: HashSet<Hash> = HashSet::new();
    let mut failed: HashMap<Hash, String> = HashMap::new();
    for id in cat.chunk_ids_of_kind(ChunkKind::Snapshot)? {
        let read = match prefetched.take(&id) {
            Some(b) => Ok(b),
            None => cat
                .chunk_loc(&id)?
                .ok_or_else(|| Error::corrupt(format!("chunk {id} vanished")))
                .and_then(|loc| repo.read_chunk(&id, &loc)),
        }
        .and_then(|b| decode_record(&b, id.0));
        match read {
            Ok(Record::Snapshot { row, .. }) => {
                records.push((row.started_ns, row.name.clone(), id))
            }
            Ok(Record::Forget(hashes)) => {
                cat.add_tombstone(&id)?;
                forgotten.extend(hashes);
            }
            Err(e) => {
                stats.problems.push(format!("snapshot record {id}: {e}"));
                failed.insert(id.0, e.to_string());
            }
        }
    }
    records.sort();
    let mut importer = Importer::new(repo, &cat).with_prefetched(prefetched);
    if let Some(old) = old {
        importer = importer.with_fallback(old);
    }
    for (_, name, id) in records {
        if forgotten.contains(&id.0) {
            stats.forgotten += 1;
            continue;
        }
        match importer.snapshot(&id, 0) {
            Ok(Some(_)) => stats.snapshots += 1,
            Ok(None) => {}
            Err(e) => {
                stats.problems.push(format!("snapshot {name}: {e}"));
                failed.insert(id.0, e.to_string());
            }
        }
    }
    stats.problems.append(&mut importer.problems);
    stats.trees_reused = importer.reused_trees;
    stats.damaged_snapshots = std::mem::take(&mut importer.damage);
    drop(importer);

    if !marked.is_empty() {
        // Marked packs that still hold chunks nothing else does: this
        // command's lease keeps them from a gc while it reads.
        let ids = crate::repo::bucket::packs_among(&cat, |p| marked.contains(p))?;
        let pack_ids: Vec<_> = ids.iter().map(|p| p.0).collect();
        let holding = |held: &HashMap<crate::ids::PackId, u64>| -> Vec<PackName> {
            ids.iter()
                .filter(|p| held.get(&p.0).copied().unwrap_or(0) > 0)
                .map(|p| p.1)
                .collect()
        };
        // Only chunks a snapshot reaches stay located there: nothing
        // deduplicates against the others (a gc may be deleting them).
        let kept = holding(&cat.reached_chunks_held(&pack_ids)?);
        cat.drop_unreached_in(&pack_ids)?;
        if !crate::repo::bucket::settle_marked(repo, &kept, &marks)? {
            return Err(Error::invalid(format!(
                "a gc elsewhere deleted packs of {} while the catalog was rebuilt from them; run the command again",
                repo.location()
            )));
        }
    }
    cat.attribute_added_bytes()?;
    let mut memo = HashMap::new();
    let mut held = HashMap::new();
    for s in cat.snapshots()? {
        if let Some(p) = previous.and_then(|p| p.snapshots.get(&s.hash)) {
            cat.set_change(s.id, p.change_share, p.alarm)?;
        }
        let h = cat.holdings(s.root_tree, &mut memo).unwrap_or_else(|e| {
            // Counted as holding nothing: the comparison then says so.
            stats.problems.push(format!(
                "snapshot {}: its rows cannot be counted: {e}",
                s.name
            ));
            Default::default()
        });
        stats.after.snapshots += 1;
        stats.after.entries = stats.after.entries.saturating_add(h.entries);
        stats.after.bytes = stats.after.bytes.saturating_add(h.bytes);
        held.insert(s.hash, (h.entries, h.bytes));
    }
    tx.commit()?;

    if let Some(prev) = previous {
        let mut lost: Vec<(&Hash, &PreviousSnapshot)> = prev
            .snapshots
            .iter()
            .filter(|(h, _)| !held.contains_key(*h))
            .collect();
        lost.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        for (hash, p) in lost {
            let reason = match failed.get(hash) {
                Some(e) => e.clone(),
                None if forgotten.contains(hash) => {
                    "a forget record in the packs names it".to_string()
                }
                None => record_whereabouts(&prev.cat, hash, &missing, &unreadable),
            };
            stats.snapshots_lost.push(LostSnapshot {
                name: p.name.clone(),
                id: hash.to_hex(),
                reason,
            });
        }
    }

    // Everything in the one file that will be renamed; the write-ahead log
    // and shared memory go with the connection.
    cat.fold_wal()?;
    drop(cat);
    for side in ["-wal", "-shm"] {
        let p = side_file(building, side);
        match std::fs::symlink_metadata(&p) {
            Ok(md) if side == "-wal" && md.len() > 0 => {
                return Err(Error::invalid(format!(
                    "{} still holds {} bytes after the catalog was closed",
                    p.display(),
                    md.len()
                )));
            }
            Ok(_) => std::fs::remove_file(&p).at(&p)?,
            Err(_) => {}
        }
    }
    std::fs::File::open(building)
        .and_then(|f| f.sync_all())
        .at(building)?;
    Ok(held)
}

/// The file a new catalog is built in: a new file, never one planted
/// under the name; 0600 (0640 in a repository shared with a group) through
/// the umask the repository set.
pub(crate) fn create_building(building: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(building)
        .at(building)?;
    Ok(())
}

/// Why the record of a snapshot the previous catalog has was not found.
fn record_whereabouts(
    old: &Catalog,
    hash: &Hash,
    missing: &HashSet<PackName>,
    unreadable: &HashMap<PackName, String>,
) -> String {
    match old.chunk_loc(&crate::ids::ChunkId(*hash)) {
        Ok(Some(loc)) if missing.contains(&loc.pack) => {
            format!("its record was in pack {}, which is missing", loc.pack)
        }
        Ok(Some(loc)) => match unreadable.get(&loc.pack) {
            Some(e) => format!(
                "its record was in pack {}, which cannot be read ({e})",
                loc.pack
            ),
            None => format!(
                "its record was in pack {}, which no longer holds it",
                loc.pack
            ),
        },
        _ => "its record is in no readable pack".to_string(),
    }
}

/// The chunks of pack `name`, whose own table is unreadable, that the
/// previous catalog knew and that still read and verify where it said.
/// None when that catalog cannot say.
fn salvage(repo: &Repository, old: &Catalog, name: &PackName) -> Option<(u64, Vec<PackEntry>)> {
    let size = repo.backend.size(name).ok()?;
    let known = match old.chunks_in_pack_named(name) {
        Ok(k) => k,
        Err(e) => {
            log::warn!("previous catalog: the chunks of pack {name} cannot be listed: {e}");
            return None;
        }
    };
    let kept = known
        .into_iter()
        .filter(|e| {
            let inside = e
                .offset
                .checked_add(u64::from(e.stored_len))
                .is_some_and(|end| end <= size);
            inside && repo.read_chunk(&e.id, &ChunkLoc::in_pack(*name, e)).is_ok()
        })
        .collect();
    Some((size, kept))
}

/// Fill `stats.worse` with every way the rebuilt catalog holds less than
/// the previous one: in total, and snapshot by snapshot (one snapshot lost
/// is not made up for by another one found).
fn compare(prev: &Previous, new: &HashMap<Hash, (u64, u64)>, stats: &mut RebuildStats) {
    let (b, a) = (prev.totals, stats.after);
    let bytes = crate::units::bytes;
    if a.snapshots < b.snapshots || !stats.snapshots_lost.is_empty() {
        let names: Vec<&str> = stats
            .snapshots_lost
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        stats.worse.push(format!(
            "snapshots: {} now, {} rebuilt; lost: {}",
            b.snapshots,
            a.snapshots,
            names.join(", ")
        ));
    }
    if a.entries < b.entries {
        stats.worse.push(format!(
            "entries (files, directories, links) over all snapshots: {} now, {} rebuilt ({} fewer)",
            b.entries,
            a.entries,
            b.entries - a.entries
        ));
    }
    if a.bytes < b.bytes {
        stats.worse.push(format!(
            "file bytes over all snapshots: {} now, {} rebuilt ({} fewer)",
            bytes(b.bytes),
            bytes(a.bytes),
            bytes(b.bytes - a.bytes)
        ));
    }
    let mut shrunk: Vec<(&str, String)> = prev
        .snapshots
        .iter()
        .filter_map(|(hash, p)| {
            let &(entries, size) = new.get(hash)?;
            (entries < p.entries || size < p.bytes).then(|| {
                (
                    p.name.as_str(),
                    format!(
                        "snapshot {}: {} entries and {} now, {} entries and {} rebuilt",
                        p.name,
                        p.entries,
                        bytes(p.bytes),
                        entries,
                        bytes(size)
                    ),
                )
            })
        })
        .collect();
    shrunk.sort();
    stats.worse.extend(shrunk.into_iter().map(|s| s.1));
}

fn side_file(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Remove a catalog being built, with its side files.
pub(crate) fn remove_building(building: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(side_file(building, suffix));
    }
}

/// Remove what a killed rebuild left: catalogs it was building, and a
/// second name it had given the current catalog before it could rename
/// the new one over it. Called with the writer lock held, so no rebuild is
/// running.
pub(crate) fn remove_leftovers(root: &Path, catalog: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let current = std::fs::symlink_metadata(catalog)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    let mut removed = 0;
    for e in std::fs::read_dir(root).at(root)? {
        let e = e.at(root)?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        let stale = if name.starts_with(BUILDING) {
            true
        } else if let Some(rest) = name.strip_prefix(ASIDE) {
            // Only the main file: its side files are judged with it below.
            !rest.ends_with("-wal")
                && !rest.ends_with("-shm")
                && e.metadata()
                    .ok()
                    .is_some_and(|m| Some((m.dev(), m.ino())) == current)
        } else {
            false
        };
        if !stale {
            continue;
        }
        let p = e.path();
        std::fs::remove_file(&p).at(&p)?;
        removed += 1;
        if name.starts_with(ASIDE) {
            // Its side files were moved there empty (see `swap`).
            for side in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(side_file(&p, side));
            }
        }
    }
    if removed > 0 {
        log::info!("removed {removed} file(s) left by a rebuild that did not finish");
        fsync_dir(root)?;
    }
    Ok(removed)
}

/// Put the finished catalog at `building` in place of `catalog`, keeping
/// the old one under a new name (returned). At every moment catalog.db is
/// one complete catalog, the old or the new.
pub(crate) fn swap(repo: &Repository, building: &Path, catalog: &Path) -> Result<Option<PathBuf>> {
    let exists = std::fs::symlink_metadata(catalog).is_ok();
    // Committed rows still in the old write-ahead log must reach the old
    // file before that log is moved away from it.
    let wal = side_file(catalog, "-wal");
    if exists
        && std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0)
        && let Err(e) = Catalog::open(catalog, false).and_then(|c| c.fold_wal())
    {
        // Unreadable: it goes aside with its log, as it is.
        log::debug!("previous catalog's log not folded in: {e}");
    }
    let sides: Vec<&str> = ["-wal", "-shm"]
        .into_iter()
        .filter(|s| std::fs::symlink_metadata(side_file(catalog, s)).is_ok())
        .collect();
    let mut aside = None;
    if exists || !sides.is_empty() {
        let stamp = crate::time::snapshot_stamp(crate::time::now_ns());
        let mut to = repo.catalog_dir().join(format!("{ASIDE}{stamp}"));
        let mut n = 2;
        while ["", "-wal", "-shm"]
            .iter()
            .any(|s| std::fs::symlink_metadata(side_file(&to, s)).is_ok())
        {
            to = repo.catalog_dir().join(format!("{ASIDE}{stamp}-{n}"));
            n += 1;
        }
        if exists {
            // A second name first, so that catalog.db never goes missing.
            if let Err(e) = std::fs::hard_link(catalog, &to) {
                // A filesystem without hard links: a moment without catalog.db.
                log::debug!("hard link {}: {e}; renaming instead", to.display());
                std::fs::rename(catalog, &to).at(catalog)?;
            }
            aside = Some(to.clone());
        }
        // Side files never stay beside the new catalog: SQLite would take
        // an old log for the new file's own.
        for suffix in sides {
            let from = side_file(catalog, suffix);
            match std::fs::rename(&from, side_file(&to, suffix)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).at(&from),
            }
        }
    }
    std::fs::rename(building, catalog).at(catalog)?;
    fsync_dir(repo.catalog_dir())?;
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a killed rebuild can leave: a catalog being built (with its
    /// log), and a second name of the current catalog made just before the
    /// rename. Both go; a catalog kept aside by a finished rebuild stays.
    #[test]
    fn leftovers_of_a_killed_rebuild_are_removed_and_kept_catalogs_are_not() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path();
        let catalog = root.join("catalog.db");
        std::fs::write(&catalog, b"current").expect("write");
        let write = |name: &str| std::fs::write(root.join(name), b"x").expect("write");
        write(&format!("{BUILDING}abc"));
        write(&format!("{BUILDING}abc-wal"));
        write(&format!("{ASIDE}2026-01-01T00-00-00Z"));
        let linked = root.join(format!("{ASIDE}2026-01-02T00-00-00Z"));
        std::fs::hard_link(&catalog, &linked).expect("link");
        std::fs::write(side_file(&linked, "-wal"), b"").expect("write");
        write("catalog.db-wal");

        assert_eq!(remove_leftovers(root, &catalog).expect("tidy"), 3);
        let mut left: Vec<String> = std::fs::read_dir(root)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                "catalog.db".to_string(),
                "catalog.db-wal".to_string(),
                format!("{ASIDE}2026-01-01T00-00-00Z"),
            ]
        );
        assert_eq!(std::fs::read(&catalog).expect("read"), b"current");
    }
}
