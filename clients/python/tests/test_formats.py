"""The envelope and stream formats against tests/data/format-vectors.json
(every positive and negative case, docs/formats.md section 5), and the
stream's sequence protections on a stream of 256 segments."""
import io
import json
import os
import unittest

from kmsd import StreamReader, StreamWriter, formats
from kmsd.errors import AuthenticationError, FormatError, MalformedError, TruncatedError

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.environ.get("KMSD_FORMAT_VECTORS") or os.path.join(HERE, "..", "..", "..", "tests", "data", "format-vectors.json")


def load_vectors():
    with open(VECTORS, encoding="utf-8") as f:
        return json.load(f)


def h(s):
    return bytes.fromhex(s)


def open_stream(data_key, blob, aad):
    src = io.BytesIO(blob)
    header = formats.StreamHeader.read(src)
    reader = StreamReader(src, formats.SegmentCipher(data_key, header, aad), header)
    out = reader.read()
    assert reader.complete
    return out


def seal_stream(data_key, key_name, wrapped, plaintext, aad, segment_size, salt, prefix, chunk=777):
    header = formats.StreamHeader.build(segment_size, key_name, wrapped, salt, prefix)
    sink = io.BytesIO()
    with StreamWriter(sink, formats.SegmentCipher(data_key, header, aad), header) as w:
        for i in range(0, len(plaintext), chunk):
            w.write(plaintext[i : i + chunk])
    return sink.getvalue()


class EnvelopeVectors(unittest.TestCase):
    def test_every_envelope_vector(self):
        cases = load_vectors()["envelope"]
        self.assertGreater(len(cases), 20)
        kinds = set()
        for case in cases:
            with self.subTest(case["name"]):
                dk, aad, blob = h(case["data_key"]), h(case["aad"]), h(case["blob"])
                if "plaintext" in case:
                    sealed = formats.seal_envelope(
                        dk,
                        case["key_name"],
                        h(case["wrapped_data_key"]),
                        h(case["plaintext"]),
                        aad,
                        message_id=h(case["message_id"]),
                        nonce=h(case["nonce"]),
                    )
                    self.assertEqual(sealed.hex(), case["blob"])
                    self.assertEqual(formats.open_envelope(dk, blob, aad), h(case["plaintext"]))
                    header = formats.parse_envelope(blob)
                    self.assertEqual(header.key_name, case["key_name"])
                    self.assertEqual(header.wrapped_key, h(case["wrapped_data_key"]))
                else:
                    kinds.add(case["error"])
                    with self.assertRaises(FormatError) as cm:
                        formats.open_envelope(dk, blob, aad)
                    self.assertEqual(cm.exception.kind, case["error"], str(cm.exception))
        self.assertEqual(kinds, {"malformed", "truncated", "authentication"})


class StreamVectors(unittest.TestCase):
    def test_every_stream_vector(self):
        cases = load_vectors()["stream"]
        self.assertGreater(len(cases), 30)
        kinds = set()
        for case in cases:
            with self.subTest(case["name"]):
                dk, aad, blob = h(case["data_key"]), h(case["aad"]), h(case["blob"])
                if "plaintext" in case:
                    pt = h(case["plaintext"])
                    for chunk in (1, 1000, 1 << 20):
                        sealed = seal_stream(
                            dk,
                            case["key_name"],
                            h(case["wrapped_data_key"]),
                            pt,
                            aad,
                            case["segment_size"],
                            h(case["salt"]),
                            h(case["nonce_prefix"]),
                            chunk=chunk,
                        )
                        self.assertEqual(sealed.hex(), case["blob"], f"written {chunk} bytes at a time")
                    self.assertEqual(open_stream(dk, blob, aad), pt)
                else:
                    kinds.add(case["error"])
                    with self.assertRaises(FormatError) as cm:
                        open_stream(dk, blob, aad)
                    self.assertEqual(cm.exception.kind, case["error"], str(cm.exception))
        self.assertEqual(kinds, {"malformed", "truncated", "authentication"})


class StreamSequence(unittest.TestCase):
    """Every truncation at or near a segment boundary, every drop, swap of
    neighbours, repetition and append in a stream of 256 segments."""

    S = 1024
    N = 256

    @classmethod
    def setUpClass(cls):
        cls.dk = os.urandom(32)
        cls.aad = b"statement-2026-11"
        cls.pt = os.urandom(cls.S * cls.N - 100)
        cls.blob = seal_stream(cls.dk, "k.stream", b"\x01" * 82, cls.pt, cls.aad, cls.S, os.urandom(32), os.urandom(7))
        cls.hlen = 48 + len("k.stream") + 82
        wire = cls.S + 16
        body = cls.blob[cls.hlen :]
        cls.segments = [body[i : i + wire] for i in range(0, len(body), wire)]
        assert len(cls.segments) == cls.N

    def refused(self, segments, what):
        blob = self.blob[: self.hlen] + b"".join(segments)
        with self.assertRaises(FormatError, msg=what):
            open_stream(self.dk, blob, self.aad)

    def test_round_trip(self):
        self.assertEqual(open_stream(self.dk, self.blob, self.aad), self.pt)

    def test_truncations_are_refused(self):
        wire = self.S + 16
        for k in range(self.N):
            end = self.hlen + k * wire
            for cut in (end, end + 1, end + 15, end + 16, end + 17):
                if cut < len(self.blob):
                    with self.assertRaises(FormatError, msg=f"cut at {cut}"):
                        open_stream(self.dk, self.blob[:cut], self.aad)
        with self.assertRaises(FormatError):
            open_stream(self.dk, self.blob[:-1], self.aad)

    def test_drops_swaps_repeats_and_appends_are_refused(self):
        segs = self.segments
        for i in range(self.N):
            self.refused(segs[:i] + segs[i + 1 :], f"segment {i} dropped")
            self.refused(segs[: i + 1] + segs[i:], f"segment {i} repeated")
        for i in range(self.N - 1):
            self.refused(segs[:i] + [segs[i + 1], segs[i]] + segs[i + 2 :], f"segments {i}, {i + 1} swapped")
        self.refused(segs + [segs[0]], "first segment appended")
        self.refused(segs + [segs[-1]], "last segment appended")

    def test_plaintext_only_after_its_tag(self):
        # A changed byte in segment 3: segments 0..2 are returned, then the
        # read of segment 3 fails; nothing of segment 3 is released.
        blob = bytearray(self.blob)
        blob[self.hlen + 3 * (self.S + 16) + 5] ^= 1
        src = io.BytesIO(bytes(blob))
        header = formats.StreamHeader.read(src)
        reader = StreamReader(src, formats.SegmentCipher(self.dk, header, self.aad), header)
        got = bytearray()
        with self.assertRaises(AuthenticationError):
            while True:
                chunk = reader.read(100)
                if not chunk:
                    break
                got += chunk
        self.assertEqual(bytes(got), self.pt[: 3 * self.S])
        self.assertFalse(reader.complete)


class ConstantMemory(unittest.TestCase):
    def test_32_mib_stream_in_constant_memory(self):
        import tempfile
        import tracemalloc

        dk, size, chunk = os.urandom(32), 32 << 20, os.urandom(100_000)
        header = formats.StreamHeader.build(65536, "k.big", b"w" * 82, os.urandom(32), os.urandom(7))
        with tempfile.TemporaryFile() as f:
            tracemalloc.start()
            try:
                w = StreamWriter(f, formats.SegmentCipher(dk, header, b""), header)
                left = size
                while left:
                    n = min(left, len(chunk))
                    w.write(chunk[:n])
                    left -= n
                w.close()
                _, write_peak = tracemalloc.get_traced_memory()
                tracemalloc.reset_peak()
                f.seek(0)
                h = formats.StreamHeader.read(f)
                r = StreamReader(f, formats.SegmentCipher(dk, h, b""), h)
                total = 0
                while True:
                    got = r.read(1 << 20)
                    if not got:
                        break
                    total += len(got)
                _, read_peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        self.assertEqual(total, size)
        self.assertTrue(r.complete)
        # A few segments (64 KiB each) and the caller's 1 MiB read buffer, never the 32 MiB.
        self.assertLess(write_peak, 1 << 20, write_peak)
        self.assertLess(read_peak, 3 << 20, read_peak)


class Writers(unittest.TestCase):
    def test_aborted_or_abandoned_writer_leaves_a_refused_stream(self):
        dk = os.urandom(32)
        header = formats.StreamHeader.build(1024, "k", b"w", os.urandom(32), os.urandom(7))
        sink = io.BytesIO()
        with self.assertRaises(RuntimeError):
            with StreamWriter(sink, formats.SegmentCipher(dk, header, b""), header) as w:
                w.write(b"x" * 5000)
                raise RuntimeError("the exporter failed half-way")
        with self.assertRaises(AuthenticationError):
            open_stream(dk, sink.getvalue(), b"")
        sink2 = io.BytesIO()
        w = StreamWriter(sink2, formats.SegmentCipher(dk, header, b""), header)
        w.write(b"y" * 3000)
        del w
        with self.assertRaises(FormatError):
            open_stream(dk, sink2.getvalue(), b"")

    def test_writers_refuse_what_the_format_cannot_carry(self):
        for bad in ("", "a" * 129, "a/b", "é"):
            with self.assertRaises(ValueError):
                formats.envelope_header(bad, b"w", bytes(32), bytes(12))
        with self.assertRaises(ValueError):
            formats.envelope_header("k", b"", bytes(32), bytes(12))
        with self.assertRaises(ValueError):
            formats.envelope_header("k", bytes(1025), bytes(32), bytes(12))
        for s in (1023, 1048577):
            with self.assertRaises(ValueError):
                formats.StreamHeader.build(s, "k", b"w", bytes(32), bytes(7))

    def test_error_kinds_are_distinct_classes(self):
        self.assertTrue(issubclass(MalformedError, FormatError))
        self.assertTrue(issubclass(TruncatedError, FormatError))
        self.assertEqual(str(AuthenticationError()), "authentication failed")


if __name__ == "__main__":
    unittest.main()
