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
            p.live_chunks > 0 && (unused_share(p) > opts.max_unused || below[i])
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
