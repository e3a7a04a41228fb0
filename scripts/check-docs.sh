#!/usr/bin/env bash
# Runs every command block of the README and the runbooks that is marked runnable (a line
# `<!-- runnable -->` right before the ```sh fence) against a local replica, as a new user would
# type them, and fails if any block fails. Also checks that the lifeboat stage of the Dockerfile
# in docs/render.md runs exactly the build commands CI runs (.ci/run).
#
# The sandbox: a database with `expenses` and `employees` tables, 50 transactions replicated to
# a folder; "$URL" is that replica (file://...). Paths under /tmp/ in a block are rewritten into
# the sandbox, so nothing outside it is touched. The binary: $LIFEBOAT_BIN, else
# target/debug/lifeboat.
#
#   scripts/check-docs.sh [FILE.md ...]      # default: README.md docs/runbooks/*.md
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=${LIFEBOAT_BIN:-$root/target/debug/lifeboat}
[[ -x "$bin" ]] || { echo "check-docs: no binary at $bin (cargo build first)" >&2; exit 1; }
command -v sqlite3 >/dev/null || { echo "check-docs: needs the sqlite3 shell" >&2; exit 1; }
files=("$@")
[[ ${#files[@]} -gt 0 ]] || files=(README.md docs/runbooks/*.md)

sandbox=$(mktemp -d)
agent=
cleanup() {
  [[ -n "$agent" ]] && kill "$agent" 2>/dev/null || true
  rm -rf "$sandbox"
}
trap cleanup EXIT
mkdir -p "$sandbox/bin" "$sandbox/tmp"
ln -s "$bin" "$sandbox/bin/lifeboat"
export PATH="$sandbox/bin:$PATH"
export URL="file://$sandbox/replica"
export NO_COLOR=1
db="$sandbox/app.db"

sqlite3 "$db" "PRAGMA journal_mode=WAL;
  CREATE TABLE employees(id INTEGER PRIMARY KEY, name TEXT);
  CREATE TABLE expenses(id INTEGER PRIMARY KEY, employee INTEGER, amount REAL, created_at TEXT);
  INSERT INTO employees(name) VALUES ('ada'), ('grace');" >/dev/null
lifeboat replicate "$db" "$URL" 2>"$sandbox/agent.log" &
agent=$!
deadline=$((SECONDS + 60))
until grep -q "replicating" "$sandbox/agent.log"; do
  ((SECONDS < deadline)) || { cat "$sandbox/agent.log"; exit 1; }
  sleep 0.1
done
for i in $(seq 1 50); do
  sqlite3 "$db" "INSERT INTO expenses(employee, amount, created_at) VALUES (1, $i, datetime('now'))"
done
kill -TERM "$agent"
wait "$agent" || { echo "check-docs: the agent did not stop cleanly" >&2; cat "$sandbox/agent.log"; exit 1; }
agent=

failed=0
ran=0
for f in "${files[@]}"; do
  # Blocks: the ```sh fence after a `<!-- runnable -->` line, up to the closing fence.
  n=0
  while IFS= read -r -d '' block; do
    n=$((n + 1))
    ran=$((ran + 1))
    block=${block//\/tmp\//$sandbox/tmp/}
    echo "== $f, runnable block $n"
    if ! (cd "$sandbox" && bash -euo pipefail -c "$block") >"$sandbox/out" 2>&1; then
      failed=$((failed + 1))
      echo "FAILED: $f, runnable block $n:"
      echo "$block" | sed 's/^/    /'
      echo "  output:"
      sed 's/^/    /' "$sandbox/out"
    fi
  done < <(awk '
    /^<!-- runnable -->$/ { want = 1; next }
    want && /^```sh$/ { inside = 1; want = 0; block = ""; next }
    inside && /^```$/ { printf "%s%c", block, 0; inside = 0; next }
    inside { block = block $0 "\n"; next }
    { want = 0 }
  ' "$f")
done

# The Dockerfile in docs/render.md builds lifeboat with the commands CI runs.
want='RUN scripts/release.sh --out /dist && scripts/install.sh /dist/lifeboat-*.tar.gz --prefix /opt/lifeboat'
if ! grep -qxF "$want" docs/render.md; then
  echo "FAILED: docs/render.md's Dockerfile no longer runs: $want (keep it and .ci/run in step)"
  failed=$((failed + 1))
fi

echo "check-docs: $ran runnable block(s), $failed failure(s)"
[[ $failed -eq 0 ]] && [[ $ran -gt 0 ]]
