#!/usr/bin/env python3
"""List import loops between the crate's source files.

Reads every file reachable from src/lib.rs and src/main.rs through `mod`
declarations, leaving out code under `#[cfg(test)]` (test modules and
test-only items import freely). An arrow A -> B means file A names a path
that resolves into file B: a `use crate::`, `use super::`, `use self::` or
child-module `use`, or the same kind of path written inline in code. A loop
is a set of files that reach each other through such arrows (a strongly
connected component of two files or more); each is printed with the arrows
inside it and the names they use.

Arrows from a file to the module files that contain it (a child using its
parent's error type, say, or a type the grandparent re-exports) are left
out by default: a module file re-exports its children, so every such use
would read as a loop, and those are the module's own face rather than a
tangle. `--with-parents` counts them too.

It also lists imports that run up the layers the house is built in
(LAYERS below, bottom first: a module imports only from layers below its
own), so the engine's purity and the shells' order are checked too.

Usage: scripts/import-loops.py [--with-parents] [ROOT]
Exits 1 when it finds a loop or an upward import, so a check can use it.
Standard library only.
"""

import os
import re
import sys
from collections import defaultdict

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# The library's top-level modules, bottom first; a module imports only from
# layers below its own. The binary's `cli` sits above them all.
LAYERS = [
    ["engine", "clock", "sandbox"],
    ["api"],
    ["validate"],
    ["policy"],
    ["store"],
    ["sink", "fleet"],
    ["telemetry"],
    ["agent", "operator", "sim"],
    ["bench", "demo"],
]


def layer_of(path):
    """The layer of a file of the library, by its top-level module."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "src":
        return None
    top = parts[1][:-3] if parts[1].endswith(".rs") else parts[1]
    for n, layer in enumerate(LAYERS):
        if top in layer:
            return n, top
    return None


def tokens(text):
    """Identifiers, `::` and single punctuation; comments and literals dropped."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c in "rb" and re.match(r"(br|r)#*\"", text[i:i + 40]):
            m = re.match(r"(br|r)(#*)\"", text[i:])
            end = '"' + m.group(2)
            j = text.find(end, i + len(m.group(0)))
            i = n if j < 0 else j + len(end)
        elif c == '"' or (c == "b" and text.startswith('b"', i)):
            i += 2 if c == "b" else 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
        elif c == "'":
            if i + 1 < n and text[i + 1] == "\\":
                j = text.find("'", i + 2)
                i = n if j < 0 else j + 1
            elif i + 2 < n and text[i + 2] == "'":
                i += 3
            else:
                m = IDENT.match(text, i + 1)
                i = m.end() if m else i + 1
        elif c == "b" and text.startswith("b'", i):
            j = text.find("'", i + 3 if text[i + 2] == "\\" else i + 2)
            i = n if j < 0 else j + 1
        elif IDENT.match(text, i):
            m = IDENT.match(text, i)
            out.append(m.group(0))
            i = m.end()
        elif text.startswith("::", i):
            out.append("::")
            i += 2
        else:
            out.append(c)
            i += 1
    return out


def is_test_cfg(attr):
    """`#[cfg(test)]` and `#[cfg(all(test, ..))]`: code only tests compile."""
    if not attr or attr[0] != "cfg":
        return False
    text = " ".join(attr)
    return text in ("cfg ( test )",) or text.startswith("cfg ( all ( test ,")


class Crate:
    def __init__(self, root):
        self.root = root
        self.modules = {}  # module path (tuple) -> file
        self.refs = []  # (file, scope, path segments, is_use)

    def load(self, path, module, crate_prefix):
        self.modules[module] = path
        toks = tokens(open(os.path.join(self.root, path), encoding="utf-8").read())
        base = os.path.splitext(path)[0]
        children_dir = (
            os.path.dirname(path)
            if os.path.basename(path) in ("mod.rs", "lib.rs", "main.rs")
            else base
        )
        self.walk(toks, path, module, children_dir, crate_prefix)

    def walk(self, toks, path, module, children_dir, crate_prefix):
        # scopes: (module path, dir for `mod x;`, brace depth it closes at)
        scopes = [(module, children_dir, -1)]
        depth, i, n = 0, 0, len(toks)
        while i < n:
            t = toks[i]
            scope, sdir, _ = scopes[-1]
            if t == "#" and i + 1 < n and toks[i + 1] in ("[", "!"):
                j = i + (2 if toks[i + 1] == "[" else 3)
                k, d = j, 1
                while k < n and d:
                    d += {"[": 1, "]": -1}.get(toks[k], 0)
                    k += 1
                attr = toks[j:k - 1]
                if toks[i + 1] == "[" and is_test_cfg(attr):
                    i = skip_item(toks, k)
                    continue
                i = k
                continue
            if t == "{":
                depth += 1
            elif t == "}":
                depth -= 1
                if len(scopes) > 1 and scopes[-1][2] == depth:
                    scopes.pop()
            elif t == "mod" and i + 2 < n and IDENT.fullmatch(toks[i + 1]):
                name = toks[i + 1]
                if toks[i + 2] == ";":
                    self.declare(sdir, name, scope + (name,), crate_prefix)
                    i += 3
                    continue
                if toks[i + 2] == "{":
                    scopes.append((scope + (name,), os.path.join(sdir, name), depth))
                    self.modules[scope + (name,)] = path
                    depth += 1
                    i += 3
                    continue
            elif t == "use":
                j = i + 1
                while j < n and toks[j] != ";":
                    j += 1
                for segs in expand_use(toks[i + 1:j]):
                    self.refs.append((path, scope, segs, True))
                i = j + 1
                continue
            elif t in ("crate", "super", crate_prefix) or (
                IDENT.fullmatch(t) and i + 1 < n and toks[i + 1] == "::"
                and (i == 0 or toks[i - 1] != "::")
            ):
                segs = [t]
                j = i + 1
                while j + 1 < n and toks[j] == "::" and IDENT.fullmatch(toks[j + 1]):
                    segs.append(toks[j + 1])
                    j += 2
                if len(segs) > 1:
                    self.refs.append((path, scope, segs, False))
                    i = j
                    continue
            i += 1

    def declare(self, sdir, name, module, crate_prefix):
        for candidate in (os.path.join(sdir, name + ".rs"), os.path.join(sdir, name, "mod.rs")):
            if os.path.exists(os.path.join(self.root, candidate)):
                self.load(candidate, module, crate_prefix)
                return
        raise SystemExit(f"module {'::'.join(module)} has no file under {sdir}")


def skip_item(toks, k):
    """Index after the item that starts at k (its `;` or its closing `}`)."""
    n = len(toks)
    while k < n and toks[k] == "#":
        d, k = 0, k + 1
        while k < n:
            d += {"[": 1, "]": -1}.get(toks[k], 0)
            k += 1
            if d == 0:
                break
    depth = 0
    while k < n:
        if toks[k] == "{":
            depth += 1
        elif toks[k] == "}":
            depth -= 1
            if depth == 0:
                return k + 1
        elif toks[k] == ";" and depth == 0:
            return k + 1
        k += 1
    return k


def expand_use(toks):
    """`a::{b, c::{d, e}}` -> [[a, b], [a, c, d], [a, c, e]]."""
    toks = [t for t in toks if t not in ("pub", "(", ")") or False]
    out = []

    def parse(i, prefix):
        segs = list(prefix)
        while i < len(toks):
            t = toks[i]
            if t == "{":
                i += 1
                while i < len(toks) and toks[i] != "}":
                    i = parse(i, segs)
                    if i < len(toks) and toks[i] == ",":
                        i += 1
                out.append(None)
                return i + 1
            if t in (",", "}"):
                break
            if t == "as":
                i += 2
                continue
            if t == "::":
                i += 1
                continue
            segs.append("self" if t == "self" and segs else t)
            i += 1
        out.append(segs)
        return i

    parse(0, [])
    return [s for s in out if s and s[-1:] != ["self"] or (s and len(s) > 1)]


def resolve(crate, lib, scope, segs, is_use):
    """The module a path names, or None when it leaves the crate."""
    segs = [s for s in segs if s != "*"]
    if segs and segs[-1] == "self":
        segs = segs[:-1]
    if not segs:
        return None
    head = segs[0]
    if head == "crate":
        mods, at, rest = crate.modules, (), segs[1:]
    elif head == "herald" and lib is not None and crate is not lib:
        mods, at, rest = lib.modules, (), segs[1:]
    elif head in ("super", "self"):
        mods, at, rest = crate.modules, scope, segs
        while rest and rest[0] in ("super", "self"):
            at = at[:-1] if rest[0] == "super" else at
            rest = rest[1:]
    elif scope + (head,) in crate.modules:
        mods, at, rest = crate.modules, scope, segs
    else:
        return None
    for s in rest:
        if at + (s,) in mods:
            at = at + (s,)
        else:
            break
    return mods.get(at)


def tarjan(graph):
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def main(argv):
    ignore_parents = "--with-parents" not in argv
    args = [a for a in argv if not a.startswith("--")]
    root = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    lib = Crate(root)
    lib.load("src/lib.rs", (), "herald")
    crates = [lib]
    if os.path.exists(os.path.join(root, "src/main.rs")):
        binary = Crate(root)
        binary.load("src/main.rs", (), "herald")
        crates.append(binary)

    # The module files above each file: its parent, grandparent and so on.
    ancestors = defaultdict(set)
    for crate in crates:
        for module, f in crate.modules.items():
            for depth in range(len(module)):
                above = crate.modules.get(module[:depth])
                if above is not None and above != f:
                    ancestors[f].add(above)

    arrows = defaultdict(set)
    names = defaultdict(set)
    for crate in crates:
        for f, scope, segs, is_use in crate.refs:
            target = resolve(crate, lib, scope, segs, is_use)
            if target is None or target == f:
                continue
            if ignore_parents and target in ancestors[f]:
                continue
            arrows[f].add(target)
            names[(f, target)].add(segs[-1] if segs[-1] != "*" else "*")

    upward = []
    for a in sorted(arrows):
        for b in sorted(arrows[a]):
            la, lb = layer_of(a), layer_of(b)
            if la and lb and la[1] != lb[1] and la[0] <= lb[0]:
                upward.append((a, b))

    loops = tarjan(arrows)
    files = {f for c in crates for f in c.modules.values()}
    print(f"{len(files)} files, {sum(len(v) for v in arrows.values())} arrows, {len(loops)} import loop(s)")
    for n, comp in enumerate(loops, 1):
        print(f"\nloop {n}: {len(comp)} files")
        members = set(comp)
        for a in comp:
            for b in sorted(arrows[a] & members):
                print(f"  {a} -> {b}  ({', '.join(sorted(names[(a, b)]))})")
    print(f"\n{len(upward)} import(s) up the layers")
    for a, b in upward:
        print(f"  {a} -> {b}  ({', '.join(sorted(names[(a, b)]))})")
    return 1 if loops or upward else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
