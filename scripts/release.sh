#!/usr/bin/env bash
# Builds a release tarball of lifeboat: a stripped binary with README.md and LICENSE, in
# dist/lifeboat-<version>-<target>.tar.gz, and its SHA-256 in the same name + .sha256
# (`sha256sum -c` format). scripts/install.sh installs it.
#
#   scripts/release.sh                       # cargo build --release --locked, then package
#   scripts/release.sh --out DIR             # put the tarball in DIR (default: dist)
#   scripts/release.sh --binary PATH         # package an already built binary (no build)
set -euo pipefail
cd "$(dirname "$0")/.."

out=dist
binary=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    *) echo "release.sh: unknown argument $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
target=$(rustc -vV | sed -n 's/^host: //p')
if [[ -z "$binary" ]]; then
  cargo build --release --locked --bin lifeboat
  binary=target/release/lifeboat
fi
[[ -x "$binary" ]] || { echo "release.sh: $binary is not an executable" >&2; exit 1; }

name="lifeboat-$version-$target"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/$name"
cp "$binary" "$stage/$name/lifeboat"
strip "$stage/$name/lifeboat"
cp README.md LICENSE "$stage/$name/"
mkdir -p "$out"
tarball="$out/$name.tar.gz"
tar -C "$stage" -czf "$tarball" "$name"
(cd "$out" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
echo "$tarball"
