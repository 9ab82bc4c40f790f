"""Failover under load: 10,000 decrypts from 4 threads through one client
configured with two kmsd nodes (one etcd store); the node the client is on
is killed with SIGKILL a third of the way through; no call may fail.

Run by tests/python_package.rs (python_client_survives_a_node_killed_under_load),
which starts the cluster and sets KMSD_ADDR (both nodes), KMSD_CA,
KMSD_CERT, KMSD_KEY and KMSD_TEST_KILL_PID (the first node's pid). Prints
one line: ``ok decrypts=N failed=0 ...``.
"""
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import kmsd

TOTAL = 10_000
THREADS = 4
KILL_AT = TOTAL // 3


def main():
    client = kmsd.Client.from_env(timeout=20)
    first, second = client.settings.endpoints
    try:
        client.create_key("py.cluster")
    except kmsd.AlreadyExists:
        pass
    cts = [(client.encrypt("py.cluster", b"value %d" % i, b"row"), b"value %d" % i) for i in range(64)]
    assert client.current_endpoint == first

    lock = threading.Lock()
    state = {"done": 0, "failed": 0, "killed_at": None, "errors": []}
    pid = int(os.environ["KMSD_TEST_KILL_PID"])

    def one(i):
        ct, want = cts[i % len(cts)]
        try:
            got = client.decrypt("py.cluster", ct, b"row")
            ok = got == want
            err = None if ok else "wrong plaintext"
        except kmsd.KmsdError as e:
            ok, err = False, repr(e)
        with lock:
            state["done"] += 1
            if not ok:
                state["failed"] += 1
                state["errors"].append(err)
            if state["done"] == KILL_AT:
                os.kill(pid, signal.SIGKILL)
                state["killed_at"] = state["done"]

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, range(TOTAL)))
    print(
        f"decrypts={state['done']} failed={state['failed']} killed_at={state['killed_at']} "
        f"now_on={'second' if client.current_endpoint == second else 'first'}"
    )
    if state["failed"] or state["killed_at"] is None or client.current_endpoint != second:
        print("errors:", state["errors"][:5], file=sys.stderr)
        return 1
    print(f"ok decrypts={TOTAL} failed=0 failover=first->second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
