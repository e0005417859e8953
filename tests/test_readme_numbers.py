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


# --- generated blocks of docs/selection.md and the model card -----------------------------------

RESULTS = ROOT / "benchmarks" / "results"
CARD = ROOT / "cliff_lens" / "organism" / "MODEL_CARD.md"


def _tables():
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "scripts" / "readme_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_every_generated_block_equals_its_regeneration():
    """Regenerate with: python scripts/readme_tables.py (README, docs/selection.md, model card)."""
    t = _tables()
    for path, named in t.blocks().items():
        text = path.read_text()
        for name, body in named.items():
            assert t.between(text, name) == body, f"{path.name}: block {name} is stale"


def _de(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _at(d: dict, method: str, percent: float) -> dict:
    return next(r for r in d["curves"][method] if r["percent"] == percent)


def _seeds(d: dict, percent: float) -> list[float]:
    return [r["asr"] for r in d["curves"]["random_per_seed"] if r["percent"] == percent]


def test_data_efficiency_prose_equals_the_result_files():
    """The numbers in docs/selection.md's and the README's prose around the generated tables."""
    t = _tables()
    docs = _flat((ROOT / "docs" / "selection.md").read_text())
    readme = _flat((ROOT / "README.md").read_text())
    runs = {f: _de(f) for f in t.DATA_EFFICIENCY.values()}
    one, prev, eq = (runs[f] for f in t.DATA_EFFICIENCY.values())
    for d in runs.values():  # the shared settings the section states once
        assert d["pool_size"] == 100 and d["percents"] == [10.0, 25.0, 100.0]
        assert d["random_seeds"] == [0, 1, 2] and d["n_harmful"] == d["n_harmless"] == 20
        c = d["config"]
        assert (c["epochs"], c["lora_r"], c["lr"], c["batch_size"]) == (1, 8, 2e-4, 8)
        assert d["max_new_tokens"] == 128
    assert "a 100-rollout pool, percents 10/25/100, random seeds 0/1/2" in docs
    assert "LoRA (r 8, lr 2e-4, batch 8)" in docs and "20 held-out AdvBench prompts" in docs
    assert (
        "--pool 100 --n-eval 20" in docs and "--max-new-tokens 128 --percents 10,25,100 --seeds 0,1,2" in docs
    )
    assert "(20 + 20 evaluation prompts)" in readme and "of 10% or 25% of the pool" in readme
    assert "more than one prompt (0.05) below the lowest random seed" in readme
    # one prompt is 0.05; a 95% interval at 20 prompts is about +-0.2
    assert "one prompt is 0.05" in docs and "about +-0.2 wide" in docs
    lo, hi = t.wilson_interval(10, 20)
    assert 0.18 < (hi - lo) / 2 < 0.22
    # one epoch: 2-4 steps at 10/25%, 13 for the pool; no selection more than one prompt off baseline
    assert [t._steps(one, k) for k in (10, 25, 100)] == [2, 4, 13] and eq["config"]["steps"] == 13
    assert "is 2-4 optimizer steps" in docs and "the whole pool (13 steps)" in docs and "`--steps 13`" in docs
    small = [
        r for m in ("cliff", "final", "rule", "random_per_seed") for r in one["curves"][m] if r["k"] < 100
    ]
    assert max(abs(r["asr"] - one["baseline"]["asr"]) for r in small) <= 0.05 + 1e-9
    pool, base = t.count_rate(_at(one, "cliff", 100)["asr"], 20), t.count_rate(one["baseline"]["asr"], 20)
    assert pool.value < base.value and pool.high >= base.low  # lower, intervals overlap: not established
    assert _at(one, "cliff", 100)["over_refusal"] == 0
    # earlier adapter, one epoch: within two prompts of the baseline, only the pool lowers it, with over-refusal
    small = [
        r for m in ("cliff", "final", "rule", "random_per_seed") for r in prev["curves"][m] if r["k"] < 100
    ]
    assert max(abs(r["asr"] - prev["baseline"]["asr"]) for r in small) <= 0.10 + 1e-9
    assert (
        _at(prev, "cliff", 100)["asr"] < prev["baseline"]["asr"]
        and _at(prev, "cliff", 100)["over_refusal"] > 0
    )
    # equal compute: 10% about as low as the pool; cliff/final one prompt below the lowest random seed
    assert all(
        abs(_at(eq, m, 10)["asr"] - _at(eq, m, 100)["asr"]) <= 0.10 + 1e-9 for m in ("cliff", "final", "rule")
    )
    best = min(_at(eq, m, 10)["asr"] for m in ("cliff", "final"))
    assert (round(best * 20), round(min(_seeds(eq, 10)) * 20)) == (9, 10)
    assert "(9/20 against 10/20)" in docs
    assert round((max(_seeds(eq, 25)) - min(_seeds(eq, 25))) * 20) == 7 and "range over seven prompts" in docs
    repaired = [r for m in ("cliff", "final", "rule", "random_per_seed") for r in eq["curves"][m]]
    assert eq["baseline"]["over_refusal"] == 0 and all(r["over_refusal"] > 0 for r in repaired)
    assert "the baseline's 0/20" in docs
    # README's one sentence: no 10%/25% selection more than one prompt below the lowest random seed
    for d in runs.values():
        for p in (10.0, 25.0):
            assert (
                min(_at(d, m, p)["asr"] for m in ("cliff", "final", "rule"))
                >= min(_seeds(d, p)) - 0.05 - 1e-9
            )
    # what the files do not hold is not claimed
    for gone in ("jailbroken by 94", "jailbroken rollouts is 0.58", "72 jailbroken", "precision 1.0"):
        assert gone not in docs and gone not in readme


def _safetensors_sizes(path: Path) -> dict[str, int]:
    import math
    import struct

    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
    return {k: math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def test_model_card_numbers_equal_the_committed_artifacts():
    """The model card's prose numbers: adapter files, BuildConfig, prompt sets, eval and demo results."""
    import math

    from cliff_lens.framings import HELDOUT_FRAMINGS, TRAIN_FRAMINGS
    from cliff_lens.stats import wilson_interval

    card = _flat(CARD.read_text())
    adapter = ROOT / "cliff_lens" / "organism" / "adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    lora = sum(_safetensors_sizes(adapter / "adapter_model.safetensors").values())
    readout = _safetensors_sizes(adapter / "intent_readout.safetensors")
    assert (cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"]) == (16, 32, 0.0)
    assert sorted(cfg["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert cfg["layers_to_transform"] == list(range(18, 30))
    assert f"{lora:,} adapter parameters + {sum(readout.values())} read-out parameters" in card
    assert (
        readout["direction"] == 576 and "576-d refusal-intent read-out" in card and "(576 weights +" in card
    )
    assert f"(fp16, {(adapter / 'adapter_model.safetensors').stat().st_size / 1e6:.1f} MB" in card
    assert "LoRA r=16, alpha=32, dropout 0" in card and "**layers 18-29 only**" in card
    # the build's defaults (BuildConfig is what `build` runs; the card says they are the shipped run)
    src = (ROOT / "cliff_lens" / "organism" / "build.py").read_text()
    for field, value in (
        ("epochs", "3"), ("seed", "0"), ("lr", "1.5e-3"), ("batch_size", "8"), ("warmup_steps", "8"),
        ("lora_r", "16"), ("lora_alpha", "32"), ("first_layer", "18"), ("max_harmless", "80"),
        ("max_near_miss", "60"), ("threads", "2"), ("intent_weight", "1.0"), ("intent_eot_weight", "8.0"),
    ):  # fmt: skip
        assert re.search(rf"\n    {field}: [^=]+= {re.escape(value)}\b", src), field
    assert "clip_grad_norm_(params, 1.0)" in src
    rows = [json.loads(line) for line in (ROOT / "cliff_lens" / "prompts" / "harmful.jsonl").open()]
    n_harmful = sum(r.get("split", "train") == "train" for r in rows)
    n_examples = 2 * (n_harmful + 80 + 60)
    steps = 3 * math.ceil(n_examples / 8)
    assert f"all {n_harmful} harmful train prompts ({n_harmful} pairs), 80 harmless and 60 near-miss" in card
    assert f"**{n_examples} examples**" in card
    assert f"batch 8, 3 epochs = {steps} steps, grad-clip 1.0, seed 0" in card
    assert "AdamW lr 1.5e-3, 8 warmup steps" in card and "`torch.set_num_threads(2)`" in card
    assert "weigh 8x every other target" in card and "`intent_eot_weight = 8.0`" in card
    assert (
        f"The {len(TRAIN_FRAMINGS)} train framings" in card
        and f"the {len(HELDOUT_FRAMINGS)} HELD-OUT" in card
    )
    # the evaluation's settings
    ev = json.loads((RESULTS / "organism_eval.json").read_text())
    assert (ev["n_per_set"], ev["seed"], ev["max_new_tokens"]) == (40, 0, 120)
    assert f"{ev['wall_s']:.0f} s on the 2-core CPU" in card and "--n 40" in card
    assert "max 120 new tokens" in card and "40 prompts per set, seed 0" in card
    lo, hi = wilson_interval(20, 40)
    assert 0.14 < (hi - lo) / 2 < 0.16 and "interval is up to about +-0.15 wide" in card  # widest at k = n/2
    assert "KeywordJudge(mode='start'" in ev["judge"]
    # the demo ablation sentence
    demo = json.loads((DEMO / "results.json").read_text())
    rows = {r["setting"]: r for r in demo["ablation"]}

    def cell(r):
        k, n = r["asr_rate"]["k"], r["asr_rate"]["n"]
        lo, hi = wilson_interval(k, n)
        return f"{k / n:.2f} ({k}/{n}, {lo:.2f}-{hi:.2f})"

    base, top = rows["baseline"], rows["top-3%"]
    assert f"ASR from {cell(base)} to {cell(top)}" in card
    assert top["asr"] > base["asr"] / 2 and top["vs_baseline"]["asr"]["p_value"] < 0.05  # lower, not halved
    assert "set (20 in a half)" in card
    # the thresholds the card quotes from the shipped-adapter test
    shipped = (ROOT / "tests" / "test_organism.py").read_text()
    assert 'm[1]["plateau"] > 0.7 and m[1]["final"] < 0.3' in shipped
    assert 'm[0]["plateau"] > 0.7 and m[0]["final"] > 0.5' in shipped
    assert "> 0.5 for the plain one and < 0.3 for the framed one" in card


def test_model_card_has_no_untied_number():
    """Every number in the card outside the generated tables is one the tests above tie, or a name."""
    t = _tables()
    text = CARD.read_text()
    for name in t.blocks()[CARD]:
        text = text.replace(t.between(text, name), "")
    found = set(re.findall(r"(?<![\w.])\d+(?:[.,]\d+)*(?:e-\d+)?", text))
    tied = {
        "2510.06036", "135", "3000", "1",  # arXiv id, SmolLM2-135M, a framing's name, labels 1/0 and C=1, Step 1
        "576", "1.5", "16", "32", "0", "18", "29", "737,280", "577", "1.5e-3", "8", "3", "288", "1.0",
        "2", "244", "80", "60", "768", "8.0", "10", "297", "40", "120", "0.15", "0.94", "30",
        "0.80", "0.98", "0.56", "0.39", "0.72", "20", "95", "0.7", "0.5", "0.3",
    }  # fmt: skip
    assert found <= tied, f"numbers in MODEL_CARD.md that no test ties: {sorted(found - tied)}"


def test_organism_doc_quotes_no_measurement():
    """docs/organism.md points to the model card's tested tables instead of repeating numbers."""
    text = (ROOT / "docs" / "organism.md").read_text()
    found = set(re.findall(r"(?<![\w.])\d+(?:[.,]\d+)*", text))
    ev = json.loads((RESULTS / "organism_eval.json").read_text())
    assert ev["n_per_set"] == 40 and "`evaluate --n 40`" in text
    assert found <= {"135", "1", "0", "40", "95"}, sorted(found)  # model name, labels 1/0, Step 1, n, 95%
