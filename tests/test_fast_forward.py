"""fast_forward (fused SDPA attention, copy-free MLP/unembedding weights) equals TransformerLens."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from cliff_lens.ablation import ablation_hooks
from cliff_lens.fast_forward import fast_forward, fused_attention_supported
from cliff_lens.rollout import generate_rollouts
from cliff_lens.testing import build_tiny_tokenizer


def _model(n_key_value_heads: int | None = 2, pos: str = "rotary", seed: int = 0) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=1000, n_ctx=128, act_fn="silu",
        normalization_type="RMS", positional_embedding_type=pos, rotary_dim=8 if pos == "rotary" else None,
        gated_mlp=True, n_key_value_heads=n_key_value_heads, seed=seed,
    )  # fmt: skip
    m = HookedTransformer(cfg)
    with torch.no_grad():  # larger weights than the default init: attention that is far from uniform
        for p in m.parameters():
            p.mul_(3.0)
    return m.eval()


def _padded_batch():
    g = torch.Generator().manual_seed(1)
    toks = torch.randint(1, 1000, (3, 20), generator=g)
    mask = torch.ones_like(toks)
    mask[1, :7] = 0  # left padding
    mask[2, :13] = 0
    return toks, mask


@pytest.mark.parametrize("kv_heads", [None, 2, 1])
def test_logits_equal_with_left_padding(kv_heads):
    m = _model(kv_heads)
    toks, mask = _padded_batch()
    seen = []
    hooks = [(f"blocks.{i}.mlp.{h}", lambda x, hook: seen.append(hook.name)) for i in (0, 1)
             for h in ("hook_pre", "hook_pre_linear", "hook_post")] + [
        ("unembed.hook_out", lambda x, hook: seen.append(hook.name))]  # fmt: skip
    with torch.no_grad():
        ref = m(toks, attention_mask=mask)
        with fast_forward(m) as n:
            assert "forward" in vars(m.blocks[1].mlp) and "forward" in vars(m.unembed)
            got = m(toks, attention_mask=mask)
            m.run_with_hooks(toks, attention_mask=mask, fwd_hooks=hooks)
        plain = m(toks)
        with fast_forward(m):
            got_plain = m(toks)  # no mask: the is_causal path
    assert n == 2
    keep = mask.bool()
    assert (ref - got)[keep].abs().max() < 1e-4
    assert (plain - got_plain).abs().max() < 1e-4
    assert len(seen) == len(hooks)  # the copy-free MLP and unembedding keep their hook points
    assert not any("forward" in vars(x) for x in (m.blocks[0].attn, m.blocks[0].mlp, m.unembed))  # restored


def test_kv_cached_greedy_generation_and_hook_z_ablation_match(monkeypatch):
    m = _model(2)
    m.tokenizer = build_tiny_tokenizer()
    prompts = ["how to bake bread", "a much longer prompt about the weather today and tomorrow", "hi"]
    hooks = ablation_hooks(m, [(0, 1), (1, 3)], "zero")
    out = {}
    for on in (False, True):
        monkeypatch.setenv("CLIFF_LENS_FAST_FORWARD", "1" if on else "0")
        with fast_forward(m) as n:  # generate_rollouts nests its own context
            assert n == (2 if on else 0)
            out[on] = [
                generate_rollouts(m, prompts, max_new_tokens=12, batch_size=3, hooks=h, progress=False)
                for h in (None, hooks)
            ]
    for a, b in zip(out[False], out[True], strict=True):
        assert [r.thinking for r in a] == [r.thinking for r in b]
    # the ablation does change the text, so the comparison above is not vacuous
    assert [r.thinking for r in out[True][0]] != [r.thinking for r in out[True][1]]


def test_pattern_hooks_fall_back_to_transformer_lens():
    m = _model(2)
    toks, mask = _padded_batch()
    seen = []
    with torch.no_grad(), fast_forward(m):
        logits = m.run_with_hooks(
            toks,
            attention_mask=mask,
            fwd_hooks=[("blocks.1.attn.hook_pattern", lambda p, hook: seen.append(p.shape))],
        )
        _, cache = m.run_with_cache(
            toks, attention_mask=mask, names_filter=lambda n: n.endswith("hook_pattern")
        )
    assert seen == [torch.Size([3, 4, 20, 20])]
    assert set(cache.keys()) == {"blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"}
    with torch.no_grad():
        ref = m(toks, attention_mask=mask)
    assert (ref - logits)[mask.bool()].abs().max() < 1e-4


def test_unsupported_models_and_opt_out(monkeypatch):
    standard = _model(None, pos="standard")
    assert not fused_attention_supported(standard.blocks[0].attn)
    with fast_forward(standard) as n:
        assert n == 0
    m = _model(2)
    monkeypatch.setenv("CLIFF_LENS_FAST_FORWARD", "0")
    with fast_forward(m) as n:
        assert n == 0 and "forward" not in vars(m.blocks[0].attn)
    monkeypatch.delenv("CLIFF_LENS_FAST_FORWARD")
    with fast_forward(m) as n, fast_forward(m) as inner:
        assert n == 2 and inner == 0  # nested: the outer context owns the patch
    assert "forward" not in vars(m.blocks[0].attn)
