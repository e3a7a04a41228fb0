#!/usr/bin/env python3
"""Soak run (not in CI): a paced writer, the agent, network faults and periodic drills, for hours.

    scripts/soak.py --duration 60m                     # builds lifeboat and the fault proxy first
    scripts/soak.py --duration 4h --rate 50 --out /var/tmp/soak --no-build --lifeboat target/release/lifeboat

What runs, all on this machine:
- moto (the S3 test server, `LIFEBOAT_MOTO_SERVER` or .venv/bin/moto_server) on 127.0.0.1, and the
  fault proxy (`crates/faultproxy`, its `faultproxy` example) in front of it;
- `lifeboat replicate` of one database to two replicas: S3 through the proxy, and a local folder;
  scheduled snapshots and retention are short so both happen during the run;
- a writer (a separate connection in WAL mode, default autocheckpoint) committing `--rate`
  transactions a second: one marker row (`marks.seq` 1, 2, 3, ...), an update, now and then a
  bigger transaction and a rolled-back one;
- every `--fault-every`, the next fault of FAULTS for `--fault-for`, then none;
- every `--drill-every`, `lifeboat drill --db <live> --random-point` on one replica in turn (S3
  straight to moto, not through the proxy: a drill judges the data, not the network);
- every few seconds: `/metrics` (lag in seconds and transactions per replica), `/health`, and the
  agent's RSS and CPU from /proc.

At the end the writer stops, `lifeboat sync` waits for both replicas, the agent stops, and both
replicas are verified and restored: the restored marker rows must be exactly 1..commits and the
restored tables must equal the live ones. The report (text on stdout, `report.json` in `--out`)
gives commits written, drills done and passed, max lag, agent RSS and CPU, errors. Exit 1 when a
drill, the verify or the final comparison failed.
"""

import argparse
import hashlib
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (proxy rule, what it stands for). Each is on for --fault-for seconds, in turn.
FAULTS = [
    ("error 503 share=0.5", "half the requests answered 503 SlowDown"),
    ("refuse", "the server is down: connections refused"),
    ("lose-response share=0.3 methods=PUT", "a third of PUTs land but their answer is lost"),
    ("stall", "the server stops answering"),
    ("reset-after-body share=0.3", "connections reset after the server acted"),
    ("error 500 methods=PUT", "every PUT answered 500 InternalError"),
    ("delay 3 share=0.3", "answers arrive 3 s late (past the client's timeout)"),
    ("late-forward 2 share=0.3 methods=PUT", "PUTs that land 2 s late, after the client gave up"),
    ("reset-before-body share=0.5", "half the uploads cut before their body"),
    ("blackhole", "the network path drops everything"),
    ("truncate-body share=0.5", "answers cut in half"),
]


def parse_duration(s):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", s.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {s} (e.g. 90s, 60m, 4h)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, what, deadline_s=60):
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"soak: {what} exited at start with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"soak: {what} did not listen on port {port} within {deadline_s} s")


def http_get(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Log:
    """Timestamped lines on stdout and in the run's log file."""

    def __init__(self, path):
        self.f = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def __call__(self, msg):
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        with self.lock:
            print(line, flush=True)
            self.f.write(line + "\n")


class Writer(threading.Thread):
    """Commits `rate` transactions a second on its own connection until stopped."""

    def __init__(self, db, rate, log):
        super().__init__(daemon=True)
        self.db, self.rate, self.log = db, rate, log
        self.commits = 0  # marker rows committed: marks.seq runs 1..commits
        self.rollbacks = 0
        self.errors = []
        self.late = 0  # slots started more than a second late (the writer was held up)
        self.stop = threading.Event()

    def run(self):
        conn = sqlite3.connect(self.db, isolation_level=None, timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS marks(seq INTEGER PRIMARY KEY, at REAL, payload BLOB)"
        )
        conn.execute("CREATE TABLE IF NOT EXISTS kv(k INTEGER PRIMARY KEY, v BLOB)")
        rng = random.Random(7)
        start = time.monotonic()
        while not self.stop.is_set():
            slot = start + self.commits / self.rate
            now = time.monotonic()
            if slot > now:
                time.sleep(slot - now)
            elif now - slot > 1:
                self.late += 1
                start = now - self.commits / self.rate  # do not burst to catch up
            seq = self.commits + 1
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "INSERT INTO marks VALUES (?, ?, ?)",
                    (seq, time.time(), rng.randbytes(rng.randint(100, 1500))),
                )
                conn.execute(
                    "INSERT OR REPLACE INTO kv VALUES (?, ?)",
                    (rng.randint(0, 5000), rng.randbytes(rng.randint(50, 400))),
                )
                if seq % 200 == 0:  # a bigger transaction now and then
                    for _ in range(200):
                        conn.execute(
                            "INSERT OR REPLACE INTO kv VALUES (?, ?)",
                            (rng.randint(0, 5000), rng.randbytes(800)),
                        )
                conn.execute("COMMIT")
                self.commits = seq
            except sqlite3.Error as e:
                self.errors.append(f"commit {seq}: {e}")
                self.log(f"writer: commit {seq} failed: {e}")
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                continue
            if seq % 97 == 0:  # a transaction that rolls back: its frames must never ship
                # Every 10th is larger than the page cache (2 MiB), so it spills into the WAL.
                size = 12_000_000 if seq % 970 == 0 else 100_000
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.execute("INSERT INTO kv VALUES (-1, zeroblob(?))", (size,))
                    conn.execute("ROLLBACK")
                    self.rollbacks += 1
                except sqlite3.Error as e:
                    self.errors.append(f"rollback after {seq}: {e}")
        conn.close()


def proc_stats(pid):
    """(RSS bytes, peak RSS bytes, CPU seconds) of a live process."""
    status = open(f"/proc/{pid}/status").read()
    kb = lambda key: int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M).group(1)) * 1024
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return kb("VmRSS"), kb("VmHWM"), (int(fields[11]) + int(fields[12])) / ticks


def metric_values(text, name):
    """{labels: value} of one Prometheus metric (labels as written, without the braces)."""
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(re.escape(name) + r"(?:\{(.*)\})?\s+(\S+)", line.strip())
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def table_digest(path):
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    h = hashlib.sha256()
    for table in ("marks", "kv"):
        for row in conn.execute(f"SELECT * FROM {table} ORDER BY 1"):
            h.update(repr(row).encode())
    seqs = [r[0] for r in conn.execute("SELECT seq FROM marks ORDER BY seq")]
    conn.close()
    return h.hexdigest(), seqs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=parse_duration, default=parse_duration("60m"))
    ap.add_argument("--rate", type=float, default=20.0, help="writer transactions a second")
    ap.add_argument("--drill-every", type=parse_duration, default=parse_duration("5m"))
    ap.add_argument("--fault-every", type=parse_duration, default=parse_duration("3m"))
    ap.add_argument("--fault-for", type=parse_duration, default=parse_duration("40s"))
    ap.add_argument("--sample-every", type=parse_duration, default=parse_duration("5s"))
    ap.add_argument("--out", default=None, help="work folder (default: a new one in /var/tmp)")
    ap.add_argument("--lifeboat", default=os.path.join(ROOT, "target/debug/lifeboat"))
    ap.add_argument("--faultproxy", default=os.path.join(ROOT, "target/debug/examples/faultproxy"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    a = ap.parse_args()

    if not a.no_build:
        subprocess.run(["cargo", "build", "--bin", "lifeboat"], cwd=ROOT, check=True)
        subprocess.run(
            ["cargo", "build", "-p", "lifeboat-faultproxy", "--example", "faultproxy"],
            cwd=ROOT,
            check=True,
        )
    out = a.out or f"/var/tmp/lifeboat-soak-{int(time.time())}"
    os.makedirs(out, exist_ok=True)
    log = Log(os.path.join(out, "soak.log"))
    db = os.path.join(out, "app.db")
    folder = os.path.join(out, "replica")
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        NO_COLOR="1",
    )
    children = []

    def spawn(args, **kw):
        p = subprocess.Popen(args, env=env, **kw)
        children.append(p)
        return p

    def stop_all():
        for p in reversed(children):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()

    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(1)))
    try:
        return run(a, out, log, db, folder, env, spawn)
    finally:
        stop_all()
        if not a.keep and a.out is None:
            subprocess.run(["rm", "-rf", out])


def run(a, out, log, db, folder, env, spawn):
    moto_bin = os.environ.get("LIFEBOAT_MOTO_SERVER", os.path.join(ROOT, ".venv/bin/moto_server"))
    moto_port = free_port()
    moto = spawn(
        [moto_bin, "-H", "127.0.0.1", "-p", str(moto_port)],
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(out, "moto.log"), "w"),
    )
    wait_listening(moto_port, moto, "moto_server")
    bucket = "soak"
    req = urllib.request.Request(f"http://127.0.0.1:{moto_port}/{bucket}", method="PUT")
    urllib.request.urlopen(req, timeout=10).read()
    proxy = spawn(
        [a.faultproxy, f"127.0.0.1:{moto_port}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    proxy_endpoint = proxy.stdout.readline().split()[1]

    def set_fault(rule):
        proxy.stdin.write(rule + "\n")
        proxy.stdin.flush()
        answer = proxy.stdout.readline().strip()
        if answer != "ok":
            sys.exit(f"soak: the fault proxy refused {rule!r}: {answer}")

    def proxy_counts():
        proxy.stdin.write("counts\n")
        proxy.stdin.flush()
        return dict(kv.split("=") for kv in proxy.stdout.readline().split()[1:])

    s3_agent = (
        f"s3://{bucket}/app?endpoint={proxy_endpoint}&region=us-east-1"
        "&timeout=1s&min_upload_rate=1048576"
    )
    s3_direct = f"s3://{bucket}/app?endpoint=http://127.0.0.1:{moto_port}&region=us-east-1"
    folder_url = f"file://{folder}"
    replicas = {"s3": s3_direct, "folder": folder_url}

    writer = Writer(db, a.rate, log)
    # The database exists before the agent starts (its first generation's snapshot).
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()

    health_port = free_port()
    config = os.path.join(out, "lifeboat.toml")
    with open(config, "w") as f:
        f.write(
            f'[[databases]]\npath = "{db}"\nreplicas = ["{s3_agent}", "{folder_url}"]\n'
            'snapshot-interval = "10m"\nretention = "20m"\n'
        )
    agent_log = os.path.join(out, "agent.log")
    agent = spawn(
        [
            a.lifeboat,
            "replicate",
            "--config",
            config,
            "--health-addr",
            f"127.0.0.1:{health_port}",
            "--log-format",
            "json",
        ],
        stdout=open(agent_log, "w"),
        stderr=subprocess.STDOUT,
    )
    wait_listening(health_port, agent, "lifeboat replicate")
    metrics_url = f"http://127.0.0.1:{health_port}/metrics"
    health_url = f"http://127.0.0.1:{health_port}/health"
    log(f"soak: {out}: {a.duration:.0f} s at {a.rate} tx/s; agent pid {agent.pid}")
    writer.start()

    t0 = time.time()
    end = t0 + a.duration
    next_drill = t0 + min(60, a.drill_every)
    next_fault = t0 + a.fault_every
    fault_off_at = None
    fault_i = 0
    drills = []
    faults_done = []
    max_lag = {}  # replica -> (seconds, at elapsed s)
    max_lag_tx = {}
    health_codes = {}
    samples = []
    max_wal = 0
    drill_turn = 0

    def drill(name, url):
        started = time.time()
        p = subprocess.run(
            [a.lifeboat, "drill", url, "--db", db, "--random-point", "--json"],
            env=env,
            capture_output=True,
            text=True,
        )
        took = time.time() - started
        try:
            rep = json.loads(p.stdout)
        except json.JSONDecodeError:
            rep = {}
        d = {
            "replica": name,
            "at_s": round(started - t0),
            "exit": p.returncode,
            "ok": p.returncode == 0 and rep.get("ok") is True,
            "rto_s": rep.get("rto_seconds"),
            "at_risk_commits": rep.get("at_risk_commits"),
            "took_s": round(took, 1),
        }
        if not d["ok"]:
            d["stderr"] = p.stderr.strip()[-2000:]
            d["report"] = p.stdout[-4000:]
        log(
            f"drill {name}: {'passed' if d['ok'] else 'FAILED'} rto {d['rto_s']} s, "
            f"at risk {d['at_risk_commits']} commits, took {d['took_s']} s"
        )
        drills.append(d)

    while time.time() < end:
        now = time.time()
        if agent.poll() is not None:
            log(f"soak: the agent exited with {agent.returncode}")
            break
        if fault_off_at is not None and now >= fault_off_at:
            set_fault("pass")
            log("fault off")
            fault_off_at = None
        if fault_off_at is None and now >= next_fault:
            rule, what = FAULTS[fault_i % len(FAULTS)]
            fault_i += 1
            set_fault(rule)
            log(f"fault on: {rule} ({what})")
            faults_done.append({"rule": rule, "at_s": round(now - t0), "for_s": a.fault_for})
            fault_off_at = now + a.fault_for
            next_fault = now + a.fault_every
        if now >= next_drill:
            name = ["s3", "folder"][drill_turn % 2]
            drill_turn += 1
            drill(name, replicas[name])
            next_drill = time.time() + a.drill_every
        try:
            _, text = http_get(metrics_url)
            code, _ = http_get(health_url)
        except OSError as e:
            log(f"soak: metrics unreachable: {e}")
            text, code = "", "unreachable"
        health_codes[str(code)] = health_codes.get(str(code), 0) + 1
        lag = metric_values(text, "lifeboat_replication_lag_seconds")
        lag_tx = metric_values(text, "lifeboat_replication_lag_transactions")
        el = round(time.time() - t0)
        for r, v in lag.items():
            if v > max_lag.get(r, (-1, 0))[0]:
                max_lag[r] = (v, el)
        for r, v in lag_tx.items():
            max_lag_tx[r] = max(max_lag_tx.get(r, 0), v)
        wal = os.path.getsize(db + "-wal") if os.path.exists(db + "-wal") else 0
        max_wal = max(max_wal, wal)
        rss, hwm, cpu = proc_stats(agent.pid)
        samples.append({"t": el, "rss": rss, "cpu": cpu, "lag": lag, "commits": writer.commits})
        if len(samples) % max(1, int(300 / a.sample_every)) == 0:
            log(
                f"t={el}s commits {writer.commits} lag {lag} rss {rss >> 20} MiB cpu {cpu:.0f} s "
                f"wal {wal >> 20} MiB"
            )
        time.sleep(a.sample_every)

    if fault_off_at is not None:
        set_fault("pass")
    writer.stop.set()
    writer.join()
    elapsed = time.time() - t0
    log(f"writer stopped: {writer.commits} commits in {elapsed:.0f} s")
    sync_started = time.time()
    sync = subprocess.run(
        [a.lifeboat, "sync", "--addr", f"127.0.0.1:{health_port}", "--timeout", "180s"],
        env=env,
        capture_output=True,
        text=True,
    )
    catch_up = time.time() - sync_started
    log(f"sync: exit {sync.returncode} after {catch_up:.1f} s")
    for name in ("s3", "folder"):
        drill(name, replicas[name])
    rss, hwm, cpu = proc_stats(agent.pid)
    _, final_metrics = http_get(metrics_url)
    agent.send_signal(signal.SIGTERM)
    agent_exit = agent.wait(60)
    agent_errors = {"ERROR": 0, "WARN": 0}
    error_lines = []
    with open(agent_log) as f:
        for line in f:
            try:
                level = json.loads(line).get("level", "")
            except json.JSONDecodeError:
                level = "ERROR" if "error" in line.lower() else ""
            if level in agent_errors:
                agent_errors[level] += 1
                if len(error_lines) < 40:
                    error_lines.append(line.strip()[:400])

    live_digest, _ = table_digest(db)
    final = {}
    for name, url in replicas.items():
        v = subprocess.run([a.lifeboat, "verify", url], env=env, capture_output=True, text=True)
        restored = os.path.join(out, f"restored-{name}.db")
        r = subprocess.run(
            [a.lifeboat, "restore", url, "-o", restored, "--force"],
            env=env,
            capture_output=True,
            text=True,
        )
        digest, seqs = table_digest(restored) if r.returncode == 0 else (None, [])
        final[name] = {
            "verify_exit": v.returncode,
            "verify_tail": v.stdout.strip().splitlines()[-1:] + v.stderr.strip().splitlines()[-3:],
            "restore_exit": r.returncode,
            "markers_exact": seqs == list(range(1, writer.commits + 1)),
            "markers": len(seqs),
            "tables_equal_live": digest == live_digest,
        }
        log(f"final {name}: {final[name]}")

    samples_cpu = [s["cpu"] for s in samples]
    report = {
        "duration_s": round(elapsed),
        "rate_tx_s": a.rate,
        "binary": a.lifeboat,
        "commits": writer.commits,
        "rolled_back_transactions": writer.rollbacks,
        "writer_errors": len(writer.errors),
        "writer_errors_first": writer.errors[:10],
        "writer_late_slots": writer.late,
        "faults": len(faults_done),
        "fault_rules": sorted({f["rule"] for f in faults_done}),
        "proxy": proxy_counts(),
        "drills": len(drills),
        "drills_passed": sum(d["ok"] for d in drills),
        "drills_failed": [d for d in drills if not d["ok"]],
        "rto_s_max": max((d["rto_s"] or 0) for d in drills) if drills else None,
        "max_lag_s": {r: {"lag_s": v, "at_s": t} for r, (v, t) in max_lag.items()},
        "max_lag_transactions": max_lag_tx,
        "health_codes": health_codes,
        "max_wal_bytes": max_wal,
        "catch_up_after_writer_stopped_s": round(catch_up, 1),
        "sync_exit": sync.returncode,
        "agent_rss_bytes_last": rss,
        "agent_rss_bytes_peak": hwm,
        "agent_rss_bytes_at_5min": next((s["rss"] for s in samples if s["t"] >= 300), None),
        "agent_cpu_s": round(cpu, 1),
        "agent_cpu_share": round(cpu / elapsed, 4),
        "agent_cpu_s_first_half": round(samples_cpu[len(samples_cpu) // 2], 1)
        if samples_cpu
        else None,
        "agent_exit": agent_exit,
        "agent_log_levels": agent_errors,
        "agent_log_errors_first": error_lines,
        "errors_total_metric": metric_values(final_metrics, "lifeboat_errors_total"),
        "final": final,
    }
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out, "samples.json"), "w") as f:
        json.dump(samples, f)
    print(json.dumps({k: v for k, v in report.items() if k != "agent_log_errors_first"}, indent=2))
    ok = (
        all(d["ok"] for d in drills)
        and drills
        and sync.returncode == 0
        and all(
            f["verify_exit"] == 0 and f["markers_exact"] and f["tables_equal_live"]
            for f in final.values()
        )
    )
    log(f"soak: {'PASSED' if ok else 'FAILED'}; report in {out}/report.json")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
