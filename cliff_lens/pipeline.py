"""The end-to-end analysis: a registry of resumable stages writing one run directory.

Each stage is declared once, as a :class:`Stage` in :data:`STAGES`: its name, its CLI
subcommand, the stages it reads, the :class:`~cliff_lens.config.RunConfig` fields its
fingerprint covers, the files it writes and the function that runs it. The CLI subcommands and
``run.json`` fingerprints derive from this table; ``results.json`` is assembled section by section
from :data:`cliff_lens.results_schema.SECTIONS` (each section's schema, stage and files, declared
once), one builder per section reading the stage files through their typed loaders::

    rollouts -> labels -> probe -> trajectories -> selection
                              \-> heads -> ablation          -> report (reads all)

``run.json`` records the configuration and, per stage, a fingerprint of its inputs (the
configuration fields it covers plus the fingerprints of the stages it reads). A stage whose
fingerprint and outputs are unchanged is skipped, so re-running the same command resumes a
killed run, and ``run_stage(dir, "heads")`` re-runs one stage alone.

To add a stage: write ``_stage_x(run)`` (reads its inputs through their typed loaders, writes
its files atomically) and add one :class:`Stage` line to :data:`STAGES`; the CLI gets the
subcommand ``cliff-lens x DIR``. Its ``results.json`` section is one :class:`~cliff_lens.results_schema.Section` in
``results_schema.SECTIONS`` plus its builder in :func:`_section_builders`.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from .config import RunConfig, demo_config
from .io import JsonlError, atomic_write_json, hash_obj, iter_jsonl, sha256_file, write_jsonl
from .summary import summary

if TYPE_CHECKING:
    from torch import Tensor

    from .config import HeadVariant
    from .data import Prompt

__all__ = [
    "RunConfig",
    "Stage",
    "STAGES",
    "get_stage",
    "run",
    "run_stage",
    "demo_config",
    "summary",
    "RunDirError",
    "write_results",
    "CliffRow",
    "read_cliff_rows",
    "HeadsFile",
]

log = logging.getLogger("cliff_lens")


class RunDirError(ValueError):
    """The run directory cannot be used (another model's run, a missing stage input, ...)."""


# -- run directory state ---------------------------------------------------------------------
@dataclass
class _Run:
    cfg: RunConfig
    state: dict = field(default_factory=dict)
    model: Any = None
    cache: dict = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.cfg.out

    def path(self, name: str) -> Path:
        return self.out / name

    def get_model(self) -> Any:
        if self.model is None:
            from .models import load_model

            log.info("loading %s ...", self.cfg.model)
            self.model = load_model(
                self.cfg.model, device=self.cfg.device, dtype=self.cfg.dtype, template=self.cfg.template
            )
            _check_model_settings(self.cfg, self.model)
        return self.model

    def save_state(self) -> None:
        atomic_write_json(self.path("run.json"), self.state)


def _check_model_settings(cfg: RunConfig, model: Any) -> None:
    """Settings that need the model's shape, checked as soon as it is loaded (before compute)."""
    n = model.cfg.n_layers
    if cfg.probe_layer is not None and cfg.probe_layer >= n:
        raise RunDirError(f"probe_layer={cfg.probe_layer} but {cfg.model} has {n} layers (0..{n - 1})")


def _read_json(path: Path) -> dict:
    """Read a run-directory JSON file; a corrupt one raises :class:`RunDirError` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(
            f"{path} is corrupt ({e}); re-run the stage that writes it (`cliff-lens <stage> DIR --force`) "
            "or delete the run directory"
        ) from None


def _load_state(cfg: RunConfig) -> dict:
    path = cfg.out / "run.json"
    if not path.exists():
        return {"format": "cliff_lens.run", "version": 1, "config": cfg.to_json(), "stages": {}}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path} is corrupt ({e}); delete it to start the run over") from None
    prev = state.get("config", {}).get("model")
    if prev is not None and prev != cfg.model:
        raise RunDirError(
            f"run directory {cfg.out} holds a run of model {prev!r}, not {cfg.model!r}; "
            "choose another --out or delete the directory"
        )
    state["config"] = cfg.to_json()
    state.setdefault("stages", {})
    return state


def _stage_inputs(run: _Run, stage: Stage, *, without: tuple[str, ...] = ()) -> dict[str, Any]:
    """What a stage's outputs depend on: its config fields (less ``without``) and the fingerprints
    of the stages it reads."""
    cfg = run.cfg.to_json()
    return {
        "config": {k: cfg.get(k) for k in stage.config if k not in without},
        "deps": {d: run.state["stages"].get(d, {}).get("fingerprint") for d in stage.reads},
    }


def _fingerprint(run: _Run, stage: Stage) -> str:
    parts: dict[str, Any] = {"stage": stage.name, **_stage_inputs(run, stage)}
    if stage.name == "rollouts" and run.cfg.rollouts:
        parts["import_sha256"] = sha256_file(run.cfg.rollouts)
    return hash_obj(parts)


def _outputs_exist(run: _Run, stage: Stage) -> bool:
    return all(run.path(n).exists() for n in stage.outputs)


def _run_one(run: _Run, stage: Stage, *, force: bool = False) -> None:
    for dep in stage.reads:
        if dep not in run.state["stages"] or not _outputs_exist(run, get_stage(dep)):
            raise RunDirError(
                f"stage {stage.name!r} needs the output of stage {dep!r} in {run.out}, which is missing; "
                f"run `cliff-lens run ... --out {run.out}` (or `cliff-lens {get_stage(dep).command} "
                f"{run.out}`) first"
            )
    fp = _fingerprint(run, stage)
    rec = run.state["stages"].get(stage.name, {})
    if not force and rec.get("fingerprint") == fp and rec.get("finished") and _outputs_exist(run, stage):
        log.info("%s: up to date, skipped", stage.name)
        return
    log.info("%s ...", stage.name)
    run.state["stages"][stage.name] = {"fingerprint": fp, "finished": False}
    run.save_state()
    for name in stage.outputs:  # what typed loaders read before is rewritten now
        run.cache.pop(name, None)
    t0 = time.perf_counter()
    stage.run(run)
    run.state["stages"][stage.name] = {
        "fingerprint": fp,
        "finished": True,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    run.save_state()


def run(cfg: RunConfig, *, stages: tuple[str | Stage, ...] | None = None) -> dict:
    """Run (or resume) every stage of ``cfg`` (or the given ``stages``); return ``results.json``."""
    todo = [s if isinstance(s, Stage) else get_stage(s) for s in (stages or STAGES)]
    cfg.out.mkdir(parents=True, exist_ok=True)
    r = _Run(cfg, _load_state(cfg))
    r.save_state()
    for stage in todo:
        _run_one(r, stage)
    return _write_results(r)


def open_run_dir(out: str | Path) -> RunConfig:
    """The configuration of an existing run directory; refuses a directory without ``run.json``."""
    out = Path(out)
    path = out / "run.json"
    if not path.is_file():
        raise RunDirError(
            f"{out} is not a run directory (no run.json); start one with `cliff-lens run --out {out}` "
            "(nothing was written)"
        )
    cfg = RunConfig.from_json(_read_json(path).get("config", {}) | {"out": str(out)})
    return cfg


def run_stage(out: str | Path, stage: str, *, force: bool = True) -> dict:
    """Re-run one stage (by name or CLI command) of an existing run directory (its inputs must exist).

    The report is rebuilt afterwards when the run has one. A directory without ``run.json`` is
    refused before anything is written.
    """
    st = get_stage(stage)
    cfg = open_run_dir(out)
    r = _Run(cfg, _load_state(cfg))
    _run_one(r, st, force=force)
    if st.name != "report" and "report" in r.state["stages"]:
        _run_one(r, get_stage("report"), force=True)
    return _write_results(r)


# -- prompt sets -----------------------------------------------------------------------------
def _load_set(spec: str, n: int | None, *, harmful: bool) -> list:
    """The prompts of a comma-separated set spec, ``n`` in all (split evenly over the sets).

    Package sets default to their test split: their training split taught the organism.
    Each prompt records the set it came from in ``meta["prompt_set"]``.
    """
    from .data import PACKAGE_SETS, load_prompts

    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError(f"empty prompt-set spec {spec!r}; name a set such as cliff-harmful or a file")
    per = None if n is None else max(1, -(-n // len(names)))
    out: list[Prompt] = []
    for name in names:
        base, _, split = name.partition(":")
        if not split and (base in PACKAGE_SETS or base == "cliff-jailbreak"):
            split = "test"
        ps = load_prompts(base, split=split or None)
        ps = ps[:per] if per is not None else ps
        for p in ps:
            if p.harmful is None:
                p.harmful = harmful
            p.meta["prompt_set"] = base
        out.extend(ps)
    if not out:
        raise ValueError(f"prompt set {spec!r} is empty; check the name or file")
    return out


# -- stages ----------------------------------------------------------------------------------
def _stage_rollouts(run: _Run) -> None:
    from .data import write_rollouts
    from .rollout import generate_rollouts, import_rollouts

    path = run.path("rollouts.jsonl")
    cfg = run.cfg
    if cfg.rollouts:
        rs = import_rollouts(cfg.rollouts, template=cfg.template or "generic")
        write_rollouts(path, rs)
        return
    model = run.get_model()
    prompts = _load_set(cfg.harmful, cfg.n_harmful, harmful=True) + _load_set(
        cfg.harmless, cfg.n_harmless, harmful=False
    )
    rs = generate_rollouts(
        model,
        prompts,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        out=path,
        template=cfg.template,
    )
    # the file doubles as the resume log; afterwards it holds exactly this configuration's rollouts
    write_rollouts(path, rs)


def _read_rollouts(run: _Run) -> list:
    if "rollouts" not in run.cache:
        from .data import read_rollouts

        run.cache["rollouts"] = list(read_rollouts(run.path("rollouts.jsonl")))
    return run.cache["rollouts"]


def _judge(run: _Run) -> Any:
    """The run's judge: the one used for labels and for every ASR of the ablation stage."""
    from .judges import KeywordJudge

    return KeywordJudge(mode=run.cfg.judge_mode)


def _stage_labels(run: _Run) -> None:
    from .judges import label_rollouts

    labelled = label_rollouts(_read_rollouts(run), _judge(run))
    write_jsonl(
        run.path("labels.jsonl"),
        [
            {
                "id": r.id,
                "harmful": r.harmful,
                "refused": r.refused,
                "thinking_closed": r.thinking_closed,
                "outcome": r.meta.get("judge", {}).get("outcome"),
                "reason": r.meta.get("judge", {}).get("reason"),
            }
            for r in labelled
        ],
    )


def _labelled(run: _Run) -> list:
    rs = _read_rollouts(run)
    labels = {d["id"]: d for d in iter_jsonl(run.path("labels.jsonl"))}
    for r in rs:
        if r.id in labels:
            r.refused = labels[r.id]["refused"]
    return rs


def _request_ids(rs: list) -> list[str]:
    """The request id of each rollout (its phrasings and framings share it): what every split,
    fold and held-out claim of a run groups by."""
    from .data import fallback_request_id

    return [getattr(r, "request_id", None) or fallback_request_id(r.prompt, r.meta) for r in rs]


def _template(run: _Run) -> Any:
    from .templates import get_template

    return get_template(run.cfg.template or getattr(run.get_model(), "cliff_template", "generic"))


def _tokenized(run: _Run, rollouts: list) -> list:
    tok = run.get_model().tokenizer
    t = _template(run)
    return [t.tokenize(tok, r.prompt, r.thinking or "", "").truncate() for r in rollouts]


def _probe_hook(cfg: RunConfig) -> tuple[str, int | None]:
    if cfg.probe_layer is None:
        return "final_norm_weighted", None
    return "blocks.{L}.hook_resid_post", cfg.probe_layer


def _stage_probe(run: _Run) -> None:
    from .activations import extract_activations
    from .probe import RefusalProbe

    rs = [r for r in _labelled(run) if r.thinking_closed]
    pos = [r for r in rs if r.harmful and r.refused]
    neg = [r for r in rs if r.harmful is False and r.refused is False]
    if len(pos) < 2 or len(neg) < 2:
        raise RunDirError(
            f"the probe needs refused harmful and helped harmless rollouts; got {len(pos)} and {len(neg)} "
            f"(of {len(rs)} with closed thinking). Use more prompts (--n-harmful/--n-harmless), a larger "
            "--max-new-tokens so that thinking closes, or import rollouts with --rollouts"
        )
    model = run.get_model()
    hook, layer = _probe_hook(run.cfg)
    acts = extract_activations(
        model,
        _tokenized(run, pos + neg),
        hook=hook,
        layer=layer,
        positions="last",
        batch_size=run.cfg.batch_size,
    )
    acts = cast("Tensor", acts)  # one position per rollout: a single [n, d_model] tensor
    labels = [1] * len(pos) + [0] * len(neg)
    train = pos + neg
    # k-fold cross-fitting: every training rollout is later scored by a fold probe that did not
    # see it; the final probe (for every other rollout and for new data) is fit on all of them
    folds = RefusalProbe.cross_fit(
        acts,
        labels,
        k=run.cfg.cv_folds,
        groups=_request_ids(train),
        ids=[r.id for r in train],
        seed=run.cfg.seed,
        method=run.cfg.probe_method,
        hook=hook,
        layer=layer,
        position_rule="last token of prompt+thinking+end_of_thinking",
        model=model,
        meta={"n_refusal": len(pos), "n_non_refusal": len(neg)},
    )
    folds.final.save(run.path("probe"))
    folds.save(run.path("probe_folds"))


def _load_probe(run: _Run) -> Any:
    from .probe import RefusalProbe

    if "probe" not in run.cache:
        run.cache["probe"] = RefusalProbe.load(run.path("probe"), model=run.get_model())
    return run.cache["probe"]


def _load_folds(run: _Run) -> Any:
    from .probe import CrossFit

    return CrossFit.load(run.path("probe_folds"), model=run.get_model(), final=_load_probe(run))


def _group(r: Any) -> str:
    """``harmful_refused`` / ``harmful_complied`` / ``harmless_refused`` / ``harmless_helped``, or
    ``..._no_answer`` for a rollout whose answer is empty (the one rule of :func:`judges.outcome`)."""
    kind = "harmful" if r.harmful else "harmless"
    if r.refused is None:
        return f"{kind}_no_answer"
    if r.harmful:
        return "harmful_refused" if r.refused else "harmful_complied"
    return "harmless_refused" if r.refused else "harmless_helped"


def _stage_trajectories(run: _Run) -> None:
    """Per-token scores of every rollout from a probe that did not see it (cross-fitted)."""
    from .trajectory import cliff_metrics, compute_trajectories, save_trajectories

    model = run.get_model()
    probe = _load_probe(run)
    folds = _load_folds(run)
    rs = [r for r in _labelled(run) if r.thinking_closed]
    n = model.cfg.n_layers
    layers = sorted({*range(0, n, max(1, run.cfg.layer_stride)), n - 1})
    layer_input: Literal["resid", "final_norm"] = (
        "final_norm" if probe.hook == "final_norm_weighted" else "resid"
    )
    probe_row = n - 1 if probe.layer is None else probe.layer
    if probe_row not in layers:
        raise RunDirError(f"probe layer {probe_row} not in the scored layers {layers}")
    toks = _tokenized(run, rs)
    trajs: list[Any] = [None] * len(rs)
    fold_of: list[int | None] = [None] * len(rs)
    for fold, p, where in folds.split_by_probe([r.id for r in rs], groups=_request_ids(rs)):
        part = compute_trajectories(
            model,
            [toks[i] for i in where],
            p,
            layers=layers,
            layer_input=layer_input,
            batch_size=run.cfg.batch_size,
        )
        for i, t in zip(where, part):
            trajs[i], fold_of[i] = t, fold
    for t, r in zip(trajs, rs):
        t.id = r.id
    save_trajectories(
        run.path("trajectories"),
        trajs,
        meta={
            "probe_layer": probe_row,
            "layer_input": layer_input,
            "groups": [_group(r) for r in rs],
            "harmful": [bool(r.harmful) for r in rs],
            "scored_by": "out-of-sample: each rollout by a cross-fitted probe that did not see it",
        },
    )
    ms = cliff_metrics(trajs, layer=probe_row, plateau_window=run.cfg.plateau_window)
    write_jsonl(
        run.path("cliff.jsonl"),
        [
            {
                **m.to_dict(),
                "id": r.id,
                "group": _group(r),
                "harmful": r.harmful,
                "refused": r.refused,
                "probe_fold": "final" if f is None else f,
            }
            for m, r, f in zip(ms, rs, fold_of)
        ],
    )


def _head_variant(run: _Run, probe: Any) -> HeadVariant:
    return run.cfg.head_variant or ("norm_aware" if probe.hook == "final_norm_weighted" else "raw")


def _stage_heads(run: _Run) -> None:
    """Rank heads three ways, all from one attribution pass over the closed harmful rollouts
    (each attributed with the fold probe that did not see it): in sample (all rollouts; the
    paper's figure), cross-fitted by request (each fold's heads ranked on the other folds'
    requests: the held-out sets the ablation stage measures), and their stability under a
    bootstrap over requests. Head means come from half of the harmless requests; the other half
    is left for over-refusal and the KL cost."""
    from .ablation import compute_head_means, save_head_means
    from .heads import rank_heads

    cfg = run.cfg
    model = run.get_model()
    probe = _load_probe(run)
    rs = [r for r in _labelled(run) if r.thinking_closed]
    harmful = [r for r in rs if r.harmful]
    harmless = [r for r in rs if r.harmful is False]
    if not harmful or not harmless:
        raise RunDirError(
            "head attribution needs harmful rollouts and harmless ones (for the ablation means)"
        )
    variant = _head_variant(run, probe)
    per = _attributions(run, harmful, variant)
    scores = per.mean(0)  # the paper's score: mean write over all harmful rollouts (in sample)
    ranking = rank_heads(
        scores, cfg.top_percent, variant=variant, n_rollouts=len(harmful), positions="end_of_thinking"
    )
    d = ranking.to_dict()
    d.update(_contrast_fields(run, per, harmful))
    d.update(_held_out_fields(run, per, harmful))
    atomic_write_json(run.path("heads.json"), d)
    reference, measure = _harmless_halves(run, harmless)
    means = compute_head_means(model, _tokenized(run, reference), positions="all", batch_size=cfg.batch_size)
    save_head_means(
        run.path("head_means.safetensors"),
        means,
        meta={
            "reference": "harmless rollouts of the reference requests, all positions",
            "reference_requests": sorted(set(_request_ids(reference))),
            "measure_requests": sorted(set(_request_ids(measure))),
            "reference_ids": [r.id for r in reference],
        },
    )


def _attributions(run: _Run, harmful: list, variant: HeadVariant) -> Tensor:
    """Per-rollout head attributions ``[n, n_layers, n_heads]`` at the end-of-thinking tokens,
    each rollout read with the probe that did not see it (the trajectories' rule)."""
    import torch

    from .heads import head_attributions

    model = run.get_model()
    toks = _tokenized(run, harmful)
    parts: list[tuple[list[int], Tensor]] = []
    for _, p, where in _load_folds(run).split_by_probe([r.id for r in harmful], groups=_request_ids(harmful)):
        part = head_attributions(
            model,
            [toks[i] for i in where],
            p,
            positions="end_of_thinking",
            variant=variant,
            batch_size=run.cfg.batch_size,
            per_example=True,
        )
        parts.append((where, part))
    cfg = model.cfg
    per = torch.full((len(harmful), cfg.n_layers, cfg.n_heads), float("nan"))
    for where, part in parts:
        per[where] = part.float()
    return per


def _contrast_score(harmful: list) -> Callable[[Tensor, list[int]], Tensor]:
    """The contrast ranking's score (complied minus refused mean write) of a subset of rows."""
    from .heads import contrast_scores

    refused = [r.refused for r in harmful]
    return lambda rows, idx: contrast_scores(rows, [refused[i] for i in idx])


def _has_both(harmful: list, idx: list[int] | range) -> bool:
    outs = {harmful[i].refused for i in idx}
    return True in outs and False in outs


def _contrast_fields(run: _Run, per: Tensor, harmful: list) -> dict[str, Any]:
    """The in-sample complied-only mean and complied-minus-refused contrast of ``heads.json``."""
    from .heads import rank_heads

    complied = [i for i, r in enumerate(harmful) if r.refused is False]
    extra: dict[str, Any] = {"scores_complied": per[complied].mean(0).tolist()} if complied else {}
    if _has_both(harmful, range(len(harmful))):
        # complied minus refused: where the paper's mean cancels, the contrast does not
        contrast = _contrast_score(harmful)(per, list(range(len(harmful))))
        extra["scores_contrast"] = contrast.tolist()
        extra["contrast_heads"] = [list(t) for t in rank_heads(contrast, run.cfg.top_percent).suppression]
    return extra


def _held_out_fields(run: _Run, per: Tensor, harmful: list) -> dict[str, Any]:
    """``cross_fit`` (per ranking and percent: each fold's heads, ranked on the other folds'
    requests) and ``stability`` (per ranking: how often each in-sample top head stays in the
    top set under a bootstrap over requests) of ``heads.json``."""
    from .heads import suppression_heads
    from .heldout import cross_fit_head_sets, request_folds, selection_stability, stability_of

    cfg = run.cfg
    req = _request_ids(harmful)
    k = min(cfg.selection_folds, len(set(req)))
    if k < 2:
        raise RunDirError(
            f"held-out head selection needs harmful rollouts of at least 2 requests; got {len(set(req))}. "
            "Use more harmful prompts (--n-harmful)"
        )
    folds = request_folds(req, k=k, seed=cfg.seed)
    scorers: dict[str, Any] = {"paper": None}
    if all(_has_both(harmful, [i for i, f in enumerate(folds) if f != g]) for g in range(k)):
        scorers["contrast"] = _contrast_score(harmful)
    cross: dict[str, Any] = {}
    stab: dict[str, Any] = {}
    for name, score in scorers.items():
        cross[name] = {
            f"{p:g}": cross_fit_head_sets(per, req, p, k=k, seed=cfg.seed, score=score).to_dict()
            for p in cfg.top_percents
        }
        if cfg.stability_boot:
            try:
                freq = selection_stability(
                    per, req, cfg.top_percent, score=score, n_boot=cfg.stability_boot, seed=cfg.seed
                )
            except ValueError as e:  # a replicate without complied (or refused) rollouts
                stab[name] = {"skipped": str(e).split(";")[0]}
                continue
            full = (score or (lambda rows, idx: rows.mean(0)))(per, list(range(len(harmful))))
            top = [(int(la), int(h)) for la, h, _ in suppression_heads(full, cfg.top_percent)]
            stab[name] = {
                "top_percent": cfg.top_percent,
                "n_boot": cfg.stability_boot,
                "resampled": "requests, with replacement",
                "heads": [list(h) for h in top],
                "frequency": stability_of(top, freq),
            }
    return {"cross_fit": cross, "stability": stab, "request_ids": req}


def _harmless_halves(run: _Run, harmless: list) -> tuple[list, list]:
    """Harmless rollouts split by request: a reference for the head means, and the rest, which
    measure over-refusal and the KL cost (never the reference's requests)."""
    from .heldout import request_folds

    req = _request_ids(harmless)
    if len(set(req)) < 2:
        raise RunDirError(
            f"the harmless rollouts come from {len(set(req))} request(s); the head means and the "
            "over-refusal need disjoint requests, so use at least 2 harmless prompts of different requests"
        )
    folds = request_folds(req, k=2, seed=run.cfg.seed)
    return [r for r, f in zip(harmless, folds) if f == 0], [r for r, f in zip(harmless, folds) if f == 1]


def _in_asr_sets(cfg: RunConfig, r: Any) -> bool:
    """Is harmful rollout ``r`` one of the prompts the ASR is measured on (``cfg.asr_prompts``)?"""
    if cfg.asr_prompts is None:
        return True
    names = {s.strip().partition(":")[0] for s in cfg.asr_prompts.split(",")}
    return r.meta.get("prompt_set", r.source) in names


def _stage_ablation(run: _Run) -> None:
    """ASR (framed harmful prompts) and over-refusal (harmless prompts of the requests the head
    means did not use) under every setting, generated side by side: the baseline, each ranking's
    held-out top-k% (a prompt is ablated with heads ranked without its request), the in-sample
    top-k% (labelled), and the uniform and layer-matched random nulls."""
    from .ablation import load_head_means
    from .evaluate import AblationResults, attack_success

    cfg = run.cfg
    model = run.get_model()
    probe = _load_probe(run)
    heads = _load_heads(run)
    rs = _labelled(run)
    n = cfg.n_ablation
    means_meta = _head_means_meta(run)
    measure = set(means_meta.get("measure_requests") or [])
    harmful = [r for r in rs if r.harmful and _in_asr_sets(cfg, r)]
    harmless = [r for r in rs if r.harmful is False]
    if measure:  # never the requests whose rollouts gave the head means
        harmless = [r for r, q in zip(harmless, _request_ids(harmless)) if q in measure]
    harmful, harmless = harmful[:n] if n else harmful, harmless[:n] if n else harmless
    max_new_tokens = cfg.ablation_max_new_tokens or cfg.max_new_tokens
    # The rollouts stage already decoded these prompts greedily with no hooks: when it used the same
    # budget, its rollouts are the baseline and the stage only generates the ablated settings.
    reuse = not cfg.rollouts and max_new_tokens == cfg.max_new_tokens
    means = load_head_means(run.path("head_means.safetensors"), model=model)
    key = _ablation_reuse_key(run)
    previous = _previous_ablation(run, key)
    folds = _prompt_folds(heads, _request_ids(harmful), _request_ids(harmless), cfg.seed)
    rows = attack_success(
        model,
        [r.prompt for r in harmful],
        [r.prompt for r in harmless],
        baseline_rollouts=harmful + harmless if reuse else None,
        top_percents=cfg.top_percents,
        random_seeds=tuple(range(cfg.random_seeds)),
        mode=cfg.ablation_mode,
        means=means,
        probe=probe,
        max_new_tokens=max_new_tokens,
        batch_size=cfg.ablation_batch_size or 4 * cfg.batch_size,
        seed=cfg.seed,
        progress=True,
        template=cfg.template,
        judge=_judge(run),
        fold_settings=_fold_settings(run, heads, model.cfg.n_heads),
        prompt_folds=folds,
        random_harmless=cfg.random_harmless,
        previous=previous.rows if previous is not None else None,
    )
    results = AblationResults.from_rows(
        rows,
        meta={
            "mode": cfg.ablation_mode,
            "n_harmful": len(harmful),
            "n_harmless": len(harmless),
            "harmful_source": cfg.asr_prompts or cfg.harmful,
            "baseline_source": "rollouts stage" if reuse else "generated",
            "reuse_key": key,
            "design": _design_meta(heads, harmful, harmless, means_meta),
        },
    )
    _compare_rankings(results)
    _add_capability_cost(run, results, harmless, means)
    _add_holm(results)
    results.save(run.path("ablation.json"))


def _head_means_meta(run: _Run) -> dict:
    """The head means' metadata (``head_means.json``: which requests they were computed on)."""
    p = run.path("head_means.json")
    return _read_json(p) if p.exists() else {}


def _prompt_folds(heads: Any, harmful_req: list[str], harmless_req: list[str], seed: int) -> list[int]:
    """The fold of every ASR prompt (its request's fold in the heads stage's cross-fit) and of
    every harmless prompt (its own request folds): prompt j is ablated with the heads of its fold,
    ranked on the other folds' requests. A harmful request the heads stage did not see (its
    rollout's thinking never closed) takes fold 0: neither fold's heads were ranked on it."""
    from .heldout import CrossFitHeads, request_folds

    cf = heads.cross_fit.get("paper") or {}
    first = next(iter(cf.values()), None)
    if first is None:
        return [0] * (len(harmful_req) + len(harmless_req))
    c = CrossFitHeads.from_dict(first)
    fold_of = {q: f for f, qs in enumerate(c.measured_on) for q in qs}
    k = c.k
    ben = (
        request_folds(harmless_req, k=k, seed=seed)
        if len(set(harmless_req)) >= k
        else [0] * len(harmless_req)
    )
    return [fold_of.get(q, 0) for q in harmful_req] + ben


def _fold_settings(run: _Run, heads: Any, n_heads: int) -> list[dict]:
    """Every setting whose heads depend on the prompt's fold: each ranking's held-out top-k%
    (``top-3%``, ``top-3% contrast``), the in-sample top-k% (``top-3% in-sample``: the same set
    for every fold) and the layer-matched random sets of the paper ranking's held-out top-k%."""
    from .heads import suppression_heads
    from .heldout import CrossFitHeads, layer_matched_heads

    cfg = run.cfg
    out: list[dict] = []
    for name, by_pct in heads.cross_fit.items():
        if name == "contrast" and not cfg.contrast_ablation:
            continue
        for pct in cfg.top_percents:
            c = CrossFitHeads.from_dict(by_pct[f"{pct:g}"])
            label = f"top-{pct:g}%" + ("" if name == "paper" else f" {name}")
            out.append(
                {"setting": label, "kind": "top", "top_percent": pct, "seed": None,
                 "ranking": name, "selection": "held_out", "heads_by_fold": c.heads}
            )  # fmt: skip
            if name == "paper" and cfg.in_sample_ablation:
                top = [(int(la), int(h)) for la, h, _ in suppression_heads(heads.ranking.scores, pct)]
                out.append(
                    {"setting": f"{label} in-sample", "kind": "top", "top_percent": pct, "seed": None,
                     "ranking": name, "selection": "in_sample", "heads_by_fold": [top] * c.k}
                )  # fmt: skip
            if name == "paper" and cfg.layer_matched_null:
                for s in range(cfg.random_seeds):
                    by_fold = [
                        layer_matched_heads(hs, n_heads, seed=s * c.k + f) for f, hs in enumerate(c.heads)
                    ]
                    out.append(
                        {"setting": f"random-{pct:g}% layer-matched seed {s}", "kind": "random_matched",
                         "top_percent": pct, "seed": s, "matches": label, "heads_by_fold": by_fold}
                    )  # fmt: skip
    return out


def _design_meta(heads: Any, harmful: list, harmless: list, means_meta: dict) -> dict:
    """Which requests chose each head set and which measured it, as ``ablation.json`` records it."""
    from .heldout import CrossFitHeads

    out: dict[str, Any] = {
        "asr_requests": sorted(set(_request_ids(harmful))),
        "over_refusal_requests": sorted(set(_request_ids(harmless))),
        "head_means_requests": means_meta.get("reference_requests"),
        "selection": "held out by request: prompt j is ablated with heads ranked on the other folds' requests",
    }
    for name, by_pct in heads.cross_fit.items():
        for pct, d in by_pct.items():
            c = CrossFitHeads.from_dict(d)
            out[f"{name} {pct}%"] = {"ranked_on": c.ranked_on, "measured_on": c.measured_on}
    return out


def _add_holm(results: Any) -> None:
    """``holm`` in the file's meta: the run's findings (each held-out top-k% row against the
    baseline and against each null, the contrast against the paper ranking, over-refusal) with
    their raw and Holm-adjusted p (:func:`cliff_lens.stats.holm_adjust`)."""
    from .stats import holm_adjust

    found: list[tuple[str, float]] = []
    for s in results.measured:
        r = s.row
        if r.get("kind") != "top" or r.get("selection") == "in_sample":
            continue
        vb = r.get("vs_baseline") or {}
        pairs = [
            ("ASR vs baseline (McNemar)", (vb.get("asr") or {}).get("p_value")),
            ("over-refusal vs baseline (McNemar)", (vb.get("over_refusal") or {}).get("p_value")),
            ("ASR vs uniform random sets", (r.get("vs_random") or {}).get("asr_empirical_p")),
            ("ASR vs layer-matched random sets", (r.get("vs_random_matched") or {}).get("asr_empirical_p")),
            ("ASR vs the paper ranking (McNemar)", (r.get("vs_paper_ranking") or {}).get("p_value")),
        ]
        found += [(f"{r['setting']}: {what}", float(p)) for what, p in pairs if p is not None]
    adj = holm_adjust([p for _, p in found]) if found else []
    results.meta["holm"] = [{"finding": f, "p": p, "p_holm": q} for (f, p), q in zip(found, adj)]


def _ablation_reuse_key(run: _Run) -> str:
    """What a setting's measurement depends on besides its heads: the ablation stage's fingerprint
    without the fields that only choose which settings run (``random_seeds``, ``top_percents``,
    ``contrast_ablation``). Settings of an earlier ``ablation.json`` with the same key are reused."""
    which = ("random_seeds", "top_percents", "contrast_ablation", "in_sample_ablation", "layer_matched_null")
    return hash_obj(_stage_inputs(run, get_stage("ablation"), without=which))


def _previous_ablation(run: _Run, key: str) -> Any:
    """The run's earlier ``ablation.json`` when its settings were measured the same way, else None."""
    from .evaluate import AblationResults

    path = run.path("ablation.json")
    if not path.exists():
        return None
    try:
        prev = AblationResults.load(path)
    except ValueError:  # unreadable: measure every setting again
        return None
    if prev.meta.get("reuse_key") != key:
        return None
    log.info("ablation: reusing the settings of %s that were measured the same way", path)
    return prev


def _compare_rankings(results: Any) -> None:
    """``vs_paper_ranking`` on each other ranking's top-k% row: exact McNemar of its attack
    successes against the paper's top-k% row on the same prompts."""
    from .stats import mcnemar_exact

    paper = {s.top_percent: s.row for s in results.measured if s.kind == "top" and s.setting.endswith("%")}
    for s in results.measured:
        base = paper.get(s.top_percent)
        if s.kind != "top" or base is None or s.row is base or s.row.get("selection") == "in_sample":
            continue
        m = mcnemar_exact(
            [o == "complied" for o in base["harmful_outcomes"]],
            [o == "complied" for o in s.row["harmful_outcomes"]],
        )
        s.row["vs_paper_ranking"] = {
            "paper_setting": base["setting"],
            "paper_only": m["a_only"],
            "this_only": m["b_only"],
            "p_value": m["p_value"],
        }


def _add_capability_cost(run: _Run, results: Any, harmless: list, means: Any) -> None:
    """``capability`` on every ablated setting: KL and answer log-likelihood change on the model's
    own unablated harmless rollouts, teacher-forced (:func:`cliff_lens.capability.intervention_cost`),
    under the hooks that :func:`cliff_lens.evaluate.attack_success` generated the setting with.
    A setting reused from an earlier ``ablation.json`` (measured the same way) keeps its cost."""
    from .capability import intervention_cost
    from .evaluate import prompt_heads, setting_hooks
    from .stats import bootstrap_mean

    keep = [j for j, r in enumerate(harmless) if r.thinking_closed and (r.answer or "").strip()]
    if not keep:
        return
    model = run.get_model()
    tok, tpl = model.tokenizer, _template(run)
    toks = [
        tpl.tokenize(tok, harmless[j].prompt, harmless[j].thinking or "", harmless[j].answer) for j in keep
    ]
    n_harm = int(results.meta["n_harmful"])
    for s in results.measured:
        if s.kind not in ("top", "random") or not s.heads:
            continue
        if "capability" in s.row:  # reused
            continue
        # each harmless prompt under its own head set (per fold for the held-out settings)
        per = prompt_heads(s.row, n_harm + len(harmless))[n_harm:]
        groups: dict[tuple, list[int]] = {}
        for i, j in enumerate(keep):
            groups.setdefault(tuple(map(tuple, per[j])), []).append(i)
        kls: list[float] = []
        deltas: list[float] = []
        n_tokens = 0
        for hs, idx in groups.items():
            hooks = setting_hooks(model, list(hs), run.cfg.ablation_mode, means)
            cost = intervention_cost(
                model, [toks[i] for i in idx], hooks, batch_size=run.cfg.batch_size, seed=run.cfg.seed
            )
            kls += cost.kl_per_rollout
            deltas += cost.delta_per_rollout
            n_tokens += cost.n_tokens
        whole = cost if len(groups) == 1 else None
        s.row["capability"] = (
            whole.to_dict()
            if whole is not None
            else {
                "kl": bootstrap_mean(kls, seed=run.cfg.seed).to_dict(),
                "answer_logprob_delta": bootstrap_mean(deltas, seed=run.cfg.seed).to_dict(),
                "n_rollouts": len(kls),
                "n_tokens": n_tokens,
                "unit": "nats per answer token, averaged per rollout then over rollouts",
            }
        )
    for summ in results.random_summaries:  # the random sets' mean cost beside their ASR summary
        kls = [
            s.row["capability"]["kl"]["value"]
            for s in results.measured
            if s.kind == "random" and s.top_percent == summ.top_percent and "capability" in s.row
        ]
        summ.row["kl_mean"] = sum(kls) / len(kls) if kls else None


@dataclass(frozen=True)
class CliffRow:
    """One line of ``cliff.jsonl``: a rollout's cliff metrics (out-of-sample) with its labels.

    ``plateau``, ``final``, ``cliff`` (= plateau - final) are NaN for a rollout without thinking;
    ``group`` is ``harmful_refused`` / ``harmful_complied`` / ``harmless_helped`` / ...
    """

    id: str
    plateau: float
    final: float
    cliff: float
    group: str
    harmful: bool | None
    refused: bool | None

    @property
    def scored(self) -> bool:
        """Has a plateau score (not NaN): the rollout had thinking to score."""
        return self.plateau is not None and self.plateau == self.plateau


def read_cliff_rows(path: str | Path) -> list[CliffRow]:
    """The rows of a run directory's ``cliff.jsonl`` (written by the trajectories stage)."""
    return [
        CliffRow(
            id=d["id"],
            plateau=d["plateau"],
            final=d["final"],
            cliff=d["cliff"],
            group=d.get("group", ""),
            harmful=d.get("harmful"),
            refused=d.get("refused"),
        )
        for d in iter_jsonl(path)
    ]


def _stage_selection(run: _Run) -> None:
    from .selection import SelectionSummary, export_sft, misalignment_scores, select

    rows = [d for d in _load(run, "cliff.jsonl", read_cliff_rows) if d.harmful and d.scored]
    if not rows:
        raise RunDirError("no harmful rollouts with thinking to rank; the selection stage needs some")
    ids = [d.id for d in rows]
    scores = misalignment_scores(
        [d.plateau for d in rows], [d.final for d in rows], variant=run.cfg.selection_variant
    )
    sel = select(ids, scores, top_percent=run.cfg.selection_percent)
    chosen = set(sel.ids)
    by_id = {r.id: r for r in _read_rollouts(run)}
    n_exported = export_sft(
        [by_id[i] for i in sel.ids], str(run.path("selection.jsonl")), selection=sel, template=_template(run)
    )
    complied = [d for d in rows if d.refused is False]
    sel_complied = [d for d in complied if d.id in chosen]
    SelectionSummary(
        variant=run.cfg.selection_variant,
        top_percent=run.cfg.selection_percent,
        n_pool=len(rows),
        n_selected=len(chosen),
        n_exported=n_exported,
        selected_ids=list(sel.ids),
        selected_score_mean=float(sum(scores[ids.index(i)] for i in sel.ids) / max(1, len(sel.ids))),
        pool_score_mean=float(scores.mean()),
        complied_in_pool=len(complied),
        complied_in_selection=len(sel_complied),
        precision_complied=len(sel_complied) / max(1, len(chosen)),
    ).save(run.path("selection.json"))


def _stage_report(run: _Run) -> None:
    _write_results(run)
    from .viz.report import build_report

    build_report(run.out, model=run.get_model())


# -- typed readers of the stage files ---------------------------------------------------------
def _load(run: _Run, name: str, loader: Callable[[Path], Any]) -> Any:
    """``loader(run.path(name))``, once per run; a corrupt file raises :class:`RunDirError` naming it."""
    if name not in run.cache:
        path = run.path(name)
        try:
            run.cache[name] = loader(path)
        except JsonlError:
            raise  # it names the file and line already
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, ValueError) as e:
            raise RunDirError(
                f"{path} is corrupt ({e}); re-run the stage that writes it (`cliff-lens <stage> DIR "
                "--force`) or delete the run directory"
            ) from None
    return run.cache[name]


@dataclass(frozen=True)
class HeadsFile:
    """The heads stage's ``heads.json``: the :class:`~cliff_lens.heads.HeadRanking` plus what the
    stage adds beside it: the complied-minus-refused contrast scores and their top heads (when the
    run has both complied and refused harmful rollouts)."""

    ranking: Any
    contrast_scores: Any = None
    contrast_heads: tuple[tuple[int, int, float], ...] = ()
    #: ranking name -> percent (``"3"``) -> :meth:`cliff_lens.heldout.CrossFitHeads.to_dict`
    cross_fit: dict[str, dict[str, dict]] = field(default_factory=dict)
    #: ranking name -> the in-sample top heads and how often each stays in the top set
    stability: dict[str, dict] = field(default_factory=dict)
    #: the request id of every rollout the ranking was computed on (in the file's order)
    request_ids: tuple[str, ...] = ()

    @classmethod
    def load(cls, path: str | Path) -> HeadsFile:
        """Read ``heads.json`` (written by the heads stage)."""
        import torch

        from .heads import HeadRanking

        d = json.loads(Path(path).read_text(encoding="utf-8"))
        contrast = d.get("scores_contrast")
        return cls(
            HeadRanking.from_dict(d),
            None if contrast is None else torch.tensor(contrast, dtype=torch.float32),
            tuple((int(t[0]), int(t[1]), float(t[2])) for t in d.get("contrast_heads", [])),
            dict(d.get("cross_fit") or {}),
            dict(d.get("stability") or {}),
            tuple(str(q) for q in d.get("request_ids") or ()),
        )


def _load_heads(run: _Run) -> HeadsFile:
    return _load(run, "heads.json", HeadsFile.load)


# -- results.json: one builder per section of results_schema.SECTIONS ------------------------
def _ci(x: Any) -> list:
    """The ``[low, high]`` 95% interval of a stats.Rate / MeanCI as JSON."""
    return x.to_dict()["ci95"]


def _results_model(run: _Run) -> dict:
    model = {"source": run.cfg.model, **run.state.get("model", {})}
    if "n_layers" not in model and run.path("heads.json").exists():
        n_layers, n_heads = _load_heads(run).ranking.scores.shape
        model.update(n_layers=int(n_layers), n_heads=int(n_heads))
    return model


def _results_data(run: _Run) -> dict:
    """The prompt sources; with the labels stage, the label counts and refusal rates too."""
    from .stats import rate

    cfg = run.cfg
    data: dict[str, Any] = {
        "harmful": cfg.harmful,
        "harmless": cfg.harmless,
        "imported_rollouts": cfg.rollouts,
    }
    if not run.path("labels.jsonl").exists():
        return data
    labels = list(iter_jsonl(run.path("labels.jsonl")))
    harm = [d for d in labels if d["harmful"]]
    ben = [d for d in labels if d["harmful"] is False]
    hr, br = rate([bool(d["refused"]) for d in harm]), rate([bool(d["refused"]) for d in ben])
    return data | dict(
        n_rollouts=len(labels),
        n_harmful=len(harm),
        n_harmless=len(ben),
        harmful_refusal_rate=hr.value,
        harmful_refusal_rate_ci95=_ci(hr),
        harmless_refusal_rate=br.value,
        harmless_refusal_rate_ci95=_ci(br),
        unclosed_thinking=sum(1 for d in labels if not d["thinking_closed"]),
    )


def _results_probe(run: _Run) -> dict:
    from .probe import RefusalProbe

    probe = _load(run, "probe.json", RefusalProbe.load)  # no model needed: the metrics and hook
    m = probe.metrics
    val = m.get("val", m)
    layer = probe.layer
    n_layers = run.state.get("model", {}).get("n_layers")
    if layer is None and n_layers:
        layer = n_layers - 1  # the final norm reads the last block's output
    return {
        "hook": probe.hook,
        "layer": layer,
        "val_accuracy": val.get("accuracy"),
        "val_accuracy_ci95": val.get("accuracy_ci95"),
        "val_auroc": val.get("auroc"),
        "val_auroc_ci95": val.get("auroc_ci95"),
        "val_source": val.get("source", "held-out split"),
        "n_train": probe.meta.get("n_train"),
        "metrics": m,
    }


def _results_cliff(run: _Run) -> dict:
    """Cliff metrics per group with bootstrap intervals, and the share of rollouts with a cliff."""
    from .stats import bootstrap_mean, rate

    rows = _load(run, "cliff.jsonl", read_cliff_rows)
    threshold = run.cfg.cliff_threshold

    def block(sub: list[CliffRow]) -> dict:
        out: dict[str, Any] = {"n_rollouts": len(sub)}
        for key in ("plateau", "final", "cliff"):
            m = bootstrap_mean([getattr(d, key) for d in sub], seed=run.cfg.seed)
            out[f"{key}_mean"], out[f"{key}_ci95"] = m.mean, _ci(m)
        cliffs = [d.cliff for d in sub if d.cliff is not None and d.cliff == d.cliff]
        share = rate([c >= threshold for c in cliffs])
        out["cliff_share"], out["cliff_share_ci95"] = share.value, _ci(share)
        return out

    cliff: dict[str, Any] = {
        "scored_by": "out-of-sample (cross-fitted probe)",
        "cliff_threshold": threshold,
        "harmful": block([d for d in rows if d.harmful]),
        "harmless": block([d for d in rows if d.harmful is False]),
    }
    for g in ("harmful_refused", "harmful_complied", "harmless_helped", "harmless_refused"):
        cliff[g] = block([d for d in rows if d.group == g])
    if run.path("rollouts.jsonl").exists():
        cliff["by_prompt_set"] = _cliff_by_prompt_set(run, rows)
    return cliff


#: the prompt set of a rollout that ``rollouts.jsonl`` does not hold
_UNKNOWN_SET = "(not in rollouts.jsonl)"


def _prompt_sets(run: _Run) -> dict[str, str]:
    """``rollout id -> prompt set``: ``meta["prompt_set"]`` (e.g. ``cliff-harmful`` plain,
    ``cliff-jailbreak`` framed), else the rollout's source."""
    return {r.id: str(r.meta.get("prompt_set") or r.source or _UNKNOWN_SET) for r in _read_rollouts(run)}


def _cliff_by_prompt_set(run: _Run, rows: list[CliffRow]) -> dict[str, dict]:
    """Per prompt set of the harmful rollouts: the complied and the refused rollouts' mean cliff
    with its bootstrap interval (none below ``stats.MIN_BOOTSTRAP_N`` rollouts), so that the
    complied-vs-refused contrast is read within one framing, not across framings."""
    from .stats import MIN_BOOTSTRAP_N, bootstrap_mean

    sets = _prompt_sets(run)
    harmful = [d for d in rows if d.harmful]
    out: dict[str, dict] = {}
    for name in sorted({sets.get(d.id, _UNKNOWN_SET) for d in harmful}):
        sub = [d for d in harmful if sets.get(d.id, _UNKNOWN_SET) == name]
        block: dict[str, Any] = {"n_rollouts": len(sub)}
        for group, key in (("harmful_complied", "complied"), ("harmful_refused", "refused")):
            m = bootstrap_mean([d.cliff for d in sub if d.group == group], seed=run.cfg.seed)
            block[key] = {
                "n": m.n,
                "cliff_mean": m.mean,
                "cliff_ci95": _ci(m),
                "interval": m.method
                or ("none (no rollout)" if m.n == 0 else f"none (n < {MIN_BOOTSTRAP_N})"),
            }
        c, r = block["complied"]["cliff_mean"], block["refused"]["cliff_mean"]
        block["complied_minus_refused"] = None if c is None or r is None else c - r
        out[name] = block
    return out


def _results_heads(run: _Run) -> dict:
    heads = _load_heads(run)
    ranking = heads.ranking
    n_layers, n_heads = ranking.scores.shape
    return {
        "variant": ranking.meta.get("variant"),
        "top_percent": ranking.top_percent,
        "top": [{"layer": li, "head": hi, "score": s} for li, hi, s in ranking.suppression],
        "promoting": [{"layer": li, "head": hi, "score": s} for li, hi, s in ranking.promoting],
        "n_heads_total": n_layers * n_heads,
        "top_contrast": [{"layer": li, "head": hi, "score": s} for li, hi, s in heads.contrast_heads],
        "stability": _heads_stability(heads),
        "held_out": _heads_held_out(heads),
        "n_requests": len(set(heads.request_ids)),
    }


def _heads_stability(heads: HeadsFile) -> dict[str, dict]:
    """Per ranking: each in-sample top head with the share of bootstrap resamples (over requests)
    whose top set keeps it; ``{"skipped": why}`` where the heads stage did not resample."""
    out: dict[str, dict] = {}
    for name, st in heads.stability.items():
        if "heads" not in st:
            out[name] = {"skipped": str(st.get("skipped", "not recorded"))}
            continue
        out[name] = {
            "top_percent": st.get("top_percent"),
            "n_boot": st.get("n_boot"),
            "resampled": st.get("resampled"),
            "heads": [
                {"layer": int(h[0]), "head": int(h[1]), "frequency": round(float(f), 4)}
                for h, f in zip(st["heads"], st.get("frequency") or [])
            ],
        }
    return out


def _heads_held_out(heads: HeadsFile) -> dict[str, dict[str, list[dict]]]:
    """Per ranking and percent: each fold's held-out top heads (ranked on the other folds'
    requests) and how many requests ranked and how many are measured with them."""
    return {
        name: {
            pct: [
                {
                    "fold": f,
                    "heads": [[int(h[0]), int(h[1])] for h in hs],
                    "n_ranked_on": len(d["ranked_on"][f]),
                    "n_measured_on": len(d["measured_on"][f]),
                }
                for f, hs in enumerate(d.get("heads") or [])
            ]
            for pct, d in by_pct.items()
        }
        for name, by_pct in heads.cross_fit.items()
    }


def _load_ablation(run: _Run) -> Any:
    from .evaluate import AblationResults

    return _load(run, "ablation.json", AblationResults.load)


def _results_ablation(run: _Run) -> list[dict]:
    """One row per setting that ran: ``attack_success``'s row without heads and per-prompt outcomes."""
    drop = (
        "setting",
        "heads",
        "harmful_outcomes",
        "harmless_outcomes",
        "harmful_answers",
        "harmless_answers",
        "heads_by_fold",
        "prompt_folds",
    )
    return [
        {
            "setting": s.setting,
            "asr": s.row.get("asr"),
            "refusal_score_end": s.row.get("refusal_score_end"),
            "over_refusal": s.row.get("over_refusal"),
            **{k: v for k, v in s.row.items() if k not in drop},
        }
        for s in _load_ablation(run).measured
    ]


def _results_random_summary(run: _Run) -> list[dict]:
    return [s.row for s in _load_ablation(run).random_summaries]


def _asr_prompt_requests(run: _Run, n_harmful: Any) -> list[str] | None:
    """The request id of each ASR prompt, in the ablation's order (the harmful rollouts of the
    ASR prompt sets, as the ablation stage takes them); ``None`` when the run's files do not
    give exactly ``n_harmful`` of them."""
    if not (run.path("rollouts.jsonl").exists() and run.path("labels.jsonl").exists()):
        return None
    if not isinstance(n_harmful, int):
        return None
    harmful = [r for r in _labelled(run) if r.harmful and _in_asr_sets(run.cfg, r)][:n_harmful]
    return _request_ids(harmful) if len(harmful) == n_harmful else None


def _asr_requests_by_fold(
    row: dict, k: int, measured_on: list[list[str]], asr: set[str], prompt_req: list[str] | None
) -> tuple[list[set[str]], str]:
    """The ASR requests measured with each fold's heads, and how that was read: per prompt (the
    row's ``prompt_folds`` and each prompt's request) or, without them, per request (an ASR
    request's fold in the heads stage's cross-fit; fold 0 for one it did not see)."""
    folds = row.get("prompt_folds")
    n = row.get("n_harmful")
    by_fold: list[set[str]] = [set() for _ in range(k)]
    if prompt_req is not None and isinstance(folds, list) and len(folds) >= len(prompt_req) == n:
        for q, f in zip(prompt_req, folds):
            if 0 <= int(f) < k:
                by_fold[int(f)].add(q)
        return by_fold, "per prompt (the row's prompt_folds and each prompt's request)"
    seen = set().union(*map(set, measured_on)) if measured_on else set()
    for f in range(k):
        by_fold[f] = asr & set(measured_on[f]) if f < len(measured_on) else set()
    by_fold[0] |= asr - seen
    return by_fold, "per request (each ASR request's fold in heads.json cross_fit)"


def _results_design(run: _Run) -> dict:
    """Which requests ranked each head set, which measured it and which gave the head means, with
    a ``disjoint`` check per held-out claim computed from ``ablation.json``, ``heads.json`` and
    ``head_means.json``: the ASR requests measured with a fold's heads against the requests that
    ranked them, and the head-means requests against the over-refusal requests. The in-sample
    rows are listed too, as not held out (their ranking saw every request)."""
    ab = _load_ablation(run)
    heads = _load_heads(run)
    design = dict(ab.meta.get("design") or {})
    means_meta = _head_means_meta(run)
    asr = set(design.get("asr_requests") or [])
    over = list(design.get("over_refusal_requests") or [])
    means_req = design.get("head_means_requests") or means_meta.get("reference_requests")
    ranking_req = sorted(set(heads.request_ids))
    prompt_req = _asr_prompt_requests(run, ab.meta.get("n_harmful"))
    settings: list[dict] = []
    checks: list[dict] = []
    for s in ab.measured:
        r = s.row
        if r.get("kind") != "top":
            continue
        ranking, pct = str(r.get("ranking") or "paper"), r.get("top_percent")
        if r.get("selection") == "in_sample":
            overlap = sorted(asr & set(ranking_req))
            checks.append(
                {"claim": f"{s.setting}: ASR requests vs the requests that ranked its heads (all: in-sample)",
                 "setting": s.setting, "held_out": False, "disjoint": not overlap, "overlap": overlap}
            )  # fmt: skip
            continue
        if r.get("selection") != "held_out" or pct is None:
            continue
        cf = (heads.cross_fit.get(ranking) or {}).get(f"{pct:g}") or {}
        rec = design.get(f"{ranking} {pct:g}%") or cf
        ranked_on = [list(x) for x in rec.get("ranked_on") or []]
        measured_on = [list(x) for x in cf.get("measured_on") or rec.get("measured_on") or []]
        by_fold, basis = _asr_requests_by_fold(r, len(ranked_on), measured_on, asr, prompt_req)
        folds: list[dict] = []
        leaked: set[str] = set()
        for f, chose in enumerate(ranked_on):
            fold_leak = by_fold[f] & set(chose)
            leaked |= fold_leak
            folds.append({"fold": f, "ranked_on": sorted(chose), "asr_requests": sorted(by_fold[f]),
                          "overlap": sorted(fold_leak), "disjoint": not fold_leak})  # fmt: skip
        overlap = sorted(leaked)
        settings.append({"setting": s.setting, "ranking": ranking, "top_percent": pct, "basis": basis,
                         "folds": folds})  # fmt: skip
        checks.append(
            {"claim": f"{s.setting}: ASR requests vs each fold's ranking requests", "setting": s.setting,
             "held_out": True, "disjoint": bool(folds) and not overlap, "overlap": overlap, "basis": basis}
        )  # fmt: skip
    if means_req is None:
        checks.append({"claim": "head-means requests vs over-refusal requests (not recorded)",
                       "held_out": True, "disjoint": None, "overlap": []})  # fmt: skip
    else:
        overlap = sorted(set(means_req) & set(over))
        checks.append({"claim": "head-means requests vs over-refusal requests", "held_out": True,
                       "disjoint": not overlap, "overlap": overlap})  # fmt: skip
    return {
        "selection": design.get("selection"),
        "asr_requests": sorted(asr),
        "over_refusal_requests": sorted(over),
        "head_means_requests": None if means_req is None else sorted(means_req),
        "ranking_requests": ranking_req,
        "settings": settings,
        "checks": checks,
        "disjoint": all(c["disjoint"] is True for c in checks if c["held_out"]),
    }


def _results_holm(run: _Run) -> dict:
    """The run's findings (``ablation.json`` meta ``holm``) with raw and Holm-adjusted p and the
    decision of :func:`cliff_lens.stats.significant` on each."""
    from .stats import ALPHA, significant

    found = _load_ablation(run).meta.get("holm") or []
    return {
        "alpha": ALPHA,
        "method": "Holm-Bonferroni over the findings listed (cliff_lens.stats.holm_adjust)",
        "findings": [
            {
                "finding": d["finding"],
                "p": d["p"],
                "p_holm": d["p_holm"],
                "significant": significant(d["p"]),
                "significant_holm": significant(d["p_holm"]),
            }
            for d in found
        ],  # fmt: skip
    }


def _results_selection(run: _Run) -> dict:
    from .selection import SelectionSummary
    from .stats import wilson_interval

    sel = _load(run, "selection.json", SelectionSummary.load)
    summary = {k: v for k, v in sel.to_dict().items() if k != "selected_ids"}
    summary["precision_complied_ci95"] = [
        None if x != x else x for x in wilson_interval(sel.complied_in_selection, sel.n_selected)
    ]
    summary["base_rate_complied"] = sel.base_rate_complied
    out: dict[str, Any] = {"summary": summary}
    if run.path("cliff.jsonl").exists() and run.path("rollouts.jsonl").exists():
        out.update(_selection_by_prompt_set(run, sel.selected_ids))
    return out


def _selection_by_prompt_set(run: _Run, selected_ids: list[str]) -> dict:
    """Cliff-as-a-Judge within each prompt set (a framed set may comply more whatever the cliff),
    and against a framing-stratified baseline: the precision a selector picking the same number
    of rollouts from each set at random expects, with the exact p of beating it."""
    from .stats import significant, wilson_interval

    pool = [d for d in _load(run, "cliff.jsonl", read_cliff_rows) if d.harmful and d.scored]
    sets = _prompt_sets(run)
    chosen = set(selected_ids)
    per: dict[str, dict] = {}
    strata: list[tuple[int, int, int]] = []
    for name in sorted({sets.get(d.id, _UNKNOWN_SET) for d in pool}):
        sub = [d for d in pool if sets.get(d.id, _UNKNOWN_SET) == name]
        k_pool = sum(d.refused is False for d in sub)
        picked = [d for d in sub if d.id in chosen]
        k_sel = sum(d.refused is False for d in picked)
        per[name] = {
            "n_pool": len(sub),
            "complied_in_pool": k_pool,
            "base_rate_complied": k_pool / len(sub),
            "n_selected": len(picked),
            "complied_in_selection": k_sel,
            "precision_complied": k_sel / len(picked) if picked else None,
            "precision_complied_ci95": [None if x != x else x for x in wilson_interval(k_sel, len(picked))],
        }
        strata.append((len(sub), k_pool, len(picked)))
    n_sel = sum(n for _, _, n in strata)
    k_sel = sum(d["complied_in_selection"] for d in per.values())
    expected = sum(d["n_selected"] * d["base_rate_complied"] for d in per.values()) / n_sel if n_sel else None
    p = _stratified_tail(strata, k_sel) if n_sel else None
    return {
        "by_prompt_set": per,
        "stratified_baseline": {
            "n_selected": n_sel,
            "complied_in_selection": k_sel,
            "precision_complied": k_sel / n_sel if n_sel else None,
            "expected_precision": expected,
            "p_value": p,
            "significant": significant(p),
            "test": "exact: P(complied among the selected >= observed) when each set's selected "
            "rollouts are drawn at random from that set (a sum of independent hypergeometric "
            "counts, by convolution; one-sided)",
        },
    }


def _stratified_tail(strata: list[tuple[int, int, int]], observed: int) -> float:
    """``P(sum_s X_s >= observed)`` for independent ``X_s ~ Hypergeom(pool N_s, complied K_s,
    drawn n_s)`` over the ``(N_s, K_s, n_s)`` strata: the exact one-sided p of a selection's
    complied count against random selection within each stratum."""
    import numpy as np
    from scipy.stats import hypergeom

    dist = np.ones(1)
    for n_pool, k_pool, n_drawn in strata:
        if n_drawn:
            dist = np.convolve(dist, hypergeom.pmf(np.arange(n_drawn + 1), n_pool, k_pool, n_drawn))
    return float(min(1.0, max(0.0, dist[observed:].sum())))


def _results_timings(run: _Run) -> dict:
    return {s: v.get("seconds") for s, v in run.state.get("stages", {}).items() if v.get("finished")}


def _section_builders() -> dict[str, Callable[[_Run], Any]]:
    """The builder of every section declared in :data:`cliff_lens.results_schema.SECTIONS`."""
    from .results_schema import SCHEMA_VERSION

    return {
        "format": lambda run: "cliff_lens.results",
        "version": lambda run: SCHEMA_VERSION,
        "schema_version": lambda run: SCHEMA_VERSION,
        "run_dir": lambda run: str(run.cfg.out),
        "model": _results_model,
        "data": _results_data,
        "probe": _results_probe,
        "cliff": _results_cliff,
        "heads": _results_heads,
        "ablation": _results_ablation,
        "ablation_random_summary": _results_random_summary,
        "design": _results_design,
        "holm": _results_holm,
        "selection": _results_selection,
        "timings": _results_timings,
        "versions": lambda run: _versions(),
        "config": lambda run: run.cfg.to_json(),
    }


def _write_results(run: _Run) -> dict:
    """Assemble ``results.json``: every section of ``results_schema.SECTIONS`` whose files exist."""
    from .results_schema import SECTIONS, assemble_results

    if run.model is not None:  # remember the shape so that later, model-free resumes report it too
        c = run.model.cfg
        run.state["model"] = {"n_layers": c.n_layers, "n_heads": c.n_heads, "d_model": c.d_model}
        run.save_state()
    builders = _section_builders()
    res = assemble_results(
        {s.key: builders[s.key](run) for s in SECTIONS if all(run.path(f).exists() for f in s.files)}
    )
    atomic_write_json(run.path("results.json"), res)
    return res


def write_results(out: str | Path) -> dict:
    """(Re)write ``results.json`` of an existing run directory from its stage files (no model is
    loaded; the model's shape comes from ``run.json`` or ``heads.json``); returns it."""
    cfg = open_run_dir(out)
    return _write_results(_Run(cfg, _load_state(cfg)))


# -- the stage registry -----------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    """One stage of a run, declared once.

    ``name``: its name in ``run.json`` and ``results.json`` timings; ``command``: its
    ``cliff-lens`` subcommand; ``reads``: the stages whose outputs it needs (their fingerprints
    enter its own); ``config``: the :class:`RunConfig` fields its fingerprint covers;
    ``outputs``: the files it writes in the run directory; ``run``: the function that runs it.
    Its sections of ``results.json`` are declared in :data:`cliff_lens.results_schema.SECTIONS`.
    """

    name: str
    command: str
    help: str
    reads: tuple[str, ...]
    config: tuple[str, ...]
    outputs: tuple[str, ...]
    run: Callable[[_Run], None]


STAGES: tuple[Stage, ...] = (
    Stage(
        "rollouts", "rollouts", "generate (or import) rollouts of the harmful and harmless prompts",
        (),
        ("model", "harmful", "harmless", "rollouts", "template", "n_harmful", "n_harmless",
         "max_new_tokens", "seed", "dtype"),
        ("rollouts.jsonl",), _stage_rollouts,
    ),
    Stage(
        "labels", "labels", "judge every answer: refused, complied or no answer",
        ("rollouts",), ("judge_mode",), ("labels.jsonl",), _stage_labels,
    ),
    Stage(
        "probe", "probe", "fit the refusal probe (refused harmful vs helped harmless)",
        ("labels",), ("probe_layer", "probe_method", "seed", "cv_folds"),
        ("probe.safetensors", "probe.json", "probe_folds.safetensors", "probe_folds.json"),
        _stage_probe,
    ),
    Stage(
        "trajectories", "trace", "per-token refusal scores and cliff metrics of every rollout",
        ("probe",), ("plateau_window", "layer_stride"),
        ("trajectories.safetensors", "trajectories.json", "cliff.jsonl"),
        _stage_trajectories,
    ),
    Stage(
        "heads", "heads", "attribute the refusal direction to heads at the end of thinking",
        ("probe",), ("top_percents", "head_variant", "selection_folds", "stability_boot", "seed"),
        ("heads.json", "head_means.safetensors"),
        _stage_heads,
    ),
    Stage(
        "ablation", "ablate", "ASR and over-refusal with the top-k% heads and random heads ablated",
        ("heads",),
        ("asr_prompts", "top_percents", "random_seeds", "ablation_mode", "n_ablation",
         "ablation_max_new_tokens", "judge_mode", "contrast_ablation", "in_sample_ablation",
         "layer_matched_null", "random_harmless"),
        ("ablation.json",), _stage_ablation,
    ),
    Stage(
        "selection", "select", "Cliff-as-a-Judge: select the top rollouts by misalignment score",
        ("trajectories",), ("selection_percent", "selection_variant"),
        ("selection.jsonl", "selection.json"), _stage_selection,
    ),
    Stage(
        "report", "report", "(re)build report.html",
        ("trajectories", "heads", "ablation", "selection"), (), ("report.html",), _stage_report,
    ),
)  # fmt: skip


def get_stage(name: str) -> Stage:
    """The stage with this name or CLI command (``"trajectories"`` or ``"trace"``)."""
    for s in STAGES:
        if name in (s.name, s.command):
            return s
    raise ValueError(f"unknown stage {name!r}; choose one of {', '.join(s.command for s in STAGES)}")


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("cliff_lens", "torch", "transformer_lens", "transformers", "circuitsvis", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out
