#!/usr/bin/env python3
"""
check_statuses.py - every (method, path, status) the running server answers
is documented in openapi.yaml, with a body that fits the documented schema.

Runs the real binary ($HOGREC_BIN serve) three times: with an admin token
and no database, with an admin token and a database, and with no admin token.
Against each it sends
  - a generic matrix: every path of the spec and of src/http.c's route table,
    plus unknown paths, with every method (GET HEAD POST PUT DELETE PATCH
    OPTIONS) and every request shape that the first checks of the server
    look at (no/wrong/right token, JSON, NDJSON, text/plain and missing
    Content-Type, malformed JSON, chunked, two Content-Length headers, a
    body or a declared length over max_body_bytes, no length at all, a
    50 KB query string, a 40 KB header). A new route in the table is
    exercised without a line here;
  - route-specific requests: valid ones (2xx) and each validation error.
Each reply is recorded and checked:
  - a path the spec does not have answers 404, or a status that every
    operation documents (answered before the path is looked at);
  - an operation of the spec answers only documented statuses, and a JSON
    body validates against the documented schema (jsonschema, Draft 4, with
    the spec's $refs inlined);
  - a method the spec does not list for a path answers 405 with an Allow
    header naming exactly the spec's methods, or a status that every
    operation of the path documents (those answered before the method is
    looked at: 400, 404, 413, ...).
Then every documented (path, method, status) must have been answered, or be
listed in UNEXERCISED with the reason; so the spec, the server and this test
cannot drift apart silently.

Usage: check_statuses.py OPENAPI_YAML HTTP_C
"""
import copy
import json
import sys

import jsonschema

import contract
from contract import Failure, request

TOKEN = "contract-token"
MAX_BODY = 4096
MAX_BATCH = 4

# Documented statuses that no request of this test can produce without
# depending on timing or on a failing disk; each is covered elsewhere.
UNEXERCISED = {
    ("/v1/events", "post", "429"):
        "the queue must be full when the batch arrives: depends on trainer speed "
        "(test_http pauses the trainers to test it)",
    ("/v1/events", "post", "503"):
        "while the log replays, while stopping, or with the event log failing "
        "(test_http, test_persist)",
    ("/readyz", "get", "503"):
        "while the log replays or with persistence failing (test_persist)",
    ("/v1/admin/checkpoint", "post", "429"):
        "another checkpoint must be running at that moment (timing)",
    ("/v1/admin/schedule/undo", "post", "503"):
        "only when installing the previous schedule fails (out of memory)",
    ("/ui/", "get", "304"):
        "needs the ETag of an earlier answer (test_statsring, tests/test_dashboard.py)",
    ("/v1/admin/trials", "post", "503"):
        "only when the database cannot be read at that moment",
    ("/v1/admin/trials", "post", "507"):
        "needs trial_memory_mb below the model's size (test_trials)",
    ("/v1/admin/trials/{id}/apply", "post", "200"):
        "needs a finished trial whose candidate beat the baseline: depends on the trial's "
        "thread having finished (test_trials applies one)",
    ("/v1/admin/snapshot", "get", "200"):
        "cluster mode only (needs Redis): test_snapshot fetches one",
    ("/v1/admin/snapshot", "get", "409"):
        "cluster mode only, a node that is not ready (test_snapshot)",
    ("/v1/admin/snapshot", "get", "429"):
        "cluster mode only, another snapshot being taken at that moment (timing)",
    ("/v1/admin/snapshot", "get", "503"):
        "cluster mode only, a node thread that reaches no delta boundary in 60 s",
}
# The catalog: 202 and 429 only in cluster mode (test_cluster_catalog runs
# nodes on Redis);
# 503 with the database failing or while stopping; 507 with an id table full.
for _p, _ms in (("/v1/items", ("post",)), ("/v1/users", ("post",)),
                ("/v1/items/{id}", ("get", "put", "delete")),
                ("/v1/users/{id}", ("get", "put", "delete"))):
    for _m in _ms:
        if _m != "get":
            UNEXERCISED[(_p, _m, "202")] = "cluster mode only (this test runs standalone servers)"
            UNEXERCISED[(_p, _m, "429")] = "cluster mode only, past max_backlog"
            UNEXERCISED[(_p, _m, "503")] = ("the main database failing, or the server stopping "
                                             "(timing or disk faults)")
        if _m in ("post", "put"):
            UNEXERCISED[(_p, _m, "507")] = "an id table must be full (test_catalog)"

SERVERS = [
    ("admin token, no database",
     ["--db", "", "--admin-token", TOKEN], True),
    ("admin token, database",
     ["--db", "hogrec.db", "--admin-token", TOKEN, "--durability", "sync"], True),
    ("no admin token", ["--db", ""], False),
]
COMMON = ["--max-body-bytes", str(MAX_BODY), "--max-batch-events", str(MAX_BATCH),
          "--queue-capacity", "1024", "--checkpoint-interval", "0", "--checkpoint-events", "0"]

UNKNOWN_PATHS = ["/v1", "/ui", "/v1/events/x", "/nope", "/V1/EVENTS", "/metrics/"]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
JSON = ("Content-Type", "application/json")
NDJSON = ("Content-Type", "application/x-ndjson")
EVENT = b'{"user":"u1","item":"i1"}'


def generic(path, auth):
    """(label, method, target, kwargs) of the generic matrix for one path."""
    ok = [("Authorization", f"Bearer {TOKEN}")] if auth else []
    big = b"[" + b" " * MAX_BODY + b"]"
    shapes = [
        ("plain", {"headers": ok}),
        ("no token", {}),
        ("wrong token", {"headers": [("Authorization", "Bearer nope")]}),
        ("json", {"headers": ok + [JSON], "body": EVENT}),
        ("ndjson", {"headers": ok + [NDJSON], "body": EVENT + b"\n" + EVENT + b"\n"}),
        ("text/plain", {"headers": ok + [("Content-Type", "text/plain")], "body": EVENT}),
        ("no content type", {"headers": ok, "body": EVENT}),
        ("malformed json", {"headers": ok + [JSON], "body": b'{"user":'}),
        ("empty body", {"headers": ok + [JSON], "body": b""}),
        ("chunked", {"headers": ok + [JSON], "body": EVENT, "chunked": True}),
        ("two content-lengths", {"headers": ok + [JSON, ("Content-Length", "2"),
                                                  ("Content-Length", "2")], "body": b"{}"}),
        ("body over max", {"headers": ok + [JSON], "body": big}),
        ("chunked over max", {"headers": ok + [JSON], "body": big, "chunked": True}),
        ("declared length over max", {"headers": ok + [JSON, ("Content-Length", str(MAX_BODY + 1))],
                                      "body": big[:MAX_BODY + 1]}),
        ("50 KB query", {"headers": ok, "target": path + "?q=" + "a" * 50000}),
        ("40 KB header", {"headers": ok + [("X-Big", "b" * 40000)]}),
    ]
    for method in METHODS:
        for label, kw in shapes:
            kw = dict(kw)
            target = kw.pop("target", path)
            yield f"{label}", method, target, kw


def specific(auth):
    """(label, method, target, kwargs) of valid requests and validation errors."""
    a = [("Authorization", f"Bearer {TOKEN}")] if auth else []

    def post(path, body, headers=(JSON,)):
        return {"headers": a + list(headers), "body": body}

    return [
        ("one event", "POST", "/v1/events", post("/v1/events", b'{"user":"u1","item":"i1","id":"e1"}')),
        ("same id again", "POST", "/v1/events", post("/v1/events", b'{"user":"u1","item":"i1","id":"e1"}')),
        ("array", "POST", "/v1/events",
         post("/v1/events", b'[{"user":"u1","item":"i2","label":0},{"user":2,"item":3,"ts":1.5e9,'
              b'"weight":2,"features":{"dev":"ios","age":3}}]')),
        ("ndjson", "POST", "/v1/events", post("/v1/events", EVENT + b"\n{bad\n", (NDJSON,))),
        ("ndjson all bad", "POST", "/v1/events", post("/v1/events", b"{bad\n[\n", (NDJSON,))),
        ("invalid events", "POST", "/v1/events",
         post("/v1/events", b'[{"user":"u1"},{"user":"u1","item":"i1","label":7},{"user":[],"item":1}]')),
        ("empty array", "POST", "/v1/events", post("/v1/events", b"[]")),
        ("not an event", "POST", "/v1/events", post("/v1/events", b'"x"')),
        ("too many events", "POST", "/v1/events", post("/v1/events", b"[" + b",".join([EVENT] * (MAX_BATCH + 1)) + b"]")),
        ("predict", "GET", "/v1/predict?user=u1&item=i1", {}),
        ("predict unknown", "GET", "/v1/predict?user=nobody&item=i1", {}),
        ("predict no item", "GET", "/v1/predict?user=u1", {}),
        ("predict long id", "GET", "/v1/predict?user=" + "u" * 300 + "&item=i1", {}),
        ("predict pairs", "POST", "/v1/predict",
         post("/v1/predict", b'{"pairs":[{"user":"u1","item":"i1"},{"user":"x","item":"i2","features":{"dev":"ios"}}]}')),
        ("predict no pairs", "POST", "/v1/predict", post("/v1/predict", b'{"x":1}')),
        ("predict bad pair", "POST", "/v1/predict", post("/v1/predict", b'{"pairs":[{"user":"u1"}]}')),
        ("predict too many", "POST", "/v1/predict",
         post("/v1/predict", b'{"pairs":[' + b",".join([EVENT] * (MAX_BATCH + 1)) + b"]}")),
        ("recommend", "GET", "/v1/recommend?user=u1&k=3", {}),
        ("predict min_seq", "GET", "/v1/predict?user=u1&item=i1&min_seq=1&wait_ms=1000", {}),
        ("predict pairs min_seq", "POST", "/v1/predict",
         post("/v1/predict", b'{"pairs":[{"user":"u1","item":"i1"}],"min_seq":1,"wait_ms":1000}')),
        ("recommend min_seq", "GET", "/v1/recommend?user=u1&min_seq=1", {}),
        ("predict min_seq never assigned", "GET", "/v1/predict?user=u1&item=i1&min_seq=999999999", {}),
        ("recommend wait_ms=x", "GET", "/v1/recommend?user=u1&min_seq=1&wait_ms=x", {}),
        ("predict pairs wait_ms too long", "POST", "/v1/predict",
         post("/v1/predict", b'{"pairs":[],"min_seq":1,"wait_ms":60001}')),
        ("recommend popular", "GET", "/v1/recommend?user=nobody", {}),
        ("recommend exclude", "GET", "/v1/recommend?user=u1&k=5&exclude_seen=false&exclude=i1,i2", {}),
        ("recommend k=0", "GET", "/v1/recommend?user=u1&k=0", {}),
        ("recommend categories", "GET", "/v1/recommend?user=u1&categories=drama,a&exclude_categories=b", {}),
        ("recommend categories empty entry", "GET", "/v1/recommend?user=u1&categories=a,,b", {}),
        ("recommend k=x", "GET", "/v1/recommend?user=u1&k=x", {}),
        ("recommend exclude_seen=x", "GET", "/v1/recommend?user=u1&exclude_seen=x", {}),
        ("recommend no user", "GET", "/v1/recommend", {}),
        ("recommend user not UTF-8", "GET", "/v1/recommend?user=u%FF", {}),
        ("predict item not UTF-8", "GET", "/v1/predict?user=u1&item=%C3%28", {}),
        ("schedule", "PUT", "/v1/admin/schedule",
         post("/v1/admin/schedule", b'{"optimizer":"adagrad","type":"invpow","eta0":0.1,"t0":1000,'
              b'"power":0.5,"multipliers":{"item":0.5}}')),
        ("schedule invalid", "PUT", "/v1/admin/schedule", post("/v1/admin/schedule", b'{"type":"invpow","eta0":-1}')),
        ("schedule other state", "PUT", "/v1/admin/schedule",
         post("/v1/admin/schedule", b'{"optimizer":"ftrl","type":"constant","eta0":0.1}')),
        ("schedule undo", "POST", "/v1/admin/schedule/undo", post("/v1/admin/schedule/undo", b'')),
        ("schedule undo again", "POST", "/v1/admin/schedule/undo", post("/v1/admin/schedule/undo", b'')),
        ("schedule history", "GET", "/v1/admin/schedule/history", {"headers": a}),
        ("trial", "POST", "/v1/admin/trials",
         post("/v1/admin/trials", b'{"window":{"events":2},"candidates":[{"type":"constant","eta0":0.1}]}')),
        ("trial running", "POST", "/v1/admin/trials",
         post("/v1/admin/trials", b'{"window":{"events":2},"candidates":[{"type":"constant","eta0":0.1}]}')),
        ("trial bad candidate", "POST", "/v1/admin/trials",
         post("/v1/admin/trials", b'{"window":{"events":2},"candidates":[{"type":"constant","eta0":-1}]}')),
        ("trial window too long", "POST", "/v1/admin/trials",
         post("/v1/admin/trials", b'{"window":{"since":1e12},"candidates":[{"type":"constant","eta0":0.1}]}')),
        ("trial get", "GET", "/v1/admin/trials/t1", {"headers": a}),
        ("trial apply", "POST", "/v1/admin/trials/t1/apply", post("/v1/admin/trials/t1/apply", b'')),
        ("trial cancel", "DELETE", "/v1/admin/trials/t1", {"headers": a}),
        ("trial unknown", "GET", "/v1/admin/trials/t999", {"headers": a}),
        ("stats history", "GET", "/v1/stats/history?since=0", {}),
        ("stats history since=x", "GET", "/v1/stats/history?since=x", {}),
        ("similar", "GET", "/v1/similar?item=i1&k=3", {}),
        ("similar k=0", "GET", "/v1/similar?item=i1&k=0", {}),
        ("user", "GET", "/v1/user?user=u1", {}),
        ("user missing", "GET", "/v1/user", {}),
        ("ui file", "GET", "/ui/app.js", {}),
        ("item put", "PUT", "/v1/items/c1",
         post("/v1/items/c1", b'{"features":{"year":1990,"lang":"en"},"categories":["drama"],'
              b'"hidden":false,"expires_at":null}')),
        ("item get", "GET", "/v1/items/c1", {}),
        ("item put invalid", "PUT", "/v1/items/c1", post("/v1/items/c1", b'{"hidden":3}')),
        ("item put other id", "PUT", "/v1/items/c1", post("/v1/items/c1", b'{"id":"c2"}')),
        ("items bulk", "POST", "/v1/items",
         post("/v1/items", b'{"id":"c2","categories":["a"]}\n{"colour":1}\n', (NDJSON,))),
        ("items bulk array", "POST", "/v1/items",
         post("/v1/items", b'[{"id":"c3","hidden":true},{"id":4}]')),
        ("items bulk too many", "POST", "/v1/items",
         post("/v1/items", b"[" + b",".join([b'{"id":"z"}'] * (MAX_BATCH + 1)) + b"]")),
        ("items bulk not records", "POST", "/v1/items", post("/v1/items", b'"x"')),
        ("item delete", "DELETE", "/v1/items/c2", {}),
        ("item delete again", "DELETE", "/v1/items/c2", {}),
        ("user put", "PUT", "/v1/users/cu1", post("/v1/users/cu1", b'{"features":{"gender":"F"}}')),
        ("user get", "GET", "/v1/users/cu1", {}),
        ("users bulk", "POST", "/v1/users", post("/v1/users", b'[{"id":"cu2"},{"id":[]}]')),
        ("user forget", "DELETE", "/v1/users/cu1", {"headers": a}),
        ("user forget again", "DELETE", "/v1/users/cu1", {"headers": a}),
        ("user get forgotten", "GET", "/v1/users/cu1", {}),
        ("ui no such file", "GET", "/ui/nope.js", {}),
    ]


def inline_refs(spec, node, depth=0):
    """A copy of an OpenAPI schema with $refs replaced by their targets and
    nullable turned into a JSON Schema null type."""
    if depth > 50:
        raise Failure("schema nesting over 50 levels (a circular $ref?)")
    if isinstance(node, dict):
        if "$ref" in node:
            return inline_refs(spec, contract.resolve(spec, node), depth + 1)
        out = {k: inline_refs(spec, v, depth + 1) for k, v in node.items()}
        if out.pop("nullable", False) and "type" in out:
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(node, list):
        return [inline_refs(spec, v, depth + 1) for v in node]
    return copy.deepcopy(node)


def check_reply(spec, ops, path, method, status, reply):
    """A problem with one reply, or None."""
    m = method.lower()
    if path not in (spec.get("paths") or {}):
        everywhere = set.intersection(*(set(r) for r in ops.values()))
        if status == 404 or str(status) in everywhere:
            return None
        return (f"answered {status} on a path openapi.yaml does not have; only 404 or a status "
                f"every operation documents ({sorted(everywhere)}) would be")
    known = (path, m) in ops or (m == "head" and (path, "get") in ops)
    if not known:
        if status == 405:
            allow = {x.strip() for x in reply.headers.get("allow", "").split(",") if x.strip()}
            want = contract.spec_methods(ops, path)
            return None if allow == want else f"405 with Allow {sorted(allow)}; openapi.yaml: {sorted(want)}"
        common = set.intersection(*(set(r) for (p, _), r in ops.items() if p == path))
        if str(status) in common:
            return None
        return (f"answered {status} to a method openapi.yaml does not list; only 405 or a status "
                f"every operation of the path documents ({sorted(common)}) would be")
    resp = contract.documented(ops, path, m, status)
    if resp is None:
        return f"status {status} is not documented"
    ctype = reply.headers.get("content-type", "").split(";")[0].strip()
    if m != "head" and status >= 400 and ctype != "application/json":
        return f"error {status} answered with Content-Type {ctype or '(none)'}, not the JSON error body"
    if m == "head" or ctype != "application/json":
        return None
    media = (resp.get("content") or {}).get("application/json")
    if media is None:
        return f"JSON body, but the documented {status} has no application/json content"
    if "schema" not in media:
        return None
    try:
        body = reply.json()
    except ValueError as e:
        return f"Content-Type application/json but the body is not JSON: {e}"
    schema = inline_refs(spec, media["schema"])
    errs = sorted(jsonschema.Draft4Validator(schema).iter_errors(body), key=str)
    if errs:
        e = errs[0]
        at = "/".join(map(str, e.absolute_path)) or "(body)"
        return f"body does not fit the documented schema at {at}: {e.message[:200]}"
    return None


def main():
    if len(sys.argv) != 3:
        raise Failure(__doc__.strip().splitlines()[-1])
    spec_path, http_c = sys.argv[1:]
    spec = contract.load_spec(spec_path)
    ops = contract.operations(spec)
    spec_paths = set(spec.get("paths") or {})
    paths = sorted(spec_paths | {contract.spec_path(p, spec_paths)
                                 for p in contract.route_table(http_c)})
    seen = {}      # (path, method, status) -> first request that got it
    problems = {}  # (method, path, problem) -> [first example, count]
    total = 0
    for name, args, auth in SERVERS:
        srv = contract.Server(args + COMMON, name)
        try:
            reqs = [(label, method, target, kw)
                    for p in paths + UNKNOWN_PATHS
                    for label, method, target, kw in generic(contract.concrete(p), auth)]
            reqs += specific(auth)
            for label, method, target, kw in reqs:
                reply = request(srv.port, method, target, **kw)
                total += 1
                path = target.split("?")[0]
                if path.startswith("/ui/"):  # the route serves every file below it
                    path = "/ui/"
                path = contract.spec_path(path, spec_paths)
                key = (path, "get" if method == "HEAD" else method.lower(), str(reply.status))
                seen.setdefault(key, f"{method} {target[:60]} ({label}, {name})")
                why = check_reply(spec, ops, path, method, reply.status, reply)
                if why:  # grouped by path and problem; the first request shown
                    ex = problems.setdefault((path, why), [
                        f"{path}: {why}; e.g. {method} {target[:60]} ({label}; {name}), "
                        f"body {reply.body[:120]!r}", 0])
                    ex[1] += 1
        finally:
            code = srv.stop()
        if code != 0:
            problems[(name, "", "exit")] = [f"{name}: the server exited {code} after SIGTERM:\n"
                                            f"{srv.tail()}", 1]
    documented_keys = {(p, m, s) for (p, m), rs in ops.items() for s in rs}
    for key in sorted(documented_keys - set(seen) - set(UNEXERCISED)):
        problems[key] = [f"{key[1].upper()} {key[0]} {key[2]}: documented, but no request of "
                         f"this test got it (exercise it, or list it in UNEXERCISED with the "
                         f"reason)", 1]
    for key in sorted(set(UNEXERCISED) - documented_keys):
        problems[key] = [f"UNEXERCISED lists {key}, which openapi.yaml does not document", 1]
    for text, count in problems.values():
        print(text + (f" [{count} requests]" if count > 1 else ""), file=sys.stderr)
    print(f"{total} requests to {len(SERVERS)} servers; {len(seen)} distinct (path, method, "
          f"status); documented and not exercised: "
          + "; ".join(f"{m.upper()} {p} {s}: {why}" for (p, m, s), why in sorted(UNEXERCISED.items())))
    if problems:
        raise Failure(f"{len(problems)} reply(ies) break openapi.yaml")


if __name__ == "__main__":
    contract.run(main)
