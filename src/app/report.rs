//! What commands print: a human summary, or a stable JSON shape with `--json`.

use serde::Serialize;

use crate::commands::ingest::IngestStats;
use crate::commands::restore::RestoreStats;
use crate::format::record::SnapshotRow;

pub use crate::units::bytes;

fn json<T: Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("report serializes")
    );
}

#[derive(Serialize)]
struct SnapshotRef<'a> {
    id: &'a str,
    name: &'a str,
}

#[derive(Serialize)]
struct IngestJson<'a> {
    snapshot: SnapshotRef<'a>,
    #[serde(flatten)]
    stats: &'a IngestStats,
}

pub fn ingest(s: &IngestStats, as_json: bool) {
    if s.alarm {
        eprintln!(
            "warning: {:.0}% of the previous snapshot changed or vanished, far above the usual level; \
             check with: snapfs diff latest~1 latest (mass encryption by ransomware looks like this)",
            s.change_share * 100.0
        );
    }
    if as_json {
        json(&IngestJson {
            snapshot: SnapshotRef {
                id: &s.snapshot_id,
                name: &s.snapshot_name,
            },
            stats: s,
        });
        return;
    }
    println!(
        "snapshot {} ({}) made: {} files, {} dirs, {}; read {}, added {} in {:.1}s",
        s.snapshot_name,
        &s.snapshot_id[..8],
        s.files,
        s.dirs,
        bytes(s.size),
        bytes(s.bytes_read),
        bytes(s.added_bytes),
        s.seconds
    );
    if !s.warnings.is_empty() {
        eprintln!(
            "{} warning(s); {} file(s) could not be read (named above)",
            s.warnings.len(),
            s.unreadable
        );
    }
}

#[derive(Serialize)]
struct SnapshotJson<'a> {
    id: String,
    name: &'a str,
    time: String,
    finished: String,
    host: &'a str,
    /// Null when the row's column does not decode: unknown, not empty.
    sources: Option<Vec<String>>,
    tags: Option<&'a [String]>,
    files: u64,
    dirs: u64,
    size: u64,
    added_bytes: u64,
    warnings: u64,
    change_share: f64,
    alarm: bool,
    /// Why the row's sources or tags did not decode.
    #[serde(skip_serializing_if = "Option::is_none")]
    damaged: Option<String>,
}

pub fn snapshots(list: &[SnapshotRow], as_json: bool) {
    // A damaged row is listed (its data is intact), marked, and warned of.
    for s in list {
        if let Some(why) = &s.damage {
            log::warn!(
                "snapshot {}: its catalog row is damaged: {why}; `snapfs rebuild-catalog` restores it from the packs",
                s.name
            );
        }
    }
    if as_json {
        let rows: Vec<SnapshotJson> = list
            .iter()
            .map(|s| SnapshotJson {
                id: s.hash.to_hex(),
                name: &s.name,
                time: crate::time::rfc3339(s.started_ns),
                finished: crate::time::rfc3339(s.finished_ns),
                host: &s.host,
                sources: s
                    .damage
                    .as_ref()
                    .is_none_or(|d| d.sources.is_none())
                    .then(|| {
                        s.sources
                            .iter()
                            .map(|p| p.to_string_lossy().into_owned())
                            .collect()
                    }),
                tags: s
                    .damage
                    .as_ref()
                    .is_none_or(|d| d.tags.is_none())
                    .then_some(&s.tags[..]),
                files: s.files,
                dirs: s.dirs,
                size: s.size,
                added_bytes: s.added_bytes,
                warnings: s.warnings,
                change_share: s.change_share,
                alarm: s.alarm,
                damaged: s.damage.as_ref().map(|d| d.to_string()),
            })
            .collect();
        json(&rows);
        return;
    }
    println!(
        "{:<8}  {:<22}  {:<20}  {:<12}  {:>9}  {:>10}  {:>10}  sources",
        "id", "name", "time", "host", "files", "size", "added"
    );
    for s in list {
        let sources: Vec<String> = s.sources.iter().map(|p| p.display().to_string()).collect();
        let mut srcs = sources.join(" ");
        if !s.tags.is_empty() {
            srcs.push_str(&format!("  [{}]", s.tags.join(",")));
        }
        if let Some(why) = &s.damage {
            srcs.push_str(&format!("  DAMAGED ROW: {why}"));
        }
        if s.alarm {
            srcs.push_str(&format!(
                "  CHANGE ALARM: {:.0}% changed",
                s.change_share * 100.0
            ));
        }
        println!(
            "{:<8}  {:<22}  {:<20}  {:<12}  {:>9}  {:>10}  {:>10}  {}",
            crate::repo::refs::short_id(s),
            s.name,
            crate::time::display(s.started_ns),
            s.host,
            s.files,
            bytes(s.size),
            bytes(s.added_bytes),
            srcs
        );
    }
    println!("{} snapshot(s)", list.len());
}

pub fn restore(s: &RestoreStats, as_json: bool) {
    if as_json {
        json(s);
    } else {
        println!(
            "restored {}: {} files, {} dirs, {} hard links, {} in {:.1}s",
            s.snapshot,
            s.files,
            s.dirs,
            s.links,
            bytes(s.bytes),
            s.seconds
        );
        if s.skipped > 0 {
            println!(
                "{} files were already complete from an earlier run (verified, not written again)",
                s.skipped
            );
        }
    }
}

pub fn forget(
    decisions: &[crate::commands::forget::Decision],
    dry_run: bool,
    gc: Option<&crate::commands::gc::GcStats>,
    as_json: bool,
) {
    if as_json {
        #[derive(Serialize)]
        struct Out<'a> {
            dry_run: bool,
            snapshots: &'a [crate::commands::forget::Decision],
            gc: Option<&'a crate::commands::gc::GcStats>,
        }
        json(&Out {
            dry_run,
            snapshots: decisions,
            gc,
        });
        return;
    }
    for d in decisions {
        let verdict = match (d.keep, dry_run) {
            (true, _) => "keep",
            (false, true) => "would remove",
            (false, false) => "removed",
        };
        let why = if d.reasons.is_empty() {
            String::new()
        } else {
            format!("  ({})", d.reasons.join(", "))
        };
        println!(
            "{:<12}  {:<8}  {:<22}  {}  {}{}",
            verdict,
            &d.id[..8],
            d.name,
            d.time,
            d.host,
            why
        );
    }
    let removed = decisions.iter().filter(|d| !d.keep).count();
    println!(
        "{} snapshot(s) {}, {} kept",
        removed,
        if dry_run {
            "would be removed"
        } else {
            "removed"
        },
        decisions.len() - removed
    );
    if let Some(g) = gc {
        gc_line(g);
    }
}

fn gc_line(g: &crate::commands::gc::GcStats) {
    println!(
        "gc{}: {} unused pack(s) removed, {} rewritten{} into {}; freed {}, wrote {}{}",
        if g.dry_run { " (dry run)" } else { "" },
        g.packs_removed,
        g.packs_rewritten,
        if g.packs_recompressed > 0 {
            format!(" ({} to compress them again)", g.packs_recompressed)
        } else {
            String::new()
        },
        g.packs_written,
        bytes(g.bytes_freed),
        bytes(g.bytes_written),
        if g.packs_waiting > 0 {
            format!(
                "; {} pack(s) wait for running readers (mounts, restores, verify, copy) to end",
                g.packs_waiting
            )
        } else {
            String::new()
        }
    );
}

pub fn key_slots(slots: &[crate::commands::key::SlotRow], as_json: bool) {
    if as_json {
        json(&slots);
        return;
    }
    println!("{:<18} {:<20} {:<20} kdf", "slot", "created", "host");
    for s in slots {
        println!(
            "{:<18} {:<20} {:<20} {}{}",
            s.id,
            crate::time::rfc3339_secs(s.created),
            s.host,
            s.kdf,
            if s.current {
                "  (opened this time)"
            } else {
                ""
            }
        );
    }
}

pub fn upgrade(u: &crate::commands::upgrade::UpgradeStats, as_json: bool) {
    if as_json {
        json(u);
        return;
    }
    if u.from == u.to {
        println!("the repository already has format {}", u.to);
    } else {
        println!(
            "upgraded from format {} to {}: {} snapshot(s), {} directories, {} entries checked; wrote {} metadata chunk(s), {} in {:.1}s",
            u.from,
            u.to,
            u.snapshots,
            u.directories,
            u.entries_checked,
            u.chunks_written,
            bytes(u.bytes_written),
            u.seconds
        );
        if let Some(p) = &u.old_catalog {
            println!("the format-{} catalog is kept as {}", u.from, p.display());
        }
        for r in &u.renamed {
            println!(
                "snapshot {:?} is now {:?}: format {} refuses its old name",
                r.from, r.to, u.to
            );
        }
    }
    if let Some(g) = &u.gc {
        gc_line(g);
    }
}

pub fn gc(g: &crate::commands::gc::GcStats, as_json: bool) {
    if as_json {
        json(g);
    } else {
        gc_line(g);
    }
}

pub fn verify(r: &crate::commands::verify::VerifyReport, as_json: bool) {
    if as_json {
        json(r);
        return;
    }
    for p in &r.problems {
        println!("problem: {p}");
    }
    for f in &r.damaged_files {
        println!("damaged: {} {}", f.snapshot, f.path.display());
    }
    println!(
        "{}: {} snapshot(s), {} pack(s); read {} pack(s), {} chunk(s), {} in {:.1}s",
        if r.ok { "ok" } else { "PROBLEMS FOUND" },
        r.snapshots,
        r.packs,
        r.packs_read,
        r.chunks_read,
        bytes(r.bytes_read),
        r.seconds
    );
    if !r.damaged_snapshots.is_empty() {
        println!("damaged snapshots: {}", r.damaged_snapshots.join(" "));
    }
}

pub fn rebuild(r: &crate::commands::rebuild::RebuildStats, as_json: bool) {
    if as_json {
        json(r);
        return;
    }
    for p in &r.problems {
        println!("problem: {p}");
    }
    if let Some(e) = &r.old_catalog_unreadable {
        println!("the previous catalog does not read ({e}); it is replaced");
    }
    for l in &r.snapshots_lost {
        println!(
            "snapshot lost: {} ({}): {}",
            l.name,
            &l.id[..8.min(l.id.len())],
            l.reason
        );
    }
    for d in &r.damaged_snapshots {
        let more = |listed: usize, count: u64| {
            let rest = count.saturating_sub(listed as u64);
            if rest > 0 {
                format!(" and {rest} more")
            } else {
                String::new()
            }
        };
        if d.lost_dirs_count > 0 {
            println!(
                "snapshot {}: contents lost, shown empty: {}{}",
                d.snapshot,
                d.lost_dirs.join(" "),
                more(d.lost_dirs.len(), d.lost_dirs_count)
            );
        }
        if d.reused_dirs_count > 0 {
            println!(
                "snapshot {}: taken from the previous catalog: {}{}",
                d.snapshot,
                d.reused_dirs.join(" "),
                more(d.reused_dirs.len(), d.reused_dirs_count)
            );
        }
    }
    if r.leftovers_removed > 0 {
        println!(
            "removed {} file(s) left by a rebuild that did not finish",
            r.leftovers_removed
        );
    }
    let a = &r.after;
    if let Some(b) = &r.before {
        println!(
            "current catalog: {} snapshot(s), {} entries, {}; rebuilt: {} snapshot(s), {} entries, {}",
            b.snapshots,
            b.entries,
            bytes(b.bytes),
            a.snapshots,
            a.entries,
            bytes(a.bytes)
        );
    }
    for w in &r.worse {
        println!("fewer than now: {w}");
    }
    println!(
        "rebuilt the catalog from {} pack(s): {} chunk(s), {} snapshot(s) ({} forgotten ones left out, {} tree(s) from the previous catalog) in {:.1}s",
        r.packs, r.chunks, r.snapshots, r.forgotten, r.trees_reused, r.seconds
    );
    if !r.replaced {
        println!("NOT REPLACED: the current catalog is kept as it is (--force replaces it)");
    } else if r.forced {
        println!("replaced with --force, although the rebuilt catalog holds less");
    }
    if let Some(old) = &r.old_catalog {
        println!("previous catalog kept as {}", old.display());
    }
}

pub fn diff(r: &crate::commands::diff::DiffReport, as_json: bool) {
    use crate::commands::diff::ChangeKind;
    if as_json {
        json(r);
        return;
    }
    for c in &r.changes {
        let mark = match c.change {
            ChangeKind::Added => "+",
            ChangeKind::Removed => "-",
            ChangeKind::Modified => "M",
            ChangeKind::Metadata => "U",
        };
        let slash = if c.kind == "dir" { "/" } else { "" };
        println!("{mark}    {}{slash}", c.path.display());
    }
    println!(
        "{} -> {}: {} added ({}), {} removed ({}), {} modified ({}), {} metadata only",
        r.from,
        r.to,
        r.added,
        bytes(r.added_bytes),
        r.removed,
        bytes(r.removed_bytes),
        r.modified,
        bytes(r.modified_bytes),
        r.metadata
    );
}

pub fn stats(s: &crate::commands::stats::Stats, as_json: bool) {
    if as_json {
        json(s);
        return;
    }
    if let Some(name) = &s.snapshot {
        println!("snapshot {name}");
    } else {
        println!("{} snapshot(s)", s.snapshots);
    }
    println!("logical size:       {}", bytes(s.logical_bytes));
    println!(
        "unique data:        {} in {} chunks",
        bytes(s.unique_raw_bytes),
        s.chunks
    );
    println!("stored data:        {}", bytes(s.stored_data_bytes));
    println!("pack files:         {}", bytes(s.pack_bytes));
    println!("deduplication:      {:.2}x", s.dedup_ratio);
    println!("compression:        {:.2}x", s.compression_ratio);
    if let Some(u) = s.unique_bytes {
        println!(
            "only in this snapshot: {} (freed by forgetting it, then gc)",
            bytes(u)
        );
    }
    if let Some(a) = s.added_bytes {
        println!("added when made:    {}", bytes(a));
    }
}

pub fn log(l: &crate::commands::log::Log, as_json: bool) {
    if as_json {
        json(l);
        return;
    }
    println!("{}: {} version(s)", l.path, l.versions.len());
    for v in &l.versions {
        println!(
            "  {:<40} {:>10}  mtime {}  in {} snapshot(s): {}",
            v.name,
            bytes(v.size),
            v.mtime,
            v.snapshots.len(),
            v.snapshots.join(" ")
        );
    }
    for e in &l.events {
        println!("  {} {:<9} in {}", e.time, e.event, e.snapshot);
    }
}

pub fn find(matches: &[crate::commands::find::FindMatch], as_json: bool) {
    if as_json {
        json(&matches);
        return;
    }
    for m in matches {
        let slash = if m.kind == "dir" { "/" } else { "" };
        let (first, last) = (
            m.snapshots.first().map_or("", String::as_str),
            m.snapshots.last().map_or("", String::as_str),
        );
        println!(
            "{}{slash}  {}  in {} snapshot(s) ({first} .. {last})",
            m.path.display(),
            bytes(m.size),
            m.snapshots.len()
        );
    }
    println!("{} path(s)", matches.len());
}

pub fn copy(s: &crate::commands::copy::CopyStats, to: &str, as_json: bool) {
    if as_json {
        json(s);
        return;
    }
    for n in &s.snapshots_copied {
        println!("copied {n}");
    }
    println!(
        "{} snapshot(s) copied to {to} ({} already there): {} chunks in {} pack(s), {} sent in {:.1}s",
        s.snapshots_copied.len(),
        s.snapshots_present,
        s.chunks_sent,
        s.packs_sent,
        bytes(s.bytes_sent),
        s.seconds
    );
}
