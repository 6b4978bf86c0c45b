"""
contract.py - helpers shared by the contract tests (tests/contracts/*.py).

The contract tests check hogrec against the documents clients rely on:
openapi.yaml (validated against the OpenAPI 3.0 JSON Schema, compared with
the server's route table and with what the running server answers) and the
Prometheus text of /metrics (promtool). This module holds what they share:
loading the spec strictly, resolving its $refs, reading the route table of
src/http.c, running the real server binary, and a raw HTTP/1.1 client that
can send what curl will not (two Content-Length headers, no length at all).

Runs on Debian's python3 with python3-yaml and python3-jsonschema.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading

import yaml

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


class Failure(Exception):
    """A contract the tests found broken; the message says which."""


def env_path(name):
    v = os.environ.get(name)
    if not v:
        raise Failure(f"{name} is not set (run through ctest)")
    return v


# ---- the spec ----

class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML keeps the last)."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise Failure(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        seen.add(key)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_spec(path):
    """The parsed openapi.yaml (duplicate keys refused)."""
    with open(path, encoding="utf-8") as f:
        try:
            return yaml.load(f, Loader=_StrictLoader)
        except yaml.YAMLError as e:
            raise Failure(f"{path}: not YAML: {e}") from e


def resolve(spec, node, seen=()):
    """Follows local $refs from node until a non-reference; raises Failure on
    a dangling, external or circular reference."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise Failure(f"$ref {ref!r}: only local references (#/...) are used here")
        if ref in seen:
            raise Failure(f"$ref {ref!r}: circular")
        seen = seen + (ref,)
        node = spec
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                raise Failure(f"$ref {ref!r}: no such target")
            node = node[part]
    return node


def operations(spec):
    """{(path, method): {status: response object}} of every operation."""
    ops = {}
    for path, item in (spec.get("paths") or {}).items():
        item = resolve(spec, item)
        for method in METHODS:
            if method in item:
                op = item[method]
                ops[(path, method)] = {str(k): resolve(spec, v)
                                       for k, v in (op.get("responses") or {}).items()}
    return ops


def documented(ops, path, method, status):
    """The response object documenting (path, method, status), or None.
    HEAD is documented by GET when the spec has no head operation (HTTP:
    HEAD is GET without the body)."""
    responses = ops.get((path, method))
    if responses is None and method == "head":
        responses = ops.get((path, "get"))
    if responses is None:
        return None
    return responses.get(str(status)) or responses.get(f"{status // 100}XX")


def spec_methods(ops, path):
    """HTTP methods of a path in the spec, upper case, HEAD added with GET."""
    ms = {m.upper() for (p, m) in ops if p == path}
    if "GET" in ms:
        ms.add("HEAD")
    return ms


# ---- the server's route table (src/http.c) ----

_FLAG = {"M_GET": "GET", "M_POST": "POST", "M_PUT": "PUT", "M_HEAD": "HEAD", "M_DELETE": "DELETE"}


def spec_path(path, spec_paths):
    """The spec path a concrete path is answered under: the path itself, or
    the spec path with {name} segments it matches, each {name} one non-empty
    segment as in the server's route table ("/v1/items/x" ->
    "/v1/items/{id}", "/v1/admin/trials/t1/apply" ->
    "/v1/admin/trials/{id}/apply")."""
    if path in spec_paths:
        return path
    for sp in sorted(spec_paths):
        if "{" in sp and re.fullmatch(re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(sp)), path):
            return sp
    return path


def concrete(path):
    """A request target for a spec path: each {param} replaced by a value."""
    return re.sub(r"\{[^}]*\}", "cx1", path)


def route_table(http_c):
    """{path: set of methods} from `static const route routes[R_COUNT]` in
    src/http.c. Fails loudly, rather than returning fewer routes, when the
    table does not parse: every R_ enumerator but R_NOT_FOUND/R_COUNT must
    be found with a path."""
    with open(http_c, encoding="utf-8") as f:
        src = f.read()
    enum = re.search(r"typedef enum \{([^}]*)\}\s*route_id;", src)
    table = re.search(r"static const route routes\[R_COUNT\]\s*=\s*\{(.*?)\n\};", src, re.S)
    if not enum or not table:
        raise Failure(f"{http_c}: cannot find the route_id enum or the routes[] table")
    ids = [e.strip().split("=")[0].strip() for e in enum.group(1).split(",")]
    ids = [i for i in ids if i and i not in ("R_NOT_FOUND", "R_COUNT")]
    routes = {}
    for m in re.finditer(r"\[(R_\w+)\]\s*=\s*\{\s*\"([^\"]+)\"\s*,\s*\"\w+\"\s*,\s*([^,]+),",
                         table.group(1)):
        rid, path, flags = m.groups()
        methods = set()
        for flag in re.split(r"\s*\|\s*", flags.strip()):
            if flag not in _FLAG:
                raise Failure(f"{http_c}: route {rid}: unknown method flag {flag!r}")
            methods.add(_FLAG[flag])
        routes[path] = methods
        if rid in ids:
            ids.remove(rid)
    if ids:
        raise Failure(f"{http_c}: routes without a parsed entry in routes[]: {', '.join(ids)}")
    return routes


# ---- the real server ----

class Server:
    """`hogrec serve --port 0 ARGS` in a temporary directory; started() once
    it logged "ready"; stop() sends SIGTERM and returns the exit status."""

    def __init__(self, args, name="server"):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="hogrec-contract-")
        self.log = []
        self.port = None
        self._ready = threading.Event()
        try:
            self.proc = subprocess.Popen(
                [os.path.abspath(env_path("HOGREC_BIN")), "serve", "--port", "0", "--bind",
                 "127.0.0.1", "--threads", "1", "--http-threads", "2", "--max-users", "4096",
                 "--max-items", "4096", "--log-level", "info"] + list(args),
                cwd=self.dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE)
        except OSError as e:
            subprocess.run(["rm", "-rf", self.dir], check=False)
            raise Failure(f"{name}: cannot run the server: {e}") from e
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        # Bounded only against a server that never gets ready; it normally
        # answers within a second.
        if not self._ready.wait(120) or self.port is None:
            self.stop()
            raise Failure(f"{name}: no listening/ready lines in the log:\n" + self.tail())

    def _read(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.log.append(line)
            try:
                o = json.loads(line)
            except ValueError:
                continue
            if not isinstance(o, dict):
                continue
            if o.get("msg") == "listening":
                self.port = o.get("port")
            if o.get("msg") == "ready":
                self._ready.set()
        self._ready.set()  # exited: wake the waiter

    def tail(self, n=30):
        return "\n".join(self.log[-n:])

    def stop(self):
        """SIGTERM, wait, return the exit status (SIGKILL after 120 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)
        subprocess.run(["rm", "-rf", self.dir], check=False)
        return self.proc.returncode


# ---- a raw HTTP/1.1 client ----

class Reply:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # {lower-case name: value}
        self.body = body        # bytes

    def json(self):
        return json.loads(self.body.decode("utf-8"))


def request(port, method, target, headers=(), body=None, chunked=False, length=True):
    """Sends one request on a new connection (Connection: close) and reads the
    reply to EOF. headers: (name, value) pairs sent as given. body: bytes;
    with length, a Content-Length is added unless headers carry one; with
    chunked, the body is sent as one chunk."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    payload = b""
    if body is not None:
        if chunked:
            lines.append("Transfer-Encoding: chunked")
            payload = (b"%x\r\n" % len(body)) + body + b"\r\n0\r\n\r\n" if body else b"0\r\n\r\n"
        else:
            if length and not any(k.lower() == "content-length" for k, _ in headers):
                lines.append(f"Content-Length: {len(body)}")
            payload = body
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered before the whole request was read: read the answer
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            chunks.append(b)
    raw = b"".join(chunks)
    head, _, rest = raw.partition(b"\r\n\r\n")
    if not head:
        raise Failure(f"{method} {target[:80]}: no reply")
    status_line, *hlines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise Failure(f"{method} {target[:80]}: bad status line {status_line!r}")
    hdrs = {}
    for h in hlines:
        k, _, v = h.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    if hdrs.get("transfer-encoding", "").lower() == "chunked":
        body, p = b"", rest
        while p:
            size_line, _, p = p.partition(b"\r\n")
            n = int(size_line.split(b";")[0] or b"0", 16)
            if n == 0:
                break
            body, p = body + p[:n], p[n + 2:]
        rest = body
    return Reply(int(parts[1]), hdrs, rest)


def run(main):
    """Runs a test's main(); prints the failure and exits 1 on Failure."""
    try:
        main()
    except Failure as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
