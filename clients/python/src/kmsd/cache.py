"""The two data-key caches of the envelope (docs/formats.md, "Caching").

- :class:`DataKeyCache`, on the sealing side: one data key per kmsd key
  name, reused until it reaches the limits the AWS Encryption SDK's caching
  manager uses (maximum age, messages and bytes per data key, entries).
  With ``max_messages = 100``, 1,000 seals make 10 ``GenerateDataKey``
  calls.
- :class:`UnwrapCache`, on the opening side: unwrapped data keys by
  (key name, wrapped key), bounded in entries and age.

Both hand out only keys *derived* from a data key, computed while the
cache's lock is held, so an eviction (which overwrites the data key with
zeros) can never race with a use of it. Time is a parameter (``clock``, a
monotonic seconds function), so expiry is tested without sleeping.

Zeroization is best effort, as it must be in Python: the cache keeps each
data key in one ``bytearray`` and overwrites it when the entry is evicted
or the cache cleared; the ``bytes`` object protobuf returned it in and
copies made inside ``cryptography`` are released to the allocator, not
wiped.
"""
import threading
import time
from collections import OrderedDict

__all__ = ["CacheLimits", "UnwrapLimits", "DataKeyCache", "UnwrapCache", "wipe"]


def wipe(buf):
    """Overwrites a bytearray with zeros in place."""
    buf[:] = bytes(len(buf))


class CacheLimits:
    """Limits of the sealing cache, per data key, and of the whole cache.

    ``max_age`` (seconds since the data key was generated), ``max_messages``
    (messages sealed under one data key), ``max_bytes`` (plaintext bytes
    sealed under one data key; a message larger than this is sealed under a
    data key of its own, never cached), ``max_entries`` (data keys held; the
    least recently used is evicted). Defaults follow the AWS Encryption SDK
    (2^32 messages, 2^63 - 1 bytes) with a five-minute age.
    """

    __slots__ = ("max_age", "max_messages", "max_bytes", "max_entries")

    def __init__(self, max_age=300.0, max_messages=1 << 32, max_bytes=(1 << 63) - 1, max_entries=64):
        if not max_age > 0:
            raise ValueError("max_age must be positive")
        if max_messages < 1 or max_bytes < 0 or max_entries < 1:
            raise ValueError("max_messages and max_entries must be at least 1, max_bytes not negative")
        self.max_age = float(max_age)
        self.max_messages = int(max_messages)
        self.max_bytes = int(max_bytes)
        self.max_entries = int(max_entries)

    def __repr__(self):
        return (
            f"CacheLimits(max_age={self.max_age}, max_messages={self.max_messages}, "
            f"max_bytes={self.max_bytes}, max_entries={self.max_entries})"
        )


class UnwrapLimits:
    """Limits of the opening cache: ``max_entries`` unwrapped data keys
    (least recently used evicted), each kept at most ``max_age`` seconds."""

    __slots__ = ("max_age", "max_entries")

    def __init__(self, max_age=300.0, max_entries=1024):
        if not max_age > 0 or max_entries < 1:
            raise ValueError("max_age must be positive and max_entries at least 1")
        self.max_age = float(max_age)
        self.max_entries = int(max_entries)

    def __repr__(self):
        return f"UnwrapLimits(max_age={self.max_age}, max_entries={self.max_entries})"


class _Entry:
    __slots__ = ("key", "wrapped", "created", "messages", "bytes")

    def __init__(self, key, wrapped, created):
        self.key = key
        self.wrapped = wrapped
        self.created = created
        self.messages = 0
        self.bytes = 0

    def __repr__(self):
        # Never the key.
        return f"_Entry(messages={self.messages}, bytes={self.bytes})"


class _Lru:
    """An LRU of entries holding a data key, wiped on eviction."""

    def __init__(self, max_entries, max_age, clock):
        self._entries = OrderedDict()
        self._lock = threading.Lock()
        self._max_entries = max_entries
        self._max_age = max_age
        self._clock = clock or time.monotonic
        #: Entries evicted (expired, used up, pushed out, replaced or cleared).
        self.evictions = 0

    def _fresh(self, ident):
        """The live entry for ``ident``, evicting it first if expired."""
        e = self._entries.get(ident)
        if e is not None and self._clock() - e.created >= self._max_age:
            self._evict(ident)
            return None
        return e

    def _evict(self, ident):
        e = self._entries.pop(ident, None)
        if e is not None:
            wipe(e.key)
            self.evictions += 1

    def _insert(self, ident, entry):
        self._evict(ident)
        self._entries[ident] = entry
        while len(self._entries) > self._max_entries:
            self._evict(next(iter(self._entries)))

    def __len__(self):
        with self._lock:
            return len(self._entries)

    def clear(self):
        """Evicts (and wipes) every entry."""
        with self._lock:
            for ident in list(self._entries):
                self._evict(ident)


class DataKeyCache(_Lru):
    """Data keys for sealing, by kmsd key name, within :class:`CacheLimits`."""

    def __init__(self, limits, clock=None):
        super().__init__(limits.max_entries, limits.max_age, clock)
        self.limits = limits

    def take(self, key_name, nbytes, derive):
        """Counts one message of ``nbytes`` against the cached data key for
        ``key_name`` and returns ``(wrapped_key, derive(data_key))``, or
        ``None`` when there is no usable entry (then generate one and
        :meth:`put` it)."""
        lim = self.limits
        if nbytes > lim.max_bytes:
            # Sealed under a data key of its own; the cached one stays.
            return None
        with self._lock:
            e = self._fresh(key_name)
            if e is None:
                return None
            if e.messages + 1 > lim.max_messages or e.bytes + nbytes > lim.max_bytes:
                self._evict(key_name)
                return None
            e.messages += 1
            e.bytes += nbytes
            out = (e.wrapped, derive(e.key))
            if e.messages >= lim.max_messages or e.bytes >= lim.max_bytes:
                self._evict(key_name)
            else:
                self._entries.move_to_end(key_name)
            return out

    def put(self, key_name, data_key, wrapped, nbytes, derive):
        """Takes a freshly generated ``data_key`` (a bytearray, owned by the
        cache from now on), counts its first message of ``nbytes`` and
        returns ``derive(data_key)``. A key already at a limit after that
        message is wiped instead of cached."""
        lim = self.limits
        with self._lock:
            out = derive(data_key)
            if nbytes >= lim.max_bytes or lim.max_messages <= 1:
                wipe(data_key)
                return out
            e = _Entry(data_key, bytes(wrapped), self._clock())
            e.messages = 1
            e.bytes = nbytes
            self._insert(key_name, e)
            return out


class UnwrapCache(_Lru):
    """Unwrapped data keys by (key name, wrapped key), within
    :class:`UnwrapLimits`."""

    def __init__(self, limits, clock=None):
        super().__init__(limits.max_entries, limits.max_age, clock)
        self.limits = limits

    def get(self, key_name, wrapped, derive):
        """``derive(data_key)`` for a cached unwrapped key, or ``None``."""
        ident = (key_name, bytes(wrapped))
        with self._lock:
            e = self._fresh(ident)
            if e is None:
                return None
            self._entries.move_to_end(ident)
            return derive(e.key)

    def put(self, key_name, wrapped, data_key, derive):
        """Caches ``data_key`` (a bytearray, owned by the cache from now
        on) and returns ``derive(data_key)``."""
        ident = (key_name, bytes(wrapped))
        with self._lock:
            out = derive(data_key)
            self._insert(ident, _Entry(data_key, ident[1], self._clock()))
            return out
