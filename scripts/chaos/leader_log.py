"""The leader lock as the DCS recorded it: who held it and which optime the leader had published,
at every revision (etcd) or resourceVersion (Kubernetes) that changed either.

The checker uses it for the asynchronous-mode rule: a candidate may be promoted only if it is
within maximum_lag_on_failover of the optime the old leader last published, so the optime in
the DCS just before the new holder took the lock is what the promoted member's timeline fork
is measured against. The log follows the DCS's own order (a watch resumed from the last
revision seen after every disconnect), not the harness's clock, so a slow or flaky DCS cannot
reorder an optime update and a lock change.

Entries: (seen_at, revision, leader or None, optime or None); seen_at is the monotonic time
the harness received it.
"""

import base64
import http.client
import json
import threading
import time

# A watch that stays silent this long is re-opened from the last revision seen: the fault
# proxy or the API server's injected stalls can leave a connection open but dead.
READ_TIMEOUT_S = 10
RETRY_PAUSE_S = 0.2


def _b64(text):
    return base64.b64encode(text.encode()).decode()


def _prefix_end(prefix):
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _optime_from_status(value):
    try:
        optime = json.loads(value).get("optime")
        return int(optime) if optime is not None else None
    except (ValueError, TypeError, AttributeError):
        return None


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class LeaderLog(threading.Thread):
    def __init__(self, name):
        super().__init__(daemon=True, name=name)
        self.entries = []
        self.leader = None
        self.optime = None
        self.stopping = threading.Event()
        self.reconnects = 0

    def emit(self, revision):
        entry = (time.monotonic(), revision, self.leader, self.optime)
        if not self.entries or self.entries[-1][2:] != entry[2:]:
            self.entries.append(entry)

    def run(self):
        while not self.stopping.is_set():
            try:
                self.follow()
            except (OSError, ValueError, KeyError, http.client.HTTPException):
                pass
            self.reconnects += 1
            self.stopping.wait(RETRY_PAUSE_S)


class EtcdLeaderLog(LeaderLog):
    """etcd v3 through its JSON gateway: one range of the scope's keys, then a watch from the
    next revision, resumed from the last revision seen (re-ranged after a compaction)."""

    def __init__(self, host, port, scope):
        super().__init__("leader-log-etcd")
        self.host, self.port = host, port
        self.prefix = f"/service/{scope}/"
        self.revision = None
        self.status_optime = None
        self.legacy_optime = None

    def post(self, path, body):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=READ_TIMEOUT_S)
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        return conn, conn.getresponse()

    def apply(self, key, value, deleted):
        name = key[len(self.prefix):]
        if name == "leader":
            self.leader = None if deleted else value
        elif name == "status":
            self.status_optime = None if deleted else _optime_from_status(value)
        elif name == "optime/leader":
            self.legacy_optime = None if deleted else _int_or_none(value)
        else:
            return
        self.optime = self.status_optime if self.status_optime is not None else self.legacy_optime

    def follow(self):
        key, range_end = _b64(self.prefix), _b64(_prefix_end(self.prefix))
        if self.revision is None:
            conn, response = self.post("/v3/kv/range", {"key": key, "range_end": range_end})
            body = json.loads(response.read())
            conn.close()
            if response.status != 200:
                return
            for kv in body.get("kvs") or []:
                self.apply(base64.b64decode(kv["key"]).decode(),
                           base64.b64decode(kv.get("value", "")).decode(), False)
            self.revision = int(body["header"]["revision"])
            self.emit(self.revision)
        conn, response = self.post("/v3/watch", {"create_request": {
            "key": key, "range_end": range_end, "start_revision": str(self.revision + 1)}})
        try:
            if response.status != 200:
                return
            for line in response:
                if self.stopping.is_set():
                    return
                result = json.loads(line).get("result") or {}
                if int(result.get("compact_revision") or 0) > 0:
                    self.revision = None  # history is gone: read everything again
                    return
                if result.get("canceled"):
                    return
                pending = None
                for event in result.get("events") or []:
                    kv = event["kv"]
                    revision = int(kv["mod_revision"])
                    if pending is not None and revision != pending:
                        self.emit(pending)  # one entry per revision: a txn's writes together
                    pending = revision
                    self.apply(base64.b64decode(kv["key"]).decode(),
                               base64.b64decode(kv.get("value", "")).decode(),
                               event.get("type") == "DELETE")
                    self.revision = revision
                if pending is not None:
                    self.emit(pending)
        finally:
            conn.close()


class KubeLeaderLog(LeaderLog):
    """The leader ConfigMap's `leader` and `optime` annotations through a LIST and a WATCH
    of the namespace's ConfigMaps, resumed from the last resourceVersion (re-listed on 410)."""

    def __init__(self, host, port, namespace, object_name, token):
        super().__init__("leader-log-kube")
        self.host, self.port = host, port
        self.path = f"/api/v1/namespaces/{namespace}/configmaps"
        self.object_name = object_name
        self.headers = {"Authorization": f"Bearer {token}"}
        self.resource_version = None

    def get(self, path):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=READ_TIMEOUT_S)
        conn.request("GET", path, headers=self.headers)
        return conn, conn.getresponse()

    def apply(self, obj, deleted):
        if obj.get("metadata", {}).get("name") != self.object_name:
            return False
        annotations = {} if deleted else (obj["metadata"].get("annotations") or {})
        self.leader = annotations.get("leader") or None
        self.optime = _int_or_none(annotations.get("optime"))
        return True

    def follow(self):
        if self.resource_version is None:
            conn, response = self.get(self.path)
            body = json.loads(response.read())
            conn.close()
            if response.status != 200:
                return
            for item in body.get("items") or []:
                self.apply(item, False)
            self.resource_version = body["metadata"]["resourceVersion"]
            self.emit(int(self.resource_version))
        conn, response = self.get(f"{self.path}?watch=1&resourceVersion={self.resource_version}")
        try:
            if response.status != 200:
                if response.status == 410:
                    self.resource_version = None
                return
            for line in response:
                if self.stopping.is_set():
                    return
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        self.resource_version = None
                    return
                version = obj.get("metadata", {}).get("resourceVersion")
                if version is None:
                    continue
                if self.apply(obj, event.get("type") == "DELETED"):
                    self.emit(int(version))
                self.resource_version = version
        finally:
            conn.close()
