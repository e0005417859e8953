"""Typed stage artifacts round-trip their files unchanged, and results.json is assembled from the
one section spec (results_schema.SECTIONS): the schema, the assembler and the synthetic run agree."""

from __future__ import annotations

import json

import pytest

from cliff_lens.evaluate import AblationResults, save_ablation_results
from cliff_lens.pipeline import CliffRow, HeadsFile, read_cliff_rows, write_results
from cliff_lens.results_schema import (
    RESULTS_SCHEMA,
    SECTIONS,
    STAGE_SECTIONS,
    assemble_results,
    validate_results,
)
from cliff_lens.selection import SelectionSummary
from cliff_lens.testing import write_synthetic_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("run"))


def test_schema_is_derived_from_the_sections():
    keys = [s.key for s in SECTIONS]
    assert len(keys) == len(set(keys))
    assert list(RESULTS_SCHEMA["properties"]) == keys
    assert RESULTS_SCHEMA["required"] == [s.key for s in SECTIONS if s.required]
    assert set(STAGE_SECTIONS) == {"probe", "cliff", "heads", "ablation", "selection"}
    with pytest.raises(ValueError, match="not declared"):
        assemble_results({"model": {}, "surprise": 1})


def test_synthetic_results_come_from_the_assembler(run):
    written = json.loads((run / "results.json").read_text())
    assert validate_results(written) == []
    # every section's files exist, so results.json holds every declared section, in their order
    assert list(written) == [s.key for s in SECTIONS]
    again = write_results(run)
    assert json.loads(json.dumps(again)) == written
    assert written["data"]["n_harmful"] == 32 and written["heads"]["top"][0] == {
        "layer": 1,
        "head": 2,
        "score": -0.5,
    }


def test_a_section_is_written_exactly_when_its_files_exist(run, tmp_path):
    import shutil

    d = shutil.copytree(run, tmp_path / "run")
    (d / "ablation.json").unlink()
    res = write_results(d)
    missing = {s.key for s in SECTIONS if "ablation.json" in s.files}
    assert missing == {"ablation", "ablation_random_summary", "design", "holm"}
    assert not missing & set(res) and set(res) | missing == {s.key for s in SECTIONS}
    assert validate_results(res, partial=True) == []
    assert validate_results(res, raise_on_error=False) == ["$: missing required key 'ablation'"]


def test_ablation_results_round_trip_the_file_unchanged(run, tmp_path):
    src = (run / "ablation.json").read_text()
    ab = AblationResults.load(run / "ablation.json")
    assert [s.setting for s in ab.measured][:3] == ["baseline", "top-3%", "top-3% in-sample"]
    assert [s.setting for s in ab.random_summaries] == [
        "random-3% (5 seeds)",
        "random-3% matched to top-3% (5 seeds)",
    ]
    assert ab.measured[1].heads == [(1, 2)] and ab.measured[0].heads == [] and ab.measured[1].kind == "top"
    ab.save(tmp_path / "a.json")
    assert (tmp_path / "a.json").read_text() == src
    save_ablation_results(tmp_path / "b.json", [s.row for s in ab.settings], ab.meta)
    assert (tmp_path / "b.json").read_text() == src
    (tmp_path / "bad.json").write_text('{"rows": []}')
    with pytest.raises(ValueError, match="settings"):
        AblationResults.load(tmp_path / "bad.json")


def test_selection_summary_round_trips_and_rejects_a_partial_file(run, tmp_path):
    sel = SelectionSummary.load(run / "selection.json")
    assert sel.base_rate_complied == pytest.approx(16 / 40) and sel.selected_ids[:2] == ["h1", "h2"]
    sel.save(tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads((run / "selection.json").read_text())
    d = sel.to_dict()
    del d["n_pool"]
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="n_pool"):
        SelectionSummary.load(tmp_path / "bad.json")


def test_cliff_rows_and_heads_file(run):
    rows = read_cliff_rows(run / "cliff.jsonl")
    assert len(rows) == 64 and all(isinstance(r, CliffRow) for r in rows)
    assert {r.group for r in rows if r.harmful} == {"harmful_refused", "harmful_complied"}
    assert all(r.scored for r in rows) and not CliffRow("x", float("nan"), 0.1, 0.0, "g", True, True).scored
    heads = HeadsFile.load(run / "heads.json")
    assert tuple(heads.ranking.scores.shape) == (2, 4) and heads.contrast_scores is None
    assert heads.contrast_heads == ()


def test_design_checks_are_computed_from_the_artifacts(run, tmp_path):
    """Each held-out claim's disjointness is read per prompt from the files; the in-sample row is
    listed as not held out; a run whose files leak fails the checks."""
    design = json.loads((run / "results.json").read_text())["design"]
    by_claim = {c["claim"]: c for c in design["checks"]}
    held = by_claim["top-3%: ASR requests vs each fold's ranking requests"]
    assert held["disjoint"] is True and held["basis"].startswith("per prompt")
    assert by_claim["head-means requests vs over-refusal requests"]["disjoint"] is True
    in_sample = next(c for c in design["checks"] if c.get("setting") == "top-3% in-sample")
    assert in_sample["held_out"] is False and in_sample["disjoint"] is False
    assert design["disjoint"] is True
    folds = design["settings"][0]["folds"]
    assert [f["disjoint"] for f in folds] == [True, True]
    assert not set(folds[0]["asr_requests"]) & set(folds[0]["ranked_on"])

    leaky = write_synthetic_run(tmp_path / "leak", leak=True)
    design = json.loads((leaky / "results.json").read_text())["design"]
    by_claim = {c["claim"]: c for c in design["checks"]}
    assert by_claim["top-3%: ASR requests vs each fold's ranking requests"]["overlap"] == ["synthetic-h00"]
    assert by_claim["head-means requests vs over-refusal requests"]["overlap"] == ["synthetic-b08"]
    assert design["disjoint"] is False and design["settings"][0]["folds"][0]["disjoint"] is False
    assert validate_results(json.loads((leaky / "results.json").read_text())) == []


def test_holm_and_heads_sections(run):
    from cliff_lens.stats import holm_adjust

    res = json.loads((run / "results.json").read_text())
    found = res["holm"]["findings"]
    assert [f["p_holm"] for f in found] == holm_adjust([f["p"] for f in found])
    assert all(f["significant_holm"] == (f["p_holm"] <= res["holm"]["alpha"]) for f in found)
    assert res["heads"]["stability"]["paper"]["heads"] == [{"layer": 1, "head": 2, "frequency": 0.95}]
    assert [f["heads"] for f in res["heads"]["held_out"]["paper"]["3"]] == [[[1, 2]], [[1, 2]]]
    rows = {r["setting"]: r for r in res["ablation"]}
    assert rows["top-3% in-sample"]["selection"] == "in_sample" and rows["top-3%"]["selection"] == "held_out"
    assert rows["top-3%"]["vs_random_matched"]["n_sets"] == 5
    assert rows["random-3% layer-matched seed 0"]["over_refusal"] is None


def test_within_prompt_set_numbers(run):
    """Cliff means per prompt set (no interval below 10 rollouts) and the selection's precision
    against the framing-stratified baseline, with its exact p (checked by enumeration)."""
    from itertools import combinations

    res = json.loads((run / "results.json").read_text())
    cliff = res["cliff"]["by_prompt_set"]
    assert set(cliff) == {"cliff-harmful", "cliff-jailbreak"}
    assert (
        cliff["cliff-jailbreak"]["complied"]["n"] == 21
        and None not in cliff["cliff-jailbreak"]["complied"]["cliff_ci95"]
    )
    assert cliff["cliff-harmful"]["complied"]["cliff_ci95"] == [None, None]
    assert cliff["cliff-harmful"]["complied"]["interval"] == "none (n < 10)"
    sel = res["selection"]
    per, base = sel["by_prompt_set"], sel["stratified_baseline"]
    assert (per["cliff-jailbreak"]["n_selected"], per["cliff-harmful"]["n_selected"]) == (8, 2)
    assert base["expected_precision"] == pytest.approx((8 * 21 / 23 + 2 * 3 / 9) / 10)
    # enumerate every within-set selection of the same sizes: the share with >= 9 complied
    pools = {
        name: [1] * d["complied_in_pool"] + [0] * (d["n_pool"] - d["complied_in_pool"])
        for name, d in per.items()
    }
    counts = {name: [sum(c) for c in combinations(pools[name], per[name]["n_selected"])] for name in per}
    a, b = counts["cliff-jailbreak"], counts["cliff-harmful"]
    exact = sum(1 for x in a for y in b if x + y >= 9) / (len(a) * len(b))
    assert base["p_value"] == pytest.approx(exact) and base["significant"] is False
