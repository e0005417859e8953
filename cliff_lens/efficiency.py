"""The data-efficiency experiment: is "less is more" true for Cliff-as-a-Judge?

:func:`data_efficiency` fine-tunes (LoRA, :mod:`cliff_lens.repair`) a fresh copy of the model
on the top p% of a scored rollout pool for each selection method and each percent, and measures
ASR on held-out harmful prompts and over-refusal on harmless prompts after each run:

- ``cliff``: misalignment ``plateau - final`` (the paper's text);
- ``final``: ``-final`` (the official code);
- ``random``: seeded random subsets (one run per seed; mean, min and max reported);
- ``rule``: answer-only keyword judge (complied answers first, ties by id).

Identical selections (e.g. every method at 100%) are trained once and shared. Every finished
run is appended to ``out_dir/runs.jsonl``, so an interrupted experiment resumes where it
stopped. Outputs: ``out_dir/data_efficiency.json`` and ``out_dir/data_efficiency.svg`` (a
hand-written SVG plot; no plotting dependency).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .io import append_jsonl, atomic_write_json, atomic_write_text, iter_jsonl

if TYPE_CHECKING:
    from .config import SelectionVariant

__all__ = ["data_efficiency", "efficiency_svg", "DEFAULT_PERCENTS", "DEFAULT_METHODS"]

DEFAULT_PERCENTS: tuple[float, ...] = (5, 10, 25, 50, 100)
DEFAULT_METHODS: tuple[str, ...] = ("cliff", "final", "random", "rule")


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _key(ids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def _selections(
    pool_ids: list[str],
    scores: dict[str, dict],
    rollouts: list[Any],
    methods: Sequence[str],
    percents: Sequence[float | int],
    seeds: Sequence[int],
    judge: Any,
) -> list[tuple[str, float | int, int | None, list[str]]]:
    from .selection import misalignment_scores, random_selection, rule_based_scores, select

    out: list[tuple[str, float | int, int | None, list[str]]] = []
    plateau = [scores[i]["plateau"] for i in pool_ids]
    final = [scores[i]["final"] for i in pool_ids]
    rule = None
    for m in methods:
        for p in percents:
            if m in ("cliff", "final"):
                variant: SelectionVariant = "cliff" if m == "cliff" else "final"
                sel = select(pool_ids, misalignment_scores(plateau, final, variant), top_percent=p, method=m)
                out.append((m, p, None, sel.ids))
            elif m == "random":
                for s in seeds:
                    out.append((m, p, s, random_selection(pool_ids, seed=s, top_percent=p).ids))
            elif m == "rule":
                if rule is None:
                    rule = rule_based_scores(rollouts, judge)
                out.append((m, p, None, select(rule[0], rule[1], top_percent=p, method="rule").ids))
            else:
                raise ValueError(f"unknown method {m!r}; choose from {DEFAULT_METHODS}")
    return out


def data_efficiency(
    model: Any,
    tokenizer: Any,
    rollouts: Iterable[Any],
    scores: str | os.PathLike | Iterable[dict],
    harmful_prompts: Sequence[str],
    harmless_prompts: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    template: Any = "generic",
    judge: Any = None,
    percents: Sequence[float | int] = DEFAULT_PERCENTS,
    methods: Sequence[str] = DEFAULT_METHODS,
    random_seeds: Sequence[int] = (0, 1, 2),
    config: Any = None,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Run the data-efficiency experiment; returns (and writes) the results dict.

    Args:
        model: the HF model to repair (never modified: each run trains a deep copy), or a
            zero-argument callable returning a fresh one.
        tokenizer: its tokenizer.
        rollouts: the pool (``Rollout`` objects or dicts with ``id``, ``prompt``, ``thinking``,
            ``answer``, ``meta``); only rollouts that have a score are used.
        scores: a score file from :func:`cliff_lens.scoring.score_pool` / ``merge_scores``, or
            its records (``id``, ``plateau``, ``final``).
        harmful_prompts / harmless_prompts: held-out evaluation prompts.
        out_dir: where ``runs.jsonl``, ``sft/*.jsonl``, ``data_efficiency.json`` and ``.svg`` go.
        template / judge / max_new_tokens / batch_size: see :func:`cliff_lens.repair.evaluate_safety`.
        percents / methods / random_seeds: the grid.
        config: a :class:`cliff_lens.repair.RepairConfig` (same for every run).

    Returns:
        ``{"baseline": {...}, "curves": {method: [{"percent", "k", "asr", "over_refusal", ...}]},
        "pool_size", "config", ...}``.
    """
    from .repair import RepairConfig

    cfg = config or RepairConfig()
    out = Path(out_dir)
    (out / "sft").mkdir(parents=True, exist_ok=True)
    say = log or (lambda s: None)
    pool, pool_ids, by_id = _scored_pool(rollouts, scores, say)
    fresh = model if callable(model) and not hasattr(model, "generate") else (lambda: copy.deepcopy(model))
    ev = dict(template=template, judge=judge, max_new_tokens=max_new_tokens, batch_size=batch_size)

    runs_path = out / "runs.jsonl"
    done = _finished_runs(runs_path)
    settings = {
        "config": asdict(cfg),
        "max_new_tokens": max_new_tokens,
        "n_harmful": len(harmful_prompts),
        "n_harmless": len(harmless_prompts),
        "template": str(getattr(template, "name", template)),
    }
    fp = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def run_once(run: str, ids: list[str] | None) -> dict:
        key = f"{fp}:{run}"
        if key in done:
            return done[key]
        t0 = time.perf_counter()
        res, train = _train_and_evaluate(
            fresh,
            tokenizer,
            pool,
            ids,
            out / "sft" / f"{run}.jsonl",
            harmful_prompts,
            harmless_prompts,
            ev=ev,
            template=template,
            config=cfg,
            progress=progress,
        )
        rec = _run_record(key, res, ids, train, t0)
        append_jsonl(runs_path, [rec])
        done[key] = rec
        say(
            f"[data-efficiency] {run}: k={rec['k']} asr={rec['asr']:.3f} over_refusal={rec['over_refusal']:.3f} ({rec['wall_s']:.0f}s)"
        )
        return rec

    baseline = run_once("baseline", None)
    grid = _selections(pool_ids, by_id, pool, methods, percents, random_seeds, judge)
    curves = _curves(grid, run_once, percents)
    result = {
        "pool_size": len(pool_ids),
        "percents": list(percents),
        "methods": list(methods),
        "random_seeds": list(random_seeds),
        "baseline": {"asr": baseline["asr"], "over_refusal": baseline["over_refusal"]},
        "curves": curves,
        "n_trainings": len({k for k in done if k.startswith(fp + ":sel-")}),
        **settings,
    }
    atomic_write_json(out / "data_efficiency.json", result)
    atomic_write_text(out / "data_efficiency.svg", efficiency_svg(result))
    return result


def _run_record(key: str, res: dict, ids: list[str] | None, train: dict | None, t0: float) -> dict:
    """The ``runs.jsonl`` record of one finished run (safety metrics, selection size, training stats)."""
    return {
        "run": key,
        "asr": res["asr"],
        "over_refusal": res["over_refusal"],
        "unclosed_harmful": res["unclosed_harmful"],
        "unclosed_harmless": res["unclosed_harmless"],
        "k": 0 if ids is None else len(ids),
        "train": train,
        "wall_s": time.perf_counter() - t0,
    }


def _curves(
    grid: list[tuple[str, float | int, int | None, list[str]]],
    run_once: Callable[[str, list[str] | None], dict],
    percents: Sequence[float | int],
) -> dict[str, list[dict]]:
    """Run (or reuse) every selection of the grid; per method its points, random ones averaged over seeds."""
    curves: dict[str, list[dict]] = {}
    for m, p, s, ids in grid:
        rec = run_once(f"sel-{_key(ids)}", ids)
        entry = {"percent": p, "k": len(ids), "asr": rec["asr"], "over_refusal": rec["over_refusal"]}
        if s is not None:
            entry["seed"] = s
        curves.setdefault(m, []).append(entry)
    if "random" in curves:
        curves["random_per_seed"] = curves.pop("random")
        curves["random"] = _random_means(curves["random_per_seed"], percents)
    return curves


def _scored_pool(
    rollouts: Iterable[Any], scores: str | os.PathLike | Iterable[dict], say: Callable[[str], None]
) -> tuple[list[Any], list[str], dict[str, dict]]:
    """The rollouts with a finite score, their ids, and the score records by id."""
    from .selection import SelectionError

    score_recs = list(iter_jsonl(scores)) if isinstance(scores, (str, os.PathLike)) else list(scores)
    by_id = {str(r["id"]): r for r in score_recs}
    pool = [r for r in rollouts if str(_get(r, "id")) in by_id]
    if not pool:
        raise SelectionError("no rollout of the pool has a score; pass the score file of this pool")
    pool_ids = [str(_get(r, "id")) for r in pool]
    bad = [
        i for i in pool_ids if not (math.isfinite(by_id[i]["plateau"]) and math.isfinite(by_id[i]["final"]))
    ]
    if bad:
        say(f"dropping {len(bad)} rollouts with NaN plateau/final (e.g. no thinking tokens): {bad[:3]}")
        keep = set(pool_ids) - set(bad)
        pool = [r for r in pool if str(_get(r, "id")) in keep]
        pool_ids = [i for i in pool_ids if i in keep]
    return pool, pool_ids, by_id


def _finished_runs(runs_path: Path) -> dict[str, dict]:
    """Run records already in ``runs.jsonl`` (resume), by run key."""
    done: dict[str, dict] = {}
    if runs_path.exists():
        for r in iter_jsonl(runs_path, on_error="skip"):
            done[r["run"]] = r
    return done


def _train_and_evaluate(
    fresh: Callable[[], Any],
    tokenizer: Any,
    pool: list[Any],
    ids: list[str] | None,
    sft: Path,
    harmful_prompts: Sequence[str],
    harmless_prompts: Sequence[str],
    *,
    ev: dict[str, Any],
    template: Any,
    config: Any,
    progress: bool,
) -> tuple[dict, dict | None]:
    """Evaluate a fresh model (``ids=None``) or one LoRA-tuned on the selection ``ids``; with training stats."""
    from .repair import evaluate_safety, train_lora
    from .selection import export_sft

    if ids is None:
        return evaluate_safety(fresh(), tokenizer, harmful_prompts, harmless_prompts, **ev), None
    export_sft(pool, str(sft), selection=ids, template=template)
    pm, train = train_lora(
        fresh(), tokenizer, iter_jsonl(sft), template=template, config=config, progress=progress
    )
    res = evaluate_safety(pm.merge_and_unload(), tokenizer, harmful_prompts, harmless_prompts, **ev)
    return res, {k: train[k] for k in ("n_examples", "n_steps", "epoch_mean_loss", "wall_s")}


def _random_means(per_seed: list[dict], percents: Sequence[float | int]) -> list[dict]:
    """Per percent, the mean, min and max ASR and over-refusal over the random-selection seeds."""
    agg = []
    for p in percents:
        rs = [e for e in per_seed if e["percent"] == p]
        a = [e["asr"] for e in rs]
        o = [e["over_refusal"] for e in rs]
        agg.append(
            {
                "percent": p,
                "k": rs[0]["k"],
                "asr": sum(a) / len(a),
                "asr_min": min(a),
                "asr_max": max(a),
                "over_refusal": sum(o) / len(o),
                "over_refusal_min": min(o),
                "over_refusal_max": max(o),
                "seeds": [e["seed"] for e in rs],
            }
        )
    return agg


_COLORS = {"cliff": "#d62728", "final": "#1f77b4", "random": "#7f7f7f", "rule": "#2ca02c"}


def efficiency_svg(result: dict, *, width: int = 760, height: int = 300) -> str:
    """Two panels (ASR, over-refusal) vs percent of the pool, one line per method; an SVG string.

    Random: mean with a min-max bar over seeds. Baseline (no fine-tuning): dashed line.
    """
    percents = list(result["percents"])
    panels = [("asr", "ASR (harmful, held out)"), ("over_refusal", "over-refusal (harmless)")]
    pw, ph, ml, mt = (width - 40) / 2, height - 70, 50, 30
    xs = {p: ml + (pw - ml - 10) * (k / max(1, len(percents) - 1)) for k, p in enumerate(percents)}

    def y(v: float | int) -> float:
        return mt + ph * (1 - (0.0 if not math.isfinite(v) else max(0.0, min(1.0, v))))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for pi, (metric, title) in enumerate(panels):
        ox = 20 + pi * pw
        parts.append(f'<g transform="translate({ox:.1f},0)">')
        parts.append(f'<text x="{ml}" y="18" font-size="13">{title}</text>')
        parts.append(f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="black"/>')
        parts.append(f'<line x1="{ml}" y1="{mt + ph}" x2="{pw - 10}" y2="{mt + ph}" stroke="black"/>')
        for t in (0, 0.25, 0.5, 0.75, 1.0):
            parts.append(f'<text x="{ml - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
            parts.append(f'<line x1="{ml}" y1="{y(t):.1f}" x2="{pw - 10}" y2="{y(t):.1f}" stroke="#eee"/>')
        for p, x in xs.items():
            parts.append(f'<text x="{x:.1f}" y="{mt + ph + 15}" text-anchor="middle">{p:g}%</text>')
        parts.append(
            f'<text x="{(ml + pw) / 2:.1f}" y="{mt + ph + 32}" text-anchor="middle">percent of pool used</text>'
        )
        b = result["baseline"][metric]
        parts.append(
            f'<line x1="{ml}" y1="{y(b):.1f}" x2="{pw - 10}" y2="{y(b):.1f}" stroke="black" stroke-dasharray="4 3"/>'
        )
        for m, pts in result["curves"].items():
            if m == "random_per_seed":
                continue
            c = _COLORS.get(m, "#9467bd")
            pts = [e for e in pts if e["percent"] in xs]
            path = " ".join(f"{xs[e['percent']]:.1f},{y(e[metric]):.1f}" for e in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
            for e in pts:
                x = xs[e["percent"]]
                if f"{metric}_min" in e:
                    parts.append(
                        f'<line x1="{x:.1f}" y1="{y(e[metric + "_min"]):.1f}" x2="{x:.1f}" '
                        f'y2="{y(e[metric + "_max"]):.1f}" stroke="{c}"/>'
                    )
                parts.append(f'<circle cx="{x:.1f}" cy="{y(e[metric]):.1f}" r="3" fill="{c}"/>')
        parts.append("</g>")
    lx = 20 + ml
    legend = [(m, _COLORS.get(m, "#9467bd")) for m in result["curves"] if m != "random_per_seed"]
    for k, (m, c) in enumerate(legend + [("baseline (no SFT)", "black")]):
        x = lx + k * 130
        parts.append(
            f'<line x1="{x}" y1="{height - 8}" x2="{x + 18}" y2="{height - 8}" stroke="{c}" stroke-width="2"/>'
        )
        parts.append(f'<text x="{x + 22}" y="{height - 4}">{m}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
