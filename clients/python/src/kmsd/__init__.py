"""kmsd: the Python client of the kmsd key-management daemon.

- :class:`Client`: mTLS gRPC over a Unix socket or TCP, configured from the
  same ``KMSD_*`` environment as ``kmsctl``, several endpoints with
  failover, retries with backoff and jitter on ``UNAVAILABLE`` for the
  data-path calls, per-call deadlines, ``x-request-id``, officer one-time
  codes, typed exceptions (:mod:`kmsd.errors`);
- :class:`Envelope`: ``seal``/``open`` in the envelope format and
  :class:`StreamWriter`/:class:`StreamReader` in the stream format of
  ``docs/formats.md``, on data keys from kmsd, cached within
  :class:`CacheLimits`/:class:`UnwrapLimits`;
- :mod:`kmsd.formats`: the formats themselves (pure, no I/O);
- :mod:`kmsd.jws`: JWS signed and verified by kmsd keys
  (``Client.sign_jws``, ``Client.verify_jws``); ``Client.blind_indexes``;
- :mod:`kmsd.v1`: the generated stubs of ``proto/kmsd/v1/kmsd.proto``
  (``kmsd.v1.kmsd_pb2``, ``kmsd.v1.kmsd_pb2_grpc``).

Layout: ``client`` (settings, channels, call pipeline) → ``envelope``
(data keys, caches) → ``stream``, ``cache`` → ``formats`` (bytes and
AES-GCM only) ; ``errors`` is used by all.
"""
from .cache import CacheLimits, UnwrapLimits
from .client import Client, RetryPolicy, Settings
from .envelope import Envelope
from .errors import *  # noqa: F401,F403 - the exception classes are the API
from .errors import __all__ as _errors_all
from .stream import StreamReader, StreamWriter

__version__ = "0.1.0"

__all__ = [
    "Client",
    "Settings",
    "RetryPolicy",
    "Envelope",
    "CacheLimits",
    "UnwrapLimits",
    "StreamReader",
    "StreamWriter",
] + list(_errors_all)
