"""Per-head attribution: planted suppression head, batching, completeness, variants, ranking, errors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import general_tl_model
from transformer_lens import HookedTransformer

from cliff_lens.heads import (
    HeadRanking,
    contrast_scores,
    direct_attribution_decomposition,
    head_attributions,
    n_top_heads,
    promoting_heads,
    resolve_direction,
    suppression_heads,
    validate_heads,
)
from cliff_lens.testing import ALPHA, PROMO, SUPP, TRIG, K, Rec, planted_model, planted_records  # noqa: F401


def perturb(m: HookedTransformer, norm_bias: bool = False) -> HookedTransformer:
    """Give every bias and norm weight (``norm_bias``: norm bias ``.b`` too) random non-trivial values."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if (
                name.endswith(("b_O", "b_in", "b_out", "b_Q", "b_K", "b_V", "_b_K", "_b_V"))
                or ".w" in name[-2:]
                or (norm_bias and ".b" in name[-2:])
            ):
                p.add_(torch.randn_like(p) * 0.1)
    return m


def general_model(normalization: str = "RMS", gqa: bool = True, seed: int = 0) -> HookedTransformer:
    """Random model with MLPs, biases and (optionally) GQA + rotary, for batching/completeness."""
    return perturb(general_tl_model(normalization, gqa, seed))


def test_planted_suppression_head_ranked_first_with_planted_magnitude():
    m, d = planted_model()
    recs = planted_records(5)
    per = head_attributions(m, recs, d, positions="end_of_thinking_last", per_example=True, batch_size=3)
    assert per.shape == (5, 2, 4)
    assert torch.allclose(per[:, SUPP[0], SUPP[1]], torch.full((5,), -ALPHA), atol=1e-4)
    assert torch.allclose(per[:, PROMO[0], PROMO[1]], torch.full((5,), 2 * ALPHA), atol=1e-4)
    scores = per.mean(0)
    top = suppression_heads(scores, n=1)[0]
    assert top[:2] == SUPP and abs(top[2] + ALPHA) < 1e-4
    assert promoting_heads(scores, n=1)[0][:2] == PROMO
    # end_of_thinking span = [trigger-1, trigger]: the head writes at the last token only -> mean -ALPHA/2
    span = head_attributions(m, recs, d, positions="end_of_thinking")
    assert abs(float(span[SUPP]) + ALPHA / 2) < 1e-4
    # the other heads write far less than the planted magnitude
    others = scores.clone()
    others[SUPP] = others[PROMO] = 0
    assert float(others.abs().max()) < ALPHA / 4


def test_batched_equals_one_at_a_time_mixed_lengths():
    m = general_model()
    d = torch.randn(32)
    g = torch.Generator().manual_seed(0)
    toks = [torch.randint(0, 50, (n,), generator=g) for n in (4, 11, 7)]
    for pos in ("all", [0, -2]):
        batched = head_attributions(m, toks, d, positions=pos, per_example=True, batch_size=3)
        single = torch.stack([head_attributions(m, [t], d, positions=pos) for t in toks])
        assert (batched - single).abs().max() < 1e-5, pos
        mean = head_attributions(m, toks, d, positions=pos, batch_size=2)
        assert torch.allclose(mean, single.mean(0), atol=1e-5)


@pytest.mark.parametrize("norm,gqa", [("RMS", True), ("LN", False)])
def test_completeness_and_match_with_attributions(norm, gqa):
    m = general_model(norm, gqa)
    d = torch.randn(32)
    t = torch.randint(0, 50, (9,), generator=torch.Generator().manual_seed(3))
    for pos in (-1, 4):
        dec = direct_attribution_decomposition(m, t, d, pos)
        assert abs(dec.error) < 1e-4
        assert abs(dec.resid_final) > 1e-3  # a non-trivial check
        if norm == "LN":
            assert dec.pos_embed != 0.0
        attr = head_attributions(m, [t], d, positions=[pos])
        assert torch.allclose(attr, dec.heads, atol=1e-5)
    assert dec.to_dict()["heads_total"] == pytest.approx(float(dec.heads.sum()))


def test_norm_aware_is_the_final_norm_probe_numerator():
    """(heads + other terms) . (d * gamma) / rms(x) == (ln_final output * w) . d, for RMS and LN."""
    for norm in ("RMS", "LN"):
        m = general_model(norm, gqa=False)
        d = torch.randn(32)
        du = d / d.norm()
        t = torch.randint(0, 50, (8,), generator=torch.Generator().manual_seed(1))
        dec = direct_attribution_decomposition(m, t, d, -1, variant="norm_aware")
        _, cache = m.run_with_cache(t[None])
        x = cache["blocks.2.hook_resid_post"][0, -1]
        normed = cache["ln_final.hook_normalized"][0, -1]
        if norm == "LN":
            x = x - x.mean()
        inv_scale = float(normed[0] / x[0])
        weighted = float((normed * m.ln_final.w.detach()) @ du)
        assert abs(dec.total * inv_scale - weighted) < 1e-4
        na = head_attributions(m, [t], d, positions="last", variant="norm_aware")
        assert torch.allclose(na, dec.heads, atol=1e-5)


def test_with_bias_uses_probe_weight_and_bias():
    m, d = planted_model()
    recs = planted_records(3)
    probe = SimpleNamespace(direction=d, scale=2.0, bias=-0.5)
    raw = head_attributions(m, recs, probe, positions="last")
    wb = head_attributions(m, recs, probe, positions="last", variant="with_bias")
    assert torch.allclose(wb, 2 * raw - 0.5, atol=1e-5)
    wb2 = head_attributions(m, recs, 3 * d, positions="last", variant="with_bias", bias=1.0)
    assert torch.allclose(wb2, 3 * raw + 1.0, atol=1e-5)
    assert torch.allclose(head_attributions(m, recs, 3 * d, positions="last"), raw, atol=1e-6)


def test_ranking_and_heatmap_data(tmp_path):
    scores = torch.tensor([[0.5, -2.0, 0.1, 0.0], [-3.0, 1.5, -0.2, 4.0]])
    assert [h[:2] for h in suppression_heads(scores, top_percent=25)] == [(1, 0), (0, 1)]
    assert [h[:2] for h in promoting_heads(scores, top_percent=25)] == [(1, 3), (1, 1)]
    assert n_top_heads(784, 3) == 24 and n_top_heads(1920, 3) == 58 and n_top_heads(8, 0.1) == 1
    r = HeadRanking(scores, top_percent=25, meta={"variant": "raw"})
    assert torch.allclose(r.per_layer_sum, torch.tensor([-1.4, 2.3]))
    assert torch.allclose(r.per_layer_negative, torch.tensor([-2.0, -3.2]))
    hm = r.heatmap()
    assert hm["z"][1][0] == -3.0 and len(hm["x"]) == 4
    r.save(tmp_path / "heads.json")
    r2 = HeadRanking.load(tmp_path / "heads.json")
    assert torch.equal(r2.scores, r.scores) and r2.suppression == r.suppression


def test_gqa_scores_are_per_query_head():
    m = general_model("RMS", gqa=True)
    out = head_attributions(m, [torch.arange(6)], torch.randn(32), positions="all")
    assert out.shape == (3, 4)  # n_heads query heads, not 2 KV heads
    assert out[:, 0].ne(out[:, 1]).all()


def test_bad_inputs_give_clear_errors():
    m, d = planted_model()
    recs = planted_records(2)
    with pytest.raises(ValueError, match="out of range"):
        validate_heads(m, [(2, 0)])
    with pytest.raises(ValueError, match="out of range"):
        validate_heads(m, [(0, 4)])
    with pytest.raises(ValueError, match="empty head list"):
        validate_heads(m, [])
    s = torch.zeros(2, 4)
    for bad in (0, -1, 100.5, float("nan")):
        with pytest.raises(ValueError, match="top_percent"):
            suppression_heads(s, top_percent=bad)
    with pytest.raises(ValueError, match="outside"):
        head_attributions(m, recs, d, positions=[40])
    with pytest.raises(ValueError, match="outside"):
        head_attributions(m, recs, d, positions=(0, 99))
    with pytest.raises(ValueError, match="needs spans"):
        head_attributions(m, [torch.arange(5)], d)
    with pytest.raises(ValueError, match="no span"):
        head_attributions(m, recs, d, positions="cliff")
    with pytest.raises(ValueError, match="d_model"):
        head_attributions(m, recs, torch.randn(31))
    with pytest.raises(ValueError, match="zero"):
        head_attributions(m, recs, torch.zeros(32))
    with pytest.raises(ValueError, match="variant"):
        head_attributions(m, recs, d, variant="fancy")
    with pytest.raises(ValueError, match="empty batch"):
        head_attributions(m, [], d)
    with pytest.raises(ValueError, match=r"\[n_layers, n_heads\]"):
        suppression_heads(torch.zeros(8))


# -- the probe's layer -----------------------------------------------------------------------


def _probe(d, hook="blocks.{L}.hook_resid_post", layer=None, scale=2.5, bias=-0.7):
    from cliff_lens.probe import RefusalProbe

    return RefusalProbe(d.clone(), bias=bias, scale=scale, hook=hook, layer=layer)


def _probe_logit(m, t, probe, positions):
    """The probe's own logit at ``positions`` of token tensor ``t`` (its features via extract_activations)."""
    from cliff_lens.activations import extract_activations

    feats = extract_activations(
        m, [t], hook=probe.hook, layer=probe.layer, positions=positions, progress=False
    )  # [1, k, d_model]
    return probe.logit(feats[0].float())


def test_heads_after_the_probe_layer_get_no_score_and_are_never_ranked(tmp_path):
    """Probe on blocks.0.hook_resid_post of the planted model: the planted layer-1 heads cannot
    write there, so they get NaN, are not ranked, and block 1 never runs."""
    m, d = planted_model()
    recs = planted_records(3)
    probe = _probe(d, layer=0)
    calls = []
    handle = m.blocks[1].register_forward_hook(lambda *a: calls.append(1))
    try:
        for variant in ("raw", "norm_aware", "with_bias"):
            s = head_attributions(m, recs, probe, positions="end_of_thinking_last", variant=variant)
            assert torch.isnan(s[1]).all() and torch.isfinite(s[0]).all(), variant
    finally:
        handle.remove()
    assert not calls  # the forward stopped after block 0
    scores = head_attributions(m, recs, probe, positions="end_of_thinking_last")
    full = head_attributions(m, recs, d, positions="end_of_thinking_last")  # tensor: last layer
    assert torch.allclose(scores[0], full[0], atol=1e-6)
    assert suppression_heads(full, n=1)[0][:2] == SUPP  # read at the last layer, SUPP would win
    assert all(lay == 0 for lay, _, _ in suppression_heads(scores, top_percent=100))
    assert len(promoting_heads(scores, top_percent=100)) == 4  # only the 4 scored heads
    assert suppression_heads(scores, top_percent=50)[0][0] == 0  # 50% of 8 = 4 heads, all layer 0
    with pytest.raises(ValueError, match="with a score"):
        suppression_heads(scores, n=5)
    r = HeadRanking(scores, top_percent=25)
    assert torch.isnan(r.per_layer_sum[1]) and torch.isfinite(r.per_layer_sum[0])
    assert torch.isnan(r.per_layer_negative[1]) and torch.isnan(r.per_layer_positive[1])
    assert float(r.per_layer_sum[0]) == pytest.approx(float(scores[0].sum()), abs=1e-6)
    hm = r.heatmap()
    assert all(v != v for v in hm["z"][1]) and hm["per_layer_sum"][0] == hm["per_layer_sum"][0]
    assert all(h[0] == 0 for h in r.suppression + r.promoting)
    r.save(tmp_path / "heads.json")
    r2 = HeadRanking.load(tmp_path / "heads.json")
    assert torch.equal(r2.scores.isnan(), r.scores.isnan()) and r2.suppression == r.suppression
    # a probe before every head: nothing to rank
    none = head_attributions(m, recs, _probe(d, "blocks.0.hook_resid_pre"), positions="last")
    assert torch.isnan(none).all()
    with pytest.raises(ValueError, match="no head has a score"):
        suppression_heads(none)


@pytest.mark.parametrize("norm", ["RMS", "LN"])
def test_decomposition_is_of_the_probe_layer(norm):
    """A layer-1 probe on a 3-layer model: the decomposition is of blocks.1.hook_resid_post
    (embed + heads and MLPs of layers 0-1), closes, and with_bias sums to the probe's logit."""
    m = general_model(norm, gqa=norm == "RMS")
    d = torch.randn(32, generator=torch.Generator().manual_seed(7))
    probe = _probe(d, layer=1)
    t = torch.randint(0, 50, (9,), generator=torch.Generator().manual_seed(3))
    _, cache = m.run_with_cache(t[None])
    for pos in (-1, 4):
        dec = direct_attribution_decomposition(m, t, probe, pos)
        assert dec.hook == "blocks.1.hook_resid_post" and dec.layer == 1
        assert abs(dec.error) < 1e-4
        x = cache["blocks.1.hook_resid_post"][0, pos]
        assert dec.resid_final == pytest.approx(float(x @ probe.direction), abs=1e-4)
        assert (
            torch.isnan(dec.heads[2]).all()
            and torch.isnan(dec.mlp[2])
            and torch.isfinite(dec.heads[:2]).all()
        )
        attr = head_attributions(m, [t], probe, positions=[pos])
        assert torch.allclose(attr, dec.heads, atol=1e-5, equal_nan=True)
        wb = direct_attribution_decomposition(m, t, probe, pos, variant="with_bias")
        logit = float(_probe_logit(m, t, probe, [pos])[0])
        assert wb.total + probe.bias == pytest.approx(logit, abs=1e-4)
        assert abs(wb.error) < 1e-4
    # hook_resid_mid: heads of layer 1 write to it, MLP 1 does not
    mid = direct_attribution_decomposition(m, t, d, -1, hook="blocks.1.hook_resid_mid")
    assert abs(mid.error) < 1e-4 and torch.isfinite(mid.heads[1]).all() and torch.isnan(mid.mlp[1])


# -- the variants, for every kind of probe hook ------------------------------------------------

HOOKS = [("final_norm_weighted", None), ("ln_final.hook_normalized", None), ("blocks.{L}.hook_resid_post", 1)]


@pytest.mark.parametrize("norm", ["RMS", "LN"])
@pytest.mark.parametrize("hook,layer", HOOKS)
def test_with_bias_is_the_probe_logit(norm, hook, layer):
    """with_bias: every head's contribution to the probe LOGIT (final norm's scale frozen) plus the
    bias; (scores - b) + the rest == logit - b at each position, and the average over positions
    is the average of the per-position contributions."""
    m = perturb(general_tl_model(norm, norm == "RMS", 0), norm_bias=True)
    d = torch.randn(32, generator=torch.Generator().manual_seed(11))
    probe = _probe(d, hook, layer)
    t = torch.randint(0, 50, (10,), generator=torch.Generator().manual_seed(4))
    positions = [3, 6, 9]
    logits = _probe_logit(m, t, probe, positions)
    _, cache = m.run_with_cache(t[None])
    heads = []
    for k, pos in enumerate(positions):
        dec = direct_attribution_decomposition(m, t, probe, pos, variant="with_bias")
        assert dec.total + probe.bias == pytest.approx(float(logits[k]), abs=1e-4)
        assert abs(dec.error) < 1e-4 and dec.bias == probe.bias
        if hook == "blocks.{L}.hook_resid_post":
            assert dec.inv_scale == 1.0 and torch.isnan(dec.heads[2]).all()
        else:
            assert dec.inv_scale != 1.0 and torch.isfinite(dec.heads).all()
        if hook == "final_norm_weighted" and norm == "LN":
            assert dec.norm_bias != 0.0
        one = head_attributions(m, [t], probe, positions=[pos], variant="with_bias")
        assert torch.allclose(one - probe.bias, dec.heads, atol=1e-5, equal_nan=True)
        # from first principles: s * d . f(head output), the final norm's scale frozen at pos
        n_read = 2 if hook == "blocks.{L}.hook_resid_post" else 3
        for i in range(n_read):
            o = torch.einsum("hd,hdm->hm", cache[f"blocks.{i}.attn.hook_z"][0, pos], m.blocks[i].attn.W_O)
            if hook != "blocks.{L}.hook_resid_post":
                o = o - o.mean(-1, keepdim=True) if norm == "LN" else o
                o = o / cache["ln_final.hook_scale"][0, pos]
                o = o * m.ln_final.w if hook == "final_norm_weighted" else o
            expect = probe.scale * o @ probe.direction + probe.bias
            assert torch.allclose(one[i], expect, atol=1e-5), i
        assert torch.isnan(one[n_read:]).all()
        heads.append(dec.heads)
    avg = head_attributions(m, [t], probe, positions=positions, variant="with_bias")
    assert torch.allclose(avg - probe.bias, torch.stack(heads).mean(0), atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("norm", ["RMS", "LN"])
def test_norm_aware_uses_the_reading_vector_of_the_probe_hook(norm):
    """norm_aware = u . write: u = C(gamma * d) for final_norm_weighted, C(d) for
    ln_final.hook_normalized (no gamma), d for residual hooks (== raw). The decomposition divided
    by the final scale gives the probe's projection (minus ln_final.b's share)."""
    m = perturb(general_tl_model(norm, False, 0), norm_bias=True)
    d = torch.randn(32, generator=torch.Generator().manual_seed(2))
    du = d / d.norm()
    t = torch.randint(0, 50, (8,), generator=torch.Generator().manual_seed(1))
    _, cache = m.run_with_cache(t[None])
    normed = cache["ln_final.hook_normalized"][0, -1]
    x = cache["blocks.2.hook_resid_post"][0, -1]
    sigma = float(cache["ln_final.hook_scale"][0, -1])
    gamma = m.ln_final.w.detach()
    for hook, feature in (("final_norm_weighted", normed * gamma), ("ln_final.hook_normalized", normed)):
        probe = _probe(d, hook)
        dec = direct_attribution_decomposition(m, t, probe, -1, variant="norm_aware")
        assert abs(dec.error) < 1e-4
        assert dec.total / sigma == pytest.approx(float(feature @ du), abs=1e-4), hook
        na = head_attributions(m, [t], probe, positions="last", variant="norm_aware")
        assert torch.allclose(na, dec.heads, atol=1e-5)
        u = du * gamma if hook == "final_norm_weighted" else du
        u = u - u.mean() if norm == "LN" else u
        assert dec.resid_final == pytest.approx(float(x @ u), abs=1e-4)
    resid = _probe(d, layer=1)
    na = head_attributions(m, [t], resid, positions="all", variant="norm_aware")
    raw = head_attributions(m, [t], resid, positions="all", variant="raw")
    assert torch.equal(na.isnan(), raw.isnan()) and torch.allclose(na, raw, equal_nan=True)


def test_default_variants_of_the_pipeline_keep_their_numbers():
    """pipeline: norm_aware for final_norm_weighted probes (u = C(gamma * d), as before), raw for
    residual probes (d, as before, now NaN after the probe layer)."""
    for norm in ("RMS", "LN"):
        m = general_model(norm, gqa=False)
        d = torch.randn(32, generator=torch.Generator().manual_seed(9))
        toks = [torch.randint(0, 50, (n,), generator=torch.Generator().manual_seed(n)) for n in (5, 8)]
        old = (d / d.norm()) * m.ln_final.w.detach()
        old = old - old.mean() if norm == "LN" else old
        a = head_attributions(
            m, toks, _probe(d, "final_norm_weighted"), positions="all", variant="norm_aware"
        )
        b = head_attributions(m, toks, old, positions="all", variant="raw") * old.norm()  # raw: unit
        assert torch.allclose(a, b, atol=1e-6)
        r = head_attributions(m, toks, _probe(d, layer=1), positions="all", variant="raw")
        full = head_attributions(m, toks, d, positions="all", variant="raw")
        assert torch.allclose(r[:2], full[:2], atol=1e-6) and torch.isnan(r[2]).all()


def test_final_norm_class_decides_the_centring_ln_model_with_final_rms():
    """An "LN" model with final_rms=True ends in an RMSNorm: the final-norm reading vector is not
    centred (the module's class decides, as readout.final_norm), so with_bias still sums to the
    probe's own logit and norm_aware is u = gamma * d (no mean removed)."""
    from conftest import rotary_tl_model

    m = perturb(
        rotary_tl_model(n_layers=3, normalization_type="LN", act_fn="gelu", final_rms=True), norm_bias=True
    )
    assert m.cfg.normalization_type == "LN" and type(m.ln_final).__name__ == "RMSNorm"
    d = torch.randn(32, generator=torch.Generator().manual_seed(13))
    t = torch.randint(0, 100, (9,), generator=torch.Generator().manual_seed(6))
    probe = _probe(d, "final_norm_weighted")
    logits = _probe_logit(m, t, probe, [3, -1])
    for k, pos in enumerate((3, -1)):
        dec = direct_attribution_decomposition(m, t, probe, pos, variant="with_bias")
        assert abs(dec.error) < 1e-4 and dec.norm_bias == 0.0
        assert dec.total + probe.bias == pytest.approx(float(logits[k]), abs=1e-4)
        one = head_attributions(m, [t], probe, positions=[pos], variant="with_bias")
        assert torch.allclose(one - probe.bias, dec.heads, atol=1e-5)
    u, _ = resolve_direction(m, probe, "norm_aware")
    gamma_d = probe.direction / probe.direction.norm() * m.ln_final.w.detach()
    assert torch.allclose(u, gamma_d, atol=1e-6) and abs(float(u.mean())) > 1e-4


def test_decomposition_position_rules():
    """pos takes any single-token rule of the read-out grammar; a rule of several tokens is refused."""
    m, d = planted_model()
    rec = planted_records(1)[0]
    s, e = rec.spans["end_of_thinking"]
    by_rule = direct_attribution_decomposition(m, rec, d, "last:end_of_thinking")
    by_index = direct_attribution_decomposition(m, rec, d, e - 1 - rec.tokens.numel())
    assert by_rule.position == by_index.position == e - 1
    assert torch.allclose(by_rule.heads, by_index.heads) and by_rule.total == pytest.approx(by_index.total)
    with pytest.raises(ValueError, match="several tokens"):
        direct_attribution_decomposition(m, rec, d, "end_of_thinking")


def test_probe_hook_errors():
    m = general_model("RMS", gqa=False)
    d = torch.randn(32)
    t = [torch.arange(5)]
    with pytest.raises(ValueError, match="not a residual-stream read-out"):
        head_attributions(m, t, _probe(d, "blocks.1.hook_attn_out"), positions="last")
    with pytest.raises(ValueError, match="layer placeholder"):
        head_attributions(m, t, d, hook="blocks.{L}.hook_resid_post", positions="last")
    with pytest.raises(ValueError, match="out of range"):
        head_attributions(m, t, _probe(d, layer=7), positions="last")


# -- contrast ----------------------------------------------------------------------------------

JTOK = 18  # a second trigger: the planted SUPP head writes +ALPHA d after it, -ALPHA d after TRIG
J = 30  # residual dimension carrying +1 (TRIG) / -1 (JTOK), read by SUPP's value


def contrast_planted_model():
    """planted_model() with SUPP's value reading dim J (+1 after TRIG, -1 after JTOK; both tokens
    are triggers for the attention): SUPP writes -ALPHA d after TRIG (complied rollouts) and
    +ALPHA d after JTOK (refused ones); PROMO still writes +2 ALPHA d after both."""
    m, d = planted_model()
    with torch.no_grad():
        m.embed.W_E[JTOK, K] = 1
        m.embed.W_E[:, J] = 0
        m.embed.W_E[TRIG, J] = 1
        m.embed.W_E[JTOK, J] = -1
        m.pos_embed.W_pos[:, J] = 0
        m.blocks[0].attn.W_O[:, :, J] = 0
        m.blocks[0].attn.b_O[J] = 0
        a = m.blocks[1].attn
        a.W_V[SUPP[1]] = 0
        a.W_V[SUPP[1], J, 0] = 1
    return m, d


def test_contrast_scores_find_a_head_whose_mean_cancels():
    m, d = contrast_planted_model()
    recs = planted_records(6)
    refused = [i % 2 == 0 for i in range(6)]
    for r, ref in zip(recs, refused, strict=True):
        if ref:
            r.tokens[-1] = JTOK
    per = head_attributions(m, recs, d, positions="end_of_thinking_last", per_example=True)
    s = per[:, SUPP[0], SUPP[1]]
    assert torch.allclose(s[torch.tensor(refused)], torch.full((3,), ALPHA), atol=1e-4)
    assert torch.allclose(s[~torch.tensor(refused)], torch.full((3,), -ALPHA), atol=1e-4)
    mean = per.mean(0)
    assert abs(float(mean[SUPP])) < 1e-4  # the paper's mean score cancels
    assert suppression_heads(mean, n=1)[0][:2] != SUPP
    c = contrast_scores(per, refused)
    assert float(c[SUPP]) == pytest.approx(-2 * ALPHA, abs=1e-4)
    assert abs(float(c[PROMO])) < 1e-4  # writes the same on both groups
    top = suppression_heads(c, n=1)[0]
    assert top[:2] == SUPP and top[2] == pytest.approx(-2 * ALPHA, abs=1e-4)
    # unlabelled rollouts are left out; tensors of 0/1 work; the with_bias constant cancels
    c2 = contrast_scores(per, [None if i == 0 else v for i, v in enumerate(refused)])
    assert float(c2[SUPP]) == pytest.approx(-2 * ALPHA, abs=1e-4)
    assert torch.allclose(contrast_scores(per + 3.0, torch.tensor(refused).long()), c, atol=1e-5)
    # NaN heads (after the probe's layer) stay NaN
    assert torch.isnan(contrast_scores(torch.full((2, 2, 4), math.nan), [True, False])).all()


def test_contrast_scores_errors():
    per = torch.zeros(3, 2, 4)
    with pytest.raises(ValueError, match="0 complied"):
        contrast_scores(per, [True, True, True])
    with pytest.raises(ValueError, match="0 refused"):
        contrast_scores(per, [False, None, False])
    with pytest.raises(ValueError, match="2 labels"):
        contrast_scores(per, [True, False])
    with pytest.raises(ValueError, match="refused\\[1\\]"):
        contrast_scores(per, [True, "yes", False])
    with pytest.raises(ValueError, match="per_example"):
        contrast_scores(torch.zeros(2, 4), [True, False])
