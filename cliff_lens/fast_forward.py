"""A faster TransformerLens forward for passes that do not read attention patterns.

TransformerLens computes attention explicitly: a ``[batch, head, query, key]`` score tensor, a
mask built anew in every layer, softmax, ``pattern @ V`` and, for grouped-query attention, K/V
expanded to every query head. And its gated MLPs and unembedding copy their weight matrices into
a transposed contiguous layout on every call (to match HF's bf16 accumulation order bit for bit),
which dominates a KV-cached decoding step (measured: 61% of TL generation time on SmolLM2).

The probe, trajectory, head-attribution, ablation and generation passes of cliff_lens read only
the residual stream and ``hook_z``. Inside :func:`fast_forward`:

* supported attention modules run through ``torch.nn.functional.scaled_dot_product_attention``
  (one fused kernel, no ``pos x pos`` tensors in memory), keeping every other hook point
  (``hook_q/k/v``, ``hook_rot_q/k``, ``hook_z``) and TransformerLens's handling of left padding
  and the KV cache. A module whose ``hook_attn_scores`` or ``hook_pattern`` has a hook attached
  when it runs uses TransformerLens's own forward, so pattern analyses and circuitsvis views are
  unchanged. Unsupported configurations (non-rotary positions, local/sliding-window or
  bidirectional attention, soft-capped scores, attention sinks, ``use_attn_result``, 4-bit
  weights, OLMo QK norms, ``clip_qkv``, log-n scaling) are left alone;
* in those modules Q/K/V are one batched matmul of the input with ``W_Q`` / ``W_K`` / ``W_V`` as
  stored (``[head, d_model, d_head]``, read in place), where TransformerLens's
  ``simple_attn_linear`` rearranges each weight into a ``[(head d_head), d_model]`` copy on every
  call (about a fifth of a KV-cached decoding step on SmolLM2-135M). ``hook_q/k/v`` fire with the
  same shapes (for grouped-query attention K/V keep their ``n_key_value_heads``); split-QKV input,
  ``use_attn_in``, ungrouped GQA, QK norms and subclasses with their own
  ``calculate_qkv_matrices`` keep TransformerLens's path;
* the tensors that depend only on the padding (rotary cos/sin gathered at each row's positions,
  the boolean attention mask) are built by the first layer of a forward and reused by the
  others (TransformerLens rebuilds them in every layer), and the half rotation is one
  concatenation instead of a clone and two strided writes: same values;
* pre-norm blocks normalise the residual once for Q, K and V where nothing observes ``ln1``
  (TransformerLens calls ``ln1`` three times on the same tensor and adds ``0.0`` to two of the
  results); with a hook anywhere in ``ln1`` the block runs TransformerLens's forward, so those
  hooks fire three times as before;
* gated MLPs and the unembedding multiply by their weights' transposed views instead of copies
  (same hooks, same maths; results differ from TransformerLens's only in float rounding).

Set ``CLIFF_LENS_FAST_FORWARD=0`` to turn it off everywhere (for example to compare).
"""

from __future__ import annotations

import functools
import os
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from torch.nn.modules import module as _nn_module
from transformer_lens.components import AbstractAttention, GroupedQueryAttention, TransformerBlock
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

__all__ = ["fast_forward", "fused_attention_supported"]

_OLMO = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")
# the calculate_qkv_matrices whose maths _qkv reproduces (a subclass with its own is left to it)
_PLAIN_QKV = (AbstractAttention.calculate_qkv_matrices, GroupedQueryAttention.calculate_qkv_matrices)


def fused_attention_supported(attn: Any) -> bool:
    """Whether a TransformerLens attention module can run fused with identical results."""
    cfg = attn.cfg
    return (
        cfg.positional_embedding_type == "rotary"
        and not cfg.use_attn_result
        and not getattr(cfg, "load_in_4bit", False)
        and not getattr(cfg, "use_attention_sinks", False)
        and getattr(cfg, "clip_qkv", None) is None
        and not getattr(cfg, "use_logn_attn", False)
        and cfg.original_architecture not in _OLMO
        and (getattr(attn, "_attention_dir_override", None) or cfg.attention_dir) == "causal"
        and getattr(attn, "attn_type", "global") == "global"
        and (getattr(cfg, "attn_scores_soft_cap", -1.0) or -1.0) <= 0
        and hasattr(attn, "calculate_qkv_matrices")
        and hasattr(attn, "apply_rotary")
    )


def _head_linear(
    x: Float[Tensor, "batch pos d_model"],
    w: Float[Tensor, "head d_model d_head"],
    b: Float[Tensor, "head d_head"],
) -> Float[Tensor, "batch pos head d_head"]:
    """``simple_attn_linear`` without its weight copy: ``x @ w[h] + b[h]`` for every head in one
    batched matmul that reads ``w`` where it is stored."""
    if w.device != x.device:
        w = w.to(x.device)
    if b.device != x.device:
        b = b.to(x.device)
    n, p, h = x.shape[0], x.shape[1], w.shape[0]
    rows = x.reshape(1, n * p, x.shape[-1]).expand(h, -1, -1)  # a view: stride 0 over heads
    y = torch.baddbmm(b.unsqueeze(1), rows, w)  # [head, batch * pos, d_head], bias added in the matmul
    return y.transpose(0, 1).contiguous().view(n, p, h, w.shape[2])  # TL's layout (the activations)


def _qkv(
    self: Any, query_input: Tensor, key_input: Tensor, value_input: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``self.calculate_qkv_matrices`` (same hooks, same shapes, same maths) on weight views where
    the configuration is a plain one; TransformerLens's own otherwise."""
    cfg = self.cfg
    grouped = isinstance(self, GroupedQueryAttention)
    if (
        cfg.use_split_qkv_input
        or cfg.use_attn_in
        or getattr(cfg, "load_in_4bit", False)
        or cfg.use_qk_norm
        or (grouped and getattr(cfg, "ungroup_grouped_query_attention", False))
        or type(self).calculate_qkv_matrices not in _PLAIN_QKV
        or query_input.ndim != 3
        or key_input.ndim != 3
        or value_input.ndim != 3
    ):
        return self.calculate_qkv_matrices(query_input, key_input, value_input)
    if grouped:  # K/V keep n_key_value_heads, as GroupedQueryAttention's hook_k/hook_v see them
        w_k, b_k, w_v, b_v = self._W_K, self._b_K, self._W_V, self._b_V
    else:
        w_k, b_k, w_v, b_v = self.W_K, self.b_K, self.W_V, self.b_V
    q = self.hook_q(_head_linear(query_input, self.W_Q, self.b_Q))
    k = self.hook_k(_head_linear(key_input, w_k, b_k))
    v = self.hook_v(_head_linear(value_input, w_v, b_v))
    return q, k, v


def _per_mask(
    shared: dict[str, Any] | None, attention_mask: Tensor | None, module: Any
) -> dict[Any, Any] | None:
    """The memo of tensors derived from ``attention_mask`` for this forward (None without a mask
    or a ``shared``).

    TransformerLens passes one mask object to every block of a forward, so the layers after the
    first reuse what the first built. The memo is keyed by the mask object (held, so that its id
    cannot be reused) and starts afresh for another mask or when a module comes back to it (the
    next forward: the same mask may have been edited in place in between)."""
    if shared is None or attention_mask is None:
        return None
    used = shared.get("used")
    if shared.get("mask") is not attention_mask or used is None or id(module) in used:
        shared.clear()
        shared.update(mask=attention_mask, used=set(), memo={})
    shared["used"].add(id(module))
    return shared["memo"]


def _rotary(
    self: Any,
    x: Float[Tensor, "batch pos head d_head"],
    offset: int,
    attention_mask: Tensor | None,
    memo: dict[Any, Any] | None,
) -> Float[Tensor, "batch pos head d_head"]:
    """``self.apply_rotary(x, offset, attention_mask)``: the same products and sums in the same
    dtype, with the half rotation as one concatenation (TL: a clone and two strided writes) and
    the cos/sin rows gathered once per forward and mask; TL's own where this is not plain
    (adjacent pairs, dynamic NTK, a cache longer than the tables, another device)."""
    cos, sin = self.rotary_cos, self.rotary_sin
    n = x.size(1)
    if (
        type(self).apply_rotary is not AbstractAttention.apply_rotary
        or type(self).rotate_every_two is not AbstractAttention.rotate_every_two
        or self.cfg.rotary_adjacent_pairs
        or (self.cfg.use_dynamic_ntk_rope and not self.training)
        or offset + n > cos.shape[0]
        or x.device != cos.device
    ):
        return self.apply_rotary(x, offset, attention_mask)
    rd = self.cfg.rotary_dim
    if attention_mask is None:
        c, s = cos[None, offset : offset + n, None, :], sin[None, offset : offset + n, None, :]
    else:
        key = ("rot", offset, n, cos.data_ptr(), sin.data_ptr(), cos.shape[0])
        if memo is not None and key in memo:
            c, s = memo[key][2:]
        else:
            ids = attention_mask.cumsum(dim=1) - 1  # TL's get_offset_position_ids
            ids = ids.masked_fill(ids < 0, 0)[:, offset:].to(cos.device)
            c, s = cos[ids, None, :], sin[ids, None, :]
            if memo is not None:
                memo[key] = (cos, sin, c, s)  # the tables held: their addresses stay theirs
    x_rot = x[..., :rd]
    half = rd // 2
    x_flip = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
    x_rotated = x_rot * c + x_flip * s
    if rd == x.shape[-1]:
        return x_rotated
    return torch.cat([x_rotated, x[..., rd:]], dim=-1)


def _fused_forward(
    self: Any,
    query_input: Tensor,
    key_input: Tensor,
    value_input: Tensor,
    past_kv_cache_entry: Any = None,
    additive_attention_mask: Tensor | None = None,
    attention_mask: Tensor | None = None,
    position_bias: Tensor | None = None,
    *,
    shared: dict[str, Any] | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """TransformerLens's attention forward with the score/softmax/value steps fused.

    ``shared``: one dict for all modules patched by the same :func:`fast_forward`, where the
    padding-dependent tensors (rotary cos/sin at each row's positions, the boolean mask), equal
    in every layer of a forward, are kept for the forward and attention mask they were built
    from (:func:`_per_mask`)."""
    if (
        additive_attention_mask is not None
        or position_bias is not None
        or self.hook_attn_scores._forward_hooks
        or self.hook_pattern._forward_hooks
        or self.training
    ):
        return type(self).forward(
            self, query_input, key_input, value_input, past_kv_cache_entry,
            additive_attention_mask, attention_mask, position_bias,
        )  # fmt: skip
    q, k, v = _qkv(self, query_input, key_input, value_input)
    offset = 0
    if past_kv_cache_entry is not None:
        offset = past_kv_cache_entry.past_keys.size(1)
        k, v = past_kv_cache_entry.append(k, v)
    memo = _per_mask(shared, attention_mask, self)
    q = self.hook_rot_q(_rotary(self, q, offset, attention_mask, memo))
    k = self.hook_rot_k(_rotary(self, k, 0, attention_mask, memo))  # TL caches keys unrotated
    n_q, n_k = q.shape[1], k.shape[1]
    mask = valid = None
    if attention_mask is not None or offset:
        key = ("mask", offset, n_q, n_k, q.device)
        if memo is not None and key in memo:
            mask, valid = memo[key]
        else:
            mask = self._make_causal_mask(
                query_ctx_length=n_q, key_ctx_length=n_k, past_kv_pos_offset=offset, device=q.device
            )
            if attention_mask is not None:
                mask = mask & attention_mask[:, None, None, -n_k:].to(q.device).bool()
                # a left-padding query sees no key: TransformerLens's softmax gives NaN there and
                # sets it to 0; keep SDPA finite by letting it see everything, then zero it the same way
                valid = mask.any(-1, keepdim=True)  # [batch, 1, query, 1]
                mask = mask | ~valid
            if memo is not None:
                memo[key] = (mask, valid)
    v = v.to(q.dtype)
    z = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=mask,
        is_causal=mask is None,
        scale=1.0 / self.attn_scale,
        enable_gqa=k.shape[2] != q.shape[2],
    )  # [batch, head, query, d_head]
    if valid is not None:
        z = z * valid.to(z.dtype)
    z = self.hook_z(z.transpose(1, 2))  # [batch, query, head, d_head]
    w = self.W_O.reshape(-1, self.cfg.d_model)  # [head * d_head, d_model]: a view, no copy
    return F.linear(z.reshape(z.shape[0], n_q, -1).to(w.dtype), w.T, self.b_O.to(w.device))


def _block_supported(blk: Any) -> bool:
    cfg = blk.cfg
    return (
        type(blk).forward is TransformerBlock.forward
        and not cfg.use_attn_in
        and not cfg.use_split_qkv_input
        and cfg.original_architecture not in POST_NORM_ARCHITECTURES
        and not cfg.use_normalization_before_and_after
        and not cfg.attn_only
        and not cfg.parallel_attn_mlp
        and not getattr(cfg, "use_hook_mlp_in", False)
        and all(hasattr(blk, a) for a in ("ln1", "ln2", "attn", "mlp", "hook_resid_mid", "apply_mlp"))
    )


def _observed(module: Any) -> bool:
    """Whether a forward (pre-)hook on ``module`` or inside it, or a global one, would see its calls."""
    if _nn_module._global_forward_hooks or _nn_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def _block_forward(
    self: Any,
    resid_pre: Float[Tensor, "batch pos d_model"],
    shortformer_pos_embed: Tensor | None = None,
    past_kv_cache_entry: Any = None,
    attention_mask: Tensor | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """``TransformerBlock.forward`` of a plain pre-norm block with ``ln1`` applied once for the
    Q, K and V inputs (TransformerLens: three calls on the same tensor, ``+ 0.0`` on two)."""
    if shortformer_pos_embed is not None or _observed(self.ln1):
        return type(self).forward(self, resid_pre, shortformer_pos_embed, past_kv_cache_entry, attention_mask)
    resid_pre = self.hook_resid_pre(resid_pre)  # [batch, pos, d_model]
    normed = self.ln1(resid_pre)
    attn_out = self.attn(
        query_input=normed,
        key_input=normed,
        value_input=normed,
        past_kv_cache_entry=past_kv_cache_entry,
        attention_mask=attention_mask,
    )
    attn_out = self.hook_attn_out(attn_out)
    if resid_pre.device != attn_out.device:
        resid_pre = resid_pre.to(attn_out.device)
    resid_mid = self.hook_resid_mid(resid_pre + attn_out)
    mlp_out = self.apply_mlp(self.ln2(resid_mid))
    return self.hook_resid_post(resid_mid + mlp_out)


def _gated_mlp_forward(
    self: Any, x: Float[Tensor, "batch pos d_model"]
) -> Float[Tensor, "batch pos d_model"]:
    """TransformerLens's ``GatedMLP.forward`` without the per-call weight copies."""
    if self.W_gate.device != x.device:
        x = x.to(self.W_gate.device)
    pre_act = self.hook_pre(F.linear(x, self.W_gate.T))  # [batch, pos, d_mlp]
    pre_linear = self.hook_pre_linear(F.linear(x, self.W_in.T))
    post_act = self.hook_post(self.act_fn(pre_act) * pre_linear + self.b_in)
    return F.linear(post_act, self.W_out.T, self.b_out)


def _unembed_forward(
    self: Any, residual: Float[Tensor, "batch pos d_model"]
) -> Float[Tensor, "batch pos d_vocab"]:
    """TransformerLens's ``Unembed.forward`` without the per-call copy of ``W_U``."""
    residual = self.hook_in(residual)
    return self.hook_out(F.linear(residual, self.W_U.T, self.b_U))


def _copy_free_supported(module: Any) -> bool:
    name = type(module).__name__
    if name == "Unembed":
        return all(hasattr(module, a) for a in ("W_U", "b_U", "hook_in", "hook_out"))
    if name == "GatedMLP":
        return not module.cfg.is_layer_norm_activation() and all(
            hasattr(module, a) for a in ("W_gate", "W_in", "b_in", "W_out", "b_out", "hook_pre_linear")
        )
    return False


def _enabled() -> bool:
    return os.environ.get("CLIFF_LENS_FAST_FORWARD", "1").strip().lower() not in (
        "0",
        "false",
        "no",
        "off",
    )


@contextmanager
def fast_forward(model: Any, enabled: bool | None = None) -> Iterator[int]:
    """Run ``model`` with fused attention and copy-free MLP/unembedding weights while inside;
    yields how many attention modules were fused.

    Nested use is fine (modules already patched are left to the outer context). Results equal
    TransformerLens's forward to float tolerance (tested: logits, KV-cached greedy decoding,
    ``hook_z`` ablations, left padding, grouped-query attention).

    Args:
        model: a ``HookedTransformer`` (anything without ``.blocks`` is left alone).
        enabled: force on/off; default on unless ``CLIFF_LENS_FAST_FORWARD=0``.
    """
    on = _enabled() if enabled is None else enabled
    patched = []
    n_attn = 0

    shared: dict[str, Any] = {}  # per-mask tensors shared by this context's attention modules

    def patch(module: Any, fn: Any) -> None:
        module.forward = types.MethodType(fn, module)
        patched.append(module)

    if on and hasattr(model, "blocks"):
        for blk in model.blocks:
            if "forward" not in vars(blk) and _block_supported(blk):
                patch(blk, _block_forward)
            attn, mlp = getattr(blk, "attn", None), getattr(blk, "mlp", None)
            if attn is not None and "forward" not in vars(attn) and fused_attention_supported(attn):
                patch(attn, functools.partial(_fused_forward, shared=shared))
                n_attn += 1
            if mlp is not None and "forward" not in vars(mlp) and _copy_free_supported(mlp):
                patch(mlp, _gated_mlp_forward)
        unembed = getattr(model, "unembed", None)
        if unembed is not None and "forward" not in vars(unembed) and _copy_free_supported(unembed):
            patch(unembed, _unembed_forward)
    try:
        yield n_attn
    finally:
        for module in patched:
            del module.forward
        shared.clear()
