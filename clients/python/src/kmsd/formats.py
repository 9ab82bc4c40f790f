"""The envelope (0xE1) and stream (0xE2) formats of docs/formats.md, byte
by byte. Pure code: no network, no clock, no randomness of its own (every
random input is a parameter, so the test vectors can be reproduced).

Readers check every field in order and raise one of three errors, the ones
the vectors name: :class:`~kmsd.errors.TruncatedError` (the input ends
inside a field, or leaves no room for a tag), :class:`~kmsd.errors.MalformedError`
(a byte or length the format does not allow) and
:class:`~kmsd.errors.AuthenticationError` (a tag does not verify). Writers
raise :class:`ValueError` for what the format cannot carry.

Keys: a data key is 32 bytes (``bytes`` or ``bytearray``). The keys derived
from it here (per message, per stream) live only inside ``cryptography``'s
AESGCM object; Python cannot promise to wipe copies (see the README).
"""
import hashlib
import io
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import AuthenticationError, MalformedError, TruncatedError

ENVELOPE_FORMAT = 0xE1
STREAM_FORMAT = 0xE2
ALGORITHM = 0x01
NONCE_LEN = 12
TAG_LEN = 16
DATA_KEY_LEN = 32
MESSAGE_ID_LEN = 32
SALT_LEN = 32
PREFIX_LEN = 7
MAX_KEY_NAME = 128
MAX_WRAPPED_KEY = 1024
DEFAULT_SEGMENT_SIZE = 65536
MIN_SEGMENT_SIZE = 1024
MAX_SEGMENT_SIZE = 1048576
MAX_SEGMENTS = 1 << 32
#: The associated data of every wrapped data key (GenerateDataKey / Decrypt).
DATA_KEY_AAD = b"kmsd data key v1"
ENVELOPE_INFO = b"kmsd envelope v1 message key"
ENVELOPE_AAD_PREFIX = b"kmsd envelope v1\x00"
STREAM_INFO = b"kmsd stream v1 segment key"
STREAM_DIGEST_PREFIX = b"kmsd stream v1\x00"

_NAME_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def valid_key_name(name):
    """kmsd's key name rule: 1 ..= 128 bytes of ``[A-Za-z0-9._-]``."""
    if isinstance(name, str):
        try:
            name = name.encode("ascii")
        except UnicodeEncodeError:
            return False
    return 1 <= len(name) <= MAX_KEY_NAME and all(b in _NAME_BYTES for b in name)


def derive_key(data_key, salt, info):
    """HKDF-SHA256(ikm = data key, salt, info), 32 bytes."""
    if len(data_key) != DATA_KEY_LEN:
        raise ValueError("a data key is 32 bytes")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=bytes(salt), info=info).derive(bytes(data_key))


class _Fields:
    """Reads a header front to back from a file-like ``source``; an input
    that ends inside a field is truncated."""

    def __init__(self, source):
        self._source = source
        self.raw = bytearray()

    def take(self, n, what):
        out = read_exact(self._source, n)
        if len(out) < n:
            raise TruncatedError(f"truncated: the input ends inside the {what}")
        self.raw += out
        return out

    def u8(self, what):
        return self.take(1, what)[0]

    def u16(self, what):
        return struct.unpack(">H", self.take(2, what))[0]

    def u32(self, what):
        return struct.unpack(">I", self.take(4, what))[0]

    def format_and_algorithm(self, expected):
        fmt = self.u8("format byte")
        if fmt != expected:
            raise MalformedError(f"malformed: format byte 0x{fmt:02x}, expected 0x{expected:02x}")
        alg = self.u8("algorithm byte")
        if alg != ALGORITHM:
            raise MalformedError(f"malformed: unknown algorithm 0x{alg:02x}")

    def key_name(self):
        n = self.u8("key name length")
        if not 1 <= n <= MAX_KEY_NAME:
            raise MalformedError("malformed: key name length out of range 1..=128")
        name = self.take(n, "key name")
        if not valid_key_name(name):
            raise MalformedError("malformed: key name not of [A-Za-z0-9._-]")
        return name.decode("ascii")

    def wrapped_key(self):
        w = self.u16("wrapped key length")
        if not 1 <= w <= MAX_WRAPPED_KEY:
            raise MalformedError("malformed: wrapped key length out of range 1..=1024")
        return self.take(w, "wrapped key")


def read_exact(source, n):
    """Up to ``n`` bytes from ``source``: fewer only at the end of input."""
    chunks = []
    left = n
    while left > 0:
        chunk = source.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _key_fields(key_name, wrapped_key):
    if not valid_key_name(key_name):
        raise ValueError("a key name is 1..=128 characters of [A-Za-z0-9._-]")
    if not 1 <= len(wrapped_key) <= MAX_WRAPPED_KEY:
        raise ValueError("a wrapped data key is 1..=1024 bytes")
    name = key_name.encode("ascii")
    return bytes([len(name)]) + name + struct.pack(">H", len(wrapped_key)) + bytes(wrapped_key)


def _check_len(value, n, what):
    if len(value) != n:
        raise ValueError(f"{what} is {n} bytes")


# ---------------------------------------------------------------- envelope


class EnvelopeHeader:
    """A parsed envelope header: ``key_name``, ``wrapped_key``,
    ``message_id``, ``nonce``, and ``length`` (H, where the ciphertext
    starts)."""

    __slots__ = ("key_name", "wrapped_key", "message_id", "nonce", "length")

    def __init__(self, key_name, wrapped_key, message_id, nonce, length):
        self.key_name = key_name
        self.wrapped_key = wrapped_key
        self.message_id = message_id
        self.nonce = nonce
        self.length = length

    def __repr__(self):
        return f"EnvelopeHeader(key_name={self.key_name!r}, wrapped_key={len(self.wrapped_key)} bytes)"


def envelope_header(key_name, wrapped_key, message_id, nonce):
    """The header bytes 0 .. H of an envelope."""
    _check_len(message_id, MESSAGE_ID_LEN, "a message id")
    _check_len(nonce, NONCE_LEN, "a nonce")
    return bytes([ENVELOPE_FORMAT, ALGORITHM]) + _key_fields(key_name, wrapped_key) + bytes(message_id) + bytes(nonce)


def parse_envelope(blob):
    """Parses and bounds an envelope's header (no key needed)."""
    fields = _Fields(io.BytesIO(blob))
    fields.format_and_algorithm(ENVELOPE_FORMAT)
    key_name = fields.key_name()
    wrapped = fields.wrapped_key()
    message_id = fields.take(MESSAGE_ID_LEN, "message id")
    nonce = fields.take(NONCE_LEN, "nonce")
    length = len(fields.raw)
    if len(blob) - length < TAG_LEN:
        raise TruncatedError("truncated: no room for the tag")
    return EnvelopeHeader(key_name, wrapped, message_id, nonce, length)


def envelope_message_key(data_key, message_id):
    """The per-message key: HKDF(data key, salt = message id)."""
    return derive_key(data_key, message_id, ENVELOPE_INFO)


def seal_envelope_with(message_key, header, plaintext, aad):
    """Seals under an already derived message key (the cache derives it
    while it holds the data key)."""
    nonce = header[-NONCE_LEN:]
    ct = AESGCM(message_key).encrypt(nonce, bytes(plaintext), ENVELOPE_AAD_PREFIX + header + bytes(aad))
    return header + ct


def seal_envelope(data_key, key_name, wrapped_key, plaintext, aad, *, message_id, nonce):
    """An envelope of ``plaintext`` under ``data_key`` (whose wrapped form,
    under kmsd key ``key_name``, is ``wrapped_key``)."""
    header = envelope_header(key_name, wrapped_key, message_id, nonce)
    return seal_envelope_with(envelope_message_key(data_key, message_id), header, plaintext, aad)


def open_envelope_with(message_key, header, blob, aad):
    """Opens ``blob`` (parsed as ``header``) under an already derived
    message key."""
    h = header.length
    try:
        return AESGCM(message_key).decrypt(header.nonce, bytes(blob[h:]), ENVELOPE_AAD_PREFIX + bytes(blob[:h]) + bytes(aad))
    except InvalidTag:
        raise AuthenticationError() from None


def open_envelope(data_key, blob, aad):
    """Parses and opens an envelope whose data key is known."""
    header = parse_envelope(blob)
    return open_envelope_with(envelope_message_key(data_key, header.message_id), header, blob, aad)


# ------------------------------------------------------------------ stream


class StreamHeader:
    """A stream header: ``segment_size``, ``key_name``, ``wrapped_key``,
    ``salt``, ``nonce_prefix``, and ``raw`` (its bytes)."""

    __slots__ = ("segment_size", "key_name", "wrapped_key", "salt", "nonce_prefix", "raw")

    def __init__(self, segment_size, key_name, wrapped_key, salt, nonce_prefix, raw):
        self.segment_size = segment_size
        self.key_name = key_name
        self.wrapped_key = wrapped_key
        self.salt = salt
        self.nonce_prefix = nonce_prefix
        self.raw = raw

    @classmethod
    def build(cls, segment_size, key_name, wrapped_key, salt, nonce_prefix):
        """A header for a writer."""
        if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
            raise ValueError("the segment size is 1024..=1048576 bytes")
        _check_len(salt, SALT_LEN, "a salt")
        _check_len(nonce_prefix, PREFIX_LEN, "a nonce prefix")
        raw = (
            bytes([STREAM_FORMAT, ALGORITHM])
            + struct.pack(">I", segment_size)
            + _key_fields(key_name, wrapped_key)
            + bytes(salt)
            + bytes(nonce_prefix)
        )
        return cls(segment_size, key_name, bytes(wrapped_key), bytes(salt), bytes(nonce_prefix), raw)

    @classmethod
    def read(cls, source):
        """Reads and bounds a header from the start of file-like ``source``."""
        fields = _Fields(source)
        fields.format_and_algorithm(STREAM_FORMAT)
        s = fields.u32("segment size")
        if not MIN_SEGMENT_SIZE <= s <= MAX_SEGMENT_SIZE:
            raise MalformedError("malformed: segment size out of range 1024..=1048576")
        key_name = fields.key_name()
        wrapped = fields.wrapped_key()
        salt = fields.take(SALT_LEN, "salt")
        prefix = fields.take(PREFIX_LEN, "nonce prefix")
        return cls(s, key_name, wrapped, salt, prefix, bytes(fields.raw))

    def __repr__(self):
        return f"StreamHeader(segment_size={self.segment_size}, key_name={self.key_name!r})"


class SegmentCipher:
    """Seals and opens the segments of one stream: the segment key, the
    header digest D, and the nonce ``prefix || u32(i) || last``."""

    __slots__ = ("_aead", "_digest", "_prefix")

    def __init__(self, data_key, header, aad):
        self._aead = AESGCM(derive_key(data_key, header.salt, STREAM_INFO))
        self._digest = hashlib.sha256(STREAM_DIGEST_PREFIX + header.raw + bytes(aad)).digest()
        self._prefix = header.nonce_prefix

    def _nonce(self, index, last):
        if not 0 <= index < MAX_SEGMENTS:
            raise MalformedError("malformed: more than 2^32 segments")
        return self._prefix + struct.pack(">I", index) + (b"\x01" if last else b"\x00")

    def seal(self, index, last, plaintext):
        return self._aead.encrypt(self._nonce(index, last), bytes(plaintext), self._digest)

    def open(self, index, last, segment):
        nonce = self._nonce(index, last)
        try:
            return self._aead.decrypt(nonce, bytes(segment), self._digest)
        except InvalidTag:
            raise AuthenticationError() from None
