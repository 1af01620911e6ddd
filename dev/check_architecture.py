#!/usr/bin/env python3
"""The architecture rules docs/design.md states, checked on the source:

- no import cycle between the modules of the node and controller crates
  (a module's `use crate::…`/`super::…` paths and, in a mod.rs, the child
  modules it names);
- no protobuf or tonic type below the controller's and agent's handlers
  (controller ops/ and placement, node pools/, formats/, attach/, ops/);
- the file pool names no image format;
- the node crate uses the controller's library in its main.rs only (the
  Controller service of `--controller-service`), never below it;
- proto/ holds only the protos and their generated glue.

Prints each violation and exits 1 when there is one."""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def source(path):
    text = open(path).read()
    text = re.sub(r"//[^\n]*", "", text)  # comments, docs
    return re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]


def modules(src_dir):
    mods = {}
    for dp, _, fs in os.walk(src_dir):
        if "/bin" in dp[len(src_dir):]:
            continue
        for f in fs:
            if f.endswith(".rs"):
                p = os.path.join(dp, f)
                parts = os.path.relpath(p, src_dir)[:-3].split("/")
                if parts[-1] in ("mod", "lib", "main"):
                    parts = parts[:-1]
                mods["::".join(parts)] = p
    return mods


def use_paths(stmt):
    """Expands `a::{b, c::{d}}` into a::b, a::c::d."""
    stmt = re.sub(r"\s+", "", stmt)
    m = re.match(r"^([^{]*)\{(.*)\}$", stmt)
    if not m:
        return [stmt]
    head, body, out, depth, cur = m.group(1), m.group(2), [], 0, ""
    for ch in body + ",":
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            if cur:
                out += use_paths(head + cur)
            cur = ""
        else:
            cur += ch
    return out


def graph(src_dir):
    mods = modules(src_dir)

    def resolve(parts):
        for i in range(len(parts), 0, -1):
            m = "::".join(parts[:i])
            if m in mods:
                return m
        return None

    edges = {m: set() for m in mods}
    for m, p in mods.items():
        me = m.split("::") if m else []
        src = source(p)
        paths = [q for s in re.findall(r"\buse\s+([^;]+);", src) for q in use_paths(s)]
        paths += re.findall(r"\bcrate::(?:[a-z_0-9]+::)*[A-Za-z_0-9]+", src)
        paths += re.findall(r"(?<![:\w])super::(?:super::)*(?:[a-z_0-9]+::)*[A-Za-z_0-9]+", src)
        for q in paths:
            q = q.split(" as ")[0]
            if q.startswith("crate::"):
                target = resolve(q[7:].split("::"))
            elif q.startswith("super::"):
                base, rest = list(me), q
                while rest.startswith("super::"):
                    base, rest = base[:-1], rest[7:]
                target = resolve(base + rest.split("::"))
            else:
                continue
            if target and target != m:
                edges[m].add(target)
        if os.path.basename(p) == "mod.rs":
            for c in mods:
                cp = c.split("::")
                if len(cp) == len(me) + 1 and cp[:-1] == me:
                    if re.search(r"(?<![:\w])" + cp[-1] + r"::", src):
                        edges[m].add(c)
    # The crate root holds the context types every layer uses; it is not a layer.
    edges.pop("", None)
    for e in edges.values():
        e.discard("")
    return edges


def cycles(edges):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def grep(paths, pattern):
    hits = []
    for base in paths:
        full = os.path.join(ROOT, base)
        files = [full] if full.endswith(".rs") else [
            os.path.join(dp, f) for dp, _, fs in os.walk(full) for f in fs if f.endswith(".rs")
        ]
        for f in files:
            for i, line in enumerate(source(f).splitlines(), 1):
                if re.search(pattern, line):
                    hits.append(f"{os.path.relpath(f, ROOT)}:{i}: {line.strip()}")
    return hits


def main():
    problems = []
    for crate in ("node", "controller"):
        for c in cycles(graph(os.path.join(ROOT, crate, "src"))):
            problems.append(f"{crate}: import cycle between {', '.join(c)}")
    below = [
        "controller/src/ops", "controller/src/placement.rs", "controller/src/leader",
        "node/src/pools", "node/src/formats", "node/src/attach", "node/src/ops",
    ]
    for hit in grep(below, r"\bpool_csi_proto\b|\btonic::(Status|Code|Request|Response)\b"):
        problems.append(f"wire type below the handlers: {hit}")
    for hit in grep(["node/src/pools/file"], r"VolumeFormat::"):
        problems.append(f"the file pool names a format: {hit}")
    node_src = [os.path.join("node/src", e) for e in os.listdir(os.path.join(ROOT, "node/src")) if e != "main.rs"]
    for hit in grep(node_src, r"\bpool_csi_controller\b"):
        problems.append(f"the node's library uses the controller's: {hit}")
    extra = sorted(set(os.listdir(os.path.join(ROOT, "proto/src"))) - {"lib.rs", "csi.rs", "agent.rs"})
    if extra:
        problems.append(f"proto/src holds more than the generated glue: {', '.join(extra)}")
    for p in problems:
        print(p)
    print(f"architecture: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
