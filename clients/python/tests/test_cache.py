"""The envelope's caches: the limits (age, messages, bytes, entries) are
honoured, expired entries are not used, eviction wipes the data key, the
unwrap cache is bounded, and ``expected_keys`` refuses before any call.

The data keys come from :class:`LocalKeys`, a stand-in for the daemon's
``GenerateDataKey``/``Decrypt`` that counts calls (the same limits are
checked against a real daemon's metrics in test_daemon.py)."""
import os
import unittest

import kmsd
from kmsd import CacheLimits, Envelope, UnwrapLimits
from kmsd.errors import AuthenticationError, InvalidArgument, UnexpectedKeyError
from kmsd.v1 import kmsd_pb2


class LocalKeys:
    """Generates data keys and "wraps" them as an opaque random handle."""

    def __init__(self):
        self.keys = {}
        self.generated = 0
        self.decrypted = 0

    def generate_data_key(self, key, **opts):
        self.generated += 1
        dk = os.urandom(32)
        wrapped = b"\x01" + os.urandom(81)
        self.keys[(key, wrapped)] = dk
        return kmsd_pb2.GenerateDataKeyResponse(plaintext=dk, ciphertext=wrapped, key_version=1)

    def decrypt(self, key, ciphertext, associated_data=b"", **opts):
        self.decrypted += 1
        assert associated_data == b"kmsd data key v1"
        try:
            return self.keys[(key, bytes(ciphertext))]
        except KeyError:
            raise InvalidArgument("ciphertext does not open under this key") from None


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class SealCache(unittest.TestCase):
    def test_max_messages_100_makes_1000_seals_cost_10_calls(self):
        kms = LocalKeys()
        env = Envelope(kms, cache=CacheLimits(max_messages=100))
        blobs = [env.seal("app.k", b"m%d" % i, b"row-%d" % i) for i in range(1000)]
        self.assertEqual(kms.generated, 10)
        self.assertEqual(env.stats["seal_cache_hits"], 990)
        self.assertEqual(len({kmsd.formats.parse_envelope(b).wrapped_key for b in blobs}), 10)
        opener = Envelope(kms)
        for i, b in enumerate(blobs):
            self.assertEqual(opener.open(b, b"row-%d" % i), b"m%d" % i)
        self.assertEqual(kms.decrypted, 10, "unwrapped once per data key")

    def test_without_a_cache_every_seal_is_one_call(self):
        kms = LocalKeys()
        env = Envelope(kms)
        for i in range(20):
            env.seal("app.k", b"x")
        self.assertEqual(kms.generated, 20)

    def test_max_bytes(self):
        kms = LocalKeys()
        env = Envelope(kms, cache=CacheLimits(max_bytes=1000))
        for _ in range(10):
            env.seal("app.k", bytes(300))  # 3 fit under one key (900), the 4th does not
        self.assertEqual(kms.generated, 4)
        # A message larger than the limit gets a key of its own and leaves
        # the cached one alone.
        kms2 = LocalKeys()
        env2 = Envelope(kms2, cache=CacheLimits(max_bytes=1000))
        env2.seal("app.k", b"a")
        env2.seal("app.k", bytes(5000))
        env2.seal("app.k", b"b")
        self.assertEqual(kms2.generated, 2)

    def test_expired_entries_are_not_used(self):
        kms = LocalKeys()
        clock = Clock()
        env = Envelope(kms, cache=CacheLimits(max_age=60), clock=clock)
        first = env.seal("app.k", b"a")
        clock.now += 59.9
        second = env.seal("app.k", b"b")
        self.assertEqual(kms.generated, 1)
        clock.now += 0.1
        third = env.seal("app.k", b"c")
        self.assertEqual(kms.generated, 2)
        wk = kmsd.formats.parse_envelope
        self.assertEqual(wk(first).wrapped_key, wk(second).wrapped_key)
        self.assertNotEqual(wk(second).wrapped_key, wk(third).wrapped_key)

    def test_max_entries_evicts_the_least_recently_used(self):
        kms = LocalKeys()
        env = Envelope(kms, cache=CacheLimits(max_entries=2))
        env.seal("a", b"1")
        env.seal("b", b"1")
        env.seal("a", b"2")  # a is now the most recently used
        env.seal("c", b"1")  # evicts b
        self.assertEqual(kms.generated, 3)
        env.seal("a", b"3")
        self.assertEqual(kms.generated, 3)
        env.seal("b", b"2")
        self.assertEqual(kms.generated, 4)
        self.assertEqual(len(env.data_key_cache), 2)

    def test_eviction_wipes_the_data_key(self):
        kms = LocalKeys()
        clock = Clock()
        env = Envelope(kms, cache=CacheLimits(max_age=10, max_messages=3), clock=clock)
        env.seal("a", b"1")
        held = env.data_key_cache._entries["a"].key  # the one copy the cache owns
        self.assertNotEqual(bytes(held), bytes(32))
        env.seal("a", b"2")
        env.seal("a", b"3")  # the third message uses the key up
        self.assertNotIn("a", env.data_key_cache._entries)
        self.assertEqual(bytes(held), bytes(32))
        # expiry and clear() wipe too
        env.seal("b", b"1")
        held_b = env.data_key_cache._entries["b"].key
        clock.now += 11
        env.seal("b", b"2")
        self.assertEqual(bytes(held_b), bytes(32))
        held_b2 = env.data_key_cache._entries["b"].key
        env.clear()
        self.assertEqual(bytes(held_b2), bytes(32))
        self.assertEqual(len(env.data_key_cache), 0)

    def test_limits_are_validated(self):
        for bad in (dict(max_age=0), dict(max_messages=0), dict(max_entries=0), dict(max_bytes=-1)):
            with self.assertRaises(ValueError):
                CacheLimits(**bad)


class OpenCache(unittest.TestCase):
    def test_unwrap_cache_is_bounded_in_entries_and_age(self):
        kms = LocalKeys()
        sealer = Envelope(kms)
        blobs = [sealer.seal("k", b"%d" % i) for i in range(5)]  # 5 data keys
        clock = Clock()
        env = Envelope(kms, unwrap_cache=UnwrapLimits(max_entries=2, max_age=30), clock=clock)
        for b in blobs:
            env.open(b)
        self.assertEqual(kms.decrypted, 5)
        self.assertEqual(len(env.unwrap_cache), 2)
        env.open(blobs[4])
        self.assertEqual(kms.decrypted, 5, "the most recent is cached")
        env.open(blobs[0])
        self.assertEqual(kms.decrypted, 6, "the oldest was evicted")
        held = env.unwrap_cache._entries[("k", kmsd.formats.parse_envelope(blobs[0]).wrapped_key)].key
        clock.now += 30
        env.open(blobs[0])
        self.assertEqual(kms.decrypted, 7, "expired entries are not used")
        self.assertEqual(bytes(held), bytes(32), "the expired key was wiped")

    def test_no_unwrap_cache(self):
        kms = LocalKeys()
        blob = Envelope(kms).seal("k", b"x")
        env = Envelope(kms, unwrap_cache=False)
        env.open(blob)
        env.open(blob)
        self.assertEqual(kms.decrypted, 2)

    def test_expected_keys_refuse_before_any_call(self):
        kms = LocalKeys()
        blob = Envelope(kms).seal("payments.pan", b"4111")
        env = Envelope(kms)
        with self.assertRaises(UnexpectedKeyError):
            env.open(blob, expected_keys={"payments.iban"})
        with self.assertRaises(UnexpectedKeyError):
            env.open(blob, expected_keys="payments.iban")
        self.assertEqual(kms.decrypted, 0)
        self.assertEqual(env.open(blob, expected_keys=["payments.pan"]), b"4111")

    def test_a_refused_wrapped_key_is_an_authentication_failure(self):
        kms = LocalKeys()
        blob = bytearray(Envelope(kms).seal("k", b"x"))
        blob[2 + 1 + 1 + 2 + 10] ^= 1  # a byte of the wrapped key
        with self.assertRaises(AuthenticationError):
            Envelope(kms).open(bytes(blob))

    def test_streams_through_the_envelope(self):
        import io

        kms = LocalKeys()
        env = Envelope(kms)
        data = os.urandom(200_000)
        sink = io.BytesIO()
        with env.stream_writer(sink, "exports", aad=b"file-7", segment_size=4096) as w:
            w.write(data)
        self.assertEqual(kms.generated, 1)
        reader = env.stream_reader(io.BytesIO(sink.getvalue()), aad=b"file-7", expected_keys={"exports"})
        self.assertEqual(reader.read(), data)
        with self.assertRaises(UnexpectedKeyError):
            env.stream_reader(io.BytesIO(sink.getvalue()), aad=b"file-7", expected_keys={"other"})


if __name__ == "__main__":
    unittest.main()
