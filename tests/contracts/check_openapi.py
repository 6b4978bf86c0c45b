#!/usr/bin/env python3
"""
check_openapi.py - openapi.yaml is a valid OpenAPI 3.0 document and lists
exactly the server's routes.

1. The YAML parses, with no duplicate keys.
2. It validates against the OpenAPI Initiative's JSON Schema for OpenAPI 3.0
   (openapi-3.0-schema.json beside this file, id
   https://spec.openapis.org/oas/3.0/schema/2021-09-28), with jsonschema's
   Draft 4 validator, as that schema declares.
3. What the JSON Schema cannot say: every $ref resolves; operationIds are
   unique; each path template's parameters are declared; status keys are
   HTTP codes.
4. The route table of src/http.c (routes[]) and the spec's paths are the
   same set, with the same methods (HEAD goes with GET).

Usage: check_openapi.py OPENAPI_YAML SCHEMA_JSON HTTP_C
"""
import json
import re
import sys

import jsonschema

import contract
from contract import Failure


def leaf_errors(err):
    """The most specific errors under a oneOf/anyOf failure."""
    if not err.context:
        return [err]
    deepest = max(len(e.absolute_path) for e in err.context)
    out = []
    for e in err.context:
        if len(e.absolute_path) == deepest:
            out += leaf_errors(e)
    return out


def where(err):
    return "/".join(str(p) for p in err.absolute_path) or "(document)"


def check_schema(spec, schema_path):
    with open(schema_path, encoding="utf-8") as f:
        schema = json.load(f)
    validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())
    problems = []
    for err in sorted(validator.iter_errors(spec), key=lambda e: list(map(str, e.absolute_path))):
        for leaf in leaf_errors(err):
            problems.append(f"{where(leaf)}: {leaf.message[:300]}")
    return sorted(set(problems))


def walk_refs(node, path=""):
    if isinstance(node, dict):
        if "$ref" in node:
            yield path, node
        for k, v in node.items():
            yield from walk_refs(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk_refs(v, f"{path}/{i}")


def check_semantics(spec):
    problems = []
    for at, node in walk_refs(spec):
        try:
            contract.resolve(spec, node)
        except Failure as e:
            problems.append(f"{at}: {e}")
    op_ids = {}
    for path, item in (spec.get("paths") or {}).items():
        templ = set(re.findall(r"\{([^}]+)\}", path))
        for method in contract.METHODS:
            op = item.get(method)
            if op is None:
                continue
            oid = op.get("operationId")
            if oid is not None:
                if oid in op_ids:
                    problems.append(f"{method} {path}: operationId {oid} also on {op_ids[oid]}")
                op_ids[oid] = f"{method} {path}"
            params = [contract.resolve(spec, p) for p in
                      (item.get("parameters") or []) + (op.get("parameters") or [])]
            declared = {p.get("name") for p in params if p.get("in") == "path"}
            for name in templ - declared:
                problems.append(f"{method} {path}: path parameter {name} is not declared")
            for code in (op.get("responses") or {}):
                if not re.fullmatch(r"[1-5](\d\d|XX)|default", str(code)):
                    problems.append(f"{method} {path}: response key {code!r} is not a status")
    return problems


def check_routes(spec, http_c):
    ops = contract.operations(spec)
    problems = []
    paths = set(spec.get("paths") or {})
    routes = {contract.spec_path(p, paths): m for p, m in contract.route_table(http_c).items()}
    for p in sorted(set(routes) - paths):
        problems.append(f"route {p} (src/http.c) is not a path of openapi.yaml")
    for p in sorted(paths - set(routes)):
        problems.append(f"path {p} of openapi.yaml is not a route of the server")
    for p in sorted(set(routes) & paths):
        if routes[p] != contract.spec_methods(ops, p):
            problems.append(f"{p}: the server accepts {sorted(routes[p])}, openapi.yaml lists "
                            f"{sorted(contract.spec_methods(ops, p))} (HEAD goes with GET)")
    return problems, len(routes)


def main():
    if len(sys.argv) != 4:
        raise Failure(__doc__.strip().splitlines()[-1])
    spec_path, schema_path, http_c = sys.argv[1:]
    spec = contract.load_spec(spec_path)
    problems = [f"schema: {p}" for p in check_schema(spec, schema_path)]
    problems += [f"semantics: {p}" for p in check_semantics(spec)]
    route_problems, nroutes = check_routes(spec, http_c)
    problems += [f"routes: {p}" for p in route_problems]
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        raise Failure(f"{spec_path}: {len(problems)} problem(s)")
    print(f"{spec_path}: valid OpenAPI {spec.get('openapi')}; {len(spec['paths'])} paths, "
          f"the {nroutes} routes of src/http.c")


if __name__ == "__main__":
    contract.run(main)
