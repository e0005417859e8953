"""The README's numbers equal the committed artifacts they come from (prose and data cannot drift)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "benchmarks" / "results" / "demo"


def _between(text: str, name: str) -> str:
    m = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.S)
    assert m, f"README has no <!-- {name}:start --> ... <!-- {name}:end --> block"
    return m.group(1)


def test_demo_table_is_generated_from_the_committed_results():
    """Regenerate with: python scripts/readme_tables.py (writes the block from the results file)."""
    from cliff_lens.summary import markdown_table

    results = json.loads((DEMO / "results.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert _between(readme, "demo-table") == markdown_table(results)


def test_committed_demo_artifacts_agree_with_each_other():
    results = json.loads((DEMO / "results.json").read_text())
    ablation = json.loads((DEMO / "ablation.json").read_text())
    heads = json.loads((DEMO / "heads.json").read_text())
    by_setting = {r["setting"]: r for r in ablation["settings"]}
    for row in results["ablation"]:
        assert by_setting[row["setting"]]["asr"] == row["asr"]
    assert [[t["layer"], t["head"]] for t in results["heads"]["top"]] == [
        h[:2] for h in heads["suppression_heads"]
    ]
    assert (DEMO / "COMMAND").read_text().strip().startswith("cliff-lens demo")
