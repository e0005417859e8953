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


# --- Q/K/V on weight views (no simple_attn_linear copies) --------------------------------------

_QKV = ("hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k")


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    """Tiny Llama and Qwen2 (GQA: 4 query / 2 KV heads) converted by load_model, plus the
    multi-head _model; Q/K/V biases made non-zero so that the bias path is exercised."""
    from cliff_lens.models import load_model
    from cliff_lens.testing import tiny_hf_model_dir

    root = tmp_path_factory.mktemp("ff_families")
    out = {"mha": _model(None)}
    for arch in ("llama", "qwen2"):
        m = load_model(tiny_hf_model_dir(root / arch, arch=arch, vocab_size=300, seed=3))
        g = torch.Generator().manual_seed(4)
        with torch.no_grad():
            for p in m.parameters():  # larger weights: attention far from uniform
                p.mul_(4.0)
            for blk in m.blocks:
                a = blk.attn
                for name in ("b_Q", "_b_K", "_b_V") if hasattr(a, "_b_K") else ("b_Q", "b_K", "b_V"):
                    b = getattr(a, name)
                    b.copy_(torch.randn(b.shape, generator=g) * 0.5)
        out[arch] = m.eval()
    return out


class _SpyAttnLinear:
    """Counts calls of TransformerLens's simple_attn_linear (the per-call weight-copying path)."""

    def __init__(self, monkeypatch):
        import transformer_lens.components.abstract_attention as aa
        import transformer_lens.components.grouped_query_attention as gqa

        self.n = 0
        real = aa.simple_attn_linear

        def spy(*a, **kw):
            self.n += 1
            return real(*a, **kw)

        for mod in (aa, gqa):
            monkeypatch.setattr(mod, "simple_attn_linear", spy)


def _tokens(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(1, min(model.cfg.d_vocab, 300), (3, 18), generator=g)
    mask = torch.ones_like(toks)
    mask[1, :5] = 0
    mask[2, :11] = 0
    return toks, mask


@pytest.mark.parametrize("arch", ["mha", "llama", "qwen2"])
def test_qkv_hooks_fire_with_the_same_values_and_no_weight_copies(family_models, arch, monkeypatch):
    m = family_models[arch]
    toks, mask = _tokens(m)
    names = lambda n: n.endswith(_QKV)  # noqa: E731
    with torch.no_grad():
        ref_logits, ref = m.run_with_cache(toks, attention_mask=mask, names_filter=names)
        spy = _SpyAttnLinear(monkeypatch)
        with fast_forward(m) as n:
            assert n == m.cfg.n_layers
            logits, got = m.run_with_cache(toks, attention_mask=mask, names_filter=names)
    assert spy.n == 0  # Q/K/V came from the weight views
    assert set(got.keys()) == set(ref.keys()) and len(ref.keys()) == len(_QKV) * m.cfg.n_layers
    n_kv = m.cfg.n_key_value_heads or m.cfg.n_heads
    for name in ref.keys():
        heads = m.cfg.n_heads if name.endswith(("hook_q", "hook_rot_q")) else n_kv
        assert got[name].shape == ref[name].shape == (3, 18, heads, m.cfg.d_head), name
        assert got[name].is_contiguous()
        assert (got[name] - ref[name]).abs().max() < 1e-4, name
    keep = mask.bool()
    assert (logits - ref_logits)[keep].abs().max() < 1e-4


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_qkv_hook_edits_take_effect(family_models, arch):
    """A hook that rewrites hook_v changes the output exactly as it does on TransformerLens's path."""
    m = family_models[arch]
    toks, mask = _tokens(m, seed=2)
    hooks = [("blocks.1.attn.hook_v", lambda v, hook: v * 0.0), ("blocks.0.attn.hook_q", lambda q, hook: -q)]
    with torch.no_grad():
        ref = m.run_with_hooks(toks, attention_mask=mask, fwd_hooks=hooks)
        with fast_forward(m):
            got = m.run_with_hooks(toks, attention_mask=mask, fwd_hooks=hooks)
        plain = m(toks, attention_mask=mask)
    keep = mask.bool()
    assert (ref - got)[keep].abs().max() < 1e-4
    assert (ref - plain)[keep].abs().max() > 1e-2  # the hooks did something


@pytest.mark.parametrize("arch", ["mha", "llama", "qwen2"])
def test_kv_cached_logits_with_left_padding_equal_transformer_lens(family_models, arch, monkeypatch):
    from cliff_lens.rollout import _kv_cache_cls

    m = family_models[arch]
    toks, mask = _tokens(m, seed=3)
    g = torch.Generator().manual_seed(5)
    steps = torch.randint(1, min(m.cfg.d_vocab, 300), (4, 3, 1), generator=g)

    def run():
        cache = _kv_cache_cls().init_cache(m.cfg, m.cfg.device, 3)
        outs = [m(toks, attention_mask=mask, past_kv_cache=cache)[mask.bool()]]
        for t in steps:
            outs.append(m(t, attention_mask=torch.ones((3, 1), dtype=torch.long), past_kv_cache=cache)[:, -1])
        return outs

    with torch.no_grad():
        ref = run()
        spy = _SpyAttnLinear(monkeypatch)
        with fast_forward(m):
            got = run()
    assert spy.n == 0
    for a, b in zip(ref, got, strict=True):
        assert (a - b).abs().max() < 1e-4


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_generation_tokens_equal_on_gqa_families(family_models, arch, monkeypatch):
    m = family_models[arch]
    prompts = ["how to bake bread", "a much longer prompt about the weather today and tomorrow", "hi"]
    hooks = ablation_hooks(m, [(0, 1), (1, 2)], "zero")
    out = {}
    for on in (False, True):
        monkeypatch.setenv("CLIFF_LENS_FAST_FORWARD", "1" if on else "0")
        kw = dict(max_new_tokens=10, batch_size=3, progress=False)
        out[on] = [[r.thinking for r in generate_rollouts(m, prompts, hooks=h, **kw)] for h in (None, hooks)]
    assert out[False] == out[True]
    assert len(set(out[True][0])) >= 2  # not one degenerate string


def test_qk_norm_keeps_transformer_lens_qkv(monkeypatch):
    """Configurations the view path does not cover (here QK norms) use calculate_qkv_matrices."""
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=1000, n_ctx=128, act_fn="silu",
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8, gated_mlp=True,
        n_key_value_heads=2, use_qk_norm=True, seed=0,
    )  # fmt: skip
    m = HookedTransformer(cfg).eval()
    toks, mask = _padded_batch()
    with torch.no_grad():
        ref = m(toks, attention_mask=mask)
        spy = _SpyAttnLinear(monkeypatch)
        with fast_forward(m) as n:
            got = m(toks, attention_mask=mask)
    assert n == 2 and spy.n == 3 * 2  # fused attention, TransformerLens's Q/K/V
    assert (ref - got)[mask.bool()].abs().max() < 1e-4


@pytest.mark.parametrize("rotary_dim, adjacent", [(4, False), (8, True)])
def test_partial_or_adjacent_rotary_and_a_mask_edited_in_place(rotary_dim, adjacent):
    """Rotary on part of d_head (the rest passed through) and GPT-J-style adjacent pairs (TL's
    own rotation) equal TransformerLens; a mask object edited in place between two forwards is
    read afresh (the per-forward memo of mask-derived tensors does not outlive its forward)."""
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=1000, n_ctx=128, act_fn="silu",
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=rotary_dim,
        rotary_adjacent_pairs=adjacent, gated_mlp=True, n_key_value_heads=2, seed=2,
    )  # fmt: skip
    m = HookedTransformer(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0)
    m.eval()
    toks, mask = _padded_batch()
    names = lambda n: n.endswith(("hook_rot_q", "hook_rot_k"))  # noqa: E731
    with torch.no_grad():
        ref, ref_cache = m.run_with_cache(toks, attention_mask=mask, names_filter=names)
        edited = mask.clone()
        edited[0, :4] = 0
        ref_edited = m(toks, attention_mask=edited)
        with fast_forward(m):
            same = mask.clone()
            got, cache = m.run_with_cache(toks, attention_mask=same, names_filter=names)
            same[0, :4] = 0  # the same object, edited in place
            got_edited = m(toks, attention_mask=same)

    def rel(a, b):  # float rounding relative to the values' scale (large weights: logits ~1e2)
        return float((a - b).abs().max() / b.abs().max())

    for name in ref_cache.keys():
        assert rel(cache[name], ref_cache[name]) < 1e-5, name
    assert rel(got[mask.bool()], ref[mask.bool()]) < 1e-5
    assert rel(got_edited[edited.bool()], ref_edited[edited.bool()]) < 1e-5
    assert (ref - ref_edited)[edited.bool()].abs().max() > 1e-3  # the edit mattered


def test_block_normalises_once_unless_ln1_is_observed():
    """The patched block calls ln1 once for Q/K/V; a hook inside ln1 (or on ln1 itself) puts the
    block back on TransformerLens's forward, where it fires three times per layer as before."""
    m = _model(2)
    toks, mask = _padded_batch()
    calls = []
    count = lambda x, hook: calls.append(hook.name)  # noqa: E731
    with torch.no_grad():
        ref = m.run_with_hooks(toks, attention_mask=mask, fwd_hooks=[("blocks.0.ln1.hook_normalized", count)])
        n_tl = len(calls)
        with fast_forward(m):
            assert all("forward" in vars(b) for b in m.blocks)
            calls.clear()
            got = m.run_with_hooks(
                toks, attention_mask=mask, fwd_hooks=[("blocks.0.ln1.hook_normalized", count)]
            )
            n_ff = len(calls)
            h = m.blocks[1].ln1.register_forward_hook(lambda mod, a, out: calls.append("ln1"))
            try:
                calls.clear()
                m(toks, attention_mask=mask)
                assert calls == ["ln1"] * 3
            finally:
                h.remove()
            plain = m(toks, attention_mask=mask)
            resid = m.run_with_cache(toks, attention_mask=mask, names_filter=lambda n: "resid" in n)[1]
        _, ref_resid = m.run_with_cache(toks, attention_mask=mask, names_filter=lambda n: "resid" in n)
    assert n_tl == n_ff == 3
    keep = mask.bool()
    assert (ref - got)[keep].abs().max() < 1e-4 and (ref - plain)[keep].abs().max() < 1e-4
    assert set(resid.keys()) == set(ref_resid.keys()) and len(resid.keys()) == 3 * 2  # pre, mid, post
    for name in ref_resid.keys():  # relative: these residuals reach ~1e2
        a, b = resid[name][keep], ref_resid[name][keep]
        assert (a - b).abs().max() < 1e-5 * b.abs().max(), name
    assert not any("forward" in vars(b) for b in m.blocks)
