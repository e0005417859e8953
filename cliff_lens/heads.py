"""Per-head direct attribution to a (refusal) direction, completeness check and head rankings.

A head ``(l, h)`` writes ``z[l, h] @ W_O[l, h]`` into the residual stream. Its *direct
attribution* to a direction ``d`` at a position is ``(z[pos, h] @ W_O[l, h]) . d``. This module
computes that number for every head of every layer in one batched forward pass per batch:

* the batch is left padded with an attention mask (rotary and absolute position embeddings are
  shifted by TransformerLens, so padding does not change any real token's activations);
* only ``blocks.*.attn.hook_z`` is hooked (``names_filter``), the requested positions are
  gathered inside the hook and reduced immediately with ``W_O[l] @ d`` (precomputed as a
  ``[n_heads, d_head]`` matrix per layer), so neither ``hook_result`` (``use_attn_result``) nor
  the full ``z`` tensor is ever kept;
* the forward stops after the last block (``stop_at_layer``): the unembedding is never computed.

Variants of the direction (all documented in ``docs/heads.md``):

``raw``
    The unit direction ``d / |d|``: the official RefusalCliff code's head score (bias free, final
    norm weight ignored).
``norm_aware``
    ``d_unit * ln_final.w`` (for LayerNorm models also centred: ``LN`` subtracts the mean). A probe
    that reads the final norm *with its weight* computes ``w . (gamma * x / rms(x)) =
    (w * gamma) . x / rms(x)``; this variant is the numerator's share of every head. The
    per-position factor ``1 / rms(x)`` is common to every head at that position, so it does not
    change the ranking within a position; it is *not* applied.
``with_bias``
    The paper's equation with the probe's own weight and bias: the probe *logit* of the head's
    write, ``(z @ W_O) . w + b`` with ``w = probe.scale * probe.direction`` (or ``direction`` as
    given when a tensor is passed, with ``bias=``). The sigmoid is not applied (apply
    ``torch.sigmoid`` for the probability form). With a positive ``scale`` this ranks heads
    exactly as ``raw`` does; the bias shifts every head by the same amount.

GQA models: ``hook_z`` is per *query* head, so scores are per query head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .fast_forward import fast_forward

__all__ = [
    "head_attributions",
    "direct_attribution_decomposition",
    "DirectDecomposition",
    "suppression_heads",
    "promoting_heads",
    "HeadRanking",
    "rank_heads",
    "n_top_heads",
    "validate_heads",
    "resolve_direction",
    "resolve_positions",
    "left_pad",
    "Variant",
]

Variant = Literal["raw", "norm_aware", "with_bias"]
_VARIANTS = ("raw", "norm_aware", "with_bias")
PositionSpec = str | tuple[int, int] | Sequence[int]


# --------------------------------------------------------------------------------------------
# input helpers (shared with ablation.py and evaluate.py)
# --------------------------------------------------------------------------------------------


def _example(item: Any, i: int) -> tuple[Tensor, dict | None]:
    """(tokens 1-D long tensor, spans dict or None) for a TokenizedRollout or a token tensor."""
    if isinstance(item, Tensor):
        toks, spans = item, None
    elif hasattr(item, "tokens"):
        toks, spans = item.tokens, getattr(item, "spans", None)
        if not isinstance(toks, Tensor):
            toks = torch.as_tensor(toks)
    else:
        raise TypeError(
            f"batch item {i} is a {type(item).__name__}; pass TokenizedRollout records "
            "(cliff_lens.templates) or 1-D token tensors"
        )
    if toks.ndim == 2 and toks.shape[0] == 1:
        toks = toks[0]
    if toks.ndim != 1 or toks.numel() == 0:
        raise ValueError(
            f"batch item {i} has token shape {tuple(toks.shape)}; each item must be a non-empty 1-D token tensor"
        )
    if toks.is_floating_point():
        raise TypeError(f"batch item {i} has float tokens ({toks.dtype}); pass integer token ids")
    return toks.long(), spans


def _examples(batch: Any) -> list[tuple[Tensor, dict | None]]:
    if isinstance(batch, Tensor):
        if batch.ndim == 1:
            batch = [batch]
        elif batch.ndim == 2:
            batch = list(batch)
        else:
            raise ValueError(
                f"token tensor batch has shape {tuple(batch.shape)}; expected [pos] or [batch, pos]"
            )
    elif hasattr(batch, "tokens") and hasattr(batch, "spans"):
        batch = [batch]
    items = list(batch)
    if not items:
        raise ValueError("empty batch; pass at least one TokenizedRollout or token tensor")
    return [_example(it, i) for i, it in enumerate(items)]


def resolve_positions(
    positions: PositionSpec, n_tokens: int, spans: dict | None = None, *, index: int = 0
) -> list[int]:
    """Turn a position spec into sorted absolute token indices of one example.

    ``positions``: ``"all"``; ``"last"`` (last token of the sequence); a span name of the
    record's ``spans`` (``"end_of_thinking"``, ``"thinking"``, ...: every token of the span);
    ``"<span>_last"`` (the span's last token, e.g. ``"end_of_thinking_last"``: the paper's probe
    position); a ``(start, end)`` half-open range; or a list of indices. Negative indices count
    from the end of the sequence. Raises ``ValueError`` naming the example when a position is
    outside the sequence or a span is missing/empty.
    """
    where = f"example {index} ({n_tokens} tokens)"
    if isinstance(positions, str):
        if positions == "all":
            return list(range(n_tokens))
        if positions == "last":
            return [n_tokens - 1]
        name, last = positions, False
        if spans is None or name not in spans:
            if name.endswith("_last"):
                name, last = name[: -len("_last")], True
        if spans is None:
            raise ValueError(
                f"positions={positions!r} needs spans but {where} is a bare token tensor; pass TokenizedRollout "
                "records (template.tokenize(...)) or positions='last' / (start, end) / a list of indices"
            )
        if name not in spans:
            raise ValueError(
                f"positions={positions!r}: {where} has no span {name!r} (spans: {sorted(spans)}); "
                "use one of those span names, '<span>_last', 'last' or 'all'"
            )
        s, e = (int(v) for v in spans[name])
        if not 0 <= s < e <= n_tokens:
            raise ValueError(
                f"positions={positions!r}: span {name!r} of {where} is [{s}, {e}), empty or outside the "
                "sequence; check the template split (did the thinking close?) or choose another span"
            )
        return [e - 1] if last else list(range(s, e))
    if isinstance(positions, tuple) and len(positions) == 2 and all(isinstance(v, int) for v in positions):
        s, e = positions
        s = s + n_tokens if s < 0 else s
        e = e + n_tokens if e < 0 else e
        if not 0 <= s < e <= n_tokens:
            raise ValueError(
                f"positions=(start, end)={positions!r} is empty or outside {where}; pass 0 <= start < end <= {n_tokens}"
            )
        return list(range(s, e))
    if isinstance(positions, Tensor):
        positions = positions.tolist()
    try:
        idx = [int(p) for p in positions]
    except TypeError:
        raise TypeError(
            f"positions={positions!r} is not understood; pass 'all', 'last', a span name, (start, end) or a list of ints"
        ) from None
    if not idx:
        raise ValueError("positions is an empty list; pass at least one index")
    out = []
    for p in idx:
        q = p + n_tokens if p < 0 else p
        if not 0 <= q < n_tokens:
            raise ValueError(f"position {p} is outside {where}; use -{n_tokens} <= position < {n_tokens}")
        out.append(q)
    return sorted(set(out))


def _pad_id(model: Any) -> int:
    tok = getattr(model, "tokenizer", None)
    pid = getattr(tok, "pad_token_id", None) if tok is not None else None
    if pid is None:
        pid = getattr(tok, "eos_token_id", None) if tok is not None else None
    return int(pid) if pid is not None else 0


def left_pad(
    seqs: Sequence[Tensor], pad_id: int = 0, device: Any = None
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], list[int]]:
    """Left pad 1-D token tensors: returns ``(tokens, attention_mask, offsets)`` where
    ``offsets[i]`` is how many pad tokens precede example ``i`` (its index shift)."""
    T = max(int(s.numel()) for s in seqs)
    toks = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    offsets = []
    for i, s in enumerate(seqs):
        o = T - s.numel()
        toks[i, o:] = s
        mask[i, o:] = 1
        offsets.append(o)
    if device is not None:
        toks, mask = toks.to(device), mask.to(device)
    return toks, mask, offsets


def _model_device(model: Any) -> torch.device:
    return model.W_E.device if hasattr(model, "W_E") else torch.device(model.cfg.device or "cpu")


def validate_heads(model_or_cfg: Any, heads: Any) -> list[tuple[int, int]]:
    """Check a head list ``[(layer, head), ...]`` against the model; returns it as int tuples
    (order kept, duplicates dropped; ``(layer, head, score)`` triples are accepted).

    Raises ``ValueError`` for an empty list, a malformed entry or an index out of range."""
    cfg = getattr(model_or_cfg, "cfg", model_or_cfg)
    L, H = cfg.n_layers, cfg.n_heads
    if heads is None:
        raise ValueError("heads is None; pass a list of (layer, head) pairs, e.g. suppression_heads(scores)")
    heads = list(heads)
    if not heads:
        raise ValueError(
            "empty head list; pass at least one (layer, head) pair (e.g. from suppression_heads(scores))"
        )
    out = []
    for item in heads:
        try:
            lay, hd = int(item[0]), int(item[1])
        except (TypeError, IndexError, ValueError):
            raise ValueError(f"head {item!r} is not a (layer, head) pair; pass tuples like (3, 5)") from None
        if not (0 <= lay < L and 0 <= hd < H):
            raise ValueError(
                f"head (layer={lay}, head={hd}) is out of range for a model with {L} layers x {H} heads; "
                f"use 0 <= layer < {L} and 0 <= head < {H}"
            )
        out.append((lay, hd))
    return list(dict.fromkeys(out))


def _check_supported(model: Any) -> None:
    cfg = model.cfg
    if getattr(cfg, "use_normalization_before_and_after", False):
        raise NotImplementedError(
            "this model normalises attention outputs after the heads (post-attention norm, e.g. Gemma 2/3), so a "
            "head's write is not z @ W_O and direct attribution is not linear; use head_causal_effects instead"
        )


def _final_norm_gamma(model: Any) -> Tensor | None:
    ln = getattr(model, "ln_final", None)
    w = getattr(ln, "w", None) if ln is not None else None
    return w.detach() if isinstance(w, Tensor) else None


def resolve_direction(
    model: Any, direction: Any, variant: str = "raw", bias: float | None = None
) -> tuple[Float[Tensor, "d_model"], float]:
    """The vector that head writes are projected on, and the constant added, for a variant.

    ``direction``: a ``RefusalProbe`` (uses ``.direction``, ``.scale``, ``.bias``) or a
    ``[d_model]`` tensor. Returns ``(vector (float32), constant)``; see the module docstring.
    """
    if variant not in _VARIANTS:
        raise ValueError(f"variant={variant!r} is unknown; use one of {_VARIANTS}")
    d_model = model.cfg.d_model
    probe_bias = 0.0
    if isinstance(direction, Tensor):
        w = direction
    elif hasattr(direction, "direction"):
        w = torch.as_tensor(direction.direction)
        scale = float(getattr(direction, "scale", 1.0) or 1.0)
        probe_bias = float(getattr(direction, "bias", 0.0) or 0.0)
        w = w * scale if variant == "with_bias" else w
    else:
        raise TypeError(
            f"direction is a {type(direction).__name__}; pass a RefusalProbe or a [d_model] tensor"
        )
    w = w.detach().float().reshape(-1) if w.ndim == 2 and 1 in w.shape else w.detach().float()
    if w.ndim != 1 or w.shape[0] != d_model:
        raise ValueError(
            f"direction has shape {tuple(w.shape)} but the model's d_model is {d_model}; pass a [{d_model}] "
            "vector (a probe trained on this model)"
        )
    if not torch.isfinite(w).all() or float(w.norm()) == 0.0:
        raise ValueError("direction is zero or not finite; check the probe")
    const = 0.0
    if variant == "raw":
        vec = w / w.norm()
    elif variant == "norm_aware":
        vec = w / w.norm()
        gamma = _final_norm_gamma(model)
        if gamma is not None:
            vec = vec * gamma.float().to(vec.device)
        if model.cfg.normalization_type in ("LN", "LNPre"):
            vec = vec - vec.mean()
    else:  # with_bias
        vec = w
        const = float(bias) if bias is not None else probe_bias
    return vec, const


# --------------------------------------------------------------------------------------------
# attribution
# --------------------------------------------------------------------------------------------


def head_attributions(
    model: Any,
    batch: Any,
    direction: Any,
    *,
    positions: PositionSpec = "end_of_thinking",
    variant: Variant = "raw",
    bias: float | None = None,
    batch_size: int = 8,
    per_example: bool = False,
) -> Float[Tensor, "n_layers n_heads"] | Float[Tensor, "n_examples n_layers n_heads"]:
    """Direct write of every attention head onto ``direction`` at the chosen positions.

    Args:
        model: a ``HookedTransformer`` (any dtype; scores are computed in float32).
        batch: ``TokenizedRollout`` records (with ``spans``), 1-D token tensors, or a
            ``[batch, pos]`` tensor of unpadded equal-length sequences.
        direction: a ``RefusalProbe`` or a ``[d_model]`` tensor.
        positions: ``"end_of_thinking"`` (default: every token of the cliff zone), any span name,
            ``"<span>_last"``, ``"last"``, ``"all"``, ``(start, end)`` or a list of indices
            (indices into each example's own tokens; negative ones count from its end).
        variant: ``"raw"``, ``"norm_aware"`` or ``"with_bias"`` (see the module docstring).
        bias: the constant for ``with_bias`` when ``direction`` is a tensor (a probe's own bias is
            used otherwise).
        batch_size: examples per forward pass.
        per_example: return ``[n_examples, n_layers, n_heads]`` instead of the mean.

    Returns:
        ``[n_layers, n_heads]`` float32 (CPU): the mean over examples of each example's mean over
        its positions of ``(z[pos, h] @ W_O[l, h]) . v`` (+ the constant for ``with_bias``).
    """
    _check_supported(model)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; pass a positive integer")
    vec, const = resolve_direction(model, direction, variant, bias)
    exs = _examples(batch)
    pos_lists = [resolve_positions(positions, t.numel(), sp, index=i) for i, (t, sp) in enumerate(exs)]
    L, H = model.cfg.n_layers, model.cfg.n_heads

    # W_O[l] @ v per layer, on that layer's device: [H, d_head]
    wod = []
    with torch.no_grad():
        for blk in model.blocks:
            W_O = blk.attn.W_O  # [H, d_head, d_model]
            wod.append(torch.einsum("hdm,m->hd", W_O.float(), vec.to(W_O.device)))

    pad_id = _pad_id(model)
    dev = _model_device(model)
    results = []
    for b0 in range(0, len(exs), batch_size):
        chunk = exs[b0 : b0 + batch_size]
        plist = pos_lists[b0 : b0 + batch_size]
        toks, mask, offsets = left_pad([t for t, _ in chunk], pad_id, dev)
        B = len(chunk)
        P = max(len(p) for p in plist)
        idx = torch.zeros((B, P), dtype=torch.long)
        wts = torch.zeros((B, P), dtype=torch.float32)
        for i, (p, o) in enumerate(zip(plist, offsets, strict=True)):
            idx[i, : len(p)] = torch.tensor(p) + o
            idx[i, len(p) :] = o + p[-1]
            wts[i, : len(p)] = 1.0 / len(p)
        out = torch.zeros((B, L, H), dtype=torch.float32)
        hook_fn = partial(
            _attribution_hook, rows=torch.arange(B)[:, None], idx=idx, wts=wts, wod=wod, out=out
        )

        with torch.no_grad(), fast_forward(model):
            model.run_with_hooks(
                toks,
                attention_mask=mask,
                stop_at_layer=L,
                fwd_hooks=[(lambda name: name.endswith("attn.hook_z"), hook_fn)],
            )
        results.append(out)
    per = torch.cat(results, 0) + const
    return per if per_example else per.mean(0)


def _attribution_hook(
    z: Float[Tensor, "batch pos n_heads d_head"],
    hook: Any,
    *,
    rows: Tensor,
    idx: Tensor,
    wts: Tensor,
    wod: list[Tensor],
    out: Tensor,
) -> None:
    """Gather the positions of each example and reduce them with ``W_O[l] @ v`` at once."""
    layer = int(hook.name.split(".")[1])
    d = z.device
    zg = z[rows.to(d), idx.to(d)].float()  # [B, P, H, d_head]
    out[:, layer] = torch.einsum("bphd,hd,bp->bh", zg, wod[layer].to(d), wts.to(d)).cpu()


# --------------------------------------------------------------------------------------------
# completeness check
# --------------------------------------------------------------------------------------------


@dataclass
class DirectDecomposition:
    """Every direct term of the final residual stream projected on a direction at one position.

    ``embed + pos_embed + heads.sum() + attn_bias.sum() + mlp.sum() == total`` and
    ``resid_final`` is the projection of ``blocks[-1].hook_resid_post`` (before the final norm);
    ``error = resid_final - total`` is zero up to float error."""

    embed: float
    pos_embed: float
    heads: Float[Tensor, "n_layers n_heads"]
    attn_bias: Float[Tensor, "n_layers"]
    mlp: Float[Tensor, "n_layers"]
    total: float
    resid_final: float
    error: float
    position: int

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {
            "embed": self.embed,
            "pos_embed": self.pos_embed,
            "heads": self.heads.tolist(),
            "attn_bias": self.attn_bias.tolist(),
            "mlp": self.mlp.tolist(),
            "heads_total": float(self.heads.sum()),
            "mlp_total": float(self.mlp.sum()),
            "total": self.total,
            "resid_final": self.resid_final,
            "error": self.error,
            "position": self.position,
        }


def direct_attribution_decomposition(
    model: Any,
    tokens: Any,
    direction: Any,
    pos: int = -1,
    *,
    variant: Literal["raw", "norm_aware"] = "raw",
) -> DirectDecomposition:
    """Decompose ``resid_final[pos] . v`` into embedding, per-head, attention-bias and MLP terms.

    ``tokens``: a 1-D token tensor or a ``TokenizedRollout``; ``pos``: token index (negative
    counts from the end). ``v`` is the ``raw`` or ``norm_aware`` vector of ``direction`` (see
    :func:`head_attributions`). Exact for models loaded with ``fold_ln=False`` and
    ``center_writing_weights=False`` (centred writing weights are still exact; folding only
    changes which vector the norm-aware variant should use). Use it to check that the per-head
    scores account for the final projection (``error`` ~ 1e-6 in fp32).
    """
    _check_supported(model)
    if variant not in ("raw", "norm_aware"):
        raise ValueError(f"variant={variant!r}: the decomposition is linear only for 'raw' and 'norm_aware'")
    vec, _ = resolve_direction(model, direction, variant)
    ((toks, _sp),) = _examples([tokens])
    (p,) = resolve_positions([pos], toks.numel())
    L = model.cfg.n_layers
    names = {"hook_embed", "hook_pos_embed", f"blocks.{L - 1}.hook_resid_post"}
    names |= {f"blocks.{i}.attn.hook_z" for i in range(L)} | {f"blocks.{i}.hook_mlp_out" for i in range(L)}
    dev = _model_device(model)
    with torch.no_grad():
        _, cache = model.run_with_cache(toks[None].to(dev), names_filter=lambda n: n in names)

    def proj(t: Tensor) -> float:
        return float(t[0, p].double() @ vec.double().to(t.device))

    embed = proj(cache["hook_embed"])
    pos_embed = (
        proj(cache["hook_pos_embed"])
        if model.cfg.positional_embedding_type == "standard" and "hook_pos_embed" in cache
        else 0.0
    )
    heads = torch.zeros(L, model.cfg.n_heads, dtype=torch.float64)
    attn_bias = torch.zeros(L, dtype=torch.float64)
    mlp = torch.zeros(L, dtype=torch.float64)
    for i, blk in enumerate(model.blocks):
        z = cache[f"blocks.{i}.attn.hook_z"][0, p].double()  # [H, d_head]
        v = vec.double().to(z.device)
        heads[i] = torch.einsum("hd,hdm,m->h", z, blk.attn.W_O.detach().double(), v).cpu()
        attn_bias[i] = float(blk.attn.b_O.detach().double() @ v)
        key = f"blocks.{i}.hook_mlp_out"
        mlp[i] = proj(cache[key]) if key in cache else 0.0
    total = embed + pos_embed + float(heads.sum() + attn_bias.sum() + mlp.sum())
    resid = proj(cache[f"blocks.{L - 1}.hook_resid_post"])
    return DirectDecomposition(
        embed=embed,
        pos_embed=pos_embed,
        heads=heads.float(),
        attn_bias=attn_bias.float(),
        mlp=mlp.float(),
        total=total,
        resid_final=resid,
        error=resid - total,
        position=p,
    )


# --------------------------------------------------------------------------------------------
# ranking
# --------------------------------------------------------------------------------------------


def n_top_heads(n_total: int, top_percent: float) -> int:
    """How many heads ``top_percent`` percent of ``n_total`` is: ``ceil(n_total * top_percent / 100)``
    (3% of 784 heads = 24, of 1920 = 58, as in the paper). Errors outside ``(0, 100]``."""
    if isinstance(top_percent, bool) or not isinstance(top_percent, int | float) or math.isnan(top_percent):
        raise ValueError(f"top_percent={top_percent!r}; pass a number in (0, 100]")
    if not 0 < top_percent <= 100:
        raise ValueError(f"top_percent={top_percent} is outside (0, 100]; e.g. 3 for the paper's 3% of heads")
    return max(1, math.ceil(n_total * top_percent / 100 - 1e-9))


def _check_scores(scores: Tensor) -> Tensor:
    if not isinstance(scores, Tensor) or scores.ndim != 2 or scores.numel() == 0:
        raise ValueError(
            f"scores must be a [n_layers, n_heads] tensor (from head_attributions), got "
            f"{getattr(scores, 'shape', type(scores).__name__)}"
        )
    return scores.detach().float().cpu()


def _top(scores: Tensor, top_percent: float, n: int | None, descending: bool) -> list[tuple[int, int, float]]:
    s = _check_scores(scores)
    H = s.shape[1]
    k = n_top_heads(s.numel(), top_percent) if n is None else int(n)
    if not 1 <= k <= s.numel():
        raise ValueError(f"n={n} heads requested but the model has {s.numel()}; pass 1 <= n <= {s.numel()}")
    flat = s.flatten()
    order = torch.sort(flat, descending=descending, stable=True).indices[:k]
    return [(int(i) // H, int(i) % H, float(flat[i])) for i in order]


def suppression_heads(
    scores: Float[Tensor, "n_layers n_heads"], top_percent: float = 3, *, n: int | None = None
) -> list[tuple[int, int, float]]:
    """The ``top_percent``% heads with the most negative scores (most negative first), as
    ``(layer, head, score)``. ``n`` overrides the count. See :func:`n_top_heads`."""
    return _top(scores, top_percent, n, descending=False)


def promoting_heads(
    scores: Float[Tensor, "n_layers n_heads"], top_percent: float = 3, *, n: int | None = None
) -> list[tuple[int, int, float]]:
    """The ``top_percent``% heads with the most positive scores (most positive first)."""
    return _top(scores, top_percent, n, descending=True)


@dataclass
class HeadRanking:
    """Scores of every head plus the data for per-layer and per-head heatmaps.

    ``scores``: ``[n_layers, n_heads]``; ``per_layer_sum``: total direct write of each layer's
    heads; ``per_layer_negative``/``per_layer_positive``: the sums of the negative / positive
    scores per layer (suppression vs promotion mass); ``suppression``/``promoting``: the top
    ``top_percent``% lists."""

    scores: Float[Tensor, "n_layers n_heads"]
    top_percent: float = 3
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = _check_scores(self.scores)
        n_top_heads(self.scores.numel(), self.top_percent)

    @property
    def suppression(self) -> list[tuple[int, int, float]]:
        """Most negative heads first."""
        return suppression_heads(self.scores, self.top_percent)

    @property
    def promoting(self) -> list[tuple[int, int, float]]:
        """Most positive heads first."""
        return promoting_heads(self.scores, self.top_percent)

    @property
    def per_layer_sum(self) -> Float[Tensor, "n_layers"]:
        """Sum over heads per layer."""
        return self.scores.sum(1)

    @property
    def per_layer_negative(self) -> Float[Tensor, "n_layers"]:
        """Sum of the negative scores per layer."""
        return self.scores.clamp(max=0).sum(1)

    @property
    def per_layer_positive(self) -> Float[Tensor, "n_layers"]:
        """Sum of the positive scores per layer."""
        return self.scores.clamp(min=0).sum(1)

    def heatmap(self) -> dict:
        """Plot-ready data: ``{"z": [[...]] (layer rows x head columns), "x": heads, "y": layers, ...}``."""
        L, H = self.scores.shape
        return {
            "z": self.scores.tolist(),
            "x": list(range(H)),
            "y": list(range(L)),
            "x_label": "head",
            "y_label": "layer",
            "per_layer_sum": self.per_layer_sum.tolist(),
            "per_layer_negative": self.per_layer_negative.tolist(),
            "per_layer_positive": self.per_layer_positive.tolist(),
        }

    def to_dict(self) -> dict:
        """JSON-ready dict (the run directory's ``heads.json``)."""
        return {
            "top_percent": self.top_percent,
            "n_layers": int(self.scores.shape[0]),
            "n_heads": int(self.scores.shape[1]),
            "scores": self.scores.tolist(),
            "suppression_heads": [list(t) for t in self.suppression],
            "promoting_heads": [list(t) for t in self.promoting],
            "per_layer_sum": self.per_layer_sum.tolist(),
            "per_layer_negative": self.per_layer_negative.tolist(),
            "per_layer_positive": self.per_layer_positive.tolist(),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict) -> HeadRanking:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                torch.tensor(d["scores"], dtype=torch.float32), d.get("top_percent", 3), d.get("meta", {})
            )
        except KeyError:
            raise ValueError("heads.json has no 'scores'; write it with HeadRanking.save") from None

    def save(self, path: Any) -> Any:
        """Write ``heads.json`` atomically."""
        from .io import atomic_write_json

        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Any) -> HeadRanking:
        """Read a ``heads.json`` written by :meth:`save`."""
        import json
        from pathlib import Path

        return cls.from_dict(json.loads(Path(path).read_text()))


def rank_heads(scores: Float[Tensor, "n_layers n_heads"], top_percent: float = 3, **meta: Any) -> HeadRanking:
    """Shorthand for ``HeadRanking(scores, top_percent, meta)``."""
    return HeadRanking(scores, top_percent, dict(meta))
