//! Content-defined chunking (FastCDC 2020) as an iterator over a reader.
//!
//! Boundaries depend only on content, so an insertion in the middle of a large
//! file changes only the chunks around it. The cut-point search is the
//! `fastcdc` crate's; buffering is ours, to read in large blocks and move
//! memory only when less than one maximum chunk remains buffered.

use std::io::{self, Read};

use fastcdc::v2020::{Normalization, cut_gear, select_masks};

use crate::format::keying::Gear;

/// FastCDC's published gear tables, which unencrypted repositories use.
static PUBLIC_GEAR: std::sync::LazyLock<Gear> = std::sync::LazyLock::new(|| {
    let (table, shifted) = fastcdc::v2020::get_gear_with_seed(0);
    Gear {
        table: table.as_ref().try_into().expect("256 gear values"),
        shifted: shifted.as_ref().try_into().expect("256 gear values"),
    }
});

/// Chunk size limits, recorded in the repository so every ingest cuts alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkerParams {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams {
            min: 256 * 1024,
            avg: 1024 * 1024,
            max: 4 * 1024 * 1024,
        }
    }
}

impl ChunkerParams {
    /// Why these limits cannot be used, if they cannot: each must lie in the
    /// chunker's own range (it panics or cuts wrongly outside it), be even
    /// (its two-byte scan halves them), and min <= avg <= max. The name of
    /// the offending config key comes first.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        for (key, v, lo, hi) in [
            ("chunk_min", self.min, MINIMUM_MIN, MINIMUM_MAX),
            ("chunk_avg", self.avg, AVERAGE_MIN, AVERAGE_MAX),
            ("chunk_max", self.max, MAXIMUM_MIN, MAXIMUM_MAX),
        ] {
            if !(lo..=hi).contains(&v) {
                return Some((key, format!("{v} is outside {lo}..={hi}")));
            }
            if !v.is_multiple_of(2) {
                return Some((key, format!("{v} is odd; it must be even")));
            }
        }
        if self.min > self.avg {
            return Some((
                "chunk_min",
                format!("{} is above chunk_avg {}", self.min, self.avg),
            ));
        }
        if self.avg > self.max {
            return Some((
                "chunk_max",
                format!("{} is below chunk_avg {}", self.max, self.avg),
            ));
        }
        None
    }
}

/// Where the chunker's bytes come from. A source may know of runs of zeros
/// ahead that it can pass over without reading them: the holes of a sparse
/// file, found with SEEK_HOLE.
pub trait Source: Read {
    /// How many of the bytes not yet read, from the next one on, are zeros
    /// known without reading (0 when none are). Never more than the source
    /// holds.
    fn hole_ahead(&mut self) -> u64 {
        0
    }

    /// Pass over `n` of those zeros (`n <= hole_ahead()`).
    fn skip_hole(&mut self, n: u64) {
        let _ = n;
    }
}

impl Source for &[u8] {}
impl Source for std::io::StdinLock<'_> {}

/// What the chunker cuts next.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// One chunk of bytes read.
    Data(&'a [u8]),
    /// `count` chunks of `len` zeros each, from a hole nobody read: exactly
    /// the chunks that reading those zeros would have been cut into.
    Zeros { len: usize, count: u64 },
}

/// Reads through a caller-owned buffer, so that chunking thousands of small
/// files does not allocate (and zero) a buffer of several MiB for each.
///
/// Holes are chunked as if their zeros had been read, so a sparse file and
/// a copy of it with its zeros written out are the same chunks. This needs
/// no scan of the zeros: a cut point depends only on the bytes from the
/// chunk's start up to the maximum chunk size. A chunk that starts with at
/// least that many zeros ahead is therefore always the same (`zero_cut`
/// long: the whole maximum, with FastCDC's gear hash on zeros), and only the
/// chunks where a hole meets data see actual bytes (its zeros are filled in
/// memory). The chunker's buffer knows which of its trailing bytes are such
/// filled-in zeros, to count them with the rest of their hole.
pub struct Chunker<'b, R> {
    reader: R,
    params: ChunkerParams,
    masks: (u64, u64),
    buf: &'b mut Vec<u8>,
    start: usize,
    end: usize,
    /// `buf[hole_from..end]` are zeros filled in for a hole the reader is
    /// still in (or just left); `hole_from == end` when the last bytes
    /// buffered were read.
    hole_from: usize,
    eof: bool,
    /// Where a chunk of nothing but zeros is cut (computed at the first hole).
    zero_cut: Option<usize>,
    /// The gear tables: a repository key's, or FastCDC's own.
    gear: (&'b [u64; 256], &'b [u64; 256]),
}

impl<'b, R: Source> Chunker<'b, R> {
    /// `gear`: the key's gear tables (`Keying::gear`), None for FastCDC's.
    pub fn new(
        reader: R,
        params: ChunkerParams,
        gear: Option<&'b Gear>,
        buf: &'b mut Vec<u8>,
    ) -> Self {
        if buf.len() < 4 * params.max {
            buf.resize(4 * params.max, 0);
        }
        Chunker {
            reader,
            params,
            masks: select_masks(params.avg, Normalization::Level1),
            buf,
            start: 0,
            end: 0,
            hole_from: 0,
            eof: false,
            zero_cut: None,
            gear: gear.map_or((&PUBLIC_GEAR.table, &PUBLIC_GEAR.shifted), |g| {
                (&g.table, &g.shifted)
            }),
        }
    }

    /// Where the chunk that starts `data` ends (0: not within `data`).
    fn cut(&self, data: &[u8]) -> usize {
        let (ms, ml) = self.masks;
        let p = &self.params;
        let (gear, shifted) = self.gear;
        cut_gear(
            data,
            p.min,
            p.avg,
            p.max,
            ms,
            ml,
            ms << 1,
            ml << 1,
            gear,
            shifted,
        )
        .1
    }

    /// The reader back, e.g. to look at the file once more after reading.
    pub fn into_inner(self) -> R {
        self.reader
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.hole_from = self.hole_from.saturating_sub(self.start);
            self.start = 0;
        }
        while !self.eof && self.end < self.buf.len() {
            let hole = self.reader.hole_ahead();
            if hole > 0 {
                // Fill in only as many zeros as the next cut can look at:
                // the rest of a big hole is passed over in `zeros`.
                let room = self.params.max.saturating_sub(self.end - self.start);
                if room == 0 {
                    break;
                }
                let n = room
                    .min(self.buf.len() - self.end)
                    .min(usize::try_from(hole).unwrap_or(usize::MAX));
                self.buf[self.end..self.end + n].fill(0);
                self.reader.skip_hole(n as u64);
                self.end += n;
                continue;
            }
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.end += n;
                    self.hole_from = self.end;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Chunks of zeros, if the next chunk starts with at least a maximum
    /// chunk's worth of hole (buffered or still in the reader) ahead.
    fn zeros(&mut self) -> Option<Piece<'static>> {
        if self.start < self.hole_from {
            return None;
        }
        let buffered = (self.end - self.start) as u64;
        let ahead = self.reader.hole_ahead();
        let run = buffered.checked_add(ahead)?;
        let max = self.params.max as u64;
        if run < max {
            return None;
        }
        let z = match self.zero_cut {
            Some(z) => z,
            None => {
                let z = match self.cut(&vec![0u8; self.params.max]) {
                    0 => self.params.max,
                    n => n,
                };
                self.zero_cut = Some(z);
                z
            }
        };
        // Each chunk must start with a whole maximum of zeros ahead.
        let count = (run - max) / z as u64 + 1;
        let len = count * z as u64;
        if len <= buffered {
            self.start += len as usize;
        } else {
            self.reader.skip_hole(len - buffered);
            self.start = self.end;
            self.hole_from = self.end;
        }
        Some(Piece::Zeros { len: z, count })
    }

    /// The next chunk (or run of zero chunks), or None at the end.
    pub fn next_piece(&mut self) -> io::Result<Option<Piece<'_>>> {
        if let Some(z) = self.zeros() {
            return Ok(Some(z));
        }
        if self.end - self.start < self.params.max && !self.eof {
            self.fill()?;
            if let Some(z) = self.zeros() {
                return Ok(Some(z));
            }
        }
        let avail = self.end - self.start;
        if avail == 0 {
            return Ok(None);
        }
        let n = match self.cut(&self.buf[self.start..self.end]) {
            0 => avail,
            n => n,
        };
        let s = self.start;
        self.start += n;
        Ok(Some(Piece::Data(&self.buf[s..s + n])))
    }
}

#[cfg(test)]
pub(crate) fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    // xorshift64*: deterministic, incompressible enough to exercise cut points.
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunks of a source without holes.
    fn chunks(data: &[u8]) -> Vec<Vec<u8>> {
        chunks_with(data, None)
    }

    fn chunks_with(data: &[u8], gear: Option<&Gear>) -> Vec<Vec<u8>> {
        let mut buf = Vec::new();
        let mut c = Chunker::new(data, ChunkerParams::default(), gear, &mut buf);
        let mut out = Vec::new();
        while let Some(p) = c.next_piece().unwrap() {
            match p {
                Piece::Data(d) => out.push(d.to_vec()),
                Piece::Zeros { .. } => panic!("zeros from a source without holes"),
            }
        }
        out
    }

    fn lengths(data: &[u8]) -> Vec<usize> {
        chunks(data).iter().map(Vec::len).collect()
    }

    #[test]
    fn a_key_moves_every_boundary() {
        // An encrypted repository's chunks cannot be matched against a
        // known file's public chunking: with another key, other cuts.
        let data = seeded_bytes(7, 24 * 1024 * 1024);
        let keyed = |seed: u8| {
            crate::format::keying::Keying::encrypted(
                &crate::crypto::MasterKey::from_bytes([seed; 32]).subkeys(),
            )
        };
        let (a, b) = (keyed(1), keyed(2));
        let cuts = |gear: Option<&Gear>| {
            let mut at = 0;
            chunks_with(&data, gear)
                .iter()
                .map(|c| {
                    at += c.len();
                    at
                })
                .collect::<Vec<_>>()
        };
        let (public, ka, kb) = (cuts(None), cuts(a.gear()), cuts(b.gear()));
        assert!(
            ka.len() > 8 && kb.len() > 8,
            "{} and {} chunks",
            ka.len(),
            kb.len()
        );
        // Only the end of the data is a cut in common.
        for (x, y) in [(&public, &ka), (&public, &kb), (&ka, &kb)] {
            let common = x.iter().filter(|c| y.contains(c)).count();
            assert_eq!(common, 1, "{x:?} and {y:?} share cuts");
        }
        assert_eq!(ka, cuts(keyed(1).gear()), "the same key cuts alike");
    }

    #[test]
    fn boundaries_of_seeded_data_are_pinned() {
        // If this changes, every existing repository stops deduplicating
        // against new ingests: change it only with a new repository format.
        let data = seeded_bytes(42, 12 * 1024 * 1024);
        let l = lengths(&data);
        assert_eq!(l.iter().sum::<usize>(), data.len());
        assert_eq!(
            l,
            vec![
                1492424, 2146027, 598776, 1883225, 1296932, 779542, 1431433, 1618402, 648893,
                687258
            ]
        );
        // Our buffering must cut exactly where the reference in-memory chunker does.
        let p = ChunkerParams::default();
        let reference: Vec<usize> = fastcdc::v2020::FastCDC::new(&data, p.min, p.avg, p.max)
            .map(|c| c.length)
            .collect();
        assert_eq!(l, reference);
    }

    #[test]
    fn an_insertion_changes_only_nearby_chunks() {
        let data = seeded_bytes(7, 16 * 1024 * 1024);
        let mut changed = data.clone();
        changed.splice(8_000_000..8_000_000, std::iter::repeat_n(0xAB, 1000));
        let hashes =
            |d: &[u8]| -> Vec<blake3::Hash> { chunks(d).iter().map(|c| blake3::hash(c)).collect() };
        let a = hashes(&data);
        let b = hashes(&changed);
        let new = b.iter().filter(|h| !a.contains(h)).count();
        assert!(new <= 2, "{new} new chunks for one insertion");
    }

    #[test]
    fn small_and_empty_inputs() {
        assert!(lengths(&[]).is_empty());
        assert_eq!(lengths(&[1, 2, 3]), vec![3]);
        let zeros = vec![0u8; 9 * 1024 * 1024];
        assert!(lengths(&zeros).iter().all(|&n| n <= 4 * 1024 * 1024));
    }

    /// Bytes in memory of which some ranges (all zeros) are holes: read
    /// only outside them, as a sparse file is.
    struct Holey<'a> {
        data: &'a [u8],
        holes: Vec<(usize, usize)>,
        pos: usize,
        read: usize,
    }

    impl Holey<'_> {
        fn hole_at(&self, pos: usize) -> Option<(usize, usize)> {
            self.holes
                .iter()
                .copied()
                .find(|&(s, e)| s <= pos && pos < e)
        }
    }

    impl Read for Holey<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            assert!(self.hole_at(self.pos).is_none(), "read inside a hole");
            let next_hole = self
                .holes
                .iter()
                .map(|&(s, _)| s)
                .filter(|&s| s > self.pos)
                .min()
                .unwrap_or(self.data.len());
            let n = out.len().min(next_hole - self.pos);
            out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            self.read += n;
            Ok(n)
        }
    }

    impl Source for Holey<'_> {
        fn hole_ahead(&mut self) -> u64 {
            self.hole_at(self.pos)
                .map_or(0, |(_, e)| (e - self.pos) as u64)
        }
        fn skip_hole(&mut self, n: u64) {
            assert!(n <= self.hole_ahead(), "skipped past the hole");
            self.pos += n as usize;
        }
    }

    /// (id, length) of every chunk, zero runs spelled out, and the bytes
    /// read from the source.
    fn chunked_with_holes(
        data: &[u8],
        holes: &[(usize, usize)],
        params: ChunkerParams,
    ) -> (Vec<(blake3::Hash, usize)>, usize) {
        let src = Holey {
            data,
            holes: holes.to_vec(),
            pos: 0,
            read: 0,
        };
        let mut buf = Vec::new();
        let mut c = Chunker::new(src, params, None, &mut buf);
        let mut out = Vec::new();
        while let Some(p) = c.next_piece().unwrap() {
            match p {
                Piece::Data(d) => out.push((blake3::hash(d), d.len())),
                Piece::Zeros { len, count } => {
                    assert!(count > 0);
                    let h = blake3::hash(&vec![0u8; len]);
                    out.extend(std::iter::repeat_n((h, len), count as usize));
                }
            }
        }
        (out, c.into_inner().read)
    }

    fn dense(data: &[u8], params: ChunkerParams) -> Vec<(blake3::Hash, usize)> {
        let mut buf = Vec::new();
        let mut c = Chunker::new(data, params, None, &mut buf);
        let mut out = Vec::new();
        while let Some(p) = c.next_piece().unwrap() {
            match p {
                Piece::Data(d) => out.push((blake3::hash(d), d.len())),
                Piece::Zeros { .. } => panic!("zeros from a source without holes"),
            }
        }
        out
    }

    /// Data islands with holes between them, at the start and at the end.
    fn islands(layout: &[(usize, usize)], len: usize, seed: u64) -> (Vec<u8>, Vec<(usize, usize)>) {
        let mut data = vec![0u8; len];
        let mut holes = Vec::new();
        let mut at = 0;
        for (i, &(off, n)) in layout.iter().enumerate() {
            if off > at {
                holes.push((at, off));
            }
            data[off..off + n].copy_from_slice(&seeded_bytes(seed + i as u64, n));
            at = off + n;
        }
        if len > at {
            holes.push((at, len));
        }
        (data, holes)
    }

    #[test]
    fn holes_are_cut_as_their_zeros_would_be_without_reading_them() {
        const MIB: usize = 1 << 20;
        let p = ChunkerParams::default();
        // Islands at the start, in the middle (unaligned), and at the end,
        // holes shorter and far longer than a chunk between them; one island
        // holds zeros of its own.
        let len = 200 * MIB + 12_345;
        let (mut data, holes) = islands(
            &[
                (0, 3 * MIB + 7),
                (5 * MIB, 100_000),
                (90 * MIB + 4321, 2 * MIB),
                (len - MIB, MIB),
            ],
            len,
            11,
        );
        data[90 * MIB + 4321 + 1000..90 * MIB + 4321 + 1000 + MIB].fill(0);
        let (got, read) = chunked_with_holes(&data, &holes, p);
        assert_eq!(got, dense(&data, p));
        let island_bytes = 3 * MIB + 7 + 100_000 + 2 * MIB + MIB;
        // Besides the islands, at most the zeros a chunk at each edge of a
        // hole looks at are filled in, and none of them is read.
        assert_eq!(read, island_bytes, "only the islands are read");
    }

    #[test]
    fn a_file_that_is_all_hole_reads_nothing() {
        let p = ChunkerParams::default();
        for len in [0, 1, p.max - 1, p.max, p.max + 1, 10 * p.max + 17] {
            let data = vec![0u8; len];
            let holes = if len > 0 { vec![(0, len)] } else { vec![] };
            let (got, read) = chunked_with_holes(&data, &holes, p);
            assert_eq!(got, dense(&data, p), "{len} bytes of hole");
            assert_eq!(read, 0);
        }
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Small chunk limits, so that many layouts of holes and islands
        /// (including zeros in islands, holes between close islands, a
        /// chunk's worth and just under) are tried quickly.
        #[test]
        fn any_layout_of_holes_chunks_as_the_dense_bytes_do(
            pieces in prop::collection::vec((0usize..5000, 0usize..3000, any::<bool>()), 0..12),
            tail in 0usize..5000,
            seed in any::<u64>(),
        ) {
            let p = ChunkerParams { min: 64, avg: 256, max: 1024 };
            let mut layout = Vec::new();
            let mut at = 0;
            for &(gap, n, _) in &pieces {
                at += gap;
                layout.push((at, n));
                at += n;
            }
            let len = at + tail;
            let (mut data, holes) = islands(&layout, len, seed);
            for (&(off, n), &(_, _, zeros)) in layout.iter().zip(&pieces) {
                if zeros {
                    data[off..off + n / 2].fill(0);
                }
            }
            let (got, read) = chunked_with_holes(&data, &holes, p);
            prop_assert_eq!(got, dense(&data, p));
            prop_assert_eq!(read, layout.iter().map(|&(_, n)| n).sum::<usize>());
        }
    }
}
