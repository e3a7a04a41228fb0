"""Many databases, one agent: lifeboat vs Litestream (docs/benchmarks.md, "Many databases").

Run through `scripts/bench/run.sh --many` (which installs Litestream first). For each count of
databases (100 and 1,000 by default) and each tool, one agent replicates a folder of small
databases, each to its own local-folder replica:

  lifeboat    replicate --dir-of-databases DIR file://REP      (REP/<name> per database)
  Litestream  replicate -config litestream.yml                 (one entry per database)

and this script measures, from outside the agent: the time until every database has its first
replica object, threads and RSS after start-up, CPU and replica writes over an idle window (no
database changes), CPU over a busy window (a writer process commits 50 transactions a second,
each to a database drawn at random), and peak RSS (VmHWM) over the whole run. Then the agent is
stopped (SIGTERM: final sync) and databases are restored and compared with what the writer
committed (every database at 100; a random sample of 100 at 1,000, plus every one written to
at least three times).

"Requests" for a local-folder replica are files created or changed in it: over the idle window
they must be zero. The load average is recorded with each figure: the machine may be shared.

Exit status: 0 when every tool replicated and restored correctly (figures never fail the run).
"""

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
FAILURES = []


def log(msg):
    print(f"[many {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def cpu_s(pid):
    """CPU time of process `pid`, every thread, in seconds: the kernel's per-process CPU clock
    (nanoseconds; see `proc_cpu_s` in bench.py), else `/proc/PID/stat` (10 ms ticks)."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)
    except OSError:
        pass
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / CLK_TCK


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def replica_files(root):
    """(number of files, newest mtime) under a replica folder."""
    n, newest = 0, 0.0
    for d, _, files in os.walk(root):
        for name in files:
            try:
                st = os.stat(os.path.join(d, name))
            except FileNotFoundError:
                continue
            n += 1
            newest = max(newest, st.st_mtime)
    return n, newest


def name(i):
    return f"t{i:04d}.db"


def make_dbs(folder, count):
    os.makedirs(folder)
    for i in range(count):
        c = sqlite3.connect(os.path.join(folder, name(i)))
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE t(seq INTEGER PRIMARY KEY, v TEXT)")
        c.execute("INSERT INTO t VALUES (0, 'start')")
        c.commit()
        c.close()


class Lifeboat:
    label = "lifeboat"

    def __init__(self, binary):
        self.binary = binary

    def start_cmd(self, work, count):
        return [self.binary, "replicate", "--dir-of-databases", f"{work}/dbs", f"file://{work}/rep"]

    def has_first(self, work, i):
        return os.path.isdir(f"{work}/rep/{name(i)}/generations")

    def restore(self, work, i, out):
        return [self.binary, "restore", f"file://{work}/rep", "--database", name(i), "-o", out]


class Litestream:
    label = "litestream"

    def __init__(self, binary):
        self.binary = binary

    def start_cmd(self, work, count):
        cfg = f"{work}/litestream.yml"
        with open(cfg, "w") as f:
            f.write("logging:\n  level: warn\n  stderr: true\ndbs:\n")
            for i in range(count):
                f.write(f"  - path: {work}/dbs/{name(i)}\n    replica:\n      type: file\n"
                        f"      path: {work}/rep/{name(i)}\n")
        return [self.binary, "replicate", "-config", cfg]

    def has_first(self, work, i):
        d = f"{work}/rep/{name(i)}"
        return os.path.isdir(d) and any(files for _, _, files in os.walk(d))

    def restore(self, work, i, out):
        return [self.binary, "restore", "-o", out, f"file://{work}/rep/{name(i)}"]


class Writer(threading.Thread):
    """Commits `rate` transactions a second, each to a database drawn at random."""

    def __init__(self, folder, count, rate, seconds, seed):
        super().__init__(daemon=True)
        self.folder, self.count, self.rate, self.seconds = folder, count, rate, seconds
        self.rng = random.Random(seed)
        self.last = {}  # database index -> last seq committed
        self.commits = {}  # database index -> commits
        self.done = 0

    def run(self):
        conns = {}
        t0 = time.monotonic()
        seq = 0
        while True:
            due = t0 + seq / self.rate
            now = time.monotonic()
            if due - t0 >= self.seconds:
                break
            if due > now:
                time.sleep(due - now)
            seq += 1
            i = self.rng.randrange(self.count)
            c = conns.get(i)
            if c is None:
                c = conns[i] = sqlite3.connect(os.path.join(self.folder, name(i)), timeout=5)
            c.execute("INSERT INTO t VALUES (?, ?)", (seq, "x" * 200))
            c.commit()
            self.last[i] = seq
            self.commits[i] = self.commits.get(i, 0) + 1
            self.done += 1
        for c in conns.values():
            c.close()


def check_restores(tool, work, count, writer, sample_seed):
    """Restores databases and compares each with the database and with the writer's record."""
    if count <= 100:
        pick = list(range(count))
    else:
        rng = random.Random(sample_seed)
        heavy = {i for i, n in writer.commits.items() if n >= 3}
        pick = sorted(set(rng.sample(range(count), 100)) | heavy)
    bad = []
    for i in pick:
        out = f"{work}/restored/{name(i)}"
        r = subprocess.run(tool.restore(work, i, out), capture_output=True, text=True)
        if r.returncode != 0:
            bad.append(f"{name(i)}: restore failed: {r.stderr.strip()[-300:]}")
            continue
        c = sqlite3.connect(out)
        got = c.execute("SELECT count(*), max(seq) FROM t").fetchone()
        ok = c.execute("PRAGMA integrity_check").fetchone()[0]
        c.close()
        src = sqlite3.connect(os.path.join(work, "dbs", name(i)))
        want = src.execute("SELECT count(*), max(seq) FROM t").fetchone()
        src.close()
        expect = (1 + writer.commits.get(i, 0), writer.last.get(i, 0))
        if got != want or got != expect or ok != "ok":
            bad.append(f"{name(i)}: restored {got} ({ok}), database {want}, writer {expect}")
    return len(pick), bad


def run_case(tool, count, base, cfg):
    work = tempfile.mkdtemp(prefix=f"many-{tool.label}-{count}-", dir=base)
    make_dbs(f"{work}/dbs", count)
    os.makedirs(f"{work}/rep")
    os.makedirs(f"{work}/restored")
    R = {"tool": tool.label, "databases": count, "load_start": loadavg()}
    logf = open(f"{work}/agent.log", "wb")
    t0 = time.monotonic()
    p = subprocess.Popen(tool.start_cmd(work, count), stdout=logf, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        pending = set(range(count))
        deadline = t0 + cfg["startup_timeout"]
        while pending and time.monotonic() < deadline and p.poll() is None:
            pending = {i for i in pending if not tool.has_first(work, i)}
            time.sleep(0.2)
        if pending:
            FAILURES.append(f"{tool.label} {count}: {len(pending)} databases never replicated")
            R["failed"] = f"{len(pending)} databases never replicated"
            return R
        R["startup_s"] = round(time.monotonic() - t0, 2)
        time.sleep(cfg["settle_s"])
        R["threads"] = status_kib(p.pid, "Threads")
        R["rss_after_start_mib"] = round(status_kib(p.pid, "VmRSS") / 1024, 1)
        # Idle: nothing changes.
        files0 = replica_files(f"{work}/rep")
        c0 = cpu_s(p.pid)
        time.sleep(cfg["idle_s"])
        R["idle_cpu_s"] = round(cpu_s(p.pid) - c0, 2)
        files1 = replica_files(f"{work}/rep")
        R["idle_window_s"] = cfg["idle_s"]
        R["idle_replica_writes"] = (files1[0] - files0[0]) + (1 if files1[1] > files0[1] else 0)
        R["load_idle"] = loadavg()
        # Busy: the writer process commits at the rate.
        w = Writer(f"{work}/dbs", count, cfg["rate"], cfg["busy_s"], seed=count)
        c0 = cpu_s(p.pid)
        w.start()
        w.join()
        R["busy_cpu_s"] = round(cpu_s(p.pid) - c0, 2)
        R["busy_window_s"] = cfg["busy_s"]
        R["busy_tx"] = w.done
        R["databases_written"] = len(w.last)
        R["load_busy"] = loadavg()
        R["peak_rss_mib"] = round(status_kib(p.pid, "VmHWM") / 1024, 1)
        time.sleep(cfg["drain_s"])
        R["peak_rss_mib"] = round(status_kib(p.pid, "VmHWM") / 1024, 1)
        R["threads_busy"] = status_kib(p.pid, "Threads")
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        logf.close()
    R["exit_code"] = p.returncode
    checked, bad = check_restores(tool, work, count, w, sample_seed=count)
    R["restores_checked"] = checked
    R["restores_wrong"] = bad[:5]
    if bad:
        FAILURES.append(f"{tool.label} {count}: {len(bad)} of {checked} restores differ: {bad[:3]}")
    R["load_end"] = loadavg()
    shutil.rmtree(work, ignore_errors=True)
    return R


def markdown(results, meta):
    out = ["| databases | tool | start-up | threads | RSS after start | peak RSS | idle CPU | idle writes | busy CPU | restores |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        if "failed" in r:
            out.append(f"| {r['databases']} | {r['tool']} | failed: {r['failed']} | | | | | | | |")
            continue
        out.append(
            f"| {r['databases']} | {r['tool']} | {r['startup_s']} s | {r['threads']} | "
            f"{r['rss_after_start_mib']} MiB | {r['peak_rss_mib']} MiB | "
            f"{r['idle_cpu_s']} s / {r['idle_window_s']} s | {r['idle_replica_writes']} | "
            f"{r['busy_cpu_s']} s / {r['busy_window_s']} s ({r['busy_tx']} tx) | "
            f"{r['restores_checked'] - len(r['restores_wrong'])}/{r['restores_checked']} exact |")
    out.append("")
    out.append("Load averages (1, 5, 15 min) at start / idle / busy / end of each run:")
    for r in results:
        out.append(f"- {r['databases']} {r['tool']}: {r.get('load_start')} / {r.get('load_idle')} / "
                   f"{r.get('load_busy')} / {r.get('load_end')}")
    out.append("")
    out.append(f"Machine: {meta['cpus']} CPUs; {meta['when']}; {meta['versions']}")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lifeboat", required=True)
    ap.add_argument("--litestream", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--counts", default="100,1000")
    ap.add_argument("--smoke", action="store_true", help="short windows, 20 and 50 databases")
    ap.add_argument("--workdir", default=None)
    a, _ = ap.parse_known_args()
    cfg = {"idle_s": 20, "busy_s": 30, "rate": 50, "settle_s": 5, "drain_s": 5, "startup_timeout": 300}
    counts = [int(x) for x in a.counts.split(",")]
    if a.smoke:
        cfg.update(idle_s=3, busy_s=3, settle_s=1, drain_s=1)
        counts = [20, 50]
    base = a.workdir or tempfile.gettempdir()
    tools = [Lifeboat(a.lifeboat), Litestream(a.litestream)]
    versions = "; ".join(
        subprocess.run([t.binary, "version"], capture_output=True, text=True).stdout.strip() for t in tools)
    meta = {"cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "versions": versions, "config": cfg}
    results = []
    for n in counts:
        for t in tools:
            log(f"{t.label}: {n} databases")
            results.append(run_case(t, n, base, cfg))
            log(json.dumps(results[-1]))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "many.json"), "w") as f:
        json.dump({"meta": meta, "results": results, "failures": FAILURES}, f, indent=2)
    md = markdown(results, meta)
    with open(os.path.join(a.out, "many.md"), "w") as f:
        f.write(md)
    print(md)
    if FAILURES:
        for x in FAILURES:
            log("FAILED: " + x)
        sys.exit(1)


if __name__ == "__main__":
    main()
