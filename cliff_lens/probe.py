"""``RefusalProbe``: a linear refusal probe on residual-stream activations.

The probe is ``score(x) = sigmoid(scale * (x @ direction) + bias)`` with a unit ``direction``.
:meth:`RefusalProbe.fit` trains it with scikit-learn logistic regression on standardised
features (the standardisation is folded back, so the probe applies to RAW activations), or
as a difference-of-means direction with a 1-D logistic calibration of ``scale`` and ``bias``.
Held-out metrics (accuracy, AUROC, Brier score, expected calibration error) are computed on
a stratified validation split; :meth:`RefusalProbe.evaluate` scores any other labelled set
(out-of-distribution checks). ``save`` / ``load`` use safetensors + JSON (never pickle),
and ``load(..., model=...)`` refuses a probe trained on another model.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from cliff_lens.io import atomic_save_safetensors, atomic_write_json

__all__ = ["RefusalProbe", "ProbeLoadError", "probe_metrics"]

_FORMAT = "cliff_lens.RefusalProbe"
_VERSION = 1


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


def probe_metrics(scores, labels, threshold: float = 0.5) -> dict[str, float]:
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
        m = probe_metrics(self.score(x), y)
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
        method: Literal["logistic", "diff_of_means"] = "logistic",
        val_fraction: float = 0.2,
        seed: int = 0,
        C: float = 1.0,
        standardize: Literal["global", "feature", "none"] = "global",
        max_iter: int = 2000,
        hook: str = "final_norm_weighted",
        layer: int | None = None,
        position_rule: str = "last",
        model=None,
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
        from sklearn.linear_model import LogisticRegression

        x, y = _check_xy(acts, labels)
        n = x.shape[0]
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

        # stratified split, vectorised, seeded
        g = torch.Generator().manual_seed(seed)
        val_mask = torch.zeros(n, dtype=torch.bool)
        if val_fraction > 0:
            for c in (0, 1):
                idx = (y == c).nonzero().flatten()
                idx = idx[torch.randperm(idx.numel(), generator=g)]
                k = min(max(1, round(val_fraction * idx.numel())), idx.numel() - 1)
                val_mask[idx[:k]] = True
        xt, yt = x[~val_mask], y[~val_mask]

        if method == "logistic":
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
        else:
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
            w = a * d
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
        probe.meta["metrics"] = {"train": probe_metrics(probe.score(xt), yt)}
        if val_mask.any():
            probe.meta["metrics"]["val"] = probe_metrics(probe.score(x[val_mask]), y[val_mask])
        return probe

    # ------------------------------------------------------------------ model checks
    def check_model(self, model, *, strict_name: bool = True) -> None:
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
    def load(cls, prefix: str | Path, model=None, *, strict_name: bool = True) -> RefusalProbe:
        """Load a probe saved by :meth:`save`; with ``model``, refuse it if d_model / name differ.

        ``prefix`` may be given with or without the ``.safetensors`` / ``.json`` suffix.
        Missing, truncated or corrupt files raise :class:`ProbeLoadError` naming the file.
        """
        from safetensors import safe_open

        prefix = Path(prefix)
        if prefix.suffix in (".safetensors", ".json"):
            prefix = prefix.with_suffix("")
        st = prefix.with_name(prefix.name + ".safetensors")
        js = prefix.with_name(prefix.name + ".json")
        for p in (st, js):
            if not p.exists():
                raise ProbeLoadError(
                    f"probe file {p} does not exist; save the probe with RefusalProbe.save({prefix!s})"
                )
        try:
            info = json.loads(js.read_text(encoding="utf-8"))
            if not isinstance(info, dict) or info.get("format") != _FORMAT:
                raise ValueError(f"not a {_FORMAT} file")
            bias, scale, d_model = float(info["bias"]), float(info["scale"]), int(info["d_model"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ProbeLoadError(
                f"probe metadata {js} is corrupt or not a probe file ({e}); re-save the probe"
            ) from None
        try:
            with safe_open(str(st), framework="pt") as f:
                direction = f.get_tensor("direction")
        except Exception as e:  # safetensors raises its own error types for truncation
            raise ProbeLoadError(
                f"probe tensor file {st} is corrupt or truncated ({type(e).__name__}: {e}); re-save the probe"
            ) from None
        if direction.ndim != 1 or direction.numel() != d_model:
            raise ProbeLoadError(
                f"{st} holds a direction of shape {tuple(direction.shape)} but {js} says d_model={d_model}; "
                "the two files do not belong together"
            )
        if info.get("direction_hash") and info["direction_hash"] != _tensor_hash(direction.float()):
            raise ProbeLoadError(
                f"{st} does not match the direction hash recorded in {js}; re-save the probe"
            )
        meta = dict(info.get("meta") or {})
        meta.setdefault("model_name", info.get("model_name"))
        probe = cls(
            direction=direction,
            bias=bias,
            scale=scale,
            hook=info.get("hook", "final_norm_weighted"),
            layer=info.get("layer"),
            meta=meta,
        )
        if model is not None:
            probe.check_model(model, strict_name=strict_name)
        return probe

    def __repr__(self) -> str:
        val = self.meta.get("metrics", {}).get("val", {})
        acc = f", val_acc={val['accuracy']:.3f}" if "accuracy" in val else ""
        return (
            f"RefusalProbe(d_model={self.d_model}, hook={self.hook!r}, layer={self.layer}, "
            f"scale={self.scale:.4g}, bias={self.bias:.4g}{acc})"
        )


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
