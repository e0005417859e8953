"""Activation extraction: batched == one-at-a-time, positions, hooks, bad input."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from cliff_lens.activations import NonFiniteActivationError, extract_activations, length_buckets


@dataclass
class Rec:  # duck-typed TokenizedRollout (tokens + spans)
    tokens: torch.Tensor
    spans: dict


def _model(pos: str = "rotary", norm: str = "RMS", n_ctx: int = 64, seed: int = 0) -> HookedTransformer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = HookedTransformerConfig(
            n_layers=3,
            d_model=32,
            n_ctx=n_ctx,
            d_head=8,
            n_heads=4,
            d_mlp=64,
            d_vocab=50,
            act_fn="silu" if pos == "rotary" else "gelu",
            normalization_type=norm,
            positional_embedding_type=pos,
            rotary_dim=8 if pos == "rotary" else None,
            n_key_value_heads=2 if pos == "rotary" else None,
            gated_mlp=pos == "rotary",
            seed=seed,
        )
        m = HookedTransformer(cfg)
    m.eval()
    return m


@pytest.fixture(scope="module")
def rotary():
    return _model("rotary", "RMS")


@pytest.fixture(scope="module")
def learned():
    return _model("standard", "LN")


def _seqs(n=11, lo=3, hi=30, seed=1):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(lo, hi, (n,), generator=g)
    return [torch.randint(1, 49, (int(L),), generator=g) for L in lens]


def _recs(seqs):
    out = []
    for s in seqs:
        n = s.numel()
        a = max(1, n // 3)
        b = max(a, n - 2)
        out.append(
            Rec(s, {"prompt": (1, a), "thinking": (a, b), "end_of_thinking": (b, n), "answer": (n, n)})
        )
    return out


@pytest.mark.parametrize("which", ["rotary", "learned"])
def test_batched_equals_one_at_a_time(which, request):
    m = request.getfixturevalue(which)
    seqs = _seqs()
    kw = dict(progress=False)
    # last token, one layer
    a = extract_activations(m, seqs, layer=1, batch_size=4, **kw)
    b = torch.cat([extract_activations(m, [s], layer=1, **kw) for s in seqs])
    assert a.shape == (len(seqs), 32)
    assert (a - b).abs().max() < 1e-5
    # several layers and fixed indices
    a = extract_activations(m, seqs, layers=[0, 2], positions=[0, -1], batch_size=3, **kw)
    b = torch.cat([extract_activations(m, [s], layers=[0, 2], positions=[0, -1], **kw) for s in seqs])
    assert a.shape == (len(seqs), 2, 2, 32)
    assert (a - b).abs().max() < 1e-5
    # every token, final norm
    a = extract_activations(m, seqs, hook="ln_final.hook_normalized", positions="all", batch_size=5, **kw)
    for s, x in zip(seqs, a):
        y = extract_activations(m, [s], hook="ln_final.hook_normalized", positions="all", **kw)[0]
        assert x.shape == (s.numel(), 32)
        assert (x - y).abs().max() < 1e-5


def test_matches_run_with_cache_reference(rotary):
    m = rotary
    recs = _recs(_seqs(6))
    acts = extract_activations(m, recs, positions="thinking", layer=2, batch_size=4, progress=False)
    last_eot = extract_activations(
        m, recs, hook="final_norm_weighted", positions="last:end_of_thinking", progress=False
    )
    multi = extract_activations(m, recs, layers=[0, 1, 2], progress=False)
    sl = extract_activations(m, recs, positions=(1, 4), layer=0, progress=False)
    for i, r in enumerate(recs):
        _, cache = m.run_with_cache(r.tokens[None])
        s, e = r.spans["thinking"]
        ref = cache["blocks.2.hook_resid_post"][0, s:e]
        assert acts[i].shape == ref.shape and (acts[i] - ref).abs().max() < 1e-5
        fnw = cache["ln_final.hook_normalized"][0] * m.ln_final.w
        eot_end = r.spans["end_of_thinking"][1]
        assert (last_eot[i] - fnw[eot_end - 1]).abs().max() < 1e-5
        for k in range(3):
            assert (multi[i, k] - cache[f"blocks.{k}.hook_resid_post"][0, -1]).abs().max() < 1e-5
        assert (sl[i] - cache["blocks.0.hook_resid_post"][0, 1:4]).abs().max() < 1e-5


def test_final_norm_weighted_differs_from_plain_normalized_and_needs_unfolded_ln(rotary):
    seqs = _seqs(3)
    with torch.no_grad():
        rotary.ln_final.w.mul_(2.0)
    try:
        a = extract_activations(rotary, seqs, hook="final_norm_weighted", progress=False)
        b = extract_activations(rotary, seqs, hook="ln_final.hook_normalized", progress=False)
        assert torch.allclose(a, 2.0 * b, atol=1e-5)
    finally:
        with torch.no_grad():
            rotary.ln_final.w.div_(2.0)
    folded = _model("rotary", "RMSPre")
    with pytest.raises(ValueError, match="fold_ln=False"):
        extract_activations(folded, seqs, hook="final_norm_weighted", progress=False)


def test_stops_after_the_deepest_needed_layer(rotary):
    calls = {"late": 0, "unembed": 0}
    h1 = rotary.blocks[2].register_forward_hook(lambda *a: calls.__setitem__("late", calls["late"] + 1))
    h2 = rotary.unembed.register_forward_hook(lambda *a: calls.__setitem__("unembed", calls["unembed"] + 1))
    try:
        extract_activations(rotary, _seqs(4), layer=1, progress=False)
        assert calls == {"late": 0, "unembed": 0}
        extract_activations(rotary, _seqs(4), hook="final_norm_weighted", progress=False)
        assert calls["late"] > 0 and calls["unembed"] == 0  # final norm needs every block, never the unembed
    finally:
        h1.remove()
        h2.remove()


def test_length_buckets_sort_and_cover():
    lens = [5, 1, 9, 3, 7]
    b = length_buckets(lens, 2)
    assert sorted(i for x in b for i in x) == list(range(5))
    assert b[0] == [2, 4]  # longest first


def test_nonfinite_activations_are_named(rotary):
    seqs = _seqs(5)
    seqs[3] = seqs[3].clone()
    seqs[3][0] = 49
    with torch.no_grad():
        saved = rotary.embed.W_E[49].clone()
        rotary.embed.W_E[49] = float("nan")
    try:
        with pytest.raises(NonFiniteActivationError, match="example\\(s\\) 3"):
            extract_activations(rotary, seqs, layer=0, progress=False)
        with pytest.warns(UserWarning, match="3"):
            a = extract_activations(rotary, seqs, layer=0, progress=False, on_nonfinite="nan")
        assert torch.isnan(a[3]).all() and torch.isfinite(a[[0, 1, 2, 4]]).all()
    finally:
        with torch.no_grad():
            rotary.embed.W_E[49] = saved


def test_too_long_inputs_error_or_truncate_left():
    m = _model("rotary", "RMS", n_ctx=16)
    long = torch.randint(1, 50, (20,))
    with pytest.raises(ValueError, match="n_ctx=16.*truncate='left'"):
        extract_activations(m, [long], progress=False)
    with pytest.warns(UserWarning, match="truncated from the left"):
        a = extract_activations(m, [long], truncate="left", progress=False)
    b = extract_activations(m, [long[-16:]], progress=False)
    assert (a - b).abs().max() < 1e-6


def test_bad_inputs_give_clear_errors(rotary):
    with pytest.raises(ValueError, match="empty batch"):
        extract_activations(rotary, [], progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        extract_activations(rotary, _seqs(2), hook="blocks.{L}.hook_nope", progress=False)
    with pytest.raises(ValueError, match="span information"):
        extract_activations(rotary, _seqs(2), positions="thinking", progress=False)
    with pytest.raises(ValueError, match="out of range"):
        extract_activations(rotary, _seqs(2), layer=7, progress=False)
    empty_think = Rec(torch.arange(1, 6), {"prompt": (0, 2), "thinking": (2, 2), "end_of_thinking": (2, 5)})
    with pytest.raises(ValueError, match="empty"):
        extract_activations(rotary, [empty_think], positions="last:thinking", progress=False)
    # an empty span with a ragged rule is fine: zero rows
    out = extract_activations(rotary, [empty_think], positions="thinking", progress=False)
    assert out[0].shape == (0, 32)
