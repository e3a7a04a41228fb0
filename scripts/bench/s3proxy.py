"""A counting TCP proxy for S3 traffic, and a minimal unsigned S3 client for the test server.

The proxy sits between a tool and the S3-compatible server on 127.0.0.1. It parses only the
client->server direction (request line, headers, body by Content-Length or chunked encoding) to
classify every request; the server->client direction is piped unchanged. No request is altered.

Request types (`classify`):
  LIST      GET on the bucket (ListObjects/ListObjectsV2)
  GET       GET of an object (whole or ranged)
  HEAD      HEAD of an object or bucket
  PUT       PUT of a whole object
  PUT-part  PUT of one multipart-upload part
  COPY      PUT with x-amz-copy-source
  POST-mpu-create / POST-mpu-complete / POST-delete / POST   (multipart start/finish, batch delete)
  DELETE / DELETE-mpu-abort
  GET-bucket-other / PUT-bucket   (bucket metadata, bucket creation)

"Upload requests" (what S3 bills as PUT-class writes of data) are PUT + PUT-part + COPY + POST-*.
"""

import http.client
import socket
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections import Counter

# moto does not check signatures, but refuses object reads without any Authorization header.
AUTH = {"Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, "
                         "SignedHeaders=host, Signature=00"}

UPLOAD_TYPES = ("PUT", "PUT-part", "COPY", "POST-mpu-create", "POST-mpu-complete", "POST")


def classify(method, target, headers):
    path, _, query = target.partition("?")
    q = urllib.parse.parse_qs(query, keep_blank_values=True)
    parts = path.lstrip("/").split("/", 1)
    bucket_level = len(parts) == 1 or parts[1] == ""
    if method == "GET":
        if bucket_level:
            if any(k in q for k in ("location", "versioning", "policy", "acl", "lifecycle")):
                return "GET-bucket-other"
            return "LIST"
        return "GET"
    if method == "HEAD":
        return "HEAD"
    if method == "PUT":
        if bucket_level:
            return "PUT-bucket"
        if "partNumber" in q:
            return "PUT-part"
        if "x-amz-copy-source" in headers:
            return "COPY"
        return "PUT"
    if method == "POST":
        if "uploads" in q:
            return "POST-mpu-create"
        if "uploadId" in q:
            return "POST-mpu-complete"
        if "delete" in q:
            return "POST-delete"
        return "POST"
    if method == "DELETE":
        return "DELETE-mpu-abort" if "uploadId" in q else "DELETE"
    return method


class CountingProxy:
    """Listens on 127.0.0.1:<port>, forwards every connection to 127.0.0.1:<upstream_port>."""

    def __init__(self, upstream_port, name="proxy", keep_events=True):
        self.name = name
        self.upstream_port = upstream_port
        self.lock = threading.Lock()
        self.counts = Counter()
        self.bytes_up = 0  # request bodies (client -> server)
        self.bytes_down = 0  # everything server -> client
        self.keep_events = keep_events
        # (t_start, t_done or None, type, key, body_bytes); t_done = first response bytes
        self.events = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.closed = False
        self.conns = set()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def snapshot(self):
        with self.lock:
            return {"counts": dict(self.counts), "bytes_up": self.bytes_up,
                    "bytes_down": self.bytes_down, "n_events": len(self.events)}

    def events_since(self, n):
        with self.lock:
            return list(self.events[n:])

    def close(self):
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self.conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            for s in (c, u):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.conns.update((c, u))
            state = {"pending": None}
            threading.Thread(target=self._requests, args=(c, u, state), daemon=True).start()
            threading.Thread(target=self._responses, args=(u, c, state), daemon=True).start()

    def _drop(self, *socks):
        with self.lock:
            for s in socks:
                self.conns.discard(s)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _responses(self, u, c, state):
        try:
            while True:
                data = u.recv(1 << 20)
                if not data:
                    break
                now = time.monotonic()
                with self.lock:
                    self.bytes_down += len(data)
                    ev = state["pending"]
                    if ev is not None:
                        self.events[ev][1] = now
                        state["pending"] = None
                c.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(u, c)

    def _requests(self, c, u, state):
        buf = bytearray()

        def fill():
            data = c.recv(1 << 20)
            if not data:
                raise EOFError
            buf.extend(data)

        def take_line():
            while True:
                i = buf.find(b"\r\n")
                if i >= 0:
                    line = bytes(buf[: i + 2])
                    del buf[: i + 2]
                    return line
                if len(buf) > 65536:
                    raise ValueError("line too long")
                fill()

        def forward_exact(n, last_ev):
            nonlocal buf
            while n > 0:
                if not buf:
                    fill()
                k = min(n, len(buf))
                if k == n and last_ev is not None:
                    with self.lock:
                        state["pending"] = last_ev
                u.sendall(bytes(buf[:k]))
                del buf[:k]
                n -= k
                with self.lock:
                    self.bytes_up += k

        try:
            while True:
                while True:
                    i = buf.find(b"\r\n\r\n")
                    if i >= 0:
                        break
                    if len(buf) > 1 << 20:
                        raise ValueError("headers too long")
                    fill()
                head = bytes(buf[: i + 4])
                del buf[: i + 4]
                lines = head.decode("latin-1").split("\r\n")
                method, target = lines[0].split(" ")[:2]
                headers = {}
                for ln in lines[1:]:
                    if ":" in ln:
                        k, v = ln.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                typ = classify(method, target, headers)
                key = urllib.parse.unquote(target.partition("?")[0])
                chunked = "chunked" in headers.get("transfer-encoding", "").lower()
                length = int(headers.get("content-length", "0") or 0) if not chunked else -1
                with self.lock:
                    self.counts[typ] += 1
                    ev = len(self.events)
                    self.events.append([time.monotonic(), None, typ, key, max(length, 0)])
                    if length <= 0 and not chunked:
                        state["pending"] = ev
                u.sendall(head)
                if chunked:
                    while True:
                        line = take_line()
                        size = int(line.split(b";")[0].strip(), 16)
                        if size == 0:
                            tail = line
                            while True:
                                t = take_line()
                                tail += t
                                if t == b"\r\n":
                                    break
                            with self.lock:
                                state["pending"] = ev
                            u.sendall(tail)
                            break
                        u.sendall(line)
                        forward_exact(size + 2, None)
                        with self.lock:
                            self.events[ev][4] += size
                elif length > 0:
                    forward_exact(length, ev)
        except (EOFError, OSError, ValueError):
            pass
        finally:
            self._drop(c, u)


class S3:
    """Unsigned requests straight to the test server (moto accepts them): setup and listings."""

    def __init__(self, port, bucket):
        self.port = port
        self.bucket = bucket

    def _req(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers={**AUTH, **(headers or {})})
            r = conn.getresponse()
            data = r.read()
            return r.status, data
        finally:
            conn.close()

    def create_bucket(self):
        st, data = self._req("PUT", f"/{self.bucket}")
        if st not in (200, 409):
            raise RuntimeError(f"create bucket: HTTP {st}: {data[:300]!r}")

    def list(self, prefix):
        """[(key, size)] under prefix."""
        out, token = [], None
        for _ in range(100000):
            q = {"list-type": "2", "prefix": prefix, "max-keys": "1000"}
            if token:
                q["continuation-token"] = token
            st, data = self._req("GET", f"/{self.bucket}?" + urllib.parse.urlencode(q))
            if st != 200:
                raise RuntimeError(f"list: HTTP {st}: {data[:300]!r}")
            root = ET.fromstring(data)
            ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
            for c in root.iter(f"{ns}Contents"):
                out.append((c.find(f"{ns}Key").text, int(c.find(f"{ns}Size").text)))
            if (root.findtext(f"{ns}IsTruncated") or "false").lower() != "true":
                break
            token = root.findtext(f"{ns}NextContinuationToken")
        return out

    def delete_prefix(self, prefix):
        for key, _ in self.list(prefix):
            self._req("DELETE", f"/{self.bucket}/" + urllib.parse.quote(key))


def raw_put_get(port, bucket, key, path, out_path):
    """The physical reference: one plain PUT of a file and one GET of it back into a file,
    through `port` (the counting proxy). Returns (put_seconds, get_seconds)."""
    import os
    size = os.path.getsize(path)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.monotonic()
    with open(path, "rb") as f:
        conn.request("PUT", f"/{bucket}/{key}", body=f,
                     headers={**AUTH, "Content-Length": str(size), "Content-Type": "application/octet-stream"})
        r = conn.getresponse()
        r.read()
    put_s = time.monotonic() - t0
    if r.status != 200:
        raise RuntimeError(f"raw PUT: HTTP {r.status}")
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.monotonic()
    conn.request("GET", f"/{bucket}/{key}", headers=AUTH)
    r = conn.getresponse()
    got = 0
    with open(out_path, "wb") as f:
        while True:
            chunk = r.read(1 << 20)
            if not chunk:
                break
            f.write(chunk)
            got += len(chunk)
        f.flush()
        os.fsync(f.fileno())
    get_s = time.monotonic() - t0
    conn.close()
    if r.status != 200 or got != size:
        raise RuntimeError(f"raw GET: HTTP {r.status}, {got} of {size} bytes")
    return put_s, get_s
