//! `snapfs gc`: reclaim the space of forgotten snapshots.
//!
//! Holds the repository's writer lock, so an ingest waits for it (and says
//! so) instead of racing it. Order of work, so a kill at any moment loses
//! nothing: (1) mark what snapshots reach and drop the rest of the catalog
//! rows, in one uncommitted transaction; (2) copy the live chunks of mostly
//! unused packs into new packs, fsynced; (3) point the chunks at their new
//! places, take old packs out of use, commit; (4) delete the files of packs
//! out of use once no running mount can still be reading them.

use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::format::blob::decode_blob;
use crate::format::pack::{PackWriter, SealedPack};
use crate::repo::Repository;

#[derive(Clone, Debug)]
pub struct GcOptions {
    pub dry_run: bool,
    /// Rewrite a pack when more than this share of it is unused (0.0–1.0).
    pub max_unused: f64,
    /// Run even on an append-only repository.
    pub allow_delete: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            max_unused: 0.10,
            allow_delete: false,
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
        let rewrite_bytes: u64 = usage
            .iter()
            .filter(|p| {
                p.live_chunks > 0
                    && 1.0 - p.live_bytes as f64 / p.size.max(1) as f64 > opts.max_unused
            })
            .map(|p| p.live_bytes)
            .sum();
        let progress = crate::commands::progress::Progress::new(
            "gc",
            "packs",
            (!opts.dry_run && rewrite_bytes > 0).then_some(rewrite_bytes),
        );
        for p in &usage {
            let unused = unused_share(p);
            if p.live_chunks == 0 {
                stats.packs_removed += 1;
                doomed.push((p.id, p.name));
            } else if unused > opts.max_unused {
                if opts.dry_run {
                    stats.packs_rewritten += 1;
                    doomed.push((p.id, p.name));
                    continue;
                }
                let mut intact = true;
                for e in cat.chunks_in_pack(p.id)? {
                    let blob = repo
                        .backend
                        .read_at(&p.name, e.offset, e.stored_len as usize)?;
                    // Never copy damage forward: a damaged chunk stays where it
                    // is, and so does its pack, for verify to report.
                    if let Err(err) = decode_blob(&blob, &e.id, e.raw_len as usize) {
                        log::warn!("pack {} kept: {err}", p.name);
                        intact = false;
                        continue;
                    }
                    if writer.is_none() {
                        writer = Some(PackWriter::create(&repo.tmp_dir())?);
                    }
                    let w = writer.as_mut().expect("writer just created");
                    w.append(e.id, e.kind, e.raw_len, &blob)?;
                    progress.bytes(blob.len() as u64);
                    if w.len() >= repo.config.pack_size {
                        sealed.push(seal(repo, writer.take().expect("writer present"))?);
                    }
                }
                if intact {
                    stats.packs_rewritten += 1;
                    doomed.push((p.id, p.name));
                }
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
                cat.move_chunk(&e.id, id, e.offset)?;
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
    let (freed, waiting) = delete_doomed(repo, &cat)?;
    stats.bytes_freed = freed;
    stats.packs_waiting = waiting;
    stats.seconds = t0.elapsed().as_secs_f64();
    Ok(stats)
}

/// The share of a pack that no chunk uses, not counting the pack's own
/// header and table (which any rewrite would have too).
fn unused_share(p: &crate::repo::catalog::PackUsage) -> f64 {
    let overhead = crate::format::pack::HEADER_LEN
        + crate::format::pack::FOOTER_LEN as u64
        + 49 * p.live_chunks;
    let needed = (p.live_bytes + overhead).min(p.size);
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
