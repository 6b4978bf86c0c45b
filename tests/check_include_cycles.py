#!/usr/bin/env python3
"""check_include_cycles.py - fails if the modules depend on each other in a cycle.

A module is a header include/hogrec/NAME.h and a file src/NAME.c. Module A
depends on module B when A's header or A's source has #include "hogrec/B.h".
A cycle (sgd.h including model.h while model.c includes sgd.h) means neither
module can be understood, tested or built without the other. Every
elementary cycle is printed with the include lines that make it, then the
script exits 1; with none it prints the module count and exits 0.

Usage: check_include_cycles.py SOURCE_DIR
"""
import os
import re
import sys

INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"hogrec/([A-Za-z0-9_]+)\.h"', re.M)


def module_graph(root):
    """{module: {dependency: 'file:line' of the first include that makes it}}"""
    files = []
    for sub, ext in (("include/hogrec", ".h"), ("src", ".c")):
        d = os.path.join(root, sub)
        if not os.path.isdir(d):
            sys.exit("check_include_cycles: no directory %s" % d)
        files += [os.path.join(sub, f) for f in sorted(os.listdir(d)) if f.endswith(ext)]
    graph = {}
    for rel in files:
        mod = os.path.splitext(os.path.basename(rel))[0]
        edges = graph.setdefault(mod, {})
        with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as f:
            text = f.read()
        for m in INCLUDE.finditer(text):
            dep = m.group(1)
            if dep != mod and dep not in edges:
                edges[dep] = "%s:%d" % (rel, text.count("\n", 0, m.start()) + 1)
    return graph


def cycles(graph):
    """Every elementary cycle once, starting at its smallest module name."""
    found = []
    nodes = sorted(set(graph) | {d for e in graph.values() for d in e})

    def walk(start, path, on_path):
        for nxt in sorted(graph.get(path[-1], {})):
            if nxt == start:
                found.append(list(path))
            elif nxt > start and nxt not in on_path:
                on_path.add(nxt)
                path.append(nxt)
                walk(start, path, on_path)
                path.pop()
                on_path.discard(nxt)

    for start in nodes:
        walk(start, [start], {start})
    return found


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    graph = module_graph(sys.argv[1])
    found = cycles(graph)
    for cyc in found:
        ring = cyc + [cyc[0]]
        print("include cycle: " + " -> ".join(ring))
        for a, b in zip(ring, ring[1:]):
            print("    %s depends on %s: %s" % (a, b, graph[a][b]))
    if found:
        print("%d include cycle(s) among %d modules" % (len(found), len(graph)))
        return 1
    print("no include cycle among %d modules" % len(graph))
    return 0


if __name__ == "__main__":
    sys.exit(main())
