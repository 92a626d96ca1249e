//! Reading a sparse file without reading its holes.
//!
//! A 1 TB virtual disk image with a few GB written is almost all holes, and
//! reading them costs as much as reading data (the kernel hands out zeros at
//! about 0.5 GB/s). SEEK_DATA and SEEK_HOLE say where the file's data lies,
//! so the holes are passed to the chunker as known zeros and never read.
//!
//! The holes found are only what the file looked like at that moment: a
//! write into a hole after it was found is not seen, just as a write into
//! data already read is not. Either changes the file's mtime and ctime,
//! which the walk compares before and after reading (and the next snapshot
//! reads the file again), so the contract for files that change while read
//! stays what it is for every file.
//!
//! A filesystem that cannot answer (EINVAL and the like) is read in full, as
//! is anything the answers make doubtful (a hole that starts where data was
//! just found).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use rustix::fs::SeekFrom;
use rustix::io::Errno;

use crate::format::chunker::Source;

/// Where the next byte to read lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Region {
    /// Not known yet: ask the file.
    Unknown,
    /// Data up to `end`: read it.
    Data { end: u64 },
    /// A hole up to `end`: zeros, not read.
    Hole { end: u64 },
    /// No data, no hole: the end of the file.
    End,
    /// Read everything, holes or not (no support, or not a sparse file).
    Dense,
}

/// A regular file read by position, data regions only.
pub(crate) struct SparseFile {
    file: File,
    pos: u64,
    region: Region,
    /// Bytes of holes given out as zeros without reading them.
    hole_bytes: u64,
}

impl SparseFile {
    /// `sparse`: whether to look for holes at all. A file whose allocated
    /// blocks cover its size has none, and two lseek calls per file would
    /// be wasted on a tree of small files.
    pub(crate) fn new(file: File, sparse: bool) -> SparseFile {
        SparseFile {
            file,
            pos: 0,
            region: if sparse {
                Region::Unknown
            } else {
                Region::Dense
            },
            hole_bytes: 0,
        }
    }

    pub(crate) fn hole_bytes(&self) -> u64 {
        self.hole_bytes
    }

    pub(crate) fn into_inner(self) -> File {
        self.file
    }

    /// The region at `pos`, asking the file when the last one is used up.
    fn region(&mut self) -> Region {
        match self.region {
            Region::Data { end } | Region::Hole { end } if self.pos >= end => {
                self.region = self.locate();
            }
            Region::Unknown => self.region = self.locate(),
            _ => {}
        }
        self.region
    }

    fn locate(&self) -> Region {
        let pos = self.pos;
        match rustix::fs::seek(&self.file, SeekFrom::Data(pos)) {
            Ok(d) if d > pos => Region::Hole { end: d },
            Ok(d) if d == pos => match rustix::fs::seek(&self.file, SeekFrom::Hole(pos)) {
                Ok(h) if h > pos => Region::Data { end: h },
                // Truncated between the two calls: the read finds the end.
                Err(Errno::NXIO) => Region::Data { end: u64::MAX },
                // A hole where data just was: do not guess.
                _ => Region::Dense,
            },
            // No data at or after `pos`: a hole up to the end of the file,
            // or the end itself.
            Err(Errno::NXIO) => match self.file.metadata() {
                Ok(m) if m.len() > pos => Region::Hole { end: m.len() },
                Ok(_) => Region::End,
                Err(_) => Region::Dense,
            },
            // EINVAL (no support) and anything else: read it all.
            _ => Region::Dense,
        }
    }

    fn read_at(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Read for SparseFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.region() {
            Region::Data { end } => {
                let want = usize::try_from(end - self.pos).map_or(buf.len(), |n| n.min(buf.len()));
                let n = self.read_at(&mut buf[..want])?;
                if n == 0 && want > 0 {
                    // Shorter than when its data was found.
                    self.region = Region::End;
                }
                Ok(n)
            }
            Region::Hole { end } => {
                let n = usize::try_from(end - self.pos).map_or(buf.len(), |n| n.min(buf.len()));
                buf[..n].fill(0);
                self.pos += n as u64;
                self.hole_bytes += n as u64;
                Ok(n)
            }
            Region::End => Ok(0),
            Region::Unknown | Region::Dense => self.read_at(buf),
        }
    }
}

impl Source for SparseFile {
    fn hole_ahead(&mut self) -> u64 {
        match self.region() {
            Region::Hole { end } => end - self.pos,
            _ => 0,
        }
    }

    fn skip_hole(&mut self, n: u64) {
        let n = n.min(self.hole_ahead());
        self.pos += n;
        self.hole_bytes += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    const MIB: u64 = 1 << 20;

    /// A sparse file in a temporary directory (on a filesystem with holes,
    /// as the system's temporary directory is here; a test fails loudly if
    /// not): `len` bytes, data at the given offsets.
    fn sparse_file(len: u64, islands: &[(u64, &[u8])]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sparse");
        let mut f = File::create(&path).expect("create");
        f.set_len(len).expect("set_len");
        for (off, data) in islands {
            f.seek(io::SeekFrom::Start(*off)).expect("seek");
            f.write_all(data).expect("write");
        }
        f.sync_all().expect("fsync");
        (dir, File::open(&path).expect("open"))
    }

    fn read_all(mut s: SparseFile) -> (Vec<u8>, u64) {
        let mut out = Vec::new();
        s.read_to_end(&mut out).expect("read");
        (out, s.hole_bytes())
    }

    #[test]
    fn holes_read_as_zeros_without_being_read() {
        let a = vec![7u8; 100_000];
        let b = vec![9u8; 5000];
        let len = 64 * MIB + 3;
        let (_dir, f) = sparse_file(len, &[(MIB + 11, &a), (40 * MIB, &b)]);
        let (got, holes) = read_all(SparseFile::new(f.try_clone().unwrap(), true));
        let mut want = vec![0u8; len as usize];
        want[MIB as usize + 11..][..a.len()].copy_from_slice(&a);
        want[40 * MIB as usize..][..b.len()].copy_from_slice(&b);
        assert!(got == want, "the bytes read differ from the file's");
        // The filesystem decides how much around the data it allocates;
        // at least the long holes must not have been read.
        assert!(holes > 60 * MIB, "{holes} bytes of holes found");
        let (dense, none) = read_all(SparseFile::new(f, false));
        assert!(dense == want);
        assert_eq!(none, 0);
    }

    #[test]
    fn skipping_a_hole_lands_on_the_data_after_it() {
        let (_dir, f) = sparse_file(32 * MIB, &[(20 * MIB, b"data")]);
        let mut s = SparseFile::new(f, true);
        let ahead = s.hole_ahead();
        assert!((16 * MIB..=20 * MIB).contains(&ahead), "{ahead}");
        s.skip_hole(ahead);
        assert_eq!(s.hole_ahead(), 0);
        let mut buf = vec![1u8; 8 * MIB as usize];
        let mut got = Vec::new();
        loop {
            let n = s.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            if s.hole_ahead() > 0 || n == 0 {
                break;
            }
        }
        let at = (20 * MIB - ahead) as usize;
        assert_eq!(&got[at..at + 4], b"data");
        // Skipping more than the hole holds stops at its end.
        let rest = s.hole_ahead();
        s.skip_hole(rest + 1000);
        assert_eq!(s.pos, 32 * MIB);
        assert_eq!(s.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn a_file_that_is_all_hole_and_an_empty_file() {
        let (_dir, f) = sparse_file(10 * MIB, &[]);
        let mut s = SparseFile::new(f, true);
        assert_eq!(s.hole_ahead(), 10 * MIB);
        s.skip_hole(10 * MIB);
        assert_eq!(s.hole_ahead(), 0);
        assert_eq!(s.read(&mut [0u8; 10]).unwrap(), 0);
        let (_dir, f) = sparse_file(0, &[]);
        let (got, holes) = read_all(SparseFile::new(f, true));
        assert!(got.is_empty());
        assert_eq!(holes, 0);
    }

    #[test]
    fn a_file_without_seek_data_support_is_read_in_full() {
        // procfs answers SEEK_DATA with EINVAL, as filesystems without
        // support for it do.
        let path = "/proc/version";
        let want = std::fs::read(path).expect("read /proc/version");
        let mut s = SparseFile::new(File::open(path).expect("open"), true);
        assert_eq!(s.hole_ahead(), 0);
        assert_eq!(s.region, Region::Dense);
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read");
        assert_eq!(got, want);
        assert_eq!(s.hole_bytes(), 0);
    }
}
