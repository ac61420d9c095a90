#!/usr/bin/env python3
"""pkg-config.py - the little of pkg-config that CMake's FindPkgConfig asks for, for the GPU
machine when neither its own pkg-config nor the carried pkgconf runs (pkgconf from Debian 12
needs glibc 2.34). Reads .pc files from PKG_CONFIG_PATH, puts PKG_CONFIG_SYSROOT_DIR before
-I and -L paths, ignores Requires (the packages run.sh carries have none)."""
import os
import re
import shlex
import sys

VERSION = "1.8.1"


def find_pc(name):
    for d in os.environ.get("PKG_CONFIG_PATH", "").split(":"):
        p = os.path.join(d, name + ".pc")
        if d and os.path.isfile(p):
            return p
    return None


def parse(path):
    vars_, fields = {"pcfiledir": os.path.dirname(path)}, {}

    def expand(v):
        for _ in range(20):
            n = re.sub(r"\$\{(\w+)\}", lambda m: vars_.get(m.group(1), ""), v)
            if n == v:
                break
            v = n
        return v

    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^([\w.]+)\s*=\s*(.*)$", line)
        if m:
            vars_[m.group(1)] = expand(m.group(2))
            continue
        m = re.match(r"^([\w.]+)\s*:\s*(.*)$", line)
        if m:
            fields[m.group(1).lower()] = expand(m.group(2))
    return vars_, fields


def sysroot(flags):
    root = os.environ.get("PKG_CONFIG_SYSROOT_DIR", "")
    out = []
    for f in flags:
        if root and (f.startswith("-I/") or f.startswith("-L/")):
            f = f[:2] + root + f[2:]
        out.append(f)
    return out


def main(argv):
    opts = [a for a in argv if a.startswith("--")]
    mods = [a for a in argv if not a.startswith("--")]
    if "--version" in opts:
        print(VERSION)
        return 0
    # module specs may carry versions ("libcjson >= 1.7"): keep the names
    names, skip = [], False
    for m in mods:
        for tok in m.split():
            if skip:
                skip = False
                continue
            if tok in (">=", "<=", "=", ">", "<", "!="):
                skip = True
                continue
            names.append(tok)
    pcs = []
    for n in names:
        p = find_pc(n)
        if not p:
            if "--print-errors" in opts or "--exists" not in opts:
                sys.stderr.write(f"Package {n} was not found in the pkg-config search path.\n")
            return 1
        pcs.append(parse(p))
    if "--exists" in opts:
        return 0
    out = []
    for o in opts:
        if o.startswith("--variable="):
            var = o.split("=", 1)[1]
            root = os.environ.get("PKG_CONFIG_SYSROOT_DIR", "")
            for pc in pcs:
                v = pc[0].get(var, "")
                out.append(root + v if root and v.startswith("/") and var != "pcfiledir" else v)
    for vars_, f in pcs:
        libs = shlex.split(f.get("libs", ""))
        if "--static" in opts:
            libs += shlex.split(f.get("libs.private", ""))
        cflags = shlex.split(f.get("cflags", ""))
        if "--modversion" in opts:
            out.append(f.get("version", ""))
        if "--cflags-only-I" in opts:
            out += sysroot([c for c in cflags if c.startswith("-I")])
        if "--cflags-only-other" in opts:
            out += [c for c in cflags if not c.startswith("-I")]
        if "--cflags" in opts:
            out += sysroot(cflags)
        if "--libs-only-L" in opts:
            out += sysroot([x for x in libs if x.startswith("-L")])
        if "--libs-only-l" in opts:
            out += [x for x in libs if x.startswith("-l")]
        if "--libs-only-other" in opts:
            out += [x for x in libs if not x.startswith(("-L", "-l"))]
        if "--libs" in opts:
            out += sysroot(libs)
    print(" ".join(x for x in out if x))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
