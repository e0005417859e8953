"""Per-head attribution through a post-attention norm (Gemma 2/3 ``ln1_post``; OLMo 2/3 ``ln1``
applied after attention): completeness, batching, and a planted head recovered exactly.

TransformerLens 3.9 represents both in ``HookedTransformerConfig``: Gemma's sandwich norms with
``use_normalization_before_and_after=True`` (``blocks.L.ln1_post.hook_scale``; RMSNorm only: its
LayerNorm branch does not build), OLMo's norm-after-only layout with
``original_architecture="Olmo2ForCausalLM"`` / ``"Olmo3ForCausalLM"`` (``blocks.L.ln1.hook_scale``
fires on the attention OUTPUT; RMSNorm or LayerNorm).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import rotary_tl_model
from test_heads import _probe, _probe_logit, perturb

from cliff_lens.heads import (
    direct_attribution_decomposition,
    head_attributions,
    promoting_heads,
    suppression_heads,
)
from cliff_lens.testing import ALPHA, PROMO, SUPP, TRIG, planted_model, planted_records

KINDS = {
    "gemma": dict(use_normalization_before_and_after=True, n_key_value_heads=2),
    "olmo2": dict(original_architecture="Olmo2ForCausalLM"),
    "olmo3_gqa": dict(original_architecture="Olmo3ForCausalLM", n_key_value_heads=2),
    "olmo2_ln": dict(original_architecture="Olmo2ForCausalLM", normalization_type="LN", act_fn="gelu"),
}


def post_norm_model(kind: str, seed: int = 0):
    """A random 3-layer rotary post-norm model (gated MLP unless LayerNorm), biases and norm
    weights perturbed so that no term is trivial."""
    extra = dict(KINDS[kind])
    return perturb(
        rotary_tl_model(n_layers=3, gated_mlp="normalization_type" not in extra, seed=seed, **extra),
        norm_bias=True,
    )


def _post_norms(kind: str):
    return ["ln1_post"] if kind == "gemma" else ["ln1"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_completeness_through_the_post_attention_norm(kind):
    """Heads (gamma * C(z W_O) / sigma, sigma frozen) + the norm of b_O (+ its bias) == the norm's
    output in every layer, the whole decomposition closes for every variant and probe hook, and
    head_attributions equals its head terms."""
    m = post_norm_model(kind)
    assert any(n.endswith(f"{_post_norms(kind)[0]}.hook_scale") for n in m.hook_dict)
    d = torch.randn(32, generator=torch.Generator().manual_seed(5))
    t = torch.randint(0, 100, (9,), generator=torch.Generator().manual_seed(2))
    _, cache = m.run_with_cache(t[None])
    du = d / d.norm()
    # per layer: the heads' writes plus the rest are exactly the attention output (hook_attn_out)
    dec = direct_attribution_decomposition(m, t, d, -1, variant="raw")
    for i in range(3):
        attn_out = float(cache[f"blocks.{i}.hook_attn_out"][0, -1] @ du)
        assert float(dec.heads[i].sum()) + float(dec.attn_bias[i]) == pytest.approx(attn_out, abs=1e-4)
    for hook, layer in (("final_norm_weighted", None), ("blocks.{L}.hook_resid_post", 1)):
        probe = _probe(d, hook, layer)
        for pos in (-1, 3):
            for variant in ("raw", "norm_aware", "with_bias"):
                dec = direct_attribution_decomposition(m, t, probe, pos, variant=variant)
                assert abs(dec.error) < 1e-4, (hook, pos, variant)
                attr = head_attributions(m, [t], probe, positions=[pos], variant=variant)
                assert torch.allclose(attr - dec.bias, dec.heads, atol=1e-5, equal_nan=True)
            logit = float(_probe_logit(m, t, probe, [pos])[0])
            assert dec.total + probe.bias == pytest.approx(logit, abs=1e-4)


@pytest.mark.parametrize("kind", ["gemma", "olmo3_gqa"])
def test_post_norm_batched_equals_one_at_a_time(kind):
    m = post_norm_model(kind)
    d = torch.randn(32)
    g = torch.Generator().manual_seed(0)
    toks = [torch.randint(0, 100, (n,), generator=g) for n in (4, 11, 7)]
    probe = _probe(d, "final_norm_weighted")
    for variant in ("raw", "with_bias"):
        batched = head_attributions(m, toks, probe, positions="all", per_example=True, variant=variant)
        single = torch.stack(
            [head_attributions(m, [t], probe, positions="all", variant=variant) for t in toks]
        )
        assert (batched - single).abs().max() < 1e-5


def planted_post_norm_model(kind: str):
    """The planted model (planted_model()'s weights) rebuilt with a post-attention RMSNorm.

    Layer 1's other heads and b_O are zeroed, so at a trigger its attention output is
    ``c * (-ALPHA + 2 ALPHA) d`` for some c > 0 and the norm (weight g, eps ~ 0) turns SUPP's
    write into ``-sqrt(d_model) * g * d`` and PROMO's into ``+2 sqrt(d_model) * g * d`` whatever c
    is: raw scores ``-/+ sqrt(32) (d . g * d)`` (x2 for PROMO). Layer 0's norm weight is 0.1 so
    its heads write little."""

    src, d = planted_model()
    extra = (
        dict(use_normalization_before_and_after=True)
        if kind == "gemma"
        else dict(original_architecture="Olmo2ForCausalLM")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m, _ = planted_model(normalization_type="RMS", eps=1e-12, **extra)
    m.eval()
    missing, unexpected = m.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected and all(".w" in k or "norm" in k or k.endswith(("IGNORE", "mask")) for k in missing)
    post = _post_norms(kind)[0]
    g = 1.5 + torch.rand(32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = m.blocks[1].attn
        for h in range(4):
            if h not in (SUPP[1], PROMO[1]):
                a.W_O[h] = 0
        a.b_O.zero_()
        getattr(m.blocks[1], post).w.copy_(g)
        getattr(m.blocks[0], post).w.fill_(0.1)
    return m, d, g


@pytest.mark.parametrize("kind", ["gemma", "olmo2"])
def test_planted_head_recovered_exactly_through_the_post_norm(kind):
    m, d, g = planted_post_norm_model(kind)
    recs = planted_records(4)
    per = head_attributions(m, recs, d, positions="end_of_thinking_last", per_example=True)
    unit = float(d @ (g * d)) * 32**0.5
    assert torch.allclose(per[:, SUPP[0], SUPP[1]], torch.full((4,), -unit), atol=1e-4)
    assert torch.allclose(per[:, PROMO[0], PROMO[1]], torch.full((4,), 2 * unit), atol=1e-4)
    scores = per.mean(0)
    top = suppression_heads(scores, n=1)[0]
    assert top[:2] == SUPP and top[2] == pytest.approx(-unit, abs=1e-4)
    assert promoting_heads(scores, n=1)[0][:2] == PROMO
    # the magnitude is set by the norm, not by the head's un-normalised output z @ W_O . d = -ALPHA * c
    _, cache = m.run_with_cache(recs[0].tokens[None])
    c = float(cache["blocks.1.attn.hook_z"][0, -1, SUPP[1], 0])
    assert c > 0 and abs(-ALPHA * c + unit) > 1.0
    dec = direct_attribution_decomposition(m, recs[0], d, -1)
    assert abs(dec.error) < 1e-4 and float(dec.heads[SUPP]) == pytest.approx(-unit, abs=1e-4)
    # no trigger, nothing written: layer 1's output is 0 and so are the planted heads' scores
    clean = head_attributions(m, planted_records(2, trigger=False), d, positions="last")
    assert abs(float(clean[SUPP])) < 1e-6 and TRIG not in planted_records(2, trigger=False)[0].tokens
