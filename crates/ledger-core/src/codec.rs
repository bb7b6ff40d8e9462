//! A tiny canonical byte codec: big-endian integers and length-prefixed byte strings.
//!
//! Entry hashes and command fingerprints are computed over these bytes, so the encoding must be
//! canonical: one value has exactly one encoding, and the reader rejects anything else (short
//! input, over-long fields, trailing bytes). Serde formats make no such promise, which is why the
//! hashed encodings do not use them.

use thiserror::Error;

/// Why a byte string is not a valid canonical encoding.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ended before the value did.
    #[error("input ends early while reading {0}")]
    Truncated(&'static str),
    /// A field holds a value that no encoder produces.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// Bytes remain after the value.
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

/// Where encoded bytes go: a buffer, or straight into a hash so that hashing allocates nothing.
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl<T: Sink + ?Sized> Sink for &mut T {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        (**self).put(bytes);
    }
}

/// SHA-256 of the canonical bytes `write` produces.
///
/// The bytes go to a reusable per-thread buffer and are hashed in one call: feeding the hasher
/// field by field, or moving a buffered hasher around, costs more than the hash itself.
pub(crate) fn sha256(write: impl FnOnce(&mut Writer<&mut Vec<u8>>)) -> [u8; 32] {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
    }
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        buf.clear();
        write(&mut Writer::new(&mut *buf));
        sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(buf.as_slice())).into()
    })
}

/// Appends canonical fields to a [`Sink`].
#[derive(Debug, Default)]
pub(crate) struct Writer<S: Sink = Vec<u8>> {
    out: S,
}

impl Writer<Vec<u8>> {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self { out: Vec::with_capacity(capacity) }
    }
}

impl<S: Sink> Writer<S> {
    pub(crate) fn new(out: S) -> Self {
        Self { out }
    }

    #[inline]
    pub(crate) fn u8(&mut self, v: u8) {
        self.out.put(&[v]);
    }

    #[inline]
    pub(crate) fn u32(&mut self, v: u32) {
        self.out.put(&v.to_be_bytes());
    }

    #[inline]
    pub(crate) fn u64(&mut self, v: u64) {
        self.out.put(&v.to_be_bytes());
    }

    #[inline]
    pub(crate) fn i64(&mut self, v: i64) {
        self.out.put(&v.to_be_bytes());
    }

    #[inline]
    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.out.put(bytes);
    }

    /// A byte string of at most 255 bytes, prefixed by its length as one byte.
    #[inline]
    pub(crate) fn str8(&mut self, s: &str) {
        let len = u8::try_from(s.len()).expect("str8 field longer than 255 bytes: validation missed it");
        self.out.put(&[len]);
        self.out.put(s.as_bytes());
    }

    /// A byte string of at most 65535 bytes, prefixed by its length as two bytes.
    #[inline]
    pub(crate) fn str16(&mut self, s: &str) {
        let len = u16::try_from(s.len()).expect("str16 field longer than 65535 bytes: validation missed it");
        self.out.put(&len.to_be_bytes());
        self.out.put(s.as_bytes());
    }

    pub(crate) fn into_inner(self) -> S {
        self.out
    }
}

/// Reads canonical fields from a byte slice.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes(b.try_into().expect("took 4 bytes")))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        Ok(u64::from_be_bytes(b.try_into().expect("took 8 bytes")))
    }

    pub(crate) fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        let b = self.take(8, what)?;
        Ok(i64::from_be_bytes(b.try_into().expect("took 8 bytes")))
    }

    pub(crate) fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let b = self.take(N, what)?;
        Ok(b.try_into().expect("took N bytes"))
    }

    pub(crate) fn str8(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let len = usize::from(self.u8(what)?);
        let b = self.take(len, what)?;
        std::str::from_utf8(b).map_err(|_| DecodeError::Invalid(what))
    }

    pub(crate) fn str16(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let b = self.take(2, what)?;
        let len = usize::from(u16::from_be_bytes(b.try_into().expect("took 2 bytes")));
        let b = self.take(len, what)?;
        std::str::from_utf8(b).map_err(|_| DecodeError::Invalid(what))
    }

    /// Fails unless every byte has been consumed: a canonical value has no tail.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() { Ok(()) } else { Err(DecodeError::Trailing(self.bytes.len())) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_tail_is_rejected() {
        let mut w = Writer::with_capacity(64);
        w.u8(7);
        w.u32(0xdead_beef);
        w.u64(u64::MAX);
        w.i64(-5);
        w.str8("abc");
        w.str16("reason");
        let bytes = w.into_inner();

        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.u32("b").unwrap(), 0xdead_beef);
        assert_eq!(r.u64("c").unwrap(), u64::MAX);
        assert_eq!(r.i64("d").unwrap(), -5);
        assert_eq!(r.str8("e").unwrap(), "abc");
        assert_eq!(r.str16("f").unwrap(), "reason");
        r.finish().unwrap();

        let mut longer = bytes.clone();
        longer.push(0);
        let mut r = Reader::new(&longer);
        r.array::<33>("all").unwrap();
        assert_eq!(r.finish(), Err(DecodeError::Trailing(1)));

        let mut r = Reader::new(&bytes[..3]);
        r.u8("a").unwrap();
        assert_eq!(r.u32("b"), Err(DecodeError::Truncated("b")));
    }
}
