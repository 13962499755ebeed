#!/usr/bin/env bash
# A three-member Regent cluster on this machine, on 127.0.0.1 only.
#
#   scripts/demo.sh          build regent (release), start etcd + 3 members in the background,
#                            wait for a leader, print the cluster; everything keeps running
#   scripts/demo.sh start kubernetes
#                            the same with the Kubernetes API test server as the DCS instead of
#                            etcd (one Pod per member; kubectl shows the leader ConfigMaps and
#                            the Pods' role labels)
#   scripts/demo.sh status   print the cluster again
#   scripts/demo.sh stop     stop the members (SIGTERM, then SIGKILL), their Postgres and etcd,
#                            and delete the demo directory
#
# Installs etcd-server and curl with apt-get if they are missing (needs root for that). Run as
# root, the members run as the postgres user, as Postgres refuses to run as root.
#
# Settings (environment): DEMO_DIR (default /tmp/regent-demo), DEMO_ETCD_PORT (23790),
# DEMO_KUBE_PORT (16080, the Kubernetes API test server),
# DEMO_API_PORT (18008: members use 18008..18010), DEMO_PG_PORT (15432: 15432..15434),
# DEMO_REGENT_BIN (use this binary instead of building one).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
demo_dir="${DEMO_DIR:-/tmp/regent-demo}"
etcd_port="${DEMO_ETCD_PORT:-23790}"
etcd_peer_port=$((etcd_port + 1))
kube_port="${DEMO_KUBE_PORT:-16080}"
dcs=etcd
api_base="${DEMO_API_PORT:-18008}"
pg_base="${DEMO_PG_PORT:-15432}"
members=3
scope=demo
pg_bin=/usr/lib/postgresql/15/bin

say() { printf '%s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

pid_from() { [ -f "$1" ] && head -n 1 "$1" || true; }

install_missing() {
  local packages=()
  [ -x /usr/bin/etcd ] || packages+=(etcd-server)
  command -v curl >/dev/null || packages+=(curl)
  [ "${#packages[@]}" -eq 0 ] && return
  [ "$(id -u)" = 0 ] || die "missing ${packages[*]}: install them (apt-get install ${packages[*]}) or run as root"
  local policy=/usr/sbin/policy-rc.d created=0
  # Keep the package from starting a system etcd on the default ports.
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 755 "$policy"; created=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}"
  [ "$created" = 1 ] && rm -f "$policy"
  return 0
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Replace the current (sub)shell by the command, run as the postgres user when we are root:
# started with `&`, $! is then the command's own pid.
exec_as_pg() {
  if [ "$(id -u)" = 0 ]; then
    exec setpriv --reuid=postgres --regid=postgres --clear-groups -- "$@"
  else
    exec "$@"
  fi
}

pretty() {
  if command -v python3 >/dev/null; then python3 -m json.tool; elif command -v jq >/dev/null; then jq .; else cat; echo; fi
}

dcs_section() {
  if [ "$dcs" = kubernetes ]; then
    printf 'kubernetes:\n  namespace: default\n  labels: {application: regent-demo}\n'
  else
    printf 'namespace: /service\netcd3:\n  hosts: [127.0.0.1:%s]\n' "$etcd_port"
  fi
}

kubeconfig() {
  local path=$1 token=$2
  cat > "$path" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: demo, cluster: {server: "http://127.0.0.1:$kube_port"}}]
users: [{name: demo, user: {token: $token}}]
contexts: [{name: demo, context: {cluster: demo, user: demo, namespace: default}}]
current-context: demo
YAML
  chmod 644 "$path"
}

start_etcd() {
  say "starting etcd on 127.0.0.1:$etcd_port..."
  /usr/bin/etcd --name demo --data-dir "$demo_dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "demo=http://127.0.0.1:$etcd_peer_port" --initial-cluster-state new \
    > "$demo_dir/etcd.log" 2>&1 &
  echo $! > "$demo_dir/etcd.pid"
  local deadline=$((SECONDS + 30))
  until curl -sf --max-time 1 "http://127.0.0.1:$etcd_port/health" >/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || die "etcd did not come up; see $demo_dir/etcd.log"
    sleep 0.2
  done
}

# The Kubernetes API test server, and one Pod per member (a member's name is its Pod's name).
start_kube() {
  say "starting the Kubernetes API test server on 127.0.0.1:$kube_port..."
  "$demo_dir/bin/regent-kube-apiserver" --listen "127.0.0.1:$kube_port" --quiet > "$demo_dir/kube-apiserver.log" 2>&1 &
  echo $! > "$demo_dir/kube.pid"
  local deadline=$((SECONDS + 30)) i
  until curl -sf --max-time 1 "http://127.0.0.1:$kube_port/healthz" >/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || die "the API test server did not come up; see $demo_dir/kube-apiserver.log"
    sleep 0.2
  done
  kubeconfig "$demo_dir/kubeconfig" demo-admin
  for ((i = 0; i < members; i++)); do
    KUBECONFIG="$demo_dir/kubeconfig" kubectl run "member-$i" --image=postgres:15 \
      --labels="application=regent-demo,cluster-name=$scope" >/dev/null
    # Pods stay Pending until someone reports them scheduled: play the kubelet.
    KUBECONFIG="$demo_dir/kubeconfig" kubectl patch pod "member-$i" --subresource=status --type=merge \
      -p "{\"status\":{\"phase\":\"Running\",\"podIP\":\"10.0.0.$((i + 1))\",\"containerStatuses\":[{\"name\":\"member-$i\",\"ready\":true,\"restartCount\":0,\"image\":\"postgres:15\",\"imageID\":\"\",\"started\":true,\"state\":{\"running\":{}}}]}}" >/dev/null
  done
}

write_config() {
  local i=$1 dir="$demo_dir/member-$i" api=$((api_base + i)) pg=$((pg_base + i))
  mkdir -p "$dir"
  cat > "$dir/regent.yml" <<YAML
scope: $scope
name: member-$i
restapi:
  listen: 127.0.0.1:$api
  connect_address: 127.0.0.1:$api
$(dcs_section "$i")
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 5
    retry_timeout: 5
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_log_hints: 'on'
        hot_standby: 'on'
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 128MB
  initdb:
    - encoding: UTF8
    - data-checksums
postgresql:
  listen: 127.0.0.1:$pg
  connect_address: 127.0.0.1:$pg
  data_dir: $dir/data
  bin_dir: $pg_bin
  pgpass: $dir/pgpass
  authentication:
    superuser: {username: postgres, password: secret}
    replication: {username: replicator, password: rep-pass}
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 md5
    - host replication replicator 127.0.0.1/32 md5
  parameters:
    unix_socket_directories: '$dir'
    shared_buffers: 32MB
tags: {}
YAML
  [ "$dcs" = kubernetes ] && kubeconfig "$dir/kubeconfig" "member-$i"
  chmod 700 "$dir"
  if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$dir"; fi
}

# Number of members that GET /cluster (asked of the first member that answers) shows streaming.
streaming_replicas() {
  local i body
  for ((i = 0; i < members; i++)); do
    if body=$(curl -sf --max-time 2 "http://127.0.0.1:$((api_base + i))/cluster"); then
      grep -oE '"state": ?"streaming"' <<< "$body" | wc -l
      return 0
    fi
  done
  echo 0
}

print_status() {
  local leader="" i code
  for ((i = 0; i < members; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$((api_base + i))/primary" || true)
    [ "$code" = 200 ] && leader="member-$i"
  done
  say "leader: ${leader:-none}"
  for ((i = 0; i < members; i++)); do
    if curl -sf --max-time 2 "http://127.0.0.1:$((api_base + i))/cluster" -o "$demo_dir/cluster.json"; then
      say "GET http://127.0.0.1:$((api_base + i))/cluster"
      pretty < "$demo_dir/cluster.json"
      return 0
    fi
  done
  say "no member answers GET /cluster"
}

print_kube_objects() {
  [ -f "$demo_dir/kubeconfig" ] || return 0
  say ""
  say "kubectl get pods -L role; kubectl get configmaps (KUBECONFIG=$demo_dir/kubeconfig)"
  KUBECONFIG="$demo_dir/kubeconfig" kubectl get pods -L role || true
  KUBECONFIG="$demo_dir/kubeconfig" kubectl get configmaps -o custom-columns='NAME:.metadata.name,LEADER:.metadata.annotations.leader,RENEWED:.metadata.annotations.renewTime' || true
}

start() {
  if [ -d "$demo_dir" ]; then
    { alive "$(pid_from "$demo_dir/etcd.pid")" || alive "$(pid_from "$demo_dir/kube.pid")"; } && die "a demo is already running in $demo_dir (scripts/demo.sh stop first)"
    rm -rf "$demo_dir"
  fi
  install_missing
  if [ "$dcs" = kubernetes ]; then command -v kubectl >/dev/null || die "kubectl is needed for the kubernetes demo"; fi
  [ -x "$pg_bin/postgres" ] || die "Postgres 15 not found in $pg_bin (apt-get install postgresql-15)"
  for port in "$etcd_port" "$etcd_peer_port" "$kube_port" $(seq "$api_base" $((api_base + members - 1))) $(seq "$pg_base" $((pg_base + members - 1))); do
    port_busy "$port" && die "port $port on 127.0.0.1 is in use (see the DEMO_*_PORT settings)"
  done

  local binary="${DEMO_REGENT_BIN:-}"
  if [ -z "$binary" ]; then
    say "building regent (release)..."
    (cd "$repo" && cargo build --release -p agent)
    binary="${CARGO_TARGET_DIR:-$repo/target}/release/regent"
  fi
  mkdir -p "$demo_dir/bin"
  chmod 755 "$demo_dir" "$demo_dir/bin"
  # A copy the postgres user can always execute, wherever the repository lives.
  install -m 755 "$binary" "$demo_dir/bin/regent"
  if [ "$dcs" = kubernetes ]; then
    say "building the Kubernetes API test server (release)..."
    (cd "$repo" && cargo build --release -p regent-tests --bin regent-kube-apiserver)
    install -m 755 "${CARGO_TARGET_DIR:-$repo/target}/release/regent-kube-apiserver" "$demo_dir/bin/"
    start_kube
  else
    start_etcd
  fi

  local i deadline
  for ((i = 0; i < members; i++)); do
    write_config "$i"
    (
      cd "$demo_dir/member-$i"
      export HOME="$demo_dir/member-$i"
      [ "$dcs" = kubernetes ] && export KUBECONFIG="$demo_dir/member-$i/kubeconfig"
      exec_as_pg "$demo_dir/bin/regent" "$demo_dir/member-$i/regent.yml" > "$demo_dir/member-$i.log" 2>&1 < /dev/null &
      echo $! > "$demo_dir/member-$i.pid"
    )
    say "member-$i: REST 127.0.0.1:$((api_base + i)), Postgres 127.0.0.1:$((pg_base + i)), log $demo_dir/member-$i.log"
  done

  say "waiting for a leader..."
  deadline=$((SECONDS + 180))
  # No `print_status | grep -q` here: grep exiting early would fail the pipeline (pipefail).
  until [[ "$(print_status 2>/dev/null)" == *"leader: member-"* ]]; do
    [ "$SECONDS" -lt "$deadline" ] || { print_status; die "no leader after 180 s; see $demo_dir/member-*.log"; }
    any_member_alive || die "every member exited; see $demo_dir/member-*.log"
    sleep 1
  done
  say "waiting for the replicas..."
  deadline=$((SECONDS + 120))
  until [ "$(streaming_replicas)" -eq $((members - 1)) ]; do
    [ "$SECONDS" -lt "$deadline" ] || { say "(not every replica is streaming after 120 s)"; break; }
    sleep 1
  done
  print_status
  print_kube_objects
  say ""
  say "connect:  psql 'postgresql://postgres:secret@127.0.0.1:$pg_base,127.0.0.1:$((pg_base + 1)),127.0.0.1:$((pg_base + 2))/postgres?target_session_attrs=read-write'"
  say "status:   scripts/demo.sh status"
  say "stop:     scripts/demo.sh stop"
}

any_member_alive() {
  local i
  for ((i = 0; i < members; i++)); do
    alive "$(pid_from "$demo_dir/member-$i.pid")" && return 0
  done
  return 1
}

stop_pid() {
  local pid=$1 what=$2 waited=0
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  while alive "$pid" && [ "$waited" -lt 300 ]; do sleep 0.1; waited=$((waited + 1)); done
  if alive "$pid"; then say "$what (pid $pid) ignored SIGTERM for 30 s; killing it"; kill -KILL "$pid" 2>/dev/null || true; fi
}

stop() {
  [ -d "$demo_dir" ] || { say "no demo in $demo_dir"; return 0; }
  local i pid
  for ((i = 0; i < members; i++)); do
    stop_pid "$(pid_from "$demo_dir/member-$i.pid")" "member-$i"
  done
  # Postgres left behind by a member that was killed.
  for ((i = 0; i < members; i++)); do
    pid=$(pid_from "$demo_dir/member-$i/data/postmaster.pid")
    stop_pid "$pid" "postgres of member-$i"
  done
  stop_pid "$(pid_from "$demo_dir/etcd.pid")" etcd
  stop_pid "$(pid_from "$demo_dir/kube.pid")" "Kubernetes API test server"
  rm -rf "$demo_dir"
  say "demo stopped and $demo_dir removed"
}

case "${1:-start}" in
  start)
    case "${2:-etcd}" in
      etcd) dcs=etcd ;;
      kubernetes) dcs=kubernetes ;;
      *) die "usage: scripts/demo.sh start [etcd|kubernetes]" ;;
    esac
    start ;;
  status) [ -d "$demo_dir" ] || die "no demo in $demo_dir"; print_status; print_kube_objects ;;
  stop) stop ;;
  *) die "usage: scripts/demo.sh [start [etcd|kubernetes]|status|stop]" ;;
esac
