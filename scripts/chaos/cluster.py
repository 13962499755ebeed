"""The cluster under test: the DCS (etcd behind the fault proxy, or the Kubernetes API test
server) and three members, each in its own network namespace, run as the postgres user."""

import http.client
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import psycopg2

import net
from leader_log import EtcdLeaderLog, KubeLeaderLog
from common import CampaignError, kubeconfig, log, run, tail, terminate, wait_until

PG_BIN_DIR = "/usr/lib/postgresql/15/bin"
ETCD_BIN = "/usr/bin/etcd"
PATRONI_PYTHON = "/opt/regent-patroni/bin/python3"
SCOPE = "chaos"
MEMBER_NAMES = ("m1", "m2", "m3")
SUPERUSER, SUPERUSER_PASSWORD = "postgres", "secret"
REPLICATION_USER, REPLICATION_PASSWORD = "replicator", "rep-pass"
PG_PORT, REST_PORT = 5432, 8008
ETCD_PORT, ETCD_INNER_PORT, ETCD_PEER_PORT, PROXY_CONTROL_PORT = 2379, 12379, 12380, 2390
KUBE_PORT = 6443
KUBE_NAMESPACE = "default"
KUBE_LABELS = {"application": "regent-chaos"}
KUBE_HARNESS_TOKEN = "chaos-harness"
# Size of each member's data volume (a tmpfs); the volume-full fault fills the leader's.
VOLUME_SIZE = "768m"
MAXIMUM_LAG_ON_FAILOVER = 1048576
HERE = os.path.dirname(os.path.abspath(__file__))


def postgres_ids():
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise CampaignError("there is no 'postgres' user to run the members as") from None
    return entry.pw_uid, entry.pw_gid


def connect(address, timeout=1, statement_timeout_ms=3000):
    conn = psycopg2.connect(host=address, port=PG_PORT, dbname="postgres", user=SUPERUSER,
                            password=SUPERUSER_PASSWORD, connect_timeout=timeout,
                            options=f"-c statement_timeout={statement_timeout_ms}")
    conn.autocommit = True
    return conn


def query(address, sql, timeout=1):
    """All rows of one query on a member, or None when it cannot be asked."""
    try:
        conn = connect(address, timeout)
    except psycopg2.Error:
        return None
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()
    except psycopg2.Error:
        return None
    finally:
        conn.close()


def http_json(method, url, body=None, timeout=5, headers=None):
    """(status, parsed body or text) of one HTTP request; status 0 when it could not be made."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as error:
        return 0, str(error)
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


def signal_pid(pid, sig):
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


# --------------------------------------------------------------------------
# DCS
# --------------------------------------------------------------------------

class EtcdDcs:
    """etcd inside the DCS namespace on 127.0.0.1, reachable only through the fault proxy on
    10.77.0.2:2379 (the advertised client URL, so clients that discover members still use it)."""

    name = "etcd"

    def __init__(self, run_dir):
        self.dir = os.path.join(run_dir, "etcd")
        self.log_path = os.path.join(run_dir, "etcd.log")
        self.proxy_log_path = os.path.join(run_dir, "etcd-proxy.log")
        self.process = None
        self.proxy = None

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        peer = f"http://127.0.0.1:{ETCD_PEER_PORT}"
        argv = ["ip", "netns", "exec", net.DCS_NS, ETCD_BIN, "--name", "chaos", "--data-dir", self.dir,
                "--listen-client-urls", f"http://127.0.0.1:{ETCD_INNER_PORT}",
                "--advertise-client-urls", f"http://{net.DCS_ADDRESS}:{ETCD_PORT}",
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"chaos={peer}", "--initial-cluster-state",
                "existing" if os.path.exists(os.path.join(self.dir, "member")) else "new"]
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        if self.proxy is None or self.proxy.poll() is not None:
            with open(self.proxy_log_path, "ab") as log_file:
                self.proxy = subprocess.Popen(
                    ["ip", "netns", "exec", net.DCS_NS, sys.executable, os.path.join(HERE, "proxy.py"),
                     "--listen", f"{net.DCS_ADDRESS}:{ETCD_PORT}",
                     "--upstream", f"127.0.0.1:{ETCD_INNER_PORT}",
                     "--control", f"{net.DCS_ADDRESS}:{PROXY_CONTROL_PORT}"],
                    stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)
        wait_until(self.healthy, 60, "etcd to answer through the proxy", interval=0.2)

    def healthy(self):
        if self.process.poll() is not None:
            raise CampaignError(f"etcd exited with {self.process.returncode}:\n{tail(self.log_path)}")
        status, body = http_json("GET", f"http://{net.DCS_ADDRESS}:{ETCD_PORT}/health", timeout=1)
        return status == 200 and isinstance(body, dict) and body.get("health") == "true"

    @property
    def pid(self):
        return self.process.pid

    def stop(self):
        terminate(self.process)

    def shutdown(self):
        self.stop()
        if self.proxy is not None and self.proxy.poll() is None:
            self.proxy.kill()
            self.proxy.wait()

    def member_settings(self, member):
        return {"etcd3": {"hosts": [f"{net.DCS_ADDRESS}:{ETCD_PORT}"]}}, {}

    def prepare_member(self, member):
        pass

    def leader_log(self):
        return EtcdLeaderLog(net.DCS_ADDRESS, ETCD_PORT, SCOPE)

    def set_flaky(self, flaky, seed=0):
        line = f"flaky {seed}\n" if flaky else "normal\n"
        with socket.create_connection((net.DCS_ADDRESS, PROXY_CONTROL_PORT), timeout=5) as conn:
            conn.sendall(line.encode())
            answer = conn.makefile().readline().strip()
        if answer != "ok":
            raise CampaignError(f"fault proxy refused {line.strip()!r}: {answer}")


class KubeDcs:
    """The Kubernetes API test server inside the DCS namespace on 10.77.0.2:6443. A restart
    keeps every object (saved to a state file on SIGTERM, loaded at start), as a real API
    server backed by etcd does; watches from before the restart get 410 Gone and re-list."""

    name = "kubernetes"

    def __init__(self, run_dir, binary):
        self.binary = binary
        self.log_path = os.path.join(run_dir, "kube-apiserver.log")
        self.state_path = os.path.join(run_dir, "kube-apiserver-state.json")
        self.process = None
        self.members = []
        self.pods_created = False
        self.flaky_stop = None
        self.flaky_thread = None

    @property
    def url(self):
        return f"http://{net.DCS_ADDRESS}:{KUBE_PORT}"

    def start(self):
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", net.DCS_NS, self.binary, "--listen", f"{net.DCS_ADDRESS}:{KUBE_PORT}",
                 "--quiet", "--state-file", self.state_path], stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        wait_until(self.healthy, 60, "the Kubernetes API test server to answer", interval=0.2)
        if not self.pods_created:
            for member in self.members:
                self.create_pod(member)
            self.pods_created = True

    def healthy(self):
        if self.process.poll() is not None:
            raise CampaignError(f"regent-kube-apiserver exited with {self.process.returncode}:\n"
                                f"{tail(self.log_path)}")
        return self.request("GET", "/healthz")[0] == 200

    def request(self, method, path, body=None, content_type="application/json"):
        headers = {"Authorization": f"Bearer {KUBE_HARNESS_TOKEN}"}
        if body is not None and content_type != "application/json":
            data = json.dumps(body).encode()
            request = urllib.request.Request(self.url + path, data=data, method=method,
                                             headers={**headers, "Content-Type": content_type})
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as error:
                return error.code, error.read()
            except OSError as error:
                return 0, str(error)
        return http_json(method, self.url + path, body, timeout=5, headers=headers)

    @property
    def pid(self):
        return self.process.pid

    def create_pod(self, member):
        pods = f"/api/v1/namespaces/{KUBE_NAMESPACE}/pods"
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": member.name, "namespace": KUBE_NAMESPACE,
                            "labels": {**KUBE_LABELS, "cluster-name": SCOPE}},
               "spec": {"containers": [{"name": "postgres", "image": "postgres:15"}]}}
        status, body = self.request("POST", pods, pod)
        if status not in (200, 201):
            raise CampaignError(f"create Pod {member.name}: HTTP {status}: {body}")
        patch = {"status": {"phase": "Running", "podIP": member.address, "podIPs": [{"ip": member.address}]}}
        status, body = self.request("PATCH", f"{pods}/{member.name}/status", patch,
                                    content_type="application/merge-patch+json")
        if status != 200:
            raise CampaignError(f"patch Pod {member.name} status: HTTP {status}: {body}")

    def prepare_member(self, member):
        self.members.append(member)
        member.kubeconfig = os.path.join(member.dir, "kubeconfig")
        with open(member.kubeconfig, "w") as handle:
            json.dump(kubeconfig(self.url, member.name, KUBE_NAMESPACE), handle)
        os.chown(member.kubeconfig, *postgres_ids())

    def member_settings(self, member):
        section = {"namespace": KUBE_NAMESPACE, "labels": dict(KUBE_LABELS), "use_endpoints": False,
                   "pod_ip": member.address, "ports": [{"name": "postgresql", "port": PG_PORT}]}
        return {"kubernetes": section}, {"KUBECONFIG": member.kubeconfig}

    def stop(self):
        """SIGTERM: the server saves its objects and exits."""
        self.set_flaky(False)
        if self.process is not None and self.process.poll() is None:
            terminate(self.process)
            if self.process.returncode != 0:
                raise CampaignError(f"the Kubernetes API test server did not save its state "
                                    f"(exit {self.process.returncode}):\n{tail(self.log_path)}")

    def shutdown(self):
        self.set_flaky(False)
        if self.process is not None and self.process.poll() is None:
            signal_pid(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait()

    def leader_log(self):
        return KubeLeaderLog(net.DCS_ADDRESS, KUBE_PORT, KUBE_NAMESPACE, f"{SCOPE}-leader",
                             KUBE_HARNESS_TOKEN)

    def set_flaky(self, flaky, seed=0):
        """Intermittent answers through the server's fault injection: every 1-3 s one of a
        stall (requests time out), a run of 500/503/429 answers, or normal service."""
        if self.flaky_thread is not None:
            self.flaky_stop.set()
            self.flaky_thread.join()
            self.flaky_thread = None
            self.request("DELETE", "/_test/faults")
        if not flaky:
            return
        self.flaky_stop = threading.Event()
        rng = random.Random(seed)

        def toggle():
            while not self.flaky_stop.is_set():
                self.request("DELETE", "/_test/faults")
                choice = rng.choice(("stall", "500", "503", "429", "normal"))
                if choice == "stall":
                    self.request("POST", "/_test/faults", {"stall_ms": rng.randint(3000, 8000)})
                elif choice != "normal":
                    self.request("POST", "/_test/faults",
                                 {"fail": {"status": int(choice), "count": rng.randint(3, 20),
                                           **({"retry_after": 1} if choice in ("429", "503") else {})}})
                self.flaky_stop.wait(rng.uniform(1.0, 3.0))

        self.flaky_thread = threading.Thread(target=toggle, daemon=True, name="kube-flaky")
        self.flaky_thread.start()


# --------------------------------------------------------------------------
# Agents
# --------------------------------------------------------------------------

class RegentAgent:
    name = "regent"

    def __init__(self, binary, run_dir):
        # A copy the postgres user can execute wherever the build tree lives.
        bin_dir = os.path.join(run_dir, "bin")
        os.makedirs(bin_dir, exist_ok=True)
        os.chmod(bin_dir, 0o755)
        self.binary = os.path.join(bin_dir, "regent")
        shutil.copy2(binary, self.binary)
        os.chmod(self.binary, 0o755)
        self.version = subprocess.run([self.binary, "--version"], capture_output=True, text=True,
                                      check=False).stdout.strip() or "regent"

    def argv(self, config_path):
        return [self.binary, config_path]


class PatroniAgent:
    name = "patroni"

    def __init__(self):
        if not os.access(PATRONI_PYTHON, os.X_OK):
            raise CampaignError(f"{PATRONI_PYTHON} is missing: .ci/run installs the Patroni virtualenv")
        # `python -m patroni --version` prints "__main__.py 4.1.5".
        self.version = "patroni " + run([PATRONI_PYTHON, "-m", "patroni", "--version"]).split()[-1]

    def argv(self, config_path):
        return [PATRONI_PYTHON, "-m", "patroni", config_path]


# --------------------------------------------------------------------------
# Members
# --------------------------------------------------------------------------

class Member:
    def __init__(self, index, name, cluster_dir):
        self.index = index
        self.name = name
        self.address = net.member_address(index)
        self.ns = net.member_ns(name)
        self.dir = os.path.join(cluster_dir, name)
        # The data directory lives on the member's own small volume, so it can be filled.
        self.volume = os.path.join(self.dir, "volume")
        self.data_dir = os.path.join(self.volume, "data")
        self.fill_path = os.path.join(self.volume, "fill")
        self.config_path = os.path.join(self.dir, "config.yml")
        self.log_path = os.path.join(self.dir, "agent.log")
        self.kubeconfig = None
        self.env = {}
        self.process = None

    @property
    def rest_url(self):
        return f"http://{self.address}:{REST_PORT}"

    def make_dirs(self):
        uid, gid = postgres_ids()
        os.makedirs(self.volume, exist_ok=True)
        os.chmod(self.dir, 0o755)
        os.chown(self.dir, uid, gid)
        run(["mount", "-t", "tmpfs", "-o", f"size={VOLUME_SIZE},mode=0700,uid={uid},gid={gid}",
             f"{net.NS_PREFIX}{self.name}", self.volume])

    def unmount(self):
        for _ in range(50):
            if not os.path.ismount(self.volume):
                return
            if subprocess.run(["umount", self.volume], capture_output=True).returncode == 0:
                return
            time.sleep(0.2)
        subprocess.run(["umount", "-l", self.volume], capture_output=True)

    def config(self, dcs, settings):
        section, self.env = dcs.member_settings(self)
        subnet = f"{net.SUBNET_PREFIX}.0/24"
        bootstrap_dcs = {
            "ttl": settings["ttl"],
            "loop_wait": settings["loop_wait"],
            "retry_timeout": settings["retry_timeout"],
            "maximum_lag_on_failover": MAXIMUM_LAG_ON_FAILOVER,
            "synchronous_mode": settings["mode"] == "sync",
            "postgresql": {
                "use_pg_rewind": True,
                "use_slots": True,
                "parameters": {
                    "wal_level": "replica",
                    "hot_standby": "on",
                    "max_wal_senders": 10,
                    "max_replication_slots": 10,
                    "wal_log_hints": "on",
                    # Kept segments are counted by number on every timeline: with a large
                    # wal_keep_size, each failover's copy of the current segment stays, and a
                    # long campaign fills the volume by itself. Slots keep what replicas need.
                    "wal_keep_size": "16MB",
                    "max_wal_size": "128MB",
                    "min_wal_size": "32MB",
                },
            },
        }
        config = {
            "scope": SCOPE,
            "namespace": "/service/",
            "name": self.name,
            "restapi": {"listen": f"{self.address}:{REST_PORT}", "connect_address": f"{self.address}:{REST_PORT}"},
            **section,
            "bootstrap": {"dcs": bootstrap_dcs, "initdb": [{"encoding": "UTF8"}, "data-checksums"]},
            "postgresql": {
                "listen": f"{self.address}:{PG_PORT}",
                "connect_address": f"{self.address}:{PG_PORT}",
                "data_dir": self.data_dir,
                "bin_dir": PG_BIN_DIR,
                "pgpass": os.path.join(self.dir, "pgpass"),
                "authentication": {
                    "superuser": {"username": SUPERUSER, "password": SUPERUSER_PASSWORD},
                    "replication": {"username": REPLICATION_USER, "password": REPLICATION_PASSWORD},
                },
                "pg_hba": [
                    "local all all trust",
                    f"host replication {REPLICATION_USER} {subnet} md5",
                    f"host all all {subnet} md5",
                    "host all all 127.0.0.1/32 md5",
                ],
                "parameters": {"unix_socket_directories": self.dir, "shared_buffers": "32MB"},
            },
        }
        if "kubernetes" in section:
            # A top-level namespace would replace the Kubernetes namespace.
            del config["namespace"]
        return config

    def write_config(self, dcs, settings):
        with open(self.config_path, "w") as handle:
            handle.write(json.dumps(self.config(dcs, settings), indent=2) + "\n")  # JSON is YAML
        os.chown(self.config_path, *postgres_ids())

    def start_agent(self, agent):
        env = {
            "PATH": f"{PG_BIN_DIR}:/usr/local/bin:/usr/bin:/bin",
            "HOME": self.dir,
            "USER": "postgres",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            **self.env,
        }
        # `ip netns exec` and setpriv both exec: the Popen pid is the agent's own pid.
        argv = ["ip", "netns", "exec", self.ns, "setpriv", "--reuid=postgres", "--regid=postgres",
                "--clear-groups", "--", *agent.argv(self.config_path)]
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"\n==== start {time.strftime('%H:%M:%S')} ====\n".encode())
            log_file.flush()
            self.process = subprocess.Popen(argv, cwd=self.dir, env=env, stdout=log_file,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)

    def agent_alive(self):
        return self.process is not None and self.process.poll() is None

    @property
    def agent_pid(self):
        return self.process.pid if self.agent_alive() else None

    def postmaster_pid(self):
        try:
            with open(os.path.join(self.data_dir, "postmaster.pid")) as handle:
                pid = int(handle.readline().strip())
        except (OSError, ValueError):
            return None
        try:
            with open(f"/proc/{pid}/comm") as handle:
                comm = handle.read().strip()
        except OSError:
            return None
        return pid if comm in ("postgres", "postmaster") else None

    def fill_volume(self):
        """Fill the data volume to the last byte."""
        stat = os.statvfs(self.volume)
        free = stat.f_bavail * stat.f_frsize
        with open(self.fill_path, "wb", buffering=0) as handle:
            try:
                os.posix_fallocate(handle.fileno(), 0, max(free, 4096))
            except OSError:
                pass  # ENOSPC: it is full, which is the point
            handle.seek(0, os.SEEK_END)
            block = b"\1" * 65536
            try:
                while handle.write(block):
                    pass
            except OSError:
                pass

    def empty_volume(self):
        try:
            os.unlink(self.fill_path)
        except FileNotFoundError:
            pass


class Cluster:
    def __init__(self, run_dir, agent, dcs, settings):
        self.run_dir = run_dir
        self.agent = agent
        self.dcs = dcs
        self.settings = settings
        self.members = [Member(i, name, run_dir) for i, name in enumerate(MEMBER_NAMES)]
        self.by_address = {m.address: m.name for m in self.members}

    def member(self, name):
        return next(m for m in self.members if m.name == name)

    def multi_host_dsn(self):
        return (f"host={','.join(m.address for m in self.members)} port={PG_PORT} dbname=postgres "
                f"user={SUPERUSER} password={SUPERUSER_PASSWORD} target_session_attrs=read-write "
                f"connect_timeout=1 options='-c statement_timeout=5000'")

    def member_dsn(self, member):
        return (f"host={member.address} port={PG_PORT} dbname=postgres user={SUPERUSER} "
                f"password={SUPERUSER_PASSWORD} connect_timeout=1 options='-c statement_timeout=5000'")

    def start(self):
        for member in self.members:
            member.make_dirs()
            self.dcs.prepare_member(member)
        self.dcs.start()
        for member in self.members:
            member.write_config(self.dcs, self.settings)
            member.start_agent(self.agent)

    def state(self):
        """(primary name or None, its timeline, problem text). Healthy when the problem is
        empty: every agent runs, one primary, the two others streaming from it."""
        problems = [f"{m.name}: agent not running" for m in self.members if not m.agent_alive()]
        primaries = []
        for member in self.members:
            rows = query(member.address,
                         "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN 0 ELSE "
                         "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END")
            if rows is None:
                problems.append(f"{member.name}: Postgres unreachable")
            elif not rows[0][0]:
                primaries.append((member, rows[0][1]))
        if len(primaries) != 1:
            problems.append(f"primaries: {[m.name for m, _ in primaries]}")
            return None, None, "; ".join(problems)
        primary, timeline = primaries[0]
        rows = query(primary.address, "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'")
        streaming = {r[0] for r in rows or []}
        for member in self.members:
            if member is not primary and member.name not in streaming:
                problems.append(f"{member.name}: not streaming from {primary.name}")
        return primary.name, timeline, "; ".join(problems)

    def wait_healthy(self, timeout, what, agents_must_run=False):
        """Wait until the cluster is healthy and stays so, with the same leader and timeline, for
        `stable_seconds` (an agent may still act on what it saw during the fault, e.g. demote
        when its DCS retries run out). Returns (leader, timeline, first moment of that stretch)."""
        stable_seconds = max(2.0, 2.0 * self.settings["loop_wait"])
        last = ["never asked"]
        stretch = [None, None]  # (leader, timeline), since

        def healthy():
            exited = [m for m in self.members if m.process is not None and m.process.poll() is not None]
            if agents_must_run and exited:
                raise CampaignError(f"{exited[0].name}: the agent exited ({exited[0].process.returncode}):\n"
                                    f"{tail(exited[0].log_path, 15)}")
            leader, timeline, problem = self.state()
            last[0] = problem
            now = time.monotonic()
            if problem:
                stretch[0] = None
                return None
            if stretch[0] != (leader, timeline):
                stretch[0], stretch[1] = (leader, timeline), now
            return (leader, timeline, stretch[1]) if now - stretch[1] >= stable_seconds else None

        try:
            return wait_until(healthy, timeout, what, interval=0.25)
        except CampaignError as error:
            raise CampaignError(f"{error}; last state: {last[0]}") from None

    def patch_config(self, leader, patch):
        status, body = http_json("PATCH", f"{self.member(leader).rest_url}/config", patch, timeout=10)
        if status != 200:
            log(f"PATCH /config {patch} on {leader}: HTTP {status}: {str(body)[:200]}")
        return status == 200

    def switchover(self, leader, candidate):
        return http_json("POST", f"{self.member(leader).rest_url}/switchover",
                         {"leader": leader, "candidate": candidate}, timeout=60)

    def shutdown(self):
        for member in self.members:
            if member.process is not None and member.process.poll() is None:
                signal_pid(member.process.pid, signal.SIGCONT)
            net.kill_namespace_processes(member.ns)
            if member.process is not None:
                try:
                    member.process.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        try:
            self.dcs.shutdown()
        except Exception as error:  # keep tearing down
            log(f"stopping the DCS failed: {error!r}")
        net.kill_namespace_processes(net.DCS_NS)
        deadline = time.monotonic() + 20
        for member in self.members:
            while member.postmaster_pid() is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            member.unmount()
