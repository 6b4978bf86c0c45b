#!/usr/bin/env python3
"""check_modules.py - the README's module table matches the tree.

Usage: check_modules.py README.md SRC_DIR INCLUDE_DIR

Every module of src/ (a file src/NAME.c, main.c aside) is named in the
first column of the module table under "## How it is built", as `NAME` or
as its family `PREFIX` (src/http_events.c is covered by `http`); every name
in the table is a file of src/ or a header of include/hogrec/; and every
public header include/hogrec/NAME.h belongs to a named module. Exits 1 and
lists what does not match.
"""
import os
import re
import sys


def table_names(readme):
    text = open(readme, encoding="utf-8").read()
    start = text.index("## How it is built")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end > 0 else len(text)]
    names = set()
    lines = section.splitlines()
    head = [i for i, l in enumerate(lines) if re.match(r"\| *module *\|", l)]
    if not head:
        return names
    for line in lines[head[0] + 2:]:
        if not line.startswith("|"):
            break
        names.update(re.findall(r"`([a-z0-9_]+)`", line.split("|")[1]))
    return names


def main():
    readme, src, inc = sys.argv[1:4]
    names = table_names(readme)
    if not names:
        print("no module table found in", readme)
        return 1
    sources = {f[:-2] for f in os.listdir(src) if f.endswith(".c") and f != "main.c"}
    headers = {f[:-2] for f in os.listdir(inc) if f.endswith(".h")}
    problems = []
    for mod in sorted(sources | headers):
        if mod in names or mod.split("_")[0] in names:
            continue
        kind = "src/%s.c" % mod if mod in sources else "include/hogrec/%s.h" % mod
        problems.append("%s is not in the README's module table" % kind)
    for name in sorted(names - sources - headers):
        problems.append("the README's module table names `%s`, which is neither src/%s.c nor "
                        "include/hogrec/%s.h" % (name, name, name))
    for p in problems:
        print(p)
    if problems:
        return 1
    print("module table: %d names, %d sources, %d headers: all match"
          % (len(names), len(sources), len(headers)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
