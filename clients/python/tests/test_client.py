"""The client's settings (the KMSD_* variables as kmsctl reads them), the
retry policy's bounds and the typed errors; calls through a real daemon
are in test_daemon.py."""
import os
import random
import tempfile
import unittest

import grpc

import kmsd
from kmsd.client import RetryPolicy, Settings, _check_request_id, server_name_for
from kmsd.errors import SettingsError


class Env(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        d = self.tmp.name
        self.files = {}
        for var, name in (("KMSD_CA", "ca.pem"), ("KMSD_CERT", "client.pem"), ("KMSD_KEY", "client.key")):
            path = os.path.join(d, name)
            with open(path, "w") as f:
                f.write("-----BEGIN X-----\nAAAA\n-----END X-----\n")
            self.files[var] = path

    def tearDown(self):
        self.tmp.cleanup()

    def env(self, **extra):
        e = dict(self.files, KMSD_ADDR="unix:/run/kmsd/kmsd.sock")
        e.update(extra)
        return e

    def test_from_env(self):
        s = Settings.from_env(self.env(KMSD_ADDR="unix:/run/kmsd/kmsd.sock, 10.0.0.2:7443 ,[::1]:7443"))
        self.assertEqual(s.endpoints, ("unix:/run/kmsd/kmsd.sock", "10.0.0.2:7443", "[::1]:7443"))
        self.assertIsNone(s.server_name)
        self.assertEqual(Settings.from_env(self.env(KMSD_SERVER_NAME="kmsd.internal")).server_name, "kmsd.internal")

    def test_missing_variables_are_named(self):
        for var in ("KMSD_ADDR", "KMSD_CA", "KMSD_CERT", "KMSD_KEY"):
            e = self.env()
            del e[var]
            with self.assertRaisesRegex(SettingsError, var):
                Settings.from_env(e)

    def test_unreadable_files_are_named_with_their_variable(self):
        with self.assertRaisesRegex(SettingsError, r"client key /nonexistent/k\.pem \(from KMSD_KEY\)"):
            Settings.from_env(self.env(KMSD_KEY="/nonexistent/k.pem"))

    def test_bad_addresses(self):
        for addr in ("unix:", "localhost", "host:port", "host:0", "host:70000", ":7443"):
            with self.assertRaises(SettingsError, msg=addr):
                Settings.from_env(self.env(KMSD_ADDR=addr))

    def test_server_name_as_kmsctl(self):
        self.assertEqual(server_name_for("unix:/run/kmsd/kmsd.sock"), "localhost")
        self.assertEqual(server_name_for("kmsd-1.internal:7443"), "kmsd-1.internal")
        self.assertEqual(server_name_for("127.0.0.1:7443"), "127.0.0.1")
        self.assertEqual(server_name_for("[::1]:7443"), "::1")

    def test_repr_shows_no_key_material(self):
        s = Settings.from_env(self.env())
        self.assertNotIn("AAAA", repr(s))
        self.assertIn("client.key", repr(s))


class Policy(unittest.TestCase):
    def test_backoff_is_full_jitter_under_the_cap(self):
        p = RetryPolicy(initial_backoff=0.1, max_backoff=1.0)
        rng = random.Random(7)
        for round_ in range(10):
            cap = min(1.0, 0.1 * 2**round_)
            draws = [p.backoff(round_, rng) for _ in range(200)]
            self.assertTrue(all(0 <= d <= cap for d in draws))
            self.assertGreater(max(draws), cap * 0.8)
            self.assertLess(min(draws), cap * 0.2)

    def test_request_ids_follow_the_daemons_rule(self):
        self.assertEqual(_check_request_id("order-42:retry.1_a"), "order-42:retry.1_a")
        for bad in ("", "a" * 65, "has space", "é"):
            with self.assertRaises(ValueError):
                _check_request_id(bad)


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details, trailing=()):
        self._code, self._details, self._trailing = code, details, trailing

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailing


class Errors(unittest.TestCase):
    def test_codes_map_to_classes(self):
        e = kmsd.errors.from_grpc(FakeRpcError(grpc.StatusCode.NOT_FOUND, 'no key "x"'), request_id="r1")
        self.assertIsInstance(e, kmsd.NotFound)
        self.assertIsInstance(e, kmsd.RpcError)
        self.assertEqual(str(e), 'NOT_FOUND: no key "x" (request id r1)')
        self.assertEqual(e.code_name, "NOT_FOUND")
        for code in grpc.StatusCode:
            if code is grpc.StatusCode.OK:
                continue
            err = kmsd.errors.from_grpc(FakeRpcError(code, "m"))
            self.assertEqual(err.code, code)
            self.assertIsNot(type(err), kmsd.RpcError, code)

    def test_second_factor_and_approval(self):
        e = kmsd.errors.from_grpc(
            FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "needs a code", (("x-kmsd-second-factor", "required"),))
        )
        self.assertTrue(e.needs_second_factor)
        e = kmsd.errors.from_grpc(
            FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "waiting", (("x-kmsd-approval-id", "ap-1"),))
        )
        self.assertEqual(e.approval_id, "ap-1")


if __name__ == "__main__":
    unittest.main()
