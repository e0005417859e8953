"""``RefusalProbe``: a linear refusal probe on residual-stream activations.

The probe is ``score(x) = sigmoid(scale * (x @ direction) + bias)`` with a unit ``direction``.
:meth:`RefusalProbe.fit` trains it with scikit-learn logistic regression on standardised
features (the standardisation is folded back, so the probe applies to RAW activations), or
as a difference-of-means direction with a 1-D logistic calibration of ``scale`` and ``bias``.
Held-out metrics (accuracy, AUROC, Brier score, expected calibration error) are computed on
a stratified validation split; :meth:`RefusalProbe.evaluate` scores any other labelled set
(out-of-distribution checks). ``save`` / ``load`` use safetensors + JSON (never pickle),
and ``load(..., model=...)`` refuses a probe trained on another model.

:meth:`RefusalProbe.cross_fit` is k-fold cross-fitting over the training examples: ``k``
fold probes, each example's out-of-fold score from the probe that did not see it, held-out
accuracy / AUROC with 95% intervals over all examples, and a final probe fit on everything.
The returned :class:`CrossFit` maps any rollout to a probe that did not see it
(:meth:`CrossFit.probe_for`) and saves as safetensors + JSON like a probe.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from cliff_lens._typing import Validated
from cliff_lens.io import atomic_save_safetensors, atomic_write_json

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

__all__ = ["RefusalProbe", "CrossFit", "ProbeLoadError", "probe_metrics"]

_FORMAT = "cliff_lens.RefusalProbe"
_VERSION = 1
_CF_FORMAT = "cliff_lens.CrossFit"
_CF_VERSION = 1


class ProbeLoadError(ValueError):
    """A probe file is missing, corrupt, or belongs to another model."""


def _tensor_hash(t: Tensor) -> str:
    a = t.detach().cpu().contiguous()
    h = hashlib.sha256(str((tuple(a.shape), str(a.dtype))).encode())
    h.update(a.view(torch.uint8).numpy().tobytes() if a.numel() else b"")
    return h.hexdigest()[:16]


def _as_2d(acts, what: str = "acts") -> Tensor:
    if isinstance(acts, np.ndarray):
        acts = torch.from_numpy(acts)
    if not isinstance(acts, Tensor):
        raise TypeError(f"{what} must be a tensor [n, d_model], got {type(acts).__name__}")
    if acts.ndim != 2:
        raise ValueError(
            f"{what} must be 2-D [n, d_model], got shape {tuple(acts.shape)}; "
            "extract one position per example (positions='last') or flatten first"
        )
    return acts.detach().cpu().float()


def _check_xy(acts, labels) -> tuple[Tensor, Tensor]:
    x = _as_2d(acts)
    if x.shape[0] == 0:
        raise ValueError(
            "acts is empty: no examples to train or evaluate on; collect labelled rollouts first"
        )
    y = torch.as_tensor(np.asarray(labels)).flatten()
    if y.numel() != x.shape[0]:
        raise ValueError(f"got {x.shape[0]} activations but {y.numel()} labels; they must match one to one")
    if y.dtype == torch.bool:
        y = y.long()
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError(
            f"labels must be 0/1 or bool (1 = refusal), got values {sorted(set(y.tolist()))[:5]}"
        )
    bad = ~torch.isfinite(x).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"acts has NaN/inf in row(s) {rows[:10]}{'...' if len(rows) > 10 else ''}; drop them first "
            "(keep = acts.isfinite().all(1); acts, labels = acts[keep], labels[keep])"
        )
    return x, y.long()


def _ece(p: np.ndarray, y: np.ndarray, n_bins: int = 10) -> float:
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            total += sel.sum() * abs(p[sel].mean() - y[sel].mean())
    return float(total / len(p))


def probe_metrics(scores, labels, threshold: float = 0.5) -> dict[str, float | int]:
    """Accuracy, AUROC, Brier score and 10-bin ECE of probabilities ``scores`` against 0/1 ``labels``."""
    from sklearn.metrics import roc_auc_score

    p = np.asarray(torch.as_tensor(scores).detach().cpu().double())
    y = np.asarray(torch.as_tensor(labels).detach().cpu()).astype(int)
    if len(p) == 0:
        raise ValueError("no examples to evaluate")
    out = {
        "n": int(len(y)),
        "n_refusal": int(y.sum()),
        "accuracy": float(((p >= threshold).astype(int) == y).mean()),
        "auroc": float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else math.nan,
        "brier": float(((p - y) ** 2).mean()),
        "ece": _ece(p, y),
    }
    return out


@dataclass
class RefusalProbe:
    """Linear refusal probe: ``score(x) = sigmoid(scale * x @ direction + bias)``.

    Attributes:
        direction: unit vector ``[d_model]`` (float32) pointing towards "refusal".
        bias: logit offset.
        scale: logit units per unit of projection (``w = scale * direction``).
        hook: the hook the probe reads (``"final_norm_weighted"``, ``"blocks.{L}.hook_resid_post"``...).
        layer: the layer (for ``{L}`` hooks; informational otherwise).
        meta: model name, d_model, position rule, template, method, metrics, data hashes...
    """

    direction: Float[Tensor, " d_model"]
    bias: float = 0.0
    scale: float = 1.0
    hook: str = "final_norm_weighted"
    layer: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        d = torch.as_tensor(self.direction).detach().cpu().float().flatten()
        nrm = float(d.norm())
        if not math.isfinite(nrm) or nrm == 0:
            raise ValueError("direction must be a finite, non-zero vector")
        if abs(nrm - 1) > 1e-4:  # normalise, keeping the logit unchanged
            self.scale = float(self.scale) * nrm
            d = d / nrm
        self.direction = d
        self.bias, self.scale = float(self.bias), float(self.scale)
        self.meta.setdefault("d_model", int(d.numel()))

    # ------------------------------------------------------------------ scoring
    @property
    def d_model(self) -> int:
        """Width of the activations the probe reads."""
        return int(self.direction.numel())

    @property
    def w(self) -> Float[Tensor, " d_model"]:
        """The probe weight ``scale * direction``."""
        return self.scale * self.direction

    @property
    def metrics(self) -> dict:
        """Training metrics (``{"train": ..., "val": ..., **extra sets}``) recorded by ``fit``/``evaluate``."""
        return self.meta.setdefault("metrics", {})

    def logit(self, acts: Float[Tensor, "... d_model"]) -> Float[Tensor, "..."]:
        """Probe logit ``scale * acts @ direction + bias`` (float32, on the device of ``acts``)."""
        acts = torch.as_tensor(acts)
        if acts.shape[-1] != self.d_model:
            raise ValueError(
                f"acts have last dimension {acts.shape[-1]} but the probe expects d_model={self.d_model}; "
                "use activations from the model and hook the probe was trained on"
            )
        d = self.direction.to(acts.device)
        return self.scale * (acts.float() @ d) + self.bias

    def score(self, acts: Float[Tensor, "... d_model"]) -> Float[Tensor, "..."]:
        """Refusal probability ``sigmoid(logit(acts))``."""
        return torch.sigmoid(self.logit(acts))

    __call__ = score

    def predict(self, acts: Float[Tensor, "... d_model"], threshold: float = 0.5) -> Tensor:
        """Boolean refusal prediction (``score >= threshold``)."""
        return self.score(acts) >= threshold

    def evaluate(self, acts: Float[Tensor, "n d_model"], labels, *, name: str | None = None) -> dict:
        """Metrics (accuracy, AUROC, Brier, ECE) on any labelled set; stored under ``metrics[name]`` if named."""
        x, y = _check_xy(acts, labels)
        m: dict[str, Any] = probe_metrics(self.score(x), y)
        if name is not None:
            m["data_hash"] = _tensor_hash(x)
            self.metrics[name] = m
        return m

    # ------------------------------------------------------------------ training
    @classmethod
    def fit(
        cls,
        acts: Float[Tensor, "n d_model"],
        labels,
        *,
        method: Validated[Literal["logistic", "diff_of_means"]] = "logistic",
        val_fraction: float | int = 0.2,
        seed: int = 0,
        C: float | int = 1.0,
        standardize: Validated[Literal["global", "feature", "none"]] = "global",
        max_iter: int = 2000,
        hook: str = "final_norm_weighted",
        layer: int | None = None,
        position_rule: str = "last",
        model: HookedTransformer | None = None,
        meta: dict | None = None,
    ) -> RefusalProbe:
        """Train a probe on ``acts`` (``[n, d_model]``) with 0/1 ``labels`` (1 = refusal).

        A stratified ``val_fraction`` split (seeded) is held out for metrics (``0`` trains on
        everything and reports training metrics only). ``method="logistic"`` fits an
        L2-regularised (``C``) logistic regression on standardised features, folded back to
        raw activations. ``standardize="global"`` (default) centres the features and divides
        them by one common scale (the RMS norm), which is rotation-invariant: the learned
        direction does not depend on the basis of the residual stream. ``"feature"`` scales
        each coordinate separately (the usual sklearn recipe; it distorts the L2 penalty
        towards low-variance coordinates and so tilts the direction), ``"none"`` uses raw
        activations; ``"diff_of_means"`` uses the normalised class-mean difference as
        the direction and fits only ``scale`` and ``bias``. Pass ``model`` to record its
        name / d_model / template (checked again at load time).
        """
        x, y = _check_xy(acts, labels)
        _check_fit_args(y, val_fraction, standardize, method)
        val_mask = _stratified_val_mask(y, val_fraction, seed)
        xt, yt = x[~val_mask], y[~val_mask]
        if method == "logistic":
            w, b = _fit_logistic(xt, yt, C=C, standardize=standardize, max_iter=max_iter)
        else:
            w, b = _fit_diff_of_means(xt, yt, max_iter=max_iter)
        scale = float(w.norm())
        if scale == 0 or not math.isfinite(scale):
            raise ValueError("training produced a zero/non-finite weight; check the activations and labels")

        info: dict[str, Any] = dict(meta or {})
        info.update(
            {
                "method": method,
                "C": C if method == "logistic" else None,
                "standardize": standardize if method == "logistic" else None,
                "seed": seed,
                "val_fraction": val_fraction,
                "position_rule": position_rule,
                "d_model": int(x.shape[1]),
                "n_train": int(xt.shape[0]),
                "n_val": int(val_mask.sum()),
                "data_hashes": {
                    "acts": _tensor_hash(x),
                    "labels": _tensor_hash(y),
                    "val_mask": _tensor_hash(val_mask),
                    **dict((meta or {}).get("data_hashes", {})),
                },
            }
        )
        if model is not None:
            info.setdefault("model_name", model.cfg.model_name)
            info.setdefault("template", getattr(model, "cliff_template", None))
        probe = cls(direction=w / scale, bias=b, scale=scale, hook=hook, layer=layer, meta=info)
        # in-sample: the probe was fit on these examples (optimistic); "val" / "cv" are held out
        probe.meta["metrics"] = {"train": {**probe_metrics(probe.score(xt), yt), "in_sample": True}}
        if val_mask.any():
            probe.meta["metrics"]["val"] = probe_metrics(probe.score(x[val_mask]), y[val_mask])
        return probe

    # ------------------------------------------------------------------ model checks
    def check_model(self, model: HookedTransformer, *, strict_name: bool = True) -> None:
        """Raise :class:`ProbeLoadError` if ``model``'s d_model (or name) differs from the probe's."""
        d = model.cfg.d_model
        if d != self.d_model:
            raise ProbeLoadError(
                f"probe has d_model={self.d_model} (model {self.meta.get('model_name')!r}) but the model has "
                f"d_model={d} (model {model.cfg.model_name!r}); train a probe for this model"
            )
        name = self.meta.get("model_name")
        if strict_name and name is not None and name != model.cfg.model_name:
            raise ProbeLoadError(
                f"probe was trained on model {name!r} but is being applied to {model.cfg.model_name!r}; "
                "train a probe for this model, or pass strict_name=False if it is the same model "
                "loaded under another name"
            )

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> dict:
        """The JSON metadata written next to the safetensors file."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "model_name": self.meta.get("model_name"),
            "d_model": self.d_model,
            "hook": self.hook,
            "layer": self.layer,
            "position_rule": self.meta.get("position_rule"),
            "template": self.meta.get("template"),
            "bias": self.bias,
            "scale": self.scale,
            "direction_hash": _tensor_hash(self.direction),
            "metrics": self.meta.get("metrics", {}),
            "meta": self.meta,
        }

    def save(self, prefix: str | Path) -> tuple[Path, Path]:
        """Write ``prefix.safetensors`` (direction) and ``prefix.json`` (metadata), atomically."""
        prefix = Path(prefix)
        if prefix.suffix in (".safetensors", ".json"):
            prefix = prefix.with_suffix("")
        st = prefix.with_name(prefix.name + ".safetensors")
        js = prefix.with_name(prefix.name + ".json")
        atomic_save_safetensors(
            {"direction": self.direction.float()}, st, metadata={"format": _FORMAT, "version": str(_VERSION)}
        )
        atomic_write_json(js, _jsonable(self.to_json()))
        return st, js

    @classmethod
    def load(
        cls, prefix: str | Path, model: HookedTransformer | None = None, *, strict_name: bool = True
    ) -> RefusalProbe:
        """Load a probe saved by :meth:`save`; with ``model``, refuse it if d_model / name differ.

        ``prefix`` may be given with or without the ``.safetensors`` / ``.json`` suffix.
        Missing, truncated or corrupt files raise :class:`ProbeLoadError` naming the file.
        """
        st, js = _pair_paths(prefix)
        info, tensors = _read_pair(st, js, _FORMAT, "probe", "RefusalProbe.save")
        if "direction" not in tensors:
            raise ProbeLoadError(f"probe tensor file {st} has no 'direction' tensor; re-save the probe")
        probe = _probe_from_record(cls, info, tensors["direction"], st, js)
        if model is not None:
            probe.check_model(model, strict_name=strict_name)
        return probe

    # ------------------------------------------------------------------ cross-fitting
    @classmethod
    def cross_fit(
        cls,
        acts: Float[Tensor, "n d_model"],
        labels,
        *,
        k: int = 5,
        groups: Sequence[Hashable] | None = None,
        ids: Sequence[str] | None = None,
        seed: int = 0,
        **fit_kwargs,
    ) -> CrossFit:
        """k-fold cross-fitting: ``k`` fold probes, out-of-fold scores, held-out metrics, final probe.

        The examples are split into ``k`` stratified folds (seeded; ``StratifiedKFold``, or
        ``StratifiedGroupKFold`` when ``groups`` is given so that e.g. all rollouts of one
        prompt fall in the same fold). Fold probe ``i`` is :meth:`fit` on the other folds with
        the same settings (``fit_kwargs``: ``method``, ``C``, ``standardize``, ``hook``,
        ``layer``, ``model``...; no inner validation split) and scores fold ``i``: every
        example gets an out-of-fold score from a probe that never saw it. Accuracy (threshold
        0.5, Wilson interval) and AUROC (Hanley-McNeil score interval) are computed over all
        out-of-fold predictions. The ``final`` probe, for new data, is fit on ALL examples; its
        ``metrics["cv"]`` holds the cross-validated numbers, ``metrics["val"]`` the same
        held-out point values (what readers of ``metrics["val"]`` show), and
        ``metrics["train"]`` its in-sample numbers (``in_sample: True``).

        ``k`` is lowered to the size of the smallest class (with groups: the number of groups
        holding it) with a warning and a note in ``metrics["cv"]["note"]``; a class with fewer
        than 2 examples (groups) raises ``ValueError``. ``ids`` (one string per example, e.g.
        rollout ids) lets :meth:`CrossFit.probe_for` look examples up by id.
        """
        if "val_fraction" in fit_kwargs:
            raise ValueError(
                "cross_fit holds out whole folds itself (each fold probe trains on the other folds, with "
                "no inner validation split); drop val_fraction= from the call"
            )
        x, y = _check_xy(acts, labels)
        n = x.shape[0]
        k_req, gkeys, ids = _check_cross_fit_args(n, k, groups, ids)
        fold, k, note = _make_folds(y, gkeys, k_req, seed)
        _check_folds_trainable(y, fold, k)
        probes, oof, per_fold = _fit_fold_probes(cls, x, y, fold, k, seed, fit_kwargs)
        cv, val = _cross_fit_metrics(y, oof, k, k_req, gkeys is not None, seed, per_fold, note)

        final = cls.fit(x, y, val_fraction=0, seed=seed, **fit_kwargs)
        final.meta["metrics"]["cv"] = cv
        final.meta["metrics"]["val"] = val
        final.meta["cross_fit"] = {"k": k, "seed": seed, "grouped": gkeys is not None}
        settings = {key: v for key, v in fit_kwargs.items() if key not in ("model", "meta")}
        return CrossFit(
            probes=probes,
            final=final,
            fold=fold,
            labels=y,
            oof_logit=oof,
            metrics=cv,
            ids=ids,
            groups=gkeys,
            seed=seed,
            k_requested=k_req,
            settings=_jsonable(settings),
        )

    def __repr__(self) -> str:
        val = self.meta.get("metrics", {}).get("val", {})
        acc = f", val_acc={val['accuracy']:.3f}" if "accuracy" in val else ""
        return (
            f"RefusalProbe(d_model={self.d_model}, hook={self.hook!r}, layer={self.layer}, "
            f"scale={self.scale:.4g}, bias={self.bias:.4g}{acc})"
        )


def _check_fit_args(y: Int[Tensor, " n"], val_fraction: float | int, standardize: str, method: str) -> None:
    """Raise ``ValueError`` if the labels or the settings of :meth:`RefusalProbe.fit` cannot train a probe."""
    counts = torch.bincount(y, minlength=2)
    if int(counts.min()) == 0:
        raise ValueError(
            f"labels contain only one class ({int(counts[0])} non-refusal, {int(counts[1])} refusal); "
            "a probe needs examples of both"
        )
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction > 0 and int(counts.min()) < 2:
        raise ValueError(
            f"a class has a single example ({int(counts[0])} non-refusal, {int(counts[1])} refusal): "
            "cannot hold one out for validation; add examples or pass val_fraction=0"
        )
    if standardize not in ("global", "feature", "none"):
        raise ValueError(f"standardize must be 'global', 'feature' or 'none', got {standardize!r}")
    if method not in ("logistic", "diff_of_means"):
        raise ValueError(f"method must be 'logistic' or 'diff_of_means', got {method!r}")


def _stratified_val_mask(y: Int[Tensor, " n"], val_fraction: float | int, seed: int) -> Bool[Tensor, " n"]:
    """Seeded stratified validation split: a ``val_fraction`` share of each class (at least one, never all)."""
    g = torch.Generator().manual_seed(seed)
    val_mask = torch.zeros(y.shape[0], dtype=torch.bool)
    if val_fraction > 0:
        for c in (0, 1):
            idx = (y == c).nonzero().flatten()
            idx = idx[torch.randperm(idx.numel(), generator=g)]
            k = min(max(1, round(val_fraction * idx.numel())), idx.numel() - 1)
            val_mask[idx[:k]] = True
    return val_mask


def _fit_logistic(
    xt: Float[Tensor, "n d_model"],
    yt: Int[Tensor, " n"],
    *,
    C: float | int,
    standardize: str,
    max_iter: int,
) -> tuple[Float[Tensor, " d_model"], float]:
    """L2 logistic regression on standardised features, folded back to a raw-activation weight and bias."""
    from sklearn.linear_model import LogisticRegression

    mu = xt.mean(0)
    if standardize == "global":  # rotation-invariant: one scale for every coordinate
        sd = (xt - mu).pow(2).sum(1).mean().sqrt().clamp_min(1e-12).expand_as(mu)
    elif standardize == "feature":
        sd = xt.std(0, unbiased=False)
        sd = torch.where(sd > 1e-8 * max(float(sd.max()), 1e-30), sd, torch.ones_like(sd))
    else:
        mu, sd = torch.zeros_like(mu), torch.ones_like(mu)
    z = ((xt - mu) / sd).double().numpy()
    clf = LogisticRegression(C=C, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        clf.fit(z, yt.numpy())
    coef = torch.from_numpy(clf.coef_[0]).float()
    w = coef / sd
    b = float(clf.intercept_[0]) - float((w.double() * mu.double()).sum())
    return w, b


def _fit_diff_of_means(
    xt: Float[Tensor, "n d_model"], yt: Int[Tensor, " n"], *, max_iter: int
) -> tuple[Float[Tensor, " d_model"], float]:
    """Class-mean-difference direction with a 1-D logistic calibration of its scale and bias."""
    from sklearn.linear_model import LogisticRegression

    diff = xt[yt == 1].mean(0) - xt[yt == 0].mean(0)
    if float(diff.norm()) == 0:
        raise ValueError("the class means are identical: no difference-of-means direction exists")
    d = diff / diff.norm()
    proj = (xt @ d).double()
    pm, ps = proj.mean(), proj.std().clamp_min(1e-12)
    clf = LogisticRegression(C=1e6, max_iter=max_iter)
    clf.fit(((proj - pm) / ps).numpy()[:, None], yt.numpy())
    a = float(clf.coef_[0, 0]) / float(ps)
    b = float(clf.intercept_[0]) - a * float(pm)
    return a * d, b


def _check_cross_fit_args(
    n: int, k: int, groups: Sequence[Hashable] | None, ids: Sequence[str] | None
) -> tuple[int, list[str] | None, list[str] | None]:
    """Check ``k``, ``groups`` and ``ids`` of :meth:`RefusalProbe.cross_fit`; returns them normalised."""
    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 2:
        raise ValueError(f"k must be an integer >= 2 (the number of folds), got {k!r}")
    gkeys = None
    if groups is not None:
        gkeys = [str(g) for g in groups]
        if len(gkeys) != n:
            raise ValueError(f"got {n} activations but {len(gkeys)} groups; they must match one to one")
    id_list = None
    if ids is not None:
        id_list = [str(i) for i in ids]
        if len(id_list) != n:
            raise ValueError(f"got {n} activations but {len(id_list)} ids; they must match one to one")
        if len(set(id_list)) != n:
            dup = sorted({i for i in id_list if id_list.count(i) > 1})[:5]
            raise ValueError(f"ids must be unique (one per example); repeated: {dup}")
    return int(k), gkeys, id_list


def _check_folds_trainable(y: Int[Tensor, " n"], fold: Int[Tensor, " n"], k: int) -> None:
    """Raise ``ValueError`` if the folds outside some fold hold only one class."""
    for i in range(k):
        tr = y[fold != i]
        if int(tr.sum()) in (0, tr.numel()):
            raise ValueError(
                f"fold {i}: the other folds hold only one class, so its probe cannot be trained "
                f"(groups too unbalanced for k={k}); pass a smaller k or groups=None"
            )


def _fit_fold_probes(
    cls: type[RefusalProbe],
    x: Float[Tensor, "n d_model"],
    y: Int[Tensor, " n"],
    fold: Int[Tensor, " n"],
    k: int,
    seed: int,
    fit_kwargs: dict[str, Any],
) -> tuple[list[RefusalProbe], Float[Tensor, " n"], list[dict[str, Any]]]:
    """Fit one probe per fold on the other folds; returns the probes, out-of-fold logits and fold metrics."""
    probes: list[RefusalProbe] = []
    oof = torch.empty(x.shape[0], dtype=torch.float32)
    per_fold = []
    for i in range(k):
        te = fold == i
        p = cls.fit(x[~te], y[~te], val_fraction=0, seed=seed, **fit_kwargs)
        p.meta.update({"fold": i, "n_folds": k, "n_heldout": int(te.sum())})
        p.meta["data_hashes"]["heldout_acts"] = _tensor_hash(x[te])
        lg = p.logit(x[te]).float()
        oof[te] = lg
        hm = probe_metrics(torch.sigmoid(lg), y[te])
        p.meta["metrics"]["heldout"] = hm
        per_fold.append({"fold": i, "n": hm["n"], "accuracy": hm["accuracy"], "auroc": _num(hm["auroc"])})
        probes.append(p)
    return probes, oof, per_fold


def _cross_fit_metrics(
    y: Int[Tensor, " n"],
    oof: Float[Tensor, " n"],
    k: int,
    k_req: int,
    grouped: bool,
    seed: int,
    per_fold: list[dict[str, Any]],
    note: str | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Held-out metrics over all out-of-fold scores: the ``cv`` record and its ``val``-style summary."""
    from cliff_lens.stats import auroc_interval, rate

    n = y.shape[0]
    prob = torch.sigmoid(oof)
    pm = probe_metrics(prob, y)
    acc = rate(((prob >= 0.5).long() == y).tolist())
    auc, lo, hi = auroc_interval(y.tolist(), prob.double().tolist())
    cv: dict[str, Any] = {
        "kind": (
            f"out-of-fold, {k}-fold cross-fitting: each example scored by the fold probe that did not "
            "see it" + (" (groups kept within one fold)" if grouped else "")
        ),
        "k": k,
        "k_requested": k_req,
        "grouped": grouped,
        "seed": seed,
        "n": n,
        "n_refusal": int(y.sum()),
        "accuracy": acc.to_dict(),
        "auroc": {
            "value": _num(auc),
            "n": n,
            "ci95": [_num(lo), _num(hi)],
            "interval": "Hanley-McNeil score interval",
        },
        "brier": pm["brier"],
        "ece": pm["ece"],
        "folds": per_fold,
    }
    if note:
        cv["note"] = note
    val = {
        "accuracy": acc.value,
        "auroc": _num(auc),
        "brier": pm["brier"],
        "ece": pm["ece"],
        "n": n,
        "n_refusal": int(y.sum()),
        "accuracy_ci95": [_num(acc.low), _num(acc.high)],
        "auroc_ci95": [_num(lo), _num(hi)],
        "source": cv["kind"],
    }
    return cv, val


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _num(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _pair_paths(prefix: str | Path) -> tuple[Path, Path]:
    prefix = Path(prefix)
    if prefix.suffix in (".safetensors", ".json"):
        prefix = prefix.with_suffix("")
    return prefix.with_name(prefix.name + ".safetensors"), prefix.with_name(prefix.name + ".json")


def _read_pair(st: Path, js: Path, fmt: str, what: str, saver: str) -> tuple[dict, dict[str, Tensor]]:
    """Read a ``.json`` of format ``fmt`` and all tensors of its ``.safetensors``; ProbeLoadError on trouble."""
    from safetensors import safe_open

    for p in (st, js):
        if not p.exists():
            raise ProbeLoadError(
                f"{what} file {p} does not exist; save it with {saver}({st.with_suffix('')!s})"
            )
    try:
        info = json.loads(js.read_text(encoding="utf-8"))
        if not isinstance(info, dict) or info.get("format") != fmt:
            raise ValueError(f"not a {fmt} file")
    except (ValueError, UnicodeDecodeError) as e:
        raise ProbeLoadError(
            f"{what} metadata {js} is corrupt or not a {what} file ({e}); re-save the {what}"
        ) from None
    try:
        with safe_open(str(st), framework="pt") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncation
        raise ProbeLoadError(
            f"{what} tensor file {st} is corrupt or truncated ({type(e).__name__}: {e}); re-save the {what}"
        ) from None
    return info, tensors


def _probe_from_record(
    cls, info: dict, direction: Tensor, st: Path, js: Path, where: str = ""
) -> RefusalProbe:
    """Rebuild a probe from its :meth:`RefusalProbe.to_json` record and direction, checking both."""
    try:
        bias, scale, d_model = float(info["bias"]), float(info["scale"]), int(info["d_model"])
    except (ValueError, KeyError, TypeError) as e:
        raise ProbeLoadError(
            f"probe metadata {js}{where} is corrupt or not a probe file ({e!r}); re-save the probe"
        ) from None
    if direction.ndim != 1 or direction.numel() != d_model:
        raise ProbeLoadError(
            f"{st}{where} holds a direction of shape {tuple(direction.shape)} but {js} says "
            f"d_model={d_model}; the two files do not belong together"
        )
    if info.get("direction_hash") and info["direction_hash"] != _tensor_hash(direction.float()):
        raise ProbeLoadError(
            f"{st}{where} does not match the direction hash recorded in {js}; re-save the probe"
        )
    meta = dict(info.get("meta") or {})
    meta.setdefault("model_name", info.get("model_name"))
    return cls(
        direction=direction,
        bias=bias,
        scale=scale,
        hook=info.get("hook", "final_norm_weighted"),
        layer=info.get("layer"),
        meta=meta,
    )


def _make_folds(y: Tensor, groups: list[str] | None, k: int, seed: int) -> tuple[Tensor, int, str | None]:
    """Stratified (grouped) fold index of every example; ``k`` lowered to what the classes allow."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    names = {0: "non-refusal (label 0)", 1: "refusal (label 1)"}
    yl = y.tolist()
    if groups is None:
        sizes = {c: yl.count(c) for c in (0, 1)}
        unit = "examples"
    else:
        sizes = {c: len({g for g, v in zip(groups, yl) if v == c}) for c in (0, 1)}
        unit = "groups"
    small = min(sizes, key=lambda c: sizes[c])
    if yl.count(small) == 0:
        raise ValueError(
            f"labels contain only one class ({yl.count(0)} non-refusal, {yl.count(1)} refusal); "
            "a probe needs examples of both"
        )
    if sizes[small] < 2:
        raise ValueError(
            f"labels: the {names[small]} class has {sizes[small]} {unit} ({sizes[0]} non-refusal, "
            f"{sizes[1]} refusal {unit}); cross-fitting needs at least 2 per class so that every held-out "
            "fold is scored by a probe trained on both classes. Add examples of that class"
            + (", or pass groups=None (groups keep each group in one fold)" if groups is not None else "")
            + "; RefusalProbe.fit(..., val_fraction=0) trains a probe without held-out metrics"
        )
    note = None
    if sizes[small] < k:
        note = (
            f"k lowered from {k} to {sizes[small]}: the {names[small]} class has only {sizes[small]} {unit}, "
            "and every fold must hold one of each class"
        )
        warnings.warn(note, stacklevel=3)
        k = sizes[small]
    fold = np.full(len(yl), -1, dtype=np.int64)
    z = np.zeros((len(yl), 1))
    if groups is None:
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(z, yl)
    else:
        splits = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(z, yl, groups)
    for i, (_, te) in enumerate(splits):
        fold[te] = i
    empty = [i for i in range(k) if not (fold == i).any()]
    if (fold < 0).any() or empty:
        raise ValueError(f"the split left fold(s) {empty} empty; pass a smaller k")
    return torch.from_numpy(fold), k, note


@dataclass
class CrossFit:
    """The result of :meth:`RefusalProbe.cross_fit`: fold probes, out-of-fold scores, final probe.

    Attributes:
        probes: the ``k`` fold probes; ``probes[i]`` was trained on every example with
            ``fold != i`` and never saw the examples of fold ``i``.
        final: the probe fit on ALL examples (for new data); ``final.metrics["cv"]`` is
            :attr:`metrics`.
        fold: ``[n]`` int64, the fold in which each training example is held out.
        labels: ``[n]`` int64, the 0/1 labels the folds were fit on.
        oof_logit: ``[n]`` float32, each example's logit under the fold probe that did not see it.
        metrics: held-out accuracy (Wilson interval), AUROC (Hanley-McNeil interval), Brier, ECE,
            per-fold numbers, ``k`` / ``k_requested`` and a ``note`` when ``k`` was lowered.
        ids: optional example ids (e.g. rollout ids), for :meth:`probe_for` by id.
        groups: optional group key of each example (as strings); groups never straddle folds.
    """

    probes: list[RefusalProbe]
    final: RefusalProbe
    fold: Tensor
    labels: Tensor
    oof_logit: Tensor
    metrics: dict
    ids: list[str] | None = None
    groups: list[str] | None = None
    seed: int = 0
    k_requested: int = 5
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._id_index = {i: n for n, i in enumerate(self.ids)} if self.ids is not None else {}
        self._group_fold: dict[str, int] = {}
        if self.groups is not None:
            for g, f in zip(self.groups, self.fold.tolist()):
                self._group_fold.setdefault(g, int(f))

    @property
    def k(self) -> int:
        """The number of folds actually used."""
        return len(self.probes)

    @property
    def n(self) -> int:
        """The number of training examples."""
        return int(self.fold.numel())

    @property
    def oof_score(self) -> Tensor:
        """``[n]`` out-of-fold refusal probabilities (``sigmoid(oof_logit)``)."""
        return torch.sigmoid(self.oof_logit)

    def heldout(self, i: int) -> Tensor:
        """Indices (into the training examples) of fold ``i``, the examples ``probes[i]`` never saw."""
        return (self.fold == i).nonzero().flatten()

    def fold_for(
        self, index: int | None = None, *, id: str | None = None, group: Hashable | None = None
    ) -> int | None:
        """The fold whose probe did not see this example, or ``None`` for :attr:`final`.

        * ``index``: row of a training example (as passed to ``cross_fit``) -> its fold.
        * ``id``: a training example's id -> its fold; an id that was not trained on falls
          through to ``group``.
        * ``group``: for an example outside the training set whose group (prompt) has training
          examples (cross-fit with ``groups``) -> that group's fold, whose probe saw no example
          of the group.
        * anything else (not trained on, no known group) -> ``None``: the final probe, which
          never saw it either.
        """
        if index is not None and id is not None:
            raise ValueError("pass index= or id=, not both")
        if index is not None:
            i = int(index)
            if not 0 <= i < self.n:
                raise IndexError(
                    f"training index {index} out of range for {self.n} examples; pass index=None "
                    "(or an id) for an example that was not in the training set"
                )
            return int(self.fold[i])
        if id is not None:
            if self.ids is None:
                raise ValueError(
                    "this CrossFit has no ids; pass ids=... to RefusalProbe.cross_fit or use index="
                )
            j = self._id_index.get(str(id))
            if j is not None:
                return int(self.fold[j])
        if group is not None and self.groups is not None:
            return self._group_fold.get(str(group))
        return None

    def probe_for(
        self, index: int | None = None, *, id: str | None = None, group: Hashable | None = None
    ) -> RefusalProbe:
        """The probe that did not see this example (see :meth:`fold_for`): a fold probe or :attr:`final`."""
        f = self.fold_for(index, id=id, group=group)
        return self.final if f is None else self.probes[f]

    def split_by_probe(
        self, ids: Sequence[str], groups: Sequence[Hashable] | None = None
    ) -> list[tuple[int | None, RefusalProbe, list[int]]]:
        """Partition a list of examples by the probe that did not see them.

        Returns ``(fold or None, probe, positions)`` for each probe used, ``positions`` indexing
        ``ids``; fold probes first (by fold), then the final probe. Score each part with its
        probe and put the results back at ``positions``.
        """
        if groups is not None and len(groups) != len(ids):
            raise ValueError(f"got {len(ids)} ids but {len(groups)} groups; they must match one to one")
        parts: dict[int | None, list[int]] = {}
        for pos, i in enumerate(ids):
            f = self.fold_for(id=i, group=None if groups is None else groups[pos])
            parts.setdefault(f, []).append(pos)
        order = sorted(f for f in parts if f is not None) + ([None] if None in parts else [])
        return [(f, self.final if f is None else self.probes[f], parts[f]) for f in order]

    def check_model(self, model: HookedTransformer, *, strict_name: bool = True) -> None:
        """Raise :class:`ProbeLoadError` if ``model`` is not the one the probes were trained on."""
        self.final.check_model(model, strict_name=strict_name)

    # ------------------------------------------------------------------ persistence
    def save(self, prefix: str | Path) -> tuple[Path, Path]:
        """Write ``prefix.safetensors`` (directions, folds, labels, out-of-fold logits) and ``prefix.json``.

        The JSON holds every probe's :meth:`RefusalProbe.to_json` record (``folds``, ``final``),
        :attr:`metrics`, ``ids``, ``groups`` and the settings; both files are written atomically.
        """
        st, js = _pair_paths(prefix)
        tensors = {
            "fold_directions": torch.stack([p.direction.float() for p in self.probes]),
            "final_direction": self.final.direction.float(),
            "fold": self.fold.long().contiguous(),
            "labels": self.labels.long().contiguous(),
            "oof_logit": self.oof_logit.float().contiguous(),
        }
        info = {
            "format": _CF_FORMAT,
            "version": _CF_VERSION,
            "model_name": self.final.meta.get("model_name"),
            "d_model": self.final.d_model,
            "hook": self.final.hook,
            "layer": self.final.layer,
            "k": self.k,
            "k_requested": self.k_requested,
            "seed": self.seed,
            "n": self.n,
            "settings": self.settings,
            "metrics": self.metrics,
            "tensor_hashes": {key: _tensor_hash(tensors[key]) for key in ("fold", "labels", "oof_logit")},
            "ids": self.ids,
            "groups": self.groups,
            "final": self.final.to_json(),
            "folds": [p.to_json() for p in self.probes],
        }
        atomic_save_safetensors(tensors, st, metadata={"format": _CF_FORMAT, "version": str(_CF_VERSION)})
        atomic_write_json(js, _jsonable(info))
        return st, js

    @classmethod
    def load(
        cls,
        prefix: str | Path,
        model: HookedTransformer | None = None,
        *,
        strict_name: bool = True,
        final: RefusalProbe | None = None,
    ) -> CrossFit:
        """Load a :class:`CrossFit` written by :meth:`save` (``ProbeLoadError`` for bad files).

        ``model``: refuse the folds if its d_model / name differ. ``final``: the probe saved
        separately (``probe.safetensors``); it must be the final probe these folds were saved
        with (same direction, bias, scale), else ``ProbeLoadError`` (stale folds file), and it
        is used as :attr:`final`.
        """
        st, js = _pair_paths(prefix)
        info, t = _read_pair(st, js, _CF_FORMAT, "cross-fit", "CrossFit.save")
        try:
            k, n = int(info["k"]), int(info["n"])
            recs, frec = list(info["folds"]), dict(info["final"])
            dirs, fdir = t["fold_directions"], t["final_direction"]
            fold, labels, oof = t["fold"].long(), t["labels"].long(), t["oof_logit"].float()
        except (KeyError, TypeError, ValueError) as e:
            raise ProbeLoadError(
                f"cross-fit files {js} / {st} are incomplete ({e!r}); re-save them"
            ) from None
        if (
            len(recs) != k
            or dirs.ndim != 2
            or dirs.shape[0] != k
            or any(v.numel() != n for v in (fold, labels, oof))
        ):
            raise ProbeLoadError(
                f"{st} holds {tuple(dirs.shape)} fold directions and {fold.numel()} fold indices but {js} says "
                f"k={k}, n={n}; the two files do not belong together"
            )
        for key, v in (info.get("tensor_hashes") or {}).items():
            if key in t and v != _tensor_hash(t[key]):
                raise ProbeLoadError(f"{st} tensor {key!r} does not match the hash recorded in {js}; re-save")
        probes = [
            _probe_from_record(RefusalProbe, r, dirs[i], st, js, f" (fold {i})") for i, r in enumerate(recs)
        ]
        fin = _probe_from_record(RefusalProbe, frec, fdir, st, js, " (final)")
        if final is not None:
            same = (
                final.d_model == fin.d_model
                and _tensor_hash(final.direction) == _tensor_hash(fin.direction)
                and final.bias == fin.bias
                and final.scale == fin.scale
            )
            if not same:
                raise ProbeLoadError(
                    f"{st} was saved with another final probe than the one given (its direction / bias / "
                    "scale differ): the folds are stale; re-run the cross-fit (the probe stage)"
                )
            fin = final
        ids, groups = info.get("ids"), info.get("groups")
        for name, v in (("ids", ids), ("groups", groups)):
            if v is not None and len(v) != n:
                raise ProbeLoadError(f"{js}: {name} has {len(v)} entries for n={n}; re-save the cross-fit")
        cf = cls(
            probes=probes,
            final=fin,
            fold=fold,
            labels=labels,
            oof_logit=oof,
            metrics=dict(info.get("metrics") or {}),
            ids=None if ids is None else [str(i) for i in ids],
            groups=None if groups is None else [str(g) for g in groups],
            seed=int(info.get("seed", 0)),
            k_requested=int(info.get("k_requested", k)),
            settings=dict(info.get("settings") or {}),
        )
        if model is not None:
            for p in (*cf.probes, cf.final):
                p.check_model(model, strict_name=strict_name)
        return cf

    def __repr__(self) -> str:
        acc = (self.metrics.get("accuracy") or {}).get("value")
        auc = (self.metrics.get("auroc") or {}).get("value")
        extra = f", oof_acc={acc:.3f}" if acc is not None else ""
        extra += f", oof_auroc={auc:.3f}" if auc is not None else ""
        return f"CrossFit(k={self.k}, n={self.n}, grouped={self.groups is not None}{extra})"
