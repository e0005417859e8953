"""Rewrite the README's generated blocks from the committed artifacts.

``python scripts/readme_tables.py`` replaces the text between ``<!-- demo-table:start -->`` and
``<!-- demo-table:end -->`` with :func:`cliff_lens.summary.markdown_table` of
``benchmarks/results/demo/results.json``; ``tests/test_readme_numbers.py`` checks they agree.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cliff_lens.summary import markdown_table

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    results = json.loads((ROOT / "benchmarks" / "results" / "demo" / "results.json").read_text())
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = "<!-- demo-table:start -->\n" + markdown_table(results) + "<!-- demo-table:end -->"
    new, n = re.subn(
        r"<!-- demo-table:start -->\n.*?<!-- demo-table:end -->", lambda _: block, text, flags=re.S
    )
    if n != 1:
        raise SystemExit("README.md needs one <!-- demo-table:start --> ... <!-- demo-table:end --> block")
    readme.write_text(new)
    print("README.md demo table rewritten from benchmarks/results/demo/results.json")


if __name__ == "__main__":
    main()
