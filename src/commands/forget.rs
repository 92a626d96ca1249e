//! `snapfs forget`: retention policies, applied per (host, sources) group so
//! one machine's policy never removes another's snapshots.
//!
//! The rules follow the familiar keep-last/hourly/daily/... semantics: going
//! from newest to oldest, a periodic rule keeps the newest snapshot of each
//! period (hour, day, ISO week, month, year) until it has kept N periods.
//! A snapshot is kept if any rule keeps it; every decision names its rules.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::record::SnapshotRow;
use crate::repo::Repository;

#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub last: Option<u32>,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub yearly: Option<u32>,
    /// Keep everything this many nanoseconds before the group's newest snapshot.
    pub within_ns: Option<i64>,
    pub tags: Vec<String>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.last.is_none()
            && self.hourly.is_none()
            && self.daily.is_none()
            && self.weekly.is_none()
            && self.monthly.is_none()
            && self.yearly.is_none()
            && self.within_ns.is_none()
            && self.tags.is_empty()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    pub id: String,
    pub name: String,
    pub time: String,
    pub host: String,
    pub keep: bool,
    /// The rules that keep it (empty when removed).
    pub reasons: Vec<String>,
}

/// `1y2m3w4d5h`: years of 365 days, months of 30 days, weeks, days, hours.
pub fn parse_duration(s: &str) -> Result<i64> {
    let bad = || Error::invalid(format!("bad duration {s:?}: use e.g. 7d, 2w, 1y6m, 36h"));
    let mut total: i64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let hours = match c {
            'y' => 365 * 24,
            'm' => 30 * 24,
            'w' => 7 * 24,
            'd' => 24,
            'h' => 1,
            _ => return Err(bad()),
        };
        total = total
            .checked_add(n.checked_mul(hours * 3_600_000_000_000).ok_or_else(bad)?)
            .ok_or_else(bad)?;
    }
    if !num.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(total)
}

/// ISO 8601 (year, week) of a day count since the epoch.
fn iso_week(days: i64) -> (i64, i64) {
    let weekday = (days + 3).rem_euclid(7); // Monday = 0
    let thursday = days - weekday + 3;
    let ns = thursday * 86_400 * 1_000_000_000;
    let (year, _, _, _, _, _) = crate::time::utc_parts(ns);
    let jan1 = days_from_civil(year, 1, 1);
    (year, (thursday - jan1) / 7 + 1)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

type Bucket = fn(i64) -> i64;

fn bucket_hour(ns: i64) -> i64 {
    ns.div_euclid(3_600_000_000_000)
}
fn bucket_day(ns: i64) -> i64 {
    ns.div_euclid(86_400_000_000_000)
}
fn bucket_week(ns: i64) -> i64 {
    let (y, w) = iso_week(bucket_day(ns));
    y * 100 + w
}
fn bucket_month(ns: i64) -> i64 {
    let (y, m, ..) = crate::time::utc_parts(ns);
    y * 100 + i64::from(m)
}
fn bucket_year(ns: i64) -> i64 {
    crate::time::utc_parts(ns).0
}

/// Decide keep/remove for one group; `group` in any order. Returns newest first.
pub fn apply(policy: &Policy, group: &[SnapshotRow]) -> Vec<Decision> {
    let mut snaps: Vec<&SnapshotRow> = group.iter().collect();
    snaps.sort_by_key(|s| std::cmp::Reverse((s.started_ns, s.id.0)));
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); snaps.len()];
    if let Some(n) = policy.last {
        for r in reasons.iter_mut().take(n as usize) {
            r.push("last".into());
        }
    }
    let periodic: [(&str, Option<u32>, Bucket); 5] = [
        ("hourly", policy.hourly, bucket_hour),
        ("daily", policy.daily, bucket_day),
        ("weekly", policy.weekly, bucket_week),
        ("monthly", policy.monthly, bucket_month),
        ("yearly", policy.yearly, bucket_year),
    ];
    for (rule, n, bucket) in periodic {
        let Some(n) = n else { continue };
        let mut kept = 0;
        let mut last_bucket = None;
        for (i, s) in snaps.iter().enumerate() {
            if kept >= n {
                break;
            }
            let b = bucket(s.started_ns);
            if last_bucket != Some(b) {
                last_bucket = Some(b);
                reasons[i].push(rule.into());
                kept += 1;
            }
        }
    }
    if let (Some(within), Some(newest)) = (policy.within_ns, snaps.first()) {
        let cutoff = newest.started_ns - within;
        for (i, s) in snaps.iter().enumerate() {
            if s.started_ns >= cutoff {
                reasons[i].push("within".into());
            }
        }
    }
    for (i, s) in snaps.iter().enumerate() {
        if s.tags.iter().any(|t| policy.tags.contains(t)) {
            reasons[i].push("tag".into());
        }
    }
    snaps
        .iter()
        .zip(reasons)
        .map(|(s, r)| Decision {
            id: s.hash.to_hex(),
            name: s.name.clone(),
            time: crate::time::rfc3339(s.started_ns),
            host: s.host.clone(),
            keep: !r.is_empty(),
            reasons: r,
        })
        .collect()
}

#[derive(Clone, Debug, Default)]
pub struct ForgetOptions {
    pub policy: Policy,
    pub snapshots: Vec<String>,
    pub dry_run: bool,
    pub allow_delete: bool,
}

/// Apply a policy (or remove named snapshots). Returns every decision made.
pub fn forget(repo: &Repository, opts: &ForgetOptions) -> Result<Vec<Decision>> {
    if opts.policy.is_empty() == opts.snapshots.is_empty() {
        return Err(Error::invalid(
            "give either snapshots to remove or a policy (--keep-last, --keep-daily, ...), not both or neither",
        ));
    }
    if !opts.dry_run {
        repo.check_may_delete("forget", opts.allow_delete)?;
    }
    let _lock = repo.lock("forget")?;
    let cat = repo.catalog()?;
    let all = cat.snapshots()?;
    let decisions: Vec<(SnapshotRow, Decision)> = if opts.snapshots.is_empty() {
        let mut groups: BTreeMap<(String, Vec<u8>), Vec<SnapshotRow>> = BTreeMap::new();
        for s in all {
            // Grouping needs the sources, and the tag rule the tags: a row
            // whose columns do not decode must not fall into the wrong group.
            s.decoded()?;
            groups
                .entry((
                    s.host.clone(),
                    crate::format::record::encode_paths(&s.sources),
                ))
                .or_default()
                .push(s);
        }
        let mut out = Vec::new();
        for group in groups.values() {
            let by_hash: std::collections::HashMap<String, &SnapshotRow> =
                group.iter().map(|s| (s.hash.to_hex(), s)).collect();
            for d in apply(&opts.policy, group) {
                out.push(((*by_hash[&d.id]).clone(), d));
            }
        }
        out
    } else {
        let mut out = Vec::new();
        for r in &opts.snapshots {
            let s = crate::repo::refs::resolve(&cat, r)?;
            let d = Decision {
                id: s.hash.to_hex(),
                name: s.name.clone(),
                time: crate::time::rfc3339(s.started_ns),
                host: s.host.clone(),
                keep: false,
                reasons: Vec::new(),
            };
            out.push((s, d));
        }
        out
    };
    let gone: Vec<&SnapshotRow> = decisions
        .iter()
        .filter(|(_, d)| !d.keep)
        .map(|(s, _)| s)
        .collect();
    if !opts.dry_run && !gone.is_empty() {
        let tx = cat.transaction()?;
        let hashes: Vec<_> = gone.iter().map(|s| s.hash).collect();
        let record = crate::format::record::encode_forget_record(&hashes, crate::time::now_ns());
        let chunk =
            repo.store_meta_chunk(&tx, crate::format::pack::ChunkKind::Snapshot, &record)?;
        tx.add_tombstone(&chunk)?;
        for s in gone {
            tx.delete_snapshot(s.id)?;
        }
        tx.commit()?;
        cat.checkpoint();
    }
    Ok(decisions.into_iter().map(|(_, d)| d).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Hash, SnapshotId, TreeId};

    const H: i64 = 3_600_000_000_000;
    const D: i64 = 24 * H;

    fn snap(id: i64, ns: i64, tags: &[&str]) -> SnapshotRow {
        SnapshotRow {
            id: SnapshotId(id),
            hash: Hash::of(&id.to_le_bytes()),
            host: "h".into(),
            sources: vec!["/data".into()],
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..SnapshotRow::new(format!("s{id}"), ns, TreeId(1))
        }
    }

    /// A year of snapshots at 02:00 UTC every day, starting 2025-01-01.
    fn year() -> Vec<SnapshotRow> {
        let start = days_from_civil(2025, 1, 1) * D + 2 * H;
        (0..365).map(|i| snap(i + 1, start + i * D, &[])).collect()
    }

    fn kept(policy: &Policy, group: &[SnapshotRow]) -> Vec<String> {
        let mut k: Vec<String> = apply(policy, group)
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| {
                crate::time::snapshot_stamp(
                    group.iter().find(|s| s.name == d.name).unwrap().started_ns,
                )[..10]
                    .to_string()
            })
            .collect();
        k.sort();
        k
    }

    #[test]
    fn keep_daily_keeps_the_newest_days() {
        let p = Policy {
            daily: Some(3),
            ..Default::default()
        };
        assert_eq!(
            kept(&p, &year()),
            vec!["2025-12-29", "2025-12-30", "2025-12-31"]
        );
    }

    #[test]
    fn keep_weekly_uses_iso_weeks_and_the_newest_of_each() {
        let p = Policy {
            weekly: Some(3),
            ..Default::default()
        };
        // 2025-12-31 is a Wednesday (ISO week 2026-W01); the Sundays before end weeks 52 and 51.
        assert_eq!(
            kept(&p, &year()),
            vec!["2025-12-21", "2025-12-28", "2025-12-31"]
        );
    }

    #[test]
    fn keep_monthly_and_yearly_take_the_last_snapshot_of_each_period() {
        let p = Policy {
            monthly: Some(2),
            yearly: Some(5),
            ..Default::default()
        };
        assert_eq!(kept(&p, &year()), vec!["2025-11-30", "2025-12-31"]);
    }

    #[test]
    fn rules_combine_and_each_decision_names_its_rules() {
        let mut group = year();
        group[10].tags = vec!["keep".into()];
        let p = Policy {
            last: Some(2),
            daily: Some(3),
            tags: vec!["keep".into()],
            ..Default::default()
        };
        let d = apply(&p, &group);
        assert_eq!(d.iter().filter(|d| d.keep).count(), 4);
        assert_eq!(d[0].reasons, vec!["last", "daily"]);
        assert_eq!(d[2].reasons, vec!["daily"]);
        assert!(
            d.iter()
                .any(|x| x.name == "s11" && x.reasons == vec!["tag"])
        );
        assert!(!d[3].keep && d[3].reasons.is_empty());
    }

    #[test]
    fn several_snapshots_in_one_period_keep_only_the_newest() {
        let base = days_from_civil(2026, 3, 1) * D;
        let group: Vec<_> = (0..6).map(|i| snap(i + 1, base + i * 4 * H, &[])).collect();
        let p = Policy {
            hourly: Some(10),
            daily: Some(1),
            ..Default::default()
        };
        let d = apply(&p, &group);
        assert!(d.iter().all(|x| x.keep));
        assert_eq!(d[0].reasons, vec!["hourly", "daily"]);
        // Two snapshots in the same second: ties go by id, newest id first.
        let tie = vec![snap(1, base, &[]), snap(2, base, &[])];
        let d = apply(
            &Policy {
                daily: Some(1),
                ..Default::default()
            },
            &tie,
        );
        assert_eq!(d[0].name, "s2");
        assert!(d[0].keep && !d[1].keep);
    }

    #[test]
    fn keep_within_counts_back_from_the_newest_snapshot() {
        let p = Policy {
            within_ns: Some(parse_duration("1w").unwrap()),
            ..Default::default()
        };
        assert_eq!(kept(&p, &year()).len(), 8);
        assert_eq!(parse_duration("1y2m").unwrap(), (365 + 60) * D);
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("5").is_err());
    }

    #[test]
    fn iso_weeks_at_year_edges() {
        assert_eq!(iso_week(days_from_civil(2021, 1, 3)), (2020, 53));
        assert_eq!(iso_week(days_from_civil(2021, 1, 4)), (2021, 1));
        assert_eq!(iso_week(days_from_civil(2025, 12, 29)), (2026, 1));
        assert_eq!(days_from_civil(1970, 1, 1), 0);
    }
}
