#!/usr/bin/env bash
# Seeded fault campaign against a real 3-member cluster (real Postgres, etcd or the Kubernetes
# API test server) in network namespaces of its own. See docs/reliability.md.
#
#   scripts/chaos.sh --dcs etcd|kubernetes --mode async|sync --faults N --seed S \
#                    [--agent regent|patroni|both] [--ttl 20 --loop-wait 2 --retry-timeout 5]
#                    [--flaky-seconds 120] [--recover-timeout 180] [--deadline SECONDS]
#                    [--slot 0-9]
#
# Needs root (namespaces, iptables, tmpfs), ip, iptables, /usr/bin/etcd, Postgres 15 and the
# Python of the Patroni virtualenv .ci/run installs (/opt/regent-patroni; it has psycopg2).
# Exits 0 when every invariant holds, 1 when one is violated, 2 when the campaign could not run.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${CHAOS_PYTHON:-/opt/regent-patroni/bin/python3}"

[ "$(id -u)" = 0 ] || { echo "chaos: must run as root" >&2; exit 2; }
for tool in ip iptables setpriv mount; do
  command -v "$tool" >/dev/null || { echo "chaos: $tool is missing" >&2; exit 2; }
done
"$python" -c 'import psycopg2' 2>/dev/null || {
  echo "chaos: $python cannot import psycopg2 (run .ci/run, or set CHAOS_PYTHON)" >&2; exit 2; }

# One campaign per slot: campaigns of one slot share its bridge and addresses.
slot=0
previous=""
for arg in "$@"; do
  case "$previous" in --slot) slot="$arg" ;; esac
  case "$arg" in --slot=*) slot="${arg#--slot=}" ;; esac
  previous="$arg"
done
case "$slot" in [0-9]) ;; *) echo "chaos: --slot must be 0 … 9" >&2; exit 2 ;; esac
exec 9>"/run/regent-chaos-$slot.lock"
flock -n 9 || { echo "chaos: another campaign is running in slot $slot" >&2; exit 2; }

# Whatever happens to the Python process, leave no namespace, bridge, rule or mount of this
# slot behind.
cleanup() {
  "$python" - "$repo/scripts/chaos" "$slot" <<'PY' || true
import sys, subprocess
sys.path.insert(0, sys.argv[1])
import net
net.configure(int(sys.argv[2]))
net.Network([]).destroy(quiet=True)
mounts = subprocess.run(["findmnt", "-rn", "-o", "SOURCE,TARGET", "-t", "tmpfs"], capture_output=True, text=True).stdout
for line in mounts.splitlines():
    source, _, target = line.partition(" ")
    if source.startswith(net.NS_PREFIX):  # the members' data volumes
        subprocess.run(["umount", "-l", target], check=False)
PY
}
trap cleanup EXIT

status=0
"$python" "$repo/scripts/chaos/campaign.py" "$@" || status=$?
exit "$status"
