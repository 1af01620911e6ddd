#!/usr/bin/env python3
"""Every test docs/claims.md names exists: `path::name` (or
`path::tests::name`) must be a function `name` in `path`, and
`dev/chart_check.py::fn` a function of the chart checker. Prints the
dangling ones and exits non-zero if any."""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
text = open(os.path.join(ROOT, "docs", "claims.md")).read()
refs = sorted(set(re.findall(r"([\w./-]+\.(?:rs|py))::(?:tests::)?(\w+)", text)))
missing = []
for path, name in refs:
    full = os.path.join(ROOT, path)
    pattern = rf"\bdef {name}\(" if path.endswith(".py") else rf"\bfn {name}\b"
    if not os.path.isfile(full) or not re.search(pattern, open(full).read()):
        missing.append(f"{path}::{name}")
for m in missing:
    print(f"docs/claims.md names a test that does not exist: {m}")
print(f"claims: {len(refs)} tests named, {len(missing)} missing")
sys.exit(1 if missing else 0)
