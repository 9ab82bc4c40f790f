"""The client: settings from the environment ``kmsctl`` reads, mTLS
channels to one or more kmsd endpoints, and the call pipeline (deadline,
``x-request-id``, officer one-time code, retries with failover, typed
errors).

Settings (:meth:`Settings.from_env`), as ``kmsctl``:

- ``KMSD_ADDR``: ``unix:/path/to/kmsd.sock`` or ``host:port``; several
  endpoints separated by commas (tried in order, the client stays on the
  one that answers);
- ``KMSD_CA``, ``KMSD_CERT``, ``KMSD_KEY``: the CA that issued the
  daemon's certificate, the client certificate and its key (PEM files);
- ``KMSD_SERVER_NAME`` (optional): the name the daemon's certificate is
  checked against; by default ``localhost`` for a Unix socket and the host
  for TCP, as ``kmsctl``.

Retries: a call that never reached a daemon (no connection could be made
to the endpoint) goes to the next endpoint, whatever it is. The data-path
calls (``Crypto``, the unary ``Mask`` calls) and the read-only calls
(``GetKey``, ``ListKeys``, ``Status``, ``ListApprovals``, ``AuditHead``)
are safe to repeat, and are also retried when a daemon answered
``UNAVAILABLE`` or the connection broke during the call. Retries go at
once to the next endpoint, and after a full round of endpoints wait with
exponential backoff and full jitter, within the call's deadline. Other
calls answered ``UNAVAILABLE`` fail over for the *next* call only (an
administrative call may have been carried out).
"""
import os
import random
import threading
import time
import uuid

import grpc
from google.protobuf import descriptor_pb2

from . import errors
from .errors import OTP_HEADER, SettingsError
from .formats import DATA_KEY_AAD
from .v1 import kmsd_pb2, kmsd_pb2_grpc

__all__ = ["Settings", "RetryPolicy", "Client", "RETRYABLE"]

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_BYTES = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:")

#: Methods retried on UNAVAILABLE (safe to repeat: a repeated Encrypt or
#: GenerateDataKey only makes one more ciphertext).
RETRYABLE = frozenset(
    [
        "Crypto/Encrypt",
        "Crypto/Decrypt",
        "Crypto/Rewrap",
        "Crypto/EncryptBatch",
        "Crypto/DecryptBatch",
        "Crypto/RewrapBatch",
        "Crypto/GenerateDataKey",
        "Crypto/GenerateDataKeyWithoutPlaintext",
        "Mask/Mask",
        "Mask/Redact",
        "Mask/Tokenize",
        "Mask/Detokenize",
        "Keys/GetKey",
        "Keys/ListKeys",
        "Admin/Status",
        "Admin/ListApprovals",
        "Admin/AuditHead",
    ]
)

_STUBS = {
    "Crypto": kmsd_pb2_grpc.CryptoStub,
    "Keys": kmsd_pb2_grpc.KeysStub,
    "Admin": kmsd_pb2_grpc.AdminStub,
    "Mask": kmsd_pb2_grpc.MaskStub,
}


def _read_file(path, var, what):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SettingsError(f"{what} {path} (from {var}) cannot be read: {e.strerror}") from None
    if not data.strip():
        raise SettingsError(f"{what} {path} (from {var}) is empty")
    return data


def server_name_for(addr):
    """The name a daemon's certificate is checked against by default:
    ``localhost`` for a Unix socket, else the host (without IPv6 brackets)."""
    if addr.startswith("unix:"):
        return "localhost"
    host = addr.rsplit(":", 1)[0] if ":" in addr else addr
    return host.strip("[]")


def _check_addr(addr):
    if addr.startswith("unix:"):
        if not addr[len("unix:") :]:
            raise SettingsError(f"address {addr!r} names no socket path")
        return
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"address {addr!r} is neither unix:/path nor host:port")


class Settings:
    """Where and how to connect: ``endpoints`` (addresses), the PEM bytes
    of ``ca``, ``cert`` and ``key`` (read from the files at construction),
    and an optional ``server_name``."""

    __slots__ = ("endpoints", "ca", "cert", "_key", "server_name", "paths")

    def __init__(self, endpoints, ca, cert, key, server_name=None):
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        endpoints = tuple(e.strip() for e in endpoints if e.strip())
        if not endpoints:
            raise SettingsError("no kmsd address: set KMSD_ADDR (unix:/path or host:port, comma-separated)")
        for e in endpoints:
            _check_addr(e)
        self.endpoints = endpoints
        self.paths = {"KMSD_CA": ca, "KMSD_CERT": cert, "KMSD_KEY": key}
        self.ca = _read_file(ca, "KMSD_CA", "CA certificate")
        self.cert = _read_file(cert, "KMSD_CERT", "client certificate")
        self._key = _read_file(key, "KMSD_KEY", "client key")
        self.server_name = server_name or None

    @classmethod
    def from_env(cls, environ=None):
        """Settings from ``KMSD_ADDR``, ``KMSD_CA``, ``KMSD_CERT``,
        ``KMSD_KEY`` and optional ``KMSD_SERVER_NAME``."""
        env = os.environ if environ is None else environ

        def need(var):
            v = env.get(var, "").strip()
            if not v:
                raise SettingsError(f"{var} is not set (kmsctl reads the same variable)")
            return v

        return cls(
            need("KMSD_ADDR").split(","),
            need("KMSD_CA"),
            need("KMSD_CERT"),
            need("KMSD_KEY"),
            server_name=env.get("KMSD_SERVER_NAME", "").strip() or None,
        )

    def credentials(self):
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self._key, certificate_chain=self.cert)

    def __repr__(self):
        # Paths only; never key bytes.
        return f"Settings(endpoints={self.endpoints!r}, paths={self.paths!r}, server_name={self.server_name!r})"


class RetryPolicy:
    """Retries of the safe calls on ``UNAVAILABLE``: at most
    ``max_attempts`` attempts in all; after each full round of endpoints a
    sleep drawn uniformly from ``[0, min(max_backoff, initial_backoff *
    multiplier ** round)]`` (full jitter), never past the call's deadline."""

    __slots__ = ("max_attempts", "initial_backoff", "max_backoff", "multiplier")

    def __init__(self, max_attempts=6, initial_backoff=0.05, max_backoff=2.0, multiplier=2.0):
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.max_attempts = int(max_attempts)
        self.initial_backoff = float(initial_backoff)
        self.max_backoff = float(max_backoff)
        self.multiplier = float(multiplier)

    def backoff(self, round_, rng=random):
        cap = min(self.max_backoff, self.initial_backoff * (self.multiplier**round_))
        return rng.uniform(0, cap)


class _Endpoint:
    __slots__ = ("addr", "channel", "stubs")

    def __init__(self, addr, settings, options):
        self.addr = addr
        opts = [
            # The client retries (and fails over) itself.
            ("grpc.enable_retries", 0),
            # A node that comes back is noticed within seconds, not minutes.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        name = settings.server_name or (server_name_for(addr) if addr.startswith("unix:") else None)
        if name:
            opts.append(("grpc.ssl_target_name_override", name))
        opts.extend(options)
        self.channel = grpc.secure_channel(addr, settings.credentials(), options=opts)
        self.stubs = {name: cls(self.channel) for name, cls in _STUBS.items()}


def _never_sent(err):
    """Whether a call failed before any connection to a daemon existed
    (grpc's "failed to connect to all addresses": refused, no socket, a
    failed TLS handshake), so that no daemon can have carried it out and
    any call may go to the next endpoint."""
    details = err.details() or ""
    return details.startswith("failed to connect to all addresses")


def _new_request_id():
    return uuid.uuid4().hex


def _check_request_id(rid):
    # The daemon takes a caller's id only if short and plain (else it makes
    # its own, and the caller's would not find the call in the logs).
    if not rid or len(rid) > 64 or any(c not in _REQUEST_ID_BYTES for c in rid):
        raise ValueError("a request id is 1..=64 characters of [A-Za-z0-9-_.:]")
    return rid


class Client:
    """A kmsd client over one or more endpoints.

    Every call takes the keyword options ``timeout`` (seconds, the deadline
    of the whole call including retries; default the client's), ``otp`` (an
    officer's one-time code, sent as ``x-kmsd-otp``), ``request_id`` (sent as
    ``x-request-id``; a random one otherwise, the same on every retry) and
    ``metadata`` (more pairs). Failures raise :class:`kmsd.RpcError`
    subclasses.

    The whole API is reachable as ``client.crypto``, ``client.keys``,
    ``client.admin`` and ``client.mask`` (the generated stub methods, with
    the options above); the common calls have methods of their own.
    """

    def __init__(self, settings=None, *, timeout=30.0, retry=None, options=(), sleep=time.sleep, rng=None):
        self.settings = settings if settings is not None else Settings.from_env()
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._options = list(options)
        self._endpoints = [None] * len(self.settings.endpoints)
        self._current = 0
        self._lock = threading.Lock()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.crypto = _Service(self, "Crypto")
        self.keys = _Service(self, "Keys")
        self.admin = _Service(self, "Admin")
        self.mask = _Service(self, "Mask")

    @classmethod
    def from_env(cls, environ=None, **kwargs):
        """A client configured from ``KMSD_*`` (see :class:`Settings`)."""
        return cls(Settings.from_env(environ), **kwargs)

    # ------------------------------------------------------------ plumbing

    def _endpoint(self, i):
        with self._lock:
            ep = self._endpoints[i]
            if ep is None:
                ep = self._endpoints[i] = _Endpoint(self.settings.endpoints[i], self.settings, self._options)
            return ep

    def _failed(self, i):
        """Moves past endpoint ``i`` (if it is still the current one)."""
        with self._lock:
            if self._current == i:
                self._current = (i + 1) % len(self._endpoints)

    @property
    def current_endpoint(self):
        """The address calls go to first."""
        return self.settings.endpoints[self._current]

    def _metadata(self, otp, request_id, metadata):
        rid = _check_request_id(request_id) if request_id is not None else _new_request_id()
        md = [(REQUEST_ID_HEADER, rid)]
        if otp is not None:
            code = str(otp).strip()
            if not code.isprintable() or not code.isascii():
                raise ValueError("the one-time code is not valid text")
            md.append((OTP_HEADER, code))
        md.extend(metadata or ())
        return rid, md

    def call(self, service, method, request, *, timeout=None, otp=None, request_id=None, metadata=None, retry=None):
        """One unary call ``service/method`` (``"Crypto"``, ``"Encrypt"``)
        with the pipeline described in :class:`Client`. ``retry`` overrides
        whether the call is retried (default: whether it is in
        :data:`RETRYABLE`)."""
        rid, md = self._metadata(otp, request_id, metadata)
        retryable = (f"{service}/{method}" in RETRYABLE) if retry is None else retry
        budget = self.timeout if timeout is None else timeout
        deadline = None if budget is None else time.monotonic() + budget
        n = len(self._endpoints)
        attempt = 0
        in_round = 0
        round_ = 0
        while True:
            i = self._current
            remaining = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise errors.DeadlineExceeded(
                        f"the deadline of {budget} s passed after {attempt} attempts",
                        request_id=rid,
                        endpoint=self.settings.endpoints[i],
                    )
            ep = self._endpoint(i)
            try:
                fn = getattr(ep.stubs[service], method)
                return fn(request, timeout=remaining, metadata=md)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise errors.from_grpc(e, request_id=rid, endpoint=ep.addr) from None
                self._failed(i)
                attempt += 1
                in_round += 1
                if not (retryable or _never_sent(e)) or attempt >= self.retry.max_attempts:
                    raise errors.from_grpc(e, request_id=rid, endpoint=ep.addr) from None
            if in_round >= n:
                # Every endpoint failed once: back off before the next round.
                in_round = 0
                pause = self.retry.backoff(round_, self._rng)
                round_ += 1
                if deadline is not None:
                    pause = min(pause, max(0.0, deadline - time.monotonic()))
                self._sleep(pause)

    def call_stream(self, service, method, request, *, timeout=None, otp=None, request_id=None, metadata=None):
        """A streaming call (``Backup``, ``Restore``, ``VerifyAudit``,
        ``RedactStream``): no retry; a response stream is an iterator whose
        errors are typed."""
        rid, md = self._metadata(otp, request_id, metadata)
        i = self._current
        ep = self._endpoint(i)
        fn = getattr(ep.stubs[service], method)
        try:
            out = fn(request, timeout=self.timeout if timeout is None else timeout, metadata=md)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                self._failed(i)
            raise errors.from_grpc(e, request_id=rid, endpoint=ep.addr) from None
        if hasattr(out, "__next__"):
            return self._typed_iter(out, rid, ep.addr, i)
        return out

    def _typed_iter(self, it, rid, addr, i):
        try:
            yield from it
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                self._failed(i)
            raise errors.from_grpc(e, request_id=rid, endpoint=addr) from None

    def close(self):
        """Closes every channel."""
        with self._lock:
            for ep in self._endpoints:
                if ep is not None:
                    ep.channel.close()
            self._endpoints = [None] * len(self._endpoints)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------- common calls

    def encrypt(self, key, plaintext, associated_data=b"", **opts):
        """``Encrypt``: the kmsd ciphertext (format 1) of ``plaintext``."""
        req = kmsd_pb2.EncryptRequest(key=key, plaintext=plaintext, associated_data=associated_data)
        return self.call("Crypto", "Encrypt", req, **opts).ciphertext

    def decrypt(self, key, ciphertext, associated_data=b"", **opts):
        """``Decrypt``: the plaintext of a kmsd ciphertext."""
        req = kmsd_pb2.DecryptRequest(key=key, ciphertext=ciphertext, associated_data=associated_data)
        return self.call("Crypto", "Decrypt", req, **opts).plaintext

    def generate_data_key(self, key, associated_data=DATA_KEY_AAD, bits=256, **opts):
        """``GenerateDataKey``: the response (``plaintext``, ``ciphertext``,
        ``key_version``). The default associated data is the one the
        envelope and stream formats use."""
        req = kmsd_pb2.GenerateDataKeyRequest(key=key, bits=bits, associated_data=associated_data)
        return self.call("Crypto", "GenerateDataKey", req, **opts)

    def create_key(self, name, **opts):
        """``CreateKey`` with default policy: the new key's ``KeyInfo``."""
        return self.call("Keys", "CreateKey", kmsd_pb2.CreateKeyRequest(name=name), **opts)

    def get_key(self, name, **opts):
        """``GetKey``: the key's ``KeyInfo``."""
        return self.call("Keys", "GetKey", kmsd_pb2.GetKeyRequest(name=name), **opts)

    def sign_jws(self, key, payload, *, typ=None, headers=(), detached=False, **opts):
        """A JWS of ``payload`` signed by ``key`` (:func:`kmsd.jws.sign_jws`)."""
        from .jws import sign_jws

        return sign_jws(self, key, payload, typ=typ, headers=headers, detached=detached, **opts)

    def verify_jws(self, jws, detached_payload=None, understood_crit=(), **opts):
        """Verifies a JWS made with a kmsd key (:func:`kmsd.jws.verify_jws`)."""
        from .jws import verify_jws

        return verify_jws(self, jws, detached_payload, understood_crit, **opts)

    def blind_indexes(self, key, values, nbytes, **opts):
        """Blind indexes of normalised ``values`` (bytes) under the MAC key
        ``key``: ``(key_version, index)`` pairs, the MAC truncated to
        ``nbytes``, through ``MacBatch`` in chunks of 1,000 (docs/blind-indexes.md)."""
        if not 2 <= nbytes <= 64:
            raise ValueError(f"a blind index keeps 2 to 64 bytes of the MAC, not {nbytes}")
        values = list(values)
        out = []
        for start in range(0, len(values), 1000):
            chunk = values[start : start + 1000]
            req = kmsd_pb2.MacBatchRequest(items=[kmsd_pb2.MacRequest(key=key, data=v) for v in chunk])
            resp = self.call("Crypto", "MacBatch", req, **opts)
            for i, item in enumerate(resp.items):
                if item.WhichOneof("result") != "ok":
                    code = next((c for c in grpc.StatusCode if c.value[0] == item.error.code), grpc.StatusCode.UNKNOWN)
                    cls = errors._BY_CODE.get(code, errors.RpcError)
                    raise cls(f"blind index item {start + i}: {item.error.message}", code=code)
                if len(item.ok.mac) < nbytes:
                    raise ValueError(f"key {key} gives {len(item.ok.mac)}-byte MACs, shorter than {nbytes}")
                out.append((item.ok.key_version, item.ok.mac[:nbytes]))
        return out

    def envelope(self, cache=None, unwrap_cache=None, **kwargs):
        """An :class:`kmsd.Envelope` sealing and opening through this
        client (``cache``: :class:`kmsd.CacheLimits` or ``None`` for one
        ``GenerateDataKey`` per message; ``unwrap_cache``:
        :class:`kmsd.UnwrapLimits`, default bounds, or ``False``)."""
        from .envelope import Envelope

        return Envelope(self, cache=cache, unwrap_cache=unwrap_cache, **kwargs)


class _Service:
    """``client.crypto.Encrypt(request, timeout=..., otp=...)``: every
    method of one service through the client's pipeline."""

    def __init__(self, client, name):
        self._client = client
        self._name = name
        proto = descriptor_pb2.ServiceDescriptorProto()
        kmsd_pb2.DESCRIPTOR.services_by_name[name].CopyToProto(proto)
        self._streaming = {m.name for m in proto.method if m.client_streaming or m.server_streaming}
        self._methods = {m.name for m in proto.method}

    def __getattr__(self, method):
        if method.startswith("_") or method not in self._methods:
            raise AttributeError(f"kmsd.v1.{self._name} has no method {method}")
        if method in self._streaming:
            return lambda request, **opts: self._client.call_stream(self._name, method, request, **opts)
        return lambda request, **opts: self._client.call(self._name, method, request, **opts)

    def __dir__(self):
        return sorted(self._methods)
