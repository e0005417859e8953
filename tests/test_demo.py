"""`cliff-lens demo --quick` end to end on the shipped cliff organism (offline), as CI runs it:
every stage's files, a results.json that validates, a report that inlines circuitsvis once and
loads nothing from the network, and a second invocation that skips every stage."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    from cliff_lens.zoo import ZooError, smollm2_hf_dir

    try:
        smollm2_hf_dir()
    except ZooError as e:  # pragma: no cover - only without registry access
        pytest.skip(f"SmolLM2 zoo unavailable: {e}")
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "cliff_lens.cli", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_demo_quick_writes_a_valid_run(demo_dir):
    from cliff_lens.results_schema import validate_results

    out, proc = demo_dir
    res = json.loads((out / "results.json").read_text())
    validate_results(res)
    assert res["model"]["source"] == "cliff-organism"
    assert res["model"]["n_layers"] == 30 and res["model"]["n_heads"] == 9
    assert res["heads"]["n_heads_total"] == 270 and len(res["heads"]["top"]) == 9  # 3% of 270
    assert [a["setting"] for a in res["ablation"]][0] == "baseline"
    assert "cliff-lens run: cliff-organism" in proc.stdout  # the one-screen summary


def test_demo_report_is_self_contained(demo_dir):
    out, _ = demo_dir
    html = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']https?://""", html)
    assert html.count('id="circuitsvis-bundle"') == 1  # the JS bundle inlined once, not per view


def test_demo_rerun_skips_every_stage(demo_dir):
    out, _ = demo_dir
    proc = subprocess.run(
        [sys.executable, "-m", "cliff_lens.cli", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("up to date, skipped") == 8
