#!/bin/bash
# sandbox.sh SCRIPT [TIMEOUT_S]
#
# Boots a real systemd as PID 1 in private mount, PID and network namespaces,
# over a throwaway overlay of this machine's root file system (the upper layer on a
# tmpfs), runs SCRIPT inside it as root, prints its output, exits with its
# status and tears everything down. SCRIPT sees the same paths as the host
# (the repository and cargo's target directory included) and inherits this
# environment; nothing it writes reaches the host: not /etc, not /var, not
# /tmp, not the repository, not the host's network (the sandbox has only its
# own loopback, up; SCRIPT may add addresses to it). Needs root (CI runs as
# root). Used by tests/systemd_real.rs with systemd/operator-guide-test.sh and
# systemd/etcd-dropin-test.sh.
#
# Why the overlay and pivot_root matter: systemd booted on the host's own
# root runs systemd-tmpfiles, which empties /tmp and rewrites other host
# state. Never boot it without them.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "sandbox.sh: needs root" >&2; exit 2; }
[ $# -ge 1 ] || { echo "usage: sandbox.sh SCRIPT [TIMEOUT_S]" >&2; exit 2; }
SCRIPT=$(readlink -f "$1")
LIMIT=${2:-300}
[ -x "$SCRIPT" ] || { echo "sandbox.sh: $1 is not an executable file" >&2; exit 2; }
SYSTEMD=/lib/systemd/systemd
for tool in unshare nsenter pivot_root timeout ip "$SYSTEMD"; do
  command -v "$tool" >/dev/null || { echo "sandbox.sh: $tool is missing" >&2; exit 2; }
done
case "$SCRIPT" in
  /tmp/* | /run/*) echo "sandbox.sh: $SCRIPT is under /tmp or /run, which the sandbox replaces" >&2; exit 2 ;;
esac

W=$(mktemp -d /var/tmp/kmsd-sandbox.XXXXXX)
# The boot script runs as PID 1 of the new PID namespace, in the new mount
# namespace; after pivot_root it execs systemd.
cat >"$W/boot" <<BOOT
#!/bin/bash
set -eu
# A network namespace of its own: units started inside never touch the
# host's interfaces, and addresses a test adds stay inside.
ip link set lo up
mount --make-rprivate /
mkdir -p $W/lower $W/t
mount --bind / $W/lower
mount -t tmpfs -o size=2g,mode=0755 tmpfs $W/t
mkdir -p $W/t/upper $W/t/work $W/t/merged
mount -t overlay overlay -o lowerdir=$W/lower,upperdir=$W/t/upper,workdir=$W/t/work $W/t/merged
M=$W/t/merged
mount --rbind /dev \$M/dev
mount -t proc proc \$M/proc
mount -t sysfs sysfs \$M/sys
mount -t cgroup2 none \$M/sys/fs/cgroup
mount -t tmpfs -o mode=0755 tmpfs \$M/run
mount -t tmpfs -o mode=1777 tmpfs \$M/tmp
mkdir -p \$M/oldroot
cd \$M
pivot_root . oldroot
umount -l /oldroot
# systemd expects shared propagation (credentials are mounted from a child
# namespace); the peers all live inside this namespace.
mount --make-rshared /
exec $SYSTEMD --system --log-target=console --log-level=warning
BOOT
chmod +x "$W/boot"

timeout -s KILL "$LIMIT" unshare --mount --pid --net --fork --kill-child "$W/boot" >"$W/console.log" 2>&1 &
OUTER=$!
PID1=
cleanup() {
  set +e
  # Killing PID 1 of the namespace kills every process in it; the tmpfs and
  # the overlay vanish with the mount namespace.
  [ -n "$PID1" ] && kill -9 "$PID1" 2>/dev/null
  kill -9 "$OUTER" 2>/dev/null
  wait "$OUTER" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT

# systemd is a descendant of `timeout` (timeout -> unshare -> boot, which
# execs systemd): find it, then wait for the boot to finish.
booted=
for _ in $(seq 1 150); do
  if [ -z "$PID1" ]; then
    for child in $(pgrep -P "$OUTER" 2>/dev/null || true); do
      PID1=$(pgrep -P "$child" -x systemd 2>/dev/null | head -1 || true)
      [ -n "$PID1" ] && break
    done
  fi
  if [ -n "$PID1" ]; then
    state=$(nsenter -t "$PID1" -m -p systemctl is-system-running --wait 2>/dev/null || true)
    case "$state" in
      running | degraded) booted=$state; break ;;
    esac
  fi
  sleep 0.2
done
if [ -z "$booted" ]; then
  echo "sandbox.sh: systemd did not boot; console:" >&2
  cat "$W/console.log" >&2
  exit 3
fi
[ "$booted" = running ] || echo "sandbox.sh: note: the sandbox booted $booted" >&2

rc=0
nsenter -t "$PID1" -m -p -n "$SCRIPT" || rc=$?
exit $rc
