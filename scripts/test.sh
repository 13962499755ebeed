#!/usr/bin/env bash
# Build the workspace, run the unit tests (in parallel), then the integration tests of
# regent-tests one at a time: each starts etcd and several Postgres instances, and their timing
# assertions need the machine's 2 cores to themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --all-targets

# As root, the tests run regent (and so Postgres) as the postgres user, which must be able to
# reach the binary: make every directory from / down to target/debug searchable by others.
if [ "$(id -u)" = 0 ]; then
  dir="$(realpath "$target_dir")/debug"
  while [ "$dir" != "/" ]; do
    chmod o+x "$dir"
    dir="$(dirname "$dir")"
  done
fi
export REGENT_BIN="$target_dir/debug/regent"

# Keep every runner's output so the totals can be printed at the end.
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
status=0
cargo test --workspace --exclude regent-tests 2>&1 | tee -a "$results" || status=1
cargo test -p regent-tests --no-fail-fast -- --test-threads=1 --nocapture 2>&1 | tee -a "$results" || status=1

# The campaign checker's rules on made-up recordings.
checker_out="$(python3 -m unittest discover -s scripts/chaos -p 'test_*.py' 2>&1)" && checker_status=0 || checker_status=$?
echo "$checker_out"
checker_count="$(sed -n 's/^Ran \([0-9]*\) tests\{0,1\} in.*/\1/p' <<< "$checker_out")"
if [ "$checker_status" = 0 ]; then
  echo "test result: ok. ${checker_count:-0} passed; 0 failed (campaign checker)" | tee -a "$results"
else
  echo "test result: FAILED. 0 passed; ${checker_count:-1} failed (campaign checker)" | tee -a "$results"
  status=1
fi

# A short seeded fault campaign on each DCS (docs/reliability.md): split-brain writes, lost
# acknowledged writes in synchronous_mode or a member that never recovers fail the run. A small
# ttl keeps the two campaigns within about ten minutes together.
chaos_args=(--faults 20 --seed 20261207 --ttl 8 --loop-wait 1 --retry-timeout 3 --flaky-seconds 15
  --recover-timeout 60 --deadline 330 --regent-bin "$REGENT_BIN"
  --kube-apiserver-bin "$target_dir/debug/regent-kube-apiserver")
for chaos_run in "etcd sync" "kubernetes async"; do
  read -r chaos_dcs chaos_mode <<< "$chaos_run"
  if scripts/chaos.sh --dcs "$chaos_dcs" --mode "$chaos_mode" "${chaos_args[@]}"; then
    echo "test result: ok. 1 passed; 0 failed (fault campaign, $chaos_dcs, $chaos_mode)" | tee -a "$results"
  else
    echo "test result: FAILED. 0 passed; 1 failed (fault campaign, $chaos_dcs, $chaos_mode)" | tee -a "$results"
    status=1
  fi
done

# One closing line with the totals of every `test result:` line above.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$results"
exit "$status"
