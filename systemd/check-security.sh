#!/usr/bin/env bash
# Fails if systemd-analyze rates the shipped kmsd.service above the bar.
set -euo pipefail
bar=${1:-1.0}
unit="$(dirname "$0")/kmsd.service"
out=$(systemd-analyze security --offline=true "$unit" 2>&1)
score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for kmsd.service: \([0-9.]*\).*/\1/p')
[ -n "$score" ] || { printf '%s\n' "$out" >&2; echo "could not read the exposure level" >&2; exit 2; }
echo "kmsd.service exposure: $score (bar $bar)"
awk -v s="$score" -v b="$bar" 'BEGIN { exit !(s <= b) }'
