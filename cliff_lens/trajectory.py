"""Refusal-score trajectories: per-token probe scores, dataset curves and cliff metrics.

* :func:`compute_trajectories` scores every token of prompt + thinking + end-of-thinking
  (+ answer) of each rollout with a :class:`~cliff_lens.probe.RefusalProbe`, from ONE forward
  pass per batch: every needed hook is attached through a names filter and the probe is
  applied INSIDE the hook, so only ``[batch, pos]`` scores ever leave the model.
  Modes: ``"single"`` (the probe's own hook), ``"shared"`` (the same probe applied to the
  residual stream of every requested layer: the paper's layer-wise view) and
  ``"per_layer"`` (a dict ``{layer: probe}``, each read at its own layer).
* :func:`tail_aligned` / :func:`dataset_curve` align trajectories at the end of thinking
  (the last end-of-thinking token is position -1) and average them with a NaN-aware mean,
  or resample each rollout to ``n_points`` normalised positions by AVERAGING within bins.
  ``mode="paper_zero_pad"`` reproduces the official code (zero padding, plain mean, cubic
  resampling) for comparison only: its early points are biased towards 0.
* :func:`cliff_metrics` / :func:`cliff_table`: plateau (mean over the late thinking span),
  final score (last end-of-thinking token), cliff = plateau - final, steepest single-step
  drop and its position relative to the end of thinking; vectorised over rollouts.
* :func:`layer_position_map`: the aligned, averaged ``[layers, positions]`` map.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, overload

import torch
from jaxtyping import Float, Int, Real
from torch import Tensor

from cliff_lens._typing import Validated
from cliff_lens.io import atomic_save_safetensors, atomic_write_json
from cliff_lens.probe import RefusalProbe
from cliff_lens.readout import (
    Batch,
    Example,
    as_examples,
    final_norm,
    prepare,
    resolve_hook,
    run_batches,
    screen_nonfinite,
)

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = [
    "Trajectory",
    "compute_trajectories",
    "tail_aligned",
    "DatasetCurve",
    "dataset_curve",
    "layer_position_map",
    "CliffMetrics",
    "cliff_metrics",
    "cliff_table",
    "save_trajectories",
    "load_trajectories",
]


@dataclass
class Trajectory:
    """Per-token refusal scores of one rollout.

    Attributes:
        scores: ``[pos]`` (one read-out) or ``[layers, pos]`` (``layers`` gives the rows).
        spans: token ``[start, end)`` per span name (``prompt``, ``thinking``,
            ``end_of_thinking``, ``answer``), in the coordinates of ``scores``.
        tokens: the scored tokens ``[pos]``.
        layers: the layer of each row of a 2-D ``scores``.
        mode: ``"single"``, ``"shared"`` or ``"per_layer"``.
        id: the rollout id (or its index).
    """

    scores: Float[Tensor, "... pos"]
    spans: dict[str, tuple[int, int]]
    tokens: Int[Tensor, " pos"]
    layers: list[int] | None = None
    mode: str = "single"
    id: Any = None

    @property
    def end(self) -> int:
        """Index one past the last end-of-thinking token (the alignment anchor)."""
        if "end_of_thinking" in self.spans:
            return int(self.spans["end_of_thinking"][1])
        return int(self.scores.shape[-1])

    def row(self, layer: int | None = None) -> Float[Tensor, " pos"]:
        """The 1-D score row for ``layer`` (required when scores are ``[layers, pos]``)."""
        if self.scores.ndim == 1:
            if layer is not None and self.layers and layer not in self.layers:
                raise ValueError(f"trajectory {self.id!r} has no layer {layer}")
            return self.scores
        if layer is None:
            raise ValueError(
                f"trajectory {self.id!r} has scores for layers {self.layers}; pass layer=<one of them>"
            )
        layers = self.layers or []
        if layer not in layers:
            raise ValueError(f"trajectory {self.id!r} has no layer {layer}; available: {self.layers}")
        return self.scores[layers.index(layer)]


# --------------------------------------------------------------------------------------
# computing trajectories
# --------------------------------------------------------------------------------------


@dataclass
class _Readout:
    hook: str  # TL hook point
    row: int
    direction: Float[Tensor, " d_model"]  # float32 on the model's device
    scale: float
    bias: float
    final_norm: bool = False  # score readout.final_norm(x) instead of x


def compute_trajectories(
    model: HookedTransformer,
    rollouts: Sequence,
    probe: RefusalProbe | dict[int, RefusalProbe],
    *,
    layers: Sequence[int] | Literal["all"] | None = None,
    layer_input: Validated[Literal["resid", "final_norm"]] = "resid",
    include_answer: bool = False,
    batch_size: int = 8,
    progress: bool = True,
    truncate: Literal["error", "left"] = "error",
    on_nonfinite: Literal["raise", "nan"] = "raise",
    strict_name: bool = True,
) -> list[Trajectory]:
    """Per-token refusal scores for each rollout, one forward pass per batch.

    Args:
        model: a ``HookedTransformer``.
        rollouts: ``TokenizedRollout`` records (``.tokens``, ``.spans``) or 1-D token tensors
            (no spans: cliff metrics then need spans given separately).
        probe: a :class:`RefusalProbe`, or ``{layer: RefusalProbe}`` for per-layer probes
            (mode ``"per_layer"``; each probe read at its own hook at that layer).
        layers: with a single probe, ``None`` (default) scores the probe's own hook
            (mode ``"single"``, scores ``[pos]``); a list of layers (or ``"all"``) applies
            the SAME probe to ``blocks.{L}.hook_resid_post`` of every listed layer
            (mode ``"shared"``, the paper's layer-wise view; scores ``[layers, pos]``).
        layer_input: in ``"shared"`` mode, what the probe sees at layer L: ``"resid"`` (the
            raw residual stream, as the paper does) or ``"final_norm"`` (the residual passed
            through the final norm, :func:`cliff_lens.readout.final_norm`, weight and bias
            included: the same feature a ``final_norm_weighted`` probe was trained on, so at the
            last layer the scores equal the probe's own read-out; a "logit lens" for the probe).
        include_answer: also score the answer tokens (default: stop at the end of thinking).
        batch_size: rollouts per forward pass (length-bucketed, left-padded).
        truncate: ``"error"`` or ``"left"`` for sequences longer than ``n_ctx``
            (spans are shifted; positions cut off are dropped).
        on_nonfinite: ``"raise"`` naming the rollout, or ``"nan"`` (warn, scores set to NaN).
        strict_name: refuse a probe recorded for another model name (d_model is always checked).
    """
    readouts, mode, row_layers = _plan_readouts(model, probe, layers, layer_input, strict_name)
    examples = _scored_spans(model, rollouts, include_answer)
    prepared, _ = prepare(model, examples, "all", truncate=truncate, what="rollout")

    by_hook: dict[str, list[_Readout]] = {}
    for ro in readouts:
        by_hook.setdefault(ro.hook, []).append(ro)
    store: dict[int, Tensor] = {}

    def make_reader(batch: Batch):
        def reader(x: Float[Tensor, "batch pos d_model"], hook) -> None:
            for r in by_hook[hook.name]:
                v = (final_norm(model, x) if r.final_norm else x).float()
                store[r.row] = torch.sigmoid(
                    r.scale * (v @ r.direction.to(v.device)) + r.bias
                ).cpu()  # [b, pos]

        return reader

    examples = [p.example for p in prepared]
    out: list[Trajectory | None] = [None] * len(prepared)
    for batch in run_batches(
        model,
        prepared,
        list(by_hook),
        make_reader,
        batch_size=batch_size,
        progress=progress,
        desc="trajectories",
    ):
        s_all = torch.stack([store.pop(k) for k in range(len(readouts))], dim=1)  # [b, rows, width]
        rows = {
            i: s_all[j, :, batch.width - prepared[i].tokens.numel() :].clone()
            for j, i in enumerate(batch.index)
        }
        hint = "check the model dtype and inputs"
        for i, s in screen_nonfinite(
            rows, examples, on_nonfinite, "refusal scores", noun="rollout", hint=hint
        ).items():
            prep = prepared[i]
            out[i] = Trajectory(
                scores=s if mode != "single" else s[0],
                spans=dict(prep.spans or {}),
                tokens=prep.tokens,
                layers=row_layers,
                mode=mode,
                id=prep.example.id,
            )
    return cast(list[Trajectory], out)  # run_batches scored every rollout


def _plan_readouts(
    model: HookedTransformer,
    probe: RefusalProbe | dict[int, RefusalProbe],
    layers: Sequence[int] | Literal["all"] | None,
    layer_input: str,
    strict_name: bool,
) -> tuple[list[_Readout], str, list[int] | None]:
    """The probe read-outs to attach (one per score row), the mode and the layer of each row."""
    n_layers = model.cfg.n_layers
    readouts: list[_Readout] = []
    device = model.cfg.device

    def add(p: RefusalProbe, hook_name: str, normed: bool, row: int) -> None:
        readouts.append(_Readout(hook_name, row, p.direction.to(device).float(), p.scale, p.bias, normed))

    for p in probe.values() if isinstance(probe, dict) else [probe]:
        if isinstance(p, RefusalProbe):
            p.check_model(model, strict_name=strict_name)  # before anything else: the clearest error
    if isinstance(probe, dict):
        if not probe:
            raise ValueError("probe={} has no probes; pass {layer: RefusalProbe}")
        if layers is not None:
            raise ValueError("with per-layer probes the layers are the dict keys; do not pass layers=")
        mode, row_layers = "per_layer", sorted(int(k) for k in probe)
        for r, lay in enumerate(row_layers):
            p = probe[lay]
            spec = resolve_hook(model, p.hook, lay if ("{L}" in p.hook or "{l}" in p.hook) else p.layer)
            add(p, spec.name, spec.final_norm, r)
    elif isinstance(probe, RefusalProbe):
        if layers is None:
            mode, row_layers = "single", None
            spec = resolve_hook(model, probe.hook, probe.layer if probe.layer is not None else n_layers - 1)
            add(probe, spec.name, spec.final_norm, 0)
        else:
            mode = "shared"
            row_layers = list(range(n_layers)) if layers == "all" else [int(x) % n_layers for x in layers]
            if not row_layers:
                raise ValueError("layers=[] selects nothing")
            if layer_input not in ("resid", "final_norm"):
                raise ValueError(f"layer_input must be 'resid' or 'final_norm', got {layer_input!r}")
            for r, lay in enumerate(row_layers):
                add(probe, f"blocks.{lay}.hook_resid_post", layer_input == "final_norm", r)
    else:
        raise TypeError(
            f"probe must be a RefusalProbe or a dict {{layer: RefusalProbe}}, got {type(probe).__name__}"
        )
    return readouts, mode, row_layers


def _scored_spans(model: HookedTransformer, rollouts: Sequence, include_answer: bool) -> list[Example]:
    """The rollouts as examples cut after the end of thinking (unless ``include_answer``)."""
    examples = []
    for ex in as_examples(list(rollouts), model):
        end = ex.tokens.numel()
        if not include_answer and ex.spans and "end_of_thinking" in ex.spans:
            end = int(ex.spans["end_of_thinking"][1])
        if end == 0:
            raise ValueError(f"rollout {ex.label} has nothing to score (end of thinking at position 0)")
        examples.append(Example(ex.tokens[:end], ex.spans, ex.id, ex.index))
    return examples


# --------------------------------------------------------------------------------------
# alignment and dataset curves
# --------------------------------------------------------------------------------------


def _stack_rows(trajs: Sequence[Trajectory], layer: int | None) -> list[Tensor]:
    """Scores up to the end of thinking, as ``[K, len]`` (K = 1 or n_layers)."""
    if not trajs:
        raise ValueError("no trajectories given; compute some with compute_trajectories first")
    rows = []
    for t in trajs:
        s = t.scores if layer is None else t.row(layer)
        s = s[..., : t.end].float()
        rows.append(s if s.ndim == 2 else s[None])
    ks = {r.shape[0] for r in rows}
    if len(ks) > 1:
        raise ValueError(f"trajectories have different numbers of layers {sorted(ks)}; pass layer=")
    return rows


def tail_aligned(
    trajs: Sequence[Trajectory],
    *,
    layer: int | None = None,
    length: int | None = None,
    fill: float = math.nan,
) -> Float[Tensor, "n ... L"]:
    """Scores right-aligned at the end of thinking: column -1 is every rollout's last end-of-thinking token.

    Returns ``[n, L]`` (``[n, layers, L]`` for multi-layer trajectories without ``layer``),
    padded on the left with ``fill`` (NaN by default). ``length`` keeps only the last
    ``length`` positions.
    """
    rows = _stack_rows(trajs, layer)
    L = max(r.shape[-1] for r in rows) if length is None else int(length)
    K = rows[0].shape[0]
    out = torch.full((len(rows), K, L), fill, dtype=torch.float32)
    for i, r in enumerate(rows):
        k = min(L, r.shape[-1])
        if k:
            out[i, :, L - k :] = r[:, r.shape[-1] - k :]
    squeeze = all(t.scores.ndim == 1 for t in trajs) or layer is not None
    return out[:, 0] if squeeze else out


@dataclass
class DatasetCurve:
    """An averaged dataset curve.

    ``x``: positions relative to the end of thinking (``-L .. -1``) for tail-aligned curves,
    or normalised bin centres in ``[0, 1]`` for resampled ones. ``mean``/``std``/``count``:
    ``[L]`` or ``[layers, L]``; ``count`` = rollouts contributing to each point.
    """

    x: Real[Tensor, " L"]  # int64 offsets (tail-aligned) or float32 bin centres (resampled)
    mean: Float[Tensor, "... L"]
    std: Float[Tensor, "... L"]
    count: Int[Tensor, "... L"]
    mode: str


def _nanstats(m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    ok = torch.isfinite(m)
    cnt = ok.sum(0)
    z = torch.where(ok, m, torch.zeros_like(m))
    mean = z.sum(0) / cnt.clamp_min(1)
    var = (torch.where(ok, m - mean, torch.zeros_like(m)) ** 2).sum(0) / cnt.clamp_min(1)
    mean = torch.where(cnt > 0, mean, torch.full_like(mean, math.nan))
    return mean, var.sqrt(), cnt


def _binned(trajs: Sequence[Trajectory], layer: int | None, n_points: int, start: str) -> Tensor:
    """Per-rollout bin averages over normalised position: ``[n, K, n_points]`` (NaN for empty bins)."""
    rows = _stack_rows(trajs, layer)
    K = rows[0].shape[0]
    vals, bins, owner = [], [], []
    for i, (t, r) in enumerate(zip(trajs, rows)):
        s0 = 0
        if start != "sequence":
            if start not in t.spans:
                raise ValueError(f"trajectory {t.id!r} has no span {start!r}; pass start='sequence'")
            s0 = int(t.spans[start][0])
        seg = r[:, s0:]
        n = seg.shape[-1]
        if n == 0:
            continue
        b = ((2 * torch.arange(n) + 1) * n_points) // (
            2 * n
        )  # bin of each token's centre: averages, never subsamples
        vals.append(seg)
        bins.append(b)
        owner.append(torch.full((n,), i))
    out_sum = torch.zeros(len(rows) * n_points, K)
    out_cnt = torch.zeros(len(rows) * n_points)
    if vals:
        v = torch.cat(vals, dim=1).T  # [total, K]
        flat = torch.cat(owner) * n_points + torch.cat(bins)
        ok = torch.isfinite(v).all(1)
        out_sum.index_add_(0, flat[ok], v[ok])
        out_cnt.index_add_(0, flat[ok], torch.ones(int(ok.sum())))
    mean = out_sum / out_cnt[:, None].clamp_min(1)
    mean[out_cnt == 0] = math.nan
    return mean.view(len(rows), n_points, K).permute(0, 2, 1)


def dataset_curve(
    trajs: Sequence[Trajectory],
    *,
    n_points: int | None = None,
    mode: Validated[Literal["nanmean", "paper_zero_pad"]] = "nanmean",
    length: int | None = None,
    start: str = "prompt",
    layer: int | None = None,
) -> DatasetCurve:
    """Average refusal-score curve of a set of rollouts.

    * ``mode="nanmean"``, ``n_points=None``: tail-aligned at the end of thinking (``x`` =
      ``-L..-1``), NaN-aware mean (rollouts shorter than a position do not count there).
    * ``mode="nanmean"``, ``n_points=k``: each rollout's span from ``start`` (a span name,
      or ``"sequence"`` for token 0) to the end of thinking is mapped to ``[0, 1]`` and
      AVERAGED within ``k`` equal bins; then a NaN-aware mean over rollouts.
    * ``mode="paper_zero_pad"``: the official code's recipe, for comparison: tail-aligned,
      zero-padded on the left, plain mean (padding zeros included), then cubic
      interpolation to ``n_points`` (default 100) points. Early points are biased towards 0.
    """
    if mode == "paper_zero_pad":
        m = tail_aligned(trajs, layer=layer, length=length, fill=0.0)
        m3 = m if m.ndim == 3 else m[:, None]
        mean = m3.mean(0)
        std = m3.std(0, unbiased=False)
        L = mean.shape[-1]
        k = n_points or 100
        if L >= 4:
            from scipy.interpolate import interp1d

            xs = torch.linspace(0, 1, L).numpy()
            xn = torch.linspace(0, 1, k).numpy()
            mean = torch.from_numpy(interp1d(xs, mean.numpy(), kind="cubic", axis=-1)(xn)).float()
            std = torch.from_numpy(interp1d(xs, std.numpy(), kind="cubic", axis=-1)(xn)).float()
        else:
            mean = torch.nn.functional.interpolate(mean[None], size=k, mode="linear")[0]
            std = torch.nn.functional.interpolate(std[None], size=k, mode="linear")[0]
        cnt = torch.full(mean.shape, m3.shape[0])
        x = torch.linspace(0, 1, k)
    elif mode == "nanmean":
        if n_points is None:
            m = tail_aligned(trajs, layer=layer, length=length)
            m3 = m if m.ndim == 3 else m[:, None]
            x = torch.arange(-m3.shape[-1], 0)
        else:
            if n_points < 1:
                raise ValueError(f"n_points must be >= 1, got {n_points}")
            m3 = _binned(trajs, layer, n_points, start)
            x = (torch.arange(n_points) + 0.5) / n_points
        mean, std, cnt = _nanstats(m3)
    else:
        raise ValueError(f"mode must be 'nanmean' or 'paper_zero_pad', got {mode!r}")
    squeeze = all(t.scores.ndim == 1 for t in trajs) or layer is not None
    if squeeze:
        mean, std, cnt = mean[0], std[0], cnt[0]
    return DatasetCurve(x=x, mean=mean, std=std, count=cnt, mode=mode)


def layer_position_map(
    trajs: Sequence[Trajectory],
    *,
    n_points: int | None = None,
    length: int | None = 64,
    start: str = "prompt",
) -> tuple[Float[Tensor, "layers L"], list[int], Real[Tensor, " L"]]:
    """Layer x position map of mean refusal score (NaN-aware), aligned at the end of thinking.

    Returns ``(map [layers, L], layers, x)``; ``length`` keeps the last ``length`` tokens
    (default 64: the cliff zone) unless ``n_points`` asks for normalised-position bins.
    """
    if any(t.scores.ndim != 2 for t in trajs):
        raise ValueError(
            "layer_position_map needs multi-layer trajectories (compute_trajectories(..., layers=[...]))"
        )
    c = dataset_curve(trajs, n_points=n_points, length=None if n_points else length, start=start)
    return c.mean, list(trajs[0].layers or []), c.x


# --------------------------------------------------------------------------------------
# cliff metrics
# --------------------------------------------------------------------------------------


@dataclass
class CliffMetrics:
    """Cliff metrics of one rollout (scores in probability units).

    ``plateau``: mean score over the late thinking span; ``final``: score at the last
    end-of-thinking token; ``cliff`` = ``plateau - final``; ``steepest_drop``: the most
    negative single-token change in the search region (``<= 0``) and
    ``steepest_drop_pos`` the position of the token AFTER that step, relative to the end
    of thinking (``-1`` = last end-of-thinking token); ``steepest_drop_index`` the same as an
    absolute token index. ``note`` explains NaN values (e.g. a rollout without thinking).
    """

    plateau: float
    final: float
    cliff: float
    steepest_drop: float
    steepest_drop_pos: int | None
    steepest_drop_index: int | None
    n_plateau: int
    id: Any = None
    note: str = ""

    def to_dict(self) -> dict:
        """Plain dict (JSON-ready)."""
        return asdict(self)


def cliff_table(
    trajs: Sequence[Trajectory],
    *,
    layer: int | None = None,
    plateau: Validated[Literal["late", "all"]] = "late",
    plateau_window: int = 32,
    exclude_last: int = 0,
    drop_search: Validated[Literal["late", "thinking", "all"]] = "late",
) -> dict[str, Tensor]:
    """Vectorised cliff metrics for many rollouts: a dict of columns ``[n]`` (``[n, layers]`` for multi-layer).

    Plateau span: the thinking span minus its last ``exclude_last`` tokens; with
    ``plateau="late"`` only its last ``plateau_window`` tokens (default 32), with ``"all"``
    all of it. Steepest-drop search: ``"late"`` = from the start of the plateau window to
    the last end-of-thinking token (the cliff zone), ``"thinking"`` = thinking +
    end-of-thinking, ``"all"`` = every scored token up to the end of thinking.
    Columns: plateau, final, cliff, steepest_drop, steepest_drop_pos (relative to the end of
    thinking; 0 where undefined), steepest_drop_index, n_plateau, has_thinking.
    """
    if plateau not in ("late", "all"):
        raise ValueError(f"plateau must be 'late' or 'all', got {plateau!r}")
    if drop_search not in ("late", "thinking", "all"):
        raise ValueError(f"drop_search must be 'late', 'thinking' or 'all', got {drop_search!r}")
    if plateau_window < 1 or exclude_last < 0:
        raise ValueError("plateau_window must be >= 1 and exclude_last >= 0")
    for t in trajs:
        if "thinking" not in t.spans:
            raise ValueError(
                f"trajectory {t.id!r} has no 'thinking' span; cliff metrics need TokenizedRollout spans "
                "(templates.ReasoningTemplate.tokenize)"
            )
    m = tail_aligned(trajs, layer=layer)  # [n, (K,) L]
    multi = m.ndim == 3
    m3 = m if multi else m[:, None]
    n, _, L = m3.shape
    ends = torch.tensor([t.end for t in trajs])
    ts = torch.tensor([t.spans["thinking"][0] for t in trajs]) - ends  # relative (<= 0)
    te = torch.tensor([t.spans["thinking"][1] for t in trajs]) - ends
    rel = torch.arange(-L, 0)[None, :]  # column -> position relative to end
    hi = te - exclude_last
    lo = torch.maximum(ts, hi - plateau_window) if plateau == "late" else ts
    pmask = (rel >= lo[:, None]) & (rel < hi[:, None])  # [n, L]
    pm = pmask[:, None, :] & torch.isfinite(m3)
    n_plat = pm.sum(-1)
    plat = torch.where(pm, m3, torch.zeros_like(m3)).sum(-1) / n_plat.clamp_min(1)
    plat = torch.where(n_plat > 0, plat, torch.full_like(plat, math.nan))
    final = m3[:, :, -1]
    # steepest drop: step from column c-1 to c, both inside the search region
    lens = torch.tensor([t.end for t in trajs])
    first = {"late": torch.minimum(lo, hi), "thinking": ts, "all": -lens}[drop_search]
    diff = m3[:, :, 1:] - m3[:, :, :-1]  # [n, K, L-1]; step into column c = 1..L-1
    dmask = (rel[:, 1:] - 1 >= first[:, None])[:, None, :] & torch.isfinite(diff)
    masked = torch.where(dmask, diff, torch.full_like(diff, math.inf))
    if L > 1:
        val, arg = masked.min(-1)
    else:
        val, arg = torch.full((n, m3.shape[1]), math.inf), torch.zeros((n, m3.shape[1]), dtype=torch.long)
    has = torch.isfinite(val)
    pos = torch.where(has, arg + 1 - L, torch.zeros_like(arg))
    cols = {
        "plateau": plat,
        "final": final,
        "cliff": plat - final,
        "steepest_drop": torch.where(has, val, torch.full_like(val, math.nan)),
        "steepest_drop_pos": pos,
        "steepest_drop_index": torch.where(has, pos + ends[:, None], torch.zeros_like(pos)),
        "n_plateau": n_plat,
        "has_thinking": (te > ts)[:, None].expand_as(n_plat),
    }
    return {k: (v if multi else v[:, 0]) for k, v in cols.items()}


@overload
def cliff_metrics(
    trajs: Trajectory,
    *,
    layer: int | None = ...,
    plateau: Literal["late", "all"] = ...,
    plateau_window: int = ...,
    exclude_last: int = ...,
    drop_search: Literal["late", "thinking", "all"] = ...,
) -> CliffMetrics: ...


@overload
def cliff_metrics(
    trajs: Sequence[Trajectory],
    *,
    layer: int | None = ...,
    plateau: Literal["late", "all"] = ...,
    plateau_window: int = ...,
    exclude_last: int = ...,
    drop_search: Literal["late", "thinking", "all"] = ...,
) -> list[CliffMetrics]: ...


def cliff_metrics(
    trajs: Trajectory | Sequence[Trajectory],
    *,
    layer: int | None = None,
    plateau: Literal["late", "all"] = "late",
    plateau_window: int = 32,
    exclude_last: int = 0,
    drop_search: Literal["late", "thinking", "all"] = "late",
) -> CliffMetrics | list[CliffMetrics]:
    """Per-rollout :class:`CliffMetrics` (one or a list), computed by :func:`cliff_table`.

    Multi-layer trajectories need ``layer=``. A rollout without thinking tokens gets NaN
    plateau/cliff and a ``note`` saying so (a recorded skip, not an error).
    """
    single = isinstance(trajs, Trajectory)
    tl = [trajs] if isinstance(trajs, Trajectory) else list(trajs)
    if any(t.scores.ndim == 2 for t in tl) and layer is None:
        raise ValueError("multi-layer trajectories: pass layer=<int> (or use cliff_table for every layer)")
    c = cliff_table(
        tl,
        layer=layer,
        plateau=plateau,
        plateau_window=plateau_window,
        exclude_last=exclude_last,
        drop_search=drop_search,
    )
    out: list[CliffMetrics] = []
    for i, t in enumerate(tl):
        has_drop = bool(torch.isfinite(c["steepest_drop"][i]))
        note = ""
        if not bool(c["has_thinking"][i]):
            note = "no thinking tokens: plateau and cliff are undefined"
        elif int(c["n_plateau"][i]) == 0:
            note = "plateau window is empty (exclude_last removes every thinking token)"
        out.append(
            CliffMetrics(
                plateau=float(c["plateau"][i]),
                final=float(c["final"][i]),
                cliff=float(c["cliff"][i]),
                steepest_drop=float(c["steepest_drop"][i]),
                steepest_drop_pos=int(c["steepest_drop_pos"][i]) if has_drop else None,
                steepest_drop_index=int(c["steepest_drop_index"][i]) if has_drop else None,
                n_plateau=int(c["n_plateau"][i]),
                id=t.id,
                note=note,
            )
        )
    return out[0] if single else out


# --------------------------------------------------------------------------------------
# persistence
# --------------------------------------------------------------------------------------


def save_trajectories(
    prefix: str | Path, trajs: Sequence[Trajectory], meta: dict | None = None
) -> tuple[Path, Path]:
    """Write ``prefix.safetensors`` (concatenated scores/tokens + offsets) and ``prefix.json`` atomically."""
    prefix = Path(prefix)
    if not trajs:
        raise ValueError("no trajectories to save")
    rows = [t.scores if t.scores.ndim == 2 else t.scores[None] for t in trajs]
    lens = torch.tensor([r.shape[-1] for r in rows])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
    tensors = {
        "scores": torch.cat(rows, dim=-1).float(),
        "tokens": torch.cat([t.tokens.long() for t in trajs]),
        "offsets": offsets,
    }
    info = {
        "format": "cliff_lens.trajectories",
        "version": 1,
        "mode": trajs[0].mode,
        "layers": trajs[0].layers,
        "ids": [t.id if isinstance(t.id, str | int) else str(t.id) for t in trajs],
        "spans": [{k: list(v) for k, v in t.spans.items()} for t in trajs],
        "meta": meta or {},
    }
    st = prefix.with_name(prefix.name + ".safetensors")
    js = prefix.with_name(prefix.name + ".json")
    atomic_save_safetensors(tensors, st)
    atomic_write_json(js, info)
    return st, js


def load_trajectories(prefix: str | Path) -> list[Trajectory]:
    """Read trajectories written by :func:`save_trajectories` (clear error on corrupt files)."""
    from safetensors.torch import load_file

    prefix = Path(prefix)
    st = prefix.with_name(prefix.name + ".safetensors")
    js = prefix.with_name(prefix.name + ".json")
    try:
        info = json.loads(js.read_text(encoding="utf-8"))
        t = load_file(str(st))
        scores, tokens, offsets = t["scores"], t["tokens"], t["offsets"]
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(
            f"trajectory files {st} / {js} are corrupt ({type(e).__name__}: {e}); recompute them"
        ) from None
    one = info["mode"] == "single"
    out = []
    for i in range(len(info["ids"])):
        a, b = int(offsets[i]), int(offsets[i + 1])
        s = scores[:, a:b]
        out.append(
            Trajectory(
                scores=s[0] if one else s,
                spans={k: (int(v[0]), int(v[1])) for k, v in info["spans"][i].items()},
                tokens=tokens[a:b],
                layers=info["layers"],
                mode=info["mode"],
                id=info["ids"][i],
            )
        )
    return out
