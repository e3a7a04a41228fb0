#!/usr/bin/env bash
# The main job on the embedded default: a demo database written by a separate process, replicated
# by lifeboat to a local folder (no cloud account), then restored and compared.
#
#   scripts/demo.sh            # writes into ./demo/
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin="$PWD/target/release/lifeboat"
demo="$PWD/demo"
rm -rf "$demo" && mkdir -p "$demo"
db="$demo/app.db"
replica="file://$demo/replica"

python3 - "$db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("PRAGMA journal_mode=WAL")
c.execute("CREATE TABLE expenses(id INTEGER PRIMARY KEY, employee TEXT, amount REAL, note TEXT)")
c.commit()
PY

echo "== replicating $db to $replica"
"$bin" replicate "$db" "$replica" &
agent=$!
trap 'kill $agent 2>/dev/null || true' EXIT

python3 - "$db" <<'PY'
import sqlite3, sys, random
c = sqlite3.connect(sys.argv[1])
for i in range(2000):
    c.execute("INSERT INTO expenses(employee, amount, note) VALUES (?, ?, ?)",
              (random.choice(["ana", "bo", "cy"]), round(random.uniform(1, 500), 2), "mileage " * 10))
    if i % 10 == 0:
        c.execute("UPDATE expenses SET amount = amount + 1 WHERE id % 7 = ?", (i % 7,))
    c.commit()
print("app wrote 2000 transactions")
PY

kill -TERM "$agent"
wait "$agent"
trap - EXIT

echo "== restoring into $demo/restored.db"
"$bin" restore "$replica" -o "$demo/restored.db"
python3 - "$db" "$demo/restored.db" <<'PY'
import sqlite3, sys
q = "SELECT count(*), round(sum(amount), 2) FROM expenses"
a = sqlite3.connect(sys.argv[1]).execute(q).fetchone()
b = sqlite3.connect(sys.argv[2]).execute(q).fetchone()
print("source  :", a)
print("restored:", b)
sys.exit(0 if a == b else 1)
PY
echo "== demo ok: the restored database matches the source"
