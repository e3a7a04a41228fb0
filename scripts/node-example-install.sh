#!/usr/bin/env bash
# Installs examples/node-backend/node_modules (better-sqlite3) for the end-to-end test of the Node
# example, from package-lock.json with `npm ci`. Skipped, with a note, when node or npm is missing
# (the test then skips itself). Quick when already installed: a stamp of the lock file's hash and a
# load of the native module decide whether to reinstall.
set -euo pipefail
cd "$(dirname "$0")/../examples/node-backend"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [[ -n ${CI:-} ]] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing node and npm (CI: the Node example test must run)"
    (apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null) || true
  fi
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "note: node/npm not installed; the Node example test will be skipped (and fails under CI)"
  exit 0
fi
stamp=node_modules/.lifeboat-installed
want="$(node --version) $(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]] &&
  node -e "new (require('better-sqlite3'))(':memory:').close()" >/dev/null 2>&1; then
  exit 0
fi
echo "== npm ci in examples/node-backend (better-sqlite3 may compile from source: a few minutes)"
npm ci --no-audit --no-fund
node -e "new (require('better-sqlite3'))(':memory:').close()"
echo "$want" >"$stamp"
