"""The benchmark's app: a web-backend-like writer on its own SQLite connection.

WAL mode, synchronous=NORMAL, busy_timeout 5 s, SQLite's default autocheckpoint. Each transaction
is a mix of an insert, an update and (one in three) a delete of ~200-byte text rows, plus an update
of the one-row `progress` table to the transaction's sequence number, which is how a restored
replica tells which transaction it holds. The commit time of every transaction (CLOCK_MONOTONIC,
taken right after COMMIT returns) is written to the output JSON.

  writer.py init DB [--rows N]
  writer.py run DB --out JSON (--rate TPS --seconds S | --count N) [--seed K]
  writer.py check DB      # prints the content digest used to compare a restore with the source
"""

import argparse
import hashlib
import json
import random
import sqlite3
import sys
import time

ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def connect(db):
    c = sqlite3.connect(db, isolation_level=None, timeout=5.0)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    c.execute("PRAGMA busy_timeout=5000")
    return c


_POOL_RNG = random.Random(7)
POOL = ["".join(_POOL_RNG.choices(ALPHABET, k=200)) for _ in range(4096)]


def text(rng):
    return POOL[rng.randrange(len(POOL))]


def init(db, rows, seed=1):
    rng = random.Random(seed)
    c = connect(db)
    c.execute("CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, user_id INTEGER, "
              "body TEXT NOT NULL, updated_at REAL)")
    c.execute("CREATE INDEX IF NOT EXISTS items_user ON items(user_id)")
    c.execute("CREATE TABLE IF NOT EXISTS progress(k INTEGER PRIMARY KEY, seq INTEGER)")
    c.execute("BEGIN")
    c.execute("INSERT OR REPLACE INTO progress VALUES (1, 0)")
    c.executemany("INSERT INTO items(user_id, body, updated_at) VALUES (?, ?, 0)",
                  [(rng.randrange(1000), text(rng)) for _ in range(rows)])
    c.execute("COMMIT")
    c.close()


def run(db, out, rate, seconds, count, seed):
    rng = random.Random(seed)
    c = connect(db)
    max_id = c.execute("SELECT coalesce(max(id), 0) FROM items").fetchone()[0]
    n_total = count if count else int(rate * seconds)
    commits = []
    busy = 0
    start = time.monotonic()
    for seq in range(1, n_total + 1):
        if rate:
            due = start + (seq - 1) / rate
            d = due - time.monotonic()
            if d > 0:
                time.sleep(d)
        for attempt in range(100):
            try:
                c.execute("BEGIN IMMEDIATE")
                c.execute("INSERT INTO items(user_id, body, updated_at) VALUES (?, ?, ?)",
                          (rng.randrange(1000), text(rng), float(seq)))
                max_id += 1
                c.execute("UPDATE items SET body = ?, updated_at = ? WHERE id = ?",
                          (text(rng), float(seq), rng.randrange(1, max_id + 1)))
                if seq % 3 == 0:
                    c.execute("DELETE FROM items WHERE id = ?", (rng.randrange(1, max_id + 1),))
                c.execute("UPDATE progress SET seq = ? WHERE k = 1", (seq,))
                c.execute("COMMIT")
                break
            except sqlite3.OperationalError as e:  # SQLITE_BUSY beyond busy_timeout
                busy += 1
                try:
                    c.execute("ROLLBACK")
                except sqlite3.OperationalError:
                    pass
                if attempt == 99:
                    raise SystemExit(f"writer: gave up on transaction {seq}: {e}")
        commits.append(time.monotonic())
    elapsed = time.monotonic() - start
    c.close()
    with open(out, "w") as f:
        json.dump({"transactions": n_total, "seconds": elapsed, "tps": n_total / elapsed,
                   "busy_retries": busy, "start": start, "commits": commits}, f)


def digest(db):
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    h = hashlib.sha256()
    n = 0
    for row in c.execute("SELECT id, user_id, body, updated_at FROM items ORDER BY id"):
        h.update(repr(row).encode())
        n += 1
    seq = c.execute("SELECT seq FROM progress WHERE k = 1").fetchone()[0]
    c.close()
    return {"rows": n, "seq": seq, "sha256": h.hexdigest()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["init", "run", "check"])
    p.add_argument("db")
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--out")
    p.add_argument("--rate", type=float, default=0)
    p.add_argument("--seconds", type=float, default=0)
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()
    if a.cmd == "init":
        init(a.db, a.rows)
    elif a.cmd == "run":
        run(a.db, a.out, a.rate, a.seconds, a.count, a.seed)
    else:
        json.dump(digest(a.db), sys.stdout)


if __name__ == "__main__":
    main()
