#!/usr/bin/env python3
"""Freshness at scale: permgate fed from the CRM's PostgreSQL database (issue 17 item 6).

Everything on 127.0.0.1, all children of this script (stopped by pid / pg_ctl at the end):

- a throwaway PostgreSQL cluster (initdb + pg_ctl, a temp dir, a free port, fsync off, niced),
  the tests' CRM schema (tests/database.rs: crm_users, leads under row-level security per org,
  soft deletes) plus a lead_shares table, filled with --users users and --records leads by
  `INSERT ... SELECT generate_series` (1,000,000 and 10,000,000 at --scale 1);
- permgate replicas (`serve`, the demo config with record checks on GET /api/v1/leads/{id},
  `[snapshot.database]` with incremental queries and `notify_channel`), in front of the bench's
  stub upstream (`permgate-bench stub-upstream`: every forwarded call is 200, so 200 = allowed,
  403 = refused by the gateway).

It measures:
1. the full load: start -> /readyz 200 (and /status database_full_loads = 1), RSS and peak RSS;
2. commit -> decision: a committed SQL change (insert a lead owned by U, reassign a lead to U,
   share a lead with U; a soft delete separately, fewer samples) until a call with U's token
   through each replica reflects it (every replica polled every ~5 ms), p50/p99/max, with and
   without a NOTIFY in the committing transaction, for 1 and 3 replicas;
3. what polling costs the database: CPU of the postgres processes (/proc) and transactions and
   statements per second (pg_stat_database, pg_stat_statements) over an idle minute;
4. ordinary calls while polling (and changes arrive) against a gateway on a static snapshot file
   of the same data (`permgate snapshot export`): `permgate-bench load`, open loop, p50/p99, and
   every status checked;
5. a reconciliation while serving (unless --no-reconcile-check): a new replica with
   reconcile_interval ~2.2x its first load, the same load run across its first reconciliation:
   p50/p99, statuses, how long the reconciliation took (/status database_full_load_ms) and RSS.

A minimal PostgreSQL wire-protocol client (trust auth, simple queries) keeps this script to the
standard library: commit time is when the server's ReadyForQuery after COMMIT arrives.

    python3 bench/freshness.py --scale 0.01          # a quick small run first
    python3 bench/freshness.py                       # 1M users, 10M leads
"""

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
PG_BIN = pathlib.Path("/usr/local/bin")
ADMIN_TOKEN = "bench-admin-token-0123456789"
DEMO_SECRET = b"permgate-demo-secret-not-for-production-0123456789"
NICE = ["nice", "-n", "19"]


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loadavg():
    return pathlib.Path("/proc/loadavg").read_text().split()[:3]


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p))]


# ---- a minimal PostgreSQL client ---------------------------------------------------------------

class PgError(Exception):
    pass


class Pg:
    """Protocol 3.0 over TCP, trust authentication, simple queries; rows as text."""

    def __init__(self, port, user="postgres", db="postgres"):
        self.sock = socket.create_connection(("127.0.0.1", port), 10)
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        body = struct.pack("!i", 196608) + f"user\0{user}\0database\0{db}\0\0".encode()
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)
        self._until_ready()

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise PgError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _until_ready(self):
        rows, error = [], None
        while True:
            kind, length = struct.unpack("!ci", self._read(5))
            payload = self._read(length - 4)
            if kind == b"R" and struct.unpack("!i", payload[:4])[0] != 0:
                raise PgError("authentication other than trust is not supported")
            if kind == b"E":
                fields = dict((f[:1], f[1:].decode()) for f in payload.split(b"\0") if f)
                error = fields.get(b"M", "error")
            elif kind == b"D":
                n = struct.unpack("!h", payload[:2])[0]
                pos, row = 2, []
                for _ in range(n):
                    ln = struct.unpack("!i", payload[pos:pos + 4])[0]
                    pos += 4
                    if ln < 0:
                        row.append(None)
                    else:
                        row.append(payload[pos:pos + ln].decode())
                        pos += ln
                rows.append(row)
            elif kind == b"Z":
                if error:
                    raise PgError(error)
                return rows

    def query(self, sql):
        data = sql.encode() + b"\0"
        self.sock.sendall(b"Q" + struct.pack("!i", len(data) + 4) + data)
        return self._until_ready()

    def value(self, sql):
        return self.query(sql)[0][0]

    def close(self):
        try:
            self.sock.sendall(b"X" + struct.pack("!i", 4))
        except OSError:
            pass
        self.sock.close()


# ---- the database -----------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE crm_users (id text PRIMARY KEY, roles text[] NOT NULL, teams text[], manager text,
                        deleted boolean NOT NULL DEFAULT false,
                        updated_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE leads (id integer PRIMARY KEY, org text NOT NULL, owner text,
                    deleted boolean NOT NULL DEFAULT false,
                    updated_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE lead_shares (lead_id integer NOT NULL, org text NOT NULL, user_id text, team text,
                          deleted boolean NOT NULL DEFAULT false,
                          updated_at timestamptz NOT NULL DEFAULT clock_timestamp());
"""

AFTER_FILL = """
ALTER TABLE leads ENABLE ROW LEVEL SECURITY;
CREATE POLICY per_org ON leads USING (org = current_setting('app.current_org', true));
ALTER TABLE lead_shares ENABLE ROW LEVEL SECURITY;
CREATE POLICY per_org ON lead_shares USING (org = current_setting('app.current_org', true));
CREATE ROLE permgate_ro LOGIN PASSWORD 'ro' NOSUPERUSER NOBYPASSRLS;
GRANT SELECT ON crm_users, leads, lead_shares TO permgate_ro;
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
"""


def uid(n):
    return f"u-{n:07d}"


class Postgres:
    def __init__(self, port):
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="freshbench-pg-")
        self.data = os.path.join(self.dir, "data")
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_pg([str(PG_BIN / "initdb"), "-D", self.data, "-A", "trust", "-U", "postgres",
                     "--no-sync"], quiet=True)
        opts = (f"-p {port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c shared_buffers=1GB "
                "-c maintenance_work_mem=1GB -c max_wal_size=20GB -c checkpoint_timeout=30min "
                "-c wal_level=minimal -c max_wal_senders=0 -c autovacuum=off "
                "-c shared_preload_libraries=pg_stat_statements -c max_connections=50")
        self._as_pg([str(PG_BIN / "pg_ctl"), "-D", self.data, "-o", opts, "-l",
                     os.path.join(self.dir, "log"), "-w", "-t", "60", "start"], quiet=True)
        self.pid = int(pathlib.Path(self.data, "postmaster.pid").read_text().split()[0])

    def _as_pg(self, cmd, quiet=False):
        full = NICE + ["runuser", "-u", "postgres", "--"] + cmd
        out = subprocess.run(full, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {out.stderr}")

    def cpu_ticks(self):
        """utime+stime (clock ticks) of the postmaster and all its children."""
        total = 0
        for p in pathlib.Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                f = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(p.name) == self.pid or int(f[1]) == self.pid:
                total += int(f[11]) + int(f[12])
        return total

    def stop(self):
        try:
            self._as_pg([str(PG_BIN / "pg_ctl"), "-D", self.data, "-m", "fast", "-t", "30",
                         "stop"])
        except Exception as e:  # noqa: BLE001 - then by pid
            log(f"pg_ctl stop: {e}; SIGKILL {self.pid}")
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def fill(pg, users, records):
    """The CRM's data: users in a 10-ary manager tree in 1,000 teams, lead n owned by user
    (n-1)//10 + 1 (each user owns 10 consecutive leads), 1% of leads shared with a team."""
    t = {}
    pg.query(SCHEMA)
    started = time.monotonic()
    pg.query(f"""
        INSERT INTO crm_users (id, roles, teams, manager, updated_at)
        SELECT 'u-' || lpad(g::text, 7, '0'),
               CASE WHEN g % 100 = 0 THEN '{{sales_manager}}'::text[] ELSE '{{limited_rep}}' END,
               ARRAY['t-' || (g % 1000)],
               CASE WHEN g = 1 THEN NULL ELSE 'u-' || lpad(((g - 2) / 10 + 1)::text, 7, '0') END,
               '2026-01-01'
        FROM generate_series(1, {users}) g""")
    t["users_s"] = time.monotonic() - started
    s = time.monotonic()
    pg.query(f"""
        INSERT INTO leads (id, org, owner, updated_at)
        SELECT g, 'acme', 'u-' || lpad(((g - 1) / 10 % {users} + 1)::text, 7, '0'), '2026-01-01'
        FROM generate_series(1, {records}) g""")
    t["leads_s"] = time.monotonic() - s
    s = time.monotonic()
    pg.query(f"""
        INSERT INTO lead_shares (lead_id, org, team, updated_at)
        SELECT g, 'acme', 't-' || (g % 1000), '2026-01-01'
        FROM generate_series(1, {records}, 100) g""")
    t["shares_s"] = time.monotonic() - s
    s = time.monotonic()
    pg.query("CREATE INDEX ON crm_users (updated_at); CREATE INDEX ON leads (updated_at); "
             "CREATE INDEX ON lead_shares (updated_at); "
             "CREATE INDEX ON lead_shares (lead_id)")
    pg.query(AFTER_FILL)
    for table in ("crm_users", "leads", "lead_shares"):
        pg.query(f"VACUUM ANALYZE {table}")
    t["indexes_analyze_s"] = time.monotonic() - s
    t["total_s"] = time.monotonic() - started
    t["db_bytes"] = int(pg.value("SELECT pg_database_size('postgres')"))
    return t


# ---- the gateways -----------------------------------------------------------------------------

def records_config():
    base = (REPO / "config/demo/permgate.toml").read_text()
    text = base.replace(
        'path = "/api/v1/leads/{id}"\npermission = "lead.view"',
        'path = "/api/v1/leads/{id}"\npermission = "lead.view"\n'
        'records = [{ type = "lead", id = "path:id" }]', 1)
    assert text != base
    return text + '\n[[record_type]]\nname = "lead"\nid = "integer"\n'


DB_SECTION = """
[snapshot.database]
url = "postgres://permgate_ro:ro@127.0.0.1:{port}/postgres"
{settings}
session_sql = ["SELECT set_config('app.current_org', 'acme', false)"]

[snapshot.database.queries]
users = "SELECT id, roles, teams, manager FROM crm_users WHERE NOT deleted"
roles = "SELECT 'limited_rep' AS id, ARRAY['lead.view@own+shared'] AS permissions"
owners = "SELECT 'lead' AS type, id::text AS id, owner FROM leads WHERE NOT deleted"
shares = "SELECT 'lead' AS type, lead_id::text AS id, user_id, team FROM lead_shares WHERE NOT deleted"
cursor = "SELECT greatest((SELECT max(updated_at) FROM leads), (SELECT max(updated_at) FROM crm_users), (SELECT max(updated_at) FROM lead_shares), '-infinity')::text"

[snapshot.database.incremental]
users = "SELECT id, roles, teams, manager, deleted FROM crm_users WHERE updated_at > $1::timestamptz"
owners = "SELECT 'lead' AS type, id::text AS id, owner, deleted FROM leads WHERE updated_at > $1::timestamptz"
shares = "SELECT 'lead' AS type, lead_id::text AS id, user_id, team, deleted FROM lead_shares WHERE updated_at > $1::timestamptz"
"""


class Gateway:
    def __init__(self, args, name, upstream, db_port=None, snapshot_file=None, reconcile_ms=None):
        self.name = name
        self.port, self.admin = free_port(), free_port()
        self.dir = tempfile.mkdtemp(prefix=f"freshbench-{name}-")
        text = records_config().replace('path = "snapshot.json"',
                                        f'path = "{snapshot_file or "absent.json"}"', 1)
        text += f'\n[admin]\nlisten = "127.0.0.1:{self.admin}"\ntoken = "{ADMIN_TOKEN}"\n'
        text += "max_snapshot_mb = 4096\n"
        if db_port:
            settings = (f"reconcile_interval_ms = {reconcile_ms or args.reconcile_ms}\n"
                        "notify_channel = \"permgate\"")
            if args.poll_ms:
                settings += f"\npoll_interval_ms = {args.poll_ms}"
            text += DB_SECTION.format(port=db_port, settings=settings)
        self.config = os.path.join(self.dir, "permgate.toml")
        pathlib.Path(self.config).write_text(text)
        self.log = open(os.path.join(self.dir, "log"), "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [args.permgate_bin, "serve", "--config", self.config, "--listen",
             f"127.0.0.1:{self.port}", "--upstream", f"127.0.0.1:{upstream}"],
            stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": "info"})
        self.conns = {}

    def admin_get(self, path, token=True):
        c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=30)
        try:
            c.request("GET", path, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
                      if token else {})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def wait_ready(self, timeout):
        """Seconds from start to /readyz 200, RSS after (MiB) and peak RSS."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_tail()}")
            try:
                if self.admin_get("/readyz", token=False)[0] == 200:
                    ready = time.monotonic() - self.started
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{self.name} not ready in {timeout} s: {self.log_tail()}")
        time.sleep(1)
        return {"ready_s": round(ready, 2), **self.memory(), "counters": self.counters()}

    def memory(self):
        m = {}
        for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                m[{"VmRSS": "rss_mib", "VmHWM": "peak_rss_mib"}[k]] = int(v.split()[0]) // 1024
        return m

    def counters(self):
        status, body = self.admin_get("/status")
        c = json.loads(body)["counters"] if status == 200 else {}
        keys = ("database_full_loads", "database_incremental_batches", "snapshot_update_failures",
                "database_full_load_ms")
        return {k: c.get(k) for k in keys}

    def log_tail(self):
        self.log.flush()
        return pathlib.Path(self.dir, "log").read_text()[-3000:]

    def call(self, token, lead):
        """Status of GET /api/v1/leads/{lead} (a keep-alive connection per thread)."""
        key = threading.get_ident()
        for _ in range(2):
            c = self.conns.get(key)
            if c is None:
                c = self.conns[key] = http.client.HTTPConnection("127.0.0.1", self.port,
                                                                 timeout=10)
            try:
                c.request("GET", f"/api/v1/leads/{lead}",
                          headers={"authorization": f"Bearer {token}"})
                r = c.getresponse()
                r.read()
                return r.status
            except (OSError, http.client.HTTPException):
                c.close()
                self.conns.pop(key, None)
        return 0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()
        if os.environ.get("FRESHBENCH_KEEP"):
            log(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(user):
    now = int(time.time())
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "demo-hs256"}).encode())
    claims = b64(json.dumps({"sub": user, "iss": "https://crm.example.test", "aud": "crm-api",
                             "iat": now, "nbf": now - 60, "exp": now + 7200}).encode())
    sig = hmac.new(DEMO_SECRET, f"{head}.{claims}".encode(), hashlib.sha256).digest()
    return f"{head}.{claims}.{b64(sig)}"


# ---- commit -> decision -----------------------------------------------------------------------

class Changes:
    """The CRM's changes, each one committed transaction, with what the gateway must then answer.
    Users and leads are taken from ranges the load scenario does not touch."""

    def __init__(self, users, records):
        self.users, self.records = users, records
        self.next_user = users // 2
        self.next_new = records + 1
        self.next_old = records // 2

    def user(self):
        self.next_user += 1
        if self.next_user > self.users:
            self.next_user = self.users // 2 + 1
        return uid(self.next_user)

    def make(self, kind, notify):
        """(sql, user, lead, status the gateway answers U once it reflects the change)."""
        u = self.user()
        if kind == "insert":
            lead = self.next_new
            self.next_new += 1
            sql = f"INSERT INTO leads (id, org, owner) VALUES ({lead}, 'acme', '{u}')"
            want = 200
        elif kind == "reassign":
            lead = self.next_old
            self.next_old += 7
            sql = (f"UPDATE leads SET owner = '{u}', updated_at = clock_timestamp() "
                   f"WHERE id = {lead}")
            want = 200
        elif kind == "share":
            lead = self.next_old
            self.next_old += 7
            sql = (f"INSERT INTO lead_shares (lead_id, org, user_id) "
                   f"VALUES ({lead}, 'acme', '{u}')")
            want = 200
        elif kind == "delete":
            # A lead U owns (own scope: 200), soft-deleted: U loses it.
            lead = self.next_old
            self.next_old += 7
            owner = (lead - 1) // 10 % self.users + 1
            u = uid(owner)
            sql = (f"UPDATE leads SET deleted = true, updated_at = clock_timestamp() "
                   f"WHERE id = {lead}")
            want = 403
        else:
            raise ValueError(kind)
        if notify:
            sql = f"BEGIN; {sql}; NOTIFY permgate; COMMIT"
        return sql, u, lead, want


def commit_to_decision(pg, gateways, changes, kinds, samples, notify, gap_s, timeout_s):
    """Commit `samples` changes, one every ~gap_s (not waiting for the previous one to be seen),
    and poll every gateway every ~5 ms with the user's token until each answers the new
    decision. Returns per-kind latencies (ms) over all gateways, and the misses."""
    pending = []  # [sample dict]
    lock = threading.Lock()
    done = threading.Event()
    results = []

    def poller(gw):
        while not (done.is_set() and not pending_for(gw)):
            with lock:
                todo = [s for s in pending if gw.name in s["waiting"]]
            for s in todo:
                st = gw.call(s["token"], s["lead"])
                now = time.monotonic()
                with lock:
                    if st == s["want"]:
                        s["waiting"].discard(gw.name)
                        results.append((s["kind"], gw.name, (now - s["committed"]) * 1000,
                                        s["wall"]))
                    elif now - s["committed"] > timeout_s:
                        s["waiting"].discard(gw.name)
                        results.append((s["kind"], gw.name, None, s["wall"]))
            with lock:
                pending[:] = [s for s in pending if s["waiting"]]
            time.sleep(0.005)

    def pending_for(gw):
        with lock:
            return any(gw.name in s["waiting"] for s in pending)

    threads = [threading.Thread(target=poller, args=(g,), daemon=True) for g in gateways]
    for t in threads:
        t.start()
    wrong_before = 0
    for i in range(samples):
        kind = kinds[i % len(kinds)]
        sql, u, lead, want = changes.make(kind, notify)
        tok = token(u)
        # Before: the gateway must not already answer the new decision (else the sample
        # would measure nothing: it is skipped and counted).
        if any(g.call(tok, lead) == want for g in gateways):
            wrong_before += 1
            continue
        pg.query(sql)
        committed = time.monotonic()
        with lock:
            pending.append({"kind": kind, "token": tok, "lead": lead, "want": want,
                            "committed": committed, "wall": time.time(), "waiting": {g.name for g in gateways}})
        time.sleep(gap_s * random.uniform(0.5, 1.5))
    done.set()
    for t in threads:
        t.join(timeout_s + 10)
    out = {"samples": samples, "notify": notify, "replicas": len(gateways),
           "already_before": wrong_before,
           "each": [(k, g, round(ms, 1) if ms is not None else None, round(w, 3))
                    for k, g, ms, w in results]}
    for kind in sorted(set(k for k, _, _, _ in results)) + ["all"]:
        lat = [ms for k, _, ms, _ in results if (k == kind or kind == "all") and ms is not None]
        miss = sum(1 for k, _, ms, _ in results if (k == kind or kind == "all") and ms is None)
        out[kind] = {"n": len(lat), "missed": miss,
                     "p50_ms": round(pct(lat, 0.5), 1) if lat else None,
                     "p99_ms": round(pct(lat, 0.99), 1) if lat else None,
                     "max_ms": round(max(lat), 1) if lat else None}
    return out


# ---- what polling costs the database ----------------------------------------------------------

def idle_cost(pg, db, seconds):
    """The postgres processes' CPU and the permgate role's transactions/statements over an idle
    window (our own two reads of the counters are subtracted)."""
    def counts():
        xact = int(pg.value("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                            "WHERE datname = 'postgres'"))
        calls = int(pg.value("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s "
                             "JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = "
                             "'permgate_ro'"))
        return xact, calls
    pg.query("SELECT pg_stat_clear_snapshot()")
    x0, c0 = counts()
    cpu0, t0 = db.cpu_ticks(), time.monotonic()
    time.sleep(seconds)
    pg.query("SELECT pg_stat_clear_snapshot()")
    x1, c1 = counts()
    cpu1, t1 = db.cpu_ticks(), time.monotonic()
    hz = os.sysconf("SC_CLK_TCK")
    el = t1 - t0
    return {"seconds": round(el, 1),
            "postgres_cpu_percent_of_a_core": round((cpu1 - cpu0) / hz / el * 100, 2),
            "xacts_per_s": round((x1 - x0 - 4) / el, 2),
            "permgate_statements_per_s": round((c1 - c0) / el, 2)}


# ---- ordinary calls ---------------------------------------------------------------------------

def load_scenario(path, users):
    """Reps 1..50 read their own leads (200) and, one call in ten, another rep's (403)."""
    lines = ['name = "fresh-own-leads"',
             'description = "limited reps read their own leads (200) and others\' (403)"']
    for u in range(1, 51):
        lo = (u - 1) * 10 + 1
        lines += ["[[request]]", 'method = "GET"', f'path = "/api/v1/leads/{{{lo}..{lo + 9}}}"',
                  f'user = "{uid(u)}"', "expect = 200", "weight = 9"]
        other = u % 50 + 1
        olo = (other - 1) * 10 + 1
        lines += ["[[request]]", 'method = "GET"', f'path = "/api/v1/leads/{{{olo}..{olo + 9}}}"',
                  f'user = "{uid(u)}"', "expect = 403", "weight = 1"]
    pathlib.Path(path).write_text("\n".join(lines) + "\n")


def run_load(args, gw, scenario, out_json, duration=None):
    duration = duration or args.load_duration
    # The load generator runs at the gateway's own priority (not NICE): it stands for clients on
    # other machines, and niced it waits behind the gateway's control threads (nice +10) while a
    # full load runs, which shows up as latency of calls it had not sent yet.
    cmd = [args.bench_bin, "load", "--target", f"http://127.0.0.1:{gw.port}",
                  "--scenario", scenario, "--rate", str(args.rate), "--duration",
                  str(duration), "--connections", "20", "--json", out_json,
                  "--pid", str(gw.proc.pid)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    if out.returncode != 0:
        raise RuntimeError(f"load: {out.stderr}{out.stdout}")
    return json.loads(pathlib.Path(out_json).read_text())


def summarize_load(r):
    """p50/p99 (ms), requests, unexpected statuses and errors from permgate-bench's JSON."""
    x = r["result"]
    return {"requests": x["requests"], "rps": round(x["throughput"], 1),
            "p50_ms": x["p50_us"] / 1000, "p99_ms": x["p99_us"] / 1000,
            "p999_ms": r["p999_us"] / 1000, "max_ms": r["max_us"] / 1000,
            "cpu_us_per_req": x["cpu_us_per_req"], "unexpected": x["unexpected"],
            "errors": sum(x["transport_errors"].values()), "statuses": x["statuses"]}


def background_changes(pg, changes, stop, per_s, counter):
    kinds = ["insert", "reassign", "share"]
    i = 0
    while not stop.is_set():
        sql, *_ = changes.make(kinds[i % 3], notify=False)
        pg.query(sql)
        counter[0] += 1
        i += 1
        stop.wait(1 / per_s)


def mem_available_mib():
    for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 1 << 30


def memory_guard(gateways, floor_mib, low):
    """The machine is shared: stop our gateways rather than let the OOM killer pick anyone."""
    while True:
        low[0] = min(low[0], mem_available_mib())
        if low[0] < floor_mib:
            log(f"MemAvailable {low[0]} MiB < {floor_mib} MiB: stopping the gateways")
            for g in list(gateways):
                try:
                    g.proc.kill()
                except OSError:
                    pass
            return
        time.sleep(0.5)


# ---- the run ----------------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="1 = 1M users, 10M leads")
    p.add_argument("--samples", type=int, default=120, help="commit->decision samples per set")
    p.add_argument("--delete-samples", type=int, default=3)
    p.add_argument("--delete-timeout", type=float, default=600)
    p.add_argument("--gap-ms", type=float, default=250, help="mean time between commits")
    p.add_argument("--poll-ms", type=int, default=0, help="poll_interval_ms (0: the default)")
    p.add_argument("--reconcile-ms", type=int, default=7_200_000)
    p.add_argument("--idle-seconds", type=float, default=60)
    p.add_argument("--rate", type=float, default=1000, help="open-loop rate of the load runs")
    p.add_argument("--load-duration", type=float, default=20)
    p.add_argument("--load-rounds", type=int, default=2)
    p.add_argument("--changes-per-s", type=float, default=5, help="commits during the load")
    p.add_argument("--ready-timeout", type=float, default=900)
    p.add_argument("--permgate-bin", default=None)
    p.add_argument("--bench-bin", default=None)
    p.add_argument("--json", default=None, help="default bench/results/freshness-<scale>.json")
    p.add_argument("--no-reconcile-check", dest="reconcile_check", action="store_false",
                   help="skip 5.: the load across a reconciliation (a full load while serving)")
    p.add_argument("--load-only", action="store_true",
                   help="only 1., 4. (without the soft deletes) and 5.: the full load, the load "
                        "against a static file and the load across a reconciliation")
    args = p.parse_args()
    users, records = int(1_000_000 * args.scale), int(10_000_000 * args.scale)
    for name, attr in (("permgate", "permgate_bin"), ("permgate-bench", "bench_bin")):
        if getattr(args, attr) is None:
            setattr(args, attr, str(REPO / "target/release" / name))
    out_path = args.json or str(REPO / f"bench/results/freshness-{args.scale:g}.json")
    result = {"date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
              "users": users, "records": records, "shares": (records + 99) // 100,
              "loadavg_before": loadavg(), "permgate_bin": args.permgate_bin,
              "args": vars(args)}
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    result["commit"] = commit
    log(f"{users} users, {records} leads; permgate {args.permgate_bin}; loadavg {loadavg()}")
    pg = gateways = stub = static = None
    work = tempfile.mkdtemp(prefix="freshbench-")
    try:
        pg_port = free_port()
        db = Postgres(pg_port)
        pg = Pg(pg_port)
        log(f"postgres on 127.0.0.1:{pg_port} (pid {db.pid}); filling")
        result["fill"] = fill(pg, users, records)
        log(f"fill: {result['fill']}")
        stub_port = free_port()
        stub = subprocess.Popen(NICE + [args.bench_bin, "stub-upstream", "--listen",
                                        f"127.0.0.1:{stub_port}"])
        changes = Changes(users, records)
        gateways = []
        low = [mem_available_mib()]
        threading.Thread(target=memory_guard, args=(gateways, 1500, low), daemon=True).start()
        # 1. One replica: the full load.
        a = Gateway(args, "a", stub_port, db_port=pg_port)
        gateways.append(a)
        result["full_load"] = {"a": a.wait_ready(args.ready_timeout)}
        log(f"replica a ready: {result['full_load']['a']}")
        # The first overlap window (10 s) makes a change a full load: wait it out.
        time.sleep(11)
        if not args.load_only:
            result["idle_1"] = idle_cost(pg, db, args.idle_seconds)
            log(f"idle, 1 replica: {result['idle_1']}")
            kinds = ["insert", "reassign", "share"]
            lat = result["latency"] = []
            for notify in (False, True):
                r = commit_to_decision(pg, [a], changes, kinds, args.samples, notify,
                                       args.gap_ms / 1000, 60)
                lat.append(r)
                log(f"commit->decision, 1 replica, notify={notify}: {r['all']} {r}")
            # 3. Three replicas.
            for name in ("b", "c"):
                g = Gateway(args, name, stub_port, db_port=pg_port)
                gateways.append(g)
                result["full_load"][name] = g.wait_ready(args.ready_timeout)
                log(f"replica {name} ready: {result['full_load'][name]}")
            time.sleep(11)
            result["idle_3"] = idle_cost(pg, db, args.idle_seconds)
            log(f"idle, 3 replicas: {result['idle_3']}")
            for notify in (False, True):
                r = commit_to_decision(pg, gateways, changes, kinds, args.samples, notify,
                                       args.gap_ms / 1000, 60)
                lat.append(r)
                log(f"commit->decision, 3 replicas, notify={notify}: {r['all']}")
            result["steady"] = {g.name: {**g.memory(), "counters": g.counters()} for g in gateways}
            for g in gateways[1:]:
                g.stop()
            del gateways[1:]
        # 4. Ordinary calls: polling (with changes arriving) against a static file.
        snap = os.path.join(work, "snapshot.json")
        s = time.monotonic()
        ex = subprocess.run([args.permgate_bin, "snapshot", "export", "--config", a.config,
                             "--out", snap], capture_output=True, text=True, timeout=1800)
        if ex.returncode != 0:
            raise RuntimeError(f"export: {ex.stderr}")
        result["export"] = {"seconds": round(time.monotonic() - s, 1),
                            "bytes": os.path.getsize(snap)}
        log(f"export: {result['export']}")
        static = Gateway(args, "static", stub_port, snapshot_file=snap)
        gateways.append(static)
        result["full_load"]["static_file"] = static.wait_ready(args.ready_timeout)
        log(f"static gateway ready: {result['full_load']['static_file']}")
        scenario = os.path.join(work, "scenario.toml")
        load_scenario(scenario, users)
        loads = result["load"] = []
        for rnd in range(args.load_rounds):
            for gw in (a, static):
                stop, counter = threading.Event(), [0]
                bg = None
                if gw is a:
                    bg = threading.Thread(target=background_changes,
                                          args=(Pg(pg_port), changes, stop, args.changes_per_s,
                                                counter), daemon=True)
                    bg.start()
                before = gw.counters()
                r = summarize_load(run_load(args, gw, scenario,
                                            os.path.join(work, f"load-{gw.name}-{rnd}.json")))
                stop.set()
                if bg:
                    bg.join(10)
                after = gw.counters()
                r.update({"gateway": "polling" if gw is a else "static file", "round": rnd,
                          "commits_during": counter[0],
                          "batches_during": (after["database_incremental_batches"] or 0)
                          - (before["database_incremental_batches"] or 0)})
                loads.append(r)
                log(f"load {r['gateway']} round {rnd}: p50 {r['p50_ms']} p99 {r['p99_ms']} "
                    f"unexpected {r['unexpected']} errors {r['errors']} "
                    f"commits {counter[0]} batches {r['batches_during']}")
        static.stop()
        gateways.remove(static)
        static = None
        if not args.load_only:
            # Soft deletes last: remove_record goes through the source form and a full build
            # (README), replaying every batch since the last full load; bounded.
            before = a.counters()
            r = commit_to_decision(pg, [a], changes, ["delete"], args.delete_samples, True,
                                   0.0, args.delete_timeout)
            r["batches_since_full_load_before"] = before["database_incremental_batches"]
            result["delete_1"] = r
            log(f"soft delete, 1 replica, notify: {r}")
            result["after_deletes"] = {"a": {**a.memory(), "counters": a.counters()}}
        if args.reconcile_check:
            # 5. A reconciliation (a full load while serving): replica a gives way to one whose
            # reconcile_interval is a little more than twice its first load, and the load runs
            # across its first reconciliation.
            first = max(result["full_load"]["a"]["ready_s"], 5)
            interval = round(2.2 * first, 1)
            a.stop()
            gateways.remove(a)
            r_gw = Gateway(args, "reconcile", stub_port, db_port=pg_port,
                           reconcile_ms=int(interval * 1000))
            gateways.append(r_gw)
            ready = r_gw.wait_ready(args.ready_timeout)
            duration = round(interval + 2 * first, 1)
            log(f"reconcile replica ready: {ready}; load for {duration} s, interval {interval} s")
            r = summarize_load(run_load(args, r_gw, scenario,
                                        os.path.join(work, "load-reconcile.json"), duration))
            after = r_gw.counters()
            r.update({"gateway": "polling, reconciling", "round": "reconcile",
                      "interval_s": interval, "ready": ready, "after": after,
                      "memory_after": r_gw.memory(),
                      "full_loads_during": (after["database_full_loads"] or 0)
                      - (ready["counters"]["database_full_loads"] or 0),
                      "reconcile_ms": after.get("database_full_load_ms")})
            result["reconcile"] = r
            log(f"reconcile: {r}")
    finally:
        for g in list(gateways or []):
            try:
                g.stop()
            except Exception as e:  # noqa: BLE001
                log(f"stop {g.name}: {e}")
        if stub:
            stub.terminate()
            stub.wait(10)
        if pg:
            pg.close()
        if "db" in locals():
            db.stop()
        shutil.rmtree(work, ignore_errors=True)
        result["loadavg_after"] = loadavg()
        result["mem_available_min_mib"] = low[0] if "low" in locals() else None
        pathlib.Path(out_path).write_text(json.dumps(result, indent=2, default=str) + "\n")
        log(f"wrote {out_path}")
    print(markdown(result))
    return 0


def markdown(r):
    out = [f"{r['users']:,} users, {r['records']:,} leads, {r['shares']:,} shares; "
           f"fill {r['fill']['total_s']:.0f} s"]
    out.append("\n| gateway | full load → ready s | RSS MiB after | peak RSS MiB |")
    out.append("|---|---|---|---|")
    for k, v in r.get("full_load", {}).items():
        out.append(f"| {k} | {v['ready_s']} | {v.get('rss_mib')} | {v.get('peak_rss_mib')} |")
    out.append("\n| replicas | NOTIFY | samples | p50 ms | p99 ms | max ms | missed |")
    out.append("|---|---|---|---|---|---|---|")
    for s in r.get("latency", []) + ([r["delete_1"]] if "delete_1" in r else []):
        a = s["all"]
        out.append(f"| {s['replicas']} | {'yes' if s['notify'] else 'no'} | {a['n']} | "
                   f"{a['p50_ms']} | {a['p99_ms']} | {a['max_ms']} | {a['missed']} |")
    for k in ("idle_1", "idle_3"):
        if k in r:
            out.append(f"\nidle {k[-1]} replica(s): {r[k]}")
    for l in r.get("load", []) + ([r["reconcile"]] if "reconcile" in r else []):
        out.append(f"load {l['gateway']} r{l['round']}: p50 {l['p50_ms']} ms p99 {l['p99_ms']} ms "
                   f"requests {l['requests']} unexpected {l['unexpected']} errors {l['errors']}")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
