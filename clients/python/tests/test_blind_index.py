"""Blind indexes from Python (``Client.blind_indexes``, docs/blind-indexes.md)
against the real daemon: truncated HMACs through MacBatch in chunks, equal to
the Mac call's prefix, with the key version; a rotation changes them.

Run by tests/python_package.rs (KMSD_TEST_DAEMON=1); skipped elsewhere.
"""
import os
import unittest

import kmsd
from kmsd import Client
from kmsd.v1 import kmsd_pb2

ENABLED = os.environ.get("KMSD_TEST_DAEMON") == "1"


@unittest.skipUnless(ENABLED, "needs the daemon (tests/python_package.rs)")
class BlindIndexes(unittest.TestCase):
    def test_bulk_indexes_are_truncated_macs_with_their_version(self):
        with Client.from_env() as client:
            name = "py.bidx"
            client.call("Keys", "CreateKey", kmsd_pb2.CreateKeyRequest(name=name, algorithm=kmsd_pb2.HMAC_SHA256))
            pans = [b"4%015d" % (i * 7919) for i in range(2100)]  # three MacBatch calls
            out = client.blind_indexes(name, pans, 8)
            self.assertEqual(len(out), 2100)
            self.assertTrue(all(v == 1 and len(i) == 8 for v, i in out))
            full = client.call("Crypto", "Mac", kmsd_pb2.MacRequest(key=name, data=pans[2050])).mac
            self.assertEqual(out[2050][1], full[:8])
            self.assertEqual(client.blind_indexes(name, [pans[3]], 8), [out[3]])
            client.call("Keys", "RotateKey", kmsd_pb2.RotateKeyRequest(name=name))
            (v2, i2), = client.blind_indexes(name, [pans[3]], 8)
            self.assertEqual(v2, 2)
            self.assertNotEqual(i2, out[3][1])
            with self.assertRaises(ValueError):
                client.blind_indexes(name, pans[:1], 1)
            with self.assertRaises(kmsd.NotFound):
                client.blind_indexes("py.no-such-key", pans[:1], 8)


if __name__ == "__main__":
    unittest.main()
