//! Leases and doom marks in a shared store: how hosts that back up into,
//! read from and collect garbage in one bucket stay out of each other's way
//! without a lock the server would have to keep (Garage has none).
//!
//! ```text
//! leases/<32 hex>.lease   one per running command that opened the repository
//! doomed/<pack hex>.doom  a pack some gc took out of use, and when
//! ```
//!
//! Every command that opens a repository in a store writes a lease: who
//! holds it, whether it writes, the time it synced its catalog from
//! (`since`) and when the lease ends unless renewed (`expires`). A thread
//! renews it every minute (a third of the lease's life at most); the lease
//! object goes when the command ends, or expires if it dies.
//!
//! gc deletes nothing at once. It marks the packs it took out of use
//! (`doomed/`), and deletes a marked pack only at a later run, once
//! - the mark is older than the grace period (longer than a lease's life,
//!   so any holder that started before the mark has renewed where gc can
//!   see it, or is dead),
//! - no live lease of a writer exists (a writer may deduplicate against a
//!   marked pack; once it has ended, its snapshot is in the store),
//! - no live lease of a reader synced before the mark (it may still read
//!   the pack; readers that synced later moved off it),
//! - and, its catalog caught up with the store and the marked packs indexed
//!   again, no snapshot reaches a chunk only that pack holds (another
//!   host's backup that deduplicated against it is kept: the mark goes).
//!
//! Times are each host's own clock. Comparisons between hosts allow
//! [`Times::skew`] (`SNAPFS_CLOCK_SKEW_SECONDS`, 5 minutes): clocks that far
//! apart lose nothing; clocks further apart than that could let gc delete a
//! pack a reader synced before the mark still reads. So each host compares
//! its clock with the store's when it takes its lease: one further than
//! half the skew from it reads (with a warning) but may not write — any two
//! hosts that write are then within the skew of each other.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::store::ObjectStore;
use crate::error::{Error, Result};
use crate::ids::PackName;

/// The most bytes of one lease or mark read.
const MAX_OBJECT: u64 = 4 << 10;
/// The most leases gc reads: one per running command, so far more than
/// any set of hosts holds at once. More is a client flooding the store:
/// gc then deletes nothing (it cannot tell whose leases are real).
const MAX_LEASES: usize = 10_000;
/// The most doom marks read at once (one per pack out of use: a million
/// packs are 32 TiB). More is a client flooding the store: refused.
const MAX_MARKS: usize = 1_000_000;

/// How long leases live and marks wait, from the environment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Times {
    /// A lease not renewed for this long is a dead holder's.
    pub ttl: Duration,
    /// A mark younger than this is never acted on.
    pub grace: Duration,
    /// How far apart the clocks of two hosts may be.
    pub skew: Duration,
}

impl Times {
    pub(crate) fn from_env() -> Result<Times> {
        let secs = |name: &str, default: u64| -> Result<Duration> {
            match std::env::var(name) {
                Err(_) => Ok(Duration::from_secs(default)),
                Ok(s) => s
                    .parse::<u64>()
                    .ok()
                    .filter(|&n| n <= 10 * 365 * 24 * 3600)
                    .map(Duration::from_secs)
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "{name}={s:?}: expected a number of seconds, at most ten years"
                        ))
                    }),
            }
        };
        let t = Times {
            ttl: secs("SNAPFS_LEASE_SECONDS", 15 * 60)?.max(Duration::from_secs(1)),
            grace: secs("SNAPFS_GC_GRACE_SECONDS", 60 * 60)?,
            skew: secs("SNAPFS_CLOCK_SKEW_SECONDS", 5 * 60)?,
        };
        if t.grace <= t.ttl + 2 * t.skew {
            return Err(Error::invalid(format!(
                "the gc grace period ({} s) must be longer than a lease's life ({} s) and twice the clock skew allowed ({} s)",
                t.grace.as_secs(),
                t.ttl.as_secs(),
                t.skew.as_secs()
            )));
        }
        Ok(t)
    }

    /// How often a lease is written again.
    fn renew_every(&self) -> Duration {
        (self.ttl / 3).min(Duration::from_secs(60))
    }

    /// A mark whose write took longer than this is written again with a
    /// fresh time: its time must not be much earlier than the moment it
    /// could be seen.
    fn mark_write_bound(&self) -> Duration {
        self.skew.max(Duration::from_secs(1))
    }

    /// How long gc may go on deleting after it last found no lease in
    /// the way (see `fence`).
    pub(crate) fn delete_window(&self) -> Duration {
        (self.grace / 8).clamp(Duration::from_secs(1), Duration::from_secs(10))
    }

    /// How long a command waits before it trusts a pack whose mark is old
    /// enough for a gc to be deleting it: longer than a gc's delete window,
    /// so a pack that gc is deleting is gone by then. A gc that started
    /// its window before this command's lease could be seen is the only
    /// one that does not wait for this command.
    pub(crate) fn fence(&self) -> Duration {
        2 * self.delete_window()
    }

    /// Whether a mark made at `doomed_ns` is old enough, by this host's
    /// clock, that some gc may be deleting its pack now.
    pub(crate) fn due(&self, doomed_ns: i64, now_ns: i64) -> bool {
        let soon = self.grace.saturating_sub(2 * self.skew);
        now_ns >= doomed_ns.saturating_add(ns(soon))
    }
}

fn ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// One lease as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeaseRecord {
    pub host: String,
    pub pid: u32,
    pub holder: String,
    pub writer: bool,
    pub since_ns: i64,
    pub expires_ns: i64,
}

impl LeaseRecord {
    fn render(&self) -> String {
        format!(
            "snapfs-lease 1\nhost {}\npid {}\nholder {}\nwriter {}\nsince_ns {}\nexpires_ns {}\n",
            self.host,
            self.pid,
            self.holder,
            u8::from(self.writer),
            self.since_ns,
            self.expires_ns
        )
    }

    /// Strict: every field once, in order, nothing else.
    fn parse(bytes: &[u8]) -> Option<LeaseRecord> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.strip_suffix('\n')?.split('\n');
        let mut field = |key: &str| -> Option<String> {
            let line = lines.next()?;
            let v = line.strip_prefix(key)?.strip_prefix(' ')?;
            (!v.chars().any(char::is_control)).then(|| v.to_string())
        };
        if field("snapfs-lease")? != "1" {
            return None;
        }
        let r = LeaseRecord {
            host: field("host")?,
            pid: field("pid")?.parse().ok()?,
            holder: field("holder")?,
            writer: match field("writer")?.as_str() {
                "0" => false,
                "1" => true,
                _ => return None,
            },
            since_ns: field("since_ns")?.parse().ok()?,
            expires_ns: field("expires_ns")?.parse().ok()?,
        };
        lines.next().is_none().then_some(r)
    }

    /// Who holds it, for messages.
    pub(crate) fn who(&self) -> String {
        format!(
            "{} ({}, pid {}, on {})",
            self.holder,
            if self.writer { "writing" } else { "reading" },
            self.pid,
            self.host
        )
    }
}

/// A lease this process holds in a store, renewed by a thread of its own
/// until dropped.
pub(crate) struct StoreLease {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn ObjectStore>,
    name: String,
    times: Times,
    state: Mutex<State>,
    /// How far the store's clock is ahead of this machine's, in seconds,
    /// if the store tells.
    clock_offset: Option<i64>,
}

/// What is wrong with this machine's clock, if it is further from the
/// store's than half the skew hosts may have between them (each host
/// within half of it of the store: any two within all of it), with a
/// second's leeway for the precision of a `Date` header.
fn clock_problem(store: &dyn ObjectStore, offset: Option<i64>, times: &Times) -> Option<String> {
    let off = offset?;
    let allowed = times.skew.as_secs() / 2 + 1;
    (off.unsigned_abs() > allowed).then(|| {
        format!(
            "this machine's clock is {} s {} the clock of {}: more than the {allowed} s a host \
             sharing it may be off (half of SNAPFS_CLOCK_SKEW_SECONDS, {} s), so other hosts would \
             misjudge its leases and its own gc theirs; set the clock right (NTP)",
            off.unsigned_abs(),
            if off > 0 { "behind" } else { "ahead of" },
            store.shown(""),
            times.skew.as_secs()
        )
    })
}

struct State {
    record: LeaseRecord,
    /// When the lease was taken: its `since` unless held lower.
    synced_ns: i64,
    ended: bool,
    /// `boot_ns` of the last write that went through (0: none yet).
    written: i64,
    /// The longest gap between two writes that went through.
    longest_gap: i64,
}

/// Nanoseconds since boot, suspended time included (CLOCK_BOOTTIME): a
/// lease's holder asleep for an hour has not renewed it for an hour.
fn boot_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec)
}

impl Shared {
    /// Write the lease with a fresh expiry (under the state lock, so a
    /// renewal never lands after the lease was removed).
    fn write(&self, state: &mut State) -> Result<()> {
        if state.ended {
            return Ok(());
        }
        state.record.expires_ns = crate::time::now_ns().saturating_add(ns(self.times.ttl));
        // Counted from before the write: it was in force from then on.
        let at = boot_ns();
        self.store
            .put(&self.name, state.record.render().as_bytes())?;
        if state.written != 0 {
            state.longest_gap = state.longest_gap.max(at.saturating_sub(state.written));
        }
        state.written = at;
        Ok(())
    }
}

/// The lease's holder name as stored: letters, digits and dashes only.
fn holder_name(what: &str) -> String {
    what.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect()
}

impl StoreLease {
    /// Write a lease for this process, held since `since_ns` (the time
    /// taken before its catalog was synced with the store), and start
    /// renewing it.
    pub(crate) fn take(
        store: Arc<dyn ObjectStore>,
        times: Times,
        what: &str,
        since_ns: i64,
    ) -> Result<StoreLease> {
        let clock_offset = store.clock_offset().unwrap_or_else(|e| {
            log::debug!("the clock of {}: {e}", store.shown(""));
            None
        });
        if let Some(why) = clock_problem(store.as_ref(), clock_offset, &times) {
            log::warn!("{why}; reading goes on, writing is refused");
        }
        let host = crate::crypto::slots::hostname();
        let token =
            blake3::hash(format!("{}-{host}", crate::format::pack::unique_token()).as_bytes());
        let shared = Arc::new(Shared {
            name: format!("leases/{}.lease", &token.to_hex()[..32]),
            store,
            times,
            clock_offset,
            state: Mutex::new(State {
                record: LeaseRecord {
                    host: host.replace(' ', "_"),
                    pid: std::process::id(),
                    holder: holder_name(what),
                    writer: false,
                    since_ns,
                    expires_ns: 0,
                },
                synced_ns: since_ns,
                ended: false,
                written: 0,
                longest_gap: 0,
            }),
        });
        shared.write(&mut shared.state.lock().expect("lease state lock"))?;
        let weak = Arc::downgrade(&shared);
        let every = times.renew_every();
        std::thread::Builder::new()
            .name("lease".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let Some(s) = weak.upgrade() else { return };
                    let mut state = s.state.lock().expect("lease state lock");
                    if state.ended {
                        return;
                    }
                    if let Err(e) = s.write(&mut state) {
                        log::warn!(
                            "cannot renew the lease {}: {e}; a gc elsewhere may take it for a dead holder's once it expires",
                            s.store.shown(&s.name)
                        );
                    }
                }
            })
            .map_err(|e| Error::invalid(format!("cannot start the lease renewal thread: {e}")))?;
        Ok(StoreLease { shared })
    }

    /// Say that this holder writes (before it writes anything), until the
    /// returned guard goes: while it writes, gc deletes no pack, since it
    /// may deduplicate against any.
    /// Refused while this machine's clock is too far from the store's.
    pub(crate) fn writing(&self, what: &str) -> Result<Writing> {
        let s = &self.shared;
        if let Some(why) = clock_problem(s.store.as_ref(), s.clock_offset, &s.times) {
            return Err(Error::invalid(format!("{what}: {why}")));
        }
        self.set(true, holder_name(what))?;
        Ok(Writing {
            shared: self.shared.clone(),
        })
    }

    fn set(&self, writer: bool, holder: String) -> Result<()> {
        set_role(&self.shared, writer, holder)
    }

    /// Refuse to commit a writer's work if its lease may have lapsed at
    /// any moment (a machine suspended mid-backup, a store unreachable for
    /// a lease's life): a gc elsewhere may then have taken it for a dead
    /// holder's and deleted packs this writer deduplicated against.
    pub(crate) fn check_unbroken(&self) -> Result<()> {
        let state = self.shared.state.lock().expect("lease state lock");
        let gap = state
            .longest_gap
            .max(boot_ns().saturating_sub(state.written));
        if gap >= ns(self.shared.times.ttl) {
            return Err(Error::invalid(format!(
                "this command's lease in {} went {} s without renewal (longer than its {} s life: \
                 the machine slept, or the store could not be reached); a gc elsewhere may have \
                 deleted packs it relies on, so nothing was committed: run it again",
                self.shared.store.shown("leases/"),
                gap / 1_000_000_000,
                self.shared.times.ttl.as_secs()
            )));
        }
        Ok(())
    }

    /// Say that this holder reads from packs marked at `earliest` and
    /// later (its catalog still finds chunks only there): its lease then
    /// counts as synced before that mark, so no gc deletes them while it
    /// lives. A catalog synced after a gc marked packs but before that gc
    /// stored the packs that take over their chunks is such a catalog.
    /// None: it reads from no marked pack, and the lease counts from when
    /// it was taken again (a lease held low for good would keep every gc
    /// from deleting what it marks later).
    pub(crate) fn hold_since(&self, earliest: Option<i64>) -> Result<()> {
        let mut state = self.shared.state.lock().expect("lease state lock");
        let since = earliest.map_or(state.synced_ns, |t| t.min(state.synced_ns));
        if state.record.since_ns == since {
            return Ok(());
        }
        state.record.since_ns = since;
        self.shared.write(&mut state)
    }

    /// The lease's object name, so gc can tell its own lease apart.
    pub(crate) fn name(&self) -> &str {
        &self.shared.name
    }
}

fn set_role(shared: &Shared, writer: bool, holder: String) -> Result<()> {
    let mut state = shared.state.lock().expect("lease state lock");
    if state.record.writer == writer && state.record.holder == holder {
        return Ok(());
    }
    state.record.writer = writer;
    state.record.holder = holder;
    shared.write(&mut state)
}

/// A lease that says "writing" (see `StoreLease::writing`); back to
/// reading when dropped.
pub(crate) struct Writing {
    shared: Arc<Shared>,
}

impl Drop for Writing {
    fn drop(&mut self) {
        let holder = self
            .shared
            .state
            .lock()
            .expect("lease state lock")
            .record
            .holder
            .clone();
        if let Err(e) = set_role(&self.shared, false, holder) {
            log::debug!("{}: {e}", self.shared.store.shown(&self.shared.name));
        }
    }
}

impl Drop for StoreLease {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock().expect("lease state lock");
        state.ended = true;
        if let Err(e) = self.shared.store.delete(&self.shared.name) {
            // It expires on its own.
            log::debug!(
                "removing {}: {e}",
                self.shared.store.shown(&self.shared.name)
            );
        }
    }
}

/// A lease found in the store.
pub(crate) enum Found {
    Live(LeaseRecord),
    /// Expired (a dead holder's): removed by gc.
    Expired,
    /// Cannot be read or parsed: counted as a live writer, so gc deletes
    /// nothing while it is there (a lease gc cannot read must never lose
    /// its holder's packs); the warning names it.
    Unreadable(String),
}

/// Every lease in `store` but `own`, judged at `now_ns`, read by parallel
/// requests. A store with more than [`MAX_LEASES`] gives one unreadable
/// entry that says so instead.
pub(crate) fn leases(
    store: &dyn ObjectStore,
    times: &Times,
    own: Option<&str>,
    now_ns: i64,
) -> Result<Vec<(String, Found)>> {
    let listed: Vec<(String, u64)> = store
        .list("leases")?
        .into_iter()
        .filter(|(name, _)| Some(name.as_str()) != own)
        .collect();
    if listed.len() > MAX_LEASES {
        let why = format!(
            "{} holds {} leases, more than {MAX_LEASES}: a client may be flooding it; remove the stale ones",
            store.shown("leases/"),
            listed.len()
        );
        return Ok(vec![(String::new(), Found::Unreadable(why))]);
    }
    let found = super::coalesce::in_parallel(&listed, store.parallel_reads(), |(name, size)| {
        let shown = store.shown(name);
        if *size > MAX_OBJECT {
            return Some(Found::Unreadable(format!("{shown}: {size} bytes")));
        }
        match store.get(name, MAX_OBJECT) {
            // Gone meanwhile: its holder ended.
            Ok(None) => None,
            Ok(Some(bytes)) => Some(match LeaseRecord::parse(&bytes) {
                Some(r) if r.expires_ns.saturating_add(ns(times.skew)) < now_ns => Found::Expired,
                Some(r) => Found::Live(r),
                None => Found::Unreadable(format!("{shown} is not a lease")),
            }),
            Err(e) => Some(Found::Unreadable(format!("{shown}: {e}"))),
        }
    });
    Ok(listed
        .into_iter()
        .zip(found)
        .filter_map(|((name, _), f)| f.map(|f| (name, f)))
        .collect())
}

/// A doom mark's object name.
fn mark_name(pack: &PackName) -> String {
    format!("doomed/{}.doom", pack.0.to_hex())
}

fn render_mark(doomed_ns: i64) -> String {
    format!("snapfs-doomed 1\ndoomed_ns {doomed_ns}\n")
}

fn parse_mark(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.strip_prefix("snapfs-doomed 1\ndoomed_ns ")?
        .strip_suffix('\n')?
        .parse()
        .ok()
}

/// Mark `pack` as taken out of use now. The time is taken again and the
/// mark written again while a write takes longer than
/// `Times::mark_write_bound`: a reader that synced before the mark could be
/// seen must hold a lease older than the mark's time plus that bound.
pub(crate) fn mark(store: &dyn ObjectStore, times: &Times, pack: &PackName) -> Result<()> {
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        store.put(
            &mark_name(pack),
            render_mark(crate::time::now_ns()).as_bytes(),
        )?;
        if t0.elapsed() <= times.mark_write_bound() {
            return Ok(());
        }
    }
    log::warn!(
        "{}: every write took longer than {} s; a reader that synced meanwhile could be taken for a later one",
        store.shown(&mark_name(pack)),
        times.mark_write_bound().as_secs()
    );
    Ok(())
}

/// Remove `pack`'s mark (after the pack was deleted, or kept after all).
pub(crate) fn unmark(store: &dyn ObjectStore, pack: &PackName) -> Result<()> {
    store.delete(&mark_name(pack))
}

/// Every marked pack, by name only (one listing, no reads).
pub(crate) fn marked_names(store: &dyn ObjectStore) -> Result<Vec<PackName>> {
    Ok(listed_marks(store)?.into_iter().map(|(p, _)| p).collect())
}

/// Every mark as listed, with its size; more than [`MAX_MARKS`] are
/// refused, and objects not named like a mark are named in a warning.
fn listed_marks(store: &dyn ObjectStore) -> Result<Vec<(PackName, u64)>> {
    let mut listed = Vec::new();
    for (name, size) in store.list("doomed")? {
        match name
            .strip_prefix("doomed/")
            .and_then(|f| f.strip_suffix(".doom"))
            .and_then(|h| h.parse::<PackName>().ok())
            .filter(|p| mark_name(p) == name)
        {
            Some(pack) => listed.push((pack, size)),
            None => log::warn!("ignoring {} among the doom marks", store.shown(&name)),
        }
    }
    if listed.len() > MAX_MARKS {
        return Err(Error::invalid(format!(
            "{} holds {} doom marks, more than {MAX_MARKS}: a client may be flooding it",
            store.shown("doomed/"),
            listed.len()
        )));
    }
    Ok(listed)
}

/// Every marked pack, with its mark's time (None where the mark cannot be
/// read: such a pack counts as marked, and is never deleted, until a gc
/// marks it again). The marks are read by parallel requests; more than
/// [`MAX_MARKS`] are refused.
pub(crate) fn marks(store: &dyn ObjectStore) -> Result<Vec<(PackName, Option<i64>)>> {
    let listed = listed_marks(store)?;
    let packs: Vec<PackName> = listed.iter().map(|(p, _)| *p).collect();
    let sizes: std::collections::HashMap<PackName, u64> = listed.into_iter().collect();
    mark_times(store, &packs, |p| sizes.get(p).copied())
}

/// The marks of `packs` (their times, as `marks` gives them), read by
/// parallel requests; `size` gives a mark's size where a listing told it.
/// A pack whose mark is gone meanwhile is left out.
pub(crate) fn mark_times(
    store: &dyn ObjectStore,
    packs: &[PackName],
    size: impl Fn(&PackName) -> Option<u64> + Sync,
) -> Result<Vec<(PackName, Option<i64>)>> {
    let read = super::coalesce::in_parallel(packs, store.parallel_reads(), |p| {
        let name = mark_name(p);
        if size(p).is_some_and(|s| s > MAX_OBJECT) {
            return Ok(Some(None));
        }
        match store.get(&name, MAX_OBJECT) {
            Ok(got) => Ok(got.map(|b| parse_mark(&b))),
            // Too big, say (planted): unreadable, as one that does not
            // parse; only a failing link stops the command.
            Err(Error::Corrupt(_)) => Ok(Some(None)),
            Err(e) => Err(e),
        }
    });
    let mut out = Vec::with_capacity(packs.len());
    for (p, r) in packs.iter().zip(read) {
        let Some(time) = r? else { continue };
        if time.is_none() {
            log::warn!(
                "{} cannot be read; its pack is kept until a gc marks it again",
                store.shown(&mark_name(p))
            );
        }
        out.push((*p, time));
    }
    Ok(out)
}

/// When this machine first saw each of `marks` (recorded in `root`, the
/// store's local state directory): grace is counted from the later of
/// that and the time a mark says, so a mark written with a time long past
/// (by a hostile client, or a host whose clock is wrong) does not make a
/// pack deletable at once.
pub(crate) fn first_seen(
    root: &std::path::Path,
    marks: &std::collections::HashMap<PackName, Option<i64>>,
    now_ns: i64,
) -> Result<std::collections::HashMap<PackName, i64>> {
    let path = root.join("marks-seen");
    let mut seen = std::collections::HashMap::new();
    if let Ok(text) = std::fs::read_to_string(&path) {
        for line in text.lines() {
            let Some((hex, t)) = line.split_once(' ') else {
                continue;
            };
            if let (Ok(p), Ok(t)) = (hex.parse::<PackName>(), t.parse::<i64>())
                && marks.contains_key(&p)
            {
                seen.insert(p, t);
            }
        }
    }
    for p in marks.keys() {
        seen.entry(*p).or_insert(now_ns);
    }
    let mut text = String::new();
    for (p, t) in &seen {
        text.push_str(&format!("{} {t}\n", p.0.to_hex()));
    }
    super::bucket::write_atomic(root, "marks-seen", text.as_bytes())?;
    Ok(seen)
}

/// Whether a live lease keeps a pack marked at `doomed_ns` from being
/// deleted: a writer's always; a reader's if it synced before the mark
/// could be seen.
pub(crate) fn blocks(lease: &LeaseRecord, doomed_ns: i64, times: &Times) -> bool {
    lease.writer
        || lease.since_ns
            <= doomed_ns
                .saturating_add(ns(times.skew))
                .saturating_add(ns(times.mark_write_bound()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> LeaseRecord {
        LeaseRecord {
            host: "web1".into(),
            pid: 42,
            holder: "mount".into(),
            writer: false,
            since_ns: 1_000,
            expires_ns: 2_000,
        }
    }

    #[test]
    fn lease_records_round_trip_and_nothing_else_parses() {
        let r = record();
        assert_eq!(LeaseRecord::parse(r.render().as_bytes()), Some(r.clone()));
        let text = r.render();
        for bad in [
            text.replace("snapfs-lease 1", "snapfs-lease 2"),
            text.replace("writer 0", "writer 2"),
            text.replace("pid 42", "pid -1"),
            text.replace("host web1", "host we\u{1b}b1"),
            text.clone() + "extra 1\n",
            text.trim_end().to_string(),
            text.replace("since_ns 1000\n", ""),
            String::from_utf8_lossy(&[0xff, 0xfe]).into_owned(),
        ] {
            assert_eq!(LeaseRecord::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn marks_round_trip_and_nothing_else_parses() {
        assert_eq!(parse_mark(render_mark(-5).as_bytes()), Some(-5));
        for bad in [
            "",
            "snapfs-doomed 1\ndoomed_ns x\n",
            "snapfs-doomed 1\ndoomed_ns 5",
        ] {
            assert_eq!(parse_mark(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn writers_always_block_and_readers_only_when_synced_before_the_mark() {
        let times = Times {
            ttl: Duration::from_secs(60),
            grace: Duration::from_secs(600),
            skew: Duration::from_secs(5),
        };
        let doomed = 1_000_000_000_000;
        let mut r = record();
        r.since_ns = doomed + ns(Duration::from_secs(9));
        assert!(blocks(&r, doomed, &times), "within skew and write bound");
        r.since_ns = doomed + ns(Duration::from_secs(11));
        assert!(!blocks(&r, doomed, &times));
        r.writer = true;
        assert!(blocks(&r, doomed, &times));
    }

    #[test]
    fn grace_must_outlast_a_lease_and_the_skew() {
        let t = Times {
            ttl: Duration::from_secs(900),
            grace: Duration::from_secs(3600),
            skew: Duration::from_secs(300),
        };
        assert!(t.grace > t.ttl + 2 * t.skew);
        assert_eq!(t.renew_every(), Duration::from_secs(60));
        let short = Times {
            ttl: Duration::from_secs(3),
            ..t
        };
        assert_eq!(short.renew_every(), Duration::from_secs(1));
    }
}
