//! Fewer, larger reads where each read costs a round trip.
//!
//! A read from a bucket costs a request whatever its size, so chunks that
//! lie close together in one pack are fetched with one ranged read (the
//! bytes between them come along) and decoded from their slices. A local
//! repository reads each chunk with its own `pread`, which costs nothing
//! worth saving: it gets no plan ([`Span::of`]).
//!
//! Each chunk decoded from a shared read is verified exactly as a chunk
//! read alone (BLAKE3 or the AEAD, in `blob::decode_blob`). A run whose
//! read or decode fails leaves its chunks out of the result: the caller
//! reads those again one by one, so errors name the chunk and pack as
//! before.

use std::collections::HashMap;

use super::Repository;
use super::catalog::ChunkLoc;
use crate::format::blob;
use crate::ids::{ChunkId, PackName};

/// How far reads may be merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// The most bytes one merged read may cover.
    pub max_len: u64,
    /// The most bytes between two chunks that are read (and thrown away)
    /// to save a request.
    pub max_gap: u64,
}

/// For a bucket: 4 MiB per read (a few chunks of a big file, or a few
/// hundred small files), and a gap of up to 256 KiB — a round trip on a
/// fast link is worth well over that.
pub const REMOTE: Span = Span {
    max_len: 4 << 20,
    max_gap: 256 << 10,
};

impl Span {
    /// The plan for `repo`'s reads: merged for a remote store, none for a
    /// local directory.
    pub fn of(repo: &Repository) -> Option<Span> {
        repo.remote.is_some().then_some(REMOTE)
    }
}

/// One merged read: bytes `offset..offset + len` of `pack`, holding the
/// wanted items `members` (indices into the caller's list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub pack: PackName,
    pub offset: u64,
    pub len: u64,
    pub members: Vec<usize>,
}

/// Group `wanted` ranges (pack, offset, length) into runs: sorted by pack
/// and offset, a range joins the run before it when it starts within
/// `max_gap` of that run's end and the run stays within `max_len`. A range
/// longer than `max_len` is a run of its own. Every index appears in
/// exactly one run.
pub fn plan(wanted: &[(PackName, u64, u64)], span: Span) -> Vec<Run> {
    let mut order: Vec<usize> = (0..wanted.len()).collect();
    order.sort_by_key(|&i| (wanted[i].0, wanted[i].1));
    let mut runs: Vec<Run> = Vec::new();
    for i in order {
        let (pack, offset, len) = wanted[i];
        let end = offset.saturating_add(len);
        if let Some(r) = runs.last_mut() {
            let r_end = r.offset + r.len;
            let new_end = r_end.max(end);
            if r.pack == pack
                && offset <= r_end.saturating_add(span.max_gap)
                && new_end - r.offset <= span.max_len
            {
                r.len = new_end - r.offset;
                r.members.push(i);
                continue;
            }
        }
        runs.push(Run {
            pack,
            offset,
            len,
            members: vec![i],
        });
    }
    runs
}

/// The chunks of `wanted` read in merged runs and decoded, by their index
/// in `wanted`. Chunks whose run could not be read or that fail to decode
/// are left out (see the module's doc).
pub fn read_chunks(
    repo: &Repository,
    wanted: &[(ChunkId, ChunkLoc)],
    span: Span,
) -> HashMap<usize, Vec<u8>> {
    // One chunk alone gains nothing here: the caller reads it.
    let runs: Vec<Run> = plan(&ranges_of(wanted), span)
        .into_iter()
        .filter(|r| r.members.len() >= 2)
        .collect();
    runs.iter()
        .flat_map(|r| read_run(repo, wanted, r))
        .collect()
}

/// Like [`read_chunks`], single chunks included, with the runs shared out
/// among as many threads as the backend wants reads in flight: for reading
/// many metadata chunks at once (a catalog made from a store's packs).
pub fn read_chunks_parallel(
    repo: &Repository,
    wanted: &[(ChunkId, ChunkLoc)],
    span: Span,
) -> HashMap<usize, Vec<u8>> {
    let runs = plan(&ranges_of(wanted), span);
    in_parallel(&runs, repo.backend.parallel_reads(), |r| {
        read_run(repo, wanted, r)
    })
    .into_iter()
    .flatten()
    .collect()
}

fn ranges_of(wanted: &[(ChunkId, ChunkLoc)]) -> Vec<(PackName, u64, u64)> {
    wanted
        .iter()
        .map(|(_, l)| (l.pack, l.offset, u64::from(l.stored_len)))
        .collect()
}

/// One run read and its members decoded; empty if the read failed.
fn read_run(repo: &Repository, wanted: &[(ChunkId, ChunkLoc)], run: &Run) -> Vec<(usize, Vec<u8>)> {
    let Ok(bytes) = repo
        .backend
        .read_at(&run.pack, run.offset, run.len as usize)
    else {
        return Vec::new();
    };
    log::debug!(
        "read {} chunks of pack {} in one request ({} bytes)",
        run.members.len(),
        run.pack,
        run.len
    );
    let mut out = Vec::with_capacity(run.members.len());
    for &i in &run.members {
        let (id, loc) = &wanted[i];
        let at = (loc.offset - run.offset) as usize;
        let Some(slice) = bytes.get(at..at + loc.stored_len as usize) else {
            continue;
        };
        if let Ok(data) = blob::decode_blob(&repo.keying, slice, id, loc.raw_len as usize) {
            out.push((i, data));
        }
    }
    out
}

/// `f` of every item, in the items' order, worked through by up to
/// `threads` threads taking the next item as they finish one.
pub fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<(usize, R)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else {
                            return done;
                        };
                        done.push((i, f(item)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| match w.join() {
                Ok(done) => done,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// The most bytes of metadata read ahead at once ([`Prefetched`]).
const PREFETCH_BUDGET: u64 = 256 << 20;

/// Metadata chunks (directory pages, chunk lists, records) read ahead of
/// their use from a store, where each read on its own would cost a round
/// trip: a catalog made from a bucket's packs reads them all, and reading
/// them one at a time made it a matter of minutes. Each is handed out once
/// ([`Prefetched::take`]), so memory falls as they are used; beyond
/// [`PREFETCH_BUDGET`] chunks are left to be read one by one. Empty for a
/// local repository.
#[derive(Default)]
pub struct Prefetched(std::cell::RefCell<HashMap<ChunkId, Vec<u8>>>);

impl Prefetched {
    /// The metadata chunks among `entries` (a pack and a row of its
    /// table), read in merged runs by parallel threads.
    pub fn metadata<'a>(
        repo: &Repository,
        entries: impl IntoIterator<Item = (PackName, &'a crate::format::pack::PackEntry)>,
    ) -> Prefetched {
        let Some(span) = Span::of(repo) else {
            return Prefetched::default();
        };
        let mut seen = std::collections::HashSet::new();
        let mut wanted = Vec::new();
        let mut bytes = 0u64;
        for (pack, e) in entries {
            if e.kind == crate::format::pack::ChunkKind::Data || !seen.insert(e.id) {
                continue;
            }
            let (id, loc) = (e.id, ChunkLoc::in_pack(pack, e));
            bytes = bytes.saturating_add(u64::from(loc.raw_len));
            if bytes > PREFETCH_BUDGET {
                break;
            }
            wanted.push((id, loc));
        }
        let got = read_chunks_parallel(repo, &wanted, span);
        log::debug!(
            "read {} of {} metadata chunks ahead",
            got.len(),
            wanted.len()
        );
        Prefetched(std::cell::RefCell::new(
            got.into_iter()
                .map(|(i, data)| (wanted[i].0, data))
                .collect(),
        ))
    }

    /// `id`'s bytes if they were read ahead (verified), once.
    pub fn take(&self, id: &ChunkId) -> Option<Vec<u8>> {
        self.0.borrow_mut().remove(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Hash;

    const SPAN: Span = Span {
        max_len: 1000,
        max_gap: 10,
    };

    fn pack(n: u8) -> PackName {
        PackName(Hash::of(&[n]))
    }

    #[test]
    fn adjacent_and_near_chunks_of_one_pack_share_a_read() {
        let (a, b) = (pack(1), pack(2));
        let wanted = [
            (a, 100, 50), // 0
            (b, 0, 10),   // 1: another pack
            (a, 0, 100),  // 2: just before 0
            (a, 155, 45), // 3: 5 bytes after 0, within the gap
            (a, 300, 10), // 4: 100 bytes after 3: too far
        ];
        let runs = plan(&wanted, SPAN);
        let mut got: Vec<_> = runs
            .iter()
            .map(|r| (r.pack, r.offset, r.len, r.members.clone()))
            .collect();
        got.sort_by_key(|r| (r.0, r.1));
        let mut want = vec![
            (a, 0, 200, vec![2, 0, 3]),
            (a, 300, 10, vec![4]),
            (b, 0, 10, vec![1]),
        ];
        want.sort_by_key(|r| (r.0, r.1));
        assert_eq!(got, want);
    }

    #[test]
    fn a_run_stops_at_its_size_and_a_big_chunk_stands_alone() {
        let a = pack(1);
        // Ten adjacent 300-byte chunks: runs of three (900 bytes) and one.
        let wanted: Vec<_> = (0..10u64).map(|i| (a, i * 300, 300)).collect();
        let runs = plan(&wanted, SPAN);
        assert_eq!(
            runs.iter().map(|r| r.members.len()).collect::<Vec<_>>(),
            [3, 3, 3, 1]
        );
        assert!(runs.iter().all(|r| r.len <= SPAN.max_len));
        let big = plan(&[(a, 0, 5000), (a, 5000, 10)], SPAN);
        assert_eq!(big.len(), 2, "{big:?}");
        assert_eq!(big[0].len, 5000);
    }

    #[test]
    fn the_same_chunk_twice_is_read_once() {
        let a = pack(1);
        let runs = plan(&[(a, 10, 20), (a, 10, 20)], SPAN);
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].offset, runs[0].len), (10, 20));
        assert_eq!(runs[0].members.len(), 2);
    }
}
