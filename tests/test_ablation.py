"""Head ablation: planted effect, means, generation with hooks, weight edits, HF export, causal effects."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from conftest import general_tl_model
from transformer_lens import HookedTransformer

from cliff_lens.ablation import (
    ablate_heads,
    ablated_weights,
    ablation_hooks,
    attribution_vs_causal,
    compute_head_means,
    export_ablated_hf,
    head_causal_effects,
    load_head_means,
    positions_mask,
    probe_scores,
    save_head_means,
)
from cliff_lens.heads import head_attributions
from cliff_lens.readout import left_pad
from cliff_lens.testing import ALPHA, PROMO, SUPP, TRIG, K, Rec, planted_model, planted_records  # noqa: F401


def general_model(seed: int = 0) -> HookedTransformer:
    """Random GQA + rotary + RMS + gated-MLP model with non-zero biases."""
    m = general_tl_model(seed=seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "b_" in name.rsplit(".", 1)[-1]:
                p.add_(torch.randn_like(p) * 0.1)
    return m


def rand_seqs(lengths, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g) for n in lengths]


def greedy(model, seqs, n_new, hooks=(), use_cache=True):
    """Minimal batched greedy decoder (left padding + attention mask + TL KV cache)."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    toks, mask, _ = left_pad(seqs, 0)
    mask = torch.ones_like(toks) if mask is None else mask  # no padding: an all-ones mask
    B = toks.shape[0]
    out = []
    with torch.no_grad(), model.hooks(fwd_hooks=list(hooks)):
        if use_cache:
            cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, B)
            logits = model(toks, attention_mask=mask, past_kv_cache=cache)
        else:
            logits = model(toks, attention_mask=mask)
        for _ in range(n_new):
            nxt = logits[:, -1].argmax(-1)
            out.append(nxt)
            if use_cache:
                logits = model(
                    nxt[:, None], attention_mask=torch.ones(B, 1, dtype=torch.long), past_kv_cache=cache
                )
            else:
                toks = torch.cat([toks, nxt[:, None]], 1)
                mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.long)], 1)
                logits = model(toks, attention_mask=mask)
    return torch.stack(out, 1)


# ------------------------------------------------------------------ planted ground truth


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablating_planted_head_raises_probe_logit_by_planted_amount(mode):
    m, d = planted_model()
    harm = planted_records(5, trigger=True)
    means = compute_head_means(m, planted_records(6, trigger=False, seed=7))
    assert float(means[SUPP].abs().max()) < 1e-6  # the head is silent without a trigger
    probe = SimpleNamespace(direction=d, scale=1.0, bias=0.3, hook="blocks.1.hook_resid_post")
    ce = head_causal_effects(
        m,
        harm,
        probe,
        heads=[SUPP, (1, 0), (0, 1), (0, 3)],
        mode=mode,
        means=means,
        positions="end_of_thinking_last",
    )
    assert torch.allclose(ce.per_example[0], torch.full((5,), ALPHA), atol=1e-4)
    assert float(ce.effect[1:].abs().max()) < ALPHA / 4
    # the context manager gives the same change
    base = probe_scores(m, harm, probe, positions="last")
    with ablate_heads(m, [SUPP], mode=mode, means=means):
        abl = probe_scores(m, harm, probe, positions="last")
    assert torch.allclose(abl - base, torch.full((5,), ALPHA), atol=1e-4)
    after = probe_scores(m, harm, probe, positions="last")  # hooks removed on exit
    assert torch.allclose(after, base)
    # probability form rises too
    p0 = probe_scores(m, harm, probe, positions="last", score="probability")
    p1 = probe_scores(
        m,
        harm,
        probe,
        positions="last",
        score="probability",
        fwd_hooks=ablation_hooks(m, [SUPP], mode, means),
    )
    assert (p1 > p0).all()


def test_causal_equals_direct_for_last_layer_heads_and_rank_correlation():
    m, d = planted_model()
    harm = planted_records(4, trigger=True)
    attr = head_attributions(m, harm, d, positions="last")
    ce = head_causal_effects(m, harm, d, heads=[(1, h) for h in range(4)], mode="zero", positions="last")
    # attention-only last layer: nothing reads the head after it, total effect == -direct write
    assert torch.allclose(ce.contribution, attr[1], atol=1e-4)
    r = attribution_vs_causal(attr, ce)
    assert r["n"] == 4 and r["spearman"] == pytest.approx(1.0)
    assert torch.isnan(ce.grid[0]).all() and not torch.isnan(ce.grid[1]).any()
    with pytest.raises(ValueError, match="shape"):
        attribution_vs_causal(attr[:1], ce)


def test_causal_effect_restricted_to_a_span():
    m, d = planted_model()
    harm = planted_records(3, trigger=True)
    eff_prompt = head_causal_effects(
        m, harm, d, heads=[SUPP], mode="zero", positions="last", ablate_positions="prompt"
    )
    eff_eot = head_causal_effects(
        m, harm, d, heads=[SUPP], mode="zero", positions="last", ablate_positions="end_of_thinking"
    )
    assert float(eff_prompt.effect.abs().max()) < 1e-5  # ablated where the head is silent
    assert float(eff_eot.effect[0]) == pytest.approx(ALPHA, abs=1e-4)


# ------------------------------------------------------------------ means


def test_head_means_exclude_padding_and_round_trip(tmp_path):
    m = general_model()
    seqs = rand_seqs((3, 9, 6, 4))
    batched = compute_head_means(m, seqs, batch_size=4)
    zs = []
    for s in seqs:
        _, cache = m.run_with_cache(s[None], names_filter=lambda n: n.endswith("hook_z"))
        zs.append(torch.stack([cache[f"blocks.{i}.attn.hook_z"][0] for i in range(3)], 0))  # [L, pos, H, dh]
    manual = torch.cat(zs, 1).mean(1)
    assert (batched - manual).abs().max() < 1e-5
    st = save_head_means(tmp_path / "head_means", batched, {"n": 4})
    assert st.name == "head_means.safetensors" and (tmp_path / "head_means.json").exists()
    assert torch.equal(load_head_means(tmp_path / "head_means.safetensors", model=m), batched)
    with pytest.raises(ValueError, match="shape"):
        load_head_means(st, model=planted_model()[0])
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="safetensors"):
        load_head_means(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError):
        load_head_means(tmp_path / "missing")


def test_head_means_and_probe_scores_read_the_engine_position_grammar():
    m = general_model()
    recs = [Rec(s, {"prompt": (0, 2), "thinking": (2, len(s) - 2), "end_of_thinking": (len(s) - 2, len(s)),
                    "answer": (len(s), len(s))}) for s in rand_seqs((7, 12, 9))]  # fmt: skip
    new = compute_head_means(m, recs, positions="last:end_of_thinking", batch_size=2)
    old = compute_head_means(m, recs, positions="end_of_thinking_last", batch_size=2)
    assert torch.equal(new, old)
    zs = []
    for r in recs:
        _, cache = m.run_with_cache(r.tokens[None], names_filter=lambda n: n.endswith("hook_z"))
        zs.append(torch.stack([cache[f"blocks.{i}.attn.hook_z"][0, -1] for i in range(3)]))
    assert (new - torch.stack(zs).mean(0)).abs().max() < 1e-5
    d = torch.randn(32)
    a = probe_scores(m, recs, d, positions="thinking", batch_size=2)
    b = torch.cat([probe_scores(m, [r], d, positions=(2, r.tokens.numel() - 2)) for r in recs])
    assert (a - b).abs().max() < 1e-5  # a span == the same range; batched == one at a time
    recs[1].spans["thinking"] = (2, 2)
    with pytest.raises(ValueError, match="selects no token of example 1"):
        probe_scores(m, recs, d, positions="thinking")


# ------------------------------------------------------------------ hooks: modes, positions, generation


def test_ablation_batched_equals_single_for_every_mode_but_global():
    m = general_model()
    seqs = rand_seqs((5, 10, 7))
    means = compute_head_means(m, seqs)
    heads = [(0, 1), (2, 3), (2, 0)]
    toks, mask, off = left_pad(seqs, 0)
    for mode in ("zero", "mean", "paper_renorm"):
        hooks = ablation_hooks(m, heads, mode, means)
        with torch.no_grad():
            lb = m.run_with_hooks(toks, attention_mask=mask, fwd_hooks=hooks)
            base = m(toks, attention_mask=mask)
            for i, s in enumerate(seqs):
                li = m.run_with_hooks(s[None], fwd_hooks=hooks)
                assert (lb[i, off[i] :] - li[0]).abs().max() < 1e-4, mode
        assert (lb - base).abs().max() > 1e-3  # the ablation does something


def test_paper_renorm_keeps_norm_per_position():
    m = general_model()
    s = rand_seqs((8,))[0][None]
    heads = [(1, 0), (1, 2)]
    _, c0 = m.run_with_cache(s, names_filter="blocks.1.attn.hook_z")
    with ablate_heads(m, heads, mode="paper_renorm"):
        _, c1 = m.run_with_cache(s, names_filter="blocks.1.attn.hook_z")
    z0, z1 = c0["blocks.1.attn.hook_z"], c1["blocks.1.attn.hook_z"]
    assert z1[:, :, [0, 2]].abs().max() == 0
    assert torch.allclose(z1.pow(2).sum((-2, -1)), z0.pow(2).sum((-2, -1)), rtol=1e-5)
    ratio = z1[:, :, 1].norm(dim=-1) / z0[:, :, 1].norm(dim=-1)
    assert ratio.std() > 1e-4  # a different factor per position (not the global one)
    with ablate_heads(m, heads, mode="paper_renorm_global"):
        _, c2 = m.run_with_cache(s, names_filter="blocks.1.attn.hook_z")
    z2 = c2["blocks.1.attn.hook_z"]
    assert torch.allclose(z2.pow(2).sum(), z0.pow(2).sum(), rtol=1e-5)
    g = z2[:, :, 1].norm(dim=-1) / z0[:, :, 1].norm(dim=-1)
    assert g.std() < 1e-5


def test_positions_restrict_the_ablation():
    m = general_model()
    s = rand_seqs((9,))[0][None]
    _, c0 = m.run_with_cache(s, names_filter="blocks.2.attn.hook_z")
    for pos, sel in (
        ((2, 5), [2, 3, 4]),
        ([0, -1], [0, 8]),
        (torch.tensor([[False] * 6 + [True] * 3]), [6, 7, 8]),
    ):
        with ablate_heads(m, [(2, 1)], mode="zero", positions=pos):
            _, c1 = m.run_with_cache(s, names_filter="blocks.2.attn.hook_z")
        z0, z1 = c0["blocks.2.attn.hook_z"][0, :, 1], c1["blocks.2.attn.hook_z"][0, :, 1]
        zeroed = [i for i in range(9) if z1[i].abs().max() == 0]
        assert zeroed == sel
        keep = [i for i in range(9) if i not in sel]
        assert torch.equal(z0[keep], z1[keep])


def test_generation_with_hooks_batched_equals_one_at_a_time():
    m = general_model()
    seqs = rand_seqs((3, 8, 5), seed=4)
    means = compute_head_means(m, seqs)
    heads = [(0, 0), (1, 3), (2, 2)]
    singles = {}
    for mode in ("mean", "paper_renorm"):
        hooks = ablation_hooks(m, heads, mode, means)
        batched = greedy(m, seqs, 5, hooks)
        singles[mode] = torch.cat([greedy(m, [s], 5, hooks) for s in seqs])
        assert torch.equal(batched, singles[mode]), mode
    plain = greedy(m, seqs, 5)
    assert not torch.equal(plain, singles["mean"])  # the hooks fire on every generation step
    # per-example relative positions: newest token only, batched == single
    hooks = ablation_hooks(m, heads, "zero", positions=[-1])
    assert torch.equal(greedy(m, seqs, 4, hooks), torch.cat([greedy(m, [s], 4, hooks) for s in seqs]))


def test_restricted_positions_are_absolute_under_kv_cache():
    m = general_model()
    seq = rand_seqs((5,), seed=2)
    for pos in ((3, 7), [1, 6], [-1]):
        hooks = ablation_hooks(m, [(1, 1), (2, 0)], "zero", positions=pos)
        cached = greedy(m, seq, 4, hooks, use_cache=True)
        full = greedy(m, seq, 4, hooks, use_cache=False)
        assert torch.equal(cached, full), pos


def test_positions_mask_marks_spans_in_padded_coordinates():
    m, _ = planted_model()
    recs = planted_records(3, trigger=True)
    toks, att, mask = positions_mask(m, recs, "end_of_thinking")
    assert mask.sum(1).tolist() == [2, 2, 2] and mask[:, -2:].all()
    assert att.sum(1).tolist() == [6, 8, 10]


# ------------------------------------------------------------------ weight edits


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_weight_edit_equals_hook_logits(mode):
    m = general_model()
    seqs = rand_seqs((6, 9))
    means = compute_head_means(m, seqs)
    heads = [(0, 2), (1, 0), (1, 3), (2, 1)]
    edited = ablated_weights(m, heads, mode, means)
    toks, mask, _ = left_pad(seqs, 0)
    with torch.no_grad():
        hooked = m.run_with_hooks(toks, attention_mask=mask, fwd_hooks=ablation_hooks(m, heads, mode, means))
        ed = edited(toks, attention_mask=mask)
        orig = m(toks, attention_mask=mask)
    assert (hooked - ed).abs().max() < 1e-4
    assert (orig - ed).abs().max() > 1e-3
    assert float(m.blocks[1].attn.W_O[0].detach().abs().sum()) > 0  # the original is untouched


def _tiny_hf(arch: str):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    kw = dict(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**kw)).eval()
    return Qwen2ForCausalLM(Qwen2Config(**kw)).eval()


def _hf_hooked_logits(model, ids, heads, mode, means):
    """Reference: replace the heads' slices of o_proj's input with 0 / the mean."""
    dh = model.config.hidden_size // model.config.num_attention_heads
    handles = []
    for lay, h in heads:
        o = model.model.layers[lay].self_attn.o_proj

        def pre(mod, args, _l=lay, _h=h):
            x = args[0].clone()
            x[..., _h * dh : (_h + 1) * dh] = 0 if mode == "zero" else means[_l, _h]
            return (x,)

        handles.append(o.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            return model(ids).logits
    finally:
        for hd in handles:
            hd.remove()


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_export_ablated_hf_llama_matches_hook_and_reloads(tmp_path, mode):
    from transformers import LlamaForCausalLM

    hf = _tiny_hf("llama")
    heads = [(0, 1), (1, 3)]
    means = torch.randn(2, 4, 8)
    ids = torch.randint(0, 40, (2, 7))
    ref = _hf_hooked_logits(hf, ids, heads, mode, means)
    out = tmp_path / "ablated"
    ed = export_ablated_hf(hf, heads, mode, means, out_dir=out)
    with torch.no_grad():
        assert (ed(ids).logits - ref).abs().max() < 1e-4
        assert (hf(ids).logits - ref).abs().max() > 1e-4  # the input model is not modified
        re = LlamaForCausalLM.from_pretrained(out).eval()
        assert (re(ids).logits - ref).abs().max() < 1e-4
    assert (out / "cliff_lens_ablation.json").exists()
    with pytest.raises(FileExistsError):
        export_ablated_hf(hf, heads, mode, means, out_dir=out)


def test_export_ablated_hf_qwen2_mean_cannot_be_saved(tmp_path):
    hf = _tiny_hf("qwen2")
    heads = [(1, 2)]
    means = torch.randn(2, 4, 8)
    ids = torch.randint(0, 40, (1, 6))
    with pytest.raises(ValueError, match="no o_proj bias"):
        export_ablated_hf(hf, heads, "mean", means, out_dir=tmp_path / "x")
    with pytest.warns(UserWarning, match="in memory"):
        ed = export_ablated_hf(hf, heads, "mean", means)
    with torch.no_grad():
        assert (ed(ids).logits - _hf_hooked_logits(hf, ids, heads, "mean", means)).abs().max() < 1e-4
    ed0 = export_ablated_hf(hf, heads, "zero", out_dir=tmp_path / "z")
    with torch.no_grad():
        assert (ed0(ids).logits - _hf_hooked_logits(hf, ids, heads, "zero", None)).abs().max() < 1e-4


# ------------------------------------------------------------------ errors


def test_bad_inputs_give_clear_errors():
    m, d = planted_model()
    with pytest.raises(ValueError, match="out of range"):
        ablation_hooks(m, [(5, 0)])
    with pytest.raises(ValueError, match="empty head list"):
        ablation_hooks(m, [])
    with pytest.raises(ValueError, match="mode="):
        ablation_hooks(m, [(0, 0)], mode="resample")
    with pytest.raises(ValueError, match="compute_head_means"):
        ablation_hooks(m, [(0, 0)], mode="mean")
    with pytest.raises(ValueError, match="shape"):
        ablation_hooks(m, [(0, 0)], mode="mean", means=torch.zeros(2, 4, 7))
    with pytest.raises(ValueError, match="empty list"):
        ablation_hooks(m, [(0, 0)], positions=[])
    with pytest.raises(ValueError, match="positions_mask"):
        ablation_hooks(m, [(0, 0)], positions="end_of_thinking")
    with pytest.raises(ValueError, match="weight edit"):
        ablated_weights(m, [(0, 0)], mode="paper_renorm")
    with pytest.raises(ValueError, match="size"):
        head_causal_effects(
            m, planted_records(2, True), torch.randn(8), heads=[(0, 0)], mode="zero", positions="last"
        )
    with pytest.raises(ValueError, match="outside"):
        probe_scores(m, planted_records(2, True), d, positions=[30])


def test_real_refusal_probe_object():
    probe_mod = pytest.importorskip("cliff_lens.probe")
    m, d = planted_model()
    harm = planted_records(3, trigger=True)
    probe = probe_mod.RefusalProbe(direction=2 * d, bias=0.1, hook="blocks.{L}.hook_resid_post", layer=1)
    ce = head_causal_effects(m, harm, probe, heads=[SUPP], mode="zero", positions="last")
    assert float(ce.effect[0]) == pytest.approx(2 * ALPHA, abs=1e-4)  # logit units: scale 2
    attr = head_attributions(m, harm, probe, positions="last")
    assert float(attr[SUPP]) == pytest.approx(-ALPHA, abs=1e-4)  # raw: unit direction


@pytest.mark.parametrize("normalization", ["RMS", "LN", "shortformer"])
@pytest.mark.parametrize("probe_hook", ["final_norm_weighted", "blocks.1.hook_resid_post"])
def test_causal_effects_from_the_heads_layer_equal_full_passes(normalization, probe_hook):
    """Each ablated pass starts at the head's layer from the cached residual; on padded batches of
    ragged length it equals a full pass under the same hooks, head by head, and heads after the
    probe's layer have no effect. (Shortformer positions are not in the residual: full passes.)"""
    m = general_tl_model(normalization="LN" if normalization == "shortformer" else normalization, seed=3)
    if normalization == "shortformer":
        cfg = copy.deepcopy(m.cfg)
        cfg.positional_embedding_type = "shortformer"
        m = HookedTransformer(cfg)
        m.eval()
    means = compute_head_means(m, rand_seqs([7, 9, 5], seed=1))
    seqs = rand_seqs([6, 11, 8, 4, 10], seed=2)
    g = torch.Generator().manual_seed(0)
    probe = SimpleNamespace(direction=torch.randn(32, generator=g), scale=1.0, bias=0.2, hook=probe_hook)
    heads = [(lay, h) for lay in range(3) for h in range(4)]
    ce = head_causal_effects(
        m, seqs, probe, heads=heads, mode="mean", means=means, positions="last", batch_size=2
    )
    base = probe_scores(m, seqs, probe, positions="last", batch_size=2)
    assert torch.allclose(ce.baseline, base, atol=1e-5)
    for k, hd in enumerate(heads):
        full = probe_scores(
            m, seqs, probe, positions="last", batch_size=2, fwd_hooks=ablation_hooks(m, [hd], "mean", means)
        )
        assert torch.allclose(ce.per_example[k], full - base, atol=1e-5), hd
    if probe_hook.startswith("blocks.1"):
        assert float(ce.grid[2].abs().max()) == 0.0  # layer 2 cannot write to blocks.1's output
    assert float(ce.effect.abs().max()) > 1e-3  # the comparison is not between zeros
