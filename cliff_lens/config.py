"""The configuration of one run: :class:`RunConfig`, the single place of every setting and default.

Each field carries its help text in its metadata; ``cliff-lens run`` builds its flags from these
fields (:func:`add_config_arguments`), ``run.json`` stores :meth:`RunConfig.to_json`, and the stage
registry (:mod:`cliff_lens.pipeline`) names the fields each stage's fingerprint covers. Every
setting is checked in ``__post_init__``, before any compute, so a bad value fails at once with a
message naming the setting and the fix, not after minutes of rollouts.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ._typing import Validated, static_type_hints

__all__ = [
    "RunConfig",
    "ConfigError",
    "demo_config",
    "add_config_arguments",
    "config_from_args",
    "HeadVariant",
    "AblationMode",
    "JudgeMode",
    "ProbeMethod",
    "SelectionVariant",
    "Dtype",
]

#: head-score variants (:func:`cliff_lens.heads.head_attributions`)
HeadVariant = Literal["raw", "norm_aware", "with_bias"]
#: head ablation modes (:func:`cliff_lens.ablation.ablation_hooks`)
AblationMode = Literal["zero", "mean", "paper_renorm", "paper_renorm_global"]
#: where the keyword judge looks for refusal phrases (:class:`cliff_lens.judges.KeywordJudge`)
JudgeMode = Literal["start", "anywhere"]
#: probe fitting methods (:meth:`cliff_lens.probe.RefusalProbe.fit`)
ProbeMethod = Literal["logistic", "diff_of_means"]
#: misalignment scores for Cliff-as-a-Judge (:func:`cliff_lens.selection.misalignment_scores`)
SelectionVariant = Literal["cliff", "final", "plateau", "neg_plateau"]
Dtype = Literal["float32", "float16", "bfloat16"]


class ConfigError(ValueError):
    """A setting of :class:`RunConfig` is invalid; the message names it and the fix."""


def _f(default: Any, help: str, *, flag: str | None = None) -> Any:
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass
class RunConfig:
    """Configuration of one run (saved in ``run.json``; ``cliff-lens run`` flags are its fields).

    Prompt-set specs (``harmful``, ``harmless``, ``asr_prompts``) are comma-separated names
    understood by :func:`cliff_lens.data.load_prompts` or file paths, optionally ``name:split``.
    """

    model: str = field(metadata={"help": "model source (see `cliff-lens models`)"})
    out: Validated[Path] = field(metadata={"help": "run directory"})
    harmful: str = _f("cliff-harmful", "harmful prompt sets: names or files, comma-separated")
    harmless: str = _f("cliff-harmless", "harmless prompt sets (over-refusal, probe negatives)")
    asr_prompts: str | None = _f(
        None,
        "the harmful prompt sets (a subset of --harmful) on which the ablation stage measures ASR; "
        "default: all harmful prompts",
    )
    rollouts: str | None = _f(None, "import rollouts (JSONL: prompt + output) instead of generating")
    template: str | None = _f(None, "reasoning template (default: the model's)")
    n_harmful: int | None = _f(64, "number of harmful prompts (split evenly over the sets)")
    n_harmless: int | None = _f(64, "number of harmless prompts")
    max_new_tokens: int = _f(256, "generation budget per rollout")
    batch_size: int = _f(8, "batch size of generation and forwards")
    seed: int = _f(0, "random seed (generation, probe, random heads)")
    device: str = _f("cpu", "torch device")
    dtype: Validated[Dtype] = _f("float32", "model dtype")
    judge_mode: Validated[JudgeMode] = _f(
        "start", "keyword judge: refusal phrase at the start of the answer or anywhere"
    )
    probe_layer: int | None = _f(
        None, "probe blocks.L.hook_resid_post (default: the final norm with its weight, the paper's)"
    )
    probe_method: Validated[ProbeMethod] = _f("logistic", "probe fitting method")
    cv_folds: int = _f(5, "folds of the probe's cross-fitting (out-of-sample scores and metrics)")
    plateau_window: int = _f(16, "late-thinking tokens averaged into the plateau score")
    layer_stride: int = _f(4, "score trajectories at every N-th layer (and the last)")
    cliff_threshold: float | int = _f(
        0.3, "a rollout 'has a cliff' when plateau - final >= this (results only)"
    )
    head_variant: Validated[HeadVariant | None] = _f(
        None, "head score (default: norm_aware for final-norm probes, else raw)"
    )
    top_percents: Validated[tuple[float, ...]] = _f(
        (3.0,),
        "percent of heads to rank and ablate, comma-separated (the first is the headline)",
        flag="--top-percent",
    )
    random_seeds: int = _f(
        19,
        "random head sets per percent and null (uniform, layer-matched); fix it before the run: "
        "19 is the fewest for which the empirical p can reach 0.05",
    )
    selection_folds: int = _f(
        2,
        "harmful requests are dealt into this many folds; each fold's ASR prompts are ablated with "
        "heads ranked on the other folds' requests (held-out selection)",
    )
    in_sample_ablation: bool = _f(
        True, "also ablate the top-k% heads ranked on all rollouts (in-sample, labelled as such)"
    )
    layer_matched_null: bool = _f(
        True, "a second null: random sets with the top set's per-layer head counts, per fold"
    )
    random_harmless: bool = _f(
        False, "also generate the harmless prompts under every random set (their over-refusal)"
    )
    stability_boot: int = _f(
        200, "bootstrap replicates over requests for how often each top head stays in the top set"
    )
    ablation_batch_size: int | None = _f(
        None,
        "rows (prompt x setting) per forward pass when the ablation settings are generated side by "
        "side (default: 4 x --batch-size; on a GPU, as many as fit)",
    )
    ablation_mode: Validated[AblationMode] = _f("mean", "head ablation mode")
    n_ablation: int | None = _f(32, "prompts per group (harmful, harmless) in the ablation stage")
    ablation_max_new_tokens: int | None = _f(None, "generation budget of the ablation stage")
    contrast_ablation: bool = _f(
        True,
        "also ablate the top-k% heads by contrast (complied minus refused write), paired with the paper's",
    )
    selection_percent: float | int = _f(10.0, "Cliff-as-a-Judge: percent of harmful rollouts to select")
    selection_variant: Validated[SelectionVariant] = _f("cliff", "Cliff-as-a-Judge misalignment score")

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.top_percents = tuple(float(p) for p in self.top_percents)
        problems = [*_literal_problems(self), *_range_problems(self)]
        if problems:
            raise ConfigError("invalid run configuration: " + "; ".join(problems))

    @property
    def top_percent(self) -> float:
        """The headline percent of heads (the first of ``top_percents``)."""
        return self.top_percents[0]

    def to_json(self) -> dict:
        """The configuration as JSON (``run.json``'s ``config``)."""
        d = asdict(self)
        d["out"] = str(self.out)
        d["top_percents"] = list(self.top_percents)
        return d

    @classmethod
    def from_json(cls, d: dict) -> RunConfig:
        """Read :meth:`to_json` output (unknown keys of older versions are ignored)."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "top_percent" in d and "top_percents" not in d:  # run.json of version 0.1 (one percent)
            kw["top_percents"] = (d["top_percent"],)
        kw["top_percents"] = tuple(kw.get("top_percents", (3.0,)))
        return cls(**kw)


def _field_type(name: str) -> Any:
    """The annotation of a :class:`RunConfig` field as mypy reads it (``Validated[X]`` is ``X``)."""
    return static_type_hints(RunConfig)[name]


def _literal_choices(tp: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal[...]`` (or ``Literal[...] | None``) annotation."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for a in typing.get_args(tp):
            if typing.get_origin(a) is Literal:
                return typing.get_args(a)
    return None


def _literal_problems(cfg: RunConfig) -> list[str]:
    out = []
    for f in fields(cfg):
        choices = _literal_choices(_field_type(f.name))
        v = getattr(cfg, f.name)
        if choices is not None and v is not None and v not in choices:
            out.append(f"{f.name}={v!r} is not one of {', '.join(map(str, choices))}")
    return out


def _range_problems(c: RunConfig) -> list[str]:
    out = []

    def need(ok: bool, msg: str) -> None:
        if not ok:
            out.append(msg)

    need(bool(str(c.model).strip()), "model is empty; name a model (see `cliff-lens models`)")
    need(len(c.top_percents) > 0, "top_percents is empty; give at least one percent, e.g. 3")
    for p in c.top_percents:
        need(0 < p <= 100, f"top percent {p:g} must be in (0, 100]")
    need(0 < c.selection_percent <= 100, f"selection_percent {c.selection_percent:g} must be in (0, 100]")
    for name in ("n_harmful", "n_harmless", "n_ablation", "ablation_max_new_tokens", "ablation_batch_size"):
        v = getattr(c, name)
        need(v is None or v >= 1, f"{name}={v} must be at least 1 (or unset)")
    for name in ("max_new_tokens", "batch_size", "plateau_window", "layer_stride"):
        v = getattr(c, name)
        need(v >= 1, f"{name}={v} must be at least 1")
    need(c.random_seeds >= 0, f"random_seeds={c.random_seeds} must be 0 or more")
    need(c.cv_folds >= 2, f"cv_folds={c.cv_folds} must be at least 2")
    need(c.selection_folds >= 2, f"selection_folds={c.selection_folds} must be at least 2")
    need(c.stability_boot >= 0, f"stability_boot={c.stability_boot} must be 0 or more")
    need(c.probe_layer is None or c.probe_layer >= 0, f"probe_layer={c.probe_layer} must be 0 or more")
    if c.asr_prompts is not None:
        harmful = {s.strip().partition(":")[0] for s in c.harmful.split(",")}
        extra = [s for s in c.asr_prompts.split(",") if s.strip().partition(":")[0] not in harmful]
        need(not extra, f"asr_prompts names {extra}, which are not among --harmful {c.harmful!r}")
    return out


def demo_config(out: Path, *, quick: bool = False) -> RunConfig:
    """The demo: the embedded cliff organism on the package's own held-out prompts (offline).

    Harmful prompts are half plain requests, half the same kind of requests in jailbreak
    framings (``cliff-jailbreak``); the ablation stage measures ASR on the framed ones.
    """
    common: dict[str, Any] = dict(
        model="cliff-organism",
        out=Path(out),
        harmful="cliff-harmful,cliff-jailbreak",
        harmless="cliff-harmless",
        asr_prompts="cliff-jailbreak",
        max_new_tokens=80,
        ablation_max_new_tokens=80,
        batch_size=16,
    )
    if quick:
        return RunConfig(**common, n_harmful=8, n_harmless=8, random_seeds=1, n_ablation=4, stability_boot=20)
    # 32 framed + 32 plain harmful: ASR on the 32 framed, heads ranked out of sample (two folds of
    # requests); 48 harmless: half for the head means, half for over-refusal and KL; 19 random
    # sets per null, fixed here before any run, so that the empirical p can reach 0.05
    return RunConfig(**common, n_harmful=64, n_harmless=48, random_seeds=19, n_ablation=32)


# -- the command line is the config ------------------------------------------------------------
def _flag(f: Any) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _parser_type(tp: Any) -> Any:
    """argparse ``type=`` for a field annotation (``X | None`` parses as ``X``)."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_args(tp) else [tp]
    if float in args and int in args:  # ``float | int``: a number, parsed as a float
        args.remove(int)
    base = args[0] if len(args) == 1 else tp
    if typing.get_origin(base) is tuple:
        return lambda s: tuple(float(x) for x in s.split(",") if x.strip())
    if typing.get_origin(base) is Literal:
        return str
    if base is bool:
        return _parse_bool
    return base if base in (int, float, str, Path) else str


def _parse_bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{s!r} is not a boolean; use true or false")


def add_config_arguments(p: argparse.ArgumentParser, *, required: tuple[str, ...] = ("model", "out")) -> None:
    """Add one flag per :class:`RunConfig` field (unset flags keep the field's default)."""
    for f in fields(RunConfig):
        tp = _field_type(f.name)
        kw: dict[str, Any] = {"dest": f.name, "type": _parser_type(tp), "default": None}
        choices = _literal_choices(tp)
        if choices is not None:
            kw["choices"] = choices
        default = None if f.default is MISSING else f.default
        if isinstance(default, tuple):
            default = ",".join(f"{x:g}" for x in default)
        help_ = f.metadata.get("help", "")
        kw["help"] = (help_ + (f" (default: {default})" if default is not None else "")).replace("%", "%%")
        if f.name in required:
            kw["required"] = True
        p.add_argument(_flag(f), **kw)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The :class:`RunConfig` of parsed :func:`add_config_arguments` flags."""
    kw = {f.name: getattr(args, f.name) for f in fields(RunConfig) if getattr(args, f.name, None) is not None}
    return RunConfig(**kw)
