//! Content-defined chunking (FastCDC 2020) as an iterator over a reader.
//!
//! Boundaries depend only on content, so an insertion in the middle of a large
//! file changes only the chunks around it. The cut-point search is the
//! `fastcdc` crate's; buffering is ours, to read in large blocks and move
//! memory only when less than one maximum chunk remains buffered.

use std::io::{self, Read};

use fastcdc::v2020::{Normalization, cut, select_masks};

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

/// Reads through a caller-owned buffer, so that chunking thousands of small
/// files does not allocate (and zero) a buffer of several MiB for each.
pub struct Chunker<'b, R> {
    reader: R,
    params: ChunkerParams,
    masks: (u64, u64),
    buf: &'b mut Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<'b, R: Read> Chunker<'b, R> {
    pub fn new(reader: R, params: ChunkerParams, buf: &'b mut Vec<u8>) -> Self {
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
            eof: false,
        }
    }

    /// The reader back, e.g. to look at the file once more after reading.
    pub fn into_inner(self) -> R {
        self.reader
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while !self.eof && self.end < self.buf.len() {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next chunk's bytes, or None at the end.
    pub fn next_chunk(&mut self) -> io::Result<Option<&[u8]>> {
        if self.end - self.start < self.params.max && !self.eof {
            self.fill()?;
        }
        let avail = self.end - self.start;
        if avail == 0 {
            return Ok(None);
        }
        let (ms, ml) = self.masks;
        let (_, n) = cut(
            &self.buf[self.start..self.end],
            self.params.min,
            self.params.avg,
            self.params.max,
            ms,
            ml,
            ms << 1,
            ml << 1,
        );
        let n = if n == 0 { avail } else { n };
        let s = self.start;
        self.start += n;
        Ok(Some(&self.buf[s..s + n]))
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

    fn lengths(data: &[u8]) -> Vec<usize> {
        let mut buf = Vec::new();
        let mut c = Chunker::new(data, ChunkerParams::default(), &mut buf);
        let mut out = Vec::new();
        while let Some(ch) = c.next_chunk().unwrap() {
            out.push(ch.len());
        }
        out
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
        let hashes = |d: &[u8]| {
            let mut buf = Vec::new();
            let mut c = Chunker::new(d, ChunkerParams::default(), &mut buf);
            let mut v = Vec::new();
            while let Some(ch) = c.next_chunk().unwrap() {
                v.push(blake3::hash(ch));
            }
            v
        };
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
}
