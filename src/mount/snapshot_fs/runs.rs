//! Read-ahead in runs, for repositories where each read is a round trip
//! (a bucket): the frames ahead of a sequential reader that lie back to
//! back in one pack (the chunks of a file ingested in one go do) are
//! fetched with one ranged read and decoded from their slices, instead of
//! one read per 256 KiB frame and one more per chunk header.
//!
//! Every frame is verified as when read alone (`Header::parse`, then
//! `decode_frame_to`, which checks its BLAKE3 or AEAD tag). A run that
//! fails to read or decode only leaves its frames to be read one by one
//! when a reader gets there, which reports any damage as before.

use std::sync::Arc;

use super::Shared;
use super::files::OpenFile;
use super::frame::Frame;
use crate::error::{Error, Result};
use crate::format::blob::{FRAME, Header, frame_count, header_len_of};
use crate::repo::catalog::ChunkLoc;
use crate::repo::coalesce::Span;

impl OpenFile {
    /// The last chunk of the run that starts in chunk `ci`: the chunks
    /// after it that follow it in the same pack, within `span.max_gap` of
    /// each other, none of zeros, all within `span.max_len` bytes.
    pub(super) fn run_end(&self, ci: usize, span: Span, zero: impl Fn(usize) -> bool) -> usize {
        let first = &self.locs[ci];
        let mut last = ci;
        while last + 1 < self.locs.len() {
            let (prev, next) = (&self.locs[last], &self.locs[last + 1]);
            let prev_end = prev.offset + u64::from(prev.stored_len);
            let next_end = next.offset + u64::from(next.stored_len);
            if next.pack != first.pack
                || next.offset < prev_end
                || next.offset - prev_end > span.max_gap
                || next_end - first.offset > span.max_len
                || zero(last + 1)
            {
                break;
            }
            last += 1;
        }
        last
    }
}

impl Shared {
    /// Whether chunk `ci` of `f` is a run of zeros (never read).
    pub(super) fn zero_chunk(&self, f: &OpenFile, ci: usize) -> bool {
        let c = f.chunks.get(ci);
        self.repo
            .keying
            .is_zero_chunk(&c.id, c.len, f.locs[ci].stored_len)
    }

    /// The parsed header of chunk `ci` of `f`: cached, or read.
    pub(super) fn header(&self, f: &OpenFile, ci: usize) -> Result<Arc<Header>> {
        let c = f.chunks.get(ci);
        let loc = &f.locs[ci];
        let key = (c.id, loc.pack, loc.offset, c.len);
        if let Some(h) = self.frames.header(&key) {
            return Ok(h);
        }
        let sealed = self.repo.keying.is_sealed();
        let len = header_len_of(sealed, c.len as usize);
        let h = Arc::new(self.read_checked(loc, loc.offset, len, |bytes| {
            Header::parse(&self.repo.keying, bytes, &c.id, c.len as usize)
        })?);
        self.frames.put_header(key, h.clone());
        Ok(h)
    }

    /// `len` bytes of `loc`'s pack at `offset`, through `check`. Bytes
    /// that fail it and came from a copy (the disk cache) are dropped
    /// there and read again from the store, whose bytes decide.
    pub(super) fn read_checked<T>(
        &self,
        loc: &ChunkLoc,
        offset: u64,
        len: usize,
        check: impl Fn(&[u8]) -> Result<T>,
    ) -> Result<T> {
        let backend = &self.repo.backend;
        let read = || {
            backend
                .read_at(&loc.pack, offset, len)
                .map_err(|e| super::data::missing_pack_is_damage(e, loc))
        };
        match check(&read()?) {
            Err(Error::Corrupt(why)) => {
                if !backend.forget(&loc.pack, offset, len) {
                    return Err(Error::Corrupt(why));
                }
                log::warn!(
                    "pack {}: cached bytes failed their check; read again",
                    loc.pack
                );
                check(&read()?)
            }
            r => r,
        }
    }

    /// Decode, with one read, frame `fi` of chunk `ci` and every frame
    /// after it up to the end of its run (`OpenFile::run_end`) that nobody
    /// holds or decodes yet. Errors are left for readers to meet.
    pub(super) fn frame_run(&self, f: &OpenFile, ci: usize, fi: u32, span: Span) {
        if self.zero_chunk(f, ci) {
            let _ = self.frame(f, ci, fi);
            return;
        }
        let last = f.run_end(ci, span, |c| self.zero_chunk(f, c));
        let keys = (ci..=last).flat_map(|c| {
            let chunk = f.chunks.get(c);
            let from = if c == ci { fi } else { 0 };
            (from..frame_count(chunk.len as usize) as u32).map(move |k| (chunk.id, k))
        });
        let mut claim = self.frames.claim(keys);
        if claim.is_empty() {
            return;
        }
        // Nothing past the last chunk with a claimed frame is read.
        let last = (ci..=last)
            .rev()
            .find(|&c| {
                let chunk = f.chunks.get(c);
                (0..frame_count(chunk.len as usize) as u32).any(|k| claim.holds(&(chunk.id, k)))
            })
            .unwrap_or(ci);
        let _ = self.decode_run(f, ci, fi, last, &mut claim);
    }

    /// Decode the run; on damage, drop any cached copy of its bytes (see
    /// `read_checked`): the frames left are read one by one by readers.
    fn decode_run(
        &self,
        f: &OpenFile,
        ci: usize,
        fi: u32,
        last: usize,
        claim: &mut super::cache::Claim<'_>,
    ) -> Result<()> {
        let first = &f.locs[ci];
        // From frame `fi` on; the first chunk's header is needed to find it
        // unless the run starts with the header itself.
        let (start, first_header) = if fi == 0 {
            (first.offset, None)
        } else {
            let h = self.header(f, ci)?;
            (first.offset + h.frame_range(fi as usize).0 as u64, Some(h))
        };
        let end_loc = &f.locs[last];
        let end = end_loc.offset + u64::from(end_loc.stored_len);
        let len = (end - start) as usize;
        let bytes = self.repo.backend.read_at(&first.pack, start, len)?;
        let r = self.decode_slices(f, (ci, fi, last), start, &bytes, first_header, claim);
        if let Err(Error::Corrupt(_)) = &r {
            self.repo.backend.forget(&first.pack, start, len);
        }
        r
    }

    fn decode_slices(
        &self,
        f: &OpenFile,
        (ci, fi, last): (usize, u32, usize),
        start: u64,
        bytes: &[u8],
        first_header: Option<Arc<Header>>,
        claim: &mut super::cache::Claim<'_>,
    ) -> Result<()> {
        let outside = |c| Error::corrupt(format!("chunk {c} lies outside its run"));
        for c in ci..=last {
            let chunk = f.chunks.get(c);
            let loc = &f.locs[c];
            let raw_len = chunk.len as usize;
            let header = match (&first_header, c == ci) {
                (Some(h), true) => h.clone(),
                _ => {
                    let at = (loc.offset - start) as usize;
                    let blob = bytes
                        .get(at..at + loc.stored_len as usize)
                        .ok_or_else(|| outside(chunk.id))?;
                    let h = Arc::new(Header::parse(&self.repo.keying, blob, &chunk.id, raw_len)?);
                    self.frames
                        .put_header((chunk.id, loc.pack, loc.offset, chunk.len), h.clone());
                    h
                }
            };
            let from = if c == ci { fi } else { 0 };
            for k in from..header.frame_count() as u32 {
                let key = (chunk.id, k);
                if !claim.holds(&key) {
                    continue;
                }
                let (fs, fl) = header.frame_range(k as usize);
                if fs + fl > loc.stored_len as usize {
                    return Err(outside(chunk.id));
                }
                let at = (loc.offset + fs as u64)
                    .checked_sub(start)
                    .ok_or_else(|| outside(chunk.id))? as usize;
                let stored = bytes.get(at..at + fl).ok_or_else(|| outside(chunk.id))?;
                let frame_len = (raw_len - k as usize * FRAME).min(FRAME);
                let frame = match self.frames.slot() {
                    Some(mut slot) if frame_len == FRAME => {
                        let n = header.decode_frame_to(
                            k as usize,
                            stored,
                            &chunk.id,
                            slot.bytes_mut(),
                        )?;
                        Frame::slot(slot, n)
                    }
                    _ => Frame::heap(header.decode_frame(k as usize, stored, &chunk.id)?),
                };
                claim.put(key, frame);
            }
        }
        Ok(())
    }
}
