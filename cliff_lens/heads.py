"""Per-head direct attribution to a probe's read-out, completeness check, contrast and rankings.

A head ``(l, h)`` outputs ``o = z[l, h] @ W_O[l, h]``. Its *write* to the residual stream is
``o`` itself, or, in models that normalise the attention output before adding it (Gemma 2/3:
``blocks.l.ln1_post``; OLMo 2/3: ``blocks.l.ln1`` applied after attention), ``N(o)`` with that
norm's per-position scale frozen: ``gamma_l * C(o) / sigma_l(pos)`` (``C`` centres for
LayerNorm, is the identity for RMSNorm; ``sigma_l`` is the norm's ``hook_scale``, shared by all
heads of the layer, so the heads' writes plus the norm of ``b_O`` (plus its bias) sum exactly
to ``hook_attn_out``). This module computes every head's write onto the probe's read-out, for all
heads in one batched forward pass per batch:

* examples, positions, padding and the forward pass go through the read-out engine
  (:mod:`cliff_lens.readout`: its position grammar, sequences cut after the last position read,
  length-bucketed left-padded batches with an attention mask; TransformerLens shifts rotary and
  absolute positions, so padding changes no real token's activations);
* only ``blocks.*.attn.hook_z`` (and the post-attention norms' ``hook_scale``) are hooked; the
  requested positions are gathered inside the hook and reduced at once with a precomputed
  ``[n_heads, d_head]`` matrix per layer, so neither ``hook_result`` nor the full ``z`` is kept;
* only heads that can write to the probe's hook are scored, and the forward stops after the
  last such layer (``stop_at_layer``); the unembedding is never computed.

**The probe's hook.** A probe reads ``x``, the residual stream after block ``L``
(``blocks.L.hook_resid_post``; ``hook_resid_mid``/``hook_resid_pre`` also work), or after the
last block through the final norm: ``"final_norm_weighted"`` is the final norm's output
``f(x) = ln_final.w * C(x) / sigma_f(x) + ln_final.b`` (``b`` for LayerNorm only; what the
unembedding reads) and ``"ln_final.hook_normalized"`` is ``f(x) = C(x) / sigma_f(x)`` (no weight,
no bias), with ``sigma_f`` the final norm's ``hook_scale`` at that position. Heads of layers
after ``L`` cannot write to ``x``: they get **NaN** (no score), are never ranked, and the
forward stops at ``L``. The hook is ``probe.hook`` (``{L}`` filled from
``probe.layer``); a plain tensor direction has none: pass ``hook=``/``layer=``, otherwise it is
read as ``"final_norm_weighted"`` under ``norm_aware`` and as the last block's
``hook_resid_post`` under the other variants (the behaviour before hooks were honoured).

**Variants** (``d`` = unit probe direction, ``s`` = ``probe.scale``, ``b`` = ``probe.bias``; the
probe's logit is ``s * d . f(x) + b`` with ``f`` its hook's feature map; ``write`` as above):

``raw``
    ``d . write``: the official RefusalCliff head score (no norms of the read-out, no bias).
``norm_aware``
    ``u . write`` with the *reading vector* ``u`` of the probe's hook: ``u = d`` for residual
    hooks (so ``norm_aware == raw`` there), ``u = C(d)`` for ``ln_final.hook_normalized`` and
    ``u = C(ln_final.w * d)`` for ``final_norm_weighted``. Exact share of the numerator
    ``u . x = sigma_f(x) * d . (f(x) - ln_final.b)`` (``ln_final.b`` only for
    ``final_norm_weighted``); the per-position ``1 / sigma_f`` is *not* applied (it is common
    to all heads at a position).
``with_bias``
    ``s * u . write / sigma_f(pos) + b`` (``sigma_f = 1`` for residual hooks): the head's
    contribution to the probe *logit* with the final norm's scale frozen, plus the bias (the
    paper's per-head form: the probe applied to the head's write; no sigmoid). Summed over all
    heads ``(score - b)`` plus the remaining terms (embeddings, ``b_O``, MLPs, and
    ``s * d . ln_final.b``) equals ``logit - b`` exactly. With a tensor, ``s = 1`` and ``u`` is
    built from the tensor as given; ``bias=`` is the constant.

:func:`contrast_scores` turns per-example scores into "mean on complied minus mean on refused"
rollouts, the score that a head writing ``+d`` on refusals and ``-d`` on compliances gets (its
mean score cancels). GQA models: ``hook_z`` is per *query* head, so scores are per query head.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from ._typing import Validated
from .readout import (
    FINAL_NORM_WEIGHTED,
    Batch,
    PositionSpec,
    parse_positions,
    prepare,
    run_batches,
)

__all__ = [
    "head_attributions",
    "direct_attribution_decomposition",
    "DirectDecomposition",
    "contrast_scores",
    "suppression_heads",
    "promoting_heads",
    "HeadRanking",
    "rank_heads",
    "n_top_heads",
    "validate_heads",
    "resolve_direction",
    "Variant",
]

Variant = Literal["raw", "norm_aware", "with_bias"]
_VARIANTS = ("raw", "norm_aware", "with_bias")
FINAL_NORMALIZED = "ln_final.hook_normalized"
_RESID_HOOK = re.compile(r"blocks\.(-?\d+)\.hook_resid_(pre|mid|post)")


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


# --------------------------------------------------------------------------------------------
# norms and the probe's read-out
# --------------------------------------------------------------------------------------------


def _is_norm(module: Any) -> bool:
    return module is not None and hasattr(module, "hook_scale")


def _centres(norm: Any) -> bool:
    """LayerNorm / LayerNormPre subtract the mean; RMSNorm / RMSNormPre do not.

    The module's class decides, as in :func:`cliff_lens.readout.final_norm`, not
    ``cfg.normalization_type``: an ``"LN"`` model with ``final_rms=True`` ends in an RMSNorm."""
    from transformer_lens.components import LayerNorm, LayerNormPre

    return isinstance(norm, LayerNorm | LayerNormPre)


def _norm_weight(norm: Any) -> Tensor | None:
    w = getattr(norm, "w", None)
    return w.detach() if isinstance(w, Tensor) else None


def _pull_back(v: Tensor, norm: Any) -> Tensor:
    """The vector ``u`` with ``u . y == v . (gamma * C(y))`` for every ``y`` (``C^T == C``)."""
    g = _norm_weight(norm)
    if g is not None:
        v = v * g.to(device=v.device, dtype=v.dtype)
    return v - v.mean() if _centres(norm) else v


def _norm_scale(norm: Any, x: Tensor) -> Tensor:
    """``sigma(x)`` over the last dimension exactly as the norm's ``hook_scale`` (shape ``x.shape[:-1]``)."""
    x = x.float() if x.dtype not in (torch.float32, torch.float64) else x
    if _centres(norm):
        x = x - x.mean(-1, keepdim=True)
    return (x.pow(2).mean(-1) + norm.eps).sqrt()


def _post_attn_norms(model: Any, layer: int) -> list[tuple[str, Any]]:
    """The norms applied to layer ``layer``'s attention output before the residual add, in order,
    as ``(hook-name prefix, module)``: Gemma 2/3's ``ln1_post``, OLMo 2/3's ``ln1``."""
    cfg, blk = model.cfg, model.blocks[layer]
    out = []
    if getattr(cfg, "use_normalization_before_and_after", False) and _is_norm(getattr(blk, "ln1_post", None)):
        out.append((f"blocks.{layer}.ln1_post", blk.ln1_post))
    if cfg.original_architecture in _post_norm_architectures() and _is_norm(getattr(blk, "ln1", None)):
        out.append((f"blocks.{layer}.ln1", blk.ln1))
    return out


def _post_norm_architectures() -> set[str]:
    try:
        from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES
    except ImportError:  # older TransformerLens: OLMo 2/3 are the post-norm decoders it knows
        return {"Olmo2ForCausalLM", "Olmo3ForCausalLM"}
    return set(POST_NORM_ARCHITECTURES)


def _final_norm(model: Any) -> Any:
    ln = getattr(model, "ln_final", None)
    return ln if _is_norm(ln) else None


@dataclass(frozen=True)
class _Read:
    """Where the probe reads: the residual stream decomposed and which layers write to it."""

    hook: str  # the probe's hook ({L} filled)
    kind: Literal["resid", "final_normalized", "final_weighted"]
    resid_hook: str  # the TL residual hook whose value is decomposed
    head_layer: int  # heads of layers <= head_layer write to it (-1: none)
    mlp_layer: int  # MLPs of layers <= mlp_layer write to it


def _probe_read(model: Any, direction: Any, variant: str, hook: str | None, layer: int | None) -> _Read:
    n = model.cfg.n_layers
    last = f"blocks.{n - 1}.hook_resid_post"
    if hook is None and not isinstance(direction, Tensor):
        hook = getattr(direction, "hook", None)
        if layer is None:
            layer = getattr(direction, "layer", None)
    if hook is None:
        hook = FINAL_NORM_WEIGHTED if variant == "norm_aware" else last
    if hook == FINAL_NORM_WEIGHTED:
        return _Read(hook, "final_weighted", last, n - 1, n - 1)
    if hook == FINAL_NORMALIZED:
        return _Read(hook, "final_normalized", last, n - 1, n - 1)
    name = str(hook)
    if "{L}" in name or "{l}" in name:
        if layer is None:
            raise ValueError(
                f"probe hook {hook!r} has a layer placeholder but no layer; pass layer=<int> (or a probe with .layer)"
            )
        name = name.replace("{L}", str(int(layer))).replace("{l}", str(int(layer)))
    m = _RESID_HOOK.fullmatch(name)
    if m is None:
        raise ValueError(
            f"probe hook {hook!r} is not a residual-stream read-out; head attribution supports "
            f"'blocks.{{L}}.hook_resid_post' (also _pre, _mid), {FINAL_NORM_WEIGHTED!r} and {FINAL_NORMALIZED!r}; "
            "pass hook=... to say where the direction is read"
        )
    lay, where = int(m.group(1)), m.group(2)
    if not -n <= lay < n:
        raise ValueError(f"probe layer {lay} (hook {hook!r}) is out of range for a model with {n} layers")
    lay %= n
    name = f"blocks.{lay}.hook_resid_{where}"
    if name not in model.hook_dict:
        raise ValueError(
            f"probe hook {name!r} does not exist in this model; use blocks.{lay}.hook_resid_post"
        )
    head_layer = lay - 1 if where == "pre" else lay
    mlp_layer = lay if where == "post" else lay - 1
    return _Read(name, "resid", name, head_layer, mlp_layer)


@dataclass(frozen=True)
class _Target:
    vec: Tensor  # float32 [d_model]: head writes are projected on it
    const: float  # added to every head score (with_bias: the bias)
    base: Tensor  # the probe weight before the read-out's norm (d, or s * d for with_bias)
    read: _Read
    final_scale: bool  # divide by the final norm's per-position scale (with_bias, final-norm probes)


def _probe_weight(direction: Any, variant: str, d_model: int) -> tuple[Tensor, float]:
    probe_bias = 0.0
    if isinstance(direction, Tensor):
        w = direction
    elif hasattr(direction, "direction"):
        w = torch.as_tensor(direction.direction)
        scale = float(getattr(direction, "scale", 1.0) or 1.0)
        probe_bias = float(getattr(direction, "bias", 0.0) or 0.0)
        w = w * scale if variant == "with_bias" else w  # the logit is scale * x @ direction + bias
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
    return (w if variant == "with_bias" else w / w.norm()), probe_bias


def _resolve(
    model: Any, direction: Any, variant: str, bias: float | None, hook: str | None, layer: int | None
) -> _Target:
    if variant not in _VARIANTS:
        raise ValueError(f"variant={variant!r} is unknown; use one of {_VARIANTS}")
    base, probe_bias = _probe_weight(direction, variant, model.cfg.d_model)
    read = _probe_read(model, direction, variant, hook, layer)
    ln = _final_norm(model)
    vec = base
    if variant != "raw" and read.kind != "resid" and ln is not None:
        if read.kind == "final_weighted":
            if _norm_weight(ln) is None:
                raise ValueError(
                    f"the probe reads {FINAL_NORM_WEIGHTED!r} but this model's final norm has no weight (its layer "
                    "norms were folded); reload it with cliff_lens.load_model(..., fold_ln=False), or pass "
                    f"hook={FINAL_NORMALIZED!r} / variant='raw'"
                )
            vec = _pull_back(base, ln)
        else:
            vec = base - base.mean() if _centres(ln) else base
    const = (float(bias) if bias is not None else probe_bias) if variant == "with_bias" else 0.0
    final_scale = variant == "with_bias" and read.kind != "resid" and ln is not None
    return _Target(vec, const, base, read, final_scale)


def resolve_direction(
    model: Any,
    direction: Any,
    variant: str = "raw",
    bias: float | None = None,
    *,
    hook: str | None = None,
    layer: int | None = None,
) -> tuple[Float[Tensor, "d_model"], float]:
    """The vector that head writes are projected on, and the constant added, for a variant.

    ``direction``: a ``RefusalProbe`` (uses ``.direction``, ``.scale``, ``.bias``, ``.hook``,
    ``.layer``) or a ``[d_model]`` tensor; ``hook``/``layer`` override the probe's. Returns
    ``(u, constant)`` (``u`` float32): ``d`` for ``raw``, the hook's reading vector for
    ``norm_aware``, ``s`` times it for ``with_bias`` (whose per-position ``1 / sigma_f`` for
    final-norm probes is applied by :func:`head_attributions`); see the module docstring.
    """
    t = _resolve(model, direction, variant, bias, hook, layer)
    return t.vec, t.const


# --------------------------------------------------------------------------------------------
# attribution
# --------------------------------------------------------------------------------------------


def head_attributions(
    model: Any,
    batch: Any,
    direction: Any,
    *,
    positions: PositionSpec = "end_of_thinking",
    variant: Validated[Variant] = "raw",
    bias: float | None = None,
    hook: str | None = None,
    layer: int | None = None,
    batch_size: int = 8,
    per_example: bool = False,
) -> Float[Tensor, "n_layers n_heads"] | Float[Tensor, "n_examples n_layers n_heads"]:
    """Direct write of every attention head onto the probe's read-out at the chosen positions.

    Args:
        model: a ``HookedTransformer`` (any dtype; scores are computed in float32). Models with a
            norm after attention (Gemma 2/3, OLMo 2/3) are exact with that norm's scale frozen.
        batch: ``TokenizedRollout`` records (with ``spans``), 1-D token tensors, or a
            ``[batch, pos]`` tensor of unpadded equal-length sequences.
        direction: a ``RefusalProbe`` or a ``[d_model]`` tensor.
        positions: a rule of the read-out grammar (:data:`cliff_lens.readout.PositionSpec`):
            ``"end_of_thinking"`` (default: every token of the cliff zone), any span name,
            ``"last:<span>"`` (or ``"<span>_last"``), ``"last"``, ``"all"``, an int,
            ``(start, end)`` or a list of indices (indices into each example's own tokens;
            negative ones count from its end). Each example's positions are read as a set (a
            repeated index counts once); a rule that selects no token of an example is an error.
        variant: ``"raw"``, ``"norm_aware"`` or ``"with_bias"`` (formulas in the module docstring).
        bias: the constant for ``with_bias`` (default: the probe's own bias; 0 for a tensor).
        hook, layer: where the direction is read (default: ``probe.hook`` / ``probe.layer``; for a
            tensor see the module docstring). Heads of layers that cannot write to it get NaN.
        batch_size: examples per forward pass (batches group examples of similar length).
        per_example: return ``[n_examples, n_layers, n_heads]`` instead of the mean.

    Returns:
        ``[n_layers, n_heads]`` float32 (CPU): the mean over examples of each example's mean over
        its positions of the head's score; NaN for heads after the probe's layer.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; pass a positive integer")
    tgt = _resolve(model, direction, variant, bias, hook, layer)
    prepared, _ = prepare(model, batch, positions, nonempty=True)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    per = torch.full((len(prepared), L, H), math.nan)
    top = tgt.read.head_layer
    if top < 0:  # hook_resid_pre of layer 0: no head writes to it
        return per if per_example else per.mean(0)

    # per layer: W_O[l] @ (v pulled back through the layer's post-attention norms): [H, d_head]
    norms = [_post_attn_norms(model, i) for i in range(top + 1)]
    wod = []
    with torch.no_grad():
        for i in range(top + 1):
            W_O = model.blocks[i].attn.W_O  # [H, d_head, d_model]
            v = tgt.vec.to(W_O.device)
            for _, nm in reversed(norms[i]):
                v = _pull_back(v, nm)
            wod.append(torch.einsum("hdm,m->hd", W_O.float(), v))
    final_hook = tgt.read.resid_hook if tgt.final_scale else None
    names = [f"blocks.{i}.attn.hook_z" for i in range(top + 1)]
    names += [f"{prefix}.hook_scale" for ns in norms for prefix, _ in ns]
    names += [final_hook] if final_hook is not None else []
    # the sorted set of each example's positions (a list rule may repeat or reorder them)
    pos = [p.positions.unique() for p in prepared]
    collectors: list[_Collector] = []

    def make_reader(b: Batch) -> _Collector:
        col = _Collector(model, b, [pos[i] for i in b.index], wod, [len(ns) for ns in norms], final_hook)
        collectors.append(col)
        return col

    for b in run_batches(model, prepared, names, make_reader, batch_size=batch_size, stop_at_layer=top + 1):
        per[b.index] = collectors.pop().finish()
    per = per + tgt.const
    return per if per_example else per.mean(0)


class _Collector:
    """The reader hook of one batch: gather the positions in ``hook_z``, reduce them with
    ``W_O[l] @ v`` at once, divide by the post-attention norms' and (``with_bias`` on a
    final-norm probe, ``final_hook``) the final norm's frozen per-position scales, average over
    positions."""

    def __init__(
        self,
        model: Any,
        batch: Batch,
        positions: list[Tensor],
        wod: list[Tensor],
        n_norms: list[int],
        final_hook: str | None,
    ) -> None:
        self.rows, self.cols, counts = batch.gather_index(positions)
        k = torch.arange(self.cols.shape[1], device=counts.device)
        # [B, kmax]: 1/k on each row's k positions, 0 on the filler columns
        self.wts = (k[None, :] < counts[:, None]).float() / counts[:, None].float()
        self.wod, self.n_norms, self.final_hook = wod, n_norms, final_hook
        self.final_ln = _final_norm(model) if final_hook is not None else None
        self.out = torch.full((len(batch.index), model.cfg.n_layers, model.cfg.n_heads), math.nan)
        self.pending: dict[int, list] = {}  # layer -> [per-position values, norm scales still to come]
        self.per_pos: dict[int, Tensor] = {}  # layer -> [B, P, H] waiting for the final norm's scale

    def __call__(self, t: Tensor, hook: Any) -> None:
        if hook.name == self.final_hook:
            self.final(t)
        elif hook.name.endswith(".hook_scale"):
            self.scale(t, hook)
        else:
            self.z(t, hook)

    def _gather(self, t: Tensor) -> Tensor:
        d = t.device
        return t[self.rows.to(d), self.cols.to(d)]

    def z(self, z: Float[Tensor, "batch pos n_heads d_head"], hook: Any) -> None:
        layer = int(hook.name.split(".")[1])
        val = torch.einsum("bphd,hd->bph", self._gather(z).float(), self.wod[layer].to(z.device))
        if self.n_norms[layer]:
            self.pending[layer] = [val, self.n_norms[layer]]
        else:
            self._done(layer, val)

    def scale(self, s: Tensor, hook: Any) -> None:
        layer = int(hook.name.split(".")[1])
        val, left = self.pending[layer]
        sg = self._gather(s).float().reshape(val.shape[:2]).to(val.device)  # [B, P]
        val = val / sg[..., None]
        if left > 1:
            self.pending[layer] = [val, left - 1]
        else:
            del self.pending[layer]
            self._done(layer, val)

    def final(self, x: Float[Tensor, "batch pos d_model"]) -> None:
        sigma = _norm_scale(self.final_ln, self._gather(x))  # [B, P]
        for layer, val in list(self.per_pos.items()):
            self._reduce(layer, val / sigma.to(val.device)[..., None])
        self.per_pos.clear()

    def _done(self, layer: int, val: Tensor) -> None:
        if self.final_ln is not None:
            self.per_pos[layer] = val
        else:
            self._reduce(layer, val)

    def _reduce(self, layer: int, val: Tensor) -> None:
        self.out[:, layer] = torch.einsum("bph,bp->bh", val, self.wts.to(val.device)).cpu()

    def finish(self) -> Tensor:
        if self.pending or self.per_pos:
            raise RuntimeError(
                f"head attribution hooks did not complete (layers {sorted(self.pending) + sorted(self.per_pos)}); "
                "the model's forward skipped a norm hook this module relies on"
            )
        return self.out


# --------------------------------------------------------------------------------------------
# completeness check
# --------------------------------------------------------------------------------------------


@dataclass
class DirectDecomposition:
    """Every direct term of the residual stream a probe reads, projected at one position.

    ``embed + pos_embed + nansum(heads) + nansum(attn_bias) + nansum(mlp) == total``.
    ``resid_final`` is the same quantity read from the model itself: ``v . x`` for ``raw`` and
    ``norm_aware`` (``x`` = the probe's residual hook ``hook``, ``v`` the variant's vector), the
    probe's logit minus its bias from the probe's actual features for ``with_bias``;
    ``error = resid_final - total`` is zero up to float error. ``attn_bias[l]`` is the rest of
    attention layer ``l``'s output (``b_O``; in post-norm models ``b_O`` through the norm plus
    the norm's bias). Terms of layers that cannot write to the hook are NaN. ``inv_scale`` is the
    frozen ``1 / sigma_f`` every term was multiplied by (``with_bias`` on a final-norm probe);
    ``norm_bias`` is ``s * d . ln_final.b`` (``with_bias`` on a ``final_norm_weighted`` probe of a
    LayerNorm model; not scaled), included in ``total``."""

    embed: float
    pos_embed: float
    heads: Float[Tensor, "n_layers n_heads"]
    attn_bias: Float[Tensor, "n_layers"]
    mlp: Float[Tensor, "n_layers"]
    total: float
    resid_final: float
    error: float
    position: int
    hook: str = ""
    layer: int = -1
    variant: str = "raw"
    inv_scale: float = 1.0
    bias: float = 0.0
    norm_bias: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN marks layers that cannot write to the probe's hook)."""
        return {
            "embed": self.embed,
            "pos_embed": self.pos_embed,
            "heads": self.heads.tolist(),
            "attn_bias": self.attn_bias.tolist(),
            "mlp": self.mlp.tolist(),
            "heads_total": float(self.heads.nansum()),
            "mlp_total": float(self.mlp.nansum()),
            "total": self.total,
            "resid_final": self.resid_final,
            "error": self.error,
            "position": self.position,
            "hook": self.hook,
            "layer": self.layer,
            "variant": self.variant,
            "inv_scale": self.inv_scale,
            "bias": self.bias,
            "norm_bias": self.norm_bias,
        }


def _through_norms(y: Tensor, norms: list[tuple[str, Any]], sigmas: list[float]) -> Tensor:
    """``y`` through post-attention norms with frozen scales: ``gamma * C(y) / sigma + beta``."""
    for (_, nm), sig in zip(norms, sigmas, strict=True):
        y = y - y.mean() if _centres(nm) else y
        g = _norm_weight(nm)
        y = (y * g.to(y) if g is not None else y) / sig
        b = getattr(nm, "b", None)
        if isinstance(b, Tensor):
            y = y + b.detach().to(y)
    return y


def _decomposition_hooks(read: _Read, norms: list[list[tuple[str, Any]]], features: bool) -> list[str]:
    """The hooks the decomposition reads (sorted): the embeddings, the probe's residual hook,
    ``hook_z`` and the post-attention norms' ``hook_scale`` of the heads that write to it, the
    MLP outputs, and for ``features`` the final norm's ``hook_normalized``."""
    names = {"hook_embed", "hook_pos_embed", read.resid_hook}
    names |= {f"blocks.{i}.attn.hook_z" for i in range(read.head_layer + 1)}
    names |= {f"{prefix}.hook_scale" for ns in norms for prefix, _ in ns}
    names |= {f"blocks.{i}.hook_mlp_out" for i in range(read.mlp_layer + 1)}
    if features:
        names.add(FINAL_NORMALIZED)
    return sorted(names)


def _values_at(model: Any, prep: Any, names: list[str]) -> dict[str, Tensor]:
    """``hook name -> its value`` at the single position of ``prep``, from one forward pass."""
    cache: dict[str, Tensor] = {}

    def make_reader(b: Batch) -> Any:
        rows, cols, _ = b.gather_index([prep.positions])

        def read_at(t: Tensor, hook: Any) -> None:
            cache[hook.name] = t[rows.to(t.device), cols.to(t.device)][0, 0]

        return read_at

    # stop_at_layer="auto": right after the probe's block, or the whole model for the final norm
    for _ in run_batches(model, [prep], names, make_reader, batch_size=1):
        pass
    return cache


def _attention_terms(
    model: Any,
    cache: dict[str, Tensor],
    vec: Tensor,
    norms: list[list[tuple[str, Any]]],
    inv: float,
) -> tuple[Tensor, Tensor]:
    """The attention terms of the decomposition, float64: every head's write ``[n_layers, n_heads]``
    and the rest of each attention layer ``[n_layers]`` (``b_O`` through the post-attention
    norms, with their frozen scales), projected on ``vec`` and times ``inv``; NaN for the layers
    after the last in ``norms`` (they cannot write to the probe's hook)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    heads = torch.full((L, H), math.nan, dtype=torch.float64)
    attn_bias = torch.full((L,), math.nan, dtype=torch.float64)
    for i in range(len(norms)):
        blk = model.blocks[i]
        z = cache[f"blocks.{i}.attn.hook_z"].double()  # [H, d_head]
        v = vec.to(z.device)
        for _, nm in reversed(norms[i]):
            v = _pull_back(v, nm)
        sig = [float(cache[f"{prefix}.hook_scale"].reshape(-1)[0]) for prefix, _ in norms[i]]
        heads[i] = torch.einsum("hd,hdm,m->h", z, blk.attn.W_O.detach().double(), v).cpu() * (
            inv / math.prod(sig)
        )
        rest = _through_norms(blk.attn.b_O.detach().double(), norms[i], sig)
        attn_bias[i] = float(rest @ vec.to(rest.device)) * inv
    return heads, attn_bias


def _feature_logit(cache: dict[str, Tensor], tgt: _Target, ln: Any) -> float:
    """The probe's read-out from its own features (``with_bias`` on a final-norm probe): the final
    norm's output (weight and bias) or ``hook_normalized``, times the probe weight."""
    feat = cache[FINAL_NORMALIZED].double()
    if tgt.read.kind == "final_weighted":
        w = _norm_weight(ln)
        assert w is not None  # _resolve rejects a final_norm_weighted probe on a norm without weight
        feat = feat * w.double().to(feat.device)
        if isinstance(getattr(ln, "b", None), Tensor):
            feat = feat + ln.b.detach().double().to(feat.device)
    return float(feat @ tgt.base.double().to(feat.device))


def direct_attribution_decomposition(
    model: Any,
    tokens: Any,
    direction: Any,
    pos: PositionSpec = -1,
    *,
    variant: Validated[Variant] = "raw",
    bias: float | None = None,
    hook: str | None = None,
    layer: int | None = None,
) -> DirectDecomposition:
    """Decompose the probe's read-out at ``pos`` into embedding, per-head, attention-rest and MLP terms.

    ``tokens``: a 1-D token tensor or a ``TokenizedRollout``; ``pos``: token index (negative
    counts from the end) or any rule of the read-out grammar that selects one token (``"last"``,
    ``"last:end_of_thinking"``; :mod:`cliff_lens.readout`). The residual stream decomposed is the probe's (``probe.hook`` /
    ``hook=``: ``blocks.L.hook_resid_post`` holds the embedding and the heads and MLPs of layers
    ``<= L``; final-norm hooks the last block's output) and every term is projected as the
    variant does (module docstring): ``raw``/``norm_aware`` give ``v . x``, ``with_bias`` gives
    the probe logit minus its bias, with the final norm's scale frozen. Post-attention norms
    (Gemma 2/3, OLMo 2/3) are frozen at their ``hook_scale``. Exact for models loaded with
    ``fold_ln=False`` (``error`` ~ 1e-6 in fp32); the ``heads`` term equals
    :func:`head_attributions` at that position (minus the bias for ``with_bias``).
    """
    tgt = _resolve(model, direction, variant, bias, hook, layer)
    read = tgt.read
    rule = parse_positions(pos)
    if rule.kind != "single":
        raise ValueError(
            f"pos={rule.spec!r} selects several tokens; the decomposition is of one position: pass an "
            "int or a single-token rule ('last', 'last:<span>')"
        )
    (prep,), _ = prepare(model, [tokens], rule)
    norms = [_post_attn_norms(model, i) for i in range(read.head_layer + 1)]
    ln = _final_norm(model)
    features = tgt.final_scale  # with_bias on a final-norm probe: check against the probe's own features
    cache = _values_at(model, prep, _decomposition_hooks(read, norms, features))
    x = cache[read.resid_hook].double()
    vec = tgt.vec.double().to(x.device)
    inv = 1.0 / float(_norm_scale(ln, x)) if tgt.final_scale else 1.0

    def proj(t: Tensor) -> float:
        return float(t.double() @ vec.to(t.device)) * inv

    embed = proj(cache["hook_embed"])
    pos_embed = (
        proj(cache["hook_pos_embed"])
        if model.cfg.positional_embedding_type == "standard" and "hook_pos_embed" in cache
        else 0.0
    )
    heads, attn_bias = _attention_terms(model, cache, vec, norms, inv)
    mlp = torch.full((model.cfg.n_layers,), math.nan, dtype=torch.float64)
    for i in range(read.mlp_layer + 1):
        key = f"blocks.{i}.hook_mlp_out"
        mlp[i] = proj(cache[key]) if key in cache else 0.0
    norm_bias = 0.0
    if features and read.kind == "final_weighted" and isinstance(getattr(ln, "b", None), Tensor):
        norm_bias = float(ln.b.detach().double() @ tgt.base.double().to(ln.b.device))
    total = embed + pos_embed + float(heads.nansum() + attn_bias.nansum() + mlp.nansum()) + norm_bias
    target = _feature_logit(cache, tgt, ln) if features else float(x @ vec) * inv
    return DirectDecomposition(
        embed=embed,
        pos_embed=pos_embed,
        heads=heads.float(),
        attn_bias=attn_bias.float(),
        mlp=mlp.float(),
        total=total,
        resid_final=target,
        error=target - total,
        position=int(prep.positions[0]) + prep.cut,
        hook=read.hook,
        layer=read.head_layer,
        variant=variant,
        inv_scale=inv,
        bias=tgt.const,
        norm_bias=norm_bias,
    )


# --------------------------------------------------------------------------------------------
# contrast and ranking
# --------------------------------------------------------------------------------------------


def contrast_scores(
    per_example: Validated[Float[Tensor, "n n_layers n_heads"]],
    refused: Validated[Sequence[bool | None] | Tensor],
) -> Float[Tensor, "n_layers n_heads"]:
    """Mean score over complied rollouts minus mean score over refused ones, per head.

    ``per_example``: ``head_attributions(..., per_example=True)`` on harmful rollouts;
    ``refused``: one label per rollout (``True``/1 refused, ``False``/0 complied, ``None``
    unlabelled and left out). A head that writes ``+a`` along the direction on refusals and
    ``-a`` on compliances has mean score ~0 but contrast ``-2a``: negative contrasts are the
    heads that write *less* refusal where the model complied, ranked first by
    :func:`suppression_heads`. The ``with_bias`` constant cancels; NaN heads stay NaN. Raises
    ``ValueError`` when a group is empty or the lengths differ.
    """
    if not isinstance(per_example, Tensor) or per_example.ndim != 3:
        raise ValueError(
            f"per_example must be a [n, n_layers, n_heads] tensor (head_attributions(..., per_example=True)), "
            f"got {getattr(per_example, 'shape', type(per_example).__name__)}"
        )
    labels = refused.tolist() if isinstance(refused, Tensor) else list(refused)
    n = per_example.shape[0]
    if len(labels) != n:
        raise ValueError(
            f"refused has {len(labels)} labels but per_example has {n} rollouts; pass one per rollout"
        )
    ref: list[int] = []
    comp: list[int] = []
    for i, v in enumerate(labels):
        if v is None:
            continue
        if isinstance(v, bool) or v in (0, 1):
            (ref if bool(v) else comp).append(i)
        else:
            raise ValueError(
                f"refused[{i}] is {v!r}; pass True (refused), False (complied) or None (unlabelled)"
            )
    if not ref or not comp:
        raise ValueError(
            f"contrast_scores needs refused and complied rollouts; got {len(ref)} refused and {len(comp)} "
            f"complied of {n} (unlabelled ones are left out); use the mean score per_example.mean(0) instead"
        )
    x = per_example.detach().float().cpu()
    return x[comp].mean(0) - x[ref].mean(0)


def n_top_heads(n_total: int, top_percent: Validated[float | int]) -> int:
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


def _top(
    scores: Tensor, top_percent: float | int, n: int | None, descending: bool
) -> list[tuple[int, int, float]]:
    s = _check_scores(scores)
    H = s.shape[1]
    flat = s.flatten()
    scored = (~torch.isnan(flat)).nonzero().flatten()
    n_ok = int(scored.numel())
    if n_ok == 0:
        raise ValueError(
            "no head has a score (all NaN): no head can write to the probe's hook; read the probe at a later layer"
        )
    if n is None:  # top_percent of ALL heads (as the random baseline), at most the scored ones
        k = min(n_top_heads(s.numel(), top_percent), n_ok)
    else:
        k = int(n)
        if not 1 <= k <= n_ok:
            raise ValueError(
                f"n={n} heads requested but the model has {s.numel()} ({n_ok} with a score); pass 1 <= n <= {n_ok}"
            )
    order = scored[torch.sort(flat[scored], descending=descending, stable=True).indices[:k]]
    return [(int(i) // H, int(i) % H, float(flat[i])) for i in order]


def suppression_heads(
    scores: Validated[Float[Tensor, "n_layers n_heads"]],
    top_percent: float | int = 3,
    *,
    n: int | None = None,
) -> list[tuple[int, int, float]]:
    """The ``top_percent``% heads with the most negative scores (most negative first), as
    ``(layer, head, score)``. ``n`` overrides the count. NaN heads (no score: after the probe's
    layer) are never ranked; the count is ``top_percent`` of all heads, capped at the scored
    ones. See :func:`n_top_heads`."""
    return _top(scores, top_percent, n, descending=False)


def promoting_heads(
    scores: Validated[Float[Tensor, "n_layers n_heads"]],
    top_percent: float | int = 3,
    *,
    n: int | None = None,
) -> list[tuple[int, int, float]]:
    """The ``top_percent``% heads with the most positive scores (most positive first); NaN heads
    are never ranked (see :func:`suppression_heads`)."""
    return _top(scores, top_percent, n, descending=True)


def _layer_sums(s: Tensor) -> Tensor:
    """Sum over each layer's scored heads; NaN for a layer with no scored head."""
    out = torch.nansum(s, 1)
    out[torch.isnan(s).all(1)] = math.nan
    return out


@dataclass
class HeadRanking:
    """Scores of every head plus the data for per-layer and per-head heatmaps.

    ``scores``: ``[n_layers, n_heads]``; ``per_layer_sum``: total direct write of each layer's
    heads; ``per_layer_negative``/``per_layer_positive``: the sums of the negative / positive
    scores per layer (suppression vs promotion mass); ``suppression``/``promoting``: the top
    ``top_percent``% lists. NaN scores (heads after the probe's layer) are never ranked, the
    per-layer sums skip them and are NaN for a layer without any scored head; ``heatmap`` and
    ``to_dict`` keep them as NaN (written as ``NaN`` in JSON, read back by :meth:`from_dict`)."""

    scores: Validated[Float[Tensor, "n_layers n_heads"]]
    top_percent: float | int = 3
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
        """Sum over the scored heads per layer (NaN: no scored head)."""
        return _layer_sums(self.scores)

    @property
    def per_layer_negative(self) -> Float[Tensor, "n_layers"]:
        """Sum of the negative scores per layer (NaN: no scored head)."""
        return _layer_sums(self.scores.clamp(max=0))

    @property
    def per_layer_positive(self) -> Float[Tensor, "n_layers"]:
        """Sum of the positive scores per layer (NaN: no scored head)."""
        return _layer_sums(self.scores.clamp(min=0))

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
            rows = [[math.nan if v is None else v for v in row] for row in d["scores"]]
            return cls(torch.tensor(rows, dtype=torch.float32), d.get("top_percent", 3), d.get("meta", {}))
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


def rank_heads(
    scores: Validated[Float[Tensor, "n_layers n_heads"]], top_percent: float | int = 3, **meta: Any
) -> HeadRanking:
    """Shorthand for ``HeadRanking(scores, top_percent, meta)``."""
    return HeadRanking(scores, top_percent, dict(meta))
