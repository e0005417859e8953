"""Held out by design: which data chose a head set, and which data measures it.

A head set ranked on the same prompts whose ablation it is then judged on is measured on the
data that chose it: its effect is biased upwards (the ranking has already seen which heads
happen to matter on exactly those prompts). This module keeps the two apart, always by
*request*: all rollouts of one harmful request (several samples, several framings) go to the
same side, since rollouts of one request are not independent.

* :func:`request_folds` deals requests into ``k`` balanced folds (every row of a request gets
  its request's fold).
* :func:`cross_fit_head_sets` ranks one head set per fold on the *other* folds'
  requests: a prompt whose request is in fold ``f`` is measured under ``heads[f]``, which was
  chosen without it (:meth:`CrossFitHeads.row_heads` gives each row its set, e.g. for
  :func:`cliff_lens.ablation.row_ablation_hooks`).
* :func:`selection_stability` resamples requests with replacement and reports how often each
  head lands in the top set: a head at 1.0 is chosen whichever requests are drawn, one near the
  base rate ``k / (n_layers * n_heads)`` is chosen by chance.
* :func:`layer_matched_heads` is a random control with the same number of heads per layer as a
  reference set (a plain random set, :func:`cliff_lens.evaluate.random_heads`, mostly hits other
  layers than a ranked set does).

The score a head set is ranked on is, by default, the mean over rows of
``head_attributions(..., per_example=True)``; ``score=`` takes any ``(rows, row_indices) ->
[n_layers, n_heads]`` function, e.g. a contrast of complied minus refused rows::

    refused = [r.label == "refused" for r in rollouts]
    contrast = lambda rows, idx: contrast_scores(rows, [refused[i] for i in idx])
    cf = cross_fit_head_sets(per_example, [r.prompt_id for r in rollouts], 3, score=contrast)

The top set is always :func:`cliff_lens.heads.suppression_heads` of the score (its most
negative heads; heads without a score, NaN, are never chosen).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ._typing import Validated
from .heads import suppression_heads

__all__ = [
    "request_folds",
    "layer_matched_heads",
    "selection_stability",
    "stability_of",
    "cross_fit_head_sets",
    "CrossFitHeads",
    "Score",
]

#: ``score(rows, row_indices) -> [n_layers, n_heads]``: ``rows`` is ``per_example[row_indices]``
#: (``row_indices`` index the rows of ``per_example``, repeated when a request is drawn twice).
Score = Callable[[Tensor, list[int]], Tensor]


def request_folds(request_ids: Sequence[str], k: int = 2, seed: int = 0) -> list[int]:
    """The fold (``0 .. k-1``) of every item, grouped by request.

    The sorted distinct request ids are shuffled with ``random.Random(seed)`` and dealt
    round-robin, so the folds hold equal numbers of requests (to within one) and every item of a
    request gets that request's fold. The same ids, ``k`` and ``seed`` always give the same folds
    (whatever the order of the items). Raises ``ValueError`` for ``k < 2`` or when
    ``request_ids`` has fewer distinct requests than ``k``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k={k!r}; pass an integer k >= 2 (one fold per held-out part)")
    unique = sorted(set(request_ids))
    if len(unique) < k:
        raise ValueError(
            f"request_ids has {len(unique)} distinct request(s) but k={k} folds were asked for; "
            f"pass at least {k} requests or a smaller k"
        )
    order = list(unique)
    random.Random(seed).shuffle(order)
    fold_of = {r: i % k for i, r in enumerate(order)}
    return [fold_of[r] for r in request_ids]


def layer_matched_heads(
    reference: Sequence[tuple[int, int] | tuple[int, int, float]], n_heads: int, seed: int
) -> list[tuple[int, int]]:
    """A random head set with as many heads in each layer as ``reference`` has.

    ``reference``: ``(layer, head)`` pairs (or the ``(layer, head, score)`` triples of
    :func:`cliff_lens.heads.suppression_heads`; duplicates count once); ``n_heads``: heads per
    layer. Within each layer the heads are drawn uniformly without replacement with
    ``torch.Generator().manual_seed(seed)`` (layers in increasing order, one generator, as
    :func:`cliff_lens.evaluate.random_heads` draws), so a seed always gives the same set. Returns
    the set sorted by ``(layer, head)``; it may share heads with ``reference``. Raises
    ``ValueError`` for a head out of range or a layer that asks for more heads than it has.
    """
    if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1:
        raise ValueError(f"n_heads={n_heads!r}; pass the number of heads per layer (a positive integer)")
    pairs = list(dict.fromkeys((int(item[0]), int(item[1])) for item in reference))
    counts = Counter(lay for lay, _ in pairs)
    for lay in sorted(counts):
        if counts[lay] > n_heads:
            raise ValueError(
                f"reference has {counts[lay]} heads in layer {lay} but a layer has only {n_heads}; "
                "pass the model's n_heads (cfg.n_heads)"
            )
    for lay, hd in pairs:
        if lay < 0 or not 0 <= hd < n_heads:
            raise ValueError(
                f"reference head (layer={lay}, head={hd}) is out of range for {n_heads} heads per layer"
            )
    g = torch.Generator().manual_seed(int(seed))
    out: list[tuple[int, int]] = []
    for lay in sorted(counts):
        out += [(lay, int(h)) for h in torch.randperm(n_heads, generator=g)[: counts[lay]]]
    return sorted(out)


def _check_rows(per_example: Any, request_ids: Sequence[str]) -> Tensor:
    if not isinstance(per_example, Tensor) or per_example.ndim != 3 or per_example.shape[0] == 0:
        raise ValueError(
            "per_example must be a non-empty [n, n_layers, n_heads] tensor (head_attributions(..., "
            f"per_example=True)), got {getattr(per_example, 'shape', type(per_example).__name__)}"
        )
    if len(request_ids) != per_example.shape[0]:
        raise ValueError(
            f"request_ids has {len(request_ids)} ids but per_example has {per_example.shape[0]} rows; "
            "pass one request id per row"
        )
    return per_example.detach().float().cpu()


def _scores(x: Tensor, idx: list[int], score: Score | None) -> Tensor:
    rows = x[torch.as_tensor(idx, dtype=torch.long)]
    s = rows.mean(0) if score is None else score(rows, idx)
    if not isinstance(s, Tensor) or tuple(s.shape) != tuple(x.shape[1:]):
        raise ValueError(
            f"score returned {getattr(s, 'shape', type(s).__name__)}; it must return a "
            f"[n_layers, n_heads] = {list(x.shape[1:])} tensor"
        )
    return s


def _top_pairs(scores: Tensor, top_percent: float | int) -> list[tuple[int, int]]:
    return [(lay, hd) for lay, hd, _ in suppression_heads(scores, top_percent)]


def selection_stability(
    per_example: Validated[Float[Tensor, "n n_layers n_heads"]],
    request_ids: Sequence[str],
    top_percent: float | int,
    *,
    score: Score | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> Float[Tensor, "n_layers n_heads"]:
    """How often each head is in the top set when the requests are resampled.

    Each of ``n_boot`` replicates draws as many requests as there are, with replacement
    (``torch.Generator().manual_seed(seed)``), takes every row of each drawn request as often as
    it is drawn, scores them (default: the mean over those rows; else ``score(rows,
    row_indices)``, see :data:`Score`) and takes the top set
    ``suppression_heads(scores, top_percent)``. Returns, per head, the fraction of replicates
    whose top set holds it (float32, CPU): 1.0 for a head chosen whatever the draw; the mean over
    all heads is the base rate ``k / (n_layers * n_heads)``. Heads with no score in any row
    (NaN: after the probe's layer) are NaN.
    """
    x = _check_rows(per_example, request_ids)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot={n_boot!r}; pass a positive number of bootstrap replicates")
    requests = sorted(set(request_ids))
    rows_of: dict[str, list[int]] = {r: [] for r in requests}
    for i, r in enumerate(request_ids):
        rows_of[r].append(i)
    g = torch.Generator().manual_seed(int(seed))
    counts = torch.zeros(x.shape[1:])
    for _ in range(n_boot):
        drawn = torch.randint(len(requests), (len(requests),), generator=g).tolist()
        idx = [i for j in drawn for i in rows_of[requests[j]]]
        for lay, hd in _top_pairs(_scores(x, idx, score), top_percent):
            counts[lay, hd] += 1
    freq = counts / n_boot
    freq[torch.isnan(x).all(0)] = float("nan")
    return freq


def stability_of(
    top: Sequence[tuple[int, int] | tuple[int, int, float]], freq: Float[Tensor, "n_layers n_heads"]
) -> list[float]:
    """The :func:`selection_stability` frequency of each head of ``top`` (pairs or the triples of
    :func:`cliff_lens.heads.suppression_heads`), in the order given."""
    return [float(freq[int(h[0]), int(h[1])]) for h in top]


@dataclass(frozen=True)
class CrossFitHeads:
    """Head sets chosen on other requests than the ones they are measured on.

    ``folds[i]`` is row ``i``'s fold (:func:`request_folds`); ``heads[f]`` the top set (most
    negative first, ``(layer, head)``) ranked on the rows NOT in fold ``f``, the set applied to
    fold ``f``'s prompts; ``ranked_on[f]`` / ``measured_on[f]`` the sorted request ids that
    ranked ``heads[f]`` / that are measured under it (disjoint, together all requests: checked
    on construction). ``to_dict()`` / ``from_dict()`` round-trip through JSON.
    """

    folds: list[int]
    heads: list[list[tuple[int, int]]]
    ranked_on: list[list[str]]
    measured_on: list[list[str]]
    top_percent: float
    seed: int

    def __post_init__(self) -> None:
        k = len(self.heads)
        if not (len(self.ranked_on) == len(self.measured_on) == k) or k < 2:
            raise ValueError(
                f"CrossFitHeads needs k >= 2 folds with one heads/ranked_on/measured_on entry each; got "
                f"{k}, {len(self.ranked_on)}, {len(self.measured_on)}"
            )
        if any(not 0 <= f < k for f in self.folds):
            raise ValueError(f"folds must lie in 0..{k - 1}")
        everything = set[str]().union(*self.ranked_on, *self.measured_on)
        for f in range(k):
            ranked, measured = set(self.ranked_on[f]), set(self.measured_on[f])
            if ranked & measured:
                raise ValueError(
                    f"fold {f}: heads ranked on requests they are measured on: {sorted(ranked & measured)[:5]}"
                )
            if ranked | measured != everything:
                raise ValueError(f"fold {f}: ranked_on and measured_on do not cover all requests")

    @property
    def k(self) -> int:
        """The number of folds."""
        return len(self.heads)

    def row_heads(self) -> list[list[tuple[int, int]]]:
        """The head set of each row (``heads[folds[i]]``), e.g. for
        :func:`cliff_lens.ablation.row_ablation_hooks`."""
        return [list(self.heads[f]) for f in self.folds]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (heads as ``[layer, head]`` lists)."""
        return {
            "k": self.k,
            "seed": self.seed,
            "top_percent": self.top_percent,
            "folds": list(self.folds),
            "heads": [[[lay, hd] for lay, hd in hs] for hs in self.heads],
            "ranked_on": [list(r) for r in self.ranked_on],
            "measured_on": [list(m) for m in self.measured_on],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CrossFitHeads:
        """The inverse of :meth:`to_dict` (checks the held-out invariant again)."""
        return cls(
            folds=[int(f) for f in d["folds"]],
            heads=[[(int(h[0]), int(h[1])) for h in hs] for hs in d["heads"]],
            ranked_on=[[str(r) for r in rs] for rs in d["ranked_on"]],
            measured_on=[[str(r) for r in rs] for rs in d["measured_on"]],
            top_percent=float(d["top_percent"]),
            seed=int(d["seed"]),
        )


def cross_fit_head_sets(
    per_example: Validated[Float[Tensor, "n n_layers n_heads"]],
    request_ids: Sequence[str],
    top_percent: float | int,
    *,
    k: int = 2,
    seed: int = 0,
    score: Score | None = None,
) -> CrossFitHeads:
    """One top head set per request fold, each ranked without that fold's requests.

    Rows are split by :func:`request_folds` (``k``, ``seed``); for each fold ``f`` the rows of
    the other folds are scored (default: their mean; else ``score(rows, row_indices)``, see
    :data:`Score`) and ``heads[f]`` is ``suppression_heads(scores, top_percent)`` as
    ``(layer, head)`` pairs. Measure a prompt of fold ``f`` under ``heads[f]``
    (:meth:`CrossFitHeads.row_heads`): no head set is judged on the requests that chose it.
    """
    x = _check_rows(per_example, request_ids)
    folds = request_folds(request_ids, k, seed)
    heads, ranked_on, measured_on = [], [], []
    for f in range(k):
        train = [i for i, fi in enumerate(folds) if fi != f]
        heads.append(_top_pairs(_scores(x, train, score), top_percent))
        ranked_on.append(sorted({request_ids[i] for i in train}))
        measured_on.append(sorted({r for r, fi in zip(request_ids, folds) if fi == f}))
    return CrossFitHeads(folds, heads, ranked_on, measured_on, float(top_percent), int(seed))
