#!/usr/bin/env bash
# Builds every fuzz target once and runs each for a short fixed time from
# its committed seed corpus (fuzz/corpus/<target>/, read-only: new inputs go
# to a scratch directory). Fails if any target crashes; the crashing input
# is left in fuzz/artifacts/<target>/ (copy it to fuzz/regressions/<target>/
# so tests/fuzz_regressions.rs replays it on stable, then fix the bug).
#   FUZZ_SECONDS   seconds per target (default 10)
#   FUZZ_SEED      libFuzzer seed (default 1: a CI run is reproducible; explore
#                  with other seeds and longer runs outside CI)
set -euo pipefail
cd "$(dirname "$0")"
secs="${FUZZ_SECONDS:-10}"
seed="${FUZZ_SEED:-1}"

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "WARNING: no nightly toolchain: the fuzz targets are NOT built or run (rustup toolchain install nightly)" >&2
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

start=$(date +%s)
cargo +nightly fuzz build
built=$(date +%s)
echo "fuzz: built all targets in $((built - start)) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
status=0
for target in $(cargo +nightly fuzz list); do
  mkdir -p "$scratch/$target" "corpus/$target"
  if ! cargo +nightly fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
      -max_total_time="$secs" -seed="$seed" -timeout=10 -rss_limit_mb=2048 -print_final_stats=0 >"$scratch/$target.log" 2>&1; then
    echo "fuzz: $target FAILED (input in fuzz/artifacts/$target/):" >&2
    tail -40 "$scratch/$target.log" >&2
    status=1
  else
    echo "fuzz: $target ok ($(grep -o 'DONE.*' "$scratch/$target.log" | tail -1 || true))"
  fi
done
echo "fuzz: total $(( $(date +%s) - start )) s"
exit $status
