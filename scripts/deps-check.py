#!/usr/bin/env python3
"""Dependency gate, run by CI (scripts/ci-lint.sh): works offline for licences and sources, and
asks the crates.io index (the registry CI reaches) whether any locked version was yanked.

* licences: every package's SPDX expression must be satisfiable from ALLOWED;
* sources: every dependency comes from crates.io (no git or path crates outside the workspace);
* yanked: no locked version is yanked on crates.io (authors yank broken or unsound releases);
* duplicates: crates locked in more than one version are listed (information only).

The RustSec advisory database lives on GitHub, which CI machines cannot reach; `cargo deny check
advisories` can be run by hand where it can (docs/conventions.md).
"""
import json
import re
import subprocess
import sys
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

ALLOWED = {
    "MIT", "Apache-2.0", "Apache-2.0 WITH LLVM-exception", "BSD-2-Clause", "BSD-3-Clause", "ISC",
    "Unicode-3.0", "Unicode-DFS-2016", "Zlib", "MPL-2.0", "0BSD", "CC0-1.0", "LGPL-2.1-or-later",
    "LGPL-2.1", "Unlicense", "BSL-1.0",
}
INDEX = "https://index.crates.io"
# Crates that ship a licence file instead of an SPDX field, read and classified by hand.
LICENSE_FILES = {
    ("rust-criu", "0.6.1"): "MIT",  # LICENSE is the MIT text (libcontainer's CRIU binding)
}


def satisfiable(expr: str) -> bool:
    """An SPDX expression is acceptable when some OR-branch has every AND-term allowed."""
    expr = expr.replace("/", " OR ")  # old-style "MIT/Apache-2.0"
    for branch in re.split(r"\s+OR\s+", expr.strip("() ")):
        terms = [t.strip("() ") for t in re.split(r"\s+AND\s+", branch)]
        if all(t in ALLOWED for t in terms):
            return True
    return False


def index_path(name: str) -> str:
    n = name.lower()
    if len(n) <= 2:
        return f"{len(n)}/{n}"
    if len(n) == 3:
        return f"3/{n[0]}/{n}"
    return f"{n[:2]}/{n[2:4]}/{n}"


def yanked(pkg):
    name, version = pkg
    try:
        with urllib.request.urlopen(f"{INDEX}/{index_path(name)}", timeout=30) as r:
            for line in r.read().decode().splitlines():
                v = json.loads(line)
                if v.get("vers") == version:
                    return (name, version, bool(v.get("yanked")), None)
        return (name, version, False, "version not in the index")
    except Exception as e:  # network trouble is reported, not hidden
        return (name, version, False, str(e))


def main() -> int:
    meta = json.loads(subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--all-features"]))
    members = set(meta["workspace_members"])
    failures = []
    external = []
    versions = defaultdict(set)
    for p in meta["packages"]:
        if p["id"] in members:
            continue
        src = p.get("source") or ""
        if not src.startswith("registry+https://github.com/rust-lang/crates.io-index") and \
                not src.startswith("sparse+https://index.crates.io"):
            failures.append(f"source: {p['name']} {p['version']} comes from {src or 'a path'}")
            continue
        lic = p.get("license") or LICENSE_FILES.get((p["name"], p["version"]))
        if not lic:
            failures.append(f"licence: {p['name']} {p['version']} declares none")
        elif not satisfiable(lic):
            failures.append(f"licence: {p['name']} {p['version']} is {lic}")
        external.append((p["name"], p["version"]))
        versions[p["name"]].add(p["version"])
    with ThreadPoolExecutor(max_workers=16) as ex:
        results = list(ex.map(yanked, external))
    unreachable = [r for r in results if r[3]]
    for name, version, is_yanked, _ in results:
        if is_yanked:
            failures.append(f"yanked: {name} {version} is yanked on crates.io")
    if len(unreachable) == len(results) and results:
        failures.append(f"yanked: the crates.io index could not be read ({unreachable[0][3]})")
    dups = {n: sorted(v) for n, v in versions.items() if len(v) > 1}
    print(f"deps-check: {len(external)} crates from crates.io, licences and sources checked, "
          f"{len(results) - len(unreachable)} checked for yanked versions")
    if dups:
        print("deps-check: in more than one version (information): " +
              ", ".join(f"{n} {'/'.join(v)}" for n, v in sorted(dups.items())))
    for f in failures:
        print(f"deps-check: FAIL {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
