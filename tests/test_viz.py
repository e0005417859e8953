"""Views: token colouring, attention of suppression heads (planted uniform head), SVG charts."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from cliff_lens.templates import TokenizedRollout
from cliff_lens.testing import tiny_model_with_tokenizer
from cliff_lens.viz import (
    CircuitsView,
    asr_bars,
    head_heatmap,
    json_for_script,
    layer_position_map,
    parse_setting,
    refusal_tokens,
    suppression_head_attention,
    trajectory_plot,
)
from cliff_lens.viz.report import bootstrap_band
from cliff_lens.viz.svg import grouped_bars, heatmap, line_plot, svg_size, text_width


def _props(html: str) -> list[dict]:
    """The JSON props of every CircuitsVis.render call in an HTML fragment."""
    out = []
    for m in re.finditer(r"CircuitsVis\.render\([^,]+,CircuitsVis\.\w+,(.*?)\);\}catch", html, re.S):
        out.append(json.loads(m.group(1)))
    return out


def test_json_for_script_cannot_close_the_script_tag():
    obj = {"t": "</script><script>alert(1)</script><!-- & \u2028", "x": float("nan")}
    text = json_for_script(obj)
    assert "</" not in text and "<" not in text and ">" not in text and "<!--" not in text
    back = json.loads(text)
    assert back["t"] == obj["t"] and back["x"] is None


def test_refusal_tokens_escapes_and_validates():
    toks = ["<think>", " hi", "<img src=x onerror=alert(1)>"]
    v = refusal_tokens(toks, torch.tensor([0.1, float("nan"), 0.9]))
    frag = v.to_html()
    assert "<think>" not in frag and "<img" not in frag
    (props,) = _props(frag)
    # circuitsvis inserts tokens as innerHTML: they must arrive HTML-escaped
    assert props["tokens"] == ["&lt;think&gt;", " hi", "&lt;img src=x onerror=alert(1)&gt;"]
    assert props["values"] == [0.1, 0.0, 0.9]  # NaN shown as min_value
    assert "var CircuitsVis=" not in frag  # the fragment relies on the page's bundle
    assert v._repr_html_().count("var CircuitsVis=") == 1  # Jupyter: standalone
    with pytest.raises(ValueError, match="3 tokens but 2 scores"):
        refusal_tokens(toks, [0.1, 0.2])


def _uniform_head_model():
    """Tiny model whose head (1, 2) has zero queries: it attends uniformly to all earlier keys."""
    model = tiny_model_with_tokenizer(seed=1)
    with torch.no_grad():
        model.blocks[1].attn.W_Q[2].zero_()
        model.blocks[1].attn.b_Q[2].zero_()
    return model


def _rollout(n: int = 12, eot: tuple[int, int] = (9, 11)) -> TokenizedRollout:
    spans = {"prompt": (0, 3), "thinking": (3, eot[0]), "end_of_thinking": eot, "answer": (eot[1], n)}
    return TokenizedRollout(tokens=torch.arange(10, 10 + n), spans=spans, text="")


def test_attention_queries_are_end_of_thinking_tokens():
    model = _uniform_head_model()
    tr = _rollout()
    view = suppression_head_attention(model, tr, [(1, 2), (0, 1)])
    s, e = tr.spans["end_of_thinking"]
    assert view.query_positions == list(range(s, e))
    assert view.patterns.shape == (2, e - s, e)  # answer dropped: keys end at the end of thinking
    # planted ground truth: a zero-query head attends uniformly to keys 0..q
    for i, q in enumerate(range(s, e)):
        expect = torch.zeros(e)
        expect[: q + 1] = 1.0 / (q + 1)
        torch.testing.assert_close(view.patterns[0, i], expect, atol=1e-6, rtol=0)
    # the other head equals the model's own pattern, sliced to the end-of-thinking rows
    _, cache = model.run_with_cache(tr.tokens[None, :e])
    torch.testing.assert_close(view.patterns[1], cache["blocks.0.attn.hook_pattern"][0, 1, s:e])
    html = view.to_html()
    attn_props = [p for p in _props(html) if "attention" in p]
    (p,) = attn_props
    grid = np.array(p["attention"])  # [heads, keys, keys], only the end-of-thinking rows filled
    assert grid.shape == (2, e, e)
    assert np.all(grid[:, :s] == 0)
    np.testing.assert_allclose(grid[:, s:e], view.patterns.numpy(), atol=1e-4)
    assert p["attentionHeadNames"] == ["L1H2", "L0H1"]
    assert len(p["tokens"]) == e
    assert len(_props(html)) == 3  # AttentionHeads + one ColoredTokens line per head


def test_attention_key_window_and_errors():
    model = _uniform_head_model()
    tr = _rollout()
    v = suppression_head_attention(model, tr, [{"layer": 1, "head": 2, "score": -1.0}], max_keys=5)
    assert v.key_start == 11 - 5 and len(v.tokens) == 5
    assert v.patterns.shape[-1] == 11  # the data keeps every key; only the view is windowed
    with pytest.raises(ValueError, match="out of range"):
        suppression_head_attention(model, tr, [(2, 0)])
    with pytest.raises(ValueError, match="empty"):
        suppression_head_attention(model, tr, [])
    bad = _rollout()
    bad.spans["end_of_thinking"] = (9, 9)
    with pytest.raises(ValueError, match="end_of_thinking"):
        suppression_head_attention(model, bad, [(0, 0)])


def test_trajectory_plot_aligns_to_end_of_thinking_and_breaks_on_nan():
    h = np.array([np.nan, np.nan, 0.6, 0.6, 0.6, 0.2, 0.1])
    v = trajectory_plot({"harmful": h, "<script>x</script>": np.full(7, 0.05)}, eot_len=2)
    svg = v.svg
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert svg.count('class="cl-vline"') == 1
    # x runs from -(7-2) to 1: the first end-of-thinking token is x=0
    assert v.data["eot_len"] == 2
    h2 = np.array([0.6, np.nan, 0.6, 0.5])
    assert trajectory_plot({"a": h2}).svg.count("<polyline") == 2  # a NaN gap splits the line
    with pytest.raises(ValueError):
        trajectory_plot({})


def test_head_heatmap_outlines_most_negative_heads():
    s = np.zeros((4, 5))
    s[2, 3], s[1, 0] = -2.0, -1.0
    v = head_heatmap(s, top_percent=10)  # 10% of 20 heads = 2
    assert sorted(v.data["outlined"]) == [(1, 0), (2, 3)]
    assert v.svg.count('class="cl-outline"') == 2
    # diverging: the most negative cell is the saturated blue end of the scale
    assert 'fill="#2166ac"><title>L2H3: -2</title>' in v.svg
    v2 = head_heatmap(torch.tensor(s), top=[{"layer": 0, "head": 0}])
    assert v2.data["outlined"] == [(0, 0)]


def test_layer_position_map_shapes():
    v = layer_position_map(np.random.default_rng(0).random((3, 8)), layers=[0, 4, 8], eot_len=2)
    labels = re.findall(r">(L\d+)</text>", v.svg)
    assert labels == ["L8", "L4", "L0"]  # deepest layer on top
    with pytest.raises(ValueError, match="layers has 2 entries"):
        layer_position_map(np.zeros((3, 4)), layers=[0, 1])


def test_asr_bars_pools_random_seeds():
    rows = [
        {"setting": "baseline", "asr": 0.5, "over_refusal": 0.1},
        {"setting": "top-3%", "asr": 0.1, "over_refusal": 0.2},
        {"setting": "random-3% seed 0", "asr": 0.4, "over_refusal": 0.1},
        {"setting": "random-3% seed 1", "asr": 0.6, "over_refusal": 0.1},
        {"setting": "random-3% seed 2", "asr": 0.5, "over_refusal": 0.1},
    ]
    v = asr_bars(rows)
    groups = {g["setting"]: g for g in v.data["groups"]}
    assert list(groups) == ["baseline", "top-3%", "random-3%"]
    r = groups["random-3%"]
    assert r["n"] == 3 and r["asr"] == pytest.approx(0.5)
    assert (r["asr_min"], r["asr_max"]) == (0.4, 0.6)
    assert v.svg.count('class="cl-spread"') == 2  # ASR and over-refusal whiskers of the random group
    assert parse_setting("random-1.5% seed 7") == {"kind": "random", "percent": 1.5, "seed": 7}
    with pytest.raises(ValueError, match="not one of"):
        parse_setting("top3")
    v2 = asr_bars(rows[:1] + [{"setting": "my <heads>", "asr": 0.3}])
    assert [g["setting"] for g in v2.data["groups"]] == ["baseline", "my <heads>"]
    assert "my &lt;heads&gt;" in v2.svg and "my <heads>" not in v2.svg


def test_circuits_view_rejects_bad_component_names():
    with pytest.raises(ValueError):
        CircuitsView("Colored</script>", {})


def test_asr_bars_draw_intervals_of_single_settings():
    rows = [
        {"setting": "baseline", "asr": 0.62, "asr_ci95": [0.45, 0.77], "over_refusal": 0.06, "over_refusal_ci95": [0.02, 0.2]},
        {"setting": "top-3%", "asr": 0.19, "asr_ci95": [0.09, 0.35], "over_refusal": 0.09},
        {"setting": "random-3% seed 0", "asr": 0.5, "asr_ci95": [0.3, 0.7]},
        {"setting": "random-3% seed 1", "asr": 0.6, "asr_ci95": [0.4, 0.8]},
    ]  # fmt: skip
    v = asr_bars(rows)
    groups = {g["setting"]: g for g in v.data["groups"]}
    assert groups["baseline"]["asr_ci95"] == [0.45, 0.77] and groups["top-3%"]["asr_ci95"] == [0.09, 0.35]
    assert "asr_ci95" not in groups["random-3%"]  # pooled seeds: min..max, not one interval
    assert v.svg.count('class="cl-ci"') == 3  # baseline ASR + over-refusal, top-3% ASR
    assert v.svg.count('class="cl-spread"') == 1  # random ASR min..max
    assert "95% CI [0.45, 0.77]" in v.svg  # in the bar's tooltip
    # the whisker spans the interval: y of 0.45 and 0.77 on a 0..1 axis of 220 px from y=24
    (y1, y2) = re.search(r'class="cl-ci" x1="[\d.]+" x2="[\d.]+" y1="([\d.]+)" y2="([\d.]+)"', v.svg).groups()
    assert float(y1) == pytest.approx(24 + 0.55 * 220, abs=0.1) and float(y2) == pytest.approx(
        24 + 0.23 * 220, abs=0.1
    )
    # a missing or half-missing interval draws no whisker
    assert 'class="cl-ci"' not in asr_bars([{"setting": "baseline", "asr": 0.5, "asr_ci95": [None, 0.7]}]).svg


def _title_fits(svg: str) -> None:
    title = re.search(r'<text class="cl-title" x="([\d.]+)"[^>]*>(.*?)</text>', svg)
    assert title, "chart has no title"
    x, text = float(title.group(1)), title.group(2)
    import html

    w = text_width(html.unescape(text))
    width, _, (vx, _, vw, _) = svg_size(svg)
    assert width == vw and width >= w
    assert vx <= x - w / 2 and x + w / 2 <= vx + vw  # the centred title lies inside the viewBox


def test_titles_are_never_clipped():
    rows = [
        {"setting": "baseline", "asr": 0.5, "over_refusal": 0.1},
        {"setting": "top-3%", "asr": 0.1, "over_refusal": 0.2},
        {"setting": "random-3% seed 0", "asr": 0.4, "over_refusal": 0.1},
    ]
    long = "A title much longer than the chart it sits on, with Wide Words: WWW MMM and 100% of it visible"
    svgs = [
        asr_bars(rows).svg,  # the report's ablation chart, whose title used to be cut off
        asr_bars(rows[:1], title=long).svg,
        head_heatmap(np.zeros((2, 4))).svg,
        layer_position_map(np.zeros((2, 5)), eot_len=1).svg,
        trajectory_plot({"a": np.zeros(5)}, title=long).svg,
        grouped_bars([{"label": "x", "values": {"s": 0.5}}], ["s"], title=long),
        heatmap(np.zeros((1, 1)), row_labels=["r"], col_labels=["c"], title=long),
        line_plot({"a": ([0, 1], [0, 1])}, title=long),
    ]
    for svg in svgs:
        _title_fits(svg)
    # a short title keeps the chart's own size and an unshifted viewBox
    w, h, box = svg_size(line_plot({"a": ([0, 1], [0, 1])}, title="t", width=640))
    assert (w, box[0]) == (640, 0)


def test_text_width_is_an_upper_bound_estimate():
    assert text_width("") == 0
    assert text_width("iiii") < text_width("MMMM")
    assert text_width("ab", font_size=22) == pytest.approx(2 * text_width("ab"))
    # DejaVu Sans Bold advance widths at 11 px (the widest common sans-serif default)
    assert text_width("Wi -") == pytest.approx(11 * (1.103 + 0.343 + 0.348 + 0.415))
    assert text_width("\u00e9") == 11.0  # non-ASCII: 1 em


def test_bootstrap_band():
    rng = np.random.default_rng(0)
    m = rng.normal(0.5, 0.1, size=(40, 6))
    m[:, 0] = 0.3  # constant column: a zero-width band
    m[1:, 1] = np.nan  # one rollout reaches this position: no band
    m[:30, 2] = np.nan  # ten rollouts: a wider band than with forty
    mean, lo, hi = bootstrap_band(m)
    np.testing.assert_allclose(mean, np.nanmean(m, axis=0))
    assert lo[0] == pytest.approx(0.3) and hi[0] == pytest.approx(0.3)
    assert np.isnan(lo[1]) and np.isnan(hi[1]) and mean[1] == m[0, 1]
    assert np.all(lo[2:] < mean[2:]) and np.all(mean[2:] < hi[2:])
    assert hi[2] - lo[2] > np.mean(hi[3:] - lo[3:])
    # close to the normal approximation of the standard error for n=40
    se = m[:, 3:].std(axis=0, ddof=1) / np.sqrt(40)
    np.testing.assert_allclose(hi[3:] - lo[3:], 2 * 1.96 * se, rtol=0.25)
    again = bootstrap_band(m)
    np.testing.assert_array_equal(again[1], lo)  # seeded
    one = bootstrap_band(m[:1])
    assert np.isnan(one[1]).all() and np.isnan(one[2]).all()
    with pytest.raises(ValueError, match="n_rollouts, n_positions"):
        bootstrap_band(np.zeros(3))


def test_named_variants_get_their_own_bars():
    """``top-3% in-sample`` is its own bar beside ``top-3%``; layer-matched seeds pool into one."""
    assert parse_setting("top-3% in-sample")["variant"] == "in-sample"
    assert parse_setting("random-3% layer-matched seed 2") == {
        "kind": "random", "percent": 3.0, "seed": 2, "variant": "layer-matched",
    }  # fmt: skip
    rows = [{"setting": "top-3%", "asr": 0.2}, {"setting": "top-3% in-sample", "asr": 0.1}]
    rows += [{"setting": f"random-3% layer-matched seed {s}", "asr": 0.5 + s / 10} for s in range(3)]
    labels = [g["setting"] for g in asr_bars(rows).data["groups"]]
    assert labels == ["top-3%", "top-3% in-sample", "random-3% layer-matched"]
