"""``build_report(run_dir)``: one self-contained, offline ``report.html`` for a run directory.

The page inlines the circuitsvis bundle once (in ``<head>``) and every circuitsvis view calls
``CircuitsVis.render`` on its own ``<div>``; charts are inline SVG; CSS is inline; nothing is
fetched (a Content-Security-Policy with ``default-src 'none'`` and a per-report script nonce
enforces it, so even a ``<script>`` that slipped into the page would not run). All user text
(prompts, thinking, answers, token strings, ids, file contents) is HTML-escaped, and data
passed to JavaScript is JSON with ``<``, ``>``, ``&`` escaped.

Each section reads its stage files (see ``docs/results_schema.md``); a missing file makes that
section say "not run" and a corrupt one shows the error, instead of failing the whole report.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cliff_lens.io import atomic_write_text, iter_jsonl

from .html import circuitsvis_bundle, esc
from .views import (
    asr_bars,
    head_heatmap,
    layer_position_map,
    refusal_tokens,
    suppression_head_attention,
    trajectory_plot,
)

__all__ = ["build_report", "ReportData", "load_run"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:16px 24px 60px}
nav{background:#fff;border-bottom:1px solid #ddd;padding:8px 24px;position:sticky;top:0;z-index:2000}
nav a{margin-right:14px;color:#1f4e8c;text-decoration:none;font-size:14px}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:12px 18px;margin:16px 0}
h1{font-size:22px}h2{font-size:18px;margin-top:4px}h3{font-size:15px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.not-run{color:#8a6d3b;background:#fcf8e3;border:1px solid #faebcc;padding:6px 10px;border-radius:4px}
.error{color:#a94442;background:#f2dede;border:1px solid #ebccd1;padding:6px 10px;border-radius:4px;white-space:pre-wrap}
.user-text{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px;background:#f7f7f7;padding:4px 6px;max-height:220px;overflow:auto}
.cv-title{font-size:13px;font-weight:600;margin-top:10px}
.note{font-size:12px;color:#555}
details summary{cursor:pointer}
"""

SECTIONS = [
    ("model", "Model & data"),
    ("probe", "Probe"),
    ("trajectory", "Trajectory"),
    ("tokens", "Per-rollout tokens"),
    ("layer-position", "Layer x position"),
    ("heads", "Heads"),
    ("attention", "Attention of suppression heads"),
    ("ablation", "Ablation & ASR"),
    ("selection", "Selection"),
    ("run-info", "Timings & versions"),
]


class _NotRun(Exception):
    """A section's inputs are missing; the message says which and how to produce them."""


class ReportData:
    """Lazy, tolerant access to the files of a run directory."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.dir = Path(run_dir)
        if not self.dir.is_dir():
            raise FileNotFoundError(
                f"run directory {self.dir} does not exist; run `cliff-lens run ... --out {self.dir}` first"
            )
        self._cache: dict[str, Any] = {}

    def path(self, name: str) -> Path:
        """Path of a stage file inside the run directory."""
        return self.dir / name

    def has(self, name: str) -> bool:
        """Whether a stage file exists."""
        return self.path(name).exists()

    def json(self, name: str, *, required_by: str = "") -> Any:
        """Parsed JSON file (``_NotRun`` when missing)."""
        if name not in self._cache:
            p = self.path(name)
            if not p.exists():
                raise _NotRun(f"{name} is missing" + (f" ({required_by})" if required_by else ""))
            try:
                self._cache[name] = json.loads(p.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{p} is not valid JSON ({e}); re-run the stage that writes it") from None
        return self._cache[name]

    def results(self) -> dict[str, Any]:
        """``results.json`` or ``{}``."""
        try:
            r = self.json("results.json")
        except _NotRun:
            return {}
        return r if isinstance(r, dict) else {}

    def tensors(self, name: str) -> dict[str, np.ndarray]:
        """Tensors of a safetensors file as float numpy arrays (``_NotRun`` when missing)."""
        key = "tensors:" + name
        if key not in self._cache:
            p = self.path(name)
            if not p.exists():
                raise _NotRun(f"{name} is missing")
            from safetensors.numpy import load_file

            try:
                self._cache[key] = {k: v.astype(np.float64) for k, v in load_file(str(p)).items()}
            except Exception as e:  # noqa: BLE001 - report the corrupt file, keep the page
                raise ValueError(
                    f"{p} is not a readable safetensors file ({e}); re-run the stage that writes it"
                ) from None
        return self._cache[key]

    def labels(self) -> dict[str, dict]:
        """``id -> {"harmful", "refused", ...}`` from ``labels.jsonl`` (empty when missing)."""
        if "labels" not in self._cache:
            out: dict[str, dict] = {}
            if self.has("labels.jsonl"):
                for rec in iter_jsonl(self.path("labels.jsonl"), on_error="skip"):
                    if "id" in rec:
                        out[str(rec["id"])] = rec
            self._cache["labels"] = out
        return self._cache["labels"]

    def labelled_rollouts(self) -> Iterator[dict]:
        """Stream ``rollouts.jsonl`` records with ``harmful``/``refused`` from ``labels.jsonl`` merged in."""
        p = self.path("rollouts.jsonl")
        if not p.exists():
            raise _NotRun("rollouts.jsonl is missing (the rollouts stage)")
        labels = self.labels()
        for rec in iter_jsonl(p, on_error="skip"):
            lab = labels.get(str(rec.get("id")))
            if lab:
                rec = {**rec, **{k: lab[k] for k in ("harmful", "refused", "thinking_closed") if k in lab}}
            yield rec

    def rollouts(self, *, keep: int = 4) -> tuple[Counter, list[dict], int]:
        """Stream ``rollouts.jsonl``: counts by (source, harmful, refused), a few examples per
        class (harmful / harmless), and the number of malformed lines skipped."""
        key = f"rollouts:{keep}"
        if key not in self._cache:
            counts: Counter = Counter()
            examples: dict[Any, list[dict]] = {}
            import warnings

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for rec in self.labelled_rollouts():
                    counts[(str(rec.get("source", "")), rec.get("harmful"), rec.get("refused"))] += 1
                    bucket = examples.setdefault(rec.get("harmful"), [])
                    if len(bucket) < keep:
                        bucket.append(rec)
            ex = [r for b in examples.values() for r in b]
            self._cache[key] = (counts, ex, len(caught))
        return self._cache[key]


def load_run(run_dir: str | os.PathLike) -> ReportData:
    """Open a run directory for reading (used by :func:`build_report`)."""
    return ReportData(run_dir)


# --------------------------------------------------------------------------------------------
# small HTML helpers


def _not_run(msg: str) -> str:
    return f'<p class="not-run">not run: {esc(msg)}</p>'


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)[:400]
    s = str(v)
    return s if len(s) <= 300 else s[:300] + " ..."


def _kv_table(d: dict[str, Any], *, skip: tuple[str, ...] = ()) -> str:
    rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(_fmt(v))}</td></tr>" for k, v in d.items() if k not in skip
    )
    return f"<table>{rows}</table>" if rows else ""


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{esc(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}." if not isinstance(v, dict) or not v else f"{prefix}{k}."))
        return {k.rstrip("."): v for k, v in out.items()}
    out[prefix] = d
    return out


def _user_text(label: str, text: Any, limit: int = 4000) -> str:
    if text is None:
        return ""
    s = str(text)
    cut = f" (first {limit} of {len(s)} characters)" if len(s) > limit else ""
    return f'<div><b>{esc(label)}</b>{esc(cut)}<div class="user-text">{esc(s[:limit])}</div></div>'


# --------------------------------------------------------------------------------------------
# sections


def _sec_model(data: ReportData, ctx: dict) -> str:
    res = data.results()
    parts = []
    model = res.get("model") or {}
    if not model and data.has("run.json"):
        model = {k: v for k, v in data.json("run.json").items() if not isinstance(v, (dict, list))}
    parts.append(_kv_table(model) if model else _not_run("results.json has no 'model' section"))
    if isinstance(res.get("data"), dict):
        parts.append("<h3>Data</h3>" + _kv_table(res["data"]))
    try:
        counts, examples, skipped = data.rollouts()
    except _NotRun as e:
        parts.append(_not_run(str(e)))
        return "\n".join(parts)
    rows = [
        {"source": s, "harmful prompt": h, "refused": r, "rollouts": n}
        for (s, h, r), n in sorted(counts.items(), key=lambda kv: str(kv[0]))
    ]
    parts.append(f"<h3>Rollouts ({sum(counts.values())})</h3>")
    parts.append(_table(rows, ["source", "harmful prompt", "refused", "rollouts"]))
    if skipped:
        parts.append(f'<p class="note">{skipped} malformed line(s) of rollouts.jsonl skipped.</p>')
    parts.append("<h3>Examples</h3>")
    for rec in examples:
        label = f"{rec.get('id', '?')} · source {rec.get('source', '')} · harmful={rec.get('harmful')} · refused={rec.get('refused')}"
        parts.append(
            f"<details><summary>{esc(label)}</summary>"
            + _user_text("prompt", rec.get("prompt"))
            + _user_text("thinking", rec.get("thinking"))
            + _user_text("answer", rec.get("answer"))
            + "</details>"
        )
    return "\n".join(parts)


def _sec_probe(data: ReportData, ctx: dict) -> str:
    res = data.results()
    probe = res.get("probe")
    parts = []
    if probe:
        parts.append(_kv_table(_flatten({k: v for k, v in probe.items() if k != "metrics"})))
    if data.has("probe.json"):
        info = data.json("probe.json")
        info = info if isinstance(info, dict) else {}
        metrics = info.get("metrics") or (info.get("meta") or {}).get("metrics")
        if metrics:
            parts.append("<h3>Metrics recorded in probe.json</h3>")
            parts.append(_kv_table(_flatten(metrics)))
    if not parts:
        raise _NotRun("no 'probe' in results.json and no probe.json (the probe stage)")
    return "\n".join(parts)


def _trajectories(data: ReportData) -> tuple[list, dict]:
    """(trajectories, info) from ``trajectories.safetensors`` + ``.json`` (cached)."""
    if "trajs" not in data._cache:
        for name in ("trajectories.safetensors", "trajectories.json"):
            if not data.has(name):
                raise _NotRun(f"{name} is missing (the trajectories stage: `cliff-lens trace`)")
        from cliff_lens.trajectory import load_trajectories

        trajs = load_trajectories(data.path("trajectories"))
        if not trajs:
            raise _NotRun("trajectories.json lists no rollout")
        info = data.json("trajectories.json")
        meta = dict(info.get("meta") or {})
        n = len(trajs)
        harmful = meta.get("harmful")
        groups = meta.get("groups")
        if not isinstance(harmful, list) or len(harmful) != n:
            labels = data.labels()
            harmful = [labels.get(str(tr.id), {}).get("harmful") for tr in trajs]
        if not isinstance(groups, list) or len(groups) != n:
            groups = [None] * n
        layer = meta.get("probe_layer")
        if trajs[0].scores.ndim == 2 and layer is None:
            layer = (trajs[0].layers or [None])[-1]
        eots = Counter(
            tr.spans.get("end_of_thinking", (0, 0))[1] - tr.spans.get("end_of_thinking", (0, 0))[0]
            for tr in trajs
        )
        data._cache["trajs"] = (
            trajs,
            {
                "harmful": harmful,
                "groups": groups,
                "layer": layer if trajs[0].scores.ndim == 2 else None,
                "eot_len": eots.most_common(1)[0][0],
            },
        )
    return data._cache["trajs"]


def _curve_plot(trajs: list, sets: dict[str, list[int]], info: dict, length: int, title: str) -> str:
    from cliff_lens.trajectory import dataset_curve

    curves, bands = {}, {}
    for name, idx in sets.items():
        if not idx:
            continue
        c = dataset_curve([trajs[i] for i in idx], layer=info["layer"], length=length)
        mean, std = c.mean.numpy(), c.std.numpy()
        curves[f"{name} (n={len(idx)})"] = mean
        bands[f"{name} (n={len(idx)})"] = (mean - std, mean + std)
    if not curves:
        return ""
    return trajectory_plot(curves, eot_len=info["eot_len"], bands=bands, title=title).to_html()


def _sec_trajectory(data: ReportData, ctx: dict) -> str:
    trajs, info = _trajectories(data)
    n = len(trajs)
    length = min(ctx["trajectory_length"], max(tr.scores.shape[-1] for tr in trajs))
    sets = {
        "harmful": [i for i in range(n) if info["harmful"][i] is True],
        "harmless": [i for i in range(n) if info["harmful"][i] is False],
    }
    parts = [
        _curve_plot(
            trajs,
            sets,
            info,
            length,
            "Mean refusal score, harmful vs harmless, aligned to the end of thinking",
        )
    ]
    groups = {
        g: [i for i in range(n) if info["groups"][i] == g] for g in ("harmful_complied", "harmful_refused")
    }
    if all(groups.values()):
        parts.append(_curve_plot(trajs, groups, info, length, "Harmful rollouts: complied vs refused"))
    if not any(parts):
        raise _NotRun("no rollout in trajectories is labelled harmful or harmless")
    cliff = data.results().get("cliff")
    if cliff:
        rows = [{"split": k, **v} for k, v in cliff.items() if isinstance(v, dict)]
        parts.append(_table(rows, ["split", "plateau_mean", "final_mean", "cliff_mean", "n_rollouts"]))
    layer = f"layer {info['layer']}" if info["layer"] is not None else "the probe's read-out"
    parts.append(
        f'<p class="note">Scores at {esc(layer)}; curves are tail-aligned (the last point is the last '
        f"end-of-thinking token; the last {esc(length)} positions shown), NaN-aware mean over rollouts "
        f"(a rollout shorter than a position does not count there); shaded: +- one standard deviation. "
        f"End-of-thinking tokens: {esc(info['eot_len'])}.</p>"
    )
    return "\n".join(p for p in parts if p)


def _token_strings(ctx: dict, ids: list[int]) -> list[str]:
    tok = ctx.get("tokenizer")
    if tok is None:
        return [f"#{i} " for i in ids]
    return [str(s) for s in tok.batch_decode([[i] for i in ids])]


def _sec_tokens(data: ReportData, ctx: dict) -> str:
    trajs, info = _trajectories(data)
    n = len(trajs)
    order = []
    for g in ("harmful_complied", "harmful_refused", "harmless_helped", "harmless_refused"):
        order += [i for i in range(n) if info["groups"][i] == g][:1]
    for i in range(n):  # without groups: harmful first, then harmless
        if len(order) >= ctx["n_token_examples"]:
            break
        if i not in order and (info["harmful"][i] or len(order) >= 2):
            order.append(i)
    labels = data.labels()
    parts = []
    if ctx.get("tokenizer") is None:
        parts.append(
            '<p class="note">No tokenizer given (build_report(..., model=...)): tokens shown as ids.</p>'
        )
    for i in order[: ctx["n_token_examples"]]:
        tr = trajs[i]
        row = tr.row(info["layer"]) if tr.scores.ndim == 2 else tr.scores
        lab = labels.get(str(tr.id), {})
        title = (
            f"{tr.id} · {info['groups'][i] or ('harmful' if info['harmful'][i] else 'harmless')}"
            + (f" · refused={lab['refused']}" if "refused" in lab else "")
            + f" · final score {_fmt(float(row[-1]))}"
        )
        parts.append(
            refusal_tokens(_token_strings(ctx, tr.tokens.tolist()), row.numpy(), title=title).to_html()
        )
    return "\n".join(parts)


def _sec_layer_position(data: ReportData, ctx: dict) -> str:
    trajs, info = _trajectories(data)
    if trajs[0].scores.ndim != 2 or len(trajs[0].layers or []) < 2:
        raise _NotRun("trajectories hold one layer only (trace several layers for the map)")
    from cliff_lens.trajectory import layer_position_map as lp_map

    harmful = [t for t, h in zip(trajs, info["harmful"]) if h] or trajs
    length = min(ctx["trajectory_length"], max(tr.scores.shape[-1] for tr in harmful))
    m, layers, _ = lp_map(harmful, length=length)
    return layer_position_map(
        m,
        layers=layers,
        eot_len=info["eot_len"],
        title="Mean refusal score of harmful rollouts by layer and position",
    ).to_html()


def _heads_info(data: ReportData) -> dict:
    """Head scores and top heads from ``heads.json`` (HeadRanking format) and/or results.json."""
    info: dict[str, Any] = {}
    res = data.results().get("heads") or {}
    info.update(res)
    try:
        hj = data.json("heads.json")
    except _NotRun:
        hj = None
    if isinstance(hj, dict):
        if hj.get("scores") is not None:
            info["scores"] = hj["scores"]
        if hj.get("suppression_heads"):
            info["top"] = [
                {"layer": int(a), "head": int(b), "score": float(c)} for a, b, c in hj["suppression_heads"]
            ]
        elif hj.get("top"):
            info["top"] = hj["top"]
        variant = (hj.get("meta") or {}).get("variant") or hj.get("variant")
        if variant:
            info["variant"] = variant
        if hj.get("top_percent") is not None:
            info["top_percent"] = hj["top_percent"]
        if info.get("scores") is not None and "n_heads_total" not in info:
            info["n_heads_total"] = len(info["scores"]) * len(info["scores"][0])
    return info


def _sec_heads(data: ReportData, ctx: dict) -> str:
    info = _heads_info(data)
    if not info:
        raise _NotRun("no heads.json and no 'heads' in results.json (the heads stage)")
    parts = []
    top = info.get("top") or []
    if info.get("scores") is not None:
        parts.append(head_heatmap(np.asarray(info["scores"], dtype=float), top=top or None).to_html())
    else:
        parts.append(_not_run("heads.json has no 'scores' matrix: heatmap unavailable"))
    parts.append(
        f"<p>variant: <b>{esc(info.get('variant', '?'))}</b> · heads in model: {esc(info.get('n_heads_total', '?'))}"
        f" · top suppression heads (most negative): {len(top)}</p>"
    )
    if top:
        parts.append(_table(top, ["layer", "head", "score"]))
    return "\n".join(parts)


def _pick_attention_rollouts(data: ReportData, n: int) -> list[dict]:
    first, jailbroken = [], []
    for rec in data.labelled_rollouts():
        if rec.get("harmful") and rec.get("thinking") is not None and rec.get("thinking_closed", True):
            (jailbroken if rec.get("refused") is False else first).append(rec)
            if len(jailbroken) >= n:
                break
    return (jailbroken + first)[:n]


def _sec_attention(data: ReportData, ctx: dict) -> str:
    model = ctx.get("model")
    info = _heads_info(data)
    top = info.get("top") or []
    if not top:
        raise _NotRun("no top suppression heads (heads stage)")
    if model is None:
        raise _NotRun(
            "attention views need the model: build_report(run_dir, model=load_model(...)) or `cliff-lens report DIR`"
        )
    from cliff_lens.templates import get_template

    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise _NotRun("the model has no tokenizer attached; load it with cliff_lens.load_model")
    cfg = data.results().get("config") or {}
    template = get_template(cfg.get("template") or getattr(model, "cliff_template", None), tok)
    recs = _pick_attention_rollouts(data, ctx["n_attention_rollouts"])
    if not recs:
        raise _NotRun("no harmful rollout with closed thinking in rollouts.jsonl")
    heads = top[: ctx["max_attention_heads"]]
    parts = [
        '<p class="note">Queries: the end-of-thinking tokens only (bottom rows of each grid; other rows are 0). '
        f"Keys: the sequence up to the end of thinking (last {ctx['max_keys']} tokens at most). "
        "Hover a thumbnail to zoom a head; the coloured tokens below show each head's mean attention "
        "from the end-of-thinking tokens.</p>"
    ]
    for rec in recs:
        tr = template.tokenize(tok, rec["prompt"], rec["thinking"], rec.get("answer") or "")
        label = f"rollout {rec.get('id', '?')} · refused={rec.get('refused')}"
        parts.append(
            suppression_head_attention(model, tr, heads, max_keys=ctx["max_keys"], title=label).to_html()
        )
    return "\n".join(parts)


def _ablation_rows(data: ReportData) -> list[dict]:
    rows = None
    try:
        aj = data.json("ablation.json")
        rows = aj.get("settings") or aj.get("rows") if isinstance(aj, dict) else aj
    except _NotRun:
        pass
    rows = rows or data.results().get("ablation")
    if not rows:
        raise _NotRun("no ablation.json and no 'ablation' in results.json (the ablation/ASR stage)")
    return [r for r in rows if isinstance(r, dict) and r.get("kind") != "random_summary"]


def _sec_ablation(data: ReportData, ctx: dict) -> str:
    rows = _ablation_rows(data)
    view = asr_bars(rows)
    cols = ["setting", "asr", "refusal_score_end", "over_refusal"]
    extra = [k for k in ("n_heads", "n_harmful", "n_harmless") if any(k in r for r in rows)]
    return (
        view.to_html()
        + '<p class="note">random-k% bars: mean over seeds; whisker: min..max; dots: the seeds.</p>'
        + _table(rows, cols + extra)
    )


def _sec_selection(data: ReportData, ctx: dict) -> str:
    sel = data.results().get("selection")
    if not sel and data.has("selection.json"):
        sj = data.json("selection.json")
        sel = (
            {"summary": {k: v for k, v in sj.items() if k != "selected_ids"}}
            if isinstance(sj, dict)
            else None
        )
    parts = []
    if sel:
        summary = sel.get("summary", sel) if isinstance(sel, dict) else sel
        parts.append(_kv_table(_flatten(summary)) if isinstance(summary, dict) else f"<p>{esc(summary)}</p>")
    p = data.path("selection.jsonl")
    if p.exists():
        recs = []
        for rec in iter_jsonl(p, on_error="skip"):
            recs.append(rec)
            if len(recs) >= ctx["n_selection_rows"]:
                break
        if recs:
            cols = [c for c in recs[0] if not isinstance(recs[0][c], (dict, list))][:8]
            parts.append(f"<h3>First {len(recs)} records of selection.jsonl</h3>" + _table(recs, cols))
    if not parts:
        raise _NotRun("no 'selection' in results.json and no selection.jsonl (the selection stage)")
    return "\n".join(parts)


def _sec_run_info(data: ReportData, ctx: dict) -> str:
    res = data.results()
    parts = []
    if res.get("timings"):
        t = res["timings"]
        parts.append("<h3>Timings (s)</h3>" + _kv_table(t))
    if res.get("versions"):
        parts.append("<h3>Versions</h3>" + _kv_table(res["versions"]))
    if not parts:
        raise _NotRun("results.json has no timings/versions")
    return "\n".join(parts)


_BUILDERS: dict[str, Callable[[ReportData, dict], str]] = {
    "model": _sec_model,
    "probe": _sec_probe,
    "trajectory": _sec_trajectory,
    "tokens": _sec_tokens,
    "layer-position": _sec_layer_position,
    "heads": _sec_heads,
    "attention": _sec_attention,
    "ablation": _sec_ablation,
    "selection": _sec_selection,
    "run-info": _sec_run_info,
}


def build_report(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    model: Any = None,
    *,
    tokenizer: Any = None,
    trajectory_length: int = 96,
    n_token_examples: int = 4,
    n_attention_rollouts: int = 1,
    max_attention_heads: int = 12,
    max_keys: int = 256,
    n_selection_rows: int = 10,
) -> Path:
    """Write a self-contained offline HTML report of a run directory.

    Args:
        run_dir: the run directory (``results.json``, ``rollouts.jsonl``,
            ``trajectories.safetensors`` + ``.json``, ``heads.json``, ``ablation.json``,
            ``selection.jsonl``, ``probe.json``, ``run.json``; any may be missing).
        out: output path (default ``run_dir/report.html``).
        model: the run's ``HookedTransformer`` (with ``tokenizer``); needed for the attention
            views of the suppression heads ("not run" without it) and to decode tokens.
        tokenizer: decodes token ids for the per-rollout colouring (default ``model.tokenizer``;
            without either, tokens are shown as ids).
        trajectory_length: tail-aligned positions shown in the trajectory plots and the map.
        n_token_examples: rollouts shown with per-token colouring.
        n_attention_rollouts: harmful rollouts (jailbroken first) shown in the attention views.
        max_attention_heads: top heads shown in each attention view.
        max_keys: at most this many key tokens per attention view.
        n_selection_rows: records of ``selection.jsonl`` listed.

    Returns:
        The path of the written report.
    """
    data = ReportData(run_dir)
    out = Path(out) if out is not None else data.dir / "report.html"
    if tokenizer is None and model is not None:
        tokenizer = getattr(model, "tokenizer", None)
    ctx = {
        "model": model,
        "tokenizer": tokenizer,
        "trajectory_length": trajectory_length,
        "n_token_examples": n_token_examples,
        "n_attention_rollouts": n_attention_rollouts,
        "max_attention_heads": max_attention_heads,
        "max_keys": max_keys,
        "n_selection_rows": n_selection_rows,
    }
    res = data.results()
    from cliff_lens.results_schema import validate_results

    banner = ""
    if not data.has("results.json"):
        banner = _not_run("results.json is missing: sections read the stage files only")
    elif res:
        problems = validate_results(res, partial=True, raise_on_error=False)
        if problems:
            banner = (
                '<p class="error">results.json does not match the schema:\n'
                + esc("\n".join(problems[:20]))
                + "</p>"
            )
    body = []
    for key, title in SECTIONS:
        try:
            content = _BUILDERS[key](data, ctx)
        except _NotRun as e:
            content = _not_run(str(e))
        except Exception as e:  # noqa: BLE001 - one broken stage file must not sink the report
            content = f'<p class="error">could not render this section: {esc(type(e).__name__)}: {esc(e)}</p>'
        body.append(f'<section id="{key}"><h2>{esc(title)}</h2>\n{content}\n</section>')
    source = (res.get("model") or {}).get("source", "") if res else ""
    nonce = secrets.token_urlsafe(16)
    page = _page(
        title=f"cliff_lens report{' · ' + str(source) if source else ''}",
        banner=banner,
        body="\n".join(body),
        nonce=nonce,
    )
    atomic_write_text(out, page)
    return out


def _page(*, title: str, banner: str, body: str, nonce: str) -> str:
    csp = (
        "default-src 'none'; "
        f"script-src 'nonce-{nonce}' 'unsafe-eval'; "
        "style-src 'unsafe-inline'; img-src data:; font-src 'none'; connect-src 'none'; "
        "base-uri 'none'; form-action 'none'"
    )
    nav = "".join(f'<a href="#{k}">{esc(t)}</a>' for k, t in SECTIONS)
    # every <script> we emit gets the nonce; user text is escaped, so it cannot create one
    body = re.sub(r"<script>", f'<script nonce="{nonce}">', body)
    bundle = circuitsvis_bundle()
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n"
        f'<script nonce="{nonce}" id="circuitsvis-bundle">\n{bundle}\n</script>\n'
        f"</head><body><nav>{nav}</nav><main><h1>{esc(title)}</h1>\n{banner}\n{body}\n</main></body></html>\n"
    )
