//! Memory for decoded frames. Full-size frames, which make up any file of
//! more than one frame, live in fixed slots of one mapping advised for huge
//! pages; the odd-sized rest come from the heap.
//!
//! Why not the heap for all: a cache that keeps evicting and decoding
//! 256 KiB blocks makes the heap either keep freed memory (fragmentation
//! beside frames of other sizes) or hand it back and fault it in again, and
//! each fault of a fresh 4 KiB page is a TLB shootdown across cores: page
//! faults took a fifth of the mount's time reading a big file. Slots are
//! reused in place, touched once, and faulted in 2 MiB at a time.

use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::format::blob::FRAME;

/// A fixed number of `FRAME`-byte slots in one anonymous mapping.
pub struct Slots {
    base: *mut u8,
    len: usize,
    /// Free slot numbers; the most recently freed is reused first (warm).
    free: Mutex<Vec<u32>>,
}

// SAFETY: the mapping is owned by `Slots` and each slot is handed to one
// `Slot` at a time (the free list is behind a mutex).
unsafe impl Send for Slots {}
// SAFETY: as above; shared access only reads `base`/`len`.
unsafe impl Sync for Slots {}

impl Slots {
    /// `count` slots, or None if the mapping cannot be made (then every
    /// frame comes from the heap).
    pub fn new(count: usize) -> Option<Arc<Slots>> {
        let len = (count * FRAME).next_multiple_of(2 << 20);
        if count == 0 || len == 0 {
            return None;
        }
        // SAFETY: a fresh private anonymous mapping, checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: advice on the mapping made above; failure is harmless.
        unsafe { libc::madvise(base, len, libc::MADV_HUGEPAGE) };
        let count = len / FRAME;
        Some(Arc::new(Slots {
            base: base.cast(),
            len,
            free: Mutex::new((0..count as u32).rev().collect()),
        }))
    }

    /// A free slot, if any.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        let idx = self.free.lock().expect("slot list lock").pop()?;
        Some(Slot {
            slots: self.clone(),
            idx,
        })
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped; no `Slot` outlives `Slots`
        // (each holds an Arc to it).
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// One slot, owned until dropped.
pub struct Slot {
    slots: Arc<Slots>,
    idx: u32,
}

impl Slot {
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: slot `idx` lies inside the mapping and belongs to this
        // `Slot` alone until it is dropped.
        unsafe {
            std::slice::from_raw_parts_mut(self.slots.base.add(self.idx as usize * FRAME), FRAME)
        }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: as in `bytes_mut`.
        unsafe { std::slice::from_raw_parts(self.slots.base.add(self.idx as usize * FRAME), FRAME) }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots
            .free
            .lock()
            .expect("slot list lock")
            .push(self.idx);
    }
}

/// Where a decoded frame's bytes are.
enum Bytes {
    Heap(Vec<u8>),
    /// A slot and how much of it is the frame.
    Slot(Slot, usize),
}

/// The bytes of one decoded frame, and how many of them a streaming reader
/// has been given (see `serve`).
pub struct Frame {
    bytes: Bytes,
    served: AtomicUsize,
}

impl Frame {
    pub fn heap(v: Vec<u8>) -> Frame {
        Frame::new(Bytes::Heap(v))
    }

    /// The first `len` bytes of `slot`.
    pub fn slot(slot: Slot, len: usize) -> Frame {
        Frame::new(Bytes::Slot(slot, len))
    }

    fn new(bytes: Bytes) -> Frame {
        Frame {
            bytes,
            served: AtomicUsize::new(0),
        }
    }

    /// Count `n` bytes handed to a reader streaming through the file; true
    /// once the whole frame has been. Counting bytes rather than watching
    /// for the read that reaches the end keeps this right when the
    /// kernel's requests arrive out of order.
    pub fn serve(&self, n: usize) -> bool {
        self.served.fetch_add(n, Ordering::Relaxed) + n >= self.len()
    }
}

impl Deref for Frame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Heap(v) => v,
            Bytes::Slot(s, len) => &s.bytes()[..*len],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_run_out_cleanly() {
        let slots = Slots::new(3).expect("mapping");
        let count = slots.len / FRAME;
        let mut held: Vec<Slot> = (0..count)
            .map(|_| slots.take().expect("free slot"))
            .collect();
        assert!(slots.take().is_none(), "all {count} slots are taken");
        held[1].bytes_mut()[..3].copy_from_slice(b"abc");
        let frame = Frame::slot(held.remove(1), 3);
        assert_eq!(&*frame, b"abc");
        assert!(!frame.serve(2), "two of three bytes served");
        assert!(frame.serve(1), "all three served");
        drop(frame);
        let again = slots.take().expect("the slot freed by the drop");
        assert_eq!(again.idx, 1, "the most recently freed slot comes first");
    }
}
