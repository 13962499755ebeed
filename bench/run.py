#!/usr/bin/env python3
"""Side-by-side benchmark of Regent and Patroni on a local 3-member cluster.

Both implementations get the very same generated Patroni YAML configuration
(Regent is a drop-in), their own fresh DCS (a single-node etcd, or with
`--dcs kubernetes` the Kubernetes API test server), and the same measurements:
kill -9 failover, graceful (SIGTERM) handover, switchover through POST /switchover,
idle RSS and, on Kubernetes, API requests per member per minute at idle.
See bench/README.md for what each number means.

Requires: Python 3.9+, psycopg2, /usr/bin/etcd, PostgreSQL 15 binaries,
`patroni` importable by this interpreter, and a built `regent` binary (and
`regent-kube-apiserver` for --dcs kubernetes).
"""

import argparse
import base64
import compileall
import http.client
import datetime
import functools
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

try:
    import psycopg2
except ImportError:  # pragma: no cover - environment problem, reported clearly
    sys.exit("psycopg2 is required: pip install psycopg2-binary")

PG_BIN_DIR = "/usr/lib/postgresql/15/bin"
ETCD_BIN = "/usr/bin/etcd"
SCOPE = "bench"
NAMESPACE = "/service/"
LEADER_KEY = f"{NAMESPACE}{SCOPE}/leader"
KUBE_NAMESPACE = "default"
KUBE_LABELS = {"application": "regent-bench"}
KUBE_SELECTOR = ",".join(f"{k}={v}" for k, v in {**KUBE_LABELS, "cluster-name": SCOPE}.items())
# The bench's own Kubernetes API requests carry this token, so they are counted apart.
KUBE_HARNESS_TOKEN = "bench-harness"
MEMBER_NAMES = ("m1", "m2", "m3")
SUPERUSER, SUPERUSER_PASSWORD = "postgres", "secret"
REPLICATION_USER, REPLICATION_PASSWORD = "replicator", "rep-pass"
DEFAULT_DCS = {"ttl": 10, "loop_wait": 2, "retry_timeout": 3}
WRITE_INTERVAL = 0.020
POSTGRES_USER = "postgres"

BOOTSTRAP_TIMEOUT = 180.0
FAILOVER_TIMEOUT = 90.0
REJOIN_TIMEOUT = 120.0
SHUTDOWN_TIMEOUT = 60.0

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The chaos campaign's helpers (scripts/chaos/common.py): the same log lines, wait loop and
# kubeconfig. Its error type is the bench's: a measurement or cluster operation did not reach its
# expected state.
sys.path.append(os.path.join(REPO_ROOT, "scripts", "chaos"))
import common as chaos  # noqa: E402

BenchError = chaos.CampaignError
log = chaos.log
# Polled more often than the campaign does: bench timings are finer.
wait_until = functools.partial(chaos.wait_until, interval=0.05)


# --------------------------------------------------------------------------
# Users, ports, processes
# --------------------------------------------------------------------------

class RunAs:
    """Who the members run as: postgres when we are root (Postgres refuses root)."""

    def __init__(self):
        self.uid = self.gid = None
        if os.geteuid() == 0:
            import pwd

            try:
                entry = pwd.getpwnam(POSTGRES_USER)
            except KeyError:
                sys.exit(f"running as root but there is no '{POSTGRES_USER}' user to run members as")
            self.uid, self.gid = entry.pw_uid, entry.pw_gid

    def popen_kwargs(self):
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path):
        if self.uid is not None:
            os.chown(path, self.uid, self.gid)

    def can_execute(self, argv, env=None):
        """True when `argv` runs successfully as the member user."""
        try:
            result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    timeout=60, cwd="/", **self.popen_kwargs())
        except (OSError, subprocess.SubprocessError):
            return False
        return result.returncode == 0


def free_ports(count):
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def read_proc_stat(pid):
    """(comm, state, ppid) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            raw = stat_file.read().decode(errors="replace")
    except OSError:
        return None
    # comm is in parentheses and may contain spaces; fields after the last ')'.
    close = raw.rfind(")")
    comm = raw[raw.find("(") + 1:close]
    fields = raw[close + 2:].split()
    return comm, fields[0], int(fields[1])


def process_alive(pid):
    stat = read_proc_stat(pid)
    return stat is not None and stat[1] not in ("Z", "X")


def children_map():
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_proc_stat(int(entry))
            if stat is not None:
                children.setdefault(stat[2], []).append(int(entry))
    return children


def descendants(pid, children=None):
    children = children if children is not None else children_map()
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def is_postgres_process(pid):
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = ""
    if exe.startswith(PG_BIN_DIR + "/"):
        return True
    stat = read_proc_stat(pid)
    return stat is not None and stat[0] in ("postgres", "postmaster", "pg_rewind", "pg_basebackup",
                                            "pg_ctl", "initdb")


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as status_file:
            for line in status_file:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0  # kernel threads / zombies have no VmRSS


def kill_quietly(pid, sig):
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_and_reap(process):
    if process and process.poll() is None:
        process.kill()
        process.wait()


def tail(path, lines=40):
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError as error:
        return f"<cannot read {path}: {error}>"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------
# Minimal YAML emitter (block style; strings are JSON-quoted, valid YAML)
# --------------------------------------------------------------------------

def yaml_scalar(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(str(value))


def to_yaml(value, indent=0):
    pad = " " * indent
    lines = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(item, indent + 2))
            elif isinstance(item, dict):
                lines.append(f"{pad}{key}: {{}}")
            elif isinstance(item, list):
                lines.append(f"{pad}{key}: []")
            else:
                lines.append(f"{pad}{key}: {yaml_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)) and item:
                nested = to_yaml(item, indent + 2).splitlines()
                lines.append(f"{pad}- {nested[0].lstrip()}")
                lines.extend(nested[1:])
            else:
                lines.append(f"{pad}- {yaml_scalar(item)}")
    else:
        lines.append(f"{pad}{yaml_scalar(value)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# etcd
# --------------------------------------------------------------------------

def b64(text):
    return base64.b64encode(text.encode()).decode()


class Etcd:
    def __init__(self, root_dir):
        self.dir = os.path.join(root_dir, "etcd")
        self.client_port, self.peer_port = free_ports(2)
        self.log_path = os.path.join(root_dir, "etcd.log")
        self.process = None

    @property
    def host(self):
        return f"127.0.0.1:{self.client_port}"

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        client_url = f"http://{self.host}"
        argv = [ETCD_BIN, "--name", "bench", "--data-dir", self.dir,
                "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", f"bench={peer_url}", "--initial-cluster-state", "new"]
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        wait_until(self.healthy, 30, "etcd to become healthy")

    def healthy(self):
        if self.process.poll() is not None:
            raise BenchError(f"etcd exited with {self.process.returncode}:\n{tail(self.log_path)}")
        try:
            with urllib.request.urlopen(f"http://{self.host}/health", timeout=1) as response:
                return json.loads(response.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def _post(self, path, body):
        connection = http.client.HTTPConnection("127.0.0.1", self.client_port, timeout=2)
        try:
            connection.request("POST", path, body=json.dumps(body))
            response = connection.getresponse()
            payload = response.read()
            if response.status != 200:
                raise BenchError(f"etcd {path} returned HTTP {response.status}: {payload[:200]!r}")
            return json.loads(payload)
        finally:
            connection.close()

    def leader_key(self):
        """(holder name, lease id) of the leader key, or (None, None) when absent."""
        kvs = self._post("/v3/kv/range", {"key": b64(LEADER_KEY)}).get("kvs") or []
        if not kvs:
            return None, None
        return base64.b64decode(kvs[0].get("value", "")).decode(), kvs[0].get("lease")

    def lease_time_to_live(self, lease):
        """(remaining TTL, granted TTL) of a lease; remaining is -1 once it expired."""
        payload = self._post("/v3/lease/timetolive", {"ID": lease})
        return int(payload.get("TTL", -1)), int(payload.get("grantedTTL", 0))

    def leader_lease_ttl(self):
        """TTL the leader key's lease was granted with: the agent's effective `ttl`."""
        _, lease = self.leader_key()
        if not lease or lease == "0":
            return None
        return self.lease_time_to_live(lease)[1]

    # The interface Cluster uses for either DCS.
    name = "etcd"

    def member_settings(self, member):
        """(config entries replacing the DCS section, extra environment) of one member."""
        return {"etcd3": {"hosts": [self.host]}}, {}

    def prepare_member(self, index, member, run_as):
        pass

    def holder(self):
        return self.leader_key()[0]

    def lock_ttl(self):
        return self.leader_lease_ttl()

    def watch_leader(self):
        return LeaderKeyWatch(self)

    def stop(self):
        kill_and_reap(self.process)


class LeaseMonitor(threading.Thread):
    """Samples a lease's remaining TTL until it expires, to detect keepalives after a kill."""

    def __init__(self, etcd, lease):
        super().__init__(daemon=True, name="lease-monitor")
        self.etcd, self.lease = etcd, lease
        self.samples = []  # remaining TTL in seconds, one per 0.5 s
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            try:
                remaining, _ = self.etcd.lease_time_to_live(self.lease)
            except (OSError, ValueError, BenchError):
                remaining = None
            self.samples.append(remaining)
            if remaining is not None and remaining < 0:
                return
            self.stopping.wait(0.5)

    def refreshed(self):
        """True when the remaining TTL ever went up, i.e. something kept the lease alive."""
        known = [sample for sample in self.samples if sample is not None and sample >= 0]
        return any(later > earlier for earlier, later in zip(known, known[1:]))

    def stop(self):
        self.stopping.set()
        self.join(5)



class LeaderKeyWatch(threading.Thread):
    """Streams etcd watch events on the leader key and timestamps them on receipt."""

    def __init__(self, etcd):
        super().__init__(daemon=True, name="leader-key-watch")
        self.etcd = etcd
        self.events = []  # (monotonic time, "PUT" | "DELETE", value or None)
        self.lock = threading.Lock()
        self.connection = None
        self.ready = threading.Event()
        self.stopping = False
        self.error = None

    def run(self):
        try:
            self.connection = http.client.HTTPConnection("127.0.0.1", self.etcd.client_port)
            self.connection.request("POST", "/v3/watch",
                                    body=json.dumps({"create_request": {"key": b64(LEADER_KEY)}}))
            response = self.connection.getresponse()
            if response.status != 200:
                raise BenchError(f"etcd watch returned HTTP {response.status}")
            while not self.stopping:
                line = response.readline()
                received = time.monotonic()
                if not line:
                    raise BenchError("etcd watch stream closed")
                result = json.loads(line).get("result", {})
                if result.get("created"):
                    self.ready.set()
                for event in result.get("events") or []:
                    kind = event.get("type", "PUT")
                    value = event.get("kv", {}).get("value")
                    decoded = base64.b64decode(value).decode() if value else None
                    with self.lock:
                        self.events.append((received, kind, decoded))
        except Exception as error:  # reported by the measurement that needs the watch
            if not self.stopping:
                self.error = error
        finally:
            self.ready.set()

    def first_event_after(self, kind, since):
        if self.error is not None:
            raise BenchError(f"leader key watch failed: {self.error}")
        with self.lock:
            for received, event_kind, _ in self.events:
                if received >= since and event_kind == kind:
                    return received
        return None

    def first_release_after(self, since):
        """When the leader key was deleted (released, or its lease expired)."""
        return self.first_event_after("DELETE", since)

    def first_acquire_after(self, since, other_than):
        """When a member other than `other_than` wrote itself into the leader key."""
        if self.error is not None:
            raise BenchError(f"leader key watch failed: {self.error}")
        with self.lock:
            for received, event_kind, value in self.events:
                if received >= since and event_kind == "PUT" and value and value != other_than:
                    return received
        return None

    def stop(self):
        self.stopping = True
        if self.connection is not None:
            try:
                self.connection.sock.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass
            self.connection.close()


# --------------------------------------------------------------------------
# Kubernetes API test server
# --------------------------------------------------------------------------

def default_kube_apiserver_binary():
    for profile in ("release", "debug"):
        candidate = os.path.join(REPO_ROOT, "target", profile, "regent-kube-apiserver")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class KubeApi:
    """The Kubernetes API test server (tests/src/bin/regent-kube-apiserver.rs) as the DCS.

    Each member gets a Pod named after it and its own kubeconfig whose token is its name, so the
    server counts its requests apart (`GET /_test/requests`).
    """

    name = "kubernetes"

    def __init__(self, root_dir, binary, use_endpoints):
        self.binary = binary
        self.use_endpoints = use_endpoints
        self.port = free_ports(1)[0]
        self.log_path = os.path.join(root_dir, "kube-apiserver.log")
        self.process = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def kind(self):
        return "endpoints" if self.use_endpoints else "configmaps"

    @property
    def leader_object(self):
        return SCOPE if self.use_endpoints else f"{SCOPE}-leader"

    def start(self):
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen([self.binary, "--listen", f"127.0.0.1:{self.port}"],
                                            stdout=log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        wait_until(self.healthy, 30, "the Kubernetes API test server to answer")

    def healthy(self):
        if self.process.poll() is not None:
            raise BenchError(f"regent-kube-apiserver exited with {self.process.returncode}:\n"
                             f"{tail(self.log_path)}")
        try:
            return self.request("GET", "/healthz", raw=True)[0] == 200
        except OSError:
            return False

    def request(self, method, path, body=None, content_type="application/json", raw=False):
        """(status, parsed JSON body or raw text) of one request with the harness token."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            headers = {"Authorization": f"Bearer {KUBE_HARNESS_TOKEN}"}
            payload = None
            if body is not None:
                headers["Content-Type"] = content_type
                payload = json.dumps(body)
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            text = response.read().decode(errors="replace")
            if raw:
                return response.status, text
            try:
                return response.status, json.loads(text) if text else None
            except ValueError:
                raise BenchError(f"{method} {path}: HTTP {response.status}, not JSON: {text[:200]}") from None
        finally:
            connection.close()

    def namespaced(self, resource, name=None):
        path = f"/api/v1/namespaces/{KUBE_NAMESPACE}/{resource}"
        return f"{path}/{name}" if name else path

    def prepare_member(self, index, member, run_as):
        """Create the member's Pod (scheduled-looking: phase Running, a Pod IP) and kubeconfig."""
        member.pod_ip = f"10.0.0.{index + 1}"  # never loopback: the server refuses it in Endpoints
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": member.name, "namespace": KUBE_NAMESPACE,
                            "labels": {**KUBE_LABELS, "cluster-name": SCOPE}},
               "spec": {"containers": [{"name": "postgres", "image": "postgres:15"}]}}
        status, body = self.request("POST", self.namespaced("pods"), pod)
        if status not in (200, 201):
            raise BenchError(f"create Pod {member.name}: HTTP {status}: {body}")
        patch = {"status": {"phase": "Running", "podIP": member.pod_ip, "podIPs": [{"ip": member.pod_ip}]}}
        status, body = self.request("PATCH", self.namespaced("pods", member.name) + "/status", patch,
                                    content_type="application/merge-patch+json")
        if status != 200:
            raise BenchError(f"patch Pod {member.name} status: HTTP {status}: {body}")
        member.kubeconfig = os.path.join(member.dir, "kubeconfig")
        with open(member.kubeconfig, "w") as kubeconfig_file:
            json.dump(chaos.kubeconfig(self.url, member.name, KUBE_NAMESPACE), kubeconfig_file)
        run_as.chown(member.kubeconfig)

    def member_settings(self, member):
        section = {"namespace": KUBE_NAMESPACE, "labels": dict(KUBE_LABELS),
                   "use_endpoints": self.use_endpoints, "pod_ip": member.pod_ip,
                   "ports": [{"name": "postgresql", "port": member.pg_port}]}
        return {"kubernetes": section}, {"KUBECONFIG": member.kubeconfig}

    def leader_annotations(self):
        status, body = self.request("GET", self.namespaced(self.kind, self.leader_object))
        if status == 404:
            return {}
        if status != 200:
            raise BenchError(f"GET {self.kind}/{self.leader_object}: HTTP {status}: {body}")
        return (body.get("metadata") or {}).get("annotations") or {}

    def holder(self):
        return self.leader_annotations().get("leader") or None

    def lock_ttl(self):
        ttl = self.leader_annotations().get("ttl")
        return int(ttl) if ttl and ttl.isdigit() else None

    def lock_remaining(self):
        """renewTime + ttl − now from the leader object, in seconds (None without a holder)."""
        annotations = self.leader_annotations()
        renew, ttl = annotations.get("renewTime"), annotations.get("ttl")
        if not annotations.get("leader") or not renew or not ttl:
            return None
        renewed = datetime.datetime.fromisoformat(renew.replace("Z", "+00:00"))
        now = datetime.datetime.now(datetime.timezone.utc)
        return int(ttl) - (now - renewed).total_seconds()

    def request_counts(self):
        status, body = self.request("GET", "/_test/requests")
        if status != 200:
            raise BenchError(f"GET /_test/requests: HTTP {status}: {body}")
        return body or {}

    def reset_request_counts(self):
        status, body = self.request("DELETE", "/_test/requests")
        if status not in (200, 204):
            raise BenchError(f"DELETE /_test/requests: HTTP {status}: {body}")

    def watch_leader(self):
        return KubeLeaderWatch(self)

    def stop(self):
        kill_and_reap(self.process)


class KubeLeaderWatch(threading.Thread):
    """Watches the leader object and timestamps each change of its `leader` annotation on receipt."""

    def __init__(self, kube):
        super().__init__(daemon=True, name="leader-object-watch")
        self.kube = kube
        self.events = []  # (monotonic time, holder or None)
        self.lock = threading.Lock()
        self.connection = None
        self.ready = threading.Event()
        self.stopping = False
        self.error = None

    def run(self):
        try:
            query = urllib.parse.urlencode({"labelSelector": KUBE_SELECTOR})
            status, listed = self.kube.request("GET", f"{self.kube.namespaced(self.kube.kind)}?{query}")
            if status != 200:
                raise BenchError(f"LIST {self.kube.kind}: HTTP {status}")
            version = listed["metadata"]["resourceVersion"]
            holder = None
            for item in listed.get("items") or []:
                if item["metadata"]["name"] == self.kube.leader_object:
                    holder = (item["metadata"].get("annotations") or {}).get("leader") or None
            query = urllib.parse.urlencode({"labelSelector": KUBE_SELECTOR, "watch": "1",
                                            "resourceVersion": version, "timeoutSeconds": "86400"})
            self.connection = http.client.HTTPConnection("127.0.0.1", self.kube.port)
            self.connection.request("GET", f"{self.kube.namespaced(self.kube.kind)}?{query}",
                                    headers={"Authorization": f"Bearer {KUBE_HARNESS_TOKEN}"})
            response = self.connection.getresponse()
            if response.status != 200:
                raise BenchError(f"WATCH {self.kube.kind}: HTTP {response.status}")
            self.ready.set()
            while not self.stopping:
                line = response.readline()
                received = time.monotonic()
                if not line:
                    raise BenchError("leader object watch stream closed")
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    raise BenchError(f"leader object watch error: {obj.get('message')}")
                if (obj.get("metadata") or {}).get("name") != self.kube.leader_object:
                    continue
                annotations = obj["metadata"].get("annotations") or {}
                new_holder = None if event.get("type") == "DELETED" else (annotations.get("leader") or None)
                if new_holder != holder:
                    holder = new_holder
                    with self.lock:
                        self.events.append((received, holder))
        except Exception as error:  # reported by the measurement that needs the watch
            if not self.stopping:
                self.error = error
        finally:
            self.ready.set()

    def _first(self, since, matches):
        if self.error is not None:
            raise BenchError(f"leader object watch failed: {self.error}")
        with self.lock:
            for received, holder in self.events:
                if received >= since and matches(holder):
                    return received
        return None

    def first_release_after(self, since):
        """When the `leader` annotation was removed (a voluntary release)."""
        return self._first(since, lambda holder: holder is None)

    def first_acquire_after(self, since, other_than):
        """When a member other than `other_than` wrote itself into the lock."""
        return self._first(since, lambda holder: holder is not None and holder != other_than)

    def stop(self):
        self.stopping = True
        if self.connection is not None:
            try:
                self.connection.sock.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass
            self.connection.close()


# --------------------------------------------------------------------------
# Implementations under test
# --------------------------------------------------------------------------

def python_distribution_closure(roots):
    """Installed distributions needed to run `roots` (name, extras), following requirements."""
    found, queue = {}, list(roots)
    while queue:
        name, extras = queue.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # optional or platform-specific requirement that is not installed
        found[key] = dist
        for requirement in dist.requires or []:
            spec, _, marker = requirement.partition(";")
            extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
            if extra and extra.group(1) not in extras:
                continue
            match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[([^\]]*)\])?", spec)
            if match:
                sub_extras = {e.strip() for e in (match.group(3) or "").split(",") if e.strip()}
                queue.append((match.group(1), sub_extras))
    return list(found.values())


class Patroni:
    name = "patroni"

    def __init__(self, run_as, work_dir):
        if importlib.util.find_spec("patroni") is None:
            sys.exit("patroni is not importable by this Python: pip install 'patroni[etcd3]' psycopg2-binary")
        self.version = importlib.metadata.version("patroni")
        self.python = sys.executable
        self.env = {}
        probe = [self.python, "-c", "import patroni, psycopg2, etcd, yaml"]
        if not run_as.can_execute(probe):
            # This interpreter is not reachable by the postgres user (e.g. under /root):
            # stage the installed distributions and run them with a reachable interpreter
            # of the same minor version, so C extensions stay ABI-compatible.
            self.python, self.env = self._stage(run_as, work_dir)
            if not run_as.can_execute([self.python, "-c", "import patroni, psycopg2, etcd, yaml"],
                                      env=dict(os.environ, **self.env)):
                sys.exit(f"cannot run patroni as user '{POSTGRES_USER}' even from a staged copy")

    @staticmethod
    def _stage(run_as, work_dir):
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        candidates = [f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
        python = next((c for c in candidates if os.access(c, os.X_OK)
                       and run_as.can_execute([c, "-c", "pass"])), None)
        if python is None:
            sys.exit(f"patroni's interpreter {sys.executable} is not usable by '{POSTGRES_USER}' and "
                     f"no system python{version} was found to run a staged copy")
        target = os.path.join(work_dir, "pylib")
        psycopg_dist = "psycopg2-binary"
        try:
            importlib.metadata.distribution(psycopg_dist)
        except importlib.metadata.PackageNotFoundError:
            psycopg_dist = "psycopg2"
        dists = python_distribution_closure([("patroni", {"etcd3"}), (psycopg_dist, set())])
        for dist in dists:
            for relative in dist.files or []:
                source = str(dist.locate_file(relative))
                rel = str(relative)
                if rel.startswith("..") or os.path.isabs(rel) or rel.endswith(".pth"):
                    continue  # scripts outside site-packages, path hooks
                destination = os.path.join(target, rel)
                if os.path.isfile(source):
                    os.makedirs(os.path.dirname(destination), exist_ok=True)
                    shutil.copy2(source, destination)
        compileall.compile_dir(target, quiet=2)
        subprocess.run([python, "-m", "compileall", "-q", target], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        for directory, _, _ in os.walk(target):
            os.chmod(directory, 0o755)
        log(f"staged {len(dists)} Python distributions for patroni under {target} (run by {python})")
        return python, {"PYTHONPATH": target, "PYTHONNOUSERSITE": "1"}

    def argv(self, config_path):
        return [self.python, "-m", "patroni", config_path]


class Regent:
    name = "regent"

    def __init__(self, binary):
        self.binary = binary
        self.version = binary  # no --version flag to rely on; name the binary instead
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                self.version = out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
        self.env = {}

    def argv(self, config_path):
        return [self.binary, config_path]


def default_regent_binary():
    for profile in ("release", "debug"):
        candidate = os.path.join(REPO_ROOT, "target", profile, "regent")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


# --------------------------------------------------------------------------
# Cluster
# --------------------------------------------------------------------------

class Member:
    def __init__(self, name, cluster_dir, pg_port, rest_port):
        self.name = name
        self.dir = os.path.join(cluster_dir, name)
        self.data_dir = os.path.join(self.dir, "data")
        self.config_path = os.path.join(self.dir, "config.yml")
        self.log_path = os.path.join(self.dir, "agent.log")
        self.pg_port = pg_port
        self.rest_port = rest_port
        self.process = None
        self.env = {}  # extra agent environment (KUBECONFIG on Kubernetes)
        self.pod_ip = None
        self.kubeconfig = None

    def config(self, dcs_server, dcs):
        section, self.env = dcs_server.member_settings(self)
        config = {
            "scope": SCOPE,
            "namespace": NAMESPACE,
            "name": self.name,
            "restapi": {
                "listen": f"127.0.0.1:{self.rest_port}",
                "connect_address": f"127.0.0.1:{self.rest_port}",
            },
            **section,
            "bootstrap": {
                "dcs": {
                    "ttl": dcs["ttl"],
                    "loop_wait": dcs["loop_wait"],
                    "retry_timeout": dcs["retry_timeout"],
                    "maximum_lag_on_failover": 1048576,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "wal_log_hints": "on",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, "data-checksums"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{self.pg_port}",
                "connect_address": f"127.0.0.1:{self.pg_port}",
                "data_dir": self.data_dir,
                "bin_dir": PG_BIN_DIR,
                "pgpass": os.path.join(self.dir, "pgpass"),
                "authentication": {
                    "superuser": {"username": SUPERUSER, "password": SUPERUSER_PASSWORD},
                    "replication": {"username": REPLICATION_USER, "password": REPLICATION_PASSWORD},
                },
                "pg_hba": [
                    "local all all trust",
                    f"host replication {REPLICATION_USER} 127.0.0.1/32 md5",
                    "host all all 127.0.0.1/32 md5",
                ],
                "parameters": {
                    "unix_socket_directories": self.dir,
                    "shared_buffers": "32MB",
                },
            },
        }
        if "kubernetes" in section:
            # Patroni copies a top-level `namespace` into the DCS section, where on Kubernetes it
            # would replace the Kubernetes namespace.
            del config["namespace"]
        return config

    def make_dir(self, run_as):
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o750)
        run_as.chown(self.dir)

    def write_config(self, dcs_server, dcs, run_as):
        self.make_dir(run_as)
        with open(self.config_path, "w") as config_file:
            config_file.write(to_yaml(self.config(dcs_server, dcs)) + "\n")
        run_as.chown(self.config_path)

    def start(self, implementation, run_as):
        env = {
            "PATH": f"{PG_BIN_DIR}:/usr/local/bin:/usr/bin:/bin",
            "HOME": self.dir,
            "USER": POSTGRES_USER if run_as.uid is not None else os.environ.get("USER", ""),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            **implementation.env,
            **self.env,
        }
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"\n==== start {time.strftime('%H:%M:%S')} ====\n".encode())
            log_file.flush()
            self.process = subprocess.Popen(implementation.argv(self.config_path), cwd=self.dir, env=env,
                                            stdout=log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            **run_as.popen_kwargs())

    def agent_running(self):
        return self.process is not None and self.process.poll() is None

    def postmaster_pid(self):
        """PID from postmaster.pid when that process is still alive, else None."""
        try:
            with open(os.path.join(self.data_dir, "postmaster.pid")) as pid_file:
                pid = int(pid_file.readline().strip())
        except (OSError, ValueError):
            return None
        stat = read_proc_stat(pid)
        if stat is None or stat[1] in ("Z", "X") or stat[0] not in ("postgres", "postmaster"):
            return None
        return pid

    def status(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.rest_port}/patroni", timeout=1) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:  # 503 still carries the JSON body
            try:
                return json.loads(error.read())
            except ValueError:
                return None
        except (OSError, ValueError):
            return None

    def agent_rss_kib(self):
        """RSS of the agent process and its non-Postgres descendants."""
        if not self.agent_running():
            raise BenchError(f"{self.name}: agent is not running")
        pids = [self.process.pid] + [p for p in descendants(self.process.pid) if not is_postgres_process(p)]
        return sum(rss_kib(pid) for pid in pids)


class Cluster:
    def __init__(self, implementation, root_dir, run_as, dcs, dcs_kind):
        self.implementation = implementation
        self.dcs = dcs
        self.run_as = run_as
        self.dir = os.path.join(root_dir, implementation.name)
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        # dcs_kind: ("etcd",) or ("kubernetes", apiserver binary, use_endpoints)
        if dcs_kind[0] == "kubernetes":
            self.server = KubeApi(self.dir, dcs_kind[1], dcs_kind[2])
        else:
            self.server = Etcd(self.dir)
        self.watch = None
        ports = free_ports(2 * len(MEMBER_NAMES))
        self.members = [Member(name, self.dir, ports[2 * i], ports[2 * i + 1])
                        for i, name in enumerate(MEMBER_NAMES)]

    def member(self, name):
        return next(m for m in self.members if m.name == name)

    def dsn(self, target_session_attrs="read-write"):
        hosts = ",".join("127.0.0.1" for _ in self.members)
        ports = ",".join(str(m.pg_port) for m in self.members)
        return (f"host={hosts} port={ports} dbname=postgres user={SUPERUSER} password={SUPERUSER_PASSWORD} "
                f"target_session_attrs={target_session_attrs} connect_timeout=1")

    def bootstrap(self):
        """Start the DCS and all members; returns seconds from first start to a healthy cluster."""
        self.server.start()
        self.watch = self.server.watch_leader()
        self.watch.start()
        if not self.watch.ready.wait(10) or self.watch.error:
            raise BenchError(f"could not watch the leader key: {self.watch.error}")
        for index, member in enumerate(self.members):
            member.make_dir(self.run_as)
            self.server.prepare_member(index, member, self.run_as)
            member.write_config(self.server, self.dcs, self.run_as)
        started = time.monotonic()
        for member in self.members:
            member.start(self.implementation, self.run_as)
        self.wait_healthy(BOOTSTRAP_TIMEOUT, "bootstrap")
        return time.monotonic() - started

    def health(self):
        """(leader name, problem description); leader is None unless fully healthy."""
        statuses = {m.name: m.status() for m in self.members}
        leaders, problems = [], []
        for member in self.members:
            if not member.agent_running():
                problems.append(f"{member.name}: agent not running")
                continue
            status = statuses[member.name]
            if status is None:
                problems.append(f"{member.name}: REST unreachable")
                continue
            role, state = status.get("role"), status.get("state")
            if role in ("primary", "master") and state == "running":
                leaders.append(member.name)
            elif role == "replica" and state in ("running", "streaming") \
                    and status.get("replication_state") == "streaming":
                pass
            else:
                problems.append(f"{member.name}: role={role} state={state} "
                                f"replication_state={status.get('replication_state')}")
        if len(leaders) != 1:
            problems.append(f"leaders={leaders}")
        return (leaders[0] if not problems else None), "; ".join(problems)

    def wait_healthy(self, timeout, what):
        last_problem = ["never polled"]

        def check():
            for member in self.members:
                if member.process is not None and member.process.poll() is not None:
                    raise BenchError(f"{member.name}: agent exited with code {member.process.returncode} "
                                     f"while waiting for {what}")
            leader, problem = self.health()
            last_problem[0] = problem
            return leader

        try:
            return wait_until(check, timeout, f"a healthy cluster ({what})", interval=0.1)
        except BenchError as error:
            raise BenchError(f"{error}; last state: {last_problem[0]}") from None

    def logs_tail(self, lines=40):
        parts = [f"---- {self.server.name} log ({self.server.log_path}) ----\n{tail(self.server.log_path, 10)}"]
        for member in self.members:
            parts.append(f"---- {member.name} log ({member.log_path}) ----\n{tail(member.log_path, lines)}")
        return "\n".join(parts)

    def stop_member_processes(self, member, agent_signal=signal.SIGKILL):
        """Stop the agent and make sure no Postgres process of the member survives."""
        if member.process is not None and member.process.poll() is None:
            kill_quietly(member.process.pid, agent_signal)
            try:
                member.process.wait(SHUTDOWN_TIMEOUT if agent_signal != signal.SIGKILL else 10)
            except subprocess.TimeoutExpired:
                member.process.kill()
                member.process.wait()
        postmaster = member.postmaster_pid()
        if postmaster is not None:
            leftovers = descendants(postmaster)
            kill_quietly(postmaster, signal.SIGQUIT)  # immediate shutdown, children follow
            try:
                wait_until(lambda: not process_alive(postmaster), 10, f"{member.name} postmaster to exit")
            except BenchError:
                kill_quietly(postmaster, signal.SIGKILL)
            wait_for_exit(leftovers, 10)

    def teardown(self):
        steps = [(member.name, lambda member=member: self.stop_member_processes(member))
                 for member in self.members]
        if self.watch is not None:
            steps.append(("leader key watch", self.watch.stop))
        steps.append((self.server.name, self.server.stop))
        for what, step in steps:
            try:
                step()
            except Exception as error:  # keep tearing down the rest
                log(f"teardown of {what} failed: {error!r}")


def wait_for_exit(pids, timeout):
    """Wait for processes to exit; SIGKILL whatever is still alive at the deadline."""
    try:
        wait_until(lambda: not any(process_alive(p) for p in pids), timeout, "processes to exit", interval=0.02)
    except BenchError:
        for pid in pids:
            if process_alive(pid):
                kill_quietly(pid, signal.SIGKILL)
        wait_until(lambda: not any(process_alive(p) for p in pids), 10, "killed processes to exit", interval=0.02)


# --------------------------------------------------------------------------
# Client writer
# --------------------------------------------------------------------------

class Writer(threading.Thread):
    """Autocommit INSERT every 20 ms through a multi-host read-write connection string."""

    def __init__(self, dsn):
        super().__init__(daemon=True, name="writer")
        self.dsn = dsn
        self.successes = []  # (attempt start, completion, server port); times are monotonic seconds
        self.acked_ids = []  # bench_writes.id of every acknowledged INSERT, to check none is lost
        self.failed_attempts = []  # (attempt start, end, first line of the error)
        self.failures = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def run(self):
        connection = None
        next_tick = time.monotonic()
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                if connection is None:
                    connection = psycopg2.connect(self.dsn)
                    connection.autocommit = True
                with connection.cursor() as cursor:
                    cursor.execute("INSERT INTO bench_writes (written_at) VALUES (clock_timestamp()) "
                                   "RETURNING id, inet_server_port()")
                    row_id, server_port = cursor.fetchone()
                with self.lock:
                    self.successes.append((started, time.monotonic(), server_port))
                    self.acked_ids.append(row_id)
            except psycopg2.Error as error:
                message = (str(error).strip().splitlines() or [type(error).__name__])[0]
                with self.lock:
                    self.failures += 1
                    self.failed_attempts.append((started, time.monotonic(), message))
                if connection is not None:
                    try:
                        connection.close()
                    except psycopg2.Error:
                        pass
                    connection = None
            # Fixed 20 ms cadence; an attempt that overran starts the next one immediately.
            next_tick = max(next_tick + WRITE_INTERVAL, time.monotonic())
            self.stopping.wait(max(0.0, next_tick - time.monotonic()))
        if connection is not None:
            connection.close()

    def first_success_started_after(self, since, not_on_port=None):
        """Completion time of the first write begun at or after `since` (optionally on another server)."""
        with self.lock:
            for started, completed, port in self.successes:
                if started >= since and port != not_on_port:
                    return completed
        return None

    def first_success_on_started_after(self, port, since):
        """Completion time of the first write begun at or after `since` on the server on `port`."""
        with self.lock:
            for started, completed, server in self.successes:
                if started >= since and server == port:
                    return completed
        return None

    def longest_gap(self, since):
        """(gap seconds, completion before, completion after, port before, port after, duration of
        the attempt that closed the gap) of the longest interval between two consecutive
        acknowledged writes from the last one acknowledged before `since` on, or None with fewer
        than two."""
        with self.lock:
            acked = sorted((completed, port, started) for started, completed, port in self.successes)
        before = [i for i, (completed, _, _) in enumerate(acked) if completed < since]
        acked = acked[before[-1] if before else 0:]
        gaps = [(later[0] - earlier[0], earlier[0], later[0], earlier[1], later[1], later[0] - later[2])
                for earlier, later in zip(acked, acked[1:])]
        return max(gaps) if gaps else None

    def failures_between(self, start, end):
        """Failed attempts that began in [start, end]: (offset from start, duration, error)."""
        with self.lock:
            return [(round(began - start, 3), round(ended - began, 3), message)
                    for began, ended, message in self.failed_attempts if start <= began <= end]

    def successes_on_after(self, port, since):
        """Writes acknowledged by the server on `port` that completed after `since`."""
        with self.lock:
            return sum(1 for _, completed, server in self.successes if server == port and completed > since)

    def last_success_on(self, port):
        with self.lock:
            completions = [completed for _, completed, server in self.successes if server == port]
        return max(completions) if completions else None

    def stop(self):
        self.stopping.set()
        self.join(10)


def ensure_bench_table(cluster):
    def create():
        try:
            connection = psycopg2.connect(cluster.dsn())
        except psycopg2.Error:
            return False
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("CREATE TABLE IF NOT EXISTS bench_writes "
                               "(id bigserial PRIMARY KEY, written_at timestamptz NOT NULL)")
            return True
        finally:
            connection.close()

    wait_until(create, 30, "the bench table to be created on the leader", interval=0.2)


def start_writer(cluster):
    writer = Writer(cluster.dsn())
    writer.start()
    began = time.monotonic()
    try:
        wait_until(lambda: writer.first_success_started_after(began), 30, "the writer's first successful write")
    except BenchError:
        writer.stop()
        raise
    return writer


# --------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------

def measure_idle_rss(cluster, idle_seconds):
    cluster.wait_healthy(REJOIN_TIMEOUT, "idle RSS")
    time.sleep(idle_seconds)  # deliberate idle period, not synchronisation
    cluster.wait_healthy(10, "idle RSS sample")
    per_member = {m.name: m.agent_rss_kib() for m in cluster.members}
    mean_mib = statistics.mean(per_member.values()) / 1024
    return {"rss_mib": mean_mib, "rss_kib_per_member": per_member,
            "effective_ttl_s": cluster.server.lock_ttl()}


def measure_idle_requests(cluster, window):
    """Kubernetes API requests of each member over an idle window, per minute."""
    cluster.wait_healthy(REJOIN_TIMEOUT, "idle requests")
    leader = cluster.server.holder()
    cluster.server.reset_request_counts()
    started = time.monotonic()
    time.sleep(window)  # deliberate idle period, not synchronisation
    counts = cluster.server.request_counts()
    elapsed = time.monotonic() - started
    if cluster.wait_healthy(10, "idle requests sample") != leader:
        raise BenchError("the leader changed during the idle request window")
    per_member = {}
    for member in cluster.members:
        by_request = counts.get(member.name) or {}
        per_member[member.name] = {
            "total_per_min": sum(by_request.values()) * 60 / elapsed,
            "by_request_per_min": {k: v * 60 / elapsed for k, v in sorted(by_request.items())},
            "role": "leader" if member.name == leader else "replica",
        }
    replicas = [m["total_per_min"] for m in per_member.values() if m["role"] == "replica"]
    return {"api_requests_per_min": statistics.mean(m["total_per_min"] for m in per_member.values()),
            "api_requests_leader_per_min": per_member[leader]["total_per_min"] if leader in per_member else None,
            "api_requests_replica_per_min": statistics.mean(replicas) if replicas else None,
            "api_requests_window_s": elapsed,
            "api_requests_per_member": per_member}


def restart_and_rejoin(cluster, member):
    started = time.monotonic()
    member.start(cluster.implementation, cluster.run_as)
    cluster.wait_healthy(REJOIN_TIMEOUT, f"{member.name} to rejoin as a streaming replica")
    return time.monotonic() - started


def measure_failover(cluster, record):
    """kill -9 of the leader's agent and postmaster; fills `record` as results become known."""
    leader_name = cluster.wait_healthy(REJOIN_TIMEOUT, "failover start")
    leader = cluster.member(leader_name)
    record["old_leader"] = leader_name
    postmaster = leader.postmaster_pid()
    if postmaster is None:
        raise BenchError(f"{leader_name}: no running postmaster found in {leader.data_dir}/postmaster.pid")
    on_etcd = isinstance(cluster.server, Etcd)
    monitor = None
    if on_etcd:
        holder, lease = cluster.server.leader_key()
        if holder != leader_name or not lease or lease == "0":
            raise BenchError(f"leader key is held by {holder!r} with lease {lease!r}, expected {leader_name}")
        record["lease_remaining_at_kill_s"], _ = cluster.server.lease_time_to_live(lease)
        monitor = LeaseMonitor(cluster.server, lease)
    else:
        holder = cluster.server.holder()
        if holder != leader_name:
            raise BenchError(f"the leader object names {holder!r}, expected {leader_name}")
        remaining = cluster.server.lock_remaining()
        record["lease_remaining_at_kill_s"] = None if remaining is None else round(remaining, 3)
    writer = start_writer(cluster)
    t_lease = None
    try:
        postgres_children = descendants(postmaster)
        agent_helpers = [p for p in descendants(leader.process.pid) if not is_postgres_process(p)]
        t0 = time.monotonic()
        os.kill(leader.process.pid, signal.SIGKILL)
        os.kill(postmaster, signal.SIGKILL)
        if monitor is not None:
            monitor.start()
        t_write = wait_until(lambda: writer.first_success_started_after(t0, leader.pg_port), FAILOVER_TIMEOUT,
                             "the first successful write after kill -9 of the leader", interval=0.005)
        t_taken = wait_until(lambda: cluster.watch.first_acquire_after(t0, leader_name), 10,
                             "another member to take the leader lock", interval=0.005)
        if on_etcd:
            t_lease = wait_until(lambda: cluster.watch.first_release_after(t0), 10,
                                 "the leader key deletion event", interval=0.005)
    finally:
        writer.stop()
        record["failover_failed_writes"] = writer.failures
        if monitor is not None:
            monitor.stop()
            record["lease_refreshed_after_kill"] = monitor.refreshed()
            record["lease_samples_after_kill"] = monitor.samples
    record["failover_unavailable_s"] = t_write - t0
    record["failover_lock_taken_s"] = t_taken - t0
    if t_lease is not None:
        # Kubernetes has no expiry event: a lock expires in the readers' eyes only.
        record["failover_lease_wait_s"] = t_lease - t0
        record["failover_lease_to_write_s"] = t_write - t_lease
    # Helper processes of the agent outliving it could keep the lease alive: report, then clean up.
    surviving_helpers = [p for p in agent_helpers if process_alive(p)]
    record["agent_helpers_alive_after_kill"] = len(surviving_helpers)
    leader.process.wait()
    wait_for_exit([postmaster] + postgres_children + surviving_helpers, 30)
    record["new_leader"] = cluster.server.holder()
    record["failover_rejoin_s"] = restart_and_rejoin(cluster, leader)


def measure_handover(cluster, record):
    """SIGTERM to the leader's agent; fills `record` as results become known."""
    leader_name = cluster.wait_healthy(REJOIN_TIMEOUT, "handover start")
    leader = cluster.member(leader_name)
    record["handover_old_leader"] = leader_name
    postmaster = leader.postmaster_pid()
    writer = start_writer(cluster)
    try:
        t0 = time.monotonic()
        os.kill(leader.process.pid, signal.SIGTERM)
        t_write = wait_until(lambda: writer.first_success_started_after(t0, leader.pg_port), FAILOVER_TIMEOUT,
                             "the first successful write on a new leader after SIGTERM to the leader",
                             interval=0.005)
        t_last_old_write = writer.last_success_on(leader.pg_port)
    finally:
        writer.stop()
        record["handover_failed_writes"] = writer.failures
    record["handover_unavailable_s"] = t_write - t0
    record["handover_write_gap_s"] = (t_write - t_last_old_write) if t_last_old_write is not None else None
    try:
        # A graceful shutdown deletes the leader key before another member can take it.
        t_released = wait_until(lambda: cluster.watch.first_release_after(t0), 1,
                                "the leader key deletion event", interval=0.005)
        record["handover_key_released_s"] = t_released - t0
        # The old primary must not acknowledge writes once its lock is gone (a new leader may already exist).
        record["handover_old_leader_writes_after_release"] = writer.successes_on_after(leader.pg_port, t_released)
    except BenchError:
        record["handover_key_released_s"] = None
    try:
        leader.process.wait(SHUTDOWN_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{leader_name}: agent did not exit within {SHUTDOWN_TIMEOUT:.0f}s of SIGTERM") from None
    record["handover_agent_exit_s"] = time.monotonic() - t0
    if postmaster is not None and process_alive(postmaster):
        raise BenchError(f"{leader_name}: postmaster {postmaster} still running after the agent exited")
    record["handover_new_leader"] = cluster.server.holder()
    record["handover_rejoin_s"] = restart_and_rejoin(cluster, leader)


def post_switchover(member, leader, candidate, timeout):
    """POST /switchover {leader, candidate} to `member`'s REST API: (HTTP status, answer text).

    Both implementations answer once the outcome is known (a new leader or a failure), so the call
    blocks for the length of the switchover."""
    body = json.dumps({"leader": leader, "candidate": candidate}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{member.rest_port}/switchover", data=body,
                                     method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace").strip()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace").strip()


def count_present(member, ids):
    """How many of `ids` the bench table on `member` holds (read on that server directly)."""
    dsn = (f"host=127.0.0.1 port={member.pg_port} dbname=postgres user={SUPERUSER} "
           f"password={SUPERUSER_PASSWORD} connect_timeout=2")
    connection = psycopg2.connect(dsn)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM bench_writes WHERE id = ANY(%s)", (list(ids),))
            return cursor.fetchone()[0]
    finally:
        connection.close()


# Writes acknowledged before the switchover request, so the longest gap has a steady baseline.
SWITCHOVER_BASELINE_WRITES = 25
# How long the writer keeps going on the new leader, so a second stall right after the first
# write there would still count in the longest gap.
SWITCHOVER_TAIL = 1.0


def measure_switchover(cluster, record):
    """POST /switchover from the leader to the next member while the client writes; fills `record`."""
    leader_name = cluster.wait_healthy(REJOIN_TIMEOUT, "switchover start")
    leader = cluster.member(leader_name)
    # The candidate rotates over the replicas from run to run: the member after the leader.
    position = [m.name for m in cluster.members].index(leader_name)
    candidate = cluster.members[(position + 1) % len(cluster.members)]
    record["switchover_old_leader"] = leader_name
    record["switchover_candidate"] = candidate.name
    writer = start_writer(cluster)
    try:
        began = time.monotonic()
        wait_until(lambda: writer.successes_on_after(leader.pg_port, began) >= SWITCHOVER_BASELINE_WRITES,
                   30, f"{SWITCHOVER_BASELINE_WRITES} writes on {leader_name} before the switchover")
        t0 = time.monotonic()
        status, answer = post_switchover(leader, leader_name, candidate.name, FAILOVER_TIMEOUT)
        record["switchover_response_s"] = time.monotonic() - t0
        record["switchover_http_status"] = status
        record["switchover_answer"] = answer[:200]
        if status != 200:
            raise BenchError(f"POST /switchover to {leader_name} answered HTTP {status}: {answer[:200]}")
        t_write = wait_until(lambda: writer.first_success_on_started_after(candidate.pg_port, t0),
                             FAILOVER_TIMEOUT, f"the first write on {candidate.name} after POST /switchover",
                             interval=0.005)
        wait_until(lambda: writer.first_success_on_started_after(candidate.pg_port, t_write + SWITCHOVER_TAIL),
                   30, f"writes on {candidate.name} {SWITCHOVER_TAIL:.0f}s after the switchover", interval=0.02)
    finally:
        writer.stop()
        record["switchover_failed_writes"] = writer.failures
    record["switchover_unavailable_s"] = t_write - t0
    gap, gap_start, gap_end, port_before, port_after, closing_write = writer.longest_gap(t0)
    record["switchover_gap_closing_write_s"] = closing_write
    record["switchover_write_gap_s"] = gap
    record["switchover_gap_starts_after_post_s"] = gap_start - t0
    # What the client saw during the gap, to tell a server-side wait from a client-side one
    # (e.g. a connection attempt waiting for connect_timeout).
    record["switchover_failures_in_gap"] = writer.failures_between(gap_start, gap_end)
    ports = {m.pg_port: m.name for m in cluster.members}
    record["switchover_gap_between"] = [ports.get(port_before, port_before), ports.get(port_after, port_after)]
    t_taken = cluster.watch.first_acquire_after(t0, leader_name)
    record["switchover_lock_taken_s"] = None if t_taken is None else t_taken - t0
    # A switchover must not lose acknowledged writes: every id must be on the new leader.
    present = count_present(candidate, writer.acked_ids)
    record["switchover_lost_writes"] = len(writer.acked_ids) - present
    healthy_leader = cluster.wait_healthy(REJOIN_TIMEOUT, f"{leader_name} to stream from {candidate.name}")
    record["switchover_rejoin_s"] = time.monotonic() - t0
    record["switchover_new_leader"] = healthy_leader
    if healthy_leader != candidate.name:
        raise BenchError(f"switchover to {candidate.name} ended with {healthy_leader} leading")


# Metrics shown in the table: key, label, unit, decimals.
METRICS = [
    ("failover_unavailable_s", "failover: kill -9 → first write on new leader", "s", 3),
    ("failover_lease_wait_s", "  waiting for lease (T_lease − T0)", "s", 3),
    ("failover_lease_to_write_s", "  lease expiry → first write", "s", 3),
    ("failover_lock_taken_s", "  kill -9 → lock taken by the new leader", "s", 3),
    ("failover_rejoin_s", "failover: killed member rejoin", "s", 3),
    ("handover_unavailable_s", "handover: SIGTERM → first write on new leader", "s", 3),
    ("handover_write_gap_s", "  write gap (last old → first new)", "s", 3),
    ("handover_key_released_s", "  leader key released", "s", 3),
    ("handover_rejoin_s", "handover: old leader rejoin", "s", 3),
    ("switchover_write_gap_s", "switchover: longest gap between acknowledged writes", "s", 3),
    ("switchover_unavailable_s", "  POST /switchover → first write on the candidate", "s", 3),
    ("switchover_lock_taken_s", "  POST /switchover → lock taken by the candidate", "s", 3),
    ("switchover_response_s", "  POST /switchover answered", "s", 3),
    ("switchover_rejoin_s", "switchover: POST → old leader streaming again", "s", 3),
    ("rss_mib", "agent RSS at idle (per member)", "MiB", 1),
    ("api_requests_per_min", "API requests at idle (mean per member)", "/min", 1),
    ("api_requests_leader_per_min", "  leader", "/min", 1),
    ("api_requests_replica_per_min", "  replica (mean)", "/min", 1),
    ("bootstrap_s", "bootstrap → healthy", "s", 3),
    ("effective_ttl_s", "effective leader lease TTL (setting)", "s", 0),
]


def seconds(value):
    return "n/a" if value is None else f"{value:.3f}s"


def log_failover(prefix, run):
    log(f"{prefix}: failover {run.get('old_leader')}→{run.get('new_leader')}: "
        f"unavailable {seconds(run.get('failover_unavailable_s'))} "
        f"(lease wait {seconds(run.get('failover_lease_wait_s'))}, "
        f"lease→write {seconds(run.get('failover_lease_to_write_s'))}, "
        f"lock taken {seconds(run.get('failover_lock_taken_s'))}), "
        f"rejoin {seconds(run.get('failover_rejoin_s'))}; "
        f"lease had {run.get('lease_remaining_at_kill_s')}s left at the kill")
    if run.get("lease_refreshed_after_kill") or run.get("agent_helpers_alive_after_kill"):
        log(f"WARNING: the killed leader's lease was kept alive after the kill "
            f"(TTL samples {run.get('lease_samples_after_kill')}, "
            f"{run.get('agent_helpers_alive_after_kill')} agent helper process(es) survived)")


def log_handover(prefix, run):
    log(f"{prefix}: handover {run.get('handover_old_leader')}→{run.get('handover_new_leader')}: "
        f"unavailable {seconds(run.get('handover_unavailable_s'))}, "
        f"write gap {seconds(run.get('handover_write_gap_s'))}, "
        f"key released {seconds(run.get('handover_key_released_s'))}, "
        f"agent exit {seconds(run.get('handover_agent_exit_s'))}, "
        f"rejoin {seconds(run.get('handover_rejoin_s'))}")
    if run.get("handover_old_leader_writes_after_release"):
        log(f"WARNING: the old leader acknowledged {run['handover_old_leader_writes_after_release']} write(s) "
            f"after releasing the leader key")


def log_switchover(prefix, run):
    between = run.get("switchover_gap_between") or ["?", "?"]
    log(f"{prefix}: switchover {run.get('switchover_old_leader')}→{run.get('switchover_candidate')}: "
        f"longest write gap {seconds(run.get('switchover_write_gap_s'))} ({between[0]}→{between[1]}), "
        f"first write on the candidate {seconds(run.get('switchover_unavailable_s'))}, "
        f"lock taken {seconds(run.get('switchover_lock_taken_s'))}, "
        f"answered {seconds(run.get('switchover_response_s'))} "
        f"(HTTP {run.get('switchover_http_status')}: {run.get('switchover_answer')!r}), "
        f"old leader streaming {seconds(run.get('switchover_rejoin_s'))}, "
        f"{run.get('switchover_failed_writes')} failed write attempt(s)")
    if run.get("switchover_lost_writes"):
        log(f"WARNING: {run['switchover_lost_writes']} acknowledged write(s) missing on the new leader")


MEASUREMENTS = ("rss", "requests", "failover", "handover", "switchover")


def log_requests(prefix, run):
    log(f"{prefix}: API requests per minute at idle over {run['api_requests_window_s']:.1f}s:")
    for name, member in run["api_requests_per_member"].items():
        detail = ", ".join(f"{k} {v:.1f}" for k, v in member["by_request_per_min"].items())
        log(f"  {name} ({member['role']}): {member['total_per_min']:.1f}/min ({detail})")


def benchmark(implementation, root_dir, run_as, runs, dcs, idle_seconds, measurements=MEASUREMENTS,
              dcs_kind=("etcd",), request_window=60.0):
    """Run all measurements `runs` times for one implementation; returns raw results."""
    result = {"implementation": implementation.name, "version": implementation.version,
              "runs": [], "errors": [], "bootstrap_s": []}
    cluster = None
    bootstraps = 0
    try:
        for run_index in range(runs):
            if cluster is None:
                bootstraps += 1
                cluster = Cluster(implementation, os.path.join(root_dir, f"b{bootstraps}"), run_as, dcs, dcs_kind)
                log(f"{implementation.name}: bootstrapping cluster #{bootstraps} in {cluster.dir}")
                try:
                    result["bootstrap_s"].append(cluster.bootstrap())
                    ensure_bench_table(cluster)
                except BenchError as error:
                    result["errors"].append(f"bootstrap #{bootstraps}: {error}")
                    log(f"{implementation.name}: bootstrap FAILED: {error}")
                    print(cluster.logs_tail(), flush=True)
                    break  # the finally clause tears the cluster down
                log(f"{implementation.name}: healthy after {result['bootstrap_s'][-1]:.2f}s")
            run = {"run": run_index + 1}
            prefix = f"{implementation.name} run {run_index + 1}"
            try:
                if "rss" in measurements:
                    run.update(measure_idle_rss(cluster, idle_seconds))
                    log(f"{prefix}: idle RSS {run['rss_mib']:.1f} MiB per agent, "
                        f"leader lease TTL {run['effective_ttl_s']}s")
                if "requests" in measurements and dcs_kind[0] == "kubernetes":
                    run.update(measure_idle_requests(cluster, request_window))
                    log_requests(prefix, run)
                if "failover" in measurements:
                    try:
                        measure_failover(cluster, run)
                    finally:
                        log_failover(prefix, run)
                if "handover" in measurements:
                    try:
                        measure_handover(cluster, run)
                    finally:
                        log_handover(prefix, run)
                if "switchover" in measurements:
                    try:
                        measure_switchover(cluster, run)
                    finally:
                        log_switchover(prefix, run)
            except (BenchError, OSError, ValueError, psycopg2.Error) as error:
                run["error"] = str(error)
                result["errors"].append(f"run {run_index + 1}: {error}")
                log(f"{implementation.name} run {run_index + 1} FAILED: {error}")
                print(cluster.logs_tail(), flush=True)
                cluster.teardown()
                cluster = None  # re-bootstrap for the next run
            result["runs"].append(run)
    finally:
        if cluster is not None:
            cluster.teardown()
    return result


def summarize(result):
    summary = {}
    for key, _, _, _ in METRICS:
        if key == "bootstrap_s":
            values = result["bootstrap_s"]
        else:
            values = [run[key] for run in result["runs"] if run.get(key) is not None]
        if values:
            summary[key] = {"median": statistics.median(values), "min": min(values), "max": max(values),
                            "n": len(values)}
    return summary


def print_table(summaries):
    def cell(stats, unit, digits):
        if stats is None:
            return "—"
        return (f"{stats['median']:.{digits}f} {unit} ({stats['min']:.{digits}f}–{stats['max']:.{digits}f}, "
                f"n={stats['n']})")

    header = ["metric", "Regent median (min–max)", "Patroni median (min–max)", "Patroni/Regent"]
    rows = []
    for key, label, unit, digits in METRICS:
        regent = summaries.get("regent", {}).get(key)
        patroni = summaries.get("patroni", {}).get(key)
        ratio = "—"
        if regent and patroni and regent["median"] > 0 and key != "effective_ttl_s":
            ratio = f"{patroni['median'] / regent['median']:.2f}×"
        if regent is None and patroni is None:
            continue  # not measured in this run (see --measure)
        rows.append([label, cell(regent, unit, digits), cell(patroni, unit, digits), ratio])
    widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header))]
    print()
    print("Ratios are Patroni median / Regent median: above 1 means Regent is faster or smaller.")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    print()


def print_switchover_summary(summaries):
    """The switchover write unavailability of both, with the Regent/Patroni ratio of the medians."""
    key = "switchover_write_gap_s"
    stats = {name: summaries.get(name, {}).get(key) for name in ("regent", "patroni")}
    if not any(stats.values()):
        return
    print("Switchover write unavailability (longest gap between acknowledged writes, POST /switchover):")
    for name, stat in stats.items():
        if stat:
            print(f"  {name:8} median {stat['median']:.3f} s  min {stat['min']:.3f} s  "
                  f"max {stat['max']:.3f} s  (n={stat['n']})")
    if stats["regent"] and stats["patroni"] and stats["patroni"]["median"] > 0:
        print(f"  Regent/Patroni ratio of medians: {stats['regent']['median'] / stats['patroni']['median']:.2f}")
    print()


def raise_interrupt(signum, frame):
    """SIGTERM handler: unwind like Ctrl-C so teardown runs."""
    raise KeyboardInterrupt()


def main():
    parser = argparse.ArgumentParser(description="Benchmark Regent against Patroni on a local 3-member cluster.")
    parser.add_argument("--runs", type=int, default=5, help="measurement runs per implementation (default 5)")
    parser.add_argument("--quick", action="store_true", help="one run per implementation (smoke test)")
    parser.add_argument("--only", choices=("regent", "patroni"), help="benchmark only one implementation")
    parser.add_argument("--out", default="bench-results.json", help="raw results JSON file")
    parser.add_argument("--regent", default=None, help="regent binary (default target/{release,debug}/regent)")
    parser.add_argument("--idle-loops", type=int, default=3,
                        help="loop_wait periods of idleness before sampling RSS (default 3)")
    parser.add_argument("--ttl", type=int, default=DEFAULT_DCS["ttl"],
                        help="bootstrap.dcs ttl (default 10; Patroni raises anything below 20 to 20)")
    parser.add_argument("--loop-wait", type=int, default=DEFAULT_DCS["loop_wait"], help="bootstrap.dcs loop_wait")
    parser.add_argument("--retry-timeout", type=int, default=DEFAULT_DCS["retry_timeout"],
                        help="bootstrap.dcs retry_timeout")
    parser.add_argument("--measure", default=",".join(MEASUREMENTS),
                        help="comma-separated subset of rss,requests,failover,handover,switchover (default: all; "
                             "requests only on --dcs kubernetes)")
    parser.add_argument("--dcs", choices=("etcd", "kubernetes"), default="etcd",
                        help="DCS: a single-node etcd (default) or the Kubernetes API test server")
    parser.add_argument("--use-endpoints", action="store_true",
                        help="--dcs kubernetes: Endpoints instead of ConfigMaps (kubernetes.use_endpoints)")
    parser.add_argument("--kube-apiserver", default=None,
                        help="regent-kube-apiserver binary (default target/{release,debug}/regent-kube-apiserver)")
    parser.add_argument("--request-window", type=float, default=60.0,
                        help="seconds of idleness over which API requests are counted (default 60)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    dcs = {"ttl": args.ttl, "loop_wait": args.loop_wait, "retry_timeout": args.retry_timeout}
    idle_seconds = args.idle_loops * args.loop_wait
    measurements = [m.strip() for m in args.measure.split(",") if m.strip()]
    unknown = [m for m in measurements if m not in MEASUREMENTS]
    if unknown or not measurements:
        parser.error(f"--measure takes a subset of {','.join(MEASUREMENTS)}, got {args.measure!r}")
    if runs < 1:
        parser.error("--runs must be at least 1")
    dcs_kind = ("etcd",)
    if args.dcs == "kubernetes":
        apiserver = args.kube_apiserver or default_kube_apiserver_binary()
        if apiserver is None or not os.access(apiserver, os.X_OK):
            sys.exit("regent-kube-apiserver not found: build it with `cargo build -p regent-tests "
                     "--bin regent-kube-apiserver` or pass --kube-apiserver")
        dcs_kind = ("kubernetes", os.path.abspath(apiserver), args.use_endpoints)
    for path in ((ETCD_BIN,) if args.dcs == "etcd" else ()) + (os.path.join(PG_BIN_DIR, "postgres"),):
        if not os.access(path, os.X_OK):
            sys.exit(f"required executable not found: {path}")
    if psycopg2.extensions.libpq_version() < 100000:
        sys.exit("psycopg2 is linked against libpq < 10, which has no multi-host connection strings")

    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored

    run_as = RunAs()
    root_dir = tempfile.mkdtemp(prefix="regent-bench-")
    os.chmod(root_dir, 0o755)
    failed = False
    results = {}
    try:
        implementations = []
        if args.only in (None, "patroni"):
            implementations.append(Patroni(run_as, root_dir))
        if args.only in (None, "regent"):
            binary = args.regent or default_regent_binary()
            if binary is None or not os.access(binary, os.X_OK):
                sys.exit("regent binary not found: build it with `cargo build --release -p agent` or pass --regent")
            implementations.append(Regent(os.path.abspath(binary)))
        log(f"temporary directory {root_dir}; members run as "
            f"{POSTGRES_USER if run_as.uid is not None else 'the current user'}; {runs} run(s) each")
        for implementation in implementations:
            log(f"=== {implementation.name} {implementation.version} ===")
            results[implementation.name] = benchmark(implementation, root_dir, run_as, runs, dcs, idle_seconds,
                                                     measurements, dcs_kind, args.request_window)
            if results[implementation.name]["errors"]:
                failed = True
    except KeyboardInterrupt:
        failed = True
        log("interrupted; tearing down")
    except BenchError as error:
        failed = True
        log(f"FAILED: {error}")
    finally:
        if args.keep:
            log(f"kept {root_dir}")
        else:
            shutil.rmtree(root_dir, ignore_errors=True)

    summaries = {name: summarize(result) for name, result in results.items()}
    if results:
        print_table(summaries)
        print_switchover_summary(summaries)
        document = {
            "settings": {"runs": runs, **dcs, "measurements": measurements, "write_interval_s": WRITE_INTERVAL,
                         "idle_seconds": idle_seconds, "dcs": args.dcs, "use_endpoints": args.use_endpoints,
                         "request_window_s": args.request_window},
            "host": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "results": results,
            "summary": summaries,
        }
        with open(args.out, "w") as out_file:
            json.dump(document, out_file, indent=2)
        log(f"raw results written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
