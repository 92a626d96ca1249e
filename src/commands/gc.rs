//! `snapfs gc`: reclaim the space of forgotten snapshots.
//!
//! Holds the repository's writer lock, so an ingest waits for it (and says
//! so) instead of racing it. Order of work, so a kill at any moment loses
//! nothing: (1) mark what snapshots reach and drop the rest of the catalog
//! rows, in one uncommitted transaction; (2) copy the live chunks of mostly
//! unused packs into new packs, fsynced; (3) point the chunks at their new
//! places, take old packs out of use, commit; (4) delete the files of packs
//! out of use once no running mount can still be reading them.
//!
//! `--recompress LEVEL` also rewrites every pack whose header records a
//! lower zstd level, compressing each frame again. Ingest stays at a fast
//! level; the space a higher one saves is taken later, once, off the
//! backup's critical path. Frames keep their size, so random reads through
//! the mount cost what they did.

use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::blob::{Encoder, Keying, decode_blob};
use crate::format::pack::{PackEntry, PackWriter, SealedPack, parse_header, recorded_level};
use crate::repo::Repository;

#[derive(Clone, Debug)]
pub struct GcOptions {
    pub dry_run: bool,
    /// Rewrite a pack when more than this share of it is unused (0.0–1.0).
    pub max_unused: f64,
    /// Run even on an append-only repository.
    pub allow_delete: bool,
    /// Compress again at this zstd level (1–22) the packs recorded below it.
    pub recompress: Option<i32>,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            max_unused: 0.10,
            allow_delete: false,
            recompress: None,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct GcStats {
    pub dry_run: bool,
    pub trees_removed: u64,
    pub contents_removed: u64,
    pub chunks_removed: u64,
    pub packs_removed: u64,
    pub packs_rewritten: u64,
    /// Of those, packs rewritten to compress them again (`--recompress`).
    pub packs_recompressed: u64,
    pub packs_written: u64,
    pub bytes_written: u64,
    /// Bytes of pack files deleted now.
    pub bytes_freed: u64,
    /// Packs out of use whose files wait for older mounts to end.
    pub packs_waiting: u64,
    pub seconds: f64,
}

pub fn gc(repo: &Repository, opts: &GcOptions) -> Result<GcStats> {
    let t0 = Instant::now();
    repo.check_may_delete("gc", opts.allow_delete)?;
    let target = match opts.recompress {
        Some(level) => match recorded_level(level) {
            0 => {
                return Err(Error::invalid(format!(
                    "--recompress {level}: the level must be between 1 and {}",
                    crate::format::pack::MAX_RECORDED_LEVEL
                )));
            }
            t => Some((level, t)),
        },
        None => None,
    };
    let _lock = repo.lock("gc")?;
    let cat = repo.catalog()?;
    let mut stats = GcStats {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let tx = cat.transaction()?;
    let result = (|| -> Result<()> {
        repo.adopt_orphan_packs(&cat)?;
        cat.mark_live()?;
        let dead = cat.delete_dead()?;
        stats.trees_removed = dead.pages;
        stats.contents_removed = dead.contents;
        stats.chunks_removed = dead.chunks;
        let usage = cat.pack_usage()?;
        let mut writer: Option<PackWriter> = None;
        let mut sealed: Vec<SealedPack> = Vec::new();
        let mut doomed = Vec::new();
        // Which packs hold live chunks compressed below the target level.
        let mut below = vec![false; usage.len()];
        if let Some((_, t)) = target {
            for (p, below) in usage.iter().zip(&mut below) {
                if p.live_chunks > 0 {
                    *below = pack_level(repo, &p.name).is_some_and(|l| l < t);
                }
            }
        }
        let rewrite = |i: usize| {
            let p = &usage[i];
            p.live_chunks > 0 && (unused_share(p, &repo.keying) > opts.max_unused || below[i])
        };
        let rewrite_bytes: u64 = (0..usage.len())
            .filter(|&i| rewrite(i))
            .map(|i| usage[i].live_bytes)
            .sum();
        let progress = crate::commands::progress::Progress::new(
            "gc",
            "packs",
            (!opts.dry_run && rewrite_bytes > 0).then_some(rewrite_bytes),
        );
        // A rewrite pack records the target level when every blob in it
        // was compressed at that level (or kept, being smaller as it was).
        // Without one, blobs are copied as they were: it records the
        // lowest level of the packs it copies from, so that a later
        // `--recompress` does not take the work done before for none.
        let level = match target {
            Some((_, t)) => t,
            None => (0..usage.len())
                .filter(|&i| rewrite(i) && !opts.dry_run)
                .map(|i| read_level(repo, &usage[i].name).unwrap_or(0))
                .min()
                .unwrap_or(0),
        };
        // In a store other hosts share, packs are marked before the packs
        // that take over their chunks are stored: a host that sees a
        // rewritten pack sees the mark too, and reads the chunks from the
        // new pack from then on (`bucket::index_new`).
        let marked: Vec<_> = match &repo.remote {
            Some(store) if !opts.dry_run => {
                let times = crate::repo::store_lease::Times::from_env()?;
                // A mark already there keeps its (earlier) time: marking
                // again must not put off its deletion at every gc.
                let already: std::collections::HashSet<_> =
                    crate::repo::store_lease::marks(store.as_ref())?
                        .into_iter()
                        .filter(|m| m.1.is_some())
                        .map(|m| m.0)
                        .collect();
                let mut marked = Vec::new();
                for (i, p) in usage.iter().enumerate() {
                    if (p.live_chunks == 0 || rewrite(i)) && !already.contains(&p.name) {
                        crate::repo::store_lease::mark(store.as_ref(), &times, &p.name)?;
                        marked.push(p.name);
                    }
                }
                marked
            }
            _ => Vec::new(),
        };
        for (i, p) in usage.iter().enumerate() {
            if p.live_chunks == 0 {
                stats.packs_removed += 1;
                doomed.push((p.id, p.name));
                continue;
            }
            if !rewrite(i) {
                continue;
            }
            stats.packs_recompressed += u64::from(below[i]);
            if opts.dry_run {
                stats.packs_rewritten += 1;
                doomed.push((p.id, p.name));
                continue;
            }
            let mut blobs = Vec::new();
            for e in cat.chunks_in_pack(p.id)? {
                let blob = repo
                    .backend
                    .read_at(&p.name, e.offset, e.stored_len as usize)?;
                blobs.push((e, blob));
            }
            let mut intact = true;
            for (e, blob) in prepare(&repo.keying, blobs, target.map(|(l, _)| l))? {
                // Never copy damage forward: a damaged chunk stays where it
                // is, and so does its pack, for verify to report.
                let blob = match blob {
                    Ok(b) => b,
                    Err(err) => {
                        log::warn!("pack {} kept: {err}", p.name);
                        intact = false;
                        continue;
                    }
                };
                if writer.is_none() {
                    writer = Some(PackWriter::create(&repo.tmp_dir(), level, &repo.keying)?);
                }
                let w = writer.as_mut().expect("writer just created");
                w.append(e.id, e.kind, e.raw_len, &blob)?;
                progress.bytes(e.stored_len as u64);
                if w.len() >= repo.config.pack_size {
                    sealed.push(seal(repo, writer.take().expect("writer present"))?);
                }
            }
            if intact {
                stats.packs_rewritten += 1;
                doomed.push((p.id, p.name));
            }
        }
        if let Some(w) = writer.take() {
            sealed.push(seal(repo, w)?);
        }
        let known: std::collections::HashMap<_, _> = usage.iter().map(|u| (u.name, u.id)).collect();
        for s in &sealed {
            // A rewrite can come out byte for byte equal to a pack we have
            // (e.g. one a killed gc left behind): then that pack holds the
            // chunks, and must stay.
            let id = match known.get(&s.name) {
                Some(&id) => {
                    doomed.retain(|(_, n)| *n != s.name);
                    id
                }
                None => {
                    stats.packs_written += 1;
                    stats.bytes_written += s.size;
                    cat.add_empty_pack(&s.name, s.size)?
                }
            };
            for e in &s.entries {
                cat.move_chunk(&e.id, id, e.offset, e.stored_len)?;
            }
        }
        if let Some(store) = &repo.remote {
            // Kept after all (damaged, or rewritten into itself).
            for name in marked.iter().filter(|m| !doomed.iter().any(|d| d.1 == **m)) {
                crate::repo::store_lease::unmark(store.as_ref(), name)?;
            }
        }
        for (id, name) in doomed {
            cat.doom_pack(id, &name)?;
        }
        Ok(())
    })();
    // An error, or a dry run, drops the transaction: nothing it did stays.
    result?;
    if opts.dry_run {
        drop(tx);
        stats.packs_waiting = cat.doomed_packs()?.len() as u64;
        stats.seconds = t0.elapsed().as_secs_f64();
        return Ok(stats);
    }
    tx.commit()?;
    cat.checkpoint();
    let (freed, waiting) = match &repo.remote {
        Some(_) => delete_marked(repo, &cat)?,
        None => delete_doomed(repo, &cat)?,
    };
    stats.bytes_freed = freed;
    stats.packs_waiting = waiting;
    stats.seconds = t0.elapsed().as_secs_f64();
    Ok(stats)
}

/// The level a pack's header records; None (and a warning) when the
/// header cannot be read or is damaged: such a pack is left for verify.
fn pack_level(repo: &Repository, name: &crate::ids::PackName) -> Option<u8> {
    match read_level(repo, name) {
        Ok(l) => Some(l),
        Err(e) => {
            log::warn!("pack {name} is not compressed again: {e}");
            None
        }
    }
}

/// The level a pack's header records.
fn read_level(repo: &Repository, name: &crate::ids::PackName) -> Result<u8> {
    repo.backend
        .read_at(name, 0, crate::format::pack::HEADER_LEN as usize)
        .and_then(|h| parse_header(&h, &repo.keying))
}

/// Check each blob of a pack, and with `level` compress it again (kept as
/// it was where that is not smaller), on every core: each blob as it will
/// be written, or why it is damaged.
fn prepare(
    keying: &std::sync::Arc<Keying>,
    blobs: Vec<(PackEntry, Vec<u8>)>,
    level: Option<i32>,
) -> Result<Vec<(PackEntry, Result<Vec<u8>>)>> {
    let one = |enc: &mut Option<Encoder>, (e, blob): (PackEntry, Vec<u8>)| {
        let out = decode_blob(keying, &blob, &e.id, e.raw_len as usize).and_then(|raw| {
            let Some(enc) = enc.as_mut() else {
                return Ok(blob);
            };
            // `decode_blob` checked the bytes against the id; the encoder
            // needs the frames' digests.
            let hashed = keying.hash_chunk(&raw);
            let again = enc.encode(&raw, &hashed)?;
            Ok(if again.len() < blob.len() {
                again
            } else {
                blob
            })
        });
        (e, out)
    };
    let encoder = || level.map(|l| Encoder::new(l, keying)).transpose();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    if level.is_none() || workers < 2 || blobs.len() < 2 {
        let mut enc = encoder()?;
        return Ok(blobs.into_iter().map(|b| one(&mut enc, b)).collect());
    }
    let per = blobs.len().div_ceil(workers);
    let mut parts: Vec<Vec<(PackEntry, Vec<u8>)>> = Vec::new();
    let mut blobs = blobs.into_iter().peekable();
    while blobs.peek().is_some() {
        parts.push(blobs.by_ref().take(per).collect());
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| {
                s.spawn(move || -> Result<Vec<_>> {
                    let mut enc = encoder()?;
                    Ok(part.into_iter().map(|b| one(&mut enc, b)).collect())
                })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.extend(
                h.join()
                    .map_err(|_| Error::invalid("a compressor thread panicked"))??,
            );
        }
        Ok(out)
    })
}

/// The share of a pack that no chunk uses, not counting the pack's own
/// header and table as a pack of just its live chunks would have them
/// (sealed tables included: a pack gc just wrote must not look wasteful,
/// or every gc writes it again).
fn unused_share(p: &crate::repo::catalog::PackUsage, keying: &Keying) -> f64 {
    let table = crate::format::pack::table_len(keying, p.live_chunks).unwrap_or(u64::MAX);
    let overhead = crate::format::pack::HEADER_LEN
        .saturating_add(crate::format::pack::FOOTER_LEN as u64)
        .saturating_add(table);
    let needed = p.live_bytes.saturating_add(overhead).min(p.size);
    1.0 - needed as f64 / p.size.max(1) as f64
}

fn seal(repo: &Repository, w: PackWriter) -> Result<SealedPack> {
    let s = w.seal()?;
    repo.backend.put(&s.name, &s.path)?;
    Ok(s)
}

/// Delete the files of packs out of use that no running mount can still read.
/// Returns (bytes freed, packs still waiting).
pub fn delete_doomed(repo: &Repository, cat: &crate::repo::catalog::Catalog) -> Result<(u64, u64)> {
    // Packs doomed by a committed transaction (this gc's, or one killed
    // before it got here) get their time now, after that commit.
    cat.stamp_doomed(crate::time::now_ns())?;
    let oldest_mount = repo.oldest_lease_ns()?;
    let mut freed = 0;
    let mut waiting = 0;
    for (name, doomed_ns) in cat.doomed_packs()? {
        if oldest_mount.is_some_and(|m| m <= doomed_ns) {
            waiting += 1;
            continue;
        }
        match repo.backend.size(&name) {
            Ok(size) => {
                repo.backend.delete(&name)?;
                freed += size;
            }
            Err(crate::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        cat.forget_doomed(&name)?;
    }
    Ok((freed, waiting))
}

/// The second phase of gc in a store that several hosts share (see
/// `repo::store_lease`): mark the packs this catalog took out of use, then
/// delete the marked packs that no live lease and no snapshot still needs.
/// Returns (bytes freed, packs still waiting).
fn delete_marked(repo: &Repository, cat: &crate::repo::catalog::Catalog) -> Result<(u64, u64)> {
    use crate::repo::store_lease::{self, Found, Times};
    let store = repo.remote.as_ref().expect("a repository in a store");
    let store = store.as_ref();
    let times = Times::from_env()?;
    cat.stamp_doomed(crate::time::now_ns())?;
    let mut marks: std::collections::HashMap<_, _> =
        store_lease::marks(store)?.into_iter().collect();
    for (name, _) in cat.doomed_packs()? {
        if let std::collections::hash_map::Entry::Vacant(e) = marks.entry(name) {
            store_lease::mark(store, &times, &name)?;
            e.insert(Some(crate::time::now_ns()));
        }
    }
    let now = crate::time::now_ns();
    let own = repo.store_lease.as_ref().map(|l| l.name().to_string());
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for (name, found) in store_lease::leases(store, &times, own.as_deref(), now)? {
        match found {
            Found::Live(r) if r.writer => writers.push(r.who()),
            Found::Live(r) => readers.push(r),
            Found::Expired => {
                if let Err(e) = store.delete(&name) {
                    log::debug!("removing the expired lease {}: {e}", store.shown(&name));
                }
            }
            Found::Unreadable(why) => {
                log::warn!("{why}: no pack is deleted while it is there");
                writers.push(why);
            }
        }
    }
    let waiting_all = marks.len() as u64;
    if let Some(w) = writers.first() {
        log::warn!(
            "{waiting_all} pack(s) taken out of use wait: {w}{} may still deduplicate against them",
            if writers.len() > 1 { " and others" } else { "" }
        );
        return Ok((0, waiting_all));
    }
    let grace = i64::try_from(times.grace.as_nanos()).unwrap_or(i64::MAX);
    let seen = store_lease::first_seen(&repo.root, &marks, now)?;
    let ready: Vec<_> = marks
        .iter()
        .filter_map(|(name, t)| {
            let t = (*t)?;
            let since = seen.get(name).copied().unwrap_or(now).max(t);
            (now >= since.saturating_add(grace)
                && !readers.iter().any(|r| store_lease::blocks(r, t, &times)))
            .then_some(*name)
        })
        .collect();
    let mut waiting = waiting_all - ready.len() as u64;
    let live: std::collections::HashSet<_> = cat.packs()?.into_iter().map(|p| p.1).collect();
    // Marks on packs this catalog uses, not yet ready: checked too, and
    // taken away where a snapshot reaches the pack (keeping a pack is
    // always safe). A mark planted on a pack in use, with a time long
    // past, would otherwise stay, and every reader that reads the pack
    // would hold its lease before that time, keeping every gc from
    // deleting anything while it runs.
    let recheck: Vec<_> = marks
        .keys()
        .filter(|p| live.contains(*p) && !ready.contains(*p))
        .copied()
        .collect();
    if ready.is_empty() && recheck.is_empty() {
        return Ok((0, waiting));
    }
    // Check again, against the store as it is now, that nothing needs
    // them: index them again, catch up with the snapshots other hosts
    // stored (which may have deduplicated against them), and see which
    // chunks any snapshot reaches.
    let tx = cat.transaction()?;
    let mut readded = Vec::new();
    let mut revive = Vec::new();
    let mut gone = Vec::new();
    for name in &ready {
        if live.contains(name) {
            readded.push(*name);
            continue;
        }
        match repo.backend.size(name) {
            Ok(_) => {
                // Indexed again with the new packs below, and any snapshot
                // or forget record in it imported: a pack marked by
                // mistake or by a hostile client may hold one.
                cat.forget_doomed(name)?;
                revive.push(*name);
                readded.push(*name);
            }
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                gone.push(*name);
            }
            Err(e) => {
                log::warn!("pack {name} is kept for now: {e}");
                waiting += 1;
            }
        }
    }
    use crate::repo::bucket::{Behind, behind, index_new};
    let caught_up = match behind(repo)? {
        Behind::No => {
            let doomed = revive.iter().copied().collect();
            revive.is_empty() || index_new(repo, cat, &revive, &doomed, true, true)?
        }
        Behind::New {
            mut new,
            mut doomed,
            ..
        } => {
            new.retain(|p| !revive.contains(p));
            new.extend(&revive);
            doomed.extend(&revive);
            index_new(repo, cat, &new, &doomed, true, true)?
        }
        Behind::Gone => false,
    };
    if !caught_up {
        log::warn!(
            "the catalog cannot catch up with what other hosts did meanwhile: packs taken out of use are deleted at a later gc"
        );
        return Ok((0, waiting_all));
    }
    cat.mark_live()?;
    cat.delete_dead()?;
    let usage: std::collections::HashMap<_, _> =
        cat.pack_usage()?.into_iter().map(|u| (u.name, u)).collect();
    let mut delete = Vec::new();
    let mut kept = Vec::new();
    for name in &readded {
        match usage.get(name) {
            Some(u) if u.live_chunks > 0 => kept.push(*name),
            Some(u) => {
                cat.doom_pack(u.id, name)?;
                delete.push(*name);
            }
            None => delete.push(*name),
        }
    }
    kept.extend(
        recheck
            .iter()
            .filter(|p| usage.get(*p).is_some_and(|u| u.live_chunks > 0)),
    );
    tx.commit()?;
    // A writer or an early reader that came meanwhile stops the deletes;
    // after that, only for as long as a command that comes later waits
    // before it trusts a pack marked this long ago (`Times::fence`).
    let listed = std::time::Instant::now();
    let blocked = store_lease::leases(store, &times, own.as_deref(), crate::time::now_ns())?
        .into_iter()
        .any(|(_, f)| match f {
            Found::Live(r) => r.writer || readers_block(&r, &marks, &delete, &times),
            Found::Expired => false,
            Found::Unreadable(_) => true,
        });
    let mut freed = 0;
    let mut left = 0;
    for name in &delete {
        if blocked || listed.elapsed() > times.delete_window() {
            left += 1;
            continue;
        }
        match repo.backend.size(name) {
            // The window is checked again right before the delete itself.
            Ok(_) if listed.elapsed() > times.delete_window() => {
                left += 1;
                continue;
            }
            Ok(size) => {
                repo.backend.delete(name)?;
                freed += size;
            }
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        store_lease::unmark(store, name)?;
        cat.forget_doomed(name)?;
    }
    for name in gone.iter().chain(&kept) {
        store_lease::unmark(store, name)?;
        cat.forget_doomed(name)?;
    }
    if !kept.is_empty() {
        log::warn!(
            "{} pack(s) taken out of use are kept: snapshots stored since use them",
            kept.len()
        );
    }
    Ok((freed, waiting + left))
}

/// Whether a live reader's lease keeps any of `delete` (with their mark
/// times in `marks`) from going.
fn readers_block(
    r: &crate::repo::store_lease::LeaseRecord,
    marks: &std::collections::HashMap<crate::ids::PackName, Option<i64>>,
    delete: &[crate::ids::PackName],
    times: &crate::repo::store_lease::Times,
) -> bool {
    delete.iter().any(|p| {
        marks
            .get(p)
            .copied()
            .flatten()
            .is_none_or(|t| crate::repo::store_lease::blocks(r, t, times))
    })
}
