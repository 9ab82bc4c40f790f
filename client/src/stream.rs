//! The stream format, version 1 (`0xE2`, `docs/formats.md` §3): a payload
//! too large for one message, cut into segments sealed under one key per
//! stream (the STREAM construction of Hoang, Reyhanitabar, Rogaway and
//! Vizár, as in age and Tink's AES-GCM-HKDF streaming AEAD).
//!
//! This module is the pure format, with no I/O: the [`Header`], and a
//! [`Sealer`] and an [`Opener`] that handle one segment at a time, so
//! memory stays at one segment whatever the payload's size. The tokio
//! adapters (`crate::stream_io`) and `kmsctl encrypt-file` drive them.
//!
//! ```text
//! header    = 0xE2 | 0x01 | s (u32) | n | key name | w (u16) | wrapped data key | salt (32) | nonce prefix (7)
//! key       = HKDF-SHA256(ikm = data key, salt = salt, info = "kmsd stream v1 segment key")
//! D         = SHA-256("kmsd stream v1" || 0x00 || header || caller's associated data)
//! segment i = AES-256-GCM(key, nonce prefix || u32(i) || last, aad = D, plaintext_i) || tag
//! ```
//! Every segment but the last holds exactly `s` plaintext bytes; the last
//! holds 1 ..= `s`, or 0 only when the whole plaintext is empty. The
//! `last` flag and the counter in the nonce are what make a truncation at
//! a segment boundary, an appended, dropped or reordered segment fail.
use crate::format::{aead_key, open_in_place, put_key_fields, random, seal_in_place, Reader, NONCE_LEN, TAG_LEN};
pub use crate::format::{DataKey, FormatError};
use ring::aead::LessSafeKey;
use sha2::{Digest, Sha256};

/// The first byte of a stream.
pub const FORMAT: u8 = 0xE2;
/// AES-256-GCM STREAM with an HKDF-SHA256 segment key.
pub const ALGORITHM: u8 = 0x01;
/// The segment size writers use (plaintext bytes per segment).
pub const SEGMENT_SIZE: u32 = 65_536;
/// The smallest segment size a reader accepts.
pub const MIN_SEGMENT_SIZE: u32 = 1_024;
/// The largest segment size a reader accepts.
pub const MAX_SEGMENT_SIZE: u32 = 1_048_576;
/// Length of the random salt (the segment key's HKDF salt).
pub const SALT_LEN: usize = 32;
/// Length of the random nonce prefix.
pub const PREFIX_LEN: usize = 7;
/// The longest header: 48 + 128 (key name) + 1024 (wrapped key).
pub const MAX_HEADER_LEN: usize = 48 + 128 + 1024;
const INFO: &[u8] = b"kmsd stream v1 segment key";
const DIGEST_LABEL: &[u8] = b"kmsd stream v1\x00";

/// A stream header, parsed and bounded, with its encoding (which the
/// segments authenticate through the header digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    segment_size: u32,
    key_name: String,
    wrapped_key: Vec<u8>,
    salt: [u8; SALT_LEN],
    nonce_prefix: [u8; PREFIX_LEN],
    encoded: Vec<u8>,
}

impl Header {
    /// A header for a new stream with a fresh random salt and nonce prefix.
    pub fn new(segment_size: u32, key_name: &str, wrapped_key: &[u8]) -> Result<Header, FormatError> {
        let mut salt = [0u8; SALT_LEN];
        let mut prefix = [0u8; PREFIX_LEN];
        random(&mut salt)?;
        random(&mut prefix)?;
        Header::with(segment_size, key_name, wrapped_key, salt, prefix)
    }

    /// A header with the given salt and nonce prefix: for the test vectors
    /// only (a repeated salt under one data key repeats the segment key).
    #[doc(hidden)]
    pub fn with(
        segment_size: u32,
        key_name: &str,
        wrapped_key: &[u8],
        salt: [u8; SALT_LEN],
        nonce_prefix: [u8; PREFIX_LEN],
    ) -> Result<Header, FormatError> {
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&segment_size) {
            return Err(FormatError::Invalid("segment size must be 1024..=1048576"));
        }
        let mut encoded = Vec::with_capacity(48 + key_name.len() + wrapped_key.len());
        encoded.push(FORMAT);
        encoded.push(ALGORITHM);
        encoded.extend_from_slice(&segment_size.to_be_bytes());
        put_key_fields(&mut encoded, key_name, wrapped_key)?;
        encoded.extend_from_slice(&salt);
        encoded.extend_from_slice(&nonce_prefix);
        Ok(Header {
            segment_size,
            key_name: key_name.to_owned(),
            wrapped_key: wrapped_key.to_vec(),
            salt,
            nonce_prefix,
            encoded,
        })
    }

    /// Parses and bounds the header at the start of `input` (fields in
    /// order; the first failure decides). [`FormatError::Truncated`] means
    /// `input` ends inside the header: an incremental reader that has not
    /// reached the end of its input reads more (at most
    /// [`MAX_HEADER_LEN`]) and tries again.
    pub fn parse(input: &[u8]) -> Result<Header, FormatError> {
        let mut r = Reader::new(input);
        if r.u8("format byte")? != FORMAT {
            return Err(FormatError::Malformed("not a stream (format byte is not 0xE2)"));
        }
        if r.u8("algorithm byte")? != ALGORITHM {
            return Err(FormatError::Malformed("unknown stream algorithm"));
        }
        let segment_size = r.u32("segment size")?;
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&segment_size) {
            return Err(FormatError::Malformed("segment size out of range 1024..=1048576"));
        }
        let key_name = r.key_name()?;
        let wrapped_key = r.wrapped_key()?;
        let salt = r.array("salt")?;
        let nonce_prefix = r.array("nonce prefix")?;
        let encoded = input.get(..r.pos()).ok_or(FormatError::Internal("header length"))?;
        Ok(Header {
            segment_size,
            key_name: key_name.to_owned(),
            wrapped_key: wrapped_key.to_vec(),
            salt,
            nonce_prefix,
            encoded: encoded.to_vec(),
        })
    }

    /// The header's bytes, as written at the start of the stream.
    pub fn as_bytes(&self) -> &[u8] {
        &self.encoded
    }

    /// Plaintext bytes per segment.
    pub fn segment_size(&self) -> u32 {
        self.segment_size
    }

    /// The kmsd key the data key is wrapped under.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// The wrapped data key.
    pub fn wrapped_key(&self) -> &[u8] {
        &self.wrapped_key
    }

    fn segment_key(&self, data_key: &DataKey, aad: &[u8]) -> Result<SegmentKey, FormatError> {
        let mut d = Sha256::new();
        d.update(DIGEST_LABEL);
        d.update(&self.encoded);
        d.update(aad);
        Ok(SegmentKey {
            key: aead_key(data_key.derive(&self.salt, INFO)?)?,
            digest: d.finalize().into(),
            prefix: self.nonce_prefix,
            next: 0,
            segment_size: self.segment_size as usize,
        })
    }

    /// The segment sealer for this header, data key and associated data.
    pub fn sealer(&self, data_key: &DataKey, aad: &[u8]) -> Result<Sealer, FormatError> {
        Ok(Sealer {
            key: self.segment_key(data_key, aad)?,
            finished: false,
        })
    }

    /// The segment opener for this header, data key and associated data.
    pub fn opener(&self, data_key: &DataKey, aad: &[u8]) -> Result<Opener, FormatError> {
        Ok(Opener {
            key: self.segment_key(data_key, aad)?,
            finished: false,
        })
    }
}

/// The per-stream state both directions share.
struct SegmentKey {
    key: LessSafeKey,
    digest: [u8; 32],
    prefix: [u8; PREFIX_LEN],
    /// Index of the next segment; a u64 so 2^32 itself is representable
    /// (and refused).
    next: u64,
    segment_size: usize,
}

impl SegmentKey {
    fn nonce(&self, last: bool) -> Option<[u8; NONCE_LEN]> {
        let i = u32::try_from(self.next).ok()?;
        let mut n = [0u8; NONCE_LEN];
        n[..PREFIX_LEN].copy_from_slice(&self.prefix);
        n[PREFIX_LEN..11].copy_from_slice(&i.to_be_bytes());
        n[11] = u8::from(last);
        Some(n)
    }
}

/// Seals a stream one segment at a time.
pub struct Sealer {
    key: SegmentKey,
    finished: bool,
}

impl Sealer {
    /// Plaintext bytes per segment.
    pub fn segment_size(&self) -> usize {
        self.key.segment_size
    }

    /// Seals one segment in place: `buf` holds its plaintext (exactly the
    /// segment size unless `last`; 1 ..= the segment size if `last`, or 0
    /// when it is the only segment) and gets the tag appended.
    pub fn seal_segment(&mut self, buf: &mut Vec<u8>, last: bool) -> Result<(), FormatError> {
        let s = self.key.segment_size;
        if self.finished {
            return Err(FormatError::Invalid("the stream's final segment is already sealed"));
        }
        if !last && buf.len() != s {
            return Err(FormatError::Invalid(
                "a non-final segment holds exactly the segment size",
            ));
        }
        if last && (buf.len() > s || (buf.is_empty() && self.key.next > 0)) {
            return Err(FormatError::Invalid("a final segment holds 1..=segment size bytes"));
        }
        let nonce = self
            .key
            .nonce(last)
            .ok_or(FormatError::Invalid("a stream has at most 2^32 segments"))?;
        let tag = seal_in_place(&self.key.key, nonce, &self.key.digest, buf)?;
        buf.extend_from_slice(&tag);
        self.key.next += 1;
        self.finished = last;
        Ok(())
    }

    /// Whether the final segment has been sealed.
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

/// Opens a stream one segment at a time.
pub struct Opener {
    key: SegmentKey,
    finished: bool,
}

impl Opener {
    /// Bytes of one full segment on the wire (segment size + tag).
    pub fn wire_segment_size(&self) -> usize {
        self.key.segment_size + TAG_LEN
    }

    /// Opens one segment in place: `buf` holds its ciphertext and tag and
    /// is left holding the plaintext. `last` must be true exactly when the
    /// input ends right after this segment. Checks, in order: a segment
    /// shorter than its tag is [`FormatError::Truncated`]; a wrong length,
    /// or an empty final segment after a non-empty one, is
    /// [`FormatError::Malformed`]; then the tag
    /// ([`FormatError::Authentication`]).
    pub fn open_segment(&mut self, buf: &mut Vec<u8>, last: bool) -> Result<(), FormatError> {
        let wire = self.wire_segment_size();
        if self.finished {
            return Err(FormatError::Malformed("data after the final segment"));
        }
        if buf.len() < TAG_LEN {
            return Err(FormatError::Truncated("a segment shorter than its tag"));
        }
        if (!last && buf.len() != wire) || buf.len() > wire {
            return Err(FormatError::Malformed("segment length"));
        }
        if last && buf.len() == TAG_LEN && self.key.next > 0 {
            return Err(FormatError::Malformed("an empty final segment after a non-empty one"));
        }
        let nonce = self
            .key
            .nonce(last)
            .ok_or(FormatError::Malformed("more than 2^32 segments"))?;
        let len = open_in_place(&self.key.key, nonce, &self.key.digest, buf).inspect_err(|_| buf.clear())?;
        buf.truncate(len);
        self.key.next += 1;
        self.finished = last;
        Ok(())
    }

    /// Whether the final segment has been opened (the stream is complete).
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

/// Seals a whole plaintext held in memory (header included in the output).
pub fn seal_all(header: &Header, data_key: &DataKey, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, FormatError> {
    let mut sealer = header.sealer(data_key, aad)?;
    let s = sealer.segment_size();
    let mut out = header.as_bytes().to_vec();
    let mut chunks = plaintext.chunks(s).peekable();
    let mut buf = Vec::with_capacity(s + TAG_LEN);
    if chunks.peek().is_none() {
        sealer.seal_segment(&mut buf, true)?;
        out.extend_from_slice(&buf);
    }
    while let Some(chunk) = chunks.next() {
        buf.clear();
        buf.extend_from_slice(chunk);
        sealer.seal_segment(&mut buf, chunks.peek().is_none())?;
        out.extend_from_slice(&buf);
    }
    Ok(out)
}

/// Opens a whole stream held in memory (`blob` starts with `header`,
/// as returned by [`Header::parse`] on it).
pub fn open_all(header: &Header, data_key: &DataKey, blob: &[u8], aad: &[u8]) -> Result<Vec<u8>, FormatError> {
    let body = blob
        .strip_prefix(header.as_bytes())
        .ok_or(FormatError::Invalid("the blob does not start with this header"))?;
    if body.is_empty() {
        return Err(FormatError::Truncated("a stream with no segment"));
    }
    let mut opener = header.opener(data_key, aad)?;
    let wire = opener.wire_segment_size();
    let mut out = Vec::with_capacity(body.len());
    let mut buf = Vec::with_capacity(wire);
    let mut chunks = body.chunks(wire).peekable();
    while let Some(chunk) = chunks.next() {
        buf.clear();
        buf.extend_from_slice(chunk);
        opener.open_segment(&mut buf, chunks.peek().is_none())?;
        out.extend_from_slice(&buf);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DataKey {
        DataKey::from_slice(&[0x42; 32]).unwrap()
    }

    fn header() -> Header {
        Header::new(MIN_SEGMENT_SIZE, "files", &[7; 82]).unwrap()
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn round_trips_at_every_boundary() {
        let h = header();
        for len in [0, 1, 1023, 1024, 1025, 2048, 3000] {
            let blob = seal_all(&h, &key(), &data(len), b"aad").unwrap();
            let segments = len.div_ceil(1024).max(1);
            assert_eq!(blob.len(), h.as_bytes().len() + len + 16 * segments, "len {len}");
            let parsed = Header::parse(&blob).unwrap();
            assert_eq!(parsed, h);
            assert_eq!(
                open_all(&parsed, &key(), &blob, b"aad").unwrap(),
                data(len),
                "len {len}"
            );
            assert_eq!(
                open_all(&parsed, &key(), &blob, b"aaD"),
                Err(FormatError::Authentication)
            );
        }
    }

    #[test]
    fn header_length_is_48_plus_fields() {
        let h = Header::new(SEGMENT_SIZE, "abc", &[1; 10]).unwrap();
        assert_eq!(h.as_bytes().len(), 48 + 3 + 10);
        let big = Header::new(SEGMENT_SIZE, &"k".repeat(128), &[1; 1024]).unwrap();
        assert_eq!(big.as_bytes().len(), MAX_HEADER_LEN);
        for cut in 0..big.as_bytes().len() {
            assert!(matches!(
                Header::parse(&big.as_bytes()[..cut]),
                Err(FormatError::Truncated(_))
            ));
        }
    }

    #[test]
    fn segment_sizes_out_of_range_are_refused() {
        for s in [0, 1023, 1_048_577, u32::MAX] {
            assert!(matches!(Header::new(s, "k", &[1]), Err(FormatError::Invalid(_))));
        }
        let mut b = Header::new(1024, "k", &[1]).unwrap().as_bytes().to_vec();
        b[2..6].copy_from_slice(&1023u32.to_be_bytes());
        assert!(matches!(Header::parse(&b), Err(FormatError::Malformed(_))));
    }

    #[test]
    fn the_sealer_enforces_segment_rules() {
        let h = header();
        let mut s = h.sealer(&key(), b"").unwrap();
        assert!(s.seal_segment(&mut vec![0; 1000], false).is_err());
        s.seal_segment(&mut vec![0; 1024], false).unwrap();
        assert!(s.seal_segment(&mut Vec::new(), true).is_err());
        s.seal_segment(&mut vec![0; 10], true).unwrap();
        assert!(s.is_finished());
        assert!(s.seal_segment(&mut vec![0; 10], true).is_err());
    }

    #[test]
    fn the_counter_cannot_wrap() {
        let h = header();
        let mut s = h.sealer(&key(), b"").unwrap();
        s.key.next = u64::from(u32::MAX) + 1;
        assert!(matches!(
            s.seal_segment(&mut vec![0; 1024], false),
            Err(FormatError::Invalid(_))
        ));
        let mut o = h.opener(&key(), b"").unwrap();
        o.key.next = u64::from(u32::MAX) + 1;
        assert!(matches!(
            o.open_segment(&mut vec![0; 1040], false),
            Err(FormatError::Malformed(_))
        ));
    }
}
