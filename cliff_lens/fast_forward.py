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
* gated MLPs and the unembedding multiply by their weights' transposed views instead of copies
  (same hooks, same maths; results differ from TransformerLens's only in float rounding).

Set ``CLIFF_LENS_FAST_FORWARD=0`` to turn it off everywhere (for example to compare).
"""

from __future__ import annotations

import os
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

__all__ = ["fast_forward", "fused_attention_supported"]

_OLMO = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


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


def _fused_forward(
    self: Any,
    query_input: Tensor,
    key_input: Tensor,
    value_input: Tensor,
    past_kv_cache_entry: Any = None,
    additive_attention_mask: Tensor | None = None,
    attention_mask: Tensor | None = None,
    position_bias: Tensor | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """TransformerLens's attention forward with the score/softmax/value steps fused."""
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
    q, k, v = self.calculate_qkv_matrices(query_input, key_input, value_input)
    offset = 0
    if past_kv_cache_entry is not None:
        offset = past_kv_cache_entry.past_keys.size(1)
        k, v = past_kv_cache_entry.append(k, v)
    q = self.hook_rot_q(self.apply_rotary(q, offset, attention_mask))
    k = self.hook_rot_k(self.apply_rotary(k, 0, attention_mask))  # keys are cached rotated
    n_q, n_k = q.shape[1], k.shape[1]
    mask = valid = None
    if attention_mask is not None or offset:
        mask = self._make_causal_mask(
            query_ctx_length=n_q, key_ctx_length=n_k, past_kv_pos_offset=offset, device=q.device
        )
        if attention_mask is not None:
            mask = mask & attention_mask[:, None, None, -n_k:].to(q.device).bool()
            # a left-padding query sees no key: TransformerLens's softmax gives NaN there and
            # sets it to 0; keep SDPA finite by letting it see everything, then zero it the same way
            valid = mask.any(-1, keepdim=True)  # [batch, 1, query, 1]
            mask = mask | ~valid
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

    def patch(module: Any, fn: Any) -> None:
        module.forward = types.MethodType(fn, module)
        patched.append(module)

    if on and hasattr(model, "blocks"):
        for blk in model.blocks:
            attn, mlp = getattr(blk, "attn", None), getattr(blk, "mlp", None)
            if attn is not None and "forward" not in vars(attn) and fused_attention_supported(attn):
                patch(attn, _fused_forward)
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
