"""lifeboat vs Litestream, side by side, on one machine (see docs/benchmarks.md).

Run through scripts/bench/run.sh, which installs moto and Litestream first. Everything talks only
to 127.0.0.1: one moto S3 server, and two counting proxies in front of it (one for the agents,
one for restores), so that restore traffic never mixes with an agent's request counts.

Exit status: 0 when every tool replicated and restored correctly (figures and missed targets never
fail the run), 1 otherwise.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, HERE)
import s3proxy  # noqa: E402
import writer as writer_mod  # noqa: E402

BUCKET = "bench"
ENV = dict(os.environ)
# Only local plain-HTTP traffic: no proxies, and no inherited AWS settings (an AWS_CA_BUNDLE, for
# one, makes Litestream's AWS SDK refuse a custom endpoint's HTTP client).
for k in list(ENV):
    if k.upper() in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY") or k.startswith("AWS_"):
        del ENV[k]
ENV.update({
    "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    "NO_PROXY": "127.0.0.1,localhost",
})
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROBE_LOOPS = 3  # concurrent restore loops measuring lag

FULL = {
    "slow": {"rate": 0.5, "seconds": 60},
    "paced": {"rate": 200, "seconds": 30},
    "unpaced": {"count": 100_000},
    "idle_s": 30,
    "large_mb": 1024,
    "drain_timeout": 120,
}
SMOKE = {
    "slow": {"rate": 0.5, "seconds": 6},
    "paced": {"rate": 200, "seconds": 3},
    "unpaced": {"count": 5_000},
    "idle_s": 3,
    "large_mb": 20,
    "drain_timeout": 60,
}

FAILURES = []


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fail(msg):
    FAILURES.append(msg)
    log("FAILURE: " + msg)


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def machine_info():
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}
    with open("/proc/meminfo") as f:
        for ln in f:
            if ln.startswith("MemTotal:"):
                info["mem_gib"] = round(int(ln.split()[1]) / 2**20, 1)
    with open("/proc/cpuinfo") as f:
        for ln in f:
            if ln.startswith("model name"):
                info["cpu_model"] = ln.split(":", 1)[1].strip()
                break
    info["loadavg_start"] = loadavg()
    return info


def free_port():
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def proc_cpu_s(pid):
    """CPU time of process `pid` (every thread, living and exited), in seconds.

    Read from the kernel's CPU-time clock of that process (clock_getcpuclockid(3): the clock id is
    `(~pid << 3) | CPUCLOCK_SCHED`), which counts nanoseconds. `/proc/PID/stat` counts 10 ms ticks,
    too coarse for the slow workload, where an agent spends well under 0.1 s; it is the fallback."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return None


def proc_status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith(key + ":"):
                    return int(ln.split()[1])
    except OSError:
        return None
    return None


def rm_db(path):
    for suffix in ("", "-wal", "-shm", "-journal", ".tmp"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass


def pct(values, q):
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


# ---------------------------------------------------------------------------------------------
# The two tools


class Tool:
    name = "?"

    def __init__(self, binary, work):
        self.binary = binary
        self.work = work

    def url(self, prefix, port):
        return f"s3://{BUCKET}/{prefix}?endpoint=http://127.0.0.1:{port}&region=us-east-1"


class Lifeboat(Tool):
    name = "lifeboat"

    def version(self):
        out = subprocess.run([self.binary, "version"], capture_output=True, text=True, env=ENV)
        return (out.stdout or out.stderr).strip()

    def replicate_cmd(self, db, prefix, port, opts):
        cfg = os.path.join(os.path.dirname(db), "lifeboat.toml")
        lines = ["[[databases]]", f'path = "{db}"', f'replicas = ["{self.url(prefix, port)}"]']
        if "puts_per_second" in opts:
            lines.append(f"puts-per-second = {float(opts['puts_per_second'])}")
        if "put_burst" in opts:
            lines.append(f"put-burst = {float(opts['put_burst'])}")
        with open(cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        return [self.binary, "replicate", "--config", cfg]

    def restore_cmd(self, prefix, port, out, extra=()):
        return [self.binary, "restore", self.url(prefix, port), "-o", out, *extra]


class Litestream(Tool):
    name = "litestream"

    def version(self):
        out = subprocess.run([self.binary, "version"], capture_output=True, text=True, env=ENV)
        return (out.stdout or out.stderr).strip()

    def replicate_cmd(self, db, prefix, port, opts):
        cfg = os.path.join(os.path.dirname(db), "litestream.yml")
        with open(cfg, "w") as f:
            f.write(f"""logging:
  level: info
  stderr: true
dbs:
  - path: {db}
    replica:
      type: s3
      bucket: {BUCKET}
      path: {prefix}
      endpoint: http://127.0.0.1:{port}
      region: us-east-1
      force-path-style: true
      sync-interval: {opts.get('sync_interval', '1s')}
""")
        return [self.binary, "replicate", "-config", cfg]

    def restore_cmd(self, prefix, port, out, extra=()):
        return [self.binary, "restore", *extra, "-o", out, self.url(prefix, port)]


class Agent:
    """A running replication agent, its CPU and memory."""

    def __init__(self, cmd, logpath):
        self.logpath = logpath
        self.logf = open(logpath, "wb")
        self.t_start = time.monotonic()
        self.p = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT, env=ENV,
                                  start_new_session=True)
        self.rusage = None
        self.exit_code = None

    def alive(self):
        if self.exit_code is not None:
            return False
        pid, status, ru = os.wait4(self.p.pid, os.WNOHANG)
        if pid == 0:
            return True
        self._reaped(status, ru)
        return False

    def _reaped(self, status, ru):
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.p.returncode = self.exit_code
        self.rusage = ru

    def cpu_s(self):
        return proc_cpu_s(self.p.pid)

    def stop(self, timeout=90):
        """SIGTERM, wait (the tools sync a last time), SIGKILL past the timeout.

        Peak RSS is the process's own VmHWM, sampled until it exits. Not ru_maxrss: Linux
        carries maxrss across exec, so a child forked from this Python process would report at
        least this process's RSS at fork time, whatever the tool itself used."""
        hwm = None
        if self.exit_code is None:
            hwm = proc_status_kib(self.p.pid, "VmHWM")
            self.vmhwm_kib = hwm
            try:
                self.p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                h = proc_status_kib(self.p.pid, "VmHWM")
                if h is not None:
                    hwm = max(hwm or 0, h)
                if not self.alive():
                    break
                time.sleep(0.01)
            if self.exit_code is None:
                log(f"agent {self.p.pid} ignored SIGTERM for {timeout}s: SIGKILL")
                self.p.kill()
                _, status, ru = os.wait4(self.p.pid, 0)
                self._reaped(status, ru)
        self.logf.close()
        ru = self.rusage
        return {"exit_code": self.exit_code,
                "cpu_total_s": round(ru.ru_utime + ru.ru_stime, 3),
                "peak_rss_mib": round((hwm if hwm else ru.ru_maxrss) / 1024, 1)}

    def log_tail(self, n=15):
        try:
            with open(self.logpath, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode("utf-8", "replace")
        except OSError:
            return ""


# ---------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.p = SMOKE if args.smoke else FULL
        self.work = tempfile.mkdtemp(prefix="lifeboat-bench-", dir=args.workdir)
        os.makedirs(os.path.join(self.work, "probes"))
        self.children = []
        self.moto = None
        self.proxy = None
        self.rproxy = None
        self.case_no = 0
        self.tools = {
            "litestream": Litestream(args.litestream, self.work),
            "lifeboat": Lifeboat(args.lifeboat, self.work),
        }
        self.results = {"mode": "smoke" if args.smoke else "full", "params": self.p,
                        "machine": machine_info(), "cases": {}}

    # -- infrastructure ------------------------------------------------------------------------

    def start_s3(self):
        port = free_port()
        self.moto_log = open(os.path.join(self.work, "moto.log"), "wb")
        self.moto = subprocess.Popen([self.args.moto, "-H", "127.0.0.1", "-p", str(port)],
                                     stdout=subprocess.DEVNULL, stderr=self.moto_log, env=ENV,
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if self.moto.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.1)
        self.s3 = s3proxy.S3(port, BUCKET)
        self.s3.create_bucket()
        self.proxy = s3proxy.CountingProxy(port, "agents")
        # One proxy per probe loop, so that each LIST is known to belong to one restore.
        self.rproxies = [s3proxy.CountingProxy(port, f"restores-{k}") for k in range(PROBE_LOOPS)]
        self.rproxy = self.rproxies[0]
        log(f"moto on 127.0.0.1:{port}; agent proxy :{self.proxy.port}; restore proxies "
            f"{[p.port for p in self.rproxies]}")

    def close(self):
        for a in self.children:
            try:
                if a.exit_code is None:
                    a.stop(timeout=20)
            except Exception as e:  # keep tearing down
                log(f"stopping agent: {e}")
        for px in [self.proxy, *getattr(self, "rproxies", [])]:
            if px:
                px.close()
        if self.moto and self.moto.poll() is None:
            self.moto.terminate()
            try:
                self.moto.wait(10)
            except subprocess.TimeoutExpired:
                self.moto.kill()
                self.moto.wait()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    def start_agent(self, tool, db, prefix, opts):
        cmd = tool.replicate_cmd(db, prefix, self.proxy.port, opts)
        a = Agent(cmd, os.path.join(os.path.dirname(db), f"{tool.name}.log"))
        self.children.append(a)
        return a

    def wait_replica(self, agent, prefix, min_bytes=1, timeout=120):
        """Until the replica holds at least min_bytes (a first snapshot). Returns seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            objs = self.s3.list(prefix)
            if objs and sum(s for _, s in objs) >= min_bytes:
                return time.monotonic() - agent.t_start
            if not agent.alive():
                raise RuntimeError(f"agent exited with {agent.exit_code}:\n{agent.log_tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"no snapshot within {timeout}s:\n{agent.log_tail()}")

    def restore(self, tool, prefix, out, extra=(), proxy=None):
        """One restore through a restore proxy: (t_start, t_end, ok, stderr tail)."""
        rm_db(out)
        t0 = time.monotonic()
        r = subprocess.run(tool.restore_cmd(prefix, (proxy or self.rproxy).port, out, extra),
                           capture_output=True, env=ENV, timeout=1800)
        t1 = time.monotonic()
        err = (r.stdout + r.stderr).decode("utf-8", "replace")[-1500:]
        return t0, t1, r.returncode == 0 and os.path.exists(out), err

    def restored_seq(self, out):
        c = sqlite3.connect(out)
        try:
            return c.execute("SELECT seq FROM progress WHERE k = 1").fetchone()[0]
        finally:
            c.close()

    def probe(self, tool, prefix, d, k=0):
        """A restore to learn which transaction the replica holds: (t_start, t_end, seq, t_obs),
        t_obs being when the server answered the restore's last LIST (what it saw was in the
        bucket by then)."""
        # Outside the database's folder, so that the restores' file activity cannot wake an agent
        # that watches that folder.
        out = os.path.join(self.work, "probes", f"probe-{k}.db")
        px = self.rproxies[k]
        n0 = px.snapshot()["n_events"]
        t0, t1, ok, _ = self.restore(tool, prefix, out, proxy=px)
        lists = [e[1] for e in px.events_since(n0) if e[2] == "LIST" and e[1] is not None]
        t_obs = max(lists) if lists else t1
        seq = None
        if ok:
            try:
                seq = self.restored_seq(out)
            except sqlite3.Error:
                seq = None
        rm_db(out)
        return t0, t1, seq, t_obs

    # -- one workload, one tool ----------------------------------------------------------------

    def run_case(self, tool, workload, case, opts=None, measure_lag=True, idle=False):
        opts = opts or {}
        self.case_no += 1
        prefix = f"{self.case_no:02d}-{case}"
        d = os.path.join(self.work, prefix)
        os.makedirs(d)
        db = os.path.join(d, "app.db")
        writer_mod.init(db, 1000)
        res = {"tool": tool.name, "workload": workload, "opts": opts, "loadavg_before": loadavg()}
        log(f"case {prefix}: {tool.name} {workload} {opts or ''}")
        agent = self.start_agent(tool, db, prefix, opts)
        try:
            res["startup_s"] = round(self.wait_replica(agent, prefix), 3)
            time.sleep(1.0)  # let the start-up settle (both tools upload a first snapshot)
            snap0 = self.proxy.snapshot()
            cpu0 = agent.cpu_s()
            wp = self.p[workload]
            wjson = os.path.join(d, "writer.json")
            wcmd = [sys.executable, os.path.join(HERE, "writer.py"), "run", db, "--out", wjson]
            if "count" in wp:
                wcmd += ["--count", str(wp["count"])]
            else:
                wcmd += ["--rate", str(wp["rate"]), "--seconds", str(wp["seconds"])]
            w = subprocess.Popen(wcmd, env=ENV)
            probes = []
            stop = threading.Event()

            def loop(k):
                time.sleep(k * 0.2)  # staggered
                while not stop.is_set():
                    probes.append(self.probe(tool, prefix, d, k))

            loops = [threading.Thread(target=loop, args=(k,), daemon=True)
                     for k in range(PROBE_LOOPS if measure_lag else 0)]
            for t in loops:
                t.start()
            try:
                while w.poll() is None:
                    time.sleep(0.05)
                    if not agent.alive():
                        raise RuntimeError(f"agent died during the workload:\n{agent.log_tail()}")
            finally:
                stop.set()
                for t in loops:
                    t.join(timeout=600)
                if w.poll() is None:
                    w.wait(timeout=600)
            if w.returncode != 0:
                raise RuntimeError(f"writer failed with {w.returncode}")
            with open(wjson) as f:
                wr = json.load(f)
            commits = wr["commits"]
            n = wr["transactions"]
            res["writer_tps"] = round(wr["tps"], 1)
            res["writer_seconds"] = round(wr["seconds"], 3)
            res["transactions"] = n
            # Drain: restores until the replica holds the last transaction.
            deadline = time.monotonic() + self.p["drain_timeout"]
            drained = None
            while time.monotonic() < deadline:
                pr = self.probe(tool, prefix, d)
                probes.append(pr)
                if pr[2] is not None and pr[2] >= n:
                    drained = pr
                    break
                if not agent.alive():
                    break
            if drained is None:
                raise RuntimeError(f"replica never reached transaction {n} "
                                   f"(last probe: {probes[-1][2] if probes else None})")
            res["drain_lag_s"] = round(max(0.0, drained[3] - commits[-1]), 3)
            snap1 = self.proxy.snapshot()
            cpu1 = agent.cpu_s()
            # The workload window: first commit .. replica caught up.
            window = drained[0] - wr["start"]
            res["window_s"] = round(window, 2)
            res["cpu_workload_s"] = round(cpu1 - cpu0, 3) if cpu0 is not None and cpu1 is not None else None
            req = Counter(snap1["counts"]) - Counter(snap0["counts"])
            res["requests"] = dict(sorted(req.items()))
            uploads = sum(req.get(t, 0) for t in s3proxy.UPLOAD_TYPES)
            res["upload_requests"] = uploads
            res["uploads_per_hour"] = round(uploads / window * 3600, 1)
            res["upload_rate_per_s"] = round(uploads / window, 3)
            res["class_a_per_hour"] = round((uploads + req.get("LIST", 0)) / window * 3600, 1)
            res["bytes_uploaded"] = snap1["bytes_up"] - snap0["bytes_up"]
            if measure_lag:
                res.update(self.lags(commits, probes))
                res.update(self.upload_lag(commits, self.proxy.events_since(snap0["n_events"]), tool))
            if idle:
                time.sleep(1.0)
                i0 = self.proxy.snapshot()
                c0 = agent.cpu_s()
                time.sleep(self.p["idle_s"])
                i1 = self.proxy.snapshot()
                c1 = agent.cpu_s()
                res["cpu_idle_s"] = round(c1 - c0, 3) if c0 is not None and c1 is not None else None
                ireq = Counter(i1["counts"]) - Counter(i0["counts"])
                res["idle_s"] = self.p["idle_s"]
                res["idle_requests"] = sum(ireq.values())
                res["idle_requests_by_type"] = dict(ireq)
            res["vmhwm_before_stop_mib"] = None
        finally:
            st = agent.stop()
            res.update({k: v for k, v in st.items()})
            if getattr(agent, "vmhwm_kib", None):
                res["vmhwm_before_stop_mib"] = round(agent.vmhwm_kib / 1024, 1)
            res["agent_exit_code"] = st["exit_code"]
        objs = self.s3.list(prefix)
        res["objects"] = len(objs)
        res["stored_bytes"] = sum(s for _, s in objs)
        # Final restore, timed, compared with the source.
        out = os.path.join(d, "restored.db")
        r0 = self.rproxy.snapshot()
        t0, t1, ok, err = self.restore(tool, prefix, out)
        r1 = self.rproxy.snapshot()
        res["restore_s"] = round(t1 - t0, 3)
        res["restore_requests"] = dict(Counter(r1["counts"]) - Counter(r0["counts"]))
        if not ok:
            raise RuntimeError(f"final restore failed: {err}")
        src, got = writer_mod.digest(db), writer_mod.digest(out)
        res["restore_matches_source"] = src == got
        if src != got:
            raise RuntimeError(f"restored database differs from the source: {got} vs {src}")
        res["db_bytes"] = os.path.getsize(db)
        res["loadavg_after"] = loadavg()
        rm_db(out)
        self.s3.delete_prefix(prefix)
        return res

    @staticmethod
    def lags(commits, probes):
        """Lag of every transaction: from its commit (writer's clock, right after COMMIT) to the
        earliest probe restore that holds it, timed at that restore's last LIST response: an
        upper bound on when the replica first held it, within one probe interval."""
        ok = sorted((p for p in probes if p[2] is not None), key=lambda p: p[3])
        lag, i = [], 0
        for t0, t1, seq, t_obs in ok:
            while i < len(commits) and i + 1 <= seq:
                lag.append(max(0.0, t_obs - commits[i]))
                i += 1
        durs = [p[1] - p[0] for p in probes]
        obs = sorted(p[3] for p in ok)
        gaps = [b - a for a, b in zip(obs, obs[1:])]
        return {
            "lag_samples": len(lag),
            "lag_p50_s": round(pct(lag, 0.5), 3) if lag else None,
            "lag_p99_s": round(pct(lag, 0.99), 3) if lag else None,
            "lag_max_s": round(max(lag), 3) if lag else None,
            "probe_restores": len(probes),
            "probe_restore_p50_s": round(statistics.median(durs), 3) if durs else None,
            "probe_interval_p50_s": round(statistics.median(gaps), 3) if gaps else None,
        }

    @staticmethod
    def upload_lag(commits, events, tool):
        """Diagnostic, from the proxy: commit -> response to the first data upload that started
        after it. Exact only when commits are further apart than uploads (the slow workload)."""
        ups = sorted((e for e in events if e[2] in ("PUT", "POST-mpu-complete") and e[1] is not None
                      and (".lbseg" in e[3] or ".lbsnap" in e[3] or "/ltx/0/" in e[3] or ".ltx" in e[3])),
                     key=lambda e: e[0])
        lags, j = [], 0
        for c in commits:
            while j < len(ups) and ups[j][0] < c:
                j += 1
            if j < len(ups):
                lags.append(ups[j][1] - c)
        if not lags:
            return {}
        return {"upload_lag_p50_s": round(pct(lags, 0.5), 4),
                "upload_lag_p99_s": round(pct(lags, 0.99), 4)}

    # -- writer alone ---------------------------------------------------------------------------

    def baseline(self, tag):
        d = os.path.join(self.work, f"baseline-{tag}")
        os.makedirs(d)
        db = os.path.join(d, "app.db")
        writer_mod.init(db, 1000)
        wjson = os.path.join(d, "writer.json")
        subprocess.run([sys.executable, os.path.join(HERE, "writer.py"), "run", db, "--out", wjson,
                        "--count", str(self.p["unpaced"]["count"])], check=True, env=ENV)
        with open(wjson) as f:
            tps = json.load(f)["tps"]
        log(f"baseline {tag}: {tps:.0f} tx/s without an agent")
        shutil.rmtree(d)
        return round(tps, 1)

    # -- the large database ---------------------------------------------------------------------

    def build_large(self):
        mb = self.p["large_mb"]
        path = os.path.join(self.work, "large-src.db")
        t0 = time.monotonic()
        c = sqlite3.connect(path, isolation_level=None)
        c.execute("PRAGMA journal_mode=OFF")
        c.execute("PRAGMA synchronous=OFF")
        c.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB)")
        c.execute("CREATE TABLE progress(k INTEGER PRIMARY KEY, seq INTEGER)")
        c.execute("INSERT INTO progress VALUES (1, 0)")
        rows = mb * 16  # 64 KiB blobs
        c.execute("BEGIN")
        c.execute("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?) "
                  "INSERT INTO blobs(b) SELECT randomblob(65536) FROM n", (rows,))
        c.execute("COMMIT")
        c.execute("PRAGMA journal_mode=WAL")
        c.close()
        log(f"large database: {os.path.getsize(path) / 2**20:.0f} MiB in {time.monotonic() - t0:.1f}s")
        return path, rows

    def large_case(self, tool, src, rows):
        self.case_no += 1
        prefix = f"{self.case_no:02d}-large-{tool.name}"
        d = os.path.join(self.work, prefix)
        os.makedirs(d)
        db = os.path.join(d, "big.db")
        shutil.copyfile(src, db)
        size = os.path.getsize(db)
        res = {"tool": tool.name, "db_bytes": size, "loadavg_before": loadavg()}
        log(f"case {prefix}: first snapshot of {size / 2**20:.0f} MiB")
        agent = self.start_agent(tool, db, prefix, {})
        snap0 = self.proxy.snapshot()
        try:
            res["first_snapshot_s"] = round(self.wait_replica(agent, prefix, int(size * 0.95), timeout=1800), 3)
        finally:
            st = agent.stop(timeout=120)
        snap1 = self.proxy.snapshot()
        res["agent_cpu_total_s"] = st["cpu_total_s"]
        res["agent_peak_rss_mib"] = st["peak_rss_mib"]
        res["requests"] = dict(Counter(snap1["counts"]) - Counter(snap0["counts"]))
        objs = self.s3.list(prefix)
        res["objects"] = len(objs)
        res["stored_bytes"] = sum(s for _, s in objs)
        res["object_keys"] = [[k[len(prefix) + 1:], s] for k, s in objs[:20]]
        out = os.path.join(d, "restored.db")
        t0, t1, ok, err = self.restore(tool, prefix, out)
        res["restore_s"] = round(t1 - t0, 3)
        if not ok:
            raise RuntimeError(f"large restore failed: {err}")
        c = sqlite3.connect(out)
        n = c.execute("SELECT count(*) FROM blobs").fetchone()[0]
        c.close()
        if n != rows:
            raise RuntimeError(f"large restore holds {n} rows, not {rows}")
        if tool.name == "litestream":
            # Like for like with lifeboat, which always checks integrity after a restore.
            t0, t1, ok, err = self.restore(tool, prefix, out, ["-integrity-check", "full"])
            res["restore_with_integrity_check_s"] = round(t1 - t0, 3) if ok else None
        rm_db(out)
        os.unlink(db)
        rm_db(db)
        shutil.rmtree(d, ignore_errors=True)
        self.s3.delete_prefix(prefix)
        res["loadavg_after"] = loadavg()
        return res

    def raw_transfer(self, src):
        out = os.path.join(self.work, "raw-get.bin")
        put_s, get_s = s3proxy.raw_put_get(self.proxy.port, BUCKET, "raw/blob", src, out)
        os.unlink(out)
        self.s3.delete_prefix("raw/")
        log(f"raw transfer of {os.path.getsize(src) / 2**20:.0f} MiB: PUT {put_s:.2f}s, GET {get_s:.2f}s")
        return {"bytes": os.path.getsize(src), "put_s": round(put_s, 3), "get_s": round(get_s, 3)}

    # -- everything -----------------------------------------------------------------------------

    def guarded(self, label, fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except Exception as e:
            fail(f"{label}: {e}")
            return {"error": str(e)[:2000]}

    def run(self):
        R = self.results
        R["versions"] = {"lifeboat": self.tools["lifeboat"].version(),
                         "litestream": self.tools["litestream"].version()}
        try:
            import importlib.metadata as md
            R["versions"]["moto"] = subprocess.run(
                [os.path.join(os.path.dirname(self.args.moto), "python"), "-c",
                 "import moto; print(moto.__version__)"], capture_output=True, text=True).stdout.strip()
            del md
        except Exception:
            pass
        self.start_s3()
        ls, lb = self.tools["litestream"], self.tools["lifeboat"]
        cases = R["cases"]
        only = set(self.args.only.split(",")) if self.args.only else None

        def want(w):
            return only is None or w in only

        if want("slow"):
            cases["slow/litestream"] = self.guarded("slow litestream", self.run_case, ls, "slow", "slow-litestream", idle=True)
            cases["slow/lifeboat"] = self.guarded("slow lifeboat", self.run_case, lb, "slow", "slow-lifeboat", idle=True)
        if want("paced"):
            cases["paced/litestream"] = self.guarded("paced litestream", self.run_case, ls, "paced", "paced-litestream")
            cases["paced/lifeboat"] = self.guarded("paced lifeboat", self.run_case, lb, "paced", "paced-lifeboat")
            rate = cases["paced/litestream"].get("upload_rate_per_s")
            if rate:
                cases["paced/lifeboat-matched"] = self.guarded(
                    "paced lifeboat matched", self.run_case, lb, "paced", "paced-lifeboat-matched",
                    {"puts_per_second": round(rate, 3), "put_burst": 1})
        if want("unpaced"):
            # The writer alone before, between and after: each tool is compared with the mean
            # of the two runs around it, which tracks the machine's load over time.
            b1 = self.guarded("baseline", self.baseline, "1")
            cases["unpaced/litestream"] = self.guarded("unpaced litestream", self.run_case, ls, "unpaced", "unpaced-litestream", measure_lag=False)
            b2 = self.guarded("baseline", self.baseline, "2")
            cases["unpaced/lifeboat"] = self.guarded("unpaced lifeboat", self.run_case, lb, "unpaced", "unpaced-lifeboat", measure_lag=False)
            b3 = self.guarded("baseline", self.baseline, "3")
            R["baseline_tps"] = [b1, b2, b3]
            for k, pair in (("unpaced/litestream", (b1, b2)), ("unpaced/lifeboat", (b2, b3))):
                if all(isinstance(x, float) for x in pair) and "writer_tps" in cases[k]:
                    base = sum(pair) / 2
                    cases[k]["no_agent_tps"] = round(base, 1)
                    cases[k]["throughput_vs_no_agent"] = round(cases[k]["writer_tps"] / base, 3)
        if want("large"):
            src, rows = self.build_large()
            R["raw_transfer"] = self.guarded("raw transfer", self.raw_transfer, src)
            cases["large/litestream"] = self.guarded("large litestream", self.large_case, ls, src, rows)
            cases["large/lifeboat"] = self.guarded("large lifeboat", self.large_case, lb, src, rows)
            os.unlink(src)
        R["machine"]["loadavg_end"] = loadavg()
        R["failures"] = FAILURES
        return R


# ---------------------------------------------------------------------------------------------
# Ratios, targets, markdown


NUMERIC_SKIP = {"agent_exit_code", "transactions", "db_bytes", "idle_s"}


def ratios(R):
    out = {}
    for w in ("slow", "paced", "unpaced", "large"):
        ls = R["cases"].get(f"{w}/litestream")
        for variant in ("lifeboat", "lifeboat-matched"):
            lb = R["cases"].get(f"{w}/{variant}")
            if not ls or not lb or "error" in ls or "error" in lb:
                continue
            r = {}
            for k, v in lb.items():
                lv = ls.get(k)
                if k in NUMERIC_SKIP or isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                if isinstance(lv, (int, float)) and not isinstance(lv, bool):
                    r[k] = round(v / lv, 3) if lv else (None if v else 1.0)
            out[f"{w}/{variant}"] = r
    return out


def targets(R):
    C = R["cases"]
    T = []

    def get(case, key):
        c = C.get(case) or {}
        return c.get(key)

    def add(name, value, limit, unit="", note=""):
        met = None if value is None else value <= limit
        T.append({"target": name, "value": value, "limit": limit, "unit": unit, "met": met, "note": note})

    def ratio(case_lb, case_ls, key):
        a, b = get(case_lb, key), get(case_ls, key)
        if a is None or b is None:
            return None
        return round(a / b, 3) if b else (0.0 if a == 0 else float("inf"))

    for q in ("p50", "p99"):
        add(f"lag {q} at 1 tx / 2 s, lifeboat/Litestream", ratio("slow/lifeboat", "slow/litestream", f"lag_{q}_s"), 0.1, "x")
    for q in ("p50", "p99"):
        add(f"lag {q} at 200 tx/s, PUT budget = Litestream's upload rate, lifeboat/Litestream",
            ratio("paced/lifeboat-matched", "paced/litestream", f"lag_{q}_s"), 0.6, "x")
    t = get("unpaced/lifeboat", "throughput_vs_no_agent")
    add("writer throughput lost at max rate (lifeboat)", None if t is None else round(1 - t, 3), 0.10, "fraction")
    for w in ("slow", "paced", "unpaced"):
        add(f"agent CPU in the {w} workload, lifeboat/Litestream",
            ratio(f"{w}/lifeboat", f"{w}/litestream", "cpu_workload_s"), 0.5, "x")
    rss = [get(f"{w}/lifeboat", "peak_rss_mib") for w in ("slow", "paced", "unpaced")]
    rss = [x for x in rss if x is not None]
    add("lifeboat peak RSS, small workloads", max(rss) if rss else None, 20, "MiB")
    add("lifeboat peak RSS, large-database snapshot", get("large/lifeboat", "agent_peak_rss_mib"), 20, "MiB")
    for w in ("slow", "paced", "unpaced", "large"):
        add(f"restore time ({w}), lifeboat/Litestream", ratio(f"{w}/lifeboat", f"{w}/litestream", "restore_s"), 0.5, "x")
    raw = (R.get("raw_transfer") or {}).get("get_s")
    lr = get("large/lifeboat", "restore_s")
    add("large restore / raw GET of the same bytes (lifeboat)", round(lr / raw, 3) if raw and lr else None, 1.3, "x")
    add("uploads per hour at 200 tx/s (matched budget), lifeboat/Litestream",
        ratio("paced/lifeboat-matched", "paced/litestream", "uploads_per_hour"), 1.0, "x",
        "with lag ≤ Litestream's" if (get("paced/lifeboat-matched", "lag_p50_s") or 1e9) <= (get("paced/litestream", "lag_p50_s") or 0) else "lag NOT ≤ Litestream's")
    add("uploads per hour at 1 tx / 2 s, lifeboat/Litestream",
        ratio("slow/lifeboat", "slow/litestream", "uploads_per_hour"), 1.0, "x")
    add("requests while idle (lifeboat)", get("slow/lifeboat", "idle_requests"), 0, "requests",
        f"Litestream: {get('slow/litestream', 'idle_requests')}")
    return T


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        if abs(v) >= 0.1:
            return f"{v:.2f}"
        return f"{v:.3f}"
    if isinstance(v, int) and abs(v) >= 10000:
        return f"{v:,}"
    return str(v)


ROWS = [
    ("lag p50 (s)", "lag_p50_s"), ("lag p99 (s)", "lag_p99_s"), ("lag max (s)", "lag_max_s"),
    ("probe interval p50 (s)", "probe_interval_p50_s"),
    ("upload lag p50, proxy (s)", "upload_lag_p50_s"), ("upload lag p99, proxy (s)", "upload_lag_p99_s"),
    ("probe restore p50 (s)", "probe_restore_p50_s"),
    ("lag after last commit (s)", "drain_lag_s"),
    ("writer tx/s", "writer_tps"), ("writer alone, runs around it (tx/s)", "no_agent_tps"),
    ("throughput vs no agent", "throughput_vs_no_agent"),
    ("agent CPU in workload (s)", "cpu_workload_s"), ("agent CPU lifetime (s)", "cpu_total_s"),
    ("agent peak RSS (MiB)", "peak_rss_mib"),
    ("upload requests", "upload_requests"), ("uploads per hour", "uploads_per_hour"),
    ("class A (uploads+LIST) per hour", "class_a_per_hour"),
    ("bytes uploaded", "bytes_uploaded"),
    ("objects stored", "objects"), ("bytes stored", "stored_bytes"),
    ("idle requests", "idle_requests"), ("agent CPU while idle (s)", "cpu_idle_s"),
    ("restore wall time (s)", "restore_s"),
]
LARGE_ROWS = [
    ("first snapshot upload (s)", "first_snapshot_s"), ("restore wall time (s)", "restore_s"),
    ("restore with integrity check (s)", "restore_with_integrity_check_s"),
    ("agent CPU (s)", "agent_cpu_total_s"), ("agent peak RSS (MiB)", "agent_peak_rss_mib"),
    ("objects stored", "objects"), ("bytes stored", "stored_bytes"),
]


def markdown(R):
    C = R["cases"]
    m = R["machine"]
    L = []
    L.append(f"mode: **{R['mode']}** · lifeboat `{R['versions'].get('lifeboat')}` · Litestream "
             f"`{R['versions'].get('litestream')}` · moto `{R['versions'].get('moto')}`  ")
    L.append(f"machine: {m.get('nproc')} CPUs ({m.get('cpu_model')}), {m.get('mem_gib')} GiB, "
             f"Linux {m.get('kernel')}, Python {m.get('python')} · load average at start "
             f"{m.get('loadavg_start')}, at end {m.get('loadavg_end')}")
    L.append("")
    for w, title in (("slow", "slow: 1 transaction every 2 s"), ("paced", "paced: 200 transactions/s"),
                     ("unpaced", "unpaced: as fast as possible")):
        variants = [v for v in ("litestream", "lifeboat", "lifeboat-matched") if f"{w}/{v}" in C]
        if not variants:
            continue
        p = R["params"][w]
        L.append(f"### {title} ({p})")
        L.append("")
        head = "| figure | " + " | ".join(variants) + " | " + " | ".join(
            f"{v}/litestream" for v in variants if v != "litestream") + " |"
        L.append(head)
        L.append("|" + " --- |" * (1 + len(variants) * 2 - 1))
        rat = ratios(R)
        for label, key in ROWS:
            vals = [C[f"{w}/{v}"].get(key) for v in variants]
            if all(v is None for v in vals):
                continue
            rs = [rat.get(f"{w}/{v}", {}).get(key) for v in variants if v != "litestream"]
            L.append(f"| {label} | " + " | ".join(fmt(v) for v in vals) + " | " + " | ".join(fmt(x) for x in rs) + " |")
        reqs = [C[f"{w}/{v}"].get("requests") for v in variants]
        if all(reqs):
            L.append("| requests by type | " + " | ".join(
                ", ".join(f"{k} {n}" for k, n in r.items()) for r in reqs) + " |" + " |" * (len(variants) - 1))
        for v in variants:
            if "error" in C[f"{w}/{v}"]:
                L.append(f"\n**{v} failed:** `{C[f'{w}/{v}']['error'][:300]}`")
        L.append("")
    if "large/litestream" in C or "large/lifeboat" in C:
        raw = R.get("raw_transfer") or {}
        size = (C.get("large/lifeboat") or C.get("large/litestream") or {}).get("db_bytes")
        L.append(f"### large database ({fmt(size)} bytes of random blobs)")
        L.append("")
        L.append(f"raw transfer of the same bytes through the same proxy: PUT {fmt(raw.get('put_s'))} s, "
                 f"GET {fmt(raw.get('get_s'))} s")
        L.append("")
        L.append("| figure | litestream | lifeboat | lifeboat/litestream |")
        L.append("| --- | --- | --- | --- |")
        a, b = C.get("large/litestream", {}), C.get("large/lifeboat", {})
        for label, key in LARGE_ROWS:
            x, y = a.get(key), b.get(key)
            if x is None and y is None:
                continue
            r = round(y / x, 3) if isinstance(x, (int, float)) and isinstance(y, (int, float)) and x else None
            L.append(f"| {label} | {fmt(x)} | {fmt(y)} | {fmt(r)} |")
        for k, c in (("litestream", a), ("lifeboat", b)):
            if "error" in c:
                L.append(f"\n**{k} failed:** `{c['error'][:300]}`")
        L.append("")
    if "baseline_tps" in R:
        L.append(f"writer alone (no agent), before, between and after the two tools: {R['baseline_tps']} tx/s")
        L.append("")
    L.append("### targets")
    L.append("")
    L.append("| target | value | limit | met |")
    L.append("| --- | --- | --- | --- |")
    for t in R["targets"]:
        met = "–" if t["met"] is None else ("yes" if t["met"] else "**no**")
        note = f" ({t['note']})" if t["note"] else ""
        L.append(f"| {t['target']}{note} | {fmt(t['value'])} {t['unit']} | {fmt(t['limit'])} {t['unit']} | {met} |")
    if R.get("failures"):
        L.append("")
        L.append("**failures:** " + "; ".join(f[:300] for f in R["failures"]))
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few seconds per tool and workload")
    ap.add_argument("--lifeboat", required=True)
    ap.add_argument("--litestream", required=True)
    ap.add_argument("--moto", required=True, help="moto_server binary")
    ap.add_argument("--out", required=True, help="folder for results.json and results.md")
    ap.add_argument("--workdir", default=None, help="where databases go (default: the system temp dir)")
    ap.add_argument("--only", default=None, help="comma-separated subset of slow,paced,unpaced,large")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, databases)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    t0 = time.monotonic()
    b = Bench(args)
    try:
        R = b.run()
    except Exception as e:
        fail(f"bench: {e}")
        R = b.results
        R["failures"] = FAILURES
    finally:
        b.close()
    R["wall_s"] = round(time.monotonic() - t0, 1)
    R["ratios_lifeboat_over_litestream"] = ratios(R)
    R["targets"] = targets(R)
    R["failures"] = FAILURES
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(R, f, indent=2)
    md = markdown(R)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    print(md)
    log(f"wrote {args.out}/results.json and results.md in {R['wall_s']}s")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
