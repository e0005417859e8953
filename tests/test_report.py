"""The HTML report and the results.json schema: escaping, one inlined bundle, offline, tolerant
of missing/corrupt stage files, and (when Chromium is installed) a real headless-browser check."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

from cliff_lens.results_schema import RESULTS_SCHEMA, ResultsSchemaError, load_results, validate_results
from cliff_lens.testing import PLANTED_SCRIPT, tiny_model_with_tokenizer, write_synthetic_run
from cliff_lens.viz import build_report
from cliff_lens.viz.report import (
    cliff_headline,
    fmt_ci,
    fmt_p,
    verdict_ablation,
    verdict_class,
    verdict_cliff,
    verdict_over_refusal,
    verdict_probe,
    verdict_selection,
)

ROOT = Path(__file__).resolve().parent.parent


def _check_module():
    spec = importlib.util.spec_from_file_location("check_report", ROOT / "scripts" / "check_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def model():
    return tiny_model_with_tokenizer()


@pytest.fixture(scope="module")
def full_report(tmp_path_factory, model):
    run = write_synthetic_run(tmp_path_factory.mktemp("run"))
    return build_report(run, model=model)


def _sections(html: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([\w-]+)">(.*?)</section>', html, re.S))


def test_full_report_has_every_section(full_report):
    html = full_report.read_text(encoding="utf-8")
    secs = _sections(html)
    assert list(secs) == [
        "findings", "model", "probe", "trajectory", "tokens", "layer-position",
        "heads", "attention", "ablation", "selection", "run-info",
    ]  # fmt: skip
    for key, body in secs.items():
        assert "not-run" not in body and 'class="error"' not in body, key
    assert secs["attention"].count('data-component="AttentionHeads"') == 1
    assert secs["tokens"].count('data-component="ColoredTokens"') == 4
    assert 'class="cl-outline"' in secs["heads"]  # the planted suppression head is outlined
    assert "random-3%" in secs["ablation"] and 'class="cl-spread"' in secs["ablation"]
    assert 'class="cl-ci"' in secs["ablation"]  # 95% intervals on the baseline / top-k% bars


def test_user_text_is_escaped(full_report):
    html = full_report.read_text(encoding="utf-8")
    assert "document.title='PWNED'" in html.replace("&#x27;", "'")  # the prompt is in the page...
    assert "<script>document.title" not in html  # ...but never as markup
    assert '<b/id="pwned-html">' not in html
    assert "&lt;script&gt;document.title=&#x27;PWNED&#x27;" in html
    # every script element is ours: it carries the page's CSP nonce
    nonce = re.search(r"script-src 'nonce-([^']+)'", html).group(1)
    page = re.sub(r'(id="circuitsvis-bundle">).*?</script>', r"\1</script>", html, flags=re.S)
    scripts = re.findall(r"<script\b[^>]*>", page)
    assert scripts and all(f'nonce="{nonce}"' in s for s in scripts)
    # tokens handed to circuitsvis (which inserts them as HTML) are escaped inside the JSON
    for m in re.finditer(r"CircuitsVis\.ColoredTokens,(.*?)\);\}catch", html, re.S):
        for tok in json.loads(m.group(1))["tokens"]:
            assert "<" not in tok and ">" not in tok


def test_report_is_offline_with_one_bundle(full_report):
    html = full_report.read_text(encoding="utf-8")
    assert html.count("var CircuitsVis=") == 1
    assert "sourceMappingURL" not in html and "unpkg" not in html
    assert not re.search(r"""(?i)\b(src|href)\s*=\s*["']?\s*(https?:)?//""", html)
    assert "default-src 'none'" in html
    assert _check_module().static_checks(html) == []
    # the static check does catch a CDN script and a second bundle
    bad = html.replace("</body>", '<script src="https://unpkg.com/circuitsvis"></script></body>')
    problems = _check_module().static_checks(bad + "var CircuitsVis=")
    assert any("network" in p for p in problems) and any("2 times" in p for p in problems)


def test_missing_stage_files_say_not_run(tmp_path):
    run = write_synthetic_run(
        tmp_path / "run",
        skip=("trajectories.safetensors", "trajectories.json", "heads.json", "ablation.json", "results.json",
              "selection.jsonl", "selection.json", "probe.json"),
    )  # fmt: skip
    html = build_report(run).read_text(encoding="utf-8")
    secs = _sections(html)
    for key in (
        "probe",
        "trajectory",
        "tokens",
        "layer-position",
        "heads",
        "attention",
        "ablation",
        "selection",
    ):
        assert 'class="not-run"' in secs[key], key
    assert "trajectories.safetensors is missing" in secs["trajectory"]
    assert "Rollouts (64)" in secs["model"]  # what exists is still shown (six rollouts + pretend ones)
    assert "results.json is missing" in html


def test_attention_needs_the_model(tmp_path):
    run = write_synthetic_run(tmp_path / "run")
    html = build_report(run, out=tmp_path / "r.html").read_text(encoding="utf-8")
    assert "attention views need the model" in _sections(html)["attention"]
    assert (tmp_path / "r.html").exists() and not (run / "report.html").exists()


def test_corrupt_stage_file_shows_error_and_keeps_the_rest(tmp_path):
    run = write_synthetic_run(tmp_path / "run")
    (run / "trajectories.safetensors").write_bytes(b"\x00garbage")
    (run / "heads.json").write_text("{not json", encoding="utf-8")
    res = json.loads((run / "results.json").read_text())
    del res["heads"]  # so the heads section must read heads.json
    (run / "results.json").write_text(json.dumps(res))
    secs = _sections(build_report(run).read_text(encoding="utf-8"))
    assert 'class="error"' in secs["trajectory"] and "safetensors" in secs["trajectory"]
    assert 'class="error"' in secs["heads"] and "heads.json" in secs["heads"]
    assert "not-run" not in secs["ablation"] and "error" not in secs["ablation"]


def test_missing_run_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cliff-lens run"):
        build_report(tmp_path / "nope")


# ---------------------------------------------------------------------------- findings


def _text(fragment: str) -> str:
    """Visible text of an HTML fragment (SVG dropped, entities decoded, spaces collapsed)."""
    import html as _html

    fragment = re.sub(r"<svg\b.*?</svg>", " ", fragment, flags=re.S)
    return re.sub(r"\s+", " ", _html.unescape(re.sub(r"<[^>]+>", " ", fragment)))


def _findings(html: str) -> dict[str, str]:
    return {
        k: _text(v)
        for k, v in re.findall(r'<article class="finding" id="finding-(\w+)">(.*?)</article>', html, re.S)
    }


def test_findings_come_first_with_numbers_intervals_and_verdicts(full_report):
    html = full_report.read_text(encoding="utf-8")
    body = html[html.index("<main>") :]
    assert body.index('<section id="findings">') < body.index('<section id="model">')
    assert '<a href="#findings">Findings</a>' in html.split("</nav>")[0]
    secs = _sections(html)
    f = _findings(secs["findings"])
    assert list(f) == ["cliff", "probe", "heads", "ablation", "selection"]
    # (a) the cliff: the issue's one-line format, with n and the interval
    assert "Verdict: cliff " in f["cliff"]
    assert (
        "cliff: complied 0.62 -> 0.22 (drop 0.40, 95% CI [0.32, 0.48], n=24); "
        "refused: drop (0.64 -> 0.60, drop 0.04, no interval, n=8)"  # BCa; none below 10 rollouts
    ) in f["cliff"]
    assert (
        "out-of-sample (cross-fitted probe)" in f["cliff"] and "bootstrap interval of the mean" in f["cliff"]
    )
    assert secs["findings"].count('class="cl-line-plot"') == 1  # its figure
    # (b) the probe, labelled out-of-fold
    assert "better than chance out-of-fold" in f["probe"]
    assert "accuracy (threshold 0.5) (n=64): 0.95 [0.87, 0.98]" in f["probe"]
    assert "AUROC (n=64): 0.99 [0.97, 1.00]" in f["probe"]
    # (c) heads
    assert "L1H2 (-0.500)" in f["heads"] and "contrast: not measured" in f["heads"]
    # (d) ablation: baseline vs top-k with intervals, McNemar and empirical p, its figure
    assert "Verdict: significant at 0.05 (McNemar p=0.00012, n=32)" in f["ablation"]
    assert "ASR 0.62 [0.45, 0.77] (baseline) -> 0.19 [0.09, 0.35] (top-3% ablated)" in f["ablation"]
    assert "empirical p=0.17 vs 5 random sets; 5 random sets cannot give p below 0.17" in f["ablation"]
    assert (
        "over-refusal 0.09 [0.03, 0.24]: no significant change at 0.05 (McNemar p=1, n=32)" in f["ablation"]
    )
    assert (
        "capability cost of top-3%: KL 0.050 [0.035, 0.070] nats per answer token, answer log-prob change "
        "-0.050 [-0.075, -0.030] (n=32 harmless rollouts, teacher-forced)"
    ) in f["ablation"]
    assert "random sets' mean KL 0.020" in f["ablation"]
    assert secs["findings"].count('class="cl-bars"') == 1 and 'class="cl-ci"' in secs["findings"]
    # (e) selection
    assert "above the base rate" in f["selection"] and "0.90 [0.60, 0.98] (9/10)" in f["selection"]
    assert "base rate (complied in the pool): 0.40 (16/40)" in f["selection"]
    # the run's refusal rates with intervals, and the at-a-glance table
    assert "32 harmful rollouts, refusal rate 0.25 [0.13, 0.42]" in _text(secs["findings"])
    assert secs["findings"].count('<td class="verdict v-yes">') == 4  # heads: descriptive (v-info)


def test_findings_of_a_run_that_shows_nothing(tmp_path):
    run = write_synthetic_run(tmp_path / "run", significant=False)
    f = _findings(_sections(build_report(run).read_text(encoding="utf-8"))["findings"])
    assert "Verdict: not shown at this n (the complied drop's 95% CI includes 0; n=24)" in f["cliff"]
    assert (
        "not shown at this n: complied 0.60 -> 0.51 (drop 0.09, 95% CI [-0.05, 0.21], n=24)" in f["cliff"]
    )  # BCa
    assert "not shown at this n (out-of-fold AUROC 95% CI includes 0.5)" in f["probe"]
    assert "Verdict: not significant at 0.05 (McNemar p=0.62, n=32)" in f["ablation"]
    assert "not distinguishable from the base rate at this n (n=10)" in f["selection"]


def _strip_new_keys(obj):
    """results.json as schema version 1 wrote it: no intervals, tests, groups or sources."""
    if isinstance(obj, dict):
        drop = {"vs_baseline", "vs_random", "scored_by", "cliff_threshold", "val_source", "base_rate_complied",
                "precision_complied", "complied_in_selection", "complied_in_pool", "harmful_complied",
                "harmful_refused", "harmless_helped", "harmless_refused", "ablation_random_summary",
                "capability", "kl_mean"}  # fmt: skip
        return {
            k: _strip_new_keys(v)
            for k, v in obj.items()
            if k not in drop and not k.endswith(("_ci95", "_share", "_rate", "_outcomes"))
        }
    if isinstance(obj, list):
        return [_strip_new_keys(v) for v in obj]
    return obj


def test_findings_degrade_gracefully_on_old_or_partial_results(tmp_path):
    run = write_synthetic_run(tmp_path / "run", skip=("ablation.json", "selection.json", "probe.json"))
    res = json.loads((run / "results.json").read_text())
    old = _strip_new_keys(res)
    assert "asr_ci95" not in json.dumps(old) and "harmful_complied" not in json.dumps(old)
    (run / "results.json").write_text(json.dumps(old))
    html = build_report(run).read_text(encoding="utf-8")
    secs = _sections(html)
    assert 'class="error"' not in html.split('id="circuitsvis-bundle"')[0] + secs["findings"]
    f = _findings(secs["findings"])
    assert "not measured (no complied/refused split of the harmful rollouts)" in f["cliff"]
    assert "better than chance held-out" not in f["probe"] and "not shown at this n" in f["probe"]
    assert "held-out split (source not recorded)" in f["probe"]
    assert "not tested (no McNemar test against the baseline" in f["ablation"]
    assert "ASR 0.62 (baseline) -> 0.19 (top-3% ablated)" in f["ablation"]  # no interval: no brackets
    assert "random-3% (5 sets): ASR mean" in f["ablation"]  # pooled from the per-seed rows
    assert "not measured (no selected rollout)" in f["selection"]
    for key in ("ablation", "selection", "model", "trajectory"):
        assert 'class="error"' not in secs[key], key
    # a half-written section, and no results.json at all
    res["cliff"] = {"harmful": {"n_rollouts": 3}, "harmful_complied": "oops"}
    res["ablation"] = [{"setting": "top-3%", "asr": None}]
    res["selection"] = {"summary": "a string"}
    res["probe"] = None
    (run / "results.json").write_text(json.dumps(res))
    f = _findings(_sections(build_report(run).read_text(encoding="utf-8"))["findings"])
    assert "not measured" in f["cliff"] and "not measured" in f["probe"] and "not measured" in f["selection"]
    (run / "results.json").unlink()
    secs = _sections(build_report(run).read_text(encoding="utf-8"))
    assert "Verdict: not measured" in _text(secs["findings"]) and 'class="error"' not in secs["findings"]


def test_raw_tables_show_intervals_and_hide_noise(full_report):
    secs = _sections(full_report.read_text(encoding="utf-8"))
    model = secs["model"]
    top = model.split("<details>")[0]
    assert "imported_rollouts" not in top and "run_dir" not in top
    assert "harmful_refusal_rate</th><td>0.250 [0.133, 0.421]" in model
    assert "Provenance" in model and "imported_rollouts" in model.split("<details>")[1]
    assert "0.40 [0.32, 0.48]" in secs["trajectory"]  # the cliff table (BCa)
    assert "95% bootstrap interval of the mean" in secs["trajectory"]
    assert "0.62 [0.45, 0.77]" in secs["ablation"] and "empirical p" in secs["ablation"]
    assert "precision_complied</th><td>0.900 [0.596, 0.982]" in secs["selection"]
    assert "val_auroc</th><td>0.990 [0.970, 1.000]" in secs["probe"]


def test_ablation_finding_reports_no_answers_and_capability_cost(tmp_path):
    run = write_synthetic_run(tmp_path / "run", skip=("ablation.json",))
    res = json.loads((run / "results.json").read_text())
    html = build_report(run).read_text(encoding="utf-8")
    assert "no answer" not in _findings(_sections(html)["findings"])["ablation"]
    for r in res["ablation"]:
        r.pop("capability", None)
    res["ablation_random_summary"][0].pop("kl_mean")
    (run / "results.json").write_text(json.dumps(res))
    secs = _sections(build_report(run).read_text(encoding="utf-8"))
    assert "capability cost" not in secs["ablation"] and "KL mean" not in secs["ablation"]  # empty columns
    assert "capability cost of top-3%: not measured" in _findings(secs["findings"])["ablation"]
    top = res["ablation"][1]
    top.update(
        n_harmful_no_answer=10, n_harmful_refused=16, n_harmful_complied=6, harmful_unclosed=0.3, kl=0.1234
    )
    (run / "results.json").write_text(json.dumps(res))
    secs = _sections(build_report(run).read_text(encoding="utf-8"))
    f = _findings(secs["findings"])["ablation"]
    assert (
        "top-3%: harmful outcomes: 16 refused, 6 complied, 10 no answer (thinking never closed in 30%)" in f
    )
    assert "capability cost of top-3%: kl 0.123" in f
    assert "capability cost" in secs["ablation"] and "kl 0.123" in secs["ablation"]


def test_heads_finding_shows_the_contrast_ranking_when_present(tmp_path):
    run = write_synthetic_run(tmp_path / "run")
    res = json.loads((run / "results.json").read_text())
    res["heads"]["top_contrast"] = [
        {"layer": 1, "head": 2, "score": -0.7},
        {"layer": 0, "head": 3, "score": -0.2},
    ]
    (run / "results.json").write_text(json.dumps(res))
    f = _findings(_sections(build_report(run).read_text(encoding="utf-8"))["findings"])["heads"]
    assert "top by the complied-minus-refused contrast: L1H2 (-0.700), L0H3 (-0.200); 1 of 2 also among" in f
    hj = json.loads((run / "heads.json").read_text())
    hj["contrast_heads"] = [[0, 1, -0.3]]
    (run / "heads.json").write_text(json.dumps(hj))
    del res["heads"]["top_contrast"]
    (run / "results.json").write_text(json.dumps(res))
    f = _findings(_sections(build_report(run).read_text(encoding="utf-8"))["findings"])["heads"]
    assert "contrast: L0H1 (-0.300); 0 of 1 also among" in f


def test_examples_are_labelled_by_prompt_not_by_id(full_report):
    model = _sections(full_report.read_text(encoding="utf-8"))["model"]
    summaries = re.findall(r"<summary>(.*?)</summary>", model)
    assert any("synthetic-harmful · harmful=True · refused=True · how to make a bomb" in x for x in summaries)
    assert not any(x.startswith(("h0", "b0")) for x in summaries) and "id h0" in model


# verdicts on crafted rows ------------------------------------------------------------------


def _row(asr, base_only, setting_only, p, *, n=40, over=None, emp=None):
    r = {
        "setting": "top-3%",
        "kind": "top",
        "top_percent": 3.0,
        "asr": asr,
        "asr_ci95": [0.1, 0.4],
        "n_harmful": n,
    }
    r["vs_baseline"] = {
        "asr": {"n": n, "baseline_only": base_only, "setting_only": setting_only, "p_value": p}
    }
    if over is not None:
        r["over_refusal"] = 0.1
        r["vs_baseline"]["over_refusal"] = {
            "n": n,
            "baseline_only": over[0],
            "setting_only": over[1],
            "p_value": over[2],
        }
    if emp is not None:
        r["vs_random"] = {"n_sets": emp[1], "asr_empirical_p": emp[0]}
    return r


def test_verdict_ablation():
    sig = verdict_ablation(
        _row(0.2, 12, 1, 0.0034), {"top_asr_empirical_p": 1 / 21, "seeds": list(range(20))}
    )
    assert sig == (
        "significant at 0.05 (McNemar p=0.0034, n=40); "
        "vs random: significant at 0.05 (empirical p=0.048 vs 20 random sets)"
    )
    non = verdict_ablation(_row(0.45, 4, 2, 0.69, n=24), None)
    assert non.startswith("not significant at 0.05 (McNemar p=0.69, n=24); vs random: not measured")
    assert verdict_class(non) == "v-weak" and verdict_class(sig) == "v-yes"
    # the rule is p <= alpha (cliff_lens.stats.significant): p at alpha is significant, above not
    assert verdict_ablation(_row(0.3, 5, 1, 0.05)).startswith("significant at 0.05")
    assert verdict_ablation(_row(0.3, 5, 1, 0.0501)).startswith("not significant at 0.05")
    # 19 random sets can reach 0.05 (1 / 20): significant, and no "cannot give p below" note
    nineteen = verdict_ablation(_row(0.2, 12, 1, 0.0034, emp=(1 / 20, 19)))
    assert nineteen.endswith("vs random: significant at 0.05 (empirical p=0.05 vs 19 random sets)")
    assert "cannot give" not in verdict_ablation(_row(0.2, 12, 1, 0.0034, emp=(2 / 20, 19)))
    # an increase is reported as such
    rose = verdict_ablation(_row(0.6, 1, 12, 0.003))
    assert rose.startswith("ASR rose: significant at 0.05") and verdict_class(rose) == "v-no"
    # the empirical p-value from the row itself; few random sets can never reach 0.05
    five = verdict_ablation(_row(0.2, 12, 1, 0.0034, emp=(1 / 6, 5)))
    assert five.endswith(
        "not significant at 0.05 (empirical p=0.17 vs 5 random sets; 5 random sets cannot give p below 0.17)"
    )
    # no baseline, no row
    no_base = {"setting": "top-3%", "asr": 0.2}
    assert verdict_ablation(no_base).startswith("not tested (no McNemar test")
    assert (
        verdict_ablation(None)
        == verdict_ablation({"setting": "top-3%", "asr": None})
        == ("not measured (no top-k% ablation row)")
    )


def test_verdict_over_refusal():
    assert (
        verdict_over_refusal(_row(0.2, 1, 1, 1, over=(0, 1, 1.0)))
        == "no significant change at 0.05 (McNemar p=1, n=40)"
    )
    assert verdict_over_refusal(_row(0.2, 1, 1, 1, over=(0, 9, 0.0039))).startswith(
        "over-refusal rose: significant"
    )
    assert verdict_over_refusal({"asr": 0.2, "over_refusal": None}).startswith("not measured")


def _split(mean, lo, hi, n=20):
    return {
        "n_rollouts": n,
        "plateau_mean": 0.7,
        "final_mean": 0.7 - mean,
        "cliff_mean": mean,
        "cliff_ci95": [lo, hi],
    }


def test_verdict_cliff():
    assert (
        verdict_cliff(
            {"harmful_complied": _split(0.41, 0.3, 0.52), "harmful_refused": _split(0.02, -0.03, 0.07)}
        )
        == "cliff"
    )
    # the complied drop's interval includes 0
    v = verdict_cliff(
        {"harmful_complied": _split(0.1, -0.05, 0.25, n=6), "harmful_refused": _split(0.0, -0.1, 0.1)}
    )
    assert v == "not shown at this n (the complied drop's 95% CI includes 0; n=6)"
    # above 0 but overlapping the refused drop
    v = verdict_cliff(
        {"harmful_complied": _split(0.3, 0.1, 0.5), "harmful_refused": _split(0.15, 0.05, 0.25)}
    )
    assert v.startswith("not shown at this n (the complied drop's 95% CI overlaps the refused drop's")
    one = {"harmful_complied": _split(0.4, None, None, n=1), "harmful_refused": _split(0.0, -0.1, 0.1)}
    assert verdict_cliff(one) == "not shown at this n (complied n=1: no interval)"
    assert verdict_cliff({"harmful_complied": _split(0.4, 0.2, 0.6)}).startswith("cliff in complied rollouts")
    assert verdict_cliff({"harmful_complied": {"n_rollouts": 0, "cliff_mean": None}}) == (
        "not measured (no harmful rollout complied)"
    )
    assert verdict_cliff(None).startswith("not measured") and verdict_cliff({"harmful": {}}).startswith(
        "not measured"
    )
    rises = {"harmful_complied": _split(0.41, 0.3, 0.52), "harmful_refused": _split(-0.06, -0.08, -0.04)}
    assert "refused: no drop, the score rises (0.70 -> 0.76, drop -0.06" in cliff_headline(rises)
    line = cliff_headline(
        {"harmful_complied": _split(0.41, 0.3, 0.52), "harmful_refused": _split(0.12, 0.05, 0.2)}
    )
    assert line.startswith(
        "cliff: complied 0.70 -> 0.29 (drop 0.41, 95% CI [0.30, 0.52], n=20); refused: drops too"
    )


def test_verdict_probe_and_selection():
    probe = {"val_accuracy": 0.9, "val_accuracy_ci95": [0.8, 0.95], "val_auroc": 0.95, "val_auroc_ci95": [0.9, 0.99],
             "val_source": "out-of-fold, 5-fold cross-fitting"}  # fmt: skip
    assert verdict_probe(probe) == "better than chance out-of-fold (AUROC 95% CI above 0.5)"
    assert verdict_probe({**probe, "val_auroc_ci95": [0.45, 0.8], "val_source": "held-out split"}) == (
        "not shown at this n (held-out AUROC 95% CI includes 0.5)"
    )
    assert verdict_probe({"val_auroc": 0.9}) == "not shown at this n (held-out AUROC has no interval)"
    assert verdict_probe({}).startswith("not measured")
    sel = {
        "precision_complied": 0.9,
        "precision_complied_ci95": [0.6, 0.98],
        "base_rate_complied": 0.4,
        "n_selected": 10,
    }
    assert verdict_selection(sel) == "above the base rate (95% CI excludes it)"
    assert verdict_selection({**sel, "precision_complied_ci95": [0.3, 0.7]}) == (
        "not distinguishable from the base rate at this n (n=10)"
    )
    assert verdict_selection(
        {**sel, "precision_complied": 0.1, "precision_complied_ci95": [0.02, 0.3]}
    ).startswith("below")
    # the base rate from the counts when base_rate_complied is missing
    legacy = {"precision_complied": 0.9, "precision_complied_ci95": [0.6, 0.98], "n_selected": 10,
              "complied_in_pool": 4, "n_pool": 40}  # fmt: skip
    assert verdict_selection(legacy).startswith("above the base rate")
    assert verdict_selection(None).startswith("not measured") and verdict_selection(
        {"n_selected": 0}
    ).startswith("not measured")


def test_number_formats():
    assert fmt_ci(0.6234, [0.391, 0.8123]) == "0.62 [0.39, 0.81]"
    assert fmt_ci(0.62, None) == fmt_ci(0.62, [None, 0.9]) == "0.62"
    assert fmt_ci(None, [0.1, 0.2]) == fmt_ci(float("nan")) == "not measured"
    assert (
        fmt_p(0.0034) == "0.0034" and fmt_p(1.0) == "1" and fmt_p(3e-7) == "<0.0001" and fmt_p(None) == "n/a"
    )


# ---------------------------------------------------------------------------- schema


@pytest.fixture
def results(tmp_path):
    return json.loads((write_synthetic_run(tmp_path / "run") / "results.json").read_text())


def test_schema_accepts_a_complete_results_file(results, tmp_path):
    assert validate_results(results) == []
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert load_results(tmp_path)["model"]["n_heads"] == 4


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda r: r.pop("timings"), "missing required key 'timings'"),
        (lambda r: r["model"].__setitem__("n_layers", "2"), "$.model.n_layers: expected integer"),
        (lambda r: r["probe"].__setitem__("val_accuracy", 1.5), "above the maximum"),
        (lambda r: r["ablation"][1].__setitem__("setting", "top 3 percent"), "does not match the pattern"),
        (lambda r: r["heads"]["top"][0].pop("score"), "$.heads.top[0]: missing required key 'score'"),
        (lambda r: r["cliff"].pop("harmless"), "$.cliff: missing required key 'harmless'"),
        (lambda r: r["model"].__setitem__("n_heads", True), "expected integer, got boolean"),
        (lambda r: r.__setitem__("selection", None), "$.selection: is null"),
    ],
)
def test_schema_rejects(results, mutate, needle):
    bad = copy.deepcopy(results)
    mutate(bad)
    problems = validate_results(bad, raise_on_error=False)
    assert any(needle in p for p in problems), problems
    with pytest.raises(ResultsSchemaError, match="results schema"):
        validate_results(bad)


def test_schema_partial_accepts_a_run_in_progress(results):
    part = {k: results[k] for k in ("model", "timings", "versions")}
    part["probe"] = None
    assert validate_results(part, partial=True) == []
    assert validate_results(part, raise_on_error=False)  # not complete


def test_schema_agrees_with_jsonschema_when_installed(results):
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema not installed (optional cross-check)")
    validator = jsonschema.Draft202012Validator(RESULTS_SCHEMA)
    assert not list(validator.iter_errors(results))
    bad = copy.deepcopy(results)
    bad["ablation"][0]["asr"] = "high"
    bad["model"].pop("source")
    assert len(list(validator.iter_errors(bad))) == len(validate_results(bad, raise_on_error=False)) == 2


def test_load_results_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cliff-lens run"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_results(tmp_path)


# ---------------------------------------------------------------------------- browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium not installed (apt-get install chromium) - browser check skipped"
)
def test_report_in_headless_chromium(full_report, tmp_path, monkeypatch):
    check = _check_module()
    problems, info = check.browser_checks(full_report, CHROMIUM, expect_planted=True)
    assert problems == [], problems
    assert info["views"] == {"ColoredTokens": 5, "AttentionHeads": 1}
    assert info["page_requests"] == [] and info["title"].startswith("cliff_lens report")
    # the same check fails on a report whose tokens reach circuitsvis unescaped
    # (tokenizers split "<script>" into pieces, so plant the payload as a whole token string)
    import cliff_lens.viz.report as report
    import cliff_lens.viz.views as views

    monkeypatch.setattr(views, "esc", lambda s: s)
    monkeypatch.setattr(report, "_token_strings", lambda ctx, ids: [PLANTED_SCRIPT] * len(ids))
    bad = build_report(full_report.parent, out=tmp_path / "bad.html", model=tiny_model_with_tokenizer())
    problems, _ = check.browser_checks(bad, CHROMIUM, expect_planted=True)
    assert any("inserted as HTML" in p for p in problems), problems


@pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium not installed (apt-get install chromium) - browser check skipped"
)
def test_chart_titles_fit_when_rendered(full_report, tmp_path):
    """Every chart title of the report, laid out by Chromium, lies inside its SVG's viewBox."""
    import subprocess

    html = full_report.read_text(encoding="utf-8")
    svgs = re.findall(r'<svg xmlns="http://www.w3.org/2000/svg".*?</svg>', html, re.S)
    assert len(svgs) >= 6
    page = tmp_path / "titles.html"
    page.write_text(
        "<html><body>" + "".join(svgs) + '<pre id="out"></pre><script>var o=[];'
        "document.querySelectorAll('svg').forEach(function(s){var t=s.querySelector('text.cl-title');"
        "if(!t)return;var b=t.getBBox(),v=s.viewBox.baseVal;o.push([b.x,b.x+b.width,v.x,v.x+v.width]"
        ".map(function(x){return x.toFixed(1)}).join(' '));});"
        "document.getElementById('out').textContent=o.join('|');</script></body></html>",
        encoding="utf-8",
    )
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000", "--dump-dom",
         page.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    boxes = [
        [float(x) for x in b.split()]
        for b in re.search(r'<pre id="out">(.*?)</pre>', dom).group(1).split("|")
    ]
    assert len(boxes) == len(svgs)
    for left, right, v0, v1 in boxes:
        assert right - left > 50 and v0 <= left and right <= v1, (left, right, v0, v1)


def test_planted_prompt_is_the_documented_one():
    assert PLANTED_SCRIPT.startswith("<script>document.title='PWNED'")


def test_each_top_row_shows_its_own_empirical_p(tmp_path):
    """Two top-k% rows of the same k (paper and contrast ranking) share one random_summary; each
    row's line and verdict carry its own ``vs_random.asr_empirical_p``, not the first row's."""
    run = write_synthetic_run(tmp_path / "run")
    aj = json.loads((run / "ablation.json").read_text())
    rows = aj["settings"]
    i = next(j for j, r in enumerate(rows) if r["setting"] == "top-3%")
    rows[i]["vs_random"]["asr_empirical_p"] = 1 / 6
    contrast = copy.deepcopy(rows[i])
    contrast.update(setting="top-3% contrast", asr=0.5)
    contrast["vs_random"]["asr_empirical_p"] = 4 / 6
    rows.insert(i + 1, contrast)
    summary = next(r for r in rows if r.get("kind") == "random_summary")
    assert summary["top_setting"] == "top-3%" and summary["top_asr_empirical_p"] == pytest.approx(1 / 6)
    (run / "ablation.json").write_text(json.dumps(aj))
    secs = _sections(build_report(run).read_text(encoding="utf-8"))
    f = _findings(secs["findings"])["ablation"]
    assert "top-3% vs random: empirical p=0.17" in f
    assert "top-3% contrast vs random: empirical p=0.67" in f
    assert "top-3% contrast verdict:" in f and "(empirical p=0.67 vs 5 random sets;" in f
    # the raw table too
    assert re.search(r"top-3% contrast</td>.*?<td>0\.67</td>", secs["ablation"], re.S)


def test_ablation_section_shows_the_held_out_design(full_report):
    """The held-out headline with the in-sample figure beside it (labelled), both nulls with each
    row's own p, the Holm table, the design's checks, head stability and the escaped audit."""
    secs = _sections(full_report.read_text(encoding="utf-8"))
    ab = secs["ablation"]
    assert "Held-out headline" in ab and "<b>top-3% (in-sample)</b> (ranked on every rollout" in ab
    assert "<td>top-3% (in-sample)</td>" in ab and "<td>top-3% in-sample</td>" not in ab
    assert "<td>layer-matched</td><td>5</td><td>top-3%</td>" in ab
    assert re.search(r"<td>top-3%</td><td>0\.19</td><td>0\.17 \(not significant, 5 sets\)</td>", ab)
    # Holm: raw and adjusted p, each with its decision
    assert (
        "<td>top-3%: ASR vs baseline (McNemar)</td><td>0.00012</td><td>yes</td><td>0.00049</td><td>yes</td>"
        in ab
    )
    assert "<td>top-3%: ASR vs uniform random sets</td><td>0.17</td><td>no</td><td>0.5</td><td>no</td>" in ab
    assert "Every held-out check is disjoint." in ab and "NOT DISJOINT" not in ab
    assert "overlaps (in-sample by design)" in ab
    assert "<td>L1H2</td><td>95% of 20 resamples</td>" in ab
    audit = ab[ab.index("<details><summary>Audit") :]
    assert "baseline vs top-3% (32 prompts)" in audit and "<script>" not in audit
    assert "&lt;script&gt;document.title" in audit
    # within-set numbers in the trajectory and selection sections
    assert (
        "Within each prompt set" in secs["trajectory"]
        and "no interval (none (n &lt; 10))" in secs["trajectory"]
    )
    assert "framing-stratified baseline 0.80" in secs["selection"] and "exact p=0.28" in secs["selection"]


def test_a_leaking_run_shows_its_failing_checks(tmp_path):
    run = write_synthetic_run(tmp_path / "run", leak=True)
    ab = _sections(build_report(run).read_text(encoding="utf-8"))["ablation"]
    assert '<p class="error">A held-out claim is not held out' in ab
    assert '<td class="verdict v-no">NOT DISJOINT</td><td>synthetic-h00</td>' in ab
    assert '<td class="verdict v-no">NOT DISJOINT</td><td>synthetic-b08</td>' in ab


def test_matched_null_p_shown_is_the_rows_own(tmp_path):
    run = write_synthetic_run(tmp_path / "run")
    aj = json.loads((run / "ablation.json").read_text())
    top = next(r for r in aj["settings"] if r["setting"] == "top-3%")
    top["vs_random_matched"]["asr_empirical_p"] = 0.5  # its summary row still says 1/6
    (run / "ablation.json").write_text(json.dumps(aj))
    secs = _sections(build_report(run).read_text(encoding="utf-8"))
    assert "top-3% vs layer-matched: empirical p=0.5" in _findings(secs["findings"])["ablation"]
    assert re.search(
        r"<td>top-3%</td><td>0\.19</td><td>[^<]*</td><td>0\.5 \(not significant", secs["ablation"]
    )
