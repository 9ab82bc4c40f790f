//! tokio adapters for the stream format ([`crate::stream`]): a
//! [`StreamWriter`] (`AsyncWrite`: plaintext in, stream out) and a
//! [`StreamReader`] (`AsyncRead`: stream in, plaintext out). Each holds two
//! segment buffers whatever the payload's size (constant memory).
//!
//! The reader hands out a segment's plaintext only after its tag verifies,
//! but a truncated stream is only known at its end: treat what it produced
//! as incomplete until it returns end-of-file (`Ok(0)`) rather than an
//! error, e.g. write to a temporary file and rename it afterwards, as
//! `kmsctl decrypt-file` does. Format errors come out as
//! `io::ErrorKind::InvalidData` wrapping [`crate::Error::Format`].
use crate::error::Error;
use crate::format::{DataKey, FormatError};
use crate::stream::{Header, Opener, Sealer, MAX_HEADER_LEN};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

fn invalid(e: FormatError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Error::Format(e))
}

/// The format error inside an I/O error from a [`StreamReader`] or
/// [`StreamWriter`], if that is what it is.
pub fn format_error(e: &io::Error) -> Option<FormatError> {
    match e.get_ref()?.downcast_ref::<Error>()? {
        Error::Format(f) => Some(*f),
        _ => None,
    }
}

/// Encrypts what is written to it into the stream format, written to
/// `inner`. [`shutdown`](tokio::io::AsyncWriteExt::shutdown) seals the
/// final segment: a writer dropped without it leaves a stream that every
/// reader refuses as truncated.
pub struct StreamWriter<W> {
    inner: W,
    sealer: Sealer,
    /// Plaintext of the segment being filled (up to the segment size; it
    /// is sealed only once more data shows it is not the last).
    plain: Vec<u8>,
    /// Sealed bytes not yet written to `inner` (the header first).
    out: Vec<u8>,
    out_pos: usize,
}

impl<W: AsyncWrite + Unpin> StreamWriter<W> {
    /// A writer of a stream with this header, data key and associated
    /// data; the header is written before the first segment.
    pub fn new(inner: W, header: &Header, data_key: &DataKey, aad: &[u8]) -> Result<Self, FormatError> {
        let sealer = header.sealer(data_key, aad)?;
        let s = sealer.segment_size();
        let mut out = Vec::with_capacity(s + 16);
        out.extend_from_slice(header.as_bytes());
        Ok(StreamWriter {
            inner,
            sealer,
            plain: Vec::with_capacity(s + 16),
            out,
            out_pos: 0,
        })
    }

    /// The inner writer (after [`shutdown`](tokio::io::AsyncWriteExt::shutdown)).
    pub fn into_inner(self) -> W {
        self.inner
    }

    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let pending = self.out.get(self.out_pos..).unwrap_or_default();
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.out.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Seals the buffered plaintext into `out` (which is empty).
    fn seal(&mut self, last: bool) -> io::Result<()> {
        std::mem::swap(&mut self.plain, &mut self.out);
        self.sealer.seal_segment(&mut self.out, last).map_err(invalid)?;
        self.plain.clear();
        Ok(())
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for StreamWriter<W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.sealer.is_finished() {
            return Poll::Ready(Err(io::Error::other("write after shutdown")));
        }
        ready!(this.drain(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let s = this.sealer.segment_size();
        if this.plain.len() == s {
            // more data: the full segment is not the last one
            this.seal(false)?;
            // written out on the next call (or flush); the data below is taken now
        }
        let n = buf.len().min(s - this.plain.len());
        this.plain.extend_from_slice(buf.get(..n).unwrap_or_default());
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        if !self.sealer.is_finished() {
            self.seal(true)?;
            ready!(self.drain(cx))?;
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The header of a stream, read from `inner`, and what was read past it.
pub struct StreamStart<R> {
    inner: R,
    header: Header,
    /// Bytes read after the header (the start of the first segment).
    rest: Vec<u8>,
}

impl<R: AsyncRead + Unpin> StreamStart<R> {
    /// Reads and parses the header (at most [`MAX_HEADER_LEN`] bytes
    /// before it is known).
    pub async fn read(mut inner: R) -> Result<Self, Error> {
        let mut buf = Vec::with_capacity(MAX_HEADER_LEN);
        let mut chunk = [0u8; 512];
        loop {
            match Header::parse(&buf) {
                Ok(header) => {
                    let rest = buf.split_off(header.as_bytes().len());
                    return Ok(StreamStart { inner, header, rest });
                }
                Err(FormatError::Truncated(what)) => {
                    let want = (MAX_HEADER_LEN - buf.len().min(MAX_HEADER_LEN)).clamp(1, chunk.len());
                    let n = inner
                        .read(chunk.get_mut(..want).unwrap_or_default())
                        .await
                        .map_err(Error::Io)?;
                    if n == 0 {
                        return Err(FormatError::Truncated(what).into());
                    }
                    buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The stream's header (its key name and wrapped data key say which
    /// data key opens it).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The reader of the segments, given the unwrapped data key.
    pub fn into_reader(self, data_key: &DataKey, aad: &[u8]) -> Result<StreamReader<R>, FormatError> {
        let opener = self.header.opener(data_key, aad)?;
        let wire = opener.wire_segment_size();
        let mut input = vec![0u8; wire + 1];
        let have = self.rest.len().min(wire + 1);
        input
            .get_mut(..have)
            .ok_or(FormatError::Internal("buffer"))?
            .copy_from_slice(self.rest.get(..have).ok_or(FormatError::Internal("buffer"))?);
        Ok(StreamReader {
            inner: self.inner,
            opener,
            input,
            have,
            eof: false,
            plain: Vec::with_capacity(wire),
            plain_pos: 0,
        })
    }
}

/// Decrypts a stream read from `inner`; made by [`StreamStart::into_reader`].
pub struct StreamReader<R> {
    inner: R,
    opener: Opener,
    /// Read-ahead: one full segment plus one byte, which tells whether
    /// the segment is the last.
    input: Vec<u8>,
    have: usize,
    eof: bool,
    /// The last opened segment's plaintext, and how much was handed out.
    plain: Vec<u8>,
    plain_pos: usize,
}

impl<R: AsyncRead + Unpin> AsyncRead for StreamReader<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.plain_pos < this.plain.len() {
                let avail = this.plain.get(this.plain_pos..).unwrap_or_default();
                let n = avail.len().min(buf.remaining());
                buf.put_slice(avail.get(..n).unwrap_or_default());
                this.plain_pos += n;
                return Poll::Ready(Ok(()));
            }
            if this.opener.is_finished() {
                return Poll::Ready(Ok(()));
            }
            // fill the read-ahead: a full segment and one byte, or the end
            while !this.eof && this.have < this.input.len() {
                let mut rb = ReadBuf::new(this.input.get_mut(this.have..).unwrap_or_default());
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                let n = rb.filled().len();
                if n == 0 {
                    this.eof = true;
                }
                this.have += n;
            }
            let wire = this.opener.wire_segment_size();
            if this.have == 0 {
                return Poll::Ready(Err(invalid(FormatError::Truncated("a stream with no segment"))));
            }
            let last = this.eof && this.have <= wire;
            let len = if last { this.have } else { wire };
            this.plain.clear();
            this.plain.extend_from_slice(this.input.get(..len).unwrap_or_default());
            this.input.copy_within(len..this.have, 0);
            this.have -= len;
            this.plain_pos = 0;
            this.opener.open_segment(&mut this.plain, last).map_err(invalid)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{self, SEGMENT_SIZE};
    use tokio::io::AsyncWriteExt;

    fn key() -> DataKey {
        DataKey::from_slice(&[5; 32]).unwrap()
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 253) as u8).collect()
    }

    async fn write_all_in_pieces(header: &Header, pt: &[u8], piece: usize) -> Vec<u8> {
        let mut w = StreamWriter::new(Vec::new(), header, &key(), b"ad").unwrap();
        for c in pt.chunks(piece.max(1)) {
            w.write_all(c).await.unwrap();
        }
        w.shutdown().await.unwrap();
        w.into_inner()
    }

    async fn read_all(blob: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
        let start = StreamStart::read(blob).await?;
        let mut r = start.into_reader(&key(), aad)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)
            .await
            .map_err(|e| Error::Format(format_error(&e).unwrap()))?;
        Ok(out)
    }

    #[tokio::test]
    async fn the_adapters_agree_with_the_one_shot_functions() {
        let h = Header::new(1024, "files", &[1; 82]).unwrap();
        for len in [0, 1, 1023, 1024, 1025, 4096, 5000] {
            for piece in [1, 100, 1024, 7000] {
                let pt = data(len);
                let blob = write_all_in_pieces(&h, &pt, piece).await;
                assert_eq!(
                    blob,
                    stream::seal_all(&h, &key(), &pt, b"ad").unwrap(),
                    "len {len} piece {piece}"
                );
                assert_eq!(read_all(&blob, b"ad").await.unwrap(), pt);
            }
        }
    }

    #[tokio::test]
    async fn the_reader_refuses_what_the_format_refuses() {
        let h = Header::new(1024, "files", &[1; 82]).unwrap();
        let blob = write_all_in_pieces(&h, &data(3000), 500).await;
        let hl = h.as_bytes().len();
        assert!(matches!(
            read_all(&blob[..hl], b"ad").await,
            Err(Error::Format(FormatError::Truncated(_)))
        ));
        assert!(matches!(
            read_all(&blob[..hl + 1040], b"ad").await,
            Err(Error::Format(FormatError::Authentication))
        ));
        assert!(matches!(
            read_all(&blob, b"other").await,
            Err(Error::Format(FormatError::Authentication))
        ));
        assert!(matches!(
            read_all(&blob[..20], b"ad").await,
            Err(Error::Format(FormatError::Truncated(_)))
        ));
    }

    #[tokio::test]
    async fn default_segments_round_trip() {
        let h = Header::new(SEGMENT_SIZE, "files", &[1; 82]).unwrap();
        let pt = data(3 * 65536 + 17);
        let blob = write_all_in_pieces(&h, &pt, 10_000).await;
        assert_eq!(read_all(&blob, b"ad").await.unwrap(), pt);
    }
}
