"""Clients and the role watcher.

Writers insert unique ids, one every ~20 ms each: one writer per member connected to that member
only, and one through the multi-host read-write connection string. Every acknowledged insert is
recorded with the member that answered, the times it was sent and acknowledged (monotonic) and
the timeline and WAL position the member was writing on. The watcher asks every member its role
(and, for a primary, its timeline) every ~20 ms and records each change.
"""

import itertools
import threading
import time

import psycopg2

INSERT = ("INSERT INTO chaos_writes (id, writer) VALUES (%s, %s) RETURNING inet_server_addr()::text, "
          "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int, "
          "pg_current_wal_lsn()::text")
ROLE_QUERY = ("SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN 0 ELSE "
              "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END")
INTERVAL = 0.020
READ_ONLY_TRANSACTION = "25006"
ids = itertools.count(1)
ids_lock = threading.Lock()


def next_id():
    with ids_lock:
        return next(ids)


def lsn_value(text):
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:160]


class Writer(threading.Thread):
    def __init__(self, name, dsn, by_address, record_failures):
        super().__init__(daemon=True, name=f"writer-{name}")
        self.writer = name
        self.dsn = dsn
        self.by_address = by_address
        self.record_failures = record_failures
        self.acks = []  # (id, writer, member, sent, acked, timeline, lsn)
        # Commits whose wait for the synchronous standby was cancelled: committed locally but
        # never acknowledged as durable, so they count neither as acknowledged nor as lost.
        self.unconfirmed = []
        self.failures = []  # (sent, ended, message), only when record_failures
        self.stopping = threading.Event()

    def run(self):
        conn = None
        next_tick = time.monotonic()
        while not self.stopping.is_set():
            write_id = next_id()
            sent = time.monotonic()
            try:
                if conn is None:
                    conn = psycopg2.connect(self.dsn)
                    conn.autocommit = True
                del conn.notices[:]
                with conn.cursor() as cursor:
                    cursor.execute(INSERT, (write_id, self.writer))
                    address, timeline, lsn = cursor.fetchone()
                acked = time.monotonic()
                member = self.by_address.get(address.split("/")[0], address)
                if any("synchronous replication" in notice for notice in conn.notices):
                    self.unconfirmed.append((write_id, self.writer, member, sent, acked))
                else:
                    self.acks.append((write_id, self.writer, member, sent, acked, timeline, lsn_value(lsn)))
            except psycopg2.Error as error:
                if self.record_failures:
                    self.failures.append((sent, time.monotonic(), first_line(error)))
                # A replica refusing the insert keeps the session: once promoted it accepts the
                # next one on it, as a pooled client's would. Reconnecting after every refusal
                # would fork a backend per write on every replica.
                if conn is not None and not (error.pgcode == READ_ONLY_TRANSACTION and not conn.closed):
                    try:
                        conn.close()
                    except psycopg2.Error:
                        pass
                    conn = None
            next_tick = max(next_tick + INTERVAL, time.monotonic())
            self.stopping.wait(max(0.0, next_tick - time.monotonic()))
        if conn is not None:
            conn.close()


class RoleWatcher(threading.Thread):
    def __init__(self, member_name, dsn):
        super().__init__(daemon=True, name=f"watch-{member_name}")
        self.member = member_name
        self.dsn = dsn
        self.changes = []  # (time, role, timeline); role: primary | replica | unreachable
        self.stopping = threading.Event()

    def note(self, role, timeline):
        if not self.changes or self.changes[-1][1:] != (role, timeline):
            self.changes.append((time.monotonic(), role, timeline))

    def run(self):
        conn = None
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                if conn is None:
                    conn = psycopg2.connect(self.dsn)
                    conn.autocommit = True
                with conn.cursor() as cursor:
                    cursor.execute(ROLE_QUERY)
                    in_recovery, timeline = cursor.fetchone()
                self.note("replica" if in_recovery else "primary", None if in_recovery else timeline)
            except psycopg2.Error:
                self.note("unreachable", None)
                if conn is not None:
                    try:
                        conn.close()
                    except psycopg2.Error:
                        pass
                    conn = None
            self.stopping.wait(max(0.0, INTERVAL - (time.monotonic() - started)))
        if conn is not None:
            conn.close()


class Workload:
    def __init__(self, cluster):
        self.writers = [Writer(m.name, cluster.member_dsn(m), cluster.by_address, False)
                        for m in cluster.members]
        self.writers.append(Writer("rw", cluster.multi_host_dsn(), cluster.by_address, True))
        self.watchers = [RoleWatcher(m.name, cluster.member_dsn(m).replace("statement_timeout=5000",
                                                                            "statement_timeout=1000"))
                         for m in cluster.members]

    def start(self):
        for thread in self.watchers + self.writers:
            thread.start()

    def stop(self):
        for thread in self.watchers + self.writers:
            thread.stopping.set()
        for thread in self.watchers + self.writers:
            thread.join(timeout=15)

    def acks(self):
        return sorted((a for w in self.writers for a in w.acks), key=lambda a: a[4])

    def unconfirmed(self):
        return [u for w in self.writers for u in w.unconfirmed]

    def rw_failures(self):
        return next(w for w in self.writers if w.writer == "rw").failures

    def role_changes(self):
        return {w.member: w.changes for w in self.watchers}
