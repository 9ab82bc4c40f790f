"""The Python half of the cross-language test (tests/python_package.rs,
python_and_rust_open_each_others_envelopes_and_streams):

    interop.py seal DIR KEY   Python seals messages and streams into DIR
                              (py-*.bin / py-*.kmsd, with .plain and .aad)
    interop.py open DIR KEY   Python opens what Rust sealed (rs-*), checks
                              every plaintext, and that a changed byte or
                              other associated data is refused

It reads KMSD_ADDR, KMSD_CA, KMSD_CERT, KMSD_KEY.
"""
import glob
import io
import os
import sys

import kmsd

# Plaintext sizes: empty, one byte, a card number, a segment exactly, and
# more than one segment with a partial last one.
MESSAGES = [b"", b"x", b"4111 1111 1111 1111", os.urandom(1024), os.urandom(70_000)]
STREAMS = [0, 1, 65536, 3 * 65536 + 123, (1 << 20) + 7]


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def seal(client, d, key):
    # A cache of 2 messages per data key: some messages share a data key.
    env = client.envelope(kmsd.CacheLimits(max_messages=2))
    for i, pt in enumerate(MESSAGES):
        aad = b"row-%d" % i
        write(os.path.join(d, f"py-msg-{i}.bin"), env.seal(key, pt, aad))
        write(os.path.join(d, f"py-msg-{i}.plain"), pt)
        write(os.path.join(d, f"py-msg-{i}.aad"), aad)
    for j, size in enumerate(STREAMS):
        pt = os.urandom(size)
        aad = b"file-%d" % j if j % 2 else b""
        with open(os.path.join(d, f"py-stream-{j}.kmsd"), "wb") as f, env.stream_writer(f, key, aad) as w:
            for k in range(0, len(pt), 50_000):
                w.write(pt[k : k + 50_000])
        write(os.path.join(d, f"py-stream-{j}.plain"), pt)
        write(os.path.join(d, f"py-stream-{j}.aad"), aad)
    print(f"ok sealed messages={len(MESSAGES)} streams={len(STREAMS)}")


def open_all(client, d, key):
    env = client.envelope()
    messages = sorted(glob.glob(os.path.join(d, "rs-msg-*.bin")))
    streams = sorted(glob.glob(os.path.join(d, "rs-stream-*.kmsd")))
    assert messages and streams, "Rust sealed nothing"
    for path in messages:
        base = path[: -len(".bin")]
        blob, aad, want = read(path), read(base + ".aad"), read(base + ".plain")
        got = env.open(blob, aad, expected_keys={key})
        assert got == want, f"{path}: wrong plaintext"
        try:
            env.open(blob, aad + b"!", expected_keys={key})
            raise AssertionError(f"{path}: other associated data accepted")
        except kmsd.AuthenticationError:
            pass
        bad = bytearray(blob)
        bad[-1] ^= 1
        try:
            env.open(bytes(bad), aad)
            raise AssertionError(f"{path}: a changed tag accepted")
        except kmsd.AuthenticationError:
            pass
    for path in streams:
        base = path[: -len(".kmsd")]
        aad, want = read(base + ".aad"), read(base + ".plain")
        with open(path, "rb") as f:
            r = env.stream_reader(f, aad, expected_keys={key})
            got = r.read()
            assert r.complete and got == want, f"{path}: wrong plaintext"
        blob = read(path)
        try:
            env.stream_reader(io.BytesIO(blob[:-1]), aad).read()
            raise AssertionError(f"{path}: a stream missing its last byte accepted")
        except kmsd.FormatError:
            pass
    print(f"ok opened messages={len(messages)} streams={len(streams)}")


def main():
    what, d, key = sys.argv[1], sys.argv[2], sys.argv[3]
    with kmsd.Client.from_env() as client:
        {"seal": seal, "open": open_all}[what](client, d, key)


if __name__ == "__main__":
    main()
