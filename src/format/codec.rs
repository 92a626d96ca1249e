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

    /// Bytes not yet decoded.
    pub fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    /// Succeeds only if every byte was decoded: the formats have no padding,
    /// so trailing bytes mean the record is not what its writer wrote.
    pub fn finish(&self, what: &str) -> Result<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(Error::corrupt(format!(
                "{what}: {} unexpected trailing byte(s)",
                self.remaining()
            )))
        }
    }

    /// A count of records that follow, each at least `min_len` bytes long,
    /// checked against the bytes left, so that a count from the input never
    /// sizes an allocation larger than the input itself.
    pub fn count(&mut self, min_len: usize) -> Result<usize> {
        let n = self.u64()?;
        let fits = usize::try_from(n)
            .ok()
            .filter(|&n| n.saturating_mul(min_len.max(1)) <= self.remaining());
        fits.ok_or_else(|| {
            Error::corrupt(format!(
                "record count {n} exceeds the {} bytes left",
                self.remaining()
            ))
        })
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
            // The tenth byte holds only the top bit of a u64; anything more
            // would be dropped, so two encodings would mean one value.
            if shift == 63 && b > 1 {
                return Err(Error::corrupt("varint overflows 64 bits"));
            }
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
        let end = self.pos.checked_add(Hash::LEN).ok_or_else(Self::short)?;
        let s = self.data.get(self.pos..end).ok_or_else(Self::short)?;
        self.pos = end;
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

    #[test]
    fn hash_near_the_end_of_input_is_an_error_not_a_panic() {
        let mut d = Decoder::new(&[0u8; 31]);
        assert!(d.hash().is_err());
        let mut d = Decoder::new(&[0u8; 33]);
        d.u8().unwrap();
        d.u8().unwrap();
        assert!(d.hash().is_err());
    }

    #[test]
    fn varint_bits_beyond_64_are_refused() {
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert!(Decoder::new(&over).u64().is_err());
        let mut max = vec![0xff; 9];
        max.push(0x01);
        assert_eq!(Decoder::new(&max).u64().unwrap(), u64::MAX);
    }

    #[test]
    fn counts_larger_than_the_input_are_refused() {
        let mut e = Encoder::new();
        e.u64(1 << 40);
        assert!(Decoder::new(&e.buf).count(1).is_err());
        let mut e = Encoder::new();
        e.u64(2);
        e.buf.extend_from_slice(&[0; 64]);
        assert_eq!(Decoder::new(&e.buf).count(32).unwrap(), 2);
        assert!(Decoder::new(&e.buf).count(33).is_err());
    }

    #[test]
    fn trailing_bytes_fail_finish() {
        let mut d = Decoder::new(&[1, 2]);
        d.u8().unwrap();
        assert!(d.finish("x").is_err());
        d.u8().unwrap();
        d.finish("x").unwrap();
    }

    proptest::proptest! {
        #![proptest_config(mutate::config())]
        #[test]
        fn decoder_never_panics_on_arbitrary_bytes(b in mutate::bytes()) {
            let mut d = Decoder::new(&b);
            while !d.is_empty() {
                let step = d.u8().unwrap_or(0) % 5;
                let r = match step {
                    0 => d.u64().map(drop),
                    1 => d.bytes().map(drop),
                    2 => d.hash().map(drop),
                    3 => d.count(3).map(drop),
                    _ => d.i64().map(drop),
                };
                if r.is_err() {
                    break;
                }
            }
        }
    }
}

/// Test inputs for the decoders' property tests: valid encodings damaged
/// the way disks and attackers damage them.
#[cfg(test)]
pub(crate) mod mutate {
    use proptest::prelude::*;
    use proptest::sample::Index;

    /// Cases per property: enough to find the shallow bugs on every run,
    /// few enough that the whole set stays within seconds.
    pub const CASES: u32 = 512;

    pub fn config() -> ProptestConfig {
        ProptestConfig {
            cases: CASES,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// One edit: flip bits, overwrite, insert, delete, truncate, or set a
    /// little-endian u32/u64 at a place to an extreme value (where lengths
    /// and offsets live).
    #[derive(Clone, Debug)]
    pub enum Edit {
        Flip(Index, u8),
        Set(Index, u8),
        Insert(Index, u8),
        Delete(Index),
        Truncate(Index),
        Word32(Index, u32),
        Word64(Index, u64),
    }

    fn extreme32() -> impl Strategy<Value = u32> {
        prop_oneof![
            Just(0),
            Just(1),
            Just(u32::MAX),
            Just(u32::MAX / 49),
            Just(1 << 31),
            any::<u32>()
        ]
    }

    fn extreme64() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0),
            Just(u64::MAX),
            Just(u64::MAX - 100),
            Just(1 << 63),
            any::<u64>()
        ]
    }

    pub fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (any::<Index>(), 1..=255u8).prop_map(|(i, b)| Edit::Flip(i, b)),
            (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
            (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
            any::<Index>().prop_map(Edit::Delete),
            any::<Index>().prop_map(Edit::Truncate),
            (any::<Index>(), extreme32()).prop_map(|(i, v)| Edit::Word32(i, v)),
            (any::<Index>(), extreme64()).prop_map(|(i, v)| Edit::Word64(i, v)),
        ]
    }

    pub fn apply(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
        for e in edits {
            if b.is_empty() {
                break;
            }
            let at = |i: &Index| i.index(b.len());
            match e {
                Edit::Flip(i, x) => {
                    let i = at(i);
                    b[i] ^= x;
                }
                Edit::Set(i, x) => {
                    let i = at(i);
                    b[i] = *x;
                }
                Edit::Insert(i, x) => {
                    let i = at(i);
                    b.insert(i, *x);
                }
                Edit::Delete(i) => {
                    let i = at(i);
                    b.remove(i);
                }
                Edit::Truncate(i) => {
                    let i = at(i);
                    b.truncate(i);
                }
                Edit::Word32(i, v) => {
                    let i = at(i);
                    for (k, x) in v.to_le_bytes().into_iter().enumerate() {
                        if let Some(d) = b.get_mut(i + k) {
                            *d = x;
                        }
                    }
                }
                Edit::Word64(i, v) => {
                    let i = at(i);
                    for (k, x) in v.to_le_bytes().into_iter().enumerate() {
                        if let Some(d) = b.get_mut(i + k) {
                            *d = x;
                        }
                    }
                }
            }
        }
        b
    }

    /// `valid`, damaged by one to four edits.
    pub fn damaged(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(edit(), 1..4).prop_map(move |e| apply(valid.clone(), &e))
    }

    /// Arbitrary bytes, mostly short.
    pub fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..512)
    }
}
