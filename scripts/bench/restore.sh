#!/usr/bin/env bash
# Restore benchmark (reports, never fails on a figure): a database of SIZE_MB (default 512) and a
# replica of SEGMENTS (default 5000) segments, both in a local-folder replica, restored with
# `lifeboat restore --parallelism $PARALLELISM` (default 8). Prints one JSON line per case.
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZE_MB=${SIZE_MB:-512}
SEGMENTS=${SEGMENTS:-5000}
PARALLELISM=${PARALLELISM:-8}
cargo build --release --quiet
bin="$PWD/target/release/lifeboat"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

ms() { date +%s%3N; }

# Case 1: a large database, one snapshot.
db="$work/big.db"
python3 - "$db" "$SIZE_MB" <<'PY'
import sqlite3, sys, os
db, size_mb = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(db)
c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB)")
row = 64 * 1024
for _ in range(size_mb * 1024 * 1024 // row // 256):
    c.executemany("INSERT INTO blobs(b) VALUES (randomblob(?))", [(row,)] * 256)
    c.commit()
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
print(f"database: {os.path.getsize(db) / 2**20:.0f} MiB", file=sys.stderr)
PY
cfg="$work/big.toml"
printf '[[databases]]\npath = "%s"\nreplicas = ["file://%s/big-replica"]\n' "$db" "$work" > "$cfg"
start=$(ms)
"$bin" replicate --config "$cfg" 2>"$work/big.log" &
agent=$!
until grep -q "new generation: snapshot uploaded" "$work/big.log"; do
  kill -0 $agent || { cat "$work/big.log"; exit 1; }
  sleep 0.2
done
snap_ms=$(( $(ms) - start ))
kill -TERM $agent; wait $agent
bytes=$(du -sb "$work/big-replica" | cut -f1)
start=$(ms)
"$bin" restore "file://$work/big-replica" -o "$work/big-restored.db" --parallelism "$PARALLELISM" >/dev/null 2>"$work/big-restore.log"
restore_ms=$(( $(ms) - start ))
start=$(ms); cat "$work/big-replica"/generations/*/snapshots/* > /dev/null; cp "$db" "$work/copy.db"; sync; copy_ms=$(( $(ms) - start ))
echo "{\"case\":\"large database\",\"db_bytes\":$(stat -c %s "$db"),\"replica_bytes\":$bytes,\"first_snapshot_ms\":$snap_ms,\"restore_ms\":$restore_ms,\"raw_read_and_copy_ms\":$copy_ms,\"parallelism\":$PARALLELISM}"
rm -f "$work"/big*.db "$work/copy.db"

# Case 2: many segments.
db="$work/many.db"
python3 -c "
import sqlite3; c = sqlite3.connect('$db'); c.execute('PRAGMA journal_mode=WAL')
c.execute('CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)'); c.commit()"
cfg="$work/many.toml"
# No scheduled snapshot inside the generation: the point is a restore that applies every segment.
printf '[[databases]]\npath = "%s"\nreplicas = ["file://%s/many-replica"]\nputs-per-second = 100000.0\nput-burst = 100000.0\nsnapshot-segments = 1000000000\nsnapshot-ratio = 0\n' "$db" "$work" > "$cfg"
"$bin" replicate --config "$cfg" 2>"$work/many.log" &
agent=$!
until grep -q "replicating" "$work/many.log"; do sleep 0.1; done
python3 - "$db" "$work/many-replica" "$SEGMENTS" <<'PY'
import sqlite3, sys, os, time
db, replica, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = sqlite3.connect(db)
def count():
    n = 0
    for root, _, files in os.walk(replica):
        n += sum(f.endswith(".lbseg") for f in files)
    return n
i = 0
while True:
    c.execute("INSERT INTO t(v) VALUES (?)", ("x" * 200,)); c.commit(); i += 1
    time.sleep(0.002)  # a web app's pace: one commit every few milliseconds
    if i % 500 == 0 and count() >= want:
        break
print(f"{i} transactions, {count()} segments", file=sys.stderr)
PY
kill -TERM $agent; wait $agent
segs=$(find "$work/many-replica" -name '*.lbseg' | wc -l)
start=$(ms)
"$bin" restore "file://$work/many-replica" -o "$work/many-restored.db" --parallelism "$PARALLELISM" >/dev/null 2>"$work/many-restore.log"
restore_ms=$(( $(ms) - start ))
echo "{\"case\":\"many segments\",\"segments\":$segs,\"restore_ms\":$restore_ms,\"parallelism\":$PARALLELISM}"
