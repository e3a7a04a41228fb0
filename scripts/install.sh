#!/usr/bin/env bash
# Installs lifeboat from a release tarball (scripts/release.sh) after checking its SHA-256.
#
#   scripts/install.sh lifeboat-0.1.0-x86_64-unknown-linux-gnu.tar.gz [--prefix /usr/local]
#
# The checksum file is the tarball's name + .sha256, next to it (or --sha256 FILE). The binary
# goes to PREFIX/bin/lifeboat (default /usr/local/bin/lifeboat), replaced atomically. Nothing is
# installed if the checksum does not match.
set -euo pipefail

tarball=
prefix=/usr/local
sums=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --sha256) sums="$2"; shift 2 ;;
    -*) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    *) tarball="$1"; shift ;;
  esac
done
[[ -n "$tarball" ]] || { echo "usage: install.sh TARBALL [--prefix DIR] [--sha256 FILE]" >&2; exit 2; }
[[ -f "$tarball" ]] || { echo "install.sh: no such file: $tarball" >&2; exit 1; }
sums=${sums:-$tarball.sha256}
[[ -f "$sums" ]] || { echo "install.sh: no checksum file $sums: refusing to install an unchecked binary" >&2; exit 1; }

want=$(cut -d' ' -f1 "$sums")
got=$(sha256sum "$tarball" | cut -d' ' -f1)
if [[ "$want" != "$got" ]]; then
  echo "install.sh: SHA-256 mismatch for $tarball (expected $want, got $got): not installed" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -C "$work" -xzf "$tarball"
bin=$(find "$work" -mindepth 2 -maxdepth 2 -name lifeboat -type f | head -1)
[[ -n "$bin" ]] || { echo "install.sh: $tarball holds no lifeboat binary" >&2; exit 1; }
mkdir -p "$prefix/bin"
install -m 0755 "$bin" "$prefix/bin/.lifeboat.new"
mv -f "$prefix/bin/.lifeboat.new" "$prefix/bin/lifeboat"
"$prefix/bin/lifeboat" version
