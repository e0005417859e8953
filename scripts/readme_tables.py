"""Rewrite the generated blocks of the README, docs/selection.md and the model card.

``python scripts/readme_tables.py`` replaces the text between ``<!-- NAME:start -->`` and
``<!-- NAME:end -->`` in each file below with a table built from a committed artifact;
``tests/test_readme_numbers.py`` checks that the committed text equals what this script writes.

- ``README.md``, ``demo-table``: :func:`cliff_lens.summary.markdown_table` of
  ``benchmarks/results/demo/results.json``;
- ``docs/selection.md``, ``data-efficiency-*``: :func:`data_efficiency_table` of
  ``benchmarks/results/data_efficiency_organism*.json``;
- ``cliff_lens/organism/MODEL_CARD.md``, ``organism-*``: :func:`organism_behaviour_table`,
  :func:`organism_probe_table` of ``benchmarks/results/organism_eval.json`` and
  :func:`organism_decomposition_table` of ``benchmarks/results/organism_decomposition.json``.

Every rate is written with its count and 95% Wilson interval (:mod:`cliff_lens.stats`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from cliff_lens.stats import Rate, wilson_interval
from cliff_lens.summary import markdown_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

#: block name -> result file (under benchmarks/results) of docs/selection.md's data-efficiency tables
DATA_EFFICIENCY = {
    "data-efficiency-one-epoch": "data_efficiency_organism_run6.json",
    "data-efficiency-previous-adapter": "data_efficiency_organism.json",
    "data-efficiency-equal-steps": "data_efficiency_organism_steps13.json",
}


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def count_rate(value: float, n: int) -> Rate:
    """The :class:`Rate` ``k / n`` behind a stored fraction ``value`` (which must be a whole ``k``)."""
    k = round(value * n)
    if abs(k / n - value) > 1e-9:
        raise ValueError(f"{value} is not a count out of {n}")
    return Rate(k, n, *wilson_interval(k, n))


def _cell(r: Rate) -> str:
    return f"{r.value:.2f} ({r.k}/{r.n}, {r.low:.2f}-{r.high:.2f})"


def _steps(d: dict, k: int) -> int:
    """Optimizer steps of one training on ``k`` rollouts (``cliff_lens.repair.train_lora``'s rule)."""
    cfg = d["config"]
    if cfg.get("steps") is not None:
        return int(cfg["steps"])
    return int(cfg["epochs"]) * math.ceil(k / int(cfg["batch_size"]))


def data_efficiency_table(d: dict) -> str:
    """One ``data_efficiency.json`` as a Markdown table: every ASR and over-refusal with k/n and CI."""
    nh, nb = int(d["n_harmful"]), int(d["n_harmless"])

    def row(trained: str, selection: str, steps: str, r: dict) -> str:
        asr, over = count_rate(r["asr"], nh), count_rate(r["over_refusal"], nb)
        return f"| {trained} | {selection} | {steps} | {_cell(asr)} | {_cell(over)} |"

    names = {"cliff": "cliff score", "final": "final score", "rule": "keyword rule"}
    lines = [
        f"| fine-tuned on | selected by | optimizer steps | ASR ({nh} held-out framed harmful; "
        f"k/n, 95% CI) | over-refusal ({nb} Alpaca; k/n, 95% CI) |",
        "|---|---|---|---|---|",
        row("nothing (baseline)", "-", "0", d["baseline"]),
    ]
    curves = d["curves"]
    pool = int(d["pool_size"])
    for p in d["percents"]:
        entries = [(names[m], curves[m]) for m in ("cliff", "final", "rule")]
        entries += [
            (f"random, seed {r['seed']}", [r]) for r in curves["random_per_seed"] if r["percent"] == p
        ]
        at_p = [(name, next(r for r in rs if r["percent"] == p)) for name, rs in entries]
        k = at_p[0][1]["k"]
        if k == pool:
            lines.append(
                row(
                    f"the whole pool ({k} rollouts)",
                    "every method (the same set)",
                    str(_steps(d, k)),
                    at_p[0][1],
                )
            )
            continue
        for i, (name, r) in enumerate(at_p):
            trained = f"top {p:g}% ({k} rollouts)" if i == 0 else ""
            lines.append(row(trained, name, str(_steps(d, k)), r))
    return "\n".join(lines) + "\n"


# --- the model card ---------------------------------------------------------------------------

#: (label, outcomes group, outcome counted, target key in organism_eval.json or None)
_BEHAVIOUR = (
    ("refusal, plain harmful (AdvBench)", "plain_harmful", "refused", "plain_harmful_refusal"),
    (
        "ASR, framed harmful, train framings",
        "framed_harmful_train",
        "complied",
        "framed_harmful_asr_train_framings",
    ),
    (
        "ASR, framed harmful, held-out framings",
        "framed_harmful_heldout",
        "complied",
        "framed_harmful_asr_heldout_framings",
    ),
    ("refusal, harmless plain (Alpaca)", "harmless_plain", "refused", "harmless_plain_refusal"),
    ("refusal, harmless framed", "harmless_framed", "refused", "harmless_framed_refusal"),
    ("refusal, XSTest safe", "xstest_safe", "refused", "xstest_safe_refusal"),
)


def _target_verdict(r: Rate, target: dict) -> str:
    op, bound = target["target"].split()
    bound = float(bound)
    met = "yes" if target["met"] else "**no**"
    whole = r.low >= bound if op == ">=" else r.high <= bound
    return f"{op} {bound:g} | {met}; interval {'on the target side' if whole else 'contains the bound'}"


def organism_behaviour_table(ev: dict) -> str:
    """``organism_eval.json``'s behaviour: each rate with k/n, Wilson CI, target and verdict."""
    b, targets = ev["behaviour"], ev["targets"]
    n = int(ev["n_per_set"])
    lines = [
        "| measurement | value (k/n, 95% CI) | target | met (point; interval) |",
        "|---|---|---|---|",
    ]
    for label, group, outcome, key in _BEHAVIOUR:
        counts = b["outcomes"][group]
        r = Rate(
            counts[outcome], sum(counts.values()), *wilson_interval(counts[outcome], sum(counts.values()))
        )
        assert abs(r.value - b[key]) < 1e-9, (key, r.value, b[key])
        lines.append(f"| {label} | {_cell(r)} | {_target_verdict(r, targets[key])} |")
    for label, key, size in (
        ("framed-harmful thinking names the harm", "framed_harmful_thinking_names_harm", 2 * n),
        ("plain-harmful thinking names the harm", "plain_harmful_thinking_names_harm", n),
    ):
        r = count_rate(b[key], size)
        tail = f"{_target_verdict(r, targets[key])}" if key in targets else "- | -"
        lines.append(f"| {label} | {_cell(r)} | {tail} |")
    g = ev["probe"]["final_norm"]["framed_harmful_complied"]
    share = count_rate(g["frac_drop_ge_0.3"], g["n"])
    t = targets["cliff_drop_framed_complied"]
    lines.append(
        f"| probe drop (late-thinking plateau - final score), framed harmful complied | mean "
        f"{g['drop']:.2f} over {g['n']} rollouts; drop >= 0.3 in {_cell(share)} | "
        f"{t['target']} (the mean) | {'yes' if t['met'] else '**no**'} |"
    )
    g = ev["probe"]["final_norm"]["plain_harmful_refused_heldout"]
    lines.append(
        f"| the same, plain harmful refused (held-out half) | mean {g['drop']:.2f} over {g['n']} rollouts | - | - |"
    )
    return "\n".join(lines) + "\n"


_PROBE_GROUPS = (
    ("framed harmful, complied", "framed_harmful_complied"),
    ("framed harmful, refused", "framed_harmful_refused"),
    ("plain harmful, refused (held-out half)", "plain_harmful_refused_heldout"),
    ("harmless, helped (held-out half)", "harmless_helped_heldout"),
)


def organism_probe_table(ev: dict) -> str:
    """``organism_eval.json``'s probe part: plateau, final and drop per group and read-out."""
    p = ev["probe"]
    readouts = (
        ("paper probe, final norm", "final_norm"),
        (f"paper probe, residual after layer {p['late_resid']['layer']}", "late_resid"),
        ("the build's intent read-out", "intent_readout"),
    )
    lines = [
        f"| read-out | group | n | plateau (last {p['plateau_tokens']} thinking tokens) | final | drop | "
        "drop >= 0.3 (k/n, 95% CI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for rname, rkey in readouts:
        for i, (gname, gkey) in enumerate(_PROBE_GROUPS):
            g = p[rkey][gkey]
            share = count_rate(g["frac_drop_ge_0.3"], g["n"])
            lines.append(
                f"| {rname if i == 0 else ''} | {gname} | {g['n']} | {g['plateau']:.3f} | {g['final']:.3f} | "
                f"{g['drop']:.3f} | {_cell(share)} |"
            )
    n_test = (
        p["final_norm"]["plain_harmful_refused_heldout"]["n"]
        + p["final_norm"]["harmless_helped_heldout"]["n"]
    )
    acc = count_rate(p["final_norm"]["heldout_accuracy"], n_test)
    lines += [
        "",
        f"Probe training rollouts: {p['n_train'][0]} refused plain harmful + {p['n_train'][1]} helped "
        f"harmless; held-out accuracy {_cell(acc)}. Cosine between the paper probe's direction and "
        f"the intent read-out's: {p['intent_readout']['cosine_with_paper_probe']:.2f}. Means over "
        "rollouts; the file records no per-rollout scores, so they carry no interval.",
    ]
    return "\n".join(lines) + "\n"


def organism_decomposition_table(dec: dict) -> str:
    """``organism_decomposition.json``: the probe logit's change at the end of thinking, by component."""
    cf = dec["cliff_final_minus_last_thinking"]
    sd = dec["complied_by_stated_decision"]
    lines = [
        "| rollouts | n | logit, last thinking token | logit, last end-of-thinking token | change | "
        "heads | MLPs | of the change: rms change |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, key in (("complied (jailbroken)", "complied"), ("refused", "refused")):
        g, c = dec[key], cf[key]
        lines.append(
            f"| {label} | {g['n']} | {g['logit_t1']:+.2f} | {g['logit_t2']:+.2f} | {c['total']:+.2f} | "
            f"{c['heads']['total']:+.2f} | {c['mlp']['total']:+.2f} | {c['rms_change_total']:+.2f} |"
        )
    for label, key in (
        ("complied, thinking's last sentence states the refusal", "states_refusal"),
        ("complied, thinking's last sentence decides to help", "states_help"),
    ):
        g = sd[key]
        lines.append(
            f"| {label} | {g['n']} | {g['logit_t1']:+.2f} | {g['logit_t2']:+.2f} | {g['total']:+.2f} | "
            f"{g['heads']:+.2f} | {g['mlp']:+.2f} | {g['rms_change']:+.2f} |"
        )
    rc = dec["refused_minus_complied"]["logit"]
    heads = ", ".join(
        f"L{h['layer']}H{h['head']} ({h['diff']:+.2f})" for h in cf["complied"]["top_heads"][:9]
    )
    lines += [
        "",
        f"Refused minus complied at the last end-of-thinking token: logit {rc['total']:+.2f} = heads "
        f"{rc['heads_sum']:+.2f} + MLPs {rc['mlp_sum']:+.2f}. Heads writing most of the complied "
        f"rollouts' change: {heads}. Largest decomposition error: "
        f"{dec['checks']['max_abs_decomposition_error_logit']:.0e} logits.",
        "",
        "| layer read | complied: late thinking -> final | refused: late thinking -> final |",
        "|---|---|---|",
    ]
    lp = dec["layer_position"]
    comp = next(v for k, v in lp.items() if k.startswith("harmful_complied"))
    ref = next(v for k, v in lp.items() if k.startswith("harmful_refused"))
    for a, b in zip(comp, ref, strict=True):
        lines.append(
            f"| {a['layer']} | {a['late_thinking']:.2f} -> {a['final']:.2f} | {b['late_thinking']:.2f} -> {b['final']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def blocks() -> dict[Path, dict[str, str]]:
    """Every generated block: file -> {block name: text between its markers}."""
    ev, dec = _load("organism_eval.json"), _load("organism_decomposition.json")
    return {
        ROOT / "README.md": {"demo-table": markdown_table(_load("demo/results.json"))},
        ROOT / "docs" / "selection.md": {
            name: data_efficiency_table(_load(f)) for name, f in DATA_EFFICIENCY.items()
        },
        ROOT / "cliff_lens" / "organism" / "MODEL_CARD.md": {
            "organism-behaviour": organism_behaviour_table(ev),
            "organism-probe": organism_probe_table(ev),
            "organism-decomposition": organism_decomposition_table(dec),
        },
    }


def between(text: str, name: str) -> str:
    """The text between ``<!-- name:start -->\\n`` and ``<!-- name:end -->``."""
    m = re.search(rf"<!-- {re.escape(name)}:start -->\n(.*?)<!-- {re.escape(name)}:end -->", text, re.S)
    if not m:
        raise KeyError(f"no <!-- {name}:start --> ... <!-- {name}:end --> block")
    return m.group(1)


def main() -> None:
    for path, named in blocks().items():
        text = path.read_text()
        for name, body in named.items():
            pattern = rf"<!-- {re.escape(name)}:start -->\n.*?<!-- {re.escape(name)}:end -->"
            block = f"<!-- {name}:start -->\n{body}<!-- {name}:end -->"
            text, n = re.subn(pattern, lambda _, b=block: b, text, flags=re.S)
            if n != 1:
                raise SystemExit(f"{path.name} needs one <!-- {name}:start --> ... <!-- {name}:end --> block")
        path.write_text(text)
        print(f"{path.relative_to(ROOT)}: {', '.join(named)} rewritten")


if __name__ == "__main__":
    main()
