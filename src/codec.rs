//! A tiny, dependency-free binary encoding (LEB128 varints and length-prefixed
//! bytes) for the metadata written into packs. It is stable by construction:
//! the catalog can be rebuilt from packs written by any earlier release.

use crate::error::{Error, Result};
use crate::ids::Hash;

#[derive(Default)]
pub struct Encoder {
    pub buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn u64(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(byte);
                return;
            }
            self.buf.push(byte | 0x80);
        }
    }

    /// Signed values (timestamps before 1970) zig-zag encoded.
    pub fn i64(&mut self, v: i64) {
        self.u64(((v << 1) ^ (v >> 63)) as u64);
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    pub fn hash(&mut self, h: &Hash) {
        self.buf.extend_from_slice(&h.0);
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
}

pub struct Decoder<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Decoder { data, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn short() -> Error {
        Error::corrupt("metadata record ends early")
    }

    pub fn u8(&mut self) -> Result<u8> {
        let b = *self.data.get(self.pos).ok_or_else(Self::short)?;
        self.pos += 1;
        Ok(b)
    }

    pub fn u64(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::corrupt("varint too long"))
    }

    pub fn u32(&mut self) -> Result<u32> {
        u32::try_from(self.u64()?).map_err(|_| Error::corrupt("value out of range"))
    }

    pub fn i64(&mut self) -> Result<i64> {
        let v = self.u64()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = usize::try_from(self.u64()?).map_err(|_| Self::short())?;
        let end = self.pos.checked_add(n).ok_or_else(Self::short)?;
        let s = self.data.get(self.pos..end).ok_or_else(Self::short)?;
        self.pos = end;
        Ok(s)
    }

    pub fn hash(&mut self) -> Result<Hash> {
        let s = self
            .data
            .get(self.pos..self.pos + 32)
            .ok_or_else(Self::short)?;
        self.pos += 32;
        Ok(Hash::from_slice(s).expect("slice is 32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_signed_values_round_trip() {
        let mut e = Encoder::new();
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            e.u64(v);
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX, -1_000_000_000_123] {
            e.i64(v);
        }
        e.bytes(b"name\n\xff");
        let mut d = Decoder::new(&e.buf);
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            assert_eq!(d.u64().unwrap(), v);
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX, -1_000_000_000_123] {
            assert_eq!(d.i64().unwrap(), v);
        }
        assert_eq!(d.bytes().unwrap(), b"name\n\xff");
        assert!(d.is_empty());
        assert!(d.u8().is_err());
    }
}
