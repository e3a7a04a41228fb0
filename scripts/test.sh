#!/usr/bin/env bash
# Runs every test: installs what the tests need (an S3-compatible server, moto, in .venv; the
# sqlite3 shell when apt is available; the Node example's node_modules when node is installed, and
# node itself under CI), then `cargo test --workspace` and its doc tests. Under CI (`.ci/run`
# sets CI=1) a missing sqlite3 shell or node fails the tests that need them instead of skipping.
# Arguments go to `cargo test` (e.g. `scripts/test.sh node::`; the doc tests then do not run).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/s3-server/install.sh
if ! command -v sqlite3 >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq sqlite3 >/dev/null) || echo "note: could not install the sqlite3 shell; the shell compatibility check will be skipped"
fi
bash scripts/node-example-install.sh
export LIFEBOAT_MOTO_SERVER="$PWD/.venv/bin/moto_server"
# Each failing integration test appends the start of its panic message here (tests/support);
# printed last on a failure, where a reader of the output's end (or CI's excerpt) finds it.
export LIFEBOAT_TEST_FAILURES="$PWD/target/test-failures.txt"
rm -f "$LIFEBOAT_TEST_FAILURES"
status=0
cargo test --workspace --all-targets "$@" || status=$?
if [[ $status -ne 0 ]]; then
  if [[ -s $LIFEBOAT_TEST_FAILURES ]]; then
    echo "== why the failing tests failed (first lines of each panic):"
    cat "$LIFEBOAT_TEST_FAILURES"
  fi
  exit "$status"
fi
# Doc tests (which --all-targets leaves out), unless only some tests were asked for.
if [[ $# -eq 0 ]]; then
  cargo test --workspace --doc
fi
