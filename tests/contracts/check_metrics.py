#!/usr/bin/env python3
"""
check_metrics.py - /metrics of the running server is valid Prometheus text
that promtool accepts without a complaint.

Runs the real binary ($HOGREC_BIN serve, with a database), scrapes /metrics
once before any traffic (the values that are NaN until events arrive) and
once after events, predictions, recommendations and a few errors, once the
trainers have trained every accepted event. Each scrape must:
  - pass `promtool check metrics` (Debian package prometheus) with exit 0
    and nothing printed (promtool's lint: HELP text, counter names, units);
  - declare every family once, with HELP and TYPE before its samples, and
    have no sample outside a declared family and no series twice;
  - give each summary and histogram series its _sum and _count, each
    histogram cumulative buckets ending in le="+Inf" equal to _count;
  - spell every value as Prometheus does (a float, NaN, +Inf or -Inf).
"""
import json
import math
import os
import re
import shutil
import subprocess
import time

import contract
from contract import Failure, request

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')
SUFFIXES = {"summary": ("_sum", "_count", ""), "histogram": ("_bucket", "_sum", "_count")}


def promtool():
    p = os.environ.get("HOGREC_PROMTOOL")
    if p and not p.endswith("NOTFOUND") and os.access(p, os.X_OK):
        return p
    p = shutil.which("promtool")
    if not p:
        raise Failure("promtool not found: install the Debian package prometheus (tools/deps --test)")
    return p


def value_ok(v):
    if v in ("NaN", "+Inf", "-Inf"):
        return True
    try:
        return math.isfinite(float(v)) and v.lower() not in ("nan", "inf", "infinity")
    except ValueError:
        return False


def parse_labels(text):
    labels, pos = {}, 0
    while pos < len(text):
        m = LABEL.match(text, pos)
        if not m:
            raise ValueError(f"bad labels {{{text}}}")
        labels[m.group(1)] = m.group(2)
        pos = m.end()
    return labels


def lint(text):
    """Problems with a scrape that promtool does not report."""
    problems = []
    help_, type_, sampled = {}, {}, set()
    series = set()
    sums = {}      # (family, labels without le/quantile) -> set of suffixes seen
    buckets = {}   # (family, labels without le) -> [(le, value)]
    counts = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                fam = parts[2]
                table = help_ if parts[1] == "HELP" else type_
                if fam in table:
                    problems.append(f"line {n}: second {parts[1]} for {fam}")
                if fam in sampled:
                    problems.append(f"line {n}: {parts[1]} for {fam} after its samples")
                if parts[1] == "HELP" and (len(parts) < 4 or not parts[3].strip()):
                    problems.append(f"line {n}: empty HELP for {fam}")
                table[fam] = parts[3] if len(parts) > 3 else ""
            continue
        m = SAMPLE.match(line)
        if not m:
            problems.append(f"line {n}: not a sample: {line[:100]}")
            continue
        name, _, ltext, value = m.groups()
        try:
            labels = parse_labels(ltext or "")
        except ValueError as e:
            problems.append(f"line {n}: {e}")
            continue
        if not value_ok(value):
            problems.append(f"line {n}: value {value!r} is not a Prometheus float")
        fam, suffix = name, ""
        if name not in type_:
            for f, t in type_.items():
                for s in SUFFIXES.get(t, ()):
                    if s and name == f + s:
                        fam, suffix = f, s
        if fam not in type_ or fam not in help_:
            problems.append(f"line {n}: {name} has no TYPE and HELP of its family before it")
            continue
        sampled.add(fam)
        key = (name, tuple(sorted(labels.items())))
        if key in series:
            problems.append(f"line {n}: series {name}{{{ltext or ''}}} twice")
        series.add(key)
        t = type_[fam]
        if t == "counter" and not fam.endswith("_total"):
            problems.append(f"{fam}: a counter's name ends in _total")
        if t in SUFFIXES:
            base = tuple(sorted((k, v) for k, v in labels.items() if k not in ("le", "quantile")))
            sums.setdefault((fam, base), set()).add(suffix)
            if suffix == "_bucket":
                buckets.setdefault((fam, base), []).append((labels.get("le"), float(value)))
            if suffix == "_count":
                counts[(fam, base)] = float(value)
    for fam in sorted(set(type_) | set(help_)):
        if fam not in type_ or fam not in help_:
            problems.append(f"{fam}: {'TYPE' if fam not in type_ else 'HELP'} missing")
    for (fam, base), seen in sorted(sums.items()):
        for s in SUFFIXES[type_[fam]]:
            if s and s not in seen:
                problems.append(f"{fam}{dict(base)}: no {fam}{s} sample")
    for (fam, base), bs in sorted(buckets.items()):
        vals = [v for _, v in bs]
        if bs[-1][0] != "+Inf":
            problems.append(f"{fam}{dict(base)}: the last bucket is not le=\"+Inf\"")
        if any(b < a for a, b in zip(vals, vals[1:])):
            problems.append(f"{fam}{dict(base)}: buckets are not cumulative")
        if (fam, base) in counts and vals and vals[-1] != counts[(fam, base)]:
            problems.append(f"{fam}{dict(base)}: +Inf bucket {vals[-1]} != _count")
    return problems, len(type_), len(series)


def check_scrape(srv, what):
    r = request(srv.port, "GET", "/metrics")
    if r.status != 200:
        raise Failure(f"{what}: GET /metrics answered {r.status}")
    ctype = r.headers.get("content-type", "")
    if not ctype.startswith("text/plain"):
        raise Failure(f"{what}: Content-Type {ctype!r}, not text/plain")
    text = r.body.decode("utf-8")
    p = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=300)
    problems = [f"promtool: {l}" for l in (p.stdout + p.stderr).splitlines() if l.strip()]
    if p.returncode != 0 and not problems:
        problems.append(f"promtool exited {p.returncode}")
    more, nfam, nseries = lint(text)
    problems += more
    for pr in problems:
        print(f"{what}: {pr}")
    if problems:
        raise Failure(f"{what}: {len(problems)} problem(s) with /metrics")
    print(f"{what}: promtool check metrics passed; {nfam} families, {nseries} series")
    return text


def post_json(srv, path, obj, ctype="application/json"):
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return request(srv.port, "POST", path, headers=[("Content-Type", ctype)], body=body)


def main():
    srv = contract.Server(["--db", "hogrec.db", "--admin-token", "t", "--checkpoint-interval",
                           "0", "--checkpoint-events", "0", "--progress-window", "100"], "server")
    try:
        check_scrape(srv, "before any event")
        events = [{"user": f"u{i % 7}", "item": f"i{i % 11}", "label": (i * 5 // 3) % 2,
                   "id": f"e{i}"} for i in range(300)]
        r = post_json(srv, "/v1/events", events[:150])
        nd = "\n".join(json.dumps(e) for e in events[150:]).encode()
        r2 = post_json(srv, "/v1/events", nd, "application/x-ndjson")
        r3 = post_json(srv, "/v1/events", events[:10])  # duplicates
        r4 = post_json(srv, "/v1/events", [{"user": "u1"}])  # rejected
        if [x.status for x in (r, r2, r3, r4)] != [202] * 4:
            raise Failure(f"events answered {[x.status for x in (r, r2, r3, r4)]}, not 202")
        accepted = sum(x.json()["accepted"] for x in (r, r2, r3, r4))
        request(srv.port, "GET", "/v1/predict?user=u1&item=i1")
        post_json(srv, "/v1/predict", {"pairs": [{"user": "u1", "item": "i2"}]})
        request(srv.port, "GET", "/v1/recommend?user=u2&k=3")
        request(srv.port, "GET", "/nope")
        request(srv.port, "DELETE", "/v1/stats")
        # Wait (bounded) until the trainers took every accepted event, so
        # the freshness summary and the progressive values have data.
        deadline = time.monotonic() + 120
        while True:
            st = request(srv.port, "GET", "/v1/stats").json()
            if st["events"]["trained"] >= accepted:
                break
            if time.monotonic() > deadline:
                raise Failure(f"trained {st['events']['trained']} of {accepted} events in 120 s")
            time.sleep(0.05)
        text = check_scrape(srv, "after traffic")
        for fam in ("hogrec_events_accepted_total", "hogrec_freshness_seconds_sum"):
            if not re.search(rf"^{fam} [0-9.e+-]+$", text, re.M):
                raise Failure(f"after traffic: no {fam} sample")
    finally:
        code = srv.stop()
    if code != 0:
        raise Failure(f"the server exited {code} after SIGTERM:\n{srv.tail()}")


if __name__ == "__main__":
    contract.run(main)
