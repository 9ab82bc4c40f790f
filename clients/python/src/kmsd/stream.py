"""File-like reader and writer over the stream format (0xE2,
docs/formats.md section 3), in constant memory: a writer holds at most one
segment of plaintext, a reader one segment of plaintext and two of
ciphertext (the current one and the look-ahead that tells whether it is
the last).

Make them with :meth:`kmsd.Envelope.stream_writer` and
:meth:`kmsd.Envelope.stream_reader`, which get the data key from kmsd.

A reader returns a segment's plaintext only after its tag verified, but a
truncated stream is only known at its end: treat what was read as
incomplete until ``read`` returned ``b""`` (end of stream) without raising,
e.g. write it to a temporary file and rename it afterwards.
"""
import io

from . import formats
from .errors import MalformedError, TruncatedError

__all__ = ["StreamWriter", "StreamReader"]


class StreamWriter(io.RawIOBase):
    """Encrypts what is written into ``sink`` (a binary file-like object).

    ``close()`` writes the final segment: only then is the stream complete.
    Leaving a ``with`` block by an exception, or calling :meth:`abort`,
    closes *without* the final segment, so a reader refuses the partial
    output instead of taking it for the whole. The sink is not closed.
    """

    def __init__(self, sink, cipher, header):
        super().__init__()
        self._sink = sink
        self._cipher = cipher
        self._s = header.segment_size
        self._buf = bytearray()
        self._index = 0
        self._done = False
        self.header = header
        sink.write(header.raw)

    def writable(self):
        return True

    def write(self, data):
        if self.closed:
            raise ValueError("write to a closed stream writer")
        mv = memoryview(data).cast("B")
        n = len(mv)
        while len(mv):
            if len(self._buf) == self._s:
                # More is coming, so the buffered segment is not the last.
                self._emit(last=False)
            take = min(self._s - len(self._buf), len(mv))
            self._buf += mv[:take]
            mv = mv[take:]
        return n

    def _emit(self, last):
        self._sink.write(self._cipher.seal(self._index, last, self._buf))
        self._index += 1
        self._buf = bytearray()

    def close(self):
        """Writes the final segment (once) and closes the writer."""
        if not self.closed and not self._done:
            self._done = True
            self._emit(last=True)
            if hasattr(self._sink, "flush"):
                self._sink.flush()
        super().close()

    def abort(self):
        """Closes without the final segment: the output will be refused."""
        self._done = True
        self._buf = bytearray()
        super().close()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self):
        # An abandoned writer must not complete the stream (io.IOBase's
        # __del__ would call close()).
        if not self.closed:
            self.abort()


class StreamReader(io.RawIOBase):
    """Decrypts a stream from ``source`` (positioned after the header,
    which :meth:`kmsd.Envelope.stream_reader` has read). ``read()`` raises
    :class:`kmsd.FormatError` on any tampering; ``b""`` means the whole
    stream was authenticated."""

    def __init__(self, source, cipher, header):
        super().__init__()
        self._source = source
        self._cipher = cipher
        self._wire = header.segment_size + formats.TAG_LEN
        self._index = 0
        self._out = b""
        self._pos = 0
        self._finished = False
        self.header = header
        self._ahead = formats.read_exact(source, self._wire)
        if not self._ahead:
            raise TruncatedError("truncated: the stream has no segment")

    @property
    def key_name(self):
        return self.header.key_name

    def readable(self):
        return True

    def _next_segment(self):
        segment = self._ahead
        self._ahead = formats.read_exact(self._source, self._wire)
        last = not self._ahead
        if len(segment) < formats.TAG_LEN:
            raise TruncatedError("truncated: a final segment shorter than its tag")
        if last and len(segment) == formats.TAG_LEN and self._index > 0:
            raise MalformedError("malformed: an empty final segment after a non-empty one")
        plaintext = self._cipher.open(self._index, last, segment)
        self._index += 1
        if last:
            self._finished = True
        return plaintext

    def readinto(self, b):
        if self.closed:
            raise ValueError("read from a closed stream reader")
        while self._pos >= len(self._out):
            if self._finished:
                return 0
            self._out = self._next_segment()
            self._pos = 0
        n = min(len(b), len(self._out) - self._pos)
        b[:n] = self._out[self._pos : self._pos + n]
        self._pos += n
        return n

    def readall(self):
        chunks = []
        while True:
            chunk = self.read(self._wire)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    @property
    def complete(self):
        """Whether the final segment has been read and authenticated."""
        return self._finished and self._pos >= len(self._out)
