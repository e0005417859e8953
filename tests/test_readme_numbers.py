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


def test_readme_random_set_numbers_equal_the_19_set_run():
    """The README's "19 random sets" sentence quotes benchmarks/results/demo_random19/ablation.json."""
    ablation = json.loads((ROOT / "benchmarks" / "results" / "demo_random19" / "ablation.json").read_text())
    summary = next(r for r in ablation["settings"] if r.get("kind") == "random_summary")
    top = next(r for r in ablation["settings"] if r["setting"] == "top-3%")
    kls = [r["capability"]["kl"]["value"] for r in ablation["settings"] if r.get("kind") == "random"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert len(summary["seeds"]) == 19 and top["vs_random"]["n_sets"] == 19
    assert f"ASR {summary['asr_min']:.2f}-{summary['asr_max']:.2f} (mean {summary['asr_mean']:.2f})" in readme
    assert f"heads' {top['asr']:.2f}: **empirical p = {top['vs_random']['asr_empirical_p']:.2f}**" in readme
    kl = top["capability"]["kl"]["value"]
    assert (
        f"KL cost, {kl:.3f}, is in the middle of the 19 random sets' {min(kls):.3f}-{max(kls):.3f}" in readme
    )
    assert f"(mean {sum(kls) / len(kls):.3f})" in readme
    # the 19-set run reused the demo's settings: the same baseline and top-3% outcomes
    demo = json.loads((DEMO / "ablation.json").read_text())
    demo_top = next(r for r in demo["settings"] if r["setting"] == "top-3%")
    assert demo_top["harmful_outcomes"] == top["harmful_outcomes"]


def test_readme_contrast_vs_mean_rows_equal_the_benchmark_files():
    """The README's two rows of Spearman correlations quote benchmarks/results/contrast_vs_mean*.json."""
    readme = (ROOT / "README.md").read_text()

    def ci(lo_hi: list) -> str:
        return f"[{lo_hi[0]:.2f}, {lo_hi[1]:.2f}]"

    for name, heads in (("contrast_vs_mean_all_heads.json", "all 270"), ("contrast_vs_mean.json", "52:")):
        d = json.loads((ROOT / "benchmarks" / "results" / name).read_text())
        row = next(line for line in readme.splitlines() if line.startswith(f"| {heads}"))
        m, c = d["rankings"]["mean"], d["rankings"]["contrast"]
        diff = d["mean_minus_contrast_spearman"]
        assert f"`benchmarks/results/{name}`" in row
        assert f"| {m['spearman_with_causal_contribution']:.2f} {ci(m['spearman_ci95'])} |" in row
        assert f"| {c['spearman_with_causal_contribution']:.2f} {ci(c['spearman_ci95'])} |" in row
        assert f"| {diff['difference']:.2f} {ci(diff['ci95'])}, p = {diff['paired_bootstrap_p']:.2g} |" in row
        assert d["n_tested_heads"] == (270 if heads == "all 270" else 52)
