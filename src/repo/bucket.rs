//! A repository in a bucket (`--repo s3://BUCKET/PREFIX`).
//!
//! The bucket holds what a local repository's directory holds that matters:
//! `config`, the key slots under `keys/`, and the packs under `packs/`.
//! Everything else lives in a local state directory of this user's, in the
//! cache (`<cache>/s3-<hash of the endpoints, bucket and prefix>/`, 0700):
//! the writer lock and mount leases of this machine, packs being written,
//! the catalog of an unencrypted repository, and copies of `config` and the
//! key slots.
//!
//! The bucket is the truth. Each command brings `config` and the key slots
//! down before it opens the repository (removing local slots the bucket no
//! longer has), and a command that changes them sends them up at once (new
//! slots before removed ones go, so a crash never leaves the bucket without
//! a slot that opens it; `config` last at init, so a bucket never shows a
//! repository without its keys). The catalog is rebuilt from the bucket's
//! packs when it is missing or knows packs the bucket lacks (another
//! machine's gc); packs another machine added are indexed, and their
//! snapshots imported, at the next open.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::store::ObjectStore;
use crate::error::{Error, IoContext, Result};

/// The most bytes of `config` or of one key slot read from a store.
const MAX_SMALL_OBJECT: u64 = 64 << 10;
/// The most key slots brought down (a repository has a few).
const MAX_SLOTS: usize = 64;

/// A repository location: a local directory, or a bucket reached through
/// a client, with the local directory that stands in for it.
pub(crate) struct Place {
    /// The repository's directory, or a bucket's local state directory.
    pub root: PathBuf,
    pub remote: Option<Arc<dyn ObjectStore>>,
}

impl Place {
    pub(crate) fn local(root: &Path) -> Place {
        Place {
            root: root.to_path_buf(),
            remote: None,
        }
    }
}

/// `place` of an existing repository, its config and key slots brought
/// down from a bucket.
pub(crate) fn opened(path: &Path) -> Result<Place> {
    let p = place(path)?;
    if let Some(c) = &p.remote {
        pull(c.as_ref(), &p.root)?;
    }
    Ok(p)
}

/// Where `path` (a directory or `s3://…`) is kept.
pub(crate) fn place(path: &Path) -> Result<Place> {
    let Some(store) = super::store::remote(path)? else {
        return Ok(Place::local(path));
    };
    let base = super::unlock::private_base(&super::unlock::cache_base()?)?;
    let root = base.join(store.state_name());
    super::unlock::private_dir(&base, &root)?;
    Ok(Place {
        root,
        remote: Some(store),
    })
}

/// The listings of a store's packs and doom marks, started as a command
/// opens the repository, so that their round trips pass while the key is
/// derived rather than after it. Only the catch-up at the start of a
/// command may use them (`Repository::take_ahead`).
///
/// The command's lease is written first and the listings start only once
/// it is in the store: a gc that has not seen the lease may be deleting
/// packs (marked ones, due) while they are listed, and only a listing made
/// after the lease lets the catch-up tell such packs apart (it waits out
/// any such gc's delete window before it trusts a due pack, see
/// `settle_marked`). Packs are listed between two listings of marks
/// (`list_between_marks`).
pub(crate) struct ListAhead {
    /// The command's lease, once written (or why it could not be).
    lease: std::sync::mpsc::Receiver<Result<super::store_lease::StoreLease>>,
    /// The backend the listing of packs went through: it keeps the sizes
    /// listed, and becomes the repository's.
    pub packs: Arc<super::store::StorePacks>,
    listing: std::thread::JoinHandle<Result<Listed>>,
}

/// Packs in a store and the packs marked there, as listed.
pub(crate) type Listed = (Vec<crate::ids::PackName>, HashSet<crate::ids::PackName>);

impl ListAhead {
    fn start(store: Arc<dyn ObjectStore>, times: super::store_lease::Times) -> ListAhead {
        let packs = Arc::new(super::store::StorePacks::new(store.clone()));
        let p = packs.clone();
        let (tx, lease) = std::sync::mpsc::sync_channel(1);
        let listing = std::thread::spawn(move || -> Result<Listed> {
            use super::backend::Backend;
            let since = crate::time::now_ns();
            let _ = tx.send(super::store_lease::StoreLease::take(
                store.clone(),
                times,
                "open",
                since,
            ));
            // A lease nobody received goes (is removed) with the channel.
            drop(tx);
            list_between_marks(
                || super::store_lease::marked_names(store.as_ref()),
                || p.list(),
            )
        });
        ListAhead {
            lease,
            packs,
            listing,
        }
    }

    /// The command's lease, as written before the listings started.
    pub(crate) fn lease(&self) -> Result<super::store_lease::StoreLease> {
        self.lease
            .recv()
            .map_err(|_| Error::invalid("the thread writing the lease ended without one"))?
    }

    pub(crate) fn join(self) -> Result<Listed> {
        self.listing
            .join()
            .map_err(|_| Error::invalid("the listing of packs panicked"))?
    }
}

/// A store's packs, listed between two listings of its doom marks (both
/// kept). Marks before packs: a gc deletes a pack before it removes its
/// mark, so a pack listed without a mark in the first listing was not
/// being deleted. Marks after packs too: a gc marks packs before it
/// stores the packs that take over their chunks, so a replacement listed
/// here comes with the marks of the packs it replaces, and the catalog
/// moves its chunks over instead of reading from (and holding) a pack
/// its gc wants gone.
pub(crate) fn list_between_marks(
    marks: impl Fn() -> Result<Vec<crate::ids::PackName>>,
    packs: impl FnOnce() -> Result<Vec<crate::ids::PackName>>,
) -> Result<Listed> {
    let mut marked: HashSet<_> = marks()?.into_iter().collect();
    let listed = packs()?;
    marked.extend(marks()?);
    Ok((listed, marked))
}

/// `opened`, then the command's lease taken and the listings a catch-up
/// needs started while the caller goes on (derives the key).
pub(crate) fn opened_listing_ahead(path: &Path) -> Result<(Place, Option<ListAhead>)> {
    let p = place(path)?;
    let Some(c) = &p.remote else {
        return Ok((p, None));
    };
    let times = super::store_lease::Times::from_env()?;
    // Nothing is written where no repository is.
    pull(c.as_ref(), &p.root)?;
    let ahead = ListAhead::start(c.clone(), times);
    Ok((p, Some(ahead)))
}

/// Bring `config` and the key slots down into the state directory; the
/// repository is not there if the bucket has no `config`.
pub(crate) fn pull(client: &dyn ObjectStore, root: &Path) -> Result<()> {
    // The slots are listed while `config` is read: two round trips at once.
    let (config, listed) = std::thread::scope(|s| {
        let listed = s.spawn(|| client.list("keys"));
        let config = client.get("config", MAX_SMALL_OBJECT);
        let listed = listed
            .join()
            .unwrap_or_else(|_| Err(Error::invalid("the listing of key slots panicked")));
        (config, listed)
    });
    let Some(config) = config? else {
        if root.join("config").exists() {
            // This machine knew a repository there: one that vanished is
            // as suspect as one swapped (see `pin`).
            return Err(Error::invalid(format!(
                "{} no longer holds the repository this machine knew there; if it was removed on \
                 purpose, remove {} to forget it",
                client.shown("config"),
                root.display()
            )));
        }
        return Err(Error::NotARepository(PathBuf::from(client.shown(""))));
    };
    // Checked here, so that a damaged one is named as the bucket's object
    // rather than as the local copy.
    let shown = PathBuf::from(client.shown("config"));
    let text = std::str::from_utf8(&config)
        .map_err(|_| Error::corrupt(format!("{} is not text", shown.display())))?;
    let fresh = super::config::Config::parse(text, &shown)?;
    pin(&fresh, root, &shown)?;
    write_atomic(root, "config", &config)?;
    let keys = root.join("keys");
    let listed = match listed? {
        // Listed before `config` was read: during another machine's
        // `init` (slots first, `config` last) the listing can predate the
        // slots that `config` now needs. Listed again, after it.
        l if l.is_empty() && fresh.encryption != super::Encryption::None => client.list("keys")?,
        l => l,
    };
    if listed.is_empty() {
        // An unencrypted repository: nothing to bring, and a local keys/
        // of an earlier repository here must not stay.
        if keys.exists() {
            std::fs::remove_dir_all(&keys).at(&keys)?;
        }
        return Ok(());
    }
    let mut slots = Vec::new();
    for (name, size) in listed {
        match name.strip_prefix("keys/").filter(|f| slot_name(f)) {
            Some(file) => slots.push((file.to_string(), name, size)),
            None => log::warn!("ignoring {} among the key slots", client.shown(&name)),
        }
    }
    // Slots left out here would be taken as removed, and the next key
    // change would delete them from the bucket: all or none.
    if slots.len() > MAX_SLOTS {
        return Err(Error::corrupt(format!(
            "{} holds {} key slots, more than the {MAX_SLOTS} a repository may have",
            client.shown("keys/"),
            slots.len()
        )));
    }
    super::unlock::private_dir(root, &keys)?;
    let mut wanted = HashSet::new();
    let mut fetch = Vec::new();
    for (file, name, size) in slots {
        if size > MAX_SMALL_OBJECT {
            log::warn!("ignoring {}: {size} bytes", client.shown(&name));
            continue;
        }
        // A slot never changes under its name (a new passphrase makes a
        // new slot): a copy of the listed size here is that slot, and
        // reading it again would only cost a round trip.
        let here = std::fs::symlink_metadata(keys.join(&file));
        if here.is_ok_and(|m| m.is_file() && m.len() == size) {
            wanted.insert(file);
        } else {
            fetch.push((file, name));
        }
    }
    let fetched = super::coalesce::in_parallel(&fetch, client.parallel_reads(), |(_, name)| {
        client.get(name, MAX_SMALL_OBJECT)
    });
    for ((file, _), bytes) in fetch.into_iter().zip(fetched) {
        if let Some(bytes) = bytes? {
            write_atomic(&keys, &file, &bytes)?;
            wanted.insert(file);
        }
    }
    for e in std::fs::read_dir(&keys).at(&keys)? {
        let e = e.at(&keys)?;
        let n = e.file_name().to_string_lossy().into_owned();
        if !wanted.contains(&n) {
            std::fs::remove_file(e.path()).at(e.path())?;
        }
    }
    Ok(())
}

/// Refuse a store's `config` that names another repository, or the same
/// one unencrypted or in another format, than the copy this machine kept
/// from before: whoever holds the store could otherwise turn encryption
/// off (and hide the key slots), and this machine's next backup would go
/// up in the clear.
fn pin(fresh: &super::config::Config, root: &Path, shown: &Path) -> Result<()> {
    let kept = root.join("config");
    let text = match std::fs::read_to_string(&kept) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).at(&kept),
    };
    let Ok(known) = super::config::Config::parse(&text, &kept) else {
        // A damaged local copy pins nothing; it is replaced.
        return Ok(());
    };
    let describe = |c: &super::config::Config| {
        format!(
            "id {}, {}, format {}",
            c.id.map_or_else(|| "none".to_string(), |i| i.to_hex()[..16].to_string()),
            c.encryption.name(),
            c.format
        )
    };
    // Only `upgrade` changes a config, and only its format: chunk sizes,
    // pack size and compression changed by the store would let its holder
    // learn file sizes more finely or make this machine build huge packs.
    let same_settings = known.chunker == fresh.chunker
        && known.pack_size == fresh.pack_size
        && known.compression == fresh.compression;
    if known.id != fresh.id
        || known.encryption != fresh.encryption
        || known.format > fresh.format
        || !same_settings
    {
        return Err(Error::invalid(format!(
            "{} is not the repository this machine knew there ({} before, {} now{}): refused, \
             since whoever holds the store could have swapped it. If it was made again on \
             purpose, remove {} to forget the old one",
            shown.display(),
            describe(&known),
            describe(fresh),
            if same_settings {
                ""
            } else {
                ", with other chunk or pack settings"
            },
            root.display()
        )));
    }
    Ok(())
}

/// Send up the key slots this command made (`added`, file names; None:
/// every local slot, at init), then remove from the store the slots it
/// removed (`removed`). Only those: a slot another host added since this
/// one brought the slots down is not this host's to remove, and one it
/// removed meanwhile is not this host's to bring back. Refused, before
/// anything is removed, where the store would be left with no other slot.
pub(crate) fn push_keys(
    store: &dyn ObjectStore,
    root: &Path,
    added: Option<&[String]>,
    removed: &[String],
) -> Result<()> {
    let keys = root.join("keys");
    if keys.is_dir() {
        for e in std::fs::read_dir(&keys).at(&keys)? {
            let e = e.at(&keys)?;
            let n = e.file_name().to_string_lossy().into_owned();
            if !slot_name(&n) || added.is_some_and(|a| !a.contains(&n)) {
                continue;
            }
            let bytes = std::fs::read(e.path()).at(e.path())?;
            store.put(&format!("keys/{n}"), &bytes)?;
        }
    }
    if removed.is_empty() {
        return Ok(());
    }
    let stored: Vec<String> = store
        .list("keys")?
        .into_iter()
        .filter_map(|(name, _)| name.strip_prefix("keys/").map(str::to_string))
        .filter(|f| slot_name(f))
        .collect();
    if !stored.iter().any(|f| !removed.contains(f)) {
        return Err(Error::invalid(format!(
            "{} would be left with no key slot (another host removed the others meanwhile?); nothing was removed there",
            store.shown("keys/")
        )));
    }
    let mut taken = Vec::new();
    for f in removed.iter().filter(|f| slot_name(f)) {
        let name = format!("keys/{f}");
        if let Some(bytes) = store.get(&name, MAX_SMALL_OBJECT)? {
            taken.push((name.clone(), bytes));
        }
        store.delete(&name)?;
    }
    // Two hosts removing two different slots at once could each have seen
    // the other's: if none is left, the removed ones go back.
    let left = store
        .list("keys")?
        .into_iter()
        .any(|(name, _)| name.strip_prefix("keys/").is_some_and(slot_name));
    if !left {
        for (name, bytes) in &taken {
            store.put(name, bytes)?;
        }
        return Err(Error::invalid(format!(
            "{} was left with no key slot (another host removed the others meanwhile); the removed slot is back there",
            store.shown("keys/")
        )));
    }
    Ok(())
}

/// Send the local `config` up (init writes it last).
pub(crate) fn push_config(client: &dyn ObjectStore, root: &Path) -> Result<()> {
    let path = root.join("config");
    let bytes = std::fs::read(&path).at(&path)?;
    client.put("config", &bytes)
}

/// Prepare the state directory for a new repository in the bucket, which
/// must not hold one: whatever an earlier repository left there locally is
/// not this one's.
pub(crate) fn prepare_init(client: &dyn ObjectStore, root: &Path) -> Result<()> {
    if client.head("config")?.is_some() {
        return Err(Error::invalid(format!(
            "{} is already a snapfs repository",
            client.shown("")
        )));
    }
    clear(root)
}

/// Remove everything in the state directory `root`.
fn clear(root: &Path) -> Result<()> {
    for e in std::fs::read_dir(root).at(root)? {
        let p = e.at(root)?.path();
        let r = if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.at(&p)?;
    }
    Ok(())
}

/// After an init whose config never reached the store (a missing bucket,
/// credentials that may not write, a link that failed): remove what it
/// made on this machine (the state in `root`, the catalog in `catalog`,
/// a directory made for this repository alone), so that nothing here
/// stands for a repository the store does not hold. A later command
/// would take it for one the store lost.
pub(crate) fn undo_init(root: &Path, catalog: Option<&Path>) {
    if let Err(e) = clear(root) {
        log::warn!("after the failed init: {e}");
    }
    if let Some(dir) = catalog
        && let Err(e) = std::fs::remove_dir_all(dir)
    {
        log::warn!("after the failed init: {}: {e}", dir.display());
    }
}

/// A key slot's file name: 16 hex digits and `.key`.
fn slot_name(n: &str) -> bool {
    n.strip_suffix(".key")
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Write `name` in `dir` whole or not at all (0600).
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    // A name of this write's own: two commands may write the same file.
    let tmp = dir.join(format!(
        ".{name}.{}.tmp",
        &crate::format::pack::unique_token()[..16]
    ));
    let dest = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .at(&tmp)?;
    let done = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .at(&tmp)
        .and_then(|()| std::fs::rename(&tmp, &dest).at(&dest));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// How a local catalog stands against its store.
pub(crate) enum Behind {
    /// It knows exactly the packs in use there.
    No,
    /// The store holds `new` packs besides (another machine's backups),
    /// or packs the catalog reads from are marked there (another
    /// machine's gc took them out of use, see `store_lease`, so they are
    /// to be read from no more): indexing the new packs and importing
    /// their snapshots catches up.
    New {
        new: Vec<crate::ids::PackName>,
        /// Every pack marked in the store (the listing `behind` made).
        doomed: HashSet<crate::ids::PackName>,
    },
    /// The catalog knows packs the store no longer has (another
    /// machine's gc): only a rebuild is sure to drop all they held.
    Gone,
}

/// Compare the catalog of a repository in a store with the store. Packs
/// that a gc marked are not new, however the catalog stands: chunks are
/// never found in them again.
pub(crate) fn behind(repo: &super::Repository) -> Result<Behind> {
    behind_as_listed(repo, None)
}

/// `behind`, against `listed` where the listings were made already.
pub(crate) fn behind_as_listed(repo: &super::Repository, listed: Option<Listed>) -> Result<Behind> {
    let cat = repo.catalog()?;
    let live: HashSet<_> = cat.packs()?.into_iter().map(|p| p.1).collect();
    let mut known = live.clone();
    known.extend(cat.doomed_packs()?.into_iter().map(|d| d.0));
    let (stored, doomed) = match listed {
        Some(l) => l,
        None => list_between_marks(
            || Ok(repo.marked_packs()?.into_iter().collect()),
            || repo.backend.list(),
        )?,
    };
    let stored: HashSet<_> = stored.into_iter().collect();
    if !known.is_subset(&stored) {
        return Ok(Behind::Gone);
    }
    // Marked packs the catalog does not know are new too: a mark says
    // where chunks are not to be found, never which snapshots exist (a
    // planted mark must not hide a backup). They come last, so a chunk is
    // located in one only where no other pack holds it.
    let mut new: Vec<_> = stored.difference(&known).copied().collect();
    new.sort_by_key(|p| doomed.contains(p));
    Ok(if new.is_empty() && live.is_disjoint(&doomed) {
        Behind::No
    } else {
        Behind::New { new, doomed }
    })
}

/// `index_new` in a transaction of its own.
pub(crate) fn catch_up(
    repo: &super::Repository,
    new: &[crate::ids::PackName],
    doomed: &HashSet<crate::ids::PackName>,
) -> Result<bool> {
    // Held until the transaction is committed.
    let quiet = repo.lock_if_free()?;
    let cat = repo.catalog()?;
    let tx = cat.transaction()?;
    if !index_new(repo, &cat, new, doomed, false, quiet.is_some())? {
        return Ok(false);
    }
    tx.commit()?;
    Ok(true)
}

/// Index `new` packs (new in the store) and add the snapshots recorded in
/// them, inside the caller's transaction: the catalog catches up with
/// another machine's backups at the cost of what they added, not of the
/// whole repository. Chunks the catalog locates in packs marked in the
/// store (`doomed`: every mark, as last listed) are located in new packs
/// that hold them too (a gc elsewhere copied them there), and a marked
/// pack that then holds none of the catalog's chunks leaves it. Returns false, leaving the rest undone, when a new pack
/// holds a forget record (another machine's forget: a rebuild applies it
/// whole) or a new snapshot needs what this catalog does not have. A new
/// pack that cannot be read is named in a warning and left out, unless
/// `strict` (gc, before it deletes anything: then it returns false).
/// `quiet`: the caller holds the writer lock (no ingest here is half
/// done).
pub(crate) fn index_new(
    repo: &super::Repository,
    cat: &super::catalog::Catalog,
    new: &[crate::ids::PackName],
    doomed: &HashSet<crate::ids::PackName>,
    strict: bool,
    quiet: bool,
) -> Result<bool> {
    let done = index_new_held(repo, cat, new, doomed, strict, quiet);
    if !matches!(done, Ok(true)) {
        // Its work is undone: a rebuild follows (it holds what it reads
        // anew), or the command writes (its lease holds every pack), so
        // the lease need not stay held low for the rest of the command.
        hold(repo, None);
    }
    done
}

/// `index_new`, its lease held low from the start.
fn index_new_held(
    repo: &super::Repository,
    cat: &super::catalog::Catalog,
    new: &[crate::ids::PackName],
    doomed: &HashSet<crate::ids::PackName>,
    strict: bool,
    quiet: bool,
) -> Result<bool> {
    use crate::format::pack::ChunkKind;
    use crate::format::record::{Record, decode_record};
    // Every marked pack the catalog knows: chunks located there move to
    // the new packs that hold them too (a gc elsewhere copied them there).
    let marked_ids = packs_among(cat, |p| doomed.contains(p))?;
    let from: Vec<_> = marked_ids.iter().map(|p| p.0).collect();
    // Held from before anything is read: packs the catalog reads from,
    // and new ones, may be marked.
    let mut reads: Vec<_> = marked_ids.iter().map(|p| p.1).collect();
    reads.extend(new.iter().filter(|p| doomed.contains(p)));
    let marks = hold_marked(repo, &reads)?;
    let mut records = Vec::new();
    // A marked pack may hold the record of a snapshot this catalog saw
    // forgotten (gc moved the rest away): such a record stays forgotten.
    // The forget records this catalog keeps are read when first needed.
    let mut forgotten: Option<HashSet<crate::ids::Hash>> = None;
    let mut metadata = Vec::new();
    for (name, table) in repo.pack_tables(new) {
        let (size, entries) = match table {
            Ok(t) => t,
            // A rebuild could not read it either: it is named and left out
            // (junk planted by a client that may only add objects must not
            // make every command rebuild the catalog).
            Err(e) if !strict => {
                log::warn!("ignoring pack {name} in {}: {e}", repo.location());
                continue;
            }
            Err(e) => {
                log::warn!(
                    "pack {name} in {} cannot be read ({e}): nothing is deleted while it is there",
                    repo.location()
                );
                return Ok(false);
            }
        };
        let id = cat.add_pack(name, size, &entries)?;
        cat.move_out_of(&from, id, &entries)?;
        metadata.extend(
            entries
                .into_iter()
                .filter(|e| e.kind != ChunkKind::Data)
                .map(|e| (*name, e)),
        );
    }
    let prefetched =
        super::coalesce::Prefetched::metadata(repo, metadata.iter().map(|(p, e)| (*p, e)));
    for (name, e) in metadata
        .iter()
        .filter(|(_, e)| e.kind == ChunkKind::Snapshot)
    {
        let suspect = doomed.contains(name);
        let bytes = match prefetched.take(&e.id) {
            Some(b) => Ok(b),
            None => {
                let loc = cat
                    .chunk_loc(&e.id)?
                    .ok_or_else(|| Error::corrupt(format!("chunk {} vanished", e.id)))?;
                repo.read_chunk(&e.id, &loc)
            }
        };
        let record = match bytes.and_then(|b| decode_record(&b, e.id.0)) {
            Ok(r) => r,
            // Bytes a pack's table calls a snapshot record but that are
            // none (planted by a client that may only add objects): named
            // and left out, as an unreadable pack is, or (gc) no catching
            // up. A record that could not be read (a failing link) stops
            // the command: it must not be taken for no snapshot.
            Err(e @ Error::Corrupt(_)) if !strict => {
                log::warn!(
                    "ignoring a snapshot record in pack {name} in {}: {e}",
                    repo.location()
                );
                continue;
            }
            Err(e @ Error::Corrupt(_)) => {
                log::warn!(
                    "a snapshot record in pack {name} in {} cannot be read ({e}): nothing is deleted while it is there",
                    repo.location()
                );
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        match record {
            Record::Snapshot { .. }
                if suspect && forgotten_here(repo, cat, &mut forgotten)?.contains(&e.id.0) => {}
            Record::Snapshot { row, .. } => records.push((row.started_ns, e.id)),
            // Already applied here: nothing to do.
            Record::Forget(_) if cat.is_tombstone(&e.id)? => {}
            Record::Forget(_) => return Ok(false),
        }
    }
    records.sort();
    let mut importer = super::import::Importer::new(repo, cat).with_prefetched(prefetched);
    for (_, id) in &records {
        importer.snapshot(id, 0)?;
    }
    let problems = std::mem::take(&mut importer.problems);
    drop(importer);
    if !problems.is_empty() {
        // Something a new snapshot needs is not where this catalog looks
        // (in a pack a gc marked, say): a rebuild reads every pack.
        for p in &problems {
            log::info!("catching up: {p}");
        }
        return Ok(false);
    }
    cat.attribute_added_bytes()?;
    // Every marked pack the catalog now knows: those it read from, and
    // new ones it indexed.
    let marked_now = packs_among(cat, |p| doomed.contains(p))?;
    let ids: Vec<_> = marked_now.iter().map(|p| p.0).collect();
    let mut held = cat.chunks_held(&ids)?;
    if held.values().any(|&n| n > 0) {
        // Rows no snapshot reaches (a forget here, or a gc elsewhere, left
        // them) must not keep a marked pack: the catalog drops them, as a
        // gc here would, and never deduplicates against them again. Only
        // while no other writer here is at work (`quiet`): the trees an
        // ingest committed before its snapshot is recorded are reached by
        // nothing yet. Otherwise every row counts (the packs are held).
        if quiet {
            cat.mark_live()?;
            cat.delete_dead()?;
            held = cat.chunks_held(&ids)?;
        }
    }
    let mut left = 0;
    let mut kept = Vec::new();
    for (id, name) in &marked_now {
        if held.get(id).copied().unwrap_or(0) == 0 {
            // Its gc deletes it; this catalog only stops knowing it.
            cat.doom_pack(*id, name)?;
            cat.forget_doomed(name)?;
            left += 1;
        } else {
            kept.push(*name);
        }
    }
    if !settle_marked(repo, &kept, &marks)? {
        return Ok(false);
    }
    if !new.is_empty() || left > 0 {
        log::info!(
            "{}: indexed {} new pack(s) and {} snapshot(s) another machine stored; {left} pack(s) a gc took out of use left the catalog",
            repo.location(),
            new.len(),
            records.len()
        );
    }
    Ok(true)
}

/// The snapshots the forget records this catalog keeps (its tombstones)
/// name, read once.
fn forgotten_here<'a>(
    repo: &super::Repository,
    cat: &super::catalog::Catalog,
    known: &'a mut Option<HashSet<crate::ids::Hash>>,
) -> Result<&'a HashSet<crate::ids::Hash>> {
    use crate::format::record::{Record, decode_record};
    if known.is_none() {
        let mut set = HashSet::new();
        for f in cat.tombstones()? {
            let Some(loc) = cat.chunk_loc(&f)? else {
                continue;
            };
            if let Ok(Record::Forget(hs)) = decode_record(&repo.read_chunk(&f, &loc)?, f.0) {
                set.extend(hs);
            }
        }
        *known = Some(set);
    }
    Ok(known.as_ref().expect("just filled"))
}

/// The marks of marked packs a command may read from: their times, None
/// where a mark cannot be read. A pack whose mark vanished is not there.
pub(crate) type Marks = std::collections::HashMap<crate::ids::PackName, Option<i64>>;

/// Before a command reads anything from marked `packs`: their marks, with
/// this command's lease set to count as synced before the earliest, so no
/// gc deletes them while it reads. A catalog that synced after a gc
/// marked them, but before that gc stored the packs that take over their
/// chunks, would otherwise look like one that moved off them.
pub(crate) fn hold_marked(
    repo: &super::Repository,
    packs: &[crate::ids::PackName],
) -> Result<Marks> {
    if packs.is_empty() {
        return Ok(Marks::new());
    }
    let store = repo.remote.as_ref().expect("a repository in a store");
    let marks: Marks = super::store_lease::mark_times(store.as_ref(), packs, |_| None)?
        .into_iter()
        .collect();
    hold(repo, marks.values().filter_map(|t| *t).min());
    Ok(marks)
}

/// Once the catalog is caught up: `kept`, the marked packs it still
/// locates chunks in (of those `hold_marked` gave `marks` of), keep this
/// command's lease low, and no other mark does. Whether they may be
/// trusted: those whose mark is young enough that no gc deletes them yet,
/// or, after waiting out any gc's delete window, still there. False: a gc
/// deleted one, and only a rebuild finds where their chunks are now, if
/// anywhere.
pub(crate) fn settle_marked(
    repo: &super::Repository,
    kept: &[crate::ids::PackName],
    marks: &Marks,
) -> Result<bool> {
    hold(
        repo,
        kept.iter()
            .filter_map(|p| marks.get(p).copied().flatten())
            .min(),
    );
    if kept.is_empty() {
        return Ok(true);
    }
    // A gc removes a mark only after it deleted the pack, or decided to
    // keep it: a pack whose mark went is looked for now.
    for p in kept.iter().filter(|p| !marks.contains_key(p)) {
        if !pack_present(repo, p)? {
            return Ok(false);
        }
    }
    let times = super::store_lease::Times::from_env()?;
    let now = crate::time::now_ns();
    let due: Vec<_> = kept
        .iter()
        .filter(|p| {
            marks
                .get(p)
                .copied()
                .flatten()
                .is_some_and(|t| times.due(t, now))
        })
        .collect();
    if due.is_empty() {
        return Ok(true);
    }
    log::info!(
        "{}: {} pack(s) this catalog reads from may be being deleted by a gc elsewhere; waiting {} s to be sure",
        repo.location(),
        due.len(),
        times.fence().as_secs()
    );
    std::thread::sleep(times.fence());
    for p in due {
        if !pack_present(repo, p)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The catalog's packs whose names `which` picks, with their ids.
pub(crate) fn packs_among(
    cat: &super::catalog::Catalog,
    which: impl Fn(&crate::ids::PackName) -> bool,
) -> Result<Vec<(crate::ids::PackId, crate::ids::PackName)>> {
    Ok(cat
        .packs()?
        .into_iter()
        .filter(|p| which(&p.1))
        .map(|p| (p.0, p.1))
        .collect())
}

/// Whether a pack is in the store now (asked, not as listed).
fn pack_present(repo: &super::Repository, p: &crate::ids::PackName) -> Result<bool> {
    match repo.backend.size(p) {
        Ok(_) => Ok(true),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Hold this command's lease before `earliest`, or not at all (None). A
/// lease that cannot be written is a warning: its reads fail with errors
/// if a gc deletes what it reads, and the command's writes are guarded by
/// its lease as a writer.
fn hold(repo: &super::Repository, earliest: Option<i64>) {
    if let Some(lease) = &repo.store_lease
        && let Err(e) = lease.hold_since(earliest)
    {
        log::warn!(
            "cannot update this command's lease in {} ({e}); a gc elsewhere could delete packs it reads",
            repo.location()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listing of `keys/` naming `junk` objects that are not slots, then
    /// `slots` slot objects of one byte each, and a `config`.
    fn bucket_with(junk: usize, slots: usize) -> crate::repo::s3::S3Client {
        use crate::repo::s3::client::tests::{hostile_server, http};
        let config = super::super::config::Config::default().render();
        hostile_server(move |line| {
            if line.contains("list-type=2") {
                let mut body = String::from(
                    "<?xml version=\"1.0\"?><ListBucketResult \
                     xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>bucket</Name>\
                     <IsTruncated>false</IsTruncated>",
                );
                for i in 0..junk {
                    body +=
                        &format!("<Contents><Key>p/keys/a{i:04}</Key><Size>1</Size></Contents>");
                }
                for i in 0..slots {
                    body += &format!(
                        "<Contents><Key>p/keys/{i:016x}.key</Key><Size>1</Size></Contents>"
                    );
                }
                http("200 OK", "", &(body + "</ListBucketResult>"))
            } else if line.contains("/config") {
                http("200 OK", "", &config)
            } else {
                http("200 OK", "", "x")
            }
        })
    }

    #[test]
    fn bucket_slots_behind_other_objects_are_all_brought_down() {
        let dir = tempfile::tempdir().unwrap();
        pull(&bucket_with(100, 3), dir.path()).unwrap();
        let mut got: Vec<_> = std::fs::read_dir(dir.path().join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        got.sort();
        assert_eq!(
            got,
            (0..3).map(|i| format!("{i:016x}.key")).collect::<Vec<_>>()
        );
    }

    #[test]
    fn bucket_config_that_is_damaged_is_named_as_the_object() {
        use crate::repo::s3::client::tests::{hostile_server, http};
        for body in ["\u{0}\u{ff}garbage", "version = 99\nnonsense\n"] {
            let client = hostile_server(move |_| http("200 OK", "", body));
            let dir = tempfile::tempdir().unwrap();
            let err = pull(&client, dir.path()).unwrap_err().to_string();
            assert!(
                err.contains("s3://bucket/p/config")
                    && !err.contains(&*dir.path().to_string_lossy()),
                "{err}"
            );
            assert!(!dir.path().join("config").exists());
        }
    }

    #[test]
    fn bucket_with_too_many_slots_is_one_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = pull(&bucket_with(0, MAX_SLOTS + 1), dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("s3://bucket/p/keys/") && err.contains("key slots"),
            "{err}"
        );
        assert!(!dir.path().join("keys").exists());
    }

    /// A store that swaps its config for an unencrypted one (and lists no
    /// key slots) is refused: this machine's next backup would otherwise
    /// go up in the clear.
    #[test]
    fn store_that_turns_encryption_off_is_refused() {
        use super::super::config::{Config, Encryption, RepoId};
        let dir = tempfile::tempdir().unwrap();
        let known = Config {
            id: Some(RepoId([7; 32])),
            encryption: Encryption::XChaCha20Poly1305,
            ..Config::default()
        };
        std::fs::write(dir.path().join("config"), known.render()).unwrap();
        let plain = Config {
            id: Some(RepoId([7; 32])),
            ..Config::default()
        };
        let swapped = bucket_serving(plain.render());
        let err = pull(&swapped, dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("not the repository this machine knew"),
            "{err}"
        );
        let kept = std::fs::read_to_string(dir.path().join("config")).unwrap();
        assert_eq!(kept, known.render(), "the local copy was replaced");
        // So is the same repository with other pack settings (a finer
        // chunking would tell the store's holder file sizes more finely).
        let resized = Config {
            pack_size: known.pack_size / 2,
            ..known.clone()
        };
        let err = pull(&bucket_serving(resized.render()), dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("other chunk or pack settings"), "{err}");
        // The same repository again is fine.
        pull(&bucket_serving(known.render()), dir.path()).unwrap();
    }

    /// A store serving `config` and no key slots.
    fn bucket_serving(config: String) -> crate::repo::s3::S3Client {
        use crate::repo::s3::client::tests::{hostile_server, http};
        hostile_server(move |line| {
            if line.contains("list-type=2") {
                http(
                    "200 OK",
                    "",
                    "<?xml version=\"1.0\"?><ListBucketResult \
                     xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>bucket</Name>\
                     <IsTruncated>false</IsTruncated></ListBucketResult>",
                )
            } else {
                http("200 OK", "", &config)
            }
        })
    }

    #[test]
    fn only_slot_names_are_brought_down() {
        assert!(slot_name("0123456789abcdef.key"));
        for bad in [
            "../x.key",
            "0123456789abcdef.key.tmp",
            "x.key",
            ".key",
            "0123456789abcdeg.key",
        ] {
            assert!(!slot_name(bad), "{bad}");
        }
    }
}
