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
from cliff_lens.viz import build_report
from cliff_lens.viz.synthetic import PLANTED_SCRIPT, tiny_model_with_tokenizer, write_synthetic_run

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
        "model", "probe", "trajectory", "tokens", "layer-position",
        "heads", "attention", "ablation", "selection", "run-info",
    ]  # fmt: skip
    for key, body in secs.items():
        assert "not-run" not in body and 'class="error"' not in body, key
    assert secs["attention"].count('data-component="AttentionHeads"') == 1
    assert secs["tokens"].count('data-component="ColoredTokens"') == 4
    assert 'class="cl-outline"' in secs["heads"]  # the planted suppression head is outlined
    assert "random-3%" in secs["ablation"] and 'class="cl-spread"' in secs["ablation"]


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
    assert "Rollouts (6)" in secs["model"]  # what exists is still shown
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


def test_planted_prompt_is_the_documented_one():
    assert PLANTED_SCRIPT.startswith("<script>document.title='PWNED'")
