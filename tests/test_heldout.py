"""cliff_lens.heldout: request folds, layer-matched random heads, selection stability, cross-fit head sets."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from cliff_lens.heads import contrast_scores, n_top_heads
from cliff_lens.heldout import (
    CrossFitHeads,
    cross_fit_head_sets,
    layer_matched_heads,
    request_folds,
    selection_stability,
    stability_of,
)

L, H = 4, 8  # 32 heads; 25% = 8 heads


def rows(n_requests: int, per_request: int = 2, seed: int = 0):
    """Pure-noise per-example scores [n_requests * per_request, L, H] and their request ids."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_requests * per_request, L, H, generator=g)
    ids = [f"req{i // per_request:03d}" for i in range(n_requests * per_request)]
    return x, ids


# ---------------------------------------------------------------- request_folds


def test_folds_group_by_request_and_are_balanced():
    ids = [f"r{i % 10}" for i in range(37)]  # 10 requests, 3-4 rows each, interleaved
    for k in (2, 3, 4):
        folds = request_folds(ids, k=k, seed=5)
        fold_of: dict[str, int] = {}
        for r, f in zip(ids, folds):
            assert 0 <= f < k
            assert fold_of.setdefault(r, f) == f, f"request {r} split over folds"
        sizes = Counter(fold_of.values())
        assert len(sizes) == k and max(sizes.values()) - min(sizes.values()) <= 1, sizes


def test_folds_are_deterministic_and_ignore_item_order():
    ids = [f"r{i}" for i in range(12) for _ in range(3)]
    a = request_folds(ids, k=3, seed=1)
    assert a == request_folds(ids, k=3, seed=1)
    rev = list(reversed(ids))
    b = request_folds(rev, k=3, seed=1)
    assert dict(zip(ids, a)) == dict(zip(rev, b))  # the same request gets the same fold
    assert any(request_folds(ids, k=3, seed=s) != a for s in range(2, 6))  # the seed matters


def test_folds_errors_name_the_input():
    with pytest.raises(ValueError, match="request_ids has 2 distinct"):
        request_folds(["a", "b", "a"], k=3)
    with pytest.raises(ValueError, match="k=1"):
        request_folds(["a", "b"], k=1)


# ---------------------------------------------------------------- layer_matched_heads


def test_layer_matched_heads_keep_per_layer_counts():
    ref = [(0, 1), (0, 5), (2, 3), (3, 0), (3, 1), (3, 7)]
    got = layer_matched_heads(ref, H, seed=0)
    assert got == sorted(got) and len(set(got)) == len(got)
    assert Counter(lay for lay, _ in got) == Counter(lay for lay, _ in ref)
    assert all(0 <= hd < H for _, hd in got)
    assert got == layer_matched_heads(ref, H, seed=0)
    assert len({tuple(layer_matched_heads(ref, H, seed=s)) for s in range(10)}) > 5  # varies with the seed
    # suppression_heads triples and duplicates are accepted
    triples = [(lay, hd, -1.0) for lay, hd in ref] + [(0, 1, -1.0)]
    assert layer_matched_heads(triples, H, seed=0) == got


def test_layer_matched_heads_uniform_within_a_layer():
    hits = Counter(layer_matched_heads([(1, 0)], 4, seed=s)[0] for s in range(400))
    assert set(hits) == {(1, h) for h in range(4)}
    assert all(60 <= c <= 140 for c in hits.values()), hits


def test_layer_matched_heads_errors():
    with pytest.raises(ValueError, match="5 heads in layer 0"):
        layer_matched_heads([(0, h) for h in range(5)], 4, seed=0)
    with pytest.raises(ValueError, match="out of range"):
        layer_matched_heads([(0, 9)], 4, seed=0)


# ---------------------------------------------------------------- selection_stability


def test_planted_head_is_always_selected():
    x, ids = rows(30)
    x[:, 2, 5] -= 4.0  # strongly negative on every row
    freq = selection_stability(x, ids, 25, n_boot=100, seed=0)
    assert freq.shape == (L, H) and freq.dtype == torch.float32
    assert freq[2, 5] == 1.0
    assert stability_of([(2, 5, -4.0), (0, 0)], freq) == [1.0, float(freq[0, 0])]


def test_noise_heads_sit_near_the_base_rate():
    x, ids = rows(40)
    freq = selection_stability(x, ids, 25, n_boot=200, seed=0)
    base = n_top_heads(L * H, 25) / (L * H)
    assert freq.mean().item() == pytest.approx(base, abs=1e-6)  # k heads per replicate
    # resampling really varies the top set: without it the 8 sample-top heads would sit at 1.0
    assert (freq >= 0.95).sum() == 0
    assert ((freq > 0) & (freq < 1)).float().mean() > 0.5


def test_bootstrap_resamples_whole_requests():
    x, ids = rows(10, per_request=3)
    seen: list[list[int]] = []

    def score(r, idx):
        assert torch.equal(r, x[idx])
        seen.append(list(idx))
        return r.mean(0)

    selection_stability(x, ids, 25, score=score, n_boot=20, seed=3)
    assert len(seen) == 20
    for idx in seen:
        c = Counter(idx)
        for req in range(10):
            members = [c[3 * req + j] for j in range(3)]
            assert len(set(members)) == 1, members  # each row of a request as often as the request
        assert len(idx) == 30  # as many requests drawn as there are
    assert any(len(set(idx)) < 30 for idx in seen)  # with replacement


def test_stability_with_a_contrast_score():
    """A head writing -a on complied and +a on refused rows: contrast finds it, the mean does not."""
    x, ids = rows(30)
    refused = [i % 2 == 0 for i in range(len(ids))]  # each request: one refused, one complied row
    for i, r in enumerate(refused):
        x[i, 1, 3] += 3.0 if r else -3.0

    def contrast(r, idx):
        return contrast_scores(r, [refused[i] for i in idx])

    assert selection_stability(x, ids, 25, score=contrast, n_boot=50)[1, 3] == 1.0
    assert selection_stability(x, ids, 25, n_boot=50)[1, 3] < 0.9


def test_stability_nan_heads_and_errors():
    x, ids = rows(10)
    x[:, 3] = float("nan")  # the last layer cannot write to the probe's hook
    freq = selection_stability(x, ids, 25, n_boot=10)
    assert torch.isnan(freq[3]).all() and not torch.isnan(freq[:3]).any()
    with pytest.raises(ValueError, match="one request id per row"):
        selection_stability(x, ids[:-1], 25)
    with pytest.raises(ValueError, match="score returned"):
        selection_stability(x, ids, 25, score=lambda r, idx: r.mean())


# ---------------------------------------------------------------- cross_fit_head_sets


def test_cross_fit_never_ranks_a_fold_on_its_own_requests():
    x, ids = rows(21, per_request=3)
    scored_rows: list[set[int]] = []

    def score(r, idx):
        scored_rows.append(set(idx))
        return r.mean(0)

    cf = cross_fit_head_sets(x, ids, 25, k=3, seed=2, score=score)
    assert cf.folds == request_folds(ids, k=3, seed=2) and cf.k == 3
    everything = set(ids)
    for f in range(3):
        ranked, measured = set(cf.ranked_on[f]), set(cf.measured_on[f])
        assert not ranked & measured
        assert ranked | measured == everything
        assert measured == {r for r, fi in zip(ids, cf.folds) if fi == f}
        assert cf.ranked_on[f] == sorted(ranked) and cf.measured_on[f] == sorted(measured)
        assert scored_rows[f] == {i for i, fi in enumerate(cf.folds) if fi != f}
        assert len(cf.heads[f]) == n_top_heads(L * H, 25)
    assert cf.row_heads() == [cf.heads[f] for f in cf.folds]


def test_cross_fit_heads_do_not_see_their_fold():
    """A head planted only in fold 0's rows is chosen for fold 1 (ranked on fold 0), not for fold 0."""
    x, ids = rows(20)
    folds = request_folds(ids, k=2, seed=0)
    for i, f in enumerate(folds):
        if f == 0:
            x[i, 0, 6] -= 10.0
    cf = cross_fit_head_sets(x, ids, 25, k=2, seed=0)
    assert (0, 6) not in cf.heads[0]
    assert cf.heads[1][0] == (0, 6)


def test_cross_fit_planted_head_found_by_every_fold():
    x, ids = rows(20)
    x[:, 3, 2] -= 4.0
    cf = cross_fit_head_sets(x, ids, 25, k=2, seed=7)
    assert all(hs[0] == (3, 2) for hs in cf.heads)
    assert cf.heads[0] != cf.heads[1]  # the other heads come from different (noise) data


def test_cross_fit_round_trips_json_and_checks_the_invariant():
    x, ids = rows(12)
    cf = cross_fit_head_sets(x, ids, 10, k=2, seed=1)
    back = CrossFitHeads.from_dict(json.loads(json.dumps(cf.to_dict())))
    assert back == cf
    d = cf.to_dict()
    d["ranked_on"][0] = d["ranked_on"][0] + d["measured_on"][0][:1]  # leak one measured request
    with pytest.raises(ValueError, match="fold 0: heads ranked on requests they are measured on"):
        CrossFitHeads.from_dict(d)
