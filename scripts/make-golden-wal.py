#!/usr/bin/env python3
"""Regenerates crates/wal/testdata: real SQLite WAL files and damaged copies of them.

ok/            a WAL with three committed transactions (seven frames)
salt-mismatch/ frame 3's salt changed (SQLite ends the log there)
checksum-mismatch/ one byte of frame 3's page flipped (SQLite ends the log there)
truncated/     the file cut in the middle of frame 4

Each folder holds `wal` and `expect.txt` (frames and commits a reader must accept).
"""
import os
import shutil
import sqlite3
import struct
import tempfile

root = os.path.join(os.path.dirname(__file__), "..", "crates", "wal", "testdata")
tmp = tempfile.mkdtemp()
db = os.path.join(tmp, "g.db")
c = sqlite3.connect(db, isolation_level=None)
c.execute("PRAGMA page_size=1024")
c.execute("PRAGMA journal_mode=WAL")
c.execute("PRAGMA wal_autocheckpoint=0")
c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
c.execute("INSERT INTO t(v) VALUES ('one')")
c.execute("BEGIN")
c.execute("INSERT INTO t(v) VALUES (?)", ("x" * 3000,))
c.execute("COMMIT")
wal = open(db + "-wal", "rb").read()
c.close()

page_size = struct.unpack(">I", wal[8:12])[0]
frame = 24 + page_size
n = (len(wal) - 32) // frame
commits = [i for i in range(n) if struct.unpack(">I", wal[32 + i * frame + 4:32 + i * frame + 8])[0] != 0]


def write(name, data, frames, ncommits):
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "wal"), "wb").write(data)
    open(os.path.join(d, "expect.txt"), "w").write(f"frames={frames}\ncommits={ncommits}\n")


last_commit = commits[-1] + 1
write("ok", wal, last_commit, len(commits))

# Frames up to and including the last commit before frame index k.
def committed_before(k):
    cs = [i for i in commits if i < k]
    return (cs[-1] + 1 if cs else 0), len(cs)

bad = 2  # frame index 2 (the third frame)
assert n > bad + 1, n
b = bytearray(wal)
off = 32 + bad * frame
b[off + 8] ^= 0xFF
write("salt-mismatch", bytes(b), *committed_before(bad))

b = bytearray(wal)
b[off + 24 + 100] ^= 0x01
write("checksum-mismatch", bytes(b), *committed_before(bad))

cut = 3
write("truncated", wal[: 32 + cut * frame + frame // 2], *committed_before(cut))
shutil.rmtree(tmp)
print(f"{n} frames, commits at {commits}, page size {page_size}")
