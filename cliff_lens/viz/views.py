"""The views behind the report, usable on their own in Jupyter.

Each function returns an :class:`~cliff_lens.viz.html.HtmlView`: it renders inline in a
notebook (``_repr_html_``) and gives its HTML fragment for a page with ``.to_html()``.
circuitsvis views (token colouring, attention) run the circuitsvis React components from the
offline bundle; charts are inline SVG.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from .._typing import Validated
from .html import CircuitsView, CompositeView, HtmlView, esc
from .svg import grouped_bars, heatmap, line_plot

__all__ = [
    "finite_number",
    "interval_pair",
    "refusal_tokens",
    "suppression_head_attention",
    "trajectory_plot",
    "layer_position_map",
    "head_heatmap",
    "asr_bars",
    "parse_setting",
]


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().float().cpu().numpy()
    try:
        return np.asarray(x, dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{name} must be numeric (a list, array or tensor), got {type(x).__name__}: {e}"
        ) from None


# --------------------------------------------------------------------------------------------
# token colouring


def refusal_tokens(
    tokens_str: Sequence[str],
    scores: Validated[Float[Tensor, "pos"] | Sequence[float] | np.ndarray],
    *,
    min_value: float | int = 0.0,
    max_value: float | int = 1.0,
    title: str | None = None,
) -> CircuitsView:
    """Colour each token of a rollout by its refusal score (circuitsvis ``ColoredTokens``).

    Args:
        tokens_str: token strings, e.g. ``model.to_str_tokens(tokens)`` (HTML-escaped here:
            circuitsvis inserts token strings as HTML).
        scores: one refusal score per token (probabilities in ``[0, 1]`` by default); NaN
            (unscored tokens) is shown as ``min_value``.
        min_value / max_value: the colour scale.
        title: optional caption above the tokens.
    """
    tokens_str = [str(t) for t in tokens_str]
    values = _to_numpy(scores, "scores").reshape(-1)
    if values.shape[0] != len(tokens_str):
        raise ValueError(
            f"refusal_tokens got {len(tokens_str)} tokens but {values.shape[0]} scores; pass one score per token"
        )
    values = np.where(np.isfinite(values), values, min_value)
    # circuitsvis's ColoredTokens writes each token with innerHTML (dangerouslySetInnerHTML), so a
    # raw "<think>" would vanish and "<img onerror=...>" would run: pass HTML-escaped tokens
    return CircuitsView(
        "ColoredTokens",
        {
            "tokens": [esc(t) for t in tokens_str],
            "values": values.round(4).tolist(),
            "minValue": min_value,
            "maxValue": max_value,
        },
        title=title,
    )


# --------------------------------------------------------------------------------------------
# attention of the suppression heads


class AttentionView(CompositeView):
    """Attention of selected heads from the end-of-thinking queries to every key.

    Attributes:
        patterns: ``[n_selected_heads, n_queries, n_keys]`` attention probabilities (rows = the
            end-of-thinking positions, keys = positions ``key_start .. key_start + n_keys - 1``).
        heads: the ``(layer, head)`` pairs, in the order of ``patterns``.
        query_positions: absolute positions of the queries.
        key_start: absolute position of the first key.
        tokens: the key token strings.
    """

    def __init__(self, parts, *, patterns, heads, query_positions, key_start, tokens) -> None:
        super().__init__(parts)
        self.patterns = patterns
        self.heads = heads
        self.query_positions = query_positions
        self.key_start = key_start
        self.tokens = tokens


def _str_tokens(model: Any, tokens: Tensor) -> list[str]:
    if getattr(model, "tokenizer", None) is not None:
        return [str(t) for t in model.to_str_tokens(tokens)]
    return [f"<{int(t)}>" for t in tokens.tolist()]


def _head_pairs(
    model: Any, heads: Sequence[tuple[int, int]] | Sequence[Mapping[str, Any]]
) -> list[tuple[int, int]]:
    """``heads`` as ``(layer, head)`` int pairs, checked to be non-empty and in range."""
    pairs = [
        (int(h["layer"]), int(h["head"])) if isinstance(h, Mapping) else (int(h[0]), int(h[1])) for h in heads
    ]
    if not pairs:
        raise ValueError(
            "heads is empty; pass at least one (layer, head) pair, e.g. the top suppression heads"
        )
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    bad = [p for p in pairs if not (0 <= p[0] < n_layers and 0 <= p[1] < n_heads)]
    if bad:
        raise ValueError(f"heads {bad} are out of range for a model with {n_layers} layers x {n_heads} heads")
    return pairs


def _eot_patterns(model: Any, tokens: Tensor, pairs: list[tuple[int, int]], s: int, e: int) -> Tensor:
    """``[n_pairs, e - s, n_keys]`` float32 (CPU): the heads' attention patterns on ``tokens``,
    rows ``s:e`` (the end-of-thinking queries); one forward pass that caches only the needed
    ``hook_pattern`` and stops after the deepest head's layer."""
    layers = sorted({ly for ly, _ in pairs})
    names = {f"blocks.{ly}.attn.hook_pattern" for ly in layers}
    device = getattr(model.cfg, "device", None) or "cpu"
    with torch.inference_mode():
        _, cache = model.run_with_cache(
            tokens[None].to(device), names_filter=lambda n: n in names, stop_at_layer=layers[-1] + 1
        )
        stacked = torch.stack([cache[f"blocks.{ly}.attn.hook_pattern"][0] for ly in layers])  # [Ls, H, q, k]
        li = torch.tensor([layers.index(ly) for ly, _ in pairs])
        hi = torch.tensor([h for _, h in pairs])
        return stacked[li, hi][:, s:e, :].float().cpu()  # [n_sel, n_eot, k]


def _attention_parts(
    names_h: list[str], shown: Tensor, keys: list[str], s: int, e: int, key_start: int, title: str | None
) -> list[HtmlView | str]:
    """The parts of the attention view: the title, circuitsvis ``AttentionHeads`` (square grids
    with only the end-of-thinking rows filled) and one ``ColoredTokens`` line of mean attention
    per head; ``shown`` is ``[n_heads, e - s, len(keys)]``."""
    n = len(keys)
    square = torch.zeros(len(names_h), n, n)
    square[:, s - key_start : e - key_start, :] = shown
    parts: list[HtmlView | str] = []
    if title:
        parts.append(f'<div class="cv-title">{esc(title)}</div>')
    parts.append(
        CircuitsView(
            "AttentionHeads",
            {
                "attention": square.numpy().round(4).tolist(),
                "tokens": keys,
                "attentionHeadNames": names_h,
                "maxValue": 1.0,
                "minValue": 0.0,
                "maskUpperTri": True,
            },
        )
    )
    mean_att = shown.mean(dim=1)  # [n_sel, n_shown]
    for name, row in zip(names_h, mean_att):
        top = float(row.max()) if row.numel() else 1.0
        parts.append(
            refusal_tokens(
                keys,
                row,
                max_value=max(top, 1e-6),
                title=f"{name}: mean attention from the end-of-thinking tokens",
            )
        )
    return parts


def suppression_head_attention(
    model: Any,
    tokenized_rollout: Any,
    heads: Sequence[tuple[int, int]] | Sequence[Mapping[str, Any]],
    *,
    max_keys: int | None = None,
    token_strs: Sequence[str] | None = None,
    title: str | None = None,
) -> AttentionView:
    """circuitsvis attention view of the given heads whose queries are the end-of-thinking tokens.

    Runs one forward pass caching only ``blocks.{l}.attn.hook_pattern`` of the needed layers
    (and stops after the deepest one), slices the pattern rows to the end-of-thinking positions
    and shows them with circuitsvis ``AttentionHeads`` over the whole sequence up to the end of
    thinking (the answer is dropped). circuitsvis draws square query x key grids, so rows of the
    other queries are left at 0: only the end-of-thinking rows (the bottom rows) carry
    attention. Below, one ``ColoredTokens`` line per head shows the mean attention of the
    end-of-thinking queries over the sequence.

    Args:
        model: a ``HookedTransformer``.
        tokenized_rollout: a :class:`~cliff_lens.templates.TokenizedRollout` (``tokens`` and
            ``spans`` with a non-empty ``end_of_thinking``).
        heads: ``[(layer, head), ...]`` or ``[{"layer": l, "head": h, ...}, ...]``.
        max_keys: show at most this many keys (the last ones before the end of the thinking
            span); ``None`` shows the whole sequence.
        token_strs: token strings (default: ``model.to_str_tokens``).
        title: caption.
    """
    pairs = _head_pairs(model, heads)
    s, e = tokenized_rollout.spans.get("end_of_thinking", (0, 0))
    if e <= s:
        raise ValueError(
            "tokenized_rollout has an empty 'end_of_thinking' span; tokenize it with a reasoning template "
            "(cliff_lens.templates.get_template(...).tokenize(...))"
        )
    tokens = tokenized_rollout.tokens[:e]
    patterns = _eot_patterns(model, tokens, pairs, s, e)
    n_k = patterns.shape[-1]
    key_start = 0 if max_keys is None or n_k <= max_keys else min(s, n_k - int(max_keys))
    strs = list(token_strs)[:e] if token_strs is not None else _str_tokens(model, tokens.cpu())
    if len(strs) != n_k:
        raise ValueError(
            f"token_strs has {len(strs)} entries for a sequence of {n_k} tokens (up to the end of thinking)"
        )
    keys = strs[key_start:]
    names_h = [f"L{ly}H{h}" for ly, h in pairs]
    parts = _attention_parts(names_h, patterns[:, :, key_start:], keys, s, e, key_start, title)
    return AttentionView(
        parts,
        patterns=patterns,
        heads=pairs,
        query_positions=list(range(s, e)),
        key_start=key_start,
        tokens=keys,
    )


# --------------------------------------------------------------------------------------------
# charts


class SvgView(HtmlView):
    """An inline SVG chart (no JavaScript)."""

    def __init__(self, svg: str, *, data: dict[str, Any] | None = None) -> None:
        super().__init__(f'<div class="cl-chart">{svg}</div>', data=data)
        self.svg = svg


def trajectory_plot(
    curves: Mapping[str, Any],
    *,
    eot_len: int = 0,
    bands: Mapping[str, tuple[Any, Any]] | None = None,
    title: str | None = "Refusal score aligned to the end of thinking",
    ylabel: str = "refusal score",
    ylim: tuple[float | int, float | int] | None = (0.0, 1.0),
    width: int = 680,
    height: int = 300,
) -> SvgView:
    """Mean refusal-score curves (e.g. harmful vs harmless) aligned to the end of thinking.

    Every curve is tail-aligned: its LAST value is the last end-of-thinking token. The x axis is
    the position relative to the first end-of-thinking token (``0``; the last ``eot_len``
    values are the end-of-thinking template tokens), marked by a dashed vertical line. NaN
    values (positions not covered by any rollout) leave gaps.

    Args:
        curves: ``name -> 1-D scores`` (tensor, array or list).
        eot_len: number of end-of-thinking tokens at the tail of every curve.
        bands: optional ``name -> (low, high)`` shaded around the curve (e.g. mean +- std).
    """
    if not curves:
        raise ValueError("trajectory_plot needs at least one curve, e.g. {'harmful': h, 'harmless': b}")
    series, bnds, data = {}, {}, {}
    for name, y in curves.items():
        y = _to_numpy(y, f"curves[{name!r}]").reshape(-1)
        x = np.arange(y.shape[0]) - (y.shape[0] - eot_len)
        series[str(name)] = (x, y)
        data[str(name)] = y
        if bands and name in bands:
            lo, hi = bands[name]
            bnds[str(name)] = (_to_numpy(lo, "band").reshape(-1), _to_numpy(hi, "band").reshape(-1))
    svg = line_plot(
        series,
        bands=bnds,
        vlines=[(0.0, "end of thinking")],
        xlabel="token position relative to the end-of-thinking marker",
        ylabel=ylabel,
        title=title,
        ylim=ylim,
        width=width,
        height=height,
    )
    return SvgView(svg, data={"curves": data, "eot_len": eot_len})


def layer_position_map(
    scores: Validated[Float[Tensor, "layer pos"] | np.ndarray],
    *,
    layers: Sequence[int] | None = None,
    eot_len: int = 0,
    title: str | None = "Refusal score by layer and position (aligned to the end of thinking)",
    vmin: float | int = 0.0,
    vmax: float | int = 1.0,
) -> SvgView:
    """Heatmap of the refusal score at each probed layer (rows, deepest on top) and each
    tail-aligned position (columns; the last ``eot_len`` columns are the end-of-thinking tokens,
    preceded by a dashed line)."""
    m = _to_numpy(scores, "scores")
    if m.ndim != 2:
        raise ValueError(f"layer_position_map needs a [n_layers, n_positions] matrix, got shape {m.shape}")
    n_l, n_p = m.shape
    layers = list(layers) if layers is not None else list(range(n_l))
    if len(layers) != n_l:
        raise ValueError(f"layers has {len(layers)} entries for {n_l} rows of scores")
    order = list(range(n_l))[::-1]
    rel = np.arange(n_p) - (n_p - eot_len)
    svg = heatmap(
        m[order],
        row_labels=[f"L{layers[i]}" for i in order],
        col_labels=[str(int(v)) for v in rel],
        vmin=vmin,
        vmax=vmax,
        vline_col=float(n_p - eot_len),
        vline_label="end of thinking",
        xlabel="token position relative to the end-of-thinking marker",
        ylabel="layer",
        title=title,
        tooltip="{row}, pos {col}: {value}",
    )
    return SvgView(svg, data={"scores": m, "layers": layers, "eot_len": eot_len})


def head_heatmap(
    scores: Validated[Float[Tensor, "layer head"] | np.ndarray],
    *,
    top: Sequence[tuple[int, int]] | Sequence[Mapping[str, Any]] | None = None,
    top_percent: float | int = 3.0,
    title: str | None = "Direct write of each head on the refusal direction at the end of thinking",
) -> SvgView:
    """Layer x head heatmap of attribution scores on a diverging scale (blue: writes against
    refusal, red: for it), with the top suppression heads outlined.

    Args:
        scores: ``[n_layers, n_heads]`` (e.g. ``head_attributions(...)``).
        top: heads to outline; default the most negative ``top_percent`` % (at least one).
    """
    m = _to_numpy(scores, "scores")
    if m.ndim != 2:
        raise ValueError(f"head_heatmap needs a [n_layers, n_heads] matrix, got shape {m.shape}")
    n_l, n_h = m.shape
    if top is None:
        k = max(1, math.ceil(n_l * n_h * top_percent / 100))
        flat = np.where(np.isfinite(m), m, np.inf).reshape(-1)
        idx = np.argsort(flat, kind="stable")[:k]
        outline = [(int(i // n_h), int(i % n_h)) for i in idx]
    else:
        outline = [
            (int(t["layer"]), int(t["head"])) if isinstance(t, Mapping) else (int(t[0]), int(t[1]))
            for t in top
        ]
    svg = heatmap(
        m,
        row_labels=[f"L{i}" for i in range(n_l)],
        col_labels=[f"H{j}" for j in range(n_h)],
        diverging=True,
        outline=outline,
        xlabel="head",
        ylabel="layer",
        title=title,
        tooltip="{row}{col}: {value}",
    )
    return SvgView(svg, data={"scores": m, "outlined": outline})


_SETTING = re.compile(
    r"^\s*(?:(?P<base>baseline)|(?P<kind>top|random)-(?P<pct>\d+(?:\.\d+)?)%"
    r"(?P<variant>(?:\s+(?!seed\b)[a-z_-]+)*)(?:\s+seed\s+(?P<seed>-?\d+))?)\s*$",
    re.IGNORECASE,
)


def parse_setting(setting: str) -> dict[str, Any]:
    """Parse an ablation setting name: ``baseline``, ``top-3%``, ``random-3% seed 1``, and the
    named variants ``top-3% contrast``, ``top-3% in-sample``, ``random-3% layer-matched seed 0``.

    Returns ``{"kind": "baseline"|"top"|"random", "percent": float|None, "seed": int|None}``, plus
    ``"variant"`` (``"in-sample"``, ``"contrast"``, ``"layer-matched"``) for a named variant.
    """
    m = _SETTING.match(str(setting))
    if not m:
        raise ValueError(
            f"ablation setting {setting!r} is not one of 'baseline', 'top-K%', 'random-K% seed S' (e.g. 'top-3%')"
        )
    if m.group("base"):
        return {"kind": "baseline", "percent": None, "seed": None}
    seed = m.group("seed")
    out: dict[str, Any] = {
        "kind": m.group("kind").lower(),
        "percent": float(m.group("pct")),
        "seed": int(seed) if seed else None,
    }
    variant = " ".join(m.group("variant").split())
    if variant:
        out["variant"] = variant
    return out


def asr_bars(
    rows: Sequence[Mapping[str, Any]],
    *,
    metrics: Sequence[tuple[str, str]] = (("asr", "ASR"), ("over_refusal", "over-refusal")),
    title: str | None = "Attack success and over-refusal: baseline vs top-k% vs random-k% heads ablated",
) -> SvgView:
    """Bars per ablation setting (``baseline``, ``top-k%``, ``random-k%``); random settings are
    pooled over seeds: the bar is the mean, the whisker the min..max (``class="cl-spread"``),
    dots the seeds. A setting measured once (baseline, top-k%) gets its 95% interval
    ``{metric}_ci95`` (e.g. ``asr_ci95``, the Wilson interval) as the whisker
    (``class="cl-ci"``) when the row has one. Rows with another setting name (a custom head
    set) get their own bar at the end.

    Args:
        rows: ``[{"setting": "random-3% seed 0", "asr": 0.4, "asr_ci95": [0.2, 0.6],
            "over_refusal": 0.1, ...}, ...]``.
        metrics: ``(key, label)`` pairs to draw (a metric absent from every row is skipped).
    """
    if not rows:
        raise ValueError("asr_bars needs at least one ablation row ({'setting': 'baseline', 'asr': ...})")
    grouped: dict[tuple[str, float | None, str], list[Mapping[str, Any]]] = {}
    custom: list[str] = []
    for r in rows:
        if "setting" not in r:
            raise ValueError(
                f"ablation row {dict(r)!r} has no 'setting'; name it 'baseline', 'top-K%' or 'random-K% seed S'"
            )
        try:
            p = parse_setting(r["setting"])
            gkey = (p["kind"], p["percent"], p.get("variant", ""))
        except ValueError:  # a custom head set: its own bar, after the standard ones
            gkey = ("custom:" + str(r["setting"]), None, "")
            if gkey[0] not in custom:
                custom.append(gkey[0])
        grouped.setdefault(gkey, []).append(r)
    rank = {"baseline": 0, "top": 1, "random": 2}
    keys = sorted(
        grouped,
        key=lambda k: (
            k[0] in custom,
            custom.index(k[0]) if k[0] in custom else 0,
            k[1] if k[1] is not None else -1.0,
            rank.get(k[0], 3),
            k[2],
        ),
    )
    used = [(k, lab) for k, lab in metrics if any(finite_number(r.get(k)) is not None for r in rows)]
    groups, summary = [], []
    for kind, pct, variant in keys:
        members = grouped[(kind, pct, variant)]
        label = (
            kind[len("custom:") :]
            if kind.startswith("custom:")
            else "baseline"
            if kind == "baseline"
            else f"{kind}-{pct:g}%" + (f" {variant}" if variant else "")
        )
        g: dict[str, Any] = {"label": label, "values": {}, "ci": {}, "spread": {}, "points": {}}
        if len(members) > 1:
            g["note"] = f"{len(members)} seeds" if kind == "random" else f"n={len(members)}"
        entry = {"setting": label, "n": len(members)}
        for key, lab in used:
            vals = [v for v in (finite_number(r.get(key)) for r in members) if v is not None]
            if not vals:
                continue
            g["values"][lab] = float(np.mean(vals))
            entry[key] = float(np.mean(vals))
            if len(members) == 1:
                ci = interval_pair(members[0].get(key + "_ci95"))
                if ci is not None:
                    g["ci"][lab] = ci
                    entry[key + "_ci95"] = list(ci)
            if len(vals) > 1:
                g["spread"][lab] = (min(vals), max(vals))
                g["points"][lab] = vals
                entry[key + "_min"], entry[key + "_max"] = min(vals), max(vals)
                entry[key + "_std"] = float(np.std(vals))
        groups.append(g)
        summary.append(entry)
    svg = grouped_bars(groups, [lab for _, lab in used], title=title, ylabel="rate", ylim=(0.0, 1.0))
    return SvgView(svg, data={"groups": summary})


def finite_number(v: Any) -> float | None:
    """A finite float, or ``None`` (also for booleans, strings and NaN)."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def interval_pair(ci: Any) -> tuple[float, float] | None:
    """``(low, high)`` of a ``[low, high]`` interval (or a dict with ``ci95``) with two finite
    ends, else ``None``."""
    if isinstance(ci, dict):
        ci = ci.get("ci95")
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return None
    lo, hi = finite_number(ci[0]), finite_number(ci[1])
    return None if lo is None or hi is None else (lo, hi)
