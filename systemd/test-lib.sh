# Shared by the scripts systemd/sandbox.sh runs under a real systemd
# (operator-guide-test.sh, etcd-dropin-test.sh): sourced after REPO is set,
# never run. DIAG_UNITS names one more unit to show when a step fails.
: "${KMSD_BIN:?KMSD_BIN must name the directory with kmsd and kmsctl}"
: "${KMSD_TEST_PKI:?KMSD_TEST_PKI must name the directory with the test certificates}"
KMSD_BIN=$(readlink -f "$KMSD_BIN")
PKI=$(readlink -f "$KMSD_TEST_PKI")

# Refuse to run anywhere but in the sandbox: systemd as PID 1 of this PID
# namespace, and / an overlay.
if [ "$(cat /proc/1/comm)" != systemd ] || [ "$(findmnt -n -o FSTYPE /)" != overlay ]; then
  echo "$(basename "$0"): refusing to run outside systemd/sandbox.sh" >&2
  exit 2
fi

STEP=""
step() {
  STEP=$*
  echo "== $STEP"
}
diagnose() {
  echo "---- FAILED at: $STEP"
  # shellcheck disable=SC2086 # DIAG_UNITS: empty or one unit name
  systemctl status --no-pager kmsd.service kmsd.socket ${DIAG_UNITS:-} 2>&1 | head -60 || true
  systemctl show -p Result -p NRestarts -p ExecMainCode -p ExecMainStatus kmsd.service || true
  ls -la /run/kmsd 2>&1 || true
  journalctl --no-pager -n 60 -u kmsd.service -u kmsd.socket ${DIAG_UNITS:+-u "$DIAG_UNITS"} 2>&1 || true
}
trap 'rc=$?; [ $rc = 0 ] || diagnose; exit $rc' EXIT
fail() {
  echo "FAIL: $*"
  exit 1
}
expect_eq() { # what got want
  [ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"
}
show() { systemctl show -P "$1" kmsd.service; }

# The guide's helper for offline commands (README: kmsd_offline).
kmsd_offline() {
  systemd-run --quiet --pipe --wait --collect -p User=kmsd -p UMask=0077 \
    -p LoadCredentialEncrypted=master-key:/etc/kmsd/master-key.cred \
    -p StateDirectory=kmsd -p StateDirectoryMode=0700 -p LogsDirectory=kmsd -p LogsDirectoryMode=0700 \
    /usr/bin/kmsd "$@"
}

totp() { # the RFC 6238 code of $TOTP_SECRET for time step $1
  python3 - "$TOTP_SECRET" "$1" <<'PY'
import base64, hashlib, hmac, struct, sys
secret = base64.b32decode(sys.argv[1] + "=" * (-len(sys.argv[1]) % 8))
mac = hmac.new(secret, struct.pack(">Q", int(sys.argv[2])), hashlib.sha1).digest()
off = mac[-1] & 15
print("%06d" % ((struct.unpack(">I", mac[off:off + 4])[0] & 0x7FFFFFFF) % 1000000))
PY
}
