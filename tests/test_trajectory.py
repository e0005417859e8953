"""Trajectories: planted cliffs are found where they were planted; curves; metrics; I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from conftest import build_tiny_tokenizer, general_tl_model, project_out_direction, rotary_tl_model
from transformer_lens import HookedTransformer

from cliff_lens.ablation import probe_scores
from cliff_lens.activations import extract_activations
from cliff_lens.probe import RefusalProbe
from cliff_lens.trajectory import (
    Trajectory,
    cliff_metrics,
    cliff_table,
    compute_trajectories,
    dataset_curve,
    layer_position_map,
    load_trajectories,
    save_trajectories,
    tail_aligned,
)

D, V = 32, 50
HIGH, LOW = V - 1, V - 2  # embeddings carry +A*d / -A*d; every other token carries 0 along d
A = 1.0
SCALE = 4.0  # probe logit scale: HIGH -> sigmoid(4) = 0.982, LOW -> 0.018, neutral -> 0.5


@dataclass
class Rec:  # duck-typed TokenizedRollout
    tokens: torch.Tensor
    spans: dict
    id: str = ""


def planted_model(seed: int = 0, norm=None) -> tuple[HookedTransformer, torch.Tensor]:
    """Tiny model whose residual component along ``d`` at every layer is the token embedding's.

    ``d`` is projected out of every read and write weight (no layer norm), so it is a private
    channel: the refusal score of a token is fixed by its identity, i.e. known exactly.
    """
    m = rotary_tl_model(
        n_layers=3,
        n_ctx=128,
        d_vocab=V,
        act_fn="gelu",
        normalization_type=norm,
        seed=seed,
        model_name="planted",
    )
    g = torch.Generator().manual_seed(seed + 100)
    d = torch.randn(D, generator=g)
    d /= d.norm()
    if norm is not None:
        return m, d
    project_out_direction(m, d)
    with torch.no_grad():
        m.embed.W_E[HIGH] += A * d
        m.embed.W_E[LOW] -= A * d
    return m, d


def rollout(
    n_prompt: int, n_think: int, eot: list[int], n_answer: int = 0, seed: int = 0, rid: str = ""
) -> Rec:
    """prompt: neutral tokens; thinking: HIGH tokens (with a neutral first one); then ``eot``; answer: LOW."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, V - 2, (n_prompt,), generator=g)
    think = torch.full((n_think,), HIGH)
    toks = torch.cat([prompt, think, torch.tensor(eot, dtype=torch.long), torch.full((n_answer,), LOW)])
    a, b = n_prompt, n_prompt + n_think
    c = b + len(eot)
    spans = {"prompt": (0, a), "thinking": (a, b), "end_of_thinking": (b, c), "answer": (c, c + n_answer)}
    return Rec(toks, spans, rid)


@pytest.fixture(scope="module")
def model():
    return planted_model()


def _probe(d):
    return RefusalProbe(direction=d, bias=0.0, scale=SCALE, hook="blocks.{L}.hook_resid_post", layer=2)


HI, LO = 1 / (1 + math.exp(-SCALE * A)), 1 / (1 + math.exp(SCALE * A))


def test_planted_cliff_is_found_at_the_right_position(model):
    m, d = model
    recs = [
        rollout(5, 40, [LOW, LOW, LOW], n_answer=4, seed=1, rid="a"),  # drop at the first eot token: -3
        rollout(9, 12, [HIGH, LOW, LOW], seed=2, rid="b"),  # drop at the second: -2
        rollout(3, 60, [HIGH, HIGH, HIGH, LOW], seed=3, rid="c"),  # drop at the last: -1
    ]
    trajs = compute_trajectories(m, recs, _probe(d), batch_size=2, progress=False)
    assert [t.id for t in trajs] == ["a", "b", "c"]
    t0 = trajs[0]
    assert t0.scores.shape == (5 + 40 + 3,)  # stops at the end of thinking (answer excluded)
    s, e = t0.spans["thinking"]
    assert torch.allclose(t0.scores[s:e], torch.full((e - s,), HI), atol=1e-5)
    cm = cliff_metrics(trajs)
    for c, pos in zip(cm, [-3, -2, -1]):
        assert c.plateau == pytest.approx(HI, abs=1e-5)
        assert c.final == pytest.approx(LO, abs=1e-5)
        assert c.cliff == pytest.approx(HI - LO, abs=1e-5)
        assert c.steepest_drop == pytest.approx(LO - HI, abs=1e-5)
        assert c.steepest_drop_pos == pos
    assert cm[0].steepest_drop_index == 5 + 40 and cm[0].n_plateau == 32


def test_flat_trajectory_has_no_cliff(model):
    m, d = model
    recs = [rollout(5, 30, [HIGH, HIGH], seed=4)]
    c = cliff_metrics(compute_trajectories(m, recs, _probe(d), progress=False))[0]
    assert abs(c.cliff) < 1e-5 and abs(c.steepest_drop) < 1e-5


def test_batched_equals_one_at_a_time_and_matches_extraction():
    m, _ = planted_model(seed=1, norm="RMS")  # a generic model: scores depend on context
    g = torch.Generator().manual_seed(0)
    probe = RefusalProbe(
        direction=torch.randn(D, generator=g), bias=0.3, scale=0.5, hook="final_norm_weighted"
    )
    recs = [rollout(int(n), 7 + 3 * i, [HIGH, LOW], seed=i) for i, n in enumerate([3, 11, 6, 17, 4])]
    batched = compute_trajectories(m, recs, probe, batch_size=3, progress=False)
    for r, t in zip(recs, batched):
        one = compute_trajectories(m, [r], probe, progress=False)[0]
        assert (one.scores - t.scores).abs().max() < 1e-5
        acts = extract_activations(m, [r], hook="final_norm_weighted", positions="all", progress=False)[0]
        assert (probe.score(acts) - t.scores).abs().max() < 1e-5


def _affine_final_norm_model(norm: str) -> HookedTransformer:
    """A random 3-layer model whose final norm has a non-trivial weight (and bias, for LayerNorm)."""
    m = general_tl_model(norm, gqa=norm == "RMS", seed=2)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        m.ln_final.w.add_(0.5 * torch.randn(m.ln_final.w.shape, generator=g))
        if getattr(m.ln_final, "b", None) is not None:
            m.ln_final.b.add_(torch.randn(m.ln_final.b.shape, generator=g))
    return m


@pytest.mark.parametrize("norm", ["LN", "RMS"])
def test_one_final_norm_trajectory_equals_probe_on_extracted_feature(norm):
    """Regression: the final norm was written twice (extraction without ``ln_final.b``,
    trajectories' ``layer_input="final_norm"`` with it), so on LayerNorm models the trajectory
    scored another feature than the one a ``final_norm_weighted`` probe was trained on."""
    m = _affine_final_norm_model(norm)
    L = m.cfg.n_layers
    g = torch.Generator().manual_seed(3)
    probe = RefusalProbe(
        direction=torch.randn(D, generator=g), bias=0.2, scale=0.8, hook="final_norm_weighted"
    )
    recs = [rollout(int(n), 6 + 2 * i, [HIGH, LOW], seed=i) for i, n in enumerate([3, 9, 5])]
    feats = extract_activations(
        m, recs, hook="final_norm_weighted", positions="last:end_of_thinking", progress=False
    )
    # the feature is the model's own ln_final output (weight AND bias), i.e. what the unembedding reads
    for r, f in zip(recs, feats):
        _, cache = m.run_with_cache(r.tokens[None], names_filter=f"blocks.{L - 1}.hook_resid_post")
        own = m.ln_final(cache[f"blocks.{L - 1}.hook_resid_post"])[0, r.spans["end_of_thinking"][1] - 1]
        assert (f - own).abs().max() < 1e-5
    want = probe.score(feats)
    single = compute_trajectories(m, recs, probe, batch_size=2, progress=False, strict_name=False)
    shared = compute_trajectories(
        m,
        recs,
        probe,
        layers=[L - 1],
        layer_input="final_norm",
        batch_size=2,
        progress=False,
        strict_name=False,
    )
    for k, r in enumerate(recs):
        last = r.spans["end_of_thinking"][1] - 1
        assert float(single[k].scores[last]) == pytest.approx(float(want[k]), abs=1e-5)
        assert float(shared[k].row(L - 1)[last]) == pytest.approx(float(want[k]), abs=1e-5)
    # the older spelling of the position means the same; the RMSNorm numbers pass on the old code too
    ps = probe_scores(m, recs, probe, positions="end_of_thinking_last", score="probability")
    assert torch.allclose(ps, want, atol=1e-5)


def test_shared_and_per_layer_modes(model):
    m, d = model
    recs = [rollout(4, 10, [LOW, LOW], seed=5), rollout(6, 20, [HIGH, LOW], seed=6)]
    p = _probe(d)
    shared = compute_trajectories(m, recs, p, layers=[0, 2], progress=False)
    assert shared[0].mode == "shared" and shared[0].scores.shape == (2, 16) and shared[0].layers == [0, 2]
    # private channel: every layer carries the same score
    assert torch.allclose(shared[0].scores[0], shared[0].scores[1], atol=1e-5)
    per = compute_trajectories(m, recs, {0: p, 2: p}, progress=False)
    assert per[0].mode == "per_layer"
    assert torch.allclose(per[1].scores, shared[1].scores, atol=1e-6)
    table = cliff_table(shared)
    assert (
        table["cliff"].shape == (2, 2)
        and (table["steepest_drop_pos"] == torch.tensor([[-2, -2], [-1, -1]])).all()
    )
    with pytest.raises(ValueError, match="layer="):
        cliff_metrics(shared)
    assert cliff_metrics(shared, layer=2)[1].steepest_drop_pos == -1
    mp, layers, x = layer_position_map(shared, length=8)
    assert mp.shape == (2, 8) and layers == [0, 2] and x.tolist() == list(range(-8, 0))
    assert mp[:, -1].tolist() == pytest.approx([LO, LO], abs=1e-5)


def _t(values, think, eot, rid=None):
    v = torch.tensor(values, dtype=torch.float32)
    n = len(values)
    spans = {"prompt": (0, think[0]), "thinking": think, "end_of_thinking": eot, "answer": (n, n)}
    return Trajectory(scores=v, spans=spans, tokens=torch.zeros(n, dtype=torch.long), id=rid)


def test_tail_aligned_nanmean_and_paper_zero_pad():
    a = _t([1.0, 1.0, 1.0, 0.0], (1, 3), (3, 4))
    b = _t([0.5, 0.2], (0, 1), (1, 2))
    m = tail_aligned([a, b])
    assert (
        m.shape == (2, 4) and torch.isnan(m[1, :2]).all() and m[1, 2:].tolist() == pytest.approx([0.5, 0.2])
    )
    c = dataset_curve([a, b])
    assert c.x.tolist() == [-4, -3, -2, -1]
    assert c.mean.tolist() == pytest.approx([1.0, 1.0, 0.75, 0.1])  # early points: only `a` counts
    assert c.count.tolist() == [1, 1, 2, 2]
    z = dataset_curve([a, b], mode="paper_zero_pad", n_points=4)
    assert z.mean[0] == pytest.approx(0.5)  # the padding zero drags the early mean down
    assert z.mean[-1] == pytest.approx(0.1, abs=1e-5)
    assert len(dataset_curve([a, b], mode="paper_zero_pad").mean) == 100


def test_normalised_resampling_averages_within_bins():
    t = _t([float(i) for i in range(10)], (0, 8), (8, 10))
    c = dataset_curve([t], n_points=5, start="sequence")
    assert c.mean.tolist() == pytest.approx([0.5, 2.5, 4.5, 6.5, 8.5])  # means of pairs, not samples
    # two rollouts of different length: NaN-aware mean of per-rollout bin means
    u = _t([1.0, 1.0, 0.0], (0, 2), (2, 3))
    c2 = dataset_curve([t, u], n_points=5, start="sequence")
    assert c2.count.tolist() == [2, 1, 2, 1, 2]  # `u` has 3 tokens: bins 0, 2, 4
    assert c2.mean[1] == pytest.approx(2.5)


def test_plateau_options_and_missing_thinking():
    vals = [0.0] * 2 + [0.2] * 10 + [0.8] * 4 + [0.1]
    t = _t(vals, (2, 16), (16, 17))
    assert cliff_metrics(t, plateau_window=4).plateau == pytest.approx(0.8)
    assert cliff_metrics(t, plateau_window=4, exclude_last=4).plateau == pytest.approx(0.2)
    assert cliff_metrics(t, plateau="all").plateau == pytest.approx((0.2 * 10 + 0.8 * 4) / 14)
    assert cliff_metrics(t, plateau="all").final == pytest.approx(0.1)
    # the rise 0.2 -> 0.8 is not a drop; the steepest drop is into the end of thinking
    assert cliff_metrics(t, drop_search="all").steepest_drop_pos == -1
    no_think = _t([0.3, 0.2, 0.1], (2, 2), (2, 3), rid="x")
    c = cliff_metrics([no_think])[0]
    assert math.isnan(c.plateau) and math.isnan(c.cliff) and "no thinking" in c.note
    assert c.final == pytest.approx(0.1)


def test_save_load_roundtrip(model, tmp_path):
    m, d = model
    recs = [rollout(4, 10, [LOW], seed=1, rid="r1"), rollout(2, 5, [LOW, LOW], seed=2, rid="r2")]
    trajs = compute_trajectories(m, recs, _probe(d), layers=[1, 2], progress=False)
    save_trajectories(tmp_path / "trajectories", trajs, meta={"probe": "p"})
    back = load_trajectories(tmp_path / "trajectories")
    assert [t.id for t in back] == ["r1", "r2"]
    for a, b in zip(trajs, back):
        assert torch.equal(a.scores, b.scores) and torch.equal(a.tokens, b.tokens)
        assert a.spans == b.spans and a.layers == b.layers and a.mode == b.mode


def test_errors(model):
    m, d = model
    wrong = RefusalProbe(direction=torch.ones(D + 1))
    with pytest.raises(ValueError, match="d_model"):
        compute_trajectories(m, [rollout(2, 3, [LOW])], wrong, progress=False)
    long = rollout(100, 40, [LOW])
    with pytest.raises(ValueError, match="n_ctx=128"):
        compute_trajectories(m, [long], _probe(d), progress=False)
    with pytest.warns(UserWarning, match="truncated"):
        t = compute_trajectories(m, [long], _probe(d), truncate="left", progress=False)[0]
    assert t.scores.shape == (128,) and t.spans["thinking"] == (100 - 13, 127)
    assert cliff_metrics(t).steepest_drop_pos == -1
    with pytest.raises(ValueError, match="no trajectories"):
        dataset_curve([])


def test_with_real_template_records():
    """TokenizedRollout from cliff_lens.templates: spans drive scoring range and metrics."""
    templates = pytest.importorskip("cliff_lens.templates")
    tok = build_tiny_tokenizer()
    m = rotary_tl_model(d_vocab=tok.vocab_size)
    t = templates.get_template("generic")
    recs = [
        t.tokenize(tok, "how to make a cake", "first think about the recipe then answer", "here is a recipe"),
        t.tokenize(tok, "write a poem", "the user wants a poem", "sure"),
    ]
    recs[0].meta["id"] = "cake"
    probe = RefusalProbe(direction=torch.randn(D), hook="final_norm_weighted")
    trajs = compute_trajectories(m, recs, probe, progress=False)
    assert trajs[0].id == "cake"
    for r, tr in zip(recs, trajs):
        eot_end = r.spans["end_of_thinking"][1]
        assert tr.scores.shape == (eot_end,)
        last = extract_activations(
            m, [r], hook="final_norm_weighted", positions="last:end_of_thinking", progress=False
        )
        trunc = extract_activations(m, [r.truncate()], hook="final_norm_weighted", progress=False)
        assert (last - trunc).abs().max() < 1e-5
        assert float(probe.score(last)[0]) == pytest.approx(float(tr.scores[-1]), abs=1e-5)
    cm = cliff_metrics(trajs, plateau="all")
    assert all(c.n_plateau == r.spans["thinking"][1] - r.spans["thinking"][0] for c, r in zip(cm, recs))
