"""Per-head attribution: planted suppression head, batching, completeness, variants, ranking, errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import general_tl_model
from transformer_lens import HookedTransformer

from cliff_lens.heads import (
    HeadRanking,
    direct_attribution_decomposition,
    head_attributions,
    n_top_heads,
    promoting_heads,
    suppression_heads,
    validate_heads,
)
from cliff_lens.testing import ALPHA, PROMO, SUPP, TRIG, K, Rec, planted_model, planted_records  # noqa: F401


def general_model(normalization: str = "RMS", gqa: bool = True, seed: int = 0) -> HookedTransformer:
    """Random model with MLPs, biases and (optionally) GQA + rotary, for batching/completeness."""
    m = general_tl_model(normalization, gqa, seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if (
                name.endswith(("b_O", "b_in", "b_out", "b_Q", "b_K", "b_V", "_b_K", "_b_V"))
                or ".w" in name[-2:]
            ):
                p.add_(torch.randn_like(p) * 0.1)
    return m


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
