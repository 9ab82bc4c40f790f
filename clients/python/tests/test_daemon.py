"""The client through a real kmsd over real mTLS (Unix socket and TCP):
calls and typed errors, request ids in the audit trail, deadlines,
failover and retries, the envelope's cache limits counted in the daemon's
metrics, and the formats across languages (Python seals, Rust opens; Rust
seals, Python opens; messages and streams).

Run by tests/python_package.rs, which starts the daemon and sets
KMSD_TEST_DAEMON=1, KMSD_ADDR (the Unix socket), KMSD_TEST_TCP, KMSD_CA,
KMSD_CERT, KMSD_KEY, KMSD_TEST_DIR (the daemon's directory: its server
certificate, audit log and metrics socket) and KMSCTL (the Rust CLI).
Skipped elsewhere.
"""
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import unittest
from concurrent import futures

import grpc

import kmsd
from kmsd import CacheLimits, Client, RetryPolicy, Settings
from kmsd.v1 import kmsd_pb2, kmsd_pb2_grpc

ENABLED = os.environ.get("KMSD_TEST_DAEMON") == "1"
DIR = os.environ.get("KMSD_TEST_DIR", "")


def settings(*endpoints):
    return Settings(list(endpoints), os.environ["KMSD_CA"], os.environ["KMSD_CERT"], os.environ["KMSD_KEY"])


def ensure_key(client, name):
    try:
        client.create_key(name)
    except kmsd.AlreadyExists:
        pass


def scrape(method, code="OK"):
    """kmsd_requests_total{method, code} from the daemon's metrics
    (``datakey`` counts GenerateDataKey)."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.path.join(DIR, "metrics.sock"))
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: kmsd\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    needle = f'kmsd_requests_total{{method="{method}",code="{code}"}} '
    for line in data.decode().splitlines():
        if line.startswith(needle):
            return int(line[len(needle) :])
    return 0


def kmsctl(*args, stdin=None):
    out = subprocess.run([os.environ["KMSCTL"], *args], input=stdin, capture_output=True)
    if out.returncode != 0:
        raise AssertionError(f"kmsctl {' '.join(args)} failed: {out.stderr.decode()}")
    return out.stdout


@unittest.skipUnless(ENABLED, "needs a daemon: run by tests/python_package.rs")
class Calls(unittest.TestCase):
    def test_unix_socket_and_tcp(self):
        for addr in (os.environ["KMSD_ADDR"], os.environ["KMSD_TEST_TCP"]):
            with self.subTest(addr), Client(settings(addr)) as c:
                ensure_key(c, "py.calls")
                ct = c.encrypt("py.calls", b"GB82 WEST 1234 5698 7654 32", b"customer-17")
                self.assertEqual(c.decrypt("py.calls", ct, b"customer-17"), b"GB82 WEST 1234 5698 7654 32")
                with self.assertRaises(kmsd.InvalidArgument) as cm:
                    c.decrypt("py.calls", ct, b"other")
                self.assertEqual(cm.exception.endpoint, addr)
                with self.assertRaises(kmsd.NotFound):
                    c.encrypt("py.calls-missing", b"x")
                with self.assertRaises(kmsd.AlreadyExists):
                    c.create_key("py.calls")
                # the whole API through the service proxies
                batch = c.crypto.EncryptBatch(
                    kmsd_pb2.EncryptBatchRequest(items=[kmsd_pb2.EncryptRequest(key="py.calls", plaintext=b"a")])
                )
                self.assertEqual(batch.items[0].WhichOneof("result"), "ok")
                lines = [f"line {i} email=user{i}@example.com" for i in range(20)]
                out = [r.text for r in c.mask.RedactStream(kmsd_pb2.RedactRequest(text=t) for t in lines)]
                self.assertEqual(out, [f"line {i} email=u***@example.com" for i in range(20)])
                self.assertEqual(c.keys.GetKey(kmsd_pb2.GetKeyRequest(name="py.calls")).name, "py.calls")

    def test_request_id_reaches_the_audit_trail(self):
        with Client(settings(os.environ["KMSD_ADDR"])) as c:
            ensure_key(c, "py.audit")
            c.encrypt("py.audit", b"x", request_id="py-request-id-1")
            with self.assertRaises(kmsd.NotFound) as cm:
                c.encrypt("py.audit-missing", b"x", request_id="py-request-id-2")
            self.assertEqual(cm.exception.request_id, "py-request-id-2")
        deadline = time.monotonic() + 10
        while True:
            with open(os.path.join(DIR, "audit.log"), encoding="utf-8") as f:
                ids = {json.loads(line).get("request_id") for line in f if line.endswith("\n")}
            if {"py-request-id-1", "py-request-id-2"} <= ids:
                break
            self.assertLess(time.monotonic(), deadline, "request ids not in the audit log")
            time.sleep(0.05)

    def test_deadline(self):
        # Deterministic on any machine: a 10-microsecond deadline is not
        # (gRPC's timers tick in milliseconds, and an idle machine answers
        # 100 KB over a Unix socket within one tick). So: a deadline already
        # spent is refused before any call, and a daemon that never answers
        # (a socket that accepts nothing) ends at the deadline, typed.
        with Client(settings(os.environ["KMSD_ADDR"])) as c:
            ensure_key(c, "py.deadline")
            with self.assertRaises(kmsd.DeadlineExceeded):
                c.encrypt("py.deadline", b"x", timeout=0)
            c.encrypt("py.deadline", b"x", timeout=10)
        path = os.path.join(tempfile.mkdtemp(), "silent.sock")
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            silent.bind(path)
            silent.listen(16)
            with Client(settings("unix:" + path)) as c:
                started = time.monotonic()
                with self.assertRaises(kmsd.DeadlineExceeded):
                    c.encrypt("py.deadline", b"x", timeout=0.3)
                self.assertLess(time.monotonic() - started, 5, "the deadline did not end the call")
        finally:
            silent.close()

    def test_failover_to_the_endpoint_that_answers(self):
        dead = "unix:" + os.path.join(tempfile.mkdtemp(), "gone.sock")
        live = os.environ["KMSD_ADDR"]
        with Client(settings(live)) as c:
            ensure_key(c, "py.failover")
        with Client(settings(dead, live)) as c:
            for i in range(50):
                ct = c.encrypt("py.failover", b"%d" % i)
                self.assertEqual(c.decrypt("py.failover", ct), b"%d" % i)
            self.assertEqual(c.current_endpoint, live)
        # A call that is not safe to repeat still fails over when it never
        # reached a daemon (no connection to the first endpoint).
        with Client(settings(dead, live)) as c:
            with self.assertRaises(kmsd.AlreadyExists):
                c.create_key("py.failover")
            self.assertEqual(c.current_endpoint, live)

    def test_retries_back_off_with_jitter_and_stop(self):
        tmp = tempfile.mkdtemp()
        dead = ["unix:" + os.path.join(tmp, f"gone-{i}.sock") for i in range(2)]
        sleeps = []
        policy = RetryPolicy(max_attempts=7, initial_backoff=0.01, max_backoff=0.04)
        with Client(settings(*dead), retry=policy, sleep=sleeps.append) as c:
            with self.assertRaises(kmsd.Unavailable) as cm:
                c.encrypt("py.none", b"x", request_id="py-retry-1")
            self.assertEqual(cm.exception.request_id, "py-retry-1")
        # 7 attempts over 2 endpoints: a pause after each full round (3).
        self.assertEqual(len(sleeps), 3)
        for i, s in enumerate(sleeps):
            self.assertTrue(0 <= s <= min(0.04, 0.01 * 2**i), sleeps)


class Recorder(kmsd_pb2_grpc.CryptoServicer):
    """A gRPC server (real TLS, the daemon's certificate) that answers
    UNAVAILABLE ``fail`` times and records the metadata of every call."""

    def __init__(self, fail):
        self.fail = fail
        self.calls = []
        self.lock = threading.Lock()

    def Encrypt(self, request, context):
        with self.lock:
            self.calls.append(dict(context.invocation_metadata()))
            if len(self.calls) <= self.fail:
                context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")
        return kmsd_pb2.EncryptResponse(ciphertext=b"recorded", key_version=1)

    GenerateDataKeyWithoutPlaintext = Encrypt


@unittest.skipUnless(ENABLED, "needs the test PKI: run by tests/python_package.rs")
class Metadata(unittest.TestCase):
    def serve(self, fail):
        rec = Recorder(fail)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        kmsd_pb2_grpc.add_CryptoServicer_to_server(rec, server)

        def read(name):
            with open(os.path.join(DIR, name), "rb") as f:
                return f.read()

        creds = grpc.ssl_server_credentials(
            [(read("server.key"), read("server.pem"))], root_certificates=read("ca.pem"), require_client_auth=True
        )
        path = os.path.join(tempfile.mkdtemp(), "rec.sock")
        server.add_secure_port("unix:" + path, creds)
        server.start()
        self.addCleanup(server.stop, None)
        return rec, "unix:" + path

    def test_otp_and_request_id_are_sent_and_kept_across_retries(self):
        rec, addr = self.serve(fail=2)
        with Client(settings(addr, addr), sleep=lambda s: None) as c:
            ct = c.encrypt("k", b"x", otp=" 123456 ", request_id="py-otp-1")
        self.assertEqual(ct, b"recorded")
        self.assertEqual(len(rec.calls), 3)
        for md in rec.calls:
            self.assertEqual(md.get("x-kmsd-otp"), "123456")
            self.assertEqual(md.get("x-request-id"), "py-otp-1")

    def test_generated_request_ids_are_unique_per_call(self):
        rec, addr = self.serve(fail=0)
        with Client(settings(addr)) as c:
            for _ in range(3):
                c.encrypt("k", b"x")
        ids = [md["x-request-id"] for md in rec.calls]
        self.assertEqual(len(set(ids)), 3)
        self.assertNotIn("x-kmsd-otp", rec.calls[0])

    def test_not_retried_unless_safe(self):
        # Answered UNAVAILABLE by a node: a call not safe to repeat is not
        # repeated, not even on the other node; the next call goes there.
        rec, addr = self.serve(fail=1)
        live = os.environ["KMSD_ADDR"]
        with Client(settings(addr, live), sleep=lambda s: None) as c:
            with self.assertRaises(kmsd.Unavailable):
                c.call("Crypto", "Encrypt", kmsd_pb2.EncryptRequest(key="k"), retry=False)
            self.assertEqual(c.current_endpoint, live)
        self.assertEqual(len(rec.calls), 1)

    def test_a_node_going_away_fails_over_to_the_daemon(self):
        rec, addr = self.serve(fail=10**9)  # answers UNAVAILABLE forever
        with Client(settings(os.environ["KMSD_ADDR"])) as c:
            ensure_key(c, "py.away")
        with Client(settings(addr, os.environ["KMSD_ADDR"])) as c:
            ct = c.encrypt("py.away", b"x")
            self.assertEqual(c.decrypt("py.away", ct), b"x")
            self.assertEqual(c.current_endpoint, os.environ["KMSD_ADDR"])


@unittest.skipUnless(ENABLED, "needs a daemon: run by tests/python_package.rs")
class Envelopes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = Client(settings(os.environ["KMSD_ADDR"]))
        for k in ("py.cache", "py.interop"):
            ensure_key(cls.client, k)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()

    def test_cache_limits_counted_by_the_daemon(self):
        gen0, dec0 = scrape("datakey"), scrape("decrypt")
        env = self.client.envelope(cache=CacheLimits(max_messages=100))
        blobs = [env.seal("py.cache", b"row %d" % i, b"%d" % i) for i in range(1000)]
        self.assertEqual(scrape("datakey") - gen0, 10)
        opener = self.client.envelope()
        for i, b in enumerate(blobs):
            self.assertEqual(opener.open(b, b"%d" % i, expected_keys={"py.cache"}), b"row %d" % i)
        self.assertEqual(scrape("decrypt") - dec0, 10)
        # without a cache: one call per message
        plain = self.client.envelope()
        for i in range(20):
            plain.seal("py.cache", b"x")
        self.assertEqual(scrape("datakey") - gen0, 30)

    def test_tampering_through_the_daemon(self):
        env = self.client.envelope()
        blob = env.seal("py.interop", b"4111 1111 1111 1111", b"row-1")
        for i in range(len(blob)):
            bad = bytearray(blob)
            bad[i] ^= 0x01
            with self.assertRaises((kmsd.FormatError, kmsd.NotFound), msg=f"byte {i}"):
                self.client.envelope(unwrap_cache=False).open(bytes(bad), b"row-1")
        with self.assertRaises(kmsd.AuthenticationError):
            env.open(blob, b"row-2")

    def test_python_stream_rust_decrypts_and_back(self):
        data = os.urandom(3 * 65536 + 12345)
        tmp = tempfile.mkdtemp()
        enc, dec = os.path.join(tmp, "py.kmsd"), os.path.join(tmp, "py.out")
        env = self.client.envelope()
        with open(enc, "wb") as f, env.stream_writer(f, "py.interop", aad=b"export-7") as w:
            for i in range(0, len(data), 10_000):
                w.write(data[i : i + 10_000])
        kmsctl("decrypt-file", enc, dec, "--aad", "export-7", "--expect-key", "py.interop")
        with open(dec, "rb") as f:
            self.assertEqual(f.read(), data)
        src, enc2 = os.path.join(tmp, "plain"), os.path.join(tmp, "rust.kmsd")
        with open(src, "wb") as f:
            f.write(data)
        kmsctl("encrypt-file", src, enc2, "--key", "py.interop", "--aad", "export-8")
        with open(enc2, "rb") as f:
            reader = env.stream_reader(f, aad=b"export-8", expected_keys={"py.interop"})
            self.assertEqual(reader.read(), data)
            self.assertTrue(reader.complete)
        # kmsctl refuses a Python stream with its last byte cut, and leaves no output.
        with open(enc, "rb") as f:
            blob = f.read()
        cut, out = os.path.join(tmp, "cut.kmsd"), os.path.join(tmp, "cut.out")
        with open(cut, "wb") as f:
            f.write(blob[:-1])
        r = subprocess.run([os.environ["KMSCTL"], "decrypt-file", cut, out, "--aad", "export-7"], capture_output=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
    unittest.main()
