#!/bin/bash
# operator-guide-test.sh: the README's operator guide, step by step, under a
# real systemd as PID 1. Runs ONLY inside systemd/sandbox.sh (it installs
# units, users and files system-wide); tests/systemd_real.rs drives it:
#
#   sudo KMSD_BIN=target/debug KMSD_TEST_PKI=DIR systemd/sandbox.sh systemd/operator-guide-test.sh
#
# KMSD_BIN holds the kmsd and kmsctl binaries; KMSD_TEST_PKI holds ca.pem,
# server.pem, server.key (SAN localhost), payments.pem/.key (URI SAN
# spiffe://bank.internal/payments) and alice.pem/.key (URI SAN
# spiffe://bank.internal/officer/alice): the identities of
# policy.example.toml, which is installed unchanged, as is kmsd.example.toml.
#
# The one deliberate deviation from the shipped unit: a drop-in makes a
# system call outside the filter kill the service (SIGSYS) instead of
# failing with EPERM, so that any call the daemon makes outside the
# allow-list shows as a dead service rather than as a quiet error.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=systemd/test-lib.sh
. "$REPO/systemd/test-lib.sh"

cd "$REPO"
PLAINTEXT="4111 1111 1111 1111 marker-$RANDOM$RANDOM"

# ---------------------------------------------------------------------------
step "install binaries, units, sysusers and tmpfiles (README: Build and install)"
install -m 0755 "$KMSD_BIN/kmsd" "$KMSD_BIN/kmsctl" /usr/bin/
install -m 0644 systemd/kmsd.service systemd/kmsd.socket /etc/systemd/system/
install -m 0644 systemd/sysusers.d/kmsd.conf /usr/lib/sysusers.d/kmsd.conf
install -m 0644 systemd/tmpfiles.d/kmsd.conf /usr/lib/tmpfiles.d/kmsd.conf
systemd-sysusers && systemd-tmpfiles --create /usr/lib/tmpfiles.d/kmsd.conf
install -m 0640 -g kmsd kmsd.example.toml /etc/kmsd/kmsd.toml
install -m 0640 -g kmsd policy.example.toml /etc/kmsd/policy.toml
cp "$PKI/ca.pem" "$PKI/clients-ca.pem"
install -m 0640 -g kmsd "$PKI/server.pem" "$PKI/clients-ca.pem" /etc/kmsd/tls/
install -m 0600 -o kmsd -g kmsd "$PKI/server.key" /etc/kmsd/tls/
rm -f "$PKI/clients-ca.pem"

step "the test-only drop-in: a filtered system call kills the service"
install -d /etc/systemd/system/kmsd.service.d
printf '[Service]\nSystemCallErrorNumber=kill\n' >/etc/systemd/system/kmsd.service.d/50-test-seccomp-kill.conf
systemctl daemon-reload
# 2147483646 is systemd's "kill" (SECCOMP_ERROR_NUMBER_KILL).
expect_eq "SystemCallErrorNumber" "$(show SystemCallErrorNumber)" 2147483646
# Positive control: under the same mechanism a filtered call (nice ->
# setpriority, in @resources) does kill, so a quiet run below means something.
if systemd-run --quiet --wait --unit=kmsd-seccomp-control -p SystemCallFilter=@system-service \
  -p SystemCallFilter='~@resources' -p SystemCallErrorNumber=kill /usr/bin/nice -n 5 true; then
  fail "seccomp kill mode did not kill a filtered call"
fi

# ---------------------------------------------------------------------------
step "master key as an encrypted credential (README: kmsd init, systemd-creds encrypt --with-key=host)"
kmsd init --master-key /run/kmsd-master-key.plain
MK_HEX=$(od -An -v -tx1 /run/kmsd-master-key.plain | tr -d ' \n')
systemd-creds encrypt --name=master-key --with-key=host /run/kmsd-master-key.plain /etc/kmsd/master-key.cred
shred -u /run/kmsd-master-key.plain
[ ! -e /run/kmsd-master-key.plain ] || fail "the plain master key is still there"


step "check-config with the credential (README: kmsd_offline check-config)"
kmsd_offline check-config /etc/kmsd/kmsd.toml

step "enrol the first officer offline (README: kmsd_offline officer-enroll)"
enrol=$(kmsd_offline officer-enroll --config /etc/kmsd/kmsd.toml spiffe://bank.internal/officer/alice)
TOTP_SECRET=$(printf '%s\n' "$enrol" | sed -n 's/.*[?&]secret=\([A-Z2-7]*\).*/\1/p')
[ -n "$TOTP_SECRET" ] || fail "no otpauth secret in: $enrol"

# ---------------------------------------------------------------------------
step "systemctl enable --now kmsd.socket kmsd.service"
systemctl enable --now kmsd.socket kmsd.service
expect_eq "ActiveState" "$(show ActiveState)" active
case "$(show StatusText)" in serving*) ;; *) fail "StatusText: $(show StatusText)" ;; esac
MAIN1=$(show MainPID)

step "client users in kmsd-clients (and one outside it)"
useradd --system --no-create-home --shell /usr/sbin/nologin --groups kmsd-clients payments
useradd --system --no-create-home --shell /usr/sbin/nologin --groups kmsd-clients alice
useradd --system --no-create-home --shell /usr/sbin/nologin outsider
for u in payments alice outsider; do
  install -d -m 0700 -o "$u" "/var/lib/$u"
  cert=$u
  [ "$u" = outsider ] && cert=payments
  install -m 0600 -o "$u" "$PKI/ca.pem" "/var/lib/$u/ca.pem"
  install -m 0600 -o "$u" "$PKI/$cert.pem" "/var/lib/$u/client.pem"
  install -m 0600 -o "$u" "$PKI/$cert.key" "/var/lib/$u/client.key"
done
as() { # as USER [VAR=value...] kmsctl ...
  local u=$1
  shift
  runuser -u "$u" -- env KMSD_ADDR=unix:/run/kmsd/kmsd.sock KMSD_CA="/var/lib/$u/ca.pem" \
    KMSD_CERT="/var/lib/$u/client.pem" KMSD_KEY="/var/lib/$u/client.key" "$@"
}
expect_eq "socket owner, group and mode" "$(stat -c '%U:%G %a' /run/kmsd/kmsd.sock)" "kmsd:kmsd-clients 660"
expect_eq "directory owner, group and mode" "$(stat -c '%U:%G %a' /run/kmsd)" "kmsd:kmsd-clients 710"

step "a user outside kmsd-clients cannot reach the socket"
if out=$(as outsider kmsctl status 2>&1); then fail "outsider reached kmsd: $out"; fi
echo "outsider: $out"
case "$out" in *"Permission denied (os error 13)"*) ;; *) fail "outsider: expected Permission denied, got: $out" ;; esac

step "status over the socket as a member of kmsd-clients (the officer may; payments may not)"
as alice kmsctl status
if out=$(as payments kmsctl status 2>&1); then fail "payments may read status: $out"; fi
echo "payments: $out"
case "$out" in *PERMISSION_DENIED* | *PermissionDenied* | *"permission denied"*) ;; *) fail "payments status: $out" ;; esac

# Officer calls need a fresh, increasing TOTP step; one step of skew either
# way is accepted, so three calls fit in one window: T0-1, T0, T0+1.
now=$(date +%s)
if [ $((now % 30)) -gt 20 ]; then sleep $((31 - now % 30)); fi
T0=$(($(date +%s) / 30))

step "the officer creates a key (TOTP), the payments service encrypts and decrypts"
as alice KMSD_OTP="$(totp $((T0 - 1)))" kmsctl key create payments.pan
# Plaintext on stdin, never in argv: a command line is visible to every
# local user and lands in the journal (_CMDLINE of runuser's PAM messages).
CT1=$(printf '%s' "$PLAINTEXT" | as payments kmsctl encrypt --key payments.pan --aad order-42 -)
expect_eq "decrypt" "$(as payments kmsctl decrypt --key payments.pan --aad order-42 "$CT1")" "$PLAINTEXT"
if as payments kmsctl decrypt --key payments.pan --aad order-43 "$CT1" >/dev/null 2>&1; then
  fail "decrypt with the wrong associated data succeeded"
fi

step "systemctl reload: the daemon reloads TLS and policy, keeps its PID and serves"
since=$(date '+%Y-%m-%d %H:%M:%S')
sleep 1
systemctl reload kmsd
for _ in $(seq 1 50); do
  journalctl -u kmsd --since "$since" -o cat | grep -q "reloaded the policy" && break
  sleep 0.1
done
journalctl -u kmsd --since "$since" -o cat | grep -q "reloaded TLS certificate" || fail "no TLS reload in the journal"
journalctl -u kmsd --since "$since" -o cat | grep -q "reloaded the policy" || fail "no policy reload in the journal"
expect_eq "MainPID after reload" "$(show MainPID)" "$MAIN1"
expect_eq "ActiveState after reload" "$(show ActiveState)" active
expect_eq "decrypt after reload" "$(as payments kmsctl decrypt --key payments.pan --aad order-42 "$CT1")" "$PLAINTEXT"

step "rotation and backup by the officer"
as alice KMSD_OTP="$(totp "$T0")" kmsctl key rotate payments.pan
CT2=$(printf '%s' "$PLAINTEXT" | as payments kmsctl encrypt --key payments.pan --aad order-44 -)
as alice KMSD_OTP="$(totp $((T0 + 1)))" kmsctl backup /var/lib/alice/kmsd.kmsdbak
[ -s /var/lib/alice/kmsd.kmsdbak ] || fail "empty backup"
expect_eq "ActiveState after the data path, rotation, backup and reload" "$(show ActiveState)" active
expect_eq "MainPID after the data path" "$(show MainPID)" "$MAIN1"

step "systemctl restart keeps the data"
systemctl restart kmsd
expect_eq "ActiveState after restart" "$(show ActiveState)" active
[ "$(show MainPID)" != "$MAIN1" ] || fail "restart kept the old process"
expect_eq "decrypt v1 after restart" "$(as payments kmsctl decrypt --key payments.pan --aad order-42 "$CT1")" "$PLAINTEXT"
expect_eq "decrypt v2 after restart" "$(as payments kmsctl decrypt --key payments.pan --aad order-44 "$CT2")" "$PLAINTEXT"
as alice kmsctl status

step "the watchdog is fed (WatchdogSec=2s, 10 s later still active, no restart)"
printf '[Service]\nWatchdogSec=2s\n' >/etc/systemd/system/kmsd.service.d/50-test-watchdog.conf
systemctl daemon-reload
systemctl restart kmsd
expect_eq "WatchdogUSec" "$(show WatchdogUSec)" 2s
MAIN2=$(show MainPID)
sleep 10
expect_eq "ActiveState 10 s later" "$(show ActiveState)" active
expect_eq "MainPID 10 s later" "$(show MainPID)" "$MAIN2"
expect_eq "NRestarts" "$(show NRestarts)" 0
expect_eq "decrypt with the watchdog on" "$(as payments kmsctl decrypt --key payments.pan --aad order-44 "$CT2")" "$PLAINTEXT"

step "systemctl stop ends with Result=success"
systemctl stop kmsd
expect_eq "Result" "$(show Result)" success
expect_eq "ExecMainCode (1 = exited)" "$(show ExecMainCode)" 1
expect_eq "ExecMainStatus" "$(show ExecMainStatus)" 0

step "no process of the unit died from a system call outside the filter"
# The kernel's SECCOMP audit records (sig=31) name the executable.
if journalctl -k --no-pager -o cat | grep -E 'SECCOMP.*exe="(/usr/bin/kmsd|/usr/bin/kill)"'; then
  fail "a kmsd process hit the system call filter"
fi
if journalctl -u kmsd --no-pager -o cat | grep -E 'code=(killed|dumped)|status=31/SYS|SIGSYS|Watchdog timeout'; then
  fail "the journal shows a killed process"
fi
if journalctl -u kmsd --no-pager -o cat | grep 'Failed with result'; then fail "a run of kmsd failed"; fi

step "the journal carries the structured request fields"
journalctl -u kmsd -o json --no-pager | python3 -c '
import json, sys
want = {
    ("spiffe://bank.internal/officer/alice", "key.create", "payments.pan", "OK"),
    ("spiffe://bank.internal/officer/alice", "key.rotate", "payments.pan", "OK"),
    ("spiffe://bank.internal/officer/alice", "backup", "", "OK"),
    ("spiffe://bank.internal/payments", "decrypt", "payments.pan", "InvalidArgument"),
}
seen = set()
for line in sys.stdin:
    e = json.loads(line)
    if e.get("MESSAGE") != "request":
        continue
    for f in ("KMSD_IDENTITY", "KMSD_OP", "KMSD_KEY", "KMSD_CODE", "KMSD_MICROS", "KMSD_REQUEST_ID", "KMSD_PEER"):
        if f not in e:
            sys.exit("request entry without %s: %r" % (f, e))
    if not e["KMSD_MICROS"].isdigit():
        sys.exit("KMSD_MICROS is not a number: %r" % e)
    seen.add((e["KMSD_IDENTITY"], e["KMSD_OP"], e["KMSD_KEY"], e["KMSD_CODE"]))
missing = want - seen
if missing:
    sys.exit("request entries missing from the journal: %r (seen %r)" % (missing, seen))
print("request entries:", len(seen), "distinct; all expected ones present")
'

step "nothing secret in the journal (plaintext, master key, TOTP secret)"
journalctl -o export --no-pager >/run/journal.export
python3 - /run/journal.export "$PLAINTEXT" "$MK_HEX" "$TOTP_SECRET" <<'PY'
import base64, sys
data = open(sys.argv[1], "rb").read()
plaintext, mk_hex, totp = sys.argv[2], sys.argv[3], sys.argv[4]
mk = bytes.fromhex(mk_hex)
totp_raw = base64.b32decode(totp + "=" * (-len(totp) % 8))
needles = {
    "plaintext": plaintext.encode(),
    "plaintext (base64)": base64.b64encode(plaintext.encode()),
    "master key (raw)": mk,
    "master key (hex)": mk_hex.encode(),
    "master key (HEX)": mk_hex.upper().encode(),
    "master key (base64)": base64.b64encode(mk).rstrip(b"="),
    "master key (base64url)": base64.urlsafe_b64encode(mk).rstrip(b"="),
    "TOTP secret (base32)": totp.encode(),
    "TOTP secret (raw)": totp_raw,
    "TOTP secret (hex)": totp_raw.hex().encode(),
}
found = []
for name, n in needles.items():
    at = data.find(n)
    if at >= 0:
        field = data[data.rfind(b"\n", 0, at) + 1:at][:40]
        found.append("%s (in %r...)" % (name, field))
if found:
    sys.exit("secrets in the journal: %s" % "; ".join(found))
if len(data) < 1000 or b"kmsd ready" not in data:
    sys.exit("the journal export looks empty")
print("journal: %d bytes, none of %d secret forms present" % (len(data), len(needles)))
PY
if grep -qF "$PLAINTEXT" /var/log/kmsd/audit.log; then fail "plaintext in the audit log"; fi

echo "operator guide under systemd: all steps passed"
