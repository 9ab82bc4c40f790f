#!/bin/bash
# etcd-dropin-test.sh: kmsd.service with the etcd drop-in
# (kmsd.service.d/etcd.conf.example) under a real systemd as PID 1, against
# a real etcd with client-certificate authentication. Runs ONLY inside
# systemd/sandbox.sh (it installs units, users and files system-wide, and
# adds addresses to the sandbox's own loopback); tests/systemd_real.rs
# drives it:
#
#   sudo KMSD_BIN=DIR KMSD_TEST_PKI=DIR systemd/sandbox.sh systemd/etcd-dropin-test.sh
#
# KMSD_TEST_PKI holds what operator-guide-test.sh takes (ca.pem, server.pem,
# server.key, payments.pem/.key, alice.pem/.key) plus etcd's: etcd-ca.pem,
# etcd-server.pem/.key (IP SAN 10.0.0.11), etcd-root.pem/.key (CN root) and
# etcd-kmsd.pem/.key (CN kmsd-payments).
#
# The etcd member listens on 10.0.0.11:2379, the first member address the
# shipped drop-in names, so the drop-in is installed exactly as shipped (an
# operator edits only IPAddressAllow=, and these are its addresses). A
# listener on 10.0.0.99:2379 stands for any other host on the network.
set -euo pipefail
# KMSD_TRACE=1 traces every command (to debug a failure)
[ -n "${KMSD_TRACE:-}" ] && set -x
REPO=$(cd "$(dirname "$0")/.." && pwd)
DIAG_UNITS=etcd-test.service
# shellcheck source=systemd/test-lib.sh
. "$REPO/systemd/test-lib.sh"
# ... and in the sandbox's network namespace (systemd's), never the host's:
# the test adds addresses to loopback.
if [ "$(readlink /proc/self/ns/net)" != "$(readlink /proc/1/ns/net)" ]; then
  echo "etcd-dropin-test.sh: not in the sandbox's network namespace" >&2
  exit 2
fi

cd "$REPO"
PLAINTEXT="5500 0000 0000 0004 etcd-marker-$RANDOM$RANDOM"
MEMBER=10.0.0.11
OTHER=10.0.0.99
export ETCDCTL_API=3 ETCDCTL_ENDPOINTS=https://$MEMBER:2379 ETCDCTL_CACERT=/etc/etcd-test/ca.pem \
  ETCDCTL_CERT=/etc/etcd-test/root.pem ETCDCTL_KEY=/etc/etcd-test/root.key

# ---------------------------------------------------------------------------
step "etcd on $MEMBER:2379 with TLS and client-certificate auth (README: etcd: TLS and client-certificate authentication)"
ip addr add "$MEMBER/32" dev lo
ip addr add "$OTHER/32" dev lo
install -d -m 0700 /etc/etcd-test
install -m 0600 "$PKI/etcd-ca.pem" /etc/etcd-test/ca.pem
install -m 0600 "$PKI/etcd-server.pem" /etc/etcd-test/server.pem
install -m 0600 "$PKI/etcd-server.key" /etc/etcd-test/server.key
install -m 0600 "$PKI/etcd-root.pem" /etc/etcd-test/root.pem
install -m 0600 "$PKI/etcd-root.key" /etc/etcd-test/root.key
# Debian's etcd-server enables etcd.service (localhost:2379/2380): the
# sandbox boots it too. Not ours: stop it.
systemctl stop etcd.service 2>/dev/null || true
# One member; the peer URL stays on loopback (no peers). Short raft timers:
# the member elects itself in well under a second.
systemd-run --quiet --unit=etcd-test /usr/bin/etcd --name etcd-1 --data-dir /var/lib/etcd-test \
  --listen-client-urls "https://$MEMBER:2379" --advertise-client-urls "https://$MEMBER:2379" \
  --listen-peer-urls http://127.0.0.1:2390 --initial-advertise-peer-urls http://127.0.0.1:2390 \
  --initial-cluster etcd-1=http://127.0.0.1:2390 --initial-cluster-state new \
  --heartbeat-interval=10 --election-timeout=100 \
  --cert-file /etc/etcd-test/server.pem --key-file /etc/etcd-test/server.key \
  --client-cert-auth --trusted-ca-file /etc/etcd-test/ca.pem
healthy=
for _ in $(seq 1 40); do
  if etcdctl --dial-timeout=1s --command-timeout=1s endpoint health >/dev/null 2>&1; then
    healthy=yes
    break
  fi
  sleep 0.25
done
[ -n "$healthy" ] || fail "etcd did not become healthy: $(etcdctl --dial-timeout=1s --command-timeout=1s endpoint health 2>&1)"
etcdctl user add root --new-user-password="root-$RANDOM$RANDOM" >/dev/null
etcdctl user grant-role root root >/dev/null
etcdctl role add kmsd-payments >/dev/null
etcdctl role grant-permission kmsd-payments --prefix=true readwrite /kmsd/payments/ >/dev/null
etcdctl user add kmsd-payments --no-password >/dev/null
etcdctl user grant-role kmsd-payments kmsd-payments >/dev/null
etcdctl auth enable
# the decoy: any other host of the network
systemd-run --quiet --unit=other-host /usr/bin/python3 -c "
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('$OTHER', 2379)); s.listen(16)
while True:
    c, _ = s.accept(); c.close()
"

# ---------------------------------------------------------------------------
step "install kmsd, its units and the etcd drop-in as shipped (README: Running a cluster)"
install -m 0755 "$KMSD_BIN/kmsd" "$KMSD_BIN/kmsctl" /usr/bin/
install -m 0644 systemd/kmsd.service systemd/kmsd.socket /etc/systemd/system/
install -m 0644 systemd/sysusers.d/kmsd.conf /usr/lib/sysusers.d/kmsd.conf
install -m 0644 systemd/tmpfiles.d/kmsd.conf /usr/lib/tmpfiles.d/kmsd.conf
systemd-sysusers && systemd-tmpfiles --create /usr/lib/tmpfiles.d/kmsd.conf
grep -qx "IPAddressAllow=localhost $MEMBER 10.0.0.12 10.0.0.13" systemd/kmsd.service.d/etcd.conf.example ||
  fail "the shipped drop-in no longer names $MEMBER: update this test's addresses"
install -D -m 0644 systemd/kmsd.service.d/etcd.conf.example /etc/systemd/system/kmsd.service.d/etcd.conf
# As in operator-guide-test.sh: a system call outside the filter kills the
# service, so the network client's calls are proven inside the allow-list.
printf '[Service]\nSystemCallErrorNumber=kill\n' >/etc/systemd/system/kmsd.service.d/50-test-seccomp-kill.conf
# kmsd.example.toml, with [store] switched to etcd as the README's
# "Each node's configuration" shows.
sed -e 's|^# backend = "sled"$|backend = "etcd"|' -e '\|^path = "/var/lib/kmsd/store"$|d' \
  -e "s|^# \[store.etcd\]$|[store.etcd]\nendpoints = [\"https://$MEMBER:2379\"]\ncluster = \"payments\"\nca = \"/etc/kmsd/etcd/server-ca.pem\"\ncert = \"/etc/kmsd/etcd/kmsd.pem\"\nkey = \"/etc/kmsd/etcd/kmsd.key\"|" \
  kmsd.example.toml >/run/kmsd.toml
grep -q '^backend = "etcd"$' /run/kmsd.toml && grep -q '^\[store.etcd\]$' /run/kmsd.toml ||
  fail "kmsd.example.toml changed shape: cannot switch it to etcd"
install -m 0640 -g kmsd /run/kmsd.toml /etc/kmsd/kmsd.toml
install -m 0640 -g kmsd policy.example.toml /etc/kmsd/policy.toml
cp "$PKI/ca.pem" "$PKI/clients-ca.pem"
install -m 0640 -g kmsd "$PKI/server.pem" "$PKI/clients-ca.pem" /etc/kmsd/tls/
install -m 0600 -o kmsd -g kmsd "$PKI/server.key" /etc/kmsd/tls/
rm -f "$PKI/clients-ca.pem"
install -d -m 0750 -g kmsd /etc/kmsd/etcd
install -m 0640 -g kmsd "$PKI/etcd-ca.pem" /etc/kmsd/etcd/server-ca.pem
install -m 0640 -g kmsd "$PKI/etcd-kmsd.pem" /etc/kmsd/etcd/kmsd.pem
install -m 0600 -o kmsd -g kmsd "$PKI/etcd-kmsd.key" /etc/kmsd/etcd/kmsd.key
systemctl daemon-reload
expect_eq "PrivateNetwork" "$(show PrivateNetwork)" no
expect_eq "RestrictAddressFamilies" "$(show RestrictAddressFamilies)" "AF_INET AF_INET6 AF_UNIX"
expect_eq "SystemCallErrorNumber" "$(show SystemCallErrorNumber)" 2147483646
echo "IPAddressAllow=$(show IPAddressAllow) IPAddressDeny=$(show IPAddressDeny)"

kmsd init --master-key /run/kmsd-master-key.plain
MK_HEX=$(od -An -v -tx1 /run/kmsd-master-key.plain | tr -d ' \n')
systemd-creds encrypt --name=master-key --with-key=host /run/kmsd-master-key.plain /etc/kmsd/master-key.cred
shred -u /run/kmsd-master-key.plain
kmsd_offline check-config /etc/kmsd/kmsd.toml
enrol=$(kmsd_offline officer-enroll --config /etc/kmsd/kmsd.toml spiffe://bank.internal/officer/alice)
TOTP_SECRET=$(printf '%s\n' "$enrol" | sed -n 's/.*[?&]secret=\([A-Z2-7]*\).*/\1/p')
[ -n "$TOTP_SECRET" ] || fail "no otpauth secret in: $enrol"

# ---------------------------------------------------------------------------
step "systemctl enable --now: the hardened unit with the drop-in starts and reaches READY"
systemctl enable --now kmsd.socket kmsd.service
# Type=notify: active only once the daemon sent READY=1 (after self-test,
# master key and the etcd store).
expect_eq "ActiveState" "$(show ActiveState)" active
case "$(show StatusText)" in serving*) ;; *) fail "StatusText: $(show StatusText)" ;; esac
journalctl -u kmsd -o verbose --no-pager | grep -q "etcd https://$MEMBER:2379" || fail "the journal does not show the etcd store"
MAIN1=$(show MainPID)

useradd --system --no-create-home --shell /usr/sbin/nologin --groups kmsd-clients payments
useradd --system --no-create-home --shell /usr/sbin/nologin --groups kmsd-clients alice
for u in payments alice; do
  install -d -m 0700 -o "$u" "/var/lib/$u"
  install -m 0600 -o "$u" "$PKI/ca.pem" "/var/lib/$u/ca.pem"
  install -m 0600 -o "$u" "$PKI/$u.pem" "/var/lib/$u/client.pem"
  install -m 0600 -o "$u" "$PKI/$u.key" "/var/lib/$u/client.key"
done
as() {
  local u=$1
  shift
  runuser -u "$u" -- env KMSD_ADDR=unix:/run/kmsd/kmsd.sock KMSD_CA="/var/lib/$u/ca.pem" \
    KMSD_CERT="/var/lib/$u/client.pem" KMSD_KEY="/var/lib/$u/client.key" "$@"
}

step "gRPC: the officer creates a key (written to etcd), payments encrypts and decrypts"
T0=$(($(date +%s) / 30))
as alice KMSD_OTP="$(totp "$T0")" kmsctl key create payments.pan
CT1=$(printf '%s' "$PLAINTEXT" | as payments kmsctl encrypt --key payments.pan --aad order-42 -)
expect_eq "decrypt" "$(as payments kmsctl decrypt --key payments.pan --aad order-42 "$CT1")" "$PLAINTEXT"

step "etcdctl reads the key ring back: sealed under the master key, no clear material"
etcdctl get --prefix /kmsd/payments/ -w json >/run/etcd-dump.json
python3 - /run/etcd-dump.json "$MK_HEX" "$TOTP_SECRET" "$PLAINTEXT" <<'PY'
import base64, hashlib, hmac, json, sys
kvs = json.load(open(sys.argv[1])).get("kvs", [])
mk = bytes.fromhex(sys.argv[2])
totp = sys.argv[3]
totp_raw = base64.b32decode(totp + "=" * (-len(totp) % 8))
plaintext = sys.argv[4].encode()
key_id = hmac.new(mk, b"kmsd master key id v1", hashlib.sha256).digest()[:8]
records = {base64.b64decode(kv["key"]): base64.b64decode(kv.get("value", "")) for kv in kvs}
# keystore/src/seal.rs, format 2: 2 | master key id | salt | nonce | AES-256-GCM ciphertext and tag
def sealed(v):
    return len(v) >= 1 + 8 + 32 + 12 + 16 + 1 and v[0] == 2 and v[1:9] == key_id
for name in (b"/kmsd/payments/kpayments.pan", b"/kmsd/payments/stotp:spiffe://bank.internal/officer/alice"):
    if name not in records:
        sys.exit("no record %r in etcd: %r" % (name, sorted(records)))
    if not sealed(records[name]):
        sys.exit("%r is not sealed under this master key: %r..." % (name, records[name][:16]))
v = records[b"/kmsd/payments/kpayments.pan"]
needles = {
    "master key": mk, "master key (hex)": mk.hex().encode(), "TOTP secret": totp.encode(),
    "TOTP secret (raw)": totp_raw, "plaintext": plaintext, "plaintext (base64)": base64.b64encode(plaintext),
}
for k, val in records.items():
    for name, n in needles.items():
        if n in val or n in k:
            sys.exit("%s in etcd under %r" % (name, k))
print("etcd: %d records under /kmsd/payments/; key ring and TOTP secret sealed (format 2, key id %s, %d bytes); no secret in any" % (len(records), key_id.hex(), len(v)))
PY

step "systemctl reload: TLS and policy reloaded, same process, still serving from etcd"
since=$(date '+%Y-%m-%d %H:%M:%S')
sleep 1
systemctl reload kmsd
for _ in $(seq 1 50); do
  journalctl -u kmsd --since "$since" -o cat | grep -q "reloaded the policy" && break
  sleep 0.1
done
journalctl -u kmsd --since "$since" -o cat | grep -q "reloaded the policy" || fail "no policy reload in the journal"
expect_eq "MainPID after reload" "$(show MainPID)" "$MAIN1"
expect_eq "ActiveState after reload" "$(show ActiveState)" active
expect_eq "decrypt after reload" "$(as payments kmsctl decrypt --key payments.pan --aad order-42 "$CT1")" "$PLAINTEXT"

step "the drop-in opens only etcd: from the unit's own cgroup, $MEMBER:2379 connects, $OTHER:2379 is refused"
CGROUP=/sys/fs/cgroup$(show ControlGroup)
[ -d "$CGROUP" ] || fail "no cgroup at $CGROUP"
cat >/run/connect.py <<'PY'
import socket, sys
s = socket.socket()
s.settimeout(2)
try:
    s.connect((sys.argv[1], 2379))
    print("connected")
except OSError as e:
    print("refused:", e)
PY
connect() { # connect [in-unit] ADDR: prints "connected" or the error
  if [ "$1" = in-unit ]; then
    # the probe moves itself into kmsd.service's cgroup, where the unit's
    # IPAddressAllow=/IPAddressDeny= filters are attached, then connects
    bash -c 'echo $$ >"$1/cgroup.procs" && exec python3 /run/connect.py "$2"' probe "$CGROUP" "$2"
  else
    python3 /run/connect.py "$1"
  fi
}
expect_eq "outside the unit, to $OTHER (control: the listener is there)" "$(connect "$OTHER")" connected
expect_eq "inside the unit, to etcd at $MEMBER" "$(connect in-unit "$MEMBER")" connected
got=$(connect in-unit "$OTHER")
echo "inside the unit, to $OTHER: $got"
# The filter drops the packets (BPF on the unit's cgroup): the connect
# fails with EPERM or times out; it never connects (the listener is there:
# see the control above) and is never "connection refused".
case "$got" in "refused: [Errno 1] Operation not permitted" | "refused: timed out") ;; *) fail "the unit reached $OTHER: $got" ;; esac

step "systemd-analyze security: the unit's exposure with the etcd drop-in"
systemd-analyze security --no-pager kmsd.service >/run/security.txt 2>&1 || true
exposure=$(sed -n 's/.*Overall exposure level for kmsd.service: \([0-9.]*\).*/\1/p' /run/security.txt)
[ -n "$exposure" ] || { cat /run/security.txt; fail "no exposure level"; }
grep -E 'PrivateNetwork=|RestrictAddressFamilies=~AF_\(INET' /run/security.txt || true
echo "exposure with the etcd drop-in (systemd $(systemctl --version | sed -n '1s/systemd \([0-9]*\).*/\1/p'), running unit): $exposure"
python3 -c "import sys; sys.exit(0 if float('$exposure') <= 1.0 else 'exposure $exposure is above 1.0')"

step "systemctl stop ends with Result=success; no process died from the system call filter"
systemctl stop kmsd
expect_eq "Result" "$(show Result)" success
expect_eq "ExecMainCode (1 = exited)" "$(show ExecMainCode)" 1
expect_eq "ExecMainStatus" "$(show ExecMainStatus)" 0
if journalctl -k --no-pager -o cat | grep -E 'SECCOMP.*exe="(/usr/bin/kmsd|/usr/bin/kill)"'; then
  fail "a kmsd process hit the system call filter"
fi
if journalctl -u kmsd --no-pager -o cat | grep -E 'code=(killed|dumped)|status=31/SYS|SIGSYS|Failed with result'; then
  fail "the journal shows a killed or failed kmsd"
fi
journalctl -o export --no-pager >/run/journal.export
for needle in "$PLAINTEXT" "$MK_HEX" "$TOTP_SECRET"; do
  if grep -qF "$needle" /run/journal.export; then fail "a secret is in the journal"; fi
done

echo "etcd drop-in under systemd: all steps passed"
