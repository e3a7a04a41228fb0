#!/usr/bin/env bash
# Installs the S3-compatible test server (moto, from PyPI) into .venv at the repository root.
# Idempotent: quick when it is already there.
set -euo pipefail
cd "$(dirname "$0")/../.."
MOTO_VERSION=5.2.5
if [ -x .venv/bin/moto_server ] && .venv/bin/python -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  exit 0
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
.venv/bin/moto_server --help >/dev/null
echo "installed moto $MOTO_VERSION into .venv"
